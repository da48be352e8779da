//! Rule-set versions and the audit log: every accepted rule set is kept with its author and
//! time (history, diff, rollback), and every admin action is written to the audit log (who,
//! what, when, rule version). [`RuleLog`] is what control needs of it; [`RuleStore`] keeps it
//! in SQLite, [`crate::pg::rules::PgRuleStore`] in PostgreSQL. The audit log is control's own record chain
//! (ARCHITECTURE.md, "Evidence"): each entry carries its position, the link before it and its
//! own, over [`entry_bytes`]. Signed checkpoints of every chain are kept here too.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use sluice_audit::{Checkpoint, GENESIS, Link};

use crate::store::StoreError;

/// One stored rule-set version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleVersion {
    /// Version number (1, 2, …).
    pub version: i64,
    /// Unix ms it was accepted.
    pub ts_ms: i64,
    /// Token name that pushed it.
    pub author: String,
    /// What the push said (`push`, `rollback to N`).
    pub note: String,
    /// The rule file.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub text: String,
}

/// One audit entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditEntry {
    /// Unix ms.
    pub ts_ms: i64,
    /// Token name.
    pub who: String,
    /// The action (`rules.push`, `rules.rollback`, `rules.push.refused`, …).
    pub action: String,
    /// Details (never a secret).
    pub detail: String,
    /// The rule version in force after the action.
    pub version: Option<i64>,
}

/// A data plane's answer to a rule version, as the audit log holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    /// Unix ms.
    pub ts_ms: i64,
    /// Who wrote it (`dataplane:NAME`).
    pub who: String,
    /// The answer (JSON).
    pub detail: String,
    /// Its position in control's chain.
    pub n: Option<i64>,
}

/// Rule versions, the audit chain and the checkpoints, wherever they are kept.
pub trait RuleLog: std::fmt::Debug + Send {
    /// Stores an accepted rule set; returns its version.
    fn add(&mut self, text: &str, author: &str, note: &str) -> Result<i64, StoreError>;
    /// The newest version.
    fn current(&self) -> Result<Option<RuleVersion>, StoreError>;
    /// Version `v`.
    fn get(&self, v: i64) -> Result<Option<RuleVersion>, StoreError>;
    /// Every version, newest first, without their text.
    fn history(&self) -> Result<Vec<RuleVersion>, StoreError>;
    /// Writes an audit entry (the next position of control's chain).
    fn audit(
        &mut self,
        who: &str,
        action: &str,
        detail: &str,
        version: Option<i64>,
    ) -> Result<(), StoreError>;
    /// Writes an audit entry unless the same one (by whom, with the same detail) is there:
    /// a record a data plane sends again after a reconnect is audited once.
    fn audit_once(&mut self, who: &str, action: &str, detail: &str) -> Result<(), StoreError>;
    /// The audit log, newest first, at most `limit` entries.
    fn audit_log(&self, limit: usize) -> Result<Vec<AuditEntry>, StoreError>;
    /// Where control's chain stands: the last position and its link.
    fn chain_head(&self) -> Result<Option<(u64, Link)>, StoreError>;
    /// Calls `f` with every chained audit entry after position `after`, in chain order.
    fn walk_chain(&self, after: u64, f: &mut dyn FnMut(ChainedEntry)) -> Result<(), StoreError>;
    /// Audit entries written before the chain began (an earlier version's).
    fn unchained_entries(&self) -> Result<u64, StoreError>;
    /// The first and last positions of entries written in `[since_ms, until_ms)`, or about
    /// one of `versions` (pushes, rollbacks, acknowledgements).
    fn audit_span(
        &self,
        since_ms: i64,
        until_ms: i64,
        versions: &[i64],
    ) -> Result<Option<(u64, u64)>, StoreError>;
    /// The data planes' answers to version `v`, in chain order.
    fn acks(&self, v: i64) -> Result<Vec<Ack>, StoreError>;
    /// Keeps a signed checkpoint.
    fn add_checkpoint(&mut self, cp: &Checkpoint) -> Result<(), StoreError>;
    /// The checkpoints as stored, oldest first, with their row ids (a line that does not
    /// read is kept as text: verification reports it).
    fn checkpoint_lines(&self) -> Result<Vec<(i64, String)>, StoreError>;
    /// The highest position checkpointed of each chain.
    fn checkpointed(&self) -> Result<std::collections::HashMap<String, u64>, StoreError>;
    /// Begins a read transaction and reads once, so that everything read until it ends sees
    /// the store as it is now (verification beside the daemon's writes).
    fn hold_snapshot(&mut self) -> Result<(), StoreError>;
    /// A read-only handle of its own (verification beside the daemon's writes); `None`
    /// when there can be none (in memory).
    fn reader(&self) -> Result<Option<Box<dyn RuleLog>>, StoreError>;
}

/// The store in SQLite.
#[derive(Debug)]
pub struct RuleStore {
    db: Connection,
    /// Its file (none: in memory).
    path: Option<std::path::PathBuf>,
}

/// The bytes of an audit entry its link covers: a JSON object of its fields in this order,
/// as serde_json writes it (`{"ts_ms":…,"who":…,"action":…,"detail":…,"version":…}`).
pub fn entry_bytes(
    ts_ms: i64,
    who: &str,
    action: &str,
    detail: &str,
    version: Option<i64>,
) -> Vec<u8> {
    #[derive(Serialize)]
    struct Entry<'a> {
        ts_ms: i64,
        who: &'a str,
        action: &'a str,
        detail: &'a str,
        version: Option<i64>,
    }
    serde_json::to_vec(&Entry { ts_ms, who, action, detail, version }).unwrap_or_default()
}

/// One chained audit entry as stored, for verification.
#[derive(Debug, Clone)]
pub struct ChainedEntry {
    /// Row id.
    pub id: i64,
    /// Position.
    pub n: u64,
    /// The link it continues.
    pub prev: Link,
    /// Its link.
    pub link: Link,
    /// [`entry_bytes`] of its fields.
    pub bytes: Vec<u8>,
    /// The action.
    pub action: String,
    /// The details.
    pub detail: String,
}

pub(crate) fn link_of(b: Option<Vec<u8>>) -> Link {
    let mut l = [0u8; 32];
    if let Some(b) = b.filter(|b| b.len() == 32) {
        l.copy_from_slice(&b);
    }
    Link(l)
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl RuleStore {
    /// Opens (creating) the store at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let mut s = RuleStore::init(Connection::open(path)?)?;
        s.path = Some(path.to_owned());
        Ok(s)
    }

    /// The store at `path`, read-only (verification beside the daemon, which keeps writing).
    pub fn open_read_only(path: &Path) -> Result<Self, StoreError> {
        let db = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        Ok(RuleStore { db, path: Some(path.to_owned()) })
    }

    /// The connection (tests tamper with it).
    #[cfg(test)]
    pub(crate) fn db(&self) -> &Connection {
        &self.db
    }

    /// A store in memory (tests).
    pub fn open_in_memory() -> Result<Self, StoreError> {
        RuleStore::init(Connection::open_in_memory()?)
    }

    fn init(db: Connection) -> Result<Self, StoreError> {
        db.execute_batch(
            "PRAGMA journal_mode=WAL;
             CREATE TABLE IF NOT EXISTS rule_versions (
                 version INTEGER PRIMARY KEY, ts_ms INTEGER NOT NULL, author TEXT NOT NULL,
                 note TEXT NOT NULL, text TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS audit (
                 id INTEGER PRIMARY KEY, ts_ms INTEGER NOT NULL, who TEXT NOT NULL,
                 action TEXT NOT NULL, detail TEXT NOT NULL, version INTEGER);
             CREATE TABLE IF NOT EXISTS checkpoints (
                 id INTEGER PRIMARY KEY, chain TEXT NOT NULL, seq INTEGER NOT NULL,
                 ts_ms INTEGER NOT NULL, line TEXT NOT NULL);
             CREATE INDEX IF NOT EXISTS checkpoints_chain ON checkpoints (chain, seq);
             CREATE INDEX IF NOT EXISTS audit_who_detail ON audit (who, substr(detail, 1, 96));",
        )?;
        let chained: bool =
            db.prepare("SELECT 1 FROM pragma_table_info('audit') WHERE name = 'n'")?.exists([])?;
        if !chained {
            // Entries of an earlier version stay outside the chain (n NULL).
            db.execute_batch(
                "ALTER TABLE audit ADD COLUMN n INTEGER;
                 ALTER TABLE audit ADD COLUMN prev BLOB;
                 ALTER TABLE audit ADD COLUMN link BLOB;",
            )?;
        }
        Ok(RuleStore { db, path: None })
    }

    fn one(&self, sql: &str, v: Option<i64>) -> Result<Option<RuleVersion>, StoreError> {
        let row = |r: &rusqlite::Row<'_>| {
            Ok(RuleVersion {
                version: r.get(0)?,
                ts_ms: r.get(1)?,
                author: r.get(2)?,
                note: r.get(3)?,
                text: r.get(4)?,
            })
        };
        Ok(match v {
            Some(v) => self.db.query_row(sql, params![v], row).optional()?,
            None => self.db.query_row(sql, [], row).optional()?,
        })
    }
}

/// Whether an entry is in the audit log already: found through `audit_who_detail` (who and
/// the start of the detail: the index holds no long details twice), then compared whole.
const AUDIT_ONCE: &str = "SELECT 1 FROM audit
     WHERE who = ?1 AND substr(detail, 1, 96) = substr(?2, 1, 96) AND detail = ?2 LIMIT 1";

impl RuleLog for RuleStore {
    fn hold_snapshot(&mut self) -> Result<(), StoreError> {
        hold_snapshot(&self.db)
    }

    fn reader(&self) -> Result<Option<Box<dyn RuleLog>>, StoreError> {
        Ok(match &self.path {
            Some(p) => Some(Box::new(RuleStore::open_read_only(p)?)),
            None => None,
        })
    }

    fn add(&mut self, text: &str, author: &str, note: &str) -> Result<i64, StoreError> {
        self.db.execute(
            "INSERT INTO rule_versions (ts_ms, author, note, text) VALUES (?1, ?2, ?3, ?4)",
            params![now_ms(), author, note, text],
        )?;
        Ok(self.db.last_insert_rowid())
    }

    fn current(&self) -> Result<Option<RuleVersion>, StoreError> {
        self.one("SELECT version, ts_ms, author, note, text FROM rule_versions ORDER BY version DESC LIMIT 1", None)
    }

    fn get(&self, v: i64) -> Result<Option<RuleVersion>, StoreError> {
        self.one(
            "SELECT version, ts_ms, author, note, text FROM rule_versions WHERE version = ?1",
            Some(v),
        )
    }

    fn history(&self) -> Result<Vec<RuleVersion>, StoreError> {
        let mut st = self.db.prepare(
            "SELECT version, ts_ms, author, note FROM rule_versions ORDER BY version DESC",
        )?;
        let rows = st.query_map([], |r| {
            Ok(RuleVersion {
                version: r.get(0)?,
                ts_ms: r.get(1)?,
                author: r.get(2)?,
                note: r.get(3)?,
                text: String::new(),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn audit(
        &mut self,
        who: &str,
        action: &str,
        detail: &str,
        version: Option<i64>,
    ) -> Result<(), StoreError> {
        let tx = self.db.transaction()?;
        let (n, prev) = head(&tx)?.map_or((1, GENESIS), |(n, l)| (n + 1, l));
        let ts = now_ms();
        let link = sluice_audit::link(&prev, n, &entry_bytes(ts, who, action, detail, version));
        tx.execute(
            "INSERT INTO audit (ts_ms, who, action, detail, version, n, prev, link)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                ts,
                who,
                action,
                detail,
                version,
                i64::try_from(n).unwrap_or(i64::MAX),
                &prev.0[..],
                &link.0[..]
            ],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn chain_head(&self) -> Result<Option<(u64, Link)>, StoreError> {
        head(&self.db)
    }

    fn walk_chain(&self, after: u64, f: &mut dyn FnMut(ChainedEntry)) -> Result<(), StoreError> {
        let mut st = self.db.prepare(
            "SELECT id, n, prev, link, ts_ms, who, action, detail, version FROM audit
             WHERE n > ?1 ORDER BY id",
        )?;
        let rows = st.query_map([i64::try_from(after).unwrap_or(i64::MAX)], |r| {
            let (ts, who, action, detail, version): (i64, String, String, String, Option<i64>) =
                (r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?, r.get(8)?);
            Ok(ChainedEntry {
                id: r.get(0)?,
                n: u64::try_from(r.get::<_, i64>(1)?).unwrap_or(0),
                prev: link_of(r.get(2)?),
                link: link_of(r.get(3)?),
                bytes: entry_bytes(ts, &who, &action, &detail, version),
                action,
                detail,
            })
        })?;
        for row in rows {
            f(row?);
        }
        Ok(())
    }

    fn unchained_entries(&self) -> Result<u64, StoreError> {
        let n: i64 =
            self.db.query_row("SELECT COUNT(*) FROM audit WHERE n IS NULL", [], |r| r.get(0))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    fn audit_span(
        &self,
        since_ms: i64,
        until_ms: i64,
        versions: &[i64],
    ) -> Result<Option<(u64, u64)>, StoreError> {
        let versions: Vec<String> = versions.iter().map(i64::to_string).collect();
        let (first, last): (Option<i64>, Option<i64>) = self.db.query_row(
            &format!(
                "SELECT MIN(n), MAX(n) FROM audit WHERE n IS NOT NULL AND ((ts_ms >= ?1 AND ts_ms < ?2)
                 OR (action IN ('rules.push', 'rules.rollback', 'rules.ack') AND version IN ({})))",
                if versions.is_empty() { "NULL".to_owned() } else { versions.join(",") }
            ),
            params![since_ms, until_ms],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        Ok(first.zip(last).map(|(a, b)| (a.unsigned_abs(), b.unsigned_abs())))
    }

    fn acks(&self, v: i64) -> Result<Vec<Ack>, StoreError> {
        let mut st = self.db.prepare(
            "SELECT ts_ms, who, detail, n FROM audit WHERE action = 'rules.ack' AND version = ?1 ORDER BY id",
        )?;
        let rows = st.query_map([v], |r| {
            Ok(Ack { ts_ms: r.get(0)?, who: r.get(1)?, detail: r.get(2)?, n: r.get(3)? })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn add_checkpoint(&mut self, cp: &Checkpoint) -> Result<(), StoreError> {
        self.db.execute(
            "INSERT INTO checkpoints (chain, seq, ts_ms, line) VALUES (?1, ?2, ?3, ?4)",
            params![
                cp.chain,
                i64::try_from(cp.seq).unwrap_or(i64::MAX),
                i64::try_from(cp.ts_ms).unwrap_or(i64::MAX),
                cp.to_line()
            ],
        )?;
        Ok(())
    }

    fn checkpoint_lines(&self) -> Result<Vec<(i64, String)>, StoreError> {
        let mut st = self.db.prepare("SELECT id, line FROM checkpoints ORDER BY id")?;
        let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn checkpointed(&self) -> Result<std::collections::HashMap<String, u64>, StoreError> {
        let mut st = self.db.prepare("SELECT chain, MAX(seq) FROM checkpoints GROUP BY chain")?;
        let rows = st.query_map([], |r| {
            Ok((r.get::<_, String>(0)?, u64::try_from(r.get::<_, i64>(1)?).unwrap_or(0)))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn audit_once(&mut self, who: &str, action: &str, detail: &str) -> Result<(), StoreError> {
        let seen: Option<i64> =
            self.db.query_row(AUDIT_ONCE, params![who, detail], |r| r.get(0)).optional()?;
        if seen.is_none() {
            self.audit(who, action, detail, None)?;
        }
        Ok(())
    }

    fn audit_log(&self, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        let mut st = self.db.prepare(
            "SELECT ts_ms, who, action, detail, version FROM audit ORDER BY id DESC LIMIT ?1",
        )?;
        let rows = st.query_map(params![i64::try_from(limit).unwrap_or(i64::MAX)], |r| {
            Ok(AuditEntry {
                ts_ms: r.get(0)?,
                who: r.get(1)?,
                action: r.get(2)?,
                detail: r.get(3)?,
                version: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

/// Pins what `db` reads to one snapshot (a read transaction, begun by its first read).
pub fn hold_snapshot(db: &Connection) -> Result<(), StoreError> {
    db.execute_batch("BEGIN")?;
    db.query_row("SELECT COUNT(*) FROM sqlite_master", [], |r| r.get::<_, i64>(0))?;
    Ok(())
}

/// The last chained entry's position and link.
fn head(db: &Connection) -> Result<Option<(u64, Link)>, StoreError> {
    Ok(db
        .query_row(
            "SELECT n, link FROM audit WHERE n IS NOT NULL ORDER BY id DESC LIMIT 1",
            [],
            |r| Ok((u64::try_from(r.get::<_, i64>(0)?).unwrap_or(0), link_of(r.get(1)?))),
        )
        .optional()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    crate::pg::both_stores! {
        sqlite: crate::rulestore::RuleStore::open_in_memory().unwrap(),
        postgres: |cfg| crate::pg::rules::PgRuleStore::open_with(cfg).unwrap();
        versions_history_and_audit, the_audit_log_is_one_chain, checkpoints_are_kept,
    }

    fn versions_history_and_audit(mut s: impl RuleLog) {
        assert!(s.current().unwrap().is_none());
        let v1 = s.add("a", "ops", "push").unwrap();
        let v2 = s.add("b", "ops", "push").unwrap();
        assert_eq!((v1, v2), (1, 2));
        assert_eq!(s.current().unwrap().unwrap().text, "b");
        assert_eq!(s.get(1).unwrap().unwrap().text, "a");
        assert!(s.get(3).unwrap().is_none());
        let history = s.history().unwrap();
        assert_eq!(history.iter().map(|v| v.version).collect::<Vec<_>>(), [2, 1]);
        assert!(history.iter().all(|v| v.text.is_empty() && v.author == "ops"));
        s.audit("ops", "rules.push", "2 rules", Some(2)).unwrap();
        let log = s.audit_log(10).unwrap();
        assert_eq!((log[0].action.as_str(), log[0].version), ("rules.push", Some(2)));
    }

    /// Walks the chain as verification does: positions 1, 2, … each linked to the one
    /// before over its fields.
    fn chain_of(s: &dyn RuleLog) -> Vec<ChainedEntry> {
        let mut all = Vec::new();
        s.walk_chain(0, &mut |e| all.push(e)).unwrap();
        let mut prev = GENESIS;
        for (i, e) in all.iter().enumerate() {
            assert_eq!(e.n, i as u64 + 1, "positions are contiguous");
            assert_eq!(e.prev, prev, "entry {} continues the one before", e.n);
            assert_eq!(e.link, sluice_audit::link(&prev, e.n, &e.bytes), "entry {}", e.n);
            prev = e.link;
        }
        if let Some(last) = all.last() {
            assert_eq!(s.chain_head().unwrap(), Some((last.n, last.link)));
        }
        all
    }

    #[test]
    fn audit_once_finds_entries_by_index_and_compares_them_whole() {
        let mut s = RuleStore::open_in_memory().unwrap();
        let plan: Vec<String> = {
            let mut st = s.db().prepare(&format!("EXPLAIN QUERY PLAN {AUDIT_ONCE}")).unwrap();
            st.query_map(params!["w", "d"], |r| r.get::<_, String>(3))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap()
        };
        // Both columns searched: the who of every rules.ack of a data plane is the same.
        let both = "USING INDEX audit_who_detail (who=? AND <expr>=?)";
        assert!(plan.iter().any(|p| p.contains(both)), "{plan:?}");
        // Two details that share their first 96 characters are two entries.
        let common = "x".repeat(120);
        s.audit_once("w", "alarm.a", &format!("{common}1")).unwrap();
        s.audit_once("w", "alarm.a", &format!("{common}2")).unwrap();
        s.audit_once("w", "alarm.a", &format!("{common}1")).unwrap();
        assert_eq!(s.audit_log(10).unwrap().len(), 2);
    }

    fn the_audit_log_is_one_chain(mut s: impl RuleLog) {
        assert_eq!(s.chain_head().unwrap(), None);
        let v = s.add("a", "ops", "push").unwrap();
        s.audit("ops", "rules.push", "1 rule", Some(v)).unwrap();
        s.audit("dataplane:appl", "rules.ack", r#"{"dataplane":"appl","status":"ok"}"#, Some(v))
            .unwrap();
        s.audit_once("dataplane:appl", "chain.gap", r#"{"from":3,"to":5}"#).unwrap();
        s.audit_once("dataplane:appl", "chain.gap", r#"{"from":3,"to":5}"#).unwrap();
        s.audit_once("dataplane:other", "chain.gap", r#"{"from":3,"to":5}"#).unwrap();
        let all = chain_of(&s);
        assert_eq!(all.len(), 4, "an entry audited once is written once per writer");
        assert_eq!(s.unchained_entries().unwrap(), 0);
        let acks = s.acks(v).unwrap();
        assert_eq!(acks.len(), 1);
        assert_eq!((acks[0].who.as_str(), acks[0].n), ("dataplane:appl", Some(2)));
        // The span: by time (everything so far) and by version alone (an empty window).
        assert_eq!(s.audit_span(0, i64::MAX, &[]).unwrap(), Some((1, 4)));
        assert_eq!(s.audit_span(0, 1, &[v]).unwrap(), Some((1, 2)));
        assert_eq!(s.audit_span(0, 1, &[v + 1]).unwrap(), None);
        // Walking from a position gives what follows it.
        let mut after = Vec::new();
        s.walk_chain(2, &mut |e| after.push(e.n)).unwrap();
        assert_eq!(after, [3, 4]);
    }

    fn checkpoints_are_kept(mut s: impl RuleLog) {
        let signer = sluice_audit::Signer::from_secret(&[7; 32]);
        assert!(s.checkpointed().unwrap().is_empty());
        let dp = crate::chains::chain_name("appl", 0);
        for (chain, seq) in [("control", 3), (dp.as_str(), 10), ("control", 5)] {
            let cp = signer.sign(chain, seq, Link([seq as u8; 32]), 1_000 + seq).unwrap();
            s.add_checkpoint(&cp).unwrap();
        }
        let lines = s.checkpoint_lines().unwrap();
        assert_eq!(lines.len(), 3);
        let first = Checkpoint::parse_line(&lines[0].1).unwrap();
        assert_eq!((first.chain.as_str(), first.seq), ("control", 3));
        assert!(first.verify(&signer.public()).is_ok());
        let done = s.checkpointed().unwrap();
        assert_eq!(done.get("control"), Some(&5));
        assert_eq!(done.get(&dp), Some(&10));
    }

    /// Two controls on one database: versions and audit entries written at once from both
    /// stay one numbering and one chain.
    #[test]
    fn two_controls_share_one_chain_on_postgres() {
        let Some(cfg) = crate::pg::testing::fresh() else { return };
        let writers: Vec<_> = (0..2)
            .map(|w| {
                let cfg = cfg.clone();
                std::thread::spawn(move || {
                    let mut s = crate::pg::rules::PgRuleStore::open_with(cfg).unwrap();
                    let mut versions = Vec::new();
                    for i in 0..60 {
                        if i % 10 == 0 {
                            versions.push(s.add(&format!("w{w} {i}"), "ops", "push").unwrap());
                        }
                        s.audit(&format!("control-{w}"), "token.used", &i.to_string(), None)
                            .unwrap();
                        s.audit_once("dataplane:appl", "chain.gap", &format!("gap {}", i % 7))
                            .unwrap();
                    }
                    versions
                })
            })
            .collect();
        let mut versions: Vec<i64> = writers.into_iter().flat_map(|w| w.join().unwrap()).collect();
        versions.sort_unstable();
        assert_eq!(versions, (1..=12).collect::<Vec<_>>(), "no version number twice");
        let s = crate::pg::rules::PgRuleStore::open_with(cfg).unwrap();
        let all = chain_of(&s);
        assert_eq!(all.len(), 2 * 60 + 7, "each gap audited once across both controls");
    }
}
