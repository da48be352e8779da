//! The approval routes (role `approver` or admin; ARCHITECTURE.md, "Approvals"): held
//! requests listed (`GET /v1/approvals?state=pending`), shown (`GET /v1/approvals/{id}`, with
//! the prompt while it waits when the rule lets reviewers read it), and decided (`POST
//! /v1/approvals/{id}` with `{"decision": "approve" | "deny", "minutes": N, "reason": "…"}`).
//! A reviewer cannot decide a request of their own (their token's `user`); every decision is
//! audited and sent to the data planes.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use serde_json::json;
use sluice_link::{Decision, Grant};

use crate::api::{
    ApiError, ApiResult, AppState, Authed, OrInternal, Shared, error, internal, needs, refuse,
};
use crate::auth::Caller;
use crate::records_api::{limit_param, only_params};

/// Longest approval for a while (minutes): a day.
pub const MAX_GRANT_MINUTES: u32 = 1440;
/// Longest reason.
const MAX_REASON: usize = 500;

/// The decision a decided approval stands for (sent when it is made, and again to a data plane
/// that holds the request anew after a reconnect); `None` while it waits.
pub(crate) fn decision_of(a: &crate::approvals::Approval) -> Option<Decision> {
    let approved = match a.state.as_str() {
        "approved" => true,
        "denied" => false,
        _ => return None,
    };
    let text = |k: &str| a.request.get(k).and_then(|v| v.as_str()).map(str::to_owned);
    let decided_ms = a.decided_ms.unwrap_or_else(crate::link::now_ms);
    let grant = a.grant_minutes.filter(|_| approved).map(|m| Grant {
        who: match text("user") {
            Some(u) => format!("user:{u}"),
            None => format!("identity:{}", text("identity").unwrap_or_default()),
        },
        destination: text("destination").unwrap_or_default(),
        rule: text("rule"),
        until_ms: decided_ms.saturating_add(u64::from(m) * 60_000),
    });
    Some(Decision {
        id: a.id.clone(),
        approved,
        by: a.decided_by.clone().unwrap_or_default(),
        reason: a.reason.clone(),
        grant_minutes: a.grant_minutes,
        grant,
    })
}

/// The approval routes.
pub fn routes() -> Router<Shared> {
    Router::new()
        .route("/v1/approvals", get(list))
        .route("/v1/approvals/{id}", get(show).post(decide))
}

const STATES: [&str; 7] = ["pending", "approved", "denied", "timeout", "gone", "abandoned", "all"];

async fn list(
    State(s): State<Shared>,
    _: Authed<needs::Approve>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    only_params(&q, &["state", "limit"])?;
    let state = q.get("state").map_or("pending", String::as_str);
    if !STATES.contains(&state) {
        return refuse(
            StatusCode::BAD_REQUEST,
            format!("state={state}: expected one of {}", STATES.join(", ")),
        );
    }
    let limit = limit_param(&q)?;
    let filter = (state != "all").then_some(state);
    let rows =
        s.approvals.lock().unwrap_or_else(|p| p.into_inner()).list(filter, limit).or_500()?;
    Ok(axum::Json(json!({ "approvals": rows })).into_response())
}

async fn show(
    State(s): State<Shared>,
    _: Authed<needs::Approve>,
    Path(id): Path<String>,
) -> Response {
    let found = s.approvals.lock().unwrap_or_else(|p| p.into_inner()).get(&id);
    match found {
        Ok(Some(a)) => {
            let prompt = (a.state == "pending").then(|| s.prompts.get(&id)).flatten();
            let mut v = json!(a);
            v["prompt"] = json!(prompt);
            axum::Json(v).into_response()
        }
        Ok(None) => error(StatusCode::NOT_FOUND, format!("no approval {id}")),
        Err(e) => internal(e),
    }
}

/// A decision as a reviewer sends it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    decision: String,
    #[serde(default)]
    minutes: Option<u32>,
    #[serde(default)]
    reason: Option<String>,
}

async fn decide(
    State(s): State<Shared>,
    Authed { caller, .. }: Authed<needs::Approve>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult {
    let b: Body = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "expected {{\"decision\": \"approve\" | \"deny\", \"minutes\", \"reason\"}}: {e}"
            ),
        )
    })?;
    let approved = match b.decision.as_str() {
        "approve" => true,
        "deny" => false,
        other => {
            return refuse(
                StatusCode::BAD_REQUEST,
                format!("decision {other:?}: expected approve or deny"),
            );
        }
    };
    let ruling = Ruling { approved, minutes: b.minutes, reason: b.reason };
    Ok(axum::Json(rule_on(&s, &caller, &id, ruling)?).into_response())
}

/// A reviewer's decision on a held request.
#[derive(Debug)]
pub(crate) struct Ruling {
    /// Approve (true) or deny.
    pub approved: bool,
    /// How long an approval lasts for the requester (minutes), beyond this request.
    pub minutes: Option<u32>,
    /// Why (trimmed, at most [`MAX_REASON`] characters, control characters refused).
    pub reason: Option<String>,
}

/// Decides held request `id` (the API's and the console's): checks the ruling, sends it to
/// the data plane holding the request and audits it; the reply is the approval and which
/// data planes it was delivered to.
pub(crate) fn rule_on(
    s: &AppState,
    caller: &Caller,
    id: &str,
    b: Ruling,
) -> Result<serde_json::Value, ApiError> {
    let approved = b.approved;
    if let Some(m) = b.minutes
        && (!approved || m == 0 || m > MAX_GRANT_MINUTES)
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("minutes: 1 to {MAX_GRANT_MINUTES}, with an approval only"),
        ));
    }
    let reason = b.reason.map(|r| r.trim().chars().take(MAX_REASON).collect::<String>());
    let reason = reason.filter(|r| !r.is_empty() && !r.chars().any(char::is_control));
    let current = s.approvals.lock().unwrap_or_else(|p| p.into_inner()).get(id).or_500()?;
    let Some(current) = current else {
        return Err(ApiError::new(StatusCode::NOT_FOUND, format!("no approval {id}")));
    };
    // A wait that ended without the data plane saying so (it went away) is over anyway.
    let ends = current.request["ts_ms"]
        .as_u64()
        .unwrap_or(0)
        .saturating_add(current.request["timeout_s"].as_u64().unwrap_or(0).saturating_mul(1000));
    if current.state == "pending" && ends < crate::link::now_ms() {
        let _ = s.approvals.lock().unwrap_or_else(|p| p.into_inner()).ended(id, "timeout");
        s.prompts.forget(id);
        let why = format!("approval {id} no longer waits (timeout)");
        return Err(ApiError::new(StatusCode::CONFLICT, why));
    }
    if let (Some(me), Some(them)) = (caller.user.as_deref(), current.user())
        && me.eq_ignore_ascii_case(them)
    {
        let why = "a reviewer cannot decide a request of their own";
        return Err(ApiError::new(StatusCode::FORBIDDEN, why));
    }
    let decided = s.approvals.lock().unwrap_or_else(|p| p.into_inner()).decide(
        id,
        approved,
        &caller.name,
        reason.as_deref(),
        b.minutes,
    );
    let Some(a) = decided.or_500()? else {
        let why = format!("approval {id} no longer waits ({})", current.state);
        return Err(ApiError::new(StatusCode::CONFLICT, why));
    };
    s.prompts.forget(id);
    let text = |k: &str| a.request.get(k).and_then(|v| v.as_str()).map(str::to_owned);
    let Some(decision) = decision_of(&a) else {
        return Err(internal(format!("approval {id}: decided, and no decision to send")).into());
    };
    let delivered = s.links.push_decision(&decision);
    let detail = json!({
        "id": id, "dataplane": a.dataplane, "identity": text("identity"), "user": text("user"),
        "destination": text("destination"), "reason": reason, "minutes": b.minutes,
    });
    let action = if approved { "approval.approve" } else { "approval.deny" };
    if let Err(e) = s.rules.lock().unwrap_or_else(|p| p.into_inner()).audit(
        &caller.name,
        action,
        &detail.to_string(),
        None,
    ) {
        let e = format!("{action} {id}: decided and sent, not audited: {e}");
        return Err(internal(e).into());
    }
    tracing::info!(%id, by = %caller.name, approved, delivered, "approval decided");
    Ok(json!({ "approval": a, "delivered_to": delivered }))
}
