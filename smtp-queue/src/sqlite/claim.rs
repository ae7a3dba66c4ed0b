//! The lease operations: claiming due recipients, renewing a lease,
//! recording outcomes under it and releasing it.

use std::time::{Duration, SystemTime};

use super::rows::{attempts_of, get, options_of, size_of, state_of};
use super::{DUE, SqliteStore, notify};
use crate::error::{Error, Result};
use crate::log::Entry;
use crate::state::{RecipientState, Transition};
use crate::store::{
    Claimed, ClaimedRecipient, Lease, MessageId, Outcome, RecipientId, from_millis, millis,
};

pub(super) async fn claim_due(
    store: &SqliteStore,
    now: SystemTime,
    limit: u32,
    worker: &str,
    lease: Duration,
) -> Result<Vec<Claimed>> {
    if worker.is_empty() {
        return Err(Error::Misuse("a claim without a worker id".into()));
    }
    let doing = "claiming due recipients";
    let now_ms = millis(now)?;
    let until = now + lease;
    let until_ms = millis(until)?;
    let mut tx = store.begin(doing).await?;
    let ids: Vec<String> = sqlx::query_scalar(&format!(
        "SELECT message_id FROM recipients WHERE {DUE} GROUP BY message_id
         ORDER BY MIN(CASE WHEN state = 'delivering' THEN lease_until_ms ELSE next_attempt_ms END), message_id
         LIMIT $2"
    ))
    .bind(now_ms)
    .bind(i64::from(limit))
    .fetch_all(&mut *tx)
    .await
    .map_err(|e| Error::db(doing, e))?;
    let mut claimed = Vec::new();
    let mut entries = Vec::new();
    for id in ids {
        let id = MessageId::parse(&id)
            .map_err(|_| Error::corrupt(None, format!("{id:?} is not a message id")))?;
        let Some(message) = store.message_row(&mut tx, &id).await? else {
            return Err(Error::corrupt(
                Some(&id),
                "it has recipients but no message row",
            ));
        };
        let generation: i64 =
            sqlx::query_scalar("UPDATE lease_generation SET value = value + 1 RETURNING value")
                .fetch_one(&mut *tx)
                .await
                .map_err(|e| Error::db(doing, e))?;
        let rows = sqlx::query(&format!(
            "SELECT id, address, state, attempts FROM recipients
             WHERE message_id = $2 AND {DUE} ORDER BY position"
        ))
        .bind(now_ms)
        .bind(id.as_str())
        .fetch_all(&mut *tx)
        .await
        .map_err(|e| Error::db(doing, e))?;
        let lease = Lease {
            message: id.clone(),
            generation,
            worker: worker.to_owned(),
            until,
        };
        let mut recipients = Vec::with_capacity(rows.len());
        for row in &rows {
            let from = state_of(row)?;
            let to = from.apply(Transition::Claim)?;
            let rid = RecipientId(get(row, "id")?);
            sqlx::query(
                "UPDATE recipients SET state = $1, lease_generation = $2, lease_worker = $3,
                 lease_until_ms = $4, updated_ms = $5 WHERE id = $6",
            )
            .bind(to.as_str())
            .bind(generation)
            .bind(worker)
            .bind(until_ms)
            .bind(now_ms)
            .bind(rid.0)
            .execute(&mut *tx)
            .await
            .map_err(|e| Error::db(doing, e))?;
            let r = ClaimedRecipient {
                id: rid,
                address: get(row, "address")?,
                attempts: attempts_of(row)?,
                claimed_from: from,
            };
            entries.push(Entry {
                at_ms: now_ms,
                event: "claimed".into(),
                message: id.clone(),
                recipient: rid,
                rcpt: r.address.clone(),
                from: Some(from),
                to: Some(to),
                attempts: r.attempts,
                next_attempt_ms: None,
                worker: Some(worker.to_owned()),
                generation: Some(generation),
                attempt: None,
            });
            recipients.push(r);
        }
        claimed.push(Claimed {
            lease,
            from: get(&message, "sender")?,
            created: from_millis(get(&message, "created_ms")?),
            body_size: size_of(&message)?,
            options: options_of(&message, &id)?,
            recipients,
        });
    }
    tx.commit().await.map_err(|e| Error::db(doing, e))?;
    store.write_log(&entries);
    Ok(claimed)
}

pub(super) async fn renew(
    store: &SqliteStore,
    lease: &Lease,
    until: SystemTime,
    now: SystemTime,
) -> Result<Lease> {
    let doing = "renewing a lease";
    let mut tx = store.begin(doing).await?;
    let done = sqlx::query(
        "UPDATE recipients SET lease_until_ms = $1, updated_ms = $2
         WHERE message_id = $3 AND lease_generation = $4 AND state = 'delivering'",
    )
    .bind(millis(until)?)
    .bind(millis(now)?)
    .bind(lease.message.as_str())
    .bind(lease.generation)
    .execute(&mut *tx)
    .await
    .map_err(|e| Error::db(doing, e))?;
    if done.rows_affected() == 0 {
        return Err(Error::StaleLease {
            message: lease.message.clone(),
            generation: lease.generation,
        });
    }
    tx.commit().await.map_err(|e| Error::db(doing, e))?;
    Ok(Lease {
        until,
        ..lease.clone()
    })
}

pub(super) async fn record(
    store: &SqliteStore,
    lease: &Lease,
    outcomes: Vec<(RecipientId, Outcome)>,
    now: SystemTime,
) -> Result<()> {
    let doing = "recording outcomes";
    let now_ms = millis(now)?;
    let stale = || Error::StaleLease {
        message: lease.message.clone(),
        generation: lease.generation,
    };
    let mut tx = store.begin(doing).await?;
    let mut entries = Vec::with_capacity(outcomes.len());
    let any_final = outcomes
        .iter()
        .any(|(_, o)| !matches!(o, Outcome::Deferred { .. }));
    for (rid, outcome) in outcomes {
        let row = sqlx::query(
            "SELECT message_id, address, state, attempts, next_attempt_ms, lease_generation
             FROM recipients WHERE id = $1",
        )
        .bind(rid.0)
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| Error::db(doing, e))?
        .ok_or_else(stale)?;
        let held = get::<String>(&row, "message_id")? == lease.message.as_str()
            && get::<Option<i64>>(&row, "lease_generation")? == Some(lease.generation);
        let from = state_of(&row)?;
        if !held || from != RecipientState::Delivering {
            return Err(stale());
        }
        let to = from.apply(outcome.transition())?;
        let attempt = outcome.attempt().cloned();
        let attempts = attempts_of(&row)? + u32::from(attempt.is_some());
        let next_ms = match &outcome {
            Outcome::Deferred { next, .. } => millis(*next)?,
            _ => get(&row, "next_attempt_ms")?,
        };
        let mut update = String::from(
            "UPDATE recipients SET state = $1, attempts = $2, next_attempt_ms = $3, updated_ms = $4,
             lease_generation = NULL, lease_worker = NULL, lease_until_ms = NULL",
        );
        if attempt.is_some() {
            update.push_str(", last_code = $6, last_enhanced = $7, last_text = $8, last_host = $9, last_tls = $10");
        }
        update.push_str(" WHERE id = $5");
        let mut query = sqlx::query(&update)
            .bind(to.as_str())
            .bind(i64::from(attempts))
            .bind(next_ms)
            .bind(now_ms)
            .bind(rid.0);
        if let Some(a) = &attempt {
            let tls = match &a.tls {
                Some(t) => Some(
                    serde_json::to_string(t)
                        .map_err(|e| Error::Misuse(format!("TLS facts do not serialize: {e}")))?,
                ),
                None => None,
            };
            query = query
                .bind(a.code.map(i64::from))
                .bind(a.enhanced.clone())
                .bind(a.text.clone())
                .bind(a.host.clone())
                .bind(tls);
        }
        query
            .execute(&mut *tx)
            .await
            .map_err(|e| Error::db(doing, e))?;
        entries.push(Entry {
            at_ms: now_ms,
            event: to.as_str().into(),
            message: lease.message.clone(),
            recipient: rid,
            rcpt: get(&row, "address")?,
            from: Some(from),
            to: Some(to),
            attempts,
            next_attempt_ms: matches!(outcome, Outcome::Deferred { .. }).then_some(next_ms),
            worker: Some(lease.worker.clone()),
            generation: Some(lease.generation),
            attempt,
        });
    }
    if any_final {
        // With the last outcome, or not at all: a notification owed is
        // never lost to a crash between the two.
        notify::mark_if_owed(&mut tx, &lease.message, now_ms).await?;
    }
    tx.commit().await.map_err(|e| Error::db(doing, e))?;
    store.write_log(&entries);
    Ok(())
}

pub(super) async fn release(
    store: &SqliteStore,
    lease: &Lease,
    not_before: Option<SystemTime>,
    now: SystemTime,
) -> Result<u64> {
    let doing = "releasing a lease";
    let now_ms = millis(now)?;
    let not_before_ms = not_before.map(millis).transpose()?;
    let mut tx = store.begin(doing).await?;
    let rows = sqlx::query(
        "SELECT id, address, state, attempts, next_attempt_ms FROM recipients
         WHERE message_id = $1 AND lease_generation = $2 AND state = 'delivering'",
    )
    .bind(lease.message.as_str())
    .bind(lease.generation)
    .fetch_all(&mut *tx)
    .await
    .map_err(|e| Error::db(doing, e))?;
    let mut entries = Vec::with_capacity(rows.len());
    for row in &rows {
        let from = state_of(row)?;
        let attempts = attempts_of(row)?;
        let to = from.apply(Transition::Release {
            attempted: attempts > 0,
        })?;
        let next_ms = not_before_ms.unwrap_or(get(row, "next_attempt_ms")?);
        let rid = RecipientId(get(row, "id")?);
        sqlx::query(
            "UPDATE recipients SET state = $1, next_attempt_ms = $2, updated_ms = $3,
             lease_generation = NULL, lease_worker = NULL, lease_until_ms = NULL WHERE id = $4",
        )
        .bind(to.as_str())
        .bind(next_ms)
        .bind(now_ms)
        .bind(rid.0)
        .execute(&mut *tx)
        .await
        .map_err(|e| Error::db(doing, e))?;
        entries.push(Entry {
            at_ms: now_ms,
            event: "released".into(),
            message: lease.message.clone(),
            recipient: rid,
            rcpt: get(row, "address")?,
            from: Some(from),
            to: Some(to),
            attempts,
            next_attempt_ms: Some(next_ms),
            worker: Some(lease.worker.clone()),
            generation: Some(lease.generation),
            attempt: None,
        });
    }
    tx.commit().await.map_err(|e| Error::db(doing, e))?;
    store.write_log(&entries);
    Ok(entries.len() as u64)
}
