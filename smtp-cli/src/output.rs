//! What the user sees: a line per recipient, or one JSON object; and the
//! exit code that sums it up.

use std::collections::HashMap;

use serde::Serialize;
use smtp_core::delivery::TlsInfo;
use smtp_core::{Error, MessageError, RecipientOutcome, RecipientStatus};

use crate::fail::{EX_NOPERM, EX_OK, EX_PROTOCOL, EX_SOFTWARE, EX_TEMPFAIL, EX_UNAVAILABLE};

/// The text for a recipient the session gave no outcome for.
pub(crate) const NO_OUTCOME: &str = "internal error: no outcome was reported for this message; it may or may not have been delivered";

/// The version of the JSON that `send`, `probe` and `mx` print; it changes
/// only when a field changes meaning or goes away.
pub(crate) const JSON_VERSION: u32 = 1;

#[derive(Debug, Default)]
pub(crate) struct Report {
    pub(crate) messages: Vec<MessageReport>,
    /// Why nothing could be sent at all (no connection, say), with the exit
    /// code it implies; every recipient is then deferred with its text.
    pub(crate) fault: Option<(u8, ErrorReport)>,
}

/// The top-level `error` of the JSON: what stopped a session or a command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct ErrorReport {
    /// One word: `connect`, `resolve`, `dns`, `tls`, `tls-policy`,
    /// `authentication`, `refused`, `timeout`, `connection-lost`,
    /// `protocol`, `outcome-unknown`, `message`, or a failure's kind.
    pub(crate) kind: &'static str,
    pub(crate) message: String,
}

impl ErrorReport {
    pub(crate) fn of_failure(f: &crate::fail::Failure) -> Self {
        Self {
            kind: f.kind,
            message: f.message.clone(),
        }
    }

    pub(crate) fn of_session(e: &Error) -> Self {
        let kind = match e {
            Error::AuthenticationFailed { .. } | Error::Sasl(_) => "authentication",
            Error::Policy(_) => "tls-policy",
            Error::Tls(_) => "tls",
            Error::Rejected { .. } => "refused",
            Error::Timeout { .. } | Error::WriteTimeout { .. } => "timeout",
            Error::ConnectionClosed { .. } => "connection-lost",
            Error::OutcomeUnknown { .. } => "outcome-unknown",
            Error::Message(_) => "message",
            Error::Plan(_) => "dns",
            Error::Connect { .. } => "connect",
            _ => "protocol",
        };
        Self {
            kind,
            message: crate::advice::error_text(e),
        }
    }
}

/// How many recipients ended in each status.
#[derive(Debug, Default, PartialEq, Eq, Serialize)]
pub(crate) struct Summary {
    pub(crate) messages: usize,
    pub(crate) accepted: usize,
    pub(crate) rejected: usize,
    pub(crate) deferred: usize,
}

impl Summary {
    /// The closing line of a run of several messages, e.g. `3 messages, 5
    /// recipients: 4 accepted, 1 deferred, 0 rejected in 1.2 s`.
    pub(crate) fn line(&self, took: std::time::Duration) -> String {
        let recipients = self.accepted + self.deferred + self.rejected;
        format!(
            "{}, {}: {} accepted, {} deferred, {} rejected in {:.1} s",
            counted(self.messages, "message"),
            counted(recipients, "recipient"),
            self.accepted,
            self.deferred,
            self.rejected,
            took.as_secs_f64()
        )
    }
}

/// `n` and the noun, plural unless `n` is 1.
pub(crate) fn counted(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// `--json` when a command stops before it has a report: the same shape,
/// with the error.
pub(crate) fn print_failure_json(f: &crate::fail::Failure, send: bool) {
    let error = ErrorReport::of_failure(f);
    let v = if send {
        serde_json::json!({
            "version": JSON_VERSION,
            "messages": [],
            "summary": Summary::default(),
            "error": error,
        })
    } else {
        serde_json::json!({ "version": JSON_VERSION, "error": error })
    };
    say!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
}

/// What was printed of a message as it came: its recipients' lines and
/// whether its diagnosis (kept small: a long run keeps one per message).
#[derive(Clone, Debug)]
pub(crate) struct Printed {
    /// The message's index.
    pub(crate) index: usize,
    /// The recipients whose lines were printed.
    pub(crate) addresses: Vec<String>,
    /// The diagnosis was printed.
    pub(crate) diagnosis: bool,
}

impl Printed {
    pub(crate) fn of(index: usize, m: &MessageReport) -> Self {
        Self {
            index,
            addresses: m.recipients.iter().map(|r| r.address.clone()).collect(),
            diagnosis: m.diagnosis.is_some(),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct MessageReport {
    pub(crate) message: String,
    pub(crate) recipients: Vec<RecipientReport>,
    pub(crate) diagnosis: Option<String>,
    /// The DKIM signature `smtp` added, or none.
    pub(crate) dkim: Option<DkimReport>,
    /// Faults that ended sessions (for the exit code), not serialised.
    #[serde(skip)]
    pub(crate) errors: Vec<Error>,
    /// Some recipient had no outcome from the session: a bug, reported as
    /// deferred and by the exit code.
    #[serde(skip)]
    pub(crate) missing_outcomes: bool,
}

/// A DKIM signature added to a message: `d=`, `s=`, `a=`.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct DkimReport {
    pub(crate) domain: String,
    pub(crate) selector: String,
    pub(crate) algorithm: &'static str,
}

impl MessageReport {
    /// The message as text: a line per recipient, then any diagnosis. In a
    /// run of several messages (`named`), each line ends with the
    /// message's name, so the output says which file each line is about.
    pub(crate) fn lines(&self, named: bool) -> Vec<String> {
        let name = named.then_some(self.message.as_str());
        let mut lines: Vec<String> = self.recipients.iter().map(|r| r.line(name)).collect();
        lines.extend(self.note());
        lines
    }

    fn note(&self) -> Option<String> {
        self.diagnosis.as_ref().map(|d| format!("note: {d}"))
    }
}

/// A message as it was handed to a session: its name and recipients.
#[derive(Debug)]
pub(crate) struct Sent {
    pub(crate) name: String,
    pub(crate) recipients: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct RecipientReport {
    pub(crate) address: String,
    pub(crate) status: &'static str,
    pub(crate) code: Option<u16>,
    pub(crate) enhanced_code: Option<String>,
    pub(crate) text: String,
    pub(crate) host: Option<String>,
    pub(crate) tls: Option<String>,
    pub(crate) cert_verified: Option<bool>,
    /// `send --queue` only: the recipient stays in the queue (deferred, or
    /// not attempted yet); absent from plain `send`'s JSON.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) queued: Option<bool>,
    /// `send --queue` only, with `queued`: when the next attempt is due
    /// (RFC 3339, UTC).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) next_attempt: Option<String>,
    /// Direct delivery: the mode of the MTA-STS policy the recipient's
    /// domain was delivered under (`enforce`, `testing`, `none`); absent
    /// without one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) mta_sts: Option<String>,
}

impl RecipientReport {
    /// A recipient the session reported nothing for.
    pub(crate) fn no_outcome(address: &str) -> Self {
        Self {
            address: address.to_owned(),
            status: RecipientStatus::Deferred.name(),
            code: None,
            enhanced_code: None,
            text: NO_OUTCOME.to_owned(),
            host: None,
            tls: None,
            cert_verified: None,
            queued: None,
            next_attempt: None,
            mta_sts: None,
        }
    }

    /// The recipient's line: status, address, reply, the session's host
    /// and TLS state, and the message's name when there are several.
    fn line(&self, message: Option<&str>) -> String {
        let code = match (self.code, &self.enhanced_code) {
            (Some(c), Some(e)) => format!("{c} {e} "),
            (Some(c), None) => format!("{c} "),
            _ => String::new(),
        };
        let via = match (&self.host, &self.tls, self.cert_verified) {
            (Some(h), Some(t), Some(v)) => {
                format!(
                    " [{h}, {t}, {}]",
                    if v { "verified" } else { "not verified" }
                )
            }
            (Some(h), None, _) => format!(" [{h}, plaintext]"),
            _ => String::new(),
        };
        let text = crate::terminal::joined(&self.text);
        let queued = match (self.queued, &self.next_attempt) {
            (Some(true), Some(t)) => format!(" [queued, next attempt {t}]"),
            (Some(true), None) => " [queued]".to_owned(),
            _ => String::new(),
        };
        let of = message.map(|m| format!("  ({m})")).unwrap_or_default();
        format!(
            "{:<9} {}  {code}{text}{via}{queued}{of}",
            self.status, self.address
        )
    }

    pub(crate) fn new(o: &RecipientOutcome, host: Option<&str>, tls: Option<&TlsInfo>) -> Self {
        Self {
            address: o.recipient.to_string(),
            status: o.status.name(),
            code: o.code().map(|c| c.as_u16()),
            enhanced_code: o.enhanced_code().map(|c| c.to_string()),
            text: crate::advice::outcome_text(o),
            host: host.map(str::to_owned),
            tls: tls.map(|t| t.version.clone()),
            cert_verified: tls.map(|t| t.verified),
            queued: None,
            next_attempt: None,
            mta_sts: None,
        }
    }

    /// With `binary_cause` (why the message keeps a line too long) in
    /// place of the session's "needs BINARYMIME", when that refused it.
    pub(crate) fn explained(mut self, o: &RecipientOutcome, binary_cause: Option<&String>) -> Self {
        if let (true, Some(cause)) = (needs_binary(o), binary_cause) {
            self.text.clone_from(cause);
        }
        self
    }
}

/// The message went nowhere because the server lacks BINARYMIME.
pub(crate) fn needs_binary(o: &RecipientOutcome) -> bool {
    matches!(
        o.error,
        Some(Error::Message(MessageError::BinaryUnsupported))
    )
}

impl Report {
    /// The report of `sent`, from the reports `found` for it (by index in
    /// `sent`): one per message, in order, where every recipient has a line.
    /// A session that gave no outcome for a message or a recipient is a bug
    /// in this program, but the user must still learn that the message may
    /// not have gone, rather than see nothing and an exit code of 0.
    pub(crate) fn reconciled(sent: &[Sent], found: Vec<(usize, MessageReport)>) -> Self {
        let mut slots: Vec<Option<MessageReport>> = sent.iter().map(|_| None).collect();
        let mut strays = Vec::new();
        for (index, report) in found {
            match slots.get_mut(index) {
                Some(Some(kept)) => kept.recipients.extend(report.recipients),
                Some(slot) => *slot = Some(report),
                None => strays.push(report),
            }
        }
        let mut messages: Vec<MessageReport> = slots
            .into_iter()
            .zip(sent)
            .map(|(slot, s)| {
                let mut m = slot.unwrap_or_else(|| MessageReport {
                    message: s.name.clone(),
                    recipients: Vec::new(),
                    diagnosis: None,
                    dkim: None,
                    errors: Vec::new(),
                    missing_outcomes: false,
                });
                for r in &s.recipients {
                    if !m.recipients.iter().any(|x| &x.address == r) {
                        m.recipients.push(RecipientReport::no_outcome(r));
                        m.missing_outcomes = true;
                    }
                }
                m
            })
            .collect();
        messages.extend(strays);
        Self {
            messages,
            fault: None,
        }
    }

    /// Nothing could be sent (`error` says why): every recipient of every
    /// message is deferred with that text, and the exit code is `code`.
    pub(crate) fn not_sent(sent: &[Sent], code: u8, error: ErrorReport) -> Self {
        let messages = sent
            .iter()
            .map(|s| MessageReport {
                message: s.name.clone(),
                recipients: s
                    .recipients
                    .iter()
                    .map(|r| RecipientReport {
                        text: error.message.clone(),
                        ..RecipientReport::no_outcome(r)
                    })
                    .collect(),
                diagnosis: None,
                dkim: None,
                errors: Vec::new(),
                missing_outcomes: false,
            })
            .collect();
        Self {
            messages,
            fault: Some((code, error)),
        }
    }

    /// Counts per status.
    pub(crate) fn summary(&self) -> Summary {
        let mut s = Summary {
            messages: self.messages.len(),
            ..Summary::default()
        };
        for r in self.messages.iter().flat_map(|m| &m.recipients) {
            match r.status {
                x if x == RecipientStatus::Accepted.name() => s.accepted += 1,
                x if x == RecipientStatus::Rejected.name() => s.rejected += 1,
                _ => s.deferred += 1,
            }
        }
        s
    }

    /// The top-level error: the fault that stopped everything, or else the
    /// first session's.
    pub(crate) fn error(&self) -> Option<ErrorReport> {
        self.fault.as_ref().map(|(_, e)| e.clone()).or_else(|| {
            self.messages
                .iter()
                .flat_map(|m| &m.errors)
                .next()
                .map(ErrorReport::of_session)
        })
    }

    pub(crate) fn print(&self, json: bool) {
        self.print_after(json, &[]);
    }

    /// [`print`](Self::print), leaving out the lines already `printed` as
    /// each message finished (see [`lines_after`](Self::lines_after)).
    pub(crate) fn print_after(&self, json: bool, printed: &[Printed]) {
        if json {
            let v = serde_json::json!({
                "version": JSON_VERSION,
                "messages": &self.messages,
                "summary": self.summary(),
                "error": self.error(),
            });
            say!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            return;
        }
        for line in self.lines_after(printed) {
            say!("{line}");
        }
    }

    /// Sendmail's way: nothing when every recipient was accepted, otherwise
    /// the report on standard error (a caller such as mutt or cron shows it).
    pub(crate) fn print_unless_accepted(&self) {
        if self.exit_code() == EX_OK {
            return;
        }
        for line in self.lines() {
            tell!("{line}");
        }
    }

    /// The report as text: a line per recipient, then any diagnosis.
    fn lines(&self) -> Vec<String> {
        self.lines_after(&[])
    }

    /// The lines not printed yet: `printed` holds what was printed as each
    /// message finished, by its index (its place in this report).
    fn lines_after(&self, printed: &[Printed]) -> Vec<String> {
        let mut by_message: HashMap<usize, Vec<&Printed>> = HashMap::new();
        for p in printed {
            by_message.entry(p.index).or_default().push(p);
        }
        let mut lines = Vec::new();
        let named = (self.messages.len() > 1).then_some(());
        for (index, m) in self.messages.iter().enumerate() {
            let name = named.map(|()| m.message.as_str());
            let before = by_message.get(&index).map_or(&[][..], Vec::as_slice);
            let shown =
                |r: &RecipientReport| before.iter().any(|b| b.addresses.contains(&r.address));
            lines.extend(
                m.recipients
                    .iter()
                    .filter(|r| !shown(r))
                    .map(|r| r.line(name)),
            );
            if !before.iter().any(|b| b.diagnosis) {
                lines.extend(m.note());
            }
        }
        lines
    }

    /// 0 only when everyone was accepted; see `EXIT_CODES`. Authentication
    /// and policy failures come first, then a missing outcome (70), then
    /// deferred (75) and rejected (69).
    pub(crate) fn exit_code(&self) -> u8 {
        let errors = self.messages.iter().flat_map(|m| &m.errors);
        let mut code = EX_OK;
        for e in errors {
            match session_exit_code(e) {
                Some(EX_NOPERM) => return EX_NOPERM,
                Some(c) => code = c,
                None => {}
            }
        }
        // A 530 to MAIL: the server wanted credentials it did not get.
        if self
            .messages
            .iter()
            .flat_map(|m| &m.recipients)
            .any(|r| r.code == Some(530))
        {
            return EX_NOPERM;
        }
        if code != EX_OK {
            return code;
        }
        if let Some((code, _)) = &self.fault {
            return *code;
        }
        if self.messages.iter().any(|m| m.missing_outcomes) {
            return EX_SOFTWARE;
        }
        let statuses: Vec<&str> = self
            .messages
            .iter()
            .flat_map(|m| m.recipients.iter().map(|r| r.status))
            .collect();
        if statuses.contains(&RecipientStatus::Deferred.name()) {
            EX_TEMPFAIL
        } else if statuses.contains(&RecipientStatus::Rejected.name()) {
            EX_UNAVAILABLE
        } else {
            EX_OK
        }
    }
}

/// The exit code a session's fault stands for, when it names one: 77 for
/// authentication (wrong credentials, no AUTH offered, a mechanism that
/// cannot proceed), 76 for the encryption policy (no STARTTLS, TLS failed,
/// a secret that would travel readable).
pub(crate) fn session_exit_code(e: &Error) -> Option<u8> {
    use smtp_core::PolicyError;
    use smtp_core::sasl::SaslError;
    match e {
        Error::AuthenticationFailed { .. } | Error::Policy(PolicyError::AuthNotOffered { .. }) => {
            Some(EX_NOPERM)
        }
        Error::Sasl(
            SaslError::WouldRevealSecret { .. } | SaslError::NoUsableMechanism { tls: false, .. },
        ) => Some(EX_PROTOCOL),
        Error::Sasl(_) => Some(EX_NOPERM),
        Error::Policy(_) | Error::Tls(_) => Some(EX_PROTOCOL),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(name: &str, accepted: &[&str]) -> MessageReport {
        MessageReport {
            message: name.into(),
            recipients: accepted
                .iter()
                .map(|a| RecipientReport {
                    status: RecipientStatus::Accepted.name(),
                    code: Some(250),
                    text: "ok".into(),
                    ..RecipientReport::no_outcome(a)
                })
                .collect(),
            diagnosis: None,
            dkim: None,
            errors: Vec::new(),
            missing_outcomes: false,
        }
    }

    fn sent(name: &str, to: &[&str]) -> Sent {
        Sent {
            name: name.into(),
            recipients: to.iter().map(|t| (*t).to_owned()).collect(),
        }
    }

    #[test]
    fn every_outcome_reported_exits_0() {
        let sent = [sent("a", &["x@t"]), sent("b", &["y@t"])];
        let r = Report::reconciled(
            &sent,
            vec![(1, report("b", &["y@t"])), (0, report("a", &["x@t"]))],
        );
        assert_eq!(r.messages[0].message, "a", "in the order sent");
        assert_eq!(r.exit_code(), EX_OK);
    }

    #[test]
    fn a_message_without_an_outcome_is_deferred_and_an_internal_error() {
        let sent = [sent("a", &["x@t"]), sent("b", &["y@t", "z@t"])];
        let r = Report::reconciled(&sent, vec![(0, report("a", &["x@t"]))]);
        assert_eq!(r.messages.len(), 2);
        let b = &r.messages[1];
        assert_eq!(b.message, "b");
        let lines: Vec<(&str, &str, &str)> = b
            .recipients
            .iter()
            .map(|r| (r.address.as_str(), r.status, r.text.as_str()))
            .collect();
        assert_eq!(
            lines,
            [
                ("y@t", "deferred", NO_OUTCOME),
                ("z@t", "deferred", NO_OUTCOME)
            ]
        );
        assert_eq!(r.exit_code(), EX_SOFTWARE);
    }

    #[test]
    fn a_recipient_without_an_outcome_is_an_internal_error_too() {
        let sent = [sent("a", &["x@t", "y@t"])];
        let r = Report::reconciled(&sent, vec![(0, report("a", &["x@t"]))]);
        assert_eq!(r.messages[0].recipients[1].address, "y@t");
        assert_eq!(r.messages[0].recipients[1].status, "deferred");
        assert_eq!(r.exit_code(), EX_SOFTWARE);
    }

    #[test]
    fn a_tls_failure_outranks_a_missing_outcome() {
        let sent = [sent("a", &["x@t"]), sent("b", &["y@t"])];
        let mut a = report("a", &["x@t"]);
        a.errors.push(Error::Tls("handshake failed".into()));
        let r = Report::reconciled(&sent, vec![(0, a)]);
        assert_eq!(r.exit_code(), EX_PROTOCOL);
    }

    #[test]
    fn the_summary_line_counts_messages_and_recipients_by_status() {
        let sent = [
            sent("a", &["x@t", "y@t"]),
            sent("b", &["x@t", "z@t"]),
            sent("c", &["x@t"]),
        ];
        let r = Report::reconciled(
            &sent,
            vec![
                (0, report("a", &["x@t", "y@t"])),
                (1, report("b", &["x@t"])),
                (2, report("c", &["x@t"])),
            ],
        );
        assert_eq!(
            r.summary().line(std::time::Duration::from_millis(1234)),
            "3 messages, 5 recipients: 4 accepted, 1 deferred, 0 rejected in 1.2 s"
        );
        let mut one = Report::reconciled(&sent[2..], vec![(0, report("c", &["x@t"]))]);
        one.messages[0].recipients[0].status = RecipientStatus::Rejected.name();
        assert_eq!(
            one.summary().line(std::time::Duration::ZERO),
            "1 message, 1 recipient: 0 accepted, 0 deferred, 1 rejected in 0.0 s"
        );
    }

    #[test]
    fn lines_printed_as_they_came_are_not_printed_again_and_the_rest_are() {
        let sent = [sent("a", &["x@t", "y@t"]), sent("b", &["z@t"])];
        let mut a = report("a", &["x@t"]);
        a.diagnosis = Some("d".into());
        let printed = [Printed::of(0, &a)];
        assert_eq!(
            a.lines(false),
            ["accepted  x@t  250 ok", "note: d"],
            "a message's lines, as the report prints them"
        );
        let r = Report::reconciled(&sent, vec![(0, a)]);
        assert_eq!(r.lines().len(), 4);
        let rest = r.lines_after(&printed);
        assert_eq!(rest.len(), 2, "{rest:?}");
        assert!(
            rest[0].starts_with("deferred  y@t  internal error"),
            "{rest:?}"
        );
        assert!(
            rest[1].starts_with("deferred  z@t  internal error"),
            "{rest:?}"
        );
    }

    #[test]
    fn session_faults_map_to_the_documented_codes() {
        use smtp_core::sasl::{Mechanism, SaslError};
        use smtp_core::{PolicyError, TlsPolicy};
        let cases = [
            (
                Error::Policy(PolicyError::AuthNotOffered { tls: true }),
                Some(EX_NOPERM),
            ),
            (
                Error::Sasl(SaslError::NotOffered {
                    mechanism: Mechanism::CramMd5,
                    offered: vec!["PLAIN".into()],
                }),
                Some(EX_NOPERM),
            ),
            (
                Error::Sasl(SaslError::WouldRevealSecret {
                    mechanism: Mechanism::Plain,
                }),
                Some(EX_PROTOCOL),
            ),
            (
                Error::Policy(PolicyError::StartTlsNotOffered {
                    policy: TlsPolicy::Required,
                }),
                Some(EX_PROTOCOL),
            ),
            (Error::Tls("x".into()), Some(EX_PROTOCOL)),
            (
                Error::ConnectionClosed {
                    phase: smtp_core::Phase::Mail,
                },
                None,
            ),
        ];
        for (e, want) in cases {
            assert_eq!(session_exit_code(&e), want, "{e}");
        }
    }
}
