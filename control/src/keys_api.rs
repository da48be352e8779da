//! The key routes of the API (admin only; ARCHITECTURE.md, "Key brokering"): provider keys are
//! stored (`PUT /v1/keys/{name}`, the key as the body), listed by name and fingerprint, never
//! returned, and removed; virtual keys are issued (the key returned once) and revoked. Every
//! change is audited (names and fingerprints, never a key) and pushed to the data planes,
//! whose acknowledgements the answer lists: once answered, their next request uses it. The
//! DLP salt travels with them: listed by id (`GET /v1/dlp/salt`, admins and auditors) and
//! rotated (`POST /v1/dlp/salt/rotate`, admins).
#![allow(clippy::result_large_err)]

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

use crate::api::{Authed, PUSH_WAIT, Shared, error, internal, needs};
use crate::auth::Caller;
use crate::keystore::{KeyError, KeyStore};

/// The key routes.
pub fn routes() -> Router<Shared> {
    Router::new()
        .route("/v1/keys", get(list))
        .route("/v1/keys/virtual", post(issue))
        .route("/v1/keys/virtual/{id}", axum::routing::delete(revoke))
        .route("/v1/keys/{name}", axum::routing::put(set).delete(remove))
        .route("/v1/dlp/salt", get(salts))
        .route("/v1/dlp/salt/rotate", post(rotate_salt))
}

fn refused(e: KeyError) -> Response {
    match e {
        KeyError::Invalid(m) => error(StatusCode::UNPROCESSABLE_ENTITY, m),
        KeyError::NotFound(m) => error(StatusCode::NOT_FOUND, m),
        e => internal(e),
    }
}

/// Applies `change` to the key store, audits it, pushes the keys to the data planes. Changes
/// are serialised (with rule pushes), so data planes get them in order; a stored change is
/// always pushed, even if its audit entry could not be written (then the answer is a 500).
async fn changed<T: serde::Serialize>(
    s: &Shared,
    caller: &Caller,
    action: &str,
    change: impl FnOnce(&mut KeyStore) -> Result<(T, String), KeyError>,
) -> Response {
    let _order = s.push_lock.lock().await;
    let (shown, detail) = match change(&mut s.keys.lock().unwrap_or_else(|p| p.into_inner())) {
        Ok(v) => v,
        Err(e) => return refused(e),
    };
    let audit = s.rules.lock().unwrap_or_else(|p| p.into_inner()).audit(
        &caller.name,
        action,
        &detail,
        None,
    );
    let pushed = match s.key_push() {
        Ok(push) => s.links.push_keys_acked(push, PUSH_WAIT).await,
        Err(e) => return internal(e),
    };
    if let Err(e) = audit {
        return internal(format!("{action} {detail}: stored and pushed, not audited: {e}"));
    }
    axum::Json(json!({ "result": shown, "dataplanes": pushed })).into_response()
}

async fn list(State(s): State<Shared>, _: Authed<needs::Admin>) -> Response {
    let k = s.keys.lock().unwrap_or_else(|p| p.into_inner());
    match (k.list(), k.virtual_keys()) {
        (Ok(keys), Ok(virtual_keys)) => {
            axum::Json(json!({ "keys": keys, "virtual_keys": virtual_keys })).into_response()
        }
        (Err(e), _) | (_, Err(e)) => internal(e),
    }
}

async fn set(
    State(s): State<Shared>,
    Authed { caller, .. }: Authed<needs::Admin>,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    let Ok(key) = std::str::from_utf8(&body) else {
        return error(StatusCode::UNPROCESSABLE_ENTITY, "the key is not UTF-8 text");
    };
    changed(&s, &caller, "keys.set", |k| {
        let info = k.set(&name, key, &caller.name)?;
        let detail = format!("{} {}", info.name, info.fingerprint);
        Ok((info, detail))
    })
    .await
}

async fn remove(
    State(s): State<Shared>,
    Authed { caller, .. }: Authed<needs::Admin>,
    Path(name): Path<String>,
) -> Response {
    changed(&s, &caller, "keys.delete", |k| {
        if !k.delete(&name)? {
            return Err(KeyError::NotFound(format!("no key named `{name}`")));
        }
        Ok((json!({ "deleted": name }), name.clone()))
    })
    .await
}

/// `POST /v1/keys/virtual` body.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Issue {
    user: String,
    #[serde(default)]
    identity: Option<String>,
}

async fn issue(
    State(s): State<Shared>,
    Authed { caller, .. }: Authed<needs::Admin>,
    body: Bytes,
) -> Response {
    let req: Issue = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("virtual key: {e}")),
    };
    changed(&s, &caller, "keys.virtual.issue", |k| {
        let (info, key) = k.issue(&req.user, req.identity.as_deref())?;
        let detail = format!(
            "{} for {} ({})",
            info.id,
            info.user,
            info.identity.as_deref().unwrap_or("any identity")
        );
        // The key, this once: only its hash is kept.
        Ok((json!({ "virtual_key": info, "key": key.expose() }), detail))
    })
    .await
}

async fn revoke(
    State(s): State<Shared>,
    Authed { caller, .. }: Authed<needs::Admin>,
    Path(id): Path<String>,
) -> Response {
    changed(&s, &caller, "keys.virtual.revoke", |k| {
        if !k.revoke(&id)? {
            return Err(KeyError::NotFound(format!("no virtual key `{id}` in force")));
        }
        Ok((json!({ "revoked": id }), id.clone()))
    })
    .await
}

/// `GET /v1/dlp/salt`: the DLP salts, newest first (ids and dates; never a salt). Auditors
/// see them too: which hashes compare is evidence.
async fn salts(State(s): State<Shared>, _: Authed<needs::Evidence>) -> Response {
    let k = s.keys.lock().unwrap_or_else(|p| p.into_inner());
    match k.salts() {
        Ok(salts) => axum::Json(json!({ "salts": salts })).into_response(),
        Err(e) => internal(e),
    }
}

/// `POST /v1/dlp/salt/rotate`: a new salt for every finding from now on; the old one is
/// destroyed (ARCHITECTURE.md, "The DLP salt").
async fn rotate_salt(
    State(s): State<Shared>,
    Authed { caller, .. }: Authed<needs::Admin>,
) -> Response {
    changed(&s, &caller, "dlp.salt.rotate", |k| {
        let (made, old) = k.rotate_salt(&caller.name)?;
        let detail = match &old {
            Some(old) => format!("{} replaces {old} (destroyed)", made.id),
            None => made.id.clone(),
        };
        Ok((json!({ "salt": made, "retired": old }), detail))
    })
    .await
}
