//! `smtp queue tls-report`: the TLS-RPT (RFC 8460) aggregate reports of
//! the sessions direct delivery ran under MTA-STS policies, from the
//! counts the queue's store keeps per day.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use smtp_queue::Store;
use smtp_queue::tls_report::{Reporter, TlsResult, report};

use super::queue_error;
use crate::cli::TlsReportArgs;
use crate::fail::{EX_OK, Failure};

const DAY: u64 = 86_400;

/// `YYYY-MM-DD` as the start of that UTC day.
fn parse_day(s: &str) -> Result<SystemTime, Failure> {
    let bad = || Failure::usage(format!("{s:?}: give a day as YYYY-MM-DD"));
    let mut parts = s.trim().splitn(3, '-');
    let mut next = |len: usize| -> Result<i64, Failure> {
        let p = parts.next().ok_or_else(bad)?;
        if p.len() != len || !p.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        p.parse().map_err(|_| bad())
    };
    let (y, m, d) = (next(4)?, next(2)?, next(2)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || y < 1970 {
        return Err(bad());
    }
    // Days from the civil date (H. Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let days = u64::try_from(days).map_err(|_| bad())?;
    Ok(SystemTime::UNIX_EPOCH + Duration::from_secs(days * DAY))
}

/// The start of the UTC day `t` falls in.
fn day_of(t: SystemTime) -> SystemTime {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs - secs % DAY)
}

/// `[since, until)`: `--day`, `--since`/`--until` (both included), or
/// yesterday (UTC).
fn range(args: &TlsReportArgs) -> Result<(SystemTime, SystemTime), Failure> {
    let one_day = Duration::from_secs(DAY);
    Ok(match (&args.day, &args.since, &args.until) {
        (Some(day), _, _) => {
            let start = parse_day(day)?;
            (start, start + one_day)
        }
        (None, Some(since), Some(until)) => {
            let (start, last) = (parse_day(since)?, parse_day(until)?);
            if last < start {
                return Err(Failure::usage("--until is before --since"));
            }
            (start, last + one_day)
        }
        _ => {
            let today = day_of(SystemTime::now());
            (today - one_day, today)
        }
    })
}

/// Prints a JSON array of reports: one per policy domain and day.
pub(super) async fn run(store: &dyn Store, args: &TlsReportArgs) -> Result<u8, Failure> {
    let (since, until) = range(args)?;
    let domain = args.domain.as_deref().map(str::to_ascii_lowercase);
    let rows = store
        .tls_results(since, until, domain.as_deref())
        .await
        .map_err(queue_error)?;
    let host = crate::send::hostname();
    let reporter = Reporter {
        organization: args.org.clone().unwrap_or_else(|| host.clone()),
        contact: args
            .contact
            .clone()
            .unwrap_or_else(|| format!("postmaster@{host}")),
    };
    let mut days: BTreeMap<SystemTime, Vec<TlsResult>> = BTreeMap::new();
    for (day, r) in rows {
        days.entry(day).or_default().push(r);
    }
    let reports: Vec<serde_json::Value> = days
        .into_iter()
        .flat_map(|(day, rows)| report(&reporter, day, day + Duration::from_secs(DAY), &rows))
        .collect();
    if reports.is_empty() {
        tell!("smtp: no sessions under an MTA-STS policy in that time");
    }
    if args.rua {
        tell_rua(args, &reports).await?;
    }
    say!(
        "{}",
        serde_json::to_string_pretty(&reports).unwrap_or_default()
    );
    Ok(EX_OK)
}

/// Where each report's domain asks for it (RFC 8460 section 3): its
/// `_smtp._tls` record's `rua`, looked up now.
async fn tell_rua(args: &TlsReportArgs, reports: &[serde_json::Value]) -> Result<(), Failure> {
    use smtp_dns::{HickoryResolver, RecordResolver};
    let resolver = match &args.dns_server {
        Some(ns) => HickoryResolver::with_nameserver(
            HickoryResolver::parse_nameserver(ns).map_err(|e| Failure::usage(e.to_string()))?,
            Duration::from_secs(5),
        ),
        None => HickoryResolver::system(),
    }
    .map_err(|e| Failure::config(format!("{e} (use --dns-server IP[:PORT])")))?;
    let mut domains: Vec<&str> = reports
        .iter()
        .flat_map(|r| r["policies"].as_array().into_iter().flatten())
        .filter_map(|p| p["policy"]["policy-domain"].as_str())
        .collect();
    domains.sort_unstable();
    domains.dedup();
    for domain in domains {
        let record = resolver
            .txt(&format!("_smtp._tls.{domain}"))
            .await
            .map(|txts| smtp_core::delivery::tls_rpt::select(&txts));
        match record {
            Ok(Some(r)) => tell!("smtp: {domain}: reports go to {}", r.rua.join(", ")),
            Ok(None) => tell!(
                "smtp: {domain}: no TLS-RPT record (_smtp._tls.{domain}): nobody to send its report to"
            ),
            Err(e) => tell!("smtp: {domain}: TLS-RPT record not found now: {e}"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_are_utc_midnights() {
        let t = parse_day("2026-01-31").unwrap();
        assert_eq!(smtp_queue::time::rfc3339(t), "2026-01-31T00:00:00Z");
        let t = parse_day("2024-03-01").unwrap();
        assert_eq!(smtp_queue::time::rfc3339(t), "2024-03-01T00:00:00Z");
        assert!(parse_day("2026-13-01").is_err());
        assert!(parse_day("26-01-01").is_err());
        assert_eq!(day_of(t + Duration::from_secs(3600)), t);
    }
}
