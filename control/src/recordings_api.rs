//! The recording routes (any reading role; ARCHITECTURE.md, "Recordings"): recordings listed by
//! time, identity, user or thread (`GET /v1/recordings`) and fetched with their ciphertext
//! (`GET /v1/recordings/{id}`). The API serves what it holds: sealed bytes only the customer's
//! private key opens (`sluicectl sessions show --identity KEY`).
#![allow(clippy::result_large_err)]

use std::collections::HashMap;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use crate::api::{Authed, Shared, error, internal, needs};
use crate::recordings::RecordingFilter;
use crate::records_api::{limit_param, only_params, since_param};

/// The recording routes.
pub fn routes() -> Router<Shared> {
    Router::new().route("/v1/recordings", get(list)).route("/v1/recordings/{id}", get(show))
}

async fn list(
    State(s): State<Shared>,
    _: Authed<needs::Read>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let params = only_params(&q, &["since", "identity", "user", "thread", "limit"])
        .and_then(|()| Ok((since_param(&q)?, limit_param(&q)?)));
    let (since_ms, limit) = match params {
        Ok(p) => p,
        Err(r) => return r,
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

async fn show(State(s): State<Shared>, _: Authed<needs::Read>, Path(id): Path<String>) -> Response {
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
