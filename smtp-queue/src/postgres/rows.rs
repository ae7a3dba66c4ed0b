//! Reading rows: typed columns (the shapes both stores share are in
//! `crate::rows`), a message's recipients.
//! (Options are selected as `options::text`.)

use sqlx::postgres::PgRow;
use sqlx::{Postgres, Row};

use super::{PgStore, RECIPIENT_COLUMNS};
use crate::error::{Error, Result};
use crate::store::{MessageId, RecipientInfo};

pub(super) fn get<'r, T>(row: &'r PgRow, column: &str) -> Result<T>
where
    T: sqlx::Decode<'r, Postgres> + sqlx::Type<Postgres>,
{
    row.try_get(column)
        .map_err(|e| Error::corrupt(None, format!("column {column} does not read: {e}")))
}

crate::rows::columns_for!(PgRow);

pub(super) use crate::rows::{
    attempts_of, message_id_of, options_of, recipient_of, size_of, state_of,
};

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
