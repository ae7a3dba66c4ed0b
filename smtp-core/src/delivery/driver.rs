//! The loop that drives a [`Client`] over a [`Transport`]: a [`Driver`]
//! runs a client until the session ends or, for a connection kept for
//! reuse, until it is idle ([`Until`]); [`drive`] runs one session to its
//! end and returns a [`SessionReport`].

use std::io;
use std::time::Duration;

use crate::client::{Client, Event};
use crate::delivery::report::SessionReport;
use crate::delivery::transport::{BodySource, ReadOutcome, Transport};
use crate::envelope::MessageId;

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
                trace(&event);
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
            trace(&event);
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
            trace(&event);
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
                Ok(info) => {
                    let _ = client.tls_established(transport.now(), info);
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
        // Appends to what the body left gathered, if anything.
        let _ = client.poll_transmit(&mut self.out);
        if self.out.is_empty() {
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
            // A body's bytes are gathered into writes of at most about a
            // chunk: a small body (its header section and its body may be
            // read apart) goes out whole, with its end mark and the next
            // message's commands. Each read has at least half a chunk of room.
            if self.out.len() >= CHUNK / 2 && !self.flush(client, transport, data_block).await {
                return;
            }
            let room = CHUNK.saturating_sub(self.out.len());
            let n = match source
                .read(self.buf.get_mut(..room).unwrap_or_default())
                .await
            {
                Ok(n) => n,
                Err(e) => {
                    // Never end the data early: a truncated message must not be accepted.
                    let _ = client.body_failed(transport.now(), e.to_string());
                    return;
                }
            };
            let now = transport.now();
            if n == 0 {
                // The end mark goes with the last of the body and, when
                // pipelining, the next message's commands: one write.
                let _ = client.body_end(now);
                self.flush(client, transport, data_block).await;
                return;
            }
            if client
                .body_chunk(now, self.buf.get(..n).unwrap_or_default())
                .is_err()
            {
                return;
            }
            let _ = client.poll_transmit(&mut self.out);
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
    report
}

/// Reports an event through `tracing` (target `smtp_core::delivery`), beside
/// the caller's callback: the transcript's lines at TRACE (they exist when
/// the client keeps a transcript, and are redacted by the client: no
/// secret reaches a field), the session's steps at DEBUG, each recipient's
/// outcome at INFO, faults and warnings at WARN. Addresses are fields of
/// outcome events, as they are in a mail log.
fn trace(event: &Event) {
    use tracing::{debug, info, trace, warn};
    match event {
        Event::Greeting(reply) => debug!(code = reply.code().as_u16(), "greeting"),
        Event::Capabilities(caps) => debug!(
            server = caps.domain(),
            pipelining = caps.pipelining(),
            starttls = caps.starttls(),
            chunking = caps.chunking(),
            auth = ?caps.auth_mechanisms(),
            "capabilities"
        ),
        Event::StartTls => debug!("STARTTLS accepted; TLS handshake"),
        Event::TlsEstablished(tls) => debug!(
            version = %tls.version,
            cipher = %tls.cipher_suite,
            verified = tls.verified,
            "TLS established"
        ),
        Event::DerivationWanted => debug!("SCRAM key derivation"),
        Event::Authenticated(mechanism) => info!(%mechanism, "authenticated"),
        Event::Ready => debug!("session ready"),
        Event::BodyWanted(id) => debug!(msg = id.index(), "sending message data"),
        Event::RecipientResult { message, outcome } => info!(
            msg = message.index(),
            recipient = %outcome.recipient,
            status = outcome.status.name(),
            phase = %outcome.phase,
            code = outcome.code().map(|c| c.as_u16()),
            "recipient"
        ),
        Event::MessageResult(m) => debug!(
            msg = m.message.index(),
            recipients = m.recipients.len(),
            accepted = m.count(crate::RecipientStatus::Accepted),
            "message done"
        ),
        Event::Warning(w) => warn!(warning = %w),
        Event::Transcript(line) => trace!(target: "smtp_core::transcript", "{line}"),
        Event::Closed => debug!("session closed"),
        Event::Failed(e) => warn!(error = %e, "session failed"),
    }
}
