//! Bodies in `body_chunks`: written chunk by chunk inside the enqueue's
//! transaction, read back chunk by chunk, checked against the size and
//! SHA-256 recorded at enqueue. Neither way holds a body whole: writing
//! holds at most a few chunks of small bodies waiting for one INSERT,
//! reading one chunk.

use std::io;

use async_trait::async_trait;
use sha2::{Digest, Sha256};
use smtp_core::delivery::BodySource;
use sqlx::postgres::PgPool;
use sqlx::{Postgres, QueryBuilder, Transaction};

use super::{PgStore, scrub};
use crate::error::{Error, Result};
use crate::spool::{Reader, Written, hex};
use crate::store::{Body, MessageId};

/// Chunk rows held for one INSERT at most (small bodies: one row each).
const ROWS_PER_INSERT: usize = 500;

/// Writes bodies into `body_chunks` in a transaction, batching the rows
/// of small bodies into multi-row INSERTs.
pub(super) struct ChunkWriter {
    chunk_size: usize,
    pending: Vec<(MessageId, i64, Vec<u8>)>,
    pending_bytes: usize,
}

impl ChunkWriter {
    pub(super) fn new(store: &PgStore) -> Self {
        Self {
            chunk_size: store.chunk_size,
            pending: Vec::new(),
            pending_bytes: 0,
        }
    }

    /// Streams `body` into message `id`'s chunks; returns its size and
    /// digest. The rows may wait for [`flush`](Self::flush).
    pub(super) async fn write(
        &mut self,
        store: &PgStore,
        tx: &mut Transaction<'static, Postgres>,
        id: &MessageId,
        body: Body,
    ) -> Result<Written> {
        let mut reader = Reader::open(body).await?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut seq = 0i64;
        loop {
            // A whole chunk (or the rest): a source may return less.
            let mut chunk = vec![0u8; self.chunk_size];
            let mut filled = 0;
            while filled < chunk.len() {
                let n = reader.read(&mut chunk[filled..]).await?;
                if n == 0 {
                    break;
                }
                filled += n;
            }
            if filled == 0 {
                break;
            }
            chunk.truncate(filled);
            hasher.update(&chunk);
            size += filled as u64;
            self.pending_bytes += filled;
            self.pending.push((id.clone(), seq, chunk));
            seq += 1;
            if self.pending.len() >= ROWS_PER_INSERT || self.pending_bytes >= self.chunk_size {
                self.flush(store, tx).await?;
            }
            if filled < self.chunk_size {
                break;
            }
        }
        Ok(Written {
            size,
            sha256: hex(&hasher.finalize()),
        })
    }

    /// Inserts the rows waiting.
    pub(super) async fn flush(
        &mut self,
        store: &PgStore,
        tx: &mut Transaction<'static, Postgres>,
    ) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let rows = std::mem::take(&mut self.pending);
        self.pending_bytes = 0;
        QueryBuilder::<Postgres>::new("INSERT INTO body_chunks (message_id, seq, data) ")
            .push_values(rows, |mut row, (id, seq, data)| {
                row.push_bind(String::from(id))
                    .push_bind(seq)
                    .push_bind(data);
            })
            .build()
            .execute(&mut **tx)
            .await
            .map_err(store.db("storing a message body"))?;
        Ok(())
    }
}

pub(super) async fn open_body(store: &PgStore, id: &MessageId) -> Result<Box<dyn BodySource>> {
    let doing = "opening a message body";
    let row: Option<(i64, String)> =
        sqlx::query_as("SELECT body_size, body_sha256 FROM messages WHERE id = $1")
            .bind(id.as_str())
            .fetch_optional(&store.pool)
            .await
            .map_err(store.db(doing))?;
    let Some((size, sha256)) = row else {
        return Err(Error::NotFound(id.clone()));
    };
    let size = u64::try_from(size)
        .map_err(|_| Error::corrupt(Some(id), format!("a body of {size} octets")))?;
    // The chunks' sizes come from their headers (no chunk is read).
    let (chunks, stored): (i64, i64) = sqlx::query_as(
        "SELECT COUNT(*), COALESCE(SUM(octet_length(data)), 0)::BIGINT
         FROM body_chunks WHERE message_id = $1",
    )
    .bind(id.as_str())
    .fetch_one(&store.pool)
    .await
    .map_err(store.db(doing))?;
    if u64::try_from(stored).ok() != Some(size) {
        return Err(Error::corrupt(
            Some(id),
            format!(
                "its body's {chunks} chunks in the database hold {stored} octets, {size} were enqueued"
            ),
        ));
    }
    Ok(Box::new(PgBody {
        pool: store.pool.clone(),
        database: store.database.clone(),
        secrets: store.secrets.clone(),
        id: id.clone(),
        expected: Written { size, sha256 },
        next: 0,
        chunk: Vec::new(),
        pos: 0,
        hasher: Sha256::new(),
        read: 0,
        checked: false,
    }))
}

/// A body in `body_chunks`, fetched one chunk at a time and checked as it
/// is read: a mismatch is an [`io::ErrorKind::InvalidData`] error where
/// the end would be, so a corrupt body never ends a transaction.
struct PgBody {
    pool: PgPool,
    database: String,
    secrets: Vec<String>,
    id: MessageId,
    expected: Written,
    /// The next chunk's `seq`.
    next: i64,
    chunk: Vec<u8>,
    pos: usize,
    hasher: Sha256,
    read: u64,
    /// The end was reached and the body found whole.
    checked: bool,
}

#[async_trait]
impl BodySource for PgBody {
    async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        while self.pos >= self.chunk.len() {
            let data: Option<Vec<u8>> = sqlx::query_scalar(
                "SELECT data FROM body_chunks WHERE message_id = $1 AND seq = $2",
            )
            .bind(self.id.as_str())
            .bind(self.next)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| {
                io::Error::other(format!(
                    "reading the body of message {} from {}: {}",
                    self.id,
                    self.database,
                    scrub(&e.to_string(), &self.secrets)
                ))
            })?;
            match data {
                Some(data) => {
                    self.next += 1;
                    self.chunk = data;
                    self.pos = 0;
                }
                None => {
                    self.chunk = Vec::new();
                    self.pos = 0;
                    return self.end();
                }
            }
        }
        let n = (self.chunk.len() - self.pos).min(buf.len());
        buf[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        self.read += n as u64;
        if self.read > self.expected.size {
            return Err(self.corrupt("grew since it was enqueued"));
        }
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    async fn rewind(&mut self) -> io::Result<()> {
        self.next = 0;
        self.chunk = Vec::new();
        self.pos = 0;
        self.hasher = Sha256::new();
        self.read = 0;
        self.checked = false;
        Ok(())
    }
}

impl PgBody {
    /// The end: 0 if the body is what was enqueued, else the error.
    fn end(&mut self) -> io::Result<usize> {
        if self.checked {
            return Ok(0);
        }
        if self.read != self.expected.size {
            return Err(self.corrupt("shrank since it was enqueued"));
        }
        let digest = hex(&std::mem::take(&mut self.hasher).finalize());
        if digest != self.expected.sha256 {
            return Err(self.corrupt("does not match the digest recorded at enqueue"));
        }
        self.checked = true;
        Ok(0)
    }

    fn corrupt(&self, what: &str) -> io::Error {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the body of message {} {what}", self.id),
        )
    }
}
