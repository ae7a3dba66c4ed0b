//! The async delivery layer: the one part of smtp-core that awaits.
//!
//! Everything outside this module is sans-IO: no sockets, no runtime, no
//! clock. Here the [`Client`](crate::Client) meets the world through two
//! traits, still without a runtime of its own (they are `async-trait`
//! traits; `smtp-tls` implements them on tokio):
//!
//! - [`Transport`] moves bytes, keeps time, runs STARTTLS and SCRAM key
//!   derivations; [`BodySource`] yields a message's bytes ([`MemoryBody`]).
//! - [`Driver`] runs a client over them until the session ends or is idle
//!   ([`Until`]); [`drive`] runs one session to its end and files its
//!   events in a [`SessionReport`].
//! - [`mx`] looks up and orders a domain's mail exchangers (RFC 5321 §5)
//!   through a [`Resolver`](mx::Resolver); [`direct`] delivers to them,
//!   host after host, through a [`Connector`](direct::Connector).
//!
//! ```text
//! direct::deliver ─► mx::plan (Resolver) ─► Connector::connect ─► drive ─► Client
//!                                                      Transport ◄─┘
//! ```

mod driver;
mod report;
mod transport;

pub mod direct;
pub mod mta_sts;
pub mod mx;
pub mod tls_rpt;

pub use driver::{Bodies, Driver, Until, drive};
pub use report::SessionReport;
pub use transport::{
    BodySource, CertificateFault, MemoryBody, PeerCertificate, ReadOutcome, TlsFailure,
    TlsFailureKind, TlsInfo, Transport,
};
