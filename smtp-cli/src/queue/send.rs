//! `smtp send --queue`: enqueue the prepared messages (a part at a time),
//! then deliver them until every recipient is final or only later retries
//! remain; `--queue-only` enqueues and stops there.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use smtp_core::Envelope;
use smtp_core::data::BodyType;
use smtp_queue::{
    Body, BodyKind, Enqueued, MessageId, MessageOptions, NewMessage, RunEvent, Stop, Store,
};

use super::report::{Live, Pending, report_from_store};
use super::{
    EXIT_SIGINT, Place, Registered, SIGNALLED, Via, config, lock, queue_error, rfc3339,
    tell_other_routes,
};
use crate::cli::RetryArgs;
use crate::fail::{EX_OK, EX_TEMPFAIL, Failure};
use crate::message::{Prepared, PreparedBody};
use crate::output::{ErrorReport, JSON_VERSION, Sent, counted};
use crate::progress::{self, Mode};

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
    /// `--queue` as given: a directory or a PostgreSQL URL (empty: the
    /// config file's `queue`, else the default directory).
    pub(crate) dir: &'a Path,
    /// The retry schedule and how long to linger.
    pub(crate) retry: &'a RetryArgs,
    /// `--notify-sender`.
    pub(crate) notify_sender: bool,
    /// `--config`: the file of accounts and direct delivery's shaping.
    pub(crate) config: Option<&'a Path>,
    /// The `smtp queue run …` command that delivers what stays queued
    /// ([`run_command`](super::run_command)).
    pub(crate) run_line: String,
    /// The rate limits (`--rate`, the account's, or those remembered).
    pub(crate) rate: crate::rate::Choice,
    /// The rate budget key of the relay account (`None`: direct
    /// delivery): `--queue-only` remembers the limits under it, for the
    /// `queue run` that delivers.
    pub(crate) relay_key: Option<String>,
    /// The route the messages are enqueued with (`crate::send::queue_route`):
    /// only a runner of that route delivers them.
    pub(crate) route: String,
}

/// `--queue-only`: remembers the rate limits given (or clears them) for
/// the relay account, as a `queue run` with them would, so that a plain
/// `queue run` applies them; nothing when none are given.
async fn remember_for_later(store: &dyn Store, queued: &Queued<'_>) -> Result<(), Failure> {
    if queued.rate == crate::rate::Choice::Unsaid {
        return Ok(());
    }
    match &queued.relay_key {
        Some(key) => crate::rate::remember(store, key, &queued.rate)
            .await
            .map(drop),
        None => crate::rate::needs_relay(&queued.rate, false),
    }
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
            options: options(e, queued.notify_sender, &queued.route),
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
    store: &dyn Store,
    batch: Vec<NewMessage>,
    names: &[&str],
    now: SystemTime,
) -> Result<Vec<MessageId>, Failure> {
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

impl Queued<'_> {
    /// Where the queue is.
    fn place(&self) -> Result<Place, Failure> {
        Place::resolve(Some(self.dir), self.config)
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
    let place = queued.place()?;
    let store = place.open_for_work().await?;
    remember_for_later(store.as_ref(), queued).await?;
    let now = SystemTime::now();
    let names: Vec<&str> = prepared.iter().map(|m| m.name.as_str()).collect();
    let ids = enqueue_parts(
        store.as_ref(),
        batch(queued, prepared, envelopes),
        &names,
        now,
    )
    .await?;
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
            "queue": place.to_string(),
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
            place
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
    let store = queued.place()?.open_for_work().await?;
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
    let ids = enqueue_parts(store.as_ref(), batch, &names, SystemTime::now()).await?;
    deliver(queued, via, &store, &ids, &sent, mode, &stop).await
}

/// `smtp send --merge`: enqueues `batch` under `key` (all of it in one
/// transaction, or nothing), each recipient at most once under the key,
/// then delivers it as [`send`] does. Recipients enqueued under the key
/// before (a re-run after an interruption, or a list grown since) are
/// left out, and said so; when none is left, it delivers what is due in
/// the queue, as `smtp queue run`. `sent` names each message of `batch`
/// and its recipients. Returns the ids enqueued now.
pub(crate) async fn send_once(
    queued: &Queued<'_>,
    via: Option<Via>,
    key: &str,
    batch: Vec<NewMessage>,
    sent: Vec<Sent>,
    mode: Mode,
) -> Result<(u8, Vec<MessageId>, Arc<dyn Store>), Failure> {
    let store = queued.place()?.open_for_work().await?;
    if via.is_none() {
        remember_for_later(store.as_ref(), queued).await?;
    }
    let stop = Stop::new();
    let _registered = Registered::new(&stop);
    let Enqueued {
        ids,
        skipped,
        first,
    } = store
        .enqueue_once(key, batch, SystemTime::now())
        .await
        .map_err(queue_error)?;
    let mut left_out = Vec::new();
    let (ids, sent): (Vec<MessageId>, Vec<Sent>) = ids
        .into_iter()
        .zip(sent)
        .filter_map(|(id, s)| match id {
            Some(id) => Some((id, s)),
            None => {
                left_out.push(s.name);
                None
            }
        })
        .unzip();
    let skipped = usize::try_from(skipped).unwrap_or(usize::MAX);
    if let Some(at) = first {
        if ids.is_empty() {
            tell!(
                "smtp: this merge was already enqueued at {}: all {} skipped (each was enqueued \
                 then or since); nothing enqueued again; delivering what is due in the queue",
                rfc3339(at),
                counted(skipped, "recipient")
            );
        } else {
            tell!(
                "smtp: this merge was first enqueued at {}: {} skipped (enqueued then or since{}); \
                 {} enqueued now",
                rfc3339(at),
                counted(skipped, "recipient"),
                named(&left_out),
                counted(ids.len(), "new message")
            );
        }
    } else if skipped > 0 {
        tell!(
            "smtp: {} skipped: already in this merge{}",
            counted(skipped, "recipient"),
            named(&left_out)
        );
    }
    if ids.is_empty() {
        let Some(via) = via else {
            say!("deliver with: {}", queued.run_line);
            return Ok((EX_OK, Vec::new(), store));
        };
        let direct = matches!(via, Via::Direct(_));
        let config = crate::rate::apply(
            store.as_ref(),
            &via,
            &queued.rate,
            config(queued.retry, direct, queued.config)?,
        )
        .await?;
        let runner = via
            .runner(store.clone(), config)
            .with_observer(super::report);
        runner.run_due(&stop).await.map_err(queue_error)?;
        tell_other_routes(store.as_ref(), &runner.route(), crate::log::is_on()).await?;
        let code = if stop.is_stopped() {
            match SIGNALLED.load(Ordering::SeqCst) {
                0 => EXIT_SIGINT,
                code => code,
            }
        } else {
            EX_OK
        };
        return Ok((code, Vec::new(), store));
    }
    let Some(via) = via else {
        say!(
            "queued {} in {}; nothing delivered yet",
            counted(ids.len(), "message"),
            queued.dir.display()
        );
        say!("deliver with: {}", queued.run_line);
        return Ok((EX_OK, ids, store));
    };
    let code = deliver(queued, via, &store, &ids, &sent, mode, &stop).await?;
    Ok((code, ids, store))
}

/// `: NAME, NAME, …` for a few names (the messages left out), else nothing.
fn named(names: &[String]) -> String {
    const SHOWN: usize = 10;
    match names.len() {
        0 => String::new(),
        n if n <= SHOWN => format!(": {}", names.join(", ")),
        n => format!(": {}, … ({n} in all)", names[..SHOWN].join(", ")),
    }
}

/// Delivers the enqueued `ids` (named by `sent`) until every recipient is
/// final or only later retries remain, or `stop`; reports as `send` does.
async fn deliver(
    queued: &Queued<'_>,
    via: Via,
    store: &Arc<dyn Store>,
    ids: &[MessageId],
    sent: &[Sent],
    mode: Mode,
    stop: &Stop,
) -> Result<u8, Failure> {
    let (retry, stop) = (queued.retry, stop.clone());
    progress::begin(sent, mode);
    let live = Arc::new(Mutex::new(Live::new(ids, sent)));
    let observer = {
        let live = live.clone();
        move |e: &RunEvent| lock(&live).event(e)
    };
    let direct = matches!(via, Via::Direct(_));
    let config = config(retry, direct, queued.config)?;
    let config = crate::rate::apply(store.as_ref(), &via, &queued.rate, config).await?;
    let rated = match &config.rate {
        limits if limits.is_empty() => None,
        limits => {
            let units: u64 = sent.iter().map(|s| s.recipients.len() as u64).sum();
            let finish = crate::rate::expected_finish(store.as_ref(), &config, units).await?;
            finish.map(|t| (smtp_queue::rate::describe(limits), t))
        }
    };
    if let Some((limits, finish)) = &rated {
        let n = ids.len();
        let secs = finish
            .duration_since(SystemTime::now())
            .unwrap_or_default()
            .as_secs();
        progress::suspend(|| {
            tell!(
                "smtp: {n} message{} at {limits}: expected to finish around {} (in {})",
                if n == 1 { "" } else { "s" },
                rfc3339(*finish),
                crate::rate::span(secs)
            );
        });
    }
    let runner = via.runner(store.clone(), config).with_observer(observer);
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
    let in_flight = lock(&live).take_in_flight();
    let sts_modes = lock(&live).take_sts_modes();
    let pending = |id: &MessageId, address: &str| {
        if interrupted {
            in_flight.pending(id, address)
        } else {
            Pending::NotAttempted
        }
    };
    let mut report = report_from_store(store.as_ref(), ids, sent, &pending).await?;
    // The store keeps no MTA-STS mode: the run's events told it.
    if !sts_modes.is_empty() {
        for (id, m) in ids.iter().zip(report.messages.iter_mut()) {
            for r in &mut m.recipients {
                r.mta_sts = sts_modes.get(&(id.clone(), r.address.clone())).cloned();
            }
        }
    }
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
    // Only this run's messages are reported; others its runner may not
    // take are said to wait, once.
    tell_other_routes(store.as_ref(), &runner.route(), crate::log::is_on()).await?;
    let summary = report.summary();
    let resume = &queued.run_line;
    match ended {
        Ended::Interrupted => {
            let twice = match in_flight.len() {
                0 => String::new(),
                1 => "; 1 of them was in flight, its data sent and no reply seen: it may be \
                      delivered twice"
                    .to_owned(),
                n => format!(
                    "; {n} of them were in flight, their data sent and no reply seen: they may \
                     be delivered twice"
                ),
            };
            tell!(
                "smtp: interrupted: {} delivered, {} failed, {} still queued ({resume} delivers them{twice})",
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
            if rated.is_some() {
                tell!(
                    "smtp: they wait for the rate budget: `smtp queue run --watch` (or the queue \
                     service) sends the rest as it allows"
                );
            }
            Ok(report.exit_code())
        }
        Ended::Final => Ok(report.exit_code()),
    }
}

pub(crate) fn options(e: &Envelope, notify_sender: bool, route: &str) -> MessageOptions {
    let mut o = MessageOptions::default();
    o.notify_sender = notify_sender;
    o.route = Some(route.to_owned());
    o.body = match e.body {
        BodyType::SevenBit => BodyKind::SevenBit,
        BodyType::EightBitMime => BodyKind::EightBit,
        BodyType::BinaryMime => BodyKind::Binary,
    };
    o.require_tls = e.require_tls;
    o
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
        let store = smtp_queue::SqliteStore::open(dir.path()).await.unwrap();
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
        let store = smtp_queue::SqliteStore::open(dir.path()).await.unwrap();
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
}
