//! [`RunEvent`]: what a runner tells its observer as it goes.

use std::time::SystemTime;

use crate::store::{MessageId, Outcome};

/// Something a [`Runner`](crate::Runner) did or learnt, handed to its
/// observer as it happens (progress lines, logs, metrics).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RunEvent {
    /// A session with the destination is being opened for `messages` messages.
    Connecting {
        /// The destination's key.
        destination: String,
        /// How many messages the session will carry.
        messages: usize,
    },
    /// A recipient's outcome was recorded.
    Recorded {
        /// The message.
        message: MessageId,
        /// The recipient's address.
        recipient: String,
        /// The destination's key (`relay:HOST:PORT`, `direct:DOMAIN`).
        destination: String,
        /// When the message was enqueued (what a delivery's latency is
        /// counted from).
        enqueued: SystemTime,
        /// What was recorded.
        outcome: Outcome,
        /// The recipient was taken over from an expired lease: the message
        /// may have reached it before (at-least-once).
        taken_over: bool,
        /// Direct delivery: the mode of the MTA-STS policy the recipient's
        /// domain was delivered under, if it has one.
        mta_sts: Option<smtp_core::delivery::mta_sts::Mode>,
    },
    /// The reply to the end of data was lost: the server may have the
    /// message; it is deferred and a retry may deliver it twice.
    OutcomeUnknown {
        /// The message.
        message: MessageId,
        /// The recipient's address.
        recipient: String,
    },
    /// This message's data began to go out to a server: from now on,
    /// until its outcome is recorded, the server may have it.
    DataSent {
        /// The message.
        message: MessageId,
    },
    /// A stop's grace ran out while this message's data had gone out (or
    /// was going out) and its final reply had not come: the session was
    /// abandoned and these recipients are released with the rest. The
    /// server may have the message, so the next run may deliver it to
    /// them twice. The other recipients a stop releases were not sent:
    /// they are delivered once.
    InFlight {
        /// The message.
        message: MessageId,
        /// The recipients of its transaction.
        recipients: Vec<String>,
    },
    /// Recipients were given back unattempted (a session that ended
    /// mid-way after progress, a stop, a destination held), due again at
    /// `not_before` (or at once); after a stop, those whose message was in
    /// flight were named by [`RunEvent::InFlight`] first.
    Released {
        /// The message.
        message: MessageId,
        /// How many recipients.
        recipients: u64,
        /// When they are due again, if later than at once.
        not_before: Option<SystemTime>,
    },
    /// The destination is held: a configuration or policy fault (such as
    /// authentication refused, or the TLS policy not met) that the same
    /// settings would meet again. Its recipients stay queued, not counted
    /// as attempts. Reported once per run.
    Held {
        /// The destination's key.
        destination: String,
        /// Why, in words.
        reason: String,
        /// Until when it is held.
        until: SystemTime,
    },
    /// The destination could not be reached (or the session failed before
    /// any message): it is backed off until `until`.
    BackedOff {
        /// The destination's key.
        destination: String,
        /// Why, in words.
        reason: String,
        /// Until when.
        until: SystemTime,
    },
    /// A delivery status notification (RFC 3464) to a message's sender
    /// was enqueued: it is delivered as any queued message.
    Notified {
        /// The message it reports on.
        message: MessageId,
        /// The notification's message id.
        notification: MessageId,
        /// Its recipient: the message's sender.
        to: String,
        /// The recipients it reports failed or expired.
        recipients: Vec<String>,
    },
    /// The relay account's sending budget (its rate limits) is spent
    /// for now: `messages` messages wait for it, the first until `until`:
    /// on the open session when that is near, else released (not counted
    /// as an attempt) and due again at their expected turn.
    WaitingForBudget {
        /// The budget's key (the relay account).
        key: String,
        /// When the first of them may go.
        until: SystemTime,
        /// How many wait.
        messages: usize,
        /// Released to come due later (else waiting on the session).
        released: bool,
    },
    /// A destination's servers said "slow down": its limits were lowered
    /// (direct delivery; see [`crate::shaping`]).
    Throttled {
        /// The destination's key.
        destination: String,
        /// Sessions at once, now.
        connections: u32,
        /// Messages per minute, now (if limited).
        rate_per_min: Option<u32>,
        /// The reply.
        reason: String,
    },
}
