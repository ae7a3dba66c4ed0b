//! The outcome log as a table: `outcome_log`, one row per recipient state
//! change, each a [`log::Entry`](crate::log::Entry) as JSON (the line the
//! SQLite store appends to `outcomes.jsonl`), numbered by `seq`.
//!
//! Rows are inserted in the transaction that makes the change: a change
//! is never committed without its row, nor a row without its change. Read
//! with [`PgStore::outcomes`], from a `seq` on (to follow the log as
//! `tail -f` follows the file).

use sqlx::{Postgres, QueryBuilder, Transaction};

use super::PgStore;
use super::rows::get;
use crate::error::{Error, Result};
use crate::log::Entry;

/// Rows one INSERT carries at most.
const ROWS_PER_INSERT: usize = 1000;

pub(super) async fn append(
    store: &PgStore,
    tx: &mut Transaction<'static, Postgres>,
    entries: &[Entry],
) -> Result<()> {
    for chunk in entries.chunks(ROWS_PER_INSERT) {
        let mut json = Vec::with_capacity(chunk.len());
        for e in chunk {
            json.push(serde_json::to_string(e).map_err(|e| {
                Error::Misuse(format!("an outcome log entry did not serialize: {e}"))
            })?);
        }
        QueryBuilder::<Postgres>::new(
            "INSERT INTO outcome_log (at_ms, message_id, recipient_id, event, entry) ",
        )
        .push_values(chunk.iter().zip(json), |mut row, (e, json)| {
            row.push_bind(e.at_ms)
                .push_bind(e.message.as_str().to_owned())
                .push_bind(e.recipient.0)
                .push_bind(e.event.clone())
                .push_bind(json)
                .push_unseparated("::jsonb");
        })
        .build()
        .execute(&mut **tx)
        .await
        .map_err(store.db("appending to the outcome log"))?;
    }
    Ok(())
}

impl PgStore {
    /// The outcome log's entries after `after` (a `seq`; 0 from the
    /// start), oldest first, at most `limit`, each with its `seq`: pass
    /// the last one back to read on.
    pub async fn outcomes(&self, after: i64, limit: u32) -> Result<Vec<(i64, Entry)>> {
        let rows = sqlx::query(
            "SELECT seq, entry::text AS entry FROM outcome_log WHERE seq > $1 ORDER BY seq LIMIT $2",
        )
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(self.db("reading the outcome log"))?;
        rows.iter()
            .map(|row| {
                let seq: i64 = get(row, "seq")?;
                let entry: String = get(row, "entry")?;
                let entry = serde_json::from_str(&entry).map_err(|e| {
                    Error::corrupt(None, format!("outcome log entry {seq} does not read: {e}"))
                })?;
                Ok((seq, entry))
            })
            .collect()
    }
}
