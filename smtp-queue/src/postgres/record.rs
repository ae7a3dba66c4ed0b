//! Recording outcomes under a lease: one transaction per call, refused
//! whole unless the lease still holds every recipient named.
//!
//! ```text
//! BEGIN
//!   lock the message's row
//!   SELECT … recipients named, held by (message, generation) … FOR UPDATE
//!       fewer than named: a stale lease → ROLLBACK, Error::StaleLease
//!   UPDATE each recipient (state, attempts, next attempt, last attempt's facts)
//!   the message owes a notification? (its last recipient final, one failed)
//!   INSERT outcome_log rows
//! COMMIT
//! ```
//!
//! PostgreSQL commits concurrent transactions in one WAL flush on its
//! own, so the SQLite store's group commit has no counterpart here.

use std::collections::HashSet;
use std::time::SystemTime;

use super::claim::lock_messages;
use super::rows::{attempts_of, get};
use super::{PgStore, notify};
use crate::error::{Error, Result};
use crate::log::Entry;
use crate::state::RecipientState;
use crate::store::{Lease, Outcome, RecipientId, millis};

const DOING: &str = "recording outcomes";

pub(super) async fn record(
    store: &PgStore,
    lease: &Lease,
    outcomes: Vec<(RecipientId, Outcome)>,
    now: SystemTime,
) -> Result<()> {
    let distinct: HashSet<RecipientId> = outcomes.iter().map(|(r, _)| *r).collect();
    if distinct.len() != outcomes.len() {
        return Err(Error::Misuse(format!(
            "a recipient recorded twice in one call (message {})",
            lease.message
        )));
    }
    let states = outcomes
        .iter()
        .map(|(_, o)| RecipientState::Delivering.apply(o.transition()))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let now_ms = millis(now)?;
    if outcomes.is_empty() {
        return Ok(());
    }
    let db = store.db(DOING);
    let mut tx = store.begin(DOING).await?;
    lock_messages(store, &mut tx, std::slice::from_ref(&lease.message)).await?;
    let ids: Vec<i64> = outcomes.iter().map(|(r, _)| r.0).collect();
    let held: Vec<i64> = sqlx::query_scalar(
        "SELECT id FROM recipients WHERE id = ANY($1) AND message_id = $2
         AND lease_generation = $3 AND state = 'delivering' FOR UPDATE",
    )
    .bind(&ids)
    .bind(lease.message.as_str())
    .bind(lease.generation)
    .fetch_all(&mut *tx)
    .await
    .map_err(&db)?;
    if held.len() != ids.len() {
        return Err(Error::StaleLease {
            message: lease.message.clone(),
            generation: lease.generation,
        });
    }
    let mut entries = Vec::with_capacity(outcomes.len());
    for ((rid, outcome), to) in outcomes.iter().zip(&states) {
        let a = outcome.attempt();
        let next_ms = match outcome {
            Outcome::Deferred { next, .. } => Some(millis(*next)?),
            _ => None,
        };
        let tls = match a.and_then(|a| a.tls.as_ref()) {
            Some(t) => Some(
                serde_json::to_string(t)
                    .map_err(|e| Error::Misuse(format!("TLS facts do not serialize: {e}")))?,
            ),
            None => None,
        };
        // An attempt's facts replace the last ones; an outcome without one
        // (an expiry with no new attempt) keeps them.
        let row = sqlx::query(
            "UPDATE recipients SET state = $2, attempts = attempts + $3,
                 next_attempt_ms = COALESCE($4, next_attempt_ms), updated_ms = $5,
                 lease_generation = NULL, lease_worker = NULL, lease_until_ms = NULL,
                 last_code = CASE WHEN $3 = 1 THEN $6 ELSE last_code END,
                 last_enhanced = CASE WHEN $3 = 1 THEN $7 ELSE last_enhanced END,
                 last_text = CASE WHEN $3 = 1 THEN $8 ELSE last_text END,
                 last_host = CASE WHEN $3 = 1 THEN $9 ELSE last_host END,
                 last_tls = CASE WHEN $3 = 1 THEN $10 ELSE last_tls END
             WHERE id = $1
             RETURNING address, attempts, next_attempt_ms",
        )
        .bind(rid.0)
        .bind(to.as_str())
        .bind(i64::from(a.is_some()))
        .bind(next_ms)
        .bind(now_ms)
        .bind(a.and_then(|a| a.code).map(i64::from))
        .bind(a.and_then(|a| a.enhanced.clone()))
        .bind(a.map(|a| a.text.clone()))
        .bind(a.and_then(|a| a.host.clone()))
        .bind(tls)
        .fetch_one(&mut *tx)
        .await
        .map_err(&db)?;
        entries.push(Entry {
            at_ms: now_ms,
            event: to.as_str().into(),
            message: lease.message.clone(),
            recipient: *rid,
            rcpt: get(&row, "address")?,
            from: Some(RecipientState::Delivering),
            to: Some(*to),
            attempts: attempts_of(&row)?,
            next_attempt_ms: matches!(outcome, Outcome::Deferred { .. })
                .then(|| get(&row, "next_attempt_ms"))
                .transpose()?,
            worker: Some(lease.worker.clone()),
            generation: Some(lease.generation),
            attempt: a.cloned(),
        });
    }
    // With the last outcome, or not at all: a notification owed is never
    // lost to a crash between the two.
    if outcomes
        .iter()
        .any(|(_, o)| !matches!(o, Outcome::Deferred { .. }))
    {
        notify::mark_owed(store, &mut tx, &lease.message, now_ms).await?;
    }
    store.log(&mut tx, &entries).await?;
    tx.commit().await.map_err(&db)
}
