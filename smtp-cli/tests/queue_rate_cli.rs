//! The rate flags as users touch them: the real `smtp` binary against a
//! capture server on 127.0.0.1. `smtp send --rate` spreads what it sends
//! and says when it expects to finish; what the budget does not allow
//! within `--linger` stays queued, each message due at its turn; a plain
//! `smtp queue run` applies the limits remembered for the relay account
//! and `--rate none` clears them; an account's `rate` is honoured; bad
//! rates are usage errors before anything is enqueued.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, SystemTime};

use smtp_testkit::capture::{CaptureConfig, CaptureServer};

/// Runs `smtp` with `home` as its HOME and XDG directories (no user
/// config, no default queue of the user's), without a password.
fn smtp(home: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_smtp"))
        .args(args)
        .env_remove("SMTP_PASSWORD")
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join("config"))
        .env("XDG_STATE_HOME", home.join("state"))
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(out)))
}

fn capture(rt: &tokio::runtime::Runtime) -> CaptureServer {
    rt.block_on(CaptureServer::start(CaptureConfig::default()))
        .unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

/// `n` one-recipient message files in `dir` (read with `-t`).
fn message_files(dir: &Path, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let path: PathBuf = dir.join(format!("m{i}.eml"));
            std::fs::write(
                &path,
                format!(
                    "From: a@example.com\r\nTo: r{i}@example.net\r\nSubject: m{i}\r\n\
                     Date: Sun, 29 Nov 2026 02:00:00 +0000\r\nMessage-ID: <{i}@example.com>\r\n\r\nbody {i}\r\n"
                ),
            )
            .unwrap();
            path.to_str().unwrap().to_owned()
        })
        .collect()
}

/// The arrival times at `server`, sorted.
fn arrivals(server: &CaptureServer) -> Vec<SystemTime> {
    let mut at: Vec<SystemTime> = server.messages().iter().map(|m| m.received_at).collect();
    at.sort();
    at
}

/// Each arrival at least `interval` (less `slack`) after the one before.
fn assert_spaced(at: &[SystemTime], interval: Duration, slack: Duration) {
    for pair in at.windows(2) {
        let gap = pair[1].duration_since(pair[0]).unwrap_or_default();
        assert!(
            gap + slack >= interval,
            "arrivals {gap:?} apart, under the {interval:?} interval: {at:?}"
        );
    }
}

/// The expected-finish line on `stderr`.
fn finish_line(stderr: &str) -> &str {
    stderr
        .lines()
        .find(|l| l.contains("expected to finish around"))
        .unwrap_or_else(|| panic!("no expected-finish line:\n{stderr}"))
}

/// The report's lines for accepted recipients.
fn accepted(out: &Output) -> usize {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("accepted "))
        .count()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Recipients of the queue not yet final: (attempts, next_attempt_ms).
fn waiting(home: &Path, queue: &str) -> Vec<(u64, u64)> {
    let out = smtp(home, &["queue", "list", "--queue", queue, "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    json(&out)["messages"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|m| m["recipients"].as_array().unwrap().clone())
        .filter(|r| r["state"] == "queued" || r["state"] == "deferred")
        .map(|r| {
            (
                r["attempts"].as_u64().unwrap(),
                r["next_attempt_ms"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn send_at_2_a_second_spreads_six_messages_and_says_when_it_will_finish() {
    let rt = runtime();
    let server = capture(&rt);
    let addr = server.addr().to_string();
    let dir = tempfile::tempdir().unwrap();
    let q = dir.path().join("q");
    let files = message_files(dir.path(), 6);
    let mut args = vec![
        "send",
        "--server",
        &addr,
        "--tls",
        "none",
        "--queue",
        q.to_str().unwrap(),
        "-t",
        "--rate",
        "2/second",
        "--burst",
        "1",
    ];
    args.extend(files.iter().map(String::as_str));
    let out = smtp(dir.path(), &args);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let err = stderr(&out);
    assert!(
        err.contains("smtp: 6 messages at 2/second: expected to finish around 20"),
        "{err}"
    );
    // Six at one every 500 ms, the first at once: 2.5 s.
    let line = finish_line(&err);
    assert!(
        ["(in 1s)", "(in 2s)", "(in 3s)"]
            .iter()
            .any(|s| line.ends_with(s)),
        "{line}"
    );
    assert_eq!(accepted(&out), 6, "{}", text(&out));
    let at = arrivals(&server);
    assert_eq!(at.len(), 6, "{}", text(&out));
    assert_spaced(&at, Duration::from_millis(500), Duration::from_millis(150));
    let span = at[5].duration_since(at[0]).unwrap();
    assert!(span >= Duration::from_millis(2350), "{span:?}");
}

#[test]
fn one_a_minute_leaves_the_rest_waiting_and_queue_run_remembers_the_limit() {
    let rt = runtime();
    let server = capture(&rt);
    let addr = server.addr().to_string();
    let port = server.addr().port();
    let key = format!("relay:127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path();
    let q = dir.path().join("q");
    let q = q.to_str().unwrap();
    let files = message_files(dir.path(), 3);
    let mut args = vec![
        "send", "--server", &addr, "--tls", "none", "--queue", q, "-t", "--rate", "1/minute",
        "--linger", "1",
    ];
    args.extend(files.iter().map(String::as_str));
    let out = smtp(home, &args);
    // Waiting mail: exit 75, as for deferred mail.
    assert_eq!(out.status.code(), Some(75), "{}", text(&out));
    let err = stderr(&out);
    assert!(
        err.contains("smtp: 3 messages at 1/minute: expected to finish around"),
        "{err}"
    );
    // The first at once, the third a minute after the second.
    assert!(finish_line(&err).ends_with("(in 2 min)"), "{err}");
    assert!(err.contains("smtp queue run --watch"), "{err}");
    assert_eq!(server.messages().len(), 1, "{}", text(&out));
    assert_eq!(accepted(&out), 1, "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout.matches("[queued, next attempt 20").count(),
        2,
        "{}",
        text(&out)
    );

    // Each waiting message is due at its turn, never attempted.
    let list = smtp(home, &["queue", "list", "--queue", q]);
    let listed = String::from_utf8_lossy(&list.stdout);
    assert_eq!(list.status.code(), Some(0), "{}", text(&list));
    assert_eq!(listed.matches("attempts=0 next=").count(), 2, "{listed}");
    let now = now_ms();
    let w = waiting(home, q);
    assert_eq!(w.len(), 2, "{listed}");
    for (attempts, next) in &w {
        assert_eq!(*attempts, 0, "{w:?}");
        assert!(*next > now + 50_000, "due at its turn, a minute on: {w:?}");
    }
    let turns: Vec<u64> = w.iter().map(|(_, t)| *t).collect();
    assert!(
        turns.iter().max().unwrap() - turns.iter().min().unwrap() >= 55_000,
        "a minute between them: {turns:?}"
    );

    // The budget, with its limit and a next free slot to come.
    let stats = smtp(home, &["queue", "stats", "--queue", q]);
    let s = String::from_utf8_lossy(&stats.stdout);
    assert!(
        s.contains(&format!("budget {key}: 1/minute; next free slot: 20")),
        "{}",
        text(&stats)
    );
    let stats = json(&smtp(home, &["queue", "stats", "--queue", q, "--json"]));
    assert_eq!(stats["budgets"][0]["key"], key.as_str(), "{stats}");
    assert_eq!(stats["budgets"][0]["limits"], "1/minute", "{stats}");
    assert!(stats["budgets"][0]["next_free"].is_string(), "{stats}");

    // A plain run, at once: the remembered limit, said; nothing more sent.
    let run = [
        "queue", "run", "--queue", q, "--server", &addr, "--tls", "none",
    ];
    let out = smtp(home, &run);
    assert_eq!(out.status.code(), Some(75), "{}", text(&out));
    assert!(
        stderr(&out).contains(&format!(
            "applying the rate limits remembered for {key}: 1/minute"
        )),
        "{}",
        text(&out)
    );
    assert_eq!(server.messages().len(), 1, "{}", text(&out));

    // Even made due now, they wait for the remembered budget: released
    // again, unattempted, each at its turn.
    let retry = smtp(home, &["queue", "retry", "--all", "--queue", q]);
    assert_eq!(retry.status.code(), Some(0), "{}", text(&retry));
    let out = smtp(home, &run);
    assert_eq!(out.status.code(), Some(75), "{}", text(&out));
    assert!(
        stderr(&out).contains(&format!("waiting for the rate budget of {key}")),
        "{}",
        text(&out)
    );
    assert_eq!(server.messages().len(), 1, "{}", text(&out));
    let now = now_ms();
    let w = waiting(home, q);
    assert!(
        w.iter().all(|(a, next)| *a == 0 && *next > now + 30_000),
        "{w:?}"
    );

    // `--rate none` clears the remembered limit, for later runs too.
    let mut clear = run.to_vec();
    clear.extend(["--rate", "none"]);
    let out = smtp(home, &clear);
    assert!(
        stderr(&out).contains(&format!("rate limits for {key} cleared")),
        "{}",
        text(&out)
    );
    let stats = smtp(home, &["queue", "stats", "--queue", q]);
    let s = String::from_utf8_lossy(&stats.stdout);
    assert!(s.contains(&format!("budget {key}: none remembered")), "{s}");
    let retry = smtp(home, &["queue", "retry", "--all", "--queue", q]);
    assert_eq!(retry.status.code(), Some(0), "{}", text(&retry));
    let out = smtp(home, &run);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(!stderr(&out).contains("applying"), "{}", text(&out));
    assert_eq!(server.messages().len(), 3, "{}", text(&out));
    assert!(waiting(home, q).is_empty());
}

#[test]
fn an_accounts_rate_in_the_config_file_is_honoured() {
    let rt = runtime();
    let server = capture(&rt);
    let port = server.addr().port();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[accounts.relay]\nserver = \"127.0.0.1:{port}\"\ntls = \"none\"\n\
             rate = \"2/s\"\n"
        ),
    )
    .unwrap();
    let q = dir.path().join("q");
    let q = q.to_str().unwrap();
    let files = message_files(dir.path(), 4);
    let mut args = vec![
        "send",
        "--config",
        config.to_str().unwrap(),
        "--account",
        "relay",
        "--queue",
        q,
        "-t",
    ];
    args.extend(files.iter().map(String::as_str));
    let out = smtp(dir.path(), &args);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        stderr(&out).contains("smtp: 4 messages at 2/second: expected to finish around"),
        "{}",
        text(&out)
    );
    assert_eq!(accepted(&out), 4, "{}", text(&out));
    let at = arrivals(&server);
    assert_eq!(at.len(), 4, "{}", text(&out));
    assert_spaced(&at, Duration::from_millis(500), Duration::from_millis(150));
    // Remembered for the account, as --rate would be.
    let stats = smtp(dir.path(), &["queue", "stats", "--queue", q]);
    let s = String::from_utf8_lossy(&stats.stdout);
    assert!(
        s.contains(&format!("budget relay:127.0.0.1:{port}: 2/second")),
        "{s}"
    );
}

#[test]
fn bad_rates_are_usage_errors_and_nothing_is_enqueued() {
    let rt = runtime();
    let server = capture(&rt);
    let addr = server.addr().to_string();
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path();
    let q = dir.path().join("q");
    let qs = q.to_str().unwrap();
    let message = [
        "--from",
        "a@example.com",
        "--to",
        "b@example.net",
        "--subject",
        "s",
        "--body",
        "b",
    ];
    let relay = ["--server", addr.as_str(), "--tls", "none"];
    let cases: [(&[&str], &[&str], &str); 6] = [
        (&relay, &["--rate", "30/fortnight"], "N/minute"),
        (&relay, &["--rate", "0/minute"], "zero"),
        (&relay, &["--rate", "2/second", "--burst", "0"], "--burst"),
        (&relay, &["--burst", "3"], "--burst goes with --rate"),
        (&relay, &["--rate", "none", "--rate", "2/second"], "alone"),
        // Direct delivery (no relay) is not rate limited.
        (&[], &["--rate", "2/second"], "needs --server"),
    ];
    for (via, rate, says) in cases {
        let mut args = vec!["send", "--queue", qs];
        args.extend(via);
        args.extend(message);
        args.extend(rate);
        let out = smtp(home, &args);
        assert_eq!(out.status.code(), Some(64), "{rate:?}: {}", text(&out));
        let err = stderr(&out);
        assert!(err.contains(says), "{rate:?}: {err}");
        // Nothing enqueued: no queue at all, or an empty one.
        let stats = smtp(home, &["queue", "stats", "--queue", qs, "--json"]);
        match stats.status.code() {
            Some(66) => {}
            Some(0) => assert_eq!(json(&stats)["messages"], 0, "{rate:?}"),
            _ => panic!("{rate:?}: {}", text(&stats)),
        }
        // Nor in the default queue.
        assert!(!home.join("state/smtp/queue").exists(), "{rate:?}");
    }
    assert!(server.messages().is_empty());
    // `queue run` takes the same flags, as strictly: nothing is sent.
    let q2 = dir.path().join("q2");
    let q2 = q2.to_str().unwrap();
    let mut args = vec!["send", "--queue", q2, "--queue-only"];
    args.extend(message);
    let out = smtp(home, &args);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    for rate in ["30/fortnight", "0/minute"] {
        let out = smtp(
            home,
            &[
                "queue", "run", "--queue", q2, "--server", &addr, "--tls", "none", "--rate", rate,
            ],
        );
        assert_eq!(out.status.code(), Some(64), "{rate}: {}", text(&out));
        assert!(stderr(&out).contains("--rate"), "{rate}: {}", text(&out));
    }
    assert!(server.messages().is_empty());
}

/// `send --queue-only --rate` remembers the limits for the relay account
/// (keyed by host, port and user, no password read), so that a plain
/// `queue run` (the service recipe) applies them.
#[test]
fn queue_only_remembers_the_rate_for_a_plain_queue_run() {
    let rt = runtime();
    let server = capture(&rt);
    let addr = server.addr().to_string();
    let port = server.addr().port();
    let key = format!("relay:127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path();
    let q = dir.path().join("q");
    let q = q.to_str().unwrap();
    let files = message_files(dir.path(), 5);
    for file in &files {
        let out = smtp(
            home,
            &[
                "send",
                "--queue",
                q,
                "--queue-only",
                "--server",
                &addr,
                "--tls",
                "none",
                "-t",
                "--rate",
                "1/minute",
                file,
            ],
        );
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    }
    let stats = smtp(home, &["queue", "stats", "--queue", q]);
    let s = String::from_utf8_lossy(&stats.stdout);
    assert!(
        s.contains(&format!("budget {key}: 1/minute")),
        "{}",
        text(&stats)
    );
    let out = smtp(
        home,
        &[
            "queue", "run", "--queue", q, "--server", &addr, "--tls", "none",
        ],
    );
    assert_eq!(out.status.code(), Some(75), "{}", text(&out));
    assert!(
        stderr(&out).contains(&format!(
            "applying the rate limits remembered for {key}: 1/minute"
        )),
        "{}",
        text(&out)
    );
    assert_eq!(server.messages().len(), 1, "{}", text(&out));
    assert_eq!(waiting(home, q).len(), 4);

    // With a user: the account's key, and no password asked for.
    let out = smtp(
        home,
        &[
            "send",
            "--queue",
            q,
            "--queue-only",
            "--server",
            &addr,
            "--tls",
            "none",
            "--user",
            "alice",
            "-t",
            "--rate",
            "2/minute",
            &files[0],
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stats = smtp(home, &["queue", "stats", "--queue", q]);
    let s = String::from_utf8_lossy(&stats.stdout);
    assert!(
        s.contains(&format!("budget {key}:alice: 2/minute")),
        "{}",
        text(&stats)
    );
    // --rate none with --queue-only clears them too.
    let out = smtp(
        home,
        &[
            "send",
            "--queue",
            q,
            "--queue-only",
            "--server",
            &addr,
            "--tls",
            "none",
            "-t",
            "--rate",
            "none",
            &files[1],
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        stderr(&out).contains(&format!("rate limits for {key} cleared")),
        "{}",
        text(&out)
    );
}

/// `--rate 10/second --rate 3/minute`: the second paces, the minute caps:
/// three go at once (100 ms apart), the rest wait for the first to leave
/// the minute; the estimate and `queue stats` say so.
#[test]
fn a_longer_limit_caps_without_slowing_the_pace() {
    let rt = runtime();
    let server = capture(&rt);
    let addr = server.addr().to_string();
    let key = format!("relay:127.0.0.1:{}", server.addr().port());
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path();
    let q = dir.path().join("q");
    let q = q.to_str().unwrap();
    let files = message_files(dir.path(), 5);
    let mut args = vec![
        "send",
        "--server",
        &addr,
        "--tls",
        "none",
        "--queue",
        q,
        "-t",
        "--rate",
        "10/second",
        "--rate",
        "3/minute",
        "--linger",
        "2",
    ];
    args.extend(files.iter().map(String::as_str));
    let out = smtp(home, &args);
    assert_eq!(out.status.code(), Some(75), "{}", text(&out));
    let err = stderr(&out);
    // The fifth a minute and 100 ms on.
    assert!(
        finish_line(&err).contains("at 10/second, 3/minute: expected")
            && finish_line(&err).ends_with("(in 1 min)"),
        "{err}"
    );
    let at = arrivals(&server);
    assert_eq!(at.len(), 3, "{}", text(&out));
    assert_spaced(&at, Duration::from_millis(100), Duration::from_millis(30));
    assert!(at[2].duration_since(at[0]).unwrap() < Duration::from_secs(2));
    let now = now_ms();
    let w = waiting(home, q);
    assert_eq!(w.len(), 2, "{w:?}");
    assert!(
        w.iter().all(|(a, next)| *a == 0 && *next > now + 50_000),
        "{w:?}"
    );
    let stats = smtp(home, &["queue", "stats", "--queue", q]);
    let s = String::from_utf8_lossy(&stats.stdout);
    assert!(
        s.contains(&format!(
            "budget {key}: 10/second, 3/minute; 3/minute: 3 used in the last minute; next free slot: 20"
        )),
        "{}",
        text(&stats)
    );
    let stats = json(&smtp(home, &["queue", "stats", "--queue", q, "--json"]));
    assert_eq!(
        stats["budgets"][0]["caps"][0]["limit"], "3/minute",
        "{stats}"
    );
    assert_eq!(stats["budgets"][0]["caps"][0]["used"], 3, "{stats}");
}
