//! `sluicectl`: the Sluice command line. Offline: rule files (`rules check|explain|diff|
//! detectors`), the enterprise CA (`ca init|check`), token hashes. Against the control API
//! (`SLUICE_URL`, `SLUICE_TOKEN`, `SLUICE_CA`): rule pushes, history, diff and rollback,
//! flow and request records, the live tail, the identity feed, status.

mod approvals_cli;
mod audit_cli;
mod evidence_cli;
mod fleet_cli;
mod inventory_cli;
mod keys_cli;
mod remote;
mod sessions_cli;
mod usage_cli;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sluice_rules::operation::Operation;
use sluice_rules::{
    AppSeen, Compiled, IdentityOverlay, Query, RulesError, detectors, diff::diff, load_file,
};

#[derive(Parser)]
#[command(name = "sluicectl", version, about = "Operate a Sluice appliance")]
struct Cli {
    #[command(flatten)]
    conn: remote::Conn,
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
    /// Flow records, newest first.
    Flows {
        #[command(flatten)]
        filters: remote::Filters,
        /// Records per page.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Every page, not only the first.
        #[arg(long)]
        all: bool,
    },
    /// Request records of the interception engine, newest first.
    Requests {
        #[command(flatten)]
        filters: remote::Filters,
        /// Records per page.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Every page, not only the first.
        #[arg(long)]
        all: bool,
    },
    /// Follow new flow and request records as they are stored.
    Tail {
        #[command(flatten)]
        filters: remote::Filters,
        /// Only `flow`, `request` or `discovery` records.
        #[arg(long = "type", value_parser = ["flow", "request", "discovery"])]
        kind: Option<String>,
    },
    /// The identity feed.
    #[command(subcommand)]
    Identities(IdentCmd),
    /// Requests and tokens used, as the model's responses said.
    Usage {
        /// Counted per `identity`, `user`, `sni`, `model` or `virtual_key`.
        #[arg(long, default_value = "identity", value_parser = ["identity", "user", "sni", "model", "virtual_key"])]
        by: String,
        /// Since (unix ms, or a duration: 15m, 24h, 7d).
        #[arg(long, default_value = "24h")]
        since: String,
    },
    /// The AI clients seen per host, identity, user, app and version (the inventory), or
    /// the discoveries of new ones.
    Inventory {
        /// Only this app (`sluicectl rules apps`).
        #[arg(long, conflicts_with = "unknown")]
        app: Option<String>,
        /// Only clients the catalog does not know.
        #[arg(long)]
        unknown: bool,
        /// Seen since (unix ms, or a duration: 15m, 24h, 7d).
        #[arg(long)]
        since: Option<String>,
        /// Only this client address.
        #[arg(long)]
        host: Option<String>,
        /// The discovery events (a host's first sight of an app or unknown client) instead.
        #[arg(long, conflicts_with_all = ["app", "unknown", "host"])]
        discoveries: bool,
    },
    /// Brokered provider keys and virtual keys (admin).
    #[command(subcommand)]
    Keys(KeysCmd),
    /// Requests held for a reviewer's approval (approver or admin).
    #[command(subcommand)]
    Approvals(ApprovalsCmd),
    /// Recorded exchanges (rules with `record`), decrypted with your age key.
    #[command(subcommand)]
    Sessions(SessionsCmd),
    /// Evidence: the checkpoint signing key, and verification of the record chains.
    #[command(subcommand)]
    Audit(AuditCmd),
    /// The fleet: the CA of the data planes' link over TCP, enrolment, revocation (admin).
    #[command(subcommand)]
    Fleet(fleet_cli::FleetCmd),
    /// Evidence bundles: export a window's records, chains, checkpoints, rule versions and
    /// summary; verify a bundle offline.
    #[command(subcommand)]
    Evidence(EvidenceCmd),
    /// Data planes, their link and policy versions, store sizes.
    Status,
    /// Print shell completions.
    Completions {
        /// Shell.
        shell: clap_complete::Shell,
    },
}

#[derive(Subcommand)]
enum AuditCmd {
    /// The Ed25519 public key checkpoints are signed with (pin it).
    Key,
    /// Walk every record chain against the signed checkpoints; exit 1 on any change, removal,
    /// insertion, reordering, gap or forged checkpoint.
    Verify {
        /// Start at the last checkpoint signed by then (unix ms, or a duration: 24h, 7d).
        #[arg(long)]
        since: Option<String>,
        /// Only this data plane's chains (control's own is always verified).
        #[arg(long)]
        dataplane: Option<String>,
        /// The public key you pinned (hex): fail if the daemon verified with another.
        #[arg(long)]
        key: Option<String>,
        /// Verify the chains of an evidence bundle offline instead (no daemon needed).
        #[arg(long)]
        bundle: Option<String>,
    },
}

#[derive(Subcommand)]
enum EvidenceCmd {
    /// Write the evidence bundle of a window (admin or auditor).
    Export {
        /// Start: a UTC date (2026-10-01), date and time (2026-10-01T00:00:00Z), unix ms or a
        /// duration back from now (30d).
        #[arg(long)]
        since: String,
        /// End (exclusive; default now), in the same forms: `--since 2026-10-01 --until
        /// 2026-11-01` is October.
        #[arg(long)]
        until: Option<String>,
        /// Where to write the bundle (tar.zst).
        #[arg(long)]
        out: String,
        /// Include the window's session recordings (they stay sealed to the customer's key;
        /// without this flag the bundle holds no prompt text).
        #[arg(long)]
        recordings: bool,
    },
    /// Check a bundle offline: its signed manifest, every file's hash, every chain against
    /// its checkpoints, the records and the summary. Exit 1 on anything found.
    Verify {
        /// The bundle.
        bundle: String,
        /// The public key you pinned (hex, `sluicectl audit key`): required, or anyone could
        /// re-sign a changed bundle.
        #[arg(long)]
        key: Option<String>,
    },
}

#[derive(Subcommand)]
enum IdentCmd {
    /// Say who sits behind an address.
    Set {
        /// The address.
        ip: String,
        /// User name.
        user: String,
        /// A group (repeat for more); a group naming an identity places the address in it.
        #[arg(long = "group")]
        groups: Vec<String>,
        /// Seconds the entry holds (default: until removed).
        #[arg(long)]
        ttl: Option<u64>,
    },
    /// Forget an address.
    Rm {
        /// The address.
        ip: String,
    },
    /// List the feed.
    List,
    /// Set many entries from a file (JSON array or JSON lines of {ip, user, groups, ttl}).
    Load {
        /// The file.
        file: PathBuf,
        /// Replace the whole feed.
        #[arg(long)]
        replace: bool,
    },
}

#[derive(Subcommand)]
enum KeysCmd {
    /// Store or replace a provider key (rules send it with `broker_key = "NAME"`).
    Set {
        /// Its name.
        name: String,
        /// A file holding the key (never the command line).
        #[arg(long)]
        from_file: PathBuf,
    },
    /// Remove a provider key.
    Rm {
        /// Its name.
        name: String,
    },
    /// List provider keys (names and fingerprints) and virtual keys.
    List,
    /// Issue a virtual key for a user: printed once.
    Issue {
        /// The user it names in request records.
        #[arg(long)]
        user: String,
        /// The only identity it may be used from.
        #[arg(long)]
        identity: Option<String>,
    },
    /// Revoke a virtual key.
    Revoke {
        /// Its id (`vk_…`).
        id: String,
    },
    /// List the DLP salts by id (the one in force first; never a salt).
    Salt,
    /// Rotate the DLP salt: findings from now on hash under a new salt, the old one is
    /// destroyed (its hashes match nothing any more).
    RotateSalt,
}

#[derive(Subcommand)]
enum SessionsCmd {
    /// Make an age key pair: the private key to FILE (mode 0600), the public key printed (put
    /// it in `[defaults] recording_recipients`). Keep the file away from the appliance.
    Keygen {
        /// Where to write the private key.
        out: PathBuf,
    },
    /// The subcommands that read the control API.
    #[command(flatten)]
    Api(SessionsApiCmd),
}

#[derive(Subcommand)]
enum SessionsApiCmd {
    /// List recordings.
    List {
        /// Since (unix ms, or a duration: 15m, 24h, 7d).
        #[arg(long, default_value = "24h")]
        since: String,
        /// Only this identity's.
        #[arg(long)]
        identity: Option<String>,
        /// Only this user's.
        #[arg(long)]
        user: Option<String>,
    },
    /// Decrypt and print one recorded exchange.
    Show {
        /// Its id (`rec_…`).
        id: String,
        /// The age private key file it was sealed to (age-keygen's output).
        #[arg(long = "identity")]
        key: PathBuf,
    },
    /// Decrypt and print a conversation's exchanges in order.
    Thread {
        /// The thread as listed, a ChatGPT conversation id, or a response id of its chain.
        thread: String,
        /// The age private key file.
        #[arg(long = "identity")]
        key: PathBuf,
    },
    /// Run a recorded request through a candidate rule file offline: what would it do?
    Replay {
        /// Its id.
        id: String,
        /// The age private key file.
        #[arg(long = "identity")]
        key: PathBuf,
        /// The candidate rule file.
        #[arg(long)]
        rules: PathBuf,
    },
}

#[derive(Subcommand)]
enum ApprovalsCmd {
    /// List held requests.
    List {
        /// `pending`, `approved`, `denied`, `timeout`, `gone`, `abandoned` or `all`.
        #[arg(long, default_value = "pending")]
        state: String,
    },
    /// Show one (with its prompt while it waits, when the rule lets reviewers read it).
    Show {
        /// Its id (`apr_…`).
        id: String,
    },
    /// Approve: the request goes on.
    Approve {
        /// Its id.
        id: String,
        /// Also approve the same user's requests to the same destination for this long
        /// (30, 30m, 2h).
        #[arg(long = "for")]
        for_: Option<String>,
    },
    /// Deny: the client gets 403 with the reason.
    Deny {
        /// Its id.
        id: String,
        /// Why (shown to the client).
        #[arg(long)]
        reason: Option<String>,
    },
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
    /// Print the enterprise CA certificate the control API serves (to install on clients).
    Get,
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
        /// The client's app (`unknown` for none), as its requests show it (without it, as
        /// before the hello: rules naming apps decide per request).
        #[arg(long)]
        app: Option<String>,
        /// The request's operation (`chat`, `upload`, …; without it, a flow).
        #[arg(long)]
        operation: Option<String>,
    },
    /// Show what changed, as JSON: between two rule files, or between two stored versions
    /// on the server (`rules diff 3 5`; one version: against the current one).
    Diff {
        /// Old rule file, or version.
        old: String,
        /// New rule file, or version.
        new: Option<String>,
    },
    /// Validate, store and push a rule file through the control API.
    Push {
        /// Rule file.
        file: PathBuf,
    },
    /// Validate a rule file on the server (nothing is stored).
    Validate {
        /// Rule file.
        file: PathBuf,
    },
    /// Print the current rule set.
    Show,
    /// List the stored versions.
    History,
    /// Make an old version current again (stored as a new version) and push it.
    Rollback {
        /// The version.
        version: i64,
    },
    /// List the DLP detectors profiles may name.
    Detectors,
    /// List the app catalog rules may name in `apps`, and the operations.
    Apps,
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
                    remote::identity_set(a, ip, user, groups, *ttl)
                }
                IdentCmd::Rm { ip } => remote::identity_rm(a, ip),
                IdentCmd::List => remote::identity_list(a),
                IdentCmd::Load { file, replace } => remote::identity_load(a, file, *replace),
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
            return online(&conn, |a| remote::rules_send(a, &file, true));
        }
        Cmd::Rules(RulesCmd::Validate { file }) => {
            return online(&conn, |a| remote::rules_send(a, &file, false));
        }
        Cmd::Rules(RulesCmd::Show) => return online(&conn, remote::rules_show),
        Cmd::Rules(RulesCmd::History) => return online(&conn, remote::rules_history),
        Cmd::Rules(RulesCmd::Rollback { version }) => {
            return online(&conn, |a| remote::rules_rollback(a, version));
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
            return online(&conn, |a| remote::rules_diff(a, from, to));
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
