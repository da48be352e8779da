//! Tests of the outbox on both stores, and of its writing to the audit log: a note survives a
//! control stopped between an ingest's commit and the audit write, and is written once.
use sluice_audit::{GENESIS, Link};

use super::*;
use crate::record::Row;
use crate::records::RecordStore;
use crate::state::Stores;

const DP: &str = "dp1";

/// A chained flow record at position `n` after `prev` (an app, so its client is discovered).
fn line(n: u64, prev: Link) -> String {
    format!(
        "{{\"seq\":{n},\"chain\":{n},\"prev\":\"{prev}\",\"type\":\"flow\",\"event\":\"end\",\"ts_ms\":{},\"src\":\"10.20.1.9\",\"identity\":\"finance\",\"ja4\":\"t13d1812h1_85036bcba153_d41ae481755e\",\"app\":\"curl\",\"sni\":\"api.openai.com\",\"verdict\":\"allow\"}}",
        1_000 + n
    )
}

/// A batch that starts the chain at position 3: positions 1 and 2 never arrived.
fn gapped() -> Vec<String> {
    let first = line(3, Link([7; 32]));
    let second = line(4, sluice_audit::link(&Link([7; 32]), 3, first.as_bytes()));
    vec![first, second]
}

fn ingest(s: &mut dyn RecordStore, texts: &[String]) -> Vec<bool> {
    let rows: Vec<Row<'_>> = texts.iter().map(|t| Row::read(t, DP).unwrap()).collect();
    s.ingest(DP, &rows).unwrap()
}

fn actions(notes: &[Note]) -> Vec<&str> {
    notes.iter().map(|n| n.action.as_str()).collect()
}

/// Control stops after the commit, before the audit log: the replayed batch is skipped, and
/// the outbox still has what the first ingest said. A control that shares the store finds
/// what another left when told to read it all.
fn a_note_outlives_a_stop_between_the_commit_and_the_audit_log(
    mut open: impl FnMut() -> Box<dyn RecordStore>,
) {
    let batch = gapped();
    let mut other = open();
    assert!(other.leftover_notes(false).unwrap().is_empty(), "a new store's outbox is empty");
    let mut s = open();
    assert_eq!(ingest(&mut *s, &batch), [true, true]);
    let said = s.take_notes();
    assert_eq!(actions(&said), ["discovery", "chain.gap"]);
    assert!(said[1].detail.contains("\"from\":1") && said[1].detail.contains("\"to\":2"));
    // Taken and not cleared: read again, marked as this control's.
    let again = s.leftover_notes(false).unwrap();
    assert_eq!(
        again.iter().map(|n| (n.id, n.again)).collect::<Vec<_>>(),
        [(said[0].id, true), (said[1].id, true)]
    );
    drop(s);

    // Another control that read the outbox empty before finds them only when told to read
    // it all (before verification, an export, at start).
    assert!(other.leftover_notes(false).unwrap().is_empty());
    assert_eq!(other.leftover_notes(true).unwrap(), said);
    drop(other);

    let mut s = open();
    assert_eq!(ingest(&mut *s, &batch), [false, false], "the copy sent again is skipped");
    assert!(s.take_notes().is_empty(), "nothing new is said of the copy");
    let left = s.leftover_notes(false).unwrap();
    assert_eq!(left, said, "a store opened again reads what was left");
    s.clear_notes(&[left[0].id]).unwrap();
    // Read before: marked, so that this control does not announce it twice.
    let left = s.leftover_notes(false).unwrap();
    assert_eq!(left.iter().map(|n| (n.id, n.again)).collect::<Vec<_>>(), [(said[1].id, true)]);
    s.clear_notes(&[left[0].id]).unwrap();
    assert!(s.leftover_notes(false).unwrap().is_empty());
    assert!(s.leftover_notes(true).unwrap().is_empty());
}

struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let dir = std::env::temp_dir().join(format!("sluice-notes-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn sqlite_a_note_outlives_a_stop_between_the_commit_and_the_audit_log() {
    let dir = TempDir::new();
    let path = dir.0.join("flows.db");
    a_note_outlives_a_stop_between_the_commit_and_the_audit_log(|| {
        Box::new(crate::store::FlowStore::open(&path).unwrap())
    });
}

#[test]
fn postgres_a_note_outlives_a_stop_between_the_commit_and_the_audit_log() {
    let Some(cfg) = crate::pg::testing::fresh() else { return };
    a_note_outlives_a_stop_between_the_commit_and_the_audit_log(|| {
        Box::new(crate::pg::records::PgRecordStore::open_with(cfg.clone()).unwrap())
    });
}

fn state(dir: &TempDir, flows: Box<dyn RecordStore>) -> AppState {
    let stores = Stores {
        rules: Box::new(crate::rulestore::RuleStore::open_in_memory().unwrap()),
        flows,
        identities: Box::new(crate::identstore::IdentStore::open_in_memory().unwrap()),
        keys: crate::keystore::KeyStore::open(&dir.0.join("keys.db"), &dir.0.join("kek")).unwrap(),
        approvals: crate::approvals::ApprovalStore::open_in_memory().unwrap(),
        fleet: crate::fleet::Fleet::open(&dir.0).unwrap(),
    };
    let tokens = crate::auth::Tokens::new(&[]);
    AppState::new(tokens, stores, crate::hub::Hub::new(None), None, None)
}

/// `(action, detail)` of the audit log's entries by data plane `DP`, oldest first.
fn audited(st: &AppState) -> Vec<(String, String)> {
    let rules = st.rules.lock().unwrap();
    let mut log: Vec<(String, String)> = rules
        .audit_log(100)
        .unwrap()
        .into_iter()
        .filter(|e| e.who == format!("dataplane:{DP}"))
        .map(|e| (e.action, e.detail))
        .collect();
    log.reverse();
    log
}

#[test]
fn drain_writes_what_an_earlier_control_left_and_writes_it_once() {
    let dir = TempDir::new();
    let path = dir.0.join("flows.db");
    // An earlier control stored the batch and stopped before the audit log.
    let said = {
        let mut s = crate::store::FlowStore::open(&path).unwrap();
        ingest(&mut s, &gapped());
        s.take_notes()
    };
    let st = state(&dir, Box::new(crate::store::FlowStore::open(&path).unwrap()));
    let mut alerts = st.hub.subscribe();
    drain(&st, &mut **st.flows.lock().unwrap());
    let want: Vec<(String, String)> =
        said.iter().map(|n| (n.action.clone(), n.detail.clone())).collect();
    assert_eq!(audited(&st), want);
    assert!(st.flows.lock().unwrap().leftover_notes(true).unwrap().is_empty());
    let mut heard = Vec::new();
    while let Ok(v) = alerts.try_recv() {
        heard.push(v);
    }
    assert!(heard.iter().any(|v| v["alert"] == "chain.gap"), "{heard:?}");
    assert!(heard.iter().any(|v| v["app"] == "curl"), "the discovery: {heard:?}");

    // A control that wrote the audit log and stopped before clearing the outbox: the note
    // is not written twice.
    let text = line(9, Link([8; 32]));
    let fresh = {
        let mut flows = st.flows.lock().unwrap();
        assert_eq!(ingest(&mut **flows, std::slice::from_ref(&text)), [true]);
        flows.take_notes()
    };
    assert_eq!(actions(&fresh), ["chain.gap"]);
    {
        let mut rules = st.rules.lock().unwrap();
        rules.audit(&format!("dataplane:{DP}"), "chain.gap", &fresh[0].detail, None).unwrap();
    }
    drain(&st, &mut **st.flows.lock().unwrap());
    let gaps = audited(&st).into_iter().filter(|(a, _)| a == "chain.gap").count();
    assert_eq!(gaps, 2, "the first gap and the second, each once");
    assert!(st.flows.lock().unwrap().leftover_notes(true).unwrap().is_empty());
}

#[test]
fn a_batch_in_order_leaves_the_outbox_empty_and_reads_it_once() {
    let dir = TempDir::new();
    let st = state(&dir, Box::new(crate::store::FlowStore::open(&dir.0.join("f.db")).unwrap()));
    let first = line(1, GENESIS);
    let second = line(2, sluice_audit::link(&GENESIS, 1, first.as_bytes()));
    {
        let mut flows = st.flows.lock().unwrap();
        ingest(&mut **flows, &[first]);
        drain(&st, &mut **flows);
        ingest(&mut **flows, &[second]);
        drain(&st, &mut **flows);
    }
    // One discovery, no break of the chain.
    assert_eq!(audited(&st).iter().map(|(a, _)| a.as_str()).collect::<Vec<_>>(), ["discovery"]);
    assert!(st.flows.lock().unwrap().leftover_notes(true).unwrap().is_empty());
}
