//! `smtp queue list|show|retry|delete|purge|stats`: reading and changing a queue
//! that exists (see [`super::Place::open_existing`]).
//!
//! Every line goes out through `say!`/`tell!`: a stored reply text is the
//! server's choice, so it is printed on one line ([`joined`]) with nothing
//! that could act on a terminal, and redacted like everything printed.

use std::sync::Arc;
use std::time::SystemTime;

use smtp_queue::{
    ListFilter, MessageId, RecipientState, RetryTarget, Store, Throttle, WorkerActivity,
};

use super::{queue_error, rfc3339};
use crate::cli::{ListArgs, PurgeArgs, QueueCommand, QueueRetryArgs};
use crate::fail::{EX_NOINPUT, EX_OK, Failure};
use crate::output::{ErrorReport, JSON_VERSION, counted};
use crate::terminal::joined;

/// Runs one of the subcommands other than `run` on `store`.
/// `fleet`: the store keeps its workers (PostgreSQL), for `stats`.
pub(super) async fn run(
    store: Arc<dyn Store>,
    command: QueueCommand,
    json: bool,
    fleet: bool,
) -> Result<u8, Failure> {
    match command {
        // Dispatched before the store is opened.
        QueueCommand::Run(_) | QueueCommand::Migrate => Ok(EX_OK),
        QueueCommand::List(filter) => list(store.as_ref(), &filter, json).await,
        QueueCommand::Show { id } => {
            let id = parse_id(&id)?;
            let m = store.show(&id).await.map_err(queue_error)?;
            print_message(&m, json);
            Ok(EX_OK)
        }
        QueueCommand::Retry(args) => retry(store.as_ref(), &args, json).await,
        QueueCommand::Delete { ids } => delete(store.as_ref(), &ids, json).await,
        QueueCommand::Purge(args) => purge(store.as_ref(), &args, json).await,
        QueueCommand::TlsReport(args) => super::tls_report::run(store.as_ref(), &args).await,
        QueueCommand::Stats => {
            let stats = store.stats().await.map_err(queue_error)?;
            let routes = store
                .waiting_by_route(SystemTime::now())
                .await
                .map_err(queue_error)?;
            let budgets = budgets(store.as_ref()).await?;
            let throttles = store.throttles(None).await.map_err(queue_error)?;
            let now = SystemTime::now();
            let workers = if fleet {
                store.workers(now).await.map_err(queue_error)?
            } else {
                Vec::new()
            };
            // Sessions open now, per destination, whichever runner holds them.
            let mut slots: std::collections::BTreeMap<String, Vec<String>> = Default::default();
            for slot in store.slots(None, now).await.map_err(queue_error)? {
                slots.entry(slot.destination).or_default().push(slot.worker);
            }
            if json {
                let states: serde_json::Map<String, serde_json::Value> = stats
                    .recipients
                    .iter()
                    .map(|(s, n)| (s.to_string(), (*n).into()))
                    .collect();
                let throttles: Vec<_> = throttles.iter().map(throttle_json).collect();
                say!(
                    "{}",
                    serde_json::json!({
                        "messages": stats.messages,
                        "recipients": states,
                        "budgets": budgets.iter().map(|b| serde_json::json!({
                            "key": b.key, "limits": b.limits, "next_free": b.next.map(rfc3339),
                            "caps": b.caps.iter().map(|(limit, used, _)| serde_json::json!({
                                "limit": limit, "used": used,
                            })).collect::<Vec<_>>(),
                        })).collect::<Vec<_>>(),
                        "throttles": throttles,
                        "sessions": slots.iter().map(|(d, holders)| serde_json::json!({
                            "destination": d, "open": holders.len(), "workers": holders,
                        })).collect::<Vec<_>>(),
                        "workers": fleet.then(|| workers.iter().map(worker_json).collect::<Vec<_>>()),
                        "routes": routes.iter().map(|w| serde_json::json!({
                            "route": w.route, "waiting_messages": w.messages,
                            "waiting_recipients": w.recipients, "due_messages": w.due,
                        })).collect::<Vec<_>>(),
                    })
                );
            } else {
                say!("messages: {}", stats.messages);
                for (s, n) in &stats.recipients {
                    say!("{s}: {n}");
                }
                for w in &routes {
                    say!(
                        "route {}: {} waiting, {} due now ({})",
                        w.route
                            .as_deref()
                            .map_or_else(|| "none".to_owned(), |r| joined(r).into_owned()),
                        counted(usize::try_from(w.messages).unwrap_or(usize::MAX), "message"),
                        w.due,
                        counted(
                            usize::try_from(w.recipients).unwrap_or(usize::MAX),
                            "recipient"
                        ),
                    );
                }
                for b in &budgets {
                    let next = b.next.map_or_else(|| "now".to_owned(), rfc3339);
                    let limits = if b.limits.is_empty() {
                        "none remembered"
                    } else {
                        &b.limits
                    };
                    // Each cap's use: "500/day: 37 used in the last day".
                    let caps: String = b
                        .caps
                        .iter()
                        .map(|(limit, used, period)| {
                            format!("; {limit}: {used} used in the last {period}")
                        })
                        .collect();
                    say!("budget {}: {limits}{caps}; next free slot: {next}", b.key);
                }
                print_throttles(&throttles);
                for (destination, holders) in &slots {
                    let mut by: Vec<&String> = holders.iter().collect();
                    by.sort_unstable();
                    by.dedup();
                    say!(
                        "sessions to {}: {} open (held by {})",
                        joined(destination),
                        holders.len(),
                        by.iter().map(|w| w.as_str()).collect::<Vec<_>>().join(", ")
                    );
                }
                // Every restart is a new worker: the ones long gone are
                // counted, not listed (`--json` lists them all).
                let (shown, gone): (Vec<_>, Vec<_>) = workers.iter().partition(|w| {
                    w.leases > 0
                        || now.duration_since(w.last_seen).unwrap_or_default() < WORKER_SHOWN_FOR
                });
                for w in shown {
                    say!("{}", worker_line(w, now));
                }
                if !gone.is_empty() {
                    say!(
                        "{} more worker(s) silent for over a day, holding nothing (--json lists them)",
                        gone.len()
                    );
                }
            }
            Ok(EX_OK)
        }
    }
}

/// How long `queue stats` lists a worker that holds nothing after its
/// last heartbeat.
const WORKER_SHOWN_FOR: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// A worker as `queue stats --json` shows it.
fn worker_json(w: &WorkerActivity) -> serde_json::Value {
    serde_json::json!({
        "worker": w.worker,
        "host": w.host,
        "pid": w.pid,
        "started": w.started.map(rfc3339),
        "last_heartbeat": rfc3339(w.last_seen),
        "leases": w.leases,
        "recipients": w.recipients,
    })
}

/// A worker as `queue stats` says it: `worker ID: host H, pid P, N
/// leases (M recipients), last heartbeat T (S s ago)`.
fn worker_line(w: &WorkerActivity, now: SystemTime) -> String {
    let ago = now
        .duration_since(w.last_seen)
        .unwrap_or_default()
        .as_secs();
    let host = w
        .host
        .as_deref()
        .map_or_else(String::new, |h| format!(", host {}", joined(h)));
    let pid = w.pid.map_or_else(String::new, |p| format!(", pid {p}"));
    format!(
        "worker {}{host}{pid}: {} ({}), last heartbeat {} ({ago}s ago)",
        joined(&w.worker),
        counted(usize::try_from(w.leases).unwrap_or(usize::MAX), "lease"),
        counted(
            usize::try_from(w.recipients).unwrap_or(usize::MAX),
            "recipient"
        ),
        rfc3339(w.last_seen),
    )
}

/// A budget as `queue stats` shows it.
struct BudgetLine {
    key: String,
    /// The remembered limits in words (empty: none).
    limits: String,
    /// The next free slot; `None` when that is now.
    next: Option<SystemTime>,
    /// Each cap (every limit but the shortest): in words, the units taken
    /// within its period, the period in words.
    caps: Vec<(String, u64, String)>,
}

/// Each budget kept: its key, its remembered limits in words, its next
/// free slot under them (or under every limit kept, when none is
/// remembered), and what its caps' windows hold.
async fn budgets(store: &dyn Store) -> Result<Vec<BudgetLine>, Failure> {
    let now = SystemTime::now();
    let now_ms = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    let mut out = Vec::new();
    for b in store.budgets().await.map_err(queue_error)? {
        let remembered = b.remembered();
        let under: Vec<_> = if remembered.is_empty() {
            b.limits.iter().map(|k| k.limit).collect()
        } else {
            remembered.clone()
        };
        let next = b.next_free_ms(&under, now_ms);
        let next = (next > now_ms).then(|| {
            SystemTime::UNIX_EPOCH
                + std::time::Duration::from_millis(u64::try_from(next).unwrap_or(0))
        });
        let caps = b
            .cap_usage(&under, now_ms)
            .into_iter()
            .map(|(l, used)| {
                (
                    l.rate.to_string(),
                    used,
                    smtp_queue::rate::period_words(l.rate.per),
                )
            })
            .collect();
        out.push(BudgetLine {
            key: b.key,
            limits: smtp_queue::rate::describe(&remembered),
            next,
            caps,
        });
    }
    Ok(out)
}

/// Destinations whose servers said "slow down", with the limits they
/// have now, why and since when (direct delivery's traffic shaping).
fn print_throttles(throttles: &[Throttle]) {
    if throttles.is_empty() {
        return;
    }
    say!("throttled destinations (limits lowered after a \"slow down\" reply):");
    for t in throttles {
        let rate = t
            .rate_per_min
            .map_or_else(String::new, |r| format!(", {r}/minute"));
        say!(
            "  {}: {} connection{}{rate} since {} (next step up {}): {}",
            t.destination,
            t.connections,
            if t.connections == 1 { "" } else { "s" },
            rfc3339(t.since),
            rfc3339(t.until),
            joined(&t.reason)
        );
    }
}

fn throttle_json(t: &Throttle) -> serde_json::Value {
    serde_json::json!({
        "destination": t.destination,
        "connections": t.connections,
        "rate_per_minute": t.rate_per_min,
        "reason": joined(&t.reason),
        "since": rfc3339(t.since),
        "last_cut": rfc3339(t.cut),
        "next_step": rfc3339(t.until),
    })
}

fn parse_id(id: &str) -> Result<MessageId, Failure> {
    MessageId::parse(id).map_err(|e| Failure::usage(e.to_string()))
}

async fn list(store: &dyn Store, filter: &ListArgs, json: bool) -> Result<u8, Failure> {
    let state = filter
        .state
        .as_deref()
        .map(str::parse::<RecipientState>)
        .transpose()
        .map_err(|e| Failure::usage(format!("--state: {e}")))?;
    let query = ListFilter {
        state,
        ..ListFilter::default()
    };
    let list = store.list(&query).await.map_err(queue_error)?;
    let now = SystemTime::now();
    let list: Vec<_> = list.iter().filter(|m| matches(m, filter, now)).collect();
    if json {
        let v: Vec<_> = list.iter().map(|m| message_json(m)).collect();
        say!("{}", serde_json::json!({ "messages": v }));
    } else {
        for m in &list {
            print_message(m, false);
        }
        // As mailq ends: how much, and how much of it still waits.
        let recipients: usize = list.iter().map(|m| m.recipients.len()).sum();
        // Leased ones are being delivered, not waiting.
        let (mut waiting, mut leased) = (0, 0);
        for r in list.iter().flat_map(|m| &m.recipients) {
            match r.state {
                RecipientState::Delivering => leased += 1,
                s if !s.is_final() => waiting += 1,
                _ => {}
            }
        }
        let delivering = if leased > 0 {
            format!(", {leased} being delivered")
        } else {
            String::new()
        };
        let octets: u64 = list.iter().map(|m| m.body_size).sum();
        say!(
            "-- {}, {} ({waiting} waiting{delivering}), {} KiB",
            counted(list.len(), "message"),
            counted(recipients, "recipient"),
            octets.div_ceil(1024)
        );
    }
    Ok(EX_OK)
}

/// `queue delete ID...`: each message removed (`deleted ID`), or told not
/// to be there (on stderr; exit 66) while the others are removed all the
/// same. An id that is not one is a usage error before anything is
/// removed; a store error stops there, after what was removed.
async fn delete(store: &dyn Store, ids: &[String], json: bool) -> Result<u8, Failure> {
    let mut wanted: Vec<MessageId> = Vec::with_capacity(ids.len());
    for id in ids {
        let id = parse_id(id)?;
        if !wanted.contains(&id) {
            wanted.push(id);
        }
    }
    let (mut deleted, mut missing) = (Vec::new(), Vec::new());
    let mut trouble = None;
    for id in wanted {
        match store.delete(&id, SystemTime::now()).await {
            Ok(()) => {
                if !json {
                    say!("deleted {id}");
                }
                deleted.push(id);
            }
            Err(smtp_queue::Error::NotFound(_)) => {
                if !json {
                    crate::terminal::error_line(&format!("smtp: no message {id} in the queue"));
                }
                missing.push(id);
            }
            Err(e) => {
                trouble = Some(queue_error(e));
                break;
            }
        }
    }
    // What the exit code stands for: the store's error, else the ids not found.
    let error = trouble.or_else(|| (!missing.is_empty()).then(|| not_found(&missing)));
    if json {
        // One object whatever happened: what was removed, what was not
        // there, and the error as every `--json` error is given.
        let ids = |v: &[MessageId]| v.iter().map(|i| i.as_str().to_owned()).collect::<Vec<_>>();
        let mut v = serde_json::json!({ "deleted": ids(&deleted), "not_found": ids(&missing) });
        if let Some(f) = &error {
            v["version"] = JSON_VERSION.into();
            v["error"] = serde_json::json!(ErrorReport::of_failure(f));
        }
        say!("{v}");
    }
    match error {
        None => Ok(EX_OK),
        // Told id by id as each was met (or in the object).
        Some(f) if f.kind == "not-found" => Ok(f.code),
        Some(f) if json => {
            crate::terminal::error_line(&format!("smtp: {f}"));
            Ok(f.code)
        }
        Some(f) => Err(f),
    }
}

/// The error of `delete`'s ids not in the queue (66, `not-found`).
fn not_found(ids: &[MessageId]) -> Failure {
    let message = match ids {
        [id] => format!("no message {id} in the queue"),
        ids => {
            let list: Vec<&str> = ids.iter().map(MessageId::as_str).collect();
            format!("no messages {} in the queue", list.join(", "))
        }
    };
    Failure::new(EX_NOINPUT, message).kind("not-found")
}

/// `queue purge [--older-than AGE]`: removes the messages every recipient
/// of which is final (delivered, failed, expired) and was last changed
/// longer than AGE ago (default 0: every finished message), except those
/// whose notification is owed and not yet enqueued.
async fn purge(store: &dyn Store, args: &PurgeArgs, json: bool) -> Result<u8, Failure> {
    let now = SystemTime::now();
    let age = args.older_than.unwrap_or_default();
    let before = now.checked_sub(age).unwrap_or(SystemTime::UNIX_EPOCH);
    let purged = store.purge_finished(before).await.map_err(queue_error)?;
    if json {
        let ids: Vec<&str> = purged.iter().map(MessageId::as_str).collect();
        say!(
            "{}",
            serde_json::json!({ "purged": purged.len(), "ids": ids })
        );
    } else {
        say!("purged {}", counted(purged.len(), "finished message"));
    }
    Ok(EX_OK)
}

/// `queue retry ID|--all`: the recipients due now, and the back-offs that
/// would still hold them cleared. `--all` clears every destination's (the
/// store does, with the retry). The store cannot list the destinations
/// backed off, so with an id only the relay named by `--server` or
/// `--account` is cleared; without one, a note says what else may hold.
async fn retry(store: &dyn Store, args: &QueueRetryArgs, json: bool) -> Result<u8, Failure> {
    let (target, relay) = match (&args.id, args.all) {
        (Some(id), _) => (RetryTarget::Message(parse_id(id)?), relay_key(args)?),
        (None, true) => (RetryTarget::All, None),
        (None, false) => return Err(Failure::usage("give a message id or --all")),
    };
    let all = target == RetryTarget::All;
    let n = store
        .retry(target, SystemTime::now())
        .await
        .map_err(queue_error)?;
    let mut cleared: Option<String> = all.then(|| "all".to_owned());
    let mut relay_note = None;
    if let Some(key) = relay {
        let had = store.backoff(&key).await.map_err(queue_error)?.is_some();
        store.clear_backoff(&key).await.map_err(queue_error)?;
        if had {
            cleared = Some(key);
        } else {
            relay_note = Some(key);
        }
    }
    let due = format!("{} due now", counted(n as usize, "recipient"));
    if json {
        say!(
            "{}",
            serde_json::json!({ "retried": n, "backoff_cleared": cleared })
        );
    } else {
        match (&cleared, &relay_note) {
            (Some(a), _) if a == "all" => {
                say!("{due}; every destination's back-off cleared");
            }
            (Some(key), _) => say!("{due}; the back-off of {key} cleared"),
            (None, Some(key)) => say!("{due} ({key} was not backed off)"),
            (None, None) => say!("{due}"),
        }
    }
    // Leased recipients are a run's (or a killed run's) until the lease
    // ends: retry cannot make them due, and says so.
    let leased = match &args.id {
        Some(id) => store
            .show(&parse_id(id)?)
            .await
            .map_err(queue_error)?
            .recipients
            .iter()
            .filter(|r| r.state == RecipientState::Delivering)
            .count() as u64,
        None => store
            .stats()
            .await
            .map_err(queue_error)?
            .count(RecipientState::Delivering),
    };
    if leased > 0 {
        tell!(
            "smtp: note: {} leased by a run (state delivering) and not made due: a run \
             under way delivers them, or, if it was killed, the next run takes them over when \
             the lease ends (`smtp queue show ID` says until when)",
            if leased == 1 {
                "1 recipient is".to_owned()
            } else {
                format!("{leased} recipients are")
            }
        );
    }
    if !all && args.server.is_none() && args.account.is_none() && n > 0 {
        tell!(
            "smtp: note: a destination's back-off (or hold) may still keep them waiting until it \
             ends: `smtp queue retry --all` clears every back-off; `--server HOST[:PORT]` with \
             the id clears that relay's"
        );
    }
    Ok(EX_OK)
}

/// The back-off key of the relay `--server`/`--port`/`--account` name, as
/// `queue run` with the same flags keys it (`relay:HOST:PORT`, the port
/// defaulting to the account's, then 587); `None` when none is named.
fn relay_key(args: &QueueRetryArgs) -> Result<Option<String>, Failure> {
    let account = match &args.account {
        Some(name) => crate::config::load(args.config.as_deref(), Some(name))?,
        None => None,
    };
    let Some(server) = args
        .server
        .as_ref()
        .or_else(|| account.as_ref().and_then(|a| a.server.as_ref()))
    else {
        if let Some(name) = &args.account {
            return Err(Failure::config(format!(
                "account {name:?} names no server: give --server HOST[:PORT]"
            )));
        }
        if args.port.is_some() {
            return Err(Failure::usage("--port goes with --server"));
        }
        return Ok(None);
    };
    let (host, in_server) = crate::settings::split_server(server)?;
    if let (Some(a), Some(b)) = (in_server, args.port)
        && a != b
    {
        return Err(Failure::usage(format!(
            "--server {server} and --port {b} name two ports; give one"
        )));
    }
    let port = in_server
        .or(args.port)
        .or(account.and_then(|a| a.port))
        .unwrap_or(587);
    Ok(Some(format!("relay:{host}:{port}")))
}

/// Whether `m` passes `list`'s filters.
fn matches(m: &smtp_queue::MessageInfo, f: &ListArgs, now: SystemTime) -> bool {
    let domain_ok = f.domain.as_deref().is_none_or(|d| {
        let d = d.trim_start_matches('@');
        m.recipients.iter().any(|r| {
            r.address
                .rsplit_once('@')
                .is_some_and(|(_, x)| x.trim_end_matches('>').eq_ignore_ascii_case(d))
        })
    });
    let age_ok = f
        .older_than
        .is_none_or(|age| now.duration_since(m.created).is_ok_and(|a| a > age));
    domain_ok && age_ok
}

fn millis(t: SystemTime) -> u128 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

/// A message's route in words: enqueued before routes were kept, a
/// message has none, and any run delivers it.
fn route_text(route: Option<&str>) -> String {
    route.map_or_else(
        || "none (enqueued before routes were kept: any run delivers it)".to_owned(),
        |r| joined(r).into_owned(),
    )
}

/// A message as `queue show --json` prints it, and each of `queue list --json`'s.
fn message_json(m: &smtp_queue::MessageInfo) -> serde_json::Value {
    let recipients: Vec<_> = m
        .recipients
        .iter()
        .map(|r| {
            serde_json::json!({
                "id": r.id.0, "address": r.address, "state": r.state.to_string(),
                "attempts": r.attempts, "next_attempt_ms": millis(r.next_attempt),
                "next_attempt": rfc3339(r.next_attempt),
                "last": r.last,
            })
        })
        .collect();
    // The reverse-path as stored, `<a@example.com>`; the address alone
    // (empty for the null sender), as `send --json` names addresses.
    let from = m.from.trim_start_matches('<').trim_end_matches('>');
    serde_json::json!({ "id": m.id.as_str(), "from": from, "created_ms": millis(m.created),
        "created": rfc3339(m.created), "size": m.body_size, "recipients": recipients,
        "notify_sender": m.options.notify_sender,
        "notification": m.notification.as_ref().map(MessageId::as_str),
        "route": m.options.route })
}

fn print_message(m: &smtp_queue::MessageInfo, json: bool) {
    if json {
        say!("{}", message_json(m));
        return;
    }
    // As mailq: id, size, arrival, sender (stored with its brackets).
    say!("{} {} {} {}", m.id, m.body_size, rfc3339(m.created), m.from);
    say!("  route: {}", route_text(m.options.route.as_deref()));
    for r in &m.recipients {
        let last = r.last.as_ref().map_or(String::new(), |a| {
            let text = joined(&a.text);
            match a.code {
                Some(code) => format!(" {code} {text}"),
                None => format!(" {text}"),
            }
        });
        let lease = match (&r.state, &r.lease) {
            (RecipientState::Delivering, Some(l)) => format!(" leased-until={}", rfc3339(l.until)),
            (RecipientState::Queued | RecipientState::Deferred, _) => {
                format!(" next={}", rfc3339(r.next_attempt))
            }
            _ => String::new(),
        };
        say!(
            "  {} {} attempts={}{lease}{last}",
            r.address,
            r.state,
            r.attempts
        );
    }
    match (&m.notification, m.options.notify_sender) {
        (Some(id), _) => say!("  notification: {id}"),
        (None, true) => say!("  notification: asked, none sent"),
        (None, false) => {}
    }
}
