//! SASL client mechanisms for SMTP AUTH (RFC 4954), without I/O.
//!
//! [`choose_mechanism`] enforces the rule that keeps passwords off
//! plaintext wires; an [`Authenticator`] runs one exchange, taking each
//! `334` challenge as base64 text and giving back the base64 line to send.
//!
//! | mechanism | RFC | reveals the secret |
//! |---|---|---|
//! | PLAIN | 4616 | yes |
//! | LOGIN | draft-murchison-sasl-login | yes |
//! | CRAM-MD5 | 2195 | no |
//! | XOAUTH2 | Google's | yes (a bearer token) |
//! | SCRAM-SHA-256 | 5802, 7677 | no, and proves the server knows it |

mod cram_md5;
mod scram;

use std::fmt;
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

/// A supported SASL mechanism.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mechanism {
    /// PLAIN (RFC 4616).
    Plain,
    /// LOGIN.
    Login,
    /// CRAM-MD5 (RFC 2195).
    CramMd5,
    /// XOAUTH2 (OAuth 2.0 bearer token).
    XOAuth2,
    /// SCRAM-SHA-256 (RFC 7677).
    ScramSha256,
}

impl Mechanism {
    /// Every supported mechanism.
    pub const ALL: [Self; 5] = [
        Self::Plain,
        Self::Login,
        Self::CramMd5,
        Self::XOAuth2,
        Self::ScramSha256,
    ];

    /// The registered name.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Plain => "PLAIN",
            Self::Login => "LOGIN",
            Self::CramMd5 => "CRAM-MD5",
            Self::XOAuth2 => "XOAUTH2",
            Self::ScramSha256 => "SCRAM-SHA-256",
        }
    }

    /// Looks a mechanism up by name, ignoring case.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|m| m.name().eq_ignore_ascii_case(name))
    }

    /// True when the exchange shows the secret to anyone who can read it.
    pub const fn reveals_secret(self) -> bool {
        matches!(self, Self::Plain | Self::Login | Self::XOAuth2)
    }
}

impl fmt::Display for Mechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Mechanism {
    type Err = SaslError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_name(s).ok_or_else(|| SaslError::UnknownMechanism {
            name: printable(s, 64),
        })
    }
}

/// A secret that never prints: `Debug` and `Display` show `<redacted>`.
/// (The memory is not zeroed on drop.)
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// The secret itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Who the client is and what proves it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credentials {
    /// A user name and password.
    Password {
        /// The user name.
        username: String,
        /// The password.
        password: Secret,
    },
    /// A user name and an OAuth 2.0 access token (XOAUTH2).
    OAuth2 {
        /// The user name (the mailbox).
        username: String,
        /// The access token.
        token: Secret,
    },
}

impl Credentials {
    /// The user name.
    pub fn username(&self) -> &str {
        match self {
            Self::Password { username, .. } | Self::OAuth2 { username, .. } => username,
        }
    }

    fn secret(&self) -> &str {
        match self {
            Self::Password { password: s, .. } | Self::OAuth2 { token: s, .. } => s.expose(),
        }
    }
}

/// Which mechanism the user asked for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AuthChoice {
    /// The strongest one the server offers that the rules allow.
    #[default]
    Auto,
    /// This one.
    Explicit(Mechanism),
}

/// Why authentication cannot go on.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SaslError {
    /// A name that is not a supported mechanism.
    UnknownMechanism {
        /// The name given.
        name: String,
    },
    /// The mechanism asked for is not offered.
    NotOffered {
        /// The mechanism.
        mechanism: Mechanism,
        /// What the server offers.
        offered: Vec<String>,
    },
    /// The mechanism would show the secret on an unencrypted connection.
    WouldRevealSecret {
        /// The mechanism.
        mechanism: Mechanism,
    },
    /// Nothing offered can be used without TLS or with these credentials.
    NoUsableMechanism {
        /// What the server offers.
        offered: Vec<String>,
        /// Whether the session was encrypted.
        tls: bool,
    },
    /// The mechanism does not fit the credentials (XOAUTH2 needs a token, the others a password).
    WrongCredentialKind {
        /// The mechanism.
        mechanism: Mechanism,
    },
    /// A challenge that cannot be answered.
    InvalidChallenge {
        /// The mechanism.
        mechanism: Mechanism,
        /// What is wrong with it.
        reason: String,
    },
    /// The server's SCRAM signature is wrong: it does not know the password.
    ServerSignatureMismatch,
    /// A challenge after the exchange should have ended.
    UnexpectedChallenge {
        /// The mechanism.
        mechanism: Mechanism,
    },
}

impl fmt::Display for SaslError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownMechanism { name } => write!(
                f,
                "unknown SASL mechanism {name:?}; use one of PLAIN, LOGIN, CRAM-MD5, XOAUTH2, SCRAM-SHA-256 or auto"
            ),
            Self::NotOffered { mechanism, offered } => write!(
                f,
                "the server does not offer AUTH {mechanism} (it offers: {}); pick one of those or use auto",
                list(offered)
            ),
            Self::WouldRevealSecret { mechanism } => write!(
                f,
                "AUTH {mechanism} would send the password readable on an unencrypted connection; \
                 use --tls required (or port 465), or --tls none to accept the risk"
            ),
            Self::NoUsableMechanism { offered, tls: false } => write!(
                f,
                "the server offers only AUTH mechanisms that reveal the password ({}) and the \
                 connection is not encrypted; use --tls required or port 465, or name the \
                 mechanism with --auth under --tls none to accept the risk",
                list(offered)
            ),
            Self::NoUsableMechanism { offered, tls: true } => write!(
                f,
                "none of the server's AUTH mechanisms ({}) is supported with these credentials",
                list(offered)
            ),
            Self::WrongCredentialKind { mechanism: Mechanism::XOAuth2 } => {
                f.write_str("XOAUTH2 needs an OAuth 2.0 access token, not a password")
            }
            Self::WrongCredentialKind { mechanism } => {
                write!(f, "{mechanism} needs a password; an OAuth 2.0 token only works with XOAUTH2")
            }
            Self::InvalidChallenge { mechanism, reason } => {
                write!(f, "the server sent an invalid {mechanism} challenge: {reason}")
            }
            Self::ServerSignatureMismatch => f.write_str(
                "the server's SCRAM signature is wrong: it does not know the password (possible impostor)",
            ),
            Self::UnexpectedChallenge { mechanism } => {
                write!(f, "the server sent more {mechanism} challenges than the mechanism has")
            }
        }
    }
}

impl std::error::Error for SaslError {}

fn list(offered: &[String]) -> String {
    if offered.is_empty() {
        "nothing".to_owned()
    } else {
        offered.join(" ")
    }
}

/// Error text must not carry control characters from the server or the user.
fn printable(s: &str, limit: usize) -> String {
    s.chars()
        .take(limit)
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .collect()
}

/// Chooses the mechanism for this session by the secret-revealing rule.
///
/// `tls`: the session is encrypted. `plaintext_allowed`: the encryption
/// policy is None, the one case where a mechanism the user names explicitly
/// may reveal the secret in the clear (the caller warns).
pub fn choose_mechanism(
    offered: &[String],
    credentials: &Credentials,
    choice: AuthChoice,
    tls: bool,
    plaintext_allowed: bool,
) -> Result<Mechanism, SaslError> {
    let is_offered = |m: Mechanism| offered.iter().any(|o| o.eq_ignore_ascii_case(m.name()));
    let fits = |m: Mechanism| {
        matches!(credentials, Credentials::OAuth2 { .. }) == (m == Mechanism::XOAuth2)
    };
    match choice {
        AuthChoice::Explicit(m) => {
            if !fits(m) {
                Err(SaslError::WrongCredentialKind { mechanism: m })
            } else if !is_offered(m) {
                Err(SaslError::NotOffered {
                    mechanism: m,
                    offered: offered.to_vec(),
                })
            } else if m.reveals_secret() && !tls && !plaintext_allowed {
                Err(SaslError::WouldRevealSecret { mechanism: m })
            } else {
                Ok(m)
            }
        }
        AuthChoice::Auto => {
            const STRONGEST_FIRST: [Mechanism; 5] = [
                Mechanism::ScramSha256,
                Mechanism::CramMd5,
                Mechanism::XOAuth2,
                Mechanism::Plain,
                Mechanism::Login,
            ];
            STRONGEST_FIRST
                .into_iter()
                .find(|&m| fits(m) && is_offered(m) && (tls || !m.reveals_secret()))
                .ok_or_else(|| SaslError::NoUsableMechanism {
                    offered: offered.to_vec(),
                    tls,
                })
        }
    }
}

/// One authentication exchange.
pub struct Authenticator {
    mechanism: Mechanism,
    username: String,
    secret: Secret,
    step: u32,
    scram: Option<scram::Scram>,
    error_detail: Option<String>,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("mechanism", &self.mechanism)
            .field("username", &self.username)
            .field("step", &self.step)
            .finish_non_exhaustive()
    }
}

fn b64(bytes: &[u8]) -> Secret {
    Secret(STANDARD.encode(bytes))
}

impl Authenticator {
    /// Starts an exchange. `nonce` is random bytes from the caller (the core
    /// reads no randomness source); SCRAM builds its client nonce from them.
    pub fn new(mechanism: Mechanism, credentials: &Credentials, nonce: &[u8]) -> Self {
        let scram = (mechanism == Mechanism::ScramSha256)
            .then(|| scram::Scram::new(credentials.username(), &STANDARD.encode(nonce)));
        Self {
            mechanism,
            username: credentials.username().to_owned(),
            secret: Secret::new(credentials.secret()),
            step: 0,
            scram,
            error_detail: None,
        }
    }

    #[cfg(test)]
    fn with_client_nonce(credentials: &Credentials, nonce: &str) -> Self {
        let mut a = Self::new(Mechanism::ScramSha256, credentials, b"");
        a.scram = Some(scram::Scram::new(credentials.username(), nonce));
        a
    }

    /// The mechanism.
    pub fn mechanism(&self) -> Mechanism {
        self.mechanism
    }

    /// The initial response for `AUTH <mechanism> <response>` (RFC 4954 §4),
    /// base64; `None` for mechanisms that wait for a challenge.
    pub fn initial_response(&mut self) -> Option<Secret> {
        match self.mechanism {
            Mechanism::Plain => {
                self.step = 1;
                Some(b64(format!(
                    "\0{}\0{}",
                    self.username,
                    self.secret.expose()
                )
                .as_bytes()))
            }
            Mechanism::XOAuth2 => {
                self.step = 1;
                let token = format!(
                    "user={}\x01auth=Bearer {}\x01\x01",
                    self.username,
                    self.secret.expose()
                );
                Some(b64(token.as_bytes()))
            }
            Mechanism::ScramSha256 => {
                self.step = 1;
                self.scram
                    .as_ref()
                    .map(|s| b64(s.client_first().as_bytes()))
            }
            Mechanism::Login | Mechanism::CramMd5 => None,
        }
    }

    /// Answers a `334` challenge given as its base64 text.
    pub fn respond(&mut self, challenge_base64: &str) -> Result<Secret, SaslError> {
        let mechanism = self.mechanism;
        let invalid = |reason: &str| SaslError::InvalidChallenge {
            mechanism,
            reason: reason.to_owned(),
        };
        let challenge = STANDARD
            .decode(challenge_base64.trim())
            .map_err(|_| invalid("it is not base64"))?;
        self.step += 1;
        match (mechanism, self.step) {
            (Mechanism::Login, 1) => Ok(b64(self.username.as_bytes())),
            (Mechanism::Login, 2) => Ok(b64(self.secret.expose().as_bytes())),
            (Mechanism::CramMd5, 1) => {
                let digest = cram_md5::digest(self.secret.expose(), &challenge);
                Ok(b64(format!("{} {digest}", self.username).as_bytes()))
            }
            // PLAIN with its initial response refused as empty: send it again.
            (Mechanism::Plain, 2) if challenge.is_empty() => Ok(b64(format!(
                "\0{}\0{}",
                self.username,
                self.secret.expose()
            )
            .as_bytes())),
            (Mechanism::XOAuth2, 2) => {
                // The server's JSON error; an empty answer makes it send the 5xx.
                self.error_detail = Some(printable(&String::from_utf8_lossy(&challenge), 1024));
                Ok(Secret::new(""))
            }
            (Mechanism::ScramSha256, 2) => {
                let scram = self
                    .scram
                    .as_mut()
                    .ok_or(SaslError::UnexpectedChallenge { mechanism })?;
                let text =
                    std::str::from_utf8(&challenge).map_err(|_| invalid("it is not UTF-8"))?;
                let reply = scram.client_final(self.secret.expose(), text)?;
                Ok(b64(reply.as_bytes()))
            }
            (Mechanism::ScramSha256, 3) => {
                let scram = self
                    .scram
                    .as_mut()
                    .ok_or(SaslError::UnexpectedChallenge { mechanism })?;
                let text =
                    std::str::from_utf8(&challenge).map_err(|_| invalid("it is not UTF-8"))?;
                scram.verify_server_final(text)?;
                Ok(Secret::new(""))
            }
            _ => Err(SaslError::UnexpectedChallenge { mechanism }),
        }
    }

    /// For SCRAM, true once the server proved it knows the password; always
    /// true for other mechanisms. A `235` before that is a server fault.
    pub fn server_verified(&self) -> bool {
        self.scram.as_ref().is_none_or(scram::Scram::verified)
    }

    /// Detail the server gave with a failure (XOAUTH2's JSON error).
    pub fn error_detail(&self) -> Option<&str> {
        self.error_detail.as_deref()
    }
}

#[cfg(test)]
mod tests;
