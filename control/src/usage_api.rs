//! `GET /v1/usage` (any reading role): requests and the tokens their responses said they used,
//! per identity, user, destination, model or virtual key, since a time (default: a day).
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
use crate::records_api::{only_params, since_param};
use crate::store::UsageBy;

/// The usage route.
pub fn routes() -> Router<Shared> {
    Router::new().route("/v1/usage", get(usage))
}

async fn usage(
    State(s): State<Shared>,
    h: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Err(r) = authorize(&s, &h, Need::Read) {
        return r;
    }
    if let Err(r) = only_params(&q, &["by", "since"]) {
        return r;
    }
    let by = match q.get("by").map_or("identity", String::as_str) {
        "identity" => UsageBy::Identity,
        "user" => UsageBy::User,
        "sni" | "destination" => UsageBy::Sni,
        "model" => UsageBy::Model,
        "virtual_key" => UsageBy::VirtualKey,
        other => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("by={other}: expected identity, user, sni, model or virtual_key"),
            );
        }
    };
    let since = match since_param(&q) {
        Ok(s) => s.unwrap_or_else(|| crate::link::now_s().saturating_sub(86_400) * 1000),
        Err(r) => return r,
    };
    let rows = s.flows.lock().unwrap_or_else(|p| p.into_inner()).usage(since, by);
    match rows {
        Ok(rows) => axum::Json(json!({ "since_ms": since, "rows": rows })).into_response(),
        Err(e) => internal(e),
    }
}
