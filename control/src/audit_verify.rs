//! `sluicectl audit verify` on the store (ARCHITECTURE.md, "Evidence"): every chain walked
//! with [`sluice_audit::Verifier`] against the signed checkpoints, control's own chain first
//! (its log says which records of the data planes' chains never arrived: gaps and refusals
//! are reported as such, not as removals). Reads the stores only; the record store on its own
//! connection, so ingestion goes on meanwhile.

use std::collections::HashMap;

use crate::records::EvidenceView;
use serde::Serialize;
use serde_json::Value;
use sluice_audit::{Checkpoint, Finding, Kind, Report, Row, Verifier, VerifyingKey};

use crate::chains::{CONTROL_CHAIN, chain_name};
use crate::rulestore::RuleLog;
use crate::store::StoreError;

/// What to verify.
#[derive(Debug, Clone, Default)]
pub struct Ask {
    /// Only this data plane's chains (control's is always verified).
    pub dataplane: Option<String>,
    /// Start at the last checkpoint signed at or before this unix ms (from the start if none).
    pub since_ms: Option<u64>,
}

/// One chain's result.
#[derive(Debug, Clone, Serialize)]
pub struct ChainResult {
    /// The chain's name in checkpoints.
    pub chain: String,
    /// The data plane (none: control's chain).
    pub dataplane: Option<String>,
    /// The data plane's chain epoch.
    pub epoch: Option<u64>,
    /// Records read.
    pub records: u64,
    /// First and last positions read.
    pub first_seq: Option<u64>,
    /// See `first_seq`.
    pub last_seq: Option<u64>,
    /// Unix ms of the first record read (what retention kept starts there).
    pub first_ts_ms: Option<u64>,
    /// Verification began at the checkpoint of this position (retention, or `since`).
    pub from_checkpoint: Option<u64>,
    /// Checkpoints that matched the chain.
    pub checkpoints_matched: u64,
    /// Each break.
    pub findings: Vec<FindingOut>,
}

/// A break as reported.
#[derive(Debug, Clone, Serialize)]
pub struct FindingOut {
    /// `changed`, `removed`, `inserted`, `reordered`, `gap`, `forged-checkpoint`.
    pub kind: &'static str,
    /// Position (first of a range).
    pub seq: u64,
    /// Last position of a range.
    pub last_seq: Option<u64>,
    /// Where it is stored (`flows:ID`, `requests:ID`, `audit:ID`).
    pub row: Option<String>,
    /// In words.
    pub detail: String,
}

/// The whole answer.
#[derive(Debug, Clone, Serialize)]
pub struct Verification {
    /// No break anywhere.
    pub clean: bool,
    /// The public key checkpoints were verified with (hex).
    pub key: String,
    /// Per chain.
    pub chains: Vec<ChainResult>,
}

/// Storage positions are packed as table × 2⁶² + row id for the verifier; this unpacks them.
fn row_name(pos: u64) -> String {
    let table = match pos >> 62 {
        0 => "audit",
        1 => "flows",
        _ => "requests",
    };
    format!("{table}:{}", pos & ((1 << 62) - 1))
}

fn pos(table: u64, id: i64) -> u64 {
    (table << 62) | (u64::try_from(id).unwrap_or(0) & ((1 << 62) - 1))
}

pub(crate) fn out(f: Finding) -> FindingOut {
    FindingOut {
        kind: f.kind.as_str(),
        seq: f.seq,
        last_seq: f.last_seq,
        row: f.pos.map(row_name),
        detail: f.detail,
    }
}

pub(crate) fn result(
    chain: String,
    dataplane: Option<String>,
    epoch: Option<u64>,
    r: Report,
    first_ts: Option<u64>,
) -> ChainResult {
    ChainResult {
        chain,
        dataplane,
        epoch,
        records: r.records,
        first_seq: r.first_seq,
        last_seq: r.last_seq,
        first_ts_ms: first_ts,
        from_checkpoint: r.from_checkpoint,
        checkpoints_matched: r.checkpoints_matched,
        findings: r.findings.into_iter().map(out).collect(),
    }
}

/// Checkpoints by chain name.
pub(crate) type ByChain = HashMap<String, Vec<Checkpoint>>;

/// The checkpoints as stored, by chain; lines that do not read are findings of their own.
pub(crate) fn checkpoints(rules: &dyn RuleLog) -> Result<(ByChain, Vec<FindingOut>), StoreError> {
    let mut by_chain: HashMap<String, Vec<Checkpoint>> = HashMap::new();
    let mut bad = Vec::new();
    for (id, line) in rules.checkpoint_lines()? {
        match Checkpoint::parse_line(&line) {
            Ok(c) => by_chain.entry(c.chain.clone()).or_default().push(c),
            Err(e) => bad.push(FindingOut {
                kind: Kind::ForgedCheckpoint.as_str(),
                seq: 0,
                last_seq: None,
                row: Some(format!("checkpoints:{id}")),
                detail: format!("a stored checkpoint does not read: {e}"),
            }),
        }
    }
    Ok((by_chain, bad))
}

/// Where a walk starts for `since_ms`: after the last checkpoint signed by then.
fn start(cps: &[Checkpoint], since_ms: Option<u64>) -> u64 {
    since_ms.and_then(|t| cps.iter().filter(|c| c.ts_ms <= t).map(|c| c.seq).max()).unwrap_or(0)
}

/// Verifies every chain of the stores.
pub fn verify(
    flows: &dyn EvidenceView,
    rules: &dyn RuleLog,
    key: &VerifyingKey,
    ask: &Ask,
) -> Result<Verification, StoreError> {
    let (mut cps, bad) = checkpoints(rules)?;
    // Control's chain; on the way, what its log says never arrived of the data planes'.
    let mut gaps: HashMap<String, Vec<(u64, u64, String)>> = HashMap::new();
    let control_cps = cps.remove(CONTROL_CHAIN).unwrap_or_default();
    let after = start(&control_cps, ask.since_ms);
    let mut v = Verifier::new(CONTROL_CHAIN, key, control_cps);
    v.start_after(after);
    if let Some((n, _)) = rules.chain_head()? {
        v.expect_head(n);
    }
    let mut first_ts = None;
    rules.walk_chain(after, &mut |e| {
        note_gap(&e.action, &e.detail, &mut gaps);
        if first_ts.is_none() {
            first_ts =
                serde_json::from_slice::<Value>(&e.bytes).ok().and_then(|v| v["ts_ms"].as_u64());
        }
        v.push(Row { pos: pos(0, e.id), seq: e.n, prev: e.prev, link: e.link, record: &e.bytes });
    })?;
    let mut control = result(CONTROL_CHAIN.into(), None, None, v.finish(), first_ts);
    control.findings.extend(bad);
    let mut chains = vec![control];
    for ((dp, epoch), (head_n, _)) in flows.heads()? {
        if ask.dataplane.as_ref().is_some_and(|d| *d != dp) {
            continue;
        }
        let name = chain_name(&dp, epoch);
        let chain_cps = cps.remove(&name).unwrap_or_default();
        let after = start(&chain_cps, ask.since_ms);
        let mut v = Verifier::new(&name, key, chain_cps);
        v.start_after(after);
        v.expect_head(head_n);
        for (from, to, why) in gaps.remove(&name).unwrap_or_default() {
            v.expect_gap(from, to, &why);
        }
        let mut first_ts = None;
        let mut columns = Vec::new();
        flows.walk(&dp, epoch, after, &mut |r| {
            first_ts = first_ts.or(Some(r.columns.ts_ms));
            let sent = crate::record::as_sent(&r.record, &dp);
            let bytes = sent.as_deref().unwrap_or(&r.record).as_bytes();
            let prev = crate::record::chain_prev(bytes).unwrap_or(sluice_audit::GENESIS);
            let table = if r.table == 'f' { 1 } else { 2 };
            v.push(Row { pos: pos(table, r.id), seq: r.n, prev, link: r.link, record: bytes });
            // The columns queries filter on and retention goes by must say what the record
            // says, or a row could be hidden from a query, or aged out early, unnoticed.
            if let Some(col) = columns_differ(&r, &dp) {
                columns.push(FindingOut {
                    kind: Kind::Changed.as_str(),
                    seq: r.n,
                    last_seq: None,
                    row: Some(row_name(pos(table, r.id))),
                    detail: format!("its indexed column {col} does not say what the record says"),
                });
            }
        })?;
        let mut res = result(name, Some(dp), Some(epoch), v.finish(), first_ts);
        // A record found changed already needs no second finding for its columns.
        columns.retain(|c| !res.findings.iter().any(|f| f.kind == c.kind && f.seq == c.seq));
        res.findings.extend(columns);
        chains.push(res);
    }
    let clean = chains.iter().all(|c| c.findings.is_empty());
    Ok(Verification { clean, key: sluice_audit::Link(key.to_bytes()).to_hex(), chains })
}

/// The first indexed column of stored row `r` that differs from its record's text.
fn columns_differ(r: &crate::chainstore::ChainRow, dataplane: &str) -> Option<&'static str> {
    let sent = crate::record::as_sent(&r.record, dataplane)?;
    let Some(row) = crate::record::Row::read(&sent, dataplane) else { return Some("record") };
    let c = &r.columns;
    let text = |v: &Option<std::borrow::Cow<'_, str>>| v.as_deref().map(str::to_owned);
    [
        ("ts_ms", c.ts_ms == row.ts_ms),
        ("identity", c.identity == text(&row.identity)),
        ("user", c.user == text(&row.user)),
        ("src", c.src == text(&row.src)),
        ("sni", c.sni == text(&row.sni)),
        ("category", c.category == text(&row.category)),
        ("verdict", c.verdict == text(&row.verdict)),
        ("rule", c.rule == text(&row.rule)),
        ("detectors", r.table == 'f' || c.detectors == row.detectors()),
    ]
    .into_iter()
    .find(|(_, same)| !same)
    .map(|(name, _)| name)
}

/// Reads a gap or a refusal control wrote to its log about a data plane's chain.
pub(crate) fn note_gap(
    action: &str,
    detail: &str,
    gaps: &mut HashMap<String, Vec<(u64, u64, String)>>,
) {
    let Ok(d) = serde_json::from_str::<Value>(detail) else { return };
    let Some(chain) = d["chain"].as_str() else { return };
    let (from, to, why) = match action {
        "chain.gap" => match (d["from"].as_u64(), d["to"].as_u64()) {
            (Some(f), Some(t)) => (f, t, "never arrived (the data plane lost them, or the store began after them), recorded at ingest".to_owned()),
            _ => return,
        },
        "chain.refused" => match d["n"].as_u64() {
            Some(n) => (n, n, format!("refused at ingest: {}", d["reason"].as_str().unwrap_or("?"))),
            None => return,
        },
        _ => return,
    };
    gaps.entry(chain.to_owned()).or_default().push((from, to, why));
}

#[cfg(test)]
#[path = "audit_verify_tests.rs"]
mod tests;
