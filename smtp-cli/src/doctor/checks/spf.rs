//! The sender domain's SPF record, evaluated for this machine's address
//! or the relay's.

use std::net::IpAddr;

use smtp_dns::RecordResolver;

use super::GIVE_IP;
use crate::doctor::spf::{self as evaluation, SpfResult};
use crate::doctor::{Check, Setup};

/// The sender domain's SPF record: there is one, it parses, and it
/// authorises this machine's address (or the relay's).
pub(crate) async fn spf(resolver: &dyn RecordResolver, setup: &Setup, ip: Option<IpAddr>) -> Check {
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
                Ok(ips) if ips.iter().all(|a| !crate::doctor::probe::is_public(*a)) => {
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
    let text = match evaluation::record(resolver, domain).await {
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
    if let Err(why) = evaluation::parse(&text) {
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
        let e = evaluation::check_host(resolver, *a, domain, &setup.from).await;
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
            evaluation::Evaluation {
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
