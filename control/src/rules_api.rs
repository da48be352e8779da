//! The rule routes of the API: the current set, validation, push (admin), history, the
//! diff between two versions and rollback (admin). A push or rollback is stored, audited and
//! sent to every data plane, whose answers the reply lists.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use sluice_rules::catalog::ShippedOnly;
use sluice_rules::{Diagnostic, Severity, compile};

use crate::api::{authorize, error, internal, lock, reply};
use crate::auth::Need;
use crate::link::PushResult;
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
