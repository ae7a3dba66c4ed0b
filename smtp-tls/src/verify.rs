//! Certificate checks per encryption policy.
//!
//! Certified runs rustls's webpki verifier and lets it fail the handshake.
//! Optional and Required run the same verification, record the verdict for
//! the report, and accept the certificate anyway
//! ([`Verifier::danger_accept_unverified`]) — but still check the handshake
//! signatures, so the peer must hold the private key of the certificate it
//! showed.

use std::fmt;
use std::sync::{Arc, Mutex};

use rustls::DigitallySignedStruct;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, Error, SignatureScheme};

/// What the verification of one handshake concluded.
pub(crate) type Verdict = Arc<Mutex<Option<Result<(), String>>>>;

/// Runs webpki's verification, records its verdict for the report, and —
/// only when built with [`Verifier::danger_accept_unverified`] — accepts the
/// certificate anyway. Handshake signatures are always checked.
pub(crate) struct Verifier {
    inner: Arc<WebPkiServerVerifier>,
    verdict: Verdict,
    accept_unverified: bool,
}

impl Verifier {
    /// Certified: the verdict decides.
    pub(crate) fn strict(inner: Arc<WebPkiServerVerifier>, verdict: Verdict) -> Self {
        Self {
            inner,
            verdict,
            accept_unverified: false,
        }
    }

    /// Optional and Required: encryption without authentication, the
    /// user's stated choice. The verdict is only reported.
    pub(crate) fn danger_accept_unverified(
        inner: Arc<WebPkiServerVerifier>,
        verdict: Verdict,
    ) -> Self {
        Self {
            inner,
            verdict,
            accept_unverified: true,
        }
    }
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("accept_unverified", &self.accept_unverified)
            .finish_non_exhaustive()
    }
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let result = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        );
        if let Ok(mut slot) = self.verdict.lock() {
            *slot = Some(
                result
                    .as_ref()
                    .map(|_| ())
                    .map_err(|e| describe(e, server_name)),
            );
        }
        if self.accept_unverified {
            Ok(ServerCertVerified::assertion())
        } else {
            result
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

fn name_text(name: &ServerName<'_>) -> String {
    match name {
        ServerName::DnsName(d) => d.as_ref().to_owned(),
        ServerName::IpAddress(ip) => std::net::IpAddr::from(*ip).to_string(),
        _ => "the server".to_owned(),
    }
}

/// A certificate error in words a user can act on.
pub(crate) fn describe(error: &Error, server_name: &ServerName<'_>) -> String {
    let name = name_text(server_name);
    match error {
        Error::InvalidCertificate(e) => match e {
            CertificateError::NotValidForName => {
                format!(
                    "the certificate is not valid for {name}; connect with the name the certificate was issued for"
                )
            }
            CertificateError::NotValidForNameContext { presented, .. } => format!(
                "the certificate for {} is not valid for {name}; connect with the name it was issued for",
                presented.join(", ")
            ),
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                format!(
                    "the certificate of {name} has expired; the server's administrator must renew it"
                )
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                format!("the certificate of {name} is not valid yet; check this machine's clock")
            }
            CertificateError::UnknownIssuer => format!(
                "the certificate of {name} is not signed by a trusted authority (self-signed or a private CA); \
                 give the CA with --ca-file, or use --tls required to encrypt without verifying"
            ),
            CertificateError::Revoked => format!("the certificate of {name} has been revoked"),
            other => format!("the certificate of {name} is invalid: {other:?}"),
        },
        other => other.to_string(),
    }
}
