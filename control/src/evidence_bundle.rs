//! An evidence bundle as a file (ARCHITECTURE.md, "Evidence"): the files [`crate::evidence`]
//! wrote, packed as a tar archive compressed with zstd, the signed manifest first; and the
//! offline check of one, without the daemon: the manifest's signature (and the key pinned),
//! every file's hash and length against the manifest, every chain segment walked against its
//! signed checkpoints, every record of the window found in a chain, the summary recomputed
//! from the records and the page from the summary. The archive is read as a stream, bounded:
//! hostile bundles (names, sizes, bombs) get a finding or an error, never a write to disk.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, Read, Write};
use std::path::Path;

use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use sluice_audit::{Checkpoint, Link, VerifyingKey};

use crate::audit_verify::{ChainResult, FindingOut, Verification};
use crate::chains::CONTROL_CHAIN;
use crate::evidence::{FileEntry, Segment};
use crate::evidence_summary::Summary;

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
    /// The recordings, when the bundle includes them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recordings: Option<Recordings>,
    /// Problems with the files.
    pub problems: Vec<Problem>,
}

/// The recordings of a bundle that includes them.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct Recordings {
    /// Recordings in the bundle (each named by one of the window's request records).
    pub included: u64,
    /// Recordings the window's request records name that the store no longer kept
    /// (recordings have a retention of their own).
    pub not_kept: u64,
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

/// Most recordings a bundle's records may name (each is remembered while the check runs).
const MAX_NAMED: usize = 2_000_000;

/// A record of a data plane's chain segment, as `records.jsonl` must hold it.
struct Member {
    chain: std::sync::Arc<str>,
    dataplane: std::sync::Arc<str>,
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
    /// Recording ids the window's request records name (with recordings only): what the
    /// record says of it (digest), whether it names the sealed form's hash, and whether the
    /// bundle holds it.
    named: HashMap<String, (Link, bool, bool)>,
    /// Whether the bundle includes recordings.
    with_recordings: bool,
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
    if m.files.iter().any(|f| f.name == "recordings.jsonl") {
        expect.push("recordings.jsonl");
    }
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
        named: HashMap::new(),
        with_recordings: m.files.iter().any(|f| f.name == "recordings.jsonl"),
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
            contents::read_file(&mut c, &name, &mut h)?;
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
        contents::finish(&mut c);
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
    let recordings = c.with_recordings.then(|| {
        let included = c.named.values().filter(|n| n.2).count() as u64;
        Recordings { included, not_kept: c.named.len() as u64 - included }
    });
    Ok(BundleCheck {
        clean,
        key: c.key_hex,
        since_ms: m.window.since_ms,
        until_ms: m.window.until_ms,
        files,
        records: c.records,
        unchained_records: c.unchained,
        chains: c.chains,
        recordings,
        problems: c.problems,
    })
}

#[path = "evidence_contents.rs"]
mod contents;

#[cfg(test)]
#[path = "evidence_tests.rs"]
mod tests;
