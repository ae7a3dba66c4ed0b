//! Reading the rows both stores share the shape of: a recipient's row and
//! its typed columns, the same in SQLite and PostgreSQL (the SQL selects
//! the same columns, options as text); and the key columns of a TLS-RPT
//! result row, written the same in both.

use std::str::FromStr;

use crate::error::{Error, Result};
use crate::state::RecipientState;
use crate::store::{
    Attempt, Lease, MessageId, MessageOptions, RecipientId, RecipientInfo, TlsFacts, from_millis,
};

/// A row's columns as the types the stores keep: text and 64-bit
/// integers, each maybe NULL. A column that does not read is corruption.
pub(crate) trait Columns {
    fn text(&self, column: &str) -> Result<String>;
    fn text_or_null(&self, column: &str) -> Result<Option<String>>;
    fn int(&self, column: &str) -> Result<i64>;
    fn int_or_null(&self, column: &str) -> Result<Option<i64>>;
}

/// [`Columns`] for a database's row type.
macro_rules! columns_for {
    ($row:ty) => {
        impl $crate::rows::Columns for $row {
            fn text(&self, column: &str) -> $crate::error::Result<String> {
                get(self, column)
            }
            fn text_or_null(&self, column: &str) -> $crate::error::Result<Option<String>> {
                get(self, column)
            }
            fn int(&self, column: &str) -> $crate::error::Result<i64> {
                get(self, column)
            }
            fn int_or_null(&self, column: &str) -> $crate::error::Result<Option<i64>> {
                get(self, column)
            }
        }
    };
}
pub(crate) use columns_for;

pub(crate) fn state_of(row: &impl Columns) -> Result<RecipientState> {
    let s = row.text("state")?;
    RecipientState::from_str(&s).map_err(|e| Error::corrupt(None, e.to_string()))
}

pub(crate) fn attempts_of(row: &impl Columns) -> Result<u32> {
    let n = row.int("attempts")?;
    u32::try_from(n).map_err(|_| Error::corrupt(None, format!("{n} attempts")))
}

pub(crate) fn message_id_of(row: &impl Columns, column: &str) -> Result<MessageId> {
    let s = row.text(column)?;
    MessageId::parse(&s).map_err(|_| Error::corrupt(None, format!("{s:?} is not a message id")))
}

pub(crate) fn options_of(row: &impl Columns, id: &MessageId) -> Result<MessageOptions> {
    let s = row.text("options")?;
    serde_json::from_str(&s)
        .map_err(|e| Error::corrupt(Some(id), format!("its options do not read: {e}")))
}

pub(crate) fn size_of(row: &impl Columns) -> Result<u64> {
    let n = row.int("body_size")?;
    u64::try_from(n).map_err(|_| Error::corrupt(None, format!("a body of {n} octets")))
}

/// The id of a message row (`id`, `options`, `body_size`) whose columns
/// read; `None`, with a warning, for one that does not: a claim leaves it
/// out rather than fail for every message.
pub(crate) fn readable_message(row: &impl Columns) -> Option<String> {
    let id = row.text("id").ok()?;
    let Ok(message) = MessageId::parse(&id) else {
        tracing::error!(
            id,
            "a message row with an id that is not one is left out of claims"
        );
        return None;
    };
    match size_of(row).and_then(|_| options_of(row, &message)) {
        Ok(_) => Some(id),
        Err(e) => {
            tracing::error!(message_id = %message, error = %e,
                "a corrupt message is left out of claims: `smtp queue delete` it");
            None
        }
    }
}

pub(crate) fn recipient_of(row: &impl Columns) -> Result<RecipientInfo> {
    let message = message_id_of(row, "message_id")?;
    let text = row.text_or_null("last_text")?;
    let last = match text {
        None => None,
        Some(text) => {
            let tls = row.text_or_null("last_tls")?;
            let tls = match tls {
                None => None,
                Some(t) => Some(serde_json::from_str::<TlsFacts>(&t).map_err(|e| {
                    Error::corrupt(Some(&message), format!("its TLS facts do not read: {e}"))
                })?),
            };
            let code = row.int_or_null("last_code")?;
            Some(Attempt {
                code: code.and_then(|c| u16::try_from(c).ok()),
                enhanced: row.text_or_null("last_enhanced")?,
                text,
                host: row.text_or_null("last_host")?,
                tls,
            })
        }
    };
    let state = state_of(row)?;
    let generation = row.int_or_null("lease_generation")?;
    let lease = match (state, generation) {
        (RecipientState::Delivering, Some(generation)) => Some(Lease {
            message,
            generation,
            worker: row.text_or_null("lease_worker")?.unwrap_or_default(),
            until: from_millis(row.int_or_null("lease_until_ms")?.unwrap_or(0)),
        }),
        _ => None,
    };
    Ok(RecipientInfo {
        id: RecipientId(row.int("id")?),
        address: row.text("address")?,
        state,
        attempts: attempts_of(row)?,
        next_attempt: from_millis(row.int("next_attempt_ms")?),
        last,
        lease,
        updated: from_millis(row.int("updated_ms")?),
    })
}

/// The day (since the epoch, UTC) of `t`: the `tls_results` day.
pub(crate) fn day_of(t: std::time::SystemTime) -> i64 {
    t.duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs() / 86_400).unwrap_or(0))
}

/// An address as the `tls_results` key holds it: empty when unknown.
pub(crate) fn ip_text(ip: Option<std::net::IpAddr>) -> String {
    ip.map(|ip| ip.to_string()).unwrap_or_default()
}
