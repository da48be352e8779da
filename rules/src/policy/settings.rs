//! What a rule carries besides its conditions: the header and body policy of an inspect rule
//! and the access controls in it (broker, quota, approval), and the hash dictionary detectors
//! match by.

use serde::Serialize;

use crate::schema::{QuotaBy, RecordMode};

/// The hash a dictionary entry (or a run of words in scanned text) is matched by: SipHash of
/// the lowercased words joined by single spaces.
pub fn dictionary_hash<'a>(words: impl IntoIterator<Item = &'a str>) -> u64 {
    use std::hash::Hasher;
    let mut h = dictionary_hasher();
    for (i, w) in words.into_iter().enumerate() {
        if i > 0 {
            h.write_u8(b' ');
        }
        for b in w.bytes() {
            h.write_u8(b.to_ascii_lowercase());
        }
    }
    h.finish()
}

/// The hasher behind [`dictionary_hash`], for matchers that extend a run word by word (feed
/// lowercased bytes, a single `b' '` between words; clone to finish a prefix).
#[allow(deprecated)]
pub fn dictionary_hasher() -> std::hash::SipHasher {
    std::hash::SipHasher::new_with_keys(0x5eed_51c3_d1c7_0001, 0x0dd5_a1ce_0f00_0002)
}

/// Header and body constraints an inspect rule applies to requests.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HeaderPolicy {
    /// Value of `ChatGPT-Allowed-Workspace-Id` (comma-separated UUIDs, no spaces), if any.
    pub chatgpt_workspace_header: Option<String>,
    /// Value of `OpenAI-Allowed-Organization-Ids`, if any.
    pub openai_allowed_orgs_header: Option<String>,
    /// Allowed `OpenAI-Organization` values (empty: any).
    pub allowed_organizations: Vec<String>,
    /// Allowed `OpenAI-Project` values (empty: any).
    pub allowed_projects: Vec<String>,
    /// A request without the organization (project) header where an allow-list is set gets
    /// the first allowed value, instead of being refused.
    pub inject_missing_org_project: bool,
    /// Allowed models (empty: any).
    pub allowed_models: Vec<String>,
    /// Sensitive data in responses is replaced before the client sees it: credentials, and
    /// the detectors of `mask_profile` (or of the rule's DLP profile).
    pub mask_responses: bool,
    /// The DLP profile response masking uses, when not the rule's own.
    pub mask_profile: Option<String>,
    /// Audio streamed over WebSocket is refused.
    pub block_audio: bool,
    /// Images and video in requests are refused.
    pub block_files: bool,
    /// Images and video larger than this are refused.
    pub max_file_bytes: Option<u64>,
    /// ChatGPT used signed out (`/backend-anon/…`) is refused.
    pub block_chatgpt_anonymous: bool,
    /// A request DLP could not read entirely is refused (`on_unscanned = "block"`, the
    /// default under a blocking profile).
    pub block_unscanned: bool,
    /// The provider key sent upstream in place of the client's credential, if any.
    pub broker: Option<BrokerPolicy>,
    /// The budget of the requests, if any.
    pub quota: Option<QuotaPolicy>,
    /// Requests wait for a reviewer's approval (`hold`, or a DLP profile that approves).
    pub approval: Option<ApprovalPolicy>,
    /// What of the requests is recorded (encrypted to the defaults' recipients).
    pub record: Option<RecordMode>,
    /// ChatGPT accounts (`chatgpt-account-id`) allowed (empty: any). A request that works
    /// with an account must name one of these.
    pub chatgpt_accounts: Vec<String>,
}

/// Just-in-time approval: which requests wait, how long, and what the reviewer sees.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApprovalPolicy {
    /// Every request waits (`action = "hold"`); otherwise only those with DLP findings
    /// under a profile whose action is `approve`.
    pub every_request: bool,
    /// Seconds a request waits before it is refused.
    pub timeout_s: u64,
    /// The reviewer sees the prompt text.
    pub shows_prompt: bool,
    /// Most requests of one identity held at once.
    pub max_held: u32,
}

/// `quota`: limits on requests and tokens per subject and window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QuotaPolicy {
    /// Whose budget.
    pub by: QuotaBy,
    /// The limits (at least one).
    pub limits: Vec<QuotaLimit>,
}

/// One limit of a [`QuotaPolicy`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct QuotaLimit {
    /// What is counted.
    pub measure: Measure,
    /// Over which window.
    pub window: Window,
    /// How many are allowed in one window.
    pub max: u64,
}

/// What a quota counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Measure {
    /// Requests admitted.
    Requests,
    /// Tokens the responses reported (input and output).
    Tokens,
}

/// A fixed UTC window a quota counts over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Window {
    /// From one whole minute to the next.
    Minute,
    /// From one whole hour to the next.
    Hour,
    /// From midnight UTC to the next.
    Day,
}

impl Window {
    /// Every window, shortest first.
    pub const ALL: [Window; 3] = [Window::Minute, Window::Hour, Window::Day];

    /// Its length in seconds.
    pub fn secs(self) -> u64 {
        match self {
            Window::Minute => 60,
            Window::Hour => 3600,
            Window::Day => 86_400,
        }
    }

    /// The start (Unix seconds) of the window that holds `now_s`.
    pub fn start(self, now_s: u64) -> u64 {
        now_s - now_s % self.secs()
    }

    /// Its name, as rule files and the link write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Window::Minute => "minute",
            Window::Hour => "hour",
            Window::Day => "day",
        }
    }

    /// The window named `s`.
    pub fn parse(s: &str) -> Option<Window> {
        Window::ALL.into_iter().find(|w| w.as_str() == s)
    }
}

/// `broker_key`: the appliance holds the provider key; clients send a placeholder or a
/// virtual key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BrokerPolicy {
    /// Name of the key in control's key store.
    pub key: String,
    /// A real provider key from the client is swapped (`real_keys = "swap"`), not refused.
    pub swap_real_keys: bool,
}
