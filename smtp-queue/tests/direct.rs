//! Direct delivery from the queue against real sockets: each recipient
//! domain's MX hosts from a zone on a testkit DNS server, served by
//! testkit flaky servers on loopback addresses (one port for all of them,
//! as port 25 is in real life), with the SQLite store in a temporary
//! directory.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use smtp_core::TlsPolicy;
use smtp_core::delivery::MemoryBody;
use smtp_queue::{
    Body, MessageOptions, NewMessage, RecipientState, RunEvent, Runner, RunnerConfig, Schedule,
    SqliteStore, Stop, Store,
};
use smtp_testkit::dns::{DnsServer, Zone};
use smtp_testkit::flaky::{FlakyConfig, FlakyServer};

mod common;
use common::fast;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn direct_runner(store: Arc<SqliteStore>, dns: &DnsServer, port: u16) -> Runner {
    direct_runner_with(
        store,
        dns,
        port,
        RunnerConfig::default().with_schedule(fast()),
    )
}

fn direct_runner_with(
    store: Arc<SqliteStore>,
    dns: &DnsServer,
    port: u16,
    config: RunnerConfig,
) -> Runner {
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

fn message(to: &[&str], n: usize) -> NewMessage {
    NewMessage {
        from: "sender@example.com".into(),
        to: to.iter().map(|s| (*s).to_owned()).collect(),
        body: Body::Source(Box::new(MemoryBody::new(format!(
            "Subject: {n}\r\n\r\nmessage {n}\r\n"
        )))),
        options: MessageOptions::default(),
    }
}

async fn store_with(dir: &std::path::Path, messages: Vec<NewMessage>) -> Arc<SqliteStore> {
    let store = Arc::new(SqliteStore::open(dir).await.unwrap());
    store.enqueue(messages, SystemTime::now()).await.unwrap();
    store
}

type Events = Arc<Mutex<Vec<RunEvent>>>;

fn observed(runner: Runner) -> (Runner, Events) {
    let events: Events = Arc::new(Mutex::new(Vec::new()));
    let seen = events.clone();
    let runner = runner.with_observer(move |e| seen.lock().unwrap().push(e.clone()));
    (runner, events)
}

/// Runs rounds until `delivered` recipients are delivered, or 20 s pass.
async fn run_until_delivered(runner: &Runner, store: &SqliteStore, delivered: u64) {
    let stop = Stop::new();
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        runner.run_due(&stop).await.unwrap();
        let stats = store.stats().await.unwrap();
        if stats.count(RecipientState::Delivered) >= delivered {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn connecting(events: &Events) -> Vec<(String, usize)> {
    events
        .lock()
        .unwrap()
        .iter()
        .filter_map(|e| match e {
            RunEvent::Connecting {
                destination,
                messages,
            } => Some((destination.clone(), *messages)),
            _ => None,
        })
        .collect()
}

fn backed_off(events: &Events) -> Vec<String> {
    events
        .lock()
        .unwrap()
        .iter()
        .filter_map(|e| match e {
            RunEvent::BackedOff { destination, .. } => Some(destination.clone()),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn domains_on_the_same_mx_hosts_share_one_session() {
    let dir = tempfile::tempdir().unwrap();
    let server = FlakyServer::start(FlakyConfig::default()).await.unwrap();
    // a.test and b.test are served by one host; c.test by its own (at the
    // same address: the destination is the host names, not the address).
    let zone = Zone::new()
        .mx("a.test", 10, "mx.shared.test")
        .mx("b.test", 10, "mx.shared.test")
        .a("mx.shared.test", "127.0.0.1".parse().unwrap())
        .mx("c.test", 10, "mx.c.test")
        .a("mx.c.test", "127.0.0.1".parse().unwrap());
    let dns = DnsServer::start(zone).await.unwrap();
    let store = store_with(
        dir.path(),
        vec![
            message(&["a1@a.test"], 1),
            message(&["b1@b.test"], 2),
            message(&["a2@a.test"], 3),
            message(&["a3@a.test", "b2@b.test"], 4),
            message(&["c1@c.test"], 5),
            message(&["b3@B.TEST"], 6),
        ],
    )
    .await;
    let (runner, events) = observed(direct_runner(store.clone(), &dns, server.addr().port()));
    run_until_delivered(&runner, &store, 7).await;
    let stats = store.stats().await.unwrap();
    assert_eq!(stats.count(RecipientState::Delivered), 7, "{stats:?}");
    // One session for the shared host (five messages), one for c.test.
    assert_eq!(server.connections(), 2);
    let mut sessions = connecting(&events);
    sessions.sort();
    assert_eq!(
        sessions,
        [
            ("mx:mx.c.test".to_owned(), 1),
            ("mx:mx.shared.test".to_owned(), 5)
        ]
    );
    // The message to both domains went in one transaction.
    let both: Vec<_> = server
        .messages()
        .into_iter()
        .filter(|m| m.rcpt_to.len() == 2)
        .collect();
    assert_eq!(both.len(), 1);
    assert_eq!(both[0].rcpt_to, ["a3@a.test", "b2@b.test"]);
    assert_eq!(server.messages().len(), 6);
    // Each outcome names its destination (logs and metrics use it).
    for e in events.lock().unwrap().iter() {
        if let RunEvent::Recorded {
            recipient,
            destination,
            ..
        } = e
        {
            let expected = if recipient.ends_with("@c.test") {
                "mx:mx.c.test"
            } else {
                "mx:mx.shared.test"
            };
            assert_eq!(destination, expected, "{recipient}");
        }
    }
}

/// A claim is spread over the domains due: a big domain's run (sorted
/// first) does not fill the claim while the small domains wait for later
/// rounds. Each destination takes 1 session of 5 messages at once, so a
/// claim takes at most 5 messages of a domain (the widest shape).
#[tokio::test]
async fn one_big_domain_does_not_keep_the_others_waiting_for_later_claims() {
    let dir = tempfile::tempdir().unwrap();
    let server = FlakyServer::start(FlakyConfig::default()).await.unwrap();
    let mut zone = Zone::new()
        .mx("a-big.test", 10, "mx.a-big.test")
        .a("mx.a-big.test", "127.0.0.1".parse().unwrap());
    let mut messages: Vec<NewMessage> = (0..40)
        .map(|i| message(&[&format!("u{i}@a-big.test")], i))
        .collect();
    for d in 0..4 {
        zone = zone
            .mx(&format!("small{d}.test"), 10, &format!("mx.small{d}.test"))
            .a(&format!("mx.small{d}.test"), "127.0.0.1".parse().unwrap());
        for i in 0..2 {
            messages.push(message(&[&format!("u{i}@small{d}.test")], 100 + i));
        }
    }
    let dns = DnsServer::start(zone).await.unwrap();
    let store = store_with(dir.path(), messages).await;
    let config = RunnerConfig::default()
        .with_schedule(fast())
        .with_claim(20)
        .with_per_destination(1)
        .with_per_connection(5)
        .with_shaping(smtp_queue::Shaping::none());
    let (runner, events) = observed(direct_runner_with(
        store.clone(),
        &dns,
        server.addr().port(),
        config,
    ));
    run_until_delivered(&runner, &store, 48).await;
    assert_eq!(
        store
            .stats()
            .await
            .unwrap()
            .count(RecipientState::Delivered),
        48
    );
    let sessions = connecting(&events);
    let big: Vec<usize> = (0..sessions.len())
        .filter(|&k| sessions[k].0 == "mx:mx.a-big.test")
        .collect();
    let last_small = (0..sessions.len())
        .rfind(|&k| sessions[k].0 != "mx:mx.a-big.test")
        .unwrap();
    // Every small domain went in the first claim, beside the big one's
    // first five: before the big one's second session.
    assert!(last_small < big[1], "{sessions:?}");
    assert!(sessions.iter().all(|(_, n)| *n <= 5), "{sessions:?}");
    assert_eq!(big.len(), 8, "{sessions:?}");
}

#[tokio::test]
async fn a_refused_greeting_moves_every_message_on_to_the_next_mx_host() {
    let dir = tempfile::tempdir().unwrap();
    let good = FlakyServer::start(FlakyConfig::default()).await.unwrap();
    let port = good.addr().port();
    let refusing = FlakyServer::start_on(
        SocketAddr::new(ip("127.0.0.2"), port),
        FlakyConfig {
            refuse_greeting: Some("554 5.7.1 no service for you".into()),
            ..FlakyConfig::default()
        },
    )
    .await
    .unwrap();
    let zone = Zone::new()
        .mx("d.test", 10, "mx1.d.test")
        .a("mx1.d.test", "127.0.0.2".parse().unwrap())
        .mx("d.test", 20, "mx2.d.test")
        .a("mx2.d.test", "127.0.0.1".parse().unwrap());
    let dns = DnsServer::start(zone).await.unwrap();
    let store = store_with(
        dir.path(),
        (0..3)
            .map(|n| message(&[&format!("r{n}@d.test")], n))
            .collect(),
    )
    .await;
    let (runner, events) = observed(direct_runner(store.clone(), &dns, port));
    runner.run_due(&Stop::new()).await.unwrap();
    let stats = store.stats().await.unwrap();
    assert_eq!(stats.count(RecipientState::Delivered), 3, "{stats:?}");
    // One session on each host: the refusal cost one connection, not three.
    assert_eq!(refusing.connections(), 1);
    assert_eq!(good.connections(), 1);
    assert_eq!(good.messages().len(), 3);
    assert!(backed_off(&events).is_empty());
    // Each delivery names the host that took it.
    for m in store
        .list(&smtp_queue::ListFilter::default())
        .await
        .unwrap()
    {
        let info = store.show(&m.id).await.unwrap();
        let host = info.recipients[0]
            .last
            .as_ref()
            .and_then(|a| a.host.clone())
            .unwrap_or_default();
        assert_eq!(host, "mx2.d.test", "{info:?}");
    }
}

#[tokio::test]
async fn unreachable_mx_hosts_are_backed_off_once_for_every_domain_they_serve() {
    let dir = tempfile::tempdir().unwrap();
    let server = FlakyServer::start(FlakyConfig::default()).await.unwrap();
    // e.test and f.test share a host where nothing listens (127.0.0.3 on
    // the flaky server's port: refused at once); g.test is fine.
    let zone = Zone::new()
        .mx("e.test", 10, "mx.dead.test")
        .mx("f.test", 10, "mx.dead.test")
        .a("mx.dead.test", "127.0.0.3".parse().unwrap())
        .mx("g.test", 10, "mx.g.test")
        .a("mx.g.test", "127.0.0.1".parse().unwrap());
    let dns = DnsServer::start(zone).await.unwrap();
    let store = store_with(
        dir.path(),
        vec![
            message(&["e1@e.test"], 1),
            message(&["f1@f.test"], 2),
            message(&["e2@e.test", "g1@g.test"], 3),
            message(&["f2@f.test"], 4),
        ],
    )
    .await;
    // The recipients' retries come sooner than the destination's back-off.
    let mut config = RunnerConfig::default().with_schedule(fast());
    config.backoff = Schedule {
        first: Duration::from_secs(30),
        ..fast()
    };
    let (runner, events) = observed(direct_runner_with(
        store.clone(),
        &dns,
        server.addr().port(),
        config,
    ));
    runner.run_due(&Stop::new()).await.unwrap();
    let stats = store.stats().await.unwrap();
    assert_eq!(stats.count(RecipientState::Delivered), 1, "{stats:?}");
    assert_eq!(stats.count(RecipientState::Deferred), 4, "{stats:?}");
    // One session was tried for both domains, and one back-off covers them.
    let sessions = connecting(&events);
    assert_eq!(
        sessions
            .iter()
            .filter(|(d, _)| d == "mx:mx.dead.test")
            .collect::<Vec<_>>(),
        [&("mx:mx.dead.test".to_owned(), 4)]
    );
    assert_eq!(backed_off(&events), ["mx:mx.dead.test"]);
    let backoff = store.backoff("mx:mx.dead.test").await.unwrap().unwrap();
    assert!(backoff.not_before > SystemTime::now());
    // Due again before the back-off ends: not tried, held back until it.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let before = connecting(&events).len();
    runner.run_due(&Stop::new()).await.unwrap();
    let released: Vec<Option<SystemTime>> = events
        .lock()
        .unwrap()
        .iter()
        .filter_map(|e| match e {
            RunEvent::Released { not_before, .. } => Some(*not_before),
            _ => None,
        })
        .collect();
    assert_eq!(released.len(), 4, "{released:?}");
    assert!(released.iter().all(|t| *t == Some(backoff.not_before)));
    assert!(
        !connecting(&events)[before..]
            .iter()
            .any(|(d, _)| d == "mx:mx.dead.test"),
        "{:?}",
        connecting(&events)
    );
    let stats = store.stats().await.unwrap();
    assert_eq!(stats.count(RecipientState::Delivered), 1, "{stats:?}");
}

#[tokio::test]
async fn a_421_after_three_messages_per_connection_is_ridden_out_by_reconnecting() {
    let dir = tempfile::tempdir().unwrap();
    let server = FlakyServer::start(FlakyConfig {
        max_per_connection: Some(3),
        ..FlakyConfig::default()
    })
    .await
    .unwrap();
    let zone = Zone::new()
        .mx("h.test", 10, "mx.h.test")
        .a("mx.h.test", "127.0.0.1".parse().unwrap());
    let dns = DnsServer::start(zone).await.unwrap();
    let store = store_with(
        dir.path(),
        (0..8)
            .map(|n| message(&[&format!("r{n}@h.test")], n))
            .collect(),
    )
    .await;
    let (runner, events) = observed(direct_runner(store.clone(), &dns, server.addr().port()));
    run_until_delivered(&runner, &store, 8).await;
    let stats = store.stats().await.unwrap();
    assert_eq!(stats.count(RecipientState::Delivered), 8, "{stats:?}");
    assert!(server.connections() >= 3, "{}", server.connections());
    // Each delivered exactly once, none counted as failed or backed off.
    assert!(server.deliveries().values().all(|n| *n == 1));
    assert_eq!(server.deliveries().len(), 8);
    assert!(backed_off(&events).is_empty(), "{:?}", backed_off(&events));
    assert_eq!(runner.summary().failed, 0);
}

#[tokio::test]
async fn greylisting_defers_and_a_later_round_delivers() {
    let dir = tempfile::tempdir().unwrap();
    let server = FlakyServer::start(FlakyConfig {
        greylist: Some(Duration::from_millis(300)),
        ..FlakyConfig::default()
    })
    .await
    .unwrap();
    let zone = Zone::new()
        .mx("a.test", 10, "mx.a.test")
        .a("mx.a.test", "127.0.0.1".parse().unwrap())
        .mx("b.test", 10, "mx.b.test")
        .a("mx.b.test", "127.0.0.1".parse().unwrap());
    let dns = DnsServer::start(zone).await.unwrap();
    let store = store_with(
        dir.path(),
        vec![message(&["x@a.test", "y@b.test", "z@a.test"], 1)],
    )
    .await;
    let (runner, events) = observed(direct_runner(store.clone(), &dns, server.addr().port()));
    run_until_delivered(&runner, &store, 3).await;
    let stats = store.stats().await.unwrap();
    assert_eq!(stats.count(RecipientState::Delivered), 3, "{stats:?}");
    assert!(runner.summary().deferred >= 3, "{:?}", runner.summary());
    // One transaction per destination: a.test's two recipients together.
    let mut rcpts: Vec<Vec<String>> = server
        .messages()
        .iter()
        .map(|m| m.rcpt_to.clone())
        .collect();
    rcpts.sort();
    assert_eq!(rcpts, [vec!["x@a.test", "z@a.test"], vec!["y@b.test"]]);
    // Greylisting is a recipient's deferral, not the destination's fault.
    assert!(backed_off(&events).is_empty(), "{:?}", backed_off(&events));
    // The retry reused the first round's plan: one MX lookup per domain.
    let mx_lookups = dns
        .queries()
        .iter()
        .filter(|(name, kind)| kind == "MX" && name.trim_end_matches('.') == "a.test")
        .count();
    assert_eq!(mx_lookups, 1, "{:?}", dns.queries());
}

#[tokio::test]
async fn a_domain_without_mail_servers_fails_and_a_dns_outage_defers() {
    let dir = tempfile::tempdir().unwrap();
    let server = FlakyServer::start(FlakyConfig::default()).await.unwrap();
    let zone = Zone::new()
        .null_mx("nomail.test")
        .servfail("broken.test")
        .mx("ok.test", 10, "mx.ok.test")
        .a("mx.ok.test", "127.0.0.1".parse().unwrap());
    let dns = DnsServer::start(zone).await.unwrap();
    let store = store_with(
        dir.path(),
        vec![message(&["a@nomail.test", "b@broken.test", "c@ok.test"], 1)],
    )
    .await;
    let runner = direct_runner(store.clone(), &dns, server.addr().port());
    runner.run_due(&Stop::new()).await.unwrap();
    let m = &store
        .list(&smtp_queue::ListFilter::default())
        .await
        .unwrap()[0];
    let info = store.show(&m.id).await.unwrap();
    let state = |addr: &str| {
        info.recipients
            .iter()
            .find(|r| r.address == addr)
            .map(|r| (r.state, r.last.as_ref().map(|a| a.text.clone())))
            .unwrap()
    };
    assert_eq!(state("c@ok.test").0, RecipientState::Delivered);
    let (s, text) = state("a@nomail.test");
    assert_eq!(s, RecipientState::Failed);
    assert!(text.unwrap().contains("null MX"));
    let (s, text) = state("b@broken.test");
    assert_eq!(s, RecipientState::Deferred);
    assert!(text.unwrap().contains("try again later"));
}

#[tokio::test]
async fn a_corrupt_body_fails_its_message_and_the_session_carries_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let server = FlakyServer::start(FlakyConfig::default()).await.unwrap();
    let zone = Zone::new()
        .mx("k.test", 10, "mx.k.test")
        .a("mx.k.test", "127.0.0.1".parse().unwrap());
    let dns = DnsServer::start(zone).await.unwrap();
    let store = store_with(
        dir.path(),
        (0..3)
            .map(|n| message(&[&format!("r{n}@k.test")], n))
            .collect(),
    )
    .await;
    let ids: Vec<_> = store
        .list(&smtp_queue::ListFilter::default())
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.id)
        .collect();
    {
        use sqlx::Connection;
        let url = format!("sqlite://{}", dir.path().join("queue.db").display());
        let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
        sqlx::query("UPDATE message_bodies SET data = $1 WHERE message_id = $2")
            .bind(&b"Subject: 1\r\n\r\ntampered\r\n"[..])
            .bind(ids[1].as_str())
            .execute(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
    }
    let runner = direct_runner(store.clone(), &dns, server.addr().port());
    runner.run_due(&Stop::new()).await.unwrap();
    let bad = store.show(&ids[1]).await.unwrap();
    assert_eq!(bad.recipients[0].state, RecipientState::Failed);
    assert!(
        bad.recipients[0]
            .last
            .as_ref()
            .is_some_and(|a| a.text.contains("does not match")),
        "{bad:?}"
    );
    for id in [&ids[0], &ids[2]] {
        let ok = store.show(id).await.unwrap();
        assert_eq!(ok.recipients[0].state, RecipientState::Delivered, "{ok:?}");
    }
    assert_eq!(server.connections(), 1);
}

#[tokio::test]
async fn a_stop_names_in_flight_only_the_message_whose_data_went_out() {
    let dir = tempfile::tempdir().unwrap();
    // The first message's data arrives whole; its reply waits 3 s, and the
    // next message meets a server that reads nothing meanwhile.
    let slow = FlakyServer::start(FlakyConfig {
        data_delay: Some(Duration::from_secs(3)),
        ..FlakyConfig::default()
    })
    .await
    .unwrap();
    let zone = Zone::new()
        .mx("a.test", 10, "mx.a.test")
        .a("mx.a.test", "127.0.0.1".parse().unwrap());
    let dns = DnsServer::start(zone).await.unwrap();
    let store = store_with(
        dir.path(),
        (0..3)
            .map(|i| message(&[&format!("r{i}@a.test")], i))
            .collect(),
    )
    .await;
    let (runner, events) = observed(direct_runner_with(
        store.clone(),
        &dns,
        slow.addr().port(),
        RunnerConfig::default()
            .with_schedule(fast())
            .with_concurrency(1)
            .with_stop_grace(Duration::from_millis(200)),
    ));
    let stop = Stop::new();
    let stopper = async {
        while slow.data_ends() == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stop.stop();
    };
    let (run, ()) = tokio::time::timeout(
        Duration::from_secs(10),
        futures_util::future::join(runner.run_due(&stop), stopper),
    )
    .await
    .expect("a stop ends the run");
    run.unwrap();
    let events = events.lock().unwrap().clone();
    let named: Vec<Vec<String>> = events
        .iter()
        .filter_map(|e| match e {
            RunEvent::InFlight { recipients, .. } => Some(recipients.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(named.len(), 1, "{events:?}");
    assert_eq!(named[0].len(), 1, "{events:?}");
    let stats = store.stats().await.unwrap();
    assert_eq!(stats.count(RecipientState::Delivering), 0, "{stats:?}");
    assert_eq!(stats.count(RecipientState::Queued), 3, "{stats:?}");
    // The server keeps the message it was sent once its delay is over:
    // the one named in flight, and only it.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while slow.messages().is_empty() {
        assert!(std::time::Instant::now() < deadline, "never kept");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let kept: Vec<String> = slow.deliveries().into_keys().collect();
    assert_eq!(kept, named[0]);
}
