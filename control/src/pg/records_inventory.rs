//! The inventory on PostgreSQL: discoveries are made in the ingest of their record; counts
//! wait in memory and are written every 30 s (or when many are pending, or before the
//! inventory is read or retention runs) with a mark of the records they count, as on SQLite
//! (`inventory_pending.rs`; ARCHITECTURE.md, "The stores"). One control is active per store,
//! so one process writes the counts; what is pending when it stops is counted again from the
//! records after the mark by the next to write (itself after a failed transaction, or the
//! standby that takes over).

use std::collections::{BTreeMap, HashSet};
use std::time::Instant;

use serde_json::Value;
use tokio_postgres::Transaction;

use super::big;
use crate::inventory::{Deltas, Known, MAX_UNKNOWN_PER_DAY, Seen, discovery, seen};
use crate::inventory_pending::{MAX_PENDING, MAX_PENDING_BYTES, WRITE_EVERY};
use crate::record::Row;
use crate::store::StoreError;

/// Records read at a time when counting again from the mark.
const CATCH_UP_CHUNK: i64 = 5_000;

/// The counts not yet written.
#[derive(Debug, Default)]
pub(super) struct Pending {
    deltas: Deltas,
    since: Option<Instant>,
    /// The counts match the tables and the mark (false at start, and after a transaction
    /// that may have written part of them failed).
    synced: bool,
}

impl Pending {
    /// Forgets what is pending: the next transaction counts again from the mark.
    pub(super) fn lost(&mut self) {
        *self = Pending::default();
    }

    /// Whether the counts are due to be written.
    pub(super) fn due(&self, now: Instant) -> bool {
        self.deltas.len() >= MAX_PENDING
            || self.deltas.bytes >= MAX_PENDING_BYTES
            || self.since.is_some_and(|s| now.duration_since(s) >= WRITE_EVERY)
    }

    /// Counts `fresh` in and makes their discoveries, within `tx` (which stores them).
    pub(super) async fn observe(
        &mut self,
        tx: &Transaction<'_>,
        dataplane: &str,
        fresh: &[&Row<'_>],
        known: &mut Known,
    ) -> Result<Vec<Value>, StoreError> {
        let found = observe(tx, dataplane, fresh, known, &mut self.deltas).await?;
        if !self.deltas.is_empty() {
            self.since.get_or_insert_with(Instant::now);
        }
        Ok(found)
    }

    /// Makes the counts trustworthy within `tx`, counting again what the mark does not
    /// cover; call it before `tx` stores records.
    pub(super) async fn sync(&mut self, tx: &Transaction<'_>) -> Result<(), StoreError> {
        if !self.synced {
            self.deltas = Deltas::default();
            self.since = None;
            catch_up(tx).await?;
            mark(tx).await?;
            self.synced = true;
        }
        Ok(())
    }

    /// Writes what is pending within `tx` and moves the mark to the records `tx` holds.
    pub(super) async fn write(&mut self, tx: &Transaction<'_>) -> Result<(), StoreError> {
        self.sync(tx).await?;
        self.since = None;
        upsert(tx, std::mem::take(&mut self.deltas)).await?;
        mark(tx).await
    }
}

/// Moves the mark to the last record of each table.
pub(super) async fn mark(tx: &Transaction<'_>) -> Result<(), StoreError> {
    tx.batch_execute(
        "INSERT INTO inventory_applied (tbl, upto)
             SELECT 'flows', COALESCE(MAX(id), 0) FROM flows
         ON CONFLICT (tbl) DO UPDATE SET upto = EXCLUDED.upto;
         INSERT INTO inventory_applied (tbl, upto)
             SELECT 'requests', COALESCE(MAX(id), 0) FROM requests
         ON CONFLICT (tbl) DO UPDATE SET upto = EXCLUDED.upto;",
    )
    .await?;
    Ok(())
}

/// Counts the records stored after the mark into the rows (no discoveries: those were made
/// with their records).
async fn catch_up(tx: &Transaction<'_>) -> Result<(), StoreError> {
    for t in ["flows", "requests"] {
        let mut after: i64 =
            match tx.query_opt("SELECT upto FROM inventory_applied WHERE tbl = $1", &[&t]).await? {
                Some(r) => r.try_get(0)?,
                None => 0,
            };
        let sql =
            format!("SELECT id, dataplane, record FROM {t} WHERE id > $1 ORDER BY id LIMIT $2");
        loop {
            let page = tx.query(&sql, &[&after, &CATCH_UP_CHUNK]).await?;
            let Some(last) = page.last() else { break };
            after = last.try_get(0)?;
            let texts: Vec<(String, String)> = page
                .iter()
                .map(|r| Ok((r.try_get(1)?, r.try_get(2)?)))
                .collect::<Result<_, StoreError>>()?;
            // As ingest stored them: a NUL in a field, which PostgreSQL's text cannot hold,
            // as U+FFFD.
            let rows: Vec<Row<'_>> = texts
                .iter()
                .filter_map(|(dp, text)| Row::read(text, dp))
                .map(|r| if super::scrub::has_nul(&r) { super::scrub::scrub(&r) } else { r })
                .collect();
            let mut deltas = Deltas::default();
            for r in &rows {
                if let Some(a) = r.app.as_deref()
                    && let Some(s) = seen(r, a)
                {
                    deltas.add(&s, r, a);
                }
            }
            upsert(tx, deltas).await?;
        }
    }
    Ok(())
}

/// A client first seen in this batch: its first record's time and discovery.
struct Candidate {
    /// Its place in the batch (discoveries are said in the records' order).
    order: usize,
    ts: i64,
    record: Value,
    unknown: bool,
}

/// Counts the new rows into `deltas` and makes the discoveries of clients seen for the
/// first time (unknown ones at most so many a day per host); returns those made.
pub(super) async fn observe(
    tx: &Transaction<'_>,
    dataplane: &str,
    fresh: &[&Row<'_>],
    known: &mut Known,
    deltas: &mut Deltas,
) -> Result<Vec<Value>, StoreError> {
    let mut candidates: BTreeMap<(String, String), Candidate> = BTreeMap::new();
    for (k, r) in fresh.iter().enumerate() {
        let Some(a) = r.app.as_deref() else { continue };
        let Some(s): Option<Seen<'_>> = seen(r, a) else { continue };
        if let Some(client) = s.client.as_deref()
            && !known.client_fresh(s.host, client, r.ts_ms)
        {
            let key = (s.host.to_owned(), client.to_owned());
            if let std::collections::btree_map::Entry::Vacant(e) = candidates.entry(key) {
                let record = discovery(dataplane, r, a, &s);
                let order = k;
                e.insert(Candidate {
                    order,
                    ts: big(r.ts_ms),
                    record,
                    unknown: s.app == "unknown",
                });
            }
        }
        deltas.add(&s, r, a);
    }
    discover(tx, candidates, known).await
}

/// Adds `deltas` to the inventory's rows (in sorted order: two transactions lock shared rows
/// in one order).
async fn upsert(tx: &Transaction<'_>, deltas: Deltas) -> Result<(), StoreError> {
    let mut rows: Vec<_> = deltas.into_rows().collect();
    if rows.is_empty() {
        return Ok(());
    }
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    let key = |f: fn(&crate::inventory::Key) -> &String| -> Vec<&str> {
        rows.iter().map(|(k, _)| f(k).as_str()).collect()
    };
    let num = |f: fn(&crate::inventory::Delta) -> u64| -> Vec<i64> {
        rows.iter().map(|(_, d)| big(f(d))).collect()
    };
    let list = |f: fn(&crate::inventory::Delta) -> &std::collections::BTreeSet<String>| {
        rows.iter()
            .map(|(_, d)| serde_json::to_string(f(d)).unwrap_or_else(|_| "[]".into()))
            .collect::<Vec<String>>()
    };
    let a = (key(|k| &k.0), key(|k| &k.1), key(|k| &k.2), key(|k| &k.3), key(|k| &k.4));
    let b = (
        num(|d| d.first),
        num(|d| d.last),
        num(|d| d.flows),
        num(|d| d.requests),
        num(|d| d.bytes),
    );
    let c = (list(|d| &d.destinations), list(|d| &d.accounts));
    tx.execute(
        "INSERT INTO inventory AS i (host, identity, \"user\", app, version, first_ms, last_ms,
                                     flows, requests, bytes, destinations, accounts)
         SELECT h, id, u, a, v, f, l, fl, rq, b,
                ARRAY(SELECT json_array_elements_text(d::json)),
                ARRAY(SELECT json_array_elements_text(ac::json))
         FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bigint[],
                     $7::bigint[], $8::bigint[], $9::bigint[], $10::bigint[], $11::text[],
                     $12::text[]) WITH ORDINALITY AS t(h, id, u, a, v, f, l, fl, rq, b, d, ac, ord)
         ORDER BY ord
         ON CONFLICT (host, identity, \"user\", app, version) DO UPDATE SET
           first_ms = LEAST(i.first_ms, EXCLUDED.first_ms),
           last_ms = GREATEST(i.last_ms, EXCLUDED.last_ms),
           flows = i.flows + EXCLUDED.flows, requests = i.requests + EXCLUDED.requests,
           bytes = i.bytes + EXCLUDED.bytes,
           destinations = CASE WHEN EXCLUDED.destinations <@ i.destinations THEN i.destinations
                               ELSE sluice_merge(i.destinations, EXCLUDED.destinations) END,
           accounts = CASE WHEN EXCLUDED.accounts <@ i.accounts THEN i.accounts
                           ELSE sluice_merge(i.accounts, EXCLUDED.accounts) END",
        &[&a.0, &a.1, &a.2, &a.3, &a.4, &b.0, &b.1, &b.2, &b.3, &b.4, &c.0, &c.1],
    )
    .await?;
    Ok(())
}

/// The discoveries of `candidates`: a client known already is seen again (retention keeps
/// it); the others are stored, unknown ones while their host has had fewer than
/// [`MAX_UNKNOWN_PER_DAY`] that day. Returns the records stored, by (host, client).
async fn discover(
    tx: &Transaction<'_>,
    mut candidates: BTreeMap<(String, String), Candidate>,
    known: &mut Known,
) -> Result<Vec<Value>, StoreError> {
    if candidates.is_empty() {
        return Ok(Vec::new());
    }
    let hosts: Vec<&str> = candidates.keys().map(|k| k.0.as_str()).collect();
    let clients: Vec<&str> = candidates.keys().map(|k| k.1.as_str()).collect();
    let ts: Vec<i64> = candidates.values().map(|c| c.ts).collect();
    let seen_again = tx
        .query(
            "UPDATE discoveries d SET last_ms = GREATEST(d.last_ms, c.ts)
             FROM unnest($1::text[], $2::text[], $3::bigint[]) AS c(host, client, ts)
             WHERE d.host = c.host AND d.client = c.client RETURNING d.host, d.client",
            &[&hosts, &clients, &ts],
        )
        .await?;
    for r in seen_again {
        let key: (String, String) = (r.try_get(0)?, r.try_get(1)?);
        if let Some(c) = candidates.remove(&key) {
            known.client_written(&key.0, &key.1, c.ts.unsigned_abs());
        }
    }
    // Unknown clients discovered per host in the day before its first new one.
    let mut since: BTreeMap<&str, i64> = BTreeMap::new();
    for ((host, _), c) in candidates.iter().filter(|(_, c)| c.unknown) {
        let t = since.entry(host.as_str()).or_insert(c.ts);
        *t = (*t).min(c.ts);
    }
    let mut today: BTreeMap<String, i64> = BTreeMap::new();
    if !since.is_empty() {
        let h: Vec<&str> = since.keys().copied().collect();
        let t: Vec<i64> = since.values().map(|t| t.saturating_sub(86_400_000)).collect();
        for r in tx
            .query(
                "SELECT c.host, COUNT(d.id) FROM unnest($1::text[], $2::bigint[]) AS c(host, since)
                 LEFT JOIN discoveries d ON d.host = c.host AND d.client LIKE 'unknown:%'
                                        AND d.ts_ms >= c.since
                 GROUP BY c.host",
                &[&h, &t],
            )
            .await?
        {
            today.insert(r.try_get(0)?, r.try_get(1)?);
        }
    }
    let mut new: Vec<((String, String), Candidate)> = Vec::new();
    for (key, c) in candidates {
        if c.unknown {
            let n = today.entry(key.0.clone()).or_insert(0);
            if *n >= MAX_UNKNOWN_PER_DAY {
                continue;
            }
            *n += 1;
        }
        new.push((key, c));
    }
    if new.is_empty() {
        return Ok(Vec::new());
    }
    let hosts: Vec<&str> = new.iter().map(|(k, _)| k.0.as_str()).collect();
    let clients: Vec<&str> = new.iter().map(|(k, _)| k.1.as_str()).collect();
    let ts: Vec<i64> = new.iter().map(|(_, c)| c.ts).collect();
    let records: Vec<String> = new.iter().map(|(_, c)| c.record.to_string()).collect();
    // Another control may have discovered one meanwhile: that one is not ours to say.
    let stored: HashSet<(String, String)> = tx
        .query(
            "INSERT INTO discoveries (ts_ms, last_ms, host, client, record)
             SELECT t, t, h, c, r FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[])
                  WITH ORDINALITY AS n(h, c, t, r, ord)
             ORDER BY ord
             ON CONFLICT (host, client) DO NOTHING RETURNING host, client",
            &[&hosts, &clients, &ts, &records],
        )
        .await?
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect::<Result<_, StoreError>>()?;
    let mut found: Vec<Candidate> = Vec::new();
    for (k, c) in new {
        if stored.contains(&k) {
            known.client_written(&k.0, &k.1, c.ts.unsigned_abs());
            found.push(c);
        }
    }
    found.sort_by_key(|c| c.order);
    Ok(found.into_iter().map(|c| c.record).collect())
}
