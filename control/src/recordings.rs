//! Recordings (ARCHITECTURE.md, "Recordings"): the sealed exchanges data planes send as
//! `recording` records, stored beside the records in `flows.db` (table `recordings`) with what
//! lists and threads them in clear (who, where, when, size, conversation ids) and the age
//! ciphertext, which only the customer's private key opens. Kept for their own retention.
//! A thread groups a conversation: ChatGPT's `conversation_id`, or the chain of Responses
//! API requests linked by `previous_response_id` (each recording takes the thread of the one
//! whose response it continues). A recording that names no conversation and continues no
//! response begins a thread of its own, named by its id; a thread is also found by any of its
//! response ids. Recording ids begin with their time, so the indexes of ids, times and own
//! threads grow at their end; only responses that can be continued (`resp_…`, indexed for the
//! chain) and ChatGPT conversations insert into the middle of an index.

use rusqlite::{OptionalExtension, Transaction, params};
use serde::Serialize;

use crate::record::Row;
use crate::sealed_files::{Place, SealedFiles};
use crate::store::{FlowStore, StoreError};

pub(crate) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS recordings (
    id TEXT PRIMARY KEY,
    dataplane TEXT NOT NULL,
    seq INTEGER NOT NULL,
    ts_ms INTEGER NOT NULL,
    identity TEXT, user TEXT, src TEXT, sni TEXT, method TEXT, path TEXT, rule TEXT,
    bytes INTEGER NOT NULL,
    thread TEXT NOT NULL,
    response TEXT,
    sealed TEXT NOT NULL,
    segment INTEGER, offset INTEGER, length INTEGER
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS recordings_ts ON recordings (ts_ms);
DROP INDEX IF EXISTS recordings_thread;
CREATE INDEX IF NOT EXISTS recordings_threads ON recordings (thread, ts_ms) WHERE thread <> id;
DROP INDEX IF EXISTS recordings_response;
CREATE INDEX IF NOT EXISTS recordings_chain ON recordings (response)
    WHERE substr(response, 1, 5) = 'resp_';
";

/// How many rows name each segment file: raised once per ingest batch
/// ([`count_segments`], not an index entry per row), lowered by a trigger on every delete
/// (any delete: retention, or a hand in the database), so that retention finds the files no
/// row names any more. Made from the rows there are (an earlier version's, found by its index,
/// then dropped).
const SEGMENTS: &str = "
DROP TABLE IF EXISTS recording_segments;
CREATE TABLE recording_segments (segment INTEGER PRIMARY KEY, rows INTEGER NOT NULL);
INSERT INTO recording_segments
    SELECT segment, COUNT(*) FROM recordings WHERE segment IS NOT NULL GROUP BY segment;
DROP INDEX IF EXISTS recordings_segment;
CREATE TRIGGER IF NOT EXISTS recordings_uncount AFTER DELETE ON recordings
    WHEN OLD.segment IS NOT NULL
    BEGIN
        UPDATE recording_segments SET rows = rows - 1 WHERE segment = OLD.segment;
    END;
";

/// Creates the table, or brings one made by an earlier version up to date (the columns that
/// place the sealed bytes in files; its rows keep their bytes in `sealed`). True when the
/// table is an earlier version's, whose rows are unique by data plane and sequence number: a
/// replay must then resume after its recordings too (in a table made now a recording sent
/// again is known by its id).
pub(crate) fn migrate(conn: &rusqlite::Connection) -> Result<bool, StoreError> {
    let has_table: bool = conn.query_row(
        "SELECT COUNT(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'recordings'",
        [],
        |r| r.get(0),
    )?;
    if has_table {
        // Each column on its own: a start stopped between two still ends with all three.
        for column in ["segment", "offset", "length"] {
            let there: bool = conn.query_row(
                "SELECT COUNT(*) > 0 FROM pragma_table_info('recordings') WHERE name = ?1",
                [column],
                |r| r.get(0),
            )?;
            if !there {
                conn.execute_batch(&format!("ALTER TABLE recordings ADD COLUMN {column} INTEGER"))?;
            }
        }
    }
    conn.execute_batch(SCHEMA)?;
    // The counts are made when there are none, or when the segment index is back: an earlier
    // version ran on this store since and counted none of the rows it stored. In one
    // transaction: a start stopped half way makes them again.
    let stale: bool = conn.query_row(
        "SELECT NOT EXISTS (SELECT 1 FROM sqlite_master WHERE name = 'recording_segments')
             OR NOT EXISTS (SELECT 1 FROM sqlite_master WHERE name = 'recordings_uncount')
             OR EXISTS (SELECT 1 FROM sqlite_master WHERE name = 'recordings_segment')",
        [],
        |r| r.get(0),
    )?;
    if stale {
        conn.execute_batch(&format!("BEGIN; {SEGMENTS} COMMIT;"))?;
    }
    let by_seq = conn.query_row(
        "SELECT COUNT(*) > 0 FROM pragma_index_list('recordings') WHERE origin = 'u'",
        [],
        |r| r.get(0),
    )?;
    Ok(by_seq)
}

/// Unix ms now (when a recording's bytes arrive: their segment).
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A response that a later request may continue (`previous_response_id`): a Responses API
/// (or Realtime) response id. The condition of the `recordings_chain` index, word for word,
/// so that the queries below use it.
const CONTINUABLE: &str = "substr(response, 1, 5) = 'resp_'";

/// A recording as listed (without its ciphertext).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Recording {
    /// Its id (`rec_…`).
    pub id: String,
    /// The data plane that recorded it.
    pub dataplane: String,
    /// Unix ms of the request.
    pub ts_ms: u64,
    /// Identity.
    pub identity: Option<String>,
    /// User.
    pub user: Option<String>,
    /// Client address.
    pub src: Option<String>,
    /// Server name.
    pub sni: Option<String>,
    /// Method.
    pub method: Option<String>,
    /// Path.
    pub path: Option<String>,
    /// The rule that recorded it.
    pub rule: Option<String>,
    /// Plaintext bytes sealed.
    pub bytes: u64,
    /// The conversation it belongs to.
    pub thread: String,
    /// The response's id.
    pub response: Option<String>,
}

/// The columns of a recording's sealed form: in its row, or at a place in the files.
const SEALED: &str = "sealed, segment, offset, length";

/// A recording row of `{COLUMNS}, {SEALED}`: its listing, its sealed text as stored in the row
/// and the place of its bytes in the files, if they are there.
fn with_sealed(r: &rusqlite::Row<'_>) -> rusqlite::Result<(Recording, String, Option<Place>)> {
    let at = |i| r.get::<_, Option<i64>>(i);
    let place = match (at(14)?, at(15)?, at(16)?) {
        (Some(s), Some(o), Some(l)) => Some(Place {
            segment: u64::try_from(s).unwrap_or(0),
            offset: u64::try_from(o).unwrap_or(0),
            length: u64::try_from(l).unwrap_or(0),
        }),
        _ => None,
    };
    Ok((row(r)?, r.get::<_, String>(13)?, place))
}

/// The sealed text of a row: its own, or read from the files in `dir`.
fn sealed_text(
    in_row: String,
    place: Option<Place>,
    dir: Option<&std::path::Path>,
) -> Result<String, StoreError> {
    Ok(match (place, dir) {
        (Some(p), Some(dir)) => {
            String::from_utf8(crate::sealed_files::read_in(dir, &p)?).map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::InvalidData, "sealed bytes not text")
            })?
        }
        (Some(_), None) => {
            return Err(std::io::Error::other("the recording is in a file: no files here").into());
        }
        (None, _) => in_row,
    })
}

/// Calls `f` with each recording of `since ≤ ts < until`, oldest first, and its sealed text,
/// read through `conn` (an export's snapshot) and the segment files in `dir`.
pub fn each_in_window(
    conn: &rusqlite::Connection,
    dir: Option<&std::path::Path>,
    since_ms: i64,
    until_ms: i64,
    mut f: impl FnMut(&Recording, &str) -> std::io::Result<()>,
) -> Result<(), StoreError> {
    let sql = format!(
        "SELECT {COLUMNS}, {SEALED} FROM recordings WHERE ts_ms >= ?1 AND ts_ms < ?2
         ORDER BY ts_ms, id"
    );
    let mut st = conn.prepare(&sql)?;
    let mut rows = st.query(params![since_ms, until_ms])?;
    while let Some(r) = rows.next()? {
        let (meta, sealed, place) = with_sealed(r)?;
        match sealed_text(sealed, place, dir) {
            Ok(text) => f(&meta, &text)?,
            // Retention removed its file since the snapshot: not kept (the check counts it).
            Err(StoreError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The thread of the (oldest) recording that answered with `response`, when it can be
/// continued and is stored.
fn thread_of_response(
    conn: &rusqlite::Connection,
    response: &str,
) -> Result<Option<String>, StoreError> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT thread FROM recordings WHERE response = ?1 AND {CONTINUABLE}
             ORDER BY ts_ms LIMIT 1"
        ))?
        .query_row([response], |x| x.get::<_, String>(0))
        .optional()?)
}

/// Adds `appended` (recordings per segment, just stored) to the segments' counts.
pub(crate) fn count_segments(
    tx: &Transaction<'_>,
    appended: &[(u64, u64)],
) -> Result<(), StoreError> {
    let mut up = tx.prepare_cached(
        "INSERT INTO recording_segments (segment, rows) VALUES (?1, ?2)
         ON CONFLICT (segment) DO UPDATE SET rows = rows + excluded.rows",
    )?;
    for &(segment, n) in appended {
        up.execute(params![
            i64::try_from(segment).unwrap_or(i64::MAX),
            i64::try_from(n).unwrap_or(i64::MAX)
        ])?;
    }
    Ok(())
}

/// Stores one `recording` row (in the ingest's transaction), its sealed bytes appended to
/// `files` when there are files (the caller syncs them before it commits); 1 when new.
pub(crate) fn insert(
    tx: &Transaction<'_>,
    mut files: Option<&mut SealedFiles>,
    now_ms: u64,
    dataplane: &str,
    r: &Row<'_>,
) -> Result<usize, StoreError> {
    // A recording control cannot read is skipped (and said), never a reason to refuse the
    // batch: the link would resend it forever.
    let Some(s) = r.recording.as_deref() else {
        tracing::warn!(
            dataplane,
            seq = r.seq,
            "a recording record without its id or sealed bytes was not stored"
        );
        return Ok(0);
    };
    let thread: std::borrow::Cow<'_, str> = match (&s.previous_response, &s.conversation) {
        (Some(prev), _) => thread_of_response(tx, prev)?.map_or_else(|| prev.clone(), Into::into),
        (None, Some(c)) => c.clone(),
        (None, None) => s.id.clone(),
    };
    if s.sealed.len() as u64 > crate::sealed_files::MAX_SEALED {
        tracing::warn!(
            dataplane,
            seq = r.seq,
            bytes = s.sealed.len(),
            "a recording past the bound was not stored"
        );
        return Ok(0);
    }
    // The row names where the bytes will go; they are appended only when the row is new (a
    // recording already stored, in a batch sent again, is not written twice).
    let (sealed, place) = match files.as_deref_mut() {
        Some(f) => ("", Some(f.next_place(now_ms, s.sealed.len() as u64)?)),
        None => (&*s.sealed, None),
    };
    let n = tx
        .prepare_cached(
            "INSERT OR IGNORE INTO recordings (id, dataplane, seq, ts_ms, identity, user, src,
                 sni, method, path, rule, bytes, thread, response, sealed, segment, offset,
                 length)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16,
                 ?17, ?18)",
        )?
        .execute(params![
            s.id,
            dataplane,
            i64::try_from(r.seq).unwrap_or(i64::MAX),
            i64::try_from(r.ts_ms).unwrap_or(i64::MAX),
            r.identity,
            r.user,
            r.src,
            r.sni,
            s.method,
            s.path,
            r.rule,
            i64::try_from(s.bytes).unwrap_or(i64::MAX),
            thread,
            s.response,
            sealed,
            place.map(|p| i64::try_from(p.segment).unwrap_or(i64::MAX)),
            place.map(|p| i64::try_from(p.offset).unwrap_or(i64::MAX)),
            place.map(|p| i64::try_from(p.length).unwrap_or(i64::MAX)),
        ])?;
    if let (1, Some(f)) = (n, files) {
        let at = f.append(now_ms, s.sealed.as_bytes())?;
        debug_assert_eq!(Some(at), place);
    }
    Ok(n)
}

const COLUMNS: &str =
    "id, dataplane, ts_ms, identity, user, src, sni, method, path, rule, bytes, thread, response";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Recording> {
    Ok(Recording {
        id: r.get(0)?,
        dataplane: r.get(1)?,
        ts_ms: u64::try_from(r.get::<_, i64>(2)?).unwrap_or(0),
        identity: r.get(3)?,
        user: r.get(4)?,
        src: r.get(5)?,
        sni: r.get(6)?,
        method: r.get(7)?,
        path: r.get(8)?,
        rule: r.get(9)?,
        bytes: u64::try_from(r.get::<_, i64>(10)?).unwrap_or(0),
        thread: r.get(11)?,
        response: r.get(12)?,
    })
}

/// Which recordings to list.
#[derive(Debug, Clone, Default)]
pub struct RecordingFilter {
    /// Since (Unix ms).
    pub since_ms: Option<u64>,
    /// Identity.
    pub identity: Option<String>,
    /// User.
    pub user: Option<String>,
    /// Thread (all of one conversation, oldest first).
    pub thread: Option<String>,
}

impl FlowStore {
    /// Recordings matching `f`, newest first (a thread: oldest first), at most `limit`.
    pub fn recordings(
        &self,
        f: &RecordingFilter,
        limit: usize,
    ) -> Result<Vec<Recording>, StoreError> {
        // A thread is read through its index (oldest first), the rest newest first by time.
        // A thread asked for by one of its response ids is the thread of that recording.
        let thread = match &f.thread {
            Some(t) => Some(thread_of_response(self.conn(), t)?.unwrap_or_else(|| t.clone())),
            None => None,
        };
        // A thread is its first recording (named by its own id) and those that continue it.
        let (by, order) = match thread {
            Some(_) => ("(thread = ?4 AND thread <> id OR id = ?4 AND thread = id)", "ASC"),
            None => ("?4 IS NULL", "DESC"),
        };
        let sql = format!(
            "SELECT {COLUMNS} FROM recordings
             WHERE {by} AND (?1 IS NULL OR ts_ms >= ?1) AND (?2 IS NULL OR identity = ?2)
               AND (?3 IS NULL OR user = ?3)
             ORDER BY ts_ms {order}, id LIMIT ?5"
        );
        let mut st = self.conn().prepare(&sql)?;
        let since = f.since_ms.map(|s| i64::try_from(s).unwrap_or(i64::MAX));
        let rows = st.query_map(
            params![since, f.identity, f.user, thread, i64::try_from(limit).unwrap_or(i64::MAX)],
            row,
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// One recording and its sealed form (JSON text: the age-wrapped data key, nonce and
    /// ciphertext), from its file or its row.
    pub fn recording(&self, id: &str) -> Result<Option<(Recording, String)>, StoreError> {
        let sql = format!("SELECT {COLUMNS}, {SEALED} FROM recordings WHERE id = ?1");
        let found = self.conn().query_row(&sql, [id], with_sealed).optional()?;
        let Some((meta, sealed, place)) = found else { return Ok(None) };
        let dir = self.sealed.as_ref().map(SealedFiles::dir);
        Ok(Some((meta, sealed_text(sealed, place, dir)?)))
    }

    /// Syncs recordings' sealed bytes written since the last sync to the disk, when that
    /// was [`crate::sealed_files::SYNC_EVERY`] ago (the group commit's clock); true when it
    /// synced.
    pub fn sync_recordings(&mut self) -> Result<bool, StoreError> {
        Ok(match self.sealed.as_mut() {
            Some(f) => f.sync_due()?,
            None => false,
        })
    }

    /// Deletes recordings older than `older_than_ms`, and the files no row names any more;
    /// how many recordings.
    pub fn prune_recordings(&mut self, older_than_ms: u64) -> Result<u64, StoreError> {
        let cut = i64::try_from(older_than_ms).unwrap_or(i64::MAX);
        // The rows go (their segments' counts lowered by the trigger), and the counts of
        // segments no row names, in one transaction.
        let tx = self.conn_mut().transaction()?;
        let n = tx.execute("DELETE FROM recordings WHERE ts_ms < ?1", [cut])?;
        tx.execute("DELETE FROM recording_segments WHERE rows <= 0", [])?;
        tx.commit()?;
        // Then the files no row names any more: those without a count (a row kept past its
        // time, its data plane's clock ahead, keeps its own segment only; the bytes of a batch
        // that did not commit are counted nowhere).
        let Some(segments) = self.sealed.as_ref().map(SealedFiles::segments).transpose()? else {
            return Ok(n as u64);
        };
        let mut unnamed = Vec::new();
        {
            let mut named = self
                .conn()
                .prepare_cached("SELECT 1 FROM recording_segments WHERE segment = ?1")?;
            for segment in segments {
                if !named.exists([i64::try_from(segment).unwrap_or(i64::MAX)])? {
                    unnamed.push(segment);
                }
            }
        }
        if let Some(files) = self.sealed.as_mut() {
            for segment in unnamed {
                files.remove(segment)?;
            }
        }
        Ok(n as u64)
    }
}

#[cfg(test)]
#[path = "recordings_tests.rs"]
mod tests;
