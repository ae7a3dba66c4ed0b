//! Direct delivery: no relay; each recipient domain's own mail servers, on
//! port 25 (DESIGN.md "Direct delivery rules").
//!
//! Recipients are grouped by domain; domains run concurrently (bounded);
//! each domain's hosts are tried in MX order with one session carrying all
//! of its recipients. A refused connection, a timeout, a refused greeting or
//! a 4xx moves on to the next host; a 5xx to MAIL, RCPT or DATA is final.
//! When it all fails, the report says why in plain words ([`Diagnosis`]).
//!
//! [`deliver`] takes one message to every recipient domain;
//! [`deliver_batch`] takes many messages to one destination (the hosts of
//! one [`MxPlan`]) on shared sessions, as a queue does.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};

use async_trait::async_trait;
use futures_util::StreamExt;
use tracing::Instrument;

use crate::address::Mailbox;
use crate::client::{Config, Event};
use crate::delivery::mta_sts::DomainTls;
use crate::delivery::mx::{MxPlan, PlanError, PlanKind, PlannedHost, Resolver, plan};
use crate::delivery::{BodySource, TlsInfo, Transport};
use crate::envelope::{Envelope, RecipientOutcome, RecipientStatus};
use crate::error::Error;
use crate::phase::Phase;

mod batch;
mod diagnosis;
mod requirement;

pub use self::batch::{BatchReport, Decided, deliver_batch, is_final};
pub use self::diagnosis::{Diagnosis, diagnose};
pub use self::requirement::{
    NoRequirements, TlsPolicySource, TlsSession, enforce, no_allowed_host, session_results,
};

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
    /// The local address the connection was made from, when the
    /// transport tells it ([`Transport::local_addr`]); `None` when the
    /// connection failed.
    pub local: Option<SocketAddr>,
    /// `None` when a session ran; otherwise why the connection failed.
    pub failure: Option<ConnectFailure>,
    /// The session's fault, if it ended with one.
    pub error: Option<Error>,
    /// The session's TLS facts, if it got as far as TLS.
    pub tls: Option<TlsInfo>,
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
    /// The TLS requirements the domain was delivered under (MTA-STS).
    pub requirements: DomainTls,
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
    /// Message `message` (its index in the envelopes given to
    /// [`deliver_batch`]) starts sending its data on that session: from
    /// here until its final reply, the host may have it. Follows the
    /// session's [`Event::BodyWanted`], before any of the data is written.
    Data {
        /// The MX host.
        host: &'a str,
        /// The message's index.
        message: usize,
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
    deliver_under(
        resolver,
        connector,
        envelope,
        body,
        options,
        pick,
        trace,
        &NoRequirements,
    )
    .await
}

/// [`deliver_traced`] under each domain's TLS requirements from `source`
/// (MTA-STS): under `enforce`, only the MX hosts the policy allows, over
/// TLS verified for the MX host name, or deferred naming the policy.
#[allow(clippy::too_many_arguments)]
pub async fn deliver_under(
    resolver: &dyn Resolver,
    connector: &dyn Connector,
    envelope: &Envelope,
    body: BodyFactory<'_>,
    options: &DirectOptions,
    pick: &(dyn Fn(usize) -> usize + Sync),
    trace: &(dyn Fn(Trace<'_>) + Sync),
    source: &dyn TlsPolicySource,
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
        let parts = Parts {
            resolver,
            connector,
            options,
            pick,
            trace,
            source,
        };
        deliver_domain(&parts, envelope, domain, rcpts, body)
            .instrument(span)
            .await
    });
    futures_util::stream::iter(jobs)
        .buffered(options.concurrency.max(1))
        .collect()
        .await
}

/// Plans delivery to `domain`: an address literal (`[192.0.2.1]`) as
/// itself, other domains by MX ([`plan`]). `pick(n)` is the random source
/// (a number below `n`) for MX shuffling.
pub async fn plan_domain(
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

/// What every domain's delivery shares.
struct Parts<'a> {
    resolver: &'a dyn Resolver,
    connector: &'a dyn Connector,
    options: &'a DirectOptions,
    pick: &'a (dyn Fn(usize) -> usize + Sync),
    trace: &'a (dyn Fn(Trace<'_>) + Sync),
    source: &'a dyn TlsPolicySource,
}

async fn deliver_domain(
    parts: &Parts<'_>,
    envelope: &Envelope,
    domain: String,
    rcpts: Vec<Mailbox>,
    body: BodyFactory<'_>,
) -> DomainReport {
    let Parts {
        resolver,
        connector,
        options,
        pick,
        trace,
        source,
    } = *parts;
    let plan = plan_domain(resolver, &domain, options, pick).await;
    let requirements = if plan.is_ok() {
        source.domain_tls(&domain).await
    } else {
        DomainTls::default()
    };
    let mut report = DomainReport {
        domain,
        plan: plan.clone(),
        attempts: Vec::new(),
        outcomes: Vec::new(),
        host: None,
        tls: None,
        diagnosis: None,
        requirements,
    };
    let outcome_all = |rcpts: Vec<Mailbox>, phase, error: &Error, status| {
        rcpts
            .into_iter()
            .map(|r| {
                let mut o = RecipientOutcome::from_error(r, phase, error.clone());
                o.status = status;
                o
            })
            .collect()
    };
    let plan = match plan {
        Ok(p) => p,
        Err(e) => {
            let status = if e.is_permanent() {
                RecipientStatus::Rejected
            } else {
                RecipientStatus::Deferred
            };
            report.outcomes = outcome_all(rcpts, Phase::Connect, &Error::Plan(e), status);
            return report;
        }
    };
    let mut bodies = match body() {
        Ok(b) => vec![b],
        Err(e) => {
            // Without a readable body nothing can be sent anywhere.
            let error = Error::Message(crate::error::MessageError::Unreadable {
                detail: e.to_string(),
            });
            report.outcomes = outcome_all(rcpts, Phase::Data, &error, RecipientStatus::Rejected);
            return report;
        }
    };
    let applied = report.requirements.apply(&plan, options.config.tls);
    if let Some(error) = no_allowed_host(&report.requirements, &applied) {
        report.outcomes = outcome_all(rcpts, Phase::Connect, &error, RecipientStatus::Deferred);
        return report;
    }
    let mut options = options.clone();
    options.config.tls = applied.tls;
    let envelopes = [Envelope {
        to: rcpts,
        ..envelope.clone()
    }];
    let batch = deliver_batch(
        connector,
        &applied.plan,
        &envelopes,
        &mut bodies,
        &options,
        trace,
        &mut |_, _| {},
    )
    .await;
    for session in session_results(&report.requirements, &batch.attempts) {
        source.session(&report.domain, &report.requirements, &session);
    }
    report.attempts = batch.attempts;
    report.diagnosis = batch.diagnosis;
    let mut decided = batch.messages.into_iter().next().unwrap_or_default();
    enforce(&report.requirements, &mut decided);
    // The host of the session that decided last.
    if let Some(d) = decided.iter().rev().find(|d| d.host.is_some()) {
        report.host.clone_from(&d.host);
        report.tls.clone_from(&d.tls);
    }
    report.outcomes = decided.into_iter().map(|d| d.outcome).collect();
    report
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
}
