//! The reply to the end of data never comes: the server has the whole
//! message and may have delivered it. `smtp send` must say so for every
//! recipient (deferred, "outcome unknown"), exit 75, and — in direct
//! delivery — not hand the message to the next MX host as well.

use std::process::Output;
use std::time::Duration;

use smtp_testkit::dns::{DnsServer, Zone};
use smtp_testkit::script::{Script, ScriptedServer};
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_smtp");

/// The server takes the message (QUIT riding with the dot, as PIPELINING
/// allows) and hangs up without a word.
fn closes_after_the_dot(greeting: &str) -> Script {
    Script::parse(&format!(
        "S: 220 {greeting}\n\
         C: EHLO *\n\
         S: 250-{greeting}\n\
         S: 250 PIPELINING\n\
         C: MAIL FROM:<a@example.org>\n\
         C: RCPT TO:<b@m.test>\n\
         C: RCPT TO:<c@m.test>\n\
         C: DATA\n\
         S: 250 ok\n\
         S: 250 ok\n\
         S: 250 ok\n\
         S: 354 go\n\
         C: From: a@example.org\n\
         C: To: b@m.test, c@m.test\n\
         C: Subject: s\n\
         C: Date: Tue, 1 Dec 2026 02:00:00 +0000\n\
         C: Message-ID: <lost@example.org>\n\
         C: \n\
         C: b\n\
         C: .\n\
         C: QUIT\n\
         CLOSE\n"
    ))
    .unwrap()
}

/// Runs a [`send`], then removes its directory.
async fn run((mut c, _dir): (Command, tempfile::TempDir)) -> Output {
    tokio::time::timeout(Duration::from_secs(30), c.output())
        .await
        .expect("smtp finishes")
        .unwrap()
}

const MESSAGE: &str = "From: a@example.org\r\nTo: b@m.test, c@m.test\r\nSubject: s\r\n\
    Date: Tue, 1 Dec 2026 02:00:00 +0000\r\nMessage-ID: <lost@example.org>\r\n\r\nb\r\n";

/// `smtp send` of [`MESSAGE`] (written to a file of its own, in the
/// directory returned beside it) to b@ and c@.
fn send(args: &[&str], json: bool) -> (Command, tempfile::TempDir) {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path();
    let file = dir.join("message.eml");
    std::fs::write(&file, MESSAGE).unwrap();
    let mut c = Command::new(BIN);
    c.arg("send")
        .args(args)
        .args([
            "--helo",
            "client.test",
            "--to",
            "b@m.test",
            "--to",
            "c@m.test",
        ])
        .args(json.then_some("--json"))
        .arg(&file)
        .env("XDG_CONFIG_HOME", dir.join("no-config"));
    (c, temp)
}

/// Both recipients deferred with the unknown outcome, exit 75.
fn assert_unknown(o: &Output) {
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(75), "{stdout}{stderr}");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("one JSON object");
    let recipients = v["messages"][0]["recipients"].as_array().unwrap();
    assert_eq!(recipients.len(), 2, "{stdout}");
    for r in recipients {
        assert_eq!(r["status"], "deferred", "{stdout}");
        let text = r["text"].as_str().unwrap();
        assert!(text.contains("outcome unknown"), "{text}");
        assert!(text.contains("may have accepted"), "{text}");
        assert!(!text.contains("could not connect"), "{text}");
    }
}

#[tokio::test]
async fn standard_delivery_reports_a_lost_reply_as_an_unknown_outcome() {
    let server = ScriptedServer::start(closes_after_the_dot("mx.test"), None)
        .await
        .unwrap();
    let port = server.addr().port().to_string();
    let o = run(send(
        &["--server", &format!("127.0.0.1:{port}"), "--tls", "none"],
        true,
    ))
    .await;
    assert_unknown(&o);
    server.finish(Duration::from_secs(5)).await.assert_ok();
}

#[tokio::test]
async fn standard_delivery_without_json_prints_every_recipient() {
    let server = ScriptedServer::start(closes_after_the_dot("mx.test"), None)
        .await
        .unwrap();
    let port = server.addr().port().to_string();
    let o = run(send(
        &["--server", &format!("127.0.0.1:{port}"), "--tls", "none"],
        false,
    ))
    .await;
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(75), "{stdout}");
    for rcpt in ["b@m.test", "c@m.test"] {
        assert!(
            stdout.lines().any(|l| l.starts_with("deferred")
                && l.contains(rcpt)
                && l.contains("outcome unknown")),
            "{stdout}"
        );
    }
}

#[tokio::test]
async fn direct_delivery_reports_a_lost_reply_and_tries_no_other_host() {
    // Two MX hosts on the same address: the script serves one connection,
    // then refuses; a second attempt would change the recipients' text.
    let server = ScriptedServer::start(closes_after_the_dot("a.m.test"), None)
        .await
        .unwrap();
    let zone = Zone::new()
        .mx("m.test", 10, "a.m.test")
        .mx("m.test", 20, "b.m.test")
        .a("a.m.test", "127.0.0.1".parse().unwrap())
        .a("b.m.test", "127.0.0.1".parse().unwrap());
    let dns = DnsServer::start(zone).await.unwrap();
    let port = server.addr().port().to_string();
    let o = run(send(
        &[
            "--dns-server",
            &dns.addr().to_string(),
            "--mx-port",
            &port,
            "--tls",
            "none",
        ],
        true,
    ))
    .await;
    assert_unknown(&o);
    server.finish(Duration::from_secs(5)).await.assert_ok();
}
