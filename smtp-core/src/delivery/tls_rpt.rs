//! SMTP TLS Reporting (RFC 8460): the `_smtp._tls.<domain>` TXT record
//! (`v=TLSRPTv1; rua=mailto:…`) and the result types a report counts.
//! The report itself (JSON) is written where the results are kept
//! (`smtp-queue`).

use std::fmt;

/// A valid `_smtp._tls` record: where reports go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsRptRecord {
    /// `rua`: `mailto:` and `https:` URIs.
    pub rua: Vec<String>,
}

/// Parses one record: `v=TLSRPTv1` first, then `rua=` with one or more
/// comma-separated `mailto:`/`https:` URIs; other fields ignored. `None`
/// when it is not a valid record.
pub fn parse_record(text: &str) -> Option<TlsRptRecord> {
    let text = text.trim_end_matches([' ', '\t']);
    let text = text.strip_suffix(';').unwrap_or(text);
    let mut fields = text.split(';').map(|f| f.trim_matches([' ', '\t']));
    let (k, v) = fields.next()?.split_once('=')?;
    if k.trim() != "v" || v.trim() != "TLSRPTv1" {
        return None;
    }
    let mut rua = None;
    for field in fields {
        let (k, v) = field.split_once('=')?;
        if k.trim() == "rua" {
            if rua.is_some() {
                return None;
            }
            let uris: Vec<String> = v.split(',').map(|u| u.trim().to_owned()).collect();
            let valid = uris.iter().all(|u| {
                (u.starts_with("mailto:") || u.starts_with("https://")) && u.len() <= 2048
            });
            if !valid {
                return None;
            }
            rua = Some(uris);
        }
    }
    rua.map(|rua| TlsRptRecord { rua })
}

/// The one valid `v=TLSRPTv1` record among a name's TXT records.
pub fn select(txts: &[String]) -> Option<TlsRptRecord> {
    let mut found = txts.iter().filter(|t| t.starts_with("v=TLSRPTv1"));
    let one = found.next()?;
    if found.next().is_some() {
        return None;
    }
    parse_record(one)
}

/// A session's result as a report counts it (RFC 8460 §4.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum ResultType {
    /// The session was encrypted as the policy requires.
    Success,
    /// The host did not offer STARTTLS, or refused it.
    StartTlsNotSupported,
    /// The certificate is not for the MX host name.
    CertificateHostMismatch,
    /// The certificate has expired.
    CertificateExpired,
    /// The certificate's chain does not lead to a trusted root.
    CertificateNotTrusted,
    /// Any other failure to establish or verify TLS.
    ValidationFailure,
    /// The MTA-STS policy could not be fetched.
    StsPolicyFetchError,
    /// The MTA-STS policy is not valid.
    StsPolicyInvalid,
    /// The policy host's certificate did not verify.
    StsWebpkiInvalid,
}

impl ResultType {
    /// The name RFC 8460 gives it (`success` is not a failure type).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::StartTlsNotSupported => "starttls-not-supported",
            Self::CertificateHostMismatch => "certificate-host-mismatch",
            Self::CertificateExpired => "certificate-expired",
            Self::CertificateNotTrusted => "certificate-not-trusted",
            Self::ValidationFailure => "validation-failure",
            Self::StsPolicyFetchError => "sts-policy-fetch-error",
            Self::StsPolicyInvalid => "sts-policy-invalid",
            Self::StsWebpkiInvalid => "sts-webpki-invalid",
        }
    }

    /// The type named `text`.
    pub fn parse(text: &str) -> Option<Self> {
        [
            Self::Success,
            Self::StartTlsNotSupported,
            Self::CertificateHostMismatch,
            Self::CertificateExpired,
            Self::CertificateNotTrusted,
            Self::ValidationFailure,
            Self::StsPolicyFetchError,
            Self::StsPolicyInvalid,
            Self::StsWebpkiInvalid,
        ]
        .into_iter()
        .find(|t| t.as_str() == text)
    }
}

impl fmt::Display for ResultType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_name_where_reports_go() {
        let r = parse_record("v=TLSRPTv1; rua=mailto:tls@example.com,https://r.example/x").unwrap();
        assert_eq!(r.rua, ["mailto:tls@example.com", "https://r.example/x"]);
        assert!(parse_record("v=TLSRPTv1;").is_none());
        assert!(parse_record("v=TLSRPTv2; rua=mailto:a@b").is_none());
        assert!(parse_record("v=TLSRPTv1; rua=ftp://x").is_none());
        assert!(
            select(&[
                "v=TLSRPTv1; rua=mailto:a@b".into(),
                "v=TLSRPTv1; rua=mailto:c@d".into()
            ])
            .is_none()
        );
        for t in ["success", "starttls-not-supported", "sts-policy-invalid"] {
            assert_eq!(ResultType::parse(t).unwrap().as_str(), t);
        }
    }
}
