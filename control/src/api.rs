//! The HTTPS API of `sluice-control` (axum, served over rustls). Every route needs a valid
//! bearer token (401 otherwise) whose role allows it (403 otherwise); admin actions go to the
//! audit log. This file holds what the routes share (authorization, errors in one JSON
//! shape) and the router; the routes live by concern in their own files (`rules_api.rs`,
//! `status_api.rs`, `records_api.rs`, `identities_api.rs`, `keys_api.rs`, `usage_api.rs`,
//! …), the state they share in `state.rs`.
//!
//! A handler states what it needs of its caller as an extractor, `Authed<needs::Admin>`,
//! which checks the token and role before anything else of the request is read; it answers
//! an [`ApiResult`] and uses `?`. Helpers return `Result<_, Response>` (the refusal as it
//! is: the error side is a response by design, so its size does not matter).
#![allow(clippy::result_large_err)]

use std::time::Instant;

use axum::Router;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::auth::{Caller, Need};
pub(crate) use crate::state::Shared;
pub use crate::state::{AppState, AuditState, PUSH_WAIT, Stores};

pub(crate) fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "error": message.into() }))).into_response()
}

pub(crate) fn internal(e: impl std::fmt::Display) -> Response {
    tracing::error!("{e}");
    error(StatusCode::INTERNAL_SERVER_ERROR, "internal error (see the daemon's log)")
}

/// A refusal or failure, answered in the one JSON shape; handlers return [`ApiResult`] and use
/// `?` on the helpers (which return `Result<_, Response>`) and on store errors
/// ([`OrInternal::or_500`]).
#[derive(Debug)]
pub(crate) struct ApiError(Response);

/// What a handler answers.
pub(crate) type ApiResult = Result<Response, ApiError>;

impl ApiError {
    /// `{"error": message}` with `status`.
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError(error(status, message))
    }
}

/// A refusal: `Err` of `{"error": message}` with `status`.
pub(crate) fn refuse(status: StatusCode, message: impl Into<String>) -> ApiResult {
    Err(ApiError::new(status, message))
}

impl From<Response> for ApiError {
    fn from(r: Response) -> ApiError {
        ApiError(r)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.0
    }
}

/// A store's error becomes a 500 (logged, its text never sent).
pub(crate) trait OrInternal<T> {
    /// The value, or a 500 for the error.
    fn or_500(self) -> Result<T, ApiError>;
}

impl<T, E: std::fmt::Display> OrInternal<T> for Result<T, E> {
    fn or_500(self) -> Result<T, ApiError> {
        self.map_err(|e| ApiError(internal(e)))
    }
}

/// What a route needs of its caller's role, as a type, so that [`Authed`] checks it before
/// the handler runs (and before its body is read).
pub(crate) trait Needs {
    /// Any one of these is enough; the first is the one a refusal names.
    const NEEDS: &'static [Need];
}

/// The markers [`Authed`] takes: `Authed<needs::Admin>` is a caller whose role may change
/// things.
pub(crate) mod needs {
    use super::{Need, Needs};

    macro_rules! needs {
        ($($(#[$doc:meta])* $name:ident => [$($n:ident),+];)+) => {$(
            $(#[$doc])*
            #[derive(Debug)]
            pub(crate) struct $name;
            impl Needs for $name {
                const NEEDS: &'static [Need] = &[$(Need::$n),+];
            }
        )+};
    }

    needs! {
        /// Reading rules, records and status.
        Read => [Read];
        /// Reading, or the identity feed (health, the identity list, the API's description).
        ReadOrFeed => [Read, Feed];
        /// Changing rules, identities' keys, salts.
        Admin => [Admin];
        /// The identity feed.
        Feed => [Feed];
        /// Held requests.
        Approve => [Approve];
        /// The audit log, verification, exports.
        Evidence => [Evidence];
        /// Any valid token.
        Any => [Any];
    }
}

/// A caller whose bearer token is valid and whose role allows `N` (401 / 403 in the one JSON
/// shape otherwise, audited as [`authorize`] does).
#[derive(Debug)]
pub(crate) struct Authed<N> {
    /// Who called.
    pub caller: Caller,
    _needs: std::marker::PhantomData<N>,
}

impl<N: Needs> axum::extract::FromRequestParts<Shared> for Authed<N> {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        s: &Shared,
    ) -> Result<Self, Response> {
        let caller = authorize_any(s, &parts.headers, N::NEEDS)?;
        Ok(Authed { caller, _needs: std::marker::PhantomData })
    }
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
        $m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    };
}
pub(crate) use lock;

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
    match permit(s, &caller, &[need]) {
        Ok(()) => Ok(caller),
        Err(why) => Err(error(StatusCode::FORBIDDEN, why)),
    }
}

/// Whether `caller`'s role allows one of `needs` (the API's and the console's check): the
/// use, or the refusal and why, goes to the audit log as [`authorize`] says.
pub(crate) fn permit(s: &AppState, caller: &Caller, needs: &[Need]) -> Result<(), String> {
    match needs.iter().copied().find(|n| caller.role.allows(*n)) {
        Some(need) => {
            audit_use(s, caller, need);
            Ok(())
        }
        None => {
            let why = format!("the {} role may not do this", caller.role.as_str());
            audit_refusal(s, &caller.name, &why, needs.first().copied().unwrap_or(Need::Admin));
            Err(why)
        }
    }
}

/// A refused login (the console's), written to the audit log as a refused call is.
pub(crate) fn audit_failed_login(s: &AppState) {
    audit_refusal(s, "unknown", "console login with an invalid token", Need::Any);
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

/// A body declared longer than [`MAX_BODY`] is refused before any of it is read (and before
/// hyper invites it with `100 Continue`), whoever sends it.
async fn declared_too_long(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        let mib = MAX_BODY >> 20;
        return error(StatusCode::PAYLOAD_TOO_LARGE, format!("the body is over {mib} MiB"));
    }
    next.run(req).await
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
    // Axum's own messages are short; a longer body is not read, the status's name answers.
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
    "GET /v1/fleet",
    "POST /v1/fleet/init",
    "POST /v1/fleet/enrol",
    "POST /v1/fleet/{name}/revoke",
    "GET /metrics",
];

/// The API's routes, and the console's (whose errors are pages, not JSON).
pub fn router(state: Shared) -> Router {
    let api = Router::new()
        .merge(crate::status_api::routes())
        .merge(crate::rules_api::routes())
        .merge(crate::records_api::routes())
        .merge(crate::identities_api::routes())
        .merge(crate::keys_api::routes())
        .merge(crate::usage_api::routes())
        .merge(crate::inventory_api::routes())
        .merge(crate::approvals_api::routes())
        .merge(crate::recordings_api::routes())
        .merge(crate::audit_api::routes())
        .merge(crate::evidence_api::routes())
        .merge(crate::fleet_api::routes())
        .fallback(not_found)
        .layer(axum::middleware::map_response(json_errors));
    api.merge(crate::console::routes())
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn(declared_too_long))
        .with_state(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openapi_describes_every_route_and_nothing_else() {
        let doc: serde_json::Value =
            serde_json::from_str(crate::status_api::OPENAPI).expect("openapi.json is JSON");
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
