//! Direct delivery from the queue: each recipient domain's own mail
//! servers, grouped by destination.
//!
//! A round plans every recipient domain it claimed (MX records, through
//! [`smtp_core::delivery::direct::plan_domain`]) and keys each plan by its
//! set of MX host names ([`mx_destination`]): domains served by the same hosts
//! share sessions, back-off and holds. A message's recipients at one
//! destination go in one transaction; a destination's messages go
//! its shape's messages per connection at a time on one session
//! ([`deliver_batch`], hosts in MX order), at most its shape's sessions at
//! once (for every runner on the queue together: each session holds a
//! slot the store leases, [`Runner::fleet_slot`]) and
//! [`RunnerConfig::concurrency`](super::RunnerConfig) in all, each
//! message paced by its rate (`runner/shaper.rs`, [`crate::shaping`]). Each recipient's outcome is classified as on the relay path; a
//! message is recorded as soon as it settles, while its session goes on.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use smtp_core::RecipientStatus;
use smtp_core::delivery::BodySource;
use smtp_core::delivery::direct::{
    Connector, Decided, DirectOptions, TlsPolicySource, Trace, deliver_batch, enforce,
    session_results,
};
use smtp_core::delivery::mx::{MxPlan, PlanError, Resolver};
use tokio::sync::Semaphore;

mod plan;

pub use self::plan::mx_destination;
use self::plan::{Job, Unit};
use super::record::Unrecorded;
use super::shaper::{Paced, Slot};
use super::{Runner, Unreadable, lock};
use crate::error::Result;
use crate::event::RunEvent;
use crate::stop::Stop;
use crate::store::{Backoff, Claimed, Lease, MessageId, Outcome, RecipientId, SlotLease};
use crate::verdict::{rate_signal, verdict};

/// What direct delivery needs: DNS, connections, and the options.
pub(crate) struct Direct {
    pub(crate) resolver: Arc<dyn Resolver>,
    pub(crate) connector: Arc<dyn Connector>,
    pub(crate) options: DirectOptions,
    /// MTA-STS policies (RFC 8461), when on.
    pub(crate) mta_sts: Option<Arc<crate::mta_sts::MtaSts>>,
    /// Plans made lately, by domain: a bulk run's rounds meet the same
    /// domains again and again.
    pub(crate) plans: Mutex<HashMap<String, (Instant, Planned)>>,
}

/// A domain's plan, or why it has none.
pub(crate) type Planned = std::result::Result<MxPlan, PlanError>;

/// How long a session waits for a fleet slot to its destination (every
/// one held by this and other workers) before its messages are released.
/// Sessions end all the time in a bulk run: a slot usually comes free
/// within this, and the messages claimed go out without another claim.
/// Bounded, so that a job waiting does not keep the round's sessions to
/// other destinations waiting behind it, nor its messages from a worker
/// with room for them.
const SLOT_WAIT: Duration = Duration::from_secs(3);
/// How often, about, the store is asked again for a slot meanwhile.
const SLOT_POLL: Duration = Duration::from_millis(100);
/// When messages released for want of a slot are due again: soon, but
/// not at once (a worker that finds every slot held does not claim the
/// same messages again and again while the others' sessions run).
const SLOT_RETRY: Duration = Duration::from_secs(1);

/// What a round shares between its jobs.
struct Round<'a> {
    claimed: &'a [Claimed],
    /// When each message's recipients left unrecorded are due again (a
    /// destination backed off or held), if later than at once.
    release_at: Mutex<Vec<Option<SystemTime>>>,
    /// Sessions per destination.
    slots: HashMap<String, Arc<Semaphore>>,
    /// Per destination: the permits its semaphore holds, and how many it
    /// should (fewer after a cut: sessions that end give theirs up).
    sizes: Mutex<HashMap<String, (usize, usize)>>,
    /// The destinations' back-offs, read once for the round and kept up to
    /// date by its sessions (a store read spared per session).
    backoffs: Mutex<HashMap<String, Backoff>>,
}

impl Round<'_> {
    fn backoff(&self, destination: &str) -> Option<Backoff> {
        lock(&self.backoffs).get(destination).cloned()
    }

    /// `destination` was backed off or held until `until`.
    fn backed_off(&self, destination: &str, until: SystemTime) {
        lock(&self.backoffs)
            .entry(destination.to_owned())
            .and_modify(|b| b.not_before = until)
            .or_insert_with(|| Backoff {
                destination: destination.to_owned(),
                not_before: until,
                failures: 1,
                reason: String::new(),
            });
    }

    fn release_later(&self, claimed: usize, at: SystemTime) {
        if let Some(slot) = lock(&self.release_at).get_mut(claimed) {
            *slot = Some(slot.map_or(at, |t| t.min(at)));
        }
    }
}

impl Runner {
    /// Delivers one claimed round directly and records every outcome.
    pub(super) async fn deliver_direct(
        &self,
        direct: &Direct,
        claimed: Vec<Claimed>,
        stop: &Stop,
    ) -> Result<()> {
        let jobs = if stop.is_stopped() {
            Vec::new()
        } else {
            self.plan_round(direct, &claimed).await?
        };
        let now = SystemTime::now();
        let mut slots = HashMap::new();
        let mut sizes = HashMap::new();
        for job in &jobs {
            slots.entry(job.destination.clone()).or_insert_with(|| {
                let per = self.shaper.effective(&job.destination, now).connections;
                sizes.insert(job.destination.clone(), (per, per));
                Arc::new(Semaphore::new(per))
            });
        }
        let destinations: Vec<String> = slots.keys().cloned().collect();
        let backoffs = self
            .store
            .backoffs(&destinations)
            .await?
            .into_iter()
            .map(|b| (b.destination.clone(), b))
            .collect();
        let round = Round {
            claimed: &claimed,
            release_at: Mutex::new(vec![None; claimed.len()]),
            slots,
            sizes: Mutex::new(sizes),
            backoffs: Mutex::new(backoffs),
        };
        let results: Vec<Result<()>> = futures_util::stream::iter(jobs)
            .map(|job| self.run_job(direct, &round, job, stop))
            .buffer_unordered(self.config.concurrency.max(1))
            .collect()
            .await;
        for r in results {
            r?;
        }
        // What is left: destinations backed off or held, sessions stopped.
        let release_at = std::mem::take(&mut *lock(&round.release_at));
        for (c, at) in claimed.iter().zip(release_at) {
            self.release(c, &c.lease, at).await?;
        }
        Ok(())
    }

    /// One session to a destination, if it may open: a place among this
    /// runner's sessions to it, then a slot among the whole fleet's
    /// ([`Runner::fleet_slot`]), given back when the session is over.
    /// Without a fleet slot its messages are released, due again soon.
    async fn run_job(
        &self,
        direct: &Direct,
        round: &Round<'_>,
        job: Job,
        stop: &Stop,
    ) -> Result<()> {
        let Some(slot) = round.slots.get(&job.destination) else {
            return Ok(());
        };
        let Ok(permit) = slot.acquire().await else {
            return Ok(());
        };
        let _slot = Slot {
            permit: Some(permit),
            sizes: &round.sizes,
            destination: job.destination.clone(),
        };
        if stop.is_stopped() {
            return Ok(());
        }
        let now = SystemTime::now();
        // A back-off row, current or past: the destination's failures.
        let backoff = round.backoff(&job.destination);
        if let Some(until) = backoff.as_ref().map(|b| b.not_before).filter(|t| *t > now) {
            for unit in &job.units {
                round.release_later(unit.claimed, until);
            }
            return Ok(());
        }
        let Some(held) = self.fleet_slot(&job.destination, stop).await? else {
            if !stop.is_stopped() {
                tracing::debug!(destination = %job.destination,
                    "the destination's connections are all in use by other workers: its messages are released");
                let at = SystemTime::now() + SLOT_RETRY;
                for unit in &job.units {
                    round.release_later(unit.claimed, at);
                }
            }
            return Ok(());
        };
        let mut held = Some(held);
        let result = self
            .session(direct, round, job, stop, backoff, &mut held)
            .await;
        // Given back even when the session failed: a slot kept would count
        // against the destination until its lease ran out.
        let released = match &held {
            Some(s) => self.store.release_slot(s).await.map(drop),
            None => Ok(()),
        };
        result.and(released)
    }

    /// A slot among the fleet's sessions to `destination` (its
    /// connections now, throttle included), held under this worker's id
    /// for a lease, asked of the store again every [`SLOT_POLL`] or so
    /// while all are held, for [`SLOT_WAIT`] at most. `None` when none
    /// came free in time, or on a stop.
    pub(super) async fn fleet_slot(
        &self,
        destination: &str,
        stop: &Stop,
    ) -> Result<Option<SlotLease>> {
        let started = Instant::now();
        loop {
            let now = SystemTime::now();
            let limit = self.shaper.effective(destination, now).connections;
            let limit = u32::try_from(limit).unwrap_or(u32::MAX);
            let until = now + self.config.lease;
            let worker = &self.config.worker;
            if let Some(held) = self
                .store
                .take_slot(destination, limit, worker, until, now)
                .await?
            {
                return Ok(Some(held));
            }
            if started.elapsed() >= SLOT_WAIT || stop.is_stopped() {
                return Ok(None);
            }
            // Jittered: workers waiting at once do not ask in step.
            let jitter = u32::try_from(smtp_tls::random_below(100)).unwrap_or(0);
            let poll = SLOT_POLL / 2 + SLOT_POLL * jitter / 100;
            tokio::select! {
                () = stop.stopped() => return Ok(None),
                () = tokio::time::sleep(poll) => {}
            }
        }
    }

    /// One session to a destination: its messages, each recorded as it
    /// settles, the rest when the session is over. `held`, its fleet
    /// slot, is renewed with the messages' leases (and forgotten if the
    /// store no longer has it).
    async fn session(
        &self,
        direct: &Direct,
        round: &Round<'_>,
        job: Job,
        stop: &Stop,
        backoff: Option<Backoff>,
        held: &mut Option<SlotLease>,
    ) -> Result<()> {
        let now = SystemTime::now();
        // Envelopes and bodies (read in one go): a message that cannot be
        // read fails alone.
        let message_ids: Vec<MessageId> = job
            .units
            .iter()
            .map(|u| round.claimed[u.claimed].lease.message.clone())
            .collect();
        let opened = self.store.open_bodies(&message_ids).await?;
        let mut units = Vec::with_capacity(job.units.len());
        let mut envelopes = Vec::with_capacity(job.units.len());
        let mut bodies: Vec<Box<dyn BodySource>> = Vec::with_capacity(job.units.len());
        for (unit, body) in job.units.into_iter().zip(opened) {
            let claimed = &round.claimed[unit.claimed];
            let envelope = self.envelope_of(claimed).map(|mut e| {
                e.to = unit
                    .positions
                    .iter()
                    .filter_map(|&i| e.to.get(i).cloned())
                    .collect();
                e
            });
            match (
                envelope.map_err(Unreadable::Broken),
                body.map_err(Unreadable::from),
            ) {
                (Ok(envelope), Ok(body)) => {
                    envelopes.push(envelope);
                    bodies.push(Box::new(Paced {
                        inner: body,
                        shaper: self.shaper.clone(),
                        destination: job.destination.clone(),
                        paced: false,
                    }));
                    units.push(unit);
                }
                (Err(why), _) | (_, Err(why)) => {
                    let ids = unit.positions.iter().map(|&i| claimed.recipients[i].id);
                    let outcomes = self.unreadable(claimed, ids, &why);
                    self.record(claimed, &claimed.lease, outcomes).await?;
                }
            }
        }
        if units.is_empty() {
            return Ok(());
        }
        let mut leases: Vec<Lease> = units
            .iter()
            .map(|u| round.claimed[u.claimed].lease.clone())
            .collect();
        // A round's later sessions start late: renew what is half spent.
        let mut recorded = vec![false; units.len()];
        let half = now + self.config.lease / 2;
        if leases.iter().any(|l| l.until < half) && self.renew(&mut leases, &recorded).await {
            // Taken over while this round waited: the messages are another
            // worker's now (the round's end releases what is left).
            return Ok(());
        }
        self.emit(&RunEvent::Connecting {
            destination: job.destination.clone(),
            messages: units.len(),
        });
        // Under an enforced MTA-STS policy: TLS verified for the MX host.
        let mut options = direct.options.clone();
        if let Some(tls) = &job.enforced {
            options.config.tls = tls.apply(&job.plan, options.config.tls).tls;
        }
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(usize, Vec<Decided>)>();
        // The messages whose data began to go out (to any host): only
        // those can have reached a server if the session is abandoned.
        let data_sent = Mutex::new(vec![false; units.len()]);
        let report = {
            let mut settled = |k: usize, decided: &[Decided]| {
                let _ = tx.send((k, decided.to_vec()));
            };
            let trace = |t: Trace<'_>| {
                if let Trace::Data { message, .. } = t
                    && let Some(sent) = lock(&data_sent).get_mut(message)
                {
                    *sent = true;
                    if let Some(unit) = units.get(message) {
                        self.emit(&RunEvent::DataSent {
                            message: round.claimed[unit.claimed].lease.message.clone(),
                        });
                    }
                }
            };
            let send = deliver_batch(
                direct.connector.as_ref(),
                &job.plan,
                &envelopes,
                &mut bodies,
                &options,
                &trace,
                &mut settled,
            );
            tokio::pin!(send);
            let every = self.config.lease / 3;
            let mut renew = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            let abandon = self.abandoned(stop);
            tokio::pin!(abandon);
            // Recordings run beside the session, not in its way: a session
            // that waited for each commit would go at the store's pace.
            let mut recording = FuturesUnordered::new();
            let report = loop {
                tokio::select! {
                    report = &mut send => break Some(report),
                    Some((k, decided)) = rx.recv() => {
                        if let (Some(unit), Some(lease)) = (units.get(k), leases.get(k)) {
                            let lease = lease.clone();
                            let plan = &job.plan;
                            recording.push(async move {
                                self.record_settled(round, unit, &lease, &decided, plan)
                                    .await
                                    .map(|()| k)
                            });
                        }
                    }
                    Some(done) = recording.next(), if !recording.is_empty() => recorded[done?] = true,
                    _ = renew.tick() => {
                        // Recordings first: one that began its transaction
                        // holds the write lock, and is polled only here.
                        while let Some(done) = recording.next().await {
                            recorded[done?] = true;
                        }
                        if self.renew(&mut leases, &recorded).await {
                            break None;
                        }
                        self.renew_slot(held).await;
                    }
                    () = &mut abandon => break None,
                }
            };
            while let Some(done) = recording.next().await {
                recorded[done?] = true;
            }
            report
        };
        drop(tx);
        // Settled before the session ended, not yet taken from the channel.
        while let Ok((k, decided)) = rx.try_recv() {
            if let (Some(unit), Some(lease)) = (units.get(k), leases.get(k)) {
                self.record_settled(round, unit, lease, &decided, &job.plan)
                    .await?;
                recorded[k] = true;
            }
        }
        let Some(mut report) = report else {
            tracing::warn!(destination = %job.destination,
                "stopped: a session did not finish in time; what it had not settled is released");
            let data_sent = std::mem::take(&mut *lock(&data_sent));
            for ((unit, done), sent) in units.iter().zip(&recorded).zip(data_sent) {
                if sent && !done {
                    let claimed = &round.claimed[unit.claimed];
                    let to = unit
                        .positions
                        .iter()
                        .filter_map(|&i| claimed.recipients.get(i))
                        .map(|r| r.address.clone());
                    self.in_flight(claimed, to.collect());
                }
            }
            return Ok(());
        };
        if let Some(tls) = &job.enforced {
            for decided in &mut report.messages {
                enforce(tls, decided);
            }
        }
        if let Some(m) = &direct.mta_sts {
            for (domain, tls) in job.policies.iter() {
                for session in session_results(tls, &report.attempts) {
                    m.session(domain, tls, &session);
                }
            }
            m.flush(self.store.as_ref()).await?;
        }
        let delivered_any = report
            .messages
            .iter()
            .flatten()
            .any(|d| d.outcome.status == RecipientStatus::Accepted);
        // "Slow down": the destination's limits are lowered, instead of
        // backing it off as a whole.
        let signal = report
            .messages
            .iter()
            .flatten()
            .find_map(|d| rate_signal(&d.outcome));
        if let Some(reason) = &signal
            && let Some(connections) = self.throttled(&job.destination, reason).await?
            && let Some((_, target)) = lock(&round.sizes).get_mut(&job.destination)
        {
            *target = connections;
        }
        // Cleared only where there is something to clear: a write spared
        // per session.
        if delivered_any && backoff.is_some() {
            self.store.clear_backoff(&job.destination).await?;
            lock(&round.backoffs).remove(&job.destination);
        }
        let mut hold: Option<String> = None;
        let mut ended: Option<String> = None;
        for (k, decided) in report.messages.iter().enumerate() {
            let (Some(unit), Some(lease)) = (units.get(k), leases.get(k)) else {
                continue;
            };
            if recorded[k] {
                continue;
            }
            let claimed = &round.claimed[unit.claimed];
            let outcomes = self.settle(claimed, unit, decided, &job.plan, delivered_any);
            hold = hold.or(outcomes.why.hold);
            ended = ended.or(outcomes.why.ended);
            if !outcomes.recorded.is_empty() {
                self.record(claimed, lease, outcomes.recorded).await?;
            }
        }
        let now = SystemTime::now();
        let until = if let Some(reason) = hold {
            Some(self.hold_at(&job.destination, &reason, now).await?)
        } else if let (false, Some(reason), None) = (delivered_any, ended, &signal) {
            // Nothing got through: say why, in the words that help.
            let reason = report
                .diagnosis
                .as_ref()
                .map_or(reason, ToString::to_string);
            let until = self.back_off_at(&job.destination, &reason, now).await?;
            round.backed_off(&job.destination, until);
            None
        } else {
            None
        };
        if let Some(until) = until {
            round.backed_off(&job.destination, until);
            for unit in &units {
                round.release_later(unit.claimed, until);
            }
        }
        Ok(())
    }

    /// Extends the session's fleet slot by a lease; one the store no
    /// longer has (this worker stalled past its lease and another took
    /// the slot) is forgotten: the session goes on, but no longer counts.
    async fn renew_slot(&self, held: &mut Option<SlotLease>) {
        let Some(slot) = held.as_ref() else {
            return;
        };
        let until = SystemTime::now() + self.config.lease;
        match self.store.renew_slot(slot, until).await {
            Ok(Some(renewed)) => *held = Some(renewed),
            Ok(None) => {
                tracing::warn!(destination = %slot.destination,
                    "the session's connection slot expired and was taken: the destination may get one session more than its limit until this one ends");
                *held = None;
            }
            Err(e) => {
                tracing::warn!(destination = %slot.destination, error = %e, "connection slot not renewed");
            }
        }
    }

    /// Records a message that settled while its session went on: every
    /// recipient final (delivered, refused, or its outcome unknown).
    async fn record_settled(
        &self,
        round: &Round<'_>,
        unit: &Unit,
        lease: &Lease,
        decided: &[Decided],
        plan: &MxPlan,
    ) -> Result<()> {
        let claimed = &round.claimed[unit.claimed];
        let outcomes = self.settle(claimed, unit, decided, plan, false);
        self.record(claimed, lease, outcomes.recorded).await
    }

    /// Each recipient of `unit` classified ([`Runner::outcome_of`]).
    fn settle(
        &self,
        claimed: &Claimed,
        unit: &Unit,
        decided: &[Decided],
        plan: &MxPlan,
        progress: bool,
    ) -> Settled {
        let now = SystemTime::now();
        let fallback = plan.hosts.first().map_or("", |h| h.name.as_str());
        let mut out = Settled::default();
        for (&i, d) in unit.positions.iter().zip(decided) {
            let id = claimed.recipients[i].id;
            let host = d.host.as_deref().unwrap_or(fallback);
            let v = verdict(&d.outcome, host, d.tls.as_ref());
            if let Some(outcome) = self.outcome_of(claimed, id, v, progress, now, &mut out.why) {
                out.recorded.push((id, outcome));
            }
        }
        out
    }
}

/// A unit's recipients classified.
#[derive(Default)]
struct Settled {
    /// Outcomes to record now.
    recorded: Vec<(RecipientId, Outcome)>,
    /// Why the others are not.
    why: Unrecorded,
}
