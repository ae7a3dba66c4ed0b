//! The encryption policy a session runs under.
//!
//! The four policies and what each does with every server behaviour are the
//! contract in `DESIGN.md` ("Encryption policies"). The core decides *whether*
//! to send STARTTLS and what to do when it is missing or refused; whether a
//! certificate is acceptable is the TLS driver's decision (see `smtp-tls`).

use std::fmt;
use std::str::FromStr;

/// How much encryption a session insists on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum TlsPolicy {
    /// Plaintext; STARTTLS is never sent.
    None,
    /// TLS when the server offers STARTTLS; plaintext when it does not or
    /// refuses it. Certificates are not required to verify (the session
    /// reports whether they did).
    Optional,
    /// TLS or nothing. The certificate chain and name are checked and the
    /// verdict reported ([`TlsInfo::verified`](crate::delivery::TlsInfo)),
    /// but not enforced: a self-signed certificate is accepted.
    Required,
    /// TLS with a verified certificate chain and host name.
    #[default]
    Certified,
}

impl TlsPolicy {
    /// The policy's name as the command line spells it.
    pub const fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Optional => "optional",
            Self::Required => "required",
            Self::Certified => "certified",
        }
    }

    /// True when a session must not go on without TLS.
    pub const fn requires_tls(self) -> bool {
        matches!(self, Self::Required | Self::Certified)
    }

    /// True when STARTTLS is attempted whenever the server offers it.
    pub const fn attempts_tls(self) -> bool {
        !matches!(self, Self::None)
    }
}

impl fmt::Display for TlsPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The error for a policy name that is not one of the four.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownTlsPolicy(pub String);

impl fmt::Display for UnknownTlsPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown encryption policy {:?}: use none, optional, required or certified",
            self.0
        )
    }
}

impl std::error::Error for UnknownTlsPolicy {}

impl FromStr for TlsPolicy {
    type Err = UnknownTlsPolicy;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "none" => Ok(Self::None),
            "optional" => Ok(Self::Optional),
            "required" => Ok(Self::Required),
            "certified" => Ok(Self::Certified),
            _ => Err(UnknownTlsPolicy(s.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for p in [
            TlsPolicy::None,
            TlsPolicy::Optional,
            TlsPolicy::Required,
            TlsPolicy::Certified,
        ] {
            assert_eq!(p.name().parse::<TlsPolicy>(), Ok(p));
            assert_eq!(p.to_string().to_uppercase().parse::<TlsPolicy>(), Ok(p));
        }
        let err = "strict".parse::<TlsPolicy>().unwrap_err();
        assert!(
            err.to_string()
                .contains("none, optional, required or certified")
        );
    }

    #[test]
    fn only_required_and_certified_insist() {
        assert!(!TlsPolicy::None.requires_tls());
        assert!(!TlsPolicy::Optional.requires_tls());
        assert!(TlsPolicy::Required.requires_tls());
        assert!(TlsPolicy::Certified.requires_tls());
        assert!(!TlsPolicy::None.attempts_tls());
        assert!(TlsPolicy::Optional.attempts_tls());
    }
}
