//! TCP and TLS on tokio, as an `smtp_core::delivery::Transport`.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use smtp_core::delivery::direct::ConnectFailure;
use smtp_core::delivery::{ReadOutcome, TlsFailure, TlsFailureKind, TlsInfo, Transport};
use smtp_core::sasl::{DerivedKey, KeyDerivation};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::certificate;
use crate::config::TlsOptions;
use crate::error::ConnectError;
use crate::verify::Verdict;

enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    /// Between taking the plain stream and getting the TLS one back.
    Gone,
}

/// A connection to an SMTP server over TCP, upgraded to TLS when asked.
pub struct TcpTransport {
    stream: Stream,
    peer: SocketAddr,
    host: String,
    options: TlsOptions,
    tls: Option<TlsInfo>,
}

impl std::fmt::Debug for TcpTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpTransport")
            .field("peer", &self.peer)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

impl TcpTransport {
    /// Connects to each address of `host` in turn (each within
    /// `connect_timeout`) and, for implicit TLS, completes the handshake.
    pub async fn connect(
        host: &str,
        port: u16,
        implicit_tls: bool,
        options: &TlsOptions,
        connect_timeout: Duration,
        handshake_timeout: Duration,
    ) -> Result<Self, ConnectError> {
        if implicit_tls && options.policy == smtp_core::TlsPolicy::None {
            return Err(ConnectError::ImplicitTlsWithoutEncryption { port });
        }
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| ConnectError::Resolve {
                host: host.to_owned(),
                detail: e.to_string(),
            })?
            .collect();
        if addrs.is_empty() {
            return Err(ConnectError::Resolve {
                host: host.to_owned(),
                detail: "no addresses".into(),
            });
        }
        Self::connect_addrs(
            host,
            &addrs,
            implicit_tls,
            options,
            connect_timeout,
            handshake_timeout,
        )
        .await
    }

    /// Like [`connect`](Self::connect) with the addresses already known
    /// (direct delivery resolves MX hosts itself). `host` is the name the
    /// certificate is checked against.
    pub async fn connect_addrs(
        host: &str,
        addrs: &[SocketAddr],
        implicit_tls: bool,
        options: &TlsOptions,
        connect_timeout: Duration,
        handshake_timeout: Duration,
    ) -> Result<Self, ConnectError> {
        let mut attempts = Vec::new();
        for &addr in addrs {
            match tokio::time::timeout(connect_timeout, TcpStream::connect(addr)).await {
                Ok(Ok(tcp)) => {
                    // Commands are written whole, one write per pipelined
                    // group: Nagle would only add a round trip of delay.
                    let _ = tcp.set_nodelay(true);
                    let mut t = Self {
                        stream: Stream::Plain(tcp),
                        peer: addr,
                        host: host.to_owned(),
                        options: options.clone(),
                        tls: None,
                    };
                    if implicit_tls {
                        let deadline = Instant::now() + handshake_timeout;
                        t.start_tls(deadline).await.map_err(|f| ConnectError::Tls {
                            addr,
                            detail: f.detail,
                            certificate: f.certificate,
                        })?;
                    }
                    return Ok(t);
                }
                Ok(Err(e)) => attempts.push((addr, ConnectFailure::from_io(&e))),
                Err(_) => attempts.push((addr, ConnectFailure::TimedOut)),
            }
        }
        Err(ConnectError::Unreachable {
            host: host.to_owned(),
            attempts,
        })
    }

    /// The address connected to.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    fn server_name(&self) -> Result<ServerName<'static>, String> {
        let name = self
            .options
            .server_name
            .clone()
            .unwrap_or_else(|| self.host.clone());
        let name = name
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        ServerName::try_from(name.clone())
            .map_err(|_| format!("{name} is not a valid TLS server name"))
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
    let verdict = verdict.lock().ok().and_then(|v| v.verdict.clone());
    let (verified, verify_error) = match verdict {
        Some(Ok(())) => (true, None),
        Some(Err(e)) => (false, Some(e)),
        None => (false, Some("the certificate was not checked".to_owned())),
    };
    TlsInfo {
        version,
        cipher_suite,
        verified,
        verify_error,
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
        let name = self
            .server_name()
            .map_err(|e| TlsFailure::new(TlsFailureKind::Local, e))?;
        let name_text = self
            .options
            .server_name
            .clone()
            .unwrap_or_else(|| self.host.clone());
        let (config, verdict): (Arc<ClientConfig>, Verdict) = self
            .options
            .client_config()
            .map_err(|e| TlsFailure::new(TlsFailureKind::Local, e.to_string()))?;
        let connector = TlsConnector::from(config);
        let stream = match within(deadline, connector.connect(name.clone(), tcp)).await {
            None => {
                return Err(TlsFailure::new(
                    TlsFailureKind::TimedOut,
                    "the TLS handshake did not finish in time",
                ));
            }
            Some(Err(e)) => {
                // Prefer the verifier's own words for certificate failures,
                // and show the certificate it saw, verified or not.
                let (recorded, certificate) = match verdict.lock() {
                    Ok(seen) => (
                        seen.verdict.clone().and_then(Result::err),
                        certificate::describe(&seen.presented),
                    ),
                    Err(_) => (None, None),
                };
                let failure = match recorded {
                    Some(words) => TlsFailure::new(TlsFailureKind::Certificate, words),
                    None => handshake_failure(&e),
                };
                return Err(failure.with_certificate(certificate));
            }
            Some(Ok(s)) => s,
        };
        let info = info(&stream, &name_text, &verdict);
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
