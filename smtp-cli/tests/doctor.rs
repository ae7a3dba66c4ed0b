//! `smtp doctor` through the built binary: every DNS answer comes from the
//! testkit's zone server on 127.0.0.1 (`--dns-server`), the outbound test
//! connects to a scripted server on 127.0.0.1 (`--probe-mx`) or to a port
//! nothing listens on. Nothing leaves the machine. Each check has a zone
//! that passes, one that warns and one that fails.
//!
//! A server that cannot start fails its test: it never skips.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use smtp_testkit::closed_port;
use smtp_testkit::dns::{DnsServer, Zone};
use smtp_testkit::script::{Script, ScriptedServer};
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_smtp");

/// The address the scripted server says it saw (a documentation range).
const SEEN: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 5);

fn seen() -> IpAddr {
    IpAddr::V4(SEEN)
}

/// A mail server that greets, echoes the client's "public address" in
/// its EHLO reply, and says goodbye.
fn echoing_server() -> Script {
    Script::parse(&format!(
        "S: 220 mx.test ESMTP\n\
         C: EHLO *\n\
         S: 250-mx.test Hello doctor [{SEEN}]\n\
         S: 250 8BITMIME\n\
         C: QUIT\n\
         S: 221 bye\n"
    ))
    .unwrap()
}

/// A zone in which every check of example.org passes for 203.0.113.5
/// (DKIM aside: its record is added by the tests that have a key).
fn good_zone() -> Zone {
    Zone::new()
        .txt("example.org", "v=spf1 ip4:203.0.113.0/24 -all")
        .txt(
            "_dmarc.example.org",
            "v=DMARC1; p=reject; rua=mailto:dmarc@example.org",
        )
        .mx("example.org", 10, "mx.example.org")
        .a("mx.example.org", Ipv4Addr::new(192, 0, 2, 10))
        .ptr(seen(), "mail.example.org")
        .a("mail.example.org", SEEN)
}

struct Run {
    code: i32,
    json: Value,
    stderr: String,
}

impl Run {
    fn check(&self, id: &str) -> &Value {
        self.json["checks"]
            .as_array()
            .unwrap_or_else(|| panic!("no checks: {}", self.json))
            .iter()
            .find(|c| c["id"] == id)
            .unwrap_or_else(|| panic!("no check {id}: {}", self.json))
    }

    fn status(&self, id: &str) -> &str {
        self.check(id)["status"].as_str().unwrap()
    }

    fn summary(&self, id: &str) -> &str {
        self.check(id)["summary"].as_str().unwrap()
    }

    fn advice(&self, id: &str) -> &str {
        self.check(id)["advice"].as_str().unwrap_or("")
    }

    /// Asserts a check's status, showing the whole check when it differs.
    fn expect(&self, id: &str, status: &str) -> &Self {
        assert_eq!(
            self.status(id),
            status,
            "{id}: {}\nstderr: {}",
            self.check(id),
            self.stderr
        );
        self
    }
}

/// `smtp doctor --json` with `args`, every lookup answered by `dns`, no
/// config file, and short timeouts.
async fn doctor(dns: &DnsServer, dir: &Path, args: &[&str]) -> Run {
    let out = Command::new(BIN)
        .arg("doctor")
        .args(["--json", "--timeout", "2", "--dns-server"])
        .arg(dns.addr().to_string())
        .args(args)
        .env("XDG_CONFIG_HOME", dir.join("no-config"))
        .env("HOME", dir)
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    let json = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("not one JSON object ({e}): {stdout}"));
    Run {
        code: out.status.code().unwrap_or(-1),
        json,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `doctor` with the outbound test pointed at a port nothing listens on
/// and the address given: for the checks that only look things up.
async fn lookups(dns: &DnsServer, dir: &Path, args: &[&str]) -> Run {
    let probe = format!("127.0.0.1:{}", closed_port());
    let mut all = vec!["--probe-mx", probe.as_str()];
    all.extend_from_slice(args);
    doctor(dns, dir, &all).await
}

async fn dns(zone: Zone) -> DnsServer {
    DnsServer::start(zone).await.expect("the DNS server starts")
}

async fn probe_server(script: Script) -> ScriptedServer {
    ScriptedServer::start(script, None)
        .await
        .expect("the scripted server starts")
}

/// `smtp dkim keygen --ed25519` for `selector`.example.org: the key file
/// and the record's value.
async fn keygen(dir: &Path, selector: &str) -> (String, String) {
    let key = dir.join(format!("{selector}.pem"));
    let out = Command::new(BIN)
        .args([
            "dkim",
            "keygen",
            "--ed25519",
            "--json",
            "--selector",
            selector,
        ])
        .args(["--domain", "example.org", "--out"])
        .arg(&key)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    (
        key.to_str().unwrap().to_owned(),
        v["value"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test]
async fn a_set_up_that_passes_every_check_exits_0_with_one_json_object() {
    let dir = tempfile::tempdir().unwrap();
    let (key, record) = keygen(dir.path(), "s1").await;
    let dns = dns(good_zone().txt("s1._domainkey.example.org", &record)).await;
    let server = probe_server(echoing_server()).await;
    let probe = server.addr().to_string();
    let run = doctor(
        &dns,
        dir.path(),
        &[
            "--from",
            "alice@example.org",
            "--probe-mx",
            &probe,
            "--dkim-selector",
            "s1",
            "--dkim-key",
            &key,
            "--dnsbl",
            "zen.dnsbl.test",
        ],
    )
    .await;
    assert_eq!(run.code, 0, "{:#}\n{}", run.json, run.stderr);
    let ids: Vec<&str> = run.json["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        ["port25", "ip", "ptr", "dnsbl", "spf", "dkim", "dmarc", "mx"]
    );
    for c in run.json["checks"].as_array().unwrap() {
        assert_eq!(c["status"], "pass", "{c}");
        assert!(c["summary"].as_str().is_some_and(|s| !s.is_empty()), "{c}");
        assert!(c["advice"].is_null(), "a pass has no advice: {c}");
        let keys: Vec<&String> = c.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["advice", "id", "status", "summary"], "{c}");
    }
    assert_eq!(run.json["version"], 1);
    assert_eq!(run.json["from"], "alice@example.org");
    assert_eq!(run.json["domain"], "example.org");
    assert_eq!(
        run.json["summary"],
        serde_json::json!({"pass": 8, "warn": 0, "fail": 0})
    );
    assert!(run.json["error"].is_null());
    assert!(run.summary("ip").contains("203.0.113.5"), "{}", run.json);
    assert!(
        run.summary("ptr")
            .contains("203.0.113.5 -> mail.example.org -> 203.0.113.5"),
        "{}",
        run.summary("ptr")
    );
    server.finish(Duration::from_secs(5)).await.assert_ok();
}

#[tokio::test]
async fn the_text_report_has_a_line_per_check_and_advice_under_what_is_not_a_pass() {
    let dir = tempfile::tempdir().unwrap();
    let dns = dns(Zone::new()
        .mx("example.org", 10, "mx.example.org")
        .a("mx.example.org", Ipv4Addr::new(192, 0, 2, 10)))
    .await;
    let out = Command::new(BIN)
        .args(["doctor", "--from", "alice@example.org", "--timeout", "2"])
        .args(["--ip", "203.0.113.5", "--dnsbl", "zen.dnsbl.test"])
        .arg("--probe-mx")
        .arg(format!("127.0.0.1:{}", closed_port()))
        .arg("--dns-server")
        .arg(dns.addr().to_string())
        .env("XDG_CONFIG_HOME", dir.path())
        .output()
        .await
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(1), "a FAIL exits 1:\n{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("FAIL  port25 "), "{text}");
    assert!(lines[1].trim_start().starts_with("-> "), "{text}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("PASS  mx     mail to example.org goes to mx.example.org")),
        "{text}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("FAIL  spf    example.org has no SPF record")),
        "{text}"
    );
    assert_eq!(
        *lines.last().unwrap(),
        "8 checks: 3 pass, 1 warn, 4 fail",
        "{text}"
    );
}

#[tokio::test]
async fn without_a_sender_the_doctor_is_a_usage_error_in_json_too() {
    let dir = tempfile::tempdir().unwrap();
    let dns = dns(Zone::new()).await;
    let out = Command::new(BIN)
        .args(["doctor", "--json", "--dns-server"])
        .arg(dns.addr().to_string())
        .env("XDG_CONFIG_HOME", dir.path())
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["error"]["kind"], "usage");
    assert!(v["error"]["message"].as_str().unwrap().contains("--from"));
}

// ---- port25 and ip ----

#[tokio::test]
async fn a_resolver_that_does_not_answer_is_one_failed_dns_check_and_exit_75() {
    let dir = tempfile::tempdir().unwrap();
    // A UDP and TCP port on 127.0.0.1 where no DNS server listens.
    let dead = format!("127.0.0.1:{}", closed_port());
    let out = Command::new(BIN)
        .args(["doctor", "--json", "--timeout", "1", "--dns-server", &dead])
        .args(["--from", "a@example.org", "--ip", "203.0.113.5"])
        .env("XDG_CONFIG_HOME", dir.path().join("no-config"))
        .env("HOME", dir.path())
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(75), "{json:#}");
    let checks = json["checks"].as_array().unwrap();
    assert_eq!(checks.len(), 1, "{json:#}");
    assert_eq!(checks[0]["id"], "dns");
    assert_eq!(checks[0]["status"], "fail");
    let summary = checks[0]["summary"].as_str().unwrap();
    assert!(
        summary.contains("the DNS resolver does not answer") && summary.contains(&dead),
        "{summary}"
    );
    assert_eq!(json["summary"]["fail"], 1);
}

#[tokio::test]
async fn port25_passes_when_a_server_answers_and_its_echo_gives_the_address() {
    let dir = tempfile::tempdir().unwrap();
    let dns = dns(good_zone()).await;
    let server = probe_server(echoing_server()).await;
    let probe = server.addr().to_string();
    let run = doctor(
        &dns,
        dir.path(),
        &["--from", "a@example.org", "--probe-mx", &probe],
    )
    .await;
    run.expect("port25", "pass").expect("ip", "pass");
    assert!(
        run.summary("port25").contains("220 mx.test ESMTP"),
        "{}",
        run.summary("port25")
    );
    assert!(
        run.summary("ip").contains("as 127.0.0.1 saw this machine"),
        "{}",
        run.summary("ip")
    );
    // The address seen is the one the other checks use.
    run.expect("ptr", "pass").expect("spf", "pass");
    server.finish(Duration::from_secs(5)).await.assert_ok();
}

#[tokio::test]
async fn port25_fails_on_a_refused_connection_with_direct_deliverys_diagnosis() {
    let dir = tempfile::tempdir().unwrap();
    let dns = dns(good_zone()).await;
    let port = closed_port();
    let probe = format!("127.0.0.1:{port}");
    let run = doctor(
        &dns,
        dir.path(),
        &["--from", "a@example.org", "--probe-mx", &probe],
    )
    .await;
    run.expect("port25", "fail");
    assert_eq!(run.code, 1);
    assert!(
        run.summary("port25").contains("connection refused"),
        "{}",
        run.summary("port25")
    );
    // The words direct delivery's Diagnosis::Port25Blocked uses.
    let advice = run.advice("port25");
    assert!(
        advice.contains(&format!("outbound port {port} is probably blocked"))
            && advice.contains("submission server"),
        "{advice}"
    );
    // No server, no address seen.
    run.expect("ip", "warn");
    assert!(run.advice("ip").contains("--ip"), "{}", run.advice("ip"));
    run.expect("ptr", "warn").expect("dnsbl", "warn");
}

#[tokio::test]
async fn port25_tries_the_mx_hosts_of_a_domain_on_mx_port() {
    let dir = tempfile::tempdir().unwrap();
    let server = probe_server(echoing_server()).await;
    let port = server.addr().port().to_string();
    let dns = dns(good_zone()
        .mx("probe.test", 10, "mx1.probe.test")
        .a("mx1.probe.test", Ipv4Addr::LOCALHOST))
    .await;
    let args = [
        "--from",
        "a@example.org",
        "--probe-domain",
        "probe.test",
        "--mx-port",
        &port,
    ];
    let run = doctor(&dns, dir.path(), &args).await;
    run.expect("port25", "pass");
    assert!(
        run.summary("port25")
            .starts_with("mx1.probe.test (127.0.0.1:"),
        "{}",
        run.summary("port25")
    );
    server.finish(Duration::from_secs(5)).await.assert_ok();
    // The same domain, a port nothing listens on: blocked.
    let closed = closed_port().to_string();
    let args = [
        "--from",
        "a@example.org",
        "--probe-domain",
        "probe.test",
        "--mx-port",
        &closed,
    ];
    doctor(&dns, dir.path(), &args)
        .await
        .expect("port25", "fail");
}

#[tokio::test]
async fn port25_warns_when_a_server_answers_but_refuses_and_when_there_is_none_to_try() {
    let dir = tempfile::tempdir().unwrap();
    let dns = dns(good_zone().null_mx("nomail.test")).await;
    let server = probe_server(
        Script::parse("S: 554 mx.test no service here\nC: QUIT\nS: 221 bye\n").unwrap(),
    )
    .await;
    let probe = server.addr().to_string();
    let run = doctor(
        &dns,
        dir.path(),
        &["--from", "a@example.org", "--probe-mx", &probe],
    )
    .await;
    run.expect("port25", "warn");
    assert!(
        run.summary("port25").contains("554"),
        "{}",
        run.summary("port25")
    );
    let args = ["--from", "a@example.org", "--probe-domain", "nomail.test"];
    let run = doctor(&dns, dir.path(), &args).await;
    run.expect("port25", "warn");
    assert!(
        run.summary("port25").starts_with("not tested"),
        "{}",
        run.summary("port25")
    );
}

#[tokio::test]
async fn through_a_relay_a_blocked_port25_only_warns() {
    let dir = tempfile::tempdir().unwrap();
    let dns = dns(good_zone().a("relay.example.org", SEEN)).await;
    let run = lookups(
        &dns,
        dir.path(),
        &[
            "--from",
            "a@example.org",
            "--server",
            "relay.example.org:587",
        ],
    )
    .await;
    run.expect("port25", "warn");
    assert!(
        run.advice("port25")
            .contains("you send through relay.example.org:587"),
        "{}",
        run.advice("port25")
    );
    // SPF is checked for the relay's address.
    run.expect("spf", "pass");
    assert!(
        run.summary("spf").contains("the relay relay.example.org"),
        "{}",
        run.summary("spf")
    );
}

#[tokio::test]
async fn through_a_local_relay_spf_is_checked_for_the_public_address_not_the_relays() {
    let dir = tempfile::tempdir().unwrap();
    let dns = dns(good_zone()).await;
    let base = ["--from", "a@example.org", "--server", "127.0.0.1:25"];
    let mut args = base.to_vec();
    args.extend_from_slice(&["--ip", "203.0.113.5"]);
    let run = lookups(&dns, dir.path(), &args).await;
    run.expect("spf", "pass");
    let summary = run.summary("spf");
    assert!(
        summary.contains("(203.0.113.5: pass") && summary.contains("127.0.0.1, a local address"),
        "{summary}"
    );
    // The address once, not "203.0.113.5 (203.0.113.5".
    assert!(!summary.contains("203.0.113.5 (203.0.113.5"), "{summary}");
    // An address the record does not authorise fails as in direct
    // delivery: the local relay sends from it.
    let mut args = base.to_vec();
    args.extend_from_slice(&["--ip", "198.51.100.7"]);
    let run = lookups(&dns, dir.path(), &args).await;
    run.expect("spf", "fail");
    assert!(
        run.advice("spf").contains("add ip4:198.51.100.7"),
        "{}",
        run.advice("spf")
    );
    // Without the address: a warning that asks for it.
    let run = lookups(&dns, dir.path(), &base).await;
    run.expect("spf", "warn");
    assert!(run.advice("spf").contains("--ip"), "{}", run.advice("spf"));
}

#[tokio::test]
async fn ip_given_passes_and_one_that_differs_from_what_the_server_saw_warns() {
    let dir = tempfile::tempdir().unwrap();
    let dns = dns(good_zone()).await;
    let run = lookups(
        &dns,
        dir.path(),
        &["--from", "a@example.org", "--ip", "203.0.113.5"],
    )
    .await;
    run.expect("ip", "pass");
    assert!(run.summary("ip").contains("given with --ip"));
    let server = probe_server(echoing_server()).await;
    let probe = server.addr().to_string();
    let args = [
        "--from",
        "a@example.org",
        "--probe-mx",
        &probe,
        "--ip",
        "198.51.100.7",
    ];
    let run = doctor(&dns, dir.path(), &args).await;
    run.expect("ip", "warn");
    assert!(
        run.summary("ip")
            .contains("saw this machine as 203.0.113.5"),
        "{}",
        run.summary("ip")
    );
}

#[tokio::test]
async fn ip_seen_as_a_private_address_warns() {
    let dir = tempfile::tempdir().unwrap();
    let dns = dns(good_zone()).await;
    let server = probe_server(
        Script::parse(
            "S: 220 mx.test ESMTP\nC: EHLO *\nS: 250 mx.test Hello [10.0.0.7]\nC: QUIT\nS: 221 bye\n",
        )
        .unwrap(),
    )
    .await;
    let probe = server.addr().to_string();
    let run = doctor(
        &dns,
        dir.path(),
        &["--from", "a@example.org", "--probe-mx", &probe],
    )
    .await;
    run.expect("port25", "pass")
        .expect("ip", "warn")
        .expect("ptr", "warn");
    assert!(
        run.summary("ip").contains("10.0.0.7"),
        "{}",
        run.summary("ip")
    );
}

// ---- ptr ----

#[tokio::test]
async fn ptr_fails_without_a_record_and_when_its_name_does_not_resolve_back() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["--from", "a@example.org", "--ip", "203.0.113.5"];
    let none = dns(Zone::new()).await;
    let run = lookups(&none, dir.path(), &args).await;
    run.expect("ptr", "fail");
    assert!(
        run.summary("ptr").contains("no PTR record"),
        "{}",
        run.summary("ptr")
    );
    assert!(run.advice("ptr").contains("--helo"));
    let elsewhere = dns(Zone::new()
        .ptr(seen(), "dyn-203-0-113-5.isp.test")
        .a("dyn-203-0-113-5.isp.test", Ipv4Addr::new(198, 51, 100, 1)))
    .await;
    let run = lookups(&elsewhere, dir.path(), &args).await;
    run.expect("ptr", "fail");
    assert!(
        run.summary("ptr")
            .contains("dyn-203-0-113-5.isp.test resolves to 198.51.100.1"),
        "{}",
        run.summary("ptr")
    );
}

#[tokio::test]
async fn ptr_warns_when_the_lookup_fails() {
    let dir = tempfile::tempdir().unwrap();
    let dns = dns(Zone::new().servfail("5.113.0.203.in-addr.arpa")).await;
    let run = lookups(
        &dns,
        dir.path(),
        &["--from", "a@example.org", "--ip", "203.0.113.5"],
    )
    .await;
    run.expect("ptr", "warn");
}

// ---- dnsbl ----

#[tokio::test]
async fn dnsbl_fails_when_listed_warns_when_refused_and_passes_when_not_listed() {
    let dir = tempfile::tempdir().unwrap();
    let dns = dns(Zone::new()
        .a("5.113.0.203.listed.test", Ipv4Addr::new(127, 0, 0, 2))
        .a(
            "5.113.0.203.refusing.test",
            Ipv4Addr::new(127, 255, 255, 254),
        )
        .a("1.0.0.127.clean.test", Ipv4Addr::new(127, 0, 0, 2))
        .servfail("5.113.0.203.failing.test"))
    .await;
    let base = ["--from", "a@example.org", "--ip", "203.0.113.5"];
    let with = |zones: &[&'static str]| {
        let mut a = base.to_vec();
        for z in zones {
            a.extend_from_slice(&["--dnsbl", z]);
        }
        a
    };
    let run = lookups(&dns, dir.path(), &with(&["clean.test"])).await;
    run.expect("dnsbl", "pass");
    assert!(
        run.summary("dnsbl").contains("not listed on clean.test"),
        "{}",
        run.summary("dnsbl")
    );
    let run = lookups(&dns, dir.path(), &with(&["clean.test", "refusing.test"])).await;
    run.expect("dnsbl", "warn");
    assert!(
        run.summary("dnsbl")
            .contains("refusing.test refused the query (127.255.255.254)"),
        "{}",
        run.summary("dnsbl")
    );
    assert!(run.advice("dnsbl").contains("--dns-server"));
    let run = lookups(&dns, dir.path(), &with(&["refusing.test", "listed.test"])).await;
    run.expect("dnsbl", "fail");
    assert!(
        run.summary("dnsbl")
            .contains("listed on listed.test (127.0.0.2)"),
        "{}",
        run.summary("dnsbl")
    );
    // A lookup that fails (SERVFAIL, a timeout) is not a refusal.
    let run = lookups(&dns, dir.path(), &with(&["clean.test", "failing.test"])).await;
    run.expect("dnsbl", "warn");
    assert!(
        !run.advice("dnsbl").contains("public resolvers")
            && run.advice("dnsbl").contains("did not complete"),
        "{}",
        run.advice("dnsbl")
    );
    // Only the zones asked for were asked.
    assert!(dns.queried("5.113.0.203.listed.test"));
    assert!(!dns.queried("5.113.0.203.zen.spamhaus.org"));
}

// ---- spf ----

#[tokio::test]
async fn spf_passes_by_include_redirect_and_mx() {
    let dir = tempfile::tempdir().unwrap();
    let dns = dns(Zone::new()
        .txt("example.org", "v=spf1 include:_spf.relay.test ~all")
        .txt("_spf.relay.test", "v=spf1 redirect=_net.relay.test")
        .txt("_net.relay.test", "v=spf1 mx a:other.relay.test -all")
        .mx("_net.relay.test", 10, "out.relay.test")
        .a("out.relay.test", Ipv4Addr::new(198, 51, 100, 1))
        .a("other.relay.test", SEEN))
    .await;
    let run = lookups(
        &dns,
        dir.path(),
        &["--from", "a@example.org", "--ip", "203.0.113.5"],
    )
    .await;
    run.expect("spf", "pass");
    assert!(
        run.summary("spf")
            .contains("include:_spf.relay.test in example.org"),
        "{}",
        run.summary("spf")
    );
    let run = lookups(
        &dns,
        dir.path(),
        &["--from", "a@example.org", "--ip", "198.51.100.1"],
    )
    .await;
    run.expect("spf", "pass");
}

#[tokio::test]
async fn spf_fails_on_a_hard_fail_and_warns_on_a_soft_one() {
    let dir = tempfile::tempdir().unwrap();
    let dns = dns(Zone::new()
        .txt("example.org", "v=spf1 ip4:198.51.100.0/24 -all")
        .txt("soft.example", "v=spf1 ip4:198.51.100.0/24 ~all"))
    .await;
    let run = lookups(
        &dns,
        dir.path(),
        &["--from", "a@example.org", "--ip", "203.0.113.5"],
    )
    .await;
    run.expect("spf", "fail");
    assert!(
        run.summary("spf")
            .contains("gets fail, by -all in example.org"),
        "{}",
        run.summary("spf")
    );
    assert!(
        run.advice("spf").contains("add ip4:203.0.113.5"),
        "{}",
        run.advice("spf")
    );
    let run = lookups(
        &dns,
        dir.path(),
        &["--from", "a@soft.example", "--ip", "203.0.113.5"],
    )
    .await;
    run.expect("spf", "warn");
    assert!(
        run.summary("spf").contains("softfail"),
        "{}",
        run.summary("spf")
    );
}

#[tokio::test]
async fn spf_fails_when_missing_doubled_unparsable_or_over_ten_lookups() {
    let dir = tempfile::tempdir().unwrap();
    let mut zone = Zone::new()
        .txt("two.example", "v=spf1 -all")
        .txt("two.example", "v=spf1 ip4:203.0.113.5 -all")
        .txt("bad.example", "v=spf1 ip4:not-an-address -all")
        .txt("other.example", "some verification token");
    // A chain of eleven includes.
    zone = zone.txt("deep.example", "v=spf1 include:i0.deep.example -all");
    for i in 0..11 {
        zone = zone.txt(
            &format!("i{i}.deep.example"),
            &format!("v=spf1 include:i{}.deep.example ?all", i + 1),
        );
    }
    zone = zone.txt("i11.deep.example", "v=spf1 ip4:203.0.113.5 -all");
    let dns = dns(zone).await;
    for (domain, words) in [
        ("other.example", "has no SPF record"),
        ("two.example", "has 2 SPF records"),
        ("bad.example", "does not parse"),
        ("deep.example", "more than 10 DNS lookups"),
    ] {
        let from = format!("a@{domain}");
        let run = lookups(&dns, dir.path(), &["--from", &from, "--ip", "203.0.113.5"]).await;
        run.expect("spf", "fail");
        assert!(
            run.summary("spf").contains(words),
            "{domain}: {}",
            run.summary("spf")
        );
    }
    // The permerror's advice names the include it comes through.
    let run = lookups(
        &dns,
        dir.path(),
        &["--from", "a@deep.example", "--ip", "203.0.113.5"],
    )
    .await;
    assert!(
        run.advice("spf")
            .contains("replace include:i0.deep.example in deep.example"),
        "{}",
        run.advice("spf")
    );
}

#[tokio::test]
async fn spf_without_an_address_warns_once_it_parses() {
    let dir = tempfile::tempdir().unwrap();
    let dns = dns(good_zone()).await;
    let run = lookups(&dns, dir.path(), &["--from", "a@example.org"]).await;
    run.expect("spf", "warn");
    assert!(
        run.summary("spf").contains("it parses"),
        "{}",
        run.summary("spf")
    );
    assert!(run.advice("spf").contains("--ip"));
}

// ---- dkim ----

#[tokio::test]
async fn dkim_fails_for_another_key_or_none_published_and_warns_without_a_selector() {
    let dir = tempfile::tempdir().unwrap();
    let (key, _) = keygen(dir.path(), "s1").await;
    let (_, other) = keygen(dir.path(), "s2").await;
    let dns = dns(good_zone().txt("s1._domainkey.example.org", &other)).await;
    let base = ["--from", "a@example.org", "--ip", "203.0.113.5"];
    let run = lookups(&dns, dir.path(), &base).await;
    run.expect("dkim", "warn");
    assert!(run.advice("dkim").contains("--dkim-selector"));
    let mut args = base.to_vec();
    args.extend_from_slice(&["--dkim-selector", "s1", "--dkim-key", &key]);
    let run = lookups(&dns, dir.path(), &args).await;
    run.expect("dkim", "fail");
    assert!(
        run.summary("dkim").contains("publishes another key"),
        "{}",
        run.summary("dkim")
    );
    assert!(
        run.advice("dkim").contains("smtp dkim record --key"),
        "{}",
        run.advice("dkim")
    );
    let mut args = base.to_vec();
    args.extend_from_slice(&["--dkim-selector", "nothere", "--dkim-key", &key]);
    let run = lookups(&dns, dir.path(), &args).await;
    run.expect("dkim", "fail");
    assert!(
        run.summary("dkim")
            .contains("no DKIM key is published at nothere._domainkey.example.org"),
        "{}",
        run.summary("dkim")
    );
    // Published, but no private key to compare: a warning.
    let mut args = base.to_vec();
    args.extend_from_slice(&["--dkim-selector", "s1"]);
    lookups(&dns, dir.path(), &args)
        .await
        .expect("dkim", "warn");
}

#[tokio::test]
async fn dkim_takes_the_accounts_key_and_selector() {
    let dir = tempfile::tempdir().unwrap();
    let (key, record) = keygen(dir.path(), "s1").await;
    let dns = dns(good_zone().txt("s1._domainkey.example.org", &record)).await;
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!("[accounts.work]\nfrom = \"alice@example.org\"\ndkim_key = \"{key}\"\ndkim_selector = \"s1\"\n"),
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let run = lookups(
        &dns,
        dir.path(),
        &[
            "--config",
            config,
            "--account",
            "work",
            "--ip",
            "203.0.113.5",
        ],
    )
    .await;
    run.expect("dkim", "pass");
    assert_eq!(run.json["from"], "alice@example.org");
}

#[tokio::test]
async fn dkim_warns_when_the_signing_domain_does_not_align_with_from() {
    let dir = tempfile::tempdir().unwrap();
    let (key, record) = keygen(dir.path(), "s1").await;
    let dns = dns(good_zone()
        .txt("s1._domainkey.esp.example.net", &record)
        .txt("s1._domainkey.mail.example.org", &record))
    .await;
    let args = |d: &'static str| {
        [
            "--from",
            "a@example.org",
            "--ip",
            "203.0.113.5",
            "--dkim-selector",
            "s1",
            "--dkim-key",
            key.as_str(),
            "--dkim-domain",
            d,
        ]
    };
    let run = lookups(&dns, dir.path(), &args("esp.example.net")).await;
    run.expect("dkim", "warn");
    assert!(
        run.summary("dkim")
            .contains("d=esp.example.net does not align with the From domain example.org"),
        "{}",
        run.summary("dkim")
    );
    assert!(
        run.advice("dkim").contains("--dkim-domain example.org"),
        "{}",
        run.advice("dkim")
    );
    // A subdomain of the From domain's organisational domain aligns.
    lookups(&dns, dir.path(), &args("mail.example.org"))
        .await
        .expect("dkim", "pass");
}

#[tokio::test]
async fn dkim_names_a_cut_p_and_a_k_that_is_not_the_keys() {
    let dir = tempfile::tempdir().unwrap();
    let (ed_key, ed_record) = keygen(dir.path(), "ed").await;
    let rsa_key = dir.path().join("rsa.pem");
    let out = Command::new(BIN)
        .args(["dkim", "keygen", "--json", "--selector", "rsa"])
        .args(["--domain", "example.org", "--out"])
        .arg(&rsa_key)
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let rsa_record = v["value"].as_str().unwrap();
    // Published as one string, cut at 255 characters; and cut at a
    // multiple of four base64 characters, so that it decodes.
    let cut255 = &rsa_record[..255];
    let p_at = rsa_record.find("p=").unwrap() + 2;
    let cut_even = &rsa_record[..p_at + 236];
    let dns = dns(good_zone()
        .txt("cut._domainkey.example.org", cut255)
        .txt("even._domainkey.example.org", cut_even)
        .txt(
            "wrongk._domainkey.example.org",
            &ed_record.replace("k=ed25519", "k=rsa"),
        ))
    .await;
    let rsa_key = rsa_key.to_str().unwrap();
    let run_for = |selector: &'static str, key: &str| {
        let key = key.to_owned();
        let dns = &dns;
        let dir = dir.path();
        async move {
            lookups(
                dns,
                dir,
                &[
                    "--from",
                    "a@example.org",
                    "--dkim-selector",
                    selector,
                    "--dkim-key",
                    &key,
                ],
            )
            .await
        }
    };
    let run = run_for("cut", rsa_key).await;
    run.expect("dkim", "fail");
    assert!(
        run.summary("dkim").contains("not whole base64")
            && run.summary("dkim").contains("cut there"),
        "{}",
        run.summary("dkim")
    );
    assert!(
        run.advice("dkim")
            .contains("strings of at most 255 characters"),
        "{}",
        run.advice("dkim")
    );
    let run = run_for("even", rsa_key).await;
    run.expect("dkim", "fail");
    assert!(
        run.summary("dkim")
            .contains("is cut short: its p= holds 177 of the"),
        "{}",
        run.summary("dkim")
    );
    assert!(run.advice("dkim").contains("255"), "{}", run.advice("dkim"));
    let run = run_for("wrongk", &ed_key).await;
    run.expect("dkim", "fail");
    assert!(
        run.summary("dkim").contains("says k=rsa") && run.summary("dkim").contains("Ed25519"),
        "{}",
        run.summary("dkim")
    );
}

#[tokio::test]
async fn dkim_fails_for_a_revoked_key() {
    let dir = tempfile::tempdir().unwrap();
    let (key, _) = keygen(dir.path(), "s1").await;
    let dns = dns(good_zone().txt("s1._domainkey.example.org", "v=DKIM1; k=ed25519; p=")).await;
    let args = [
        "--from",
        "a@example.org",
        "--dkim-selector",
        "s1",
        "--dkim-key",
        &key,
    ];
    let run = lookups(&dns, dir.path(), &args).await;
    run.expect("dkim", "fail");
    assert!(
        run.summary("dkim").contains("revoked"),
        "{}",
        run.summary("dkim")
    );
}

// ---- dmarc ----

#[tokio::test]
async fn dmarc_passes_on_reject_warns_on_none_and_fails_when_missing_or_broken() {
    let dir = tempfile::tempdir().unwrap();
    let dns = dns(Zone::new()
        .txt(
            "_dmarc.example.org",
            "v=DMARC1; p=reject; rua=mailto:d@example.org",
        )
        .txt("_dmarc.watch.example", "v=DMARC1; p=none")
        .txt("_dmarc.bad.example", "v=DMARC1; p=sometimes")
        .txt("_dmarc.parent.example", "v=DMARC1; p=none; sp=quarantine")
        .txt("_dmarc.typo.example", "v=DMARC1; p=rejekt")
        .txt(
            "_dmarc.loose.example",
            "v=DMARC1; p=reject; sp=none; rua=mailto:d@loose.example",
        ))
    .await;
    let run = lookups(&dns, dir.path(), &["--from", "a@example.org"]).await;
    run.expect("dmarc", "pass");
    assert!(
        run.summary("dmarc")
            .contains("policy reject, reports to d@example.org"),
        "{}",
        run.summary("dmarc")
    );
    let run = lookups(&dns, dir.path(), &["--from", "a@watch.example"]).await;
    run.expect("dmarc", "warn");
    assert!(
        run.advice("dmarc").contains("rua="),
        "{}",
        run.advice("dmarc")
    );
    let run = lookups(&dns, dir.path(), &["--from", "a@nothing.example"]).await;
    run.expect("dmarc", "fail");
    assert!(
        run.summary("dmarc").contains("has no DMARC record"),
        "{}",
        run.summary("dmarc")
    );
    let run = lookups(&dns, dir.path(), &["--from", "a@bad.example"]).await;
    run.expect("dmarc", "fail");
    // A typo in the policy: named, and fixed to the policy meant, not
    // weakened to p=none.
    let run = lookups(&dns, dir.path(), &["--from", "a@typo.example"]).await;
    run.expect("dmarc", "fail");
    assert!(
        run.summary("dmarc")
            .contains("p=rejekt (not none, quarantine or reject)"),
        "{}",
        run.summary("dmarc")
    );
    assert!(
        run.advice("dmarc").contains("to p=reject") && !run.advice("dmarc").contains("p=none"),
        "{}",
        run.advice("dmarc")
    );
    // A subdomain governed by sp=none: the advice is about sp=.
    let run = lookups(&dns, dir.path(), &["--from", "a@mail.loose.example"]).await;
    run.expect("dmarc", "warn");
    assert!(
        run.advice("dmarc").contains("sp=quarantine") && !run.advice("dmarc").contains(" p="),
        "{}",
        run.advice("dmarc")
    );
    // A subdomain without its own record: the parent's sp= applies.
    let run = lookups(&dns, dir.path(), &["--from", "a@mail.parent.example"]).await;
    run.expect("dmarc", "pass");
    assert!(
        run.summary("dmarc").contains("policy quarantine"),
        "{}",
        run.summary("dmarc")
    );
}

// ---- mx ----

#[tokio::test]
async fn mx_passes_with_records_warns_on_an_implicit_mx_and_fails_on_a_null_mx() {
    let dir = tempfile::tempdir().unwrap();
    let dns = dns(good_zone()
        .a("bare.example", Ipv4Addr::new(192, 0, 2, 20))
        .null_mx("nomail.example"))
    .await;
    let run = lookups(&dns, dir.path(), &["--from", "a@example.org"]).await;
    run.expect("mx", "pass");
    let run = lookups(&dns, dir.path(), &["--from", "a@bare.example"]).await;
    run.expect("mx", "warn");
    assert!(
        run.summary("mx").contains("implicit MX"),
        "{}",
        run.summary("mx")
    );
    let run = lookups(&dns, dir.path(), &["--from", "a@nomail.example"]).await;
    run.expect("mx", "fail");
    assert!(
        run.summary("mx").contains("null MX"),
        "{}",
        run.summary("mx")
    );
    let run = lookups(&dns, dir.path(), &["--from", "a@missing.example"]).await;
    run.expect("mx", "fail");
}

#[tokio::test]
async fn mx_names_a_domain_with_no_mx_and_no_address_and_mx_hosts_without_one() {
    let dir = tempfile::tempdir().unwrap();
    let dns = dns(good_zone()
        .txt("bare.example", "v=spf1 -all")
        .mx("dangling.example", 10, "mx1.dangling.example")
        .mx("half.example", 10, "mx1.half.example")
        .mx("half.example", 20, "mx2.half.example")
        .a("mx2.half.example", Ipv4Addr::new(192, 0, 2, 30)))
    .await;
    // The domain exists (it has a TXT record) but neither MX nor address.
    let run = lookups(&dns, dir.path(), &["--from", "a@bare.example"]).await;
    run.expect("mx", "fail");
    assert!(
        run.summary("mx")
            .contains("bare.example has no MX and no address"),
        "{}",
        run.summary("mx")
    );
    assert!(
        run.advice("mx")
            .contains("publish an MX record for bare.example")
            && run.advice("mx").contains("so bounces can come back")
            && !run.advice("mx").contains("try later"),
        "{}",
        run.advice("mx")
    );
    let run = lookups(&dns, dir.path(), &["--from", "a@dangling.example"]).await;
    run.expect("mx", "fail");
    assert!(
        run.summary("mx").contains("mx1.dangling.example")
            && run
                .advice("mx")
                .contains("give mx1.dangling.example an A/AAAA record"),
        "{}",
        run.check("mx")
    );
    let run = lookups(&dns, dir.path(), &["--from", "a@half.example"]).await;
    run.expect("mx", "warn");
    assert!(
        run.summary("mx")
            .contains("but mx1.half.example has no address"),
        "{}",
        run.summary("mx")
    );
}

#[tokio::test]
async fn what_dns_says_reaches_json_without_its_control_characters() {
    let dir = tempfile::tempdir().unwrap();
    // An SPF record that does not parse and says so in escape sequences:
    // the summary quotes it.
    let zone = Zone::new().txt(
        "ctl.example",
        "v=spf1 ip4:\u{1b}[2J\u{1b}[31mFORGED\u{7}\r\nPASS  spf -all",
    );
    let dns = dns(zone).await;
    let run = lookups(
        &dns,
        dir.path(),
        &["--from", "a@ctl.example", "--ip", "203.0.113.5"],
    )
    .await;
    for check in run.json["checks"].as_array().unwrap() {
        for field in ["summary", "advice"] {
            let text = check[field].as_str().unwrap_or_default();
            assert!(
                !text.chars().any(|c| c.is_control()),
                "{}: {field} {text:?}",
                check["id"]
            );
        }
    }
}
