//! The sender domain's own mail servers (bounces come back there).

use smtp_core::delivery::mx::{DnsError, PlanError, PlanKind, Resolver, plan};
use smtp_dns::RecordResolver;

use crate::doctor::Check;

/// The sender domain's own MX: bounces and replies to `--from` need
/// somewhere to go.
pub(crate) async fn mx(resolver: &dyn RecordResolver, domain: &str) -> Check {
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
