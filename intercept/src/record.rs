//! What the interception engine tells the rest of the system: one [`RequestRecord`] per
//! request (HTTP/1.1 message or HTTP/2 stream), handed to a [`RecordSink`] the binary owns,
//! and [`FlowNote`]s, what it learned about a diverted flow, written into the packet engine's
//! flow record through [`crate::DivertHandle::annotate`]. Records never carry payload bytes,
//! keys or prompt text (ARCHITECTURE.md, "Records").

use serde::Serialize;

/// Unix ms now (record times, quota windows, approval deadlines).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Where request records go. The binary owns it (it batches them into the flow log and the
/// spool toward control); tests collect them in memory. A record that carries a capture is
/// to be sealed by the sink's writer with [`crate::recording::seal_captured`] before it is
/// written (a sink that does not drops the recording).
pub trait RecordSink: Send + Sync + 'static {
    /// Takes one finished request record.
    fn request(&self, record: RequestRecord);
}

impl<F: Fn(RequestRecord) + Send + Sync + 'static> RecordSink for F {
    fn request(&self, record: RequestRecord) {
        self(record);
    }
}

/// What the ClientHello said, as the flow record keeps it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HelloNote {
    /// SNI, lowercased.
    pub sni: Option<String>,
    /// ALPN protocols offered, in order.
    pub alpn: Vec<String>,
    /// JA4 fingerprint.
    pub ja4: String,
    /// TLS version offered (`1.3`, `1.2`, …).
    pub tls_version: &'static str,
    /// It carries an `encrypted_client_hello` extension (real, or GREASE).
    pub ech: bool,
}

impl HelloNote {
    /// The note of a parsed hello.
    pub fn of(h: &sluice_hello::ClientHello<'_>) -> Self {
        HelloNote {
            sni: h.sni().map(str::to_ascii_lowercase),
            alpn: h.alpn_strings(),
            ja4: h.ja4(),
            ech: h.ech(),
            tls_version: match h.version {
                0x0304 => "1.3",
                0x0303 => "1.2",
                0x0302 => "1.1",
                0x0301 => "1.0",
                _ => "other",
            },
        }
    }
}

impl HelloNote {
    /// Whether the hello hides its real server name: an `encrypted_client_hello` extension
    /// behind an outer name that is an ECH configuration's public name (the shipped
    /// `ech-public-names` catalog), or no outer name at all. GREASE ECH, which Chrome sends to
    /// every server, carries the real name outside.
    pub fn hides_name(&self) -> bool {
        self.ech && sluice_rules::catalog::ech_hides_name(self.sni.as_deref())
    }

    /// What a flow record says of the hello's ECH extension: `hidden` (the name hidden),
    /// `grease` (the real name outside), or nothing without the extension.
    pub fn ech_note(&self) -> Option<&'static str> {
        self.ech.then(|| if self.hides_name() { "hidden" } else { "grease" })
    }
}

/// Who the policy says the client is and which rule decided.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DecisionNote {
    /// Identity name.
    pub identity: String,
    /// Feed user.
    pub user: Option<String>,
    /// Category of the SNI.
    pub category: Option<String>,
    /// The rule that decided.
    pub rule: Option<String>,
    /// The app the hello showed (`None`: unknown; shared with the app catalog).
    pub app: Option<std::sync::Arc<str>>,
    /// What identified it (`ja4`, `ja4+sni`).
    pub app_evidence: Option<&'static str>,
}

/// What the interception engine learned about a diverted flow; fields left `None` leave the
/// flow record as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlowNote {
    /// The ClientHello.
    pub hello: Option<HelloNote>,
    /// The decision.
    pub decision: Option<DecisionNote>,
    /// Action taken (`allow`, `inspect`, `block`).
    pub action: Option<&'static str>,
    /// Why.
    pub reason: Option<&'static str>,
    /// ALPN protocol negotiated with the client (`h2`, `http/1.1`, …).
    pub alpn_negotiated: Option<&'static str>,
}

impl FlowNote {
    /// A note with an action and a reason only.
    pub fn verdict(action: &'static str, reason: &'static str) -> Self {
        FlowNote { action: Some(action), reason: Some(reason), ..FlowNote::default() }
    }
}

/// One HTTP request seen by the interception engine. Carries who, where, what model, which
/// key (as a fingerprint) and what was decided; never the prompt, the key or a header value
/// beyond the organization and project ids.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RequestRecord {
    /// Always `request`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Unix ms when the request head arrived.
    pub ts_ms: u64,
    /// Identity name.
    pub identity: Option<String>,
    /// Feed user.
    pub user: Option<String>,
    /// Client address.
    pub src: String,
    /// Client port.
    pub sport: u16,
    /// Original destination address.
    pub dst: String,
    /// SNI of the connection.
    pub sni: Option<String>,
    /// Method.
    pub method: String,
    /// Path, without the query string (which may carry secrets).
    pub path: String,
    /// `model` of a JSON body.
    pub model: Option<String>,
    /// HTTP version of the client's side: `1.0`, `1.1` or `2`.
    pub http_version: &'static str,
    /// Status the client received.
    pub status: Option<u16>,
    /// Request body bytes.
    pub bytes_out: u64,
    /// Response body bytes.
    pub bytes_in: u64,
    /// Milliseconds from the request head to the end of the response.
    pub latency_ms: u64,
    /// Short SHA-256 prefix of the API key (`Authorization: Bearer`, `api-key`), never the key.
    pub api_key_fp: Option<String>,
    /// The brokered provider key sent upstream in place of the client's credential (its
    /// name, never the key).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broker_key: Option<String>,
    /// The virtual key the client presented (its id, never the key).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub virtual_key: Option<String>,
    /// The quota subject the request was counted against (`user:…`, `identity:…`, `key:…`),
    /// when a rule's quota admitted it; control adds these up for the whole fleet.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quota: Option<String>,
    /// The request's recording (`record` rules): its id, size and conversation ids.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recording: Option<crate::recording::RecordingNote>,
    /// What is captured for the recording while the exchange runs (never serialised).
    #[serde(skip)]
    pub capture: Option<Box<crate::recording::Capture>>,
    /// The sealed recording, for the binary to write as a `recording` record (never part of
    /// this record's JSON).
    #[serde(skip)]
    pub sealed: Option<crate::recording::SealedBytes>,
    /// The wait for a reviewer, when the rule held the request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approval: Option<ApprovalNote>,
    /// Input tokens the response said it used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input_tokens: Option<u64>,
    /// Output tokens the response said it used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_tokens: Option<u64>,
    /// Input tokens served from the prompt cache.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cached_tokens: Option<u64>,
    /// `OpenAI-Organization`.
    pub openai_organization: Option<String>,
    /// `OpenAI-Project`.
    pub openai_project: Option<String>,
    /// `User-Agent`.
    pub user_agent: Option<String>,
    /// The app (`unknown` when neither hello nor headers name one; ARCHITECTURE.md, "Apps
    /// and discovery").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app: Option<std::sync::Arc<str>>,
    /// Its version, as the request says it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app_version: Option<String>,
    /// What identified it (`ja4`, `ua`, `headers`, … joined by `+`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app_evidence: Option<&'static str>,
    /// An app the headers named that the hello contradicts (a claim, not believed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app_claimed: Option<std::sync::Arc<str>>,
    /// What the request does (`chat`, `upload`, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operation: Option<&'static str>,
    /// The ChatGPT account it works with (`chatgpt-account-id`), or `anonymous` signed out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chatgpt_account: Option<String>,
    /// The accounts ChatGPT's answer listed for the signed-in user (`workspace:ID`,
    /// `personal:ID`), where the answer shows them (`/backend-api/accounts/check`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub chatgpt_accounts_listed: Vec<String>,
    /// Category of the SNI.
    pub category: Option<String>,
    /// Rule that decided.
    pub rule: Option<String>,
    /// `allow` (forwarded) or `block` (answered by the engine).
    pub verdict: &'static str,
    /// Machine-readable reason of a block.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<&'static str>,
    /// Why, when not simply the rule.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Headers the engine injected (names only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub injected: Vec<&'static str>,
    /// DLP profile applied.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dlp_profile: Option<String>,
    /// What DLP did: `block`, `redact`, `alert` (findings present), `unscanned` (no
    /// findings, but some content could not be read: see `unscanned`) or `clean`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dlp_action: Option<&'static str>,
    /// DLP findings per detector: counts and JSON paths, never values.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dlp_findings: Vec<DlpSummary>,
    /// Which salt the findings' hashes are under (`salt:` and 12 hex digits): hashes compare
    /// only under one salt.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dlp_salt: Option<String>,
    /// What could not be scanned, each as `path (reason)`: binary files, corrupt layers.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unscanned: Vec<String>,
    /// How content was read where it was not plain UTF-8: `$ (gzip)`, `$.file (UTF-16LE)`,
    /// `$.file(a.txt) (base64)`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dlp_decoded: Vec<String>,
    /// Credentials masked in the response (detector per match), with `mask_responses`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub response_masked: Vec<&'static str>,
    /// A WebSocket connection (its record at close) or one of its messages.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub websocket: Option<WsStats>,
}

/// How a held request's wait ended.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ApprovalNote {
    /// The approval's id (as control lists it).
    pub id: String,
    /// `approved`, `denied`, `timeout`, `granted` (approved earlier for a while) or
    /// `refused` (no room to wait, or nobody to ask).
    pub decision: &'static str,
    /// Who decided.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// Why (a denial's reason).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// An approval for this long (minutes) for the same user and destination.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grant_minutes: Option<u32>,
    /// Milliseconds the request waited.
    pub waited_ms: u64,
}

/// What a WebSocket carried, in its connection's record, or which message a message record is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct WsStats {
    /// `connection` (the record written at close) or `message` (a blocked or redacted one).
    pub record: &'static str,
    /// Messages client → server.
    pub messages_out: u64,
    /// Messages server → client.
    pub messages_in: u64,
    /// Binary messages client → server.
    pub binary_out: u64,
    /// Audio messages client → server (binary, and Realtime `input_audio_buffer.append`).
    pub audio_out: u64,
    /// Messages the engine rewrote (redacted or masked).
    pub rewritten: u64,
    /// Close code of the connection, if a close frame was seen.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub close_code: Option<u16>,
    /// The client event's `type` (message records).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
}

/// The findings of one detector in one request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DlpSummary {
    /// Detector name.
    pub detector: &'static str,
    /// Number of matches.
    pub count: usize,
    /// JSON paths of the strings they were in (deduplicated, at most 16).
    pub paths: Vec<String>,
    /// Salted hashes of the matches (correlate repeats without the values; at most 16).
    pub hashes: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::HelloNote;

    fn note(file: &str) -> HelloNote {
        let path =
            format!("{}/../dataplane/testdata/clienthello/{file}", env!("CARGO_MANIFEST_DIR"));
        let raw = std::fs::read(path).expect("testdata");
        match sluice_hello::parse_client_hello(&raw, &mut Vec::new()) {
            sluice_hello::HelloParse::Hello(h) => HelloNote::of(&h),
            _ => panic!("{file}: not a whole hello"),
        }
    }

    #[test]
    fn a_name_behind_an_ech_public_name_is_hidden_and_grease_is_not() {
        let hidden = note("synth-ech-cloudflare-ech.com.bin");
        assert!(hidden.hides_name());
        assert_eq!(hidden.ech_note(), Some("hidden"));
        let grease = note("synth-ech-example.org.bin");
        assert!(!grease.hides_name());
        assert_eq!(grease.ech_note(), Some("grease"));
        // No outer name at all hides it too, as on the packet path.
        let nameless = HelloNote { sni: None, ..grease.clone() };
        assert!(nameless.hides_name());
        let plain = HelloNote { ech: false, ..hidden };
        assert_eq!((plain.hides_name(), plain.ech_note()), (false, None));
    }
}
