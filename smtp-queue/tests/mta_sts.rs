//! MTA-STS (RFC 8461) and TLS-RPT (RFC 8460) in direct delivery from the
//! queue, over real sockets: the testkit DNS server publishes the
//! `_mta-sts` and `_smtp._tls` records, the testkit HTTPS server serves the
//! policy with a certificate from the test CA, and capture servers on
//! loopback addresses play the MX hosts (STARTTLS with certificates for
//! their names, or none).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use smtp_core::TlsPolicy;
use smtp_core::delivery::MemoryBody;
use smtp_queue::mta_sts::{MtaSts, StoreCache};
use smtp_queue::tls_report::{Reporter, report};
use smtp_queue::{
    Body, ListFilter, MessageOptions, NewMessage, RecipientState, Runner, RunnerConfig,
    SqliteStore, Stop, Store,
};
use smtp_testkit::capture::{CaptureConfig, CaptureServer};
use smtp_testkit::certs::{Identity, TestCa};
use smtp_testkit::dns::{DnsServer, Zone};
use smtp_testkit::https::{HttpsServer, Pages};

mod common;
use common::fast;

const ENFORCE: &str = "version: STSv1\r\nmode: enforce\r\nmx: *.example.com\r\nmax_age: 86400\r\n";
const TESTING: &str = "version: STSv1\r\nmode: testing\r\nmx: *.example.com\r\nmax_age: 86400\r\n";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// The MX hosts: name, address, STARTTLS certificate (None: no STARTTLS).
async fn mx_servers(hosts: &[(&str, &str, Option<Identity>)]) -> (u16, Vec<CaptureServer>) {
    let port = std::net::TcpListener::bind((ip(hosts[0].1), 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut servers = Vec::new();
    for (name, addr, tls) in hosts {
        let config = CaptureConfig {
            hostname: (*name).to_owned(),
            tls: tls.clone(),
            ..CaptureConfig::default()
        };
        servers.push(
            CaptureServer::start_on(SocketAddr::new(ip(addr), port), config)
                .await
                .unwrap(),
        );
    }
    (port, servers)
}

fn zone(id: &str, mx: &[(&str, &str)]) -> Zone {
    let mut zone = Zone::new()
        .txt("_mta-sts.example.com", &format!("v=STSv1; id={id}"))
        .txt(
            "_smtp._tls.example.com",
            "v=TLSRPTv1; rua=mailto:tls@example.com",
        )
        .a("mta-sts.example.com", "127.0.0.1".parse().unwrap());
    for (i, (name, addr)) in mx.iter().enumerate() {
        zone = zone
            .mx("example.com", 10 * (i as u16 + 1), name)
            .a(name, addr.parse().unwrap());
    }
    zone
}

async fn policy_server(ca: &TestCa, body: &str) -> HttpsServer {
    let pages = Pages::new().page("/.well-known/mta-sts.txt", "text/plain", body);
    HttpsServer::start(ca.leaf(&["mta-sts.example.com"]), pages)
        .await
        .unwrap()
}

type Log = Arc<std::sync::Mutex<String>>;

fn runner(
    store: Arc<SqliteStore>,
    dns: &DnsServer,
    ca: &TestCa,
    mx_port: u16,
    https_port: u16,
) -> (Runner, Log) {
    use smtp_core::delivery::direct::DirectOptions;
    use smtp_core::ehlo::ClientId;
    use smtp_core::{Config, Timeouts};
    let resolver = Arc::new(
        smtp_dns::HickoryResolver::with_nameserver(dns.addr(), Duration::from_secs(2)).unwrap(),
    );
    let mut trust = smtp_tls::Trust::new().without_web_pki_roots();
    trust.add_ca_pem(ca.cert_pem().as_bytes()).unwrap();
    let timeouts = Timeouts {
        connect: Duration::from_secs(2),
        ..Timeouts::default()
    };
    let connector = smtp_tls::MxConnector::new(TlsPolicy::Optional, trust.clone(), timeouts);
    let client = Config::new(ClientId::parse("client.test").unwrap())
        .with_tls(TlsPolicy::Optional)
        .with_timeouts(timeouts);
    let mut options = DirectOptions::new(client);
    options.port = mx_port;
    let sts = MtaSts::new(resolver.clone(), trust, Arc::new(StoreCache(store.clone())))
        .with_port(https_port);
    let log = Log::default();
    let seen = log.clone();
    let runner = Runner::direct(
        store,
        resolver,
        Arc::new(connector),
        options,
        RunnerConfig::default().with_schedule(fast()),
    )
    .with_mta_sts(Arc::new(sts))
    .with_observer(move |e| seen.lock().unwrap().push_str(&format!("{e:?}\n")));
    (runner, log)
}

async fn store_with_message(dir: &std::path::Path) -> Arc<SqliteStore> {
    let store = Arc::new(SqliteStore::open(dir).await.unwrap());
    let message = NewMessage {
        from: "sender@sender.test".into(),
        to: vec!["rcpt@example.com".into()],
        body: Body::Source(Box::new(MemoryBody::new("Subject: hi\r\n\r\nhello\r\n"))),
        options: MessageOptions::default(),
    };
    store
        .enqueue(vec![message], SystemTime::now())
        .await
        .unwrap();
    store
}

/// One round; the recipient's state, and its last text or (when the
/// destination was held, a policy failure) the run's events.
async fn one_round(
    (runner, events): &(Runner, Log),
    store: &SqliteStore,
) -> (RecipientState, String) {
    events.lock().unwrap().clear();
    runner.run_due(&Stop::new()).await.unwrap();
    let messages = store.list(&ListFilter::default()).await.unwrap();
    let r = &messages[0].recipients[0];
    let mut text = r.last.as_ref().map(|a| a.text.clone()).unwrap_or_default();
    text.push_str(&events.lock().unwrap());
    (r.state, text)
}

/// Not delivered this time: an attempt deferred on the schedule, whose
/// recorded text names the enforced policy (never a held destination:
/// the message expires if the policy is never met).
async fn deferred_naming_the_policy(store: &SqliteStore) {
    let messages = store.list(&ListFilter::default()).await.unwrap();
    let r = &messages[0].recipients[0];
    assert_eq!(r.state, RecipientState::Deferred, "{r:?}");
    assert!(r.attempts >= 1, "{r:?}");
    let text = r.last.as_ref().map(|a| a.text.as_str()).unwrap_or_default();
    assert!(
        text.contains("MTA-STS policy of example.com (enforce) not met"),
        "{text}"
    );
}

async fn tls_report(store: &SqliteStore) -> Vec<serde_json::Value> {
    let now = SystemTime::now();
    let rows = store
        .tls_results(
            now - Duration::from_secs(86_400),
            now + Duration::from_secs(86_400),
            None,
        )
        .await
        .unwrap();
    let rows: Vec<_> = rows.into_iter().map(|(_, r)| r).collect();
    let reporter = Reporter {
        organization: "test".into(),
        contact: "postmaster@sender.test".into(),
    };
    report(&reporter, now, now, &rows)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enforce_with_a_good_certificate_delivers_over_verified_tls() {
    let ca = TestCa::new();
    let (port, mx) = mx_servers(&[(
        "mx1.example.com",
        "127.0.0.2",
        Some(ca.leaf(&["mx1.example.com"])),
    )])
    .await;
    let dns = DnsServer::start(zone("1", &[("mx1.example.com", "127.0.0.2")]))
        .await
        .unwrap();
    let https = policy_server(&ca, ENFORCE).await;
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_message(dir.path()).await;
    let runner = runner(store.clone(), &dns, &ca, port, https.addr().port());
    let (state, text) = one_round(&runner, &store).await;
    assert_eq!(state, RecipientState::Delivered, "{text}");
    let got = mx[0].messages();
    assert_eq!(got.len(), 1);
    assert!(got[0].tls);
    assert_eq!(https.requests().len(), 1);
    // The policy is cached in the store.
    let cached = store.sts_policy("example.com").await.unwrap().unwrap();
    assert_eq!(cached.id, "1");
    // The TLS-RPT report, checked against RFC 8460's schema.
    let reports = tls_report(&store).await;
    assert_eq!(reports.len(), 1);
    let r = &reports[0];
    assert!(r["organization-name"].is_string());
    assert!(r["contact-info"].is_string());
    assert!(r["report-id"].is_string());
    assert!(r["date-range"]["start-datetime"].is_string());
    assert!(r["date-range"]["end-datetime"].is_string());
    let p = &r["policies"][0];
    assert_eq!(p["policy"]["policy-type"], "sts");
    assert_eq!(p["policy"]["policy-domain"], "example.com");
    assert!(
        p["policy"]["policy-string"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s.is_string())
    );
    assert_eq!(p["policy"]["mx-host"][0], "*.example.com");
    assert_eq!(p["summary"]["total-successful-session-count"], 1);
    assert_eq!(p["summary"]["total-failure-session-count"], 0);
    assert!(p["failure-details"].as_array().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enforce_skips_an_mx_host_the_policy_does_not_name() {
    let ca = TestCa::new();
    let (port, mx) = mx_servers(&[
        (
            "mx.other.test",
            "127.0.0.2",
            Some(ca.leaf(&["mx.other.test"])),
        ),
        (
            "mx2.example.com",
            "127.0.0.3",
            Some(ca.leaf(&["mx2.example.com"])),
        ),
    ])
    .await;
    let dns = DnsServer::start(zone(
        "1",
        &[
            ("mx.other.test", "127.0.0.2"),
            ("mx2.example.com", "127.0.0.3"),
        ],
    ))
    .await
    .unwrap();
    let https = policy_server(&ca, ENFORCE).await;
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_message(dir.path()).await;
    let runner = runner(store.clone(), &dns, &ca, port, https.addr().port());
    let (state, text) = one_round(&runner, &store).await;
    assert_eq!(state, RecipientState::Delivered, "{text}");
    assert_eq!(
        mx[0].sessions().len(),
        0,
        "the unnamed host is never contacted"
    );
    assert_eq!(mx[1].messages().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enforce_with_no_mx_host_matching_defers_and_reports_each_host_left_out() {
    let ca = TestCa::new();
    let (port, mx) = mx_servers(&[
        (
            "mx.other.test",
            "127.0.0.2",
            Some(ca.leaf(&["mx.other.test"])),
        ),
        ("mx.elsewhere.test", "127.0.0.3", None),
    ])
    .await;
    let dns = DnsServer::start(zone(
        "1",
        &[
            ("mx.other.test", "127.0.0.2"),
            ("mx.elsewhere.test", "127.0.0.3"),
        ],
    ))
    .await
    .unwrap();
    let https = policy_server(&ca, ENFORCE).await;
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_message(dir.path()).await;
    let runner = runner(store.clone(), &dns, &ca, port, https.addr().port());
    let _ = one_round(&runner, &store).await;
    deferred_naming_the_policy(&store).await;
    for server in &mx {
        assert!(server.sessions().is_empty(), "no host is contacted");
    }
    let reports = tls_report(&store).await;
    let p = &reports[0]["policies"][0];
    assert_eq!(p["policy"]["policy-type"], "sts");
    assert_eq!(p["summary"]["total-failure-session-count"], 2);
    let mut hosts: Vec<&str> = p["failure-details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            assert_eq!(d["result-type"], "validation-failure");
            // No session: no addresses to name.
            assert!(d.get("receiving-ip").is_none(), "{d}");
            assert!(d.get("sending-mta-ip").is_none(), "{d}");
            d["receiving-mx-hostname"].as_str().unwrap()
        })
        .collect();
    hosts.sort_unstable();
    assert_eq!(hosts, ["mx.elsewhere.test", "mx.other.test"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enforce_without_starttls_or_with_a_bad_or_expired_certificate_defers_naming_the_policy() {
    let ca = TestCa::new();
    let (port, mx) = mx_servers(&[
        ("mx1.example.com", "127.0.0.2", None),
        (
            "mx2.example.com",
            "127.0.0.3",
            Some(ca.leaf(&["wrong.example.net"])),
        ),
        (
            "mx3.example.com",
            "127.0.0.4",
            Some(ca.expired_leaf(&["mx3.example.com"])),
        ),
    ])
    .await;
    let dns = DnsServer::start(zone(
        "1",
        &[
            ("mx1.example.com", "127.0.0.2"),
            ("mx2.example.com", "127.0.0.3"),
            ("mx3.example.com", "127.0.0.4"),
        ],
    ))
    .await
    .unwrap();
    let https = policy_server(&ca, ENFORCE).await;
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_message(dir.path()).await;
    let runner = runner(store.clone(), &dns, &ca, port, https.addr().port());
    let _ = one_round(&runner, &store).await;
    deferred_naming_the_policy(&store).await;
    for server in &mx {
        assert!(server.messages().is_empty());
        assert!(
            server
                .sessions()
                .iter()
                .all(|s| s.mail_commands_in_plaintext == 0)
        );
    }
    let reports = tls_report(&store).await;
    let details = reports[0]["policies"][0]["failure-details"]
        .as_array()
        .unwrap()
        .clone();
    let types: Vec<&str> = details
        .iter()
        .map(|d| d["result-type"].as_str().unwrap())
        .collect();
    assert!(types.contains(&"starttls-not-supported"), "{types:?}");
    assert!(types.contains(&"certificate-host-mismatch"), "{types:?}");
    assert!(types.contains(&"certificate-expired"), "{types:?}");
    // Each detail names its session's addresses (RFC 8460 section 4.3):
    // the MX's address connected to, and the loopback address connected
    // from, both strings that are IP addresses.
    let addresses = [
        ("mx1.example.com", "127.0.0.2"),
        ("mx2.example.com", "127.0.0.3"),
        ("mx3.example.com", "127.0.0.4"),
    ];
    for d in &details {
        assert!(d["failed-session-count"].is_u64());
        let host = d["receiving-mx-hostname"].as_str().unwrap();
        let receiving: IpAddr = d["receiving-ip"].as_str().unwrap().parse().unwrap();
        let sending: IpAddr = d["sending-mta-ip"].as_str().unwrap().parse().unwrap();
        let want = addresses.iter().find(|(h, _)| *h == host).unwrap().1;
        assert_eq!(receiving, ip(want), "{d}");
        assert_eq!(sending, ip("127.0.0.1"), "{d}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn testing_mode_delivers_and_records_the_failure() {
    let ca = TestCa::new();
    let (port, mx) = mx_servers(&[("mx1.example.com", "127.0.0.2", None)]).await;
    let dns = DnsServer::start(zone("1", &[("mx1.example.com", "127.0.0.2")]))
        .await
        .unwrap();
    let https = policy_server(&ca, TESTING).await;
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_message(dir.path()).await;
    let runner = runner(store.clone(), &dns, &ca, port, https.addr().port());
    let (state, text) = one_round(&runner, &store).await;
    assert_eq!(state, RecipientState::Delivered, "{text}");
    assert_eq!(mx[0].messages().len(), 1);
    let reports = tls_report(&store).await;
    let p = &reports[0]["policies"][0];
    assert_eq!(p["summary"]["total-failure-session-count"], 1);
    assert_eq!(
        p["failure-details"][0]["result-type"],
        "starttls-not-supported"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_enforce_policy_stays_when_the_refresh_fails_and_a_new_id_is_fetched() {
    let ca = TestCa::new();
    let (port, mx) = mx_servers(&[("mx1.example.com", "127.0.0.2", None)]).await;
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_message(dir.path()).await;
    // First: enforce fetched and cached (the message is deferred: no STARTTLS).
    let dns = DnsServer::start(zone("1", &[("mx1.example.com", "127.0.0.2")]))
        .await
        .unwrap();
    let https = policy_server(&ca, ENFORCE).await;
    let r = runner(store.clone(), &dns, &ca, port, https.addr().port());
    let _ = one_round(&r, &store).await;
    deferred_naming_the_policy(&store).await;
    // The same id: the cache serves, no second GET.
    store
        .retry(smtp_queue::RetryTarget::All, SystemTime::now())
        .await
        .unwrap();
    let _ = one_round(&r, &store).await;
    assert_eq!(https.requests().len(), 1);
    // A new id, the policy server gone: the cached enforce policy stays.
    drop(dns);
    let dns = DnsServer::start(zone("2", &[("mx1.example.com", "127.0.0.2")]))
        .await
        .unwrap();
    let dead = smtp_testkit::closed_port();
    let r = runner(store.clone(), &dns, &ca, port, dead);
    store
        .retry(smtp_queue::RetryTarget::All, SystemTime::now())
        .await
        .unwrap();
    let _ = one_round(&r, &store).await;
    deferred_naming_the_policy(&store).await;
    assert!(mx[0].messages().is_empty());
    // A new id and a policy server with testing: fetched again (a second GET).
    let https2 = policy_server(&ca, TESTING).await;
    let r = runner(store.clone(), &dns, &ca, port, https2.addr().port());
    store
        .retry(smtp_queue::RetryTarget::All, SystemTime::now())
        .await
        .unwrap();
    let (state, text) = one_round(&r, &store).await;
    assert_eq!(https2.requests().len(), 1);
    assert_eq!(state, RecipientState::Delivered, "{text}");
    assert_eq!(
        store.sts_policy("example.com").await.unwrap().unwrap().id,
        "2"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_with_a_bad_version_or_too_large_is_ignored() {
    let ca = TestCa::new();
    for body in [
        "version: STSv9\r\nmode: enforce\r\nmx: *.example.com\r\nmax_age: 86400\r\n".to_owned(),
        format!("{ENFORCE}{}", "x: y\r\n".repeat(12_000)),
    ] {
        let (port, mx) = mx_servers(&[("mx1.example.com", "127.0.0.2", None)]).await;
        let dns = DnsServer::start(zone("1", &[("mx1.example.com", "127.0.0.2")]))
            .await
            .unwrap();
        let https = policy_server(&ca, &body).await;
        let dir = tempfile::tempdir().unwrap();
        let store = store_with_message(dir.path()).await;
        let runner = runner(store.clone(), &dns, &ca, port, https.addr().port());
        let (state, text) = one_round(&runner, &store).await;
        // No policy: delivered as before (plaintext allowed by Optional).
        assert_eq!(state, RecipientState::Delivered, "{text}");
        assert_eq!(mx[0].messages().len(), 1);
        assert!(store.sts_policy("example.com").await.unwrap().is_none());
        let reports = tls_report(&store).await;
        assert_eq!(
            reports[0]["policies"][0]["policy"]["policy-type"],
            "no-policy-found"
        );
        assert_eq!(
            reports[0]["policies"][0]["failure-details"][0]["result-type"],
            "sts-policy-invalid"
        );
        // A policy fetch is no session: no addresses.
        let detail = &reports[0]["policies"][0]["failure-details"][0];
        assert!(detail.get("receiving-ip").is_none(), "{detail}");
        assert!(detail.get("sending-mta-ip").is_none(), "{detail}");
    }
}
