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
use crate::rulestore::RuleStore;
use crate::store::{FlowFilter, FlowStore};

/// What the handlers share.
#[derive(Debug)]
pub struct AppState {
    /// The API tokens.
    pub tokens: Tokens,
    /// Rule versions and the audit log.
    pub rules: Mutex<RuleStore>,
    /// The flow store.
    pub flows: Mutex<FlowStore>,
    /// The enterprise CA certificate (PEM), if configured.
    pub ca_pem: Option<String>,
    /// Start time.
    pub started: Instant,
}

type Shared = Arc<AppState>;

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "error": message.into() }))).into_response()
}

fn internal(e: impl std::fmt::Display) -> Response {
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
fn authorize(s: &AppState, headers: &HeaderMap, need: Need) -> Result<Caller, Response> {
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
    let mut store = lock!(s.rules);
    let current = store.current().ok().flatten().map(|v| v.version);
    match check_rules(text) {
        Err(r) => {
            if let Err(e) =
                store.audit(&caller.name, "rules.push.refused", "invalid rule set", current)
            {
                return internal(e);
            }
            r
        }
        Ok(warnings) => match store.add(text, &caller.name, "push") {
            Ok(v) => {
                let detail = format!("{} bytes, {} warnings", text.len(), warnings.len());
                if let Err(e) = store.audit(&caller.name, "rules.push", &detail, Some(v)) {
                    return internal(e);
                }
                tracing::info!(version = v, by = %caller.name, "rule set accepted");
                axum::Json(json!({ "version": v, "warnings": warnings })).into_response()
            }
            Err(e) => internal(e),
        },
    }
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
    let mut store = lock!(s.rules);
    let Some(old) = store.get(version).ok().flatten() else {
        return error(StatusCode::NOT_FOUND, "no such version");
    };
    if let Err(r) = check_rules(&old.text) {
        return r;
    }
    match store.add(&old.text, &caller.name, &format!("rollback to {version}")) {
        Ok(v) => {
            if let Err(e) = store.audit(
                &caller.name,
                "rules.rollback",
                &format!("to version {version}"),
                Some(v),
            ) {
                return internal(e);
            }
            axum::Json(json!({ "version": v, "from_version": version })).into_response()
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
    let text = |k: &str| q.get(k).cloned();
    let ms = |k: &str| q.get(k).and_then(|v| v.parse::<u64>().ok());
    let f = FlowFilter {
        since_ms: ms("since"),
        until_ms: ms("until"),
        identity: text("identity"),
        user: text("user"),
        src: text("src"),
        sni: text("sni"),
        category: text("category"),
        verdict: text("verdict"),
        rule: text("rule"),
    };
    let limit = q.get("limit").and_then(|v| v.parse::<usize>().ok()).unwrap_or(100).clamp(1, 1000);
    let cursor = q.get("cursor").and_then(|v| v.parse::<i64>().ok());
    match lock!(s.flows).query(&f, cursor, limit) {
        Ok(page) => {
            axum::Json(json!({ "records": page.records, "next_cursor": page.next })).into_response()
        }
        Err(e) => internal(e),
    }
}

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
    let stored = lock!(s.flows).count().unwrap_or(0);
    let body = format!(
        "# HELP sluice_policy_version Rule-set version in force.\n# TYPE sluice_policy_version gauge\n\
         sluice_policy_version {version}\n\
         # HELP sluice_flow_records_stored Flow records in the store.\n# TYPE sluice_flow_records_stored gauge\n\
         sluice_flow_records_stored {stored}\n\
         # HELP sluice_control_uptime_seconds Seconds since the daemon started.\n# TYPE sluice_control_uptime_seconds counter\n\
         sluice_control_uptime_seconds {}\n",
        s.started.elapsed().as_secs()
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "no such route")
}

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
        .route("/v1/audit", get(audit))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .with_state(state)
}

/// Serves `router` over TLS on `listener` until the process ends.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    router: Router,
) -> std::io::Result<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let svc = router.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(
                std::time::Duration::from_secs(10),
                acceptor.accept(tcp),
            )
            .await
            {
                Ok(Ok(t)) => t,
                _ => {
                    tracing::debug!(%peer, "TLS handshake failed");
                    return;
                }
            };
            let io = hyper_util::rt::TokioIo::new(tls);
            let service = hyper_util::service::TowerToHyperService::new(svc);
            let _ =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(io, service)
                    .await;
        });
    }
}
