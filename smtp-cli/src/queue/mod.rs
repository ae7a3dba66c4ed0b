//! `smtp send --queue` and `smtp queue …`: the durable delivery queue.
//!
//! The relay's credentials are not stored with queued messages: `queue
//! run` is given the relay again (flags or `--account`), and credentials
//! are resolved at run time from the command line, config file or
//! environment as `send` does, so no secret is ever written into the
//! queue. Each message does keep its route (the relay account and TLS
//! policy, user name included, or `direct`: `crate::send::queue_route`),
//! and a run delivers only its own route's messages; those it leaves are
//! said ([`tell_other_routes`]).
//!
//! `send.rs` is `smtp send --queue`, `run.rs` the `smtp queue` commands
//! (`queue run` above all; what a run recorded, for its exit code and
//! `--json`, in `recorded.rs`), `admin.rs` list/show/retry/delete/stats;
//! `place.rs` where the queue is (a directory or a PostgreSQL URL) and
//! how each command opens it; this file holds what they share: the
//! runner's settings, signals, and the lines told as outcomes are
//! recorded.

use std::path::Path;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use smtp_queue::{Attempt, Outcome, RunEvent, Runner, RunnerConfig, Schedule, Stop, Store};
use smtp_tls::Server;

use crate::cli::RetryArgs;
use crate::fail::{EX_NOINPUT, EX_TEMPFAIL, Failure};
use crate::output::counted;
use crate::progress;
use crate::terminal::joined;

mod admin;
mod command;
mod metrics;
mod place;
mod recorded;
mod report;
mod run;
mod scrape;
mod send;
mod tls_report;

pub(crate) use self::command::run_command;
pub(crate) use self::place::{Place, url_has_password};
pub(crate) use self::run::run;
pub(crate) use self::send::{Queued, enqueue_only, options, send, send_once};

pub(crate) use self::report::rfc3339;
#[cfg(test)]
use self::report::{Pending, recipient_report};

/// The exit code after SIGINT, as a shell reports it (128 + 2).
pub(crate) const EXIT_SIGINT: u8 = 130;
/// The exit code after SIGTERM (128 + 15).
pub(crate) const EXIT_SIGTERM: u8 = 143;

pub(crate) fn queue_error(e: smtp_queue::Error) -> Failure {
    match e {
        smtp_queue::Error::NotFound(id) => {
            Failure::new(EX_NOINPUT, format!("no message {id} in the queue")).kind("not-found")
        }
        e => Failure::new(EX_TEMPFAIL, format!("queue: {e}")),
    }
}

fn schedule(r: &RetryArgs) -> Schedule {
    let mut s = Schedule::default();
    if let Some(n) = r.retry_first {
        s.first = Duration::from_secs(n);
    }
    if let Some(n) = r.retry_max {
        s.max = Duration::from_secs(n);
    }
    if let Some(n) = r.max_lifetime {
        s.lifetime = Duration::from_secs(n);
    }
    s
}

/// The lines `queue run` prints as it goes: one per recorded outcome on
/// stdout, a held destination and a lost reply on stderr.
fn report(event: &RunEvent) {
    if let RunEvent::Recorded {
        recipient, outcome, ..
    } = event
    {
        let (word, a) = match outcome {
            Outcome::Delivered(a) => ("delivered", Some(a)),
            Outcome::Failed(a) => ("failed", Some(a)),
            Outcome::Deferred { attempt, .. } => ("deferred", Some(attempt)),
            Outcome::Expired(a) => ("expired", a.as_ref()),
        };
        // Redacted and made printable as everything printed is: a server
        // may echo the password into its reply.
        say!("{recipient}: {word}{}", why(a));
    }
    warn(event);
}

/// ` (CODE text)`, or nothing without an attempt; the text on one line
/// (a reply of several lines must not print lines that look like ours).
fn why(a: Option<&Attempt>) -> String {
    a.map_or_else(String::new, |a| {
        let text = joined(&a.text);
        match a.code {
            Some(c) => format!(" ({c} {text})"),
            None => format!(" ({text})"),
        }
    })
}

/// What is said on stderr whatever the output: a held destination (once),
/// a lost reply, a message a stop cut off in flight, a notification
/// enqueued.
fn warn(event: &RunEvent) {
    match event {
        RunEvent::Held {
            destination,
            reason,
            ..
        } => progress::suspend(|| {
            tell!(
                "smtp: HELD {destination}: {}; its recipients stay queued",
                joined(reason)
            );
        }),
        RunEvent::OutcomeUnknown { recipient, .. } => progress::suspend(|| {
            tell!("smtp: warning: {recipient}: the reply was lost; a retry may deliver it twice");
        }),
        RunEvent::InFlight { recipients, .. } => progress::suspend(|| {
            tell!(
                "smtp: warning: {}: stopped after the message's data went out, before the \
                 server's reply; it stays queued, and a later run may deliver it twice",
                recipients.join(", ")
            );
        }),
        RunEvent::Notified {
            notification,
            to,
            recipients,
            ..
        } => progress::suspend(|| {
            let n = recipients.len();
            let s = if n == 1 { "" } else { "s" };
            tell!(
                "smtp: notifying {to} of {n} undelivered recipient{s} ({}): delivery status notification {notification} queued",
                recipients.join(", ")
            );
        }),
        RunEvent::WaitingForBudget {
            key,
            until,
            messages,
            released,
        } => {
            let secs = until
                .duration_since(std::time::SystemTime::now())
                .unwrap_or_default()
                .as_secs();
            // Waits of a second or two on the session are the rate at work.
            if *released || secs >= 5 {
                let how = if *released {
                    "released, each due at its turn"
                } else {
                    "on the open connection"
                };
                progress::suspend(|| {
                    tell!(
                        "smtp: waiting for the rate budget of {key} until {} (in {secs}s): {messages} message{} ({how})",
                        rfc3339(*until),
                        if *messages == 1 { "" } else { "s" }
                    );
                });
            }
        }
        _ => {}
    }
}

/// Says once (on stderr, or in the log when it is on) how many messages
/// wait in the queue for routes other than `mine`, the runner's: it does
/// not take them (they go only through the relay account and TLS policy
/// they were enqueued for, or directly), so a run that leaves them must
/// not be silent about them. Returns how many.
async fn tell_other_routes(store: &dyn Store, mine: &str, logging: bool) -> Result<u64, Failure> {
    let others: Vec<(String, u64)> = store
        .waiting_by_route(std::time::SystemTime::now())
        .await
        .map_err(queue_error)?
        .into_iter()
        .filter_map(|w| w.route.filter(|r| r != mine).map(|r| (r, w.messages)))
        .collect();
    let total: u64 = others.iter().map(|(_, n)| n).sum();
    if total == 0 {
        return Ok(0);
    }
    let n = counted(usize::try_from(total).unwrap_or(usize::MAX), "message");
    let verb = if total == 1 { "waits" } else { "wait" };
    let is_direct =
        |r: &str| r == smtp_queue::DIRECT_ROUTE || r == smtp_queue::DIRECT_ROUTE_WITHOUT_MTA_STS;
    let relays = others.iter().any(|(r, _)| !is_direct(r));
    let direct = match (
        others.iter().any(|(r, _)| r == smtp_queue::DIRECT_ROUTE),
        others
            .iter()
            .any(|(r, _)| r == smtp_queue::DIRECT_ROUTE_WITHOUT_MTA_STS),
    ) {
        (false, false) => None,
        (true, false) => Some("`smtp queue run` without --server"),
        (false, true) => Some("`smtp queue run --mta-sts off` without --server"),
        (true, true) => {
            Some("`smtp queue run` without --server (those with mta-sts=off: with --mta-sts off)")
        }
    };
    let how = match (relays, direct) {
        (true, None) => {
            "deliver them with `smtp queue run --account …` or the flags they were sent with"
                .to_owned()
        }
        (false, Some(d)) => format!("deliver them with {d} (direct delivery)"),
        (true, Some(d)) => format!(
            "deliver them with `smtp queue run --account …` or the flags they were sent with; \
             the direct ones with {d}"
        ),
        (false, None) => String::new(),
    };
    let text = match others.as_slice() {
        [(route, _)] => format!("{n} in this queue {verb} for another route: {route} ({how})"),
        _ => {
            let each: Vec<String> = others
                .iter()
                .map(|(route, k)| format!("{k} for {route}"))
                .collect();
            format!(
                "{n} in this queue {verb} for other routes: {} ({how})",
                each.join("; ")
            )
        }
    };
    if logging {
        tracing::warn!(target: "smtp_cli::queue", messages = total, "{text}");
    } else {
        progress::suspend(|| tell!("smtp: {text}"));
    }
    Ok(total)
}

/// While `send --queue` delivers, SIGINT and SIGTERM stop its runner
/// (see [`interrupt`]) instead of ending the process.
static INTERRUPT: Mutex<Option<Stop>> = Mutex::new(None);

/// The exit code of the signal that stopped `send --queue` (0: none).
static SIGNALLED: AtomicU8 = AtomicU8::new(0);

/// Called by the signal handler with the exit code the signal stands for:
/// when `send --queue` is delivering, stops its runner (it claims nothing
/// more, lets transactions under way finish within the grace and releases
/// the rest) and returns true; the process then ends by itself, with a
/// report. False when nothing is delivering from the queue.
pub(crate) fn interrupt(code: u8) -> bool {
    let guard = lock(&INTERRUPT);
    let Some(stop) = guard.as_ref() else {
        return false;
    };
    let _ = SIGNALLED.compare_exchange(0, code, Ordering::SeqCst, Ordering::SeqCst);
    stop.stop();
    true
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Unregisters the runner's [`Stop`] from [`interrupt`] when dropped.
struct Registered;

impl Registered {
    fn new(stop: &Stop) -> Self {
        *lock(&INTERRUPT) = Some(stop.clone());
        Self
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        *lock(&INTERRUPT) = None;
    }
}

/// How the runner delivers.
// Built once per run: the size difference does not matter.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Via {
    /// Through a relay (`--server`).
    Relay(Server),
    /// To each recipient domain's MX (no `--server`).
    Direct(Box<crate::send::DirectParts>),
}

impl Via {
    fn runner(self, store: Arc<dyn Store>, config: RunnerConfig) -> Runner {
        match self {
            Self::Relay(server) => {
                warn_plaintext_secret(&server);
                Runner::new(store, server, config)
            }
            Self::Direct(d) => {
                let d = *d;
                // Policies are cached in the queue's store.
                let cache = Arc::new(smtp_queue::mta_sts::StoreCache(store.clone()));
                let sts = d.mta_sts(cache);
                let runner =
                    Runner::direct(store, d.resolver, Arc::new(d.connector), d.options, config);
                match sts {
                    Some(sts) => runner.with_mta_sts(Arc::new(sts)),
                    None => runner,
                }
            }
        }
    }
}

/// Says once, before the runner starts, what `smtp send` says when its
/// session warns: the password will cross the network readable (a named
/// PLAIN or LOGIN without TLS). The runner's sessions give no warning of
/// their own to show.
fn warn_plaintext_secret(server: &Server) {
    use smtp_core::sasl::AuthChoice;
    let plaintext = server.policy == smtp_core::TlsPolicy::None && !server.implicit_tls;
    if let (true, Some(_), AuthChoice::Explicit(m)) = (plaintext, &server.credentials, server.auth)
        && m.reveals_secret()
    {
        tell!(
            "warning: {}",
            crate::advice::warning_text(&smtp_core::Warning::PlaintextSecret(m))
        );
    }
}

/// Direct delivery's sessions at once: many destinations, each slow to
/// answer (DNS, greetings), as an MTA runs them.
const DIRECT_CONCURRENCY: u16 = 32;
/// Direct delivery's messages per claim: enough for runs of messages to
/// one domain to share sessions.
const DIRECT_CLAIM: u32 = 2000;

/// The runner's settings from the options; in direct delivery, with the
/// traffic shaping of the config file at `file` (or the default place).
fn config(retry: &RetryArgs, direct: bool, file: Option<&Path>) -> Result<RunnerConfig, Failure> {
    let mut config = RunnerConfig::default()
        .with_schedule(schedule(retry))
        .with_worker(place::worker_id());
    if direct {
        config = config
            .with_concurrency(DIRECT_CONCURRENCY.into())
            .with_claim(DIRECT_CLAIM)
            .with_shaping(crate::config::shaping(file)?);
    }
    if let Some(secs) = retry.stop_grace {
        config = config.with_stop_grace(Duration::from_secs(secs));
    }
    if let Some(n) = retry.concurrency {
        config = config.with_concurrency(n.into());
    }
    if let Some(n) = retry.per_destination {
        config = config.with_per_destination(n.into());
    }
    if let Some(n) = retry.per_connection {
        config = config.with_per_connection(n.into());
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use smtp_queue::RecipientState;

    use super::*;

    #[test]
    fn a_recipient_still_queued_says_so_and_when() {
        let next = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let a = Attempt {
            code: Some(451),
            text: "greylisted".into(),
            ..Attempt::default()
        };
        let r = recipient_report(
            "b@example.net",
            RecipientState::Deferred,
            Some(&a),
            next,
            Pending::NotAttempted,
        );
        assert_eq!(r.status, "deferred");
        assert_eq!(r.queued, Some(true));
        assert_eq!(r.next_attempt.as_deref(), Some("2023-11-14T22:13:20Z"));
        let r = recipient_report(
            "b@example.net",
            RecipientState::Expired,
            Some(&a),
            next,
            Pending::NotAttempted,
        );
        assert_eq!((r.status, r.queued), ("rejected", None));
        assert!(r.text.starts_with("expired"), "{}", r.text);
    }

    #[test]
    fn after_a_stop_only_a_recipient_in_flight_may_be_delivered_twice() {
        let next = SystemTime::UNIX_EPOCH;
        let line = |state, last: Option<&Attempt>, pending| {
            recipient_report("b@example.net", state, last, next, pending).text
        };
        let not_sent = line(RecipientState::Queued, None, Pending::NotSent);
        assert!(not_sent.contains("not delivered"), "{not_sent}");
        assert!(!not_sent.contains("twice"), "{not_sent}");
        let in_flight = line(RecipientState::Queued, None, Pending::InFlight);
        assert!(in_flight.contains("may be delivered twice"), "{in_flight}");
        // Deferred before, then cut off in flight: both are said.
        let a = Attempt {
            code: Some(451),
            text: "greylisted".into(),
            ..Attempt::default()
        };
        let again = line(RecipientState::Deferred, Some(&a), Pending::InFlight);
        assert!(again.contains("may be delivered twice"), "{again}");
        assert!(again.contains("greylisted"), "{again}");
        // A final outcome is not pending, whatever the stop found.
        let delivered = line(RecipientState::Delivered, Some(&a), Pending::InFlight);
        assert_eq!(delivered, "greylisted");
    }
}
