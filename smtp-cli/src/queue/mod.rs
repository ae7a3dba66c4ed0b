//! `smtp send --queue` and `smtp queue …`: the durable delivery queue.
//!
//! The relay is not stored with queued messages: `queue run` is given it
//! again (flags or `--account`), and credentials are resolved at run time
//! from the command line, config file or environment as `send` does, so no
//! secret is ever written into the queue.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use smtp_core::Envelope;
use smtp_core::data::BodyType;
use smtp_core::ehlo::ClientId;
use smtp_queue::{
    Attempt, Backoff, Body, BodyKind, ListFilter, MessageOptions, NewMessage, Outcome,
    RecipientState, RunEvent, Runner, RunnerConfig, Schedule, SqliteStore, Stop, Store,
};
use smtp_tls::Server;

use crate::cli::{QueueArgs, QueueCommand, QueueRunArgs, RetryArgs, SendArgs};
use crate::fail::{EX_NOINPUT, EX_OK, EX_TEMPFAIL, Failure};
use crate::message::{Prepared, PreparedBody};
use crate::output::{ErrorReport, JSON_VERSION, counted};
use crate::progress::{self, Mode};
use crate::terminal::joined;

mod admin;
mod command;
mod metrics;
mod report;
mod scrape;

pub(crate) use self::command::run_command;

#[cfg(test)]
use self::report::recipient_report;
pub(crate) use self::report::rfc3339;
use self::report::{INTERRUPTED, Live, NOT_ATTEMPTED, report_from_store};

/// The exit code after SIGINT, as a shell reports it (128 + 2).
pub(crate) const EXIT_SIGINT: u8 = 130;
/// The exit code after SIGTERM (128 + 15).
pub(crate) const EXIT_SIGTERM: u8 = 143;

/// The queue's directory: `dir`, else `$XDG_STATE_HOME/smtp/queue`, else
/// `~/.local/state/smtp/queue`.
fn directory(dir: Option<&Path>) -> Result<PathBuf, Failure> {
    if let Some(d) = dir.filter(|d| !d.as_os_str().is_empty()) {
        return Ok(d.to_owned());
    }
    if let Some(state) = std::env::var_os("XDG_STATE_HOME").filter(|s| !s.is_empty()) {
        return Ok(PathBuf::from(state).join("smtp/queue"));
    }
    let home = std::env::var_os("HOME")
        .ok_or_else(|| Failure::config("no --queue DIR, XDG_STATE_HOME or HOME"))?;
    Ok(PathBuf::from(home).join(".local/state/smtp/queue"))
}

/// Opens the queue in `dir`, creating it when there is none: `send
/// --queue` and `queue run --watch` (a service may start before anything
/// is queued).
async fn open(dir: Option<&Path>) -> Result<Arc<SqliteStore>, Failure> {
    open_at(&directory(dir)?).await
}

async fn open_at(dir: &Path) -> Result<Arc<SqliteStore>, Failure> {
    SqliteStore::open(dir)
        .await
        .map(Arc::new)
        .map_err(|e| Failure::new(EX_TEMPFAIL, format!("queue {}: {e}", dir.display())))
}

/// Whether `dir` holds a queue (its database).
fn exists(dir: &Path) -> bool {
    dir.join("queue.db").is_file()
}

/// Opens the queue in `dir` only when there is one: the commands that read
/// or change a queue (and a one-off `queue run`) refuse a directory
/// without `queue.db` (66) rather than create an empty queue where a
/// mistyped `--queue` points.
async fn open_existing(dir: Option<&Path>) -> Result<Arc<SqliteStore>, Failure> {
    let given = dir.is_some_and(|d| !d.as_os_str().is_empty());
    let dir = directory(dir)?;
    if !exists(&dir) {
        let why = if dir.is_dir() {
            "it holds no queue.db"
        } else if dir.exists() {
            "not a directory"
        } else {
            "no such directory"
        };
        let hint = if given {
            "a mistyped --queue? `smtp send --queue DIR` creates a queue"
        } else {
            "nothing was queued there yet: `smtp send --queue` creates it"
        };
        return Err(Failure::new(
            EX_NOINPUT,
            format!("no queue in {}: {why} ({hint})", dir.display()),
        )
        .kind("no-queue"));
    }
    open_at(&dir).await
}

fn queue_error(e: smtp_queue::Error) -> Failure {
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
/// a lost reply, a notification enqueued.
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
        _ => {}
    }
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
    fn runner(self, store: Arc<SqliteStore>, config: RunnerConfig) -> Runner {
        match self {
            Self::Relay(server) => {
                warn_plaintext_secret(&server);
                Runner::new(store, server, config)
            }
            Self::Direct(d) => {
                let d = *d;
                Runner::direct(
                    store,
                    Arc::new(d.resolver),
                    Arc::new(d.connector),
                    d.options,
                    config,
                )
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
    {
        if m.reveals_secret() {
            tell!(
                "warning: {}",
                crate::advice::warning_text(&smtp_core::Warning::PlaintextSecret(m))
            );
        }
    }
}

/// How a `send --queue` run ended.
enum Ended {
    /// Every recipient is final.
    Final,
    /// Some wait for a retry later than `--linger`, or a held destination.
    Waiting(SystemTime),
    /// A signal stopped it.
    Interrupted,
}

/// `smtp send --queue`'s own settings.
pub(crate) struct Queued<'a> {
    /// The queue's directory (empty: the default).
    pub(crate) dir: &'a Path,
    /// The retry schedule and how long to linger.
    pub(crate) retry: &'a RetryArgs,
    /// `--notify-sender`.
    pub(crate) notify_sender: bool,
    /// The `smtp queue run …` command that delivers what stays queued
    /// ([`run_command`]).
    pub(crate) run_line: String,
}

/// The batch to enqueue: each prepared message with its envelope.
fn batch(queued: &Queued<'_>, prepared: &[Prepared], envelopes: &[Envelope]) -> Vec<NewMessage> {
    if queued.notify_sender {
        for (m, e) in prepared.iter().zip(envelopes) {
            if e.from == smtp_core::address::ReversePath::Null {
                tell!(
                    "note: {}: the sender is null (<>): --notify-sender sends it no notification",
                    m.name
                );
            }
        }
    }
    prepared
        .iter()
        .zip(envelopes)
        .map(|(m, e)| NewMessage {
            from: e.from.to_string(),
            to: e.to.iter().map(ToString::to_string).collect(),
            body: Body::Source(Box::new(PreparedBody::new(m))),
            options: options(e, queued.notify_sender),
        })
        .collect()
}

/// Messages one enqueue commits at most: the queue holds a part's small
/// bodies in memory until its commit, so a long list goes in parts, each
/// durable when it returns, and memory stays flat.
const ENQUEUE_PART: usize = 1000;

/// Enqueues `batch` a part at a time (`names` name its messages). When a
/// part fails after others were committed, the error says how many are
/// queued (a runner will deliver them) and from which message on nothing
/// was: never "nothing" when something was.
async fn enqueue_parts(
    store: &SqliteStore,
    batch: Vec<NewMessage>,
    names: &[&str],
    now: SystemTime,
) -> Result<Vec<smtp_queue::MessageId>, Failure> {
    let total = batch.len();
    let mut ids = Vec::with_capacity(total);
    let mut rest = batch.into_iter();
    loop {
        let part: Vec<NewMessage> = rest.by_ref().take(ENQUEUE_PART).collect();
        if part.is_empty() {
            return Ok(ids);
        }
        match store.enqueue(part, now).await {
            Ok(mut part_ids) => ids.append(&mut part_ids),
            Err(e) if ids.is_empty() => return Err(queue_error(e)),
            Err(e) => {
                let first = names.get(ids.len()).copied().unwrap_or("the next message");
                return Err(Failure::new(
                    EX_TEMPFAIL,
                    format!(
                        "queue: {} of {total} messages were enqueued (a `smtp queue run` \
                         delivers them); {first} and those after it were not: {e}",
                        ids.len()
                    ),
                ));
            }
        }
    }
}

/// `smtp send --queue --queue-only` (sendmail's `-odq`): enqueue in one
/// batch, durably, and exit 0 without delivering; say how many were queued
/// and the `smtp queue run` command that delivers them (`--json`: one
/// object with each message's id and recipients as queued). A `queue run
/// --watch` service delivers them as soon as they are due.
pub(crate) async fn enqueue_only(
    queued: &Queued<'_>,
    prepared: &[Prepared],
    envelopes: &[Envelope],
    json: bool,
) -> Result<u8, Failure> {
    let dir = directory(Some(queued.dir))?;
    let store = open_at(&dir).await?;
    let now = SystemTime::now();
    let names: Vec<&str> = prepared.iter().map(|m| m.name.as_str()).collect();
    let ids = enqueue_parts(&store, batch(queued, prepared, envelopes), &names, now).await?;
    let recipients: usize = envelopes.iter().map(|e| e.to.len()).sum();
    if json {
        let messages: Vec<_> = ids
            .iter()
            .zip(prepared.iter().zip(envelopes))
            .map(|(id, (m, e))| {
                let to: Vec<_> =
                    e.to.iter()
                        .map(|r| {
                            serde_json::json!({ "address": r.to_string(), "state": "queued",
                            "next_attempt": rfc3339(now) })
                        })
                        .collect();
                let from = e.from.to_string();
                let from = from.trim_start_matches('<').trim_end_matches('>');
                serde_json::json!({ "id": id.as_str(), "message": m.name, "from": from,
                    "recipients": to })
            })
            .collect();
        let v = serde_json::json!({
            "version": JSON_VERSION,
            "queue": dir.display().to_string(),
            "messages": messages,
            "summary": { "messages": ids.len(), "recipients": recipients },
            "run": queued.run_line,
        });
        say!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        let one = match ids.as_slice() {
            [id] => format!(" as {id}"),
            _ => String::new(),
        };
        say!(
            "queued {} ({}) in {}{one}; nothing delivered yet",
            counted(ids.len(), "message"),
            counted(recipients, "recipient"),
            dir.display()
        );
        say!("deliver with: {}", queued.run_line);
    }
    Ok(EX_OK)
}

/// `smtp send --queue`: enqueue in one batch, then deliver until every
/// recipient is final or only later retries remain (exit 75); a signal
/// stops the runner cleanly (exit 130 or 143) and leaves the rest queued
/// for `smtp queue run`. The report is `smtp send`'s, each recipient still
/// queued marked so, with its next attempt. With `--notify-sender`, a
/// message with failed or expired recipients gets its notification
/// enqueued and delivered in the same run (said on stderr).
pub(crate) async fn send(
    queued: &Queued<'_>,
    via: Via,
    prepared: Vec<Prepared>,
    envelopes: &[Envelope],
    mode: Mode,
) -> Result<u8, Failure> {
    let (dir, retry) = (queued.dir, queued.retry);
    let store = open(Some(dir)).await?;
    let sent = crate::send::sent(&prepared, envelopes);
    let batch = batch(queued, &prepared, envelopes);
    // Once enqueued, the messages are the queue's to read: what was
    // prepared in memory goes now, not at the end of the run.
    drop(prepared);
    // From here a signal stops the runner rather than the process: what
    // the enqueue commits is then reported, and left for `queue run`.
    let stop = Stop::new();
    let _registered = Registered::new(&stop);
    let names: Vec<&str> = sent.iter().map(|s| s.name.as_str()).collect();
    let ids = enqueue_parts(&store, batch, &names, SystemTime::now()).await?;
    progress::begin(&sent, mode);
    let live = Arc::new(Mutex::new(Live::new(&ids, &sent)));
    let observer = {
        let live = live.clone();
        move |e: &RunEvent| lock(&live).event(e)
    };
    let direct = matches!(via, Via::Direct(_));
    let runner = via
        .runner(store.clone(), config(retry, direct))
        .with_observer(observer);
    let linger = Duration::from_secs(retry.linger.unwrap_or(60));
    let ended = loop {
        runner.run_due(&stop).await.map_err(queue_error)?;
        if stop.is_stopped() {
            break Ended::Interrupted;
        }
        let mut waiting: Option<SystemTime> = None;
        let unsettled = lock(&live).unsettled();
        for chunk in unsettled.chunks(1000) {
            for info in store.show_many(chunk).await.map_err(queue_error)? {
                for r in info.recipients.iter().filter(|r| !r.state.is_final()) {
                    waiting = Some(waiting.map_or(r.next_attempt, |w| w.min(r.next_attempt)));
                }
            }
        }
        let Some(next) = waiting else {
            break Ended::Final;
        };
        let now = SystemTime::now();
        let backoff = store
            .backoff(runner.destination())
            .await
            .map_err(queue_error)?
            .map(|b| b.not_before)
            .filter(|t| *t > now);
        let next = backoff.map_or(next, |b| b.max(next));
        let wait = next.duration_since(now).unwrap_or_default();
        if wait > linger || !runner.summary().held.is_empty() {
            break Ended::Waiting(next);
        }
        tokio::select! {
            () = tokio::time::sleep(wait.max(Duration::from_millis(50))) => {}
            () = stop.stopped() => break Ended::Interrupted,
        }
    };
    progress::done_sending();
    let interrupted = matches!(ended, Ended::Interrupted);
    let unattempted = if interrupted {
        INTERRUPTED
    } else {
        NOT_ATTEMPTED
    };
    let mut report = report_from_store(&store, &ids, &sent, unattempted).await?;
    if interrupted {
        report.fault = Some((
            EX_TEMPFAIL,
            ErrorReport {
                kind: "interrupted",
                message: "interrupted by a signal; recipients not delivered stay queued".to_owned(),
            },
        ));
    }
    progress::finish(&report, mode);
    let summary = report.summary();
    let resume = &queued.run_line;
    match ended {
        Ended::Interrupted => {
            tell!(
                "smtp: interrupted: {} delivered, {} failed, {} still queued ({resume} delivers them)",
                summary.accepted,
                summary.rejected,
                summary.deferred
            );
            Ok(match SIGNALLED.load(Ordering::SeqCst) {
                0 => EXIT_SIGINT,
                code => code,
            })
        }
        Ended::Waiting(next) => {
            let secs = next
                .duration_since(SystemTime::now())
                .unwrap_or_default()
                .as_secs();
            tell!(
                "smtp: still queued: {}; next attempt at {} (in {secs}s): {resume}",
                summary.deferred,
                rfc3339(next)
            );
            Ok(report.exit_code())
        }
        Ended::Final => Ok(report.exit_code()),
    }
}

fn options(e: &Envelope, notify_sender: bool) -> MessageOptions {
    let mut o = MessageOptions::default();
    o.notify_sender = notify_sender;
    o.body = match e.body {
        BodyType::SevenBit => BodyKind::SevenBit,
        BodyType::EightBitMime => BodyKind::EightBit,
        BodyType::BinaryMime => BodyKind::Binary,
    };
    o.require_tls = e.require_tls;
    o
}

/// Direct delivery's sessions at once: many destinations, each slow to
/// answer (DNS, greetings), as an MTA runs them.
const DIRECT_CONCURRENCY: u16 = 32;
/// Direct delivery's messages per claim: enough for runs of messages to
/// one domain to share sessions.
const DIRECT_CLAIM: u32 = 2000;

fn config(retry: &RetryArgs, direct: bool) -> RunnerConfig {
    let mut config = RunnerConfig::default().with_schedule(schedule(retry));
    if direct {
        config = config
            .with_concurrency(DIRECT_CONCURRENCY.into())
            .with_claim(DIRECT_CLAIM);
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
    config
}

/// `smtp queue …`.
pub(crate) async fn run(args: QueueArgs) -> Result<u8, Failure> {
    if let QueueCommand::Run(run) = args.command {
        crate::log::install(run.log_format, run.watch)?;
        let store = if run.watch {
            // A service may start before anything is queued: it creates
            // the queue, and says where.
            let dir = directory(args.queue.as_deref())?;
            if !exists(&dir) {
                tracing::info!(target: "smtp_cli::queue", queue = %dir.display(),
                    "no queue there yet: created an empty one");
            }
            open_at(&dir).await?
        } else {
            open_existing(args.queue.as_deref()).await?
        };
        return run_queue(store, *run).await;
    }
    let store = open_existing(args.queue.as_deref()).await?;
    admin::run(store, args.command, args.json).await
}

async fn run_queue(store: Arc<SqliteStore>, args: QueueRunArgs) -> Result<u8, Failure> {
    let send = SendArgs {
        server: args.server,
        port: args.port,
        tls: args.tls,
        implicit_tls: args.implicit_tls,
        ca_file: args.ca_file,
        login: args.login,
        helo: args.helo,
        config: args.config,
        account: args.account,
        dns_server: args.dns_server,
        ..SendArgs::default()
    };
    let s = crate::settings::settings(&send)?;
    let client_id = ClientId::parse(&s.helo).map_err(|e| Failure::usage(format!("--helo: {e}")))?;
    // No --server (nor an account with one): direct delivery.
    let via = match &s.server {
        Some((host, port)) => Via::Relay(crate::send::relay(&s, host, *port, client_id, false)?),
        None => Via::Direct(Box::new(crate::send::direct_parts(
            &s,
            client_id,
            false,
            args.mx_port,
        )?)),
    };
    let mut config = config(&args.retry, matches!(via, Via::Direct(_)));
    if let Some(secs) = args.lease {
        config = config.with_lease(Duration::from_secs(secs.max(1)));
    }
    let metrics = match args.metrics {
        Some(addr) => Some(serve_metrics(addr, store.clone()).await?),
        None => None,
    };
    // With the log on, its delivery lines (and its warnings and errors)
    // tell what happened; without it, a line per outcome on stdout.
    let logging = crate::log::is_on();
    let observer = move |event: &RunEvent| {
        if !logging {
            report(event);
        }
        if let Some(m) = &metrics {
            m.observe(event);
        }
    };
    // Standard delivery backs off (and holds) the relay as a whole.
    let relay = matches!(via, Via::Relay(_));
    let runner = via.runner(store.clone(), config).with_observer(observer);
    let relay = relay.then(|| runner.destination().to_owned());
    let stop = Stop::new();
    let signals = stop.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        if let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) {
            let name = tokio::select! {
                _ = int.recv() => "SIGINT",
                _ = term.recv() => "SIGTERM",
            };
            tracing::info!(target: "smtp_cli::queue", signal = name,
                "stopping: nothing more is claimed; sessions under way get the stop grace");
            signals.stop();
        }
    });
    if args.watch {
        tracing::info!(target: "smtp_cli::queue", destination = runner.destination(), "watching the queue");
    }
    let summary = if args.watch {
        runner.watch(&stop).await
    } else {
        runner.run_due(&stop).await
    }
    .map_err(queue_error)?;
    let stats = store.stats().await.map_err(queue_error)?;
    let waiting = stats.count(RecipientState::Queued) + stats.count(RecipientState::Deferred);
    let leased = stats.count(RecipientState::Delivering);
    // A watcher stopped on request has done its job, whatever waits.
    let stopped = args.watch && stop.is_stopped();
    if stopped {
        tracing::info!(target: "smtp_cli::queue", waiting, leased, "stopped");
    }
    if summary.held.is_empty() && waiting == 0 && leased == 0 {
        return Ok(EX_OK);
    }
    // Why nothing more was delivered: said on stderr (or in the log), so
    // that a run that delivers nothing is never silent about it.
    let now = SystemTime::now();
    if leased > 0 {
        tell_leased(&store, leased, now, logging).await?;
    }
    let backoff = match &relay {
        Some(destination) => store
            .backoff(destination)
            .await
            .map_err(queue_error)?
            .filter(|b| b.not_before > now),
        None => None,
    };
    if let Some(b) = backoff.as_ref().filter(|_| waiting > 0) {
        let held = summary.held.iter().any(|(d, _)| *d == b.destination);
        tell_backoff(b, held, now, logging);
    }
    if waiting > 0 {
        if let Some(next) = store.next_due().await.map_err(queue_error)? {
            // Not before the relay's back-off ends.
            let next = backoff.as_ref().map_or(next, |b| b.not_before.max(next));
            let secs = in_secs(next, now);
            if logging {
                tracing::info!(target: "smtp_cli::queue", waiting, next_attempt_in_s = secs,
                    "recipients wait (`smtp queue retry --all` makes them due now)");
            } else {
                tell!(
                    "smtp: {} {}; next attempt in {secs}s (`smtp queue retry --all` makes them \
                     due now)",
                    counted(usize::try_from(waiting).unwrap_or(usize::MAX), "recipient"),
                    if waiting == 1 { "waits" } else { "wait" }
                );
            }
        }
    }
    Ok(if stopped { EX_OK } else { EX_TEMPFAIL })
}

/// Whole seconds from `now` to `t` (0 when past).
fn in_secs(t: SystemTime, now: SystemTime) -> u64 {
    t.duration_since(now).unwrap_or_default().as_secs()
}

/// Says that `leased` recipients are under another run's lease (state
/// `delivering`): one under way, or one killed before it could release
/// them, whose leases must run out before they are claimed again.
async fn tell_leased(
    store: &SqliteStore,
    leased: u64,
    now: SystemTime,
    logging: bool,
) -> Result<(), Failure> {
    let filter = ListFilter {
        state: Some(RecipientState::Delivering),
        ..ListFilter::default()
    };
    let ends: Vec<SystemTime> = store
        .list(&filter)
        .await
        .map_err(queue_error)?
        .iter()
        .flat_map(|m| &m.recipients)
        .filter(|r| r.state == RecipientState::Delivering)
        .filter_map(|r| r.lease.as_ref().map(|l| l.until))
        .collect();
    let (Some(first), Some(last)) = (ends.iter().min(), ends.iter().max()) else {
        return Ok(());
    };
    let until = if first == last {
        format!("until {} (in {}s)", rfc3339(*last), in_secs(*last, now))
    } else {
        format!(
            "until between {} and {} (in {}s to {}s)",
            rfc3339(*first),
            rfc3339(*last),
            in_secs(*first, now),
            in_secs(*last, now)
        )
    };
    let n = usize::try_from(leased).unwrap_or(usize::MAX);
    let text = format!(
        "{} leased (state delivering) {until}: another `smtp queue run` holds {}, or one was \
         killed before it could release {}; they are claimed again when the lease runs out",
        counted(n, "recipient"),
        if n == 1 { "it" } else { "them" },
        if n == 1 { "it" } else { "them" },
    );
    if logging {
        tracing::warn!(target: "smtp_cli::queue", leased, lease_until = %rfc3339(*last), "{text}");
    } else {
        tell!("smtp: {text}");
    }
    Ok(())
}

/// Says that the relay is backed off (it could not be reached) or held (a
/// configuration or policy fault) until `b.not_before`, why, and how to
/// retry at once.
fn tell_backoff(b: &Backoff, held_now: bool, now: SystemTime, logging: bool) {
    let what = if held_now { "held" } else { "backed off" };
    let hint = if held_now {
        "once the cause is fixed, `smtp queue retry --all` clears the hold"
    } else {
        "`smtp queue retry --all` clears the back-off"
    };
    let text = format!(
        "{} is {what} until {} (in {}s): {}; its recipients wait until then ({hint} and makes \
         them due now)",
        b.destination,
        rfc3339(b.not_before),
        in_secs(b.not_before, now),
        joined(&b.reason)
    );
    if logging {
        tracing::warn!(target: "smtp_cli::queue", destination = %b.destination,
            until = %rfc3339(b.not_before), reason = %b.reason, "{text}");
    } else {
        tell!("smtp: {text}");
    }
}

/// Binds `--metrics ADDR`, tells the address, and serves the metrics from
/// a task of their own; returns them for the runner's observer.
async fn serve_metrics(
    addr: std::net::SocketAddr,
    store: Arc<SqliteStore>,
) -> Result<Arc<metrics::Metrics>, Failure> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Failure::config(format!("--metrics {addr}: {e}")))?;
    let bound = listener
        .local_addr()
        .map_err(|e| Failure::config(format!("--metrics {addr}: {e}")))?;
    if tracing::enabled!(target: "smtp_cli::metrics", tracing::Level::INFO) {
        tracing::info!(target: "smtp_cli::metrics", address = %bound,
            "serving metrics on http://{bound}/metrics");
    } else {
        tell!("smtp: serving metrics on http://{bound}/metrics");
    }
    let metrics = Arc::new(metrics::Metrics::new());
    let shared = metrics.clone();
    let render = move || {
        let (metrics, store) = (shared.clone(), store.clone());
        async move {
            metrics.refresh(store.as_ref()).await;
            metrics.encode()
        }
    };
    tokio::spawn(scrape::serve(
        listener,
        scrape::Limits::default(),
        metrics::CONTENT_TYPE,
        render,
    ));
    Ok(metrics)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A body whose source fails.
    struct Broken;

    #[async_trait::async_trait]
    impl smtp_core::delivery::BodySource for Broken {
        async fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
            Err(std::io::Error::other("the producer went away"))
        }
        async fn rewind(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_part_that_fails_after_others_were_enqueued_says_how_many_are_queued() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).await.unwrap();
        let message = |body: Body| NewMessage {
            from: "a@example.org".into(),
            to: vec!["b@example.net".into()],
            body,
            options: MessageOptions::default(),
        };
        let mut batch: Vec<NewMessage> = (0..ENQUEUE_PART)
            .map(|_| {
                message(Body::Source(Box::new(
                    smtp_core::delivery::MemoryBody::new("Subject: x\r\n\r\nx\r\n"),
                )))
            })
            .collect();
        batch.push(message(Body::Source(Box::new(Broken))));
        let names: Vec<String> = (0..=ENQUEUE_PART).map(|i| format!("m{i}.eml")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let err = enqueue_parts(&store, batch, &names, SystemTime::now())
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("1000 of 1001 messages were enqueued") && text.contains("m1000.eml"),
            "{text}"
        );
        assert_eq!(store.stats().await.unwrap().messages, 1000);
        // Nothing committed yet: the plain error.
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).await.unwrap();
        let err = enqueue_parts(
            &store,
            vec![message(Body::Source(Box::new(Broken)))],
            &["m0.eml"],
            SystemTime::now(),
        )
        .await
        .unwrap_err();
        assert!(!err.to_string().contains("were enqueued"), "{err}");
    }

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
            "",
        );
        assert_eq!(r.status, "deferred");
        assert_eq!(r.queued, Some(true));
        assert_eq!(r.next_attempt.as_deref(), Some("2023-11-14T22:13:20Z"));
        let r = recipient_report("b@example.net", RecipientState::Expired, Some(&a), next, "");
        assert_eq!((r.status, r.queued), ("rejected", None));
        assert!(r.text.starts_with("expired"), "{}", r.text);
    }
}
