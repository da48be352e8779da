//! `sluice-control --config FILE`: the control-plane daemon (HTTPS API over rustls, bearer
//! tokens with roles, rule-set versions and audit log, flow queries).

use std::sync::{Arc, PoisonError};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use sluice_control::api::{self, AppState, Stores};
use sluice_control::approvals::ApprovalStore;
use sluice_control::auth::Tokens;
use sluice_control::checkpointer::{self, Checkpointer};
use sluice_control::config::Config;
use sluice_control::fleet::Fleet;
use sluice_control::hub::{Hub, SYSLOG_QUEUE};
use sluice_control::identstore::IdentStore;
use sluice_control::keystore::KeyStore;
use sluice_control::pg::identities::PgIdentStore;
use sluice_control::pg::records::PgRecordStore;
use sluice_control::pg::rules::PgRuleStore;
use sluice_control::rulestore::RuleStore;
use sluice_control::store::FlowStore;
use sluice_control::{audit_key, link, link_tls, serve, syslog, tls, webhook};

/// mimalloc: the link's batches and the record store allocate and free large buffers many
/// times a second, which glibc's allocator returned to the kernel and faulted in again
/// (BENCHMARKS.md, "Access: recording and quotas").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The Sluice control-plane daemon.
#[derive(Parser, Debug)]
#[command(name = "sluice-control", version)]
struct Args {
    /// Configuration file (TOML).
    #[arg(long)]
    config: std::path::PathBuf,
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let args = Args::parse();
    let cfg = Config::load(&args.config)?;
    std::fs::create_dir_all(&cfg.state_dir)
        .with_context(|| format!("creating {}", cfg.state_dir.display()))?;
    let names = vec!["localhost".to_owned(), cfg.listen.ip().to_string()];
    let (cert, key) =
        tls::cert_files(cfg.tls_cert.as_deref(), cfg.tls_key.as_deref(), &cfg.state_dir, &names)?;
    let tls_cfg = tls::server_config(&cert, &key)?;
    let ca_pem = match &cfg.ca_cert {
        Some(p) => {
            Some(std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?)
        }
        None => None,
    };
    let (syslog_tx, syslog_rx) = match &cfg.syslog {
        Some(_) => {
            let (tx, rx) = tokio::sync::mpsc::channel(SYSLOG_QUEUE);
            (Some(tx), Some(rx))
        }
        None => (None, None),
    };
    // Before any thread is spawned, so that all inherit it (the PostgreSQL runtime's too): control is off the traffic's path
    // and often shares the host with a data plane.
    if let Err(e) = sluice_sched::background() {
        tracing::warn!("control is not (wholly) background work: {e}");
    }
    sluice_control::pg::trust(cfg.store_ca.as_deref()).context("store_ca")?;
    // On a shared store, one control is active; another waits here as its standby.
    let active = match &cfg.store {
        Some(url) => Some(wait_active(url)?),
        None => None,
    };
    let stores = Stores {
        rules: match &cfg.store {
            Some(url) => {
                Box::new(PgRuleStore::open(url).context("opening the rule store on PostgreSQL")?)
            }
            None => Box::new(
                RuleStore::open(&cfg.state_dir.join("rules.db"))
                    .context("opening the rule store")?,
            ),
        },
        flows: match &cfg.store {
            Some(url) => Box::new(
                PgRecordStore::open(url).context("opening the record store on PostgreSQL")?,
            ),
            None => Box::new(
                FlowStore::open(&cfg.state_dir.join("flows.db"))
                    .context("opening the flow store")?,
            ),
        },
        identities: match &cfg.store {
            Some(url) => Box::new(
                PgIdentStore::open(url).context("opening the identity store on PostgreSQL")?,
            ),
            None => Box::new(
                IdentStore::open(&cfg.state_dir.join("identities.db"))
                    .context("opening the identity store")?,
            ),
        },
        keys: KeyStore::open(&cfg.state_dir.join("keys.db"), &cfg.state_dir.join("keys.kek"))
            .context("opening the key store")?,
        approvals: ApprovalStore::open(&cfg.state_dir.join("approvals.db"))
            .context("opening the approval store")?,
        fleet: Fleet::open(&cfg.state_dir).context("opening the fleet's store")?,
    };
    let (webhook, webhook_task) =
        match webhook::start(&cfg.approvals).context("[approvals] webhook")? {
            Some((tx, task)) => (Some(tx), Some(task)),
            None => (None, None),
        };
    let signer = audit_key::load_or_create(&cfg.state_dir)?;
    let done = stores.rules.checkpointed().context("reading the checkpoints")?;
    let audit = api::AuditState {
        checkpointer: Some(std::sync::Mutex::new(Checkpointer::new(
            signer,
            cfg.audit.clone(),
            done,
        ))),
        cfg: cfg.audit.clone(),
        state_dir: Some(cfg.state_dir.clone()),
        recordings_dir: match &cfg.store {
            Some(_) => None,
            None => Some(cfg.state_dir.join("flows.recordings")),
        },
        ..Default::default()
    };
    let state = Arc::new(
        AppState::new(Tokens::new(&cfg.tokens), stores, Hub::new(syslog_tx), ca_pem, webhook)
            .with_audit(audit),
    );
    seed_quotas(&state);
    {
        // Notes an earlier control stored with their records and did not write to the
        // audit log (it stopped between the two) are written before anything is served.
        let mut flows = state.flows.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        sluice_control::notes::drain_all(&state, &mut **flows);
    }
    if let Some(a) = active {
        a.watch(std::time::Duration::from_secs(2), || {
            tracing::error!(
                "the shared store's lock is lost (its connection failed): stopping, since another control may be active now"
            );
            std::process::exit(1);
        });
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .with_context(|| format!("binding {}", cfg.listen))?;
        if let (Some(sc), Some(rx)) = (cfg.syslog.clone(), syslog_rx) {
            tokio::spawn(syslog::export(sc, rx));
        }
        let st = state.clone();
        let socket = cfg.socket();
        tokio::spawn(async move {
            if let Err(e) = link::serve(&socket, st).await {
                tracing::error!(socket = %socket.display(), "data-plane link stopped: {e}");
                std::process::exit(1);
            }
        });
        if let Some(addr) = cfg.link_listen {
            let st = state.clone();
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the link's address {addr}"))?;
            tokio::spawn(async move {
                if let Err(e) = link_tls::serve(listener, st).await {
                    tracing::error!(listen = %addr, "data-plane link (TLS) stopped: {e}");
                    std::process::exit(1);
                }
            });
        }
        if let Some(addr) = cfg.proxy.pac_listen {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the PAC address {addr}"))?;
            let (st, proxies) = (state.clone(), cfg.proxy.addresses.clone());
            tracing::info!(listen = %addr, "serving /proxy.pac and /wpad.dat");
            tokio::spawn(async move {
                if let Err(e) = sluice_control::pac::serve(listener, st, proxies).await {
                    tracing::error!(listen = %addr, "the PAC listener stopped: {e}");
                }
            });
        }
        tokio::spawn(housekeeping(state.clone(), cfg.retention));
        tokio::spawn(checkpointer::run(state.clone()));
        tokio::spawn(push_quotas(state.clone()));
        tokio::spawn(sync_recordings(state.clone()));
        if let Some(t) = webhook_task {
            tokio::spawn(t);
        }
        tracing::info!(listen = %cfg.listen, cert = %cert.display(), "sluice-control serving");
        tell_systemd(state.clone());
        serve::serve(listener, tls_cfg, api::router(state)).await?;
        Ok(())
    })
}

/// Takes the shared store's lock, waiting as a standby while another control holds it
/// (telling systemd it is up, and alive, meanwhile).
fn wait_active(url: &str) -> Result<sluice_control::pg::active::Active> {
    let cfg = sluice_control::pg::parse(url).context("store")?;
    let mut said = false;
    let active =
        sluice_control::pg::active::acquire(cfg, std::time::Duration::from_secs(2), || {
            if !said {
                tracing::info!(
                    "standby: another control is active on this store; waiting to take over"
                );
                let _ = sluice_sched::notify("READY=1\nSTATUS=standby: another control is active");
                said = true;
            }
            if sluice_sched::watchdog_every().is_some() {
                let _ = sluice_sched::notify("WATCHDOG=1");
            }
        })
        .context("taking the shared store's lock")?;
    active.fence_writes();
    tracing::info!("active: this control serves the shared store");
    let _ = sluice_sched::notify("STATUS=active");
    Ok(active)
}

/// `READY=1` to systemd once the API serves (a `Type=notify` unit), then `WATCHDOG=1` at half
/// its `WatchdogSec` for as long as the stores answer: a check that cannot take the rule and
/// record stores' locks within the interval (a hung store, a stuck runtime) sends nothing,
/// and systemd restarts the daemon.
fn tell_systemd(state: Arc<AppState>) {
    let say = |what: &str| {
        if let Err(e) = sluice_sched::notify(what) {
            tracing::warn!("telling systemd {what} failed: {e}");
        }
    };
    say("READY=1");
    let Some(every) = sluice_sched::watchdog_every() else { return };
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            let st = state.clone();
            let check = tokio::task::spawn_blocking(move || {
                let rules =
                    st.rules.lock().unwrap_or_else(PoisonError::into_inner).current().is_ok();
                let identities =
                    st.identities.lock().unwrap_or_else(PoisonError::into_inner).alive();
                let flows = st.flows.lock().unwrap_or_else(PoisonError::into_inner);
                rules && identities && flows.alive()
            });
            match tokio::time::timeout(every, check).await {
                Ok(Ok(true)) => say("WATCHDOG=1"),
                _ => tracing::warn!("the stores did not answer within {every:?}: no watchdog ping"),
            }
        }
    });
}

/// The fleet's quota counts, pushed to every data plane within a second of a change.
/// Seeds the fleet's quota counts from the day's stored records (before any data plane can
/// send more, so none is counted twice).
fn seed_quotas(st: &AppState) {
    let now = link::now_s();
    let day = sluice_rules::Window::Day.start(now);
    let rows = st.flows.lock().unwrap_or_else(PoisonError::into_inner).quota_records(day * 1000);
    match rows {
        Ok(rows) => {
            for (subject, ts_ms, tokens) in &rows {
                st.quotas.add(subject, *ts_ms, *tokens, now);
            }
            tracing::info!(records = rows.len(), "quota counts seeded from today's records");
        }
        Err(e) => tracing::error!("quota counts not seeded: {e}"),
    }
}

async fn push_quotas(state: Arc<AppState>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut sent = 0;
    loop {
        tick.tick().await;
        let g = state.quotas.generation.load(std::sync::atomic::Ordering::Relaxed);
        if g != sent {
            state.links.push_usage(&state.quotas.current(link::now_s()));
            sent = g;
        }
    }
}

/// The group commit of recordings' sealed bytes: what the last batches wrote reaches the disk
/// within [`sluice_control::sealed_files::SYNC_EVERY`] or so even when no batch follows.
async fn sync_recordings(state: Arc<AppState>) {
    let mut tick = tokio::time::interval(sluice_control::sealed_files::SYNC_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failures = 0u64;
    loop {
        tick.tick().await;
        let st = state.clone();
        let r = tokio::task::spawn_blocking(move || {
            st.flows.lock().unwrap_or_else(PoisonError::into_inner).sync_recordings()
        })
        .await;
        if let Ok(Err(e)) = r {
            // Logged at the first failures, then ever more rarely.
            failures += 1;
            if failures.is_power_of_two() {
                tracing::error!(failures, "syncing recordings to the disk: {e}");
            }
        }
    }
}

/// Every minute: records beyond the retention go; expired identities go (and the feed is
/// pushed again).
async fn housekeeping(state: Arc<AppState>, retention: sluice_control::config::Retention) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tick.tick().await;
        let st = state.clone();
        let r = tokio::task::spawn_blocking(move || {
            let cutoff =
                link::now_s().saturating_sub(retention.max_age_days.saturating_mul(86_400));
            let pruned = checkpointer::retain(&st, cutoff.saturating_mul(1000), retention.max_rows);
            let mut flows = st.flows.lock().unwrap_or_else(PoisonError::into_inner);
            let days = retention.recordings_max_age_days.saturating_mul(86_400);
            let rec_cutoff = link::now_s().saturating_sub(days).saturating_mul(1000);
            match flows.prune_recordings(rec_cutoff) {
                Ok(0) => {}
                Ok(n) => tracing::info!(recordings = n, "retention: old recordings deleted"),
                Err(e) => tracing::error!("retention of recordings: {e}"),
            }
            drop(flows);
            let mut ids = st.identities.lock().unwrap_or_else(PoisonError::into_inner);
            let expired = ids.expire(link::now_s());
            let all = ids.all();
            (pruned, expired, all)
        })
        .await;
        let Ok((pruned, expired, all)) = r else { continue };
        match pruned {
            Ok(0) => {}
            Ok(n) => tracing::info!(records = n, "retention: old records deleted"),
            Err(e) => tracing::error!("retention: {e}"),
        }
        if let (Ok(n), Ok(all)) = (expired, all)
            && n > 0
        {
            tracing::info!(entries = n, "identity feed: expired entries removed");
            state.links.push_identities(&all);
        }
    }
}
