//! The record store's outbox (ARCHITECTURE.md, "Evidence"): what an ingest says for control's
//! audit log (a break of a data plane's chain, a discovery) is stored in the ingest's own
//! transaction, and removed once it is in the audit log. The two logs are two stores, so a
//! control stopped, or a store connection lost, between the commit and the audit write no
//! longer loses the note: the rows it was about are stored, their copy sent again is skipped,
//! and only the outbox still has it. This module keeps the outbox in SQLite;
//! `pg/records_outbox.rs` in PostgreSQL; [`crate::notes`] writes it out.

use rusqlite::{Connection, Transaction, params};

use crate::store::StoreError;

/// One thing an ingest said for the audit log, as it waits in the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// Its row in the outbox.
    pub id: i64,
    /// The data plane whose records it is about.
    pub dataplane: String,
    /// The audit action: `chain.refused`, `chain.gap`, `chain.restart` or `discovery`.
    pub action: String,
    /// The details, as JSON text.
    pub detail: String,
}

/// The audit action of a discovery.
pub const DISCOVERY: &str = "discovery";

/// At most this many notes left behind are read at once.
pub const LEFTOVERS: usize = 500;

pub(crate) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS notes_outbox (
    id INTEGER PRIMARY KEY,
    at_ms INTEGER NOT NULL,
    dataplane TEXT NOT NULL,
    action TEXT NOT NULL,
    detail TEXT NOT NULL
);
";

/// Puts a note in the outbox, in the ingest's transaction.
pub(crate) fn put(
    tx: &Transaction<'_>,
    at_ms: u64,
    dataplane: &str,
    action: &str,
    detail: &str,
) -> Result<Note, StoreError> {
    tx.prepare_cached(
        "INSERT INTO notes_outbox (at_ms, dataplane, action, detail) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![i64::try_from(at_ms).unwrap_or(i64::MAX), dataplane, action, detail])?;
    Ok(Note {
        id: tx.last_insert_rowid(),
        dataplane: dataplane.to_owned(),
        action: action.to_owned(),
        detail: detail.to_owned(),
    })
}

/// The notes in the outbox, oldest first, at most [`LEFTOVERS`].
pub(crate) fn waiting(conn: &Connection) -> Result<Vec<Note>, StoreError> {
    let mut st = conn.prepare_cached(
        "SELECT id, dataplane, action, detail FROM notes_outbox ORDER BY id LIMIT ?1",
    )?;
    let rows = st.query_map([LEFTOVERS as i64], |r| {
        Ok(Note { id: r.get(0)?, dataplane: r.get(1)?, action: r.get(2)?, detail: r.get(3)? })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Removes written notes.
pub(crate) fn clear(conn: &Connection, ids: &[i64]) -> Result<(), StoreError> {
    let tx = conn.unchecked_transaction()?;
    {
        let mut st = tx.prepare_cached("DELETE FROM notes_outbox WHERE id = ?1")?;
        for id in ids {
            st.execute([id])?;
        }
    }
    Ok(tx.commit()?)
}
