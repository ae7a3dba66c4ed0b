//! Administration and inspection: list, show, retry, delete, purge,
//! stats, the next due time, and the per-destination back-off.

use std::collections::HashMap;
use std::time::SystemTime;

use sqlx::postgres::PgRow;

use super::claim::lock_messages;
use super::rows::{attempts_of, get, message_id_of, options_of, recipient_of, size_of, state_of};
use super::{LEASED, PgStore, RECIPIENT_COLUMNS, WAITING, route_takes};
use crate::error::{Error, Result};
use crate::log::Entry;
use crate::state::{RecipientState, Transition};
use crate::store::{
    Backoff, ListFilter, MessageId, MessageInfo, RecipientId, RecipientInfo, RetryTarget,
    RouteWaiting, Stats, from_millis, millis,
};

pub(super) async fn list(store: &PgStore, filter: &ListFilter) -> Result<Vec<MessageInfo>> {
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
        .map_err(store.db("listing messages"))?;
    show_all(store, ids).await
}

/// Each message of `ids` that still exists, in that order.
pub(super) async fn show_all(store: &PgStore, ids: Vec<String>) -> Result<Vec<MessageInfo>> {
    let ids = ids
        .iter()
        .map(|id| {
            MessageId::parse(id)
                .map_err(|_| Error::corrupt(None, format!("{id:?} is not a message id")))
        })
        .collect::<Result<Vec<_>>>()?;
    show_many(store, &ids).await
}

pub(super) async fn show(store: &PgStore, id: &MessageId) -> Result<MessageInfo> {
    show_many(store, std::slice::from_ref(id))
        .await?
        .pop()
        .ok_or_else(|| Error::NotFound(id.clone()))
}

/// The messages of `ids` that exist, in that order: two statements in one
/// repeatable-read transaction, so each message is seen whole.
pub(super) async fn show_many(store: &PgStore, ids: &[MessageId]) -> Result<Vec<MessageInfo>> {
    let doing = "reading messages";
    let db = store.db(doing);
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let set: Vec<&str> = ids.iter().map(MessageId::as_str).collect();
    let mut tx = store.begin(doing).await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .execute(&mut *tx)
        .await
        .map_err(&db)?;
    let rows = sqlx::query(
        "SELECT id, sender, options::text AS options, body_size, created_ms, dsn_id FROM messages
         WHERE id = ANY($1)",
    )
    .bind(&set)
    .fetch_all(&mut *tx)
    .await
    .map_err(&db)?;
    let recipient_rows = sqlx::query(&format!(
        "SELECT {RECIPIENT_COLUMNS} FROM recipients
         WHERE message_id = ANY($1) ORDER BY message_id, position"
    ))
    .bind(&set)
    .fetch_all(&mut *tx)
    .await
    .map_err(&db)?;
    tx.commit().await.map_err(&db)?;
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

pub(super) async fn retry(store: &PgStore, target: RetryTarget, now: SystemTime) -> Result<u64> {
    let doing = "retrying";
    let db = store.db(doing);
    let now_ms = millis(now)?;
    let mut tx = store.begin(doing).await?;
    // The messages concerned, locked first (in id order), as every writer does.
    let messages: Vec<MessageId> = match &target {
        RetryTarget::Message(id) => vec![id.clone()],
        RetryTarget::All => sqlx::query_scalar::<_, String>(&format!(
            "SELECT DISTINCT message_id FROM recipients WHERE {WAITING}"
        ))
        .fetch_all(&mut *tx)
        .await
        .map_err(&db)?
        .iter()
        .filter_map(|id| MessageId::parse(id).ok())
        .collect(),
    };
    let locked = lock_messages(store, &mut tx, &messages).await?;
    if let RetryTarget::Message(id) = &target
        && locked.is_empty()
    {
        return Err(Error::NotFound(id.clone()));
    }
    let rows = sqlx::query(&format!(
        "UPDATE recipients r SET state = 'queued', next_attempt_ms = $1, updated_ms = $1
         FROM (SELECT id, state FROM recipients WHERE message_id = ANY($2) AND {WAITING}
               FOR UPDATE) AS old
         WHERE r.id = old.id
         RETURNING r.id, r.message_id, r.address, old.state, r.attempts"
    ))
    .bind(now_ms)
    .bind(&locked)
    .fetch_all(&mut *tx)
    .await
    .map_err(&db)?;
    let mut entries = Vec::with_capacity(rows.len());
    for row in &rows {
        let from = state_of(row)?;
        let to = from.apply(Transition::Retry)?;
        if to != RecipientState::Queued {
            return Err(Error::corrupt(
                None,
                format!("a retried recipient went from {from} to {to}"),
            ));
        }
        entries.push(Entry {
            at_ms: now_ms,
            event: "retried".into(),
            message: message_id_of(row, "message_id")?,
            recipient: RecipientId(get(row, "id")?),
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
            .map_err(&db)?;
    }
    store.log(&mut tx, &entries).await?;
    tx.commit().await.map_err(&db)?;
    Ok(entries.len() as u64)
}

pub(super) async fn delete(store: &PgStore, id: &MessageId, now: SystemTime) -> Result<()> {
    let doing = "deleting a message";
    let db = store.db(doing);
    let now_ms = millis(now)?;
    let mut tx = store.begin(doing).await?;
    if lock_messages(store, &mut tx, std::slice::from_ref(id))
        .await?
        .is_empty()
    {
        return Err(Error::NotFound(id.clone()));
    }
    let recipients = store.recipients_of(&mut *tx, id).await?;
    // Chunks and recipients go with it (ON DELETE CASCADE).
    sqlx::query("DELETE FROM messages WHERE id = $1")
        .bind(id.as_str())
        .execute(&mut *tx)
        .await
        .map_err(&db)?;
    let entries: Vec<Entry> = recipients
        .into_iter()
        .map(|r| removed_entry("deleted", id, r, now_ms))
        .collect();
    store.log(&mut tx, &entries).await?;
    tx.commit().await.map_err(&db)
}

pub(super) async fn purge_finished(store: &PgStore, before: SystemTime) -> Result<Vec<MessageId>> {
    let doing = "purging finished messages";
    let db = store.db(doing);
    let before_ms = millis(before)?;
    let mut tx = store.begin(doing).await?;
    // Messages another writer holds are left for the next purge.
    let ids: Vec<String> = sqlx::query_scalar(
        "SELECT id FROM messages m WHERE m.dsn_owed_ms IS NULL
         AND NOT EXISTS (SELECT 1 FROM recipients r WHERE r.message_id = m.id
         AND (r.state NOT IN ('delivered', 'failed', 'expired') OR r.updated_ms >= $1))
         ORDER BY id FOR UPDATE SKIP LOCKED",
    )
    .bind(before_ms)
    .fetch_all(&mut *tx)
    .await
    .map_err(&db)?;
    let mut purged = Vec::with_capacity(ids.len());
    let mut entries = Vec::new();
    for id in &ids {
        let id = MessageId::parse(id)
            .map_err(|_| Error::corrupt(None, format!("{id:?} is not a message id")))?;
        for r in store.recipients_of(&mut *tx, &id).await? {
            entries.push(removed_entry("purged", &id, r, before_ms));
        }
        purged.push(id);
    }
    sqlx::query("DELETE FROM messages WHERE id = ANY($1)")
        .bind(&ids)
        .execute(&mut *tx)
        .await
        .map_err(&db)?;
    store.log(&mut tx, &entries).await?;
    tx.commit().await.map_err(&db)?;
    Ok(purged)
}

pub(super) async fn stats(store: &PgStore) -> Result<Stats> {
    let doing = "counting the queue";
    let db = store.db(doing);
    let rows = sqlx::query("SELECT state, COUNT(*) AS n FROM recipients GROUP BY state")
        .fetch_all(&store.pool)
        .await
        .map_err(&db)?;
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
        .map_err(&db)?;
    let oldest_waiting: Option<i64> = sqlx::query_scalar(&format!(
        "SELECT MIN(m.created_ms) FROM messages m WHERE m.id IN (
             SELECT message_id FROM recipients WHERE {WAITING}
             UNION ALL SELECT message_id FROM recipients WHERE {LEASED})"
    ))
    .fetch_one(&store.pool)
    .await
    .map_err(&db)?;
    Ok(Stats {
        messages: u64::try_from(get::<i64>(&row, "n")?).unwrap_or(0),
        recipients,
        oldest: get::<Option<i64>>(&row, "oldest")?.map(from_millis),
        oldest_waiting: oldest_waiting.map(from_millis),
    })
}

pub(super) async fn next_due(store: &PgStore, route: Option<&str>) -> Result<Option<SystemTime>> {
    let sql = match route {
        None => format!(
            "SELECT MIN(due) FROM (
                 SELECT MIN(next_attempt_ms) AS due FROM recipients WHERE {WAITING}
                 UNION ALL SELECT MIN(lease_until_ms) FROM recipients WHERE {LEASED}) AS d"
        ),
        Some(_) => {
            let takes = route_takes("$1");
            format!(
                "SELECT MIN(due) FROM (
                     SELECT MIN(next_attempt_ms) AS due FROM recipients
                         JOIN messages m ON m.id = message_id WHERE {WAITING} AND {takes}
                     UNION ALL
                     SELECT MIN(lease_until_ms) FROM recipients
                         JOIN messages m ON m.id = message_id WHERE {LEASED} AND {takes}) AS d"
            )
        }
    };
    let mut query = sqlx::query_scalar(&sql);
    if let Some(route) = route {
        query = query.bind(route);
    }
    let due: Option<i64> = query
        .fetch_one(&store.pool)
        .await
        .map_err(store.db("finding the next due time"))?;
    Ok(due.map(from_millis))
}

pub(super) async fn waiting_by_route(
    store: &PgStore,
    now: SystemTime,
) -> Result<Vec<RouteWaiting>> {
    let rows = sqlx::query(&format!(
        "SELECT m.options ->> 'route' AS route, COUNT(DISTINCT message_id) AS messages,
             COUNT(*) AS recipients,
             COUNT(DISTINCT CASE WHEN next_attempt_ms <= $1 THEN message_id END) AS due
         FROM recipients JOIN messages m ON m.id = message_id
         WHERE {WAITING}
         GROUP BY 1 ORDER BY 1 NULLS FIRST"
    ))
    .bind(millis(now)?)
    .fetch_all(&store.pool)
    .await
    .map_err(store.db("counting waiting messages per route"))?;
    let count = |row: &PgRow, column: &str| -> Result<u64> {
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
    store: &PgStore,
    destination: &str,
    not_before: SystemTime,
    reason: &str,
    now: SystemTime,
) -> Result<Backoff> {
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
    .fetch_one(&store.pool)
    .await
    .map_err(store.db("backing off a destination"))?;
    Ok(Backoff {
        destination: destination.to_owned(),
        not_before,
        failures: u32::try_from(failures).unwrap_or(u32::MAX),
        reason: reason.to_owned(),
    })
}

pub(super) async fn backoffs(store: &PgStore, destinations: &[String]) -> Result<Vec<Backoff>> {
    if destinations.is_empty() {
        return Ok(Vec::new());
    }
    let rows = sqlx::query(
        "SELECT destination, not_before_ms, failures, reason FROM backoff
         WHERE destination = ANY($1)",
    )
    .bind(destinations)
    .fetch_all(&store.pool)
    .await
    .map_err(store.db("reading destinations' back-offs"))?;
    rows.iter()
        .map(|row| {
            Ok(Backoff {
                destination: get(row, "destination")?,
                not_before: from_millis(get(row, "not_before_ms")?),
                failures: u32::try_from(get::<i64>(row, "failures")?).unwrap_or(u32::MAX),
                reason: get(row, "reason")?,
            })
        })
        .collect()
}

pub(super) async fn clear_backoff(store: &PgStore, destination: &str) -> Result<()> {
    sqlx::query("DELETE FROM backoff WHERE destination = $1")
        .bind(destination)
        .execute(&store.pool)
        .await
        .map_err(store.db("clearing a destination's back-off"))?;
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
