//! Relay rate limits: the store-kept budgets (shared by handles, kept
//! across a reopen, remembered limits; on SQLite and PostgreSQL alike) and the rated runner against a
//! capture server on 127.0.0.1.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use smtp_core::TlsPolicy;
use smtp_core::delivery::MemoryBody;
use smtp_queue::rate::{Decision, Limit};
use smtp_queue::{
    Body, ListFilter, MessageOptions, NewMessage, RecipientState, RunEvent, Runner, RunnerConfig,
    SqliteStore, Stop, Store,
};
use smtp_testkit::capture::{CaptureConfig, CaptureServer};
use smtp_tls::Server;

mod common;
use common::backend::Backend;

fn limit(text: &str, burst: u32) -> Limit {
    Limit::new(text.parse().unwrap()).with_burst(burst)
}

async fn enqueue(store: &SqliteStore, n: usize) {
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
}

async fn the_same_cap_written_another_way_gets_no_fresh_budget(b: Backend) {
    let store = b.open().await;
    let now = SystemTime::now();
    let soon = now + Duration::from_secs(1);
    let minute = [limit("1/minute", 1)];
    assert_eq!(
        store.take_budget("k", &minute, 1, now).await.unwrap(),
        Decision::Allowed
    );
    assert!(matches!(
        store.take_budget("k", &minute, 1, soon).await.unwrap(),
        Decision::WaitUntil(_)
    ));
    // 60/hour and 1440/day are the same cap: the minute's spent unit
    // carries over, so neither lets a second message go within the minute.
    for other in ["60/hour", "1440/day", "2/minute"] {
        let d = store
            .take_budget("k", &[limit(other, 1)], 1, soon)
            .await
            .unwrap();
        assert!(matches!(d, Decision::WaitUntil(_)), "{other}: {d:?}");
    }
    // A budget whole again (a minute on) starts a new limit whole.
    let later = now + Duration::from_secs(61);
    let d = store
        .take_budget("k", &[limit("60/hour", 1)], 1, later)
        .await
        .unwrap();
    assert_eq!(d, Decision::Allowed);
}

/// `30/minute` and `500/day`: the minute paces (one every 2 s), the day
/// caps exactly from the store's log of takes, kept across a reopen.
#[tokio::test]
async fn thirty_a_minute_and_500_a_day_send_500_at_2_s_then_wait_for_the_day() {
    let dir = tempfile::tempdir().unwrap();
    let limits = [limit("30/minute", 1), limit("500/day", 1)];
    let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let at = |ms: i64| start + Duration::from_millis(ms as u64);
    {
        let store = SqliteStore::open(dir.path()).await.unwrap();
        for i in 0..500 {
            let d = store
                .take_budget("k", &limits, 1, at(i * 2000))
                .await
                .unwrap();
            assert_eq!(d, Decision::Allowed, "{i}");
            if i == 0 {
                // Not before the pace's 2 s.
                let d = store.take_budget("k", &limits, 1, at(1999)).await.unwrap();
                assert!(matches!(d, Decision::WaitUntil(_)), "{d:?}");
            }
        }
        store.close().await;
    }
    let store = SqliteStore::open(dir.path()).await.unwrap();
    let start_ms = start
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    // The 501st waits until the first leaves the day's window.
    let d = store
        .take_budget("k", &limits, 1, at(1_000_000))
        .await
        .unwrap();
    assert_eq!(d, Decision::WaitUntil(start_ms + 86_400_000));
    let budget = store.budget("k").await.unwrap().unwrap();
    assert_eq!(
        budget.cap_usage(&limits, start_ms + 1_000_000),
        vec![(limits[1], 500)]
    );
    assert_eq!(
        budget.next_free_ms(&limits, start_ms + 1_000_000),
        start_ms + 86_400_000
    );
    // 30/minute dropped: 500/day paces and counts the day's log.
    let d = store
        .take_budget("k", &limits[1..], 1, at(1_000_000))
        .await
        .unwrap();
    assert_eq!(d, Decision::WaitUntil(start_ms + 86_400_000));
    // A day on, the first has left: one more goes, not two at once.
    let d = store
        .take_budget("k", &limits, 1, at(86_400_000))
        .await
        .unwrap();
    assert_eq!(d, Decision::Allowed);
    let d = store
        .take_budget("k", &limits, 1, at(86_401_000))
        .await
        .unwrap();
    assert_eq!(d, Decision::WaitUntil(start_ms + 86_402_000));
}

async fn takes_from_two_handles_at_once_never_exceed_the_budget(backend: Backend) {
    let a = backend.open().await;
    let b = backend.open().await;
    // 10 at once, then one every 6 minutes: 40 takes at one instant from
    // two handles get exactly 10.
    let limits = vec![limit("10/hour", 10)];
    let now = SystemTime::now();
    let mut tasks = Vec::new();
    for i in 0..40 {
        let store = if i % 2 == 0 { a.clone() } else { b.clone() };
        let limits = limits.clone();
        tasks.push(tokio::spawn(async move {
            store
                .take_budget("relay:h:587:alice", &limits, 1, now)
                .await
                .unwrap()
        }));
    }
    let mut allowed = 0;
    for t in tasks {
        if t.await.unwrap() == Decision::Allowed {
            allowed += 1;
        }
    }
    assert_eq!(allowed, 10);
    // Another key is another budget.
    assert_eq!(
        a.take_budget("relay:h:587:bob", &limits, 1, now)
            .await
            .unwrap(),
        Decision::Allowed
    );
}

async fn a_reopened_store_keeps_the_budget_spent(b: Backend) {
    let limits = [limit("60/minute", 1)];
    let now = SystemTime::now();
    {
        let store = b.open().await;
        let d = store.take_budget("k", &limits, 1, now).await.unwrap();
        assert_eq!(d, Decision::Allowed);
    }
    let store = b.open().await;
    let d = store.take_budget("k", &limits, 1, now).await.unwrap();
    assert!(matches!(d, Decision::WaitUntil(_)), "{d:?}");
    let budget = store.budget("k").await.unwrap().unwrap();
    let now_ms = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    assert_eq!(budget.next_free_ms(&limits, now_ms), now_ms + 1000);
}

async fn the_limits_last_set_for_a_key_are_remembered_until_cleared(b: Backend) {
    let store = b.open().await;
    let now = SystemTime::now();
    let limits = vec![limit("30/minute", 1), limit("500/day", 5)];
    assert!(store.budget("k").await.unwrap().is_none());
    store.remember_limits("k", &limits, now).await.unwrap();
    store.take_budget("k", &limits, 1, now).await.unwrap();
    let kept = store.budget("k").await.unwrap().unwrap();
    let mut remembered = kept.remembered();
    remembered.sort_by_key(|l| l.rate.per);
    assert_eq!(remembered, limits);
    // Set again (another `--rate`): the budget spent stays spent.
    store.remember_limits("k", &limits[..1], now).await.unwrap();
    let kept = store.budget("k").await.unwrap().unwrap();
    assert_eq!(kept.remembered(), limits[..1].to_vec());
    assert!(kept.tats(&limits[..1], 0)[0].is_some());
    // Cleared (`--rate none`): nothing remembered; the budgets listed.
    store.remember_limits("k", &[], now).await.unwrap();
    let all = store.budgets().await.unwrap();
    assert_eq!(all.len(), 1);
    assert!(all[0].remembered().is_empty());
    // Reopened: still cleared, still listed.
    drop(store);
    let store = b.open().await;
    assert!(
        store
            .budget("k")
            .await
            .unwrap()
            .unwrap()
            .remembered()
            .is_empty()
    );
}

/// 30 one-recipient messages at 10/second, burst 3, with a rate wait of
/// 500 ms: a first run sends what the budget allows soon and releases the
/// rest unattempted, each due at its turn; runs until all are delivered
/// then keep the GCRA bound at the capture server.
#[tokio::test]
async fn a_rated_runner_keeps_the_bound_and_releases_unattempted_with_their_turn() {
    let dir = tempfile::tempdir().unwrap();
    let server = CaptureServer::start(CaptureConfig::default())
        .await
        .unwrap();
    let store = Arc::new(SqliteStore::open(dir.path()).await.unwrap());
    enqueue(&store, 30).await;
    let relay = Server::new("127.0.0.1", server.addr().port()).with_policy(TlsPolicy::None);
    let events = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = events.clone();
    let config = RunnerConfig::default()
        .with_rate(vec![limit("10/second", 3)])
        .with_rate_wait(Duration::from_millis(500));
    let runner = Runner::new(store.clone(), relay, config)
        .with_observer(move |e| seen.lock().unwrap().push(e.clone()));
    assert_eq!(
        runner.budget_key().as_deref(),
        Some(format!("relay:127.0.0.1:{}", server.addr().port()).as_str())
    );
    let start = SystemTime::now();
    // One run delivers all: what is released comes due within the wait,
    // and the session waits for it.
    let runner = Arc::new(runner);
    let running = {
        let r = runner.clone();
        tokio::spawn(async move { r.run_due(&Stop::new()).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let now = SystemTime::now();
    let waiting: Vec<_> = store
        .list(&ListFilter::default())
        .await
        .unwrap()
        .into_iter()
        .flat_map(|m| m.recipients)
        .filter(|r| r.state == RecipientState::Queued)
        .collect();
    // Burst 3, then one every 100 ms; those beyond the 500 ms wait are
    // released, each due at its turn.
    assert!(waiting.len() >= 15, "{}", waiting.len());
    for r in &waiting {
        assert_eq!(r.attempts, 0, "released for the budget is not an attempt");
        assert!(r.next_attempt > now, "{r:?} is due in the future");
    }
    let mut dues: Vec<_> = waiting.iter().map(|r| r.next_attempt).collect();
    dues.sort();
    let last = dues.last().unwrap().duration_since(start).unwrap();
    // The 30th goes about (30 − 3) × 100 ms after the start.
    assert!(
        last >= Duration::from_millis(2500) && last <= Duration::from_millis(4000),
        "{last:?}"
    );
    running.await.unwrap().unwrap();
    assert!(
        events
            .lock()
            .unwrap()
            .iter()
            .any(|e| matches!(e, RunEvent::WaitingForBudget { released: true, .. }))
    );
    let all = server.wait_for_messages(30, Duration::from_secs(5)).await;
    assert_eq!(all.len(), 30);
    let mut at: Vec<SystemTime> = all.iter().map(|m| m.received_at).collect();
    at.sort();
    // GCRA: n + 1 arrivals span at least (n + 1 − burst) intervals. The
    // budget bounds the takes; an arrival comes a little after its take,
    // by as much as the machine's load delays it: 50 ms of slack.
    for i in 0..at.len() {
        for j in i + 3..at.len() {
            let span = at[j].duration_since(at[i]).unwrap();
            let least = Duration::from_millis(100 * (j - i - 2) as u64);
            assert!(
                span + Duration::from_millis(50) >= least,
                "arrivals {i}..={j} within {span:?}, less than {least:?}"
            );
        }
    }
    let total = at[29].duration_since(at[0]).unwrap();
    assert!(total >= Duration::from_millis(2600), "{total:?}");
    assert_eq!(runner.summary().delivered, 30);
    assert_eq!(runner.summary().deferred, 0);
}

both!(
    takes_from_two_handles_at_once_never_exceed_the_budget,
    a_reopened_store_keeps_the_budget_spent,
    the_limits_last_set_for_a_key_are_remembered_until_cleared,
    the_same_cap_written_another_way_gets_no_fresh_budget,
);
