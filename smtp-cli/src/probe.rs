//! `smtp probe` and `smtp mx`: look, do not send.

use std::time::{Duration, SystemTime};

use serde::Serialize;
use smtp_core::delivery::mx::{Resolver, plan};
use smtp_core::delivery::{PeerCertificate, Transport, drive};
use smtp_core::ehlo::ClientId;
use smtp_core::sasl::Credentials;
use smtp_core::{Error, Event, Timeouts};
use smtp_dns::HickoryResolver;
use smtp_tls::{Error as TlsError, Server, TcpTransport};

use crate::advice;
use crate::cli::{AuthArg, LoginArgs, MxArgs, ProbeArgs};
use crate::fail::{EX_NOHOST, EX_OK, EX_PROTOCOL, EX_SOFTWARE, EX_TEMPFAIL, Failure};
use crate::greeting::GreetingHint;
use crate::output::{ErrorReport, JSON_VERSION, session_exit_code};
use crate::secrets::{self, DEFAULT_ENV, Source};
use crate::send::{hostname, trust};
use crate::settings::mechanism;
use smtp_tls::random_below;

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
    /// The certificate the server presented: also when verification failed
    /// and no TLS session was made (then `tls` is null and `error` says why).
    certificate: Option<CertificateReport>,
    /// Why the handshake refused `certificate` (for the text output; JSON
    /// has it in `error`).
    #[serde(skip)]
    refused: Option<String>,
    /// With `--user`: the mechanism that authenticated.
    authenticated: Option<String>,
    error: Option<ErrorReport>,
}

/// A certificate as `msmtp --serverinfo` shows it.
#[derive(Serialize)]
struct CertificateReport {
    subject: Option<String>,
    issuer: Option<String>,
    names: Vec<String>,
    not_before: Option<String>,
    not_after: Option<String>,
    sha256: String,
    /// The subjects of the other certificates the server sent.
    chain: Vec<String>,
}

impl CertificateReport {
    fn of(c: &PeerCertificate) -> Self {
        Self {
            subject: c.subject.clone(),
            issuer: c.issuer.clone(),
            names: c.names.clone(),
            not_before: c.not_before.clone(),
            not_after: c.not_after.clone(),
            sha256: c.sha256.clone(),
            chain: c.chain.clone(),
        }
    }

    fn print(&self) {
        row("subject", self.subject.as_deref().unwrap_or("?"));
        row("issuer", self.issuer.as_deref().unwrap_or("?"));
        if !self.chain.is_empty() {
            row("chain", self.chain.join("; "));
        }
        row("names", self.names.join(", "));
        row(
            "valid",
            format!(
                "{} to {}",
                self.not_before.as_deref().unwrap_or("?"),
                self.not_after.as_deref().unwrap_or("?")
            ),
        );
        row("sha256", &self.sha256);
    }
}

/// One row of the text report: a label and a value on one line. What the
/// server chose (greeting, certificate fields, error texts) cannot start a
/// row of its own: line breaks in it are shown, not followed.
fn row(label: &str, value: impl std::fmt::Display) {
    say!(
        "{label:<10} {}",
        crate::terminal::one_line(&value.to_string())
    );
}

#[derive(Serialize)]
struct TlsReport {
    version: String,
    cipher_suite: String,
    verified: bool,
    verify_error: Option<String>,
    subject: Option<String>,
    issuer: Option<String>,
    names: Vec<String>,
    not_before: Option<String>,
    not_after: Option<String>,
    sha256: Option<String>,
}

/// `HOST`, `HOST:PORT`, `[V6]` or `[V6]:PORT`; port `default` unless given. A
/// port that is not a number is an error, never a silent default.
pub(crate) fn split(target: &str, default: u16) -> Result<(String, u16), Failure> {
    let bad = |p: &str| Failure::usage(format!("{target}: {p:?} is not a port"));
    if let Some(rest) = target.strip_prefix('[') {
        let (host, tail) = rest
            .split_once(']')
            .ok_or_else(|| Failure::usage(format!("{target}: missing ]")))?;
        let port = match tail.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| bad(p))?,
            None if tail.is_empty() => default,
            None => return Err(bad(tail)),
        };
        return Ok((host.to_owned(), port));
    }
    match target.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => Ok((h.to_owned(), p.parse().map_err(|_| bad(p))?)),
        _ => Ok((target.to_owned(), default)),
    }
}

/// The credentials `--user` asks to test, the password read as `send`
/// reads it.
fn credentials(login: &LoginArgs) -> Result<Option<Credentials>, Failure> {
    let Some(username) = login.user.clone() else {
        return Ok(None);
    };
    let secret = secrets::read(login.source()?.unwrap_or(Source::Env(DEFAULT_ENV)))?;
    Ok(Some(secrets::credentials(username, secret, login.auth)))
}

pub(crate) async fn run(args: ProbeArgs) -> Result<u8, Failure> {
    let (host, port) = split(&args.target, 25)?;
    let credentials = credentials(&args.login)?;
    let implicit = args.implicit_tls || port == 465;
    let connect = Duration::from_secs(args.connect_timeout.unwrap_or(30));
    let command = Duration::from_secs(args.command_timeout.unwrap_or(30));
    let mut timeouts = Timeouts::uniform(command);
    timeouts.connect = connect;
    let mut server = Server::new(host.clone(), port)
        .with_implicit_tls(implicit)
        .with_policy(args.tls.into())
        .with_trust(trust(args.ca_file.as_deref())?)
        .with_timeouts(timeouts)
        .with_transcript(args.verbose);
    let mut transport = match TcpTransport::connect(&server).await {
        Ok(t) => t,
        // Implicit TLS failed: still show the certificate the server sent.
        Err(TlsError::Tls { addr, failure }) if failure.certificate.is_some() => {
            let certificate = failure.certificate.as_deref().map(CertificateReport::of);
            let refused = advice::flags(&failure.detail);
            let mut shown = failure;
            shown.certificate = None;
            let error = TlsError::Tls {
                addr,
                failure: shown,
            };
            let probe = Probe {
                version: JSON_VERSION,
                host,
                peer: addr.to_string(),
                greeting: None,
                capabilities_before_tls: Vec::new(),
                capabilities: Vec::new(),
                auth: Vec::new(),
                tls: None,
                certificate,
                refused: Some(refused),
                authenticated: None,
                error: Some(ErrorReport {
                    kind: "tls",
                    message: advice::error(&error),
                }),
            };
            print(&probe, args.json);
            return Ok(EX_PROTOCOL);
        }
        Err(e) => {
            let message = advice::error(&e);
            return Err(match e {
                TlsError::Resolve { .. } => Failure::new(EX_NOHOST, message),
                TlsError::Tls { .. } => Failure::new(EX_PROTOCOL, message).kind("tls"),
                _ => Failure::new(EX_TEMPFAIL, message).kind("connect"),
            });
        }
    };
    server.client_id = match &args.helo {
        Some(h) => ClientId::parse(h).map_err(|e| Failure::usage(format!("--helo: {e}")))?,
        None => ClientId::parse(&hostname()).unwrap_or_else(|_| ClientId::localhost()),
    };
    if let Some(c) = credentials {
        server = server
            .with_credentials(c)
            .with_auth(mechanism(args.login.auth.unwrap_or(AuthArg::Auto)));
    }
    let mut client = server
        .client(transport.now())
        .map_err(|e| Failure::new(EX_SOFTWARE, advice::error(&e)))?;
    client.quit(transport.now());
    let mut first_caps: Option<Vec<String>> = None;
    let mut authenticated: Option<String> = None;
    let hint = (!implicit).then(|| GreetingHint::start(&host, port));
    let mut observe = |e: &Event| match e {
        Event::Greeting(_) => {
            if let Some(h) = &hint {
                h.greeted();
            }
        }
        Event::Authenticated(m) => authenticated = Some(m.name().to_owned()),
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
    drop(hint);
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
        tls: report.tls.as_ref().map(|t| {
            let c = t.certificate.as_ref();
            TlsReport {
                version: t.version.clone(),
                cipher_suite: t.cipher_suite.clone(),
                verified: t.verified,
                verify_error: t.verify_error.as_deref().map(advice::flags),
                subject: c.and_then(|c| c.subject.clone()),
                issuer: c.and_then(|c| c.issuer.clone()),
                names: c.map(|c| c.names.clone()).unwrap_or_default(),
                not_before: c.and_then(|c| c.not_before.clone()),
                not_after: c.and_then(|c| c.not_after.clone()),
                sha256: c.map(|c| c.sha256.clone()),
            }
        }),
        // From the session, or from the handshake that refused it.
        certificate: match (&report.tls, &report.error) {
            (Some(t), _) => t.certificate.as_ref(),
            (None, Some(Error::Tls(failure))) => failure.certificate.as_deref(),
            _ => None,
        }
        .map(CertificateReport::of),
        refused: match &report.error {
            Some(Error::Tls(failure)) if report.tls.is_none() => {
                Some(advice::flags(&failure.detail))
            }
            _ => None,
        },
        authenticated,
        error: report.error.as_ref().map(ErrorReport::of_session),
    };
    print(&probe, args.json);
    // The same codes as `send`: 76 for the encryption policy, 77 for AUTH.
    Ok(match &report.error {
        Some(e) => session_exit_code(e).unwrap_or(EX_TEMPFAIL),
        None => EX_OK,
    })
}

/// The probe as JSON, or as `msmtp --serverinfo`-like lines.
fn print(probe: &Probe, json: bool) {
    if json {
        say!(
            "{}",
            serde_json::to_string_pretty(&probe).unwrap_or_default()
        );
    } else {
        row("server", format!("{} ({})", probe.host, probe.peer));
        if let Some(g) = &probe.greeting {
            row("greeting", g);
        }
        if !probe.capabilities_before_tls.is_empty() {
            row("before TLS", probe.capabilities_before_tls.join(", "));
        }
        row("offers", probe.capabilities.join(", "));
        row(
            "auth",
            if probe.auth.is_empty() {
                "none".to_owned()
            } else {
                probe.auth.join(" ")
            },
        );
        match (&probe.tls, &probe.certificate) {
            (Some(t), certificate) => {
                row("tls", format!("{} {}", t.version, t.cipher_suite));
                if let Some(c) = certificate {
                    c.print();
                }
                match &t.verify_error {
                    None => row("verified", "yes"),
                    Some(e) => row("verified", format!("no: {e}")),
                }
            }
            // The handshake refused the certificate: show it all the same.
            (None, Some(c)) => {
                row("tls", "failed: no TLS session");
                c.print();
                row(
                    "verified",
                    format!("no: {}", probe.refused.as_deref().unwrap_or("?")),
                );
            }
            (None, None) => row("tls", "none"),
        }
        if let Some(m) = &probe.authenticated {
            row("login", format!("ok ({m})"));
        }
        if let Some(e) = &probe.error {
            row("error", &e.message);
        }
    }
}

#[derive(Serialize)]
struct MxHost {
    host: String,
    preference: u16,
    addresses: Vec<String>,
    error: Option<String>,
}

/// The domain's MTA-STS policy as `smtp mx` shows it (through the same
/// file cache as `smtp send`): JSON, and the text lines.
async fn mta_sts_policy(
    args: &MxArgs,
    resolver: std::sync::Arc<HickoryResolver>,
    domain: &str,
    hosts: &[String],
) -> Result<(serde_json::Value, Vec<String>), Failure> {
    use smtp_core::delivery::direct::TlsPolicySource;
    use smtp_core::delivery::mta_sts::Mode;
    use smtp_queue::mta_sts::MtaSts;
    let cache = crate::send::sts_cache();
    let sts = MtaSts::new(resolver, trust(args.ca_file.as_deref())?, cache)
        .with_port(args.mta_sts_port.unwrap_or(443));
    let tls = sts.domain_tls(domain).await;
    let problem = tls
        .problem
        .as_ref()
        .map(|(kind, detail)| serde_json::json!({"result_type": kind.as_str(), "detail": detail}));
    let Some(p) = &tls.mta_sts else {
        let mut lines = vec!["MTA-STS: no policy".to_owned()];
        if let Some((kind, detail)) = &tls.problem {
            lines.push(format!(
                "  ignored ({kind}): {}",
                crate::terminal::one_line(detail)
            ));
        }
        return Ok((
            serde_json::json!({"policy": null, "problem": problem}),
            lines,
        ));
    };
    let mx: Vec<String> = p.policy.mx.iter().map(ToString::to_string).collect();
    // The MX hosts the policy does not name: never used under enforce.
    let excluded: Vec<&String> = hosts
        .iter()
        .filter(|h| p.policy.mode != Mode::None && !p.policy.allows(h))
        .collect();
    let source = if p.from_cache { "cache" } else { "fetched" };
    // A cache file is outside input: no overflow on a far expiry.
    let expires = SystemTime::UNIX_EPOCH
        .checked_add(Duration::from_secs(p.expires_at))
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let json = serde_json::json!({
        "policy": {
            "mode": p.policy.mode.to_string(),
            "mx": mx,
            "max_age": p.policy.max_age,
            "id": p.id,
            "source": source,
            "expires": smtp_queue::time::rfc3339(expires),
        },
        "not_named": excluded,
        "problem": problem,
    });
    let mut lines = vec![
        format!(
            "MTA-STS: {} (id {}, max_age {}, {})",
            p.policy.mode,
            p.id,
            p.policy.max_age,
            if p.from_cache {
                "from cache"
            } else {
                "fetched"
            }
        ),
        format!("  mx: {}", mx.join(", ")),
    ];
    if !excluded.is_empty() {
        let names: Vec<&str> = excluded.iter().map(|h| h.as_str()).collect();
        let under = if p.policy.mode == Mode::Enforce {
            "never used"
        } else {
            "would not be used under enforce"
        };
        lines.push(format!(
            "  not named by the policy: {} ({under})",
            names.join(", ")
        ));
        if excluded.len() == hosts.len() && p.policy.mode == Mode::Enforce {
            lines.push(
                "  no MX host matches the policy: mail to this domain is deferred until the \
                 policy's mx patterns or the MX records change"
                    .to_owned(),
            );
        }
    }
    if let Some((kind, detail)) = &tls.problem {
        lines.push(format!(
            "  refresh failed ({kind}): {}; the cached policy stays",
            crate::terminal::one_line(detail)
        ));
    }
    Ok((json, lines))
}

pub(crate) async fn mx(args: MxArgs) -> Result<u8, Failure> {
    let resolver = match &args.dns_server {
        Some(ns) => HickoryResolver::with_nameserver(
            HickoryResolver::parse_nameserver(ns).map_err(|e| Failure::usage(e.to_string()))?,
            Duration::from_secs(5),
        ),
        None => HickoryResolver::system(),
    }
    .map_err(|e| Failure::config(format!("{e} (use --dns-server IP[:PORT])")))?;
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
            let resolver = std::sync::Arc::new(resolver);
            let sts = if args.no_mta_sts {
                None
            } else {
                let names: Vec<String> = p.hosts.iter().map(|h| h.name.clone()).collect();
                Some(mta_sts_policy(&args, resolver, domain.as_str(), &names).await?)
            };
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
                smtp_core::delivery::mx::PlanKind::Mx => "mx",
                smtp_core::delivery::mx::PlanKind::ImplicitMx => "implicit-mx",
            };
            if args.json {
                let v = serde_json::json!({
                    "version": JSON_VERSION,
                    "domain": p.domain,
                    "kind": kind,
                    "hosts": hosts,
                    "mta_sts": sts.as_ref().map(|(json, _)| json),
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
                for line in sts.iter().flat_map(|(_, lines)| lines) {
                    say!("{line}");
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
