//! The built `smtp` binary against testkit servers on 127.0.0.1: JSON,
//! exit codes, -t with Bcc removal, sendmail mode, config accounts, and no
//! secret in the transcript or the process arguments; then the safety rules:
//! Bcc never sent, account credentials only for their own server, no
//! message left in the temporary directory (signals included), no terminal
//! escape printed, message files that are not messages or that change.

use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use smtp_testkit::capture::{CaptureConfig, CaptureServer};
use smtp_testkit::certs::TestCa;
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_smtp");
const PASSWORD: &str = "correct-horse-battery";

struct Fixture {
    server: CaptureServer,
    dir: PathBuf,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn fixture(tls: bool, reject: &[(&str, &str)]) -> Fixture {
    let ca = TestCa::new();
    let server = CaptureServer::start(CaptureConfig {
        hostname: "mail.test".into(),
        tls: tls.then(|| ca.leaf(&["mail.test", "localhost"])),
        auth: Some(("alice".into(), PASSWORD.into())),
        require_auth: true,
        reject: reject
            .iter()
            .map(|(a, r)| ((*a).to_owned(), (*r).to_owned()))
            .collect(),
        ..CaptureConfig::default()
    })
    .await;
    let f = fixture_with(server).await;
    std::fs::write(f.dir.join("ca.pem"), ca.cert_pem()).unwrap();
    f
}

/// A fixture around a capture server started with its own settings, and a
/// private directory named after its port.
async fn fixture_with(server: std::io::Result<CaptureServer>) -> Fixture {
    let server = server.unwrap();
    let dir = std::env::temp_dir().join(format!(
        "smtp-cli-test-{}-{}",
        std::process::id(),
        server.addr().port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    Fixture { server, dir }
}

impl Fixture {
    /// `smtp send --server … --ca-file …` with the password in the environment.
    fn send(&self) -> Command {
        let mut c = Command::new(BIN);
        c.arg("send")
            .arg("--server")
            .arg(format!("127.0.0.1:{}", self.server.addr().port()))
            .arg("--ca-file")
            .arg(self.dir.join("ca.pem"))
            .arg("--user")
            .arg("alice")
            .arg("--helo")
            .arg("client.test")
            // No config file of the user's own leaks in.
            .env("XDG_CONFIG_HOME", self.dir.join("empty"))
            .env("SMTP_PASSWORD", PASSWORD);
        c
    }
}

async fn run(mut c: Command) -> Output {
    tokio::time::timeout(Duration::from_secs(30), c.output())
        .await
        .expect("smtp finishes")
        .unwrap()
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `--tls certified` cannot check "127.0.0.1" against a certificate for
/// mail.test, so these tests name the server in a config account.
fn account_file(f: &Fixture, extra: &str) -> PathBuf {
    let path = f.dir.join("config.toml");
    std::fs::write(
        &path,
        format!(
            "[accounts.test]\nserver = \"127.0.0.1:{}\"\n{extra}",
            f.server.addr().port()
        ),
    )
    .unwrap();
    path
}

#[tokio::test]
async fn json_and_exit_codes() {
    let f = fixture(
        false,
        &[
            ("gone@example.net", "550 5.1.1 no such user"),
            ("later@example.net", "450 4.2.1 busy"),
        ],
    )
    .await;
    // Accepted only → 0.
    let mut c = f.send();
    c.args([
        "--tls",
        "none",
        "--auth",
        "plain",
        "--from",
        "a@example.org",
        "--to",
        "b@example.net",
        "--subject",
        "s",
        "--body",
        "b",
        "--json",
    ]);
    let o = run(c).await;
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let r = &v["messages"][0]["recipients"][0];
    assert_eq!(r["address"], "b@example.net");
    assert_eq!(r["status"], "accepted");
    assert_eq!(r["code"], 250);
    assert_eq!(r["enhanced_code"], "2.0.0");
    assert!(r["host"].as_str().unwrap().starts_with("127.0.0.1:"));

    // A permanent refusal → 69; a deferral wins → 75.
    for (to, want) in [("gone@example.net", 69), ("later@example.net", 75)] {
        let mut c = f.send();
        c.args([
            "--tls",
            "none",
            "--auth",
            "plain",
            "--from",
            "a@example.org",
            "--to",
            "b@example.net",
            "--to",
            to,
            "--subject",
            "s",
            "--body",
            "b",
            "--json",
        ]);
        let o = run(c).await;
        assert_eq!(code(&o), want, "{to}: {}", text(&o.stdout));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["messages"][0]["recipients"].as_array().unwrap().len(), 2);
    }
}

#[tokio::test]
async fn auth_failure_and_policy_failure() {
    let f = fixture(true, &[]).await;
    let config = account_file(&f, "tls = \"required\"\nuser = \"alice\"\n");
    let mut c = Command::new(BIN);
    c.args(["send", "--config"]).arg(&config).args([
        "--account",
        "test",
        "--from",
        "a@example.org",
        "--to",
        "b@example.net",
        "--subject",
        "s",
        "--body",
        "b",
        "--json",
    ]);
    c.env("SMTP_PASSWORD", "wrong-password");
    let o = run(c).await;
    assert_eq!(code(&o), 77, "{}{}", text(&o.stdout), text(&o.stderr));
    // A wrong password says nothing against the recipient: deferred (not
    // rejected, which a list-cleaning script would act on), with the
    // server's 535.
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let r = &v["messages"][0]["recipients"][0];
    assert_eq!(r["status"], "deferred", "{r}");
    assert_eq!(r["code"], 535, "{r}");

    // No credentials where the server wants them: its 530 to MAIL is about
    // the session, not the recipient: deferred, exit 77.
    let mut c = Command::new(BIN);
    c.args(["send", "--server"])
        .arg(format!("localhost:{}", f.server.addr().port()))
        .arg("--ca-file")
        .arg(f.dir.join("ca.pem"))
        .args(["--from", "a@example.org", "--to", "b@example.net"])
        .args(["--subject", "s", "--body", "b", "--json"])
        .env("XDG_CONFIG_HOME", f.dir.join("empty"));
    let o = run(c).await;
    assert_eq!(code(&o), 77, "{}{}", text(&o.stdout), text(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let r = &v["messages"][0]["recipients"][0];
    assert_eq!(r["status"], "deferred", "{r}");
    assert_eq!(r["code"], 530, "{r}");

    // Required against a server without STARTTLS → 76, and no MAIL reached it.
    let plain = fixture(false, &[]).await;
    let mut c = plain.send();
    c.args([
        "--tls",
        "required",
        "--from",
        "a@example.org",
        "--to",
        "b@example.net",
        "--subject",
        "s",
        "--body",
        "b",
    ]);
    let o = run(c).await;
    assert_eq!(code(&o), 76, "{}{}", text(&o.stdout), text(&o.stderr));
    assert!(plain.server.messages().is_empty());
}

#[tokio::test]
async fn certified_through_a_config_account() {
    let f = fixture(true, &[]).await;
    let ca = f.dir.join("ca.pem");
    let port = f.server.addr().port();
    let path = f.dir.join("accounts.toml");
    std::fs::write(
        &path,
        format!(
            "[accounts.good]\nserver = \"localhost:{port}\"\ntls = \"certified\"\nuser = \"alice\"\nca_file = \"{}\"\nfrom = \"alice@example.org\"\n\n\
             [accounts.by-ip]\nserver = \"127.0.0.1:{port}\"\ntls = \"certified\"\nuser = \"alice\"\nca_file = \"{}\"\nfrom = \"alice@example.org\"\n",
            ca.display(),
            ca.display()
        ),
    )
    .unwrap();
    let send = |account: &str| {
        let mut c = Command::new(BIN);
        c.args(["send", "--config"]).arg(&path).args([
            "--account",
            account,
            "--to",
            "bob@example.net",
            "--subject",
            "s",
            "--body",
            "b",
            "--json",
        ]);
        c.env("SMTP_PASSWORD", PASSWORD);
        c
    };
    let o = run(send("good")).await;
    assert_eq!(code(&o), 0, "{}{}", text(&o.stdout), text(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["messages"][0]["recipients"][0]["cert_verified"], true);
    assert_eq!(
        f.server.wait_for_messages(1, Duration::from_secs(2)).await[0].mail_from,
        "alice@example.org"
    );
    // 127.0.0.1 is not a name in the certificate: Certified refuses, says why.
    let o = run(send("by-ip")).await;
    let all = format!("{}{}", text(&o.stdout), text(&o.stderr));
    assert_eq!(code(&o), 76, "{all}");
    assert!(all.contains("not valid for 127.0.0.1"), "{all}");
}

#[tokio::test]
async fn read_recipients_removes_bcc_and_keeps_secrets_out() {
    let f = fixture(true, &[]).await;
    let message = f.dir.join("m.eml");
    std::fs::write(&message, "From: Alice <alice@example.org>\nTo: bob@example.net\nCc: carol@example.net\nBcc: secret-dave@example.net\nSubject: t\n\nhello\n").unwrap();
    let mut c = f.send();
    c.args(["--tls", "required", "-t", "-v"]).arg(&message);
    let o = run(c).await;
    let (out, err) = (text(&o.stdout), text(&o.stderr));
    assert_eq!(code(&o), 0, "{out}{err}");
    let got = f.server.wait_for_messages(1, Duration::from_secs(2)).await;
    assert_eq!(
        got[0].rcpt_to,
        [
            "bob@example.net",
            "carol@example.net",
            "secret-dave@example.net"
        ]
    );
    assert_eq!(got[0].mail_from, "alice@example.org");
    let data = text(&got[0].data);
    assert!(!has_bcc_field(&data), "{data}");
    assert!(
        data.contains("Date: ") && data.contains("Message-ID: "),
        "{data}"
    );
    // The transcript is there, in the swaks style, and holds no secret.
    assert!(err.contains("~> AUTH PLAIN <redacted>"), "{err}");
    assert!(err.contains("-> STARTTLS"), "{err}");
    assert!(!err.contains(PASSWORD) && !out.contains(PASSWORD));
    let b64 = "AGFsaWNlAGNvcnJlY3QtaG9yc2UtYmF0dGVyeQ=="; // base64 of "\0alice\0<password>"
    assert!(!err.contains(b64));
}

#[tokio::test]
async fn read_recipients_takes_every_field_and_a_resend_s_own() {
    let f = fixture(true, &[]).await;
    let send = |name: &str, content: &str| {
        let message = f.dir.join(name);
        std::fs::write(&message, content).unwrap();
        let mut c = f.send();
        c.args(["--tls", "required", "-t"]).arg(&message);
        c
    };
    // Repeated fields, in any case: every address of every one.
    let o = run(send(
        "repeated.eml",
        "From: a@example.org\nTo: b@example.net\nto: c@example.net\nTO: d@example.net\n\
         Bcc: e@example.net\nBcc: f@example.net\nSubject: t\n\nhello\n",
    ))
    .await;
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    // A resent message: its Resent- fields only; Resent-Bcc never goes out.
    let o = run(send(
        "resent.eml",
        "Resent-From: a@example.org\nResent-To: g@example.net\nResent-Bcc: h@example.net\n\
         From: old@example.org\nTo: b@example.net\nSubject: t\n\nhello\n",
    ))
    .await;
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    let got = f.server.wait_for_messages(2, Duration::from_secs(2)).await;
    assert_eq!(
        got[0].rcpt_to,
        [
            "b@example.net",
            "c@example.net",
            "d@example.net",
            "e@example.net",
            "f@example.net"
        ]
    );
    assert_eq!(got[1].rcpt_to, ["g@example.net", "h@example.net"]);
    for m in &got {
        let data = text(&m.data).to_ascii_lowercase();
        assert!(!has_bcc_field(&data), "{data}");
        assert!(
            !data.contains("h@example.net") && !data.contains("e@example.net"),
            "{data}"
        );
    }
}

#[tokio::test]
async fn sendmail_mode() {
    let f = fixture(false, &[]).await;
    let link = f.dir.join("sendmail");
    std::os::unix::fs::symlink(BIN, &link).unwrap();
    // sendmail mode reads the account named "default".
    let config_dir = f.dir.join("xdg").join("smtp");
    std::fs::create_dir_all(&config_dir).unwrap();
    std::fs::write(
        config_dir.join("config.toml"),
        format!("[accounts.default]\nserver = \"127.0.0.1:{}\"\ntls = \"none\"\nuser = \"alice\"\nauth = \"plain\"\n", f.server.addr().port()),
    )
    .unwrap();
    let mut c = Command::new(&link);
    c.args(["-oi", "-f", "bounce@example.org", "extra@example.net"])
        .env("XDG_CONFIG_HOME", f.dir.join("xdg"))
        .env("SMTP_PASSWORD", PASSWORD)
        .stdin(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    use tokio::io::AsyncWriteExt;
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(b"To: bob@example.net\nSubject: via sendmail\n\n.one dot\n")
        .await
        .unwrap();
    drop(stdin);
    let o = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(code(&o), 0, "{}{}", text(&o.stdout), text(&o.stderr));
    let got = f.server.wait_for_messages(1, Duration::from_secs(2)).await;
    assert_eq!(got[0].mail_from, "bounce@example.org");
    assert_eq!(
        got[0].rcpt_to,
        ["extra@example.net"],
        "operands only, without -t"
    );
    assert!(text(&got[0].data).contains("\r\n.one dot\r\n"));
}

/// The binary through a symlink named `sendmail`, with an account
/// `default` for `f`'s server (TLS certified by the fixture's CA, AUTH);
/// `stdin` is the message.
async fn sendmail(f: &Fixture, args: &[&str], stdin: &[u8]) -> Output {
    let link = f.dir.join("sendmail");
    if !link.exists() {
        std::os::unix::fs::symlink(BIN, &link).unwrap();
    }
    let config_dir = f.dir.join("xdg").join("smtp");
    std::fs::create_dir_all(&config_dir).unwrap();
    std::fs::write(
        config_dir.join("config.toml"),
        format!(
            "[accounts.default]\nserver = \"localhost:{}\"\nca_file = {:?}\nuser = \"alice\"\n",
            f.server.addr().port(),
            f.dir.join("ca.pem")
        ),
    )
    .unwrap();
    let mut c = Command::new(&link);
    c.args(args)
        .env("XDG_CONFIG_HOME", f.dir.join("xdg"))
        .env("SMTP_PASSWORD", PASSWORD)
        .env("USER", "carol")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    use tokio::io::AsyncWriteExt;
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin).await.unwrap();
    drop(input);
    tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn in_sendmail_mode_a_lone_dot_ends_the_message_unless_i_is_given() {
    let f = fixture(true, &[]).await;
    let message = b"Subject: dots\n\nfirst\n.\nafter the dot\n";
    let o = sendmail(&f, &["bob@example.net"], message).await;
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    for flag in ["-i", "-oi"] {
        let o = sendmail(&f, &[flag, "bob@example.net"], message).await;
        assert_eq!(code(&o), 0, "{flag}: {}", text(&o.stderr));
    }
    let got = f.server.wait_for_messages(3, Duration::from_secs(2)).await;
    let without = text(&got[0].data);
    assert!(
        without.contains("first\r\n") && !without.contains("after the dot"),
        "{without}"
    );
    for m in &got[1..] {
        let data = text(&m.data);
        // As received: the server took the dot-stuffing off.
        assert!(data.contains("first\r\n.\r\nafter the dot\r\n"), "{data}");
    }
}

#[tokio::test]
async fn sendmail_without_recipients_says_how_in_sendmail_terms() {
    let f = fixture(true, &[]).await;
    let o = sendmail(&f, &[], b"Subject: nobody\n\nhi\n").await;
    assert_eq!(code(&o), 64, "{}", text(&o.stderr));
    let err = text(&o.stderr);
    assert!(
        err.contains("give them as arguments") && !err.contains("--to"),
        "{err}"
    );
}

#[tokio::test]
async fn sendmail_as_mutt_and_git_send_email_call_it() {
    let f = fixture(true, &[("gone@example.net", "550 5.1.1 no such user")]).await;
    let message = b"From: Alice <alice@example.org>\nTo: bob@example.net\n\
        Bcc: secret@example.net\nSubject: patch\n\nbody\n";
    // mutt: sendmail -oem -oi -- recipients; with DSN, -N and -R too.
    let o = sendmail(
        &f,
        &[
            "-oem",
            "-oi",
            "-N",
            "failure,delay",
            "-R",
            "hdrs",
            "--",
            "bob@example.net",
        ],
        message,
    )
    .await;
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    assert!(
        o.stdout.is_empty() && o.stderr.is_empty(),
        "quiet on success"
    );
    // git send-email: sendmail -i -f FROM recipients...
    let o = sendmail(
        &f,
        &[
            "-i",
            "-f",
            "alice@example.org",
            "bob@example.net",
            "dave@example.net",
        ],
        message,
    )
    .await;
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    assert!(
        o.stdout.is_empty() && o.stderr.is_empty(),
        "quiet on success"
    );
    let got = f.server.wait_for_messages(2, Duration::from_secs(2)).await;
    assert_eq!(
        got[0].rcpt_to,
        ["bob@example.net"],
        "no option value became a recipient"
    );
    assert_eq!(got[1].rcpt_to, ["bob@example.net", "dave@example.net"]);
    assert_eq!(got[1].mail_from, "alice@example.org");
    for m in &got {
        assert!(!text(&m.data).contains("Bcc"), "{}", text(&m.data));
    }
    // A refused recipient: sendmail's exit code and the report on stderr only.
    let o = sendmail(&f, &["-oi", "gone@example.net"], message).await;
    assert_eq!(code(&o), 69);
    assert!(o.stdout.is_empty());
    assert!(
        text(&o.stderr).contains("gone@example.net"),
        "{}",
        text(&o.stderr)
    );
}

#[tokio::test]
async fn sendmail_adds_a_missing_from() {
    let f = fixture(true, &[]).await;
    // With -f and -F: that sender, with that name.
    let o = sendmail(
        &f,
        &[
            "-i",
            "-f",
            "alice@example.org",
            "-F",
            "Alice Liddell",
            "bob@example.net",
        ],
        b"To: bob@example.net\nSubject: no from\n\nbody\n",
    )
    .await;
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    // Without -f: this user at this host.
    let o = sendmail(
        &f,
        &["-i", "-t"],
        b"To: bob@example.net\nSubject: x\n\nbody\n",
    )
    .await;
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    let got = f.server.wait_for_messages(2, Duration::from_secs(2)).await;
    let first = text(&got[0].data);
    assert!(
        first.starts_with("From: \"Alice Liddell\" <alice@example.org>\r\n"),
        "{first}"
    );
    let second = text(&got[1].data);
    assert!(second.starts_with("From: <carol@"), "{second}");
    assert!(
        got[1].mail_from.starts_with("carol@"),
        "{}",
        got[1].mail_from
    );
}

#[tokio::test]
async fn usage_errors() {
    let o = run({
        let mut c = Command::new(BIN);
        c.args([
            "send",
            "--server",
            "127.0.0.1:9",
            "--from",
            "a@example.org",
            "--subject",
            "s",
            "--body",
            "b",
        ]);
        c
    })
    .await;
    assert_eq!(code(&o), 64, "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("no recipients"));
    let o = run({
        let mut c = Command::new(BIN);
        c.args([
            "send",
            "--server",
            "127.0.0.1:9",
            "--to",
            "Bob <bob@example.net>",
            "--from",
            "a@example.org",
            "--body",
            "b",
        ]);
        c
    })
    .await;
    assert_eq!(code(&o), 65, "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("only the address"));
}

/// `smtp send … --json` and its exit code.
async fn send_json(args: &[&str]) -> (i32, serde_json::Value) {
    let mut c = Command::new(BIN);
    c.arg("send")
        .args(args)
        .arg("--json")
        .env("XDG_CONFIG_HOME", "/nonexistent");
    let o = run(c).await;
    let v = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "{args:?}: stdout is not one JSON object ({e}): {:?} / {}",
            text(&o.stdout),
            text(&o.stderr)
        )
    });
    (code(&o), v)
}

#[tokio::test]
async fn json_is_one_object_whatever_happens() {
    let refused = {
        // A port nothing listens on.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        format!("127.0.0.1:{port}")
    };
    let compose = [
        "--from",
        "a@example.org",
        "--to",
        "b@example.net",
        "--to",
        "c@example.net",
        "--subject",
        "s",
        "--body",
        "b",
    ];
    // Connection refused: each recipient deferred with the reason.
    let (code, v) =
        send_json(&[&["--server", &refused, "--tls", "none"][..], &compose].concat()).await;
    assert_eq!(code, 75);
    assert_eq!(v["version"], 1);
    assert_eq!(v["error"]["kind"], "connect", "{v}");
    assert_eq!(v["summary"]["deferred"], 2, "{v}");
    assert_eq!(v["messages"][0]["recipients"][1]["status"], "deferred");
    // A server name that does not resolve.
    let (code, v) = send_json(
        &[
            &["--server", "nosuch.invalid:25", "--tls", "none"][..],
            &compose,
        ]
        .concat(),
    )
    .await;
    assert_eq!(code, 68);
    assert_eq!(v["error"]["kind"], "resolve", "{v}");
    // An unreadable message file: nothing to report but the error.
    let (code, v) = send_json(&[
        "--server",
        &refused,
        "--to",
        "b@example.net",
        "/nonexistent.eml",
    ])
    .await;
    assert_eq!(code, 66);
    assert_eq!(v["error"]["kind"], "no-input", "{v}");
    assert_eq!(v["messages"], serde_json::json!([]));
    assert_eq!(v["summary"]["messages"], 0);
    // TLS policy and authentication: the session's error, recipients deferred.
    let f = fixture(false, &[]).await;
    let server = format!("127.0.0.1:{}", f.server.addr().port());
    let (code, v) =
        send_json(&[&["--server", &server, "--tls", "required"][..], &compose].concat()).await;
    assert_eq!(code, 76);
    assert_eq!(v["error"]["kind"], "tls-policy", "{v}");
    assert_eq!(v["summary"]["deferred"], 2, "{v}");
}

#[tokio::test]
async fn argument_errors_exit_64_and_help_exits_0() {
    for (args, want) in [
        (&["send", "--no-such-option"][..], 64),
        (&["frobnicate"], 64),
        (&["send", "--tls", "sometimes"], 64),
        (&[], 64),
        (&["--help"], 0),
        (&["send", "--help"], 0),
        (&["--version"], 0),
    ] {
        let mut c = Command::new(BIN);
        c.args(args);
        let o = run(c).await;
        assert_eq!(code(&o), want, "{args:?}: {}", text(&o.stderr));
    }
    // Options that contradict each other are refused, not silently ranked.
    for (args, says) in [
        (
            &["--server", "127.0.0.1:2525", "--port", "2526"][..],
            "name two ports",
        ),
        (
            &["--password-env", "X", "--password-file", "f"],
            "give one of --password-env",
        ),
    ] {
        let mut c = Command::new(BIN);
        c.arg("send").args(args).args([
            "--from",
            "a@example.org",
            "--to",
            "b@example.net",
            "--body",
            "b",
        ]);
        let o = run(c).await;
        assert_eq!(code(&o), 64, "{args:?}: {}", text(&o.stderr));
        assert!(
            text(&o.stderr).contains(says),
            "{args:?}: {}",
            text(&o.stderr)
        );
    }
}

#[tokio::test]
async fn a_closed_standard_output_does_not_stop_the_report() {
    // `smtp send … | head -0`: the reader is gone before anything is written.
    let f = fixture(true, &[]).await;
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let mut c = f.send();
    c.args(["--from", "a@example.org", "--to", "b@example.net"])
        .args(["--subject", "s", "--body", "b", "--tls", "required"])
        .stdout(writer);
    let o = run(c).await;
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    assert!(!text(&o.stderr).contains("panicked"), "{}", text(&o.stderr));
    assert_eq!(
        f.server
            .wait_for_messages(1, Duration::from_secs(2))
            .await
            .len(),
        1
    );
}

#[tokio::test]
async fn sink_stores_before_it_accepts_and_says_how_to_send_to_it() {
    let dir = std::env::temp_dir().join(format!("smtp-sink-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut sink = Command::new(BIN)
        .args([
            "sink",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--maildir",
        ])
        .arg(dir.join("md"))
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Its first words on stderr: where it listens, then the command to use.
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(sink.stderr.take().unwrap()).lines();
    let mut hint = String::new();
    while let Ok(Ok(Some(line))) =
        tokio::time::timeout(Duration::from_secs(10), lines.next_line()).await
    {
        if let Some(command) = line.split("try: ").nth(1) {
            hint = command.to_owned();
            break;
        }
    }
    assert!(
        hint.starts_with(&format!("smtp send --server 127.0.0.1:{port} --tls none ")),
        "{hint}"
    );
    // The printed command, run as printed, delivers; the message is in new/
    // the moment the client has its 250.
    let args: Vec<&str> = hint.split_whitespace().skip(1).collect();
    let mut c = Command::new(BIN);
    c.args(&args).env("XDG_CONFIG_HOME", dir.join("no-config"));
    let o = run(c).await;
    assert_eq!(code(&o), 0, "{}{}", text(&o.stdout), text(&o.stderr));
    let stored = std::fs::read_dir(dir.join("md").join("new"))
        .unwrap()
        .count();
    assert_eq!(stored, 1, "stored before the 250");
    let _ = sink.kill().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn demo_runs() {
    let o = run({
        let mut c = Command::new(BIN);
        c.arg("demo");
        c
    })
    .await;
    assert_eq!(code(&o), 0, "{}{}", text(&o.stdout), text(&o.stderr));
    let out = text(&o.stdout);
    assert!(out.contains("accepted  friend@example.net"), "{out}");
    assert!(
        out.contains("accepted  alice@example.test") && out.contains("verified"),
        "{out}"
    );
}

#[tokio::test]
async fn mx_through_a_nameserver() {
    use smtp_testkit::dns::{DnsServer, Zone};
    let zone = Zone::new()
        .mx("m.test", 20, "b.m.test")
        .mx("m.test", 10, "a.m.test")
        .a("a.m.test", "127.0.0.40".parse().unwrap())
        .a("b.m.test", "127.0.0.41".parse().unwrap())
        .null_mx("nomail.test");
    let dns = DnsServer::start(zone).await.unwrap();
    let mx = |domain: &str| {
        let mut c = Command::new(BIN);
        c.args(["mx", domain, "--json", "--dns-server"])
            .arg(dns.addr().to_string());
        c
    };
    let o = run(mx("m.test")).await;
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["kind"], "mx");
    assert_eq!(v["hosts"][0]["host"], "a.m.test");
    assert_eq!(v["hosts"][0]["addresses"][0], "127.0.0.40");
    assert_eq!(v["hosts"][1]["preference"], 20);
    let o = run(mx("nomail.test")).await;
    assert_eq!(code(&o), 68, "null MX: the domain takes no mail");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["version"], 1);
    assert_eq!(v["error"]["kind"], "dns");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("accepts no mail")
    );
}

#[tokio::test]
async fn direct_delivery_prints_its_transcript_with_v() {
    use smtp_testkit::dns::{DnsServer, Zone};
    let f = open_fixture().await;
    let zone = Zone::new()
        .mx("m.test", 10, "mx.m.test")
        .a("mx.m.test", "127.0.0.1".parse().unwrap());
    let dns = DnsServer::start(zone).await.unwrap();
    let mut c = Command::new(BIN);
    c.args(["send", "-v", "--dns-server", &dns.addr().to_string()])
        .args(["--mx-port", &f.server.addr().port().to_string()])
        .args([
            "--from",
            "a@example.org",
            "--to",
            "b@m.test",
            "--subject",
            "s",
            "--body",
            "b",
        ])
        .args(["--helo", "client.test"])
        .env("XDG_CONFIG_HOME", f.dir.join("empty"));
    let o = run(c).await;
    let err = text(&o.stderr);
    assert_eq!(code(&o), 0, "{err}");
    let addr = format!("127.0.0.1:{}", f.server.addr().port());
    for expected in [
        format!("=== Trying mx.m.test [{addr}]..."),
        format!("=== Connected to mx.m.test [{addr}]."),
        "-> MAIL FROM:<a@example.org>".to_owned(),
        "-> RCPT TO:<b@m.test>".to_owned(),
        "<- 250".to_owned(),
        "=== Connection closed with mx.m.test.".to_owned(),
    ] {
        assert!(err.contains(&expected), "{expected:?} missing from:\n{err}");
    }
}

// ---- Internationalised addresses (issue 12): an IDN domain with an ASCII
// local part needs no SMTPUTF8; a UTF-8 local part does.

/// A plaintext capture server that offers neither SMTPUTF8 nor 8BITMIME:
/// whatever it takes must be 7-bit, envelope and header section alike.
async fn ascii_only_fixture() -> Fixture {
    let server = CaptureServer::start(CaptureConfig {
        hostname: "mail.test".into(),
        smtputf8: false,
        eight_bit_mime: false,
        ..CaptureConfig::default()
    })
    .await;
    fixture_with(server).await
}

#[tokio::test]
async fn an_idn_domain_goes_as_a_labels_without_smtputf8() {
    let f = ascii_only_fixture().await;
    let mut c = plain_send(&f);
    c.args(["-v", "--from", "Bücherwurm <me@BÜCHER.example>"])
        .args(["--to", "user@bücher.example", "--cc", "x@Bücher.Example"])
        .args(["--subject", "s", "--body", "b"]);
    let o = run(c).await;
    let err = text(&o.stderr);
    assert_eq!(code(&o), 0, "{}{err}", text(&o.stdout));
    let got = f.server.wait_for_messages(1, Duration::from_secs(2)).await;
    let m = &got[0];
    assert_eq!(m.mail_from, "me@xn--bcher-kva.example");
    assert_eq!(
        m.rcpt_to,
        ["user@xn--bcher-kva.example", "x@xn--bcher-kva.example"]
    );
    let head = header_section(&m.data);
    assert!(head.is_ascii(), "a 7-bit header section:\n{head}");
    assert!(
        head.contains("<me@xn--bcher-kva.example>\r\n"),
        "From in A-labels:\n{head}"
    );
    assert!(
        head.contains("To: <user@xn--bcher-kva.example>\r\n"),
        "{head}"
    );
    assert!(head.contains("Cc: <x@xn--bcher-kva.example>\r\n"), "{head}");
    assert!(
        !err.contains("SMTPUTF8") && !err.contains("BODY=8BITMIME"),
        "no extension asked for:\n{err}"
    );

    // A message file's own header fields are the user's: not rewritten.
    let f = open_fixture().await;
    let file = f.dir.join("idn.eml");
    let original = "From: me@bücher.example\r\nTo: user@bücher.example\r\nSubject: t\r\n\
                    Date: Tue, 1 Dec 2026 02:00:00 +0000\r\nMessage-ID: <m@example.org>\r\n\r\nhi\r\n";
    std::fs::write(&file, original).unwrap();
    let mut c = plain_send(&f);
    c.args(["--to", "user@bücher.example"]).arg(&file);
    let o = run(c).await;
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    let got = f.server.wait_for_messages(1, Duration::from_secs(2)).await;
    assert_eq!(got[0].mail_from, "me@xn--bcher-kva.example");
    assert_eq!(got[0].rcpt_to, ["user@xn--bcher-kva.example"]);
    assert_eq!(text(&got[0].data), original);
}

#[tokio::test]
async fn sendmail_adds_a_from_in_a_labels() {
    let f = fixture(true, &[]).await;
    let o = sendmail(
        &f,
        &["-i", "-f", "me@BÜCHER.example", "user@bücher.example"],
        b"To: someone\nSubject: no from\n\nbody\n",
    )
    .await;
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    let got = f.server.wait_for_messages(1, Duration::from_secs(2)).await;
    let data = text(&got[0].data);
    assert!(
        data.starts_with("From: <me@xn--bcher-kva.example>\r\n"),
        "{data}"
    );
    assert_eq!(got[0].rcpt_to, ["user@xn--bcher-kva.example"]);
}

#[tokio::test]
async fn a_utf8_local_part_to_a_server_without_smtputf8_is_refused_in_plain_words() {
    let f = ascii_only_fixture().await;
    let mut c = plain_send(&f);
    c.args(["--json", "--to", "jörg@example.org"]).args([
        "--from",
        "a@example.org",
        "--subject",
        "s",
        "--body",
        "b",
    ]);
    let o = run(c).await;
    assert_eq!(code(&o), 69, "{}{}", text(&o.stdout), text(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let r = &v["messages"][0]["recipients"][0];
    assert_eq!(r["address"], "jörg@example.org", "{v}");
    assert_eq!(r["status"], "rejected", "{v}");
    let why = r["text"].as_str().unwrap();
    for words in [
        "jörg@example.org",
        "does not offer SMTPUTF8",
        "RFC 6531",
        "ASCII address",
        "server that offers",
    ] {
        assert!(why.contains(words), "{words:?} missing from: {why}");
    }
    assert!(
        !client_lines(&f).iter().any(|l| l.starts_with("C: MAIL")),
        "refused before MAIL: {:?}",
        client_lines(&f)
    );

    // Per message: in one run, the message to an ASCII address still goes.
    let plain = f.dir.join("plain.eml");
    let utf8 = f.dir.join("utf8.eml");
    std::fs::write(
        &plain,
        "From: a@example.org\nTo: bob@example.org\nSubject: a\n\nhi\n",
    )
    .unwrap();
    std::fs::write(
        &utf8,
        "From: a@example.org\nTo: jörg@example.org\nSubject: b\n\nhi\n",
    )
    .unwrap();
    let mut c = plain_send(&f);
    c.arg("-t").arg(&plain).arg(&utf8);
    let o = run(c).await;
    let out = text(&o.stdout);
    assert_eq!(code(&o), 69, "{out}{}", text(&o.stderr));
    assert!(out.contains("accepted  bob@example.org"), "{out}");
    assert!(
        out.contains("rejected  jörg@example.org") && out.contains("RFC 6531"),
        "{out}"
    );
    let got = f.server.wait_for_messages(1, Duration::from_secs(2)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].rcpt_to, ["bob@example.org"]);
}

#[tokio::test]
async fn direct_delivery_to_an_idn_domain_looks_up_its_a_label() {
    use smtp_testkit::dns::{DnsServer, Zone};
    let f = open_fixture().await;
    let zone = Zone::new()
        .mx("xn--bcher-kva.example", 10, "mx.xn--bcher-kva.example")
        .a("mx.xn--bcher-kva.example", "127.0.0.1".parse().unwrap());
    let dns = DnsServer::start(zone).await.unwrap();
    let mut c = Command::new(BIN);
    c.args(["send", "--dns-server", &dns.addr().to_string()])
        .args(["--mx-port", &f.server.addr().port().to_string()])
        .args(["--from", "a@example.org", "--to", "user@Bücher.example"])
        .args(["--subject", "s", "--body", "b", "--helo", "client.test"])
        .env("XDG_CONFIG_HOME", f.dir.join("empty"));
    let o = run(c).await;
    assert_eq!(code(&o), 0, "{}{}", text(&o.stdout), text(&o.stderr));
    assert!(dns.queried("xn--bcher-kva.example"), "{:?}", dns.queries());
    assert!(
        dns.queries().iter().all(|(n, _)| n.is_ascii()),
        "{:?}",
        dns.queries()
    );
    let got = f.server.wait_for_messages(1, Duration::from_secs(2)).await;
    assert_eq!(got[0].rcpt_to, ["user@xn--bcher-kva.example"]);
    assert!(
        header_section(&got[0].data).contains("To: <user@xn--bcher-kva.example>\r\n"),
        "{}",
        header_section(&got[0].data)
    );
}

#[tokio::test]
async fn probe_shows_capabilities_and_tls() {
    let f = fixture(true, &[]).await;
    let mut c = Command::new(BIN);
    c.args([
        "probe",
        &format!("localhost:{}", f.server.addr().port()),
        "--tls",
        "certified",
        "--json",
        "--ca-file",
    ])
    .arg(f.dir.join("ca.pem"));
    let o = run(c).await;
    assert_eq!(code(&o), 0, "{}{}", text(&o.stdout), text(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["greeting"].as_str().unwrap().starts_with("220 mail.test"));
    let before: Vec<String> = v["capabilities_before_tls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    assert!(before.iter().any(|c| c == "STARTTLS"), "{before:?}");
    assert_eq!(
        v["auth"],
        serde_json::json!(["PLAIN", "LOGIN"]),
        "AUTH appears only after TLS"
    );
    assert_eq!(v["tls"]["verified"], true);
    assert!(v["tls"]["version"].as_str().unwrap().starts_with("TLSv1."));
    assert!(v["tls"]["not_after"].as_str().is_some());
    // The certificate as msmtp --serverinfo shows it.
    assert!(
        v["tls"]["issuer"]
            .as_str()
            .unwrap()
            .contains("smtp-toolkit test CA"),
        "{v}"
    );
    assert_eq!(
        v["tls"]["names"],
        serde_json::json!(["mail.test", "localhost"])
    );
    assert!(v["tls"]["not_before"].as_str().is_some());
    let sha = v["tls"]["sha256"].as_str().unwrap();
    assert_eq!(sha.len(), 32 * 3 - 1, "{sha}");
    assert!(
        sha.split(':')
            .all(|b| b.len() == 2 && u8::from_str_radix(b, 16).is_ok())
    );
    assert!(f.server.messages().is_empty(), "a probe sends no mail");

    // --user tests the login (and --helo names the client); still no mail.
    let probe = |password: &str| {
        let mut c = Command::new(BIN);
        c.args(["probe", &format!("localhost:{}", f.server.addr().port())])
            .args([
                "--tls",
                "certified",
                "--user",
                "alice",
                "--helo",
                "probe.test",
                "-v",
            ])
            .arg("--ca-file")
            .arg(f.dir.join("ca.pem"))
            .args(["--json", "--command-timeout", "10"])
            .env("SMTP_PASSWORD", password);
        c
    };
    let o = run(probe(PASSWORD)).await;
    assert_eq!(code(&o), 0, "{}{}", text(&o.stdout), text(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["authenticated"], "PLAIN", "{v}");
    assert!(
        text(&o.stderr).contains("EHLO probe.test"),
        "{}",
        text(&o.stderr)
    );
    let o = run(probe("wrong")).await;
    assert_eq!(code(&o), 77, "{}{}", text(&o.stdout), text(&o.stderr));
    assert!(f.server.messages().is_empty(), "a probe sends no mail");

    // A port that is not a number is refused, not taken for 25.
    let mut c = Command::new(BIN);
    c.args(["probe", "localhost:smtp"]);
    let o = run(c).await;
    assert_eq!(code(&o), 64, "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("is not a port"),
        "{}",
        text(&o.stderr)
    );
}

#[tokio::test]
async fn probe_shows_the_certificate_that_failed_verification() {
    let f = fixture(true, &[]).await;
    let target = |host: &str| format!("{host}:{}", f.server.addr().port());
    let probe = |host: &str, tls: &str| {
        let mut c = Command::new(BIN);
        c.args(["probe", &target(host), "--tls", tls, "--helo", "probe.test"]);
        c
    };
    // The fingerprint, as a probe that does not verify sees it.
    let mut c = probe("localhost", "required");
    c.arg("--json");
    let o = run(c).await;
    assert_eq!(code(&o), 0, "{}{}", text(&o.stdout), text(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let sha = v["tls"]["sha256"].as_str().unwrap().to_owned();
    assert_eq!(v["certificate"]["sha256"], sha.as_str(), "{v}");

    // Certified without the test CA: an unknown issuer. The certificate is
    // shown all the same, beside the reason; the exit code stays 76.
    let o = run(probe("localhost", "certified")).await;
    let out = text(&o.stdout);
    assert_eq!(code(&o), 76, "{out}{}", text(&o.stderr));
    for expected in [
        "issuer     CN=smtp-toolkit test CA",
        "names      mail.test, localhost",
        &format!("sha256     {sha}"),
        "verified   no: the certificate of localhost is not signed by a trusted authority",
        // The library's advice, said as this command's flags.
        "give the CA with --ca-file, or use --tls required to encrypt without verifying",
        "error      TLS failed:",
    ] {
        assert!(out.contains(expected), "{expected:?} missing from:\n{out}");
    }
    assert!(
        out.contains("valid      ") && !out.contains("valid      ? to ?"),
        "{out}"
    );

    // Certified with the CA but the wrong name, as JSON.
    let mut c = probe("127.0.0.1", "certified");
    c.arg("--json").arg("--ca-file").arg(f.dir.join("ca.pem"));
    let o = run(c).await;
    assert_eq!(code(&o), 76, "{}{}", text(&o.stdout), text(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["tls"].is_null(), "no TLS session: {v}");
    let cert = &v["certificate"];
    assert!(
        cert["issuer"]
            .as_str()
            .unwrap()
            .contains("smtp-toolkit test CA"),
        "{v}"
    );
    assert_eq!(cert["names"], serde_json::json!(["mail.test", "localhost"]));
    assert_eq!(cert["sha256"], sha.as_str());
    assert!(cert["not_after"].is_string(), "{v}");
    assert_eq!(v["error"]["kind"], "tls");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("is not valid for 127.0.0.1"),
        "{v}"
    );
    assert!(f.server.messages().is_empty(), "a probe sends no mail");
}

#[tokio::test]
async fn probe_shows_the_certificate_that_failed_implicit_tls() {
    let ca = TestCa::new();
    let server = CaptureServer::start(CaptureConfig {
        hostname: "mail.test".into(),
        tls: Some(ca.expired_leaf(&["mail.test"])),
        implicit_tls: true,
        ..CaptureConfig::default()
    })
    .await
    .unwrap();
    let mut c = Command::new(BIN);
    c.args(["probe", &format!("localhost:{}", server.addr().port())])
        .args(["--implicit-tls", "--tls", "certified"]);
    let o = run(c).await;
    let out = text(&o.stdout);
    assert_eq!(code(&o), 76, "{out}{}", text(&o.stderr));
    for expected in [
        "issuer     CN=smtp-toolkit test CA",
        "names      mail.test",
        "2020",
        "sha256     ",
        "verified   no: the certificate of localhost",
    ] {
        assert!(out.contains(expected), "{expected:?} missing from:\n{out}");
    }
}

// ---- Safety (issue 11): Bcc, credentials, temporary files, terminal
// escapes, message files that are not what they seem.

/// A capture server that offers AUTH without requiring it, in plaintext.
async fn open_fixture() -> Fixture {
    let server = CaptureServer::start(CaptureConfig {
        hostname: "mail.test".into(),
        auth: Some(("alice".into(), PASSWORD.into())),
        ..CaptureConfig::default()
    })
    .await;
    fixture_with(server).await
}

/// `smtp send` to the fixture in plaintext, no account, no AUTH.
fn plain_send(f: &Fixture) -> Command {
    let mut c = Command::new(BIN);
    c.arg("send")
        .arg("--server")
        .arg(format!("127.0.0.1:{}", f.server.addr().port()))
        .args(["--tls", "none", "--helo", "client.test"])
        .env("XDG_CONFIG_HOME", f.dir.join("empty"));
    c
}

#[tokio::test]
async fn a_composed_message_has_each_field_once() {
    let f = open_fixture().await;
    std::fs::write(f.dir.join("notes.txt"), "plain text\n").unwrap();
    std::fs::write(f.dir.join("report.pdf"), "%PDF-1.4\n").unwrap();
    let mut c = plain_send(&f);
    c.args([
        "--from",
        "Alice Liddell <alice@example.org>",
        "--to",
        "bob@example.net",
    ])
    .args([
        "--cc",
        "carol@example.net",
        "--header",
        "Cc: dave@example.net",
    ])
    .args([
        "--header",
        "to: erin@example.net",
        "--header",
        "message-id: <fixed@example.org>",
    ])
    .args([
        "--header",
        "Date: Tue, 1 Dec 2026 02:00:00 +0000",
        "--header",
        "X-Tag: t",
    ])
    .args(["--subject", "s", "--body", "b", "--attach"])
    .arg(f.dir.join("notes.txt"))
    .arg("--attach")
    .arg(f.dir.join("report.pdf"));
    let o = run(c).await;
    assert_eq!(code(&o), 0, "{}{}", text(&o.stdout), text(&o.stderr));
    let got = f.server.wait_for_messages(1, Duration::from_secs(2)).await;
    let m = &got[0];
    assert_eq!(m.mail_from, "alice@example.org");
    assert_eq!(
        m.rcpt_to,
        [
            "bob@example.net",
            "carol@example.net",
            "erin@example.net",
            "dave@example.net"
        ]
    );
    let head = header_section(&m.data);
    for name in ["from", "to", "cc", "subject", "date", "message-id", "x-tag"] {
        let n = head
            .split("\r\n")
            .filter(|l| l.split(':').next().unwrap_or("").eq_ignore_ascii_case(name))
            .count();
        assert_eq!(n, 1, "{name} once:\n{head}");
    }
    assert!(head.contains("<fixed@example.org>"), "{head}");
    assert!(
        head.contains("Alice Liddell") && !head.contains("<<"),
        "{head}"
    );
    let data = text(&m.data);
    assert!(data.contains("Content-Type: text/plain"), "{data}");
    assert!(data.contains("Content-Type: application/pdf"), "{data}");

    // `<addr>` alone is an address, not a name.
    let mut c = plain_send(&f);
    c.args(["--from", "<alice@example.org>", "--to", "bob@example.net"])
        .args(["--subject", "s", "--body", "b"]);
    let o = run(c).await;
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    let got = f.server.wait_for_messages(2, Duration::from_secs(2)).await;
    let head = header_section(&got[1].data);
    assert!(head.contains("From: <alice@example.org>\r\n"), "{head}");

    // Only hidden recipients: To names the empty group, not nobody.
    let mut c = plain_send(&f);
    c.args(["--from", "a@example.org", "--bcc", "hidden@example.net"])
        .args(["--subject", "s", "--body", "b"]);
    let o = run(c).await;
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    let got = f.server.wait_for_messages(3, Duration::from_secs(2)).await;
    let head = header_section(&got[2].data);
    assert!(head.contains("To: undisclosed-recipients:;\r\n"), "{head}");
    assert_eq!(got[2].rcpt_to, ["hidden@example.net"]);

    // Two subjects, or a From via --header: refused with what to do.
    for (extra, says) in [
        (["--header", "Subject: other"], "give one"),
        (["--header", "From: x@example.org"], "--from"),
    ] {
        let mut c = plain_send(&f);
        c.args(["--from", "a@example.org", "--to", "b@example.net"])
            .args(["--subject", "s", "--body", "b"])
            .args(extra);
        let o = run(c).await;
        assert_eq!(code(&o), 64, "{extra:?}");
        assert!(text(&o.stderr).contains(says), "{}", text(&o.stderr));
    }
}

/// Runs `c` with `input` on its standard input.
async fn run_with_stdin(mut c: Command, input: Vec<u8>) -> Output {
    use tokio::io::AsyncWriteExt;
    c.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    tokio::spawn(async move {
        let _ = stdin.write_all(&input).await;
    });
    tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("smtp finishes")
        .unwrap()
}

/// The header section of received data (up to its blank line).
fn header_section(data: &[u8]) -> String {
    let data = text(data);
    match data.find("\r\n\r\n") {
        Some(end) => data[..end + 2].to_owned(),
        None => data,
    }
}

/// No Bcc field (nor a continuation line of one) in what the server got.
fn assert_no_bcc(data: &[u8], hidden: &[&str], case: &str) {
    let head = header_section(data);
    for line in head.split("\r\n") {
        let name = line.split(':').next().unwrap_or("").trim();
        assert!(
            !name.eq_ignore_ascii_case("bcc"),
            "{case}: a Bcc field went out:\n{head}"
        );
    }
    for h in hidden {
        assert!(
            !text(data).contains(h),
            "{case}: the hidden recipient {h} is in the data:\n{}",
            text(data)
        );
    }
}

const WITH_BCC: &str = "From: Alice <alice@example.org>\nTo: bob@example.net\nBcc: secret-dave@example.net,\n  secret-erin@example.net\nSubject: t\n\nhello\n";

#[tokio::test]
async fn bcc_is_never_transmitted_on_any_path() {
    let f = open_fixture().await;
    let file = f.dir.join("bcc.eml");
    std::fs::write(&file, WITH_BCC).unwrap();
    let hidden = ["secret-dave@example.net", "secret-erin@example.net"];
    let mut expected_messages = 0;
    let mut check = |o: &Output, case: &str, rcpt: &[&str]| {
        assert_eq!(code(o), 0, "{case}: {}{}", text(&o.stdout), text(&o.stderr));
        expected_messages += 1;
        let got = f.server.messages();
        assert_eq!(got.len(), expected_messages, "{case}");
        let m = got.last().unwrap();
        assert_eq!(m.rcpt_to, rcpt, "{case}");
        assert_no_bcc(&m.data, &hidden, case);
    };

    // A message file, without and with -t.
    let mut c = plain_send(&f);
    c.args(["--to", "bob@example.net"]).arg(&file);
    check(&run(c).await, "file without -t", &["bob@example.net"]);
    let mut c = plain_send(&f);
    c.arg("-t").arg(&file);
    check(
        &run(c).await,
        "file with -t",
        &[
            "bob@example.net",
            "secret-dave@example.net",
            "secret-erin@example.net",
        ],
    );

    // Standard input, without and with -t.
    let mut c = plain_send(&f);
    c.args(["--to", "bob@example.net"]);
    check(
        &run_with_stdin(c, WITH_BCC.into()).await,
        "stdin without -t",
        &["bob@example.net"],
    );
    let mut c = plain_send(&f);
    c.arg("-t");
    check(
        &run_with_stdin(c, WITH_BCC.into()).await,
        "stdin with -t",
        &[
            "bob@example.net",
            "secret-dave@example.net",
            "secret-erin@example.net",
        ],
    );

    // A composed message with a Bcc header given as --header: a hidden
    // recipient, as with --bcc.
    let mut c = plain_send(&f);
    c.args([
        "--from",
        "alice@example.org",
        "--to",
        "bob@example.net",
        "--header",
        "Bcc: secret-dave@example.net",
        "--subject",
        "s",
        "--body",
        "b",
    ]);
    check(
        &run(c).await,
        "--header Bcc",
        &["bob@example.net", "secret-dave@example.net"],
    );

    // --cc goes in the header and is a recipient; --bcc only a recipient.
    let mut c = plain_send(&f);
    c.args([
        "--from",
        "alice@example.org",
        "--to",
        "bob@example.net",
        "--cc",
        "carol@example.net",
        "--bcc",
        "secret-dave@example.net",
        "--subject",
        "s",
        "--body",
        "b",
    ]);
    check(
        &run(c).await,
        "--cc/--bcc",
        &[
            "bob@example.net",
            "carol@example.net",
            "secret-dave@example.net",
        ],
    );
    let head = header_section(&f.server.messages().last().unwrap().data);
    assert!(
        head.contains("Cc: <carol@example.net>") || head.contains("Cc: carol@example.net"),
        "{head}"
    );

    // sendmail mode, without and with -t.
    let link = f.dir.join("sendmail");
    std::os::unix::fs::symlink(BIN, &link).unwrap();
    let config_dir = f.dir.join("xdg").join("smtp");
    std::fs::create_dir_all(&config_dir).unwrap();
    std::fs::write(
        config_dir.join("config.toml"),
        format!(
            "[accounts.default]\nserver = \"127.0.0.1:{}\"\ntls = \"none\"\n",
            f.server.addr().port()
        ),
    )
    .unwrap();
    let sendmail = || {
        let mut c = Command::new(&link);
        c.env("XDG_CONFIG_HOME", f.dir.join("xdg"));
        c
    };
    let mut c = sendmail();
    c.args(["-oi", "bob@example.net"]);
    check(
        &run_with_stdin(c, WITH_BCC.into()).await,
        "sendmail without -t",
        &["bob@example.net"],
    );
    let mut c = sendmail();
    c.args(["-t", "-oi"]);
    check(
        &run_with_stdin(c, WITH_BCC.into()).await,
        "sendmail -t",
        &[
            "bob@example.net",
            "secret-dave@example.net",
            "secret-erin@example.net",
        ],
    );
}

/// The client's command lines in the server's transcripts.
fn client_lines(f: &Fixture) -> Vec<String> {
    f.server
        .sessions()
        .iter()
        .flat_map(|s| s.transcript.iter())
        .filter(|l| l.starts_with("C: "))
        .cloned()
        .collect()
}

#[tokio::test]
async fn account_credentials_stay_with_their_server() {
    let f = open_fixture().await;
    let port = f.server.addr().port();
    let config = |server: &str| {
        let path = f
            .dir
            .join(format!("accounts-{}.toml", server.replace(':', "-")));
        std::fs::write(
            &path,
            format!(
                "[accounts.default]\nserver = \"{server}\"\ntls = \"none\"\nauth = \"plain\"\n\
                 user = \"alice\"\npassword_env = \"ACCOUNT_SECRET\"\nfrom = \"alice@example.org\"\n"
            ),
        )
        .unwrap();
        path
    };
    let send = |config: &PathBuf, server: Option<String>| {
        let mut c = Command::new(BIN);
        c.args(["send", "--config"]).arg(config);
        if let Some(s) = server {
            c.args(["--server", &s]);
        }
        c.args(["--to", "bob@example.net", "--subject", "s", "--body", "b"])
            .env("ACCOUNT_SECRET", PASSWORD)
            .env_remove("SMTP_PASSWORD");
        c
    };
    let no_auth = |case: &str| {
        let lines = client_lines(&f);
        assert!(
            !lines
                .iter()
                .any(|l| l.to_ascii_uppercase().starts_with("C: AUTH")),
            "{case}: the account's secret went to another server: {lines:?}"
        );
    };

    // The account's server is another port on this host: no AUTH here.
    let other_port = config("127.0.0.1:1");
    let o = run(send(&other_port, Some(format!("127.0.0.1:{port}")))).await;
    assert_eq!(code(&o), 0, "{}{}", text(&o.stdout), text(&o.stderr));
    no_auth("another port");
    assert_eq!(f.server.messages()[0].auth_user, None);
    assert!(!text(&o.stderr).contains(PASSWORD));

    // The account's server by another name: no AUTH either.
    let by_ip = config(&format!("127.0.0.1:{port}"));
    let o = run(send(&by_ip, Some(format!("localhost:{port}")))).await;
    assert_eq!(code(&o), 0, "{}{}", text(&o.stdout), text(&o.stderr));
    no_auth("another host name");

    // --user on the command line: that user with the command line's
    // password source, and a note that the account's were not used.
    let mut c = send(&other_port, Some(format!("127.0.0.1:{port}")));
    c.args(["--user", "alice"]).env("SMTP_PASSWORD", PASSWORD);
    let o = run(c).await;
    let err = text(&o.stderr);
    assert_eq!(code(&o), 0, "{}{err}", text(&o.stdout));
    assert_eq!(f.server.messages()[2].auth_user.as_deref(), Some("alice"));
    assert!(err.contains("not used"), "{err}");
    assert_eq!(
        err.lines().filter(|l| l.contains("not used")).count(),
        1,
        "{err}"
    );
    assert!(!err.contains(PASSWORD), "{err}");

    // The account's own server (port given or not): AUTH with its secret.
    let own = config(&format!("127.0.0.1:{port}"));
    for server in [None, Some(format!("127.0.0.1:{port}"))] {
        let o = run(send(&own, server.clone())).await;
        assert_eq!(
            code(&o),
            0,
            "{server:?}: {}{}",
            text(&o.stdout),
            text(&o.stderr)
        );
        assert_eq!(
            f.server.messages().last().unwrap().auth_user.as_deref(),
            Some("alice"),
            "{server:?}"
        );
    }
}

/// Entries of a directory.
fn entries(dir: &std::path::Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default()
}

/// A server that greets, answers EHLO and MAIL, and then says nothing.
async fn stalling_server() -> smtp_testkit::script::ScriptedServer {
    let script = smtp_testkit::script::Script::parse(
        "S: 220 stall.test ESMTP\nC: EHLO *\nS: 250 stall.test\nC: MAIL *\nS: 250 ok\nC: *\nSLEEP 30s\n",
    )
    .unwrap();
    smtp_testkit::script::ScriptedServer::start(script, None)
        .await
        .unwrap()
}

fn terminate(pid: u32) {
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Waits until `ready` holds (at most 20 s).
async fn wait_until(mut ready: impl FnMut() -> bool, what: &str) {
    for _ in 0..200 {
        if ready() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn a_composed_message_is_kept_in_memory_and_nothing_is_left_after_sigterm() {
    let server = stalling_server().await;
    let tmp = std::env::temp_dir().join(format!("smtp-cli-tmp-compose-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).unwrap();
    let attachment =
        std::env::temp_dir().join(format!("smtp-cli-attachment-{}", std::process::id()));
    std::fs::write(&attachment, "private attachment").unwrap();
    let mut c = Command::new(BIN);
    c.args([
        "send",
        "--server",
        &server.addr().to_string(),
        "--tls",
        "none",
    ])
    .args(["--from", "a@example.org", "--to", "b@example.net"])
    .args(["--subject", "s", "--body", "private words", "--attach"])
    .arg(&attachment)
    .env("TMPDIR", &tmp)
    .env("XDG_CONFIG_HOME", tmp.join("none"))
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped());
    let child = c.spawn().unwrap();
    // Give it time to compose and reach the stalled server.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        entries(&tmp),
        Vec::<PathBuf>::new(),
        "a composed message needs no file"
    );
    terminate(child.id().unwrap());
    let o = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(code(&o), 143, "{}", text(&o.stderr));
    assert_eq!(entries(&tmp), Vec::<PathBuf>::new());
    let _ = std::fs::remove_dir_all(&tmp);
    let _ = std::fs::remove_file(&attachment);
}

#[tokio::test]
async fn a_large_standard_input_is_spooled_privately_and_removed_on_sigterm() {
    use std::os::unix::fs::PermissionsExt;
    use tokio::io::AsyncWriteExt;
    let server = stalling_server().await;
    let tmp = std::env::temp_dir().join(format!("smtp-cli-tmp-spool-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).unwrap();
    let mut c = Command::new(BIN);
    c.args([
        "send",
        "--server",
        &server.addr().to_string(),
        "--tls",
        "none",
    ])
    .args(["--from", "a@example.org", "--to", "b@example.net"])
    .env("TMPDIR", &tmp)
    .env("XDG_CONFIG_HOME", tmp.join("none"))
    .stdin(std::process::Stdio::piped())
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    // 17 MiB: more than is kept in memory.
    let mut message = b"From: a@example.org\nSubject: big\n\n".to_vec();
    let line = [b'x'; 76];
    while message.len() < 17 << 20 {
        message.extend_from_slice(&line);
        message.push(b'\n');
    }
    stdin.write_all(&message).await.unwrap();
    drop(stdin);
    let mut spool = None;
    wait_until(
        || {
            let found: Vec<PathBuf> = entries(&tmp).iter().flat_map(|d| entries(d)).collect();
            spool = found.first().cloned();
            spool.is_some()
        },
        "the spool file",
    )
    .await;
    let spool = spool.unwrap();
    let dir = spool.parent().unwrap().to_owned();
    assert_ne!(dir, tmp, "the spool is in a directory of its own");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700, "{}", dir.display());
    assert_eq!(mode(&spool), 0o600, "{}", spool.display());
    // Let it reach the stalled server, then stop it.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    terminate(child.id().unwrap());
    let o = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(code(&o), 143, "{}{}", text(&o.stdout), text(&o.stderr));
    assert_eq!(entries(&tmp), Vec::<PathBuf>::new(), "the spool is removed");
    let _ = std::fs::remove_dir_all(&tmp);
}

/// Text that must never reach a terminal raw: CSI sequences, an OSC title,
/// a bell, a carriage return, a C1 CSI (U+009B) and a bidi override.
const EVIL: &str = "\x1b[31mred\x1b[0m\x1b]0;title\x07\rover\u{9b}2J\u{202e}rev";

fn assert_clean(o: &Output, case: &str) {
    for (name, bytes) in [("stdout", &o.stdout), ("stderr", &o.stderr)] {
        let s = text(bytes);
        let bad: Vec<char> = s
            .chars()
            .filter(|&c| (c.is_control() && c != '\n' && c != '\t') || c == '\u{202e}')
            .collect();
        assert!(bad.is_empty(), "{case}: {name} holds {bad:?}:\n{s}");
    }
}

#[tokio::test]
async fn server_text_reaches_the_terminal_without_escapes() {
    use smtp_testkit::script::{Script, ScriptedServer};
    let ca = TestCa::new();
    let identity = ca.leaf_with_common_name(&["localhost"], &format!("evil{EVIL}.test"));
    let line = |s: String| s.into_bytes();
    // probe: greeting, EHLO before and after TLS, the certificate.
    let probe_script = Script::new()
        .send_raw(&line(format!("220 mx.test {EVIL}\r\n")))
        .expect("EHLO *")
        .send_raw(&line(format!(
            "250-mx.test {EVIL}\r\n250-X-EVIL{EVIL}\r\n250 STARTTLS\r\n"
        )))
        .expect("STARTTLS")
        .send("220 go ahead")
        .starttls()
        .expect("EHLO *")
        .send_raw(&line(format!("250-mx.test\r\n250 X{EVIL}\r\n")))
        .expect("QUIT")
        .send_raw(&line(format!("221 bye {EVIL}\r\n")));
    let server = ScriptedServer::start(probe_script, Some(identity.clone()))
        .await
        .unwrap();
    let mut c = Command::new(BIN);
    c.args([
        "probe",
        &server.addr().to_string(),
        "--tls",
        "required",
        "-v",
    ]);
    let o = run(c).await;
    assert!(text(&o.stdout).contains("cert"), "{}", text(&o.stdout));
    assert_clean(&o, "probe");

    // send -v: replies with escapes, a refused recipient, a failure.
    let send_script = Script::new()
        .send_raw(&line(format!("220 mx.test {EVIL}\r\n")))
        .expect("EHLO *")
        .send_raw(&line(format!("250-mx.test {EVIL}\r\n250 8BITMIME\r\n")))
        .expect("MAIL *")
        .send_raw(&line(format!("250 ok {EVIL}\r\n")))
        .expect("RCPT *")
        .send_raw(&line(format!("550 5.1.1 no {EVIL}\r\n")))
        .expect("RCPT *")
        .send_raw(&line(format!("451 4.3.0 later {EVIL}\r\n")))
        .expect("*")
        .send_raw(&line(format!("421 4.3.0 closing {EVIL}\r\n")))
        .close();
    let server = ScriptedServer::start(send_script, None).await.unwrap();
    let mut c = Command::new(BIN);
    c.args([
        "send",
        "--server",
        &server.addr().to_string(),
        "--tls",
        "none",
        "-v",
    ])
    .args([
        "--from",
        "a@example.org",
        "--to",
        "b@example.net",
        "--to",
        "c@example.net",
    ])
    .args(["--subject", "s", "--body", "b"])
    .env("XDG_CONFIG_HOME", "/nonexistent");
    let o = run(c).await;
    assert!(
        text(&o.stdout).contains("b@example.net"),
        "{}",
        text(&o.stdout)
    );
    assert_clean(&o, "send -v");

    // A certificate for another name under Certified: the refusal names it.
    let tls_script = Script::new()
        .send("220 mx.test ESMTP")
        .expect("EHLO *")
        .send("250-mx.test\r\n250 STARTTLS")
        .expect("STARTTLS")
        .send("220 go ahead")
        .starttls();
    let evil_name = ca.leaf_with_common_name(&["other.test"], &format!("x{EVIL}"));
    let server = ScriptedServer::start(tls_script, Some(evil_name))
        .await
        .unwrap();
    let dir = std::env::temp_dir().join(format!("smtp-cli-evil-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.cert_pem()).unwrap();
    let mut c = Command::new(BIN);
    c.args([
        "probe",
        &server.addr().to_string(),
        "--tls",
        "optional",
        "--ca-file",
    ])
    .arg(dir.join("ca.pem"));
    let o = run(c).await;
    assert!(
        text(&o.stdout).contains("verified   no"),
        "{}",
        text(&o.stdout)
    );
    assert_clean(&o, "probe, another name");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A message file ≥ 32 KiB, so its body streams from the file.
fn large_message() -> Vec<u8> {
    let mut m = b"From: a@example.org\r\nTo: b@example.net\r\nSubject: big\r\n\r\n".to_vec();
    for n in 0..500 {
        m.extend_from_slice(format!("original line {n:066}\r\n").as_bytes());
    }
    m
}

/// A one-connection server that holds its 354 until `go` and returns
/// every byte the client sent after it (until it closes or stays silent).
async fn data_holding_server(
    go: tokio::sync::oneshot::Receiver<()>,
    at_data: tokio::sync::oneshot::Sender<()>,
) -> (std::net::SocketAddr, tokio::task::JoinHandle<Vec<u8>>) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut io = BufReader::new(tcp);
        io.get_mut().write_all(b"220 hold.test\r\n").await.unwrap();
        let mut line = String::new();
        loop {
            line.clear();
            if io.read_line(&mut line).await.unwrap() == 0 {
                return Vec::new();
            }
            let reply: &[u8] = match line.trim_end() {
                l if l.starts_with("EHLO") => b"250 hold.test\r\n",
                "DATA" => break,
                _ => b"250 ok\r\n",
            };
            io.get_mut().write_all(reply).await.unwrap();
        }
        let _ = at_data.send(());
        let _ = go.await;
        io.get_mut().write_all(b"354 go ahead\r\n").await.unwrap();
        let mut rest = Vec::new();
        let mut chunk = [0u8; 8192];
        while let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_secs(2), io.read(&mut chunk)).await
        {
            if n == 0 {
                break;
            }
            rest.extend_from_slice(&chunk[..n]);
        }
        rest
    });
    (addr, task)
}

#[tokio::test]
async fn a_message_file_changed_during_the_send_is_not_sent() {
    let dir = std::env::temp_dir().join(format!("smtp-cli-changed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for how in ["modified in place", "replaced by rename"] {
        let path = dir.join("big.eml");
        let original = large_message();
        std::fs::write(&path, &original).unwrap();
        let (go_tx, go_rx) = tokio::sync::oneshot::channel();
        let (at_data_tx, at_data_rx) = tokio::sync::oneshot::channel();
        let (addr, server) = data_holding_server(go_rx, at_data_tx).await;
        let mut c = Command::new(BIN);
        c.args(["send", "--server", &addr.to_string(), "--tls", "none"])
            .args(["--to", "b@example.net", "--command-timeout", "5", "--json"])
            .arg(&path)
            .env("XDG_CONFIG_HOME", dir.join("none"))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let child = c.spawn().unwrap();
        tokio::time::timeout(Duration::from_secs(20), at_data_rx)
            .await
            .unwrap()
            .unwrap();
        let changed = String::from_utf8(original.clone())
            .unwrap()
            .replace("original", "modified");
        if how == "modified in place" {
            std::fs::write(&path, &changed).unwrap();
        } else {
            let new = dir.join("big.eml.new");
            std::fs::write(&new, &changed).unwrap();
            std::fs::rename(&new, &path).unwrap();
        }
        go_tx.send(()).unwrap();
        let o = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
            .await
            .unwrap()
            .unwrap();
        let got = server.await.unwrap();
        let got_text = text(&got);
        assert!(
            !got_text.contains("\r\n.\r\n"),
            "{how}: the server got an end of data:\n{got_text}"
        );
        assert_eq!(
            code(&o),
            75,
            "{how}: {}{}",
            text(&o.stdout),
            text(&o.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let r = &v["messages"][0]["recipients"][0];
        assert_eq!(r["status"], "deferred", "{how}");
        assert!(
            r["text"]
                .as_str()
                .unwrap()
                .contains("changed after it was read"),
            "{how}: {r}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn message_files_that_are_not_messages_are_refused() {
    let f = open_fixture().await;
    for (name, bytes) in [
        ("empty", &b""[..]),
        ("no header section", &b"Dear Bob,\n\nhello.\n"[..]),
        (
            "body text as headers",
            &b"hello: world but\nthis is a letter\n\nbye\n"[..],
        ),
    ] {
        let path = f.dir.join("not.eml");
        std::fs::write(&path, bytes).unwrap();
        let mut c = plain_send(&f);
        c.args(["--from", "a@example.org", "--to", "b@example.net"])
            .arg(&path);
        let o = run(c).await;
        assert_eq!(
            code(&o),
            65,
            "{name}: {}{}",
            text(&o.stdout),
            text(&o.stderr)
        );
        assert!(
            text(&o.stderr).contains("not.eml"),
            "{name}: {}",
            text(&o.stderr)
        );
    }
    assert!(f.server.messages().is_empty());
}

#[tokio::test]
async fn cr_only_line_endings_end_header_lines() {
    let f = open_fixture().await;
    let path = f.dir.join("cr.eml");
    std::fs::write(
        &path,
        "From: alice@example.org\rTo: bob@example.net\rBcc: secret-dave@example.net\rSubject: cr\rDate: Sun, 29 Nov 2026 02:00:00 +0000\rMessage-ID: <cr@example.org>\r\rhello\rworld\r",
    )
    .unwrap();
    let mut c = plain_send(&f);
    c.arg("-t").arg(&path);
    let o = run(c).await;
    assert_eq!(code(&o), 0, "{}{}", text(&o.stdout), text(&o.stderr));
    let m = &f.server.messages()[0];
    assert_eq!(m.mail_from, "alice@example.org");
    assert_eq!(m.rcpt_to, ["bob@example.net", "secret-dave@example.net"]);
    assert_no_bcc(&m.data, &["secret-dave@example.net"], "CR only");
    let data = text(&m.data);
    assert_eq!(data.matches("Date:").count(), 1, "{data}");
    assert_eq!(data.matches("Message-ID:").count(), 1, "{data}");
    assert!(data.contains("Subject: cr\r\n"), "{data}");
    assert!(data.contains("\r\n\r\nhello\r\nworld\r\n"), "{data}");
}

/// A lock-step server that takes one message, then says nothing more once
/// the next MAIL arrives (and tells `stalled`). A second connection is
/// neither accepted nor refused: its greeting never comes.
async fn stalls_at_the_second_mail(stalled: tokio::sync::oneshot::Sender<()>) -> u16 {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let (r, mut w) = tcp.into_split();
        let mut lines = BufReader::new(r).lines();
        w.write_all(b"220 stall.test\r\n").await.unwrap();
        let (mut mails, mut in_data) = (0, false);
        let mut stalled = Some(stalled);
        while let Ok(Some(line)) = lines.next_line().await {
            let reply: &[u8] = if in_data {
                if line != "." {
                    continue;
                }
                in_data = false;
                b"250 2.0.0 queued\r\n"
            } else if line.starts_with("EHLO") {
                b"250 stall.test\r\n"
            } else if line.starts_with("MAIL") {
                mails += 1;
                if mails == 2 {
                    let _ = stalled.take().map(|s| s.send(()));
                    tokio::time::sleep(Duration::from_secs(60)).await;
                }
                b"250 ok\r\n"
            } else if line == "DATA" {
                in_data = true;
                b"354 go\r\n"
            } else {
                b"250 ok\r\n"
            };
            if w.write_all(reply).await.is_err() {
                break;
            }
        }
        let _listening = listener;
        tokio::time::sleep(Duration::from_secs(60)).await;
    });
    port
}

#[tokio::test]
async fn an_interrupted_send_reports_what_was_accepted_and_what_is_not_known() {
    let dir = std::env::temp_dir().join(format!("smtp-interrupt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let files: Vec<PathBuf> = (1..=3)
        .map(|n| {
            let p = dir.join(format!("m{n}.eml"));
            std::fs::write(
                &p,
                format!("From: a@example.org\nSubject: {n}\n\nbody {n}\n"),
            )
            .unwrap();
            p
        })
        .collect();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let port = stalls_at_the_second_mail(tx).await;
    let child = Command::new(BIN)
        .args([
            "send",
            "--server",
            &format!("127.0.0.1:{port}"),
            "--tls",
            "none",
        ])
        .args(["--to", "b@example.net", "--json"])
        .args(&files)
        .env("XDG_CONFIG_HOME", dir.join("no-config"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::timeout(Duration::from_secs(20), rx)
        .await
        .expect("the first message went through")
        .unwrap();
    let status = std::process::Command::new("kill")
        .args(["-INT", &child.id().unwrap().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let o = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(code(&o), 130, "{}", text(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("one JSON object");
    let status_of = |m: usize| v["messages"][m]["recipients"][0]["status"].clone();
    assert_eq!(status_of(0), "accepted", "{v}");
    for m in [1, 2] {
        assert_eq!(status_of(m), "deferred", "{v}");
        let t = v["messages"][m]["recipients"][0]["text"].as_str().unwrap();
        assert!(t.contains("interrupted"), "{t}");
    }
    assert!(
        text(&o.stderr).contains("interrupted: 1 accepted"),
        "{}",
        text(&o.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_secret_the_server_echoes_back_is_never_printed() {
    let plain = "AGFsaWNlAGNvcnJlY3QtaG9yc2UtYmF0dGVyeQ=="; // PLAIN's "\0alice\0<password>"
    let script = smtp_testkit::script::Script::parse(&format!(
        "S: 220 echo.test\nC: EHLO *\nS: 250-echo.test\nS: 250 AUTH PLAIN\nC: AUTH PLAIN *\n\
         S: 535 5.7.8 you sent {PASSWORD} as {plain}\nC: QUIT\n"
    ))
    .unwrap();
    let server = smtp_testkit::script::ScriptedServer::start(script, None)
        .await
        .unwrap();
    // -v (the transcript on stderr) and --json (the report on stdout) at once.
    let mut c = Command::new(BIN);
    c.args([
        "send",
        "--server",
        &format!("127.0.0.1:{}", server.addr().port()),
    ])
    .args([
        "--tls", "none", "--auth", "plain", "--user", "alice", "-v", "--json",
    ])
    .args(["--from", "a@example.org", "--to", "b@example.net"])
    .args(["--subject", "s", "--body", "b"])
    .env("SMTP_PASSWORD", PASSWORD)
    .env("XDG_CONFIG_HOME", "/nonexistent");
    let o = run(c).await;
    assert_eq!(code(&o), 77);
    let (out, err) = (text(&o.stdout), text(&o.stderr));
    assert!(out.contains("you sent <redacted> as <redacted>"), "{out}");
    assert!(err.contains("you sent <redacted> as <redacted>"), "{err}");
    let all = format!("{out}{err}");
    assert!(!all.contains(PASSWORD) && !all.contains(plain), "{all}");
}

#[tokio::test]
async fn a_host_that_failed_before_another_took_the_mail_does_not_set_the_exit_code() {
    use smtp_testkit::dns::{DnsServer, Zone};
    // mx1 offers no STARTTLS (a policy failure under --tls required); mx2
    // does, and takes the message.
    let plain = CaptureServer::start_on("127.0.0.30:0".parse().unwrap(), CaptureConfig::default())
        .await
        .unwrap();
    let port = plain.addr().port();
    let ca = TestCa::new();
    let tls = CaptureServer::start_on(
        format!("127.0.0.31:{port}").parse().unwrap(),
        CaptureConfig {
            tls: Some(ca.leaf(&["mx2.p.test"])),
            ..CaptureConfig::default()
        },
    )
    .await
    .unwrap();
    let zone = Zone::new()
        .mx("p.test", 10, "mx1.p.test")
        .a("mx1.p.test", "127.0.0.30".parse().unwrap())
        .mx("p.test", 20, "mx2.p.test")
        .a("mx2.p.test", "127.0.0.31".parse().unwrap());
    let dns = DnsServer::start(zone).await.unwrap();
    let mut c = Command::new(BIN);
    c.args([
        "send",
        "--tls",
        "required",
        "--dns-server",
        &dns.addr().to_string(),
    ])
    .args(["--mx-port", &port.to_string(), "--helo", "client.test"])
    .args([
        "--from",
        "a@example.org",
        "--to",
        "b@p.test",
        "--subject",
        "s",
        "--body",
        "b",
    ])
    .env("XDG_CONFIG_HOME", "/nonexistent");
    let o = run(c).await;
    assert_eq!(code(&o), 0, "{}{}", text(&o.stdout), text(&o.stderr));
    assert!(
        text(&o.stdout).starts_with("accepted"),
        "{}",
        text(&o.stdout)
    );
    assert_eq!(
        tls.wait_for_messages(1, Duration::from_secs(2)).await.len(),
        1
    );
    assert!(plain.messages().is_empty());
}

#[tokio::test]
async fn a_silent_server_gets_the_implicit_tls_hint() {
    // An implicit-TLS port says nothing until it gets a ClientHello.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let (_tcp, _) = listener.accept().await.unwrap();
        tokio::time::sleep(Duration::from_secs(60)).await;
    });
    let mut c = Command::new(BIN);
    c.args([
        "send",
        "--server",
        &format!("127.0.0.1:{port}"),
        "--tls",
        "none",
    ])
    .args([
        "--command-timeout",
        "7",
        "--from",
        "a@example.org",
        "--to",
        "b@example.net",
    ])
    .args(["--subject", "s", "--body", "b"])
    .env("XDG_CONFIG_HOME", "/nonexistent");
    let o = run(c).await;
    assert_eq!(code(&o), 75, "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("use --implicit-tls"),
        "{}",
        text(&o.stderr)
    );
}

#[tokio::test]
async fn probe_gives_a_silent_server_the_implicit_tls_hint_too() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let (_tcp, _) = listener.accept().await.unwrap();
        tokio::time::sleep(Duration::from_secs(60)).await;
    });
    let mut c = Command::new(BIN);
    c.args(["probe", &format!("127.0.0.1:{port}"), "--tls", "none"])
        .args(["--command-timeout", "7"])
        .env("XDG_CONFIG_HOME", "/nonexistent");
    let o = run(c).await;
    assert!(
        text(&o.stderr).contains("use --implicit-tls"),
        "{}{}",
        text(&o.stdout),
        text(&o.stderr)
    );
}

// ---- Bulk sending output (issue 12): each message's lines as it finishes,
// a closing summary, a bar on a terminal.

/// Message files `m1.eml`… in `dir`, message n to the recipients `to[n-1]`.
fn message_files(dir: &std::path::Path, to: &[&str]) -> Vec<PathBuf> {
    std::fs::create_dir_all(dir).unwrap();
    to.iter()
        .enumerate()
        .map(|(n, to)| {
            let p = dir.join(format!("m{}.eml", n + 1));
            std::fs::write(
                &p,
                format!("From: a@example.org\nTo: {to}\nSubject: {n}\n\nbody {n}\n"),
            )
            .unwrap();
            p
        })
        .collect()
}

/// The lines of `out` that start with `status`, trimmed of the rest.
fn status_lines<'a>(out: &'a str, status: &str) -> Vec<&'a str> {
    out.lines().filter(|l| l.starts_with(status)).collect()
}

#[tokio::test]
async fn several_messages_print_their_lines_once_in_order_and_a_summary() {
    let server = CaptureServer::start(CaptureConfig {
        reject: vec![("x@example.net".into(), "550 5.1.1 no such user".into())],
        ..CaptureConfig::default()
    })
    .await
    .unwrap();
    let dir = std::env::temp_dir().join(format!("smtp-bulk-a-{}", std::process::id()));
    let files = message_files(
        &dir,
        &[
            "r1@example.net",
            "r2@example.net, x@example.net",
            "r3@example.net",
        ],
    );
    let mut c = Command::new(BIN);
    c.args(["send", "--server"])
        .arg(format!("127.0.0.1:{}", server.addr().port()))
        .args(["--tls", "none", "-t"])
        .args(&files)
        .env("XDG_CONFIG_HOME", dir.join("no-config"));
    let o = run(c).await;
    let (out, err) = (text(&o.stdout), text(&o.stderr));
    assert_eq!(code(&o), 69, "{out}{err}");
    let addresses: Vec<&str> = out
        .lines()
        .map(|l| l.split_whitespace().nth(1).unwrap_or_default())
        .collect();
    assert_eq!(
        addresses,
        [
            "r1@example.net",
            "r2@example.net",
            "x@example.net",
            "r3@example.net"
        ],
        "each recipient's line once, in the order sent:\n{out}"
    );
    // Each line names its message file.
    let names: Vec<bool> = out
        .lines()
        .zip(["m1.eml)", "m2.eml)", "m2.eml)", "m3.eml)"])
        .map(|(l, name)| l.ends_with(name))
        .collect();
    assert_eq!(names, [true; 4], "{out}");
    assert!(out.lines().all(|l| !l.contains("messages,")), "{out}");
    let summary = "3 messages, 4 recipients: 3 accepted, 0 deferred, 1 rejected in ";
    assert_eq!(err.matches(summary).count(), 1, "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Reads `child`'s standard output until a line contains `needle`, within
/// 10 s; what was read so far.
async fn read_until(
    out: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    needle: &str,
) -> String {
    let mut seen = String::new();
    let found = tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(Some(line)) = out.next_line().await {
            seen.push_str(&line);
            seen.push('\n');
            if line.contains(needle) {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(
        found,
        Ok(true),
        "no {needle:?} while running; read:\n{seen}"
    );
    seen
}

/// Runs `c` against a server that takes the first message and then stalls:
/// the first message's line must appear while the run goes on; after
/// SIGINT, every other recipient is reported as not known, and nothing
/// already printed is printed again. Returns all standard output.
async fn first_line_while_running_then_interrupt(mut c: Command, first: &str) -> String {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt};
    let mut child = c
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut out = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let seen = read_until(&mut out, first).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "still running when the first line came"
    );
    let status = std::process::Command::new("kill")
        .args(["-INT", &child.id().unwrap().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let mut rest = String::new();
    let mut err = String::new();
    let mut stderr = child.stderr.take().unwrap();
    tokio::time::timeout(Duration::from_secs(20), async {
        while let Ok(Some(line)) = out.next_line().await {
            rest.push_str(&line);
            rest.push('\n');
        }
        stderr.read_to_string(&mut err).await.unwrap();
    })
    .await
    .expect("the interrupted run ends");
    let status = child.wait().await.unwrap();
    assert_eq!(status.code(), Some(130), "{err}");
    let all = format!("{seen}{rest}");
    assert_eq!(all.matches(first).count(), 1, "printed once:\n{all}");
    assert!(err.contains("interrupted: 1 accepted"), "{err}");
    all
}

#[tokio::test]
async fn an_interrupted_json_run_says_so_in_its_error() {
    let dir = std::env::temp_dir().join(format!("smtp-bulk-j-{}", std::process::id()));
    let files = message_files(&dir, &["r1@example.net", "r2@example.net"]);
    let (tx, rx) = tokio::sync::oneshot::channel();
    let port = stalls_at_the_second_mail(tx).await;
    let mut c = Command::new(BIN);
    c.args(["send", "--json", "--server", &format!("127.0.0.1:{port}")])
        .args(["--tls", "none", "-t"])
        .args(&files)
        .env("XDG_CONFIG_HOME", dir.join("no-config"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = c.spawn().unwrap();
    tokio::time::timeout(Duration::from_secs(10), rx)
        .await
        .expect("the client reaches the second message")
        .unwrap();
    let status = std::process::Command::new("kill")
        .args(["-INT", &child.id().unwrap().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let o = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .expect("the interrupted run ends")
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("one JSON object");
    assert_eq!(v["error"]["kind"], "interrupted", "{v}");
    assert_eq!(v["summary"]["accepted"], 1, "{v}");
    assert_eq!(v["summary"]["deferred"], 1, "{v}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_record_of_each_sent_message_is_printed_before_the_run_ends() {
    let dir = std::env::temp_dir().join(format!("smtp-bulk-b-{}", std::process::id()));
    let files = message_files(
        &dir,
        &["r1@example.net", "r2@example.net", "r3@example.net"],
    );
    let (tx, _rx) = tokio::sync::oneshot::channel();
    let port = stalls_at_the_second_mail(tx).await;
    let mut c = Command::new(BIN);
    c.args(["send", "--server", &format!("127.0.0.1:{port}")])
        .args(["--tls", "none", "-t"])
        .args(&files)
        .env("XDG_CONFIG_HOME", dir.join("no-config"));
    let out = first_line_while_running_then_interrupt(c, "accepted  r1@example.net").await;
    let later = status_lines(&out, "deferred");
    assert_eq!(later.len(), 2, "{out}");
    assert!(later[0].contains("r2@example.net") && later[0].contains("interrupted"));
    assert!(later[1].contains("r3@example.net") && later[1].contains("interrupted"));
    // Neither message's data went out: certainly not delivered.
    assert!(
        later.iter().all(|l| l.contains("it was not delivered")),
        "{out}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn direct_delivery_prints_each_message_as_it_finishes() {
    use smtp_testkit::dns::{DnsServer, Zone};
    let dir = std::env::temp_dir().join(format!("smtp-bulk-c-{}", std::process::id()));
    let files = message_files(&dir, &["r1@m.test", "r2@m.test"]);
    // Takes the first message's session; the second one's connection is
    // never accepted, so its greeting never comes.
    let (tx, _rx) = tokio::sync::oneshot::channel();
    let port = stalls_at_the_second_mail(tx).await;
    let zone = Zone::new()
        .mx("m.test", 10, "mx.m.test")
        .a("mx.m.test", "127.0.0.1".parse().unwrap());
    let dns = DnsServer::start(zone).await.unwrap();
    let mut c = Command::new(BIN);
    c.args(["send", "--dns-server", &dns.addr().to_string()])
        .args([
            "--mx-port",
            &port.to_string(),
            "--helo",
            "client.test",
            "-t",
        ])
        .args(&files)
        .env("XDG_CONFIG_HOME", dir.join("no-config"));
    let out = first_line_while_running_then_interrupt(c, "accepted  r1@m.test").await;
    let later = status_lines(&out, "deferred");
    assert_eq!(later.len(), 1, "{out}");
    assert!(later[0].contains("r2@m.test") && later[0].contains("interrupted"));
    assert!(later[0].contains("it was not delivered"), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn on_a_terminal_a_bar_shows_progress_rate_and_time_left() {
    // script(1) from util-linux runs the command on a pseudo-terminal.
    assert!(
        std::process::Command::new("script")
            .arg("--version")
            .output()
            .is_ok(),
        "this test needs script(1) from util-linux (Debian's bsdutils) to run smtp on a terminal"
    );
    let f = open_fixture().await;
    let files = message_files(
        &f.dir,
        &["r1@example.net", "r2@example.net", "r3@example.net"],
    );
    let command = format!(
        "{BIN} send --server 127.0.0.1:{} --tls none -t {}",
        f.server.addr().port(),
        files
            .iter()
            .map(|p| format!("'{}'", p.display()))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let mut c = Command::new("script");
    c.args(["-qfec", &command, "/dev/null"])
        .env("TERM", "xterm")
        .env("XDG_CONFIG_HOME", f.dir.join("empty"))
        .stdin(std::process::Stdio::null());
    let o = run(c).await;
    let out = text(&o.stdout);
    assert_eq!(code(&o), 0, "{out}");
    for bar in ["/3 messages", "/s", "ETA "] {
        assert!(out.contains(bar), "{bar:?} missing from:\n{out:?}");
    }
    for n in 1..=3 {
        let line = format!("accepted  r{n}@example.net  250");
        assert_eq!(out.matches(&line).count(), 1, "{out:?}");
    }
    assert_eq!(
        out.matches("3 messages, 3 recipients").count(),
        1,
        "{out:?}"
    );
}

/// A Bcc or Resent-Bcc field in a message's header section, in any case.
/// (Not a search for "bcc" anywhere: a random Message-ID may contain it.)
fn has_bcc_field(message: &str) -> bool {
    let head = message.split("\r\n\r\n").next().unwrap_or(message);
    head.lines().any(|line| {
        let line = line.to_ascii_lowercase();
        line.starts_with("bcc:") || line.starts_with("resent-bcc:")
    })
}

/// `mailq` and `sendmail -bp` are `smtp queue list` (here on a state
/// directory without a queue: its own "no queue" answer, exit 66);
/// `sendmail -q` is refused with the command that runs the queue.
#[test]
fn mailq_and_sendmail_bp_list_the_queue_and_q_points_to_queue_run() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    for name in ["mailq", "sendmail"] {
        std::os::unix::fs::symlink(BIN, dir.path().join(name)).unwrap();
    }
    let run = |name: &str, args: &[&str]| {
        std::process::Command::new(dir.path().join(name))
            .args(args)
            .env("XDG_STATE_HOME", &state)
            .env("XDG_CONFIG_HOME", dir.path().join("no-config"))
            .output()
            .unwrap()
    };
    for (name, args) in [("mailq", &[][..]), ("sendmail", &["-bp"][..])] {
        let o = run(name, args);
        let err = text(&o.stderr);
        assert_eq!(code(&o), 66, "{name} {args:?}: {err}");
        assert!(err.contains("queue"), "{name} {args:?}: {err}");
        assert!(
            !state.join("smtp").join("queue").exists(),
            "nothing created"
        );
    }
    let o = run("sendmail", &["-q"]);
    assert_eq!(code(&o), 64);
    assert!(
        text(&o.stderr).contains("smtp queue run"),
        "{}",
        text(&o.stderr)
    );
}
