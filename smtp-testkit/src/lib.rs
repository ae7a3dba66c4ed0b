//! Test tools for SMTP clients.
//!
//! This crate will hold a scripted fake SMTP server (real TCP on 127.0.0.1 and
//! in memory) with fault injection, certificates made on the fly, a capture
//! server that keeps what it receives, a DNS zone server on loopback, and a
//! virtual-clock driver for `smtp-core`'s sans-IO client. Not yet built.
