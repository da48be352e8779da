//! The HTTPS client `sluicectl` uses for the control API (hyper over tokio-rustls): the
//! server certificate is verified against `--ca` / `SLUICE_CA` (the daemon's self-signed
//! certificate, or the CA that issued its certificate) or else Mozilla's roots; the token is
//! sent as a bearer token and never printed.

use std::path::Path;
use std::sync::Arc;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use rustls_pki_types::{CertificateDer, ServerName, pem::PemObject};
use tokio::net::TcpStream;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The URL is not `https://HOST[:PORT]`.
    #[error("{0}: expected https://HOST[:PORT]")]
    Url(String),
    /// The CA file.
    #[error("{path}: {message}")]
    Ca {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// Connecting, TLS or HTTP failed.
    #[error("{0}")]
    Transport(String),
}

/// A client of one control API.
#[derive(Debug, Clone)]
pub struct Client {
    host: String,
    port: u16,
    base: String,
    token: String,
    tls: Arc<rustls::ClientConfig>,
}

/// An answer.
#[derive(Debug)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// Body.
    pub body: Bytes,
}

fn transport(e: impl std::fmt::Display) -> ClientError {
    ClientError::Transport(e.to_string())
}

/// A TLS client configuration (HTTP/1.1) trusting `ca` (PEM) or Mozilla's roots.
pub fn tls(ca: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, ClientError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(path) => {
            let err = |m: String| ClientError::Ca { path: path.display().to_string(), message: m };
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .map_err(|e| err(e.to_string()))?
                .collect::<Result<_, _>>()
                .map_err(|e| err(e.to_string()))?;
            if certs.is_empty() {
                return Err(err("no certificate in the file".into()));
            }
            for c in certs {
                roots.add(c).map_err(|e| err(e.to_string()))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(transport)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(tls))
}

impl Client {
    /// A client for `url` (`https://host:port`), trusting `ca` (PEM) or Mozilla's roots.
    pub fn new(url: &str, token: &str, ca: Option<&Path>) -> Result<Client, ClientError> {
        let base = url.trim_end_matches('/');
        let rest = base.strip_prefix("https://").ok_or_else(|| ClientError::Url(url.into()))?;
        if rest.contains('/') || rest.is_empty() {
            return Err(ClientError::Url(url.into()));
        }
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => match p.parse() {
                Ok(p) => (h, p),
                Err(_) if rest.starts_with('[') && rest.ends_with(']') => (rest, 443),
                Err(_) => return Err(ClientError::Url(url.into())),
            },
            _ => (rest, 443),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
        Ok(Client { host, port, base: base.to_owned(), token: token.to_owned(), tls: tls(ca)? })
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<(Vec<u8>, &str)>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, ClientError> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| transport(format!("{}: {e}", self.base)))?;
        let name = ServerName::try_from(self.host.clone()).map_err(transport)?;
        let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| transport(format!("{}: TLS: {e}", self.base)))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .map_err(transport)?;
        tokio::spawn(conn);
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", format!("{}:{}", self.host, self.port))
            .header("authorization", format!("Bearer {}", self.token))
            .header("user-agent", concat!("sluicectl/", env!("CARGO_PKG_VERSION")));
        let body = match body {
            Some((b, ct)) => {
                req = req.header("content-type", ct);
                Full::new(Bytes::from(b))
            }
            None => Full::new(Bytes::new()),
        };
        let req = req.body(body).map_err(transport)?;
        sender.send_request(req).await.map_err(transport)
    }

    /// One call; the whole answer.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<(Vec<u8>, &str)>,
    ) -> Result<Reply, ClientError> {
        let resp = self.send(method, path, body).await?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.map_err(transport)?.to_bytes();
        Ok(Reply { status, body })
    }

    /// A streaming GET: `each` gets the body's chunks as they arrive (server-sent events),
    /// until the server closes or `each` returns false. A non-200 answer is returned whole.
    pub async fn stream(
        &self,
        path: &str,
        mut each: impl FnMut(&[u8]) -> bool,
    ) -> Result<Reply, ClientError> {
        let resp = self.send("GET", path, None).await?;
        let status = resp.status().as_u16();
        let mut body = resp.into_body();
        if status != 200 {
            let body = body.collect().await.map_err(transport)?.to_bytes();
            return Ok(Reply { status, body });
        }
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(transport)?;
            if let Some(data) = frame.data_ref()
                && !each(data)
            {
                break;
            }
        }
        Ok(Reply { status, body: Bytes::new() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let c = Client::new("https://127.0.0.1:8443/", "t", None).unwrap();
        assert_eq!((c.host.as_str(), c.port), ("127.0.0.1", 8443));
        let c = Client::new("https://[::1]:9", "t", None).unwrap();
        assert_eq!((c.host.as_str(), c.port), ("::1", 9));
        let c = Client::new("https://control.corp", "t", None).unwrap();
        assert_eq!((c.host.as_str(), c.port), ("control.corp", 443));
        for bad in ["http://x:1", "https://", "https://x:1/v1", "https://x:port"] {
            assert!(Client::new(bad, "t", None).is_err(), "{bad}");
        }
    }
}
