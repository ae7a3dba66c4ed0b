//! What the client tells its driver.

use std::fmt;

use crate::delivery::TlsInfo;
use crate::ehlo::Capabilities;
use crate::envelope::{MessageId, MessageOutcome, RecipientOutcome};
use crate::error::Error;
use crate::reply::Reply;
use crate::sasl::Mechanism;

/// Something the driver must act on or may report. Drained with
/// [`Client::poll_event`](super::Client::poll_event).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// The server's `220` greeting.
    Greeting(Reply),
    /// The server's EHLO capabilities (again after STARTTLS).
    Capabilities(Capabilities),
    /// The server accepted STARTTLS: write out pending bytes, run the TLS
    /// handshake on this connection, then call
    /// [`Client::tls_established`](super::Client::tls_established).
    StartTls,
    /// The TLS handshake is done ([`Client::tls_established`](super::Client::tls_established)):
    /// the session is encrypted from here on, with these TLS facts.
    TlsEstablished(Box<TlsInfo>),
    /// The SCRAM exchange needs its key derived (seconds of CPU at worst):
    /// take the job with [`Client::take_derivation`](super::Client::take_derivation),
    /// run it where blocking does no harm, and hand the result to
    /// [`Client::derivation_done`](super::Client::derivation_done). The
    /// client sends nothing and awaits no reply until then.
    DerivationWanted,
    /// AUTH succeeded.
    Authenticated(Mechanism),
    /// The session is set up; messages are being sent.
    Ready,
    /// Stream the body of this message from its beginning: call
    /// [`Client::body_chunk`](super::Client::body_chunk) as often as needed, then
    /// [`Client::body_end`](super::Client::body_end). May come more than once
    /// for one message when its recipients are split over several transactions.
    BodyWanted(MessageId),
    /// One recipient's final outcome.
    RecipientResult {
        /// The message.
        message: MessageId,
        /// The outcome.
        outcome: RecipientOutcome,
    },
    /// Every recipient of a message has its final outcome.
    MessageResult(MessageOutcome),
    /// Something the user should know that did not stop the session.
    Warning(Warning),
    /// A line of the session transcript (only with `Config::transcript`).
    Transcript(TranscriptLine),
    /// The session ended cleanly (QUIT answered, or the server closed an idle session).
    Closed,
    /// The session failed. The client takes no more input; write whatever
    /// [`Client::poll_transmit`](super::Client::poll_transmit) still yields
    /// (perhaps a QUIT) and close the connection. Every unfinished message has
    /// already had its `MessageResult`.
    Failed(Error),
}

/// Warnings.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Warning {
    /// A mechanism that reveals the secret is used without TLS (policy `None`
    /// and the mechanism named explicitly).
    PlaintextSecret(Mechanism),
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::PlaintextSecret(m) => write!(
                f,
                "AUTH {m} sends the password readable to anyone on the network path because \
                 encryption is none; require TLS (the policy required, or implicit TLS on \
                 port 465)"
            ),
        }
    }
}

/// Which way a transcript line went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Client to server.
    Sent,
    /// Server to client.
    Received,
}

/// One line of the session as it crossed the wire, secrets redacted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TranscriptLine {
    /// Which way.
    pub direction: Direction,
    /// Whether the session was encrypted at the time.
    pub tls: bool,
    /// The line without its CRLF.
    pub text: String,
}

impl fmt::Display for TranscriptLine {
    /// The swaks style: `->` / `<-` in plaintext, `~>` / `<~` under TLS.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let arrow = match (self.direction, self.tls) {
            (Direction::Sent, false) => "->",
            (Direction::Received, false) => "<-",
            (Direction::Sent, true) => "~>",
            (Direction::Received, true) => "<~",
        };
        write!(f, "{arrow} {}", self.text)
    }
}
