//! A durable SMTP delivery queue: the store under a delivery runner.
//!
//! # The contract
//!
//! - **Enqueued means on disk.** [`Store::enqueue`] keeps each small body
//!   (64 KiB by default) for the commit and streams each larger one into the
//!   spool (temporary file, fsync, rename; one fsync of the directory for
//!   the batch), then commits the batch's envelopes and small bodies in one
//!   transaction, flushed to disk; only then does it return ids. A failure
//!   (unwritable or full spool, a body that does not read) leaves nothing
//!   of the batch behind.
//! - **A body is stored once per message** and streamed in and out, never
//!   held whole; reading it back checks its size and SHA-256.
//! - **Per recipient**: `queued → delivering (under a lease) → delivered |
//!   failed | deferred → … → expired` ([`RecipientState`]); every change
//!   goes through [`RecipientState::apply`], keeps the attempt's facts
//!   (reply code, enhanced code, text, host, TLS) and is appended to the
//!   outcome log (JSON Lines, [`log::Entry`]).
//! - **At-least-once.** A runner records *delivered* only after the 2xx to
//!   the end of data. A lease that expires (its worker crashed) makes its
//!   recipients due again; the lease's generation keeps the stale worker
//!   from overwriting the newer one's result ([`Error::StaleLease`]).
//! - **Failures reported to the sender**, when a message asks
//!   ([`MessageOptions::notify_sender`]): once every recipient is final
//!   and one or more failed or expired, one delivery status notification
//!   (RFC 3464, [`dsn`]) from the null reverse-path is enqueued, exactly
//!   once ([`Store::enqueue_notification`], [`enqueue_owed`]).
//! - **Time is passed in**: every operation takes `now`; the retry
//!   [`Schedule`] is pure and takes its randomness as an argument.
//!
//! ```text
//!  enqueue(batch) ──► spool/bodies/<id> (fsync) ──► COMMIT messages + recipients
//!                                                        │
//!  runner: claim_due(now, n, worker, lease) ◄────────────┘  due: waiting and time come,
//!            │   Claimed { lease, envelope, recipients }     or a lease expired
//!            ▼
//!          open_body(id) ──► smtp_tls / smtp_core::delivery ──► replies
//!            │
//!            ▼
//!          record(lease, [(rcpt, Delivered | Failed | Deferred{next} | Expired)])
//!          release(lease, not_before)   (destination backed off: set_backoff)
//!            │
//!            ▼
//!          outcomes.jsonl  (one line per change, after the commit)
//!
//!  runner, each round: enqueue_owed ── owed_notifications ──► dsn::compose
//!                                  ──► enqueue_notification (once per message) ──► due
//! ```
//!
//! # Delivering
//!
//! [`Runner`] does the claiming, sending and recording: [`Runner::new`]
//! through a relay, [`Runner::direct`] to each domain's MX hosts, grouped
//! by destination. [`Runner::run_due`] delivers what is due and returns;
//! [`Runner::watch`] keeps going until a [`Stop`]; an observer sees each
//! [`RunEvent`] as it happens. `examples/deliver.rs` is a runnable whole
//! (`cargo run -p smtp-queue --example deliver`):
//!
//! ```no_run
//! use std::sync::Arc;
//! use smtp_queue::{Runner, RunnerConfig, SqliteStore, Stop};
//!
//! # async fn run() -> Result<(), smtp_queue::Error> {
//! let store = Arc::new(SqliteStore::open("/var/spool/smtp-queue").await?);
//! let relay = smtp_tls::Server::new("smtp.example.com", 587);
//! let runner = Runner::new(store, relay, RunnerConfig::default())
//!     .with_observer(|event| println!("{event:?}"));
//! let summary = runner.run_due(&Stop::new()).await?;
//! println!("{} delivered, {} deferred", summary.delivered, summary.deferred);
//! # Ok(())
//! # }
//! ```
//!
//! # Sending in bulk: rates, shapes, throttles
//!
//! - **Relay rate limits** ([`RunnerConfig::with_rate`], [`rate`]): a
//!   relay account's caps (`30/minute`, `500/day`: the shortest paces,
//!   GCRA, evenly spread; the longer ones are exact caps over a log of
//!   takes) as budgets the store keeps ([`Store::take_budget`]), shared
//!   by every runner on the
//!   queue and kept across restarts; a message costs one unit per
//!   recipient and is taken from the budget before it is handed to the
//!   session; what must wait is released unattempted, due at its turn.
//! - **Traffic shaping** in direct delivery ([`shaping`],
//!   [`RunnerConfig::with_shaping`]): per destination, sessions at once,
//!   messages per session and a rate, from a built-in table of the large
//!   providers or the caller's rules; a "slow down" reply throttles the
//!   destination ([`Throttle`], kept in the store) until it recovers.
//!   A destination's sessions at once count every runner on the queue:
//!   each session holds a slot the store leases ([`Store::take_slot`]),
//!   freed when it ends, or when its lease runs out if its worker died.
//! - **Enqueue once** ([`Store::enqueue_once`]): a batch under a key, each
//!   recipient recorded under it in the batch's transaction, so a re-run
//!   (a mail merge after an interruption, or with its list grown) enqueues
//!   no recipient twice.
//!
//! # The store on its own
//!
//! ```no_run
//! use std::time::{Duration, SystemTime};
//! use smtp_core::delivery::MemoryBody;
//! use smtp_queue::{Body, MessageOptions, NewMessage, Outcome, Attempt, Schedule, SqliteStore, Store};
//!
//! # async fn run() -> Result<(), smtp_queue::Error> {
//! let store = SqliteStore::open("/var/spool/smtp-queue").await?;
//! let now = SystemTime::now();
//! let ids = store
//!     .enqueue(
//!         vec![NewMessage {
//!             from: "alice@example.com".into(),
//!             to: vec!["bob@example.net".into()],
//!             body: Body::Source(Box::new(MemoryBody::new("Subject: hi\r\n\r\nHello.\r\n"))),
//!             options: MessageOptions::default(),
//!         }],
//!         now,
//!     )
//!     .await?;
//! for claimed in store.claim_due(now, 10, "worker-1", Duration::from_secs(600)).await? {
//!     let _body = store.open_body(&claimed.lease.message).await?;
//!     // ... send it; then, for a 451:
//!     let schedule = Schedule::default();
//!     let rcpt = &claimed.recipients[0];
//!     let next = match schedule.next(rcpt.attempts + 1, claimed.created, now, smtp_queue::random_unit()) {
//!         smtp_queue::Next::RetryAt(t) => t,
//!         smtp_queue::Next::Expire => now,
//!     };
//!     let attempt = Attempt { code: Some(451), text: "try later".into(), ..Attempt::default() };
//!     store.record(&claimed.lease, vec![(rcpt.id, Outcome::Deferred { attempt, next })], now).await?;
//! }
//! # let _ = ids;
//! # Ok(())
//! # }
//! ```
//!
//! # Many hosts: the PostgreSQL store
//!
//! [`PgStore`] keeps the queue in PostgreSQL for workers on many hosts:
//! claims with `FOR UPDATE SKIP LOCKED` under fenced leases, bodies in
//! 256 KiB chunks streamed both ways, budgets and connection slots kept
//! fleet-wide, the outcome
//! log as a table ([`PgStore::outcomes`]), each worker's heartbeat
//! ([`Store::workers`]), versioned migrations under an advisory lock.
//! [`open`] picks it for a `postgres://` URL, the SQLite store otherwise:
//!
//! ```text
//!  host A: Runner ─┐                      ┌─ messages, recipients (leases, generation)
//!  host B: Runner ─┼─ PgStore ── SQL ─────┼─ body_chunks (256 KiB bytea)
//!  host C: Runner ─┘   SKIP LOCKED        └─ outcome_log, workers, budgets, throttles
//! ```
//!
//! # Tracing
//!
//! The runner logs one INFO event per recorded outcome, target
//! `smtp_queue::delivery`, message the outcome's word, with these fields
//! (a field without a value is left out):
//!
//! | field | |
//! |---|---|
//! | `message_id` | the queued message |
//! | `recipient` | the address |
//! | `destination` | `relay:HOST:PORT`; in direct delivery the MX host set `mx:HOST[,HOST…]` (`direct:DOMAIN` for a domain without one: no MX, a DNS failure) |
//! | `outcome` | `delivered`, `failed`, `deferred` or `expired` (the new state) |
//! | `code`, `enhanced_code`, `reply` | the deciding reply (or, without a code, what failed locally) |
//! | `host`, `tls` | where, and the TLS version if encrypted |
//! | `attempts` | attempts made, this one included |
//! | `next_attempt_ms`, `retry_in_s` | a deferral's next attempt: epoch milliseconds, seconds from now |
//! | `taken_over` | claimed from an expired lease: the message may have arrived before |
//!
//! Warnings (a lease not renewed, a reply lost after the data) and errors
//! (a destination held) go out under the runner's module path. No field
//! holds a credential; `reply` is the server's text, and a server can echo
//! what it was sent, so a program that logs for others filters it as it
//! filters anything a peer chose.
//!
//! # Panics, errors and unwraps
//!
//! Nothing here panics on data read from disk: a row or body that is not
//! what was written is [`Error::Corrupt`], naming the message when the
//! fault is one message's. [`Error`] says whose fault a failure is.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod dsn;
mod error;
mod event;
pub mod log;
pub mod mta_sts;
mod notify;
mod postgres;
pub mod rate;
mod rows;
mod runner;
mod schedule;
pub mod shaping;
mod spool;
mod sqlite;
mod state;
mod stop;
mod store;
pub mod time;
pub mod tls_report;
mod verdict;

pub use error::{Error, Result};
pub use event::RunEvent;
pub use notify::{Notified, enqueue_owed, enqueue_owed_via};
pub use postgres::{PG_SCHEMA_VERSION, PgSettings, PgStore, redact_url};
pub use runner::{
    DIRECT_ROUTE, DIRECT_ROUTE_WITHOUT_MTA_STS, Runner, RunnerConfig, Summary, mx_destination,
    relay_budget_key, relay_route, relay_route_for,
};
pub use schedule::{Next, Schedule, random_unit};
pub use shaping::{Shaping, Throttle};
pub use spool::SpoolBody;
pub use sqlite::{LogPlace, SCHEMA_VERSION, SqliteSettings, SqliteStore};
pub use state::{IllegalTransition, RecipientState, Transition, UnknownState};
pub use stop::Stop;
/// Opens the queue named by `url_or_dir`: a `postgres://` or
/// `postgresql://` URL opens the PostgreSQL store ([`PgStore::open`]),
/// anything else is a spool directory for the SQLite store
/// ([`SqliteStore::open`]). Both create or upgrade their schema.
pub async fn open(url_or_dir: &str) -> Result<std::sync::Arc<dyn Store>> {
    if is_postgres_url(url_or_dir) {
        Ok(std::sync::Arc::new(PgStore::open(url_or_dir).await?))
    } else {
        Ok(std::sync::Arc::new(SqliteStore::open(url_or_dir).await?))
    }
}

/// Whether `text` names a PostgreSQL queue (`postgres://`, `postgresql://`).
pub fn is_postgres_url(text: &str) -> bool {
    let lower = text.get(..13).unwrap_or(text).to_ascii_lowercase();
    lower.starts_with("postgres://") || lower.starts_with("postgresql://")
}

pub use store::{
    Attempt, Backoff, Body, BodyKind, Claimed, ClaimedRecipient, Enqueued, Lease, ListFilter,
    MessageId, MessageInfo, MessageOptions, Migration, NewMessage, Outcome, RecipientId,
    RecipientInfo, RetryTarget, RouteWaiting, SlotLease, Stats, Store, TlsFacts, WorkerActivity,
};
