//! A plain `http://` request to the explicit proxy (ARCHITECTURE.md, "Explicit proxy"):
//! decided by its host as a hello's name would be. Allowed, it goes to the origin in origin
//! form, with the origin's `Host` (never the client's), without hop-by-hop or proxy fields,
//! with `Connection: close`, and with exactly its own body: nothing the client sends after it
//! reaches the server, so a second request cannot ride the first one's decision. Refused
//! otherwise, and so is a destination a rule would inspect (inspection needs TLS: plain HTTP
//! is refused there, never passed uninspected).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::answer;
use crate::http::chunked::ChunkedDecoder;
use crate::http::head::{Framing, parse_request};
use crate::http::proxy_head::Authority;
use crate::record::FlowNote;
use crate::{DivertedConn, Shared, conn};

/// Hop-by-hop fields (RFC 9110 §7.6.1), the proxy's own, and `Host` (the origin's is written).
const DROPPED: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authorization",
    "proxy-authenticate",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "host",
];

/// How long the body's next bytes, or the response's, may take.
const IDLE: Duration = Duration::from_secs(60);

/// Serves the request whose head (and whatever followed it) is `buf`: the outcome, and the
/// bytes from and to the client.
#[allow(clippy::too_many_arguments)]
pub(super) async fn forward(
    shared: &Arc<Shared>,
    mut client: TcpStream,
    mut buf: Vec<u8>,
    peer: SocketAddr,
    server: SocketAddr,
    origin: &Authority,
    path: &str,
    tunnel: conn::ProxyTunnel,
) -> (io::Result<()>, u64, u64) {
    let from = buf.len() as u64;
    // The head again, with the strict framing rules of inspected requests (no smuggling).
    let head = match parse_request(&buf) {
        Ok(Some(h)) => h,
        Ok(None) => {
            note(shared, peer, None, "block", "proxy: an incomplete request head");
            return (answer(&mut client, 400, "incomplete request head").await, from, 0);
        }
        Err(e) => {
            note(shared, peer, None, "block", "proxy: a malformed request head");
            return (answer(&mut client, 400, &e.to_string()).await, from, 0);
        }
    };
    let conn = DivertedConn { original_dst: server, client_mac: [0; 6] };
    let name = origin.host.parse::<IpAddr>().is_err().then_some(origin.host.as_str());
    if tunnel.identity.as_ref().is_some_and(|id| *id != shared.decider.identity_of(peer)) {
        // Where the key is used from: the identity of the client's address.
        let why = "the proxy credentials are for another identity";
        note(shared, peer, None, "block", why);
        return (answer(&mut client, 403, why).await, from, 0);
    }
    let d = shared.decider.decide(peer, &conn, name, None, tunnel.user);
    let refusal = match d.action {
        sluice_rules::Action::Allow => None,
        sluice_rules::Action::Block => Some("blocked by policy"),
        sluice_rules::Action::Inspect => {
            Some("plain HTTP to a destination whose traffic is inspected is refused")
        }
    };
    if let Some(why) = refusal {
        note(shared, peer, Some(&d.note), "block", why);
        return (answer(&mut client, 403, why).await, from, 0);
    }
    note(shared, peer, Some(&d.note), "allow", "plain HTTP forwarded by the proxy");
    let mut out = format!("{} {path} HTTP/1.1\r\n", head.method).into_bytes();
    let host = match origin.host.parse::<IpAddr>() {
        Ok(IpAddr::V6(v6)) => format!("[{v6}]"),
        _ => origin.host.clone(),
    };
    let port = if origin.port == 80 { String::new() } else { format!(":{}", origin.port) };
    out.extend_from_slice(format!("Host: {host}{port}\r\n").as_bytes());
    for (n, v) in &head.headers {
        if !DROPPED.contains(&n.as_str()) {
            out.extend_from_slice(n.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(v);
            out.extend_from_slice(b"\r\n");
        }
    }
    out.extend_from_slice(b"Connection: close\r\n\r\n");
    let early = buf.split_off(head.len);
    let up = tokio::time::timeout(shared.cfg.connect_timeout, TcpStream::connect(server)).await;
    let Ok(Ok(mut up)) = up else {
        return (answer(&mut client, 502, "the server could not be reached").await, from, 0);
    };
    let r = async {
        up.write_all(&out).await?;
        let sent = body(&mut client, &mut up, head.framing, early).await?;
        let back =
            tokio::time::timeout(IDLE * 10, tokio::io::copy(&mut up, &mut client)).await.map_err(
                |_| io::Error::new(io::ErrorKind::TimedOut, "the response took too long"),
            )??;
        let _ = client.shutdown().await;
        Ok::<_, io::Error>((sent, back))
    }
    .await;
    match r {
        Ok((sent, back)) => (Ok(()), from + sent, back),
        Err(e) => (Err(e), from, 0),
    }
}

/// Relays exactly the request's body (`early`: what was read with the head) to `up`, however
/// it is framed; what follows it is dropped. The body's bytes read after the head.
async fn body(
    client: &mut TcpStream,
    up: &mut TcpStream,
    framing: Framing,
    mut early: Vec<u8>,
) -> io::Result<u64> {
    let mut chunked = ChunkedDecoder::new();
    let mut left = match framing {
        Framing::Length(n) => n,
        Framing::Empty | Framing::UntilClose => 0,
        Framing::Chunked => u64::MAX,
    };
    let mut read_after = 0u64;
    let mut scratch = Vec::new();
    loop {
        if left == 0 {
            return Ok(read_after);
        }
        if early.is_empty() {
            let n =
                tokio::time::timeout(IDLE, client.read_buf(&mut early)).await.map_err(|_| {
                    io::Error::new(io::ErrorKind::TimedOut, "the request body stalled")
                })??;
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the body was cut short"));
            }
            read_after += n as u64;
        }
        let take = if framing == Framing::Chunked {
            scratch.clear();
            let p = chunked.feed(&early, &mut scratch).map_err(io::Error::other)?;
            if p.done {
                left = 0;
            }
            p.consumed
        } else {
            let n = early.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            left -= n as u64;
            n
        };
        up.write_all(&early[..take]).await?;
        early.drain(..take);
        if left == 0 {
            // Whatever follows the body (a pipelined request) goes nowhere.
            return Ok(read_after);
        }
    }
}

/// Writes what the proxy decided of a forwarded request into its flow's record.
fn note(
    shared: &Shared,
    peer: SocketAddr,
    decision: Option<&crate::record::DecisionNote>,
    action: &'static str,
    reason: &'static str,
) {
    let n = FlowNote { decision: decision.cloned(), ..FlowNote::verdict(action, reason) };
    shared.nat.annotate(peer, n);
}
