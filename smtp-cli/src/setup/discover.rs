//! Finding the candidate submission servers: SRV records, the
//! autoconfiguration document, the usual names.

use std::time::Duration;

use smtp_core::delivery::mx::{DnsError, Resolver};
use smtp_dns::{HickoryResolver, RecordResolver};
use smtp_tls::Trust;
use smtp_tls::https::HttpsGet;

use crate::cli::SetupArgs;

use super::*;

/// The candidates, best-known first: SRV records by priority (implicit
/// TLS first at equal priority), then the autoconfiguration's servers in
/// its order; else the usual names. Also each autoconfiguration URL tried.
pub(super) async fn discover(
    resolver: &HickoryResolver,
    trust: &Trust,
    domain: &str,
    address: &str,
    args: &SetupArgs,
) -> (Vec<Candidate>, Vec<AutoconfigTry>) {
    let mut found: Vec<(u16, Candidate)> = Vec::new();
    for (service, implicit_tls) in [("_submissions._tcp", true), ("_submission._tcp", false)] {
        let records = resolver
            .srv(&format!("{service}.{domain}"))
            .await
            .unwrap_or_default();
        for r in records {
            // A target of "." says the service is not offered (RFC 2782).
            if r.target.is_empty() || r.port == 0 {
                continue;
            }
            found.push((
                r.priority,
                Candidate {
                    host: r.target.to_ascii_lowercase(),
                    port: r.port,
                    implicit_tls,
                    source: Origin::Srv,
                },
            ));
        }
    }
    found.sort_by_key(|(priority, c)| (*priority, !c.implicit_tls));
    let mut candidates: Vec<Candidate> = found.into_iter().map(|(_, c)| c).collect();
    let (servers, tries) =
        autoconfig_servers(resolver, trust, domain, address, args.https_port).await;
    candidates.extend(servers.into_iter().map(|s| Candidate {
        host: s.hostname,
        port: s.port,
        implicit_tls: s.implicit_tls,
        source: Origin::Autoconfig,
    }));
    if candidates.is_empty() {
        for name in ["smtp", "mail"] {
            for (port, implicit_tls) in [(args.implicit_port, true), (args.starttls_port, false)] {
                candidates.push(Candidate {
                    host: format!("{name}.{domain}"),
                    port,
                    implicit_tls,
                    source: Origin::Guess,
                });
            }
        }
    }
    let mut seen = std::collections::HashSet::new();
    candidates.retain(|c| seen.insert((c.host.clone(), c.port)));
    // Each is probed in turn, a silent one for the whole timeout: what a
    // domain publishes cannot make setup run for hours.
    if candidates.len() > MAX_CANDIDATES {
        tell!(
            "smtp: note: {} candidates found; the first {MAX_CANDIDATES} by preference are probed",
            candidates.len()
        );
        candidates.truncate(MAX_CANDIDATES);
    }
    (candidates, tries)
}

/// Candidates probed at most (a domain publishes one or two of each kind).
pub(super) const MAX_CANDIDATES: usize = 8;

/// The SMTP servers of the first autoconfiguration document found: at
/// `autoconfig.DOMAIN`, else at the domain's `.well-known` path. A host
/// that does not exist is skipped without a word.
pub(super) async fn autoconfig_servers(
    resolver: &HickoryResolver,
    trust: &Trust,
    domain: &str,
    address: &str,
    port: u16,
) -> (Vec<autoconfig::Outgoing>, Vec<AutoconfigTry>) {
    let get = HttpsGet::new(trust.clone()).with_timeout(Duration::from_secs(10));
    let autoconfig_host = format!("autoconfig.{domain}");
    let places = [
        (autoconfig_host.as_str(), "/mail/config-v1.1.xml"),
        (domain, "/.well-known/autoconfig/mail/config-v1.1.xml"),
    ];
    let mut tries = Vec::new();
    for (host, path) in places {
        let authority = if port == 443 {
            host.to_owned()
        } else {
            format!("{host}:{port}")
        };
        let mut t = AutoconfigTry {
            url: format!("https://{authority}{path}"),
            status: None,
            servers: 0,
            error: None,
        };
        let addrs = match resolver.addresses(host).await {
            Ok(a) if !a.is_empty() => a,
            Ok(_) | Err(DnsError::NxDomain) => continue,
            Err(e) => {
                t.error = Some(format!("cannot look up {host}: {e}"));
                tries.push(t);
                continue;
            }
        };
        match get.get(host, &addrs, port, path).await {
            Ok(r) => {
                t.status = Some(r.status);
                if r.status == 200 {
                    match autoconfig::parse(&r.body, address) {
                        Ok(servers) => {
                            t.servers = servers.len();
                            tries.push(t);
                            if !servers.is_empty() {
                                return (servers, tries);
                            }
                            continue;
                        }
                        Err(e) => t.error = Some(format!("not used: {e}")),
                    }
                }
            }
            Err(e) => t.error = Some(e.to_string()),
        }
        tries.push(t);
    }
    (Vec::new(), tries)
}
