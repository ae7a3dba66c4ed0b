//! The embedded store: SQLite in WAL mode in a spool directory, beside the
//! body files.
//!
//! ```text
//! <spool>/queue.db         messages, recipients, leases, back-off (+ -wal, -shm)
//! <spool>/bodies/<id>      one body per message, written before the enqueue commits
//! <spool>/tmp/             bodies being written (left-overs are swept on open)
//! <spool>/outcomes.jsonl   the outcome log
//! ```
//!
//! Durability: `journal_mode=WAL` lets readers (`smtp queue list`) run
//! beside the writer; `synchronous=FULL` fsyncs the WAL at every commit —
//! under WAL the default `NORMAL` may lose the last commits on power loss,
//! and "enqueued" has to mean "on disk". Every writing transaction starts
//! with `BEGIN IMMEDIATE`, taking the write lock first, so two handles (two
//! runners) on one file wait for each other for up to the busy timeout
//! instead of failing on a lock upgrade; claims are made under that lock,
//! so they never overlap.
//!
//! The SQL is plain (numbered `$n` parameters, `RETURNING`, `ON CONFLICT`)
//! so that the PostgreSQL store can share it.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use smtp_core::address::{Mailbox, ReversePath};
use smtp_core::delivery::BodySource;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{Row, Sqlite, Transaction};

use crate::error::{Error, Result};
use crate::log::{Entry, OutcomeLog};
use crate::spool::{Spool, Written};
use crate::state::{RecipientState, Transition};
use crate::store::{
    Attempt, Backoff, Claimed, ClaimedRecipient, Lease, ListFilter, MessageId, MessageInfo,
    MessageOptions, NewMessage, Outcome, RecipientId, RecipientInfo, RetryTarget, Stats, Store,
    TlsFacts, from_millis, millis,
};

/// The schema version this build writes and understands.
pub const SCHEMA_VERSION: i64 = 1;

/// The schema, version 1.
const SCHEMA: &str = "
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

/// A recipient is due: waiting and its time has come, or its lease expired.
const DUE: &str = "((state IN ('queued', 'deferred') AND next_attempt_ms <= $1)
    OR (state = 'delivering' AND lease_until_ms <= $1))";

const RECIPIENT_COLUMNS: &str = "id, message_id, address, state, attempts, next_attempt_ms, lease_generation, \
    lease_worker, lease_until_ms, last_code, last_enhanced, last_text, last_host, last_tls, updated_ms";

/// Where the outcome log goes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum LogPlace {
    /// `outcomes.jsonl` in the spool directory.
    #[default]
    Spool,
    /// This file.
    Path(PathBuf),
    /// No log.
    Off,
}

/// How to open a SQLite queue.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SqliteSettings {
    /// How long a writer waits for another (in this process or another)
    /// before the operation fails with [`Error::Storage`]. Default 10 s.
    pub busy_timeout: Duration,
    /// Connections kept open. Default 4.
    pub max_connections: u32,
    /// The outcome log.
    pub log: LogPlace,
    /// Left-over temporary and orphaned body files older than this are
    /// removed on open. Default 1 hour.
    pub sweep_after: Duration,
}

impl Default for SqliteSettings {
    fn default() -> Self {
        Self {
            busy_timeout: Duration::from_secs(10),
            max_connections: 4,
            log: LogPlace::Spool,
            sweep_after: Duration::from_secs(3600),
        }
    }
}

/// The SQLite queue in a spool directory. Cheap to share behind an `Arc`;
/// several handles (in one process or several) on one directory cooperate
/// through the database's lock and the leases.
#[derive(Debug)]
pub struct SqliteStore {
    pool: SqlitePool,
    spool: Spool,
    log: Option<OutcomeLog>,
    db: PathBuf,
}

impl SqliteStore {
    /// Opens (creating) the queue in `dir` with the default settings.
    pub async fn open(dir: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(dir, SqliteSettings::default()).await
    }

    /// Opens (creating) the queue in `dir`. Refuses a schema newer than
    /// [`SCHEMA_VERSION`].
    pub async fn open_with(dir: impl AsRef<Path>, settings: SqliteSettings) -> Result<Self> {
        let dir = dir.as_ref();
        let spool = Spool::open(dir).await?;
        let db = dir.join("queue.db");
        let options = SqliteConnectOptions::new()
            .filename(&db)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(settings.busy_timeout)
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(settings.max_connections.max(1))
            .connect_with(options)
            .await
            .map_err(|e| Error::Storage {
                doing: "opening the queue database".into(),
                path: Some(db.clone()),
                source: Box::new(e),
            })?;
        let log = match &settings.log {
            LogPlace::Spool => Some(OutcomeLog::open(&dir.join("outcomes.jsonl"))?),
            LogPlace::Path(path) => Some(OutcomeLog::open(path)?),
            LogPlace::Off => None,
        };
        let store = Self {
            pool,
            spool,
            log,
            db,
        };
        store.migrate().await?;
        store.sweep(settings.sweep_after).await?;
        Ok(store)
    }

    /// The database file.
    pub fn database(&self) -> &Path {
        &self.db
    }

    /// The outcome log's file, if there is one.
    pub fn log_path(&self) -> Option<&Path> {
        self.log.as_ref().map(OutcomeLog::path)
    }

    /// Closes the connections (waiting for those in use).
    pub async fn close(&self) {
        self.pool.close().await;
    }

    async fn begin(&self, doing: &str) -> Result<Transaction<'static, Sqlite>> {
        self.pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(|e| Error::db(doing, e))
    }

    async fn migrate(&self) -> Result<()> {
        let doing = "creating the queue's schema";
        let mut tx = self.begin(doing).await?;
        sqlx::query("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            .execute(&mut *tx)
            .await
            .map_err(|e| Error::db(doing, e))?;
        let found: Option<i64> = sqlx::query_scalar("SELECT MAX(version) FROM schema_version")
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| Error::db(doing, e))?;
        match found {
            None => {
                sqlx::raw_sql(SCHEMA)
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| Error::db(doing, e))?;
                sqlx::query("INSERT INTO schema_version (version) VALUES ($1)")
                    .bind(SCHEMA_VERSION)
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| Error::db(doing, e))?;
            }
            Some(found) if found > SCHEMA_VERSION => {
                return Err(Error::SchemaTooNew {
                    path: self.db.clone(),
                    found,
                    supported: SCHEMA_VERSION,
                });
            }
            Some(_) => {}
        }
        tx.commit().await.map_err(|e| Error::db(doing, e))
    }

    /// Removes body files no message owns (an enqueue that crashed before
    /// its commit, a delete that crashed before removing the file) and
    /// temporary files, once older than `age`.
    async fn sweep(&self, age: Duration) -> Result<()> {
        self.spool.clear_tmp(age).await?;
        let bodies = self.spool.bodies();
        let mut entries = tokio::fs::read_dir(bodies)
            .await
            .map_err(|e| Error::io("listing the spool's bodies", bodies, e))?;
        while let Ok(Some(entry)) = entries.next_entry().await {
            let Some(id) = entry
                .file_name()
                .to_str()
                .and_then(|n| MessageId::parse(n).ok())
            else {
                continue;
            };
            let old = entry
                .metadata()
                .await
                .ok()
                .and_then(|m| m.modified().ok())
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|a| a >= age);
            if !old {
                continue;
            }
            let owned: Option<i64> = sqlx::query_scalar("SELECT 1 FROM messages WHERE id = $1")
                .bind(id.as_str())
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| Error::db("sweeping the spool", e))?;
            if owned.is_none() {
                tracing::info!(message = %id, "removing an orphaned body file");
                self.spool.remove(&id).await?;
            }
        }
        Ok(())
    }

    fn write_log(&self, entries: &[Entry]) {
        if let Some(log) = &self.log {
            if let Err(e) = log.append(entries) {
                // The change is committed; the log is its history, not its truth.
                tracing::warn!(error = %e, "the outcome log was not written");
            }
        }
    }

    async fn message_row(
        &self,
        tx: &mut Transaction<'static, Sqlite>,
        id: &MessageId,
    ) -> Result<Option<SqliteRow>> {
        sqlx::query("SELECT id, sender, options, body_size, body_sha256, created_ms FROM messages WHERE id = $1")
            .bind(id.as_str())
            .fetch_optional(&mut **tx)
            .await
            .map_err(|e| Error::db("reading a message", e))
    }
}

fn get<'r, T>(row: &'r SqliteRow, column: &str) -> Result<T>
where
    T: sqlx::Decode<'r, Sqlite> + sqlx::Type<Sqlite>,
{
    row.try_get(column)
        .map_err(|e| Error::corrupt(None, format!("column {column} does not read: {e}")))
}

fn state_of(row: &SqliteRow) -> Result<RecipientState> {
    let s: String = get(row, "state")?;
    RecipientState::from_str(&s).map_err(|e| Error::corrupt(None, e.to_string()))
}

fn attempts_of(row: &SqliteRow) -> Result<u32> {
    let n: i64 = get(row, "attempts")?;
    u32::try_from(n).map_err(|_| Error::corrupt(None, format!("{n} attempts")))
}

fn message_id_of(row: &SqliteRow, column: &str) -> Result<MessageId> {
    let s: String = get(row, column)?;
    MessageId::parse(&s).map_err(|_| Error::corrupt(None, format!("{s:?} is not a message id")))
}

fn options_of(row: &SqliteRow, id: &MessageId) -> Result<MessageOptions> {
    let s: String = get(row, "options")?;
    serde_json::from_str(&s)
        .map_err(|e| Error::corrupt(Some(id), format!("its options do not read: {e}")))
}

fn size_of(row: &SqliteRow) -> Result<u64> {
    let n: i64 = get(row, "body_size")?;
    u64::try_from(n).map_err(|_| Error::corrupt(None, format!("a body of {n} octets")))
}

fn recipient_of(row: &SqliteRow) -> Result<RecipientInfo> {
    let message = message_id_of(row, "message_id")?;
    let text: Option<String> = get(row, "last_text")?;
    let last = match text {
        None => None,
        Some(text) => {
            let tls: Option<String> = get(row, "last_tls")?;
            let tls = match tls {
                None => None,
                Some(t) => Some(serde_json::from_str::<TlsFacts>(&t).map_err(|e| {
                    Error::corrupt(Some(&message), format!("its TLS facts do not read: {e}"))
                })?),
            };
            let code: Option<i64> = get(row, "last_code")?;
            Some(Attempt {
                code: code.and_then(|c| u16::try_from(c).ok()),
                enhanced: get(row, "last_enhanced")?,
                text,
                host: get(row, "last_host")?,
                tls,
            })
        }
    };
    let state = state_of(row)?;
    let generation: Option<i64> = get(row, "lease_generation")?;
    let lease = match (state, generation) {
        (RecipientState::Delivering, Some(generation)) => Some(Lease {
            message,
            generation,
            worker: get::<Option<String>>(row, "lease_worker")?.unwrap_or_default(),
            until: from_millis(get::<Option<i64>>(row, "lease_until_ms")?.unwrap_or(0)),
        }),
        _ => None,
    };
    Ok(RecipientInfo {
        id: RecipientId(get(row, "id")?),
        address: get(row, "address")?,
        state,
        attempts: attempts_of(row)?,
        next_attempt: from_millis(get(row, "next_attempt_ms")?),
        last,
        lease,
        updated: from_millis(get(row, "updated_ms")?),
    })
}

fn check_envelope(message: &NewMessage) -> Result<()> {
    ReversePath::parse(&message.from).map_err(|e| {
        Error::Misuse(format!(
            "the reverse-path {:?} does not parse: {e}",
            message.from
        ))
    })?;
    if message.to.is_empty() {
        return Err(Error::Misuse("a message without recipients".into()));
    }
    for to in &message.to {
        Mailbox::parse(to)
            .map_err(|e| Error::Misuse(format!("the recipient {to:?} does not parse: {e}")))?;
    }
    Ok(())
}

impl SqliteStore {
    async fn recipients_of(
        &self,
        executor: impl sqlx::Executor<'_, Database = Sqlite>,
        id: &MessageId,
    ) -> Result<Vec<RecipientInfo>> {
        let rows = sqlx::query(&format!(
            "SELECT {RECIPIENT_COLUMNS} FROM recipients WHERE message_id = $1 ORDER BY position"
        ))
        .bind(id.as_str())
        .fetch_all(executor)
        .await
        .map_err(|e| Error::db("reading recipients", e))?;
        rows.iter().map(recipient_of).collect()
    }

    async fn insert_batch(&self, batch: &[Spooled], now_ms: i64) -> Result<Vec<Entry>> {
        let doing = "enqueueing";
        let mut tx = self.begin(doing).await?;
        let mut entries = Vec::new();
        for Spooled {
            id,
            message,
            written,
        } in batch
        {
            let options = serde_json::to_string(&message.options)
                .map_err(|e| Error::Misuse(format!("the options do not serialize: {e}")))?;
            sqlx::query(
                "INSERT INTO messages (id, sender, options, body_size, body_sha256, created_ms)
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(id.as_str())
            .bind(&message.from)
            .bind(options)
            .bind(i64::try_from(written.size).unwrap_or(i64::MAX))
            .bind(&written.sha256)
            .bind(now_ms)
            .execute(&mut *tx)
            .await
            .map_err(|e| Error::db(doing, e))?;
            for (position, to) in message.to.iter().enumerate() {
                let rid: i64 = sqlx::query_scalar(
                    "INSERT INTO recipients (message_id, position, address, state, attempts, next_attempt_ms, updated_ms)
                     VALUES ($1, $2, $3, 'queued', 0, $4, $4) RETURNING id",
                )
                .bind(id.as_str())
                .bind(position as i64)
                .bind(to)
                .bind(now_ms)
                .fetch_one(&mut *tx)
                .await
                .map_err(|e| Error::db(doing, e))?;
                entries.push(Entry {
                    at_ms: now_ms,
                    event: "enqueued".into(),
                    message: id.clone(),
                    recipient: RecipientId(rid),
                    rcpt: to.clone(),
                    from: None,
                    to: Some(RecipientState::Queued),
                    attempts: 0,
                    next_attempt_ms: Some(now_ms),
                    worker: None,
                    generation: None,
                    attempt: None,
                });
            }
        }
        tx.commit().await.map_err(|e| Error::db(doing, e))?;
        Ok(entries)
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn enqueue(&self, batch: Vec<NewMessage>, now: SystemTime) -> Result<Vec<MessageId>> {
        let now_ms = millis(now)?;
        for message in &batch {
            check_envelope(message)?;
        }
        let mut written: Vec<Spooled> = Vec::with_capacity(batch.len());
        for message in batch {
            let id = MessageId::generate(now);
            let NewMessage {
                from,
                to,
                body,
                options,
            } = message;
            match self.spool.write(&id, body).await {
                Ok(w) => written.push(Spooled {
                    id,
                    message: Envelope { from, to, options },
                    written: w,
                }),
                Err(e) => {
                    for Spooled { id, .. } in &written {
                        let _ = self.spool.remove(id).await;
                    }
                    return Err(e);
                }
            }
        }
        match self.insert_batch(&written, now_ms).await {
            Ok(entries) => {
                self.write_log(&entries);
                Ok(written.into_iter().map(|s| s.id).collect())
            }
            Err(e) => {
                for Spooled { id, .. } in &written {
                    let _ = self.spool.remove(id).await;
                }
                Err(e)
            }
        }
    }

    async fn claim_due(
        &self,
        now: SystemTime,
        limit: u32,
        worker: &str,
        lease: Duration,
    ) -> Result<Vec<Claimed>> {
        if worker.is_empty() {
            return Err(Error::Misuse("a claim without a worker id".into()));
        }
        let doing = "claiming due recipients";
        let now_ms = millis(now)?;
        let until = now + lease;
        let until_ms = millis(until)?;
        let mut tx = self.begin(doing).await?;
        let ids: Vec<String> = sqlx::query_scalar(&format!(
            "SELECT message_id FROM recipients WHERE {DUE} GROUP BY message_id
             ORDER BY MIN(CASE WHEN state = 'delivering' THEN lease_until_ms ELSE next_attempt_ms END), message_id
             LIMIT $2"
        ))
        .bind(now_ms)
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await
        .map_err(|e| Error::db(doing, e))?;
        let mut claimed = Vec::new();
        let mut entries = Vec::new();
        for id in ids {
            let id = MessageId::parse(&id)
                .map_err(|_| Error::corrupt(None, format!("{id:?} is not a message id")))?;
            let Some(message) = self.message_row(&mut tx, &id).await? else {
                return Err(Error::corrupt(
                    Some(&id),
                    "it has recipients but no message row",
                ));
            };
            let generation: i64 =
                sqlx::query_scalar("UPDATE lease_generation SET value = value + 1 RETURNING value")
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(|e| Error::db(doing, e))?;
            let rows = sqlx::query(&format!(
                "SELECT id, address, state, attempts FROM recipients
                 WHERE message_id = $2 AND {DUE} ORDER BY position"
            ))
            .bind(now_ms)
            .bind(id.as_str())
            .fetch_all(&mut *tx)
            .await
            .map_err(|e| Error::db(doing, e))?;
            let lease = Lease {
                message: id.clone(),
                generation,
                worker: worker.to_owned(),
                until,
            };
            let mut recipients = Vec::with_capacity(rows.len());
            for row in &rows {
                let from = state_of(row)?;
                let to = from.apply(Transition::Claim)?;
                let rid = RecipientId(get(row, "id")?);
                sqlx::query(
                    "UPDATE recipients SET state = $1, lease_generation = $2, lease_worker = $3,
                     lease_until_ms = $4, updated_ms = $5 WHERE id = $6",
                )
                .bind(to.as_str())
                .bind(generation)
                .bind(worker)
                .bind(until_ms)
                .bind(now_ms)
                .bind(rid.0)
                .execute(&mut *tx)
                .await
                .map_err(|e| Error::db(doing, e))?;
                let r = ClaimedRecipient {
                    id: rid,
                    address: get(row, "address")?,
                    attempts: attempts_of(row)?,
                    claimed_from: from,
                };
                entries.push(Entry {
                    at_ms: now_ms,
                    event: "claimed".into(),
                    message: id.clone(),
                    recipient: rid,
                    rcpt: r.address.clone(),
                    from: Some(from),
                    to: Some(to),
                    attempts: r.attempts,
                    next_attempt_ms: None,
                    worker: Some(worker.to_owned()),
                    generation: Some(generation),
                    attempt: None,
                });
                recipients.push(r);
            }
            claimed.push(Claimed {
                lease,
                from: get(&message, "sender")?,
                created: from_millis(get(&message, "created_ms")?),
                body_size: size_of(&message)?,
                options: options_of(&message, &id)?,
                recipients,
            });
        }
        tx.commit().await.map_err(|e| Error::db(doing, e))?;
        self.write_log(&entries);
        Ok(claimed)
    }

    async fn renew(&self, lease: &Lease, until: SystemTime, now: SystemTime) -> Result<Lease> {
        let doing = "renewing a lease";
        let mut tx = self.begin(doing).await?;
        let done = sqlx::query(
            "UPDATE recipients SET lease_until_ms = $1, updated_ms = $2
             WHERE message_id = $3 AND lease_generation = $4 AND state = 'delivering'",
        )
        .bind(millis(until)?)
        .bind(millis(now)?)
        .bind(lease.message.as_str())
        .bind(lease.generation)
        .execute(&mut *tx)
        .await
        .map_err(|e| Error::db(doing, e))?;
        if done.rows_affected() == 0 {
            return Err(Error::StaleLease {
                message: lease.message.clone(),
                generation: lease.generation,
            });
        }
        tx.commit().await.map_err(|e| Error::db(doing, e))?;
        Ok(Lease {
            until,
            ..lease.clone()
        })
    }

    async fn record(
        &self,
        lease: &Lease,
        outcomes: Vec<(RecipientId, Outcome)>,
        now: SystemTime,
    ) -> Result<()> {
        let doing = "recording outcomes";
        let now_ms = millis(now)?;
        let stale = || Error::StaleLease {
            message: lease.message.clone(),
            generation: lease.generation,
        };
        let mut tx = self.begin(doing).await?;
        let mut entries = Vec::with_capacity(outcomes.len());
        for (rid, outcome) in outcomes {
            let row = sqlx::query(
                "SELECT message_id, address, state, attempts, next_attempt_ms, lease_generation
                 FROM recipients WHERE id = $1",
            )
            .bind(rid.0)
            .fetch_optional(&mut *tx)
            .await
            .map_err(|e| Error::db(doing, e))?
            .ok_or_else(stale)?;
            let held = get::<String>(&row, "message_id")? == lease.message.as_str()
                && get::<Option<i64>>(&row, "lease_generation")? == Some(lease.generation);
            let from = state_of(&row)?;
            if !held || from != RecipientState::Delivering {
                return Err(stale());
            }
            let to = from.apply(outcome.transition())?;
            let attempt = outcome.attempt().cloned();
            let attempts = attempts_of(&row)? + u32::from(attempt.is_some());
            let next_ms = match &outcome {
                Outcome::Deferred { next, .. } => millis(*next)?,
                _ => get(&row, "next_attempt_ms")?,
            };
            let mut update = String::from(
                "UPDATE recipients SET state = $1, attempts = $2, next_attempt_ms = $3, updated_ms = $4,
                 lease_generation = NULL, lease_worker = NULL, lease_until_ms = NULL",
            );
            if attempt.is_some() {
                update.push_str(", last_code = $6, last_enhanced = $7, last_text = $8, last_host = $9, last_tls = $10");
            }
            update.push_str(" WHERE id = $5");
            let mut query = sqlx::query(&update)
                .bind(to.as_str())
                .bind(i64::from(attempts))
                .bind(next_ms)
                .bind(now_ms)
                .bind(rid.0);
            if let Some(a) = &attempt {
                let tls =
                    match &a.tls {
                        Some(t) => Some(serde_json::to_string(t).map_err(|e| {
                            Error::Misuse(format!("TLS facts do not serialize: {e}"))
                        })?),
                        None => None,
                    };
                query = query
                    .bind(a.code.map(i64::from))
                    .bind(a.enhanced.clone())
                    .bind(a.text.clone())
                    .bind(a.host.clone())
                    .bind(tls);
            }
            query
                .execute(&mut *tx)
                .await
                .map_err(|e| Error::db(doing, e))?;
            entries.push(Entry {
                at_ms: now_ms,
                event: to.as_str().into(),
                message: lease.message.clone(),
                recipient: rid,
                rcpt: get(&row, "address")?,
                from: Some(from),
                to: Some(to),
                attempts,
                next_attempt_ms: matches!(outcome, Outcome::Deferred { .. }).then_some(next_ms),
                worker: Some(lease.worker.clone()),
                generation: Some(lease.generation),
                attempt,
            });
        }
        tx.commit().await.map_err(|e| Error::db(doing, e))?;
        self.write_log(&entries);
        Ok(())
    }

    async fn release(
        &self,
        lease: &Lease,
        not_before: Option<SystemTime>,
        now: SystemTime,
    ) -> Result<u64> {
        let doing = "releasing a lease";
        let now_ms = millis(now)?;
        let not_before_ms = not_before.map(millis).transpose()?;
        let mut tx = self.begin(doing).await?;
        let rows = sqlx::query(
            "SELECT id, address, state, attempts, next_attempt_ms FROM recipients
             WHERE message_id = $1 AND lease_generation = $2 AND state = 'delivering'",
        )
        .bind(lease.message.as_str())
        .bind(lease.generation)
        .fetch_all(&mut *tx)
        .await
        .map_err(|e| Error::db(doing, e))?;
        let mut entries = Vec::with_capacity(rows.len());
        for row in &rows {
            let from = state_of(row)?;
            let attempts = attempts_of(row)?;
            let to = from.apply(Transition::Release {
                attempted: attempts > 0,
            })?;
            let next_ms = not_before_ms.unwrap_or(get(row, "next_attempt_ms")?);
            let rid = RecipientId(get(row, "id")?);
            sqlx::query(
                "UPDATE recipients SET state = $1, next_attempt_ms = $2, updated_ms = $3,
                 lease_generation = NULL, lease_worker = NULL, lease_until_ms = NULL WHERE id = $4",
            )
            .bind(to.as_str())
            .bind(next_ms)
            .bind(now_ms)
            .bind(rid.0)
            .execute(&mut *tx)
            .await
            .map_err(|e| Error::db(doing, e))?;
            entries.push(Entry {
                at_ms: now_ms,
                event: "released".into(),
                message: lease.message.clone(),
                recipient: rid,
                rcpt: get(row, "address")?,
                from: Some(from),
                to: Some(to),
                attempts,
                next_attempt_ms: Some(next_ms),
                worker: Some(lease.worker.clone()),
                generation: Some(lease.generation),
                attempt: None,
            });
        }
        tx.commit().await.map_err(|e| Error::db(doing, e))?;
        self.write_log(&entries);
        Ok(entries.len() as u64)
    }

    async fn open_body(&self, id: &MessageId) -> Result<Box<dyn BodySource>> {
        let row = sqlx::query("SELECT body_size, body_sha256 FROM messages WHERE id = $1")
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| Error::db("reading a message", e))?
            .ok_or_else(|| Error::NotFound(id.clone()))?;
        let expected = Written {
            size: size_of(&row)?,
            sha256: get(&row, "body_sha256")?,
        };
        Ok(Box::new(self.spool.open_body(id, expected).await?))
    }

    async fn list(&self, filter: &ListFilter) -> Result<Vec<MessageInfo>> {
        let mut sql = String::from("SELECT id FROM messages");
        if filter.state.is_some() {
            sql.push_str(" WHERE EXISTS (SELECT 1 FROM recipients r WHERE r.message_id = messages.id AND r.state = $1)");
        }
        sql.push_str(" ORDER BY created_ms, id");
        if let Some(limit) = filter.limit {
            sql.push_str(&format!(" LIMIT {limit}"));
        }
        let mut query = sqlx::query_scalar::<_, String>(&sql);
        if let Some(state) = filter.state {
            query = query.bind(state.as_str());
        }
        let ids = query
            .fetch_all(&self.pool)
            .await
            .map_err(|e| Error::db("listing messages", e))?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let id = MessageId::parse(&id)
                .map_err(|_| Error::corrupt(None, format!("{id:?} is not a message id")))?;
            match self.show(&id).await {
                Ok(info) => out.push(info),
                // Deleted since the list was read.
                Err(Error::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    async fn show(&self, id: &MessageId) -> Result<MessageInfo> {
        let mut conn = self
            .pool
            .begin()
            .await
            .map_err(|e| Error::db("reading a message", e))?;
        let row = sqlx::query(
            "SELECT id, sender, options, body_size, created_ms FROM messages WHERE id = $1",
        )
        .bind(id.as_str())
        .fetch_optional(&mut *conn)
        .await
        .map_err(|e| Error::db("reading a message", e))?
        .ok_or_else(|| Error::NotFound(id.clone()))?;
        let recipients = self.recipients_of(&mut *conn, id).await?;
        Ok(MessageInfo {
            id: id.clone(),
            from: get(&row, "sender")?,
            created: from_millis(get(&row, "created_ms")?),
            body_size: size_of(&row)?,
            options: options_of(&row, id)?,
            recipients,
        })
    }

    async fn retry(&self, target: RetryTarget, now: SystemTime) -> Result<u64> {
        let doing = "retrying";
        let now_ms = millis(now)?;
        let mut tx = self.begin(doing).await?;
        let rows = match &target {
            RetryTarget::Message(id) => {
                if self.message_row(&mut tx, id).await?.is_none() {
                    return Err(Error::NotFound(id.clone()));
                }
                sqlx::query(
                    "SELECT id, message_id, address, state, attempts FROM recipients
                     WHERE message_id = $1 AND state IN ('queued', 'deferred')",
                )
                .bind(id.as_str())
                .fetch_all(&mut *tx)
                .await
            }
            RetryTarget::All => {
                sqlx::query(
                    "SELECT id, message_id, address, state, attempts FROM recipients
                     WHERE state IN ('queued', 'deferred')",
                )
                .fetch_all(&mut *tx)
                .await
            }
        }
        .map_err(|e| Error::db(doing, e))?;
        let mut entries = Vec::with_capacity(rows.len());
        for row in &rows {
            let from = state_of(row)?;
            let to = from.apply(Transition::Retry)?;
            let rid = RecipientId(get(row, "id")?);
            sqlx::query("UPDATE recipients SET state = $1, next_attempt_ms = $2, updated_ms = $2 WHERE id = $3")
                .bind(to.as_str())
                .bind(now_ms)
                .bind(rid.0)
                .execute(&mut *tx)
                .await
                .map_err(|e| Error::db(doing, e))?;
            entries.push(Entry {
                at_ms: now_ms,
                event: "retried".into(),
                message: message_id_of(row, "message_id")?,
                recipient: rid,
                rcpt: get(row, "address")?,
                from: Some(from),
                to: Some(to),
                attempts: attempts_of(row)?,
                next_attempt_ms: Some(now_ms),
                worker: None,
                generation: None,
                attempt: None,
            });
        }
        if target == RetryTarget::All {
            sqlx::query("DELETE FROM backoff")
                .execute(&mut *tx)
                .await
                .map_err(|e| Error::db(doing, e))?;
        }
        tx.commit().await.map_err(|e| Error::db(doing, e))?;
        self.write_log(&entries);
        Ok(entries.len() as u64)
    }

    async fn delete(&self, id: &MessageId, now: SystemTime) -> Result<()> {
        let doing = "deleting a message";
        let now_ms = millis(now)?;
        let mut tx = self.begin(doing).await?;
        let recipients = self.recipients_of(&mut *tx, id).await?;
        sqlx::query("DELETE FROM recipients WHERE message_id = $1")
            .bind(id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(|e| Error::db(doing, e))?;
        let done = sqlx::query("DELETE FROM messages WHERE id = $1")
            .bind(id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(|e| Error::db(doing, e))?;
        if done.rows_affected() == 0 {
            return Err(Error::NotFound(id.clone()));
        }
        tx.commit().await.map_err(|e| Error::db(doing, e))?;
        let entries: Vec<Entry> = recipients
            .into_iter()
            .map(|r| removed_entry("deleted", id, r, now_ms))
            .collect();
        self.write_log(&entries);
        if let Err(e) = self.spool.remove(id).await {
            // The message is gone from the store; the orphaned file is swept on a later open.
            tracing::warn!(error = %e, "a deleted message's body file was not removed");
        }
        Ok(())
    }

    async fn purge_finished(&self, before: SystemTime) -> Result<Vec<MessageId>> {
        let doing = "purging finished messages";
        let before_ms = millis(before)?;
        let mut tx = self.begin(doing).await?;
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM messages m WHERE NOT EXISTS (SELECT 1 FROM recipients r WHERE r.message_id = m.id
             AND (r.state NOT IN ('delivered', 'failed', 'expired') OR r.updated_ms >= $1))",
        )
        .bind(before_ms)
        .fetch_all(&mut *tx)
        .await
        .map_err(|e| Error::db(doing, e))?;
        let mut purged = Vec::with_capacity(ids.len());
        let mut entries = Vec::new();
        for id in ids {
            let id = MessageId::parse(&id)
                .map_err(|_| Error::corrupt(None, format!("{id:?} is not a message id")))?;
            for r in self.recipients_of(&mut *tx, &id).await? {
                entries.push(removed_entry("purged", &id, r, before_ms));
            }
            for sql in [
                "DELETE FROM recipients WHERE message_id = $1",
                "DELETE FROM messages WHERE id = $1",
            ] {
                sqlx::query(sql)
                    .bind(id.as_str())
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| Error::db(doing, e))?;
            }
            purged.push(id);
        }
        tx.commit().await.map_err(|e| Error::db(doing, e))?;
        self.write_log(&entries);
        for id in &purged {
            if let Err(e) = self.spool.remove(id).await {
                tracing::warn!(error = %e, "a purged message's body file was not removed");
            }
        }
        Ok(purged)
    }

    async fn stats(&self) -> Result<Stats> {
        let doing = "counting the queue";
        let rows = sqlx::query("SELECT state, COUNT(*) AS n FROM recipients GROUP BY state")
            .fetch_all(&self.pool)
            .await
            .map_err(|e| Error::db(doing, e))?;
        let mut recipients: Vec<(RecipientState, u64)> =
            RecipientState::ALL.iter().map(|s| (*s, 0)).collect();
        for row in &rows {
            let state = state_of(row)?;
            let n: i64 = get(row, "n")?;
            if let Some(slot) = recipients.iter_mut().find(|(s, _)| *s == state) {
                slot.1 = u64::try_from(n).unwrap_or(0);
            }
        }
        let row = sqlx::query("SELECT COUNT(*) AS n, MIN(created_ms) AS oldest FROM messages")
            .fetch_one(&self.pool)
            .await
            .map_err(|e| Error::db(doing, e))?;
        Ok(Stats {
            messages: u64::try_from(get::<i64>(&row, "n")?).unwrap_or(0),
            recipients,
            oldest: get::<Option<i64>>(&row, "oldest")?.map(from_millis),
        })
    }

    async fn next_due(&self) -> Result<Option<SystemTime>> {
        let due: Option<i64> = sqlx::query_scalar(
            "SELECT MIN(CASE WHEN state = 'delivering' THEN lease_until_ms ELSE next_attempt_ms END)
             FROM recipients WHERE state IN ('queued', 'deferred', 'delivering')",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(|e| Error::db("finding the next due time", e))?;
        Ok(due.map(from_millis))
    }

    async fn set_backoff(
        &self,
        destination: &str,
        not_before: SystemTime,
        reason: &str,
        now: SystemTime,
    ) -> Result<Backoff> {
        let doing = "backing off a destination";
        let mut tx = self.begin(doing).await?;
        let failures: i64 = sqlx::query_scalar(
            "INSERT INTO backoff (destination, not_before_ms, failures, reason, updated_ms)
             VALUES ($1, $2, 1, $3, $4)
             ON CONFLICT (destination) DO UPDATE SET not_before_ms = excluded.not_before_ms,
                 failures = backoff.failures + 1, reason = excluded.reason, updated_ms = excluded.updated_ms
             RETURNING failures",
        )
        .bind(destination)
        .bind(millis(not_before)?)
        .bind(reason)
        .bind(millis(now)?)
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| Error::db(doing, e))?;
        tx.commit().await.map_err(|e| Error::db(doing, e))?;
        Ok(Backoff {
            destination: destination.to_owned(),
            not_before,
            failures: u32::try_from(failures).unwrap_or(u32::MAX),
            reason: reason.to_owned(),
        })
    }

    async fn backoff(&self, destination: &str) -> Result<Option<Backoff>> {
        let row = sqlx::query(
            "SELECT not_before_ms, failures, reason FROM backoff WHERE destination = $1",
        )
        .bind(destination)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| Error::db("reading a destination's back-off", e))?;
        row.map(|row| {
            Ok(Backoff {
                destination: destination.to_owned(),
                not_before: from_millis(get(&row, "not_before_ms")?),
                failures: u32::try_from(get::<i64>(&row, "failures")?).unwrap_or(u32::MAX),
                reason: get(&row, "reason")?,
            })
        })
        .transpose()
    }

    async fn clear_backoff(&self, destination: &str) -> Result<()> {
        sqlx::query("DELETE FROM backoff WHERE destination = $1")
            .bind(destination)
            .execute(&self.pool)
            .await
            .map_err(|e| Error::db("clearing a destination's back-off", e))?;
        Ok(())
    }
}

/// A message whose body is in the spool, its envelope not yet committed.
struct Spooled {
    id: MessageId,
    message: Envelope,
    written: Written,
}

/// A new message's envelope and options, without its body.
struct Envelope {
    from: String,
    to: Vec<String>,
    options: MessageOptions,
}

fn removed_entry(event: &str, id: &MessageId, r: RecipientInfo, at_ms: i64) -> Entry {
    Entry {
        at_ms,
        event: event.into(),
        message: id.clone(),
        recipient: r.id,
        rcpt: r.address,
        from: Some(r.state),
        to: None,
        attempts: r.attempts,
        next_attempt_ms: None,
        worker: None,
        generation: None,
        attempt: None,
    }
}
