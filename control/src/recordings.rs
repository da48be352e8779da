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
mod tests {
    use super::*;
    use crate::records::RecordStore;
    use serde_json::json;

    fn rec(seq: u64, id: &str, extra: serde_json::Value) -> Row<'static> {
        let mut v = json!({"seq": seq, "type": "recording", "ts_ms": 1000 + seq, "id": id,
                           "identity": "finance", "user": "alice@corp", "bytes": 10,
                           "sealed": {"alg": "aes-256-gcm+age", "key": "k", "nonce": "n", "data": "AAAA"}});
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        Row::read_value(v, "dp").unwrap()
    }

    /// Recordings are stored apart and threaded by their conversation, on either store.
    fn threaded(s: &mut dyn RecordStore) {
        let batch = vec![
            rec(1, "rec_a", json!({"response": "resp_1"})),
            rec(2, "rec_b", json!({"previous_response": "resp_1", "response": "resp_2"})),
            rec(3, "rec_c", json!({"previous_response": "resp_2", "response": "resp_3"})),
            rec(4, "rec_d", json!({"conversation": "chat-9"})),
            rec(5, "rec_e", json!({"conversation": "chat-9"})),
        ];
        assert_eq!(s.ingest("dp", &batch).unwrap(), vec![true; 5]);
        assert_eq!(s.ingest("dp", &batch[..1]).unwrap(), vec![false], "once");
        assert_eq!(s.count_of(crate::store::Kind::Requests).unwrap(), 0, "not a request record");
        let thread = |s: &dyn RecordStore, t: &str| {
            let f = RecordingFilter { thread: Some(t.into()), ..RecordingFilter::default() };
            s.recordings(&f, 10).unwrap().into_iter().map(|r| r.id).collect::<Vec<_>>()
        };
        assert_eq!(thread(s, "rec_a"), ["rec_a", "rec_b", "rec_c"]);
        assert_eq!(thread(s, "resp_1"), ["rec_a", "rec_b", "rec_c"], "by its first response");
        assert_eq!(thread(s, "resp_3"), ["rec_a", "rec_b", "rec_c"], "or its last");
        assert_eq!(thread(s, "chat-9"), ["rec_d", "rec_e"]);
        // A chat completion starts no chain: its own thread, named by its id.
        let chat = rec(6, "rec_f", json!({"response": "chatcmpl-1"}));
        assert_eq!(s.ingest("dp", &[chat]).unwrap(), vec![true]);
        assert_eq!(thread(s, "rec_f"), ["rec_f"]);
        assert!(thread(s, "chatcmpl-1").is_empty());
        let (meta, sealed) = s.recording("rec_b").unwrap().unwrap();
        assert_eq!(meta.user.as_deref(), Some("alice@corp"));
        assert!(sealed.contains("\"data\":\"AAAA\""), "{sealed}");
        // One control cannot read is skipped, and the batch stored.
        let bad =
            Row::read_value(json!({"seq": 9, "type": "recording", "id": "rec_x"}), "dp").unwrap();
        assert_eq!(s.ingest("dp", &[bad]).unwrap(), vec![false]);
        assert_eq!(s.last_seq("dp").unwrap(), None, "recordings are found again by their id");
        assert_eq!(s.prune_recordings(1_003).unwrap(), 2);
        assert_eq!(s.recordings(&RecordingFilter::default(), 10).unwrap().len(), 4);
    }

    #[test]
    fn recordings_are_stored_apart_and_threaded_by_their_conversation() {
        let mut s = FlowStore::open_in_memory().unwrap();
        threaded(&mut s);
        // The queries use their indexes (a thread's, a chain's), not a scan of the table.
        let plan = |sql: &str| {
            let mut st = s.conn().prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
            let rows = st.query_map([], |r| r.get::<_, String>(3)).unwrap();
            rows.map(Result::unwrap).collect::<Vec<_>>().join("; ")
        };
        let chain = plan(&format!(
            "SELECT thread FROM recordings WHERE response = 'resp_1' AND {CONTINUABLE} LIMIT 1"
        ));
        assert!(chain.contains("recordings_chain"), "{chain}");
        let listed = plan(&format!(
            "SELECT {COLUMNS} FROM recordings
             WHERE (thread = 'x' AND thread <> id OR id = 'x' AND thread = id)
               AND ('a' IS NULL OR ts_ms >= 1)
             ORDER BY ts_ms ASC, id LIMIT 5"
        ));
        assert!(listed.contains("recordings_threads"), "{listed}");
        assert!(!listed.contains("SCAN recordings"), "{listed}");
    }

    #[test]
    fn recordings_are_stored_apart_and_threaded_by_their_conversation_on_postgres() {
        let Some(cfg) = crate::pg::testing::fresh() else { return };
        threaded(&mut crate::pg::records::PgRecordStore::open_with(cfg).unwrap());
    }

    #[test]
    fn a_table_of_an_earlier_version_gets_the_file_columns_and_keeps_its_rows() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE recordings (id TEXT PRIMARY KEY, dataplane TEXT NOT NULL,
                 seq INTEGER NOT NULL, ts_ms INTEGER NOT NULL, identity TEXT, user TEXT, src TEXT,
                 sni TEXT, method TEXT, path TEXT, rule TEXT, bytes INTEGER NOT NULL,
                 thread TEXT NOT NULL, response TEXT, sealed TEXT NOT NULL,
                 UNIQUE (dataplane, seq));
             INSERT INTO recordings VALUES ('rec_old', 'dp', 1, 5, NULL, NULL, NULL, NULL, NULL,
                 NULL, NULL, 3, 'rec_old', NULL, '{\"data\":\"x\"}');",
        )
        .unwrap();
        assert!(migrate(&conn).unwrap(), "unique by sequence number");
        assert!(migrate(&conn).unwrap());
        let fresh = rusqlite::Connection::open_in_memory().unwrap();
        assert!(!migrate(&fresh).unwrap());
        let (sealed, segment): (String, Option<i64>) = conn
            .query_row("SELECT sealed, segment FROM recordings", [], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap();
        assert_eq!((sealed.as_str(), segment), ("{\"data\":\"x\"}", None));
    }

    /// The `recording_segments` table, by segment.
    fn segment_counts(conn: &rusqlite::Connection) -> Vec<(i64, i64)> {
        let mut st = conn.prepare("SELECT * FROM recording_segments ORDER BY 1").unwrap();
        st.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().map(Result::unwrap).collect()
    }

    #[test]
    fn segments_go_when_their_last_recording_does() {
        let dir = std::env::temp_dir().join(format!("sluice-rec-segs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut s = FlowStore::open(&dir.join("flows.db")).unwrap();
        const HOUR: u64 = 3_600_000;
        // rec_a (ts 1001) and rec_b (1002) arrive in hour 5, rec_c (1003) in hour 6.
        let batch = [rec(1, "rec_a", json!({})), rec(2, "rec_b", json!({}))];
        assert_eq!(s.ingest_at("dp", &batch, 5 * HOUR).unwrap(), vec![true; 2]);
        assert_eq!(s.ingest_at("dp", &batch, 5 * HOUR + 1).unwrap(), vec![false; 2]);
        assert_eq!(s.ingest_at("dp", &[rec(3, "rec_c", json!({}))], 6 * HOUR).unwrap(), [true]);
        let counts = |s: &FlowStore| segment_counts(s.conn());
        assert_eq!(counts(&s), vec![(5, 2), (6, 1)], "a batch sent again is not counted twice");
        let files = |s: &FlowStore| s.sealed.as_ref().unwrap().segments().unwrap();
        assert_eq!(files(&s), vec![5, 6]);
        // rec_a goes: hour 5 is still named by rec_b.
        assert_eq!(s.prune_recordings(1_002).unwrap(), 1);
        assert_eq!((counts(&s), files(&s)), (vec![(5, 1), (6, 1)], vec![5, 6]));
        // rec_b goes: hour 5's file and count go with it.
        assert_eq!(s.prune_recordings(1_003).unwrap(), 1);
        assert_eq!((counts(&s), files(&s)), (vec![(6, 1)], vec![6]));
        assert!(s.recording("rec_c").unwrap().is_some());
        // Bytes appended by a batch that did not commit (in hour 7) are counted nowhere: not
        // by the next batch, and their file goes once another is being written.
        s.sealed.as_mut().unwrap().append(7 * HOUR, b"{}").unwrap();
        s.sealed.as_mut().unwrap().write().unwrap();
        assert_eq!(s.ingest_at("dp", &[rec(4, "rec_d", json!({}))], 8 * HOUR).unwrap(), [true]);
        assert_eq!(counts(&s), vec![(6, 1), (8, 1)]);
        assert_eq!(files(&s), vec![6, 7, 8]);
        assert_eq!(s.prune_recordings(1_000).unwrap(), 0);
        assert_eq!(files(&s), vec![6, 8]);
        // A delete by other means is counted too (the trigger).
        s.conn().execute("DELETE FROM recordings WHERE id = 'rec_c'", []).unwrap();
        assert_eq!(counts(&s), vec![(6, 0), (8, 1)]);
        assert_eq!(s.prune_recordings(1_000).unwrap(), 0);
        assert_eq!((counts(&s), files(&s)), (vec![(8, 1)], vec![8]));
        // The last: the segment being written stays (with no row naming it).
        assert_eq!(s.prune_recordings(u64::MAX).unwrap(), 1);
        assert_eq!((counts(&s), files(&s)), (vec![], vec![8]));
        assert_eq!(s.ingest_at("dp", &[rec(5, "rec_e", json!({}))], 8 * HOUR).unwrap(), [true]);
        assert_eq!(counts(&s), vec![(8, 1)], "counted again from nothing");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn counts_are_made_again_after_an_earlier_version_ran() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        migrate(&conn).unwrap();
        // An earlier version: its schema brings the index back, its rows are not counted.
        conn.execute_batch(
            "CREATE INDEX recordings_segment ON recordings (segment) WHERE segment IS NOT NULL;
             INSERT INTO recordings (id, dataplane, seq, ts_ms, bytes, thread, sealed, segment)
                 VALUES ('rec_1', 'dp', 1, 1, 1, 'rec_1', '', 9);",
        )
        .unwrap();
        migrate(&conn).unwrap();
        let n: i64 = conn
            .query_row("SELECT rows FROM recording_segments WHERE segment = 9", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1);
    }

    #[test]
    fn an_earlier_versions_segments_are_counted_and_its_index_dropped() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch(&format!(
            "{}
             CREATE INDEX recordings_segment ON recordings (segment) WHERE segment IS NOT NULL;
             INSERT INTO recordings (id, dataplane, seq, ts_ms, bytes, thread, sealed, segment)
                 VALUES ('rec_1', 'dp', 1, 1, 1, 'rec_1', '', 3),
                        ('rec_2', 'dp', 2, 2, 1, 'rec_2', '', 3),
                        ('rec_3', 'dp', 3, 3, 1, 'rec_3', '', 4),
                        ('rec_4', 'dp', 4, 4, 1, 'rec_4', '{{}}', NULL);",
            SCHEMA
        ))
        .unwrap();
        migrate(&conn).unwrap();
        migrate(&conn).unwrap();
        assert_eq!(segment_counts(&conn), vec![(3, 2), (4, 1)]);
        let indexed: bool = conn
            .query_row(
                "SELECT COUNT(*) > 0 FROM sqlite_master WHERE name = 'recordings_segment'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert!(!indexed);
    }

    #[test]
    fn sealed_bytes_live_in_files_read_back_whole_and_go_with_retention() {
        let dir = std::env::temp_dir().join(format!("sluice-rec-files-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let db = dir.join("flows.db");
        let mut s = FlowStore::open(&db).unwrap();
        let batch = vec![rec(1, "rec_a", json!({})), rec(2, "rec_b", json!({}))];
        assert_eq!(s.ingest("dp", &batch).unwrap(), vec![true; 2]);
        assert_eq!(s.ingest("dp", &batch).unwrap(), vec![false; 2], "sent again: once");
        let files = dir.join("flows.recordings");
        // Bytes in the files, without the zero padding of direct writes' last block.
        let on_disk: usize = std::fs::read_dir(&files)
            .unwrap()
            .map(|e| {
                let bytes = std::fs::read(e.unwrap().path()).unwrap();
                bytes.iter().rposition(|&b| b != 0).map_or(0, |p| p + 1)
            })
            .sum();
        let (_, sealed) = s.recording("rec_b").unwrap().unwrap();
        assert_eq!(on_disk, 2 * sealed.len(), "each written once");
        let v: serde_json::Value = serde_json::from_str(&sealed).unwrap();
        assert_eq!(v["data"], "AAAA");
        let stored: String = s
            .conn()
            .query_row("SELECT sealed FROM recordings WHERE id = 'rec_b'", [], |r| r.get(0))
            .unwrap();
        assert_eq!(stored, "", "not in the row");
        // One past the bound (no data plane's) is said and not stored, never stored unreadable.
        let huge = "A".repeat(crate::sealed_files::MAX_SEALED as usize);
        let big = rec(3, "rec_big", json!({"sealed": {"alg": "a", "data": huge}}));
        assert_eq!(s.ingest("dp", &[big]).unwrap(), vec![false]);
        assert!(s.recording("rec_big").unwrap().is_none());
        // Reopened, the bytes are found again.
        drop(s);
        let mut s = FlowStore::open(&db).unwrap();
        assert_eq!(s.recording("rec_a").unwrap().unwrap().1, sealed.replace("rec_b", "rec_a"));
        // Retention: the rows go; the segment being written stays until no row names it and
        // another is being written.
        assert_eq!(s.prune_recordings(u64::MAX).unwrap(), 2);
        assert!(s.recording("rec_a").unwrap().is_none());
        let left = std::fs::read_dir(&files).unwrap().count();
        assert!(left <= 1, "{left} files");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
