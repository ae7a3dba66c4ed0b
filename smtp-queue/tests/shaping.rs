//! Traffic shaping in direct delivery against real sockets: a testkit
//! DNS zone and a flaky server that throttles as large providers do
//! (sessions at once, messages per second), with the SQLite store in a
//! temporary directory.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use smtp_core::TlsPolicy;
use smtp_core::delivery::MemoryBody;
use smtp_queue::rate::Limit;
use smtp_queue::shaping::{Adaptive, Pattern, Rule};
use smtp_queue::{
    Body, MessageOptions, NewMessage, RecipientState, RunEvent, Runner, RunnerConfig, Shaping,
    SqliteStore, Stop, Store, Throttle,
};
use smtp_testkit::dns::{DnsServer, Zone};
use smtp_testkit::flaky::{FlakyConfig, FlakyServer};

mod common;
use common::fast;

const MX: &str = "mx.bulk.test";
const DESTINATION: &str = "mx:mx.bulk.test";

fn runner(store: Arc<SqliteStore>, dns: &DnsServer, port: u16, config: RunnerConfig) -> Runner {
    use smtp_core::delivery::direct::DirectOptions;
    use smtp_core::ehlo::ClientId;
    use smtp_core::{Config, Timeouts};
    let resolver =
        smtp_dns::HickoryResolver::with_nameserver(dns.addr(), Duration::from_secs(2)).unwrap();
    let timeouts = Timeouts {
        connect: Duration::from_secs(2),
        ..Timeouts::default()
    };
    let connector = smtp_tls::MxConnector::new(TlsPolicy::None, smtp_tls::Trust::new(), timeouts);
    let client = Config::new(ClientId::parse("client.test").unwrap())
        .with_tls(TlsPolicy::None)
        .with_timeouts(timeouts);
    let mut options = DirectOptions::new(client);
    options.port = port;
    Runner::direct(
        store,
        Arc::new(resolver),
        Arc::new(connector),
        options,
        config,
    )
}

async fn queue_of(dir: &std::path::Path, n: usize) -> Arc<SqliteStore> {
    let store = Arc::new(SqliteStore::open(dir).await.unwrap());
    let batch = (0..n)
        .map(|i| NewMessage {
            from: "sender@example.com".into(),
            to: vec![format!("r{i}@bulk.test")],
            body: Body::Source(Box::new(MemoryBody::new(format!(
                "Subject: {i}\r\n\r\nmessage {i}\r\n"
            )))),
            options: MessageOptions::default(),
        })
        .collect();
    store.enqueue(batch, SystemTime::now()).await.unwrap();
    store
}

async fn zone() -> DnsServer {
    let zone = Zone::new()
        .mx("bulk.test", 10, MX)
        .a(MX, "127.0.0.1".parse().unwrap());
    DnsServer::start(zone).await.unwrap()
}

fn shaped(rule: Rule, adaptive: Adaptive) -> RunnerConfig {
    let shaping = Shaping::builtin()
        .with_rule(Pattern::parse(MX).unwrap(), rule)
        .with_adaptive(adaptive);
    RunnerConfig::default()
        .with_schedule(fast())
        .with_concurrency(8)
        .with_shaping(shaping)
}

/// Runs rounds until `n` recipients are delivered, or `limit` passes.
async fn deliver_all(runner: &Runner, store: &SqliteStore, n: u64, limit: Duration) {
    let stop = Stop::new();
    let start = Instant::now();
    while start.elapsed() < limit {
        runner.run_due(&stop).await.unwrap();
        if store
            .stats()
            .await
            .unwrap()
            .count(RecipientState::Delivered)
            >= n
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttling_provider_gets_everything_and_fewer_slow_downs_once_adapted_to() {
    const N: usize = 120;
    let dir = tempfile::tempdir().unwrap();
    // At most 2 sessions at once, 20 messages a second: beyond, 421 at the
    // greeting and 451 to MAIL, as large providers answer.
    let server = FlakyServer::start(FlakyConfig {
        max_sessions: Some(2),
        rate: Some((20, Duration::from_secs(1))),
        ..FlakyConfig::default()
    })
    .await
    .unwrap();
    let dns = zone().await;
    let store = queue_of(dir.path(), N).await;
    // Shaped wider than the server allows, with no rate: the adaptive
    // throttle has to find the server's limits.
    let config = shaped(
        Rule {
            connections: Some(4),
            messages_per_connection: Some(10),
            rate: None,
        },
        Adaptive {
            settle: Duration::from_millis(500),
            quiet: Duration::from_secs(3600),
        },
    );
    let events = Arc::new(Mutex::new(Vec::new()));
    let seen = events.clone();
    let runner =
        runner(store.clone(), &dns, server.addr().port(), config).with_observer(move |e| {
            if let RunEvent::Throttled { .. } = e {
                seen.lock().unwrap().push(e.clone());
            }
        });
    deliver_all(&runner, &store, N as u64, Duration::from_secs(120)).await;

    // Everything delivered, each once.
    let stats = store.stats().await.unwrap();
    assert_eq!(
        stats.count(RecipientState::Delivered),
        N as u64,
        "{stats:?}"
    );
    let deliveries = server.deliveries();
    assert_eq!(deliveries.len(), N);
    assert!(deliveries.values().all(|n| *n == 1));
    assert!(
        server.max_per_session() <= 10,
        "{}",
        server.max_per_session()
    );

    // Slow-downs came early and became rare: counted by where in the run
    // (messages accepted before each), not by the clock.
    let at = server.throttled_at();
    let first = at.iter().filter(|n| **n < N / 3).count();
    let last = at.iter().filter(|n| **n >= 2 * N / 3).count();
    eprintln!(
        "throttling replies: {} in all, {first} in the first third, {last} in the last third; at {at:?}",
        at.len()
    );
    assert!(first >= 2, "{at:?}");
    assert!(last * 4 <= first && last <= 3, "{at:?}");

    // The limits it adapted to are kept in the store, with the reply.
    let kept = store.throttles(None).await.unwrap();
    assert_eq!(kept.len(), 1, "{kept:?}");
    let t = &kept[0];
    assert_eq!(t.destination, DESTINATION);
    assert!(t.connections <= 2, "{t:?}");
    assert!(t.rate_per_min.is_some(), "{t:?}");
    assert!(t.reason.contains("4.7.0"), "{t:?}");
    assert!(t.since <= t.cut && t.cut < t.until, "{t:?}");
    let told = events.lock().unwrap();
    assert!(!told.is_empty());
    assert!(told.len() <= at.len(), "{told:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destinations_shape_caps_its_sessions_messages_per_session_and_rate() {
    const N: usize = 40;
    let dir = tempfile::tempdir().unwrap();
    // A well-behaved server that holds each reply until 3 sessions are
    // open (or 200 ms): a runner that would open more gets the chance.
    let server = FlakyServer::start(FlakyConfig {
        hold_data_until_connections: Some((3, Duration::from_millis(200))),
        ..FlakyConfig::default()
    })
    .await
    .unwrap();
    let dns = zone().await;
    let store = queue_of(dir.path(), N).await;
    let rate: smtp_queue::rate::Rate = "40/second".parse().unwrap();
    let config = shaped(
        Rule {
            connections: Some(3),
            messages_per_connection: Some(4),
            rate: Some(Limit::new(rate).with_burst(5)),
        },
        Adaptive::default(),
    );
    let runner = runner(store.clone(), &dns, server.addr().port(), config);
    let start = Instant::now();
    deliver_all(&runner, &store, N as u64, Duration::from_secs(60)).await;
    let took = start.elapsed();
    let stats = store.stats().await.unwrap();
    assert_eq!(
        stats.count(RecipientState::Delivered),
        N as u64,
        "{stats:?}"
    );
    assert!(
        server.max_open() <= 3,
        "{} sessions at once",
        server.max_open()
    );
    assert!(
        server.max_open() >= 2,
        "{} sessions at once",
        server.max_open()
    );
    assert!(
        server.max_per_session() <= 4,
        "{}",
        server.max_per_session()
    );
    assert!(server.connections() >= N / 4);
    // 40 at 40 a second, 5 at once: the last goes 875 ms after the first.
    assert!(took >= Duration::from_millis(850), "{took:?}");
    assert!(store.throttles(None).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_throttle_is_kept_read_back_and_lifted_in_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).await.unwrap();
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let throttle = Throttle {
        destination: "mx:a.test,b.test".into(),
        connections: 1,
        rate_per_min: Some(30),
        ceiling_per_min: Some(60),
        reason: "421 4.7.0 Too many concurrent SMTP connections".into(),
        since: t0,
        cut: t0 + Duration::from_secs(20),
        until: t0 + Duration::from_secs(140),
    };
    let other = Throttle {
        destination: "mx:c.test".into(),
        rate_per_min: None,
        ceiling_per_min: None,
        ..throttle.clone()
    };
    store.set_throttle(&throttle).await.unwrap();
    store.set_throttle(&other).await.unwrap();
    assert_eq!(
        store.throttles(None).await.unwrap(),
        [throttle.clone(), other.clone()]
    );
    let only = store
        .throttles(Some(&["mx:c.test".to_owned()]))
        .await
        .unwrap();
    assert_eq!(only, [other]);
    let cut = Throttle {
        connections: 2,
        ..throttle.clone()
    };
    store.set_throttle(&cut).await.unwrap();
    store.clear_throttle("mx:c.test").await.unwrap();
    // Another handle (another process: `smtp queue stats`) sees it.
    let reader = SqliteStore::open(dir.path()).await.unwrap();
    assert_eq!(reader.throttles(None).await.unwrap(), [cut]);
}
