//! Test tools for SMTP clients.
//!
//! - [`certs`]: a test CA and leaf certificates made on the fly (valid,
//!   self-signed, wrong name, expired).
//! - [`capture`]: a capture server that accepts mail (optionally TLS and AUTH)
//!   and keeps what it receives.
//! - [`dns`]: a DNS server on loopback serving a zone built in code.
#![forbid(unsafe_code)]

pub mod capture;
pub mod certs;
pub mod dns;

/// The README's example, compiled as a doctest.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
