//! Test tools for SMTP clients.
//!
//! - [`certs`]: a test CA and leaf certificates made on the fly (valid,
//!   self-signed, wrong name, expired).
//! - [`capture`]: a capture server that accepts mail (optionally TLS and AUTH)
//!   and keeps what it receives.
//! - [`dns`]: a DNS server on loopback serving a zone built in code.
//! - [`hostile`]: a hostile SMTP server that answers any client, misbehaves
//!   at one chosen phase (421, silence, drip-feed, endless replies,
//!   injection after STARTTLS's 220, held pipelined replies) and records
//!   the raw wire, on which side of TLS, to judge the client by.
//! - [`https`]: a tiny HTTPS server on loopback serving fixed paths.
//! - [`flaky`]: a plaintext server with a queue's faults: greylisting, a
//!   cap of messages per connection, a stall, refused authentication.
//! - [`postgres`]: a throwaway PostgreSQL cluster (initdb into a temporary
//!   directory, a server on 127.0.0.1), stopped and removed on drop.
//! - [`sansio`]: the sans-IO client driven directly by transcript scripts,
//!   with a virtual clock.
//! - [`script`]: a scripted fake SMTP server that reads like a transcript,
//!   with faults on purpose, over real TCP on 127.0.0.1 or in memory.
#![forbid(unsafe_code)]

pub mod capture;
pub mod certs;
pub mod dns;
pub mod flaky;
pub mod hostile;
pub mod https;
pub mod postgres;
pub mod sansio;
pub mod script;

/// A port on 127.0.0.1 where nothing listens (bound, then let go): a
/// connection to it is refused at once.
pub fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a port on 127.0.0.1")
}

/// The README's example, compiled as a doctest.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
