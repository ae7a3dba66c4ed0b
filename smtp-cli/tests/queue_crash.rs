//! Issue #14's crash test: `smtp queue run --watch` is SIGKILLed at random
//! moments, again and again, while it delivers 1,000 one-recipient
//! messages to smtp-testkit's flaky server on 127.0.0.1, and restarted each
//! time. At the end every recipient is delivered exactly as the queue says,
//! nothing is lost or failed, and the duplicates the kills caused stay
//! within what at-least-once delivery allows (see [`duplicate_bound`]).
//!
//! The kill points come from a seeded generator; the seed is printed, and
//! `SMTP_CRASH_SEED=N` replays a run's schedule (the timing of the
//! processes themselves is not reproducible).

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use smtp_core::delivery::MemoryBody;
use smtp_queue::{Body, MessageOptions, NewMessage, RunnerConfig, SqliteStore, Store};
use smtp_testkit::flaky::{FlakyConfig, FlakyServer};

const MESSAGES: usize = 1_000;
const KILLS: usize = 20;
/// The runner's lease (`--lease`, seconds): a killed runner's recipients
/// are taken over this long after its last claim or renewal.
const LEASE: &str = "1";
/// The server waits this long before keeping each message and answering
/// its end of data, so that kills land mid-session and the whole run
/// outlasts the kills (an unkilled run takes some 5 s in debug).
const DATA_DELAY: Duration = Duration::from_millis(12);
/// The final, unkilled run must finish within this.
const DEADLINE: Duration = Duration::from_secs(120);

/// xorshift64*: the kill schedule, reproducible from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.next() % (high - low + 1)
    }
}

fn seed() -> u64 {
    std::env::var("SMTP_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        })
        .max(1)
}

fn rcpt(i: usize) -> String {
    format!("r{i:04}@example.net")
}

/// At most this many messages can be delivered but not yet recorded when
/// a runner dies. A runner works one round at a time: it claims at most
/// `claim` messages, sends them in sessions of at most `per_connection`,
/// `concurrency` sessions at once, and records a session's outcomes when
/// the session ends; the next round is claimed only after every session
/// of this one has recorded. So a kill can lose the records of at most one
/// round: `min(claim, concurrency × per_connection)` messages (one
/// recipient each here), each of which is then delivered again.
fn duplicate_bound() -> usize {
    let c = RunnerConfig::default();
    (c.claim as usize).min(c.concurrency * c.per_connection)
}

fn stats(queue: &str) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_smtp"))
        .args(["queue", "stats", "--queue", queue, "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "queue stats: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn count(stats: &serde_json::Value, state: &str) -> u64 {
    stats["recipients"][state].as_u64().unwrap_or(0)
}

/// Recipients not final: queued, deferred or under a lease.
fn pending(stats: &serde_json::Value) -> u64 {
    count(stats, "queued") + count(stats, "deferred") + count(stats, "delivering")
}

fn runner(queue: &str, server: &str, log: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Command::new(env!("CARGO_BIN_EXE_smtp"))
        .args([
            "queue",
            "run",
            "--queue",
            queue,
            "--server",
            server,
            "--tls",
            "none",
            "--watch",
            "--lease",
            LEASE,
            "--retry-first",
            "1",
            "--retry-max",
            "1",
        ])
        .env_remove("SMTP_PASSWORD")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

fn enqueue(rt: &tokio::runtime::Runtime, dir: &Path) {
    rt.block_on(async {
        let store = SqliteStore::open(dir).await.unwrap();
        let batch = (0..MESSAGES)
            .map(|i| NewMessage {
                from: "a@example.com".into(),
                to: vec![rcpt(i)],
                body: Body::Source(Box::new(MemoryBody::new(format!(
                    "Subject: crash {i:04}\r\nX-For: {}\r\n\r\nMessage {i:04}.\r\n",
                    rcpt(i)
                )))),
                options: MessageOptions::default(),
            })
            .collect();
        let ids = store.enqueue(batch, SystemTime::now()).await.unwrap();
        assert_eq!(ids.len(), MESSAGES);
        store.close().await;
    });
}

#[test]
fn sigkilled_runner_loses_nothing_and_duplicates_stay_bounded() {
    let started = Instant::now();
    let seed = seed();
    println!("crash test seed: {seed} (SMTP_CRASH_SEED={seed} replays the kill schedule)");
    let mut rng = Rng(seed);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let server = rt
        .block_on(FlakyServer::start(FlakyConfig {
            data_delay: Some(DATA_DELAY),
            ..FlakyConfig::default()
        }))
        .unwrap();
    let addr = server.addr().to_string();
    let dir = tempfile::tempdir().unwrap();
    let queue_dir = dir.path().join("queue");
    let queue = queue_dir.to_str().unwrap();
    let log = dir.path().join("runner.log");
    enqueue(&rt, &queue_dir);
    println!("enqueued {MESSAGES} messages in {:?}", started.elapsed());

    // Kill at random moments, restarting each time.
    let mut kills = 0usize;
    let mut pending_at_kill = Vec::new();
    for _ in 0..KILLS {
        let mut child = runner(queue, &addr, &log);
        let wait = rng.between(50, 400);
        std::thread::sleep(Duration::from_millis(wait));
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "the runner exited by itself ({status}) before its kill:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;
        let s = stats(queue);
        pending_at_kill.push(pending(&s));
        println!(
            "kill {kills} after {wait} ms: delivered {}, delivering {}, queued {}, deferred {}; server has {} messages",
            count(&s, "delivered"),
            count(&s, "delivering"),
            count(&s, "queued"),
            count(&s, "deferred"),
            server.messages().len()
        );
    }
    let killed_mid_run = pending_at_kill.iter().filter(|n| **n > 0).count();

    // The last run, not killed: until nothing waits, within the deadline.
    let mut child = runner(queue, &addr, &log);
    let deadline = Instant::now() + DEADLINE;
    let last = loop {
        let s = stats(queue);
        if pending(&s) == 0 {
            break s;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "the last runner exited ({status}) with {s} left:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!(
                "not all delivered within {DEADLINE:?}: {s}\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    // SIGTERM: a clean stop.
    let pid = child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let status = child.wait().unwrap();

    // Every recipient arrived, at least once, with its own body.
    let messages = server.messages();
    let mut counts: HashMap<String, usize> = HashMap::new();
    for m in &messages {
        assert_eq!(m.rcpt_to.len(), 1, "{m:?}");
        let to = &m.rcpt_to[0];
        let data = String::from_utf8_lossy(&m.data);
        assert!(
            data.contains(&format!("X-For: {to}\r\n")),
            "{to} got another's body: {data}"
        );
        *counts.entry(to.clone()).or_insert(0) += 1;
    }
    let missing: Vec<String> = (0..MESSAGES)
        .map(rcpt)
        .filter(|r| !counts.contains_key(r))
        .collect();
    assert!(missing.is_empty(), "never delivered: {missing:?}");
    assert_eq!(counts.len(), MESSAGES, "unknown recipients: {counts:?}");

    // The queue agrees: all delivered, none failed or expired.
    assert_eq!(count(&last, "delivered"), MESSAGES as u64, "{last}");
    assert_eq!(count(&last, "failed"), 0, "{last}");
    assert_eq!(count(&last, "expired"), 0, "{last}");
    assert_eq!(last["messages"], MESSAGES, "{last}");

    // The outcome log (history, not truth: a kill between a commit and its
    // append loses lines): every line whole, and no recipient recorded
    // delivered twice.
    let outcomes = std::fs::read_to_string(queue_dir.join("outcomes.jsonl")).unwrap();
    let mut torn = Vec::new();
    let mut logged: HashMap<String, usize> = HashMap::new();
    for line in outcomes.lines() {
        match serde_json::from_str::<serde_json::Value>(line) {
            Ok(v) if v["event"] == "delivered" => {
                *logged.entry(v["rcpt"].to_string()).or_insert(0) += 1;
            }
            Ok(_) => {}
            Err(_) => torn.push(line.to_owned()),
        }
    }
    assert!(torn.is_empty(), "torn outcome log lines: {torn:?}");
    assert!(
        logged.values().all(|n| *n == 1),
        "recorded delivered twice: {:?}",
        logged.iter().filter(|(_, n)| **n > 1).collect::<Vec<_>>()
    );

    let duplicates = messages.len() - MESSAGES;
    let most = counts.values().max().copied().unwrap_or(0);
    let bound = duplicate_bound();
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    println!(
        "kills: {kills} ({killed_mid_run} with mail still pending); duplicates: {duplicates} \
         (most copies of one recipient: {most}); bound: {kills} × {bound} = {}; \
         delivered lines in the outcome log: {}; server connections: {}; \
         last runner: {status}; wall time {:?}",
        kills * bound,
        logged.len(),
        server.connections(),
        started.elapsed()
    );
    assert!(
        killed_mid_run >= KILLS,
        "only {killed_mid_run} of {kills} kills landed while mail was pending: {pending_at_kill:?}"
    );
    assert!(
        duplicates <= kills * bound,
        "{duplicates} duplicates > {kills} kills × {bound}"
    );
    assert!(
        status.success(),
        "the last runner, stopped: {status}\n{log_text}"
    );
    assert!(
        !log_text.contains("panicked"),
        "a runner panicked:\n{log_text}"
    );
}
