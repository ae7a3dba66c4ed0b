//! What the store tells of its messages, destinations and workers: for
//! `list`, `show`, `stats`, `retry` and `migrate`.

use std::time::SystemTime;

use super::{Attempt, Lease, MessageId, MessageOptions, RecipientId};
use crate::state::RecipientState;

/// A recipient as `show` and `list` present it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecipientInfo {
    /// Its id.
    pub id: RecipientId,
    /// Its address.
    pub address: String,
    /// Its state.
    pub state: RecipientState,
    /// Attempts made.
    pub attempts: u32,
    /// When it is due (for queued and deferred recipients).
    pub next_attempt: SystemTime,
    /// The last attempt's facts.
    pub last: Option<Attempt>,
    /// The lease holding it (delivering only).
    pub lease: Option<Lease>,
    /// When its state last changed.
    pub updated: SystemTime,
}

/// A message as `show` and `list` present it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageInfo {
    /// Its id.
    pub id: MessageId,
    /// The reverse-path.
    pub from: String,
    /// When it was enqueued.
    pub created: SystemTime,
    /// The body's size.
    pub body_size: u64,
    /// Sending options.
    pub options: MessageOptions,
    /// Its recipients, in the order enqueued.
    pub recipients: Vec<RecipientInfo>,
    /// The delivery status notification enqueued for it (its message
    /// id), once one has been.
    pub notification: Option<MessageId>,
}

/// Which messages `list` returns.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListFilter {
    /// Only messages with at least one recipient in this state.
    pub state: Option<RecipientState>,
    /// At most this many messages (oldest first).
    pub limit: Option<u32>,
}

/// What `retry` makes due now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RetryTarget {
    /// One message's waiting recipients.
    Message(MessageId),
    /// Every waiting recipient, and every destination's back-off is cleared.
    All,
}

/// What bringing a store's schema to this build's version did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Migration {
    /// The version found: `None` when there was no schema (it was
    /// created).
    pub from: Option<i64>,
    /// The version now.
    pub to: i64,
}

impl Migration {
    /// Whether anything was created or upgraded.
    pub fn changed(&self) -> bool {
        self.from != Some(self.to)
    }
}

/// Counts across the queue.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Messages held (in any state).
    pub messages: u64,
    /// Recipients per state, in [`RecipientState::ALL`]'s order.
    pub recipients: Vec<(RecipientState, u64)>,
    /// When the oldest message was enqueued.
    pub oldest: Option<SystemTime>,
    /// When the oldest message with a recipient still waiting (queued,
    /// deferred, or delivering) was enqueued: the queue's age.
    pub oldest_waiting: Option<SystemTime>,
}

impl Stats {
    /// Recipients in `state`.
    pub fn count(&self, state: RecipientState) -> u64 {
        self.recipients
            .iter()
            .find(|(s, _)| *s == state)
            .map_or(0, |(_, n)| *n)
    }
}

/// Messages waiting for one route ([`Store::waiting_by_route`](super::Store::waiting_by_route)).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RouteWaiting {
    /// The route ([`MessageOptions::route`]); `None` for messages enqueued
    /// without one, which any runner delivers.
    pub route: Option<String>,
    /// Messages with a recipient waiting (queued or deferred).
    pub messages: u64,
    /// Their waiting recipients.
    pub recipients: u64,
    /// Of `messages`, those with a recipient due at the time asked about.
    pub due: u64,
}

/// A worker's activity on the queue (`smtp queue stats`), from
/// [`Store::workers`](super::Store::workers)(super::Store::workers).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerActivity {
    /// The worker id its claims are made under.
    pub worker: String,
    /// The host it runs on, when the store keeps it (PostgreSQL does).
    pub host: Option<String>,
    /// Its process id there, when the store keeps it.
    pub pid: Option<u32>,
    /// Its first claim, when the store keeps it.
    pub started: Option<SystemTime>,
    /// Its last claim or lease renewal: its heartbeat.
    pub last_seen: SystemTime,
    /// Messages it holds under live leases (at the time asked about).
    pub leases: u64,
    /// Recipients it holds under live leases.
    pub recipients: u64,
}

/// A destination (a relay, or a set of MX hosts) not to be tried before a
/// time. The key is the runner's: the store only keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// The destination's key.
    pub destination: String,
    /// Not to be tried before this.
    pub not_before: SystemTime,
    /// Consecutive failures recorded (for the back-off's own schedule).
    pub failures: u32,
    /// Why, for the operator.
    pub reason: String,
}
