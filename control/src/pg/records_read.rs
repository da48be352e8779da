//! Reads of the record store on PostgreSQL: record queries, usage, the console's counts, the
//! inventory and discoveries, recordings (their sealed bytes in their rows: a shared store
//! has no local files). `records.rs` has the schema and ingestion.

use serde_json::Value;
use tokio_postgres::Transaction;
use tokio_postgres::types::ToSql;

use super::records::PgRecordStore;
use super::{big, wait};
use crate::inventory::{InventoryFilter, InventoryRow};
use crate::record::Row;
use crate::recordings::{Recording, RecordingFilter};
use crate::series::{Buckets, Counts};
use crate::store::{FlowFilter, Kind, Page, StoreError, UsageBy, UsageRow, like_item};

type Params = Vec<Box<dyn ToSql + Sync + Send>>;

fn refs(p: &Params) -> Vec<&(dyn ToSql + Sync)> {
    p.iter().map(|b| &**b as &(dyn ToSql + Sync)).collect()
}

fn u(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

impl PgRecordStore {
    pub(super) fn query_rows(
        &self,
        kind: Kind,
        f: &FlowFilter,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Page, StoreError> {
        if f.detector.is_some() && kind == Kind::Flows {
            return Ok(Page { records: Vec::new(), ids: Vec::new(), next: None });
        }
        let mut sql = format!("SELECT id, record FROM {} WHERE true", kind.table());
        let mut args: Params = Vec::new();
        let mut add = |clause: &str, v: Box<dyn ToSql + Sync + Send>| {
            args.push(v);
            sql.push_str(&clause.replace('?', &format!("${}", args.len())));
        };
        if let Some(t) = f.since_ms {
            add(" AND ts_ms >= ?", Box::new(big(t)));
        }
        if let Some(t) = f.until_ms {
            add(" AND ts_ms < ?", Box::new(big(t)));
        }
        for (col, v) in [
            ("identity", &f.identity),
            ("\"user\"", &f.user),
            ("src", &f.src),
            ("sni", &f.sni),
            ("category", &f.category),
            ("verdict", &f.verdict),
            ("rule", &f.rule),
            ("dataplane", &f.dataplane),
            ("app", &f.app),
            ("operation", &f.operation),
        ] {
            if let Some(v) = v {
                add(&format!(" AND {col} = ?"), Box::new(v.clone()));
            }
        }
        if let Some(d) = &f.detector {
            add(" AND detectors LIKE ? ESCAPE '\\'", Box::new(like_item(d)));
        }
        if let Some(a) = f.after_id {
            add(" AND id > ?", Box::new(a));
        }
        if let Some(b) = before {
            add(" AND id < ?", Box::new(b));
        }
        let limit = limit.clamp(1, 10_000);
        add(" ORDER BY id DESC LIMIT ?", Box::new(i64::try_from(limit + 1).unwrap_or(i64::MAX)));
        let rows = wait(self.pg.client_ref().query(&sql, &refs(&args)))?;
        let more = rows.len() > limit;
        let mut records = Vec::with_capacity(rows.len().min(limit));
        let mut ids = Vec::with_capacity(rows.len().min(limit));
        for r in rows.iter().take(limit) {
            records.push(serde_json::from_str(r.try_get::<_, &str>(1)?)?);
            ids.push(r.try_get(0)?);
        }
        let next = ids.last().copied().filter(|_| more);
        Ok(Page { records, ids, next })
    }

    pub(super) fn record_at(&self, kind: Kind, id: i64) -> Result<Option<Value>, StoreError> {
        let sql = format!("SELECT record FROM {} WHERE id = $1", kind.table());
        let row = wait(self.pg.client_ref().query_opt(&sql, &[&id]))?;
        Ok(match row {
            Some(r) => Some(serde_json::from_str(r.try_get::<_, &str>(0)?)?),
            None => None,
        })
    }

    pub(super) fn count_kind(&self, kind: Kind) -> Result<u64, StoreError> {
        let sql = format!("SELECT COUNT(*) FROM {}", kind.table());
        Ok(u(wait(self.pg.client_ref().query_one(&sql, &[]))?.try_get(0)?))
    }

    pub(super) fn last_seq_of(&self, dataplane: &str) -> Result<Option<u64>, StoreError> {
        let r = wait(self.pg.client_ref().query_one(
            "SELECT GREATEST((SELECT MAX(seq) FROM flows WHERE dataplane = $1),
                             (SELECT MAX(seq) FROM requests WHERE dataplane = $1))",
            &[&dataplane],
        ))?;
        Ok(r.try_get::<_, Option<i64>>(0)?.and_then(|v| u64::try_from(v).ok()))
    }

    pub(super) fn usage_by(&self, since_ms: u64, by: UsageBy) -> Result<Vec<UsageRow>, StoreError> {
        let key = match by {
            UsageBy::Identity => "identity",
            UsageBy::User => "\"user\"",
            UsageBy::Sni => "sni",
            UsageBy::Model => "model",
            UsageBy::VirtualKey => "virtual_key",
        };
        let sql = format!(
            "SELECT {key}, COUNT(*), SUM(input_tokens)::bigint, SUM(output_tokens)::bigint,
                    SUM(cached_tokens)::bigint
             FROM requests WHERE ts_ms >= $1 GROUP BY 1
             ORDER BY SUM(input_tokens) + SUM(output_tokens) DESC, 2 DESC LIMIT 1000"
        );
        let rows = wait(self.pg.client_ref().query(&sql, &[&big(since_ms)]))?;
        rows.iter()
            .map(|r| {
                Ok(UsageRow {
                    key: r.try_get(0)?,
                    requests: u(r.try_get(1)?),
                    input_tokens: u(r.try_get(2)?),
                    output_tokens: u(r.try_get(3)?),
                    cached_tokens: u(r.try_get(4)?),
                })
            })
            .collect()
    }

    pub(super) fn quota_rows(&self, since_ms: u64) -> Result<Vec<(String, u64, u64)>, StoreError> {
        let rows = wait(self.pg.client_ref().query(
            "SELECT quota, ts_ms, input_tokens + output_tokens FROM requests
             WHERE ts_ms >= $1 AND quota IS NOT NULL",
            &[&big(since_ms)],
        ))?;
        rows.iter().map(|r| Ok((r.try_get(0)?, u(r.try_get(1)?), u(r.try_get(2)?)))).collect()
    }

    pub(super) fn series_of(
        &self,
        since_ms: u64,
        until_ms: u64,
        step_min: u64,
    ) -> Result<Vec<(u64, Counts)>, StoreError> {
        let mut b = Buckets::new(since_ms, until_ms, step_min);
        let rows = wait(self.pg.client_ref().query(
            "SELECT minute, flows, requests, blocked, findings FROM series
             WHERE minute >= $1 AND minute <= $2",
            &[&big(b.first), &big(b.last)],
        ))?;
        for r in rows {
            let n = |k| r.try_get::<_, i64>(k).map(u);
            b.add(n(0)?, Counts { flows: n(1)?, requests: n(2)?, blocked: n(3)?, findings: n(4)? });
        }
        Ok(b.into_vec())
    }

    pub(super) fn inventory_rows(
        &self,
        f: &InventoryFilter,
    ) -> Result<Vec<InventoryRow>, StoreError> {
        let mut sql = String::from(
            "SELECT host, identity, \"user\", app, version, first_ms, last_ms, flows, requests,
                    bytes, destinations, accounts FROM inventory WHERE true",
        );
        let mut args: Params = Vec::new();
        for (col, v) in
            [("app", &f.app), ("host", &f.host), ("identity", &f.identity), ("\"user\"", &f.user)]
        {
            if let Some(v) = v {
                args.push(Box::new(v.clone()));
                sql.push_str(&format!(" AND {col} = ${}", args.len()));
            }
        }
        if let Some(t) = f.since_ms {
            args.push(Box::new(big(t)));
            sql.push_str(&format!(" AND last_ms >= ${}", args.len()));
        }
        sql.push_str(" ORDER BY last_ms DESC LIMIT 10000");
        let rows = wait(self.pg.client_ref().query(&sql, &refs(&args)))?;
        let sorted = |mut v: Vec<String>| {
            v.sort();
            v
        };
        rows.iter()
            .map(|r| {
                Ok(InventoryRow {
                    host: r.try_get(0)?,
                    identity: r.try_get(1)?,
                    user: r.try_get(2)?,
                    app: r.try_get(3)?,
                    version: r.try_get(4)?,
                    first_seen_ms: u(r.try_get(5)?),
                    last_seen_ms: u(r.try_get(6)?),
                    flows: u(r.try_get(7)?),
                    requests: u(r.try_get(8)?),
                    bytes: u(r.try_get(9)?),
                    destinations: sorted(r.try_get(10)?),
                    accounts: sorted(r.try_get(11)?),
                })
            })
            .collect()
    }

    pub(super) fn hosts_by_app(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let rows = wait(
            self.pg
                .client_ref()
                .query("SELECT app, COUNT(DISTINCT host) FROM inventory GROUP BY app", &[]),
        )?;
        rows.iter().map(|r| Ok((r.try_get(0)?, u(r.try_get(1)?)))).collect()
    }

    pub(super) fn discoveries_since(
        &self,
        since_ms: u64,
        limit: usize,
    ) -> Result<Vec<Value>, StoreError> {
        let rows = wait(self.pg.client_ref().query(
            "SELECT record FROM discoveries WHERE ts_ms >= $1 ORDER BY id DESC LIMIT $2",
            &[&big(since_ms), &i64::try_from(limit).unwrap_or(1000)],
        ))?;
        rows.iter().map(|r| Ok(serde_json::from_str(r.try_get::<_, &str>(0)?)?)).collect()
    }

    pub(super) fn recordings_of(
        &self,
        f: &RecordingFilter,
        limit: usize,
    ) -> Result<Vec<Recording>, StoreError> {
        let thread = match &f.thread {
            Some(t) => Some(
                wait(thread_of_response(&*self.pg.client_ref(), t))?.unwrap_or_else(|| t.clone()),
            ),
            None => None,
        };
        // A thread is its first recording (named by its own id) and those that continue it.
        let (by, order) = match thread {
            Some(_) => ("(thread = $4 AND thread <> id OR id = $4 AND thread = id)", "ASC"),
            None => ("$4::text IS NULL", "DESC"),
        };
        let sql = format!(
            "SELECT {COLUMNS} FROM recordings
             WHERE {by} AND ($1::bigint IS NULL OR ts_ms >= $1)
               AND ($2::text IS NULL OR identity = $2) AND ($3::text IS NULL OR \"user\" = $3)
             ORDER BY ts_ms {order}, id LIMIT $5"
        );
        let since = f.since_ms.map(big);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = wait(
            self.pg.client_ref().query(&sql, &[&since, &f.identity, &f.user, &thread, &limit]),
        )?;
        rows.iter().map(recording_of).collect()
    }

    pub(super) fn recording_by_id(
        &self,
        id: &str,
    ) -> Result<Option<(Recording, String)>, StoreError> {
        let sql = format!("SELECT {COLUMNS}, sealed FROM recordings WHERE id = $1");
        let row = wait(self.pg.client_ref().query_opt(&sql, &[&id]))?;
        row.map(|r| Ok((recording_of(&r)?, r.try_get(13)?))).transpose()
    }

    pub(super) fn prune_recordings_before(
        &mut self,
        older_than_ms: u64,
    ) -> Result<u64, StoreError> {
        wait(async {
            let tx = self.pg.client().transaction().await?;
            super::active::fence(&tx).await?;
            let n = tx
                .execute("DELETE FROM recordings WHERE ts_ms < $1", &[&big(older_than_ms)])
                .await?;
            tx.commit().await?;
            Ok(n)
        })
    }
}

pub(super) const COLUMNS: &str = "id, dataplane, ts_ms, identity, \"user\", src, sni, method, path, rule, bytes, thread, response";

/// A recording from a row of [`COLUMNS`].
pub(super) fn recording_of(r: &tokio_postgres::Row) -> Result<Recording, StoreError> {
    Ok(Recording {
        id: r.try_get(0)?,
        dataplane: r.try_get(1)?,
        ts_ms: u(r.try_get(2)?),
        identity: r.try_get(3)?,
        user: r.try_get(4)?,
        src: r.try_get(5)?,
        sni: r.try_get(6)?,
        method: r.try_get(7)?,
        path: r.try_get(8)?,
        rule: r.try_get(9)?,
        bytes: u(r.try_get(10)?),
        thread: r.try_get(11)?,
        response: r.try_get(12)?,
    })
}

/// The thread of the (oldest) recording that answered with `response`, when it can be
/// continued and is stored.
async fn thread_of_response(
    c: &(impl tokio_postgres::GenericClient + Sync),
    response: &str,
) -> Result<Option<String>, StoreError> {
    let row = c
        .query_opt(
            "SELECT thread FROM recordings WHERE response = $1 AND substr(response, 1, 5) = 'resp_'
             ORDER BY ts_ms LIMIT 1",
            &[&response],
        )
        .await?;
    Ok(row.map(|r| r.try_get(0)).transpose()?)
}

/// Stores one `recording` row in the ingest's transaction (its sealed bytes in the row);
/// true when new. A recording control cannot read is skipped (and said), never a reason to
/// refuse the batch: the link would resend it forever.
pub(super) async fn insert_recording(
    tx: &Transaction<'_>,
    dataplane: &str,
    r: &Row<'_>,
) -> Result<bool, StoreError> {
    let Some(s) = r.recording.as_deref() else {
        tracing::warn!(
            dataplane,
            seq = r.seq,
            "a recording record without its id or sealed bytes was not stored"
        );
        return Ok(false);
    };
    if s.sealed.len() as u64 > crate::sealed_files::MAX_SEALED {
        tracing::warn!(
            dataplane,
            seq = r.seq,
            bytes = s.sealed.len(),
            "a recording past the bound was not stored"
        );
        return Ok(false);
    }
    let thread: String = match (&s.previous_response, &s.conversation) {
        (Some(prev), _) => {
            thread_of_response(tx, prev).await?.unwrap_or_else(|| prev.clone().into_owned())
        }
        (None, Some(c)) => c.clone().into_owned(),
        (None, None) => s.id.clone().into_owned(),
    };
    let n = tx
        .execute(
            "INSERT INTO recordings (id, dataplane, seq, ts_ms, identity, \"user\", src, sni,
                 method, path, rule, bytes, thread, response, sealed)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
             ON CONFLICT (id) DO NOTHING",
            &[
                &s.id.as_ref(),
                &dataplane,
                &big(r.seq),
                &big(r.ts_ms),
                &r.identity.as_deref(),
                &r.user.as_deref(),
                &r.src.as_deref(),
                &r.sni.as_deref(),
                &s.method.as_deref(),
                &s.path.as_deref(),
                &r.rule.as_deref(),
                &big(s.bytes),
                &thread,
                &s.response.as_deref(),
                &s.sealed.as_ref(),
            ],
        )
        .await?;
    Ok(n == 1)
}
