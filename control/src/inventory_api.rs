//! `GET /v1/inventory` and `GET /v1/discoveries` (any reading role): the AI clients seen per
//! host, identity and user, and the events of new ones (ARCHITECTURE.md, "Apps and
//! discovery").
#![allow(clippy::result_large_err)]

use std::collections::HashMap;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::json;

use crate::api::{ApiResult, Authed, OrInternal, Shared, needs, refuse};
use crate::inventory::InventoryFilter;
use crate::records_api::{limit_param, only_params, since_param};

/// The inventory's routes.
pub fn routes() -> Router<Shared> {
    Router::new().route("/v1/inventory", get(inventory)).route("/v1/discoveries", get(discoveries))
}

async fn inventory(
    State(s): State<Shared>,
    _: Authed<needs::Read>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    only_params(&q, &["app", "unknown", "host", "identity", "user", "since"])?;
    let app = match (q.get("app"), q.get("unknown").map(String::as_str)) {
        (Some(_), Some("true")) => {
            return refuse(StatusCode::BAD_REQUEST, "app and unknown=true: give one");
        }
        (_, Some("true")) => Some("unknown".to_owned()),
        (a, None | Some("false")) => a.cloned(),
        (_, Some(_)) => return refuse(StatusCode::BAD_REQUEST, "unknown: true or false"),
    };
    let since_ms = since_param(&q)?;
    let f = InventoryFilter {
        app,
        host: q.get("host").cloned(),
        identity: q.get("identity").cloned(),
        user: q.get("user").cloned(),
        since_ms,
    };
    let mut store = s.flows.lock().unwrap_or_else(|p| p.into_inner());
    let rows = store.inventory(&f).or_500()?;
    Ok(axum::Json(json!({ "rows": rows })).into_response())
}

async fn discoveries(
    State(s): State<Shared>,
    _: Authed<needs::Read>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    only_params(&q, &["since", "limit"])?;
    let since = since_param(&q)?.unwrap_or(0);
    let limit = limit_param(&q)?;
    let store = s.flows.lock().unwrap_or_else(|p| p.into_inner());
    let records = store.discoveries(since, limit).or_500()?;
    Ok(axum::Json(json!({ "records": records })).into_response())
}
