//! `smtp doctor`: is this machine, and the sender's domain, set up to
//! send mail that arrives? Each check gives PASS, WARN or FAIL, a summary
//! of what it found and, unless it passed, what to do.
//!
//! ```text
//! port25 ──> ip ──> ptr, dnsbl          (this machine: probe.rs, checks.rs)
//! spf, dkim, dmarc, mx                  (the --from domain: spf.rs, checks.rs)
//! ```
//!
//! The outbound probe runs first: the address a mail server echoes in its
//! greeting or EHLO reply is this machine's public address when `--ip`
//! does not give it. Every DNS lookup goes through one
//! [`RecordResolver`] (the system's, or `--dns-server`), so tests answer
//! them all from a zone on loopback; the only connections made are the
//! probe's.
//!
//! Exit 0 when nothing FAILs (warnings included), 1 when a check FAILs:
//! a finding, distinct from the sysexits codes (64 to 78) that say the
//! doctor itself could not run. When the resolver gives no answer about
//! the sender's domain at all, nothing can be checked: the one `dns`
//! check FAILs and the doctor exits 75 (EX_TEMPFAIL), so a deployment
//! gate never passes on checks that were never made.

mod checks;
mod probe;
mod spf;

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;
use smtp_core::address::Mailbox;
use smtp_dns::{HickoryResolver, RecordResolver};

use crate::cli::DoctorArgs;
use crate::config;
use crate::fail::{EX_OK, EX_TEMPFAIL, Failure};
use crate::output::JSON_VERSION;

/// The exit code when a check FAILs.
pub(crate) const EX_CHECK_FAILED: u8 = 1;

/// The blocklists asked when `--dnsbl` names none: the three most
/// receivers consult.
pub(crate) const DEFAULT_DNSBL: [&str; 3] = [
    "zen.spamhaus.org",
    "bl.spamcop.net",
    "b.barracudacentral.org",
];

/// The domain whose MX hosts the outbound test connects to by default: a
/// large provider's, which answers on port 25 from anywhere.
const DEFAULT_PROBE_DOMAIN: &str = "gmail.com";

/// How a check came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Status {
    Pass,
    Warn,
    Fail,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Self::Pass => "PASS",
            Self::Warn => "WARN",
            Self::Fail => "FAIL",
        }
    }
}

/// One check's finding.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Check {
    /// `port25`, `ip`, `ptr`, `dnsbl`, `spf`, `dkim`, `dmarc`, `mx`.
    pub(crate) id: &'static str,
    pub(crate) status: Status,
    /// What was found.
    pub(crate) summary: String,
    /// What to do (none for a PASS).
    pub(crate) advice: Option<String>,
}

impl Check {
    pub(crate) fn pass(id: &'static str, summary: impl Into<String>) -> Self {
        Self {
            id,
            status: Status::Pass,
            summary: summary.into(),
            advice: None,
        }
    }

    pub(crate) fn warn(
        id: &'static str,
        summary: impl Into<String>,
        advice: impl Into<String>,
    ) -> Self {
        Self {
            id,
            status: Status::Warn,
            summary: summary.into(),
            advice: Some(advice.into()),
        }
    }

    pub(crate) fn fail(
        id: &'static str,
        summary: impl Into<String>,
        advice: impl Into<String>,
    ) -> Self {
        Self {
            id,
            status: Status::Fail,
            summary: summary.into(),
            advice: Some(advice.into()),
        }
    }

    /// Through a relay, what concerns only this machine's own sending
    /// (port 25, its reverse DNS, its blocklistings) cannot stop the mail:
    /// a FAIL becomes a WARN that says so.
    fn for_relay(mut self, relay: Option<&str>) -> Self {
        if let (Some(relay), Status::Fail) = (relay, self.status) {
            self.status = Status::Warn;
            let advice = self.advice.take().unwrap_or_default();
            self.advice = Some(format!(
                "this matters for direct delivery only: you send through {relay}. {advice}"
            ));
        }
        self
    }
}

/// Everything the checks need, settled from the options and the account.
pub(crate) struct Setup {
    /// The `--from` address and its domain (A-labels).
    pub(crate) from: String,
    pub(crate) domain: String,
    /// `--ip`.
    pub(crate) ip: Option<IpAddr>,
    /// The relay (`--server` or the account's), as `HOST` and port.
    pub(crate) relay: Option<(String, u16)>,
    /// What the outbound test connects to.
    pub(crate) probe: ProbeTarget,
    pub(crate) helo: String,
    pub(crate) timeout: Duration,
    pub(crate) dkim: Dkim,
    pub(crate) dnsbl: Vec<String>,
}

/// The outbound test's target.
pub(crate) enum ProbeTarget {
    /// A host (name or address) and port.
    Host(String, u16),
    /// A domain's MX hosts, on this port.
    Domain(String, u16),
}

/// The DKIM key to check: from the command line, or the account's.
pub(crate) struct Dkim {
    pub(crate) selector: Option<String>,
    pub(crate) key: Option<PathBuf>,
    pub(crate) domain: Option<String>,
}

pub(crate) async fn run(args: DoctorArgs) -> Result<u8, Failure> {
    let account =
        config::load(args.config.as_deref(), args.account.as_deref())?.unwrap_or_default();
    let setup = setup(&args, &account)?;
    let dns_server = args.dns_server.clone().or(account.dns_server.clone());
    let resolver = match &dns_server {
        Some(ns) => HickoryResolver::with_nameserver(
            HickoryResolver::parse_nameserver(ns).map_err(|e| Failure::usage(e.to_string()))?,
            setup.timeout,
        ),
        None => HickoryResolver::system(),
    }
    .map_err(|e| Failure::config(format!("{e} (use --dns-server IP[:PORT])")))?;
    if let Some(silent) = resolver_silent(&resolver, &setup.domain).await {
        print(&setup, std::slice::from_ref(&silent), args.json);
        return Ok(EX_TEMPFAIL);
    }
    let checks = diagnose(&resolver, &setup).await;
    print(&setup, &checks, args.json);
    Ok(if checks.iter().any(|c| c.status == Status::Fail) {
        EX_CHECK_FAILED
    } else {
        EX_OK
    })
}

/// The `dns` check, when the resolver gives no answer about the sender's
/// domain: its TXT and MX records, asked at once, both fail for now
/// (a timeout, a refused or unreachable server, SERVFAIL). An answer of
/// any kind, NXDOMAIN or an empty one too, lets the checks run.
async fn resolver_silent(resolver: &dyn RecordResolver, domain: &str) -> Option<Check> {
    use smtp_core::delivery::mx::DnsError;
    let (txt, mx) = tokio::join!(resolver.txt(domain), resolver.mx(domain));
    match (txt, mx) {
        (Err(DnsError::Temporary(why)), Err(DnsError::Temporary(_))) => Some(Check::fail(
            "dns",
            format!(
                "the DNS resolver does not answer: {} gave no answer about {domain} ({why}), so \
                 nothing was checked",
                resolver.name()
            ),
            format!(
                "check --dns-server (or the system's resolver, /etc/resolv.conf) and that it \
                 answers queries from this machine (dig TXT {domain} @SERVER), then run the \
                 doctor again"
            ),
        )),
        _ => None,
    }
}

/// The options, with the account's settings where an option is not given.
fn setup(args: &DoctorArgs, account: &config::Account) -> Result<Setup, Failure> {
    let from = args.from.clone().or(account.from.clone()).ok_or_else(|| {
        Failure::usage("give --from ADDR: the sender address whose domain is checked")
    })?;
    let mailbox =
        Mailbox::parse(from.trim()).map_err(|e| Failure::data(format!("--from {from:?}: {e}")))?;
    if mailbox.domain().is_address_literal() {
        return Err(Failure::data(format!(
            "--from {from:?}: an address literal has no DNS records to check; give an address at a domain"
        )));
    }
    let domain = mailbox.domain().as_str().to_owned();
    let relay = match args.server.clone().or(account.server.clone()) {
        Some(s) => Some(crate::probe::split(&s, account.port.unwrap_or(587))?),
        None => None,
    };
    let mx_port = args.mx_port.unwrap_or(25);
    let probe = match (&args.probe_mx, &args.probe_domain) {
        (Some(_), Some(_)) => {
            return Err(Failure::usage(
                "give --probe-mx or --probe-domain, not both",
            ));
        }
        (Some(target), None) => {
            let (host, port) = crate::probe::split(target, mx_port)?;
            ProbeTarget::Host(host, port)
        }
        (None, d) => ProbeTarget::Domain(
            d.clone().unwrap_or_else(|| DEFAULT_PROBE_DOMAIN.to_owned()),
            mx_port,
        ),
    };
    // The command line's DKIM options replace the account's as a whole,
    // as for `send`: a key is never checked under another key's selector.
    let dkim =
        if args.dkim_key.is_some() || args.dkim_selector.is_some() || args.dkim_domain.is_some() {
            Dkim {
                selector: args.dkim_selector.clone(),
                key: args.dkim_key.clone(),
                domain: args.dkim_domain.clone(),
            }
        } else {
            Dkim {
                selector: account.dkim_selector.clone(),
                key: account.dkim_key.clone(),
                domain: account.dkim_domain.clone(),
            }
        };
    let mut dnsbl: Vec<String> = args
        .dnsbl
        .iter()
        .map(|z| z.trim().trim_matches('.').to_ascii_lowercase())
        .filter(|z| !z.is_empty())
        .collect();
    if dnsbl.is_empty() {
        dnsbl = DEFAULT_DNSBL.iter().map(|z| (*z).to_owned()).collect();
    }
    Ok(Setup {
        from: mailbox.to_string(),
        domain,
        ip: args.ip,
        relay,
        probe,
        helo: args
            .helo
            .clone()
            .or(account.helo.clone())
            .unwrap_or_else(crate::send::hostname),
        timeout: Duration::from_secs(args.timeout.unwrap_or(10)),
        dkim,
        dnsbl,
    })
}

/// Runs every check, in the order they are shown.
async fn diagnose(resolver: &dyn RecordResolver, setup: &Setup) -> Vec<Check> {
    let relay = setup.relay.as_ref().map(|(h, p)| format!("{h}:{p}"));
    let relay = relay.as_deref();
    let outbound = probe::outbound(resolver, setup).await;
    let (ip_check, ip) = probe::public_ip(setup.ip, &outbound);
    let mut checks = vec![outbound.check.for_relay(relay), ip_check];
    checks.push(checks::ptr(resolver, ip).await.for_relay(relay));
    checks.push(
        checks::dnsbl(resolver, ip, &setup.dnsbl)
            .await
            .for_relay(relay),
    );
    checks.push(checks::spf(resolver, setup, ip).await);
    checks.push(checks::dkim(resolver, setup).await);
    checks.push(checks::dmarc(resolver, &setup.domain).await);
    checks.push(checks::mx(resolver, &setup.domain).await);
    checks
}

#[derive(Serialize)]
struct Counts {
    pass: usize,
    warn: usize,
    fail: usize,
}

fn counts(checks: &[Check]) -> Counts {
    let n = |s| checks.iter().filter(|c| c.status == s).count();
    Counts {
        pass: n(Status::Pass),
        warn: n(Status::Warn),
        fail: n(Status::Fail),
    }
}

/// `text` as the terminal shows it: on one line, control characters
/// neutralised.
fn clean(text: &str) -> String {
    crate::terminal::printable(&crate::terminal::one_line(text)).into_owned()
}

fn print(setup: &Setup, checks: &[Check], json: bool) {
    let counts = counts(checks);
    if json {
        // What DNS and servers said, cleaned as for the terminal: a field
        // printed by `jq -r` must not carry their control characters.
        let checks: Vec<Check> = checks
            .iter()
            .map(|c| Check {
                summary: clean(&c.summary),
                advice: c.advice.as_deref().map(clean),
                ..c.clone()
            })
            .collect();
        let v = serde_json::json!({
            "version": JSON_VERSION,
            "from": setup.from,
            "domain": setup.domain,
            "checks": checks,
            "summary": counts,
            "error": null,
        });
        say!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return;
    }
    for c in checks {
        say!(
            "{}  {:<6} {}",
            c.status.label(),
            c.id,
            crate::terminal::one_line(&c.summary)
        );
        if let Some(a) = &c.advice {
            say!("              -> {}", crate::terminal::one_line(a));
        }
    }
    say!(
        "{} check{}: {} pass, {} warn, {} fail",
        checks.len(),
        if checks.len() == 1 { "" } else { "s" },
        counts.pass,
        counts.warn,
        counts.fail
    );
}
