//! The API's TLS: the configured certificate, or a self-signed one made on first start and
//! kept in the state directory (key readable by its owner only).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The certificate and key files to use: the configured ones, or `api.crt`/`api.key` in
/// `state_dir`, generated (self-signed, for `names`) when absent.
pub fn cert_files(
    cert: Option<&Path>,
    key: Option<&Path>,
    state_dir: &Path,
    names: &[String],
) -> Result<(PathBuf, PathBuf)> {
    if let (Some(c), Some(k)) = (cert, key) {
        return Ok((c.to_owned(), k.to_owned()));
    }
    let (c, k) = (state_dir.join("api.crt"), state_dir.join("api.key"));
    if c.exists() && k.exists() {
        return Ok((c, k));
    }
    let generated = rcgen::generate_simple_self_signed(names.to_vec())
        .context("generating the API's self-signed certificate")?;
    write_private(&k, generated.signing_key.serialize_pem().as_bytes())?;
    std::fs::write(&c, generated.cert.pem()).with_context(|| format!("writing {}", c.display()))?;
    tracing::info!(cert = %c.display(), "generated a self-signed API certificate");
    Ok((c, k))
}

fn write_private(path: &Path, data: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(data)?;
    Ok(())
}

/// A rustls server configuration over the certificate and key files.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading {}", cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing {}", cert.display()))?;
    let key =
        PrivateKeyDer::from_pem_file(key).with_context(|| format!("reading {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the API certificate and key do not match")?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}
