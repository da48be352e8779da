//! The sealed bytes of recordings on disk (ARCHITECTURE.md, "Recordings"): append-only
//! segment files, one per UTC hour of arrival (`<hour>.sealed` in `flows.recordings/`, beside
//! `flows.db`, readable by root only). The `recordings` row names its bytes (segment, offset,
//! length). Sealed bytes are written once, not through SQLite's journal and then again into
//! its pages. They are in the file before the rows that name them commit (a crash of control
//! loses none), and synced to the disk as a group commit, at most [`SYNC_EVERY`] apart (the
//! store's own commits, SQLite's WAL with `synchronous = NORMAL`, are synced at checkpoints):
//! after a power loss a row of the last moments may name bytes that did not reach the disk,
//! and reading it says so (ARCHITECTURE.md, "Records and the link", durability). Retention
//! deletes whole files no row names any more. Bytes of a batch that did not commit are left
//! unnamed in their file: never read, gone with it. This module owns files and nothing else.
//!
//! Segments are written with direct I/O (`O_DIRECT`) where the file system has it: the bytes
//! are written once and read back seldom (a `sessions show`), so copying them into the page
//! cache, and writing that back later, was CPU spent for nothing; it was a quarter of
//! control's time with recording on (BENCHMARKS.md, "Access: recording and quotas"). A batch
//! is written from a block-aligned buffer in whole blocks, zero-padded; the last, partial block
//! stays in the buffer and is written again, completed, with the next batch, so the file is a
//! run of blocks whose named bytes are where the rows say. Where direct I/O is refused
//! (tmpfs on older kernels, some network file systems), segments are written through the
//! page cache as before.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// An hour in ms: a segment holds what arrived in one.
const HOUR_MS: u64 = 3_600_000;

/// How far apart written bytes are synced to the disk at most.
pub const SYNC_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

/// Largest sealed recording stored and read back. A recording's plaintext is at most the
/// request head (bounded by the head parser), 1 MiB of request body, 1 MiB of response body
/// and 1 MiB of WebSocket messages as JSON (`MAX_CAPTURE` each), with its head's few hundred
/// bytes; sealed and in base64 that is under 4.1 MiB. A larger one is not a data plane's.
pub const MAX_SEALED: u64 = 8 << 20;

/// Where a recording's sealed bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Place {
    /// The segment (the hour of arrival, in hours since the epoch).
    pub segment: u64,
    /// Byte offset in it.
    pub offset: u64,
    /// Bytes.
    pub length: u64,
}

/// Block size direct writes are aligned to (offsets, lengths and memory): 4 KiB satisfies
/// every Linux block device and file system that has direct I/O.
const BLOCK: usize = 4096;

/// A growable byte buffer whose contents begin on a [`BLOCK`] boundary in memory, as direct
/// I/O requires (safe code: a larger `Vec`, used from its first aligned byte).
#[derive(Debug, Default)]
struct Aligned {
    raw: Vec<u8>,
    /// Where the aligned contents begin in `raw`.
    start: usize,
    len: usize,
}

impl Aligned {
    fn bytes(&self) -> &[u8] {
        &self.raw[self.start..self.start + self.len]
    }

    /// Room for `extra` more bytes (the contents moved to a new aligned home when needed).
    fn reserve(&mut self, extra: usize) {
        if self.start + self.len + extra <= self.raw.len() {
            return;
        }
        let want = (self.len + extra).max(self.len * 2).next_multiple_of(BLOCK);
        let mut raw = vec![0u8; want + BLOCK];
        let start = (BLOCK - raw.as_ptr() as usize % BLOCK) % BLOCK;
        raw[start..start + self.len].copy_from_slice(self.bytes());
        (self.raw, self.start) = (raw, start);
    }

    fn extend(&mut self, bytes: &[u8]) {
        self.reserve(bytes.len());
        let at = self.start + self.len;
        self.raw[at..at + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
    }

    /// The contents zero-padded to whole blocks (the padding is not part of the contents).
    fn padded(&mut self) -> &[u8] {
        let whole = self.len.next_multiple_of(BLOCK);
        self.reserve(whole - self.len);
        let end = self.start + self.len;
        self.raw[end..self.start + whole].fill(0);
        &self.raw[self.start..self.start + whole]
    }

    /// Drops the first `n` bytes (a multiple of [`BLOCK`]), keeping the rest at the start.
    fn consume(&mut self, n: usize) {
        let end = self.start + self.len;
        self.raw.copy_within(self.start + n..end, self.start);
        self.len -= n;
    }

    fn clear(&mut self) {
        self.len = 0;
    }
}

#[derive(Debug)]
struct Active {
    segment: u64,
    file: File,
    /// Written with direct I/O.
    direct: bool,
    /// File offset of `buf`'s first byte (a block boundary when direct).
    at: u64,
    /// Bytes from `at` on: with direct I/O the last partial block already written (the first
    /// `written` bytes) and what was appended since; through the page cache only the latter.
    buf: Aligned,
    /// Bytes at the start of `buf` already in the file.
    written: usize,
    /// Bytes written since the last sync to the disk.
    unsynced: bool,
}

impl Active {
    /// Where the next appended byte goes.
    fn end(&self) -> u64 {
        self.at + self.buf.len as u64
    }
}

/// The segment files of one store.
#[derive(Debug)]
pub struct SealedFiles {
    dir: PathBuf,
    active: Option<Active>,
    /// When the active file was last synced to the disk.
    synced_at: std::time::Instant,
    /// Direct I/O is tried for new segment files (cleared when the file system refuses it).
    direct: bool,
    /// Recordings appended per segment since [`SealedFiles::take_appended`] (the store counts
    /// the rows naming each segment).
    appended: Vec<(u64, u64)>,
}

fn name(dir: &Path, segment: u64) -> PathBuf {
    dir.join(format!("{segment:010}.sealed"))
}

/// Opens a segment for writing, with direct I/O when `direct` and the file system has it;
/// whether it is direct.
fn open_segment(path: &Path, direct: bool) -> io::Result<(File, bool)> {
    let mut o = OpenOptions::new();
    o.create(true).write(true).mode(0o600);
    if direct {
        match o.clone().custom_flags(libc::O_DIRECT).open(path) {
            Ok(f) => return Ok((f, true)),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
            Err(e) => return Err(e),
        }
    }
    Ok((o.open(path)?, false))
}

/// The bytes at `place` of the segment files in `dir` (a reader of its own: an export reads
/// them while the store writes on).
pub fn read_in(dir: &Path, place: &Place) -> io::Result<Vec<u8>> {
    if place.length > MAX_SEALED {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "a recording past the bound"));
    }
    let file = File::open(name(dir, place.segment))?;
    let mut buf = vec![0; usize::try_from(place.length).unwrap_or(0)];
    file.read_exact_at(&mut buf, place.offset)?;
    Ok(buf)
}

impl SealedFiles {
    /// The files in `dir` (created, mode 0700, when missing).
    pub fn open(dir: &Path) -> io::Result<SealedFiles> {
        Self::open_with(dir, true)
    }

    /// [`SealedFiles::open`], trying direct I/O or not.
    fn open_with(dir: &Path, direct: bool) -> io::Result<SealedFiles> {
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        Ok(SealedFiles {
            dir: dir.to_owned(),
            active: None,
            synced_at: std::time::Instant::now(),
            direct,
            appended: Vec::new(),
        })
    }

    /// Where `length` bytes appended at `now_ms` go (what [`SealedFiles::append`] returns
    /// when nothing is appended in between).
    pub fn next_place(&mut self, now_ms: u64, length: u64) -> io::Result<Place> {
        let a = self.active_for(now_ms / HOUR_MS)?;
        Ok(Place { segment: a.segment, offset: a.end(), length })
    }

    /// Appends `bytes` to the segment of `now_ms`; where they are.
    pub fn append(&mut self, now_ms: u64, bytes: &[u8]) -> io::Result<Place> {
        let place = self.next_place(now_ms, bytes.len() as u64)?;
        let a = self.active_for(place.segment)?;
        a.buf.extend(bytes);
        match self.appended.last_mut() {
            Some((segment, n)) if *segment == place.segment => *n += 1,
            _ => self.appended.push((place.segment, 1)),
        }
        Ok(place)
    }

    /// How many recordings were appended to each segment since the last call.
    pub fn take_appended(&mut self) -> Vec<(u64, u64)> {
        std::mem::take(&mut self.appended)
    }

    /// The segment being written, `segment` (the previous one written and synced first).
    fn active_for(&mut self, segment: u64) -> io::Result<&mut Active> {
        if self.active.as_ref().is_none_or(|a| a.segment != segment) {
            self.write()?;
            self.sync()?;
            let path = name(&self.dir, segment);
            let new = !path.exists();
            let (file, direct) = open_segment(&path, self.direct)?;
            self.direct = direct;
            if new {
                // The file's name is durable too, before any row names it.
                File::open(&self.dir)?.sync_all()?;
            }
            // Appends go after what is there: with direct I/O from the next block boundary
            // (a file written through the page cache may end inside a block).
            let len = file.metadata()?.len();
            let at = if direct { len.next_multiple_of(BLOCK as u64) } else { len };
            let buf = Aligned::default();
            self.active =
                Some(Active { segment, file, direct, at, buf, written: 0, unsynced: false });
        }
        self.active.as_mut().ok_or_else(|| io::Error::other("no segment"))
    }

    /// Writes what was appended into the file (before the rows naming it commit), synced to
    /// the disk when the last sync is [`SYNC_EVERY`] old.
    pub fn write(&mut self) -> io::Result<()> {
        let Some(a) = self.active.as_mut().filter(|a| a.buf.len > a.written) else {
            return Ok(());
        };
        let written = if a.direct {
            match a.file.write_all_at(a.buf.padded(), a.at) {
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    // Direct I/O refused after all (alignment the device does not take): this
                    // segment and the next go through the page cache, the same bytes at the
                    // same offsets.
                    self.direct = false;
                    open_segment(&name(&self.dir, a.segment), false).and_then(|(file, _)| {
                        a.file = file;
                        a.direct = false;
                        a.file.write_all_at(a.buf.bytes(), a.at)
                    })
                }
                other => other,
            }
        } else {
            a.file.write_all_at(&a.buf.bytes()[a.written..], a.at + a.written as u64)
        };
        match written {
            Ok(()) => {
                if a.direct {
                    // The last partial block stays, to be written again completed.
                    let whole = a.buf.len / BLOCK * BLOCK;
                    a.buf.consume(whole);
                    a.at += whole as u64;
                    a.written = a.buf.len;
                } else {
                    a.at = a.end();
                    a.buf.clear();
                    a.written = 0;
                }
                a.unsynced = true;
                self.sync_due().map(drop)
            }
            Err(e) => {
                // A part may be in the file: the segment is opened again and its length read
                // before the next bytes (those of this batch are named by no row, since it
                // does not commit). Bytes of earlier batches, committed, are synced first.
                let _ = a.file.sync_data();
                self.active = None;
                Err(e)
            }
        }
    }

    /// Syncs the bytes written to the disk if the last sync is [`SYNC_EVERY`] old (the store
    /// calls this after each batch and on a clock, so that a burst's last bytes do not wait
    /// for the next one); true when it synced.
    pub fn sync_due(&mut self) -> io::Result<bool> {
        if self.synced_at.elapsed() < SYNC_EVERY
            || !self.active.as_ref().is_some_and(|a| a.unsynced)
        {
            return Ok(false);
        }
        self.sync().map(|()| true)
    }

    /// Syncs the bytes written to the disk (on an error they stay in the file; whether they
    /// reached the disk is unknown, as Linux may report a failed writeback once).
    fn sync(&mut self) -> io::Result<()> {
        if let Some(a) = self.active.as_mut().filter(|a| a.unsynced) {
            a.file.sync_data()?;
            a.unsynced = false;
        }
        self.synced_at = std::time::Instant::now();
        Ok(())
    }

    /// The directory of the files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The bytes at `place`.
    pub fn read(&self, place: &Place) -> io::Result<Vec<u8>> {
        read_in(&self.dir, place)
    }

    /// The segments on disk, oldest first.
    pub fn segments(&self) -> io::Result<Vec<u64>> {
        let mut all = Vec::new();
        for e in std::fs::read_dir(&self.dir)? {
            let path = e?.path();
            if let Some(seg) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".sealed"))
                .and_then(|n| n.parse::<u64>().ok())
            {
                all.push(seg);
            }
        }
        all.sort_unstable();
        Ok(all)
    }

    /// Deletes segment `segment` (no row names it any more), unless it is being written;
    /// true when it went.
    pub fn remove(&mut self, segment: u64) -> io::Result<bool> {
        if self.active.as_ref().is_some_and(|a| a.segment == segment) {
            return Ok(false);
        }
        std::fs::remove_file(name(&self.dir, segment))?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes_are_found_where_they_were_put(direct: bool) {
        let dir =
            std::env::temp_dir().join(format!("sluice-sealed-{}-{direct}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut f = SealedFiles::open_with(&dir, direct).unwrap();
        let a = f.append(HOUR_MS * 5 + 1, b"first").unwrap();
        let b = f.append(HOUR_MS * 5 + 2, b"second").unwrap();
        assert_eq!((a.segment, a.offset, b.offset), (5, 0, 5));
        let c = f.append(HOUR_MS * 7, b"third").unwrap();
        f.write().unwrap();
        // Whether direct I/O was used is the file system's answer; both work alike.
        let direct = f.active.as_ref().unwrap().direct;
        assert_eq!(f.read(&b).unwrap(), b"second");
        assert_eq!(f.read(&c).unwrap(), b"third");
        let mode = std::fs::metadata(name(&dir, 7)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "root only");
        assert!(f.read(&Place { length: MAX_SEALED + 1, ..c }).is_err());
        assert!(f.read(&Place { offset: 1 << 20, ..c }).is_err(), "past the end");
        // Batches across block boundaries: each batch's bytes where they were placed, the
        // partial block written again completed.
        let mut placed = Vec::new();
        for batch in 0..6u8 {
            for i in 0..7u8 {
                let bytes = vec![batch * 16 + i; 700 + usize::from(i) * 131];
                placed.push((f.append(HOUR_MS * 7 + 1, &bytes).unwrap(), bytes));
            }
            f.write().unwrap();
        }
        for (place, bytes) in &placed {
            assert_eq!(&f.read(place).unwrap(), bytes, "at {place:?}");
        }
        let end = placed.last().map(|(p, _)| p.offset + p.length).unwrap();
        let size = std::fs::metadata(name(&dir, 7)).unwrap().len();
        if direct {
            assert_eq!(size, end.next_multiple_of(BLOCK as u64), "whole blocks, zero-padded");
        } else {
            assert_eq!(size, end);
        }
        // Reopened: appends continue at the end (with direct I/O, at the next block).
        drop(f);
        let mut f = SealedFiles::open_with(&dir, direct).unwrap();
        let next = f.next_place(HOUR_MS * 7 + 9, 6).unwrap();
        let d = f.append(HOUR_MS * 7 + 9, b"fourth").unwrap();
        assert_eq!((d.offset, d), (size, next));
        f.write().unwrap();
        assert_eq!(f.read(&d).unwrap(), b"fourth");
        assert_eq!(f.read(&placed[3].0).unwrap(), placed[3].1, "earlier bytes untouched");
        assert_eq!(f.segments().unwrap(), vec![5, 7]);
        assert!(f.remove(5).unwrap());
        assert!(f.read(&a).is_err() && f.read(&c).is_ok());
        assert!(!f.remove(7).unwrap(), "the one being written stays");
        assert_eq!(f.segments().unwrap(), vec![7]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bytes_are_found_where_they_were_put_and_old_segments_go() {
        bytes_are_found_where_they_were_put(true);
    }

    #[test]
    fn through_the_page_cache_too() {
        bytes_are_found_where_they_were_put(false);
    }

    #[test]
    fn a_file_written_through_the_page_cache_is_continued_directly() {
        let dir = std::env::temp_dir().join(format!("sluice-sealed-mixed-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut f = SealedFiles::open_with(&dir, false).unwrap();
        let a = f.append(HOUR_MS, b"older").unwrap();
        f.write().unwrap();
        drop(f);
        let mut f = SealedFiles::open(&dir).unwrap();
        let b = f.append(HOUR_MS + 1, b"newer").unwrap();
        f.write().unwrap();
        if f.active.as_ref().unwrap().direct {
            assert_eq!(b.offset, BLOCK as u64, "the next block");
        }
        assert_eq!(f.read(&a).unwrap(), b"older");
        assert_eq!(f.read(&b).unwrap(), b"newer");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_aligned_buffer_keeps_its_contents_aligned_as_it_grows() {
        let mut b = Aligned::default();
        let mut want = Vec::new();
        for i in 0..50u32 {
            let chunk = vec![(i % 251) as u8; 333 * (i as usize % 7) + 1];
            b.extend(&chunk);
            want.extend_from_slice(&chunk);
            assert_eq!(b.bytes(), &want[..]);
            assert_eq!(b.bytes().as_ptr() as usize % BLOCK, 0);
            let padded = b.padded().to_vec();
            assert_eq!(padded.len(), want.len().next_multiple_of(BLOCK));
            assert!(padded[want.len()..].iter().all(|&x| x == 0));
            if i % 10 == 9 {
                let whole = b.len / BLOCK * BLOCK;
                b.consume(whole);
                want.drain(..whole);
                assert_eq!(b.bytes(), &want[..]);
            }
        }
    }

    #[test]
    fn written_bytes_are_synced_as_a_group_commit() {
        let dir = std::env::temp_dir().join(format!("sluice-sealed-sync-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut f = SealedFiles::open(&dir).unwrap();
        let a = f.append(HOUR_MS, b"one").unwrap();
        f.write().unwrap();
        // In the file at once (readable), synced only once the interval is past.
        assert_eq!(f.read(&a).unwrap(), b"one");
        assert!(f.active.as_ref().unwrap().unsynced);
        if f.synced_at.elapsed() < SYNC_EVERY / 2 {
            assert!(!f.sync_due().unwrap(), "not due within the interval");
        }
        std::thread::sleep(SYNC_EVERY + std::time::Duration::from_millis(10));
        assert!(f.sync_due().unwrap());
        assert!(!f.active.as_ref().unwrap().unsynced);
        assert!(!f.sync_due().unwrap(), "nothing written since");
        // A write past the interval syncs at once.
        std::thread::sleep(SYNC_EVERY + std::time::Duration::from_millis(10));
        f.append(HOUR_MS, b"two").unwrap();
        f.write().unwrap();
        assert!(!f.active.as_ref().unwrap().unsynced);
        // A new hour's segment: the last one is written and synced before it begins.
        f.append(HOUR_MS + 1, b"three").unwrap();
        f.write().unwrap();
        assert!(f.active.as_ref().unwrap().unsynced);
        let before = f.synced_at;
        let d = f.append(HOUR_MS * 2, b"four").unwrap();
        assert_eq!(d.segment, 2);
        assert!(f.synced_at > before, "the last hour's bytes were synced");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
