//! XOAUTH2 (Google's "OAuth 2.0 Mechanism", the predecessor of RFC 7628's
//! OAUTHBEARER): one initial response
//! `user=<username>^Aauth=Bearer <token>^A^A`. The token is readable to anyone
//! who can read the connection.
//!
//! When the token is refused, the server sends a `334` whose challenge is a
//! base64 JSON error (status, schemes, scope); the client answers with an
//! empty line and the server then sends its `5xx`. The JSON is kept for the
//! error report.

use super::{Mechanism, SaslError, Secret, Step, encode, printable};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Stage {
    Fresh,
    Sent,
    ErrorAnswered,
}

/// An XOAUTH2 exchange.
#[derive(Clone)]
pub(super) struct XOAuth2 {
    message: Secret,
    stage: Stage,
}

impl XOAuth2 {
    pub(super) fn new(username: &str, token: &Secret) -> Self {
        let raw = format!("user={username}\x01auth=Bearer {}\x01\x01", token.expose());
        Self {
            message: encode(raw.as_bytes()),
            stage: Stage::Fresh,
        }
    }

    pub(super) fn initial_response(&mut self) -> Secret {
        self.stage = Stage::Sent;
        self.message.clone()
    }

    pub(super) fn respond(&mut self, challenge: &[u8]) -> Result<Step, SaslError> {
        match self.stage {
            // `AUTH XOAUTH2` went without an initial response (RFC 4954 §4).
            Stage::Fresh if challenge.is_empty() => Ok(Step::send(self.initial_response())),
            Stage::Fresh | Stage::ErrorAnswered => Err(SaslError::UnexpectedChallenge {
                mechanism: Mechanism::XOAuth2,
            }),
            Stage::Sent => {
                self.stage = Stage::ErrorAnswered;
                Ok(Step {
                    response: Secret::new(""),
                    detail: (!challenge.is_empty()).then(|| printable(challenge)),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_bytes() {
        // The example of Google's XOAUTH2 protocol page.
        let mut m = XOAuth2::new(
            "someuser@example.com",
            &Secret::new("ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg"),
        );
        assert_eq!(
            m.initial_response().expose(),
            "dXNlcj1zb21ldXNlckBleGFtcGxlLmNvbQFhdXRoPUJlYXJlciB5YTI5LnZGOWRmdDRxbVRjMk52YjNSbGNrQmhkSFJoZG1semRHRXVZMjl0Q2cBAQ=="
        );
    }

    #[test]
    fn error_challenge_is_kept_and_answered_empty() {
        let mut m = XOAuth2::new("u", &Secret::new("t"));
        let _ = m.initial_response();
        let json = br#"{"status":"401","schemes":"bearer","scope":"https://mail.google.com/"}"#;
        let step = m.respond(json).expect("an error challenge is answered");
        assert_eq!(step.response.expose(), "");
        assert_eq!(
            step.detail.as_deref(),
            Some(r#"{"status":"401","schemes":"bearer","scope":"https://mail.google.com/"}"#)
        );
        assert!(matches!(
            m.respond(b""),
            Err(SaslError::UnexpectedChallenge { .. })
        ));
    }

    #[test]
    fn empty_challenge_before_sending_asks_for_the_message() {
        let mut m = XOAuth2::new("u", &Secret::new("t"));
        let step = m.respond(b"").expect("the message is sent");
        assert_eq!(step.response.expose(), "dXNlcj11AWF1dGg9QmVhcmVyIHQBAQ==");
        let mut m = XOAuth2::new("u", &Secret::new("t"));
        assert!(matches!(
            m.respond(b"{}"),
            Err(SaslError::UnexpectedChallenge { .. })
        ));
    }
}
