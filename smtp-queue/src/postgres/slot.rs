//! Destinations' connection slots ([`crate::store::SlotLease`]): one row
//! per session open (or about to open) to a destination, under a lease,
//! so that a destination's connection limit holds for the whole fleet.
//!
//! A take is one transaction under an advisory lock on its destination
//! (takes of one destination, from any worker on any host, take turns;
//! others do not wait): remove the slots expired at `now` (of every
//! destination: a dead worker's), count the destination's (a statement
//! run after the lock is granted, so it sees every take committed before
//! it), add one if fewer than the limit, commit. Generations come from a
//! `BIGSERIAL`: never given twice. Renewals and releases are one
//! statement on the slot's row, conditioned on its generation.

use std::time::SystemTime;

use sqlx::postgres::PgRow;

use super::PgStore;
use super::rows::get;
use crate::error::Result;
use crate::store::{SlotLease, from_millis, millis};

const COLUMNS: &str = "generation, destination, worker, until_ms";

pub(super) async fn take_slot(
    store: &PgStore,
    destination: &str,
    limit: u32,
    worker: &str,
    until: SystemTime,
    now: SystemTime,
) -> Result<Option<SlotLease>> {
    let doing = "taking a destination's connection slot";
    let now_ms = millis(now)?;
    let until_ms = millis(until)?;
    let mut tx = store.begin(doing).await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(format!("smtp-queue slot {destination}"))
        .execute(&mut *tx)
        .await
        .map_err(store.db(doing))?;
    sqlx::query("DELETE FROM slots WHERE until_ms <= $1")
        .bind(now_ms)
        .execute(&mut *tx)
        .await
        .map_err(store.db(doing))?;
    let held: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM slots WHERE destination = $1 AND until_ms > $2")
            .bind(destination)
            .bind(now_ms)
            .fetch_one(&mut *tx)
            .await
            .map_err(store.db(doing))?;
    let slot = if held < i64::from(limit) {
        let generation: i64 = sqlx::query_scalar(
            "INSERT INTO slots (destination, worker, until_ms, taken_ms) VALUES ($1, $2, $3, $4)
             RETURNING generation",
        )
        .bind(destination)
        .bind(worker)
        .bind(until_ms)
        .bind(now_ms)
        .fetch_one(&mut *tx)
        .await
        .map_err(store.db(doing))?;
        Some(SlotLease {
            destination: destination.to_owned(),
            generation,
            worker: worker.to_owned(),
            until: from_millis(until_ms),
        })
    } else {
        None
    };
    // Committed either way: the expired slots stay removed.
    tx.commit().await.map_err(store.db(doing))?;
    Ok(slot)
}

pub(super) async fn renew_slot(
    store: &PgStore,
    slot: &SlotLease,
    until: SystemTime,
) -> Result<Option<SlotLease>> {
    let until_ms = millis(until)?;
    let done = sqlx::query(
        "UPDATE slots SET until_ms = $1 WHERE generation = $2 AND destination = $3 AND worker = $4",
    )
    .bind(until_ms)
    .bind(slot.generation)
    .bind(&slot.destination)
    .bind(&slot.worker)
    .execute(&store.pool)
    .await
    .map_err(store.db("renewing a destination's connection slot"))?;
    Ok((done.rows_affected() == 1).then(|| SlotLease {
        until: from_millis(until_ms),
        ..slot.clone()
    }))
}

pub(super) async fn release_slot(store: &PgStore, slot: &SlotLease) -> Result<bool> {
    let done =
        sqlx::query("DELETE FROM slots WHERE generation = $1 AND destination = $2 AND worker = $3")
            .bind(slot.generation)
            .bind(&slot.destination)
            .bind(&slot.worker)
            .execute(&store.pool)
            .await
            .map_err(store.db("releasing a destination's connection slot"))?;
    Ok(done.rows_affected() == 1)
}

pub(super) async fn slots(
    store: &PgStore,
    destination: Option<&str>,
    now: SystemTime,
) -> Result<Vec<SlotLease>> {
    let now_ms = millis(now)?;
    let rows =
        match destination {
            Some(d) => {
                sqlx::query(&format!(
                    "SELECT {COLUMNS} FROM slots WHERE destination = $1 AND until_ms > $2
                 ORDER BY destination, generation"
                ))
                .bind(d)
                .bind(now_ms)
                .fetch_all(&store.pool)
                .await
            }
            None => sqlx::query(&format!(
                "SELECT {COLUMNS} FROM slots WHERE until_ms > $1 ORDER BY destination, generation"
            ))
            .bind(now_ms)
            .fetch_all(&store.pool)
            .await,
        }
        .map_err(store.db("reading destinations' connection slots"))?;
    rows.iter().map(slot_of).collect()
}

fn slot_of(row: &PgRow) -> Result<SlotLease> {
    Ok(SlotLease {
        generation: get(row, "generation")?,
        destination: get(row, "destination")?,
        worker: get(row, "worker")?,
        until: from_millis(get(row, "until_ms")?),
    })
}
