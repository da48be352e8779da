//! `sluice-dataplane`: the inline appliance process. Bridges two AF_PACKET ports through the
//! packet engine, writes flow records as JSON lines, reloads the rules on SIGHUP.

mod args;
mod boot;
mod driver;
mod failover;
mod handle;
mod learned;
mod output;
mod parts;
mod proxy_mode;
mod tunnels;
mod watchdog;

use std::io::BufWriter;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use sluice_dataplane::Drops;
use sluice_dataplane::engine::{Clock, Engine, Side};
use sluice_dataplane::fastpath::FastPath;
use sluice_dataplane::port::Port;
use sluice_dataplane::ring::{RxRing, TxPort};
use sluice_dataplane::tun::Tun;
use sluice_intercept as intercept;
use tracing::{info, warn};

use args::{Args, FastPathMode, Io};
use driver::{Ports, RingRx, Shared, SocketRx, offload, run_port, run_tun, side_name};
use handle::{EngineHandle, RequestQueue};
use output::{Emitted, Output, Wake};
use watchdog::Watchdog;

/// The tick: the watchdog's notification, the fast path's counts and closes, the saved state.
/// The engine's own timers run when it says ([`Engine::poll_timeout`]).
const TICK: Duration = Duration::from_millis(250);

/// mimalloc: the interception engine allocates and frees mid-sized buffers (bodies,
/// records, recordings) from many threads, where glibc's allocator spent a tenth of the data
/// plane's time (BENCHMARKS.md, "Access: recording and quotas").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    if let Some(addr) = args.proxy_listen {
        return proxy_mode::run(&args, addr);
    }
    let (Some(inside), Some(outside)) = (args.inside.clone(), args.outside.clone()) else {
        bail!(
            "--inside and --outside name the two ports (or --proxy-listen for the explicit proxy)"
        );
    };
    // The time from here to "forwarding" is the time from a restart to enforcing.
    info!(version = env!("CARGO_PKG_VERSION"), on_failure = ?args.on_failure, "starting");
    let mut wd = Watchdog::new(Duration::from_millis(args.watchdog_ms.max(100)));
    let (policy, overlay, enforced) = boot::enforced(&args)?;
    let settings = boot::settings(&args);
    let engine = Arc::new(Mutex::new(Engine::new(policy.clone(), overlay.clone(), settings)));
    let clock = Clock::default();
    let restored = lock(&engine).restore_learned(learned::load(&args.state_dir), clock.now());
    info!(restored, "learned destinations taken back from the last run");
    // Shared by the interception engine's threads; the fast path joins it once loaded.
    let handle = EngineHandle::new(engine.clone(), clock);
    let wake = Arc::new(Wake::default());
    let requests = Arc::new(RequestQueue::new(wake.clone()));
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
            let front = intercept::Front::Divert(intercept::Listen {
                v4: divert.v4,
                v6: divert.v6,
                port: divert.listen_port,
            });
            let (cfg, intercept_threads) =
                parts::intercept_config(&args, front, &policy, &overlay, &enforced, &mut wd)?;
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
    let log = parts::open_flow_log(&args)?;
    let (stop, reload) = parts::signals()?;
    let mut threads = Vec::new();
    // Opens the receive side of both ports; the threads start once the fast path (which
    // filters these sockets) is in place.
    enum Rx {
        Ring(Vec<(Side, RxRing)>, Arc<TxPort>, Arc<TxPort>),
        Socket(Arc<Port>, Arc<Port>),
    }
    // The ports become ours: the bypass an earlier run left (if any) is replaced or removed
    // before the receive rings open, so no frame is both bypassed and read.
    let (bypass, outage) = failover::start(&args, &inside, &outside)?;
    let rx = match args.io {
        Io::Ring => {
            let tx_in = Arc::new(
                TxPort::open(&inside).with_context(|| format!("opening inside port {inside}"))?,
            );
            let tx_out = Arc::new(
                TxPort::open(&outside)
                    .with_context(|| format!("opening outside port {outside}"))?,
            );
            let mut rings = Vec::new();
            for (side, name) in [(Side::Inside, &inside), (Side::Outside, &outside)] {
                let ring = RxRing::open(name, 4096)
                    .with_context(|| format!("opening the receive ring of {name}"))?;
                rings.push((side, ring));
            }
            Rx::Ring(rings, tx_in, tx_out)
        }
        Io::Socket => {
            let inside = Arc::new(
                Port::open(&inside, driver::WAIT)
                    .with_context(|| format!("opening inside port {inside}"))?,
            );
            let outside = Arc::new(
                Port::open(&outside, driver::WAIT)
                    .with_context(|| format!("opening outside port {outside}"))?,
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
            match FastPath::load(&inside, &outside, tun_name, &sockets, args.max_flows) {
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
    let (ports, receivers) = match rx {
        Rx::Ring(rings, tx_in, tx_out) => (Ports::Ring(tx_in, tx_out), rings),
        Rx::Socket(i, o) => (Ports::Socket(i, o), Vec::new()),
    };
    let shared = Shared {
        ports: ports.clone(),
        engine: engine.clone(),
        clock,
        tun: tun.clone(),
        fast: fast.clone(),
        stop: stop.clone(),
        wake: wake.clone(),
    };
    let mut spawn = |name: String, run: Box<dyn FnOnce(Shared) + Send>| -> Result<()> {
        let beat = wd.watch(&name, Instant::now());
        let io = shared.clone();
        threads.push(std::thread::Builder::new().name(name).spawn(move || {
            watchdog::this_thread(beat);
            run(io)
        })?);
        Ok(())
    };
    for (side, ring) in receivers {
        let rx = RingRx::new(ring);
        spawn(format!("ring-{}", side_name(side)), Box::new(move |io| run_port(rx, side, io)))?;
    }
    if let Ports::Socket(inside, outside) = &ports {
        for (side, port) in [(Side::Inside, inside), (Side::Outside, outside)] {
            let rx = SocketRx::new(port.clone());
            spawn(format!("port-{}", side_name(side)), Box::new(move |io| run_port(rx, side, io)))?;
        }
    }
    if let Some(t) = tun.clone() {
        spawn("tun".into(), Box::new(move |io| run_tun(t, io)))?;
    }
    let link = parts::start_link(&args, &enforced, &stop, &mut threads)?;
    info!(inside = %inside, outside = %outside, io = ?args.io, fast_path = fast.is_some(), flow_log = %args.flow_log.display(), "forwarding");
    let mut out = Output {
        log: BufWriter::new(log),
        requests,
        tunnels: None,
        link,
        emitted: Emitted::default(),
        enforced: enforced.clone(),
        on_failure: args.on_failure,
        alarms: outage.iter().map(output::outage_alarm).collect(),
        outage,
        behind: false,
    };
    let mut ticks = 0u64;
    let mut saved_learned = lock(&engine).learned_version();
    let mut held_learned = saved_learned;
    // This loop is watched too; the watchdog's own thread checks every thread and beats.
    watchdog::this_thread(wd.watch("main", std::time::Instant::now()));
    failover::spawn_watch(wd, bypass.clone(), stop.clone())?;
    // Every thread is spawned: the record writer's loop yields to the traffic's threads (a new
    // thread would inherit this).
    if let Err(e) = sluice_sched::background() {
        warn!("the record writer is not (wholly) background work: {e}");
    }
    watchdog::notify("READY=1");
    let mut next_tick = Instant::now() + TICK;
    // When the engine next needs the clock, as it said at the last write (every write locks
    // it anyway: no lock of its own for this).
    let mut engine_at = lock(&engine).poll_timeout();
    while !stop.load(Ordering::Relaxed) {
        // Between ticks and the engine's timers, records are written as soon as they wait (a
        // millisecond apart at most, so a burst is one write); records never keep the timers
        // from running (their own write takes them).
        let timer = clock.instant(engine_at).min(next_tick);
        if wake.wait_until(timer) && Instant::now() < timer {
            out.write(&engine, &mut |e: &mut Engine| engine_at = e.poll_timeout());
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        if Instant::now() < next_tick {
            // The engine's timer alone.
            let mut sent = Vec::new();
            out.write(&engine, &mut |e: &mut Engine| {
                let now = clock.now();
                e.handle_timeout(now);
                engine_at = e.poll_timeout();
                sent.extend(std::iter::from_fn(|| e.poll_transmit()));
                offload(e, fast.as_deref(), &mut Vec::new(), now);
            });
            shared.send(&sent);
            continue;
        }
        next_tick = Instant::now() + TICK;
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
            boot::reload(&args, &enforced);
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
        let mut sent = Vec::new();
        out.write(&engine, &mut |e: &mut Engine| {
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
            e.handle_timeout(now);
            engine_at = e.poll_timeout();
            sent.extend(std::iter::from_fn(|| e.poll_transmit()));
            offload(e, fast.as_deref(), &mut Vec::new(), now);
        });
        shared.send(&sent);
        // The spool's last writes are synced even when no more follow (a group commit).
        out.sync_spool(false);
    }
    for t in threads {
        let _ = t.join();
    }
    let counts = fast.as_deref().map(FastPath::counts).unwrap_or_default();
    let now = clock.now();
    out.write(&engine, &mut |e: &mut Engine| {
        for c in &counts {
            e.offload_carried(c, now);
        }
        e.shutdown(now);
        offload(e, fast.as_deref(), &mut Vec::new(), now);
    });
    out.sync_spool(true);
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
