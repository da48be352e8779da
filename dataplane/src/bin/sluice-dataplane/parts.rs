//! The parts both modes of the data plane start (inline, and the explicit proxy of
//! `proxy_mode.rs`): the interception engine's configuration, the link to control, the flow
//! log.

use std::fs::{File, OpenOptions};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use arc_swap::ArcSwap;
use sluice_dataplane::link::{self, Enforced, LinkConfig, Spool};
use sluice_intercept as intercept;
use sluice_rules::{IdentityOverlay, Policy};
use tracing::info;

use crate::args::Args;
use crate::boot::{dlp_salt, link_target};
use crate::output::Link;
use crate::watchdog::Watchdog;

/// The interception engine's configuration for `front`, and how many threads it runs on
/// (each watched by `wd`).
pub fn intercept_config(
    args: &Args,
    front: intercept::Front,
    policy: &Arc<ArcSwap<Policy>>,
    overlay: &Arc<ArcSwap<IdentityOverlay>>,
    enforced: &Enforced,
    wd: &mut Watchdog,
) -> Result<(intercept::Config, usize)> {
    let (Some(cert), Some(key)) = (&args.ca_cert, &args.ca_key) else {
        bail!("interception needs the enterprise CA: --ca-cert and --ca-key");
    };
    let ca = sluice_certs::EnterpriseCa::load(cert, key).context("loading the enterprise CA")?;
    let days = Duration::from_secs(args.leaf_days.max(1) * 86_400);
    let minter = Arc::new(sluice_certs::Minter::new(ca, days, 10_000)?);
    let roots = sluice_certs::upstream_roots(args.upstream_ca.as_deref())
        .context("loading the upstream roots")?;
    let upstream = Arc::new(intercept::upstream_config(roots)?);
    let threads = args.intercept_threads.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
    });
    let now = std::time::Instant::now();
    let beats = (0..threads).map(|i| wd.watch(format!("intercept-{i}"), now)).collect();
    let cfg = intercept::Config {
        front,
        minter,
        upstream,
        policy: policy.clone(),
        overlay: overlay.clone(),
        connect_timeout: Duration::from_secs(10),
        max_connections: args.max_intercepted,
        max_per_client: args.max_intercepted_per_client,
        scanner: Arc::new(sluice_dlp::Scanner::new()?),
        dlp_salt: dlp_salt()?,
        access: enforced.access.clone(),
        beats,
    };
    Ok((cfg, threads))
}

/// The spool and the link thread, with `--control`: the spool, and whether control is
/// connected now.
pub fn start_link(
    args: &Args,
    enforced: &Arc<Enforced>,
    stop: &Arc<AtomicBool>,
    threads: &mut Vec<JoinHandle<()>>,
) -> Result<Option<Link>> {
    let Some((to, name)) = link_target(args)? else { return Ok(None) };
    let mut spool = Spool::open(&args.state_dir.join("spool"), args.spool_max_mb.max(1) << 20)
        .with_context(|| format!("opening the spool in {}", args.state_dir.display()))?;
    spool.set_sync_every(Duration::from_millis(args.spool_sync_ms));
    info!(next_seq = spool.next_seq(), unsent = spool.depth(), "record spool opened");
    let spool = Arc::new(Mutex::new(spool));
    let cfg = LinkConfig { to, name };
    let connected = Arc::new(AtomicBool::new(false));
    let (sp, en, c, s) = (spool.clone(), enforced.clone(), connected.clone(), stop.clone());
    threads.push(
        std::thread::Builder::new()
            .name("link".into())
            .spawn(move || link::run(cfg, sp, en, c, s))?,
    );
    Ok(Some((spool, connected)))
}

/// Flags the signals raise: (stop: SIGTERM or SIGINT, reload: SIGHUP).
pub fn signals() -> Result<(Arc<AtomicBool>, Arc<AtomicBool>)> {
    let stop = Arc::new(AtomicBool::new(false));
    let reload = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGTERM, stop.clone())?;
    signal_hook::flag::register(signal_hook::consts::SIGINT, stop.clone())?;
    signal_hook::flag::register(signal_hook::consts::SIGHUP, reload.clone())?;
    Ok((stop, reload))
}

/// The flow log, opened for appending (its directory made).
pub fn open_flow_log(args: &Args) -> Result<File> {
    if let Some(dir) = args.flow_log.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(&args.flow_log)
        .with_context(|| format!("opening flow log {}", args.flow_log.display()))
}
