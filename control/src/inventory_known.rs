//! What the ingests know of the inventory without reading SQLite (ARCHITECTURE.md, "Apps and
//! discovery"): bounded, and cleared whenever the tables change under it.

use std::collections::BTreeSet;

use rusqlite::params;

use super::{Delta, Key, MAX_LISTED, Map, key_bytes, listed_bytes};
use crate::store::StoreError;

/// Most entries [`Known`] holds of each kind; past it, that kind starts again empty.
const MAX_KNOWN: usize = 250_000;
/// Most bytes of strings [`Known`] holds of rows (clients choose them: server names, user
/// agents, accounts); past it, the rows start again empty.
const MAX_KNOWN_BYTES: usize = 64 << 20;
/// How far behind a discovery's `last_ms` (read by retention only) may be written: a client
/// seen again within this of the last time written is not written again until retention
/// runs (which writes first what it knows) or this has passed.
const LAST_SEEN_SLACK_MS: u64 = 3_600_000;

/// What the ingests know of the inventory without reading SQLite: each known client's last
/// time written to its discovery (and seen since), and each row's destinations and accounts
/// as stored. A batch that adds nothing new to a known row only bumps its counters (one
/// UPDATE, where a row otherwise costs a read, a merge and an upsert). Cleared whenever the
/// tables change under it: retention, or an ingest whose transaction failed.
#[derive(Debug, Default)]
pub(crate) struct Known {
    /// host → client → (last_ms written, last seen).
    clients: Map<String, Map<String, (u64, u64)>>,
    clients_len: usize,
    rows: Map<Key, (BTreeSet<String>, BTreeSet<String>)>,
    rows_bytes: usize,
}

impl Known {
    /// Forgets everything.
    pub(crate) fn clear(&mut self) {
        self.clients.clear();
        self.clients_len = 0;
        self.rows.clear();
        self.rows_bytes = 0;
    }

    pub(crate) fn client_written(&mut self, host: &str, client: &str, ts: u64) {
        if self.clients_len >= MAX_KNOWN {
            self.clients.clear();
            self.clients_len = 0;
        }
        let of_host = self.clients.entry(host.to_owned()).or_default();
        let e = of_host.entry(client.to_owned()).or_insert_with(|| {
            self.clients_len += 1;
            (ts, ts)
        });
        *e = (e.0.max(ts), e.1.max(ts));
    }

    /// Whether the client's discovery has a `last_ms` recent enough for `ts` (then `ts` is
    /// remembered as seen).
    pub(crate) fn client_fresh(&mut self, host: &str, client: &str, ts: u64) -> bool {
        match self.clients.get_mut(host).and_then(|c| c.get_mut(client)) {
            Some((written, seen)) if ts <= written.saturating_add(LAST_SEEN_SLACK_MS) => {
                *seen = (*seen).max(ts);
                true
            }
            _ => false,
        }
    }

    /// The clients seen since their discovery's `last_ms` was written: host, client, seen.
    pub(crate) fn seen_since_written(&self) -> impl Iterator<Item = (&str, &str, u64)> {
        self.clients.iter().flat_map(|(host, clients)| {
            clients
                .iter()
                .filter(|(_, (written, seen))| seen > written)
                .map(move |(client, (_, seen))| (host.as_str(), client.as_str(), *seen))
        })
    }

    /// Writes the times clients were seen since their discovery's `last_ms` was written
    /// (before retention reads them).
    pub(crate) fn write_seen(&self, conn: &rusqlite::Connection) -> Result<(), StoreError> {
        let mut st = conn.prepare_cached(
            "UPDATE discoveries SET last_ms = MAX(last_ms, ?3) WHERE host = ?1 AND client = ?2",
        )?;
        for (host, clients) in &self.clients {
            for (client, (written, seen)) in clients {
                if seen > written {
                    st.execute(params![host, client, i64::try_from(*seen).unwrap_or(i64::MAX)])?;
                }
            }
        }
        Ok(())
    }

    /// Whether `d` adds nothing to the known row `key` but counts.
    pub(super) fn covers(&self, key: &Key, d: &Delta) -> bool {
        let within = |new: &BTreeSet<String>, held: &BTreeSet<String>| {
            held.len() >= MAX_LISTED || new.is_subset(held)
        };
        self.rows.get(key).is_some_and(|(dests, accs)| {
            within(&d.destinations, dests) && within(&d.accounts, accs)
        })
    }

    pub(super) fn row_written(
        &mut self,
        key: Key,
        dests: BTreeSet<String>,
        accs: BTreeSet<String>,
    ) {
        let cost = key_bytes(&key) + listed_bytes(&dests) + listed_bytes(&accs);
        if self.rows.len() >= MAX_KNOWN || self.rows_bytes + cost > MAX_KNOWN_BYTES {
            self.rows.clear();
            self.rows_bytes = 0;
        }
        // (A row written again is counted again: the budget errs toward clearing early.)
        self.rows_bytes += cost;
        self.rows.insert(key, (dests, accs));
    }
}
