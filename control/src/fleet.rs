//! The fleet (ARCHITECTURE.md, "The fleet"): the CA that issues the data planes' link
//! certificates (`STATE/fleet/`, made by `sluicectl fleet init`), and which certificate was
//! issued to whom and whether it is revoked (`fleet.db`). The link's TCP listener admits a
//! peer only when its certificate is one of these and not revoked, and only under its name.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use sluice_certs::CertError;
use sluice_certs::fleet::{FleetCa, Issued, valid_name};

use crate::store::StoreError;

/// Why a fleet operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// `fleet init` has not been run.
    #[error("the fleet has no CA yet: run `sluicectl fleet init`")]
    NoCa,
    /// `fleet init` ran before.
    #[error("the fleet already has a CA (sha256 {0}); it is never replaced")]
    HasCa(String),
    /// The name cannot name a data plane.
    #[error("`{0}` cannot name a data plane: 1-64 of A-Z a-z 0-9 . _ -, not starting with . or -")]
    BadName(String),
    /// The name holds a certificate already.
    #[error("`{0}` is enrolled already: revoke it first, or enrol with replace")]
    Enrolled(String),
    /// The name holds no certificate that is not revoked.
    #[error("no data plane `{0}` is enrolled")]
    Unknown(String),
    /// The certificate request is not one.
    #[error("certificate request: {0}")]
    BadRequest(String),
    /// The CA's files.
    #[error("fleet CA: {0}")]
    Ca(#[from] CertError),
    /// The store.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<rusqlite::Error> for FleetError {
    fn from(e: rusqlite::Error) -> Self {
        FleetError::Store(e.into())
    }
}

/// One issued certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Member {
    /// The data plane's name.
    pub name: String,
    /// Hex SHA-256 of the certificate.
    pub sha256: String,
    /// Hex serial number.
    pub serial: String,
    /// Issued at, Unix ms.
    pub issued_ms: i64,
    /// Who enrolled it (token name).
    pub issued_by: String,
    /// End of validity, Unix seconds.
    pub not_after: i64,
    /// Revoked at, Unix ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revoked_ms: Option<i64>,
    /// Who revoked it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revoked_by: Option<String>,
}

/// The fleet's CA and enrolments.
#[derive(Debug)]
pub struct Fleet {
    dir: PathBuf,
    db: Connection,
    ca: Option<FleetCa>,
}

fn now_ms() -> i64 {
    i64::try_from(crate::link::now_ms()).unwrap_or(i64::MAX)
}

impl Fleet {
    /// Opens the fleet of control's state directory: `fleet.db`, and the CA in `fleet/` when
    /// `fleet init` made one.
    pub fn open(state_dir: &Path) -> Result<Self, FleetError> {
        let db = Connection::open(state_dir.join("fleet.db"))?;
        db.pragma_update(None, "journal_mode", "WAL")?;
        db.execute_batch(
            "CREATE TABLE IF NOT EXISTS certs (
                sha256 TEXT PRIMARY KEY, name TEXT NOT NULL, serial TEXT NOT NULL,
                issued_ms INTEGER NOT NULL, issued_by TEXT NOT NULL, not_after INTEGER NOT NULL,
                revoked_ms INTEGER, revoked_by TEXT
             );
             CREATE INDEX IF NOT EXISTS certs_name ON certs (name);",
        )?;
        let dir = state_dir.join("fleet");
        let ca = if FleetCa::exists(&dir) { Some(FleetCa::load(&dir)?) } else { None };
        Ok(Fleet { dir, db, ca })
    }

    /// The CA, once `fleet init` made it.
    pub fn ca(&self) -> Option<&FleetCa> {
        self.ca.as_ref()
    }

    /// The link listener's TLS, once there is a CA.
    pub fn server_config(&self) -> Result<Option<Arc<rustls::ServerConfig>>, FleetError> {
        Ok(self.ca.as_ref().map(FleetCa::server_config).transpose()?)
    }

    /// Makes the fleet CA (once).
    pub fn init(&mut self) -> Result<&FleetCa, FleetError> {
        if let Some(ca) = &self.ca {
            return Err(FleetError::HasCa(ca.sha256()));
        }
        Ok(self.ca.insert(FleetCa::create(&self.dir)?))
    }

    /// Issues `name` a certificate for the key of `csr_pem`. A name enrolled already is
    /// refused unless `replace`, which revokes its earlier certificates.
    pub fn enrol(
        &mut self,
        name: &str,
        csr_pem: &str,
        replace: bool,
        by: &str,
    ) -> Result<Issued, FleetError> {
        if !valid_name(name) {
            return Err(FleetError::BadName(name.into()));
        }
        let ca = self.ca.as_ref().ok_or(FleetError::NoCa)?;
        let issued = ca.sign_dataplane(name, csr_pem).map_err(|e| match e {
            CertError::Rcgen(e) => FleetError::BadRequest(e.to_string()),
            other => FleetError::Ca(other),
        })?;
        let tx = self.db.transaction()?;
        let live: i64 = tx.query_row(
            "SELECT count(*) FROM certs WHERE name = ?1 AND revoked_ms IS NULL",
            [name],
            |r| r.get(0),
        )?;
        if live > 0 && !replace {
            return Err(FleetError::Enrolled(name.into()));
        }
        let now = now_ms();
        tx.execute(
            "UPDATE certs SET revoked_ms = ?2, revoked_by = ?3
             WHERE name = ?1 AND revoked_ms IS NULL",
            params![name, now, format!("{by} (replaced)")],
        )?;
        tx.execute(
            "INSERT INTO certs (sha256, name, serial, issued_ms, issued_by, not_after)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                issued.sha256,
                name,
                issued.serial,
                now,
                by,
                i64::try_from(issued.not_after).unwrap_or(i64::MAX)
            ],
        )?;
        tx.commit()?;
        Ok(issued)
    }

    /// Revokes every certificate of `name`; how many were live.
    pub fn revoke(&mut self, name: &str, by: &str) -> Result<usize, FleetError> {
        let n = self.db.execute(
            "UPDATE certs SET revoked_ms = ?2, revoked_by = ?3
             WHERE name = ?1 AND revoked_ms IS NULL",
            params![name, now_ms(), by],
        )?;
        if n == 0 {
            return Err(FleetError::Unknown(name.into()));
        }
        Ok(n)
    }

    /// The certificate whose SHA-256 is `sha256`, if it was issued here.
    pub fn member(&self, sha256: &str) -> Result<Option<Member>, FleetError> {
        Ok(self
            .db
            .query_row(&format!("{SELECT} WHERE sha256 = ?1"), [sha256], member)
            .optional()?)
    }

    /// Every certificate issued, newest first.
    pub fn members(&self) -> Result<Vec<Member>, FleetError> {
        let mut st = self.db.prepare(&format!("{SELECT} ORDER BY issued_ms DESC, rowid DESC"))?;
        let rows = st.query_map([], member)?.collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }
}

const SELECT: &str = "SELECT name, sha256, serial, issued_ms, issued_by, not_after, revoked_ms,
                             revoked_by FROM certs";

fn member(r: &rusqlite::Row<'_>) -> rusqlite::Result<Member> {
    Ok(Member {
        name: r.get(0)?,
        sha256: r.get(1)?,
        serial: r.get(2)?,
        issued_ms: r.get(3)?,
        issued_by: r.get(4)?,
        not_after: r.get(5)?,
        revoked_ms: r.get(6)?,
        revoked_by: r.get(7)?,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn enrolment_replacement_and_revocation_are_kept() {
        let dir = std::env::temp_dir().join(format!("sluice-fleet-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut f = Fleet::open(&dir).unwrap();
        let (_, csr) = sluice_certs::fleet::dataplane_request("edge-1").unwrap();
        assert!(matches!(f.enrol("edge-1", &csr, false, "ops"), Err(FleetError::NoCa)));
        let sha = f.init().unwrap().sha256();
        assert!(matches!(f.init(), Err(FleetError::HasCa(s)) if s == sha));
        let first = f.enrol("edge-1", &csr, false, "ops").unwrap();
        assert!(matches!(f.enrol("edge-1", &csr, false, "ops"), Err(FleetError::Enrolled(_))));
        assert!(matches!(f.enrol("a b", &csr, false, "ops"), Err(FleetError::BadName(_))));
        assert!(matches!(f.enrol("edge-2", "junk", false, "ops"), Err(FleetError::BadRequest(_))));
        let second = f.enrol("edge-1", &csr, true, "ops").unwrap();
        // Reopened (a restart): the CA and what it issued are still there.
        drop(f);
        let mut f = Fleet::open(&dir).unwrap();
        assert_eq!(f.ca().unwrap().sha256(), sha);
        let old = f.member(&first.sha256).unwrap().unwrap();
        assert_eq!(old.revoked_by.as_deref(), Some("ops (replaced)"));
        assert_eq!(f.member(&second.sha256).unwrap().unwrap().revoked_ms, None);
        assert_eq!(f.revoke("edge-1", "sec").unwrap(), 1);
        assert!(matches!(f.revoke("edge-1", "sec"), Err(FleetError::Unknown(_))));
        let m = f.member(&second.sha256).unwrap().unwrap();
        assert_eq!((m.name.as_str(), m.revoked_by.as_deref()), ("edge-1", Some("sec")));
        assert_eq!(f.members().unwrap().len(), 2);
        assert_eq!(f.member("00").unwrap(), None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
