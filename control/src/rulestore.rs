//! Rule-set versions and the audit log, in SQLite: every accepted rule set is kept with its
//! author and time (history, diff, rollback), and every admin action is written to the audit
//! log (who, what, when, rule version).

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

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

/// The store.
#[derive(Debug)]
pub struct RuleStore {
    db: Connection,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl RuleStore {
    /// Opens (creating) the store at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        RuleStore::init(Connection::open(path)?)
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
                 action TEXT NOT NULL, detail TEXT NOT NULL, version INTEGER);",
        )?;
        Ok(RuleStore { db })
    }

    /// Stores an accepted rule set; returns its version.
    pub fn add(&mut self, text: &str, author: &str, note: &str) -> Result<i64, StoreError> {
        self.db.execute(
            "INSERT INTO rule_versions (ts_ms, author, note, text) VALUES (?1, ?2, ?3, ?4)",
            params![now_ms(), author, note, text],
        )?;
        Ok(self.db.last_insert_rowid())
    }

    /// The newest version.
    pub fn current(&self) -> Result<Option<RuleVersion>, StoreError> {
        self.one("SELECT version, ts_ms, author, note, text FROM rule_versions ORDER BY version DESC LIMIT 1", None)
    }

    /// Version `v`.
    pub fn get(&self, v: i64) -> Result<Option<RuleVersion>, StoreError> {
        self.one(
            "SELECT version, ts_ms, author, note, text FROM rule_versions WHERE version = ?1",
            Some(v),
        )
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

    /// Every version, newest first, without their text.
    pub fn history(&self) -> Result<Vec<RuleVersion>, StoreError> {
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

    /// Writes an audit entry.
    pub fn audit(
        &mut self,
        who: &str,
        action: &str,
        detail: &str,
        version: Option<i64>,
    ) -> Result<(), StoreError> {
        self.db.execute(
            "INSERT INTO audit (ts_ms, who, action, detail, version) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![now_ms(), who, action, detail, version],
        )?;
        Ok(())
    }

    /// Writes an audit entry unless the same one (by whom, with the same detail) is there:
    /// a record a data plane sends again after a reconnect is audited once.
    pub fn audit_once(&mut self, who: &str, action: &str, detail: &str) -> Result<(), StoreError> {
        let seen: Option<i64> = self
            .db
            .query_row(
                "SELECT 1 FROM audit WHERE who = ?1 AND detail = ?2 LIMIT 1",
                params![who, detail],
                |r| r.get(0),
            )
            .optional()?;
        if seen.is_none() {
            self.audit(who, action, detail, None)?;
        }
        Ok(())
    }

    /// The audit log, newest first, at most `limit` entries.
    pub fn audit_log(&self, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_history_and_audit() {
        let mut s = RuleStore::open_in_memory().unwrap();
        assert!(s.current().unwrap().is_none());
        let v1 = s.add("a", "ops", "push").unwrap();
        let v2 = s.add("b", "ops", "push").unwrap();
        assert_eq!((v1, v2), (1, 2));
        assert_eq!(s.current().unwrap().unwrap().text, "b");
        assert_eq!(s.get(1).unwrap().unwrap().text, "a");
        assert_eq!(s.history().unwrap().iter().map(|v| v.version).collect::<Vec<_>>(), [2, 1]);
        s.audit("ops", "rules.push", "2 rules", Some(2)).unwrap();
        assert_eq!(s.audit_log(10).unwrap()[0].action, "rules.push");
    }
}
