//! The fleet's PKI (ARCHITECTURE.md, "The fleet"): a private CA that control keeps, the
//! server certificate of control's link listener, each data plane's client certificate
//! (issued from a signing request, so a data plane's key never leaves where it was made), and
//! the rustls configurations of both ends of the link over TCP. No sockets.
//!
//! Control's directory (`STATE/fleet/`) holds `ca.crt`, `ca.key`, `link.crt` and `link.key`;
//! a data plane's (`sluicectl fleet enrol NAME --out DIR`) holds `ca.crt`, `dataplane.crt`
//! and `dataplane.key`. Keys are written 0600 and refused when group or others can read them.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{
    CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::{CertError, EnterpriseCa, check_key_mode, io_err, random_serial, write_private};

/// The DNS name in control's link certificate; data planes verify control by it (and by the
/// fleet CA, which issues nothing else as a server).
pub const CONTROL_NAME: &str = "sluice-control";
/// The ALPN protocol both ends of the link speak.
pub const ALPN: &[u8] = b"sluice-link";
/// Validity of a data plane's certificate.
pub const DATAPLANE_DAYS: i64 = 825;

/// Longest data plane name.
const NAME_MAX: usize = 64;

/// Whether `name` can name a data plane in the fleet: 1–64 of `A-Z a-z 0-9 . _ -`, not
/// starting with a dot or dash.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= NAME_MAX
        && !name.starts_with(['.', '-'])
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Hex SHA-256 of a certificate's DER: how control knows an enrolled certificate.
pub fn fingerprint(der: &[u8]) -> String {
    Sha256::digest(der).iter().map(|b| format!("{b:02x}")).collect()
}

/// A certificate issued to a data plane.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// Hex SHA-256 of its DER.
    pub sha256: String,
    /// Hex serial number.
    pub serial: String,
    /// End of its validity, Unix seconds.
    pub not_after: u64,
}

/// The fleet CA, kept by control.
#[derive(Debug)]
pub struct FleetCa {
    dir: PathBuf,
    ca: EnterpriseCa,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

fn unix_s(t: OffsetDateTime) -> u64 {
    u64::try_from(t.unix_timestamp()).unwrap_or(0)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl FleetCa {
    /// Whether `dir` holds a fleet CA.
    pub fn exists(dir: &Path) -> bool {
        dir.join("ca.key").exists()
    }

    /// Makes the fleet CA in `dir` (refusing to replace one) and control's link certificate.
    pub fn create(dir: &Path) -> Result<Self, CertError> {
        let mut b = std::fs::DirBuilder::new();
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
        b.recursive(true).create(dir).map_err(io_err(dir))?;
        EnterpriseCa::init(dir, "Sluice fleet CA")?;
        let fleet = Self::open_ca(dir)?;
        fleet.issue_link_cert()?;
        Ok(fleet)
    }

    /// Loads the fleet CA of `dir`; makes control's link certificate when it is missing.
    pub fn load(dir: &Path) -> Result<Self, CertError> {
        let fleet = Self::open_ca(dir)?;
        if !dir.join("link.key").exists() {
            fleet.issue_link_cert()?;
        }
        Ok(fleet)
    }

    fn open_ca(dir: &Path) -> Result<Self, CertError> {
        let ca = EnterpriseCa::load(&dir.join("ca.crt"), &dir.join("ca.key"))?;
        Ok(FleetCa { dir: dir.to_owned(), ca })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        self.ca.cert_pem()
    }

    /// Hex SHA-256 of the CA certificate.
    pub fn sha256(&self) -> String {
        fingerprint(self.ca.cert_der())
    }

    fn issue_link_cert(&self) -> Result<(), CertError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, CONTROL_NAME);
        dn.push(DnType::OrganizationName, "Sluice fleet");
        params.distinguished_name = dn;
        params.subject_alt_names = vec![SanType::DnsName(
            CONTROL_NAME.try_into().map_err(|_| CertError::BadName(CONTROL_NAME.into()))?,
        )];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let t = now();
        params.not_before = t - time::Duration::hours(1);
        params.not_after = t + time::Duration::days(3650);
        params.serial_number = Some(random_serial());
        let cert = params.signed_by(&key, &self.ca.issuer)?;
        let key_path = self.dir.join("link.key");
        let _ = std::fs::remove_file(&key_path);
        write_private(&key_path, key.serialize_pem().as_bytes())?;
        let cert_path = self.dir.join("link.crt");
        std::fs::write(&cert_path, cert.pem()).map_err(io_err(&cert_path))
    }

    /// Signs a data plane's certificate request for `name`. Only the request's public key is
    /// taken (its signature checked): the subject is `name`, the use client authentication,
    /// whatever the request asked for.
    pub fn sign_dataplane(&self, name: &str, csr_pem: &str) -> Result<Issued, CertError> {
        if !valid_name(name) {
            return Err(CertError::BadName(name.into()));
        }
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        dn.push(DnType::OrganizationName, "Sluice fleet");
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let t = now();
        params.not_before = t - time::Duration::hours(1);
        params.not_after = t + time::Duration::days(DATAPLANE_DAYS);
        let serial = random_serial();
        params.serial_number = Some(serial.clone());
        let not_after = unix_s(params.not_after);
        let signed = CertificateSigningRequestParams { params, public_key: csr.public_key }
            .signed_by(&self.ca.issuer)?;
        Ok(Issued {
            sha256: fingerprint(signed.der()),
            cert_pem: signed.pem(),
            serial: hex(&serial.to_bytes()),
            not_after,
        })
    }

    /// The link listener's TLS: control's link certificate, and a client certificate issued
    /// by the fleet CA required of every peer (which certificates are enrolled, and not
    /// revoked, control checks after the handshake).
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, CertError> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.cert_der().clone())?;
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| CertError::BadCa(format!("fleet client verifier: {e}")))?;
        let (certs, key) = load_pair(&self.dir.join("link.crt"), &self.dir.join("link.key"))?;
        let mut cfg = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs, key)?;
        cfg.alpn_protocols = vec![ALPN.to_vec()];
        Ok(Arc::new(cfg))
    }
}

fn load_pair(
    cert: &Path,
    key: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), CertError> {
    check_key_mode(key)?;
    let pem = std::fs::read(cert).map_err(io_err(cert))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError::BadPem { path: cert.to_owned(), what: e.to_string() })?;
    if certs.is_empty() {
        return Err(CertError::BadPem { path: cert.to_owned(), what: "no certificate".into() });
    }
    let key_pem = std::fs::read(key).map_err(io_err(key))?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| CertError::BadPem { path: key.to_owned(), what: e.to_string() })?;
    Ok((certs, key))
}

/// A new key and a certificate request for data plane `name`: (key PEM, request PEM).
pub fn dataplane_request(name: &str) -> Result<(String, String), CertError> {
    if !valid_name(name) {
        return Err(CertError::BadName(name.into()));
    }
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    let csr = params.serialize_request(&key)?;
    Ok((key.serialize_pem(), csr.pem()?))
}

/// Writes an enrolled data plane's files in `dir`: `ca.crt`, `dataplane.crt`, and
/// `dataplane.key` (0600; refusing to replace a key that is there).
pub fn write_enrolment(
    dir: &Path,
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<(), CertError> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    write_private(&dir.join("dataplane.key"), key_pem.as_bytes())?;
    for (file, text) in [("ca.crt", ca_pem), ("dataplane.crt", cert_pem)] {
        let path = dir.join(file);
        std::fs::write(&path, text).map_err(io_err(&path))?;
    }
    Ok(())
}

/// A data plane's end of the link, from its enrolment directory.
#[derive(Debug, Clone)]
pub struct DataplaneTls {
    /// The client configuration: the fleet CA as the only root, the data plane's certificate.
    pub config: Arc<ClientConfig>,
    /// The name its certificate was issued for.
    pub name: String,
    /// End of its certificate's validity.
    pub not_after: SystemTime,
}

/// Loads a data plane's enrolment directory (see [`write_enrolment`]).
pub fn dataplane_tls(dir: &Path) -> Result<DataplaneTls, CertError> {
    let ca_path = dir.join("ca.crt");
    let ca_pem = std::fs::read(&ca_path).map_err(io_err(&ca_path))?;
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(&ca_pem) {
        let c = c.map_err(|e| CertError::BadPem { path: ca_path.clone(), what: e.to_string() })?;
        roots.add(c)?;
    }
    if roots.is_empty() {
        return Err(CertError::BadPem { path: ca_path, what: "no certificate".into() });
    }
    let cert_path = dir.join("dataplane.crt");
    let (certs, key) = load_pair(&cert_path, &dir.join("dataplane.key"))?;
    let (_, x509) = x509_parser::parse_x509_certificate(&certs[0]).map_err(|e| {
        CertError::BadPem { path: cert_path.clone(), what: format!("unreadable certificate: {e}") }
    })?;
    let name = x509
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .filter(|n| valid_name(n))
        .map(str::to_owned)
        .ok_or_else(|| CertError::BadPem {
            path: cert_path.clone(),
            what: "no data plane name (common name) in the certificate".into(),
        })?;
    let not_after = SystemTime::UNIX_EPOCH
        + Duration::from_secs(u64::try_from(x509.validity().not_after.timestamp()).unwrap_or(0));
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(DataplaneTls { config: Arc::new(config), name, not_after })
}

#[cfg(test)]
#[path = "fleet_tests.rs"]
mod tests;
