//! The report of a queued send: each recipient's line from its state in
//! the queue, as `smtp send` prints it, live as outcomes are recorded and
//! whole at the end.

use std::collections::{HashMap, HashSet};
use std::time::SystemTime;

use smtp_core::RecipientStatus;
use smtp_queue::{Attempt, MessageId, Outcome, RecipientState, RunEvent, Store};

use super::{queue_error, warn, why};
use crate::fail::Failure;
use crate::output::{MessageReport, RecipientReport, Report, Sent};
use crate::progress;

pub(crate) use smtp_queue::time::rfc3339;

/// The text of a recipient still queued that was never attempted.
const NOT_ATTEMPTED: &str = "not attempted yet; it stays queued";

/// The text of a recipient still queued when a signal stopped the run
/// before its message's data went out: the server cannot have it.
const NOT_SENT: &str = "interrupted before its message's data went out: not delivered; it \
                        stays queued, and `smtp queue run` delivers it once";

/// The text of a recipient whose message's data had gone out when a
/// signal stopped the run, and whose final reply had not come: the only
/// kind a later run may deliver twice.
const IN_FLIGHT: &str = "interrupted after its message's data went out, before the server's \
                         reply: it stays queued and may be delivered twice (`smtp queue run` \
                         sends it again, and the server may already have it)";

/// Why a recipient the run left in the queue has no outcome of its own:
/// what its line says when there is no reply to show (or, in flight,
/// before the reply it had).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Pending {
    /// Its attempt was not due yet, or did not come.
    NotAttempted,
    /// A signal stopped the run before its message's data went out.
    NotSent,
    /// A signal stopped the run after its message's data went out and
    /// before the final reply ([`RunEvent::InFlight`]).
    InFlight,
}

impl Pending {
    fn text(self) -> &'static str {
        match self {
            Self::NotAttempted => NOT_ATTEMPTED,
            Self::NotSent => NOT_SENT,
            Self::InFlight => IN_FLIGHT,
        }
    }
}

/// A recipient's line of the report, from its state in the queue and its
/// last attempt: delivered is `accepted`, failed and expired `rejected`,
/// anything still waiting `deferred` with `queued` and `next_attempt`.
/// `pending` says why one still waiting has no outcome of this run.
pub(super) fn recipient_report(
    address: &str,
    state: RecipientState,
    last: Option<&Attempt>,
    next: SystemTime,
    pending: Pending,
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
        (_, Some(a)) if waiting && pending == Pending::InFlight => {
            format!("{IN_FLIGHT} (the attempt before: {})", a.text)
        }
        (_, Some(a)) => a.text.clone(),
        (_, None) => pending.text().to_owned(),
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
        mta_sts: None,
    }
}

/// A recorded outcome as a recipient's state, its attempt and (deferred)
/// when it is due again.
pub(super) fn outcome_state(
    outcome: &Outcome,
) -> (RecipientState, Option<&Attempt>, Option<SystemTime>) {
    match outcome {
        Outcome::Delivered(a) => (RecipientState::Delivered, Some(a), None),
        Outcome::Failed(a) => (RecipientState::Failed, Some(a), None),
        Outcome::Deferred { attempt, next } => {
            (RecipientState::Deferred, Some(attempt), Some(*next))
        }
        Outcome::Expired(a) => (RecipientState::Expired, a.as_ref(), None),
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
    /// The recipients a stop found in flight, by message.
    in_flight: HashSet<(MessageId, String)>,
    /// The MTA-STS mode each recipient with a policy was last recorded
    /// under (direct delivery), for the report.
    sts_modes: HashMap<(MessageId, String), String>,
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
            in_flight: HashSet::new(),
            sts_modes: HashMap::new(),
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

    /// The MTA-STS modes recorded (taken: asked once, at the end).
    pub(super) fn take_sts_modes(&mut self) -> HashMap<(MessageId, String), String> {
        std::mem::take(&mut self.sts_modes)
    }

    /// The recipients a stop found in flight (taken: asked once, at the end).
    pub(super) fn take_in_flight(&mut self) -> InFlight {
        InFlight(std::mem::take(&mut self.in_flight))
    }

    pub(super) fn event(&mut self, event: &RunEvent) {
        warn(event);
        // Interrupted hard from now on, this message may have been
        // delivered (a second signal prints the progress record).
        if let RunEvent::DataSent { message } = event {
            if let Some((index, _)) = self.messages.get(message) {
                progress::data_sent(*index);
            }
            return;
        }
        if let RunEvent::InFlight {
            message,
            recipients,
        } = event
        {
            self.in_flight
                .extend(recipients.iter().map(|r| (message.clone(), r.clone())));
            return;
        }
        let RunEvent::Recorded {
            message,
            recipient,
            outcome,
            mta_sts,
            ..
        } = event
        else {
            return;
        };
        if let Some(mode) = mta_sts {
            self.sts_modes
                .insert((message.clone(), recipient.clone()), mode.to_string());
        }
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
            other => {
                let (state, attempt, _) = outcome_state(other);
                (state, attempt)
            }
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
            let mut line = recipient_report(
                recipient,
                state,
                attempt,
                SystemTime::now(),
                Pending::NotAttempted,
            );
            line.mta_sts = mta_sts.map(|m| m.to_string());
            *slot = Some(line);
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
                    dkim: None,
                    errors: Vec::new(),
                    missing_outcomes: false,
                },
            );
        }
    }
}

/// The recipients a stop found in flight ([`RunEvent::InFlight`]), by
/// message.
pub(super) struct InFlight(HashSet<(MessageId, String)>);

impl InFlight {
    /// Why `recipient` of `message`, still queued after a stop, has no
    /// outcome: in flight, or not sent.
    pub(super) fn pending(&self, message: &MessageId, recipient: &str) -> Pending {
        if self.0.contains(&(message.clone(), recipient.to_owned())) {
            Pending::InFlight
        } else {
            Pending::NotSent
        }
    }

    pub(super) fn len(&self) -> usize {
        self.0.len()
    }
}

/// The report of the enqueued messages as the queue holds them now;
/// `pending` says why a recipient still waiting has no outcome.
pub(super) async fn report_from_store(
    store: &dyn Store,
    ids: &[MessageId],
    sent: &[Sent],
    pending: &dyn Fn(&MessageId, &str) -> Pending,
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
                        pending(id, &r.address),
                    )
                })
                .collect();
            found.push((
                index,
                MessageReport {
                    message: s.name.clone(),
                    recipients,
                    diagnosis: None,
                    dkim: None,
                    errors: Vec::new(),
                    missing_outcomes: false,
                },
            ));
        }
    }
    Ok(Report::reconciled(sent, found))
}
