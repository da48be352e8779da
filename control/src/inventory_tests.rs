//! Tests of the inventory (both stores where the behaviour is shared).
use super::*;
use crate::records::RecordStore;
use crate::store::FlowStore;

crate::pg::both_stores! {
    sqlite: crate::store::FlowStore::open_in_memory().unwrap(),
    postgres: |cfg| crate::pg::records::PgRecordStore::open_with(cfg).unwrap();
    rows_add_up_and_new_clients_are_discovered_once,
    unknown_clients_are_discovered_at_most_so_many_a_day, lists_are_bounded,
}

fn ingest(store: &mut dyn RecordStore, dp: &str, recs: &[Value]) -> Vec<Value> {
    let texts: Vec<String> = recs.iter().map(Value::to_string).collect();
    let rows: Vec<Row<'_>> = texts.iter().filter_map(|t| Row::read(t, dp)).collect();
    store.ingest(dp, &rows).unwrap();
    let found: Vec<Value> = store
        .take_notes()
        .iter()
        .filter(|n| n.action == crate::outbox::DISCOVERY)
        .map(|n| serde_json::from_str(&n.detail).unwrap())
        .collect();
    let ids: Vec<i64> = store.leftover_notes(true).unwrap().iter().map(|n| n.id).collect();
    store.clear_notes(&ids).unwrap();
    found
}

fn flow(seq: u64, ts: u64, app: Option<&str>, event: &str) -> Value {
    let mut v = json!({"seq": seq, "type": "flow", "event": event, "ts_ms": ts, "src": "10.20.1.10",
        "identity": "finance", "sni": "api.openai.com", "ja4": "t13d1812h1_85036bcba153_d41ae481755e",
        "bytes_out": 100, "bytes_in": 1000, "verdict": "allow"});
    if let Some(a) = app {
        v["app"] = json!(a);
    }
    v
}

fn request(seq: u64, ts: u64, app: &str, version: &str, account: Option<&str>) -> Value {
    let mut v = json!({"seq": seq, "type": "request", "ts_ms": ts, "src": "10.20.1.10", "identity": "finance",
        "user": "alice", "sni": "chatgpt.com", "app": app, "app_version": version, "bytes_out": 10,
        "bytes_in": 20, "verdict": "allow", "api_key_fp": "sha256:0123456789ab",
        "openai_organization": "org-1", "openai_project": "proj_1"});
    if let Some(a) = account {
        v["chatgpt_account"] = json!(a);
    }
    v
}

fn rows_add_up_and_new_clients_are_discovered_once(mut st: impl RecordStore) {
    let found = ingest(
        &mut st,
        "dp1",
        &[
            flow(1, 1_000, Some("python"), "update"),
            flow(2, 2_000, Some("python"), "end"),
            request(3, 1_500, "openai-python", "3.57.0", None),
            request(4, 2_500, "openai-python", "3.57.0", Some("acc-1")),
            // A hello the catalog does not know, and a flow with no hello (not counted).
            flow(5, 3_000, None, "end"),
            json!({"seq": 6, "type": "flow", "event": "end", "ts_ms": 3_000, "src": "10.20.1.10"}),
        ],
    );
    let events: Vec<(String, String)> =
        found.iter().map(|d| (d["event"].to_string(), d["app"].to_string())).collect();
    assert_eq!(
        events,
        [
            ("\"new-app\"".into(), "\"python\"".into()),
            ("\"new-app\"".into(), "\"openai-python\"".into()),
            ("\"new-unknown-client\"".into(), "\"unknown\"".into()),
        ]
    );
    assert_eq!(found[2]["ja4"], "t13d1812h1_85036bcba153_d41ae481755e");
    let rows = st.inventory(&InventoryFilter::default()).unwrap();
    let py = rows.iter().find(|r| r.app == "python").unwrap();
    assert_eq!(
        (py.flows, py.requests, py.bytes, py.first_seen_ms, py.last_seen_ms),
        (1, 0, 1100, 1_000, 2_000)
    );
    let sdk = rows.iter().find(|r| r.app == "openai-python").unwrap();
    assert_eq!(
        (sdk.version.as_str(), sdk.user.as_str(), sdk.requests, sdk.bytes),
        ("3.57.0", "alice", 2, 60)
    );
    assert_eq!(sdk.destinations, ["chatgpt.com"]);
    assert_eq!(
        sdk.accounts,
        ["chatgpt:acc-1", "key:sha256:0123456789ab", "org:org-1", "project:proj_1"]
    );
    // Seen again later: counted, not discovered again; a new account is added, and the
    // accounts ChatGPT listed for the session (a malformed entry is skipped).
    let mut listing = request(7, 9_000, "openai-python", "3.57.0", Some("acc-2"));
    listing["chatgpt_accounts_listed"] = json!(["personal:p-9", "workspace:acc-2", "nocolon", 5]);
    let found = ingest(&mut st, "dp1", &[listing]);
    assert!(found.is_empty(), "{found:?}");
    let f = InventoryFilter { app: Some("openai-python".into()), ..Default::default() };
    let sdk = &st.inventory(&f).unwrap()[0];
    assert_eq!((sdk.requests, sdk.last_seen_ms), (3, 9_000));
    for a in ["chatgpt:acc-2", "chatgpt-personal:p-9", "chatgpt-workspace:acc-2"] {
        assert!(sdk.accounts.contains(&a.to_owned()), "{a}: {:?}", sdk.accounts);
    }
    assert_eq!(sdk.accounts.len(), 7, "{:?}", sdk.accounts);
    // A record sent again (same sequence number) is not counted twice.
    ingest(&mut st, "dp1", &[request(7, 9_000, "openai-python", "3.57.0", None)]);
    assert_eq!(st.inventory(&f).unwrap()[0].requests, 3);
    // Filters, and the gauge.
    let unknown = InventoryFilter { app: Some("unknown".into()), ..Default::default() };
    assert_eq!(st.inventory(&unknown).unwrap().len(), 1);
    let later = InventoryFilter { since_ms: Some(5_000), ..Default::default() };
    assert_eq!(st.inventory(&later).unwrap().len(), 1);
    let mut gauge = st.hosts_per_app().unwrap();
    gauge.sort();
    assert_eq!(gauge, [("openai-python".into(), 1), ("python".into(), 1), ("unknown".into(), 1)]);
    assert_eq!(st.discoveries(0, 10).unwrap().len(), 3);
    // Another host with the same app is a discovery of its own.
    let mut other = request(8, 10_000, "openai-python", "3.57.0", None);
    other["src"] = json!("10.20.1.11");
    assert_eq!(ingest(&mut st, "dp1", &[other]).len(), 1);
    // Retention forgets what was last seen before the cut.
    st.prune(8_000, u64::MAX).unwrap();
    let left: Vec<String> =
        st.inventory(&InventoryFilter::default()).unwrap().into_iter().map(|r| r.app).collect();
    assert_eq!(left, ["openai-python", "openai-python"]);
    // Discoveries of clients seen since the cut stay (not made again), the others go.
    assert_eq!(st.discoveries(0, 10).unwrap().len(), 2);
    assert!(
        ingest(&mut st, "dp1", &[request(9, 11_000, "openai-python", "3.57.0", None)]).is_empty()
    );
}

#[test]
fn counts_pending_in_memory_are_counted_again_after_a_crash_and_never_twice() {
    let dir = std::env::temp_dir().join(format!("sluice-inventory-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("flows.db");
    let sdk = InventoryFilter { app: Some("openai-python".into()), ..Default::default() };
    let requests = |st: &mut FlowStore| st.inventory(&sdk).unwrap()[0].requests;
    let mut st = FlowStore::open(&path).unwrap();
    for seq in 1..=3 {
        ingest(&mut st, "dp1", &[request(seq, 1_000 * seq, "openai-python", "3.57.0", None)]);
    }
    // Reading writes what is pending.
    assert_eq!(requests(&mut st), 3);
    // Two more, pending when control dies: counted again from the records when it starts.
    ingest(&mut st, "dp1", &[request(4, 4_000, "openai-python", "3.57.0", Some("acc-9"))]);
    ingest(&mut st, "dp1", &[request(5, 5_000, "openai-python", "3.57.0", None)]);
    drop(st);
    let mut st = FlowStore::open(&path).unwrap();
    assert_eq!(requests(&mut st), 5);
    let row = &st.inventory(&sdk).unwrap()[0];
    assert_eq!(row.last_seen_ms, 5_000);
    assert!(row.accounts.contains(&"chatgpt:acc-9".to_owned()), "{:?}", row.accounts);
    drop(st);
    // Once: a start after the rows were written counts nothing again.
    let mut st = FlowStore::open(&path).unwrap();
    assert_eq!(requests(&mut st), 5);
    // A known row gaining only counts is bumped in place: its lists stay as they were.
    ingest(&mut st, "dp1", &[request(50, 6_000, "openai-python", "3.57.0", None)]);
    ingest(&mut st, "dp1", &[request(51, 7_000, "openai-python", "3.57.0", None)]);
    assert_eq!(requests(&mut st), 7);
    let row = &st.inventory(&sdk).unwrap()[0];
    assert_eq!((row.last_seen_ms, row.first_seen_ms), (7_000, 1_000));
    assert!(row.accounts.contains(&"chatgpt:acc-9".to_owned()), "{:?}", row.accounts);
    // Retention marks what is left: records stored after it are counted once.
    st.prune(u64::MAX / 2, u64::MAX / 4).unwrap();
    ingest(&mut st, "dp1", &[request(6, u64::MAX / 2 + 1, "openai-python", "3.57.0", None)]);
    drop(st);
    let mut st = FlowStore::open(&path).unwrap();
    assert_eq!(requests(&mut st), 1, "the old row went with retention; the new record counts once");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// On PostgreSQL, counts pending in a control that stops are counted by the next one to
/// write (itself restarted, or the standby that takes over), once.
#[test]
fn counts_pending_are_counted_by_the_next_writer_once_on_postgres() {
    let Some(cfg) = crate::pg::testing::fresh() else { return };
    let open = || crate::pg::records::PgRecordStore::open_with(cfg.clone()).unwrap();
    let sdk = InventoryFilter { app: Some("openai-python".into()), ..Default::default() };
    let mut st = open();
    for seq in 1..=3 {
        ingest(&mut st, "dp1", &[request(seq, 1_000 * seq, "openai-python", "3.57.0", None)]);
    }
    // Reading writes what is pending.
    assert_eq!(st.inventory(&sdk).unwrap()[0].requests, 3);
    ingest(&mut st, "dp1", &[request(4, 4_000, "openai-python", "3.57.0", Some("acc-9"))]);
    ingest(&mut st, "dp1", &[request(5, 5_000, "openai-python", "3.57.0", None)]);
    // Gone with two pending; another control writes next: it counts them from the records.
    drop(st);
    let mut next = open();
    let row = &next.inventory(&sdk).unwrap()[0];
    assert_eq!((row.requests, row.last_seen_ms), (5, 5_000));
    assert!(row.accounts.contains(&"chatgpt:acc-9".to_owned()), "{:?}", row.accounts);
    // Once: another start counts nothing again; new records are counted on.
    drop(next);
    let mut again = open();
    ingest(&mut again, "dp1", &[request(6, 6_000, "openai-python", "3.57.0", None)]);
    assert_eq!(again.inventory(&sdk).unwrap()[0].requests, 6);
    // Retention writes what is pending first; the row, seen since the cut, stays.
    ingest(&mut again, "dp1", &[request(7, 7_000, "openai-python", "3.57.0", None)]);
    again.prune(6_500, u64::MAX).unwrap();
    assert_eq!(again.inventory(&sdk).unwrap()[0].requests, 7);
    // And a later start counts nothing twice after it.
    drop(again);
    assert_eq!(open().inventory(&sdk).unwrap()[0].requests, 7);
}

fn unknown_clients_are_discovered_at_most_so_many_a_day(mut st: impl RecordStore) {
    let recs: Vec<Value> = (0..40u64)
        .map(|i| {
            let mut f = flow(i + 1, 1_000 + i, None, "end");
            f["ja4"] = json!(format!("t13d{:04}h2_000000000000_000000000000", i));
            f
        })
        .collect();
    let found = ingest(&mut st, "dp", &recs);
    assert_eq!(found.len(), MAX_UNKNOWN_PER_DAY as usize);
    // All of them are in the inventory all the same.
    let row = &st.inventory(&InventoryFilter::default()).unwrap()[0];
    assert_eq!((row.app.as_str(), row.flows), ("unknown", 40));
}

fn lists_are_bounded(mut st: impl RecordStore) {
    let recs: Vec<Value> = (0..100)
        .map(|i| {
            let mut r = request(i + 1, 1_000 + i, "curl", "8.0", Some(&format!("acc-{i}")));
            r["sni"] = json!(format!("h{i}.example"));
            r
        })
        .collect();
    ingest(&mut st, "dp", &recs);
    let row = &st.inventory(&InventoryFilter::default()).unwrap()[0];
    assert_eq!(row.requests, 100);
    assert_eq!(row.destinations.len(), MAX_LISTED);
    assert!(row.accounts.len() <= MAX_LISTED);
}

#[test]
fn a_pending_row_is_found_by_its_borrowed_key() {
    let mut d = Deltas::default();
    let key: Key = ("10.0.0.1".into(), "eng".into(), "".into(), "curl".into(), "8".into());
    d.rows.insert(key.clone(), Delta::default());
    assert!(d.rows.get_mut(&KeyRef("10.0.0.1", "eng", "", "curl", "8")).is_some());
    // The fields' boundaries count: the same bytes split otherwise are another row.
    assert!(d.rows.get_mut(&KeyRef("10.0.0.1e", "ng", "", "curl", "8")).is_none());
    assert_eq!(key_bytes(&key), KeyRef("10.0.0.1", "eng", "", "curl", "8").bytes());
}
