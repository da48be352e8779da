//! The evidence export (ARCHITECTURE.md, "Evidence"): the records of a window, the chain
//! segments that cover them between signed checkpoints, the rule versions in force with each
//! data plane's acknowledgement, the public key and a summary, written as the files of a
//! bundle with a signed manifest of their hashes ([`crate::evidence_bundle`] packs and checks
//! them). Reads the stores at one moment (the caller holds their snapshots); writes into a
//! directory of its own.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sluice_audit::{Checkpoint, Link};

use crate::chains::{CONTROL_CHAIN, chain_name};
use crate::evidence_summary::{Summary, html};
use crate::records::EvidenceView;
use crate::rulestore::RuleLog;
use crate::store::StoreError;

/// What to export.
#[derive(Debug, Clone)]
pub struct Window {
    /// First unix ms (inclusive).
    pub since_ms: u64,
    /// End unix ms (exclusive: the months of monthly exports do not overlap).
    pub until_ms: u64,
    /// Azure OpenAI resources' regions, for the summary's residency table.
    pub azure_regions: BTreeMap<String, String>,
    /// Include the window's recordings (sealed to the customer's key, as stored).
    pub recordings: bool,
    /// Where the store keeps recordings' sealed bytes (none: in its rows).
    pub recordings_dir: Option<PathBuf>,
}

/// A chain segment of the bundle: positions `after + 1 ..= upto`, each a line of `file`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Segment {
    /// The chain's name in checkpoints.
    pub chain: String,
    /// Its file in the bundle.
    pub file: String,
    /// The checkpoint (or the chain's start, 0) the segment continues from.
    pub after: u64,
    /// Its last position: a checkpoint's when one was signed at or after the window.
    pub upto: u64,
    /// The data plane whose chain it is (none: control's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataplane: Option<String>,
    /// That data plane's chain epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
}

/// One file written, as the manifest lists it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct FileEntry {
    /// Path inside the bundle.
    pub name: String,
    /// SHA-256, hex.
    pub sha256: String,
    /// Length.
    pub bytes: u64,
}

/// A file being written, hashed as it goes.
struct Hashed {
    name: String,
    out: BufWriter<File>,
    hash: Sha256,
    bytes: u64,
}

impl Hashed {
    fn line(&mut self, text: &[u8]) -> std::io::Result<()> {
        self.write(text)?;
        self.write(b"\n")
    }

    fn write(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.hash.update(b);
        self.bytes += b.len() as u64;
        self.out.write_all(b)
    }

    fn done(mut self) -> std::io::Result<FileEntry> {
        self.out.flush()?;
        Ok(FileEntry {
            name: self.name,
            sha256: Link(self.hash.finalize().into()).to_hex(),
            bytes: self.bytes,
        })
    }
}

/// The bundle's files, in the order they are packed.
struct Files {
    dir: PathBuf,
    done: Vec<FileEntry>,
}

impl Files {
    fn create(&self, name: &str) -> std::io::Result<Hashed> {
        let path = self.dir.join(name);
        if let Some(p) = path.parent() {
            std::fs::create_dir_all(p)?;
        }
        Ok(Hashed {
            name: name.to_owned(),
            out: BufWriter::new(File::create(path)?),
            hash: Sha256::new(),
            bytes: 0,
        })
    }

    fn whole(&mut self, name: &str, bytes: &[u8]) -> std::io::Result<()> {
        let mut f = self.create(name)?;
        f.write(bytes)?;
        self.done.push(f.done()?);
        Ok(())
    }
}

/// Why an export failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// A store could not be read.
    #[error("reading the stores: {0}")]
    Store(#[from] StoreError),
    /// SQLite.
    #[error("reading the stores: {0}")]
    Sql(#[from] rusqlite::Error),
    /// The bundle's directory.
    #[error("writing the bundle: {0}")]
    Io(#[from] std::io::Error),
}

fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The segment of a chain holding positions `first..=last`: from the last checkpoint before
/// `first` to the first at or after `last` (the head when none is signed yet).
fn segment(cps: &[Checkpoint], first: u64, last: u64, head: u64) -> (u64, u64) {
    let after = cps.iter().map(|c| c.seq).filter(|s| *s < first).max().unwrap_or(0);
    let upto = cps.iter().map(|c| c.seq).filter(|s| *s >= last).min().unwrap_or(head);
    (after, upto)
}

/// One chain line: position, the link before, the link, the record as chained.
fn chain_line(n: u64, prev: &Link, link: &Link, record: &str) -> Vec<u8> {
    serde_json::to_vec(
        &json!({"n": n, "prev": prev.to_hex(), "link": link.to_hex(), "record": record}),
    )
    .unwrap_or_default()
}

/// Writes the files of the bundle of `w` into `dir` (created empty), signing the manifest
/// with `sign`. Returns the manifest's entries.
pub fn export(
    flows: &dyn EvidenceView,
    rules: &dyn RuleLog,
    key: &str,
    w: &Window,
    dir: &Path,
    sign: impl FnOnce(&[u8]) -> [u8; 64],
) -> Result<Vec<FileEntry>, ExportError> {
    std::fs::create_dir_all(dir)?;
    let mut files = Files { dir: dir.to_owned(), done: Vec::new() };
    let (mut cps, _) = crate::audit_verify::checkpoints(rules)?;
    let mut summary = Summary::new(w.since_ms, w.until_ms, w.azure_regions.clone());
    let mut segments = Vec::new();
    let (since, until) = (i(w.since_ms), i(w.until_ms));
    let mut chain_files = Vec::new();
    // The data planes' chains with records in the window.
    let ranges = flows.chain_ranges(since, until)?;
    let heads = flows.heads()?;
    // The earliest record of any segment: control's log from then on says which positions
    // never arrived or were refused.
    let mut earliest = w.since_ms;
    for (k, ((dp, epoch), (first, last))) in ranges.into_iter().enumerate() {
        let chain = chain_name(&dp, epoch);
        let head = heads.get(&(dp.clone(), epoch)).map_or(last, |h| h.0);
        let chain_cps = cps.get(&chain).map(Vec::as_slice).unwrap_or_default();
        let (after, upto) = segment(chain_cps, first, last, head);
        let name = format!("chains/dataplane-{k}.jsonl");
        let mut f = files.create(&name)?;
        let mut err = None;
        flows.walk(&dp, epoch, after, &mut |r| {
            if r.n > upto || err.is_some() {
                return;
            }
            earliest = earliest.min(r.columns.ts_ms);
            let sent = crate::record::as_sent(&r.record, &dp);
            let text = sent.as_deref().unwrap_or(&r.record);
            let prev = crate::record::chain_prev(text.as_bytes()).unwrap_or(sluice_audit::GENESIS);
            if let Err(x) = f.line(&chain_line(r.n, &prev, &r.link, text)) {
                err = Some(x);
            }
        })?;
        if let Some(e) = err {
            return Err(e.into());
        }
        chain_files.push(f.done()?);
        segments.push(Segment {
            chain,
            file: name,
            after,
            upto,
            dataplane: Some(dp),
            epoch: Some(epoch),
        });
    }

    // Control's chain: from its first entry of the window, of the data planes' segments (their
    // gaps and refusals), or about the rule versions in force (pushes, acknowledgements), to
    // its head.
    let versions = rules_in_force(rules, since, until)?;
    let in_force: Vec<i64> = versions.iter().map(|v| v.version).collect();
    let span = rules.audit_span(i(earliest), until, &in_force)?;
    if let Some((first, _)) = span {
        // To the head (signed just before the export): a gap or refusal in a data plane's
        // segment may be noted after the window ends.
        let head = rules.chain_head()?.map_or(0, |(n, _)| n);
        let control_cps = cps.get(CONTROL_CHAIN).map(Vec::as_slice).unwrap_or_default();
        let (after, upto) = segment(control_cps, first, head, head);
        let name = "chains/control.jsonl".to_owned();
        let mut f = files.create(&name)?;
        let mut err = None;
        rules.walk_chain(after, &mut |e| {
            if e.n > upto || err.is_some() {
                return;
            }
            let text = String::from_utf8_lossy(&e.bytes);
            if let Ok(v) = serde_json::from_slice::<Value>(&e.bytes) {
                summary.control_entry(&v);
            }
            if let Err(x) = f.line(&chain_line(e.n, &e.prev, &e.link, &text)) {
                err = Some(x);
            }
        })?;
        if let Some(e) = err {
            return Err(e.into());
        }
        // Control's segment goes first: its log says what the data planes' chains lack.
        chain_files.insert(0, f.done()?);
        segments.insert(
            0,
            Segment {
                chain: CONTROL_CHAIN.into(),
                file: name,
                after,
                upto,
                dataplane: None,
                epoch: None,
            },
        );
    }

    // The checkpoints of the segments.
    let mut lines = Vec::new();
    for s in &segments {
        for c in cps.remove(&s.chain).unwrap_or_default() {
            if c.seq >= s.after && c.seq <= s.upto {
                lines.push(c.to_line());
            }
        }
    }
    files.whole(
        "checkpoints.jsonl",
        lines.iter().map(|l| format!("{l}\n")).collect::<String>().as_bytes(),
    )?;
    files.done.extend(chain_files);

    // The records of the window.
    let mut f = files.create("records.jsonl")?;
    flows.each_record(since, until, &mut |text| {
        if let Ok(v) = serde_json::from_str::<Value>(text) {
            summary.record(&v);
        }
        f.line(text.as_bytes())
    })?;
    files.done.push(f.done()?);

    // The recordings, when asked for: still sealed to the customer's key.
    if w.recordings {
        let mut f = files.create("recordings.jsonl")?;
        flows.each_recording(w.recordings_dir.as_deref(), since, until, &mut |r, sealed| {
            // The sealed form exactly as stored: the request record names its hash.
            let mut line = serde_json::to_string(r).unwrap_or_default();
            line.pop();
            line.push_str(",\"sealed\":");
            match serde_json::from_str::<&serde_json::value::RawValue>(sealed) {
                Ok(_) => line.push_str(sealed),
                Err(_) => line.push_str(&Value::String(sealed.to_owned()).to_string()),
            }
            line.push('}');
            f.line(line.as_bytes())
        })?;
        files.done.push(f.done()?);
    }

    // The rule versions in force, and each data plane's acknowledgement.
    let mut listed = Vec::new();
    for v in versions {
        let name = format!("rules/v{}.toml", v.version);
        files.whole(&name, v.text.as_bytes())?;
        let acks = acks_of(rules, v.version)?;
        listed.push(json!({
            "version": v.version, "pushed_ms": v.ts_ms, "author": v.author, "note": v.note,
            "file": name, "sha256": text_sha256(&v.text),
            "acknowledgements": acks,
        }));
    }
    files.whole("rules/versions.json", &serde_json::to_vec_pretty(&listed).unwrap_or_default())?;

    let s = summary.to_json();
    files.whole("summary.json", &serde_json::to_vec_pretty(&s).unwrap_or_default())?;
    files.whole("summary.html", html(&s).as_bytes())?;
    files.whole(
        "key.json",
        json!({"algorithm": "ed25519", "public_key": key}).to_string().as_bytes(),
    )?;

    let manifest = json!({
        "format": crate::evidence_bundle::FORMAT,
        "created_ms": crate::link::now_ms(),
        "window": {"since_ms": w.since_ms, "until_ms": w.until_ms},
        "public_key": key,
        "segments": segments,
        "azure_regions": w.azure_regions,
        "files": files.done,
    });
    let bytes = serde_json::to_vec_pretty(&manifest).unwrap_or_default();
    std::fs::write(dir.join("manifest.json"), &bytes)?;
    let sig = sign(&bytes);
    std::fs::write(
        dir.join("manifest.sig"),
        format!("{}\n", sluice_audit::checkpoint::signature_to_hex(&sig)),
    )?;
    Ok(files.done)
}

/// SHA-256 of a rule file's text, hex: rule pushes and rollbacks write it to control's chained
/// log, so a bundle's rule files can be held to what was pushed.
pub fn text_sha256(text: &str) -> String {
    Link(Sha256::digest(text.as_bytes()).into()).to_hex()
}

/// The rule version in force at `since` and every one pushed until `until`.
fn rules_in_force(
    rules: &dyn RuleLog,
    since: i64,
    until: i64,
) -> Result<Vec<crate::rulestore::RuleVersion>, StoreError> {
    let all = rules.history()?;
    let before = all.iter().filter(|v| v.ts_ms <= since).map(|v| v.version).max();
    let mut out = Vec::new();
    for v in all {
        if (Some(v.version) == before || (v.ts_ms > since && v.ts_ms < until))
            && let Some(full) = rules.get(v.version)?
        {
            out.push(full);
        }
    }
    out.sort_by_key(|v| v.version);
    Ok(out)
}

/// Each data plane's answers to version `v`, as control's audit log holds them.
fn acks_of(rules: &dyn RuleLog, v: i64) -> Result<Vec<Value>, StoreError> {
    let mut out = Vec::new();
    for crate::rulestore::Ack { ts_ms: ts, who, detail, n } in rules.acks(v)? {
        let d: Value = serde_json::from_str(&detail).unwrap_or(Value::Null);
        out.push(json!({
            "ts_ms": ts, "dataplane": d["dataplane"].as_str().unwrap_or(who.trim_start_matches("dataplane:")),
            "status": d["status"], "error": d["error"], "audit_position": n,
        }));
    }
    Ok(out)
}
