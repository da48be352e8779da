//! What ingests said, written from the record store's outbox ([`crate::outbox`]) to control's
//! chain, the audit log (ARCHITECTURE.md, "Evidence"): discoveries, and breaks of a data
//! plane's chain, which are also raised as alerts (the log, the live tail, syslog). Called
//! with the record store locked, after each batch, before verification takes its snapshots
//! and when control starts, so that verification never sees a gap stored without the note
//! that explains it once control has had the chance to write it.

use std::collections::HashSet;
use std::sync::PoisonError;

use serde_json::Value;

use crate::outbox::{DISCOVERY, Note};
use crate::records::RecordStore;
use crate::state::AppState;

/// Writes what `flows` (the record store, locked by the caller) has waiting in its outbox to
/// the audit log, clears what was written, then announces it. A note left behind by an
/// earlier control, or whose audit write failed, is written at most once (`audit_once`): it
/// may be there already.
pub fn drain(state: &AppState, flows: &mut dyn RecordStore) {
    let fresh = flows.take_notes();
    let left = flows.leftover_notes(crate::recordings::now_ms()).unwrap_or_else(|e| {
        tracing::error!("reading the record store's outbox: {e}");
        Vec::new()
    });
    if fresh.is_empty() && left.is_empty() {
        return;
    }
    let ours: HashSet<i64> = fresh.iter().map(|n| n.id).collect();
    let left: Vec<Note> = left.into_iter().filter(|n| !ours.contains(&n.id)).collect();
    let mut written: Vec<&Note> = Vec::with_capacity(fresh.len() + left.len());
    {
        let mut rules = state.rules.lock().unwrap_or_else(PoisonError::into_inner);
        let each = left.iter().map(|n| (n, true)).chain(fresh.iter().map(|n| (n, false)));
        for (n, again) in each {
            let who = format!("dataplane:{}", n.dataplane);
            let done = if again {
                rules.audit_once(&who, &n.action, &n.detail)
            } else {
                rules.audit(&who, &n.action, &n.detail, None)
            };
            match done {
                Ok(()) => written.push(n),
                Err(e) => tracing::error!(
                    dataplane = %n.dataplane,
                    "writing {} to the audit log (kept in the outbox): {e}",
                    n.action
                ),
            }
        }
    }
    let ids: Vec<i64> = written.iter().map(|n| n.id).collect();
    if let Err(e) = flows.clear_notes(&ids) {
        tracing::error!("clearing the record store's outbox (written again at most once): {e}");
    }
    for n in written {
        announce(state, n);
    }
}

/// Says a note written to the audit log to those listening: a discovery as the record it is,
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
