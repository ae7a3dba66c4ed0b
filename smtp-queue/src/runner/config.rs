//! [`RunnerConfig`]: how a [`Runner`](super::Runner) works.

use std::time::Duration;

use crate::rate::Limit;
use crate::schedule::Schedule;
use crate::shaping::Shaping;

/// How a [`Runner`](super::Runner) works.
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
    /// Sessions at once to one destination (direct delivery), at most.
    pub per_destination: usize,
    /// The recipients' retry schedule.
    pub schedule: Schedule,
    /// The destination's back-off schedule (counted in failures).
    pub backoff: Schedule,
    /// After a stop, how long a session under way may take to finish
    /// before it is abandoned and what it had not settled is released.
    pub stop_grace: Duration,
    /// The `From:` of delivery status notifications; default
    /// `MAILER-DAEMON@` the EHLO name (see [`crate::dsn`]).
    pub notify_from: Option<String>,
    /// The relay account's rate limits (standard delivery; empty: none).
    /// See `runner/rated.rs`: a message costs one unit per recipient.
    pub rate: Vec<Limit>,
    /// The key of the budget the limits take from, shared by every
    /// runner on the queue; default [`relay_budget_key`](super::relay_budget_key) of the relay.
    pub budget_key: Option<String>,
    /// Under a rate, how long a session waits for the budget with the
    /// connection kept open; a longer wait closes it and releases what
    /// it held, due at its expected turn. Default 30 s.
    pub rate_wait: Duration,
    /// Direct delivery's shapes per destination (sessions, messages per
    /// session, rate) over `per_destination` and `per_connection`, and
    /// how a "slow down" reply throttles them. Default: the built-in
    /// table ([`Shaping::builtin`]).
    pub shaping: Shaping,
    /// The route whose messages this runner claims (with route-less
    /// ones), and that the notifications it enqueues for route-less
    /// messages get; default the relay's ([`relay_route`](super::relay_route)), or
    /// [`DIRECT_ROUTE`] in direct delivery. See [`Runner::route`](super::Runner::route).
    pub route: Option<String>,
}

/// The route of messages delivered directly to their domains' MX hosts
/// ([`MessageOptions::route`](crate::MessageOptions::route)), under their
/// MTA-STS policies ([`Runner::with_mta_sts`](super::Runner::with_mta_sts)).
pub const DIRECT_ROUTE: &str = "direct";

/// The route of messages delivered directly without MTA-STS: enqueued so
/// on purpose (`--mta-sts off`), they go only through a runner without it,
/// and the others never through one: like a relay's TLS policy, whether a
/// domain's policy is honoured is decided when the message is enqueued.
pub const DIRECT_ROUTE_WITHOUT_MTA_STS: &str = "direct mta-sts=off";

impl Default for RunnerConfig {
    fn default() -> Self {
        Self {
            worker: format!("runner-{}", std::process::id()),
            lease: Duration::from_secs(300),
            claim: 200,
            per_connection: 100,
            concurrency: 4,
            per_destination: 2,
            schedule: Schedule::default(),
            backoff: Schedule::default(),
            stop_grace: Duration::from_secs(10),
            notify_from: None,
            rate: Vec::new(),
            budget_key: None,
            rate_wait: Duration::from_secs(30),
            shaping: Shaping::builtin(),
            route: None,
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
    /// Sets the sessions at once to one destination (at least 1).
    #[must_use]
    pub fn with_per_destination(mut self, n: usize) -> Self {
        self.per_destination = n.max(1);
        self
    }
    /// Sets the messages claimed per round (at least 1).
    #[must_use]
    pub fn with_claim(mut self, n: u32) -> Self {
        self.claim = n.max(1);
        self
    }
    /// Sets the grace a session gets after a stop.
    #[must_use]
    pub fn with_stop_grace(mut self, grace: Duration) -> Self {
        self.stop_grace = grace;
        self
    }
    /// Sets the route whose messages the runner claims (instead of the
    /// one its relay, or direct delivery, gives).
    #[must_use]
    pub fn with_route(mut self, route: impl Into<String>) -> Self {
        self.route = Some(route.into());
        self
    }
    /// Sets the `From:` address of delivery status notifications.
    #[must_use]
    pub fn with_notify_from(mut self, from: impl Into<String>) -> Self {
        self.notify_from = Some(from.into());
        self
    }
    /// Sets the relay account's rate limits (they combine: each is kept).
    #[must_use]
    pub fn with_rate(mut self, limits: Vec<Limit>) -> Self {
        self.rate = limits;
        self
    }
    /// Sets the key of the budget the rate limits take from.
    #[must_use]
    pub fn with_budget_key(mut self, key: impl Into<String>) -> Self {
        self.budget_key = Some(key.into());
        self
    }
    /// Sets how long a session waits for the budget on an open connection.
    #[must_use]
    pub fn with_rate_wait(mut self, wait: Duration) -> Self {
        self.rate_wait = wait;
        self
    }
    /// Sets direct delivery's traffic shaping.
    #[must_use]
    pub fn with_shaping(mut self, shaping: Shaping) -> Self {
        self.shaping = shaping;
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
