//! `sluice-dataplane --proxy-listen ADDR`: the explicit proxy (ARCHITECTURE.md, "Explicit
//! proxy"), for sites where Sluice cannot sit inline. No ports, no TUN, no kernel fast path:
//! the interception engine takes its connections from the proxy's listener, and [`Tunnels`]
//! makes the tunnels' flow records. The rest is the inline mode's: the policy and the identity
//! feed (control's last push, kept on disk), the link to control, the record writer, SIGHUP
//! reloads, the watchdog and systemd's notify protocol.

use std::io::BufWriter;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use sluice_dataplane::engine::{Clock, Engine};
use sluice_intercept as intercept;
use tracing::{info, warn};

use crate::args::Args;
use crate::boot;
use crate::handle::RequestQueue;
use crate::output::{Emitted, Output, Wake};
use crate::tunnels::Tunnels;
use crate::watchdog::{self, Watchdog};
use crate::{failover, parts};

/// How often the watchdog is told, statistics are due and a reload is looked for.
const TICK: Duration = Duration::from_millis(250);

/// Runs the explicit proxy on `addr` until SIGTERM.
pub fn run(args: &Args, addr: SocketAddr) -> Result<()> {
    info!(version = env!("CARGO_PKG_VERSION"), listen = %addr, "starting as an explicit proxy");
    let mut wd = Watchdog::new(Duration::from_millis(args.watchdog_ms.max(100)));
    let (policy, overlay, enforced) = boot::enforced(args)?;
    // The packet engine sees no packet here; it keeps the counters the statistics records
    // carry.
    let engine =
        Arc::new(Mutex::new(Engine::new(policy.clone(), overlay.clone(), boot::settings(args))));
    let clock = Clock::default();
    let wake = Arc::new(Wake::default());
    let requests = Arc::new(RequestQueue::new(wake.clone()));
    let tunnels = Arc::new(Tunnels::new(wake.clone()));
    let front = intercept::Front::Proxy(addr);
    let (cfg, threads_n) =
        parts::intercept_config(args, front, &policy, &overlay, &enforced, &mut wd)?;
    let _engine_threads = intercept::spawn(cfg, tunnels.clone(), requests.clone(), threads_n)
        .context("starting the explicit proxy")?;
    let log = parts::open_flow_log(args)?;
    let (stop, reload) = parts::signals()?;
    let mut threads = Vec::new();
    let link = parts::start_link(args, &enforced, &stop, &mut threads)?;
    let mut out = Output {
        log: BufWriter::new(log),
        requests,
        tunnels: Some(tunnels),
        link,
        emitted: Emitted::default(),
        enforced: enforced.clone(),
        on_failure: args.on_failure,
        alarms: Vec::new(),
        outage: None,
        behind: false,
    };
    watchdog::this_thread(wd.watch("main", Instant::now()));
    failover::spawn_watch(wd, None, stop.clone())?;
    if let Err(e) = sluice_sched::background() {
        warn!("the record writer is not (wholly) background work: {e}");
    }
    info!(listen = %addr, threads = threads_n, flow_log = %args.flow_log.display(), "forwarding as an explicit proxy");
    watchdog::notify("READY=1");
    let mut next_tick = Instant::now() + TICK;
    while !stop.load(Ordering::Relaxed) {
        // Records are written as soon as they wait, a millisecond apart at most.
        if wake.wait_until(next_tick) && Instant::now() < next_tick {
            out.write(&engine, &mut |_: &mut Engine| {});
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        next_tick = Instant::now() + TICK;
        watchdog::beat();
        watchdog::notify("WATCHDOG=1");
        if reload.swap(false, Ordering::Relaxed) {
            boot::reload(args, &enforced);
        }
        let now = clock.now();
        out.write(&engine, &mut |e: &mut Engine| e.handle_timeout(now));
        out.sync_spool(false);
    }
    for t in threads {
        let _ = t.join();
    }
    out.write(&engine, &mut |_: &mut Engine| {});
    out.sync_spool(true);
    info!("stopped");
    Ok(())
}
