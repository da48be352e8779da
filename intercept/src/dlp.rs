//! DLP over requests: the rule's profile (block, redact, alert) over the decoded body, its
//! token-id input and its head (path, query, free-text headers); what the rule does with
//! content DLP could not read (`on_unscanned`, `files`, `block_audio`); findings summarised
//! into the request record (detectors, counts, paths and salted hashes, never values). Pure;
//! called by the body phase ([`crate::phases`]). ARCHITECTURE.md, "What DLP reads".

use sluice_dlp::body::Binary;
use sluice_dlp::{DetectorSet, Scanner};
use sluice_rules::{DlpAction, HeaderPolicy};

use crate::block::Refusal;
use crate::phases::RequestView;
use crate::record::{DlpSummary, RequestRecord};

/// A DLP profile as the exchange applies it.
#[derive(Debug, Clone)]
pub struct Dlp {
    /// Profile name.
    pub profile: String,
    /// Its detectors.
    pub set: DetectorSet,
    /// What a finding triggers.
    pub action: DlpAction,
    /// The shared scanner.
    pub scanner: std::sync::Arc<Scanner>,
    /// Salt of the finding hashes.
    pub salt: std::sync::Arc<Salt>,
}

/// The salt findings are hashed with: the deployment's, as control pushed it, or one drawn
/// for this run until it does (ARCHITECTURE.md, "The DLP salt").
#[derive(Clone)]
pub struct Salt {
    /// Its id, as records name it.
    pub id: String,
    bytes: Vec<u8>,
}

impl Salt {
    /// The salt of `bytes`.
    pub fn new(bytes: &[u8]) -> Salt {
        Salt { id: sluice_dlp::salt_id(bytes), bytes: bytes.to_vec() }
    }

    /// Its bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

impl std::fmt::Debug for Salt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Salt").field("id", &self.id).finish_non_exhaustive()
    }
}

impl Drop for Salt {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.bytes);
    }
}

/// What DLP reads of one request: its head and its decoded body.
pub(crate) struct Input<'a> {
    /// The request head (path, query and free-text headers are scanned too); `None` for a
    /// WebSocket message (its upgrade request was scanned).
    pub req: Option<&'a RequestView<'a>>,
    /// `Content-Type`.
    pub content_type: Option<&'a [u8]>,
    /// The body, de-framed and decoded per its Content-Encoding (empty for none).
    pub body: &'a [u8],
    /// The rule's inspection settings (`on_unscanned`, `files`, `block_audio`).
    pub policy: &'a HeaderPolicy,
}

/// Headers whose values servers parse strictly (framing, the WebSocket handshake, the
/// organization and project the request filter checks): not scanned. Everything else is,
/// `X-Note`, `Referer`, `Accept-Language` and the SDKs' `X-Stainless-*` included.
const STRUCTURAL: [&str; 17] = [
    "host",
    "content-length",
    "content-type",
    "content-encoding",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "expect",
    "openai-organization",
    "openai-project",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-extensions",
    "priority",
];

/// The credential detectors (computed once, not per request).
pub(crate) static CREDENTIALS: std::sync::LazyLock<DetectorSet> =
    std::sync::LazyLock::new(|| DetectorSet::family("credential"));

/// Headers that carry the client's own sign-in to this service: scanned for everything but
/// credentials (a session token there is how the client signs in, not a leak; a card is).
const SIGN_IN: [&str; 4] = ["authorization", "api-key", "cookie", "proxy-authorization"];

/// Runs the profile over a request (its decoded body, path, query and free-text headers) and
/// fills the record. `Ok(Some(body))`: the redacted body replaces it (decoded); `Err`: the
/// request is refused (findings under a blocking profile; findings that cannot be redacted
/// where they are; content DLP cannot read, with `on_unscanned = "block"`).
pub(crate) fn scan(
    dlp: &Dlp,
    input: &Input<'_>,
    rule: Option<&str>,
    rec: &mut RequestRecord,
) -> Result<Option<Vec<u8>>, Refusal> {
    rec.dlp_profile = Some(dlp.profile.clone());
    let mut out = match input.body.is_empty() {
        true => sluice_dlp::extract::Outcome::default(),
        false => sluice_dlp::extract::inspect(
            &dlp.scanner,
            &dlp.set,
            sluice_dlp::extract::Request {
                content_type: input.content_type,
                body: input.body,
                redact: dlp.action == DlpAction::Redact,
                salt: dlp.salt.bytes(),
            },
        ),
    };
    // Prompts sent as token ids are decoded with the model's tokenizer and scanned.
    if let Some(req) = input.req {
        let path = req.target.split(['?', '#']).next().unwrap_or("");
        if let Some(t) = sluice_dlp::extract::inspect_token_ids(
            &dlp.scanner,
            &dlp.set,
            dlp.salt.bytes(),
            path,
            input.body,
        ) {
            if t.unscanned.is_empty() {
                out.decoded.push("$ (token ids decoded)".into());
            }
            out.findings.extend(t.findings);
            out.unscanned.extend(t.unscanned);
            out.unredactable.extend(t.unredactable);
        }
    }
    let head = input.req.map(|r| outside(dlp, r)).unwrap_or_default();
    if head.findings.iter().any(|f| f.path == "path") {
        // The record keeps the path: not this one.
        rec.path = "[path withheld: sensitive data]".into();
    }
    if head.findings.iter().any(|f| f.path == "header.user-agent") {
        rec.user_agent = Some("[withheld: sensitive data]".into());
    }
    if !head.findings.is_empty() {
        out.unredactable.push("the request head (path, query, headers)".into());
    }
    out.findings.extend(head.findings);
    rec.unscanned = out.unscanned_text();
    rec.dlp_decoded.clone_from(&out.decoded);
    summarise(&out, rec);
    if !out.findings.is_empty() {
        rec.dlp_salt = Some(dlp.salt.id.clone());
    }
    let skipped = skipped(&out, input.policy, rule);
    if out.findings.is_empty() {
        rec.dlp_action = Some(if out.unscanned.is_empty() { "clean" } else { "unscanned" });
        return match skipped {
            Some(r) => Err(r),
            None => Ok(None),
        };
    }
    match (dlp.action, skipped) {
        (DlpAction::Block, _) => {
            rec.dlp_action = Some("block");
            Err(violation(&out, rule))
        }
        (_, Some(r)) => {
            rec.dlp_action = Some("block");
            Err(r)
        }
        (DlpAction::Redact, None) if !out.unredactable.is_empty() => {
            rec.dlp_action = Some("block");
            let mut r = violation(&out, rule);
            r.message = format!(
                "{}, which cannot be redacted where it is ({})",
                r.message,
                out.unredactable.join("; ")
            );
            Err(r)
        }
        // Findings with no rewritten body to send instead (a body read as text that could
        // not be rebuilt): nothing to forward but the original, which is refused.
        (DlpAction::Redact, None) if out.redacted.is_none() && body_findings(&out) => {
            rec.dlp_action = Some("block");
            let mut r = violation(&out, rule);
            r.message = format!("{}, which cannot be redacted where it is", r.message);
            Err(r)
        }
        (DlpAction::Redact, None) => {
            rec.dlp_action = Some("redact");
            Ok(out.redacted)
        }
        (DlpAction::Alert, None) => {
            rec.dlp_action = Some("alert");
            Ok(None)
        }
        // Forwarded only once a reviewer approves ([`crate::approval`]).
        (DlpAction::Approve, None) => {
            rec.dlp_action = Some("approve");
            Ok(None)
        }
    }
}

/// Whether some finding is in the body (not the head, whose findings are unredactable anyway).
fn body_findings(out: &sluice_dlp::extract::Outcome) -> bool {
    out.findings.iter().any(|f| f.path.starts_with('$'))
}

/// The refusal the rule gives content that was not scanned, if it refuses any: audio under
/// `block_audio`, images and video under `files = "block"` or over `max_file_bytes`, and
/// anything else DLP could not read under `on_unscanned = "block"`.
fn skipped(
    out: &sluice_dlp::extract::Outcome,
    policy: &HeaderPolicy,
    rule: Option<&str>,
) -> Option<Refusal> {
    for u in &out.unscanned {
        let refusal = match u.binary {
            Some(Binary::Audio) if policy.block_audio => {
                Some(("audio_not_allowed", format!("audio may not be sent to this service: {u}")))
            }
            Some(Binary::File) if policy.block_files => {
                Some(("file_not_allowed", format!("images and video may not be sent: {u}")))
            }
            Some(Binary::File) if policy.max_file_bytes.is_some_and(|m| u.bytes as u64 > m) => {
                Some((
                    "file_not_allowed",
                    format!(
                        "{u} is {} bytes, over the {} allowed",
                        u.bytes,
                        policy.max_file_bytes.unwrap_or_default()
                    ),
                ))
            }
            Some(_) => None,
            None if policy.block_unscanned => Some((
                "unscanned_content",
                format!("the request carries content DLP cannot read: {u} (on_unscanned = block)"),
            )),
            None => None,
        };
        if let Some((code, message)) = refusal {
            return Some(Refusal::forbidden(code, message, rule));
        }
    }
    None
}

/// The request head's texts, scanned: the path (percent-decoded), each query field, and every
/// header but the structural ones ([`STRUCTURAL`]); sign-in headers ([`SIGN_IN`]) without
/// the credential detectors.
fn outside(dlp: &Dlp, req: &RequestView<'_>) -> sluice_dlp::extract::Outcome {
    let (path, query) = req.target.split_once('?').unwrap_or((req.target, ""));
    let path = path.split('#').next().unwrap_or("");
    let query = query.split('#').next().unwrap_or("");
    let mut fields: Vec<(String, String)> = Vec::new();
    fields.push(("path".into(), percent_decode(path)));
    for (i, (name, value)) in sluice_dlp::form::fields(query.as_bytes()).into_iter().enumerate() {
        // A name shows in paths only when it is a short identifier that cannot hold what
        // the detectors find (few digits); otherwise the record says which field by number.
        let digits = name.bytes().filter(u8::is_ascii_digit).count();
        let plain = name.len() <= 32
            && digits <= 3
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
        let shown = if plain { format!("query.{name}") } else { format!("query[{i}]") };
        fields.push((format!("query[{i}](name)"), name));
        fields.push((shown, value));
    }
    let mut sign_in: Vec<(String, String)> = Vec::new();
    req.headers.each(&mut |name, value| {
        if STRUCTURAL.contains(&name) || name.starts_with(':') {
            return;
        }
        let field = (format!("header.{name}"), String::from_utf8_lossy(value).into_owned());
        match SIGN_IN.contains(&name) {
            true => sign_in.push(field),
            false => fields.push(field),
        }
    });
    let scan = |set: &sluice_dlp::DetectorSet, fields: &[(String, String)]| {
        sluice_dlp::extract::inspect_fields(
            &dlp.scanner,
            set,
            dlp.salt.bytes(),
            fields.iter().map(|(p, t)| (p.as_str(), t.as_str())),
        )
    };
    let mut out = scan(&dlp.set, &fields);
    if !sign_in.is_empty() {
        let set = dlp.set.without(&CREDENTIALS);
        out.findings.extend(scan(&set, &sign_in).findings);
    }
    out
}

/// `%XX` escapes decoded (invalid UTF-8 replaced).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (b[i], b.get(i + 1).copied().and_then(hex), b.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(h), Some(l)) => {
                out.push((h << 4 | l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The refusal of a request whose findings the profile blocks: detectors and counts, never
/// values.
pub(crate) fn violation(out: &sluice_dlp::extract::Outcome, rule: Option<&str>) -> Refusal {
    let list: Vec<String> = out.counts().iter().map(|(d, n)| format!("{d} ({n})")).collect();
    Refusal::forbidden(
        "dlp_violation",
        format!("sensitive data in the request: {}", list.join(", ")),
        rule,
    )
}

/// Adds the findings of `out` to the record, per detector (counts, paths, salted hashes).
pub(crate) fn summarise(out: &sluice_dlp::extract::Outcome, rec: &mut RequestRecord) {
    for (detector, count) in out.counts() {
        let mut paths: Vec<String> = Vec::new();
        let mut hashes: Vec<String> = Vec::new();
        for f in out.findings.iter().filter(|f| f.detector == detector) {
            if paths.len() < 16 && !paths.contains(&f.path) {
                paths.push(f.path.clone());
            }
            if hashes.len() < 16 && !hashes.contains(&f.hash) {
                hashes.push(f.hash.clone());
            }
        }
        rec.dlp_findings.push(DlpSummary { detector, count, paths, hashes });
    }
}

/// Adds the DLP findings of `from` (a WebSocket message's record) to `into` (its
/// connection's), per detector.
pub(crate) fn merge_findings(into: &mut RequestRecord, from: &RequestRecord) {
    if into.dlp_profile.is_none() {
        into.dlp_profile.clone_from(&from.dlp_profile);
    }
    if into.dlp_salt.is_none() {
        into.dlp_salt.clone_from(&from.dlp_salt);
    }
    for f in &from.dlp_findings {
        match into.dlp_findings.iter_mut().find(|s| s.detector == f.detector) {
            Some(s) => {
                s.count += f.count;
                for p in &f.paths {
                    if s.paths.len() < 16 && !s.paths.contains(p) {
                        s.paths.push(p.clone());
                    }
                }
                for h in &f.hashes {
                    if s.hashes.len() < 16 && !s.hashes.contains(h) {
                        s.hashes.push(h.clone());
                    }
                }
            }
            None => into.dlp_findings.push(f.clone()),
        }
    }
    // The connection's action is the strongest any message got.
    let rank = |a: Option<&str>| match a {
        Some("block") => 4,
        Some("redact") => 3,
        Some("alert") => 2,
        Some("clean") => 1,
        _ => 0,
    };
    if rank(from.dlp_action) > rank(into.dlp_action) {
        into.dlp_action = from.dlp_action;
    }
}
