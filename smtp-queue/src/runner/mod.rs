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
//! | a stop's grace ran out before the message's final reply | released; after its data went out, named first by [`RunEvent::InFlight`] (the server may have it) |

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use smtp_core::Envelope;
use smtp_core::address::{Mailbox, ReversePath};
use smtp_core::data::BodyType;
use smtp_tls::{Outgoing, Server};

mod config;
mod direct;
mod notify;
pub use self::config::{DIRECT_ROUTE, DIRECT_ROUTE_WITHOUT_MTA_STS, RunnerConfig};
pub use self::direct::mx_destination;
pub use self::rated::{relay_budget_key, relay_route, relay_route_for};
mod rated;
mod record;
mod relay;
mod shaper;

use crate::error::{Error, Result};
use crate::event::RunEvent;
use crate::stop::Stop;
use crate::store::{Attempt, BodyKind, Claimed, Lease, MessageId, Outcome, RecipientId, Store};

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
    /// Recipients claimed and not yet recorded, by message, with the
    /// lease they are held under: a message whose every recipient was
    /// recorded has nothing to release; what a failed round left is
    /// released by [`Runner::release_unsettled`].
    unsettled: Mutex<HashMap<MessageId, (Lease, usize)>>,
    /// Direct delivery: each planned domain's destination (its MX host
    /// set), for logs and metrics.
    mx_destinations: Mutex<HashMap<String, String>>,
    /// Direct delivery: the MTA-STS mode each planned domain of the round
    /// is delivered under (domains without a policy absent), for logs.
    sts_modes: Mutex<HashMap<String, smtp_core::delivery::mta_sts::Mode>>,
    /// A session with the relay has been set up (authenticated, when it
    /// is to be): sessions may then start together. A watch, so that the
    /// sessions waiting behind the first start the moment it is set.
    relay_proven: tokio::sync::watch::Sender<bool>,
    /// Direct delivery's shapes, throttles and rate budgets.
    shaper: Arc<shaper::Shaper>,
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
            observer: Arc::new(|_| {}),
            summary: Mutex::new(Summary::default()),
            held_reported: Mutex::new(HashSet::new()),
            unsettled: Mutex::new(HashMap::new()),
            mx_destinations: Mutex::new(HashMap::new()),
            sts_modes: Mutex::new(HashMap::new()),
            relay_proven: tokio::sync::watch::Sender::new(false),
            shaper: Arc::new(shaper::Shaper::new(
                config.shaping.clone(),
                config.per_destination,
                config.per_connection,
            )),
            config,
        }
    }

    /// Direct delivery under each domain's MTA-STS policy (RFC 8461):
    /// under `enforce`, only the MX hosts it allows, over TLS verified for
    /// the MX host name, or deferred naming the policy; each session's
    /// result counted for TLS-RPT. No effect on a relay runner.
    #[must_use]
    pub fn with_mta_sts(mut self, mta_sts: Arc<crate::mta_sts::MtaSts>) -> Self {
        if let Mode::Direct(direct) = &mut self.mode {
            direct.mta_sts = Some(mta_sts);
        }
        self
    }

    /// A runner delivering directly to each recipient domain's mail
    /// servers (MX records through `resolver`, connections through
    /// `connector`). Domains served by the same MX hosts are one
    /// destination, for sessions, back-off and holds: `mx:HOST[,HOST…]`
    /// ([`mx_destination`]).
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
                mta_sts: None,
                plans: Mutex::new(HashMap::new()),
            }),
            destination: "direct".to_owned(),
            observer: Arc::new(|_| {}),
            summary: Mutex::new(Summary::default()),
            held_reported: Mutex::new(HashSet::new()),
            unsettled: Mutex::new(HashMap::new()),
            mx_destinations: Mutex::new(HashMap::new()),
            sts_modes: Mutex::new(HashMap::new()),
            relay_proven: tokio::sync::watch::Sender::new(false),
            shaper: Arc::new(shaper::Shaper::new(
                config.shaping.clone(),
                config.per_destination,
                config.per_connection,
            )),
            config,
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

    /// The route whose messages this runner claims, besides those enqueued
    /// without one ([`MessageOptions::route`](crate::MessageOptions::route)):
    /// [`RunnerConfig::route`] when set, else the relay's
    /// ([`relay_route`]), or in direct delivery [`DIRECT_ROUTE`] (with
    /// MTA-STS) or [`DIRECT_ROUTE_WITHOUT_MTA_STS`].
    pub fn route(&self) -> String {
        if let Some(route) = &self.config.route {
            return route.clone();
        }
        match &self.mode {
            Mode::Relay(relay) => relay_route(relay),
            Mode::Direct(d) if d.mta_sts.is_some() => DIRECT_ROUTE.to_owned(),
            Mode::Direct(_) => DIRECT_ROUTE_WITHOUT_MTA_STS.to_owned(),
        }
    }

    /// When the next of this runner's messages falls due (or its lease
    /// expires): the store's [`next_due_for`](Store::next_due_for) its route.
    pub(super) async fn next_due(&self) -> Result<Option<SystemTime>> {
        self.store.next_due_for(Some(&self.route())).await
    }

    /// The key of the budget the rate limits take from: the configured
    /// one, else the relay account's ([`relay_budget_key`]); `None` in
    /// direct delivery.
    pub fn budget_key(&self) -> Option<String> {
        match &self.mode {
            Mode::Relay(relay) => Some(
                self.config
                    .budget_key
                    .clone()
                    .unwrap_or_else(|| relay_budget_key(relay)),
            ),
            Mode::Direct(_) => None,
        }
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
            self.notify_owed().await?;
            let now = SystemTime::now();
            if self.backed_off(now).await?.is_some() {
                break;
            }
            if let (Mode::Relay(relay), false) = (&self.mode, self.config.rate.is_empty()) {
                self.run_rated(relay, stop).await?;
                break;
            }
            let claimed = self.claim(now).await?;
            if claimed.is_empty() {
                break;
            }
            {
                let mut unsettled = lock(&self.unsettled);
                for c in &claimed {
                    unsettled.insert(
                        c.lease.message.clone(),
                        (c.lease.clone(), c.recipients.len()),
                    );
                }
            }
            if let Mode::Direct(direct) = &self.mode {
                self.deliver_direct(direct, claimed, stop).await?;
                continue;
            }
            // Spread over the sessions allowed rather than filling one.
            let sessions = self.config.concurrency.max(1);
            let per = self
                .config
                .per_connection
                .min(claimed.len().div_ceil(sessions))
                .max(1);
            // Until a session with the relay has been set up, the first
            // sets up alone: credentials the relay refuses are tried once,
            // not by every session at once (accounts get locked for less).
            // The others wait for its set-up, not its batch; or for its
            // end, when it could not set up (they then find the back-off
            // or hold it recorded, and release).
            let (first_ended, gate) = tokio::sync::watch::channel(false);
            let alone = !*self.relay_proven.borrow();
            let results: Vec<Result<()>> =
                futures_util::stream::iter(batches(claimed, per).into_iter().enumerate())
                    .map(|(k, batch)| {
                        let (first_ended, gate) = (&first_ended, gate.clone());
                        async move {
                            if !alone {
                                return self.deliver(batch, stop).await;
                            }
                            if k == 0 {
                                let r = self.deliver(batch, stop).await;
                                first_ended.send_replace(true);
                                return r;
                            }
                            self.first_set_up(gate).await;
                            self.deliver(batch, stop).await
                        }
                    })
                    // The first holds one of the sessions allowed while the
                    // others wait: never more than `concurrency` at once.
                    .buffer_unordered(self.config.concurrency.max(1))
                    .collect()
                    .await;
            for r in results {
                r?;
            }
        }
        Ok(self.summary())
    }

    /// Gives back what a failed [`run_due`](Self::run_due) or
    /// [`watch`](Self::watch) left held (the queue's database failed
    /// under a round, which then ends without releasing): every message
    /// claimed and neither settled nor released, due at once instead of
    /// when its lease runs out. Call it only after such a failure, when no
    /// session of this runner is under way: a recipient whose data went
    /// out but whose outcome could not be recorded is delivered again, as
    /// it would be once its lease ran out. A lease taken over meanwhile is
    /// left alone. Returns how many recipients were released; on an error
    /// what is left stays for the next call.
    pub async fn release_unsettled(&self) -> Result<u64> {
        let held: Vec<(MessageId, Lease)> = lock(&self.unsettled)
            .iter()
            .map(|(id, (lease, left))| (id.clone(), lease.clone(), *left))
            .filter(|(_, _, left)| *left > 0)
            .map(|(id, lease, _)| (id, lease))
            .collect();
        let mut released = 0;
        for (id, lease) in held {
            match self.store.release(&lease, None, SystemTime::now()).await {
                Ok(n) => released += n,
                Err(Error::StaleLease { .. }) => {}
                Err(e) => {
                    lock(&self.summary).released += released;
                    return Err(e);
                }
            }
            lock(&self.unsettled).remove(&id);
        }
        // Settled ones need nothing.
        lock(&self.unsettled).retain(|_, (_, left)| *left > 0);
        lock(&self.summary).released += released;
        Ok(released)
    }

    /// [`run_due`](Self::run_due), then sleeps until the next recipient
    /// (or the destination's back-off) is due, again and again, until
    /// `stop` is given.
    pub async fn watch(&self, stop: &Stop) -> Result<Summary> {
        while !stop.is_stopped() {
            self.run_due(stop).await?;
            let now = SystemTime::now();
            // This runner's messages only: others' due ones are not its to
            // take, and must not wake it.
            let next = match (self.next_due().await?, self.backed_off(now).await?) {
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

    /// Resolves once a session with the relay has been set up, or once
    /// the round's first session ended (`first_ended` set or dropped)
    /// without setting one up.
    async fn first_set_up(&self, mut first_ended: tokio::sync::watch::Receiver<bool>) {
        let mut proven = self.relay_proven.subscribe();
        // Either wait ends in an error only when its sender is gone: the
        // runner's lives as long as `self`, the first's when it ended.
        tokio::select! {
            _ = proven.wait_for(|p| *p) => {}
            _ = first_ended.wait_for(|ended| *ended) => {}
        }
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

    /// The destination an attempt for `address` goes to: the relay's key,
    /// or in direct delivery its domain's MX host set as the latest round
    /// planned it (`direct:DOMAIN` for a domain without one).
    pub(super) fn destination_of(&self, address: &str) -> String {
        match &self.mode {
            Mode::Relay(_) => self.destination.clone(),
            Mode::Direct(_) => {
                let domain = address
                    .rsplit_once('@')
                    .map_or(address, |(_, domain)| domain.trim_end_matches('>'))
                    .to_ascii_lowercase();
                lock(&self.mx_destinations)
                    .get(&domain)
                    .cloned()
                    .unwrap_or_else(|| format!("direct:{domain}"))
            }
        }
    }

    /// The MTA-STS mode `address`'s domain was delivered under this
    /// round (direct delivery), if it has a policy.
    pub(super) fn sts_mode_of(&self, address: &str) -> Option<smtp_core::delivery::mta_sts::Mode> {
        let domain = address
            .rsplit_once('@')
            .map_or(address, |(_, domain)| domain.trim_end_matches('>'))
            .to_ascii_lowercase();
        lock(&self.sts_modes).get(&domain).copied()
    }

    /// `text` without the relay's secret in any form AUTH sends it in: a
    /// server may echo it in a reply, which the queue stores and logs.
    pub(super) fn redact(&self, text: &str) -> String {
        match &self.mode {
            Mode::Relay(Server {
                credentials: Some(c),
                ..
            }) => c.redact(text),
            _ => text.to_owned(),
        }
    }

    /// Resolves `stop_grace` after `stop` is given.
    async fn abandoned(&self, stop: &Stop) {
        stop.stopped().await;
        tokio::time::sleep(self.config.stop_grace).await;
    }

    fn emit(&self, event: &RunEvent) {
        (self.observer)(event);
    }

    /// The message as sent: its envelope and its body from the spool.
    pub(super) async fn outgoing(
        &self,
        claimed: &Claimed,
    ) -> std::result::Result<Outgoing, Unreadable> {
        let envelope = self.envelope_of(claimed).map_err(Unreadable::Broken)?;
        let body = self
            .store
            .open_body(&claimed.lease.message)
            .await
            .map_err(Unreadable::from)?;
        Ok(Outgoing { envelope, body })
    }

    /// `batch`'s messages ready to go, beside the claims they came from;
    /// one that cannot be read is recorded as [`unreadable`](Self::unreadable)
    /// says (a corrupt one fails alone; the others go on).
    pub(super) async fn readable(
        &self,
        batch: Vec<Claimed>,
    ) -> Result<(Vec<Outgoing>, Vec<Claimed>)> {
        let mut outgoing = Vec::with_capacity(batch.len());
        let mut sending = Vec::with_capacity(batch.len());
        for claimed in batch {
            match self.outgoing(&claimed).await {
                Ok(o) => {
                    outgoing.push(o);
                    sending.push(claimed);
                }
                Err(why) => {
                    let ids = claimed.recipients.iter().map(|r| r.id);
                    let outcomes = self.unreadable(&claimed, ids, &why);
                    self.record(&claimed, &claimed.lease, outcomes).await?;
                }
            }
        }
        Ok((outgoing, sending))
    }

    /// Claims what is due at `now` of this runner's route (and route-less
    /// messages), as the configuration says (how many, for whom, for how
    /// long); in direct delivery, spread over the domains due: no more of
    /// one domain than the widest destination takes at once
    /// ([`Shaping::widest`](crate::shaping::Shaping::widest)).
    async fn claim(&self, now: SystemTime) -> Result<Vec<Claimed>> {
        let per_domain = match self.mode {
            Mode::Direct(_) => {
                let c = &self.config;
                let widest = c.shaping.widest(c.per_destination, c.per_connection);
                Some(u32::try_from(widest).unwrap_or(u32::MAX))
            }
            Mode::Relay(_) => None,
        };
        self.store
            .claim_due_spread(
                Some(&self.route()),
                now,
                self.config.claim,
                per_domain,
                &self.config.worker,
                self.config.lease,
            )
            .await
    }

    /// The outcomes of `ids`, recipients of a message that could not be
    /// read: failed when the message is broken, else deferred (a local
    /// fault: the body file's permissions, an I/O error).
    pub(super) fn unreadable(
        &self,
        claimed: &Claimed,
        ids: impl Iterator<Item = RecipientId>,
        why: &Unreadable,
    ) -> Vec<(RecipientId, Outcome)> {
        let now = SystemTime::now();
        let text = why.to_string();
        if matches!(why, Unreadable::Local(_)) {
            tracing::warn!(message_id = %claimed.lease.message, error = %text,
                "a message's body could not be read; deferring it");
        }
        ids.map(|id| {
            let attempt = Attempt {
                text: text.clone(),
                ..Attempt::default()
            };
            let outcome = match why {
                Unreadable::Broken(_) => Outcome::Failed(attempt),
                Unreadable::Local(_) => self.retry(claimed, id, attempt, now),
            };
            (id, outcome)
        })
        .collect()
    }

    /// The message's envelope, every claimed recipient in claimed order.
    pub(super) fn envelope_of(&self, claimed: &Claimed) -> std::result::Result<Envelope, String> {
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
        Ok(envelope)
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

/// Why a claimed message could not be made ready to send.
#[derive(Debug)]
pub(super) enum Unreadable {
    /// The message itself is broken (its envelope does not parse, its body
    /// is missing or altered): it fails.
    Broken(String),
    /// A local fault reading it (permissions, I/O): it is deferred.
    Local(String),
}

impl From<Error> for Unreadable {
    fn from(e: Error) -> Self {
        match e {
            Error::Corrupt { .. } | Error::NotFound(_) => Self::Broken(e.to_string()),
            Error::Storage {
                doing,
                path,
                source,
            } => Self::Local(format!(
                "cannot read it while {doing}{}: {source}; the queue's files must be readable \
                 by the user running `smtp queue run`",
                path.map(|p| format!(" ({})", p.display()))
                    .unwrap_or_default()
            )),
            other => Self::Local(other.to_string()),
        }
    }
}

impl std::fmt::Display for Unreadable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Broken(s) | Self::Local(s) => f.write_str(s),
        }
    }
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

#[cfg(test)]
mod tests {
    use super::{Error, MessageId, Unreadable};

    #[test]
    fn a_broken_message_fails_and_a_local_fault_reading_it_defers() {
        let id = MessageId::parse("018bcfe568e8a3f1c2d4e5f60718").unwrap();
        let corrupt = Error::corrupt(Some(&id), "its body file is missing");
        assert!(matches!(Unreadable::from(corrupt), Unreadable::Broken(_)));
        assert!(matches!(
            Unreadable::from(Error::NotFound(id)),
            Unreadable::Broken(_)
        ));
        let denied = Error::io(
            "opening a body file",
            "/var/q/bodies/x",
            std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        );
        let why = Unreadable::from(denied);
        assert!(matches!(why, Unreadable::Local(_)), "{why:?}");
        let text = why.to_string();
        assert!(text.contains("/var/q/bodies/x"), "{text}");
        assert!(text.contains("readable by the user running"), "{text}");
        assert!(!text.contains("writable and has space"), "{text}");
    }
}
