//! Connections to mail exchangers for direct delivery.

use std::net::SocketAddr;

use async_trait::async_trait;
use smtp_core::Timeouts;
use smtp_core::delivery::Transport;
use smtp_core::delivery::direct::{ConnectFailure, Connector};

use crate::config::TlsOptions;
use crate::error::ConnectError;
use crate::transport::TcpTransport;

/// Opens STARTTLS-capable connections to MX hosts; under Certified the
/// certificate is checked against the MX host name.
#[derive(Clone, Debug)]
pub struct MxConnector {
    /// Policy and trust anchors.
    pub tls: TlsOptions,
    /// Connect and handshake deadlines.
    pub timeouts: Timeouts,
}

#[async_trait]
impl Connector for MxConnector {
    async fn connect(
        &self,
        host: &str,
        addr: SocketAddr,
    ) -> Result<Box<dyn Transport>, ConnectFailure> {
        let mut options = self.tls.clone();
        options.server_name = Some(host.to_owned());
        match TcpTransport::connect_addrs(
            host,
            &[addr],
            false,
            &options,
            self.timeouts.connect,
            self.timeouts.tls_handshake,
        )
        .await
        {
            Ok(t) => Ok(Box::new(t)),
            Err(ConnectError::Unreachable { attempts, .. }) => Err(attempts
                .into_iter()
                .next()
                .map_or(ConnectFailure::TimedOut, |(_, why)| why)),
            Err(e) => Err(ConnectFailure::Other(e.to_string())),
        }
    }
}
