//! Sending rates: "N per period" budgets, as rented relays cap accounts
//! (`30/minute`, `500/day`) and as destinations are shaped.
//!
//! Of a budget's limits, **the shortest paces** and **every longer one is
//! a cap** ([`pace_of`]; a single limit is the pace):
//!
//! - The pace is kept as GCRA (the generic cell rate algorithm): one
//!   number, its *theoretical arrival time* (TAT), the time the budget is
//!   spent up to. Taking `cost` units moves it `cost × T` on, where `T` is
//!   the period divided by `N`; it is allowed while the TAT stays within
//!   `burst × T` of now. So with a burst of 1 (the default) sends are
//!   spread evenly, one every `T`, and **no window of one period ever
//!   holds more than `N`**; with a burst of `B`, `B` may go at once and a
//!   window holds at most `N + B − 1`. A single take larger than the burst
//!   (a message with more recipients than the burst) goes alone once the
//!   budget is whole.
//! - A cap is exact: **no sliding window of its period ever holds more
//!   than its `N`**, counted from the log of takes ([`Take`]). It does not
//!   slow sending until it is reached; then a take waits until enough of
//!   the oldest takes have left the window. A cap has no burst (its
//!   `burst` is not used). A single take larger than a cap goes alone once
//!   the cap's window is empty.
//!
//! So `30/minute` and `500/day` send one every 2 s until 500 have gone in
//! a day, then one as each of those leaves the day's window.
//!
//! The functions here are pure and work in epoch milliseconds, the unit
//! the stores keep; a store that shares a budget between runners keeps the
//! pace's TAT in a row and the takes in a log, and applies [`take`] under
//! its write lock.

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

/// The budget key of a relay account: `relay:HOST:PORT`, with `:USER`
/// when the relay authenticates (the cap is the account's); the host in
/// lower case. Needs no password: `smtp send --queue-only` remembers
/// limits under it without reading one.
pub fn relay_key(host: &str, port: u16, user: Option<&str>) -> String {
    let host = host.to_ascii_lowercase();
    match user {
        Some(user) => format!("relay:{host}:{port}:{user}"),
        None => format!("relay:{host}:{port}"),
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

/// One take from a budget, as its log keeps it: when, and how many units.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Take {
    /// When (epoch milliseconds).
    pub at_ms: i64,
    /// How many units (recipients).
    pub units: u32,
}

/// The index of the limit that paces (GCRA) among `limits`: the one of
/// the shortest period (of those, the fewest per period, then the smallest
/// burst). Every other limit is a cap. `None` for no limits.
pub fn pace_of(limits: &[Limit]) -> Option<usize> {
    limits
        .iter()
        .enumerate()
        .min_by_key(|(_, l)| (l.rate.per, l.rate.count, l.burst))
        .map(|(i, _)| i)
}

fn period_ms(limit: &Limit) -> i64 {
    i64::try_from(limit.rate.per.as_millis())
        .unwrap_or(i64::MAX)
        .max(1)
}

/// The units of `takes` within the window of `limit`'s period that ends
/// at `now_ms` (taken after `now_ms − period`).
pub fn window_sum(limit: &Limit, takes: &[Take], now_ms: i64) -> u64 {
    let from = now_ms.saturating_sub(period_ms(limit));
    takes
        .iter()
        .filter(|t| t.at_ms > from)
        .map(|t| u64::from(t.units))
        .sum()
}

/// The earliest time, not before `now_ms`, that a take of `cost` units
/// keeps `limit`, as a cap, within its count: when the window of its
/// period then holds at most `count − cost` units of `takes` (ordered by
/// time). A take larger than the cap waits for an empty window.
pub fn cap_allows_ms(limit: &Limit, takes: &[Take], cost: u32, now_ms: i64) -> i64 {
    let period = period_ms(limit);
    let from = now_ms.saturating_sub(period);
    let room = u64::from(limit.rate.count).saturating_sub(u64::from(cost));
    let inside: Vec<&Take> = takes.iter().filter(|t| t.at_ms > from).collect();
    let mut sum: u64 = inside.iter().map(|t| u64::from(t.units)).sum();
    // The oldest leave first: each leaves the window a period after it.
    let mut at = now_ms;
    for t in inside {
        if sum <= room {
            break;
        }
        sum -= u64::from(t.units);
        at = at.max(t.at_ms.saturating_add(period));
    }
    at
}

/// Takes `cost` units at `now_ms` from every limit, or from none. The
/// pace ([`pace_of`]) is GCRA: `tats[i]` is its TAT (`None` for a budget
/// never used), moved on when allowed. Every other limit is a cap, checked
/// against `takes`, the budget's log ordered by time (the caller adds
/// this take to it when allowed); the caps' `tats` are left as they are.
pub fn take(
    limits: &[Limit],
    tats: &mut [Option<i64>],
    takes: &[Take],
    cost: u32,
    now_ms: i64,
) -> Decision {
    let Some(pace) = pace_of(limits) else {
        return Decision::Allowed;
    };
    let limit = &limits[pace];
    let t = limit.rate.interval_ms();
    let start = tats
        .get(pace)
        .copied()
        .flatten()
        .unwrap_or(now_ms)
        .max(now_ms);
    let new_tat = start.saturating_add(t.saturating_mul(i64::from(cost)));
    let mut allowed_from = if cost > limit.burst.max(1) {
        // Larger than the burst: alone, once the budget is whole.
        start
    } else {
        new_tat.saturating_sub(t.saturating_mul(i64::from(limit.burst.max(1))))
    };
    for (i, cap) in limits.iter().enumerate() {
        if i != pace {
            allowed_from = allowed_from.max(cap_allows_ms(cap, takes, cost, now_ms));
        }
    }
    if allowed_from > now_ms {
        return Decision::WaitUntil(allowed_from);
    }
    if let Some(tat) = tats.get_mut(pace) {
        *tat = Some(new_tat);
    }
    Decision::Allowed
}

/// The turns of units taken one at a time from `now_ms` on, each as soon
/// as every limit allows: what a queue waiting for its budget can expect
/// ([`turns`]). An estimate where messages have several recipients (a
/// message is taken whole, not a unit at a time).
#[derive(Clone, Debug)]
pub struct Turns {
    now_ms: i64,
    /// The pace: its interval, burst, TAT.
    pace: Option<(i64, i64, Option<i64>)>,
    /// Each cap: its period, count, the takes within its window (oldest
    /// first) and their units.
    caps: Vec<(i64, u64, std::collections::VecDeque<Take>, u64)>,
    last_ms: i64,
}

/// The turns under `limits` (with the pace's TAT in `tats` and the
/// budget's log `takes`, ordered by time) of units taken from `now_ms` on.
pub fn turns(limits: &[Limit], tats: &[Option<i64>], takes: &[Take], now_ms: i64) -> Turns {
    let pace_index = pace_of(limits);
    let pace = pace_index.map(|i| {
        let l = &limits[i];
        (
            l.rate.interval_ms(),
            i64::from(l.burst.max(1)),
            tats.get(i).copied().flatten(),
        )
    });
    let caps = limits
        .iter()
        .enumerate()
        .filter(|(i, _)| Some(*i) != pace_index)
        .map(|(_, l)| {
            let period = period_ms(l);
            let from = now_ms.saturating_sub(period);
            let window: std::collections::VecDeque<Take> =
                takes.iter().filter(|t| t.at_ms > from).copied().collect();
            let sum = window.iter().map(|t| u64::from(t.units)).sum();
            (period, u64::from(l.rate.count), window, sum)
        })
        .collect();
    Turns {
        now_ms,
        pace,
        caps,
        last_ms: now_ms,
    }
}

impl Turns {
    /// The turn of the next unit.
    pub fn next_unit(&mut self) -> i64 {
        let mut at = self.last_ms.max(self.now_ms);
        if let Some((t, burst, tat)) = self.pace {
            let start = tat.unwrap_or(at).max(at);
            at = at.max(
                start
                    .saturating_add(t)
                    .saturating_sub(t.saturating_mul(burst)),
            );
        }
        for (period, count, window, sum) in &self.caps {
            // Walk the oldest until one more fits; they leave by `at`.
            let mut left = *sum;
            for take in window.iter() {
                let gone = take.at_ms <= at.saturating_sub(*period);
                if !gone && left < *count {
                    break;
                }
                left -= u64::from(take.units);
                at = at.max(take.at_ms.saturating_add(*period));
            }
        }
        if let Some((t, _, tat)) = &mut self.pace {
            *tat = Some(tat.unwrap_or(at).max(at).saturating_add(*t));
        }
        for (period, _, window, sum) in &mut self.caps {
            let from = at.saturating_sub(*period);
            while window.front().is_some_and(|t| t.at_ms <= from) {
                if let Some(t) = window.pop_front() {
                    *sum -= u64::from(t.units);
                }
            }
            window.push_back(Take {
                at_ms: at,
                units: 1,
            });
            *sum += 1;
        }
        self.last_ms = at;
        at
    }

    /// The turn of the last of `units` more (`now_ms` for none).
    pub fn after(&mut self, units: u64) -> i64 {
        let mut at = self.last_ms.max(self.now_ms);
        for _ in 0..units {
            at = self.next_unit();
        }
        at
    }
}

/// When `count` more units, taken one at a time from `now_ms` on, will all
/// have been allowed: what a queue waiting for its budget can expect. An
/// estimate: messages are taken whole, not a unit at a time.
pub fn finish_ms(
    limits: &[Limit],
    tats: &[Option<i64>],
    takes: &[Take],
    count: u64,
    now_ms: i64,
) -> i64 {
    let Some(pace) = pace_of(limits) else {
        return now_ms;
    };
    if limits.len() == 1 {
        // The pace alone: the last of `count` goes when the TAT, moved on
        // by all of them, is within the burst.
        let limit = &limits[pace];
        let t = limit.rate.interval_ms();
        let start = tats[pace].unwrap_or(now_ms).max(now_ms);
        let last = start
            .saturating_add(t.saturating_mul(i64::try_from(count).unwrap_or(i64::MAX)))
            .saturating_sub(t.saturating_mul(i64::from(limit.burst.max(1))));
        return last.max(now_ms);
    }
    turns(limits, tats, takes, now_ms).after(count)
}

/// The earliest time (epoch milliseconds, not before `now_ms`) a take of
/// `cost` units would be allowed.
pub fn next_ms(
    limits: &[Limit],
    tats: &[Option<i64>],
    takes: &[Take],
    cost: u32,
    now_ms: i64,
) -> i64 {
    let mut tats = tats.to_vec();
    match take(limits, &mut tats, takes, cost, now_ms) {
        Decision::Allowed => now_ms,
        Decision::WaitUntil(t) => t,
    }
}

/// A budget as a store keeps it: under one key (a relay account), every
/// limit it was taken under, each with its TAT, which of them are the
/// limits last set for the key (remembered, for a runner given none), and
/// the log of its recent takes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Budget {
    /// The key: `relay:HOST:PORT` or `relay:HOST:PORT:USER`.
    pub key: String,
    /// The limits kept, in no particular order.
    pub limits: Vec<Kept>,
    /// The takes logged, oldest first (at least those within the longest
    /// period of the limits).
    pub takes: Vec<Take>,
}

/// One limit of a [`Budget`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Kept {
    /// The limit.
    pub limit: Limit,
    /// Its TAT (epoch milliseconds) when it paced; `None` when it never
    /// did (never taken from, or only as a cap).
    pub tat_ms: Option<i64>,
    /// One of the limits last set for the key.
    pub remembered: bool,
}

impl Budget {
    /// A budget never taken from.
    pub fn empty(key: &str) -> Self {
        Self {
            key: key.to_owned(),
            limits: Vec::new(),
            takes: Vec::new(),
        }
    }

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

    /// The TATs of `limits` at `now_ms`, in their order: the pace's
    /// ([`pace_of`]; `None` while the account's budget is whole), `None`
    /// for the caps (they count the log).
    ///
    /// The pace's TAT is the later of two, so that a change of limits
    /// gives no fresh budget:
    ///
    /// - its own, kept when it paced before; else the debt of the
    ///   account: the units the most spent kept limit is ahead of
    ///   `now_ms`, counted in that limit's intervals, carried over in the
    ///   pace's intervals;
    /// - the log's takes within the pace's period, replayed through it
    ///   (so a former cap that paces now, as `500/day` once `30/minute` is
    ///   dropped, counts what went in the day).
    ///
    /// The two carried over are at most the pace's rate and burst (a full
    /// period) ahead. So writing a rate another way (`60/hour` for
    /// `1/minute`, `1440/day`) gives no fresh budget; a larger burst still
    /// lets its extra go. The caps need no carry-over: the log counts
    /// every take, whatever limits it was taken under.
    pub fn tats(&self, limits: &[Limit], now_ms: i64) -> Vec<Option<i64>> {
        let mut tats = vec![None; limits.len()];
        let Some(pace) = pace_of(limits) else {
            return tats;
        };
        let l = &limits[pace];
        let own = self
            .limits
            .iter()
            .find(|k| k.limit == *l)
            .and_then(|k| k.tat_ms);
        let debt = self
            .limits
            .iter()
            .filter_map(|k| {
                let ahead = u64::try_from(k.tat_ms?.saturating_sub(now_ms)).ok()?;
                let interval = u64::try_from(k.limit.rate.interval_ms()).ok()?;
                (ahead > 0).then(|| i64::try_from(ahead.div_ceil(interval)).unwrap_or(i64::MAX))
            })
            .max();
        let t = l.rate.interval_ms();
        let most =
            now_ms.saturating_add(t.saturating_mul(i64::from(l.rate.count) + i64::from(l.burst)));
        let carried = debt.map(|units| {
            let cap = i64::from(l.rate.count).saturating_add(i64::from(l.burst));
            now_ms.saturating_add(units.min(cap).saturating_mul(t))
        });
        let from = now_ms.saturating_sub(period_ms(l));
        let replayed = self
            .takes
            .iter()
            .filter(|k| k.at_ms > from)
            .fold(None::<i64>, |tat, k| {
                Some(
                    tat.unwrap_or(k.at_ms)
                        .max(k.at_ms)
                        .saturating_add(t.saturating_mul(i64::from(k.units))),
                )
            })
            .filter(|tat| *tat > now_ms)
            .map(|tat| tat.min(most));
        // Its own TAT, when kept, is the pace's history: no carry-over.
        let carried = if own.is_some() { own } else { carried };
        tats[pace] = [carried, replayed].into_iter().flatten().max();
        tats
    }

    /// When one unit may next go under `limits` (not before `now_ms`).
    pub fn next_free_ms(&self, limits: &[Limit], now_ms: i64) -> i64 {
        next_ms(limits, &self.tats(limits, now_ms), &self.takes, 1, now_ms)
    }

    /// When `count` more units may all have gone under `limits`
    /// ([`finish_ms`]: an estimate).
    pub fn finish_ms(&self, limits: &[Limit], count: u64, now_ms: i64) -> i64 {
        finish_ms(
            limits,
            &self.tats(limits, now_ms),
            &self.takes,
            count,
            now_ms,
        )
    }

    /// The turns of units taken under `limits` from `now_ms` on.
    pub fn turns(&self, limits: &[Limit], now_ms: i64) -> Turns {
        turns(limits, &self.tats(limits, now_ms), &self.takes, now_ms)
    }

    /// Each cap among `limits` (every limit but the pace) with the units
    /// taken within its period up to `now_ms`.
    pub fn cap_usage(&self, limits: &[Limit], now_ms: i64) -> Vec<(Limit, u64)> {
        let pace = pace_of(limits);
        limits
            .iter()
            .enumerate()
            .filter(|(i, _)| Some(*i) != pace)
            .map(|(_, l)| (*l, window_sum(l, &self.takes, now_ms)))
            .collect()
    }
}

/// `limits` as written on a command line: `30/minute (burst 5), 500/day`
/// (a burst is said for the pace only: the caps have none).
pub fn describe(limits: &[Limit]) -> String {
    let pace = pace_of(limits);
    let rates: Vec<String> = limits
        .iter()
        .enumerate()
        .map(|(i, l)| {
            if l.burst > 1 && Some(i) == pace {
                format!("{} (burst {})", l.rate, l.burst)
            } else {
                l.rate.to_string()
            }
        })
        .collect();
    rates.join(", ")
}

/// A period in words, for "used in the last …": `minute`, `day`, or
/// `90000 ms`.
pub fn period_words(per: Duration) -> String {
    let secs = per.as_secs();
    match PERIODS
        .iter()
        .find(|(_, s)| *s == secs && per.subsec_nanos() == 0)
    {
        Some((names, _)) => names[0].to_owned(),
        None => format!("{} ms", per.as_millis()),
    }
}

#[cfg(test)]
mod tests;
