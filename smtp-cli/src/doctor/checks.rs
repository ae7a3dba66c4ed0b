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
use super::{Check, Setup};
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
            Listing::Refused(code) => unsure.push(format!("{zone} refused the query ({code})")),
            Listing::Odd(addrs) => unsure.push(format!(
                "{zone} answered {}, not a 127.0.0.x code (the list may be gone, answering everything)",
                addrs.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
            )),
            Listing::Failed(e) => unsure.push(format!("{zone}: {e}")),
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
        return Check::warn(
            ID,
            format!("{ip}: not listed where asked, but {}", unsure.join("; ")),
            "blocklists refuse queries from large public resolvers: ask through your own \
             resolver (--dns-server, e.g. a local unbound), then check again",
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
    let example = match (&setup.relay, ip) {
        (Some(_), _) => "v=spf1 include:<your provider's SPF domain> -all".to_owned(),
        (None, Some(IpAddr::V4(v4))) => format!("v=spf1 ip4:{v4} -all"),
        (None, Some(IpAddr::V6(v6))) => format!("v=spf1 ip6:{v6} -all"),
        (None, None) => "v=spf1 ip4:<this machine's address> -all".to_owned(),
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
    let (who, ips) = match (&setup.relay, ip) {
        (Some((host, _)), _) => {
            let ips = match host.parse::<IpAddr>() {
                Ok(ip) => vec![ip],
                Err(_) => match resolver.addresses(host).await {
                    Ok(a) if !a.is_empty() => a,
                    Ok(_) | Err(_) => {
                        return Check::warn(
                            ID,
                            format!(
                                "{domain}: {text} (it parses); the relay {host} has no address to check it against"
                            ),
                            "check --server's name",
                        );
                    }
                },
            };
            (format!("the relay {host}"), ips)
        }
        (None, Some(ip)) => (ip.to_string(), vec![ip]),
        (None, None) => {
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
                    "{domain}: {text}; it authorises {who} ({a}: pass{})",
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
    let add = match (&setup.relay, a) {
        (Some(_), _) => "add the include: your relay's provider documents for SPF".to_owned(),
        (None, IpAddr::V4(v4)) => format!("add ip4:{v4} before the all term"),
        (None, IpAddr::V6(v6)) => format!("add ip6:{v6} before the all term"),
    };
    let summary = format!("{domain}: {text}; {who} ({a}) gets {}{by}", e.result.name());
    match &e.result {
        SpfResult::PermError(why) => Check::fail(
            ID,
            format!("{summary}: {why}"),
            "receivers treat a broken SPF record as none at all (permerror): fix it (fewer \
             includes, or flatten them into ip4:/ip6: terms)",
        ),
        SpfResult::TempError(why) => Check::warn(
            ID,
            format!("{summary}: {why}"),
            "try again, or another resolver (--dns-server)",
        ),
        // A relay's submission address is often not the one it sends
        // from: its result is a warning, never a failure.
        _ if setup.relay.is_some() => Check::warn(
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

/// The DKIM key published at `SELECTOR._domainkey.DOMAIN` and whether it
/// is the public half of the configured private key.
pub(super) async fn dkim(resolver: &dyn RecordResolver, setup: &Setup) -> Check {
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
    let Ok(public) = BASE64.decode(p) else {
        return Check::fail(ID, format!("the p= of {name} is not base64"), publish);
    };
    if let Err(e) = DomainKey::parse(text.as_bytes()) {
        return Check::fail(
            ID,
            format!("the record at {name} does not hold a usable key ({e})"),
            publish,
        );
    }
    let k = tag(&published, "k").unwrap_or("rsa").to_owned();
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
                    format!("keep one. {publish}"),
                );
            }
        };
        let parsed = match Dmarc::parse(text.as_bytes()) {
            Ok(d) => d,
            Err(e) => {
                return Check::fail(
                    ID,
                    format!(
                        "the DMARC record at {name} ({text}) does not parse ({e}): receivers ignore it"
                    ),
                    publish,
                );
            }
        };
        let subdomain = i > 0;
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
                        "add rua=mailto:dmarc@{domain} to get reports; once they show your mail passing SPF or DKIM, move to p=quarantine, then p=reject"
                    )
                } else {
                    "once the reports show your mail passing SPF or DKIM, move to p=quarantine, then p=reject".to_owned()
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

/// The sender domain's own MX: bounces and replies to `--from` need
/// somewhere to go.
pub(super) async fn mx(resolver: &dyn RecordResolver, domain: &str) -> Check {
    const ID: &str = "mx";
    let resolver: &dyn Resolver = resolver;
    let mut first = |_: usize| 0;
    match plan(resolver, domain, &mut first, 5).await {
        Ok(p) if p.kind == PlanKind::Mx => Check::pass(
            ID,
            format!(
                "mail to {domain} goes to {}",
                p.hosts
                    .iter()
                    .map(|h| format!("{} (preference {})", h.name, h.preference))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ),
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
        Err(e) => Check::fail(
            ID,
            e.to_string(),
            format!(
                "send from a domain that exists and receives mail; give {domain} an MX record with an address"
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
    fn key_record_tags_lose_their_white_space() {
        let t = tags("v=DKIM1; k=rsa;\tp=MIIB IjAN\r\n Bgkq ");
        assert_eq!(tag(&t, "v"), Some("DKIM1"));
        assert_eq!(tag(&t, "p"), Some("MIIBIjANBgkq"));
        assert_eq!(tag(&t, "h"), None);
    }
}
