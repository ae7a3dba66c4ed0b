//! The checks that only look things up: reverse DNS, blocklists, SPF,
//! DKIM, DMARC and the sender domain's MX.

use std::net::IpAddr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use mail_auth::common::parse::TxtRecordParser as _;
use mail_auth::common::verify::DomainKey;
use mail_auth::dmarc::{Dmarc, Policy};
use smtp_core::delivery::mx::{DnsError, PlanError, PlanKind, Resolver, plan};
use smtp_dns::RecordResolver;

use super::spf::{self, SpfResult};
use super::{Check, Setup, Status};
use crate::dkim::{Key, dns_name};

/// Said when a check needs the public address and has none.
const GIVE_IP: &str = "give this machine's public address with --ip ADDR";

/// The PTR record of `ip` and whether its name resolves back to `ip`
/// (forward-confirmed reverse DNS).
pub(super) async fn ptr(resolver: &dyn RecordResolver, ip: Option<IpAddr>) -> Check {
    const ID: &str = "ptr";
    let Some(ip) = ip else {
        return Check::warn(
            ID,
            "not checked: this machine's public address is unknown",
            GIVE_IP,
        );
    };
    let set_one = format!(
        "ask whoever owns {ip} (your hosting or Internet provider; often a \"reverse DNS\" field \
         in its control panel) for a PTR record naming this host, give that name an A/AAAA \
         record of {ip}, and send EHLO with it (--helo)"
    );
    let names = match resolver.ptr(ip).await {
        Ok(n) if !n.is_empty() => n,
        Ok(_) | Err(DnsError::NxDomain) => {
            return Check::fail(
                ID,
                format!(
                    "{ip} has no PTR record (reverse DNS): many receivers refuse or distrust mail from it"
                ),
                set_one,
            );
        }
        Err(e) => {
            return Check::warn(
                ID,
                format!("could not look up the PTR record of {ip}: {e}"),
                "try again, or another resolver (--dns-server)",
            );
        }
    };
    let mut failures = Vec::new();
    for name in &names {
        match resolver.addresses(name).await {
            Ok(addrs) if addrs.contains(&ip) => {
                return Check::pass(ID, format!("{ip} -> {name} -> {ip} (forward-confirmed)"));
            }
            Ok(addrs) if addrs.is_empty() => failures.push(format!("{name} has no address")),
            Ok(addrs) => failures.push(format!(
                "{name} resolves to {}",
                addrs
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            Err(DnsError::NxDomain) => failures.push(format!("{name} does not exist")),
            Err(e) => {
                return Check::warn(
                    ID,
                    format!("{ip} -> {name}, whose addresses could not be looked up: {e}"),
                    "try again, or another resolver (--dns-server)",
                );
            }
        }
    }
    Check::fail(
        ID,
        format!(
            "{ip} -> {}, but not back to {ip} ({}): receivers treat that as no reverse DNS",
            names.join(", "),
            failures.join("; ")
        ),
        format!(
            "give {} an A/AAAA record of {ip}, or have the PTR record changed to a name that has one",
            names.first().map_or("the name", String::as_str)
        ),
    )
}

/// What one blocklist said.
enum Listing {
    Clear,
    Listed(Vec<IpAddr>),
    Refused(IpAddr),
    Odd(Vec<IpAddr>),
    Failed(String),
}

/// `ip` looked up in each DNS blocklist zone: `4.3.2.1.zone` (IPv6 by
/// nibbles). NXDOMAIN is not listed; 127.0.0.x is listed; 127.255.255.x
/// is the list refusing the query (Spamhaus answers so to public and
/// unregistered resolvers).
pub(super) async fn dnsbl(
    resolver: &dyn RecordResolver,
    ip: Option<IpAddr>,
    zones: &[String],
) -> Check {
    const ID: &str = "dnsbl";
    let Some(ip) = ip else {
        return Check::warn(
            ID,
            "not checked: this machine's public address is unknown",
            GIVE_IP,
        );
    };
    let reversed = reverse(ip);
    let mut listed = Vec::new();
    let mut unsure = Vec::new();
    let (mut refused, mut failed) = (false, false);
    for zone in zones {
        let name = format!("{reversed}.{zone}");
        let listing = match resolver.addresses(&name).await {
            Err(DnsError::NxDomain) => Listing::Clear,
            Err(e) => Listing::Failed(e.to_string()),
            Ok(addrs) => {
                let v4: Vec<IpAddr> = addrs.into_iter().filter(IpAddr::is_ipv4).collect();
                let octets = |a: &IpAddr| match a {
                    IpAddr::V4(v) => v.octets(),
                    IpAddr::V6(_) => [0; 4],
                };
                if v4.is_empty() {
                    Listing::Clear
                } else if let Some(r) = v4.iter().find(|a| octets(a)[..3] == [127, 255, 255]) {
                    Listing::Refused(*r)
                } else if v4.iter().all(|a| octets(a)[0] == 127) {
                    Listing::Listed(v4)
                } else {
                    Listing::Odd(v4)
                }
            }
        };
        match listing {
            Listing::Clear => {}
            Listing::Listed(codes) => listed.push(format!(
                "{zone} ({})",
                codes.iter().map(|c| meaning(zone, *c)).collect::<Vec<_>>().join(", ")
            )),
            Listing::Refused(code) => {
                refused = true;
                unsure.push(format!("{zone} refused the query ({code})"));
            }
            Listing::Odd(addrs) => unsure.push(format!(
                "{zone} answered {}, not a 127.0.0.x code (the list may be gone, answering everything)",
                addrs.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
            )),
            Listing::Failed(e) => {
                failed = true;
                unsure.push(format!("{zone}: {e}"));
            }
        }
    }
    if !listed.is_empty() {
        return Check::fail(
            ID,
            format!("{ip} is listed on {}", listed.join("; ")),
            format!(
                "look {ip} up on each list's web site: it says why and how to be removed. An \
                 address of a home or dynamic range (Spamhaus PBL) is listed on purpose and \
                 cannot send mail directly: send through your provider's submission server \
                 (--server)"
            ),
        );
    }
    if !unsure.is_empty() {
        // A refusal (127.255.255.x) is the list turning a public resolver
        // away; a timeout or SERVFAIL says nothing of the kind.
        let advice = if refused {
            "blocklists refuse queries from large public resolvers: ask through your own \
             resolver (--dns-server, e.g. a local unbound), then check again"
        } else if failed {
            "the lookups did not complete (a timeout or a failure is not a refusal): check \
             again later, or through another resolver (--dns-server)"
        } else {
            "a list that answers every query is gone or broken: leave it out (--dnsbl names \
             the lists to ask)"
        };
        return Check::warn(
            ID,
            format!("{ip}: not listed where asked, but {}", unsure.join("; ")),
            advice,
        );
    }
    Check::pass(ID, format!("{ip} is not listed on {}", zones.join(", ")))
}

/// The reversed form a blocklist is asked with: `4.3.2.1` for 1.2.3.4,
/// nibbles for IPv6.
fn reverse(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            format!("{d}.{c}.{b}.{a}")
        }
        IpAddr::V6(v6) => v6
            .octets()
            .iter()
            .rev()
            .flat_map(|o| [o & 0x0f, o >> 4])
            .map(|n| format!("{n:x}"))
            .collect::<Vec<_>>()
            .join("."),
    }
}

/// A return code in words, where the list's codes are known.
fn meaning(zone: &str, code: IpAddr) -> String {
    let IpAddr::V4(v4) = code else {
        return code.to_string();
    };
    let what = if zone.ends_with("spamhaus.org") {
        match v4.octets()[3] {
            2 => Some("SBL: a spam source"),
            3 => Some("SBL CSS: a low-reputation sender"),
            4..=7 => Some("XBL: an infected or exploited host"),
            9 => Some("DROP: a hijacked network"),
            10 => Some("PBL: the ISP says this range should not send mail directly"),
            11 => Some("PBL: a dynamic or residential range"),
            _ => None,
        }
    } else {
        None
    };
    match what {
        Some(w) => format!("{v4}, {w}"),
        None => v4.to_string(),
    }
}

/// The sender domain's SPF record: there is one, it parses, and it
/// authorises this machine's address (or the relay's).
pub(super) async fn spf(resolver: &dyn RecordResolver, setup: &Setup, ip: Option<IpAddr>) -> Check {
    const ID: &str = "spf";
    let domain = setup.domain.as_str();
    // A relay on a loopback or private address (a local Postfix, a
    // smarthost on the LAN) sends on from this network: SPF is judged on
    // this machine's public address, as for direct delivery.
    let relay = match &setup.relay {
        Some((host, _)) => {
            let ips = match host.parse::<IpAddr>() {
                Ok(ip) => Ok(vec![ip]),
                Err(_) => match resolver.addresses(host).await {
                    Ok(a) if !a.is_empty() => Ok(a),
                    Ok(_) | Err(_) => Err(host),
                },
            };
            match ips {
                Ok(ips) if ips.iter().all(|a| !super::probe::is_public(*a)) => {
                    Relay::Local(host, ips[0])
                }
                Ok(ips) => Relay::Remote(host, ips),
                Err(host) => Relay::Unresolved(host),
            }
        }
        None => Relay::None,
    };
    let remote = matches!(relay, Relay::Remote(..) | Relay::Unresolved(_));
    let example = match (remote, ip) {
        (true, _) => "v=spf1 include:<your provider's SPF domain> -all".to_owned(),
        (false, Some(IpAddr::V4(v4))) => format!("v=spf1 ip4:{v4} -all"),
        (false, Some(IpAddr::V6(v6))) => format!("v=spf1 ip6:{v6} -all"),
        (false, None) => "v=spf1 ip4:<this machine's address> -all".to_owned(),
    };
    let text = match spf::record(resolver, domain).await {
        Ok(Some(t)) => t,
        Ok(None) => {
            return Check::fail(
                ID,
                format!(
                    "{domain} has no SPF record: receivers cannot tell which hosts may send its mail"
                ),
                format!("publish a TXT record at {domain}: {example}"),
            );
        }
        Err(SpfResult::TempError(e)) => {
            return Check::warn(
                ID,
                format!("could not look up the SPF record of {domain}: {e}"),
                "try again, or another resolver (--dns-server)",
            );
        }
        Err(other) => return broken(domain, &other),
    };
    if let Err(why) = spf::parse(&text) {
        return Check::fail(
            ID,
            format!("the SPF record of {domain} ({text}): {why}"),
            format!("fix it to RFC 7208's syntax, e.g. {example}"),
        );
    }
    // Whose addresses must be authorised.
    let mut note = String::new();
    let (who, ips) = match (relay, ip) {
        (Relay::Unresolved(host), _) => {
            return Check::warn(
                ID,
                format!(
                    "{domain}: {text} (it parses); the relay {host} has no address to check it against"
                ),
                "check --server's name",
            );
        }
        (Relay::Remote(host, ips), _) => (format!("the relay {host}"), ips),
        (Relay::Local(host, at), Some(ip)) => {
            note = format!(
                " (checked for this network's public address: the relay {host} is on {at}, a \
                 local address, so its mail leaves from here)"
            );
            ("this machine".to_owned(), vec![ip])
        }
        (Relay::Local(host, at), None) => {
            return Check::warn(
                ID,
                format!(
                    "{domain}: {text} (it parses); the relay {host} is on {at}, a local address: \
                     its mail leaves from this network's public address, which is unknown"
                ),
                GIVE_IP,
            );
        }
        (Relay::None, Some(ip)) => ("this machine".to_owned(), vec![ip]),
        (Relay::None, None) => {
            return Check::warn(
                ID,
                format!(
                    "{domain}: {text} (it parses); whether it lets this machine send is unknown"
                ),
                GIVE_IP,
            );
        }
    };
    let mut results = Vec::new();
    for a in &ips {
        let e = spf::check_host(resolver, *a, domain, &setup.from).await;
        if e.result == SpfResult::Pass {
            return Check::pass(
                ID,
                format!(
                    "{domain}: {text}; it authorises {who} ({a}: pass{}){note}",
                    e.decided_by
                        .map(|b| format!(", by {b}"))
                        .unwrap_or_default()
                ),
            );
        }
        results.push((*a, e));
    }
    // No address passed: the worst result speaks.
    let (a, e) = results
        .iter()
        .find(|(_, e)| matches!(e.result, SpfResult::PermError(_)))
        .or_else(|| results.iter().find(|(_, e)| e.result == SpfResult::Fail))
        .or_else(|| results.first())
        .map(|(a, e)| (*a, e.clone()))
        .unwrap_or((
            ips[0],
            spf::Evaluation {
                result: SpfResult::None,
                decided_by: None,
            },
        ));
    let by = e
        .decided_by
        .as_ref()
        .map(|b| format!(", by {b}"))
        .unwrap_or_default();
    let add = match (remote, a) {
        (true, _) => "add the include: your relay's provider documents for SPF".to_owned(),
        (false, IpAddr::V4(v4)) => format!("add ip4:{v4} before the all term"),
        (false, IpAddr::V6(v6)) => format!("add ip6:{v6} before the all term"),
    };
    let summary = format!(
        "{domain}: {text}; {who} ({a}) gets {}{by}{note}",
        e.result.name()
    );
    match &e.result {
        SpfResult::PermError(why) => Check::fail(
            ID,
            format!("{summary}: {why}"),
            match &e.decided_by {
                Some(term) => format!(
                    "receivers treat a broken SPF record as none at all (permerror): fix or \
                     replace {term} (the error comes through it: {why}); fewer includes, or \
                     flattening them into ip4:/ip6: terms, keeps within the limits"
                ),
                None => "receivers treat a broken SPF record as none at all (permerror): fix it \
                         (fewer includes, or flatten them into ip4:/ip6: terms)"
                    .to_owned(),
            },
        ),
        SpfResult::TempError(why) => Check::warn(
            ID,
            format!("{summary}: {why}"),
            "try again, or another resolver (--dns-server)",
        ),
        // A relay's submission address is often not the one it sends
        // from: its result is a warning, never a failure.
        _ if remote => Check::warn(
            ID,
            summary,
            format!(
                "{add}, if it is not there; its submission address ({a}) may not be where it sends from"
            ),
        ),
        SpfResult::Fail => {
            Check::fail(ID, format!("{summary}: receivers may refuse its mail"), add)
        }
        _ => Check::warn(
            ID,
            format!("{summary}: receivers may treat its mail as suspect"),
            add,
        ),
    }
}

/// The relay mail goes through, for SPF.
enum Relay<'s> {
    /// Direct delivery.
    None,
    /// A relay elsewhere, with its addresses.
    Remote(&'s str, Vec<IpAddr>),
    /// A relay on a loopback or private address (one of them shown): it
    /// sends on from this network's public address.
    Local(&'s str, IpAddr),
    /// A relay whose name has no address.
    Unresolved(&'s str),
}

fn broken(domain: &str, result: &SpfResult) -> Check {
    let why = match result {
        SpfResult::PermError(w) | SpfResult::TempError(w) => w.clone(),
        other => other.name().to_owned(),
    };
    Check::fail(
        "spf",
        why,
        format!(
            "keep one TXT record starting v=spf1 at {domain}, with every authorised host in it"
        ),
    )
}

/// Tags of a DKIM key record (`v=DKIM1; k=rsa; p=…`), values without
/// white space (RFC 6376 §3.6.1 allows it inside `p=`).
fn tags(record: &str) -> Vec<(String, String)> {
    record
        .split(';')
        .filter_map(|t| t.split_once('='))
        .map(|(k, v)| {
            (
                k.trim().to_ascii_lowercase(),
                v.chars().filter(|c| !c.is_ascii_whitespace()).collect(),
            )
        })
        .collect()
}

fn tag<'t>(tags: &'t [(String, String)], name: &str) -> Option<&'t str> {
    tags.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// The DKIM key published at `SELECTOR._domainkey.DOMAIN`, whether it
/// is the public half of the configured private key, and whether its
/// domain aligns with the `--from` domain (RFC 7489 relaxed alignment:
/// DMARC counts only such signatures).
pub(super) async fn dkim(resolver: &dyn RecordResolver, setup: &Setup) -> Check {
    let mut check = published_key(resolver, setup).await;
    let d = setup.dkim.domain.as_deref().unwrap_or(&setup.domain);
    if setup.dkim.selector.is_none() || crate::dkim::aligned(d, &setup.domain) {
        return check;
    }
    let from = &setup.domain;
    let why = format!(
        "the signing domain d={d} does not align with the From domain {from}: DMARC does not \
         count its signatures for {from} (it needs the same organisational domain, {})",
        crate::dkim::organisational(from)
    );
    let fix = format!(
        "sign with --dkim-domain {from} (or another domain under {}), with a key published \
         there",
        crate::dkim::organisational(from)
    );
    if check.status == Status::Pass {
        return Check::warn(check.id, format!("{}; but {why}", check.summary), fix);
    }
    check.summary = format!("{}; and {why}", check.summary);
    check.advice = Some(match check.advice.take() {
        Some(a) => format!("{a}; and {fix}"),
        None => fix,
    });
    check
}

/// The key published at `SELECTOR._domainkey.DOMAIN` and whether it is
/// the public half of the configured private key.
async fn published_key(resolver: &dyn RecordResolver, setup: &Setup) -> Check {
    const ID: &str = "dkim";
    let Some(selector) = &setup.dkim.selector else {
        return Check::warn(
            ID,
            "not checked: no DKIM selector given",
            "give --dkim-selector S (and --dkim-key FILE, the key you sign with) or an account \
             with dkim_selector; if a relay signs for you, look for dkim=pass in a received \
             message's Authentication-Results",
        );
    };
    let domain = setup.dkim.domain.as_deref().unwrap_or(&setup.domain);
    let (selector, domain) = match (dns_name(selector), dns_name(domain)) {
        (Ok(s), Ok(d)) => (s, d),
        (Err(e), _) | (_, Err(e)) => {
            return Check::fail(
                ID,
                format!("not a DNS name: {e}"),
                "give --dkim-selector and --dkim-domain as DNS names",
            );
        }
    };
    let name = format!("{selector}._domainkey.{domain}");
    let key = match &setup.dkim.key {
        Some(path) => match Key::read(path) {
            Ok(k) => Some((path, k)),
            Err(f) => {
                return Check::fail(
                    ID,
                    f.message,
                    "give the private key you sign with (`smtp dkim keygen` makes one)",
                );
            }
        },
        None => None,
    };
    let publish = match &key {
        Some((path, _)) => format!(
            "publish the record `smtp dkim record --key {} --selector {selector} --domain {domain}` prints",
            path.display()
        ),
        None => format!(
            "make a key with `smtp dkim keygen --selector {selector} --domain {domain}` and publish the record it prints"
        ),
    };
    let records = match resolver.txt(&name).await {
        Ok(r) => r,
        Err(DnsError::NxDomain) => Vec::new(),
        Err(e) => {
            return Check::warn(
                ID,
                format!("could not look up {name}: {e}"),
                "try again, or another resolver (--dns-server)",
            );
        }
    };
    let mut keys: Vec<(String, Vec<(String, String)>)> = records
        .into_iter()
        .map(|r| {
            let t = tags(&r);
            (r, t)
        })
        .filter(|(_, t)| tag(t, "p").is_some())
        .collect();
    let (text, published) = match keys.len() {
        0 => {
            return Check::fail(
                ID,
                format!(
                    "no DKIM key is published at {name}: receivers cannot check signatures by selector {selector}"
                ),
                publish,
            );
        }
        1 => keys.remove(0),
        n => {
            return Check::fail(
                ID,
                format!("{n} DKIM key records at {name}: receivers may take either"),
                format!("keep one; {publish}"),
            );
        }
    };
    if tag(&published, "v").is_some_and(|v| v != "DKIM1") {
        return Check::fail(ID, format!("the record at {name} is not v=DKIM1"), publish);
    }
    let p = tag(&published, "p").unwrap_or_default();
    if p.is_empty() {
        return Check::fail(
            ID,
            format!("the key at {name} is revoked (empty p=): signatures by it fail"),
            publish,
        );
    }
    let k = tag(&published, "k").unwrap_or("rsa").to_ascii_lowercase();
    // A value published as one string of over 255 characters is cut at
    // 255 by some DNS tools and providers.
    let cut = if text.len() == TXT_STRING {
        format!(" (the record is exactly {TXT_STRING} characters long: it was probably cut there)")
    } else {
        String::new()
    };
    let split = format!(
        "publish the value whole: in a zone file as several quoted strings of at most \
         {TXT_STRING} characters in one TXT record (\"v=DKIM1; k=rsa; p=MIIB…\" \"…IDAQAB\"), as \
         `smtp dkim record` prints it (most DNS providers' forms take the whole value and split \
         it themselves); check with dig +short TXT {name}"
    );
    let Ok(public) = BASE64.decode(p) else {
        return Check::fail(
            ID,
            format!(
                "the p= of {name} is not whole base64 ({} characters){cut}: receivers cannot read the key",
                p.len()
            ),
            split,
        );
    };
    if let Err(why) = key_shape(&k, &public) {
        let advice = if why.cut { split } else { publish };
        return Check::fail(
            ID,
            format!(
                "the key at {name} {}{cut}: receivers cannot use it",
                why.what
            ),
            advice,
        );
    }
    if let Some((_, key)) = &key {
        let ours = match key.kind() {
            crate::dkim::Kind::Rsa { .. } => "rsa",
            crate::dkim::Kind::Ed25519 => "ed25519",
        };
        if k != ours {
            return Check::fail(
                ID,
                format!(
                    "the record at {name} says k={k}, but the key you sign with is {ours}: \
                     receivers check signatures with the wrong algorithm"
                ),
                format!("{publish} (k={ours})"),
            );
        }
    }
    if let Err(e) = DomainKey::parse(text.as_bytes()) {
        return Check::fail(
            ID,
            format!("the record at {name} does not hold a usable key ({e})"),
            publish,
        );
    }
    let Some((path, key)) = key else {
        return Check::warn(
            ID,
            format!("{name} publishes a key (k={k}); not compared with a private key"),
            "give the key you sign with (--dkim-key FILE, or an account's dkim_key) to check that it is this one",
        );
    };
    let ours = tags(&key.record());
    let ours = tag(&ours, "p")
        .and_then(|p| BASE64.decode(p).ok())
        .unwrap_or_default();
    if ours.len() > public.len() && ours.starts_with(&public) {
        return Check::fail(
            ID,
            format!(
                "{name} publishes the first {} of the {} octets of {}'s public key: its p= was \
                 cut{cut}",
                public.len(),
                ours.len(),
                path.display()
            ),
            split,
        );
    }
    if ours == public {
        Check::pass(
            ID,
            format!(
                "{name} publishes the public half of {} (k={k})",
                path.display()
            ),
        )
    } else {
        Check::fail(
            ID,
            format!(
                "{name} publishes another key than {}'s: receivers will find signatures by it invalid",
                path.display()
            ),
            format!("{publish}, or sign with the key that matches the record"),
        )
    }
}

/// A TXT record's character-strings hold at most 255 octets each.
const TXT_STRING: usize = 255;

/// Why a published `p=` is not a key of its `k=`.
struct BadKey {
    what: String,
    /// The value looks cut short (split it into strings).
    cut: bool,
}

/// Whether `public` (the decoded `p=`) has the shape of a `k` key: for
/// RSA a DER SEQUENCE (SubjectPublicKeyInfo, or PKCS#1) whose length
/// covers it exactly, for Ed25519 32 octets.
fn key_shape(k: &str, public: &[u8]) -> Result<(), BadKey> {
    let der_len = || -> Option<usize> {
        // SEQUENCE, then a definite length: short form, or 0x81/0x82 and
        // the octets.
        if public.first() != Some(&0x30) {
            return None;
        }
        let first = *public.get(1)?;
        if first < 0x80 {
            return Some(2 + usize::from(first));
        }
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 2 {
            return None;
        }
        let len = public
            .get(2..2 + n)?
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        Some(2 + n + len)
    };
    match k {
        "rsa" => match der_len() {
            Some(total) if total == public.len() => Ok(()),
            Some(total) if total > public.len() => Err(BadKey {
                what: format!(
                    "is cut short: its p= holds {} of the {total} octets the key declares",
                    public.len()
                ),
                cut: true,
            }),
            _ if public.len() == 32 => Err(BadKey {
                what: "says k=rsa, but its p= is 32 octets, an Ed25519 key (k=ed25519)".into(),
                cut: false,
            }),
            _ => Err(BadKey {
                what: format!(
                    "has a p= of {} octets that is not an RSA public key",
                    public.len()
                ),
                cut: false,
            }),
        },
        "ed25519" if public.len() == 32 => Ok(()),
        "ed25519" if der_len().is_some() => Err(BadKey {
            what: "says k=ed25519, but its p= is an RSA key (k=rsa)".into(),
            cut: false,
        }),
        "ed25519" => Err(BadKey {
            what: format!(
                "has a p= of {} octets; an Ed25519 key (k=ed25519) has 32",
                public.len()
            ),
            cut: false,
        }),
        other => Err(BadKey {
            what: format!("says k={other}: DKIM keys are k=rsa or k=ed25519"),
            cut: false,
        }),
    }
}

/// The sender domain's DMARC record and its policy: at `_dmarc.DOMAIN`,
/// else at the organisational domain (here: the last two labels, as no
/// public suffix list is at hand), where `sp=` applies to subdomains.
pub(super) async fn dmarc(resolver: &dyn RecordResolver, domain: &str) -> Check {
    const ID: &str = "dmarc";
    let publish = format!(
        "publish a TXT record at _dmarc.{domain}: v=DMARC1; p=none; rua=mailto:dmarc@{domain} \
         (Gmail and Yahoo require one from bulk senders), read the reports, then tighten p= to \
         quarantine or reject"
    );
    let labels: Vec<&str> = domain.split('.').collect();
    let mut candidates = vec![domain.to_owned()];
    if labels.len() > 2 {
        candidates.push(labels[labels.len() - 2..].join("."));
    }
    for (i, at) in candidates.iter().enumerate() {
        let name = format!("_dmarc.{at}");
        let records = match resolver.txt(&name).await {
            Ok(r) => r,
            Err(DnsError::NxDomain) => Vec::new(),
            Err(e) => {
                return Check::warn(
                    ID,
                    format!("could not look up {name}: {e}"),
                    "try again, or another resolver (--dns-server)",
                );
            }
        };
        let mut dmarc: Vec<String> = records
            .into_iter()
            .filter(|r| r.trim_start().to_ascii_lowercase().starts_with("v=dmarc1"))
            .collect();
        let text = match dmarc.len() {
            0 => continue,
            1 => dmarc.remove(0),
            n => {
                return Check::fail(
                    ID,
                    format!("{n} DMARC records at {name}: receivers then apply none"),
                    format!("keep one; {publish}"),
                );
            }
        };
        let subdomain = i > 0;
        if let Some(fault) = dmarc_fault(&text) {
            return Check::fail(
                ID,
                format!(
                    "the DMARC record at {name} ({text}) has {}: receivers ignore the whole record",
                    fault.what
                ),
                format!(
                    "{}, keeping the policy you meant; the record then applies again",
                    fault.fix
                ),
            );
        }
        let parsed = match Dmarc::parse(text.as_bytes()) {
            Ok(d) => d,
            Err(e) => {
                return Check::fail(
                    ID,
                    format!(
                        "the DMARC record at {name} ({text}) does not parse ({e}): receivers ignore it"
                    ),
                    format!(
                        "fix it to RFC 7489's syntax (v=DMARC1; p=none|quarantine|reject; …), \
                         keeping the policy you meant; if {name} has no record you meant: {publish}"
                    ),
                );
            }
        };
        let policy = if subdomain && parsed.sp != Policy::Unspecified {
            parsed.sp
        } else {
            parsed.p
        };
        let word = |p: Policy| match p {
            Policy::None => "none",
            Policy::Quarantine => "quarantine",
            Policy::Reject => "reject",
            Policy::Unspecified => "unspecified",
        };
        let reports = if parsed.rua.is_empty() {
            "no aggregate reports (no rua=)".to_owned()
        } else {
            format!(
                "reports to {}",
                parsed
                    .rua
                    .iter()
                    .map(|u| u.uri.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let whose = if subdomain {
            format!(
                "{name} (the organisational domain's; {} applies to {domain})",
                if parsed.sp != Policy::Unspecified {
                    "sp="
                } else {
                    "p="
                }
            )
        } else {
            name.clone()
        };
        // The tag that governs the sender's domain, which the advice names.
        let governing = if subdomain && parsed.sp != Policy::Unspecified {
            "sp"
        } else {
            "p"
        };
        let summary = format!("{whose}: policy {}, {reports}", word(policy));
        return match policy {
            Policy::Quarantine | Policy::Reject => Check::pass(ID, summary),
            Policy::None => Check::warn(
                ID,
                format!(
                    "{summary}: receivers are asked to do nothing with mail that fails (monitoring only)"
                ),
                if parsed.rua.is_empty() {
                    format!(
                        "add rua=mailto:dmarc@{at} to {name} to get reports; once they show your mail passing SPF or DKIM, move to {governing}=quarantine, then {governing}=reject"
                    )
                } else {
                    format!(
                        "once the reports show your mail passing SPF or DKIM, move {name} to {governing}=quarantine, then {governing}=reject"
                    )
                },
            ),
            Policy::Unspecified => Check::fail(
                ID,
                format!("{summary}: the record has no p= policy"),
                publish,
            ),
        };
    }
    Check::fail(
        ID,
        format!(
            "{domain} has no DMARC record (_dmarc.{domain}): mail that forges it is not refused, and large providers may refuse or file its mail"
        ),
        publish,
    )
}

/// A tag of a DMARC record whose value is not one it can take.
struct DmarcFault {
    /// `p=rejekt (not none, quarantine or reject)`.
    what: String,
    /// `fix p=rejekt to p=reject`.
    fix: String,
}

/// The first tag of a DMARC record (RFC 7489 §6.3) with a value receivers
/// reject, named, with the nearest valid value: a typo in `p=` must be
/// fixed to the policy meant, not replaced by `p=none`.
fn dmarc_fault(record: &str) -> Option<DmarcFault> {
    const POLICIES: &[&str] = &["none", "quarantine", "reject"];
    const MODES: &[&str] = &["r", "s"];
    for (k, v) in record
        .split(';')
        .filter_map(|t| t.split_once('='))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_ascii_lowercase()))
    {
        let allowed = match k.as_str() {
            "p" | "sp" => POLICIES,
            "adkim" | "aspf" => MODES,
            "pct" => {
                if v.parse::<u8>().is_ok_and(|n| n <= 100) {
                    continue;
                }
                return Some(DmarcFault {
                    what: format!("pct={v} (not a number from 0 to 100)"),
                    fix: "fix pct= to a percentage from 0 to 100, or remove it (100)".to_owned(),
                });
            }
            _ => continue,
        };
        if allowed.contains(&v.as_str()) {
            continue;
        }
        let nearest = allowed
            .iter()
            .min_by_key(|a| edit_distance(a, &v))
            .copied()
            .unwrap_or(allowed[0]);
        return Some(DmarcFault {
            what: format!(
                "{k}={v} (not {} or {})",
                allowed[..allowed.len() - 1].join(", "),
                allowed[allowed.len() - 1]
            ),
            fix: format!("fix {k}={v} to {k}={nearest} (if that is what you meant)"),
        });
    }
    None
}

/// Levenshtein distance, for "did you mean".
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let here = (prev + usize::from(ca != *cb))
                .min(row[j] + 1)
                .min(row[j + 1] + 1);
            prev = row[j + 1];
            row[j + 1] = here;
        }
    }
    row[b.len()]
}

/// The sender domain's own MX: bounces and replies to `--from` need
/// somewhere to go.
pub(super) async fn mx(resolver: &dyn RecordResolver, domain: &str) -> Check {
    const ID: &str = "mx";
    let resolver: &dyn Resolver = resolver;
    let mut first = |_: usize| 0;
    match plan(resolver, domain, &mut first, 5).await {
        Ok(p) if p.kind == PlanKind::Mx => {
            let hosts = p
                .hosts
                .iter()
                .map(|h| format!("{} (preference {})", h.name, h.preference))
                .collect::<Vec<_>>()
                .join(", ");
            let bare: Vec<&str> = p
                .hosts
                .iter()
                .filter(|h| {
                    h.addresses.is_empty() && !matches!(h.error, Some(DnsError::Temporary(_)))
                })
                .map(|h| h.name.as_str())
                .collect();
            if bare.is_empty() {
                Check::pass(ID, format!("mail to {domain} goes to {hosts}"))
            } else {
                Check::warn(
                    ID,
                    format!(
                        "mail to {domain} goes to {hosts}, but {} has no address (A/AAAA): \
                         senders skip it",
                        bare.join(", ")
                    ),
                    format!(
                        "give {} an A/AAAA record, or remove it from {domain}'s MX records",
                        bare.join(", ")
                    ),
                )
            }
        }
        Ok(p) => Check::warn(
            ID,
            format!(
                "{domain} has no MX record: mail to it (bounces, replies) goes to its own address {} (implicit MX)",
                p.hosts
                    .iter()
                    .flat_map(|h| h.addresses.iter().map(ToString::to_string))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            format!(
                "publish an MX record for {domain} naming the server that receives its mail; some receivers refuse senders without one"
            ),
        ),
        Err(PlanError::NullMx { .. }) => Check::fail(
            ID,
            format!(
                "{domain} publishes a null MX (RFC 7505): it accepts no mail, so bounces to the sender are lost, and receivers may refuse its mail"
            ),
            "send from a domain that receives mail, or replace the null MX with the server that receives it",
        ),
        Err(e @ PlanError::Temporary { .. }) => Check::warn(
            ID,
            e.to_string(),
            "try again, or another resolver (--dns-server)",
        ),
        Err(PlanError::NoAddresses { .. }) => {
            // Which names lack an address: the MX hosts, or the domain
            // itself when it has no MX.
            let hosts: Vec<String> = match resolver.mx(domain).await {
                Ok(r) => r
                    .into_iter()
                    .map(|r| r.exchange.trim_end_matches('.').to_ascii_lowercase())
                    .collect(),
                Err(_) => Vec::new(),
            };
            if hosts.is_empty() {
                Check::fail(
                    ID,
                    format!(
                        "{domain} has no MX and no address: mail to it (bounces, replies) has \
                         nowhere to go, and some receivers refuse senders like that"
                    ),
                    format!(
                        "publish an MX record for {domain} naming the server that receives its \
                         mail, so bounces can come back"
                    ),
                )
            } else {
                Check::fail(
                    ID,
                    format!(
                        "the MX host{} of {domain}, {}, {} no address (A/AAAA): mail to {domain} \
                         (bounces, replies) has nowhere to go",
                        if hosts.len() == 1 { "" } else { "s" },
                        hosts.join(", "),
                        if hosts.len() == 1 { "has" } else { "have" }
                    ),
                    format!(
                        "give {} an A/AAAA record, or point {domain}'s MX at a host that has one",
                        hosts.join(", ")
                    ),
                )
            }
        }
        Err(e) => Check::fail(
            ID,
            e.to_string(),
            format!(
                "send from a domain that exists and receives mail, or create {domain} with an MX \
                 record"
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_reversed_for_blocklists() {
        assert_eq!(reverse("192.0.2.25".parse().unwrap()), "25.2.0.192");
        assert_eq!(
            reverse("2001:db8::1".parse().unwrap()),
            "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2"
        );
    }

    #[test]
    fn a_dmarc_typo_is_named_with_the_value_meant() {
        let f = dmarc_fault("v=DMARC1; p=rejekt; rua=mailto:d@example.org").unwrap();
        assert_eq!(f.what, "p=rejekt (not none, quarantine or reject)");
        assert_eq!(
            f.fix,
            "fix p=rejekt to p=reject (if that is what you meant)"
        );
        let f = dmarc_fault("v=DMARC1; p=reject; sp=quarantin").unwrap();
        assert!(f.fix.contains("sp=quarantine"), "{}", f.fix);
        let f = dmarc_fault("v=DMARC1; p=none; adkim=x").unwrap();
        assert_eq!(f.what, "adkim=x (not r or s)");
        assert!(dmarc_fault("v=DMARC1; p=none; pct=101").is_some());
        assert!(dmarc_fault("v=DMARC1; p=Reject; sp=none; adkim=s; pct=50").is_none());
    }

    #[test]
    fn key_record_tags_lose_their_white_space() {
        let t = tags("v=DKIM1; k=rsa;\tp=MIIB IjAN\r\n Bgkq ");
        assert_eq!(tag(&t, "v"), Some("DKIM1"));
        assert_eq!(tag(&t, "p"), Some("MIIBIjANBgkq"));
        assert_eq!(tag(&t, "h"), None);
    }
}
