//! Messages in and out: the enqueue (bodies to the spool, then the
//! envelopes in one transaction) and opening a stored body.

use std::time::SystemTime;

use smtp_core::address::{Mailbox, ReversePath};
use smtp_core::delivery::BodySource;
use sqlx::{Sqlite, Transaction};

use super::SqliteStore;
use super::rows::{get, size_of};
use crate::error::{Error, Result};
use crate::log::Entry;
use crate::spool::Written;
use crate::state::RecipientState;
use crate::store::{MessageId, MessageOptions, NewMessage, RecipientId, millis};

pub(super) fn check_envelope(message: &NewMessage) -> Result<()> {
    ReversePath::parse(&message.from).map_err(|e| {
        Error::Misuse(format!(
            "the reverse-path {:?} does not parse: {e}",
            message.from
        ))
    })?;
    if message.to.is_empty() {
        return Err(Error::Misuse("a message without recipients".into()));
    }
    for to in &message.to {
        Mailbox::parse(to)
            .map_err(|e| Error::Misuse(format!("the recipient {to:?} does not parse: {e}")))?;
    }
    Ok(())
}

impl SqliteStore {
    async fn insert_batch(&self, batch: &[Spooled], now_ms: i64) -> Result<Vec<Entry>> {
        let doing = "enqueueing";
        let mut tx = self.begin(doing).await?;
        let entries = insert(&mut tx, batch, now_ms).await?;
        tx.commit().await.map_err(|e| Error::db(doing, e))?;
        Ok(entries)
    }
}

/// Inserts the envelopes of messages whose bodies are spooled, in `tx`;
/// returns their `enqueued` log entries (to write once `tx` commits).
pub(super) async fn insert(
    tx: &mut Transaction<'static, Sqlite>,
    batch: &[Spooled],
    now_ms: i64,
) -> Result<Vec<Entry>> {
    let doing = "enqueueing";
    let mut entries = Vec::new();
    for Spooled {
        id,
        message,
        written,
    } in batch
    {
        let options = serde_json::to_string(&message.options)
            .map_err(|e| Error::Misuse(format!("the options do not serialize: {e}")))?;
        sqlx::query(
            "INSERT INTO messages (id, sender, options, body_size, body_sha256, created_ms)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(id.as_str())
        .bind(&message.from)
        .bind(options)
        .bind(i64::try_from(written.size).unwrap_or(i64::MAX))
        .bind(&written.sha256)
        .bind(now_ms)
        .execute(&mut **tx)
        .await
        .map_err(|e| Error::db(doing, e))?;
        for (position, to) in message.to.iter().enumerate() {
            let rid: i64 = sqlx::query_scalar(
                "INSERT INTO recipients (message_id, position, address, state, attempts, next_attempt_ms, updated_ms)
                 VALUES ($1, $2, $3, 'queued', 0, $4, $4) RETURNING id",
            )
            .bind(id.as_str())
            .bind(position as i64)
            .bind(to)
            .bind(now_ms)
            .fetch_one(&mut **tx)
            .await
            .map_err(|e| Error::db(doing, e))?;
            entries.push(Entry {
                at_ms: now_ms,
                event: "enqueued".into(),
                message: id.clone(),
                recipient: RecipientId(rid),
                rcpt: to.clone(),
                from: None,
                to: Some(RecipientState::Queued),
                attempts: 0,
                next_attempt_ms: Some(now_ms),
                worker: None,
                generation: None,
                attempt: None,
            });
        }
    }
    Ok(entries)
}

pub(super) async fn enqueue(
    store: &SqliteStore,
    batch: Vec<NewMessage>,
    now: SystemTime,
) -> Result<Vec<MessageId>> {
    let now_ms = millis(now)?;
    for message in &batch {
        check_envelope(message)?;
    }
    let mut written: Vec<Spooled> = Vec::with_capacity(batch.len());
    for message in batch {
        let id = MessageId::generate(now);
        let NewMessage {
            from,
            to,
            body,
            options,
        } = message;
        match store.spool.write(&id, body).await {
            Ok(w) => written.push(Spooled {
                id,
                message: Envelope { from, to, options },
                written: w,
            }),
            Err(e) => {
                for Spooled { id, .. } in &written {
                    let _ = store.spool.remove(id).await;
                }
                return Err(e);
            }
        }
    }
    match store.insert_batch(&written, now_ms).await {
        Ok(entries) => {
            store.write_log(&entries);
            Ok(written.into_iter().map(|s| s.id).collect())
        }
        Err(e) => {
            for Spooled { id, .. } in &written {
                let _ = store.spool.remove(id).await;
            }
            Err(e)
        }
    }
}

pub(super) async fn open_body(store: &SqliteStore, id: &MessageId) -> Result<Box<dyn BodySource>> {
    let row = sqlx::query("SELECT body_size, body_sha256 FROM messages WHERE id = $1")
        .bind(id.as_str())
        .fetch_optional(&store.pool)
        .await
        .map_err(|e| Error::db("reading a message", e))?
        .ok_or_else(|| Error::NotFound(id.clone()))?;
    let expected = Written {
        size: size_of(&row)?,
        sha256: get(&row, "body_sha256")?,
    };
    Ok(Box::new(store.spool.open_body(id, expected).await?))
}

/// A message whose body is in the spool, its envelope not yet committed.
pub(super) struct Spooled {
    pub(super) id: MessageId,
    pub(super) message: Envelope,
    pub(super) written: Written,
}

/// A new message's envelope and options, without its body.
pub(super) struct Envelope {
    pub(super) from: String,
    pub(super) to: Vec<String>,
    pub(super) options: MessageOptions,
}
