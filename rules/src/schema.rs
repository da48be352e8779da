//! The rule-file schema as it is written (TOML), with source spans kept on every value a
//! diagnostic may point at. See `rules/default.toml` for a commented example.

use serde::{Deserialize, Serialize};
use toml::Spanned;

/// What a rule (or the default) does with a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Let the flow pass untouched (no decryption).
    Allow,
    /// Refuse the flow (TCP reset at the ClientHello; a block response once intercepted).
    Block,
    /// Re-terminate TLS and inspect the requests with the rule's DLP profile.
    Inspect,
}

impl Action {
    /// Lowercase name as written in rule files and records.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Block => "block",
            Action::Inspect => "inspect",
        }
    }
}

/// What a rule does, as written: a flow [`Action`], or `hold` (inspect, and every request
/// waits for a reviewer's approval).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleAction {
    /// [`Action::Allow`].
    Allow,
    /// [`Action::Block`].
    Block,
    /// [`Action::Inspect`].
    Inspect,
    /// Inspected, and each request held until a reviewer approves it (or the wait ends).
    Hold,
}

impl RuleAction {
    /// What happens to the flow (a held rule's flows are inspected).
    pub fn flow(self) -> Action {
        match self {
            RuleAction::Allow => Action::Allow,
            RuleAction::Block => Action::Block,
            RuleAction::Inspect | RuleAction::Hold => Action::Inspect,
        }
    }
}

/// What to do when inspection cannot happen (client refuses our certificate, invalid upstream
/// certificate, body too large to scan).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FailMode {
    /// Fail closed: refuse the request or flow.
    Block,
    /// Fail open: pass it on uninspected (recorded as such).
    Allow,
}

/// Policy for TCP flows first seen mid-stream (e.g. after a restart of the data plane).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MidstreamPolicy {
    /// Let them continue (recorded with verdict `midstream`).
    Allow,
    /// Reset them, so clients reconnect and are classified.
    Block,
}

/// Policy for QUIC Initials whose SNI cannot be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum QuicPolicy {
    /// Pass them.
    Allow,
    /// Refuse them: the client falls back to TCP, where the ClientHello is read.
    Drop,
    /// Refuse them from sources some `inspect` or `block` rule applies to, pass the others
    /// (the default: an unreadable Initial must not carry a restricted source past its rules).
    Restricted,
}

/// How the data plane refuses a QUIC flow (a blocked or inspected name, an unreadable
/// Initial it refuses).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum QuicRefusal {
    /// An ICMP (ICMPv6) port-unreachable to the client, which falls back to TCP at once
    /// (the default).
    Unreachable,
    /// A silent drop: the client falls back when its QUIC handshake times out.
    Drop,
}

/// What the data plane does with IP fragments from the inside (a TCP segment or UDP datagram
/// cut into fragments hides its ports and ClientHello from a reader of single packets).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FragmentPolicy {
    /// Reassemble them (bounded), classify the whole, forward the fragments as they came.
    Reassemble,
    /// Drop them, unless they belong to a flow already allowed (fail closed).
    Block,
}

/// What the data plane does with a ClientHello whose real server name is hidden by Encrypted
/// ClientHello (ECH). GREASE ECH, which Chrome sends everywhere, is not this: it is told apart
/// by the outer name (a known ECH public name, or not the name the destination was learned for).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EchPolicy {
    /// Pass it (recorded).
    Allow,
    /// Refuse it: the client retries without ECH or fails.
    Block,
    /// Refuse it from sources some `inspect` or `block` rule applies to, pass it for others
    /// (the default).
    Restricted,
}

/// What the data plane does with the `ech` parameter of HTTPS and SVCB records in DNS answers
/// for names in a category.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DnsEchPolicy {
    /// Hide it, so that clients never try ECH for those names and their ClientHellos show the
    /// real name (the default).
    Strip,
    /// Leave the answers as they are.
    Pass,
}

/// What the data plane answers to Firefox's DNS-over-HTTPS canary (`use-application-dns.net`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CanaryPolicy {
    /// Answer NXDOMAIN itself: Firefox then keeps DoH off, and its lookups stay readable.
    Nxdomain,
    /// Let the query through to the resolver (the default).
    Pass,
}

/// Which TLS flows are diverted to the interception engine at their SYN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DivertMode {
    /// Every flow to a TLS port from an identity that some inspect rule could apply to.
    All,
    /// Only flows to destinations learned from DNS answers and earlier ClientHellos.
    Learned,
}

/// What a DLP profile does with a finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DlpAction {
    /// Refuse the request.
    Block,
    /// Replace each finding with `[REDACTED:<detector>]` and forward.
    Redact,
    /// Forward and record the finding.
    Alert,
    /// Hold the request until a reviewer approves it (the rule's `approval_*` settings);
    /// denied or unanswered, it is refused.
    Approve,
}

/// `[defaults]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DefaultsDef {
    /// Action for traffic no rule matches: `allow` or `block`.
    pub action: Option<Spanned<Action>>,
    /// Name given to sources that match no identity (default `unknown`); rules may name it.
    pub unknown_identity: Option<Spanned<String>>,
    /// `block` (default) or `allow` when inspection cannot happen.
    pub on_inspect_failure: Option<FailMode>,
    /// Largest request body buffered for inspection, in bytes (default 8 MiB).
    pub max_inspect_bytes: Option<Spanned<u64>>,
    /// Flows first seen mid-stream: `allow` (default) or `block`.
    pub midstream: Option<MidstreamPolicy>,
    /// QUIC Initials whose SNI cannot be read: `restricted` (default), `allow` or `drop`.
    pub quic_unreadable: Option<QuicPolicy>,
    /// How refused QUIC flows are told: `unreachable` (default) or `drop`.
    pub quic_refusal: Option<QuicRefusal>,
    /// IP fragments from the inside: `reassemble` (default) or `block`.
    pub ip_fragments: Option<FragmentPolicy>,
    /// ClientHellos whose server name ECH hides: `restricted` (default), `block` or `allow`.
    pub ech: Option<EchPolicy>,
    /// Firefox's DoH canary: `pass` (default) or `nxdomain`.
    pub doh_canary: Option<CanaryPolicy>,
    /// The `ech` parameter of HTTPS/SVCB answers for categorised names: `strip` (default) or
    /// `pass`.
    pub dns_ech: Option<DnsEchPolicy>,
    /// `learned` (default) or `all`.
    pub divert: Option<DivertMode>,
    /// TCP ports carrying TLS (default `[443]`); QUIC is read on UDP 443.
    pub tls_ports: Option<Spanned<Vec<Spanned<u16>>>>,
    /// The age X25519 public keys (`age1…`) recordings are encrypted to (rules with
    /// `record`); only the holders of the matching private keys can read them.
    #[serde(default)]
    pub recording_recipients: Vec<Spanned<String>>,
}

/// `[[identity]]`: a named set of sources.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityDef {
    /// Identity name, referenced by rules.
    pub name: Spanned<String>,
    /// IPv4 and IPv6 networks.
    #[serde(default)]
    pub cidrs: Vec<Spanned<String>>,
    /// MAC addresses.
    #[serde(default)]
    pub macs: Vec<Spanned<String>>,
    /// Free text for people reading the file.
    pub description: Option<String>,
}

/// `[[category]]`: a named list of domains.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CategoryDef {
    /// Category name, referenced by rules.
    pub name: Spanned<String>,
    /// Catalogs (`openai-api`, …) or catalog files (`./extra.toml`) whose domains join this list.
    #[serde(default)]
    pub include: Vec<Spanned<String>>,
    /// Domain patterns: exact names or `*.suffix`.
    #[serde(default)]
    pub domains: Vec<Spanned<String>>,
    /// Free text for people reading the file.
    pub description: Option<String>,
}

/// `[[dlp]]`: a DLP profile.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DlpDef {
    /// Profile name, referenced by inspect rules.
    pub name: Spanned<String>,
    /// Detector names from the registry (see `sluicectl rules detectors`), custom detector
    /// names, or families: `@credential`, `@financial`, `@pii`, `@custom` (every custom one).
    pub detectors: Spanned<Vec<Spanned<String>>>,
    /// Names or families taken out of `detectors` (`@credential` but not `generic_secret`).
    #[serde(default)]
    pub exclude: Vec<Spanned<String>>,
    /// `block`, `redact` or `alert`.
    pub action: DlpAction,
}

/// `files`: images and video in requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FilePolicy {
    /// Forwarded, recorded as unscanned.
    Allow,
    /// Refused (403 `file_not_allowed`).
    Block,
}

/// `missing_org_project`: a request that does not name its organization or project.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MissingOrgProject {
    /// Refused (403 `organization_required` / `project_required`).
    Refuse,
    /// The first allowed value is sent.
    Inject,
}

/// `real_keys`: a real provider key presented where a key is brokered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RealKeys {
    /// Refused (403 `real_key_refused`).
    Refuse,
    /// Replaced by the brokered key like any other credential.
    Swap,
}

/// `on_unscanned`: a request DLP could not read entirely.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Unscanned {
    /// Forward it; the record names what was not scanned and why.
    Allow,
    /// Refuse it (403 `unscanned_content`).
    Block,
}

/// `[[rule]]`: matched first to last; the first match decides.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleDef {
    /// Unique rule name, shown in records and block pages.
    pub name: Spanned<String>,
    /// Identities the rule applies to (empty with no groups: every source).
    #[serde(default)]
    pub identities: Vec<Spanned<String>>,
    /// Groups from the identity feed the rule applies to.
    #[serde(default)]
    pub groups: Vec<Spanned<String>>,
    /// Categories the rule applies to (empty: every destination).
    #[serde(default)]
    pub categories: Vec<Spanned<String>>,
    /// Destination ports (empty: every port).
    #[serde(default)]
    pub ports: Vec<Spanned<u16>>,
    /// Apps of the catalog (`rules/apps/`, `sluicectl rules apps`) the rule applies to, and
    /// `unknown` for clients the catalog does not know (empty: every client).
    #[serde(default)]
    pub apps: Vec<Spanned<String>>,
    /// One app, as `apps = [...]` with one entry (`app = "unknown"`).
    pub app: Option<Spanned<String>>,
    /// Operations the rule applies to (`chat`, `upload`, …; empty: every request). A rule
    /// with operations decides requests, so its flows are inspected.
    #[serde(default)]
    pub operations: Vec<Spanned<String>>,
    /// `allow`, `block`, `inspect` or `hold`.
    pub action: Spanned<RuleAction>,
    /// DLP profile for `inspect`.
    pub dlp: Option<Spanned<String>>,
    /// A request DLP could not read entirely (binary parts, undecodable bodies): `allow`
    /// forwards it, the record naming what was not scanned and why; `block` refuses it.
    /// Default: `block` when the rule's DLP profile blocks, `allow` otherwise.
    pub on_unscanned: Option<Spanned<Unscanned>>,
    /// Workspace UUIDs sent as `ChatGPT-Allowed-Workspace-Id` on ChatGPT hosts.
    #[serde(default)]
    pub chatgpt_workspaces: Vec<Spanned<String>>,
    /// Organization ids sent as `OpenAI-Allowed-Organization-Ids` on api.openai.com.
    #[serde(default)]
    pub openai_allowed_orgs: Vec<Spanned<String>>,
    /// ChatGPT accounts allowed (`chatgpt-account-id`; empty: any): a conversation, upload or
    /// other use of an account must name one of these (a personal account is refused).
    #[serde(default)]
    pub chatgpt_accounts: Vec<Spanned<String>>,
    /// Allowed values of the `OpenAI-Organization` request header (empty: any).
    #[serde(default)]
    pub allowed_organizations: Vec<Spanned<String>>,
    /// Allowed values of the `OpenAI-Project` request header (empty: any).
    #[serde(default)]
    pub allowed_projects: Vec<Spanned<String>>,
    /// A request without the `OpenAI-Organization` (`OpenAI-Project`) header where an
    /// allow-list is set: `refuse` it (the key's default organization could be any), or
    /// `inject` the first allowed value. Default: `refuse`.
    pub missing_org_project: Option<Spanned<MissingOrgProject>>,
    /// Allowed `model` values in request bodies (empty: any).
    #[serde(default)]
    pub allowed_models: Vec<Spanned<String>>,
    /// Replace sensitive data in the model's responses (JSON, server-sent events, WebSocket
    /// messages): credentials, and the detectors of the rule's DLP profile.
    pub mask_responses: Option<Spanned<bool>>,
    /// The DLP profile whose detectors response masking replaces (with credentials), instead
    /// of the rule's own; implies `mask_responses = true`.
    pub mask_profile: Option<Spanned<String>>,
    /// Images and video in requests (which carry no text DLP reads): `allow` (the default)
    /// or `block`. Audio follows `block_audio`; other content DLP cannot read, `on_unscanned`.
    pub files: Option<Spanned<FilePolicy>>,
    /// Largest image or video allowed in a request, in bytes (larger ones are refused).
    pub max_file_bytes: Option<Spanned<u64>>,
    /// Refuse ChatGPT used signed out (`/backend-anon/…`): nobody's account, no workspace
    /// control.
    pub block_chatgpt_anonymous: Option<Spanned<bool>>,
    /// Refuse audio: streamed over WebSocket (binary messages, Realtime
    /// `input_audio_buffer.append`: the socket is closed with 1008), `input_audio` in
    /// requests, and audio files uploaded for transcription.
    pub block_audio: Option<Spanned<bool>>,
    /// Name of a provider key held by control (`sluicectl keys set NAME`) sent upstream in
    /// place of the client's credential: the client holds a placeholder or a virtual key,
    /// never the real one (`inspect` rules).
    pub broker_key: Option<Spanned<String>>,
    /// A real provider key presented where `broker_key` applies: `refuse` it (the default: it
    /// would bypass attribution) or `swap` it for the brokered one.
    pub real_keys: Option<Spanned<RealKeys>>,
    /// A budget for the requests this rule inspects, per identity, user or virtual key:
    /// `quota = { tokens_per_day = 200000 }` (`inspect` rules). Over it, requests get 429.
    pub quota: Option<Spanned<QuotaDef>>,
    /// How long a held request waits for a reviewer, in seconds (5 to 3600; default 120):
    /// `hold` rules, and rules whose DLP profile's action is `approve`.
    pub approval_timeout: Option<Spanned<u64>>,
    /// Reviewers see the prompt text of a held request (kept in control's memory while it
    /// waits, never stored). Default: false (they see who, where, model and findings).
    pub approval_shows_prompt: Option<Spanned<bool>>,
    /// Most requests of one identity held at once under this rule (default 8); past it,
    /// requests are refused (503 `approval_queue_full`).
    pub approval_max_held: Option<Spanned<u32>>,
    /// Record the decoded bodies of matching requests (`request`) and of their responses
    /// (`request+response`), encrypted to `[defaults] recording_recipients` before they leave
    /// the interception engine (`inspect` rules).
    pub record: Option<Spanned<RecordMode>>,
    /// Free text for people reading the file.
    pub description: Option<String>,
}

/// `record`: what of a request is recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
pub enum RecordMode {
    /// The request: method, path, headers (credentials withheld) and decoded body.
    #[serde(rename = "request")]
    Request,
    /// The request and the response (status, headers, decoded body; WebSocket messages both
    /// ways).
    #[serde(rename = "request+response")]
    RequestResponse,
}

/// Whose budget a `quota` is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum QuotaBy {
    /// Each identity (source) has the budget.
    Identity,
    /// Each user (identity feed, or a virtual key's user); a request without a known user
    /// counts against its identity's.
    User,
    /// Each virtual key; a request without one counts against its user's (else identity's).
    Key,
}

/// `quota = { … }`: limits per window (UTC minute, hour and day), any combination.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaDef {
    /// Whose budget: `user` (the default), `identity` or `key`.
    pub by: Option<Spanned<QuotaBy>>,
    /// Requests per minute.
    pub requests_per_minute: Option<Spanned<u64>>,
    /// Requests per hour.
    pub requests_per_hour: Option<Spanned<u64>>,
    /// Requests per day.
    pub requests_per_day: Option<Spanned<u64>>,
    /// Tokens (input and output, as responses report them) per minute.
    pub tokens_per_minute: Option<Spanned<u64>>,
    /// Tokens per hour.
    pub tokens_per_hour: Option<Spanned<u64>>,
    /// Tokens per day.
    pub tokens_per_day: Option<Spanned<u64>>,
}

/// How a custom detector matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DetectorKind {
    /// A regular expression (Rust `regex` syntax, linear time).
    Regex,
    /// Words and phrases, case-insensitive, on word boundaries.
    Keywords,
    /// Exact entries (one per line of a file), held and matched as hashes only.
    Dictionary,
}

/// `[[detector]]`: a custom DLP detector, listed in profiles like the built-in ones.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetectorDef {
    /// Name used in profiles and findings.
    pub name: Spanned<String>,
    /// `regex`, `keywords` or `dictionary`.
    pub kind: Spanned<DetectorKind>,
    /// The expression (`regex`).
    pub pattern: Option<Spanned<String>>,
    /// The words or phrases (`keywords`).
    #[serde(default)]
    pub words: Vec<Spanned<String>>,
    /// The entries file, relative to the rule file (`dictionary`).
    pub file: Option<Spanned<String>>,
    /// What it finds.
    pub description: Option<String>,
}

/// A whole rule file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleFile {
    /// `[[detector]]` tables (custom DLP detectors).
    #[serde(default)]
    pub detector: Vec<Spanned<DetectorDef>>,
    /// `[defaults]`.
    pub defaults: Option<DefaultsDef>,
    /// `[[identity]]` tables.
    #[serde(default)]
    pub identity: Vec<Spanned<IdentityDef>>,
    /// `[[category]]` tables.
    #[serde(default)]
    pub category: Vec<Spanned<CategoryDef>>,
    /// `[[dlp]]` tables.
    #[serde(default)]
    pub dlp: Vec<Spanned<DlpDef>>,
    /// `[[rule]]` tables, in match order.
    #[serde(default)]
    pub rule: Vec<Spanned<RuleDef>>,
}

/// A catalog file (`rules/catalog/*.toml`): a described list of domains.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogFile {
    /// What the catalog covers.
    pub description: String,
    /// Domain patterns, each commented with what it is for.
    pub domains: Vec<Spanned<String>>,
}
