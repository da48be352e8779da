//! Provider keys and virtual keys (ARCHITECTURE.md, "Key brokering").
//!
//! Provider keys are sealed at rest with AES-256-GCM under a key-encryption key kept in the
//! state directory (`keys.kek`, 32 random bytes, mode 0600, made at first start): the
//! database alone reveals nothing. They are unsealed only to be pushed to the data planes,
//! and no API returns them (a listing shows names and fingerprints). Virtual keys are kept as
//! SHA-256 hashes only: the key is shown once, when issued.

use std::io::Write;
use std::path::Path;

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use sha2::{Digest, Sha256};
use sluice_link::{BrokerKey, DlpSalt, Secret, VirtualKey};

/// Longest provider key accepted.
pub const MAX_KEY: usize = 4096;

/// Why the key store failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// SQLite failed.
    #[error("key store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The key-encryption key could not be read or made.
    #[error("key store: the key-encryption key {path}: {why}")]
    Kek {
        /// Its path.
        path: String,
        /// What went wrong.
        why: String,
    },
    /// A sealed key does not open with this key-encryption key (another state directory's,
    /// or the database was changed).
    #[error("key store: key `{0}` does not open with this key-encryption key")]
    Unseal(String),
    /// The system's random source failed.
    #[error("key store: no randomness")]
    Random,
    /// A name or key the caller gave is not acceptable.
    #[error("{0}")]
    Invalid(String),
    /// No such key.
    #[error("{0}")]
    NotFound(String),
}

/// A provider key as listings show it: never the key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyInfo {
    /// Its name (what rules say in `broker_key`).
    pub name: String,
    /// `sha256:` and the first 12 hex digits of the key's SHA-256 (as request records show a
    /// client's key), to tell keys apart without seeing them.
    pub fingerprint: String,
    /// Unix ms of the last change.
    pub updated_ms: u64,
    /// Who changed it last.
    pub updated_by: String,
}

/// A virtual key as listings show it: never the key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VirtualKeyInfo {
    /// Its id (what request records show).
    pub id: String,
    /// The user it names.
    pub user: String,
    /// The identity it may be used from, if restricted.
    pub identity: Option<String>,
    /// Unix ms it was issued.
    pub created_ms: u64,
    /// Unix ms it was revoked, if it was.
    pub revoked_ms: Option<u64>,
}

/// What the data planes get of the key store (`Down::Keys` without its generation).
#[derive(Debug, Clone)]
pub struct KeyPush {
    /// The provider keys, unsealed.
    pub keys: Vec<BrokerKey>,
    /// The virtual keys in force.
    pub virtual_keys: Vec<VirtualKey>,
    /// The DLP salt in force, if it opens.
    pub dlp_salt: Option<DlpSalt>,
}

/// A DLP salt as listings show it: never the salt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SaltInfo {
    /// Its id (`salt:` and 12 hex digits), as request records name it.
    pub id: String,
    /// Unix ms it was made.
    pub created_ms: u64,
    /// Who made it (`control (first start)` or the rotating caller).
    pub created_by: String,
    /// Unix ms it was retired (and destroyed), if it was.
    pub retired_ms: Option<u64>,
}

/// The key store.
pub struct KeyStore {
    db: Connection,
    kek: LessSafeKey,
    rng: SystemRandom,
}

impl std::fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyStore").finish_non_exhaustive()
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

/// The key-encryption key at `path`, made (32 random bytes, mode 0600) when absent.
fn kek(path: &Path, rng: &SystemRandom) -> Result<LessSafeKey, KeyError> {
    use std::os::unix::fs::OpenOptionsExt;
    let bad = |why: String| KeyError::Kek { path: path.display().to_string(), why };
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut b = [0u8; 32];
            rng.fill(&mut b).map_err(|_| KeyError::Random)?;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| bad(e.to_string()))?;
            f.write_all(&b).and_then(|()| f.sync_all()).map_err(|e| bad(e.to_string()))?;
            b.to_vec()
        }
        Err(e) => return Err(bad(e.to_string())),
    };
    let key = UnboundKey::new(&AES_256_GCM, &bytes)
        .map_err(|_| bad(format!("{} bytes, expected 32", bytes.len())))?;
    Ok(LessSafeKey::new(key))
}

/// Checks a provider key's name (as rules may name it).
fn check_name(name: &str) -> Result<(), KeyError> {
    // (`virtual` is the path of the virtual keys' routes.)
    let ok = name != "virtual"
        && !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(KeyError::Invalid(format!(
            "`{name}` is not a valid key name: expected 1-64 letters, digits, `-`, `_`, `.` or `@`"
        )))
    }
}

impl KeyStore {
    /// Opens (creating) the store at `db` with the key-encryption key at `kek_path`.
    pub fn open(db: &Path, kek_path: &Path) -> Result<KeyStore, KeyError> {
        let rng = SystemRandom::new();
        let db = Connection::open(db)?;
        db.execute_batch(
            "PRAGMA journal_mode = WAL;
             CREATE TABLE IF NOT EXISTS keys (
                 name TEXT PRIMARY KEY, nonce BLOB NOT NULL, sealed BLOB NOT NULL,
                 fingerprint TEXT NOT NULL, updated_ms INTEGER NOT NULL, updated_by TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS virtual_keys (
                 id TEXT PRIMARY KEY, sha256 TEXT NOT NULL UNIQUE, user TEXT NOT NULL,
                 identity TEXT, created_ms INTEGER NOT NULL, revoked_ms INTEGER);
             CREATE TABLE IF NOT EXISTS dlp_salts (
                 id TEXT PRIMARY KEY, nonce BLOB, sealed BLOB, created_ms INTEGER NOT NULL,
                 created_by TEXT NOT NULL, retired_ms INTEGER);",
        )?;
        // A retired salt's sealed bytes are overwritten where SQLite frees them.
        db.pragma_update(None, "secure_delete", true)?;
        let sealed: i64 = db.query_row("SELECT count(*) FROM keys", [], |r| r.get(0))?;
        if sealed > 0 && !kek_path.exists() {
            // A new key-encryption key would open none of them: refuse rather than start
            // with keys that can never be pushed.
            return Err(KeyError::Kek {
                path: kek_path.display().to_string(),
                why: format!(
                    "missing while {sealed} sealed keys exist: restore it (or remove the keys \
                     database and store the keys again)"
                ),
            });
        }
        let kek = kek(kek_path, &rng)?;
        let mut store = KeyStore { db, kek, rng };
        if store.salts()?.first().is_none_or(|s| s.retired_ms.is_some()) {
            let made = store.new_salt("control (first start)")?;
            tracing::info!(salt = %made.id, "made the deployment's DLP salt");
        } else if store.dlp_salt()?.is_none() {
            // Sealed under a key-encryption key that is gone: no one can use it again.
            let (made, old) = store.rotate_salt("control (the salt did not open)")?;
            tracing::error!(
                salt = %made.id,
                retired = old.as_deref().unwrap_or("-"),
                "the DLP salt did not open with this key-encryption key: a new one replaces it \
                 (finding hashes before and after do not compare)"
            );
        }
        Ok(store)
    }

    /// `plain` sealed under the key-encryption key with `aad`: (nonce, sealed bytes).
    fn seal(&self, aad: &[u8], plain: &[u8]) -> Result<([u8; NONCE_LEN], Vec<u8>), KeyError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| KeyError::Random)?;
        let mut sealed = plain.to_vec();
        self.kek
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut sealed,
            )
            .map_err(|_| KeyError::Random)?;
        Ok((nonce, sealed))
    }

    /// Stores (or replaces) the provider key `name`. The key is sealed before it is written.
    pub fn set(&mut self, name: &str, key: &str, by: &str) -> Result<KeyInfo, KeyError> {
        check_name(name)?;
        let key = key.trim();
        if key.is_empty() || key.len() > MAX_KEY || key.chars().any(char::is_control) {
            return Err(KeyError::Invalid(format!(
                "a provider key is 1..={MAX_KEY} printable characters on one line"
            )));
        }
        let (nonce, sealed) = self.seal(name.as_bytes(), key.as_bytes())?;
        let info = KeyInfo {
            name: name.into(),
            fingerprint: fingerprint(key),
            updated_ms: now_ms(),
            updated_by: by.into(),
        };
        self.db.execute(
            "INSERT INTO keys (name, nonce, sealed, fingerprint, updated_ms, updated_by)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT(name) DO UPDATE SET nonce = ?2, sealed = ?3, fingerprint = ?4,
                 updated_ms = ?5, updated_by = ?6",
            params![name, &nonce[..], sealed, info.fingerprint, info.updated_ms as i64, by],
        )?;
        Ok(info)
    }

    /// Removes the provider key `name`; false when there was none.
    pub fn delete(&mut self, name: &str) -> Result<bool, KeyError> {
        Ok(self.db.execute("DELETE FROM keys WHERE name = ?1", params![name])? > 0)
    }

    /// The provider keys, without their secrets.
    pub fn list(&self) -> Result<Vec<KeyInfo>, KeyError> {
        let mut st = self
            .db
            .prepare("SELECT name, fingerprint, updated_ms, updated_by FROM keys ORDER BY name")?;
        let rows = st.query_map([], |r| {
            Ok(KeyInfo {
                name: r.get(0)?,
                fingerprint: r.get(1)?,
                updated_ms: r.get::<_, i64>(2)? as u64,
                updated_by: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The provider keys, unsealed, for the data planes (and nothing else). A key that does
    /// not open is left out and logged (the others, and every virtual key, still go).
    pub fn secrets(&self) -> Result<Vec<BrokerKey>, KeyError> {
        let mut st = self.db.prepare("SELECT name, nonce, sealed FROM keys ORDER BY name")?;
        let rows = st.query_map([], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?, r.get::<_, Vec<u8>>(2)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (name, nonce, sealed) = row?;
            match self.unseal(&name, &nonce, sealed) {
                Some(secret) => out.push(BrokerKey { name, secret }),
                None => tracing::error!(key = %name, "{}", KeyError::Unseal(name.clone())),
            }
        }
        Ok(out)
    }

    fn unseal(&self, name: &str, nonce: &[u8], mut sealed: Vec<u8>) -> Option<Secret> {
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let secret =
            self.kek.open_in_place(nonce, Aad::from(name.as_bytes()), &mut sealed).ok().and_then(
                |plain| std::str::from_utf8(plain).ok().map(|s| Secret::new(s.to_owned())),
            );
        zeroize::Zeroize::zeroize(&mut sealed);
        secret
    }

    /// Issues a virtual key for `user` (usable only from `identity` when given): its record
    /// and the key itself, which is kept nowhere (only its hash).
    pub fn issue(
        &mut self,
        user: &str,
        identity: Option<&str>,
    ) -> Result<(VirtualKeyInfo, Secret), KeyError> {
        let printable =
            |s: &str| !s.is_empty() && s.len() <= 256 && !s.chars().any(char::is_control);
        if !printable(user) || identity.is_some_and(|i| !printable(i)) {
            return Err(KeyError::Invalid(
                "user and identity are 1..=256 printable characters".into(),
            ));
        }
        let mut raw = [0u8; 24];
        self.rng.fill(&mut raw).map_err(|_| KeyError::Random)?;
        let key = format!("svk-{}", hex(&raw));
        let sha = hex(&Sha256::digest(key.as_bytes()));
        let mut idb = [0u8; 6];
        self.rng.fill(&mut idb).map_err(|_| KeyError::Random)?;
        let info = VirtualKeyInfo {
            id: format!("vk_{}", hex(&idb)),
            user: user.into(),
            identity: identity.map(str::to_owned),
            created_ms: now_ms(),
            revoked_ms: None,
        };
        self.db.execute(
            "INSERT INTO virtual_keys (id, sha256, user, identity, created_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![info.id, sha, info.user, info.identity, info.created_ms as i64],
        )?;
        Ok((info, Secret::new(key)))
    }

    /// Revokes virtual key `id`; false when there is no such key (or it was revoked already).
    pub fn revoke(&mut self, id: &str) -> Result<bool, KeyError> {
        Ok(self.db.execute(
            "UPDATE virtual_keys SET revoked_ms = ?2 WHERE id = ?1 AND revoked_ms IS NULL",
            params![id, now_ms() as i64],
        )? > 0)
    }

    /// The virtual keys, revoked ones included.
    pub fn virtual_keys(&self) -> Result<Vec<VirtualKeyInfo>, KeyError> {
        let mut st = self.db.prepare(
            "SELECT id, user, identity, created_ms, revoked_ms FROM virtual_keys ORDER BY created_ms",
        )?;
        let rows = st.query_map([], |r| {
            Ok(VirtualKeyInfo {
                id: r.get(0)?,
                user: r.get(1)?,
                identity: r.get(2)?,
                created_ms: r.get::<_, i64>(3)? as u64,
                revoked_ms: r.get::<_, Option<i64>>(4)?.map(|v| v as u64),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The virtual keys in force, as the data planes get them (hashes, never keys).
    pub fn link_virtual_keys(&self) -> Result<Vec<VirtualKey>, KeyError> {
        let mut st = self.db.prepare(
            "SELECT id, sha256, user, identity FROM virtual_keys WHERE revoked_ms IS NULL",
        )?;
        let rows = st.query_map([], |r| {
            Ok(VirtualKey {
                id: r.get(0)?,
                sha256: r.get(1)?,
                user: r.get(2)?,
                identity: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The DLP salts, newest first: the first is in force unless retired; retired ones are
    /// destroyed (ids and dates kept).
    pub fn salts(&self) -> Result<Vec<SaltInfo>, KeyError> {
        let mut st = self.db.prepare(
            "SELECT id, created_ms, created_by, retired_ms FROM dlp_salts ORDER BY rowid DESC",
        )?;
        let rows = st.query_map([], |r| {
            Ok(SaltInfo {
                id: r.get(0)?,
                created_ms: r.get::<_, i64>(1)? as u64,
                created_by: r.get(2)?,
                retired_ms: r.get::<_, Option<i64>>(3)?.map(|v| v as u64),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The salt in force, unsealed, for the data planes (and nothing else); `None` (logged)
    /// when it does not open with this key-encryption key: data planes then hash with salts
    /// of their own runs until a rotation makes one that does.
    pub fn dlp_salt(&self) -> Result<Option<DlpSalt>, KeyError> {
        let row = self
            .db
            .query_row(
                "SELECT id, nonce, sealed FROM dlp_salts WHERE retired_ms IS NULL
                 ORDER BY rowid DESC LIMIT 1",
                [],
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?, r.get::<_, Vec<u8>>(2)?)),
            )
            .optional()?;
        let Some((id, nonce, mut sealed)) = row else { return Ok(None) };
        let aad = format!("dlp-salt:{id}");
        let opened = Nonce::try_assume_unique_for_key(&nonce)
            .ok()
            .and_then(|n| self.kek.open_in_place(n, Aad::from(aad.as_bytes()), &mut sealed).ok())
            .map(|plain| Secret::new(hex(plain)));
        zeroize::Zeroize::zeroize(&mut sealed);
        if opened.is_none() {
            tracing::error!(salt = %id, "{}", KeyError::Unseal(aad));
        }
        Ok(opened.map(|salt| DlpSalt { id, salt }))
    }

    /// Replaces the salt in force by a new one, made by `by`, and destroys the old one: its
    /// hashes can no longer be matched to anything, by anyone. Returns the new salt and the
    /// retired one's id.
    pub fn rotate_salt(&mut self, by: &str) -> Result<(SaltInfo, Option<String>), KeyError> {
        let old = self.salts()?.into_iter().find(|s| s.retired_ms.is_none()).map(|s| s.id);
        let tx = self.db.unchecked_transaction()?;
        tx.execute(
            "UPDATE dlp_salts SET retired_ms = ?1, nonce = NULL, sealed = NULL
             WHERE retired_ms IS NULL",
            params![now_ms() as i64],
        )?;
        let made = self.insert_salt(&tx, by)?;
        tx.commit()?;
        // The old sealed bytes out of the write-ahead log too (a checkpoint copies and
        // truncates it; the database's freed pages were overwritten by `secure_delete`).
        self.db.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        Ok((made, old))
    }

    fn new_salt(&mut self, by: &str) -> Result<SaltInfo, KeyError> {
        let tx = self.db.unchecked_transaction()?;
        let made = self.insert_salt(&tx, by)?;
        tx.commit()?;
        Ok(made)
    }

    fn insert_salt(&self, tx: &rusqlite::Transaction<'_>, by: &str) -> Result<SaltInfo, KeyError> {
        let mut salt = [0u8; 32];
        self.rng.fill(&mut salt).map_err(|_| KeyError::Random)?;
        let id = sluice_dlp::salt_id(&salt);
        let sealed = self.seal(format!("dlp-salt:{id}").as_bytes(), &salt);
        zeroize::Zeroize::zeroize(&mut salt);
        let (nonce, sealed) = sealed?;
        let info = SaltInfo { id, created_ms: now_ms(), created_by: by.into(), retired_ms: None };
        tx.execute(
            "INSERT INTO dlp_salts (id, nonce, sealed, created_ms, created_by)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![info.id, &nonce[..], sealed, info.created_ms as i64, by],
        )?;
        Ok(info)
    }

    /// Whether a provider key named `name` is stored.
    pub fn has(&self, name: &str) -> Result<bool, KeyError> {
        Ok(self
            .db
            .query_row("SELECT 1 FROM keys WHERE name = ?1", params![name], |_| Ok(()))
            .optional()?
            .is_some())
    }
}

/// A key's fingerprint, as request records show a client's key.
pub fn fingerprint(key: &str) -> String {
    format!("sha256:{}", &hex(&Sha256::digest(key.as_bytes()))[..12])
}

#[cfg(test)]
#[path = "keystore_tests.rs"]
mod tests;
