//! smtp-tls integration tests over real sockets on 127.0.0.1, one binary so
//! the suite links once.

mod aiosmtpd;
mod auth;
mod capture;
mod certs;
mod direct;
mod faults;
mod handshake;
mod https;
mod interop;
mod pinning;
mod presented;
mod reuse;
mod traced;
