//! PLAIN (RFC 4616 §2): one message `authzid NUL authcid NUL passwd`, sent as
//! the initial response. The authorization identity is left empty, so the
//! server derives it from the username. The password is readable to anyone
//! who can read the connection.

use super::{Mechanism, SaslError, Secret, encode};

/// A PLAIN exchange: the message, and whether it has been handed out.
#[derive(Clone)]
pub(super) struct Plain {
    message: Secret,
    sent: bool,
}

impl Plain {
    pub(super) fn new(username: &str, password: &Secret) -> Self {
        let mut raw = Vec::with_capacity(username.len() + password.expose().len() + 2);
        raw.push(0);
        raw.extend_from_slice(username.as_bytes());
        raw.push(0);
        raw.extend_from_slice(password.expose().as_bytes());
        Self {
            message: encode(&raw),
            sent: false,
        }
    }

    pub(super) fn initial_response(&mut self) -> Secret {
        self.sent = true;
        self.message.clone()
    }

    /// The server's empty `334` asks for the message when `AUTH PLAIN` went
    /// without an initial response (RFC 4954 §4); any other challenge is a fault.
    pub(super) fn respond(&mut self, challenge: &[u8]) -> Result<Secret, SaslError> {
        if self.sent || !challenge.is_empty() {
            return Err(SaslError::UnexpectedChallenge {
                mechanism: Mechanism::Plain,
            });
        }
        Ok(self.initial_response())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_bytes() {
        let mut m = Plain::new("user", &Secret::new("pass"));
        let ir = m.initial_response();
        assert_eq!(ir.expose(), "AHVzZXIAcGFzcw==");
        assert_eq!(
            base64::Engine::decode(&base64::engine::general_purpose::STANDARD, ir.expose()),
            Ok(b"\0user\0pass".to_vec())
        );
        // Non-ASCII goes as UTF-8 (RFC 4616 §2).
        let ir = Plain::new("jöran", &Secret::new("pä")).initial_response();
        assert_eq!(
            base64::Engine::decode(&base64::engine::general_purpose::STANDARD, ir.expose()),
            Ok("\0jöran\0pä".as_bytes().to_vec())
        );
    }

    #[test]
    fn empty_challenge_asks_for_the_message_once() {
        let mut m = Plain::new("user", &Secret::new("pass"));
        assert_eq!(
            m.respond(b"").map(|s| s.expose().to_owned()),
            Ok("AHVzZXIAcGFzcw==".to_owned())
        );
        assert!(matches!(
            m.respond(b""),
            Err(SaslError::UnexpectedChallenge { .. })
        ));

        let mut m = Plain::new("user", &Secret::new("pass"));
        let _ = m.initial_response();
        assert!(matches!(
            m.respond(b""),
            Err(SaslError::UnexpectedChallenge { .. })
        ));

        let mut m = Plain::new("user", &Secret::new("pass"));
        assert!(matches!(
            m.respond(b"x"),
            Err(SaslError::UnexpectedChallenge { .. })
        ));
    }
}
