//! A destination's TLS requirements from outside the session's own
//! policy: MTA-STS (RFC 8461) now, DANE later. A [`TlsPolicySource`] says
//! what a domain's sessions run under ([`DomainTls`]) and hears how each
//! session went (for TLS-RPT, RFC 8460); [`enforce`] turns the failures an
//! `enforce` policy causes into refusals that name it.

use async_trait::async_trait;

use super::{Attempt, Decided};
use crate::delivery::mta_sts::{Applied, DomainTls, session_result};
use crate::delivery::tls_rpt::ResultType;
use crate::envelope::RecipientStatus;
use crate::error::{Error, PolicyError};

/// Where domains' TLS requirements come from.
#[async_trait]
pub trait TlsPolicySource: Send + Sync {
    /// What `domain`'s sessions run under. Never fails: a policy that
    /// cannot be had is no policy (or the cached one), with the problem
    /// noted in [`DomainTls::problem`].
    async fn domain_tls(&self, domain: &str) -> DomainTls;

    /// A session to `host` for `domain` under `tls` ended with `result`.
    fn session(&self, domain: &str, tls: &DomainTls, host: &str, result: ResultType) {
        let _ = (domain, tls, host, result);
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

/// Each session's result under a policy: `(host, result)` for every
/// attempt that got as far as a session (a refused connection says
/// nothing about TLS). Nothing without a policy.
pub fn session_results(tls: &DomainTls, attempts: &[Attempt]) -> Vec<(String, ResultType)> {
    if tls.mta_sts.is_none() {
        return Vec::new();
    }
    attempts
        .iter()
        .filter(|a| a.failure.is_none())
        .map(|a| {
            (
                a.host.clone(),
                session_result(&a.host, a.tls.as_ref(), a.error.as_ref()),
            )
        })
        .collect()
}

/// The refusal for every recipient when `enforce` leaves no host to try.
pub fn no_allowed_host(tls: &DomainTls, applied: &Applied) -> Option<Error> {
    if !applied.plan.hosts.is_empty() {
        return None;
    }
    let patterns = tls.mta_sts.as_ref().map_or_else(String::new, |p| {
        p.policy
            .mx
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    });
    tls.refusal(&format!(
        "none of the MX hosts ({}) matches the policy's mx patterns ({patterns})",
        applied.excluded.join(", ")
    ))
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
            let cause = d.outcome.error.as_ref().map(ToString::to_string);
            d.outcome.error = tls.refusal(&cause.unwrap_or_default());
            d.outcome.status = RecipientStatus::Deferred;
        }
    }
}
