//! The HTTPS API of `sluice-control` (axum, served over rustls). Every route needs a valid
//! bearer token (401 otherwise) whose role allows it (403 otherwise); admin actions go to the
//! audit log.
//!
//! Helpers return `Result<_, Response>` so a handler can hand back the refusal as it is; the
//! error side is a response by design, so its size does not matter.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use sluice_rules::catalog::ShippedOnly;
use sluice_rules::{Diagnostic, Severity, compile};

use crate::auth::{Caller, Need, Tokens};
use crate::hub::Hub;
use crate::identstore::{FeedEntry, IdentStore};
use crate::link::{Links, PushResult, now_s};
use crate::rulestore::RuleStore;
use crate::store::{FlowFilter, FlowStore, Kind};

/// How long a rule push waits for the data planes' answers.
pub const PUSH_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// What the handlers share.
#[derive(Debug)]
pub struct AppState {
    /// The API tokens.
    pub tokens: Tokens,
    /// Rule versions and the audit log.
    pub rules: Mutex<RuleStore>,
    /// The record store (flows and requests).
    pub flows: Mutex<FlowStore>,
    /// The identity feed.
    pub identities: Mutex<IdentStore>,
    /// Brokered provider keys and virtual keys.
    pub keys: Mutex<crate::keystore::KeyStore>,
    /// The connected data planes.
    pub links: Links,
    /// Fan-out of new records (live tail, syslog).
    pub hub: Hub,
    /// Serialises rule pushes so data planes get versions in order.
    pub push_lock: tokio::sync::Mutex<()>,
    /// The enterprise CA certificate (PEM), if configured.
    pub ca_pem: Option<String>,
    /// Start time.
    pub started: Instant,
}

impl AppState {
    /// State over the given stores, with no data plane connected yet.
    pub fn new(
        tokens: Tokens,
        rules: RuleStore,
        flows: FlowStore,
        identities: IdentStore,
        keys: crate::keystore::KeyStore,
        hub: Hub,
        ca_pem: Option<String>,
    ) -> AppState {
        AppState {
            tokens,
            rules: Mutex::new(rules),
            flows: Mutex::new(flows),
            identities: Mutex::new(identities),
            keys: Mutex::new(keys),
            links: Links::default(),
            hub,
            push_lock: tokio::sync::Mutex::new(()),
            ca_pem,
            started: Instant::now(),
        }
    }
}

impl AppState {
    /// What the data planes get of the key store: the provider keys (unsealed) and the
    /// virtual keys in force.
    pub fn key_push(
        &self,
    ) -> Result<
        (Vec<sluice_link::BrokerKey>, Vec<sluice_link::VirtualKey>),
        crate::keystore::KeyError,
    > {
        let k = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        Ok((k.secrets()?, k.link_virtual_keys()?))
    }
}

pub(crate) type Shared = Arc<AppState>;

pub(crate) fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "error": message.into() }))).into_response()
}

pub(crate) fn internal(e: impl std::fmt::Display) -> Response {
    tracing::error!("{e}");
    error(StatusCode::INTERNAL_SERVER_ERROR, "internal error (see the daemon's log)")
}

/// The value as JSON, or a 500 for a store error.
fn reply<T: serde::Serialize>(r: Result<T, impl std::fmt::Display>) -> Response {
    match r {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => internal(e),
    }
}

/// The caller, if its token is valid and its role allows `need`.
pub(crate) fn authorize(s: &AppState, headers: &HeaderMap, need: Need) -> Result<Caller, Response> {
    let auth = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let Some(caller) = s.tokens.check(auth) else {
        let mut r = error(StatusCode::UNAUTHORIZED, "missing or invalid bearer token");
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        return Err(r);
    };
    if !caller.role.allows(need) {
        return Err(error(
            StatusCode::FORBIDDEN,
            format!("the {} role may not do this", caller.role.as_str()),
        ));
    }
    Ok(caller)
}

fn diag_json(d: &Diagnostic) -> Value {
    json!({ "file": &*d.file, "line": d.line, "col": d.col, "message": d.message,
            "severity": if d.severity == Severity::Error { "error" } else { "warning" } })
}

/// Compiles a rule file: `Ok(warnings)` or `Err(422 response)`.
fn check_rules(text: &str) -> Result<Vec<Value>, Response> {
    match compile("rules.toml", text, &ShippedOnly) {
        Ok(c) => Ok(c.warnings.iter().map(diag_json).collect()),
        Err(diags) => Err((
            StatusCode::UNPROCESSABLE_ENTITY,
            axum::Json(json!({
                "error": "the rule set is invalid",
                "errors": diags.iter().filter(|d| d.severity == Severity::Error).map(diag_json).collect::<Vec<_>>(),
                "warnings": diags.iter().filter(|d| d.severity != Severity::Error).map(diag_json).collect::<Vec<_>>(),
            })),
        )
            .into_response()),
    }
}

fn body_text(body: &Bytes) -> Result<&str, Response> {
    // (A rule file; other bodies are JSON and say what is wrong themselves.)
    std::str::from_utf8(body)
        .map_err(|_| error(StatusCode::BAD_REQUEST, "the rule file is not UTF-8"))
}

macro_rules! lock {
    ($m:expr) => {
        $m.lock().unwrap_or_else(PoisonError::into_inner)
    };
}

async fn health(State(s): State<Shared>, h: HeaderMap) -> Response {
    if let Err(r) = authorize(&s, &h, Need::Read).or_else(|_| authorize(&s, &h, Need::Feed)) {
        return r;
    }
    let version = lock!(s.rules).current().ok().flatten().map(|v| v.version);
    axum::Json(json!({ "status": "ok", "rules_version": version,
                       "uptime_s": s.started.elapsed().as_secs() }))
    .into_response()
}

async fn ca_pem(State(s): State<Shared>, h: HeaderMap) -> Response {
    if let Err(r) = authorize(&s, &h, Need::Read) {
        return r;
    }
    match &s.ca_pem {
        Some(p) => ([(header::CONTENT_TYPE, "application/x-pem-file")], p.clone()).into_response(),
        None => error(StatusCode::NOT_FOUND, "no enterprise CA is configured"),
    }
}

async fn get_rules(State(s): State<Shared>, h: HeaderMap) -> Response {
    if let Err(r) = authorize(&s, &h, Need::Read) {
        return r;
    }
    match lock!(s.rules).current() {
        Ok(Some(v)) => axum::Json(v).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, "no rule set has been pushed yet"),
        Err(e) => internal(e),
    }
}

async fn validate(State(s): State<Shared>, h: HeaderMap, body: Bytes) -> Response {
    if let Err(r) = authorize(&s, &h, Need::Read) {
        return r;
    }
    let text = match body_text(&body) {
        Ok(t) => t,
        Err(r) => return r,
    };
    match check_rules(text) {
        Ok(warnings) => axum::Json(json!({ "ok": true, "warnings": warnings })).into_response(),
        Err(r) => r,
    }
}

async fn put_rules(State(s): State<Shared>, h: HeaderMap, body: Bytes) -> Response {
    let caller = match authorize(&s, &h, Need::Admin) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let text = match body_text(&body) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let _push = s.push_lock.lock().await;
    let same = lock!(s.rules).current().ok().flatten().filter(|c| c.text == text);
    if let Some(c) = same {
        // The same text again: no new version; the data planes are told it once more.
        let pushed = s.links.push_policy(c.version, text, PUSH_WAIT).await;
        return axum::Json(json!({ "version": c.version, "unchanged": true, "warnings": [],
                                  "dataplanes": pushed }))
        .into_response();
    }
    let accepted = {
        let mut store = lock!(s.rules);
        let current = store.current().ok().flatten().map(|v| v.version);
        match check_rules(text) {
            Err(r) => {
                if let Err(e) =
                    store.audit(&caller.name, "rules.push.refused", "invalid rule set", current)
                {
                    return internal(e);
                }
                return r;
            }
            Ok(warnings) => match store.add(text, &caller.name, "push") {
                Ok(v) => {
                    let detail = format!("{} bytes, {} warnings", text.len(), warnings.len());
                    if let Err(e) = store.audit(&caller.name, "rules.push", &detail, Some(v)) {
                        return internal(e);
                    }
                    (v, warnings)
                }
                Err(e) => return internal(e),
            },
        }
    };
    let (v, warnings) = accepted;
    tracing::info!(version = v, by = %caller.name, "rule set accepted");
    let pushed = s.links.push_policy(v, text, PUSH_WAIT).await;
    axum::Json(json!({ "version": v, "warnings": warnings, "dataplanes": pushed })).into_response()
}

async fn history(State(s): State<Shared>, h: HeaderMap) -> Response {
    if let Err(r) = authorize(&s, &h, Need::Read) {
        return r;
    }
    reply(lock!(s.rules).history())
}

async fn diff(
    State(s): State<Shared>,
    h: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Err(r) = authorize(&s, &h, Need::Read) {
        return r;
    }
    let num = |k: &str| q.get(k).map(|v| v.parse::<i64>());
    let store = lock!(s.rules);
    let (Some(Ok(from)), to) = (num("from"), num("to")) else {
        return error(
            StatusCode::BAD_REQUEST,
            "from=VERSION is required (to= defaults to the current one)",
        );
    };
    let to = match to {
        Some(Ok(t)) => Some(t),
        Some(Err(_)) => return error(StatusCode::BAD_REQUEST, "to must be a version number"),
        None => store.current().ok().flatten().map(|v| v.version),
    };
    let get = |v: Option<i64>| v.and_then(|v| store.get(v).ok().flatten());
    let (Some(a), Some(b)) = (get(Some(from)), get(to)) else {
        return error(StatusCode::NOT_FOUND, "no such version");
    };
    let policy = |t: &str| compile("rules.toml", t, &ShippedOnly).map(|c| c.policy);
    match (policy(&a.text), policy(&b.text)) {
        (Ok(pa), Ok(pb)) => axum::Json(json!({ "from": a.version, "to": b.version,
                                               "diff": sluice_rules::diff::diff(&pa, &pb) }))
        .into_response(),
        _ => internal("a stored rule set no longer compiles"),
    }
}

async fn rollback(State(s): State<Shared>, h: HeaderMap, Path(version): Path<i64>) -> Response {
    let caller = match authorize(&s, &h, Need::Admin) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let _push = s.push_lock.lock().await;
    let (v, text) = {
        let mut store = lock!(s.rules);
        let Some(old) = store.get(version).ok().flatten() else {
            return error(StatusCode::NOT_FOUND, "no such version");
        };
        if let Err(r) = check_rules(&old.text) {
            return r;
        }
        let v = match store.add(&old.text, &caller.name, &format!("rollback to {version}")) {
            Ok(v) => v,
            Err(e) => return internal(e),
        };
        if let Err(e) =
            store.audit(&caller.name, "rules.rollback", &format!("to version {version}"), Some(v))
        {
            return internal(e);
        }
        (v, old.text)
    };
    let pushed: Vec<PushResult> = s.links.push_policy(v, &text, PUSH_WAIT).await;
    axum::Json(json!({ "version": v, "from_version": version, "dataplanes": pushed }))
        .into_response()
}

/// Unix ms from a query value: an integer (unix ms), or a duration back from now (`90s`,
/// `15m`, `2h`, `7d`).
pub(crate) fn time_param(v: &str) -> Option<u64> {
    if let Ok(ms) = v.parse::<u64>() {
        return Some(ms);
    }
    let (num, unit) = v.split_at(v.len().checked_sub(1)?);
    let n: u64 = num.parse().ok()?;
    let secs = match unit {
        "s" => n,
        "m" => n.checked_mul(60)?,
        "h" => n.checked_mul(3600)?,
        "d" => n.checked_mul(86_400)?,
        _ => return None,
    };
    Some(now_s().saturating_sub(secs) * 1000)
}

/// The filters of a flow or request query (400 on a malformed time).
fn filter(q: &HashMap<String, String>) -> Result<FlowFilter, Response> {
    const KNOWN: [&str; 15] = [
        "since",
        "until",
        "identity",
        "user",
        "src",
        "sni",
        "category",
        "verdict",
        "rule",
        "detector",
        "limit",
        "cursor",
        "type",
        "format",
        "dataplane",
    ];
    if let Some(k) = q.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(error(StatusCode::BAD_REQUEST, format!("unknown filter `{k}`")));
    }
    let text = |k: &str| q.get(k).cloned();
    let ms = |k: &str| match q.get(k) {
        None => Ok(None),
        Some(v) => time_param(v).map(Some).ok_or_else(|| {
            error(StatusCode::BAD_REQUEST, format!("{k}: expected unix ms or a duration like 15m"))
        }),
    };
    Ok(FlowFilter {
        since_ms: ms("since")?,
        until_ms: ms("until")?,
        identity: text("identity"),
        user: text("user"),
        src: text("src"),
        sni: text("sni"),
        category: text("category"),
        verdict: text("verdict"),
        rule: text("rule"),
        detector: text("detector"),
        dataplane: text("dataplane"),
    })
}

fn records(s: &AppState, kind: Kind, q: &HashMap<String, String>) -> Response {
    let f = match filter(q) {
        Ok(f) => f,
        Err(r) => return r,
    };
    // `format=jsonl`: an export, one record per line, up to 10,000 per call; the cursor of
    // the next call is in `x-next-cursor`.
    let jsonl = match q.get("format").map(String::as_str) {
        None | Some("json") => false,
        Some("jsonl") => true,
        Some(_) => return error(StatusCode::BAD_REQUEST, "format is json or jsonl"),
    };
    let max = if jsonl { 10_000 } else { 1000 };
    let limit = match q.get("limit").map(|v| v.parse::<usize>()) {
        None if jsonl => max,
        None => 100,
        Some(Ok(n)) => n.clamp(1, max),
        Some(Err(_)) => return error(StatusCode::BAD_REQUEST, "limit must be a number"),
    };
    let cursor = match q.get("cursor").map(|v| v.parse::<i64>()) {
        None => None,
        Some(Ok(c)) => Some(c),
        Some(Err(_)) => return error(StatusCode::BAD_REQUEST, "cursor must be a number"),
    };
    match lock!(s.flows).query_kind(kind, &f, cursor, limit) {
        Ok(page) if jsonl => {
            let mut body = String::new();
            for r in &page.records {
                body.push_str(&r.to_string());
                body.push('\n');
            }
            let mut resp = ([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response();
            if let Some(next) = page.next {
                resp.headers_mut().insert("x-next-cursor", header::HeaderValue::from(next));
            }
            resp
        }
        Ok(page) => {
            axum::Json(json!({ "records": page.records, "next_cursor": page.next })).into_response()
        }
        Err(e) => internal(e),
    }
}

async fn flows(
    State(s): State<Shared>,
    h: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Err(r) = authorize(&s, &h, Need::Read) {
        return r;
    }
    records(&s, Kind::Flows, &q)
}

async fn requests(
    State(s): State<Shared>,
    h: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Err(r) = authorize(&s, &h, Need::Read) {
        return r;
    }
    records(&s, Kind::Requests, &q)
}

/// True when `r` passes the tail's filters (`type`, and the record fields of [`filter`]).
fn tail_match(r: &Value, q: &HashMap<String, String>, f: &FlowFilter) -> bool {
    let field = |k: &str, want: &Option<String>| {
        want.as_deref().is_none_or(|w| r.get(k).and_then(Value::as_str) == Some(w))
    };
    q.get("type").is_none_or(|t| r.get("type").and_then(Value::as_str) == Some(t.as_str()))
        && field("identity", &f.identity)
        && field("user", &f.user)
        && field("src", &f.src)
        && field("sni", &f.sni)
        && field("category", &f.category)
        && field("verdict", &f.verdict)
        && field("rule", &f.rule)
        && field("dataplane", &f.dataplane)
        && f.detector.as_deref().is_none_or(|d| {
            r.get("dlp_findings").and_then(Value::as_array).is_some_and(|a| {
                a.iter().any(|x| x.get("detector").and_then(Value::as_str) == Some(d))
            })
        })
}

async fn stream(
    State(s): State<Shared>,
    h: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    use axum::response::sse::{Event, KeepAlive, Sse};
    use tokio::sync::broadcast::error::RecvError;
    if let Err(r) = authorize(&s, &h, Need::Read) {
        return r;
    }
    let f = match filter(&q) {
        Ok(f) => f,
        Err(r) => return r,
    };
    let rx = s.hub.subscribe();
    let events = futures_util::stream::unfold((rx, q, f), |(mut rx, q, f)| async move {
        loop {
            let ev = match rx.recv().await {
                Ok(r) if tail_match(&r, &q, &f) => {
                    let kind = r.get("type").and_then(Value::as_str).unwrap_or("record");
                    Event::default().event(kind).data(r.to_string())
                }
                Ok(_) => continue,
                Err(RecvError::Lagged(n)) => {
                    Event::default().event("lagged").data(json!({ "missed": n }).to_string())
                }
                Err(RecvError::Closed) => return None,
            };
            return Some((Ok::<_, std::convert::Infallible>(ev), (rx, q, f)));
        }
    });
    Sse::new(events).keep_alive(KeepAlive::default()).into_response()
}

/// The address in a path, or 400.
fn ip_param(ip: &str) -> Result<std::net::IpAddr, Response> {
    ip.parse().map_err(|_| error(StatusCode::BAD_REQUEST, format!("`{ip}` is not an IP address")))
}

/// Stores identity changes, pushes the whole feed to the data planes, audits the call.
async fn identities_changed(
    s: &AppState,
    caller: &Caller,
    action: &str,
    detail: &str,
    change: impl FnOnce(&mut IdentStore) -> Result<(), crate::store::StoreError>,
) -> Response {
    let all = {
        let mut store = lock!(s.identities);
        if let Err(e) = change(&mut store) {
            return internal(e);
        }
        match store.all() {
            Ok(a) => a,
            Err(e) => return internal(e),
        }
    };
    let version = lock!(s.rules).current().ok().flatten().map(|v| v.version);
    if let Err(e) = lock!(s.rules).audit(&caller.name, action, detail, version) {
        return internal(e);
    }
    let pushed = s.links.push_identities_acked(&all, PUSH_WAIT).await;
    axum::Json(json!({ "entries": all.len(), "dataplanes": pushed })).into_response()
}

async fn put_identity(
    State(s): State<Shared>,
    h: HeaderMap,
    Path(ip): Path<String>,
    body: Bytes,
) -> Response {
    let caller = match authorize(&s, &h, Need::Feed) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let ip = match ip_param(&ip) {
        Ok(ip) => ip,
        Err(r) => return r,
    };
    let entry: FeedEntry = match serde_json::from_slice(&body) {
        Ok(e) => e,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("identity: {e}")),
    };
    if entry.ip.is_some_and(|i| i != ip) {
        return error(StatusCode::BAD_REQUEST, "the body's ip differs from the path's");
    }
    let id = match entry.into_identity(ip, now_s()) {
        Ok(id) => id,
        Err(e) => return error(StatusCode::UNPROCESSABLE_ENTITY, e),
    };
    let detail = format!("{ip} -> {} {:?}", id.user, id.groups);
    identities_changed(&s, &caller, "identities.set", &detail, |st| st.set(&[id], false)).await
}

async fn delete_identity(
    State(s): State<Shared>,
    h: HeaderMap,
    Path(ip): Path<String>,
) -> Response {
    let caller = match authorize(&s, &h, Need::Feed) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let ip = match ip_param(&ip) {
        Ok(ip) => ip,
        Err(r) => return r,
    };
    let mut found = true;
    let r = identities_changed(&s, &caller, "identities.remove", &ip.to_string(), |st| {
        found = st.remove(ip)?;
        Ok(())
    })
    .await;
    if !found {
        return error(StatusCode::NOT_FOUND, format!("no identity for {ip}"));
    }
    r
}

/// `POST /v1/identities`: `{"identities": [{ip, user, groups, ttl}], "replace": false}`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Bulk {
    identities: Vec<FeedEntry>,
    #[serde(default)]
    replace: bool,
}

async fn bulk_identities(State(s): State<Shared>, h: HeaderMap, body: Bytes) -> Response {
    let caller = match authorize(&s, &h, Need::Feed) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let bulk: Bulk = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("identities: {e}")),
    };
    let now = now_s();
    let mut ids = Vec::with_capacity(bulk.identities.len());
    let mut errors = Vec::new();
    for (i, e) in bulk.identities.into_iter().enumerate() {
        let Some(ip) = e.ip else {
            errors.push(format!("identities[{i}]: ip is missing"));
            continue;
        };
        match e.into_identity(ip, now) {
            Ok(id) => ids.push(id),
            Err(m) => errors.push(format!("identities[{i}]: {m}")),
        }
    }
    if !errors.is_empty() {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            axum::Json(
                json!({ "error": "invalid entries; nothing was changed", "errors": errors }),
            ),
        )
            .into_response();
    }
    let detail =
        format!("{} entries{}", ids.len(), if bulk.replace { ", replacing all" } else { "" });
    identities_changed(&s, &caller, "identities.bulk", &detail, |st| st.set(&ids, bulk.replace))
        .await
}

async fn list_identities(State(s): State<Shared>, h: HeaderMap) -> Response {
    if let Err(r) = authorize(&s, &h, Need::Read).or_else(|_| authorize(&s, &h, Need::Feed)) {
        return r;
    }
    reply(lock!(s.identities).all())
}

async fn status(State(s): State<Shared>, h: HeaderMap) -> Response {
    if let Err(r) = authorize(&s, &h, Need::Read) {
        return r;
    }
    let version = lock!(s.rules).current().ok().flatten().map(|v| v.version);
    let (flows, requests) = {
        let st = lock!(s.flows);
        (st.count_of(Kind::Flows).unwrap_or(0), st.count_of(Kind::Requests).unwrap_or(0))
    };
    let identities = lock!(s.identities).all().map_or(0, |a| a.len());
    axum::Json(json!({
        "rules_version": version,
        "uptime_s": s.started.elapsed().as_secs(),
        "dataplanes": s.links.status(),
        "identities": identities,
        "stored": { "flows": flows, "requests": requests },
        "syslog_dropped": s.hub.syslog_dropped.load(std::sync::atomic::Ordering::Relaxed),
    }))
    .into_response()
}

async fn openapi(State(s): State<Shared>, h: HeaderMap) -> Response {
    if let Err(r) = authorize(&s, &h, Need::Read).or_else(|_| authorize(&s, &h, Need::Feed)) {
        return r;
    }
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

/// The OpenAPI 3.1 description of this API.
pub const OPENAPI: &str = include_str!("openapi.json");

async fn audit(State(s): State<Shared>, h: HeaderMap) -> Response {
    if let Err(r) = authorize(&s, &h, Need::Admin) {
        return r;
    }
    reply(lock!(s.rules).audit_log(1000))
}

async fn metrics(State(s): State<Shared>, h: HeaderMap) -> Response {
    if let Err(r) = authorize(&s, &h, Need::Read) {
        return r;
    }
    let version = lock!(s.rules).current().ok().flatten().map_or(0, |v| v.version);
    let (flows, requests) = {
        let st = lock!(s.flows);
        (st.count_of(Kind::Flows).unwrap_or(0), st.count_of(Kind::Requests).unwrap_or(0))
    };
    let body = crate::metrics::render(&crate::metrics::Inputs {
        policy_version: version,
        stored_flows: flows,
        stored_requests: requests,
        uptime_s: s.started.elapsed().as_secs(),
        dataplanes: s.links.status(),
        hub: &s.hub,
    });
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "no such route")
}

/// Largest request body (rule files, bulk identity feeds).
pub const MAX_BODY: usize = 8 << 20;

/// Every route, as `METHOD path` (the OpenAPI document is checked against it).
pub const ROUTES: &[&str] = &[
    "GET /v1/health",
    "GET /v1/ca.pem",
    "GET /v1/rules",
    "PUT /v1/rules",
    "POST /v1/rules/validate",
    "GET /v1/rules/history",
    "GET /v1/rules/diff",
    "POST /v1/rules/rollback/{version}",
    "GET /v1/flows",
    "GET /v1/flows/stream",
    "GET /v1/requests",
    "GET /v1/identities",
    "POST /v1/identities",
    "PUT /v1/identities/{ip}",
    "DELETE /v1/identities/{ip}",
    "GET /v1/status",
    "GET /v1/openapi.json",
    "GET /v1/audit",
    "GET /v1/keys",
    "PUT /v1/keys/{name}",
    "DELETE /v1/keys/{name}",
    "POST /v1/keys/virtual",
    "DELETE /v1/keys/virtual/{id}",
    "GET /v1/usage",
    "GET /metrics",
];

/// The API's routes.
pub fn router(state: Shared) -> Router {
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/ca.pem", get(ca_pem))
        .route("/v1/rules", get(get_rules).put(put_rules))
        .route("/v1/rules/validate", post(validate))
        .route("/v1/rules/history", get(history))
        .route("/v1/rules/diff", get(diff))
        .route("/v1/rules/rollback/{version}", post(rollback))
        .route("/v1/flows", get(flows))
        .route("/v1/flows/stream", get(stream))
        .route("/v1/requests", get(requests))
        .route("/v1/identities", get(list_identities).post(bulk_identities))
        .route("/v1/identities/{ip}", axum::routing::put(put_identity).delete(delete_identity))
        .route("/v1/status", get(status))
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/audit", get(audit))
        .route("/metrics", get(metrics))
        .merge(crate::keys_api::routes())
        .merge(crate::usage_api::routes())
        .fallback(not_found)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openapi_describes_every_route_and_nothing_else() {
        let doc: Value = serde_json::from_str(OPENAPI).expect("openapi.json is JSON");
        let mut documented = Vec::new();
        for (path, ops) in doc["paths"].as_object().expect("paths") {
            for method in ops.as_object().expect("operations").keys() {
                documented.push(format!("{} {path}", method.to_uppercase()));
            }
        }
        documented.sort();
        let mut routes: Vec<String> = ROUTES.iter().map(|r| (*r).to_owned()).collect();
        routes.sort();
        assert_eq!(documented, routes);
    }

    #[test]
    fn time_params() {
        assert_eq!(time_param("1700000000000"), Some(1_700_000_000_000));
        let m = time_param("15m").unwrap();
        assert!(m <= now_s() * 1000 - 900_000 + 1000 && m >= now_s() * 1000 - 902_000);
        for bad in ["", "m", "15x", "-3s", "99999999999999999999d"] {
            assert_eq!(time_param(bad), None, "{bad}");
        }
    }
}
