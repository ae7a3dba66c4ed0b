//! SPF (RFC 7208): the record parsed by mail-auth, evaluated here through
//! our resolver ([`RecordResolver`]), so the doctor's lookups all go one
//! way and tests answer them from a zone on loopback. mail-auth's own
//! evaluation runs on its own hickory resolver, which the doctor cannot
//! point at what it is given.
//!
//! Supported: every mechanism (`all`, `include`, `a`, `mx`, `ptr`, `ip4`,
//! `ip6`, `exists`), dual CIDR lengths, `redirect=`, macros in domain
//! specifications (mail-auth expands them; `%{p}` is left empty, as RFC
//! 7208 §7.3 allows), the limits of §4.6.4: ten terms that query DNS
//! (`include`, `a`, `mx`, `ptr`, `exists`, `redirect`), ten names per `mx`
//! or `ptr`, two void lookups; more is `permerror`. Not done: `exp=`
//! (the explanation a receiver shows on failure; it changes no result),
//! and the HELO identity (only MAIL FROM's domain is checked).

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;

use mail_auth::common::parse::TxtRecordParser as _;
use mail_auth::spf::{Macro, Mechanism, Qualifier, Spf, Variables};
use smtp_core::delivery::mx::DnsError;
use smtp_dns::RecordResolver;

/// DNS-querying terms allowed in one evaluation (RFC 7208 §4.6.4).
const MAX_LOOKUPS: usize = 10;
/// Names looked at per `mx` or `ptr` mechanism.
const MAX_NAMES: usize = 10;
/// Lookups that found nothing, at most.
const MAX_VOID: usize = 2;

/// An SPF result (RFC 7208 §2.6).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum SpfResult {
    Pass,
    Fail,
    SoftFail,
    Neutral,
    /// No SPF record.
    None,
    /// A DNS failure for now.
    TempError(String),
    /// The record (or one it refers to) is broken.
    PermError(String),
}

impl SpfResult {
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Self::Pass => "pass",
            Self::Fail => "fail",
            Self::SoftFail => "softfail",
            Self::Neutral => "neutral",
            Self::None => "none",
            Self::TempError(_) => "temperror",
            Self::PermError(_) => "permerror",
        }
    }
}

/// The result, and the term that decided it (`-all in example.org`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Evaluation {
    pub(crate) result: SpfResult,
    pub(crate) decided_by: Option<String>,
}

/// The one SPF record of `domain`, as text: `Ok(None)` when there is
/// none; an error result when the lookup failed or there are several.
pub(crate) async fn record(
    resolver: &dyn RecordResolver,
    domain: &str,
) -> Result<Option<String>, SpfResult> {
    let records = match resolver.txt(domain).await {
        Ok(r) => r,
        Err(DnsError::NxDomain) => return Ok(None),
        Err(e) => return Err(SpfResult::TempError(e.to_string())),
    };
    let mut spf: Vec<String> = records.into_iter().filter(|r| is_spf(r)).collect();
    match spf.len() {
        0 => Ok(None),
        1 => Ok(spf.pop()),
        n => Err(SpfResult::PermError(format!(
            "{domain} has {n} SPF records; there must be one (RFC 7208 §4.5)"
        ))),
    }
}

/// Whether a TXT record is an SPF record: `v=spf1` alone or before a space.
fn is_spf(record: &str) -> bool {
    let r = record.as_bytes();
    r.len() >= 6 && r[..6].eq_ignore_ascii_case(b"v=spf1") && (r.len() == 6 || r[6] == b' ')
}

/// Parses an SPF record's text.
pub(crate) fn parse(text: &str) -> Result<Spf, String> {
    Spf::parse(text.as_bytes()).map_err(|e| format!("it does not parse ({e})"))
}

/// `check_host(ip, domain, sender)` of RFC 7208 §4.
pub(crate) async fn check_host(
    resolver: &dyn RecordResolver,
    ip: IpAddr,
    domain: &str,
    sender: &str,
) -> Evaluation {
    let mut eval = Eval {
        resolver,
        ip,
        sender: sender.to_owned(),
        lookups: 0,
        voids: 0,
    };
    eval.check(domain.trim_end_matches('.').to_owned()).await
}

struct Eval<'a> {
    resolver: &'a dyn RecordResolver,
    ip: IpAddr,
    sender: String,
    lookups: usize,
    voids: usize,
}

type Boxed<'s> = Pin<Box<dyn Future<Output = Evaluation> + Send + 's>>;

/// What one term came to.
enum Term {
    Match,
    NoMatch,
    Stop(SpfResult),
}

impl Eval<'_> {
    fn check(&mut self, domain: String) -> Boxed<'_> {
        Box::pin(async move {
            let decided = |result, by: Option<String>| Evaluation {
                result,
                decided_by: by,
            };
            let text = match record(self.resolver, &domain).await {
                Ok(Some(t)) => t,
                Ok(None) => return decided(SpfResult::None, None),
                Err(r) => return decided(r, None),
            };
            let spf = match parse(&text) {
                Ok(s) => s,
                Err(why) => {
                    return decided(
                        SpfResult::PermError(format!("the SPF record of {domain}: {why}")),
                        None,
                    );
                }
            };
            for directive in spf.directives.iter() {
                match self.term(&directive.mechanism, &domain).await {
                    Term::NoMatch => {}
                    // A broken record names the term of this record
                    // that led to it (the include to fix).
                    Term::Stop(r @ SpfResult::PermError(_)) => {
                        let by = format!(
                            "{} in {domain}",
                            describe(&directive.qualifier, &directive.mechanism)
                        );
                        return decided(r, Some(by));
                    }
                    Term::Stop(r) => return decided(r, None),
                    Term::Match => {
                        let result = match directive.qualifier {
                            Qualifier::Pass => SpfResult::Pass,
                            Qualifier::Fail => SpfResult::Fail,
                            Qualifier::SoftFail => SpfResult::SoftFail,
                            Qualifier::Neutral => SpfResult::Neutral,
                        };
                        let by = format!(
                            "{} in {domain}",
                            describe(&directive.qualifier, &directive.mechanism)
                        );
                        return decided(result, Some(by));
                    }
                }
            }
            if let Some(target) = &spf.redirect {
                if let Some(stop) = self.count() {
                    return decided(stop, None);
                }
                let target = self.expand(target, &domain);
                let mut inner = self.check(target.clone()).await;
                if inner.result == SpfResult::None {
                    inner.result = SpfResult::PermError(format!(
                        "{domain} redirects to {target}, which has no SPF record"
                    ));
                }
                return inner;
            }
            decided(
                SpfResult::Neutral,
                Some(format!("no term matched in {domain} (neutral by default)")),
            )
        })
    }

    /// Counts a term that queries DNS; the result that stops, past the limit.
    fn count(&mut self) -> Option<SpfResult> {
        self.lookups += 1;
        (self.lookups > MAX_LOOKUPS).then(|| {
            SpfResult::PermError(format!(
                "more than {MAX_LOOKUPS} DNS lookups (include, a, mx, ptr, exists, redirect; \
                 RFC 7208 §4.6.4)"
            ))
        })
    }

    /// Counts a lookup that found nothing.
    fn void(&mut self) -> Option<SpfResult> {
        self.voids += 1;
        (self.voids > MAX_VOID).then(|| {
            SpfResult::PermError(format!(
                "more than {MAX_VOID} lookups found nothing (RFC 7208 §4.6.4)"
            ))
        })
    }

    fn expand(&self, m: &Macro, domain: &str) -> String {
        let mut vars = Variables::new();
        vars.set_ip(&self.ip);
        vars.set_sender(self.sender.as_bytes().to_vec());
        vars.set_domain(domain.as_bytes().to_vec());
        m.eval(&vars, domain, false)
            .trim_end_matches('.')
            .to_owned()
    }

    async fn term(&mut self, mechanism: &Mechanism, domain: &str) -> Term {
        match mechanism {
            Mechanism::All => Term::Match,
            Mechanism::Ip4 { addr, mask } => match_mask(self.ip, IpAddr::V4(*addr), *mask, 0),
            Mechanism::Ip6 { addr, mask } => match_mask(self.ip, IpAddr::V6(*addr), 0, *mask),
            Mechanism::Include { macro_string } => {
                if let Some(stop) = self.count() {
                    return Term::Stop(stop);
                }
                let target = self.expand(macro_string, domain);
                let inner = self.check(target.clone()).await;
                match inner.result {
                    SpfResult::Pass => Term::Match,
                    SpfResult::Fail | SpfResult::SoftFail | SpfResult::Neutral => Term::NoMatch,
                    SpfResult::TempError(e) => Term::Stop(SpfResult::TempError(e)),
                    SpfResult::PermError(e) => Term::Stop(SpfResult::PermError(e)),
                    SpfResult::None => Term::Stop(SpfResult::PermError(format!(
                        "{domain} includes {target}, which has no SPF record"
                    ))),
                }
            }
            Mechanism::A {
                macro_string,
                ip4_mask,
                ip6_mask,
            } => {
                if let Some(stop) = self.count() {
                    return Term::Stop(stop);
                }
                let target = self.expand(macro_string, domain);
                self.addresses_match(&target, *ip4_mask, *ip6_mask).await
            }
            Mechanism::Mx {
                macro_string,
                ip4_mask,
                ip6_mask,
            } => {
                if let Some(stop) = self.count() {
                    return Term::Stop(stop);
                }
                let target = self.expand(macro_string, domain);
                let mut hosts = match self.resolver.mx(&target).await {
                    Ok(h) => h,
                    Err(DnsError::NxDomain) => Vec::new(),
                    Err(e) => return Term::Stop(SpfResult::TempError(e.to_string())),
                };
                hosts.retain(|h| h.exchange != "." && !h.exchange.is_empty());
                if hosts.is_empty() {
                    return self.void().map_or(Term::NoMatch, Term::Stop);
                }
                if hosts.len() > MAX_NAMES {
                    return Term::Stop(SpfResult::PermError(format!(
                        "{target} has more than {MAX_NAMES} MX records for its mx mechanism"
                    )));
                }
                for host in hosts {
                    match self
                        .addresses_match(&host.exchange, *ip4_mask, *ip6_mask)
                        .await
                    {
                        Term::NoMatch => {}
                        other => return other,
                    }
                }
                Term::NoMatch
            }
            Mechanism::Ptr { macro_string } => {
                if let Some(stop) = self.count() {
                    return Term::Stop(stop);
                }
                let target = self.expand(macro_string, domain).to_ascii_lowercase();
                // A failed PTR lookup is no match (RFC 7208 §5.5).
                let names: Vec<String> = self.resolver.ptr(self.ip).await.unwrap_or_default();
                for name in names.into_iter().take(MAX_NAMES) {
                    let name = name.to_ascii_lowercase();
                    if name != target && !name.ends_with(&format!(".{target}")) {
                        continue;
                    }
                    if let Ok(addrs) = self.resolver.addresses(&name).await
                        && addrs.contains(&self.ip)
                    {
                        return Term::Match;
                    }
                }
                Term::NoMatch
            }
            Mechanism::Exists { macro_string } => {
                if let Some(stop) = self.count() {
                    return Term::Stop(stop);
                }
                let target = self.expand(macro_string, domain);
                match self.resolver.addresses(&target).await {
                    Ok(a) if a.iter().any(IpAddr::is_ipv4) => Term::Match,
                    Ok(_) | Err(DnsError::NxDomain) => {
                        self.void().map_or(Term::NoMatch, Term::Stop)
                    }
                    Err(e) => Term::Stop(SpfResult::TempError(e.to_string())),
                }
            }
        }
    }

    /// Whether `host` has an address of the client's family within the masks.
    async fn addresses_match(&mut self, host: &str, ip4_mask: u32, ip6_mask: u128) -> Term {
        let addrs = match self.resolver.addresses(host).await {
            Ok(a) => a,
            Err(DnsError::NxDomain) => Vec::new(),
            Err(e) => return Term::Stop(SpfResult::TempError(e.to_string())),
        };
        let same: Vec<IpAddr> = addrs
            .into_iter()
            .filter(|a| a.is_ipv4() == self.ip.is_ipv4())
            .collect();
        if same.is_empty() {
            return self.void().map_or(Term::NoMatch, Term::Stop);
        }
        for a in same {
            if let Term::Match = match_mask(self.ip, a, ip4_mask, ip6_mask) {
                return Term::Match;
            }
        }
        Term::NoMatch
    }
}

/// Whether `ip` is in `net` under the mask of its family.
fn match_mask(ip: IpAddr, net: IpAddr, ip4_mask: u32, ip6_mask: u128) -> Term {
    let hit = match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(b)) => u32::from(a) & ip4_mask == u32::from(b) & ip4_mask,
        (IpAddr::V6(a), IpAddr::V6(b)) => u128::from(a) & ip6_mask == u128::from(b) & ip6_mask,
        _ => false,
    };
    if hit { Term::Match } else { Term::NoMatch }
}

/// A directive as written, near enough (`-all`, `ip4:192.0.2.0/24`,
/// `include:…`).
fn describe(q: &Qualifier, m: &Mechanism) -> String {
    let q = match q {
        Qualifier::Pass => "",
        Qualifier::Fail => "-",
        Qualifier::SoftFail => "~",
        Qualifier::Neutral => "?",
    };
    let m = match m {
        Mechanism::All => "all".to_owned(),
        Mechanism::Ip4 { addr, mask } => format!("ip4:{addr}/{}", mask.count_ones()),
        Mechanism::Ip6 { addr, mask } => format!("ip6:{addr}/{}", mask.count_ones()),
        Mechanism::Include { macro_string } => format!("include{}", spec(macro_string)),
        Mechanism::A { macro_string, .. } => format!("a{}", spec(macro_string)),
        Mechanism::Mx { macro_string, .. } => format!("mx{}", spec(macro_string)),
        Mechanism::Ptr { macro_string } => format!("ptr{}", spec(macro_string)),
        Mechanism::Exists { macro_string } => format!("exists{}", spec(macro_string)),
    };
    format!("{q}{m}")
}

/// A domain specification as written: `:example.org`, nothing for the
/// current domain, `:%{…}` for a macro.
fn spec(m: &Macro) -> String {
    match m {
        Macro::None => String::new(),
        Macro::Literal(l) => format!(":{}", String::from_utf8_lossy(l)),
        Macro::Variable { .. } | Macro::List(_) => ":%{…}".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;

    use async_trait::async_trait;
    use smtp_core::delivery::mx::{MxRecord, Resolver};

    use super::*;

    /// Answers from maps; a name in none of them is NXDOMAIN. Counts the
    /// queries.
    #[derive(Default)]
    struct Fake {
        txt: HashMap<String, Vec<String>>,
        a: HashMap<String, Vec<IpAddr>>,
        mx: HashMap<String, Vec<MxRecord>>,
        ptr: HashMap<IpAddr, Vec<String>>,
        queries: Mutex<usize>,
    }

    impl Fake {
        fn txt(mut self, name: &str, value: &str) -> Self {
            self.txt.entry(name.into()).or_default().push(value.into());
            self
        }
        fn a(mut self, name: &str, ip: &str) -> Self {
            self.a
                .entry(name.into())
                .or_default()
                .push(ip.parse().unwrap());
            self
        }
        fn asked(&self) {
            *self.queries.lock().unwrap() += 1;
        }
    }

    #[async_trait]
    impl Resolver for Fake {
        async fn mx(&self, domain: &str) -> Result<Vec<MxRecord>, DnsError> {
            self.asked();
            self.mx.get(domain).cloned().ok_or(DnsError::NxDomain)
        }
        async fn addresses(&self, host: &str) -> Result<Vec<IpAddr>, DnsError> {
            self.asked();
            self.a.get(host).cloned().ok_or(DnsError::NxDomain)
        }
    }

    #[async_trait]
    impl RecordResolver for Fake {
        async fn txt(&self, name: &str) -> Result<Vec<String>, DnsError> {
            self.asked();
            if name == "broken.example" {
                return Err(DnsError::Temporary("SERVFAIL".into()));
            }
            self.txt.get(name).cloned().ok_or(DnsError::NxDomain)
        }
        async fn ptr(&self, ip: IpAddr) -> Result<Vec<String>, DnsError> {
            self.asked();
            self.ptr.get(&ip).cloned().ok_or(DnsError::NxDomain)
        }
        async fn srv(&self, _: &str) -> Result<Vec<smtp_dns::SrvRecord>, DnsError> {
            // SPF evaluation looks up no SRV records.
            self.asked();
            Err(DnsError::NxDomain)
        }
    }

    fn run(fake: &Fake, ip: &str, domain: &str) -> Evaluation {
        let ip = ip.parse().unwrap();
        block_on(check_host(fake, ip, domain, &format!("a@{domain}")))
    }

    /// The evaluation, on a current-thread runtime.
    fn block_on<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn ip6_cidr_and_the_default_result() {
        let fake = Fake::default().txt("e.example", "v=spf1 ip6:2001:db8::/32 ip4:192.0.2.0/25");
        assert_eq!(
            run(&fake, "2001:db8:1::1", "e.example").result,
            SpfResult::Pass
        );
        assert_eq!(
            run(&fake, "192.0.2.100", "e.example").result,
            SpfResult::Pass
        );
        let e = run(&fake, "192.0.2.200", "e.example");
        assert_eq!(e.result, SpfResult::Neutral);
        assert!(e.decided_by.unwrap().contains("no term matched"));
    }

    #[test]
    fn an_include_without_a_record_is_a_permerror_and_a_failing_lookup_a_temperror() {
        let fake = Fake::default()
            .txt("e.example", "v=spf1 include:gone.example -all")
            .txt("t.example", "v=spf1 include:broken.example -all");
        assert!(matches!(
            run(&fake, "192.0.2.1", "e.example").result,
            SpfResult::PermError(_)
        ));
        assert!(matches!(
            run(&fake, "192.0.2.1", "t.example").result,
            SpfResult::TempError(_)
        ));
    }

    #[test]
    fn more_than_two_void_lookups_is_a_permerror() {
        let fake = Fake::default().txt(
            "e.example",
            "v=spf1 a:v1.example a:v2.example a:v3.example -all",
        );
        let e = run(&fake, "192.0.2.1", "e.example");
        assert!(
            matches!(&e.result, SpfResult::PermError(w) if w.contains("found nothing")),
            "{e:?}"
        );
        let fake = Fake::default().txt("e.example", "v=spf1 a:v1.example a:v2.example -all");
        assert_eq!(run(&fake, "192.0.2.1", "e.example").result, SpfResult::Fail);
    }

    #[test]
    fn macros_are_expanded_for_exists() {
        let fake = Fake::default()
            .txt("e.example", "v=spf1 exists:%{ir}.%{l}._spf.%{d} -all")
            .a("1.2.0.192.a._spf.e.example", "127.0.0.2");
        assert_eq!(run(&fake, "192.0.2.1", "e.example").result, SpfResult::Pass);
        assert_eq!(run(&fake, "192.0.2.9", "e.example").result, SpfResult::Fail);
    }

    #[test]
    fn the_ptr_mechanism_needs_a_confirmed_name_under_the_domain() {
        let mut fake = Fake::default()
            .txt("e.example", "v=spf1 ptr -all")
            .a("mail.e.example", "192.0.2.1");
        fake.ptr
            .insert("192.0.2.1".parse().unwrap(), vec!["mail.e.example".into()]);
        fake.ptr
            .insert("192.0.2.2".parse().unwrap(), vec!["mail.e.example".into()]);
        assert_eq!(run(&fake, "192.0.2.1", "e.example").result, SpfResult::Pass);
        assert_eq!(run(&fake, "192.0.2.2", "e.example").result, SpfResult::Fail);
    }

    #[test]
    fn a_redirect_loop_stops_at_the_lookup_limit() {
        let fake = Fake::default().txt("e.example", "v=spf1 redirect=e.example");
        let e = run(&fake, "192.0.2.1", "e.example");
        assert!(
            matches!(&e.result, SpfResult::PermError(w) if w.contains("more than 10")),
            "{e:?}"
        );
        assert!(*fake.queries.lock().unwrap() <= 12);
    }
}
