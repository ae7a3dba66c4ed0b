//! Administration and inspection: list, show, retry, delete, purge,
//! stats, the next due time, and the per-destination back-off.

use std::collections::HashMap;
use std::time::SystemTime;

use super::rows::{attempts_of, get, message_id_of, options_of, recipient_of, size_of, state_of};
use sqlx::sqlite::SqliteRow;

use super::{LEASED, RECIPIENT_COLUMNS, SqliteStore, WAITING, route_takes};
use crate::error::{Error, Result};
use crate::log::Entry;
use crate::state::{RecipientState, Transition};
use crate::store::{
    Backoff, ListFilter, MessageId, MessageInfo, RecipientId, RecipientInfo, RetryTarget,
    RouteWaiting, Stats, from_millis, millis,
};

pub(super) async fn list(store: &SqliteStore, filter: &ListFilter) -> Result<Vec<MessageInfo>> {
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
        .fetch_all(&store.pool)
        .await
        .map_err(|e| Error::db("listing messages", e))?;
    show_all(store, ids).await
}

/// Each message of `ids` that still exists, in that order.
pub(super) async fn show_all(store: &SqliteStore, ids: Vec<String>) -> Result<Vec<MessageInfo>> {
    let ids = ids
        .iter()
        .map(|id| {
            MessageId::parse(id)
                .map_err(|_| Error::corrupt(None, format!("{id:?} is not a message id")))
        })
        .collect::<Result<Vec<_>>>()?;
    show_many(store, &ids).await
}

pub(super) async fn show(store: &SqliteStore, id: &MessageId) -> Result<MessageInfo> {
    show_many(store, std::slice::from_ref(id))
        .await?
        .pop()
        .ok_or_else(|| Error::NotFound(id.clone()))
}

/// The messages of `ids` that exist, in that order: two statements for
/// any number (one read transaction, so each message is seen whole).
pub(super) async fn show_many(store: &SqliteStore, ids: &[MessageId]) -> Result<Vec<MessageInfo>> {
    let doing = "reading messages";
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let set = serde_json::to_string(&ids.iter().map(MessageId::as_str).collect::<Vec<_>>())
        .map_err(|e| Error::Misuse(format!("message ids do not serialize: {e}")))?;
    let mut conn = store.pool.begin().await.map_err(|e| Error::db(doing, e))?;
    let rows = sqlx::query(
        "SELECT id, sender, options, body_size, created_ms, dsn_id FROM messages
         WHERE id IN (SELECT value FROM json_each($1))",
    )
    .bind(&set)
    .fetch_all(&mut *conn)
    .await
    .map_err(|e| Error::db(doing, e))?;
    let recipient_rows = sqlx::query(&format!(
        "SELECT {RECIPIENT_COLUMNS} FROM recipients
         WHERE message_id IN (SELECT value FROM json_each($1)) ORDER BY message_id, position"
    ))
    .bind(&set)
    .fetch_all(&mut *conn)
    .await
    .map_err(|e| Error::db(doing, e))?;
    let mut recipients: HashMap<String, Vec<RecipientInfo>> = HashMap::new();
    for row in &recipient_rows {
        let message: String = get(row, "message_id")?;
        recipients
            .entry(message)
            .or_default()
            .push(recipient_of(row)?);
    }
    let mut infos: HashMap<String, MessageInfo> = HashMap::with_capacity(rows.len());
    for row in &rows {
        let key: String = get(row, "id")?;
        let id = MessageId::parse(&key)
            .map_err(|_| Error::corrupt(None, format!("{key:?} is not a message id")))?;
        let notification = match get::<Option<String>>(row, "dsn_id")? {
            Some(dsn) => Some(MessageId::parse(&dsn).map_err(|_| {
                Error::corrupt(
                    Some(&id),
                    format!("its notification {dsn:?} is not a message id"),
                )
            })?),
            None => None,
        };
        let info = MessageInfo {
            recipients: recipients.remove(&key).unwrap_or_default(),
            from: get(row, "sender")?,
            created: from_millis(get(row, "created_ms")?),
            body_size: size_of(row)?,
            options: options_of(row, &id)?,
            notification,
            id,
        };
        infos.insert(key, info);
    }
    Ok(ids
        .iter()
        .filter_map(|id| infos.remove(id.as_str()))
        .collect())
}

pub(super) async fn retry(
    store: &SqliteStore,
    target: RetryTarget,
    now: SystemTime,
) -> Result<u64> {
    let doing = "retrying";
    let now_ms = millis(now)?;
    let mut tx = store.begin(doing).await?;
    let rows =
        match &target {
            RetryTarget::Message(id) => {
                if store.message_row(&mut tx, id).await?.is_none() {
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
            RetryTarget::All => sqlx::query(&format!(
                "SELECT id, message_id, address, state, attempts FROM recipients WHERE {WAITING}"
            ))
            .fetch_all(&mut *tx)
            .await,
        }
        .map_err(|e| Error::db(doing, e))?;
    let mut entries = Vec::with_capacity(rows.len());
    for row in &rows {
        let from = state_of(row)?;
        let to = from.apply(Transition::Retry)?;
        let rid = RecipientId(get(row, "id")?);
        sqlx::query(
            "UPDATE recipients SET state = $1, next_attempt_ms = $2, updated_ms = $2 WHERE id = $3",
        )
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
    store.write_log(&entries);
    Ok(entries.len() as u64)
}

pub(super) async fn delete(store: &SqliteStore, id: &MessageId, now: SystemTime) -> Result<()> {
    let doing = "deleting a message";
    let now_ms = millis(now)?;
    let mut tx = store.begin_durable(doing).await?;
    let recipients = store.recipients_of(&mut *tx, id).await?;
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
    store.write_log(&entries);
    if let Err(e) = store.spool.remove(id).await {
        // The message is gone from the store; the orphaned file is swept on a later open.
        tracing::warn!(error = %e, "a deleted message's body file was not removed");
    }
    Ok(())
}

pub(super) async fn purge_finished(
    store: &SqliteStore,
    before: SystemTime,
) -> Result<Vec<MessageId>> {
    let doing = "purging finished messages";
    let before_ms = millis(before)?;
    let mut tx = store.begin_durable(doing).await?;
    let ids: Vec<String> = sqlx::query_scalar(
        "SELECT id FROM messages m WHERE m.dsn_owed_ms IS NULL
         AND NOT EXISTS (SELECT 1 FROM recipients r WHERE r.message_id = m.id
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
        for r in store.recipients_of(&mut *tx, &id).await? {
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
    store.write_log(&entries);
    for id in &purged {
        if let Err(e) = store.spool.remove(id).await {
            tracing::warn!(error = %e, "a purged message's body file was not removed");
        }
    }
    Ok(purged)
}

pub(super) async fn stats(store: &SqliteStore) -> Result<Stats> {
    let doing = "counting the queue";
    let rows = sqlx::query("SELECT state, COUNT(*) AS n FROM recipients GROUP BY state")
        .fetch_all(&store.pool)
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
        .fetch_one(&store.pool)
        .await
        .map_err(|e| Error::db(doing, e))?;
    // Through the partial indexes: only waiting and leased recipients are read.
    let oldest_waiting: Option<i64> = sqlx::query_scalar(&format!(
        "SELECT MIN(m.created_ms) FROM messages m WHERE m.id IN (
             SELECT message_id FROM recipients WHERE {WAITING}
             UNION ALL SELECT message_id FROM recipients WHERE {LEASED})"
    ))
    .fetch_one(&store.pool)
    .await
    .map_err(|e| Error::db(doing, e))?;
    Ok(Stats {
        messages: u64::try_from(get::<i64>(&row, "n")?).unwrap_or(0),
        recipients,
        oldest: get::<Option<i64>>(&row, "oldest")?.map(from_millis),
        oldest_waiting: oldest_waiting.map(from_millis),
    })
}

/// The earliest time anything is due: a waiting recipient's next attempt
/// or a lease's expiry, each through its partial index. With `routed`,
/// among the messages a runner of route `$1` takes: each half walks its
/// index in time order and looks each recipient's message up by its key
/// until one is of the route (or of none).
pub(super) fn next_due_sql(routed: bool) -> String {
    if !routed {
        return format!(
            "SELECT MIN(due) FROM (
                 SELECT MIN(next_attempt_ms) AS due FROM recipients WHERE {WAITING}
                 UNION ALL SELECT MIN(lease_until_ms) FROM recipients WHERE {LEASED})"
        );
    }
    let takes = route_takes("$1");
    format!(
        "SELECT MIN(due) FROM (
             SELECT * FROM (SELECT next_attempt_ms AS due FROM recipients
                 JOIN messages m ON m.id = message_id
                 WHERE {WAITING} AND {takes} ORDER BY next_attempt_ms LIMIT 1)
             UNION ALL
             SELECT * FROM (SELECT lease_until_ms AS due FROM recipients
                 JOIN messages m ON m.id = message_id
                 WHERE {LEASED} AND {takes} ORDER BY lease_until_ms LIMIT 1))"
    )
}

pub(super) async fn next_due(
    store: &SqliteStore,
    route: Option<&str>,
) -> Result<Option<SystemTime>> {
    let sql = next_due_sql(route.is_some());
    let mut query = sqlx::query_scalar(&sql);
    if let Some(route) = route {
        query = query.bind(route);
    }
    let due: Option<i64> = query
        .fetch_one(&store.pool)
        .await
        .map_err(|e| Error::db("finding the next due time", e))?;
    Ok(due.map(from_millis))
}

/// Messages with a waiting recipient, per route: through the partial
/// index of waiting recipients, each message looked up by its key.
pub(super) fn waiting_by_route_sql() -> String {
    format!(
        "SELECT m.options ->> 'route' AS route, COUNT(DISTINCT message_id) AS messages,
             COUNT(*) AS recipients,
             COUNT(DISTINCT CASE WHEN next_attempt_ms <= $1 THEN message_id END) AS due
         FROM recipients JOIN messages m ON m.id = message_id
         WHERE {WAITING}
         GROUP BY 1 ORDER BY 1"
    )
}

pub(super) async fn waiting_by_route(
    store: &SqliteStore,
    now: SystemTime,
) -> Result<Vec<RouteWaiting>> {
    let doing = "counting waiting messages per route";
    let rows = sqlx::query(&waiting_by_route_sql())
        .bind(millis(now)?)
        .fetch_all(&store.pool)
        .await
        .map_err(|e| Error::db(doing, e))?;
    let count = |row: &SqliteRow, column: &str| -> Result<u64> {
        Ok(u64::try_from(get::<i64>(row, column)?).unwrap_or(0))
    };
    rows.iter()
        .map(|row| {
            Ok(RouteWaiting {
                route: get(row, "route")?,
                messages: count(row, "messages")?,
                recipients: count(row, "recipients")?,
                due: count(row, "due")?,
            })
        })
        .collect()
}

pub(super) async fn set_backoff(
    store: &SqliteStore,
    destination: &str,
    not_before: SystemTime,
    reason: &str,
    now: SystemTime,
) -> Result<Backoff> {
    let doing = "backing off a destination";
    let mut tx = store.begin(doing).await?;
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

pub(super) async fn backoff(store: &SqliteStore, destination: &str) -> Result<Option<Backoff>> {
    let row = sqlx::query(
        "SELECT destination, not_before_ms, failures, reason FROM backoff WHERE destination = $1",
    )
    .bind(destination)
    .fetch_optional(&store.pool)
    .await
    .map_err(|e| Error::db("reading a destination's back-off", e))?;
    row.as_ref().map(backoff_of).transpose()
}

pub(super) async fn backoffs(store: &SqliteStore, destinations: &[String]) -> Result<Vec<Backoff>> {
    let doing = "reading destinations' back-offs";
    if destinations.is_empty() {
        return Ok(Vec::new());
    }
    let set = serde_json::to_string(destinations)
        .map_err(|e| Error::Misuse(format!("destinations do not serialize: {e}")))?;
    let rows = sqlx::query(
        "SELECT destination, not_before_ms, failures, reason FROM backoff
         WHERE destination IN (SELECT value FROM json_each($1))",
    )
    .bind(set)
    .fetch_all(&store.pool)
    .await
    .map_err(|e| Error::db(doing, e))?;
    rows.iter().map(backoff_of).collect()
}

fn backoff_of(row: &SqliteRow) -> Result<Backoff> {
    Ok(Backoff {
        destination: get(row, "destination")?,
        not_before: from_millis(get(row, "not_before_ms")?),
        failures: u32::try_from(get::<i64>(row, "failures")?).unwrap_or(u32::MAX),
        reason: get(row, "reason")?,
    })
}

pub(super) async fn clear_backoff(store: &SqliteStore, destination: &str) -> Result<()> {
    sqlx::query("DELETE FROM backoff WHERE destination = $1")
        .bind(destination)
        .execute(&store.pool)
        .await
        .map_err(|e| Error::db("clearing a destination's back-off", e))?;
    Ok(())
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
