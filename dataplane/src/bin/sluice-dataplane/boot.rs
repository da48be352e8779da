//! What a run starts from: the policy (the rule set control pushed last, kept beside the
//! link's state, else the local file), the engine's settings from the command line, the
//! DLP salt and the name the data plane gives control.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use arc_swap::ArcSwap;
use sluice_dataplane::engine::{DivertConfig, Settings};
use sluice_dataplane::flow::Timeouts;
use sluice_dataplane::link::{self, Enforced};
use sluice_rules::catalog::FsLoader;
use sluice_rules::compile;
use sluice_rules::{IdentityOverlay, Policy};
use tracing::{info, warn};

use crate::args::Args;

/// The policy and identity feed in force at the start (see [`boot_policy`]; the feed control
/// pushed last, kept in the state directory, until control pushes again), shared by the
/// engines, and what swaps them.
pub fn enforced(args: &Args) -> Result<Booted> {
    let (policy, version, sha) = boot_policy(args)?;
    let policy = Arc::new(ArcSwap::from_pointee(policy));
    let overlay = Arc::new(ArcSwap::from_pointee(IdentityOverlay::default()));
    let enforced =
        Arc::new(Enforced::new(policy.clone(), overlay.clone(), &args.state_dir, version, sha));
    if let Some(entries) = link::saved_identities(&args.state_dir) {
        enforced.enforce_identities(&entries);
        info!(entries = entries.len(), "identity feed kept from the last run in force");
    }
    Ok((policy, overlay, enforced))
}

/// SIGHUP: the local rule file is put in force, or refused with the current policy kept.
pub fn reload(args: &Args, enforced: &Enforced) {
    match load_policy(&args.rules) {
        Ok((p, sha)) => {
            enforced.set_local(p, sha);
            info!(rules = %args.rules.display(), "policy reloaded from the local file");
        }
        Err(e) => tracing::error!("reload refused, keeping the current policy: {e:#}"),
    }
}

/// What [`enforced`] gives.
pub type Booted = (Arc<ArcSwap<Policy>>, Arc<ArcSwap<IdentityOverlay>>, Arc<Enforced>);

/// The engine's settings from the command line.
pub fn settings(args: &Args) -> Settings {
    Settings {
        max_flows: args.max_flows,
        max_embryonic_per_source: args.max_embryonic_per_source,
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
    }
}

/// Loads a local rule file (read once): the policy and the SHA-256 of its text.
pub fn load_policy(path: &Path) -> Result<(sluice_rules::Policy, String)> {
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
pub fn boot_policy(args: &Args) -> Result<(sluice_rules::Policy, Option<i64>, String)> {
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

/// Where control is (`--control`, `--fleet-dir`) and this data plane's name toward it.
pub fn link_target(args: &Args) -> Result<Option<(link::Endpoint, String)>> {
    let Some(control) = &args.control else {
        if args.fleet_dir.is_some() {
            anyhow::bail!("--fleet-dir is for --control tls://HOST:PORT");
        }
        return Ok(None);
    };
    let Some(addr) = control.strip_prefix("tls://") else {
        if args.fleet_dir.is_some() {
            anyhow::bail!("--fleet-dir is for --control tls://HOST:PORT, not a Unix socket");
        }
        let name = args.name.clone().unwrap_or_else(hostname);
        return Ok(Some((link::Endpoint::Unix(control.into()), name)));
    };
    if addr.rsplit_once(':').is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err()) {
        anyhow::bail!("--control {control}: expected tls://HOST:PORT");
    }
    let dir = args.fleet_dir.as_ref().with_context(|| {
        format!("--control {control} needs --fleet-dir (what `sluicectl fleet enrol` wrote)")
    })?;
    let tls = sluice_certs::fleet::dataplane_tls(dir)
        .with_context(|| format!("--fleet-dir {}", dir.display()))?;
    if let Some(n) = &args.name
        && *n != tls.name
    {
        anyhow::bail!(
            "--name {n}, but the certificate in {} was issued to {}: control would refuse it",
            dir.display(),
            tls.name
        );
    }
    let left = tls.not_after.duration_since(std::time::SystemTime::now()).unwrap_or_default();
    if left < std::time::Duration::from_secs(30 * 86_400) {
        warn!(
            days = left.as_secs() / 86_400,
            "the fleet certificate expires soon: enrol again with --replace"
        );
    }
    let name = tls.name.clone();
    Ok(Some((link::Endpoint::Tls { addr: addr.to_owned(), tls: tls.config }, name)))
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "sluice".into())
}

/// A random salt for DLP finding hashes (per run: hashes correlate within a run only).
pub fn dlp_salt() -> Result<Arc<[u8]>> {
    let mut salt = [0u8; 16];
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut salt)
        .map_err(|_| anyhow::anyhow!("no system randomness for the DLP salt"))?;
    Ok(Arc::from(&salt[..]))
}
