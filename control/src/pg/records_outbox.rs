//! The record store's outbox on PostgreSQL ([`crate::outbox`] has the SQLite one and says
//! why): notes put in an ingest's transaction, read when left behind, cleared once written
//! to the audit log.

use tokio_postgres::Transaction;

use super::records::PgRecordStore;
use super::{big, wait};
use crate::outbox::{LEFTOVERS, Note};
use crate::store::StoreError;

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
        again: false,
    })
}

impl PgRecordStore {
    /// See [`crate::records::RecordStore::leftover_notes`].
    pub(super) fn leftovers(&mut self, all: bool) -> Result<Vec<Note>, StoreError> {
        if !self.waiting.read(all) {
            return Ok(Vec::new());
        }
        let rows = wait(self.pg.client_ref().query(
            "SELECT id, dataplane, action, detail FROM notes_outbox ORDER BY id LIMIT $1",
            &[&(LEFTOVERS as i64)],
        ));
        let rows = match rows {
            Ok(rows) => rows,
            Err(e) => {
                self.waiting.maybe = true;
                return Err(e.into());
            }
        };
        let notes = rows
            .iter()
            .map(|r| {
                Ok(Note {
                    id: r.try_get(0)?,
                    dataplane: r.try_get(1)?,
                    action: r.try_get(2)?,
                    detail: r.try_get(3)?,
                    again: false,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok(self.waiting.seen(notes))
    }

    /// See [`crate::records::RecordStore::clear_notes`].
    pub(super) fn clear(&mut self, ids: &[i64]) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let cleared = wait(
            self.pg.client_ref().execute("DELETE FROM notes_outbox WHERE id = ANY($1)", &[&ids]),
        );
        self.waiting.cleared(ids, cleared.is_ok());
        cleared.map(drop).map_err(Into::into)
    }
}
