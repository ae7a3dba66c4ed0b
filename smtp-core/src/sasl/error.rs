//! Why choosing a mechanism or running an exchange failed, in words that
//! say what to do.

use std::fmt;

use super::{MIN_NONCE_LEN, Mechanism};

/// The longest server error text kept for `Authenticator::error_detail`, in characters.
const MAX_DETAIL_LEN: usize = 1024;

/// Whose fault a [`SaslError`] is, as [`SaslError::fault`] tells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SaslFault {
    /// The caller's settings: a mechanism or credentials that cannot work
    /// (an unknown name, the wrong kind of credentials), or that the server
    /// does not offer. Fix the configuration.
    Configuration,
    /// The encryption policy: the secret would be readable on the wire.
    /// Encrypt, or say explicitly that the clear is meant.
    Policy,
    /// The server: a malformed, unexpected or failing exchange, a proof
    /// that does not verify, an unreasonable cost. Nothing to fix here.
    Server,
    /// A bug in the program driving the exchange (the API used out of turn).
    Misuse,
}

/// Why choosing a mechanism or running an exchange failed. Each variant
/// belongs to one [`SaslFault`] ([`fault`](Self::fault)).
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SaslError {
    /// A mechanism name this client does not implement.
    UnknownMechanism {
        /// The name given (control characters escaped).
        name: String,
    },
    /// The mechanism the user named is not in the server's EHLO `AUTH` list.
    NotOffered {
        /// The mechanism asked for.
        mechanism: Mechanism,
        /// What the server offers.
        offered: Vec<String>,
    },
    /// The mechanism the user named would send the secret readable over an
    /// unencrypted session, and the encryption policy is not `None`.
    WouldRevealSecret {
        /// The mechanism asked for.
        mechanism: Mechanism,
    },
    /// `Auto` found no offered mechanism that may be used here.
    NoUsableMechanism {
        /// What the server offers.
        offered: Vec<String>,
        /// Whether the session is encrypted.
        tls: bool,
        /// Whether the credentials are an OAuth2 token (else a password).
        oauth2: bool,
    },
    /// The mechanism needs the other kind of credentials (XOAUTH2 a token,
    /// the others a password).
    CredentialsMismatch {
        /// The mechanism asked for.
        mechanism: Mechanism,
        /// Whether the credentials are an OAuth2 token (else a password).
        oauth2: bool,
    },
    /// The credentials cannot be encoded in this mechanism's messages.
    InvalidCredentials {
        /// The mechanism.
        mechanism: Mechanism,
        /// What is wrong with them.
        reason: &'static str,
    },
    /// SCRAM-SHA-256 was started with fewer than [`MIN_NONCE_LEN`] nonce bytes.
    NonceTooShort {
        /// How many bytes were given.
        len: usize,
    },
    /// The server's challenge is malformed or unacceptable.
    InvalidChallenge {
        /// The mechanism of the exchange.
        mechanism: Mechanism,
        /// What is wrong with it.
        reason: String,
    },
    /// The SCRAM server signature is wrong: the server does not know the
    /// password, so it is not the server the user has an account with.
    ServerSignatureMismatch,
    /// The server reported an error inside the exchange (SCRAM `e=`).
    ServerError {
        /// The mechanism of the exchange.
        mechanism: Mechanism,
        /// The server's text (control characters escaped, bounded).
        message: String,
    },
    /// A `334` challenge arrived when the exchange expected none.
    UnexpectedChallenge {
        /// The mechanism of the exchange.
        mechanism: Mechanism,
    },
    /// The SCRAM-SHA-256 server asked for more PBKDF2 iterations than the
    /// cap allows; nothing was derived.
    TooManyIterations {
        /// The iteration count the server asked for.
        requested: u32,
        /// The cap in force.
        limit: u32,
    },
    /// A derived key was handed over when no key derivation was pending
    /// (a caller bug).
    NoDerivationPending,
}

impl SaslError {
    /// Whose fault this is.
    pub const fn fault(&self) -> SaslFault {
        match self {
            Self::UnknownMechanism { .. }
            | Self::NotOffered { .. }
            | Self::CredentialsMismatch { .. }
            | Self::InvalidCredentials { .. } => SaslFault::Configuration,
            Self::WouldRevealSecret { .. } | Self::NoUsableMechanism { tls: false, .. } => {
                SaslFault::Policy
            }
            Self::NoUsableMechanism { tls: true, .. }
            | Self::InvalidChallenge { .. }
            | Self::ServerSignatureMismatch
            | Self::ServerError { .. }
            | Self::UnexpectedChallenge { .. }
            | Self::TooManyIterations { .. } => SaslFault::Server,
            Self::NonceTooShort { .. } | Self::NoDerivationPending => SaslFault::Misuse,
        }
    }
}

fn supported_names() -> String {
    names(Mechanism::ALL.iter().map(|m| m.name()))
}

fn names<'a>(list: impl Iterator<Item = &'a str>) -> String {
    let joined = list.collect::<Vec<_>>().join(" ");
    if joined.is_empty() {
        "none".to_owned()
    } else {
        joined
    }
}

impl fmt::Display for SaslError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownMechanism { name } => write!(
                f,
                "unknown SASL mechanism {name:?}; supported: {}",
                supported_names()
            ),
            Self::NotOffered { mechanism, offered } => write!(
                f,
                "the server does not offer AUTH {mechanism} (it offers: {}); \
                 choose one of those, or leave the mechanism on auto",
                names(offered.iter().map(String::as_str))
            ),
            Self::WouldRevealSecret { mechanism } => write!(
                f,
                "AUTH {mechanism} would send the secret readable over an unencrypted \
                 connection, so it was not sent; require TLS (the policy required, or \
                 implicit TLS on port 465), or, to send it in the clear on purpose, name the \
                 mechanism under the policy none"
            ),
            Self::NoUsableMechanism {
                offered,
                tls,
                oauth2,
            } => {
                let offered_text = names(offered.iter().map(String::as_str));
                match (*oauth2, *tls) {
                    (true, true) => write!(
                        f,
                        "the server does not offer XOAUTH2, the only mechanism for an \
                         OAuth2 token (it offers: {offered_text}); use a password instead"
                    ),
                    (true, false) => write!(
                        f,
                        "XOAUTH2 would send the token readable over an unencrypted \
                         connection (the server offers: {offered_text}); require TLS \
                         (the policy required, or implicit TLS on port 465), or name \
                         XOAUTH2 explicitly under the policy none"
                    ),
                    (false, true) => write!(
                        f,
                        "the server offers no AUTH mechanism this client supports \
                         (it offers: {offered_text}; supported: {})",
                        supported_names()
                    ),
                    (false, false) => write!(
                        f,
                        "without TLS only SCRAM-SHA-256 and CRAM-MD5 are used \
                         automatically, since they keep the password secret, and the \
                         server offers neither (it offers: {offered_text}); require TLS \
                         (the policy required, or implicit TLS on port 465; many servers \
                         offer AUTH only after STARTTLS), or name the mechanism explicitly \
                         (e.g. PLAIN) under the policy none to send the password readable"
                    ),
                }
            }
            Self::CredentialsMismatch { mechanism, oauth2 } => {
                if *oauth2 {
                    write!(
                        f,
                        "AUTH {mechanism} needs a password, but an OAuth2 token was given; \
                         tokens work only with XOAUTH2"
                    )
                } else {
                    write!(
                        f,
                        "AUTH {mechanism} needs an OAuth2 access token, but a password \
                         was given; use another mechanism or give a token"
                    )
                }
            }
            Self::InvalidCredentials { mechanism, reason } => {
                write!(f, "cannot authenticate with {mechanism}: {reason}")
            }
            Self::NonceTooShort { len } => write!(
                f,
                "SCRAM-SHA-256 needs at least {MIN_NONCE_LEN} random nonce bytes, \
                 {len} given; pass random bytes from the operating system"
            ),
            Self::InvalidChallenge { mechanism, reason } => write!(
                f,
                "the server sent an invalid {mechanism} challenge: {reason}; \
                 the exchange was cancelled"
            ),
            Self::ServerSignatureMismatch => f.write_str(
                "the server's SCRAM-SHA-256 signature is wrong: it does not know the \
                 password, so it may be an impostor; nothing was sent",
            ),
            Self::ServerError { mechanism, message } => {
                write!(f, "the server reported a {mechanism} error: {message}")
            }
            Self::UnexpectedChallenge { mechanism } => write!(
                f,
                "the server sent a {mechanism} challenge after the exchange was complete; \
                 the exchange was cancelled"
            ),
            Self::TooManyIterations { requested, limit } => write!(
                f,
                "the server asked for {requested} SCRAM-SHA-256 iterations, more than the \
                 cap of {limit} (a server wasting the client's CPU, or one that raised its \
                 count on purpose: then raise Config::max_scram_iterations); the exchange \
                 was cancelled"
            ),
            Self::NoDerivationPending => {
                f.write_str("a derived key was handed over when no key derivation was pending")
            }
        }
    }
}

impl std::error::Error for SaslError {}

/// Copies a server-supplied list into an error, bounded in count and length.
pub(super) fn bounded_list(list: &[String]) -> Vec<String> {
    list.iter()
        .take(32)
        .map(|s| printable(s.as_bytes()))
        .collect()
}

/// Server-supplied bytes as text that is safe to show: invalid UTF-8 replaced,
/// control characters escaped, at most [`MAX_DETAIL_LEN`] characters.
pub(super) fn printable(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out = String::new();
    for (count, c) in text.chars().enumerate() {
        if count == MAX_DETAIL_LEN {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}
