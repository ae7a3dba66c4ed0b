//! SCRAM-SHA-256 (RFC 5802 §3, §5, §7 with RFC 7677), client side, without
//! channel binding (gs2 header `n,,`).
//!
//! ```text
//! C: n,,n=<user>,r=<cnonce>                       initial response
//! S: r=<cnonce><snonce>,s=<salt>,i=<iterations>   334
//! C: c=biws,r=<cnonce><snonce>,p=<proof>
//! S: v=<server signature>  (or e=<error>)         334
//! C: (empty)
//! S: 235
//! ```
//!
//! The password never travels and the server proves it knows it too
//! (`v=`), so a `235` counts only once that proof was checked.
//!
//! Limits of this implementation, on purpose:
//! - The username gets only the escaping RFC 5802 §5.1 requires (`=` → `=3D`,
//!   `,` → `=2C`), not full SASLprep (RFC 4013), and the password is used as
//!   its UTF-8 bytes without normalization. ASCII names and passwords are
//!   unaffected; a non-ASCII password that the server normalized differently
//!   fails to authenticate (it does not leak).
//! - The iteration count must lie in 4096 (RFC 7677 §4's minimum) ..= the
//!   caller's cap ([`DEFAULT_MAX_ITERATIONS`]
//!   unless set), so a hostile server can neither weaken the hash nor make
//!   the client burn seconds of CPU per attempt.
//!
//! The PBKDF2 step is the one costly computation of the whole client, so it
//! is handed out as a [`KeyDerivation`] for the caller to run where it likes
//! (off an async executor's threads) rather than run inside `respond`.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use super::{
    DEFAULT_MAX_ITERATIONS, DerivedKey, KeyDerivation, Mechanism, Next, SaslError, Secret, Step,
    encode, printable,
};

/// RFC 7677 §4: at least 4096 iterations for SCRAM-SHA-256.
const MIN_ITERATIONS: u32 = 4096;
/// `c=` for gs2 header `n,,`: base64("n,,").
const CHANNEL_BINDING: &str = "biws";

#[derive(Clone)]
enum Stage {
    Fresh,
    SentClientFirst,
    /// The server-first-message passed its checks; the salted password is
    /// being derived by the caller.
    Deriving {
        server_first: String,
        nonce: String,
    },
    SentClientFinal {
        server_signature: [u8; 32],
    },
    Verified,
}

/// A SCRAM-SHA-256 exchange.
#[derive(Clone)]
pub(super) struct Scram {
    password: Secret,
    client_nonce: String,
    /// `n=<user>,r=<cnonce>`, part of the AuthMessage.
    client_first_bare: String,
    /// The most PBKDF2 iterations the server may ask for.
    max_iterations: u32,
    stage: Stage,
}

impl Scram {
    /// `client_nonce` must be printable ASCII without `,` (base64 text is).
    pub(super) fn new(username: &str, password: &Secret, client_nonce: &str) -> Self {
        let mut client_first_bare = String::from("n=");
        for c in username.chars() {
            match c {
                '=' => client_first_bare.push_str("=3D"),
                ',' => client_first_bare.push_str("=2C"),
                c => client_first_bare.push(c),
            }
        }
        client_first_bare.push_str(",r=");
        client_first_bare.push_str(client_nonce);
        Self {
            password: password.clone(),
            client_nonce: client_nonce.to_owned(),
            client_first_bare,
            max_iterations: DEFAULT_MAX_ITERATIONS,
            stage: Stage::Fresh,
        }
    }

    pub(super) fn set_max_iterations(&mut self, max: u32) {
        self.max_iterations = max;
    }

    pub(super) fn initial_response(&mut self) -> Secret {
        if matches!(self.stage, Stage::Fresh) {
            self.stage = Stage::SentClientFirst;
        }
        encode(format!("n,,{}", self.client_first_bare).as_bytes())
    }

    pub(super) const fn server_verified(&self) -> bool {
        matches!(self.stage, Stage::Verified)
    }

    pub(super) fn respond(&mut self, challenge: &[u8]) -> Result<Next, SaslError> {
        match &self.stage {
            // `AUTH SCRAM-SHA-256` went without an initial response (RFC 4954 §4).
            Stage::Fresh if challenge.is_empty() => {
                Ok(Next::Send(Step::send(self.initial_response())))
            }
            Stage::Fresh | Stage::Deriving { .. } | Stage::Verified => {
                Err(SaslError::UnexpectedChallenge {
                    mechanism: Mechanism::ScramSha256,
                })
            }
            Stage::SentClientFirst => {
                let (job, server_first, nonce) = self.server_first(challenge)?;
                self.stage = Stage::Deriving {
                    server_first,
                    nonce,
                };
                Ok(Next::Derive(job))
            }
            Stage::SentClientFinal { server_signature } => {
                verify_server_final(challenge, server_signature)?;
                self.stage = Stage::Verified;
                Ok(Next::Send(Step::send(Secret::new(""))))
            }
        }
    }

    /// Whether a [`KeyDerivation`] handed out by `respond` awaits its result.
    pub(super) const fn is_deriving(&self) -> bool {
        matches!(self.stage, Stage::Deriving { .. })
    }

    /// Takes the salted password of the job `respond` handed out and
    /// returns the client-final-message; `None` when no job is out.
    pub(super) fn derived(&mut self, key: &DerivedKey) -> Option<Secret> {
        let Stage::Deriving {
            server_first,
            nonce,
        } = &self.stage
        else {
            return None;
        };
        let (client_final, server_signature) = self.client_final(&key.0, server_first, nonce);
        self.stage = Stage::SentClientFinal { server_signature };
        Some(encode(client_final.as_bytes()))
    }

    /// Checks the server-first-message (RFC 5802 §5.1) and returns the key
    /// derivation it asks for, the message as text and the combined nonce.
    fn server_first(
        &self,
        server_first: &[u8],
    ) -> Result<(KeyDerivation, String, String), SaslError> {
        let server_first = std::str::from_utf8(server_first)
            .map_err(|_| invalid("the server-first-message is not UTF-8"))?;
        let mut attrs = server_first.split(',');
        let nonce = match attrs.next().and_then(|a| a.split_once('=')) {
            Some(("r", nonce)) => nonce,
            Some(("m", _)) => {
                return Err(invalid(
                    "the server requires an extension (m=) this client does not support",
                ));
            }
            _ => return Err(invalid("the server-first-message does not start with r=")),
        };
        let Some(("s", salt)) = attrs.next().and_then(|a| a.split_once('=')) else {
            return Err(invalid("the server-first-message lacks s= after r="));
        };
        let Some(("i", iterations)) = attrs.next().and_then(|a| a.split_once('=')) else {
            return Err(invalid("the server-first-message lacks i= after s="));
        };
        // Further attributes are extensions (RFC 5802 §7), ignored.

        // The cost first: a refused count is refused whatever else is wrong,
        // and before anything is derived.
        let iterations = parse_iterations(iterations, self.max_iterations)?;
        if nonce.len() <= self.client_nonce.len() || !nonce.starts_with(&self.client_nonce) {
            return Err(invalid(
                "the server nonce does not extend the client nonce (RFC 5802 §5.1)",
            ));
        }
        if !nonce.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
            return Err(invalid("the server nonce has unprintable characters"));
        }
        let salt = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, salt)
            .map_err(|_| invalid("the salt is not valid base64"))?;
        if salt.is_empty() {
            return Err(invalid("the salt is empty"));
        }
        let job = KeyDerivation {
            password: self.password.clone(),
            salt,
            iterations,
        };
        Ok((job, server_first.to_owned(), nonce.to_owned()))
    }

    /// Computes the client-final-message and the server signature to expect
    /// (RFC 5802 §3) from the salted password.
    fn client_final(
        &self,
        salted_password: &[u8; 32],
        server_first: &str,
        nonce: &str,
    ) -> (String, [u8; 32]) {
        let client_key = hmac(salted_password, b"Client Key");
        let stored_key: [u8; 32] = Sha256::digest(client_key).into();
        let server_key = hmac(salted_password, b"Server Key");

        let without_proof = format!("c={CHANNEL_BINDING},r={nonce}");
        let auth_message = format!("{},{server_first},{without_proof}", self.client_first_bare);
        let client_signature = hmac(&stored_key, auth_message.as_bytes());
        let mut proof = client_key;
        for (p, s) in proof.iter_mut().zip(client_signature) {
            *p ^= s;
        }
        let server_signature = hmac(&server_key, auth_message.as_bytes());
        let proof = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, proof);
        (format!("{without_proof},p={proof}"), server_signature)
    }
}

/// PBKDF2-HMAC-SHA-256 of the password: `SaltedPassword` of RFC 5802 §3.
pub(super) fn salted_password(password: &Secret, salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut out = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<Sha256>(password.expose().as_bytes(), salt, iterations, &mut out);
    out
}

/// `i=`: a positive decimal within [MIN_ITERATIONS, max].
fn parse_iterations(text: &str, max: u32) -> Result<u32, SaslError> {
    if text.is_empty() || text.len() > 10 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid("the iteration count is not a decimal number"));
    }
    match text.parse::<u32>() {
        Ok(n) if n < MIN_ITERATIONS => Err(SaslError::InvalidChallenge {
            mechanism: Mechanism::ScramSha256,
            reason: format!(
                "the iteration count {n} is below the minimum of {MIN_ITERATIONS} \
                 (RFC 7677 §4), which would weaken the stored password"
            ),
        }),
        Ok(n) if n > max => Err(SaslError::TooManyIterations {
            requested: n,
            limit: max,
        }),
        Ok(n) => Ok(n),
        Err(_) => Err(invalid("the iteration count is too large")),
    }
}

/// Checks the server-final-message: `v=<signature>` must match, `e=` is the
/// server's error (RFC 5802 §7).
fn verify_server_final(server_final: &[u8], expected: &[u8; 32]) -> Result<(), SaslError> {
    let text = std::str::from_utf8(server_final)
        .map_err(|_| invalid("the server-final-message is not UTF-8"))?;
    // Extensions may follow after a comma.
    let first = text.split(',').next().unwrap_or_default();
    match first.split_once('=') {
        Some(("v", signature)) => {
            let signature =
                base64::Engine::decode(&base64::engine::general_purpose::STANDARD, signature)
                    .map_err(|_| invalid("the server signature is not valid base64"))?;
            if constant_time_eq(&signature, expected) {
                Ok(())
            } else {
                Err(SaslError::ServerSignatureMismatch)
            }
        }
        Some(("e", message)) => Err(SaslError::ServerError {
            mechanism: Mechanism::ScramSha256,
            message: printable(message.as_bytes()),
        }),
        _ => Err(invalid("the server-final-message has neither v= nor e=")),
    }
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    // HMAC takes keys of any length (longer ones are hashed), so this cannot fail.
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC accepts keys of any length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// Compares without an early exit, so timing does not tell how much matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn invalid(reason: &str) -> SaslError {
    SaslError::InvalidChallenge {
        mechanism: Mechanism::ScramSha256,
        reason: reason.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NONCE: &str = "rOprNGfwEbeRWgbNEkqO";
    const SERVER_FIRST: &str =
        "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
    const CLIENT_FINAL: &str = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    const SERVER_FINAL: &str = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

    fn decode(s: &Secret) -> String {
        let bytes = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, s.expose())
            .expect("responses are base64");
        String::from_utf8(bytes).expect("SCRAM messages are UTF-8")
    }

    /// `Scram::respond`, with any key derivation run inline.
    fn respond(m: &mut Scram, challenge: &[u8]) -> Result<Step, SaslError> {
        match m.respond(challenge)? {
            Next::Send(step) => Ok(step),
            Next::Derive(job) => {
                assert!(m.is_deriving());
                let key = job.run();
                let response = m.derived(&key).expect("a derivation is pending");
                assert!(m.derived(&key).is_none(), "taken once");
                Ok(Step::send(response))
            }
        }
    }

    fn rfc() -> Scram {
        Scram::new("user", &Secret::new("pencil"), NONCE)
    }

    #[test]
    fn rfc7677_example() {
        let mut m = rfc();
        assert_eq!(
            decode(&m.initial_response()),
            "n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
        );
        let step = respond(&mut m, SERVER_FIRST.as_bytes()).expect("valid server-first");
        assert_eq!(decode(&step.response), CLIENT_FINAL);
        assert!(!m.server_verified());
        let step = respond(&mut m, SERVER_FINAL.as_bytes()).expect("valid server-final");
        assert_eq!(step.response.expose(), "");
        assert!(m.server_verified());
        assert!(matches!(
            respond(&mut m, b""),
            Err(SaslError::UnexpectedChallenge { .. })
        ));
    }

    #[test]
    fn wrong_server_signature_is_rejected() {
        let mut m = rfc();
        let _ = m.initial_response();
        respond(&mut m, SERVER_FIRST.as_bytes()).expect("valid server-first");
        let wrong = "v=7rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";
        assert_eq!(
            respond(&mut m, wrong.as_bytes()).err(),
            Some(SaslError::ServerSignatureMismatch)
        );
        assert!(!m.server_verified());
        // Truncated signature.
        let mut m = rfc();
        let _ = m.initial_response();
        respond(&mut m, SERVER_FIRST.as_bytes()).expect("valid server-first");
        assert_eq!(
            respond(&mut m, b"v=6rriTRBi").err().map(|e| matches!(
                e,
                SaslError::InvalidChallenge { .. } | SaslError::ServerSignatureMismatch
            )),
            Some(true)
        );
    }

    #[test]
    fn server_error_is_reported() {
        let mut m = rfc();
        let _ = m.initial_response();
        respond(&mut m, SERVER_FIRST.as_bytes()).expect("valid server-first");
        assert_eq!(
            respond(&mut m, b"e=invalid-proof").err(),
            Some(SaslError::ServerError {
                mechanism: Mechanism::ScramSha256,
                message: "invalid-proof".to_owned()
            })
        );
    }

    #[test]
    fn username_escaping() {
        let mut m = Scram::new("a=b,c", &Secret::new("p"), "abc");
        assert_eq!(decode(&m.initial_response()), "n,,n=a=3Db=2Cc,r=abc");
    }

    macro_rules! bad_server_first {
        ($($name:ident: $msg:expr;)*) => {$(
            #[test]
            fn $name() {
                let mut m = rfc();
                let _ = m.initial_response();
                let got = respond(&mut m, $msg.as_bytes()).err();
                assert!(matches!(got, Some(SaslError::InvalidChallenge { .. })), "{got:?}");
            }
        )*};
    }

    bad_server_first! {
        empty: "";
        missing_salt: "r=rOprNGfwEbeRWgbNEkqOxyz,i=4096";
        missing_iterations: "r=rOprNGfwEbeRWgbNEkqOxyz,s=W22ZaJ0SNY7soEsUEjb6gQ==";
        wrong_order: "s=W22ZaJ0SNY7soEsUEjb6gQ==,r=rOprNGfwEbeRWgbNEkqOxyz,i=4096";
        mandatory_extension: "m=x,r=rOprNGfwEbeRWgbNEkqOxyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        one_iteration: "r=rOprNGfwEbeRWgbNEkqOxyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=1";
        iterations_4095: "r=rOprNGfwEbeRWgbNEkqOxyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4095";
        iterations_overflow: "r=rOprNGfwEbeRWgbNEkqOxyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=99999999999";
        iterations_signed: "r=rOprNGfwEbeRWgbNEkqOxyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=+4096";
        iterations_empty: "r=rOprNGfwEbeRWgbNEkqOxyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=";
        nonce_not_ours: "r=XOprNGfwEbeRWgbNEkqOxyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        nonce_not_extended: "r=rOprNGfwEbeRWgbNEkqO,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        nonce_prefix_of_ours: "r=rOprNG,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        nonce_unprintable: "r=rOprNGfwEbeRWgbNEkqO x,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        salt_not_base64: "r=rOprNGfwEbeRWgbNEkqOxyz,s=%%%,i=4096";
        salt_empty: "r=rOprNGfwEbeRWgbNEkqOxyz,s=,i=4096";
        nonce_not_ascii: "r=rOprNGfwEbeRWgbNEkqOé,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
    }

    #[test]
    fn an_iteration_count_above_the_cap_is_refused_before_any_derivation() {
        let mut m = rfc();
        let _ = m.initial_response();
        let demand = "r=rOprNGfwEbeRWgbNEkqOxyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=10000000";
        // No job comes out (the error is returned instead of a KeyDerivation).
        assert_eq!(
            m.respond(demand.as_bytes()).err(),
            Some(SaslError::TooManyIterations {
                requested: 10_000_000,
                limit: DEFAULT_MAX_ITERATIONS
            })
        );
        // The cap itself is allowed, one more is not.
        for (cap, allowed) in [(4096, true), (4095, false)] {
            let mut m = rfc();
            m.set_max_iterations(cap);
            let _ = m.initial_response();
            match m.respond(SERVER_FIRST.as_bytes()) {
                Ok(Next::Derive(job)) => assert!(allowed && job.iterations() == 4096),
                Err(SaslError::TooManyIterations { requested, limit }) => {
                    assert!(!allowed && requested == 4096 && limit == 4095);
                }
                _ => panic!("cap {cap}"),
            }
        }
    }

    #[test]
    fn without_an_initial_response_only_an_empty_challenge_asks_for_it() {
        let mut m = rfc();
        assert!(matches!(
            m.respond(b"r=rOprNGfwEbeRWgbNEkqOxyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"),
            Err(SaslError::UnexpectedChallenge { .. })
        ));
        let mut m = rfc();
        let first = respond(&mut m, b"").expect("the empty 334 asks for it");
        assert_eq!(decode(&first.response), "n,,n=user,r=rOprNGfwEbeRWgbNEkqO");
    }

    #[test]
    fn a_mandatory_extension_is_named_as_such() {
        let mut m = rfc();
        let _ = m.initial_response();
        let got = respond(
            &mut m,
            b"m=x,r=rOprNGfwEbeRWgbNEkqOxyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
        );
        assert!(
            matches!(&got, Err(SaslError::InvalidChallenge { reason, .. }) if reason.contains("extension (m=)")),
            "{:?}",
            got.err()
        );
    }

    #[test]
    fn iteration_counts_are_parsed_with_bounds() {
        let not_decimal = Err(invalid("the iteration count is not a decimal number"));
        assert_eq!(parse_iterations("", 100_000), not_decimal);
        assert_eq!(parse_iterations("99999999999", u32::MAX), not_decimal);
        assert_eq!(parse_iterations("1e5", u32::MAX), not_decimal);
        // Ten digits are still read: the largest u32 is refused by the cap.
        assert_eq!(
            parse_iterations("4294967295", 100_000),
            Err(SaslError::TooManyIterations {
                requested: u32::MAX,
                limit: 100_000
            })
        );
        assert_eq!(
            parse_iterations("4294967296", u32::MAX),
            Err(invalid("the iteration count is too large"))
        );
        assert_eq!(parse_iterations("100000", 100_000), Ok(100_000));
    }

    #[test]
    fn signatures_differing_in_two_bytes_the_same_way_do_not_match() {
        // Differences must not cancel out (an XOR fold would let them).
        assert!(!constant_time_eq(&[1, 1], &[0, 0]));
        assert!(!constant_time_eq(&[1, 2, 3], &[1, 2]));
        assert!(constant_time_eq(&[7, 8], &[7, 8]));
        let mut m = rfc();
        let _ = m.initial_response();
        respond(&mut m, SERVER_FIRST.as_bytes()).expect("valid server-first");
        let mut forged = base64::Engine::decode(
            &base64::engine::general_purpose::STANDARD,
            SERVER_FINAL.trim_start_matches("v="),
        )
        .unwrap();
        forged[0] ^= 0x10;
        forged[1] ^= 0x10;
        let forged = format!(
            "v={}",
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, forged)
        );
        assert_eq!(
            respond(&mut m, forged.as_bytes()).err(),
            Some(SaslError::ServerSignatureMismatch)
        );
        assert!(!m.server_verified());
    }

    #[test]
    fn invalid_utf8_is_an_error() {
        let mut m = rfc();
        let _ = m.initial_response();
        assert!(matches!(
            respond(&mut m, b"r=\xff\xfe"),
            Err(SaslError::InvalidChallenge { .. })
        ));
    }

    #[test]
    fn extensions_after_iterations_are_ignored() {
        let mut m = rfc();
        let _ = m.initial_response();
        let with_ext = format!("{SERVER_FIRST},x=ignored");
        let step = respond(&mut m, with_ext.as_bytes()).expect("extensions are allowed");
        // The AuthMessage includes the extension, so the proof differs from the RFC's.
        assert!(decode(&step.response).starts_with("c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYD"));
        assert_ne!(decode(&step.response), CLIENT_FINAL);
    }

    #[test]
    fn malformed_server_final() {
        for bad in ["", "x=1", "v=%%%", "v="] {
            let mut m = rfc();
            let _ = m.initial_response();
            respond(&mut m, SERVER_FIRST.as_bytes()).expect("valid server-first");
            let got = respond(&mut m, bad.as_bytes()).err();
            assert!(
                matches!(
                    got,
                    Some(SaslError::InvalidChallenge { .. } | SaslError::ServerSignatureMismatch)
                ),
                "{bad:?}: {got:?}"
            );
            assert!(!m.server_verified());
        }
    }
}
