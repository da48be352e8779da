//! `GET /v1/usage` (any reading role): requests and the tokens their responses said they used,
//! per identity, user, destination, model or virtual key, since a time (default: a day).
#![allow(clippy::result_large_err)]

use std::collections::HashMap;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::json;

use crate::api::{ApiResult, Authed, OrInternal, Shared, needs, refuse};
use crate::records_api::{only_params, since_param};
use crate::store::UsageBy;

/// The usage route.
pub fn routes() -> Router<Shared> {
    Router::new().route("/v1/usage", get(usage))
}

async fn usage(
    State(s): State<Shared>,
    _: Authed<needs::Read>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    only_params(&q, &["by", "since"])?;
    let by = match q.get("by").map_or("identity", String::as_str) {
        "identity" => UsageBy::Identity,
        "user" => UsageBy::User,
        "sni" | "destination" => UsageBy::Sni,
        "model" => UsageBy::Model,
        "virtual_key" => UsageBy::VirtualKey,
        other => {
            return refuse(
                StatusCode::BAD_REQUEST,
                format!("by={other}: expected identity, user, sni, model or virtual_key"),
            );
        }
    };
    let since =
        since_param(&q)?.unwrap_or_else(|| crate::link::now_s().saturating_sub(86_400) * 1000);
    let rows = s.flows.lock().unwrap_or_else(|p| p.into_inner()).usage(since, by).or_500()?;
    Ok(axum::Json(json!({ "since_ms": since, "rows": rows })).into_response())
}
