//! DLP over request bodies: the rule's profile (block, redact, alert) over the decoded body,
//! its findings summarised into the request record (detectors, counts, paths and salted
//! hashes, never values). Pure; called by the body phase ([`crate::phases`]).

use sluice_dlp::{DetectorSet, Scanner};
use sluice_rules::DlpAction;

use crate::block::Refusal;
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
    pub salt: std::sync::Arc<[u8]>,
}

/// Runs the profile over a decoded request body and fills the record. `Ok(Some(body))`: the
/// redacted body replaces it (decoded); `Err`: the request is refused (profile action block).
pub(crate) fn scan(
    dlp: &Dlp,
    content_type: Option<&[u8]>,
    plain: &[u8],
    rule: Option<&str>,
    rec: &mut RequestRecord,
) -> Result<Option<Vec<u8>>, Refusal> {
    rec.dlp_profile = Some(dlp.profile.clone());
    if plain.is_empty() {
        rec.dlp_action = Some("clean");
        return Ok(None);
    }
    let out = sluice_dlp::extract::inspect(
        &dlp.scanner,
        &dlp.set,
        sluice_dlp::extract::Request {
            content_type,
            body: plain,
            redact: dlp.action == DlpAction::Redact,
            salt: &dlp.salt,
        },
    );
    rec.unscanned.clone_from(&out.unscanned);
    summarise(&out, rec);
    if out.findings.is_empty() {
        rec.dlp_action = Some("clean");
        return Ok(None);
    }
    match dlp.action {
        DlpAction::Block => {
            rec.dlp_action = Some("block");
            Err(violation(&out, rule))
        }
        DlpAction::Redact => {
            rec.dlp_action = Some("redact");
            Ok(out.redacted)
        }
        DlpAction::Alert => {
            rec.dlp_action = Some("alert");
            Ok(None)
        }
    }
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

/// The credential detectors of the registry: what response masking replaces.
pub(crate) fn credential_set(scanner: &Scanner) -> DetectorSet {
    let names: Vec<&str> =
        sluice_dlp::DETECTORS.iter().filter(|d| d.family == "credential").map(|d| d.name).collect();
    scanner.profile(&names).unwrap_or_default()
}
