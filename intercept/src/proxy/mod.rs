//! The explicit proxy's front (ARCHITECTURE.md, "Explicit proxy"): for sites where Sluice
//! cannot sit inline, clients name it as their proxy. `CONNECT host:port` opens a tunnel that
//! runs the same steps as a diverted connection ([`conn::serve`]): the ClientHello read and
//! decided, spliced, inspected or blocked; the hello must name the host the client asked for.
//! A plain `http://` request is decided by its host and forwarded when allowed ([`forward`]).
//! Identity comes from the client's address, or from `Proxy-Authorization: Basic
//! USER:VIRTUAL-KEY` (a virtual key control issued to that user; the identity feed gives the
//! user's groups). Targets on the proxy's own host and link-local addresses (cloud metadata)
//! are refused: the proxy is no way into the management plane. Bounded: a head within 10 s
//! and [`proxy_head::MAX_PROXY_HEAD`] bytes; the engine's connection caps.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use crate::http::proxy_head::{self, Authority, ProxyHeadError, Target};
use crate::record::HelloNote;
use crate::{DivertedConn, Shared, conn};

mod forward;

/// How long a client may take to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves one client of the proxy.
pub(crate) async fn connection(
    shared: &Arc<Shared>,
    mut client: TcpStream,
    peer: SocketAddr,
) -> io::Result<()> {
    let _ = client.set_nodelay(true);
    let mut buf = Vec::with_capacity(1024);
    let deadline = tokio::time::Instant::now() + HEAD_TIMEOUT;
    let head = loop {
        match proxy_head::parse(&buf) {
            Ok(Some(h)) => break h,
            Ok(None) => {
                let read = tokio::time::timeout_at(deadline, client.read_buf(&mut buf)).await;
                match read {
                    Ok(Ok(0)) => return Ok(()),
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return Err(e),
                    Err(_) => return answer(&mut client, 408, "no request head within 10 s").await,
                }
            }
            Err(e) => {
                let status = if matches!(e, ProxyHeadError::BadCredentials(_)) { 407 } else { 400 };
                shared.nat.tunnel_refused(peer, None, "", "proxy: a malformed request head");
                return answer(&mut client, status, &e.to_string()).await;
            }
        }
    };
    let (authority, forward_path) = match head.target {
        Target::Connect(a) => (a, None),
        Target::Forward { origin, path } => (origin, Some(path)),
    };
    // Who the client is: its address, or the user its credentials prove (a virtual key
    // control issued to that user; the identity feed gives the user's groups).
    let (user, identity) = match &head.credentials {
        None => (None, None),
        Some(c) => {
            let ring = shared.cfg.access.keys.load();
            match ring.virtual_key(&c.secret) {
                Some(v) if v.user == c.user => {
                    (Some(shared.decider.feed_entry(&v.user)), v.identity.clone())
                }
                _ => {
                    let why = "proxy: credentials that are not a virtual key issued to that user";
                    shared.nat.tunnel_refused(peer, None, &authority.host, why);
                    let msg = "the proxy credentials are not a virtual key issued to that user";
                    return answer(&mut client, 407, msg).await;
                }
            }
        }
    };
    let server = match resolve(&authority).await {
        Ok(s) => s,
        Err(why) => {
            let reason = "proxy: the name does not resolve";
            shared.nat.tunnel_refused(peer, None, &authority.host, reason);
            return answer(&mut client, 502, &why).await;
        }
    };
    if let Some(why) = refused_destination(server.ip(), client.local_addr().ok()) {
        shared.nat.tunnel_refused(peer, Some(server), &authority.host, why);
        return answer(&mut client, 403, why).await;
    }
    let tunnel = conn::ProxyTunnel {
        host: authority.host.parse::<IpAddr>().is_err().then(|| authority.host.clone()),
        user,
        identity,
        proxied: true,
    };
    shared.nat.tunnel_opened(peer, server, &authority.host);
    if let Some(path) = forward_path {
        let (r, from, to) =
            forward::forward(shared, client, buf, peer, server, &authority, &path, tunnel).await;
        shared.nat.tunnel_closed(peer, from, to);
        return r;
    }
    client.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n").await?;
    let rest = buf.split_off(head.len);
    let (read, written) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let counted = Counted { inner: client, read: read.clone(), written: written.clone() };
    let conn = DivertedConn { original_dst: server, client_mac: [0; 6] };
    // Tunnel bytes read with the head (a hello sent right behind the CONNECT).
    let early = rest.len() as u64;
    let r = conn::serve(shared, counted, rest, peer, conn, tunnel).await;
    // The head and the 200 are the proxy's own: the flow counts the tunnel's bytes.
    let from_client = read.load(Ordering::Relaxed) + early;
    shared.nat.tunnel_closed(peer, from_client, written.load(Ordering::Relaxed));
    r
}

/// The checks of a tunnel's first bytes, before its decision: the name that decides it, or
/// why it is refused.
///
/// - A CONNECT to a name: the hello must name it too (else the decision would follow the one
///   and the server the other); without SNI, or without TLS at all, the CONNECT's name
///   decides (a tunnel of plain HTTP to a blocked or inspected name is refused as such).
/// - A CONNECT to an address: the hello's name must resolve to it (no fronting to any server
///   behind an allowed name).
/// - A virtual key restricted to an identity is refused from the addresses of another.
///
/// (An encrypted ClientHello hiding its name is refused after these, in `conn::serve`, for
/// tunnels and diverted flows alike.)
pub(crate) async fn check_tunnel(
    shared: &Shared,
    peer: SocketAddr,
    conn: &DivertedConn,
    tunnel: &conn::ProxyTunnel,
    hello: Option<&HelloNote>,
) -> Result<Option<String>, &'static str> {
    let sni = hello.and_then(|h| h.sni.clone());
    let name = match (&tunnel.host, sni) {
        (Some(host), Some(s)) if !s.trim_end_matches('.').eq_ignore_ascii_case(host) => {
            return Err("the ClientHello names another host than the CONNECT");
        }
        (Some(host), _) => Some(host.clone()),
        (None, Some(s)) => {
            let found = lookup(&s, conn.original_dst.port()).await;
            if !found.is_ok_and(|all| all.iter().any(|a| a.ip() == conn.original_dst.ip())) {
                return Err("the ClientHello's name does not resolve to the CONNECT's address");
            }
            Some(s)
        }
        (None, None) => None,
    };
    if tunnel.identity.as_ref().is_some_and(|id| *id != shared.decider.identity_of(peer)) {
        // Where the key is used from: the identity of the client's address.
        return Err("the proxy credentials are for another identity");
    }
    Ok(name)
}

/// The first address of `target` (IPv4 first, as most clients would).
async fn resolve(target: &Authority) -> Result<SocketAddr, String> {
    if let Ok(ip) = target.host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, target.port));
    }
    let all = lookup(&target.host, target.port).await?;
    all.iter()
        .find(|a| a.is_ipv4())
        .or(all.first())
        .copied()
        .ok_or_else(|| format!("{}: the name has no address", target.host))
}

/// The addresses of `host` (the host's resolver, within 5 s).
async fn lookup(host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
    let found = tokio::time::timeout(Duration::from_secs(5), tokio::net::lookup_host((host, port)))
        .await
        .map_err(|_| format!("{host}: the name did not resolve within 5 s"))?
        .map_err(|e| format!("{host}: the name does not resolve ({e})"))?;
    Ok(found.collect())
}

/// Why the proxy will not connect to `ip`, if it will not: its own host (loopback, the
/// unspecified address, any address of its interfaces) and link-local addresses.
fn refused_destination(ip: IpAddr, own: Option<SocketAddr>) -> Option<&'static str> {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    let link_local = match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    };
    // An address of this host's own (any interface): binding it succeeds.
    let local = std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok();
    if ip.is_loopback() || ip.is_unspecified() || local || own.is_some_and(|a| a.ip() == ip) {
        Some("the proxy does not connect to its own host")
    } else if link_local || ip.is_multicast() {
        Some("the proxy does not connect to link-local or multicast addresses")
    } else {
        None
    }
}

/// Answers the client with `status` and a one-line JSON error, then closes.
async fn answer(client: &mut TcpStream, status: u16, message: &str) -> io::Result<()> {
    let reason = match status {
        400 => "Bad Request",
        403 => "Forbidden",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        _ => "Bad Gateway",
    };
    let body =
        serde_json::json!({ "error": { "message": message, "type": "sluice_proxy" } }).to_string();
    let auth = if status == 407 { "Proxy-Authenticate: Basic realm=\"sluice\"\r\n" } else { "" };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{auth}Connection: close\r\n\r\n",
        body.len()
    );
    client.write_all(head.as_bytes()).await?;
    client.write_all(body.as_bytes()).await?;
    client.shutdown().await
}

/// The client's stream, counting the bytes of the tunnel each way.
struct Counted<S> {
    inner: S,
    read: Arc<AtomicU64>,
    written: Arc<AtomicU64>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        self.read.fetch_add((buf.filled().len() - before) as u64, Ordering::Relaxed);
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.inner).poll_write(cx, data);
        if let std::task::Poll::Ready(Ok(n)) = &r {
            self.written.fetch_add(*n as u64, Ordering::Relaxed);
        }
        r
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_proxy_never_reaches_its_own_host_or_link_local() {
        let own: SocketAddr = "10.0.0.5:3128".parse().unwrap_or_else(|_| unreachable!());
        for (ip, refused) in [
            ("127.0.0.1", true),
            ("127.8.9.1", true),
            ("::1", true),
            ("::ffff:127.0.0.1", true),
            ("0.0.0.0", true),
            ("10.0.0.5", true),
            ("169.254.169.254", true),
            ("fe80::1", true),
            ("224.0.0.1", true),
            ("10.0.0.6", false),
            ("198.51.100.10", false),
            ("2001:db8::1", false),
        ] {
            let ip: IpAddr = ip.parse().unwrap_or_else(|_| unreachable!());
            assert_eq!(refused_destination(ip, Some(own)).is_some(), refused, "{ip}");
        }
    }
}
