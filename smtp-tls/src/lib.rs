//! The four SMTP encryption policies on rustls, and a tokio transport for `smtp-core`.
//!
//! This crate will hold:
//!
//! - the policies **None**, **Optional**, **Required** and **Certified** turned into
//!   rustls 0.23 client configurations (chain and name verification for Certified,
//!   handshake signatures only for Required, with every weakening named `danger…`);
//! - a tokio TCP + TLS transport implementing `smtp-core`'s async transport traits,
//!   with STARTTLS upgrades and implicit TLS (port 465);
//! - the standard-delivery API: one session, many messages, a report per recipient.
//!
//! See `docs/tls.md` in the repository for the policy matrix. Not yet built.
