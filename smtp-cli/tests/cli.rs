//! The built `smtp` binary against testkit servers on 127.0.0.1: JSON,
//! exit codes, -t with Bcc removal, sendmail mode, config accounts, and no
//! secret in the transcript or the process arguments.

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
    .await
    .unwrap();
    let dir = std::env::temp_dir().join(format!(
        "smtp-cli-test-{}-{}",
        std::process::id(),
        server.addr().port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.cert_pem()).unwrap();
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
    ]);
    c.env("SMTP_PASSWORD", "wrong-password");
    let o = run(c).await;
    assert_eq!(code(&o), 77, "{}{}", text(&o.stdout), text(&o.stderr));

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
    assert!(!data.to_ascii_lowercase().contains("bcc"), "{data}");
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
    assert!(v["error"].as_str().unwrap().contains("accepts no mail"));
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
    assert!(f.server.messages().is_empty(), "a probe sends no mail");
}
