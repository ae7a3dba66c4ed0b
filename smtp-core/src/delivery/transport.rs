//! The async traits a delivery runs on: a [`Transport`] moves bytes and
//! keeps time (TCP + TLS on tokio in `smtp-tls`, an in-memory pipe in
//! tests); a [`BodySource`] yields a message's bytes.

use std::fmt;
use std::io;
use std::net::SocketAddr;
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
    /// What kind of verification failure, for programs that act on it
    /// (TLS-RPT's result types); set with [`verify_error`](Self::verify_error).
    pub verify_fault: Option<CertificateFault>,
    /// The certificate the server presented.
    pub certificate: Option<PeerCertificate>,
    /// The name the certificate was checked against (SNI).
    pub server_name: String,
}

/// Why a certificate did not verify, in the kinds programs act on (the
/// certificate result types of RFC 8460, section 4.3.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CertificateFault {
    /// Not valid for the name it was checked against.
    NameMismatch,
    /// Past its end of validity.
    Expired,
    /// Not signed by a trusted authority (self-signed, a private CA), not
    /// valid yet, revoked, malformed, or refused for another reason.
    NotTrusted,
}

/// A server's certificate as a user checks it, the way `msmtp
/// --serverinfo` shows it. Public facts only (no key material beyond what
/// the certificate itself shows), each text bounded by the transport that
/// fills it in.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerCertificate {
    /// The subject, e.g. `CN=mail.example.com`.
    pub subject: Option<String>,
    /// The issuer, e.g. `CN=R11, O=Let's Encrypt, C=US`.
    pub issuer: Option<String>,
    /// The DNS names and addresses in its subjectAltName.
    pub names: Vec<String>,
    /// Start of validity (`notBefore`), as text.
    pub not_before: Option<String>,
    /// End of validity (`notAfter`), as text.
    pub not_after: Option<String>,
    /// The SHA-256 fingerprint of the certificate (DER), as colon-separated
    /// hex, the form `openssl x509 -fingerprint -sha256` prints.
    pub sha256: String,
    /// The subjects of the other certificates the server sent with it, in
    /// the order sent (its intermediates, as it presents them).
    pub chain: Vec<String>,
}

/// Why a TLS handshake failed: what kind of failure, in words a user can
/// act on, and the certificate the server presented, when it got that far
/// (so a refused certificate can still be shown).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TlsFailure {
    /// What kind of failure, for programs that act on it.
    pub kind: TlsFailureKind,
    /// What failed and what to do.
    pub detail: String,
    /// The server's certificate, when one was presented.
    pub certificate: Option<Box<PeerCertificate>>,
    /// Why the certificate was refused, for a [`TlsFailureKind::Certificate`].
    pub certificate_fault: Option<CertificateFault>,
}

impl TlsFailure {
    /// A failure of `kind`, described by `detail`.
    pub fn new(kind: TlsFailureKind, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: detail.into(),
            certificate: None,
            certificate_fault: None,
        }
    }

    /// The same failure, with why the certificate was refused.
    #[must_use]
    pub fn with_certificate_fault(mut self, fault: Option<CertificateFault>) -> Self {
        self.certificate_fault = fault;
        self
    }

    /// The same failure, with the certificate the server presented.
    #[must_use]
    pub fn with_certificate(mut self, certificate: Option<PeerCertificate>) -> Self {
        self.certificate = certificate.map(Box::new);
        self
    }
}

impl fmt::Display for TlsFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.detail)
    }
}

impl std::error::Error for TlsFailure {}

/// A [`TlsFailure`]'s kind, by who is at fault.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TlsFailureKind {
    /// The handshake did not finish before its deadline.
    TimedOut,
    /// The server's certificate was refused (only the Certified policy
    /// refuses one): not signed by a trusted authority, expired, for
    /// another name, … The detail says which.
    Certificate,
    /// The server answered in plaintext, not TLS: it does not expect TLS
    /// here (a STARTTLS port used with implicit TLS, say).
    PlaintextPeer,
    /// The handshake failed otherwise: an alert from the server, nothing in
    /// common (versions, cipher suites), a broken connection.
    #[default]
    Handshake,
    /// TLS could not be set up on this side (the client's TLS
    /// configuration, or a connection already encrypted).
    Local,
}

impl From<String> for TlsFailure {
    /// A [`TlsFailureKind::Handshake`] failure described by the text.
    fn from(detail: String) -> Self {
        Self::new(TlsFailureKind::Handshake, detail)
    }
}

impl From<&str> for TlsFailure {
    /// A [`TlsFailureKind::Handshake`] failure described by the text.
    fn from(detail: &str) -> Self {
        detail.to_owned().into()
    }
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
    /// the text says why, in words a user can act on, beside the
    /// certificate the server presented, if it presented one.
    async fn start_tls(&mut self, deadline: Instant) -> Result<TlsInfo, TlsFailure>;

    /// The TLS facts, if the connection is encrypted.
    fn tls_info(&self) -> Option<TlsInfo>;

    /// The local address of the connection (its source address and port),
    /// when the transport has one to tell: TLS-RPT reports it as
    /// `sending-mta-ip` (RFC 8460 section 4.3). `None` by default.
    fn local_addr(&self) -> Option<SocketAddr> {
        None
    }

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
