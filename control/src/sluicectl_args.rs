//! `sluicectl`'s command-line grammar (clap): every command, subcommand and flag, with the
//! help text users read. `main.rs` dispatches them.

use std::net::IpAddr;
use std::path::PathBuf;

use crate::{fleet_cli, remote};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "sluicectl", version, about = "Operate a Sluice appliance")]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) conn: remote::Conn,
    #[command(subcommand)]
    pub(crate) cmd: Cmd,
}

#[derive(Subcommand)]
pub(crate) enum Cmd {
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
pub(crate) enum AuditCmd {
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
pub(crate) enum EvidenceCmd {
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
pub(crate) enum IdentCmd {
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
pub(crate) enum KeysCmd {
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
pub(crate) enum SessionsCmd {
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
pub(crate) enum SessionsApiCmd {
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
pub(crate) enum ApprovalsCmd {
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
pub(crate) enum TokenCmd {
    /// Print the SHA-256 a control configuration stores for a token read from standard input
    /// (the token itself never goes into the configuration).
    Hash,
}

#[derive(Subcommand)]
pub(crate) enum CaCmd {
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
pub(crate) enum RulesCmd {
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
