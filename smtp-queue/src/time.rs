//! Times as the queue writes them: RFC 3339 for reports and logs, RFC
//! 5322 for message headers. UTC, to the second, without a date crate.

use std::time::SystemTime;

/// A moment in UTC, broken down.
struct Civil {
    year: i64,
    month: i64,
    day: i64,
    /// Seconds into the day.
    second: u64,
    /// Days since 1970-01-01 (a Thursday).
    days: i64,
}

fn civil(t: SystemTime) -> Civil {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, second) = ((secs / 86_400) as i64, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    Civil {
        year: yoe + era * 400 + i64::from(month <= 2),
        month,
        day,
        second,
        days,
    }
}

/// RFC 3339 in UTC, to the second: `2026-01-31T12:00:00Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let c = civil(t);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        c.year,
        c.month,
        c.day,
        c.second / 3600,
        c.second / 60 % 60,
        c.second % 60
    )
}

/// RFC 5322 date-time in UTC: `Tue, 14 Nov 2023 22:13:20 +0000`.
pub fn rfc5322(t: SystemTime) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let c = civil(t);
    let weekday = DAYS[c.days.rem_euclid(7) as usize];
    let month = MONTHS[(c.month - 1).clamp(0, 11) as usize];
    format!(
        "{weekday}, {} {month} {:04} {:02}:{:02}:{:02} +0000",
        c.day,
        c.year,
        c.second / 3600,
        c.second / 60 % 60,
        c.second % 60
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn at(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(s)
    }

    #[test]
    fn rfc3339_is_utc_to_the_second() {
        assert_eq!(rfc3339(at(0)), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(at(1_700_000_000)), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(at(951_782_400)), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(at(4_107_542_399)), "2100-02-28T23:59:59Z");
    }

    #[test]
    fn rfc5322_names_the_weekday_and_month() {
        assert_eq!(rfc5322(at(0)), "Thu, 1 Jan 1970 00:00:00 +0000");
        assert_eq!(
            rfc5322(at(1_700_000_000)),
            "Tue, 14 Nov 2023 22:13:20 +0000"
        );
        assert_eq!(rfc5322(at(951_782_400)), "Tue, 29 Feb 2000 00:00:00 +0000");
        assert_eq!(
            rfc5322(at(4_107_542_399)),
            "Sun, 28 Feb 2100 23:59:59 +0000"
        );
    }
}
