//! MTA-STS policies cached per domain (RFC 8461 §5.1) and TLS-RPT
//! session results counted per day (RFC 8460): `mta_sts_policies` and
//! `tls_results`.

use std::time::{Duration, SystemTime};

use smtp_core::delivery::mta_sts::{self, InForce};
use smtp_core::delivery::tls_rpt::ResultType;

use super::PgStore;
use super::rows::get;
use crate::error::Result;
use crate::rows::{day_of, ip_text};
use crate::tls_report::TlsResult;

pub(super) async fn sts_policy(store: &PgStore, domain: &str) -> Result<Option<InForce>> {
    let row = sqlx::query(
        "SELECT domain, id, policy, fetched_s, expires_s FROM mta_sts_policies WHERE domain = $1",
    )
    .bind(domain)
    .fetch_optional(&store.pool)
    .await
    .map_err(store.db("reading an MTA-STS policy"))?;
    let Some(row) = row else { return Ok(None) };
    let text: String = get(&row, "policy")?;
    // Written by put_sts_policy from a valid policy; one that no longer
    // parses (a newer build's) is as good as none.
    let Ok(policy) = mta_sts::policy::parse(text.as_bytes()) else {
        return Ok(None);
    };
    Ok(Some(InForce {
        domain: get(&row, "domain")?,
        id: get(&row, "id")?,
        policy,
        fetched_at: u64::try_from(get::<i64>(&row, "fetched_s")?).unwrap_or(0),
        expires_at: u64::try_from(get::<i64>(&row, "expires_s")?).unwrap_or(0),
        from_cache: true,
    }))
}

pub(super) async fn put_sts_policy(store: &PgStore, p: &InForce) -> Result<()> {
    let secs = |s: u64| i64::try_from(s).unwrap_or(i64::MAX);
    sqlx::query(
        "INSERT INTO mta_sts_policies (domain, id, policy, fetched_s, expires_s)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (domain) DO UPDATE SET id = excluded.id, policy = excluded.policy,
             fetched_s = excluded.fetched_s, expires_s = excluded.expires_s",
    )
    .bind(&p.domain)
    .bind(&p.id)
    .bind(p.policy.lines().join("\r\n"))
    .bind(secs(p.fetched_at))
    .bind(secs(p.expires_at))
    .execute(&store.pool)
    .await
    .map_err(store.db("caching an MTA-STS policy"))?;
    Ok(())
}

pub(super) async fn add_tls_results(
    store: &PgStore,
    results: &[TlsResult],
    now: SystemTime,
) -> Result<()> {
    let doing = "counting TLS results";
    let day = day_of(now);
    let mut tx = store.pool.begin().await.map_err(store.db(doing))?;
    for r in results {
        sqlx::query(
            "INSERT INTO tls_results (day, policy_domain, policy_type, policy_string, mx_host,
                 receiving_mx, sending_ip, receiving_ip, result, count)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
             ON CONFLICT (day, policy_domain, policy_type, policy_string, receiving_mx,
                 sending_ip, receiving_ip, result)
             DO UPDATE SET count = tls_results.count + excluded.count",
        )
        .bind(day)
        .bind(&r.policy_domain)
        .bind(&r.policy_type)
        .bind(serde_json::to_string(&r.policy_string).unwrap_or_default())
        .bind(serde_json::to_string(&r.mx_host).unwrap_or_default())
        .bind(&r.receiving_mx)
        .bind(ip_text(r.sending_ip))
        .bind(ip_text(r.receiving_ip))
        .bind(r.result.as_str())
        .bind(i64::try_from(r.count).unwrap_or(i64::MAX))
        .execute(&mut *tx)
        .await
        .map_err(store.db(doing))?;
    }
    tx.commit().await.map_err(store.db(doing))
}

pub(super) async fn tls_results(
    store: &PgStore,
    since: SystemTime,
    until: SystemTime,
    domain: Option<&str>,
) -> Result<Vec<(SystemTime, TlsResult)>> {
    let rows = sqlx::query(
        "SELECT day, policy_domain, policy_type, policy_string, mx_host, receiving_mx,
                sending_ip, receiving_ip, result, count
         FROM tls_results WHERE day >= $1 AND day < $2 AND ($3::text IS NULL OR policy_domain = $3)
         ORDER BY day, policy_domain, policy_type, receiving_mx, result, sending_ip,
                  receiving_ip",
    )
    .bind(day_of(since))
    .bind(day_of(until).max(day_of(since) + 1))
    .bind(domain)
    .fetch_all(&store.pool)
    .await
    .map_err(store.db("reading TLS results"))?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let day: i64 = get(&row, "day")?;
        let list = |text: String| serde_json::from_str::<Vec<String>>(&text).unwrap_or_default();
        let result: String = get(&row, "result")?;
        let Some(result) = ResultType::parse(&result) else {
            continue;
        };
        out.push((
            SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(day).unwrap_or(0) * 86_400),
            TlsResult {
                policy_domain: get(&row, "policy_domain")?,
                policy_type: get(&row, "policy_type")?,
                policy_string: list(get(&row, "policy_string")?),
                mx_host: list(get(&row, "mx_host")?),
                receiving_mx: get(&row, "receiving_mx")?,
                sending_ip: get::<String>(&row, "sending_ip")?.parse().ok(),
                receiving_ip: get::<String>(&row, "receiving_ip")?.parse().ok(),
                result,
                count: u64::try_from(get::<i64>(&row, "count")?).unwrap_or(0),
            },
        ));
    }
    Ok(out)
}
