//! Why a connection could not be made.

use std::fmt;
use std::net::SocketAddr;

use smtp_core::delivery::PeerCertificate;
use smtp_core::delivery::direct::ConnectFailure;

/// A connection that could not be opened.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectError {
    /// The host name did not resolve.
    Resolve {
        /// The host.
        host: String,
        /// The resolver's words.
        detail: String,
    },
    /// Every address refused or timed out.
    Unreachable {
        /// The host.
        host: String,
        /// Each address tried and what happened.
        attempts: Vec<(SocketAddr, ConnectFailure)>,
    },
    /// Implicit TLS failed.
    Tls {
        /// The address.
        addr: SocketAddr,
        /// Why.
        detail: String,
        /// The certificate the server presented, when the handshake got
        /// that far (a certificate that failed verification included).
        certificate: Option<Box<PeerCertificate>>,
    },
    /// Implicit TLS with the policy None.
    ImplicitTlsWithoutEncryption {
        /// The port.
        port: u16,
    },
    /// The system's random number generator failed, so a value that must
    /// be unpredictable could not be made; nothing was sent.
    NoRandomness {
        /// What the random bytes were for.
        purpose: &'static str,
    },
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
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
            Self::Tls { addr, detail, .. } => write!(f, "TLS with {addr} failed: {detail}"),
            Self::NoRandomness { purpose } => write!(
                f,
                "the system's random number generator failed, so {purpose} could not be \
                 made unpredictable; no connection was opened (check the operating \
                 system's entropy source)"
            ),
            Self::ImplicitTlsWithoutEncryption { port } => write!(
                f,
                "port {port} needs encryption (implicit TLS) but encryption is none; use --tls \
                 optional, required or certified, or a STARTTLS port such as 587"
            ),
        }
    }
}

impl std::error::Error for ConnectError {}

/// A session that could not be set up for reuse.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum OpenError {
    /// No connection.
    Connect(ConnectError),
    /// Connected, but the session could not be set up (greeting refused,
    /// encryption policy not met, authentication failed, …).
    Session(smtp_core::Error),
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Connect(e) => e.fmt(f),
            Self::Session(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for OpenError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Connect(e) => Some(e),
            Self::Session(e) => Some(e),
        }
    }
}

impl From<ConnectError> for OpenError {
    fn from(e: ConnectError) -> Self {
        Self::Connect(e)
    }
}
