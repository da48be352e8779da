//! Tampering done directly in the stores' database, as someone with write access to them
//! would, is found and placed; retention with its checkpoint still verifies. The record
//! store's cases run against SQLite and PostgreSQL alike.
use super::*;
use crate::chains::chain_name;
use crate::record::Row;
use crate::records::RecordStore;
use crate::rulestore::{RuleLog, RuleStore};
use crate::store::FlowStore;
use sluice_audit::{GENESIS, Link, Signer};

const DP: &str = "dp1";

struct World {
    flows: Box<dyn RecordStore>,
    rules: Box<dyn RuleLog>,
    signer: Signer,
    /// Runs SQL on the record store's database, beside the store.
    flows_sql: Sql,
    /// Runs SQL on the rule store's database.
    rules_sql: Sql,
    /// The SQLite files, removed at the end.
    _dir: Option<TempDir>,
}

/// Runs SQL on a store's database.
type Sql = Box<dyn Fn(&str)>;

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A record line as the data plane's spool writes it, and the link after it.
fn line(seq: u64, n: u64, prev: Link, kind: &str) -> (String, Link) {
    let text = format!(
        "{{\"seq\":{seq},\"chain\":{n},\"prev\":\"{prev}\",\"type\":\"{kind}\",\"ts_ms\":{},\"src\":\"10.20.1.{n}\",\"verdict\":\"allow\"}}",
        1_000 + n
    );
    let link = sluice_audit::link(&prev, n, text.as_bytes());
    (text, link)
}

/// A world on SQLite files (the record store's changed by a connection of its own).
fn sqlite(n: u64) -> World {
    static K: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let k = K.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("sluice-verify-{}-{k}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("flows.db");
    let flows = Box::new(FlowStore::open(&path).unwrap());
    let conn = rusqlite::Connection::open(&path).unwrap();
    let exec = Box::new(move |q: &str| conn.execute_batch(q).unwrap());
    let rules = Box::new(RuleStore::open(&dir.join("rules.db")).unwrap());
    let conn = rusqlite::Connection::open(dir.join("rules.db")).unwrap();
    let rules_exec = Box::new(move |q: &str| conn.execute_batch(q).unwrap());
    world(n, flows, rules, [exec, rules_exec], Some(TempDir(dir)))
}

/// A world on a fresh PostgreSQL schema.
fn postgres(n: u64) -> World {
    let cfg = crate::pg::testing::fresh().expect("checked before");
    let flows = Box::new(crate::pg::records::PgRecordStore::open_with(cfg.clone()).unwrap());
    let rules = Box::new(crate::pg::rules::PgRuleStore::open_with(cfg.clone()).unwrap());
    let pg = crate::pg::Pg::connect_with(cfg.clone()).unwrap();
    let exec = Box::new(move |q: &str| crate::pg::wait(pg.client_ref().batch_execute(q)).unwrap());
    let pg = crate::pg::Pg::connect_with(cfg).unwrap();
    let rules_exec =
        Box::new(move |q: &str| crate::pg::wait(pg.client_ref().batch_execute(q)).unwrap());
    world(n, flows, rules, [exec, rules_exec], None)
}

/// Records 1..=`n` of one data plane (every third a request, a statistics record between),
/// checkpoints at every 10th, control's audit log with a few entries, checkpointed.
fn world(
    n: u64,
    mut flows: Box<dyn RecordStore>,
    mut rules: Box<dyn RuleLog>,
    [flows_sql, rules_sql]: [Sql; 2],
    dir: Option<TempDir>,
) -> World {
    let signer = Signer::from_secret(&[5; 32]);
    let mut prev = GENESIS;
    let mut seq = 0;
    for i in 1..=n {
        seq += 1;
        let (text, link) = line(seq, i, prev, if i % 3 == 0 { "request" } else { "flow" });
        seq += 1;
        let stats = format!("{{\"seq\":{seq},\"type\":\"stats\"}}");
        let rows: Vec<Row<'_>> =
            [text.as_str(), stats.as_str()].iter().filter_map(|t| Row::read(t, DP)).collect();
        assert_eq!(flows.ingest(DP, &rows).unwrap(), [true, false]);
        if i % 10 == 0 {
            let cp = signer.sign(&chain_name(DP, 0), i, link, 5_000 + i).unwrap();
            rules.add_checkpoint(&cp).unwrap();
        }
        prev = link;
    }
    for a in ["rules.push", "token.use", "keys.set"] {
        rules.audit("ops", a, "{}", Some(1)).unwrap();
    }
    let (cn, head) = rules.chain_head().unwrap().unwrap();
    rules.add_checkpoint(&signer.sign(CONTROL_CHAIN, cn, head, 9_000).unwrap()).unwrap();
    assert!(flows.take_notes().is_empty());
    World { flows, rules, signer, flows_sql, rules_sql, _dir: dir }
}

fn run(w: &World) -> Verification {
    verify(w.flows.view(), &*w.rules, &w.signer.public(), &Ask::default()).unwrap()
}

/// Each test on either store: `new` makes its worlds.
macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        mod on_sqlite {
            $(#[test] fn $name() { super::$name(&super::sqlite) })*
        }
        mod on_postgres {
            $(#[test] fn $name() {
                if crate::pg::testing::fresh().is_some() {
                    super::$name(&super::postgres)
                }
            })*
        }
    };
}

on_both! {
    an_untouched_store_verifies, a_changed_field_is_found_at_its_row, a_deleted_row_is_removed,
    an_inserted_row_is_found, a_truncated_tail_is_removed_up_to_the_head,
    retention_keeps_a_checkpoint_at_the_cut_and_still_verifies,
    a_record_that_breaks_the_chain_is_refused_at_ingest_and_reported_as_such,
    an_indexed_column_changed_alone_is_found_and_does_not_fool_retention,
    a_replaced_checkpoint_signature_is_forged, control_s_own_log_is_a_chain_too,
}

type New = dyn Fn(u64) -> World;

/// (chain, kind, seq, last_seq) of every finding.
fn found(v: &Verification) -> Vec<(String, &'static str, u64, Option<u64>)> {
    v.chains
        .iter()
        .flat_map(|c| c.findings.iter().map(|f| (c.chain.clone(), f.kind, f.seq, f.last_seq)))
        .collect()
}

fn sql(w: &World, q: &str) {
    (w.flows_sql)(q);
}

const CH: &str = "dp:dp1:0";

fn an_untouched_store_verifies(world: &New) {
    let w = world(40);
    let v = run(&w);
    assert!(v.clean, "{:?}", found(&v));
    let dp = &v.chains[1];
    assert_eq!((dp.chain.as_str(), dp.records, dp.checkpoints_matched), (CH, 40, 4));
    assert_eq!((dp.first_seq, dp.last_seq), (Some(1), Some(40)));
    assert_eq!((v.chains[0].records, v.chains[0].checkpoints_matched), (3, 1));
}

fn a_changed_field_is_found_at_its_row(world: &New) {
    let w = world(40);
    sql(&w, "UPDATE flows SET record = replace(record, '\"allow\"', '\"block\"') WHERE cn = 7");
    let v = run(&w);
    assert_eq!(found(&v), [(CH.into(), "changed", 7, None)]);
    assert!(v.chains[1].findings[0].row.as_deref().unwrap().starts_with("flows:"));
    // The link column rewritten too: the next record still commits to the old one.
    let w = world(40);
    sql(
        &w,
        "UPDATE requests SET verdict = 'block', record = replace(record, '\"allow\"', '\"block\"') WHERE cn = 9",
    );
    let v = run(&w);
    assert_eq!(found(&v)[0], (CH.into(), "changed", 9, None));
}

fn a_deleted_row_is_removed(world: &New) {
    let w = world(40);
    sql(&w, "DELETE FROM requests WHERE cn = 12");
    assert_eq!(found(&run(&w)), [(CH.into(), "removed", 12, Some(12))]);
}

fn an_inserted_row_is_found(world: &New) {
    let w = world(40);
    sql(&w, "INSERT INTO flows (dataplane, seq, ts_ms, record, ce, cn, link)
             SELECT dataplane, seq + 100000, ts_ms, replace(record, '10.20.1.14', '10.20.1.200'), ce, cn, link
             FROM flows WHERE cn = 14");
    let f = found(&run(&w));
    assert!(f.contains(&(CH.into(), "inserted", 14, None)), "{f:?}");
}

#[test]
fn two_swapped_rows_are_reordered() {
    let w = sqlite(40);
    // Swap the contents of rows holding positions 4 and 5 (same table): the row ids stay.
    let c = rusqlite::Connection::open(w._dir.as_ref().unwrap().0.join("flows.db")).unwrap();
    let (a, b): (i64, i64) = (
        c.query_row("SELECT id FROM flows WHERE cn = 4", [], |r| r.get(0)).unwrap(),
        c.query_row("SELECT id FROM flows WHERE cn = 5", [], |r| r.get(0)).unwrap(),
    );
    let cols = "record, cn, link, seq, ts_ms, identity, user, src, sni, category, verdict, rule";
    c.execute_batch(&format!(
        "CREATE TEMP TABLE t AS SELECT * FROM flows WHERE id IN ({a}, {b});
         UPDATE flows SET seq = -seq WHERE id IN ({a}, {b});
         UPDATE flows SET ({cols}) = (SELECT {cols} FROM t WHERE id = {b}) WHERE id = {a};
         UPDATE flows SET ({cols}) = (SELECT {cols} FROM t WHERE id = {a}) WHERE id = {b};"
    ))
    .unwrap();
    let f = found(&run(&w));
    assert_eq!(f, [(CH.into(), "reordered", 5, None)]);
}

fn a_truncated_tail_is_removed_up_to_the_head(world: &New) {
    let w = world(40);
    sql(&w, "DELETE FROM flows WHERE cn > 25; DELETE FROM requests WHERE cn > 25");
    let f = found(&run(&w));
    assert_eq!(f, [(CH.into(), "removed", 26, Some(40))]);
}

fn a_replaced_checkpoint_signature_is_forged(world: &New) {
    let w = world(40);
    (w.rules_sql)(
        "UPDATE checkpoints SET line = substr(line, 1, length(line) - 1) ||
           CASE substr(line, length(line), 1) WHEN '0' THEN '1' ELSE '0' END WHERE seq = 20",
    );
    assert_eq!(found(&run(&w)), [(CH.into(), "forged-checkpoint", 20, None)]);
}

fn control_s_own_log_is_a_chain_too(world: &New) {
    let w = world(10);
    (w.rules_sql)("UPDATE audit SET who = 'someone-else' WHERE n = 2");
    assert_eq!(found(&run(&w)), [("control".into(), "changed", 2, None)]);
    let w = world(10);
    (w.rules_sql)("DELETE FROM audit WHERE n = 3");
    // The last entry, checkpointed: the tail up to the checkpoint is gone.
    assert_eq!(found(&run(&w)), [("control".into(), "removed", 3, Some(3))]);
}

fn retention_keeps_a_checkpoint_at_the_cut_and_still_verifies(world: &New) {
    let mut w = world(40);
    let cuts = w.flows.retention_cuts(1_000 + 17, u64::MAX).unwrap();
    assert_eq!(cuts.len(), 1);
    assert_eq!(cuts[0].n, 16, "records older than 1017 ms are positions 1..16");
    let cp = w.signer.sign(CH, cuts[0].n, cuts[0].link, 8_000).unwrap();
    w.rules.add_checkpoint(&cp).unwrap();
    let deleted = w.flows.prune_at(1_017, u64::MAX, &cuts).unwrap();
    assert_eq!(deleted, 16);
    let v = run(&w);
    assert!(v.clean, "{:?}", found(&v));
    assert_eq!((v.chains[1].from_checkpoint, v.chains[1].first_seq), (Some(16), Some(17)));
    assert_eq!(v.chains[1].first_ts_ms, Some(1_017));
    // Without the checkpoint at the cut, the deletion is a removal.
    let mut w = world(40);
    let cuts = w.flows.retention_cuts(1_017, u64::MAX).unwrap();
    w.flows.prune_at(1_017, u64::MAX, &cuts).unwrap();
    assert_eq!(found(&run(&w)), [(CH.into(), "removed", 1, Some(16))]);
}

fn a_record_that_breaks_the_chain_is_refused_at_ingest_and_reported_as_such(world: &New) {
    let mut w = world(5);
    // Position 6 claims another record before it: refused, not stored.
    let (bad, bad_link) = line(100, 6, Link([9; 32]), "flow");
    let (next, _) = line(101, 7, bad_link, "flow");
    let rows: Vec<Row<'_>> =
        [bad.as_str(), next.as_str()].iter().filter_map(|t| Row::read(t, DP)).collect();
    assert_eq!(w.flows.ingest(DP, &rows).unwrap(), [false, true]);
    let notes = w.flows.take_notes();
    assert_eq!(notes.len(), 1);
    assert_eq!(notes[0].action, "chain.refused");
    assert!(notes[0].detail.contains("\"n\":6"), "{}", notes[0].detail);
    // Written to control's chain, as the daemon does: verification says why 6 is missing.
    w.rules.audit("dataplane:dp1", &notes[0].action, &notes[0].detail, None).unwrap();
    let v = run(&w);
    let f = found(&v);
    assert_eq!(f, [(CH.into(), "gap", 6, Some(6))]);
    assert!(v.chains[1].findings[0].detail.contains("refused at ingest"));
}

fn an_indexed_column_changed_alone_is_found_and_does_not_fool_retention(world: &New) {
    let mut w = world(40);
    // Made to look old (and to hide from a time window): the record still says otherwise.
    sql(&w, "UPDATE flows SET ts_ms = 0 WHERE cn = 31");
    let f = found(&run(&w));
    assert_eq!(f, [(CH.into(), "changed", 31, None)]);
    assert!(run(&w).chains[1].findings[0].detail.contains("ts_ms"));
    // Retention does not take positions 1..31 for it: only what is old by its record.
    let cuts = w.flows.retention_cuts(1_000 + 17, u64::MAX).unwrap();
    assert_eq!(cuts.iter().map(|c| c.n).collect::<Vec<_>>(), [16]);
    let w2 = world(10);
    sql(&w2, "UPDATE requests SET verdict = 'allow-ish' WHERE cn = 3");
    assert_eq!(found(&run(&w2)), [(CH.into(), "changed", 3, None)]);
    let _ = &mut w;
}
