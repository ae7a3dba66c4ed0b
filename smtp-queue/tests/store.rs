//! The store contract, on SQLite (a real file in a temporary directory)
//! and on PostgreSQL (a throwaway cluster): no mocks. `both!` runs a test
//! on each; what looks at SQLite's files stays SQLite-only.

use std::collections::HashSet;
use std::io;
use std::path::Path;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use sha2::{Digest, Sha256};
use smtp_core::delivery::{BodySource, MemoryBody};
use smtp_queue::{
    Attempt, Body, Claimed, Error, ListFilter, MessageOptions, NewMessage, Next, Outcome,
    RecipientState, RetryTarget, SCHEMA_VERSION, Schedule, SqliteStore, Store, TlsFacts,
};

mod common;
use common::backend::Backend;
use common::{files_in, files_only, read_all};

const LEASE: Duration = Duration::from_secs(30);

/// A fixed origin for the virtual clock, `s` seconds after it.
fn t(s: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + s)
}
/// Rows of `message_bodies` (bodies kept inline).
async fn inline_rows(dir: &Path) -> i64 {
    use sqlx::Connection;
    let url = format!("sqlite://{}", dir.join("queue.db").display());
    let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
    let n = sqlx::query_scalar("SELECT COUNT(*) FROM message_bodies")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    n
}

fn message(to: &[&str], body: &str) -> NewMessage {
    NewMessage {
        from: "alice@example.com".into(),
        to: to.iter().map(|s| (*s).to_owned()).collect(),
        body: Body::Source(Box::new(MemoryBody::new(body.as_bytes().to_vec()))),
        options: MessageOptions::default(),
    }
}

fn reply(code: u16, text: &str) -> Attempt {
    Attempt {
        code: Some(code),
        enhanced: Some(format!("{}.0.0", code / 100)),
        text: text.into(),
        host: Some("mx.example.net [127.0.0.1]".into()),
        tls: Some(TlsFacts {
            version: "TLSv1.3".into(),
            cipher_suite: "TLS13_AES_256_GCM_SHA384".into(),
            verified: true,
        }),
    }
}

async fn an_enqueued_message_is_claimed_sent_and_recorded_delivered(b: Backend) {
    let store = b.open().await;
    let ids = store
        .enqueue(
            vec![message(
                &["bob@example.net", "carol@example.org"],
                "Subject: hi\r\n\r\nHello.\r\n",
            )],
            t(0),
        )
        .await
        .unwrap();
    assert_eq!(ids.len(), 1);
    assert_eq!(store.next_due().await.unwrap(), Some(t(0)));

    let claimed = store.claim_due(t(1), 10, "w1", LEASE).await.unwrap();
    assert_eq!(claimed.len(), 1);
    let c = &claimed[0];
    assert_eq!(c.lease.message, ids[0]);
    assert_eq!(c.lease.until, t(1) + LEASE);
    assert_eq!(c.from, "alice@example.com");
    assert_eq!(c.created, t(0));
    let addresses: Vec<_> = c.recipients.iter().map(|r| r.address.as_str()).collect();
    assert_eq!(addresses, ["bob@example.net", "carol@example.org"]);
    assert!(
        c.recipients
            .iter()
            .all(|r| r.claimed_from == RecipientState::Queued && r.attempts == 0)
    );
    assert!(
        store
            .claim_due(t(2), 10, "w2", LEASE)
            .await
            .unwrap()
            .is_empty(),
        "held by w1"
    );

    let mut body = store.open_body(&ids[0]).await.unwrap();
    assert_eq!(
        read_all(&mut *body).await.unwrap(),
        b"Subject: hi\r\n\r\nHello.\r\n"
    );
    body.rewind().await.unwrap();
    assert_eq!(
        read_all(&mut *body).await.unwrap().len(),
        23,
        "rewinds for a second transaction"
    );

    let outcomes = c
        .recipients
        .iter()
        .map(|r| (r.id, Outcome::Delivered(reply(250, "queued as 1"))))
        .collect();
    store.record(&c.lease, outcomes, t(3)).await.unwrap();
    let shown = store.show(&ids[0]).await.unwrap();
    for r in &shown.recipients {
        assert_eq!(r.state, RecipientState::Delivered);
        assert_eq!(r.attempts, 1);
        assert_eq!(r.last.as_ref().unwrap().code, Some(250));
        assert!(r.lease.is_none());
    }
    assert_eq!(store.next_due().await.unwrap(), None);
    assert!(
        store
            .claim_due(t(100), 10, "w1", LEASE)
            .await
            .unwrap()
            .is_empty()
    );
    let stats = store.stats().await.unwrap();
    assert_eq!(stats.messages, 1);
    assert_eq!(stats.count(RecipientState::Delivered), 2);
}

async fn the_queue_age_is_the_oldest_message_still_waiting_not_the_oldest_kept(b: Backend) {
    let store = b.open().await;
    assert_eq!(store.stats().await.unwrap().oldest_waiting, None);
    store
        .enqueue(vec![message(&["a@example.net"], "1\r\n")], t(0))
        .await
        .unwrap();
    store
        .enqueue(vec![message(&["b@example.net"], "2\r\n")], t(10))
        .await
        .unwrap();
    store
        .enqueue(vec![message(&["c@example.net"], "3\r\n")], t(20))
        .await
        .unwrap();
    assert_eq!(store.stats().await.unwrap().oldest_waiting, Some(t(0)));
    // The first delivered, the second deferred: the age is the second's.
    let claimed = store.claim_due(t(30), 2, "w", LEASE).await.unwrap();
    assert_eq!(claimed.len(), 2);
    let (first, second) = (&claimed[0], &claimed[1]);
    let rid = |c: &Claimed| c.recipients[0].id;
    store
        .record(
            &first.lease,
            vec![(rid(first), Outcome::Delivered(reply(250, "ok")))],
            t(31),
        )
        .await
        .unwrap();
    assert_eq!(
        store.stats().await.unwrap().oldest_waiting,
        Some(t(10)),
        "delivering counts as waiting"
    );
    let deferred = Outcome::Deferred {
        attempt: reply(451, "later"),
        next: t(400),
    };
    store
        .record(&second.lease, vec![(rid(second), deferred)], t(31))
        .await
        .unwrap();
    let stats = store.stats().await.unwrap();
    assert_eq!(stats.oldest, Some(t(0)));
    assert_eq!(stats.oldest_waiting, Some(t(10)));
}

async fn a_deferred_recipient_comes_back_due_at_the_scheduled_time(b: Backend) {
    let store = b.open().await;
    store
        .enqueue(vec![message(&["bob@example.net"], "x\r\n")], t(0))
        .await
        .unwrap();
    let c = store
        .claim_due(t(0), 10, "w1", LEASE)
        .await
        .unwrap()
        .remove(0);
    let schedule = Schedule {
        jitter: 0.0,
        ..Schedule::default()
    };
    let Next::RetryAt(next) = schedule.next(1, c.created, t(1), 0.5) else {
        panic!("not expired")
    };
    assert_eq!(next, t(301));
    let rid = c.recipients[0].id;
    store
        .record(
            &c.lease,
            vec![(
                rid,
                Outcome::Deferred {
                    attempt: reply(451, "greylisted"),
                    next,
                },
            )],
            t(1),
        )
        .await
        .unwrap();

    assert_eq!(store.next_due().await.unwrap(), Some(t(301)));
    assert!(
        store
            .claim_due(t(300), 10, "w1", LEASE)
            .await
            .unwrap()
            .is_empty(),
        "not yet due"
    );
    let again = store.claim_due(t(301), 10, "w1", LEASE).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(
        again[0].recipients[0].claimed_from,
        RecipientState::Deferred
    );
    assert_eq!(again[0].recipients[0].attempts, 1);
    assert!(again[0].lease.generation > c.lease.generation);
}

async fn a_recipient_past_its_lifetime_expires_and_stays_expired(b: Backend) {
    let store = b.open().await;
    let ids = store
        .enqueue(vec![message(&["bob@example.net"], "x\r\n")], t(0))
        .await
        .unwrap();
    let schedule = Schedule {
        first: Duration::from_secs(2),
        max: Duration::from_secs(4),
        lifetime: Duration::from_secs(10),
        jitter: 0.0,
    };
    let mut now = t(0);
    let mut attempts = 0;
    loop {
        let claimed = store.claim_due(now, 10, "w1", LEASE).await.unwrap();
        if claimed.is_empty() {
            now = store.next_due().await.unwrap().expect("a recipient waits");
            continue;
        }
        let c = &claimed[0];
        attempts += 1;
        let outcome = match schedule.next(attempts, c.created, now, 0.5) {
            Next::RetryAt(next) => Outcome::Deferred {
                attempt: reply(421, "busy"),
                next,
            },
            Next::Expire => Outcome::Expired(Some(reply(421, "busy"))),
        };
        let done = matches!(outcome, Outcome::Expired(_));
        store
            .record(&c.lease, vec![(c.recipients[0].id, outcome)], now)
            .await
            .unwrap();
        if done {
            break;
        }
    }
    assert_eq!(
        now,
        t(10),
        "the last attempt is made at the end of the lifetime"
    );
    assert_eq!(
        attempts, 4,
        "t = 0, 2, 6 and 10 (capped by the lifetime), which expires"
    );
    let r = &store.show(&ids[0]).await.unwrap().recipients[0];
    assert_eq!(r.state, RecipientState::Expired);
    assert_eq!(
        store.retry(RetryTarget::All, t(20)).await.unwrap(),
        0,
        "final states are not retried"
    );
    assert!(
        store
            .claim_due(t(1000), 10, "w1", LEASE)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn an_expired_lease_is_taken_over_and_the_stale_holder_cannot_overwrite_the_result(
    b: Backend,
) {
    let store = b.open().await;
    store
        .enqueue(vec![message(&["bob@example.net"], "x\r\n")], t(0))
        .await
        .unwrap();
    let a = store
        .claim_due(t(0), 10, "a", LEASE)
        .await
        .unwrap()
        .remove(0);
    assert!(
        store
            .claim_due(t(29), 10, "b", LEASE)
            .await
            .unwrap()
            .is_empty(),
        "a's lease is live"
    );

    let b = store
        .claim_due(t(30), 10, "b", LEASE)
        .await
        .unwrap()
        .remove(0);
    assert_eq!(
        b.recipients[0].claimed_from,
        RecipientState::Delivering,
        "taken over"
    );
    assert!(b.lease.generation > a.lease.generation);
    let rid = a.recipients[0].id;
    assert_eq!(b.recipients[0].id, rid);

    let err = store
        .record(
            &a.lease,
            vec![(rid, Outcome::Failed(reply(550, "no such user")))],
            t(31),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::StaleLease { generation, .. } if generation == a.lease.generation),
        "{err}"
    );
    assert!(matches!(
        store.renew(&a.lease, t(100), t(31)).await,
        Err(Error::StaleLease { .. })
    ));
    assert_eq!(
        store.release(&a.lease, None, t(31)).await.unwrap(),
        0,
        "a holds nothing to release"
    );

    store
        .record(
            &b.lease,
            vec![(rid, Outcome::Delivered(reply(250, "ok")))],
            t(32),
        )
        .await
        .unwrap();
    let err = store
        .record(
            &b.lease,
            vec![(rid, Outcome::Delivered(reply(250, "ok")))],
            t(33),
        )
        .await;
    assert!(
        matches!(err, Err(Error::StaleLease { .. })),
        "recorded once only"
    );
    let shown = store.list(&ListFilter::default()).await.unwrap();
    assert_eq!(shown[0].recipients[0].state, RecipientState::Delivered);
}

async fn callers_committed_together_are_each_checked_against_their_own_lease(b: Backend) {
    let store = b.open().await;
    store
        .enqueue(
            vec![
                message(&["one@stale.example"], "1\r\n"),
                message(&["two@stale.example", "three@stale.example"], "2\r\n"),
            ],
            t(0),
        )
        .await
        .unwrap();
    let old = store.claim_due(t(0), 10, "a", LEASE).await.unwrap();
    store
        .enqueue(
            vec![
                message(&["four@fresh.example"], "3\r\n"),
                message(&["five@fresh.example", "six@fresh.example"], "4\r\n"),
            ],
            t(30),
        )
        .await
        .unwrap();
    // b takes over a's expired leases and claims the new messages.
    let new = store.claim_due(t(30), 10, "b", LEASE).await.unwrap();
    assert_eq!(new.len(), 4);
    let by_first = |claims: &[Claimed], address: &str| {
        claims
            .iter()
            .find(|c| c.recipients[0].address == address)
            .cloned()
            .unwrap()
    };
    let outcomes = |c: &Claimed, code: u16| {
        c.recipients
            .iter()
            .map(|r| {
                let o = if code == 250 {
                    Outcome::Delivered(reply(code, "ok"))
                } else {
                    Outcome::Failed(reply(code, "refused by a stale holder"))
                };
                (r.id, o)
            })
            .collect::<Vec<_>>()
    };
    let (stale_one, stale_two) = (
        by_first(&old, "one@stale.example"),
        by_first(&old, "two@stale.example"),
    );
    let (took_one, took_two, four, five) = (
        by_first(&new, "one@stale.example"),
        by_first(&new, "two@stale.example"),
        by_first(&new, "four@fresh.example"),
        by_first(&new, "five@fresh.example"),
    );
    // The first caller commits alone; the others arrive while it does
    // and are committed together, stale and current mixed.
    let (first, a_two, b_four, a_one, b_five, b_two) = tokio::join!(
        store.record(&took_one.lease, outcomes(&took_one, 250), t(31)),
        store.record(&stale_two.lease, outcomes(&stale_two, 550), t(31)),
        store.record(&four.lease, outcomes(&four, 250), t(31)),
        store.record(&stale_one.lease, outcomes(&stale_one, 550), t(31)),
        store.record(&five.lease, outcomes(&five, 250), t(31)),
        store.record(&took_two.lease, outcomes(&took_two, 250), t(31)),
    );
    for ok in [first, b_four, b_five, b_two] {
        ok.unwrap();
    }
    for stale in [a_two, a_one] {
        assert!(matches!(stale, Err(Error::StaleLease { .. })), "{stale:?}");
    }
    let shown = store.list(&ListFilter::default()).await.unwrap();
    let states: Vec<RecipientState> = shown
        .iter()
        .flat_map(|m| m.recipients.iter().map(|r| r.state))
        .collect();
    assert_eq!(states, vec![RecipientState::Delivered; 6], "{shown:?}");
    let log = b.log().await;
    let delivered = log.iter().filter(|e| e.event == "delivered").count();
    let failed = log.iter().filter(|e| e.event == "failed").count();
    assert_eq!(
        (delivered, failed),
        (6, 0),
        "only the current holders' outcomes are logged"
    );
    assert!(
        log.iter()
            .filter(|e| e.event == "delivered")
            .all(|e| e.worker.as_deref() == Some("b")
                && e.attempt.as_ref().and_then(|a| a.code) == Some(250))
    );
}

async fn a_lease_that_expired_but_was_not_taken_over_still_records_and_renews(b: Backend) {
    let store = b.open().await;
    store
        .enqueue(vec![message(&["bob@example.net"], "x\r\n")], t(0))
        .await
        .unwrap();
    let a = store
        .claim_due(t(0), 10, "a", LEASE)
        .await
        .unwrap()
        .remove(0);
    let renewed = store.renew(&a.lease, t(100), t(20)).await.unwrap();
    assert!(
        store
            .claim_due(t(60), 10, "b", LEASE)
            .await
            .unwrap()
            .is_empty(),
        "renewed to t(100)"
    );
    store
        .record(
            &renewed,
            vec![(a.recipients[0].id, Outcome::Delivered(reply(250, "ok")))],
            t(150),
        )
        .await
        .unwrap();
}

async fn a_released_recipient_waits_for_its_destinations_backoff(b: Backend) {
    let store = b.open().await;
    store
        .enqueue(vec![message(&["bob@example.net"], "x\r\n")], t(0))
        .await
        .unwrap();
    let c = store
        .claim_due(t(0), 10, "w", LEASE)
        .await
        .unwrap()
        .remove(0);
    let b = store
        .set_backoff("mx:mx.example.net", t(600), "connection refused", t(0))
        .await
        .unwrap();
    assert_eq!(b.failures, 1);
    let b = store
        .set_backoff("mx:mx.example.net", t(1200), "connection refused", t(600))
        .await
        .unwrap();
    assert_eq!(b.failures, 2);
    assert_eq!(
        store.backoff("mx:mx.example.net").await.unwrap(),
        Some(b.clone())
    );
    assert_eq!(
        store
            .release(&c.lease, Some(b.not_before), t(1))
            .await
            .unwrap(),
        1
    );
    let r = &store.show(&c.lease.message).await.unwrap().recipients[0];
    assert_eq!(r.state, RecipientState::Queued, "never attempted");
    assert_eq!(r.attempts, 0);
    assert!(
        store
            .claim_due(t(1199), 10, "w", LEASE)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store
            .claim_due(t(1200), 10, "w", LEASE)
            .await
            .unwrap()
            .len(),
        1
    );
    store.clear_backoff("mx:mx.example.net").await.unwrap();
    assert_eq!(store.backoff("mx:mx.example.net").await.unwrap(), None);
}

async fn retry_makes_waiting_recipients_due_now_and_clears_backoff(b: Backend) {
    let store = b.open().await;
    let ids = store
        .enqueue(
            vec![
                message(&["a@example.net"], "1\r\n"),
                message(&["b@example.net"], "2\r\n"),
            ],
            t(0),
        )
        .await
        .unwrap();
    for c in store.claim_due(t(0), 10, "w", LEASE).await.unwrap() {
        let rid = c.recipients[0].id;
        let next = t(3600);
        store
            .record(
                &c.lease,
                vec![(
                    rid,
                    Outcome::Deferred {
                        attempt: reply(451, "later"),
                        next,
                    },
                )],
                t(1),
            )
            .await
            .unwrap();
    }
    store
        .set_backoff("relay", t(3600), "421", t(1))
        .await
        .unwrap();
    assert_eq!(
        store
            .retry(RetryTarget::Message(ids[0].clone()), t(2))
            .await
            .unwrap(),
        1
    );
    let due = store.claim_due(t(2), 10, "w", LEASE).await.unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].lease.message, ids[0]);
    assert_eq!(
        store.retry(RetryTarget::All, t(3)).await.unwrap(),
        1,
        "the other one; the first is under a lease"
    );
    assert_eq!(store.backoff("relay").await.unwrap(), None);
    let missing = smtp_queue::MessageId::generate(t(0));
    assert!(matches!(
        store.retry(RetryTarget::Message(missing), t(3)).await,
        Err(Error::NotFound(_))
    ));
}

#[tokio::test]
async fn delete_and_purge_remove_rows_and_body_files() {
    let dir = tempfile::tempdir().unwrap();
    let store = files_only(dir.path()).await;
    let ids = store
        .enqueue(
            vec![
                message(&["a@example.net"], "1\r\n"),
                message(&["b@example.net"], "2\r\n"),
            ],
            t(0),
        )
        .await
        .unwrap();
    assert_eq!(files_in(&dir.path().join("bodies")), 2);
    store.delete(&ids[0], t(1)).await.unwrap();
    assert!(matches!(store.show(&ids[0]).await, Err(Error::NotFound(_))));
    assert!(matches!(
        store.delete(&ids[0], t(1)).await,
        Err(Error::NotFound(_))
    ));
    assert_eq!(files_in(&dir.path().join("bodies")), 1);

    let c = store
        .claim_due(t(2), 10, "w", LEASE)
        .await
        .unwrap()
        .remove(0);
    assert!(
        store.purge_finished(t(10)).await.unwrap().is_empty(),
        "not finished"
    );
    store
        .record(
            &c.lease,
            vec![(c.recipients[0].id, Outcome::Failed(reply(550, "no")))],
            t(3),
        )
        .await
        .unwrap();
    assert!(
        store.purge_finished(t(3)).await.unwrap().is_empty(),
        "finished only at t(3)"
    );
    assert_eq!(
        store.purge_finished(t(4)).await.unwrap(),
        vec![ids[1].clone()]
    );
    assert_eq!(files_in(&dir.path().join("bodies")), 0);
    assert_eq!(store.stats().await.unwrap().messages, 0);
}

async fn list_filters_by_state_oldest_first(b: Backend) {
    let store = b.open().await;
    let first = store
        .enqueue(vec![message(&["a@example.net"], "1\r\n")], t(0))
        .await
        .unwrap();
    let second = store
        .enqueue(vec![message(&["b@example.net"], "2\r\n")], t(5))
        .await
        .unwrap();
    let all = store.list(&ListFilter::default()).await.unwrap();
    assert_eq!(
        all.iter().map(|m| m.id.clone()).collect::<Vec<_>>(),
        [first[0].clone(), second[0].clone()]
    );
    store.claim_due(t(1), 1, "w", LEASE).await.unwrap();
    let delivering = ListFilter {
        state: Some(RecipientState::Delivering),
        limit: None,
    };
    let listed = store.list(&delivering).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, first[0]);
    let one = ListFilter {
        state: None,
        limit: Some(1),
    };
    assert_eq!(store.list(&one).await.unwrap().len(), 1);
}

/// A body source that fails after some bytes, like a pipe that broke.
struct Broken(usize);

#[async_trait]
impl BodySource for Broken {
    async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.0 == 0 {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the producer went away",
            ));
        }
        let n = buf.len().min(self.0);
        buf[..n].fill(b'x');
        self.0 -= n;
        Ok(n)
    }
    async fn rewind(&mut self) -> io::Result<()> {
        Ok(())
    }
}

async fn a_batch_that_fails_midway_leaves_nothing_behind(b: Backend) {
    let store = b.open().await;
    let mut broken = message(&["b@example.net"], "");
    broken.body = Body::Source(Box::new(Broken(100_000)));
    let batch = vec![
        message(&["a@example.net"], "1\r\n"),
        broken,
        message(&["c@example.net"], "3\r\n"),
    ];
    let err = store.enqueue(batch, t(0)).await.unwrap_err();
    assert!(matches!(err, Error::Storage { .. }), "{err}");
    assert!(err.to_string().contains("the producer went away"), "{err}");
    assert_eq!(store.stats().await.unwrap().messages, 0);
    if let Some(dir) = b.dir() {
        assert_eq!(files_in(&dir.join("bodies")), 0);
        assert_eq!(files_in(&dir.join("tmp")), 0);
    }

    let bad = vec![
        message(&["a@example.net"], "1\r\n"),
        message(&["not an address"], "2\r\n"),
    ];
    let err = store.enqueue(bad, t(0)).await.unwrap_err();
    assert!(matches!(err, Error::Misuse(_)), "{err}");
    if let Some(dir) = b.dir() {
        assert_eq!(files_in(&dir.join("bodies")), 0);
    }
    let empty = vec![message(&[], "1\r\n")];
    assert!(matches!(
        store.enqueue(empty, t(0)).await,
        Err(Error::Misuse(_))
    ));
    assert!(b.log().await.is_empty());
}

#[tokio::test]
async fn an_unwritable_spool_fails_the_enqueue_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let store = files_only(dir.path()).await;
    // Root ignores permission bits, so make the spool's tmp/ a file instead.
    std::fs::remove_dir(dir.path().join("tmp")).unwrap();
    std::fs::write(dir.path().join("tmp"), b"").unwrap();
    let err = store
        .enqueue(vec![message(&["a@example.net"], "1\r\n")], t(0))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, Error::Storage { .. }), "{text}");
    assert!(
        text.contains("creating a body file") && text.contains("writable"),
        "{text}"
    );
    assert_eq!(store.stats().await.unwrap().messages, 0);
}

/// A body generated as it is read: `len` bytes of a pattern, never held.
struct Generated {
    len: u64,
    pos: u64,
}

#[async_trait]
impl BodySource for Generated {
    async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min((self.len - self.pos) as usize);
        for (i, b) in buf[..n].iter_mut().enumerate() {
            *b = ((self.pos + i as u64) % 251) as u8;
        }
        self.pos += n as u64;
        Ok(n)
    }
    async fn rewind(&mut self) -> io::Result<()> {
        self.pos = 0;
        Ok(())
    }
}

async fn digest(body: &mut dyn BodySource) -> io::Result<(u64, Vec<u8>)> {
    let mut hasher = Sha256::new();
    let mut size = 0;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = body.read(&mut buf).await?;
        if n == 0 {
            return Ok((size, hasher.finalize().to_vec()));
        }
        size += n as u64;
        hasher.update(&buf[..n]);
    }
}

async fn a_body_of_many_mebibytes_streams_in_and_out_in_chunks(b: Backend) {
    let store = b.open().await;
    let len = 12 * 1024 * 1024 + 7;
    let mut m = message(&["a@example.net"], "");
    m.body = Body::Source(Box::new(Generated { len, pos: 0 }));
    let ids = store.enqueue(vec![m], t(0)).await.unwrap();
    let expected = digest(&mut Generated { len, pos: 0 }).await.unwrap();
    if let Some(dir) = b.dir() {
        assert_eq!(
            std::fs::metadata(dir.join("bodies").join(ids[0].as_str()))
                .unwrap()
                .len(),
            len
        );
    }
    let mut body = store.open_body(&ids[0]).await.unwrap();
    assert_eq!(digest(&mut *body).await.unwrap(), expected);
    assert_eq!(store.show(&ids[0]).await.unwrap().body_size, len);
}

#[tokio::test]
async fn a_body_copied_from_a_file_is_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = files_only(&dir.path().join("spool")).await;
    let source = dir.path().join("m.eml");
    std::fs::write(&source, b"Subject: file\r\n\r\nbody\r\n").unwrap();
    let mut m = message(&["a@example.net", "b@example.net", "c@example.net"], "");
    m.body = Body::File(source);
    let ids = store.enqueue(vec![m], t(0)).await.unwrap();
    assert_eq!(
        files_in(&dir.path().join("spool/bodies")),
        1,
        "one body for three recipients"
    );
    let mut body = store.open_body(&ids[0]).await.unwrap();
    assert_eq!(
        read_all(&mut *body).await.unwrap(),
        b"Subject: file\r\n\r\nbody\r\n"
    );
}

#[tokio::test]
async fn a_missing_or_corrupt_body_is_that_messages_error() {
    let dir = tempfile::tempdir().unwrap();
    let store = files_only(dir.path()).await;
    let ids = store
        .enqueue(
            vec![
                message(&["a@example.net"], "first body\r\n"),
                message(&["b@example.net"], "second body\r\n"),
                message(&["c@example.net"], "third body\r\n"),
            ],
            t(0),
        )
        .await
        .unwrap();
    let bodies = dir.path().join("bodies");
    std::fs::remove_file(bodies.join(ids[0].as_str())).unwrap();
    let err = store.open_body(&ids[0]).await.err().unwrap();
    assert!(
        matches!(&err, Error::Corrupt { message: Some(id), .. } if *id == ids[0]),
        "{err}"
    );
    assert!(err.to_string().contains("missing"), "{err}");

    std::fs::write(bodies.join(ids[1].as_str()), b"second b0dy\r\n").unwrap();
    let mut body = store.open_body(&ids[1]).await.unwrap();
    let err = read_all(&mut *body).await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    assert!(err.to_string().contains(ids[1].as_str()), "{err}");

    std::fs::write(bodies.join(ids[2].as_str()), b"third\r\n").unwrap();
    let err = store.open_body(&ids[2]).await.err().unwrap();
    assert!(
        matches!(&err, Error::Corrupt { message: Some(id), .. } if *id == ids[2]),
        "{err}"
    );
    let err = store
        .open_body(&smtp_queue::MessageId::generate(t(0)))
        .await
        .err()
        .unwrap();
    assert!(matches!(err, Error::NotFound(_)));
}

#[tokio::test]
async fn a_schema_from_a_newer_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).await.unwrap();
    store.close().await;
    drop(store);
    {
        use sqlx::Connection;
        let url = format!("sqlite://{}", dir.path().join("queue.db").display());
        let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
        sqlx::query("UPDATE schema_version SET version = 99")
            .execute(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
    }
    let err = SqliteStore::open(dir.path()).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::SchemaTooNew {
                found: 99,
                supported: SCHEMA_VERSION,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("newer"), "{err}");
}

async fn a_reopened_store_keeps_what_was_enqueued(b: Backend) {
    let store = b.open().await;
    let ids = store
        .enqueue(vec![message(&["a@example.net"], "1\r\n")], t(0))
        .await
        .unwrap();
    drop(store);
    let store = b.open().await;
    assert_eq!(
        store.show(&ids[0]).await.unwrap().recipients[0].state,
        RecipientState::Queued
    );
}

async fn two_handles_on_one_queue_never_claim_the_same_recipient(backend: Backend) {
    let a = backend.open().await;
    let b = backend.open().await;
    let batch: Vec<_> = (0..30)
        .map(|i| message(&["a@example.net", "b@example.net"], &format!("{i}\r\n")))
        .collect();
    a.enqueue(batch, t(0)).await.unwrap();
    let run = |store: std::sync::Arc<dyn Store>, worker: &'static str| {
        tokio::spawn(async move {
            let mut got = Vec::new();
            loop {
                let claimed = store.claim_due(t(1), 3, worker, LEASE).await.unwrap();
                if claimed.is_empty() {
                    return got;
                }
                for c in claimed {
                    got.extend(c.recipients.iter().map(|r| r.id));
                }
            }
        })
    };
    let (ga, gb) = tokio::join!(run(a.clone(), "a"), run(b.clone(), "b"));
    let (ga, gb) = (ga.unwrap(), gb.unwrap());
    let all: HashSet<_> = ga.iter().chain(&gb).copied().collect();
    assert_eq!(ga.len() + gb.len(), 60, "each recipient claimed once");
    assert_eq!(all.len(), 60);
}

async fn the_outcome_log_has_one_line_per_transition_with_the_facts(b: Backend) {
    let store = b.open().await;
    store
        .enqueue(
            vec![message(&["a@example.net", "b@example.net"], "1\r\n")],
            t(0),
        )
        .await
        .unwrap();
    let c = store
        .claim_due(t(0), 10, "w", LEASE)
        .await
        .unwrap()
        .remove(0);
    let (r1, r2) = (c.recipients[0].id, c.recipients[1].id);
    store
        .record(
            &c.lease,
            vec![
                (r1, Outcome::Delivered(reply(250, "ok"))),
                (
                    r2,
                    Outcome::Deferred {
                        attempt: reply(452, "mailbox full"),
                        next: t(300),
                    },
                ),
            ],
            t(1),
        )
        .await
        .unwrap();
    let entries = b.log().await;
    let events: Vec<_> = entries.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(
        events,
        [
            "enqueued",
            "enqueued",
            "claimed",
            "claimed",
            "delivered",
            "deferred"
        ]
    );
    let deferred = &entries[5];
    assert_eq!(deferred.from, Some(RecipientState::Delivering));
    assert_eq!(deferred.to, Some(RecipientState::Deferred));
    assert_eq!(deferred.attempts, 1);
    assert_eq!(deferred.generation, Some(c.lease.generation));
    assert_eq!(deferred.next_attempt_ms, Some(1_700_000_300_000));
    let attempt = deferred.attempt.as_ref().unwrap();
    assert_eq!(attempt.code, Some(452));
    assert_eq!(attempt.enhanced.as_deref(), Some("4.0.0"));
    assert_eq!(attempt.host.as_deref(), Some("mx.example.net [127.0.0.1]"));
    assert_eq!(attempt.tls.as_ref().unwrap().version, "TLSv1.3");

    let refused = store
        .record(
            &c.lease,
            vec![(r1, Outcome::Delivered(reply(250, "again")))],
            t(2),
        )
        .await;
    assert!(refused.is_err());
    assert_eq!(b.log().await.len(), 6, "a refused change is not logged");
}

#[tokio::test]
async fn small_bodies_are_committed_inline_and_large_ones_go_to_files() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).await.unwrap();
    let large_len = 64 * 1024 + 1;
    let mut large = message(&["b@example.net"], "");
    large.body = Body::Source(Box::new(Generated {
        len: large_len,
        pos: 0,
    }));
    let ids = store
        .enqueue(
            vec![message(&["a@example.net"], "small body\r\n"), large],
            t(0),
        )
        .await
        .unwrap();
    assert_eq!(files_in(&dir.path().join("bodies")), 1);
    assert_eq!(inline_rows(dir.path()).await, 1);
    let mut small = store.open_body(&ids[0]).await.unwrap();
    assert_eq!(read_all(&mut *small).await.unwrap(), b"small body\r\n");
    // Read twice: a second host reads it from its start.
    small.rewind().await.unwrap();
    assert_eq!(read_all(&mut *small).await.unwrap(), b"small body\r\n");
    let mut body = store.open_body(&ids[1]).await.unwrap();
    assert_eq!(
        digest(&mut *body).await.unwrap(),
        digest(&mut Generated {
            len: large_len,
            pos: 0
        })
        .await
        .unwrap()
    );
    // Deleting a message removes its inline body with it.
    store.delete(&ids[0], t(1)).await.unwrap();
    assert_eq!(inline_rows(dir.path()).await, 0);
}

#[tokio::test]
async fn a_corrupt_inline_body_is_that_messages_error() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).await.unwrap();
    let ids = store
        .enqueue(
            vec![
                message(&["a@example.net"], "first body\r\n"),
                message(&["b@example.net"], "second body\r\n"),
            ],
            t(0),
        )
        .await
        .unwrap();
    {
        use sqlx::Connection;
        let url = format!("sqlite://{}", dir.path().join("queue.db").display());
        let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
        sqlx::query("UPDATE message_bodies SET data = $1 WHERE message_id = $2")
            .bind(&b"first b0dy\r\n"[..])
            .bind(ids[0].as_str())
            .execute(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
    }
    let err = store.open_body(&ids[0]).await.err().unwrap();
    assert!(
        matches!(&err, Error::Corrupt { message: Some(id), .. } if *id == ids[0]),
        "{err}"
    );
    let mut other = store.open_body(&ids[1]).await.unwrap();
    assert_eq!(read_all(&mut *other).await.unwrap(), b"second body\r\n");
}

#[cfg(unix)]
#[tokio::test]
async fn the_queue_is_private_to_its_owner_whatever_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("new/queue");
    let store = files_only(&spool).await;
    store
        .enqueue(vec![message(&["a@example.net"], "private\r\n")], t(0))
        .await
        .unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&spool), 0o700);
    assert_eq!(mode(&spool.join("bodies")), 0o700);
    assert_eq!(mode(&spool.join("tmp")), 0o700);
    for file in ["queue.db", "queue.db-wal", "outcomes.jsonl"] {
        assert_eq!(mode(&spool.join(file)), 0o600, "{file}");
    }
    for body in std::fs::read_dir(spool.join("bodies")).unwrap() {
        assert_eq!(mode(&body.unwrap().path()), 0o600);
    }
}

async fn a_batch_of_many_messages_keeps_every_recipient_in_place(b: Backend) {
    let store = b.open().await;
    // More than one INSERT's worth of messages and of recipients.
    let batch: Vec<NewMessage> = (0..1_200)
        .map(|i| {
            message(
                &[&format!("a{i}@example.net"), &format!("b{i}@example.org")],
                "x\r\n",
            )
        })
        .collect();
    let ids = store.enqueue(batch, t(0)).await.unwrap();
    let infos = store.show_many(&ids).await.unwrap();
    assert_eq!(infos.len(), 1_200);
    for (i, (id, info)) in ids.iter().zip(&infos).enumerate() {
        assert_eq!(&info.id, id);
        let got: Vec<&str> = info.recipients.iter().map(|r| r.address.as_str()).collect();
        assert_eq!(
            got,
            [format!("a{i}@example.net"), format!("b{i}@example.org")]
        );
    }
    // The log names each recipient by its row.
    let mut by_id = std::collections::HashMap::new();
    for info in &infos {
        for r in &info.recipients {
            by_id.insert(r.id, (info.id.clone(), r.address.clone()));
        }
    }
    let entries = b.log().await;
    assert_eq!(entries.len(), 2_400);
    for e in entries {
        assert_eq!(
            by_id.get(&e.recipient),
            Some(&(e.message.clone(), e.rcpt.clone()))
        );
    }
    // A deleted message is left out of show_many, the others kept in order.
    store.delete(&ids[1], t(1)).await.unwrap();
    let some = store.show_many(&ids[..3]).await.unwrap();
    let got: Vec<_> = some.iter().map(|m| m.id.clone()).collect();
    assert_eq!(got, [ids[0].clone(), ids[2].clone()]);
}

/// Root enqueueing into a queue another user's service runs: every file
/// it creates there belongs to the queue's owner, or the service could
/// not read the body (and would fail the message) or open the database.
/// Run as another user, the queue is that user's own and nothing changes
/// hands; the test checks that instead.
#[tokio::test]
async fn files_made_in_another_users_queue_belong_to_the_queue_s_owner() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("svc");
    std::fs::create_dir(&spool).unwrap();
    let me = std::fs::metadata(&spool).unwrap().uid();
    // nobody:nogroup, when root can give the directory away.
    let owner = if me == 0 {
        std::os::unix::fs::chown(&spool, Some(65534), Some(65534)).unwrap();
        65534
    } else {
        me
    };
    let store = files_only(&spool).await;
    let mut large = message(&["b@example.net"], "");
    large.body = Body::Source(Box::new(Generated {
        len: 64 * 1024 + 1,
        pos: 0,
    }));
    store.enqueue(vec![large], t(0)).await.unwrap();
    let uid = |p: &Path| std::fs::metadata(p).unwrap().uid();
    for path in [
        spool.join("bodies"),
        spool.join("tmp"),
        spool.join("queue.db"),
        spool.join("outcomes.jsonl"),
    ] {
        assert_eq!(uid(&path), owner, "{}", path.display());
    }
    let bodies: Vec<_> = std::fs::read_dir(spool.join("bodies"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(bodies.len(), 1, "the large body is a file");
    assert_eq!(uid(&bodies[0]), owner);
    store.close().await;
}

/// A body that must never be read (its message's recipients were all
/// enqueued under the key before).
struct Unread;

#[async_trait]
impl BodySource for Unread {
    async fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
        Err(io::Error::other("a skipped message's body was read"))
    }
    async fn rewind(&mut self) -> io::Result<()> {
        Ok(())
    }
}

async fn enqueue_once_enqueues_only_recipients_new_under_the_key(b: Backend) {
    let store = b.open().await;
    let list = ["a@example.net", "b@example.net", "c@example.net"];
    let batch: Vec<NewMessage> = list.iter().map(|to| message(&[to], "x")).collect();
    let done = store.enqueue_once("news-1", batch, t(0)).await.unwrap();
    assert_eq!(done.new_ids().count(), 3);
    assert_eq!((done.skipped, done.first), (0, None));

    // The same list, reordered, a domain in capitals, one row appended:
    // only the new recipient; the others' bodies are never read.
    let mut again: Vec<NewMessage> = ["c@example.net", "a@EXAMPLE.net", "b@example.net"]
        .iter()
        .map(|to| NewMessage {
            body: Body::Source(Box::new(Unread)),
            ..message(&[to], "x")
        })
        .collect();
    again.push(message(&["d@example.net"], "x"));
    let done = store.enqueue_once("news-1", again, t(60)).await.unwrap();
    assert_eq!(done.skipped, 3);
    assert_eq!(done.first, Some(t(0)));
    assert_eq!(done.ids[..3], [None, None, None]);
    let new = done.ids[3].clone().unwrap();
    assert_eq!(
        store.show(&new).await.unwrap().recipients[0].address,
        "d@example.net"
    );
    assert_eq!(store.stats().await.unwrap().messages, 4);

    // Recorded for good: the key outlives its messages.
    let all = store.list(&ListFilter::default()).await.unwrap();
    for m in &all {
        store.delete(&m.id, t(100)).await.unwrap();
    }
    let same: Vec<NewMessage> = list
        .iter()
        .map(|to| NewMessage {
            body: Body::Source(Box::new(Unread)),
            ..message(&[to], "x")
        })
        .collect();
    let done = store.enqueue_once("news-1", same, t(120)).await.unwrap();
    assert_eq!((done.new_ids().count(), done.skipped), (0, 3));
    // Another key (another message) goes to all of them.
    let batch: Vec<NewMessage> = list.iter().map(|to| message(&[to], "y")).collect();
    let done = store.enqueue_once("news-2", batch, t(180)).await.unwrap();
    assert_eq!((done.new_ids().count(), done.first), (3, None));
}

/// A message whose row does not read (its options, its size) is left out
/// of claims; the others are claimed and delivered as ever.
async fn a_corrupt_message_is_left_out_of_claims_and_the_others_go(b: Backend) {
    let store = b.open().await;
    let batch = (0..3)
        .map(|i| message(&[&format!("r{i}@example.net")], "Subject: x\r\n\r\nx\r\n"))
        .collect();
    let ids = store.enqueue(batch, t(0)).await.unwrap();
    let bad = ids[0].as_str();
    let options = if b.is_postgres() {
        "'{\"body\": \"bogus\"}'::jsonb"
    } else {
        "'{\"body\": \"bogus\"}'"
    };
    b.exec(&format!(
        "UPDATE messages SET options = {options} WHERE id = '{bad}'"
    ))
    .await;
    b.exec(&format!(
        "UPDATE messages SET body_size = -5 WHERE id = '{}'",
        ids[1].as_str()
    ))
    .await;
    let claimed = store.claim_due(t(1), 10, "w", LEASE).await.unwrap();
    let got: Vec<&str> = claimed.iter().map(|c| c.lease.message.as_str()).collect();
    assert_eq!(got, [ids[2].as_str()]);
    // And again: the corrupt ones are still waiting (for `delete`), not lost.
    assert_eq!(
        store.stats().await.unwrap().count(RecipientState::Queued),
        2
    );
}

/// A spread claim takes at most N messages of a domain (a message counts
/// for its first due recipient's domain, in any case of letters), and the
/// rest of the claim from the other domains due; the next claim takes the
/// big domain's next N. Without the cap, the first claim would be the big
/// domain's alone ("a-big" sorts first).
async fn a_spread_claim_takes_at_most_n_messages_of_a_domain(b: Backend) {
    let store = b.open().await;
    let mut batch = Vec::new();
    for i in 0..30 {
        let host = if i % 2 == 0 {
            "a-big.test"
        } else {
            "A-BIG.test"
        };
        batch.push(message(&[&format!("u{i}@{host}")], "x"));
    }
    for d in 0..4 {
        for i in 0..3 {
            batch.push(message(&[&format!("u{i}@small{d}.test")], "x"));
        }
    }
    // Two recipients: counted for a-big (first by domain), not small9.
    batch.push(message(&["v@small9.test", "w@a-big.test"], "x"));
    store.enqueue(batch, t(0)).await.unwrap();
    let domains = |claimed: &[Claimed]| {
        let mut by: std::collections::BTreeMap<String, usize> = Default::default();
        for c in claimed {
            let first = c.recipients.iter().map(|r| r.address.to_ascii_lowercase());
            let domain = first
                .filter_map(|a| a.split_once('@').map(|(_, d)| d.to_owned()))
                .min()
                .unwrap();
            *by.entry(domain).or_default() += 1;
        }
        by
    };
    let first = store
        .claim_due_spread(None, t(1), 20, Some(5), "w1", LEASE)
        .await
        .unwrap();
    let by = domains(&first);
    assert_eq!(by.get("a-big.test"), Some(&5), "{by:?}");
    for d in 0..4 {
        assert_eq!(by.get(&format!("small{d}.test")), Some(&3), "{by:?}");
    }
    assert_eq!(first.len(), 17, "{by:?}");
    // Another worker: the big domain's next five, nothing else is left.
    let second = store
        .claim_due_spread(None, t(1), 20, Some(5), "w2", LEASE)
        .await
        .unwrap();
    assert_eq!(domains(&second).get("a-big.test"), Some(&5));
    assert_eq!(second.len(), 5);
    // Uncapped, a claim takes what is left, in order.
    let rest = store
        .claim_due_for(None, t(1), 100, "w3", LEASE)
        .await
        .unwrap();
    assert_eq!(domains(&rest).get("a-big.test"), Some(&21));
    assert_eq!(rest.len(), 21);
    // A route's claim counts only its own messages: each is spread alike.
    let routed = if b.is_postgres() {
        Backend::postgres()
    } else {
        Backend::sqlite()
    };
    let store = routed.open().await;
    let mut batch = Vec::new();
    for route in ["direct", "relay:x:25"] {
        for i in 0..4 {
            let mut m = message(&[&format!("u{i}@a.test")], "x");
            m.options.route = Some(route.into());
            batch.push(m);
        }
    }
    store.enqueue(batch, t(0)).await.unwrap();
    let got = store
        .claim_due_spread(Some("direct"), t(1), 10, Some(2), "w", LEASE)
        .await
        .unwrap();
    assert_eq!(got.len(), 2);
    assert!(
        got.iter()
            .all(|c| c.options.route.as_deref() == Some("direct"))
    );
}

both!(
    a_spread_claim_takes_at_most_n_messages_of_a_domain,
    a_corrupt_message_is_left_out_of_claims_and_the_others_go,
    a_batch_that_fails_midway_leaves_nothing_behind,
    a_body_of_many_mebibytes_streams_in_and_out_in_chunks,
    a_reopened_store_keeps_what_was_enqueued,
    two_handles_on_one_queue_never_claim_the_same_recipient,
    an_enqueued_message_is_claimed_sent_and_recorded_delivered,
    the_queue_age_is_the_oldest_message_still_waiting_not_the_oldest_kept,
    a_deferred_recipient_comes_back_due_at_the_scheduled_time,
    a_recipient_past_its_lifetime_expires_and_stays_expired,
    an_expired_lease_is_taken_over_and_the_stale_holder_cannot_overwrite_the_result,
    callers_committed_together_are_each_checked_against_their_own_lease,
    a_lease_that_expired_but_was_not_taken_over_still_records_and_renews,
    a_released_recipient_waits_for_its_destinations_backoff,
    retry_makes_waiting_recipients_due_now_and_clears_backoff,
    list_filters_by_state_oldest_first,
    the_outcome_log_has_one_line_per_transition_with_the_facts,
    a_batch_of_many_messages_keeps_every_recipient_in_place,
    enqueue_once_enqueues_only_recipients_new_under_the_key,
);
