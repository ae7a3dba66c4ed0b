//! `smtp send --queue` and `smtp queue …`: the durable delivery queue.
//!
//! The relay is not stored with queued messages: `queue run` is given it
//! again (flags or `--account`), and credentials are resolved at run time
//! from the command line, config file or environment as `send` does, so no
//! secret is ever written into the queue.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use smtp_core::Envelope;
use smtp_core::data::BodyType;
use smtp_core::ehlo::ClientId;
use smtp_queue::{
    Body, BodyKind, ListFilter, MessageId, MessageOptions, NewMessage, Outcome, RecipientState,
    RetryTarget, RunEvent, Runner, RunnerConfig, Schedule, SqliteStore, Stop, Store,
};
use smtp_tls::Server;

use crate::cli::{QueueArgs, QueueCommand, QueueRunArgs, RetryArgs, SendArgs};
use crate::fail::{EX_OK, EX_TEMPFAIL, EX_UNAVAILABLE, Failure};
use crate::message::{Prepared, PreparedBody};

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

async fn open(dir: Option<&Path>) -> Result<Arc<SqliteStore>, Failure> {
    let dir = directory(dir)?;
    SqliteStore::open(&dir)
        .await
        .map(Arc::new)
        .map_err(|e| Failure::new(EX_TEMPFAIL, format!("queue {}: {e}", dir.display())))
}

fn queue_error(e: smtp_queue::Error) -> Failure {
    Failure::new(EX_TEMPFAIL, format!("queue: {e}"))
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

/// One line per recorded outcome, on stdout.
fn report(event: &RunEvent) {
    match event {
        RunEvent::Recorded {
            recipient, outcome, ..
        } => {
            let (word, a) = match outcome {
                Outcome::Delivered(a) => ("delivered", Some(a)),
                Outcome::Failed(a) => ("failed", Some(a)),
                Outcome::Deferred { attempt, .. } => ("deferred", Some(attempt)),
                Outcome::Expired(a) => ("expired", a.as_ref()),
            };
            let why = a.map_or_else(String::new, |a| match a.code {
                Some(c) => format!(" ({c} {})", a.text),
                None => format!(" ({})", a.text),
            });
            println!("{recipient}: {word}{why}");
        }
        RunEvent::Held {
            destination,
            reason,
            ..
        } => tell!("smtp: HELD {destination}: {reason}; its recipients stay queued"),
        RunEvent::OutcomeUnknown { recipient, .. } => {
            tell!("smtp: warning: {recipient}: the reply was lost; a retry may deliver it twice");
        }
        _ => {}
    }
}

/// `smtp send --queue`: enqueue in one batch, then deliver until every
/// recipient is final or only later retries remain (exit 75).
pub(crate) async fn send(
    dir: &Path,
    retry: &RetryArgs,
    server: Server,
    prepared: &[Prepared],
    envelopes: &[Envelope],
) -> Result<u8, Failure> {
    let store = open(Some(dir)).await?;
    let batch = prepared
        .iter()
        .zip(envelopes)
        .map(|(m, e)| NewMessage {
            from: e.from.to_string(),
            to: e.to.iter().map(ToString::to_string).collect(),
            body: Body::Source(Box::new(PreparedBody::new(m))),
            options: options(e),
        })
        .collect();
    let ids = store
        .enqueue(batch, SystemTime::now())
        .await
        .map_err(queue_error)?;
    let runner = Runner::new(store.clone(), server, config(retry)).with_observer(report);
    let linger = Duration::from_secs(retry.linger.unwrap_or(60));
    let stop = Stop::new();
    loop {
        runner.run_due(&stop).await.map_err(queue_error)?;
        let mut waiting: Option<SystemTime> = None;
        let mut failed = false;
        for id in &ids {
            let info = store.show(id).await.map_err(queue_error)?;
            for r in info.recipients {
                match r.state {
                    RecipientState::Delivered => {}
                    RecipientState::Failed | RecipientState::Expired => failed = true,
                    _ => {
                        waiting = Some(waiting.map_or(r.next_attempt, |w| w.min(r.next_attempt)));
                    }
                }
            }
        }
        let Some(next) = waiting else {
            return Ok(if failed { EX_UNAVAILABLE } else { EX_OK });
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
            tell!(
                "smtp: deferred recipients stay queued; next attempt in {}s (smtp queue run --queue {})",
                wait.as_secs(),
                dir.display()
            );
            return Ok(EX_TEMPFAIL);
        }
        tokio::time::sleep(wait.max(Duration::from_millis(50))).await;
    }
}

fn options(e: &Envelope) -> MessageOptions {
    let mut o = MessageOptions::default();
    o.body = match e.body {
        BodyType::SevenBit => BodyKind::SevenBit,
        BodyType::EightBitMime => BodyKind::EightBit,
        BodyType::BinaryMime => BodyKind::Binary,
    };
    o.require_tls = e.require_tls;
    o
}

fn config(retry: &RetryArgs) -> RunnerConfig {
    RunnerConfig::default().with_schedule(schedule(retry))
}

/// `smtp queue …`.
pub(crate) async fn run(args: QueueArgs) -> Result<u8, Failure> {
    let store = open(args.queue.as_deref()).await?;
    let json = args.json;
    match args.command {
        QueueCommand::Run(run) => run_queue(store, *run).await,
        QueueCommand::List => {
            let list = store
                .list(&ListFilter::default())
                .await
                .map_err(queue_error)?;
            for m in list {
                print_message(&m, json);
            }
            Ok(EX_OK)
        }
        QueueCommand::Show { id } => {
            let id = MessageId::parse(&id).map_err(|e| Failure::usage(e.to_string()))?;
            let m = store.show(&id).await.map_err(queue_error)?;
            print_message(&m, json);
            Ok(EX_OK)
        }
        QueueCommand::Retry { id, all } => {
            let target = match (id, all) {
                (Some(id), _) => RetryTarget::Message(
                    MessageId::parse(&id).map_err(|e| Failure::usage(e.to_string()))?,
                ),
                (None, true) => RetryTarget::All,
                (None, false) => return Err(Failure::usage("give a message id or --all")),
            };
            let n = store
                .retry(target, SystemTime::now())
                .await
                .map_err(queue_error)?;
            if json {
                println!("{}", serde_json::json!({ "retried": n }));
            } else {
                println!("{n} recipients due now");
            }
            Ok(EX_OK)
        }
        QueueCommand::Delete { id } => {
            let id = MessageId::parse(&id).map_err(|e| Failure::usage(e.to_string()))?;
            store
                .delete(&id, SystemTime::now())
                .await
                .map_err(queue_error)?;
            Ok(EX_OK)
        }
        QueueCommand::Stats => {
            let stats = store.stats().await.map_err(queue_error)?;
            if json {
                let states: serde_json::Map<String, serde_json::Value> = stats
                    .recipients
                    .iter()
                    .map(|(s, n)| (s.to_string(), (*n).into()))
                    .collect();
                println!(
                    "{}",
                    serde_json::json!({ "messages": stats.messages, "recipients": states })
                );
            } else {
                println!("messages: {}", stats.messages);
                for (s, n) in &stats.recipients {
                    println!("{s}: {n}");
                }
            }
            Ok(EX_OK)
        }
    }
}

fn millis(t: SystemTime) -> u128 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

fn print_message(m: &smtp_queue::MessageInfo, json: bool) {
    if json {
        let recipients: Vec<_> = m
            .recipients
            .iter()
            .map(|r| {
                serde_json::json!({
                    "id": r.id.0, "address": r.address, "state": r.state.to_string(),
                    "attempts": r.attempts, "next_attempt_ms": millis(r.next_attempt),
                    "last": r.last,
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({ "id": m.id.as_str(), "from": m.from, "created_ms": millis(m.created),
                "size": m.body_size, "recipients": recipients })
        );
    } else {
        println!("{} {} <{}>", m.id, m.body_size, m.from);
        for r in &m.recipients {
            let last = r
                .last
                .as_ref()
                .map_or(String::new(), |a| format!(" {}", a.text));
            println!("  {} {} attempts={}{last}", r.address, r.state, r.attempts);
        }
    }
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
        ..SendArgs::default()
    };
    let s = crate::settings::settings(&send)?;
    let Some((host, port)) = &s.server else {
        return Err(Failure::usage(
            "queue run needs --server (or an account with one)",
        ));
    };
    let client_id = ClientId::parse(&s.helo).map_err(|e| Failure::usage(format!("--helo: {e}")))?;
    let server = crate::send::relay(&s, host, *port, client_id, false)?;
    let mut config = config(&args.retry);
    if let Some(secs) = args.lease {
        config = config.with_lease(Duration::from_secs(secs.max(1)));
    }
    let runner = Runner::new(store.clone(), server, config).with_observer(report);
    let stop = Stop::new();
    let signals = stop.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        if let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            signals.stop();
        }
    });
    let summary = if args.watch {
        runner.watch(&stop).await
    } else {
        runner.run_due(&stop).await
    }
    .map_err(queue_error)?;
    let stats = store.stats().await.map_err(queue_error)?;
    let waiting = stats.count(RecipientState::Queued) + stats.count(RecipientState::Deferred);
    if !summary.held.is_empty() || waiting > 0 {
        if let Some(next) = store.next_due().await.map_err(queue_error)? {
            let secs = next
                .duration_since(SystemTime::now())
                .unwrap_or_default()
                .as_secs();
            tell!("smtp: {waiting} recipients wait; next attempt in {secs}s");
        }
        return Ok(EX_TEMPFAIL);
    }
    Ok(EX_OK)
}
