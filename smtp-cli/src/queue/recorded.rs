//! What one `smtp queue run` recorded: each recipient's latest outcome, by
//! message, as `smtp send --queue`'s report holds them. The run's exit
//! code is that report's ([`Report::exit_code`], the rule `send` follows),
//! and `--json` prints it with the run's counts and what it left waiting.

use std::collections::HashMap;
use std::time::SystemTime;

use serde::Serialize;
use smtp_queue::{MessageId, RecipientState, RunEvent};

use super::report::{Pending, outcome_state, recipient_report};
use super::rfc3339;
use crate::fail::{EX_OK, EX_TEMPFAIL, EX_UNAVAILABLE};
use crate::output::{JSON_VERSION, MessageReport, RecipientReport, Report};

/// Recipients by their latest outcome in the run: one deferred and then
/// delivered counts as delivered.
#[derive(Debug, Default, PartialEq, Eq, Serialize)]
pub(super) struct Counts {
    pub(super) delivered: usize,
    pub(super) failed: usize,
    pub(super) deferred: usize,
    pub(super) expired: usize,
}

/// The outcomes a run recorded, as they come ([`Recorded::event`]).
#[derive(Debug, Default)]
pub(super) struct Recorded {
    /// Messages in the order of their first outcome; each recipient's
    /// latest outcome, with its state.
    messages: Vec<(MessageId, Vec<(RecipientState, RecipientReport)>)>,
    /// Message id → its place in `messages`.
    places: HashMap<MessageId, usize>,
}

impl Recorded {
    /// Keeps the outcome a [`RunEvent::Recorded`] tells, in place of the
    /// recipient's earlier one.
    pub(super) fn event(&mut self, event: &RunEvent) {
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
        let (state, attempt, next) = outcome_state(outcome);
        // `next` is used only for a recipient still waiting: a deferred
        // one, which has it.
        let next = next.unwrap_or(SystemTime::UNIX_EPOCH);
        let mut line = recipient_report(recipient, state, attempt, next, Pending::NotAttempted);
        line.mta_sts = mta_sts.map(|m| m.to_string());
        let place = *self.places.entry(message.clone()).or_insert_with(|| {
            self.messages.push((message.clone(), Vec::new()));
            self.messages.len() - 1
        });
        let Some((_, recipients)) = self.messages.get_mut(place) else {
            return;
        };
        match recipients.iter_mut().find(|(_, r)| r.address == *recipient) {
            Some(slot) => *slot = (state, line),
            None => recipients.push((state, line)),
        }
    }

    /// The run's report, `send --queue`'s shape (each message named by its
    /// id in the queue), and its counts.
    pub(super) fn into_report(self) -> (Report, Counts) {
        let mut counts = Counts::default();
        let messages = self
            .messages
            .into_iter()
            .map(|(id, recipients)| MessageReport {
                message: id.as_str().to_owned(),
                recipients: recipients
                    .into_iter()
                    .map(|(state, line)| {
                        match state {
                            RecipientState::Delivered => counts.delivered += 1,
                            RecipientState::Failed => counts.failed += 1,
                            RecipientState::Expired => counts.expired += 1,
                            _ => counts.deferred += 1,
                        }
                        line
                    })
                    .collect(),
                diagnosis: None,
                dkim: None,
                errors: Vec::new(),
                missing_outcomes: false,
            })
            .collect();
        let report = Report {
            messages,
            fault: None,
        };
        (report, counts)
    }
}

/// `queue run`'s exit code: `send --queue`'s for what this run recorded
/// ([`Report::exit_code`]: 0 all delivered, 69 some failed or expired, 75
/// some deferred, 77 a `530`), and 75 in place of 0 or 69 while recipients
/// still `wait` in the queue (not due yet, leased by another run, or behind
/// a held destination), as 75 wins over 69 for `send`.
pub(super) fn exit_code(report: &Report, wait: bool) -> u8 {
    match report.exit_code() {
        EX_OK | EX_UNAVAILABLE if wait => EX_TEMPFAIL,
        code => code,
    }
}

/// What a run left behind, for its `--json`.
pub(super) struct Left<'a> {
    /// Destinations this run held, with why.
    pub(super) held: &'a [(String, String)],
    /// Recipients queued or deferred in the whole queue.
    pub(super) waiting: u64,
    /// Recipients under a lease (another run's).
    pub(super) leased: u64,
    /// When the next of them is due (not before a relay's back-off ends).
    pub(super) next: Option<SystemTime>,
}

/// `queue run --json`: `send --json`'s object (`messages`, `summary`,
/// `error`) for what this run recorded, with its `recorded` counts and
/// what it left: `held`, `waiting`, `leased`, `next_attempt`.
pub(super) fn json(report: &Report, counts: &Counts, left: &Left<'_>) -> serde_json::Value {
    let held: Vec<serde_json::Value> = left
        .held
        .iter()
        .map(|(destination, reason)| {
            serde_json::json!({ "destination": destination, "reason": reason })
        })
        .collect();
    serde_json::json!({
        "version": JSON_VERSION,
        "messages": &report.messages,
        "summary": report.summary(),
        "recorded": counts,
        "held": held,
        "waiting": left.waiting,
        "leased": left.leased,
        "next_attempt": left.next.map(rfc3339),
        "error": report.error(),
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use smtp_queue::{Attempt, Outcome};

    use super::*;

    fn recorded(recipient: &str, outcome: Outcome) -> RunEvent {
        RunEvent::Recorded {
            message: MessageId::parse("018bcfe568e8a3f1c2d4e5f60718").unwrap(),
            recipient: recipient.to_owned(),
            destination: "relay:127.0.0.1:25".to_owned(),
            enqueued: SystemTime::UNIX_EPOCH,
            outcome,
            taken_over: false,
            mta_sts: None,
        }
    }

    fn reply(code: u16, text: &str) -> Attempt {
        Attempt {
            code: Some(code),
            text: text.to_owned(),
            ..Attempt::default()
        }
    }

    #[test]
    fn a_recipient_counts_once_by_its_latest_outcome_and_sets_the_exit_code_as_send_does() {
        let later = SystemTime::now() + Duration::from_secs(60);
        let mut run = Recorded::default();
        run.event(&recorded(
            "b@example.net",
            Outcome::Deferred {
                attempt: reply(451, "greylisted"),
                next: later,
            },
        ));
        run.event(&recorded(
            "b@example.net",
            Outcome::Delivered(reply(250, "ok")),
        ));
        run.event(&recorded(
            "c@example.net",
            Outcome::Failed(reply(550, "no such user")),
        ));
        run.event(&recorded("d@example.net", Outcome::Expired(None)));
        let (report, counts) = run.into_report();
        assert_eq!(
            counts,
            Counts {
                delivered: 1,
                failed: 1,
                deferred: 0,
                expired: 1,
            }
        );
        assert_eq!(report.messages.len(), 1);
        let statuses: Vec<_> = report.messages[0]
            .recipients
            .iter()
            .map(|r| (r.address.as_str(), r.status))
            .collect();
        assert_eq!(
            statuses,
            [
                ("b@example.net", "accepted"),
                ("c@example.net", "rejected"),
                ("d@example.net", "rejected")
            ]
        );
        assert_eq!(exit_code(&report, false), EX_UNAVAILABLE);
        assert_eq!(exit_code(&report, true), EX_TEMPFAIL, "75 wins over 69");

        let mut run = Recorded::default();
        run.event(&recorded(
            "b@example.net",
            Outcome::Deferred {
                attempt: reply(451, "greylisted"),
                next: later,
            },
        ));
        let (report, counts) = run.into_report();
        assert_eq!(counts.deferred, 1);
        assert_eq!(report.messages[0].recipients[0].queued, Some(true));
        assert_eq!(exit_code(&report, false), EX_TEMPFAIL);

        let (report, _) = Recorded::default().into_report();
        assert_eq!(exit_code(&report, false), EX_OK);
        assert_eq!(exit_code(&report, true), EX_TEMPFAIL);
    }
}
