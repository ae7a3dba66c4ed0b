//! The crate's one error type, split by who is at fault.
//!
//! - The caller's settings and input: [`Error::ImplicitTlsWithoutEncryption`],
//!   [`Error::InvalidServerName`], [`Error::NoRecipients`]. Nothing was
//!   sent; fix the [`Server`](crate::Server) or the messages.
//! - The network: [`Error::Resolve`], [`Error::Unreachable`], and
//!   [`Error::Tls`] for an implicit-TLS handshake that failed. Nothing was
//!   sent; trying later, or elsewhere, may work.
//! - The server, or the session with it: [`Error::Session`], with the
//!   core's [`smtp_core::Error`] (a greeting refused, the encryption policy
//!   not met, authentication failed, a message not tried).
//! - This machine: [`Error::NoRandomness`].
//! - This library: [`Error::NoOutcome`], a message the session took but
//!   reported nothing for (a bug; its fate is unknown).
//!
//! Every `Display` says what happened and what to do, in the API's terms
//! (policies, implicit TLS, trust anchors); a program with its own
//! vocabulary (a command line's flags) translates the advice.

use std::fmt;
use std::net::SocketAddr;

use smtp_core::delivery::TlsFailure;
use smtp_core::delivery::direct::ConnectFailure;

/// Why a session could not be set up, or a message not be tried.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The caller's settings: implicit TLS with the policy None. TLS from
    /// the first byte needs encryption; nothing was sent.
    ImplicitTlsWithoutEncryption {
        /// The port.
        port: u16,
    },
    /// The caller's settings: the name the certificate is to be checked
    /// against (the server name, or else the host) is neither a DNS name
    /// nor an IP address. Nothing was sent.
    InvalidServerName {
        /// The name.
        name: String,
    },
    /// The caller's input: message `message` (its position in the batch)
    /// has no recipients. Nothing was sent.
    NoRecipients {
        /// The message's position.
        message: usize,
    },
    /// The network: the host name did not resolve.
    Resolve {
        /// The host.
        host: String,
        /// The resolver's words.
        detail: String,
    },
    /// The network: every address refused or timed out.
    Unreachable {
        /// The host.
        host: String,
        /// Each address tried and what happened.
        attempts: Vec<(SocketAddr, ConnectFailure)>,
    },
    /// The network: the implicit-TLS handshake failed (its kind, its
    /// words, and the certificate the server presented, when it got that
    /// far). Nothing was sent.
    Tls {
        /// The address.
        addr: SocketAddr,
        /// Why.
        failure: TlsFailure,
    },
    /// The server, or the session with it: connected, but the session could
    /// not be set up (greeting refused, encryption policy not met,
    /// authentication failed, …), or a message was not tried (the session
    /// is over, or the message has no recipients).
    Session(smtp_core::Error),
    /// This machine: the system's random number generator failed, so a
    /// value that must be unpredictable could not be made; nothing was sent.
    NoRandomness {
        /// What the random bytes were for.
        purpose: &'static str,
    },
    /// This library: the session took the message but reported no outcome
    /// for it. It cannot happen (the core reports every message it takes);
    /// if it does, the message may or may not have been delivered.
    NoOutcome,
}

impl Error {
    /// Whose fault this is, and so what a retry can do (the core's
    /// [`Fault`](smtp_core::Fault), for errors before a session too).
    pub fn fault(&self) -> smtp_core::Fault {
        use smtp_core::Fault;
        use smtp_core::delivery::TlsFailureKind;
        match self {
            Self::ImplicitTlsWithoutEncryption { .. } | Self::InvalidServerName { .. } => {
                Fault::Configuration
            }
            Self::NoRecipients { .. } => Fault::Misuse,
            Self::Resolve { .. } | Self::Unreachable { .. } | Self::NoRandomness { .. } => {
                Fault::Transient
            }
            Self::Tls { failure, .. } => match failure.kind {
                TlsFailureKind::Certificate => Fault::Policy,
                TlsFailureKind::PlaintextPeer | TlsFailureKind::Local => Fault::Configuration,
                _ => Fault::Transient,
            },
            Self::Session(e) => e.fault(),
            Self::NoOutcome => Fault::Unknown,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoRecipients { message } => write!(
                f,
                "message {message} of the batch has no recipients; nothing was sent (give \
                 every message at least one)"
            ),
            Self::NoOutcome => f.write_str(
                "internal error: the session reported no outcome for this message; it may \
                 or may not have been delivered (please report this)",
            ),
            Self::ImplicitTlsWithoutEncryption { port } => write!(
                f,
                "port {port} needs encryption (implicit TLS) but the policy is None; use the \
                 policy Optional, Required or Certified, or STARTTLS on a port such as 587"
            ),
            Self::InvalidServerName { name } => write!(
                f,
                "{name} is not a valid TLS server name; check the certificate against a DNS \
                 name or an IP address"
            ),
            Self::Resolve { host, detail } => {
                write!(f, "cannot resolve {host}: {detail}; check the server name")
            }
            Self::Unreachable { host, attempts } => {
                write!(f, "cannot connect to {host}:")?;
                for (addr, why) in attempts {
                    write!(f, " {addr} ({why});")?;
                }
                f.write_str(" check the host and port, and that a firewall does not block it")
            }
            Self::Tls { addr, failure } => {
                write!(f, "TLS with {addr} failed: {}", failure.detail)
            }
            Self::Session(e) => e.fmt(f),
            Self::NoRandomness { purpose } => write!(
                f,
                "the system's random number generator failed, so {purpose} could not be \
                 made unpredictable; no connection was opened (check the operating \
                 system's entropy source)"
            ),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Tls { failure, .. } => Some(failure),
            Self::Session(e) => Some(e),
            _ => None,
        }
    }
}

impl From<smtp_core::Error> for Error {
    fn from(e: smtp_core::Error) -> Self {
        Self::Session(e)
    }
}
