//! Standard delivery under the relay account's rate limits
//! ([`RunnerConfig::rate`](super::RunnerConfig::rate)).
//!
//! Rented relays count recipients, so **a message costs one unit per
//! recipient**. The budget is the store's ([`Store::take_budget`]): every
//! runner on the queue takes from the same one, atomically, and a restart
//! does not reset it. A rated runner keeps one session to the relay (the
//! budget, not connections, is what limits it) and:
//!
//! 1. claims what is due; of it, keeps what its expected turn
//!    ([`rate::Turns`]: the pace and the caps; an estimate for messages
//!    of several recipients) puts within [`RunnerConfig::rate_wait`]
//!    (30 s by default) and releases the rest at once, unattempted, each
//!    due at its expected turn, so that `list` shows when it will go;
//! 2. takes each kept message's cost from the budget before handing it to
//!    the session: a session never pipelines more than it took;
//! 3. when the budget says wait: waits on the open session (taking in
//!    what the server says, so a closed connection is noticed) if the
//!    turn is within `rate_wait`, else releases what it kept, each due at
//!    its expected turn, and QUITs; when nothing more is due but the
//!    next is due within `rate_wait`, it waits for it on the session too.
//!
//! A stop ends any wait at once; what is held is released, due at once.

use std::collections::VecDeque;
use std::time::{Duration, SystemTime};

use smtp_tls::{Server, Session};

use super::Runner;
use super::record::Unrecorded;
use crate::error::Result;
use crate::event::RunEvent;
use crate::rate::{self, Decision};
use crate::stop::Stop;
use crate::store::{Claimed, from_millis, millis};

/// The budget key of a relay account: `relay:HOST:PORT`, with `:USER`
/// when the relay authenticates (the cap is the account's); the host in
/// lower case ([`rate::relay_key`]).
pub fn relay_budget_key(relay: &Server) -> String {
    rate::relay_key(
        &relay.host,
        relay.port,
        relay.credentials.as_ref().map(|c| c.username()),
    )
}

/// The route of messages delivered through `relay`
/// ([`MessageOptions::route`](crate::MessageOptions::route)): the relay
/// account ([`relay_budget_key`]) and how it is reached,
/// `relay:HOST:PORT[:USER] tls=POLICY[ implicit]`. The user name is in
/// it, never a secret.
pub fn relay_route(relay: &Server) -> String {
    relay_route_for(
        &relay.host,
        relay.port,
        relay.credentials.as_ref().map(|c| c.username()),
        relay.policy,
        relay.implicit_tls,
    )
}

/// [`relay_route`] from its parts, for a program that records a route
/// without building the [`Server`] (nor reading its password).
pub fn relay_route_for(
    host: &str,
    port: u16,
    user: Option<&str>,
    policy: smtp_core::TlsPolicy,
    implicit_tls: bool,
) -> String {
    let implicit = if implicit_tls { " implicit" } else { "" };
    format!(
        "{} tls={policy}{implicit}",
        rate::relay_key(host, port, user)
    )
}

/// A message's cost: its recipients (relays count those).
fn cost(claimed: &Claimed) -> u32 {
    u32::try_from(claimed.recipients.len())
        .unwrap_or(u32::MAX)
        .max(1)
}

impl Runner {
    /// Delivers what is due under the rate limits until nothing is due
    /// within `rate_wait`, the relay is backed off or held, or a stop.
    pub(super) async fn run_rated(&self, relay: &Server, stop: &Stop) -> Result<()> {
        let key = self.budget_key().unwrap_or_default();
        let limits = &self.config.rate;
        let mut session: Option<Session> = None;
        let mut pending: VecDeque<Claimed> = VecDeque::new();
        let mut why = Unrecorded::default();
        let mut delivered_any = false;
        let mut session_error = None;
        // Sent and not all recorded: released at the end, as `why` says.
        let mut to_release: Vec<(Claimed, crate::store::Lease)> = Vec::new();
        loop {
            if stop.is_stopped() {
                break;
            }
            if pending.is_empty() {
                self.notify_owed().await?;
                let now = SystemTime::now();
                if self.backed_off(now).await?.is_some() {
                    break;
                }
                let claimed = self.claim(now).await?;
                if claimed.is_empty() {
                    // Nothing due: wait on the session for what falls due
                    // soon, else end.
                    let soon = self.next_due().await?.filter(|t| {
                        t.duration_since(SystemTime::now()).unwrap_or_default()
                            <= self.config.rate_wait
                    });
                    match (soon, session.as_mut()) {
                        (Some(t), Some(s)) if s.is_open() => {
                            self.wait_on(s, t, stop).await;
                            continue;
                        }
                        _ => break,
                    }
                }
                {
                    let mut unsettled = super::lock(&self.unsettled);
                    for c in &claimed {
                        unsettled.insert(
                            c.lease.message.clone(),
                            (c.lease.clone(), c.recipients.len()),
                        );
                    }
                }
                self.pace(&key, &mut pending, claimed).await?;
                continue;
            }
            // Take from the budget for as many as may go now.
            let mut chunk = Vec::new();
            let mut wait = None;
            while let Some(front) = pending.front() {
                let now = SystemTime::now();
                match self
                    .store
                    .take_budget(&key, limits, cost(front), now)
                    .await?
                {
                    Decision::Allowed => chunk.extend(pending.pop_front()),
                    Decision::WaitUntil(ms) => {
                        wait = Some(from_millis(ms));
                        break;
                    }
                }
                let left = self.config.per_connection.saturating_sub(
                    session
                        .as_ref()
                        .map_or(0, |s| usize::try_from(s.messages_sent()).unwrap_or(0)),
                );
                if chunk.len() >= left.max(1) {
                    break;
                }
            }
            if chunk.is_empty() {
                let until = wait.unwrap_or_else(SystemTime::now);
                let far = until.duration_since(SystemTime::now()).unwrap_or_default()
                    > self.config.rate_wait;
                if far {
                    let held: Vec<Claimed> = pending.drain(..).collect();
                    self.release_for_budget(&key, held, until).await?;
                    if let Some(s) = session.take() {
                        self.close(s, stop).await;
                    }
                    continue;
                }
                self.emit(&RunEvent::WaitingForBudget {
                    key: key.clone(),
                    until,
                    messages: pending.len(),
                    released: false,
                });
                match session.as_mut() {
                    Some(s) => self.wait_on(s, until, stop).await,
                    None => self.sleep_until(until, stop).await,
                }
                self.renew_pending(&mut pending).await;
                continue;
            }
            // Send the chunk, on the open session or a new one.
            if session.as_ref().is_some_and(|s| !s.is_open()) {
                session = None;
            }
            let mut s = match session.take() {
                Some(s) => s,
                None => {
                    self.emit(&RunEvent::Connecting {
                        destination: self.destination.clone(),
                        messages: chunk.len() + pending.len(),
                    });
                    let opened = tokio::select! {
                        opened = Session::open(relay) => opened,
                        () = self.abandoned(stop) => {
                            self.release_all(&chunk, None).await?;
                            break;
                        }
                    };
                    match opened {
                        Ok(s) => {
                            self.relay_proven.send_replace(true);
                            s
                        }
                        Err(e) => {
                            self.open_failed(relay, &chunk, &e).await?;
                            break;
                        }
                    }
                }
            };
            let (mut outgoing, sending) = self.readable(chunk).await?;
            let sent = self.send_on(&mut s, &sending, &mut outgoing, stop).await?;
            drop(outgoing);
            if sent.delivered_any() && !delivered_any {
                delivered_any = true;
                self.store.clear_backoff(&self.destination).await?;
            }
            self.record_sent(&sending, &sent, delivered_any, &mut why)
                .await?;
            let abandoned = sent.results.iter().any(Option::is_none);
            let troubled = why.hold.is_some() || why.ended.is_some();
            for (claimed, lease) in sending.into_iter().zip(sent.leases) {
                if troubled {
                    to_release.push((claimed, lease));
                } else {
                    // Recorded (or abandoned on a stop): given back now.
                    self.release(&claimed, &lease, None).await?;
                }
            }
            if abandoned || troubled {
                session_error = s.error().cloned();
                session = Some(s);
                break;
            }
            let full = usize::try_from(s.messages_sent()).unwrap_or(usize::MAX)
                >= self.config.per_connection;
            if full || !s.is_open() {
                self.close(s, stop).await;
            } else {
                session = Some(s);
            }
        }
        if let Some(s) = session {
            session_error = session_error.or_else(|| s.error().cloned());
            self.close(s, stop).await;
        }
        let release_at = self
            .concluded(&mut why, delivered_any, session_error)
            .await?;
        for (claimed, lease) in to_release {
            self.release(&claimed, &lease, release_at).await?;
        }
        let held: Vec<Claimed> = pending.into();
        self.release_all(&held, release_at).await
    }

    /// Keeps of `claimed` what its expected turn puts within `rate_wait`
    /// (after what `pending` holds), and releases the rest, each due at
    /// its expected turn.
    async fn pace(
        &self,
        key: &str,
        pending: &mut VecDeque<Claimed>,
        claimed: Vec<Claimed>,
    ) -> Result<()> {
        let limits = &self.config.rate;
        let now = SystemTime::now();
        let now_ms = millis(now)?;
        let budget = self
            .store
            .budget(key)
            .await?
            .unwrap_or_else(|| rate::Budget::empty(key));
        let mut turns = budget.turns(limits, now_ms);
        let horizon = millis(now + self.config.rate_wait)?;
        let units: u64 = pending.iter().map(|c| u64::from(cost(c))).sum();
        turns.after(units);
        let mut late = Vec::new();
        for c in claimed {
            let turn = turns.after(u64::from(cost(&c)));
            if turn <= horizon && late.is_empty() {
                pending.push_back(c);
            } else {
                late.push((c, turn));
            }
        }
        self.release_late(key, late).await
    }

    /// Releases `held` (whose turn has not come by `until`), each due at
    /// its expected turn, not before `until`.
    async fn release_for_budget(
        &self,
        key: &str,
        held: Vec<Claimed>,
        until: SystemTime,
    ) -> Result<()> {
        let limits = &self.config.rate;
        let now_ms = millis(SystemTime::now())?;
        let until_ms = millis(until)?;
        let budget = self
            .store
            .budget(key)
            .await?
            .unwrap_or_else(|| rate::Budget::empty(key));
        let mut turns = budget.turns(limits, now_ms);
        let late = held
            .into_iter()
            .map(|c| {
                let turn = turns.after(u64::from(cost(&c))).max(until_ms);
                (c, turn)
            })
            .collect();
        self.release_late(key, late).await
    }

    async fn release_late(&self, key: &str, late: Vec<(Claimed, i64)>) -> Result<()> {
        let Some(first) = late.iter().map(|(_, t)| *t).min() else {
            return Ok(());
        };
        let last = late.iter().map(|(_, t)| *t).max().unwrap_or(first);
        tracing::info!(
            budget = key,
            messages = late.len(),
            first_ms = first,
            last_ms = last,
            "waiting for the rate budget: released unattempted, each due at its turn"
        );
        self.emit(&RunEvent::WaitingForBudget {
            key: key.to_owned(),
            until: from_millis(first),
            messages: late.len(),
            released: true,
        });
        for (c, turn) in late {
            self.release(&c, &c.lease, Some(from_millis(turn))).await?;
        }
        Ok(())
    }

    /// Waits until `until` on the open session, taking in what the server
    /// says meanwhile; ends early on a stop or when the session ends.
    async fn wait_on(&self, session: &mut Session, until: SystemTime, stop: &Stop) {
        loop {
            let left = until.duration_since(SystemTime::now()).unwrap_or_default();
            if left.is_zero() || stop.is_stopped() {
                return;
            }
            tokio::select! {
                () = stop.stopped() => return,
                () = tokio::time::sleep(left.min(Duration::from_secs(5))) => {}
            }
            if !session.refresh().await {
                return;
            }
        }
    }

    /// Sleeps until `until`, or a stop.
    async fn sleep_until(&self, until: SystemTime, stop: &Stop) {
        let left = until.duration_since(SystemTime::now()).unwrap_or_default();
        tokio::select! {
            () = stop.stopped() => {}
            () = tokio::time::sleep(left) => {}
        }
    }

    /// Renews the leases of held messages past a third of their length;
    /// a message whose lease another worker took over (this one stalled
    /// past it) is dropped from `pending`: it is theirs to send.
    async fn renew_pending(&self, pending: &mut VecDeque<Claimed>) {
        let now = SystemTime::now();
        let soon = now + self.config.lease * 2 / 3;
        let mut lost = Vec::new();
        for c in pending.iter_mut().filter(|c| c.lease.until < soon) {
            match self
                .store
                .renew(&c.lease, now + self.config.lease, now)
                .await
            {
                Ok(l) => c.lease = l,
                Err(e @ crate::Error::StaleLease { .. }) => {
                    tracing::warn!(message_id = %c.lease.message, error = %e,
                        "lease lost to another worker: the message is theirs");
                    lost.push(c.lease.message.clone());
                }
                Err(e) => {
                    tracing::warn!(message_id = %c.lease.message, error = %e, "lease not renewed");
                }
            }
        }
        pending.retain(|c| !lost.contains(&c.lease.message));
    }

    /// QUITs, unless a stop's grace runs out first.
    async fn close(&self, session: Session, stop: &Stop) {
        if session.is_open() {
            tokio::select! {
                _ = session.close() => {}
                () = self.abandoned(stop) => {}
            }
        }
    }
}
