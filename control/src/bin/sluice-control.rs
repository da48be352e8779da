//! `sluice-control --config FILE`: the control-plane daemon (HTTPS API over rustls, bearer
//! tokens with roles, rule-set versions and audit log, flow queries).

use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Parser;
use sluice_control::api::{self, AppState};
use sluice_control::auth::Tokens;
use sluice_control::config::Config;
use sluice_control::rulestore::RuleStore;
use sluice_control::store::FlowStore;
use sluice_control::tls;

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
    let state = Arc::new(AppState {
        tokens: Tokens::new(&cfg.tokens),
        rules: Mutex::new(
            RuleStore::open(&cfg.state_dir.join("rules.db")).context("opening the rule store")?,
        ),
        flows: Mutex::new(
            FlowStore::open(&cfg.state_dir.join("flows.db")).context("opening the flow store")?,
        ),
        ca_pem,
        started: Instant::now(),
    });
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .with_context(|| format!("binding {}", cfg.listen))?;
        tracing::info!(listen = %cfg.listen, cert = %cert.display(), "sluice-control serving");
        api::serve(listener, tls_cfg, api::router(state)).await?;
        Ok(())
    })
}
