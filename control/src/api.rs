//! The HTTPS API of `sluice-control` (axum, served over rustls). Every route needs a valid
//! bearer token (401 otherwise) whose role allows it (403 otherwise); admin actions go to the
//! audit log. This file holds what the routes share (state, authorization, errors), the rule
//! routes, status, audit and metrics, and the router; the records, the identity feed, the
//! keys and usage have their own files (`records_api.rs`, `identities_api.rs`,
//! `keys_api.rs`, `usage_api.rs`).
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
use crate::identstore::IdentStore;
use crate::link::{Links, PushResult};
use crate::rulestore::RuleStore;
use crate::store::{FlowStore, Kind};

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
    /// The fleet's quota counts, pushed to the data planes.
    pub quotas: crate::quotas::Totals,
    /// Held requests.
    pub approvals: Mutex<crate::approvals::ApprovalStore>,
    /// The prompts of held requests whose rule lets reviewers read them (memory only).
    pub prompts: crate::approvals::Prompts,
    /// The approval webhook's queue.
    pub webhook: Option<tokio::sync::mpsc::Sender<serde_json::Value>>,
    /// Fan-out of new records (live tail, syslog).
    pub hub: Hub,
    /// Serialises rule pushes so data planes get versions in order.
    pub push_lock: tokio::sync::Mutex<()>,
    /// The enterprise CA certificate (PEM), if configured.
    pub ca_pem: Option<String>,
    /// Start time.
    pub started: Instant,
    /// Evidence: the checkpoint signer and where the record store is (verification reads it
    /// on its own connection).
    pub audit: AuditState,
}

/// What the evidence routes and tasks share.
#[derive(Debug, Default)]
pub struct AuditState {
    /// Signs checkpoints (none: no key, as in tests that build state by hand).
    pub checkpointer: Option<Mutex<crate::checkpointer::Checkpointer>>,
    /// `[audit]`.
    pub cfg: crate::checkpointer::AuditConfig,
    /// The record store's file (none: in memory).
    pub flows_db: Option<std::path::PathBuf>,
    /// The rule store's file, which holds the audit log and the checkpoints (none: in memory).
    pub rules_db: Option<std::path::PathBuf>,
    /// When each token was last written to the audit log as used.
    pub token_uses: Mutex<std::collections::HashMap<String, Instant>>,
    /// Refused calls written to the audit log in the current minute, and that minute.
    pub refusals: Mutex<(u64, u64)>,
}

/// The stores control keeps its state in.
#[derive(Debug)]
pub struct Stores {
    /// Rule versions and the audit log.
    pub rules: RuleStore,
    /// Flow and request records.
    pub flows: FlowStore,
    /// The identity feed.
    pub identities: IdentStore,
    /// Brokered provider keys and virtual keys.
    pub keys: crate::keystore::KeyStore,
    /// Held requests.
    pub approvals: crate::approvals::ApprovalStore,
}

impl AppState {
    /// State over the given stores, with no data plane connected yet; `webhook`: the queue of
    /// the approval webhook, if one is configured.
    pub fn new(
        tokens: Tokens,
        stores: Stores,
        hub: Hub,
        ca_pem: Option<String>,
        webhook: Option<tokio::sync::mpsc::Sender<serde_json::Value>>,
    ) -> AppState {
        AppState {
            tokens,
            rules: Mutex::new(stores.rules),
            flows: Mutex::new(stores.flows),
            identities: Mutex::new(stores.identities),
            keys: Mutex::new(stores.keys),
            approvals: Mutex::new(stores.approvals),
            prompts: Default::default(),
            webhook,
            links: Links::default(),
            quotas: Default::default(),
            hub,
            push_lock: tokio::sync::Mutex::new(()),
            ca_pem,
            started: Instant::now(),
            audit: AuditState::default(),
        }
    }

    /// The state with its evidence set up.
    pub fn with_audit(mut self, audit: AuditState) -> AppState {
        self.audit = audit;
        self
    }
}

impl AppState {
    /// What the data planes get of the key store: the provider keys (unsealed), the virtual
    /// keys in force and the DLP salt.
    pub fn key_push(&self) -> Result<crate::keystore::KeyPush, crate::keystore::KeyError> {
        let k = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(crate::keystore::KeyPush {
            keys: k.secrets()?,
            virtual_keys: k.link_virtual_keys()?,
            dlp_salt: k.dlp_salt()?,
        })
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
pub(crate) fn reply<T: serde::Serialize>(r: Result<T, impl std::fmt::Display>) -> Response {
    match r {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => internal(e),
    }
}

macro_rules! lock {
    ($m:expr) => {
        $m.lock().unwrap_or_else(PoisonError::into_inner)
    };
}

/// The caller, if its token is valid and its role allows `need`. Token use goes to control's
/// chain (the audit log): each token's first use in an hour, and refusals (at most
/// [`REFUSALS_AUDITED`] a minute, so a flood cannot fill the log).
pub(crate) fn authorize(s: &AppState, headers: &HeaderMap, need: Need) -> Result<Caller, Response> {
    // Two credentials are one too many: which one a proxy in front checked is unknown.
    if headers.get_all(header::AUTHORIZATION).iter().nth(1).is_some() {
        audit_refusal(s, "unknown", "more than one Authorization header", need);
        return Err(error(StatusCode::BAD_REQUEST, "more than one Authorization header"));
    }
    let auth = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let Some(caller) = s.tokens.check(auth) else {
        audit_refusal(s, "unknown", "missing or invalid bearer token", need);
        let mut r = error(StatusCode::UNAUTHORIZED, "missing or invalid bearer token");
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        return Err(r);
    };
    if !caller.role.allows(need) {
        let why = format!("the {} role may not do this", caller.role.as_str());
        audit_refusal(s, &caller.name, &why, need);
        return Err(error(StatusCode::FORBIDDEN, why));
    }
    audit_use(s, &caller, need);
    Ok(caller)
}

/// [`authorize`] for a call any of `needs` allows (audited once).
pub(crate) fn authorize_any(
    s: &AppState,
    headers: &HeaderMap,
    needs: &[Need],
) -> Result<Caller, Response> {
    let auth = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let need = match s.tokens.check(auth) {
        Some(c) => needs.iter().copied().find(|n| c.role.allows(*n)),
        None => None,
    };
    let need = need.or(needs.first().copied()).unwrap_or(Need::Admin);
    authorize(s, headers, need)
}

/// Most refused calls written to the audit log per minute.
pub const REFUSALS_AUDITED: u64 = 30;

fn audit_use(s: &AppState, caller: &Caller, need: Need) {
    let now = Instant::now();
    {
        let mut uses = lock!(s.audit.token_uses);
        match uses.get(&caller.name) {
            Some(t) if now.duration_since(*t) < std::time::Duration::from_secs(3600) => return,
            _ => {
                uses.insert(caller.name.clone(), now);
            }
        }
    }
    let detail =
        json!({ "role": caller.role.as_str(), "need": format!("{need:?}").to_lowercase() });
    if let Err(e) = lock!(s.rules).audit(&caller.name, "token.use", &detail.to_string(), None) {
        tracing::error!("writing a token's use to the audit log: {e}");
    }
}

fn audit_refusal(s: &AppState, who: &str, why: &str, need: Need) {
    let minute = crate::link::now_s() / 60;
    {
        let mut r = lock!(s.audit.refusals);
        if r.1 != minute {
            *r = (0, minute);
        }
        r.0 += 1;
        if r.0 > REFUSALS_AUDITED {
            return;
        }
    }
    let detail = json!({ "reason": why, "need": format!("{need:?}").to_lowercase() });
    if let Err(e) = lock!(s.rules).audit(who, "token.refused", &detail.to_string(), None) {
        tracing::error!("writing a refused call to the audit log: {e}");
    }
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

async fn health(State(s): State<Shared>, h: HeaderMap) -> Response {
    if let Err(r) = authorize_any(&s, &h, &[Need::Read, Need::Feed]) {
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
                    let detail = format!(
                        "{} bytes, {} warnings, sha256 {}",
                        text.len(),
                        warnings.len(),
                        crate::evidence::text_sha256(text)
                    );
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
        if let Err(e) = store.audit(
            &caller.name,
            "rules.rollback",
            &format!("to version {version}, sha256 {}", crate::evidence::text_sha256(&old.text)),
            Some(v),
        ) {
            return internal(e);
        }
        (v, old.text)
    };
    let pushed: Vec<PushResult> = s.links.push_policy(v, &text, PUSH_WAIT).await;
    axum::Json(json!({ "version": v, "from_version": version, "dataplanes": pushed }))
        .into_response()
}

/// The data planes' status, each flagged by whether it enforces control's current rule set.
fn dataplanes(s: &AppState) -> Vec<crate::link::DataplaneStatus> {
    let current =
        lock!(s.rules).current().ok().flatten().map(|v| crate::evidence::text_sha256(&v.text));
    let mut all = s.links.status();
    for d in &mut all {
        d.policy_current = current.as_ref().map(|c| d.policy_sha256.as_ref() == Some(c));
    }
    all
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
        "dataplanes": dataplanes(&s),
        "identities": identities,
        "stored": { "flows": flows, "requests": requests },
        "syslog_dropped": s.hub.syslog_dropped.load(std::sync::atomic::Ordering::Relaxed),
    }))
    .into_response()
}

async fn openapi(State(s): State<Shared>, h: HeaderMap) -> Response {
    if let Err(r) = authorize_any(&s, &h, &[Need::Read, Need::Feed]) {
        return r;
    }
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

/// The OpenAPI 3.1 description of this API.
pub const OPENAPI: &str = include_str!("openapi.json");

async fn audit(State(s): State<Shared>, h: HeaderMap) -> Response {
    if let Err(r) = authorize(&s, &h, Need::Evidence) {
        return r;
    }
    reply(lock!(s.rules).audit_log(1000))
}

async fn metrics(State(s): State<Shared>, h: HeaderMap) -> Response {
    if let Err(r) = authorize(&s, &h, Need::Read) {
        return r;
    }
    let version = lock!(s.rules).current().ok().flatten().map_or(0, |v| v.version);
    let (flows, requests, hosts_per_app) = {
        let mut st = lock!(s.flows);
        (
            st.count_of(Kind::Flows).unwrap_or(0),
            st.count_of(Kind::Requests).unwrap_or(0),
            st.hosts_per_app().unwrap_or_default(),
        )
    };
    let body = crate::metrics::render(&crate::metrics::Inputs {
        policy_version: version,
        stored_flows: flows,
        stored_requests: requests,
        uptime_s: s.started.elapsed().as_secs(),
        dataplanes: dataplanes(&s),
        hub: &s.hub,
        hosts_per_app,
    });
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "no such route")
}

/// Every error answers in one shape, `{"error": "…"}`: what axum's extractors and limits
/// answer as plain text (a body past [`MAX_BODY`], a malformed path or query, a method the
/// route does not take) is wrapped, its headers (`Allow`, `WWW-Authenticate`) kept.
async fn json_errors(r: Response) -> Response {
    let status = r.status();
    let json = r
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/json"));
    if json || !(status.is_client_error() || status.is_server_error()) {
        return r;
    }
    let (parts, body) = r.into_parts();
    // Axum's own messages are short; a longer body is cut, not read whole.
    let text =
        match http_body_util::BodyExt::collect(http_body_util::Limited::new(body, 1024)).await {
            Ok(b) => String::from_utf8_lossy(&b.to_bytes()).trim().to_owned(),
            Err(_) => String::new(),
        };
    let message = match text.is_empty() {
        true => status.canonical_reason().unwrap_or("error").to_owned(),
        false => text,
    };
    let mut out = error(status, message);
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            out.headers_mut().append(name.clone(), value.clone());
        }
    }
    out
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
    "GET /v1/audit/key",
    "GET /v1/audit/verify",
    "GET /v1/evidence/export",
    "GET /v1/keys",
    "PUT /v1/keys/{name}",
    "DELETE /v1/keys/{name}",
    "POST /v1/keys/virtual",
    "DELETE /v1/keys/virtual/{id}",
    "GET /v1/dlp/salt",
    "POST /v1/dlp/salt/rotate",
    "GET /v1/usage",
    "GET /v1/inventory",
    "GET /v1/discoveries",
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
        .route("/v1/status", get(status))
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/audit", get(audit))
        .route("/metrics", get(metrics))
        .merge(crate::records_api::routes())
        .merge(crate::identities_api::routes())
        .merge(crate::keys_api::routes())
        .merge(crate::usage_api::routes())
        .merge(crate::inventory_api::routes())
        .merge(crate::approvals_api::routes())
        .merge(crate::recordings_api::routes())
        .merge(crate::audit_api::routes())
        .merge(crate::evidence_api::routes())
        .fallback(not_found)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::map_response(json_errors))
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
}
