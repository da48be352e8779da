//! The record spool: every record the data plane emits is numbered and written here before
//! it is sent to control, and stays until control acknowledges it. While control is
//! unreachable the spool grows. At its bound (`--spool-max-mb`) periodic records (statistics,
//! flow updates) are no longer spooled ([`Spool::shed`] counts them), and the records of
//! events (flow ends, requests) are, as long as the disk keeps a reserve free; only past that
//! does the oldest segment go: [`Spool::dropped`] counts its records and
//! [`Spool::take_alarm`] tells the writer, which spools an alarm record. After a restart the
//! spool is read back, so records survive a restart of either process.
//!
//! Writes reach the file (the page cache) at once, so a crash of either process loses
//! nothing. Records control has not acknowledged within [`Spool::sync_every`] are synced to
//! the disk, as a group commit (checked at each write and on the writer's tick); those it
//! acknowledged sooner are its to keep, and their files go before the kernel would write
//! them out (ARCHITECTURE.md, "Records and the link", durability).
//!
//! Layout: `DIR/<first seq, 20 digits>.jsonl`, one JSON object per line, each beginning with
//! its `seq` (so reading the number back needs no JSON parse).
//! The newest file is the active one; a file is closed at [`SEGMENT_BYTES`]. This module owns
//! files; it is kept small and is driven by the link thread and the record writer.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use serde_json::Value;

use super::chain;

#[path = "spool_files.rs"]
mod files;
use files::*;

/// Size at which the active segment is closed and a new one begun.
pub const SEGMENT_BYTES: u64 = 4 << 20;

/// Most bytes of records held in memory while the spool cannot be written.
pub const MAX_PENDING_BYTES: usize = 64 << 20;

/// Most bytes of the newest lines kept in memory for the link ([`Spool::read_after`]).
pub const RECENT_BYTES: usize = 8 << 20;

/// Most writes waiting to be synced: at this many, they are synced (a long interval with
/// control away would otherwise grow the list without bound).
const MAX_UNSYNCED: usize = 4096;

/// How long a write control has not acknowledged waits to be synced by default (a group
/// commit).
pub const SYNC_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

#[derive(Debug)]
struct Segment {
    first: u64,
    /// Sequence number after its last record (`first` when empty).
    end: u64,
    bytes: u64,
    path: PathBuf,
}

/// The spool (see the module docs).
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    /// Closed segments, oldest first, then the active one last (never empty).
    segments: VecDeque<Segment>,
    active: File,
    max_bytes: u64,
    acked: u64,
    dropped: u64,
    /// The record chain's head after the last record written ([`chain`]).
    chain: chain::Head,
    /// Where the last [`Spool::read_after`] stopped: the last sequence number it returned,
    /// that record's segment (by first number) and the byte offset after it. The next call
    /// continuing from there seeks instead of reading the segment from its start.
    cursor: Option<(u64, u64, u64)>,
    /// Records a write failed for (the disk full, an I/O error), oldest first, not numbered
    /// yet: written ahead of any newer record once the disk takes them, bounded by
    /// [`MAX_PENDING_BYTES`] (past it the oldest are dropped and counted in `dropped`).
    pending: VecDeque<String>,
    pending_bytes: usize,
    /// Failed writes since the start.
    write_errors: u64,
    /// The last write failed: the active file is reopened and cut back to its last whole
    /// record before the next one.
    broken: bool,
    /// Periodic records not spooled at the bound.
    shed: u64,
    /// Records dropped since the last [`Spool::take_alarm`].
    alarm: u64,
    /// How long a write control has not acknowledged waits to be synced (zero: none waits).
    sync_every: std::time::Duration,
    /// Writes not synced to the disk whose records control has not all acknowledged, oldest
    /// first: the number after their last record, when, and their segment (by first number).
    unsynced: VecDeque<(u64, std::time::Instant, u64)>,
    /// Closed segments that still hold writes in `unsynced`, by first number, kept open so
    /// that their sync reports their write-back errors.
    closing: Vec<(u64, File)>,
    /// Syncs to the disk since the start.
    syncs: u64,
    /// The newest lines written, oldest first with consecutive numbers, up to `recent_max`
    /// bytes: the link reads them from here, not back from the file, and they need no check
    /// (this process wrote them). Older lines, and all of a previous run's, come from disk.
    /// Each is a view into the buffer its batch was written from: numbered once, never
    /// copied again on its way to the link (see [`Spool::remember`] for the memory held).
    recent: VecDeque<(u64, Bytes)>,
    recent_bytes: usize,
    recent_max: usize,
    /// Free bytes of the disk as tests set them.
    #[cfg(test)]
    room: Option<u64>,
    /// Writes to fail, then fail half-way (tests: a full disk).
    #[cfg(test)]
    fail_writes: u32,
}

impl Spool {
    /// Opens the spool in `dir` (created if needed), reading back what a previous run left.
    /// `max_bytes` bounds the whole spool.
    pub fn open(dir: &Path, max_bytes: u64) -> io::Result<Spool> {
        std::fs::create_dir_all(dir)?;
        let mut firsts: Vec<u64> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                name.strip_suffix(".jsonl")?.parse().ok()
            })
            .collect();
        firsts.sort_unstable();
        let mut segments = VecDeque::new();
        // The chain's head: after the newest chained line still spooled, or as kept when the
        // segment now active was begun (its predecessors may be gone).
        let mut head = chain::load(dir).unwrap_or_default();
        for first in firsts {
            let path = seg_path(dir, first);
            let (end, bytes, after) = scan(&path, first)?;
            if let Some(h) = after.filter(|h| h.next > head.next) {
                head = h;
            }
            // A previous run's writes may not have reached the disk: they do now.
            if let Err(e) = File::open(&path).and_then(|f| f.sync_data()) {
                tracing::warn!(file = %path.display(), "spool: syncing a segment at start failed: {e}");
            }
            segments.push_back(Segment { first, end, bytes, path });
        }
        if segments.is_empty() {
            segments.push_back(Segment { first: 1, end: 1, bytes: 0, path: seg_path(dir, 1) });
        }
        let last = segments.back().map(|s| s.path.clone()).unwrap_or_default();
        let active = OpenOptions::new().create(true).append(true).open(&last)?;
        let acked = segments.front().map_or(0, |s| s.first.saturating_sub(1));
        Ok(Spool {
            dir: dir.to_owned(),
            segments,
            active,
            max_bytes: max_bytes.max(1),
            acked,
            dropped: 0,
            chain: head,
            cursor: None,
            pending: VecDeque::new(),
            pending_bytes: 0,
            write_errors: 0,
            broken: false,
            shed: 0,
            alarm: 0,
            sync_every: SYNC_EVERY,
            unsynced: VecDeque::new(),
            closing: Vec::new(),
            syncs: 0,
            recent: VecDeque::new(),
            recent_bytes: 0,
            recent_max: RECENT_BYTES,
            #[cfg(test)]
            room: None,
            #[cfg(test)]
            fail_writes: 0,
        })
    }

    fn active_seg(&self) -> &Segment {
        self.segments.back().expect("the spool always has an active segment")
    }

    /// Sequence number the next record gets.
    pub fn next_seq(&self) -> u64 {
        self.active_seg().end
    }

    /// Records not yet acknowledged.
    pub fn depth(&self) -> u64 {
        self.next_seq().saturating_sub(self.acked + 1)
    }

    /// Records dropped since this process started: at the spool's bound, or from memory
    /// while the disk could not take them.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// True at the bound: periodic records are shed ([`Spool::shed_periodic`]).
    pub fn at_bound(&self) -> bool {
        self.bytes() >= self.max_bytes
    }

    /// Counts `n` periodic records not spooled at the bound.
    pub fn shed_periodic(&mut self, n: usize) {
        self.shed += n as u64;
    }

    /// Periodic records not spooled at the bound since this process started.
    pub fn shed(&self) -> u64 {
        self.shed
    }

    /// Records dropped since the last call (0: nothing to raise an alarm for).
    pub fn take_alarm(&mut self) -> u64 {
        std::mem::take(&mut self.alarm)
    }

    /// True while the disk keeps its reserve free (unknown: false, so the bound applies).
    fn disk_has_room(&self) -> bool {
        #[cfg(test)]
        if let Some(free) = self.room {
            return free > 64 << 20;
        }
        disk_room(&self.dir).is_some_and(|(free, size)| free > reserve(size))
    }

    /// Gives back an alarm that could not be spooled yet (raised again at the next write).
    pub fn rearm_alarm(&mut self, lost: u64) {
        self.alarm += lost;
    }

    /// Records waiting in memory for the disk.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Failed writes since this process started.
    pub fn write_errors(&self) -> u64 {
        self.write_errors
    }

    /// Sets how long a write control has not acknowledged waits to be synced to the disk
    /// (zero: none waits).
    pub fn set_sync_every(&mut self, every: std::time::Duration) {
        self.sync_every = every;
    }

    /// How long a write control has not acknowledged waits to be synced to the disk.
    pub fn sync_every(&self) -> std::time::Duration {
        self.sync_every
    }

    /// Syncs to the disk since this process started.
    pub fn syncs(&self) -> u64 {
        self.syncs
    }

    /// Syncs what was written and is not yet acknowledged, if the oldest such write is
    /// [`Spool::sync_every`] old (the writer calls this on its clock tick, so that the last
    /// writes of a burst do not wait for the next one). A failure is counted as a failed
    /// write and returned (the records stay in the file and are sent; whether they reached
    /// the disk is unknown, as Linux may report a failed writeback once).
    pub fn sync_due(&mut self) -> io::Result<bool> {
        if !self.sync_is_due() {
            return Ok(false);
        }
        self.sync().inspect_err(|_| self.write_errors += 1).map(|()| true)
    }

    /// Syncs what was written and is not yet acknowledged now (at shutdown).
    pub fn sync_now(&mut self) -> io::Result<()> {
        self.settle();
        if self.unsynced.is_empty() { Ok(()) } else { self.sync() }
    }

    /// Forgets unsynced writes control acknowledged whole: they are control's to keep, and
    /// their files go before the kernel would write them out.
    fn settle(&mut self) {
        while self.unsynced.front().is_some_and(|(end, _, _)| *end <= self.acked + 1) {
            self.unsynced.pop_front();
        }
        let waiting = self.unsynced.front().map_or(u64::MAX, |(_, _, seg)| *seg);
        self.closing.retain(|(seg, _)| *seg >= waiting);
    }

    /// True when the oldest unacknowledged write not yet synced is [`Spool::sync_every`] old.
    fn sync_is_due(&mut self) -> bool {
        self.settle();
        self.unsynced.len() >= MAX_UNSYNCED
            || self.unsynced.front().is_some_and(|(_, at, _)| at.elapsed() >= self.sync_every)
    }

    /// Syncs the segments holding unacknowledged writes to the disk: the closed ones
    /// through the descriptors kept for them, then the active one.
    fn sync(&mut self) -> io::Result<()> {
        for (_, f) in &self.closing {
            f.sync_data()?;
        }
        if self.unsynced.back().is_some_and(|(_, _, seg)| *seg == self.active_seg().first) {
            self.active.sync_data()?;
        }
        self.syncs += 1;
        self.unsynced.clear();
        self.closing.clear();
        Ok(())
    }

    /// Bytes on disk.
    pub fn bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.bytes).sum()
    }

    /// Numbers `records` (JSON objects as text; `seq` is put in front of their members),
    /// writes them (synced as a group commit) after any records still waiting in memory, and
    /// returns the first number written. When the write fails the records wait in memory (bounded, counted)
    /// and the error is returned: nothing is lost silently.
    pub fn append<S: AsRef<str>>(&mut self, records: &[S]) -> io::Result<u64> {
        if records.iter().any(|r| !r.as_ref().starts_with('{')) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a record is not a JSON object",
            ));
        }
        // Records are this process's serialisations: JSON objects, as control needs every
        // line of a batch to be (lines read back from memory are not checked again).
        debug_assert!(records.iter().all(|r| {
            serde_json::from_str::<serde_json::Map<String, Value>>(r.as_ref()).is_ok()
        }));
        let first = self.next_seq();
        if records.is_empty() && self.pending.is_empty() {
            return Ok(first);
        }
        let all = self.pending.iter().map(String::as_str);
        let mut head = self.chain;
        let (buf, lines) = numbered(all.chain(records.iter().map(AsRef::as_ref)), first, &mut head);
        let end = first + lines.len() as u64;
        let written = self.repair().and_then(|()| self.write(&buf, end, head));
        match written {
            Ok(()) => {
                self.pending.clear();
                self.pending_bytes = 0;
                self.remember(buf, lines);
                Ok(first)
            }
            Err(e) => {
                self.broken = true;
                self.write_errors += 1;
                for r in records {
                    self.hold(r.as_ref().to_owned());
                }
                // The torn write cut off now, so that nothing reads it meanwhile (or at the
                // next attempt, if this fails too).
                let _ = self.repair();
                Err(e)
            }
        }
    }

    /// Keeps lines just written for the link, the oldest going past [`Spool::recent_max`].
    /// A line kept holds its whole batch's buffer: a batch past the bound (a full disk's
    /// backlog written at once) keeps only its newest lines, and when those are under half
    /// of their buffer they are copied out of it, so the memory held stays within about twice
    /// the bound.
    fn remember(&mut self, buf: Vec<u8>, lines: Vec<(u64, std::ops::Range<usize>)>) {
        let (mut total, mut skip) = (lines.iter().map(|(_, at)| at.len()).sum::<usize>(), 0);
        while total > self.recent_max && skip < lines.len() {
            total -= lines[skip].1.len();
            skip += 1;
        }
        let lines = &lines[skip..];
        let (buf, base) = match (lines.first(), lines.last()) {
            (Some((_, a)), Some((_, b))) if (b.end - a.start) * 2 < buf.len() => {
                (Bytes::copy_from_slice(&buf[a.start..b.end]), a.start)
            }
            _ => (Bytes::from(buf), 0),
        };
        for (seq, at) in lines.iter().cloned() {
            let line = buf.slice(at.start - base..at.end - base);
            if self.recent.back().is_some_and(|(last, _)| *last + 1 != seq) {
                // Numbering jumped (skip_to): what is kept must be consecutive.
                self.recent.clear();
                self.recent_bytes = 0;
            }
            self.recent_bytes += line.len();
            self.recent.push_back((seq, line));
        }
        while self.recent_bytes > self.recent_max {
            let Some((_, old)) = self.recent.pop_front() else { break };
            self.recent_bytes -= old.len();
        }
    }

    /// Keeps a record that could not be written, dropping the oldest past the bound.
    fn hold(&mut self, r: String) {
        self.pending_bytes += r.len();
        self.pending.push_back(r);
        while self.pending_bytes > MAX_PENDING_BYTES {
            let Some(old) = self.pending.pop_front() else { break };
            self.pending_bytes -= old.len();
            self.dropped += 1;
            self.alarm += 1;
            if self.dropped.is_power_of_two() {
                tracing::error!(
                    total = self.dropped,
                    "spool unwritable and memory bound reached: records dropped"
                );
            }
        }
    }

    /// After a failed write: the active file reopened and cut back to its whole records.
    fn repair(&mut self) -> io::Result<()> {
        if !self.broken {
            return Ok(());
        }
        let a = self.active_seg();
        let (path, good) = (a.path.clone(), a.bytes);
        let f = OpenOptions::new().create(true).append(true).open(&path)?;
        f.set_len(good)?;
        self.active = f;
        self.broken = false;
        Ok(())
    }

    /// Writes numbered lines (`end`: the number after the last), synced to the disk with what
    /// else waits when the oldest unacknowledged write is [`Spool::sync_every`] old, then
    /// rotates and trims.
    fn write(&mut self, buf: &[u8], end: u64, head: chain::Head) -> io::Result<()> {
        #[cfg(test)]
        if self.fail_writes > 0 {
            self.fail_writes -= 1;
            self.active.write_all(&buf[..buf.len() / 2])?;
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        self.active.write_all(buf)?;
        let seg = self.active_seg().first;
        self.unsynced.push_back((end, std::time::Instant::now(), seg));
        if self.sync_is_due()
            && let Err(e) = self.sync()
        {
            // This write is cut off (`repair`), and listed again when it is written again.
            self.unsynced.pop_back();
            return Err(e);
        }
        // Written from here: what follows may fail without the records being taken for
        // unwritten (they would be written twice).
        self.chain = head;
        let a = self.segments.back_mut().expect("active segment");
        a.end = end;
        a.bytes += buf.len() as u64;
        if a.bytes >= SEGMENT_BYTES.min(self.max_bytes / 4).max(1)
            && let Err(e) = self.rotate(end)
        {
            tracing::warn!("spool: starting a new segment failed, the current one grows: {e}");
        }
        while self.bytes() > self.max_bytes && self.segments.len() > 1 && !self.disk_has_room() {
            let old = self.segments.pop_front().expect("more than one segment");
            let lost = old.end.saturating_sub(old.first.max(self.acked + 1));
            self.dropped += lost;
            self.alarm += lost;
            self.acked = self.acked.max(old.end.saturating_sub(1));
            if let Err(e) = std::fs::remove_file(&old.path) {
                tracing::warn!(file = %old.path.display(), "spool: removing a dropped segment failed: {e}");
            }
            tracing::error!(
                lost,
                total = self.dropped,
                "spool past its bound and the disk short of room: oldest unsent records dropped"
            );
        }
        Ok(())
    }

    /// Closes the active segment and starts a new one at `first`.
    fn rotate(&mut self, first: u64) -> io::Result<()> {
        // The chain's head is kept before the segments holding its last lines may go. Should
        // that fail (a full disk), the next start begins a new chain, which control reports:
        // better than refusing to rotate (and to drop acknowledged segments) at all.
        if let Err(e) = chain::store(&self.dir, &self.chain) {
            tracing::warn!("spool: keeping the record chain's head failed: {e}");
        }
        let path = seg_path(&self.dir, first);
        let old = std::mem::replace(
            &mut self.active,
            OpenOptions::new().create(true).append(true).open(&path)?,
        );
        // Writes of the closed segment waiting to be synced keep its descriptor.
        let closed = self.active_seg().first;
        if self.unsynced.back().is_some_and(|(_, _, seg)| *seg == closed) {
            self.closing.push((closed, old));
        }
        self.segments.push_back(Segment { first, end: first, bytes: 0, path });
        Ok(())
    }

    /// Control stored everything up to `upto`: segments wholly at or below it are deleted.
    pub fn ack(&mut self, upto: u64) -> io::Result<()> {
        if upto <= self.acked {
            return Ok(());
        }
        self.acked = upto.min(self.next_seq().saturating_sub(1));
        while self.segments.len() > 1 && self.segments.front().is_some_and(|s| s.end <= upto + 1) {
            let old = self.segments.pop_front().expect("checked");
            std::fs::remove_file(&old.path)?;
        }
        let a = self.active_seg();
        if a.bytes > 0 && a.end <= upto + 1 {
            let (old, next) = (a.path.clone(), a.end);
            self.rotate(next)?;
            self.segments.pop_front();
            std::fs::remove_file(old)?;
        }
        Ok(())
    }

    /// Control holds records up to `last` already (its spool copy was lost, or this is a new
    /// spool for a known name): numbering continues after it so nothing new is taken for a
    /// duplicate.
    pub fn skip_to(&mut self, last: u64) -> io::Result<()> {
        if self.next_seq() > last {
            return Ok(());
        }
        tracing::warn!(
            from = self.next_seq(),
            to = last + 1,
            "spool: numbering continues after control's last record; the record chain starts again"
        );
        // Control holds chain positions this spool no longer knows of (its tail was lost):
        // continuing the old head would reuse them. A new chain is what happened.
        self.chain = chain::Head::default();
        self.rotate(last + 1)?;
        self.ack(last)
    }

    /// Up to `max` records with a sequence number above `after`, in order (as JSON text
    /// lines, each UTF-8 and one JSON object), of those still spooled (not acknowledged, not
    /// dropped). The newest come from memory, shared, not copied; older ones from the files,
    /// where a line that is not JSON (damaged on disk) is skipped and said.
    pub fn read_after(&mut self, after: u64, max: usize) -> io::Result<Vec<(u64, Bytes)>> {
        let from = after.max(self.acked) + 1;
        if let Some(&(oldest, _)) = self.recent.front()
            && oldest <= from
        {
            let skip = usize::try_from(from - oldest).unwrap_or(usize::MAX);
            return Ok(self.recent.iter().skip(skip).take(max).cloned().collect());
        }
        let mut out = Vec::new();
        let resume = self.cursor.filter(|c| c.0 == after);
        for s in self.segments.iter().filter(|s| s.end > after + 1 && s.bytes > 0) {
            let mut f = File::open(&s.path)?;
            let mut pos = 0;
            if let Some((_, seg, off)) = resume
                && seg == s.first
            {
                pos = f.seek(SeekFrom::Start(off))?;
            }
            // Whole records only: never bytes past them (a write in progress, or torn).
            let mut r = BufReader::with_capacity(1 << 16, f).take(s.bytes.saturating_sub(pos));
            let mut line = Vec::new();
            loop {
                let n = r.read_until(b'\n', &mut line)?;
                if n == 0 || line.pop() != Some(b'\n') {
                    break;
                }
                pos += n as u64;
                let Some(seq) = seq_of(&line) else {
                    line.clear();
                    continue;
                };
                let text = String::from_utf8(std::mem::take(&mut line))
                    .ok()
                    .filter(|t| serde_json::from_str::<serde::de::IgnoredAny>(t).is_ok());
                if seq > after && seq > self.acked {
                    self.cursor = Some((seq, s.first, pos));
                    match text {
                        Some(text) => out.push((seq, Bytes::from(text))),
                        None => tracing::warn!(seq, "spool: a damaged record is skipped"),
                    }
                    if out.len() >= max {
                        return Ok(out);
                    }
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
#[path = "spool_tests.rs"]
mod tests;
