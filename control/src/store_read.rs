//! The record store's reads (ARCHITECTURE.md, "The record store"): where a replay resumes,
//! counts, usage and quota sums, and the pages of records, by the per-row indexes or by the
//! block index.

use super::*;

impl FlowStore {
    /// The highest sequence number stored for `dataplane` (where a replay may resume;
    /// recordings count only in an earlier version's table: one sent again is known by its id).
    pub fn last_seq(&self, dataplane: &str) -> Result<Option<u64>, StoreError> {
        let recordings = if self.recordings_by_seq {
            " UNION ALL SELECT MAX(seq) FROM recordings WHERE dataplane = ?1"
        } else {
            ""
        };
        let v: Option<i64> = self
            .conn
            .query_row(
                &format!(
                    "SELECT MAX(s) FROM (SELECT MAX(seq) AS s FROM flows WHERE dataplane = ?1
                     UNION ALL SELECT MAX(seq) FROM requests WHERE dataplane = ?1{recordings})"
                ),
                [dataplane],
                |r| r.get(0),
            )
            .optional()?
            .flatten();
        Ok(v.and_then(|v| u64::try_from(v).ok()))
    }

    /// Number of stored records of `kind`.
    pub fn count_of(&self, kind: Kind) -> Result<u64, StoreError> {
        let sql = format!("SELECT COUNT(*) FROM {}", kind.table());
        let n: i64 = self.conn.query_row(&sql, [], |r| r.get(0))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Requests and the tokens their responses said they used since `since_ms`, per value of
    /// `by` (most tokens first).
    pub fn usage(&self, since_ms: u64, by: UsageBy) -> Result<Vec<UsageRow>, StoreError> {
        let key = match by {
            UsageBy::Identity => "identity",
            UsageBy::User => "user",
            UsageBy::Sni => "sni",
            UsageBy::Model => "json_extract(record, '$.model')",
            UsageBy::VirtualKey => "json_extract(record, '$.virtual_key')",
        };
        let sql = format!(
            "SELECT {key}, COUNT(*), TOTAL(json_extract(record, '$.input_tokens')),
                    TOTAL(json_extract(record, '$.output_tokens')),
                    TOTAL(json_extract(record, '$.cached_tokens'))
             FROM requests WHERE ts_ms >= ?1 GROUP BY 1
             ORDER BY 3 + 4 DESC, 2 DESC LIMIT 1000"
        );
        let mut st = self.conn.prepare(&sql)?;
        let rows = st.query_map([i64::try_from(since_ms).unwrap_or(i64::MAX)], |r| {
            Ok(UsageRow {
                key: r.get(0)?,
                requests: u64::try_from(r.get::<_, i64>(1)?).unwrap_or(0),
                input_tokens: r.get::<_, f64>(2)? as u64,
                output_tokens: r.get::<_, f64>(3)? as u64,
                cached_tokens: r.get::<_, f64>(4)? as u64,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The request records since `since_ms` that a quota counted: subject, time, and the
    /// input and output tokens (to seed the fleet's quota counts at start).
    pub fn quota_records(&self, since_ms: u64) -> Result<Vec<(String, u64, u64)>, StoreError> {
        let mut st = self.conn.prepare(
            "SELECT json_extract(record, '$.quota'), ts_ms,
                    IFNULL(json_extract(record, '$.input_tokens'), 0)
                      + IFNULL(json_extract(record, '$.output_tokens'), 0)
             FROM requests WHERE ts_ms >= ?1 AND json_extract(record, '$.quota') IS NOT NULL",
        )?;
        let rows = st.query_map([i64::try_from(since_ms).unwrap_or(i64::MAX)], |r| {
            Ok((
                r.get::<_, String>(0)?,
                u64::try_from(r.get::<_, i64>(1)?).unwrap_or(0),
                u64::try_from(r.get::<_, i64>(2)?).unwrap_or(0),
            ))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Records of `kind` matching `f`, newest first (see [`crate::records::RecordStore::query`]). A detector
    /// filter matches no flow record.
    pub fn query_kind(
        &self,
        kind: Kind,
        f: &FlowFilter,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Page, StoreError> {
        if f.detector.is_some() && kind == Kind::Flows {
            return Ok(Page { records: Vec::new(), ids: Vec::new(), next: None });
        }
        // The query's conditions, each row checked against all of them.
        let mut sql = String::new();
        let mut args: Vec<rusqlite::types::Value> = Vec::new();
        let mut add = |clause: &str, v: rusqlite::types::Value| {
            sql.push_str(clause);
            args.push(v);
        };
        if let Some(t) = f.since_ms {
            add(" AND ts_ms >= ?", i64::try_from(t).unwrap_or(i64::MAX).into());
        }
        if let Some(t) = f.until_ms {
            add(" AND ts_ms < ?", i64::try_from(t).unwrap_or(i64::MAX).into());
        }
        for (col, v) in [
            ("identity", &f.identity),
            ("user", &f.user),
            ("src", &f.src),
            ("sni", &f.sni),
            ("category", &f.category),
            ("verdict", &f.verdict),
            ("rule", &f.rule),
            ("dataplane", &f.dataplane),
        ] {
            if let Some(v) = v {
                add(&format!(" AND {col} = ?"), v.clone().into());
            }
        }
        for (key, v) in [("app", &f.app), ("operation", &f.operation)] {
            if let Some(v) = v {
                add(&format!(" AND json_extract(record, '$.{key}') = ?"), v.clone().into());
            }
        }
        if let Some(d) = &f.detector {
            add(" AND detectors LIKE ? ESCAPE '\\'", like_item(d).into());
        }
        if let Some(a) = f.after_id {
            add(" AND id > ?", a.into());
        }
        let limit = limit.clamp(1, 10_000);
        // Exact indexes serve `src` and `user`; otherwise the block index narrows the rows
        // read when the query names a value it holds or a time window.
        let mut ask = crate::blocks::Ask {
            after_id: f.after_id,
            since_ms: f.since_ms.map(i),
            until_ms: f.until_ms.map(i),
            ..Default::default()
        };
        for ((col, code), v) in crate::blocks::COLUMNS.iter().zip([
            &f.identity,
            &f.sni,
            &f.category,
            &f.verdict,
            &f.rule,
            &f.dataplane,
        ]) {
            debug_assert!(sql.contains(&format!(" {col} = ?")) || v.is_none());
            if let Some(v) = v {
                ask.terms.push((*code, v.as_str()));
            }
        }
        let rows = if f.src.is_none() && f.user.is_none() && ask.narrows() {
            self.rows_by_blocks(kind, &sql, &args, &ask, before, limit + 1)?
        } else {
            sql = format!("SELECT id, record FROM {} WHERE 1=1{sql}", kind.table());
            if let Some(b) = before {
                sql.push_str(" AND id < ?");
                args.push(b.into());
            }
            sql.push_str(" ORDER BY id DESC LIMIT ?");
            args.push(i64::try_from(limit + 1).unwrap_or(i64::MAX).into());
            let mut stmt = self.conn.prepare(&sql)?;
            stmt.query_map(params_from_iter(args.iter()), |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
            })?
            .collect::<Result<Vec<_>, _>>()?
        };
        let more = rows.len() > limit;
        let mut records = Vec::with_capacity(rows.len().min(limit));
        let mut ids = Vec::with_capacity(rows.len().min(limit));
        for (id, rec) in rows.into_iter().take(limit) {
            records.push(serde_json::from_str(&rec)?);
            ids.push(id);
        }
        let next = ids.last().copied().filter(|_| more);
        Ok(Page { records, ids, next })
    }

    /// Up to `want` rows (id, record) matching `conds` (the query's conditions, each row
    /// checked against all of them) below id `before`, newest first, read block by block from
    /// the blocks the block index names for `ask`.
    fn rows_by_blocks(
        &self,
        kind: Kind,
        conds: &str,
        args: &[rusqlite::types::Value],
        ask: &crate::blocks::Ask<'_>,
        before: Option<i64>,
        want: usize,
    ) -> Result<Vec<(i64, String)>, StoreError> {
        let last = match before {
            Some(b) => b.saturating_sub(1),
            None => {
                let max = format!("SELECT MAX(id) FROM {}", kind.table());
                match self.conn.query_row(&max, [], |r| r.get::<_, Option<i64>>(0))? {
                    Some(m) => m,
                    None => return Ok(Vec::new()),
                }
            }
        };
        // By row id only (an index on a filtered column, such as the data plane's, would read
        // every row with that value for each block).
        let mut stmt = self.conn.prepare(&format!(
            "SELECT id, record FROM {} NOT INDEXED WHERE 1=1{conds}
             AND id >= ? AND id <= ? ORDER BY id DESC LIMIT ?",
            kind.table()
        ))?;
        let mut rows = Vec::new();
        let mut top = crate::blocks::block_of(last);
        const CHUNK: usize = 64;
        while rows.len() < want && top >= 0 {
            let blocks = crate::blocks::candidates(&self.conn, kind, ask, top, CHUNK)?;
            for &b in &blocks {
                let (lo, hi) = crate::blocks::ids_of(b);
                let mut a = args.to_vec();
                a.push(lo.into());
                a.push(hi.min(last).into());
                a.push(i64::try_from(want - rows.len()).unwrap_or(i64::MAX).into());
                let found = stmt.query_map(params_from_iter(a.iter()), |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
                })?;
                for row in found {
                    rows.push(row?);
                }
                if rows.len() >= want {
                    break;
                }
            }
            match blocks.last() {
                Some(&b) if blocks.len() == CHUNK => top = b - 1,
                _ => break,
            }
        }
        Ok(rows)
    }
}
