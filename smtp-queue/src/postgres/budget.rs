//! Sending budgets ([`crate::rate`]) kept in the database, so that a limit
//! holds across the whole fleet: one row per (key, limit) holding the
//! pace's TAT, and a log of the key's takes (`budget_takes`) that the caps
//! count.
//!
//! A take is one transaction under an advisory lock on its key (takes of
//! one key, from any worker on any host, take turns; other keys do not
//! wait): read the key's rows and the takes within the longest period of
//! its limits, decide with [`rate::take`], write the pace's moved TAT, log
//! the take, prune the log of takes older than a day (or the longest
//! period, if longer), commit.

use std::time::{Duration, SystemTime};

use sqlx::Row;
use sqlx::postgres::PgRow;

use super::PgStore;
use super::rows::get;
use crate::error::{Error, Result};
use crate::rate::{self, Budget, Decision, Kept, Limit, Rate, Take};
use crate::store::millis;

const COLUMNS: &str = "key, limit_key, tat_ms, rate_count, rate_per_ms, burst, remembered";

/// How long the log keeps takes at least: a day, the longest period a
/// rate is written with.
const LOG_KEPT_MS: i64 = 86_400_000;

pub(super) async fn take_budget(
    store: &PgStore,
    key: &str,
    limits: &[Limit],
    cost: u32,
    now: SystemTime,
) -> Result<Decision> {
    if limits.is_empty() {
        return Ok(Decision::Allowed);
    }
    let doing = "taking from a sending budget";
    let now_ms = millis(now)?;
    let longest = limits.iter().map(per_ms).max().unwrap_or(0);
    let mut tx = store.begin(doing).await?;
    lock_key(store, &mut tx, key).await?;
    let rows = sqlx::query(&format!("SELECT {COLUMNS} FROM budgets WHERE key = $1"))
        .bind(key)
        .fetch_all(&mut *tx)
        .await
        .map_err(store.db(doing))?;
    let takes = sqlx::query(
        "SELECT at_ms, units FROM budget_takes WHERE key = $1 AND at_ms > $2 ORDER BY at_ms",
    )
    .bind(key)
    .bind(now_ms.saturating_sub(longest))
    .fetch_all(&mut *tx)
    .await
    .map_err(store.db(doing))?;
    let kept = budget_of(key, &rows, &takes)?;
    let mut tats = kept.tats(limits, now_ms);
    let decision = rate::take(limits, &mut tats, &kept.takes, cost, now_ms);
    if decision == Decision::Allowed {
        for (limit, tat) in limits.iter().zip(&tats) {
            upsert(limit, key, *tat, now_ms)
                .execute(&mut *tx)
                .await
                .map_err(store.db(doing))?;
        }
        sqlx::query("INSERT INTO budget_takes (key, at_ms, units) VALUES ($1, $2, $3)")
            .bind(key)
            .bind(now_ms)
            .bind(i64::from(cost))
            .execute(&mut *tx)
            .await
            .map_err(store.db(doing))?;
        sqlx::query("DELETE FROM budget_takes WHERE key = $1 AND at_ms <= $2")
            .bind(key)
            .bind(now_ms.saturating_sub(longest.max(LOG_KEPT_MS)))
            .execute(&mut *tx)
            .await
            .map_err(store.db(doing))?;
        tx.commit().await.map_err(store.db(doing))?;
    }
    // Waiting: nothing written; the transaction rolls back on drop.
    Ok(decision)
}

/// The statement that sets `limit`'s TAT under `key` (a cap's, `None`,
/// leaves the TAT it had when it paced), creating its row (not
/// remembered) if need be.
fn upsert(
    limit: &Limit,
    key: &str,
    tat: Option<i64>,
    now_ms: i64,
) -> sqlx::query::Query<'static, sqlx::Postgres, sqlx::postgres::PgArguments> {
    sqlx::query(
        "INSERT INTO budgets (key, limit_key, tat_ms, rate_count, rate_per_ms, burst, remembered, updated_ms)
         VALUES ($1, $2, $3, $4, $5, $6, FALSE, $7)
         ON CONFLICT (key, limit_key) DO UPDATE SET tat_ms = COALESCE(excluded.tat_ms, budgets.tat_ms), updated_ms = excluded.updated_ms",
    )
    .bind(key.to_owned())
    .bind(limit.key())
    .bind(tat)
    .bind(i64::from(limit.rate.count))
    .bind(per_ms(limit))
    .bind(i64::from(limit.burst))
    .bind(now_ms)
}

pub(super) async fn budget(store: &PgStore, key: &str) -> Result<Option<Budget>> {
    let rows = sqlx::query(&format!("SELECT {COLUMNS} FROM budgets WHERE key = $1"))
        .bind(key)
        .fetch_all(&store.pool)
        .await
        .map_err(store.db("reading a sending budget"))?;
    let takes = logged(store, key, &rows).await?;
    if rows.is_empty() && takes.is_empty() {
        return Ok(None);
    }
    budget_of(key, &rows, &takes).map(Some)
}

/// The takes of `key` within the longest period of its limits (`rows`)
/// before its last take.
async fn logged(store: &PgStore, key: &str, rows: &[PgRow]) -> Result<Vec<PgRow>> {
    let mut longest = 0i64;
    for row in rows {
        longest = longest.max(get::<i64>(row, "rate_per_ms")?);
    }
    sqlx::query(
        "SELECT at_ms, units FROM budget_takes WHERE key = $1
         AND at_ms > (SELECT MAX(at_ms) FROM budget_takes WHERE key = $1) - $2 ORDER BY at_ms",
    )
    .bind(key)
    .bind(longest)
    .fetch_all(&store.pool)
    .await
    .map_err(store.db("reading a sending budget's takes"))
}

pub(super) async fn budgets(store: &PgStore) -> Result<Vec<Budget>> {
    let rows = sqlx::query(&format!("SELECT {COLUMNS} FROM budgets ORDER BY key"))
        .fetch_all(&store.pool)
        .await
        .map_err(store.db("reading the sending budgets"))?;
    let mut out = Vec::new();
    for group in rows.chunk_by(|a, b| a.try_get::<String, _>("key").ok() == b.try_get("key").ok()) {
        let key: String = get(&group[0], "key")?;
        let takes = logged(store, &key, group).await?;
        out.push(budget_of(&key, group, &takes)?);
    }
    Ok(out)
}

pub(super) async fn remember_limits(
    store: &PgStore,
    key: &str,
    limits: &[Limit],
    now: SystemTime,
) -> Result<()> {
    let doing = "remembering a budget's limits";
    let now_ms = millis(now)?;
    let mut tx = store.begin(doing).await?;
    lock_key(store, &mut tx, key).await?;
    sqlx::query("UPDATE budgets SET remembered = FALSE, updated_ms = $2 WHERE key = $1")
        .bind(key)
        .bind(now_ms)
        .execute(&mut *tx)
        .await
        .map_err(store.db(doing))?;
    // Limits no longer set whose budget is whole again tell nothing.
    sqlx::query("DELETE FROM budgets WHERE key = $1 AND (tat_ms IS NULL OR tat_ms <= $2)")
        .bind(key)
        .bind(now_ms)
        .execute(&mut *tx)
        .await
        .map_err(store.db(doing))?;
    for limit in limits {
        // A limit kept already keeps its TAT.
        sqlx::query(
            "INSERT INTO budgets (key, limit_key, tat_ms, rate_count, rate_per_ms, burst, remembered, updated_ms)
             VALUES ($1, $2, NULL, $3, $4, $5, TRUE, $6)
             ON CONFLICT (key, limit_key) DO UPDATE SET remembered = TRUE, updated_ms = excluded.updated_ms",
        )
        .bind(key)
        .bind(limit.key())
        .bind(i64::from(limit.rate.count))
        .bind(per_ms(limit))
        .bind(i64::from(limit.burst))
        .bind(now_ms)
        .execute(&mut *tx)
        .await
        .map_err(store.db(doing))?;
    }
    tx.commit().await.map_err(store.db(doing))
}

/// Takes the transaction's advisory lock on budget `key`.
async fn lock_key(
    store: &PgStore,
    tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    key: &str,
) -> Result<()> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(format!("smtp-queue budget {key}"))
        .execute(&mut **tx)
        .await
        .map_err(store.db("locking a sending budget"))?;
    Ok(())
}

fn per_ms(limit: &Limit) -> i64 {
    i64::try_from(limit.rate.per.as_millis()).unwrap_or(i64::MAX)
}

/// The rows of one key, and its takes (by time), as a [`Budget`].
fn budget_of(key: &str, rows: &[PgRow], takes: &[PgRow]) -> Result<Budget> {
    let corrupt = |what: &str| Error::corrupt(None, format!("budget {key:?}: {what}"));
    let mut limits = Vec::with_capacity(rows.len());
    for row in rows {
        let count: i64 = get(row, "rate_count")?;
        let per_ms: i64 = get(row, "rate_per_ms")?;
        let burst: i64 = get(row, "burst")?;
        let rate = u32::try_from(count)
            .ok()
            .zip(u64::try_from(per_ms).ok())
            .and_then(|(c, ms)| Rate::new(c, Duration::from_millis(ms)))
            .ok_or_else(|| corrupt("a rate of zero"))?;
        let burst = u32::try_from(burst).map_err(|_| corrupt("a burst out of range"))?;
        limits.push(Kept {
            limit: Limit::new(rate).with_burst(burst),
            tat_ms: get(row, "tat_ms")?,
            remembered: get::<bool>(row, "remembered")?,
        });
    }
    let mut logged = Vec::with_capacity(takes.len());
    for row in takes {
        logged.push(Take {
            at_ms: get(row, "at_ms")?,
            units: u32::try_from(get::<i64>(row, "units")?)
                .map_err(|_| corrupt("a take out of range"))?,
        });
    }
    Ok(Budget {
        key: key.to_owned(),
        limits,
        takes: logged,
    })
}
