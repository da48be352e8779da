//! # sluice-intercept
//!
//! The interception engine (ARCHITECTURE.md, "The interception engine"): tokio + rustls on its
//! own threads, never on the packet threads. It accepts the connections the packet engine
//! diverts through the TUN, reads the ClientHello (keeping the raw bytes), decides with the
//! policy, then per decision:
//!
//! - `allow`: splice — connects to the original destination, replays the ClientHello bytes,
//!   relays both ways; the client sees the real certificate.
//! - `inspect`: TLS to the original destination (same SNI, verified strictly, [`verify`]),
//!   then TLS to the client with a leaf minted by the enterprise CA, then HTTP both sides: the
//!   framing drivers ([`h1`]) call the policy [`phases`], which know no wire format. An invalid
//!   upstream certificate gets the client a block response naming the fault.
//! - `block`: TLS to the client with a minted leaf and a block response to each request.
//!
//! The ClientHello is read with the packet engine's parser ([`sluice_hello`], fuzzed) instead
//! of rustls' `Acceptor`: the bytes are needed raw for the splice anyway, and the same parser
//! gives the flow record the same SNI/ALPN/JA4 view. rustls then handshakes over a stream that
//! replays those bytes first ([`Replay`]).
//!
//! The packet engine is reached through [`DivertHandle`] (NAT entries, flow notes); request
//! records leave through a [`RecordSink`] the binary owns.

pub mod access;
pub mod admit;
pub mod approval;
pub mod block;
pub mod broker;
mod conn;
mod decide;
mod divert;
mod dlp;
pub mod dry_run;
pub mod h1;
pub mod h2;
pub mod http;
pub mod mask;
pub mod model;
pub mod phases;
mod pool;
mod proxy;
pub mod quota;
pub mod record;
pub mod recording;
mod replay;
pub mod tls;
pub mod usage;
pub mod verify;
pub mod ws;

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use sluice_certs::Minter;
use sluice_rules::{IdentityOverlay, Policy};
use tokio::net::{TcpSocket, TcpStream};
use tracing::{debug, warn};

use admit::{Admission, Refusal};
use decide::Decider;
pub use divert::{DivertHandle, DivertedConn, Front, Listen};
pub use dlp::{Dlp, Salt};
pub use phases::{Mask, Session, key_fingerprint};
pub use record::{FlowNote, RecordSink, RequestRecord};
pub use replay::Replay;
pub use tls::upstream_config;

/// Settings of the interception engine.
pub struct Config {
    /// Where connections arrive: diverted through the TUN, or to an explicit proxy.
    pub front: Front,
    /// Leaf minting with the enterprise CA.
    pub minter: Arc<Minter>,
    /// TLS toward servers (strict verification).
    pub upstream: Arc<rustls::ClientConfig>,
    /// The policy (swapped whole by the owner).
    pub policy: Arc<ArcSwap<Policy>>,
    /// The identity overlay.
    pub overlay: Arc<ArcSwap<IdentityOverlay>>,
    /// Upstream connect timeout.
    pub connect_timeout: Duration,
    /// Most intercepted connections at once; beyond it new ones are reset (and recorded).
    pub max_connections: usize,
    /// Most intercepted connections of one client address at once; 0: an eighth of
    /// `max_connections`.
    pub max_per_client: usize,
    /// The DLP scanner (built once).
    pub scanner: Arc<sluice_dlp::Scanner>,
    /// Salt of DLP finding hashes until control pushes the deployment's (random per run).
    pub dlp_salt: Arc<[u8]>,
    /// The access state shared by every connection: brokered keys, quota counts.
    pub access: Arc<access::Access>,
    /// One counter per interception thread, bumped by its runtime every [`BEAT`] while the
    /// runtime runs (a watchdog tells a stalled runtime by a counter that stops).
    pub beats: Vec<Arc<AtomicU64>>,
}

/// How often an interception runtime bumps its [`Config::beats`] counter.
pub const BEAT: Duration = Duration::from_millis(100);

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config").field("front", &self.front).finish_non_exhaustive()
    }
}

/// What every connection of the engine shares.
struct Shared {
    cfg: Config,
    /// Client-side configurations for connections with an SNI, preferring `h2` or
    /// HTTP/1.1 (shared: their session caches and tickets let clients resume).
    server_h2: Arc<rustls::ServerConfig>,
    server_h1: Arc<rustls::ServerConfig>,
    /// Upstream configuration offering `h2` and `http/1.1` (`cfg.upstream` offers
    /// `http/1.1`).
    upstream_h2: Arc<rustls::ClientConfig>,
    decider: Decider,
    nat: Arc<dyn DivertHandle>,
    sink: Arc<dyn RecordSink>,
}

/// Binds the listeners (IPv4, and IPv6 when the TUN has its address) and runs the engine on
/// `threads` threads. Errors binding IPv4 are returned at once.
///
/// Each thread runs its own single-threaded tokio runtime with its own listening sockets on
/// the same addresses (`SO_REUSEPORT`: the kernel spreads new connections over them by their
/// addresses), and a connection lives on the thread that accepted it. Measured against one
/// work-stealing runtime with the same thread count (`benches/intercept.sh`), this halves the
/// CPU time per new connection: with two cores shared by the packet threads, stealing mostly
/// bought wake-ups of the other worker.
pub fn spawn(
    cfg: Config,
    nat: Arc<dyn DivertHandle>,
    sink: Arc<dyn RecordSink>,
    threads: usize,
) -> io::Result<Vec<std::thread::JoinHandle<()>>> {
    let threads = threads.max(1);
    let mut per_thread: Vec<Vec<TcpSocket>> = (0..threads).map(|_| Vec::new()).collect();
    match cfg.front {
        Front::Divert(listen) => {
            let v4 = SocketAddr::new(IpAddr::V4(listen.v4), listen.port);
            let v6 = SocketAddr::new(IpAddr::V6(listen.v6), listen.port);
            match bind_group(v4, threads) {
                Ok(socks) => per_thread.iter_mut().zip(socks).for_each(|(t, s)| t.push(s)),
                Err(e) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!(
                            "binding the interception listener {v4}: {e} (is the TUN up with this address?)"
                        ),
                    ));
                }
            }
            match bind_group(v6, threads) {
                Ok(socks) => per_thread.iter_mut().zip(socks).for_each(|(t, s)| t.push(s)),
                Err(e) => {
                    warn!("no IPv6 interception listener on {v6}: {e}; IPv6 flows to inspect fail");
                }
            }
        }
        Front::Proxy(addr) => match bind_group(addr, threads) {
            Ok(socks) => per_thread.iter_mut().zip(socks).for_each(|(t, s)| t.push(s)),
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("binding the proxy listener {addr}: {e}"),
                ));
            }
        },
    }
    let admission = Admission::new(cfg.max_connections, cfg.max_per_client);
    let any = IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED);
    let server_h2 = Arc::new(tls::server_config(&cfg.minter, any, true).map_err(io::Error::other)?);
    let server_h1 =
        Arc::new(tls::server_config(&cfg.minter, any, false).map_err(io::Error::other)?);
    let upstream_h2 = Arc::new(tls::upstream_h2(&cfg.upstream));
    let decider = Decider::new(
        cfg.policy.clone(),
        cfg.overlay.clone(),
        cfg.scanner.clone(),
        &cfg.dlp_salt,
        cfg.access.clone(),
    );
    let shared = Arc::new(Shared { cfg, nat, sink, server_h2, server_h1, upstream_h2, decider });
    let mut handles = Vec::with_capacity(threads);
    for (i, socks) in per_thread.into_iter().enumerate() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        // Listening before this returns, registered with the runtime that will serve them.
        let listeners = {
            let _in = rt.enter();
            socks.into_iter().map(|s| s.listen(1024)).collect::<io::Result<Vec<_>>>()?
        };
        let shared = shared.clone();
        let admission = admission.clone();
        let beat = shared.cfg.beats.get(i).cloned();
        let h = std::thread::Builder::new().name(format!("intercept-{i}")).spawn(move || {
            rt.block_on(async move {
                let mut tasks = tokio::task::JoinSet::new();
                tasks.spawn(pool::sweeper());
                if let Some(beat) = beat {
                    tasks.spawn(async move {
                        let mut every = tokio::time::interval(BEAT);
                        loop {
                            every.tick().await;
                            beat.fetch_add(1, Ordering::Relaxed);
                        }
                    });
                }
                for l in listeners {
                    tasks.spawn(accept_loop(l, shared.clone(), admission.clone()));
                }
                while tasks.join_next().await.is_some() {}
            });
        })?;
        handles.push(h);
    }
    Ok(handles)
}

/// `threads` sockets bound to `addr` with `SO_REUSEPORT`, not yet listening. A plain bind is
/// tried first, so an address another process holds is refused as without the option.
///
/// The kernel spreads connections over the group by their 4-tuple, so one client's
/// connections (or many users' behind one NAT address) use every thread. Picking the thread
/// by the client's address instead (a classic BPF program on the group) would give each
/// client one pool of idle upstream connections ([`pool`]), but it put the bench's 16
/// keep-alive connections from one client on one thread, halving what it got; with per-thread
/// pools a busy client keeps one warm on each thread anyway.
fn bind_group(addr: SocketAddr, threads: usize) -> io::Result<Vec<TcpSocket>> {
    let new = || if addr.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() };
    {
        let probe = new()?;
        probe.set_reuseaddr(true)?;
        probe.bind(addr)?;
    }
    (0..threads)
        .map(|_| {
            let s = new()?;
            s.set_reuseaddr(true)?;
            s.set_reuseport(true)?;
            s.bind(addr)?;
            Ok(s)
        })
        .collect()
}

/// Accepts on one listening socket of this thread's runtime; each connection becomes a task
/// of the same runtime.
async fn accept_loop(l: tokio::net::TcpListener, shared: Arc<Shared>, admission: Arc<Admission>) {
    debug!(addr = ?l.local_addr().ok(), "interception engine listening");
    loop {
        match l.accept().await {
            Ok((s, peer)) => {
                let slot = match admission.admit(peer.ip()) {
                    Ok(slot) => slot,
                    Err(why) => {
                        refuse(&shared, s, peer, why);
                        continue;
                    }
                };
                let shared = shared.clone();
                tokio::spawn(async move {
                    let r = match shared.cfg.front {
                        Front::Divert(_) => conn::connection(&shared, s, peer).await,
                        Front::Proxy(_) => proxy::connection(&shared, s, peer).await,
                    };
                    if let Err(e) = r {
                        debug!(%peer, "intercepted connection ended: {e}");
                    }
                    drop(slot);
                });
            }
            Err(e) => {
                warn!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Refuses a connection beyond a cap: reset at once, recorded in the flow, logged (at most
/// once a second).
fn refuse(shared: &Shared, s: TcpStream, peer: SocketAddr, why: Refusal) {
    static LAST_WARN: Mutex<Option<Instant>> = Mutex::new(None);
    // SO_LINGER 0: close() resets at once (it never blocks with a zero linger).
    #[allow(deprecated)]
    let _ = s.set_linger(Some(Duration::ZERO));
    drop(s);
    shared.nat.annotate(peer, FlowNote::verdict("block", why.reason()));
    let mut last = LAST_WARN.lock().unwrap_or_else(PoisonError::into_inner);
    if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
        *last = Some(Instant::now());
        match why {
            Refusal::Full => warn!(
                cap = shared.cfg.max_connections,
                "interception engine at its connection cap: new diverted connections are reset"
            ),
            Refusal::Client => warn!(
                client = %peer.ip(),
                "a client at its intercepted-connection limit: its new connections are reset"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_thread_takes_connections() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let addr: SocketAddr = SocketAddr::from(([127, 0, 0, 1], port));
        let listeners: Vec<_> =
            bind_group(addr, 3).unwrap().into_iter().map(|s| s.listen(16).unwrap()).collect();
        let mut conns = Vec::new();
        for _ in 0..12 {
            conns.push(TcpStream::connect(addr).await.unwrap());
        }
        let mut per_listener = Vec::new();
        for l in &listeners {
            let mut n = 0;
            while let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(100), l.accept()).await
            {
                n += 1;
            }
            per_listener.push(n);
        }
        assert_eq!(per_listener.iter().sum::<usize>(), 12);
        // By the 4-tuple: one client's connections are spread (3^-11 odds of one socket).
        assert!(per_listener.iter().filter(|n| **n > 0).count() > 1, "{per_listener:?}");
        // Another process holding the address is refused as without SO_REUSEPORT.
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert!(bind_group(held.local_addr().unwrap(), 2).is_err());
    }
}
