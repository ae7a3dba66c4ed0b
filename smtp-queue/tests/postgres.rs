//! What only the PostgreSQL store has to prove: workers on separate
//! handles (as on separate hosts) claiming at once, bodies in chunks,
//! migrations, the outcome log's table, the workers' activity. On a
//! throwaway cluster (smtp-testkit), each test in a database of its own.

use std::collections::HashSet;
use std::io;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use sha2::{Digest, Sha256};
use smtp_core::delivery::{BodySource, MemoryBody};
use smtp_queue::{
    Attempt, Body, Error, MessageOptions, NewMessage, Outcome, PG_SCHEMA_VERSION, PgSettings,
    PgStore, RecipientId, RecipientState, Store,
};
use smtp_testkit::postgres::Cluster;
use sqlx::Connection;

mod common;

const LEASE: Duration = Duration::from_secs(30);

fn t(s: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + s)
}

fn message(to: &[String], body: Body) -> NewMessage {
    NewMessage {
        from: "alice@example.com".into(),
        to: to.to_vec(),
        body,
        options: MessageOptions::default(),
    }
}

fn small(to: &[&str]) -> NewMessage {
    let to: Vec<String> = to.iter().map(|s| (*s).to_owned()).collect();
    message(
        &to,
        Body::Source(Box::new(MemoryBody::new("Subject: x\r\n\r\nx\r\n"))),
    )
}

async fn sql(url: &str) -> sqlx::PgConnection {
    sqlx::PgConnection::connect(url).await.unwrap()
}

fn ok() -> Outcome {
    Outcome::Delivered(Attempt {
        code: Some(250),
        text: "ok".into(),
        ..Attempt::default()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_on_separate_handles_claiming_at_once_never_share_a_recipient() {
    let url = Cluster::shared().fresh_database();
    let first = PgStore::open(&url).await.unwrap();
    let batch: Vec<NewMessage> = (0..200)
        .map(|i| small(&[&format!("a{i}@example.net"), &format!("b{i}@example.org")]))
        .collect();
    first.enqueue(batch, t(0)).await.unwrap();
    // Four workers, each on its own handle (its own connections), claim
    // in small bites at once, round after round, leases expiring between
    // rounds so recipients are taken over again and again.
    let mut seen_generations = HashSet::new();
    let mut total = 0usize;
    for round in 0..6u64 {
        let now = t(round * 100);
        let mut tasks = Vec::new();
        for w in 0..4 {
            let url = url.clone();
            tasks.push(tokio::spawn(async move {
                let store = PgStore::open(&url).await.unwrap();
                let mut held = Vec::new();
                loop {
                    let claimed = store
                        .claim_due(now, 7, &format!("w{w}"), LEASE)
                        .await
                        .unwrap();
                    if claimed.is_empty() {
                        break;
                    }
                    held.extend(claimed);
                }
                store.close().await;
                held
            }));
        }
        let mut recipients = HashSet::new();
        for task in tasks {
            for c in task.await.unwrap() {
                seen_generations.insert(c.lease.generation);
                for r in &c.recipients {
                    assert!(
                        recipients.insert(r.id),
                        "round {round}: recipient {} claimed twice",
                        r.id
                    );
                }
            }
        }
        assert_eq!(recipients.len(), 400, "round {round}: every recipient once");
        total += recipients.len();
    }
    assert_eq!(total, 2400);
    assert!(seen_generations.len() >= 6 * 4, "a generation per claim");
    let stats = first.stats().await.unwrap();
    assert_eq!(stats.count(RecipientState::Delivering), 400);
}

#[tokio::test]
async fn a_result_under_a_stale_generation_is_refused_from_another_handle() {
    let url = Cluster::shared().fresh_database();
    let (a, b) = (
        PgStore::open(&url).await.unwrap(),
        PgStore::open(&url).await.unwrap(),
    );
    a.enqueue(vec![small(&["bob@example.net"])], t(0))
        .await
        .unwrap();
    let old = a
        .claim_due(t(0), 1, "host-a", LEASE)
        .await
        .unwrap()
        .remove(0);
    let new = b
        .claim_due(t(31), 1, "host-b", LEASE)
        .await
        .unwrap()
        .remove(0);
    assert!(new.lease.generation > old.lease.generation);
    let rid = old.recipients[0].id;
    for attempt in [
        a.record(&old.lease, vec![(rid, ok())], t(32)).await,
        a.renew(&old.lease, t(90), t(32)).await.map(|_| ()),
    ] {
        assert!(
            matches!(attempt, Err(Error::StaleLease { generation, .. }) if generation == old.lease.generation),
            "{attempt:?}"
        );
    }
    assert_eq!(a.release(&old.lease, None, t(32)).await.unwrap(), 0);
    b.record(&new.lease, vec![(rid, ok())], t(33))
        .await
        .unwrap();
    let shown = a.show(&old.lease.message).await.unwrap();
    assert_eq!(shown.recipients[0].state, RecipientState::Delivered);
    // A generation no claim ever handed out is refused too.
    let forged = smtp_queue::Lease {
        generation: new.lease.generation + 1000,
        ..new.lease.clone()
    };
    assert!(matches!(
        b.record(&forged, vec![(RecipientId(rid.0), ok())], t(34))
            .await,
        Err(Error::StaleLease { .. })
    ));
}

/// `len` octets of a pattern, generated as read (never held), with the
/// SHA-256 of what it handed out.
struct Generated {
    len: u64,
    pos: u64,
    hasher: Sha256,
}

impl Generated {
    fn new(len: u64) -> Self {
        Self {
            len,
            pos: 0,
            hasher: Sha256::new(),
        }
    }
}

#[async_trait]
impl BodySource for Generated {
    async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = usize::try_from((self.len - self.pos).min(buf.len() as u64)).unwrap();
        for (i, b) in buf[..n].iter_mut().enumerate() {
            let p = self.pos + i as u64;
            *b = (p.wrapping_mul(2_654_435_761) >> 13) as u8;
        }
        self.hasher.update(&buf[..n]);
        self.pos += n as u64;
        Ok(n)
    }
    async fn rewind(&mut self) -> io::Result<()> {
        self.pos = 0;
        self.hasher = Sha256::new();
        Ok(())
    }
}

/// This process's resident set and its peak, in KiB.
fn memory() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap()
    };
    (field("VmRSS:"), field("VmHWM:"))
}

#[tokio::test]
async fn a_64_mib_body_streams_through_chunks_in_both_directions_without_being_held() {
    const SIZE: u64 = 64 * 1024 * 1024;
    let url = Cluster::shared().fresh_database();
    let store = PgStore::open(&url).await.unwrap();
    // Warm up (pool, statements), then measure.
    store
        .enqueue(vec![small(&["w@example.net"])], t(0))
        .await
        .unwrap();
    let (rss_before, _) = memory();
    let mut source = Generated::new(SIZE);
    // The source's own digest, taken as it is read by the enqueue.
    let to = vec!["big@example.net".to_owned()];
    let body = Body::Source(Box::new(Generated::new(SIZE)));
    let id = store
        .enqueue(vec![message(&to, body)], t(1))
        .await
        .unwrap()
        .remove(0);
    let mut sink = [0u8; 64 * 1024];
    while source.read(&mut sink).await.unwrap() > 0 {}
    let expected = format!("{:x}", source.hasher.finalize());

    let mut conn = sql(&url).await;
    let (chunks, largest): (i64, i32) = sqlx::query_as(
        "SELECT COUNT(*), MAX(octet_length(data)) FROM body_chunks WHERE message_id = $1",
    )
    .bind(id.as_str())
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(chunks, 256, "64 MiB in 256 KiB chunks");
    assert_eq!(largest, 256 * 1024);

    let mut body = store.open_body(&id).await.unwrap();
    let mut hasher = Sha256::new();
    let mut read = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = body.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        read += n as u64;
    }
    assert_eq!(read, SIZE);
    assert_eq!(format!("{:x}", hasher.finalize()), expected);
    let (_, peak) = memory();
    let grown = peak.saturating_sub(rss_before);
    assert!(
        grown < 24 * 1024,
        "the peak grew by {grown} KiB for a {} KiB body",
        SIZE / 1024
    );
    assert_eq!(store.show(&id).await.unwrap().body_size, SIZE);
}

#[tokio::test]
async fn a_corrupted_or_missing_chunk_is_that_messages_error() {
    let url = Cluster::shared().fresh_database();
    let mut settings = PgSettings::default();
    settings.chunk_size = 4096;
    let store = PgStore::open_with(&url, settings).await.unwrap();
    let bytes: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
    let to = vec!["a@example.net".to_owned()];
    let ids = store
        .enqueue(
            vec![
                message(&to, Body::Source(Box::new(MemoryBody::new(bytes.clone())))),
                message(&to, Body::Source(Box::new(MemoryBody::new(bytes.clone())))),
                message(&to, Body::Source(Box::new(MemoryBody::new(bytes.clone())))),
            ],
            t(0),
        )
        .await
        .unwrap();
    let mut whole = store.open_body(&ids[0]).await.unwrap();
    assert_eq!(common::read_all(&mut *whole).await.unwrap(), bytes);
    let mut conn = sql(&url).await;
    // One byte changed in the middle chunk: the size holds, the digest not.
    sqlx::query(
        "UPDATE body_chunks SET data = set_byte(data, 7, (get_byte(data, 7) + 1) % 256)
         WHERE message_id = $1 AND seq = 2",
    )
    .bind(ids[1].as_str())
    .execute(&mut conn)
    .await
    .unwrap();
    let mut body = store.open_body(&ids[1]).await.unwrap();
    let err = common::read_all(&mut *body).await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    assert!(err.to_string().contains("digest"), "{err}");
    // A chunk gone: refused at open.
    sqlx::query("DELETE FROM body_chunks WHERE message_id = $1 AND seq = 3")
        .bind(ids[2].as_str())
        .execute(&mut conn)
        .await
        .unwrap();
    let err = store.open_body(&ids[2]).await.err().unwrap();
    assert!(
        matches!(&err, Error::Corrupt { message: Some(id), .. } if *id == ids[2]),
        "{err}"
    );
    // The others still read.
    let mut again = store.open_body(&ids[0]).await.unwrap();
    assert_eq!(common::read_all(&mut *again).await.unwrap(), bytes);
}

#[tokio::test]
async fn a_schema_newer_than_this_build_is_refused_saying_to_upgrade() {
    let url = Cluster::shared().fresh_database();
    let store = PgStore::open(&url).await.unwrap();
    store.close().await;
    let mut conn = sql(&url).await;
    sqlx::query("INSERT INTO schema_version (version) VALUES ($1)")
        .bind(PG_SCHEMA_VERSION + 1)
        .execute(&mut conn)
        .await
        .unwrap();
    for err in [
        PgStore::open(&url).await.unwrap_err(),
        PgStore::connect(&url).await.unwrap_err(),
    ] {
        let text = err.to_string();
        assert!(
            matches!(err, Error::DatabaseSchemaTooNew { found, supported, .. }
                if found == PG_SCHEMA_VERSION + 1 && supported == PG_SCHEMA_VERSION),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "this queue's schema is version {}, this smtp knows up to {}: upgrade smtp",
                PG_SCHEMA_VERSION + 1,
                PG_SCHEMA_VERSION
            )),
            "{text}"
        );
    }
}

/// A version-1 database (before connection slots) is upgraded on open:
/// its messages kept, the `slots` table made, takes counted in it.
#[tokio::test]
async fn a_version_1_database_gets_connection_slots_on_open_and_keeps_its_messages() {
    let url = Cluster::shared().fresh_database();
    let store = PgStore::open(&url).await.unwrap();
    let id = store
        .enqueue(vec![small(&["bob@example.net"])], t(0))
        .await
        .unwrap()
        .remove(0);
    store.close().await;
    // Back to version 1: its tables, its version row.
    let mut conn = sql(&url).await;
    sqlx::query("DROP TABLE slots")
        .execute(&mut conn)
        .await
        .unwrap();
    tls_results_as_in_version_2(&mut conn).await;
    sqlx::query("DELETE FROM schema_version WHERE version > 1")
        .execute(&mut conn)
        .await
        .unwrap();
    assert!(matches!(
        PgStore::connect(&url).await,
        Err(Error::Misuse(_))
    ));
    let store = PgStore::open(&url).await.unwrap();
    let versions: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM schema_version ORDER BY version")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    assert_eq!(versions, [1, 2, 3]);
    assert_eq!(PG_SCHEMA_VERSION, 3);
    assert_eq!(store.show(&id).await.unwrap().recipients.len(), 1);
    let slot = store
        .take_slot("mx:a.test", 1, "w", t(60), t(0))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        store
            .take_slot("mx:a.test", 1, "w2", t(60), t(1))
            .await
            .unwrap(),
        None
    );
    assert_eq!(store.slots(None, t(1)).await.unwrap(), [slot]);
}

/// `tls_results` as versions 1 and 2 made it (no addresses in its key),
/// holding one count of 4 `certificate-expired` sessions to
/// mx1.example.com today.
async fn tls_results_as_in_version_2(conn: &mut sqlx::PgConnection) {
    let day = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 86_400;
    for statement in [
        "DROP TABLE tls_results".to_owned(),
        "CREATE TABLE tls_results (
            day           BIGINT NOT NULL,
            policy_domain TEXT NOT NULL,
            policy_type   TEXT NOT NULL,
            policy_string TEXT NOT NULL,
            mx_host       TEXT NOT NULL,
            receiving_mx  TEXT NOT NULL,
            result        TEXT NOT NULL,
            count         BIGINT NOT NULL,
            PRIMARY KEY (day, policy_domain, policy_type, policy_string, receiving_mx, result)
        )"
        .to_owned(),
        format!(
            "INSERT INTO tls_results VALUES ({day}, 'example.com', 'sts', '[]', '[]',
                 'mx1.example.com', 'certificate-expired', 4)"
        ),
    ] {
        sqlx::query(&statement).execute(&mut *conn).await.unwrap();
    }
}

/// A version-2 database (TLS-RPT counted without addresses) is upgraded
/// to version 3 on open: its counts kept, without addresses; new counts
/// keyed by their addresses too.
#[tokio::test]
async fn a_version_2_database_keeps_its_tls_results_and_counts_them_by_address() {
    use std::net::IpAddr;

    use smtp_core::delivery::tls_rpt::ResultType;
    use smtp_queue::tls_report::TlsResult;

    let url = Cluster::shared().fresh_database();
    PgStore::open(&url).await.unwrap().close().await;
    let mut conn = sql(&url).await;
    tls_results_as_in_version_2(&mut conn).await;
    sqlx::query("DELETE FROM schema_version WHERE version > 2")
        .execute(&mut conn)
        .await
        .unwrap();
    let store = PgStore::open(&url).await.unwrap();
    let versions: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM schema_version ORDER BY version")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    assert_eq!(versions, [1, 2, 3]);
    let ip = |s: &str| -> Option<IpAddr> { Some(s.parse().unwrap()) };
    let counted = |sending, receiving, count| TlsResult {
        policy_domain: "example.com".into(),
        policy_type: "sts".into(),
        policy_string: Vec::new(),
        mx_host: Vec::new(),
        receiving_mx: "mx1.example.com".into(),
        sending_ip: sending,
        receiving_ip: receiving,
        result: ResultType::CertificateExpired,
        count,
    };
    let a = counted(ip("127.0.0.1"), ip("127.0.0.2"), 1);
    let b = counted(ip("127.0.0.1"), ip("::1"), 2);
    let now = SystemTime::now();
    store
        .add_tls_results(&[a.clone(), b, a], now)
        .await
        .unwrap();
    let mut rows: Vec<TlsResult> = store
        .tls_results(
            now - Duration::from_secs(1),
            now + Duration::from_secs(1),
            None,
        )
        .await
        .unwrap()
        .into_iter()
        .map(|(_, r)| r)
        .collect();
    rows.sort_by_key(|r| (r.receiving_ip, r.count));
    assert_eq!(
        rows,
        [
            counted(None, None, 4),
            counted(ip("127.0.0.1"), ip("127.0.0.2"), 2),
            counted(ip("127.0.0.1"), ip("::1"), 2),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_starting_at_once_on_a_new_database_all_open_it_and_it_is_migrated_once() {
    let url = Cluster::shared().fresh_database();
    // Not migrated yet: a reader refuses it.
    assert!(matches!(
        PgStore::connect(&url).await,
        Err(Error::Misuse(_))
    ));
    let opens: Vec<_> = (0..6)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { PgStore::open(&url).await.map(|_| ()) })
        })
        .collect();
    for o in opens {
        o.await.unwrap().unwrap();
    }
    let mut conn = sql(&url).await;
    let versions: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM schema_version ORDER BY version")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    assert_eq!(versions, (1..=PG_SCHEMA_VERSION).collect::<Vec<_>>());
    PgStore::connect(&url).await.unwrap();
}

#[tokio::test]
async fn the_outcome_log_is_a_table_written_with_each_change() {
    let url = Cluster::shared().fresh_database();
    let store = PgStore::open(&url).await.unwrap();
    let id = store
        .enqueue(vec![small(&["bob@example.net", "eve@example.org"])], t(0))
        .await
        .unwrap()
        .remove(0);
    let c = store
        .claim_due(t(1), 10, "w1", LEASE)
        .await
        .unwrap()
        .remove(0);
    store
        .record(&c.lease, vec![(c.recipients[0].id, ok())], t(2))
        .await
        .unwrap();
    // A stale attempt writes nothing, to the queue or the log.
    let stale = smtp_queue::Lease {
        generation: c.lease.generation - 1,
        ..c.lease.clone()
    };
    assert!(
        store
            .record(&stale, vec![(c.recipients[1].id, ok())], t(3))
            .await
            .is_err()
    );
    let log = store.outcomes(0, 100).await.unwrap();
    let events: Vec<(&str, &str)> = log
        .iter()
        .map(|(_, e)| (e.event.as_str(), e.rcpt.as_str()))
        .collect();
    assert_eq!(
        events,
        [
            ("enqueued", "bob@example.net"),
            ("enqueued", "eve@example.org"),
            ("claimed", "bob@example.net"),
            ("claimed", "eve@example.org"),
            ("delivered", "bob@example.net"),
        ]
    );
    assert!(log.iter().all(|(_, e)| e.message == id));
    assert!(log.windows(2).all(|w| w[0].0 < w[1].0), "numbered in order");
    // Read on from a position.
    let rest = store.outcomes(log[2].0, 100).await.unwrap();
    assert_eq!(rest.len(), 2);
    assert_eq!(rest[1].1.worker.as_deref(), Some("w1"));
}

#[tokio::test]
async fn each_worker_s_heartbeat_and_leases_are_kept_for_stats() {
    let url = Cluster::shared().fresh_database();
    let store = PgStore::open(&url).await.unwrap();
    store
        .enqueue(
            vec![
                small(&["a@example.net", "b@example.net"]),
                small(&["c@example.org"]),
            ],
            t(0),
        )
        .await
        .unwrap();
    let one = store.claim_due(t(1), 1, "host-a/1", LEASE).await.unwrap();
    assert!(
        store
            .claim_due(t(2), 5, "host-b/7", LEASE)
            .await
            .unwrap()
            .len()
            == 1
    );
    assert!(
        store
            .claim_due(t(3), 5, "host-c/9", LEASE)
            .await
            .unwrap()
            .is_empty()
    );
    store.renew(&one[0].lease, t(60), t(20)).await.unwrap();
    let workers = store.workers(t(40)).await.unwrap();
    let names: Vec<&str> = workers.iter().map(|w| w.worker.as_str()).collect();
    assert_eq!(names, ["host-a/1", "host-b/7", "host-c/9"]);
    let a = &workers[0];
    assert_eq!((a.leases, a.recipients), (1, 2));
    assert_eq!(a.started, Some(t(1)));
    assert_eq!(a.last_seen, t(20), "the renewal is its heartbeat");
    assert_eq!(a.pid, Some(std::process::id()));
    assert!(a.host.as_deref().is_some_and(|h| !h.is_empty()));
    // b's lease ran out at t(32): it holds nothing live at t(40).
    assert_eq!((workers[1].leases, workers[1].recipients), (0, 0));
    assert_eq!((workers[2].leases, workers[2].last_seen), (0, t(3)));
}

#[tokio::test]
async fn a_fleet_shares_one_budget_across_handles() {
    use smtp_queue::rate::{Decision, Limit, Rate};
    let url = Cluster::shared().fresh_database();
    let limits = [Limit::new(
        Rate::new(10, Duration::from_secs(3600)).unwrap(),
    )];
    let handles: Vec<Arc<PgStore>> = futures_util::future::join_all(
        (0..3).map(|_| async { Arc::new(PgStore::open(&url).await.unwrap()) }),
    )
    .await;
    let takes: Vec<_> = (0..30)
        .map(|i| {
            let store = handles[i % 3].clone();
            tokio::spawn(async move {
                store
                    .take_budget("relay:smtp.example.com:587", &limits, 1, t(0))
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut allowed = 0;
    for take in takes {
        if take.await.unwrap() == Decision::Allowed {
            allowed += 1;
        }
    }
    // What one handle alone would allow from a fresh key of the same limits.
    let mut alone = 0;
    for _ in 0..30 {
        if handles[0]
            .take_budget("relay:other.example.com:587", &limits, 1, t(0))
            .await
            .unwrap()
            == Decision::Allowed
        {
            alone += 1;
        }
    }
    assert!(alone >= 1);
    assert_eq!(allowed, alone, "three handles share one budget");
}

#[tokio::test]
async fn open_chooses_the_store_by_the_url() {
    let url = Cluster::shared().fresh_database();
    assert!(smtp_queue::is_postgres_url(&url));
    assert!(smtp_queue::is_postgres_url("PostgreSQL://h/db"));
    assert!(!smtp_queue::is_postgres_url("/var/spool/smtp-queue"));
    let pg = smtp_queue::open(&url).await.unwrap();
    pg.enqueue(vec![small(&["a@example.net"])], t(0))
        .await
        .unwrap();
    // It is the database's: another handle by URL sees the message.
    assert_eq!(
        PgStore::connect(&url)
            .await
            .unwrap()
            .stats()
            .await
            .unwrap()
            .messages,
        1
    );
    let dir = tempfile::tempdir().unwrap();
    let sqlite = smtp_queue::open(dir.path().to_str().unwrap())
        .await
        .unwrap();
    assert_eq!(sqlite.stats().await.unwrap().messages, 0);
    assert!(dir.path().join("queue.db").is_file());
}
