//! Delivery status notifications owed to senders: marked as owed in the
//! transaction that makes a message's last recipient final, enqueued
//! exactly once.
//!
//! ```text
//! record(… last recipient final, one failed or expired …)
//!     └─ same transaction: messages.dsn_owed_ms = now   (if the message asked, sender not null)
//! owed_notifications()  ── WHERE dsn_owed_ms IS NOT NULL
//! enqueue_notification(of, dsn)
//!     body → spool (fsync)
//!     BEGIN IMMEDIATE
//!       UPDATE messages SET dsn_owed_ms = NULL, dsn_id = <new id>
//!           WHERE id = of AND dsn_owed_ms IS NOT NULL AND dsn_id IS NULL
//!       0 rows: another worker was first → ROLLBACK, remove the body
//!       INSERT the notification (messages, recipients)
//!     COMMIT
//! ```

use std::time::SystemTime;

use sqlx::{Sqlite, Transaction};

use super::SqliteStore;
use super::enqueue::{Envelope, Spooled, check_envelope, insert};
use super::rows::{get, options_of};
use crate::error::{Error, Result};
use crate::log::Entry;
use crate::store::{MessageId, MessageInfo, NewMessage, millis, sender_address};

/// Marks each of `messages` (with the time of its outcome) as owing its
/// sender a notification, when it asked for one, its sender is not null,
/// none is owed or sent yet, every recipient is final and one or more
/// failed or expired. Part of the caller's transaction (the one recording
/// outcomes), so the mark and the last outcome commit together. Returns
/// how many were marked.
pub(super) async fn mark_owed(
    tx: &mut Transaction<'static, Sqlite>,
    messages: &[(MessageId, i64)],
) -> Result<u64> {
    let doing = "recording outcomes";
    if messages.is_empty() {
        return Ok(0);
    }
    let ids = serde_json::to_string(
        &messages
            .iter()
            .map(|(id, _)| id.as_str())
            .collect::<Vec<_>>(),
    )
    .map_err(|e| Error::Misuse(format!("message ids do not serialize: {e}")))?;
    // One read for the whole group, by primary key (a condition on
    // dsn_owed_ms here would draw the planner to its index: every message);
    // the few that asked are then marked one by one, under the UPDATE's
    // own conditions.
    let rows = sqlx::query(
        "SELECT id, sender, options FROM messages WHERE id IN (SELECT value FROM json_each($1))",
    )
    .bind(ids)
    .fetch_all(&mut **tx)
    .await
    .map_err(|e| Error::db(doing, e))?;
    let when: std::collections::HashMap<&str, i64> =
        messages.iter().map(|(id, at)| (id.as_str(), *at)).collect();
    let mut marked = 0;
    for row in rows {
        let id: String = get(&row, "id")?;
        let sender: String = get(&row, "sender")?;
        let Ok(message) = MessageId::parse(&id) else {
            continue;
        };
        if !options_of(&row, &message)?.notify_sender || sender_address(&sender).is_none() {
            continue;
        }
        let done = sqlx::query(
            "UPDATE messages SET dsn_owed_ms = $2
             WHERE id = $1 AND dsn_owed_ms IS NULL AND dsn_id IS NULL
             AND NOT EXISTS (SELECT 1 FROM recipients r WHERE r.message_id = messages.id
                 AND r.state NOT IN ('delivered', 'failed', 'expired'))
             AND EXISTS (SELECT 1 FROM recipients r WHERE r.message_id = messages.id
                 AND r.state IN ('failed', 'expired'))",
        )
        .bind(&id)
        .bind(when.get(id.as_str()).copied().unwrap_or_default())
        .execute(&mut **tx)
        .await
        .map_err(|e| Error::db(doing, e))?;
        marked += done.rows_affected();
    }
    Ok(marked)
}

pub(super) async fn owed_notifications(
    store: &SqliteStore,
    limit: u32,
) -> Result<Vec<MessageInfo>> {
    let ids: Vec<String> = sqlx::query_scalar(
        "SELECT id FROM messages WHERE dsn_owed_ms IS NOT NULL ORDER BY dsn_owed_ms, id LIMIT $1",
    )
    .bind(i64::from(limit))
    .fetch_all(&store.pool)
    .await
    .map_err(|e| Error::db("finding owed notifications", e))?;
    super::admin::show_all(store, ids).await
}

pub(super) async fn enqueue_notification(
    store: &SqliteStore,
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
    let now_ms = millis(now)?;
    let id = MessageId::generate(now);
    let NewMessage {
        from,
        to,
        body,
        options,
    } = notification;
    // The body first, synced, as an enqueue writes it: the transaction
    // below only ever commits a notification whose body is on disk.
    let stored = store
        .spool
        .write_all(vec![(id.clone(), body)])
        .await?
        .pop()
        .ok_or_else(|| Error::Misuse("a notification's body was not stored".into()))?;
    let spooled = [Spooled {
        id: id.clone(),
        message: Envelope { from, to, options },
        stored,
    }];
    match store.notify(of, &spooled, now_ms).await {
        Ok(Some(entries)) => {
            store.write_log(&entries);
            Ok(Some(id))
        }
        Ok(None) => {
            store.spool.remove(&id).await?;
            Ok(None)
        }
        Err(e) => {
            // A crash before this leaves the file to the sweep on open.
            let _ = store.spool.remove(&id).await;
            Err(e)
        }
    }
}

impl SqliteStore {
    /// One transaction: `of` is marked notified by the first message of
    /// `spooled`, which is inserted; `None` (nothing written) when `of`
    /// owes no notification.
    async fn notify(
        &self,
        of: &MessageId,
        spooled: &[Spooled],
        now_ms: i64,
    ) -> Result<Option<Vec<Entry>>> {
        let doing = "enqueueing a delivery status notification";
        let Some(first) = spooled.first() else {
            return Err(Error::Misuse("a notification without a message".into()));
        };
        // Durable: it enqueues a message.
        let mut tx = self.begin_durable(doing).await?;
        let marked = sqlx::query(
            "UPDATE messages SET dsn_owed_ms = NULL, dsn_id = $1
             WHERE id = $2 AND dsn_owed_ms IS NOT NULL AND dsn_id IS NULL",
        )
        .bind(first.id.as_str())
        .bind(of.as_str())
        .execute(&mut *tx)
        .await
        .map_err(|e| Error::db(doing, e))?;
        if marked.rows_affected() == 0 {
            let exists = self.message_row(&mut tx, of).await?.is_some();
            tx.rollback().await.map_err(|e| Error::db(doing, e))?;
            return if exists {
                Ok(None)
            } else {
                Err(Error::NotFound(of.clone()))
            };
        }
        let entries = insert(&mut tx, spooled, now_ms).await?;
        tx.commit().await.map_err(|e| Error::db(doing, e))?;
        Ok(Some(entries))
    }
}
