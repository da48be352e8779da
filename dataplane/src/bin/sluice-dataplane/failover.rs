//! What happens to the site's traffic when this process is gone (`--on-failure`): with
//! `open`, the bypass program is left attached to the ports and fed a heartbeat every
//! [`BEAT`] while the data plane runs, and the AI destinations it learned to hold; with
//! `closed`, any bypass an earlier run left is removed. Either way, what passed while no data
//! plane ran is reported ([`Outage`]).

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use sluice_dataplane::bypass::{Bypass, Outage};
use tracing::{info, warn};

use crate::args::{Args, BypassAi, OnFailure};
use crate::watchdog::{self, Watchdog};

/// How often the heartbeat is written (a few times within `--bypass-after-ms`).
pub const BEAT: Duration = Duration::from_millis(50);

/// The bypass shared by the watchdog thread (its heartbeat) and the tick loop (its held
/// addresses).
pub type Shared = Arc<Bypass>;

/// Installs or removes the bypass as `--on-failure` says; the outage an earlier run's bypass
/// counted, if any.
pub fn start(args: &Args) -> Result<(Option<Shared>, Option<Outage>)> {
    let (bypass, outage) = match args.on_failure {
        OnFailure::Open => {
            let stale = Duration::from_millis(args.bypass_after_ms.max(20));
            let hold = args.bypass_ai == BypassAi::Hold;
            let (b, o) = Bypass::install(&args.inside, &args.outside, stale, hold)
                .context("installing the fail-open bypass (--on-failure open)")?;
            info!(after_ms = args.bypass_after_ms, hold_ai = hold, "fail-open bypass armed");
            (Some(Arc::new(b)), o)
        }
        OnFailure::Closed => {
            let o = sluice_dataplane::bypass::remove(&args.inside, &args.outside)
                .context("removing the bypass an earlier run left")?;
            (None, o)
        }
    };
    if let Some(o) = &outage {
        warn!(
            last_beat_ms = o.last_beat_ms,
            passed_frames = o.passed_frames,
            passed_bytes = o.passed_bytes,
            held_frames = o.held_frames,
            "the ports were in bypass while no data plane ran"
        );
    }
    Ok((bypass, outage))
}

/// The watchdog's thread: every [`BEAT`], the watched threads are checked (a stalled one
/// ends the process) and, while they are all well, the bypass gets its heartbeat. So the
/// bypass takes over when any of them stops, not only when the process is gone.
pub fn spawn_watch(
    mut wd: Watchdog,
    bypass: Option<Shared>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<()> {
    std::thread::Builder::new().name("watchdog".into()).spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            if let Some(stall) = wd.check(std::time::Instant::now()) {
                watchdog::exit_stalled(&stall);
            }
            if let Some(b) = &bypass
                && let Err(e) = b.beat()
            {
                warn!("bypass heartbeat failed: {e}");
            }
            std::thread::sleep(BEAT);
        }
    })?;
    Ok(())
}

/// Holds `addrs` in bypass.
pub fn hold(bypass: Option<&Bypass>, addrs: HashSet<IpAddr>) {
    if let Some(b) = bypass
        && let Err(e) = b.hold(&addrs)
    {
        warn!("updating the addresses held in bypass failed: {e}");
    }
}
