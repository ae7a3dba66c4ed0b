//! Who the client authenticates as, and the secret that never prints.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

/// A secret (password, token, or a response that contains one) that never prints.
///
/// `Debug` and `Display` show `<redacted>`; [`Secret::expose`] is the one way
/// to read it, so every place that does is easy to find. The memory is not
/// zeroed on drop: that would need a dependency this crate does not take, and
/// the strings the caller built the secret from are not zeroed either.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// The secret itself, to write to the wire or hash.
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

/// Who the client authenticates as, and with what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credentials {
    /// A username and password: SCRAM-SHA-256, CRAM-MD5, PLAIN or LOGIN.
    Password {
        /// The authentication identity.
        username: String,
        /// The password.
        password: Secret,
    },
    /// A username and an OAuth 2.0 access token: XOAUTH2 only.
    OAuth2 {
        /// The account the token was issued for.
        username: String,
        /// The access token (not the refresh token).
        token: Secret,
    },
}

impl Credentials {
    /// The username, whatever the kind of secret.
    pub fn username(&self) -> &str {
        match self {
            Self::Password { username, .. } | Self::OAuth2 { username, .. } => username,
        }
    }

    pub(super) const fn is_oauth2(&self) -> bool {
        matches!(self, Self::OAuth2 { .. })
    }
}

/// Base64 of a response, kept as secret as the response.
pub(super) fn encode(bytes: &[u8]) -> Secret {
    Secret(STANDARD.encode(bytes))
}
