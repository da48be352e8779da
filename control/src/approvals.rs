//! Held requests (ARCHITECTURE.md, "Approvals"): each request a data plane holds for a
//! reviewer is kept in SQLite (`approvals.db`) with what the reviewer sees, its state and, once
//! decided, who decided, when and why. The prompt text a rule lets reviewers read is never
//! stored: [`Prompts`] keeps it in memory while the request waits.
//!
//! States: `pending` → `approved` | `denied` (a reviewer) | `timeout` | `gone` (the client
//! left) | `abandoned` (control restarted while it waited and the data plane did not hold it
//! again).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Mutex, PoisonError};

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use serde_json::Value;
use sluice_link::{HoldTicket, Secret};

use crate::link::now_ms;
use crate::store::StoreError;

/// Most prompts kept in memory at once (each at most 64 KiB).
pub const MAX_PROMPTS: usize = 1024;

/// One held request as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Approval {
    /// Its id.
    pub id: String,
    /// The data plane holding it.
    pub dataplane: String,
    /// `pending`, `approved`, `denied`, `timeout`, `gone` or `abandoned`.
    pub state: String,
    /// What the reviewer sees (the ticket without the prompt).
    pub request: Value,
    /// Who decided.
    pub decided_by: Option<String>,
    /// Unix ms of the decision or the end of the wait.
    pub decided_ms: Option<u64>,
    /// A denial's reason.
    pub reason: Option<String>,
    /// An approval for this many minutes.
    pub grant_minutes: Option<u32>,
}

impl Approval {
    /// The held request's user, if it named one.
    pub fn user(&self) -> Option<&str> {
        self.request.get("user").and_then(Value::as_str)
    }
}

/// The store.
#[derive(Debug)]
pub struct ApprovalStore {
    db: Connection,
}

impl ApprovalStore {
    /// Opens (creating) the store at `path`. Requests that waited when control stopped are
    /// `abandoned` until a data plane holds them again.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::init(Connection::open(path)?)
    }

    /// A store in memory (tests).
    pub fn open_in_memory() -> Result<Self, StoreError> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(db: Connection) -> Result<Self, StoreError> {
        db.pragma_update(None, "journal_mode", "WAL")?;
        db.execute_batch(
            "CREATE TABLE IF NOT EXISTS approvals (
                 id TEXT PRIMARY KEY, dataplane TEXT NOT NULL, ts_ms INTEGER NOT NULL,
                 state TEXT NOT NULL, request TEXT NOT NULL, decided_by TEXT,
                 decided_ms INTEGER, reason TEXT, grant_minutes INTEGER);
             CREATE INDEX IF NOT EXISTS approvals_state ON approvals (state, ts_ms);
             UPDATE approvals SET state = 'abandoned' WHERE state = 'pending';",
        )?;
        Ok(ApprovalStore { db })
    }

    /// A data plane holds `ticket` (again, after a reconnect: a request not yet decided is
    /// pending again). The prompt is not stored. `false` when it was decided already. The
    /// link takes only tickets whose id is well formed ([`valid_id`]).
    pub fn held(&mut self, dataplane: &str, ticket: &HoldTicket) -> Result<bool, StoreError> {
        let mut shown = ticket.clone();
        shown.prompt = None;
        let mut request = serde_json::to_value(&shown)?;
        if let Some(o) = request.as_object_mut() {
            o.remove("prompt");
            o.insert("shows_prompt".into(), ticket.prompt.is_some().into());
        }
        let n = self.db.execute(
            "INSERT INTO approvals (id, dataplane, ts_ms, state, request)
             VALUES (?1, ?2, ?3, 'pending', ?4)
             ON CONFLICT(id) DO UPDATE SET state = 'pending', dataplane = excluded.dataplane
             WHERE state IN ('pending', 'abandoned')",
            params![ticket.id, dataplane, ticket.ts_ms as i64, request.to_string()],
        )?;
        Ok(n > 0)
    }

    /// The wait of `id` ended without a decision (`timeout`, `gone`).
    pub fn ended(&mut self, id: &str, outcome: &str) -> Result<bool, StoreError> {
        let state = if outcome == "timeout" { "timeout" } else { "gone" };
        let n = self.db.execute(
            "UPDATE approvals SET state = ?2, decided_ms = ?3 WHERE id = ?1 AND state = 'pending'",
            params![id, state, now_ms() as i64],
        )?;
        Ok(n > 0)
    }

    /// Decides `id` if it is pending; the decided approval, or `None` when it no longer waits.
    pub fn decide(
        &mut self,
        id: &str,
        approved: bool,
        by: &str,
        reason: Option<&str>,
        grant_minutes: Option<u32>,
    ) -> Result<Option<Approval>, StoreError> {
        let state = if approved { "approved" } else { "denied" };
        let n = self.db.execute(
            "UPDATE approvals SET state = ?2, decided_by = ?3, decided_ms = ?4, reason = ?5,
                 grant_minutes = ?6
             WHERE id = ?1 AND state = 'pending'",
            params![id, state, by, now_ms() as i64, reason, grant_minutes],
        )?;
        if n == 0 {
            return Ok(None);
        }
        self.get(id)
    }

    /// One approval.
    pub fn get(&self, id: &str) -> Result<Option<Approval>, StoreError> {
        let mut st = self.db.prepare(&format!("{SELECT} WHERE id = ?1"))?;
        st.query_row([id], row).optional()?.transpose()
    }

    /// Approvals in `state` (every state: `None`), newest first, at most `limit`.
    pub fn list(&self, state: Option<&str>, limit: usize) -> Result<Vec<Approval>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut st = self.db.prepare(&format!(
            "{SELECT} WHERE (?1 IS NULL OR state = ?1) ORDER BY ts_ms DESC LIMIT ?2"
        ))?;
        let rows = st.query_map(params![state, limit], row)?;
        let mut out = Vec::new();
        for r in rows {
            out.push(r??);
        }
        Ok(out)
    }
}

const SELECT: &str = "SELECT id, dataplane, state, request, decided_by, decided_ms, reason,
                             grant_minutes FROM approvals";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<Approval, StoreError>> {
    let request: String = r.get(3)?;
    let request = match serde_json::from_str(&request) {
        Ok(v) => v,
        Err(e) => return Ok(Err(e.into())),
    };
    Ok(Ok(Approval {
        id: r.get(0)?,
        dataplane: r.get(1)?,
        state: r.get(2)?,
        request,
        decided_by: r.get(4)?,
        decided_ms: r.get::<_, Option<i64>>(5)?.map(|v| u64::try_from(v).unwrap_or(0)),
        reason: r.get(6)?,
        grant_minutes: r.get(7)?,
    }))
}

/// The prompts reviewers may read, in memory while their requests wait (and never past the
/// wait's end, even if the data plane never says it ended).
#[derive(Debug, Default)]
pub struct Prompts(Mutex<HashMap<String, (Secret, u64)>>);

impl Prompts {
    /// Keeps `ticket`'s prompt, if it carries one (none past [`MAX_PROMPTS`]), until its wait
    /// would have timed out.
    pub fn keep(&self, ticket: &HoldTicket) {
        let Some(p) = &ticket.prompt else { return };
        let until = ticket.ts_ms.saturating_add(ticket.timeout_s.saturating_mul(1000));
        let mut m = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if m.len() >= MAX_PROMPTS {
            let now = now_ms();
            m.retain(|_, (_, u)| *u > now);
        }
        if m.len() < MAX_PROMPTS || m.contains_key(&ticket.id) {
            m.insert(ticket.id.clone(), (p.clone(), until));
        }
    }

    /// `id`'s prompt, if kept and its wait has not ended.
    pub fn get(&self, id: &str) -> Option<String> {
        let m = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        m.get(id).filter(|(_, u)| *u > now_ms()).map(|(s, _)| s.expose().to_owned())
    }

    /// Forgets `id`'s prompt (its wait ended).
    pub fn forget(&self, id: &str) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).remove(id);
    }
}

/// Whether `id` is an approval id as data planes make them: `apr_` and 24 lower-case hex
/// digits. Others are refused at the link: the id travels into URLs and page ids (the
/// console), so a data plane must not choose what it holds.
pub fn valid_id(id: &str) -> bool {
    id.strip_prefix("apr_")
        .is_some_and(|h| h.len() == 24 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ticket(id: &str, prompt: Option<&str>) -> HoldTicket {
        HoldTicket {
            id: id.into(),
            ts_ms: now_ms(),
            timeout_s: 120,
            rule: Some("r".into()),
            identity: "finance".into(),
            user: Some("alice@corp".into()),
            src: "10.0.0.1".into(),
            destination: "api.openai.com".into(),
            method: "POST".into(),
            path: "/v1/chat/completions".into(),
            model: Some("gpt-4o".into()),
            why: "rule".into(),
            findings: Vec::new(),
            prompt: prompt.map(|p| Secret::new(p.into())),
        }
    }

    #[test]
    fn a_held_request_is_decided_once_and_its_prompt_is_never_stored() {
        let mut s = ApprovalStore::open_in_memory().unwrap();
        assert!(valid_id("apr_0123456789abcdef01234567"));
        for bad in [
            "apr_1",
            "apr_0123456789ABCDEF01234567",
            "../rules/rollback/1",
            "apr_0123456789abcdef0123456/",
        ] {
            assert!(!valid_id(bad), "{bad}");
        }
        assert!(s.held("dp", &ticket("apr_1", Some("secret prompt"))).unwrap());
        let a = s.get("apr_1").unwrap().unwrap();
        assert_eq!((a.state.as_str(), a.user()), ("pending", Some("alice@corp")));
        assert_eq!(a.request["shows_prompt"], true);
        assert!(!a.request.to_string().contains("secret prompt"));
        let d = s.decide("apr_1", false, "rev", Some("no"), None).unwrap().unwrap();
        assert_eq!((d.state.as_str(), d.decided_by.as_deref()), ("denied", Some("rev")));
        assert!(s.decide("apr_1", true, "rev", None, None).unwrap().is_none(), "decided once");
        assert!(!s.ended("apr_1", "timeout").unwrap());
        assert!(!s.held("dp", &ticket("apr_1", None)).unwrap(), "a decided one stays decided");
        s.held("dp", &ticket("apr_2", None)).unwrap();
        assert!(s.ended("apr_2", "timeout").unwrap());
        assert_eq!(s.list(Some("timeout"), 10).unwrap().len(), 1);
        assert_eq!(s.list(None, 10).unwrap().len(), 2);
    }

    #[test]
    fn a_restart_abandons_the_waits_until_they_are_held_again() {
        let dir = std::env::temp_dir().join(format!("sluice-approvals-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("approvals.db");
        ApprovalStore::open(&path).unwrap().held("dp", &ticket("apr_3", None)).unwrap();
        let mut s = ApprovalStore::open(&path).unwrap();
        assert_eq!(s.get("apr_3").unwrap().unwrap().state, "abandoned");
        assert!(s.held("dp", &ticket("apr_3", None)).unwrap());
        assert_eq!(s.get("apr_3").unwrap().unwrap().state, "pending");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn prompts_live_in_memory_until_forgotten() {
        let p = Prompts::default();
        p.keep(&ticket("a", Some("hello")));
        p.keep(&ticket("b", None));
        assert_eq!(p.get("a").as_deref(), Some("hello"));
        assert_eq!(p.get("b"), None);
        p.forget("a");
        assert_eq!(p.get("a"), None);
        let mut old = ticket("c", Some("stale"));
        old.ts_ms = 1000;
        p.keep(&old);
        assert_eq!(p.get("c"), None, "past its wait");
    }
}
