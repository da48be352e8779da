//! The approval webhook (`[approvals] webhook`, ARCHITECTURE.md, "Approvals"): a JSON POST for
//! each request that starts waiting, for chat tools and ticketing, with who, where, model,
//! findings and the approval's id, never the prompt. Sent from a queue of its own, so the link
//! never waits on it; a full queue drops (and logs), a failed POST is logged, never retried
//! (the approval waits in the API either way).

use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use rustls_pki_types::ServerName;
use serde_json::{Value, json};
use sluice_link::HoldTicket;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::client::{ClientError, tls};
use crate::config::ApprovalsConfig;

/// Notices queued at most.
const QUEUE: usize = 1024;
/// How long one POST may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Where notices go.
#[derive(Debug, Clone)]
struct Target {
    https: Option<Arc<rustls::ClientConfig>>,
    host: String,
    port: u16,
    path: String,
    url: String,
}

/// The queue of the webhook configured in `cfg`, and its sender task (spawn it); `None`
/// without one. A malformed URL or CA is an error at start.
pub fn start(
    cfg: &ApprovalsConfig,
) -> Result<Option<(mpsc::Sender<Value>, impl Future<Output = ()> + Send + use<>)>, ClientError> {
    let Some(url) = &cfg.webhook else { return Ok(None) };
    let bad = || ClientError::Url(url.clone());
    let (https, rest) = if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else {
        return Err(bad());
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() => (h, p.parse().map_err(|_| bad())?),
        _ => (authority, if https { 443 } else { 80 }),
    };
    if host.is_empty() {
        return Err(bad());
    }
    let target = Target {
        https: if https { Some(tls(cfg.webhook_ca.as_deref())?) } else { None },
        host: host.trim_start_matches('[').trim_end_matches(']').to_owned(),
        port,
        path: path.to_owned(),
        url: url.clone(),
    };
    let (tx, mut rx) = mpsc::channel::<Value>(QUEUE);
    let task = async move {
        while let Some(v) = rx.recv().await {
            match tokio::time::timeout(TIMEOUT, post(&target, &v)).await {
                Ok(Ok(status)) if (200..300).contains(&status) => {}
                Ok(Ok(status)) => {
                    tracing::warn!(url = %target.url, status, "approval webhook refused a notice");
                }
                Ok(Err(e)) => tracing::warn!(url = %target.url, "approval webhook: {e}"),
                Err(_) => tracing::warn!(url = %target.url, "approval webhook: timed out"),
            }
        }
    };
    Ok(Some((tx, task)))
}

/// The notice of `ticket`, waiting at data plane `dataplane`.
pub fn notice(ticket: &HoldTicket, dataplane: &str) -> Value {
    let findings: Vec<String> =
        ticket.findings.iter().map(|f| format!("{} ({})", f.detector, f.count)).collect();
    let who = ticket.user.as_deref().unwrap_or(&ticket.identity);
    let mut text = format!(
        "Sluice: a request from {who} ({}) to {} waits for approval: {} {}",
        ticket.identity, ticket.destination, ticket.method, ticket.path
    );
    if let Some(m) = &ticket.model {
        text.push_str(&format!(", model {m}"));
    }
    if !findings.is_empty() {
        text.push_str(&format!(", findings: {}", findings.join(", ")));
    }
    text.push_str(&format!(
        ". sluicectl approvals approve {} (or deny) within {} s.",
        ticket.id, ticket.timeout_s
    ));
    json!({
        "text": text,
        "approval": {
            "id": ticket.id, "dataplane": dataplane, "identity": ticket.identity,
            "user": ticket.user, "src": ticket.src, "destination": ticket.destination,
            "method": ticket.method, "path": ticket.path, "model": ticket.model,
            "why": ticket.why, "findings": ticket.findings, "rule": ticket.rule,
            "timeout_s": ticket.timeout_s, "ts_ms": ticket.ts_ms,
        }
    })
}

async fn post(t: &Target, v: &Value) -> Result<u16, String> {
    let tcp = TcpStream::connect((t.host.as_str(), t.port)).await.map_err(|e| e.to_string())?;
    let body = Full::new(Bytes::from(v.to_string()));
    let req = hyper::Request::post(t.path.as_str())
        .header("host", format!("{}:{}", t.host, t.port))
        .header("content-type", "application/json")
        .header("user-agent", concat!("sluice-control/", env!("CARGO_PKG_VERSION")))
        .body(body)
        .map_err(|e| e.to_string())?;
    match &t.https {
        Some(cfg) => {
            let name = ServerName::try_from(t.host.clone()).map_err(|e| e.to_string())?;
            let tls = tokio_rustls::TlsConnector::from(cfg.clone())
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS: {e}"))?;
            send(hyper_util::rt::TokioIo::new(tls), req).await
        }
        None => send(hyper_util::rt::TokioIo::new(tcp), req).await,
    }
}

async fn send<IO>(io: IO, req: hyper::Request<Full<Bytes>>) -> Result<u16, String>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(io).await.map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    Ok(resp.status().as_u16())
}
