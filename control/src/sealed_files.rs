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

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
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

#[derive(Debug)]
struct Active {
    segment: u64,
    file: File,
    /// Bytes in the file.
    len: u64,
    /// Bytes appended, not written yet: one write per batch, at [`SealedFiles::write`].
    pending: Vec<u8>,
    /// Bytes written since the last sync to the disk.
    unsynced: bool,
}

/// The segment files of one store.
#[derive(Debug)]
pub struct SealedFiles {
    dir: PathBuf,
    active: Option<Active>,
    /// When the active file was last synced to the disk.
    synced_at: std::time::Instant,
}

fn name(dir: &Path, segment: u64) -> PathBuf {
    dir.join(format!("{segment:010}.sealed"))
}

impl SealedFiles {
    /// The files in `dir` (created, mode 0700, when missing).
    pub fn open(dir: &Path) -> io::Result<SealedFiles> {
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        Ok(SealedFiles { dir: dir.to_owned(), active: None, synced_at: std::time::Instant::now() })
    }

    /// Where `length` bytes appended at `now_ms` go (what [`SealedFiles::append`] returns
    /// when nothing is appended in between).
    pub fn next_place(&mut self, now_ms: u64, length: u64) -> io::Result<Place> {
        let a = self.active_for(now_ms / HOUR_MS)?;
        Ok(Place { segment: a.segment, offset: a.len + a.pending.len() as u64, length })
    }

    /// Appends `bytes` to the segment of `now_ms`; where they are.
    pub fn append(&mut self, now_ms: u64, bytes: &[u8]) -> io::Result<Place> {
        let place = self.next_place(now_ms, bytes.len() as u64)?;
        let a = self.active_for(place.segment)?;
        a.pending.extend_from_slice(bytes);
        Ok(place)
    }

    /// The segment being written, `segment` (the previous one written and synced first).
    fn active_for(&mut self, segment: u64) -> io::Result<&mut Active> {
        if self.active.as_ref().is_none_or(|a| a.segment != segment) {
            self.write()?;
            self.sync()?;
            let path = name(&self.dir, segment);
            let new = !path.exists();
            let file = OpenOptions::new().create(true).append(true).mode(0o600).open(&path)?;
            if new {
                // The file's name is durable too, before any row names it.
                File::open(&self.dir)?.sync_all()?;
            }
            let len = file.metadata()?.len();
            self.active = Some(Active { segment, file, len, pending: Vec::new(), unsynced: false });
        }
        self.active.as_mut().ok_or_else(|| io::Error::other("no segment"))
    }

    /// Writes what was appended into the file (before the rows naming it commit), synced to
    /// the disk when the last sync is [`SYNC_EVERY`] old.
    pub fn write(&mut self) -> io::Result<()> {
        let Some(a) = self.active.as_mut().filter(|a| !a.pending.is_empty()) else {
            return Ok(());
        };
        let written = a.file.write_all(&a.pending);
        let n = a.pending.len() as u64;
        a.pending.clear();
        match written {
            Ok(()) => {
                a.len += n;
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

    /// The bytes at `place`.
    pub fn read(&self, place: &Place) -> io::Result<Vec<u8>> {
        if place.length > MAX_SEALED {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "a recording past the bound"));
        }
        let file = File::open(name(&self.dir, place.segment))?;
        let mut buf = vec![0; usize::try_from(place.length).unwrap_or(0)];
        file.read_exact_at(&mut buf, place.offset)?;
        Ok(buf)
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

    #[test]
    fn bytes_are_found_where_they_were_put_and_old_segments_go() {
        let dir = std::env::temp_dir().join(format!("sluice-sealed-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut f = SealedFiles::open(&dir).unwrap();
        let a = f.append(HOUR_MS * 5 + 1, b"first").unwrap();
        let b = f.append(HOUR_MS * 5 + 2, b"second").unwrap();
        assert_eq!((a.segment, a.offset, b.offset), (5, 0, 5));
        let c = f.append(HOUR_MS * 7, b"third").unwrap();
        f.write().unwrap();
        assert_eq!(f.read(&b).unwrap(), b"second");
        assert_eq!(f.read(&c).unwrap(), b"third");
        let mode = std::fs::metadata(name(&dir, 7)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "root only");
        assert!(f.read(&Place { length: MAX_SEALED + 1, ..c }).is_err());
        assert!(f.read(&Place { offset: 100, ..c }).is_err(), "past the end");
        // Reopened: appends continue at the end.
        drop(f);
        let mut f = SealedFiles::open(&dir).unwrap();
        let next = f.next_place(HOUR_MS * 7 + 9, 6).unwrap();
        let d = f.append(HOUR_MS * 7 + 9, b"fourth").unwrap();
        assert_eq!((d.offset, d), (5, next));
        assert_eq!(f.segments().unwrap(), vec![5, 7]);
        assert!(f.remove(5).unwrap());
        assert!(f.read(&a).is_err() && f.read(&c).is_ok());
        assert!(!f.remove(7).unwrap(), "the one being written stays");
        assert_eq!(f.segments().unwrap(), vec![7]);
        std::fs::remove_dir_all(&dir).unwrap();
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
