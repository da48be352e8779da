//! What happens to the site's traffic when this process is gone (`--on-failure`): the failure
//! program is left attached to the ports and fed a heartbeat every [`BEAT`] while the data
//! plane runs; once the beat stops it joins the ports (`open`, holding the AI destinations
//! the data plane learned) or drops every frame (`closed`). Either way, what the ports did
//! while no data plane ran is reported ([`Outage`]).

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use sluice_dataplane::bypass::{Bypass, OnStale, Outage};
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
pub fn start(args: &Args, inside: &str, outside: &str) -> Result<(Option<Shared>, Option<Outage>)> {
    let stale = Duration::from_millis(args.bypass_after_ms.max(20));
    let on_stale = match args.on_failure {
        OnFailure::Open => OnStale::Open { hold_ai: args.bypass_ai == BypassAi::Hold },
        OnFailure::Closed => OnStale::Closed,
    };
    let (bypass, outage) = match Bypass::install(inside, outside, stale, on_stale) {
        Ok((b, o)) => {
            info!(after_ms = args.bypass_after_ms, ?on_stale, "failure program armed");
            (Some(Arc::new(b)), o)
        }
        // Without the program, ports with no addresses pass nothing when no data plane runs
        // anyway: `closed` holds, only the outage's counts are lost.
        Err(e) if on_stale == OnStale::Closed => {
            warn!(
                "the failure program could not be installed, an outage will not be counted \
                 (nothing passes without a data plane all the same): {e}"
            );
            let o = sluice_dataplane::bypass::remove(inside, outside).unwrap_or_else(|e| {
                warn!("removing a program an earlier run left failed: {e}");
                None
            });
            (None, o)
        }
        Err(e) => {
            return Err(e).with_context(|| {
                format!("installing the failure program (--on-failure {})", on_stale.name())
            });
        }
    };
    if let Some(o) = &outage {
        warn!(
            on_failure = o.on_failure,
            began_ms = o.began_ms,
            ended_ms = o.ended_ms,
            passed_frames = o.passed_frames,
            passed_bytes = o.passed_bytes,
            held_frames = o.held_frames,
            refused_frames = o.refused_frames,
            "no data plane ran for a while: the failure program had the ports"
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
            match bypass.as_deref().map(Bypass::beat) {
                Some(Err(e)) => warn!("bypass heartbeat failed: {e}"),
                Some(Ok(Some(late))) => warn!(
                    late_ms = late.ended_ms.saturating_sub(late.last_beat_ms),
                    passed_frames = late.passed_frames,
                    held_frames = late.held_frames,
                    refused_frames = late.refused_frames,
                    "a heartbeat came late: the failure program had the ports for a moment \
                     while this data plane ran"
                ),
                _ => {}
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
