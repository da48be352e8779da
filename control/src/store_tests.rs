//! Tests of the record store.
use super::*;
use crate::records::RecordStore;
use serde_json::json;

/// Rows as the link reads them (`seq` set, data plane named).
fn rows(dp: &str, recs: &[(u64, Value)]) -> Vec<Row<'static>> {
    recs.iter()
        .map(|(seq, v)| {
            let mut v = v.clone();
            v["seq"] = (*seq).into();
            Row::read_value(v, dp).unwrap()
        })
        .collect()
}

crate::pg::both_stores! {
    sqlite: crate::store::FlowStore::open_in_memory().unwrap(),
    postgres: |cfg| crate::pg::records::PgRecordStore::open_with(cfg).unwrap();
    ingest_dedup_filters_and_pages, requests_have_their_table_and_detector_filter,
    usage_adds_up_tokens_per_key_since_a_time, prune_by_age_and_size,
    counts_per_minute_follow_ingest_replay_and_retention, texts_with_nul_are_stored,
    filters_by_app_operation_user_and_source, a_record_twice_in_a_batch_is_stored_once,
}

fn rec(i: u64) -> Value {
    let (identity, verdict) = match i % 3 {
        0 => ("finance", "allow"),
        1 => ("engineering", "allow"),
        _ => ("unknown", "block"),
    };
    json!({"type": "flow", "event": "end", "ts_ms": 1_000 + i, "identity": identity, "verdict": verdict,
           "sni": if i.is_multiple_of(2) { "api.openai.com" } else { "example.org" }, "src": format!("10.20.{}.{}", i % 3, i % 250),
           "rule": "r", "category": null, "flow_id": i})
}

fn ingest_dedup_filters_and_pages(mut s: impl RecordStore) {
    let batch: Vec<(u64, Value)> = (0..300).map(|i| (i, rec(i))).collect();
    let stored = |v: Vec<bool>| v.into_iter().filter(|f| *f).count();
    assert_eq!(stored(s.ingest("dp1", &rows("dp1", &batch)).unwrap()), 300);
    // A replay after a reconnect stores nothing twice; another data plane is separate.
    assert_eq!(stored(s.ingest("dp1", &rows("dp1", &batch[250..])).unwrap()), 0);
    assert_eq!(stored(s.ingest("dp2", &rows("dp2", &batch[..10])).unwrap()), 10);
    // Statistics are not stored.
    assert_eq!(
        s.ingest("dp1", &rows("dp1", &[(1000, json!({"type": "stats"}))])).unwrap(),
        vec![false]
    );
    assert_eq!(s.count().unwrap(), 310);
    assert_eq!(s.last_seq("dp1").unwrap(), Some(299));
    assert_eq!(s.last_seq("dp9").unwrap(), None);

    let blocked = FlowFilter { verdict: Some("block".into()), ..Default::default() };
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = s.query(&blocked, cursor, 7).unwrap();
        seen.extend(page.records.iter().map(|r| r["flow_id"].as_u64().unwrap()));
        match page.next {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    let mut want: Vec<u64> =
        (0..300).filter(|i| i % 3 == 2).chain((0..10).filter(|i| i % 3 == 2)).collect();
    want.sort_unstable();
    let mut got = seen.clone();
    got.sort_unstable();
    assert_eq!(got, want, "every blocked record exactly once across pages");

    let f = FlowFilter {
        identity: Some("finance".into()),
        sni: Some("api.openai.com".into()),
        since_ms: Some(1_100),
        until_ms: Some(1_200),
        ..Default::default()
    };
    let page = s.query(&f, None, 1000).unwrap();
    assert!(
        page.records.iter().all(|r| r["identity"] == "finance" && r["sni"] == "api.openai.com")
    );
    assert_eq!(
        page.records.len(),
        (100..200).filter(|i: &u32| i.is_multiple_of(3) && i.is_multiple_of(2)).count()
    );
    assert_eq!(page.next, None);
}

fn requests_have_their_table_and_detector_filter(mut s: impl RecordStore) {
    let req = |i: u64, det: &str| {
        json!({"type": "request", "ts_ms": i, "identity": "finance", "verdict": "block",
               "dlp_findings": [{"detector": det, "count": 1, "paths": [], "hashes": []}]})
    };
    let batch = vec![
        (1, req(1, "credit_card")),
        (2, req(2, "aws_access_key_id")),
        (3, rec(3)),
        (4, req(4, "a_b")),
    ];
    assert_eq!(s.ingest("dp", &rows("dp", &batch)).unwrap(), vec![true; 4]);
    assert_eq!(s.count_of(Kind::Requests).unwrap(), 3);
    assert_eq!(s.count_of(Kind::Flows).unwrap(), 1);
    assert_eq!(s.last_seq("dp").unwrap(), Some(4));
    let f = |d: &str| FlowFilter { detector: Some(d.into()), ..Default::default() };
    let got = s.query_kind(Kind::Requests, &f("credit_card"), None, 10).unwrap();
    assert_eq!(got.records.len(), 1);
    assert_eq!(got.records[0]["ts_ms"], 1);
    // LIKE wildcards in the filter are literal: `a_b` does not match `aXb`-like names.
    assert_eq!(s.query_kind(Kind::Requests, &f("a%"), None, 10).unwrap().records.len(), 0);
    assert_eq!(s.query_kind(Kind::Requests, &f("a_b"), None, 10).unwrap().records.len(), 1);
    assert_eq!(s.query_kind(Kind::Flows, &f("credit_card"), None, 10).unwrap().records.len(), 0);
}

fn usage_adds_up_tokens_per_key_since_a_time(mut s: impl RecordStore) {
    let req = |ts: u64, user: &str, model: &str, tokens: Option<(u64, u64)>| {
        let mut v = json!({"type": "request", "ts_ms": ts, "identity": "finance", "user": user,
                           "verdict": "allow", "model": model});
        if let Some((i, o)) = tokens {
            v["input_tokens"] = json!(i);
            v["output_tokens"] = json!(o);
            v["cached_tokens"] = json!(1);
        }
        v
    };
    let batch = vec![
        (1, req(100, "alice", "gpt-4o", Some((5, 4)))),
        (2, req(200, "alice", "gpt-4o-mini", Some((10, 1)))),
        (3, req(300, "bob", "gpt-4o", None)),
        (4, req(50, "bob", "gpt-4o", Some((1000, 1000)))),
    ];
    s.ingest("dp", &rows("dp", &batch)).unwrap();
    let by_user = s.usage(100, UsageBy::User).unwrap();
    assert_eq!(by_user.len(), 2);
    assert_eq!(
        (by_user[0].key.as_deref(), by_user[0].requests, by_user[0].input_tokens),
        (Some("alice"), 2, 15)
    );
    assert_eq!((by_user[0].output_tokens, by_user[0].cached_tokens), (5, 2));
    assert_eq!(
        (by_user[1].key.as_deref(), by_user[1].requests, by_user[1].input_tokens),
        (Some("bob"), 1, 0)
    );
    let by_model = s.usage(0, UsageBy::Model).unwrap();
    assert_eq!(by_model[0].key.as_deref(), Some("gpt-4o"));
    assert_eq!((by_model[0].requests, by_model[0].input_tokens), (3, 1005));
}

fn prune_by_age_and_size(mut s: impl RecordStore) {
    let batch: Vec<(u64, Value)> = (0..100).map(|i| (i, rec(i))).collect();
    s.ingest("dp", &rows("dp", &batch)).unwrap();
    assert_eq!(s.prune(1_010, u64::MAX).unwrap(), 10);
    assert_eq!(s.prune(0, 50).unwrap(), 40);
    assert_eq!(s.count().unwrap(), 50);
    let newest = s.query(&FlowFilter::default(), None, 1).unwrap();
    assert_eq!(newest.records[0]["flow_id"], 99);
}

#[test]
fn file_store_survives_reopen() {
    let path = std::env::temp_dir().join(format!("sluice-store-{}.db", std::process::id()));
    let _ = std::fs::remove_file(&path);
    {
        let mut s = FlowStore::open(&path).unwrap();
        s.ingest("dp", &rows("dp", &[(1, rec(1)), (2, rec(2))])).unwrap();
    }
    let s = FlowStore::open(&path).unwrap();
    assert_eq!(s.count().unwrap(), 2);
    drop(s);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}

fn counts_per_minute_follow_ingest_replay_and_retention(mut s: impl RecordStore) {
    // Minute 0: flows (a third blocked); minute 2: requests, two with findings.
    let mut batch: Vec<(u64, Value)> = (0..30).map(|i| (i, rec(i))).collect();
    // A minute whose only record has no verdict.
    batch.push((99, json!({"type": "flow", "ts_ms": 61_000, "src": "10.0.0.2"})));
    for i in 0..4u64 {
        let findings = if i < 2 { json!([{"detector": "email", "count": 1}]) } else { json!([]) };
        batch.push((100 + i, json!({"type": "request", "ts_ms": 120_000 + i, "verdict": if i == 3 { "block" } else { "allow" },
                                    "dlp_findings": findings, "src": "10.0.0.1"})));
    }
    s.ingest("dp1", &rows("dp1", &batch)).unwrap();
    // A replay counts nothing twice.
    s.ingest("dp1", &rows("dp1", &batch)).unwrap();
    let series = s.series(0, 3 * 60_000 - 1, 1).unwrap();
    let at = |m: usize| series[m].1;
    assert_eq!(series.len(), 3);
    assert_eq!((series[2].0, at(0).flows, at(0).blocked), (120_000, 30, 10));
    assert_eq!((at(1).flows, at(1).blocked), (1, 0), "no verdict: not blocked");
    assert_eq!((at(2).requests, at(2).findings, at(2).blocked), (4, 2, 1));
    let empty = s.series(0, 4 * 60_000 - 1, 1).unwrap()[3].1;
    assert_eq!(empty, crate::series::Counts::default(), "an empty minute is there, zero");
    // Buckets of several minutes add up; a long span gets a longer step (≤ 2,000 buckets).
    assert_eq!(s.series(0, 3 * 60_000 - 1, 5).unwrap()[0].1.flows, 31);
    assert!(s.series(0, 365 * 86_400_000, 1).unwrap().len() <= 2001);

    // The live tail: records after a row id, newest first, with filters.
    let all = s.query_kind(Kind::Flows, &FlowFilter::default(), None, 100).unwrap();
    let tenth = all.ids[9];
    let f = FlowFilter { after_id: Some(tenth), ..Default::default() };
    assert_eq!(s.query_kind(Kind::Flows, &f, None, 100).unwrap().ids, all.ids[..9].to_vec());
    let f =
        FlowFilter { after_id: Some(tenth), verdict: Some("block".into()), ..Default::default() };
    let blocked_after: Vec<i64> = all.ids[..9]
        .iter()
        .zip(&all.records)
        .filter(|(_, r)| r["verdict"] == "block")
        .map(|(id, _)| *id)
        .collect();
    assert_eq!(s.query_kind(Kind::Flows, &f, None, 100).unwrap().ids, blocked_after);
    assert_eq!(s.record(Kind::Flows, tenth).unwrap(), Some(all.records[9].clone()));
    assert_eq!(s.record(Kind::Flows, 1 << 40).unwrap(), None);

    // Retention by age drops the minutes it drops records of.
    s.prune(60_000, u64::MAX).unwrap();
    let after = s.series(0, 3 * 60_000 - 1, 1).unwrap();
    assert_eq!((after[0].1.flows, after[2].1.requests), (0, 4));
}

#[test]
fn counts_per_minute_are_made_from_the_records_of_an_older_store() {
    let mut s = FlowStore::open_in_memory().unwrap();
    let batch: Vec<(u64, Value)> = (0..30).map(|i| (i, rec(i))).collect();
    s.ingest("dp1", &rows("dp1", &batch)).unwrap();
    let series = s.series(0, 3 * 60_000 - 1, 1).unwrap();
    // A store that had records before the counts existed gets them from its records.
    s.conn().execute("DELETE FROM series", []).unwrap();
    assert!(crate::series::migrate(s.conn_mut()).unwrap());
    assert_eq!(s.series(0, 3 * 60_000 - 1, 1).unwrap(), series);
}

/// A NUL in a record's fields (escaped in its JSON) is stored, not a reason to refuse the
/// batch (the link would send it again forever); the record comes back as sent.
fn texts_with_nul_are_stored(mut s: impl RecordStore) {
    let v = json!({"type": "request", "ts_ms": 5, "identity": "fin\u{0}ance", "user": "a\u{0}",
                   "sni": "api.openai.com", "verdict": "allow", "model": "gpt\u{0}",
                   "app": "openai-python", "src": "10.0.0.1",
                   "dlp_findings": [{"detector": "e\u{0}mail", "count": 1}]});
    assert_eq!(s.ingest("dp", &rows("dp", &[(1, v.clone())])).unwrap(), vec![true]);
    let page = s.query_kind(Kind::Requests, &FlowFilter::default(), None, 10).unwrap();
    assert_eq!(page.records[0]["identity"], v["identity"]);
    assert_eq!(s.usage(0, UsageBy::Model).unwrap().len(), 1);
}

fn filters_by_app_operation_user_and_source(mut s: impl RecordStore) {
    let req = |i: u64, app: &str, op: &str, user: &str| {
        json!({"type": "request", "ts_ms": 1_000 + i, "identity": "finance", "user": user,
               "src": format!("10.0.0.{i}"), "verdict": "allow", "app": app, "operation": op,
               "virtual_key": "vk_1", "input_tokens": 3})
    };
    let batch = vec![
        (1, req(1, "codex-cli", "chat", "alice")),
        (2, req(2, "openai-python", "upload", "bob")),
        (3, req(3, "codex-cli", "upload", "bob")),
    ];
    s.ingest("dp", &rows("dp", &batch)).unwrap();
    let ids = |f: FlowFilter| -> Vec<u64> {
        let p = s.query_kind(Kind::Requests, &f, None, 10).unwrap();
        p.records.iter().map(|r| r["ts_ms"].as_u64().unwrap() - 1_000).collect()
    };
    assert_eq!(ids(FlowFilter { app: Some("codex-cli".into()), ..Default::default() }), [3, 1]);
    assert_eq!(ids(FlowFilter { operation: Some("upload".into()), ..Default::default() }), [3, 2]);
    assert_eq!(ids(FlowFilter { user: Some("bob".into()), ..Default::default() }), [3, 2]);
    assert_eq!(ids(FlowFilter { src: Some("10.0.0.1".into()), ..Default::default() }), [1]);
    assert_eq!(
        ids(FlowFilter { dataplane: Some("other".into()), ..Default::default() }),
        [0u64; 0]
    );
    let by_key = s.usage(0, UsageBy::VirtualKey).unwrap();
    assert_eq!(
        (by_key[0].key.as_deref(), by_key[0].requests, by_key[0].input_tokens),
        (Some("vk_1"), 3, 9)
    );
    let q = s.quota_records(0).unwrap();
    assert!(q.is_empty(), "{q:?}");
}

/// On PostgreSQL, a NUL in a chained record's fields (stored as U+FFFD: its text cannot hold
/// one) stops neither counting the inventory again from the records nor retention.
#[test]
fn a_nul_stops_neither_recounting_nor_retention_on_postgres() {
    let Some(cfg) = crate::pg::testing::fresh() else { return };
    let open = || crate::pg::records::PgRecordStore::open_with(cfg.clone()).unwrap();
    let mut prev = sluice_audit::GENESIS;
    let mut texts = Vec::new();
    for n in 1..=4u64 {
        let text = format!(
            "{{\"seq\":{n},\"chain\":{n},\"prev\":\"{prev}\",\"type\":\"request\",\"ts_ms\":{},\"src\":\"10.0.0.1\\u0000x\",\"app\":\"curl\",\"sni\":\"a\\u0000.example\",\"verdict\":\"allow\"}}",
            1_000 + n
        );
        prev = sluice_audit::link(&prev, n, text.as_bytes());
        texts.push(text);
    }
    let mut s = open();
    let rows: Vec<Row<'_>> = texts.iter().map(|t| Row::read(t, "dp").unwrap()).collect();
    assert_eq!(s.ingest("dp", &rows).unwrap(), vec![true; 4]);
    assert!(s.take_notes().iter().all(|n| n.action == crate::outbox::DISCOVERY));
    // Gone with the counts pending: the next store counts them from the records.
    drop(s);
    let mut s = open();
    let inv = s.inventory(&crate::inventory::InventoryFilter::default()).unwrap();
    assert_eq!((inv.len(), inv[0].requests, inv[0].host.as_str()), (1, 4, "10.0.0.1\u{fffd}x"));
    // Retention reads the records' own times.
    let cuts = s.retention_cuts(1_003, u64::MAX).unwrap();
    assert_eq!(cuts.iter().map(|c| c.n).collect::<Vec<_>>(), [2]);
    s.prune_at(1_003, u64::MAX, &cuts).unwrap();
    assert_eq!(s.count_of(Kind::Requests).unwrap(), 2);
}

/// A chained record sent twice in one batch is stored once, and is not a refusal.
fn a_record_twice_in_a_batch_is_stored_once(mut s: impl RecordStore) {
    let mut prev = sluice_audit::GENESIS;
    let mut texts = Vec::new();
    for n in 1..=2u64 {
        let text = format!(
            "{{\"seq\":{n},\"chain\":{n},\"prev\":\"{prev}\",\"type\":\"flow\",\"ts_ms\":5,\"verdict\":\"allow\"}}"
        );
        prev = sluice_audit::link(&prev, n, text.as_bytes());
        texts.push(text);
    }
    texts.push(texts[1].clone());
    let rows: Vec<Row<'_>> = texts.iter().map(|t| Row::read(t, "dp").unwrap()).collect();
    assert_eq!(s.ingest("dp", &rows).unwrap(), [true, true, false]);
    let notes = s.take_notes();
    assert!(notes.is_empty(), "{notes:?}");
    assert_eq!(s.count().unwrap(), 2);
}
