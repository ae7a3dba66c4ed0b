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

    /// The secret and the forms AUTH sends it in (base64 of the secret as
    /// LOGIN sends it, of PLAIN's and of XOAUTH2's initial response), for
    /// redaction: a server may echo what it got in a reply's text, which a
    /// caller then logs, prints or stores.
    pub fn secret_forms(&self) -> Vec<String> {
        use base64::Engine;
        use base64::engine::general_purpose::STANDARD;
        let (user, secret) = match self {
            Self::Password { username, password } => (username, password.expose()),
            Self::OAuth2 { username, token } => (username, token.expose()),
        };
        if secret.is_empty() {
            return Vec::new();
        }
        vec![
            secret.to_owned(),
            STANDARD.encode(secret),
            STANDARD.encode(format!("\0{user}\0{secret}")),
            STANDARD.encode(format!("user={user}\x01auth=Bearer {secret}\x01\x01")),
        ]
    }

    /// `text` with every [`secret_forms`](Self::secret_forms) replaced by
    /// `<redacted>`.
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_owned();
        let mut forms = self.secret_forms();
        // Longest first: one form's base64 may contain another's.
        forms.sort_by_key(|f| std::cmp::Reverse(f.len()));
        for form in forms {
            if out.contains(&form) {
                out = out.replace(&form, "<redacted>");
            }
        }
        out
    }

    pub(super) const fn is_oauth2(&self) -> bool {
        matches!(self, Self::OAuth2 { .. })
    }
}

/// Base64 of a response, kept as secret as the response.
pub(super) fn encode(bytes: &[u8]) -> Secret {
    Secret(STANDARD.encode(bytes))
}
