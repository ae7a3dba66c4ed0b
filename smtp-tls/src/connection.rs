//! A session kept open for many messages: set up once (greeting, EHLO,
//! STARTTLS, AUTH), then any number of sends, each pipelined when the server
//! offers PIPELINING, until [`Connection::close`].

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use smtp_core::MessageId;
use smtp_core::delivery::{Bodies, BodySource, Driver, SessionReport, TlsInfo, Until};
use smtp_core::{Client, Error, Event, MessageOutcome, Misuse, TlsPolicy};

use crate::error::OpenError;
use crate::submission::{Outgoing, Submission};
use crate::transport::TcpTransport;

/// An open SMTP session with a submission server, reused for many messages.
///
/// Sending on an idle connection sends no NOOP first: whatever the server
/// said while the session sat idle (a `421`, or its close) is taken in
/// without waiting by [`refresh`](Self::refresh), which [`crate::Pool`]
/// calls before each reuse.
///
/// ```no_run
/// use smtp_core::address::{Mailbox, ReversePath};
/// use smtp_core::delivery::MemoryBody;
/// use smtp_core::Envelope;
/// use smtp_tls::{Connection, Outgoing, Submission};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let server = Submission::new("smtp.example.com", 587);
/// let mut connection = Connection::open(&server).await?;
/// for n in 0..3 {
///     let mut message = Outgoing {
///         envelope: Envelope::new(
///             ReversePath::parse("alice@example.com")?,
///             vec![Mailbox::parse("bob@example.net")?],
///         ),
///         body: Box::new(MemoryBody::new(format!("Subject: {n}\r\n\r\nHello.\r\n"))),
///     };
///     let outcome = connection.send(&mut message).await?;
///     println!("{} accepted", outcome.count(smtp_core::RecipientStatus::Accepted));
/// }
/// connection.close().await;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Connection {
    client: Client,
    transport: TcpTransport,
    driver: Driver,
    /// Everything but message results (those go back to each sender).
    report: SessionReport,
    tls_fallback: Option<String>,
    last_used: Instant,
    sent: u64,
}

impl Connection {
    /// Connects and sets the session up: greeting, EHLO, STARTTLS and AUTH
    /// as `server` says. Under Optional, a failed STARTTLS handshake is
    /// retried once in plaintext on a new connection (never with
    /// credentials), as [`Submission::send`] does.
    pub async fn open(server: &Submission) -> Result<Self, OpenError> {
        let policy = server.tls.policy;
        match Self::open_with(server, policy).await {
            Err(OpenError::Session(Error::Tls(failure))) if server.may_retry_plaintext() => {
                let mut connection = Self::open_with(server, TlsPolicy::None).await?;
                connection.tls_fallback = Some(failure.detail);
                Ok(connection)
            }
            other => other,
        }
    }

    async fn open_with(server: &Submission, policy: TlsPolicy) -> Result<Self, OpenError> {
        let (mut transport, mut client) = server.start(policy).await?;
        let mut report = SessionReport {
            tls: smtp_core::delivery::Transport::tls_info(&transport),
            ..SessionReport::default()
        };
        let mut driver = Driver::new();
        driver
            .run(
                &mut client,
                &mut transport,
                &mut NoBodies,
                Until::Idle,
                &mut |event| report.record(event),
            )
            .await;
        if let Some(error) = report.error.take() {
            return Err(OpenError::Session(error));
        }
        if !client.is_idle() {
            return Err(OpenError::Session(Error::ConnectionClosed {
                phase: smtp_core::Phase::Greeting,
            }));
        }
        report.tls = smtp_core::delivery::Transport::tls_info(&transport);
        Ok(Self {
            client,
            transport,
            driver,
            report,
            tls_fallback: None,
            last_used: Instant::now(),
            sent: 0,
        })
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
        results.pop().unwrap_or(Err(Misuse::SessionOver.into()))
    }

    /// Sends `messages` pipelined on this session (one round trip per
    /// message in steady state) and returns their outcomes in the same
    /// order. `observe` sees every event as it happens.
    pub async fn send_all(
        &mut self,
        messages: &mut [Outgoing],
        observe: &mut (dyn FnMut(&Event) + Send),
    ) -> Vec<Result<MessageOutcome, Error>> {
        let now = smtp_core::delivery::Transport::now(&self.transport);
        let mut results: Vec<Result<MessageOutcome, Error>> = Vec::with_capacity(messages.len());
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
                    // Replaced by the message's result: the client reports
                    // every message it took, whatever happens.
                    results.push(Err(Misuse::SessionOver.into()));
                }
                Err(e) => results.push(Err(e)),
            }
        }
        let (first, positions) = (batch.first, batch.positions.clone());
        let report = &mut self.report;
        let mut on_event = |event: Event| {
            observe(&event);
            if let Event::MessageResult(outcome) = event {
                if let Some(slot) =
                    position_of(first, &positions, outcome.message).and_then(|p| results.get_mut(p))
                {
                    *slot = Ok(outcome);
                }
            } else {
                report.record(event);
            }
        };
        self.driver
            .run(
                &mut self.client,
                &mut self.transport,
                &mut batch,
                Until::Idle,
                &mut on_event,
            )
            .await;
        self.sent += positions.len() as u64;
        self.last_used = Instant::now();
        results
    }

    /// Takes in, without waiting or sending anything, what the server said
    /// while the session sat idle. False when the session has ended (the
    /// server closed it, or said `421`); the reason is in
    /// [`error`](Self::error).
    pub async fn refresh(&mut self) -> bool {
        let report = &mut self.report;
        self.driver
            .refresh(&mut self.client, &mut self.transport, &mut |event| {
                report.record(event);
            })
            .await
    }

    /// Ends the session with QUIT and returns its report (greeting,
    /// capabilities, TLS facts, warnings, transcript; message results were
    /// returned by each send).
    pub async fn close(mut self) -> SessionReport {
        let now = smtp_core::delivery::Transport::now(&self.transport);
        self.client.quit(now);
        let report = &mut self.report;
        self.driver
            .run(
                &mut self.client,
                &mut self.transport,
                &mut NoBodies,
                Until::Closed,
                &mut |event| report.record(event),
            )
            .await;
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
    pub fn error(&self) -> Option<&Error> {
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

    /// Set when Optional fell back to plaintext after a failed handshake: why.
    pub fn tls_fallback(&self) -> Option<&str> {
        self.tls_fallback.as_deref()
    }

    /// The address the session runs on.
    pub fn peer(&self) -> SocketAddr {
        self.transport.peer()
    }

    /// The session's report so far (without message results).
    pub fn report(&self) -> &SessionReport {
        &self.report
    }
}

/// No message is sent while setting up or closing.
struct NoBodies;

impl Bodies for NoBodies {
    fn body(&mut self, _: MessageId) -> Option<&mut dyn BodySource> {
        None
    }
}

/// The messages of one [`Connection::send_all`]. The client numbers the
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
