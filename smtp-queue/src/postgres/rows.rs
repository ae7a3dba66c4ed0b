//! Reading rows: typed columns, a recipient's row, a message's recipients.
//! (Options are selected as `options::text`.)

use std::str::FromStr;

use sqlx::postgres::PgRow;
use sqlx::{Postgres, Row};

use super::{PgStore, RECIPIENT_COLUMNS};
use crate::error::{Error, Result};
use crate::state::RecipientState;
use crate::store::{
    Attempt, Lease, MessageId, MessageOptions, RecipientId, RecipientInfo, TlsFacts, from_millis,
};

pub(super) fn get<'r, T>(row: &'r PgRow, column: &str) -> Result<T>
where
    T: sqlx::Decode<'r, Postgres> + sqlx::Type<Postgres>,
{
    row.try_get(column)
        .map_err(|e| Error::corrupt(None, format!("column {column} does not read: {e}")))
}

pub(super) fn state_of(row: &PgRow) -> Result<RecipientState> {
    let s: String = get(row, "state")?;
    RecipientState::from_str(&s).map_err(|e| Error::corrupt(None, e.to_string()))
}

pub(super) fn attempts_of(row: &PgRow) -> Result<u32> {
    let n: i64 = get(row, "attempts")?;
    u32::try_from(n).map_err(|_| Error::corrupt(None, format!("{n} attempts")))
}

pub(super) fn message_id_of(row: &PgRow, column: &str) -> Result<MessageId> {
    let s: String = get(row, column)?;
    MessageId::parse(&s).map_err(|_| Error::corrupt(None, format!("{s:?} is not a message id")))
}

pub(super) fn options_of(row: &PgRow, id: &MessageId) -> Result<MessageOptions> {
    let s: String = get(row, "options")?;
    serde_json::from_str(&s)
        .map_err(|e| Error::corrupt(Some(id), format!("its options do not read: {e}")))
}

pub(super) fn size_of(row: &PgRow) -> Result<u64> {
    let n: i64 = get(row, "body_size")?;
    u64::try_from(n).map_err(|_| Error::corrupt(None, format!("a body of {n} octets")))
}

pub(super) fn recipient_of(row: &PgRow) -> Result<RecipientInfo> {
    let message = message_id_of(row, "message_id")?;
    let text: Option<String> = get(row, "last_text")?;
    let last = match text {
        None => None,
        Some(text) => {
            let tls: Option<String> = get(row, "last_tls")?;
            let tls = match tls {
                None => None,
                Some(t) => Some(serde_json::from_str::<TlsFacts>(&t).map_err(|e| {
                    Error::corrupt(Some(&message), format!("its TLS facts do not read: {e}"))
                })?),
            };
            let code: Option<i64> = get(row, "last_code")?;
            Some(Attempt {
                code: code.and_then(|c| u16::try_from(c).ok()),
                enhanced: get(row, "last_enhanced")?,
                text,
                host: get(row, "last_host")?,
                tls,
            })
        }
    };
    let state = state_of(row)?;
    let generation: Option<i64> = get(row, "lease_generation")?;
    let lease = match (state, generation) {
        (RecipientState::Delivering, Some(generation)) => Some(Lease {
            message,
            generation,
            worker: get::<Option<String>>(row, "lease_worker")?.unwrap_or_default(),
            until: from_millis(get::<Option<i64>>(row, "lease_until_ms")?.unwrap_or(0)),
        }),
        _ => None,
    };
    Ok(RecipientInfo {
        id: RecipientId(get(row, "id")?),
        address: get(row, "address")?,
        state,
        attempts: attempts_of(row)?,
        next_attempt: from_millis(get(row, "next_attempt_ms")?),
        last,
        lease,
        updated: from_millis(get(row, "updated_ms")?),
    })
}

impl PgStore {
    pub(super) async fn recipients_of(
        &self,
        executor: impl sqlx::Executor<'_, Database = Postgres>,
        id: &MessageId,
    ) -> Result<Vec<RecipientInfo>> {
        let rows = sqlx::query(&format!(
            "SELECT {RECIPIENT_COLUMNS} FROM recipients WHERE message_id = $1 ORDER BY position"
        ))
        .bind(id.as_str())
        .fetch_all(executor)
        .await
        .map_err(self.db("reading recipients"))?;
        rows.iter().map(recipient_of).collect()
    }
}
