//! Delivery status notifications in the store: the schema upgrade that
//! brought them, owed exactly when a message's last recipient becomes
//! final with a failure, enqueued exactly once (twice recorded, two
//! workers, a failed transaction), and what they return of the original.
//! SQLite on real files in a temporary directory; a runner against a
//! capture server on 127.0.0.1.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};
use smtp_core::delivery::MemoryBody;
use smtp_queue::dsn::{FULL_LIMIT, Reporter};
use smtp_queue::{
    Attempt, Body, BodyKind, Error, MessageId, MessageOptions, NewMessage, Outcome, RecipientState,
    RunEvent, Runner, RunnerConfig, SqliteSettings, SqliteStore, Stop, Store, enqueue_owed,
};
use sqlx::Connection;

mod common;
use common::backend::Backend;
use common::{files_in, files_only, read_all};

const LEASE: Duration = Duration::from_secs(30);

fn t(s: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + s)
}

fn notifying(from: &str, to: &[&str], body: &str) -> NewMessage {
    let mut options = MessageOptions::default();
    options.notify_sender = true;
    NewMessage {
        from: from.into(),
        to: to.iter().map(|s| (*s).to_owned()).collect(),
        body: Body::Source(Box::new(MemoryBody::new(body.as_bytes().to_vec()))),
        options,
    }
}

const ORIGINAL: &str =
    "From: alice@example.com\r\nTo: bob@example.net\r\nSubject: lunch\r\n\r\nAt noon?\r\n";

fn reply(code: u16, enhanced: &str, text: &str) -> Attempt {
    Attempt {
        code: Some(code),
        enhanced: Some(enhanced.into()),
        text: text.into(),
        host: Some("mx.example.net [192.0.2.1]".into()),
        tls: None,
    }
}
/// Enqueues `m` at t(0), claims it and records `outcomes` (by position).
async fn settle(
    store: &dyn Store,
    m: NewMessage,
    outcomes: Vec<Outcome>,
) -> (MessageId, smtp_queue::Claimed) {
    let id = store.enqueue(vec![m], t(0)).await.unwrap().remove(0);
    let c = store
        .claim_due(t(1), 10, "w", LEASE)
        .await
        .unwrap()
        .remove(0);
    let outcomes = c.recipients.iter().map(|r| r.id).zip(outcomes).collect();
    store.record(&c.lease, outcomes, t(2)).await.unwrap();
    (id, c)
}

fn notification(to: &str) -> NewMessage {
    NewMessage {
        from: "<>".into(),
        to: vec![to.into()],
        body: Body::Source(Box::new(MemoryBody::new(
            b"Subject: undelivered\r\n\r\nx\r\n".to_vec(),
        ))),
        options: MessageOptions::default(),
    }
}

// ---- The schema upgrade.

/// Version 1 as it shipped: what an existing queue holds.
const SCHEMA_V1: &str = "
CREATE TABLE schema_version (version INTEGER NOT NULL);
INSERT INTO schema_version (version) VALUES (1);
CREATE TABLE messages (
    id TEXT PRIMARY KEY, sender TEXT NOT NULL, options TEXT NOT NULL,
    body_size INTEGER NOT NULL, body_sha256 TEXT NOT NULL, created_ms INTEGER NOT NULL
);
CREATE TABLE recipients (
    id INTEGER PRIMARY KEY,
    message_id TEXT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    position INTEGER NOT NULL, address TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN
        ('queued', 'delivering', 'delivered', 'failed', 'deferred', 'expired')),
    attempts INTEGER NOT NULL DEFAULT 0, next_attempt_ms INTEGER NOT NULL,
    lease_generation INTEGER, lease_worker TEXT, lease_until_ms INTEGER,
    last_code INTEGER, last_enhanced TEXT, last_text TEXT, last_host TEXT, last_tls TEXT,
    updated_ms INTEGER NOT NULL
);
CREATE INDEX recipients_by_message ON recipients (message_id, position);
CREATE INDEX recipients_due ON recipients (state, next_attempt_ms);
CREATE INDEX recipients_lease ON recipients (state, lease_until_ms);
CREATE TABLE lease_generation (value INTEGER NOT NULL);
INSERT INTO lease_generation (value) VALUES (7);
CREATE TABLE backoff (
    destination TEXT PRIMARY KEY, not_before_ms INTEGER NOT NULL, failures INTEGER NOT NULL,
    reason TEXT NOT NULL, updated_ms INTEGER NOT NULL
);
";

async fn connect(dir: &Path) -> sqlx::SqliteConnection {
    let url = format!("sqlite://{}?mode=rwc", dir.join("queue.db").display());
    sqlx::SqliteConnection::connect(&url).await.unwrap()
}

#[tokio::test]
async fn a_version_1_queue_is_upgraded_on_open_and_keeps_what_it_held() {
    let dir = tempfile::tempdir().unwrap();
    let id = "018bcfe568e8a3f1c2d4e5f60718";
    let body = b"Subject: old\r\n\r\nfrom version 1\r\n";
    std::fs::create_dir_all(dir.path().join("bodies")).unwrap();
    std::fs::write(dir.path().join("bodies").join(id), body).unwrap();
    let sha: String = Sha256::digest(body)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    {
        let mut conn = connect(dir.path()).await;
        sqlx::raw_sql(SCHEMA_V1).execute(&mut conn).await.unwrap();
        sqlx::query(
            "INSERT INTO messages VALUES ($1, '<alice@example.com>',
             '{\"body\":\"sevenbit\",\"smtputf8\":false,\"require_tls\":false,\"dsn_envid\":null,\"dsn_ret_full\":null}',
             $2, $3, 1700000000000)",
        )
        .bind(id)
        .bind(body.len() as i64)
        .bind(&sha)
        .execute(&mut conn)
        .await
        .unwrap();
        for (pos, addr, state, code) in [
            (0, "bob@example.net", "deferred", Some(451)),
            (1, "carol@example.net", "delivered", Some(250)),
        ] {
            sqlx::query(
                "INSERT INTO recipients (message_id, position, address, state, attempts,
                 next_attempt_ms, last_code, last_text, updated_ms)
                 VALUES ($1, $2, $3, $4, 1, 1700000300000, $5, 'was', 1700000001000)",
            )
            .bind(id)
            .bind(pos)
            .bind(addr)
            .bind(state)
            .bind(code)
            .execute(&mut conn)
            .await
            .unwrap();
        }
        sqlx::query("INSERT INTO backoff VALUES ('relay:mx:25', 1700000600000, 2, 'down', 1)")
            .execute(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
    }

    let store = files_only(dir.path()).await;
    let id = MessageId::parse(id).unwrap();
    let m = store.show(&id).await.unwrap();
    assert_eq!(m.from, "<alice@example.com>");
    assert!(
        !m.options.notify_sender,
        "version 1 options read with the default"
    );
    assert_eq!(m.notification, None);
    let states: Vec<_> = m.recipients.iter().map(|r| r.state).collect();
    assert_eq!(
        states,
        [RecipientState::Deferred, RecipientState::Delivered]
    );
    assert_eq!(m.recipients[0].last.as_ref().unwrap().code, Some(451));
    let mut b = store.open_body(&id).await.unwrap();
    assert_eq!(read_all(&mut *b).await.unwrap(), body);
    let backoff = store.backoff("relay:mx:25").await.unwrap().unwrap();
    assert_eq!(backoff.failures, 2);
    // The lease generation goes on from where version 1 left it.
    let c = store
        .claim_due(t(10_000), 10, "w", LEASE)
        .await
        .unwrap()
        .remove(0);
    assert_eq!(c.lease.generation, 8);
    store.close().await;
    drop(store);

    let mut conn = connect(dir.path()).await;
    let versions: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM schema_version ORDER BY version")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    assert_eq!(versions, [1, smtp_queue::SCHEMA_VERSION]);
    let columns: Vec<String> = sqlx::query_scalar("SELECT name FROM pragma_table_info('messages')")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    assert!(columns.contains(&"dsn_owed_ms".to_owned()), "{columns:?}");
    assert!(columns.contains(&"dsn_id".to_owned()), "{columns:?}");
    conn.close().await.unwrap();

    // Opened again: nothing more to do.
    let store = files_only(dir.path()).await;
    assert_eq!(store.show(&id).await.unwrap().recipients.len(), 2);
}

// ---- Owed exactly when the last recipient is final with a failure.

async fn the_last_recipient_final_with_a_failure_makes_a_notification_owed(b: Backend) {
    let store = b.open().await;
    let id = store
        .enqueue(
            vec![notifying(
                "<alice@example.com>",
                &["bob@example.net", "nobody@example.net"],
                ORIGINAL,
            )],
            t(0),
        )
        .await
        .unwrap()
        .remove(0);
    let c = store
        .claim_due(t(1), 10, "w", LEASE)
        .await
        .unwrap()
        .remove(0);
    let (bob, nobody) = (c.recipients[0].id, c.recipients[1].id);
    store
        .record(
            &c.lease,
            vec![(nobody, Outcome::Failed(reply(550, "5.1.1", "no such user")))],
            t(2),
        )
        .await
        .unwrap();
    assert!(
        store.owed_notifications(10).await.unwrap().is_empty(),
        "bob is still under way: not yet"
    );
    store
        .record(
            &c.lease,
            vec![(bob, Outcome::Delivered(reply(250, "2.0.0", "ok")))],
            t(3),
        )
        .await
        .unwrap();
    let owed = store.owed_notifications(10).await.unwrap();
    assert_eq!(owed.len(), 1);
    assert_eq!(owed[0].id, id);
    // The same failure recorded again is refused, and owes nothing more.
    let again = store
        .record(
            &c.lease,
            vec![(nobody, Outcome::Failed(reply(550, "5.1.1", "no such user")))],
            t(4),
        )
        .await;
    assert!(matches!(again, Err(Error::StaleLease { .. })), "{again:?}");
    assert_eq!(store.owed_notifications(10).await.unwrap().len(), 1);
}

async fn an_expiry_after_deferrals_makes_a_notification_owed(b: Backend) {
    let store = b.open().await;
    let (id, c) = settle(
        &*store,
        notifying("alice@example.com", &["carol@grey.example"], ORIGINAL),
        vec![Outcome::Deferred {
            attempt: reply(451, "4.7.1", "greylisted"),
            next: t(10),
        }],
    )
    .await;
    assert!(store.owed_notifications(10).await.unwrap().is_empty());
    let c2 = store
        .claim_due(t(10), 10, "w", LEASE)
        .await
        .unwrap()
        .remove(0);
    assert!(c2.lease.generation > c.lease.generation);
    store
        .record(
            &c2.lease,
            vec![(
                c2.recipients[0].id,
                Outcome::Expired(Some(reply(451, "4.7.1", "greylisted"))),
            )],
            t(11),
        )
        .await
        .unwrap();
    let owed = store.owed_notifications(10).await.unwrap();
    assert_eq!(owed.len(), 1);
    assert_eq!(owed[0].id, id);
    assert_eq!(owed[0].recipients[0].state, RecipientState::Expired);
}

async fn none_is_owed_without_the_option_for_a_null_sender_or_with_every_recipient_delivered(
    b: Backend,
) {
    let store = b.open().await;
    let failed = || Outcome::Failed(reply(550, "5.1.1", "no such user"));
    let mut plain = notifying("alice@example.com", &["nobody@example.net"], ORIGINAL);
    plain.options.notify_sender = false;
    settle(&*store, plain, vec![failed()]).await;
    for null in ["<>", ""] {
        settle(
            &*store,
            notifying(null, &["nobody@example.net"], ORIGINAL),
            vec![failed()],
        )
        .await;
    }
    settle(
        &*store,
        notifying("alice@example.com", &["bob@example.net"], ORIGINAL),
        vec![Outcome::Delivered(reply(250, "2.0.0", "ok"))],
    )
    .await;
    assert!(store.owed_notifications(10).await.unwrap().is_empty());
    let reporter = Reporter::new("client.example.org");
    assert!(
        enqueue_owed(&*store, &reporter, t(5))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.stats().await.unwrap().messages, 4, "nothing enqueued");
}

// ---- Enqueued exactly once.

#[tokio::test]
async fn a_notification_is_enqueued_once_however_often_it_is_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let store = files_only(dir.path()).await;
    let (id, _) = settle(
        &store,
        notifying("<alice@example.com>", &["nobody@example.net"], ORIGINAL),
        vec![Outcome::Failed(reply(550, "5.1.1", "no such user"))],
    )
    .await;
    let first = store
        .enqueue_notification(&id, notification("alice@example.com"), t(5))
        .await
        .unwrap()
        .expect("owed, so enqueued");
    let second = store
        .enqueue_notification(&id, notification("alice@example.com"), t(6))
        .await
        .unwrap();
    assert_eq!(second, None, "already notified");
    assert!(store.owed_notifications(10).await.unwrap().is_empty());
    assert_eq!(
        store.show(&id).await.unwrap().notification,
        Some(first.clone())
    );
    let dsn = store.show(&first).await.unwrap();
    assert_eq!(dsn.from, "<>");
    assert_eq!(dsn.recipients.len(), 1);
    assert_eq!(dsn.recipients[0].address, "alice@example.com");
    assert_eq!(dsn.recipients[0].state, RecipientState::Queued);
    // The second one's body was written, then removed: no orphan.
    assert_eq!(files_in(&dir.path().join("bodies")), 2);
    assert_eq!(files_in(&dir.path().join("tmp")), 0);
    // A notification is from the null reverse-path, and owes nothing.
    let mut from_someone = notification("alice@example.com");
    from_someone.from = "mallory@example.org".into();
    let refused = store.enqueue_notification(&id, from_someone, t(7)).await;
    assert!(matches!(refused, Err(Error::Misuse(_))), "{refused:?}");
    let unknown = MessageId::generate(t(0));
    let missing = store
        .enqueue_notification(&unknown, notification("alice@example.com"), t(7))
        .await;
    assert!(matches!(missing, Err(Error::NotFound(_))), "{missing:?}");
    assert_eq!(files_in(&dir.path().join("bodies")), 2);
}

async fn two_workers_on_one_queue_enqueue_one_notification_per_message(backend: Backend) {
    let a = backend.open().await;
    let b = backend.open().await;
    let n = 10;
    for i in 0..n {
        settle(
            &*a,
            notifying(
                &format!("<sender{i}@example.com>"),
                &["nobody@example.net"],
                ORIGINAL,
            ),
            vec![Outcome::Failed(reply(550, "5.1.1", "no such user"))],
        )
        .await;
    }
    let reporter = Reporter::new("client.example.org");
    let run = |store: Arc<dyn Store>| {
        let reporter = reporter.clone();
        tokio::spawn(async move { enqueue_owed(store.as_ref(), &reporter, t(5)).await })
    };
    let (ra, rb) = tokio::join!(run(a.clone()), run(b.clone()));
    let (ra, rb) = (ra.unwrap().unwrap(), rb.unwrap().unwrap());
    assert_eq!(ra.len() + rb.len(), n, "each message notified once in all");
    let mut notified: Vec<_> = ra.iter().chain(&rb).map(|x| x.message.clone()).collect();
    notified.sort();
    notified.dedup();
    assert_eq!(notified.len(), n);
    assert_eq!(a.stats().await.unwrap().messages, 2 * n as u64);
    // Each original and its one notification, and no other message.
    assert_eq!(a.stats().await.unwrap().messages, 2 * n as u64);
    assert!(a.owed_notifications(100).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_failed_transaction_leaves_no_body_and_the_notification_still_owed() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = SqliteSettings::default();
    settings.busy_timeout = Duration::from_millis(200);
    settings.inline_bodies = 0;
    let store = SqliteStore::open_with(dir.path(), settings).await.unwrap();
    let (id, _) = settle(
        &store,
        notifying("alice@example.com", &["nobody@example.net"], ORIGINAL),
        vec![Outcome::Failed(reply(550, "5.1.1", "no such user"))],
    )
    .await;
    // Another process holds the write lock past the busy timeout.
    let mut holder = connect(dir.path()).await;
    sqlx::raw_sql("BEGIN IMMEDIATE")
        .execute(&mut holder)
        .await
        .unwrap();
    let err = store
        .enqueue_notification(&id, notification("alice@example.com"), t(5))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Storage { .. }), "{err}");
    assert_eq!(
        files_in(&dir.path().join("bodies")),
        1,
        "the original's only"
    );
    assert_eq!(files_in(&dir.path().join("tmp")), 0);
    sqlx::raw_sql("ROLLBACK")
        .execute(&mut holder)
        .await
        .unwrap();
    holder.close().await.unwrap();
    assert_eq!(store.owed_notifications(10).await.unwrap().len(), 1);
    assert!(
        store
            .enqueue_notification(&id, notification("alice@example.com"), t(6))
            .await
            .unwrap()
            .is_some()
    );
}

async fn purge_keeps_a_message_until_its_notification_is_enqueued(b: Backend) {
    let store = b.open().await;
    let (id, _) = settle(
        &*store,
        notifying("alice@example.com", &["nobody@example.net"], ORIGINAL),
        vec![Outcome::Failed(reply(550, "5.1.1", "no such user"))],
    )
    .await;
    assert!(store.purge_finished(t(100)).await.unwrap().is_empty());
    let dsn = store
        .enqueue_notification(&id, notification("alice@example.com"), t(5))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(store.purge_finished(t(100)).await.unwrap(), [id]);
    assert!(store.show(&dsn).await.is_ok(), "the notification waits");
}

// ---- What the notification returns of the original.

/// The third part of the notification enqueued for `id`, with its type.
async fn third_part(store: &dyn Store, id: &MessageId) -> (String, String) {
    let dsn = store.show(id).await.unwrap().notification.unwrap();
    let mut body = store.open_body(&dsn).await.unwrap();
    let text = String::from_utf8(read_all(&mut *body).await.unwrap()).unwrap();
    let boundary = text
        .split("boundary=\"")
        .nth(1)
        .and_then(|b| b.split('"').next())
        .unwrap()
        .to_owned();
    let parts: Vec<&str> = text.split(&format!("\r\n--{boundary}")).collect();
    assert_eq!(parts.len(), 5, "preamble, three parts, close: {text}");
    assert_eq!(parts[4], "--\r\n");
    let (headers, content) = parts[3].split_once("\r\n\r\n").unwrap();
    let kind = headers
        .lines()
        .find_map(|l| l.strip_prefix("Content-Type: "))
        .unwrap()
        .to_owned();
    (kind, content.to_owned())
}

async fn the_notification_returns_the_header_section_or_for_ret_full_the_message(b: Backend) {
    let store = b.open().await;
    let reporter = Reporter::new("client.example.org");
    let failed = || vec![Outcome::Failed(reply(550, "5.1.1", "no such user"))];

    let (headers_only, _) = settle(
        &*store,
        notifying("alice@example.com", &["nobody@example.net"], ORIGINAL),
        failed(),
    )
    .await;
    let mut full = notifying("alice@example.com", &["nobody@example.net"], ORIGINAL);
    full.options.dsn_ret_full = Some(true);
    let (whole, _) = settle(&*store, full, failed()).await;
    let big_body = format!(
        "Subject: big\r\n\r\n{}",
        "0123456789abcdef".repeat(FULL_LIMIT as usize / 16 + 1)
    );
    let mut big = notifying("alice@example.com", &["nobody@example.net"], &big_body);
    big.options.dsn_ret_full = Some(true);
    let (too_big, _) = settle(&*store, big, failed()).await;
    let mut eight = notifying(
        "alice@example.com",
        &["nobody@example.net"],
        "Subject: caf\u{e9}\r\n\r\nd\u{e9}j\u{e0} vu\r\n",
    );
    eight.options.body = BodyKind::EightBit;
    eight.options.dsn_ret_full = Some(true);
    let (eight_bit, _) = settle(&*store, eight, failed()).await;

    let done = enqueue_owed(&*store, &reporter, t(5)).await.unwrap();
    assert_eq!(done.len(), 4);
    assert!(
        done.iter()
            .all(|n| n.to == "alice@example.com" && n.recipients == ["nobody@example.net"])
    );

    let (kind, content) = third_part(&*store, &headers_only).await;
    assert_eq!(kind, "text/rfc822-headers");
    assert_eq!(
        content,
        "From: alice@example.com\r\nTo: bob@example.net\r\nSubject: lunch\r\n"
    );
    let (kind, content) = third_part(&*store, &whole).await;
    assert_eq!(kind, "message/rfc822");
    assert_eq!(content, ORIGINAL);
    let (kind, content) = third_part(&*store, &too_big).await;
    assert_eq!(kind, "text/rfc822-headers", "over {FULL_LIMIT} octets");
    assert_eq!(content, "Subject: big\r\n");
    let (kind, content) = third_part(&*store, &eight_bit).await;
    assert_eq!(kind, "message/rfc822");
    assert!(content.contains("d\u{e9}j\u{e0} vu"), "{content}");
    // An 8-bit original makes its notification 8-bit; the others are 7-bit.
    let kind_of = |id: &MessageId| {
        let id = id.clone();
        let store = &store;
        async move {
            let dsn = store.show(&id).await.unwrap().notification.unwrap();
            store.show(&dsn).await.unwrap().options.body
        }
    };
    assert_eq!(kind_of(&eight_bit).await, BodyKind::EightBit);
    assert_eq!(kind_of(&whole).await, BodyKind::SevenBit);
}

#[tokio::test]
async fn an_unreadable_original_is_notified_without_its_headers() {
    let dir = tempfile::tempdir().unwrap();
    let store = files_only(dir.path()).await;
    let (id, _) = settle(
        &store,
        notifying("alice@example.com", &["nobody@example.net"], ORIGINAL),
        vec![Outcome::Failed(reply(550, "5.1.1", "no such user"))],
    )
    .await;
    std::fs::remove_file(dir.path().join("bodies").join(id.as_str())).unwrap();
    let reporter = Reporter::new("client.example.org");
    let done = enqueue_owed(&store, &reporter, t(5)).await.unwrap();
    assert_eq!(done.len(), 1);
    let mut body = store.open_body(&done[0].notification).await.unwrap();
    let text = String::from_utf8(read_all(&mut *body).await.unwrap()).unwrap();
    assert!(
        text.contains("Final-Recipient: rfc822; nobody@example.net"),
        "{text}"
    );
    assert!(!text.contains("rfc822-headers"), "{text}");
}

// ---- The runner sends it.

#[tokio::test]
async fn the_runner_delivers_the_notification_from_the_null_sender_to_the_sender() {
    use smtp_testkit::capture::{CaptureConfig, CaptureServer};
    let server = CaptureServer::start(CaptureConfig {
        reject: vec![("nobody@example.net".into(), "550 5.1.1 no such user".into())],
        ..CaptureConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(dir.path()).await.unwrap());
    let id = store
        .enqueue(
            vec![notifying(
                "<alice@example.com>",
                &["bob@example.net", "nobody@example.net"],
                ORIGINAL,
            )],
            SystemTime::now(),
        )
        .await
        .unwrap()
        .remove(0);
    let relay = smtp_tls::Server::new("127.0.0.1", server.addr().port())
        .with_policy(smtp_core::TlsPolicy::None)
        .with_client_id(smtp_core::ehlo::ClientId::parse("client.example.org").unwrap());
    let events = Arc::new(Mutex::new(Vec::new()));
    let seen = events.clone();
    let runner = Runner::new(store.clone(), relay, RunnerConfig::default())
        .with_observer(move |e| seen.lock().unwrap().push(e.clone()));
    runner.run_due(&Stop::new()).await.unwrap();

    let messages = server.messages();
    assert_eq!(messages.len(), 2, "the message, then the notification");
    let dsn = &messages[1];
    assert_eq!(dsn.mail_from, "");
    assert_eq!(dsn.rcpt_to, ["alice@example.com"]);
    let text = String::from_utf8_lossy(&dsn.data);
    assert!(
        text.contains("Reporting-MTA: dns; client.example.org"),
        "{text}"
    );
    assert!(
        text.contains("Final-Recipient: rfc822; nobody@example.net"),
        "{text}"
    );
    assert!(text.contains("Status: 5.1.1"), "{text}");
    assert!(
        !text.contains("Final-Recipient: rfc822; bob@example.net"),
        "{text}"
    );
    let notified: Vec<_> = events
        .lock()
        .unwrap()
        .iter()
        .filter_map(|e| match e {
            RunEvent::Notified {
                message,
                notification,
                to,
                ..
            } => Some((message.clone(), notification.clone(), to.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(notified.len(), 1);
    assert_eq!(notified[0].0, id);
    assert_eq!(notified[0].2, "alice@example.com");
    let dsn_info = store.show(&notified[0].1).await.unwrap();
    assert_eq!(dsn_info.recipients[0].state, RecipientState::Delivered);
    // A second run sends nothing more.
    runner.run_due(&Stop::new()).await.unwrap();
    assert_eq!(server.messages().len(), 2);
}

both!();

both!(
    two_workers_on_one_queue_enqueue_one_notification_per_message,
    the_last_recipient_final_with_a_failure_makes_a_notification_owed,
    an_expiry_after_deferrals_makes_a_notification_owed,
    none_is_owed_without_the_option_for_a_null_sender_or_with_every_recipient_delivered,
    purge_keeps_a_message_until_its_notification_is_enqueued,
    the_notification_returns_the_header_section_or_for_ret_full_the_message,
);
