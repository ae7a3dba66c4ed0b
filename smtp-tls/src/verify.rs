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

use smtp_core::delivery::CertificateFault;

use crate::certificate::MAX_CHAIN;

/// What the verifier of one handshake saw and concluded, shared with the
/// transport that reports it.
pub(crate) type Verdict = Arc<Mutex<Verification>>;

/// The certificates a server presented and the verdict on them.
#[derive(Debug, Default)]
pub(crate) struct Verification {
    /// The end-entity certificate first, then the chain the server sent
    /// with it (at most [`MAX_CHAIN`]); recorded before verification runs,
    /// so a certificate that fails it can still be shown.
    pub(crate) presented: Vec<CertificateDer<'static>>,
    /// `None` until verification ran; the reason in words when it failed.
    pub(crate) verdict: Option<Result<(), String>>,
    /// The failure's kind, when it failed.
    pub(crate) fault: Option<CertificateFault>,
}

/// Runs webpki's verification, records its verdict for the report, and —
/// only when built with [`Verifier::danger_accept_unverified`] — accepts the
/// certificate anyway. Handshake signatures are always checked.
pub(crate) struct Verifier {
    inner: Arc<WebPkiServerVerifier>,
    /// Certificates trusted exactly as they are (the user's trust anchors).
    pinned: Vec<CertificateDer<'static>>,
    verdict: Verdict,
    accept_unverified: bool,
}

impl Verifier {
    /// Certified: the verdict decides.
    pub(crate) fn strict(
        inner: Arc<WebPkiServerVerifier>,
        pinned: Vec<CertificateDer<'static>>,
        verdict: Verdict,
    ) -> Self {
        Self {
            inner,
            pinned,
            verdict,
            accept_unverified: false,
        }
    }

    /// Optional and Required: encryption without authentication, the
    /// user's stated choice. The verdict is only reported.
    pub(crate) fn danger_accept_unverified(
        inner: Arc<WebPkiServerVerifier>,
        pinned: Vec<CertificateDer<'static>>,
        verdict: Verdict,
    ) -> Self {
        Self {
            inner,
            pinned,
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
        if let Ok(mut seen) = self.verdict.lock() {
            seen.presented = std::iter::once(end_entity)
                .chain(intermediates)
                .take(MAX_CHAIN)
                .map(|c| c.clone().into_owned())
                .collect();
        }
        let pinned = self
            .pinned
            .iter()
            .any(|p| p.as_ref() == end_entity.as_ref());
        let result = if pinned {
            Ok(ServerCertVerified::assertion())
        } else {
            self.inner.verify_server_cert(
                end_entity,
                intermediates,
                server_name,
                ocsp_response,
                now,
            )
        };
        if let Ok(mut seen) = self.verdict.lock() {
            seen.verdict = Some(
                result
                    .as_ref()
                    .map(|_| ())
                    .map_err(|e| describe(e, server_name)),
            );
            seen.fault = result.as_ref().err().map(fault);
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

/// A name as rustls presents it (`DnsName("mail.example")`,
/// `IpAddress(192.0.2.1)`) without the type around it.
fn bare_name(presented: &str) -> &str {
    presented
        .split_once('(')
        .and_then(|(_, rest)| rest.strip_suffix(')'))
        .map_or(presented, |inner| inner.trim_matches('"'))
}

/// What the error for a certificate from an untrusted issuer advises, in
/// the API's terms ([`Trust`](crate::Trust), [`TlsPolicy`](smtp_core::TlsPolicy)):
/// a program with its own words for these (a command line's flags) can
/// find the phrase in the error's text and say it in them.
pub const UNKNOWN_ISSUER_ADVICE: &str =
    "add its CA as a trust anchor, or use the policy Required to encrypt without verifying";

/// What the error for an untrusted self-signed certificate advises, in
/// the API's terms, as [`UNKNOWN_ISSUER_ADVICE`] does.
pub const PINNING_ADVICE: &str = "add that exact certificate as a trust anchor (it is then \
                                  pinned), or use the policy Required to encrypt without verifying";

/// A certificate error's kind, for programs (TLS-RPT's result types).
pub(crate) fn fault(error: &Error) -> CertificateFault {
    match error {
        Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => CertificateFault::NameMismatch,
        Error::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        ) => CertificateFault::Expired,
        _ => CertificateFault::NotTrusted,
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
                presented
                    .iter()
                    .map(|p| bare_name(p))
                    .collect::<Vec<_>>()
                    .join(", ")
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
                 {UNKNOWN_ISSUER_ADVICE}"
            ),
            CertificateError::Revoked => format!("the certificate of {name} has been revoked"),
            CertificateError::BadEncoding => {
                format!("the certificate of {name} is malformed (it cannot be decoded)")
            }
            CertificateError::BadSignature => format!(
                "the certificate of {name} has a signature that does not verify against the \
                 trust anchors: forged or damaged, or, if this server's own certificate was \
                 pinned, the server now presents another one (check it, then pin the new one)"
            ),
            CertificateError::UnsupportedSignatureAlgorithmContext { .. }
            | CertificateError::UnsupportedSignatureAlgorithmForPublicKeyContext { .. } => {
                format!(
                    "the certificate of {name} is signed with an algorithm this client does not accept"
                )
            }
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
                format!("the certificate of {name} is not meant for a TLS server")
            }
            CertificateError::UnhandledCriticalExtension => format!(
                "the certificate of {name} has a critical extension this client does not understand"
            ),
            CertificateError::Other(other) => match other.0.downcast_ref::<webpki::Error>() {
                Some(webpki::Error::CaUsedAsEndEntity) => format!(
                    "the certificate of {name} is self-signed (a CA certificate of its own, \
                     as `openssl req -x509` makes) and not trusted; {PINNING_ADVICE}"
                ),
                Some(
                    webpki::Error::MaximumPathDepthExceeded
                    | webpki::Error::MaximumPathBuildCallsExceeded
                    | webpki::Error::MaximumSignatureChecksExceeded,
                ) => format!(
                    "the certificate chain of {name} is too long or too tangled to verify; \
                     the server's administrator must send a shorter chain"
                ),
                Some(webpki::Error::EndEntityUsedAsCa) => format!(
                    "the certificate chain of {name} uses a server certificate as an issuer"
                ),
                Some(webpki::Error::CertDistrusted) => {
                    format!(
                        "the certificate of {name} is from an authority that is no longer trusted"
                    )
                }
                _ => format!("the certificate of {name} was not accepted: {other}"),
            },
            other => format!("the certificate of {name} was not accepted: {other}"),
        },
        other => other.to_string(),
    }
}
