//! Delivery status notifications owed to senders: marked as owed in the
//! transaction that makes a message's last recipient final, enqueued
//! exactly once.
//!
//! ```text
//! record(… last recipient final, one failed or expired …)
//!     └─ same transaction: messages.dsn_owed_ms = now   (if the message asked, sender not null)
//! enqueue_notification(of, dsn)
//!     BEGIN
//!       UPDATE messages SET dsn_owed_ms = NULL, dsn_id = <new id>
//!           WHERE id = of AND dsn_owed_ms IS NOT NULL AND dsn_id IS NULL
//!       0 rows: another worker was first → ROLLBACK (the body is never read)
//!       the notification's body chunks, envelope, recipients, log rows
//!     COMMIT
//! ```

use std::time::SystemTime;

use sqlx::{Postgres, Transaction};

use super::PgStore;
use super::enqueue::{insert, write_bodies};
use super::rows::{get, options_of};
use crate::error::{Error, Result};
use crate::sqlite::check_envelope;
use crate::store::{MessageId, MessageInfo, NewMessage, millis, sender_address};

/// Marks message `id` as owing its sender a notification (at `at_ms`),
/// when it asked for one, its sender is not null, none is owed or sent
/// yet, every recipient is final and one or more failed or expired. Part
/// of the caller's transaction, which holds the message's row.
pub(super) async fn mark_owed(
    store: &PgStore,
    tx: &mut Transaction<'static, Postgres>,
    id: &MessageId,
    at_ms: i64,
) -> Result<bool> {
    let db = store.db("recording outcomes");
    let row = sqlx::query("SELECT sender, options::text AS options FROM messages WHERE id = $1")
        .bind(id.as_str())
        .fetch_optional(&mut **tx)
        .await
        .map_err(&db)?;
    let Some(row) = row else { return Ok(false) };
    let sender: String = get(&row, "sender")?;
    if !options_of(&row, id)?.notify_sender || sender_address(&sender).is_none() {
        return Ok(false);
    }
    let done = sqlx::query(
        "UPDATE messages SET dsn_owed_ms = $2
         WHERE id = $1 AND dsn_owed_ms IS NULL AND dsn_id IS NULL
         AND NOT EXISTS (SELECT 1 FROM recipients r WHERE r.message_id = messages.id
             AND r.state NOT IN ('delivered', 'failed', 'expired'))
         AND EXISTS (SELECT 1 FROM recipients r WHERE r.message_id = messages.id
             AND r.state IN ('failed', 'expired'))",
    )
    .bind(id.as_str())
    .bind(at_ms)
    .execute(&mut **tx)
    .await
    .map_err(&db)?;
    Ok(done.rows_affected() > 0)
}

pub(super) async fn owed_notifications(store: &PgStore, limit: u32) -> Result<Vec<MessageInfo>> {
    let ids: Vec<String> = sqlx::query_scalar(
        "SELECT id FROM messages WHERE dsn_owed_ms IS NOT NULL ORDER BY dsn_owed_ms, id LIMIT $1",
    )
    .bind(i64::from(limit))
    .fetch_all(&store.pool)
    .await
    .map_err(store.db("finding owed notifications"))?;
    super::admin::show_all(store, ids).await
}

pub(super) async fn enqueue_notification(
    store: &PgStore,
    of: &MessageId,
    notification: NewMessage,
    now: SystemTime,
) -> Result<Option<MessageId>> {
    check_envelope(&notification)?;
    if sender_address(&notification.from).is_some() {
        return Err(Error::Misuse(format!(
            "a delivery status notification is sent from the null reverse-path, not {:?}",
            notification.from
        )));
    }
    let doing = "enqueueing a delivery status notification";
    let db = store.db(doing);
    let now_ms = millis(now)?;
    let mut tx = store.begin(doing).await?;
    let exists: Option<String> =
        sqlx::query_scalar("SELECT id FROM messages WHERE id = $1 FOR NO KEY UPDATE")
            .bind(of.as_str())
            .fetch_optional(&mut *tx)
            .await
            .map_err(&db)?;
    if exists.is_none() {
        return Err(Error::NotFound(of.clone()));
    }
    let owed: Option<i64> = sqlx::query_scalar(
        "SELECT dsn_owed_ms FROM messages WHERE id = $1 AND dsn_owed_ms IS NOT NULL AND dsn_id IS NULL",
    )
    .bind(of.as_str())
    .fetch_optional(&mut *tx)
    .await
    .map_err(&db)?;
    if owed.is_none() {
        // Another worker enqueued it first, or none is owed: nothing written.
        return Ok(None);
    }
    let stored = write_bodies(store, &mut tx, vec![notification], now).await?;
    let Some(first) = stored.first() else {
        return Err(Error::Misuse("a notification without a message".into()));
    };
    let id = first.id.clone();
    sqlx::query("UPDATE messages SET dsn_owed_ms = NULL, dsn_id = $1 WHERE id = $2")
        .bind(id.as_str())
        .bind(of.as_str())
        .execute(&mut *tx)
        .await
        .map_err(&db)?;
    insert(store, &mut tx, &stored, now_ms).await?;
    tx.commit().await.map_err(&db)?;
    Ok(Some(id))
}
