//! `sluicectl`: the Sluice command line. Today it works offline: rule files
//! (`rules check|explain|diff|detectors`) and the enterprise CA (`ca init|check`).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sluice_rules::{
    Compiled, IdentityOverlay, Query, RulesError, detectors, diff::diff, load_file,
};

#[derive(Parser)]
#[command(name = "sluicectl", version, about = "Operate a Sluice appliance")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Work with rule files.
    #[command(subcommand)]
    Rules(RulesCmd),
    /// The enterprise CA.
    #[command(subcommand)]
    Ca(CaCmd),
    /// API tokens.
    #[command(subcommand)]
    Token(TokenCmd),
}

#[derive(Subcommand)]
enum TokenCmd {
    /// Print the SHA-256 a control configuration stores for a token read from standard input
    /// (the token itself never goes into the configuration).
    Hash,
}

#[derive(Subcommand)]
enum CaCmd {
    /// Generate a CA for labs and first deployments (ECDSA P-256, CA:true pathlen 0,
    /// keyCertSign, 10 years): DIR/ca.crt and DIR/ca.key (mode 0600).
    Init {
        /// Directory to write into.
        dir: PathBuf,
        /// Common name of the CA.
        #[arg(long, default_value = "Sluice Enterprise CA")]
        name: String,
    },
    /// Load a CA certificate and key as the appliance would, and say what is wrong if anything.
    Check {
        /// CA certificate (PEM).
        cert: PathBuf,
        /// CA private key (PEM).
        key: PathBuf,
    },
}

#[derive(Subcommand)]
enum RulesCmd {
    /// Validate a rule file offline: prints `file:line:col: message` lines, exit 1 on errors.
    Check {
        /// Rule file.
        file: PathBuf,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Say, rule by rule, how a flow would be decided.
    Explain {
        /// Rule file.
        file: PathBuf,
        /// Source IP of the flow.
        #[arg(long)]
        src: IpAddr,
        /// Server name (SNI).
        #[arg(long)]
        sni: Option<String>,
        /// Destination port.
        #[arg(long, default_value_t = 443)]
        port: u16,
    },
    /// Show what changed between two rule files, as JSON.
    Diff {
        /// Old rule file.
        old: PathBuf,
        /// New rule file.
        new: PathBuf,
    },
    /// List the DLP detectors profiles may name.
    Detectors,
}

fn load(path: &Path) -> Result<Compiled, ExitCode> {
    match load_file(path) {
        Ok(c) => {
            for w in &c.warnings {
                eprintln!("{w}");
            }
            Ok(c)
        }
        Err(e @ RulesError::Io { .. }) => {
            eprintln!("sluicectl: {e}");
            Err(ExitCode::from(2))
        }
        Err(RulesError::Invalid(diags)) => {
            for d in &diags {
                println!("{d}");
            }
            Err(ExitCode::from(1))
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let cmd = match cli.cmd {
        Cmd::Rules(cmd) => cmd,
        Cmd::Token(TokenCmd::Hash) => {
            let mut token = String::new();
            if std::io::stdin().read_line(&mut token).is_err() || token.trim().is_empty() {
                eprintln!("sluicectl: give the token on standard input");
                return ExitCode::from(2);
            }
            println!("{}", sluice_control::auth::token_hash(token.trim()));
            return ExitCode::SUCCESS;
        }
        Cmd::Ca(CaCmd::Init { dir, name }) => {
            return match sluice_certs::EnterpriseCa::init(&dir, &name) {
                Ok((cert, key)) => {
                    println!(
                        "wrote {} and {} (keep the key private)",
                        cert.display(),
                        key.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("sluicectl: {e}");
                    ExitCode::from(1)
                }
            };
        }
        Cmd::Ca(CaCmd::Check { cert, key }) => {
            return match sluice_certs::EnterpriseCa::load(&cert, &key) {
                Ok(ca) => {
                    let days = ca
                        .not_after()
                        .duration_since(std::time::SystemTime::now())
                        .map_or(0, |d| d.as_secs() / 86_400);
                    println!("{}: ok (CA valid for {days} more days)", cert.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("sluicectl: {e}");
                    ExitCode::from(1)
                }
            };
        }
    };
    match cmd {
        RulesCmd::Check { file, json } => {
            if json {
                let out = match load_file(&file) {
                    Ok(c) => {
                        serde_json::json!({"ok": true, "warnings": c.warnings, "rules": c.policy.rules.len()})
                    }
                    Err(RulesError::Invalid(d)) => {
                        serde_json::json!({"ok": false, "diagnostics": d})
                    }
                    Err(e) => serde_json::json!({"ok": false, "error": e.to_string()}),
                };
                println!("{out}");
                return if out["ok"] == true { ExitCode::SUCCESS } else { ExitCode::from(1) };
            }
            match load(&file) {
                Ok(c) => {
                    println!(
                        "{}: ok ({} rules, {} categories, {} domains, {} identities, {} warnings)",
                        file.display(),
                        c.policy.rules.len(),
                        c.policy.categories.len(),
                        c.policy.domain_count(),
                        c.policy.identities.len(),
                        c.warnings.len()
                    );
                    ExitCode::SUCCESS
                }
                Err(code) => code,
            }
        }
        RulesCmd::Explain { file, src, sni, port } => {
            let c = match load(&file) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let overlay = IdentityOverlay::default();
            let q = Query { src, mac: None, sni: sni.as_deref(), port, now: 0 };
            for e in c.policy.explain(&q, &overlay) {
                let mark = if e.decided {
                    "=>"
                } else if e.matched {
                    " +"
                } else {
                    " -"
                };
                println!("{mark} {}", e.rule);
                for r in e.reasons {
                    println!("     {r}");
                }
            }
            let d = c.policy.decide(&q, &overlay);
            println!(
                "decision: {} (rule {}, identity {}, category {})",
                d.action.as_str(),
                d.rule_name(),
                d.identity,
                d.category.unwrap_or("-")
            );
            ExitCode::SUCCESS
        }
        RulesCmd::Diff { old, new } => {
            let (a, b) = match (load(&old), load(&new)) {
                (Ok(a), Ok(b)) => (a, b),
                (Err(code), _) | (_, Err(code)) => return code,
            };
            match serde_json::to_string_pretty(&diff(&a.policy, &b.policy)) {
                Ok(s) => println!("{s}"),
                Err(e) => {
                    eprintln!("sluicectl: {e}");
                    return ExitCode::from(2);
                }
            }
            ExitCode::SUCCESS
        }
        RulesCmd::Detectors => {
            for d in detectors::DETECTORS {
                println!("{:<28} {:<11} {}", d.name, d.family, d.description);
            }
            ExitCode::SUCCESS
        }
    }
}
