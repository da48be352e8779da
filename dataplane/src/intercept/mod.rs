//! The interception engine (DESIGN.md, "The interception engine"): tokio + rustls on its own
//! threads, never on the packet threads. It accepts the connections the packet engine diverts
//! through the TUN, reads the ClientHello (keeping the raw bytes), decides with the policy,
//! then per decision:
//!
//! - `allow`: splice — connects to the original destination, replays the ClientHello bytes,
//!   relays both ways; the client sees the real certificate.
//! - `inspect`: TLS to the original destination (same SNI, verified strictly), then TLS to the
//!   client with a leaf minted by the enterprise CA, then HTTP/1.1 both sides ([`http1`]).
//!   An invalid upstream certificate gets the client a block response naming the fault.
//! - `block`: TLS to the client with a minted leaf and a block response to each request.
//!
//! The ClientHello is read with the data plane's own parser ([`crate::wire::tls`], fuzzed,
//! the one the packet engine uses) instead of rustls' `Acceptor`: the bytes are needed raw for
//! the splice anyway, and the same parser gives the record the same SNI/ALPN/JA4 view. rustls
//! then handshakes over a stream that replays those bytes first ([`Replay`]).

pub mod block;
mod dlp;
mod handle;
pub mod http1;
mod pool;
mod replay;
pub mod verify;

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use rustls::pki_types::ServerName;
use sluice_certs::{Minter, MintingResolver};
use sluice_rules::{Action as RuleAction, FailMode, IdentityOverlay, Policy, Query};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tracing::{debug, info, warn};

use crate::engine::{DivertConfig, DivertedConn};
use crate::flow::Class;
use crate::record::{Record, RequestRecord};
use crate::wire::tls::{HelloParse, MAX_HELLO, parse_client_hello};
use block::Refusal;
pub use handle::EngineHandle;
use http1::Exchange;
pub use replay::Replay;

/// How long a client may take to send its whole ClientHello, however it trickles in.
const HELLO_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a client TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a client that refused the minted certificate is spliced for that name.
const PINNED_TTL: Duration = Duration::from_secs(3600);
/// Most remembered (client, name) pairs that refused the minted certificate.
const MAX_PINNED: usize = 65_536;

/// What the interception engine needs from the packet engine: the NAT entries and the flow
/// records. Implemented by the binary over the shared [`crate::engine::Engine`].
pub trait DivertHandle: Send + Sync + 'static {
    /// The diverted connection from `client`, if any.
    fn lookup(&self, client: SocketAddr) -> Option<DivertedConn>;
    /// Reserves an upstream source port for `client` → `server`.
    fn open_upstream(&self, client: SocketAddr, server: SocketAddr) -> Option<u16>;
    /// Frees a reserved port that could not be bound.
    fn release_upstream(&self, port: u16);
    /// Writes what the interception engine learned into the flow's record.
    fn annotate(&self, client: SocketAddr, note: &(dyn Fn(&mut Class) + Sync));
    /// Emits a record (request records).
    fn emit(&self, record: Record);
}

/// Settings of the interception engine.
pub struct Config {
    /// Where diverted flows arrive and the upstream port range.
    pub divert: DivertConfig,
    /// Leaf minting with the enterprise CA.
    pub minter: Arc<Minter>,
    /// TLS toward servers (strict verification, ALPN http/1.1).
    pub upstream: Arc<rustls::ClientConfig>,
    /// The policy (swapped whole by the owner).
    pub policy: Arc<ArcSwap<Policy>>,
    /// The identity overlay.
    pub overlay: Arc<ArcSwap<IdentityOverlay>>,
    /// Upstream connect timeout.
    pub connect_timeout: Duration,
    /// Most intercepted connections at once; beyond it new ones are reset (and recorded).
    pub max_connections: usize,
    /// The DLP scanner (built once).
    pub scanner: Arc<sluice_dlp::Scanner>,
    /// Salt of DLP finding hashes (random per run unless configured).
    pub dlp_salt: Arc<[u8]>,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config").field("divert", &self.divert).finish_non_exhaustive()
    }
}

/// The crypto provider of both sides of an intercepted connection: rustls' *aws-lc-rs*
/// provider (its key exchange and hashing are faster than *ring*'s: X25519 was a quarter of
/// the CPU time of a new intercepted connection with *ring*; its default groups also offer
/// the X25519MLKEM768 post-quantum hybrid, which browsers use) with the AES-128-GCM suites
/// first. rustls and OpenSSL clients put AES-256-GCM-SHA384 first; its SHA-384 key schedule
/// was a seventh of that CPU time, while SHA-256 runs on the CPU's SHA extensions.
/// AES-128-GCM is TLS 1.3's mandatory suite and matches the 128-bit strength of X25519. The
/// client side honours this order (`ignore_client_order`) too.
pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    let mut p = rustls::crypto::aws_lc_rs::default_provider();
    // Stable: TLS 1.3 before TLS 1.2 as before, AES-128-GCM first within each.
    p.cipher_suites.sort_by_key(|s| {
        use rustls::CipherSuite as C;
        let aes128 = matches!(
            s.suite(),
            C::TLS13_AES_128_GCM_SHA256
                | C::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
                | C::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
        );
        (s.tls13().is_none(), !aes128)
    });
    Arc::new(p)
}

/// The upstream TLS configuration: strict verification against `roots`, ALPN http/1.1.
pub fn upstream_config(
    roots: rustls::RootCertStore,
) -> Result<rustls::ClientConfig, rustls::client::VerifierBuilderError> {
    let verifier = Arc::new(verify::StrictVerifier::new(roots)?);
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|_| rustls::client::VerifierBuilderError::NoRootAnchors)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

/// TLS toward clients: leaves minted for the SNI (for `no_sni_dst` when there is none), ALPN
/// http/1.1 only until HTTP/2 lands.
fn server_config(
    minter: &Arc<Minter>,
    no_sni_dst: IpAddr,
) -> Result<rustls::ServerConfig, rustls::Error> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(MintingResolver::new(minter.clone(), no_sni_dst)));
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    cfg.ignore_client_order = true;
    Ok(cfg)
}

struct Shared {
    cfg: Config,
    /// One client-side configuration for every connection with an SNI: its session cache
    /// and tickets then let clients resume.
    server_cfg: Arc<rustls::ServerConfig>,
    /// The DLP scanner of the current policy, keyed by the policy's address.
    scanner_cache: Mutex<Option<(usize, Arc<sluice_dlp::Scanner>)>>,
    /// The policy the cached scanner was built for (keeps its address from being reused).
    scanner_policy: Mutex<Option<Arc<Policy>>>,
    nat: Arc<dyn DivertHandle>,
    pinned: Mutex<HashMap<(IpAddr, String), Instant>>,
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
    threads: usize,
) -> io::Result<Vec<std::thread::JoinHandle<()>>> {
    let threads = threads.max(1);
    let v4 = SocketAddr::new(IpAddr::V4(cfg.divert.v4), cfg.divert.listen_port);
    let v6 = SocketAddr::new(IpAddr::V6(cfg.divert.v6), cfg.divert.listen_port);
    let mut per_thread: Vec<Vec<TcpSocket>> = (0..threads).map(|_| Vec::new()).collect();
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
        Err(e) => warn!("no IPv6 interception listener on {v6}: {e}; IPv6 flows to inspect fail"),
    }
    let permits = Arc::new(tokio::sync::Semaphore::new(cfg.max_connections.max(1)));
    let server_cfg = Arc::new(
        server_config(&cfg.minter, IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED))
            .map_err(io::Error::other)?,
    );
    let shared = Arc::new(Shared {
        cfg,
        nat,
        server_cfg,
        scanner_cache: Mutex::new(None),
        scanner_policy: Mutex::new(None),
        pinned: Mutex::new(HashMap::new()),
    });
    let mut handles = Vec::with_capacity(threads);
    for (i, socks) in per_thread.into_iter().enumerate() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        // Listening before this returns, registered with the runtime that will serve them.
        let listeners = {
            let _in = rt.enter();
            socks.into_iter().map(|s| s.listen(1024)).collect::<io::Result<Vec<_>>>()?
        };
        let shared = shared.clone();
        let permits = permits.clone();
        let h = std::thread::Builder::new().name(format!("intercept-{i}")).spawn(move || {
            rt.block_on(async move {
                let mut tasks = tokio::task::JoinSet::new();
                tasks.spawn(pool::sweeper());
                for l in listeners {
                    tasks.spawn(accept_loop(l, shared.clone(), permits.clone()));
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
async fn accept_loop(
    l: tokio::net::TcpListener,
    shared: Arc<Shared>,
    permits: Arc<tokio::sync::Semaphore>,
) {
    debug!(addr = ?l.local_addr().ok(), "interception engine listening");
    loop {
        match l.accept().await {
            Ok((s, peer)) => {
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    over_capacity(&shared, s, peer);
                    continue;
                };
                let shared = shared.clone();
                tokio::spawn(async move {
                    if let Err(e) = connection(&shared, s, peer).await {
                        debug!(%peer, "intercepted connection ended: {e}");
                    }
                    drop(permit);
                });
            }
            Err(e) => {
                warn!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Refuses a connection beyond the cap: reset at once, recorded in the flow, logged (at most
/// once a second).
fn over_capacity(shared: &Shared, s: TcpStream, peer: SocketAddr) {
    static LAST_WARN: Mutex<Option<Instant>> = Mutex::new(None);
    // SO_LINGER 0: close() resets at once (it never blocks with a zero linger).
    #[allow(deprecated)]
    let _ = s.set_linger(Some(Duration::ZERO));
    drop(s);
    shared.nat.annotate(peer, &|c| {
        c.action = Some("block");
        c.reason = Some("interception engine at its connection cap: reset");
    });
    let mut last = LAST_WARN.lock().unwrap_or_else(PoisonError::into_inner);
    if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
        *last = Some(Instant::now());
        warn!(
            cap = shared.cfg.max_connections,
            "interception engine at its connection cap: new diverted connections are reset"
        );
    }
}

/// The decision for one connection, owned.
struct Decided {
    action: RuleAction,
    identity: String,
    user: Option<String>,
    category: Option<String>,
    rule: Option<String>,
    headers: sluice_rules::HeaderPolicy,
    fail_open: bool,
    max_body: u64,
    /// The rule's DLP profile: name, detectors, action, and the policy's scanner.
    dlp: Option<(
        String,
        sluice_dlp::DetectorSet,
        sluice_rules::DlpAction,
        Arc<sluice_dlp::Scanner>,
    )>,
    /// Response masking (`mask_responses`): the scanner and the credential detectors.
    mask: Option<(Arc<sluice_dlp::Scanner>, sluice_dlp::DetectorSet)>,
}

/// The scanner of `policy` (built-in and custom detectors), built once per policy version.
fn scanner_for(shared: &Shared, policy: &Arc<Policy>) -> Arc<sluice_dlp::Scanner> {
    let key = Arc::as_ptr(policy) as usize;
    let mut cache = shared.scanner_cache.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some((k, s)) = cache.as_ref()
        && *k == key
    {
        return s.clone();
    }
    let s = match sluice_dlp::Scanner::with_custom(&policy.custom_detectors) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            warn!("custom DLP detectors unusable, built-in detectors only: {e}");
            shared.cfg.scanner.clone()
        }
    };
    // Keeping the policy's address as the key is sound while the cache holds the policy.
    *cache = Some((key, s.clone()));
    shared.scanner_policy.lock().unwrap_or_else(PoisonError::into_inner).replace(policy.clone());
    s
}

fn decide(shared: &Shared, peer: SocketAddr, conn: &DivertedConn, sni: Option<&str>) -> Decided {
    let policy = shared.cfg.policy.load_full();
    let overlay = shared.cfg.overlay.load();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let q = Query {
        src: peer.ip(),
        mac: Some(conn.client_mac),
        sni,
        port: conn.original_dst.port(),
        now,
    };
    let d = policy.decide(&q, &overlay);
    Decided {
        action: d.action,
        identity: d.identity.to_owned(),
        user: d.user.map(str::to_owned),
        category: d.category.map(str::to_owned),
        rule: d.rule.map(|r| r.name().to_owned()),
        headers: d.rule.map(|r| r.spec.headers.clone()).unwrap_or_default(),
        fail_open: policy.defaults.on_inspect_failure == FailMode::Allow,
        max_body: policy.defaults.max_inspect_bytes,
        dlp: d.dlp.and_then(|p| {
            let scanner = scanner_for(shared, &policy);
            // Names were validated against the registry and the custom detectors.
            let set = scanner.profile(&p.detectors).ok()?;
            Some((p.name.to_string(), set, p.action, scanner))
        }),
        mask: d.rule.filter(|r| r.spec.headers.mask_responses).map(|_| {
            let scanner = scanner_for(shared, &policy);
            let set = dlp::credential_set(&scanner);
            (scanner, set)
        }),
    }
}

async fn connection(shared: &Shared, mut client: TcpStream, peer: SocketAddr) -> io::Result<()> {
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
                shared.nat.annotate(peer, &|c| {
                    c.action = Some("block");
                    c.reason = Some("no whole ClientHello");
                });
                return Ok(());
            }
            HelloParse::NotTls => break None,
            HelloParse::Malformed(why) => {
                shared.nat.annotate(peer, &|c| {
                    c.action = Some("block");
                    c.reason = Some(why);
                });
                return Ok(());
            }
            HelloParse::Hello(h) => {
                let mut class = Class::default();
                class.set_hello(&h);
                break Some(class);
            }
        }
    };
    let sni = hello.as_ref().and_then(|c| c.sni.clone());
    let d = decide(shared, peer, &conn, sni.as_deref());
    let pinned_key = (peer.ip(), sni.clone().unwrap_or_default());
    let pinned = d.action == RuleAction::Inspect && d.fail_open && is_pinned(shared, &pinned_key);
    let action_name = if pinned { "allow" } else { d.action.as_str() };
    {
        let hello = hello.clone();
        let d_ref = &d;
        shared.nat.annotate(peer, &move |c| {
            if let Some(h) = &hello {
                c.sni.clone_from(&h.sni);
                c.alpn.clone_from(&h.alpn);
                c.ja4.clone_from(&h.ja4);
                c.tls_version = h.tls_version;
            }
            c.identity = Some(d_ref.identity.clone());
            c.user.clone_from(&d_ref.user);
            c.category.clone_from(&d_ref.category);
            c.rule.clone_from(&d_ref.rule);
            c.action = Some(action_name);
            c.reason = match (pinned, d_ref.action) {
                (true, _) => Some("client refused the minted certificate earlier: spliced"),
                (_, RuleAction::Allow) => Some("diverted, spliced to the server"),
                (_, RuleAction::Inspect) => Some("inspected"),
                (_, RuleAction::Block) => Some("blocked with a response"),
            };
        });
    }
    if hello.is_none() && d.action != RuleAction::Allow {
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
                    d.category.as_deref().unwrap_or("this destination"),
                    d.identity
                ),
                d.rule.as_deref(),
            );
            intercept(shared, client, peer, &conn, raw, sni, d, Some(r)).await
        }
        RuleAction::Inspect => intercept(shared, client, peer, &conn, raw, sni, d, None).await,
    }
}

fn is_pinned(shared: &Shared, key: &(IpAddr, String)) -> bool {
    let map = shared.pinned.lock().unwrap_or_else(PoisonError::into_inner);
    map.get(key).is_some_and(|t| t.elapsed() < PINNED_TTL)
}

fn remember_pinned(shared: &Shared, key: (IpAddr, String)) {
    let mut map = shared.pinned.lock().unwrap_or_else(PoisonError::into_inner);
    if map.len() >= MAX_PINNED {
        map.retain(|_, t| t.elapsed() < PINNED_TTL);
        if map.len() >= MAX_PINNED {
            return;
        }
    }
    map.insert(key, Instant::now());
}

/// Connects to `server` from a reserved port, with the client's address on the wire.
async fn connect_upstream(
    shared: &Shared,
    peer: SocketAddr,
    server: SocketAddr,
) -> io::Result<TcpStream> {
    let local_ip = shared.cfg.divert.local(server.ip());
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
    // Upstream first: its certificate decides whether the client may be served at all. An
    // idle connection this client left to the same server and name was verified already.
    let mut upstream = if refuse.is_none() { pool::take(&key) } else { None };
    if refuse.is_none() && upstream.is_none() {
        match connect_upstream(shared, peer, server).await {
            Err(e) => {
                refuse = Some(Refusal {
                    status: 502,
                    code: "upstream_unreachable",
                    message: format!("the server could not be reached ({})", e.kind()),
                    rule: d.rule.clone(),
                });
            }
            Ok(tcp) => {
                let name = match sni.as_deref() {
                    Some(s) => ServerName::try_from(s.to_owned()),
                    None => Ok(ServerName::IpAddress(server.ip().into())),
                };
                let connector = tokio_rustls::TlsConnector::from(shared.cfg.upstream.clone());
                match name {
                    Err(_) => {
                        refuse = Some(Refusal::forbidden(
                            "bad_server_name",
                            "the TLS server name is not a valid host name",
                            d.rule.as_deref(),
                        ));
                    }
                    Ok(name) => match connector.connect(name, tcp).await {
                        Ok(tls) => upstream = Some(tls),
                        Err(e) => {
                            let fault = verify::classify(&e);
                            warn!(%peer, sni = sni.as_deref().unwrap_or(""), code = fault.code, "upstream TLS refused: {e}");
                            shared.nat.annotate(peer, &|c| {
                                c.action = Some("block");
                                c.reason = Some(fault.reason);
                            });
                            refuse = Some(Refusal::forbidden(
                                fault.code,
                                fault.reason,
                                d.rule.as_deref(),
                            ));
                        }
                    },
                }
            }
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
            let why = match other {
                Ok(Err(e)) => e.to_string(),
                _ => "timed out".into(),
            };
            info!(%peer, sni = sni.as_deref().unwrap_or(""), "client refused the minted certificate: {why}");
            let fail_open = d.fail_open;
            shared.nat.annotate(peer, &|c| {
                c.action = Some(if fail_open { "allow" } else { "block" });
                c.reason = Some(if fail_open {
                    "client refused the minted certificate (pinning?): its next connections are spliced"
                } else {
                    "client refused the minted certificate (pinning?): blocked (on_inspect_failure = block)"
                });
            });
            if fail_open {
                remember_pinned(shared, (peer.ip(), sni.unwrap_or_default()));
            }
            return Ok(());
        }
    };
    let ex = Exchange {
        sni: sni.clone().unwrap_or_else(|| server.ip().to_string()),
        client: peer,
        original_dst: server,
        identity: d.identity,
        user: d.user,
        category: d.category,
        rule: d.rule,
        headers: d.headers,
        max_body: d.max_body,
        fail_open: d.fail_open,
        refuse,
        mask: d.mask,
        dlp: d.dlp.map(|(profile, set, action, scanner)| http1::Dlp {
            profile,
            set,
            action,
            scanner,
            salt: shared.cfg.dlp_salt.clone(),
        }),
    };
    let nat = shared.nat.clone();
    let emit = move |r: RequestRecord| nat.emit(r.into());
    let result = match upstream.as_mut() {
        Some(up) => http1::serve_keeping(&mut tls, Some(up), &ex, &emit).await,
        None => http1::serve_keeping::<_, pool::Upstream>(&mut tls, None, &ex, &emit).await,
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

    #[test]
    fn aes_128_gcm_is_preferred_and_no_suite_is_lost() {
        let ours: Vec<_> = provider().cipher_suites.iter().map(|s| s.suite()).collect();
        assert_eq!(ours[0], rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
        let default = rustls::crypto::aws_lc_rs::default_provider();
        assert_eq!(ours.len(), default.cipher_suites.len());
        assert!(default.cipher_suites.iter().all(|s| ours.contains(&s.suite())));
        // TLS 1.3 suites stay ahead of TLS 1.2 ones.
        let p = provider();
        let first12 = p.cipher_suites.iter().position(|s| s.tls13().is_none());
        assert!(first12.is_none_or(|i| p.cipher_suites[i..].iter().all(|s| s.tls13().is_none())));
    }
}
