//! What an interrupted `smtp send` leaves behind: the outcomes known when
//! SIGINT or SIGTERM came, and every other recipient marked as not known,
//! so that a bulk run stopped halfway can be resumed without sending twice
//! what was already accepted.

use std::sync::Mutex;

use smtp_core::MessageOutcome;

use crate::output::{MessageReport, RecipientReport, Report, Sent};

/// The text for a recipient whose message had no outcome yet.
const INTERRUPTED: &str = "interrupted before the outcome was known; the message may or may \
                           not have been delivered";

struct Record {
    sent: Vec<Sent>,
    found: Vec<(usize, MessageReport)>,
    json: bool,
}

static RECORD: Mutex<Option<Record>> = Mutex::new(None);

fn with(f: impl FnOnce(&mut Option<Record>)) {
    let mut guard = RECORD
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    f(&mut guard);
}

/// A send of these messages starts.
pub(crate) fn begin(sent: &[Sent], json: bool) {
    let sent = sent
        .iter()
        .map(|s| Sent {
            name: s.name.clone(),
            recipients: s.recipients.clone(),
        })
        .collect();
    with(|r| {
        *r = Some(Record {
            sent,
            found: Vec::new(),
            json,
        });
    });
}

/// A session's outcome for a message arrived (`index` into the messages
/// given to `begin`).
pub(crate) fn record(index: usize, outcome: &MessageOutcome) {
    let recipients = outcome
        .recipients
        .iter()
        .map(|o| RecipientReport::new(o, None, None))
        .collect();
    record_recipients(index, recipients);
}

/// Outcomes for some recipients of a message (direct delivery's, say).
pub(crate) fn record_recipients(index: usize, recipients: Vec<RecipientReport>) {
    with(|r| {
        if let Some(r) = r {
            let report = MessageReport {
                message: r
                    .sent
                    .get(index)
                    .map(|s| s.name.clone())
                    .unwrap_or_default(),
                recipients,
                diagnosis: None,
                errors: Vec::new(),
                missing_outcomes: false,
            };
            r.found.push((index, report));
        }
    });
}

/// Prints what is known, as the report would have (the recipients not
/// reached yet deferred with [`INTERRUPTED`]).
pub(crate) fn report() {
    with(|r| {
        let Some(r) = r.take() else { return };
        let mut report = Report::reconciled(&r.sent, r.found);
        for m in &mut report.messages {
            for rcpt in &mut m.recipients {
                if m.missing_outcomes && rcpt.text == crate::output::NO_OUTCOME {
                    rcpt.text = INTERRUPTED.to_owned();
                }
            }
            m.missing_outcomes = false;
        }
        let summary = report.summary();
        report.print(r.json);
        tell!(
            "smtp: interrupted: {} accepted, {} rejected, {} deferred or not known",
            summary.accepted,
            summary.rejected,
            summary.deferred
        );
    });
}
