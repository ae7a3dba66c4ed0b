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
//! Certified verifies the chain against the web PKI roots (plus any CA file)
//! and the host name. Required and Optional encrypt without trusting the
//! certificate but still check the handshake signatures; what weakens checks
//! is named `Danger…`. Port 465 means implicit TLS; `None` there is refused.
//!
//! ```text
//! Submission::send ─► TcpTransport::connect (each address in turn, connect timeout,
//!                     implicit TLS handshake) ─► smtp_core::delivery::drive(Client, …)
//!                     ─► STARTTLS via TcpTransport::start_tls (rustls, policy's verifier)
//!                     ─► Delivery { SessionReport (outcome per recipient, TLS facts), … }
//!
//! Connection::open ─► the same set-up, run by smtp_core::delivery::Driver until idle
//! Connection::send / send_all ─► queued on the kept session, run until idle again
//! Pool::send ─► one kept Connection per destination: refresh (no NOOP), reuse or reopen
//! ```
//!
//! [`Submission::send`] is one session for a known batch. [`Connection`]
//! keeps a session open for sends over time. [`Pool`] keeps one per
//! destination, and is for programs that send mail as it comes.
//!
//! # Example: a submission server on 587, Certified, with AUTH
//!
//! ```no_run
//! use smtp_core::address::{Mailbox, ReversePath};
//! use smtp_core::sasl::{Credentials, Secret};
//! use smtp_core::delivery::MemoryBody;
//! use smtp_core::Envelope;
//! use smtp_tls::{Outgoing, Submission};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let mut server = Submission::new("smtp.example.com", 587);
//! server.credentials = Some(Credentials::Password {
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
mod config;
mod connection;
mod connector;
mod error;
mod pool;
mod submission;
mod transport;
mod verify;

pub use body::FileBody;
pub use config::TlsOptions;
pub use connection::Connection;
pub use connector::MxConnector;
pub use error::{ConnectError, OpenError};
pub use pool::{Pool, PoolError};
pub use submission::{Delivery, Outgoing, Settled, Submission, sasl_nonce};
pub use transport::TcpTransport;

/// The README's example, compiled as a doctest.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
