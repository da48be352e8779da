//! The data planes' chains in the record store on PostgreSQL: the view evidence export and
//! verification read ([`EvidenceView`], on any connection to the store), and retention's
//! cuts, each chain cut at one position across both tables (as `chainstore.rs` does on
//! SQLite).

use std::collections::BTreeMap;
use std::path::Path;

use futures_util::StreamExt;
use sluice_audit::Link;
use tokio_postgres::types::ToSql;

use super::records::{PgRecordStore, head_of, link_of};
use super::records_read::{COLUMNS, recording_of};
use super::{Pg, big, wait};
use crate::chains::Head;
use crate::chainstore::{ChainRow, Columns, Cut, Due, Heads, decide_cuts, due_at};
use crate::recordings::Recording;
use crate::records::{ChainRanges, EvidenceView};
use crate::store::StoreError;

const TABLES: [&str; 2] = ["flows", "requests"];

fn u(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

impl PgRecordStore {
    pub(super) fn current_heads(&self) -> Result<Vec<(String, Head)>, StoreError> {
        let rows = wait(
            self.pg.client_ref().query("SELECT dataplane, epoch, n, link FROM chain_heads", &[]),
        )?;
        rows.iter().map(|r| Ok((r.try_get(0)?, head_of(r, 1)?))).collect()
    }

    /// Per chain: the highest position due by age, and by count; then each cut where the
    /// records agree (see `chainstore::cuts`).
    pub(super) fn cuts(&self, older_than_ms: u64, max_rows: u64) -> Result<Vec<Cut>, StoreError> {
        let mut at = Due::new();
        // The client is lent for these queries only: the cuts below ask again.
        let c = self.pg.client_ref();
        for t in TABLES {
            let threshold: i64 = wait(c.query_opt(
                &format!("SELECT id FROM {t} ORDER BY id DESC LIMIT 1 OFFSET $1"),
                &[&big(max_rows)],
            ))?
            .map(|r| r.try_get(0))
            .transpose()?
            .unwrap_or(0);
            for (criterion, by_age) in [("ts_ms < $1", true), ("id <= $1", false)] {
                let bound = if by_age { big(older_than_ms) } else { threshold };
                let rows = wait(c.query(
                    &format!(
                        "SELECT dataplane, ce, MAX(cn) FROM {t}
                         WHERE cn IS NOT NULL AND {criterion} GROUP BY dataplane, ce"
                    ),
                    &[&bound],
                ))?;
                for r in rows {
                    due_at(&mut at, (r.try_get(0)?, u(r.try_get(1)?)), u(r.try_get(2)?), by_age);
                }
            }
        }
        drop(c);
        decide_cuts(
            at,
            older_than_ms,
            |dp, epoch, n| self.row_at(dp, epoch, n),
            |dp, epoch| self.old_by_record(dp, epoch, older_than_ms),
        )
    }

    /// The highest position of a chain old by its column and by its record alike.
    fn old_by_record(
        &self,
        dataplane: &str,
        epoch: u64,
        older_than_ms: u64,
    ) -> Result<u64, StoreError> {
        let mut n = 0;
        for t in TABLES {
            let r = wait(self.pg.client_ref().query_one(
                &format!(
                    "SELECT MAX(cn) FROM {t} WHERE dataplane = $1 AND ce = $2 AND ts_ms < $3
                     AND sluice_record_ts(record) < $3"
                ),
                &[&dataplane, &big(epoch), &big(older_than_ms)],
            ))?;
            n = n.max(r.try_get::<_, Option<i64>>(0)?.map_or(0, u));
        }
        Ok(n)
    }

    /// The link and the record's own `ts_ms` of position `n` of a chain.
    fn row_at(
        &self,
        dataplane: &str,
        epoch: u64,
        n: u64,
    ) -> Result<Option<(Link, u64)>, StoreError> {
        for t in TABLES {
            let row = wait(self.pg.client_ref().query_opt(
                &format!(
                    "SELECT link, sluice_record_ts(record) FROM {t}
                     WHERE dataplane = $1 AND ce = $2 AND cn = $3"
                ),
                &[&dataplane, &big(epoch), &big(n)],
            ))?;
            if let Some(r) = row {
                return Ok(Some((
                    link_of(r.try_get(0)?),
                    r.try_get::<_, Option<i64>>(1)?.map_or(0, u),
                )));
            }
        }
        Ok(None)
    }

    /// Deletes chained rows at or before each cut, then unchained rows by age and count,
    /// and the counts, inventory rows and discoveries older than `older_than_ms`; one
    /// transaction.
    pub(super) fn prune_cut(
        &mut self,
        older_than_ms: u64,
        max_rows: u64,
        cuts: &[Cut],
    ) -> Result<u64, StoreError> {
        // What this control saw of clients since it last wrote their discoveries is written
        // first (their discoveries stay), and forgotten with the rows retention drops.
        let seen: Vec<(String, String, i64)> = self
            .known
            .seen_since_written()
            .map(|(h, c, t)| (h.to_owned(), c.to_owned(), big(t)))
            .collect();
        self.known.clear();
        let pending = &mut self.pending;
        let result = wait(async {
            let tx = self.pg.client().transaction().await?;
            super::active::fence(&tx).await?;
            // The inventory counts everything stored before records go.
            pending.write(&tx).await?;
            if !seen.is_empty() {
                let h: Vec<&str> = seen.iter().map(|s| s.0.as_str()).collect();
                let c: Vec<&str> = seen.iter().map(|s| s.1.as_str()).collect();
                let t: Vec<i64> = seen.iter().map(|s| s.2).collect();
                tx.execute(
                    "UPDATE discoveries d SET last_ms = GREATEST(d.last_ms, s.t)
                     FROM unnest($1::text[], $2::text[], $3::bigint[]) AS s(h, c, t)
                     WHERE d.host = s.h AND d.client = s.c",
                    &[&h, &c, &t],
                )
                .await?;
            }
            let mut n = 0;
            for c in cuts {
                for t in TABLES {
                    n += tx
                        .execute(
                            &format!(
                                "DELETE FROM {t} WHERE dataplane = $1 AND ce = $2 AND cn <= $3"
                            ),
                            &[&c.dataplane, &big(c.epoch), &big(c.n)],
                        )
                        .await?;
                }
            }
            for t in TABLES {
                n += tx
                    .execute(
                        &format!("DELETE FROM {t} WHERE cn IS NULL AND ts_ms < $1"),
                        &[&big(older_than_ms)],
                    )
                    .await?;
                n += tx
                    .execute(
                        &format!(
                            "DELETE FROM {t} WHERE cn IS NULL
                             AND id <= (SELECT id FROM {t} ORDER BY id DESC LIMIT 1 OFFSET $1)"
                        ),
                        &[&big(max_rows)],
                    )
                    .await?;
            }
            tx.execute("DELETE FROM series WHERE minute < $1", &[&big(older_than_ms / 60_000)])
                .await?;
            n += tx
                .execute("DELETE FROM inventory WHERE last_ms < $1", &[&big(older_than_ms)])
                .await?;
            n += tx
                .execute("DELETE FROM discoveries WHERE last_ms < $1", &[&big(older_than_ms)])
                .await?;
            super::records_inventory::mark(&tx).await?;
            tx.commit().await?;
            Ok(n)
        });
        if result.is_err() {
            self.pending.lost();
        }
        result
    }
}

/// A chain row from the columns `walk` reads.
fn chain_row(table: char, r: &tokio_postgres::Row) -> Result<ChainRow, StoreError> {
    Ok(ChainRow {
        table,
        id: r.try_get(0)?,
        n: u(r.try_get(1)?),
        link: link_of(r.try_get(2)?),
        record: r.try_get(3)?,
        columns: Columns {
            ts_ms: u(r.try_get(4)?),
            identity: r.try_get(5)?,
            user: r.try_get(6)?,
            src: r.try_get(7)?,
            sni: r.try_get(8)?,
            category: r.try_get(9)?,
            verdict: r.try_get(10)?,
            rule: r.try_get(11)?,
            detectors: r.try_get(12)?,
        },
    })
}

impl EvidenceView for Pg {
    fn hold_snapshot(&mut self) -> Result<(), StoreError> {
        wait(self.client_ref().batch_execute(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SELECT 1 FROM chain_heads LIMIT 1",
        ))?;
        // The second connection reads in the same snapshot (as pg_dump's workers do).
        let id: String =
            wait(self.client_ref().query_one("SELECT pg_export_snapshot()", &[]))?.try_get(0)?;
        let beside = self.another()?;
        wait(beside.client_ref().batch_execute(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT '{}'",
            id.replace('\'', "")
        )))?;
        self.beside = Some(Box::new(beside));
        Ok(())
    }

    fn heads(&self) -> Result<Heads, StoreError> {
        let c = self.client_ref();
        let mut out: Heads = BTreeMap::new();
        for t in TABLES {
            let rows = wait(c.query(
                &format!(
                    "SELECT DISTINCT ON (dataplane, ce) dataplane, ce, cn, link FROM {t}
                     WHERE cn IS NOT NULL ORDER BY dataplane, ce, cn DESC"
                ),
                &[],
            ))?;
            for r in rows {
                let k = (r.try_get::<_, String>(0)?, u(r.try_get(1)?));
                let v = (u(r.try_get(2)?), link_of(r.try_get(3)?));
                let e = out.entry(k).or_insert(v);
                if v.0 > e.0 {
                    *e = v;
                }
            }
        }
        for r in wait(c.query("SELECT dataplane, epoch, n, link FROM chain_heads", &[]))? {
            let h = head_of(&r, 1)?;
            out.insert((r.try_get(0)?, h.epoch), (h.n, h.link));
        }
        Ok(out)
    }

    fn walk(
        &self,
        dataplane: &str,
        epoch: u64,
        after: u64,
        f: &mut dyn FnMut(ChainRow),
    ) -> Result<(), StoreError> {
        let sql = |t: &str| {
            let detectors = if t == "requests" { "detectors" } else { "NULL::text" };
            format!(
                "SELECT id, cn, link, record, ts_ms, identity, \"user\", src, sni, category,
                        verdict, rule, {detectors}
                 FROM {t} WHERE dataplane = $1 AND ce = $2 AND cn > $3 ORDER BY id"
            )
        };
        // Each table streamed by row id on a connection of its own (the snapshot's second
        // one; without a snapshot, one made for the walk), the two merged by position.
        let made;
        let beside = match &self.beside {
            Some(b) => b,
            None => {
                made = self.another()?;
                &made
            }
        };
        let (epoch, after) = (big(epoch), big(after));
        let args: [&(dyn ToSql + Sync); 3] = [&dataplane, &epoch, &after];
        wait(async {
            let a = self.client_ref().query_raw(&sql("flows"), args).await?;
            let b = beside.client_ref().query_raw(&sql("requests"), args).await?;
            let read = |t: char| {
                move |r: Result<tokio_postgres::Row, tokio_postgres::Error>| {
                    std::future::ready(r.map_err(StoreError::from).and_then(|r| chain_row(t, &r)))
                }
            };
            let mut a = Box::pin(a.then(read('f')).peekable());
            let mut b = Box::pin(b.then(read('r')).peekable());
            loop {
                let take_a = match (a.as_mut().peek().await, b.as_mut().peek().await) {
                    (None, None) => break,
                    (Some(_), None) => true,
                    (None, Some(_)) => false,
                    (Some(Ok(x)), Some(Ok(y))) => x.n <= y.n,
                    (Some(Err(_)), _) => true,
                    (_, Some(Err(_))) => false,
                };
                let next = if take_a { a.next().await } else { b.next().await };
                if let Some(row) = next {
                    f(row?);
                }
            }
            Ok(())
        })
    }

    fn chain_ranges(&self, since_ms: i64, until_ms: i64) -> Result<ChainRanges, StoreError> {
        let mut ranges = BTreeMap::new();
        for t in TABLES {
            let rows = wait(self.client_ref().query(
                &format!(
                    "SELECT dataplane, ce, MIN(cn), MAX(cn) FROM {t}
                     WHERE ts_ms >= $1 AND ts_ms < $2 AND cn IS NOT NULL GROUP BY dataplane, ce"
                ),
                &[&since_ms, &until_ms],
            ))?;
            for r in rows {
                let e = ranges
                    .entry((r.try_get::<_, String>(0)?, u(r.try_get(1)?)))
                    .or_insert((u64::MAX, 0));
                e.0 = e.0.min(u(r.try_get(2)?));
                e.1 = e.1.max(u(r.try_get(3)?));
            }
        }
        Ok(ranges)
    }

    fn each_record(
        &self,
        since_ms: i64,
        until_ms: i64,
        f: &mut dyn FnMut(&str) -> std::io::Result<()>,
    ) -> Result<(), StoreError> {
        let c = self.client_ref();
        wait(async {
            for t in TABLES {
                let args: [&(dyn ToSql + Sync); 2] = [&since_ms, &until_ms];
                let rows = c
                    .query_raw(
                        &format!(
                            "SELECT record FROM {t} WHERE ts_ms >= $1 AND ts_ms < $2 ORDER BY id"
                        ),
                        args,
                    )
                    .await?;
                let mut rows = Box::pin(rows);
                while let Some(r) = rows.next().await {
                    f(r?.try_get::<_, &str>(0)?)?;
                }
            }
            Ok(())
        })
    }

    fn each_recording(
        &self,
        _dir: Option<&Path>,
        since_ms: i64,
        until_ms: i64,
        f: &mut dyn FnMut(&Recording, &str) -> std::io::Result<()>,
    ) -> Result<(), StoreError> {
        let c = self.client_ref();
        wait(async {
            let args: [&(dyn ToSql + Sync); 2] = [&since_ms, &until_ms];
            let rows = c
                .query_raw(
                    &format!(
                        "SELECT {COLUMNS}, sealed FROM recordings WHERE ts_ms >= $1 AND ts_ms < $2
                         ORDER BY ts_ms, id"
                    ),
                    args,
                )
                .await?;
            let mut rows = Box::pin(rows);
            while let Some(r) = rows.next().await {
                let r = r?;
                f(&recording_of(&r)?, r.try_get::<_, &str>(13)?)?;
            }
            Ok::<_, StoreError>(())
        })?;
        Ok(())
    }
}
