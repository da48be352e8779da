//! `GET /v1/inventory` and `GET /v1/discoveries` (any reading role): the AI clients seen per
//! host, identity and user, and the events of new ones (ARCHITECTURE.md, "Apps and
//! discovery").
#![allow(clippy::result_large_err)]

use std::collections::HashMap;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use crate::api::{Shared, authorize, error, internal};
use crate::auth::Need;
use crate::inventory::InventoryFilter;
use crate::records_api::{limit_param, only_params, since_param};

/// The inventory's routes.
pub fn routes() -> Router<Shared> {
    Router::new().route("/v1/inventory", get(inventory)).route("/v1/discoveries", get(discoveries))
}

async fn inventory(
    State(s): State<Shared>,
    h: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Err(r) = authorize(&s, &h, Need::Read) {
        return r;
    }
    if let Err(r) = only_params(&q, &["app", "unknown", "host", "identity", "user", "since"]) {
        return r;
    }
    let app = match (q.get("app"), q.get("unknown").map(String::as_str)) {
        (Some(_), Some("true")) => {
            return error(StatusCode::BAD_REQUEST, "app and unknown=true: give one");
        }
        (_, Some("true")) => Some("unknown".to_owned()),
        (a, None | Some("false")) => a.cloned(),
        (_, Some(_)) => return error(StatusCode::BAD_REQUEST, "unknown: true or false"),
    };
    let since_ms = match since_param(&q) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let f = InventoryFilter {
        app,
        host: q.get("host").cloned(),
        identity: q.get("identity").cloned(),
        user: q.get("user").cloned(),
        since_ms,
    };
    let mut store = s.flows.lock().unwrap_or_else(|p| p.into_inner());
    match store.inventory(&f) {
        Ok(rows) => axum::Json(json!({ "rows": rows })).into_response(),
        Err(e) => internal(e),
    }
}

async fn discoveries(
    State(s): State<Shared>,
    h: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Err(r) = authorize(&s, &h, Need::Read) {
        return r;
    }
    if let Err(r) = only_params(&q, &["since", "limit"]) {
        return r;
    }
    let since = match since_param(&q) {
        Ok(s) => s.unwrap_or(0),
        Err(r) => return r,
    };
    let limit = match limit_param(&q) {
        Ok(l) => l,
        Err(r) => return r,
    };
    let store = s.flows.lock().unwrap_or_else(|p| p.into_inner());
    match store.discoveries(since, limit) {
        Ok(records) => axum::Json(json!({ "records": records })).into_response(),
        Err(e) => internal(e),
    }
}
