//! [`Verdict`]: what a recipient's outcome in a session means for the queue.

use smtp_core::delivery::TlsInfo;
use smtp_core::{Fault, Phase, RecipientOutcome, RecipientStatus};

use crate::store::{Attempt, TlsFacts};

/// How one recipient's attempt is to be recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// 2xx to the end of data.
    Delivered(Attempt),
    /// A permanent refusal (5xx, or a message this server cannot take).
    Failed(Attempt),
    /// A temporary failure: retry on the schedule. `unknown` when the reply
    /// to the end of data was lost (the server may have the message).
    Retry {
        /// The attempt.
        attempt: Attempt,
        /// The outcome is unknown: a retry may duplicate.
        unknown: bool,
    },
    /// The session ended (a `421`, the connection lost) before this
    /// recipient's message reached its data: not an attempt at it.
    SessionEnded(Attempt),
    /// A configuration or policy fault of the session (authentication
    /// refused or required, the TLS policy not met): hold the destination.
    Hold(Attempt),
}

/// The facts of an outcome: its reply, or the local failure.
pub(crate) fn attempt(o: &RecipientOutcome, host: &str, tls: Option<&TlsInfo>) -> Attempt {
    let (code, enhanced, text) = match (&o.reply, &o.error) {
        (Some(r), _) => (
            Some(r.code().as_u16()),
            r.enhanced_code().map(|e| e.to_string()),
            r.text(),
        ),
        (None, Some(e)) => (None, None, e.to_string()),
        (None, None) => (None, None, o.status.name().to_owned()),
    };
    Attempt {
        code,
        enhanced,
        text,
        host: Some(host.to_owned()),
        tls: tls.map(TlsFacts::from),
    }
}

/// Classifies a recipient's outcome.
pub(crate) fn verdict(o: &RecipientOutcome, host: &str, tls: Option<&TlsInfo>) -> Verdict {
    let a = attempt(o, host, tls);
    match o.status {
        RecipientStatus::Accepted => Verdict::Delivered(a),
        RecipientStatus::Rejected => Verdict::Failed(a),
        RecipientStatus::Deferred => {
            let fault = o.error.as_ref().map(smtp_core::Error::fault);
            let auth_required = o
                .reply
                .as_ref()
                .is_some_and(|r| r.is_authentication_required());
            if auth_required || matches!(fault, Some(Fault::Configuration | Fault::Policy)) {
                return Verdict::Hold(a);
            }
            if fault == Some(Fault::Unknown) {
                return Verdict::Retry {
                    attempt: a,
                    unknown: true,
                };
            }
            let before_data = matches!(
                o.phase,
                Phase::Connect
                    | Phase::Greeting
                    | Phase::Ehlo
                    | Phase::StartTls
                    | Phase::TlsHandshake
                    | Phase::Auth
                    | Phase::Mail
                    | Phase::Rcpt
                    | Phase::Data
                    | Phase::Rset
            );
            let code = o.reply.as_ref().map(|r| r.code().as_u16());
            // Before the data, the session ended and the recipient was not
            // refused when: a 421 (the server closing); no reply at all
            // (the connection lost); or a reply that refuses nothing (1xx
            // to 3xx out of place: the reply stream is out of step, and
            // the messages behind it were never sent).
            let refuses = code.is_some_and(|c| (400..600).contains(&c));
            if before_data && (code == Some(421) || !refuses) {
                Verdict::SessionEnded(a)
            } else {
                Verdict::Retry {
                    attempt: a,
                    unknown: false,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use smtp_core::address::Mailbox;
    use smtp_core::reply::{Reply, ReplyCode};
    use smtp_core::{Phase, RecipientOutcome, RecipientStatus};

    use super::{Verdict, verdict};

    fn deferred(phase: Phase, code: Option<u16>) -> RecipientOutcome {
        RecipientOutcome {
            recipient: Mailbox::parse("b@example.net").unwrap(),
            status: RecipientStatus::Deferred,
            phase,
            reply: code.map(|c| Reply::new(ReplyCode::new(c).unwrap(), None, vec!["x".into()])),
            error: None,
        }
    }

    #[test]
    fn a_reply_out_of_step_before_the_data_ends_the_session_and_refuses_nobody() {
        for (phase, code) in [
            (Phase::Rcpt, 354),
            (Phase::Data, 250),
            (Phase::Mail, 250),
            (Phase::Mail, 334),
        ] {
            let v = verdict(&deferred(phase, Some(code)), "mx", None);
            assert!(
                matches!(v, Verdict::SessionEnded(_)),
                "{phase:?} {code}: {v:?}"
            );
        }
        for (phase, code) in [(Phase::Rcpt, 421), (Phase::Mail, 0)] {
            let reply = (code != 0).then_some(code);
            let v = verdict(&deferred(phase, reply), "mx", None);
            assert!(
                matches!(v, Verdict::SessionEnded(_)),
                "{phase:?} {code}: {v:?}"
            );
        }
    }

    #[test]
    fn a_temporary_refusal_is_a_retry() {
        for (phase, code) in [(Phase::Rcpt, 451), (Phase::Mail, 452), (Phase::Data, 450)] {
            let v = verdict(&deferred(phase, Some(code)), "mx", None);
            assert!(
                matches!(v, Verdict::Retry { unknown: false, .. }),
                "{phase:?} {code}: {v:?}"
            );
        }
    }
}
