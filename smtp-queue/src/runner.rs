//! [`Runner`]: delivers what is due, through one relay (standard delivery)
//! or, built with [`Runner::direct`], to each recipient domain's own mail
//! servers (direct delivery; see `runner/direct.rs`).
//!
//! A round claims due recipients under leases, splits the claimed messages
//! into batches of at most [`RunnerConfig::per_connection`] messages, and
//! sends each batch on one [`Session`] (open, `send_all` pipelined, close),
//! at most [`RunnerConfig::concurrency`] sessions at a time. Each
//! recipient's outcome is recorded under its lease:
//!
//! | in the session | recorded |
//! |---|---|
//! | 2xx to the end of data | delivered |
//! | 5xx | failed |
//! | 4xx | deferred on the [`Schedule`] (expired past the lifetime) |
//! | reply to the end of data lost | deferred (a retry may duplicate: [`RunEvent::OutcomeUnknown`]) |
//! | 421 or connection lost before the data, after the session delivered something | released, due at once (a new connection) |
//! | the same, with nothing delivered; the relay unreachable | deferred, and the destination backed off |
//! | authentication refused, TLS policy not met | released, the destination held ([`RunEvent::Held`], once) |

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use smtp_core::address::{Mailbox, ReversePath};
use smtp_core::data::BodyType;
use smtp_core::{Envelope, Fault, MessageOutcome};
use smtp_tls::{Outgoing, Server, Session};

mod direct;

use crate::RecipientState;
use crate::error::{Error, Result};
use crate::event::RunEvent;
use crate::schedule::{Next, Schedule, random_unit};
use crate::stop::Stop;
use crate::store::{Attempt, BodyKind, Claimed, Lease, Outcome, RecipientId, Store};
use crate::verdict::{Verdict, verdict};

/// How a [`Runner`] works.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct RunnerConfig {
    /// The worker's name in leases.
    pub worker: String,
    /// How long a lease lasts; renewed while a session runs longer.
    pub lease: Duration,
    /// Messages claimed per round.
    pub claim: u32,
    /// Messages sent on one connection at most.
    pub per_connection: usize,
    /// Sessions at once, at most.
    pub concurrency: usize,
    /// The recipients' retry schedule.
    pub schedule: Schedule,
    /// The destination's back-off schedule (counted in failures).
    pub backoff: Schedule,
    /// After a stop, how long a session under way may take to finish
    /// before it is abandoned and what it had not settled is released.
    pub stop_grace: Duration,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        Self {
            worker: format!("runner-{}", std::process::id()),
            lease: Duration::from_secs(300),
            claim: 200,
            per_connection: 100,
            concurrency: 4,
            schedule: Schedule::default(),
            backoff: Schedule::default(),
            stop_grace: Duration::from_secs(10),
        }
    }
}

impl RunnerConfig {
    /// Sets the worker name.
    #[must_use]
    pub fn with_worker(mut self, worker: impl Into<String>) -> Self {
        self.worker = worker.into();
        self
    }
    /// Sets the lease length.
    #[must_use]
    pub fn with_lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }
    /// Sets the messages per connection (at least 1).
    #[must_use]
    pub fn with_per_connection(mut self, n: usize) -> Self {
        self.per_connection = n.max(1);
        self
    }
    /// Sets the sessions at once (at least 1).
    #[must_use]
    pub fn with_concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }
    /// Sets the grace a session gets after a stop.
    #[must_use]
    pub fn with_stop_grace(mut self, grace: Duration) -> Self {
        self.stop_grace = grace;
        self
    }
    /// Sets the retry schedule (and the destination back-off's).
    #[must_use]
    pub fn with_schedule(mut self, schedule: Schedule) -> Self {
        self.schedule = schedule;
        self.backoff = schedule;
        self
    }
}

/// Counts of what a run recorded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Recipients delivered.
    pub delivered: u64,
    /// Recipients failed.
    pub failed: u64,
    /// Recipients deferred.
    pub deferred: u64,
    /// Recipients expired.
    pub expired: u64,
    /// Recipients released unattempted.
    pub released: u64,
    /// Destinations held (configuration or policy faults), with why.
    pub held: Vec<(String, String)>,
}

type Observer = Arc<dyn Fn(&RunEvent) + Send + Sync>;

/// Where a runner delivers.
enum Mode {
    /// Through one relay (standard delivery).
    Relay(Server),
    /// To each recipient domain's own mail servers.
    Direct(direct::Direct),
}

/// Delivers due recipients from a [`Store`] through one relay, or directly.
pub struct Runner {
    store: Arc<dyn Store>,
    mode: Mode,
    destination: String,
    config: RunnerConfig,
    observer: Observer,
    summary: Mutex<Summary>,
    held_reported: Mutex<HashSet<String>>,
}

impl std::fmt::Debug for Runner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner")
            .field("destination", &self.destination)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Runner {
    /// A runner delivering through `relay` (standard delivery); the
    /// destination's key (for back-off) is `relay:HOST:PORT`.
    pub fn new(store: Arc<dyn Store>, relay: Server, config: RunnerConfig) -> Self {
        let destination = format!("relay:{}:{}", relay.host, relay.port);
        Self {
            store,
            mode: Mode::Relay(relay),
            destination,
            config,
            observer: Arc::new(|_| {}),
            summary: Mutex::new(Summary::default()),
            held_reported: Mutex::new(HashSet::new()),
        }
    }

    /// A runner delivering directly to each recipient domain's mail
    /// servers (MX records through `resolver`, connections through
    /// `connector`, one session per domain and message). Each domain is
    /// its own destination for back-off and holds: `direct:DOMAIN`.
    pub fn direct(
        store: Arc<dyn Store>,
        resolver: Arc<dyn smtp_core::delivery::mx::Resolver>,
        connector: Arc<dyn smtp_core::delivery::direct::Connector>,
        options: smtp_core::delivery::direct::DirectOptions,
        config: RunnerConfig,
    ) -> Self {
        Self {
            store,
            mode: Mode::Direct(direct::Direct {
                resolver,
                connector,
                options,
            }),
            destination: "direct".to_owned(),
            config,
            observer: Arc::new(|_| {}),
            summary: Mutex::new(Summary::default()),
            held_reported: Mutex::new(HashSet::new()),
        }
    }

    /// Calls `observe` with each [`RunEvent`] as it happens.
    #[must_use]
    pub fn with_observer(mut self, observe: impl Fn(&RunEvent) + Send + Sync + 'static) -> Self {
        self.observer = Arc::new(observe);
        self
    }

    /// The destination's key.
    pub fn destination(&self) -> &str {
        &self.destination
    }

    /// What was recorded so far.
    pub fn summary(&self) -> Summary {
        lock(&self.summary).clone()
    }

    /// Delivers everything due now, round after round, until nothing is
    /// due (what a round deferred is due later), the destination is backed
    /// off or held, or `stop` is given. Sessions under way finish; claimed
    /// messages not yet sent are released.
    pub async fn run_due(&self, stop: &Stop) -> Result<Summary> {
        loop {
            if stop.is_stopped() {
                break;
            }
            let now = SystemTime::now();
            if self.backed_off(now).await?.is_some() {
                break;
            }
            let claimed = self
                .store
                .claim_due(
                    now,
                    self.config.claim,
                    &self.config.worker,
                    self.config.lease,
                )
                .await?;
            if claimed.is_empty() {
                break;
            }
            let batches = batches(claimed, self.config.per_connection);
            let results: Vec<Result<()>> = futures_util::stream::iter(batches)
                .map(|batch| self.deliver(batch, stop))
                .buffer_unordered(self.config.concurrency.max(1))
                .collect()
                .await;
            for r in results {
                r?;
            }
        }
        Ok(self.summary())
    }

    /// [`run_due`](Self::run_due), then sleeps until the next recipient
    /// (or the destination's back-off) is due, again and again, until
    /// `stop` is given.
    pub async fn watch(&self, stop: &Stop) -> Result<Summary> {
        while !stop.is_stopped() {
            self.run_due(stop).await?;
            let now = SystemTime::now();
            let next = match (self.store.next_due().await?, self.backed_off(now).await?) {
                (Some(due), Some(until)) => Some(due.max(until)),
                (due, None) => due,
                (None, Some(_)) => None,
            };
            // Nothing waits: look again in a while (others may enqueue).
            let wait = next.map_or(Duration::from_secs(5), |t| {
                t.duration_since(now)
                    .unwrap_or_default()
                    .min(Duration::from_secs(5))
            });
            tokio::select! {
                () = stop.stopped() => break,
                () = tokio::time::sleep(wait.max(Duration::from_millis(50))) => {}
            }
        }
        Ok(self.summary())
    }

    /// The destination's back-off end, if it is in the future.
    async fn backed_off(&self, now: SystemTime) -> Result<Option<SystemTime>> {
        if matches!(self.mode, Mode::Direct(_)) {
            // Direct delivery backs off each domain, not the runner.
            return Ok(None);
        }
        self.backed_off_at(&self.destination, now).await
    }

    /// `destination`'s back-off end, if it is in the future.
    async fn backed_off_at(
        &self,
        destination: &str,
        now: SystemTime,
    ) -> Result<Option<SystemTime>> {
        Ok(self
            .store
            .backoff(destination)
            .await?
            .map(|b| b.not_before)
            .filter(|t| *t > now))
    }

    /// Resolves `stop_grace` after `stop` is given.
    async fn abandoned(&self, stop: &Stop) {
        stop.stopped().await;
        tokio::time::sleep(self.config.stop_grace).await;
    }

    fn emit(&self, event: &RunEvent) {
        (self.observer)(event);
    }

    /// Sends one batch on one session and records every outcome.
    async fn deliver(&self, batch: Vec<Claimed>, stop: &Stop) -> Result<()> {
        let relay = match &self.mode {
            Mode::Relay(relay) => relay,
            Mode::Direct(direct) => {
                for claimed in batch {
                    self.deliver_direct(direct, claimed, stop).await?;
                }
                return Ok(());
            }
        };
        let now = SystemTime::now();
        if stop.is_stopped() {
            return self.release_all(&batch, None).await;
        }
        if let Some(until) = self.backed_off(now).await? {
            return self.release_all(&batch, Some(until)).await;
        }
        // Bodies first: a corrupt one fails its message, the others go on.
        let mut outgoing = Vec::with_capacity(batch.len());
        let mut sending = Vec::with_capacity(batch.len());
        for claimed in batch {
            match self.outgoing(&claimed).await {
                Ok(o) => {
                    outgoing.push(o);
                    sending.push(claimed);
                }
                Err(why) => {
                    let attempt = Attempt {
                        text: why,
                        ..Attempt::default()
                    };
                    let outcomes = claimed
                        .recipients
                        .iter()
                        .map(|r| (r.id, Outcome::Failed(attempt.clone())))
                        .collect();
                    self.record(&claimed, &claimed.lease, outcomes).await?;
                }
            }
        }
        if sending.is_empty() {
            return Ok(());
        }
        self.emit(&RunEvent::Connecting {
            destination: self.destination.clone(),
            messages: sending.len(),
        });
        let opened = tokio::select! {
            opened = Session::open(relay) => opened,
            () = self.abandoned(stop) => return self.release_all(&sending, None).await,
        };
        let mut session = match opened {
            Ok(s) => s,
            Err(e) => return self.open_failed(relay, &sending, &e).await,
        };
        let mut leases: Vec<Lease> = sending.iter().map(|c| c.lease.clone()).collect();
        let host = session.peer().to_string();
        let tls = session.tls().cloned();
        // Messages settle in order: the k-th settled outcome is the k-th
        // message's, which is what is known if the session is abandoned.
        // A message every recipient of which was accepted is recorded as
        // its reply arrives, not when the session ends: a runner killed
        // mid-session then redelivers only what awaited a reply.
        let mut settled: Vec<MessageOutcome> = Vec::new();
        let mut recorded = vec![false; sending.len()];
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<MessageOutcome>();
        let finished = {
            let mut observe = |seen: smtp_tls::Observed<'_>| {
                if let Some(o) = seen.settled() {
                    let _ = tx.send(o.clone());
                }
            };
            let send = session.send_all(&mut outgoing, &mut observe);
            tokio::pin!(send);
            let every = self.config.lease / 3;
            let mut renew = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            let abandon = self.abandoned(stop);
            tokio::pin!(abandon);
            loop {
                tokio::select! {
                    results = &mut send => break Some(results),
                    Some(outcome) = rx.recv() => {
                        let k = settled.len();
                        if let (Some(claimed), Some(lease)) = (sending.get(k), leases.get(k)) {
                            recorded[k] = self
                                .record_if_delivered(claimed, lease, &outcome, &host, tls.as_ref())
                                .await?;
                        }
                        settled.push(outcome);
                    }
                    _ = renew.tick() => self.renew(&mut leases, &recorded).await,
                    () = &mut abandon => break None,
                }
            }
        };
        drop(tx);
        while let Ok(outcome) = rx.try_recv() {
            settled.push(outcome);
        }
        // `None`: abandoned on a stop before an outcome; released below.
        let results: Vec<Option<std::result::Result<MessageOutcome, smtp_tls::Error>>> =
            match finished {
                Some(results) => results.into_iter().map(Some).collect(),
                None => {
                    tracing::warn!(destination = %self.destination,
                        "stopped: a session did not finish in time; what it had not settled is released");
                    let mut known: Vec<_> = settled.into_iter().map(|o| Some(Ok(o))).collect();
                    known.resize_with(sending.len(), || None);
                    known
                }
            };
        let session_error = session.error().cloned();
        drop(outgoing);
        if session.is_open() {
            // QUIT, unless a stop's grace runs out first.
            tokio::select! {
                _ = session.close() => {}
                () = self.abandoned(stop) => {}
            }
        }
        let delivered_any = results.iter().flatten().flatten().any(|o| {
            o.recipients
                .iter()
                .any(|r| r.status == smtp_core::RecipientStatus::Accepted)
        });
        if delivered_any {
            self.store.clear_backoff(&self.destination).await?;
        }
        let mut hold: Option<String> = None;
        let mut ended: Option<String> = None;
        for (((claimed, lease), result), done) in
            sending.iter().zip(&leases).zip(results).zip(&recorded)
        {
            let Some(result) = result.filter(|_| !done) else {
                continue;
            };
            let verdicts: Vec<(RecipientId, Verdict)> = match &result {
                Ok(outcome) => by_recipient(claimed, outcome, &host, tls.as_ref()),
                Err(e) => {
                    let attempt = Attempt {
                        text: e.to_string(),
                        host: Some(host.clone()),
                        ..Attempt::default()
                    };
                    let v = match e.fault() {
                        Fault::Configuration | Fault::Policy => Verdict::Hold(attempt),
                        Fault::Unknown => Verdict::Retry {
                            attempt,
                            unknown: true,
                        },
                        _ => Verdict::SessionEnded(attempt),
                    };
                    claimed
                        .recipients
                        .iter()
                        .map(|r| (r.id, v.clone()))
                        .collect()
                }
            };
            let now = SystemTime::now();
            let mut outcomes = Vec::new();
            for (id, v) in verdicts {
                let outcome = match v {
                    Verdict::Delivered(a) => Outcome::Delivered(a),
                    Verdict::Failed(a) => Outcome::Failed(a),
                    Verdict::Retry { attempt, unknown } => {
                        if unknown {
                            let recipient = address(claimed, id);
                            tracing::warn!(message = %claimed.lease.message, %recipient,
                                "the reply to the end of data was lost; deferred, a retry may deliver it twice");
                            self.emit(&RunEvent::OutcomeUnknown {
                                message: claimed.lease.message.clone(),
                                recipient,
                            });
                        }
                        self.retry(claimed, id, attempt, now)
                    }
                    Verdict::SessionEnded(a) if delivered_any => {
                        // Released below: due again at once, on a new connection.
                        ended.get_or_insert(a.text);
                        continue;
                    }
                    Verdict::SessionEnded(a) => {
                        ended.get_or_insert(a.text.clone());
                        self.retry(claimed, id, a, now)
                    }
                    Verdict::Hold(a) => {
                        hold.get_or_insert(a.text);
                        continue;
                    }
                };
                outcomes.push((id, outcome));
            }
            if !outcomes.is_empty() {
                self.record(claimed, lease, outcomes).await?;
            }
        }
        let now = SystemTime::now();
        let mut release_at = None;
        if let Some(reason) = hold {
            release_at = Some(self.hold(&reason, now).await?);
        } else if let (false, Some(reason)) = (delivered_any, &ended) {
            self.back_off(reason, now).await?;
        } else if let Some(e) = session_error.filter(|_| ended.is_some()) {
            tracing::info!(destination = %self.destination, error = %e, "session ended; the rest is due again at once");
        }
        for (claimed, lease) in sending.iter().zip(&leases) {
            self.release(claimed, lease, release_at).await?;
        }
        Ok(())
    }

    /// The message as sent: its envelope and its body from the spool.
    async fn outgoing(&self, claimed: &Claimed) -> std::result::Result<Outgoing, String> {
        let from = ReversePath::parse(claimed.from.trim_start_matches('<').trim_end_matches('>'))
            .or_else(|_| ReversePath::parse(&claimed.from))
            .map_err(|e| format!("sender {:?}: {e}", claimed.from))?;
        let to = claimed
            .recipients
            .iter()
            .map(|r| {
                Mailbox::parse(&r.address).map_err(|e| format!("recipient {:?}: {e}", r.address))
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let mut envelope = Envelope::new(from, to)
            .with_body(match claimed.options.body {
                BodyKind::SevenBit => BodyType::SevenBit,
                BodyKind::EightBit => BodyType::EightBitMime,
                BodyKind::Binary => BodyType::BinaryMime,
            })
            .with_size(claimed.body_size);
        envelope.require_tls = claimed.options.require_tls;
        let body = self
            .store
            .open_body(&claimed.lease.message)
            .await
            .map_err(|e| e.to_string())?;
        Ok(Outgoing { envelope, body })
    }

    /// Deferred on the schedule, or expired past the lifetime.
    fn retry(
        &self,
        claimed: &Claimed,
        id: RecipientId,
        attempt: Attempt,
        now: SystemTime,
    ) -> Outcome {
        let attempts = claimed
            .recipients
            .iter()
            .find(|r| r.id == id)
            .map_or(0, |r| r.attempts);
        match self
            .config
            .schedule
            .next(attempts + 1, claimed.created, now, random_unit())
        {
            Next::RetryAt(next) => Outcome::Deferred { attempt, next },
            Next::Expire => Outcome::Expired(Some(attempt)),
        }
    }

    /// Records `outcome` for `claimed` now when every recipient of it was
    /// delivered; true when it did (the rest waits for the session's end).
    async fn record_if_delivered(
        &self,
        claimed: &Claimed,
        lease: &Lease,
        outcome: &MessageOutcome,
        host: &str,
        tls: Option<&smtp_core::delivery::TlsInfo>,
    ) -> Result<bool> {
        let mut outcomes = Vec::new();
        for (id, v) in by_recipient(claimed, outcome, host, tls) {
            match v {
                Verdict::Delivered(a) => outcomes.push((id, Outcome::Delivered(a))),
                _ => return Ok(false),
            }
        }
        if outcomes.is_empty() {
            return Ok(false);
        }
        self.record(claimed, lease, outcomes).await?;
        Ok(true)
    }

    async fn record(
        &self,
        claimed: &Claimed,
        lease: &Lease,
        outcomes: Vec<(RecipientId, Outcome)>,
    ) -> Result<()> {
        match self
            .store
            .record(lease, outcomes.clone(), SystemTime::now())
            .await
        {
            Ok(()) => {}
            // Another worker took over: its result stands.
            Err(Error::StaleLease { .. }) => {
                tracing::warn!(message = %lease.message, "lease taken over; outcome not recorded");
                return Ok(());
            }
            Err(e) => return Err(e),
        }
        let mut summary = lock(&self.summary);
        for (id, outcome) in outcomes {
            match outcome {
                Outcome::Delivered(_) => summary.delivered += 1,
                Outcome::Failed(_) => summary.failed += 1,
                Outcome::Deferred { .. } => summary.deferred += 1,
                Outcome::Expired(_) => summary.expired += 1,
            }
            let taken_over = claimed
                .recipients
                .iter()
                .any(|r| r.id == id && r.claimed_from == RecipientState::Delivering);
            let event = RunEvent::Recorded {
                message: claimed.lease.message.clone(),
                recipient: address(claimed, id),
                outcome,
                taken_over,
            };
            drop(summary);
            self.emit(&event);
            summary = lock(&self.summary);
        }
        Ok(())
    }

    async fn release(
        &self,
        claimed: &Claimed,
        lease: &Lease,
        not_before: Option<SystemTime>,
    ) -> Result<()> {
        let n = match self
            .store
            .release(lease, not_before, SystemTime::now())
            .await
        {
            Ok(n) => n,
            Err(Error::StaleLease { .. }) => 0,
            Err(e) => return Err(e),
        };
        if n > 0 {
            lock(&self.summary).released += n;
            self.emit(&RunEvent::Released {
                message: claimed.lease.message.clone(),
                recipients: n,
                not_before,
            });
        }
        Ok(())
    }

    async fn release_all(&self, batch: &[Claimed], not_before: Option<SystemTime>) -> Result<()> {
        for claimed in batch {
            self.release(claimed, &claimed.lease, not_before).await?;
        }
        Ok(())
    }

    /// Renews the leases of the messages not yet recorded (`done`).
    async fn renew(&self, leases: &mut [Lease], done: &[bool]) {
        let now = SystemTime::now();
        for (lease, _) in leases.iter_mut().zip(done).filter(|(_, done)| !**done) {
            match self.store.renew(lease, now + self.config.lease, now).await {
                Ok(l) => *lease = l,
                Err(e) => tracing::warn!(message = %lease.message, error = %e, "lease not renewed"),
            }
        }
    }

    /// The session could not be opened.
    async fn open_failed(
        &self,
        relay: &Server,
        batch: &[Claimed],
        e: &smtp_tls::Error,
    ) -> Result<()> {
        let now = SystemTime::now();
        let reason = e.to_string();
        if matches!(e.fault(), Fault::Configuration | Fault::Policy) {
            let until = self.hold(&reason, now).await?;
            return self.release_all(batch, Some(until)).await;
        }
        self.back_off(&reason, now).await?;
        let attempt = Attempt {
            text: reason,
            host: Some(format!("{}:{}", relay.host, relay.port)),
            ..Attempt::default()
        };
        for claimed in batch {
            let outcomes = claimed
                .recipients
                .iter()
                .map(|r| (r.id, self.retry(claimed, r.id, attempt.clone(), now)))
                .collect();
            self.record(claimed, &claimed.lease, outcomes).await?;
        }
        Ok(())
    }

    /// Backs the destination off on its schedule; returns until when.
    async fn back_off(&self, reason: &str, now: SystemTime) -> Result<SystemTime> {
        self.back_off_at(&self.destination, reason, now).await
    }

    /// Backs `destination` off on its schedule; returns until when.
    async fn back_off_at(
        &self,
        destination: &str,
        reason: &str,
        now: SystemTime,
    ) -> Result<SystemTime> {
        let failures = self
            .store
            .backoff(destination)
            .await?
            .map_or(0, |b| b.failures);
        let until = now + self.config.backoff.delay(failures + 1, random_unit());
        self.store
            .set_backoff(destination, until, reason, now)
            .await?;
        self.emit(&RunEvent::BackedOff {
            destination: destination.to_owned(),
            reason: reason.to_owned(),
            until,
        });
        Ok(until)
    }

    /// Holds the destination (a configuration or policy fault), reported
    /// once per runner; returns until when.
    async fn hold(&self, reason: &str, now: SystemTime) -> Result<SystemTime> {
        self.hold_at(&self.destination, reason, now).await
    }

    /// Holds `destination`; returns until when.
    async fn hold_at(
        &self,
        destination: &str,
        reason: &str,
        now: SystemTime,
    ) -> Result<SystemTime> {
        let until = match self.backed_off_at(destination, now).await? {
            Some(until) => until,
            None => {
                let failures = self
                    .store
                    .backoff(destination)
                    .await?
                    .map_or(0, |b| b.failures);
                let until = now + self.config.backoff.delay(failures + 1, random_unit());
                self.store
                    .set_backoff(destination, until, reason, now)
                    .await?;
                until
            }
        };
        let first = lock(&self.held_reported).insert(destination.to_owned());
        if first {
            tracing::error!(%destination, %reason,
                "destination held: a configuration or policy fault; its recipients stay queued");
            lock(&self.summary)
                .held
                .push((destination.to_owned(), reason.to_owned()));
            self.emit(&RunEvent::Held {
                destination: destination.to_owned(),
                reason: reason.to_owned(),
                until,
            });
        }
        Ok(until)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn address(claimed: &Claimed, id: RecipientId) -> String {
    claimed
        .recipients
        .iter()
        .find(|r| r.id == id)
        .map(|r| r.address.clone())
        .unwrap_or_default()
}

/// Each claimed recipient's verdict, matched by position (the envelope
/// keeps the claimed order).
fn by_recipient(
    claimed: &Claimed,
    outcome: &MessageOutcome,
    host: &str,
    tls: Option<&smtp_core::delivery::TlsInfo>,
) -> Vec<(RecipientId, Verdict)> {
    claimed
        .recipients
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let v = outcome.recipients.get(i).map_or_else(
                || Verdict::Retry {
                    attempt: Attempt {
                        text: "no outcome for this recipient".into(),
                        host: Some(host.to_owned()),
                        ..Attempt::default()
                    },
                    unknown: true,
                },
                |o| verdict(o, host, tls),
            );
            (r.id, v)
        })
        .collect()
}

/// Splits claimed messages into batches of at most `per` messages.
fn batches(claimed: Vec<Claimed>, per: usize) -> Vec<Vec<Claimed>> {
    let per = per.max(1);
    let mut out = Vec::new();
    let mut it = claimed.into_iter().peekable();
    while it.peek().is_some() {
        out.push(it.by_ref().take(per).collect());
    }
    out
}
