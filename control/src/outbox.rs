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
    /// This control took it from [`crate::records::RecordStore::take_notes`] before (and
    /// announced it), but did not clear it.
    pub again: bool,
}

/// The audit action of a discovery.
pub const DISCOVERY: &str = "discovery";

/// At most this many notes left behind are read at once.
pub const LEFTOVERS: usize = 500;

/// What a store remembers of its outbox between calls: whether it may hold notes nobody
/// cleared, and which notes this control took and has not cleared.
#[derive(Debug)]
pub(crate) struct Waiting {
    /// The outbox may hold notes nobody cleared (true at first: an earlier control's).
    pub maybe: bool,
    /// Notes taken and not cleared.
    pub taken: std::collections::HashSet<i64>,
}

impl Default for Waiting {
    fn default() -> Self {
        Waiting { maybe: true, taken: Default::default() }
    }
}

impl Waiting {
    /// Notes handed to the caller of `take_notes`: in the outbox until cleared.
    pub fn take(&mut self, notes: Vec<Note>) -> Vec<Note> {
        self.taken.extend(notes.iter().map(|n| n.id));
        notes
    }

    /// Whether the outbox is to be read: `all` reads it whatever is known (another control
    /// sharing the store may have put notes there).
    pub fn read(&self, all: bool) -> bool {
        all || self.maybe || !self.taken.is_empty()
    }

    /// What was read of the outbox: marks the notes this control took before. Anything read
    /// is read again next time, unless cleared meanwhile (then nothing is found).
    pub fn seen(&mut self, mut notes: Vec<Note>) -> Vec<Note> {
        self.maybe = !notes.is_empty();
        for n in &mut notes {
            n.again = self.taken.contains(&n.id);
        }
        notes
    }

    /// Notes cleared (or not, when `ok` is false).
    pub fn cleared(&mut self, ids: &[i64], ok: bool) {
        if ok {
            for id in ids {
                self.taken.remove(id);
            }
        } else {
            self.maybe = true;
        }
    }
}

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
        again: false,
    })
}

/// The notes in the outbox, oldest first, at most [`LEFTOVERS`].
pub(crate) fn waiting(conn: &Connection) -> Result<Vec<Note>, StoreError> {
    let mut st = conn.prepare_cached(
        "SELECT id, dataplane, action, detail FROM notes_outbox ORDER BY id LIMIT ?1",
    )?;
    let rows = st.query_map([LEFTOVERS as i64], |r| {
        Ok(Note {
            id: r.get(0)?,
            dataplane: r.get(1)?,
            action: r.get(2)?,
            detail: r.get(3)?,
            again: false,
        })
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
