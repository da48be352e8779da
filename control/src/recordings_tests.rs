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
    let bad = Row::read_value(json!({"seq": 9, "type": "recording", "id": "rec_x"}), "dp").unwrap();
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
