//! Choosing a mechanism from the server's EHLO `AUTH` list, by the
//! password-revealing rule.

use super::{Credentials, Mechanism, SaslError, bounded_list};

/// What the user asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum AuthChoice {
    /// The strongest mechanism the server offers that may be used here.
    #[default]
    Auto,
    /// This mechanism and no other (`--auth <name>`).
    Explicit(Mechanism),
}

/// Order of preference for a password, strongest first.
const PASSWORD_PREFERENCE: [Mechanism; 4] = [
    Mechanism::ScramSha256,
    Mechanism::CramMd5,
    Mechanism::Plain,
    Mechanism::Login,
];

/// Chooses the mechanism for this session by the password-revealing rule
/// (DESIGN.md "Secrets").
///
/// - `offered`: the mechanism names from the server's EHLO `AUTH` keyword
///   (any case; names this module does not implement are ignored).
/// - `tls`: the session is encrypted.
/// - `plaintext_allowed`: the encryption policy is `None`. Only then may a
///   mechanism that reveals the secret go in the clear, and only when the user
///   named it; the caller should warn when that happens.
///
/// `Auto` picks, among the offered mechanisms usable with these credentials,
/// SCRAM-SHA-256 > CRAM-MD5 > PLAIN > LOGIN for a password and XOAUTH2 for a
/// token. Without TLS it considers only SCRAM-SHA-256 and CRAM-MD5 (whatever
/// `plaintext_allowed` says) and fails with [`SaslError::NoUsableMechanism`]
/// when the server offers neither.
///
/// `Explicit(m)` fails when `m` does not fit the credentials
/// ([`SaslError::CredentialsMismatch`]), when the server does not offer it
/// ([`SaslError::NotOffered`]), or when it reveals the secret and the session
/// is neither encrypted nor under policy `None`
/// ([`SaslError::WouldRevealSecret`]).
///
/// The chosen mechanism has passed [`Mechanism::check_credentials`].
pub fn choose_mechanism(
    offered: &[String],
    credentials: &Credentials,
    choice: AuthChoice,
    tls: bool,
    plaintext_allowed: bool,
) -> Result<Mechanism, SaslError> {
    let is_offered = |m: Mechanism| offered.iter().any(|o| o.eq_ignore_ascii_case(m.name()));
    let chosen = match choice {
        AuthChoice::Explicit(m) => {
            if credentials.is_oauth2() != (m == Mechanism::XOAuth2) {
                return Err(SaslError::CredentialsMismatch {
                    mechanism: m,
                    oauth2: credentials.is_oauth2(),
                });
            }
            if !is_offered(m) {
                return Err(SaslError::NotOffered {
                    mechanism: m,
                    offered: bounded_list(offered),
                });
            }
            if m.reveals_secret() && !tls && !plaintext_allowed {
                return Err(SaslError::WouldRevealSecret { mechanism: m });
            }
            m
        }
        AuthChoice::Auto => {
            let preference: &[Mechanism] = if credentials.is_oauth2() {
                &[Mechanism::XOAuth2]
            } else {
                &PASSWORD_PREFERENCE
            };
            let usable = preference
                .iter()
                .copied()
                .find(|&m| is_offered(m) && (tls || !m.reveals_secret()));
            let Some(m) = usable else {
                return Err(SaslError::NoUsableMechanism {
                    offered: bounded_list(offered),
                    tls,
                    oauth2: credentials.is_oauth2(),
                });
            };
            m
        }
    };
    chosen.check_credentials(credentials)?;
    Ok(chosen)
}
