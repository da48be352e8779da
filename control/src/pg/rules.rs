//! Rule versions, control's audit chain and the checkpoints on PostgreSQL
//! ([`crate::rulestore`] has the trait and the SQLite store).
//!
//! Several controls may write here at once (ARCHITECTURE.md, "The stores"): a version
//! number is the highest plus one under a transaction-scoped advisory lock, and an audit
//! entry is appended with the chain's head row locked (`audit_head ... FOR UPDATE`), so the
//! chain stays one line of positions 1, 2, … with each link over the one before, whoever
//! writes. `UNIQUE (n)` is the backstop.

use sluice_audit::{Checkpoint, GENESIS, Link};
use tokio_postgres::Config;

use super::{Pg, big, wait};
use crate::rulestore::{
    Ack, AuditEntry, ChainedEntry, RuleLog, RuleVersion, entry_bytes, link_of, now_ms,
};
use crate::store::StoreError;

const MIGRATIONS: &[&str] = &["
CREATE TABLE rule_versions (
    version BIGINT PRIMARY KEY, ts_ms BIGINT NOT NULL, author TEXT NOT NULL,
    note TEXT NOT NULL, text TEXT NOT NULL);
CREATE TABLE audit (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, ts_ms BIGINT NOT NULL,
    who TEXT NOT NULL, action TEXT NOT NULL, detail TEXT NOT NULL, version BIGINT,
    n BIGINT UNIQUE, prev BYTEA, link BYTEA);
CREATE INDEX audit_who_detail ON audit (who, md5(detail));
CREATE INDEX audit_version ON audit (version, action) WHERE version IS NOT NULL;
CREATE INDEX audit_ts ON audit (ts_ms);
CREATE TABLE audit_head (
    one BOOLEAN PRIMARY KEY DEFAULT true CHECK (one), n BIGINT NOT NULL, link BYTEA NOT NULL);
INSERT INTO audit_head (n, link) VALUES (0, '\\x0000000000000000000000000000000000000000000000000000000000000000');
CREATE TABLE checkpoints (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, chain TEXT NOT NULL,
    seq BIGINT NOT NULL, ts_ms BIGINT NOT NULL, line TEXT NOT NULL);
CREATE INDEX checkpoints_chain ON checkpoints (chain, seq);
"];

/// The store on PostgreSQL.
#[derive(Debug)]
pub struct PgRuleStore {
    pg: Pg,
}

fn version_of(r: &tokio_postgres::Row, text: bool) -> Result<RuleVersion, StoreError> {
    Ok(RuleVersion {
        version: r.try_get(0)?,
        ts_ms: r.try_get(1)?,
        author: r.try_get(2)?,
        note: r.try_get(3)?,
        text: if text { r.try_get(4)? } else { String::new() },
    })
}

impl PgRuleStore {
    /// Connects to `url` and brings the schema up to date.
    pub fn open(url: &str) -> Result<Self, StoreError> {
        Self::with(Pg::connect(url)?)
    }

    /// Connects with `cfg`.
    pub fn open_with(cfg: Config) -> Result<Self, StoreError> {
        Self::with(Pg::connect_with(cfg)?)
    }

    fn with(pg: Pg) -> Result<Self, StoreError> {
        let mut pg = pg.healing();
        pg.migrate("rules", MIGRATIONS)?;
        Ok(PgRuleStore { pg })
    }

    /// Appends an entry in a transaction that holds the chain's head; with `once`, only if
    /// no entry by `who` with `detail` is there.
    fn append(
        &mut self,
        who: &str,
        action: &str,
        detail: &str,
        version: Option<i64>,
        once: bool,
    ) -> Result<(), StoreError> {
        wait(async {
            let tx = self.pg.client().transaction().await?;
            super::active::fence(&tx).await?;
            let head = tx.query_one("SELECT n, link FROM audit_head FOR UPDATE", &[]).await?;
            if once {
                let seen = tx
                    .query_opt(
                        "SELECT 1 FROM audit WHERE who = $1 AND md5(detail) = md5($2) AND detail = $2 LIMIT 1",
                        &[&who, &detail],
                    )
                    .await?;
                if seen.is_some() {
                    tx.commit().await?;
                    return Ok(());
                }
            }
            let last: i64 = head.try_get(0)?;
            let prev = if last == 0 { GENESIS } else { link_of(head.try_get(1)?) };
            let n = last.unsigned_abs() + 1;
            let ts = now_ms();
            let link = sluice_audit::link(&prev, n, &entry_bytes(ts, who, action, detail, version));
            tx.execute(
                "INSERT INTO audit (ts_ms, who, action, detail, version, n, prev, link)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                &[&ts, &who, &action, &detail, &version, &big(n), &&prev.0[..], &&link.0[..]],
            )
            .await?;
            tx.execute("UPDATE audit_head SET n = $1, link = $2", &[&big(n), &&link.0[..]]).await?;
            tx.commit().await?;
            Ok::<_, StoreError>(())
        })
    }
}

impl RuleLog for PgRuleStore {
    fn add(&mut self, text: &str, author: &str, note: &str) -> Result<i64, StoreError> {
        let v = wait(async {
            let tx = self.pg.client().transaction().await?;
            super::active::fence(&tx).await?;
            tx.execute("SELECT pg_advisory_xact_lock(hashtext('sluice-rule-versions:' || current_schema()))", &[])
                .await?;
            let row = tx
                .query_one(
                    "INSERT INTO rule_versions (version, ts_ms, author, note, text)
                     SELECT COALESCE(MAX(version), 0) + 1, $1, $2, $3, $4 FROM rule_versions
                     RETURNING version",
                    &[&now_ms(), &author, &note, &text],
                )
                .await?;
            let v: i64 = row.try_get(0)?;
            tx.commit().await?;
            Ok::<_, StoreError>(v)
        })?;
        Ok(v)
    }

    fn current(&self) -> Result<Option<RuleVersion>, StoreError> {
        let row = wait(self.pg.client_ref().query_opt(
            "SELECT version, ts_ms, author, note, text FROM rule_versions ORDER BY version DESC LIMIT 1",
            &[],
        ))?;
        row.map(|r| version_of(&r, true)).transpose()
    }

    fn get(&self, v: i64) -> Result<Option<RuleVersion>, StoreError> {
        let row = wait(self.pg.client_ref().query_opt(
            "SELECT version, ts_ms, author, note, text FROM rule_versions WHERE version = $1",
            &[&v],
        ))?;
        row.map(|r| version_of(&r, true)).transpose()
    }

    fn history(&self) -> Result<Vec<RuleVersion>, StoreError> {
        let rows = wait(self.pg.client_ref().query(
            "SELECT version, ts_ms, author, note FROM rule_versions ORDER BY version DESC",
            &[],
        ))?;
        rows.iter().map(|r| version_of(r, false)).collect()
    }

    fn audit(
        &mut self,
        who: &str,
        action: &str,
        detail: &str,
        version: Option<i64>,
    ) -> Result<(), StoreError> {
        self.append(who, action, detail, version, false)
    }

    fn audit_once(&mut self, who: &str, action: &str, detail: &str) -> Result<(), StoreError> {
        self.append(who, action, detail, None, true)
    }

    fn audit_log(&self, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        let rows = wait(self.pg.client_ref().query(
            "SELECT ts_ms, who, action, detail, version FROM audit ORDER BY id DESC LIMIT $1",
            &[&i64::try_from(limit).unwrap_or(i64::MAX)],
        ))?;
        rows.iter()
            .map(|r| {
                Ok(AuditEntry {
                    ts_ms: r.try_get(0)?,
                    who: r.try_get(1)?,
                    action: r.try_get(2)?,
                    detail: r.try_get(3)?,
                    version: r.try_get(4)?,
                })
            })
            .collect()
    }

    fn chain_head(&self) -> Result<Option<(u64, Link)>, StoreError> {
        let r = wait(self.pg.client_ref().query_one("SELECT n, link FROM audit_head", &[]))?;
        let n: i64 = r.try_get(0)?;
        Ok((n > 0).then(|| (n.unsigned_abs(), link_of(r.try_get(1).ok().flatten()))))
    }

    fn walk_chain(&self, after: u64, f: &mut dyn FnMut(ChainedEntry)) -> Result<(), StoreError> {
        let rows = wait(self.pg.client_ref().query(
            "SELECT id, n, prev, link, ts_ms, who, action, detail, version FROM audit
             WHERE n > $1 ORDER BY n",
            &[&big(after)],
        ))?;
        for r in rows {
            let (ts, who, action, detail, version): (i64, String, String, String, Option<i64>) =
                (r.try_get(4)?, r.try_get(5)?, r.try_get(6)?, r.try_get(7)?, r.try_get(8)?);
            f(ChainedEntry {
                id: r.try_get(0)?,
                n: r.try_get::<_, i64>(1)?.unsigned_abs(),
                prev: link_of(r.try_get(2)?),
                link: link_of(r.try_get(3)?),
                bytes: entry_bytes(ts, &who, &action, &detail, version),
                action,
                detail,
            });
        }
        Ok(())
    }

    fn unchained_entries(&self) -> Result<u64, StoreError> {
        let r = wait(
            self.pg.client_ref().query_one("SELECT COUNT(*) FROM audit WHERE n IS NULL", &[]),
        )?;
        Ok(r.try_get::<_, i64>(0)?.unsigned_abs())
    }

    fn audit_span(
        &self,
        since_ms: i64,
        until_ms: i64,
        versions: &[i64],
    ) -> Result<Option<(u64, u64)>, StoreError> {
        let r = wait(self.pg.client_ref().query_one(
            "SELECT MIN(n), MAX(n) FROM audit WHERE n IS NOT NULL AND ((ts_ms >= $1 AND ts_ms < $2)
             OR (action IN ('rules.push', 'rules.rollback', 'rules.ack') AND version = ANY($3)))",
            &[&since_ms, &until_ms, &versions],
        ))?;
        let (a, b): (Option<i64>, Option<i64>) = (r.try_get(0)?, r.try_get(1)?);
        Ok(a.zip(b).map(|(a, b)| (a.unsigned_abs(), b.unsigned_abs())))
    }

    fn acks(&self, v: i64) -> Result<Vec<Ack>, StoreError> {
        let rows = wait(self.pg.client_ref().query(
            "SELECT ts_ms, who, detail, n FROM audit WHERE action = 'rules.ack' AND version = $1 ORDER BY n",
            &[&v],
        ))?;
        rows.iter()
            .map(|r| {
                Ok(Ack {
                    ts_ms: r.try_get(0)?,
                    who: r.try_get(1)?,
                    detail: r.try_get(2)?,
                    n: r.try_get(3)?,
                })
            })
            .collect()
    }

    fn add_checkpoint(&mut self, cp: &Checkpoint) -> Result<(), StoreError> {
        wait(async {
            let tx = self.pg.client().transaction().await?;
            super::active::fence(&tx).await?;
            tx.execute(
                "INSERT INTO checkpoints (chain, seq, ts_ms, line) VALUES ($1, $2, $3, $4)",
                &[&cp.chain, &big(cp.seq), &big(cp.ts_ms), &cp.to_line()],
            )
            .await?;
            tx.commit().await?;
            Ok(())
        })
    }

    fn checkpoint_lines(&self) -> Result<Vec<(i64, String)>, StoreError> {
        let rows =
            wait(self.pg.client_ref().query("SELECT id, line FROM checkpoints ORDER BY id", &[]))?;
        rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect()
    }

    fn checkpointed(&self) -> Result<std::collections::HashMap<String, u64>, StoreError> {
        let rows = wait(
            self.pg
                .client_ref()
                .query("SELECT chain, MAX(seq) FROM checkpoints GROUP BY chain", &[]),
        )?;
        rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get::<_, i64>(1)?.unsigned_abs()))).collect()
    }

    fn reader(&self) -> Result<Option<Box<dyn RuleLog>>, StoreError> {
        Ok(Some(Box::new(PgRuleStore { pg: self.pg.another()? })))
    }

    fn hold_snapshot(&mut self) -> Result<(), StoreError> {
        wait(self.pg.client_ref().batch_execute(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SELECT 1 FROM audit_head",
        ))?;
        Ok(())
    }
}
