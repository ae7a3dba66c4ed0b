//! What a message is sent as (the envelope) and what became of it (outcomes).

use std::fmt;

use crate::address::{Mailbox, ReversePath};
use crate::command::{EnvId, Notify, Ret};
use crate::data::BodyType;
use crate::error::Error;
use crate::phase::Phase;
use crate::reply::{EnhancedCode, Reply, ReplyCode};

/// Identifies a message within one [`Client`](crate::Client) session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(pub(crate) u64);

impl MessageId {
    /// The sequence number (0 for the session's first message).
    pub const fn index(self) -> u64 {
        self.0
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// Delivery status notification request (RFC 3461), used when the server offers DSN.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DsnRequest {
    /// How much of the message to return in a failure report.
    pub ret: Option<Ret>,
    /// An envelope identifier echoed in reports.
    pub envid: Option<EnvId>,
    /// When to notify, for every recipient.
    pub notify: Option<Notify>,
    /// Send each recipient as its own ORCPT.
    pub orcpt: bool,
}

/// The SMTP envelope of one message: who it is from, to whom, and what kind of body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    /// The reverse-path (MAIL FROM); `<>` for bounces.
    pub from: ReversePath,
    /// The recipients (RCPT TO), in order.
    pub to: Vec<Mailbox>,
    /// The body's kind: 7-bit, 8-bit (needs 8BITMIME) or binary (needs BINARYMIME).
    pub body: BodyType,
    /// The size of the encoded body if known (sent as `SIZE=` and checked
    /// against the server's limit before any data is sent).
    pub size: Option<u64>,
    /// DSN parameters.
    pub dsn: Option<DsnRequest>,
    /// Ask for REQUIRETLS (RFC 8689).
    pub require_tls: bool,
}

impl Envelope {
    /// A 7-bit message from `from` to `to`, no size, no DSN.
    pub fn new(from: ReversePath, to: Vec<Mailbox>) -> Self {
        Self {
            from,
            to,
            body: BodyType::SevenBit,
            size: None,
            dsn: None,
            require_tls: false,
        }
    }

    /// Sets the body kind.
    #[must_use]
    pub fn with_body(mut self, body: BodyType) -> Self {
        self.body = body;
        self
    }

    /// Sets the known size.
    #[must_use]
    pub fn with_size(mut self, size: u64) -> Self {
        self.size = Some(size);
        self
    }

    /// True when an address of this envelope needs SMTPUTF8.
    pub fn needs_smtputf8(&self) -> bool {
        self.from.needs_smtputf8() || self.to.iter().any(Mailbox::needs_smtputf8)
    }
}

/// What became of a recipient.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RecipientStatus {
    /// The server took responsibility for the message (2xx to the end of data).
    Accepted,
    /// Refused for good: the server's 5xx to MAIL, RCPT or the message, or a
    /// message this server cannot take as it is (too large, 8-bit, UTF-8).
    Rejected,
    /// Not delivered this time; a retry may succeed (4xx, timeout, disconnect,
    /// a session that failed before the transaction, an unknown outcome).
    Deferred,
}

impl RecipientStatus {
    /// `accepted`, `rejected` or `deferred`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Rejected => "rejected",
            Self::Deferred => "deferred",
        }
    }
}

impl fmt::Display for RecipientStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The outcome of one recipient of one message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecipientOutcome {
    /// The recipient.
    pub recipient: Mailbox,
    /// Accepted, rejected or deferred.
    pub status: RecipientStatus,
    /// The step that decided it.
    pub phase: Phase,
    /// The server's deciding reply, when a reply decided it.
    pub reply: Option<Reply>,
    /// The local reason (timeout, disconnect, policy, …) when no reply did,
    /// or the error that accompanied the reply.
    pub error: Option<Error>,
}

impl RecipientOutcome {
    pub(crate) fn from_reply(recipient: Mailbox, phase: Phase, reply: Reply) -> Self {
        let status = if reply.code().is_positive() {
            RecipientStatus::Accepted
        } else if reply.code().is_permanent() && !reply.is_authentication_required() {
            RecipientStatus::Rejected
        } else {
            // A 4xx; or RFC 4954's 530 "authentication required", which is
            // about the session's credentials, not this recipient.
            RecipientStatus::Deferred
        };
        Self {
            recipient,
            status,
            phase,
            reply: Some(reply),
            error: None,
        }
    }

    /// An outcome decided by `error`. Rejected only when the server refused
    /// this message for good in its transaction (a 5xx to MAIL, RCPT, DATA,
    /// a chunk or the end of data) or the message cannot go to this server
    /// as it is (too large, 8-bit or UTF-8 it does not take). A session that
    /// failed — greeting or EHLO refused, authentication, TLS or encryption
    /// policy, a connection lost — says nothing against the recipient: it is
    /// deferred, with the session's reply, and a script cleaning its list on
    /// `rejected` keeps it.
    pub(crate) fn from_error(recipient: Mailbox, phase: Phase, error: Error) -> Self {
        let status = match &error {
            Error::Rejected { phase, reply }
                if reply.code().is_permanent() && phase.is_transaction() =>
            {
                RecipientStatus::Rejected
            }
            Error::Message(_) if error.is_permanent() => RecipientStatus::Rejected,
            _ => RecipientStatus::Deferred,
        };
        Self {
            recipient,
            status,
            phase,
            reply: error.reply().cloned(),
            error: Some(error),
        }
    }

    /// The deciding reply code, if a reply decided.
    pub fn code(&self) -> Option<ReplyCode> {
        self.reply.as_ref().map(Reply::code)
    }

    /// The deciding enhanced status code, if the reply carried one.
    pub fn enhanced_code(&self) -> Option<EnhancedCode> {
        self.reply.as_ref().and_then(Reply::enhanced_code)
    }

    /// Human-readable reason: the error if there is one, else the reply text.
    pub fn text(&self) -> String {
        match (&self.error, &self.reply) {
            (Some(e), _) => e.to_string(),
            (None, Some(r)) => r.text(),
            (None, None) => String::new(),
        }
    }
}

impl fmt::Display for RecipientOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} at {}", self.recipient, self.status, self.phase)?;
        match (&self.error, &self.reply) {
            (Some(e), _) => write!(f, " ({e})"),
            (None, Some(r)) => write!(f, " ({r})"),
            (None, None) => Ok(()),
        }
    }
}

/// The outcome of a whole message: one entry per recipient, in envelope order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageOutcome {
    /// Which message.
    pub message: MessageId,
    /// Every recipient's outcome, in the envelope's order.
    pub recipients: Vec<RecipientOutcome>,
}

impl MessageOutcome {
    /// True when every recipient was accepted.
    pub fn all_accepted(&self) -> bool {
        self.recipients
            .iter()
            .all(|r| r.status == RecipientStatus::Accepted)
    }

    /// How many recipients ended with `status`.
    pub fn count(&self, status: RecipientStatus) -> usize {
        self.recipients
            .iter()
            .filter(|r| r.status == status)
            .count()
    }
}
