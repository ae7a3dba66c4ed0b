//! `--rate N/PERIOD` (repeatable) and `--burst N`: the relay account's
//! rate limits, as `smtp send` and `smtp queue run` take them, or an
//! account's `rate = ["30/minute", "500/day"]` (or one, `rate =
//! "30/minute"`) and `burst = 5`. The shortest limit paces (evenly, with
//! the burst); every longer one is a cap, exact, that slows nothing until
//! it is reached ([`smtp_queue::rate`]).
//!
//! The queue keeps the budget (shared by every runner, kept across
//! restarts) and remembers the limits last set for the relay account:
//! a `queue run` given none applies those, and says so; `--rate none`
//! clears them.

use std::time::SystemTime;

use clap::Args;
use smtp_queue::rate::{Budget, Limit, Rate, describe, pace_of};
use smtp_queue::{RunnerConfig, Store};

use crate::fail::Failure;
use crate::queue::{Via, queue_error};

/// The rate flags.
#[derive(Debug, Args, Default, Clone)]
pub(crate) struct RateArgs {
    /// The relay account's rate limit: N/second, N/minute, N/hour or
    /// N/day (also /sec, /s, /min, /m, /h, /d); repeat to combine
    /// (`--rate 30/minute --rate 500/day`): the shortest paces, evenly,
    /// and each longer one is a cap, never exceeded in any window of its
    /// period, that slows nothing until it is reached. A message counts
    /// one per recipient. The queue keeps the budget,
    /// shared by every `queue run` on it and across restarts, so `send`
    /// with a rate uses the queue (as --queue does: the default
    /// directory unless --queue names one). The limits are remembered for
    /// the relay account: a later `queue run` without --rate applies
    /// them; `--rate none` clears them.
    #[arg(long = "rate", value_name = "N/PERIOD")]
    pub(crate) rate: Vec<String>,
    /// With --rate: how many may go at once under the pace, the shortest
    /// limit (default 1: evenly spread, so that no window of its period
    /// ever holds more than N; with B, a window holds at most N + B − 1).
    /// The longer limits (caps) have no burst.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) burst: Option<u32>,
}

/// What the flags (or the account) say about the rate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Choice {
    /// Nothing said: apply the limits remembered for the relay account.
    Unsaid,
    /// `--rate none`: no limits, and forget the remembered ones.
    Clear,
    /// These limits.
    Limits(Vec<Limit>),
}

/// Parses rates and a burst as written on the command line or in the
/// config file.
pub(crate) fn choice(rates: &[String], burst: Option<u32>) -> Result<Choice, String> {
    if rates.is_empty() {
        return match burst {
            Some(_) => Err("--burst goes with --rate".into()),
            None => Ok(Choice::Unsaid),
        };
    }
    if rates.iter().any(|r| r.trim().eq_ignore_ascii_case("none")) {
        if rates.len() > 1 {
            return Err("--rate none clears the limits: give it alone".into());
        }
        return Ok(Choice::Clear);
    }
    let mut limits = Vec::with_capacity(rates.len());
    for text in rates {
        let limit = Limit::new(text.parse::<Rate>()?);
        if !limits.contains(&limit) {
            limits.push(limit);
        }
    }
    // The burst is the pace's (the shortest limit); the caps have none.
    if let Some(pace) = pace_of(&limits) {
        limits[pace] = limits[pace].with_burst(burst.unwrap_or(1));
    }
    Ok(Choice::Limits(limits))
}

/// The flags' choice, else the account's.
pub(crate) fn resolve(
    args: &RateArgs,
    account: (&[String], Option<u32>),
) -> Result<Choice, Failure> {
    if args.rate.is_empty() && !account.0.is_empty() {
        // The account's rate, with --burst (if given) over its burst.
        return choice(account.0, args.burst.or(account.1))
            .map_err(|e| Failure::config(format!("the account's rate: {e}")));
    }
    choice(&args.rate, args.burst).map_err(|e| Failure::usage(format!("--rate: {e}")))
}

/// Limits need a relay (`relay`: one is given): direct delivery is not
/// rate limited. `smtp send` checks before it enqueues anything.
pub(crate) fn needs_relay(choice: &Choice, relay: bool) -> Result<(), Failure> {
    match choice {
        Choice::Limits(_) if !relay => Err(Failure::usage(
            "--rate limits a relay account: it needs --server (or an account with one); \
             direct delivery is not rate limited",
        )),
        _ => Ok(()),
    }
}

/// `config` under the rate `choice` for the relay `via` goes through:
/// the limits given are remembered for the relay account, `Clear`
/// forgets them, and with none given the remembered ones apply (said on
/// stderr).
pub(crate) async fn apply(
    store: &dyn Store,
    via: &Via,
    choice: &Choice,
    config: RunnerConfig,
) -> Result<RunnerConfig, Failure> {
    let Via::Relay(server) = via else {
        needs_relay(choice, false)?;
        return Ok(config);
    };
    let key = smtp_queue::relay_budget_key(server);
    Ok(match remember(store, &key, choice).await? {
        Some(limits) => config.with_rate(limits).with_budget_key(key),
        None => config,
    })
}

/// Remembers the limits `choice` gives for the relay account `key` (said
/// on stderr when they change), forgets them for `Clear`, and with none
/// given finds those remembered (said on stderr): the limits to send
/// under, `None` for none. `smtp send --queue-only` calls it alone, so
/// that a later plain `queue run` applies the limits.
pub(crate) async fn remember(
    store: &dyn Store,
    key: &str,
    choice: &Choice,
) -> Result<Option<Vec<Limit>>, Failure> {
    let now = SystemTime::now();
    match choice {
        Choice::Limits(limits) => {
            let before = store
                .budget(key)
                .await
                .map_err(queue_error)?
                .map(|b| b.remembered())
                .unwrap_or_default();
            let mut sorted = limits.clone();
            sorted.sort_by_key(|l| (l.rate.per, l.rate.count, l.burst));
            if !before.is_empty() && before != sorted {
                tell!(
                    "smtp: the rate limits for {key} change from {} to {}: the budget already \
                     spent carries over",
                    describe(&before),
                    describe(limits)
                );
            }
            store
                .remember_limits(key, limits, now)
                .await
                .map_err(queue_error)?;
            Ok(Some(limits.clone()))
        }
        Choice::Clear => {
            store
                .remember_limits(key, &[], now)
                .await
                .map_err(queue_error)?;
            tell!("smtp: rate limits for {key} cleared");
            Ok(None)
        }
        Choice::Unsaid => {
            let remembered = store
                .budget(key)
                .await
                .map_err(queue_error)?
                .map(|b| b.remembered())
                .unwrap_or_default();
            if remembered.is_empty() {
                return Ok(None);
            }
            tell!(
                "smtp: applying the rate limits remembered for {key}: {} (--rate changes them, \
                 --rate none clears them)",
                describe(&remembered)
            );
            Ok(Some(remembered))
        }
    }
}

/// When `units` more (recipients), taken from now on, will have gone
/// under `config`'s limits (the pace and the caps, counting what the
/// caps' windows hold already; an estimate: a message of several
/// recipients goes whole): `None` without limits.
pub(crate) async fn expected_finish(
    store: &dyn Store,
    config: &RunnerConfig,
    units: u64,
) -> Result<Option<SystemTime>, Failure> {
    let (limits, Some(key)) = (&config.rate, &config.budget_key) else {
        return Ok(None);
    };
    if limits.is_empty() {
        return Ok(None);
    }
    let now = SystemTime::now();
    let now_ms = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    let budget = store
        .budget(key)
        .await
        .map_err(queue_error)?
        .unwrap_or_else(|| Budget::empty(key));
    let ms = budget.finish_ms(limits, units, now_ms);
    Ok(Some(
        SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0)),
    ))
}

/// `secs` in words: `45s`, `7 min`, `3 h 20 min`.
pub(crate) fn span(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{} min", s.div_ceil(60)),
        s => format!("{} h {} min", s / 3600, (s % 3600) / 60),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn rates_combine_and_take_the_burst() {
        let rates = ["30/minute".to_owned(), "500/day".to_owned()];
        let Choice::Limits(limits) = choice(&rates, Some(5)).unwrap() else {
            panic!("limits expected");
        };
        assert_eq!(limits.len(), 2);
        assert_eq!(limits[0].rate.count, 30);
        assert_eq!(limits[0].rate.per, Duration::from_secs(60));
        assert_eq!(limits[1].rate.per, Duration::from_secs(86_400));
        // The burst is the pace's; the day is a cap, without one.
        assert_eq!((limits[0].burst, limits[1].burst), (5, 1));
        let Choice::Limits(one) = choice(&["10/second".to_owned()], None).unwrap() else {
            panic!("limits expected");
        };
        assert_eq!(one[0].burst, 1, "the default burst spreads evenly");
    }

    #[test]
    fn none_clears_and_nothing_said_is_unsaid() {
        assert_eq!(choice(&["none".to_owned()], None), Ok(Choice::Clear));
        assert_eq!(choice(&[], None), Ok(Choice::Unsaid));
        assert!(choice(&[], Some(3)).unwrap_err().contains("--burst"));
        assert!(
            choice(&["none".to_owned(), "3/s".to_owned()], None)
                .unwrap_err()
                .contains("alone")
        );
        let e = choice(&["30/fortnight".to_owned()], None).unwrap_err();
        assert!(e.contains("N/minute"), "{e}");
    }

    #[test]
    fn the_flags_win_over_the_account() {
        let account = ["100/hour".to_owned()];
        let flags = RateArgs {
            rate: vec!["5/second".into()],
            burst: None,
        };
        let Choice::Limits(l) = resolve(&flags, (&account, None)).unwrap() else {
            panic!("limits expected");
        };
        assert_eq!(l[0].rate.count, 5);
        let Choice::Limits(l) = resolve(&RateArgs::default(), (&account, Some(2))).unwrap() else {
            panic!("limits expected");
        };
        assert_eq!((l[0].rate.count, l[0].burst), (100, 2));
        // --burst alone goes with the account's rate.
        let flags = RateArgs {
            rate: Vec::new(),
            burst: Some(7),
        };
        let Choice::Limits(l) = resolve(&flags, (&account, Some(2))).unwrap() else {
            panic!("limits expected");
        };
        assert_eq!((l[0].rate.count, l[0].burst), (100, 7));
        assert!(resolve(&flags, (&[], None)).is_err());
    }
}
