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
    for (text, secs) in [
        ("30/min", 60),
        ("30/m", 60),
        ("3/sec", 1),
        ("3/h", 3600),
        ("3/d", 86_400),
        ("3/minutes", 60),
    ] {
        assert_eq!(rate(text).per, Duration::from_secs(secs), "{text}");
    }
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
    assert_eq!(take(&limits, &mut tats, &[], 1, 0), Decision::Allowed);
    assert_eq!(
        take(&limits, &mut tats, &[], 1, 0),
        Decision::WaitUntil(1000)
    );
    assert_eq!(
        take(&limits, &mut tats, &[], 1, 999),
        Decision::WaitUntil(1000)
    );
    assert_eq!(take(&limits, &mut tats, &[], 1, 1000), Decision::Allowed);
    assert_eq!(tats, [Some(2000)]);
}

#[test]
fn a_burst_goes_at_once_then_the_rate_holds() {
    let limits = [Limit::new(rate("10/second")).with_burst(3)];
    let mut tats = [None];
    for _ in 0..3 {
        assert_eq!(take(&limits, &mut tats, &[], 1, 0), Decision::Allowed);
    }
    assert_eq!(
        take(&limits, &mut tats, &[], 1, 0),
        Decision::WaitUntil(100)
    );
}

#[test]
fn the_shortest_limit_paces_and_the_longer_ones_cap() {
    let hour = Limit::new(rate("3/hour"));
    let second = Limit::new(rate("2/second")).with_burst(2);
    assert_eq!(pace_of(&[hour, second]), Some(1));
    assert_eq!(pace_of(&[]), None);
    let limits = [second, hour];
    let mut tats = [None, None];
    let mut log = Vec::new();
    let go = |tats: &mut [Option<i64>], log: &mut Vec<Take>, now| {
        let d = take(&limits, tats, log, 1, now);
        if d == Decision::Allowed {
            log.push(Take {
                at_ms: now,
                units: 1,
            });
        }
        d
    };
    // The cap does not slow sending: the pace's burst of 2, then 500 ms.
    assert_eq!(go(&mut tats, &mut log, 0), Decision::Allowed);
    assert_eq!(go(&mut tats, &mut log, 10), Decision::Allowed);
    assert_eq!(go(&mut tats, &mut log, 20), Decision::WaitUntil(500));
    // Waiting: nothing was taken.
    assert_eq!(tats, [Some(1000), None]);
    assert_eq!(go(&mut tats, &mut log, 500), Decision::Allowed);
    // Three in the hour: the fourth waits for the first to leave it.
    assert_eq!(
        go(&mut tats, &mut log, 5000),
        Decision::WaitUntil(3_600_000)
    );
    assert_eq!(go(&mut tats, &mut log, 3_600_000), Decision::Allowed);
    assert_eq!(
        go(&mut tats, &mut log, 3_600_001),
        Decision::WaitUntil(3_600_010)
    );
    assert_eq!(window_sum(&hour, &log, 3_600_000), 3);
}

#[test]
fn thirty_a_minute_and_500_a_day_send_500_at_2_s_then_wait_for_the_day() {
    let limits = [Limit::new(rate("30/minute")), Limit::new(rate("500/day"))];
    let mut tats = [None, None];
    let mut log: Vec<Take> = Vec::new();
    let mut now = 1_000_000;
    let mut sent = Vec::new();
    let predicted = turns(&limits, &tats, &log, now).after(501);
    while sent.len() < 501 {
        match take(&limits, &mut tats, &log, 1, now) {
            Decision::Allowed => {
                log.push(Take {
                    at_ms: now,
                    units: 1,
                });
                sent.push(now);
            }
            Decision::WaitUntil(t) => now = t,
        }
    }
    let first = sent[0];
    for (i, at) in sent[..500].iter().enumerate() {
        assert_eq!(*at, first + 2000 * i as i64, "{i}");
    }
    // 500 in 998 s; the 501st as the first leaves the day.
    assert_eq!(sent[500], first + 86_400_000);
    assert_eq!(predicted, sent[500]);
    let estimate = finish_ms(&limits, &[None, None], &[], 500, first);
    assert_eq!(estimate, first + 998_000);
    // A larger burst goes at once, the cap still holds.
    let limits = [
        Limit::new(rate("30/minute")).with_burst(30),
        Limit::new(rate("500/day")),
    ];
    assert_eq!(finish_ms(&limits, &[None, None], &[], 30, 0), 0);
    assert_eq!(finish_ms(&limits, &[None, None], &[], 501, 0), 86_400_000);
}

#[test]
fn a_take_larger_than_a_cap_waits_for_an_empty_window() {
    let limits = [Limit::new(rate("100/second")), Limit::new(rate("3/minute"))];
    let log = [
        Take { at_ms: 0, units: 1 },
        Take {
            at_ms: 10,
            units: 1,
        },
    ];
    assert_eq!(cap_allows_ms(&limits[1], &log, 1, 20), 20);
    assert_eq!(cap_allows_ms(&limits[1], &log, 2, 20), 60_000);
    assert_eq!(cap_allows_ms(&limits[1], &log, 5, 20), 60_010);
    assert_eq!(next_ms(&limits, &[None, None], &log, 5, 20), 60_010);
}

#[test]
fn a_take_larger_than_the_burst_goes_alone_when_the_budget_is_whole() {
    let limits = [Limit::new(rate("1/second"))];
    let mut tats = [None];
    assert_eq!(take(&limits, &mut tats, &[], 5, 0), Decision::Allowed);
    assert_eq!(
        take(&limits, &mut tats, &[], 1, 0),
        Decision::WaitUntil(5000)
    );
    assert_eq!(
        take(&limits, &mut tats, &[], 5, 4999),
        Decision::WaitUntil(5000)
    );
}

#[test]
fn the_finish_time_counts_the_budget_already_spent() {
    let limits = [Limit::new(rate("60/minute"))];
    assert_eq!(finish_ms(&limits, &[None], &[], 1, 0), 0);
    assert_eq!(finish_ms(&limits, &[None], &[], 61, 0), 60_000);
    assert_eq!(finish_ms(&limits, &[Some(30_000)], &[], 1, 0), 30_000);
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
        takes: Vec::new(),
    };
    assert_eq!(budget.remembered(), vec![day]);
    // The minute paces; the day caps (no TAT: the log counts).
    assert_eq!(budget.tats(&[minute, day], 0), vec![Some(10_000), None]);
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
    assert_eq!(describe(&[minute, day]), "60/minute, 500/day");
    assert_eq!(
        describe(&[minute.with_burst(5), day]),
        "60/minute (burst 5), 500/day"
    );
}

#[test]
fn a_former_cap_that_paces_counts_the_log() {
    // 500 went at 2 s under 30/minute and 500/day; 30/minute dropped:
    // 500/day paces, replaying the day's log, and sends nothing more
    // until the first take leaves the day.
    let day = Limit::new(rate("500/day"));
    let budget = Budget {
        key: "k".into(),
        limits: vec![Kept {
            limit: day,
            tat_ms: None,
            remembered: true,
        }],
        takes: (0..500)
            .map(|i| Take {
                at_ms: i * 2000,
                units: 1,
            })
            .collect(),
    };
    let now = 1_000_000;
    let next = budget.next_free_ms(&[day], now);
    assert_eq!(next, 86_400_000);
    assert_eq!(
        budget.cap_usage(&[Limit::new(rate("30/minute")), day], now),
        vec![(day, 500)]
    );
    assert_eq!(period_words(day.rate.per), "day");
    // Replayed at most a full period ahead.
    let minute = Limit::new(rate("1/minute"));
    assert_eq!(budget.tats(&[minute], now), vec![Some(now + 120_000)]);
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
            if take(&[limit], &mut tats, &[], 1, now) == Decision::Allowed {
                sent.push(now);
            }
        }
        for (i, start) in sent.iter().enumerate() {
            let within = sent[i..].iter().take_while(|t| **t < start + 1000).count();
            prop_assert!((within as u32) < count + burst, "{within} in a second");
        }
    }

    /// With a pace and caps, whenever takes are tried: no window of
    /// the pace's period holds more than N + B − 1, no window of a
    /// cap's more than its N; and a take is refused only when one
    /// more would break a bound.
    #[test]
    fn caps_hold_exactly_and_the_pace_holds(
        pace_count in 1u32..6, burst in 1u32..4,
        caps in proptest::collection::vec((1u32..30, 2u64..20), 1..3),
        gaps in proptest::collection::vec(0i64..700, 1..300),
    ) {
        let mut limits = vec![
            Limit::new(Rate::new(pace_count, Duration::from_secs(1)).unwrap()).with_burst(burst),
        ];
        for (count, secs) in &caps {
            limits.push(Limit::new(Rate::new(*count, Duration::from_secs(*secs)).unwrap()));
        }
        let mut tats = vec![None; limits.len()];
        let mut log = Vec::new();
        let mut now = 0;
        for gap in gaps {
            now += gap;
            if take(&limits, &mut tats, &log, 1, now) == Decision::Allowed {
                log.push(Take { at_ms: now, units: 1 });
            }
        }
        let sent: Vec<i64> = log.iter().map(|t| t.at_ms).collect();
        for (k, limit) in limits.iter().enumerate() {
            let period = limit.rate.per.as_millis() as i64;
            let most = if k == 0 { limit.rate.count + burst - 1 } else { limit.rate.count };
            for (i, start) in sent.iter().enumerate() {
                let within = sent[i..].iter().take_while(|t| **t < start + period).count();
                prop_assert!((within as u32) <= most, "{within} in {period} ms under {limit:?}");
            }
        }
    }

    /// The predicted turns are the turns takes get when tried at them.
    #[test]
    fn the_turns_are_those_takes_get(
        pace_count in 1u32..6, burst in 1u32..4,
        caps in proptest::collection::vec((1u32..30, 2u64..20), 0..3),
        n in 1usize..80,
    ) {
        let mut limits = vec![
            Limit::new(Rate::new(pace_count, Duration::from_secs(1)).unwrap()).with_burst(burst),
        ];
        for (count, secs) in &caps {
            limits.push(Limit::new(Rate::new(*count, Duration::from_secs(*secs)).unwrap()));
        }
        let mut tats = vec![None; limits.len()];
        let mut log = Vec::new();
        let mut predicted = turns(&limits, &tats, &log, 0);
        let mut now = 0;
        for _ in 0..n {
            let expected = predicted.next_unit();
            loop {
                match take(&limits, &mut tats, &log, 1, now) {
                    Decision::Allowed => break,
                    Decision::WaitUntil(t) => { prop_assert!(t > now); now = t; }
                }
            }
            prop_assert_eq!(now, expected);
            log.push(Take { at_ms: now, units: 1 });
        }
        prop_assert_eq!(finish_ms(&limits, &vec![None; limits.len()], &[], n as u64, 0), now);
    }
}
