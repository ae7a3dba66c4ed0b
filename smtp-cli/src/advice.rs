//! The libraries' advice in the command line's words. smtp-tls says what to
//! do in its API's terms (a policy, a trust anchor); the user of `smtp`
//! acts on flags, so where `smtp` prints a library's text it says the same
//! advice as the flags that follow it.

/// What `smtp` says instead of [`smtp_tls::UNKNOWN_ISSUER_ADVICE`].
const UNKNOWN_ISSUER: &str =
    "give the CA with --ca-file, or use --tls required to encrypt without verifying";

/// `text` (an error, a verification verdict) with the library's advice
/// said as flags.
pub(crate) fn flags(text: &str) -> String {
    text.replace(smtp_tls::UNKNOWN_ISSUER_ADVICE, UNKNOWN_ISSUER)
}

/// An smtp-tls error as `smtp` says it.
pub(crate) fn error(e: &smtp_tls::Error) -> String {
    match e {
        smtp_tls::Error::ImplicitTlsWithoutEncryption { port } => format!(
            "port {port} needs encryption (implicit TLS) but encryption is none; use --tls \
             optional, required or certified, or a STARTTLS port such as 587"
        ),
        other => flags(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_library_s_advice_is_said_as_flags() {
        let text = format!(
            "TLS failed: the certificate of mx.test is not signed by a trusted authority \
             (self-signed or a private CA); {}",
            smtp_tls::UNKNOWN_ISSUER_ADVICE
        );
        assert_eq!(
            flags(&text),
            "TLS failed: the certificate of mx.test is not signed by a trusted authority \
             (self-signed or a private CA); give the CA with --ca-file, or use --tls required \
             to encrypt without verifying"
        );
        assert_eq!(flags("nothing to say"), "nothing to say");
    }

    #[test]
    fn port_465_without_encryption_names_the_flag() {
        let e = smtp_tls::Error::ImplicitTlsWithoutEncryption { port: 465 };
        assert_eq!(
            error(&e),
            "port 465 needs encryption (implicit TLS) but encryption is none; use --tls \
             optional, required or certified, or a STARTTLS port such as 587"
        );
    }
}
