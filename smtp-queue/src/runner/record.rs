//! Recording outcomes under the lease, shared by relay and direct
//! delivery: retry or expiry on the schedule, release, renewal, and
//! backing off or holding the destination.

use std::time::SystemTime;

use smtp_core::{Fault, MessageOutcome};
use smtp_tls::Server;

use super::{Runner, address, lock};
use crate::RecipientState;
use crate::error::{Error, Result};
use crate::event::RunEvent;
use crate::schedule::{Next, random_unit};
use crate::store::{Attempt, Claimed, Lease, Outcome, RecipientId};
use crate::verdict::{Verdict, verdict};

/// Why recipients of a session were not recorded: the first reason of
/// each kind.
#[derive(Debug, Default)]
pub(super) struct Unrecorded {
    /// A configuration or policy fault: hold the destination.
    pub(super) hold: Option<String>,
    /// The session ended before some recipient's data.
    pub(super) ended: Option<String>,
}

impl Runner {
    /// The outcome to record for a recipient's verdict, or `None` when it
    /// is not recorded: a session that ended before its data after
    /// delivering something (`progress`) releases it for a new connection
    /// at once; a configuration or policy fault holds the destination.
    /// Either reason is kept in `why`.
    pub(super) fn outcome_of(
        &self,
        claimed: &Claimed,
        id: RecipientId,
        verdict: Verdict,
        progress: bool,
        now: SystemTime,
        why: &mut Unrecorded,
    ) -> Option<Outcome> {
        Some(match verdict {
            Verdict::Delivered(a) => Outcome::Delivered(a),
            Verdict::Failed(a) => Outcome::Failed(a),
            Verdict::Retry { attempt, unknown } => {
                if unknown {
                    let recipient = address(claimed, id);
                    tracing::warn!(message_id = %claimed.lease.message, %recipient,
                        "the reply to the end of data was lost; deferred, a retry may deliver it twice");
                    self.emit(&RunEvent::OutcomeUnknown {
                        message: claimed.lease.message.clone(),
                        recipient,
                    });
                }
                self.retry(claimed, id, attempt, now)
            }
            Verdict::SessionEnded(a) if progress => {
                why.ended.get_or_insert(a.text);
                return None;
            }
            Verdict::SessionEnded(a) => {
                why.ended.get_or_insert(a.text.clone());
                self.retry(claimed, id, a, now)
            }
            Verdict::Hold(a) => {
                why.hold.get_or_insert(a.text);
                return None;
            }
        })
    }

    /// Deferred on the schedule, or expired past the lifetime.
    pub(super) fn retry(
        &self,
        claimed: &Claimed,
        id: RecipientId,
        attempt: Attempt,
        now: SystemTime,
    ) -> Outcome {
        let attempts = claimed
            .recipients
            .iter()
            .find(|r| r.id == id)
            .map_or(0, |r| r.attempts);
        match self.config.schedule.next(
            attempts + 1,
            claimed.created,
            now,
            message_unit(&claimed.lease.message, attempts + 1),
        ) {
            Next::RetryAt(next) => Outcome::Deferred { attempt, next },
            Next::Expire => Outcome::Expired(Some(attempt)),
        }
    }

    /// Records `outcome` for `claimed` now when every recipient of it was
    /// delivered; true when it did (the rest waits for the session's end).
    pub(super) async fn record_if_delivered(
        &self,
        claimed: &Claimed,
        lease: &Lease,
        outcome: &MessageOutcome,
        host: &str,
        tls: Option<&smtp_core::delivery::TlsInfo>,
    ) -> Result<bool> {
        let mut outcomes = Vec::new();
        for (id, v) in by_recipient(claimed, outcome, host, tls) {
            match v {
                Verdict::Delivered(a) => outcomes.push((id, Outcome::Delivered(a))),
                _ => return Ok(false),
            }
        }
        if outcomes.is_empty() {
            return Ok(false);
        }
        self.record(claimed, lease, outcomes).await?;
        Ok(true)
    }

    pub(super) async fn record(
        &self,
        claimed: &Claimed,
        lease: &Lease,
        mut outcomes: Vec<(RecipientId, Outcome)>,
    ) -> Result<()> {
        for (_, outcome) in &mut outcomes {
            if let Some(a) = outcome.attempt_mut() {
                a.text = self.redact(&a.text);
            }
        }
        match self
            .store
            .record(lease, outcomes.clone(), SystemTime::now())
            .await
        {
            Ok(()) => {}
            // Another worker took over: its result stands.
            Err(Error::StaleLease { .. }) => {
                tracing::warn!(message_id = %lease.message, "lease taken over; outcome not recorded");
                return Ok(());
            }
            Err(e) => return Err(e),
        }
        if let Some((_, left)) = lock(&self.unsettled).get_mut(&lease.message) {
            *left = left.saturating_sub(outcomes.len());
        }
        let now = SystemTime::now();
        for (id, outcome) in outcomes {
            {
                let mut summary = lock(&self.summary);
                match outcome {
                    Outcome::Delivered(_) => summary.delivered += 1,
                    Outcome::Failed(_) => summary.failed += 1,
                    Outcome::Deferred { .. } => summary.deferred += 1,
                    Outcome::Expired(_) => summary.expired += 1,
                }
            }
            let claimed_recipient = claimed.recipients.iter().find(|r| r.id == id);
            let taken_over =
                claimed_recipient.is_some_and(|r| r.claimed_from == RecipientState::Delivering);
            let attempts = claimed_recipient.map_or(0, |r| r.attempts)
                + u32::from(outcome.attempt().is_some());
            let recipient = address(claimed, id);
            let destination = self.destination_of(&recipient);
            let mta_sts = self.sts_mode_of(&recipient);
            log_outcome(
                &claimed.lease.message,
                &recipient,
                &destination,
                mta_sts,
                &outcome,
                attempts,
                taken_over,
                now,
            );
            self.emit(&RunEvent::Recorded {
                message: claimed.lease.message.clone(),
                recipient,
                destination,
                enqueued: claimed.created,
                outcome,
                taken_over,
                mta_sts,
            });
        }
        Ok(())
    }

    pub(super) async fn release(
        &self,
        claimed: &Claimed,
        lease: &Lease,
        not_before: Option<SystemTime>,
    ) -> Result<()> {
        // Every recipient recorded: nothing is left to give back.
        {
            let mut unsettled = lock(&self.unsettled);
            if unsettled.get(&lease.message).map(|(_, left)| *left) == Some(0) {
                unsettled.remove(&lease.message);
                return Ok(());
            }
            unsettled.remove(&lease.message);
        }
        let n = match self
            .store
            .release(lease, not_before, SystemTime::now())
            .await
        {
            Ok(n) => n,
            Err(Error::StaleLease { .. }) => 0,
            Err(e) => return Err(e),
        };
        if n > 0 {
            lock(&self.summary).released += n;
            self.emit(&RunEvent::Released {
                message: claimed.lease.message.clone(),
                recipients: n,
                not_before,
            });
        }
        Ok(())
    }

    /// Tells that `recipients` of `claimed` were in flight when a stop
    /// abandoned their session: its data had gone out (or was going out)
    /// and no final reply had come, so the server may have it. They are
    /// released with the rest.
    pub(super) fn in_flight(&self, claimed: &Claimed, recipients: Vec<String>) {
        if recipients.is_empty() {
            return;
        }
        tracing::warn!(message_id = %claimed.lease.message, recipients = recipients.len(),
            "stopped after the message's data went out, before its reply; released: the next run may deliver it twice");
        self.emit(&RunEvent::InFlight {
            message: claimed.lease.message.clone(),
            recipients,
        });
    }

    pub(super) async fn release_all(
        &self,
        batch: &[Claimed],
        not_before: Option<SystemTime>,
    ) -> Result<()> {
        for claimed in batch {
            self.release(claimed, &claimed.lease, not_before).await?;
        }
        Ok(())
    }

    /// Renews the leases of the messages not yet recorded (`done`).
    /// Returns true when one was taken over by another worker (this one
    /// stalled past it: a pause, a partition): the session must stop, or
    /// it would send that worker's messages a second time.
    #[must_use]
    pub(super) async fn renew(&self, leases: &mut [Lease], done: &[bool]) -> bool {
        let now = SystemTime::now();
        let mut lost = false;
        for (lease, _) in leases.iter_mut().zip(done).filter(|(_, done)| !**done) {
            match self.store.renew(lease, now + self.config.lease, now).await {
                Ok(l) => *lease = l,
                Err(e @ Error::StaleLease { .. }) => {
                    lost = true;
                    tracing::warn!(message_id = %lease.message, error = %e,
                        "lease lost to another worker: this session stops, the messages are theirs");
                }
                Err(e) => {
                    tracing::warn!(message_id = %lease.message, error = %e, "lease not renewed");
                }
            }
        }
        lost
    }

    /// The session could not be opened.
    pub(super) async fn open_failed(
        &self,
        relay: &Server,
        batch: &[Claimed],
        e: &smtp_tls::Error,
    ) -> Result<()> {
        let now = SystemTime::now();
        let reason = e.to_string();
        if matches!(e.fault(), Fault::Configuration | Fault::Policy) {
            let until = self.hold(&reason, now).await?;
            return self.release_all(batch, Some(until)).await;
        }
        self.back_off(&reason, now).await?;
        let attempt = Attempt {
            text: reason,
            host: Some(format!("{}:{}", relay.host, relay.port)),
            ..Attempt::default()
        };
        for claimed in batch {
            let outcomes = claimed
                .recipients
                .iter()
                .map(|r| (r.id, self.retry(claimed, r.id, attempt.clone(), now)))
                .collect();
            self.record(claimed, &claimed.lease, outcomes).await?;
        }
        Ok(())
    }

    /// Backs the destination off on its schedule; returns until when.
    pub(super) async fn back_off(&self, reason: &str, now: SystemTime) -> Result<SystemTime> {
        self.back_off_at(&self.destination, reason, now).await
    }

    /// Backs `destination` off on its schedule; returns until when.
    pub(super) async fn back_off_at(
        &self,
        destination: &str,
        reason: &str,
        now: SystemTime,
    ) -> Result<SystemTime> {
        let reason = &self.redact(reason);
        let failures = self
            .store
            .backoff(destination)
            .await?
            .map_or(0, |b| b.failures);
        let until = now + self.config.backoff.delay(failures + 1, random_unit());
        self.store
            .set_backoff(destination, until, reason, now)
            .await?;
        self.emit(&RunEvent::BackedOff {
            destination: destination.to_owned(),
            reason: reason.to_owned(),
            until,
        });
        Ok(until)
    }

    /// Holds the destination (a configuration or policy fault), reported
    /// once per runner; returns until when.
    pub(super) async fn hold(&self, reason: &str, now: SystemTime) -> Result<SystemTime> {
        self.hold_at(&self.destination, reason, now).await
    }

    /// Holds `destination`; returns until when.
    pub(super) async fn hold_at(
        &self,
        destination: &str,
        reason: &str,
        now: SystemTime,
    ) -> Result<SystemTime> {
        let reason = &self.redact(reason);
        let until = match self.backed_off_at(destination, now).await? {
            Some(until) => until,
            None => {
                let failures = self
                    .store
                    .backoff(destination)
                    .await?
                    .map_or(0, |b| b.failures);
                let until = now + self.config.backoff.delay(failures + 1, random_unit());
                self.store
                    .set_backoff(destination, until, reason, now)
                    .await?;
                until
            }
        };
        let first = lock(&self.held_reported).insert(destination.to_owned());
        if first {
            tracing::error!(%destination, %reason,
                "destination held: a configuration or policy fault; its recipients stay queued");
            lock(&self.summary)
                .held
                .push((destination.to_owned(), reason.to_owned()));
            self.emit(&RunEvent::Held {
                destination: destination.to_owned(),
                reason: reason.to_owned(),
                until,
            });
        }
        Ok(until)
    }
}

/// The one line logged for each recorded outcome: an INFO event, target
/// `smtp_queue::delivery`, whose fields say what happened to whom, where,
/// and what the server said (see the crate's "Tracing" section).
#[allow(clippy::too_many_arguments)]
fn log_outcome(
    message: &crate::store::MessageId,
    recipient: &str,
    destination: &str,
    mta_sts: Option<smtp_core::delivery::mta_sts::Mode>,
    outcome: &Outcome,
    attempts: u32,
    taken_over: bool,
    now: SystemTime,
) {
    let word = match outcome {
        Outcome::Delivered(_) => "delivered",
        Outcome::Failed(_) => "failed",
        Outcome::Deferred { .. } => "deferred",
        Outcome::Expired(_) => "expired",
    };
    let next = match outcome {
        Outcome::Deferred { next, .. } => Some(*next),
        _ => None,
    };
    let next_attempt_ms = next.and_then(|t| crate::store::millis(t).ok());
    let retry_in_s = next.map(|t| t.duration_since(now).unwrap_or_default().as_secs());
    let a = outcome.attempt();
    tracing::info!(
        target: "smtp_queue::delivery",
        message_id = %message,
        recipient,
        destination,
        mta_sts = mta_sts.map(|m| m.to_string()),
        outcome = word,
        code = a.and_then(|a| a.code),
        enhanced_code = a.and_then(|a| a.enhanced.as_deref()),
        reply = a.map(|a| a.text.as_str()),
        host = a.and_then(|a| a.host.as_deref()),
        tls = a.and_then(|a| a.tls.as_ref()).map(|t| t.version.as_str()),
        attempts,
        next_attempt_ms,
        retry_in_s,
        taken_over,
        "{word}"
    );
}

/// Each claimed recipient's verdict, matched by position (the envelope
/// keeps the claimed order).
pub(super) fn by_recipient(
    claimed: &Claimed,
    outcome: &MessageOutcome,
    host: &str,
    tls: Option<&smtp_core::delivery::TlsInfo>,
) -> Vec<(RecipientId, Verdict)> {
    claimed
        .recipients
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let v = outcome.recipients.get(i).map_or_else(
                || Verdict::Retry {
                    attempt: Attempt {
                        text: "no outcome for this recipient".into(),
                        host: Some(host.to_owned()),
                        ..Attempt::default()
                    },
                    unknown: true,
                },
                |o| verdict(o, host, tls),
            );
            (r.id, v)
        })
        .collect()
}

/// The retry jitter of message `id`'s attempt `attempt`, in [0, 1): the
/// same for every recipient of the message deferred at that attempt, so
/// that they come due together and go in one transaction again, while
/// different messages spread out (message ids carry 64 random bits).
fn message_unit(id: &crate::store::MessageId, attempt: u32) -> f64 {
    use sha2::{Digest, Sha256};
    let digest = Sha256::new()
        .chain_update(id.as_str().as_bytes())
        .chain_update(attempt.to_le_bytes())
        .finalize();
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}
