//! The retry schedule: pure arithmetic on durations and times passed in,
//! with the randomness passed in too, so tests pin every value.
//!
//! The defaults are Postfix's: a first retry after 5 minutes
//! (`minimal_backoff_time = 300s`), the delay doubling up to 4000 seconds,
//! about 67 minutes (`maximal_backoff_time`), and a message given up after
//! 5 days (`maximal_queue_lifetime`). Jitter spreads retries of messages
//! deferred together so that they do not come back as a herd.

use std::time::{Duration, SystemTime};

/// When a deferred recipient (or a backed-off destination) is tried next.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Schedule {
    /// The delay after the first failed attempt.
    pub first: Duration,
    /// The longest delay: doubling stops here.
    pub max: Duration,
    /// How long after enqueue a message is given up (its undelivered
    /// recipients expire).
    pub lifetime: Duration,
    /// The spread of each delay, a fraction in `0.0..=1.0`: a delay `d`
    /// becomes one in `d × (1 − jitter) .. d × (1 + jitter)`.
    pub jitter: f64,
}

/// What follows a temporary failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Try again at this time.
    RetryAt(SystemTime),
    /// The lifetime has run out: the recipient expires.
    Expire,
}

impl Default for Schedule {
    fn default() -> Self {
        Self {
            first: Duration::from_secs(300),
            max: Duration::from_secs(4000),
            lifetime: Duration::from_secs(5 * 24 * 3600),
            jitter: 0.1,
        }
    }
}

impl Schedule {
    /// The delay after `attempts` failed attempts (1 for the first), before
    /// jitter: `first × 2^(attempts − 1)`, at most `max`.
    pub fn base_delay(&self, attempts: u32) -> Duration {
        let doublings = attempts.saturating_sub(1).min(63);
        let factor = 1u64 << doublings;
        let nanos = self.first.as_nanos().saturating_mul(u128::from(factor));
        let max = self.max.as_nanos();
        let nanos = nanos.min(max).max(self.first.as_nanos().min(max));
        // At most `max`, which came from a Duration: it fits.
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// The delay after `attempts` failed attempts with jitter applied;
    /// `random` is uniform in `0.0..1.0` (see [`random_unit`]).
    pub fn delay(&self, attempts: u32, random: f64) -> Duration {
        let jitter = self.jitter.clamp(0.0, 1.0);
        let random = if random.is_finite() {
            random.clamp(0.0, 1.0)
        } else {
            0.5
        };
        let factor = 1.0 + jitter * (2.0 * random - 1.0);
        self.base_delay(attempts).mul_f64(factor.max(0.0))
    }

    /// What follows the failed attempt number `attempts` (1 for the first)
    /// at `now` of a message enqueued at `created`: a retry, never later
    /// than the end of the lifetime (so the last attempt is made just
    /// then), or expiry once the lifetime has run out.
    pub fn next(&self, attempts: u32, created: SystemTime, now: SystemTime, random: f64) -> Next {
        let end = created + self.lifetime;
        if now >= end {
            return Next::Expire;
        }
        Next::RetryAt((now + self.delay(attempts, random)).min(end))
    }

    /// Whether a message enqueued at `created` is past its lifetime at `now`.
    pub fn expired(&self, created: SystemTime, now: SystemTime) -> bool {
        now >= created + self.lifetime
    }
}

/// A uniform random number in `0.0..1.0` from the operating system, for
/// [`Schedule::delay`]'s jitter. Falls back to the middle (no jitter) if the
/// system has no randomness to give.
pub fn random_unit() -> f64 {
    let mut bytes = [0u8; 8];
    match getrandom::fill(&mut bytes) {
        // 53 random bits make every double in [0, 1) with a 2^-53 step.
        Ok(()) => (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64,
        Err(_) => 0.5,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn the_defaults_are_postfixs() {
        let s = Schedule::default();
        assert_eq!(s.first, secs(300));
        assert_eq!(s.max, secs(4000));
        assert_eq!(s.lifetime, secs(432_000));
    }

    #[test]
    fn the_delay_doubles_from_first_up_to_max() {
        let s = Schedule::default();
        let delays: Vec<u64> = (1..=7).map(|n| s.base_delay(n).as_secs()).collect();
        assert_eq!(delays, [300, 600, 1200, 2400, 4000, 4000, 4000]);
        assert_eq!(
            s.base_delay(0),
            secs(300),
            "no attempt yet counts as the first"
        );
        assert_eq!(s.base_delay(u32::MAX), secs(4000), "no overflow");
    }

    #[test]
    fn jitter_stays_within_its_bounds() {
        let s = Schedule::default();
        assert_eq!(s.delay(1, 0.5), secs(300));
        assert_eq!(s.delay(1, 0.0), secs(270));
        let top = s.delay(1, 0.999_999);
        assert!(top > secs(329) && top <= secs(330), "{top:?}");
        for _ in 0..1000 {
            let d = s.delay(5, random_unit());
            assert!(d >= secs(3600) && d <= secs(4400), "{d:?}");
        }
        assert_eq!(
            s.delay(1, f64::NAN),
            secs(300),
            "a broken source means no jitter"
        );
    }

    #[test]
    fn no_jitter_gives_the_exact_delay() {
        let s = Schedule {
            jitter: 0.0,
            ..Schedule::default()
        };
        assert_eq!(s.delay(2, 0.0), secs(600));
        assert_eq!(s.delay(2, 0.99), secs(600));
    }

    #[test]
    fn a_retry_is_never_scheduled_past_the_lifetime_and_expiry_follows_it() {
        let s = Schedule {
            first: secs(10),
            max: secs(40),
            lifetime: secs(100),
            jitter: 0.0,
        };
        let created = SystemTime::UNIX_EPOCH + secs(1_000);
        assert_eq!(
            s.next(1, created, created + secs(1), 0.5),
            Next::RetryAt(created + secs(11))
        );
        assert_eq!(
            s.next(3, created, created + secs(50), 0.5),
            Next::RetryAt(created + secs(90))
        );
        assert_eq!(
            s.next(4, created, created + secs(90), 0.5),
            Next::RetryAt(created + secs(100))
        );
        assert_eq!(s.next(5, created, created + secs(100), 0.5), Next::Expire);
        assert!(s.expired(created, created + secs(100)));
        assert!(!s.expired(created, created + secs(99)));
    }

    #[test]
    fn random_unit_is_in_the_unit_interval() {
        for _ in 0..1000 {
            let r = random_unit();
            assert!((0.0..1.0).contains(&r));
        }
    }
}
