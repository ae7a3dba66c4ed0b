//! `smtp queue …`: the queue's commands, above all `queue run` (what is
//! due, or `--watch` as a service, with its log and metrics).

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use smtp_core::ehlo::ClientId;
use smtp_queue::{Backoff, ListFilter, RecipientState, RunEvent, Stop, Store};

use super::place::exists;
use super::recorded::{self, Left, Recorded};
use super::{
    Place, Via, admin, config, lock, metrics, queue_error, report, rfc3339, scrape,
    tell_other_routes, warn,
};
use crate::cli::{QueueArgs, QueueCommand, QueueRunArgs, SendArgs};
use crate::fail::{EX_OK, Failure};
use crate::output::counted;
use crate::terminal::joined;

/// `smtp queue …`.
pub(crate) async fn run(mut args: QueueArgs) -> Result<u8, Failure> {
    // `--config` is global to `smtp queue`; the commands that read more
    // than its `queue` get it here.
    match &mut args.command {
        QueueCommand::Run(run) => run.config.clone_from(&args.config),
        QueueCommand::Retry(retry) => retry.config.clone_from(&args.config),
        _ => {}
    }
    if let QueueCommand::Run(run) = args.command {
        if run.watch && args.json {
            // A service's outcomes would pile up in memory until it stops.
            return Err(Failure::usage(
                "--json goes with a one-off `queue run`, not --watch: a service's record is its \
                 log (--log-format json prints one JSON object per outcome)",
            ));
        }
        crate::log::install(run.log_format, run.watch)?;
        let place = Place::resolve(args.queue.as_deref(), run.config.as_deref())?;
        let store = match &place {
            // A service may start before anything is queued: it creates
            // the queue, and says where.
            Place::Dir(dir) if run.watch => {
                if !exists(dir) {
                    tracing::info!(target: "smtp_cli::queue", queue = %place,
                        "no queue there yet: created an empty one");
                }
                place.open_for_work().await?
            }
            Place::Dir(_) => place.open_existing(args.queue.is_some()).await?,
            // A database with no schema yet gets one; an older one is
            // refused (`queue migrate`).
            Place::Postgres(_) => place.open_for_work().await?,
        };
        return run_queue(store, *run, args.json).await;
    }
    let place = Place::resolve(args.queue.as_deref(), args.config.as_deref())?;
    if let QueueCommand::Migrate = args.command {
        return migrate(&place, args.json).await;
    }
    let store = place.open_existing(args.queue.is_some()).await?;
    admin::run(store, args.command, args.json, place.is_postgres()).await
}

/// `smtp queue migrate`: creates or upgrades the queue's schema and says
/// what it did.
async fn migrate(place: &Place, json: bool) -> Result<u8, Failure> {
    let m = place.migrate().await?;
    if json {
        say!(
            "{}",
            serde_json::json!({
                "queue": place.to_string(),
                "from": m.from,
                "to": m.to,
                "changed": m.changed(),
            })
        );
    } else {
        match m.from {
            None => say!("queue {place}: created the schema, version {}", m.to),
            Some(from) if from != m.to => {
                say!(
                    "queue {place}: upgraded the schema from version {from} to {}",
                    m.to
                );
            }
            Some(_) => say!("queue {place}: the schema is current (version {})", m.to),
        }
    }
    Ok(EX_OK)
}

async fn run_queue(store: Arc<dyn Store>, args: QueueRunArgs, json: bool) -> Result<u8, Failure> {
    let config_file = args.config.clone();
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
        mta_sts: args.mta_sts,
        connect_timeout: args.connect_timeout,
        command_timeout: args.command_timeout,
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
            args.mta_sts,
        )?)),
    };
    let mut config = config(
        &args.retry,
        matches!(via, Via::Direct(_)),
        config_file.as_deref(),
    )?;
    let rate = crate::rate::resolve(&args.retry.rate, (&s.rate.0, s.rate.1))?;
    config = crate::rate::apply(store.as_ref(), &via, &rate, config).await?;
    if let Some(secs) = args.lease {
        config = config.with_lease(Duration::from_secs(secs.max(1)));
    }
    if let Some(n) = args.claim {
        config = config.with_claim(n);
    }
    let metrics = match args.metrics {
        Some(addr) => Some(serve_metrics(addr, store.clone()).await?),
        None => None,
    };
    // With the log on, its delivery lines (and its warnings and errors)
    // tell what happened; without it, a line per outcome on stdout (with
    // --json, the object at the end instead, and the warnings on stderr).
    let logging = crate::log::is_on();
    // What a one-off run recorded, for its exit code and --json (a
    // watcher's would only grow).
    let recorded = Arc::new(Mutex::new(Recorded::default()));
    let keep = (!args.watch).then(|| recorded.clone());
    let observer = move |event: &RunEvent| {
        if let Some(recorded) = &keep {
            lock(recorded).event(event);
        }
        match (logging, json) {
            (true, _) => {}
            (false, true) => warn(event),
            (false, false) => report(event),
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
    let route = runner.route();
    if args.watch {
        tracing::info!(target: "smtp_cli::queue", destination = runner.destination(),
            route = %route, "watching the queue");
        // Said once, at the start: a service runs on.
        tell_other_routes(store.as_ref(), &route, logging).await?;
    }
    let summary = if args.watch {
        watch_through_outages(&runner, store.as_ref(), &stop).await
    } else {
        runner.run_due(&stop).await
    }
    .map_err(queue_error)?;
    let stats = store.stats().await.map_err(queue_error)?;
    // What waits for this run's route (and route-less messages, which any
    // run takes): others' are said apart, and do not make this run's
    // exit code.
    let waiting: u64 = store
        .waiting_by_route(SystemTime::now())
        .await
        .map_err(queue_error)?
        .iter()
        .filter(|w| w.route.as_deref().is_none_or(|r| r == route))
        .map(|w| w.recipients)
        .sum();
    let leased = stats.count(RecipientState::Delivering);
    // A watcher stopped on request has done its job, whatever waits.
    let stopped = args.watch && stop.is_stopped();
    if stopped {
        tracing::info!(target: "smtp_cli::queue", waiting, leased, "stopped");
    }
    let (outcomes, counts) = std::mem::take(&mut *lock(&recorded)).into_report();
    if !args.watch {
        tell_other_routes(store.as_ref(), &route, logging).await?;
    }
    let wait = !summary.held.is_empty() || waiting > 0 || leased > 0;
    let next = if wait {
        tell_why_waiting(
            store.as_ref(),
            &route,
            relay.as_deref(),
            &summary.held,
            waiting,
            leased,
            logging,
        )
        .await?
    } else {
        None
    };
    if json {
        let left = Left {
            held: &summary.held,
            waiting,
            leased,
            next,
        };
        let v = recorded::json(&outcomes, &counts, &left);
        say!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    }
    Ok(if stopped {
        EX_OK
    } else {
        recorded::exit_code(&outcomes, wait)
    })
}

/// `queue run --watch`: a failure of the queue's database (a server
/// restarting, a connection cut) does not end the service. The database
/// is asked again every few seconds (each try waits for a connection as
/// every operation does, 30 s at most); the outage is said when it
/// begins, again every minute while it lasts, and when it ends. Then what
/// the failed round held is released, due at once (a message whose reply
/// had come but was not recorded is delivered twice: at most one per
/// session that was under way), and the watch resumes.
async fn watch_through_outages(
    runner: &smtp_queue::Runner,
    store: &dyn Store,
    stop: &Stop,
) -> Result<smtp_queue::Summary, smtp_queue::Error> {
    const PAUSE: Duration = Duration::from_secs(2);
    const REMIND: Duration = Duration::from_secs(60);
    loop {
        let e = match runner.watch(stop).await {
            Err(e @ smtp_queue::Error::Database { .. }) if !stop.is_stopped() => e,
            done => return done,
        };
        tracing::warn!(target: "smtp_cli::queue", error = %e,
            "the queue's database failed; what the round under way held waits until it \
             answers again; trying it every {} s", PAUSE.as_secs());
        let since = std::time::Instant::now();
        let mut said = since;
        let mut tries = 1u64;
        loop {
            tokio::select! {
                () = stop.stopped() => break,
                () = tokio::time::sleep(PAUSE) => {}
            }
            // What the failed round held goes back now, not when its
            // leases run out: nothing of this worker is under way.
            let answer = match store.next_due().await {
                Ok(_) => runner.release_unsettled().await,
                Err(e) => Err(e),
            };
            match answer {
                Ok(released) => {
                    // At the failure's level: a log filtered to warnings
                    // says when the outage ended too.
                    tracing::warn!(target: "smtp_cli::queue",
                        since_warning_s = since.elapsed().as_secs(), failed_tries = tries,
                        released,
                        "the queue's database answers again; what this worker held is due \
                         again at once (a message whose reply came but was not recorded goes \
                         twice); resuming");
                    break;
                }
                Err(e @ smtp_queue::Error::Database { .. }) => {
                    tries += 1;
                    if said.elapsed() >= REMIND {
                        said = std::time::Instant::now();
                        tracing::warn!(target: "smtp_cli::queue", error = %e,
                            since_warning_s = since.elapsed().as_secs(), failed_tries = tries,
                            "the queue's database still fails; nothing is claimed meanwhile");
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// Says why recipients still wait, on stderr (or in the log, with the log
/// on), so that a run that delivers nothing is never silent about it:
/// leased by another run, the relay backed off or held, when the next is
/// due. Returns that time (not before the relay's back-off ends).
async fn tell_why_waiting(
    store: &dyn Store,
    route: &str,
    relay: Option<&str>,
    held: &[(String, String)],
    waiting: u64,
    leased: u64,
    logging: bool,
) -> Result<Option<SystemTime>, Failure> {
    let now = SystemTime::now();
    if leased > 0 {
        tell_leased(store, leased, now, logging).await?;
    }
    let backoff = match relay {
        Some(destination) => store
            .backoff(destination)
            .await
            .map_err(queue_error)?
            .filter(|b| b.not_before > now),
        None => None,
    };
    if let Some(b) = backoff.as_ref().filter(|_| waiting > 0) {
        let held = held.iter().any(|(d, _)| *d == b.destination);
        tell_backoff(b, held, now, logging);
    }
    if waiting == 0 {
        return Ok(None);
    }
    let Some(next) = store.next_due_for(Some(route)).await.map_err(queue_error)? else {
        return Ok(None);
    };
    // Not before the relay's back-off ends.
    let next = backoff.as_ref().map_or(next, |b| b.not_before.max(next));
    let secs = in_secs(next, now);
    if logging {
        tracing::info!(target: "smtp_cli::queue", waiting, next_attempt_in_s = secs,
            "recipients wait (`smtp queue retry --all` makes them due now)");
    } else {
        tell!(
            "smtp: {} {}; next attempt in {secs}s (`smtp queue retry --all` makes them due now)",
            counted(usize::try_from(waiting).unwrap_or(usize::MAX), "recipient"),
            if waiting == 1 { "waits" } else { "wait" }
        );
    }
    Ok(Some(next))
}

/// Whole seconds from `now` to `t` (0 when past).
fn in_secs(t: SystemTime, now: SystemTime) -> u64 {
    t.duration_since(now).unwrap_or_default().as_secs()
}

/// Says that `leased` recipients are under another run's lease (state
/// `delivering`): one under way, or one killed before it could release
/// them, whose leases must run out before they are claimed again.
async fn tell_leased(
    store: &dyn Store,
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
    store: Arc<dyn Store>,
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
