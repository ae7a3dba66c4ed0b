//! The report of a queued send: each recipient's line from its state in
//! the queue, as `smtp send` prints it, live as outcomes are recorded and
//! whole at the end.

use std::collections::HashMap;
use std::time::SystemTime;

use smtp_core::RecipientStatus;
use smtp_queue::{Attempt, MessageId, Outcome, RecipientState, RunEvent, SqliteStore, Store};

use super::{queue_error, warn, why};
use crate::fail::Failure;
use crate::output::{MessageReport, RecipientReport, Report, Sent};
use crate::progress;

pub(crate) use smtp_queue::time::rfc3339;

/// The text of a recipient still queued that was never attempted.
pub(super) const NOT_ATTEMPTED: &str = "not attempted yet; it stays queued";

/// The text of a recipient still queued when a signal stopped the run. The
/// runner does not say whether an abandoned transaction's data went out,
/// so this cannot say "not sent": only what is true either way.
pub(super) const INTERRUPTED: &str = "interrupted before its outcome was known; it stays queued (if the \
                           server already had it, a later run may deliver it twice)";

/// A recipient's line of the report, from its state in the queue and its
/// last attempt: delivered is `accepted`, failed and expired `rejected`,
/// anything still waiting `deferred` with `queued` and `next_attempt`.
pub(super) fn recipient_report(
    address: &str,
    state: RecipientState,
    last: Option<&Attempt>,
    next: SystemTime,
    unattempted: &str,
) -> RecipientReport {
    let status = match state {
        RecipientState::Delivered => RecipientStatus::Accepted,
        RecipientState::Failed | RecipientState::Expired => RecipientStatus::Rejected,
        _ => RecipientStatus::Deferred,
    };
    let waiting = !state.is_final();
    let text = match (state, last) {
        (RecipientState::Expired, Some(a)) => {
            format!("expired (the queue lifetime ended): {}", a.text)
        }
        (RecipientState::Expired, None) => "expired: the queue lifetime ended".to_owned(),
        (_, Some(a)) => a.text.clone(),
        (_, None) => unattempted.to_owned(),
    };
    RecipientReport {
        address: address.to_owned(),
        status: status.name(),
        code: last.and_then(|a| a.code),
        enhanced_code: last.and_then(|a| a.enhanced.clone()),
        text,
        host: last.and_then(|a| a.host.clone()),
        tls: last.and_then(|a| a.tls.as_ref().map(|t| t.version.clone())),
        cert_verified: last.and_then(|a| a.tls.as_ref().map(|t| t.verified)),
        queued: waiting.then_some(true),
        next_attempt: waiting.then(|| rfc3339(next)),
    }
}

/// The messages of a `send --queue` run as their outcomes are recorded: a
/// message's lines go to [`progress::record`] once all its recipients are
/// final; deferrals are told on stderr as they happen.
pub(super) struct Live {
    /// Message id → its index in `sent`, and its recipients' final lines.
    messages: HashMap<MessageId, (usize, Vec<Option<RecipientReport>>)>,
    names: Vec<String>,
    addresses: Vec<Vec<String>>,
}

impl Live {
    pub(super) fn new(ids: &[MessageId], sent: &[Sent]) -> Self {
        Self {
            messages: ids
                .iter()
                .zip(sent)
                .enumerate()
                .map(|(i, (id, s))| (id.clone(), (i, vec![None; s.recipients.len()])))
                .collect(),
            names: sent.iter().map(|s| s.name.clone()).collect(),
            addresses: sent.iter().map(|s| s.recipients.clone()).collect(),
        }
    }

    /// The messages with a recipient this run has not seen become final
    /// (the store has the truth: another runner may have settled them).
    pub(super) fn unsettled(&self) -> Vec<MessageId> {
        self.messages
            .iter()
            // A settled message's slots were handed to the report (empty).
            .filter(|(_, (_, slots))| slots.iter().any(Option::is_none))
            .map(|(id, _)| id.clone())
            .collect()
    }

    pub(super) fn event(&mut self, event: &RunEvent) {
        warn(event);
        let RunEvent::Recorded {
            message,
            recipient,
            outcome,
            ..
        } = event
        else {
            return;
        };
        let (state, attempt) = match outcome {
            Outcome::Deferred { attempt, next } => {
                progress::suspend(|| {
                    tell!(
                        "smtp: {recipient}: deferred{}; next attempt {}",
                        why(Some(attempt)),
                        rfc3339(*next)
                    );
                });
                return;
            }
            Outcome::Delivered(a) => (RecipientState::Delivered, Some(a)),
            Outcome::Failed(a) => (RecipientState::Failed, Some(a)),
            Outcome::Expired(a) => (RecipientState::Expired, a.as_ref()),
        };
        let Some((index, slots)) = self.messages.get_mut(message) else {
            return;
        };
        // Already settled and handed to the report.
        if slots.is_empty() {
            return;
        }
        let index = *index;
        let Some(place) = self
            .addresses
            .get(index)
            .and_then(|a| a.iter().position(|x| x == recipient))
        else {
            return;
        };
        if let Some(slot) = slots.get_mut(place) {
            *slot = Some(recipient_report(
                recipient,
                state,
                attempt,
                SystemTime::now(),
                NOT_ATTEMPTED,
            ));
        }
        if slots.iter().all(Option::is_some) {
            // Handed over, not copied: a long list keeps no second copy.
            let recipients = std::mem::take(slots).into_iter().flatten().collect();
            progress::record(
                index,
                MessageReport {
                    message: self.names.get(index).cloned().unwrap_or_default(),
                    recipients,
                    diagnosis: None,
                    errors: Vec::new(),
                    missing_outcomes: false,
                },
            );
        }
    }
}

/// The report of the enqueued messages as the queue holds them now.
pub(super) async fn report_from_store(
    store: &SqliteStore,
    ids: &[MessageId],
    sent: &[Sent],
    unattempted: &str,
) -> Result<Report, Failure> {
    let mut found = Vec::with_capacity(ids.len());
    // A thousand at a time: few statements, and only a thousand messages'
    // rows in memory at once.
    for (part, chunk) in ids.chunks(1000).enumerate() {
        let mut infos: HashMap<MessageId, smtp_queue::MessageInfo> = store
            .show_many(chunk)
            .await
            .map_err(queue_error)?
            .into_iter()
            .map(|i| (i.id.clone(), i))
            .collect();
        for (k, id) in chunk.iter().enumerate() {
            let index = part * 1000 + k;
            let Some(s) = sent.get(index) else {
                continue;
            };
            let Some(info) = infos.remove(id) else {
                return Err(queue_error(smtp_queue::Error::NotFound(id.clone())));
            };
            let recipients = info
                .recipients
                .iter()
                .map(|r| {
                    recipient_report(
                        &r.address,
                        r.state,
                        r.last.as_ref(),
                        r.next_attempt,
                        unattempted,
                    )
                })
                .collect();
            found.push((
                index,
                MessageReport {
                    message: s.name.clone(),
                    recipients,
                    diagnosis: None,
                    errors: Vec::new(),
                    missing_outcomes: false,
                },
            ));
        }
    }
    Ok(Report::reconciled(sent, found))
}
