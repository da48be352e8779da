//! The fleet's routes (ARCHITECTURE.md, "The fleet"): make the fleet CA once
//! (`POST /v1/fleet/init`), enrol a data plane from its certificate request
//! (`POST /v1/fleet/enrol`; the answer holds its certificate and the CA's, never a key),
//! revoke one (`POST /v1/fleet/{name}/revoke`, which also ends its live link), and list the
//! certificates issued (`GET /v1/fleet`). Changes need the admin role and are audited.
#![allow(clippy::result_large_err)]

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;

use crate::api::{ApiError, ApiResult, Authed, OrInternal, Shared, lock, needs};
use crate::fleet::FleetError;

/// The fleet routes.
pub fn routes() -> Router<Shared> {
    Router::new()
        .route("/v1/fleet", get(list))
        .route("/v1/fleet/init", post(init))
        .route("/v1/fleet/enrol", post(enrol))
        .route("/v1/fleet/{name}/revoke", post(revoke))
}

impl From<FleetError> for ApiError {
    fn from(e: FleetError) -> ApiError {
        let status = match &e {
            FleetError::NoCa | FleetError::HasCa(_) | FleetError::Enrolled(_) => {
                StatusCode::CONFLICT
            }
            FleetError::BadName(_) | FleetError::BadRequest(_) => StatusCode::UNPROCESSABLE_ENTITY,
            FleetError::Unknown(_) => StatusCode::NOT_FOUND,
            FleetError::Ca(_) | FleetError::Store(_) => {
                return ApiError::from(crate::api::internal(e));
            }
        };
        ApiError::new(status, e.to_string())
    }
}

/// Writes `action` to the audit log.
fn audit(s: &Shared, who: &str, action: &str, detail: &str) -> Result<(), ApiError> {
    lock!(s.rules).audit(who, action, detail, None).or_500()
}

async fn list(State(s): State<Shared>, _: Authed<needs::Read>) -> ApiResult {
    let (ca, members) = {
        let f = lock!(s.fleet);
        (f.ca().map(|c| (c.sha256(), c.cert_pem().to_owned())), f.members()?)
    };
    let connected: std::collections::HashMap<String, bool> = s
        .links
        .status()
        .into_iter()
        .map(|d| (d.name, d.connected && d.transport == "tls"))
        .collect();
    let members: Vec<_> = members
        .into_iter()
        .map(|m| {
            let live = m.revoked_ms.is_none() && connected.get(&m.name).copied().unwrap_or(false);
            let mut v = serde_json::to_value(&m).unwrap_or_default();
            v["connected"] = json!(live);
            v
        })
        .collect();
    let (ca_sha256, ca_pem) = ca.unzip();
    Ok(axum::Json(json!({ "ca_sha256": ca_sha256, "ca_pem": ca_pem, "certificates": members }))
        .into_response())
}

async fn init(State(s): State<Shared>, Authed { caller, .. }: Authed<needs::Admin>) -> ApiResult {
    let (sha, pem, tls) = {
        let mut f = lock!(s.fleet);
        let ca = f.init()?;
        let (sha, pem) = (ca.sha256(), ca.cert_pem().to_owned());
        (sha, pem, f.server_config()?)
    };
    if let Some(tls) = tls {
        s.set_fleet_tls(tls);
    }
    tracing::info!(ca_sha256 = %sha, by = %caller.name, "fleet CA made");
    audit(&s, &caller.name, "fleet.init", &format!("ca sha256 {sha}"))?;
    Ok((StatusCode::CREATED, axum::Json(json!({ "ca_sha256": sha, "ca_pem": pem })))
        .into_response())
}

/// `POST /v1/fleet/enrol`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Enrol {
    name: String,
    /// The data plane's certificate request, PEM.
    csr: String,
    /// Revoke the name's earlier certificates instead of refusing.
    #[serde(default)]
    replace: bool,
}

async fn enrol(
    State(s): State<Shared>,
    Authed { caller, .. }: Authed<needs::Admin>,
    body: axum::body::Bytes,
) -> ApiResult {
    let req: Enrol = serde_json::from_slice(&body)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("enrol: {e}")))?;
    let (issued, ca_pem) = {
        let mut f = lock!(s.fleet);
        let issued = f.enrol(&req.name, &req.csr, req.replace, &caller.name)?;
        (issued, f.ca().map(|c| c.cert_pem().to_owned()).unwrap_or_default())
    };
    if req.replace {
        s.links.close_enrolled(&req.name, "its certificate was replaced");
    }
    tracing::info!(dataplane = %req.name, sha256 = %issued.sha256, by = %caller.name, "data plane enrolled");
    let detail = format!("{} sha256 {} serial {}", req.name, issued.sha256, issued.serial);
    audit(&s, &caller.name, "fleet.enrol", &detail)?;
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({
            "name": req.name, "certificate": issued.cert_pem, "ca": ca_pem,
            "sha256": issued.sha256, "serial": issued.serial, "not_after": issued.not_after,
        })),
    )
        .into_response())
}

async fn revoke(
    State(s): State<Shared>,
    Authed { caller, .. }: Authed<needs::Admin>,
    Path(name): Path<String>,
) -> ApiResult {
    let n = lock!(s.fleet).revoke(&name, &caller.name)?;
    let disconnected = s.links.close_enrolled(&name, "its certificate was revoked");
    tracing::warn!(dataplane = %name, certificates = n, disconnected, by = %caller.name, "data plane revoked");
    audit(&s, &caller.name, "fleet.revoke", &format!("{name} ({n} certificates)"))?;
    Ok(axum::Json(json!({ "name": name, "revoked": n, "disconnected": disconnected }))
        .into_response())
}
