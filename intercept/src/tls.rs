//! TLS of both sides of an interception: the crypto provider, the upstream configuration
//! (strict verification, [`crate::verify`]), the client-side configuration (leaves minted by
//! the enterprise CA, ALPN) and what a failed client handshake means.

use std::net::IpAddr;
use std::sync::Arc;

use rustls::AlertDescription;
use sluice_certs::{Minter, MintingResolver};

/// ALPN protocols accepted from clients when the server speaks HTTP/2: `h2` first.
/// `http/1.0` is accepted (curl `--http1.0` offers only it) and spoken as HTTP/1.x.
pub const CLIENT_ALPN_H2: [&[u8]; 3] = [b"h2", b"http/1.1", b"http/1.0"];
/// ALPN protocols accepted from clients when the server speaks HTTP/1.1: the client gets
/// HTTP/1.1 when it offers it, and HTTP/2 (translated) when that is all it offers.
pub const CLIENT_ALPN_H1: [&[u8]; 3] = [b"http/1.1", b"http/1.0", b"h2"];

/// The crypto provider of both sides of an intercepted connection: rustls' *aws-lc-rs*
/// provider (its key exchange and hashing are faster than *ring*'s: X25519 was a quarter of
/// the CPU time of a new intercepted connection with *ring*; its default groups also offer
/// the X25519MLKEM768 post-quantum hybrid, which browsers use) with the AES-128-GCM suites
/// first. rustls and OpenSSL clients put AES-256-GCM-SHA384 first; its SHA-384 key schedule
/// was a seventh of that CPU time, while SHA-256 runs on the CPU's SHA extensions.
/// AES-128-GCM is TLS 1.3's mandatory suite and matches the 128-bit strength of X25519. The
/// client side honours this order (`ignore_client_order`) too.
pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    let mut p = rustls::crypto::aws_lc_rs::default_provider();
    // Stable: TLS 1.3 before TLS 1.2 as before, AES-128-GCM first within each.
    p.cipher_suites.sort_by_key(|s| {
        use rustls::CipherSuite as C;
        let aes128 = matches!(
            s.suite(),
            C::TLS13_AES_128_GCM_SHA256
                | C::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
                | C::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
        );
        (s.tls13().is_none(), !aes128)
    });
    Arc::new(p)
}

/// The upstream TLS configuration: strict verification against `roots`, ALPN http/1.1 (the
/// engine offers `h2` too, with a copy of it, when the client offered `h2`).
pub fn upstream_config(
    roots: rustls::RootCertStore,
) -> Result<rustls::ClientConfig, rustls::client::VerifierBuilderError> {
    let verifier = Arc::new(crate::verify::StrictVerifier::new(roots)?);
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|_| rustls::client::VerifierBuilderError::NoRootAnchors)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

/// The upstream configuration offering `h2` and `http/1.1`.
pub(crate) fn upstream_h2(h1: &rustls::ClientConfig) -> rustls::ClientConfig {
    let mut cfg = h1.clone();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    cfg
}

/// TLS toward clients: leaves minted for the SNI (for `no_sni_dst` when there is none),
/// ALPN [`CLIENT_ALPN_H2`] or [`CLIENT_ALPN_H1`] (rustls picks the first of ours the client
/// offered).
pub(crate) fn server_config(
    minter: &Arc<Minter>,
    no_sni_dst: IpAddr,
    prefer_h2: bool,
) -> Result<rustls::ServerConfig, rustls::Error> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(MintingResolver::new(minter.clone(), no_sni_dst)));
    let alpn: &[&[u8]] = if prefer_h2 { &CLIENT_ALPN_H2 } else { &CLIENT_ALPN_H1 };
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    cfg.ignore_client_order = true;
    Ok(cfg)
}

/// Why a client's handshake with the engine failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// The client refused the minted certificate (an alert of the certificate family): it
    /// does not trust the enterprise CA, or pins its server's key. Only this counts as
    /// pinning.
    CertificateRefused,
    /// No protocol the client offered in ALPN is one the engine speaks.
    NoCommonAlpn,
    /// The client broke the TLS protocol, or offered nothing the engine accepts.
    Protocol,
    /// The client closed or reset the connection mid-handshake, without saying why.
    Closed,
    /// The handshake took too long.
    TimedOut,
}

impl HandshakeFailure {
    /// The failure behind an error of the client-side handshake.
    pub fn of(e: &std::io::Error) -> Self {
        let Some(err) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) else {
            return if e.kind() == std::io::ErrorKind::TimedOut {
                HandshakeFailure::TimedOut
            } else {
                HandshakeFailure::Closed
            };
        };
        match err {
            rustls::Error::NoApplicationProtocol => HandshakeFailure::NoCommonAlpn,
            rustls::Error::AlertReceived(a) => match a {
                AlertDescription::BadCertificate
                | AlertDescription::UnsupportedCertificate
                | AlertDescription::CertificateRevoked
                | AlertDescription::CertificateExpired
                | AlertDescription::CertificateUnknown
                | AlertDescription::UnknownCA
                | AlertDescription::BadCertificateStatusResponse => {
                    HandshakeFailure::CertificateRefused
                }
                AlertDescription::NoApplicationProtocol => HandshakeFailure::NoCommonAlpn,
                _ => HandshakeFailure::Protocol,
            },
            _ => HandshakeFailure::Protocol,
        }
    }

    /// The flow record's reason, given what the rule does on inspection failures.
    pub fn reason(self, fail_open: bool) -> &'static str {
        match (self, fail_open) {
            (HandshakeFailure::CertificateRefused, true) => {
                "client refused the minted certificate (pinning?): its next connections are spliced"
            }
            (HandshakeFailure::CertificateRefused, false) => {
                "client refused the minted certificate (pinning?): blocked (on_inspect_failure = block)"
            }
            (HandshakeFailure::NoCommonAlpn, _) => {
                "client offered no application protocol the engine inspects: refused"
            }
            (HandshakeFailure::Protocol, _) => "client TLS handshake failed: protocol error",
            (HandshakeFailure::Closed, _) => "client closed the connection during the handshake",
            (HandshakeFailure::TimedOut, _) => "client TLS handshake timed out",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aes_128_gcm_is_preferred_and_no_suite_is_lost() {
        let ours: Vec<_> = provider().cipher_suites.iter().map(|s| s.suite()).collect();
        assert_eq!(ours[0], rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
        let default = rustls::crypto::aws_lc_rs::default_provider();
        assert_eq!(ours.len(), default.cipher_suites.len());
        assert!(default.cipher_suites.iter().all(|s| ours.contains(&s.suite())));
        // TLS 1.3 suites stay ahead of TLS 1.2 ones.
        let p = provider();
        let first12 = p.cipher_suites.iter().position(|s| s.tls13().is_none());
        assert!(first12.is_none_or(|i| p.cipher_suites[i..].iter().all(|s| s.tls13().is_none())));
    }

    #[test]
    fn only_certificate_alerts_count_as_pinning() {
        let io = |e: rustls::Error| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
        let of = |e| HandshakeFailure::of(&io(e));
        assert_eq!(
            of(rustls::Error::AlertReceived(AlertDescription::UnknownCA)),
            HandshakeFailure::CertificateRefused
        );
        assert_eq!(
            of(rustls::Error::AlertReceived(AlertDescription::BadCertificate)),
            HandshakeFailure::CertificateRefused
        );
        assert_eq!(of(rustls::Error::NoApplicationProtocol), HandshakeFailure::NoCommonAlpn);
        assert_eq!(
            of(rustls::Error::AlertReceived(AlertDescription::HandshakeFailure)),
            HandshakeFailure::Protocol
        );
        assert_eq!(
            HandshakeFailure::of(&std::io::Error::from(std::io::ErrorKind::UnexpectedEof)),
            HandshakeFailure::Closed
        );
        assert_eq!(
            HandshakeFailure::of(&std::io::Error::from(std::io::ErrorKind::TimedOut)),
            HandshakeFailure::TimedOut
        );
    }
}
