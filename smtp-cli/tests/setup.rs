//! `smtp setup` through the built binary: every DNS answer comes from the
//! testkit's zone server on 127.0.0.1 (`--dns-server`), the candidates are
//! testkit capture servers on 127.0.0.1 with certificates from a test CA
//! (`--ca-file`). SRV records carry the servers' ephemeral ports; the
//! usual names are tried on ports given by the hidden `--implicit-port`
//! and `--starttls-port`. Nothing leaves the machine.
//!
//! A server that cannot start fails its test: it never skips.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde_json::Value;
use smtp_testkit::capture::{CaptureConfig, CaptureServer};
use smtp_testkit::certs::{Identity, TestCa};
use smtp_testkit::closed_port;
use smtp_testkit::dns::{DnsServer, Zone};
use smtp_testkit::https::{HttpsServer, Pages};
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_smtp");
const USER: &str = "alice@example.test";
const PASSWORD: &str = "correct horse";
const LOOPBACK: Ipv4Addr = Ipv4Addr::LOCALHOST;

/// A submission server with AUTH for `USER`, its certificate `identity`.
async fn server(identity: Identity, implicit_tls: bool) -> CaptureServer {
    CaptureServer::start(CaptureConfig {
        tls: Some(identity),
        implicit_tls,
        auth: Some((USER.to_owned(), PASSWORD.to_owned())),
        require_auth: true,
        ..CaptureConfig::default()
    })
    .await
    .expect("the capture server starts")
}

async fn dns(zone: Zone) -> DnsServer {
    DnsServer::start(zone).await.expect("the DNS server starts")
}

struct Run {
    code: i32,
    json: Value,
    stderr: String,
}

impl Run {
    fn candidates(&self) -> &Vec<Value> {
        self.json["candidates"]
            .as_array()
            .unwrap_or_else(|| panic!("no candidates: {}", self.json))
    }
}

/// A test directory with the CA's certificate in `ca.pem`.
fn dir_with_ca(ca: &TestCa) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let pem = dir.path().join("ca.pem");
    std::fs::write(&pem, ca.cert_pem()).unwrap();
    (dir, pem)
}

/// `smtp setup --json --yes ADDRESS` with `args`, the password in the
/// environment variable SETUP_TEST_PW, standard input not a terminal.
async fn setup(dns: &DnsServer, dir: &Path, ca: &Path, password: &str, args: &[&str]) -> Run {
    let out = Command::new(BIN)
        .arg("setup")
        .args(["--json", "--yes", "--connect-timeout", "5", "--dns-server"])
        .arg(dns.addr().to_string())
        .arg("--ca-file")
        .arg(ca)
        .arg("--config")
        .arg(dir.join("config.toml"))
        .args(["--password-env", "SETUP_TEST_PW"])
        .args(args)
        .env("SETUP_TEST_PW", password)
        .env_remove("SMTP_PASSWORD")
        .env("HOME", dir)
        .env("XDG_CONFIG_HOME", dir.join("xdg"))
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    let json = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("not one JSON object ({e}): {stdout}"));
    let run = Run {
        code: out.status.code().unwrap_or(-1),
        json,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert!(
        !stdout.contains(password) && !run.stderr.contains(password),
        "the password was printed"
    );
    run
}

fn config(dir: &Path) -> Option<String> {
    std::fs::read_to_string(dir.join("config.toml")).ok()
}

#[tokio::test]
async fn an_srv_record_is_followed_to_its_target_and_a_good_login_writes_the_account() {
    let ca = TestCa::new();
    let smtp = server(ca.leaf(&["submit.example.test"]), true).await;
    let zone = Zone::new()
        .srv(
            "_submissions._tcp.example.test",
            0,
            1,
            smtp.addr().port(),
            "submit.example.test",
        )
        .a("submit.example.test", LOOPBACK);
    let dns = dns(zone).await;
    let (dir, pem) = dir_with_ca(&ca);
    // Another account is already there, with a comment: both stay.
    std::fs::write(
        dir.path().join("config.toml"),
        "# mine\n[accounts.home]\nserver = \"smtp.home.test\"\n",
    )
    .unwrap();
    let run = setup(
        &dns,
        dir.path(),
        &pem,
        PASSWORD,
        &["alice@example.test", "--account", "work"],
    )
    .await;
    assert_eq!(run.code, 0, "{}\n{}", run.json, run.stderr);
    let first = &run.candidates()[0];
    assert_eq!(first["host"], "submit.example.test");
    assert_eq!(first["source"], "srv");
    assert_eq!(first["verified"], true);
    assert_eq!(run.json["chosen"]["port"], smtp.addr().port());
    assert_eq!(run.json["login"]["ok"], true, "{}", run.json);
    assert_eq!(run.json["account"]["written"], true);
    // The usual names were not needed.
    assert!(!dns.queried("smtp.example.test"), "{:?}", dns.queries());
    let text = config(dir.path()).expect("the config file is written");
    assert!(text.starts_with("# mine\n[accounts.home]"), "{text}");
    let file: toml::Table = toml::from_str(&text).unwrap();
    let work = &file["accounts"]["work"];
    assert_eq!(work["server"].as_str(), Some("submit.example.test"));
    assert_eq!(
        work["port"].as_integer(),
        Some(i64::from(smtp.addr().port()))
    );
    assert_eq!(work["implicit_tls"].as_bool(), Some(true));
    assert_eq!(work["user"].as_str(), Some(USER));
    assert_eq!(work["password_env"].as_str(), Some("SETUP_TEST_PW"));
    assert!(work.get("password").is_none(), "{text}");
    assert!(
        run.json["send_command"]
            .as_str()
            .unwrap()
            .contains("--account work"),
        "{}",
        run.json
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("config.toml"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // The file still parses as `smtp send` reads it (unknown keys refused).
    let out = Command::new(BIN)
        .args(["doctor", "--json", "--config"])
        .arg(dir.path().join("config.toml"))
        .args(["--account", "nonesuch", "--from", USER])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("nonesuch"), "{stdout}");
    assert!(stdout.contains("home, work"), "{stdout}");
}

#[tokio::test]
async fn the_password_is_stored_only_when_asked() {
    let ca = TestCa::new();
    let smtp = server(ca.leaf(&["submit.example.test"]), true).await;
    let zone = Zone::new()
        .srv(
            "_submissions._tcp.example.test",
            0,
            1,
            smtp.addr().port(),
            "submit.example.test",
        )
        .a("submit.example.test", LOOPBACK);
    let dns = dns(zone).await;
    let (dir, pem) = dir_with_ca(&ca);
    // From SMTP_PASSWORD (no source option), not stored: nothing names it.
    let out = Command::new(BIN)
        .args(["setup", "--yes", "--json", "--dns-server"])
        .arg(dns.addr().to_string())
        .arg("--ca-file")
        .arg(&pem)
        .arg("--config")
        .arg(dir.path().join("config.toml"))
        .arg("alice@example.test")
        .env("SMTP_PASSWORD", PASSWORD)
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = config(dir.path()).unwrap();
    assert!(
        !text.contains(PASSWORD) && !text.contains("password"),
        "{text}"
    );
    assert!(text.contains("[accounts.\"example.test\"]"), "{text}");
    // With --store-password it is in the file (and only there).
    let out = Command::new(BIN)
        .args([
            "setup",
            "--yes",
            "--store-password",
            "--account",
            "stored",
            "--dns-server",
        ])
        .arg(dns.addr().to_string())
        .arg("--ca-file")
        .arg(&pem)
        .arg("--config")
        .arg(dir.path().join("config.toml"))
        .arg("alice@example.test")
        .env("SMTP_PASSWORD", PASSWORD)
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains(PASSWORD));
    let file: toml::Table = toml::from_str(&config(dir.path()).unwrap()).unwrap();
    assert_eq!(
        file["accounts"]["stored"]["password"].as_str(),
        Some(PASSWORD)
    );
    assert!(file["accounts"]["example.test"].get("password").is_none());
    // --store-password with --password-env: stored as asked, not the
    // variable's name.
    let out = Command::new(BIN)
        .args([
            "setup",
            "--yes",
            "--store-password",
            "--password-env",
            "MY_PW",
            "--account",
            "from-env",
            "--dns-server",
        ])
        .arg(dns.addr().to_string())
        .arg("--ca-file")
        .arg(&pem)
        .arg("--config")
        .arg(dir.path().join("config.toml"))
        .arg("alice@example.test")
        .env("MY_PW", PASSWORD)
        .env_remove("SMTP_PASSWORD")
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let file: toml::Table = toml::from_str(&config(dir.path()).unwrap()).unwrap();
    let account = &file["accounts"]["from-env"];
    assert_eq!(account["password"].as_str(), Some(PASSWORD));
    assert!(account.get("password_env").is_none(), "{account}");
}

#[tokio::test]
async fn without_srv_records_the_usual_names_are_probed() {
    let ca = TestCa::new();
    let smtp = server(ca.leaf(&["smtp.example.test"]), true).await;
    let zone = Zone::new()
        .a("example.test", LOOPBACK)
        .a("smtp.example.test", LOOPBACK);
    let dns = dns(zone).await;
    let (dir, pem) = dir_with_ca(&ca);
    let implicit = smtp.addr().port().to_string();
    let starttls = closed_port().to_string();
    let https = closed_port().to_string();
    let run = setup(
        &dns,
        dir.path(),
        &pem,
        PASSWORD,
        &[
            "alice@example.test",
            "--implicit-port",
            &implicit,
            "--starttls-port",
            &starttls,
            "--https-port",
            &https,
        ],
    )
    .await;
    assert_eq!(run.code, 0, "{}\n{}", run.json, run.stderr);
    assert!(dns.queried("_submissions._tcp.example.test"));
    assert!(dns.queried("_submission._tcp.example.test"));
    assert!(dns.queried("mail.example.test"));
    // The autoconfiguration was looked for first: at autoconfig.example.test
    // (which does not exist) and at the domain's .well-known path (refused).
    assert!(dns.queried("autoconfig.example.test"));
    let tries = run.json["autoconfig"].as_array().unwrap();
    assert_eq!(tries.len(), 1, "{tries:?}");
    assert!(
        tries[0]["url"].as_str().unwrap().contains("example.test:"),
        "{tries:?}"
    );
    assert!(tries[0]["error"].is_string(), "{tries:?}");
    let hosts: Vec<String> = run
        .candidates()
        .iter()
        .map(|c| {
            format!(
                "{}:{} {}",
                c["host"].as_str().unwrap(),
                c["port"],
                c["source"]
            )
        })
        .collect();
    assert_eq!(hosts.len(), 4, "{hosts:?}");
    assert!(run.candidates().iter().all(|c| c["source"] == "guess"));
    assert_eq!(run.json["chosen"]["host"], "smtp.example.test");
    assert_eq!(run.json["chosen"]["implicit_tls"], true);
    let file: toml::Table = toml::from_str(&config(dir.path()).unwrap()).unwrap();
    assert_eq!(
        file["accounts"]["example.test"]["server"].as_str(),
        Some("smtp.example.test")
    );
}

#[tokio::test]
async fn a_candidate_with_a_bad_certificate_ranks_below_a_verified_one_and_is_named() {
    let ca = TestCa::new();
    // Implicit TLS would rank first, but its certificate is self-signed.
    let bad = server(Identity::self_signed(&["bad.example.test"]), true).await;
    let good = server(ca.leaf(&["good.example.test"]), false).await;
    let zone = Zone::new()
        .srv(
            "_submissions._tcp.example.test",
            0,
            1,
            bad.addr().port(),
            "bad.example.test",
        )
        .srv(
            "_submission._tcp.example.test",
            0,
            1,
            good.addr().port(),
            "good.example.test",
        )
        .a("bad.example.test", LOOPBACK)
        .a("good.example.test", LOOPBACK);
    let dns = dns(zone).await;
    let (dir, pem) = dir_with_ca(&ca);
    let run = setup(&dns, dir.path(), &pem, PASSWORD, &["alice@example.test"]).await;
    assert_eq!(run.code, 0, "{}\n{}", run.json, run.stderr);
    let c = run.candidates();
    assert_eq!(c[0]["host"], "good.example.test", "{}", run.json);
    assert_eq!(c[0]["verified"], true);
    assert_eq!(c[1]["host"], "bad.example.test");
    assert_eq!(c[1]["verified"], false);
    // Named, with the one remedy setup has (it has no --tls to weaken).
    let why = c[1]["verify_error"].as_str().unwrap();
    assert!(why.contains("not signed by a trusted authority"), "{why}");
    assert!(why.contains("--ca-file") && !why.contains("--tls"), "{why}");
    assert_eq!(run.json["chosen"]["host"], "good.example.test");
    assert_eq!(run.json["chosen"]["implicit_tls"], false);
}

#[tokio::test]
async fn a_wrong_password_writes_nothing_and_says_so() {
    let ca = TestCa::new();
    let smtp = server(ca.leaf(&["submit.example.test"]), true).await;
    let zone = Zone::new()
        .srv(
            "_submissions._tcp.example.test",
            0,
            1,
            smtp.addr().port(),
            "submit.example.test",
        )
        .a("submit.example.test", LOOPBACK);
    let dns = dns(zone).await;
    let (dir, pem) = dir_with_ca(&ca);
    let run = setup(&dns, dir.path(), &pem, "not it", &["alice@example.test"]).await;
    assert_eq!(run.code, 77, "{}\n{}", run.json, run.stderr);
    assert_eq!(run.json["login"]["ok"], false);
    assert_eq!(run.json["login"]["problem"], "wrong-password");
    let message = run.json["error"]["message"].as_str().unwrap();
    assert!(message.contains("wrong user name or password"), "{message}");
    assert!(message.contains("nothing was written"), "{message}");
    assert!(config(dir.path()).is_none());
    assert!(run.json["account"].is_null());
}

#[tokio::test]
async fn a_port_that_refuses_is_diagnosed_as_blocked() {
    let ca = TestCa::new();
    let zone = Zone::new()
        .srv(
            "_submissions._tcp.example.test",
            0,
            1,
            closed_port(),
            "submit.example.test",
        )
        .a("submit.example.test", LOOPBACK);
    let dns = dns(zone).await;
    let (dir, pem) = dir_with_ca(&ca);
    let run = setup(&dns, dir.path(), &pem, PASSWORD, &["alice@example.test"]).await;
    assert_eq!(run.code, 69, "{}\n{}", run.json, run.stderr);
    let problem = run.candidates()[0]["problem"].as_str().unwrap();
    assert!(problem.contains("probably blocked"), "{problem}");
    assert!(config(dir.path()).is_none());
}

#[tokio::test]
async fn a_domain_publishing_many_servers_gets_only_the_first_eight_probed() {
    let ca = TestCa::new();
    let port = closed_port();
    let mut zone = Zone::new();
    for i in 0..30u16 {
        let host = format!("s{i}.example.test");
        zone = zone
            .srv("_submissions._tcp.example.test", i, 1, port, &host)
            .a(&host, LOOPBACK);
    }
    let dns = dns(zone).await;
    let (dir, pem) = dir_with_ca(&ca);
    let run = setup(&dns, dir.path(), &pem, PASSWORD, &["alice@example.test"]).await;
    assert_eq!(run.candidates().len(), 8, "{}", run.json);
    assert!(run.stderr.contains("30 candidates found"), "{}", run.stderr);
    assert!(config(dir.path()).is_none());
}

#[tokio::test]
async fn without_yes_and_without_a_terminal_nothing_is_written() {
    let ca = TestCa::new();
    let smtp = server(ca.leaf(&["submit.example.test"]), true).await;
    let zone = Zone::new()
        .srv(
            "_submissions._tcp.example.test",
            0,
            1,
            smtp.addr().port(),
            "submit.example.test",
        )
        .a("submit.example.test", LOOPBACK);
    let dns = dns(zone).await;
    let (dir, pem) = dir_with_ca(&ca);
    let out = Command::new(BIN)
        .args(["setup", "--dns-server"])
        .arg(dns.addr().to_string())
        .arg("--ca-file")
        .arg(&pem)
        .arg("--config")
        .arg(dir.path().join("config.toml"))
        .arg("alice@example.test")
        .env("SMTP_PASSWORD", PASSWORD)
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--yes"));
    assert!(config(dir.path()).is_none());
}

#[tokio::test]
async fn an_autoconfiguration_document_names_the_server_used() {
    let ca = TestCa::new();
    let smtp = server(ca.leaf(&["relay.example.test"]), true).await;
    let xml = format!(
        "<?xml version=\"1.0\"?>\n<clientConfig version=\"1.1\">\
         <emailProvider id=\"example.test\"><domain>example.test</domain>\
         <outgoingServer type=\"smtp\"><hostname>relay.%EMAILDOMAIN%</hostname>\
         <port>{}</port><socketType>SSL</socketType>\
         <authentication>password-cleartext</authentication>\
         <username>%EMAILADDRESS%</username></outgoingServer>\
         </emailProvider></clientConfig>",
        smtp.addr().port()
    );
    let web = HttpsServer::start(
        ca.leaf(&["autoconfig.example.test"]),
        Pages::new().page("/mail/config-v1.1.xml", "text/xml", xml),
    )
    .await
    .expect("the HTTPS server starts");
    let zone = Zone::new()
        .a("autoconfig.example.test", LOOPBACK)
        .a("relay.example.test", LOOPBACK);
    let dns = dns(zone).await;
    let (dir, pem) = dir_with_ca(&ca);
    let https = web.addr().port().to_string();
    let run = setup(
        &dns,
        dir.path(),
        &pem,
        PASSWORD,
        &["alice@example.test", "--https-port", &https],
    )
    .await;
    assert_eq!(run.code, 0, "{}\n{}", run.json, run.stderr);
    assert_eq!(web.requests(), ["/mail/config-v1.1.xml"]);
    assert_eq!(run.json["autoconfig"][0]["servers"], 1, "{}", run.json);
    assert_eq!(run.candidates().len(), 1, "{}", run.json);
    assert_eq!(run.json["chosen"]["host"], "relay.example.test");
    assert_eq!(run.json["chosen"]["source"], "autoconfig");
    // The usual names were not needed.
    assert!(!dns.queried("smtp.example.test"), "{:?}", dns.queries());
    let file: toml::Table = toml::from_str(&config(dir.path()).unwrap()).unwrap();
    assert_eq!(
        file["accounts"]["example.test"]["server"].as_str(),
        Some("relay.example.test")
    );
}

/// A pseudo-terminal: its master side, and its terminal side (a second
/// handle to it stays with the caller, so the terminal outlives the child).
fn pty() -> (std::fs::File, std::fs::File) {
    use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
    let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY).expect("a pseudo-terminal");
    grantpt(&master).unwrap();
    unlockpt(&master).unwrap();
    let name = ptsname(&master, Vec::new()).unwrap();
    let terminal = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(name.to_str().unwrap())
        .unwrap();
    (std::fs::File::from(master), terminal)
}

/// Runs `command` with a terminal as its standard input; types `password`
/// once the prompt is on stderr; returns the exit status, stdout, stderr,
/// and what the terminal showed while the password was typed.
async fn with_terminal(mut command: Command, password: &str) -> (i32, String, String, String) {
    use std::io::{Read, Write};
    use tokio::io::AsyncReadExt;
    let (mut master, terminal) = pty();
    let mut child = command
        .stdin(Stdio::from(terminal.try_clone().unwrap()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let mut seen = Vec::new();
    let mut chunk = [0u8; 256];
    // The prompt comes after the echo is off: type only then.
    while !String::from_utf8_lossy(&seen).contains("password for") {
        let n = stderr.read(&mut chunk).await.unwrap();
        assert!(n > 0, "no prompt: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&chunk[..n]);
    }
    master
        .write_all(format!("{password}\n").as_bytes())
        .unwrap();
    let mut rest = Vec::new();
    stderr.read_to_end(&mut rest).await.unwrap();
    seen.extend_from_slice(&rest);
    let out = child.wait_with_output().await.unwrap();
    // The echo is back on after the prompt: a marker typed now shows.
    master.write_all(b"MARK\n").unwrap();
    let shown = tokio::task::spawn_blocking(move || {
        let mut shown = Vec::new();
        let mut chunk = [0u8; 256];
        while !String::from_utf8_lossy(&shown).contains("MARK") {
            let n = master.read(&mut chunk).unwrap();
            assert!(n > 0);
            shown.extend_from_slice(&chunk[..n]);
        }
        String::from_utf8_lossy(&shown).into_owned()
    })
    .await
    .unwrap();
    drop(terminal);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&seen).into_owned(),
        shown,
    )
}

#[tokio::test]
async fn on_a_terminal_setup_asks_for_the_password_without_echo() {
    let ca = TestCa::new();
    let smtp = server(ca.leaf(&["submit.example.test"]), true).await;
    let zone = Zone::new()
        .srv(
            "_submissions._tcp.example.test",
            0,
            1,
            smtp.addr().port(),
            "submit.example.test",
        )
        .a("submit.example.test", LOOPBACK);
    let dns = dns(zone).await;
    let (dir, pem) = dir_with_ca(&ca);
    let mut command = Command::new(BIN);
    command
        .args(["setup", "--json", "--yes", "--dns-server"])
        .arg(dns.addr().to_string())
        .arg("--ca-file")
        .arg(&pem)
        .arg("--config")
        .arg(dir.path().join("config.toml"))
        .arg("alice@example.test")
        .env_remove("SMTP_PASSWORD");
    // Typed with a slip, corrected with Backspace.
    let typed = "correct horsX\x7fe";
    let (code, stdout, stderr, shown) = with_terminal(command, typed).await;
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(
        stderr.contains("password for alice@example.test at submit.example.test"),
        "{stderr}"
    );
    assert!(
        !shown.contains("horse"),
        "the password was echoed: {shown:?}"
    );
    let json: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(json["login"]["ok"], true, "{json}");
    let text = config(dir.path()).unwrap();
    assert!(!text.contains(PASSWORD), "{text}");
}

#[tokio::test]
async fn on_a_terminal_send_asks_for_the_password_when_no_option_gives_one() {
    let ca = TestCa::new();
    let smtp = server(ca.leaf(&["localhost"]), false).await;
    let mut command = Command::new(BIN);
    command
        .args(["send", "--tls", "required", "--server"])
        .arg(format!("127.0.0.1:{}", smtp.addr().port()))
        .args(["--user", USER, "--from", USER, "--to", "bob@example.test"])
        .args(["--subject", "hi", "--body", "hello"])
        .env_remove("SMTP_PASSWORD")
        .env("XDG_CONFIG_HOME", "/nonexistent");
    let (code, stdout, stderr, shown) = with_terminal(command, PASSWORD).await;
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(
        stderr.contains("password for alice@example.test at 127.0.0.1"),
        "{stderr}"
    );
    assert!(
        !shown.contains("horse"),
        "the password was echoed: {shown:?}"
    );
    assert_eq!(smtp.messages().len(), 1);
}

#[tokio::test]
async fn a_malformed_document_is_named_and_the_well_known_one_is_used() {
    let ca = TestCa::new();
    let smtp = server(ca.leaf(&["relay.example.test"]), false).await;
    let good = format!(
        "<clientConfig version=\"1.1\"><emailProvider id=\"example.test\">\
         <outgoingServer type=\"smtp\"><hostname>relay.example.test</hostname>\
         <port>{}</port><socketType>STARTTLS</socketType></outgoingServer>\
         </emailProvider></clientConfig>",
        smtp.addr().port()
    );
    let web = HttpsServer::start(
        ca.leaf(&["autoconfig.example.test", "example.test"]),
        Pages::new()
            .page(
                "/mail/config-v1.1.xml",
                "text/xml",
                "<!DOCTYPE x [<!ENTITY h \"evil.example\">]><clientConfig/>",
            )
            .page(
                "/.well-known/autoconfig/mail/config-v1.1.xml",
                "text/xml",
                good,
            ),
    )
    .await
    .expect("the HTTPS server starts");
    let zone = Zone::new()
        .a("autoconfig.example.test", LOOPBACK)
        .a("example.test", LOOPBACK)
        .a("relay.example.test", LOOPBACK);
    let dns = dns(zone).await;
    let (dir, pem) = dir_with_ca(&ca);
    let https = web.addr().port().to_string();
    let run = setup(
        &dns,
        dir.path(),
        &pem,
        PASSWORD,
        &["alice@example.test", "--https-port", &https],
    )
    .await;
    assert_eq!(run.code, 0, "{}\n{}", run.json, run.stderr);
    let tries = run.json["autoconfig"].as_array().unwrap();
    assert_eq!(tries.len(), 2, "{tries:?}");
    assert!(
        tries[0]["error"].as_str().unwrap().contains("DOCTYPE"),
        "{tries:?}"
    );
    assert_eq!(tries[1]["servers"], 1, "{tries:?}");
    assert_eq!(run.json["chosen"]["host"], "relay.example.test");
    assert_eq!(run.json["chosen"]["implicit_tls"], false);
    assert_eq!(run.json["chosen"]["source"], "autoconfig");
}

#[tokio::test]
async fn ctrl_c_at_the_prompt_gives_up_writes_nothing_and_gives_the_echo_back() {
    let ca = TestCa::new();
    let smtp = server(ca.leaf(&["submit.example.test"]), true).await;
    let zone = Zone::new()
        .srv(
            "_submissions._tcp.example.test",
            0,
            1,
            smtp.addr().port(),
            "submit.example.test",
        )
        .a("submit.example.test", LOOPBACK);
    let dns = dns(zone).await;
    let (dir, pem) = dir_with_ca(&ca);
    let mut command = Command::new(BIN);
    command
        .args(["setup", "--yes", "--dns-server"])
        .arg(dns.addr().to_string())
        .arg("--ca-file")
        .arg(&pem)
        .arg("--config")
        .arg(dir.path().join("config.toml"))
        .arg("alice@example.test")
        .env_remove("SMTP_PASSWORD");
    // Ctrl-C after part of the password.
    let (code, stdout, stderr, shown) = with_terminal(command, "corr\x03").await;
    assert_eq!(code, 130, "{stdout}\n{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert!(!shown.contains("corr"), "{shown:?}");
    // with_terminal saw the echo come back (its marker showed).
    assert!(shown.contains("MARK"));
    assert!(config(dir.path()).is_none());
    assert!(smtp.sessions().len() <= 1, "no login was tried");
}
