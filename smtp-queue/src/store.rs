//! The [`Store`] trait: what a runner (and the `smtp queue` commands) ask
//! of a queue, whichever database holds it, and the types it speaks in.
//!
//! Times are passed in (`now`), never read inside, so tests drive a
//! virtual clock; stores keep them as UNIX epoch milliseconds.

use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use smtp_core::delivery::{BodySource, TlsInfo};

use crate::error::{Error, Result};
use crate::rate::{Budget, Decision, Limit};
use crate::shaping::Throttle;
use crate::state::{RecipientState, Transition};

mod id;
mod info;
pub use self::id::{MessageId, RecipientId};
pub use self::info::{
    Backoff, ListFilter, MessageInfo, Migration, RecipientInfo, RetryTarget, RouteWaiting, Stats,
    WorkerActivity,
};

/// Where a new message's body comes from. Either way it is streamed into
/// the spool, never held whole.
pub enum Body {
    /// Read from a source to its end.
    Source(Box<dyn BodySource>),
    /// Copied from a file.
    File(PathBuf),
}

impl fmt::Debug for Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Source(_) => f.write_str("Body::Source(..)"),
            Self::File(path) => f.debug_tuple("Body::File").field(path).finish(),
        }
    }
}

/// How the body is to be sent (RFC 6152, RFC 3030).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BodyKind {
    /// 7-bit text.
    #[default]
    SevenBit,
    /// 8-bit text: needs 8BITMIME.
    EightBit,
    /// Binary: needs BINARYMIME and CHUNKING.
    Binary,
}

/// A message's sending options, kept beside its envelope (as JSON, so
/// fields can be added without a schema change).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct MessageOptions {
    /// The body's kind.
    pub body: BodyKind,
    /// The envelope needs SMTPUTF8.
    pub smtputf8: bool,
    /// Ask for REQUIRETLS (RFC 8689).
    pub require_tls: bool,
    /// DSN `ENVID` (RFC 3461).
    pub dsn_envid: Option<String>,
    /// DSN `RET=FULL` (true) or `RET=HDRS` (false). Also what this
    /// queue's own notification returns (see `notify_sender`).
    pub dsn_ret_full: Option<bool>,
    /// Send the envelope sender one delivery status notification (RFC
    /// 3464) once every recipient is final and one or more failed or
    /// expired; none for a null sender. See [`crate::dsn`].
    pub notify_sender: bool,
    /// How the message is to be delivered, recorded when it is enqueued:
    /// `relay:HOST:PORT[:USER] tls=POLICY[ implicit]` for standard
    /// delivery ([`relay_route`](crate::relay_route)), `direct` for
    /// direct delivery ([`DIRECT_ROUTE`](crate::DIRECT_ROUTE)). A
    /// [`Runner`](crate::Runner) claims only the messages of its own
    /// route, and those without one (enqueued before routes were kept, or
    /// by a program that sets none), which any runner delivers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
}

/// One message to enqueue.
#[derive(Debug)]
pub struct NewMessage {
    /// The reverse-path (`""` or `"<>"` for the null path).
    pub from: String,
    /// The recipients, at least one.
    pub to: Vec<String>,
    /// The body.
    pub body: Body,
    /// Sending options.
    pub options: MessageOptions,
}

/// A worker's hold on a message's claimed recipients.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The message.
    pub message: MessageId,
    /// Store-wide increasing number of this lease. A recipient taken over
    /// after the lease expired gets a newer one, and results recorded under
    /// the older one are refused.
    pub generation: i64,
    /// Who holds it.
    pub worker: String,
    /// When it expires, unless renewed; then another worker may take over.
    pub until: SystemTime,
}

/// A worker's hold on one of a destination's connection slots
/// ([`Store::take_slot`]): while it is held and unexpired, it counts
/// against the destination's limit for the whole fleet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotLease {
    /// The destination's key (`mx:…`, `relay:…`).
    pub destination: String,
    /// Store-wide increasing number of this slot, never given twice: a
    /// slot that expired and was taken again is another number, so the
    /// old holder's renewal or release does not touch the new one's.
    pub generation: i64,
    /// Who holds it.
    pub worker: String,
    /// When it expires, unless renewed; then it no longer counts and is
    /// removed by the next take.
    pub until: SystemTime,
}

/// A claimed recipient.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimedRecipient {
    /// Its id, to record its outcome.
    pub id: RecipientId,
    /// Its address.
    pub address: String,
    /// Attempts made before this one.
    pub attempts: u32,
    /// The state it was claimed from (`delivering` when taken over from an
    /// expired lease: the message may have reached it already).
    pub claimed_from: RecipientState,
}

/// A message whose due recipients a worker now holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claimed {
    /// The lease on `recipients`.
    pub lease: Lease,
    /// The reverse-path.
    pub from: String,
    /// When it was enqueued (its lifetime counts from here).
    pub created: SystemTime,
    /// The body's size in octets.
    pub body_size: u64,
    /// Sending options.
    pub options: MessageOptions,
    /// The recipients held, in the order enqueued.
    pub recipients: Vec<ClaimedRecipient>,
}

/// The TLS facts of an attempt, as kept and logged.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsFacts {
    /// Protocol version, e.g. `TLSv1.3`.
    pub version: String,
    /// Cipher suite.
    pub cipher_suite: String,
    /// Whether the certificate was verified.
    pub verified: bool,
}

impl From<&TlsInfo> for TlsFacts {
    fn from(info: &TlsInfo) -> Self {
        Self {
            version: info.version.clone(),
            cipher_suite: info.cipher_suite.clone(),
            verified: info.verified,
        }
    }
}

/// What an attempt learnt: the reply (or the local failure) and where.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// The reply code, when a server answered.
    pub code: Option<u16>,
    /// The enhanced status code (RFC 3463), e.g. `4.4.1`.
    pub enhanced: Option<String>,
    /// The reply's text, or what failed locally.
    pub text: String,
    /// The host (and address) tried.
    pub host: Option<String>,
    /// The TLS facts, when the session was encrypted.
    pub tls: Option<TlsFacts>,
}

/// A recipient's result under a lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx to the end of data.
    Delivered(Attempt),
    /// A permanent refusal.
    Failed(Attempt),
    /// A temporary failure; try again at `next`.
    Deferred {
        /// The attempt.
        attempt: Attempt,
        /// When to try again (see [`Schedule::next`](crate::Schedule::next)).
        next: SystemTime,
    },
    /// Given up: the lifetime ran out. `attempt` is the last one, if one
    /// was made under this lease.
    Expired(Option<Attempt>),
}

impl Outcome {
    /// The state transition this outcome makes.
    pub fn transition(&self) -> Transition {
        match self {
            Self::Delivered(_) => Transition::Deliver,
            Self::Failed(_) => Transition::Fail,
            Self::Deferred { .. } => Transition::Defer,
            Self::Expired(_) => Transition::Expire,
        }
    }

    /// The attempt made, if one was.
    pub fn attempt(&self) -> Option<&Attempt> {
        match self {
            Self::Delivered(a) | Self::Failed(a) | Self::Deferred { attempt: a, .. } => Some(a),
            Self::Expired(a) => a.as_ref(),
        }
    }

    /// The attempt's facts, to change.
    pub fn attempt_mut(&mut self) -> Option<&mut Attempt> {
        match self {
            Self::Delivered(a) | Self::Failed(a) | Self::Deferred { attempt: a, .. } => Some(a),
            Self::Expired(a) => a.as_mut(),
        }
    }
}

/// A durable delivery queue: messages, their recipients' states, leases,
/// per-destination back-off.
///
/// # The contract
///
/// - [`enqueue`](Self::enqueue) returns only once bodies and envelopes are
///   on disk and committed; a failure leaves nothing of the batch.
/// - [`claim_due`](Self::claim_due) hands each due recipient to one live
///   lease at a time. A recipient whose lease expired is due again (it may
///   have been delivered: at-least-once).
/// - [`record`](Self::record) stores outcomes under a lease, all or
///   nothing, and refuses them with [`Error::StaleLease`] once the lease
///   lost its recipients (taken over after expiry, retried, deleted). A
///   lease that expired but was not taken over still records: the result
///   is real.
/// - Every state change is appended to the outcome log after it commits.
/// - A message that asked for a delivery status notification
///   ([`MessageOptions::notify_sender`]) is marked as owing one in the
///   transaction that makes its last recipient final, when one failed or
///   expired; [`enqueue_notification`](Self::enqueue_notification) then
///   enqueues exactly one for it.
/// - [`take_slot`](Self::take_slot) grants a destination's connection
///   slot only while fewer than the limit asked with are held unexpired,
///   atomically across every handle; expired slots are free, and a stale
///   holder's renewal or release never touches a slot taken after it.
/// - Times are the caller's `now`; the store reads no clock.
#[async_trait]
pub trait Store: Send + Sync {
    /// Stores a batch of messages in one transaction; returns their ids in
    /// order. Bodies are written and fsynced before the commit.
    async fn enqueue(&self, batch: Vec<NewMessage>, now: SystemTime) -> Result<Vec<MessageId>>;

    /// Claims up to `limit` messages' due recipients (waiting ones whose
    /// time has come, and those of expired leases) for `worker`, each
    /// message under its own lease lasting `lease`, whatever their route:
    /// [`claim_due_for`](Self::claim_due_for) with `None`.
    async fn claim_due(
        &self,
        now: SystemTime,
        limit: u32,
        worker: &str,
        lease: Duration,
    ) -> Result<Vec<Claimed>> {
        self.claim_due_for(None, now, limit, worker, lease).await
    }

    /// [`claim_due`](Self::claim_due) of the messages of one route only:
    /// with `Some(route)`, messages whose [`MessageOptions::route`] is
    /// `route` or none (enqueued without one); with `None`, every message.
    /// The others are not touched: they wait for a runner of their route.
    /// [`claim_due_spread`](Self::claim_due_spread) without a cap.
    async fn claim_due_for(
        &self,
        route: Option<&str>,
        now: SystemTime,
        limit: u32,
        worker: &str,
        lease: Duration,
    ) -> Result<Vec<Claimed>> {
        self.claim_due_spread(route, now, limit, None, worker, lease)
            .await
    }

    /// [`claim_due_for`](Self::claim_due_for), with at most `per_domain`
    /// messages of any one recipient domain (a message counts for the
    /// domain of its first due recipient, in the order of the claim). A
    /// claim of direct delivery then spreads over the domains due: one big
    /// domain's run, which its destination takes a few sessions at a time,
    /// does not fill the claim while every other domain waits for the
    /// next one (and, in a fleet, while the other workers' claims hold more
    /// of the same domain, waiting for the same slots).
    async fn claim_due_spread(
        &self,
        route: Option<&str>,
        now: SystemTime,
        limit: u32,
        per_domain: Option<u32>,
        worker: &str,
        lease: Duration,
    ) -> Result<Vec<Claimed>>;

    /// Extends a lease to `until`; refused if it is stale.
    async fn renew(&self, lease: &Lease, until: SystemTime, now: SystemTime) -> Result<Lease>;

    /// Records outcomes of recipients held by `lease`, all in one
    /// transaction; refused whole if any is not held by it.
    async fn record(
        &self,
        lease: &Lease,
        outcomes: Vec<(RecipientId, Outcome)>,
        now: SystemTime,
    ) -> Result<()>;

    /// Gives back the recipients `lease` still holds, unattempted: due
    /// again at `not_before` (or when they were due). Returns how many.
    async fn release(
        &self,
        lease: &Lease,
        not_before: Option<SystemTime>,
        now: SystemTime,
    ) -> Result<u64>;

    /// The message's body, streamed from the start; its size and digest
    /// are checked (a mismatch is an error at the end, before the last
    /// byte is handed out as the end).
    async fn open_body(&self, id: &MessageId) -> Result<Box<dyn BodySource>>;

    /// The bodies of `ids`, in that order: each a body or that message's
    /// error. The default opens each; a store reads them in one go.
    async fn open_bodies(&self, ids: &[MessageId]) -> Result<Vec<Result<Box<dyn BodySource>>>> {
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            out.push(self.open_body(id).await);
        }
        Ok(out)
    }

    /// Messages, oldest first.
    async fn list(&self, filter: &ListFilter) -> Result<Vec<MessageInfo>>;

    /// One message with every recipient.
    async fn show(&self, id: &MessageId) -> Result<MessageInfo>;

    /// The messages of `ids` that exist (a deleted one is left out), in
    /// that order. The default asks [`show`](Self::show) for each; a store
    /// does it in a few statements.
    async fn show_many(&self, ids: &[MessageId]) -> Result<Vec<MessageInfo>> {
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            match self.show(id).await {
                Ok(info) => out.push(info),
                Err(Error::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Makes waiting recipients due now; returns how many.
    async fn retry(&self, target: RetryTarget, now: SystemTime) -> Result<u64>;

    /// Removes a message, its recipients (whatever their state) and its body.
    async fn delete(&self, id: &MessageId, now: SystemTime) -> Result<()>;

    /// Removes messages all of whose recipients reached a final state
    /// before `before`, except those still owing a notification; returns
    /// their ids.
    async fn purge_finished(&self, before: SystemTime) -> Result<Vec<MessageId>>;

    /// Counts.
    async fn stats(&self) -> Result<Stats>;

    /// When the next recipient falls due (or a lease expires), if any
    /// waits, whatever its message's route: [`next_due_for`](Self::next_due_for)
    /// with `None`.
    async fn next_due(&self) -> Result<Option<SystemTime>> {
        self.next_due_for(None).await
    }

    /// [`next_due`](Self::next_due) among the messages
    /// [`claim_due_for`](Self::claim_due_for) would claim for `route`
    /// (its own and route-less ones; every message for `None`).
    async fn next_due_for(&self, route: Option<&str>) -> Result<Option<SystemTime>>;

    /// Messages with a recipient waiting (queued or deferred), counted per
    /// route, by route (route-less ones first); `due` counts those with a
    /// recipient due at `now`.
    async fn waiting_by_route(&self, now: SystemTime) -> Result<Vec<RouteWaiting>>;

    /// Backs a destination off until `not_before`, counting one more
    /// failure; returns the record.
    async fn set_backoff(
        &self,
        destination: &str,
        not_before: SystemTime,
        reason: &str,
        now: SystemTime,
    ) -> Result<Backoff>;

    /// A destination's back-off, if one is recorded (it may be past).
    async fn backoff(&self, destination: &str) -> Result<Option<Backoff>>;

    /// The back-offs recorded for any of `destinations` (current or past).
    /// The default asks [`backoff`](Self::backoff) for each; a store does
    /// it in one statement.
    async fn backoffs(&self, destinations: &[String]) -> Result<Vec<Backoff>> {
        let mut out = Vec::new();
        for d in destinations {
            out.extend(self.backoff(d).await?);
        }
        Ok(out)
    }

    /// Forgets a destination's back-off (after a success).
    async fn clear_backoff(&self, destination: &str) -> Result<()>;

    /// Keeps a destination's adaptive throttle (replacing its last).
    async fn set_throttle(&self, throttle: &Throttle) -> Result<()>;

    /// The throttles kept for `only` these destinations, or for all,
    /// by destination.
    async fn throttles(&self, only: Option<&[String]>) -> Result<Vec<Throttle>>;

    /// Lifts a destination's throttle (its limits are back to its shape).
    async fn clear_throttle(&self, destination: &str) -> Result<()>;

    /// The MTA-STS policy cached for `domain` (RFC 8461 §5.1), expired or
    /// not.
    async fn sts_policy(
        &self,
        domain: &str,
    ) -> Result<Option<smtp_core::delivery::mta_sts::InForce>>;

    /// Caches a policy (replacing the domain's last).
    async fn put_sts_policy(&self, policy: &smtp_core::delivery::mta_sts::InForce) -> Result<()>;

    /// Counts TLS-RPT session results (RFC 8460) on the day of `now`:
    /// results alike in everything but `count` (policy, MX host, both
    /// addresses, result) are summed.
    async fn add_tls_results(
        &self,
        results: &[crate::tls_report::TlsResult],
        now: SystemTime,
    ) -> Result<()>;

    /// The counts of the days from `since`'s to `until`'s (exclusive), of
    /// one policy domain or all, each with its day's start.
    async fn tls_results(
        &self,
        since: SystemTime,
        until: SystemTime,
        domain: Option<&str>,
    ) -> Result<Vec<(SystemTime, crate::tls_report::TlsResult)>>;

    /// Messages owed a delivery status notification and not yet given
    /// one, oldest first, at most `limit`: each asked for it, has a
    /// non-null sender, and every recipient is final, one or more failed
    /// or expired.
    async fn owed_notifications(&self, limit: u32) -> Result<Vec<MessageInfo>>;

    /// Enqueues `notification` (from the null reverse-path) as message
    /// `of`'s delivery status notification, exactly once: its body is
    /// written and synced first, then one transaction enqueues it and
    /// marks `of` as notified. `Ok(None)` when `of` owes none (any more:
    /// another worker enqueued it first); nothing is left behind then.
    async fn enqueue_notification(
        &self,
        of: &MessageId,
        notification: NewMessage,
        now: SystemTime,
    ) -> Result<Option<MessageId>>;

    /// Takes `cost` units from budget `key` under every one of `limits`
    /// (the shortest paces, GCRA; the longer ones cap, counted from the
    /// key's log of takes: [`crate::rate::take`]), or from none,
    /// atomically: every
    /// handle on the queue (every runner, in any process) shares the
    /// budget, and a restart does not reset it. Nothing is taken when the
    /// answer is to wait.
    async fn take_budget(
        &self,
        key: &str,
        limits: &[Limit],
        cost: u32,
        now: SystemTime,
    ) -> Result<Decision>;

    /// Budget `key` as kept (its limits, and its takes within the longest
    /// period of them), if it was ever taken from or given limits.
    async fn budget(&self, key: &str) -> Result<Option<Budget>>;

    /// Every budget kept, by key.
    async fn budgets(&self) -> Result<Vec<Budget>>;

    /// Remembers `limits` as those last set for `key` (what a runner given
    /// none applies); an empty list forgets them. The budgets' TATs and
    /// takes stay.
    async fn remember_limits(&self, key: &str, limits: &[Limit], now: SystemTime) -> Result<()>;

    /// Takes one of `destination`'s connection slots for `worker` until
    /// `until`, if fewer than `limit` unexpired slots are held for it (by
    /// any worker, through any handle on the queue); `None` when they are
    /// all held. Atomic: takers at once never hold more than `limit`
    /// between them. Slots expired at `now` do not count and are removed,
    /// so a worker that died frees its slots once their leases run out.
    async fn take_slot(
        &self,
        destination: &str,
        limit: u32,
        worker: &str,
        until: SystemTime,
        now: SystemTime,
    ) -> Result<Option<SlotLease>>;

    /// Extends `slot` to `until`; `None` when it is no longer held (it
    /// expired and a take removed it, or it was released): nothing is
    /// changed then, and a slot taken since by another is not touched.
    /// A slot that expired but was not removed yet is renewed: no take
    /// came since, so it was never counted free.
    async fn renew_slot(&self, slot: &SlotLease, until: SystemTime) -> Result<Option<SlotLease>>;

    /// Gives `slot` back; `false` when it was no longer held (nothing is
    /// changed then).
    async fn release_slot(&self, slot: &SlotLease) -> Result<bool>;

    /// The slots held and unexpired at `now`, of one destination or all,
    /// by destination and generation.
    async fn slots(&self, destination: Option<&str>, now: SystemTime) -> Result<Vec<SlotLease>>;

    /// Enqueues `batch` under `key` (a digest of what the messages say,
    /// e.g. a mail merge's template and options, not its list) so that no
    /// recipient is enqueued twice under it: each recipient enqueued is
    /// recorded under the key in the same transaction as the batch, so
    /// either both are committed or neither is.
    ///
    /// A recipient recorded under the key before (by an earlier call, or
    /// earlier in this batch) is left out of its message; a message none
    /// of whose recipients is left is not enqueued, and its body is never
    /// read. Recipients are compared with the local part as written and
    /// the domain case-insensitively (`Ann@Example.ORG` is
    /// `Ann@example.org`, not `ann@example.org`). So the same batch again
    /// enqueues nothing, and a longer one only the messages to recipients
    /// not seen before, whatever the order.
    ///
    /// The default refuses: a store that cannot record the recipients in
    /// the batch's own transaction must not pretend to be idempotent.
    async fn enqueue_once(
        &self,
        key: &str,
        batch: Vec<NewMessage>,
        now: SystemTime,
    ) -> Result<Enqueued> {
        let _ = (key, batch, now);
        Err(Error::Misuse(
            "this store cannot enqueue a batch once under a key".into(),
        ))
    }

    /// The workers seen on the queue, by worker id: each one's last claim
    /// or renewal (its heartbeat) and what it holds under live leases at
    /// `now`. The default refuses: a store that keeps no trace of its
    /// workers has nothing true to say.
    async fn workers(&self, now: SystemTime) -> Result<Vec<WorkerActivity>> {
        let _ = now;
        Err(Error::Misuse(
            "this store keeps no record of its workers".into(),
        ))
    }
}

/// What [`Store::enqueue_once`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Enqueued {
    /// One entry per message of the batch, in order: its id, or `None`
    /// when it was not enqueued (each of its recipients had been enqueued
    /// under the key already).
    pub ids: Vec<Option<MessageId>>,
    /// Recipients left out because they had been enqueued under the key
    /// already (before this call, or earlier in this batch).
    pub skipped: u64,
    /// When the key was first used, if it was before this call; `None`
    /// when this call recorded it.
    pub first: Option<SystemTime>,
}

impl Enqueued {
    /// The ids of the messages enqueued by this call, in order.
    pub fn new_ids(&self) -> impl Iterator<Item = &MessageId> {
        self.ids.iter().flatten()
    }
}

/// A stored reverse-path's address, without angle brackets: `None` for
/// the null reverse-path (`""` or `"<>"`).
pub(crate) fn sender_address(from: &str) -> Option<&str> {
    let from = from.trim();
    let bare = from
        .strip_prefix('<')
        .and_then(|a| a.strip_suffix('>'))
        .unwrap_or(from);
    (!bare.is_empty()).then_some(bare)
}

/// `t` as UNIX epoch milliseconds.
pub(crate) fn millis(t: SystemTime) -> Result<i64> {
    let since = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_err(|_| Error::Misuse("a time before 1970".into()))?;
    i64::try_from(since.as_millis())
        .map_err(|_| Error::Misuse("a time too far in the future".into()))
}

/// UNIX epoch milliseconds as a time (negative ones as the epoch).
pub(crate) fn from_millis(ms: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

#[cfg(test)]
mod tests;
