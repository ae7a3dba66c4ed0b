//! Messages in and out: the enqueue (bodies to the spool, then the
//! envelopes in one transaction) and opening a stored body.

use std::collections::{HashMap, HashSet};
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

pub(crate) fn check_envelope(message: &NewMessage) -> Result<()> {
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

/// A recipient as a key records it: the local part as written, the
/// domain in lower-case A-labels (`Ann@Example.ORG` → `Ann@example.org`).
pub(crate) fn recorded_address(to: &str) -> Result<String> {
    let m = Mailbox::parse(to)
        .map_err(|e| Error::Misuse(format!("the recipient {to:?} does not parse: {e}")))?;
    Ok(format!(
        "{}@{}",
        m.local_part(),
        m.domain().as_str().to_ascii_lowercase()
    ))
}

/// The key's row (its id and when it was first used) and the recipients
/// recorded under it.
async fn recorded(
    db: &mut sqlx::SqliteConnection,
    key: &str,
) -> Result<(Option<(i64, i64)>, HashSet<String>)> {
    let doing = "reading the recipients enqueued under a key";
    let row = sqlx::query("SELECT id, created_ms FROM merges WHERE key = $1")
        .bind(key)
        .fetch_optional(&mut *db)
        .await
        .map_err(|e| Error::db(doing, e))?;
    let Some(row) = row else {
        return Ok((None, HashSet::new()));
    };
    let id: i64 = get(&row, "id")?;
    let addresses: Vec<String> =
        sqlx::query_scalar("SELECT address FROM merge_recipients WHERE merge_id = $1")
            .bind(id)
            .fetch_all(&mut *db)
            .await
            .map_err(|e| Error::db(doing, e))?;
    Ok((
        Some((id, get(&row, "created_ms")?)),
        addresses.into_iter().collect(),
    ))
}

/// Of each message's recipients (`folded`, as [`recorded_address`] gives
/// them), those to enqueue: not in `known`, nor earlier in the batch.
/// Returns, per message, the positions kept, and how many were left out.
fn select(folded: &[Vec<String>], known: &HashSet<String>) -> (Vec<Vec<usize>>, u64) {
    let mut seen: HashSet<&str> = HashSet::new();
    let mut skipped = 0;
    let kept = folded
        .iter()
        .map(|to| {
            let mut keep = Vec::with_capacity(to.len());
            for (i, a) in to.iter().enumerate() {
                if known.contains(a) || !seen.insert(a) {
                    skipped += 1;
                } else {
                    keep.push(i);
                }
            }
            keep
        })
        .collect();
    (kept, skipped)
}

/// `v` with only the items at `positions` (ascending).
fn only<T>(v: Vec<T>, positions: &[usize]) -> Vec<T> {
    v.into_iter()
        .enumerate()
        .filter(|(i, _)| positions.binary_search(i).is_ok())
        .map(|(_, t)| t)
        .collect()
}

/// [`Store::enqueue_once`](crate::Store::enqueue_once): the recipients
/// recorded under `key` are read first, so that the bodies of messages
/// with none left are never read; then, in one durable transaction, read
/// again (a concurrent call may have added some: its recipients are left
/// out now), the new ones recorded and the batch inserted.
pub(super) async fn enqueue_once(
    store: &SqliteStore,
    key: &str,
    batch: Vec<NewMessage>,
    now: SystemTime,
) -> Result<Enqueued> {
    for message in &batch {
        check_envelope(message)?;
    }
    let now_ms = millis(now)?;
    let doing = "enqueueing";
    let (found, known) = {
        let mut conn = store
            .pool
            .acquire()
            .await
            .map_err(|e| Error::db(doing, e))?;
        recorded(&mut conn, key).await?
    };
    let n = batch.len();
    let folded: Vec<Vec<String>> = batch
        .iter()
        .map(|m| m.to.iter().map(|t| recorded_address(t)).collect())
        .collect::<Result<_>>()?;
    let (kept, mut skipped) = select(&folded, &known);
    // The messages with recipients left: their place in the batch, the
    // message with only those, and their recorded addresses.
    let mut places = Vec::new();
    let mut reduced = Vec::new();
    let mut addresses = Vec::new();
    for (((place, mut message), keep), folded) in
        batch.into_iter().enumerate().zip(kept).zip(folded)
    {
        if keep.is_empty() {
            continue;
        }
        message.to = only(message.to, &keep);
        places.push(place);
        reduced.push(message);
        addresses.push(only(folded, &keep));
    }
    let mut ids = vec![None; n];
    let first = found.map(|(_, at)| from_millis(at));
    if reduced.is_empty() {
        return Ok(Enqueued {
            ids,
            skipped,
            first,
        });
    }
    let mut written = spool_batch(store, reduced, now).await?;
    let mut dropped = Vec::new();
    let committed = async {
        let mut tx = store.begin_durable(doing).await?;
        let db = |e| Error::db(doing, e);
        let row = sqlx::query("SELECT id, created_ms FROM merges WHERE key = $1")
            .bind(key)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db)?;
        let (merge_id, first) = match row {
            Some(r) => (get::<i64>(&r, "id")?, Some(get::<i64>(&r, "created_ms")?)),
            None => {
                let id: i64 = sqlx::query_scalar(
                    "INSERT INTO merges (key, created_ms) VALUES ($1, $2) RETURNING id",
                )
                .bind(key)
                .bind(now_ms)
                .fetch_one(&mut *tx)
                .await
                .map_err(db)?;
                (id, None)
            }
        };
        let count: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM merge_recipients WHERE merge_id = $1")
                .bind(merge_id)
                .fetch_one(&mut *tx)
                .await
                .map_err(db)?;
        if usize::try_from(count).ok() != Some(known.len()) {
            // Another call enqueued under the key since: leave out what it did.
            let (_, now_known) = recorded(&mut tx, key).await?;
            let (kept, more) = select(&addresses, &now_known);
            skipped += more;
            let (mut w, mut a) = (Vec::new(), Vec::new());
            for (((mut spooled, folded), keep), place) in std::mem::take(&mut written)
                .into_iter()
                .zip(std::mem::take(&mut addresses))
                .zip(kept)
                .zip(std::mem::take(&mut places))
            {
                if keep.is_empty() {
                    dropped.push(spooled);
                    continue;
                }
                spooled.message.to = only(spooled.message.to, &keep);
                w.push(spooled);
                a.push(only(folded, &keep));
                places.push(place);
            }
            (written, addresses) = (w, a);
        }
        let rows: Vec<&String> = addresses.iter().flatten().collect();
        for chunk in rows.chunks(ROWS_PER_INSERT) {
            QueryBuilder::<Sqlite>::new("INSERT INTO merge_recipients (merge_id, address) ")
                .push_values(chunk, |mut row, address| {
                    row.push_bind(merge_id).push_bind(address.as_str());
                })
                .build()
                .execute(&mut *tx)
                .await
                .map_err(db)?;
        }
        let entries = insert(&mut tx, &written, now_ms).await?;
        tx.commit().await.map_err(db)?;
        Ok((entries, first))
    }
    .await;
    unspool(store, &dropped).await;
    match committed {
        Ok((entries, first)) => {
            store.write_log(&entries);
            for (place, s) in places.into_iter().zip(written) {
                ids[place] = Some(s.id);
            }
            Ok(Enqueued {
                ids,
                skipped,
                first: first.map(from_millis),
            })
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

    fn new(e: &Enqueued) -> usize {
        e.new_ids().count()
    }

    #[tokio::test]
    async fn a_batch_enqueued_once_under_a_key_is_not_enqueued_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).await.unwrap();
        let first = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        let done = store.enqueue_once("k1", batch(3), first).await.unwrap();
        assert_eq!((new(&done), done.skipped, done.first), (3, 0, None));
        let again = store
            .enqueue_once("k1", batch(3), SystemTime::now())
            .await
            .unwrap();
        assert_eq!(
            again,
            Enqueued {
                ids: vec![None; 3],
                skipped: 3,
                first: Some(first)
            }
        );
        assert_eq!(store.stats().await.unwrap().messages, 3);
        // Another key is another batch.
        let other = store.enqueue_once("k2", batch(2), first).await.unwrap();
        assert_eq!((new(&other), other.first), (2, None));
        assert_eq!(store.stats().await.unwrap().messages, 5);
    }

    #[tokio::test]
    async fn only_recipients_new_under_the_key_are_enqueued_whatever_their_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).await.unwrap();
        let first = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        store.enqueue_once("k", batch(3), first).await.unwrap();
        // Reversed, the domain in capitals, one more at the end.
        let mut longer = batch(4);
        longer.reverse();
        for m in &mut longer {
            m.to[0] = m.to[0].replace("example.net", "EXAMPLE.Net");
        }
        let done = store
            .enqueue_once("k", longer, SystemTime::now())
            .await
            .unwrap();
        assert_eq!(done.skipped, 3);
        assert_eq!(done.first, Some(first));
        assert!(done.ids[0].is_some() && done.ids[1..].iter().all(Option::is_none));
        let info = store.show(done.ids[0].as_ref().unwrap()).await.unwrap();
        assert_eq!(info.recipients[0].address, "r3@EXAMPLE.Net");
        assert_eq!(store.stats().await.unwrap().messages, 4);
        // The local part is compared as written: R0 is not r0.
        let mut upper = batch(1);
        upper[0].to = vec!["R0@example.net".into()];
        let done = store
            .enqueue_once("k", upper, SystemTime::now())
            .await
            .unwrap();
        assert_eq!((new(&done), done.skipped), (1, 0));
    }

    #[tokio::test]
    async fn a_recipient_twice_in_a_batch_or_a_message_gets_it_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).await.unwrap();
        let mut b = batch(3);
        b[2].to = vec!["r0@example.net".into()];
        b[1].to.push("x@example.net".into());
        b[1].to.push("<x@Example.NET>".into());
        let done = store.enqueue_once("k", b, SystemTime::now()).await.unwrap();
        assert_eq!(done.skipped, 2);
        assert!(done.ids[2].is_none());
        let info = store.show(done.ids[1].as_ref().unwrap()).await.unwrap();
        let to: Vec<_> = info.recipients.iter().map(|r| r.address.as_str()).collect();
        assert_eq!(to, ["r1@example.net", "x@example.net"]);
        // A message partly known goes to the rest only.
        let mut b = batch(1);
        b[0].to.push("y@example.net".into());
        let done = store.enqueue_once("k", b, SystemTime::now()).await.unwrap();
        assert_eq!(done.skipped, 1);
        let info = store.show(done.ids[0].as_ref().unwrap()).await.unwrap();
        assert_eq!(info.recipients.len(), 1);
        assert_eq!(info.recipients[0].address, "y@example.net");
    }

    #[tokio::test]
    async fn concurrent_calls_under_one_key_enqueue_each_recipient_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(SqliteStore::open(dir.path()).await.unwrap());
        let calls: Vec<_> = (0..4)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(async move {
                    store
                        .enqueue_once("k", batch(50), SystemTime::now())
                        .await
                        .unwrap()
                })
            })
            .collect();
        let mut total = 0;
        for c in calls {
            total += new(&c.await.unwrap());
        }
        assert_eq!(total, 50);
        assert_eq!(store.stats().await.unwrap().messages, 50);
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
        assert_eq!((new(&done), done.skipped, done.first), (6, 0, None));
    }
}
