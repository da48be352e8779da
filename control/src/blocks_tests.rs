//! Tests of the block index: every query answers what a scan of all records answers.
use crate::records::RecordStore;
use serde_json::{Value, json};

use crate::record::Row;
use crate::store::{FlowFilter, FlowStore};

fn rec(i: u64) -> Value {
    let ids = ["finance", "engineering", "sales"];
    let mut v = json!({"seq": i, "type": "flow", "event": "end", "flow_id": i,
        // Mostly in order, some late.
        "ts_ms": if i.is_multiple_of(97) { 500 + i } else { 10_000 + i * 10 },
        "sni": if i.is_multiple_of(5) { "chatgpt.com" } else { "api.openai.com" },
        "src": format!("10.0.0.{}", i % 40), "category": "openai",
        "verdict": if i.is_multiple_of(11) { "block" } else { "allow" },
        "rule": if i == 1234 || i == 3999 { "rare" } else { "common" }});
    if !i.is_multiple_of(13) {
        v["identity"] = ids[(i % 3) as usize].into();
    }
    if i.is_multiple_of(7) {
        v["user"] = format!("u{}", i % 3).into();
    }
    v
}

fn store() -> FlowStore {
    let mut s = FlowStore::open_in_memory().unwrap();
    // Batches of uneven sizes, two data planes (the blocks hold both).
    let mut seq = 0u64;
    for (k, size) in [1u64, 7, 500, 1, 2000, 33, 1458].into_iter().enumerate() {
        let dp = if k % 2 == 0 { "dp1" } else { "dp2" };
        let texts: Vec<String> = (seq..seq + size).map(|i| rec(i).to_string()).collect();
        let rows: Vec<Row<'_>> = texts.iter().map(|t| Row::read(t, dp).unwrap()).collect();
        s.ingest(dp, &rows).unwrap();
        seq += size;
    }
    s
}

fn all(s: &FlowStore, f: &FlowFilter, page: usize) -> Vec<u64> {
    let (mut out, mut cursor) = (Vec::new(), None);
    loop {
        let p = s.query(f, cursor, page).unwrap();
        out.extend(p.records.iter().map(|r| r["flow_id"].as_u64().unwrap()));
        match p.next {
            Some(c) => cursor = Some(c),
            None => return out,
        }
    }
}

/// What a scan of every record answers (newest first: flow ids were stored in order).
fn scan(f: &FlowFilter) -> Vec<u64> {
    let is = |v: &Value, k: &str, want: &Option<String>| {
        want.as_ref().is_none_or(|w| v.get(k).and_then(Value::as_str) == Some(w.as_str()))
    };
    let mut out: Vec<u64> = (0..4000)
        .filter(|&i| {
            let v = rec(i);
            let ts = v["ts_ms"].as_u64().unwrap();
            is(&v, "identity", &f.identity)
                && is(&v, "sni", &f.sni)
                && is(&v, "verdict", &f.verdict)
                && is(&v, "rule", &f.rule)
                && is(&v, "category", &f.category)
                && is(&v, "src", &f.src)
                && is(&v, "user", &f.user)
                && f.since_ms.is_none_or(|t| ts >= t)
                && f.until_ms.is_none_or(|t| ts < t)
        })
        .collect();
    out.reverse();
    out
}

fn filters() -> Vec<FlowFilter> {
    let s = |v: &str| Some(v.to_owned());
    let d = FlowFilter::default;
    vec![
        d(),
        FlowFilter { identity: s("finance"), ..d() },
        FlowFilter { rule: s("rare"), ..d() },
        FlowFilter { rule: s("absent"), ..d() },
        FlowFilter { sni: s("chatgpt.com"), verdict: s("block"), ..d() },
        FlowFilter { identity: s("sales"), sni: s("chatgpt.com"), verdict: s("block"), ..d() },
        FlowFilter { since_ms: Some(20_000), until_ms: Some(21_000), ..d() },
        FlowFilter { until_ms: Some(1_000), ..d() },
        FlowFilter { since_ms: Some(30_000), identity: s("engineering"), ..d() },
        FlowFilter { src: s("10.0.0.7"), verdict: s("block"), ..d() },
        FlowFilter { user: s("u1"), rule: s("common"), ..d() },
        FlowFilter { category: s("openai"), until_ms: Some(15_000), ..d() },
    ]
}

#[test]
fn every_query_answers_what_a_scan_answers() {
    let s = store();
    for f in filters() {
        let want = scan(&f);
        for page in [1, 37, 1000] {
            assert_eq!(all(&s, &f, page), want, "{f:?}, pages of {page}");
        }
    }
}

#[test]
fn a_data_plane_filter_is_answered_from_the_blocks() {
    let s = store();
    let f = FlowFilter { dataplane: Some("dp2".into()), ..Default::default() };
    // dp2 sent the 2nd, 4th and 6th batches: 7 + 1 + 33 records.
    let got = all(&s, &f, 10);
    let want: Vec<u64> = (1..8).chain(508..509).chain(2509..2542).rev().collect();
    assert_eq!(got, want);
}

#[test]
fn after_retention_the_rest_still_answers_whole() {
    let mut s = store();
    s.prune(0, 1500).unwrap();
    let stored = s.count().unwrap();
    assert_eq!(stored, 1500);
    for f in filters() {
        let mut want = scan(&f);
        want.retain(|&i| i >= 4000 - 1500);
        assert_eq!(all(&s, &f, 50), want, "{f:?}");
    }
    let stale: i64 = s
        .connection()
        .query_row("SELECT COUNT(*) FROM flows_spans WHERE block < 2500 >> 10", [], |r| r.get(0))
        .unwrap();
    assert_eq!(stale, 0, "blocks wholly retained away leave the index");
}

#[test]
fn a_store_of_an_earlier_version_gets_its_block_index_built() {
    let mut s = store();
    // As an earlier version left it: per-row indexes, no block index.
    s.conn_mut()
        .execute_batch(
            "DELETE FROM flows_terms; DELETE FROM flows_spans;
             CREATE INDEX flows_identity ON flows (identity, id);
             CREATE INDEX flows_user ON flows (user, id);",
        )
        .unwrap();
    assert!(super::migrate(s.conn_mut()).unwrap());
    assert!(!super::migrate(s.conn_mut()).unwrap(), "once");
    let left: i64 = s
        .connection()
        .query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE name IN ('flows_identity', 'flows_user')",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(left, 0);
    for f in filters() {
        assert_eq!(all(&s, &f, 100), scan(&f), "{f:?}");
    }
}
