//! Traffic shaping per destination in direct delivery: how many sessions
//! at once, how many messages per session, and how fast, per MX host set
//! (`mx:HOST[,HOST…]`, [`mx_destination`](crate::mx_destination)); and the
//! adaptive [`Throttle`] a destination gets when its servers say "slow
//! down".
//!
//! Everything here is pure: patterns, the built-in table, the lookup, and
//! the throttle's arithmetic (time passed in). The runner applies it; the
//! store keeps each destination's throttle so that `smtp queue stats` (and
//! a restarted runner) see it.
//!
//! # The shape of a destination
//!
//! [`Shaping::shape`] takes the first rule whose pattern matches one of the
//! destination's MX host names: the user's rules first (in the order
//! given), then the built-in table ([`Shaping::builtin`]). What a rule
//! leaves out comes from the runner's defaults
//! ([`RunnerConfig::per_destination`](crate::RunnerConfig),
//! [`RunnerConfig::per_connection`](crate::RunnerConfig)).
//!
//! # The adaptive rule
//!
//! A rate signal (a "slow down" reply: `verdict::is_rate_signal`) cuts the
//! destination's limits ([`Throttle::cut`]): connections halved (at least
//! 1), the rate halved (from the rate in force, or else from the rate just
//! observed). Signals within [`Adaptive::settle`] of the last cut are
//! answers to what was sent before it, and cut nothing more. After each
//! [`Adaptive::quiet`] interval without a signal ([`Throttle::recover`]),
//! one connection comes back and a quarter of the rate before the cut;
//! once both are back to the shape (or the rate to what it was before the
//! cut), the throttle is lifted.

use std::time::{Duration, SystemTime};

use crate::rate::{Limit, Rate};

/// How one destination is shaped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    /// Sessions at once, at least 1 (per runner).
    pub connections: usize,
    /// Messages per session, at least 1.
    pub messages_per_connection: usize,
    /// Messages per period, if limited (per runner).
    pub rate: Option<Limit>,
}

/// A rule of a shaping table: what it sets (the rest from the defaults).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rule {
    /// Sessions at once.
    pub connections: Option<usize>,
    /// Messages per session.
    pub messages_per_connection: Option<usize>,
    /// Messages per period.
    pub rate: Option<Limit>,
}

/// A host name pattern: `*.example.com` (any name ending in
/// `.example.com`) or an exact name; case-insensitive, a final dot
/// ignored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pattern(String);

impl Pattern {
    /// Parses a pattern; `None` for an empty one or a `*` anywhere but as
    /// the whole first label.
    pub fn parse(text: &str) -> Option<Self> {
        let p = text.trim().trim_end_matches('.').to_ascii_lowercase();
        let rest = p.strip_prefix("*.").unwrap_or(&p);
        (!rest.is_empty() && !rest.contains('*') && !rest.starts_with('.')).then_some(Self(p))
    }

    /// Whether `host` matches.
    pub fn matches(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        match self.0.strip_prefix('*') {
            // `.example.com`: a name below it, not the name itself.
            Some(suffix) => host.len() > suffix.len() && host.ends_with(suffix),
            None => host == self.0,
        }
    }

    /// The pattern as written (lower case).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The shaping table of a runner: the user's rules, then the built-in ones.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Shaping {
    /// The user's rules, in order.
    rules: Vec<(Pattern, Rule)>,
    /// The built-in rules (or none).
    table: Vec<(Pattern, Rule)>,
    /// How throttles cut and recover.
    pub adaptive: Adaptive,
}

/// `count` per minute with a burst of `burst`.
fn per_minute(count: u32, burst: u32) -> Option<Limit> {
    Rate::new(count, Duration::from_secs(60)).map(|r| Limit::new(r).with_burst(burst))
}

/// The built-in table: `(patterns, connections, messages per connection,
/// messages per minute, burst)`. These are **our** conservative values,
/// not numbers the providers publish (none of these does for senders at
/// large): a few sessions each, and for the providers known to defer new
/// or bulk senders with 421/451 a rate a modest sender stays under. The
/// adaptive throttle lowers them further when a provider says so.
const BUILTIN: &[(&[&str], usize, usize, u32, u32)] = &[
    // Gmail and Google Workspace: accepts many messages per session; its
    // 421 4.7.28 / 4.7.0 deferrals are reputation-based.
    (&["*.google.com", "*.googlemail.com"], 5, 100, 0, 0),
    // Microsoft 365 (tenants' Exchange Online Protection).
    (&["*.mail.protection.outlook.com"], 4, 50, 0, 0),
    // Outlook.com, Hotmail, Live: "4.7.500 Server busy" quickly.
    (&["*.olc.protection.outlook.com"], 2, 20, 120, 10),
    // Yahoo, AOL: "[TSS04] … temporarily deferred due to unexpected volume".
    (&["*.yahoodns.net"], 2, 20, 120, 10),
    // Apple iCloud.
    (&["*.mail.icloud.com"], 2, 20, 120, 10),
    // GMX, web.de (United Internet).
    (&["*.gmx.net", "*.web.de"], 2, 20, 60, 5),
    // Yandex.
    (&["*.yandex.ru", "*.yandex.net"], 2, 20, 60, 5),
    // Mail.ru.
    (&["*.mail.ru"], 2, 20, 60, 5),
    // Comcast.
    (&["*.comcast.net"], 2, 20, 60, 5),
];

impl Shaping {
    /// No rules: every destination gets the runner's defaults.
    pub fn none() -> Self {
        Self::default()
    }

    /// The built-in table (see the crate's docs/bulk.md).
    pub fn builtin() -> Self {
        let mut rules = Vec::new();
        for (patterns, connections, per, rate, burst) in BUILTIN {
            for p in *patterns {
                if let Some(pattern) = Pattern::parse(p) {
                    rules.push((
                        pattern,
                        Rule {
                            connections: Some(*connections),
                            messages_per_connection: Some(*per),
                            rate: per_minute(*rate, *burst),
                        },
                    ));
                }
            }
        }
        Self {
            rules: Vec::new(),
            table: rules,
            adaptive: Adaptive::default(),
        }
    }

    /// Adds a user's rule, taken before every rule already here (so a
    /// rule for a built-in pattern overrides it).
    #[must_use]
    pub fn with_rule(mut self, pattern: Pattern, rule: Rule) -> Self {
        self.rules.push((pattern, rule));
        self
    }

    /// Sets how throttles cut and recover.
    #[must_use]
    pub fn with_adaptive(mut self, adaptive: Adaptive) -> Self {
        self.adaptive = adaptive;
        self
    }

    /// The rule of the first pattern matching any host of `destination`
    /// (`mx:a,b`; any other key matches nothing), if one does.
    pub fn rule(&self, destination: &str) -> Option<&Rule> {
        let hosts = destination.strip_prefix("mx:")?;
        self.rules
            .iter()
            .chain(&self.table)
            .find(|(p, _)| hosts.split(',').any(|h| p.matches(h)))
            .map(|(_, r)| r)
    }

    /// `destination`'s shape: its rule over the defaults.
    pub fn shape(&self, destination: &str, connections: usize, per_connection: usize) -> Shape {
        let rule = self.rule(destination).copied().unwrap_or_default();
        Shape {
            connections: rule.connections.unwrap_or(connections).max(1),
            messages_per_connection: rule
                .messages_per_connection
                .unwrap_or(per_connection)
                .max(1),
            rate: rule.rate,
        }
    }

    /// The most messages any destination takes at once: its sessions
    /// times its messages per session, the largest over every rule and
    /// the defaults. A direct-delivery claim takes at most this many
    /// messages of one domain ([`crate::Store::claim_due_spread`]): more
    /// would wait in the round for a session while other domains wait
    /// for the next claim.
    pub fn widest(&self, connections: usize, per_connection: usize) -> usize {
        let product = |r: &Rule| {
            r.connections
                .unwrap_or(connections)
                .max(1)
                .saturating_mul(r.messages_per_connection.unwrap_or(per_connection).max(1))
        };
        self.rules
            .iter()
            .chain(&self.table)
            .map(|(_, r)| product(r))
            .fold(product(&Rule::default()), usize::max)
    }
}

/// How throttles cut and recover.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Adaptive {
    /// Signals this soon after a cut cut nothing more: they answer what
    /// was sent before it. Default 10 s.
    pub settle: Duration,
    /// Each interval this long without a signal gives back a step.
    /// Default 2 minutes.
    pub quiet: Duration,
}

impl Default for Adaptive {
    fn default() -> Self {
        Self {
            settle: Duration::from_secs(10),
            quiet: Duration::from_secs(120),
        }
    }
}

/// A destination's limits lowered after its servers said "slow down".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Throttle {
    /// The destination's key.
    pub destination: String,
    /// Sessions at once, at least 1.
    pub connections: u32,
    /// Messages per minute, when limited.
    pub rate_per_min: Option<u32>,
    /// The rate before the last cut: recovery ends there.
    pub ceiling_per_min: Option<u32>,
    /// The reply that said so (the last that cut).
    pub reason: String,
    /// Since when the destination is throttled (its first cut).
    pub since: SystemTime,
    /// The last cut.
    pub cut: SystemTime,
    /// The next step of recovery, if no signal comes before.
    pub until: SystemTime,
}

impl Throttle {
    /// The throttle after a rate signal at `now`, or `None` when the
    /// signal came within `settle` of the last cut (nothing changes).
    /// `observed_per_min` is the rate the runner sent at lately.
    pub fn cut(
        previous: Option<&Self>,
        destination: &str,
        shape: &Shape,
        observed_per_min: Option<u32>,
        reason: &str,
        adaptive: &Adaptive,
        now: SystemTime,
    ) -> Option<Self> {
        if let Some(p) = previous
            && now < p.cut + adaptive.settle
        {
            return None;
        }
        let connections = previous.map_or(shape.connections as u32, |p| p.connections);
        let rate = previous
            .and_then(|p| p.rate_per_min)
            .or_else(|| shape.rate.map(|l| limit_per_min(&l)))
            .or(observed_per_min);
        Some(Self {
            destination: destination.to_owned(),
            connections: (connections / 2).max(1),
            rate_per_min: rate.map(|r| (r / 2).max(1)),
            ceiling_per_min: rate,
            reason: reason.to_owned(),
            since: previous.map_or(now, |p| p.since),
            cut: now,
            until: now + adaptive.quiet,
        })
    }

    /// The throttle at `now`: one step back towards `shape` for each
    /// quiet interval since [`until`](Self::until) (a connection, a
    /// quarter of the rate before the cut); `None` once lifted.
    pub fn recover(&self, shape: &Shape, adaptive: &Adaptive, now: SystemTime) -> Option<Self> {
        let mut t = self.clone();
        let quiet = adaptive.quiet.max(Duration::from_millis(1));
        while now >= t.until {
            t.connections = (t.connections + 1).min(shape.connections as u32);
            if let (Some(rate), Some(ceiling)) = (t.rate_per_min, t.ceiling_per_min) {
                t.rate_per_min = Some((rate + (ceiling / 4).max(1)).min(ceiling));
            }
            t.until += quiet;
            let connections = t.connections as usize >= shape.connections;
            let rate = match (t.rate_per_min, t.ceiling_per_min) {
                (Some(rate), Some(ceiling)) => rate >= ceiling,
                _ => true,
            };
            if connections && rate {
                return None;
            }
        }
        Some(t)
    }

    /// The limit the throttle sets, evenly spread (burst 1).
    pub fn limit(&self) -> Option<Limit> {
        self.rate_per_min.and_then(|r| per_minute(r, 1))
    }
}

/// A limit's rate in messages per minute (at least 1).
pub fn limit_per_min(limit: &Limit) -> u32 {
    let per_ms = limit.rate.per.as_millis().max(1);
    u32::try_from(u128::from(limit.rate.count) * 60_000 / per_ms)
        .unwrap_or(u32::MAX)
        .max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: Duration = Duration::from_secs(1_700_000_000);

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + T0 + Duration::from_secs(secs)
    }

    #[test]
    fn patterns_match_names_below_them_or_exactly() {
        let p = Pattern::parse("*.Google.com.").unwrap();
        assert!(p.matches("aspmx.l.google.com"));
        assert!(p.matches("ALT1.ASPMX.L.GOOGLE.COM."));
        assert!(!p.matches("google.com"));
        assert!(!p.matches("evilgoogle.com"));
        let exact = Pattern::parse("mx.example.org").unwrap();
        assert!(exact.matches("MX.example.org"));
        assert!(!exact.matches("a.mx.example.org"));
        for bad in ["", "*", "*.", "a.*.com", "**.com"] {
            assert!(Pattern::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn the_widest_shape_is_the_largest_over_the_rules_and_the_defaults() {
        let none = Shaping::none();
        assert_eq!(none.widest(2, 100), 200);
        // Gmail's 5 sessions of 100 are the table's widest.
        assert_eq!(Shaping::builtin().widest(2, 100), 500);
        assert_eq!(Shaping::builtin().widest(8, 100), 800);
        let one_rule = Shaping::none().with_rule(
            Pattern::parse("mx.big.test").unwrap(),
            Rule {
                connections: Some(6),
                ..Rule::default()
            },
        );
        assert_eq!(one_rule.widest(2, 50), 300);
    }

    #[test]
    fn the_builtin_table_knows_the_largest_providers() {
        let s = Shaping::builtin();
        let gmail = s.shape("mx:alt1.aspmx.l.google.com,aspmx.l.google.com", 2, 100);
        assert_eq!((gmail.connections, gmail.messages_per_connection), (5, 100));
        assert_eq!(gmail.rate, None);
        let outlook = s.shape("mx:eur.olc.protection.outlook.com", 2, 100);
        assert_eq!(outlook.connections, 2);
        assert_eq!(outlook.rate.map(|l| limit_per_min(&l)), Some(120));
        let m365 = s.shape("mx:contoso-com.mail.protection.outlook.com", 2, 100);
        assert_eq!(m365.connections, 4);
        for host in [
            "mta5.am0.yahoodns.net",
            "mx01.mail.icloud.com",
            "mx00.emig.gmx.net",
            "mx-ha03.web.de",
            "mx.yandex.ru",
            "mxs.mail.ru",
            "mx1a1.comcast.net",
        ] {
            assert!(s.rule(&format!("mx:{host}")).is_some(), "{host}");
        }
        // Anything else: the runner's defaults.
        let other = s.shape("mx:mx.example.org", 3, 40);
        assert_eq!(
            other,
            Shape {
                connections: 3,
                messages_per_connection: 40,
                rate: None
            }
        );
        assert_eq!(s.rule("relay:smtp.example.com:587"), None);
    }

    #[test]
    fn a_users_rule_overrides_the_builtin_one_and_leaves_the_rest() {
        let rate: Rate = "20/second".parse().unwrap();
        let s = Shaping::builtin()
            .with_rule(
                Pattern::parse("*.google.com").unwrap(),
                Rule {
                    connections: Some(1),
                    rate: Some(Limit::new(rate).with_burst(5)),
                    ..Rule::default()
                },
            )
            .with_rule(
                Pattern::parse("mx.example.org").unwrap(),
                Rule {
                    messages_per_connection: Some(7),
                    ..Rule::default()
                },
            );
        let gmail = s.shape("mx:aspmx.l.google.com", 2, 100);
        // What the user's rule leaves out is the default, not the built-in.
        assert_eq!(gmail.connections, 1);
        assert_eq!(gmail.messages_per_connection, 100);
        assert_eq!(gmail.rate, Some(Limit::new(rate).with_burst(5)));
        assert_eq!(
            s.shape("mx:mx.example.org", 2, 100).messages_per_connection,
            7
        );
        // The built-in rules still apply to the others.
        assert_eq!(s.shape("mx:mx01.mail.icloud.com", 9, 100).connections, 2);
        // The user's rules keep their order: the first given wins.
        let first = Shaping::none()
            .with_rule(
                Pattern::parse("mx.a.test").unwrap(),
                Rule {
                    connections: Some(1),
                    ..Rule::default()
                },
            )
            .with_rule(
                Pattern::parse("*.a.test").unwrap(),
                Rule {
                    connections: Some(9),
                    ..Rule::default()
                },
            );
        assert_eq!(first.shape("mx:mx.a.test", 2, 100).connections, 1);
    }

    fn shape() -> Shape {
        Shape {
            connections: 4,
            messages_per_connection: 100,
            rate: None,
        }
    }

    #[test]
    fn a_signal_halves_connections_and_the_rate_observed() {
        let a = Adaptive::default();
        let t = Throttle::cut(None, "mx:m", &shape(), Some(600), "421 slow", &a, at(0)).unwrap();
        assert_eq!((t.connections, t.rate_per_min), (2, Some(300)));
        assert_eq!(t.limit().map(|l| limit_per_min(&l)), Some(300));
        // Within the settle time: the answers to what was sent before.
        assert_eq!(
            Throttle::cut(Some(&t), "mx:m", &shape(), Some(600), "x", &a, at(5)),
            None
        );
        let again =
            Throttle::cut(Some(&t), "mx:m", &shape(), Some(600), "again", &a, at(11)).unwrap();
        assert_eq!((again.connections, again.rate_per_min), (1, Some(150)));
        assert_eq!(again.since, at(0));
        assert_eq!(again.reason, "again");
        let floor = Throttle::cut(Some(&again), "mx:m", &shape(), None, "x", &a, at(30)).unwrap();
        assert_eq!(floor.connections, 1);
        // Nothing observed and no rate: only connections are cut.
        let t = Throttle::cut(None, "mx:m", &shape(), None, "421", &a, at(0)).unwrap();
        assert_eq!(t.rate_per_min, None);
        // A shape's own rate is where the cut starts from.
        let rated = Shape {
            rate: per_minute(100, 1),
            ..shape()
        };
        let t = Throttle::cut(None, "mx:m", &rated, Some(9000), "421", &a, at(0)).unwrap();
        assert_eq!(t.rate_per_min, Some(50));
    }

    #[test]
    fn after_quiet_intervals_the_limits_come_back_to_the_shape() {
        let a = Adaptive {
            settle: Duration::from_secs(10),
            quiet: Duration::from_secs(60),
        };
        let t = Throttle::cut(None, "mx:m", &shape(), Some(800), "421", &a, at(0)).unwrap();
        assert_eq!((t.connections, t.rate_per_min), (2, Some(400)));
        // Before the first interval is over: as cut.
        assert_eq!(t.recover(&shape(), &a, at(59)), Some(t.clone()));
        let one = t.recover(&shape(), &a, at(60)).unwrap();
        assert_eq!((one.connections, one.rate_per_min), (3, Some(600)));
        assert_eq!(one.until, at(120));
        assert_eq!(t.recover(&shape(), &a, at(119)), Some(one));
        // Back to the shape's connections and the rate before the cut: lifted.
        assert_eq!(t.recover(&shape(), &a, at(120)), None);
        // A second cut while recovering starts from where it had got to.
        let one = t.recover(&shape(), &a, at(60)).unwrap();
        let again =
            Throttle::cut(Some(&one), "mx:m", &shape(), Some(9999), "421", &a, at(70)).unwrap();
        assert_eq!((again.connections, again.rate_per_min), (1, Some(300)));
        assert_eq!(again.ceiling_per_min, Some(600));
        // A throttle with only connections cut is lifted once they are back.
        let c = Throttle::cut(None, "mx:m", &shape(), None, "421", &a, at(0)).unwrap();
        assert!(c.recover(&shape(), &a, at(60)).is_some());
        assert_eq!(c.recover(&shape(), &a, at(120)), None);
    }
}
