//! Tests of the record spool.
use super::*;
use serde_json::json;

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sluice-spool-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn recs(n: usize) -> Vec<String> {
    (0..n).map(|i| json!({"type": "flow", "i": i, "pad": "x".repeat(100)}).to_string()).collect()
}

#[test]
fn numbers_acks_and_survives_reopen() {
    let d = dir("reopen");
    let mut s = Spool::open(&d, 1 << 30).unwrap();
    assert_eq!(s.append(&recs(5)).unwrap(), 1);
    assert_eq!(s.append(&recs(3)).unwrap(), 6);
    assert_eq!(s.depth(), 8);
    let got = s.read_after(3, 100).unwrap();
    assert_eq!(got.iter().map(|r| r.0).collect::<Vec<_>>(), vec![4, 5, 6, 7, 8]);
    s.ack(8).unwrap();
    assert_eq!(s.depth(), 0);
    assert!(s.read_after(0, 100).unwrap().is_empty());
    s.append(&recs(2)).unwrap();
    drop(s);
    // A crash mid-write leaves a torn line: cut off on reopen, numbering continues.
    let last = std::fs::read_dir(&d).unwrap().map(|e| e.unwrap().path()).max().unwrap();
    OpenOptions::new().append(true).open(&last).unwrap().write_all(b"{\"seq\":11,\"ty").unwrap();
    let mut s = Spool::open(&d, 1 << 30).unwrap();
    assert_eq!(s.next_seq(), 11);
    assert_eq!(s.depth(), 2);
    assert_eq!(s.read_after(0, 100).unwrap().iter().map(|r| r.0).collect::<Vec<_>>(), vec![9, 10]);
    assert_eq!(s.append(&recs(1)).unwrap(), 11);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn reads_continue_where_they_stopped() {
    // From memory (the newest lines) and from the files alike.
    for (name, recent_max) in [("cursor", RECENT_BYTES), ("cursor-disk", 0)] {
        reads_continue(name, recent_max);
    }
}

fn reads_continue(name: &str, recent_max: usize) {
    let d = dir(name);
    let mut s = Spool::open(&d, 1 << 30).unwrap();
    s.recent_max = recent_max;
    s.append(&recs(10)).unwrap();
    assert_eq!(s.recent.len(), if recent_max > 0 { 10 } else { 0 });
    let seqs = |v: Vec<(u64, Bytes)>| v.into_iter().map(|r| r.0).collect::<Vec<_>>();
    assert_eq!(seqs(s.read_after(0, 3).unwrap()), vec![1, 2, 3]);
    assert_eq!(seqs(s.read_after(3, 3).unwrap()), vec![4, 5, 6], "resumed at the cursor");
    assert_eq!(
        seqs(s.read_after(2, 100).unwrap()),
        (3..=10).collect::<Vec<_>>(),
        "a replay reads from the start"
    );
    s.append(&recs(1)).unwrap();
    assert_eq!(seqs(s.read_after(10, 100).unwrap()), vec![11]);
    let line = &s.read_after(10, 1).unwrap()[0].1;
    let line = std::str::from_utf8(line).unwrap();
    assert!(line.starts_with("{\"seq\":11,\"chain\":11,\"prev\":\""), "{line}");
    assert!(line.contains(",\"type\":\"flow\"") && !line.ends_with('\n'), "{line}");
    s.ack(4).unwrap();
    assert_eq!(seqs(s.read_after(0, 2).unwrap()), vec![5, 6], "acknowledged ones are gone");
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn memory_keeps_the_newest_lines_within_its_bound() {
    let d = dir("recent");
    let mut s = Spool::open(&d, 1 << 30).unwrap();
    s.recent_max = 1_000;
    s.append(&recs(30)).unwrap();
    assert!(s.recent_bytes <= 1_000 && s.recent.back().unwrap().0 == 30);
    assert!(s.recent.front().unwrap().0 > 1);
    // The oldest come from the files, the newest from memory: all of them, in order.
    let all: Vec<u64> = s.read_after(0, 100).unwrap().into_iter().map(|r| r.0).collect();
    assert_eq!(all, (1..=30).collect::<Vec<_>>());
    let tail: Vec<u64> = s.read_after(28, 100).unwrap().into_iter().map(|r| r.0).collect();
    assert_eq!(tail, vec![29, 30]);
    // The batch was larger than the bound: its kept lines were copied out of its buffer, and
    // read as the file has them.
    let disk =
        std::fs::read_to_string(std::fs::read_dir(&d).unwrap().next().unwrap().unwrap().path())
            .unwrap();
    for (seq, line) in s.read_after(20, 100).unwrap() {
        let line = std::str::from_utf8(&line).unwrap();
        assert!(line.starts_with(&format!("{{\"seq\":{seq},")), "{line}");
        assert!(disk.lines().any(|l| l == line), "{line}");
    }
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn a_line_damaged_on_disk_is_skipped_not_sent() {
    let d = dir("damaged");
    let mut s = Spool::open(&d, 1 << 30).unwrap();
    s.append(&recs(3)).unwrap();
    drop(s);
    // Record 2's text damaged in place (its number intact): not JSON any more.
    let file = std::fs::read_dir(&d).unwrap().next().unwrap().unwrap().path();
    let text = std::fs::read_to_string(&file).unwrap();
    let at = text.find("{\"seq\":2,").unwrap() + 9;
    let mut bytes = text.into_bytes();
    bytes[at] = b'x';
    std::fs::write(&file, &bytes).unwrap();
    let mut s = Spool::open(&d, 1 << 30).unwrap();
    let got: Vec<u64> = s.read_after(0, 100).unwrap().into_iter().map(|r| r.0).collect();
    assert_eq!(got, vec![1, 3]);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn past_the_bound_with_the_disk_short_the_oldest_go_counted_and_alarmed() {
    let d = dir("bound");
    // Segments of max/4 bytes: at most about four kept.
    let mut s = Spool::open(&d, 40_000).unwrap();
    s.room = Some(0);
    for _ in 0..100 {
        s.append(&recs(10)).unwrap();
    }
    assert!(s.bytes() <= 40_000 + 10_000, "{} bytes", s.bytes());
    assert!(s.dropped() > 0);
    assert_eq!(s.take_alarm(), s.dropped(), "every drop raises the alarm");
    assert_eq!(s.take_alarm(), 0, "once");
    assert_eq!(s.dropped() + s.depth(), 1000, "every record is either spooled or counted");
    let kept = s.read_after(0, usize::MAX).unwrap();
    assert_eq!(kept.len() as u64, s.depth());
    assert_eq!(kept.last().unwrap().0, 1000);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn past_the_bound_with_room_nothing_is_dropped() {
    let d = dir("room");
    let mut s = Spool::open(&d, 40_000).unwrap();
    s.room = Some(1 << 30);
    for _ in 0..100 {
        s.append(&recs(10)).unwrap();
    }
    assert!(s.at_bound() && s.bytes() > 80_000, "{} bytes", s.bytes());
    assert_eq!((s.dropped(), s.take_alarm(), s.depth()), (0, 0, 1000));
    // The disk runs short: the bound applies again.
    s.room = Some(0);
    s.append(&recs(1)).unwrap();
    assert!(s.bytes() <= 50_000 && s.dropped() > 0);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn the_disk_reserve_is_a_twentieth_at_least_64_mib() {
    assert_eq!(reserve(1 << 30), 64 << 20);
    assert_eq!(reserve(100 << 30), 5 << 30);
    let (free, size) = disk_room(Path::new("/")).unwrap();
    assert!(size > 0 && free <= size);
}

/// A full disk loses nothing silently: the records wait in memory (counted), the torn
/// half-write is cut off, and once the disk takes them they are written in order, before
/// the newer ones; past the memory bound the oldest are dropped and counted.
#[test]
fn a_full_disk_holds_records_in_memory_and_loses_none() {
    let d = dir("full");
    let mut s = Spool::open(&d, 1 << 30).unwrap();
    assert_eq!(s.append(&recs(2)).unwrap(), 1);
    s.fail_writes = 2;
    let err = s.append(&recs(3)).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
    let sent = s.read_after(0, 100).unwrap();
    assert_eq!(sent.len(), 2, "the torn half-write is never read as a record");
    assert!(s.append(&recs(1)).is_err());
    assert_eq!((s.pending(), s.write_errors(), s.dropped()), (4, 2, 0));
    assert_eq!(s.next_seq(), 3, "nothing numbered while unwritten");
    // The disk has room again: the four waiting, then the new one.
    assert_eq!(s.append(&recs(1)).unwrap(), 3);
    assert_eq!(s.pending(), 0);
    let got = s.read_after(0, 100).unwrap();
    assert_eq!(got.iter().map(|r| r.0).collect::<Vec<_>>(), vec![1, 2, 3, 4, 5, 6, 7]);
    assert!(got.iter().all(|(_, l)| serde_json::from_slice::<Value>(l).is_ok()), "no torn line");
    drop(s);
    // Read back after a restart: the same seven, whole.
    let mut s = Spool::open(&d, 1 << 30).unwrap();
    assert_eq!(s.read_after(0, 100).unwrap().len(), 7);
    // The memory bound: the oldest held records go, counted.
    s.fail_writes = u32::MAX;
    let big: Vec<String> = (0..70)
        .map(|i| json!({"type": "flow", "i": i, "pad": "x".repeat(1 << 20)}).to_string())
        .collect();
    assert!(s.append(&big).is_err());
    assert!(s.pending() < 70 && s.dropped() == (70 - s.pending()) as u64, "{}", s.pending());
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn skip_to_continues_after_control() {
    let d = dir("skip");
    let mut s = Spool::open(&d, 1 << 30).unwrap();
    s.skip_to(41).unwrap();
    assert_eq!(s.append(&recs(1)).unwrap(), 42);
    assert_eq!(s.depth(), 1);
    s.skip_to(10).unwrap();
    assert_eq!(s.next_seq(), 43);
    drop(s);
    assert_eq!(Spool::open(&d, 1 << 30).unwrap().next_seq(), 43);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn unacknowledged_writes_are_synced_as_a_group_commit() {
    let d = dir("sync");
    let ms = std::time::Duration::from_millis;
    let mut s = Spool::open(&d, 1 << 30).unwrap();
    assert_eq!(s.sync_every(), SYNC_EVERY);
    // Within the interval: written (readable, and on reopen), not synced yet.
    s.set_sync_every(std::time::Duration::from_secs(3600));
    s.append(&recs(3)).unwrap();
    s.append(&recs(2)).unwrap();
    assert_eq!((s.syncs(), s.unsynced.len()), (0, 2));
    assert!(!s.sync_due().unwrap(), "not due within the interval");
    assert_eq!(Spool::open(&d, 1 << 30).unwrap().depth(), 5, "in the file at once");
    // Past the interval: the tick syncs what waits, once; nothing waiting, nothing synced.
    s.set_sync_every(ms(5));
    std::thread::sleep(ms(10));
    assert!(s.sync_due().unwrap());
    assert_eq!((s.syncs(), s.unsynced.len()), (1, 0));
    std::thread::sleep(ms(10));
    assert!(!s.sync_due().unwrap(), "nothing written since");
    // A write syncs when the oldest unsynced one is past the interval.
    s.append(&recs(1)).unwrap();
    assert_eq!(s.syncs(), 1, "a fresh write waits");
    std::thread::sleep(ms(10));
    s.append(&recs(1)).unwrap();
    assert_eq!((s.syncs(), s.unsynced.len()), (2, 0));
    // Zero syncs every write.
    s.set_sync_every(std::time::Duration::ZERO);
    s.append(&recs(1)).unwrap();
    s.append(&recs(1)).unwrap();
    assert_eq!(s.syncs(), 4);
    // Writes control acknowledged are never synced: they are control's to keep.
    s.set_sync_every(std::time::Duration::from_secs(3600));
    s.append(&recs(2)).unwrap();
    s.ack(s.next_seq() - 1).unwrap();
    s.set_sync_every(ms(5));
    std::thread::sleep(ms(10));
    assert!(!s.sync_due().unwrap());
    assert_eq!((s.syncs(), s.depth()), (4, 0));
    // Acknowledged in part: the rest is synced, a closed segment through the descriptor
    // kept for it.
    s.set_sync_every(std::time::Duration::from_secs(3600));
    s.append(&recs(2)).unwrap();
    let first = s.next_seq() - 2;
    s.rotate(s.next_seq()).unwrap();
    assert_eq!(s.closing.len(), 1);
    s.ack(first).unwrap();
    s.set_sync_every(ms(5));
    std::thread::sleep(ms(10));
    assert!(s.sync_due().unwrap());
    assert_eq!((s.syncs(), s.unsynced.len(), s.closing.len()), (5, 0, 0));
    // A closed segment acknowledged whole needs no sync, and its descriptor goes.
    s.set_sync_every(std::time::Duration::from_secs(3600));
    s.append(&recs(1)).unwrap();
    s.rotate(s.next_seq()).unwrap();
    s.ack(s.next_seq() - 1).unwrap();
    assert!(!s.sync_due().unwrap());
    assert_eq!((s.syncs(), s.closing.len()), (5, 0));
    // Many writes waiting: synced at the bound, whatever the interval.
    for _ in 0..MAX_UNSYNCED {
        s.append(&recs(1)).unwrap();
    }
    assert_eq!((s.syncs(), s.unsynced.len()), (6, 0));
    // At shutdown, what waits is synced.
    s.set_sync_every(std::time::Duration::from_secs(3600));
    s.append(&recs(1)).unwrap();
    s.sync_now().unwrap();
    assert_eq!((s.syncs(), s.unsynced.len()), (7, 0));
    s.sync_now().unwrap();
    assert_eq!(s.syncs(), 7, "nothing waits");
    std::fs::remove_dir_all(&d).unwrap();
}

/// Flow and request records as their serialisations begin (`type` first).
fn typed(kind: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{{\"type\":\"{kind}\",\"i\":{i}}}")).collect()
}

/// Walks every line still spooled (from disk) and checks the chain across them, from `head`;
/// returns the head after the last.
fn walk(s: &mut Spool, mut head: chain::Head) -> chain::Head {
    s.recent_max = 0;
    s.recent.clear();
    for (_, line) in s.read_after(0, usize::MAX).unwrap() {
        if let Some((n, prev)) = chain::read(&line) {
            assert_eq!((n, prev), (head.next, head.link), "{}", String::from_utf8_lossy(&line));
            head = chain::after(&line).unwrap();
        }
    }
    head
}

#[test]
fn flows_and_requests_are_chained_across_writes_failures_and_restarts() {
    let d = dir("chain");
    let mut s = Spool::open(&d, 1 << 30).unwrap();
    s.append(&typed("flow", 3)).unwrap();
    s.append(&[r#"{"type":"stats","frames":1}"#.to_owned()]).unwrap();
    s.append(&typed("request", 2)).unwrap();
    // A failed write numbers nothing: the chain goes on from the last record written.
    s.fail_writes = 1;
    assert!(s.append(&typed("flow", 1)).is_err());
    s.append(&typed("flow", 1)).unwrap();
    let lines = s.read_after(0, 100).unwrap();
    assert_eq!(lines.len(), 8, "3 flows, stats, 2 requests, the held flow and the last");
    assert!(chain::read(&lines[3].1).is_none(), "statistics are not chained");
    let head = walk(&mut s, chain::Head::default());
    assert_eq!(head.next, 8, "seven chained records, positions 1..=7 without gaps");
    drop(s);
    // Read back from the last line at a restart.
    let mut s = Spool::open(&d, 1 << 30).unwrap();
    assert_eq!(s.chain, head);
    // Everything acknowledged (the files go), then a restart: the head file keeps it.
    s.ack(s.next_seq() - 1).unwrap();
    drop(s);
    let mut s = Spool::open(&d, 1 << 30).unwrap();
    assert_eq!(s.chain, head);
    s.append(&typed("flow", 2)).unwrap();
    assert_eq!(walk(&mut s, head).next, 10);
    // Control holds more than this spool knows of (its tail was lost): a new chain begins,
    // rather than positions control already holds being used again.
    s.skip_to(s.next_seq() + 50).unwrap();
    assert_eq!(s.chain, chain::Head::default());
    s.append(&typed("request", 1)).unwrap();
    drop(s);
    assert_eq!(Spool::open(&d, 1 << 30).unwrap().chain.next, 2);
    std::fs::remove_dir_all(&d).unwrap();
}
