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
    /// This control took it before (from `take_notes` or `leftover_notes`) and announced
    /// it, but did not clear it.
    pub again: bool,
}

impl Note {
    /// A note as it stands in the outbox, not taken before.
    pub fn new(id: i64, dataplane: String, action: String, detail: String) -> Note {
        Note { id, dataplane, action, detail, again: false }
    }
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

    /// What was read of the outbox: marks the notes this control took (and announced) before,
    /// and counts the others as taken from now on. Anything read is read again next time,
    /// unless cleared meanwhile (then nothing is found); what was taken and is no longer
    /// there (a clear whose answer was lost) is forgotten once the whole outbox was read.
    pub fn seen(&mut self, mut notes: Vec<Note>) -> Vec<Note> {
        self.maybe = !notes.is_empty();
        if notes.len() < LEFTOVERS {
            let there: std::collections::HashSet<i64> = notes.iter().map(|n| n.id).collect();
            self.taken.retain(|id| there.contains(id));
        }
        for n in &mut notes {
            n.again = !self.taken.insert(n.id);
        }
        notes
    }

    /// Reads the outbox with `read` unless [`Waiting::read`] says there is no need, and marks
    /// what it finds ([`Waiting::seen`]); a failed read is tried again next time.
    pub fn leftovers(
        &mut self,
        all: bool,
        read: impl FnOnce() -> Result<Vec<Note>, StoreError>,
    ) -> Result<Vec<Note>, StoreError> {
        if !self.read(all) {
            return Ok(Vec::new());
        }
        match read() {
            Ok(notes) => Ok(self.seen(notes)),
            Err(e) => {
                self.maybe = true;
                Err(e)
            }
        }
    }

    /// Clears `ids` with `clear` (nothing to do for none), and notes how it went.
    pub fn clear(
        &mut self,
        ids: &[i64],
        clear: impl FnOnce() -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let cleared = clear();
        self.cleared(ids, cleared.is_ok());
        cleared
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
    dataplane TEXT NOT NULL,
    action TEXT NOT NULL,
    detail TEXT NOT NULL
);
";

/// Puts a note in the outbox, in the ingest's transaction.
pub(crate) fn put(
    tx: &Transaction<'_>,
    dataplane: &str,
    action: &str,
    detail: &str,
) -> Result<Note, StoreError> {
    tx.prepare_cached("INSERT INTO notes_outbox (dataplane, action, detail) VALUES (?1, ?2, ?3)")?
        .execute(params![dataplane, action, detail])?;
    Ok(Note::new(tx.last_insert_rowid(), dataplane.into(), action.into(), detail.into()))
}

/// The notes in the outbox, oldest first, at most [`LEFTOVERS`].
pub(crate) fn waiting(conn: &Connection) -> Result<Vec<Note>, StoreError> {
    let mut st = conn.prepare_cached(
        "SELECT id, dataplane, action, detail FROM notes_outbox ORDER BY id LIMIT ?1",
    )?;
    let rows = st.query_map([LEFTOVERS as i64], |r| {
        Ok(Note::new(r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn note(id: i64) -> Note {
        Note {
            id,
            dataplane: "dp".into(),
            action: "chain.gap".into(),
            detail: "{}".into(),
            again: false,
        }
    }

    #[test]
    fn what_was_taken_is_read_again_marked_and_forgotten_once_gone() {
        let mut w = Waiting::default();
        assert!(w.read(false), "at first, an earlier control's notes may be there");
        assert!(w.seen(vec![]).is_empty());
        assert!(!w.read(false) && w.read(true), "known empty: read only when told to");
        // Taken from an ingest: read until cleared.
        w.take(vec![note(1), note(2)]);
        assert!(w.read(false));
        w.cleared(&[1], true);
        // 2's clear failed, or its audit write did: read again, already announced.
        let again: Vec<(i64, bool)> =
            w.seen(vec![note(2), note(3)]).iter().map(|n| (n.id, n.again)).collect();
        assert_eq!(again, [(2, true), (3, false)]);
        // 3 was announced on that read: not again.
        assert_eq!(w.seen(vec![note(3)]).iter().map(|n| n.again).collect::<Vec<_>>(), [true]);
        // A clear whose answer was lost: nothing there any more, and nothing taken is kept.
        w.cleared(&[3], false);
        assert!(w.read(false));
        assert!(w.seen(vec![]).is_empty());
        assert!(!w.read(false), "{w:?}");
    }
}
