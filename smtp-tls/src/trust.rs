//! The trust anchors, and the encryption policies turned into rustls
//! client configurations.

use std::io;
use std::path::Path;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::{self, PemObject};
use rustls::{ClientConfig, RootCertStore};
use smtp_core::TlsPolicy;

use crate::verify::{Verdict, Verifier};

/// Which certificates to trust: the web PKI roots and any extra trust
/// anchors (a private CA, or a pinned self-signed certificate). Certified
/// refuses a certificate they do not vouch for; Optional and Required only
/// report the verdict ([`TlsInfo::verified`](smtp_core::delivery::TlsInfo)).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Trust {
    /// Extra trust anchors (e.g. a private CA), on top of the web PKI roots.
    /// A server presenting one of these itself (a self-signed certificate)
    /// is trusted as that pinned certificate, whatever its name and CA flag.
    pub extra_roots: Vec<CertificateDer<'static>>,
    /// Trust the web PKI roots (webpki-roots). On by default.
    pub web_pki_roots: bool,
}

impl Default for Trust {
    fn default() -> Self {
        Self::new()
    }
}

impl Trust {
    /// The web PKI roots, nothing else.
    pub fn new() -> Self {
        Self {
            extra_roots: Vec::new(),
            web_pki_roots: true,
        }
    }

    /// Only the extra trust anchors, without the web PKI roots (a private
    /// CA trusted alone).
    #[must_use]
    pub fn without_web_pki_roots(mut self) -> Self {
        self.web_pki_roots = false;
        self
    }

    /// Adds every certificate of a PEM file as a trust anchor.
    pub fn add_ca_file(&mut self, path: &Path) -> io::Result<usize> {
        let pem = std::fs::read(path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        self.add_ca_pem(&pem)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
    }

    /// Adds every certificate of PEM text as a trust anchor.
    pub fn add_ca_pem(&mut self, pem: &[u8]) -> io::Result<usize> {
        let certs = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(pem_error)?;
        if certs.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "no PEM certificate found",
            ));
        }
        let n = certs.len();
        self.extra_roots.extend(certs);
        Ok(n)
    }

    fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        if self.web_pki_roots {
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        }
        // A CA the user gave that webpki cannot use would only make every
        // handshake fail later, with a vaguer error; skip it here.
        let _ = roots.add_parsable_certificates(self.extra_roots.iter().cloned());
        roots
    }

    /// A client configuration for one connection under `policy`, and the
    /// slot where its verifier records the certificates presented and
    /// whether they verified.
    pub(crate) fn client_config(
        &self,
        policy: TlsPolicy,
    ) -> io::Result<(Arc<ClientConfig>, Verdict)> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verdict: Verdict = Arc::default();
        let roots = Arc::new(self.roots());
        let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
            .build()
            .map_err(|e| io::Error::other(format!("cannot build the certificate verifier: {e}")))?;
        let builder = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| io::Error::other(e.to_string()))?
            .dangerous();
        let verifier = match policy {
            TlsPolicy::Certified => {
                Verifier::strict(webpki, self.extra_roots.clone(), verdict.clone())
            }
            TlsPolicy::None | TlsPolicy::Optional | TlsPolicy::Required => {
                Verifier::danger_accept_unverified(
                    webpki,
                    self.extra_roots.clone(),
                    verdict.clone(),
                )
            }
        };
        let config = builder
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        Ok((Arc::new(config), verdict))
    }
}

/// A PEM syntax error in words: the marker or line as text (the error's
/// `Display` shows them as lists of byte values).
fn pem_error(error: pem::Error) -> io::Error {
    let text = match error {
        // The error holds the section's label, e.g. `CERTIFICATE`.
        pem::Error::MissingSectionEnd { end_marker } => format!(
            "section end \"-----END {}-----\" missing",
            String::from_utf8_lossy(&end_marker)
        ),
        pem::Error::IllegalSectionStart { line } => format!(
            "illegal section start: {:?}",
            String::from_utf8_lossy(&line)
        ),
        pem::Error::Base64Decode(text) => format!("a PEM section is not valid base64: {text}"),
        other => other.to_string(),
    };
    io::Error::new(io::ErrorKind::InvalidData, text)
}

#[cfg(test)]
mod tests {
    use smtp_testkit::certs::TestCa;

    use super::*;

    fn add(pem: &[u8]) -> io::Result<usize> {
        Trust::new().add_ca_pem(pem)
    }

    fn error(pem: &[u8]) -> String {
        let e = add(pem).expect_err("not a usable CA file");
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
        e.to_string()
    }

    #[test]
    fn every_certificate_of_a_pem_file_is_a_trust_anchor() {
        let pem = format!("{}{}", TestCa::new().cert_pem(), TestCa::new().cert_pem());
        let mut options = Trust::new();
        assert_eq!(options.add_ca_pem(pem.as_bytes()).unwrap(), 2);
        assert_eq!(options.extra_roots.len(), 2);
    }

    #[test]
    fn a_file_without_a_certificate_says_so() {
        assert_eq!(error(b""), "no PEM certificate found");
        assert_eq!(error(b"just some text\n"), "no PEM certificate found");
        let key_only = b"-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIJ+DYvh6SEqVTm50DFtMDoQikTmiCqirVv9mWG9qfSnF\n-----END PRIVATE KEY-----\n";
        assert_eq!(error(key_only), "no PEM certificate found");
    }

    #[test]
    fn a_damaged_certificate_is_named_in_words() {
        let pem = TestCa::new().cert_pem();
        let cut = pem.find("-----END").expect("an end marker");
        assert_eq!(
            error(&pem.as_bytes()[..cut]),
            "section end \"-----END CERTIFICATE-----\" missing"
        );
        let garbled = pem.replacen("M", "!", 1);
        let text = error(garbled.as_bytes());
        assert!(
            text.starts_with("a PEM section is not valid base64: "),
            "{text}"
        );
    }

    #[test]
    fn a_ca_file_error_names_the_file() {
        let path = Path::new("/nonexistent/ca.pem");
        let e = Trust::new().add_ca_file(path).expect_err("no such file");
        assert!(e.to_string().starts_with("/nonexistent/ca.pem: "), "{e}");
    }
}
