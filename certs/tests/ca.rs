//! The enterprise CA and minted leaves, verified by rustls as a client would.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::{ServerName, UnixTime};
use sluice_certs::{CertError, DEFAULT_VALIDITY, EnterpriseCa, LeafName, Minter, upstream_roots};

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sluice-certs-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn verify(
    ca: &EnterpriseCa,
    leaf: &rustls::sign::CertifiedKey,
    name: &str,
) -> Result<(), rustls::Error> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert_der().clone()).unwrap();
    let v = WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .unwrap();
    let name = ServerName::try_from(name.to_owned()).unwrap();
    v.verify_server_cert(&leaf.cert[0], &leaf.cert[1..], &name, &[], UnixTime::now()).map(|_| ())
}

#[test]
fn init_load_mint_verify() {
    let dir = tmpdir("mint");
    let (cert, key) = EnterpriseCa::init(&dir, "Test Enterprise CA").unwrap();
    assert!(
        matches!(EnterpriseCa::init(&dir, "again"), Err(CertError::Io { .. })),
        "never overwrites a CA key"
    );
    let ca = EnterpriseCa::load(&cert, &key).unwrap();
    assert!(ca.cert_pem().starts_with("-----BEGIN CERTIFICATE-----"));
    let ten_years = SystemTime::now() + Duration::from_secs(3640 * 24 * 3600);
    assert!(ca.not_after() > ten_years);
    let minter = Minter::new(ca, DEFAULT_VALIDITY, 2).unwrap();
    let leaf = minter.leaf(&LeafName::Dns("api.openai.com".into())).unwrap();
    assert_eq!(leaf.cert.len(), 2, "leaf and CA");
    verify(minter.ca(), &leaf, "api.openai.com").unwrap();
    assert!(verify(minter.ca(), &leaf, "chatgpt.com").is_err(), "SAN is exactly the SNI");
    // Cached: the same leaf again; the cache is bounded.
    let again = minter.leaf(&LeafName::Dns("api.openai.com".into())).unwrap();
    assert!(Arc::ptr_eq(&leaf, &again));
    let ip =
        minter.leaf(&LeafName::for_sni(None, "198.51.100.10".parse().unwrap()).unwrap()).unwrap();
    verify(minter.ca(), &ip, "198.51.100.10").unwrap();
    minter.leaf(&LeafName::Dns("chatgpt.com".into())).unwrap();
    assert_eq!(minter.cached(), 2);
    // Validity: 7 days by default.
    let (_, x) = x509_parser::parse_x509_certificate(&leaf.cert[0]).unwrap();
    let end = x.validity().not_after.timestamp() as u64;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    assert!(end <= now + 7 * 24 * 3600 + 5 && end >= now + 7 * 24 * 3600 - 60);
    assert!(x.serial.bits() > 64, "random serial");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn leaf_never_outlives_the_ca() {
    let dir = tmpdir("bound");
    let (cert, key) = EnterpriseCa::init(&dir, "Bound CA").unwrap();
    let ca = EnterpriseCa::load(&cert, &key).unwrap();
    let ca_end = ca.not_after();
    let minter = Minter::new(ca, Duration::from_secs(100 * 365 * 24 * 3600), 4).unwrap();
    let leaf = minter.leaf(&LeafName::Dns("example.org".into())).unwrap();
    let (_, x) = x509_parser::parse_x509_certificate(&leaf.cert[0]).unwrap();
    let end = UNIX_EPOCH + Duration::from_secs(x.validity().not_after.timestamp() as u64);
    assert!(end <= ca_end);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn refuses_readable_keys_and_bad_input() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tmpdir("perm");
    let (cert, key) = EnterpriseCa::init(&dir, "Perm CA").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = EnterpriseCa::load(&cert, &key).unwrap_err();
    assert!(err.to_string().contains("chmod 600"), "{err}");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    EnterpriseCa::load(&cert, &key).unwrap();
    let junk = dir.join("junk.crt");
    std::fs::write(&junk, "not a pem").unwrap();
    assert!(matches!(EnterpriseCa::load(&junk, &key), Err(CertError::BadPem { .. })));
    // Another CA's key does not match.
    let other = tmpdir("perm-other");
    let (_, other_key) = EnterpriseCa::init(&other, "Other").unwrap();
    assert!(matches!(EnterpriseCa::load(&cert, &other_key), Err(CertError::BadCa(_))));
    assert!(LeafName::for_sni(Some("b\u{fc}cher.de"), "192.0.2.1".parse().unwrap()).is_err());
    assert_eq!(
        LeafName::for_sni(Some("API.OpenAI.com."), "192.0.2.1".parse().unwrap()).unwrap(),
        LeafName::Dns("api.openai.com".into())
    );
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::remove_dir_all(&other).unwrap();
}

#[test]
fn upstream_roots_with_extra_bundle() {
    let dir = tmpdir("roots");
    let (cert, _) = EnterpriseCa::init(&dir, "Extra Root").unwrap();
    let base = upstream_roots(None).unwrap().len();
    assert!(base > 100, "Mozilla roots");
    assert_eq!(upstream_roots(Some(&cert)).unwrap().len(), base + 1);
    std::fs::write(dir.join("empty.pem"), "").unwrap();
    assert!(upstream_roots(Some(&dir.join("empty.pem"))).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}
