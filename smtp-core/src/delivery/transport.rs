//! The async traits a delivery runs on: a [`Transport`] moves bytes and
//! keeps time (TCP + TLS on tokio in `smtp-tls`, an in-memory pipe in
//! tests); a [`BodySource`] yields a message's bytes.

use std::io;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;

use crate::sasl::{DerivedKey, KeyDerivation};

/// What a [`Transport::read`] produced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadOutcome {
    /// This many bytes were read into the buffer.
    Data(usize),
    /// The peer closed the connection.
    Closed,
    /// The deadline passed before anything arrived.
    DeadlinePassed,
}

/// What is known about a TLS session.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsInfo {
    /// Protocol version, e.g. `TLSv1.3`.
    pub version: String,
    /// Cipher suite, e.g. `TLS13_AES_256_GCM_SHA384`.
    pub cipher_suite: String,
    /// The certificate chain and name verified.
    pub verified: bool,
    /// Why verification failed, when it did (the session may still be in use
    /// under the Optional and Required policies).
    pub verify_error: Option<String>,
    /// The peer certificate's subject.
    pub peer_subject: Option<String>,
    /// The peer certificate's expiry (`notAfter`), as text.
    pub peer_not_after: Option<String>,
    /// The peer certificate's issuer.
    pub peer_issuer: Option<String>,
    /// The peer certificate's start of validity (`notBefore`), as text.
    pub peer_not_before: Option<String>,
    /// The DNS names and addresses in its subjectAltName.
    pub peer_names: Vec<String>,
    /// The SHA-256 fingerprint of the certificate (DER), as colon-separated
    /// hex, the form `openssl x509 -fingerprint -sha256` prints.
    pub peer_sha256: Option<String>,
    /// The name the certificate was checked against (SNI).
    pub server_name: String,
}

/// A connection to an SMTP server.
#[async_trait]
pub trait Transport: Send {
    /// The transport's clock (monotonic).
    fn now(&self) -> Instant;

    /// Reads what is available, waiting at most until `deadline`.
    async fn read(&mut self, buf: &mut [u8], deadline: Option<Instant>) -> io::Result<ReadOutcome>;

    /// Writes all of `data`, failing with [`io::ErrorKind::TimedOut`] past `deadline`.
    async fn write_all(&mut self, data: &[u8], deadline: Instant) -> io::Result<()>;

    /// Upgrades the connection to TLS (after STARTTLS's `220`). On failure
    /// the text says why, in words a user can act on.
    async fn start_tls(&mut self, deadline: Instant) -> Result<TlsInfo, String>;

    /// The TLS facts, if the connection is encrypted.
    fn tls_info(&self) -> Option<TlsInfo>;

    /// Runs a SCRAM key derivation: pure, but up to the iteration cap's
    /// worth of CPU (tens of milliseconds by default). This default runs it
    /// inline, on the calling task; a transport on a multi-task runtime
    /// should move it to a thread where blocking does no harm.
    async fn derive_key(&mut self, job: KeyDerivation) -> DerivedKey {
        job.run()
    }
}

/// A message body that can be read from the start as often as needed (a
/// message split over several transactions is sent more than once).
#[async_trait]
pub trait BodySource: Send {
    /// Reads the next bytes; 0 at the end.
    async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize>;

    /// Goes back to the first byte.
    async fn rewind(&mut self) -> io::Result<()>;
}

/// A body held in memory. Clones share the bytes, so one body sent many
/// times (to many recipients in separate sessions, or in a benchmark) is
/// held once.
#[derive(Clone, Debug)]
pub struct MemoryBody {
    bytes: Arc<[u8]>,
    pos: usize,
}

impl Default for MemoryBody {
    fn default() -> Self {
        Self::shared(Arc::from(&[][..]))
    }
}

impl MemoryBody {
    /// Takes the bytes.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Self::shared(Arc::from(bytes.into()))
    }

    /// Shares bytes already behind an [`Arc`], without copying them.
    pub fn shared(bytes: Arc<[u8]>) -> Self {
        Self { bytes, pos: 0 }
    }
}

#[async_trait]
impl BodySource for MemoryBody {
    async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let rest = self.bytes.get(self.pos..).unwrap_or_default();
        let n = rest.len().min(buf.len());
        buf[..n].copy_from_slice(&rest[..n]);
        self.pos += n;
        Ok(n)
    }

    async fn rewind(&mut self) -> io::Result<()> {
        self.pos = 0;
        Ok(())
    }
}
