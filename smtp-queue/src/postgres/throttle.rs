//! Destinations' adaptive throttles ([`crate::shaping::Throttle`]): one
//! row each, written by the runner that met the signal, read by runners
//! (a restarted one too) and by `smtp queue stats`.

use sqlx::postgres::PgRow;

use super::PgStore;
use super::rows::get;
use crate::error::Result;
use crate::shaping::Throttle;
use crate::store::{from_millis, millis};

const COLUMNS: &str =
    "destination, connections, rate_per_min, ceiling_per_min, reason, since_ms, cut_ms, until_ms";

pub(super) async fn set_throttle(store: &PgStore, t: &Throttle) -> Result<()> {
    let doing = "throttling a destination";
    sqlx::query(&format!(
        "INSERT INTO throttles ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         ON CONFLICT (destination) DO UPDATE SET connections = excluded.connections,
             rate_per_min = excluded.rate_per_min, ceiling_per_min = excluded.ceiling_per_min,
             reason = excluded.reason, since_ms = excluded.since_ms, cut_ms = excluded.cut_ms,
             until_ms = excluded.until_ms"
    ))
    .bind(&t.destination)
    .bind(i64::from(t.connections))
    .bind(t.rate_per_min.map(i64::from))
    .bind(t.ceiling_per_min.map(i64::from))
    .bind(&t.reason)
    .bind(millis(t.since)?)
    .bind(millis(t.cut)?)
    .bind(millis(t.until)?)
    .execute(&store.pool)
    .await
    .map_err(store.db(doing))?;
    Ok(())
}

pub(super) async fn clear_throttle(store: &PgStore, destination: &str) -> Result<()> {
    sqlx::query("DELETE FROM throttles WHERE destination = $1")
        .bind(destination)
        .execute(&store.pool)
        .await
        .map_err(store.db("lifting a destination's throttle"))?;
    Ok(())
}

pub(super) async fn throttles(store: &PgStore, only: Option<&[String]>) -> Result<Vec<Throttle>> {
    let doing = "reading destinations' throttles";
    let rows = match only {
        Some([]) => return Ok(Vec::new()),
        Some(destinations) => {
            sqlx::query(&format!(
                "SELECT {COLUMNS} FROM throttles
                 WHERE destination = ANY($1) ORDER BY destination"
            ))
            .bind(destinations)
            .fetch_all(&store.pool)
            .await
        }
        None => {
            sqlx::query(&format!(
                "SELECT {COLUMNS} FROM throttles ORDER BY destination"
            ))
            .fetch_all(&store.pool)
            .await
        }
    }
    .map_err(store.db(doing))?;
    rows.iter().map(throttle_of).collect()
}

fn throttle_of(row: &PgRow) -> Result<Throttle> {
    let count = |v: i64| u32::try_from(v.max(1)).unwrap_or(u32::MAX);
    Ok(Throttle {
        destination: get(row, "destination")?,
        connections: count(get(row, "connections")?),
        rate_per_min: get::<Option<i64>>(row, "rate_per_min")?.map(count),
        ceiling_per_min: get::<Option<i64>>(row, "ceiling_per_min")?.map(count),
        reason: get(row, "reason")?,
        since: from_millis(get(row, "since_ms")?),
        cut: from_millis(get(row, "cut_ms")?),
        until: from_millis(get(row, "until_ms")?),
    })
}
