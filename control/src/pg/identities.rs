//! The identity feed on PostgreSQL ([`crate::identstore`] has the SQLite store and the
//! trait): one row per address, groups as a text array.

use std::net::IpAddr;

use sluice_link::Identity;
use tokio_postgres::Config;

use super::{Pg, big, wait};
use crate::identstore::IdentityStore;
use crate::store::StoreError;

const MIGRATIONS: &[&str] = &["CREATE TABLE identities (
    ip TEXT PRIMARY KEY, \"user\" TEXT NOT NULL, groups TEXT[] NOT NULL, expires_at BIGINT)"];

/// The store on PostgreSQL.
#[derive(Debug)]
pub struct PgIdentStore {
    pg: Pg,
}

impl PgIdentStore {
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
        pg.migrate("identities", MIGRATIONS)?;
        Ok(PgIdentStore { pg })
    }

    /// One statement with one parameter in a fenced transaction; the rows it changed.
    fn write(
        &mut self,
        sql: &str,
        arg: &(dyn tokio_postgres::types::ToSql + Sync),
    ) -> Result<u64, StoreError> {
        wait(async {
            let tx = self.pg.client().transaction().await?;
            super::active::fence(&tx).await?;
            let n = tx.execute(sql, &[arg]).await?;
            tx.commit().await?;
            Ok(n)
        })
    }
}

impl IdentityStore for PgIdentStore {
    fn set(&mut self, entries: &[Identity], replace: bool) -> Result<(), StoreError> {
        let (ips, users, groups, expiry) = columns(entries);
        wait(async {
            let tx = self.pg.client().transaction().await?;
            super::active::fence(&tx).await?;
            if replace {
                tx.execute("DELETE FROM identities", &[]).await?;
            }
            // One statement for the batch: rows from the arrays, each address once (the
            // last entry for an address wins, as one upsert per entry in order would).
            tx.execute(
                "INSERT INTO identities (ip, \"user\", groups, expires_at)
                 SELECT DISTINCT ON (ip) ip, u, ARRAY(SELECT json_array_elements_text(g::json)), e
                 FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[])
                      WITH ORDINALITY AS t(ip, u, g, e, ord)
                 ORDER BY ip, ord DESC
                 ON CONFLICT (ip) DO UPDATE
                 SET \"user\" = EXCLUDED.\"user\", groups = EXCLUDED.groups,
                     expires_at = EXCLUDED.expires_at",
                &[&ips, &users, &groups, &expiry],
            )
            .await?;
            tx.commit().await?;
            Ok::<_, StoreError>(())
        })
    }

    fn remove(&mut self, ip: IpAddr) -> Result<bool, StoreError> {
        let n = self.write("DELETE FROM identities WHERE ip = $1", &ip.to_string())?;
        Ok(n > 0)
    }

    fn expire(&mut self, now: u64) -> Result<usize, StoreError> {
        let n = self.write(
            "DELETE FROM identities WHERE expires_at IS NOT NULL AND expires_at <= $1",
            &big(now),
        )?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    fn alive(&self) -> bool {
        self.pg.alive()
    }

    fn all(&mut self) -> Result<Vec<Identity>, StoreError> {
        let rows = wait(self.pg.client().query(
            "SELECT ip, \"user\", groups, expires_at FROM identities ORDER BY ip COLLATE \"C\"",
            &[],
        ))?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let Ok(ip) = r.try_get::<_, String>(0)?.parse() else { continue };
            let expires: Option<i64> = r.try_get(3)?;
            out.push(Identity {
                ip,
                user: r.try_get(1)?,
                groups: r.try_get(2)?,
                expires_at: expires.and_then(|t| u64::try_from(t).ok()),
            });
        }
        Ok(out)
    }
}

/// The entries as the statement's arrays (groups as JSON text: PostgreSQL has no array of
/// arrays of differing lengths).
type Columns = (Vec<String>, Vec<String>, Vec<String>, Vec<Option<i64>>);

fn columns(entries: &[Identity]) -> Columns {
    let mut c: Columns = Default::default();
    for e in entries {
        c.0.push(e.ip.to_string());
        c.1.push(e.user.clone());
        c.2.push(serde_json::to_string(&e.groups).unwrap_or_else(|_| "[]".into()));
        c.3.push(e.expires_at.map(big));
    }
    c
}
