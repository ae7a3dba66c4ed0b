//! Planning a round of direct delivery: each claimed recipient domain's
//! MX plan (cached a minute), under its MTA-STS policy, grouped by
//! destination ([`mx_destination`]) into the jobs of the round's sessions.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures_util::StreamExt;
use smtp_core::delivery::direct::{TlsPolicySource, TlsSession, no_allowed_host, plan_domain};
use smtp_core::delivery::mta_sts::DomainTls;
use smtp_core::delivery::mx::{MxPlan, PlanError};
use smtp_core::delivery::tls_rpt::ResultType;

use super::{Direct, Planned};
use crate::error::Result;
use crate::runner::{Runner, lock};
use crate::store::{Attempt, Claimed, Outcome, RecipientId};

/// How long a plan is reused. Short beside DNS TTLs (a changed MX is seen
/// within a minute), long beside a round.
const PLAN_TTL: Duration = Duration::from_secs(60);
/// Plans kept at most; past it the cache starts again.
const PLANS_KEPT: usize = 100_000;

impl Direct {
    /// `domain`'s plan: from the cache when it is fresh; a temporary DNS
    /// failure is not kept (the next round asks again).
    pub(super) async fn plan(&self, domain: &str) -> Planned {
        if let Some((at, plan)) = lock(&self.plans).get(domain)
            && at.elapsed() < PLAN_TTL
        {
            return plan.clone();
        }
        let plan = plan_domain(
            self.resolver.as_ref(),
            domain,
            &self.options,
            &smtp_tls::random_below,
        )
        .await;
        if !matches!(plan, Err(PlanError::Temporary { .. })) {
            let mut plans = lock(&self.plans);
            if plans.len() >= PLANS_KEPT {
                plans.clear();
            }
            plans.insert(domain.to_owned(), (Instant::now(), plan.clone()));
        }
        plan
    }
}

/// The destination key of a plan: its MX host names, sorted (`mx:a,b`).
/// Domains whose mail goes to the same hosts share it.
pub fn mx_destination(plan: &MxPlan) -> String {
    let mut hosts: Vec<&str> = plan.hosts.iter().map(|h| h.name.as_str()).collect();
    hosts.sort_unstable();
    hosts.dedup();
    format!("mx:{}", hosts.join(","))
}

/// Message `claimed`'s recipients (positions in `claimed.recipients`) at
/// one destination.
pub(super) struct Unit {
    pub(super) claimed: usize,
    pub(super) positions: Vec<usize>,
}

/// Recipient positions by claimed message.
type Positions = BTreeMap<usize, Vec<usize>>;

/// One session's work: messages to one destination.
pub(super) struct Job {
    pub(super) destination: String,
    pub(super) plan: Arc<MxPlan>,
    pub(super) units: Vec<Unit>,
    /// The domains of the destination that have an MTA-STS policy.
    pub(super) policies: Arc<Vec<(String, DomainTls)>>,
    /// The policy enforced on the destination's sessions (one domain's).
    pub(super) enforced: Option<DomainTls>,
}

/// A destination's plan, its messages' recipients, its domains' policies.
type Group = (Arc<MxPlan>, Positions, Vec<(String, DomainTls)>);

impl Runner {
    /// Plans every domain of the round and groups the recipients into
    /// jobs; what cannot be planned, or whose envelope is broken, is
    /// recorded here.
    pub(super) async fn plan_round(
        &self,
        direct: &Direct,
        claimed: &[Claimed],
    ) -> Result<Vec<Job>> {
        // This round's domains only: the map stays as small as a claim.
        lock(&self.mx_destinations).clear();
        lock(&self.sts_modes).clear();
        let mut domains: BTreeMap<String, Vec<(usize, usize)>> = BTreeMap::new();
        for (c, message) in claimed.iter().enumerate() {
            for (i, r) in message.recipients.iter().enumerate() {
                let domain = r
                    .address
                    .rsplit_once('@')
                    .map_or("", |(_, d)| d)
                    .to_ascii_lowercase();
                domains.entry(domain).or_default().push((c, i));
            }
        }
        let plans: Vec<(String, Planned, DomainTls)> =
            futures_util::stream::iter(domains.keys().cloned())
                .map(|domain| async move {
                    let plan = direct.plan(&domain).await;
                    let tls = match (&plan, &direct.mta_sts) {
                        (Ok(_), Some(m)) => m.domain_tls(&domain).await,
                        _ => DomainTls::default(),
                    };
                    (domain, plan, tls)
                })
                .buffer_unordered(16)
                .collect()
                .await;
        let now = SystemTime::now();
        // Per destination: the plan and each message's positions.
        let mut groups: BTreeMap<String, Group> = BTreeMap::new();
        let mut unplanned: BTreeMap<usize, Vec<(RecipientId, Outcome)>> = BTreeMap::new();
        // Recipients that go in no session this round: failed when `permanent`,
        // else deferred on the schedule.
        let mut unplan = |members: Vec<(usize, usize)>, text: String, permanent: bool| {
            let attempt = Attempt {
                text,
                ..Attempt::default()
            };
            for (c, i) in members {
                let message = &claimed[c];
                let id = message.recipients[i].id;
                let outcome = if permanent {
                    Outcome::Failed(attempt.clone())
                } else {
                    self.retry(message, id, attempt.clone(), now)
                };
                unplanned.entry(c).or_default().push((id, outcome));
            }
        };
        for (domain, plan, tls) in plans {
            let members = domains.remove(&domain).unwrap_or_default();
            let plan = match plan {
                Ok(plan) => plan,
                Err(e) => {
                    unplan(members, e.to_string(), e.is_permanent());
                    continue;
                }
            };
            // Under an enforced MTA-STS policy only the hosts it allows.
            let applied = tls.apply(&plan, direct.options.config.tls);
            let refusal = no_allowed_host(&tls, &applied);
            // Logged under its destination and mode (the one it would have
            // had, when refused). Domains under different enforced policies
            // never share a session.
            let shown = if refusal.is_some() {
                &plan
            } else {
                &applied.plan
            };
            let key = format!("{}{}", mx_destination(shown), tls.key());
            lock(&self.mx_destinations).insert(domain.clone(), key.clone());
            if let Some(mode) = tls.mode() {
                lock(&self.sts_modes).insert(domain.clone(), mode);
            }
            if let Some(refusal) = refusal {
                // None allowed: deferred, naming the policy, and counted
                // for TLS-RPT: each MX host the policy leaves out is a
                // failed session (`validation-failure`, RFC 8460 section
                // 4.3.2.4).
                if let Some(m) = &direct.mta_sts {
                    for host in &applied.excluded {
                        let session = TlsSession::new(host.clone(), ResultType::ValidationFailure);
                        m.session(&domain, &tls, &session);
                    }
                }
                unplan(members, refusal.to_string(), false);
                continue;
            }
            let (_, messages, policies) = groups
                .entry(key)
                .or_insert_with(|| (Arc::new(applied.plan), BTreeMap::new(), Vec::new()));
            for (c, i) in members {
                messages.entry(c).or_default().push(i);
            }
            if tls.mta_sts.is_some() {
                policies.push((domain.clone(), tls));
            }
        }
        for (c, outcomes) in unplanned {
            self.record(&claimed[c], &claimed[c].lease, outcomes)
                .await?;
        }
        if let Some(m) = &direct.mta_sts {
            m.flush(self.store.as_ref()).await?;
        }
        let keys: Vec<String> = groups.keys().cloned().collect();
        self.shaper.load(self.store.as_ref(), &keys, now).await?;
        let mut jobs: Vec<Vec<Job>> = Vec::new();
        for (key, (plan, messages, policies)) in groups {
            let enforced = policies
                .iter()
                .find(|(_, t)| t.enforced())
                .map(|(_, t)| t.clone());
            let policies = Arc::new(policies);
            let per = self.shaper.per_session(&key, now);
            let mut units: Vec<Unit> = messages
                .into_iter()
                .map(|(claimed, mut positions)| {
                    positions.sort_unstable();
                    Unit { claimed, positions }
                })
                .collect();
            let mut chunks = Vec::new();
            while !units.is_empty() {
                let rest = units.split_off(units.len().min(per));
                chunks.push(Job {
                    destination: key.clone(),
                    plan: plan.clone(),
                    units,
                    policies: policies.clone(),
                    enforced: enforced.clone(),
                });
                units = rest;
            }
            jobs.push(chunks);
        }
        // Round robin over destinations, so that one destination's many
        // sessions do not hold every slot waiting for their own.
        let mut order = Vec::new();
        let mut lanes: Vec<std::vec::IntoIter<Job>> =
            jobs.into_iter().map(Vec::into_iter).collect();
        while !lanes.is_empty() {
            lanes.retain_mut(|lane| lane.next().map(|job| order.push(job)).is_some());
        }
        Ok(order)
    }
}
