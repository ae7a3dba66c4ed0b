//! Messages in and out: the enqueue (bodies to the spool, then the
//! envelopes in one transaction) and opening a stored body.

use std::collections::HashMap;
use std::time::SystemTime;

use smtp_core::address::{Mailbox, ReversePath};
use smtp_core::delivery::{BodySource, MemoryBody};
use sqlx::{QueryBuilder, Sqlite, Transaction};

use super::SqliteStore;
use super::rows::{get, size_of};
use crate::error::{Error, Result};
use crate::log::Entry;
use crate::spool::{Stored, Written};
use crate::state::RecipientState;
use crate::store::{
    Enqueued, MessageId, MessageOptions, NewMessage, RecipientId, from_millis, millis,
};

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
        let mut tx = self.begin_durable(doing).await?;
        let entries = insert(&mut tx, batch, now_ms).await?;
        tx.commit().await.map_err(|e| Error::db(doing, e))?;
        Ok(entries)
    }
}

/// Inserts the envelopes of messages whose bodies are stored (and the
/// bodies kept inline), in `tx`; returns their `enqueued` log entries (to write once `tx` commits).
pub(super) async fn insert(
    tx: &mut Transaction<'static, Sqlite>,
    batch: &[Spooled],
    now_ms: i64,
) -> Result<Vec<Entry>> {
    let doing = "enqueueing";
    let db = |e| Error::db(doing, e);
    let mut entries = Vec::new();
    // Many rows a statement (bounded by SQLite's parameters per statement).
    for chunk in batch.chunks(ROWS_PER_INSERT) {
        let mut options = Vec::with_capacity(chunk.len());
        for s in chunk {
            options.push(
                serde_json::to_string(&s.message.options)
                    .map_err(|e| Error::Misuse(format!("the options do not serialize: {e}")))?,
            );
        }
        QueryBuilder::<Sqlite>::new(
            "INSERT INTO messages (id, sender, options, body_size, body_sha256, created_ms) ",
        )
        .push_values(chunk.iter().zip(&options), |mut row, (s, options)| {
            row.push_bind(s.id.as_str())
                .push_bind(&s.message.from)
                .push_bind(options)
                .push_bind(i64::try_from(s.stored.written.size).unwrap_or(i64::MAX))
                .push_bind(&s.stored.written.sha256)
                .push_bind(now_ms);
        })
        .build()
        .execute(&mut **tx)
        .await
        .map_err(db)?;
        let inline: Vec<(&MessageId, &Vec<u8>)> = chunk
            .iter()
            .filter_map(|s| s.stored.inline.as_ref().map(|d| (&s.id, d)))
            .collect();
        if !inline.is_empty() {
            QueryBuilder::<Sqlite>::new("INSERT INTO message_bodies (message_id, data) ")
                .push_values(&inline, |mut row, (id, data)| {
                    row.push_bind(id.as_str()).push_bind(data.as_slice());
                })
                .build()
                .execute(&mut **tx)
                .await
                .map_err(db)?;
        }
        let recipients: Vec<(&MessageId, usize, &String)> = chunk
            .iter()
            .flat_map(|s| {
                s.message
                    .to
                    .iter()
                    .enumerate()
                    .map(move |(position, to)| (&s.id, position, to))
            })
            .collect();
        for rows in recipients.chunks(ROWS_PER_INSERT) {
            let returned = QueryBuilder::<Sqlite>::new(
                "INSERT INTO recipients (message_id, position, address, state, attempts, \
                 next_attempt_ms, updated_ms) ",
            )
            .push_values(rows, |mut row, (id, position, to)| {
                row.push_bind(id.as_str())
                    .push_bind(*position as i64)
                    .push_bind(*to)
                    .push_bind("queued")
                    .push_bind(0i64)
                    .push_bind(now_ms)
                    .push_bind(now_ms);
            })
            .push(" RETURNING id, message_id, position")
            .build()
            .fetch_all(&mut **tx)
            .await
            .map_err(db)?;
            // RETURNING's order is not promised: match by message and position.
            let mut ids: HashMap<(String, i64), i64> = HashMap::with_capacity(returned.len());
            for r in &returned {
                ids.insert((get(r, "message_id")?, get(r, "position")?), get(r, "id")?);
            }
            for (id, position, to) in rows {
                let rid = ids
                    .get(&(id.as_str().to_owned(), *position as i64))
                    .copied()
                    .ok_or_else(|| Error::corrupt(Some(id), "a recipient row was not returned"))?;
                entries.push(Entry {
                    at_ms: now_ms,
                    event: "enqueued".into(),
                    message: (*id).clone(),
                    recipient: RecipientId(rid),
                    rcpt: (*to).clone(),
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
    }
    Ok(entries)
}

/// Rows one INSERT carries at most: 7 parameters a row stays well inside
/// SQLite's 32,766 per statement.
const ROWS_PER_INSERT: usize = 500;

pub(super) async fn enqueue(
    store: &SqliteStore,
    batch: Vec<NewMessage>,
    now: SystemTime,
) -> Result<Vec<MessageId>> {
    let now_ms = millis(now)?;
    let written = spool_batch(store, batch, now).await?;
    match store.insert_batch(&written, now_ms).await {
        Ok(entries) => {
            store.write_log(&entries);
            Ok(written.into_iter().map(|s| s.id).collect())
        }
        Err(e) => {
            unspool(store, &written).await;
            Err(e)
        }
    }
}

/// Checks the envelopes, gives each message its id and stores the bodies
/// (files synced, or in hand to commit inline).
async fn spool_batch(
    store: &SqliteStore,
    batch: Vec<NewMessage>,
    now: SystemTime,
) -> Result<Vec<Spooled>> {
    for message in &batch {
        check_envelope(message)?;
    }
    let mut envelopes = Vec::with_capacity(batch.len());
    let mut bodies = Vec::with_capacity(batch.len());
    for message in batch {
        let id = MessageId::generate(now);
        let NewMessage {
            from,
            to,
            body,
            options,
        } = message;
        envelopes.push((id.clone(), Envelope { from, to, options }));
        bodies.push((id, body));
    }
    Ok(store
        .spool
        .write_all(bodies)
        .await?
        .into_iter()
        .zip(envelopes)
        .map(|(stored, (id, message))| Spooled {
            id,
            message,
            stored,
        })
        .collect())
}

/// Removes the body files of messages whose envelopes were not committed.
async fn unspool(store: &SqliteStore, written: &[Spooled]) {
    for Spooled { id, .. } in written {
        let _ = store.spool.remove(id).await;
    }
}

/// The batch enqueued under `key`, if one was.
async fn merge_row<'e>(db: impl sqlx::SqliteExecutor<'e>, key: &str) -> Result<Option<Enqueued>> {
    let row = sqlx::query("SELECT created_ms, messages FROM merges WHERE key = $1")
        .bind(key)
        .fetch_optional(db)
        .await
        .map_err(|e| Error::db("reading the enqueued batches", e))?;
    row.map(|r| {
        Ok(Enqueued::Already {
            at: from_millis(get(&r, "created_ms")?),
            messages: u64::try_from(get::<i64>(&r, "messages")?).unwrap_or(0),
        })
    })
    .transpose()
}

/// [`Store::enqueue_once`](crate::Store::enqueue_once): the key's row and
/// the batch in one durable transaction. A key already there (found
/// before the bodies are read, or inserted by a concurrent call in the
/// meantime) enqueues nothing.
pub(super) async fn enqueue_once(
    store: &SqliteStore,
    key: &str,
    batch: Vec<NewMessage>,
    now: SystemTime,
) -> Result<Enqueued> {
    if let Some(found) = merge_row(&store.pool, key).await? {
        return Ok(found);
    }
    let now_ms = millis(now)?;
    let messages = i64::try_from(batch.len()).unwrap_or(i64::MAX);
    let written = spool_batch(store, batch, now).await?;
    let doing = "enqueueing";
    let committed = async {
        let mut tx = store.begin_durable(doing).await?;
        let inserted = sqlx::query(
            "INSERT INTO merges (key, created_ms, messages) VALUES ($1, $2, $3) \
             ON CONFLICT (key) DO NOTHING",
        )
        .bind(key)
        .bind(now_ms)
        .bind(messages)
        .execute(&mut *tx)
        .await
        .map_err(|e| Error::db(doing, e))?
        .rows_affected();
        if inserted == 0 {
            let found = merge_row(&mut *tx, key).await?;
            return Ok(Err(found));
        }
        let entries = insert(&mut tx, &written, now_ms).await?;
        tx.commit().await.map_err(|e| Error::db(doing, e))?;
        Ok(Ok(entries))
    }
    .await;
    match committed {
        Ok(Ok(entries)) => {
            store.write_log(&entries);
            Ok(Enqueued::New(written.into_iter().map(|s| s.id).collect()))
        }
        Ok(Err(found)) => {
            unspool(store, &written).await;
            found.ok_or_else(|| Error::Misuse("a batch's key vanished as it was read".into()))
        }
        Err(e) => {
            unspool(store, &written).await;
            Err(e)
        }
    }
}

pub(super) async fn open_body(store: &SqliteStore, id: &MessageId) -> Result<Box<dyn BodySource>> {
    open_bodies(store, std::slice::from_ref(id))
        .await?
        .pop()
        .unwrap_or_else(|| Err(Error::NotFound(id.clone())))
}

/// The bodies of `ids`, in that order, in one statement: each a body or
/// that message's error (not found, corrupt).
pub(super) async fn open_bodies(
    store: &SqliteStore,
    ids: &[MessageId],
) -> Result<Vec<Result<Box<dyn BodySource>>>> {
    let set = serde_json::to_string(&ids.iter().map(MessageId::as_str).collect::<Vec<_>>())
        .map_err(|e| Error::Misuse(format!("message ids do not serialize: {e}")))?;
    let rows = sqlx::query(
        "SELECT m.id, m.body_size, m.body_sha256, b.data FROM messages m
         LEFT JOIN message_bodies b ON b.message_id = m.id
         WHERE m.id IN (SELECT value FROM json_each($1))",
    )
    .bind(&set)
    .fetch_all(&store.pool)
    .await
    .map_err(|e| Error::db("reading messages", e))?;
    let mut by_id: HashMap<String, sqlx::sqlite::SqliteRow> = HashMap::with_capacity(rows.len());
    for row in rows {
        by_id.insert(get(&row, "id")?, row);
    }
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        let Some(row) = by_id.remove(id.as_str()) else {
            out.push(Err(Error::NotFound(id.clone())));
            continue;
        };
        out.push(body_of(store, id, &row).await);
    }
    Ok(out)
}

/// Message `id`'s body from its row: inline, checked now, or its file.
async fn body_of(
    store: &SqliteStore,
    id: &MessageId,
    row: &sqlx::sqlite::SqliteRow,
) -> Result<Box<dyn BodySource>> {
    let expected = Written {
        size: size_of(row)?,
        sha256: get(row, "body_sha256")?,
    };
    match get::<Option<Vec<u8>>>(row, "data")? {
        Some(data) => {
            let found = Written {
                size: data.len() as u64,
                sha256: crate::spool::digest(&data),
            };
            if found != expected {
                return Err(Error::corrupt(
                    Some(id),
                    "its body in the database does not match the size and digest recorded at enqueue",
                ));
            }
            Ok(Box::new(MemoryBody::new(data)))
        }
        None => Ok(Box::new(store.spool.open_body(id, expected).await?)),
    }
}

/// A message whose body is stored (or in hand, to commit inline), its
/// envelope not yet committed.
pub(super) struct Spooled {
    pub(super) id: MessageId,
    pub(super) message: Envelope,
    pub(super) stored: Stored,
}

/// A new message's envelope and options, without its body.
pub(super) struct Envelope {
    pub(super) from: String,
    pub(super) to: Vec<String>,
    pub(super) options: MessageOptions,
}

#[cfg(test)]
mod tests {
    use smtp_core::delivery::MemoryBody;

    use super::*;
    use crate::store::{Body, Store};

    fn batch(n: usize) -> Vec<NewMessage> {
        (0..n)
            .map(|i| NewMessage {
                from: "a@example.org".into(),
                to: vec![format!("r{i}@example.net")],
                body: Body::Source(Box::new(MemoryBody::new(format!(
                    "Subject: {i}\r\n\r\nhello {i}\r\n"
                )))),
                options: MessageOptions::default(),
            })
            .collect()
    }

    /// A body whose source fails.
    struct Broken;

    #[async_trait::async_trait]
    impl BodySource for Broken {
        async fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
            Err(std::io::Error::other("the producer went away"))
        }
        async fn rewind(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_batch_enqueued_once_under_a_key_is_not_enqueued_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).await.unwrap();
        let first = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        let Enqueued::New(ids) = store.enqueue_once("k1", batch(3), first).await.unwrap() else {
            panic!("new")
        };
        assert_eq!(ids.len(), 3);
        let again = store
            .enqueue_once("k1", batch(3), SystemTime::now())
            .await
            .unwrap();
        assert_eq!(
            again,
            Enqueued::Already {
                at: first,
                messages: 3
            }
        );
        assert_eq!(store.stats().await.unwrap().messages, 3);
        // Another key is another batch.
        let other = store.enqueue_once("k2", batch(2), first).await.unwrap();
        assert!(matches!(other, Enqueued::New(ids) if ids.len() == 2));
        assert_eq!(store.stats().await.unwrap().messages, 5);
    }

    #[tokio::test]
    async fn a_batch_that_fails_leaves_neither_messages_nor_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).await.unwrap();
        let mut broken = batch(5);
        broken.push(NewMessage {
            from: "a@example.org".into(),
            to: vec!["x@example.net".into()],
            body: Body::Source(Box::new(Broken)),
            options: MessageOptions::default(),
        });
        assert!(
            store
                .enqueue_once("k", broken, SystemTime::now())
                .await
                .is_err()
        );
        assert_eq!(store.stats().await.unwrap().messages, 0);
        // The same key goes in whole next time.
        let done = store
            .enqueue_once("k", batch(6), SystemTime::now())
            .await
            .unwrap();
        assert!(matches!(done, Enqueued::New(ids) if ids.len() == 6));
    }
}
