//! Standard delivery: one batch on one session through the relay, each
//! recipient's reply mapped to its outcome.

use std::time::SystemTime;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use smtp_core::{Fault, MessageOutcome};
use smtp_tls::Session;

use super::record::Unrecorded;
use super::record::by_recipient;
use super::{Mode, Runner};
use crate::error::Result;
use crate::event::RunEvent;
use crate::stop::Stop;
use crate::store::{Attempt, Claimed, Lease, Outcome, RecipientId};
use crate::verdict::Verdict;

impl Runner {
    /// Sends one batch on one session and records every outcome.
    pub(super) async fn deliver(&self, batch: Vec<Claimed>, stop: &Stop) -> Result<()> {
        let Mode::Relay(relay) = &self.mode else {
            return self.release_all(&batch, None).await;
        };
        let now = SystemTime::now();
        if stop.is_stopped() {
            return self.release_all(&batch, None).await;
        }
        if let Some(until) = self.backed_off(now).await? {
            return self.release_all(&batch, Some(until)).await;
        }
        // Bodies first: a corrupt one fails its message, the others go on.
        let (mut outgoing, sending) = self.readable(batch).await?;
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
        // Set up: the sessions waiting behind this one may start.
        self.relay_proven.send_replace(true);
        let sent = self
            .send_on(&mut session, &sending, &mut outgoing, stop)
            .await?;
        drop(outgoing);
        let session_error = session.error().cloned();
        if session.is_open() {
            // QUIT, unless a stop's grace runs out first.
            tokio::select! {
                _ = session.close() => {}
                () = self.abandoned(stop) => {}
            }
        }
        let delivered_any = sent.delivered_any();
        if delivered_any {
            self.store.clear_backoff(&self.destination).await?;
        }
        let mut why = Unrecorded::default();
        self.record_sent(&sending, &sent, delivered_any, &mut why)
            .await?;
        let release_at = self
            .concluded(&mut why, delivered_any, session_error)
            .await?;
        for (claimed, lease) in sending.iter().zip(&sent.leases) {
            self.release(claimed, lease, release_at).await?;
        }
        Ok(())
    }

    /// Sends `sending` (as `outgoing`) pipelined on an open session,
    /// recording each message delivered to every recipient as its reply
    /// arrives and renewing the leases of the others; returns what is
    /// known of each when the session went idle, or when a stop's grace ran
    /// out (then what had not settled is `None`).
    pub(super) async fn send_on(
        &self,
        session: &mut Session,
        sending: &[Claimed],
        outgoing: &mut [smtp_tls::Outgoing],
        stop: &Stop,
    ) -> Result<Sent> {
        let mut leases: Vec<Lease> = sending.iter().map(|c| c.lease.clone()).collect();
        let host = session.peer().to_string();
        let tls = session.tls().cloned();
        // The client numbers the messages it takes from 0 over the whole
        // session: this send's are numbered from what it took before.
        let base = session.messages_sent();
        // Messages settle in order: the k-th settled outcome is the k-th
        // message's, which is what is known if the session is abandoned.
        // A message every recipient of which was accepted is recorded as
        // its reply arrives, not when the session ends: a runner killed
        // mid-session then redelivers only what awaited a reply.
        let mut settled: Vec<MessageOutcome> = Vec::new();
        let mut recorded = vec![false; sending.len()];
        // The messages whose data began to go out: only those can have
        // reached the server if the session is abandoned.
        let mut data_sent = vec![false; sending.len()];
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<MessageOutcome>();
        let finished = {
            let mut observe = |seen: smtp_tls::Observed<'_>| {
                if let Some(o) = seen.settled() {
                    let _ = tx.send(o.clone());
                }
                // The client numbers the messages it takes in `sending`'s
                // order, from `base` (it refuses none: each has
                // recipients; once over, it takes no more and sends
                // nothing).
                if let smtp_core::Event::BodyWanted(id) = seen.event()
                    && let Some(k) = id
                        .index()
                        .checked_sub(base)
                        .and_then(|k| usize::try_from(k).ok())
                    && let Some(sent) = data_sent.get_mut(k)
                {
                    *sent = true;
                    if let Some(c) = sending.get(k) {
                        self.emit(&RunEvent::DataSent {
                            message: c.lease.message.clone(),
                        });
                    }
                }
            };
            let send = session.send_all(outgoing, &mut observe);
            tokio::pin!(send);
            let every = self.config.lease / 3;
            let mut renew = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            let abandon = self.abandoned(stop);
            tokio::pin!(abandon);
            // Recordings run beside the session, not in its way.
            let mut recording = FuturesUnordered::new();
            let finished = loop {
                tokio::select! {
                    results = &mut send => break Some(results),
                    Some(outcome) = rx.recv() => {
                        let k = settled.len();
                        if let (Some(claimed), Some(lease)) = (sending.get(k), leases.get(k)) {
                            let (lease, seen, host, tls) =
                                (lease.clone(), outcome.clone(), &host, tls.as_ref());
                            recording.push(async move {
                                self.record_if_delivered(claimed, &lease, &seen, host, tls)
                                    .await
                                    .map(|done| (k, done))
                            });
                        }
                        settled.push(outcome);
                    }
                    Some(done) = recording.next(), if !recording.is_empty() => {
                        let (k, done) = done?;
                        recorded[k] = done;
                    }
                    _ = renew.tick() => {
                        // Recordings first: one that began its transaction
                        // holds the write lock, and is polled only here.
                        while let Some(done) = recording.next().await {
                            let (k, done) = done?;
                            recorded[k] = done;
                        }
                        if self.renew(&mut leases, &recorded).await {
                            break None;
                        }
                    }
                    () = &mut abandon => break None,
                }
            };
            while let Some(done) = recording.next().await {
                let (k, done) = done?;
                recorded[k] = done;
            }
            finished
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
                    for (claimed, _) in sending
                        .iter()
                        .zip(&data_sent)
                        .skip(settled.len())
                        .filter(|(_, sent)| **sent)
                    {
                        let to = claimed.recipients.iter().map(|r| r.address.clone());
                        self.in_flight(claimed, to.collect());
                    }
                    let mut known: Vec<_> = settled.into_iter().map(|o| Some(Ok(o))).collect();
                    known.resize_with(sending.len(), || None);
                    known
                }
            };
        Ok(Sent {
            results,
            recorded,
            leases,
            host,
            tls,
        })
    }

    /// Records the outcome of every message of `sent` not recorded yet;
    /// what is not recorded (released below) says why in `why`.
    pub(super) async fn record_sent(
        &self,
        sending: &[Claimed],
        sent: &Sent,
        delivered_any: bool,
        why: &mut Unrecorded,
    ) -> Result<()> {
        let (host, tls) = (&sent.host, sent.tls.as_ref());
        for (((claimed, lease), result), done) in sending
            .iter()
            .zip(&sent.leases)
            .zip(&sent.results)
            .zip(&sent.recorded)
        {
            let Some(result) = result.as_ref().filter(|_| !done) else {
                continue;
            };
            let verdicts: Vec<(RecipientId, Verdict)> = match result {
                Ok(outcome) => by_recipient(claimed, outcome, host, tls),
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
            let outcomes: Vec<(RecipientId, Outcome)> = verdicts
                .into_iter()
                .filter_map(|(id, v)| {
                    self.outcome_of(claimed, id, v, delivered_any, now, why)
                        .map(|o| (id, o))
                })
                .collect();
            if !outcomes.is_empty() {
                self.record(claimed, lease, outcomes).await?;
            }
        }
        Ok(())
    }

    /// After a session: holds or backs off the destination as `why` says;
    /// returns when what it did not settle is due again (`None`: at once).
    pub(super) async fn concluded(
        &self,
        why: &mut Unrecorded,
        delivered_any: bool,
        session_error: Option<smtp_core::Error>,
    ) -> Result<Option<SystemTime>> {
        let now = SystemTime::now();
        if let Some(reason) = why.hold.take() {
            return Ok(Some(self.hold(&reason, now).await?));
        }
        if let (false, Some(reason)) = (delivered_any, &why.ended) {
            self.back_off(reason, now).await?;
        } else if let Some(e) = session_error.filter(|_| why.ended.is_some()) {
            tracing::info!(destination = %self.destination, error = %e, "session ended; the rest is due again at once");
        }
        Ok(None)
    }
}

/// What a send on a session left (see [`Runner::send_on`]).
pub(super) struct Sent {
    /// Each message's result; `None`: abandoned on a stop before it.
    pub(super) results: Vec<Option<std::result::Result<MessageOutcome, smtp_tls::Error>>>,
    /// Each message recorded already (every recipient delivered).
    pub(super) recorded: Vec<bool>,
    /// The leases, as renewed.
    pub(super) leases: Vec<Lease>,
    host: String,
    tls: Option<smtp_core::delivery::TlsInfo>,
}

impl Sent {
    /// Whether any recipient was accepted.
    pub(super) fn delivered_any(&self) -> bool {
        self.results.iter().flatten().flatten().any(|o| {
            o.recipients
                .iter()
                .any(|r| r.status == smtp_core::RecipientStatus::Accepted)
        })
    }
}
