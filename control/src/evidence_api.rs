//! `GET /v1/evidence/export?since=…&until=…[&recordings=true]` (admin, auditor): an evidence
//! bundle of the window ([`crate::evidence`]), with its recordings (still sealed) if asked, as `application/zstd` (a tar archive). Every chain's head is
//! signed first, so the window closes on a checkpoint (unless records arrive between that and
//! the export's snapshot: the segment then ends at the unsigned head). One export at a time. The bundle is built in a private
//! directory beside the store and streamed from a file: a month of records never sits in
//! memory.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::io::{Seek, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::sync::PoisonError;

use axum::Router;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::api::{ApiResult, AppState, Authed, OrInternal, Shared, needs, refuse};
use crate::evidence::Window;
use crate::records_api::{only_params, time_param};

/// Held while an export is built.
static EXPORTING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The evidence routes.
pub fn routes() -> Router<Shared> {
    Router::new().route("/v1/evidence/export", get(export))
}

async fn export(
    State(s): State<Shared>,
    Authed { caller, .. }: Authed<needs::Evidence>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    export_for(&s, &caller, &q).await
}

/// The export of `q` (`since`, `until`, `recordings`) as a download, made for `caller` (the
/// API's and the console's).
pub(crate) async fn export_for(
    s: &Shared,
    caller: &crate::auth::Caller,
    q: &HashMap<String, String>,
) -> ApiResult {
    only_params(q, &["since", "until", "recordings"])?;
    let recordings = match q.get("recordings").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => return refuse(StatusCode::BAD_REQUEST, "recordings: true or false"),
    };
    let t = |k: &str| q.get(k).map(|v| time_param(v));
    let since = match t("since") {
        Some(Some(ms)) => ms,
        None => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "since is required (a date, unix ms or a duration like 30d)",
            );
        }
        Some(None) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "since: a date (2026-10-01), unix ms or a duration like 30d",
            );
        }
    };
    let until = match t("until") {
        Some(Some(ms)) => ms,
        None => crate::link::now_ms() + 1,
        Some(None) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "until: a date (2026-11-01), unix ms or a duration like 1d",
            );
        }
    };
    if until <= since {
        return refuse(
            StatusCode::BAD_REQUEST,
            "until must be after since (the window is since ≤ t < until)",
        );
    }
    if s.audit.checkpointer.is_none() {
        return refuse(StatusCode::SERVICE_UNAVAILABLE, "this control daemon has no signing key");
    }
    // One export at a time: each writes the window's records to the store's volume.
    let Ok(_one) = EXPORTING.try_lock() else {
        return refuse(
            StatusCode::TOO_MANY_REQUESTS,
            "an evidence export is already running: try again when it is done",
        );
    };
    let st = s.clone();
    let who = caller.name.clone();
    let built =
        tokio::task::spawn_blocking(move || build(&st, since, until, recordings, &who)).await;
    let file = built.or_500()?.or_500()?;
    let file = tokio::fs::File::from_std(file);
    let mut r = Body::from_stream(tokio_util::io::ReaderStream::new(file)).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/zstd"));
    r.headers_mut().insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_static("attachment; filename=\"sluice-evidence.tar.zst\""),
    );
    Ok(r)
}

/// A private directory for one export, removed when dropped.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn scratch(s: &AppState) -> std::io::Result<Scratch> {
    let base = s.audit.state_dir.clone().unwrap_or_else(std::env::temp_dir);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    // Under the one-export lock, any other export directory is one a crash left behind: its
    // plain records go.
    if let Ok(rd) = std::fs::read_dir(&base) {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with(".evidence-") {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    let dir = base.join(format!(".evidence-{}-{nanos}", std::process::id()));
    std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
    Ok(Scratch(dir))
}

/// Builds the bundle of `since..=until`: signs every head, writes the files at one moment of
/// the stores, packs them into an unlinked file and returns it, open at its start.
pub fn build(
    s: &AppState,
    since: u64,
    until: u64,
    recordings: bool,
    who: &str,
) -> Result<std::fs::File, String> {
    let Some(cp) = &s.audit.checkpointer else {
        return Err("this control daemon has no signing key".into());
    };
    {
        // Notes an ingest left in the outbox go to control's chain before its head is signed.
        let mut flows = s.flows.lock().unwrap_or_else(PoisonError::into_inner);
        crate::notes::drain_all(s, &mut **flows);
    }
    crate::checkpointer::seal(s)
        .map_err(|e| format!("signing the heads before the export: {e}"))?;
    let key = cp.lock().unwrap_or_else(PoisonError::into_inner).public_hex();
    let dir = scratch(s).map_err(|e| format!("a directory for the export: {e}"))?;
    let w = Window {
        since_ms: since,
        until_ms: until,
        azure_regions: s.audit.cfg.azure_regions.clone(),
        recordings,
        recordings_dir: s.audit.recordings_dir.clone(),
    };
    let files = crate::audit_api::with_stores(s, |flows, rules| {
        crate::evidence::export(flows, rules, &key, &w, &dir.0.join("files"), |m| {
            cp.lock().unwrap_or_else(PoisonError::into_inner).sign_manifest(m)
        })
        .map_err(|e| e.to_string())
    })?;
    let path = dir.0.join("bundle.tar.zst");
    let mut out = std::fs::File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| format!("the bundle file: {e}"))?;
    {
        let mut w = std::io::BufWriter::new(&mut out);
        crate::evidence_bundle::pack(&dir.0.join("files"), &files, &mut w)
            .and_then(|()| w.flush())
            .map_err(|e| format!("packing the bundle: {e}"))?;
    }
    out.rewind().map_err(|e| e.to_string())?;
    let detail = serde_json::json!({"since_ms": since, "until_ms": until, "files": files.len(), "recordings": recordings});
    s.rules
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .audit(who, "evidence.export", &detail.to_string(), None)
        .map_err(|e| format!("exported, not audited: {e}"))?;
    Ok(out)
}
