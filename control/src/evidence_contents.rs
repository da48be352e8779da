//! What a trusted bundle's files say, read in the manifest's order ([`super::check_tar`]): the
//! chain segments walked against their checkpoints, every record of the window found once in
//! a segment, the recordings (when included) each named by one of the window's request
//! records, the summary recomputed and the rule versions held to control's chained entries.

use std::io::{BufRead, BufReader, Read};

use serde_json::Value;
use sha2::{Digest, Sha256};
use sluice_audit::{Checkpoint, Link, Row, Verifier};

use super::{Check, MAX_SMALL, Member, next_line};
use crate::audit_verify::note_gap;
use crate::chains::CONTROL_CHAIN;
use crate::evidence::Segment;
use crate::evidence_summary::html;

/// Reads one file's content for what it says.
pub(super) fn read_file(c: &mut Check, name: &str, r: &mut impl Read) -> std::io::Result<()> {
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
    } else if name == "recordings.jsonl" {
        let mut k = 0u64;
        while let Some(ok) = next_line(&mut r, &mut line)? {
            k += 1;
            match ok.ok().and_then(|()| serde_json::from_slice::<Value>(&line).ok()) {
                Some(v) => recording_line(c, &v, &line),
                None => c.problem(name, format!("recording {k} does not read")),
            }
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
    if c.with_recordings
        && let Some(id) = v["recording"]["id"].as_str()
    {
        name_recording(c, id, v);
    }
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
        Some(m) if *m.dataplane != *dp => {
            c.problem(
                "records.jsonl",
                format!("record {k} names another data plane than its chain's"),
            );
        }
        Some(m) => m.seen = true,
    }
}

/// What a recording's request record and its line in `recordings.jsonl` must agree on:
/// where, when, whose, which request, its size and its sealed form's SHA-256.
fn recording_digest(v: &Value, bytes: u64, sealed_sha256: &str) -> Link {
    let mut h = Sha256::new();
    for k in ["dataplane", "identity", "user", "src", "sni", "method", "path", "rule"] {
        let s = v[k].as_str().unwrap_or("");
        h.update((s.len() as u64).to_be_bytes());
        h.update(s.as_bytes());
    }
    h.update(v["ts_ms"].as_u64().unwrap_or(0).to_be_bytes());
    h.update(bytes.to_be_bytes());
    h.update(sealed_sha256.as_bytes());
    Link(h.finalize().into())
}

/// A recording the request record `v` names (`rec_` ids only, at most [`MAX_NAMED`]).
fn name_recording(c: &mut Check, id: &str, v: &Value) {
    let ok = id.len() <= 64
        && id.strip_prefix("rec_").is_some_and(|h| h.bytes().all(|b| b.is_ascii_alphanumeric()));
    if !ok {
        c.problem(
            "records.jsonl",
            format!("record {} names a recording that is not one", c.records),
        );
        return;
    }
    if c.named.len() >= super::MAX_NAMED {
        c.problem(
            "records.jsonl",
            "more recordings named than a check holds: the rest are not checked",
        );
        return;
    }
    let note = &v["recording"];
    let sha = note["sealed_sha256"].as_str();
    let digest = recording_digest(v, note["bytes"].as_u64().unwrap_or(0), sha.unwrap_or(""));
    c.named.insert(id.to_owned(), (digest, sha.is_some(), false));
}

/// One line of `recordings.jsonl`: a sealed recording that one of the window's request
/// records names, there once, agreeing with that record on where, when, whose, its size and
/// (when the record names it) its sealed form's hash, so the chained record binds it. (Its
/// id is bound into its sealing too: it opens under no other id.)
fn recording_line(c: &mut Check, v: &Value, line: &[u8]) {
    #[derive(serde::Deserialize)]
    struct Raw<'a> {
        #[serde(borrow)]
        sealed: Option<&'a serde_json::value::RawValue>,
    }
    let id = v["id"].as_str().unwrap_or("");
    let raw = serde_json::from_slice::<Raw<'_>>(line).ok().and_then(|r| r.sealed);
    let sealed = raw.filter(|_| v["sealed"].is_object());
    let sha = sealed.map(|s| Link(Sha256::digest(s.get().as_bytes()).into()).to_hex());
    let bytes = v["bytes"].as_u64().unwrap_or(0);
    let why = match c.named.get_mut(id) {
        None => Some("named by no request record of the window (inserted)"),
        Some(n) if n.2 => Some("there twice (inserted)"),
        Some(_) if sealed.is_none() => Some("not sealed"),
        Some(n)
            if n.0
                != recording_digest(
                    v,
                    bytes,
                    if n.1 { sha.as_deref().unwrap_or("") } else { "" },
                ) =>
        {
            Some("not what its request record says (where, when, whose, size or sealed bytes)")
        }
        Some(n) => {
            n.2 = true;
            None
        }
    };
    if let Some(why) = why {
        let id: String = id.chars().take(64).collect();
        c.problem("recordings.jsonl", format!("recording {id:?} is {why}"));
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
    let dataplane: std::sync::Arc<str> = seg.dataplane.as_deref().unwrap_or("").into();
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
            let m = Member {
                chain: chain.clone(),
                dataplane: dataplane.clone(),
                n,
                in_window,
                seen: false,
            };
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
pub(super) fn finish(c: &mut Check) {
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
