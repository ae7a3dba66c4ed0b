//! The mechanisms this client implements, and which credentials each can carry.

use std::fmt;
use std::str::FromStr;

use super::{Credentials, SaslError, printable};

/// A SASL mechanism this client implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mechanism {
    /// PLAIN (RFC 4616): username and password in one message, readable.
    Plain,
    /// LOGIN (draft-murchison-sasl-login): username and password on two lines, readable.
    Login,
    /// CRAM-MD5 (RFC 2195): an HMAC-MD5 of the server's challenge keyed by the password.
    CramMd5,
    /// XOAUTH2 (Google): an OAuth 2.0 bearer token, readable.
    XOAuth2,
    /// SCRAM-SHA-256 (RFC 5802, RFC 7677): salted challenge-response that also
    /// proves the server knows the password, without channel binding.
    ScramSha256,
}

impl Mechanism {
    /// Every mechanism, in declaration order.
    pub const ALL: [Self; 5] = [
        Self::Plain,
        Self::Login,
        Self::CramMd5,
        Self::XOAuth2,
        Self::ScramSha256,
    ];

    /// The name as it appears in EHLO `AUTH` and in the `AUTH` command.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Plain => "PLAIN",
            Self::Login => "LOGIN",
            Self::CramMd5 => "CRAM-MD5",
            Self::XOAuth2 => "XOAUTH2",
            Self::ScramSha256 => "SCRAM-SHA-256",
        }
    }

    /// The mechanism with this name, compared case-insensitively
    /// (RFC 4422 §3.1 names are upper case, but servers and users vary).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|m| m.name().eq_ignore_ascii_case(name))
    }

    /// Whether the secret (password or token) travels in a readable form,
    /// so that anyone who can read the connection learns it.
    pub const fn reveals_secret(self) -> bool {
        matches!(self, Self::Plain | Self::Login | Self::XOAuth2)
    }

    /// Whether these credentials can be sent with this mechanism: XOAUTH2
    /// needs a token, the others a password, and each mechanism's message
    /// format must be able to carry the username and secret.
    ///
    /// [`choose_mechanism`](super::choose_mechanism) calls this on its pick; call it yourself before
    /// [`Authenticator::new`](super::Authenticator::new) when you choose the mechanism another way.
    pub fn check_credentials(self, credentials: &Credentials) -> Result<(), SaslError> {
        let (username, secret, is_token) = match credentials {
            Credentials::Password { username, password } => (username, password, false),
            Credentials::OAuth2 { username, token } => (username, token, true),
        };
        if is_token != (self == Self::XOAuth2) {
            return Err(SaslError::CredentialsMismatch {
                mechanism: self,
                oauth2: is_token,
            });
        }
        let secret = secret.expose();
        let bad = |what: &'static str| {
            Err(SaslError::InvalidCredentials {
                mechanism: self,
                reason: what,
            })
        };
        match self {
            // RFC 4616 §2: NUL separates the fields.
            Self::Plain if username.contains('\0') || secret.contains('\0') => bad(
                "the username or password contains a NUL character, which PLAIN uses as separator",
            ),
            Self::XOAuth2 if username.contains('\x01') || secret.contains('\x01') => bad(
                "the username or token contains a ^A character, which XOAUTH2 uses as separator",
            ),
            Self::XOAuth2 if secret.chars().any(|c| c.is_whitespace() || c.is_control()) => {
                bad("the token contains white space or control characters")
            }
            _ if username.is_empty() => bad("the username is empty"),
            _ => Ok(()),
        }
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
            name: printable(s.as_bytes()),
        })
    }
}
