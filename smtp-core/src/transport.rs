//! The async traits a delivery runs on, and the loop that drives a
//! [`Client`](crate::Client) over them.
//!
//! The core stays free of any runtime: a [`Transport`] (TCP + TLS on tokio
//! in `smtp-tls`, an in-memory pipe in tests) moves bytes and keeps time;
//! a [`BodySource`] yields a message's bytes. A [`Driver`] runs a client
//! over them until the session ends or, for a connection kept for reuse,
//! until it is idle ([`Until`]); [`drive`] runs one session to its end and
//! returns a [`SessionReport`].

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::client::{Client, Event, TranscriptLine, Warning};
use crate::ehlo::Capabilities;
use crate::envelope::{MessageId, MessageOutcome};
use crate::error::Error;
use crate::reply::Reply;
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
    /// The certificate the server presented.
    pub certificate: Option<PeerCertificate>,
    /// The name the certificate was checked against (SNI).
    pub server_name: String,
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

/// Why a TLS handshake failed: in words a user can act on, and the
/// certificate the server presented, when it got that far (so a refused
/// certificate can still be shown).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsFailure {
    /// What failed and what to do.
    pub detail: String,
    /// The server's certificate, when one was presented.
    pub certificate: Option<Box<PeerCertificate>>,
}

impl From<String> for TlsFailure {
    fn from(detail: String) -> Self {
        Self {
            detail,
            certificate: None,
        }
    }
}

impl From<&str> for TlsFailure {
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

/// Everything a session produced.
#[derive(Clone, Debug, Default)]
pub struct SessionReport {
    /// One outcome per message, in the order they finished.
    pub messages: Vec<MessageOutcome>,
    /// The fault that ended the session, if one did.
    pub error: Option<Error>,
    /// The server's greeting.
    pub greeting: Option<Reply>,
    /// The server's last EHLO capabilities.
    pub capabilities: Option<Capabilities>,
    /// The TLS facts, if the session was encrypted.
    pub tls: Option<TlsInfo>,
    /// Warnings.
    pub warnings: Vec<Warning>,
    /// The transcript (only when the client was configured for one).
    pub transcript: Vec<TranscriptLine>,
}

/// How many bytes are read from the server or a body at a time.
const CHUNK: usize = 64 * 1024;

/// Where each message's body comes from, by message.
pub trait Bodies: Send {
    /// The body of message `id`, if there is one.
    fn body(&mut self, id: MessageId) -> Option<&mut dyn BodySource>;
}

/// Bodies by position: message `n` of a fresh [`Client`] has body `n`.
impl Bodies for [Box<dyn BodySource>] {
    fn body(&mut self, id: MessageId) -> Option<&mut dyn BodySource> {
        let index = usize::try_from(id.index()).ok()?;
        Some(self.get_mut(index)?.as_mut())
    }
}

/// How long [`Driver::run`] goes on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Until {
    /// Until the session ends (after QUIT, or a fault).
    Closed,
    /// Until the session is set up with nothing in flight
    /// ([`Client::is_idle`]), or ends. A kept connection stops here.
    Idle,
}

/// Drives a [`Client`] over a [`Transport`]: writes what it has to send in
/// one write per group, reads replies, streams bodies, runs STARTTLS and
/// SCRAM key derivations ([`Transport::derive_key`]), and keeps time. Its two buffers are reused across runs, so a connection kept
/// for many messages allocates nothing per message.
#[derive(Debug)]
pub struct Driver {
    out: Vec<u8>,
    buf: Vec<u8>,
}

impl Default for Driver {
    fn default() -> Self {
        Self::new()
    }
}

impl Driver {
    /// A driver with 64 KiB buffers.
    pub fn new() -> Self {
        Self {
            out: Vec::with_capacity(CHUNK),
            buf: vec![0u8; CHUNK],
        }
    }

    /// Runs `client` over `transport` until `until`, streaming each message's
    /// body from `bodies` when the client asks for it. Every event goes to
    /// `on_event` as it happens, in order.
    pub async fn run<T: Transport + ?Sized, B: Bodies + ?Sized>(
        &mut self,
        client: &mut Client,
        transport: &mut T,
        bodies: &mut B,
        until: Until,
        on_event: &mut (dyn FnMut(Event) + Send),
    ) {
        let timeouts = client.timeouts();
        loop {
            while let Some(event) = client.poll_event() {
                match &event {
                    Event::BodyWanted(id) => {
                        let id = *id;
                        on_event(event);
                        self.stream_body(client, transport, bodies.body(id)).await;
                        continue;
                    }
                    Event::StartTls => {
                        on_event(event);
                        self.start_tls(client, transport).await;
                        continue;
                    }
                    Event::DerivationWanted => {
                        on_event(event);
                        if let Some(job) = client.take_derivation() {
                            let key = transport.derive_key(job).await;
                            // Cannot be misuse: the client just asked for it.
                            let _ = client.derivation_done(transport.now(), key);
                        }
                        continue;
                    }
                    _ => on_event(event),
                }
            }
            if !self.flush(client, transport, timeouts.command).await {
                continue;
            }
            if client.is_closed() || (until == Until::Idle && client.is_idle()) {
                break;
            }
            match transport.read(&mut self.buf, client.poll_timeout()).await {
                Ok(ReadOutcome::Data(n)) => {
                    client.handle_input(transport.now(), self.buf.get(..n).unwrap_or_default());
                }
                Ok(ReadOutcome::DeadlinePassed) => client.handle_timeout(transport.now()),
                Ok(ReadOutcome::Closed) | Err(_) => client.handle_close(transport.now()),
            }
        }
        // Events raised by the last step (a close after the final reply).
        while let Some(event) = client.poll_event() {
            on_event(event);
        }
    }

    /// Takes in, without waiting, whatever the server sent while the session
    /// sat idle: a `421` before its idle timeout, or the close itself. No
    /// command is sent (no NOOP probe). Returns true if the session is still
    /// usable; events (a [`Event::Failed`] or [`Event::Closed`]) go to `on_event`.
    pub async fn refresh<T: Transport + ?Sized>(
        &mut self,
        client: &mut Client,
        transport: &mut T,
        on_event: &mut (dyn FnMut(Event) + Send),
    ) -> bool {
        while client.is_idle() {
            let now = transport.now();
            match transport.read(&mut self.buf, Some(now)).await {
                Ok(ReadOutcome::Data(n)) => {
                    client.handle_input(transport.now(), self.buf.get(..n).unwrap_or_default());
                }
                Ok(ReadOutcome::DeadlinePassed) => break,
                Ok(ReadOutcome::Closed) | Err(_) => client.handle_close(transport.now()),
            }
        }
        while let Some(event) = client.poll_event() {
            on_event(event);
        }
        // Whatever arrived unasked ended the session (an unsolicited reply
        // is a fault) or left it idle.
        !client.is_closed()
    }

    async fn start_tls<T: Transport + ?Sized>(&mut self, client: &mut Client, transport: &mut T) {
        let timeouts = client.timeouts();
        if self.flush(client, transport, timeouts.command).await {
            let now = transport.now();
            match transport.start_tls(now + timeouts.tls_handshake).await {
                // The client only refuses this when no upgrade is pending,
                // and one is: it just asked.
                Ok(_) => {
                    let _ = client.tls_established(transport.now());
                }
                Err(failure) => client.tls_failed(transport.now(), failure),
            }
        }
    }

    /// Writes what the client has to send, allowing `limit` for it. False
    /// when the write failed (the client has been told why: a stalled
    /// server, or a connection gone).
    async fn flush<T: Transport + ?Sized>(
        &mut self,
        client: &mut Client,
        transport: &mut T,
        limit: Duration,
    ) -> bool {
        if !client.poll_transmit(&mut self.out) {
            return true;
        }
        let deadline = transport.now() + limit;
        let result = transport.write_all(&self.out, deadline).await;
        self.out.clear();
        match result {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                client.handle_write_timeout(transport.now(), limit);
                false
            }
            Err(_) => {
                client.handle_close(transport.now());
                false
            }
        }
    }

    async fn stream_body<T: Transport + ?Sized>(
        &mut self,
        client: &mut Client,
        transport: &mut T,
        source: Option<&mut dyn BodySource>,
    ) {
        let data_block = client.timeouts().data_block;
        let Some(source) = source else {
            let _ = client.body_failed(transport.now(), "no body was given for this message");
            return;
        };
        if let Err(e) = source.rewind().await {
            let _ =
                client.body_failed(transport.now(), format!("cannot go back to its start: {e}"));
            return;
        }
        loop {
            let n = match source.read(&mut self.buf).await {
                Ok(n) => n,
                Err(e) => {
                    // Never end the data early: a truncated message must not be accepted.
                    let _ = client.body_failed(transport.now(), e.to_string());
                    return;
                }
            };
            let now = transport.now();
            if n == 0 {
                let _ = client.body_end(now);
                return;
            }
            if client
                .body_chunk(now, self.buf.get(..n).unwrap_or_default())
                .is_err()
            {
                return;
            }
            if !self.flush(client, transport, data_block).await {
                return;
            }
        }
    }
}

/// Runs `client` over `transport` until the session ends, streaming each
/// message's body from `bodies[message index]`. `observe` sees every event as
/// it happens (for live transcripts and progress).
pub async fn drive<T: Transport + ?Sized>(
    client: &mut Client,
    transport: &mut T,
    bodies: &mut [Box<dyn BodySource>],
    observe: &mut (dyn FnMut(&Event) + Send),
) -> SessionReport {
    let mut report = SessionReport {
        tls: transport.tls_info(),
        ..SessionReport::default()
    };
    let mut on_event = |event: Event| {
        observe(&event);
        report.record(event);
    };
    Driver::new()
        .run(client, transport, bodies, Until::Closed, &mut on_event)
        .await;
    if client.is_tls() {
        report.tls = transport.tls_info();
    }
    report
}

impl SessionReport {
    /// Files an event under the report's fields (message results, greeting,
    /// capabilities, warnings, transcript, the ending fault).
    pub fn record(&mut self, event: Event) {
        match event {
            Event::Greeting(reply) => self.greeting = Some(reply),
            Event::Capabilities(caps) => self.capabilities = Some(caps),
            Event::MessageResult(m) => self.messages.push(m),
            Event::Warning(w) => self.warnings.push(w),
            Event::Transcript(line) => self.transcript.push(line),
            Event::Failed(e) => self.error = Some(e),
            _ => {}
        }
    }
}
