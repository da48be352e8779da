//! The evidence routes: `GET /v1/audit/key` (any valid token: the public key auditors pin) and
//! `GET /v1/audit/verify` (admin, auditor: every chain walked against the signed checkpoints,
//! [`crate::audit_verify`]).
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::sync::PoisonError;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use crate::api::{ApiResult, AppState, Authed, OrInternal, Shared, error, needs};
use crate::audit_verify::{Ask, Verification};
use crate::records::EvidenceView;
use crate::records_api::{only_params, since_param};
use crate::rulestore::RuleLog;

/// The evidence routes.
pub fn routes() -> Router<Shared> {
    Router::new().route("/v1/audit/key", get(key)).route("/v1/audit/verify", get(verify))
}

async fn key(State(s): State<Shared>, _: Authed<needs::Any>) -> Response {
    match &s.audit.checkpointer {
        Some(cp) => {
            let public = cp.lock().unwrap_or_else(PoisonError::into_inner).public_hex();
            axum::Json(json!({ "algorithm": "ed25519", "public_key": public })).into_response()
        }
        None => error(StatusCode::NOT_FOUND, "this control daemon has no signing key"),
    }
}

async fn verify(
    State(s): State<Shared>,
    _: Authed<needs::Evidence>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    only_params(&q, &["dataplane", "since"])?;
    let since_ms = since_param(&q)?;
    let ask = Ask { dataplane: q.get("dataplane").cloned(), since_ms };
    let st = s.clone();
    let v = tokio::task::spawn_blocking(move || run(&st, &ask)).await.or_500()?.or_500()?;
    Ok(axum::Json(v).into_response())
}

/// Verifies the stores: the record store on a connection of its own (read-only), so that
/// ingestion goes on; a store in memory under its lock.
pub fn run(s: &AppState, ask: &Ask) -> Result<Verification, String> {
    let Some(cp) = &s.audit.checkpointer else {
        return Err("this control daemon has no signing key".into());
    };
    let key = cp.lock().unwrap_or_else(PoisonError::into_inner).public();
    with_stores(s, |flows, rules| {
        crate::audit_verify::verify(flows, rules, &key, ask).map_err(|e| e.to_string())
    })
}

/// Calls `f` with both stores as they are at one moment: on connections of their own
/// (read-only) where they can have them, so that ingestion goes on; stores in memory under
/// their locks.
pub fn with_stores<T>(
    s: &AppState,
    f: impl FnOnce(&dyn EvidenceView, &dyn RuleLog) -> Result<T, String>,
) -> Result<T, String> {
    let fail = |what: &str, e: crate::store::StoreError| format!("opening {what} to verify: {e}");
    let flows = s.flows.lock().unwrap_or_else(PoisonError::into_inner).reader();
    let rules = s.rules.lock().unwrap_or_else(PoisonError::into_inner).reader();
    match (
        flows.map_err(|e| fail("the record store", e))?,
        rules.map_err(|e| fail("the rule store", e))?,
    ) {
        (Some(mut flows), Some(mut rules)) => {
            {
                // One moment of both stores: ingestion writes a batch and the notes about its
                // chain under this lock; retention signs a cut before it deletes.
                let mut ingest = s.flows.lock().unwrap_or_else(PoisonError::into_inner);
                // What an ingest left in the outbox goes to the audit log first.
                crate::notes::drain_all(s, &mut **ingest);
                flows.hold_snapshot().map_err(|e| e.to_string())?;
                rules.hold_snapshot().map_err(|e| e.to_string())?;
            }
            f(&*flows, &*rules)
        }
        _ => {
            let mut flows = s.flows.lock().unwrap_or_else(PoisonError::into_inner);
            crate::notes::drain_all(s, &mut **flows);
            let rules = s.rules.lock().unwrap_or_else(PoisonError::into_inner);
            f(flows.view(), &**rules)
        }
    }
}
