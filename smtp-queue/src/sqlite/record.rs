//! Recording outcomes under leases, in group commits.
//!
//! Callers that arrive while a commit is under way are committed together
//! by the next one, in a handful of statements whatever their number:
//!
//! ```text
//! BEGIN IMMEDIATE
//!   for each caller with several recipients: are they all still held?   (else refused whole)
//!   UPDATE recipients … FROM json_each(every outcome)                   (each row under its lease)
//!       RETURNING what the outcome log needs; a missing row: a stale lease, that caller refused
//!   SELECT sender, options FROM messages WHERE id IN (messages with a final outcome)
//!   UPDATE messages SET dsn_owed_ms … for those that asked for a notification
//! COMMIT
//! ```
//!
//! A stale lease (one taken over after it expired) changes nothing: its
//! caller alone gets [`Error::StaleLease`].

use std::collections::{HashMap, HashSet};
use std::time::SystemTime;

use serde_json::{Value, json};
use sqlx::{Sqlite, Transaction};
use tokio::sync::oneshot;

use super::rows::{attempts_of, get};
use super::{SqliteStore, notify};
use crate::error::{Error, Result};
use crate::log::Entry;
use crate::state::RecipientState;
use crate::store::{Lease, Outcome, RecipientId, millis};

/// One caller's outcomes, waiting for a group commit.
#[derive(Debug)]
pub(super) struct PendingRecord {
    lease: Lease,
    outcomes: Vec<(RecipientId, Outcome)>,
    now: SystemTime,
    done: oneshot::Sender<Result<()>>,
}

/// Records `outcomes` under `lease` in the next group commit, and returns
/// when it is committed (or refused).
pub(super) async fn record(
    store: &SqliteStore,
    lease: &Lease,
    outcomes: Vec<(RecipientId, Outcome)>,
    now: SystemTime,
) -> Result<()> {
    let (done, mut result) = oneshot::channel();
    lock(&store.records).push(PendingRecord {
        lease: lease.clone(),
        outcomes,
        now,
        done,
    });
    let leader = store.recording.lock().await;
    // An earlier leader may have committed this one already.
    if let Ok(r) = result.try_recv() {
        return r;
    }
    let batch = std::mem::take(&mut *lock(&store.records));
    commit(store, batch).await;
    drop(leader);
    result.await.unwrap_or_else(|_| {
        Err(Error::Misuse(
            "a group commit ended without an answer for this caller".into(),
        ))
    })
}

const DOING: &str = "recording outcomes";

/// A caller being committed: its outcomes as checked, and its answer.
struct Caller {
    pending: PendingRecord,
    now_ms: i64,
    /// Each outcome's new state, or why the caller is refused.
    checked: Result<Vec<RecipientState>>,
}

/// Commits `batch` in one transaction and answers each caller.
async fn commit(store: &SqliteStore, batch: Vec<PendingRecord>) {
    let mut callers: Vec<Caller> = batch.into_iter().map(check).collect();
    let entries = match apply(store, &mut callers).await {
        Ok(entries) => entries,
        Err(e) => {
            // Nothing was committed: every caller gets the error.
            for c in callers {
                let answer = c.checked.and(Err(failed(&e)));
                let _ = c.pending.done.send(answer);
            }
            return;
        }
    };
    store.write_log(&entries);
    for c in callers {
        let _ = c.pending.done.send(c.checked.map(|_| ()));
    }
}

/// What can be known before the database: each outcome's transition.
fn check(pending: PendingRecord) -> Caller {
    let checked = (|| {
        let distinct: HashSet<RecipientId> = pending.outcomes.iter().map(|(r, _)| *r).collect();
        if distinct.len() != pending.outcomes.len() {
            return Err(Error::Misuse(format!(
                "a recipient recorded twice in one call (message {})",
                pending.lease.message
            )));
        }
        pending
            .outcomes
            .iter()
            .map(|(_, o)| RecipientState::Delivering.apply(o.transition()))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(Error::from)
    })();
    let (now_ms, checked) = match millis(pending.now) {
        Ok(ms) => (ms, checked),
        Err(e) => (0, Err(e)),
    };
    Caller {
        pending,
        now_ms,
        checked,
    }
}

/// The transaction: the callers still standing after each check, their
/// outcomes applied and notifications marked; returns the log's entries.
async fn apply(store: &SqliteStore, callers: &mut [Caller]) -> Result<Vec<Entry>> {
    let mut tx = store.begin(DOING).await?;
    // Several recipients: all must be held before any changes (a bulk
    // run's messages have one; they are checked by the UPDATE below).
    for c in callers.iter_mut() {
        if c.checked.is_ok()
            && c.pending.outcomes.len() > 1
            && !all_held(&mut tx, &c.pending).await?
        {
            c.checked = Err(stale(&c.pending.lease));
        }
    }
    let updated = update(&mut tx, callers).await?;
    let mut entries = Vec::new();
    let mut finals = Vec::new();
    for c in callers.iter_mut() {
        let Ok(states) = &c.checked else { continue };
        let lease = &c.pending.lease;
        // One recipient whose lease was taken over: its row did not match.
        let Some(rows) = c
            .pending
            .outcomes
            .iter()
            .map(|(r, _)| updated.get(&r.0))
            .collect::<Option<Vec<&Updated>>>()
        else {
            c.checked = Err(stale(lease));
            continue;
        };
        for (((rid, outcome), to), row) in c.pending.outcomes.iter().zip(states).zip(rows) {
            entries.push(Entry {
                at_ms: c.now_ms,
                event: to.as_str().into(),
                message: lease.message.clone(),
                recipient: *rid,
                rcpt: row.address.clone(),
                from: Some(RecipientState::Delivering),
                to: Some(*to),
                attempts: row.attempts,
                next_attempt_ms: matches!(outcome, Outcome::Deferred { .. })
                    .then_some(row.next_attempt_ms),
                worker: Some(lease.worker.clone()),
                generation: Some(lease.generation),
                attempt: outcome.attempt().cloned(),
            });
        }
        if c.pending
            .outcomes
            .iter()
            .any(|(_, o)| !matches!(o, Outcome::Deferred { .. }))
        {
            finals.push((lease.message.clone(), c.now_ms));
        }
    }
    // With the last outcome, or not at all: a notification owed is never
    // lost to a crash between the two.
    notify::mark_owed(&mut tx, &finals).await?;
    tx.commit().await.map_err(|e| Error::db(DOING, e))?;
    Ok(entries)
}

/// Whether every recipient of `p` is still held by its lease.
async fn all_held(tx: &mut Transaction<'static, Sqlite>, p: &PendingRecord) -> Result<bool> {
    let ids: Vec<i64> = p.outcomes.iter().map(|(r, _)| r.0).collect();
    let held: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM recipients WHERE id IN (SELECT value FROM json_each($1))
         AND message_id = $2 AND lease_generation = $3 AND state = 'delivering'",
    )
    .bind(json!(ids).to_string())
    .bind(p.lease.message.as_str())
    .bind(p.lease.generation)
    .fetch_one(&mut **tx)
    .await
    .map_err(|e| Error::db(DOING, e))?;
    Ok(usize::try_from(held).ok() == Some(ids.len()))
}

/// A recipient row as the update left it.
struct Updated {
    address: String,
    attempts: u32,
    next_attempt_ms: i64,
}

/// Applies every standing caller's outcomes in one statement, each row
/// only under its caller's lease; returns the rows changed, by id.
async fn update(
    tx: &mut Transaction<'static, Sqlite>,
    callers: &[Caller],
) -> Result<HashMap<i64, Updated>> {
    let mut rows = Vec::new();
    for c in callers {
        let Ok(states) = &c.checked else { continue };
        for ((rid, outcome), to) in c.pending.outcomes.iter().zip(states) {
            let a = outcome.attempt();
            let next_ms = match outcome {
                Outcome::Deferred { next, .. } => Some(millis(*next)?),
                _ => None,
            };
            let tls = match a.and_then(|a| a.tls.as_ref()) {
                Some(t) => Some(
                    serde_json::to_string(t)
                        .map_err(|e| Error::Misuse(format!("TLS facts do not serialize: {e}")))?,
                ),
                None => None,
            };
            rows.push(json!([
                rid.0,
                c.pending.lease.message.as_str(),
                c.pending.lease.generation,
                to.as_str(),
                i64::from(a.is_some()),
                next_ms,
                a.and_then(|a| a.code),
                a.and_then(|a| a.enhanced.as_deref()),
                a.map(|a| a.text.as_str()),
                a.and_then(|a| a.host.as_deref()),
                tls,
                c.now_ms,
            ]));
        }
    }
    if rows.is_empty() {
        return Ok(HashMap::new());
    }
    // An attempt's facts replace the last ones; an outcome without one
    // (an expiry with no new attempt) keeps them. The unary `+`s keep
    // SQLite's planner on the primary key, one lookup per outcome: without
    // statistics it would otherwise walk every leased recipient per
    // outcome through the `state` index.
    let changed = sqlx::query(
        "UPDATE recipients SET state = o.state, attempts = recipients.attempts + o.attempted,
             next_attempt_ms = COALESCE(o.next_ms, recipients.next_attempt_ms),
             updated_ms = o.now_ms,
             lease_generation = NULL, lease_worker = NULL, lease_until_ms = NULL,
             last_code = CASE WHEN o.attempted = 1 THEN o.code ELSE recipients.last_code END,
             last_enhanced = CASE WHEN o.attempted = 1 THEN o.enhanced ELSE recipients.last_enhanced END,
             last_text = CASE WHEN o.attempted = 1 THEN o.text ELSE recipients.last_text END,
             last_host = CASE WHEN o.attempted = 1 THEN o.host ELSE recipients.last_host END,
             last_tls = CASE WHEN o.attempted = 1 THEN o.tls ELSE recipients.last_tls END
         FROM (SELECT value ->> 0 AS id, value ->> 1 AS message_id, value ->> 2 AS generation,
                      value ->> 3 AS state, value ->> 4 AS attempted, value ->> 5 AS next_ms,
                      value ->> 6 AS code, value ->> 7 AS enhanced, value ->> 8 AS text,
                      value ->> 9 AS host, value ->> 10 AS tls, value ->> 11 AS now_ms
               FROM json_each($1)) AS o
         WHERE recipients.id = o.id AND +recipients.message_id = o.message_id
           AND +recipients.lease_generation = o.generation AND +recipients.state = 'delivering'
         RETURNING recipients.id AS id, recipients.address AS address,
                   recipients.attempts AS attempts, recipients.next_attempt_ms AS next_attempt_ms",
    )
    .bind(Value::Array(rows).to_string())
    .fetch_all(&mut **tx)
    .await
    .map_err(|e| Error::db(DOING, e))?;
    changed
        .iter()
        .map(|row| {
            Ok((
                get(row, "id")?,
                Updated {
                    address: get(row, "address")?,
                    attempts: attempts_of(row)?,
                    next_attempt_ms: get(row, "next_attempt_ms")?,
                },
            ))
        })
        .collect()
}

/// `e` again, for each caller of a commit that failed.
fn failed(e: &Error) -> Error {
    Error::Storage {
        doing: DOING.into(),
        path: None,
        source: e.to_string().into(),
    }
}

fn stale(lease: &Lease) -> Error {
    Error::StaleLease {
        message: lease.message.clone(),
        generation: lease.generation,
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
