//! Destinations' connection slots kept in the store (`Store::take_slot`):
//! a destination's connection limit holds across handles (workers, in
//! any process), a dead worker's slots free themselves when their lease
//! runs out, and a stale holder never touches the slot taken after it.
//! On SQLite and PostgreSQL alike (`both!`), and end to end: two runners
//! on one queue delivering to one MX host shaped to 2 connections.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use smtp_core::TlsPolicy;
use smtp_core::delivery::MemoryBody;
use smtp_queue::shaping::{Adaptive, Pattern, Rule};
use smtp_queue::{
    Body, MessageOptions, NewMessage, RecipientState, Runner, RunnerConfig, Shaping, Stop, Store,
};
use smtp_testkit::dns::{DnsServer, Zone};
use smtp_testkit::flaky::{FlakyConfig, FlakyServer};

mod common;
use common::backend::Backend;
use common::fast;

const DEST: &str = "mx:mx.bulk.test";

fn t(ms: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(1_800_000_000_000 + ms)
}

/// Nine takers on three handles (three workers' pools), a limit of 3,
/// many rounds of take, hold, release: never more than 3 held at once,
/// counted by the takers themselves and by the store.
async fn concurrent_takers_never_hold_more_than_the_limit(b: Backend) {
    const LIMIT: u32 = 3;
    const ROUNDS: usize = 40;
    let mut handles = Vec::new();
    for _ in 0..3 {
        handles.push(b.open().await);
    }
    let held = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let granted = Arc::new(AtomicUsize::new(0));
    let refused = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for k in 0..9 {
        let store = handles[k % 3].clone();
        let (held, most, granted, refused) =
            (held.clone(), most.clone(), granted.clone(), refused.clone());
        tasks.push(tokio::spawn(async move {
            let worker = format!("w{k}");
            for _ in 0..ROUNDS {
                let now = SystemTime::now();
                let until = now + Duration::from_secs(60);
                let Some(slot) = store
                    .take_slot(DEST, LIMIT, &worker, until, now)
                    .await
                    .unwrap()
                else {
                    refused.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                };
                granted.fetch_add(1, Ordering::SeqCst);
                // Counted after the grant, uncounted before the release:
                // never more than the store holds.
                let n = held.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(n, Ordering::SeqCst);
                let in_store = store.slots(Some(DEST), SystemTime::now()).await.unwrap();
                assert!(in_store.len() <= LIMIT as usize, "{in_store:?}");
                assert!(in_store.contains(&slot), "{in_store:?}");
                tokio::time::sleep(Duration::from_millis(3)).await;
                held.fetch_sub(1, Ordering::SeqCst);
                assert!(store.release_slot(&slot).await.unwrap());
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let most = most.load(Ordering::SeqCst);
    let (granted, refused) = (
        granted.load(Ordering::SeqCst),
        refused.load(Ordering::SeqCst),
    );
    eprintln!("{granted} granted, {refused} refused, at most {most} held at once");
    assert!(most <= LIMIT as usize, "{most} held at once");
    // The limit was met, and takers were refused at it: the test raced.
    assert_eq!(most, LIMIT as usize);
    assert!(refused > 0);
    assert_eq!(granted + refused, 9 * ROUNDS);
    assert!(
        handles[0]
            .slots(None, SystemTime::now())
            .await
            .unwrap()
            .is_empty()
    );
}

/// A worker that died holds its slot until the lease runs out; then the
/// slot is free, and the dead worker's renewal or release (a worker
/// restarted under the same id, a process that was only paused) is
/// refused without touching the slot taken after it.
async fn an_expired_slot_is_free_and_its_stale_holder_cannot_touch_the_new_one(b: Backend) {
    let store = b.open().await;
    let other = b.open().await;
    let old = store
        .take_slot(DEST, 1, "w1", t(10_000), t(0))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (old.destination.as_str(), old.worker.as_str()),
        (DEST, "w1")
    );
    assert_eq!(old.until, t(10_000));
    // Held until it expires, through any handle, whoever asks.
    for (who, at) in [("w2", 5_000), ("w1", 9_999)] {
        assert_eq!(
            other
                .take_slot(DEST, 1, who, t(20_000), t(at))
                .await
                .unwrap(),
            None,
            "{who} at {at}"
        );
    }
    // Another destination is counted apart.
    let elsewhere = other
        .take_slot("mx:other.test", 1, "w2", t(20_000), t(5_000))
        .await
        .unwrap();
    assert!(elsewhere.is_some());
    // Expired: free to take, by the same worker id too (restarted).
    let new = other
        .take_slot(DEST, 1, "w1", t(20_000), t(10_000))
        .await
        .unwrap()
        .unwrap();
    assert!(new.generation > old.generation, "{old:?} {new:?}");
    assert_eq!(
        store.slots(Some(DEST), t(10_000)).await.unwrap(),
        std::slice::from_ref(&new)
    );
    // The stale holder's renewal and release are refused and change
    // nothing: the new slot still counts and still expires when it did.
    assert_eq!(store.renew_slot(&old, t(60_000)).await.unwrap(), None);
    assert!(!store.release_slot(&old).await.unwrap());
    assert_eq!(
        store.slots(Some(DEST), t(10_000)).await.unwrap(),
        std::slice::from_ref(&new)
    );
    assert_eq!(
        store
            .take_slot(DEST, 1, "w3", t(30_000), t(15_000))
            .await
            .unwrap(),
        None
    );
    assert!(store.slots(Some(DEST), t(20_000)).await.unwrap().is_empty());
    // Its holder's own renewal does extend it; its release frees it.
    let renewed = store.renew_slot(&new, t(40_000)).await.unwrap().unwrap();
    assert_eq!(renewed.until, t(40_000));
    assert_eq!(renewed.generation, new.generation);
    assert_eq!(
        store
            .take_slot(DEST, 1, "w3", t(60_000), t(30_000))
            .await
            .unwrap(),
        None
    );
    assert!(store.release_slot(&renewed).await.unwrap());
    assert!(!store.release_slot(&renewed).await.unwrap());
    let third = store
        .take_slot(DEST, 1, "w3", t(60_000), t(30_000))
        .await
        .unwrap()
        .unwrap();
    assert!(third.generation > new.generation);
}

/// A limit of 2 is 2 whoever holds them; a slot renewed before its
/// expiry keeps counting; one expired but not yet removed (no take came
/// since) is renewed, since it was never counted free.
async fn renewal_keeps_a_slot_counted_past_its_first_lease(b: Backend) {
    let store = b.open().await;
    let a = store
        .take_slot(DEST, 2, "w1", t(10_000), t(0))
        .await
        .unwrap()
        .unwrap();
    let b2 = store
        .take_slot(DEST, 2, "w2", t(10_000), t(0))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        store
            .take_slot(DEST, 2, "w3", t(10_000), t(1))
            .await
            .unwrap(),
        None
    );
    // A lower limit (a throttled destination) counts the same slots.
    assert_eq!(
        store
            .take_slot(DEST, 1, "w3", t(10_000), t(1))
            .await
            .unwrap(),
        None
    );
    let a = store.renew_slot(&a, t(30_000)).await.unwrap().unwrap();
    // b2 expired; a renewed still counts: one free, not two.
    let c = store
        .take_slot(DEST, 2, "w3", t(40_000), t(15_000))
        .await
        .unwrap();
    assert!(c.is_some());
    assert_eq!(
        store
            .take_slot(DEST, 2, "w4", t(40_000), t(15_000))
            .await
            .unwrap(),
        None
    );
    assert_eq!(store.renew_slot(&b2, t(50_000)).await.unwrap(), None);
    // Expired at 30 s, no take since: its renewal holds.
    let late = store.renew_slot(&a, t(60_000)).await.unwrap();
    assert_eq!(late.map(|s| s.until), Some(t(60_000)));
    assert_eq!(store.slots(Some(DEST), t(35_000)).await.unwrap().len(), 2);
}

both!(
    concurrent_takers_never_hold_more_than_the_limit,
    an_expired_slot_is_free_and_its_stale_holder_cannot_touch_the_new_one,
    renewal_keeps_a_slot_counted_past_its_first_lease,
);

// ---- End to end: two runners, one destination shaped to 2 connections.

const MX: &str = "mx.bulk.test";

fn runner(store: Arc<dyn Store>, dns: &DnsServer, port: u16, worker: &str) -> Runner {
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
    let shaping = Shaping::builtin()
        .with_rule(
            Pattern::parse(MX).unwrap(),
            Rule {
                connections: Some(2),
                messages_per_connection: Some(3),
                rate: None,
            },
        )
        .with_adaptive(Adaptive::default());
    let config = RunnerConfig::default()
        .with_worker(worker)
        .with_schedule(fast())
        .with_concurrency(8)
        .with_claim(12)
        .with_shaping(shaping);
    Runner::direct(
        store,
        Arc::new(resolver),
        Arc::new(connector),
        options,
        config,
    )
}

/// Runs rounds until `n` recipients are delivered, or `limit` passes.
async fn deliver_all(runner: &Runner, store: &dyn Store, n: u64, limit: Duration) {
    let stop = Stop::new();
    let start = Instant::now();
    while start.elapsed() < limit {
        runner.run_due(&stop).await.unwrap();
        let delivered = store
            .stats()
            .await
            .unwrap()
            .count(RecipientState::Delivered);
        if delivered >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Each runner alone would open 2 sessions at once (its shape); on one
/// queue the 2 are the whole fleet's: the server never sees more, and
/// every message arrives once.
async fn two_runners_on_one_queue_never_open_more_than_the_shape_between_them(b: Backend) {
    const N: usize = 36;
    // Sessions linger (each end of data answered after 40 ms): two
    // runners counting only their own sessions would overlap 4.
    let server = FlakyServer::start(FlakyConfig {
        data_delay: Some(Duration::from_millis(40)),
        ..FlakyConfig::default()
    })
    .await
    .unwrap();
    let zone = Zone::new()
        .mx("bulk.test", 10, MX)
        .a(MX, "127.0.0.1".parse().unwrap());
    let dns = DnsServer::start(zone).await.unwrap();
    let store = b.open().await;
    let batch = (0..N)
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
    let port = server.addr().port();
    let (s1, s2) = (b.open().await, b.open().await);
    let r1 = runner(s1.clone(), &dns, port, "w1");
    let r2 = runner(s2.clone(), &dns, port, "w2");
    let limit = Duration::from_secs(90);
    tokio::join!(
        deliver_all(&r1, s1.as_ref(), N as u64, limit),
        deliver_all(&r2, s2.as_ref(), N as u64, limit),
    );

    let stats = store.stats().await.unwrap();
    assert_eq!(
        stats.count(RecipientState::Delivered),
        N as u64,
        "{stats:?}"
    );
    let deliveries = server.deliveries();
    assert_eq!(deliveries.len(), N);
    assert!(deliveries.values().all(|n| *n == 1), "{deliveries:?}");
    let (one, two) = (r1.summary().delivered, r2.summary().delivered);
    eprintln!(
        "w1 delivered {one}, w2 {two}; {} sessions, at most {} at once",
        server.connections(),
        server.max_open()
    );
    assert_eq!(one + two, N as u64);
    assert!(
        server.max_open() <= 2,
        "{} sessions at once",
        server.max_open()
    );
    assert!(
        server.max_per_session() <= 3,
        "{}",
        server.max_per_session()
    );
    // Every slot given back.
    assert!(
        store
            .slots(None, SystemTime::now())
            .await
            .unwrap()
            .is_empty()
    );
}

/// A worker killed mid-session (its slots never given back) holds the
/// destination's 2 slots until their lease runs out: no runner connects
/// before then, and one delivers everything after.
async fn a_dead_workers_slots_hold_until_their_lease_then_free_themselves(b: Backend) {
    const N: usize = 6;
    let server = FlakyServer::start(FlakyConfig::default()).await.unwrap();
    let zone = Zone::new()
        .mx("bulk.test", 10, MX)
        .a(MX, "127.0.0.1".parse().unwrap());
    let dns = DnsServer::start(zone).await.unwrap();
    let store = b.open().await;
    let batch = (0..N)
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
    // The dead worker's slots: both of the shape's, 3 s left on them.
    let lease = Duration::from_secs(3);
    let now = SystemTime::now();
    let mut dead = Vec::new();
    for _ in 0..2 {
        let slot = store
            .take_slot(DEST, 2, "dead", now + lease, now)
            .await
            .unwrap();
        dead.push(slot.unwrap());
    }
    let start = Instant::now();
    let live = b.open().await;
    let r = runner(live.clone(), &dns, server.addr().port(), "live");
    let before_expiry = async {
        tokio::time::sleep(lease - Duration::from_millis(300)).await;
        server.connections()
    };
    let ((), connections_before) = tokio::join!(
        deliver_all(&r, live.as_ref(), N as u64, Duration::from_secs(60)),
        before_expiry
    );
    assert_eq!(connections_before, 0, "a session opened on a held slot");
    assert!(start.elapsed() >= lease, "{:?}", start.elapsed());
    let deliveries = server.deliveries();
    assert_eq!(deliveries.len(), N);
    assert!(deliveries.values().all(|n| *n == 1), "{deliveries:?}");
    // Removed by the live worker's take: the dead one's renewal is refused.
    for slot in &dead {
        assert_eq!(
            store
                .renew_slot(slot, SystemTime::now() + lease)
                .await
                .unwrap(),
            None
        );
    }
    assert!(
        store
            .slots(None, SystemTime::now())
            .await
            .unwrap()
            .is_empty()
    );
}

both!(
    two_runners_on_one_queue_never_open_more_than_the_shape_between_them,
    a_dead_workers_slots_hold_until_their_lease_then_free_themselves,
);
