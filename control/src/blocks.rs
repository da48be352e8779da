//! The block index of the record tables (ARCHITECTURE.md, "The record store"): per block of
//! 1,024 row ids, the values each low-cardinality filter column takes there, and the block's
//! span of record times. It replaces one index entry per record and column (about 1.5 µs of
//! SQLite's B-tree work each, BENCHMARKS.md, stop 31) with one entry per block and value.
//!
//! The index only ever over-approximates: a block's sets hold at least every value its rows
//! have (ingest merges into them in the same transaction, retention leaves them), so a query
//! that reads the rows of the blocks it names, with its whole filter applied to each row,
//! finds every match. Stale entries cost reads, never results.

use std::collections::HashMap;

use rusqlite::{Connection, Transaction, params};

use crate::store::{Kind, StoreError};

/// Row ids per block, as a shift.
pub(crate) const SHIFT: u32 = 10;

/// The block of row id `id`.
pub(crate) fn block_of(id: i64) -> i64 {
    id >> SHIFT
}

/// The first and last row id of `block`.
pub(crate) fn ids_of(block: i64) -> (i64, i64) {
    (block << SHIFT, ((block + 1) << SHIFT) - 1)
}

/// The filter columns the block index holds, with their codes on disk (never renumbered).
pub(crate) const COLUMNS: [(&str, i64); 6] =
    [("identity", 0), ("sni", 1), ("category", 2), ("verdict", 3), ("rule", 4), ("dataplane", 5)];

/// The block index's tables (for both record tables).
pub(crate) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS flows_terms (
    col INTEGER NOT NULL, value TEXT NOT NULL, block INTEGER NOT NULL,
    PRIMARY KEY (col, value, block)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS flows_terms_block ON flows_terms (block);
CREATE TABLE IF NOT EXISTS flows_spans (
    block INTEGER PRIMARY KEY, min_ts INTEGER NOT NULL, max_ts INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS requests_terms (
    col INTEGER NOT NULL, value TEXT NOT NULL, block INTEGER NOT NULL,
    PRIMARY KEY (col, value, block)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS requests_terms_block ON requests_terms (block);
CREATE TABLE IF NOT EXISTS requests_spans (
    block INTEGER PRIMARY KEY, min_ts INTEGER NOT NULL, max_ts INTEGER NOT NULL
);
";

/// The per-row filter indexes the block index replaced (stores of earlier versions).
const REPLACED: [&str; 6] = ["identity", "sni", "category", "verdict", "rule", "user"];

/// What one ingest adds to the block index, written in its transaction.
#[derive(Debug, Default)]
pub(crate) struct Additions<'r> {
    /// (table, column code, block, value), deduplicated at write.
    terms: Vec<(Kind, i64, i64, &'r str)>,
    /// (table, block) → (first, last) record time.
    spans: HashMap<(Kind, i64), (i64, i64)>,
}

impl<'r> Additions<'r> {
    /// Row `id` of `kind`, stored at `ts`, with the filter columns' values in the order of
    /// [`COLUMNS`].
    pub(crate) fn add(&mut self, kind: Kind, id: i64, ts: i64, values: [Option<&'r str>; 6]) {
        let block = block_of(id);
        for ((_, code), v) in COLUMNS.iter().zip(values) {
            if let Some(v) = v {
                self.terms.push((kind, *code, block, v));
            }
        }
        let span = self.spans.entry((kind, block)).or_insert((ts, ts));
        span.0 = span.0.min(ts);
        span.1 = span.1.max(ts);
    }

    /// Writes what was added (merging into the blocks' existing sets and spans).
    pub(crate) fn write(mut self, tx: &Transaction<'_>) -> Result<(), StoreError> {
        self.terms
            .sort_unstable_by(|a, b| (a.0 as u8, a.1, a.2, a.3).cmp(&(b.0 as u8, b.1, b.2, b.3)));
        self.terms.dedup();
        for (kind, code, block, value) in &self.terms {
            let sql = format!(
                "INSERT OR IGNORE INTO {}_terms (col, value, block) VALUES (?1, ?2, ?3)",
                kind.table()
            );
            tx.prepare_cached(&sql)?.execute(params![code, value, block])?;
        }
        for ((kind, block), (lo, hi)) in &self.spans {
            let sql = format!(
                "INSERT INTO {}_spans (block, min_ts, max_ts) VALUES (?1, ?2, ?3)
                 ON CONFLICT (block) DO UPDATE SET min_ts = MIN(min_ts, excluded.min_ts),
                 max_ts = MAX(max_ts, excluded.max_ts)",
                kind.table()
            );
            tx.prepare_cached(&sql)?.execute(params![block, lo, hi])?;
        }
        Ok(())
    }
}

/// What a query asks of the block index: values of its columns, and a time window.
#[derive(Debug, Default)]
pub(crate) struct Ask<'a> {
    /// (column code, value): every one must be in a block's set.
    pub terms: Vec<(i64, &'a str)>,
    /// Records at or after this Unix ms.
    pub since_ms: Option<i64>,
    /// Records before this Unix ms.
    pub until_ms: Option<i64>,
    /// Rows after this id only (no block below its block is read).
    pub after_id: Option<i64>,
}

impl Ask<'_> {
    /// Whether the block index narrows anything for this query.
    pub(crate) fn narrows(&self) -> bool {
        !self.terms.is_empty() || self.since_ms.is_some() || self.until_ms.is_some()
    }
}

/// Up to `n` blocks at or below `top` that may hold rows of `kind` matching `ask`, newest
/// first.
pub(crate) fn candidates(
    conn: &Connection,
    kind: Kind,
    ask: &Ask<'_>,
    top: i64,
    n: usize,
) -> Result<Vec<i64>, StoreError> {
    let t = kind.table();
    let mut args: Vec<rusqlite::types::Value> = Vec::new();
    // Driven by the first term's blocks (or the spans), newest first, each other condition
    // a point lookup in the same block.
    let (mut sql, driver) = match ask.terms.first() {
        Some((code, value)) => {
            args.extend([(*code).into(), (*value).to_owned().into()]);
            (format!("SELECT d.block FROM {t}_terms d WHERE d.col = ? AND d.value = ?"), true)
        }
        None => (format!("SELECT d.block FROM {t}_spans d WHERE 1=1"), false),
    };
    sql.push_str(" AND d.block <= ?");
    args.push(top.into());
    if let Some(after) = ask.after_id {
        sql.push_str(" AND d.block >= ?");
        args.push(block_of(after).into());
    }
    for (code, value) in ask.terms.iter().skip(1) {
        sql.push_str(&format!(
            " AND EXISTS (SELECT 1 FROM {t}_terms o WHERE o.col = ? AND o.value = ? AND o.block = d.block)"
        ));
        args.extend([(*code).into(), (*value).to_owned().into()]);
    }
    if ask.since_ms.is_some() || ask.until_ms.is_some() {
        let (since, until) = (ask.since_ms.unwrap_or(i64::MIN), ask.until_ms.unwrap_or(i64::MAX));
        if driver {
            sql.push_str(&format!(
                " AND EXISTS (SELECT 1 FROM {t}_spans s WHERE s.block = d.block AND s.max_ts >= ? AND s.min_ts < ?)"
            ));
        } else {
            sql.push_str(" AND d.max_ts >= ? AND d.min_ts < ?");
        }
        args.extend([since.into(), until.into()]);
    }
    sql.push_str(" ORDER BY d.block DESC LIMIT ?");
    args.push(i64::try_from(n).unwrap_or(i64::MAX).into());
    let mut stmt = conn.prepare_cached(&sql)?;
    let blocks = stmt
        .query_map(rusqlite::params_from_iter(args.iter()), |r| r.get(0))?
        .collect::<Result<Vec<i64>, _>>()?;
    Ok(blocks)
}

/// Drops the block index's entries below the oldest stored row of each table (after
/// retention).
pub(crate) fn prune(tx: &Transaction<'_>) -> Result<(), StoreError> {
    for t in ["flows", "requests"] {
        let oldest: Option<i64> =
            tx.query_row(&format!("SELECT MIN(id) FROM {t}"), [], |r| r.get(0))?;
        let Some(oldest) = oldest else { continue };
        let below = block_of(oldest);
        tx.execute(&format!("DELETE FROM {t}_terms WHERE block < ?1"), [below])?;
        tx.execute(&format!("DELETE FROM {t}_spans WHERE block < ?1"), [below])?;
    }
    Ok(())
}

/// Builds the block index of a store written by an earlier version (its per-row filter
/// indexes present), then drops those indexes. Once, in one transaction.
pub(crate) fn migrate(conn: &mut Connection) -> Result<bool, StoreError> {
    let old: bool = conn
        .prepare("SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = 'flows_identity'")?
        .exists([])?;
    if !old {
        return Ok(false);
    }
    let tx = conn.transaction()?;
    for t in ["flows", "requests"] {
        for (col, code) in COLUMNS {
            tx.execute(
                &format!(
                    "INSERT OR IGNORE INTO {t}_terms (col, value, block)
                     SELECT DISTINCT ?1, {col}, id >> {SHIFT} FROM {t} WHERE {col} IS NOT NULL"
                ),
                [code],
            )?;
        }
        tx.execute(
            &format!(
                "INSERT INTO {t}_spans (block, min_ts, max_ts)
                 SELECT id >> {SHIFT}, MIN(ts_ms), MAX(ts_ms) FROM {t} WHERE true GROUP BY 1
                 ON CONFLICT (block) DO UPDATE SET min_ts = MIN(min_ts, excluded.min_ts),
                                                   max_ts = MAX(max_ts, excluded.max_ts)"
            ),
            [],
        )?;
        for col in REPLACED {
            tx.execute_batch(&format!("DROP INDEX IF EXISTS {t}_{col}"))?;
        }
    }
    tx.commit()?;
    Ok(true)
}

#[cfg(test)]
#[path = "blocks_tests.rs"]
mod tests;
