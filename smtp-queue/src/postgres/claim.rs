//! The lease operations across a fleet: claiming with `FOR UPDATE SKIP
//! LOCKED`, renewing, releasing; and the `workers` table they keep.
//!
//! ```text
//! BEGIN
//!   SELECT m.id … due messages, oldest first … FOR NO KEY UPDATE OF m SKIP LOCKED LIMIT n
//!       (a message another worker is claiming is skipped, not waited for)
//!   SELECT … recipients of those messages that are due now … FOR UPDATE
//!       (a fresh snapshot: what a claim committed just before is not due)
//!   nextval('lease_generation')
//!   UPDATE recipients SET state = 'delivering', lease_* …
//!   INSERT outcome_log rows; UPSERT workers (heartbeat)
//! COMMIT
//! ```
//!
//! Every writer locks a message's row before it touches its recipients
//! ([`lock_messages`]; several in id order): two claims of one message
//! take turns, and the second sees the first's leases (live: not due); a
//! claim skips the messages another writer holds instead of waiting, so
//! no two transactions ever wait for each other in a cycle. Record, renew and release change only
//! rows whose `lease_generation` is the lease's: a lease taken over after
//! it expired has a newer generation, and the older holder is refused.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use sqlx::{Postgres, Transaction};

use super::rows::{attempts_of, get, options_of, size_of, state_of};
use super::{DUE, LEASED, PgStore, WAITING, route_takes};
use crate::error::{Error, Result};
use crate::log::Entry;
use crate::state::Transition;
use crate::store::{
    Claimed, ClaimedRecipient, Lease, MessageId, RecipientId, WorkerActivity, from_millis, millis,
};

/// The due messages at `$1`, at most `$2`, locked, skipping those another
/// transaction holds: oldest first by the second, and within a second by
/// recipient domain (a message's first due recipient's: runs of one
/// domain share direct-delivery sessions). With `routed`, only messages
/// of route `$3` and route-less ones. With `spread`, at most the next
/// parameter's number of messages per domain, counted among the route's
/// due messages ([`Store::claim_due_spread`]).
///
/// [`Store::claim_due_spread`]: crate::Store::claim_due_spread
fn due_messages(routed: bool, spread: bool) -> String {
    let (join, filter) = if routed {
        (
            "JOIN messages m ON m.id = r.message_id",
            format!("WHERE {}", route_takes("$3")),
        )
    } else {
        ("", String::new())
    };
    let due = format!(
        "SELECT r.message_id, MIN(r.due) / 1000 AS second,
             MIN(lower(split_part(r.address, '@', 2))) AS domain
         FROM (SELECT message_id, next_attempt_ms AS due, address FROM recipients
               WHERE {WAITING} AND next_attempt_ms <= $1
               UNION ALL
               SELECT message_id, lease_until_ms AS due, address FROM recipients
               WHERE {LEASED} AND lease_until_ms <= $1) AS r
         {join} {filter}
         GROUP BY r.message_id"
    );
    let due = if spread {
        let cap = if routed { "$4" } else { "$3" };
        format!(
            "SELECT * FROM (
                 SELECT g.*, ROW_NUMBER() OVER (PARTITION BY domain ORDER BY second, message_id) AS nth
                 FROM ({due}) AS g) AS ranked
             WHERE nth <= {cap}"
        )
    } else {
        due
    };
    format!(
        "SELECT m.id FROM messages m JOIN ({due}) AS d ON d.message_id = m.id
         ORDER BY d.second, d.domain, m.id
         LIMIT $2
         FOR NO KEY UPDATE OF m SKIP LOCKED"
    )
}

pub(super) async fn claim_due(
    store: &PgStore,
    route: Option<&str>,
    now: SystemTime,
    limit: u32,
    per_domain: Option<u32>,
    worker: &str,
    lease: Duration,
) -> Result<Vec<Claimed>> {
    if worker.is_empty() {
        return Err(Error::Misuse("a claim without a worker id".into()));
    }
    let doing = "claiming due recipients";
    let db = store.db(doing);
    let now_ms = millis(now)?;
    let until = now + lease;
    let until_ms = millis(until)?;
    let mut tx = store.begin(doing).await?;
    let sql = due_messages(route.is_some(), per_domain.is_some());
    let mut query = sqlx::query_scalar(&sql).bind(now_ms).bind(i64::from(limit));
    if let Some(route) = route {
        query = query.bind(route);
    }
    if let Some(cap) = per_domain {
        query = query.bind(i64::from(cap));
    }
    let ids: Vec<String> = query.fetch_all(&mut *tx).await.map_err(&db)?;
    heartbeat(store, &mut tx, worker, now_ms).await?;
    // A message whose row does not read is left out (said once per
    // claim), not the whole claim: one corrupt row must not stop a fleet.
    let readable: std::collections::HashSet<String> = sqlx::query(
        "SELECT id, options::text AS options, body_size FROM messages WHERE id = ANY($1)",
    )
    .bind(&ids)
    .fetch_all(&mut *tx)
    .await
    .map_err(&db)?
    .iter()
    .filter_map(crate::rows::readable_message)
    .collect();
    let ids: Vec<String> = ids.into_iter().filter(|id| readable.contains(id)).collect();
    if ids.is_empty() {
        tx.commit().await.map_err(&db)?;
        return Ok(Vec::new());
    }
    // Read again now that the messages are locked: a claim that committed
    // between the first statement's snapshot and the lock took some.
    let rows = sqlx::query(&format!(
        "SELECT id, message_id, address, state, attempts FROM recipients
         WHERE message_id = ANY($2) AND {DUE}
         ORDER BY message_id, position FOR UPDATE"
    ))
    .bind(now_ms)
    .bind(&ids)
    .fetch_all(&mut *tx)
    .await
    .map_err(&db)?;
    if rows.is_empty() {
        tx.commit().await.map_err(&db)?;
        return Ok(Vec::new());
    }
    let generation: i64 = sqlx::query_scalar("SELECT nextval('lease_generation')")
        .fetch_one(&mut *tx)
        .await
        .map_err(&db)?;
    let rids: Vec<i64> = rows
        .iter()
        .map(|r| get::<i64>(r, "id"))
        .collect::<Result<_>>()?;
    sqlx::query(
        "UPDATE recipients SET state = 'delivering', lease_generation = $2, lease_worker = $3,
         lease_until_ms = $4, updated_ms = $1 WHERE id = ANY($5)",
    )
    .bind(now_ms)
    .bind(generation)
    .bind(worker)
    .bind(until_ms)
    .bind(&rids)
    .execute(&mut *tx)
    .await
    .map_err(&db)?;
    let messages = sqlx::query(
        "SELECT id, sender, options::text AS options, body_size, created_ms FROM messages
         WHERE id = ANY($1)",
    )
    .bind(&ids)
    .fetch_all(&mut *tx)
    .await
    .map_err(&db)?;
    let mut by_message: HashMap<String, Vec<ClaimedRecipient>> = HashMap::new();
    let mut entries = Vec::with_capacity(rows.len());
    for row in &rows {
        let from = state_of(row)?;
        let to = from.apply(Transition::Claim)?;
        let message: String = get(row, "message_id")?;
        let id = MessageId::parse(&message)
            .map_err(|_| Error::corrupt(None, format!("{message:?} is not a message id")))?;
        let r = ClaimedRecipient {
            id: RecipientId(get(row, "id")?),
            address: get(row, "address")?,
            attempts: attempts_of(row)?,
            claimed_from: from,
        };
        entries.push(Entry {
            at_ms: now_ms,
            event: "claimed".into(),
            message: id,
            recipient: r.id,
            rcpt: r.address.clone(),
            from: Some(from),
            to: Some(to),
            attempts: r.attempts,
            next_attempt_ms: None,
            worker: Some(worker.to_owned()),
            generation: Some(generation),
            attempt: None,
        });
        by_message.entry(message).or_default().push(r);
    }
    let mut rows_by_id = HashMap::with_capacity(messages.len());
    for m in &messages {
        rows_by_id.insert(get::<String>(m, "id")?, m);
    }
    let mut claimed = Vec::with_capacity(ids.len());
    for id in ids {
        // Locked, but its due recipients were taken just before: skipped.
        let Some(recipients) = by_message.remove(&id) else {
            continue;
        };
        let message_id = MessageId::parse(&id)
            .map_err(|_| Error::corrupt(None, format!("{id:?} is not a message id")))?;
        let Some(message) = rows_by_id.remove(&id) else {
            return Err(Error::corrupt(
                Some(&message_id),
                "it has recipients but no message row",
            ));
        };
        claimed.push(Claimed {
            lease: Lease {
                message: message_id.clone(),
                generation,
                worker: worker.to_owned(),
                until,
            },
            from: get(message, "sender")?,
            created: from_millis(get(message, "created_ms")?),
            body_size: size_of(message)?,
            options: options_of(message, &message_id)?,
            recipients,
        });
    }
    store.log(&mut tx, &entries).await?;
    tx.commit().await.map_err(&db)?;
    Ok(claimed)
}

/// Locks the rows of those of `ids` that exist (in id order), as every
/// writer does before it changes their recipients; returns their ids.
pub(super) async fn lock_messages(
    store: &PgStore,
    tx: &mut Transaction<'static, Postgres>,
    ids: &[MessageId],
) -> Result<Vec<String>> {
    let ids: Vec<&str> = ids.iter().map(MessageId::as_str).collect();
    sqlx::query_scalar("SELECT id FROM messages WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE")
        .bind(&ids)
        .fetch_all(&mut **tx)
        .await
        .map_err(store.db("locking messages"))
}

/// Records `worker`'s heartbeat (this process's host and pid).
async fn heartbeat(
    store: &PgStore,
    tx: &mut Transaction<'static, Postgres>,
    worker: &str,
    now_ms: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO workers (worker, host, pid, started_ms, last_seen_ms)
         VALUES ($1, $2, $3, $4, $4)
         ON CONFLICT (worker) DO UPDATE SET host = excluded.host, pid = excluded.pid,
             started_ms = CASE WHEN workers.host = excluded.host AND workers.pid = excluded.pid
                          THEN workers.started_ms ELSE excluded.started_ms END,
             last_seen_ms = GREATEST(workers.last_seen_ms, excluded.last_seen_ms)",
    )
    .bind(worker)
    .bind(&store.host)
    .bind(store.pid)
    .bind(now_ms)
    .execute(&mut **tx)
    .await
    .map_err(store.db("recording a worker's heartbeat"))?;
    Ok(())
}

pub(super) async fn renew(
    store: &PgStore,
    lease: &Lease,
    until: SystemTime,
    now: SystemTime,
) -> Result<Lease> {
    let doing = "renewing a lease";
    let now_ms = millis(now)?;
    let mut tx = store.begin(doing).await?;
    lock_messages(store, &mut tx, std::slice::from_ref(&lease.message)).await?;
    let done = sqlx::query(
        "UPDATE recipients SET lease_until_ms = $1, updated_ms = $2
         WHERE message_id = $3 AND lease_generation = $4 AND state = 'delivering'",
    )
    .bind(millis(until)?)
    .bind(now_ms)
    .bind(lease.message.as_str())
    .bind(lease.generation)
    .execute(&mut *tx)
    .await
    .map_err(store.db(doing))?;
    if done.rows_affected() == 0 {
        return Err(Error::StaleLease {
            message: lease.message.clone(),
            generation: lease.generation,
        });
    }
    heartbeat(store, &mut tx, &lease.worker, now_ms).await?;
    tx.commit().await.map_err(store.db(doing))?;
    Ok(Lease {
        until,
        ..lease.clone()
    })
}

pub(super) async fn release(
    store: &PgStore,
    lease: &Lease,
    not_before: Option<SystemTime>,
    now: SystemTime,
) -> Result<u64> {
    let doing = "releasing a lease";
    let db = store.db(doing);
    let now_ms = millis(now)?;
    let not_before_ms = not_before.map(millis).transpose()?;
    let mut tx = store.begin(doing).await?;
    lock_messages(store, &mut tx, std::slice::from_ref(&lease.message)).await?;
    let rows = sqlx::query(
        "SELECT id, address, state, attempts, next_attempt_ms FROM recipients
         WHERE message_id = $1 AND lease_generation = $2 AND state = 'delivering'
         ORDER BY position FOR UPDATE",
    )
    .bind(lease.message.as_str())
    .bind(lease.generation)
    .fetch_all(&mut *tx)
    .await
    .map_err(&db)?;
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
        .map_err(&db)?;
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
    store.log(&mut tx, &entries).await?;
    tx.commit().await.map_err(&db)?;
    Ok(entries.len() as u64)
}

/// Every worker that ever claimed, with its heartbeat and what it holds
/// under live leases at `now`.
pub(super) async fn workers(store: &PgStore, now: SystemTime) -> Result<Vec<WorkerActivity>> {
    let rows: Vec<(String, String, i64, i64, i64, i64, i64)> = sqlx::query_as(&format!(
        "SELECT w.worker, w.host, w.pid, w.started_ms, w.last_seen_ms,
             COUNT(DISTINCT r.message_id), COUNT(r.id)
         FROM workers w LEFT JOIN recipients r ON r.lease_worker = w.worker
             AND r.{LEASED} AND r.lease_until_ms > $1
         GROUP BY w.worker ORDER BY w.worker"
    ))
    .bind(millis(now)?)
    .fetch_all(&store.pool)
    .await
    .map_err(store.db("reading the workers"))?;
    Ok(rows
        .into_iter()
        .map(
            |(worker, host, pid, started, seen, leases, recipients)| WorkerActivity {
                worker,
                host: Some(host),
                pid: u32::try_from(pid).ok(),
                started: Some(from_millis(started)),
                last_seen: from_millis(seen),
                leases: u64::try_from(leases).unwrap_or(0),
                recipients: u64::try_from(recipients).unwrap_or(0),
            },
        )
        .collect())
}
