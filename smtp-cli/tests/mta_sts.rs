//! MTA-STS (RFC 8461) and TLS-RPT (RFC 8460) from the command line, over
//! real sockets: the testkit DNS server publishes `_mta-sts.example.com`
//! and the address of `mta-sts.example.com`, the testkit HTTPS server
//! serves the policy with a certificate from the test CA (given with
//! `--ca-file`, fetched from the hidden `--mta-sts-port`), and capture
//! servers with STARTTLS play the MX hosts.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::time::SystemTime;

use smtp_testkit::capture::{CaptureConfig, CaptureServer};
use smtp_testkit::certs::{Identity, TestCa};
use smtp_testkit::dns::{DnsServer, Zone};
use smtp_testkit::https::{HttpsServer, Pages};

const ENFORCE: &str = "version: STSv1\r\nmode: enforce\r\nmx: *.example.com\r\nmax_age: 86400\r\n";

/// The servers of one test, and where the CLI finds them.
struct World {
    _rt: tokio::runtime::Runtime,
    mx: CaptureServer,
    mx_port: u16,
    dns: DnsServer,
    https: HttpsServer,
    dir: tempfile::TempDir,
}

impl World {
    /// One MX host, mx1.example.com on 127.0.0.2, with STARTTLS under
    /// `cert`; the policy `policy` served for example.com.
    fn new(cert: impl FnOnce(&TestCa) -> Identity, policy: &str) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let ca = TestCa::new();
        let ip: IpAddr = "127.0.0.2".parse().unwrap();
        let mx_port = std::net::TcpListener::bind((ip, 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = CaptureConfig {
            hostname: "mx1.example.com".into(),
            tls: Some(cert(&ca)),
            ..CaptureConfig::default()
        };
        let mx = rt
            .block_on(CaptureServer::start_on(
                SocketAddr::new(ip, mx_port),
                config,
            ))
            .unwrap();
        let zone = Zone::new()
            .txt("_mta-sts.example.com", "v=STSv1; id=20260101")
            .txt(
                "_smtp._tls.example.com",
                "v=TLSRPTv1; rua=mailto:tls@example.com",
            )
            .a("mta-sts.example.com", "127.0.0.1".parse().unwrap())
            .mx("example.com", 10, "mx1.example.com")
            .a("mx1.example.com", "127.0.0.2".parse().unwrap());
        let dns = rt.block_on(DnsServer::start(zone)).unwrap();
        let pages = Pages::new().page("/.well-known/mta-sts.txt", "text/plain", policy);
        let https = rt
            .block_on(HttpsServer::start(ca.leaf(&["mta-sts.example.com"]), pages))
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.cert_pem()).unwrap();
        Self {
            _rt: rt,
            mx,
            mx_port,
            dns,
            https,
            dir,
        }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_str().unwrap().to_owned()
    }

    /// The flags that point direct delivery (and `smtp mx`) here.
    fn here(&self) -> Vec<String> {
        vec![
            "--dns-server".into(),
            self.dns.addr().to_string(),
            "--mta-sts-port".into(),
            self.https.addr().port().to_string(),
            "--ca-file".into(),
            self.path("ca.pem"),
        ]
    }

    fn delivery(&self) -> Vec<String> {
        let mut a = self.here();
        a.extend(["--mx-port".into(), self.mx_port.to_string()]);
        a.extend(["--helo".into(), "client.test".into()]);
        a
    }

    fn smtp(&self, args: &[&str], extra: &[String]) -> (Option<i32>, String, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_smtp"))
            .args(args)
            .args(extra)
            .env("XDG_CACHE_HOME", self.path("cache"))
            .env("XDG_STATE_HOME", self.path("state"))
            .env("XDG_CONFIG_HOME", self.path("config"))
            .env_remove("SMTP_PASSWORD")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn send(&self, more: &[&str]) -> (Option<i32>, String, String) {
        let mut args = vec![
            "send",
            "--from",
            "a@sender.test",
            "--to",
            "rcpt@example.com",
            "--subject",
            "hi",
            "--body",
            "hello",
        ];
        args.extend(more);
        self.smtp(&args, &self.delivery())
    }

    fn nothing_in_plaintext(&self) {
        assert!(self.mx.messages().is_empty());
        assert!(
            self.mx
                .sessions()
                .iter()
                .all(|s| s.mail_commands_in_plaintext == 0)
        );
    }
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("{e}: {s}"))
}

#[test]
fn send_under_enforce_with_a_bad_certificate_defers_naming_the_policy() {
    let w = World::new(|ca| ca.leaf(&["wrong.example.net"]), ENFORCE);
    let (code, out, err) = w.send(&[]);
    assert_eq!(code, Some(75), "{out}\n{err}");
    assert!(
        out.contains("MTA-STS policy of example.com (enforce)"),
        "{out}\n{err}"
    );
    w.nothing_in_plaintext();
    // The policy was cached, privately.
    let cache = Path::new(&w.path("cache")).join("smtp/mta-sts.json");
    let cached = std::fs::read_to_string(&cache).unwrap();
    assert!(cached.contains("20260101"), "{cached}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&cache), 0o600);
        assert_eq!(mode(cache.parent().unwrap()), 0o700);
    }
    // --json names it too: deferred, under enforce.
    let (code, out, _) = w.send(&["--json"]);
    assert_eq!(code, Some(75), "{out}");
    let r = &json(&out)["messages"][0]["recipients"][0];
    assert_eq!(r["status"], "deferred", "{r}");
    assert_eq!(r["mta_sts"], "enforce", "{r}");
    assert!(
        r["text"]
            .as_str()
            .unwrap()
            .contains("MTA-STS policy of example.com (enforce)"),
        "{r}"
    );
    // The second send took the policy from the cache.
    assert_eq!(w.https.requests().len(), 1);
    w.nothing_in_plaintext();
}

#[test]
fn send_with_mta_sts_off_delivers_as_before() {
    let w = World::new(|ca| ca.leaf(&["wrong.example.net"]), ENFORCE);
    let (code, out, err) = w.send(&["--mta-sts", "off", "--json"]);
    assert_eq!(code, Some(0), "{out}\n{err}");
    let r = &json(&out)["messages"][0]["recipients"][0];
    assert_eq!(r["status"], "accepted", "{r}");
    assert!(r.get("mta_sts").is_none(), "{r}");
    assert_eq!(w.mx.messages().len(), 1);
    assert!(w.https.requests().is_empty(), "no policy fetched");
}

#[test]
fn send_under_testing_with_a_bad_certificate_delivers_and_says_enforce_would_refuse() {
    let w = World::new(
        |ca| ca.leaf(&["wrong.example.net"]),
        &ENFORCE.replace("enforce", "testing"),
    );
    let (code, out, err) = w.send(&["--json"]);
    assert_eq!(code, Some(0), "{out}\n{err}");
    let r = &json(&out)["messages"][0]["recipients"][0];
    assert_eq!(r["status"], "accepted", "{r}");
    assert_eq!(r["mta_sts"], "testing", "{r}");
    assert_eq!(r["cert_verified"], false, "{r}");
    assert!(
        err.contains("MTA-STS policy of example.com (testing) would refuse this session"),
        "{err}"
    );
    assert!(err.contains("certificate-host-mismatch"), "{err}");
    assert_eq!(w.mx.messages().len(), 1);
}

#[test]
fn send_with_a_policy_of_a_bad_version_warns_and_delivers_as_without_one() {
    let w = World::new(
        |ca| ca.leaf(&["wrong.example.net"]),
        &ENFORCE.replace("STSv1", "STSv9"),
    );
    let (code, out, err) = w.send(&["--json"]);
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(
        err.contains("warning: MTA-STS policy of example.com ignored (sts-policy-invalid): ")
            && err.contains("delivering under no policy"),
        "{err}"
    );
    let r = &json(&out)["messages"][0]["recipients"][0];
    assert_eq!(r["status"], "accepted", "{r}");
    assert!(r.get("mta_sts").is_none(), "{r}");
    assert_eq!(w.mx.messages().len(), 1);
}

#[test]
fn an_account_turns_mta_sts_off_and_the_command_line_wins() {
    let w = World::new(|ca| ca.leaf(&["wrong.example.net"]), ENFORCE);
    let config = w.path("config.toml");
    std::fs::write(&config, "[accounts.direct]\nmta_sts = false\n").unwrap();
    let account = ["--config", config.as_str(), "--account", "direct"];
    let (code, out, err) = w.send(&account);
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert_eq!(w.mx.messages().len(), 1);
    assert!(w.https.requests().is_empty(), "no policy fetched");
    let mut on = account.to_vec();
    on.extend(["--mta-sts", "on"]);
    let (code, out, err) = w.send(&on);
    assert_eq!(code, Some(75), "{out}\n{err}");
    assert!(
        out.contains("MTA-STS policy of example.com (enforce)"),
        "{out}\n{err}"
    );
    assert_eq!(w.mx.messages().len(), 1, "the second one was not sent");
}

#[test]
fn send_under_enforce_with_a_good_certificate_says_so() {
    let w = World::new(|ca| ca.leaf(&["mx1.example.com"]), ENFORCE);
    let (code, out, err) = w.send(&["--json"]);
    assert_eq!(code, Some(0), "{out}\n{err}");
    let r = &json(&out)["messages"][0]["recipients"][0];
    assert_eq!(r["status"], "accepted", "{r}");
    assert_eq!(r["mta_sts"], "enforce", "{r}");
    assert_eq!(r["cert_verified"], true, "{r}");
    let got = w.mx.messages();
    assert_eq!(got.len(), 1);
    assert!(got[0].tls);
}

#[test]
fn queue_run_under_enforce_delivers_and_tls_report_counts_the_sessions() {
    let w = World::new(|ca| ca.leaf(&["mx1.example.com"]), ENFORCE);
    let queue = w.path("queue");
    let (code, out, err) = w.send(&["--queue", &queue, "--queue-only"]);
    assert_eq!(code, Some(0), "{out}\n{err}");
    let (code, out, err) = w.smtp(
        &["queue", "--queue", &queue, "run", "--log-format", "json"],
        &w.delivery(),
    );
    assert_eq!(code, Some(0), "{out}\n{err}");
    // The delivery's log entry names the policy's mode.
    let entry = err
        .lines()
        .find(|l| l.contains("\"delivered\""))
        .unwrap_or_else(|| panic!("{err}"));
    assert!(entry.contains("\"mta_sts\":\"enforce\""), "{entry}");
    let got = w.mx.messages();
    assert_eq!(got.len(), 1, "{out}\n{err}");
    assert!(got[0].tls);
    // The policy is cached in the queue's store, not the file.
    assert!(
        !Path::new(&w.path("cache"))
            .join("smtp/mta-sts.json")
            .exists()
    );
    let today = &smtp_queue::time::rfc3339(SystemTime::now())[..10];
    let (code, out, err) = w.smtp(
        &[
            "queue",
            "--queue",
            &queue,
            "tls-report",
            "--day",
            today,
            "--org",
            "Sender Org",
            "--contact",
            "tls-reports@sender.test",
        ],
        &[],
    );
    assert_eq!(code, Some(0), "{out}\n{err}");
    let reports = json(&out);
    let reports = reports.as_array().unwrap();
    assert_eq!(reports.len(), 1, "{out}");
    let r = &reports[0];
    // RFC 8460 §4.4's fields, with their types.
    assert_eq!(r["organization-name"], "Sender Org");
    assert_eq!(r["contact-info"], "tls-reports@sender.test");
    assert!(r["report-id"].is_string());
    let start = r["date-range"]["start-datetime"].as_str().unwrap();
    let end = r["date-range"]["end-datetime"].as_str().unwrap();
    assert_eq!(start, format!("{today}T00:00:00Z"));
    assert!(end.ends_with("T00:00:00Z") && end > start, "{end}");
    let policies = r["policies"].as_array().unwrap();
    assert_eq!(policies.len(), 1);
    let p = &policies[0];
    assert_eq!(p["policy"]["policy-type"], "sts");
    assert_eq!(p["policy"]["policy-domain"], "example.com");
    let lines = p["policy"]["policy-string"].as_array().unwrap();
    assert!(lines.iter().all(serde_json::Value::is_string));
    assert!(lines.iter().any(|l| l == "mode: enforce"), "{lines:?}");
    assert_eq!(p["policy"]["mx-host"][0], "*.example.com");
    assert_eq!(p["summary"]["total-successful-session-count"], 1);
    assert_eq!(p["summary"]["total-failure-session-count"], 0);
    assert!(p["summary"]["total-successful-session-count"].is_u64());
    assert!(p["failure-details"].as_array().unwrap().is_empty());
    // --rua: where the report goes, from the domain's _smtp._tls record.
    let dns = w.dns.addr().to_string();
    let (code, out, err) = w.smtp(
        &[
            "queue",
            "--queue",
            &queue,
            "tls-report",
            "--day",
            today,
            "--rua",
            "--dns-server",
            &dns,
        ],
        &[],
    );
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(
        err.contains("smtp: example.com: reports go to mailto:tls@example.com"),
        "{err}"
    );
    // Another domain: nothing.
    let (code, out, _) = w.smtp(
        &[
            "queue",
            "--queue",
            &queue,
            "tls-report",
            "--day",
            today,
            "--domain",
            "other.test",
        ],
        &[],
    );
    assert_eq!(code, Some(0));
    assert_eq!(json(&out), serde_json::json!([]));
    // send --queue names the mode as plain send does.
    let (code, out, err) = w.send(&["--queue", &queue, "--json"]);
    assert_eq!(code, Some(0), "{out}\n{err}");
    let r = &json(&out)["messages"][0]["recipients"][0];
    assert_eq!(r["status"], "accepted", "{r}");
    assert_eq!(r["mta_sts"], "enforce", "{r}");
    assert_eq!(w.mx.messages().len(), 2);
}

#[test]
fn mx_shows_the_policy_fetched_then_from_cache() {
    let w = World::new(|ca| ca.leaf(&["mx1.example.com"]), ENFORCE);
    let (code, out, err) = w.smtp(&["mx", "example.com"], &w.here());
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(out.contains("mx1.example.com"), "{out}");
    assert!(
        out.contains("MTA-STS: enforce (id 20260101, max_age 86400, fetched)"),
        "{out}"
    );
    assert!(out.contains("mx: *.example.com"), "{out}");
    let (code, out, err) = w.smtp(&["mx", "example.com", "--json"], &w.here());
    assert_eq!(code, Some(0), "{out}\n{err}");
    let v = json(&out);
    let p = &v["mta_sts"]["policy"];
    assert_eq!(p["mode"], "enforce", "{v}");
    assert_eq!(p["mx"][0], "*.example.com");
    assert_eq!(p["max_age"], 86400);
    assert_eq!(p["id"], "20260101");
    assert_eq!(p["source"], "cache");
    assert_eq!(w.https.requests().len(), 1);
}

#[test]
fn mx_says_when_no_mx_host_matches_the_policy() {
    let policy = ENFORCE.replace("*.example.com", "mail.example.com");
    let w = World::new(|ca| ca.leaf(&["mx1.example.com"]), &policy);
    let (code, out, err) = w.smtp(&["mx", "example.com"], &w.here());
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(
        out.contains("not named by the policy: mx1.example.com (never used)"),
        "{out}"
    );
    assert!(out.contains("no MX host matches the policy"), "{out}");
    let (_, out, _) = w.smtp(&["mx", "example.com", "--json"], &w.here());
    assert_eq!(json(&out)["mta_sts"]["not_named"][0], "mx1.example.com");
    // A policy naming it: nothing said.
    let w = World::new(|ca| ca.leaf(&["mx1.example.com"]), ENFORCE);
    let (_, out, _) = w.smtp(&["mx", "example.com"], &w.here());
    assert!(!out.contains("not named"), "{out}");
}

#[test]
fn a_message_queued_with_mta_sts_off_waits_for_a_run_without_it_and_the_other_way_round() {
    let w = World::new(|ca| ca.leaf(&["wrong.example.net"]), ENFORCE);
    let queue = w.path("queue");
    // Enqueued under the policy: a run with --mta-sts off leaves it.
    let (code, out, err) = w.send(&["--queue", &queue, "--queue-only"]);
    assert_eq!(code, Some(0), "{out}\n{err}");
    let (code, out, err) = w.smtp(
        &["queue", "--queue", &queue, "run", "--mta-sts", "off"],
        &w.delivery(),
    );
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(
        err.contains("1 message in this queue waits for another route: direct")
            && err.contains("`smtp queue run` without --server"),
        "{out}\n{err}"
    );
    w.nothing_in_plaintext();
    // Enqueued with --mta-sts off: a run under MTA-STS leaves it; one
    // without delivers it.
    let queue = w.path("queue-off");
    let (code, out, err) = w.send(&["--queue", &queue, "--queue-only", "--mta-sts", "off"]);
    assert_eq!(code, Some(0), "{out}\n{err}");
    let (code, out, err) = w.smtp(&["queue", "--queue", &queue, "run"], &w.delivery());
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(
        err.contains("waits for another route: direct mta-sts=off")
            && err.contains("`smtp queue run --mta-sts off` without --server"),
        "{out}\n{err}"
    );
    assert!(w.mx.messages().is_empty());
    let (code, out, err) = w.smtp(
        &["queue", "--queue", &queue, "run", "--mta-sts", "off"],
        &w.delivery(),
    );
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert_eq!(w.mx.messages().len(), 1, "{out}\n{err}");
}

#[test]
fn mx_survives_a_cache_entry_with_a_far_expiry() {
    let w = World::new(|ca| ca.leaf(&["mx1.example.com"]), ENFORCE);
    let cache = Path::new(&w.path("cache")).join("smtp");
    std::fs::create_dir_all(&cache).unwrap();
    let entry = serde_json::json!({"example.com": {
        "id": "20260101",
        "policy": ENFORCE,
        "fetched": 1,
        "expires": u64::MAX,
    }});
    std::fs::write(cache.join("mta-sts.json"), entry.to_string()).unwrap();
    let (code, out, err) = w.smtp(&["mx", "example.com"], &w.here());
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(out.contains("from cache"), "{out}");
}
