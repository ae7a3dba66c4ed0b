//! The lease operations: claiming due recipients, renewing a lease and
//! releasing it (recording outcomes under it is [`super::record`]).

use std::time::{Duration, SystemTime};

use super::rows::{attempts_of, get, options_of, size_of, state_of};
use super::{DUE, LEASED, SqliteStore, WAITING, route_takes};
use crate::error::{Error, Result};
use crate::log::Entry;
use crate::state::Transition;
use crate::store::{Claimed, ClaimedRecipient, Lease, MessageId, RecipientId, from_millis, millis};

/// The ids of messages due at `$1`, at most `$2`: oldest first by the
/// second, and within a second by recipient domain (a message's first due
/// recipient's). Each half reads through its partial index: only due
/// recipients are read. With `routed`, only messages of route `$3` and
/// route-less ones: each due recipient's message is looked up by its key
/// ([`route_takes`]), so finished messages are never read. With `spread`,
/// at most the next parameter's number of messages per domain
/// ([`Store::claim_due_spread`]).
///
/// [`Store::claim_due_spread`]: crate::Store::claim_due_spread
pub(super) fn due_messages(routed: bool, spread: bool) -> String {
    let (join, filter) = if routed {
        (
            "JOIN messages m ON m.id = d.message_id",
            format!("WHERE {}", route_takes("$3")),
        )
    } else {
        ("", String::new())
    };
    let due = format!(
        "SELECT d.message_id, MIN(d.due) / 1000 AS second,
             MIN(lower(substr(d.address, instr(d.address, '@') + 1))) AS domain
         FROM (
             SELECT message_id, next_attempt_ms AS due, address FROM recipients
             WHERE {WAITING} AND next_attempt_ms <= $1
             UNION ALL
             SELECT message_id, lease_until_ms AS due, address FROM recipients
             WHERE {LEASED} AND lease_until_ms <= $1) AS d
         {join} {filter}
         GROUP BY d.message_id"
    );
    let due = if spread {
        let cap = if routed { "$4" } else { "$3" };
        format!(
            "SELECT * FROM (
                 SELECT *, ROW_NUMBER() OVER (PARTITION BY domain ORDER BY second, message_id) AS nth
                 FROM ({due}))
             WHERE nth <= {cap}"
        )
    } else {
        due
    };
    format!("SELECT message_id FROM ({due}) ORDER BY second, domain, message_id LIMIT $2")
}

pub(super) async fn claim_due(
    store: &SqliteStore,
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
    let now_ms = millis(now)?;
    let until = now + lease;
    let until_ms = millis(until)?;
    let mut tx = store.begin(doing).await?;
    // Oldest first by the second, and within a second by recipient
    // domain: a claim of a bulk enqueue then holds runs of messages to
    // the same domain, which direct delivery sends on shared sessions.
    let sql = due_messages(route.is_some(), per_domain.is_some());
    let mut query = sqlx::query_scalar(&sql).bind(now_ms).bind(i64::from(limit));
    if let Some(route) = route {
        query = query.bind(route);
    }
    if let Some(cap) = per_domain {
        query = query.bind(i64::from(cap));
    }
    let ids: Vec<String> = query
        .fetch_all(&mut *tx)
        .await
        .map_err(|e| Error::db(doing, e))?;
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    // One generation for the whole claim: a lease is (message, generation),
    // and every later claim of any of these messages gets a higher one.
    let generation: i64 =
        sqlx::query_scalar("UPDATE lease_generation SET value = value + 1 RETURNING value")
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| Error::db(doing, e))?;
    // The claimed ids, as one JSON array parameter (set-based statements:
    // a claim of thousands of messages is a handful of statements).
    let set = serde_json::to_string(&ids)
        .map_err(|e| Error::Misuse(format!("message ids do not serialize: {e}")))?;
    let messages = sqlx::query(
        "SELECT id, sender, options, body_size, body_sha256, created_ms FROM messages
         WHERE id IN (SELECT value FROM json_each($1))",
    )
    .bind(&set)
    .fetch_all(&mut *tx)
    .await
    .map_err(|e| Error::db(doing, e))?;
    // A message whose row does not read is left out (said once per
    // claim), not the whole claim: one corrupt row must not stop delivery.
    let readable: std::collections::HashSet<String> = messages
        .iter()
        .filter_map(crate::rows::readable_message)
        .collect();
    let ids: Vec<String> = ids.into_iter().filter(|id| readable.contains(id)).collect();
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let set = serde_json::to_string(&ids)
        .map_err(|e| Error::Misuse(format!("message ids do not serialize: {e}")))?;
    let rows = sqlx::query(&format!(
        "SELECT id, message_id, address, state, attempts FROM recipients
         WHERE message_id IN (SELECT value FROM json_each($2)) AND {DUE}
         ORDER BY message_id, position"
    ))
    .bind(now_ms)
    .bind(&set)
    .fetch_all(&mut *tx)
    .await
    .map_err(|e| Error::db(doing, e))?;
    sqlx::query(&format!(
        "UPDATE recipients SET state = 'delivering', lease_generation = $2, lease_worker = $3,
         lease_until_ms = $4, updated_ms = $1
         WHERE message_id IN (SELECT value FROM json_each($5)) AND {DUE}"
    ))
    .bind(now_ms)
    .bind(generation)
    .bind(worker)
    .bind(until_ms)
    .bind(&set)
    .execute(&mut *tx)
    .await
    .map_err(|e| Error::db(doing, e))?;
    let mut by_message: std::collections::HashMap<String, Vec<ClaimedRecipient>> =
        std::collections::HashMap::with_capacity(ids.len());
    let mut entries = Vec::with_capacity(rows.len());
    for row in &rows {
        let from = state_of(row)?;
        // Checked before the commit: an illegal move rolls the claim back.
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
    let mut rows_by_id: std::collections::HashMap<String, &sqlx::sqlite::SqliteRow> = messages
        .iter()
        .map(|m| Ok((get::<String>(m, "id")?, m)))
        .collect::<Result<_>>()?;
    let mut claimed = Vec::with_capacity(ids.len());
    // In the claim's order.
    for id in ids {
        let message_id = MessageId::parse(&id)
            .map_err(|_| Error::corrupt(None, format!("{id:?} is not a message id")))?;
        let Some(message) = rows_by_id.remove(&id) else {
            return Err(Error::corrupt(
                Some(&message_id),
                "it has recipients but no message row",
            ));
        };
        let recipients = by_message.remove(&id).unwrap_or_default();
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
    tx.commit().await.map_err(|e| Error::db(doing, e))?;
    store.write_log(&entries);
    Ok(claimed)
}

pub(super) async fn renew(
    store: &SqliteStore,
    lease: &Lease,
    until: SystemTime,
    now: SystemTime,
) -> Result<Lease> {
    let doing = "renewing a lease";
    let mut tx = store.begin(doing).await?;
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

pub(super) async fn release(
    store: &SqliteStore,
    lease: &Lease,
    not_before: Option<SystemTime>,
    now: SystemTime,
) -> Result<u64> {
    let doing = "releasing a lease";
    let now_ms = millis(now)?;
    let not_before_ms = not_before.map(millis).transpose()?;
    let mut tx = store.begin(doing).await?;
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
    store.write_log(&entries);
    Ok(entries.len() as u64)
}

/// The workers holding leases (live or expired, not yet taken over): the
/// SQLite store keeps no table of workers, so a worker is known while it
/// holds recipients; its heartbeat is its last claim or renewal of them.
pub(super) async fn workers(
    store: &SqliteStore,
    now: SystemTime,
) -> Result<Vec<crate::store::WorkerActivity>> {
    let rows = sqlx::query(&format!(
        "SELECT lease_worker AS worker, MAX(updated_ms) AS seen,
             COUNT(DISTINCT CASE WHEN lease_until_ms > $1 THEN message_id END) AS leases,
             COUNT(CASE WHEN lease_until_ms > $1 THEN 1 END) AS recipients
         FROM recipients WHERE {LEASED} AND lease_worker IS NOT NULL
         GROUP BY lease_worker ORDER BY lease_worker"
    ))
    .bind(millis(now)?)
    .fetch_all(&store.pool)
    .await
    .map_err(|e| Error::db("reading the workers' leases", e))?;
    rows.iter()
        .map(|row| {
            Ok(crate::store::WorkerActivity {
                worker: get(row, "worker")?,
                host: None,
                pid: None,
                started: None,
                last_seen: from_millis(get(row, "seen")?),
                leases: u64::try_from(get::<i64>(row, "leases")?).unwrap_or(0),
                recipients: u64::try_from(get::<i64>(row, "recipients")?).unwrap_or(0),
            })
        })
        .collect()
}
