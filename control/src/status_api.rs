//! The API's routes about control itself: health, the enterprise CA, status (with each
//! data plane flagged by whether it enforces control's current rules), the OpenAPI
//! document, the audit log (admin, auditor) and the Prometheus metrics.
#![allow(clippy::result_large_err)]

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use crate::api::{Authed, error, lock, needs, reply};
use crate::state::{AppState, Shared};
use crate::store::Kind;

/// The routes about control itself.
pub fn routes() -> Router<Shared> {
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/ca.pem", get(ca_pem))
        .route("/v1/status", get(status))
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/audit", get(audit))
        .route("/metrics", get(metrics))
}

async fn health(State(s): State<Shared>, _: Authed<needs::ReadOrFeed>) -> Response {
    let version = lock!(s.rules).current().ok().flatten().map(|v| v.version);
    axum::Json(json!({ "status": "ok", "rules_version": version,
                       "uptime_s": s.started.elapsed().as_secs() }))
    .into_response()
}

async fn ca_pem(State(s): State<Shared>, _: Authed<needs::Read>) -> Response {
    match &s.ca_pem {
        Some(p) => ([(header::CONTENT_TYPE, "application/x-pem-file")], p.clone()).into_response(),
        None => error(StatusCode::NOT_FOUND, "no enterprise CA is configured"),
    }
}

/// The names of the data planes enrolled in the fleet (a certificate not revoked).
pub(crate) fn enrolled_names(s: &AppState) -> Vec<String> {
    let mut names: Vec<String> = match lock!(s.fleet).members() {
        Ok(m) => m.into_iter().filter(|m| m.revoked_ms.is_none()).map(|m| m.name).collect(),
        Err(e) => {
            tracing::error!("reading the fleet: {e}");
            Vec::new()
        }
    };
    names.sort();
    names.dedup();
    names
}

/// The data planes' status (every one seen since control started, and every enrolled one,
/// connected or not), each flagged by whether it enforces control's current rule set.
pub(crate) fn dataplanes(s: &AppState) -> Vec<crate::link::DataplaneStatus> {
    let current =
        lock!(s.rules).current().ok().flatten().map(|v| crate::evidence::text_sha256(&v.text));
    let mut all = s.links.status();
    for name in enrolled_names(s) {
        if !all.iter().any(|d| d.name == name) {
            all.push(crate::link::DataplaneStatus { name, transport: "tls", ..Default::default() });
        }
    }
    all.sort_by(|a, b| a.name.cmp(&b.name));
    for d in &mut all {
        d.policy_current = current.as_ref().map(|c| d.policy_sha256.as_ref() == Some(c));
    }
    all
}

async fn status(State(s): State<Shared>, _: Authed<needs::Read>) -> Response {
    let version = lock!(s.rules).current().ok().flatten().map(|v| v.version);
    let (flows, requests) = {
        let st = lock!(s.flows);
        (st.count_of(Kind::Flows).unwrap_or(0), st.count_of(Kind::Requests).unwrap_or(0))
    };
    let identities = lock!(s.identities).all().map_or(0, |a| a.len());
    axum::Json(json!({
        "rules_version": version,
        "uptime_s": s.started.elapsed().as_secs(),
        "dataplanes": dataplanes(&s),
        "identities": identities,
        "stored": { "flows": flows, "requests": requests },
        "syslog_dropped": s.hub.syslog_dropped.load(std::sync::atomic::Ordering::Relaxed),
    }))
    .into_response()
}

async fn openapi(_: Authed<needs::ReadOrFeed>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

/// The OpenAPI 3.1 description of this API.
pub const OPENAPI: &str = include_str!("openapi.json");

async fn audit(State(s): State<Shared>, _: Authed<needs::Evidence>) -> Response {
    reply(lock!(s.rules).audit_log(1000))
}

async fn metrics(State(s): State<Shared>, _: Authed<needs::Read>) -> Response {
    let version = lock!(s.rules).current().ok().flatten().map_or(0, |v| v.version);
    let (flows, requests, hosts_per_app) = {
        let mut st = lock!(s.flows);
        (
            st.count_of(Kind::Flows).unwrap_or(0),
            st.count_of(Kind::Requests).unwrap_or(0),
            st.hosts_per_app().unwrap_or_default(),
        )
    };
    let body = crate::metrics::render(&crate::metrics::Inputs {
        policy_version: version,
        stored_flows: flows,
        stored_requests: requests,
        uptime_s: s.started.elapsed().as_secs(),
        dataplanes: dataplanes(&s),
        hub: &s.hub,
        hosts_per_app,
        console_sessions: s.console.count(),
        link_refused: s.links.refused.load(std::sync::atomic::Ordering::Relaxed),
    });
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}
