//! `smtp probe` and `smtp mx`: look, do not send.

use std::time::Duration;

use serde::Serialize;
use smtp_core::command::ClientId;
use smtp_core::mx::{Resolver, plan};
use smtp_core::transport::{Transport, drive};
use smtp_core::{Client, Config, Event, TlsPolicy};
use smtp_dns::HickoryResolver;
use smtp_tls::{ConnectError, TcpTransport, TlsOptions};

use crate::cli::{MxArgs, ProbeArgs};
use crate::fail::{EX_NOHOST, EX_OK, EX_PROTOCOL, EX_TEMPFAIL, Failure};
use crate::output::{ErrorReport, JSON_VERSION, session_exit_code};
use crate::send::{hostname, random_below};

#[derive(Serialize)]
struct Probe {
    version: u32,
    host: String,
    peer: String,
    greeting: Option<String>,
    capabilities_before_tls: Vec<String>,
    capabilities: Vec<String>,
    auth: Vec<String>,
    tls: Option<TlsReport>,
    error: Option<ErrorReport>,
}

#[derive(Serialize)]
struct TlsReport {
    version: String,
    cipher_suite: String,
    verified: bool,
    verify_error: Option<String>,
    subject: Option<String>,
    not_after: Option<String>,
}

fn split(target: &str) -> (String, u16) {
    match target.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (
            h.trim_matches(['[', ']']).to_owned(),
            p.parse().unwrap_or(25),
        ),
        _ => (target.trim_matches(['[', ']']).to_owned(), 25),
    }
}

pub(crate) async fn run(args: ProbeArgs) -> Result<u8, Failure> {
    let (host, port) = split(&args.target);
    let implicit = args.implicit_tls || port == 465;
    let policy: TlsPolicy = args.tls.into();
    let mut tls = TlsOptions::new(policy);
    if let Some(ca) = &args.ca_file {
        tls.add_ca_file(ca)
            .map_err(|e| Failure::config(format!("--ca-file: {e}")))?;
    }
    let timeout = Duration::from_secs(30);
    let mut transport = TcpTransport::connect(&host, port, implicit, &tls, timeout, timeout)
        .await
        .map_err(|e| match e {
            ConnectError::Resolve { .. } => Failure::new(EX_NOHOST, e.to_string()),
            ConnectError::Tls { .. } => Failure::new(EX_PROTOCOL, e.to_string()).kind("tls"),
            _ => Failure::new(EX_TEMPFAIL, e.to_string()).kind("connect"),
        })?;
    let id = ClientId::parse(&hostname()).unwrap_or_else(|_| ClientId::localhost());
    let config = Config::new(id)
        .with_tls(policy)
        .with_implicit_tls(implicit)
        .with_transcript(args.verbose);
    let mut client = Client::new(config, transport.now());
    client.quit(transport.now());
    let mut first_caps: Option<Vec<String>> = None;
    let mut observe = |e: &Event| match e {
        Event::Transcript(line) if args.verbose => tell!("{line}"),
        Event::Capabilities(c) if first_caps.is_none() => {
            first_caps = Some(
                c.extensions()
                    .iter()
                    .map(|x| {
                        format!("{} {}", x.keyword, x.params.join(" "))
                            .trim()
                            .to_owned()
                    })
                    .collect(),
            );
        }
        _ => {}
    };
    let report = drive(&mut client, &mut transport, &mut [], &mut observe).await;
    let caps = report.capabilities.as_ref();
    let probe = Probe {
        version: JSON_VERSION,
        host: host.clone(),
        peer: transport.peer().to_string(),
        greeting: report.greeting.as_ref().map(ToString::to_string),
        capabilities_before_tls: if report.tls.is_some() && !implicit {
            first_caps.unwrap_or_default()
        } else {
            Vec::new()
        },
        capabilities: caps
            .map(|c| {
                c.extensions()
                    .iter()
                    .map(|x| {
                        format!("{} {}", x.keyword, x.params.join(" "))
                            .trim()
                            .to_owned()
                    })
                    .collect()
            })
            .unwrap_or_default(),
        auth: caps
            .map(|c| c.auth_mechanisms().to_vec())
            .unwrap_or_default(),
        tls: report.tls.as_ref().map(|t| TlsReport {
            version: t.version.clone(),
            cipher_suite: t.cipher_suite.clone(),
            verified: t.verified,
            verify_error: t.verify_error.clone(),
            subject: t.peer_subject.clone(),
            not_after: t.peer_not_after.clone(),
        }),
        error: report.error.as_ref().map(ErrorReport::of_session),
    };
    if args.json {
        say!(
            "{}",
            serde_json::to_string_pretty(&probe).unwrap_or_default()
        );
    } else {
        say!("server     {} ({})", probe.host, probe.peer);
        if let Some(g) = &probe.greeting {
            say!("greeting   {g}");
        }
        if !probe.capabilities_before_tls.is_empty() {
            say!("before TLS {}", probe.capabilities_before_tls.join(", "));
        }
        say!("offers     {}", probe.capabilities.join(", "));
        say!(
            "auth       {}",
            if probe.auth.is_empty() {
                "none".to_owned()
            } else {
                probe.auth.join(" ")
            }
        );
        match &probe.tls {
            Some(t) => {
                say!("tls        {} {}", t.version, t.cipher_suite);
                say!(
                    "cert       {} (expires {})",
                    t.subject.as_deref().unwrap_or("?"),
                    t.not_after.as_deref().unwrap_or("?")
                );
                match &t.verify_error {
                    None => say!("verified   yes"),
                    Some(e) => say!("verified   no: {e}"),
                }
            }
            None => say!("tls        none"),
        }
        if let Some(e) = &probe.error {
            say!("error      {}", e.message);
        }
    }
    // The same codes as `send`: 76 for the encryption policy, 77 for AUTH.
    Ok(match &report.error {
        Some(e) => session_exit_code(e).unwrap_or(EX_TEMPFAIL),
        None => EX_OK,
    })
}

#[derive(Serialize)]
struct MxHost {
    host: String,
    preference: u16,
    addresses: Vec<String>,
    error: Option<String>,
}

pub(crate) async fn mx(args: MxArgs) -> Result<u8, Failure> {
    let resolver = match &args.dns_server {
        Some(ns) => HickoryResolver::with_nameserver(
            HickoryResolver::parse_nameserver(ns).map_err(|e| Failure::usage(e.to_string()))?,
            Duration::from_secs(5),
        ),
        None => HickoryResolver::system(),
    }
    .map_err(|e| Failure::config(e.to_string()))?;
    let domain = smtp_core::address::Domain::parse(&args.domain)
        .map_err(|e| Failure::data(e.to_string()))?;
    let mut pick = random_below;
    let result = plan(
        &resolver as &dyn Resolver,
        domain.as_str(),
        &mut pick,
        usize::MAX,
    )
    .await;
    match result {
        Ok(p) => {
            let hosts: Vec<MxHost> = p
                .hosts
                .iter()
                .map(|h| MxHost {
                    host: h.name.clone(),
                    preference: h.preference,
                    addresses: h.addresses.iter().map(ToString::to_string).collect(),
                    error: h.error.as_ref().map(ToString::to_string),
                })
                .collect();
            let kind = match p.kind {
                smtp_core::mx::PlanKind::Mx => "mx",
                smtp_core::mx::PlanKind::ImplicitMx => "implicit-mx",
            };
            if args.json {
                let v = serde_json::json!({
                    "version": JSON_VERSION,
                    "domain": p.domain,
                    "kind": kind,
                    "hosts": hosts,
                });
                say!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else {
                say!(
                    "{} ({})",
                    p.domain,
                    if kind == "mx" {
                        "MX records"
                    } else {
                        "no MX: implicit MX from its own address"
                    }
                );
                for h in &hosts {
                    let what = h.error.clone().unwrap_or_else(|| h.addresses.join(" "));
                    say!("  {:>5}  {}  {what}", h.preference, h.host);
                }
            }
            Ok(EX_OK)
        }
        Err(e) => {
            if args.json {
                let v = serde_json::json!({
                    "version": JSON_VERSION,
                    "domain": domain.as_str(),
                    "error": ErrorReport { kind: "dns", message: e.to_string() },
                    "permanent": e.is_permanent(),
                });
                say!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else {
                say!("{}: {e}", domain.as_str());
            }
            Ok(if e.is_permanent() {
                EX_NOHOST
            } else {
                EX_TEMPFAIL
            })
        }
    }
}
