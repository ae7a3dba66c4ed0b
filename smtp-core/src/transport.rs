//! The async traits a delivery runs on, and the loop that drives a
//! [`Client`](crate::Client) over them.
//!
//! The core stays free of any runtime: a [`Transport`] (TCP + TLS on tokio
//! in `smtp-tls`, an in-memory pipe in tests) moves bytes and keeps time;
//! a [`BodySource`] yields a message's bytes; [`drive`] runs a session to its
//! end and returns a [`SessionReport`].

use std::io;
use std::time::Instant;

use async_trait::async_trait;

use crate::client::{Client, Event, TranscriptLine, Warning};
use crate::ehlo::Capabilities;
use crate::envelope::MessageOutcome;
use crate::error::Error;
use crate::reply::Reply;

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

/// A body held in memory.
#[derive(Clone, Debug, Default)]
pub struct MemoryBody {
    bytes: Vec<u8>,
    pos: usize,
}

impl MemoryBody {
    /// Wraps the bytes.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Self {
            bytes: bytes.into(),
            pos: 0,
        }
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
    let timeouts = client.timeouts();
    let mut out = Vec::with_capacity(CHUNK);
    let mut buf = vec![0u8; CHUNK];
    let mut ended = false;
    loop {
        while let Some(event) = client.poll_event() {
            observe(&event);
            match event {
                Event::BodyWanted(id) => {
                    let source = usize::try_from(id.index())
                        .ok()
                        .and_then(|i| bodies.get_mut(i));
                    stream_body(client, transport, source, &mut out, &mut buf).await;
                }
                Event::StartTls => {
                    let now = transport.now();
                    if flush(client, transport, &mut out, now + timeouts.command).await {
                        match transport.start_tls(now + timeouts.tls_handshake).await {
                            Ok(info) => {
                                report.tls = Some(info);
                                // The client only refuses this when no upgrade is
                                // pending, and one is: it just asked.
                                let _ = client.tls_established(transport.now());
                            }
                            Err(detail) => client.tls_failed(transport.now(), detail),
                        }
                    }
                }
                Event::Greeting(reply) => report.greeting = Some(reply),
                Event::Capabilities(caps) => report.capabilities = Some(caps),
                Event::MessageResult(m) => report.messages.push(m),
                Event::Warning(w) => report.warnings.push(w),
                Event::Transcript(line) => report.transcript.push(line),
                Event::Failed(e) => {
                    report.error = Some(e);
                    ended = true;
                }
                Event::Closed => ended = true,
                _ => {}
            }
        }
        let now = transport.now();
        if !flush(client, transport, &mut out, now + timeouts.command).await {
            continue;
        }
        if ended || client.is_closed() {
            break;
        }
        match transport.read(&mut buf, client.poll_timeout()).await {
            Ok(ReadOutcome::Data(n)) => {
                client.handle_input(transport.now(), buf.get(..n).unwrap_or_default());
            }
            Ok(ReadOutcome::DeadlinePassed) => client.handle_timeout(transport.now()),
            Ok(ReadOutcome::Closed) | Err(_) => client.handle_close(transport.now()),
        }
    }
    report
}

/// Writes what the client has to send. False when the write failed (the
/// client has been told the connection is gone).
async fn flush<T: Transport + ?Sized>(
    client: &mut Client,
    transport: &mut T,
    out: &mut Vec<u8>,
    deadline: Instant,
) -> bool {
    if !client.poll_transmit(out) {
        return true;
    }
    let result = transport.write_all(out, deadline).await;
    out.clear();
    if result.is_err() {
        client.handle_close(transport.now());
        return false;
    }
    true
}

async fn stream_body<T: Transport + ?Sized>(
    client: &mut Client,
    transport: &mut T,
    source: Option<&mut Box<dyn BodySource>>,
    out: &mut Vec<u8>,
    buf: &mut [u8],
) {
    let data_block = client.timeouts().data_block;
    let Some(source) = source else {
        let _ = client.body_failed(transport.now(), "no body was given for this message");
        return;
    };
    if let Err(e) = source.rewind().await {
        let _ = client.body_failed(transport.now(), format!("cannot go back to its start: {e}"));
        return;
    }
    loop {
        let n = match source.read(buf).await {
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
            .body_chunk(now, buf.get(..n).unwrap_or_default())
            .is_err()
        {
            return;
        }
        if !flush(client, transport, out, now + data_block).await {
            return;
        }
    }
}
