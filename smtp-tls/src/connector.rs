//! Connections to mail exchangers for direct delivery.

use std::net::SocketAddr;

use async_trait::async_trait;
use smtp_core::delivery::Transport;
use smtp_core::delivery::direct::{ConnectFailure, Connector};
use smtp_core::{Timeouts, TlsPolicy};

use crate::error::Error;
use crate::tcp::TcpTransport;
use crate::trust::Trust;

/// Opens STARTTLS-capable connections to MX hosts; under Certified the
/// certificate is checked against the MX host name.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct MxConnector {
    /// The encryption policy STARTTLS runs under (the session's
    /// `Config::tls` decides whether it is sent).
    pub policy: TlsPolicy,
    /// The trust anchors.
    pub trust: Trust,
    /// Connect and handshake deadlines.
    pub timeouts: Timeouts,
}

impl MxConnector {
    /// Connections under `policy`, verified against `trust`, within `timeouts`.
    pub fn new(policy: TlsPolicy, trust: Trust, timeouts: Timeouts) -> Self {
        Self {
            policy,
            trust,
            timeouts,
        }
    }
}

#[async_trait]
impl Connector for MxConnector {
    async fn connect(
        &self,
        host: &str,
        addr: SocketAddr,
    ) -> Result<Box<dyn Transport>, ConnectFailure> {
        match TcpTransport::connect_mx(host, addr, self.policy, &self.trust, &self.timeouts).await {
            Ok(t) => Ok(Box::new(t)),
            Err(Error::Unreachable { attempts, .. }) => Err(attempts
                .into_iter()
                .next()
                .map_or(ConnectFailure::TimedOut, |(_, why)| why)),
            Err(e) => Err(ConnectFailure::Other(e.to_string())),
        }
    }
}
