use super::*;

fn store(dir: &Path) -> KeyStore {
    KeyStore::open(&dir.join("keys.db"), &dir.join("keys.kek")).unwrap()
}

fn tempdir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("sluice-keys-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn keys_are_sealed_at_rest_and_open_only_with_their_kek() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempdir("seal");
    let mut s = store(&dir);
    let info = s.set("openai-prod", "sk-proj-SECRETSECRETSECRET", "admin").unwrap();
    assert_eq!(info.fingerprint, fingerprint("sk-proj-SECRETSECRETSECRET"));
    assert_eq!(s.list().unwrap(), vec![info]);
    assert_eq!(s.secrets().unwrap()[0].secret.expose(), "sk-proj-SECRETSECRETSECRET");
    drop(s);
    // Nothing of the key in the database's files, in clear.
    for f in std::fs::read_dir(&dir).unwrap() {
        let bytes = std::fs::read(f.unwrap().path()).unwrap();
        assert!(!bytes.windows(6).any(|w| w == b"SECRET"));
    }
    let mode = std::fs::metadata(dir.join("keys.kek")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    // Another key-encryption key opens nothing; none at all is refused while sealed keys
    // exist (a new one would open none of them).
    std::fs::write(dir.join("keys.kek"), [7u8; 32]).unwrap();
    assert!(store(&dir).secrets().unwrap().is_empty());
    std::fs::remove_file(dir.join("keys.kek")).unwrap();
    let refused = KeyStore::open(&dir.join("keys.db"), &dir.join("keys.kek"));
    assert!(matches!(refused, Err(KeyError::Kek { .. })));
    assert!(!dir.join("keys.kek").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_replaced_key_is_the_one_pushed_and_bad_input_is_refused() {
    let dir = tempdir("rotate");
    let mut s = store(&dir);
    s.set("k", "sk-old-000000000000000", "a").unwrap();
    s.set("k", "sk-new-111111111111111", "b").unwrap();
    let all = s.secrets().unwrap();
    assert_eq!((all.len(), all[0].secret.expose()), (1, "sk-new-111111111111111"));
    assert!(matches!(s.set("bad name", "x", "a"), Err(KeyError::Invalid(_))));
    assert!(matches!(s.set("k", "line\nbreak", "a"), Err(KeyError::Invalid(_))));
    assert!(matches!(s.set("k", "  ", "a"), Err(KeyError::Invalid(_))));
    assert!(matches!(s.set("virtual", "sk-x", "a"), Err(KeyError::Invalid(_))));
    assert!(s.delete("k").unwrap());
    assert!(!s.delete("k").unwrap());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_dlp_salt_is_made_once_kept_sealed_and_rotated() {
    let dir = tempdir("salt");
    let s = store(&dir);
    let first = s.dlp_salt().unwrap().unwrap();
    let raw = sluice_audit::Link::from_hex(first.salt.expose()).unwrap();
    assert_eq!(first.id, sluice_dlp::salt_id(&raw.0));
    drop(s);
    // The same salt after a restart, never in clear on disk.
    let mut s = store(&dir);
    assert_eq!(s.dlp_salt().unwrap().unwrap(), first);
    for f in std::fs::read_dir(&dir).unwrap() {
        let bytes = std::fs::read(f.unwrap().path()).unwrap();
        assert!(!bytes.windows(32).any(|w| w == raw.0));
        assert!(!bytes.windows(64).any(|w| w == first.salt.expose().as_bytes()));
    }
    // A rotation makes a new one and destroys the old: listed, never openable again.
    let (made, old) = s.rotate_salt("admin").unwrap();
    assert_eq!(old.as_deref(), Some(first.id.as_str()));
    let now = s.dlp_salt().unwrap().unwrap();
    assert_eq!((now.id.as_str(), made.created_by.as_str()), (made.id.as_str(), "admin"));
    assert_ne!(now.salt, first.salt);
    let listed = s.salts().unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!((listed[0].id.as_str(), listed[0].retired_ms), (made.id.as_str(), None));
    assert!(listed[1].retired_ms.is_some());
    let kept: Option<Vec<u8>> =
        s.db.query_row("SELECT sealed FROM dlp_salts WHERE id = ?1", [&first.id], |r| r.get(0))
            .unwrap();
    assert_eq!(kept, None);
    // Under another key-encryption key the salt does not open: it is retired and a new
    // one made (no data plane is left without a deployment salt).
    drop(s);
    std::fs::write(dir.join("keys.kek"), [7u8; 32]).unwrap();
    let s = store(&dir);
    let replaced = s.dlp_salt().unwrap().unwrap();
    assert_ne!(replaced.id, now.id);
    let listed = s.salts().unwrap();
    assert_eq!((listed.len(), listed[0].id.as_str()), (3, replaced.id.as_str()));
    assert!(listed[1].retired_ms.is_some());
    drop(s);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn virtual_keys_are_kept_as_hashes_and_revocable() {
    let dir = tempdir("virtual");
    let mut s = store(&dir);
    let (info, key) = s.issue("alice@corp", Some("finance")).unwrap();
    assert!(key.expose().starts_with("svk-") && key.expose().len() == 52);
    let pushed = s.link_virtual_keys().unwrap();
    assert_eq!(pushed.len(), 1);
    assert_eq!(pushed[0].sha256, hex(&Sha256::digest(key.expose().as_bytes())));
    assert_eq!(
        (pushed[0].user.as_str(), pushed[0].identity.as_deref()),
        ("alice@corp", Some("finance"))
    );
    let text = std::fs::read(dir.join("keys.db")).unwrap();
    assert!(!text.windows(key.expose().len()).any(|w| w == key.expose().as_bytes()));
    assert!(s.revoke(&info.id).unwrap());
    assert!(!s.revoke(&info.id).unwrap());
    assert!(s.link_virtual_keys().unwrap().is_empty());
    assert!(s.virtual_keys().unwrap()[0].revoked_ms.is_some());
    std::fs::remove_dir_all(&dir).unwrap();
}
