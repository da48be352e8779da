//! Flow store: ingestion rate, and query latency (p50/p99) over 1 M rows with filters.
//! Targets (control-plane issue): ≥ 50 k records/s ingested; p99 ≤ 100 ms per query.
//! Evidence (issue 18): the same records chained as a data plane sends them, with a signed
//! checkpoint every 10,000, ingested ≥ 50 k records/s (the unchained rate, measured in the
//! same run, is the reference); verifying the chain of all of them takes ≤ 10 s (reading the
//! rows alone is the reference).
//! Fleet (issue 21): with `SLUICE_BENCH_POSTGRES` naming a PostgreSQL server (scripts/postgres
//! starts one), the same suite runs on it, in a fresh schema, after SQLite's, and prints its
//! rows beside SQLite's with the ratio. Target: ≥ 50 k records/s ingested on PostgreSQL.
//! Run: `cargo bench -p sluice-control --bench store` (ROWS to change the size, SNIS=N to
//! send a third of the flows to N other server names).
#![allow(missing_docs, clippy::unwrap_used)]

use sluice_control::records::RecordStore;
use std::time::Instant;

/// The daemon's allocator (`sluice-control` runs on mimalloc).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use serde_json::{Value, json};
use sluice_audit::{GENESIS, Link, Signer};
use sluice_control::record::Row;
use sluice_control::rulestore::{RuleLog, RuleStore};
use sluice_control::store::{FlowFilter, FlowStore};

/// Record `i` as a data plane's spool writes it when chained at position `i + 1` after `prev`.
fn chained(i: u64, prev: &Link) -> String {
    let plain = rec(i).to_string();
    let rest = plain.split_once(',').map_or("}", |(_, r)| r);
    format!("{{\"seq\":{i},\"chain\":{},\"prev\":\"{prev}\",{rest}", i + 1)
}

fn remove_store(path: &std::path::Path) {
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    let _ = std::fs::remove_dir_all(path.with_extension("recordings"));
}

/// Ingests `rows` records (chained, with a checkpoint every 10,000, when `rules` is given) in
/// transactions of 5,000; returns records per second.
fn ingest(
    store: &mut dyn RecordStore,
    rows: u64,
    mut rules: Option<(&mut dyn RuleLog, &Signer)>,
) -> f64 {
    let batch = 5_000u64;
    // What control does is timed: reading each text into a row, storing the batch (making up
    // the records' text is not).
    let mut spent = std::time::Duration::ZERO;
    let mut seq = 0;
    let mut prev = GENESIS;
    while seq < rows {
        // As the link reads them: the records' text, each read into a row.
        let texts: Vec<String> = (seq..(seq + batch).min(rows))
            .map(|i| match rules {
                Some(_) => {
                    let t = chained(i, &prev);
                    prev = sluice_audit::link(&prev, i + 1, t.as_bytes());
                    t
                }
                None => rec(i).to_string(),
            })
            .collect();
        let start = Instant::now();
        let recs: Vec<Row<'_>> = texts.iter().map(|t| Row::read(t, "dp1").unwrap()).collect();
        store.ingest("dp1", &recs).unwrap();
        seq += batch;
        if let Some((rules, signer)) = rules.as_mut()
            && seq.is_multiple_of(10_000)
        {
            let cp = signer.sign("dp:dp1:0", seq.min(rows), prev, seq).unwrap();
            rules.add_checkpoint(&cp).unwrap();
        }
        spent += start.elapsed();
    }
    // The inventory's counts still in memory are part of the cost: written within the time.
    let start = Instant::now();
    store.write_inventory().unwrap();
    spent += start.elapsed();
    rows as f64 / spent.as_secs_f64()
}

fn rec(i: u64) -> Value {
    let ids = ["finance", "engineering", "unknown", "sales", "legal"];
    let snis = [
        "api.openai.com",
        "chatgpt.com",
        "example.org",
        "auth.openai.com",
        "claude.ai",
        "www.googleapis.com",
    ];
    // SNIS=N: a third of the flows go to N other names (the block index's worst column).
    let spread: u64 = std::env::var("SNIS").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    let sni = if spread > 0 && i.is_multiple_of(3) {
        format!("host{}.example.net", (i / 3) % spread)
    } else {
        snis[(i % 6) as usize].to_owned()
    };
    json!({"seq": i, "type": "flow", "event": "end", "flow_id": i, "ts_ms": 1_700_000_000_000u64 + i * 10,
           "identity": ids[(i % 5) as usize], "sni": sni, "src": format!("10.20.{}.{}", (i / 250) % 250, i % 250),
           "category": if i % 6 < 2 { "openai" } else { "other" }, "verdict": if i.is_multiple_of(7) { "block" } else { "allow" },
           "rule": if i % 100_000 == 77 { "rule-rare".to_owned() } else { format!("rule-{}", i % 12) }, "ja4": "t13d1516h2_8daaf6152771_e5627efa2ab1",
           "bytes_out": i * 3, "bytes_in": i * 7, "pkts_out": 10, "pkts_in": 12, "proto": "tcp", "dport": 443})
}

/// A recording record as a data plane sends it: the sealed bytes of `plain` plaintext bytes
/// (base64 of incompressible bytes, as ciphertext is), the data key wrapped with age.
fn recording(i: u64, plain: usize, key: &str, response: &str) -> String {
    let mut data = String::with_capacity(plain * 4 / 3 + 32);
    let mut x = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for _ in 0..(plain + 16).div_ceil(3) * 4 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.push(B64[(x % 64) as usize] as char);
    }
    json!({"seq": i, "type": "recording", "ts_ms": 1_700_000_000_000u64 + i, "id": format!("rec_{:012x}{:012x}", 1_700_000_000_000u64 + i, x >> 16),
           "identity": "finance", "user": "alice@corp", "src": "10.20.1.10", "sni": "api.openai.com",
           "method": "POST", "path": "/v1/chat/completions", "rule": "finance-record", "bytes": plain,
           "response": format!("{response}{:016x}", x >> 3),
           "sealed": {"alg": "aes-256-gcm+age", "key": key, "nonce": "AAAAAAAAAAAAAAAA", "data": data}})
    .to_string()
}

/// Recordings ingested beside the records (issue 16): records/s and MB/s of sealed text, for
/// chat completions (a thread of their own each) and for Responses API answers (each may be
/// continued: indexed by its response id, which is random).
fn recordings(store: &mut dyn RecordStore) {
    recordings_of(store, "chat completions", "chatcmpl-", 10_000_000_000);
    recordings_of(store, "Responses API", "resp_", 20_000_000_000);
}

fn recordings_of(store: &mut dyn RecordStore, what: &str, response: &str, first: u64) {
    let n: u64 = std::env::var("RECORDINGS").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000);
    let plain: usize = std::env::var("PLAIN").ok().and_then(|v| v.parse().ok()).unwrap_or(2_700);
    let key = "A".repeat(352);
    let batch = 500u64;
    let (mut seq, mut bytes, start) = (first, 0usize, Instant::now());
    while seq < first + n {
        let texts: Vec<String> =
            (seq..seq + batch).map(|i| recording(i, plain, &key, response)).collect();
        bytes += texts.iter().map(String::len).sum::<usize>();
        let recs: Vec<Row<'_>> = texts.iter().map(|t| Row::read(t, "dp1").unwrap()).collect();
        store.ingest("dp1", &recs).unwrap();
        seq += batch;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "ingest recordings, {what:<16}: {n} of {plain} plaintext bytes in {secs:.1} s = {:.0} recordings/s, {:.0} MB/s (batches of {batch})",
        n as f64 / secs,
        bytes as f64 / secs / 1e6
    );
}

/// What one store measured.
struct Measured {
    plain: f64,
    chained: f64,
    verify: f64,
    read: f64,
    queries: Vec<(String, f64, f64)>,
}

/// The suite on one store: `plain` takes the unchained reference, `store` and `rules` the
/// chained records; `read` reads the rows alone (verification's reference).
fn suite(
    label: &str,
    plain: &mut dyn RecordStore,
    store: &mut dyn RecordStore,
    rules: &mut dyn RuleLog,
    read: &dyn Fn() -> usize,
    rows: u64,
) -> Measured {
    let plain_rate = ingest(plain, rows, None);
    let signer = Signer::from_secret(&[3; 32]);
    let rate = ingest(store, rows, Some((rules, &signer)));
    println!(
        "{label}: ingest: {rows} records, batches of 5000: unchained {plain_rate:.0} records/s; chained with a checkpoint every 10000 {rate:.0} records/s ({:.2}x)",
        rate / plain_rate
    );
    // Verification of the whole chain, against reading the rows alone.
    let t = Instant::now();
    let bytes = read();
    let read_secs = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let v = sluice_control::audit_verify::verify(
        store.view(),
        rules,
        &signer.public(),
        &sluice_control::audit_verify::Ask::default(),
    )
    .unwrap();
    let secs = t.elapsed().as_secs_f64();
    assert!(v.clean && v.chains[1].records == rows, "the bench's chain verifies whole");
    println!(
        "{label}: verify: {rows} records ({} MB) in {secs:.2} s, {} checkpoints matched; reading the rows alone {read_secs:.2} s ({:.2}x)",
        bytes >> 20,
        v.chains[1].checkpoints_matched,
        secs / read_secs
    );
    recordings(store);
    let filters: Vec<(&str, FlowFilter)> = vec![
        ("newest page, no filter", FlowFilter::default()),
        ("identity", FlowFilter { identity: Some("finance".into()), ..Default::default() }),
        (
            "sni + verdict",
            FlowFilter {
                sni: Some("chatgpt.com".into()),
                verdict: Some("block".into()),
                ..Default::default()
            },
        ),
        ("src", FlowFilter { src: Some("10.20.7.42".into()), ..Default::default() }),
        (
            "rare rule (1 in 100k)",
            FlowFilter { rule: Some("rule-rare".into()), ..Default::default() },
        ),
        ("absent identity", FlowFilter { identity: Some("nobody".into()), ..Default::default() }),
        (
            "time window + rule",
            FlowFilter {
                since_ms: Some(1_700_000_000_000 + rows * 5),
                until_ms: Some(1_700_000_000_000 + rows * 5 + 600_000),
                rule: Some("rule-3".into()),
                ..Default::default()
            },
        ),
    ];
    let mut queries = Vec::new();
    for (name, f) in &filters {
        let mut times: Vec<f64> = Vec::new();
        let mut cursor = None;
        for _ in 0..200 {
            let t = Instant::now();
            let page = store.query(f, cursor, 100).unwrap();
            times.push(t.elapsed().as_secs_f64() * 1000.0);
            cursor = page.next;
        }
        times.sort_by(|a, b| a.partial_cmp(b).unwrap());
        println!(
            "{label}: query {name:<24} p50 {:>7.2} ms   p99 {:>7.2} ms   (200 pages of 100)",
            times[100], times[197]
        );
        queries.push((name.to_string(), times[100], times[197]));
    }
    Measured { plain: plain_rate, chained: rate, verify: secs, read: read_secs, queries }
}

fn main() {
    let rows: u64 = std::env::var("ROWS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let dir = std::env::temp_dir();
    let pid = std::process::id();
    let plain_path = dir.join(format!("sluice-store-bench-plain-{pid}.db"));
    let path = dir.join(format!("sluice-store-bench-{pid}.db"));
    let rules_path = dir.join(format!("sluice-store-bench-rules-{pid}.db"));
    for p in [&plain_path, &path, &rules_path] {
        remove_store(p);
    }
    let read = || {
        let conn = rusqlite::Connection::open(&path).unwrap();
        let mut bytes = 0usize;
        let mut st = conn.prepare("SELECT id, cn, link, record FROM flows ORDER BY id").unwrap();
        let mut q = st.query([]).unwrap();
        while let Some(r) = q.next().unwrap() {
            bytes += r.get_ref(3).unwrap().as_str().unwrap().len();
        }
        bytes
    };
    let sqlite = suite(
        "sqlite",
        &mut FlowStore::open(&plain_path).unwrap(),
        &mut FlowStore::open(&path).unwrap(),
        &mut RuleStore::open(&rules_path).unwrap(),
        &read,
        rows,
    );
    for p in [&plain_path, &path, &rules_path] {
        remove_store(p);
    }
    let Ok(url) = std::env::var("SLUICE_BENCH_POSTGRES") else {
        println!("(SLUICE_BENCH_POSTGRES unset: no PostgreSQL rows)");
        return;
    };
    use sluice_control::pg::{records::PgRecordStore, rules::PgRuleStore};
    let (plain_url, plain_schema) = sluice_control::pg::fresh_schema(&url, "bench_plain").unwrap();
    let (chained_url, schema) = sluice_control::pg::fresh_schema(&url, "bench").unwrap();
    let read = || {
        let pg = sluice_control::pg::Pg::connect(&chained_url).unwrap();
        sluice_control::pg::count_record_bytes(&pg).unwrap()
    };
    let pg = suite(
        "postgres",
        &mut PgRecordStore::open(&plain_url).unwrap(),
        &mut PgRecordStore::open(&chained_url).unwrap(),
        &mut PgRuleStore::open(&chained_url).unwrap(),
        &read,
        rows,
    );
    println!(
        "postgres / sqlite: ingest unchained {:.2}x, chained {:.2}x; verify {:.2}x (reading alone {:.2}x)",
        pg.plain / sqlite.plain,
        pg.chained / sqlite.chained,
        pg.verify / sqlite.verify,
        pg.read / sqlite.read
    );
    for ((name, p50, p99), (_, s50, s99)) in pg.queries.iter().zip(&sqlite.queries) {
        println!(
            "postgres / sqlite: query {name:<24} p50 {:.2}x   p99 {:.2}x",
            p50 / s50,
            p99 / s99
        );
    }
    for s in [&plain_schema, &schema] {
        sluice_control::pg::drop_schema(&url, s).unwrap();
    }
}
