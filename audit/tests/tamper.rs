//! Every kind of tampering with a stored chain, done to the rows as an attacker with write
//! access to the store would, is found and placed.
#![allow(clippy::unwrap_used)]

use sluice_audit::{Checkpoint, GENESIS, Kind, Link, Report, Row, Signer, Verifier, link};

#[derive(Clone)]
struct Stored {
    pos: u64,
    seq: u64,
    prev: Link,
    link: Link,
    record: Vec<u8>,
}

/// A chain of `n` records as the writer stores it, and the signer's checkpoints every
/// `every` records.
fn chain(n: u64, every: u64, signer: &Signer) -> (Vec<Stored>, Vec<Checkpoint>) {
    let mut rows = Vec::new();
    let mut cps = Vec::new();
    let mut prev = GENESIS;
    for seq in 1..=n {
        let record =
            format!("{{\"seq\":{seq},\"type\":\"flow\",\"src\":\"10.20.1.10\"}}").into_bytes();
        let l = link(&prev, seq, &record);
        rows.push(Stored { pos: seq * 10, seq, prev, link: l, record });
        if seq % every == 0 {
            cps.push(signer.sign("dp-1", seq, l, 1_000 + seq).unwrap());
        }
        prev = l;
    }
    (rows, cps)
}

fn verify(rows: &[Stored], cps: &[Checkpoint], signer: &Signer) -> Report {
    let mut v = Verifier::new("dp-1", &signer.public(), cps.to_vec());
    for r in rows {
        v.push(Row { pos: r.pos, seq: r.seq, prev: r.prev, link: r.link, record: &r.record });
    }
    v.finish()
}

fn kinds(r: &Report) -> Vec<(Kind, u64, Option<u64>)> {
    r.findings.iter().map(|f| (f.kind, f.seq, f.pos)).collect()
}

fn signer() -> Signer {
    Signer::from_secret(&[42; 32])
}

#[test]
fn an_untouched_chain_verifies_with_its_checkpoints() {
    let s = signer();
    let (rows, cps) = chain(100, 10, &s);
    let r = verify(&rows, &cps, &s);
    assert!(r.is_clean(), "{:?}", r.findings);
    assert_eq!(
        (r.records, r.first_seq, r.last_seq, r.checkpoints_matched),
        (100, Some(1), Some(100), 10)
    );
}

#[test]
fn a_changed_field_is_found_with_and_without_its_link_rewritten() {
    let s = signer();
    let (mut rows, cps) = chain(20, 5, &s);
    rows[6].record = b"{\"seq\":7,\"type\":\"flow\",\"src\":\"10.99.9.9\"}".to_vec();
    assert_eq!(kinds(&verify(&rows, &cps, &s)), [(Kind::Changed, 7, Some(70))]);
    // The attacker recomputes the row's link too: the next row committed to the old one.
    rows[6].link = link(&rows[6].prev, 7, &rows[6].record);
    assert_eq!(kinds(&verify(&rows, &cps, &s)), [(Kind::Changed, 7, Some(70))]);
    // And rewrites the whole chain after it: the signed checkpoint at 10 tells.
    let mut prev = rows[6].link;
    for r in &mut rows[7..] {
        r.prev = prev;
        r.link = link(&prev, r.seq, &r.record);
        prev = r.link;
    }
    let found = verify(&rows, &cps, &s);
    assert_eq!(found.findings[0].kind, Kind::Changed);
    assert_eq!(found.findings[0].seq, 10, "{:?}", found.findings);
    assert!(found.findings[0].detail.contains("signed"), "{}", found.findings[0]);
}

#[test]
fn a_deleted_row_is_a_removed_record() {
    let s = signer();
    let (mut rows, cps) = chain(20, 5, &s);
    rows.remove(11);
    let r = verify(&rows, &cps, &s);
    assert_eq!(kinds(&r), [(Kind::Removed, 12, Some(130))]);
    assert_eq!(r.findings[0].last_seq, Some(12));
    // Several in a row.
    rows.drain(3..6);
    let r = verify(&rows, &cps, &s);
    assert_eq!(
        (r.findings[0].kind, r.findings[0].seq, r.findings[0].last_seq),
        (Kind::Removed, 4, Some(6))
    );
}

#[test]
fn an_inserted_row_is_found_whichever_copy_comes_first() {
    let s = signer();
    let (rows, cps) = chain(20, 5, &s);
    // A forged record with seq 8, chained onto 7, stored after the real 8.
    let forged = b"{\"seq\":8,\"type\":\"flow\",\"src\":\"10.1.1.1\"}".to_vec();
    let f = Stored {
        pos: 85,
        seq: 8,
        prev: rows[6].link,
        link: link(&rows[6].link, 8, &forged),
        record: forged,
    };
    let mut after = rows.clone();
    after.insert(8, f.clone());
    assert_eq!(kinds(&verify(&after, &cps, &s)), [(Kind::Inserted, 8, Some(85))]);
    // Stored before the real one: still the forged one is named.
    let mut before = rows.clone();
    before.insert(7, Stored { pos: 75, ..f });
    assert_eq!(kinds(&verify(&before, &cps, &s)), [(Kind::Inserted, 8, Some(75))]);
}

#[test]
fn two_swapped_rows_are_reordered() {
    let s = signer();
    let (mut rows, cps) = chain(20, 5, &s);
    rows.swap(12, 13);
    let r = verify(&rows, &cps, &s);
    assert_eq!(kinds(&r), [(Kind::Reordered, 14, Some(140))], "{:?}", r.findings);
    // A row moved far back.
    let (mut rows, _) = chain(20, 5, &s);
    let moved = rows.remove(2);
    rows.insert(15, moved);
    let r = verify(&rows, &cps, &s);
    assert!(r.findings.iter().any(|f| f.kind == Kind::Reordered && f.seq == 3), "{:?}", r.findings);
}

#[test]
fn a_truncated_tail_is_found_up_to_the_last_checkpoint() {
    let s = signer();
    let (mut rows, cps) = chain(20, 5, &s);
    rows.truncate(13);
    let r = verify(&rows, &cps, &s);
    assert_eq!(
        (r.findings[0].kind, r.findings[0].seq, r.findings[0].last_seq),
        (Kind::Removed, 14, Some(20))
    );
    // (Records after the last checkpoint cannot be told from records never written: a
    // checkpoint interval bounds what can go unnoticed.)
    let (mut rows, cps) = chain(23, 5, &s);
    rows.truncate(21);
    assert!(verify(&rows, &cps, &s).is_clean());
}

#[test]
fn a_replaced_checkpoint_signature_is_forged() {
    let s = signer();
    let (rows, mut cps) = chain(20, 5, &s);
    cps[1].signature[0] ^= 1;
    let r = verify(&rows, &cps, &s);
    assert_eq!(kinds(&r), [(Kind::ForgedCheckpoint, 10, None)]);
    // Signed by another key (an attacker's), or moved to another head.
    let (_, mut other) = chain(20, 5, &Signer::from_secret(&[1; 32]));
    other.truncate(1);
    assert_eq!(kinds(&verify(&rows, &other, &s)), [(Kind::ForgedCheckpoint, 5, None)]);
    let mut moved = cps.clone();
    moved[3].seq = 19;
    assert!(kinds(&verify(&rows, &moved, &s)).contains(&(Kind::ForgedCheckpoint, 19, None)));
    // A line an attacker edits reads back, and does not verify.
    let line = s.sign("dp-1", 5, GENESIS, 1).unwrap().to_line().replace(" 1 ", " 2 ");
    let edited = Checkpoint::parse_line(&line).unwrap();
    assert!(edited.verify(&s.public()).is_err());
}

#[test]
fn retention_keeps_verification_from_the_checkpoint_at_the_cut() {
    let s = signer();
    let (rows, cps) = chain(40, 10, &s);
    // Retention deleted records 1..=20 and kept the checkpoint at 20.
    let kept = &rows[20..];
    let r = verify(kept, &cps, &s);
    assert!(r.is_clean(), "{:?}", r.findings);
    assert_eq!((r.from_checkpoint, r.first_seq, r.checkpoints_matched), (Some(20), Some(21), 2));
    // A cut where no checkpoint is: records missing from the start.
    let r = verify(&rows[15..], &cps, &s);
    assert_eq!(
        (r.findings[0].kind, r.findings[0].seq, r.findings[0].last_seq),
        (Kind::Removed, 1, Some(15))
    );
}

#[test]
fn numbers_skipped_on_an_intact_chain_are_a_gap() {
    let s = signer();
    let mut prev = GENESIS;
    let mut rows = Vec::new();
    for seq in [1, 2, 3, 7, 8] {
        let record = vec![b'x'; seq as usize];
        let l = link(&prev, seq, &record);
        rows.push(Stored { pos: seq, seq, prev, link: l, record });
        prev = l;
    }
    let r = verify(&rows, &[], &s);
    assert_eq!(kinds(&r), [(Kind::Gap, 4, Some(7))]);
    assert_eq!(
        r.findings[0].to_string(),
        "gap at seq 4..=6 (row 7): numbers skipped, the chain holds"
    );
}

#[test]
fn records_the_writer_said_never_arrived_are_a_gap_not_a_removal() {
    let s = signer();
    let (mut rows, cps) = chain(20, 100, &s);
    rows.drain(4..7); // seq 5..=7
    rows.drain(..2); // seq 1..=2
    let mut v = Verifier::new("dp-1", &s.public(), cps.clone());
    v.expect_gap(5, 6, "lost by the data plane");
    v.expect_gap(7, 7, "refused at ingest");
    v.expect_gap(1, 2, "before the store began");
    for r in &rows {
        v.push(Row { pos: r.pos, seq: r.seq, prev: r.prev, link: r.link, record: &r.record });
    }
    let r = v.finish();
    assert_eq!(
        r.findings.iter().map(|f| (f.kind, f.seq, f.last_seq)).collect::<Vec<_>>(),
        [(Kind::Gap, 1, Some(2)), (Kind::Gap, 5, Some(7))]
    );
    assert!(r.findings[1].detail.contains("lost") && r.findings[1].detail.contains("refused"));
    // A range only partly explained is a removal.
    let mut v = Verifier::new("dp-1", &s.public(), cps);
    v.expect_gap(5, 5, "lost");
    for r in &rows {
        v.push(Row { pos: r.pos, seq: r.seq, prev: r.prev, link: r.link, record: &r.record });
    }
    let kinds: Vec<Kind> = v.finish().findings.iter().map(|f| f.kind).collect();
    assert_eq!(kinds, [Kind::Removed, Kind::Removed]);
}

#[test]
fn a_walk_that_starts_late_or_finds_nothing_new_reports_nothing() {
    let s = signer();
    let (rows, cps) = chain(20, 5, &s);
    // Started after the checkpoint at 20 (`--since`): nothing after it, nothing missing.
    let mut v = Verifier::new("dp-1", &s.public(), cps.clone());
    v.start_after(20);
    v.expect_head(20);
    assert!(v.finish().is_clean());
    // The store's head is ahead of its last row: the tail is gone, unless said missing.
    let mut v = Verifier::new("dp-1", &s.public(), cps.clone());
    v.expect_head(23);
    for r in &rows {
        v.push(Row { pos: r.pos, seq: r.seq, prev: r.prev, link: r.link, record: &r.record });
    }
    let r = v.finish();
    assert_eq!(
        (r.findings[0].kind, r.findings[0].seq, r.findings[0].last_seq),
        (Kind::Removed, 21, Some(23))
    );
    let mut v = Verifier::new("dp-1", &s.public(), cps.clone());
    v.expect_head(23);
    v.expect_gap(21, 23, "refused at ingest");
    for r in &rows {
        v.push(Row { pos: r.pos, seq: r.seq, prev: r.prev, link: r.link, record: &r.record });
    }
    assert_eq!(v.finish().findings.iter().map(|f| f.kind).collect::<Vec<_>>(), [Kind::Gap]);
    // Started at the checkpoint at 10, just before a gap the writer's log explains.
    let mut v = Verifier::new("dp-1", &s.public(), cps);
    v.start_after(10);
    v.expect_gap(11, 12, "lost");
    for r in rows.iter().filter(|r| r.seq > 12) {
        v.push(Row { pos: r.pos, seq: r.seq, prev: r.prev, link: r.link, record: &r.record });
    }
    let r = v.finish();
    assert_eq!(r.findings.iter().map(|f| (f.kind, f.seq)).collect::<Vec<_>>(), [(Kind::Gap, 11)]);
    assert_eq!(r.from_checkpoint, Some(10));
}
