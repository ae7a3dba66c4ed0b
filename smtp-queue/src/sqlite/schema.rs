//! The schema and its migrations, run on open in one transaction: a new
//! database gets version 1 and then every migration, an older one only
//! the migrations it lacks, so both end up with the same tables. A newer
//! schema than this build understands is refused before anything is
//! written.
//!
//! | version | change |
//! |---|---|
//! | 1 | messages, recipients, lease_generation, backoff |
//! | 2 | `messages.dsn_owed_ms`, `messages.dsn_id`: the delivery status notification owed to the sender, and the one enqueued |
//! | 3 | `message_bodies`: bodies up to `SqliteSettings::inline_bodies` octets, committed with their envelope |
//! | 4 | partial indexes: only waiting and leased recipients indexed by when they are due |
//! | 5 | `budgets`, `budget_takes`: sending budgets (relay rate limits: the pace's TAT, the log of takes the caps count) and the limits remembered per relay account |
//! | 6 | `merges`, `merge_recipients`: each key of `Store::enqueue_once` (a mail merge's message) and every recipient enqueued under it, committed with the batch |
//! | 7 | `throttles`: each destination's adaptive limits after a "slow down" reply |
//! | 8 | `mta_sts_policies`: MTA-STS policies cached per domain; `tls_results`: TLS-RPT session results counted per day |
//! | 9 | `slots`: each destination's connection slots held under a lease (`Store::take_slot`) |
//! | 10 | `tls_results.sending_ip`, `tls_results.receiving_ip`: TLS-RPT results counted per pair of addresses too (empty when unknown) |

use std::path::Path;

use sqlx::SqlitePool;

use super::SCHEMA_VERSION;
use crate::error::{Error, Result};
use crate::store::Migration;

/// The schema, version 1, as its first release created it (never edited:
/// later versions are migrations).
const SCHEMA_V1: &str = "
CREATE TABLE messages (
    id          TEXT PRIMARY KEY,
    sender      TEXT NOT NULL,
    options     TEXT NOT NULL,
    body_size   INTEGER NOT NULL,
    body_sha256 TEXT NOT NULL,
    created_ms  INTEGER NOT NULL
);
CREATE TABLE recipients (
    id               INTEGER PRIMARY KEY,
    message_id       TEXT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    position         INTEGER NOT NULL,
    address          TEXT NOT NULL,
    state            TEXT NOT NULL CHECK (state IN
                     ('queued', 'delivering', 'delivered', 'failed', 'deferred', 'expired')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_ms  INTEGER NOT NULL,
    lease_generation INTEGER,
    lease_worker     TEXT,
    lease_until_ms   INTEGER,
    last_code        INTEGER,
    last_enhanced    TEXT,
    last_text        TEXT,
    last_host        TEXT,
    last_tls         TEXT,
    updated_ms       INTEGER NOT NULL
);
CREATE INDEX recipients_by_message ON recipients (message_id, position);
CREATE INDEX recipients_due ON recipients (state, next_attempt_ms);
CREATE INDEX recipients_lease ON recipients (state, lease_until_ms);
CREATE TABLE lease_generation (value INTEGER NOT NULL);
INSERT INTO lease_generation (value) VALUES (0);
CREATE TABLE backoff (
    destination   TEXT PRIMARY KEY,
    not_before_ms INTEGER NOT NULL,
    failures      INTEGER NOT NULL,
    reason        TEXT NOT NULL,
    updated_ms    INTEGER NOT NULL
);
";

/// Each migration takes the schema from the version before it to its own.
/// Plain `ALTER TABLE … ADD COLUMN` and `CREATE INDEX`, as PostgreSQL
/// takes them too.
const MIGRATIONS: &[(i64, &str)] = &[
    (
        2,
        // dsn_owed_ms: set (to the time) in the transaction that made the
        // last recipient of a message that asked for it final, with one
        // failed or expired; cleared in the transaction that enqueues the
        // notification, which sets dsn_id to the notification's message id.
        "
ALTER TABLE messages ADD COLUMN dsn_owed_ms INTEGER;
ALTER TABLE messages ADD COLUMN dsn_id TEXT;
CREATE INDEX messages_dsn_owed ON messages (dsn_owed_ms);
",
    ),
    (
        3,
        // Small bodies inline: one disk flush commits a whole batch.
        "
CREATE TABLE message_bodies (
    message_id TEXT PRIMARY KEY REFERENCES messages(id) ON DELETE CASCADE,
    data       BLOB NOT NULL
);
",
    ),
    (
        4,
        // Partial indexes: only waiting and leased recipients are indexed
        // by when they are due, so a delivered one leaves an index and
        // enters none (a third of the index writes of a delivery). The
        // WHERE clauses are `WAITING` and `LEASED`, which the queries
        // repeat word for word so that SQLite uses them.
        "
DROP INDEX recipients_due;
DROP INDEX recipients_lease;
CREATE INDEX recipients_waiting ON recipients (next_attempt_ms) WHERE state IN ('queued', 'deferred');
CREATE INDEX recipients_leased ON recipients (lease_until_ms) WHERE state = 'delivering';
",
    ),
    (
        5,
        // Sending budgets (relay rate limits): one row per key (a relay
        // account) and limit (`Limit::key`), its TAT (GCRA, when it
        // paces), the limit itself, and whether it is one of the limits
        // last set for the key; and the log of each key's takes, which
        // the caps count (pruned on each take).
        "
CREATE TABLE budgets (
    key         TEXT NOT NULL,
    limit_key   TEXT NOT NULL,
    tat_ms      INTEGER,
    rate_count  INTEGER NOT NULL,
    rate_per_ms INTEGER NOT NULL,
    burst       INTEGER NOT NULL,
    remembered  INTEGER NOT NULL DEFAULT 0,
    updated_ms  INTEGER NOT NULL,
    PRIMARY KEY (key, limit_key)
);
CREATE TABLE budget_takes (
    key   TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    units INTEGER NOT NULL
);
CREATE INDEX budget_takes_by_key ON budget_takes (key, at_ms);
",
    ),
    (
        6,
        // Batches enqueued once under a key (`Store::enqueue_once`): the
        // key (a mail merge's message, not its list), and each recipient
        // enqueued under it (`local@domain`, the domain in lower-case
        // A-labels), committed with the batch: a re-run, or a longer list,
        // enqueues only the recipients not there.
        "
CREATE TABLE merges (
    id         INTEGER PRIMARY KEY,
    key        TEXT NOT NULL UNIQUE,
    created_ms INTEGER NOT NULL
);
CREATE TABLE merge_recipients (
    merge_id INTEGER NOT NULL REFERENCES merges(id) ON DELETE CASCADE,
    address  TEXT NOT NULL,
    PRIMARY KEY (merge_id, address)
);
",
    ),
    (
        7,
        // Traffic shaping: a destination's limits lowered after its
        // servers said "slow down" (crate::shaping::Throttle); the row is
        // deleted once they are back to the shape.
        "
CREATE TABLE throttles (
    destination     TEXT PRIMARY KEY,
    connections     INTEGER NOT NULL,
    rate_per_min    INTEGER,
    ceiling_per_min INTEGER,
    reason          TEXT NOT NULL,
    since_ms        INTEGER NOT NULL,
    cut_ms          INTEGER NOT NULL,
    until_ms        INTEGER NOT NULL
);
",
    ),
    (
        8,
        // MTA-STS (RFC 8461): the policy last fetched for each domain, kept
        // in force until it expires when a refresh fails. TLS-RPT (RFC
        // 8460): sessions counted by day, policy and result.
        "
CREATE TABLE mta_sts_policies (
    domain    TEXT PRIMARY KEY,
    id        TEXT NOT NULL,
    policy    TEXT NOT NULL,
    fetched_s INTEGER NOT NULL,
    expires_s INTEGER NOT NULL
);
CREATE TABLE tls_results (
    day           INTEGER NOT NULL,
    policy_domain TEXT NOT NULL,
    policy_type   TEXT NOT NULL,
    policy_string TEXT NOT NULL,
    mx_host       TEXT NOT NULL,
    receiving_mx  TEXT NOT NULL,
    result        TEXT NOT NULL,
    count         INTEGER NOT NULL,
    PRIMARY KEY (day, policy_domain, policy_type, policy_string, receiving_mx, result)
);
",
    ),
    (
        9,
        // Connection slots: one row per session to a destination, held by
        // a worker until `until_ms` (renewed while the session runs);
        // AUTOINCREMENT so that a generation is never given twice, even
        // after its row is removed (a stale holder never touches a new
        // slot).
        "
CREATE TABLE slots (
    generation  INTEGER PRIMARY KEY AUTOINCREMENT,
    destination TEXT NOT NULL,
    worker      TEXT NOT NULL,
    until_ms    INTEGER NOT NULL,
    taken_ms    INTEGER NOT NULL
);
CREATE INDEX slots_by_destination ON slots (destination, until_ms);
CREATE INDEX slots_by_expiry ON slots (until_ms);
",
    ),
    (
        10,
        // TLS-RPT: each session's addresses (`sending-mta-ip`,
        // `receiving-ip`, RFC 8460 section 4.3) in the key, empty when
        // unknown (a policy fetch, a host the policy left out, results
        // counted before this version). A new key: the table is made
        // again, its counts kept.
        "
CREATE TABLE tls_results_v10 (
    day           INTEGER NOT NULL,
    policy_domain TEXT NOT NULL,
    policy_type   TEXT NOT NULL,
    policy_string TEXT NOT NULL,
    mx_host       TEXT NOT NULL,
    receiving_mx  TEXT NOT NULL,
    sending_ip    TEXT NOT NULL DEFAULT '',
    receiving_ip  TEXT NOT NULL DEFAULT '',
    result        TEXT NOT NULL,
    count         INTEGER NOT NULL,
    PRIMARY KEY (day, policy_domain, policy_type, policy_string, receiving_mx,
                 sending_ip, receiving_ip, result)
);
INSERT INTO tls_results_v10 (day, policy_domain, policy_type, policy_string, mx_host,
                             receiving_mx, result, count)
    SELECT day, policy_domain, policy_type, policy_string, mx_host, receiving_mx, result, count
    FROM tls_results;
DROP TABLE tls_results;
ALTER TABLE tls_results_v10 RENAME TO tls_results;
",
    ),
];

/// Creates or upgrades the schema of the database at `db` through `pool`.
pub(super) async fn migrate(pool: &SqlitePool, db: &Path) -> Result<Migration> {
    let doing = "creating the queue's schema";
    // A queue already at this version needs no write lock: opening it
    // for `list` or `stats` must not wait for a runner's commit. (A new
    // file has no table yet: the read fails and the write path runs.)
    let current: Option<i64> = sqlx::query_scalar("SELECT MAX(version) FROM schema_version")
        .fetch_optional(pool)
        .await
        .ok()
        .flatten()
        .flatten();
    if current == Some(SCHEMA_VERSION) {
        return Ok(Migration {
            from: current,
            to: SCHEMA_VERSION,
        });
    }
    let mut tx = pool
        .begin_with("BEGIN IMMEDIATE")
        .await
        .map_err(|e| Error::db(doing, e))?;
    sqlx::query("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        .execute(&mut *tx)
        .await
        .map_err(|e| Error::db(doing, e))?;
    let found: Option<i64> = sqlx::query_scalar("SELECT MAX(version) FROM schema_version")
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| Error::db(doing, e))?;
    let mut version = match found {
        None => {
            sqlx::raw_sql(SCHEMA_V1)
                .execute(&mut *tx)
                .await
                .map_err(|e| Error::db(doing, e))?;
            1
        }
        Some(found) if found > SCHEMA_VERSION => {
            return Err(Error::SchemaTooNew {
                path: db.to_owned(),
                found,
                supported: SCHEMA_VERSION,
            });
        }
        Some(found) => found,
    };
    let fresh = found.is_none();
    let from = version;
    for (to, sql) in MIGRATIONS.iter().filter(|(to, _)| *to > from) {
        if !fresh {
            tracing::info!(path = %db.display(), from = version, to, "upgrading the queue's schema");
        }
        sqlx::raw_sql(sql)
            .execute(&mut *tx)
            .await
            .map_err(|e| Error::db("upgrading the queue's schema", e))?;
        version = *to;
    }
    if found != Some(version) {
        // One row per version reached: the table keeps the history.
        sqlx::query("INSERT INTO schema_version (version) VALUES ($1)")
            .bind(version)
            .execute(&mut *tx)
            .await
            .map_err(|e| Error::db(doing, e))?;
    }
    tx.commit().await.map_err(|e| Error::db(doing, e))?;
    Ok(Migration {
        from: found,
        to: version,
    })
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use smtp_core::delivery::MemoryBody;
    use sqlx::sqlite::SqliteConnectOptions;

    use crate::SqliteStore;
    use sqlx::{ConnectOptions, Connection};

    use super::*;
    use crate::store::{Body, MessageId, MessageOptions, NewMessage, Store};

    #[test]
    fn the_migrations_end_at_the_schema_version_in_order() {
        let mut last = 1;
        for (to, _) in MIGRATIONS {
            assert_eq!(*to, last + 1);
            last = *to;
        }
        assert_eq!(last, SCHEMA_VERSION);
    }

    #[tokio::test]
    async fn a_version_1_queue_is_upgraded_on_open_and_keeps_its_messages() {
        let dir = tempfile::tempdir().unwrap();
        // A version-1 queue with one message whose body is a file.
        let body = b"Subject: old\r\n\r\nfrom version 1\r\n";
        let id = MessageId::generate(SystemTime::now());
        std::fs::create_dir_all(dir.path().join("bodies")).unwrap();
        std::fs::write(dir.path().join("bodies").join(id.as_str()), body).unwrap();
        let mut conn = SqliteConnectOptions::new()
            .filename(dir.path().join("queue.db"))
            .create_if_missing(true)
            .connect()
            .await
            .unwrap();
        sqlx::raw_sql(SCHEMA_V1).execute(&mut conn).await.unwrap();
        sqlx::raw_sql(&format!(
            "CREATE TABLE schema_version (version INTEGER NOT NULL);
             INSERT INTO schema_version (version) VALUES (1);
             INSERT INTO messages VALUES ('{id}', 'a@example.com', '{{\"body\":\"sevenbit\",\"smtputf8\":false,\"require_tls\":false,\"dsn_envid\":null,\"dsn_ret_full\":null}}', {}, '{}', 0);
             INSERT INTO recipients (message_id, position, address, state, next_attempt_ms, updated_ms)
                VALUES ('{id}', 0, 'b@example.net', 'queued', 0, 0);",
            body.len(),
            crate::spool::digest(body),
        ))
        .execute(&mut conn)
        .await
        .unwrap();
        conn.close().await.unwrap();

        let store = SqliteStore::open(dir.path()).await.unwrap();
        let version: i64 = sqlx::query_scalar("SELECT MAX(version) FROM schema_version")
            .fetch_one(&store.pool)
            .await
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        assert_eq!(
            store.migration(),
            Migration {
                from: Some(1),
                to: SCHEMA_VERSION
            }
        );
        let info = store.show(&id).await.unwrap();
        assert_eq!(info.recipients[0].address, "b@example.net");
        let mut read = store.open_body(&id).await.unwrap();
        let mut buf = vec![0u8; 256];
        let n = read.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], body);
        // New messages use the new table.
        let ids = store
            .enqueue(
                vec![NewMessage {
                    from: "a@example.com".into(),
                    to: vec!["c@example.net".into()],
                    body: Body::Source(Box::new(MemoryBody::new("Subject: new\r\n\r\nx\r\n"))),
                    options: MessageOptions::default(),
                }],
                SystemTime::now(),
            )
            .await
            .unwrap();
        let inline: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM message_bodies WHERE message_id = $1")
                .bind(ids[0].as_str())
                .fetch_one(&store.pool)
                .await
                .unwrap();
        assert_eq!(inline, 1);
        // Opening again migrates nothing twice.
        drop(store);
        let store = SqliteStore::open(dir.path()).await.unwrap();
        let rows: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM schema_version WHERE version = $1")
                .bind(SCHEMA_VERSION)
                .fetch_one(&store.pool)
                .await
                .unwrap();
        assert_eq!(rows, 1);
        assert!(!store.migration().changed());
        // Version 4's partial indexes replaced version 1's.
        let indexes: Vec<String> = sqlx::query_scalar(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'recipients' AND sql IS NOT NULL ORDER BY name",
        )
        .fetch_all(&store.pool)
        .await
        .unwrap();
        assert_eq!(
            indexes,
            [
                "recipients_by_message",
                "recipients_leased",
                "recipients_waiting"
            ]
        );
        // Version 9's connection slots: the table, and takes that use it.
        let now = SystemTime::now();
        let until = now + std::time::Duration::from_secs(60);
        let slot = store
            .take_slot("mx:a.test", 1, "w", until, now)
            .await
            .unwrap()
            .unwrap();
        assert!(
            store
                .take_slot("mx:a.test", 1, "w", until, now)
                .await
                .unwrap()
                .is_none()
        );
        assert_eq!(store.slots(None, now).await.unwrap(), [slot]);
    }

    /// A version-9 queue (TLS-RPT counted without addresses) is upgraded
    /// to version 10 on open: its counts kept, without addresses; new
    /// counts keyed by their addresses too.
    #[tokio::test]
    async fn a_version_9_queue_keeps_its_tls_results_and_counts_them_by_address() {
        use std::net::IpAddr;

        use smtp_core::delivery::tls_rpt::ResultType;

        use crate::tls_report::TlsResult;

        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).await.unwrap();
        drop(store);
        // Back to version 9: its `tls_results`, one count in it.
        let mut conn = SqliteConnectOptions::new()
            .filename(dir.path().join("queue.db"))
            .connect()
            .await
            .unwrap();
        let now = SystemTime::now();
        let day = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            / 86_400;
        sqlx::raw_sql(&format!(
            "DROP TABLE tls_results;
             CREATE TABLE tls_results (
                 day           INTEGER NOT NULL,
                 policy_domain TEXT NOT NULL,
                 policy_type   TEXT NOT NULL,
                 policy_string TEXT NOT NULL,
                 mx_host       TEXT NOT NULL,
                 receiving_mx  TEXT NOT NULL,
                 result        TEXT NOT NULL,
                 count         INTEGER NOT NULL,
                 PRIMARY KEY (day, policy_domain, policy_type, policy_string, receiving_mx, result)
             );
             INSERT INTO tls_results VALUES ({day}, 'example.com', 'sts', '[]', '[]',
                 'mx1.example.com', 'certificate-expired', 4);
             DELETE FROM schema_version;
             INSERT INTO schema_version (version) VALUES (9);"
        ))
        .execute(&mut conn)
        .await
        .unwrap();
        conn.close().await.unwrap();

        let store = SqliteStore::open(dir.path()).await.unwrap();
        let version: i64 = sqlx::query_scalar("SELECT MAX(version) FROM schema_version")
            .fetch_one(&store.pool)
            .await
            .unwrap();
        assert_eq!(version, 10);
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
        store
            .add_tls_results(&[a.clone(), b.clone(), a.clone()], now)
            .await
            .unwrap();
        let day_start = now - std::time::Duration::from_secs(1);
        let mut rows: Vec<TlsResult> = store
            .tls_results(day_start, now + std::time::Duration::from_secs(1), None)
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

    /// The plan SQLite makes for `sql` (its `detail` column, joined), its
    /// parameters bound to `binds`.
    async fn plan(store: &SqliteStore, sql: &str, binds: &[&str]) -> String {
        let sql = format!("EXPLAIN QUERY PLAN {sql}");
        let mut query = sqlx::query(&sql);
        for b in binds {
            query = query.bind(*b);
        }
        let details = query.fetch_all(&store.pool).await.unwrap();
        details
            .iter()
            .map(|r| sqlx::Row::get::<String, _>(r, "detail"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    #[tokio::test]
    async fn the_due_queries_read_only_waiting_and_leased_recipients() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).await.unwrap();
        // Without statistics, as a fresh queue is: the partial indexes are
        // used because the queries repeat their conditions word for word.
        // A runner's claim and next due time (of its route) look each due
        // recipient's message up by its key: finished messages are never
        // read, nor are all messages scanned.
        let route = "relay:smtp.example.com:587 tls=certified";
        for (what, sql, binds) in [
            (
                "claim",
                super::super::claim::due_messages(false, false),
                vec!["0", "10"],
            ),
            (
                "claim for a route",
                super::super::claim::due_messages(true, false),
                vec!["0", "10", route],
            ),
            (
                "claim for a route, spread over domains",
                super::super::claim::due_messages(true, true),
                vec!["0", "10", route, "3"],
            ),
            ("next due", super::super::admin::next_due_sql(false), vec![]),
            (
                "next due for a route",
                super::super::admin::next_due_sql(true),
                vec![route],
            ),
        ] {
            let plan = plan(&store, &sql, &binds).await;
            assert!(
                plan.contains("recipients_waiting") && plan.contains("recipients_leased"),
                "{what}: {plan}"
            );
            assert!(reads_only_partial_indexes(&plan), "{what}: {plan}");
        }
        let per_route = plan(&store, &super::super::admin::waiting_by_route_sql(), &["0"]).await;
        assert!(per_route.contains("recipients_waiting"), "{per_route}");
        assert!(reads_only_partial_indexes(&per_route), "{per_route}");
    }

    /// Whether `plan` reads recipients only through the partial indexes
    /// (a search, or a walk of the index in order: it holds only waiting,
    /// or only leased, recipients) and messages only by their key.
    fn reads_only_partial_indexes(plan: &str) -> bool {
        plan.split("; ").all(|step| {
            let table = step
                .strip_prefix("SCAN ")
                .or_else(|| step.strip_prefix("SEARCH "))
                .and_then(|rest| rest.split(' ').next());
            match table {
                Some("recipients") => {
                    step.contains("INDEX recipients_waiting")
                        || step.contains("INDEX recipients_leased")
                }
                Some("messages" | "m") => step.starts_with("SEARCH ") && step.contains("(id=?)"),
                // A subquery's rows, a temporary b-tree.
                _ => true,
            }
        })
    }
}
