//! The recording routes (any reading role; ARCHITECTURE.md, "Recordings"): recordings listed by
//! time, identity, user or thread (`GET /v1/recordings`) and fetched with their ciphertext
//! (`GET /v1/recordings/{id}`). The API serves what it holds: sealed bytes only the customer's
//! private key opens (`sluicectl sessions show --identity KEY`).
#![allow(clippy::result_large_err)]

use std::collections::HashMap;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use crate::api::{Shared, authorize, error, internal};
use crate::auth::Need;
use crate::recordings::RecordingFilter;
use crate::records_api::time_param;

/// The recording routes.
pub fn routes() -> Router<Shared> {
    Router::new().route("/v1/recordings", get(list)).route("/v1/recordings/{id}", get(show))
}

async fn list(
    State(s): State<Shared>,
    h: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Err(r) = authorize(&s, &h, Need::Read) {
        return r;
    }
    let known = ["since", "identity", "user", "thread", "limit"];
    if let Some(k) = q.keys().find(|k| !known.contains(&k.as_str())) {
        return error(
            StatusCode::BAD_REQUEST,
            format!("unknown parameter `{k}` ({})", known.join(", ")),
        );
    }
    let since_ms = match q.get("since").map(|v| time_param(v)) {
        None => None,
        Some(Some(ms)) => Some(ms),
        Some(None) => {
            return error(StatusCode::BAD_REQUEST, "since: unix ms or a duration like 15m, 7d");
        }
    };
    let limit = match q.get("limit").map(|l| l.parse::<usize>()) {
        None => 100,
        Some(Ok(n)) if (1..=1000).contains(&n) => n,
        Some(_) => return error(StatusCode::BAD_REQUEST, "limit: 1 to 1000"),
    };
    let f = RecordingFilter {
        since_ms,
        identity: q.get("identity").cloned(),
        user: q.get("user").cloned(),
        thread: q.get("thread").cloned(),
    };
    match s.flows.lock().unwrap_or_else(|p| p.into_inner()).recordings(&f, limit) {
        Ok(rows) => axum::Json(json!({ "recordings": rows })).into_response(),
        Err(e) => internal(e),
    }
}

async fn show(State(s): State<Shared>, h: HeaderMap, Path(id): Path<String>) -> Response {
    if let Err(r) = authorize(&s, &h, Need::Read) {
        return r;
    }
    match s.flows.lock().unwrap_or_else(|p| p.into_inner()).recording(&id) {
        Ok(Some((meta, sealed))) => {
            let sealed: serde_json::Value = match serde_json::from_str(&sealed) {
                Ok(v) => v,
                Err(e) => return internal(format!("recording {id}: {e}")),
            };
            axum::Json(json!({ "recording": meta, "sealed": sealed })).into_response()
        }
        Ok(None) => error(StatusCode::NOT_FOUND, format!("no recording {id}")),
        Err(e) => internal(e),
    }
}
