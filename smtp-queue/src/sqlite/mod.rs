//! The embedded store: SQLite in WAL mode in a spool directory, beside the
//! body files.
//!
//! ```text
//! <spool>/queue.db         messages, recipients, leases, back-off, budgets, throttles (+ -wal, -shm)
//! <spool>/bodies/<id>      a body over 64 KiB, written before the enqueue commits
//!                          (smaller ones are rows of `message_bodies`)
//! <spool>/tmp/             bodies being written (left-overs are swept on open)
//! <spool>/outcomes.jsonl   the outcome log
//! ```
//!
//! Durability: `journal_mode=WAL` lets readers (`smtp queue list`) run
//! beside the writer. Two connection pools share the file:
//!
//! - enqueues, deletes and the schema commit with `synchronous=FULL`, which
//!   fsyncs the WAL at every commit: "enqueued" has to mean "on disk", and
//!   a deleted message must not come back;
//! - the runner's work (claims, outcomes, releases, leases, back-off)
//!   commits with `synchronous=NORMAL`: the WAL is written at every commit
//!   (a killed process loses nothing) and fsynced at checkpoints and at
//!   the next durable commit. A power loss may forget the last outcomes:
//!   their recipients are delivered again, which at-least-once allows; it
//!   can never lose a message. This is what lets a runner record thousands
//!   of outcomes a second instead of one per disk flush.
//!
//! Every writing transaction starts
//! with `BEGIN IMMEDIATE`, taking the write lock first, so two handles (two
//! runners) on one file wait for each other for up to the busy timeout
//! instead of failing on a lock upgrade; claims are made under that lock,
//! so they never overlap.
//!
//! The SQL is plain (numbered `$n` parameters, `RETURNING`, `ON CONFLICT`)
//! so that the PostgreSQL store can share it.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use smtp_core::delivery::BodySource;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{Sqlite, Transaction};

use crate::error::{Error, Result};
use crate::log::{Entry, OutcomeLog};
use crate::rate::{Budget, Decision, Limit};
use crate::shaping::Throttle;
use crate::spool::Spool;
use crate::store::{
    Backoff, Claimed, Enqueued, Lease, ListFilter, MessageId, MessageInfo, Migration, NewMessage,
    Outcome, RecipientId, RetryTarget, RouteWaiting, SlotLease, Stats, Store,
};

mod admin;
mod budget;
mod claim;
mod enqueue;
mod mta_sts;
mod notify;
mod record;
mod rows;
mod schema;
mod slot;
mod throttle;

pub(crate) use enqueue::{check_envelope, recorded_address};

/// The schema version this build writes and understands.
pub const SCHEMA_VERSION: i64 = 10;

/// A recipient waits for its next attempt (the condition of the partial
/// index `recipients_waiting`, which SQLite uses only for this very text).
pub(super) const WAITING: &str = "state IN ('queued', 'deferred')";
/// A recipient is leased (the condition of `recipients_leased`).
pub(super) const LEASED: &str = "state = 'delivering'";

/// A recipient is due: waiting and its time has come, or its lease expired.
pub(super) const DUE: &str = "((state IN ('queued', 'deferred') AND next_attempt_ms <= $1)
    OR (state = 'delivering' AND lease_until_ms <= $1))";

/// Message `m` is one a runner of the route bound as `param` takes: of
/// that route, or of none (enqueued before routes were kept).
pub(super) fn route_takes(param: &str) -> String {
    format!("(m.options ->> 'route' IS NULL OR m.options ->> 'route' = {param})")
}

pub(super) const RECIPIENT_COLUMNS: &str = "id, message_id, address, state, attempts, next_attempt_ms, lease_generation, \
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
    /// Connections kept open for the runner's work (each is a thread of
    /// SQLite's; writes take turns anyway). Default 2.
    pub max_connections: u32,
    /// The outcome log.
    pub log: LogPlace,
    /// Left-over temporary and orphaned body files older than this are
    /// removed on open. Default 1 hour.
    pub sweep_after: Duration,
    /// Bodies up to this many octets are kept in the database, committed
    /// with their envelope (one disk flush for a whole batch); larger ones
    /// in files of their own. 0 puts every body in a file. Default 64 KiB.
    pub inline_bodies: usize,
}

impl Default for SqliteSettings {
    fn default() -> Self {
        Self {
            busy_timeout: Duration::from_secs(10),
            max_connections: 2,
            log: LogPlace::Spool,
            sweep_after: Duration::from_secs(3600),
            inline_bodies: 64 * 1024,
        }
    }
}

/// The SQLite queue in a spool directory. Cheap to share behind an `Arc`;
/// several handles (in one process or several) on one directory cooperate
/// through the database's lock and the leases.
#[derive(Debug)]
pub struct SqliteStore {
    /// `synchronous=NORMAL`: the runner's work.
    pool: SqlitePool,
    /// `synchronous=FULL`: enqueues, deletes, the schema.
    durable: SqlitePool,
    spool: Spool,
    log: Option<OutcomeLog>,
    db: PathBuf,
    /// Outcomes waiting for the next group commit ([`record::record`]).
    records: std::sync::Mutex<Vec<record::PendingRecord>>,
    /// Held by the caller committing a group.
    recording: tokio::sync::Mutex<()>,
    /// What opening did to the schema.
    migration: Migration,
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
        let spool = Spool::open(dir, settings.inline_bodies).await?;
        let db = dir.join("queue.db");
        let options = SqliteConnectOptions::new()
            .filename(&db)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(settings.busy_timeout)
            .foreign_keys(true)
            // 512 KiB of page cache a connection, not 2 MiB: six
            // connections, and small bodies live in the pages; the file
            // system caches the rest.
            .pragma("cache_size", "-512");
        let connect = |options: SqliteConnectOptions, max: u32| {
            let db = db.clone();
            async move {
                SqlitePoolOptions::new()
                    .max_connections(max)
                    .connect_with(options)
                    .await
                    .map_err(|e| Error::Storage {
                        doing: "opening the queue database".into(),
                        path: Some(db),
                        source: Box::new(e),
                    })
            }
        };
        // The durable pool first (one connection: enqueues take turns): it
        // creates the file and sets WAL mode.
        let durable = connect(options.clone(), 1).await?;
        // SQLite creates the database with the umask's permissions, and the
        // WAL and shared-memory files with the database's: make it 0600.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for suffix in ["", "-wal", "-shm"] {
                let file = dir.join(format!("queue.db{suffix}"));
                match crate::spool::give_to_owner(dir, &file) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(Error::io(
                            "giving the queue database to the queue's owner",
                            &file,
                            e,
                        ));
                    }
                    _ => {}
                }
                match std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(Error::io("making the queue database private", &file, e));
                    }
                    _ => {}
                }
            }
        }
        let pool = connect(
            options.synchronous(SqliteSynchronous::Normal),
            settings.max_connections.max(1),
        )
        .await?;
        let migration = schema::migrate(&pool, &db).await?;
        let log = match &settings.log {
            LogPlace::Spool => {
                let path = dir.join("outcomes.jsonl");
                let log = OutcomeLog::open(&path)?;
                crate::spool::give_to_owner(dir, &path).map_err(|e| {
                    Error::io("giving the outcome log to the queue's owner", &path, e)
                })?;
                Some(log)
            }
            LogPlace::Path(path) => Some(OutcomeLog::open(path)?),
            LogPlace::Off => None,
        };
        let store = Self {
            pool,
            durable,
            spool,
            log,
            db,
            records: std::sync::Mutex::new(Vec::new()),
            recording: tokio::sync::Mutex::new(()),
            migration,
        };
        store.sweep(settings.sweep_after).await?;
        Ok(store)
    }

    /// What opening did to the schema: created it (`from` is `None`),
    /// upgraded it, or found it current.
    pub fn migration(&self) -> Migration {
        self.migration
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
        self.durable.close().await;
    }

    /// A writing transaction of the runner's (`synchronous=NORMAL`).
    async fn begin(&self, doing: &str) -> Result<Transaction<'static, Sqlite>> {
        self.pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(|e| Error::db(doing, e))
    }

    /// A writing transaction whose commit is on disk when it returns
    /// (`synchronous=FULL`).
    async fn begin_durable(&self, doing: &str) -> Result<Transaction<'static, Sqlite>> {
        self.durable
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(|e| Error::db(doing, e))
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
                tracing::info!(message_id = %id, "removing an orphaned body file");
                self.spool.remove(&id).await?;
            }
        }
        Ok(())
    }

    fn write_log(&self, entries: &[Entry]) {
        if let Some(log) = &self.log
            && let Err(e) = log.append(entries)
        {
            // The change is committed; the log is its history, not its truth.
            tracing::warn!(error = %e, "the outcome log was not written");
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

#[async_trait]
impl Store for SqliteStore {
    async fn enqueue(&self, batch: Vec<NewMessage>, now: SystemTime) -> Result<Vec<MessageId>> {
        enqueue::enqueue(self, batch, now).await
    }

    async fn claim_due_spread(
        &self,
        route: Option<&str>,
        now: SystemTime,
        limit: u32,
        per_domain: Option<u32>,
        worker: &str,
        lease: Duration,
    ) -> Result<Vec<Claimed>> {
        claim::claim_due(self, route, now, limit, per_domain, worker, lease).await
    }

    async fn renew(&self, lease: &Lease, until: SystemTime, now: SystemTime) -> Result<Lease> {
        claim::renew(self, lease, until, now).await
    }

    async fn record(
        &self,
        lease: &Lease,
        outcomes: Vec<(RecipientId, Outcome)>,
        now: SystemTime,
    ) -> Result<()> {
        record::record(self, lease, outcomes, now).await
    }

    async fn release(
        &self,
        lease: &Lease,
        not_before: Option<SystemTime>,
        now: SystemTime,
    ) -> Result<u64> {
        claim::release(self, lease, not_before, now).await
    }

    async fn open_body(&self, id: &MessageId) -> Result<Box<dyn BodySource>> {
        enqueue::open_body(self, id).await
    }

    async fn open_bodies(&self, ids: &[MessageId]) -> Result<Vec<Result<Box<dyn BodySource>>>> {
        enqueue::open_bodies(self, ids).await
    }

    async fn list(&self, filter: &ListFilter) -> Result<Vec<MessageInfo>> {
        admin::list(self, filter).await
    }

    async fn show(&self, id: &MessageId) -> Result<MessageInfo> {
        admin::show(self, id).await
    }

    async fn show_many(&self, ids: &[MessageId]) -> Result<Vec<MessageInfo>> {
        admin::show_many(self, ids).await
    }

    async fn retry(&self, target: RetryTarget, now: SystemTime) -> Result<u64> {
        admin::retry(self, target, now).await
    }

    async fn delete(&self, id: &MessageId, now: SystemTime) -> Result<()> {
        admin::delete(self, id, now).await
    }

    async fn purge_finished(&self, before: SystemTime) -> Result<Vec<MessageId>> {
        admin::purge_finished(self, before).await
    }

    async fn stats(&self) -> Result<Stats> {
        admin::stats(self).await
    }

    async fn next_due_for(&self, route: Option<&str>) -> Result<Option<SystemTime>> {
        admin::next_due(self, route).await
    }

    async fn waiting_by_route(&self, now: SystemTime) -> Result<Vec<RouteWaiting>> {
        admin::waiting_by_route(self, now).await
    }

    async fn set_backoff(
        &self,
        destination: &str,
        not_before: SystemTime,
        reason: &str,
        now: SystemTime,
    ) -> Result<Backoff> {
        admin::set_backoff(self, destination, not_before, reason, now).await
    }

    async fn backoff(&self, destination: &str) -> Result<Option<Backoff>> {
        admin::backoff(self, destination).await
    }

    async fn backoffs(&self, destinations: &[String]) -> Result<Vec<Backoff>> {
        admin::backoffs(self, destinations).await
    }

    async fn clear_backoff(&self, destination: &str) -> Result<()> {
        admin::clear_backoff(self, destination).await
    }

    async fn take_slot(
        &self,
        destination: &str,
        limit: u32,
        worker: &str,
        until: SystemTime,
        now: SystemTime,
    ) -> Result<Option<SlotLease>> {
        slot::take_slot(self, destination, limit, worker, until, now).await
    }

    async fn renew_slot(&self, slot: &SlotLease, until: SystemTime) -> Result<Option<SlotLease>> {
        slot::renew_slot(self, slot, until).await
    }

    async fn release_slot(&self, slot: &SlotLease) -> Result<bool> {
        slot::release_slot(self, slot).await
    }

    async fn slots(&self, destination: Option<&str>, now: SystemTime) -> Result<Vec<SlotLease>> {
        slot::slots(self, destination, now).await
    }

    async fn set_throttle(&self, throttle: &Throttle) -> Result<()> {
        throttle::set_throttle(self, throttle).await
    }

    async fn throttles(&self, only: Option<&[String]>) -> Result<Vec<Throttle>> {
        throttle::throttles(self, only).await
    }

    async fn clear_throttle(&self, destination: &str) -> Result<()> {
        throttle::clear_throttle(self, destination).await
    }

    async fn sts_policy(
        &self,
        domain: &str,
    ) -> Result<Option<smtp_core::delivery::mta_sts::InForce>> {
        mta_sts::sts_policy(self, domain).await
    }

    async fn put_sts_policy(&self, policy: &smtp_core::delivery::mta_sts::InForce) -> Result<()> {
        mta_sts::put_sts_policy(self, policy).await
    }

    async fn add_tls_results(
        &self,
        results: &[crate::tls_report::TlsResult],
        now: SystemTime,
    ) -> Result<()> {
        mta_sts::add_tls_results(self, results, now).await
    }

    async fn tls_results(
        &self,
        since: SystemTime,
        until: SystemTime,
        domain: Option<&str>,
    ) -> Result<Vec<(SystemTime, crate::tls_report::TlsResult)>> {
        mta_sts::tls_results(self, since, until, domain).await
    }

    async fn owed_notifications(&self, limit: u32) -> Result<Vec<MessageInfo>> {
        notify::owed_notifications(self, limit).await
    }

    async fn enqueue_notification(
        &self,
        of: &MessageId,
        notification: NewMessage,
        now: SystemTime,
    ) -> Result<Option<MessageId>> {
        notify::enqueue_notification(self, of, notification, now).await
    }

    async fn take_budget(
        &self,
        key: &str,
        limits: &[Limit],
        cost: u32,
        now: SystemTime,
    ) -> Result<Decision> {
        budget::take_budget(self, key, limits, cost, now).await
    }

    async fn budget(&self, key: &str) -> Result<Option<Budget>> {
        budget::budget(self, key).await
    }

    async fn budgets(&self) -> Result<Vec<Budget>> {
        budget::budgets(self).await
    }

    async fn remember_limits(&self, key: &str, limits: &[Limit], now: SystemTime) -> Result<()> {
        budget::remember_limits(self, key, limits, now).await
    }

    async fn enqueue_once(
        &self,
        key: &str,
        batch: Vec<NewMessage>,
        now: SystemTime,
    ) -> Result<Enqueued> {
        enqueue::enqueue_once(self, key, batch, now).await
    }

    async fn workers(&self, now: SystemTime) -> Result<Vec<crate::store::WorkerActivity>> {
        claim::workers(self, now).await
    }
}
