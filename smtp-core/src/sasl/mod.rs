//! SASL client mechanisms for SMTP AUTH, sans-IO.
//!
//! SMTP AUTH (RFC 4954) carries a SASL (RFC 4422) exchange: the client sends
//! `AUTH <mechanism> [initial-response]`, the server answers `334 <challenge>`
//! zero or more times, and the client answers each challenge on a line of its
//! own, until the server's `235` (success) or `4xx`/`5xx` (failure). Every
//! challenge and response on the wire is base64 (RFC 4954 §4); this module
//! takes the base64 text of a `334` challenge and returns the base64 text to
//! send, so the caller only frames lines.
//!
//! Mechanisms: PLAIN (RFC 4616), LOGIN (draft-murchison-sasl-login),
//! CRAM-MD5 (RFC 2195), XOAUTH2 (Google's bearer-token mechanism) and
//! SCRAM-SHA-256 (RFC 5802 with RFC 7677), without channel binding.
//!
//! Two steps:
//!
//! 1. [`choose_mechanism`] applies the password-revealing rule (DESIGN.md
//!    "Secrets"): PLAIN, LOGIN and XOAUTH2 put the secret on the wire in a
//!    readable form, so they are used only inside TLS, except when the user
//!    named the mechanism and the encryption policy is `None`.
//! 2. An [`Authenticator`] runs one exchange:
//!
//! ```text
//! initial_response() ──> AUTH <mech> <ir>      (or AUTH <mech> when None)
//! 334 <challenge>    ──> respond(challenge) ──> <response line>
//! 235                ──> success; for SCRAM only if server_verified()
//! 4xx / 5xx          ──> failure; error_detail() may explain (XOAUTH2, SCRAM)
//! ```
//!
//! `respond` runs SCRAM's PBKDF2 step inline. [`Authenticator::answer`]
//! instead hands it out as a [`KeyDerivation`] to run anywhere (the client
//! passes it to its driver, which keeps it off the async executor), and
//! [`Authenticator::derived`] takes the result back. The iteration count a
//! server may ask for is capped ([`DEFAULT_MAX_ITERATIONS`]) before anything
//! is derived.
//!
//! The module reads no randomness: SCRAM's client nonce is made from bytes the
//! caller passes to [`Authenticator::new`].

mod authenticator;
mod choice;
mod cram_md5;
mod credentials;
mod error;
mod login;
mod mechanism;
mod plain;
mod scram;
mod xoauth2;

#[cfg(test)]
mod tests;

pub use authenticator::{
    Answer, Authenticator, DEFAULT_MAX_ITERATIONS, DerivedKey, KeyDerivation, MAX_AUTH_LINE_LEN,
    MAX_CHALLENGE_LEN, MIN_NONCE_LEN,
};
pub use choice::{AuthChoice, choose_mechanism};
pub use credentials::{Credentials, Secret};
pub use error::{SaslError, SaslFault};
pub use mechanism::Mechanism;

use authenticator::{Next, Step};
use credentials::encode;
use error::{bounded_list, printable};
