//! An evidence bundle as a file (ARCHITECTURE.md, "Evidence"): the files [`crate::evidence`]
//! wrote, packed as a tar archive compressed with zstd, the signed manifest first; and the
//! offline check of one, without the daemon: the manifest's signature (and the key pinned),
//! every file's hash and length against the manifest, every chain segment walked against its
//! signed checkpoints, every record of the window found in a chain, the summary recomputed
//! from the records and the page from the summary. The archive is read as a stream, bounded:
//! hostile bundles (names, sizes, bombs) get a finding or an error, never a write to disk.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;

use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use sluice_audit::{Checkpoint, Link, Row, Verifier, VerifyingKey};

use crate::audit_verify::{ChainResult, FindingOut, Verification, note_gap};
use crate::chains::CONTROL_CHAIN;
use crate::evidence::{FileEntry, Segment};
use crate::evidence_summary::{Summary, html};

/// The manifest's `format`.
pub const FORMAT: &str = "sluice-evidence/1";
/// Largest manifest, signature, summary or key file read whole.
const MAX_SMALL: u64 = 64 << 20;
/// Longest line of a chain or record file.
const MAX_LINE: usize = 16 << 20;
/// Most files in a bundle.
const MAX_FILES: usize = 100_000;

/// Packs the bundle written in `dir` (its manifest's files, in order) into `out`, zstd level 3.
pub fn pack(dir: &Path, files: &[FileEntry], out: &mut impl Write) -> std::io::Result<()> {
    let mut z = zstd::Encoder::new(out, 3)?;
    {
        let mut t = tar::Builder::new(&mut z);
        t.mode(tar::HeaderMode::Deterministic);
        for name in ["manifest.json", "manifest.sig"]
            .into_iter()
            .chain(files.iter().map(|f| f.name.as_str()))
        {
            t.append_path_with_name(dir.join(name), name)?;
        }
        t.finish()?;
    }
    z.finish()?;
    Ok(())
}

/// A problem with a bundle's files (the chains' own findings are in [`BundleCheck::chains`]).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Problem {
    /// The file.
    pub file: String,
    /// In words.
    pub detail: String,
}

/// What the check of a bundle found.
#[derive(Debug, Clone, Serialize)]
pub struct BundleCheck {
    /// Nothing found.
    pub clean: bool,
    /// The key the manifest names (hex).
    pub key: String,
    /// The window.
    pub since_ms: u64,
    /// See `since_ms`.
    pub until_ms: u64,
    /// Files read.
    pub files: u64,
    /// Records of the window, and how many of them are in no chain (an earlier version's).
    pub records: u64,
    /// See `records`.
    pub unchained_records: u64,
    /// Each chain segment's walk.
    pub chains: Vec<ChainResult>,
    /// Problems with the files.
    pub problems: Vec<Problem>,
}

impl BundleCheck {
    /// The chains' part, as `sluicectl audit verify` reports a store's (problems with the
    /// manifest and its hashes count as findings of control's chain, so nothing is lost).
    pub fn chains_only(&self) -> Verification {
        let mut chains = self.chains.clone();
        if !self.problems.is_empty() {
            let extra = self.problems.iter().map(|p| FindingOut {
                kind: "changed",
                seq: 0,
                last_seq: None,
                row: Some(p.file.clone()),
                detail: p.detail.clone(),
            });
            match chains.first_mut() {
                Some(c) => c.findings.extend(extra),
                None => chains.push(ChainResult {
                    chain: "bundle".into(),
                    dataplane: None,
                    epoch: None,
                    records: 0,
                    first_seq: None,
                    last_seq: None,
                    first_ts_ms: None,
                    from_checkpoint: None,
                    checkpoints_matched: 0,
                    findings: extra.collect(),
                }),
            }
        }
        let clean = chains.iter().all(|c| c.findings.is_empty());
        Verification { clean, key: self.key.clone(), chains }
    }
}

/// Why a bundle could not be read at all.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// Not a zstd-compressed tar archive, or cut short.
    #[error("not a readable evidence bundle (tar.zst): {0}")]
    Archive(#[from] std::io::Error),
    /// The manifest is missing, too large or does not read.
    #[error("the bundle's manifest: {0}")]
    Manifest(String),
}

#[derive(serde::Deserialize)]
struct Manifest {
    format: String,
    window: WindowMs,
    public_key: String,
    segments: Vec<Segment>,
    files: Vec<FileEntry>,
    #[serde(default)]
    azure_regions: BTreeMap<String, String>,
}

#[derive(serde::Deserialize)]
struct WindowMs {
    since_ms: u64,
    until_ms: u64,
}

/// Reads through `inner`, hashing and counting.
struct Hashing<R> {
    inner: R,
    hash: Sha256,
    bytes: u64,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

/// The next line of `r` without its newline, at most [`MAX_LINE`] bytes; `None` at the end.
fn next_line(r: &mut impl BufRead, buf: &mut Vec<u8>) -> std::io::Result<Option<Result<(), ()>>> {
    buf.clear();
    let n = r.by_ref().take(MAX_LINE as u64 + 1).read_until(b'\n', buf)?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
    } else if buf.len() > MAX_LINE {
        // Skip the rest of the overlong line.
        let mut sink = Vec::new();
        while r.by_ref().take(1 << 20).read_until(b'\n', &mut sink)? > 0
            && sink.last() != Some(&b'\n')
        {
            sink.clear();
        }
        return Ok(Some(Err(())));
    }
    Ok(Some(Ok(())))
}

fn name_ok(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 128
        && !n.starts_with('/')
        && !n.split('/').any(|p| p.is_empty() || p == "." || p == "..")
        && n.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'.' | b'-' | b'_'))
}

/// Most problems listed; past it, one line says how many more there were.
const MAX_PROBLEMS: usize = 1_000;

/// A record of a data plane's chain segment, as `records.jsonl` must hold it.
struct Member {
    chain: std::sync::Arc<str>,
    n: u64,
    in_window: bool,
    seen: bool,
}

/// The check as it goes.
struct Check {
    problems: Vec<Problem>,
    more_problems: u64,
    /// The manifest is signed by the (pinned) key and laid out as an export: contents are read.
    trusted: bool,
    key: Option<VerifyingKey>,
    key_hex: String,
    since_ms: u64,
    until_ms: u64,
    checkpoints: HashMap<String, Vec<Checkpoint>>,
    gaps: HashMap<String, Vec<(u64, u64, String)>>,
    segments: HashMap<String, Segment>,
    members: HashMap<[u8; 32], Member>,
    /// Each chaining data plane's earliest record in the bundle (unix ms).
    chains_from: HashMap<String, u64>,
    /// Control's entries about rule versions: (version, action) → (position, detail).
    rule_entries: HashMap<(i64, String), Vec<(u64, Value)>>,
    chains: Vec<ChainResult>,
    summary: Summary,
    summary_json: Option<Value>,
    versions: Option<Value>,
    hashes: BTreeMap<String, String>,
    records: u64,
    unchained: u64,
}

impl Check {
    fn problem(&mut self, file: &str, detail: impl Into<String>) {
        if self.problems.len() < MAX_PROBLEMS {
            self.problems.push(Problem { file: file.into(), detail: detail.into() });
        } else {
            self.more_problems += 1;
        }
    }

    fn in_window(&self, ts: u64) -> bool {
        ts >= self.since_ms && ts < self.until_ms
    }
}

/// The files an export lays out, in its order, for the manifest's segments and rule files; a
/// manifest listing anything else, or in another order, is not an export's.
fn layout(m: &Manifest) -> Result<(), String> {
    let mut chains = HashSet::new();
    for (k, s) in m.segments.iter().enumerate() {
        if !chains.insert(&s.chain) {
            return Err(format!("chain {} has two segments", s.chain));
        }
        let expect = if s.chain == CONTROL_CHAIN {
            if k != 0 {
                return Err("control's segment is not the first".into());
            }
            "chains/control.jsonl".to_owned()
        } else {
            let first_dp =
                usize::from(m.segments.first().is_some_and(|f| f.chain == CONTROL_CHAIN));
            format!("chains/dataplane-{}.jsonl", k - first_dp)
        };
        if s.file != expect || s.dataplane.is_none() != (s.chain == CONTROL_CHAIN) {
            return Err(format!("segment {} is not laid out as an export lays it", s.chain));
        }
    }
    let rules: Vec<&str> = m
        .files
        .iter()
        .map(|f| f.name.as_str())
        .filter(|n| n.starts_with("rules/v") && n.ends_with(".toml"))
        .collect();
    let mut expect: Vec<&str> = vec!["checkpoints.jsonl"];
    expect.extend(m.segments.iter().map(|s| s.file.as_str()));
    expect.push("records.jsonl");
    expect.extend(rules);
    expect.extend(["rules/versions.json", "summary.json", "summary.html", "key.json"]);
    let listed: Vec<&str> = m.files.iter().map(|f| f.name.as_str()).collect();
    if listed != expect {
        return Err("its files are not an export's files, in an export's order".into());
    }
    Ok(())
}

/// Checks the bundle read from `r`; `pinned`: the public key (hex) the checkpoints and the
/// manifest must be signed with.
pub fn check(r: impl Read, pinned: Option<&str>) -> Result<BundleCheck, BundleError> {
    check_tar(zstd::Decoder::new(r)?, pinned)
}

/// [`check`] of the archive once decompressed.
pub fn check_tar(r: impl Read, pinned: Option<&str>) -> Result<BundleCheck, BundleError> {
    let mut a = tar::Archive::new(r);
    // Raw: no long-name or extension member is read into memory for the archive's sake.
    let mut entries = a.entries()?.raw(true);
    let mut small = |what: &str| -> Result<Vec<u8>, BundleError> {
        let e = entries.next().ok_or_else(|| BundleError::Manifest(format!("no {what}")))??;
        let name = String::from_utf8_lossy(&e.path_bytes()).into_owned();
        if name != what || !e.header().entry_type().is_file() {
            return Err(BundleError::Manifest(format!(
                "the bundle begins with {name:?}, not the file {what}"
            )));
        }
        let mut b = Vec::new();
        e.take(MAX_SMALL + 1).read_to_end(&mut b)?;
        if b.len() as u64 > MAX_SMALL {
            return Err(BundleError::Manifest(format!("{what} is too large")));
        }
        Ok(b)
    };
    let manifest_bytes = small("manifest.json")?;
    let sig = small("manifest.sig")?;
    let m: Manifest = serde_json::from_slice(&manifest_bytes)
        .map_err(|e| BundleError::Manifest(e.to_string()))?;
    let mut c = Check {
        problems: Vec::new(),
        more_problems: 0,
        trusted: true,
        key: None,
        key_hex: m.public_key.to_ascii_lowercase(),
        since_ms: m.window.since_ms,
        until_ms: m.window.until_ms,
        checkpoints: HashMap::new(),
        gaps: HashMap::new(),
        segments: m.segments.iter().map(|s| (s.file.clone(), s.clone())).collect(),
        members: HashMap::new(),
        chains_from: HashMap::new(),
        rule_entries: HashMap::new(),
        chains: Vec::new(),
        summary: Summary::new(m.window.since_ms, m.window.until_ms, m.azure_regions.clone()),
        summary_json: None,
        versions: None,
        hashes: BTreeMap::new(),
        records: 0,
        unchained: 0,
    };
    if m.format != FORMAT {
        c.problem("manifest.json", format!("format {:?}, not {FORMAT}", m.format));
        c.trusted = false;
    }
    if let Err(e) = layout(&m) {
        c.problem("manifest.json", format!("not an export's manifest: {e}"));
        c.trusted = false;
    }
    if let Some(p) = pinned
        && !p.trim().eq_ignore_ascii_case(&c.key_hex)
    {
        c.problem(
            "manifest.json",
            format!("signed with key {}, not the pinned {}", c.key_hex, p.trim()),
        );
        c.trusted = false;
    }
    match Link::from_hex(&c.key_hex).and_then(|l| sluice_audit::checkpoint::public_key(&l.0).ok()) {
        Some(k) => {
            let ok =
                sluice_audit::checkpoint::signature_from_hex(String::from_utf8_lossy(&sig).trim())
                    .is_some_and(|s| {
                        sluice_audit::verify_manifest(&k, &manifest_bytes, &s).is_ok()
                    });
            if !ok {
                c.problem("manifest.sig", "the manifest's signature does not verify under its key: the manifest was changed, or signed by another key");
                c.trusted = false;
            }
            c.key = Some(k);
        }
        None => {
            c.problem("manifest.json", "public_key is not an Ed25519 public key");
            c.trusted = false;
        }
    }
    // Files in the manifest's order: each read for what it says only while the bundle is
    // trusted and in order; hashed in any case.
    let listed: HashMap<&str, &FileEntry> = m.files.iter().map(|f| (f.name.as_str(), f)).collect();
    let mut seen = HashSet::new();
    let (mut files, mut next) = (0u64, 0usize);
    for e in entries {
        let e = e?;
        files += 1;
        let name = String::from_utf8_lossy(&e.path_bytes()).into_owned();
        if files as usize > MAX_FILES {
            c.problem(&name, "too many files: the rest is not read");
            break;
        }
        if !name_ok(&name) || !e.header().entry_type().is_file() {
            c.problem(&name, "not a file a bundle holds");
            c.trusted = false;
            continue;
        }
        let Some(entry) = listed.get(name.as_str()) else {
            c.problem(&name, "a file the manifest does not list (added)");
            continue;
        };
        if !seen.insert(name.clone()) {
            c.problem(&name, "the file is in the bundle twice");
            continue;
        }
        if m.files.get(next).map(|f| f.name.as_str()) != Some(name.as_str()) {
            c.problem(&name, "out of the manifest's order (files moved or removed)");
            c.trusted = false;
        }
        next = m.files.iter().position(|f| f.name == name).map_or(next, |p| p + 1);
        let mut h =
            Hashing { inner: e.take(entry.bytes.saturating_add(1)), hash: Sha256::new(), bytes: 0 };
        if c.trusted {
            read_file(&mut c, &name, &mut h)?;
        }
        std::io::copy(&mut h, &mut std::io::sink())?;
        let sha = Link(h.hash.finalize().into()).to_hex();
        if h.bytes != entry.bytes || sha != entry.sha256 {
            c.problem(
                &name,
                format!(
                    "its hash or length is not the manifest's ({} bytes, sha256 {sha}): changed",
                    h.bytes
                ),
            );
        }
        c.hashes.insert(name, sha);
    }
    for f in &m.files {
        if !seen.contains(&f.name) {
            c.problem(&f.name, "listed in the manifest, missing from the bundle (removed)");
        }
    }
    if c.trusted {
        finish(&mut c);
    } else {
        c.problem(
            "manifest.json",
            "the bundle is not as exported: its contents were not read further",
        );
    }
    if c.more_problems > 0 {
        c.problems.push(Problem {
            file: "bundle".into(),
            detail: format!("{} more problems not listed", c.more_problems),
        });
    }
    let clean = c.problems.is_empty() && c.chains.iter().all(|x| x.findings.is_empty());
    Ok(BundleCheck {
        clean,
        key: c.key_hex,
        since_ms: m.window.since_ms,
        until_ms: m.window.until_ms,
        files,
        records: c.records,
        unchained_records: c.unchained,
        chains: c.chains,
        problems: c.problems,
    })
}

/// Reads one file's content for what it says.
fn read_file(c: &mut Check, name: &str, r: &mut impl Read) -> std::io::Result<()> {
    let mut r = BufReader::new(r);
    let mut line = Vec::new();
    if name == "checkpoints.jsonl" {
        while let Some(ok) = next_line(&mut r, &mut line)? {
            match ok.map_err(|()| "line too long".to_string()).and_then(|()| {
                Checkpoint::parse_line(&String::from_utf8_lossy(&line)).map_err(|e| e.to_string())
            }) {
                Ok(cp) => c.checkpoints.entry(cp.chain.clone()).or_default().push(cp),
                Err(e) => c.problem(name, format!("a checkpoint does not read: {e}")),
            }
        }
    } else if let Some(seg) = c.segments.get(name).cloned() {
        chain_file(c, name, &seg, &mut r)?;
    } else if name == "records.jsonl" {
        while let Some(ok) = next_line(&mut r, &mut line)? {
            c.records += 1;
            let v = ok.ok().and_then(|()| serde_json::from_slice::<Value>(&line).ok());
            let Some(v) = v else {
                c.problem(name, format!("record {} does not read", c.records));
                continue;
            };
            record_line(c, &v, &line);
        }
    } else if matches!(name, "summary.json" | "rules/versions.json" | "key.json") {
        let mut b = Vec::new();
        r.take(MAX_SMALL).read_to_end(&mut b)?;
        let v: Option<Value> = serde_json::from_slice(&b).ok();
        match (name, v) {
            (_, None) => c.problem(name, "does not read as JSON"),
            ("summary.json", Some(v)) => c.summary_json = Some(v),
            ("rules/versions.json", Some(v)) => c.versions = Some(v),
            (_, Some(v)) => {
                if v["public_key"].as_str().map(str::to_ascii_lowercase).as_deref()
                    != Some(&c.key_hex)
                {
                    c.problem(name, "names another key than the manifest");
                }
            }
        }
    } else if name == "summary.html" {
        let mut b = Vec::new();
        r.take(MAX_SMALL).read_to_end(&mut b)?;
        let expect = c.summary_json.as_ref().map(html);
        if expect.as_deref().map(str::as_bytes) != Some(&b[..]) {
            c.problem(name, "the page does not say what summary.json says");
        }
    }
    Ok(())
}

/// One line of `records.jsonl`: in the window, and the one copy of a chained record of a
/// segment (or, unchained, from before its data plane chained).
fn record_line(c: &mut Check, v: &Value, line: &[u8]) {
    let k = c.records;
    let ts = v["ts_ms"].as_u64().unwrap_or(0);
    if !c.in_window(ts) {
        c.problem("records.jsonl", format!("record {k} is outside the window"));
    }
    c.summary.record(v);
    let text = String::from_utf8_lossy(line);
    let dp = v["dataplane"].as_str().unwrap_or("");
    if v.get("chain").is_none() {
        // Nothing shows such a record unchanged: evidence only of itself.
        c.unchained += 1;
        let why = if c.chains_from.get(dp).is_some_and(|from| ts >= *from) {
            "its data plane chains by then (inserted)"
        } else {
            "an earlier version's record, or inserted"
        };
        c.problem("records.jsonl", format!("record {k} is in no chain: {why}"));
        return;
    }
    let sent = crate::record::as_sent(&text, dp);
    let bytes = sent.as_deref().unwrap_or(&text).as_bytes();
    let digest: [u8; 32] = Sha256::digest(bytes).into();
    match c.members.get_mut(&digest) {
        None => c.problem(
            "records.jsonl",
            format!("record {k} is in no chain of the bundle (changed or inserted)"),
        ),
        Some(m) if m.seen => {
            c.problem("records.jsonl", format!("record {k} is there twice (inserted)"));
        }
        Some(m) => m.seen = true,
    }
}

/// Walks one chain segment's file.
fn chain_file(
    c: &mut Check,
    name: &str,
    seg: &Segment,
    r: &mut impl BufRead,
) -> std::io::Result<()> {
    let Some(key) = c.key else { return Ok(()) };
    let mut cps = c.checkpoints.remove(&seg.chain).unwrap_or_default();
    if cps.iter().any(|cp| cp.seq < seg.after || cp.seq > seg.upto) {
        c.problem(
            "checkpoints.jsonl",
            format!("a checkpoint of {} outside its segment", seg.chain),
        );
        cps.retain(|cp| cp.seq >= seg.after && cp.seq <= seg.upto);
    }
    let mut v = Verifier::new(&seg.chain, &key, cps);
    v.start_after(seg.after);
    v.expect_head(seg.upto);
    for (from, to, why) in c.gaps.remove(&seg.chain).unwrap_or_default() {
        v.expect_gap(from, to, &why);
    }
    let control = seg.chain == CONTROL_CHAIN;
    let chain: std::sync::Arc<str> = seg.chain.as_str().into();
    let (mut line, mut k, mut first_ts) = (Vec::new(), 0u64, None);
    while let Some(ok) = next_line(r, &mut line)? {
        k += 1;
        let read =
            ok.ok().and_then(|()| serde_json::from_slice::<Value>(&line).ok()).and_then(|l| {
                let link = Link::from_hex(l["link"].as_str()?)?;
                let prev = Link::from_hex(l["prev"].as_str()?)?;
                Some((l["n"].as_u64()?, prev, link, l["record"].as_str()?.to_owned()))
            });
        let Some((n, prev, link, record)) = read else {
            c.problem(name, format!("line {k} does not read as a chain line"));
            continue;
        };
        let bytes = record.as_bytes();
        // A data plane's record names the link before it; control's entries are linked by
        // the line.
        let prev = if control {
            prev
        } else {
            crate::record::chain_prev(bytes).unwrap_or(sluice_audit::GENESIS)
        };
        let parsed = serde_json::from_slice::<Value>(bytes).ok();
        let ts = parsed.as_ref().and_then(|e| e["ts_ms"].as_u64());
        first_ts = first_ts.or(ts);
        if let Some(e) = &parsed
            && control
        {
            control_entry(c, n, e);
        }
        if let (false, Some(dp)) = (control, &seg.dataplane) {
            let from = c.chains_from.entry(dp.clone()).or_insert(u64::MAX);
            *from = (*from).min(ts.unwrap_or(u64::MAX));
            let in_window = ts.is_some_and(|t| c.in_window(t));
            let m = Member { chain: chain.clone(), n, in_window, seen: false };
            c.members.insert(Sha256::digest(bytes).into(), m);
        }
        v.push(Row { pos: k, seq: n, prev, link, record: bytes });
    }
    let report = v.finish();
    let mut res = crate::audit_verify::result(
        seg.chain.clone(),
        seg.dataplane.clone(),
        seg.epoch,
        report,
        first_ts,
    );
    // Positions in a bundle are lines of its file.
    for f in &mut res.findings {
        if let Some(row) = &f.row {
            let line = row.rsplit(':').next().unwrap_or("?");
            f.row = Some(format!("{name}:{line}"));
        }
    }
    c.chains.push(res);
    Ok(())
}

/// An entry of control's chain: counted, its gaps noted, its rule pushes and answers kept.
fn control_entry(c: &mut Check, n: u64, e: &Value) {
    c.summary.control_entry(e);
    let (action, detail) = (e["action"].as_str().unwrap_or(""), e["detail"].as_str().unwrap_or(""));
    note_gap(action, detail, &mut c.gaps);
    if let ("rules.push" | "rules.rollback" | "rules.ack", Some(v)) =
        (action, e["version"].as_i64())
    {
        let d =
            serde_json::from_str::<Value>(detail).unwrap_or_else(|_| Value::String(detail.into()));
        c.rule_entries.entry((v, action.to_owned())).or_default().push((n, d));
    }
}

/// What can be judged only with every file read.
fn finish(c: &mut Check) {
    let leftover: Vec<String> = c.checkpoints.keys().cloned().collect();
    for chain in leftover {
        c.problem("checkpoints.jsonl", format!("checkpoints of {chain}, which has no segment"));
    }
    let missing: Vec<(std::sync::Arc<str>, u64)> = c
        .members
        .values()
        .filter(|m| m.in_window && !m.seen)
        .map(|m| (m.chain.clone(), m.n))
        .collect();
    for (chain, n) in missing {
        c.problem(
            "records.jsonl",
            format!("{chain} position {n} is in the window but not among the records (removed)"),
        );
    }
    match c.summary_json.take() {
        Some(stated) => {
            if c.summary.to_json() != stated {
                c.problem(
                    "summary.json",
                    "the summary does not say what the records and the audit log say",
                );
            }
        }
        None => c.problem("summary.json", "missing"),
    }
    let versions = c.versions.take().unwrap_or(Value::Null);
    for v in versions.as_array().into_iter().flatten() {
        rule_version(c, v);
    }
}

/// A rule version of `versions.json`: its file as listed, its push in control's chain with the
/// same hash, each acknowledgement the chained entry at its position.
fn rule_version(c: &mut Check, v: &Value) {
    let (version, file) = (v["version"].as_i64().unwrap_or(-1), v["file"].as_str().unwrap_or(""));
    let sha = v["sha256"].as_str().unwrap_or("");
    if c.hashes.get(file).map(String::as_str) != Some(sha) {
        c.problem(
            "rules/versions.json",
            format!(
                "version {version} names a rule file {file:?} the bundle does not hold as listed"
            ),
        );
    }
    let pushed = ["rules.push", "rules.rollback"].iter().any(|a| {
        c.rule_entries.get(&(version, (*a).to_owned())).into_iter().flatten().any(|(_, d)| {
            // Pushes of earlier versions name no hash; their text is held to the manifest only.
            d.as_str()
                .is_some_and(|t| !t.contains("sha256 ") || t.ends_with(&format!("sha256 {sha}")))
        })
    });
    if !pushed {
        c.problem(
            "rules/versions.json",
            format!("version {version}: no push of this text in the bundle's control chain"),
        );
    }
    let acks = c.rule_entries.get(&(version, "rules.ack".to_owned())).cloned().unwrap_or_default();
    for a in v["acknowledgements"].as_array().into_iter().flatten() {
        let at = a["audit_position"].as_u64();
        let same = acks.iter().any(|(n, d)| {
            Some(*n) == at && d["dataplane"] == a["dataplane"] && d["status"] == a["status"]
        });
        if !same {
            c.problem(
                "rules/versions.json",
                format!("version {version}: an acknowledgement that is not control's chained entry at {at:?}"),
            );
        }
    }
}

#[cfg(test)]
#[path = "evidence_tests.rs"]
mod tests;
