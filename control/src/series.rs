//! Counts per minute for the console's charts (ARCHITECTURE.md, "The console"): flow and
//! request records, blocked ones, and requests with DLP findings. An ingest adds its rows'
//! counts to their minutes in the same transaction, so a chart over a day reads at most
//! 1,440 rows however many records the store holds. Retention by age drops the minutes it
//! drops records of; retention by count leaves them (a chart shows what passed).

use rusqlite::{Transaction, params};
use serde::Serialize;

use crate::record::{RecordKind, Row};
use crate::store::{FlowStore, StoreError};

/// The table. A store from before it gets it filled from its records at first start.
pub(crate) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS series (
    minute INTEGER PRIMARY KEY,
    flows INTEGER NOT NULL DEFAULT 0,
    requests INTEGER NOT NULL DEFAULT 0,
    blocked INTEGER NOT NULL DEFAULT 0,
    findings INTEGER NOT NULL DEFAULT 0
);
";

/// One minute's counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Flow records.
    pub flows: u64,
    /// Request records.
    pub requests: u64,
    /// Records of either kind whose verdict is `block`.
    pub blocked: u64,
    /// Request records with at least one DLP finding.
    pub findings: u64,
}

/// The counts of one ingest, per minute (a batch spans few minutes: a short list).
#[derive(Debug, Default)]
pub(crate) struct Tally {
    minutes: Vec<(i64, Counts)>,
}

impl Tally {
    /// Counts a newly stored row.
    pub(crate) fn add(&mut self, r: &Row<'_>) {
        let minute = i64::try_from(r.ts_ms / 60_000).unwrap_or(i64::MAX);
        let at = match self.minutes.iter().position(|(m, _)| *m == minute) {
            Some(p) => p,
            None => {
                self.minutes.push((minute, Counts::default()));
                self.minutes.len() - 1
            }
        };
        let c = &mut self.minutes[at].1;
        match r.kind {
            RecordKind::Flow => c.flows += 1,
            RecordKind::Request => {
                c.requests += 1;
                c.findings += u64::from(!r.findings.is_empty());
            }
            _ => return,
        }
        c.blocked += u64::from(r.verdict.as_deref() == Some("block"));
    }

    /// The counts by minute.
    pub(crate) fn into_minutes(self) -> Vec<(i64, Counts)> {
        self.minutes
    }

    /// Adds the counts to their minutes.
    pub(crate) fn write(self, tx: &Transaction<'_>) -> Result<(), StoreError> {
        let mut up = tx.prepare_cached(
            "INSERT INTO series (minute, flows, requests, blocked, findings)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (minute) DO UPDATE SET flows = flows + excluded.flows,
               requests = requests + excluded.requests, blocked = blocked + excluded.blocked,
               findings = findings + excluded.findings",
        )?;
        for (m, c) in self.minutes {
            up.execute(params![m, i(c.flows), i(c.requests), i(c.blocked), i(c.findings)])?;
        }
        Ok(())
    }
}

fn i(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Fills the table from the records of a store that had none (one pass over both tables;
/// records without a verdict count as not blocked). Returns true when it did.
pub(crate) fn migrate(conn: &mut rusqlite::Connection) -> Result<bool, StoreError> {
    let has: bool = conn.query_row("SELECT EXISTS (SELECT 1 FROM series)", [], |r| r.get(0))?;
    let records: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM flows) OR EXISTS (SELECT 1 FROM requests)",
        [],
        |r| r.get(0),
    )?;
    if has || !records {
        return Ok(false);
    }
    let tx = conn.transaction()?;
    tx.execute_batch(
        "INSERT INTO series (minute, flows, blocked)
           SELECT ts_ms / 60000, COUNT(*), COALESCE(SUM(verdict = 'block'), 0)
           FROM flows GROUP BY 1;
         INSERT INTO series (minute, requests, blocked, findings)
           SELECT ts_ms / 60000, COUNT(*), COALESCE(SUM(verdict = 'block'), 0),
                  COALESCE(SUM(detectors IS NOT NULL AND detectors != ''), 0)
           FROM requests GROUP BY 1
         ON CONFLICT (minute) DO UPDATE SET requests = excluded.requests,
           blocked = blocked + excluded.blocked, findings = excluded.findings;",
    )?;
    tx.commit()?;
    Ok(true)
}

/// Drops the minutes before `older_than_ms` (retention by age).
pub(crate) fn prune(tx: &Transaction<'_>, older_than_ms: u64) -> Result<(), StoreError> {
    tx.execute("DELETE FROM series WHERE minute < ?1", [i(older_than_ms / 60_000)])?;
    Ok(())
}

/// The buckets of a chart: `step` minutes from `first` to `last` (minutes since the epoch).
pub(crate) struct Buckets {
    pub(crate) first: u64,
    pub(crate) last: u64,
    step: u64,
    out: Vec<(u64, Counts)>,
}

impl Buckets {
    /// Buckets of `step_min` minutes from `since_ms` to `until_ms`, at most 2,000 (a longer
    /// span gets a longer step).
    pub(crate) fn new(since_ms: u64, until_ms: u64, step_min: u64) -> Buckets {
        let (since_min, last) = (since_ms / 60_000, until_ms / 60_000);
        let step = step_min.max(1).max(last.saturating_sub(since_min) / 2000 + 1);
        let first = since_min / step * step;
        let out = (first..=last)
            .step_by(usize::try_from(step).unwrap_or(usize::MAX))
            .map(|m| (m * 60_000, Counts::default()))
            .collect();
        Buckets { first, last, step, out }
    }

    /// Adds minute `m`'s counts to its bucket.
    pub(crate) fn add(&mut self, m: u64, c: Counts) {
        let Some(slot) = m
            .checked_sub(self.first)
            .and_then(|d| usize::try_from(d / self.step).ok())
            .and_then(|k| self.out.get_mut(k))
        else {
            return;
        };
        slot.1.flows += c.flows;
        slot.1.requests += c.requests;
        slot.1.blocked += c.blocked;
        slot.1.findings += c.findings;
    }

    /// The buckets, oldest first.
    pub(crate) fn into_vec(self) -> Vec<(u64, Counts)> {
        self.out
    }
}

impl FlowStore {
    /// Counts in buckets of `step_min` minutes from `since_ms` to `until_ms`, oldest first,
    /// as (bucket start in Unix ms, counts); every bucket is there, empty ones with zeros. At
    /// most 2,000 buckets: a longer span gets a longer step.
    pub fn series(
        &self,
        since_ms: u64,
        until_ms: u64,
        step_min: u64,
    ) -> Result<Vec<(u64, Counts)>, StoreError> {
        let mut b = Buckets::new(since_ms, until_ms, step_min);
        let mut stmt = self.conn().prepare_cached(
            "SELECT minute, flows, requests, blocked, findings FROM series
             WHERE minute >= ?1 AND minute <= ?2",
        )?;
        let rows = stmt.query_map([i(b.first), i(b.last)], |r| {
            let n = |k| r.get::<_, i64>(k).map(|v| u64::try_from(v).unwrap_or(0));
            Ok((n(0)?, Counts { flows: n(1)?, requests: n(2)?, blocked: n(3)?, findings: n(4)? }))
        })?;
        for row in rows {
            let (m, c) = row?;
            b.add(m, c);
        }
        Ok(b.into_vec())
    }
}

impl FlowStore {
    /// The record of `kind` with row id `id` (the console's detail page).
    pub fn record(
        &self,
        kind: crate::store::Kind,
        id: i64,
    ) -> Result<Option<serde_json::Value>, StoreError> {
        let sql = format!("SELECT record FROM {} WHERE id = ?1", kind.table());
        let mut stmt = self.conn().prepare_cached(&sql)?;
        let mut rows = stmt.query([id])?;
        match rows.next()? {
            Some(r) => Ok(Some(serde_json::from_str(&r.get::<_, String>(0)?)?)),
            None => Ok(None),
        }
    }
}
