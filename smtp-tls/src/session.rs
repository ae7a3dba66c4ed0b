//! Sessions with a submission server: [`Session`] keeps one open for sends
//! over time; [`Server::send`] runs one for a known batch. Both are the same
//! steps on the same type: connect, run the client (greeting, EHLO,
//! STARTTLS, AUTH, the messages), and under Optional the matrix's one
//! plaintext retry.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use smtp_core::delivery::{
    Bodies, BodySource, Driver, SessionReport, TlsFailure, TlsInfo, Transport, Until,
};
use smtp_core::{Client, Envelope, Event, MessageId, MessageOutcome, Phase, TlsPolicy};
use tracing::Instrument;

use crate::error::Error;
use crate::settings::Server;
use crate::tcp::TcpTransport;

/// One message to send.
pub struct Outgoing {
    /// The envelope.
    pub envelope: Envelope,
    /// The body, read from its start (perhaps more than once).
    pub body: Box<dyn BodySource>,
}

impl std::fmt::Debug for Outgoing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outgoing")
            .field("envelope", &self.envelope)
            .finish_non_exhaustive()
    }
}

/// What [`Server::send`] produced.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Delivery {
    /// The session's report: an outcome for every message, TLS facts, the
    /// fault that ended it, if one did.
    pub session: SessionReport,
    /// The address the session ran on.
    pub peer: SocketAddr,
    /// Set when Optional fell back to plaintext after a failed STARTTLS
    /// handshake: why it failed.
    pub tls_fallback: Option<TlsFailure>,
}

/// An event of a session, with the session's facts at that moment: what
/// the observer of [`Server::send`] and [`Session::send_all`] is handed as
/// each event happens.
#[derive(Clone, Copy, Debug)]
pub struct Observed<'a> {
    event: &'a Event,
    peer: SocketAddr,
    tls: Option<&'a TlsInfo>,
    superseded: bool,
}

impl<'a> Observed<'a> {
    /// The event.
    pub fn event(&self) -> &'a Event {
        self.event
    }

    /// The address the session runs on.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// The session's TLS facts so far: `None` in plaintext, and before
    /// STARTTLS is done.
    pub fn tls(&self) -> Option<&'a TlsInfo> {
        self.tls
    }

    /// The message's outcome when this event is a message's final one: a
    /// [`Event::MessageResult`], unless the plaintext retry will send the
    /// message again (a failed STARTTLS handshake under Optional), when the
    /// retry's result is the final one. The session's report at that moment
    /// is the one that decided it: [`peer`](Self::peer) and
    /// [`tls`](Self::tls) are its host and TLS state.
    pub fn settled(&self) -> Option<&'a MessageOutcome> {
        match self.event {
            Event::MessageResult(outcome) if !self.superseded => Some(outcome),
            _ => None,
        }
    }
}

/// An open SMTP session with a submission server, reused for many messages.
///
/// [`open`](Self::open) sets it up (greeting, EHLO, STARTTLS, AUTH); each
/// [`send`](Self::send) or [`send_all`](Self::send_all) runs it until it is
/// idle again, pipelined when the server offers PIPELINING;
/// [`close`](Self::close) ends it with QUIT.
///
/// Sending on an idle session sends no NOOP first: whatever the server
/// said while the session sat idle (a `421`, or its close) is taken in
/// without waiting by [`refresh`](Self::refresh), which [`crate::Pool`]
/// calls before each reuse.
///
/// ```no_run
/// use smtp_core::address::{Mailbox, ReversePath};
/// use smtp_core::delivery::MemoryBody;
/// use smtp_core::Envelope;
/// use smtp_tls::{Outgoing, Server, Session};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let server = Server::new("smtp.example.com", 587);
/// let mut session = Session::open(&server).await?;
/// for n in 0..3 {
///     let mut message = Outgoing {
///         envelope: Envelope::new(
///             ReversePath::parse("alice@example.com")?,
///             vec![Mailbox::parse("bob@example.net")?],
///         ),
///         body: Box::new(MemoryBody::new(format!("Subject: {n}\r\n\r\nHello.\r\n"))),
///     };
///     let outcome = session.send(&mut message).await?;
///     println!("{} accepted", outcome.count(smtp_core::RecipientStatus::Accepted));
/// }
/// session.close().await;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Session {
    client: Client,
    transport: TcpTransport,
    driver: Driver,
    /// Everything the session said. Message results are filed here only
    /// for a batch ([`Server::send`]); a kept session returns each to its
    /// sender instead.
    report: SessionReport,
    /// Whether transcript lines reach the report and observers.
    transcript: bool,
    /// Message results go into the report (a batch), not only to observers.
    files_results: bool,
    /// While the session is set up: a failed STARTTLS handshake here is
    /// retried in plaintext, so message results that carry it are not final.
    superseded_by_retry: bool,
    tls_fallback: Option<TlsFailure>,
    span: tracing::Span,
    last_used: Instant,
    sent: u64,
}

/// How a new session runs before it is handed over.
#[derive(Clone, Copy)]
enum Start<'a> {
    /// Set up (greeting, EHLO, STARTTLS, AUTH), then idle: [`Session::open`].
    Open,
    /// A batch: every envelope queued before the greeting, QUIT behind
    /// them, run to the end: [`Server::send`].
    Batch(&'a [Envelope]),
}

impl Session {
    /// Connects and sets the session up: greeting, EHLO, STARTTLS and AUTH
    /// as `server` says. Under Optional, a failed STARTTLS handshake is
    /// retried once in plaintext on a new connection (never with
    /// credentials), as [`Server::send`] does. `Err` when no session could
    /// be set up.
    pub async fn open(server: &Server) -> Result<Self, Error> {
        let mut session = Self::start(server, Start::Open, &mut NoBodies, &mut |_| {}).await?;
        if let Some(error) = session.report.error.take() {
            return Err(Error::Session(error));
        }
        if !session.client.is_idle() {
            return Err(Error::Session(smtp_core::Error::ConnectionClosed {
                phase: Phase::Greeting,
            }));
        }
        Ok(session)
    }

    /// Sends one message and waits for every recipient's outcome.
    ///
    /// `Err` means the message was not tried at all (the session is over,
    /// or it has no recipients); anything that happened once it was tried,
    /// including the connection dropping, is in the outcome.
    pub async fn send(&mut self, message: &mut Outgoing) -> Result<MessageOutcome, Error> {
        let mut results = self
            .send_all(std::slice::from_mut(message), &mut |_| {})
            .await;
        results.pop().unwrap_or(Err(Error::NoOutcome))
    }

    /// Sends `messages` pipelined on this session (one round trip per
    /// message in steady state) and returns their outcomes in the same
    /// order; a message that could not be tried has an `Err`. `observe`
    /// sees every event as it happens.
    pub async fn send_all(
        &mut self,
        messages: &mut [Outgoing],
        observe: &mut (dyn FnMut(Observed<'_>) + Send),
    ) -> Vec<Result<MessageOutcome, Error>> {
        let now = self.transport.now();
        // A slot per message: filled now when the client refuses it, else
        // by its result (the client reports every message it takes).
        let mut results: Vec<Option<Result<MessageOutcome, Error>>> =
            Vec::with_capacity(messages.len());
        let mut batch = Batch {
            first: None,
            positions: Vec::with_capacity(messages.len()),
            messages,
        };
        for (position, message) in batch.messages.iter().enumerate() {
            match self.client.send(now, message.envelope.clone()) {
                Ok(id) => {
                    batch.first.get_or_insert(id.index());
                    batch.positions.push(position);
                    results.push(None);
                }
                // A session that ended says why it did, not "misuse".
                Err(smtp_core::Error::Misuse(smtp_core::Misuse::SessionOver))
                    if self.report.error.is_some() =>
                {
                    let ended = self.report.error.clone();
                    results.push(ended.map(|e| Err(Error::Session(e))));
                }
                Err(e) => results.push(Some(Err(Error::Session(e)))),
            }
        }
        let (first, positions) = (batch.first, batch.positions.clone());
        let mut on_event = |seen: Observed<'_>| {
            observe(seen);
            if let Some(outcome) = seen.settled()
                && let Some(slot) =
                    position_of(first, &positions, outcome.message).and_then(|p| results.get_mut(p))
            {
                *slot = Some(Ok(outcome.clone()));
            }
        };
        self.run(&mut batch, Until::Idle, &mut on_event).await;
        self.sent += positions.len() as u64;
        self.last_used = Instant::now();
        results
            .into_iter()
            .map(|r| r.unwrap_or(Err(Error::NoOutcome)))
            .collect()
    }

    /// Takes in, without waiting or sending anything, what the server said
    /// while the session sat idle. False when the session has ended (the
    /// server closed it, or said `421`); the reason is in
    /// [`error`](Self::error).
    pub async fn refresh(&mut self) -> bool {
        let (report, transcript) = (&mut self.report, self.transcript);
        self.driver
            .refresh(&mut self.client, &mut self.transport, &mut |event| {
                file(report, transcript, event);
            })
            .instrument(self.span.clone())
            .await
    }

    /// Ends the session with QUIT and returns its report (greeting,
    /// capabilities, TLS facts, warnings, transcript; message results were
    /// returned by each send).
    pub async fn close(mut self) -> SessionReport {
        let now = self.transport.now();
        self.client.quit(now);
        self.run(&mut NoBodies, Until::Closed, &mut |_| {}).await;
        self.report
    }

    /// False once the session has ended, cleanly or not.
    pub fn is_open(&self) -> bool {
        !self.client.is_closed()
    }

    /// How long since the last send finished (or the session was set up).
    pub fn idle_for(&self) -> Duration {
        self.last_used.elapsed()
    }

    /// How many messages were handed to this session.
    pub fn messages_sent(&self) -> u64 {
        self.sent
    }

    /// The fault that ended the session, if one did.
    pub fn error(&self) -> Option<&smtp_core::Error> {
        self.report.error.as_ref()
    }

    /// The server's capabilities from its latest EHLO.
    pub fn capabilities(&self) -> &smtp_core::ehlo::Capabilities {
        self.client.capabilities()
    }

    /// The TLS facts, if the session is encrypted.
    pub fn tls(&self) -> Option<&TlsInfo> {
        self.report.tls.as_ref()
    }

    /// Set when Optional fell back to plaintext after a failed STARTTLS
    /// handshake: why it failed.
    pub fn tls_fallback(&self) -> Option<&TlsFailure> {
        self.tls_fallback.as_ref()
    }

    /// The address the session runs on.
    pub fn peer(&self) -> SocketAddr {
        self.transport.peer()
    }

    /// The session's report so far (without message results).
    pub fn report(&self) -> &SessionReport {
        &self.report
    }

    /// A new session with `server`, run as `start` says, under the server's
    /// policy and, when the matrix says so, once more in plaintext: under
    /// Optional a failed STARTTLS handshake is retried once on a new
    /// plaintext connection, never on implicit TLS, never with credentials
    /// (they would then be at risk; those messages stay deferred). The one
    /// place that retry is written.
    async fn start<B: Bodies + ?Sized>(
        server: &Server,
        start: Start<'_>,
        bodies: &mut B,
        observe: &mut (dyn FnMut(Observed<'_>) + Send),
    ) -> Result<Self, Error> {
        let retry = server.may_retry_plaintext();
        let first = Self::attempt(server, server.policy, start, bodies, retry, observe).await?;
        let failure = match &first.report.error {
            Some(smtp_core::Error::Tls(failure)) if retry => failure.clone(),
            _ => return Ok(first),
        };
        first.span.in_scope(|| {
            tracing::warn!(
                kind = ?failure.kind,
                reason = %failure.detail,
                "TLS failed under policy Optional; sending once more in plaintext on a new connection"
            );
        });
        let mut second =
            Self::attempt(server, TlsPolicy::None, start, bodies, false, observe).await?;
        second.tls_fallback = Some(failure);
        Ok(second)
    }

    /// One connection under `policy`, run as `start` says. `superseded`
    /// when a failed handshake here will be retried.
    async fn attempt<B: Bodies + ?Sized>(
        server: &Server,
        policy: TlsPolicy,
        start: Start<'_>,
        bodies: &mut B,
        superseded: bool,
        observe: &mut (dyn FnMut(Observed<'_>) + Send),
    ) -> Result<Self, Error> {
        let span = server.span();
        // Before connecting: without a nonce there is no session to open.
        let config = server.config(policy)?;
        let transport = TcpTransport::connect_under(server, policy)
            .instrument(span.clone())
            .await?;
        let now = transport.now();
        let mut session = Self {
            client: Client::new(config, now),
            report: SessionReport {
                tls: transport.tls_info(),
                ..SessionReport::default()
            },
            transport,
            driver: Driver::new(),
            transcript: server.transcript,
            files_results: matches!(start, Start::Batch(_)),
            superseded_by_retry: superseded,
            tls_fallback: None,
            span,
            last_used: Instant::now(),
            sent: 0,
        };
        let until = match start {
            Start::Open => Until::Idle,
            Start::Batch(envelopes) => {
                for envelope in envelopes {
                    // Cannot fail: every envelope has recipients and the
                    // session is new.
                    let _ = session.client.send(now, envelope.clone());
                }
                session.client.quit(now);
                Until::Closed
            }
        };
        session.run(bodies, until, observe).await;
        // The handshake is behind it: nothing later is redone.
        session.superseded_by_retry = false;
        session.last_used = Instant::now();
        Ok(session)
    }

    /// Runs the client until `until`. Every event is filed in the report
    /// and handed to `observe` with the session's facts at that moment.
    async fn run<B: Bodies + ?Sized>(
        &mut self,
        bodies: &mut B,
        until: Until,
        observe: &mut (dyn FnMut(Observed<'_>) + Send),
    ) {
        let peer = self.transport.peer();
        let (transcript, files_results) = (self.transcript, self.files_results);
        let superseded_by_retry = self.superseded_by_retry;
        let report = &mut self.report;
        let mut on_event = |event: Event| {
            if matches!(event, Event::Transcript(_)) && !transcript {
                return;
            }
            if let Event::TlsEstablished(info) = &event {
                report.tls = Some(info.as_ref().clone());
            }
            let superseded = superseded_by_retry
                && matches!(&event, Event::MessageResult(outcome) if ended_by_tls(outcome));
            observe(Observed {
                event: &event,
                peer,
                tls: report.tls.as_ref(),
                superseded,
            });
            match event {
                Event::MessageResult(_) if !files_results => {}
                Event::TlsEstablished(_) => {}
                event => file(report, transcript, event),
            }
        };
        self.driver
            .run(
                &mut self.client,
                &mut self.transport,
                bodies,
                until,
                &mut on_event,
            )
            .instrument(self.span.clone())
            .await;
    }
}

impl Server {
    /// Sends `messages` through one session and reports on each: connects,
    /// queues every envelope and QUIT before the greeting arrives (they go
    /// out pipelined when the server offers PIPELINING), and runs the
    /// session to its end, with the same plaintext retry as
    /// [`Session::open`].
    ///
    /// `observe` sees every event as it happens, with the session's facts
    /// (transcripts, progress); [`Observed::settled`] picks out each
    /// message's final outcome, for a report of a run that is stopped
    /// halfway. `Err` means no session could be made, or a message has no
    /// recipients (nothing was sent); anything after that, a refused
    /// greeting or a policy not met included, is in the report, every
    /// message with an outcome. A message's [`MessageId`] index is its
    /// position in `messages`.
    pub async fn send(
        &self,
        messages: Vec<Outgoing>,
        observe: &mut (dyn FnMut(Observed<'_>) + Send),
    ) -> Result<Delivery, Error> {
        // A message without recipients could never have an outcome; and
        // leaving it out would shift every later message's index.
        if let Some(message) = messages.iter().position(|m| m.envelope.to.is_empty()) {
            return Err(Error::NoRecipients { message });
        }
        let (envelopes, mut bodies): (Vec<Envelope>, Vec<Box<dyn BodySource>>) =
            messages.into_iter().map(|m| (m.envelope, m.body)).unzip();
        let session = Session::start(
            self,
            Start::Batch(&envelopes),
            bodies.as_mut_slice(),
            observe,
        )
        .await?;
        Ok(Delivery {
            peer: session.peer(),
            tls_fallback: session.tls_fallback,
            session: session.report,
        })
    }
}

/// Files `event` in `report`, the transcript only when it is kept.
fn file(report: &mut SessionReport, transcript: bool, event: Event) {
    if transcript || !matches!(event, Event::Transcript(_)) {
        report.record(event);
    }
}

/// True when a failed TLS handshake ended the message. It comes before any
/// MAIL, so every recipient of a message it ended carries it.
fn ended_by_tls(outcome: &MessageOutcome) -> bool {
    outcome
        .recipients
        .iter()
        .all(|r| matches!(r.error, Some(smtp_core::Error::Tls(_))))
}

/// No message is sent while setting up or closing.
struct NoBodies;

impl Bodies for NoBodies {
    fn body(&mut self, _: MessageId) -> Option<&mut dyn BodySource> {
        None
    }
}

/// The messages of one [`Session::send_all`]. The client numbers the
/// messages it takes consecutively, so message `first + n` is the one at
/// `positions[n]`.
struct Batch<'a> {
    first: Option<u64>,
    positions: Vec<usize>,
    messages: &'a mut [Outgoing],
}

fn position_of(first: Option<u64>, positions: &[usize], id: MessageId) -> Option<usize> {
    let n = usize::try_from(id.index().checked_sub(first?)?).ok()?;
    positions.get(n).copied()
}

impl Bodies for Batch<'_> {
    fn body(&mut self, id: MessageId) -> Option<&mut dyn BodySource> {
        let position = position_of(self.first, &self.positions, id)?;
        Some(self.messages.get_mut(position)?.body.as_mut())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Pool;

    fn spawnable<T: Send + 'static>(_: &T) {}

    /// A program may spawn any of them on a multi-threaded runtime.
    #[test]
    fn sends_are_send() {
        fn check(server: &'static Server, pool: &'static Pool) {
            spawnable(&server.send(Vec::new(), Box::leak(Box::new(|_: Observed<'_>| {}))));
            spawnable(&Session::open(server));
            let message = Outgoing {
                envelope: Envelope::new(smtp_core::address::ReversePath::Null, Vec::new()),
                body: Box::new(smtp_core::delivery::MemoryBody::default()),
            };
            spawnable(&pool.send(server, message));
        }
        let _ = check;
    }
}
