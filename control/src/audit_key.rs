//! Control's checkpoint signing key (ARCHITECTURE.md, "Evidence"): an Ed25519 secret drawn
//! from the OS at first start and kept in the state directory, readable by its owner only
//! (`audit-signing.key`, 64 hex digits). The daemon refuses a key file others can read. Its
//! public half is what auditors pin (`GET /v1/audit/key`, `sluicectl audit key`).

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use sluice_audit::{Link, Signer};

/// The key file's name in the state directory.
pub const KEY_FILE: &str = "audit-signing.key";

/// Why the key could not be had.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyFileError {
    /// Reading or writing it failed.
    #[error("audit signing key {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Others may read it.
    #[error("audit signing key {0}: readable by others (mode {1:o}); it must be 0600")]
    Exposed(String, u32),
    /// Not 64 hex digits.
    #[error("audit signing key {0}: not 64 hex digits")]
    Malformed(String),
    /// The OS gave no randomness.
    #[error("audit signing key: no randomness from the OS")]
    Random,
}

/// The signer of the key in `dir`, made (0600) if there is none.
pub fn load_or_create(dir: &Path) -> Result<Signer, KeyFileError> {
    let path = dir.join(KEY_FILE);
    let shown = path.display().to_string();
    let io = |source| KeyFileError::Io { path: shown.clone(), source };
    match std::fs::metadata(&path) {
        Ok(m) => {
            let mode = m.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(KeyFileError::Exposed(shown, mode));
            }
            let text = std::fs::read_to_string(&path).map_err(io)?;
            let secret = Link::from_hex(text.trim()).ok_or(KeyFileError::Malformed(shown))?;
            Ok(Signer::from_secret(&secret.0))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut secret = [0u8; 32];
            ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret)
                .map_err(|_| KeyFileError::Random)?;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(io)?;
            f.write_all(format!("{}\n", Link(secret)).as_bytes()).map_err(io)?;
            f.sync_all().map_err(io)?;
            let signer = Signer::from_secret(&secret);
            zeroize::Zeroize::zeroize(&mut secret);
            Ok(signer)
        }
        Err(e) => Err(io(e)),
    }
}

/// The public key as 64 hex digits.
pub fn public_hex(signer: &Signer) -> String {
    Link(signer.public().to_bytes()).to_hex()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_once_private_and_refused_when_exposed() {
        let dir = std::env::temp_dir().join(format!("sluice-audit-key-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let a = load_or_create(&dir).unwrap();
        let mode = std::fs::metadata(dir.join(KEY_FILE)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let b = load_or_create(&dir).unwrap();
        assert_eq!(public_hex(&a), public_hex(&b), "the same key at the next start");
        std::fs::set_permissions(dir.join(KEY_FILE), std::fs::Permissions::from_mode(0o644))
            .unwrap();
        assert!(matches!(load_or_create(&dir), Err(KeyFileError::Exposed(_, 0o644))));
        std::fs::set_permissions(dir.join(KEY_FILE), std::fs::Permissions::from_mode(0o600))
            .unwrap();
        std::fs::write(dir.join(KEY_FILE), "zz\n").unwrap();
        assert!(matches!(load_or_create(&dir), Err(KeyFileError::Malformed(_))));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
