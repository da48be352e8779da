//! The record store: flow and request records in SQLite (WAL), each kind in its table,
//! de-duplicated by (data plane, sequence number) so a replay after a reconnect stores nothing
//! twice, read newest first with a cursor, pruned by age and size. Time, source and user
//! have per-row indexes; the other filters go through the block index (`blocks.rs`;
//! ARCHITECTURE.md, "The record store").

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params, params_from_iter};
use serde_json::Value;

use crate::chains::Head;
use crate::chainstore::Place;
use crate::outbox;
pub use crate::outbox::Note;
use crate::record::{RecordKind, Row};

fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// SQLite failed.
    #[error("flow store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A stored record is not valid JSON (the file was changed behind our back).
    #[error("flow store: corrupt record: {0}")]
    Corrupt(#[from] serde_json::Error),
    /// The files of recordings' sealed bytes failed.
    #[error("flow store, recordings' files: {0}")]
    Io(#[from] std::io::Error),
    /// PostgreSQL failed (`store = "postgres://…"`).
    #[error("store on PostgreSQL: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    /// The PostgreSQL connection's runtime is gone.
    #[error("store on PostgreSQL: connection closed: {0}")]
    Closed(String),
    /// The TLS configuration for the server could not be made (`store_ca`).
    #[error("store on PostgreSQL: TLS: {0}")]
    Tls(String),
    /// This control lost its store's lock: another may be active, and this one writes nothing.
    #[error("store on PostgreSQL: this control is no longer the store's active one; write refused")]
    NotActive,
}

/// What usage is counted by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageBy {
    /// Identity.
    Identity,
    /// Feed user (or a virtual key's user).
    User,
    /// Destination name.
    Sni,
    /// Model.
    Model,
    /// Virtual key id.
    VirtualKey,
}

/// Requests and tokens of one identity, user, destination, model or virtual key.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct UsageRow {
    /// The identity, user, destination, model or key id (`null`: none).
    pub key: Option<String>,
    /// Requests.
    pub requests: u64,
    /// Input tokens.
    pub input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
    /// Cached input tokens.
    pub cached_tokens: u64,
}

/// Filters of a flow query; `None` matches anything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlowFilter {
    /// Records at or after this unix ms.
    pub since_ms: Option<u64>,
    /// Records before this unix ms.
    pub until_ms: Option<u64>,
    /// Identity name.
    pub identity: Option<String>,
    /// Feed user.
    pub user: Option<String>,
    /// Source address.
    pub src: Option<String>,
    /// Server name.
    pub sni: Option<String>,
    /// Category.
    pub category: Option<String>,
    /// Verdict (`allow`, `block`).
    pub verdict: Option<String>,
    /// Rule name.
    pub rule: Option<String>,
    /// DLP detector with findings (request records only).
    pub detector: Option<String>,
    /// Data plane name.
    pub dataplane: Option<String>,
    /// App (`unknown` too).
    pub app: Option<String>,
    /// Operation (request records).
    pub operation: Option<String>,
    /// Records stored after this row id (the console's live tail).
    pub after_id: Option<i64>,
}

/// Which records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Flow records (the packet path).
    Flows,
    /// Request records (the interception engine).
    Requests,
}

impl Kind {
    pub(crate) fn table(self) -> &'static str {
        match self {
            Kind::Flows => "flows",
            Kind::Requests => "requests",
        }
    }
}

/// One page of results, newest first.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    /// The records.
    pub records: Vec<Value>,
    /// Their row ids (the console links a record's detail by it).
    pub ids: Vec<i64>,
    /// Pass as `before` to get the next page; `None` at the end.
    pub next: Option<i64>,
}

/// The store.
#[derive(Debug)]
pub struct FlowStore {
    conn: Connection,
    /// Its file (none: in memory).
    path: Option<std::path::PathBuf>,
    /// Where recordings' sealed bytes go (none in memory: they stay in their rows).
    pub(crate) sealed: Option<crate::sealed_files::SealedFiles>,
    /// The recordings table is an earlier version's, unique by sequence number
    /// ([`crate::recordings::migrate`]).
    recordings_by_seq: bool,
    /// Where each data plane's chain stands (read from `chain_heads` at its first ingest).
    heads: std::collections::HashMap<String, Option<Head>>,
    /// What the ingests put in the outbox since the last [`FlowStore::take_notes`].
    notes: Vec<Note>,
    /// What is known of the outbox.
    waiting: outbox::Waiting,
    /// The inventory's counts not yet written, and what is known of its rows.
    inventory: crate::inventory_pending::Pending,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS flows (
    id INTEGER PRIMARY KEY,
    dataplane TEXT NOT NULL,
    seq INTEGER NOT NULL,
    ts_ms INTEGER NOT NULL,
    identity TEXT, user TEXT, src TEXT, sni TEXT, category TEXT, verdict TEXT, rule TEXT,
    record TEXT NOT NULL,
    UNIQUE (dataplane, seq)
);
CREATE INDEX IF NOT EXISTS flows_ts ON flows (ts_ms);
CREATE INDEX IF NOT EXISTS flows_src ON flows (src, id);
CREATE INDEX IF NOT EXISTS flows_users ON flows (user, id) WHERE user IS NOT NULL;
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY,
    dataplane TEXT NOT NULL,
    seq INTEGER NOT NULL,
    ts_ms INTEGER NOT NULL,
    identity TEXT, user TEXT, src TEXT, sni TEXT, category TEXT, verdict TEXT, rule TEXT,
    detectors TEXT,
    record TEXT NOT NULL,
    UNIQUE (dataplane, seq)
);
CREATE INDEX IF NOT EXISTS requests_ts ON requests (ts_ms);
CREATE INDEX IF NOT EXISTS requests_src ON requests (src, id);
CREATE INDEX IF NOT EXISTS requests_users ON requests (user, id) WHERE user IS NOT NULL;
";

/// `%,name,%` with LIKE's wildcards in `name` escaped.
pub(crate) fn like_item(name: &str) -> String {
    let mut s = String::from("%,");
    for c in name.chars() {
        if matches!(c, '%' | '_' | '\\') {
            s.push('\\');
        }
        s.push(c);
    }
    s.push_str(",%");
    s
}

impl FlowStore {
    /// The connection (for the stores of other record kinds, [`crate::recordings`]).
    pub(crate) fn conn(&self) -> &Connection {
        &self.conn
    }

    /// The connection, for a transaction.
    pub(crate) fn conn_mut(&mut self) -> &mut Connection {
        &mut self.conn
    }

    /// Opens (creating if needed) the store at `path`, recordings' sealed bytes in the
    /// directory beside it (`flows.db`: `flows.recordings/`).
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let mut s = Self::setup(Connection::open(path)?)?;
        s.path = Some(path.to_owned());
        let dir = path.with_extension("recordings");
        s.sealed = Some(crate::sealed_files::SealedFiles::open(&dir)?);
        Ok(s)
    }

    /// A store in memory (tests, dry runs).
    pub fn open_in_memory() -> Result<Self, StoreError> {
        Self::setup(Connection::open_in_memory()?)
    }

    fn setup(mut conn: Connection) -> Result<Self, StoreError> {
        // New stores only (a store's page size is fixed once it has tables in WAL mode):
        // fewer, fuller pages for append-mostly tables (BENCHMARKS.md, stop 31).
        conn.pragma_update(None, "page_size", 16384)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "cache_size", -65536)?;
        conn.execute_batch(SCHEMA)?;
        conn.execute_batch(crate::blocks::SCHEMA)?;
        if crate::blocks::migrate(&mut conn)? {
            tracing::info!("record store: per-row filter indexes replaced by the block index");
        }
        conn.execute_batch(crate::inventory::SCHEMA)?;
        conn.execute_batch(crate::inventory_pending::SCHEMA)?;
        conn.execute_batch(crate::series::SCHEMA)?;
        conn.execute_batch(crate::outbox::SCHEMA)?;
        if crate::series::migrate(&mut conn)? {
            tracing::info!("record store: the console's counts per minute filled from the records");
        }
        let recordings_by_seq = crate::recordings::migrate(&conn)?;
        crate::chainstore::migrate(&conn)?;
        Ok(FlowStore {
            conn,
            path: None,
            sealed: None,
            recordings_by_seq,
            heads: Default::default(),
            notes: Vec::new(),
            waiting: outbox::Waiting::default(),
            inventory: crate::inventory_pending::Pending::default(),
        })
    }

    /// Stores records from data plane `dataplane` in one transaction: flow records in
    /// `flows`, request records in `requests`, others (statistics) nowhere. Records already
    /// stored (same data plane and sequence number) are skipped. Returns, per record, whether
    /// it was newly stored.
    pub fn ingest(&mut self, dataplane: &str, rows: &[Row<'_>]) -> Result<Vec<bool>, StoreError> {
        self.ingest_at(dataplane, rows, crate::recordings::now_ms())
    }

    /// [`FlowStore::ingest`] at Unix ms `now` (the segment recordings' bytes go to).
    pub(crate) fn ingest_at(
        &mut self,
        dataplane: &str,
        rows: &[Row<'_>],
        now: u64,
    ) -> Result<Vec<bool>, StoreError> {
        let stored = self.ingest_once(dataplane, rows, now);
        if stored.is_err() {
            // What the failed transaction wrote of the inventory is not there.
            self.inventory.lost();
        }
        stored
    }

    fn ingest_once(
        &mut self,
        dataplane: &str,
        rows: &[Row<'_>],
        now: u64,
    ) -> Result<Vec<bool>, StoreError> {
        // What an ingest that failed appended is not counted: its rows were not stored.
        if let Some(f) = self.sealed.as_mut() {
            f.take_appended();
        }
        let mut head = match self.heads.get(dataplane) {
            Some(h) => *h,
            None => crate::chainstore::load_head(&self.conn, dataplane)?,
        };
        let before = head;
        let mut notes = Vec::new();
        let tx = self.conn.transaction()?;
        self.inventory.sync(&tx)?;
        let mut fresh = Vec::with_capacity(rows.len());
        let mut blocks = crate::blocks::Additions::default();
        let mut tally = crate::series::Tally::default();
        {
            let mut flows = tx.prepare_cached(
                "INSERT OR IGNORE INTO flows
                 (dataplane, seq, ts_ms, identity, user, src, sni, category, verdict, rule, record,
                  ce, cn, link)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
            )?;
            let mut requests = tx.prepare_cached(
                "INSERT OR IGNORE INTO requests
                 (dataplane, seq, ts_ms, identity, user, src, sni, category, verdict, rule, record, detectors,
                  ce, cn, link)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
            )?;
            for r in rows {
                let seq = i64::try_from(r.seq).unwrap_or(i64::MAX);
                let ts = i64::try_from(r.ts_ms).unwrap_or(i64::MAX);
                let (identity, user, src) = (&r.identity, &r.user, &r.src);
                let (sni, category, verdict, rule) = (&r.sni, &r.category, &r.verdict, &r.rule);
                let (mut ce, mut cn, mut link) = (None, None, None);
                if matches!(r.kind, RecordKind::Flow | RecordKind::Request) {
                    match crate::chainstore::place(&tx, dataplane, r, &mut head, &mut notes)? {
                        Place::Plain => {}
                        Place::Chain { epoch, n, link: l } => {
                            (ce, cn, link) = (Some(i(epoch)), Some(i(n)), Some(l));
                        }
                        Place::Nowhere => {
                            fresh.push(false);
                            continue;
                        }
                    }
                }
                let link = link.as_ref().map(|l| &l.0[..]);
                let n = match r.kind {
                    RecordKind::Flow => flows.execute(params![
                        dataplane, seq, ts, identity, user, src, sni, category, verdict, rule,
                        r.json, ce, cn, link
                    ])?,
                    RecordKind::Request => requests.execute(params![
                        dataplane,
                        seq,
                        ts,
                        identity,
                        user,
                        src,
                        sni,
                        category,
                        verdict,
                        rule,
                        r.json,
                        r.detectors(),
                        ce,
                        cn,
                        link
                    ])?,
                    RecordKind::Recording => {
                        crate::recordings::insert(&tx, self.sealed.as_mut(), now, dataplane, r)?
                    }
                    RecordKind::Stats | RecordKind::Alarm | RecordKind::Other => 0,
                };
                let table = match r.kind {
                    RecordKind::Flow => Some(Kind::Flows),
                    RecordKind::Request => Some(Kind::Requests),
                    _ => None,
                };
                if let Some(table) = table.filter(|_| n == 1) {
                    let values = [
                        r.identity.as_deref(),
                        r.sni.as_deref(),
                        r.category.as_deref(),
                        r.verdict.as_deref(),
                        r.rule.as_deref(),
                        Some(dataplane),
                    ];
                    blocks.add(table, tx.last_insert_rowid(), ts, values);
                    tally.add(r);
                }
                fresh.push(n == 1);
            }
        }
        blocks.write(&tx)?;
        tally.write(&tx)?;
        // Recordings' bytes are in their files before the rows naming them are stored (they
        // reach the disk as a group commit: `sealed_files`).
        if let Some(f) = self.sealed.as_mut() {
            f.write()?;
            crate::recordings::count_segments(&tx, &f.take_appended())?;
        }
        let new: Vec<&Row<'_>> = rows
            .iter()
            .zip(&fresh)
            .filter(|(r, n)| **n && r.app.is_some())
            .map(|(r, _)| r)
            .collect();
        let at = std::time::Instant::now();
        let found = if new.is_empty() {
            Vec::new()
        } else {
            self.inventory.observe(&tx, dataplane, &new, at)?
        };
        if self.inventory.due(at) {
            self.inventory.write(&tx)?;
        }
        if let Some(h) = head.filter(|_| head != before) {
            crate::chainstore::save_head(&tx, dataplane, &h)?;
        }
        let mut said = Vec::with_capacity(found.len() + notes.len());
        for d in &found {
            said.push(outbox::put(&tx, dataplane, outbox::DISCOVERY, &d.to_string())?);
        }
        for n in &notes {
            said.push(outbox::put(&tx, dataplane, n.action, &n.detail)?);
        }
        tx.commit()?;
        self.heads.insert(dataplane.to_owned(), head);
        self.notes.extend(said);
        Ok(fresh)
    }

    /// Where each data plane's current chain stands.
    pub fn chain_heads(&self) -> Result<Vec<(String, Head)>, StoreError> {
        crate::chainstore::current_heads(&self.conn)
    }

    /// The connection (verification of a store in memory).
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// Its file (none: in memory).
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// What the ingests put in the outbox since the last call (discoveries and what they
    /// said of chains), to be written to the audit log and then cleared.
    pub fn take_notes(&mut self) -> Vec<Note> {
        self.waiting.take(std::mem::take(&mut self.notes))
    }

    /// Notes in the outbox that were not cleared (control stopped between an ingest's commit
    /// and the audit write, or that write failed), oldest first, at most
    /// [`outbox::LEFTOVERS`]; unless `all`, nothing is read while the outbox is known to hold
    /// none.
    pub fn leftover_notes(&mut self, all: bool) -> Result<Vec<Note>, StoreError> {
        let conn = &self.conn;
        self.waiting.leftovers(all, || outbox::waiting(conn))
    }

    /// Removes notes written to the audit log from the outbox.
    pub fn clear_notes(&mut self, ids: &[i64]) -> Result<(), StoreError> {
        let conn = &self.conn;
        self.waiting.clear(ids, || outbox::clear(conn, ids))
    }

    /// The inventory rows matching `f` ([`crate::inventory::query`]), what is pending
    /// written first.
    pub fn inventory(
        &mut self,
        f: &crate::inventory::InventoryFilter,
    ) -> Result<Vec<crate::inventory::InventoryRow>, StoreError> {
        self.write_inventory()?;
        crate::inventory::query(&self.conn, f)
    }

    /// Distinct hosts per app in the inventory, what is pending written first.
    pub fn hosts_per_app(&mut self) -> Result<Vec<(String, u64)>, StoreError> {
        self.write_inventory()?;
        crate::inventory::hosts_per_app(&self.conn)
    }

    /// Writes the inventory's pending counts.
    pub fn write_inventory(&mut self) -> Result<(), StoreError> {
        if !self.inventory.needs_write() {
            return Ok(());
        }
        let written = self.conn.transaction().map_err(StoreError::from).and_then(|tx| {
            self.inventory.write(&tx)?;
            Ok(tx.commit()?)
        });
        if written.is_err() {
            self.inventory.lost();
        }
        written
    }

    /// Discovery records since `since_ms`, newest first.
    pub fn discoveries(&self, since_ms: u64, limit: usize) -> Result<Vec<Value>, StoreError> {
        crate::inventory::discoveries(&self.conn, since_ms, limit)
    }

    /// Where retention cuts each data plane's chain (each chain is cut at one position across
    /// both tables, so what stays verifies from a checkpoint at the cut).
    pub fn retention_cuts(
        &self,
        older_than_ms: u64,
        max_rows: u64,
    ) -> Result<Vec<crate::chainstore::Cut>, StoreError> {
        crate::chainstore::cuts(&self.conn, older_than_ms, max_rows)
    }

    /// [`crate::records::RecordStore::prune`] with the chains cut at `cuts` (whose checkpoints the caller has
    /// stored first); records outside chains go by age and count as they are.
    pub fn prune_at(
        &mut self,
        older_than_ms: u64,
        max_rows: u64,
        cuts: &[crate::chainstore::Cut],
    ) -> Result<u64, StoreError> {
        let pruned = self.prune_once(older_than_ms, max_rows, cuts);
        if pruned.is_err() {
            self.inventory.lost();
        }
        pruned
    }

    fn prune_once(
        &mut self,
        older_than_ms: u64,
        max_rows: u64,
        cuts: &[crate::chainstore::Cut],
    ) -> Result<u64, StoreError> {
        let tx = self.conn.transaction()?;
        // The inventory counts everything stored before records go (and its rows' last
        // times are right for its own retention).
        self.inventory.write(&tx)?;
        let mut n = crate::chainstore::apply_cuts(&tx, cuts)?;
        for t in ["flows", "requests"] {
            n += tx.execute(
                &format!("DELETE FROM {t} WHERE cn IS NULL AND ts_ms < ?1"),
                [i(older_than_ms)],
            )? as u64;
            n += tx.execute(
                &format!(
                    "DELETE FROM {t} WHERE cn IS NULL AND id <= (SELECT id FROM {t} ORDER BY id DESC LIMIT 1 OFFSET ?1)"
                ),
                [i(max_rows)],
            )? as u64;
        }
        crate::blocks::prune(&tx)?;
        crate::series::prune(&tx, older_than_ms)?;
        n += crate::inventory::prune(&tx, older_than_ms, &self.inventory.known)?;
        self.inventory.pruned(&tx)?;
        tx.commit()?;
        Ok(n)
    }
}

#[path = "store_read.rs"]
mod read;

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;
