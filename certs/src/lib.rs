//! # sluice-certs
//!
//! The enterprise CA the interception engine re-terminates TLS with, the leaves it mints (one
//! reused ECDSA P-256 key, SAN = the server name, bounded validity, random serial, AKI/SKI),
//! a bounded LRU cache of minted leaves with a rustls certificate resolver over it, and the
//! upstream trust store (Mozilla's roots plus an optional extra bundle), and the fleet's PKI
//! (`fleet`: the data-plane link's CA and the TLS of both its ends). No sockets.

pub mod fleet;

use std::fmt;
use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use lru::LruCache;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::RootCertStore;
use rustls::crypto::ring::sign::any_supported_type;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use time::OffsetDateTime;

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The CA key file can be read by group or others.
    #[error(
        "{path}: the CA private key is readable by group or others (mode {mode:o}); run `chmod 600 {path}`"
    )]
    KeyPermissions {
        /// The key file.
        path: PathBuf,
        /// Its mode bits.
        mode: u32,
    },
    /// PEM or DER content that is not what was expected.
    #[error("{path}: {what}")]
    BadPem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// The CA certificate is not a CA, or its key does not match.
    #[error("enterprise CA: {0}")]
    BadCa(String),
    /// The name cannot be put in a certificate.
    #[error(
        "cannot mint a certificate for `{0}`: expected a DNS name in A-label form or an IP address"
    )]
    BadName(String),
    /// Certificate generation failed.
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// rustls refused a key.
    #[error("rustls: {0}")]
    Rustls(#[from] rustls::Error),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CertError + '_ {
    move |source| CertError::Io { path: path.to_owned(), source }
}

/// The enterprise CA: certificate and signing key.
pub struct EnterpriseCa {
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
    not_after: SystemTime,
}

impl fmt::Debug for EnterpriseCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnterpriseCa").field("not_after", &self.not_after).finish_non_exhaustive()
    }
}

#[cfg(unix)]
fn check_key_mode(path: &Path) -> Result<(), CertError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).map_err(io_err(path))?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(CertError::KeyPermissions { path: path.to_owned(), mode });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_key_mode(_: &Path) -> Result<(), CertError> {
    Ok(())
}

impl EnterpriseCa {
    /// Loads the CA certificate and key (PEM; ECDSA or RSA; PKCS#8, SEC1 or PKCS#1). A key
    /// file readable by group or others is refused.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Self, CertError> {
        check_key_mode(key_path)?;
        let cert_pem = std::fs::read_to_string(cert_path).map_err(io_err(cert_path))?;
        let key_pem = std::fs::read_to_string(key_path).map_err(io_err(key_path))?;
        let cert_der =
            CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|e| CertError::BadPem {
                path: cert_path.to_owned(),
                what: format!("no PEM certificate: {e}"),
            })?;
        let key_der =
            PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| CertError::BadPem {
                path: key_path.to_owned(),
                what: format!("no PEM private key: {e}"),
            })?;
        let key = KeyPair::try_from(&key_der).map_err(|e| CertError::BadPem {
            path: key_path.to_owned(),
            what: format!("unsupported private key: {e}"),
        })?;
        Self::from_parts(cert_der, cert_pem, key)
    }

    fn from_parts(
        cert_der: CertificateDer<'static>,
        cert_pem: String,
        key: KeyPair,
    ) -> Result<Self, CertError> {
        let (_, x509) = x509_parser::parse_x509_certificate(&cert_der)
            .map_err(|e| CertError::BadCa(format!("unreadable certificate: {e}")))?;
        if !x509.is_ca() {
            return Err(CertError::BadCa(
                "the certificate is not a CA (basicConstraints CA:FALSE)".into(),
            ));
        }
        if &*x509.public_key().subject_public_key.data != key.public_key_raw() {
            return Err(CertError::BadCa("the private key does not match the certificate".into()));
        }
        let not_after = SystemTime::UNIX_EPOCH
            + Duration::from_secs(
                u64::try_from(x509.validity().not_after.timestamp()).unwrap_or(0),
            );
        let issuer = Issuer::from_ca_cert_der(&cert_der, key)?;
        Ok(EnterpriseCa { cert_der, cert_pem, issuer, not_after })
    }

    /// Generates a CA for labs and first deployments: ECDSA P-256, CA:true with pathlen 0,
    /// keyCertSign and cRLSign, valid ten years. Writes `ca.crt` (0644) and `ca.key` (0600) in
    /// `dir`; refuses to overwrite an existing key.
    pub fn init(dir: &Path, common_name: &str) -> Result<(PathBuf, PathBuf), CertError> {
        let key_path = dir.join("ca.key");
        let cert_path = dir.join("ca.crt");
        if key_path.exists() {
            return Err(CertError::Io {
                path: key_path,
                source: std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "a CA key is already there; not overwriting it",
                ),
            });
        }
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        dn.push(DnType::OrganizationName, "Sluice");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(3650);
        params.serial_number = Some(random_serial());
        let cert = params.self_signed(&key)?;
        write_private(&key_path, key.serialize_pem().as_bytes())?;
        std::fs::write(&cert_path, cert.pem()).map_err(io_err(&cert_path))?;
        Ok((cert_path, key_path))
    }

    /// The CA certificate, PEM (never the key).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// End of the CA's validity.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }
}

fn write_private(path: &Path, data: &[u8]) -> Result<(), CertError> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(io_err(path))?;
    f.write_all(data).map_err(io_err(path))
}

fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    // rustls' provider gives us a CSPRNG without another dependency.
    let rng = rustls::crypto::ring::default_provider().secure_random;
    if rng.fill(&mut bytes).is_err() {
        // Fall back to time-derived bytes; serials must be unique, not secret.
        let t =
            SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_nanos();
        bytes.copy_from_slice(&t.to_be_bytes());
    }
    bytes[0] &= 0x7f; // positive
    SerialNumber::from_slice(&bytes)
}

/// What a minted leaf names.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LeafName {
    /// A DNS name (A-label form, lowercase).
    Dns(String),
    /// An IP address (IP-literal or absent SNI: the original destination).
    Ip(IpAddr),
}

impl LeafName {
    /// The name for an SNI, or the original destination when there is none or it is an IP
    /// literal.
    pub fn for_sni(sni: Option<&str>, original_dst: IpAddr) -> Result<LeafName, CertError> {
        match sni {
            None => Ok(LeafName::Ip(original_dst)),
            Some(s) => match s.parse::<IpAddr>() {
                Ok(ip) => Ok(LeafName::Ip(ip)),
                Err(_) => {
                    let s = s.strip_suffix('.').unwrap_or(s).to_ascii_lowercase();
                    let ok = !s.is_empty()
                        && s.len() <= 253
                        && s.split('.').all(|l| {
                            !l.is_empty()
                                && l.len() <= 63
                                && l.bytes()
                                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                        });
                    if ok { Ok(LeafName::Dns(s)) } else { Err(CertError::BadName(s)) }
                }
            },
        }
    }
}

/// Mints leaves signed by the enterprise CA, with one reused P-256 key, and caches them (LRU).
pub struct Minter {
    ca: EnterpriseCa,
    leaf_key: KeyPair,
    signing_key: Arc<dyn rustls::sign::SigningKey>,
    validity: Duration,
    cache: Mutex<LruCache<LeafName, Arc<CertifiedKey>>>,
}

impl fmt::Debug for Minter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Minter")
            .field("ca", &self.ca)
            .field("validity", &self.validity)
            .finish_non_exhaustive()
    }
}

/// Default leaf validity.
pub const DEFAULT_VALIDITY: Duration = Duration::from_secs(7 * 24 * 3600);

impl Minter {
    /// A minter over `ca`, leaves valid `validity` (never beyond the CA), caching `capacity`.
    pub fn new(ca: EnterpriseCa, validity: Duration, capacity: usize) -> Result<Self, CertError> {
        let leaf_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let der = PrivateKeyDer::try_from(leaf_key.serialize_der())
            .map_err(|e| CertError::BadCa(e.to_string()))?;
        let signing_key = any_supported_type(&der)?;
        let cap = NonZeroUsize::new(capacity.max(1)).unwrap_or(NonZeroUsize::MIN);
        Ok(Minter { ca, leaf_key, signing_key, validity, cache: Mutex::new(LruCache::new(cap)) })
    }

    /// The CA.
    pub fn ca(&self) -> &EnterpriseCa {
        &self.ca
    }

    /// Number of cached leaves.
    pub fn cached(&self) -> usize {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// The leaf for `name`, from the cache or minted now.
    pub fn leaf(&self, name: &LeafName) -> Result<Arc<CertifiedKey>, CertError> {
        if let Some(k) = self.cache.lock().unwrap_or_else(PoisonError::into_inner).get(name) {
            return Ok(k.clone());
        }
        let key = Arc::new(self.mint(name)?);
        self.cache.lock().unwrap_or_else(PoisonError::into_inner).put(name.clone(), key.clone());
        Ok(key)
    }

    fn mint(&self, name: &LeafName) -> Result<CertifiedKey, CertError> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        let (cn, san) = match name {
            LeafName::Dns(d) => (d.clone(), SanType::DnsName(d.as_str().try_into()?)),
            LeafName::Ip(ip) => (ip.to_string(), SanType::IpAddress(*ip)),
        };
        dn.push(DnType::CommonName, cn);
        params.distinguished_name = dn;
        params.subject_alt_names = vec![san];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial());
        let now = SystemTime::now();
        let end = (now + self.validity).min(self.ca.not_after);
        params.not_before = OffsetDateTime::from(now - Duration::from_secs(3600));
        params.not_after = OffsetDateTime::from(end);
        let cert = params.signed_by(&self.leaf_key, &self.ca.issuer)?;
        Ok(CertifiedKey::new(
            vec![cert.der().clone(), self.ca.cert_der.clone()],
            self.signing_key.clone(),
        ))
    }
}

/// rustls certificate resolver over a [`Minter`]: the leaf for the ClientHello's SNI, or for
/// the original destination when there is none.
#[derive(Debug)]
pub struct MintingResolver {
    minter: Arc<Minter>,
    original_dst: IpAddr,
}

impl MintingResolver {
    /// A resolver for one connection whose original destination was `original_dst`.
    pub fn new(minter: Arc<Minter>, original_dst: IpAddr) -> Self {
        MintingResolver { minter, original_dst }
    }
}

impl ResolvesServerCert for MintingResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = LeafName::for_sni(hello.server_name(), self.original_dst).ok()?;
        self.minter.leaf(&name).ok()
    }
}

/// The roots upstream certificates are verified against: Mozilla's (webpki-roots), plus the
/// certificates of `extra` (a PEM bundle) if given.
pub fn upstream_roots(extra: Option<&Path>) -> Result<RootCertStore, CertError> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = extra {
        let pem = std::fs::read(path).map_err(io_err(path))?;
        let mut n = 0;
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert =
                cert.map_err(|e| CertError::BadPem { path: path.to_owned(), what: e.to_string() })?;
            roots
                .add(cert)
                .map_err(|e| CertError::BadPem { path: path.to_owned(), what: e.to_string() })?;
            n += 1;
        }
        if n == 0 {
            return Err(CertError::BadPem {
                path: path.to_owned(),
                what: "no certificate in the bundle".into(),
            });
        }
    }
    Ok(roots)
}
