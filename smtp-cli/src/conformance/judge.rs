//! Judging a case by what reached the wire and the client's exit status:
//! each check either passes or says, in one line, what the client did
//! wrong.

use std::fmt;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use smtp_testkit::hostile::SessionRecord;

/// The line every test message ends with; the data must reach it before
/// its end.
pub(crate) const END_MARKER: &str = "END-OF-MESSAGE";

/// How the client's process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Exit {
    Code(i32),
    /// Killed by a signal we did not send (a crash).
    Signal(i32),
    /// Still running at the deadline; its process group was killed.
    Hung,
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Code(c) => write!(f, "{c}"),
            Self::Signal(s) => write!(f, "signal {s}"),
            Self::Hung => f.write_str("hung"),
        }
    }
}

/// What a case is judged by.
#[derive(Debug)]
pub(crate) struct Evidence {
    pub(crate) exit: Exit,
    pub(crate) sessions: Vec<SessionRecord>,
    /// What the client exceeded, if it flooded the server.
    pub(crate) flooded: Option<String>,
    /// The first line of the client's standard error.
    pub(crate) first_error_line: String,
    /// The client declared TLS required (else opportunistic).
    pub(crate) required: bool,
    pub(crate) password: String,
    pub(crate) deadline: Duration,
}

impl Evidence {
    fn delivered(&self) -> bool {
        self.sessions
            .iter()
            .any(|s| s.messages.iter().any(|m| m.accepted))
    }
}

/// One check; the `&str`s are the one-line verdicts when it fails
/// (`{exit}` and `{verb}` filled in).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Check {
    /// Finished before the deadline (every case also checks this first).
    Bounded,
    /// Stayed within the server's bounds on what it records (every case).
    NotFlooded,
    /// Connected to the case's server at all (every case).
    Connected,
    /// In required mode: AUTH and MAIL only inside TLS.
    TlsOnly,
    /// The server accepted the message.
    Delivered,
    /// The server accepted no message.
    NotDelivered,
    ExitZero(&'static str),
    ExitNonZero(&'static str),
    /// Exit 0 exactly when the message was delivered.
    Consistent,
    /// This command was never sent.
    NoCommand(&'static str, &'static str),
    /// Neither AUTH nor MAIL inside TLS.
    NoCommandInTls(&'static str),
    /// No AUTH outside TLS and the password never in the clear.
    NoSecretInClear,
    /// Nothing sent after the EHLO that followed the injection before its reply.
    NoInjection,
    /// HELO after the refused EHLO, before any MAIL (opportunistic: HELO at all).
    HeloFallback,
    /// With held replies, no body before the 354.
    NoBodyBefore354,
    /// No message data sent at all.
    NoBody(&'static str),
    /// Only CRLF in the data, and the data reaches the end marker.
    CleanData,
}

/// The first failing check's one line, or `None` when the case passes.
/// Every case first checks the client finished in time, did not flood
/// the server, and connected at all.
pub(crate) fn judge(checks: &[Check], e: &Evidence) -> Option<String> {
    [Check::Bounded, Check::NotFlooded, Check::Connected]
        .iter()
        .chain(checks)
        .find_map(|c| c.fails(e))
}

impl Check {
    fn fails(&self, e: &Evidence) -> Option<String> {
        let exit = e.exit.to_string();
        let say = |s: &str| Some(s.replace("{exit}", &exit));
        match *self {
            Self::Bounded => match e.exit {
                Exit::Hung => Some(format!(
                    "hung: still running after {} s, killed",
                    e.deadline.as_secs()
                )),
                Exit::Signal(s) => Some(format!("crashed: killed by signal {s}")),
                Exit::Code(_) => None,
            },
            Self::NotFlooded => e
                .flooded
                .as_ref()
                .map(|why| format!("flooded the server: {why} (the session was ended)")),
            Self::Connected => e.sessions.is_empty().then(|| {
                let first = crate::terminal::one_line(e.first_error_line.trim());
                if first.is_empty() {
                    "the client never connected (check the command line)".to_owned()
                } else {
                    format!("the client never connected (check the command line: {first})")
                }
            }),
            Self::TlsOnly => e
                .required
                .then(|| first_command(e, &["AUTH", "MAIL"], Some(false)))
                .flatten()
                .map(|v| format!("sent {v} outside TLS, though it requires TLS")),
            Self::Delivered => {
                (!e.delivered()).then(|| format!("did not deliver the message (exit {exit})"))
            }
            Self::NotDelivered => e
                .delivered()
                .then(|| "the server accepted a message it should not have".to_owned()),
            Self::ExitZero(s) => (e.exit != Exit::Code(0)).then(|| say(s)).flatten(),
            Self::ExitNonZero(s) => (e.exit == Exit::Code(0)).then(|| say(s)).flatten(),
            Self::Consistent => match (e.exit == Exit::Code(0), e.delivered()) {
                (true, false) => say("reported success (exit 0) but nothing was delivered"),
                (false, true) => say("exited {exit} though the message was delivered"),
                _ => None,
            },
            Self::NoCommand(verb, s) => first_command(e, &[verb], None).and(say(s)),
            Self::NoCommandInTls(s) => {
                first_command(e, &["AUTH", "MAIL"], Some(true)).map(|v| s.replace("{verb}", v))
            }
            Self::NoSecretInClear => secret_in_clear(e),
            Self::NoInjection => e.sessions.iter().any(|s| s.acted_on_injection).then(|| {
                "took the reply injected before the TLS handshake as the answer to its \
                 EHLO inside TLS"
                    .to_owned()
            }),
            Self::HeloFallback => helo_fallback(e),
            Self::NoBodyBefore354 => {
                e.sessions.iter().any(|s| s.body_before_354).then(|| {
                    "sent the message body before the 354 (pipelined past DATA)".to_owned()
                })
            }
            Self::NoBody(s) => e
                .sessions
                .iter()
                .any(|s| s.messages.iter().any(|m| !m.raw.is_empty()))
                .then(|| say(s))
                .flatten(),
            Self::CleanData => e
                .sessions
                .iter()
                .flat_map(|s| &s.messages)
                .find_map(|m| dirty(&m.raw, m.terminated)),
        }
    }
}

/// The first of `verbs` the client sent (inside TLS or not, as `tls` says).
fn first_command(e: &Evidence, verbs: &[&'static str], tls: Option<bool>) -> Option<&'static str> {
    e.sessions
        .iter()
        .flat_map(|s| &s.commands)
        .filter(|c| tls.is_none_or(|t| t == c.tls))
        .find_map(|c| {
            let v = c.verb();
            verbs.iter().copied().find(|&w| w == v)
        })
}

/// AUTH outside TLS, or the password (as is, or inside any base64 token)
/// in the client's plaintext.
fn secret_in_clear(e: &Evidence) -> Option<String> {
    let password = e.password.as_bytes();
    for s in &e.sessions {
        let clear = s.client_plaintext();
        let raw = clear.windows(password.len()).any(|w| w == password);
        let encoded = clear
            .split(|b| b.is_ascii_whitespace())
            .filter(|t| t.len() >= 8)
            .filter_map(|t| STANDARD.decode(t).ok())
            .any(|d| d.windows(password.len()).any(|w| w == password));
        if raw || encoded {
            return Some("sent the password in the clear (no TLS)".to_owned());
        }
    }
    first_command(e, &["AUTH"], Some(false))
        .map(|_| "sent AUTH in the clear (no TLS), though no password went with it".to_owned())
}

fn helo_fallback(e: &Evidence) -> Option<String> {
    for s in &e.sessions {
        let mut helo = false;
        for c in &s.commands {
            match c.verb().as_str() {
                "HELO" => helo = true,
                "MAIL" if !helo => {
                    return Some("sent MAIL FROM after EHLO was refused, without HELO".to_owned());
                }
                _ => {}
            }
        }
        if !helo && !e.required {
            return Some("did not fall back to HELO after EHLO was refused".to_owned());
        }
    }
    None
}

/// What is wrong with data as it crossed the wire, if anything.
fn dirty(raw: &[u8], terminated: bool) -> Option<String> {
    for (i, &b) in raw.iter().enumerate() {
        let prev = i.checked_sub(1).and_then(|p| raw.get(p));
        if b == b'\n' && prev != Some(&b'\r') {
            return Some(format!(
                "put a bare LF on the wire inside DATA (at octet {i}): a smuggling risk"
            ));
        }
        if b == b'\r' && raw.get(i + 1) != Some(&b'\n') {
            return Some(format!(
                "put a bare CR on the wire inside DATA (at octet {i})"
            ));
        }
    }
    let marker = END_MARKER.as_bytes();
    if !raw.windows(marker.len()).any(|w| w == marker) {
        return Some(if terminated {
            "ended the data early: CRLF.CRLF came before the end of the message".to_owned()
        } else {
            "never ended the data with CRLF.CRLF".to_owned()
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dirty_data_names_what_is_wrong() {
        assert!(dirty(b"a\r\nEND-OF-MESSAGE", true).is_none());
        assert!(
            dirty(b"a\nEND-OF-MESSAGE", true)
                .unwrap()
                .contains("bare LF")
        );
        assert!(
            dirty(b"a\rb\r\nEND-OF-MESSAGE", true)
                .unwrap()
                .contains("bare CR")
        );
        assert!(dirty(b"a\r\nb", true).unwrap().contains("early"));
        assert!(dirty(b"a\r\nb", false).unwrap().contains("never ended"));
    }
}
