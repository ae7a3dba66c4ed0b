//! A destination's TLS requirements from outside the session's own
//! policy: MTA-STS (RFC 8461) now, DANE later. A [`TlsPolicySource`] says
//! what a domain's sessions run under ([`DomainTls`]) and hears how each
//! session went (for TLS-RPT, RFC 8460); [`enforce`] turns the failures an
//! `enforce` policy causes into refusals that name it.

use std::net::IpAddr;

use async_trait::async_trait;

use super::{Attempt, Decided};
use crate::delivery::mta_sts::{Applied, DomainTls, Mode, session_result};
use crate::delivery::tls_rpt::ResultType;
use crate::delivery::{TlsFailureKind, TlsInfo};
use crate::envelope::RecipientStatus;
use crate::error::{Error, PolicyError};

/// Where domains' TLS requirements come from.
#[async_trait]
pub trait TlsPolicySource: Send + Sync {
    /// What `domain`'s sessions run under. Never fails: a policy that
    /// cannot be had is no policy (or the cached one), with the problem
    /// noted in [`DomainTls::problem`].
    async fn domain_tls(&self, domain: &str) -> DomainTls;

    /// A session for `domain` under `tls` ended as `session` says (its
    /// host, result, and the addresses at both ends when known).
    fn session(&self, domain: &str, tls: &DomainTls, session: &TlsSession) {
        let _ = (domain, tls, session);
    }
}

/// One session as TLS-RPT counts it (RFC 8460 section 4.3): the MX host,
/// the result, and the addresses of the connection when there was one.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct TlsSession {
    /// The MX host (`receiving-mx-hostname`).
    pub host: String,
    /// The result.
    pub result: ResultType,
    /// The address connected to (`receiving-ip`); `None` without a
    /// connection (a host the policy left out).
    pub receiving_ip: Option<IpAddr>,
    /// The local address it was connected from (`sending-mta-ip`), when
    /// the transport told it.
    pub sending_ip: Option<IpAddr>,
}

impl TlsSession {
    /// A session to `host` that ended with `result`, its addresses unknown.
    pub fn new(host: impl Into<String>, result: ResultType) -> Self {
        Self {
            host: host.into(),
            result,
            receiving_ip: None,
            sending_ip: None,
        }
    }

    /// The addresses at both ends: `receiving` connected to, from `sending`.
    #[must_use]
    pub fn with_addresses(mut self, receiving: Option<IpAddr>, sending: Option<IpAddr>) -> Self {
        self.receiving_ip = receiving;
        self.sending_ip = sending;
        self
    }
}

/// No requirements: every domain as without a policy.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoRequirements;

#[async_trait]
impl TlsPolicySource for NoRequirements {
    async fn domain_tls(&self, _domain: &str) -> DomainTls {
        DomainTls::default()
    }
}

/// Each session's result under a policy, with its host and addresses,
/// for every attempt that got as far as a session (a refused connection
/// says nothing about TLS). Nothing without a policy.
pub fn session_results(tls: &DomainTls, attempts: &[Attempt]) -> Vec<TlsSession> {
    if tls.mta_sts.is_none() {
        return Vec::new();
    }
    let named = |host: &str| {
        tls.mta_sts
            .as_ref()
            .is_none_or(|p| p.policy.mode == Mode::None || p.policy.allows(host))
    };
    attempts
        .iter()
        .filter(|a| a.failure.is_none())
        .map(|a| {
            // A host the policy does not name (tried only under
            // `testing`) fails it, however good its TLS.
            let result = if named(&a.host) {
                session_result(&a.host, a.tls.as_ref(), a.error.as_ref())
            } else {
                ResultType::ValidationFailure
            };
            TlsSession::new(a.host.clone(), result)
                .with_addresses(Some(a.addr.ip()), a.local.map(|l| l.ip()))
        })
        .collect()
}

/// The refusal for every recipient when `enforce` leaves no host to try.
pub fn no_allowed_host(tls: &DomainTls, applied: &Applied) -> Option<Error> {
    if !applied.plan.hosts.is_empty() {
        return None;
    }
    let patterns = tls.mta_sts.as_ref().map_or_else(String::new, |p| {
        some(
            &p.policy
                .mx
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
        )
    });
    tls.refusal(&format!(
        "none of the MX hosts ({}) matches the policy's mx patterns ({patterns})",
        some(&applied.excluded)
    ))
}

/// The first few of `items`, and how many more: a refusal is recorded
/// with each attempt, and a domain's DNS or policy can list thousands.
fn some(items: &[String]) -> String {
    const SHOWN: usize = 5;
    let mut text = items
        .iter()
        .take(SHOWN)
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    if items.len() > SHOWN {
        text.push_str(&format!(" and {} more", items.len() - SHOWN));
    }
    text
}

/// Under `enforce`: every recipient left undelivered by a TLS failure
/// (no STARTTLS, a refused STARTTLS, a certificate that did not verify)
/// gets the policy's refusal instead, deferred.
pub fn enforce(tls: &DomainTls, decided: &mut [Decided]) {
    if !tls.enforced() {
        return;
    }
    for d in decided {
        let tls_failure = matches!(
            d.outcome.error,
            Some(
                Error::Tls(_)
                    | Error::Policy(
                        PolicyError::StartTlsNotOffered { .. }
                            | PolicyError::StartTlsRefused { .. }
                    )
            )
        );
        if d.outcome.status != RecipientStatus::Accepted && tls_failure {
            let host = d.host.as_deref().unwrap_or("the MX host");
            let cause = unmet(host, d.tls.as_ref(), d.outcome.error.as_ref());
            d.outcome.error = tls.refusal(&cause);
            d.outcome.status = RecipientStatus::Deferred;
        }
    }
}

/// What `host` lacked, in the policy's terms. Not the TLS error's own
/// advice (another `--tls`, pinning a certificate): no setting of the
/// sender's changes what the domain's policy requires.
fn unmet(host: &str, tls: Option<&TlsInfo>, error: Option<&Error>) -> String {
    let names = || {
        tls.and_then(|t| t.certificate.as_ref())
            .filter(|c| !c.names.is_empty())
            .map(|c| format!(" (it names {})", c.names.join(", ")))
            .unwrap_or_default()
    };
    let result = session_result(host, tls, error);
    let what = match result {
        ResultType::StartTlsNotSupported => "offers no STARTTLS".to_owned(),
        ResultType::CertificateHostMismatch => {
            format!("presents a certificate not valid for its name{}", names())
        }
        ResultType::CertificateExpired => "presents an expired certificate".to_owned(),
        ResultType::CertificateNotTrusted => {
            "presents a certificate not signed by a trusted authority".to_owned()
        }
        _ => match error {
            Some(Error::Tls(f)) if f.kind == TlsFailureKind::TimedOut => {
                "did not finish the TLS handshake in time".to_owned()
            }
            Some(Error::Tls(f)) if f.kind == TlsFailureKind::PlaintextPeer => {
                "answered in plaintext after STARTTLS".to_owned()
            }
            _ => "failed the TLS handshake".to_owned(),
        },
    };
    format!("{host} {what} ({result})")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::address::Mailbox;
    use crate::delivery::mta_sts::{InForce, MxPattern, Policy};
    use crate::delivery::{CertificateFault, PeerCertificate};
    use crate::envelope::RecipientOutcome;
    use crate::phase::Phase;
    use crate::policy::TlsPolicy;

    fn enforced() -> DomainTls {
        under(Mode::Enforce)
    }

    fn under(mode: Mode) -> DomainTls {
        DomainTls {
            mta_sts: Some(InForce {
                domain: "example.com".into(),
                id: "1".into(),
                policy: Policy {
                    mode,
                    mx: vec![MxPattern::parse("*.example.com").unwrap()],
                    max_age: 86400,
                },
                fetched_at: 0,
                expires_at: u64::MAX,
                from_cache: false,
            }),
            problem: None,
        }
    }

    fn decided(error: Error, tls: Option<TlsInfo>) -> Decided {
        Decided {
            outcome: RecipientOutcome {
                recipient: Mailbox::parse("rcpt@example.com").unwrap(),
                status: RecipientStatus::Deferred,
                phase: Phase::StartTls,
                reply: None,
                error: Some(error),
            },
            host: Some("mx1.example.com".into()),
            tls,
        }
    }

    /// The refusal names the policy and what the host lacked, never the
    /// TLS error's advice about the sender's own settings.
    #[test]
    fn a_refusal_says_what_the_host_lacked_without_advice_about_settings() {
        let mismatch = TlsInfo {
            verified: false,
            verify_error: Some("… or use --tls required to encrypt without verifying".into()),
            verify_fault: Some(CertificateFault::NameMismatch),
            certificate: Some(PeerCertificate {
                names: vec!["wrong.example.net".into()],
                ..PeerCertificate::default()
            }),
            ..TlsInfo::default()
        };
        let cases = [
            (
                decided(
                    Error::Policy(PolicyError::StartTlsNotOffered {
                        policy: TlsPolicy::Certified,
                    }),
                    None,
                ),
                "mx1.example.com offers no STARTTLS (starttls-not-supported)",
            ),
            (
                decided(
                    Error::Tls(crate::delivery::TlsFailure::new(
                        TlsFailureKind::Certificate,
                        "use --tls required",
                    )),
                    Some(mismatch),
                ),
                "mx1.example.com presents a certificate not valid for its name \
                 (it names wrong.example.net) (certificate-host-mismatch)",
            ),
        ];
        for (mut d, want) in cases {
            enforce(&enforced(), std::slice::from_mut(&mut d));
            let text = d.outcome.error.unwrap().to_string();
            assert!(
                text.starts_with("MTA-STS policy of example.com (enforce) not met: "),
                "{text}"
            );
            assert!(text.contains(want), "{text}");
            assert!(
                !text.contains("--tls") && !text.contains("policy optional"),
                "{text}"
            );
            assert_eq!(d.outcome.status, RecipientStatus::Deferred);
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn attempt(host: &str, tls: Option<TlsInfo>, error: Option<Error>) -> Attempt {
        Attempt {
            host: host.into(),
            addr: "127.0.0.1:25".parse().unwrap(),
            local: Some("127.0.0.9:40000".parse().unwrap()),
            failure: None,
            error,
            tls,
        }
    }

    #[test]
    fn session_results_count_an_unnamed_host_and_a_refused_certificate_as_failures() {
        let verified = TlsInfo {
            verified: true,
            ..TlsInfo::default()
        };
        // Under testing, a host the policy does not name fails it, however
        // good its TLS; a named one with verified TLS succeeds.
        let results = session_results(
            &under(Mode::Testing),
            &[
                attempt("evil.attacker.test", Some(verified.clone()), None),
                attempt("mx1.example.com", Some(verified.clone()), None),
            ],
        );
        let addresses = (Some(ip("127.0.0.1")), Some(ip("127.0.0.9")));
        assert_eq!(
            results,
            [
                TlsSession::new("evil.attacker.test", ResultType::ValidationFailure)
                    .with_addresses(addresses.0, addresses.1),
                TlsSession::new("mx1.example.com", ResultType::Success)
                    .with_addresses(addresses.0, addresses.1),
            ]
        );
        // Under mode none nothing is unnamed.
        let results = session_results(
            &under(Mode::None),
            &[attempt("evil.attacker.test", Some(verified), None)],
        );
        assert_eq!(results[0].result, ResultType::Success);
        // A transport that does not tell its local address: no sending IP,
        // the receiving one still known.
        let mut untold = attempt("mx1.example.com", None, None);
        untold.local = None;
        let results = session_results(&enforced(), &[untold]);
        assert_eq!(results[0].receiving_ip, Some(ip("127.0.0.1")));
        assert_eq!(results[0].sending_ip, None);
        // A connection that failed is no session.
        let mut refused = attempt("mx1.example.com", None, None);
        refused.failure = Some(super::super::ConnectFailure::Refused);
        assert!(session_results(&enforced(), &[refused]).is_empty());
        // A certificate refused in the handshake (Certified throughout):
        // by why it was refused.
        for (fault, want) in [
            (CertificateFault::Expired, ResultType::CertificateExpired),
            (
                CertificateFault::NameMismatch,
                ResultType::CertificateHostMismatch,
            ),
            (
                CertificateFault::NotTrusted,
                ResultType::CertificateNotTrusted,
            ),
        ] {
            let refused = crate::delivery::TlsFailure::new(TlsFailureKind::Certificate, "x")
                .with_certificate_fault(Some(fault));
            let results = session_results(
                &enforced(),
                &[attempt("mx1.example.com", None, Some(Error::Tls(refused)))],
            );
            assert_eq!(results[0].result, want, "{fault:?}");
        }
    }

    #[test]
    fn a_refusal_for_no_allowed_host_names_a_few_hosts_and_counts_the_rest() {
        let plan = crate::delivery::mx::MxPlan {
            domain: "example.com".into(),
            kind: crate::delivery::mx::PlanKind::Mx,
            hosts: (0..300)
                .map(|i| crate::delivery::mx::PlannedHost {
                    name: format!("mx{i}.elsewhere.test"),
                    preference: 10,
                    addresses: vec!["127.0.0.1".parse().unwrap()],
                    error: None,
                })
                .collect(),
        };
        let tls = enforced();
        let applied = tls.apply(&plan, TlsPolicy::Optional);
        let text = no_allowed_host(&tls, &applied).unwrap().to_string();
        assert!(text.contains("mx4.elsewhere.test and 295 more"), "{text}");
        assert!(!text.contains("mx5.elsewhere.test"), "{text}");
        assert!(text.len() < 400, "{}", text.len());
    }
}
