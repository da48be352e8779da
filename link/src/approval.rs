//! The messages of just-in-time approval (ARCHITECTURE.md, "Approvals"): a data plane holding
//! a request tells control what a reviewer needs to decide ([`HoldTicket`], in
//! [`crate::Up::Held`]); control answers with the reviewer's [`Decision`]
//! ([`crate::Down::Decision`]), or the data plane says the wait ended without one
//! ([`crate::Up::HoldEnded`]).

use serde::{Deserialize, Serialize};

use crate::Secret;

/// A held request, as a reviewer sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldTicket {
    /// Its id (`apr_` and 24 hex digits), unique across data planes.
    pub id: String,
    /// Unix ms when it started waiting.
    pub ts_ms: u64,
    /// Seconds it waits before it is refused.
    pub timeout_s: u64,
    /// The rule that holds it.
    pub rule: Option<String>,
    /// The identity of its source.
    pub identity: String,
    /// Its user, when known (identity feed or virtual key): a reviewer may not decide their
    /// own request.
    pub user: Option<String>,
    /// Client address.
    pub src: String,
    /// The server (host) it is for.
    pub destination: String,
    /// Method.
    pub method: String,
    /// Path, without the query.
    pub path: String,
    /// Model, if the body names one.
    pub model: Option<String>,
    /// Why it waits: `rule` (the rule holds every request) or `dlp` (findings under a profile
    /// that approves).
    pub why: String,
    /// DLP findings: detectors and counts, never values.
    #[serde(default)]
    pub findings: Vec<FindingCount>,
    /// The prompt (the decoded request body, at most 64 KiB) when the rule opts in; control
    /// keeps it in memory while the request waits and never stores it.
    #[serde(default)]
    pub prompt: Option<Secret>,
}

/// One detector's findings in a held request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FindingCount {
    /// Detector.
    pub detector: String,
    /// Matches.
    pub count: u64,
}

/// A reviewer's decision on a held request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// The held request.
    pub id: String,
    /// Approved (forwarded) or denied (refused with the reason).
    pub approved: bool,
    /// Who decided (the API token's name).
    pub by: String,
    /// Why (a denial's reason is shown to the client).
    pub reason: Option<String>,
    /// With an approval: the same user (identity when there is none) may reach the same
    /// destination without waiting, this many minutes.
    pub grant_minutes: Option<u32>,
    /// Whom a grant covers (`user:…` or `identity:…`) and where.
    pub grant: Option<Grant>,
}

/// What an approval for a while covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// `user:NAME`, or `identity:NAME` when the request named no user.
    pub who: String,
    /// The destination host.
    pub destination: String,
    /// The rule whose holds it lifts (a grant never covers another rule's).
    #[serde(default)]
    pub rule: Option<String>,
    /// Unix ms until which it holds.
    pub until_ms: u64,
}
