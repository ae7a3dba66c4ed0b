//! Advice in the command's own terms. The libraries' errors say what went
//! wrong and what fixes it in API terms (policies, trust anchors, ports,
//! mechanisms); the user of `smtp` acts on flags, so where `smtp` prints a
//! library's text, the faults a flag fixes get that flag: appended in
//! parentheses, or in place of smtp-tls's advice for an unknown issuer.

use smtp_core::delivery::direct::Diagnosis;
use smtp_core::sasl::SaslError;
use smtp_core::{Error, PolicyError, RecipientOutcome, Warning};

/// The flags that fix `e`, when some do.
fn hint(e: &Error) -> Option<&'static str> {
    match e {
        Error::Policy(PolicyError::StartTlsNotOffered { .. })
        | Error::Policy(PolicyError::StartTlsRefused { .. }) => {
            Some("--tls optional allows plaintext; --port 465 uses implicit TLS")
        }
        Error::Policy(PolicyError::AuthNotOffered { tls: false }) => {
            Some("use --tls required, or --port 587 / 465")
        }
        Error::Policy(PolicyError::AuthNotOffered { tls: true }) => {
            Some("check --server and --port, or send without --user")
        }
        Error::Sasl(SaslError::WouldRevealSecret { .. }) => {
            Some("use --tls required or --port 465; --tls none sends it in the clear")
        }
        Error::Sasl(SaslError::NoUsableMechanism {
            tls: false,
            oauth2: true,
            ..
        }) => Some("use --tls required or --port 465, or --auth xoauth2 with --tls none"),
        Error::Sasl(SaslError::NoUsableMechanism {
            tls: false,
            oauth2: false,
            ..
        }) => Some("use --tls required or --port 465, or e.g. --auth plain with --tls none"),
        Error::Sasl(SaslError::NotOffered { .. }) => Some("use --auth auto or an offered one"),
        Error::OutcomeUnknown { cause } => hint(cause),
        _ => None,
    }
}

/// What `smtp` says instead of [`smtp_tls::UNKNOWN_ISSUER_ADVICE`].
const UNKNOWN_ISSUER: &str =
    "give the CA with --ca-file, or use --tls required to encrypt without verifying";

/// What `smtp` says instead of [`smtp_tls::PINNING_ADVICE`].
const PINNING: &str = "give that certificate with --ca-file (it is then pinned), or use --tls \
                       required to encrypt without verifying";

/// `text` (an error, a verification verdict) with smtp-tls's advice said
/// as flags.
pub(crate) fn flags(text: &str) -> String {
    text.replace(smtp_tls::UNKNOWN_ISSUER_ADVICE, UNKNOWN_ISSUER)
        .replace(smtp_tls::PINNING_ADVICE, PINNING)
}

/// An smtp-tls error as `smtp` says it.
pub(crate) fn error(e: &smtp_tls::Error) -> String {
    match e {
        smtp_tls::Error::ImplicitTlsWithoutEncryption { port } => format!(
            "port {port} needs encryption (implicit TLS) but encryption is none; use --tls \
             optional, required or certified, or a STARTTLS port such as 587"
        ),
        smtp_tls::Error::Session(e) => error_text(e),
        other => flags(&other.to_string()),
    }
}

fn with_hint(text: String, hint: Option<&str>) -> String {
    match hint {
        Some(h) => format!("{text} ({h})"),
        None => text,
    }
}

/// A session's or a message's fault, with the flags that fix it.
pub(crate) fn error_text(e: &Error) -> String {
    with_hint(flags(&e.to_string()), hint(e))
}

/// A recipient's reason: its error with advice, else the server's words.
pub(crate) fn outcome_text(o: &RecipientOutcome) -> String {
    match &o.error {
        Some(e) => error_text(e),
        None => o.text(),
    }
}

/// A warning, with the flags that avoid it.
pub(crate) fn warning_text(w: &Warning) -> String {
    let hint = match w {
        Warning::PlaintextSecret(_) => Some("use --tls required or --port 465"),
        _ => None,
    };
    with_hint(w.to_string(), hint)
}

/// Direct delivery's diagnosis, with the command that gets around it.
pub(crate) fn diagnosis_text(d: &Diagnosis) -> String {
    let hint = match d {
        Diagnosis::Port25Blocked { .. } => Some("smtp send --server HOST --port 587 --user NAME …"),
        _ => None,
    };
    with_hint(d.to_string(), hint)
}

#[cfg(test)]
mod tests {
    use super::*;
    use smtp_core::TlsPolicy;
    use smtp_core::sasl::Mechanism;

    #[test]
    fn policy_and_sasl_faults_name_the_flags_that_fix_them() {
        let no_starttls = Error::Policy(PolicyError::StartTlsNotOffered {
            policy: TlsPolicy::Certified,
        });
        let text = error_text(&no_starttls);
        assert!(text.starts_with(&no_starttls.to_string()), "{text}");
        assert!(
            text.contains("--tls optional") && text.contains("--port 465"),
            "{text}"
        );
        let reveal = Error::Sasl(SaslError::WouldRevealSecret {
            mechanism: Mechanism::Plain,
        });
        assert!(error_text(&reveal).contains("--tls required"));
        let no_auth = Error::Policy(PolicyError::AuthNotOffered { tls: true });
        assert!(error_text(&no_auth).contains("without --user"));
        let warning = warning_text(&Warning::PlaintextSecret(Mechanism::Login));
        assert!(warning.contains("--tls required"), "{warning}");
        let blocked = diagnosis_text(&Diagnosis::Port25Blocked { port: 25 });
        assert!(blocked.contains("--server HOST --port 587"), "{blocked}");
    }

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
        let pinned = flags(&format!("self-signed; {}", smtp_tls::PINNING_ADVICE));
        assert!(
            pinned.contains("--ca-file") && pinned.contains("--tls required"),
            "{pinned}"
        );
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

    #[test]
    fn other_faults_keep_the_library_s_words() {
        let e = Error::Policy(PolicyError::AuthNotOffered { tls: false });
        assert!(
            !e.to_string().contains("--"),
            "the library names no flag: {e}"
        );
        let closed = Error::ConnectionClosed {
            phase: smtp_core::Phase::Rcpt,
        };
        assert_eq!(error_text(&closed), closed.to_string());
    }
}
