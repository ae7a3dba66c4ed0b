//! The four SMTP encryption policies on rustls 0.23, a tokio transport for
//! `smtp-core`, and standard delivery through a submission server.
//!
//! | server does | None | Optional | Required | Certified |
//! |---|---|---|---|---|
//! | STARTTLS, valid certificate | plaintext | TLS | TLS | TLS |
//! | self-signed / expired / wrong name | plaintext | TLS, unverified | TLS, unverified | **fails** |
//! | no STARTTLS | plaintext | plaintext | **fails** | **fails** |
//! | STARTTLS refused | – | plaintext | fails | fails |
//! | handshake fails | – | one plaintext retry (not with credentials) | fails | fails |
//!
//! Certified verifies the chain against the web PKI roots (plus any extra
//! trust anchors, [`Trust`]) and the host name. Required and Optional
//! encrypt without trusting the certificate but still check the handshake
//! signatures; what weakens checks is named `Danger…`. Port 465 means
//! implicit TLS; `None` there is refused.
//!
//! One settings type, [`Server`], says where and how; one session type,
//! [`Session`], does the sending; [`Server::send`] and [`Pool`] are built on
//! it:
//!
//! ```text
//! Server { host, port, implicit TLS, policy, Trust, client name, AUTH, timeouts }
//!   │
//!   ├─ Session::open ─► TcpTransport::connect (each address in turn, connect timeout,
//!   │                   implicit TLS handshake) ─► smtp_core::delivery::Driver runs the
//!   │                   Client until idle: greeting, EHLO, STARTTLS via
//!   │                   TcpTransport::start_tls (rustls, the policy's verifier), AUTH
//!   │    Session::send / send_all ─► queued on the kept session, run until idle again
//!   │    Session::close ─► QUIT ─► SessionReport
//!   │
//!   ├─ Server::send ─► the same connect; every envelope and QUIT queued before the
//!   │                  greeting; run to the end ─► Delivery { SessionReport (an outcome
//!   │                  per recipient, TLS facts), peer, tls_fallback }
//!   │
//!   └─ Pool::send ─► one kept Session per destination: refresh (no NOOP), reuse or reopen
//!
//! Under Optional, a failed STARTTLS handshake ─► once more on a new plaintext connection
//! (Session::open and Server::send alike; never with credentials or implicit TLS)
//! ```
//!
//! [`Server::send`] is one session for a known batch. [`Session`] keeps a
//! session open for sends over time. [`Pool`] keeps one per destination,
//! and is for programs that send mail as it comes. Failures are one type,
//! [`Error`], split by who is at fault.
//!
//! [`https::HttpsGet`] fetches the few documents mail set-up reads over the
//! web (a domain's autoconfiguration, MTA-STS policies) on the same rustls
//! stack, the certificate always verified.
//!
//! # Tracing
//!
//! Each session runs in a `smtp.session` span (host, port, policy); the TLS
//! decisions are events in it: a handshake done (version, cipher,
//! verified), a certificate that failed verification, Optional falling
//! back to plaintext and why. The core adds the session's steps and each
//! recipient's outcome (target `smtp_core::delivery`), and the transcript at
//! TRACE (target `smtp_core::transcript`), kept whenever a subscriber
//! listens. No secret is ever a field: the transcript is redacted.
//!
//! # Example: a submission server on 587, Certified, with AUTH
//!
//! ```no_run
//! use smtp_core::address::{Mailbox, ReversePath};
//! use smtp_core::sasl::{Credentials, Secret};
//! use smtp_core::delivery::MemoryBody;
//! use smtp_core::Envelope;
//! use smtp_tls::{Outgoing, Server};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let server = Server::new("smtp.example.com", 587).with_credentials(Credentials::Password {
//!     username: "alice@example.com".into(),
//!     password: Secret::new(std::env::var("SMTP_PASSWORD")?),
//! });
//! let message = Outgoing {
//!     envelope: Envelope::new(
//!         ReversePath::parse("alice@example.com")?,
//!         vec![Mailbox::parse("bob@example.net")?],
//!     ),
//!     body: Box::new(MemoryBody::new("From: alice@example.com\r\nSubject: hi\r\n\r\nHello.\r\n")),
//! };
//! let delivery = server.send(vec![message], &mut |_| {}).await?;
//! for outcome in &delivery.session.messages[0].recipients {
//!     println!("{outcome}");
//! }
//! if let Some(tls) = &delivery.session.tls {
//!     println!("{} {} verified={}", tls.version, tls.cipher_suite, tls.verified);
//! }
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod body;
mod certificate;
mod connector;
mod error;
pub mod https;
mod pool;
mod session;
mod settings;
mod tcp;
mod trust;
mod verify;

pub use body::FileBody;
pub use connector::MxConnector;
pub use error::Error;
pub use pool::Pool;
pub use session::{Delivery, Observed, Outgoing, Session};
pub use settings::Server;
pub use tcp::TcpTransport;
pub use trust::Trust;
pub use verify::{PINNING_ADVICE, UNKNOWN_ISSUER_ADVICE};

/// A random number below `n` (0 when `n` is 0), from the TLS provider's
/// generator: the `pick` that spreads direct delivery over MX hosts of
/// equal preference. It only spreads load, so a generator that fails gives
/// 0 (the first host) rather than an error.
pub fn random_below(n: usize) -> usize {
    let mut bytes = [0u8; 8];
    let random = rustls::crypto::ring::default_provider().secure_random;
    if n == 0 || random.fill(&mut bytes).is_err() {
        return 0;
    }
    usize::try_from(u64::from_le_bytes(bytes) % n as u64).unwrap_or(0)
}

/// The README's example, compiled as a doctest.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

#[cfg(test)]
mod tests {
    #[test]
    fn random_below_stays_below_and_reaches_every_value() {
        assert_eq!(super::random_below(0), 0);
        assert_eq!(super::random_below(1), 0);
        let mut seen = [0usize; 3];
        for _ in 0..300 {
            let k = super::random_below(3);
            assert!(k < 3);
            seen[k] += 1;
        }
        assert!(seen.iter().all(|&n| n > 30), "{seen:?}");
    }
}
