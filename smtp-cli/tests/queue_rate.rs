//! Issue #15's rate acceptance test: two `smtp queue run --watch --rate
//! 60/minute` processes share one queue of 240 one-recipient messages and
//! deliver to a capture server on 127.0.0.1 for three minutes; one is
//! SIGKILLed and restarted mid-way. In no 60-second window does the
//! server see more than 60 messages (burst 1), the restart brings no
//! burst, and deliveries do happen (at least 150).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime};

use smtp_core::delivery::MemoryBody;
use smtp_queue::{Body, MessageOptions, NewMessage, SqliteStore, Store};
use smtp_testkit::capture::{CaptureConfig, CaptureServer};

const MESSAGES: usize = 240;
const WINDOW: Duration = Duration::from_secs(180);

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
            "5",
            "--rate",
            "60/minute",
        ])
        .env_remove("SMTP_PASSWORD")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

/// The most arrivals in any window of `window` (sorted times).
fn max_in_window(at: &[SystemTime], window: Duration) -> usize {
    (0..at.len())
        .map(|i| at[i..].iter().take_while(|t| **t < at[i] + window).count())
        .max()
        .unwrap_or(0)
}

#[test]
fn two_rated_runners_and_a_restart_never_exceed_60_a_minute() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let server = rt
        .block_on(CaptureServer::start(CaptureConfig::default()))
        .unwrap();
    let addr = server.addr().to_string();
    let dir = tempfile::tempdir().unwrap();
    let queue_dir = dir.path().join("queue");
    let queue = queue_dir.to_str().unwrap();
    let log = dir.path().join("runners.log");
    rt.block_on(async {
        let store = SqliteStore::open(&queue_dir).await.unwrap();
        let batch = (0..MESSAGES)
            .map(|i| NewMessage {
                from: "a@example.com".into(),
                to: vec![format!("r{i:04}@example.net")],
                body: Body::Source(Box::new(MemoryBody::new(format!(
                    "Subject: rate {i:04}\r\n\r\nMessage {i:04}.\r\n"
                )))),
                options: MessageOptions::default(),
            })
            .collect();
        store.enqueue(batch, SystemTime::now()).await.unwrap();
        store.close().await;
    });
    let start = SystemTime::now();
    let mut a = runner(queue, &addr, &log);
    let mut b = runner(queue, &addr, &log);
    // Mid-window: kill one, restart it at once.
    std::thread::sleep(Duration::from_secs(70));
    a.kill().unwrap(); // SIGKILL
    a.wait().unwrap();
    let restarted = SystemTime::now();
    let mut a = runner(queue, &addr, &log);
    let left = WINDOW.saturating_sub(start.elapsed().unwrap());
    std::thread::sleep(left);
    for child in [&mut a, &mut b] {
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "a runner exited by itself ({status}):\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        child.kill().unwrap();
        child.wait().unwrap();
    }
    let mut at: Vec<SystemTime> = server
        .messages()
        .iter()
        .map(|m| m.received_at)
        .filter(|t| *t <= start + WINDOW)
        .collect();
    at.sort();
    let most = max_in_window(&at, Duration::from_secs(60));
    let after_restart = at
        .iter()
        .filter(|t| **t >= restarted && **t < restarted + Duration::from_secs(5))
        .count();
    println!(
        "{} delivered in {WINDOW:?}; at most {most} in any 60 s; {after_restart} in the 5 s after the restart",
        at.len()
    );
    assert!(most <= 60, "{most} messages within 60 s");
    // No burst after the restart: about one a second, as before it.
    assert!(
        after_restart <= 6,
        "{after_restart} in the 5 s after the restart"
    );
    assert!(at.len() >= 150, "only {} delivered", at.len());
    // The budget is kept in the queue, and `queue stats` shows it.
    let out = Command::new(env!("CARGO_BIN_EXE_smtp"))
        .args(["queue", "stats", "--queue", queue])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("budget relay:{addr}: 60/minute")),
        "{text}"
    );
}
