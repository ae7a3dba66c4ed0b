//! `smtp queue run --metrics ADDR`: what the runner did, and the queue's
//! state, for Prometheus (text format 0.0.4, served by [`super::scrape`]).
//!
//! | metric | type | labels | from |
//! |---|---|---|---|
//! | `smtp_queue_recipients` | gauge | `state` | the store's counts, at scrape |
//! | `smtp_queue_messages` | gauge | | the store's counts, at scrape |
//! | `smtp_queue_oldest_waiting_age_seconds` | gauge | | the oldest message with a recipient waiting, at scrape |
//! | `smtp_queue_outcomes_total` | counter | `destination`, `outcome` | each recorded outcome (one per recipient attempt) |
//! | `smtp_queue_destination_events_total` | counter | `destination`, `event` (`held`, `backed_off`) | the runner's events |
//! | `smtp_queue_released_recipients_total` | counter | | recipients given back unattempted |
//! | `smtp_queue_outcome_unknown_total` | counter | | replies lost after the data |
//! | `smtp_queue_delivery_latency_seconds` | histogram | | enqueue to delivered |
//!
//! The counters count what this process saw since it started (Prometheus'
//! `rate()` and `increase()` handle restarts). Direct delivery's
//! destinations are recipient domains, so their number is capped: past
//! [`MAX_DESTINATIONS`], further ones are counted as `other`.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use smtp_queue::{Outcome, RecipientState, RunEvent, Store};

/// Distinct `destination` label values at most; more are `other`.
pub(crate) const MAX_DESTINATIONS: usize = 1000;

/// How long the store's counts are reused between scrapes.
const REFRESH_EVERY: Duration = Duration::from_secs(1);

/// How long reading the store's counts may take before a scrape is
/// answered with the last ones.
const REFRESH_TIMEOUT: Duration = Duration::from_secs(5);

/// The latency histogram's buckets, in seconds: from a message sent at
/// once (0.1 s) to the default queue lifetime (5 days).
const LATENCY_BUCKETS: [f64; 14] = [
    0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 14_400.0, 43_200.0, 86_400.0, 172_800.0,
    432_000.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    destination: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    destination: String,
    event: String,
}

/// The registry and its metrics; shared by the runner's observer and the
/// scrape responder.
pub(crate) struct Metrics {
    registry: Registry,
    recipients: Family<StateLabel, Gauge>,
    messages: Gauge,
    oldest_waiting: Gauge,
    outcomes: Family<OutcomeLabels, Counter>,
    events: Family<EventLabels, Counter>,
    released: Counter,
    outcome_unknown: Counter,
    latency: Histogram,
    destinations: Mutex<HashSet<String>>,
    refreshed: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let mut registry = Registry::default();
        let recipients = Family::<StateLabel, Gauge>::default();
        registry.register(
            "smtp_queue_recipients",
            "Recipients in the queue, by state",
            recipients.clone(),
        );
        let messages = Gauge::default();
        registry.register(
            "smtp_queue_messages",
            "Messages in the queue, in any state",
            messages.clone(),
        );
        let oldest_waiting = Gauge::default();
        registry.register_with_unit(
            "smtp_queue_oldest_waiting_age",
            "Age of the oldest message with a recipient still waiting (queued, deferred or \
             delivering); 0 when none waits",
            Unit::Seconds,
            oldest_waiting.clone(),
        );
        let outcomes = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "smtp_queue_outcomes",
            "Recorded outcomes of delivery attempts, one per recipient, by destination and \
             outcome (delivered, failed, deferred, expired)",
            outcomes.clone(),
        );
        let events = Family::<EventLabels, Counter>::default();
        registry.register(
            "smtp_queue_destination_events",
            "Destinations held (a configuration or policy fault) or backed off (unreachable)",
            events.clone(),
        );
        let released = Counter::default();
        registry.register(
            "smtp_queue_released_recipients",
            "Recipients given back unattempted (a session ended, a stop, a destination held)",
            released.clone(),
        );
        let outcome_unknown = Counter::default();
        registry.register(
            "smtp_queue_outcome_unknown",
            "Recipients whose reply to the end of data was lost (deferred; a retry may \
             duplicate)",
            outcome_unknown.clone(),
        );
        let latency = Histogram::new(LATENCY_BUCKETS);
        registry.register_with_unit(
            "smtp_queue_delivery_latency",
            "Time from enqueue to delivery, per delivered recipient",
            Unit::Seconds,
            latency.clone(),
        );
        Self {
            registry,
            recipients,
            messages,
            oldest_waiting,
            outcomes,
            events,
            released,
            outcome_unknown,
            latency,
            destinations: Mutex::new(HashSet::new()),
            refreshed: Mutex::new(None),
        }
    }

    /// Counts what the runner tells.
    pub(crate) fn observe(&self, event: &RunEvent) {
        match event {
            RunEvent::Recorded {
                destination,
                enqueued,
                outcome,
                ..
            } => {
                let word = match outcome {
                    Outcome::Delivered(_) => "delivered",
                    Outcome::Failed(_) => "failed",
                    Outcome::Deferred { .. } => "deferred",
                    Outcome::Expired(_) => "expired",
                };
                self.outcomes
                    .get_or_create(&OutcomeLabels {
                        destination: self.label(destination),
                        outcome: word.to_owned(),
                    })
                    .inc();
                if matches!(outcome, Outcome::Delivered(_)) {
                    let latency = SystemTime::now()
                        .duration_since(*enqueued)
                        .unwrap_or_default();
                    self.latency.observe(latency.as_secs_f64());
                }
            }
            RunEvent::Held { destination, .. } => self.event(destination, "held"),
            RunEvent::BackedOff { destination, .. } => self.event(destination, "backed_off"),
            RunEvent::Released { recipients, .. } => {
                self.released.inc_by(*recipients);
            }
            RunEvent::OutcomeUnknown { .. } => {
                self.outcome_unknown.inc();
            }
            _ => {}
        }
    }

    fn event(&self, destination: &str, event: &str) {
        self.events
            .get_or_create(&EventLabels {
                destination: self.label(destination),
                event: event.to_owned(),
            })
            .inc();
    }

    /// `destination` as a label value: itself while fewer than
    /// [`MAX_DESTINATIONS`] have been seen, else `other`.
    fn label(&self, destination: &str) -> String {
        let mut seen = self
            .destinations
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if seen.contains(destination) {
            return destination.to_owned();
        }
        if seen.len() < MAX_DESTINATIONS {
            seen.insert(destination.to_owned());
            return destination.to_owned();
        }
        "other".to_owned()
    }

    /// Sets the gauges from the store's counts, at most once per
    /// [`REFRESH_EVERY`]; on a slow or failing store, the last ones stay.
    pub(crate) async fn refresh(&self, store: &dyn Store) {
        {
            let mut refreshed = self
                .refreshed
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if refreshed.is_some_and(|t| t.elapsed() < REFRESH_EVERY) {
                return;
            }
            *refreshed = Some(Instant::now());
        }
        let stats = match tokio::time::timeout(REFRESH_TIMEOUT, store.stats()).await {
            Ok(Ok(stats)) => stats,
            Ok(Err(e)) => {
                tracing::warn!(target: "smtp_cli::metrics", error = %e, "cannot read the queue's counts");
                return;
            }
            Err(_) => {
                tracing::warn!(target: "smtp_cli::metrics", "the queue's counts took too long; the last ones are served");
                return;
            }
        };
        for state in RecipientState::ALL {
            self.recipients
                .get_or_create(&StateLabel {
                    state: state.to_string(),
                })
                .set(i64::try_from(stats.count(state)).unwrap_or(i64::MAX));
        }
        self.messages
            .set(i64::try_from(stats.messages).unwrap_or(i64::MAX));
        let age = stats.oldest_waiting.map_or(0, |t| {
            SystemTime::now()
                .duration_since(t)
                .unwrap_or_default()
                .as_secs()
        });
        self.oldest_waiting
            .set(i64::try_from(age).unwrap_or(i64::MAX));
    }

    /// The metrics in Prometheus' text format.
    pub(crate) fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String does not fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry);
        text
    }
}

/// The `Content-Type` of [`Metrics::encode`]'s text.
pub(crate) const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

#[cfg(test)]
mod tests {
    use super::*;
    use smtp_queue::{Attempt, MessageId};

    fn recorded(destination: &str, outcome: Outcome, age: Duration) -> RunEvent {
        RunEvent::Recorded {
            message: MessageId::generate(SystemTime::now()),
            recipient: "r@example.net".into(),
            destination: destination.into(),
            enqueued: SystemTime::now() - age,
            outcome,
            taken_over: false,
            mta_sts: None,
        }
    }

    #[test]
    fn outcomes_are_counted_by_destination_and_deliveries_timed() {
        let m = Metrics::new();
        let a = Attempt::default();
        m.observe(&recorded(
            "relay:h:25",
            Outcome::Delivered(a.clone()),
            Duration::from_secs(3),
        ));
        m.observe(&recorded(
            "relay:h:25",
            Outcome::Delivered(a.clone()),
            Duration::from_secs(3),
        ));
        m.observe(&recorded(
            "relay:h:25",
            Outcome::Failed(a),
            Duration::from_secs(3),
        ));
        let text = m.encode();
        assert!(
            text.contains(
                "smtp_queue_outcomes_total{destination=\"relay:h:25\",outcome=\"delivered\"} 2\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "smtp_queue_outcomes_total{destination=\"relay:h:25\",outcome=\"failed\"} 1\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("smtp_queue_delivery_latency_seconds_count 2\n"),
            "{text}"
        );
        assert!(
            text.contains("smtp_queue_delivery_latency_seconds_bucket{le=\"1\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("smtp_queue_delivery_latency_seconds_bucket{le=\"5\"} 2\n"),
            "{text}"
        );
    }

    #[test]
    fn destinations_past_the_cap_are_counted_as_other() {
        let m = Metrics::new();
        for i in 0..MAX_DESTINATIONS + 5 {
            m.observe(&recorded(
                &format!("direct:d{i}.test"),
                Outcome::Failed(Attempt::default()),
                Duration::ZERO,
            ));
        }
        let text = m.encode();
        assert!(
            text.contains(
                "smtp_queue_outcomes_total{destination=\"other\",outcome=\"failed\"} 5\n"
            ),
            "{}",
            &text[..2000.min(text.len())]
        );
        assert!(text.contains("destination=\"direct:d0.test\""));
        let series = text
            .lines()
            .filter(|l| l.starts_with("smtp_queue_outcomes_total{"))
            .count();
        assert_eq!(series, MAX_DESTINATIONS + 1);
    }
}
