//! Evidence end to end on the real daemon: a data plane's chained records are checkpointed
//! and verify clean; a record that breaks the chain is refused, logged and raised; a row
//! changed behind the daemon's back is found by `sluicectl audit verify`, which exits 1; the
//! auditor role verifies, the analyst may not.
#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use common::*;
use sluice_audit::{GENESIS, Link};
use sluice_control::auth::token_hash;

const AUDITOR: &str = "auditor-token-0123456789";

/// A chained record as the data plane's spool writes it, and its link.
fn line(seq: u64, n: u64, prev: Link, kind: &str) -> (String, Link) {
    let text = format!(
        "{{\"seq\":{seq},\"chain\":{n},\"prev\":\"{prev}\",\"type\":\"{kind}\",\"ts_ms\":{},\"identity\":\"finance\",\"src\":\"10.20.1.10\",\"verdict\":\"allow\"}}",
        1_800_000_000_000u64 + n
    );
    let link = sluice_audit::link(&prev, n, text.as_bytes());
    (text, link)
}

/// Waits until `f` holds (the daemon stores and checkpoints on its own time).
fn until(what: &str, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < Duration::from_secs(20), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn chains_are_checkpointed_verified_and_breaks_refused() {
    let d = start_with(&format!(
        "[[tokens]]\nname = \"aud\"\nrole = \"auditor\"\nsha256 = \"{}\"\n\n[audit]\ncheckpoint_records = 5\ncheckpoint_secs = 1\n",
        token_hash(AUDITOR)
    ));
    // The key: made at first start, private, served to any token.
    let mode = std::fs::metadata(d.dir.join("state").join("audit-signing.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let (code, body) = call(&d, "GET", "/v1/audit/key", Some(ANALYST), None);
    assert_eq!(code, 200, "{body}");
    let key = json(&body)["public_key"].as_str().unwrap().to_owned();
    assert_eq!(key.len(), 64);
    assert_eq!(sluicectl(&d, AUDITOR, &["audit", "key"]), (0, format!("{key}\n")));
    assert_eq!(call(&d, "GET", "/v1/audit/key", None, None).0, 401);

    // Twelve chained records (statistics between, unchained), as a data plane sends them.
    let mut dp = FakeDataplane::connect(&d, "dp-e", sluice_link::PROTO_VERSION);
    let mut texts = Vec::new();
    let mut prev = GENESIS;
    for n in 1..=12u64 {
        let (t, l) = line(n * 2, n, prev, if n % 4 == 0 { "request" } else { "flow" });
        texts.push(t);
        texts.push(format!("{{\"seq\":{},\"type\":\"stats\"}}", n * 2 + 1));
        prev = l;
    }
    dp.send_texts(&texts);
    let verify = |tok: &str| {
        let (code, body) = call(&d, "GET", "/v1/audit/verify", Some(tok), None);
        assert_eq!(code, 200, "{body}");
        json(&body)
    };
    until("the records and a checkpoint of their chain", || {
        let v = verify(AUDITOR);
        v["chains"].as_array().unwrap().iter().any(|c| {
            c["chain"] == "dp:dp-e:0"
                && c["records"] == 12
                && c["checkpoints_matched"].as_u64() >= Some(1)
        })
    });
    let v = verify(AUDITOR);
    assert_eq!(v["clean"], true, "{v}");
    assert_eq!(v["key"], key.as_str());
    assert_eq!(call(&d, "GET", "/v1/audit/verify", Some(ANALYST), None).0, 403);
    let (code, out) = sluicectl(&d, AUDITOR, &["audit", "verify", "--key", &key]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("dp:dp-e:0 (data plane dp-e): 12 records, positions 1..12")
            && out.contains("clean"),
        "{out}"
    );
    // A pinned key that is not the daemon's: refused.
    let (code, out) = sluicectl(&d, AUDITOR, &["audit", "verify", "--key", &"0".repeat(64)]);
    assert_eq!(code, 1, "{out}");

    // Position 13 claims another record before it: refused, raised, logged; 14 goes on.
    let (bad, bad_link) = line(100, 13, Link([7; 32]), "flow");
    let (next, _) = line(101, 14, bad_link, "flow");
    dp.send_texts(&[bad, next]);
    until("the refusal in the audit log", || {
        let (_, body) = call(&d, "GET", "/v1/audit", Some(AUDITOR), None);
        body.contains("chain.refused")
    });
    let (_, body) = call(&d, "GET", "/v1/flows?dataplane=dp-e&limit=100", Some(AUDITOR), None);
    assert_eq!(json(&body)["records"].as_array().unwrap().len(), 10, "13 was not stored, 14 was");
    let v = verify(AUDITOR);
    let dpc =
        v["chains"].as_array().unwrap().iter().find(|c| c["chain"] == "dp:dp-e:0").unwrap().clone();
    assert_eq!(dpc["findings"][0]["kind"], "gap", "{dpc}");
    assert_eq!(dpc["findings"][0]["seq"], 13);
    assert!(dpc["findings"][0]["detail"].as_str().unwrap().contains("refused at ingest"));

    // A field changed in the store behind the daemon's back.
    let db = rusqlite::Connection::open(d.dir.join("state").join("flows.db")).unwrap();
    db.busy_timeout(Duration::from_secs(5)).unwrap();
    db.execute(
        "UPDATE flows SET record = replace(record, '\"allow\"', '\"block\"') WHERE cn = 3",
        [],
    )
    .unwrap();
    drop(db);
    let (code, out) = sluicectl(&d, AUDITOR, &["audit", "verify"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("CHANGED at 3 (flows:"), "{out}");
    assert!(out.contains("GAP at 13"), "{out}");
}
