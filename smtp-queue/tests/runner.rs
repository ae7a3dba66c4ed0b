//! The runner against real sockets on 127.0.0.1 (smtp-testkit's flaky
//! server) with the SQLite store in a temporary directory.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use smtp_core::TlsPolicy;
use smtp_core::delivery::MemoryBody;
use smtp_core::sasl::{AuthChoice, Credentials, Mechanism, Secret};
use smtp_queue::{
    Body, MessageOptions, NewMessage, RecipientState, RunEvent, Runner, RunnerConfig, SqliteStore,
    Stop, Store,
};
use smtp_testkit::flaky::{FlakyConfig, FlakyServer};
use smtp_tls::Server;

mod common;
use common::fast;

async fn queue(n: usize, dir: &std::path::Path) -> Arc<SqliteStore> {
    let store = Arc::new(SqliteStore::open(dir).await.unwrap());
    let batch = (0..n)
        .map(|i| NewMessage {
            from: "sender@example.com".into(),
            to: vec![format!("r{i}@example.net")],
            body: Body::Source(Box::new(MemoryBody::new(format!(
                "Subject: {i}\r\n\r\nmessage {i}\r\n"
            )))),
            options: MessageOptions::default(),
        })
        .collect();
    store.enqueue(batch, SystemTime::now()).await.unwrap();
    store
}

fn relay(server: &FlakyServer) -> Server {
    Server::new("127.0.0.1", server.addr().port()).with_policy(TlsPolicy::None)
}

/// Runs until nothing waits, or `limit` passes.
async fn run_until_final(runner: &Runner, store: &SqliteStore, limit: Duration) {
    let stop = Stop::new();
    let start = std::time::Instant::now();
    loop {
        runner.run_due(&stop).await.unwrap();
        if store.next_due().await.unwrap().is_none() || start.elapsed() > limit {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn greylisted_recipients_are_delivered_on_a_later_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let server = FlakyServer::start(FlakyConfig {
        greylist: Some(Duration::from_millis(300)),
        ..FlakyConfig::default()
    })
    .await
    .unwrap();
    let store = queue(3, dir.path()).await;
    let runner = Runner::new(
        store.clone(),
        relay(&server),
        RunnerConfig::default().with_schedule(fast()),
    );
    run_until_final(&runner, &store, Duration::from_secs(20)).await;
    let stats = store.stats().await.unwrap();
    assert_eq!(stats.count(RecipientState::Delivered), 3, "{stats:?}");
    assert_eq!(runner.summary().deferred, 3);
    assert!(server.deliveries().values().all(|n| *n == 1));
}

#[tokio::test]
async fn a_421_after_three_messages_is_ridden_out_by_reconnecting() {
    let dir = tempfile::tempdir().unwrap();
    let server = FlakyServer::start(FlakyConfig {
        max_per_connection: Some(3),
        ..FlakyConfig::default()
    })
    .await
    .unwrap();
    let store = queue(8, dir.path()).await;
    let runner = Runner::new(
        store.clone(),
        relay(&server),
        RunnerConfig::default()
            .with_schedule(fast())
            .with_concurrency(1),
    );
    run_until_final(&runner, &store, Duration::from_secs(20)).await;
    let stats = store.stats().await.unwrap();
    assert_eq!(stats.count(RecipientState::Delivered), 8, "{stats:?}");
    assert_eq!(server.messages().len(), 8);
    assert!(server.connections() >= 3);
    // Not held back as a failure: the rest went on a new connection at once.
    assert_eq!(runner.summary().deferred, 0);
}

#[tokio::test]
async fn messages_per_connection_are_capped() {
    let dir = tempfile::tempdir().unwrap();
    let server = FlakyServer::start(FlakyConfig::default()).await.unwrap();
    let store = queue(5, dir.path()).await;
    let runner = Runner::new(
        store.clone(),
        relay(&server),
        RunnerConfig::default()
            .with_per_connection(2)
            .with_concurrency(1),
    );
    runner.run_due(&Stop::new()).await.unwrap();
    assert_eq!(server.messages().len(), 5);
    assert_eq!(server.connections(), 3);
}

#[tokio::test]
async fn refused_authentication_holds_the_destination_once_and_keeps_recipients_queued() {
    let dir = tempfile::tempdir().unwrap();
    let server = FlakyServer::start(FlakyConfig {
        refuse_auth: true,
        ..FlakyConfig::default()
    })
    .await
    .unwrap();
    let store = queue(6, dir.path()).await;
    let held = Arc::new(Mutex::new(Vec::new()));
    let seen = held.clone();
    // PLAIN named: sent without TLS to this test relay, which refuses it.
    let runner = Runner::new(
        store.clone(),
        relay(&server)
            .with_auth(AuthChoice::Explicit(Mechanism::Plain))
            .with_credentials(Credentials::Password {
                username: "u".into(),
                password: Secret::new("wrong".to_owned()),
            }),
        RunnerConfig::default()
            .with_per_connection(1)
            .with_concurrency(4),
    )
    .with_observer(move |e| {
        if let RunEvent::Held { reason, .. } = e {
            seen.lock().unwrap().push(reason.clone());
        }
    });
    runner.run_due(&Stop::new()).await.unwrap();
    runner.run_due(&Stop::new()).await.unwrap();
    assert_eq!(held.lock().unwrap().len(), 1, "{:?}", held.lock().unwrap());
    let stats = store.stats().await.unwrap();
    assert_eq!(stats.count(RecipientState::Queued), 6, "{stats:?}");
    assert_eq!(stats.count(RecipientState::Failed), 0);
    let info = store
        .show(&store.list(&Default::default()).await.unwrap()[0].id)
        .await
        .unwrap();
    assert_eq!(info.recipients[0].attempts, 0, "not counted as an attempt");
    assert!(store.backoff(runner.destination()).await.unwrap().is_some());
    assert!(server.messages().is_empty());
    // One session met the fault; the others were not opened to meet it
    // again (a relay refusing a password would count every try).
    assert_eq!(server.connections(), 1);
    assert_eq!(server.auth_attempts(), 1);
}

#[tokio::test]
async fn the_other_sessions_open_once_the_first_is_set_up_not_once_its_batch_is_sent() {
    let dir = tempfile::tempdir().unwrap();
    // A slow relay: the first message's end-of-data reply waits until a
    // second connection comes (or 30 s, for a runner that never opens
    // one while the first delivers).
    let server = FlakyServer::start(FlakyConfig {
        hold_data_until_connections: Some((2, Duration::from_secs(30))),
        ..FlakyConfig::default()
    })
    .await
    .unwrap();
    let store = queue(4, dir.path()).await;
    let runner = Runner::new(
        store.clone(),
        relay(&server),
        RunnerConfig::default()
            .with_per_connection(1)
            .with_concurrency(2),
    );
    runner.run_due(&Stop::new()).await.unwrap();
    assert_eq!(server.messages().len(), 4);
    let open = server.open_at_data_ends();
    // The first reply went out with a second session open beside the
    // first: it opened once the first was set up, while it delivered.
    assert_eq!(open.first(), Some(&2), "{open:?}");
    let stats = store.stats().await.unwrap();
    assert_eq!(stats.count(RecipientState::Delivered), 4, "{stats:?}");
}

#[tokio::test]
async fn an_unreachable_relay_backs_off_and_defers() {
    let dir = tempfile::tempdir().unwrap();
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let store = queue(2, dir.path()).await;
    let runner = Runner::new(
        store.clone(),
        Server::new("127.0.0.1", port).with_policy(TlsPolicy::None),
        RunnerConfig::default(),
    );
    runner.run_due(&Stop::new()).await.unwrap();
    // The first session found the relay down: that message is deferred,
    // the relay backed off, and the other message waits for the back-off
    // without a connection attempt of its own.
    let stats = store.stats().await.unwrap();
    assert_eq!(stats.count(RecipientState::Deferred), 1, "{stats:?}");
    assert_eq!(stats.count(RecipientState::Queued), 1, "{stats:?}");
    let backoff = store.backoff(runner.destination()).await.unwrap().unwrap();
    let waiting = store.list(&Default::default()).await.unwrap();
    let queued = waiting
        .iter()
        .flat_map(|m| &m.recipients)
        .find(|r| r.state == RecipientState::Queued)
        .unwrap();
    assert_eq!(queued.next_attempt, backoff.not_before);
}

#[tokio::test]
async fn a_stop_releases_what_was_claimed_and_a_later_run_delivers_each_once() {
    let dir = tempfile::tempdir().unwrap();
    let stalling = FlakyServer::start(FlakyConfig {
        stall_after: Some(2),
        ..FlakyConfig::default()
    })
    .await
    .unwrap();
    let store = queue(6, dir.path()).await;
    let stop = Stop::new();
    let runner = Runner::new(
        store.clone(),
        relay(&stalling),
        RunnerConfig::default()
            .with_per_connection(1)
            .with_concurrency(1)
            .with_stop_grace(Duration::from_millis(200)),
    );
    let stopper = stop.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        stopper.stop();
    });
    // The stalled session is abandoned after the grace; what it had not
    // settled is released, due at once.
    tokio::time::timeout(Duration::from_secs(10), runner.run_due(&stop))
        .await
        .expect("a stop ends the run")
        .unwrap();
    assert_eq!(
        store
            .stats()
            .await
            .unwrap()
            .count(RecipientState::Delivering),
        0
    );
    let good = FlakyServer::start(FlakyConfig::default()).await.unwrap();
    let later = Runner::new(store.clone(), relay(&good), RunnerConfig::default());
    run_until_final(&later, &store, Duration::from_secs(10)).await;
    let mut all = stalling.deliveries();
    for (r, n) in good.deliveries() {
        *all.entry(r).or_insert(0) += n;
    }
    assert_eq!(all.len(), 6, "{all:?}");
    assert!(all.values().all(|n| *n == 1), "{all:?}");
}

#[tokio::test]
async fn recipients_deferred_together_are_retried_together_in_one_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let server = FlakyServer::start(FlakyConfig {
        greylist: Some(Duration::from_millis(200)),
        ..FlakyConfig::default()
    })
    .await
    .unwrap();
    let store = Arc::new(SqliteStore::open(dir.path()).await.unwrap());
    let batch = (0..10)
        .map(|i| NewMessage {
            from: "sender@example.com".into(),
            to: vec![format!("a{i}@example.net"), format!("b{i}@example.net")],
            body: Body::Source(Box::new(MemoryBody::new(format!(
                "Subject: {i}\r\n\r\nx\r\n"
            )))),
            options: MessageOptions::default(),
        })
        .collect();
    store.enqueue(batch, SystemTime::now()).await.unwrap();
    // Retries spread by ±50 %: messages spread out, a message's
    // recipients must not.
    let schedule = smtp_queue::Schedule {
        jitter: 0.5,
        ..fast()
    };
    let runner = Runner::new(
        store.clone(),
        relay(&server),
        RunnerConfig::default().with_schedule(schedule),
    );
    run_until_final(&runner, &store, Duration::from_secs(20)).await;
    let msgs = server.messages();
    assert_eq!(msgs.len(), 10, "{msgs:?}");
    assert!(msgs.iter().all(|m| m.rcpt_to.len() == 2), "{msgs:?}");
}

#[tokio::test]
async fn a_password_a_server_echoes_is_never_stored_or_logged() {
    use smtp_testkit::script::{Script, ScriptedServer};
    let dir = tempfile::tempdir().unwrap();
    // AUTH PLAIN of "u" / "S3cr3t-Pw" is AHUAUzNjcjN0LVB3; the server
    // quotes it, and the password, back in its refusal of the recipient.
    let script = Script::parse(
        "S: 220 echo.test ESMTP
C: EHLO *
S: 250-echo.test
S: 250 AUTH PLAIN
C: AUTH PLAIN AHUAUzNjcjN0LVB3
S: 235 ok
C: MAIL FROM:<sender@example.com>
S: 250 ok
C: RCPT TO:<r0@example.net>
S: 451 4.7.1 you sent AHUAUzNjcjN0LVB3, that is S3cr3t-Pw
C: *
S: 221 bye
CLOSE
",
    )
    .unwrap();
    let server = ScriptedServer::start(script, None).await.unwrap();
    let store = queue(1, dir.path()).await;
    let relay = Server::new("127.0.0.1", server.addr().port())
        .with_policy(TlsPolicy::None)
        .with_auth(AuthChoice::Explicit(Mechanism::Plain))
        .with_credentials(Credentials::Password {
            username: "u".into(),
            password: Secret::new("S3cr3t-Pw".to_owned()),
        });
    let runner = Runner::new(store.clone(), relay, RunnerConfig::default());
    runner.run_due(&Stop::new()).await.unwrap();
    let m = &store.list(&Default::default()).await.unwrap()[0];
    let last = m.recipients[0].last.clone().unwrap();
    assert_eq!(last.code, Some(451));
    assert!(
        last.text
            .contains("you sent <redacted>, that is <redacted>"),
        "{}",
        last.text
    );
    let log = std::fs::read_to_string(dir.path().join("outcomes.jsonl")).unwrap();
    assert!(
        !log.contains("S3cr3t-Pw") && !log.contains("AHUAUzNjcjN0LVB3"),
        "{log}"
    );
    let db = std::fs::read(dir.path().join("queue.db-wal")).unwrap_or_default();
    let db = String::from_utf8_lossy(&db);
    assert!(!db.contains("S3cr3t-Pw"), "the database holds the password");
}

/// The recipients of each [`RunEvent::InFlight`] in `events`.
fn in_flight(events: &[RunEvent]) -> Vec<Vec<String>> {
    events
        .iter()
        .filter_map(|e| match e {
            RunEvent::InFlight { recipients, .. } => Some(recipients.clone()),
            _ => None,
        })
        .collect()
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
    let store = queue(3, dir.path()).await;
    let events: Arc<Mutex<Vec<RunEvent>>> = Arc::default();
    let seen = events.clone();
    let runner = Runner::new(
        store.clone(),
        relay(&slow),
        RunnerConfig::default()
            .with_concurrency(1)
            .with_stop_grace(Duration::from_millis(200)),
    )
    .with_observer(move |e| seen.lock().unwrap().push(e.clone()));
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
    let named = in_flight(&events);
    assert_eq!(named.len(), 1, "{events:?}");
    assert_eq!(named[0].len(), 1, "{events:?}");
    let released: u64 = events
        .iter()
        .filter_map(|e| match e {
            RunEvent::Released { recipients, .. } => Some(*recipients),
            _ => None,
        })
        .sum();
    assert_eq!(released, 3, "all three go back to the queue: {events:?}");
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

/// A worker whose leases another took over (it stalled past them: a
/// pause, a partition) stops its session at its next renewal instead of
/// sending the other worker's messages a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_whose_leases_were_taken_over_stops_sending() {
    let dir = tempfile::tempdir().unwrap();
    let slow = FlakyServer::start(FlakyConfig {
        data_delay: Some(Duration::from_millis(300)),
        ..FlakyConfig::default()
    })
    .await
    .unwrap();
    let store = queue(12, dir.path()).await;
    let runner = Runner::new(
        store.clone(),
        relay(&slow),
        RunnerConfig::default()
            .with_concurrency(1)
            .with_lease(Duration::from_millis(1500))
            .with_worker("stalled"),
    );
    let stop = Stop::new();
    let taken = async {
        while slow.data_ends() < 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Another worker, whose clock says the leases ran out: it takes
        // every recipient the first one holds.
        let later = SystemTime::now() + Duration::from_secs(10);
        let claimed = store
            .claim_due(later, 100, "other", Duration::from_secs(60))
            .await
            .unwrap();
        (slow.data_ends(), claimed.len())
    };
    let (run, (sent_before, taken_over)) = tokio::time::timeout(
        Duration::from_secs(20),
        futures_util::future::join(runner.run_due(&stop), taken),
    )
    .await
    .expect("the run ends");
    run.unwrap();
    assert!(taken_over >= 8, "{taken_over}");
    // At most the messages under way when the takeover was noticed (a
    // renewal comes every third of the lease: 0.5 s, about two messages).
    let sent = slow.data_ends();
    assert!(
        sent <= sent_before + 3,
        "sent {sent} of 12 after the takeover at {sent_before}"
    );
}
