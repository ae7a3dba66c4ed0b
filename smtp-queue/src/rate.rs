//! Sending rates: "N per period" budgets, as rented relays cap accounts
//! (`30/minute`, `500/day`) and as destinations are shaped.
//!
//! A budget is kept as GCRA (the generic cell rate algorithm): one number
//! per limit, its *theoretical arrival time* (TAT), the time the budget is
//! spent up to. Taking `cost` units moves it `cost × T` on, where `T` is
//! the period divided by `N`; it is allowed while the TAT stays within
//! `burst × T` of now. So with a burst of 1 (the default) sends are spread
//! evenly, one every `T`, and **no window of one period ever holds more
//! than `N`**; with a burst of `B`, `B` may go at once and a window holds at
//! most `N + B − 1`. A single take larger than the burst (a message with
//! more recipients than the burst) goes alone once the budget is whole.
//!
//! The functions here are pure and work in epoch milliseconds, the unit
//! the stores keep; a store that shares a budget between runners keeps the
//! TAT in a row and applies [`take`] under its write lock.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `count` per `per`: a rate such as `30/minute`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Rate {
    /// How many.
    pub count: u32,
    /// In how long.
    pub per: Duration,
}

impl Rate {
    /// `count` per `per`; `None` for a zero count or period.
    pub fn new(count: u32, per: Duration) -> Option<Self> {
        (count > 0 && !per.is_zero()).then_some(Self { count, per })
    }

    /// The time one unit of the budget stands for: `per / count`, in
    /// milliseconds, rounded up (never faster than the rate), at least one.
    pub fn interval_ms(&self) -> i64 {
        let ms = self.per.as_millis().div_ceil(u128::from(self.count.max(1)));
        i64::try_from(ms).unwrap_or(i64::MAX).max(1)
    }
}

/// The periods a rate can be written with.
const PERIODS: &[(&[&str], u64)] = &[
    (&["second", "sec", "s"], 1),
    (&["minute", "min", "m"], 60),
    (&["hour", "h"], 3600),
    (&["day", "d"], 86_400),
];

impl FromStr for Rate {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let usage = || {
            format!(
                "{text:?} is not a rate: write N/second, N/minute, N/hour or N/day \
                 (e.g. 30/minute)"
            )
        };
        let (count, period) = text.trim().split_once('/').ok_or_else(usage)?;
        let count: u32 = count.trim().parse().map_err(|_| usage())?;
        let period = period.trim().to_ascii_lowercase();
        let period = period
            .strip_suffix('s')
            .filter(|p| p.len() > 1)
            .unwrap_or(&period);
        let secs = PERIODS
            .iter()
            .find(|(names, _)| names.contains(&period))
            .map(|(_, secs)| *secs)
            .ok_or_else(usage)?;
        Self::new(count, Duration::from_secs(secs))
            .ok_or_else(|| format!("{text:?}: a rate of zero sends nothing; leave the rate out"))
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.per.as_secs();
        match PERIODS
            .iter()
            .find(|(_, s)| *s == secs && self.per.subsec_nanos() == 0)
        {
            Some((names, _)) => write!(f, "{}/{}", self.count, names[0]),
            None => write!(f, "{}/{}ms", self.count, self.per.as_millis()),
        }
    }
}

impl TryFrom<String> for Rate {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        text.parse()
    }
}

impl From<Rate> for String {
    fn from(rate: Rate) -> Self {
        rate.to_string()
    }
}

/// A rate and how many units may go at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Limit {
    /// The rate.
    pub rate: Rate,
    /// Units that may go at once, at least 1.
    pub burst: u32,
}

impl Limit {
    /// `rate` with a burst of 1: evenly spread.
    pub fn new(rate: Rate) -> Self {
        Self { rate, burst: 1 }
    }

    /// The same with `burst` units at once (at least 1).
    pub fn with_burst(mut self, burst: u32) -> Self {
        self.burst = burst.max(1);
        self
    }

    /// A name for the limit, unique per rate and burst, to key its budget
    /// beside others of the same destination.
    pub fn key(&self) -> String {
        format!(
            "{}/{}ms+{}",
            self.rate.count,
            self.rate.per.as_millis(),
            self.burst
        )
    }
}

/// What [`take`] decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Allowed: every budget was taken from.
    Allowed,
    /// Not before this time (epoch milliseconds); nothing was taken.
    WaitUntil(i64),
}

/// Takes `cost` units at `now_ms` from every limit, or from none:
/// `tats[i]` is `limits[i]`'s TAT (`None` for a budget never used) and is
/// moved on when allowed.
pub fn take(limits: &[Limit], tats: &mut [Option<i64>], cost: u32, now_ms: i64) -> Decision {
    let mut wait = None::<i64>;
    let mut next = Vec::with_capacity(limits.len());
    for (limit, tat) in limits.iter().zip(tats.iter()) {
        let t = limit.rate.interval_ms();
        let start = tat.unwrap_or(now_ms).max(now_ms);
        let new_tat = start.saturating_add(t.saturating_mul(i64::from(cost)));
        let allowed_from = if cost > limit.burst.max(1) {
            // Larger than the burst: alone, once the budget is whole.
            start
        } else {
            new_tat.saturating_sub(t.saturating_mul(i64::from(limit.burst.max(1))))
        };
        if allowed_from > now_ms {
            wait = Some(wait.map_or(allowed_from, |w| w.max(allowed_from)));
        }
        next.push(new_tat);
    }
    if let Some(until) = wait {
        return Decision::WaitUntil(until);
    }
    for (tat, new) in tats.iter_mut().zip(next) {
        *tat = Some(new);
    }
    Decision::Allowed
}

/// When `count` more units, taken one at a time from `now_ms` on, will all
/// have been allowed: what a queue waiting for its budget can expect.
pub fn finish_ms(limits: &[Limit], tats: &[Option<i64>], count: u64, now_ms: i64) -> i64 {
    limits
        .iter()
        .zip(tats)
        .map(|(limit, tat)| {
            let t = limit.rate.interval_ms();
            let start = tat.unwrap_or(now_ms).max(now_ms);
            // The last of `count` goes when the TAT, moved on by all of
            // them, is within the burst.
            let last = start
                .saturating_add(t.saturating_mul(i64::try_from(count).unwrap_or(i64::MAX)))
                .saturating_sub(t.saturating_mul(i64::from(limit.burst.max(1))));
            last.max(now_ms)
        })
        .max()
        .unwrap_or(now_ms)
}

/// The earliest time (epoch milliseconds, not before `now_ms`) a take of
/// `cost` units would be allowed.
pub fn next_ms(limits: &[Limit], tats: &[Option<i64>], cost: u32, now_ms: i64) -> i64 {
    let mut tats = tats.to_vec();
    match take(limits, &mut tats, cost, now_ms) {
        Decision::Allowed => now_ms,
        Decision::WaitUntil(t) => t,
    }
}

/// A budget as a store keeps it: under one key (a relay account), every
/// limit it was taken under, each with its TAT, and which of them are the
/// limits last set for the key (remembered, for a runner given none).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Budget {
    /// The key: `relay:HOST:PORT` or `relay:HOST:PORT:USER`.
    pub key: String,
    /// The limits kept, in no particular order.
    pub limits: Vec<Kept>,
}

/// One limit of a [`Budget`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Kept {
    /// The limit.
    pub limit: Limit,
    /// Its TAT (epoch milliseconds); `None` when never taken from.
    pub tat_ms: Option<i64>,
    /// One of the limits last set for the key.
    pub remembered: bool,
}

impl Budget {
    /// The limits last set for the key (empty when none are, or they were
    /// cleared).
    pub fn remembered(&self) -> Vec<Limit> {
        let mut limits: Vec<Limit> = self
            .limits
            .iter()
            .filter(|k| k.remembered)
            .map(|k| k.limit)
            .collect();
        limits.sort_by_key(|l| (l.rate.per, l.rate.count, l.burst));
        limits
    }

    /// The TATs of `limits` at `now_ms`, in their order (`None` for one
    /// never taken from while the account's budget is whole).
    ///
    /// A limit not kept under this key starts where the account's budget
    /// stands: its debt (the units the most spent kept limit is ahead of
    /// `now_ms`, counted in that limit's intervals) is carried over in the
    /// new limit's intervals, at most its rate and burst (a full period).
    /// So writing a rate another way (`60/hour` for `1/minute`, `1440/day`)
    /// gives no fresh budget; a larger burst still lets its extra go.
    pub fn tats(&self, limits: &[Limit], now_ms: i64) -> Vec<Option<i64>> {
        let debt = self
            .limits
            .iter()
            .filter_map(|k| {
                let ahead = u64::try_from(k.tat_ms?.saturating_sub(now_ms)).ok()?;
                let interval = u64::try_from(k.limit.rate.interval_ms()).ok()?;
                (ahead > 0).then(|| i64::try_from(ahead.div_ceil(interval)).unwrap_or(i64::MAX))
            })
            .max();
        limits
            .iter()
            .map(|l| match self.limits.iter().find(|k| k.limit == *l) {
                Some(k) => k.tat_ms,
                None => debt.map(|units| {
                    let cap = i64::from(l.rate.count).saturating_add(i64::from(l.burst));
                    now_ms.saturating_add(units.min(cap).saturating_mul(l.rate.interval_ms()))
                }),
            })
            .collect()
    }

    /// When one unit may next go under `limits` (not before `now_ms`).
    pub fn next_free_ms(&self, limits: &[Limit], now_ms: i64) -> i64 {
        next_ms(limits, &self.tats(limits, now_ms), 1, now_ms)
    }
}

/// `limits` as written on a command line: `30/minute, 500/day (burst 5)`.
pub fn describe(limits: &[Limit]) -> String {
    let rates: Vec<String> = limits
        .iter()
        .map(|l| {
            if l.burst > 1 {
                format!("{} (burst {})", l.rate, l.burst)
            } else {
                l.rate.to_string()
            }
        })
        .collect();
    rates.join(", ")
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn rate(text: &str) -> Rate {
        text.parse().unwrap()
    }

    #[test]
    fn rates_are_written_as_relays_state_them() {
        assert_eq!(
            rate("30/minute"),
            Rate::new(30, Duration::from_secs(60)).unwrap()
        );
        assert_eq!(rate("500/day").per, Duration::from_secs(86_400));
        assert_eq!(rate(" 100 / Hours ").count, 100);
        assert_eq!(rate("5/s").per, Duration::from_secs(1));
        assert_eq!(rate("30/minute").to_string(), "30/minute");
        assert_eq!(rate("2/h").to_string(), "2/hour");
        for bad in ["30", "x/minute", "30/fortnight", "-1/minute", "30/"] {
            let e = bad.parse::<Rate>().unwrap_err();
            assert!(e.contains("N/minute"), "{bad}: {e}");
        }
        assert!("0/minute".parse::<Rate>().unwrap_err().contains("zero"));
    }

    #[test]
    fn a_burst_of_one_spreads_sends_evenly() {
        let limits = [Limit::new(rate("60/minute"))];
        let mut tats = [None];
        assert_eq!(take(&limits, &mut tats, 1, 0), Decision::Allowed);
        assert_eq!(take(&limits, &mut tats, 1, 0), Decision::WaitUntil(1000));
        assert_eq!(take(&limits, &mut tats, 1, 999), Decision::WaitUntil(1000));
        assert_eq!(take(&limits, &mut tats, 1, 1000), Decision::Allowed);
        assert_eq!(tats, [Some(2000)]);
    }

    #[test]
    fn a_burst_goes_at_once_then_the_rate_holds() {
        let limits = [Limit::new(rate("10/second")).with_burst(3)];
        let mut tats = [None];
        for _ in 0..3 {
            assert_eq!(take(&limits, &mut tats, 1, 0), Decision::Allowed);
        }
        assert_eq!(take(&limits, &mut tats, 1, 0), Decision::WaitUntil(100));
    }

    #[test]
    fn combined_limits_take_from_all_or_none() {
        let limits = [
            Limit::new(rate("2/second")).with_burst(2),
            Limit::new(rate("3/hour")),
        ];
        let mut tats = [None, None];
        assert_eq!(take(&limits, &mut tats, 1, 0), Decision::Allowed);
        // The hourly budget waits 20 minutes; the per-second one is untouched.
        let before = tats;
        assert_eq!(
            take(&limits, &mut tats, 1, 10),
            Decision::WaitUntil(1_200_000)
        );
        assert_eq!(tats, before);
    }

    #[test]
    fn a_take_larger_than_the_burst_goes_alone_when_the_budget_is_whole() {
        let limits = [Limit::new(rate("1/second"))];
        let mut tats = [None];
        assert_eq!(take(&limits, &mut tats, 5, 0), Decision::Allowed);
        assert_eq!(take(&limits, &mut tats, 1, 0), Decision::WaitUntil(5000));
        assert_eq!(take(&limits, &mut tats, 5, 4999), Decision::WaitUntil(5000));
    }

    #[test]
    fn the_finish_time_counts_the_budget_already_spent() {
        let limits = [Limit::new(rate("60/minute"))];
        assert_eq!(finish_ms(&limits, &[None], 1, 0), 0);
        assert_eq!(finish_ms(&limits, &[None], 61, 0), 60_000);
        assert_eq!(finish_ms(&limits, &[Some(30_000)], 1, 0), 30_000);
    }

    #[test]
    fn a_kept_budget_gives_the_tats_of_the_limits_asked_for() {
        let minute = Limit::new(rate("60/minute"));
        let day = Limit::new(rate("500/day")).with_burst(5);
        let budget = Budget {
            key: "relay:h:587".into(),
            limits: vec![
                Kept {
                    limit: day,
                    tat_ms: Some(500_000),
                    remembered: true,
                },
                Kept {
                    limit: minute,
                    tat_ms: Some(10_000),
                    remembered: false,
                },
            ],
        };
        assert_eq!(budget.remembered(), vec![day]);
        assert_eq!(
            budget.tats(&[minute, day], 0),
            vec![Some(10_000), Some(500_000)]
        );
        // A limit never kept takes over the debt, the most units a kept
        // limit is ahead: the minute's 10 s are 10 of its 1 s units (the
        // day's 500 s only 3 of its 172.8 s), 100 ms at 100/s.
        assert_eq!(
            budget.tats(&[Limit::new(rate("100/s"))], 0),
            vec![Some(100)]
        );
        // At most one period of the new limit (its rate and burst: 2 units).
        assert_eq!(
            budget.tats(&[Limit::new(rate("1/s"))], 0),
            vec![Some(2_000)]
        );
        // Once the budget is whole, a new limit starts whole.
        assert_eq!(budget.tats(&[Limit::new(rate("1/s"))], 600_000), vec![None]);
        // Burst 1: the next unit goes once the TAT (10 s) is reached.
        assert_eq!(budget.next_free_ms(&[minute], 0), 10_000);
        assert_eq!(budget.next_free_ms(&[minute], 20_000), 20_000);
        assert_eq!(describe(&[minute, day]), "60/minute, 500/day (burst 5)");
    }

    proptest! {
        /// However takes arrive, no window of one period holds more than
        /// N + burst − 1 units (single units).
        #[test]
        fn no_window_holds_more_than_the_rate_and_burst(
            count in 1u32..20, burst in 1u32..5,
            gaps in proptest::collection::vec(0i64..400, 1..200),
        ) {
            let limit = Limit::new(Rate::new(count, Duration::from_secs(1)).unwrap()).with_burst(burst);
            let mut tats = [None];
            let mut now = 0;
            let mut sent = Vec::new();
            for gap in gaps {
                now += gap;
                if take(&[limit], &mut tats, 1, now) == Decision::Allowed {
                    sent.push(now);
                }
            }
            for (i, start) in sent.iter().enumerate() {
                let within = sent[i..].iter().take_while(|t| **t < start + 1000).count();
                prop_assert!((within as u32) < count + burst, "{within} in a second");
            }
        }
    }
}
