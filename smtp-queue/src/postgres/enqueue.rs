//! Messages in: one transaction per batch holds the bodies' chunks, the
//! envelopes, the recipients and their `enqueued` log rows; it commits
//! (flushed to disk by the server) before ids are returned, and a failure
//! anywhere leaves nothing of the batch.

use std::collections::{HashMap, HashSet};
use std::time::SystemTime;

use sqlx::{Postgres, QueryBuilder, Transaction};

use super::PgStore;
use super::body::ChunkWriter;
use super::rows::get;
use crate::error::{Error, Result};
use crate::log::Entry;
use crate::spool::Written;
use crate::sqlite::{check_envelope, recorded_address};
use crate::state::RecipientState;
use crate::store::{
    Enqueued, MessageId, MessageOptions, NewMessage, RecipientId, from_millis, millis,
};

/// Rows one INSERT carries at most (7 parameters a row, well inside
/// PostgreSQL's 65,535 a statement).
const ROWS_PER_INSERT: usize = 1000;

/// A message whose body is written in the transaction, its envelope not
/// yet inserted.
pub(super) struct Stored {
    pub(super) id: MessageId,
    pub(super) from: String,
    pub(super) to: Vec<String>,
    pub(super) options: MessageOptions,
    pub(super) written: Written,
}

/// Writes each message's body into `tx` (read once, chunk by chunk) and
/// gives it its id.
pub(super) async fn write_bodies(
    store: &PgStore,
    tx: &mut Transaction<'static, Postgres>,
    batch: Vec<NewMessage>,
    now: SystemTime,
) -> Result<Vec<Stored>> {
    let mut writer = ChunkWriter::new(store);
    let mut out = Vec::with_capacity(batch.len());
    for message in batch {
        let id = MessageId::generate(now);
        let NewMessage {
            from,
            to,
            body,
            options,
        } = message;
        let written = writer.write(store, tx, &id, body).await?;
        out.push(Stored {
            id,
            from,
            to,
            options,
            written,
        });
    }
    writer.flush(store, tx).await?;
    Ok(out)
}

/// Inserts the envelopes of `batch` (bodies written) in `tx`; returns
/// their `enqueued` log entries.
pub(super) async fn insert(
    store: &PgStore,
    tx: &mut Transaction<'static, Postgres>,
    batch: &[Stored],
    now_ms: i64,
) -> Result<Vec<Entry>> {
    let db = store.db("enqueueing");
    let mut entries = Vec::new();
    for chunk in batch.chunks(ROWS_PER_INSERT) {
        let mut options = Vec::with_capacity(chunk.len());
        for s in chunk {
            options.push(
                serde_json::to_string(&s.options)
                    .map_err(|e| Error::Misuse(format!("the options do not serialize: {e}")))?,
            );
        }
        QueryBuilder::<Postgres>::new(
            "INSERT INTO messages (id, sender, options, body_size, body_sha256, created_ms) ",
        )
        .push_values(chunk.iter().zip(options), |mut row, (s, options)| {
            row.push_bind(s.id.as_str().to_owned())
                .push_bind(s.from.clone())
                .push_bind(options)
                .push_unseparated("::jsonb")
                .push_bind(i64::try_from(s.written.size).unwrap_or(i64::MAX))
                .push_bind(s.written.sha256.clone())
                .push_bind(now_ms);
        })
        .build()
        .execute(&mut **tx)
        .await
        .map_err(&db)?;
        let recipients: Vec<(&MessageId, usize, &String)> = chunk
            .iter()
            .flat_map(|s| {
                s.to.iter()
                    .enumerate()
                    .map(move |(position, to)| (&s.id, position, to))
            })
            .collect();
        for rows in recipients.chunks(ROWS_PER_INSERT) {
            let returned = QueryBuilder::<Postgres>::new(
                "INSERT INTO recipients (message_id, position, address, state, attempts, \
                 next_attempt_ms, updated_ms) ",
            )
            .push_values(rows, |mut row, (id, position, to)| {
                row.push_bind(id.as_str().to_owned())
                    .push_bind(*position as i64)
                    .push_bind((*to).clone())
                    .push_bind("queued")
                    .push_bind(0i64)
                    .push_bind(now_ms)
                    .push_bind(now_ms);
            })
            .push(" RETURNING id, message_id, position")
            .build()
            .fetch_all(&mut **tx)
            .await
            .map_err(&db)?;
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
    store.log(tx, &entries).await?;
    Ok(entries)
}

pub(super) async fn enqueue(
    store: &PgStore,
    batch: Vec<NewMessage>,
    now: SystemTime,
) -> Result<Vec<MessageId>> {
    for message in &batch {
        check_envelope(message)?;
    }
    let now_ms = millis(now)?;
    let doing = "enqueueing";
    let mut tx = store.begin(doing).await?;
    let stored = write_bodies(store, &mut tx, batch, now).await?;
    insert(store, &mut tx, &stored, now_ms).await?;
    tx.commit().await.map_err(store.db(doing))?;
    Ok(stored.into_iter().map(|s| s.id).collect())
}

/// [`Store::enqueue_once`](crate::Store::enqueue_once): one transaction
/// under an advisory lock on the key (concurrent calls under one key take
/// turns; under other keys they do not wait), which reads the recipients
/// recorded under the key, leaves them out, writes the bodies of the
/// messages with recipients left (the others are never read), records the
/// new recipients and inserts the batch.
pub(super) async fn enqueue_once(
    store: &PgStore,
    key: &str,
    batch: Vec<NewMessage>,
    now: SystemTime,
) -> Result<Enqueued> {
    for message in &batch {
        check_envelope(message)?;
    }
    let now_ms = millis(now)?;
    let doing = "enqueueing";
    let db = store.db(doing);
    let folded: Vec<Vec<String>> = batch
        .iter()
        .map(|m| m.to.iter().map(|t| recorded_address(t)).collect())
        .collect::<Result<_>>()?;
    let mut tx = store.begin(doing).await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(format!("smtp-queue merge {key}"))
        .execute(&mut *tx)
        .await
        .map_err(&db)?;
    let row: Option<(i64, i64)> =
        sqlx::query_as("SELECT id, created_ms FROM merges WHERE key = $1")
            .bind(key)
            .fetch_optional(&mut *tx)
            .await
            .map_err(&db)?;
    let first = row.map(|(_, created)| from_millis(created));
    let known: HashSet<String> = match row {
        Some((merge_id, _)) => sqlx::query_scalar::<_, String>(
            "SELECT address FROM merge_recipients WHERE merge_id = $1",
        )
        .bind(merge_id)
        .fetch_all(&mut *tx)
        .await
        .map_err(&db)?
        .into_iter()
        .collect(),
        None => HashSet::new(),
    };
    // Of each message, the recipients not known nor earlier in the batch.
    let n = batch.len();
    let mut seen: HashSet<String> = HashSet::new();
    let mut skipped = 0u64;
    let mut places = Vec::new();
    let mut reduced = Vec::new();
    let mut addresses = Vec::new();
    for (place, (mut message, folded)) in batch.into_iter().zip(folded).enumerate() {
        let mut to = Vec::new();
        let mut kept = Vec::new();
        for (address, f) in message.to.into_iter().zip(folded) {
            if known.contains(&f) || !seen.insert(f.clone()) {
                skipped += 1;
            } else {
                to.push(address);
                kept.push(f);
            }
        }
        if to.is_empty() {
            continue;
        }
        message.to = to;
        places.push(place);
        reduced.push(message);
        addresses.extend(kept);
    }
    let mut ids = vec![None; n];
    if !reduced.is_empty() {
        let merge_id = match row {
            Some((id, _)) => id,
            None => sqlx::query_scalar(
                "INSERT INTO merges (key, created_ms) VALUES ($1, $2) RETURNING id",
            )
            .bind(key)
            .bind(now_ms)
            .fetch_one(&mut *tx)
            .await
            .map_err(&db)?,
        };
        for chunk in addresses.chunks(ROWS_PER_INSERT) {
            QueryBuilder::<Postgres>::new("INSERT INTO merge_recipients (merge_id, address) ")
                .push_values(chunk, |mut row, address| {
                    row.push_bind(merge_id).push_bind(address.clone());
                })
                .build()
                .execute(&mut *tx)
                .await
                .map_err(&db)?;
        }
        let stored = write_bodies(store, &mut tx, reduced, now).await?;
        insert(store, &mut tx, &stored, now_ms).await?;
        for (place, s) in places.into_iter().zip(stored) {
            ids[place] = Some(s.id);
        }
    }
    tx.commit().await.map_err(&db)?;
    Ok(Enqueued {
        ids,
        skipped,
        first,
    })
}
