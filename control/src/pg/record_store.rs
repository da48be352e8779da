//! [`RecordStore`] for the record store on PostgreSQL: what is not written in
//! `records.rs`, `records_read.rs` and `records_chains.rs` is said here.

use serde_json::Value;

use super::records::PgRecordStore;
use crate::chains::Head;
use crate::chainstore::Cut;
use crate::inventory::{InventoryFilter, InventoryRow};
use crate::outbox::Note;
use crate::record::Row;
use crate::recordings::{Recording, RecordingFilter};
use crate::records::{EvidenceView, RecordStore};
use crate::series::Counts;
use crate::store::{FlowFilter, Kind, Page, StoreError, UsageBy, UsageRow};

impl RecordStore for PgRecordStore {
    fn ingest(&mut self, dataplane: &str, rows: &[Row<'_>]) -> Result<Vec<bool>, StoreError> {
        self.ingest_rows(dataplane, rows)
    }
    fn take_notes(&mut self) -> Vec<Note> {
        self.waiting.take(std::mem::take(&mut self.notes))
    }
    fn leftover_notes(&mut self, all: bool) -> Result<Vec<Note>, StoreError> {
        self.leftovers(all)
    }
    fn clear_notes(&mut self, ids: &[i64]) -> Result<(), StoreError> {
        self.clear(ids)
    }
    fn chain_heads(&self) -> Result<Vec<(String, Head)>, StoreError> {
        self.current_heads()
    }
    fn last_seq(&self, dataplane: &str) -> Result<Option<u64>, StoreError> {
        self.last_seq_of(dataplane)
    }
    fn count_of(&self, kind: Kind) -> Result<u64, StoreError> {
        self.count_kind(kind)
    }
    fn query_kind(
        &self,
        kind: Kind,
        f: &FlowFilter,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Page, StoreError> {
        self.query_rows(kind, f, before, limit)
    }
    fn record(&self, kind: Kind, id: i64) -> Result<Option<Value>, StoreError> {
        self.record_at(kind, id)
    }
    fn usage(&self, since_ms: u64, by: UsageBy) -> Result<Vec<UsageRow>, StoreError> {
        self.usage_by(since_ms, by)
    }
    fn quota_records(&self, since_ms: u64) -> Result<Vec<(String, u64, u64)>, StoreError> {
        self.quota_rows(since_ms)
    }
    fn series(
        &self,
        since_ms: u64,
        until_ms: u64,
        step_min: u64,
    ) -> Result<Vec<(u64, Counts)>, StoreError> {
        self.series_of(since_ms, until_ms, step_min)
    }
    fn inventory(&mut self, f: &InventoryFilter) -> Result<Vec<InventoryRow>, StoreError> {
        self.flush_inventory()?;
        self.inventory_rows(f)
    }
    fn hosts_per_app(&mut self) -> Result<Vec<(String, u64)>, StoreError> {
        self.flush_inventory()?;
        self.hosts_by_app()
    }
    fn write_inventory(&mut self) -> Result<(), StoreError> {
        self.flush_inventory()
    }
    fn discoveries(&self, since_ms: u64, limit: usize) -> Result<Vec<Value>, StoreError> {
        self.discoveries_since(since_ms, limit)
    }
    fn retention_cuts(&self, older_than_ms: u64, max_rows: u64) -> Result<Vec<Cut>, StoreError> {
        self.cuts(older_than_ms, max_rows)
    }
    fn prune_at(
        &mut self,
        older_than_ms: u64,
        max_rows: u64,
        cuts: &[Cut],
    ) -> Result<u64, StoreError> {
        self.prune_cut(older_than_ms, max_rows, cuts)
    }
    fn recordings(&self, f: &RecordingFilter, limit: usize) -> Result<Vec<Recording>, StoreError> {
        self.recordings_of(f, limit)
    }
    fn recording(&self, id: &str) -> Result<Option<(Recording, String)>, StoreError> {
        self.recording_by_id(id)
    }
    fn sync_recordings(&mut self) -> Result<bool, StoreError> {
        // Sealed bytes are in their rows: committed with them.
        Ok(false)
    }
    fn prune_recordings(&mut self, older_than_ms: u64) -> Result<u64, StoreError> {
        self.prune_recordings_before(older_than_ms)
    }
    fn reader(&self) -> Result<Option<Box<dyn EvidenceView>>, StoreError> {
        Ok(Some(Box::new(self.pg.another()?)))
    }
    fn view(&self) -> &dyn EvidenceView {
        &self.pg
    }
    fn alive(&self) -> bool {
        self.pg.alive()
    }
}
