//! Several messages to one destination, on shared sessions: the hosts of
//! an [`MxPlan`] are tried in order, each session carrying every message
//! (pipelined where the server offers it) with the recipients still
//! undecided. What one host decides is final; the rest goes on to the next.

use std::net::SocketAddr;

use tracing::Instrument;

use super::{Attempt, Connector, DirectOptions, Trace, diagnosis, diagnosis::Diagnosis};
use crate::client::{Client, Event};
use crate::delivery::mx::MxPlan;
use crate::delivery::{Bodies, BodySource, Driver, TlsInfo, Until};
use crate::envelope::{Envelope, MessageId, RecipientOutcome, RecipientStatus};
use crate::error::Error;
use crate::phase::Phase;

/// One recipient's outcome and the session that decided it.
#[derive(Clone, Debug)]
pub struct Decided {
    /// The outcome.
    pub outcome: RecipientOutcome,
    /// The MX host whose session decided it (`None`: no session ran).
    pub host: Option<String>,
    /// That session's TLS facts when it decided.
    pub tls: Option<TlsInfo>,
}

/// What became of a batch.
#[derive(Clone, Debug)]
pub struct BatchReport {
    /// Every connection attempt, in order.
    pub attempts: Vec<Attempt>,
    /// Each message's outcomes: recipients in envelope order.
    pub messages: Vec<Vec<Decided>>,
    /// Why the destination could not be reached, when that can be said.
    pub diagnosis: Option<Diagnosis>,
}

/// True when `outcome` is final for the destination: accepted, refused for
/// good once the server let us through to the transaction, or unknown (this
/// host may have the message: another would deliver it twice). Anything
/// else (greeting, EHLO, TLS, a 4xx, a timeout) is for the next host.
pub fn is_final(outcome: &RecipientOutcome) -> bool {
    outcome.status == RecipientStatus::Accepted
        || (outcome.status == RecipientStatus::Rejected
            && outcome.phase.is_transaction()
            && outcome.reply.is_some())
        || matches!(
            outcome.error,
            Some(Error::Message(_) | Error::OutcomeUnknown { .. })
        )
}

/// Delivers `envelopes` (each carrying only its recipients at this
/// destination; at least one each) to the hosts of `plan`, in order, on
/// one session per host. `bodies[k]` is message `k`'s body; it is read from
/// its start on each host that takes the message.
///
/// `settled(k, outcomes)` is called as soon as every recipient of message
/// `k` has a final outcome (see [`is_final`]), while the session goes on:
/// a caller that records outcomes durably loses the least when stopped.
/// Messages that never settle have their last outcomes in the report.
pub async fn deliver_batch(
    connector: &dyn Connector,
    plan: &MxPlan,
    envelopes: &[Envelope],
    bodies: &mut [Box<dyn BodySource>],
    options: &DirectOptions,
    trace: &(dyn Fn(Trace<'_>) + Sync),
    settled: &mut (dyn FnMut(usize, &[Decided]) + Send),
) -> BatchReport {
    let mut walk = Walk {
        decided: envelopes.iter().map(|e| vec![None; e.to.len()]).collect(),
        last: envelopes.iter().map(|e| vec![None; e.to.len()]).collect(),
        attempts: Vec::new(),
    };
    let mut driver = Driver::new();
    for (host, ip) in plan.attempts() {
        // Each message's undecided recipients, by position in its envelope.
        let pending: Vec<(usize, Vec<usize>)> = walk
            .decided
            .iter()
            .enumerate()
            .filter_map(|(k, d)| {
                let open: Vec<usize> = (0..d.len()).filter(|&i| d[i].is_none()).collect();
                (!open.is_empty()).then_some((k, open))
            })
            .collect();
        if pending.is_empty() {
            break;
        }
        let addr = SocketAddr::new(ip, options.port);
        trace(Trace::Connecting { host, addr });
        let mut transport = match connector.connect(host, addr).await {
            Ok(t) => t,
            Err(failure) => {
                tracing::info!(host, %addr, %failure, "cannot connect");
                trace(Trace::ConnectFailed {
                    host,
                    addr,
                    failure: &failure,
                });
                walk.attempts.push(Attempt {
                    host: host.to_owned(),
                    addr,
                    local: None,
                    failure: Some(failure),
                    error: None,
                    tls: None,
                });
                continue;
            }
        };
        let now = transport.now();
        let local = transport.local_addr();
        let mut client = Client::new(options.config.clone(), now);
        // The client numbers the messages it takes from 0: its n-th is
        // `pending[n]`.
        for (k, open) in &pending {
            let envelope = &envelopes[*k];
            let to = open.iter().map(|&i| envelope.to[i].clone()).collect();
            // Cannot fail: the envelope has recipients and the session is new.
            let _ = client.send(
                now,
                Envelope {
                    to,
                    ..envelope.clone()
                },
            );
        }
        client.quit(now);
        trace(Trace::Connected { host, addr });
        let mut tls = transport.tls_info();
        let mut error = None;
        let mut subset = Subset {
            bodies: &mut *bodies,
            pending: &pending,
        };
        let mut on_event = |event: Event| {
            trace(Trace::Session {
                host,
                event: &event,
            });
            match event {
                Event::BodyWanted(id) => {
                    if let Some((k, _)) = usize::try_from(id.index())
                        .ok()
                        .and_then(|n| pending.get(n))
                    {
                        trace(Trace::Data { host, message: *k });
                    }
                }
                Event::TlsEstablished(info) => tls = Some(*info),
                Event::Failed(e) => error = Some(e),
                Event::MessageResult(outcome) => {
                    let Some((k, open)) = usize::try_from(outcome.message.index())
                        .ok()
                        .and_then(|n| pending.get(n))
                    else {
                        return;
                    };
                    if walk.take(*k, open, outcome.recipients, host, tls.as_ref()) {
                        let done: Vec<Decided> =
                            walk.decided[*k].iter().flatten().cloned().collect();
                        settled(*k, &done);
                    }
                }
                _ => {}
            }
        };
        driver
            .run(
                &mut client,
                transport.as_mut(),
                &mut subset,
                Until::Closed,
                &mut on_event,
            )
            .instrument(tracing::info_span!("smtp.session", host, %addr))
            .await;
        trace(Trace::Closed { host, addr });
        walk.attempts.push(Attempt {
            host: host.to_owned(),
            addr,
            local,
            failure: None,
            error,
            tls,
        });
    }
    walk.report(envelopes, options.port)
}

/// The walk over the hosts so far.
struct Walk {
    /// Final outcomes, by message and recipient.
    decided: Vec<Vec<Option<Decided>>>,
    /// The latest outcome that was not final, for the report when no host
    /// decides.
    last: Vec<Vec<Option<Decided>>>,
    attempts: Vec<Attempt>,
}

impl Walk {
    /// Takes message `k`'s outcomes from a session that carried the
    /// recipients at positions `open`; true when that settles the message.
    fn take(
        &mut self,
        k: usize,
        open: &[usize],
        outcomes: Vec<RecipientOutcome>,
        host: &str,
        tls: Option<&TlsInfo>,
    ) -> bool {
        for (&i, outcome) in open.iter().zip(outcomes) {
            let slot = if is_final(&outcome) {
                &mut self.decided[k][i]
            } else {
                &mut self.last[k][i]
            };
            *slot = Some(Decided {
                outcome,
                host: Some(host.to_owned()),
                tls: tls.cloned(),
            });
        }
        self.decided[k].iter().all(Option::is_some)
    }

    fn report(self, envelopes: &[Envelope], port: u16) -> BatchReport {
        let failures: Vec<String> = self
            .attempts
            .iter()
            .filter_map(|a| {
                a.failure
                    .as_ref()
                    .map(|f| format!("{} ({}): {f}", a.host, a.addr))
            })
            .collect();
        let detail = if failures.is_empty() {
            "no mail server could be tried".to_owned()
        } else {
            failures.join("; ")
        };
        let messages: Vec<Vec<Decided>> = self
            .decided
            .into_iter()
            .zip(self.last)
            .zip(envelopes)
            .map(|((decided, last), envelope)| {
                decided
                    .into_iter()
                    .zip(last)
                    .zip(&envelope.to)
                    .map(|((d, l), rcpt)| {
                        d.or(l).unwrap_or_else(|| Decided {
                            outcome: RecipientOutcome::from_error(
                                rcpt.clone(),
                                Phase::Connect,
                                Error::Connect {
                                    detail: detail.clone(),
                                },
                            ),
                            host: None,
                            tls: None,
                        })
                    })
                    .collect()
            })
            .collect();
        let diagnosis = diagnosis::diagnose(
            &self.attempts,
            messages.iter().flatten().map(|d| &d.outcome),
            port,
        );
        BatchReport {
            attempts: self.attempts,
            messages,
            diagnosis,
        }
    }
}

/// The bodies of the messages a session carries: the client's n-th
/// message is `pending[n]`.
struct Subset<'a> {
    bodies: &'a mut [Box<dyn BodySource>],
    pending: &'a [(usize, Vec<usize>)],
}

impl Bodies for Subset<'_> {
    fn body(&mut self, id: MessageId) -> Option<&mut dyn BodySource> {
        let (k, _) = self.pending.get(usize::try_from(id.index()).ok()?)?;
        Some(self.bodies.get_mut(*k)?.as_mut())
    }
}
