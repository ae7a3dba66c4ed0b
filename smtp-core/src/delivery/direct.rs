//! Direct delivery: no relay; each recipient domain's own mail servers, on
//! port 25 (DESIGN.md "Direct delivery rules").
//!
//! Recipients are grouped by domain; domains run concurrently (bounded);
//! each domain's hosts are tried in MX order with one session carrying all
//! of its recipients. A refused connection, a timeout, a refused greeting or
//! a 4xx moves on to the next host; a 5xx to MAIL, RCPT or DATA is final.
//! When it all fails, the report says why in plain words ([`Diagnosis`]).

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};

use async_trait::async_trait;
use futures_util::StreamExt;
use tracing::Instrument;

use crate::address::Mailbox;
use crate::client::{Client, Config, Event};
use crate::delivery::mx::{MxPlan, PlanError, PlanKind, PlannedHost, Resolver, plan};
use crate::delivery::{BodySource, TlsInfo, Transport, drive};
use crate::envelope::{Envelope, RecipientOutcome, RecipientStatus};
use crate::error::Error;
use crate::phase::Phase;

/// Why a connection attempt failed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectFailure {
    /// Nothing answered before the connect timeout (often a blocked port).
    TimedOut,
    /// The host refused the connection.
    Refused,
    /// The network said there is no route to the host, or that the
    /// network is unreachable (ICMP, or a firewall answering for it).
    Unreachable,
    /// The connection was reset while it was being made.
    Reset,
    /// Anything else (TLS failure, …).
    Other(String),
}

impl ConnectFailure {
    /// Classifies the error of a failed connect by its kind.
    pub fn from_io(error: &io::Error) -> Self {
        match error.kind() {
            io::ErrorKind::TimedOut => Self::TimedOut,
            io::ErrorKind::ConnectionRefused => Self::Refused,
            io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable => Self::Unreachable,
            io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted => Self::Reset,
            _ => Self::Other(error.to_string()),
        }
    }

    /// True for what a network blocking the port looks like from here:
    /// silence, a refusal, no route or a reset.
    pub fn looks_blocked(&self) -> bool {
        matches!(
            self,
            Self::TimedOut | Self::Refused | Self::Unreachable | Self::Reset
        )
    }
}

impl fmt::Display for ConnectFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TimedOut => f.write_str("no answer (connection timed out)"),
            Self::Refused => f.write_str("connection refused"),
            Self::Unreachable => f.write_str("no route to the host (network unreachable)"),
            Self::Reset => f.write_str("connection reset"),
            Self::Other(why) => f.write_str(why),
        }
    }
}

/// Opens connections to mail exchangers (`smtp-tls` implements it on tokio).
#[async_trait]
pub trait Connector: Send + Sync {
    /// Connects to `addr` on `port`; `host` is the MX host name, against which
    /// a Certified policy checks the certificate.
    async fn connect(
        &self,
        host: &str,
        addr: SocketAddr,
    ) -> Result<Box<dyn Transport>, ConnectFailure>;
}

/// Makes a fresh reader of the message for each domain's session.
pub type BodyFactory<'a> = &'a (dyn Fn() -> io::Result<Box<dyn BodySource>> + Sync);

/// How to deliver directly.
#[derive(Clone, Debug)]
pub struct DirectOptions {
    /// The client configuration for every session (EHLO name, policy, timeouts).
    pub config: Config,
    /// The port to connect to (25; tests use others).
    pub port: u16,
    /// Addresses tried per domain.
    pub max_addresses: usize,
    /// Domains delivered at once.
    pub concurrency: usize,
}

impl DirectOptions {
    /// Port 25, 5 addresses per domain, 4 domains at once.
    pub fn new(config: Config) -> Self {
        Self {
            config,
            port: 25,
            max_addresses: 5,
            concurrency: 4,
        }
    }
}

/// One connection attempt and what came of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attempt {
    /// The MX host.
    pub host: String,
    /// The address.
    pub addr: SocketAddr,
    /// `None` when a session ran; otherwise why the connection failed.
    pub failure: Option<ConnectFailure>,
    /// The session's fault, if it ended with one.
    pub error: Option<Error>,
}

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

/// What became of one domain.
#[derive(Clone, Debug)]
pub struct DomainReport {
    /// The domain (A-label form).
    pub domain: String,
    /// The plan, or why there was none.
    pub plan: Result<MxPlan, PlanError>,
    /// Every connection attempt, in order.
    pub attempts: Vec<Attempt>,
    /// Each recipient's outcome, in envelope order.
    pub outcomes: Vec<RecipientOutcome>,
    /// The host whose session decided, if any.
    pub host: Option<String>,
    /// That session's TLS facts.
    pub tls: Option<TlsInfo>,
    /// Why it failed, when that can be said.
    pub diagnosis: Option<Diagnosis>,
}

/// Delivers one message to every recipient's own mail servers. `pick(n)`
/// is the random source (a number below `n`) for MX shuffling.
pub async fn deliver(
    resolver: &dyn Resolver,
    connector: &dyn Connector,
    envelope: &Envelope,
    body: BodyFactory<'_>,
    options: &DirectOptions,
    pick: &(dyn Fn(usize) -> usize + Sync),
) -> Vec<DomainReport> {
    deliver_traced(resolver, connector, envelope, body, options, pick, &|_| {}).await
}

/// What direct delivery is doing, as it happens: for a transcript (`-v`).
#[derive(Debug)]
#[non_exhaustive]
pub enum Trace<'a> {
    /// Connecting to an address of an MX host.
    Connecting {
        /// The MX host.
        host: &'a str,
        /// The address.
        addr: SocketAddr,
    },
    /// That connection failed.
    ConnectFailed {
        /// The MX host.
        host: &'a str,
        /// The address.
        addr: SocketAddr,
        /// Why.
        failure: &'a ConnectFailure,
    },
    /// The connection is open; a session starts.
    Connected {
        /// The MX host.
        host: &'a str,
        /// The address.
        addr: SocketAddr,
    },
    /// An event of that session (transcript lines among them).
    Session {
        /// The MX host.
        host: &'a str,
        /// The event.
        event: &'a Event,
    },
    /// The session is over and the connection closed.
    Closed {
        /// The MX host.
        host: &'a str,
        /// The address.
        addr: SocketAddr,
    },
}

/// [`deliver`], telling `trace` what happens as it happens (domains run
/// concurrently, so traces of different domains interleave).
pub async fn deliver_traced(
    resolver: &dyn Resolver,
    connector: &dyn Connector,
    envelope: &Envelope,
    body: BodyFactory<'_>,
    options: &DirectOptions,
    pick: &(dyn Fn(usize) -> usize + Sync),
    trace: &(dyn Fn(Trace<'_>) + Sync),
) -> Vec<DomainReport> {
    let mut domains: BTreeMap<String, Vec<Mailbox>> = BTreeMap::new();
    for rcpt in &envelope.to {
        domains
            .entry(rcpt.domain().as_str().to_owned())
            .or_default()
            .push(rcpt.clone());
    }
    let jobs = domains.into_iter().map(|(domain, rcpts)| async move {
        let span = tracing::info_span!("smtp.direct", domain = %domain);
        deliver_domain(
            resolver, connector, envelope, domain, rcpts, body, options, pick, trace,
        )
        .instrument(span)
        .await
    });
    futures_util::stream::iter(jobs)
        .buffered(options.concurrency.max(1))
        .collect()
        .await
}

/// Plans an address literal (`[192.0.2.1]`) as itself, other domains by MX.
async fn plan_domain(
    resolver: &dyn Resolver,
    domain: &str,
    options: &DirectOptions,
    pick: &(dyn Fn(usize) -> usize + Sync),
) -> Result<MxPlan, PlanError> {
    let literal = domain.strip_prefix('[').and_then(|d| d.strip_suffix(']'));
    if let Some(literal) = literal {
        let ip: Option<IpAddr> = literal.trim_start_matches("IPv6:").parse().ok();
        return match ip {
            Some(ip) => Ok(MxPlan {
                domain: domain.to_owned(),
                kind: PlanKind::ImplicitMx,
                hosts: vec![PlannedHost {
                    name: literal.to_owned(),
                    preference: 0,
                    addresses: vec![ip],
                    error: None,
                }],
            }),
            None => Err(PlanError::NoAddresses {
                domain: domain.to_owned(),
            }),
        };
    }
    let mut pick = |n| pick(n);
    plan(resolver, domain, &mut pick, options.max_addresses).await
}

#[allow(clippy::too_many_arguments)]
async fn deliver_domain(
    resolver: &dyn Resolver,
    connector: &dyn Connector,
    envelope: &Envelope,
    domain: String,
    rcpts: Vec<Mailbox>,
    body: BodyFactory<'_>,
    options: &DirectOptions,
    pick: &(dyn Fn(usize) -> usize + Sync),
    trace: &(dyn Fn(Trace<'_>) + Sync),
) -> DomainReport {
    let plan = plan_domain(resolver, &domain, options, pick).await;
    let mut report = DomainReport {
        domain,
        plan: plan.clone(),
        attempts: Vec::new(),
        outcomes: Vec::new(),
        host: None,
        tls: None,
        diagnosis: None,
    };
    let plan = match plan {
        Ok(p) => p,
        Err(e) => {
            let error = Error::Plan(e.clone());
            report.outcomes = rcpts
                .into_iter()
                .map(|r| {
                    let mut o = RecipientOutcome::from_error(r, Phase::Connect, error.clone());
                    o.status = if e.is_permanent() {
                        RecipientStatus::Rejected
                    } else {
                        RecipientStatus::Deferred
                    };
                    o
                })
                .collect();
            return report;
        }
    };
    // Outcomes decided so far, by recipient; the rest go to the next host.
    let mut decided: BTreeMap<usize, RecipientOutcome> = BTreeMap::new();
    let mut last: BTreeMap<usize, RecipientOutcome> = BTreeMap::new();
    for (host, ip) in plan.attempts() {
        let pending: Vec<usize> = (0..rcpts.len())
            .filter(|i| !decided.contains_key(i))
            .collect();
        if pending.is_empty() {
            break;
        }
        let addr = SocketAddr::new(ip, options.port);
        trace(Trace::Connecting { host, addr });
        let mut transport = match connector.connect(host, addr).await {
            Ok(t) => t,
            Err(failure) => {
                tracing::info!(host, %addr, %failure, "cannot connect");
                trace(Trace::ConnectFailed {
                    host,
                    addr,
                    failure: &failure,
                });
                report.attempts.push(Attempt {
                    host: host.to_owned(),
                    addr,
                    failure: Some(failure),
                    error: None,
                });
                continue;
            }
        };
        let now = transport.now();
        let mut client = Client::new(options.config.clone(), now);
        let to: Vec<Mailbox> = pending.iter().map(|&i| rcpts[i].clone()).collect();
        let env = Envelope {
            to,
            ..envelope.clone()
        };
        let mut bodies: Vec<Box<dyn BodySource>> = match body() {
            Ok(b) => vec![b],
            Err(e) => {
                // Without a readable body nothing can be sent anywhere.
                let error = Error::Message(crate::error::MessageError::Unreadable {
                    detail: e.to_string(),
                });
                for &i in &pending {
                    decided.insert(
                        i,
                        RecipientOutcome::from_error(rcpts[i].clone(), Phase::Data, error.clone()),
                    );
                }
                break;
            }
        };
        // Cannot fail: the envelope has recipients and the session is new.
        let _ = client.send(now, env);
        client.quit(now);
        trace(Trace::Connected { host, addr });
        let session = drive(
            &mut client,
            transport.as_mut(),
            &mut bodies,
            &mut |event: &Event| trace(Trace::Session { host, event }),
        )
        .instrument(tracing::info_span!("smtp.session", host, %addr))
        .await;
        trace(Trace::Closed { host, addr });
        report.attempts.push(Attempt {
            host: host.to_owned(),
            addr,
            failure: None,
            error: session.error.clone(),
        });
        report.host = Some(host.to_owned());
        report.tls = session.tls.clone();
        let outcomes = session
            .messages
            .into_iter()
            .next()
            .map(|m| m.recipients)
            .unwrap_or_default();
        for (k, outcome) in outcomes.into_iter().enumerate() {
            let Some(&i) = pending.get(k) else { continue };
            // Final: accepted, refused for good once the server has let us
            // through to the transaction, or an unknown outcome (this host
            // may have the message: another would deliver it twice).
            // Anything else (greeting, EHLO, TLS, 4xx, timeouts) is for the
            // next host to try.
            let final_ = outcome.status == RecipientStatus::Accepted
                || (outcome.status == RecipientStatus::Rejected
                    && outcome.phase.is_transaction()
                    && outcome.reply.is_some())
                || matches!(
                    outcome.error,
                    Some(Error::Message(_) | Error::OutcomeUnknown { .. })
                );
            if final_ {
                decided.insert(i, outcome);
            } else {
                last.insert(i, outcome);
            }
        }
    }
    let connect_failures: Vec<String> = report
        .attempts
        .iter()
        .filter_map(|a| {
            a.failure
                .as_ref()
                .map(|f| format!("{} ({}): {f}", a.host, a.addr))
        })
        .collect();
    report.outcomes = (0..rcpts.len())
        .map(|i| {
            decided
                .remove(&i)
                .or_else(|| last.remove(&i))
                .unwrap_or_else(|| {
                    let detail = if connect_failures.is_empty() {
                        "no mail server could be tried".to_owned()
                    } else {
                        connect_failures.join("; ")
                    };
                    RecipientOutcome::from_error(
                        rcpts[i].clone(),
                        Phase::Connect,
                        Error::Connect { detail },
                    )
                })
        })
        .collect();
    report.diagnosis = diagnose(&report, options.port);
    report
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

fn diagnose(report: &DomainReport, port: u16) -> Option<Diagnosis> {
    // A session that ended before any greeting is what an intercepting or
    // resetting middlebox looks like: it counts as blocked too.
    let blocked = report
        .attempts
        .iter()
        .all(|a| match (&a.failure, &a.error) {
            (Some(f), _) => f.looks_blocked(),
            (None, Some(Error::ConnectionClosed { phase } | Error::Timeout { phase, .. })) => {
                *phase == Phase::Greeting
            }
            (None, _) => false,
        });
    if !report.attempts.is_empty() && blocked {
        return Some(Diagnosis::Port25Blocked { port });
    }
    let texts = report
        .outcomes
        .iter()
        .filter(|o| o.status != RecipientStatus::Accepted)
        .filter_map(|o| o.reply.as_ref().map(crate::reply::Reply::text))
        .chain(report.attempts.iter().filter_map(|a| {
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
    use super::*;

    #[test]
    fn connect_errors_are_classified_by_kind() {
        let kind = |k| ConnectFailure::from_io(&io::Error::from(k));
        assert_eq!(
            kind(io::ErrorKind::ConnectionRefused),
            ConnectFailure::Refused
        );
        assert_eq!(kind(io::ErrorKind::TimedOut), ConnectFailure::TimedOut);
        assert_eq!(
            kind(io::ErrorKind::HostUnreachable),
            ConnectFailure::Unreachable
        );
        assert_eq!(
            kind(io::ErrorKind::NetworkUnreachable),
            ConnectFailure::Unreachable
        );
        assert_eq!(kind(io::ErrorKind::ConnectionReset), ConnectFailure::Reset);
        assert!(kind(io::ErrorKind::HostUnreachable).looks_blocked());
        assert!(!kind(io::ErrorKind::PermissionDenied).looks_blocked());
    }

    #[test]
    fn no_route_to_every_host_is_diagnosed_as_a_blocked_port() {
        let attempt = |last: u8, failure| Attempt {
            host: format!("mx{last}.example.net"),
            addr: SocketAddr::from(([192, 0, 2, last], 25)),
            failure: Some(failure),
            error: None,
        };
        let mut report = DomainReport {
            domain: "example.net".into(),
            plan: Err(PlanError::NoAddresses {
                domain: "example.net".into(),
            }),
            attempts: vec![
                attempt(1, ConnectFailure::Unreachable),
                attempt(2, ConnectFailure::Reset),
            ],
            outcomes: Vec::new(),
            host: None,
            tls: None,
            diagnosis: None,
        };
        assert_eq!(
            diagnose(&report, 25),
            Some(Diagnosis::Port25Blocked { port: 25 })
        );
        // One host that answered is not a blocked port.
        report.attempts.push(Attempt {
            failure: None,
            error: None,
            ..attempt(3, ConnectFailure::Refused)
        });
        assert_eq!(diagnose(&report, 25), None);
    }
}
