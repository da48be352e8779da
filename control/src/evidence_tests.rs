//! An exported bundle checks clean offline; every way of changing it is found: a file's bytes,
//! a file removed or added, the manifest re-hashed without the key, the whole bundle re-signed
//! with another key (the pinned key catches it), a record swapped for another.
use std::collections::BTreeMap;

use super::*;
use crate::chains::chain_name;
use crate::evidence::{Window, export};
use crate::record::Row as Record;
use crate::rulestore::{RuleLog, RuleStore};
use crate::store::FlowStore;
use sluice_audit::{GENESIS, Signer};

const DP: &str = "dp1";
/// A recording's sealed form, as the stores' recordings carry it.
const SEALED: &str = r#"{"alg":"aes-256-gcm+age","key":"k","nonce":"n","data":"SEALED"}"#;

/// 40 chained records of one data plane (ts 1001..1040), checkpoints every 10th, a rule
/// version, its acknowledgement and a few control entries, checkpointed.
fn stores(signer: &Signer) -> (FlowStore, RuleStore) {
    let mut flows = FlowStore::open_in_memory().unwrap();
    let mut rules = RuleStore::open_in_memory().unwrap();
    let mut prev = GENESIS;
    for n in 1..=40u64 {
        let kind = if n % 3 == 0 { "request" } else { "flow" };
        let dlp = if n % 3 == 0 {
            format!(
                r#","dlp_findings":[{{"detector":"credit_card","count":1,"hashes":["5a1t"]}}],"recording":{{"id":"rec_{n:02}","bytes":10,"sealed_sha256":"{}"}}"#,
                sluice_audit::Link(sha2::Sha256::digest(SEALED.as_bytes()).into()).to_hex()
            )
        } else {
            String::new()
        };
        let text = format!(
            r#"{{"seq":{n},"chain":{n},"prev":"{prev}","type":"{kind}","ts_ms":{},"identity":"finance","src":"10.0.0.{n}","sni":"api.openai.com","category":"openai","verdict":"{}"{dlp}}}"#,
            1_000 + n,
            if n % 3 == 0 { "block" } else { "allow" }
        );
        let link = sluice_audit::link(&prev, n, text.as_bytes());
        let rows: Vec<Record<'_>> = Record::read(&text, DP).into_iter().collect();
        assert_eq!(flows.ingest(DP, &rows).unwrap(), [true]);
        if n % 10 == 0 {
            rules
                .add_checkpoint(&signer.sign(&chain_name(DP, 0), n, link, 5_000 + n).unwrap())
                .unwrap();
        }
        prev = link;
    }
    // The recordings of the requests (unchained, as data planes send them), but for rec_21's:
    // retention took it.
    for n in (3..=39u64).step_by(3).filter(|n| *n != 21) {
        let text = format!(
            r#"{{"seq":{},"type":"recording","ts_ms":{},"id":"rec_{n:02}","identity":"finance","src":"10.0.0.{n}","sni":"api.openai.com","bytes":10,"sealed":{SEALED}}}"#,
            100 + n,
            1_000 + n
        );
        let rows: Vec<Record<'_>> = Record::read(&text, DP).into_iter().collect();
        assert_eq!(flows.ingest(DP, &rows).unwrap(), [true]);
    }
    let text = "[[rule]]\nname = \"x\"\n";
    let v = rules.add(text, "ops", "push").unwrap();
    let detail = format!("20 bytes, 0 warnings, sha256 {}", crate::evidence::text_sha256(text));
    rules.audit("ops", "rules.push", &detail, Some(v)).unwrap();
    rules
        .audit(
            "dataplane:dp1",
            "rules.ack",
            &serde_json::json!({"dataplane": DP, "version": v, "status": "applied", "error": null})
                .to_string(),
            Some(v),
        )
        .unwrap();
    rules.audit("sec", "approval.deny", "{}", None).unwrap();
    let (cn, head) = rules.chain_head().unwrap().unwrap();
    rules.add_checkpoint(&signer.sign(CONTROL_CHAIN, cn, head, 9_000).unwrap()).unwrap();
    (flows, rules)
}

/// The bundle's files written into a fresh directory.
fn written(since: u64, until: u64) -> (tempdir::Dir, Vec<FileEntry>, Signer) {
    written_after(since, until, |_, _| {})
}

/// [`written`] after `tamper` changed the stores.
fn written_after(
    since: u64,
    until: u64,
    tamper: impl FnOnce(&FlowStore, &RuleStore),
) -> (tempdir::Dir, Vec<FileEntry>, Signer) {
    written_with(since, until, false, tamper)
}

/// [`written_after`], with the recordings or not.
fn written_with(
    since: u64,
    until: u64,
    recordings: bool,
    tamper: impl FnOnce(&FlowStore, &RuleStore),
) -> (tempdir::Dir, Vec<FileEntry>, Signer) {
    let signer = Signer::from_secret(&[5; 32]);
    let (flows, rules) = stores(&signer);
    tamper(&flows, &rules);
    let dir = tempdir::Dir::new();
    let key = sluice_audit::Link(signer.public().to_bytes()).to_hex();
    let w = Window {
        since_ms: since,
        until_ms: until,
        azure_regions: BTreeMap::new(),
        recordings,
        recordings_dir: None,
    };
    let files =
        export(flows.connection(), &rules, &key, &w, &dir.0, |m| signer.sign_manifest(m)).unwrap();
    (dir, files, signer)
}

mod tempdir {
    /// A directory removed when dropped.
    pub struct Dir(pub std::path::PathBuf);
    impl Dir {
        pub fn new() -> Dir {
            use std::sync::atomic::{AtomicU64, Ordering};
            static N: AtomicU64 = AtomicU64::new(0);
            let p = std::env::temp_dir().join(format!(
                "sluice-evidence-test-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::SeqCst)
            ));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            Dir(p)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn packed(dir: &std::path::Path, files: &[FileEntry]) -> Vec<u8> {
    let mut out = Vec::new();
    pack(dir, files, &mut out).unwrap();
    out
}

fn key_hex(s: &Signer) -> String {
    sluice_audit::Link(s.public().to_bytes()).to_hex()
}

fn problems(c: &BundleCheck) -> Vec<String> {
    let mut out: Vec<String> =
        c.problems.iter().map(|p| format!("{}: {}", p.file, p.detail)).collect();
    for ch in &c.chains {
        out.extend(ch.findings.iter().map(|f| format!("{} {} at {}", ch.chain, f.kind, f.seq)));
    }
    out
}

#[test]
fn an_exported_bundle_checks_clean_and_holds_what_the_window_needs() {
    let (dir, files, signer) = written(1_015, 1_026);
    let c = check(&packed(&dir.0, &files)[..], Some(&key_hex(&signer))).unwrap();
    assert!(c.clean, "{:?}", problems(&c));
    // Records 15..=25 of the window; the chain from the checkpoint at 10 to the one at 30.
    assert_eq!((c.records, c.unchained_records), (11, 0));
    let dp = c.chains.iter().find(|x| x.chain == "dp:dp1:0").unwrap();
    assert_eq!((dp.first_seq, dp.last_seq, dp.checkpoints_matched), (Some(11), Some(30), 2));
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.0.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["requests"], 4, "{summary}");
    assert_eq!(summary["dlp_findings"][0]["family"], "financial");
    let text = String::from_utf8(std::fs::read(dir.0.join("records.jsonl")).unwrap()).unwrap();
    assert_eq!(text.lines().count(), 11);
    // The rule version in force, with its acknowledgement.
    let versions: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.0.join("rules/versions.json")).unwrap()).unwrap();
    assert_eq!(versions.as_array().map(Vec::len), Some(0), "no version was in force in 1970");
    let (dir, files, signer) = written(0, u64::MAX / 4);
    let c = check(&packed(&dir.0, &files)[..], Some(&key_hex(&signer))).unwrap();
    assert!(c.clean, "{:?}", problems(&c));
    let versions: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.0.join("rules/versions.json")).unwrap()).unwrap();
    assert_eq!(versions[0]["acknowledgements"][0]["dataplane"], DP);
    assert_eq!(versions[0]["acknowledgements"][0]["status"], "applied");
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.0.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["approvals"]["denied"], 1);
    assert_eq!(summary["rule_changes"].as_array().map(Vec::len), Some(2), "the push and its ack");
    // No matched value, hash or prompt in the summary.
    assert!(!std::fs::read_to_string(dir.0.join("summary.html")).unwrap().contains("5a1t"));
    assert!(c.chains.iter().any(|x| x.chain == CONTROL_CHAIN && x.findings.is_empty()));
}

/// Changes `name` in the bundle directory with `f` and returns what the check finds, the
/// manifest left as exported.
fn tampered(name: &str, f: impl FnOnce(&mut Vec<u8>)) -> Vec<String> {
    let (dir, files, signer) = written(1_015, 1_026);
    let p = dir.0.join(name);
    let mut b = std::fs::read(&p).unwrap();
    f(&mut b);
    std::fs::write(&p, b).unwrap();
    problems(&check(&packed(&dir.0, &files)[..], Some(&key_hex(&signer))).unwrap())
}

#[test]
fn a_changed_file_is_found() {
    for name in [
        "records.jsonl",
        "summary.json",
        "summary.html",
        "checkpoints.jsonl",
        "key.json",
        "rules/versions.json",
    ] {
        let p = tampered(name, |b| match b.iter().position(|c| c.is_ascii_digit()) {
            Some(i) => b[i] = if b[i] == b'9' { b'8' } else { b[i] + 1 },
            None => b.push(b' '),
        });
        assert!(p.iter().any(|x| x.starts_with(&format!("{name}: its hash"))), "{name}: {p:?}");
    }
    let p = tampered("chains/dataplane-0.jsonl", |b| {
        let s = String::from_utf8(b.clone()).unwrap().replacen("10.0.0.17", "10.0.0.99", 1);
        *b = s.into_bytes();
    });
    assert!(p.iter().any(|x| x == "dp:dp1:0 changed at 17"), "{p:?}");
}

#[test]
fn a_re_hashed_manifest_a_removed_or_added_file_and_another_key_are_found() {
    // The records changed and the manifest's hash with them: the signature no longer holds.
    let (dir, mut files, signer) = written(1_015, 1_026);
    let rec = dir.0.join("records.jsonl");
    let text = std::fs::read_to_string(&rec).unwrap().replacen("\"allow\"", "\"block\"", 1);
    std::fs::write(&rec, &text).unwrap();
    let e = files.iter_mut().find(|f| f.name == "records.jsonl").unwrap();
    e.sha256 = sluice_audit::Link(sha2::Sha256::digest(text.as_bytes()).into()).to_hex();
    let mpath = dir.0.join("manifest.json");
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&mpath).unwrap()).unwrap();
    m["files"] = serde_json::to_value(&files).unwrap();
    let mbytes = serde_json::to_vec_pretty(&m).unwrap();
    std::fs::write(&mpath, &mbytes).unwrap();
    let p = problems(&check(&packed(&dir.0, &files)[..], Some(&key_hex(&signer))).unwrap());
    assert!(p.iter().any(|x| x.starts_with("manifest.sig:")), "{p:?}");
    assert!(p.iter().any(|x| x.contains("its contents were not read further")), "{p:?}");
    // Re-signed by someone else's key, the key files swapped: only the pinned key tells.
    let other = Signer::from_secret(&[9; 32]);
    m["public_key"] = key_hex(&other).into();
    let mbytes = serde_json::to_vec_pretty(&m).unwrap();
    std::fs::write(&mpath, &mbytes).unwrap();
    std::fs::write(
        dir.0.join("manifest.sig"),
        format!("{}\n", sluice_audit::checkpoint::signature_to_hex(&other.sign_manifest(&mbytes))),
    )
    .unwrap();
    let p = problems(&check(&packed(&dir.0, &files)[..], Some(&key_hex(&signer))).unwrap());
    assert!(p.iter().any(|x| x.contains("not the pinned")), "{p:?}");
    // A file removed, and one added.
    let (dir, files, signer) = written(1_015, 1_026);
    let fewer: Vec<FileEntry> =
        files.iter().filter(|f| f.name != "summary.html").cloned().collect();
    let p = problems(&check(&packed(&dir.0, &fewer)[..], Some(&key_hex(&signer))).unwrap());
    assert!(
        p.iter().any(|x| x.starts_with("summary.html: listed in the manifest, missing")),
        "{p:?}"
    );
    std::fs::write(dir.0.join("extra.txt"), "x").unwrap();
    let mut more = files.clone();
    more.push(FileEntry { name: "extra.txt".into(), sha256: String::new(), bytes: 1 });
    let p = problems(&check(&packed(&dir.0, &more)[..], Some(&key_hex(&signer))).unwrap());
    assert!(
        p.iter().any(|x| x.starts_with("extra.txt: a file the manifest does not list")),
        "{p:?}"
    );
    // Not a bundle at all: an error, not a panic.
    assert!(check(&b"not zstd"[..], None).is_err());
}

/// What the check of a bundle exported after `tamper` finds.
fn exported_after(tamper: impl FnOnce(&FlowStore, &RuleStore)) -> Vec<String> {
    let (dir, files, signer) = written_after(0, u64::MAX / 4, tamper);
    problems(&check(&packed(&dir.0, &files)[..], Some(&key_hex(&signer))).unwrap())
}

#[test]
fn a_store_changed_before_the_export_gives_a_bundle_that_says_so() {
    // A made-up record without chain members, from a data plane that chains.
    let p = exported_after(|f, _| {
        f.connection()
            .execute_batch(
                r#"INSERT INTO flows (dataplane, seq, ts_ms, record) VALUES
                   ('dp1', 999, 1020, '{"seq":999,"type":"flow","ts_ms":1020,"verdict":"allow","dataplane":"dp1"}')"#,
            )
            .unwrap();
    });
    assert!(p.iter().any(|x| x.contains("in no chain: its data plane chains by then")), "{p:?}");
    // A record's time column moved out of the window: the chain says it belongs there.
    let (dir, files, signer) = written_after(1_015, 1_026, |f, _| {
        f.connection().execute_batch("UPDATE flows SET ts_ms = 5 WHERE cn = 17").unwrap();
    });
    let p = problems(&check(&packed(&dir.0, &files)[..], Some(&key_hex(&signer))).unwrap());
    assert!(
        p.iter().any(|x| x.contains("position 17 is in the window but not among the records")),
        "{p:?}"
    );
    // A rule version's text changed: its push in control's chain names another hash.
    let p = exported_after(|_, r| {
        r.db().execute_batch("UPDATE rule_versions SET text = text || '# not pushed'").unwrap();
    });
    assert!(p.iter().any(|x| x.contains("no push of this text")), "{p:?}");
    // An acknowledgement rewritten in the audit table's columns.
    let p = exported_after(|_, r| {
        r.db()
            .execute_batch("UPDATE audit SET detail = replace(detail, 'applied', 'refused') WHERE action = 'rules.ack'")
            .unwrap();
    });
    assert!(!p.is_empty(), "a changed acknowledgement is found");
}

#[test]
fn files_moved_out_of_the_manifest_order_are_not_trusted() {
    // The checkpoints packed last (every file's hash intact): the chains would be walked
    // without them.
    let (dir, files, signer) = written(1_015, 1_026);
    let mut moved: Vec<FileEntry> =
        files.iter().filter(|f| f.name != "checkpoints.jsonl").cloned().collect();
    moved.extend(files.iter().filter(|f| f.name == "checkpoints.jsonl").cloned());
    let p = problems(&check(&packed(&dir.0, &moved)[..], Some(&key_hex(&signer))).unwrap());
    assert!(
        p.iter().any(|x| x.starts_with("checkpoints.jsonl: out of the manifest's order")),
        "{p:?}"
    );
    assert!(p.iter().any(|x| x.contains("not read further")), "{p:?}");
}

#[test]
fn recordings_are_in_a_bundle_only_when_asked_and_each_is_one_a_record_names() {
    // Without asking: no recording, nothing sealed.
    let (dir, files, signer) = written(1_015, 1_026);
    assert!(!files.iter().any(|f| f.name == "recordings.jsonl"));
    let c = check(&packed(&dir.0, &files)[..], Some(&key_hex(&signer))).unwrap();
    assert!(c.clean && c.recordings.is_none(), "{:?}", problems(&c));
    for f in &files {
        assert!(!std::fs::read_to_string(dir.0.join(&f.name)).unwrap().contains("SEALED"));
    }
    // Asked: the window's (15..=25: 15, 18, 24; 21's was not kept), sealed as stored.
    let (dir, files, signer) = written_with(1_015, 1_026, true, |_, _| {});
    let c = check(&packed(&dir.0, &files)[..], Some(&key_hex(&signer))).unwrap();
    assert!(c.clean, "{:?}", problems(&c));
    assert_eq!(c.recordings, Some(Recordings { included: 3, not_kept: 1 }));
    let text = std::fs::read_to_string(dir.0.join("recordings.jsonl")).unwrap();
    let ids: Vec<String> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|v| {
            assert_eq!(v["sealed"]["data"], "SEALED");
            v["id"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(ids, ["rec_15", "rec_18", "rec_24"]);
    // A recording put in the store that no record names, and one whose row was changed.
    let (dir, files, signer) = written_with(1_015, 1_026, true, |f, _| {
        f.connection()
            .execute_batch(
                "INSERT INTO recordings (id, dataplane, seq, ts_ms, bytes, thread, sealed)
                 VALUES ('rec_x', 'dp1', 999, 1020, 5, 'rec_x', '{\"data\":\"x\"}');
                 UPDATE recordings SET bytes = 11 WHERE id = 'rec_18';
                 UPDATE recordings SET sealed = replace(sealed, 'SEALED', 'FORGED')
                     WHERE id = 'rec_24';",
            )
            .unwrap();
    });
    let p = problems(&check(&packed(&dir.0, &files)[..], Some(&key_hex(&signer))).unwrap());
    assert!(p.iter().any(|x| x.contains("\"rec_x\" is named by no request record")), "{p:?}");
    assert!(
        p.iter().any(|x| x.contains("\"rec_18\" is not what its request record says")),
        "{p:?}"
    );
    assert!(
        p.iter().any(|x| x.contains("\"rec_24\" is not what its request record says")),
        "{p:?}"
    );
    // Its lines, moved out of the bundle's order, are not read.
    let mut moved: Vec<FileEntry> =
        files.iter().filter(|f| f.name != "recordings.jsonl").cloned().collect();
    moved.extend(files.iter().filter(|f| f.name == "recordings.jsonl").cloned());
    let p = problems(&check(&packed(&dir.0, &moved)[..], Some(&key_hex(&signer))).unwrap());
    assert!(p.iter().any(|x| x.contains("not read further")), "{p:?}");
}
