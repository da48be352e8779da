#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::sync::Arc;

use rustls::pki_types::ServerName;
use rustls::{ClientConnection, ServerConnection};

use super::*;

fn tmp(tag: &str) -> PathBuf {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let d = std::env::temp_dir().join(format!("sluice-fleet-{tag}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// Enrols `name` under `ca` as `sluicectl fleet enrol` does, into a directory of its own.
fn enrol(ca: &FleetCa, name: &str) -> (PathBuf, Issued) {
    let (key, csr) = dataplane_request(name).unwrap();
    let issued = ca.sign_dataplane(name, &csr).unwrap();
    let dir = tmp("dp");
    write_enrolment(&dir, ca.cert_pem(), &issued.cert_pem, &key).unwrap();
    (dir, issued)
}

/// Runs a handshake in memory: Ok with the server's view of the client's certificate.
fn handshake(
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
) -> Result<Option<Vec<u8>>, rustls::Error> {
    let mut s = ServerConnection::new(server).unwrap();
    let mut c = ClientConnection::new(client, ServerName::try_from(CONTROL_NAME).unwrap()).unwrap();
    for _ in 0..20 {
        let mut buf = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut buf).unwrap();
        }
        if !buf.is_empty() {
            s.read_tls(&mut &buf[..]).unwrap();
            s.process_new_packets()?;
        }
        let mut buf = Vec::new();
        while s.wants_write() {
            s.write_tls(&mut buf).unwrap();
        }
        if !buf.is_empty() {
            c.read_tls(&mut &buf[..]).unwrap();
            c.process_new_packets()?;
        }
        if !c.is_handshaking() && !s.is_handshaking() {
            return Ok(s.peer_certificates().map(|c| c[0].to_vec()));
        }
    }
    panic!("the handshake did not finish");
}

#[test]
fn an_enrolled_dataplane_meets_control_and_is_known_by_its_fingerprint() {
    let dir = tmp("ca");
    let ca = FleetCa::create(&dir).unwrap();
    let (dp, issued) = enrol(&ca, "edge-1");
    let tls = dataplane_tls(&dp).unwrap();
    assert_eq!(tls.name, "edge-1");
    assert!(tls.not_after > SystemTime::now() + Duration::from_secs(800 * 86_400));
    let peer = handshake(ca.server_config().unwrap(), tls.config).unwrap().unwrap();
    assert_eq!(fingerprint(&peer), issued.sha256);
    // The CA is loaded again as control restarts, and still knows the data plane.
    let again = FleetCa::load(&dir).unwrap();
    assert_eq!(again.sha256(), ca.sha256());
    assert!(handshake(again.server_config().unwrap(), dataplane_tls(&dp).unwrap().config).is_ok());
    assert!(FleetCa::create(&dir).is_err(), "a fleet CA is never replaced");
    for f in ["ca.key", "link.key"] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join(f)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{f}");
    }
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&dp);
}

#[test]
fn strangers_are_refused_and_a_dataplane_cannot_pose_as_control() {
    let ca = FleetCa::create(&tmp("ca")).unwrap();
    let other = FleetCa::create(&tmp("other")).unwrap();
    // A certificate from another fleet's CA.
    let (stranger, _) = enrol(&other, "edge-1");
    // It trusts our control (so only its own certificate is in question).
    let mut roots = RootCertStore::empty();
    roots.add(ca.ca.cert_der().clone()).unwrap();
    let (certs, key) =
        load_pair(&stranger.join("dataplane.crt"), &stranger.join("dataplane.key")).unwrap();
    let cfg = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots.clone())
        .with_client_auth_cert(certs, key)
        .unwrap();
    assert!(handshake(ca.server_config().unwrap(), Arc::new(cfg)).is_err(), "another CA's");
    // No certificate at all.
    let bare = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    assert!(handshake(ca.server_config().unwrap(), Arc::new(bare)).is_err(), "no certificate");
    // A certificate of the fleet for client use only, even one that names `sluice-control`,
    // serving as control: the data planes refuse it (only control's link certificate is for
    // serving). The same certificate for server use is accepted: the use alone decides.
    let (victim, _) = enrol(&ca, "edge-3");
    let serving_as = |eku: ExtendedKeyUsagePurpose| {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::new(vec![CONTROL_NAME.to_owned()]).unwrap();
        params.extended_key_usages = vec![eku];
        params.is_ca = IsCa::ExplicitNoCa;
        let cert = params.signed_by(&key, &ca.ca.issuer).unwrap();
        let key = PrivateKeyDer::try_from(key.serialize_der()).unwrap();
        let server = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], key)
            .unwrap();
        handshake(Arc::new(server), dataplane_tls(&victim).unwrap().config)
    };
    assert!(serving_as(ExtendedKeyUsagePurpose::ClientAuth).is_err(), "a client certificate");
    assert!(serving_as(ExtendedKeyUsagePurpose::ServerAuth).is_ok(), "a server certificate");
}

#[test]
fn a_request_gives_only_its_key_and_bad_requests_and_names_are_refused() {
    let ca = FleetCa::create(&tmp("ca")).unwrap();
    // The request names someone else: the certificate names whom control enrolled.
    let (key, csr) = dataplane_request("edge-9").unwrap();
    let issued = ca.sign_dataplane("edge-1", &csr).unwrap();
    let dir = tmp("dp");
    write_enrolment(&dir, ca.cert_pem(), &issued.cert_pem, &key).unwrap();
    assert_eq!(dataplane_tls(&dir).unwrap().name, "edge-1");
    assert!(write_enrolment(&dir, ca.cert_pem(), &issued.cert_pem, &key).is_err(), "key kept");
    // A request whose signature does not hold, and text that is no request.
    // (one base64 digit in the signature, near the end, changed)
    let mut lines: Vec<String> = csr.lines().map(str::to_owned).collect();
    let sig = lines.len() - 2;
    let flipped = if lines[sig].starts_with('A') { "B" } else { "A" };
    lines[sig].replace_range(..1, flipped);
    let broken = lines.join("\n");
    assert!(ca.sign_dataplane("edge-1", &broken).is_err());
    assert!(ca.sign_dataplane("edge-1", "not a request").is_err());
    for bad in ["", "-x", ".x", "a b", "a/b", "é", &"x".repeat(65)] {
        assert!(!valid_name(bad), "{bad:?}");
        assert!(ca.sign_dataplane(bad, &csr).is_err(), "{bad:?}");
        assert!(dataplane_request(bad).is_err(), "{bad:?}");
    }
    assert!(valid_name("edge-1.branch_a"));
}
