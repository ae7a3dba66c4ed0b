//! `smtp send --queue` and `smtp queue run` against smtp-testkit's flaky
//! server on 127.0.0.1.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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

/// A flaky server on `addr` again, once the one there before is gone (its
/// listener closes as its task ends, a moment after the drop).
fn restart_on(rt: &tokio::runtime::Runtime, addr: std::net::SocketAddr) -> FlakyServer {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match rt.block_on(FlakyServer::start_on(addr, FlakyConfig::default())) {
            Ok(server) => return server,
            Err(e) if Instant::now() >= deadline => panic!("{addr}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
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
    // The retries are told on stderr as they happen; stdout holds the
    // report, as plain `smtp send` prints it.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("deferred"), "{stderr}");
    assert_eq!(stdout.matches("accepted").count(), 3, "{stdout}");
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

/// `n` message files in `dir`, message *i* to `r{i}@{domain}` (read with `-t`).
fn message_files(dir: &Path, n: usize, domain: &str) -> Vec<PathBuf> {
    (0..n)
        .map(|i| {
            let path = dir.join(format!("m{i}.eml"));
            std::fs::write(
                &path,
                format!(
                    "From: a@example.com\r\nTo: r{i}@{domain}\r\nSubject: m{i}\r\n\
                     Date: Sun, 29 Nov 2026 02:00:00 +0000\r\nMessage-ID: <{i}@example.com>\r\n\r\nbody {i}\r\n"
                ),
            )
            .unwrap();
            path
        })
        .collect()
}

/// `send --queue -t` of message files through `server`, JSON report.
fn send_files<'a>(
    server: &'a str,
    queue: &'a str,
    retry: &'a str,
    files: &'a [PathBuf],
) -> Vec<&'a str> {
    let mut a = vec![
        "send",
        "--server",
        server,
        "--tls",
        "none",
        "--queue",
        queue,
        "-t",
        "--json",
        "--retry-first",
        retry,
        "--retry-max",
        retry,
        "--linger",
        "10",
        "--stop-grace",
        "1",
    ];
    a.extend(files.iter().map(|f| f.to_str().unwrap()));
    a
}

fn json(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: stdout {}\nstderr {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[test]
fn send_queue_delivers_8_messages_through_421_after_3_per_connection() {
    let rt = runtime();
    let server = rt
        .block_on(FlakyServer::start(FlakyConfig {
            max_per_connection: Some(3),
            ..FlakyConfig::default()
        }))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let q = dir.path().join("q");
    let files = message_files(dir.path(), 8, "example.net");
    let addr = server.addr().to_string();
    let out = smtp(&send_files(&addr, q.to_str().unwrap(), "1", &files));
    let v = json(&out);
    assert_eq!(out.status.code(), Some(0), "{v}");
    assert_eq!(v["summary"]["accepted"], 8, "{v}");
    assert_eq!(v["summary"]["deferred"], 0, "{v}");
    assert_eq!(v["messages"].as_array().unwrap().len(), 8, "{v}");
    for m in v["messages"].as_array().unwrap() {
        let r = &m["recipients"][0];
        assert_eq!(r["status"], "accepted", "{v}");
        assert_eq!(r["code"], 250, "{v}");
        assert!(r.get("queued").is_none(), "delivered is not queued: {v}");
    }
    let counts = server.deliveries();
    assert_eq!(counts.len(), 8, "{counts:?}");
    assert!(counts.values().all(|n| *n == 1), "{counts:?}");
    assert!(server.connections() >= 3, "{}", server.connections());
}

#[test]
fn interrupted_send_queue_is_resumed_by_queue_run_each_recipient_once() {
    let rt = runtime();
    let stalling = rt
        .block_on(FlakyServer::start(FlakyConfig {
            stall_after: Some(1),
            ..FlakyConfig::default()
        }))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let q = dir.path().join("q");
    let qs = q.to_str().unwrap();
    let files = message_files(dir.path(), 5, "example.net");
    let addr = stalling.addr().to_string();
    let child = Command::new(env!("CARGO_BIN_EXE_smtp"))
        .args(send_files(&addr, qs, "1", &files))
        .env_remove("SMTP_PASSWORD")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while stalling.messages().is_empty() {
        assert!(Instant::now() < deadline, "the first message never arrived");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The 250 to its data is on its way (a loaded machine gets time for
    // it to arrive); the next MAIL meets silence.
    std::thread::sleep(Duration::from_millis(500));
    let interrupted = Instant::now();
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let out = child.wait_with_output().unwrap();
    let took = interrupted.elapsed();
    let v = json(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{v}\n{stderr}");
    assert!(took < Duration::from_secs(8), "took {took:?} to stop");
    assert_eq!(v["error"]["kind"], "interrupted", "{v}");
    assert_eq!(v["summary"]["accepted"], 1, "{v}");
    assert_eq!(v["summary"]["deferred"], 4, "{v}");
    let queued: Vec<_> = v["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| &m["recipients"][0])
        .filter(|r| r["queued"] == true)
        .collect();
    assert_eq!(queued.len(), 4, "{v}");
    assert!(queued.iter().all(|r| r["next_attempt"].is_string()), "{v}");
    assert!(stderr.contains("4 still queued"), "{stderr}");

    // Released, not leased: `queue run` at once delivers the rest.
    // The relay back on the same address: the route the messages were
    // enqueued for (a run through another relay would leave them).
    let before = stalling.deliveries();
    let back = stalling.addr();
    drop(stalling);
    let good = restart_on(&rt, back);
    let good_addr = good.addr().to_string();
    let run = smtp(&[
        "queue", "run", "--queue", qs, "--server", &good_addr, "--tls", "none",
    ]);
    assert_eq!(
        run.status.code(),
        Some(0),
        "{}\n{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    let mut all = before.clone();
    for (rcpt, n) in good.deliveries() {
        *all.entry(rcpt).or_default() += n;
    }
    assert_eq!(all.len(), 5, "{all:?}");
    assert!(all.values().all(|n| *n == 1), "each exactly once: {all:?}");
    assert_eq!(before.len(), 1);
}

#[test]
fn an_interrupted_send_queue_says_only_of_the_message_in_flight_that_it_may_go_twice() {
    let rt = runtime();
    // The first message's data arrives whole and its reply takes 4 s; the
    // others are not sent meanwhile (the server reads nothing more).
    let slow = rt
        .block_on(FlakyServer::start(FlakyConfig {
            data_delay: Some(Duration::from_secs(4)),
            ..FlakyConfig::default()
        }))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let q = dir.path().join("q");
    let qs = q.to_str().unwrap();
    let files = message_files(dir.path(), 3, "example.net");
    let addr = slow.addr().to_string();
    let mut args = send_files(&addr, qs, "1", &files);
    args.extend(["--concurrency", "1"]);
    let child = Command::new(env!("CARGO_BIN_EXE_smtp"))
        .args(&args)
        .env_remove("SMTP_PASSWORD")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while slow.data_ends() == 0 {
        assert!(Instant::now() < deadline, "no message's data arrived");
        std::thread::sleep(Duration::from_millis(20));
    }
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let out = child.wait_with_output().unwrap();
    let v = json(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{v}\n{stderr}");
    assert_eq!(v["error"]["kind"], "interrupted", "{v}");
    assert_eq!(v["summary"]["deferred"], 3, "{v}");
    let lines: Vec<(String, String)> = v["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| &m["recipients"][0])
        .map(|r| {
            assert_eq!(r["queued"], true, "{v}");
            (
                r["address"].as_str().unwrap().to_owned(),
                r["text"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let (twice, once): (Vec<_>, Vec<_>) = lines.iter().partition(|(_, t)| t.contains("twice"));
    assert_eq!(twice.len(), 1, "one message was in flight: {v}");
    assert!(
        twice[0].1.contains("after its message's data went out"),
        "{v}"
    );
    assert_eq!(once.len(), 2, "{v}");
    for (_, text) in &once {
        assert!(text.contains("before its message's data went out"), "{v}");
        assert!(text.contains("not delivered"), "{v}");
        assert!(text.contains("delivers it once"), "{v}");
    }
    assert!(stderr.contains("3 still queued"), "{stderr}");
    assert!(stderr.contains("1 of them was in flight"), "{stderr}");
    let in_flight = &twice[0].0;
    assert!(
        stderr.contains(&format!("smtp: warning: {in_flight}: stopped after")),
        "{stderr}"
    );

    // The slow server keeps the message it had once its delay is over:
    // `queue run` delivers that one again, and the others once.
    while slow.messages().is_empty() {
        assert!(Instant::now() < deadline, "the slow server kept nothing");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The relay back on the same address: the route the messages were
    // enqueued for (a run through another relay would leave them).
    let before = slow.deliveries();
    let back = slow.addr();
    drop(slow);
    let good = restart_on(&rt, back);
    let good_addr = good.addr().to_string();
    let run = smtp(&[
        "queue", "run", "--queue", qs, "--server", &good_addr, "--tls", "none",
    ]);
    assert_eq!(
        run.status.code(),
        Some(0),
        "{}\n{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    let mut all = before;
    for (rcpt, n) in good.deliveries() {
        *all.entry(rcpt).or_default() += n;
    }
    assert_eq!(all.len(), 3, "{all:?}");
    for (rcpt, _) in &lines {
        let want = if rcpt == in_flight { 2 } else { 1 };
        assert_eq!(all.get(rcpt), Some(&want), "{rcpt}: {all:?}");
    }
}

#[test]
fn queue_commands_list_show_retry_delete_stats_deferred_mail() {
    let rt = runtime();
    let server = rt
        .block_on(FlakyServer::start(FlakyConfig {
            greylist: Some(Duration::from_secs(3600)),
            ..FlakyConfig::default()
        }))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let q = dir.path().join("q");
    let qs = q.to_str().unwrap();
    let addr = server.addr().to_string();
    for domain in ["one.example", "two.example"] {
        let d = dir.path().join(domain);
        std::fs::create_dir(&d).unwrap();
        let files = message_files(&d, 1, domain);
        let out = smtp(&send_files(&addr, qs, "3600", &files));
        let v = json(&out);
        // Deferred, and the next attempt past --linger: still queued.
        assert_eq!(out.status.code(), Some(75), "{v}");
        let r = &v["messages"][0]["recipients"][0];
        assert_eq!(r["status"], "deferred", "{v}");
        assert_eq!(r["code"], 451, "{v}");
        assert_eq!(r["queued"], true, "{v}");
        assert!(r["next_attempt"].as_str().unwrap().ends_with('Z'), "{v}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("next attempt at"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let list = |extra: &[&str]| {
        let mut a = vec!["queue", "list", "--queue", qs, "--json"];
        a.extend(extra);
        let out = smtp(&a);
        assert_eq!(out.status.code(), Some(0), "{extra:?}");
        json(&out)["messages"].as_array().unwrap().clone()
    };
    let all = list(&[]);
    assert_eq!(all.len(), 2);
    for m in &all {
        assert_eq!(m["from"], "a@example.com");
        assert!(m["id"].as_str().unwrap().len() == 28, "{m}");
        let r = &m["recipients"][0];
        assert_eq!(r["state"], "deferred", "{m}");
        assert_eq!(r["attempts"], 1, "{m}");
        assert_eq!(r["last"]["code"], 451, "{m}");
        assert!(r["next_attempt_ms"].as_u64().unwrap() > 0, "{m}");
    }
    assert_eq!(list(&["--state", "deferred"]).len(), 2);
    assert_eq!(list(&["--state", "delivered"]).len(), 0);
    let one = list(&["--domain", "one.example"]);
    assert_eq!(one.len(), 1);
    assert_eq!(one[0]["recipients"][0]["address"], "r0@one.example");
    assert_eq!(list(&["--domain", "three.example"]).len(), 0);
    assert_eq!(list(&["--older-than", "1h"]).len(), 0);
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(list(&["--older-than", "1"]).len(), 2);
    let bad = smtp(&["queue", "list", "--queue", qs, "--state", "lost"]);
    assert_eq!(bad.status.code(), Some(64));

    let id = one[0]["id"].as_str().unwrap().to_owned();
    let show = smtp(&["queue", "show", &id, "--queue", qs, "--json"]);
    let m = json(&show);
    assert_eq!(m["id"], id.as_str());
    assert_eq!(m["recipients"][0]["state"], "deferred");
    assert_eq!(m["recipients"][0]["last"]["code"], 451);

    let stats = json(&smtp(&["queue", "stats", "--queue", qs, "--json"]));
    assert_eq!(stats["messages"], 2, "{stats}");
    assert_eq!(stats["recipients"]["deferred"], 2, "{stats}");

    let retry = json(&smtp(&["queue", "retry", "--all", "--queue", qs, "--json"]));
    assert_eq!(retry["retried"], 2, "{retry}");
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    for m in list(&[]) {
        let r = &m["recipients"][0];
        assert!(
            r["next_attempt_ms"].as_u64().unwrap() <= now_ms,
            "due now: {m}"
        );
    }

    let delete = smtp(&["queue", "delete", &id, "--queue", qs]);
    assert_eq!(delete.status.code(), Some(0));
    let left = list(&[]);
    assert_eq!(left.len(), 1);
    assert_eq!(left[0]["recipients"][0]["address"], "r0@two.example");
    let stats = json(&smtp(&["queue", "stats", "--queue", qs, "--json"]));
    assert_eq!(stats["messages"], 1, "{stats}");
}

// ---- Direct delivery from the queue: no --server; the MX from a zone on a
// testkit DNS server, the flaky server's port as --mx-port.

fn direct_zone(rt: &tokio::runtime::Runtime) -> smtp_testkit::dns::DnsServer {
    use smtp_testkit::dns::{DnsServer, Zone};
    let zone = Zone::new()
        .mx("grey.test", 10, "mx.grey.test")
        .a("mx.grey.test", "127.0.0.1".parse().unwrap())
        .mx("other.test", 10, "mx.other.test")
        .a("mx.other.test", "127.0.0.1".parse().unwrap());
    rt.block_on(DnsServer::start(zone)).unwrap()
}

fn direct(args: &[&str], home: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_smtp"))
        .args(args)
        .env_remove("SMTP_PASSWORD")
        .env("XDG_CONFIG_HOME", home)
        .output()
        .unwrap()
}

#[test]
fn send_queue_without_server_delivers_directly_through_greylisting() {
    let rt = runtime();
    let server = rt
        .block_on(FlakyServer::start(FlakyConfig {
            greylist: Some(Duration::from_millis(500)),
            ..FlakyConfig::default()
        }))
        .unwrap();
    let dns = direct_zone(&rt);
    let dir = tempfile::tempdir().unwrap();
    let q = dir.path().join("q");
    let (ns, port) = (dns.addr().to_string(), server.addr().port().to_string());
    let out = direct(
        &[
            "send",
            "--queue",
            q.to_str().unwrap(),
            "--dns-server",
            &ns,
            "--mx-port",
            &port,
            "--helo",
            "client.test",
            "--from",
            "a@example.com",
            "--to",
            "x@grey.test",
            "--to",
            "y@other.test",
            "--to",
            "z@grey.test",
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
        ],
        &dir.path().join("empty"),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stderr.contains("deferred"), "{stderr}");
    assert_eq!(stdout.matches("accepted").count(), 3, "{stdout}");
    let counts = server.deliveries();
    assert_eq!(counts.len(), 3, "{counts:?}");
    assert!(counts.values().all(|n| *n == 1), "{counts:?}");
    // (Retries are jittered, so grey.test's two recipients may come due,
    // and go, apart; the runner test checks one session per domain.)
}

#[test]
fn queue_run_without_server_delivers_directly() {
    let rt = runtime();
    let server = rt
        .block_on(FlakyServer::start(FlakyConfig::default()))
        .unwrap();
    let dns = direct_zone(&rt);
    let dir = tempfile::tempdir().unwrap();
    let q = dir.path().join("q");
    let q = q.to_str().unwrap();
    let home = dir.path().join("empty");
    // Enqueued while its MX is unreachable (port 9 on 127.0.0.1 listens
    // nowhere): deferred, the domain backed off.
    let (ns, port) = (dns.addr().to_string(), server.addr().port().to_string());
    let out = direct(
        &[
            "send",
            "--queue",
            q,
            "--dns-server",
            &ns,
            "--mx-port",
            "9",
            "--helo",
            "client.test",
            "--from",
            "a@example.com",
            "--to",
            "x@grey.test",
            "--subject",
            "hi",
            "--body",
            "hello",
            "--retry-first",
            "1",
            "--retry-max",
            "1",
            "--linger",
            "0",
        ],
        &home,
    );
    assert_eq!(
        out.status.code(),
        Some(75),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(server.deliveries().is_empty());
    let start = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let out = direct(
            &[
                "queue",
                "run",
                "--queue",
                q,
                "--dns-server",
                &ns,
                "--mx-port",
                &port,
                "--helo",
                "client.test",
            ],
            &home,
        );
        if server.deliveries().len() == 1 {
            assert_eq!(
                out.status.code(),
                Some(0),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

// ---- --notify-sender: an RFC 3464 delivery status notification to the
// sender, through the same relay (a capture server that refuses one
// recipient).

fn refusing_relay(rt: &tokio::runtime::Runtime) -> smtp_testkit::capture::CaptureServer {
    use smtp_testkit::capture::{CaptureConfig, CaptureServer};
    rt.block_on(CaptureServer::start(CaptureConfig {
        reject: vec![(
            "nobody@example.net".into(),
            "550 5.1.1 <nobody@example.net>: no such user here".into(),
        )],
        ..CaptureConfig::default()
    }))
    .unwrap()
}

/// `send --queue` of a composed message from `from` to bob (accepted) and
/// nobody (refused), JSON report, with `extra` flags.
fn send_to_bob_and_nobody(
    server: &str,
    queue: &str,
    from: &str,
    extra: &[&str],
) -> std::process::Output {
    let mut a = vec![
        "send",
        "--server",
        server,
        "--tls",
        "none",
        "--queue",
        queue,
        "--helo",
        "client.test",
        "--from",
        from,
        "--to",
        "bob@example.net",
        "--to",
        "nobody@example.net",
        "--subject",
        "lunch",
        "--body",
        "At noon?",
        "--json",
        "--linger",
        "10",
    ];
    a.extend(extra);
    smtp(&a)
}

/// The delivery-status part's blocks of fields (unfolded), and the
/// multipart's content types, parsed from a notification as received.
fn delivery_status(data: &[u8]) -> (Vec<String>, Vec<Vec<(String, String)>>) {
    let text = String::from_utf8_lossy(data)
        .replace("\r\n\t", " ")
        .replace("\r\n ", " ");
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let content_type = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Type: "))
        .unwrap();
    assert!(
        content_type.starts_with("multipart/report; report-type=delivery-status;"),
        "{content_type}"
    );
    let boundary = content_type
        .split("boundary=\"")
        .nth(1)
        .unwrap()
        .trim_end_matches('"');
    let mut types = Vec::new();
    let mut blocks = Vec::new();
    for part in body.split(&format!("\r\n--{boundary}")).skip(1) {
        if part.starts_with("--") {
            break;
        }
        let (h, b) = part
            .trim_start_matches("\r\n")
            .split_once("\r\n\r\n")
            .unwrap();
        let t = h
            .lines()
            .find_map(|l| l.strip_prefix("Content-Type: "))
            .unwrap()
            .to_owned();
        if t == "message/delivery-status" {
            blocks = b
                .split("\r\n\r\n")
                .filter(|x| !x.trim().is_empty())
                .map(|block| {
                    block
                        .lines()
                        .map(|l| {
                            let (n, v) = l.split_once(':').unwrap();
                            (n.to_owned(), v.trim().to_owned())
                        })
                        .collect()
                })
                .collect();
        }
        types.push(t);
    }
    (types, blocks)
}

fn field<'a>(block: &'a [(String, String)], name: &str) -> Option<&'a str> {
    block
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

#[test]
fn send_queue_notify_sender_sends_the_sender_a_dsn_naming_the_refused_recipient() {
    let rt = runtime();
    let server = refusing_relay(&rt);
    let dir = tempfile::tempdir().unwrap();
    let q = dir.path().join("q");
    let qs = q.to_str().unwrap();
    let addr = server.addr().to_string();
    let out = send_to_bob_and_nobody(&addr, qs, "alice@example.com", &["--notify-sender"]);
    let v = json(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // One recipient refused for good, none queued: 69, as without the flag.
    assert_eq!(out.status.code(), Some(69), "{v}\n{stderr}");
    assert_eq!(v["summary"]["accepted"], 1, "{v}");
    assert_eq!(v["summary"]["rejected"], 1, "{v}");
    assert!(
        stderr.contains(
            "notifying alice@example.com of 1 undelivered recipient (nobody@example.net)"
        ),
        "{stderr}"
    );

    let messages = server.messages();
    assert_eq!(messages.len(), 2, "the message, then the notification");
    assert_eq!(messages[0].rcpt_to, ["bob@example.net"]);
    let dsn = &messages[1];
    assert_eq!(dsn.mail_from, "", "MAIL FROM:<>");
    assert_eq!(dsn.rcpt_to, ["alice@example.com"]);
    let text = String::from_utf8_lossy(&dsn.data);
    for header in [
        "\r\nTo: <alice@example.com>\r\n",
        "\r\nAuto-Submitted: auto-replied\r\n",
        "From: Mail Delivery System <MAILER-DAEMON@client.test>\r\n",
    ] {
        assert!(text.contains(header), "{header:?} in\n{text}");
    }
    let (types, blocks) = delivery_status(&dsn.data);
    assert_eq!(
        types,
        [
            "text/plain; charset=us-ascii",
            "message/delivery-status",
            "text/rfc822-headers"
        ]
    );
    assert_eq!(
        blocks.len(),
        2,
        "per-message fields, one recipient: {blocks:?}"
    );
    assert_eq!(field(&blocks[0], "Reporting-MTA"), Some("dns; client.test"));
    let r = &blocks[1];
    assert_eq!(
        field(r, "Final-Recipient"),
        Some("rfc822; nobody@example.net")
    );
    assert_eq!(field(r, "Action"), Some("failed"));
    assert_eq!(field(r, "Status"), Some("5.1.1"));
    assert_eq!(
        field(r, "Diagnostic-Code"),
        Some("smtp; 550 5.1.1 <nobody@example.net>: no such user here")
    );
    assert!(
        text.contains("\r\nSubject: lunch\r\n"),
        "the original's headers returned"
    );
    assert!(
        !text.contains("Final-Recipient: rfc822; bob@example.net"),
        "{text}"
    );

    // `queue show` names the notification; the notification is delivered.
    let list = json(&smtp(&["queue", "list", "--queue", qs, "--json"]));
    let all = list["messages"].as_array().unwrap();
    assert_eq!(all.len(), 2, "{list}");
    let original = all
        .iter()
        .find(|m| m["from"] == "alice@example.com")
        .unwrap();
    assert_eq!(original["notify_sender"], true, "{original}");
    let dsn_id = original["notification"]
        .as_str()
        .expect("a notification id");
    let shown = json(&smtp(&["queue", "show", dsn_id, "--queue", qs, "--json"]));
    assert_eq!(shown["from"], "", "{shown}");
    assert_eq!(shown["recipients"][0]["address"], "alice@example.com");
    assert_eq!(shown["recipients"][0]["state"], "delivered");
    assert_eq!(shown["notification"], serde_json::Value::Null);
    let id = original["id"].as_str().unwrap();
    let text = smtp(&["queue", "show", id, "--queue", qs]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains(&format!("notification: {dsn_id}")), "{text}");

    // Run again: nothing more is sent.
    let run = smtp(&[
        "queue", "run", "--queue", qs, "--server", &addr, "--tls", "none",
    ]);
    assert_eq!(run.status.code(), Some(0));
    assert_eq!(server.messages().len(), 2);
}

#[test]
fn no_dsn_is_sent_without_notify_sender_nor_to_a_null_sender() {
    let rt = runtime();
    let server = refusing_relay(&rt);
    let dir = tempfile::tempdir().unwrap();
    let addr = server.addr().to_string();

    let q = dir.path().join("plain");
    let out = send_to_bob_and_nobody(&addr, q.to_str().unwrap(), "alice@example.com", &[]);
    assert_eq!(
        out.status.code(),
        Some(69),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(server.messages().len(), 1, "the message only");
    let list = json(&smtp(&[
        "queue",
        "list",
        "--queue",
        q.to_str().unwrap(),
        "--json",
    ]));
    assert_eq!(list["messages"].as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list["messages"][0]["notify_sender"], false, "{list}");

    // A bounce-like message from the null sender: no notification, ever.
    let file = dir.path().join("m.eml");
    std::fs::write(
        &file,
        "From: MAILER-DAEMON@example.com\r\nTo: bob@example.net\r\nSubject: x\r\n\r\nbody\r\n",
    )
    .unwrap();
    let q = dir.path().join("null");
    let out = smtp(&[
        "send",
        "--server",
        &addr,
        "--tls",
        "none",
        "--queue",
        q.to_str().unwrap(),
        "-f",
        "<>",
        "--to",
        "bob@example.net",
        "--to",
        "nobody@example.net",
        "--notify-sender",
        "--json",
        "--linger",
        "10",
        file.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(69), "{stderr}");
    assert!(stderr.contains("the sender is null"), "{stderr}");
    assert!(!stderr.contains("notifying"), "{stderr}");
    let messages = server.messages();
    assert_eq!(messages.len(), 2, "one more message, no notification");
    assert_eq!(messages[1].mail_from, "");
    assert_eq!(messages[1].rcpt_to, ["bob@example.net"]);
    let list = json(&smtp(&[
        "queue",
        "list",
        "--queue",
        q.to_str().unwrap(),
        "--json",
    ]));
    assert_eq!(list["messages"].as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list["messages"][0]["notification"], serde_json::Value::Null);
}

#[test]
fn notify_sender_without_queue_is_a_usage_error() {
    let out = smtp(&[
        "send",
        "--server",
        "127.0.0.1:9",
        "--tls",
        "none",
        "--notify-sender",
        "--from",
        "a@example.com",
        "--to",
        "b@example.net",
        "--subject",
        "hi",
        "--body",
        "hello",
    ]);
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--notify-sender works with --queue"),
        "{stderr}"
    );
}

#[test]
fn a_second_signal_says_of_a_message_whose_session_was_cut_off_that_it_may_have_gone() {
    let rt = runtime();
    // The first message's data arrives whole and its reply takes 4 s.
    let slow = rt
        .block_on(FlakyServer::start(FlakyConfig {
            data_delay: Some(Duration::from_secs(4)),
            ..FlakyConfig::default()
        }))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let q = dir.path().join("q");
    let files = message_files(dir.path(), 3, "example.net");
    let addr = slow.addr().to_string();
    let mut args = send_files(&addr, q.to_str().unwrap(), "1", &files);
    args.extend(["--concurrency", "1"]);
    let child = Command::new(env!("CARGO_BIN_EXE_smtp"))
        .args(&args)
        .env_remove("SMTP_PASSWORD")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while slow.data_ends() == 0 {
        assert!(Instant::now() < deadline, "no message's data arrived");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Ctrl-C twice: the second gives up the stop's grace.
    for _ in 0..2 {
        let kill = Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(kill.success());
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    let v = json(&out);
    assert_eq!(out.status.code(), Some(130), "{v}");
    let texts: Vec<String> = v["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["recipients"][0]["text"].as_str().unwrap().to_owned())
        .collect();
    // The message whose data the server has is never called undelivered;
    // the two behind it were never sent.
    let (maybe, not): (Vec<_>, Vec<_>) = texts
        .iter()
        .partition(|t| t.contains("may or may not have been delivered"));
    assert_eq!(maybe.len(), 1, "the message in flight may have gone: {v}");
    assert_eq!(not.len(), 2, "{v}");
    assert!(not.iter().all(|t| t.contains("not delivered")), "{v}");
}

// ---- Routes: a queue remembers how each message is to be delivered.

/// Runs `smtp` with `args`, `SMTP_PASSWORD` set to `password` (or unset).
fn smtp_with(args: &[&str], password: Option<&str>) -> std::process::Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_smtp"));
    c.args(args).env_remove("SMTP_PASSWORD");
    if let Some(p) = password {
        c.env("SMTP_PASSWORD", p);
    }
    c.output().unwrap()
}

fn all_of(out: &std::process::Output) -> String {
    format!(
        "status {:?}\n{}\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn subjects_of(messages: &[smtp_testkit::capture::Received]) -> Vec<String> {
    messages
        .iter()
        .map(|m| {
            String::from_utf8_lossy(&m.data)
                .lines()
                .find_map(|l| l.strip_prefix("Subject: "))
                .unwrap_or_default()
                .to_owned()
        })
        .collect()
}

/// The new user's report: a password reset enqueued for the TLS+AUTH
/// relay account, then a mail merge (and a `queue run`) through another,
/// plaintext relay on the same queue. The reset never goes through the
/// second relay; both commands say it waits for its route; a `queue run`
/// with the first account delivers it there, over TLS, authenticated.
#[test]
fn a_message_goes_only_through_the_relay_and_policy_it_was_enqueued_for() {
    use smtp_testkit::capture::{CaptureConfig, CaptureServer};
    use smtp_testkit::certs::Identity;
    let rt = runtime();
    let secure = rt
        .block_on(CaptureServer::start(CaptureConfig {
            tls: Some(Identity::self_signed(&["relay.test"])),
            auth: Some(("alice".into(), "pw".into())),
            require_auth: true,
            ..CaptureConfig::default()
        }))
        .unwrap();
    let plain = rt
        .block_on(CaptureServer::start(CaptureConfig::default()))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let q = dir.path().join("q");
    let queue = format!("--queue={}", q.display());
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[accounts.relay]\nserver = \"127.0.0.1:{}\"\ntls = \"required\"\nuser = \"alice\"\n",
            secure.addr().port()
        ),
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let route = format!(
        "relay:127.0.0.1:{}:alice tls=required",
        secure.addr().port()
    );

    // 1. Enqueued for the account; no password needed to enqueue.
    let out = smtp_with(
        &[
            "send",
            &queue,
            "--queue-only",
            "--config",
            config,
            "--account",
            "relay",
            "--from",
            "app@example.com",
            "--to",
            "user@example.net",
            "--subject",
            "password reset",
            "--body",
            "your link",
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(0), "{}", all_of(&out));

    // 2. A merge through the plaintext relay, on the same queue.
    let list = dir.path().join("small.csv");
    std::fs::write(&list, "email,name\np1@example.net,P1\np2@example.net,P2\n").unwrap();
    let plain_addr = plain.addr().to_string();
    let out = smtp_with(
        &[
            "send",
            "--merge",
            list.to_str().unwrap(),
            "--from",
            "news@example.com",
            "--subject",
            "news for {{name}}",
            "--body",
            "Dear {{name}}.",
            &queue,
            "--server",
            &plain_addr,
            "--tls",
            "none",
            "--linger",
            "2",
        ],
        None,
    );
    let text = all_of(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    let mut got = subjects_of(&plain.messages());
    got.sort();
    assert_eq!(got, ["news for P1", "news for P2"], "{text}");
    assert_eq!(
        text.matches("wait for another route").count()
            + text.matches("waits for another route").count(),
        1,
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "1 message in this queue waits for another route: {route}"
        )),
        "{text}"
    );
    // Its report counts its own two messages only.
    assert!(text.contains("merge of 2 messages: 2 delivered"), "{text}");

    // 3. `queue run` through the plaintext relay leaves it too, and says so.
    let out = smtp_with(
        &[
            "queue",
            "run",
            &queue,
            "--server",
            &plain_addr,
            "--tls",
            "none",
        ],
        None,
    );
    let text = all_of(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains(&format!("waits for another route: {route}")),
        "{text}"
    );
    assert_eq!(plain.messages().len(), 2, "{text}");
    assert!(secure.messages().is_empty());

    // list, show and stats name each message's route.
    let out = smtp_with(&["queue", "list", &queue, "--json"], None);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let routes: Vec<&str> = v["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["route"].as_str().unwrap())
        .collect();
    let plain_route = format!("relay:127.0.0.1:{} tls=none", plain.addr().port());
    assert_eq!(routes, [route.as_str(), &plain_route, &plain_route], "{v}");
    let reset = v["messages"][0]["id"].as_str().unwrap().to_owned();
    let out = smtp_with(&["queue", "show", &queue, &reset], None);
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains(&format!("route: {route}")), "{shown}");
    let out = smtp_with(&["queue", "stats", &queue, "--json"], None);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["routes"][0]["route"], route.as_str(), "{v}");
    assert_eq!(v["routes"][0]["waiting_messages"], 1, "{v}");
    assert_eq!(v["routes"][0]["due_messages"], 1, "{v}");

    // 4. The first account's run delivers it there, over TLS, with AUTH.
    let out = smtp_with(
        &[
            "queue",
            "run",
            &queue,
            "--config",
            config,
            "--account",
            "relay",
        ],
        Some("pw"),
    );
    let text = all_of(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(!text.contains("another route"), "{text}");
    let received = secure.messages();
    assert_eq!(subjects_of(&received), ["password reset"], "{text}");
    assert!(received[0].tls, "{received:?}");
    assert_eq!(received[0].auth_user.as_deref(), Some("alice"));
    assert_eq!(plain.messages().len(), 2);
}
