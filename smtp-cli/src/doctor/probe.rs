//! The outbound test (can this machine reach a mail server on port 25?)
//! and this machine's public address.
//!
//! It connects as direct delivery does (smtp-tls's MX connector), says
//! EHLO and QUIT, and, when nothing answered, hands its attempts to direct
//! delivery's own diagnosis ([`diagnose`]): the doctor and `smtp send` say
//! "port 25 is probably blocked" on the same evidence, in the same words.

use std::net::{IpAddr, SocketAddr};

use smtp_core::delivery::direct::{Attempt, Connector, diagnose};
use smtp_core::delivery::drive;
use smtp_core::delivery::mx::{Resolver, plan};
use smtp_core::ehlo::ClientId;
use smtp_core::{Client, Config, Timeouts, TlsPolicy};
use smtp_dns::RecordResolver;
use smtp_tls::MxConnector;

use super::{Check, ProbeTarget, Setup};
use crate::terminal::one_line;

/// Addresses tried, at most: enough to tell one dead host from a blocked
/// port, few enough to stay quick when everything times out.
const MAX_ATTEMPTS: usize = 3;

/// What the outbound test found.
pub(super) struct Outbound {
    pub(super) check: Check,
    /// The host that answered, and the address it says it saw us come
    /// from (in brackets in its greeting or EHLO reply).
    pub(super) seen: Option<(String, IpAddr)>,
}

/// Connects to the probe target, on its port, and reads its greeting and
/// EHLO reply.
pub(super) async fn outbound(resolver: &dyn RecordResolver, setup: &Setup) -> Outbound {
    let no_test = |summary: String, advice: &str| Outbound {
        check: Check::warn("port25", summary, advice),
        seen: None,
    };
    let (targets, port) = match &setup.probe {
        ProbeTarget::Host(host, port) => {
            let addrs = match host.parse::<IpAddr>() {
                Ok(ip) => vec![ip],
                Err(_) => match resolver.addresses(host).await {
                    Ok(a) if !a.is_empty() => a,
                    Ok(_) => {
                        return no_test(
                            format!("not tested: {host} has no address"),
                            "give --probe-mx a mail server that resolves",
                        );
                    }
                    Err(e) => {
                        return no_test(
                            format!("not tested: cannot resolve {host}: {e}"),
                            "check DNS (--dns-server), or give --probe-mx an address",
                        );
                    }
                },
            };
            let targets: Vec<(String, IpAddr)> =
                addrs.into_iter().map(|a| (host.clone(), a)).collect();
            (targets, *port)
        }
        ProbeTarget::Domain(domain, port) => {
            let resolver: &dyn Resolver = resolver;
            let mut first = |_: usize| 0;
            match plan(resolver, domain, &mut first, MAX_ATTEMPTS).await {
                Ok(p) => (
                    p.attempts().map(|(h, a)| (h.to_owned(), a)).collect(),
                    *port,
                ),
                Err(e) => {
                    return no_test(
                        format!("not tested: no mail server of {domain} to try: {e}"),
                        "check DNS (--dns-server), or name a mail server with --probe-mx HOST",
                    );
                }
            }
        }
    };
    let mut timeouts = Timeouts::uniform(setup.timeout);
    timeouts.connect = setup.timeout;
    // Plaintext: the test is whether the port answers, not TLS.
    let connector = MxConnector::new(TlsPolicy::None, smtp_tls::Trust::new(), timeouts);
    let client_id = ClientId::parse(&setup.helo).unwrap_or_else(|_| ClientId::localhost());
    let config = Config::new(client_id)
        .with_tls(TlsPolicy::None)
        .with_timeouts(timeouts);
    let mut attempts = Vec::new();
    for (host, ip) in targets.into_iter().take(MAX_ATTEMPTS) {
        let addr = SocketAddr::new(ip, port);
        let mut transport = match connector.connect(&host, addr).await {
            Ok(t) => t,
            Err(failure) => {
                attempts.push(Attempt {
                    host,
                    addr,
                    local: None,
                    failure: Some(failure),
                    error: None,
                    tls: None,
                });
                continue;
            }
        };
        let mut client = Client::new(config.clone(), transport.now());
        client.quit(transport.now());
        let report = drive(&mut client, transport.as_mut(), &mut [], &mut |_| {}).await;
        let greeting = report
            .greeting
            .as_ref()
            .filter(|g| g.code().as_u16() / 100 == 2);
        if let Some(greeting) = greeting {
            let ehlo = report
                .capabilities
                .as_ref()
                .map(|c| format!("{} {}", c.domain(), c.greeting()));
            let seen = bracketed_ip(&greeting.to_string())
                .or_else(|| ehlo.as_deref().and_then(bracketed_ip))
                .map(|ip| (host.clone(), ip));
            return Outbound {
                check: Check::pass(
                    "port25",
                    format!(
                        "{host} ({addr}) answered on port {port}: {}",
                        one_line(&greeting.to_string())
                    ),
                ),
                seen,
            };
        }
        attempts.push(Attempt {
            host,
            addr,
            local: transport.local_addr(),
            failure: None,
            error: report.error,
            tls: None,
        });
    }
    let tried = attempts
        .iter()
        .map(|a| {
            let what = match (&a.failure, &a.error) {
                (Some(f), _) => f.to_string(),
                (None, Some(e)) => e.to_string(),
                (None, None) => "no greeting".to_owned(),
            };
            format!("{} ({}): {what}", a.host, a.addr)
        })
        .collect::<Vec<_>>()
        .join("; ");
    match diagnose(&attempts, [], port) {
        Some(d) => Outbound {
            check: Check::fail(
                "port25",
                format!("no mail server answered: {tried}"),
                d.to_string(),
            ),
            seen: None,
        },
        None => no_test(
            format!("no mail server let this machine in: {tried}"),
            "try another with --probe-mx HOST; a refusal that names this address is a blocklisting \
             (see the dnsbl check)",
        ),
    }
}

/// The first `[address]` in a reply's text: many servers echo the client's
/// address so (`250-mx.example.net Hello [203.0.113.5]`, `[IPv6:…]`).
fn bracketed_ip(text: &str) -> Option<IpAddr> {
    let mut rest = text;
    while let Some(start) = rest.find('[') {
        let after = &rest[start + 1..];
        let end = after.find(']')?;
        let inside = &after[..end];
        let inside = inside
            .strip_prefix("IPv6:")
            .or_else(|| inside.strip_prefix("ipv6:"))
            .unwrap_or(inside);
        if let Ok(ip) = inside.parse::<IpAddr>() {
            // An IPv4-mapped IPv6 address (::ffff:a.b.c.d) is the IPv4 one.
            return Some(ip.to_canonical());
        }
        rest = &after[end..];
    }
    None
}

/// The public-address check, and the address the other checks use: the
/// one given, else the one a server saw when it is a public one.
pub(super) fn public_ip(given: Option<IpAddr>, outbound: &Outbound) -> (Check, Option<IpAddr>) {
    // An IPv4-mapped IPv6 address (::ffff:a.b.c.d) is the IPv4 one, for
    // SPF's ip4:, the PTR name and the blocklists alike.
    let given = given.map(|ip| ip.to_canonical());
    match (given, &outbound.seen) {
        (Some(ip), Some((host, seen))) if *seen != ip => (
            Check::warn(
                "ip",
                format!("{ip} (given with --ip), but {host} saw this machine as {seen}"),
                "mail from here leaves from the address a server sees: check --ip, or whether a \
                 NAT or proxy sends this machine's mail from another address",
            ),
            Some(ip),
        ),
        (Some(ip), _) => (
            Check::pass("ip", format!("{ip} (given with --ip)")),
            Some(ip),
        ),
        (None, Some((host, seen))) if is_public(*seen) => (
            Check::pass("ip", format!("{seen}, as {host} saw this machine")),
            Some(*seen),
        ),
        (None, Some((host, seen))) => (
            Check::warn(
                "ip",
                format!("{host} saw this machine as {seen}, which is not a public address"),
                "something between (a NAT, a proxy) hides the public address; give it with --ip \
                 ADDR to check its reverse DNS, blocklists and SPF",
            ),
            None,
        ),
        (None, None) => (
            Check::warn(
                "ip",
                "unknown: the probed server did not show the address it saw",
                "give this machine's public address with --ip ADDR (what `curl -s ifconfig.me` or \
                 your provider shows) to check its reverse DNS, blocklists and SPF",
            ),
            None,
        ),
    }
}

/// Whether an address can be seen from the Internet (the documentation
/// ranges count: examples and tests use them).
pub(super) fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || (a == 100 && (64..128).contains(&b)))
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_address_a_server_echoes_is_found_in_brackets() {
        let ip = |s: &str| bracketed_ip(s).map(|i| i.to_string());
        assert_eq!(
            ip("mx.google.com at your service, [203.0.113.5]").as_deref(),
            Some("203.0.113.5")
        );
        assert_eq!(
            ip("mx.example.net Hello host [IPv6:2001:db8::5]").as_deref(),
            Some("2001:db8::5")
        );
        assert_eq!(
            ip("mx [not an ip] then [192.0.2.1]").as_deref(),
            Some("192.0.2.1")
        );
        assert_eq!(ip("mx.example.net ESMTP"), None);
        assert_eq!(ip("unclosed [192.0.2.1"), None);
        // An IPv4-mapped IPv6 address is its IPv4 address.
        assert_eq!(
            ip("mx Hello [IPv6:::ffff:8.8.8.8]").as_deref(),
            Some("8.8.8.8")
        );
    }

    #[test]
    fn an_ipv4_mapped_address_given_is_checked_as_ipv4() {
        let outbound = Outbound {
            check: Check::pass("port25", "answered"),
            seen: None,
        };
        let (_, ip) = public_ip(Some("::ffff:203.0.113.5".parse().unwrap()), &outbound);
        assert_eq!(ip, Some("203.0.113.5".parse().unwrap()));
    }

    #[test]
    fn private_and_shared_addresses_are_not_public() {
        for private in [
            "10.1.2.3",
            "192.168.1.1",
            "100.64.0.1",
            "127.0.0.1",
            "fd00::1",
            "fe80::1",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
        for public in ["203.0.113.5", "8.8.8.8", "2001:db8::1"] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
    }
}
