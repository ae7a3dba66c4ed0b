//! `smtp queue …` and `smtp send --queue` as users met them: what they
//! print when a server's reply holds a secret or several lines, enqueueing
//! only (`--queue-only`), why a run delivers nothing (leases, a back-off),
//! a mistyped queue directory, and the exit codes and JSON of the small
//! commands. Real processes, servers on 127.0.0.1.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, SystemTime};

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

/// `smtp ARGS` with no password, log or config from the environment.
fn smtp(args: &[&str]) -> Output {
    smtp_env(args, None)
}

fn smtp_env(args: &[&str], password: Option<&str>) -> Output {
    let mut c = Command::new(BIN);
    c.args(args)
        .env_remove("SMTP_PASSWORD")
        .env_remove("SMTP_LOG")
        .env("XDG_CONFIG_HOME", "/nonexistent/smtp-test-config");
    if let Some(p) = password {
        c.env("SMTP_PASSWORD", p);
    }
    c.output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn both(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        text(&out.stdout),
        text(&out.stderr)
    )
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", both(out)))
}

/// Enqueues one message to each of `to` in the queue at `dir`; their ids.
fn enqueue(rt: &tokio::runtime::Runtime, dir: &Path, to: &[&str]) -> Vec<String> {
    rt.block_on(async {
        let store = SqliteStore::open(dir).await.unwrap();
        let batch = to
            .iter()
            .map(|t| NewMessage {
                from: "a@example.com".into(),
                to: vec![(*t).to_owned()],
                body: Body::Source(Box::new(MemoryBody::new("Subject: s\r\n\r\nbody\r\n"))),
                options: MessageOptions::default(),
            })
            .collect();
        let ids = store.enqueue(batch, SystemTime::now()).await.unwrap();
        ids.iter().map(|i| i.as_str().to_owned()).collect()
    })
}

// ---- 1 and 2: what a server says is printed redacted, on one line, with
// no character that acts on a terminal.

/// The password, with characters that logs escape.
const PASSWORD: &str = "s3cret\"pass\\word-42";

fn plain_b64() -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(format!("\0alice\0{PASSWORD}"))
}

/// A line a server could try to forge into our output.
const FORGED: &str = "c@x.test: delivered (250 2.0.0 ok)";

/// A relay that takes AUTH PLAIN and MAIL, then answers RCPT with a reply
/// of two lines (code `code`): the first echoes the password and AUTH
/// PLAIN's payload, the second is a forged outcome line with a
/// right-to-left mark (U+200F) in it.
fn echoing_relay(rt: &tokio::runtime::Runtime, code: u16) -> smtp_testkit::script::ScriptedServer {
    let enhanced = if code >= 500 { "5.1.1" } else { "4.2.0" };
    let script = smtp_testkit::script::Script::parse(&format!(
        "S: 220 echo.test\nC: EHLO *\nS: 250-echo.test\nS: 250 AUTH PLAIN\n\
         C: AUTH PLAIN *\nS: 235 2.7.0 ok\nC: MAIL FROM:*\nS: 250 2.1.0 ok\n\
         C: RCPT TO:*\nS: {code}-{enhanced} you sent {PASSWORD} as {}\n\
         S: {code} {enhanced} {FORGED}\u{200f}\nC: QUIT\nS: 221 bye\n",
        plain_b64()
    ))
    .unwrap();
    rt.block_on(smtp_testkit::script::ScriptedServer::start(script, None))
        .unwrap()
}

fn assert_no_secret(what: &str, text: &str) {
    for form in [PASSWORD, "s3cret", &plain_b64()] {
        assert!(!text.contains(form), "{what} shows {form:?}:\n{text}");
    }
}

/// No line of `text` is the forged one, and no bidi mark is left.
fn assert_not_forged(what: &str, text: &str) {
    assert!(
        !text.lines().any(|l| l.trim_start().starts_with("c@x.test")),
        "{what}: a server's line passes for ours:\n{text}"
    );
    assert!(!text.contains('\u{200f}'), "{what}: a bidi mark:\n{text}");
}

#[test]
fn queue_run_list_and_show_print_a_reply_redacted_and_on_one_line() {
    let rt = runtime();
    let server = echoing_relay(&rt, 550);
    let dir = tempfile::tempdir().unwrap();
    let q = dir.path().join("q");
    let qs = q.to_str().unwrap();
    let id = enqueue(&rt, &q, &["b@example.net"]).remove(0);
    let addr = server.addr().to_string();
    let run = smtp_env(
        &[
            "queue",
            "run",
            "--queue",
            qs,
            "--server",
            &addr,
            "--tls",
            "none",
            "--auth",
            "plain",
            "--user",
            "alice",
            "--helo",
            "client.test",
        ],
        Some(PASSWORD),
    );
    let all = both(&run);
    // Refused for good: nothing waits, and as for `send`, 69.
    assert_eq!(run.status.code(), Some(69), "{all}");
    let stdout = text(&run.stdout);
    assert!(
        stdout.starts_with("b@example.net: failed (550 you sent <redacted> as <redacted> / "),
        "{all}"
    );
    assert_eq!(stdout.lines().count(), 1, "one line per outcome: {all}");
    assert_no_secret("queue run", &all);
    assert_not_forged("queue run", &all);

    // list and show know no secret, but print the stored text on one line.
    for args in [
        &["queue", "list", "--queue", qs][..],
        &["queue", "show", &id, "--queue", qs],
    ] {
        let out = smtp(args);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", both(&out));
        let stdout = text(&out.stdout);
        assert!(
            stdout.contains("failed attempts=1 550 you sent"),
            "{stdout}"
        );
        assert!(stdout.contains(&format!(" / {FORGED}")), "{stdout}");
        assert_not_forged(&format!("{args:?}"), &stdout);
        // JSON keeps the text as stored (escaped line feed), no bidi mark.
        let mut a = args.to_vec();
        a.push("--json");
        let out = smtp(&a);
        let stdout = text(&out.stdout);
        assert!(stdout.contains(&format!("\\n{FORGED}")), "{stdout}");
        assert!(!stdout.contains('\u{200f}'), "{stdout}");
        json(&out);
    }
}

#[test]
fn send_queue_tells_a_deferral_on_one_line_redacted() {
    let rt = runtime();
    let server = echoing_relay(&rt, 451);
    let dir = tempfile::tempdir().unwrap();
    let q = dir.path().join("q");
    let addr = server.addr().to_string();
    let out = smtp_env(
        &[
            "send",
            "--queue",
            q.to_str().unwrap(),
            "--server",
            &addr,
            "--tls",
            "none",
            "--auth",
            "plain",
            "--user",
            "alice",
            "--helo",
            "client.test",
            "--from",
            "a@example.com",
            "--to",
            "b@example.net",
            "--subject",
            "s",
            "--body",
            "b",
            "--linger",
            "0",
        ],
        Some(PASSWORD),
    );
    let all = both(&out);
    assert_eq!(out.status.code(), Some(75), "{all}");
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("smtp: b@example.net: deferred (451 you sent <redacted> as <redacted> / "),
        "{all}"
    );
    assert_no_secret("send --queue", &all);
    assert_not_forged("send --queue", &all);
}

// ---- 3: --queue-only enqueues and exits; `queue run` delivers.

#[test]
fn send_queue_only_enqueues_without_delivering_and_names_the_run_that_does() {
    let rt = runtime();
    let server = rt
        .block_on(CaptureServer::start(CaptureConfig::default()))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let q = dir.path().join("q");
    let qs = q.to_str().unwrap();
    let addr = server.addr().to_string();
    let send = |extra: &[&str]| {
        let mut a = vec![
            "send",
            "--queue",
            qs,
            "--queue-only",
            "--server",
            &addr,
            "--tls",
            "none",
            "--helo",
            "client.test",
            "--from",
            "a@example.com",
            "--to",
            "b@example.net",
            "--to",
            "c@example.net",
            "--subject",
            "s",
            "--body",
            "b",
        ];
        a.extend(extra);
        smtp(&a)
    };
    // Text: the count and the command; nothing sent.
    let out = send(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    let stdout = text(&out.stdout);
    assert!(
        stdout.starts_with(&format!("queued 1 message (2 recipients) in {qs} as ")),
        "{stdout}"
    );
    let run_line =
        format!("smtp queue run --queue {qs} --server {addr} --tls none --helo client.test");
    assert!(stdout.contains(&run_line), "{stdout}");
    // JSON: the message with its id and recipients, as queued.
    let out = send(&["--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    let v = json(&out);
    assert_eq!(v["summary"]["messages"], 1, "{v}");
    assert_eq!(v["summary"]["recipients"], 2, "{v}");
    assert_eq!(v["run"], run_line.as_str(), "{v}");
    let m = &v["messages"][0];
    let id = m["id"].as_str().unwrap();
    assert_eq!(id.len(), 28, "{v}");
    assert_eq!(m["from"], "a@example.com", "{v}");
    assert_eq!(m["recipients"][0]["address"], "b@example.net", "{v}");
    assert_eq!(m["recipients"][1]["state"], "queued", "{v}");
    let shown = json(&smtp(&["queue", "show", id, "--queue", qs, "--json"]));
    assert_eq!(shown["recipients"][1]["state"], "queued", "{shown}");
    assert!(server.messages().is_empty(), "nothing delivered");
    let stats = json(&smtp(&["queue", "stats", "--queue", qs, "--json"]));
    assert_eq!(stats["recipients"]["queued"], 4, "{stats}");

    // The printed command delivers them.
    let words: Vec<&str> = run_line.split(' ').skip(1).collect();
    let run = smtp(&words);
    assert_eq!(run.status.code(), Some(0), "{}", both(&run));
    assert_eq!(server.messages().len(), 2);
    let stats = json(&smtp(&["queue", "stats", "--queue", qs, "--json"]));
    assert_eq!(stats["recipients"]["delivered"], 4, "{stats}");

    // The password is for the run: enqueueing does not read it.
    let out = send(&[
        "--user",
        "alice",
        "--password-env",
        "SMTP_TEST_UNSET_PASSWORD",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    assert!(
        text(&out.stdout).contains("--user alice --password-env SMTP_TEST_UNSET_PASSWORD"),
        "{}",
        both(&out)
    );
    // It needs --queue.
    let out = smtp(&["send", "--queue-only", "--to", "b@example.net"]);
    assert_eq!(out.status.code(), Some(64), "{}", both(&out));
}

// ---- 4: a run that delivers nothing says why.

#[test]
fn queue_run_says_when_recipients_are_leased_by_another_run() {
    let rt = runtime();
    let server = rt
        .block_on(CaptureServer::start(CaptureConfig::default()))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let q = dir.path().join("q");
    enqueue(&rt, &q, &["b@example.net", "c@example.net"]);
    // A run killed while it held them: their lease runs for an hour.
    let until = rt.block_on(async {
        let store = SqliteStore::open(&q).await.unwrap();
        let claimed = store
            .claim_due(SystemTime::now(), 10, "killed", Duration::from_secs(3600))
            .await
            .unwrap();
        assert_eq!(claimed.len(), 2);
        claimed[0].lease.until
    });
    let until = smtp_queue::time::rfc3339(until);
    let run = smtp(&[
        "queue",
        "run",
        "--queue",
        q.to_str().unwrap(),
        "--server",
        &server.addr().to_string(),
        "--tls",
        "none",
    ]);
    let all = both(&run);
    assert_eq!(run.status.code(), Some(75), "{all}");
    let stderr = text(&run.stderr);
    assert!(stderr.contains("smtp: 2 recipients leased"), "{all}");
    assert!(stderr.contains(&until[..16]), "until {until}: {all}");
    assert!(server.messages().is_empty());
    // list shows the lease too.
    let list = smtp(&["queue", "list", "--queue", q.to_str().unwrap()]);
    assert!(
        text(&list.stdout).contains("delivering attempts=0 leased-until="),
        "{}",
        both(&list)
    );
    // As mailq: the arrival time on the message's line, and totals.
    let listed = text(&list.stdout);
    let first = listed.lines().next().unwrap_or_default();
    assert_eq!(
        first.split(' ').count(),
        4,
        "id size arrival sender: {listed}"
    );
    assert!(first.split(' ').nth(2).unwrap().ends_with('Z'), "{listed}");
    assert!(
        listed.ends_with("-- 2 messages, 2 recipients (0 waiting, 2 being delivered), 1 KiB\n"),
        "{listed}"
    );
    // retry cannot make them due, and says why rather than "0 due now".
    let retry = smtp(&["queue", "retry", "--all", "--queue", q.to_str().unwrap()]);
    let all = both(&retry);
    assert_eq!(retry.status.code(), Some(0), "{all}");
    assert!(
        text(&retry.stdout).contains("0 recipients due now"),
        "{all}"
    );
    assert!(
        text(&retry.stderr).contains("2 recipients are leased by a run"),
        "{all}"
    );
}

#[test]
fn queue_run_names_the_relay_s_back_off_and_retry_clears_it() {
    let rt = runtime();
    let server = rt
        .block_on(CaptureServer::start(CaptureConfig::default()))
        .unwrap();
    let addr = server.addr().to_string();
    let dir = tempfile::tempdir().unwrap();
    let q = dir.path().join("q");
    let qs = q.to_str().unwrap();
    let id = enqueue(&rt, &q, &["b@example.net"]).remove(0);
    let key = format!("relay:{addr}");
    rt.block_on(async {
        let store = SqliteStore::open(&q).await.unwrap();
        let now = SystemTime::now();
        store
            .set_backoff(
                &key,
                now + Duration::from_secs(3600),
                "unreachable in a test",
                now,
            )
            .await
            .unwrap();
    });
    let run = || {
        smtp(&[
            "queue", "run", "--queue", qs, "--server", &addr, "--tls", "none",
        ])
    };
    let out = run();
    let all = both(&out);
    assert_eq!(out.status.code(), Some(75), "{all}");
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!("smtp: {key} is backed off until ")),
        "{all}"
    );
    assert!(stderr.contains("unreachable in a test"), "{all}");
    assert!(stderr.contains("smtp queue retry --all"), "{all}");
    assert!(
        stderr.contains("smtp: 1 recipient waits; next attempt in 3"),
        "{all}"
    );
    assert!(server.messages().is_empty());

    // A retry of the message alone leaves the back-off, and says so.
    let retry = smtp(&["queue", "retry", &id, "--queue", qs]);
    assert_eq!(retry.status.code(), Some(0), "{}", both(&retry));
    assert_eq!(text(&retry.stdout), "1 recipient due now\n");
    assert!(
        text(&retry.stderr).contains("--all` clears every back-off"),
        "{}",
        both(&retry)
    );
    assert_eq!(run().status.code(), Some(75));
    assert!(server.messages().is_empty());

    // With the relay named, its back-off goes too; the next run delivers.
    let retry = smtp(&[
        "queue", "retry", &id, "--queue", qs, "--server", &addr, "--json",
    ]);
    let v = json(&retry);
    assert_eq!(v["retried"], 1, "{v}");
    assert_eq!(v["backoff_cleared"], key.as_str(), "{v}");
    let out = run();
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    assert_eq!(server.messages().len(), 1);
}

// ---- 5, 6, 8: a mistyped directory, a message file taken for one, and
// the small commands' codes and JSON.

#[test]
fn commands_on_a_directory_without_a_queue_refuse_and_create_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("typo");
    let m = missing.to_str().unwrap();
    let id = "018bcfe568e8a3f1c2d4e5f60718";
    for args in [
        &["queue", "list", "--queue", m][..],
        &["queue", "show", id, "--queue", m],
        &["queue", "stats", "--queue", m],
        &["queue", "delete", id, "--queue", m],
        &["queue", "purge", "--queue", m],
        &["queue", "retry", "--all", "--queue", m],
        &[
            "queue",
            "run",
            "--queue",
            m,
            "--server",
            "127.0.0.1:9",
            "--tls",
            "none",
        ],
    ] {
        let out = smtp(args);
        assert_eq!(out.status.code(), Some(66), "{args:?}: {}", both(&out));
        assert!(
            text(&out.stderr).contains("no queue in"),
            "{args:?}: {}",
            both(&out)
        );
        assert!(!missing.exists(), "{args:?} created {m}");
    }
    // An existing directory without a queue: the same.
    let out = smtp(&[
        "queue",
        "stats",
        "--queue",
        dir.path().to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(66), "{}", both(&out));
    assert_eq!(json(&out)["error"]["kind"], "no-queue");
    assert!(!dir.path().join("queue.db").exists());
}

#[test]
fn a_message_file_after_a_bare_queue_flag_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("m1.eml");
    std::fs::write(
        &file,
        "From: a@example.com\r\nTo: b@example.net\r\n\r\nhi\r\n",
    )
    .unwrap();
    let out = smtp(&[
        "send",
        "--server",
        "127.0.0.1:9",
        "--tls",
        "none",
        "-t",
        "--queue",
        file.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(64), "{}", both(&out));
    assert!(
        text(&out.stderr).contains("write --queue=DIR"),
        "{}",
        both(&out)
    );
}

#[test]
fn show_delete_and_retry_of_an_unknown_id_exit_66_with_json_errors() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let q = dir.path().join("q");
    let qs = q.to_str().unwrap();
    let id = enqueue(&rt, &q, &["b@example.net"]).remove(0);
    let unknown = "018bcfe568e8a3f1c2d4e5f60718";
    for command in ["show", "delete", "retry"] {
        let out = smtp(&["queue", command, unknown, "--queue", qs]);
        assert_eq!(out.status.code(), Some(66), "{command}: {}", both(&out));
        let out = smtp(&["queue", command, unknown, "--queue", qs, "--json"]);
        assert_eq!(out.status.code(), Some(66), "{command}: {}", both(&out));
        let v = json(&out);
        assert_eq!(v["error"]["kind"], "not-found", "{command}: {v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(unknown),
            "{v}"
        );
    }
    // A bad id is a usage error, as JSON too.
    let out = smtp(&["queue", "show", "nonsense", "--queue", qs, "--json"]);
    assert_eq!(out.status.code(), Some(64), "{}", both(&out));
    assert_eq!(json(&out)["error"]["kind"], "usage");
    // Deleted: one object.
    let out = smtp(&["queue", "delete", &id, "--queue", qs, "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    assert_eq!(
        json(&out),
        serde_json::json!({ "deleted": [id], "not_found": [] })
    );
}

#[test]
fn delete_takes_several_ids_and_removes_the_others_when_one_is_not_there() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let q = dir.path().join("q");
    let qs = q.to_str().unwrap();
    let ids = enqueue(
        &rt,
        &q,
        &[
            "b@example.net",
            "c@example.net",
            "d@example.net",
            "e@example.net",
        ],
    );
    let unknown = "018bcfe568e8a3f1c2d4e5f60718";
    let messages = || json(&smtp(&["queue", "stats", "--queue", qs, "--json"]))["messages"].clone();

    // An id that is not one: nothing is removed.
    let out = smtp(&["queue", "delete", &ids[0], "nonsense", "--queue", qs]);
    assert_eq!(out.status.code(), Some(64), "{}", both(&out));
    assert_eq!(messages(), 4);

    // Each removed is said on stdout, the one not there on stderr; 66.
    let out = smtp(&["queue", "delete", &ids[0], unknown, &ids[1], "--queue", qs]);
    assert_eq!(out.status.code(), Some(66), "{}", both(&out));
    assert_eq!(
        text(&out.stdout),
        format!("deleted {}\ndeleted {}\n", ids[0], ids[1])
    );
    assert!(
        text(&out.stderr).contains(&format!("smtp: no message {unknown} in the queue")),
        "{}",
        both(&out)
    );
    assert_eq!(messages(), 2);

    // JSON: one object listing both, with the error.
    let out = smtp(&["queue", "delete", &ids[2], &ids[0], "--queue", qs, "--json"]);
    assert_eq!(out.status.code(), Some(66), "{}", both(&out));
    let v = json(&out);
    assert_eq!(v["deleted"], serde_json::json!([ids[2]]), "{v}");
    assert_eq!(v["not_found"], serde_json::json!([ids[0]]), "{v}");
    assert_eq!(v["error"]["kind"], "not-found", "{v}");
    assert_eq!(messages(), 1);

    // All there: 0, a line each.
    let out = smtp(&["queue", "delete", &ids[3], "--queue", qs]);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    assert_eq!(text(&out.stdout), format!("deleted {}\n", ids[3]));
    assert_eq!(messages(), 0);
}

/// A queue at `dir` whose messages reached each state at a known time:
/// `old-delivered` and `old-failed` finished 10 days ago, `half-done` has
/// one recipient delivered then and one deferred, `recent` was delivered
/// a minute ago, `waiting` was never tried. Their ids by those names.
fn purgeable_queue(
    rt: &tokio::runtime::Runtime,
    dir: &Path,
) -> std::collections::HashMap<&'static str, String> {
    use smtp_queue::{Attempt, Outcome};
    rt.block_on(async {
        let store = SqliteStore::open(dir).await.unwrap();
        let now = SystemTime::now();
        let long_ago = now - Duration::from_secs(10 * 86_400);
        let names = [
            "old-delivered",
            "old-failed",
            "half-done",
            "recent",
            "waiting",
        ];
        let batch = names
            .iter()
            .map(|name| NewMessage {
                from: "a@example.com".into(),
                to: if *name == "half-done" {
                    vec!["x@example.net".into(), "y@example.net".into()]
                } else {
                    vec![format!("{name}@example.net")]
                },
                body: Body::Source(Box::new(MemoryBody::new("Subject: s\r\n\r\nbody\r\n"))),
                options: MessageOptions::default(),
            })
            .collect();
        let ids = store.enqueue(batch, long_ago).await.unwrap();
        let claimed = store
            .claim_due(long_ago, 10, "test", Duration::from_secs(30 * 86_400))
            .await
            .unwrap();
        let reply = |code: u16| Attempt {
            code: Some(code),
            text: "as told".into(),
            ..Attempt::default()
        };
        assert_eq!(claimed.len(), names.len());
        for c in &claimed {
            let name = names[ids.iter().position(|i| *i == c.lease.message).unwrap()];
            let first = c.recipients[0].id;
            let (outcomes, at) = match name {
                "old-delivered" => (vec![(first, Outcome::Delivered(reply(250)))], long_ago),
                "old-failed" => (vec![(first, Outcome::Failed(reply(550)))], long_ago),
                "half-done" => (
                    vec![
                        (first, Outcome::Delivered(reply(250))),
                        (
                            c.recipients[1].id,
                            Outcome::Deferred {
                                attempt: reply(451),
                                next: now + Duration::from_secs(3600),
                            },
                        ),
                    ],
                    long_ago,
                ),
                "recent" => (
                    vec![(first, Outcome::Delivered(reply(250)))],
                    now - Duration::from_secs(60),
                ),
                _ => {
                    store.release(&c.lease, None, long_ago).await.unwrap();
                    continue;
                }
            };
            store.record(&c.lease, outcomes, at).await.unwrap();
        }
        names
            .into_iter()
            .zip(ids.iter().map(|i| i.as_str().to_owned()))
            .collect()
    })
}

#[test]
fn purge_removes_finished_messages_older_than_asked_and_keeps_the_rest() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let q = dir.path().join("q");
    let qs = q.to_str().unwrap();
    let ids = purgeable_queue(&rt, &q);
    let left = || {
        let v = json(&smtp(&["queue", "list", "--queue", qs, "--json"]));
        let mut left: Vec<String> = v["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_owned())
            .collect();
        left.sort();
        left
    };
    let ids_of = |names: &[&str]| {
        let mut v: Vec<String> = names.iter().map(|n| ids[n].clone()).collect();
        v.sort();
        v
    };

    // Finished more than 7 days ago: the delivered and the failed one.
    let out = smtp(&["queue", "purge", "--older-than", "7d", "--queue", qs]);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    assert_eq!(text(&out.stdout), "purged 2 finished messages\n");
    assert_eq!(left(), ids_of(&["half-done", "recent", "waiting"]));

    // Nothing more finished that long ago.
    let out = smtp(&[
        "queue",
        "purge",
        "--older-than",
        "7d",
        "--queue",
        qs,
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    assert_eq!(json(&out), serde_json::json!({ "purged": 0, "ids": [] }));

    // Without --older-than: every finished message, however recent; a
    // message with a recipient still waiting is not finished.
    let out = smtp(&["queue", "purge", "--queue", qs, "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    assert_eq!(
        json(&out),
        serde_json::json!({ "purged": 1, "ids": [ids["recent"]] })
    );
    assert_eq!(left(), ids_of(&["half-done", "waiting"]));
}

#[test]
fn queue_run_help_says_it_delivers_directly_without_a_relay() {
    let out = smtp(&["queue", "--help"]);
    let help = text(&out.stdout);
    assert!(help.contains("directly to each domain's MX"), "{help}");
}

#[test]
fn a_named_plain_mechanism_without_tls_is_warned_about_before_the_queue_runs() {
    let dir = tempfile::tempdir().unwrap();
    let queue = dir.path().join("q");
    // Nothing listens there: the warning comes before any connection.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let server = format!("127.0.0.1:{port}");
    let q = format!("--queue={}", queue.display());
    let args = [
        "send",
        &q,
        "--server",
        &server,
        "--tls",
        "none",
        "--user",
        "u",
        "--from",
        "a@example.org",
        "--to",
        "b@example.net",
        "--subject",
        "s",
        "--body",
        "b",
        "--linger",
        "0",
    ];
    let mut plain = args.to_vec();
    plain.extend(["--auth", "plain"]);
    let out = smtp_env(&plain, Some("S3cr3t-Pw"));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("warning:") && stderr.contains("readable"),
        "{}",
        both(&out)
    );
    assert!(!stderr.contains("S3cr3t-Pw"), "{}", both(&out));
    // Chosen automatically, no plaintext mechanism is used: no warning.
    let out = smtp_env(&args, Some("S3cr3t-Pw"));
    assert!(!text(&out.stderr).contains("readable"), "{}", both(&out));
}

// ---- `queue run`'s exit code is `send`'s for what the run recorded, and
// its `--json` one object.

#[test]
fn queue_run_exits_as_send_does_for_what_it_recorded_and_prints_one_json_object() {
    let rt = runtime();
    let relay = rt
        .block_on(CaptureServer::start(CaptureConfig {
            reject: vec![
                ("nobody@example.net".into(), "550 5.1.1 no such user".into()),
                (
                    "later@example.net".into(),
                    "451 4.7.1 try again later".into(),
                ),
            ],
            ..CaptureConfig::default()
        }))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let q = dir.path().join("q");
    let qs = q.to_str().unwrap();
    let addr = relay.addr().to_string();
    let run = |extra: &[&str]| {
        let mut a = vec![
            "queue", "run", "--queue", qs, "--server", &addr, "--tls", "none",
        ];
        a.extend(extra);
        smtp(&a)
    };

    // One delivered, one refused for good: 69, as `send` exits.
    let ids = enqueue(&rt, &q, &["bob@example.net", "nobody@example.net"]);
    let out = run(&["--json"]);
    let v = json(&out);
    assert_eq!(out.status.code(), Some(69), "{}", both(&out));
    assert_eq!(
        v["summary"],
        serde_json::json!({"messages": 2, "accepted": 1, "rejected": 1, "deferred": 0}),
        "{v}"
    );
    assert_eq!(
        v["recorded"],
        serde_json::json!({"delivered": 1, "failed": 1, "deferred": 0, "expired": 0}),
        "{v}"
    );
    let messages = v["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 2, "{v}");
    let nobody = messages
        .iter()
        .find(|m| m["message"] == ids[1].as_str())
        .map(|m| &m["recipients"][0])
        .unwrap_or_else(|| panic!("no message {}: {v}", ids[1]));
    assert_eq!(nobody["address"], "nobody@example.net", "{v}");
    assert_eq!(nobody["status"], "rejected", "{v}");
    assert_eq!(nobody["code"], 550, "{v}");
    assert_eq!(nobody["enhanced_code"], "5.1.1", "{v}");
    assert_eq!(v["held"], serde_json::json!([]), "{v}");
    assert_eq!((&v["waiting"], &v["leased"]), (&0.into(), &0.into()), "{v}");
    assert!(v["next_attempt"].is_null(), "{v}");
    assert!(v["error"].is_null(), "{v}");
    assert_eq!(v["version"], 1, "{v}");
    // Nothing but the object on stdout; no outcome lines.
    assert!(
        text(&out.stdout).trim_start().starts_with('{'),
        "{}",
        both(&out)
    );

    // A run with nothing to do: those failures are not its own.
    let out = run(&["--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    assert_eq!(json(&out)["messages"], serde_json::json!([]));

    // Expired: 69 too (the text output says so).
    enqueue(&rt, &q, &["later@example.net"]);
    let out = run(&["--max-lifetime", "0"]);
    assert_eq!(out.status.code(), Some(69), "{}", both(&out));
    assert!(
        text(&out.stdout).starts_with("later@example.net: expired"),
        "{}",
        both(&out)
    );

    // Deferred only: 75, with when it is due next.
    enqueue(&rt, &q, &["later@example.net"]);
    let out = run(&["--json"]);
    let v = json(&out);
    assert_eq!(out.status.code(), Some(75), "{}", both(&out));
    assert_eq!(v["recorded"]["deferred"], 1, "{v}");
    assert_eq!(v["summary"]["deferred"], 1, "{v}");
    let later = &v["messages"][0]["recipients"][0];
    assert_eq!(later["status"], "deferred", "{v}");
    assert_eq!(later["queued"], true, "{v}");
    assert_eq!(later["code"], 451, "{v}");
    assert_eq!(v["waiting"], 1, "{v}");
    assert!(v["next_attempt"].is_string(), "{v}");

    // Failures print the same shape, with the error.
    let out = run(&["--json", "--watch"]);
    assert_eq!(out.status.code(), Some(64), "{}", both(&out));
    let v = json(&out);
    assert_eq!(v["messages"], serde_json::json!([]), "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("--log-format json")),
        "{v}"
    );
    let missing = dir.path().join("none");
    let out = smtp(&[
        "queue",
        "run",
        "--queue",
        missing.to_str().unwrap(),
        "--server",
        &addr,
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(66), "{}", both(&out));
    assert_eq!(json(&out)["error"]["kind"], "no-queue");
}

#[test]
fn queue_run_takes_the_timeouts_send_takes() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    enqueue(&rt, dir.path(), &["b@example.net"]);
    // A server that accepts and never says a word.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let held = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        std::thread::sleep(Duration::from_secs(20));
        drop(stream);
    });
    let q = dir.path().to_str().unwrap();
    let out = smtp(&[
        "queue",
        "run",
        "--queue",
        q,
        "--server",
        "127.0.0.1",
        "--port",
        &port,
        "--tls",
        "none",
        "--command-timeout",
        "1",
        "--connect-timeout",
        "1",
    ]);
    let all = both(&out);
    assert_eq!(out.status.code(), Some(75), "{all}");
    assert!(
        all.contains("1s"),
        "the greeting waited --command-timeout: {all}"
    );
    drop(held);
}

/// Open sessions per destination (the fleet-wide connection slots) in
/// `queue stats`, whichever runner holds them.
#[test]
fn queue_stats_shows_the_sessions_open_per_destination() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let q = dir.path().join("q");
    enqueue(&rt, &q, &["a@example.net"]);
    rt.block_on(async {
        let store = SqliteStore::open(&q).await.unwrap();
        let now = SystemTime::now();
        let until = now + Duration::from_secs(300);
        for worker in ["host-a:1", "host-b:2", "host-b:2"] {
            store
                .take_slot("mx:mx.example.net", 3, worker, until, now)
                .await
                .unwrap()
                .unwrap();
        }
        store.close().await;
    });
    let q = q.to_str().unwrap();
    let out = smtp(&["queue", "--queue", q, "stats"]);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    assert!(
        text(&out.stdout)
            .contains("sessions to mx:mx.example.net: 3 open (held by host-a:1, host-b:2)"),
        "{}",
        both(&out)
    );
    let v = json(&smtp(&["queue", "--queue", q, "stats", "--json"]));
    assert_eq!(v["sessions"][0]["destination"], "mx:mx.example.net", "{v}");
    assert_eq!(v["sessions"][0]["open"], 3, "{v}");
}
