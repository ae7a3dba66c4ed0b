//! The sending address: its reverse DNS (forward-confirmed) and the DNS
//! blocklists.

use std::net::IpAddr;

use smtp_core::delivery::mx::DnsError;
use smtp_dns::RecordResolver;

use super::GIVE_IP;
use crate::doctor::Check;

/// The PTR record of `ip` and whether its name resolves back to `ip`
/// (forward-confirmed reverse DNS).
pub(crate) async fn ptr(resolver: &dyn RecordResolver, ip: Option<IpAddr>) -> Check {
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
pub(crate) async fn dnsbl(
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
}
