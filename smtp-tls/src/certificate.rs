//! A presented certificate described for people, as `msmtp --serverinfo`
//! shows it: subject, issuer, names, validity, SHA-256 fingerprint, and the
//! subjects of the rest of the chain. Every text and list is bounded: a
//! server chooses what its certificate holds.

use rustls::pki_types::CertificateDer;
use smtp_core::delivery::PeerCertificate;
use x509_parser::extensions::GeneralName;

/// Certificates kept from one handshake (the end-entity and its chain).
pub(crate) const MAX_CHAIN: usize = 10;
/// Names kept from a subjectAltName.
const MAX_NAMES: usize = 100;
/// Characters kept of one text (a subject, an issuer, a name).
const MAX_TEXT: usize = 256;

/// The end-entity certificate of `chain` (first), with the subjects of the
/// others; `None` for an empty chain.
pub(crate) fn describe(chain: &[CertificateDer<'_>]) -> Option<PeerCertificate> {
    let (end_entity, rest) = chain.split_first()?;
    let mut described = describe_one(end_entity.as_ref());
    described.chain = rest
        .iter()
        .take(MAX_CHAIN - 1)
        .map(|c| match x509_parser::parse_x509_certificate(c.as_ref()) {
            Ok((_, cert)) => bounded(&cert.subject().to_string()),
            Err(_) => "(a certificate that cannot be decoded)".to_owned(),
        })
        .collect();
    Some(described)
}

fn describe_one(der: &[u8]) -> PeerCertificate {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(der);
    let mut described = PeerCertificate {
        sha256: digest
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(":"),
        ..PeerCertificate::default()
    };
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return described;
    };
    described.subject = Some(bounded(&cert.subject().to_string()));
    described.issuer = Some(bounded(&cert.issuer().to_string()));
    described.not_before = Some(cert.validity().not_before.to_string());
    described.not_after = Some(cert.validity().not_after.to_string());
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        described.names = san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(d) => Some(bounded(d)),
                GeneralName::IPAddress(b) => match b.len() {
                    4 => <[u8; 4]>::try_from(*b)
                        .ok()
                        .map(|a| std::net::IpAddr::from(a).to_string()),
                    16 => <[u8; 16]>::try_from(*b)
                        .ok()
                        .map(|a| std::net::IpAddr::from(a).to_string()),
                    _ => None,
                },
                _ => None,
            })
            .take(MAX_NAMES)
            .collect();
    }
    described
}

/// At most [`MAX_TEXT`] characters, `…` marking a cut.
fn bounded(text: &str) -> String {
    let mut chars = text.chars();
    let mut kept: String = chars.by_ref().take(MAX_TEXT).collect();
    if chars.next().is_some() {
        kept.push('…');
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_texts_are_cut() {
        assert_eq!(bounded("short"), "short");
        let long = "x".repeat(MAX_TEXT + 10);
        let cut = bounded(&long);
        assert_eq!(cut.chars().count(), MAX_TEXT + 1);
        assert!(cut.ends_with('…'));
    }

    #[test]
    fn an_empty_chain_describes_nothing_and_garbage_still_has_a_fingerprint() {
        assert!(describe(&[]).is_none());
        let c = describe(&[CertificateDer::from(vec![1, 2, 3])]).unwrap();
        assert_eq!(c.sha256.len(), 32 * 3 - 1);
        assert!(c.subject.is_none() && c.names.is_empty());
    }
}
