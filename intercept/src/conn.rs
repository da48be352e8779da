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
use tracing::{debug, info, warn};

use crate::Shared;
use crate::block::Refusal;
use crate::decide::{Decided, PinKey};
use crate::record::{FlowNote, HelloNote};
use crate::tls::{HandshakeFailure, server_config};
use crate::{DivertedConn, Replay, h1, h2, pool, verify};

/// How long a client may take to send its whole ClientHello, however it trickles in.
const HELLO_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a client TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);

/// The client's side of a connection: a diverted TCP connection, or a proxy's tunnel.
pub(crate) trait ClientIo:
    tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static
{
}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static> ClientIo for T {}

/// Serves one accepted diverted connection.
pub(crate) async fn connection(
    shared: &Arc<Shared>,
    client: TcpStream,
    peer: SocketAddr,
) -> io::Result<()> {
    let Some(conn) = shared.nat.lookup(peer) else {
        // Not a diverted flow (a stray connection to the TUN address): refuse.
        return Ok(());
    };
    let _ = client.set_nodelay(true);
    serve(shared, client, Vec::with_capacity(2048), peer, conn, ProxyTunnel::default()).await
}

/// What an explicit proxy's client asked for, and who it proved to be (nothing for a
/// diverted connection).
#[derive(Debug, Default)]
pub(crate) struct ProxyTunnel {
    /// The host name of the CONNECT (none for an IP literal): the hello must name it.
    pub host: Option<String>,
    /// The user its `Proxy-Authorization` proved (a virtual key), with the feed's groups.
    pub user: Option<sluice_rules::OverlayEntry>,
    /// The identity that user's virtual key is restricted to, if it is.
    pub identity: Option<String>,
    /// A proxy's tunnel (the checks of [`crate::proxy::check_tunnel`] apply).
    pub proxied: bool,
}

/// Serves a client connection to `conn.original_dst` whose first bytes (`raw`, possibly
/// none) were read already: the ClientHello, the decision, then a splice, or TLS both ways.
/// `tunnel`: what an explicit proxy's client asked for and who it is.
pub(crate) async fn serve<C: ClientIo>(
    shared: &Arc<Shared>,
    mut client: C,
    mut raw: Vec<u8>,
    peer: SocketAddr,
    conn: DivertedConn,
    tunnel: ProxyTunnel,
) -> io::Result<()> {
    // 1. The ClientHello, raw (what was read already first: a proxy's client may send its
    // hello right behind its CONNECT, and then waits for an answer).
    let mut scratch = Vec::new();
    let hello_deadline = tokio::time::Instant::now() + HELLO_TIMEOUT;
    let hello = loop {
        let parsed = if raw.is_empty() {
            HelloParse::Incomplete
        } else {
            parse_client_hello(&raw, &mut scratch)
        };
        match parsed {
            HelloParse::Incomplete if raw.len() < MAX_HELLO => {
                let n = tokio::time::timeout_at(hello_deadline, client.read_buf(&mut raw))
                    .await
                    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no ClientHello"))??;
                if n == 0 {
                    shared.nat.annotate(peer, FlowNote::verdict("block", "no whole ClientHello"));
                    return Ok(());
                }
            }
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
    let mut sni = hello.as_ref().and_then(|h| h.sni.clone());
    let ja4 = hello.as_ref().map(|h| h.ja4.clone()).unwrap_or_default();
    if tunnel.proxied {
        match crate::proxy::check_tunnel(shared, peer, &conn, &tunnel, hello.as_ref()).await {
            Ok(name) => sni = name,
            Err(why) => {
                shared.nat.annotate(peer, FlowNote { hello, ..FlowNote::verdict("block", why) });
                return Ok(());
            }
        }
    }
    // A hello whose real name hides behind an ECH public name gets the rule set's `ech`
    // setting, as on the packet path: a diverted flow's hello is read here, not there.
    if hello.as_ref().is_some_and(HelloNote::hides_name) && shared.decider.ech_refused(peer, &conn)
    {
        let why = "ECH: an encrypted ClientHello hides the server name";
        shared.nat.annotate(peer, FlowNote { hello, ..FlowNote::verdict("block", why) });
        return Ok(());
    }
    let offered = Offered::of(hello.as_ref().map_or(&[][..], |h| &h.alpn));
    let d = shared.decider.decide(
        peer,
        &conn,
        sni.as_deref(),
        hello.is_some().then_some(&*ja4),
        tunnel.user,
    );
    let pinned_key = (peer.ip(), sni.clone().unwrap_or_default(), ja4);
    // A client that refused the minted certificate is spliced under a failing-open policy,
    // never where the rule's access controls need the requests (a brokered key, a quota, an
    // approval, a recording): a spliced connection would step around them.
    let may_splice = d.may_splice();
    let pinned =
        d.action == RuleAction::Inspect && may_splice && shared.decider.is_pinned(&pinned_key);
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
        // Not TLS where the rule inspects or blocks: nothing to answer with, nothing passes.
        let why = "not TLS where the rule inspects or blocks: refused";
        shared.nat.annotate(peer, FlowNote::verdict("block", why));
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
            intercept(shared, client, peer, &conn, raw, (sni, pinned_key), offered, d, Some(r))
                .await
        }
        RuleAction::Inspect => {
            intercept(shared, client, peer, &conn, raw, (sni, pinned_key), offered, d, None).await
        }
    }
}

/// Connects to `server` from a reserved port, with the client's address on the wire.
async fn connect_upstream(
    shared: &Shared,
    peer: SocketAddr,
    server: SocketAddr,
) -> io::Result<TcpStream> {
    let listen = match shared.cfg.front {
        crate::Front::Divert(listen) => listen,
        // An explicit proxy's upstream connections are the host's own.
        crate::Front::Proxy(_) => {
            let s = tokio::time::timeout(shared.cfg.connect_timeout, TcpStream::connect(server))
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
            let _ = s.set_nodelay(true);
            return Ok(s);
        }
    };
    let local_ip = listen.local(server.ip());
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
async fn splice<C: ClientIo>(
    shared: &Shared,
    mut client: C,
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
    h2: bool,
) -> Result<pool::Upstream, Refusal> {
    let tcp = connect_upstream(shared, peer, server).await.map_err(|e| Refusal {
        status: 502,
        code: "upstream_unreachable",
        message: format!("the server could not be reached ({})", e.kind()),
        rule: rule.map(str::to_owned),
        retry_after: None,
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
    let cfg = if h2 { &shared.upstream_h2 } else { &shared.cfg.upstream };
    let connector = tokio_rustls::TlsConnector::from(cfg.clone());
    connector.connect(name, tcp).await.map_err(|e| {
        let fault = verify::classify(&e);
        warn!(%peer, sni = sni.unwrap_or(""), code = fault.code, "upstream TLS refused: {e}");
        shared.nat.annotate(peer, FlowNote::verdict("block", fault.reason));
        Refusal::forbidden(fault.code, fault.reason, rule)
    })
}

/// What the client offered in ALPN.
#[derive(Debug, Clone, Copy)]
struct Offered {
    h2: bool,
    /// HTTP/1.x (or no ALPN at all, which means HTTP/1.1).
    h1: bool,
}

impl Offered {
    fn of(alpn: &[String]) -> Self {
        Offered {
            h2: alpn.iter().any(|p| p == "h2"),
            h1: alpn.is_empty() || alpn.iter().any(|p| p == "http/1.1" || p == "http/1.0"),
        }
    }
}

fn is_h2(tls: &pool::Upstream) -> bool {
    tls.get_ref().1.alpn_protocol() == Some(b"h2")
}

#[allow(clippy::too_many_arguments)]
async fn intercept<C: ClientIo>(
    shared: &Arc<Shared>,
    client: C,
    peer: SocketAddr,
    conn: &DivertedConn,
    raw: Vec<u8>,
    (sni, pin): (Option<String>, PinKey),
    offered: Offered,
    d: Decided,
    mut refuse: Option<Refusal>,
) -> io::Result<()> {
    let server = conn.original_dst;
    let rule = d.note.rule.clone();
    let key = pool::Key { client: peer.ip(), server, sni: sni.clone() };
    // Upstream first: its certificate decides whether the client may be served at all, and
    // its protocol which one the client is offered first. An idle connection this client
    // left to the same server and name was verified already; those speak HTTP/1.1, so one is
    // taken for a client offering h2 only when that server did not choose h2 last time.
    let h1_server = pool::speaks_h2(server, sni.as_deref()) == Some(false);
    let pooled = refuse.is_none() && (!offered.h2 || h1_server);
    let mut upstream = if pooled { pool::take(&key) } else { None };
    if refuse.is_none() && upstream.is_none() {
        match open_upstream(shared, peer, server, sni.as_deref(), rule.as_deref(), offered.h2).await
        {
            Ok(up) => {
                if offered.h2 {
                    pool::note_h2(server, sni.as_deref(), is_h2(&up));
                }
                upstream = Some(up);
            }
            Err(r) => refuse = Some(r),
        }
    }
    let upstream_h2 = upstream.as_ref().is_some_and(is_h2);
    // HTTP/2 toward the client when the server speaks it too, or when the client speaks
    // nothing else (then translated to HTTP/1.1 upstream).
    let prefer_h2 = offered.h2 && (upstream_h2 || !offered.h1);
    // The client's TLS, with a leaf for its SNI (or the original destination's address).
    let server_cfg = match (&sni, prefer_h2) {
        (Some(_), true) => shared.server_h2.clone(),
        (Some(_), false) => shared.server_h1.clone(),
        (None, _) => Arc::new(
            server_config(&shared.cfg.minter, server.ip(), prefer_h2).map_err(io::Error::other)?,
        ),
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
            let fail_open = d.may_splice();
            info!(%peer, sni = sni.as_deref().unwrap_or(""), ?failure, "client TLS handshake failed: {why}");
            let pinned = failure == HandshakeFailure::CertificateRefused && fail_open;
            let action = if pinned { "allow" } else { "block" };
            shared.nat.annotate(peer, FlowNote::verdict(action, failure.reason(fail_open)));
            if pinned {
                shared.decider.remember_pinned(pin);
            }
            return Ok(());
        }
    };
    let alpn = match tls.get_ref().1.alpn_protocol() {
        Some(b"h2") => Some("h2"),
        Some(b"http/1.0") => Some("http/1.0"),
        Some(b"http/1.1") => Some("http/1.1"),
        _ => None,
    };
    if alpn.is_some() {
        shared.nat.annotate(peer, FlowNote { alpn_negotiated: alpn, ..FlowNote::default() });
    }
    let session =
        d.session(sni.clone().unwrap_or_else(|| server.ip().to_string()), peer, server, refuse);
    if alpn == Some("h2") {
        return serve_h2(shared, tls, upstream, peer, server, sni, session).await;
    }
    if upstream_h2 {
        // Cannot happen (a client offering h2 is answered in h2 when the server speaks it),
        // but never speak HTTP/1.1 into an HTTP/2 connection: start a plain one.
        upstream =
            open_upstream(shared, peer, server, sni.as_deref(), rule.as_deref(), false).await.ok();
    }
    let sink = shared.sink.as_ref();
    let result = match upstream.as_mut() {
        Some(up) => h1::serve_keeping(&mut tls, Some(up), &session, sink).await,
        None => h1::serve_keeping::<_, pool::Upstream>(&mut tls, None, &session, sink).await,
    };
    if let Err(h1::ProxyError::Http2Preface(read)) = result {
        let note = FlowNote { alpn_negotiated: Some("h2"), ..FlowNote::default() };
        shared.nat.annotate(peer, note);
        // HTTP/2 by prior knowledge, without ALPN saying so (httpx with http1=False offers
        // http/1.1 but speaks h2): served as HTTP/2 from the bytes already read.
        return serve_h2(shared, Replay::new(read, tls), upstream, peer, server, sni, session)
            .await;
    }
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

/// Serves a client that negotiated `h2`: upstream over the HTTP/2 connection the server
/// accepted, or over HTTP/1.1 connections (the first already open, more as streams need).
async fn serve_h2<C>(
    shared: &Arc<Shared>,
    tls: C,
    upstream: Option<pool::Upstream>,
    peer: SocketAddr,
    server: SocketAddr,
    sni: Option<String>,
    mut session: crate::Session,
) -> io::Result<()>
where
    C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let rule = session.rule.clone();
    let upstream = match upstream {
        None => None,
        Some(up) if is_h2(&up) => match h2::Upstream::h2(up).await {
            Ok(u) => Some(u),
            Err(e) => {
                debug!(%peer, "upstream HTTP/2 handshake failed: {e}");
                None
            }
        },
        Some(up) => {
            let sh = shared.clone();
            let opener: h2::Opener = Arc::new(move || {
                let (sh, sni, rule) = (sh.clone(), sni.clone(), rule.clone());
                Box::pin(async move {
                    open_upstream(&sh, peer, server, sni.as_deref(), rule.as_deref(), false)
                        .await
                        .map(|tls| Box::new(tls) as Box<dyn h2::upstream::Io>)
                        .map_err(|r| io::Error::other(r.message))
                })
            });
            Some(h2::Upstream::h1(Some(Box::new(up)), opener).await)
        }
    };
    if upstream.is_none() && session.refuse.is_none() {
        session.refuse = Some(Refusal {
            status: 502,
            code: "upstream_unreachable",
            message: "the server's HTTP/2 connection failed".into(),
            rule: session.rule.clone(),
            retry_after: None,
        });
    }
    let result = h2::serve(tls, upstream, Arc::new(session), shared.sink.clone()).await;
    if let Err(h2::H2Error::RapidReset) = &result {
        warn!(%peer, "HTTP/2 client reset too many streams: connection closed");
        shared.nat.annotate(
            peer,
            FlowNote::verdict(
                "block",
                "HTTP/2 client reset too many streams (rapid reset): closed",
            ),
        );
    }
    result.map_err(|e| io::Error::other(e.to_string()))
}
