//! LOGIN (draft-murchison-sasl-login-00): the server prompts twice, the
//! client answers with the username, then the password, each base64 on its
//! own line. The password is readable to anyone who can read the connection.
//!
//! Prompts are answered by position, not by their text: servers word them
//! differently ("Username:", "User Name", localized text, or nothing), and
//! some do not even base64-encode them, so the prompt text is not inspected.

use super::{Mechanism, SaslError, Secret, encode};

/// A LOGIN exchange: the two answers and how many prompts were answered.
#[derive(Clone)]
pub(super) struct Login {
    username: Secret,
    password: Secret,
    answered: u8,
}

impl Login {
    pub(super) fn new(username: &str, password: &Secret) -> Self {
        Self {
            username: encode(username.as_bytes()),
            password: encode(password.expose().as_bytes()),
            answered: 0,
        }
    }

    /// First prompt → username, second → password, a third is a fault.
    pub(super) fn respond(&mut self, _prompt: &str) -> Result<Secret, SaslError> {
        let answer = match self.answered {
            0 => self.username.clone(),
            1 => self.password.clone(),
            _ => {
                return Err(SaslError::UnexpectedChallenge {
                    mechanism: Mechanism::Login,
                });
            }
        };
        self.answered += 1;
        Ok(answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_by_position() {
        // "VXNlcm5hbWU6" = "Username:", "UGFzc3dvcmQ6" = "Password:".
        let mut m = Login::new("user", &Secret::new("pass"));
        assert_eq!(
            m.respond("VXNlcm5hbWU6").map(|s| s.expose().to_owned()),
            Ok("dXNlcg==".to_owned())
        );
        assert_eq!(
            m.respond("UGFzc3dvcmQ6").map(|s| s.expose().to_owned()),
            Ok("cGFzcw==".to_owned())
        );
        assert!(matches!(
            m.respond("VXNlcm5hbWU6"),
            Err(SaslError::UnexpectedChallenge { .. })
        ));
    }

    #[test]
    fn prompt_text_does_not_matter() {
        // Prompts swapped, empty, or not base64 at all: the order decides.
        let mut m = Login::new("user", &Secret::new("pass"));
        assert_eq!(
            m.respond("UGFzc3dvcmQ6").map(|s| s.expose().to_owned()),
            Ok("dXNlcg==".to_owned())
        );
        assert_eq!(
            m.respond("").map(|s| s.expose().to_owned()),
            Ok("cGFzcw==".to_owned())
        );
        let mut m = Login::new("user", &Secret::new("pass"));
        assert_eq!(
            m.respond("Username:").map(|s| s.expose().to_owned()),
            Ok("dXNlcg==".to_owned())
        );
    }
}
