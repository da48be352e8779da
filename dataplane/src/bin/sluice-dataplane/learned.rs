//! Keeps the packet engine's learned destinations in the state directory across restarts
//! (ARCHITECTURE.md, "Divert"): written when they changed (checked every 10 s) and at exit,
//! read at start, so the first connections after a restart are diverted at their SYN like any
//! other. A file that cannot be read is reported and left: the set is a cache, relearned from
//! DNS answers and hellos.

use std::path::Path;

use std::sync::Mutex;

use sluice_dataplane::engine::{Engine, LearnedEntry, Now};
use tracing::warn;

const FILE: &str = "learned.json";

/// The learned set and its version, when it changed since version `seen` (one lock of the
/// engine; the set is copied only then).
pub fn since(engine: &Mutex<Engine>, seen: u64, now: Now) -> Option<(u64, Vec<LearnedEntry>)> {
    let e = crate::lock(engine);
    (e.learned_version() != seen).then(|| (e.learned_version(), e.learned_entries(now)))
}

/// The saved set, empty when there is none or it cannot be read.
pub fn load(dir: &Path) -> Vec<LearnedEntry> {
    let path = dir.join(FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            warn!(path = %path.display(), "learned destinations not read: {e}");
            return Vec::new();
        }
    };
    serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        warn!(path = %path.display(), "learned destinations not read (left as they are): {e}");
        Vec::new()
    })
}

/// Replaces the saved set (written aside, then renamed over it).
pub fn save(dir: &Path, entries: &[LearnedEntry]) {
    let (tmp, path) = (dir.join("learned.json.tmp"), dir.join(FILE));
    let written = std::fs::create_dir_all(dir)
        .and_then(|()| serde_json::to_vec(entries).map_err(std::io::Error::other))
        .and_then(|b| std::fs::write(&tmp, b))
        .and_then(|()| std::fs::rename(&tmp, &path));
    if let Err(e) = written {
        warn!(path = %path.display(), "learned destinations not saved: {e}");
    }
}
