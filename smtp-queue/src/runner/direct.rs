//! Direct delivery from the queue: each recipient domain's own mail
//! servers, through [`smtp_core::delivery::direct`].
//!
//! A claimed message's recipients are grouped by domain; a domain backed
//! off or held is left out (its recipients are released until then), the
//! others go to [`deliver_traced`] (one session per domain, hosts in MX
//! order). Each recipient's outcome is classified as on the relay path;
//! the destination whose back-off it affects is the domain
//! (`direct:DOMAIN`).

use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use smtp_core::Envelope;
use smtp_core::delivery::BodySource;
use smtp_core::delivery::direct::{Connector, DirectOptions, deliver_traced};
use smtp_core::delivery::mx::Resolver;

use super::{Runner, address};
use crate::error::Result;
use crate::event::RunEvent;
use crate::stop::Stop;
use crate::store::{Attempt, Claimed, Outcome};
use crate::verdict::{Verdict, verdict};

/// What direct delivery needs: DNS, connections, and the options.
pub(crate) struct Direct {
    pub(crate) resolver: Arc<dyn Resolver>,
    pub(crate) connector: Arc<dyn Connector>,
    pub(crate) options: DirectOptions,
}

/// The back-off key of a recipient domain.
pub(crate) fn destination(domain: &str) -> String {
    format!("direct:{}", domain.to_ascii_lowercase())
}

fn earliest(a: Option<SystemTime>, b: SystemTime) -> Option<SystemTime> {
    Some(a.map_or(b, |a| a.min(b)))
}

impl Runner {
    /// Delivers one claimed message directly and records every outcome.
    pub(super) async fn deliver_direct(
        &self,
        direct: &Direct,
        claimed: Claimed,
        stop: &Stop,
    ) -> Result<()> {
        if stop.is_stopped() {
            return self.release(&claimed, &claimed.lease, None).await;
        }
        let outgoing = match self.outgoing(&claimed).await {
            Ok(o) => o,
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
                return self.record(&claimed, &claimed.lease, outcomes).await;
            }
        };
        let now = SystemTime::now();
        // Positions in `claimed.recipients`, by domain (the key
        // `deliver_traced` groups by).
        let mut domains: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (i, to) in outgoing.envelope.to.iter().enumerate() {
            domains
                .entry(to.domain().as_str().to_owned())
                .or_default()
                .push(i);
        }
        let mut release_at: Option<SystemTime> = None;
        let mut sending: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (domain, positions) in domains {
            match self.backed_off_at(&destination(&domain), now).await? {
                Some(until) => release_at = earliest(release_at, until),
                None => {
                    sending.insert(domain, positions);
                }
            }
        }
        let mut lease = claimed.lease.clone();
        if !sending.is_empty() {
            let envelope = Envelope {
                to: sending
                    .values()
                    .flatten()
                    .filter_map(|&i| outgoing.envelope.to.get(i).cloned())
                    .collect(),
                ..outgoing.envelope.clone()
            };
            for domain in sending.keys() {
                self.emit(&RunEvent::Connecting {
                    destination: destination(domain),
                    messages: 1,
                });
            }
            let shared = SharedBody::new(outgoing.body);
            let body = move || -> io::Result<Box<dyn BodySource>> { Ok(Box::new(shared.clone())) };
            let pick = |n: usize| smtp_tls::random_below(n);
            let send = deliver_traced(
                direct.resolver.as_ref(),
                direct.connector.as_ref(),
                &envelope,
                &body,
                &direct.options,
                &pick,
                &|_| {},
            );
            tokio::pin!(send);
            let every = self.config.lease / 3;
            let mut renew = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            let abandon = self.abandoned(stop);
            tokio::pin!(abandon);
            let reports = loop {
                tokio::select! {
                    reports = &mut send => break Some(reports),
                    _ = renew.tick() => {
                        let now = SystemTime::now();
                        match self.store.renew(&lease, now + self.config.lease, now).await {
                            Ok(l) => lease = l,
                            Err(e) => tracing::warn!(message = %lease.message, error = %e, "lease not renewed"),
                        }
                    }
                    () = &mut abandon => break None,
                }
            };
            let Some(reports) = reports else {
                tracing::warn!(message = %lease.message,
                    "stopped: direct delivery did not finish in time; the message is released");
                return self.release(&claimed, &lease, None).await;
            };
            let mut outcomes = Vec::new();
            for report in reports {
                let Some(positions) = sending.get(&report.domain) else {
                    continue;
                };
                let dest = destination(&report.domain);
                let host = report.host.clone().unwrap_or_else(|| report.domain.clone());
                let verdicts: Vec<(usize, Verdict)> = positions
                    .iter()
                    .enumerate()
                    .map(|(k, &i)| {
                        let v = report.outcomes.get(k).map_or_else(
                            || Verdict::Retry {
                                attempt: Attempt {
                                    text: "no outcome for this recipient".into(),
                                    host: Some(host.clone()),
                                    ..Attempt::default()
                                },
                                unknown: true,
                            },
                            |o| verdict(o, &host, report.tls.as_ref()),
                        );
                        (i, v)
                    })
                    .collect();
                let delivered_any = verdicts
                    .iter()
                    .any(|(_, v)| matches!(v, Verdict::Delivered(_)));
                if delivered_any {
                    self.store.clear_backoff(&dest).await?;
                }
                let now = SystemTime::now();
                let mut hold: Option<String> = None;
                let mut ended: Option<String> = None;
                for (i, v) in verdicts {
                    let Some(r) = claimed.recipients.get(i) else {
                        continue;
                    };
                    let outcome = match v {
                        Verdict::Delivered(a) => Outcome::Delivered(a),
                        Verdict::Failed(a) => Outcome::Failed(a),
                        Verdict::Retry { attempt, unknown } => {
                            if unknown {
                                let recipient = address(&claimed, r.id);
                                tracing::warn!(message = %claimed.lease.message, %recipient,
                                    "the reply to the end of data was lost; deferred, a retry may deliver it twice");
                                self.emit(&RunEvent::OutcomeUnknown {
                                    message: claimed.lease.message.clone(),
                                    recipient,
                                });
                            }
                            self.retry(&claimed, r.id, attempt, now)
                        }
                        // Every host of the domain was tried: not reached.
                        Verdict::SessionEnded(a) => {
                            ended.get_or_insert(a.text.clone());
                            self.retry(&claimed, r.id, a, now)
                        }
                        Verdict::Hold(a) => {
                            hold.get_or_insert(a.text);
                            continue;
                        }
                    };
                    outcomes.push((r.id, outcome));
                }
                if let Some(reason) = hold {
                    let until = self.hold_at(&dest, &reason, now).await?;
                    release_at = earliest(release_at, until);
                } else if let (false, Some(reason)) = (delivered_any, &ended) {
                    self.back_off_at(&dest, reason, now).await?;
                }
            }
            if !outcomes.is_empty() {
                self.record(&claimed, &lease, outcomes).await?;
            }
        }
        // What is left: domains backed off or held.
        self.release(&claimed, &lease, release_at).await
    }
}

/// One opened body shared by a message's sessions (one at a time per
/// domain); each new reader starts from the first byte.
#[derive(Clone)]
struct SharedBody {
    inner: Arc<tokio::sync::Mutex<Box<dyn BodySource>>>,
    fresh: bool,
}

impl SharedBody {
    fn new(body: Box<dyn BodySource>) -> Self {
        Self {
            inner: Arc::new(tokio::sync::Mutex::new(body)),
            fresh: true,
        }
    }
}

#[async_trait]
impl BodySource for SharedBody {
    async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut body = self.inner.lock().await;
        if self.fresh {
            body.rewind().await?;
            self.fresh = false;
        }
        body.read(buf).await
    }

    async fn rewind(&mut self) -> io::Result<()> {
        self.fresh = false;
        self.inner.lock().await.rewind().await
    }
}
