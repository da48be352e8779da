//! The record store's outbox on PostgreSQL ([`crate::outbox`] has the SQLite one and says
//! why): notes put in an ingest's transaction, read when left behind, cleared once written
//! to the audit log.

use tokio_postgres::Transaction;

use super::records::PgRecordStore;
use super::wait;
use crate::outbox::{LEFTOVERS, Note};
use crate::store::StoreError;

/// Puts a note in the outbox, in the ingest's transaction.
pub(super) async fn put(
    tx: &Transaction<'_>,
    dataplane: &str,
    action: &str,
    detail: &str,
) -> Result<Note, StoreError> {
    let row = tx
        .query_one(
            "INSERT INTO notes_outbox (dataplane, action, detail) VALUES ($1, $2, $3) RETURNING id",
            &[&dataplane, &action, &detail],
        )
        .await?;
    Ok(Note::new(row.try_get(0)?, dataplane.into(), action.into(), detail.into()))
}

impl PgRecordStore {
    /// See [`crate::records::RecordStore::leftover_notes`].
    pub(super) fn leftovers(&mut self, all: bool) -> Result<Vec<Note>, StoreError> {
        let pg = &self.pg;
        self.waiting.leftovers(all, || {
            let rows = wait(pg.client_ref().query(
                "SELECT id, dataplane, action, detail FROM notes_outbox ORDER BY id LIMIT $1",
                &[&(LEFTOVERS as i64)],
            ))?;
            rows.iter()
                .map(|r| Ok(Note::new(r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?)))
                .collect()
        })
    }

    /// See [`crate::records::RecordStore::clear_notes`].
    pub(super) fn clear(&mut self, ids: &[i64]) -> Result<(), StoreError> {
        let pg = &self.pg;
        self.waiting.clear(ids, || {
            let sql = "DELETE FROM notes_outbox WHERE id = ANY($1)";
            wait(pg.client_ref().execute(sql, &[&ids])).map(drop).map_err(Into::into)
        })
    }
}
