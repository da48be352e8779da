//! The identity feed's routes (feeder role to change, any reading role to list): one
//! address set or removed, many at once, the whole feed listed. Every change is stored,
//! audited and pushed whole to the data planes, whose acknowledgements the answer lists.
#![allow(clippy::result_large_err)]

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use crate::api::{
    ApiResult, AppState, Authed, PUSH_WAIT, Shared, error, internal, needs, refuse, reply,
};
use crate::auth::Caller;
use crate::identstore::{FeedEntry, IdentityStore};
use crate::link::now_s;

/// The identity routes.
pub fn routes() -> Router<Shared> {
    Router::new()
        .route("/v1/identities", get(list_identities).post(bulk_identities))
        .route("/v1/identities/{ip}", axum::routing::put(put_identity).delete(delete_identity))
}

/// The address in a path, or 400.
fn ip_param(ip: &str) -> Result<std::net::IpAddr, Response> {
    ip.parse().map_err(|_| error(StatusCode::BAD_REQUEST, format!("`{ip}` is not an IP address")))
}

/// Stores identity changes, pushes the whole feed to the data planes, audits the call.
async fn identities_changed(
    s: &AppState,
    caller: &Caller,
    action: &str,
    detail: &str,
    change: impl FnOnce(&mut dyn IdentityStore) -> Result<(), crate::store::StoreError>,
) -> Response {
    let all = {
        let mut store = s.identities.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = change(&mut **store) {
            return internal(e);
        }
        match store.all() {
            Ok(a) => a,
            Err(e) => return internal(e),
        }
    };
    let version = s
        .rules
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .current()
        .ok()
        .flatten()
        .map(|v| v.version);
    if let Err(e) = s.rules.lock().unwrap_or_else(|p| p.into_inner()).audit(
        &caller.name,
        action,
        detail,
        version,
    ) {
        return internal(e);
    }
    let pushed = s.links.push_identities_acked(&all, PUSH_WAIT).await;
    axum::Json(json!({ "entries": all.len(), "dataplanes": pushed })).into_response()
}

async fn put_identity(
    State(s): State<Shared>,
    Authed { caller, .. }: Authed<needs::Feed>,
    Path(ip): Path<String>,
    body: Bytes,
) -> ApiResult {
    let ip = ip_param(&ip)?;
    let entry: FeedEntry = match serde_json::from_slice(&body) {
        Ok(e) => e,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, format!("identity: {e}")),
    };
    if entry.ip.is_some_and(|i| i != ip) {
        return refuse(StatusCode::BAD_REQUEST, "the body's ip differs from the path's");
    }
    let id = match entry.into_identity(ip, now_s()) {
        Ok(id) => id,
        Err(e) => return refuse(StatusCode::UNPROCESSABLE_ENTITY, e),
    };
    let detail = format!("{ip} -> {} {:?}", id.user, id.groups);
    Ok(identities_changed(&s, &caller, "identities.set", &detail, |st| st.set(&[id], false)).await)
}

async fn delete_identity(
    State(s): State<Shared>,
    Authed { caller, .. }: Authed<needs::Feed>,
    Path(ip): Path<String>,
) -> ApiResult {
    let ip = ip_param(&ip)?;
    let mut found = true;
    let r = identities_changed(&s, &caller, "identities.remove", &ip.to_string(), |st| {
        found = st.remove(ip)?;
        Ok(())
    })
    .await;
    if !found {
        return refuse(StatusCode::NOT_FOUND, format!("no identity for {ip}"));
    }
    Ok(r)
}

/// `POST /v1/identities`: `{"identities": [{ip, user, groups, ttl}], "replace": false}`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Bulk {
    identities: Vec<FeedEntry>,
    #[serde(default)]
    replace: bool,
}

async fn bulk_identities(
    State(s): State<Shared>,
    Authed { caller, .. }: Authed<needs::Feed>,
    body: Bytes,
) -> Response {
    let bulk: Bulk = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("identities: {e}")),
    };
    let now = now_s();
    let mut ids = Vec::with_capacity(bulk.identities.len());
    let mut errors = Vec::new();
    for (i, e) in bulk.identities.into_iter().enumerate() {
        let Some(ip) = e.ip else {
            errors.push(format!("identities[{i}]: ip is missing"));
            continue;
        };
        match e.into_identity(ip, now) {
            Ok(id) => ids.push(id),
            Err(m) => errors.push(format!("identities[{i}]: {m}")),
        }
    }
    if !errors.is_empty() {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            axum::Json(
                json!({ "error": "invalid entries; nothing was changed", "errors": errors }),
            ),
        )
            .into_response();
    }
    let detail =
        format!("{} entries{}", ids.len(), if bulk.replace { ", replacing all" } else { "" });
    identities_changed(&s, &caller, "identities.bulk", &detail, |st| st.set(&ids, bulk.replace))
        .await
}

async fn list_identities(State(s): State<Shared>, _: Authed<needs::ReadOrFeed>) -> Response {
    reply(s.identities.lock().unwrap_or_else(|p| p.into_inner()).all())
}
