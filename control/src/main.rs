//! `sluicectl`: the Sluice command line. Offline: rule files (`rules check|explain|diff|
//! detectors`), the enterprise CA (`ca init|check`), token hashes. Against the control API
//! (`SLUICE_URL`, `SLUICE_TOKEN`, `SLUICE_CA`): rule pushes, history, diff and rollback,
//! flow and request records, the live tail, the identity feed, status.

mod approvals_cli;
mod audit_cli;
mod evidence_cli;
mod fleet_cli;
mod identities_cli;
mod inventory_cli;
mod keys_cli;
mod remote;
mod rules_cli;
mod sessions_cli;
mod sluicectl_args;
mod usage_cli;

use std::path::Path;
use std::process::ExitCode;

use clap::Parser;
use sluice_rules::operation::Operation;
use sluice_rules::{
    AppSeen, Compiled, IdentityOverlay, Query, RulesError, detectors, diff::diff, load_file,
};
use sluicectl_args::*;

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

/// Runs a command against the API.
fn online(
    conn: &remote::Conn,
    f: impl FnOnce(&remote::Api) -> Result<(), remote::Fail>,
) -> ExitCode {
    offline(remote::Api::new(conn).and_then(|api| f(&api)))
}

fn offline(r: Result<(), remote::Fail>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(remote::Fail(m, code)) => {
            eprintln!("sluicectl: {m}");
            ExitCode::from(code)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let conn = cli.conn;
    let cmd = match cli.cmd {
        Cmd::Flows { filters, limit, all } => {
            return online(&conn, |a| remote::records(a, "flows", &filters, limit, all));
        }
        Cmd::Requests { filters, limit, all } => {
            return online(&conn, |a| remote::records(a, "requests", &filters, limit, all));
        }
        Cmd::Tail { filters, kind } => {
            return online(&conn, |a| remote::tail(a, &filters, kind.as_deref()));
        }
        Cmd::Identities(c) => {
            return online(&conn, |a| match &c {
                IdentCmd::Set { ip, user, groups, ttl } => {
                    identities_cli::set(a, ip, user, groups, *ttl)
                }
                IdentCmd::Rm { ip } => identities_cli::rm(a, ip),
                IdentCmd::List => identities_cli::list(a),
                IdentCmd::Load { file, replace } => identities_cli::load(a, file, *replace),
            });
        }
        Cmd::Keys(c) => {
            return online(&conn, |a| match &c {
                KeysCmd::Set { name, from_file } => keys_cli::set(a, name, from_file),
                KeysCmd::Rm { name } => keys_cli::rm(a, name),
                KeysCmd::List => keys_cli::list(a),
                KeysCmd::Issue { user, identity } => keys_cli::issue(a, user, identity.as_deref()),
                KeysCmd::Revoke { id } => keys_cli::revoke(a, id),
                KeysCmd::Salt => keys_cli::salts(a),
                KeysCmd::RotateSalt => keys_cli::rotate_salt(a),
            });
        }
        Cmd::Approvals(c) => {
            return online(&conn, |a| match &c {
                ApprovalsCmd::List { state } => approvals_cli::list(a, state),
                ApprovalsCmd::Show { id } => approvals_cli::show(a, id),
                ApprovalsCmd::Approve { id, for_ } => {
                    approvals_cli::decide(a, id, true, for_.as_deref(), None)
                }
                ApprovalsCmd::Deny { id, reason } => {
                    approvals_cli::decide(a, id, false, None, reason.as_deref())
                }
            });
        }
        Cmd::Sessions(SessionsCmd::Keygen { out }) => {
            return match sessions_cli::keygen(&out) {
                Ok(public) => {
                    println!("{public}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("sluicectl: {e}");
                    ExitCode::from(1)
                }
            };
        }
        Cmd::Sessions(SessionsCmd::Api(c)) => {
            return online(&conn, |a| match &c {
                SessionsApiCmd::List { since, identity, user } => {
                    sessions_cli::list(a, since, identity.as_deref(), user.as_deref())
                }
                SessionsApiCmd::Show { id, key } => sessions_cli::show(a, id, key),
                SessionsApiCmd::Thread { thread, key } => sessions_cli::thread(a, thread, key),
                SessionsApiCmd::Replay { id, key, rules } => {
                    sessions_cli::replay(a, id, key, rules)
                }
            });
        }
        Cmd::Usage { by, since } => return online(&conn, |a| usage_cli::usage(a, &by, &since)),
        Cmd::Audit(AuditCmd::Verify { bundle: Some(b), key, since, dataplane }) => {
            if since.is_some() || dataplane.is_some() {
                eprintln!("sluicectl: --since and --dataplane do not apply to a bundle");
                return ExitCode::from(2);
            }
            return offline(evidence_cli::audit_verify(&b, key.as_deref(), conn.json));
        }
        Cmd::Evidence(EvidenceCmd::Verify { bundle, key }) => {
            return offline(evidence_cli::verify(&bundle, key.as_deref(), conn.json));
        }
        Cmd::Evidence(EvidenceCmd::Export { since, until, out, recordings }) => {
            return online(&conn, |a| {
                evidence_cli::export(a, &since, until.as_deref(), recordings, &out)
            });
        }
        Cmd::Fleet(c) => return online(&conn, |a| fleet_cli::run(a, &c)),
        Cmd::Audit(c) => {
            return online(&conn, |a| match &c {
                AuditCmd::Key => audit_cli::key(a),
                AuditCmd::Verify { since, dataplane, key, .. } => {
                    audit_cli::verify(a, since.as_deref(), dataplane.as_deref(), key.as_deref())
                }
            });
        }
        Cmd::Inventory { app, unknown, since, host, discoveries } => {
            let ask = inventory_cli::Ask {
                app: app.as_deref(),
                unknown,
                since: since.as_deref(),
                host: host.as_deref(),
                discoveries,
            };
            return online(&conn, |a| inventory_cli::inventory(a, &ask));
        }
        Cmd::Status => return online(&conn, remote::status),
        Cmd::Ca(CaCmd::Get) => return online(&conn, remote::ca_get),
        Cmd::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "sluicectl",
                &mut std::io::stdout(),
            );
            return ExitCode::SUCCESS;
        }
        Cmd::Rules(RulesCmd::Push { file }) => {
            return online(&conn, |a| rules_cli::send(a, &file, true));
        }
        Cmd::Rules(RulesCmd::Validate { file }) => {
            return online(&conn, |a| rules_cli::send(a, &file, false));
        }
        Cmd::Rules(RulesCmd::Show) => return online(&conn, rules_cli::show),
        Cmd::Rules(RulesCmd::History) => return online(&conn, rules_cli::history),
        Cmd::Rules(RulesCmd::Rollback { version }) => {
            return online(&conn, |a| rules_cli::rollback(a, version));
        }
        Cmd::Rules(RulesCmd::Diff { old, new }) if !Path::new(&old).exists() => {
            let (Ok(from), to) = (old.parse::<i64>(), new.as_deref().map(str::parse::<i64>)) else {
                eprintln!("sluicectl: {old}: neither a rule file nor a version number");
                return ExitCode::from(2);
            };
            let to = match to {
                None => None,
                Some(Ok(t)) => Some(t),
                Some(Err(_)) => {
                    eprintln!("sluicectl: the second argument must be a version too");
                    return ExitCode::from(2);
                }
            };
            return online(&conn, |a| rules_cli::diff(a, from, to));
        }
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
        RulesCmd::Explain { file, src, sni, port, app, operation } => {
            let c = match load(&file) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let overlay = IdentityOverlay::default();
            let app = match app.as_deref() {
                None => AppSeen::Unseen,
                Some("unknown") => AppSeen::Request { app: None, hello: None },
                Some(name) => match c.policy.apps.id(name) {
                    Some(id) => AppSeen::Request { app: Some(id), hello: None },
                    None => {
                        eprintln!(
                            "sluicectl: no app `{name}` in the catalog (sluicectl rules apps)"
                        );
                        return ExitCode::from(2);
                    }
                },
            };
            let op = match operation.as_deref().map(|o| (o, Operation::parse(o))) {
                None => None,
                Some((_, Some(op))) => Some(op),
                Some((o, None)) => {
                    eprintln!("sluicectl: no operation `{o}` (sluicectl rules apps)");
                    return ExitCode::from(2);
                }
            };
            let q = Query { src, mac: None, sni: sni.as_deref(), port, now: 0, app, op };
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
                d.category.map_or("-", |c| &**c)
            );
            ExitCode::SUCCESS
        }
        RulesCmd::Diff { old, new } => {
            let Some(new) = new else {
                eprintln!("sluicectl: rules diff OLD NEW (two files), or versions on the server");
                return ExitCode::from(2);
            };
            let (a, b) = match (load(Path::new(&old)), load(Path::new(&new))) {
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
        RulesCmd::Push { .. }
        | RulesCmd::Validate { .. }
        | RulesCmd::Show
        | RulesCmd::History
        | RulesCmd::Rollback { .. } => unreachable!("handled online above"),
        RulesCmd::Detectors => {
            for d in detectors::DETECTORS {
                println!("{:<28} {:<11} {}", d.name, d.family, d.description);
            }
            ExitCode::SUCCESS
        }
        RulesCmd::Apps => {
            let catalog = sluice_rules::apps::shipped();
            println!("app catalog {}", catalog.version);
            for a in catalog.apps() {
                let on =
                    a.runs_on.map(|s| format!("on {}", catalog.name(Some(s)))).unwrap_or_default();
                println!(
                    "{:<18} {:<8} {:<12} {}",
                    a.name,
                    format!("{:?}", a.kind).to_lowercase(),
                    on,
                    a.title
                );
            }
            println!("{:<18} clients the catalog does not know", "unknown");
            let ops: Vec<_> = Operation::ALL.iter().map(|o| o.as_str()).collect();
            println!("operations: {}", ops.join(", "));
            ExitCode::SUCCESS
        }
    }
}
