//! What control needs of its record store, wherever it is kept (ARCHITECTURE.md, "The
//! stores"): [`RecordStore`], which the link's ingestion, the API, the console and retention
//! use, and [`EvidenceView`], the read-only snapshot evidence export and verification walk.
//! [`FlowStore`] keeps records in SQLite, [`crate::pg::records::PgRecordStore`] in
//! PostgreSQL; both pass the same tests (`records_tests.rs`).

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use crate::chains::Head;
use crate::chainstore::{ChainRow, Cut, Heads};
use crate::inventory::{InventoryFilter, InventoryRow};
use crate::outbox::Note;
use crate::record::Row;
use crate::recordings::{Recording, RecordingFilter};
use crate::series::Counts;
use crate::store::{FlowFilter, FlowStore, Kind, Page, StoreError, UsageBy, UsageRow};

/// Flow and request records, recordings, the inventory and the console's counts.
pub trait RecordStore: std::fmt::Debug + Send {
    /// Stores records from data plane `dataplane` in one transaction: flow records, request
    /// records, recordings; others (statistics) nowhere. Records already stored (same data
    /// plane and sequence number) are skipped. Returns, per record, whether it was newly
    /// stored.
    fn ingest(&mut self, dataplane: &str, rows: &[Row<'_>]) -> Result<Vec<bool>, StoreError>;
    /// What the ingests put in the outbox since the last call: discoveries, and what they
    /// said of chains ([`crate::outbox`]). The caller writes them to the audit log, then
    /// clears them with [`RecordStore::clear_notes`].
    fn take_notes(&mut self) -> Vec<Note>;
    /// Notes in the outbox that were not cleared (control stopped, or its store connection
    /// was lost, between an ingest's commit and the audit write; or that write failed),
    /// oldest first, at most [`crate::outbox::LEFTOVERS`]. Unless `all`, nothing is read
    /// while this control knows of none; `all` also finds what another control sharing the
    /// store left.
    fn leftover_notes(&mut self, all: bool) -> Result<Vec<Note>, StoreError>;
    /// Removes notes written to the audit log from the outbox.
    fn clear_notes(&mut self, ids: &[i64]) -> Result<(), StoreError>;
    /// Where each data plane's current chain stands.
    fn chain_heads(&self) -> Result<Vec<(String, Head)>, StoreError>;
    /// The highest sequence number stored for `dataplane` (where a replay may resume).
    fn last_seq(&self, dataplane: &str) -> Result<Option<u64>, StoreError>;
    /// Number of stored records of `kind`.
    fn count_of(&self, kind: Kind) -> Result<u64, StoreError>;
    /// Records of `kind` matching `f`, newest first, at most `limit`, strictly older than
    /// cursor `before` if given. A detector filter matches no flow record.
    fn query_kind(
        &self,
        kind: Kind,
        f: &FlowFilter,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Page, StoreError>;
    /// The record of `kind` with row id `id` (the console's detail page).
    fn record(&self, kind: Kind, id: i64) -> Result<Option<Value>, StoreError>;
    /// Requests and tokens since `since_ms` per value of `by` (most tokens first).
    fn usage(&self, since_ms: u64, by: UsageBy) -> Result<Vec<UsageRow>, StoreError>;
    /// The request records since `since_ms` that a quota counted: subject, time, tokens.
    fn quota_records(&self, since_ms: u64) -> Result<Vec<(String, u64, u64)>, StoreError>;
    /// Counts in buckets of `step_min` minutes from `since_ms` to `until_ms`, oldest first;
    /// every bucket is there (at most 2,000: a longer span gets a longer step).
    fn series(
        &self,
        since_ms: u64,
        until_ms: u64,
        step_min: u64,
    ) -> Result<Vec<(u64, Counts)>, StoreError>;
    /// The inventory rows matching `f`, most recently seen first.
    fn inventory(&mut self, f: &InventoryFilter) -> Result<Vec<InventoryRow>, StoreError>;
    /// Distinct hosts per app.
    fn hosts_per_app(&mut self) -> Result<Vec<(String, u64)>, StoreError>;
    /// Writes what the inventory holds in memory, if anything (before a stop).
    fn write_inventory(&mut self) -> Result<(), StoreError>;
    /// Discovery records since `since_ms`, newest first (at most `limit`).
    fn discoveries(&self, since_ms: u64, limit: usize) -> Result<Vec<Value>, StoreError>;
    /// Where retention cuts each data plane's chain.
    fn retention_cuts(&self, older_than_ms: u64, max_rows: u64) -> Result<Vec<Cut>, StoreError>;
    /// Deletes records older than `older_than_ms`, then the oldest beyond `max_rows` per
    /// kind, chained ones at `cuts` (whose checkpoints the caller has stored first).
    fn prune_at(
        &mut self,
        older_than_ms: u64,
        max_rows: u64,
        cuts: &[Cut],
    ) -> Result<u64, StoreError>;
    /// Recordings matching `f`, newest first (a thread: oldest first), at most `limit`.
    fn recordings(&self, f: &RecordingFilter, limit: usize) -> Result<Vec<Recording>, StoreError>;
    /// One recording and its sealed form (JSON text).
    fn recording(&self, id: &str) -> Result<Option<(Recording, String)>, StoreError>;
    /// Syncs recordings' sealed bytes to the disk when due; true when it synced.
    fn sync_recordings(&mut self) -> Result<bool, StoreError>;
    /// Deletes recordings older than `older_than_ms`; how many.
    fn prune_recordings(&mut self, older_than_ms: u64) -> Result<u64, StoreError>;
    /// A read-only view of its own (a connection beside the writer, so that verification
    /// and export do not hold ingestion up); `None` when there can be none (in memory).
    fn reader(&self) -> Result<Option<Box<dyn EvidenceView>>, StoreError>;
    /// The store itself as a view (in memory: read under its lock).
    fn view(&self) -> &dyn EvidenceView;
    /// Whether the store answers (the watchdog's check).
    fn alive(&self) -> bool;

    /// Flow records matching `f` ([`RecordStore::query_kind`]).
    fn query(&self, f: &FlowFilter, before: Option<i64>, limit: usize) -> Result<Page, StoreError> {
        self.query_kind(Kind::Flows, f, before, limit)
    }

    /// Number of stored flow records.
    fn count(&self) -> Result<u64, StoreError> {
        self.count_of(Kind::Flows)
    }

    /// [`RecordStore::prune_at`] at the cuts of [`RecordStore::retention_cuts`] (no
    /// checkpoint is made).
    fn prune(&mut self, older_than_ms: u64, max_rows: u64) -> Result<u64, StoreError> {
        let cuts = self.retention_cuts(older_than_ms, max_rows)?;
        self.prune_at(older_than_ms, max_rows, &cuts)
    }
}

/// Per chain (data plane, epoch): the first and last positions of its records in a window.
pub type ChainRanges = BTreeMap<(String, u64), (u64, u64)>;

/// What evidence export and verification read of the record store, at one moment.
pub trait EvidenceView {
    /// Begins a read transaction so that everything read until the view is dropped sees
    /// the store as it is now.
    fn hold_snapshot(&mut self) -> Result<(), StoreError>;
    /// Every data plane chain the store knows, and its head.
    fn heads(&self) -> Result<Heads, StoreError>;
    /// Calls `f` with every row of chain (`dataplane`, `epoch`) after position `after`, in
    /// storage order (each table by row id, the two merged by position).
    fn walk(
        &self,
        dataplane: &str,
        epoch: u64,
        after: u64,
        f: &mut dyn FnMut(ChainRow),
    ) -> Result<(), StoreError>;
    /// The chains with records of `since ≤ ts < until`, and their positions' span.
    fn chain_ranges(&self, since_ms: i64, until_ms: i64) -> Result<ChainRanges, StoreError>;
    /// Calls `f` with the text of each record of `since ≤ ts < until` (flows, then requests,
    /// each in storage order).
    fn each_record(
        &self,
        since_ms: i64,
        until_ms: i64,
        f: &mut dyn FnMut(&str) -> std::io::Result<()>,
    ) -> Result<(), StoreError>;
    /// Calls `f` with each recording of `since ≤ ts < until`, oldest first, and its sealed
    /// text (read from the files in `dir` where the store keeps them there).
    fn each_recording(
        &self,
        dir: Option<&Path>,
        since_ms: i64,
        until_ms: i64,
        f: &mut dyn FnMut(&Recording, &str) -> std::io::Result<()>,
    ) -> Result<(), StoreError>;
}

impl EvidenceView for rusqlite::Connection {
    fn hold_snapshot(&mut self) -> Result<(), StoreError> {
        crate::rulestore::hold_snapshot(self)
    }

    fn heads(&self) -> Result<Heads, StoreError> {
        crate::chainstore::heads(self)
    }

    fn walk(
        &self,
        dataplane: &str,
        epoch: u64,
        after: u64,
        f: &mut dyn FnMut(ChainRow),
    ) -> Result<(), StoreError> {
        crate::chainstore::walk(self, dataplane, epoch, after, f)
    }

    fn chain_ranges(&self, since_ms: i64, until_ms: i64) -> Result<ChainRanges, StoreError> {
        crate::chainstore::ranges(self, since_ms, until_ms)
    }

    fn each_record(
        &self,
        since_ms: i64,
        until_ms: i64,
        f: &mut dyn FnMut(&str) -> std::io::Result<()>,
    ) -> Result<(), StoreError> {
        for t in ["flows", "requests"] {
            let mut st = self.prepare(&format!(
                "SELECT record FROM {t} WHERE ts_ms >= ?1 AND ts_ms < ?2 ORDER BY id"
            ))?;
            let mut rows = st.query(rusqlite::params![since_ms, until_ms])?;
            while let Some(r) = rows.next()? {
                f(r.get_ref(0)?.as_str().unwrap_or(""))?;
            }
        }
        Ok(())
    }

    fn each_recording(
        &self,
        dir: Option<&Path>,
        since_ms: i64,
        until_ms: i64,
        f: &mut dyn FnMut(&Recording, &str) -> std::io::Result<()>,
    ) -> Result<(), StoreError> {
        crate::recordings::each_in_window(self, dir, since_ms, until_ms, f)
    }
}

impl RecordStore for FlowStore {
    fn ingest(&mut self, dataplane: &str, rows: &[Row<'_>]) -> Result<Vec<bool>, StoreError> {
        FlowStore::ingest(self, dataplane, rows)
    }
    fn take_notes(&mut self) -> Vec<Note> {
        FlowStore::take_notes(self)
    }
    fn leftover_notes(&mut self, all: bool) -> Result<Vec<Note>, StoreError> {
        FlowStore::leftover_notes(self, all)
    }
    fn clear_notes(&mut self, ids: &[i64]) -> Result<(), StoreError> {
        FlowStore::clear_notes(self, ids)
    }
    fn chain_heads(&self) -> Result<Vec<(String, Head)>, StoreError> {
        FlowStore::chain_heads(self)
    }
    fn last_seq(&self, dataplane: &str) -> Result<Option<u64>, StoreError> {
        FlowStore::last_seq(self, dataplane)
    }
    fn count_of(&self, kind: Kind) -> Result<u64, StoreError> {
        FlowStore::count_of(self, kind)
    }
    fn query_kind(
        &self,
        kind: Kind,
        f: &FlowFilter,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Page, StoreError> {
        FlowStore::query_kind(self, kind, f, before, limit)
    }
    fn record(&self, kind: Kind, id: i64) -> Result<Option<Value>, StoreError> {
        FlowStore::record(self, kind, id)
    }
    fn usage(&self, since_ms: u64, by: UsageBy) -> Result<Vec<UsageRow>, StoreError> {
        FlowStore::usage(self, since_ms, by)
    }
    fn quota_records(&self, since_ms: u64) -> Result<Vec<(String, u64, u64)>, StoreError> {
        FlowStore::quota_records(self, since_ms)
    }
    fn series(
        &self,
        since_ms: u64,
        until_ms: u64,
        step_min: u64,
    ) -> Result<Vec<(u64, Counts)>, StoreError> {
        FlowStore::series(self, since_ms, until_ms, step_min)
    }
    fn inventory(&mut self, f: &InventoryFilter) -> Result<Vec<InventoryRow>, StoreError> {
        FlowStore::inventory(self, f)
    }
    fn hosts_per_app(&mut self) -> Result<Vec<(String, u64)>, StoreError> {
        FlowStore::hosts_per_app(self)
    }
    fn write_inventory(&mut self) -> Result<(), StoreError> {
        FlowStore::write_inventory(self)
    }
    fn discoveries(&self, since_ms: u64, limit: usize) -> Result<Vec<Value>, StoreError> {
        FlowStore::discoveries(self, since_ms, limit)
    }
    fn retention_cuts(&self, older_than_ms: u64, max_rows: u64) -> Result<Vec<Cut>, StoreError> {
        FlowStore::retention_cuts(self, older_than_ms, max_rows)
    }
    fn prune_at(
        &mut self,
        older_than_ms: u64,
        max_rows: u64,
        cuts: &[Cut],
    ) -> Result<u64, StoreError> {
        FlowStore::prune_at(self, older_than_ms, max_rows, cuts)
    }
    fn recordings(&self, f: &RecordingFilter, limit: usize) -> Result<Vec<Recording>, StoreError> {
        FlowStore::recordings(self, f, limit)
    }
    fn recording(&self, id: &str) -> Result<Option<(Recording, String)>, StoreError> {
        FlowStore::recording(self, id)
    }
    fn sync_recordings(&mut self) -> Result<bool, StoreError> {
        FlowStore::sync_recordings(self)
    }
    fn prune_recordings(&mut self, older_than_ms: u64) -> Result<u64, StoreError> {
        FlowStore::prune_recordings(self, older_than_ms)
    }
    fn reader(&self) -> Result<Option<Box<dyn EvidenceView>>, StoreError> {
        Ok(match self.path() {
            Some(p) => Some(Box::new(rusqlite::Connection::open_with_flags(
                p,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
            )?)),
            None => None,
        })
    }
    fn view(&self) -> &dyn EvidenceView {
        self.connection()
    }
    fn alive(&self) -> bool {
        self.connection().execute_batch("SELECT 1").is_ok()
    }
}
