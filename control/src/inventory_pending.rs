//! The inventory's counts between writes (ARCHITECTURE.md, "Apps and discovery"). Each
//! ingest adds what its records count to rows in memory; the rows are written every
//! 30 s (or once many are pending, or before the inventory is read or pruned), in the
//! transaction of an ingest, with a mark of the records written so far. A host seen in many
//! batches costs one row write per interval instead of one per batch. Discoveries are not
//! delayed: they are made in the ingest of their record.
//!
//! What is pending is lost with the process, never wrong: the mark (`inventory_applied`)
//! names the last flow and request record the rows count, and anything stored after it is
//! counted again from the records themselves when control starts, or after a transaction
//! failed (this module's state then is not trusted).

use std::time::{Duration, Instant};

use rusqlite::{OptionalExtension, Transaction, params};

use crate::inventory::{Deltas, Known, observe, write};
use crate::record::Row;
use crate::store::StoreError;

/// The mark: per record table, the last id the inventory's rows count.
pub(crate) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS inventory_applied (
    tbl TEXT PRIMARY KEY,
    upto INTEGER NOT NULL
) WITHOUT ROWID;
";

/// Longest time counts wait in memory.
pub(crate) const WRITE_EVERY: Duration = Duration::from_secs(30);
/// Most rows pending before they are written.
pub(crate) const MAX_PENDING: usize = 100_000;
/// Most bytes of strings pending before they are written (clients choose them).
pub(crate) const MAX_PENDING_BYTES: usize = 64 << 20;
/// Records read at a time when counting again from the mark.
const CATCH_UP_CHUNK: i64 = 5_000;

/// The inventory's state in memory.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    /// What is known of the rows and clients as written.
    pub(crate) known: Known,
    deltas: Deltas,
    since: Option<Instant>,
    /// The state above matches the tables and the mark (false at start, and after a
    /// transaction that may have written part of it failed).
    synced: bool,
}

impl Pending {
    /// Forgets everything: the next transaction counts again from the mark.
    pub(crate) fn lost(&mut self) {
        self.known.clear();
        self.deltas = Deltas::default();
        self.since = None;
        self.synced = false;
    }

    /// Whether the rows are due to be written.
    pub(crate) fn due(&self, now: Instant) -> bool {
        self.deltas.len() >= MAX_PENDING
            || self.deltas.bytes >= MAX_PENDING_BYTES
            || self.since.is_some_and(|s| now.duration_since(s) >= WRITE_EVERY)
    }

    /// Counts the newly stored `rows` of `dataplane` in, and makes the discoveries they
    /// bring (see [`observe`]), within the transaction `tx` that stores them. If `tx` then
    /// fails, call [`Pending::lost`].
    pub(crate) fn observe(
        &mut self,
        tx: &Transaction<'_>,
        dataplane: &str,
        rows: &[&Row<'_>],
        now: Instant,
    ) -> Result<Vec<serde_json::Value>, StoreError> {
        let found = observe(tx, dataplane, rows, &mut self.known, &mut self.deltas, true)?;
        if !self.deltas.is_empty() {
            self.since.get_or_insert(now);
        }
        Ok(found)
    }

    /// Makes the state trustworthy within `tx`, counting again what the mark does not cover.
    /// Call it before `tx` stores records.
    pub(crate) fn sync(&mut self, tx: &Transaction<'_>) -> Result<(), StoreError> {
        if !self.synced {
            self.catch_up(tx)?;
        }
        Ok(())
    }

    /// Writes what is pending within `tx` and moves the mark to the records `tx` holds. If
    /// `tx` then fails, call [`Pending::lost`].
    pub(crate) fn write(&mut self, tx: &Transaction<'_>) -> Result<(), StoreError> {
        self.sync(tx)?;
        self.since = None;
        write(tx, std::mem::take(&mut self.deltas), &mut self.known)?;
        mark(tx)
    }

    /// Whether a write would change anything.
    pub(crate) fn needs_write(&self) -> bool {
        !self.synced || !self.deltas.is_empty()
    }

    /// After retention deleted records and rows within `tx` (what was pending written
    /// first): the mark moves to the records left (ids of deleted records may be used again)
    /// and what is known of rows is forgotten.
    pub(crate) fn pruned(&mut self, tx: &Transaction<'_>) -> Result<(), StoreError> {
        self.known.clear();
        mark(tx)
    }

    fn catch_up(&mut self, tx: &Transaction<'_>) -> Result<(), StoreError> {
        self.known.clear();
        self.deltas = Deltas::default();
        self.since = None;
        let upto = |t: &str| -> Result<Option<i64>, StoreError> {
            Ok(tx
                .query_row("SELECT upto FROM inventory_applied WHERE tbl = ?1", [t], |r| r.get(0))
                .optional()?)
        };
        // No mark: a store of a version that wrote the rows with every ingest. They count
        // everything stored.
        if let (Some(flows), Some(requests)) = (upto("flows")?, upto("requests")?) {
            for (t, mut after) in [("flows", flows), ("requests", requests)] {
                let mut st = tx.prepare(&format!(
                    "SELECT id, dataplane, record FROM {t} WHERE id > ?1 ORDER BY id LIMIT ?2"
                ))?;
                loop {
                    let texts: Vec<(i64, String, String)> = st
                        .query_map(params![after, CATCH_UP_CHUNK], |r| {
                            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                        })?
                        .collect::<Result<_, _>>()?;
                    let Some(last) = texts.last() else { break };
                    after = last.0;
                    let rows: Vec<Row<'_>> = texts
                        .iter()
                        .filter_map(|(_, dp, text)| Row::read(text, dp))
                        .filter(|r| r.app.is_some())
                        .collect();
                    let refs: Vec<&Row<'_>> = rows.iter().collect();
                    let mut deltas = Deltas::default();
                    observe(tx, "", &refs, &mut self.known, &mut deltas, false)?;
                    write(tx, deltas, &mut self.known)?;
                }
            }
        }
        mark(tx)?;
        self.synced = true;
        Ok(())
    }
}

/// Moves the mark to the last record of each table.
fn mark(tx: &Transaction<'_>) -> Result<(), StoreError> {
    tx.execute_batch(
        "INSERT OR REPLACE INTO inventory_applied (tbl, upto)
             SELECT 'flows', COALESCE(MAX(id), 0) FROM flows;
         INSERT OR REPLACE INTO inventory_applied (tbl, upto)
             SELECT 'requests', COALESCE(MAX(id), 0) FROM requests;",
    )?;
    Ok(())
}
