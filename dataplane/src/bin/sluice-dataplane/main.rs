//! `sluice-dataplane`: the inline appliance process. Bridges two AF_PACKET ports through the
//! packet engine, writes flow records as JSON lines, reloads the rules on SIGHUP.

mod args;
mod failover;
mod handle;
mod learned;
mod output;
mod watchdog;

use std::fs::OpenOptions;
use std::io::BufWriter;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use arc_swap::ArcSwap;
use clap::Parser;
use sluice_dataplane::Drops;
use sluice_dataplane::engine::{
    Action, Clock, DivertConfig, Engine, Now, OffloadOp, Settings, Side,
};
use sluice_dataplane::fastpath::FastPath;
use sluice_dataplane::flow::Timeouts;
use sluice_dataplane::link::{self, Enforced, LinkConfig, Spool};
use sluice_dataplane::port::Port;
use sluice_intercept as intercept;

use args::{Args, FastPathMode, Io};
use handle::{EngineHandle, RequestQueue};
use output::{Emitted, Output};
use sluice_dataplane::ring::{RxRing, TxPort};
use sluice_dataplane::tun::Tun;
use sluice_rules::catalog::FsLoader;
use sluice_rules::{IdentityOverlay, compile};
use tracing::{error, info, warn};
use watchdog::Watchdog;

/// The ports as the TUN thread sends through them.
#[derive(Clone)]
enum Ports {
    Ring(Arc<TxPort>, Arc<TxPort>),
    Socket(Arc<Port>, Arc<Port>),
}

impl Ports {
    fn send_batch(&self, side: Side, frames: &[&[u8]]) {
        let r = match (self, side) {
            (Ports::Ring(i, _), Side::Inside) => i.send_batch(frames).map(|_| ()),
            (Ports::Ring(_, o), Side::Outside) => o.send_batch(frames).map(|_| ()),
            (Ports::Socket(i, _), Side::Inside) => frames.iter().try_for_each(|f| i.send(f)),
            (Ports::Socket(_, o), Side::Outside) => frames.iter().try_for_each(|f| o.send(f)),
            (_, Side::Tun) => Ok(()),
        };
        if let Err(e) = r {
            warn!(port = side_name(side), frames = frames.len(), "send failed: {e}");
        }
    }
}

/// A random salt for DLP finding hashes (per run: hashes correlate within a run only).
fn dlp_salt() -> Result<Arc<[u8]>> {
    let mut salt = [0u8; 16];
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut salt)
        .map_err(|_| anyhow::anyhow!("no system randomness for the DLP salt"))?;
    Ok(Arc::from(&salt[..]))
}

/// Writes what the engine emitted toward the TUN.
fn send_tun(tun: Option<&Tun>, pkt: &[u8]) {
    if let Some(t) = tun
        && let Err(e) = t.send(pkt)
    {
        warn!(tun = t.name(), "write failed: {e}");
    }
}

/// Reads the TUN: replies of the interception engine to diverted clients and its upstream
/// packets, NAT-ed by the engine and sent out of a port.
fn run_tun(
    tun: Arc<Tun>,
    ports: Ports,
    engine: Arc<Mutex<Engine>>,
    clock: Clock,
    fast: Option<Arc<FastPath>>,
    stop: Arc<AtomicBool>,
) {
    let mut ops = Vec::new();
    // Up to BATCH packets per lock of the engine and per send system call.
    const BATCH: usize = 64;
    let mut bufs: Vec<Vec<u8>> = (0..BATCH).map(|_| vec![0u8; 65_536]).collect();
    let mut lens = [0usize; BATCH];
    let mut out = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        watchdog::beat();
        let mut n = 0;
        while n < BATCH {
            let wait = if n == 0 { Duration::from_millis(200) } else { Duration::ZERO };
            match tun.recv(&mut bufs[n], wait) {
                Ok(Some(len)) => {
                    lens[n] = len;
                    n += 1;
                }
                Ok(None) => break,
                Err(e) => {
                    error!(tun = tun.name(), "read failed: {e}");
                    std::thread::sleep(Duration::from_millis(10));
                    break;
                }
            }
        }
        if n == 0 {
            continue;
        }
        {
            let mut eng = engine.lock().unwrap_or_else(PoisonError::into_inner);
            let now = clock.now();
            for i in 0..n {
                eng.handle_tun(&bufs[i][..lens[i]], now, &mut out);
            }
            offload(&mut eng, fast.as_deref(), &mut ops, now);
        }
        for side in [Side::Inside, Side::Outside] {
            let frames: Vec<&[u8]> =
                out.iter().filter(|(s, _)| *s == side).map(|(_, f)| f.as_slice()).collect();
            if !frames.is_empty() {
                ports.send_batch(side, &frames);
            }
        }
        out.clear();
    }
}

/// Applies the fast-path operations the engine produced (with the engine locked, so the map
/// follows its order) and gives the engine back what the map said.
fn offload(eng: &mut Engine, fast: Option<&FastPath>, ops: &mut Vec<OffloadOp>, now: Now) {
    if let Some(fp) = fast {
        fp.sync(eng, ops, now);
    }
}

/// One item to send after a batch: a frame of the ring, or one the engine emitted.
enum Send {
    Ring(usize),
    Emitted(usize),
}

#[allow(clippy::too_many_arguments)]
fn run_ring(
    mut ring: RxRing,
    side: Side,
    inside: Arc<TxPort>,
    outside: Arc<TxPort>,
    engine: Arc<Mutex<Engine>>,
    clock: Clock,
    tun: Option<Arc<Tun>>,
    fast: Option<Arc<FastPath>>,
    stop: Arc<AtomicBool>,
) {
    let mut ops = Vec::new();
    let mut out: Vec<(Side, Vec<u8>)> = Vec::new();
    let mut plan: Vec<(Side, Send)> = Vec::new();
    let mut truncated_seen = 0;
    while !stop.load(Ordering::Relaxed) {
        watchdog::beat();
        let batch = match ring.batch(128, Duration::from_millis(200)) {
            Ok(b) => b,
            Err(e) => {
                error!(port = side_name(side), "receive ring failed: {e}");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        if batch.is_empty() {
            continue;
        }
        {
            let mut eng = engine.lock().unwrap_or_else(PoisonError::into_inner);
            let now = clock.now();
            for i in 0..batch.len() {
                let Some(frame) = batch.frame(i) else { continue };
                let before = out.len();
                let action = eng.handle(side, frame, now, &mut out);
                // Keep the wire order: what the engine released goes before this frame.
                plan.extend((before..out.len()).map(|k| (out[k].0, Send::Emitted(k))));
                if action == Action::Forward {
                    plan.push((side.other(), Send::Ring(i)));
                }
            }
            offload(&mut eng, fast.as_deref(), &mut ops, now);
        }
        for (dest, port) in [(Side::Inside, &inside), (Side::Outside, &outside)] {
            let frames: Vec<&[u8]> = plan
                .iter()
                .filter(|(d, _)| *d == dest)
                .filter_map(|(_, s)| match s {
                    Send::Ring(i) => batch.frame(*i),
                    Send::Emitted(k) => Some(&out[*k].1[..]),
                })
                .collect();
            if !frames.is_empty()
                && let Err(e) = port.send_batch(&frames)
            {
                warn!(port = port.name(), frames = frames.len(), "send failed: {e}");
            }
        }
        for (dest, pkt) in &out {
            if *dest == Side::Tun {
                send_tun(tun.as_deref(), pkt);
            }
        }
        plan.clear();
        out.clear();
        drop(batch);
        if ring.truncated != truncated_seen {
            truncated_seen = ring.truncated;
            warn!(
                port = ring.name(),
                total = truncated_seen,
                "frames larger than a ring slot dropped"
            );
        }
    }
}

fn side_name(s: Side) -> &'static str {
    match s {
        Side::Inside => "inside",
        Side::Outside => "outside",
        Side::Tun => "tun",
    }
}

/// Loads a local rule file (read once): the policy and the SHA-256 of its text.
fn load_policy(path: &Path) -> Result<(sluice_rules::Policy, String)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    match compile(&path.display().to_string(), &text, &FsLoader::for_file(path)) {
        Ok(c) => {
            for w in &c.warnings {
                warn!("{w}");
            }
            Ok((c.policy, link::text_sha256(&text)))
        }
        Err(d) => {
            let lines: Vec<String> = d.iter().map(ToString::to_string).collect();
            bail!("rule set {} is invalid:\n{}", path.display(), lines.join("\n"))
        }
    }
}

/// The policy to start with: with a control link, the last rule set control pushed (kept in
/// the state directory) so a restart while control is away enforces it; else `--rules`.
fn boot_policy(args: &Args) -> Result<(sluice_rules::Policy, Option<i64>, String)> {
    if args.control.is_some()
        && let Some((version, text)) = link::saved_policy(&args.state_dir)
    {
        match link::compile_pushed(&text) {
            Ok(p) => {
                info!(
                    version,
                    "enforcing the rule set control pushed last (until control says otherwise)"
                );
                return Ok((p, Some(version), link::text_sha256(&text)));
            }
            Err(e) => warn!(version, "the kept rule set no longer compiles, using --rules: {e}"),
        }
    }
    let (policy, sha) = load_policy(&args.rules)?;
    info!(rules = %args.rules.display(), rules_count = policy.rules.len(), "policy loaded");
    Ok((policy, None, sha))
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "sluice".into())
}

#[allow(clippy::too_many_arguments)]
fn run_port(
    rx: Arc<Port>,
    side: Side,
    inside: Arc<Port>,
    outside: Arc<Port>,
    engine: Arc<Mutex<Engine>>,
    clock: Clock,
    tun: Option<Arc<Tun>>,
    fast: Option<Arc<FastPath>>,
    stop: Arc<AtomicBool>,
) {
    let mut ops = Vec::new();
    let mut buf = vec![0u8; 65_536];
    let mut out = Vec::new();
    let port_of = |s: Side| if s == Side::Inside { &inside } else { &outside };
    while !stop.load(Ordering::Relaxed) {
        watchdog::beat();
        let range = match rx.recv(&mut buf) {
            Ok(Some(r)) => r,
            Ok(None) => continue,
            Err(e) => {
                error!(port = rx.name(), "receive failed: {e}");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let n = range.len();
        let frame = &buf[range];
        let action = {
            let mut eng = engine.lock().unwrap_or_else(PoisonError::into_inner);
            let now = clock.now();
            let action = eng.handle(side, frame, now, &mut out);
            offload(&mut eng, fast.as_deref(), &mut ops, now);
            action
        };
        if action == Action::Forward
            && let Err(e) = port_of(side.other()).send(frame)
        {
            warn!(port = port_of(side.other()).name(), len = n, "send failed: {e}");
        }
        for (s, f) in out.drain(..) {
            if s == Side::Tun {
                send_tun(tun.as_deref(), &f);
                continue;
            }
            if let Err(e) = port_of(s).send(&f) {
                warn!(port = port_of(s).name(), "send failed: {e}");
            }
        }
    }
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    watchdog::exit_on_panic();
    let args = Args::parse();
    let mut wd = Watchdog::new(Duration::from_millis(args.watchdog_ms.max(100)));
    let (policy, version, sha) = boot_policy(&args)?;
    let policy = Arc::new(ArcSwap::from_pointee(policy));
    let overlay = Arc::new(ArcSwap::from_pointee(IdentityOverlay::default()));
    let enforced =
        Arc::new(Enforced::new(policy.clone(), overlay.clone(), &args.state_dir, version, sha));
    // The identity feed control last pushed, enforced until control pushes again.
    if let Some(entries) = link::saved_identities(&args.state_dir) {
        enforced.enforce_identities(&entries);
        info!(entries = entries.len(), "identity feed kept from the last run in force");
    }
    let settings = Settings {
        max_flows: args.max_flows,
        report_interval_ms: args.report_interval.max(1) * 1000,
        timeouts: Timeouts {
            tcp_embryonic: args.timeout_tcp_embryonic * 1000,
            tcp_established: args.timeout_tcp_established * 1000,
            tcp_closing: args.close_linger * 1000,
            udp: args.timeout_udp * 1000,
            other: args.timeout_other * 1000,
        },
        divert: args.tun.as_ref().map(|_| DivertConfig {
            v4: args.tun_v4,
            v6: args.tun_v6,
            listen_port: args.listen_port,
            upstream_ports: args.upstream_ports,
        }),
        ..Settings::default()
    };
    let engine = Arc::new(Mutex::new(Engine::new(policy.clone(), overlay.clone(), settings)));
    let clock = Clock::default();
    let restored = lock(&engine).restore_learned(learned::load(&args.state_dir), clock.now());
    info!(restored, "learned destinations taken back from the last run");
    // Shared by the interception engine's threads; the fast path joins it once loaded.
    let handle = EngineHandle::new(engine.clone(), clock);
    let requests = Arc::new(RequestQueue::default());
    let tun = match (&args.tun, settings.divert) {
        (Some(name), Some(divert)) => {
            let tun = Tun::open(name).with_context(|| format!("opening the TUN {name}"))?;
            // Upstream connections cycle through the reserved ports faster than TIME_WAIT ends.
            if std::fs::read_to_string("/proc/sys/net/ipv4/tcp_tw_reuse")
                .is_ok_and(|v| v.trim() != "1")
            {
                warn!(
                    "net.ipv4.tcp_tw_reuse is not 1: at high connection rates upstream connects \
                     fail once the reserved ports wrap (sysctl -w net.ipv4.tcp_tw_reuse=1)"
                );
            }
            let (Some(cert), Some(key)) = (&args.ca_cert, &args.ca_key) else {
                bail!("--tun needs the enterprise CA: --ca-cert and --ca-key");
            };
            let ca =
                sluice_certs::EnterpriseCa::load(cert, key).context("loading the enterprise CA")?;
            let days = Duration::from_secs(args.leaf_days.max(1) * 86_400);
            let minter = Arc::new(sluice_certs::Minter::new(ca, days, 10_000)?);
            let roots = sluice_certs::upstream_roots(args.upstream_ca.as_deref())
                .context("loading the upstream roots")?;
            let upstream = Arc::new(intercept::upstream_config(roots)?);
            let intercept_threads = args.intercept_threads.unwrap_or_else(|| {
                std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
            });
            let now = std::time::Instant::now();
            let beats =
                (0..intercept_threads).map(|i| wd.watch(format!("intercept-{i}"), now)).collect();
            let cfg = intercept::Config {
                listen: intercept::Listen {
                    v4: divert.v4,
                    v6: divert.v6,
                    port: divert.listen_port,
                },
                minter,
                upstream,
                policy: policy.clone(),
                overlay: overlay.clone(),
                connect_timeout: Duration::from_secs(10),
                max_connections: args.max_intercepted,
                scanner: Arc::new(sluice_dlp::Scanner::new()?),
                dlp_salt: dlp_salt()?,
                beats,
            };
            let _threads = intercept::spawn(
                cfg,
                Arc::new(handle.clone()),
                requests.clone(),
                intercept_threads,
            )
            .context("starting the interception engine")?;
            info!(tun = name, v4 = %divert.v4, v6 = %divert.v6, port = divert.listen_port, "interception engine started");
            Some(Arc::new(tun))
        }
        _ => None,
    };
    if let Some(dir) = args.flow_log.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&args.flow_log)
        .with_context(|| format!("opening flow log {}", args.flow_log.display()))?;
    let stop = Arc::new(AtomicBool::new(false));
    let reload = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGTERM, stop.clone())?;
    signal_hook::flag::register(signal_hook::consts::SIGINT, stop.clone())?;
    signal_hook::flag::register(signal_hook::consts::SIGHUP, reload.clone())?;
    let mut threads = Vec::new();
    // Opens the receive side of both ports; the threads start once the fast path (which
    // filters these sockets) is in place.
    enum Rx {
        Ring(Vec<(Side, RxRing)>, Arc<TxPort>, Arc<TxPort>),
        Socket(Arc<Port>, Arc<Port>),
    }
    // The ports become ours: the bypass an earlier run left (if any) is replaced or removed
    // before the receive rings open, so no frame is both bypassed and read.
    let (bypass, outage) = failover::start(&args)?;
    let rx = match args.io {
        Io::Ring => {
            let tx_in = Arc::new(
                TxPort::open(&args.inside)
                    .with_context(|| format!("opening inside port {}", args.inside))?,
            );
            let tx_out = Arc::new(
                TxPort::open(&args.outside)
                    .with_context(|| format!("opening outside port {}", args.outside))?,
            );
            let mut rings = Vec::new();
            for (side, name) in [(Side::Inside, &args.inside), (Side::Outside, &args.outside)] {
                let ring = RxRing::open(name, 4096)
                    .with_context(|| format!("opening the receive ring of {name}"))?;
                rings.push((side, ring));
            }
            Rx::Ring(rings, tx_in, tx_out)
        }
        Io::Socket => {
            let timeout = Duration::from_millis(200);
            let inside = Arc::new(
                Port::open(&args.inside, timeout)
                    .with_context(|| format!("opening inside port {}", args.inside))?,
            );
            let outside = Arc::new(
                Port::open(&args.outside, timeout)
                    .with_context(|| format!("opening outside port {}", args.outside))?,
            );
            Rx::Socket(inside, outside)
        }
    };
    let fast = match args.fast_path {
        FastPathMode::Off => None,
        FastPathMode::Kernel => {
            let sockets = match &rx {
                Rx::Ring(rings, _, _) => rings.iter().map(|(_, r)| r.socket()).collect::<Vec<_>>(),
                Rx::Socket(i, o) => vec![i.socket(), o.socket()],
            };
            let tun_name = args.tun.as_deref().filter(|_| tun.is_some());
            match FastPath::load(&args.inside, &args.outside, tun_name, &sockets, args.max_flows) {
                Ok(fp) => Some(Arc::new(fp)),
                Err(e) => {
                    warn!(
                        "kernel fast path not available, every frame goes through the engine: {e}"
                    );
                    None
                }
            }
        }
    };
    if let Some(b) = &bypass {
        let now = clock.now();
        let held = lock(&engine).learned_entries(now).into_iter().map(|l| l.ip).collect();
        failover::hold(Some(b), held);
    }
    engine.lock().unwrap_or_else(PoisonError::into_inner).set_fast_path(fast.is_some());
    if let Some(fp) = &fast {
        handle.use_fast_path(fp.clone());
    }
    // The kernel's drops before the engine (rings full), read by the tick loop.
    let drops = match &rx {
        Rx::Ring(rings, _, _) => rings.iter().map(|(_, r)| r.socket()).collect::<Vec<_>>(),
        Rx::Socket(i, o) => vec![i.socket(), o.socket()],
    }
    .into_iter()
    .map(Drops::of)
    .collect::<std::io::Result<Vec<_>>>()
    .context("reading the ports' drop counters")?;
    let ports = match rx {
        Rx::Ring(rings, tx_in, tx_out) => {
            for (side, ring) in rings {
                let (i, o, e, t, f, s) = (
                    tx_in.clone(),
                    tx_out.clone(),
                    engine.clone(),
                    tun.clone(),
                    fast.clone(),
                    stop.clone(),
                );
                let name = format!("ring-{}", side_name(side));
                let beat = wd.watch(&name, std::time::Instant::now());
                threads.push(std::thread::Builder::new().name(name).spawn(move || {
                    watchdog::this_thread(beat);
                    run_ring(ring, side, i, o, e, clock, t, f, s)
                })?);
            }
            Ports::Ring(tx_in, tx_out)
        }
        Rx::Socket(inside, outside) => {
            for (side, rx) in [(Side::Inside, inside.clone()), (Side::Outside, outside.clone())] {
                let (i, o, e, t, f, s) = (
                    inside.clone(),
                    outside.clone(),
                    engine.clone(),
                    tun.clone(),
                    fast.clone(),
                    stop.clone(),
                );
                let name = format!("port-{}", side_name(side));
                let beat = wd.watch(&name, std::time::Instant::now());
                threads.push(std::thread::Builder::new().name(name).spawn(move || {
                    watchdog::this_thread(beat);
                    run_port(rx, side, i, o, e, clock, t, f, s)
                })?);
            }
            Ports::Socket(inside, outside)
        }
    };
    if let Some(t) = &tun {
        let (t, e, f, s) = (t.clone(), engine.clone(), fast.clone(), stop.clone());
        let beat = wd.watch("tun", std::time::Instant::now());
        threads.push(std::thread::Builder::new().name("tun".into()).spawn(move || {
            watchdog::this_thread(beat);
            run_tun(t, ports, e, clock, f, s)
        })?);
    }
    let link = match &args.control {
        Some(socket) => {
            let spool = Spool::open(&args.state_dir.join("spool"), args.spool_max_mb.max(1) << 20)
                .with_context(|| format!("opening the spool in {}", args.state_dir.display()))?;
            info!(next_seq = spool.next_seq(), unsent = spool.depth(), "record spool opened");
            let spool = Arc::new(Mutex::new(spool));
            let cfg = LinkConfig {
                socket: socket.clone(),
                name: args.name.clone().unwrap_or_else(hostname),
            };
            let connected = Arc::new(AtomicBool::new(false));
            let (sp, en, c, s) = (spool.clone(), enforced.clone(), connected.clone(), stop.clone());
            threads.push(
                std::thread::Builder::new()
                    .name("link".into())
                    .spawn(move || link::run(cfg, sp, en, c, s))?,
            );
            Some((spool, connected))
        }
        None => None,
    };
    info!(inside = %args.inside, outside = %args.outside, io = ?args.io, fast_path = fast.is_some(), flow_log = %args.flow_log.display(), "forwarding");
    let mut out = Output {
        log: BufWriter::new(log),
        requests,
        link,
        emitted: Emitted::default(),
        enforced: enforced.clone(),
        on_failure: args.on_failure,
        outage,
    };
    let mut ticks = 0u64;
    let mut saved_learned = lock(&engine).learned_version();
    let mut held_learned = saved_learned;
    // This loop is watched too; the watchdog's own thread checks every thread and beats.
    watchdog::this_thread(wd.watch("main", std::time::Instant::now()));
    failover::spawn_watch(wd, bypass.clone(), stop.clone())?;
    watchdog::notify("READY=1");
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(250));
        ticks += 1;
        watchdog::beat();
        watchdog::notify("WATCHDOG=1");
        // The AI destinations held in bypass follow what the engine learns, at every tick.
        if bypass.is_some()
            && let Some((version, entries)) = learned::since(&engine, held_learned, clock.now())
        {
            failover::hold(bypass.as_deref(), entries.iter().map(|l| l.ip).collect());
            held_learned = version;
        }
        if ticks.is_multiple_of(40)
            && let Some((version, entries)) = learned::since(&engine, saved_learned, clock.now())
        {
            learned::save(&args.state_dir, &entries);
            saved_learned = version;
        }
        if reload.swap(false, Ordering::Relaxed) {
            match load_policy(&args.rules) {
                Ok((p, sha)) => {
                    enforced.set_local(p, sha);
                    info!(rules = %args.rules.display(), "policy reloaded from the local file");
                }
                Err(e) => error!("reload refused, keeping the current policy: {e:#}"),
            }
        }
        // What the kernel forwarded is read once a second without the engine locked (a system
        // call or two per offloaded flow), then given to it before its timeouts and reports;
        // the closes NAT entries carried, at every tick (from a ring buffer: no system call).
        let poll = ticks.is_multiple_of(4);
        let counts = fast.as_deref().filter(|_| poll).map(FastPath::counts).unwrap_or_default();
        let stats = fast.as_deref().filter(|_| poll).map(FastPath::stats);
        let closes = fast.as_deref().map(FastPath::closes).unwrap_or_default();
        let dropped: u64 = match poll {
            true => drops.iter().filter_map(|d| d.take().ok()).sum(),
            false => 0,
        };
        if dropped > 0 {
            warn!(dropped, "the kernel dropped frames before the engine read them (rings full)");
        }
        let now = clock.now();
        out.write(&engine, &|e| {
            e.counters.ring_drops += dropped;
            for (k, c) in &closes {
                e.offload_closed(k, *c, now);
            }
            for c in &counts {
                e.offload_carried(c, now);
            }
            if let Some(stats) = stats {
                e.counters.fastpath_redirected = stats.redirected;
                e.counters.fastpath_unmarked = stats.unmarked;
            }
            e.tick(now);
            offload(e, fast.as_deref(), &mut Vec::new(), now);
        });
    }
    for t in threads {
        let _ = t.join();
    }
    let counts = fast.as_deref().map(FastPath::counts).unwrap_or_default();
    let now = clock.now();
    out.write(&engine, &|e| {
        for c in &counts {
            e.offload_carried(c, now);
        }
        e.shutdown(now);
        offload(e, fast.as_deref(), &mut Vec::new(), now);
    });
    let entries = lock(&engine).learned_entries(clock.now());
    learned::save(&args.state_dir, &entries);
    let counters = lock(&engine).counters;
    info!(?counters, "stopped");
    Ok(())
}

/// The engine, whatever a panicked holder left (its state stays consistent between calls).
fn lock(engine: &Mutex<Engine>) -> std::sync::MutexGuard<'_, Engine> {
    engine.lock().unwrap_or_else(PoisonError::into_inner)
}
