//! Upstream certificate verification, strict (Mozilla's roots plus the configured bundle,
//! through rustls' WebPKI verifier), with faults named for the client and the record: an
//! expired, wrong-host, self-signed or untrusted certificate is never masked by a minted one.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, DigitallySignedStruct, Error, OtherError, RootCertStore, SignatureScheme,
};

/// The server's certificate is self-signed (issuer = subject, not a trusted root).
#[derive(Debug, thiserror::Error)]
#[error("self-signed certificate")]
pub struct SelfSigned;

/// WebPKI verification that tells a self-signed leaf apart from an unknown issuer.
#[derive(Debug)]
pub struct StrictVerifier {
    inner: Arc<WebPkiServerVerifier>,
}

impl StrictVerifier {
    /// A verifier over `roots`.
    pub fn new(roots: RootCertStore) -> Result<Self, rustls::client::VerifierBuilderError> {
        let inner =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), crate::tls::provider())
                .build()?;
        Ok(StrictVerifier { inner })
    }
}

fn self_issued(der: &[u8]) -> bool {
    x509_parser::parse_x509_certificate(der)
        .is_ok_and(|(_, c)| c.tbs_certificate.issuer.as_raw() == c.tbs_certificate.subject.as_raw())
}

impl ServerCertVerifier for StrictVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            // A self-issued leaf fails as an unknown issuer, or (with CA:TRUE, as `openssl req
            // -x509` makes them) as a CA used as an end entity: name it for what it is.
            Err(Error::InvalidCertificate(
                CertificateError::UnknownIssuer | CertificateError::Other(_),
            )) if intermediates.is_empty() && self_issued(end_entity) => {
                Err(Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(
                    SelfSigned,
                )))))
            }
            r => r,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A named upstream TLS fault: machine code and human reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpstreamFault {
    /// Code for the block response and the record.
    pub code: &'static str,
    /// Reason, for people.
    pub reason: &'static str,
}

/// Names the fault behind a failed upstream TLS handshake.
pub fn classify(e: &std::io::Error) -> UpstreamFault {
    let fault = |code, reason| UpstreamFault { code, reason };
    let Some(err) = e.get_ref().and_then(|i| i.downcast_ref::<Error>()) else {
        return fault("upstream_tls_failed", "the TLS handshake with the server failed");
    };
    match err {
        Error::InvalidCertificate(c) => match c {
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                fault("upstream_certificate_expired", "the server's certificate has expired")
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => fault(
                "upstream_certificate_not_yet_valid",
                "the server's certificate is not yet valid",
            ),
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                fault(
                    "upstream_certificate_wrong_host",
                    "the server's certificate is not valid for this host name",
                )
            }
            CertificateError::UnknownIssuer => fault(
                "upstream_certificate_untrusted",
                "the server's certificate is not issued by a trusted root",
            ),
            CertificateError::Revoked => {
                fault("upstream_certificate_revoked", "the server's certificate is revoked")
            }
            CertificateError::Other(o) if o.0.downcast_ref::<SelfSigned>().is_some() => {
                fault("upstream_certificate_self_signed", "the server's certificate is self-signed")
            }
            _ => fault("upstream_certificate_invalid", "the server's certificate is invalid"),
        },
        _ => fault("upstream_tls_failed", "the TLS handshake with the server failed"),
    }
}
