//! # sluice-rules
//!
//! The policy language admins push to Sluice, and the immutable [`Policy`] it compiles into.
//!
//! A rule set is a TOML document (see `rules/default.toml`): `[defaults]`, `[[identity]]`
//! (CIDRs, MACs), `[[category]]` (domain lists, `include` of the shipped catalogs),
//! `[[dlp]]` profiles, and ordered `[[rule]]`s matched first to last.
//!
//! Pure: no sockets, no clocks (time is an input), and file access only in the explicit
//! [`catalog::FsLoader`] for includes.
//!
//! ```
//! use sluice_rules::{compile, catalog::ShippedOnly, IdentityOverlay, Query, Action};
//! let text = r#"
//! [[identity]]
//! name = "finance"
//! cidrs = ["10.20.1.0/24"]
//! [[category]]
//! name = "openai-api"
//! include = ["openai-api"]
//! [[rule]]
//! name = "guests-no-openai"
//! identities = ["unknown"]
//! categories = ["openai-api"]
//! action = "block"
//! "#;
//! let policy = compile("example.toml", text, &ShippedOnly).unwrap().policy;
//! let q = Query { src: "10.20.9.99".parse().unwrap(), mac: None, sni: Some("api.openai.com"), port: 443, now: 0, app: Default::default(), op: None };
//! let overlay = IdentityOverlay::default();
//! let d = policy.decide(&q, &overlay);
//! assert_eq!(d.action, Action::Block);
//! assert_eq!(d.rule_name(), "guests-no-openai");
//! ```

pub mod apps;
pub mod catalog;
pub mod catset;
mod compile;
pub mod detectors;
mod diag;
pub mod diff;
pub mod domain;
pub mod ident;
pub mod operation;
mod policy;
pub mod schema;

pub use compile::{
    Compiled, DEFAULT_MAX_INSPECT, MAX_CUSTOM_DETECTORS, MAX_DICTIONARY_WORDS, MAX_RULE_FILE,
    compile,
};
pub use diag::{Diagnostic, Severity, Source};
pub use ident::{IdentityOverlay, OverlayEntry};
pub use policy::{
    AppSeen, ApprovalPolicy, BrokerPolicy, Category, CustomDetector, CustomKind, Decision,
    Defaults, DlpProfile, HeaderPolicy, Identity, Measure, Policy, Query, QuotaLimit, QuotaPolicy,
    Resolved, Rule, RuleExplanation, RuleSpec, Window, dictionary_hash, dictionary_hasher,
};
pub use schema::{
    Action, CanaryPolicy, DetectorKind, DivertMode, DlpAction, DnsEchPolicy, EchPolicy, FailMode,
    FilePolicy, FragmentPolicy, MidstreamPolicy, MissingOrgProject, QuicPolicy, QuicRefusal,
    QuotaBy, RealKeys, RecordMode, RuleAction, Unscanned,
};

use std::path::Path;

/// Errors of [`load_file`].
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    /// The file could not be read.
    #[error("cannot read rule file {path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The rule set is invalid; each diagnostic names file, line and column.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Diagnostic>),
}

/// Reads and compiles a rule file, resolving includes relative to it.
pub fn load_file(path: &Path) -> Result<Compiled, RulesError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| RulesError::Io { path: path.display().to_string(), source })?;
    compile(&path.display().to_string(), &text, &catalog::FsLoader::for_file(path))
        .map_err(RulesError::Invalid)
}
