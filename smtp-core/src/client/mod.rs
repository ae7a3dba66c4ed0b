//! The sans-IO SMTP client state machine.
//!
//! Split by phase: [`session`] (greeting, EHLO, STARTTLS, AUTH),
//! [`transaction`] (MAIL, RCPT, DATA/BDAT, RSET), [`params`] (what a message
//! asks of the server: the pre-MAIL checks and the MAIL/RCPT parameters),
//! [`outbox`] (what goes out and which replies are awaited).

mod body;
mod config;
mod event;
mod outbox;
mod params;
mod session;
mod settle;
mod transaction;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

pub use config::Config;
pub use event::{Direction, Event, TranscriptLine, Warning};

use self::body::Body;
use self::outbox::{Expect, Outbox, Pending};
use self::transaction::{Message, Transaction};
use crate::command::Command;
use crate::delivery::{TlsFailure, TlsInfo};
use crate::ehlo::Capabilities;
use crate::envelope::{Envelope, MessageId};
use crate::error::{Error, Misuse, ProtocolError};
use crate::phase::Phase;
use crate::policy::TlsPolicy;
use crate::reply::{ReplyCode, Status, parse_reply};
use crate::sasl::{Authenticator, KeyDerivation};

/// An SMTP client session, without I/O.
///
/// # Call contract
///
/// The driver owns the connection and the clock; the client owns the protocol.
///
/// - **Input** — [`handle_input`](Self::handle_input) with every byte read
///   from the server (any chunking), [`handle_close`](Self::handle_close)
///   when the server closes its side, [`handle_timeout`](Self::handle_timeout)
///   when the instant from [`poll_timeout`](Self::poll_timeout) has passed,
///   [`handle_write_timeout`](Self::handle_write_timeout) when a write stalls.
/// - **Output** — after every call, drain [`poll_transmit`](Self::poll_transmit)
///   (write those bytes, in one write) and [`poll_event`](Self::poll_event)
///   until it returns `None`, and re-read [`poll_timeout`](Self::poll_timeout).
/// - **Work** — [`send`](Self::send) queues a message at any time; the client
///   sends it as soon as the session is ready. On [`Event::BodyWanted`],
///   stream that message's body with [`body_chunk`](Self::body_chunk) and
///   finish with [`body_end`](Self::body_end), draining `poll_transmit` after
///   each call so memory stays bounded. [`quit`](Self::quit) ends the session
///   once queued messages are done.
/// - **Key derivation** — on [`Event::DerivationWanted`], take the job with
///   [`take_derivation`](Self::take_derivation), run it
///   ([`KeyDerivation::run`](crate::sasl::KeyDerivation::run): pure, but
///   CPU-bound, so off an async executor's threads), and hand the result to
///   [`derivation_done`](Self::derivation_done) before feeding more input.
///   Until then the client has nothing to send and no deadline.
/// - **STARTTLS** — on [`Event::StartTls`], write pending bytes, run the TLS
///   handshake, then call [`tls_established`](Self::tls_established) (or
///   [`tls_failed`](Self::tls_failed)). Plaintext bytes that arrive before
///   the handshake are a protocol error (response injection).
/// - **Time** is an [`Instant`] passed in, monotonic; the client never reads a clock.
///
/// Each message ends in exactly one [`Event::MessageResult`] holding every
/// recipient's outcome, whatever the server does; a recipient is accepted
/// only after the server's 2xx to the end of its data. When the session ends
/// after a message's end of data went out and before its reply came, its
/// recipients are deferred with [`Error::OutcomeUnknown`]: the server may
/// have accepted it. Fatal faults end in [`Event::Failed`], after which the
/// client ignores input; [`Event::Closed`] comes only when no message is left
/// without its outcome.
///
/// # Panics
///
/// Never on input. Bytes from the server go through bounded parsers;
/// API misuse is returned as [`Error::Misuse`].
#[derive(Debug)]
pub struct Client {
    config: Config,
    state: State,
    caps: Capabilities,
    tls: bool,
    /// Unparsed server bytes; bounded because the reply parser rejects
    /// anything longer than its limits.
    input: Vec<u8>,
    out: Outbox,
    pending: Pending,
    auth: Option<Authenticator>,
    /// A SCRAM key derivation not yet taken by the driver.
    derivation: Option<KeyDerivation>,
    /// Messages not yet finished, in the order given.
    messages: VecDeque<Message>,
    /// Transactions whose commands are on the wire, oldest first.
    txs: VecDeque<Transaction>,
    /// The body being streamed, if any.
    body: Option<Body>,
    /// Scratch space for BDAT chunks, reused across messages.
    scratch: Vec<u8>,
    next_message: u64,
    next_tx: u64,
    rset_needed: bool,
    quit_requested: bool,
    /// Work to resume at the next poll (after a BDAT body was abandoned).
    deferred_advance: Option<Instant>,
}

/// Where the session stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Greeting, EHLO, STARTTLS, AUTH: one command at a time.
    Setup,
    /// The STARTTLS `220` arrived; the driver is doing the handshake.
    TlsUpgrade,
    /// Transactions may run.
    Ready,
    /// QUIT sent.
    Quitting,
    /// Ended cleanly.
    Closed,
    /// Ended by a fault.
    Failed,
}

impl Client {
    /// A new session on a freshly opened connection, waiting for the greeting.
    pub fn new(config: Config, now: Instant) -> Self {
        let tls = config.implicit_tls;
        let pending = Pending::new(now);
        Self {
            out: Outbox::new(config.transcript, tls),
            config,
            state: State::Setup,
            caps: Capabilities::default(),
            tls,
            input: Vec::new(),
            pending,
            auth: None,
            derivation: None,
            messages: VecDeque::new(),
            txs: VecDeque::new(),
            body: None,
            scratch: Vec::new(),
            next_message: 0,
            next_tx: 0,
            rset_needed: false,
            quit_requested: false,
            deferred_advance: None,
        }
    }

    /// Feeds bytes read from the server.
    pub fn handle_input(&mut self, now: Instant, bytes: &[u8]) {
        match self.state {
            State::Closed | State::Failed => return,
            State::TlsUpgrade => {
                self.fail(ProtocolError::InputDuringHandshake.into());
                return;
            }
            _ => {}
        }
        // parse_reply re-reads an unfinished reply from its start, so while a
        // line is still unfinished and within bounds, only collect it: a
        // server dripping bytes one by one costs linear time, not quadratic.
        if !self.input.is_empty()
            && !bytes.contains(&b'\n')
            && self.input.len() + bytes.len() <= self.reply_limits().max_line_len
        {
            self.input.extend_from_slice(bytes);
            return;
        }
        // Parse straight from `bytes` when nothing is buffered (the common
        // case); keep only an incomplete tail, which the parser bounds.
        let mut owned = std::mem::take(&mut self.input);
        let buffered = !owned.is_empty();
        if buffered {
            owned.extend_from_slice(bytes);
        }
        let buf: &[u8] = if buffered { &owned } else { bytes };
        let mut pos = 0;
        while pos < buf.len() {
            let rest = buf.get(pos..).unwrap_or_default();
            match parse_reply(rest, &self.reply_limits()) {
                Ok(Status::Complete((used, reply))) => {
                    pos += used;
                    let upgrading = self.on_reply(now, reply);
                    if upgrading {
                        if pos < buf.len() {
                            // Anything after the 220 to STARTTLS was sent in the
                            // clear and would be read as if it came over TLS.
                            let bytes = buf.len() - pos;
                            self.fail(ProtocolError::ResponseInjection { bytes }.into());
                        } else {
                            self.out.event(Event::StartTls);
                        }
                        return;
                    }
                    if matches!(self.state, State::Closed | State::Failed) {
                        return;
                    }
                }
                Ok(Status::Partial) => break,
                Err(e) => {
                    self.fail(self.malformed(e));
                    return;
                }
            }
        }
        if buffered {
            owned.drain(..pos);
        } else {
            owned.extend_from_slice(bytes.get(pos..).unwrap_or_default());
        }
        self.input = owned;
        self.advance(now);
    }

    /// The server closed its side of the connection.
    pub fn handle_close(&mut self, _now: Instant) {
        match self.state {
            State::Closed | State::Failed => {}
            // Once every message has its outcome, a close (even before the
            // reply to QUIT or to a last RSET) loses nothing.
            State::Quitting if self.messages.is_empty() => self.close(),
            _ if self.pending.is_empty() && self.messages.is_empty() && self.body.is_none() => {
                self.close();
            }
            _ => {
                let phase = self.current_phase();
                self.fail(Error::ConnectionClosed { phase });
            }
        }
    }

    /// A write made no progress for `limit` (the driver's deadline for it):
    /// the server stopped reading. Ends the session like any other fault.
    pub fn handle_write_timeout(&mut self, _now: Instant, limit: Duration) {
        if matches!(self.state, State::Closed | State::Failed) {
            return;
        }
        let phase = if self.body.is_some() {
            Phase::DataBlock
        } else {
            self.current_phase()
        };
        self.fail(Error::WriteTimeout { phase, limit });
    }

    /// Call when the instant from [`poll_timeout`](Self::poll_timeout) has passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        if matches!(self.state, State::Closed | State::Failed) {
            return;
        }
        if let Some((deadline, phase, limit)) = self.pending.deadline(&self.config.timeouts)
            && now >= deadline
        {
            if self.state == State::Quitting && self.messages.is_empty() {
                // The server never answered QUIT; nothing is lost.
                self.close();
            } else {
                self.fail(Error::Timeout { phase, limit });
            }
        }
    }

    /// Appends the bytes to write to `buf` (taking them without a copy when
    /// `buf` is empty). Returns true if there were any.
    #[must_use]
    pub fn poll_transmit(&mut self, buf: &mut Vec<u8>) -> bool {
        self.resume();
        if self.out.bytes.is_empty() {
            return false;
        }
        self.pending.mark_sent();
        if buf.is_empty() {
            std::mem::swap(buf, &mut self.out.bytes);
        } else {
            buf.append(&mut self.out.bytes);
        }
        true
    }

    /// The next event, if any.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.resume();
        self.out.events.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) must next be called, if
    /// the client is waiting for a reply.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::Closed | State::Failed | State::TlsUpgrade => None,
            _ => self
                .pending
                .deadline(&self.config.timeouts)
                .map(|(at, ..)| at),
        }
    }

    /// Queues a message. Its body is asked for with [`Event::BodyWanted`].
    pub fn send(&mut self, now: Instant, envelope: Envelope) -> Result<MessageId, Error> {
        if envelope.to.is_empty() {
            return Err(Misuse::NoRecipients.into());
        }
        if self.quit_requested
            || matches!(self.state, State::Quitting | State::Closed | State::Failed)
        {
            return Err(Misuse::SessionOver.into());
        }
        let id = MessageId(self.next_message);
        self.next_message += 1;
        self.messages.push_back(Message::new(id, envelope));
        self.advance(now);
        Ok(id)
    }

    /// Ends the session with QUIT once every queued message is done.
    pub fn quit(&mut self, now: Instant) {
        if matches!(self.state, State::Closed | State::Failed | State::Quitting) {
            return;
        }
        self.quit_requested = true;
        self.advance(now);
    }

    /// Feeds the next piece of the body asked for by [`Event::BodyWanted`].
    /// The bytes are the message as stored (RFC 5322, any line endings): the
    /// client normalises line endings and dot-stuffs. Drain
    /// [`poll_transmit`](Self::poll_transmit) after each call.
    ///
    /// A body that breaks its rules (8-bit data in a 7-bit message, a line
    /// over 998 octets, NUL) is never ended, so the server never takes a
    /// damaged message: over BDAT the transaction is cleared with RSET and
    /// the session goes on; over DATA, which has no way back, the session
    /// ends. The error is returned and reported in the message's outcome.
    pub fn body_chunk(&mut self, now: Instant, chunk: &[u8]) -> Result<(), Error> {
        self.write_chunk(now, chunk)
    }

    /// Ends the body asked for by [`Event::BodyWanted`]: writes the end-of-data
    /// mark (`CRLF.CRLF`, or `BDAT n LAST`) and, with PIPELINING, the next
    /// message's envelope in the same write.
    pub fn body_end(&mut self, now: Instant) -> Result<(), Error> {
        self.end_body(now)
    }

    /// The body could not be read (`detail` says why). It is never ended,
    /// so the server never takes a truncated message; its recipients are
    /// deferred. Over BDAT the transaction is cleared with RSET and the
    /// session goes on; over DATA the session ends and the other messages
    /// are deferred too.
    pub fn body_failed(&mut self, now: Instant, detail: impl Into<String>) -> Result<(), Error> {
        self.fail_body(now, detail)
    }

    /// The driver finished the TLS handshake asked for by [`Event::StartTls`];
    /// `info` is what it learnt (raised again as [`Event::TlsEstablished`]).
    /// Everything learnt before TLS is forgotten and EHLO is sent again.
    pub fn tls_established(&mut self, now: Instant, info: TlsInfo) -> Result<(), Error> {
        if self.state != State::TlsUpgrade {
            return Err(Misuse::NoUpgradePending.into());
        }
        self.tls = true;
        self.out.tls = true;
        self.caps = Capabilities::default();
        self.input.clear();
        self.state = State::Setup;
        // Certified means a verified certificate, whatever the driver's own
        // settings let through: the policy is enforced here, once.
        let unverified = (self.config.tls == TlsPolicy::Certified && !info.verified).then(|| {
            info.verify_error
                .clone()
                .unwrap_or_else(|| "the certificate was not verified".to_owned())
        });
        self.out.event(Event::TlsEstablished(Box::new(info)));
        if let Some(detail) = unverified {
            let detail = format!("{detail}; the policy certified requires a verified certificate");
            self.fail_and_quit(Error::Tls(TlsFailure::new(
                crate::delivery::TlsFailureKind::Certificate,
                detail,
            )));
            return Ok(());
        }
        self.send_ehlo(now);
        Ok(())
    }

    /// The driver's TLS handshake failed; `failure` says why (it ends up in
    /// the error and in every unfinished recipient's outcome) and carries
    /// the certificate the server presented, if any.
    pub fn tls_failed(&mut self, _now: Instant, failure: impl Into<TlsFailure>) {
        if !matches!(self.state, State::Closed | State::Failed) {
            self.fail(Error::Tls(failure.into()));
        }
    }

    /// The configured deadlines (drivers enforce connect, handshake and data-block ones).
    pub fn timeouts(&self) -> crate::timeouts::Timeouts {
        self.config.timeouts
    }

    /// Whether the session is encrypted.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// The capabilities from the latest EHLO (empty before it, or after HELO).
    pub fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    /// True when the session is set up and has nothing in flight: no reply
    /// awaited, no message queued or streaming, nothing left to write or to
    /// report. A connection kept for reuse waits in this state.
    pub fn is_idle(&self) -> bool {
        self.state == State::Ready
            && !self.quit_requested
            && self.pending.is_empty()
            && self.messages.is_empty()
            && self.txs.is_empty()
            && self.body.is_none()
            && self.deferred_advance.is_none()
            && self.out.bytes.is_empty()
            && self.out.events.is_empty()
    }

    /// True once the session has ended, cleanly or not.
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed | State::Failed)
    }

    /// Runs work deferred to the next poll.
    fn resume(&mut self) {
        if let Some(now) = self.deferred_advance {
            self.advance(now);
        }
    }

    /// Dispatches one reply. Returns true when it was the `220` to STARTTLS.
    fn on_reply(&mut self, now: Instant, reply: crate::reply::Reply) -> bool {
        self.out.received(&reply);
        // A reply to a command still in the outbox came early (a server
        // answering twice, or ahead): taken for the next command's reply,
        // it would shift every later reply onto the wrong command and, say,
        // reject a recipient with another's refusal. A 421 is the one reply
        // a server may send at any time.
        if self.pending.front_unsent() && reply.code() != ReplyCode::SERVICE_NOT_AVAILABLE {
            self.fail(ProtocolError::Unsolicited(reply).into());
            return false;
        }
        let Some(expect) = self.pending.pop(now) else {
            let error = if reply.code() == ReplyCode::SERVICE_NOT_AVAILABLE {
                Error::Rejected {
                    phase: self.current_phase(),
                    reply,
                }
            } else {
                ProtocolError::Unsolicited(reply).into()
            };
            self.fail(error);
            return false;
        };
        // 421: the server is shutting the session down, whatever we asked.
        if reply.code() == ReplyCode::SERVICE_NOT_AVAILABLE && expect != Expect::Quit {
            // Still an answer: to the end of data (or a chunk) it says the
            // message was not taken, so its outcome is known, not lost.
            if let Expect::DataEnd(tx) | Expect::Bdat(tx) = expect {
                self.settle_accepted(tx, expect.phase(), &reply);
            }
            self.fail(Error::Rejected {
                phase: expect.phase(),
                reply,
            });
            return false;
        }
        match expect {
            Expect::Greeting => self.on_greeting(now, reply),
            Expect::Ehlo => self.on_ehlo(now, reply),
            Expect::Helo => self.on_helo(now, reply),
            Expect::StartTls => return self.on_starttls(now, reply),
            Expect::Auth => self.on_auth(now, reply),
            Expect::Mail(tx) => self.on_mail(now, tx, reply),
            Expect::Rcpt(tx, index) => self.on_rcpt(now, tx, index, reply),
            Expect::Data(tx) => self.on_data(now, tx, reply),
            Expect::Bdat(tx) => self.on_bdat(now, tx, reply),
            Expect::DataEnd(tx) => self.on_data_end(now, tx, reply),
            Expect::Rset => self.on_rset(now, reply),
            Expect::Quit => self.close(),
        }
        false
    }

    fn send_command(&mut self, now: Instant, command: &Command<'_>, expect: Expect) {
        self.out.command(command);
        self.pending.push(now, expect);
    }

    fn send_quit(&mut self, now: Instant) {
        self.send_command(now, &Command::Quit, Expect::Quit);
        self.state = State::Quitting;
    }

    /// What the client is doing, for errors that are not tied to a reply.
    fn current_phase(&self) -> Phase {
        if let Some(e) = self.pending.front() {
            return e.phase();
        }
        match self.state {
            State::TlsUpgrade => Phase::TlsHandshake,
            _ if self.body.is_some() => Phase::DataBlock,
            State::Quitting => Phase::Quit,
            _ => Phase::Mail,
        }
    }

    /// Ends the session cleanly; with a message still unfinished that is a
    /// failure instead, so that every message gets its outcome.
    fn close(&mut self) {
        if !self.messages.is_empty() {
            let phase = self.current_phase();
            self.fail(Error::ConnectionClosed { phase });
            return;
        }
        self.state = State::Closed;
        self.pending.clear();
        self.out.event(Event::Closed);
    }

    /// Ends the session: every unfinished recipient gets an outcome from
    /// `error`, then [`Event::Failed`].
    fn fail(&mut self, error: Error) {
        self.fail_with(error, None);
    }

    /// [`fail`](Self::fail), with `status` overriding the status each
    /// recipient's outcome would take from `error`.
    fn fail_with(&mut self, error: Error, status: Option<crate::envelope::RecipientStatus>) {
        // Commands queued but not yet handed out never go: after a fault
        // the server hears nothing more (but the QUIT of fail_and_quit).
        self.out.bytes.clear();
        self.end(error, status);
    }

    /// Settles everything unfinished with `error` and reports the failure.
    fn end(&mut self, error: Error, status: Option<crate::envelope::RecipientStatus>) {
        // An AUTH fault is the AUTH step's, even when MAIL is queued behind it.
        let phase = match &error {
            Error::AuthenticationFailed { .. } | Error::Sasl(_) => Phase::Auth,
            _ => self.current_phase(),
        };
        // The session's error says so when a message's fate is unknown, so
        // nobody reads "try again later" and sends it twice.
        let unknown = self.end_of_data_unanswered();
        self.abandon_messages(phase, &error, status);
        self.pending.clear();
        self.body = None;
        self.input.clear();
        self.state = State::Failed;
        let error = if unknown {
            Error::OutcomeUnknown {
                cause: Box::new(error),
            }
        } else {
            error
        };
        self.out.event(Event::Failed(error));
    }

    /// Like [`fail`](Self::fail) for faults where the server is still
    /// listening (policy not met, refused greeting): says QUIT on the way out.
    fn fail_and_quit(&mut self, error: Error) {
        self.fail_saying(error, None);
    }

    /// [`fail_and_quit`](Self::fail_and_quit) with `last` said before the
    /// QUIT (an AUTH exchange's cancelling `*`): nothing queued before goes.
    fn fail_saying(&mut self, error: Error, last: Option<&Command<'_>>) {
        self.out.bytes.clear();
        if let Some(command) = last {
            self.out.command(command);
        }
        self.out.command(&Command::Quit);
        self.end(error, None);
    }
}
