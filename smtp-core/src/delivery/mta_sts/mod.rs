//! SMTP MTA Strict Transport Security (RFC 8461), the parts without IO.
//!
//! A domain publishes `_mta-sts.<domain>` TXT (`v=STSv1; id=…`,
//! [`record`]) and a policy file at
//! `https://mta-sts.<domain>/.well-known/mta-sts.txt` ([`policy`]). A
//! sender that holds the policy ([`InForce`]):
//!
//! - `enforce`: delivers only to MX hosts matching the policy's `mx`
//!   patterns, only over TLS with a certificate verified for the MX host
//!   name (the Certified policy); otherwise not at all (deferred);
//! - `testing`: delivers as without a policy, and reports what would have
//!   failed (TLS-RPT, [`crate::delivery::tls_rpt`]);
//! - `none`: as without a policy.
//!
//! [`refresh`] decides, from the cache and the TXT record, whether the
//! policy must be fetched again; [`DomainTls`] is what a domain's sessions
//! run under, fetched or not, and [`DomainTls::apply`] restricts an
//! [`MxPlan`] to it. Fetching and caching are the caller's (`smtp-queue`).

use std::fmt;

use crate::delivery::mx::MxPlan;
use crate::delivery::tls_rpt::ResultType;
use crate::delivery::{CertificateFault, TlsFailureKind, TlsInfo};
use crate::error::{Error, PolicyError};
use crate::policy::TlsPolicy;

pub mod policy;
pub mod record;

pub use self::policy::{
    MAX_AGE_LIMIT, MAX_POLICY_SIZE, Mode, MxPattern, Policy, PolicyError as PolicyFileError,
};
pub use self::record::{RecordError, StsRecord};

/// The shortest time a policy is cached, whatever its `max_age` says: a
/// domain cannot make every delivery fetch it again.
pub const MIN_CACHE_SECS: u64 = 3600;

/// The `max_age` a cache keeps a policy for: within [`MIN_CACHE_SECS`] and
/// [`MAX_AGE_LIMIT`].
pub fn clamp_max_age(max_age: u64) -> u64 {
    max_age.clamp(MIN_CACHE_SECS, MAX_AGE_LIMIT)
}

/// A policy a sender holds for a domain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InForce {
    /// The policy domain (the recipient domain).
    pub domain: String,
    /// The TXT record's id it was fetched under.
    pub id: String,
    /// The policy.
    pub policy: Policy,
    /// When it was fetched (seconds since the Unix epoch).
    pub fetched_at: u64,
    /// When it expires (fetched + clamped max_age).
    pub expires_at: u64,
    /// Taken from the cache rather than fetched now.
    pub from_cache: bool,
}

impl InForce {
    /// "MTA-STS policy of example.com (enforce)".
    pub fn label(&self) -> String {
        format!("MTA-STS policy of {} ({})", self.domain, self.policy.mode)
    }
}

/// What to do about a domain's policy, given the cache and its TXT record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refresh {
    /// The cached policy is current: use it.
    UseCached,
    /// Fetch the policy (the id changed, nothing is cached, or the cache
    /// expired); on failure, fall back to the cached one if it has not
    /// expired.
    Fetch {
        /// The id of the TXT record to store with it.
        id: String,
    },
    /// No TXT record and nothing cached (or what is cached expired): the
    /// domain has no policy.
    NoPolicy,
}

/// RFC 8461 §5.1: a cached policy is used until it expires; a TXT record
/// whose id differs from the cached one means a new policy to fetch; no
/// valid TXT record leaves a cached policy in force until it expires.
/// A policy past half its life is fetched again even under the same id
/// (section 10.2 asks senders to refresh before expiry): otherwise it
/// would lapse on schedule, and an attacker who then blocks the fetch
/// would have the domain unprotected. A failed refresh keeps it.
pub fn refresh(cached: Option<&InForce>, record: Option<&StsRecord>, now: u64) -> Refresh {
    let live = cached.filter(|c| c.expires_at > now);
    let fresh = |c: &InForce| now < c.fetched_at + c.expires_at.saturating_sub(c.fetched_at) / 2;
    match (live, record) {
        (Some(c), Some(r)) if c.id == r.id && fresh(c) => Refresh::UseCached,
        (_, Some(r)) => Refresh::Fetch { id: r.id.clone() },
        (Some(_), None) => Refresh::UseCached,
        (None, None) => Refresh::NoPolicy,
    }
}

/// What a domain's sessions run under: the MTA-STS policy in force, if
/// any, and what went wrong finding it (for reports). Room for other
/// sources (DANE) beside it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DomainTls {
    /// The MTA-STS policy in force.
    pub mta_sts: Option<InForce>,
    /// Why no (new) policy could be had, when the domain has a record:
    /// the result type and the detail.
    pub problem: Option<(ResultType, String)>,
}

/// A plan restricted to a policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    /// The hosts that may be used, in order.
    pub plan: MxPlan,
    /// The MX hosts the policy does not allow (left out under enforce).
    pub excluded: Vec<String>,
    /// The encryption policy the sessions run under.
    pub tls: TlsPolicy,
}

impl DomainTls {
    /// The MTA-STS mode in force.
    pub fn mode(&self) -> Option<Mode> {
        self.mta_sts.as_ref().map(|p| p.policy.mode)
    }

    /// True under `enforce`.
    pub fn enforced(&self) -> bool {
        self.mode() == Some(Mode::Enforce)
    }

    /// The destination key's suffix: domains under different policies do
    /// not share sessions (`""` without one that changes anything).
    pub fn key(&self) -> String {
        match &self.mta_sts {
            Some(p) if p.policy.mode == Mode::Enforce => {
                format!(";sts={}:{}", p.domain, p.id)
            }
            _ => String::new(),
        }
    }

    /// `plan` under the policy: under `enforce` only the hosts the policy
    /// allows, with `tls` raised to Certified; otherwise as it is.
    pub fn apply(&self, plan: &MxPlan, tls: TlsPolicy) -> Applied {
        let Some(p) = &self.mta_sts else {
            return Applied {
                plan: plan.clone(),
                excluded: Vec::new(),
                tls,
            };
        };
        let excluded: Vec<String> = plan
            .hosts
            .iter()
            .filter(|h| p.policy.mode != Mode::None && !p.policy.allows(&h.name))
            .map(|h| h.name.clone())
            .collect();
        if p.policy.mode != Mode::Enforce {
            return Applied {
                plan: plan.clone(),
                excluded,
                tls,
            };
        }
        let mut allowed = plan.clone();
        allowed.hosts.retain(|h| p.policy.allows(&h.name));
        Applied {
            plan: allowed,
            excluded,
            tls: TlsPolicy::Certified,
        }
    }

    /// The error a recipient gets when `enforce` stopped its delivery:
    /// `cause` in the words of the policy.
    pub fn refusal(&self, cause: &str) -> Option<Error> {
        let p = self
            .mta_sts
            .as_ref()
            .filter(|p| p.policy.mode == Mode::Enforce)?;
        Some(Error::Policy(PolicyError::MtaSts {
            policy: p.label(),
            detail: cause.to_owned(),
        }))
    }
}

/// The result type of a session to `host` under a policy: success when
/// TLS was verified, otherwise what failed (from the session's TLS facts
/// and error, not from texts).
pub fn session_result(host: &str, tls: Option<&TlsInfo>, error: Option<&Error>) -> ResultType {
    match (tls, error) {
        (Some(t), _) if t.verified => ResultType::Success,
        (
            None,
            Some(Error::Policy(
                PolicyError::StartTlsNotOffered { .. } | PolicyError::StartTlsRefused { .. },
            )),
        )
        | (None, None) => ResultType::StartTlsNotSupported,
        (Some(t), _) => match (t.verify_fault, &t.certificate) {
            (Some(CertificateFault::Expired), _) => ResultType::CertificateExpired,
            (Some(CertificateFault::NameMismatch), _) => ResultType::CertificateHostMismatch,
            (Some(_), _) => ResultType::CertificateNotTrusted,
            (None, Some(c))
                if !c
                    .names
                    .iter()
                    .any(|n| MxPattern::parse(n).is_some_and(|p| p.matches(host))) =>
            {
                ResultType::CertificateHostMismatch
            }
            _ => ResultType::CertificateNotTrusted,
        },
        // Refused in the handshake (the policy Certified throughout).
        (None, Some(Error::Tls(f))) if f.kind == TlsFailureKind::Certificate => {
            match f.certificate_fault {
                Some(CertificateFault::Expired) => ResultType::CertificateExpired,
                Some(CertificateFault::NameMismatch) => ResultType::CertificateHostMismatch,
                _ => ResultType::CertificateNotTrusted,
            }
        }
        (None, Some(_)) => ResultType::ValidationFailure,
    }
}

impl fmt::Display for DomainTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.mta_sts {
            Some(p) => f.write_str(&p.label()),
            None => f.write_str("no MTA-STS policy"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::delivery::mx::{PlanKind, PlannedHost};

    fn in_force(mode: Mode, id: &str, expires_at: u64) -> InForce {
        InForce {
            domain: "example.com".into(),
            id: id.into(),
            policy: Policy {
                mode,
                mx: vec![MxPattern::parse("*.example.com").unwrap()],
                max_age: 86400,
            },
            fetched_at: 0,
            expires_at,
            from_cache: true,
        }
    }

    fn plan(hosts: &[&str]) -> MxPlan {
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        MxPlan {
            domain: "example.com".into(),
            kind: PlanKind::Mx,
            hosts: hosts
                .iter()
                .map(|h| PlannedHost {
                    name: (*h).into(),
                    preference: 10,
                    addresses: vec![ip],
                    error: None,
                })
                .collect(),
        }
    }

    #[test]
    fn a_changed_id_is_fetched_and_a_live_cache_outlives_a_missing_record() {
        let c = in_force(Mode::Enforce, "1", 100);
        let r = |id: &str| StsRecord { id: id.into() };
        assert_eq!(refresh(Some(&c), Some(&r("1")), 49), Refresh::UseCached);
        // Half its life gone: fetched again before it lapses.
        assert_eq!(
            refresh(Some(&c), Some(&r("1")), 50),
            Refresh::Fetch { id: "1".into() }
        );
        assert_eq!(
            refresh(Some(&c), Some(&r("2")), 20),
            Refresh::Fetch { id: "2".into() }
        );
        assert_eq!(
            refresh(Some(&c), Some(&r("1")), 100),
            Refresh::Fetch { id: "1".into() }
        );
        assert_eq!(refresh(Some(&c), None, 50), Refresh::UseCached);
        assert_eq!(refresh(Some(&c), None, 150), Refresh::NoPolicy);
        assert_eq!(refresh(None, None, 0), Refresh::NoPolicy);
        assert_eq!(clamp_max_age(0), MIN_CACHE_SECS);
        assert_eq!(clamp_max_age(u64::MAX), MAX_AGE_LIMIT);
    }

    #[test]
    fn enforce_keeps_only_matching_hosts_and_requires_certified() {
        let p = plan(&["mx1.example.com", "mx.other.net"]);
        let enforce = DomainTls {
            mta_sts: Some(in_force(Mode::Enforce, "1", 100)),
            problem: None,
        };
        let a = enforce.apply(&p, TlsPolicy::Optional);
        assert_eq!(a.plan.hosts.len(), 1);
        assert_eq!(a.plan.hosts[0].name, "mx1.example.com");
        assert_eq!(a.excluded, ["mx.other.net"]);
        assert_eq!(a.tls, TlsPolicy::Certified);
        assert!(enforce.key().contains("example.com"));
        let testing = DomainTls {
            mta_sts: Some(in_force(Mode::Testing, "1", 100)),
            problem: None,
        };
        let a = testing.apply(&p, TlsPolicy::Optional);
        assert_eq!((a.plan.hosts.len(), a.tls), (2, TlsPolicy::Optional));
        assert_eq!(a.excluded, ["mx.other.net"]);
        assert_eq!(testing.key(), "");
        assert!(testing.refusal("x").is_none());
        let e = enforce.refusal("no STARTTLS").unwrap().to_string();
        assert!(
            e.starts_with("MTA-STS policy of example.com (enforce)"),
            "{e}"
        );
    }
}
