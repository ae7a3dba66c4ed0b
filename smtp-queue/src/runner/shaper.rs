//! The runner's side of traffic shaping in direct delivery: each
//! destination's [`Shape`] with its [`Throttle`] on top, the rate budget
//! (GCRA, [`crate::rate`]) that paces its messages, the rate it was sent
//! at lately, and the cut a "slow down" reply makes.
//!
//! Budgets and the rate observed live in the runner's memory (per
//! runner); throttles are read from the store at each round (recovered
//! and written back when a step is due) and written when a signal cuts.
//! Sessions at once are counted twice: by the runner (a semaphore per
//! destination, [`Slot`]), then for the whole queue by a slot the store
//! leases ([`Store::take_slot`], taken in `runner/direct.rs` with the
//! limit [`Shaper::effective`] gives).
//! Messages are paced as their data is about to go: a [`Paced`] body
//! waits for the destination's budget at its first read.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use smtp_core::delivery::BodySource;

use super::lock;
use crate::error::Result;
use crate::rate::{Decision, Limit, take};
use crate::shaping::{Shape, Shaping, Throttle, limit_per_min};
use crate::store::{Store, millis};

/// How long back the rate sent at is measured.
const OBSERVE_MS: i64 = 10_000;
/// Sends remembered per destination at most.
const OBSERVE_KEPT: usize = 10_000;
/// A session's pacing waits at most this long in all: a destination paced
/// slower gets fewer messages per session (a server waits 3 minutes for a
/// data block, RFC 5321 §4.5.3.2.5; we stay well within).
const SESSION_PACE: Duration = Duration::from_secs(60);

/// A destination's limits now: its shape, lowered by its throttle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Effective {
    pub(super) connections: usize,
    pub(super) per_connection: usize,
    pub(super) limit: Option<Limit>,
}

#[derive(Debug, Default)]
struct Dest {
    throttle: Option<Throttle>,
    /// The rate budget's theoretical arrival time (epoch ms).
    tat: Option<i64>,
    /// When messages went lately (epoch ms).
    sent: VecDeque<i64>,
}

/// Shapes, throttles and budgets, per destination.
#[derive(Debug)]
pub(crate) struct Shaper {
    shaping: Shaping,
    per_destination: usize,
    per_connection: usize,
    dests: Mutex<HashMap<String, Dest>>,
}

impl Shaper {
    pub(super) fn new(shaping: Shaping, per_destination: usize, per_connection: usize) -> Self {
        Self {
            shaping,
            per_destination,
            per_connection,
            dests: Mutex::new(HashMap::new()),
        }
    }

    pub(super) fn shape(&self, destination: &str) -> Shape {
        self.shaping
            .shape(destination, self.per_destination, self.per_connection)
    }

    /// Reads `destinations`' throttles from the store (another runner's,
    /// or this one's before a restart), recovers what is due and writes
    /// back what changed.
    pub(super) async fn load(
        &self,
        store: &dyn Store,
        destinations: &[String],
        now: SystemTime,
    ) -> Result<()> {
        let kept = store.throttles(Some(destinations)).await?;
        let mut kept: HashMap<String, Throttle> = kept
            .into_iter()
            .map(|t| (t.destination.clone(), t))
            .collect();
        for d in destinations {
            let stored = kept.remove(d);
            let recovered = stored
                .as_ref()
                .and_then(|t| t.recover(&self.shape(d), &self.shaping.adaptive, now));
            match (&stored, &recovered) {
                (Some(_), None) => {
                    tracing::info!(destination = %d, "throttle lifted: back to the destination's shape");
                    store.clear_throttle(d).await?;
                }
                (Some(s), Some(r)) if s != r => store.set_throttle(r).await?,
                _ => {}
            }
            lock(&self.dests).entry(d.clone()).or_default().throttle = recovered;
        }
        Ok(())
    }

    /// `destination`'s limits at `now`.
    pub(super) fn effective(&self, destination: &str, now: SystemTime) -> Effective {
        let shape = self.shape(destination);
        let throttle = self.throttle(destination, &shape, now);
        effective(&shape, throttle.as_ref())
    }

    fn throttle(&self, destination: &str, shape: &Shape, now: SystemTime) -> Option<Throttle> {
        lock(&self.dests)
            .get(destination)
            .and_then(|d| d.throttle.as_ref())
            .and_then(|t| t.recover(shape, &self.shaping.adaptive, now))
    }

    /// Messages in one session to `destination`: its messages per
    /// connection, fewer when paced so slowly that the session would wait
    /// longer than [`SESSION_PACE`].
    pub(super) fn per_session(&self, destination: &str, now: SystemTime) -> usize {
        let e = self.effective(destination, now);
        let paced = e.limit.map_or(usize::MAX, |l| {
            let interval = u128::try_from(l.rate.interval_ms()).unwrap_or(1).max(1);
            let n = SESSION_PACE.as_millis() / interval + u128::from(l.burst.max(1));
            usize::try_from(n).unwrap_or(usize::MAX)
        });
        e.per_connection.min(paced).max(1)
    }

    /// Waits until `destination`'s budget allows one more message, takes
    /// it and counts it sent.
    pub(super) async fn pace(&self, destination: &str) {
        loop {
            let now = SystemTime::now();
            let now_ms = millis(now).unwrap_or(0);
            let limit = self.effective(destination, now).limit;
            let wait = {
                let mut dests = lock(&self.dests);
                let d = dests.entry(destination.to_owned()).or_default();
                let decision = match limit {
                    None => Decision::Allowed,
                    Some(l) => {
                        let mut tats = [d.tat];
                        let decision = take(&[l], &mut tats, &[], 1, now_ms);
                        d.tat = tats[0];
                        decision
                    }
                };
                match decision {
                    Decision::Allowed => {
                        if d.sent.len() >= OBSERVE_KEPT {
                            d.sent.pop_front();
                        }
                        d.sent.push_back(now_ms);
                        return;
                    }
                    Decision::WaitUntil(t) => t.saturating_sub(now_ms),
                }
            };
            // Looked at again at least every second: a cut may come.
            let wait = u64::try_from(wait.clamp(1, 1000)).unwrap_or(1000);
            tokio::time::sleep(Duration::from_millis(wait)).await;
        }
    }

    /// The rate `destination` was sent at lately, per minute.
    fn observed(&self, destination: &str, now_ms: i64) -> Option<u32> {
        let mut dests = lock(&self.dests);
        let d = dests.get_mut(destination)?;
        while d.sent.front().is_some_and(|t| *t < now_ms - OBSERVE_MS) {
            d.sent.pop_front();
        }
        let first = *d.sent.front()?;
        let span = (now_ms - first).max(1000);
        let n = i64::try_from(d.sent.len()).unwrap_or(i64::MAX);
        u32::try_from(n.saturating_mul(60_000) / span).ok()
    }

    /// A "slow down" from `destination` at `now`: the new throttle, and
    /// the connections it takes away, unless the signal came within the
    /// settle time of the last cut. The caller keeps it in the store.
    pub(super) fn signal(
        &self,
        destination: &str,
        reason: &str,
        now: SystemTime,
    ) -> Option<(Throttle, usize)> {
        let shape = self.shape(destination);
        let previous = self.throttle(destination, &shape, now);
        let before = effective(&shape, previous.as_ref()).connections;
        let observed = self.observed(destination, millis(now).unwrap_or(0));
        let cut = Throttle::cut(
            previous.as_ref(),
            destination,
            &shape,
            observed,
            reason,
            &self.shaping.adaptive,
            now,
        )?;
        let after = effective(&shape, Some(&cut)).connections;
        lock(&self.dests)
            .entry(destination.to_owned())
            .or_default()
            .throttle = Some(cut.clone());
        Some((cut, before.saturating_sub(after)))
    }
}

/// A shape lowered by a throttle: the fewer connections, the slower rate.
fn effective(shape: &Shape, throttle: Option<&Throttle>) -> Effective {
    let connections = throttle.map_or(shape.connections, |t| {
        shape.connections.min(t.connections as usize)
    });
    let limit = match (shape.rate, throttle.and_then(Throttle::limit)) {
        (Some(s), Some(t)) if limit_per_min(&s) <= limit_per_min(&t) => Some(s),
        (_, Some(t)) => Some(t),
        (s, None) => s,
    };
    Effective {
        connections: connections.max(1),
        per_connection: shape.messages_per_connection,
        limit,
    }
}

/// A body whose first read waits for its destination's rate budget: the
/// message is paced as its data is about to go.
pub(super) struct Paced {
    pub(super) inner: Box<dyn BodySource>,
    pub(super) shaper: Arc<Shaper>,
    pub(super) destination: String,
    pub(super) paced: bool,
}

#[async_trait]
impl BodySource for Paced {
    async fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if !self.paced {
            self.shaper.pace(&self.destination).await;
            self.paced = true;
        }
        self.inner.read(buf).await
    }

    async fn rewind(&mut self) -> std::io::Result<()> {
        self.inner.rewind().await
    }
}

impl super::Runner {
    /// `destination` said "slow down" (`reason`): cuts its limits, keeps
    /// the throttle in the store and tells. Returns the sessions at once
    /// it now allows, or `None` when the signal cut nothing (it came
    /// within the settle time of the last cut).
    pub(super) async fn throttled(&self, destination: &str, reason: &str) -> Result<Option<usize>> {
        let now = SystemTime::now();
        let reason = self.redact(reason);
        let Some((throttle, _)) = self.shaper.signal(destination, &reason, now) else {
            return Ok(None);
        };
        self.store.set_throttle(&throttle).await?;
        tracing::warn!(%destination, reason = %throttle.reason, connections = throttle.connections,
            rate_per_min = throttle.rate_per_min,
            "the destination said to slow down: its limits are lowered for a while");
        self.emit(&crate::event::RunEvent::Throttled {
            destination: destination.to_owned(),
            connections: throttle.connections,
            rate_per_min: throttle.rate_per_min,
            reason: throttle.reason.clone(),
        });
        Ok(Some(self.shaper.effective(destination, now).connections))
    }
}

/// A session's place among its destination's: given back when the
/// session ends, or forgotten when the destination's sessions were cut
/// meanwhile (never the last).
pub(super) struct Slot<'a> {
    pub(super) permit: Option<tokio::sync::SemaphorePermit<'a>>,
    pub(super) sizes: &'a Mutex<HashMap<String, (usize, usize)>>,
    pub(super) destination: String,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut sizes = lock(self.sizes);
        if let Some((permits, target)) = sizes.get_mut(&self.destination)
            && *permits > (*target).max(1)
            && let Some(p) = self.permit.take()
        {
            p.forget();
            *permits -= 1;
        }
    }
}
