//! One diverted connection, from its ClientHello to its end (ARCHITECTURE.md, "The
//! interception engine"): the hello read raw (the packet engine's parser, so the flow and its
//! interception see the same SNI, ALPN and JA4), the decision, then a splice (allow), or TLS
//! both ways and the HTTP driver (inspect, or block with a response to each request).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use sluice_hello::{HelloParse, MAX_HELLO, parse_client_hello};
use sluice_rules::Action as RuleAction;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tracing::{info, warn};

use crate::Shared;
use crate::block::Refusal;
use crate::decide::Decided;
use crate::record::{FlowNote, HelloNote};
use crate::tls::{HandshakeFailure, server_config};
use crate::{DivertedConn, Replay, h1, pool, verify};

/// How long a client may take to send its whole ClientHello, however it trickles in.
const HELLO_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a client TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);

/// Serves one accepted connection.
pub(crate) async fn connection(
    shared: &Shared,
    mut client: TcpStream,
    peer: SocketAddr,
) -> io::Result<()> {
    let Some(conn) = shared.nat.lookup(peer) else {
        // Not a diverted flow (a stray connection to the TUN address): refuse.
        return Ok(());
    };
    let _ = client.set_nodelay(true);
    // 1. The ClientHello, raw.
    let mut raw = Vec::with_capacity(2048);
    let mut scratch = Vec::new();
    let hello_deadline = tokio::time::Instant::now() + HELLO_TIMEOUT;
    let hello = loop {
        let n = tokio::time::timeout_at(hello_deadline, client.read_buf(&mut raw))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no ClientHello"))??;
        match parse_client_hello(&raw, &mut scratch) {
            HelloParse::Incomplete if n > 0 && raw.len() < MAX_HELLO => continue,
            HelloParse::Incomplete => {
                shared.nat.annotate(peer, FlowNote::verdict("block", "no whole ClientHello"));
                return Ok(());
            }
            HelloParse::NotTls => break None,
            HelloParse::Malformed(why) => {
                shared.nat.annotate(peer, FlowNote::verdict("block", why));
                return Ok(());
            }
            HelloParse::Hello(h) => break Some(HelloNote::of(&h)),
        }
    };
    let sni = hello.as_ref().and_then(|h| h.sni.clone());
    let d = shared.decider.decide(peer, &conn, sni.as_deref());
    let pinned_key = (peer.ip(), sni.clone().unwrap_or_default());
    let pinned =
        d.action == RuleAction::Inspect && d.fail_open && shared.decider.is_pinned(&pinned_key);
    let tls = hello.is_some();
    shared.nat.annotate(
        peer,
        FlowNote {
            hello,
            decision: Some(d.note.clone()),
            action: Some(if pinned { "allow" } else { d.action.as_str() }),
            reason: Some(match (pinned, d.action) {
                (true, _) => "client refused the minted certificate earlier: spliced",
                (_, RuleAction::Allow) => "diverted, spliced to the server",
                (_, RuleAction::Inspect) => "inspected",
                (_, RuleAction::Block) => "blocked with a response",
            }),
            alpn_negotiated: None,
        },
    );
    if !tls && d.action != RuleAction::Allow {
        // Not TLS on a TLS port and not allowed: nothing to answer with.
        return Ok(());
    }
    let action = if pinned { RuleAction::Allow } else { d.action };
    match action {
        RuleAction::Allow => splice(shared, client, peer, &conn, &raw).await,
        RuleAction::Block => {
            let r = Refusal::forbidden(
                "blocked_by_policy",
                format!(
                    "{} is not allowed for {}",
                    d.note.category.as_deref().unwrap_or("this destination"),
                    d.note.identity
                ),
                d.note.rule.as_deref(),
            );
            intercept(shared, client, peer, &conn, raw, sni, d, Some(r)).await
        }
        RuleAction::Inspect => intercept(shared, client, peer, &conn, raw, sni, d, None).await,
    }
}

/// Connects to `server` from a reserved port, with the client's address on the wire.
async fn connect_upstream(
    shared: &Shared,
    peer: SocketAddr,
    server: SocketAddr,
) -> io::Result<TcpStream> {
    let local_ip = shared.cfg.listen.local(server.ip());
    let mut last = io::Error::new(io::ErrorKind::AddrNotAvailable, "no upstream port free");
    for _ in 0..8 {
        let Some(port) = shared.nat.open_upstream(peer, server) else { break };
        let sock = if server.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
        sock.set_reuseaddr(true)?;
        if let Err(e) = sock.bind(SocketAddr::new(local_ip, port)) {
            shared.nat.release_upstream(port);
            last = e;
            continue;
        }
        let result = tokio::time::timeout(shared.cfg.connect_timeout, sock.connect(server)).await;
        return match result {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                Ok(s)
            }
            Ok(Err(e)) => {
                // The port's NAT entry goes with the failed attempt; a port still held by a
                // previous connection to the same server is retried with another.
                shared.nat.release_upstream(port);
                if matches!(e.kind(), io::ErrorKind::AddrNotAvailable | io::ErrorKind::AddrInUse) {
                    last = e;
                    continue;
                }
                Err(e)
            }
            Err(_) => {
                shared.nat.release_upstream(port);
                Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))
            }
        };
    }
    Err(last)
}

/// Allowed after all: the client talks to the real server through us, bytes untouched.
async fn splice(
    shared: &Shared,
    mut client: TcpStream,
    peer: SocketAddr,
    conn: &DivertedConn,
    raw: &[u8],
) -> io::Result<()> {
    let mut up = connect_upstream(shared, peer, conn.original_dst).await?;
    up.write_all(raw).await?;
    tokio::io::copy_bidirectional(&mut client, &mut up).await?;
    Ok(())
}

/// Upstream TLS first (its certificate decides whether the client may be served at all), or
/// the reason every request will be refused.
async fn open_upstream(
    shared: &Shared,
    peer: SocketAddr,
    server: SocketAddr,
    sni: Option<&str>,
    rule: Option<&str>,
) -> Result<pool::Upstream, Refusal> {
    let tcp = connect_upstream(shared, peer, server).await.map_err(|e| Refusal {
        status: 502,
        code: "upstream_unreachable",
        message: format!("the server could not be reached ({})", e.kind()),
        rule: rule.map(str::to_owned),
    })?;
    let name = match sni {
        Some(s) => ServerName::try_from(s.to_owned()),
        None => Ok(ServerName::IpAddress(server.ip().into())),
    };
    let Ok(name) = name else {
        return Err(Refusal::forbidden(
            "bad_server_name",
            "the TLS server name is not a valid host name",
            rule,
        ));
    };
    let connector = tokio_rustls::TlsConnector::from(shared.cfg.upstream.clone());
    connector.connect(name, tcp).await.map_err(|e| {
        let fault = verify::classify(&e);
        warn!(%peer, sni = sni.unwrap_or(""), code = fault.code, "upstream TLS refused: {e}");
        shared.nat.annotate(peer, FlowNote::verdict("block", fault.reason));
        Refusal::forbidden(fault.code, fault.reason, rule)
    })
}

#[allow(clippy::too_many_arguments)]
async fn intercept(
    shared: &Shared,
    client: TcpStream,
    peer: SocketAddr,
    conn: &DivertedConn,
    raw: Vec<u8>,
    sni: Option<String>,
    d: Decided,
    mut refuse: Option<Refusal>,
) -> io::Result<()> {
    let server = conn.original_dst;
    let key = pool::Key { client: peer.ip(), server, sni: sni.clone() };
    // An idle connection this client left to the same server and name was verified already.
    let mut upstream = if refuse.is_none() { pool::take(&key) } else { None };
    if refuse.is_none() && upstream.is_none() {
        match open_upstream(shared, peer, server, sni.as_deref(), d.note.rule.as_deref()).await {
            Ok(up) => upstream = Some(up),
            Err(r) => refuse = Some(r),
        }
    }
    // The client's TLS, with a leaf for its SNI (or the original destination's address).
    let server_cfg = match sni {
        Some(_) => shared.server_cfg.clone(),
        None => Arc::new(server_config(&shared.cfg.minter, server.ip()).map_err(io::Error::other)?),
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(server_cfg);
    let accepted =
        tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(Replay::new(raw, client))).await;
    let mut tls = match accepted {
        Ok(Ok(t)) => t,
        other => {
            let (failure, why) = match other {
                Ok(Err(e)) => (HandshakeFailure::of(&e), e.to_string()),
                _ => (HandshakeFailure::TimedOut, "timed out".into()),
            };
            let fail_open = d.fail_open;
            info!(%peer, sni = sni.as_deref().unwrap_or(""), ?failure, "client TLS handshake failed: {why}");
            let pinned = failure == HandshakeFailure::CertificateRefused && fail_open;
            let action = if pinned { "allow" } else { "block" };
            shared.nat.annotate(peer, FlowNote::verdict(action, failure.reason(fail_open)));
            if pinned {
                shared.decider.remember_pinned((peer.ip(), sni.unwrap_or_default()));
            }
            return Ok(());
        }
    };
    let alpn = match tls.get_ref().1.alpn_protocol() {
        Some(b"http/1.0") => Some("http/1.0"),
        Some(b"http/1.1") => Some("http/1.1"),
        _ => None,
    };
    if alpn.is_some() {
        shared.nat.annotate(peer, FlowNote { alpn_negotiated: alpn, ..FlowNote::default() });
    }
    let session =
        d.session(sni.clone().unwrap_or_else(|| server.ip().to_string()), peer, server, refuse);
    let sink = shared.sink.as_ref();
    let result = match upstream.as_mut() {
        Some(up) => h1::serve_keeping(&mut tls, Some(up), &session, sink).await,
        None => h1::serve_keeping::<_, pool::Upstream>(&mut tls, None, &session, sink).await,
    };
    let _ = tls.shutdown().await;
    if let Some(mut up) = upstream {
        if matches!(result, Ok(true)) {
            pool::put(key, up);
        } else {
            let _ = up.shutdown().await;
        }
    }
    result.map(|_| ()).map_err(|e| io::Error::other(e.to_string()))
}
