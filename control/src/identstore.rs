//! The identity feed: who sits behind which address, as feeders (directory connectors, NAC,
//! VPN concentrators) say through the API. Kept in a store so a restart of control forgets
//! nothing (SQLite here, PostgreSQL in [`crate::pg::identities`]); entries carry an expiry,
//! and the whole set is pushed to the data planes.

use std::net::IpAddr;
use std::path::Path;

use rusqlite::{Connection, params};
use serde::{Deserialize, Serialize};
use sluice_link::Identity;

use crate::store::StoreError;

/// Most groups per entry and longest user or group name accepted from a feed.
pub const MAX_GROUPS: usize = 64;
/// Longest user or group name.
pub const MAX_NAME: usize = 256;

/// One entry as a feeder sends it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FeedEntry {
    /// The address (in the bulk form; the single form takes it from the path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<IpAddr>,
    /// User name.
    pub user: String,
    /// Groups.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Seconds the entry holds; absent: until removed.
    #[serde(default)]
    pub ttl: Option<u64>,
}

/// Why `ip` cannot name one host (the unspecified address, broadcast, a multicast group),
/// if it cannot.
fn not_a_host(ip: IpAddr) -> Option<&'static str> {
    match ip {
        _ if ip.is_unspecified() => Some("the unspecified address"),
        _ if ip.is_multicast() => Some("a multicast group"),
        IpAddr::V4(v4) if v4.is_broadcast() => Some("the broadcast address"),
        IpAddr::V6(v6) => v6.to_ipv4_mapped().and_then(|v4| not_a_host(IpAddr::V4(v4))),
        IpAddr::V4(_) => None,
    }
}

impl FeedEntry {
    /// Checks the entry and turns it into what the data plane gets, at unix time `now`.
    pub fn into_identity(self, ip: IpAddr, now: u64) -> Result<Identity, String> {
        if let Some(what) = not_a_host(ip) {
            return Err(format!("{ip}: {what}, not one host's address"));
        }
        let name_ok =
            |n: &str| !n.is_empty() && n.len() <= MAX_NAME && !n.chars().any(char::is_control);
        if !name_ok(&self.user) {
            return Err(format!("{ip}: user must be 1..={MAX_NAME} printable characters"));
        }
        if self.groups.len() > MAX_GROUPS {
            return Err(format!("{ip}: at most {MAX_GROUPS} groups"));
        }
        if let Some(g) = self.groups.iter().find(|g| !name_ok(g)) {
            return Err(format!("{ip}: group {g:?} must be 1..={MAX_NAME} printable characters"));
        }
        if self.ttl == Some(0) {
            return Err(format!("{ip}: ttl must be at least 1 second"));
        }
        Ok(Identity {
            ip,
            user: self.user,
            groups: self.groups,
            expires_at: self.ttl.map(|t| now.saturating_add(t)),
        })
    }
}

/// Where the feed is kept: [`IdentStore`] (SQLite) or [`crate::pg::identities::PgIdentStore`].
pub trait IdentityStore: std::fmt::Debug + Send {
    /// Sets entries (replacing those for the same addresses); with `replace`, every other
    /// entry goes. One transaction.
    fn set(&mut self, entries: &[Identity], replace: bool) -> Result<(), StoreError>;
    /// Removes the entry for `ip`; false if there was none.
    fn remove(&mut self, ip: IpAddr) -> Result<bool, StoreError>;
    /// Drops entries expired at unix time `now`; returns how many.
    fn expire(&mut self, now: u64) -> Result<usize, StoreError>;
    /// Every entry, by address.
    fn all(&mut self) -> Result<Vec<Identity>, StoreError>;
    /// Whether the store answers (the watchdog's check).
    fn alive(&self) -> bool;
}

/// The store in SQLite.
#[derive(Debug)]
pub struct IdentStore {
    db: Connection,
}

impl IdentStore {
    /// Opens (creating) the store at `path`.
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
            "CREATE TABLE IF NOT EXISTS identities (
                ip TEXT PRIMARY KEY, user TEXT NOT NULL, groups TEXT NOT NULL, expires_at INTEGER
             );",
        )?;
        Ok(IdentStore { db })
    }
}

impl IdentityStore for IdentStore {
    fn set(&mut self, entries: &[Identity], replace: bool) -> Result<(), StoreError> {
        let tx = self.db.transaction()?;
        if replace {
            tx.execute("DELETE FROM identities", [])?;
        }
        {
            let mut st = tx.prepare_cached(
                "INSERT OR REPLACE INTO identities (ip, user, groups, expires_at) VALUES (?1, ?2, ?3, ?4)",
            )?;
            for e in entries {
                st.execute(params![
                    e.ip.to_string(),
                    e.user,
                    serde_json::to_string(&e.groups)?,
                    e.expires_at.map(|t| i64::try_from(t).unwrap_or(i64::MAX)),
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn remove(&mut self, ip: IpAddr) -> Result<bool, StoreError> {
        Ok(self.db.execute("DELETE FROM identities WHERE ip = ?1", [ip.to_string()])? > 0)
    }

    fn expire(&mut self, now: u64) -> Result<usize, StoreError> {
        let now = i64::try_from(now).unwrap_or(i64::MAX);
        Ok(self.db.execute(
            "DELETE FROM identities WHERE expires_at IS NOT NULL AND expires_at <= ?1",
            [now],
        )?)
    }

    fn alive(&self) -> bool {
        self.db.execute_batch("SELECT 1").is_ok()
    }

    fn all(&mut self) -> Result<Vec<Identity>, StoreError> {
        let mut st =
            self.db.prepare("SELECT ip, user, groups, expires_at FROM identities ORDER BY ip")?;
        let rows = st.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Option<i64>>(3)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (ip, user, groups, exp) = row?;
            let Ok(ip) = ip.parse() else { continue };
            out.push(Identity {
                ip,
                user,
                groups: serde_json::from_str(&groups)?,
                expires_at: exp.and_then(|t| u64::try_from(t).ok()),
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(user: &str, ttl: Option<u64>) -> FeedEntry {
        FeedEntry { ip: None, user: user.into(), groups: vec!["finance".into()], ttl }
    }

    crate::pg::both_stores! {
        sqlite: crate::identstore::IdentStore::open_in_memory().unwrap(),
        postgres: |cfg| crate::pg::identities::PgIdentStore::open_with(cfg).unwrap();
        set_replace_remove_expire, addresses_are_kept_as_written,
    }

    fn set_replace_remove_expire(mut s: impl IdentityStore) {
        let a = entry("alice", None).into_identity("10.0.0.1".parse().unwrap(), 100).unwrap();
        let b = entry("bob", Some(10)).into_identity("fd00::2".parse().unwrap(), 100).unwrap();
        assert_eq!(b.expires_at, Some(110));
        s.set(&[a.clone(), b.clone()], false).unwrap();
        assert_eq!(s.all().unwrap(), vec![a.clone(), b.clone()]);
        assert_eq!(s.expire(109).unwrap(), 0);
        assert_eq!(s.expire(110).unwrap(), 1);
        assert_eq!(s.all().unwrap(), vec![a.clone()]);
        s.set(std::slice::from_ref(&b), true).unwrap();
        assert_eq!(s.all().unwrap(), vec![b.clone()]);
        assert!(s.remove(b.ip).unwrap());
        assert!(!s.remove(b.ip).unwrap());
    }

    fn addresses_are_kept_as_written(mut s: impl IdentityStore) {
        // An entry set again for the same address replaces it; addresses of both families,
        // a long TTL and many groups come back as they went in.
        let ten_years = 10 * 365 * 86_400;
        let v6 = entry("dave", Some(ten_years)).into_identity("2001:db8::7".parse().unwrap(), 5);
        let v6 = v6.unwrap();
        let mut many = entry("erin", None);
        many.groups = (0..64).map(|i| format!("g{i}")).collect();
        let v4 = many.into_identity("192.0.2.9".parse().unwrap(), 5).unwrap();
        s.set(&[v6.clone(), v4.clone()], false).unwrap();
        let mut again = v4.clone();
        again.user = "erin2".into();
        s.set(std::slice::from_ref(&again), false).unwrap();
        let all = s.all().unwrap();
        assert_eq!(all.len(), 2);
        assert!(all.contains(&again) && all.contains(&v6), "{all:?}");
        assert_eq!(s.expire(ten_years).unwrap(), 0);
        assert_eq!(s.expire(ten_years + 5).unwrap(), 1);
    }

    #[test]
    fn feed_entries_are_checked() {
        let ip = "10.0.0.1".parse().unwrap();
        assert!(entry("", None).into_identity(ip, 0).is_err());
        assert!(entry("a\nb", None).into_identity(ip, 0).is_err());
        assert!(entry("a", Some(0)).into_identity(ip, 0).is_err());
        let mut many = entry("a", None);
        many.groups = (0..65).map(|i| i.to_string()).collect();
        assert!(many.into_identity(ip, 0).is_err());
    }
}
