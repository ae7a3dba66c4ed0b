//! CRAM-MD5 (RFC 2195 §2): the server's challenge is keyed-hashed with the
//! password; the response is `username SP hex(HMAC-MD5(password, challenge))`
//! in lower-case hex. The password does not travel, but a recorded exchange
//! allows an offline guess of it, and the server is not authenticated.

use hmac::{Hmac, Mac};
use md5::Md5;

use super::{Mechanism, SaslError, Secret, encode};

/// A CRAM-MD5 exchange: the credentials until the one challenge is answered.
#[derive(Clone)]
pub(super) struct CramMd5 {
    username: String,
    password: Secret,
    answered: bool,
}

impl CramMd5 {
    pub(super) fn new(username: &str, password: &Secret) -> Self {
        Self {
            username: username.to_owned(),
            password: password.clone(),
            answered: false,
        }
    }

    /// Answers the one challenge; an empty one is refused, since a response
    /// to a fixed challenge could be replayed by whoever records it.
    pub(super) fn respond(&mut self, challenge: &[u8]) -> Result<Secret, SaslError> {
        if self.answered {
            return Err(SaslError::UnexpectedChallenge {
                mechanism: Mechanism::CramMd5,
            });
        }
        if challenge.is_empty() {
            return Err(SaslError::InvalidChallenge {
                mechanism: Mechanism::CramMd5,
                reason: "the challenge is empty".to_owned(),
            });
        }
        self.answered = true;
        Ok(encode(
            response(&self.username, &self.password, challenge).as_bytes(),
        ))
    }
}

/// `username SP digest`, before base64.
fn response(username: &str, password: &Secret, challenge: &[u8]) -> String {
    // HMAC takes keys of any length (longer ones are hashed), so this cannot fail.
    let mut mac = Hmac::<Md5>::new_from_slice(password.expose().as_bytes())
        .expect("HMAC accepts keys of any length");
    mac.update(challenge);
    let digest = mac.finalize().into_bytes();
    let mut out = String::with_capacity(username.len() + 1 + 2 * digest.len());
    out.push_str(username);
    out.push(' ');
    for byte in digest {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        out.push(char::from(HEX[usize::from(byte >> 4)]));
        out.push(char::from(HEX[usize::from(byte & 0x0f)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc2195_example() {
        let challenge = b"<1896.697170952@postoffice.reston.mci.net>";
        let password = Secret::new("tanstaaftanstaaf");
        assert_eq!(
            response("tim", &password, challenge),
            "tim b913a602c7eda7a495b4e6e7334d3890"
        );
        let mut m = CramMd5::new("tim", &password);
        assert_eq!(
            m.respond(challenge).map(|s| s.expose().to_owned()),
            Ok("dGltIGI5MTNhNjAyYzdlZGE3YTQ5NWI0ZTZlNzMzNGQzODkw".to_owned())
        );
        assert!(matches!(
            m.respond(challenge),
            Err(SaslError::UnexpectedChallenge { .. })
        ));
    }

    #[test]
    fn empty_challenge_is_refused() {
        let mut m = CramMd5::new("tim", &Secret::new("x"));
        assert!(matches!(
            m.respond(b""),
            Err(SaslError::InvalidChallenge { .. })
        ));
    }
}
