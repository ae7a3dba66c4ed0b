//! [`Diagnosis`]: why a destination could not be reached, in plain words
//! (a blocked port 25, a blocklist, missing reverse DNS).

use std::fmt;

use super::Attempt;
use crate::envelope::{RecipientOutcome, RecipientStatus};
use crate::error::Error;
use crate::phase::Phase;

/// The likely reason a domain could not be reached, in plain words.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Diagnosis {
    /// Every attempt on port 25 timed out, was refused, found no route, or
    /// was closed or reset before the server's greeting.
    Port25Blocked {
        /// The port tried.
        port: u16,
    },
    /// A server's refusal names a blocklist.
    Blocklisted {
        /// The server's words.
        text: String,
    },
    /// A server's refusal is about reverse DNS of this machine's address.
    NoReverseDns {
        /// The server's words.
        text: String,
    },
}

impl fmt::Display for Diagnosis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Port25Blocked { port } => write!(
                f,
                "no mail server answered on port {port} (every connection timed out, was refused, \
                 found no route, or was closed before the server's greeting): outbound port \
                 {port} is probably blocked or intercepted by your network or provider (most \
                 home and cloud networks do this). Use standard delivery through a submission \
                 server instead (port 587 or 465)"
            ),
            Self::Blocklisted { text } => write!(
                f,
                "the receiving server refused this machine's address because it is on a \
                 blocklist ({text}). Mail from dynamic or residential addresses is commonly \
                 refused; use standard delivery through your provider's submission server"
            ),
            Self::NoReverseDns { text } => write!(
                f,
                "the receiving server refused this machine because its address has no matching \
                 reverse DNS ({text}). Send through a submission server, or give this host a \
                 PTR record matching its EHLO name"
            ),
        }
    }
}

/// Words in a refusal that name a blocklist.
const BLOCKLIST_WORDS: [&str; 10] = [
    "spamhaus",
    "blocklist",
    "blacklist",
    "block list",
    "black list",
    "dnsbl",
    "rbl",
    "pbl",
    "barracuda",
    "listed",
];
/// Words in a refusal about reverse DNS.
const RDNS_WORDS: [&str; 4] = ["reverse dns", "rdns", "ptr", "reverse lookup"];

/// The likely reason, from every connection attempt and the outcomes of
/// the recipients not accepted. Direct delivery says it in its report; a
/// check of the set-up that only connects (`smtp doctor`) passes its
/// attempts and no outcomes, to say the same thing the same way.
pub fn diagnose<'a>(
    attempts: &[Attempt],
    refused: impl IntoIterator<Item = &'a RecipientOutcome>,
    port: u16,
) -> Option<Diagnosis> {
    // A session that ended before any greeting is what an intercepting or
    // resetting middlebox looks like: it counts as blocked too.
    let blocked = attempts.iter().all(|a| match (&a.failure, &a.error) {
        (Some(f), _) => f.looks_blocked(),
        (None, Some(Error::ConnectionClosed { phase } | Error::Timeout { phase, .. })) => {
            *phase == Phase::Greeting
        }
        (None, _) => false,
    });
    if !attempts.is_empty() && blocked {
        return Some(Diagnosis::Port25Blocked { port });
    }
    let texts = refused
        .into_iter()
        .filter(|o| o.status != RecipientStatus::Accepted)
        .filter_map(|o| o.reply.as_ref().map(crate::reply::Reply::text))
        .chain(attempts.iter().filter_map(|a| {
            a.error
                .as_ref()
                .and_then(Error::reply)
                .map(crate::reply::Reply::text)
        }));
    for text in texts {
        let lower = text.to_ascii_lowercase();
        if BLOCKLIST_WORDS.iter().any(|w| lower.contains(w)) {
            return Some(Diagnosis::Blocklisted { text });
        }
        if RDNS_WORDS.iter().any(|w| lower.contains(w)) {
            return Some(Diagnosis::NoReverseDns { text });
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::delivery::direct::ConnectFailure;

    #[test]
    fn no_route_to_every_host_is_diagnosed_as_a_blocked_port() {
        let attempt = |last: u8, failure| Attempt {
            host: format!("mx{last}.example.net"),
            addr: SocketAddr::from(([192, 0, 2, last], 25)),
            local: None,
            failure: Some(failure),
            error: None,
            tls: None,
        };
        let mut attempts = vec![
            attempt(1, ConnectFailure::Unreachable),
            attempt(2, ConnectFailure::Reset),
        ];
        assert_eq!(
            diagnose(&attempts, &[], 25),
            Some(Diagnosis::Port25Blocked { port: 25 })
        );
        // One host that answered is not a blocked port.
        attempts.push(Attempt {
            failure: None,
            error: None,
            ..attempt(3, ConnectFailure::Refused)
        });
        assert_eq!(diagnose(&attempts, &[], 25), None);
    }
}
