//! `smtp queue run --watch` as a service: its log (JSON lines on stderr),
//! its Prometheus metrics (`--metrics`), a clean stop on SIGTERM, and no
//! secret in the log. Real processes, real sockets on 127.0.0.1.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use smtp_core::delivery::MemoryBody;
use smtp_queue::{Body, MessageOptions, NewMessage, SqliteStore, Store};
use smtp_testkit::capture::{CaptureConfig, CaptureServer};

const BIN: &str = env!("CARGO_BIN_EXE_smtp");

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Enqueues one message per `(recipient, age)`, as if enqueued `age` ago.
fn enqueue(rt: &tokio::runtime::Runtime, dir: &Path, messages: &[(&str, Duration)]) {
    rt.block_on(async {
        let store = SqliteStore::open(dir).await.unwrap();
        for (to, age) in messages {
            let message = NewMessage {
                from: "a@example.com".into(),
                to: vec![(*to).to_owned()],
                body: Body::Source(Box::new(MemoryBody::new(
                    "Subject: s\r\n\r\nservice test\r\n",
                ))),
                options: MessageOptions::default(),
            };
            store
                .enqueue(vec![message], SystemTime::now() - *age)
                .await
                .unwrap();
        }
    });
}

/// The lines a child writes on stderr, collected as they come.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<String>>>);

impl Lines {
    fn follow(child: &mut Child) -> Self {
        let lines = Self::default();
        let stderr = child.stderr.take().unwrap();
        let shared = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                shared.0.lock().unwrap().push(line);
            }
        });
        lines
    }

    fn all(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }

    /// Waits until `done` holds of the lines so far, or panics after `limit`.
    fn wait(&self, limit: Duration, what: &str, done: impl Fn(&[String]) -> bool) {
        let start = Instant::now();
        while !done(&self.all()) {
            assert!(
                start.elapsed() < limit,
                "{what}: not within {limit:?}; stderr:\n{}",
                self.all().join("\n")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn parse(line: &str) -> serde_json::Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"))
}

fn delivery_lines(lines: &[String]) -> Vec<serde_json::Value> {
    lines
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "smtp_queue::delivery")
        .collect()
}

/// `GET path` over a real connection; the whole response.
fn http_get(addr: &str, path: &str) -> String {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

/// The value of the sample `series` (name and labels, as printed).
fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no sample {series} in:\n{metrics}"))
        .parse()
        .unwrap()
}

fn sigterm(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Waits for the child's exit, at most `limit`.
fn exit_code(child: &mut Child, limit: Duration) -> Option<i32> {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn queue_run_watch_logs_json_serves_metrics_and_stops_cleanly_on_sigterm() {
    let rt = runtime();
    let server = rt
        .block_on(CaptureServer::start(CaptureConfig {
            reject: vec![
                ("bad@example.net".into(), "550 5.1.1 no such user".into()),
                ("later@example.net".into(), "451 4.2.0 try later".into()),
            ],
            ..CaptureConfig::default()
        }))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let q = dir.path().join("q");
    enqueue(
        &rt,
        &q,
        &[
            ("good@example.net", Duration::from_secs(60)),
            ("bad@example.net", Duration::ZERO),
            ("later@example.net", Duration::from_secs(120)),
        ],
    );
    let relay = server.addr().to_string();
    let mut child = Command::new(BIN)
        .args(["queue", "run", "--watch", "--queue", q.to_str().unwrap()])
        .args(["--server", &relay, "--tls", "none", "--helo", "client.test"])
        .args(["--metrics", "127.0.0.1:0", "--log-format", "json"])
        .args(["--retry-first", "3600", "--stop-grace", "2"])
        .env_remove("SMTP_PASSWORD")
        .env_remove("SMTP_LOG")
        .env("XDG_CONFIG_HOME", dir.path().join("none"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = Lines::follow(&mut child);

    // The bound address, told at start.
    lines.wait(Duration::from_secs(20), "the metrics address", |l| {
        l.iter().any(|l| l.contains("\"smtp_cli::metrics\""))
    });
    let address = lines
        .all()
        .iter()
        .map(|l| parse(l))
        .find(|v| v["target"] == "smtp_cli::metrics")
        .and_then(|v| v["address"].as_str().map(str::to_owned))
        .expect("the address is a field");
    lines.wait(Duration::from_secs(20), "three delivery lines", |l| {
        delivery_lines(l).len() >= 3
    });

    // The delivery lines: one per outcome, with what happened.
    let deliveries = delivery_lines(&lines.all());
    assert_eq!(deliveries.len(), 3, "{deliveries:?}");
    let destination = format!("relay:{relay}");
    let line_of = |rcpt: &str| {
        deliveries
            .iter()
            .find(|v| v["recipient"] == rcpt)
            .unwrap_or_else(|| panic!("no line for {rcpt}: {deliveries:?}"))
            .clone()
    };
    for (rcpt, outcome, code, enhanced) in [
        ("good@example.net", "delivered", 250, None),
        ("bad@example.net", "failed", 550, Some("5.1.1")),
        ("later@example.net", "deferred", 451, Some("4.2.0")),
    ] {
        let v = line_of(rcpt);
        assert_eq!(v["level"], "INFO", "{v}");
        assert!(v["timestamp"].is_string(), "{v}");
        assert_eq!(v["message"], outcome, "{v}");
        assert_eq!(v["outcome"], outcome, "{v}");
        assert_eq!(v["destination"], destination, "{v}");
        assert_eq!(v["code"], code, "{v}");
        if let Some(enhanced) = enhanced {
            assert_eq!(v["enhanced_code"], enhanced, "{v}");
        }
        assert_eq!(v["message_id"].as_str().map(str::len), Some(28), "{v}");
        assert_eq!(v["host"], relay, "{v}");
        assert_eq!(v["attempts"], 1, "{v}");
        assert_eq!(v["taken_over"], false, "{v}");
        assert!(v["reply"].is_string(), "{v}");
        assert_eq!(v["next_attempt_ms"].is_u64(), outcome == "deferred", "{v}");
    }
    assert_eq!(line_of("bad@example.net")["reply"], "no such user");
    let retry_in = line_of("later@example.net")["retry_in_s"].as_u64().unwrap();
    assert!((3000..=4400).contains(&retry_in), "{retry_in}");

    // The metrics, scraped over TCP.
    let response = http_get(&address, "/metrics");
    let (head, metrics) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(
        head.contains("Content-Type: text/plain; version=0.0.4"),
        "{head}"
    );
    for (outcome, n) in [("delivered", 1.0), ("failed", 1.0), ("deferred", 1.0)] {
        let series = format!(
            "smtp_queue_outcomes_total{{destination=\"{destination}\",outcome=\"{outcome}\"}}"
        );
        assert_eq!(sample(metrics, &series), n, "{metrics}");
    }
    for (state, n) in [
        ("queued", 0.0),
        ("delivering", 0.0),
        ("delivered", 1.0),
        ("failed", 1.0),
        ("deferred", 1.0),
        ("expired", 0.0),
    ] {
        let series = format!("smtp_queue_recipients{{state=\"{state}\"}}");
        assert_eq!(sample(metrics, &series), n, "{metrics}");
    }
    assert_eq!(sample(metrics, "smtp_queue_messages"), 3.0);
    // The deferred message was enqueued 120 s ago: the queue's age.
    let age = sample(metrics, "smtp_queue_oldest_waiting_age_seconds");
    assert!((120.0..600.0).contains(&age), "{age}");
    // The delivered one took 60 s and a little from its enqueue.
    assert_eq!(
        sample(metrics, "smtp_queue_delivery_latency_seconds_count"),
        1.0
    );
    assert_eq!(
        sample(
            metrics,
            "smtp_queue_delivery_latency_seconds_bucket{le=\"15\"}"
        ),
        0.0
    );
    assert_eq!(
        sample(
            metrics,
            "smtp_queue_delivery_latency_seconds_bucket{le=\"300\"}"
        ),
        1.0
    );
    assert!(http_get(&address, "/").starts_with("HTTP/1.1 404 "));

    // SIGTERM: a clean stop, exit 0, told in the log.
    sigterm(&child);
    assert_eq!(exit_code(&mut child, Duration::from_secs(15)), Some(0));
    lines.wait(Duration::from_secs(5), "the stop in the log", |l| {
        l.iter().any(|l| l.contains("\"stopped\""))
    });
    let all = lines.all();
    for line in &all {
        let v = parse(line);
        assert!(
            v["timestamp"].is_string() && v["level"].is_string() && v["target"].is_string(),
            "{line}"
        );
    }
    assert!(
        all.iter().any(|l| l.contains("\"signal\":\"SIGTERM\"")),
        "{all:?}"
    );
    // The log tells the outcomes; the per-outcome lines on stdout are not
    // printed besides.
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    assert_eq!(stdout, "", "no outcome lines besides the log");
    // Nothing was sent twice, and the 4xx one waits.
    let got = server.messages();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].rcpt_to, ["good@example.net"]);
}

/// The password, with the characters that logs escape (`"` and `\`).
const PASSWORD: &str = "c0rrect\"horse\\battery-77";

/// A relay that echoes AUTH PLAIN's payload and the password back in its
/// refusal, as a careless server might: the reply text is logged (the
/// held destination's reason, the session's failure), so only the log's
/// redaction keeps the secret out.
fn echoing_relay(rt: &tokio::runtime::Runtime) -> smtp_testkit::script::ScriptedServer {
    use base64::Engine;
    let plain = base64::engine::general_purpose::STANDARD.encode(format!("\0alice\0{PASSWORD}"));
    let script = smtp_testkit::script::Script::parse(&format!(
        "S: 220 echo.test\nC: EHLO *\nS: 250-echo.test\nS: 250 AUTH PLAIN\nC: AUTH PLAIN *\n\
         S: 535 5.7.8 you sent {PASSWORD} as {plain}\nC: QUIT\nS: 221 bye\n"
    ))
    .unwrap();
    rt.block_on(smtp_testkit::script::ScriptedServer::start(script, None))
        .unwrap()
}

/// Runs `smtp queue run` once against an echoing relay with the password
/// in `SMTP_PASSWORD`; returns its stdout and stderr.
fn run_with_password(format: Option<&str>, filter: Option<&str>) -> (String, String) {
    let rt = runtime();
    let server = echoing_relay(&rt);
    let dir = tempfile::tempdir().unwrap();
    let q = dir.path().join("q");
    enqueue(&rt, &q, &[("b@example.net", Duration::ZERO)]);
    let mut c = Command::new(BIN);
    c.args(["queue", "run", "--queue", q.to_str().unwrap()])
        .args(["--server", &server.addr().to_string(), "--tls", "none"])
        .args([
            "--auth",
            "plain",
            "--user",
            "alice",
            "--helo",
            "client.test",
        ])
        .env("SMTP_PASSWORD", PASSWORD)
        .env("XDG_CONFIG_HOME", dir.path().join("none"))
        .env_remove("SMTP_LOG");
    if let Some(format) = format {
        c.args(["--log-format", format]);
    }
    if let Some(filter) = filter {
        c.env("SMTP_LOG", filter);
    }
    let out = c.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    // Refused authentication holds the destination; the recipient waits.
    assert_eq!(out.status.code(), Some(75), "{stderr}");
    (String::from_utf8_lossy(&out.stdout).into_owned(), stderr)
}

fn assert_no_secret(what: &str, text: &str) {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let forms = [
        PASSWORD.to_owned(),
        serde_json::to_string(PASSWORD)
            .unwrap()
            .trim_matches('"')
            .to_owned(),
        format!("{PASSWORD:?}").trim_matches('"').to_owned(),
        b64.encode(PASSWORD),
        b64.encode(format!("\0alice\0{PASSWORD}")),
        "c0rrect".to_owned(),
    ];
    for form in forms {
        assert!(!text.contains(&form), "{what} shows {form:?}:\n{text}");
    }
}

#[test]
fn a_relay_password_never_reaches_the_log_in_text_or_json_nor_with_the_transcript() {
    // The default level, text.
    let (out, err) = run_with_password(Some("text"), None);
    assert!(err.contains("destination held"), "{err}");
    assert!(err.contains("you sent <redacted> as <redacted>"), "{err}");
    assert!(
        !err.contains("smtp_core::transcript"),
        "the transcript is off by default: {err}"
    );
    assert_no_secret("text log", &format!("{out}{err}"));

    // The default level, JSON: every line is JSON, none holds the secret.
    let (out, err) = run_with_password(Some("json"), None);
    for line in err.lines() {
        parse(line);
    }
    assert!(
        err.lines().map(parse).any(|v| v["level"] == "ERROR"
            && v["reason"]
                .as_str()
                .is_some_and(|r| r.contains("you sent <redacted> as <redacted>"))),
        "{err}"
    );
    assert_no_secret("JSON log", &format!("{out}{err}"));

    // Everything, the transcript included, asked for.
    let (out, err) = run_with_password(Some("json"), Some("trace"));
    assert!(
        err.contains("\"target\":\"smtp_core::transcript\""),
        "the transcript is logged when asked: {err}"
    );
    assert!(err.contains("AUTH PLAIN <redacted>"), "{err}");
    assert_no_secret("trace log", &format!("{out}{err}"));
}

#[test]
fn a_one_off_queue_run_prints_outcome_lines_and_logs_nothing_unless_asked() {
    let rt = runtime();
    let server = rt
        .block_on(CaptureServer::start(CaptureConfig::default()))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let q = dir.path().join("q");
    enqueue(&rt, &q, &[("one@example.net", Duration::ZERO)]);
    let out = Command::new(BIN)
        .args(["queue", "run", "--queue", q.to_str().unwrap()])
        .args(["--server", &server.addr().to_string(), "--tls", "none"])
        .env_remove("SMTP_LOG")
        .env_remove("SMTP_PASSWORD")
        .env("XDG_CONFIG_HOME", dir.path().join("none"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with("one@example.net: delivered (250"),
        "{stdout}"
    );
    assert_eq!(String::from_utf8_lossy(&out.stderr), "", "no log");
}

#[test]
fn send_queue_logs_only_when_asked_and_then_keeps_stderr_all_json() {
    let rt = runtime();
    let server = rt
        .block_on(CaptureServer::start(CaptureConfig {
            reject: vec![("later@example.net".into(), "451 4.2.0 try later".into())],
            ..CaptureConfig::default()
        }))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let send = |q: &str, extra: &[&str]| {
        Command::new(BIN)
            .args(["send", "--queue", q, "--server", &server.addr().to_string()])
            .args(["--tls", "none", "--from", "a@example.com"])
            .args(["--to", "now@example.net", "--to", "later@example.net"])
            .args(["--subject", "s", "--body", "b", "--linger", "0"])
            .args(extra)
            .env_remove("SMTP_LOG")
            .env_remove("SMTP_PASSWORD")
            .env("XDG_CONFIG_HOME", dir.path().join("none"))
            .output()
            .unwrap()
    };
    // Not asked: stderr is the report's, no log line.
    let q1 = dir.path().join("q1");
    let out = send(q1.to_str().unwrap(), &[]);
    assert_eq!(out.status.code(), Some(75));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("smtp: later@example.net: deferred"),
        "{stderr}"
    );
    assert!(!stderr.contains("smtp_queue::delivery"), "{stderr}");

    // Asked for JSON: the delivery lines, and the command's own notes as
    // JSON lines too; the report on stdout is as before.
    let q2 = dir.path().join("q2");
    let out = send(q2.to_str().unwrap(), &["--log-format", "json"]);
    assert_eq!(out.status.code(), Some(75));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<serde_json::Value> = stderr.lines().map(parse).collect();
    let outcomes: Vec<_> = lines
        .iter()
        .filter(|v| v["target"] == "smtp_queue::delivery")
        .map(|v| {
            (
                v["recipient"].as_str().unwrap(),
                v["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(outcomes.len(), 2, "{stderr}");
    assert!(
        outcomes.contains(&("now@example.net", "delivered")),
        "{stderr}"
    );
    assert!(
        outcomes.contains(&("later@example.net", "deferred")),
        "{stderr}"
    );
    assert!(
        lines.iter().any(|v| v["target"] == "smtp_cli"
            && v["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("smtp: still queued"))),
        "{stderr}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("now@example.net"), "{stdout}");

    // --log-format goes with --queue only.
    let out = Command::new(BIN)
        .args(["send", "--log-format", "json", "--to", "x@example.net"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
}
