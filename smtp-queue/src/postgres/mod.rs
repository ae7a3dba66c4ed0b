//! The fleet store: the queue in a PostgreSQL database, shared by workers
//! on many hosts.
//!
//! ```text
//! messages        envelopes, options (jsonb), body size and SHA-256
//! body_chunks     each body in 256 KiB bytea chunks (message_id, seq)
//! recipients      states, schedule, leases (worker, expiry, generation), last attempt
//! lease_generation  a sequence: every claim takes the next value
//! outcome_log     the outcome log, one row per state change (the SQLite
//!                 store's outcomes.jsonl), written in the change's transaction
//! workers         each worker's host, pid, first and last claim or renewal
//! backoff, budgets, budget_takes, throttles, slots, merges,
//! merge_recipients, mta_sts_policies, tls_results   as in the SQLite store
//! schema_version  one row per version reached
//! ```
//!
//! Same states, schedule, outcome log and guarantees as the embedded
//! store ([`SqliteStore`](crate::SqliteStore)), behind the same
//! [`Store`] trait. What differs is how workers share it:
//!
//! - **Claims** lock the due messages' rows with `FOR UPDATE SKIP LOCKED`:
//!   workers claiming at once never wait for each other, and each takes
//!   messages the others did not. Every claim takes a new generation from
//!   a sequence; every change made under a lease (record, renew, release)
//!   is conditioned on the lease's generation, so a worker whose lease
//!   expired and was taken over is refused ([`Error::StaleLease`]).
//! - **Bodies** are streamed in and out in chunks: an enqueue reads each
//!   body 256 KiB at a time into `body_chunks`, in the batch's
//!   transaction; [`Store::open_body`] fetches one chunk at a time and
//!   checks the size and SHA-256 recorded at enqueue, as the SQLite store
//!   checks its files. A body is never held whole in memory.
//! - **Budgets and throttles** live in the database, and each take runs
//!   under a transaction-scoped advisory lock on its key: rate limits hold
//!   across the whole fleet. So do **connection slots**
//!   ([`Store::take_slot`]): each session to a destination holds one
//!   under a lease, taken under an advisory lock on the destination, so
//!   its connection limit counts every worker's sessions.
//! - **The outcome log** is the table `outcome_log`, written in the same
//!   transaction as the change it records (so it never misses one), read
//!   with [`PgStore::outcomes`].
//! - **Schema**: numbered migrations applied in one transaction under an
//!   advisory lock, so two workers starting at once do not both migrate; a
//!   schema newer than this build knows is refused
//!   ([`Error::DatabaseSchemaTooNew`]).
//!
//! Connections are plain TCP or Unix sockets: this build has no TLS to
//! PostgreSQL. Use it on 127.0.0.1, a Unix socket or a private network.
//!
//! URLs name their password, if any, only to the driver: every error and
//! log line shows the URL with the password replaced by `***`
//! ([`redact_url`]).

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use smtp_core::delivery::BodySource;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Postgres, Transaction};

use crate::error::{Error, Result};
use crate::log::Entry;
use crate::rate::{Budget, Decision, Limit};
use crate::shaping::Throttle;
use crate::store::{
    Backoff, Claimed, Enqueued, Lease, ListFilter, MessageId, MessageInfo, NewMessage, Outcome,
    RecipientId, RetryTarget, RouteWaiting, SlotLease, Stats, Store, WorkerActivity,
};

mod admin;
mod body;
mod budget;
mod claim;
mod enqueue;
mod log;
mod mta_sts;
mod notify;
mod record;
mod rows;
mod schema;
mod slot;
mod throttle;

pub use self::schema::PG_SCHEMA_VERSION;

/// A recipient waits for its next attempt.
pub(super) const WAITING: &str = "state IN ('queued', 'deferred')";
/// A recipient is leased.
pub(super) const LEASED: &str = "state = 'delivering'";
/// A recipient is due at `$1`: waiting and its time has come, or its
/// lease expired.
pub(super) const DUE: &str = "((state IN ('queued', 'deferred') AND next_attempt_ms <= $1)
    OR (state = 'delivering' AND lease_until_ms <= $1))";

/// Message `m` is one a runner of the route bound as `param` takes.
pub(super) fn route_takes(param: &str) -> String {
    format!("(m.options ->> 'route' IS NULL OR m.options ->> 'route' = {param})")
}

pub(super) const RECIPIENT_COLUMNS: &str = "id, message_id, address, state, attempts, next_attempt_ms, lease_generation, \
    lease_worker, lease_until_ms, last_code, last_enhanced, last_text, last_host, last_tls, updated_ms";

/// How to open a PostgreSQL queue.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PgSettings {
    /// Connections kept open. Default 8.
    pub max_connections: u32,
    /// How long an operation waits for a connection (the server down, the
    /// pool exhausted) before it fails with [`Error::Database`].
    /// Default 30 s.
    pub acquire_timeout: Duration,
    /// The size of a body chunk in `body_chunks`, in octets. Default
    /// 256 KiB; at least 1 KiB.
    pub chunk_size: usize,
}

impl Default for PgSettings {
    fn default() -> Self {
        Self {
            max_connections: 8,
            acquire_timeout: Duration::from_secs(30),
            chunk_size: 256 * 1024,
        }
    }
}

/// The PostgreSQL queue. Cheap to share behind an `Arc`; handles in any
/// number of processes on any number of hosts cooperate through the
/// database's row locks and the leases.
#[derive(Debug)]
pub struct PgStore {
    pool: PgPool,
    /// The URL, its password replaced by `***`.
    database: String,
    /// The password as written in the URL and decoded, to scrub from
    /// the driver's error texts.
    secrets: Vec<String>,
    /// This process's host name and id, for the `workers` table.
    host: String,
    pid: i64,
    chunk_size: usize,
}

impl PgStore {
    /// Connects to the queue at `url` (`postgres://` or `postgresql://`)
    /// with the default settings, creating or upgrading its schema.
    ///
    /// What the URL leaves out comes from the environment as libpq takes
    /// it: the password from `PGPASSWORD`, else the password file
    /// (`PGPASSFILE`, else `~/.pgpass`); `PGHOST`, `PGPORT`, `PGUSER`,
    /// `PGDATABASE`, `PGAPPNAME`.
    pub async fn open(url: &str) -> Result<Self> {
        Self::open_with(url, PgSettings::default()).await
    }

    /// Connects to the queue at `url`, creating or upgrading its schema
    /// (under an advisory lock: one worker migrates, the others wait and
    /// find it done). Refuses a schema newer than [`PG_SCHEMA_VERSION`].
    pub async fn open_with(url: &str, settings: PgSettings) -> Result<Self> {
        let store = Self::connect_with(url, settings).await?;
        store.migrate().await?;
        Ok(store)
    }

    /// Connects to the queue at `url` without creating or upgrading
    /// anything: for readers (`list`, `stats`). Refuses a schema that is
    /// not this build's own [`PG_SCHEMA_VERSION`]: a newer one with
    /// [`Error::DatabaseSchemaTooNew`], an older or missing one with
    /// [`Error::Misuse`] (open it with [`open`](Self::open) once).
    pub async fn connect(url: &str) -> Result<Self> {
        let store = Self::connect_with(url, PgSettings::default()).await?;
        store.check_version().await?;
        Ok(store)
    }

    /// Connects to the queue at `url` without reading or changing its
    /// schema: for a caller that decides itself, with
    /// [`schema_version`](Self::schema_version) and
    /// [`migrate`](Self::migrate), what to do with a database that has no
    /// schema yet or an older one. Other operations on a schema that is
    /// not this build's fail.
    pub async fn attach(url: &str) -> Result<Self> {
        Self::connect_with(url, PgSettings::default()).await
    }

    async fn connect_with(url: &str, settings: PgSettings) -> Result<Self> {
        let database = redact_url(url);
        let secrets = secrets_of(url);
        let options: PgConnectOptions = url.parse().map_err(|e: sqlx::Error| Error::Database {
            doing: "reading the database URL".into(),
            database: database.clone(),
            source: scrub(&e.to_string(), &secrets).into(),
        })?;
        // The session's name in `pg_stat_activity`: the URL's
        // `application_name` or PGAPPNAME when given (a fleet can name
        // each worker), else ours.
        let options = if options.get_application_name().is_some() {
            options
        } else {
            options.application_name("smtp-queue")
        };
        let failed = |e: sqlx::Error| {
            let detail = scrub(&e.to_string(), &secrets);
            // SQLSTATE class 28: invalid authorization (a wrong password).
            match e.as_database_error().and_then(|d| d.code()) {
                Some(code) if code.starts_with("28") => Error::DatabaseLogin {
                    database: database.clone(),
                    detail,
                },
                _ => Error::Database {
                    doing: "connecting".into(),
                    database: database.clone(),
                    source: detail.into(),
                },
            }
        };
        // One connection first, for the real reason when there is none (a
        // pool retries until its timeout and then says only that).
        match tokio::time::timeout(
            settings.acquire_timeout,
            <sqlx::PgConnection as sqlx::Connection>::connect_with(&options),
        )
        .await
        {
            Ok(Ok(conn)) => {
                let _ = sqlx::Connection::close(conn).await;
            }
            Ok(Err(e)) => return Err(failed(e)),
            Err(_) => {
                return Err(Error::Database {
                    doing: "connecting".into(),
                    database: database.clone(),
                    source: format!("no answer within {} s", settings.acquire_timeout.as_secs())
                        .into(),
                });
            }
        }
        // Connections are renewed every few minutes: a session setting
        // changed while one was open (`default_transaction_read_only`, a
        // `statement_timeout`) stays with that connection, and would keep
        // failing statements long after it was set back.
        let pool = PgPoolOptions::new()
            .max_connections(settings.max_connections.max(1))
            .acquire_timeout(settings.acquire_timeout)
            .max_lifetime(Some(Duration::from_secs(120)))
            .idle_timeout(Some(Duration::from_secs(60)))
            .connect_with(options)
            .await
            .map_err(failed)?;
        Ok(Self {
            pool,
            database,
            secrets,
            host: host_name(),
            pid: i64::from(std::process::id()),
            chunk_size: settings.chunk_size.max(1024),
        })
    }

    /// The database's URL, its password replaced by `***`.
    pub fn database(&self) -> &str {
        &self.database
    }

    /// Closes the connections (waiting for those in use).
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// The error for a failed statement while `doing`.
    pub(super) fn db(&self, doing: &str) -> impl Fn(sqlx::Error) -> Error + '_ {
        let doing = doing.to_owned();
        move |e| Error::Database {
            doing: doing.clone(),
            database: self.database.clone(),
            source: scrub(&e.to_string(), &self.secrets).into(),
        }
    }

    /// A transaction.
    pub(super) async fn begin(&self, doing: &str) -> Result<Transaction<'static, Postgres>> {
        self.pool.begin().await.map_err(self.db(doing))
    }

    /// Appends `entries` to the outcome log in `tx`.
    pub(super) async fn log(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        entries: &[Entry],
    ) -> Result<()> {
        log::append(self, tx, entries).await
    }
}

/// `url` with its password (in the user part or a `password=` parameter)
/// replaced by `***`, fit for errors and logs.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.find("://") {
        Some(i) => url.split_at(i + 3),
        None => ("", url),
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let authority = match authority.rfind('@') {
        Some(at) => {
            let (userinfo, host) = authority.split_at(at);
            match userinfo.find(':') {
                Some(colon) => format!("{}:***{host}", &userinfo[..colon]),
                None => authority.to_owned(),
            }
        }
        None => authority.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|kv| match kv.split_once('=') {
                    Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                    _ => kv.to_owned(),
                })
                .collect();
            format!("{path}?{}", query.join("&"))
        }
        None => tail.to_owned(),
    };
    format!("{scheme}{authority}{tail}")
}

/// The password of `url`, as written and percent-decoded (both forms can
/// reach an error's text).
fn secrets_of(url: &str) -> Vec<String> {
    let mut out = Vec::new();
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..end];
    if let Some((userinfo, _)) = authority.rsplit_once('@')
        && let Some((_, password)) = userinfo.split_once(':')
    {
        out.push(password.to_owned());
    }
    if let Some((_, query)) = rest.split_once('?') {
        for kv in query.split('&') {
            if let Some((k, v)) = kv.split_once('=')
                && k.eq_ignore_ascii_case("password")
            {
                out.push(v.to_owned());
            }
        }
    }
    let decoded: Vec<String> = out.iter().map(|s| percent_decode(s)).collect();
    out.extend(decoded);
    out.retain(|s| !s.is_empty());
    out.sort();
    out.dedup();
    out
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && let (Some(h), Some(l)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `text` with each of `secrets` replaced by `***`.
fn scrub(text: &str, secrets: &[String]) -> String {
    let mut text = text.to_owned();
    for s in secrets {
        text = text.replace(s.as_str(), "***");
    }
    text
}

/// This host's name, for the `workers` table.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

#[async_trait]
impl Store for PgStore {
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
        body::open_body(self, id).await
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
        admin::backoffs(self, std::slice::from_ref(&destination.to_owned()))
            .await
            .map(|mut b| b.pop())
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

    async fn workers(&self, now: SystemTime) -> Result<Vec<WorkerActivity>> {
        claim::workers(self, now).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_never_shows_in_a_redacted_url() {
        for (url, redacted) in [
            (
                "postgres://smtp:s3cret@db.example:5432/queue",
                "postgres://smtp:***@db.example:5432/queue",
            ),
            (
                "postgresql://smtp:p%40ss@10.0.0.1/queue?sslmode=disable",
                "postgresql://smtp:***@10.0.0.1/queue?sslmode=disable",
            ),
            (
                "postgres://smtp@localhost/queue?password=hunter2&application_name=x",
                "postgres://smtp@localhost/queue?password=***&application_name=x",
            ),
            (
                "postgres:///queue?host=/run/postgresql",
                "postgres:///queue?host=/run/postgresql",
            ),
            ("postgres://u:a@b@host/db", "postgres://u:***@host/db"),
        ] {
            assert_eq!(redact_url(url), redacted);
        }
    }

    #[test]
    fn secrets_are_scrubbed_as_written_and_decoded() {
        let secrets = secrets_of("postgres://smtp:p%40ss@h/db?password=two");
        assert_eq!(
            scrub("p@ss and p%40ss and two", &secrets),
            "*** and *** and ***"
        );
        assert!(secrets_of("postgres://smtp@h/db").is_empty());
    }

    #[tokio::test]
    async fn an_unreachable_server_is_an_error_without_the_password() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let settings = PgSettings {
            acquire_timeout: Duration::from_secs(2),
            ..PgSettings::default()
        };
        let url = format!("postgres://smtp:TopSecret99@127.0.0.1:{port}/queue");
        let err = PgStore::open_with(&url, settings).await.unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, Error::Database { .. }), "{text}");
        assert!(!text.contains("TopSecret99"), "{text}");
        assert!(text.contains("smtp:***@127.0.0.1"), "{text}");
    }
}
