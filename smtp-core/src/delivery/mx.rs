//! MX resolution and planning for direct delivery (RFC 5321 §5.1, RFC 7505).
//!
//! The [`Resolver`] trait is all the planning needs from DNS (`smtp-dns`
//! implements it on hickory-resolver). [`plan`] turns a domain into the list
//! of hosts and addresses to try, in order:
//!
//! - MX records by preference, equal preferences shuffled (the random source
//!   is the caller's, so tests are deterministic);
//! - no MX records: the domain itself (implicit MX, from its A/AAAA);
//! - a null MX (`MX 0 .`, RFC 7505): permanent failure, nothing to try;
//! - NXDOMAIN: permanent; SERVFAIL or a timeout: temporary;
//! - at most `max_addresses` addresses in all.

use std::fmt;
use std::net::IpAddr;

use async_trait::async_trait;

/// One MX record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MxRecord {
    /// Lower is tried first.
    pub preference: u16,
    /// The mail exchanger's host name (`.` for a null MX).
    pub exchange: String,
}

/// A DNS lookup that did not produce records.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DnsError {
    /// The name does not exist.
    NxDomain,
    /// The lookup failed for now (SERVFAIL, timeout, network): try later.
    Temporary(String),
}

impl fmt::Display for DnsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NxDomain => f.write_str("the domain does not exist (NXDOMAIN)"),
            Self::Temporary(why) => write!(f, "DNS lookup failed for now ({why})"),
        }
    }
}

impl std::error::Error for DnsError {}

/// What planning needs from DNS. An empty answer is `Ok(vec![])`, not an error.
#[async_trait]
pub trait Resolver: Send + Sync {
    /// The MX records of `domain`.
    async fn mx(&self, domain: &str) -> Result<Vec<MxRecord>, DnsError>;
    /// The IPv4 and IPv6 addresses of `host`.
    async fn addresses(&self, host: &str) -> Result<Vec<IpAddr>, DnsError>;
    /// Who answers, for errors ("the nameserver 192.0.2.53:53"): a resolver
    /// that calls every domain nonexistent is a broken network, not a typo.
    fn name(&self) -> String {
        "the DNS resolver".to_owned()
    }
}

/// How the hosts were found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlanKind {
    /// From MX records.
    Mx,
    /// No MX records: the domain's own addresses (RFC 5321 §5.1).
    ImplicitMx,
}

/// A host to try and its addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedHost {
    /// The host name (the certificate is checked against it under Certified).
    pub name: String,
    /// Its MX preference (0 for an implicit MX).
    pub preference: u16,
    /// Its addresses, in the order to try.
    pub addresses: Vec<IpAddr>,
    /// Why it has no addresses, if it has none.
    pub error: Option<DnsError>,
}

/// The hosts to try for a domain, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MxPlan {
    /// The domain (A-label form).
    pub domain: String,
    /// MX or implicit MX.
    pub kind: PlanKind,
    /// The hosts, in order.
    pub hosts: Vec<PlannedHost>,
}

impl MxPlan {
    /// Every (host, address) pair in the order to try.
    pub fn attempts(&self) -> impl Iterator<Item = (&str, IpAddr)> {
        self.hosts
            .iter()
            .flat_map(|h| h.addresses.iter().map(move |a| (h.name.as_str(), *a)))
    }
}

/// Why a domain has nothing to try.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PlanError {
    /// The domain says it accepts no mail (RFC 7505 null MX).
    NullMx {
        /// The domain.
        domain: String,
    },
    /// The domain does not exist.
    NxDomain {
        /// The domain.
        domain: String,
        /// Who said so ([`Resolver::name`]).
        resolver: String,
    },
    /// DNS failed for now.
    Temporary {
        /// The domain.
        domain: String,
        /// Why.
        detail: String,
    },
    /// Records exist but no host has an address.
    NoAddresses {
        /// The domain.
        domain: String,
    },
}

impl PlanError {
    /// True when retrying cannot help.
    pub fn is_permanent(&self) -> bool {
        matches!(self, Self::NullMx { .. } | Self::NxDomain { .. })
    }
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NullMx { domain } => {
                write!(
                    f,
                    "{domain} accepts no mail (null MX, RFC 7505); check the address"
                )
            }
            // RFC 6761 §6.4: resolvers answer these themselves, asking nobody.
            Self::NxDomain { domain, .. } if is_reserved_nonexistent(domain) => write!(
                f,
                "the domain {domain} is a reserved name that never exists (RFC 6761); \
                 check the address"
            ),
            Self::NxDomain { domain, resolver } => write!(
                f,
                "the domain {domain} does not exist, according to {resolver}; check the \
                 address for typos (if domains that do exist fail the same way, that resolver \
                 is broken or intercepted: use another one)"
            ),
            Self::Temporary { domain, detail } => {
                write!(
                    f,
                    "cannot look up the mail servers of {domain} now ({detail}); try again later"
                )
            }
            Self::NoAddresses { domain } => write!(
                f,
                "the mail servers of {domain} have no addresses; the domain's DNS is broken, try later"
            ),
        }
    }
}

impl std::error::Error for PlanError {}

/// Names under `invalid.` never exist (RFC 6761 §6.4, RFC 2606).
fn is_reserved_nonexistent(domain: &str) -> bool {
    let d = domain.trim_end_matches('.').to_ascii_lowercase();
    d == "invalid" || d.ends_with(".invalid")
}

/// The most MX hosts a plan holds (the lowest preferences; Postfix tries
/// at most 5 addresses by default).
pub const MAX_MX_HOSTS: usize = 16;

/// Plans delivery to `domain`. `pick(n)` returns a number below `n`, used to
/// shuffle equal preferences (pass a random source; tests pass a fixed one).
pub async fn plan(
    resolver: &dyn Resolver,
    domain: &str,
    pick: &mut (dyn FnMut(usize) -> usize + Send),
    max_addresses: usize,
) -> Result<MxPlan, PlanError> {
    let owned = || domain.to_owned();
    let records = match resolver.mx(domain).await {
        Ok(r) => r,
        Err(DnsError::NxDomain) => {
            return Err(PlanError::NxDomain {
                domain: owned(),
                resolver: resolver.name(),
            });
        }
        Err(DnsError::Temporary(detail)) => {
            return Err(PlanError::Temporary {
                domain: owned(),
                detail,
            });
        }
    };
    let is_null = |r: &MxRecord| r.exchange.trim_end_matches('.').is_empty();
    if records.iter().any(is_null) {
        return Err(PlanError::NullMx { domain: owned() });
    }
    let (kind, mut hosts) = if records.is_empty() {
        (
            PlanKind::ImplicitMx,
            vec![(0, domain.trim_end_matches('.').to_owned())],
        )
    } else {
        let mut sorted: Vec<(u16, String)> = records
            .into_iter()
            .map(|r| {
                (
                    r.preference,
                    r.exchange.trim_end_matches('.').to_ascii_lowercase(),
                )
            })
            .collect();
        sorted.sort_by_key(|(p, _)| *p);
        sorted.dedup_by(|a, b| a.1 == b.1);
        (PlanKind::Mx, sorted)
    };
    shuffle_equal_preferences(&mut hosts, pick);
    // The most preferred hosts only, their addresses looked up at once: a
    // domain with a thousand MX records, or hosts whose lookups never
    // answer, costs one lookup's timeout, not one per host in turn.
    hosts.truncate(MAX_MX_HOSTS);
    let lookups =
        futures_util::future::join_all(hosts.iter().map(|(_, name)| resolver.addresses(name)))
            .await;
    let mut planned = Vec::new();
    let mut budget = max_addresses;
    let mut temporary = None;
    for ((preference, name), lookup) in hosts.into_iter().zip(lookups) {
        if budget == 0 {
            break;
        }
        let (mut addresses, error) = match lookup {
            Ok(a) => (a, None),
            Err(e) => {
                if let DnsError::Temporary(d) = &e {
                    temporary.get_or_insert_with(|| d.clone());
                }
                (Vec::new(), Some(e))
            }
        };
        if kind == PlanKind::ImplicitMx && error == Some(DnsError::NxDomain) {
            return Err(PlanError::NxDomain {
                domain: owned(),
                resolver: resolver.name(),
            });
        }
        addresses.truncate(budget);
        budget -= addresses.len();
        planned.push(PlannedHost {
            name,
            preference,
            addresses,
            error,
        });
    }
    if planned.iter().all(|h| h.addresses.is_empty()) {
        return Err(match temporary {
            Some(detail) => PlanError::Temporary {
                domain: owned(),
                detail,
            },
            None => PlanError::NoAddresses { domain: owned() },
        });
    }
    Ok(MxPlan {
        domain: owned(),
        kind,
        hosts: planned,
    })
}

/// Shuffles each run of equal preferences in `hosts` (sorted by
/// preference), Fisher-Yates with `pick`: for the run's positions from the
/// last down to the second, `pick(k)` chooses which of the first `k` goes
/// there. A `pick` that returns `k` or more is taken as `k - 1`.
fn shuffle_equal_preferences(hosts: &mut [(u16, String)], pick: &mut dyn FnMut(usize) -> usize) {
    let mut start = 0;
    while start < hosts.len() {
        let end = hosts[start..]
            .iter()
            .position(|h| h.0 != hosts[start].0)
            .map_or(hosts.len(), |n| start + n);
        for i in (start + 1..end).rev() {
            let j = start + pick(i - start + 1).min(i - start);
            hosts.swap(i, j);
        }
        start = end;
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_reserved_invalid_name_is_not_blamed_on_the_resolver() {
        let e = PlanError::NxDomain {
            domain: "example.INVALID".into(),
            resolver: "the nameserver 127.0.0.1:1".into(),
        };
        let text = e.to_string();
        assert!(
            text.contains("RFC 6761") && !text.contains("according to"),
            "{text}"
        );
        let e = PlanError::NxDomain {
            domain: "invalid.example.com".into(),
            resolver: "the nameserver 127.0.0.1:1".into(),
        };
        assert!(e.to_string().contains("according to"), "{e}");
    }
    use std::net::Ipv4Addr;

    use mockall::mock;
    use mockall::predicate::eq;

    use super::*;

    mock! {
        Dns {}
        #[async_trait]
        impl Resolver for Dns {
            async fn mx(&self, domain: &str) -> Result<Vec<MxRecord>, DnsError>;
            async fn addresses(&self, host: &str) -> Result<Vec<IpAddr>, DnsError>;
        }
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, last))
    }

    fn mx(preference: u16, exchange: &str) -> MxRecord {
        MxRecord {
            preference,
            exchange: exchange.to_owned(),
        }
    }

    fn first(_: usize) -> usize {
        0
    }

    async fn run(
        dns: &MockDns,
        pick: &mut (dyn FnMut(usize) -> usize + Send),
    ) -> Result<MxPlan, PlanError> {
        plan(dns, "example.net", pick, 5).await
    }

    /// A domain's thousand MX hosts whose address lookups each take 10 s:
    /// the 16 most preferred are looked up, at once.
    #[tokio::test(start_paused = true)]
    async fn many_slow_mx_hosts_cost_one_lookup_s_time_not_one_each() {
        struct Slow(std::sync::atomic::AtomicUsize);
        #[async_trait]
        impl Resolver for Slow {
            async fn mx(&self, _: &str) -> Result<Vec<MxRecord>, DnsError> {
                Ok((0..1000u16)
                    .map(|i| mx(i, &format!("mx{i}.example.net")))
                    .collect())
            }
            async fn addresses(&self, _: &str) -> Result<Vec<IpAddr>, DnsError> {
                self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::time::sleep(std::time::Duration::from_secs(10)).await;
                Err(DnsError::Temporary("timed out".into()))
            }
        }
        let dns = Slow(std::sync::atomic::AtomicUsize::new(0));
        let start = tokio::time::Instant::now();
        let e = plan(&dns, "example.net", &mut first, 5).await.unwrap_err();
        assert!(matches!(e, PlanError::Temporary { .. }), "{e}");
        assert_eq!(start.elapsed(), std::time::Duration::from_secs(10));
        assert_eq!(
            dns.0.load(std::sync::atomic::Ordering::SeqCst),
            MAX_MX_HOSTS
        );
    }

    #[tokio::test]
    async fn preference_order() {
        let mut dns = MockDns::new();
        dns.expect_mx()
            .with(eq("example.net"))
            .returning(|_| Ok(vec![mx(20, "b.example.net."), mx(10, "A.example.net.")]));
        dns.expect_addresses()
            .with(eq("a.example.net"))
            .returning(|_| Ok(vec![ip(1)]));
        dns.expect_addresses()
            .with(eq("b.example.net"))
            .returning(|_| Ok(vec![ip(2)]));
        let p = run(&dns, &mut first).await.unwrap();
        assert_eq!(p.kind, PlanKind::Mx);
        let names: Vec<&str> = p.hosts.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["a.example.net", "b.example.net"]);
        assert_eq!(p.attempts().count(), 2);
    }

    #[tokio::test]
    async fn equal_preferences_are_shuffled_by_the_given_source() {
        let mut dns = MockDns::new();
        dns.expect_mx()
            .returning(|_| Ok(vec![mx(10, "a."), mx(10, "b."), mx(10, "c."), mx(5, "z.")]));
        dns.expect_addresses().returning(|_| Ok(vec![ip(1)]));
        let order = |p: MxPlan| {
            p.hosts
                .into_iter()
                .map(|h| h.name)
                .collect::<Vec<_>>()
                .join(",")
        };
        assert_eq!(order(run(&dns, &mut first).await.unwrap()), "z,b,c,a");
        let mut last = |n: usize| n - 1;
        assert_eq!(order(run(&dns, &mut last).await.unwrap()), "z,a,b,c");
        // Every order shows up for some source; the lowest preference always leads.
        let mut seen = std::collections::HashSet::new();
        for seed in 0..64usize {
            let mut state = seed;
            let mut pick = move |n: usize| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407)
                    >> 7;
                state % n
            };
            let o = order(run(&dns, &mut pick).await.unwrap());
            assert!(o.starts_with("z,"));
            seen.insert(o);
        }
        assert_eq!(seen.len(), 6);
    }

    /// Hosts `a`, `b`, … at these preferences, in this order.
    fn hosts(preferences: &[u16]) -> Vec<(u16, String)> {
        let names = ["a", "b", "c", "d", "e", "f"];
        preferences
            .iter()
            .zip(names)
            .map(|(&p, name)| (p, name.to_owned()))
            .collect()
    }

    /// Shuffles hosts at `preferences` with `picks` as the source's answers,
    /// in order; returns the order and the `n` each pick was asked with.
    fn shuffled(preferences: &[u16], picks: &[usize]) -> (String, Vec<usize>) {
        let mut hosts = hosts(preferences);
        let mut asked = Vec::new();
        let mut answers = picks.iter().copied();
        shuffle_equal_preferences(&mut hosts, &mut |n| {
            asked.push(n);
            answers
                .next()
                .expect("no more picks than positions to fill")
        });
        assert_eq!(answers.next(), None, "every pick was used");
        let order = hosts.iter().map(|h| h.1.as_str()).collect::<Vec<_>>();
        (order.join(","), asked)
    }

    #[test]
    fn each_pick_sequence_gives_its_own_order_of_three_equal_hosts() {
        // From the back: pick(3) chooses which of the three takes the third
        // place, then pick(2) which of the first two takes the second.
        let table = [
            ([0, 0], "b,c,a"),
            ([0, 1], "c,b,a"),
            ([1, 0], "c,a,b"),
            ([1, 1], "a,c,b"),
            ([2, 0], "b,a,c"),
            ([2, 1], "a,b,c"),
        ];
        for (picks, order) in table {
            let got = shuffled(&[10, 10, 10], &picks);
            assert_eq!(got, (order.to_owned(), vec![3, 2]), "{picks:?}");
        }
    }

    #[test]
    fn each_run_of_equal_preferences_is_shuffled_in_its_own_place() {
        // a alone at 5, b c d at 10, e f at 20: the run at 10 asks for 3 then
        // 2, the run at 20 for 2, a lone host for nothing; no host leaves its run.
        let prefs = [5, 10, 10, 10, 20, 20];
        let asked = vec![3, 2, 2];
        assert_eq!(
            shuffled(&prefs, &[0, 0, 0]),
            ("a,c,d,b,f,e".to_owned(), asked.clone())
        );
        assert_eq!(
            shuffled(&prefs, &[1, 0, 1]),
            ("a,d,b,c,e,f".to_owned(), asked.clone())
        );
        assert_eq!(
            shuffled(&prefs, &[2, 1, 1]),
            ("a,b,c,d,e,f".to_owned(), asked)
        );
        assert_eq!(shuffled(&[7], &[]), ("a".to_owned(), vec![]));
        assert_eq!(shuffled(&[], &[]), (String::new(), vec![]));
    }

    #[test]
    fn a_pick_out_of_range_is_taken_as_the_last_choice() {
        // The last choice puts the host already there: nothing moves.
        let prefs = [5, 10, 10, 10, 20, 20];
        for wild in [3, 4, usize::MAX] {
            assert_eq!(
                shuffled(&prefs, &[wild, wild, wild]),
                ("a,b,c,d,e,f".to_owned(), vec![3, 2, 2]),
                "{wild}"
            );
        }
    }

    #[test]
    fn every_order_is_equally_likely() {
        // Every pick sequence once, i.e. a perfectly uniform source: each of
        // the 24 orders of four equal hosts comes out exactly once.
        let mut orders = std::collections::HashSet::new();
        for p4 in 0..4 {
            for p3 in 0..3 {
                for p2 in 0..2 {
                    orders.insert(shuffled(&[1, 1, 1, 1], &[p4, p3, p2]).0);
                }
            }
        }
        assert_eq!(orders.len(), 24);

        // A seeded generator (SplitMix64): over 6000 shuffles of three equal
        // hosts each of the 6 orders comes out about 1000 times (the standard
        // deviation is about 29). Deterministic: the same counts every run.
        let mut state: u64 = 0x5eed;
        let mut random_below = |n: usize| {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            usize::try_from(z % n as u64).expect("below n")
        };
        let mut counts = std::collections::BTreeMap::new();
        for _ in 0..6000 {
            let mut hosts = hosts(&[10, 10, 10]);
            shuffle_equal_preferences(&mut hosts, &mut random_below);
            let order = hosts.iter().map(|h| h.1.as_str()).collect::<String>();
            *counts.entry(order).or_insert(0) += 1;
        }
        assert_eq!(counts.len(), 6, "{counts:?}");
        assert!(
            counts.values().all(|&n| (900..=1100).contains(&n)),
            "{counts:?}"
        );
    }

    #[test]
    fn dns_errors_and_the_default_resolver_name_read_as_words() {
        assert_eq!(
            DnsError::NxDomain.to_string(),
            "the domain does not exist (NXDOMAIN)"
        );
        assert_eq!(
            DnsError::Temporary("SERVFAIL".to_owned()).to_string(),
            "DNS lookup failed for now (SERVFAIL)"
        );
        assert_eq!(MockDns::new().name(), "the DNS resolver");
    }

    #[tokio::test]
    async fn implicit_mx_from_addresses() {
        let mut dns = MockDns::new();
        dns.expect_mx().returning(|_| Ok(vec![]));
        dns.expect_addresses()
            .with(eq("example.net"))
            .returning(|_| Ok(vec![ip(9)]));
        let p = run(&dns, &mut first).await.unwrap();
        assert_eq!(p.kind, PlanKind::ImplicitMx);
        assert_eq!(p.hosts[0].name, "example.net");
    }

    #[tokio::test]
    async fn null_mx_is_permanent_without_address_lookups() {
        let mut dns = MockDns::new();
        dns.expect_mx().returning(|_| Ok(vec![mx(0, ".")]));
        dns.expect_addresses().never();
        let e = run(&dns, &mut first).await.unwrap_err();
        assert!(matches!(e, PlanError::NullMx { .. }) && e.is_permanent());
        assert!(e.to_string().contains("accepts no mail"));
    }

    #[tokio::test]
    async fn nxdomain_is_permanent_and_servfail_temporary() {
        let mut dns = MockDns::new();
        dns.expect_mx().returning(|_| Err(DnsError::NxDomain));
        assert!(run(&dns, &mut first).await.unwrap_err().is_permanent());
        let mut dns = MockDns::new();
        dns.expect_mx()
            .returning(|_| Err(DnsError::Temporary("SERVFAIL".into())));
        let e = run(&dns, &mut first).await.unwrap_err();
        assert!(!e.is_permanent());
        assert!(e.to_string().contains("SERVFAIL"));
    }

    #[tokio::test]
    async fn a_host_without_addresses_is_skipped() {
        let mut dns = MockDns::new();
        dns.expect_mx()
            .returning(|_| Ok(vec![mx(10, "dead."), mx(20, "live.")]));
        dns.expect_addresses()
            .with(eq("dead"))
            .returning(|_| Err(DnsError::NxDomain));
        dns.expect_addresses()
            .with(eq("live"))
            .returning(|_| Ok(vec![ip(2)]));
        let p = run(&dns, &mut first).await.unwrap();
        let attempts: Vec<_> = p.attempts().collect();
        assert_eq!(attempts, [("live", ip(2))]);
    }

    #[tokio::test]
    async fn only_temporary_failures_defer() {
        let mut dns = MockDns::new();
        dns.expect_mx().returning(|_| Ok(vec![mx(10, "a.")]));
        dns.expect_addresses()
            .returning(|_| Err(DnsError::Temporary("timeout".into())));
        assert!(matches!(
            run(&dns, &mut first).await,
            Err(PlanError::Temporary { .. })
        ));
    }

    #[tokio::test]
    async fn at_most_max_addresses() {
        let mut dns = MockDns::new();
        dns.expect_mx()
            .returning(|_| Ok(vec![mx(10, "a."), mx(20, "b."), mx(30, "c.")]));
        dns.expect_addresses()
            .returning(|_| Ok(vec![ip(1), ip(2), ip(3)]));
        let p = run(&dns, &mut first).await.unwrap();
        assert_eq!(p.attempts().count(), 5);
        assert_eq!(p.hosts.len(), 2);
    }
}
