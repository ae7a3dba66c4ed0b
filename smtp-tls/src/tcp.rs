//! TCP and TLS on tokio, as an `smtp_core::delivery::Transport`: the
//! connection under every session of this crate, and under direct
//! delivery's ([`MxConnector`](crate::MxConnector)).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use smtp_core::delivery::direct::ConnectFailure;
use smtp_core::delivery::{
    CertificateFault, ReadOutcome, TlsFailure, TlsFailureKind, TlsInfo, Transport,
};
use smtp_core::sasl::{DerivedKey, KeyDerivation};
use smtp_core::{Timeouts, TlsPolicy};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::certificate;
use crate::error::Error;
use crate::settings::Server;
use crate::trust::Trust;
use crate::verify::Verdict;

enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    /// Between taking the plain stream and getting the TLS one back.
    Gone,
}

/// What a connection's TLS handshake needs: the policy, the trust anchors
/// and the name the certificate is checked against. The rustls
/// configuration is made from these, here only.
#[derive(Clone, Debug)]
struct Handshake {
    policy: TlsPolicy,
    trust: Trust,
    /// As given; also sent as SNI when it is a DNS name.
    name: String,
}

impl Handshake {
    /// The name as rustls takes it.
    fn server_name(&self) -> Result<ServerName<'static>, Error> {
        ServerName::try_from(self.name.clone()).map_err(|_| Error::InvalidServerName {
            name: self.name.clone(),
        })
    }

    /// The configuration for one handshake, the name, and the slot where
    /// the verifier records what it saw.
    fn rustls(&self) -> Result<(TlsConnector, ServerName<'static>, Verdict), TlsFailure> {
        let local = |e: String| TlsFailure::new(TlsFailureKind::Local, e);
        let name = self.server_name().map_err(|e| local(e.to_string()))?;
        let (config, verdict): (Arc<ClientConfig>, Verdict) = self
            .trust
            .client_config(self.policy)
            .map_err(|e| local(e.to_string()))?;
        Ok((TlsConnector::from(config), name, verdict))
    }
}

/// A connection to an SMTP server over TCP, upgraded to TLS when asked.
pub struct TcpTransport {
    stream: Stream,
    peer: SocketAddr,
    /// The socket's own address, read once when connected (the stream is
    /// taken apart for the TLS upgrade).
    local: Option<SocketAddr>,
    handshake: Handshake,
    tls: Option<TlsInfo>,
}

impl std::fmt::Debug for TcpTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpTransport")
            .field("peer", &self.peer)
            .field("local", &self.local)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

impl TcpTransport {
    /// Connects to `server`: resolves its host, tries each address in turn
    /// (each within `timeouts.connect`) and, with implicit TLS, completes
    /// the handshake under its policy (within `timeouts.tls_handshake`).
    /// STARTTLS later runs under the same policy, trust anchors and name.
    ///
    /// For a caller that drives the session itself, with
    /// [`Server::client`]; [`Session`](crate::Session) and
    /// [`Server::send`] connect here too.
    pub async fn connect(server: &Server) -> Result<Self, Error> {
        Self::connect_under(server, server.policy).await
    }

    /// [`connect`](Self::connect) under `policy` (the plaintext retry
    /// connects under None).
    pub(crate) async fn connect_under(server: &Server, policy: TlsPolicy) -> Result<Self, Error> {
        if server.implicit_tls && policy == TlsPolicy::None {
            return Err(Error::ImplicitTlsWithoutEncryption { port: server.port });
        }
        let host = server.host.as_str();
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, server.port))
            .await
            .map_err(|e| Error::Resolve {
                host: host.to_owned(),
                detail: e.to_string(),
            })?
            .collect();
        if addrs.is_empty() {
            return Err(Error::Resolve {
                host: host.to_owned(),
                detail: "no addresses".into(),
            });
        }
        let handshake = Handshake {
            policy,
            trust: server.trust.clone(),
            name: server.tls_name().to_owned(),
        };
        if policy != TlsPolicy::None {
            // Before connecting: with this name no handshake can succeed.
            handshake.server_name()?;
        }
        Self::connect_addrs(
            host,
            &addrs,
            server.implicit_tls,
            handshake,
            &server.timeouts,
        )
        .await
    }

    /// A connection to a mail exchanger for direct delivery, at `addr`;
    /// STARTTLS checks the certificate against `host`, the MX host name.
    pub(crate) async fn connect_mx(
        host: &str,
        addr: SocketAddr,
        policy: TlsPolicy,
        trust: &Trust,
        timeouts: &Timeouts,
    ) -> Result<Self, Error> {
        let handshake = Handshake {
            policy,
            trust: trust.clone(),
            name: host.to_owned(),
        };
        Self::connect_addrs(host, &[addr], false, handshake, timeouts).await
    }

    async fn connect_addrs(
        host: &str,
        addrs: &[SocketAddr],
        implicit_tls: bool,
        handshake: Handshake,
        timeouts: &Timeouts,
    ) -> Result<Self, Error> {
        let mut attempts = Vec::new();
        for &addr in addrs {
            match tokio::time::timeout(timeouts.connect, TcpStream::connect(addr)).await {
                Ok(Ok(tcp)) => {
                    // Commands are written whole, one write per pipelined
                    // group: Nagle would only add a round trip of delay.
                    let _ = tcp.set_nodelay(true);
                    let local = tcp.local_addr().ok();
                    let mut t = Self {
                        stream: Stream::Plain(tcp),
                        peer: addr,
                        local,
                        handshake,
                        tls: None,
                    };
                    if implicit_tls {
                        let deadline = Instant::now() + timeouts.tls_handshake;
                        t.start_tls(deadline)
                            .await
                            .map_err(|failure| Error::Tls { addr, failure })?;
                    }
                    return Ok(t);
                }
                Ok(Err(e)) => attempts.push((addr, ConnectFailure::from_io(&e))),
                Err(_) => attempts.push((addr, ConnectFailure::TimedOut)),
            }
        }
        Err(Error::Unreachable {
            host: host.to_owned(),
            attempts,
        })
    }

    /// The address connected to.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// The local address connected from (`None` only if the system would
    /// not say).
    pub fn local(&self) -> Option<SocketAddr> {
        self.local
    }
}

async fn within<F: Future>(deadline: Instant, f: F) -> Option<F::Output> {
    tokio::time::timeout_at(deadline.into(), f).await.ok()
}

fn info(stream: &TlsStream<TcpStream>, server_name: &str, verdict: &Verdict) -> TlsInfo {
    let (_, conn) = stream.get_ref();
    let version = match conn.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".to_owned(),
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".to_owned(),
        Some(other) => format!("{other:?}"),
        None => "unknown".to_owned(),
    };
    let cipher_suite = conn
        .negotiated_cipher_suite()
        .map(|s| format!("{:?}", s.suite()))
        .unwrap_or_default();
    let (verdict, fault) = verdict
        .lock()
        .map(|v| (v.verdict.clone(), v.fault))
        .unwrap_or_default();
    let (verified, verify_error, verify_fault) = match verdict {
        Some(Ok(())) => (true, None, None),
        Some(Err(e)) => (false, Some(e), fault),
        None => (
            false,
            Some("the certificate was not checked".to_owned()),
            Some(CertificateFault::NotTrusted),
        ),
    };
    TlsInfo {
        version,
        cipher_suite,
        verified,
        verify_error,
        verify_fault,
        certificate: conn.peer_certificates().and_then(certificate::describe),
        server_name: server_name.to_owned(),
    }
}

fn io_of(stream: &mut Stream) -> Option<&mut (dyn AsyncReadWrite + Send)> {
    match stream {
        Stream::Plain(s) => Some(s),
        Stream::Tls(s) => Some(s.as_mut()),
        Stream::Gone => None,
    }
}

trait AsyncReadWrite: AsyncRead + AsyncWrite + Unpin {}
impl<T: AsyncRead + AsyncWrite + Unpin> AsyncReadWrite for T {}

fn gone() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotConnected,
        "the connection was lost during the TLS handshake",
    )
}

#[async_trait]
impl Transport for TcpTransport {
    fn now(&self) -> Instant {
        Instant::now()
    }

    async fn read(&mut self, buf: &mut [u8], deadline: Option<Instant>) -> io::Result<ReadOutcome> {
        let io = io_of(&mut self.stream).ok_or_else(gone)?;
        let result = match deadline {
            Some(d) => match within(d, io.read(buf)).await {
                Some(r) => r,
                None => return Ok(ReadOutcome::DeadlinePassed),
            },
            None => io.read(buf).await,
        };
        match result {
            Ok(0) => Ok(ReadOutcome::Closed),
            Ok(n) => Ok(ReadOutcome::Data(n)),
            // A TLS peer that closes without close_notify has still closed.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(ReadOutcome::Closed),
            Err(e) => Err(e),
        }
    }

    async fn write_all(&mut self, data: &[u8], deadline: Instant) -> io::Result<()> {
        let io = io_of(&mut self.stream).ok_or_else(gone)?;
        let write = async {
            io.write_all(data).await?;
            io.flush().await
        };
        match within(deadline, write).await {
            Some(r) => r,
            None => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the server stopped reading",
            )),
        }
    }

    async fn start_tls(&mut self, deadline: Instant) -> Result<TlsInfo, TlsFailure> {
        let Stream::Plain(tcp) = std::mem::replace(&mut self.stream, Stream::Gone) else {
            return Err(TlsFailure::new(
                TlsFailureKind::Local,
                "the connection is already encrypted",
            ));
        };
        let (connector, name, verdict) = self.handshake.rustls()?;
        let name_text = self.handshake.name.as_str();
        let stream = match within(deadline, connector.connect(name, tcp)).await {
            None => Err(TlsFailure::new(
                TlsFailureKind::TimedOut,
                "the TLS handshake did not finish in time",
            )),
            Some(Err(e)) => {
                // Prefer the verifier's own words for certificate failures,
                // and show the certificate it saw, verified or not.
                let (recorded, certificate, fault) = match verdict.lock() {
                    Ok(seen) => (
                        seen.verdict.clone().and_then(Result::err),
                        certificate::describe(&seen.presented),
                        seen.fault,
                    ),
                    Err(_) => (None, None, None),
                };
                let failure = match recorded {
                    Some(words) => TlsFailure::new(TlsFailureKind::Certificate, words)
                        .with_certificate_fault(fault),
                    None => handshake_failure(&e),
                };
                Err(failure.with_certificate(certificate))
            }
            Some(Ok(s)) => Ok(s),
        };
        let stream = match stream {
            Ok(stream) => stream,
            Err(failure) => {
                if failure.kind == TlsFailureKind::Certificate {
                    tracing::warn!(
                        server_name = name_text,
                        reason = %failure.detail,
                        "certificate verification failed; no TLS session"
                    );
                } else {
                    tracing::warn!(
                        server_name = name_text,
                        kind = ?failure.kind,
                        reason = %failure.detail,
                        "TLS handshake failed"
                    );
                }
                return Err(failure);
            }
        };
        let info = info(&stream, name_text, &verdict);
        tracing::debug!(
            server_name = name_text,
            version = %info.version,
            cipher = %info.cipher_suite,
            verified = info.verified,
            "TLS handshake done"
        );
        if let Some(reason) = &info.verify_error {
            // The policy chose to encrypt without verifying: a fact to
            // note, not a fault to warn of each session, and not the
            // advice to use the policy already in use.
            let reason = [
                crate::verify::UNKNOWN_ISSUER_ADVICE,
                crate::verify::PINNING_ADVICE,
            ]
            .iter()
            .fold(reason.clone(), |r, advice| {
                r.replace(&format!("; {advice}"), "")
            });
            tracing::info!(
                server_name = name_text,
                policy = %self.handshake.policy,
                %reason,
                "certificate not verified; encrypting without it, as the policy allows"
            );
        }
        self.stream = Stream::Tls(Box::new(stream));
        self.tls = Some(info.clone());
        Ok(info)
    }

    /// PBKDF2 runs on tokio's blocking pool, so the session's worker thread
    /// (and every other task on it) is not held for its duration.
    async fn derive_key(&mut self, job: KeyDerivation) -> DerivedKey {
        // Kept for the one case the pool cannot run it (the runtime is
        // shutting down): then inline, as a transport without a pool would.
        let fallback = job.clone();
        match tokio::task::spawn_blocking(move || job.run()).await {
            Ok(key) => key,
            Err(_) => fallback.run(),
        }
    }

    fn tls_info(&self) -> Option<TlsInfo> {
        self.tls.clone()
    }

    fn local_addr(&self) -> Option<SocketAddr> {
        self.local
    }
}

/// A failed handshake's kind and words, from the typed rustls error inside
/// the I/O error (tokio-rustls wraps it there), never from its text.
fn handshake_failure(e: &io::Error) -> TlsFailure {
    let cause = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match cause {
        // A TLS record starts with its content type; a plaintext server's
        // first byte (a reply code's digit) is none.
        Some(rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType)) => {
            TlsFailure::new(
                TlsFailureKind::PlaintextPeer,
                format!(
                    "the TLS handshake failed ({e}); the server may expect plaintext here \
                     (port 587/25 use STARTTLS, 465 implicit TLS)"
                ),
            )
        }
        Some(rustls::Error::InvalidCertificate(_)) => TlsFailure::new(
            TlsFailureKind::Certificate,
            format!("the TLS handshake failed: {e}"),
        ),
        _ => TlsFailure::new(
            TlsFailureKind::Handshake,
            format!("the TLS handshake failed: {e}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The transport tells the address it connected from: the one the
    /// server sees as its peer (TLS-RPT's `sending-mta-ip`).
    #[tokio::test]
    async fn a_connection_tells_its_local_address() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let t = TcpTransport::connect_mx(
            "mx.example.test",
            addr,
            TlsPolicy::None,
            &Trust::new(),
            &Timeouts::default(),
        )
        .await
        .unwrap();
        let (_, seen) = listener.accept().await.unwrap();
        assert_eq!(Transport::local_addr(&t), Some(seen));
        assert_eq!(t.local(), Some(seen));
        assert_eq!(t.peer(), addr);
    }

    fn kind_of(cause: rustls::Error) -> TlsFailureKind {
        handshake_failure(&io::Error::new(io::ErrorKind::InvalidData, cause)).kind
    }

    #[test]
    fn a_failed_handshake_is_classified_by_the_rustls_error_s_type() {
        assert_eq!(
            kind_of(rustls::Error::InvalidMessage(
                rustls::InvalidMessage::InvalidContentType
            )),
            TlsFailureKind::PlaintextPeer
        );
        assert_eq!(
            kind_of(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Expired
            )),
            TlsFailureKind::Certificate
        );
        assert_eq!(
            kind_of(rustls::Error::AlertReceived(
                rustls::AlertDescription::HandshakeFailure
            )),
            TlsFailureKind::Handshake
        );
        let reset = io::Error::from(io::ErrorKind::ConnectionReset);
        assert_eq!(handshake_failure(&reset).kind, TlsFailureKind::Handshake);
    }

    #[test]
    fn a_plaintext_peer_is_named_with_what_to_do() {
        let e = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType),
        );
        let failure = handshake_failure(&e);
        assert!(
            failure
                .detail
                .contains("the server may expect plaintext here"),
            "{failure}"
        );
    }
}
