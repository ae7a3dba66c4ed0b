//! [`Verdict`]: what a recipient's outcome in a session means for the queue.

use smtp_core::delivery::TlsInfo;
use smtp_core::{Fault, Phase, PolicyError, RecipientOutcome, RecipientStatus};

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
    /// Not a domain's MTA-STS policy not met: that is a [`Verdict::Retry`].
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
            // A domain's MTA-STS policy not met is that domain's problem
            // (or an attacker on the path), not this sender's settings: an
            // attempt, deferred on the schedule with the policy named, so
            // the message expires and its sender hears of it if it never
            // clears (RFC 8461, section 5.1).
            if matches!(
                o.error,
                Some(smtp_core::Error::Policy(PolicyError::MtaSts { .. }))
            ) {
                return Verdict::Retry {
                    attempt: a,
                    unknown: false,
                };
            }
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

/// Whether a reply says "slow down": the server limits how fast or how
/// many at once this sender may send, so the destination's limits are to
/// be lowered ([`crate::shaping`]).
///
/// A 421, 450, 451 or 452 whose enhanced code says so (Gmail's `4.7.28`,
/// Microsoft's `4.7.500`) or whose text speaks of a rate, a limit, too
/// many, throttling, slowing down, volume or a busy server. A `4.7.x`
/// alone is not: it is any security or policy refusal (a client host
/// without a name, TLS required), most of them about one message or
/// host. Not a signal either: greylisting (a recipient's first try,
/// answered `4.7.1` by many), a recipient's own mailbox (`4.2.x`: full,
/// over quota, receiving too fast), a size limit, and too many recipients
/// in one message (`4.5.3`, which the session splits).
pub(crate) fn is_rate_signal(code: u16, enhanced: Option<&str>, text: &str) -> bool {
    if !matches!(code, 421 | 450 | 451 | 452) {
        return false;
    }
    let text = text.to_ascii_lowercase();
    let greylisting = ["greylist", "graylist", "grey list", "gray list", "postgrey"]
        .iter()
        .any(|w| text.contains(w));
    let mailbox = enhanced.is_some_and(|e| e.starts_with("4.2.") || e == "4.5.3")
        || [
            "quota",
            "mailbox full",
            "too many recipients",
            "insufficient system storage",
            "size",
        ]
        .iter()
        .any(|w| text.contains(w));
    if greylisting || mailbox {
        return false;
    }
    if matches!(enhanced, Some("4.7.28" | "4.7.500")) {
        return true;
    }
    let words: Vec<&str> = text
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect();
    let word = |w: &str| words.contains(&w);
    word("rate")
        || word("rates")
        || word("busy")
        || word("volume")
        || words.iter().any(|w| w.starts_with("ratelimit"))
        || ["too many", "too fast", "slow down", "throttl", "limit"]
            .iter()
            .any(|w| text.contains(w))
}

/// The rate signal in an outcome's reply, as the reply reads (code,
/// enhanced code, text), if it is one.
pub(crate) fn rate_signal(o: &RecipientOutcome) -> Option<String> {
    let reply = o.reply.as_ref()?;
    let code = reply.code().as_u16();
    let enhanced = reply.enhanced_code().map(|e| e.to_string());
    let text = reply.text();
    is_rate_signal(code, enhanced.as_deref(), &text).then(|| match enhanced {
        Some(e) => format!("{code} {e} {text}"),
        None => format!("{code} {text}"),
    })
}

#[cfg(test)]
mod tests {
    use smtp_core::address::Mailbox;
    use smtp_core::reply::{Reply, ReplyCode};
    use smtp_core::{Phase, RecipientOutcome, RecipientStatus};

    use super::{Verdict, is_rate_signal, verdict};

    /// Real replies (as providers document or send them), and whether
    /// each says "slow down".
    const REPLIES: &[(u16, Option<&str>, &str, bool)] = &[
        (
            421,
            Some("4.7.28"),
            "[192.0.2.1] Our system has detected an unusual rate of unsolicited mail originating from your IP address. To protect our users from spam, mail sent from your IP address has been temporarily rate limited.",
            true,
        ),
        (
            421,
            Some("4.7.0"),
            "[192.0.2.1] Our system has detected an unusual rate of unsolicited mail",
            true,
        ),
        (
            451,
            Some("4.7.500"),
            "Server busy. Please try again later from [192.0.2.1]. (S77719)",
            true,
        ),
        (
            421,
            Some("4.7.0"),
            "[TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected volume or user complaints - 4.16.55.1",
            true,
        ),
        (
            421,
            Some("4.7.0"),
            "Too many concurrent SMTP connections from this IP address; please try again later.",
            true,
        ),
        (421, None, "Too many connections from your IP", true),
        (450, None, "Rate limit exceeded, try again later", true),
        (451, None, "Ratelimited: too fast", true),
        (452, Some("4.3.2"), "Connection throttled", true),
        (421, Some("4.3.2"), "Please slow down", true),
        (451, Some("4.7.0"), "rate limited", true),
        (
            451,
            Some("4.7.1"),
            "Greylisting in action, please come back later",
            false,
        ),
        (451, Some("4.7.1"), "greylisted, try again later", false),
        (
            450,
            Some("4.2.0"),
            "<b@example.net>: Recipient address rejected: Greylisted, see http://postgrey.schweikert.ch/help/example.net.html",
            false,
        ),
        (
            452,
            Some("4.2.1"),
            "The user you are trying to contact is receiving mail at a rate that prevents additional messages from being delivered.",
            false,
        ),
        (
            452,
            Some("4.2.2"),
            "The email account that you tried to reach is over quota.",
            false,
        ),
        (452, Some("4.5.3"), "Too many recipients", false),
        (
            451,
            Some("4.3.0"),
            "Temporary local problem, please try again later",
            false,
        ),
        (
            421,
            None,
            "Service not available, closing transmission channel",
            false,
        ),
        (
            451,
            None,
            "Moderated list: your message waits for approval",
            false,
        ),
        (550, Some("5.7.1"), "Rate limit exceeded permanently", false),
        (
            450,
            Some("4.7.1"),
            "Client host rejected: cannot find your hostname, [192.0.2.1]",
            false,
        ),
        (452, Some("4.3.1"), "Message size limit exceeded", false),
        (
            451,
            Some("4.7.0"),
            "Must issue a STARTTLS command first",
            false,
        ),
        (
            451,
            Some("4.7.1"),
            "Sender address rejected: domain has no MX",
            false,
        ),
        (
            454,
            Some("4.7.0"),
            "TLS not available due to local problem",
            false,
        ),
    ];

    #[test]
    fn slow_down_replies_are_told_from_greylisting_and_full_mailboxes() {
        for (code, enhanced, text, signal) in REPLIES {
            assert_eq!(
                is_rate_signal(*code, *enhanced, text),
                *signal,
                "{code} {enhanced:?} {text}"
            );
        }
    }

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

    #[test]
    fn an_mta_sts_policy_not_met_is_a_retry_naming_it_and_a_tls_policy_fault_holds() {
        let mut sts = deferred(Phase::StartTls, None);
        sts.error = Some(smtp_core::Error::Policy(smtp_core::PolicyError::MtaSts {
            policy: "MTA-STS policy of example.com (enforce)".into(),
            detail: "no STARTTLS".into(),
        }));
        match verdict(&sts, "mx1.example.com", None) {
            Verdict::Retry {
                attempt,
                unknown: false,
            } => assert!(
                attempt
                    .text
                    .contains("MTA-STS policy of example.com (enforce) not met"),
                "{}",
                attempt.text
            ),
            v => panic!("{v:?}"),
        }
        let mut own = deferred(Phase::StartTls, None);
        own.error = Some(smtp_core::Error::Policy(
            smtp_core::PolicyError::StartTlsNotOffered {
                policy: smtp_core::TlsPolicy::Required,
            },
        ));
        assert!(matches!(verdict(&own, "mx", None), Verdict::Hold(_)));
    }
}
