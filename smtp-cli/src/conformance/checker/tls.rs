//! TLS: the checker's own TLS client (it accepts any certificate, so it
//! can go on to check the rest, then judges the certificate on its own),
//! and the `tls-version` and `tls-certificate` checks.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, Error, SignatureScheme};

use super::probes::open;
use super::{Ctx, Outcome};

/// Accepts any certificate, still checking the handshake's signatures.
#[derive(Debug)]
struct DangerAcceptAny(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for DangerAcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client config that accepts any certificate, for these TLS versions.
pub(super) fn danger_config(
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    let provider = provider();
    let algorithms = provider.signature_verification_algorithms;
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        // The ring provider supports both versions; this cannot fail.
        .expect("TLS 1.2 and 1.3 are supported by ring")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(DangerAcceptAny(algorithms)))
        .with_no_client_auth();
    Arc::new(config)
}

/// `tls-version`: the negotiated version and cipher; which of TLS 1.2
/// and 1.3 the server speaks.
pub(super) async fn version(ctx: &Ctx) -> Outcome {
    let (conn, caps) = match open(ctx, true).await {
        Ok(x) => x,
        Err(e) => return Outcome::Fail(e),
    };
    let Some(tls) = conn.tls() else {
        let has = caps.iter().any(|c| c == "STARTTLS");
        conn.quit().await;
        return Outcome::Fail(if has {
            "STARTTLS offered but not usable".into()
        } else {
            "does not offer STARTTLS: mail to it travels in plaintext".into()
        });
    };
    let negotiated = format!(
        "{} with {}",
        tls.protocol_version()
            .map_or("?".into(), |v| format!("{v:?}").replace("TLSv1_", "TLS 1.")),
        tls.negotiated_cipher_suite()
            .map_or("?".into(), |c| format!("{:?}", c.suite()))
    );
    conn.quit().await;
    let mut speaks = Vec::new();
    for (name, v) in [
        ("1.2", &rustls::version::TLS12),
        ("1.3", &rustls::version::TLS13),
    ] {
        let ok = open_with(ctx, danger_config(&[v])).await;
        speaks.push(format!("TLS {name} {}", if ok { "yes" } else { "no" }));
    }
    Outcome::Pass(format!(
        "{negotiated}; {}; TLS 1.0/1.1 not probed (rustls speaks neither)",
        speaks.join(", ")
    ))
}

async fn open_with(ctx: &Ctx, config: Arc<rustls::ClientConfig>) -> bool {
    let ctx = Ctx {
        tls_config: config,
        ..ctx.clone()
    };
    match open(&ctx, true).await {
        Ok((conn, _)) => {
            let tls = conn.is_tls();
            conn.quit().await;
            tls
        }
        Err(_) => false,
    }
}

/// `tls-certificate`: verified against the web PKI roots (and
/// `--ca-file`) for the host name given; expiry.
pub(super) async fn certificate(ctx: &Ctx) -> Outcome {
    let (conn, caps) = match open(ctx, true).await {
        Ok(x) => x,
        Err(e) => return Outcome::Fail(e),
    };
    let chain: Vec<CertificateDer<'static>> = conn
        .tls()
        .and_then(|t| t.peer_certificates())
        .map(|c| c.iter().take(10).map(|c| c.clone().into_owned()).collect())
        .unwrap_or_default();
    let tls = conn.is_tls();
    conn.quit().await;
    if !tls {
        return Outcome::NotApplicable(if caps.iter().any(|c| c == "STARTTLS") {
            "the TLS handshake failed (see tls-version)".into()
        } else {
            "no STARTTLS".into()
        });
    }
    let Some((leaf, rest)) = chain.split_first() else {
        return Outcome::Fail("presented no certificate".into());
    };
    let (expiry, days, self_signed) = match x509_parser::parse_x509_certificate(leaf.as_ref()) {
        Ok((_, c)) => (
            c.validity().not_after.to_string(),
            c.validity()
                .time_to_expiration()
                .map(|d| d.whole_days())
                .unwrap_or(-1),
            c.subject() == c.issuer(),
        ),
        Err(_) => return Outcome::Fail("the certificate cannot be decoded".into()),
    };
    let verifier =
        match WebPkiServerVerifier::builder_with_provider(ctx.roots.clone(), provider()).build() {
            Ok(v) => v,
            Err(e) => return Outcome::Fail(format!("no trust anchors: {e}")),
        };
    let name = ctx.target.server_name();
    let verdict = verifier.verify_server_cert(leaf, rest, &name, &[], UnixTime::now());
    let host = &ctx.target.name;
    match verdict {
        Ok(_) if days < 14 => Outcome::Fail(format!("the certificate expires in {days} days ({expiry})")),
        Ok(_) => Outcome::Pass(format!(
            "verified for {host}, expires {expiry} (in {days} days)"
        )),
        Err(Error::InvalidCertificate(e)) => Outcome::Fail(match e {
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                format!("the certificate expired ({expiry})")
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                format!("the certificate is not valid for {host}")
            }
            CertificateError::UnknownIssuer if self_signed => {
                "the certificate is self-signed (not verified by any trusted CA)".into()
            }
            CertificateError::UnknownIssuer => {
                "the certificate's chain does not lead to a trusted CA (missing intermediate? --ca-file?)"
                    .into()
            }
            other => format!("the certificate does not verify: {other:?}"),
        }),
        Err(e) => Outcome::Fail(format!("the certificate does not verify: {e}")),
    }
}
