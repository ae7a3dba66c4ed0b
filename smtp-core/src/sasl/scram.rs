//! SCRAM-SHA-256 (RFC 5802, RFC 7677), without channel binding (`n,,`).
//!
//! The user name is escaped (`=` → `=3D`, `,` → `=2C`) but not run through
//! full SASLprep: non-ASCII user names and passwords are sent as their
//! UTF-8 bytes, which matches servers that do not normalise either.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use super::{Mechanism, SaslError};

/// RFC 7677 §4 recommends at least 4096; more than this is a server trying
/// to burn the client's CPU.
const MIN_ITERATIONS: u32 = 4096;
const MAX_ITERATIONS: u32 = 10_000_000;

pub(super) struct Scram {
    client_first_bare: String,
    client_nonce: String,
    server_signature: Option<Vec<u8>>,
    verified: bool,
}

fn invalid(reason: &str) -> SaslError {
    SaslError::InvalidChallenge {
        mechanism: Mechanism::ScramSha256,
        reason: reason.to_owned(),
    }
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC takes keys of any length: this cannot fail.
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

/// The value of attribute `name` (`r`, `s`, `i`, `v`, `e`) in a SCRAM message.
fn attribute(message: &str, name: char) -> Option<&str> {
    message.split(',').find_map(|part| {
        let mut chars = part.chars();
        (chars.next() == Some(name) && chars.next() == Some('=')).then(|| &part[2..])
    })
}

impl Scram {
    pub(super) fn new(username: &str, client_nonce: &str) -> Self {
        let user = username.replace('=', "=3D").replace(',', "=2C");
        // base64 has no ','; drop anything else that could break the syntax.
        let nonce: String = client_nonce
            .chars()
            .filter(|c| c.is_ascii_graphic() && *c != ',')
            .collect();
        Self {
            client_first_bare: format!("n={user},r={nonce}"),
            client_nonce: nonce,
            server_signature: None,
            verified: false,
        }
    }

    pub(super) fn client_first(&self) -> String {
        format!("n,,{}", self.client_first_bare)
    }

    pub(super) fn client_final(
        &mut self,
        password: &str,
        server_first: &str,
    ) -> Result<String, SaslError> {
        if self.server_signature.is_some() {
            return Err(SaslError::UnexpectedChallenge {
                mechanism: Mechanism::ScramSha256,
            });
        }
        if let Some(e) = attribute(server_first, 'e') {
            return Err(invalid(&format!("the server refused: {e}")));
        }
        let nonce = attribute(server_first, 'r').ok_or_else(|| invalid("no nonce"))?;
        if !nonce.starts_with(&self.client_nonce) || nonce.len() == self.client_nonce.len() {
            return Err(invalid("the server nonce does not extend the client nonce"));
        }
        let salt = attribute(server_first, 's')
            .and_then(|s| STANDARD.decode(s).ok())
            .ok_or_else(|| invalid("no valid salt"))?;
        let iterations: u32 = attribute(server_first, 'i')
            .and_then(|i| i.parse().ok())
            .ok_or_else(|| invalid("no valid iteration count"))?;
        if !(MIN_ITERATIONS..=MAX_ITERATIONS).contains(&iterations) {
            return Err(invalid(&format!(
                "iteration count {iterations} is outside {MIN_ITERATIONS}..={MAX_ITERATIONS}"
            )));
        }
        let mut salted = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), &salt, iterations, &mut salted);
        let client_key = hmac(&salted, b"Client Key");
        let stored_key = Sha256::digest(&client_key);
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{server_first},{without_proof}", self.client_first_bare);
        let client_signature = hmac(&stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(&client_signature)
            .map(|(k, s)| k ^ s)
            .collect();
        let server_key = hmac(&salted, b"Server Key");
        self.server_signature = Some(hmac(&server_key, auth_message.as_bytes()));
        Ok(format!("{without_proof},p={}", STANDARD.encode(proof)))
    }

    pub(super) fn verify_server_final(&mut self, server_final: &str) -> Result<(), SaslError> {
        if let Some(e) = attribute(server_final, 'e') {
            return Err(invalid(&format!("the server refused: {e}")));
        }
        let expected = self
            .server_signature
            .as_ref()
            .ok_or(SaslError::UnexpectedChallenge {
                mechanism: Mechanism::ScramSha256,
            })?;
        let given = attribute(server_final, 'v').and_then(|v| STANDARD.decode(v).ok());
        if given.as_ref() != Some(expected) {
            return Err(SaslError::ServerSignatureMismatch);
        }
        self.verified = true;
        Ok(())
    }

    pub(super) fn verified(&self) -> bool {
        self.verified
    }
}
