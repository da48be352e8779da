//! The rule routes of the API: the current set, validation, push (admin), history, the
//! diff between two versions and rollback (admin). A push or rollback is stored, audited and
//! sent to every data plane, whose answers the reply lists.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use sluice_rules::catalog::ShippedOnly;
use sluice_rules::{Diagnostic, Severity, compile};

use crate::api::{ApiError, ApiResult, Authed, OrInternal, error, internal, lock, needs, refuse};
use crate::auth::Caller;
use crate::link::PushResult;
use crate::state::AppState;
use crate::state::{PUSH_WAIT, Shared};

/// The rule routes.
pub fn routes() -> Router<Shared> {
    Router::new()
        .route("/v1/rules", get(get_rules).put(put_rules))
        .route("/v1/rules/validate", post(validate))
        .route("/v1/rules/history", get(history))
        .route("/v1/rules/diff", get(diff))
        .route("/v1/rules/rollback/{version}", post(rollback))
}

fn diag_json(d: &Diagnostic) -> Value {
    json!({ "file": &*d.file, "line": d.line, "col": d.col, "message": d.message,
            "severity": if d.severity == Severity::Error { "error" } else { "warning" } })
}

/// Compiles a rule file: `Ok(warnings)` or `Err(422 response)`.
fn check_rules(text: &str) -> Result<Vec<Value>, Response> {
    match compile("rules.toml", text, &ShippedOnly) {
        Ok(c) => Ok(c.warnings.iter().map(diag_json).collect()),
        Err(diags) => Err(invalid(&diags)),
    }
}

/// The 422 of an invalid rule set: its errors and warnings at their lines.
fn invalid(diags: &[Diagnostic]) -> Response {
    let of = |error: bool| -> Vec<Value> {
        diags.iter().filter(|d| (d.severity == Severity::Error) == error).map(diag_json).collect()
    };
    let body =
        json!({ "error": "the rule set is invalid", "errors": of(true), "warnings": of(false) });
    (StatusCode::UNPROCESSABLE_ENTITY, axum::Json(body)).into_response()
}

/// Why a push was not made.
#[derive(Debug)]
pub(crate) enum PushRefused {
    /// The rule set does not compile: its diagnostics (the refusal is audited).
    Invalid(Vec<Diagnostic>),
    /// Anything else.
    Failed(ApiError),
}

impl From<ApiError> for PushRefused {
    fn from(e: ApiError) -> PushRefused {
        PushRefused::Failed(e)
    }
}

impl From<PushRefused> for ApiError {
    fn from(r: PushRefused) -> ApiError {
        match r {
            PushRefused::Invalid(diags) => invalid(&diags).into(),
            PushRefused::Failed(e) => e,
        }
    }
}

fn body_text(body: &Bytes) -> Result<&str, Response> {
    // (A rule file; other bodies are JSON and say what is wrong themselves.)
    std::str::from_utf8(body)
        .map_err(|_| error(StatusCode::BAD_REQUEST, "the rule file is not UTF-8"))
}

async fn get_rules(State(s): State<Shared>, _: Authed<needs::Read>) -> ApiResult {
    match lock!(s.rules).current().or_500()? {
        Some(v) => Ok(axum::Json(v).into_response()),
        None => refuse(StatusCode::NOT_FOUND, "no rule set has been pushed yet"),
    }
}

async fn validate(_: Authed<needs::Read>, body: Bytes) -> ApiResult {
    let warnings = check_rules(body_text(&body)?)?;
    Ok(axum::Json(json!({ "ok": true, "warnings": warnings })).into_response())
}

async fn put_rules(
    State(s): State<Shared>,
    Authed { caller, .. }: Authed<needs::Admin>,
    body: Bytes,
) -> ApiResult {
    let pushed = push(&s, &caller, body_text(&body)?).await?;
    Ok(axum::Json(pushed).into_response())
}

/// Stores, audits and sends a rule set to every data plane (the API's push and the
/// console's): the reply lists the data planes' answers; an invalid set is refused (422,
/// with its errors at their lines) and the refusal audited.
pub(crate) async fn push(s: &AppState, caller: &Caller, text: &str) -> Result<Value, PushRefused> {
    let _push = s.push_lock.lock().await;
    let same = lock!(s.rules).current().ok().flatten().filter(|c| c.text == text);
    if let Some(c) = same {
        // The same text again: no new version; the data planes are told it once more.
        let pushed = with_offline(s, s.links.push_policy(c.version, text, PUSH_WAIT).await);
        return Ok(json!({ "version": c.version, "unchanged": true, "warnings": [],
                          "dataplanes": pushed }));
    }
    let (v, warnings) = {
        let mut store = lock!(s.rules);
        let current = store.current().ok().flatten().map(|v| v.version);
        let warnings: Vec<Value> = match compile("rules.toml", text, &ShippedOnly) {
            Ok(c) => c.warnings.iter().map(diag_json).collect(),
            Err(diags) => {
                store
                    .audit(&caller.name, "rules.push.refused", "invalid rule set", current)
                    .or_500()?;
                return Err(PushRefused::Invalid(diags));
            }
        };
        let v = store.add(text, &caller.name, "push").or_500()?;
        let detail = format!(
            "{} bytes, {} warnings, sha256 {}",
            text.len(),
            warnings.len(),
            crate::evidence::text_sha256(text)
        );
        store.audit(&caller.name, "rules.push", &detail, Some(v)).or_500()?;
        (v, warnings)
    };
    tracing::info!(version = v, by = %caller.name, "rule set accepted");
    let pushed = with_offline(s, s.links.push_policy(v, text, PUSH_WAIT).await);
    Ok(json!({ "version": v, "warnings": warnings, "dataplanes": pushed }))
}

/// A push's answers, with every enrolled data plane that was not connected listed as
/// `offline`: the admin sees the whole fleet, and which of it has the rules yet.
fn with_offline(s: &AppState, mut pushed: Vec<PushResult>) -> Vec<PushResult> {
    for name in crate::status_api::enrolled_names(s) {
        if !pushed.iter().any(|p| p.dataplane == name) {
            pushed.push(PushResult { dataplane: name, status: "offline", error: None });
        }
    }
    pushed
}

async fn history(State(s): State<Shared>, _: Authed<needs::Read>) -> ApiResult {
    Ok(axum::Json(lock!(s.rules).history().or_500()?).into_response())
}

async fn diff(
    State(s): State<Shared>,
    _: Authed<needs::Read>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    let num = |k: &str| q.get(k).map(|v| v.parse::<i64>());
    let store = lock!(s.rules);
    let (Some(Ok(from)), to) = (num("from"), num("to")) else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "from=VERSION is required (to= defaults to the current one)",
        );
    };
    let to = match to {
        Some(Ok(t)) => Some(t),
        Some(Err(_)) => return refuse(StatusCode::BAD_REQUEST, "to must be a version number"),
        None => store.current().ok().flatten().map(|v| v.version),
    };
    let get = |v: Option<i64>| v.and_then(|v| store.get(v).ok().flatten());
    let (Some(a), Some(b)) = (get(Some(from)), get(to)) else {
        return refuse(StatusCode::NOT_FOUND, "no such version");
    };
    let Some(diff) = policy_diff(&a.text, &b.text) else {
        return Err(internal("a stored rule set no longer compiles").into());
    };
    Ok(axum::Json(json!({ "from": a.version, "to": b.version, "diff": diff })).into_response())
}

/// What changes in the compiled policy from rule text `a` to `b` (the API's diff and the
/// console's); `None` when either no longer compiles.
pub(crate) fn policy_diff(a: &str, b: &str) -> Option<sluice_rules::diff::PolicyDiff> {
    let policy = |t: &str| compile("rules.toml", t, &ShippedOnly).map(|c| c.policy).ok();
    Some(sluice_rules::diff::diff(&policy(a)?, &policy(b)?))
}

async fn rollback(
    State(s): State<Shared>,
    Authed { caller, .. }: Authed<needs::Admin>,
    Path(version): Path<i64>,
) -> ApiResult {
    Ok(axum::Json(roll_back(&s, &caller, version).await?).into_response())
}

/// Makes version `version` current again as a new version (the API's rollback and the
/// console's), audited and sent to every data plane.
pub(crate) async fn roll_back(
    s: &AppState,
    caller: &Caller,
    version: i64,
) -> Result<Value, ApiError> {
    let _push = s.push_lock.lock().await;
    let (v, text) = {
        let mut store = lock!(s.rules);
        let Some(old) = store.get(version).ok().flatten() else {
            return Err(ApiError::new(StatusCode::NOT_FOUND, "no such version"));
        };
        check_rules(&old.text)?;
        let v = store.add(&old.text, &caller.name, &format!("rollback to {version}")).or_500()?;
        let detail =
            format!("to version {version}, sha256 {}", crate::evidence::text_sha256(&old.text));
        store.audit(&caller.name, "rules.rollback", &detail, Some(v)).or_500()?;
        (v, old.text)
    };
    let pushed = with_offline(s, s.links.push_policy(v, &text, PUSH_WAIT).await);
    Ok(json!({ "version": v, "from_version": version, "dataplanes": pushed }))
}
