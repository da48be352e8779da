//! What ingests said, written from the record store's outbox ([`crate::outbox`]) to control's
//! chain, the audit log (ARCHITECTURE.md, "Evidence"): discoveries, and breaks of a data
//! plane's chain, which are also raised as alerts (the log, the live tail, syslog). Called
//! with the record store locked, after each batch, before verification takes its snapshots
//! and when control starts, so that verification never sees a gap stored without the note
//! that explains it once control has had the chance to write it.

use std::sync::PoisonError;

use serde_json::Value;

use crate::outbox::{DISCOVERY, Note};
use crate::records::RecordStore;
use crate::state::AppState;

/// Writes what `flows` (the record store, locked by the caller) has waiting in its outbox to
/// the audit log and clears what was written: the last ingests' notes, then any left behind
/// that this control knows of. Each note is announced once by this control, when it first
/// takes it, whether or not its write succeeded (an alert must not wait for the audit log).
pub fn drain(state: &AppState, flows: &mut dyn RecordStore) {
    drain_with(state, flows, false);
}

/// [`drain`], reading the outbox whatever this control knows of it: at start, and before
/// verification or an export takes its snapshots (a control that shared the store, or ran
/// before, may have left notes there).
pub fn drain_all(state: &AppState, flows: &mut dyn RecordStore) {
    drain_with(state, flows, true);
}

fn drain_with(state: &AppState, flows: &mut dyn RecordStore, all: bool) {
    let fresh = flows.take_notes();
    if !fresh.is_empty() {
        write(state, flows, &fresh, false);
        fresh.iter().for_each(|n| announce(state, n));
    }
    let left = flows.leftover_notes(all).unwrap_or_else(|e| {
        tracing::error!("reading the record store's outbox: {e}");
        Vec::new()
    });
    if !left.is_empty() {
        tracing::warn!(notes = left.len(), "writing notes left in the record store's outbox");
        write(state, flows, &left, true);
        left.iter().filter(|n| !n.again).for_each(|n| announce(state, n));
    }
}

/// Writes `notes` to the audit log (`once`: unless there already) and clears those written
/// from the outbox.
fn write(state: &AppState, flows: &mut dyn RecordStore, notes: &[Note], once: bool) {
    let mut written = Vec::with_capacity(notes.len());
    {
        let mut rules = state.rules.lock().unwrap_or_else(PoisonError::into_inner);
        for n in notes {
            let who = format!("dataplane:{}", n.dataplane);
            let done = if once {
                rules.audit_once(&who, &n.action, &n.detail)
            } else {
                rules.audit(&who, &n.action, &n.detail, None)
            };
            match done {
                Ok(()) => written.push(n.id),
                Err(e) => tracing::error!(
                    dataplane = %n.dataplane,
                    "writing {} to the audit log (kept in the outbox): {e}",
                    n.action
                ),
            }
        }
    }
    if let Err(e) = flows.clear_notes(&written) {
        tracing::error!("clearing the record store's outbox (written again at most once): {e}");
    }
}

/// Says a note to those listening: a discovery as the record it is,
/// a chain's break as an alert.
fn announce(state: &AppState, n: &Note) {
    let detail: Value = serde_json::from_str(&n.detail).unwrap_or(Value::Null);
    if n.action == DISCOVERY {
        tracing::info!(dataplane = %n.dataplane, discovery = %n.detail, "new AI client");
        state.hub.publish_value(detail);
        return;
    }
    tracing::error!(dataplane = %n.dataplane, action = %n.action, detail = %n.detail, "record chain");
    state.hub.publish_value(serde_json::json!({
        "type": "alert", "alert": n.action, "ts_ms": crate::recordings::now_ms(),
        "dataplane": n.dataplane, "detail": detail,
    }));
}

#[cfg(test)]
#[path = "notes_tests.rs"]
mod tests;
