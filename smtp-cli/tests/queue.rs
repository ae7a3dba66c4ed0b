//! `smtp send --queue` and `smtp queue run` against smtp-testkit's flaky
//! server on 127.0.0.1.

use std::process::Command;
use std::time::Duration;

use smtp_testkit::flaky::{FlakyConfig, FlakyServer};

fn smtp(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_smtp"))
        .args(args)
        .env_remove("SMTP_PASSWORD")
        .output()
        .unwrap()
}

fn send_args<'a>(server: &'a str, queue: &'a str, to: &'a [String]) -> Vec<&'a str> {
    let mut a = vec![
        "send",
        "--server",
        server,
        "--tls",
        "none",
        "--queue",
        queue,
        "--from",
        "a@example.com",
        "--subject",
        "hi",
        "--body",
        "hello",
        "--retry-first",
        "1",
        "--retry-max",
        "1",
        "--linger",
        "10",
    ];
    for t in to {
        a.extend(["--to", t.as_str()]);
    }
    a
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn send_queue_rides_out_greylisting_and_exits_0() {
    let rt = runtime();
    let server = rt
        .block_on(FlakyServer::start(FlakyConfig {
            greylist: Some(Duration::from_millis(500)),
            ..FlakyConfig::default()
        }))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let addr = server.addr().to_string();
    let to: Vec<String> = (0..3).map(|i| format!("r{i}@example.net")).collect();
    let out = smtp(&send_args(&addr, dir.path().to_str().unwrap(), &to));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("deferred"), "{stdout}");
    let counts = server.deliveries();
    assert_eq!(counts.len(), 3, "{counts:?}");
    assert!(counts.values().all(|n| *n == 1));
}

#[test]
fn refused_authentication_keeps_recipients_queued_and_says_so_once() {
    let rt = runtime();
    let server = rt
        .block_on(FlakyServer::start(FlakyConfig {
            refuse_auth: true,
            ..FlakyConfig::default()
        }))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let q = dir.path().to_str().unwrap();
    let addr = server.addr().to_string();
    let to: Vec<String> = (0..2).map(|i| format!("r{i}@example.net")).collect();
    let mut args = send_args(&addr, q, &to);
    args.extend(["--user", "u"]);
    let out = Command::new(env!("CARGO_BIN_EXE_smtp"))
        .args(&args)
        .env("SMTP_PASSWORD", "wrong")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(75), "{stderr}");
    assert_eq!(stderr.matches("HELD").count(), 1, "{stderr}");
    let stats = smtp(&["queue", "stats", "--queue", q, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&stats.stdout).unwrap();
    assert_eq!(v["recipients"]["queued"], 2, "{v}");
    assert_eq!(v["recipients"]["failed"], 0, "{v}");
}
