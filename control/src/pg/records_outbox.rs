//! The record store's outbox on PostgreSQL ([`crate::outbox`] has the SQLite one and says
//! why): notes put in an ingest's transaction, read when left behind, cleared once written
//! to the audit log.

use tokio_postgres::Transaction;

use super::records::PgRecordStore;
use super::{big, wait};
use crate::outbox::{LEFTOVERS, Note};
use crate::store::StoreError;

/// Notes younger than this are left to the control that put them (another control sharing
/// the store may be about to write them).
const OTHERS_GRACE_MS: u64 = 10_000;

/// Puts a note in the outbox, in the ingest's transaction.
pub(super) async fn put(
    tx: &Transaction<'_>,
    at_ms: u64,
    dataplane: &str,
    action: &str,
    detail: &str,
) -> Result<Note, StoreError> {
    let row = tx
        .query_one(
            "INSERT INTO notes_outbox (at_ms, dataplane, action, detail)
             VALUES ($1, $2, $3, $4) RETURNING id",
            &[&big(at_ms), &dataplane, &action, &detail],
        )
        .await?;
    Ok(Note {
        id: row.try_get(0)?,
        dataplane: dataplane.to_owned(),
        action: action.to_owned(),
        detail: detail.to_owned(),
    })
}

impl PgRecordStore {
    /// See [`crate::records::RecordStore::leftover_notes`].
    pub(super) fn leftovers(&mut self, now_ms: u64) -> Result<Vec<Note>, StoreError> {
        if !self.leftovers {
            return Ok(Vec::new());
        }
        let rows = wait(self.pg.client_ref().query(
            "SELECT id, at_ms, dataplane, action, detail FROM notes_outbox ORDER BY id LIMIT $1",
            &[&(LEFTOVERS as i64)],
        ))?;
        self.leftovers = !rows.is_empty();
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let at: i64 = r.try_get(1)?;
            if u64::try_from(at).unwrap_or(0).saturating_add(OTHERS_GRACE_MS) > now_ms {
                continue;
            }
            out.push(Note {
                id: r.try_get(0)?,
                dataplane: r.try_get(2)?,
                action: r.try_get(3)?,
                detail: r.try_get(4)?,
            });
        }
        Ok(out)
    }

    /// See [`crate::records::RecordStore::clear_notes`].
    pub(super) fn clear(&mut self, ids: &[i64]) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let cleared = wait(
            self.pg.client_ref().execute("DELETE FROM notes_outbox WHERE id = ANY($1)", &[&ids]),
        );
        if cleared.is_err() {
            self.leftovers = true;
        }
        cleared.map(drop).map_err(Into::into)
    }
}
