//! `smtp setup ADDRESS`: find the submission server of an address's
//! domain, test it and the login, and save it as an account.
//!
//! 1. Candidates: RFC 6186 SRV records (`_submissions._tcp` for implicit
//!    TLS, `_submission._tcp` for STARTTLS), then the domain's
//!    autoconfiguration document (`https://autoconfig.DOMAIN/mail/config-v1.1.xml`,
//!    else `https://DOMAIN/.well-known/autoconfig/mail/config-v1.1.xml`;
//!    fetched with a verified certificate, at most 64 KiB, parsed strictly:
//!    [`autoconfig`]); when neither names one, the usual names
//!    (`smtp.DOMAIN`, `mail.DOMAIN`) on 465 and 587. Every lookup goes
//!    through the resolver (`--dns-server`), never the system's.
//! 2. Each candidate is probed (TLS under Required, so that a bad
//!    certificate is seen and named rather than only refused; EHLO; the
//!    AUTH mechanisms) and ranked: usable before broken, a verified
//!    certificate before one that is not, implicit TLS (RFC 8314) before
//!    STARTTLS, AUTH offered before none, then the order found.
//! 3. The login is tested on the best one, under Certified, without
//!    sending mail; a failure is said in plain words (wrong password, an
//!    app password needed, OAuth2 wanted).
//! 4. The account is written into the config file (mode 0600) after a
//!    confirmation (`--yes` for scripts); the password only with
//!    `--store-password`.

mod autoconfig;

use std::io::{BufRead, IsTerminal, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use smtp_core::Phase;
use smtp_core::delivery::direct::{Attempt, diagnose};
use smtp_core::delivery::mx::{DnsError, Resolver};
use smtp_core::delivery::{Transport, drive};
use smtp_core::ehlo::ClientId;
use smtp_core::sasl::Credentials;
use smtp_core::{Error, Event, Timeouts, TlsPolicy};
use smtp_dns::{HickoryResolver, RecordResolver};
use smtp_tls::https::HttpsGet;
use smtp_tls::{Error as TlsError, Server, TcpTransport, Trust};

use crate::advice;
use crate::cli::{AuthArg, SetupArgs};
use crate::config;
use crate::fail::{EX_NOPERM, EX_OK, EX_PROTOCOL, EX_UNAVAILABLE, Failure};
use crate::output::{ErrorReport, JSON_VERSION};
use crate::secrets::{self, DEFAULT_ENV};
use crate::send::{hostname, trust};
use crate::settings::mechanism;

/// Addresses of one host tried at most.
const MAX_ADDRESSES: usize = 3;

/// Where a candidate came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Origin {
    /// An RFC 6186 SRV record.
    Srv,
    /// The domain's autoconfiguration document.
    Autoconfig,
    /// The usual names, tried when nothing is published.
    Guess,
}

/// A server that may take submissions for the domain.
#[derive(Clone, Debug, Serialize)]
struct Candidate {
    host: String,
    port: u16,
    implicit_tls: bool,
    source: Origin,
}

/// What probing a candidate found.
#[derive(Debug, Serialize)]
struct Probed {
    #[serde(flatten)]
    candidate: Candidate,
    /// The address that answered.
    address: Option<String>,
    /// TLS was made (implicit, or STARTTLS offered and done).
    tls: bool,
    /// The certificate verified for `host`.
    verified: bool,
    /// Why it did not.
    verify_error: Option<String>,
    /// The AUTH mechanisms offered (after TLS).
    auth: Vec<String>,
    /// What made the candidate unusable, in plain words.
    problem: Option<String>,
}

impl Probed {
    fn usable(&self) -> bool {
        self.problem.is_none() && self.tls
    }

    /// Smaller is better: see the module's ranking.
    fn rank(&self) -> (bool, bool, bool, bool) {
        (
            !self.usable(),
            !self.verified,
            !self.candidate.implicit_tls,
            self.auth.is_empty(),
        )
    }

    /// One line for the text report.
    fn line(&self) -> String {
        let c = &self.candidate;
        let how = if c.implicit_tls {
            "implicit TLS"
        } else {
            "STARTTLS"
        };
        let state = match (&self.problem, self.verified) {
            (Some(p), _) => format!("unusable: {p}"),
            (None, true) => format!("certificate verified; AUTH {}", auth_list(&self.auth)),
            (None, false) => format!(
                "certificate NOT verified ({}); AUTH {}",
                self.verify_error.as_deref().unwrap_or("?"),
                auth_list(&self.auth)
            ),
        };
        let from = match c.source {
            Origin::Srv => "SRV record",
            Origin::Autoconfig => "autoconfiguration",
            Origin::Guess => "usual name",
        };
        format!("{}:{} ({how}, {from}): {state}", c.host, c.port)
    }
}

fn auth_list(auth: &[String]) -> String {
    if auth.is_empty() {
        "none".to_owned()
    } else {
        auth.join(" ")
    }
}

/// How the login test ended.
#[derive(Debug, Serialize)]
struct Login {
    user: String,
    ok: bool,
    mechanism: Option<String>,
    /// `wrong-password`, `app-password`, `oauth2`, `temporary`, `session`.
    problem: Option<&'static str>,
    message: Option<String>,
}

/// What `--json` prints: each step's findings.
#[derive(Debug, Serialize)]
struct Report {
    version: u32,
    address: String,
    domain: String,
    /// Each autoconfiguration URL tried and what it gave.
    autoconfig: Vec<AutoconfigTry>,
    candidates: Vec<Probed>,
    chosen: Option<Candidate>,
    login: Option<Login>,
    account: Option<AccountReport>,
    send_command: Option<String>,
    error: Option<ErrorReport>,
}

#[derive(Debug, Serialize)]
struct AutoconfigTry {
    url: String,
    status: Option<u16>,
    /// SMTP servers with TLS it names.
    servers: usize,
    error: Option<String>,
}

#[derive(Debug, Serialize)]
struct AccountReport {
    name: String,
    path: String,
    written: bool,
    password_stored: bool,
}

pub(crate) async fn run(args: SetupArgs) -> Result<u8, Failure> {
    let (local, domain) = args
        .address
        .rsplit_once('@')
        .filter(|(l, d)| !l.is_empty() && !d.is_empty())
        .ok_or_else(|| Failure::usage(format!("{:?} is not an address", args.address)))?;
    let domain = smtp_core::address::Domain::parse(domain)
        .map_err(|e| Failure::data(e.to_string()))?
        .as_str()
        .to_owned();
    let address = format!("{local}@{domain}");
    let resolver = match &args.dns_server {
        Some(ns) => HickoryResolver::with_nameserver(
            HickoryResolver::parse_nameserver(ns).map_err(|e| Failure::usage(e.to_string()))?,
            Duration::from_secs(5),
        ),
        None => HickoryResolver::system(),
    }
    .map_err(|e| Failure::config(format!("{e} (use --dns-server IP[:PORT])")))?;
    let trust = trust(args.ca_file.as_deref())?;
    let mut timeouts = Timeouts::uniform(Duration::from_secs(args.command_timeout.unwrap_or(30)));
    timeouts.connect = Duration::from_secs(args.connect_timeout.unwrap_or(10));
    let client_id = match &args.helo {
        Some(h) => ClientId::parse(h).map_err(|e| Failure::usage(format!("--helo: {e}")))?,
        None => ClientId::parse(&hostname()).unwrap_or_else(|_| ClientId::localhost()),
    };
    let name = args.account.clone().unwrap_or_else(|| domain.clone());
    let path = args
        .config
        .clone()
        .or_else(config::default_path)
        .ok_or_else(|| Failure::config("no config file: give --config FILE (HOME is not set)"))?;
    let mut report = Report {
        version: JSON_VERSION,
        address: address.clone(),
        domain: domain.clone(),
        autoconfig: Vec::new(),
        candidates: Vec::new(),
        chosen: None,
        login: None,
        account: None,
        send_command: None,
        error: None,
    };
    let out = Out { json: args.json };

    // 1. Candidates.
    let (candidates, tries) = discover(&resolver, &trust, &domain, &address, &args).await;
    for t in &tries {
        let what = match (&t.error, t.status) {
            (Some(e), _) => e.clone(),
            (None, Some(200)) => format!("{} SMTP server(s) with TLS", t.servers),
            (None, Some(status)) => format!("HTTP {status}"),
            (None, None) => "?".to_owned(),
        };
        out.line(&format!("autoconfig {}: {what}", t.url));
    }
    report.autoconfig = tries;
    let from = |o: Origin| candidates.iter().any(|c| c.source == o);
    let origin = match (from(Origin::Srv), from(Origin::Autoconfig)) {
        (true, true) => "from its SRV records and its autoconfiguration",
        (true, false) => "from its SRV records",
        (false, true) => "from its autoconfiguration",
        (false, false) => "nothing published: the usual names",
    };
    out.line(&format!(
        "{domain}: {} candidate submission server{} ({origin})",
        candidates.len(),
        if candidates.len() == 1 { "" } else { "s" },
    ));

    // 2. Probe and rank.
    let env = Probing {
        resolver: &resolver,
        trust: &trust,
        timeouts: &timeouts,
        client_id: &client_id,
    };
    let mut probed = Vec::new();
    for c in candidates {
        probed.push(env.probe(c).await);
    }
    probed.sort_by_key(Probed::rank);
    for p in &probed {
        out.line(&format!("  {}", p.line()));
    }
    report.candidates = probed;
    let chosen = match report.candidates.first() {
        Some(p) if p.usable() && p.verified => p,
        Some(p) if p.usable() => {
            let why = p.verify_error.as_deref().unwrap_or("?");
            // The verdict may carry the advice already: said once.
            let advice = if why.contains("--ca-file") {
                ""
            } else {
                ": if that is your provider's own CA, give it with --ca-file"
            };
            let f = Failure::new(
                EX_PROTOCOL,
                format!(
                    "no candidate has a certificate that verifies; the best, {}:{}, has one \
                     that does not ({why}){advice}; setup needs a verified certificate, so \
                     nothing was written",
                    p.candidate.host, p.candidate.port,
                ),
            )
            .kind("tls");
            return out.fail(report, f);
        }
        _ => {
            let f = Failure::new(
                EX_UNAVAILABLE,
                format!(
                    "no submission server for {domain} could be used{}; nothing was written",
                    if report.candidates.is_empty() {
                        String::new()
                    } else {
                        " (see each candidate above)".to_owned()
                    }
                ),
            )
            .kind("connect");
            return out.fail(report, f);
        }
    };
    let chosen_candidate = chosen.candidate.clone();
    let chosen_address = chosen.address.clone();
    let offers_auth = !chosen.auth.is_empty();
    let oauth_only = offers_auth && chosen.auth.iter().all(|m| is_oauth(m));
    report.chosen = Some(chosen_candidate.clone());
    out.line(&format!(
        "using {}:{} ({})",
        chosen_candidate.host,
        chosen_candidate.port,
        if chosen_candidate.implicit_tls {
            "implicit TLS"
        } else {
            "STARTTLS"
        }
    ));

    // 3. The login.
    let user = args.login.user.clone().unwrap_or_else(|| address.clone());
    let mut secret = None;
    if offers_auth {
        let password = match password(&args, &user, &chosen_candidate.host) {
            Ok(p) => p,
            Err(f) => return out.fail(report, f),
        };
        let credentials = secrets::credentials(user.clone(), password.clone(), args.login.auth);
        secret = Some(password);
        let login = env
            .login(
                &chosen_candidate,
                chosen_address.as_deref(),
                credentials,
                args.login.auth,
                oauth_only,
            )
            .await;
        let failed = (!login.ok).then(|| login.message.clone().unwrap_or_default());
        if login.ok {
            out.line(&format!(
                "login as {user}: ok ({})",
                login.mechanism.as_deref().unwrap_or("?")
            ));
        }
        report.login = Some(login);
        if let Some(message) = failed {
            let f = Failure::new(EX_NOPERM, format!("{message}; nothing was written"))
                .kind("authentication");
            return out.fail(report, f);
        }
    } else {
        out.line("the server offers no AUTH: the account is saved without a login");
    }

    // 4. The account.
    let account = account_table(
        &args,
        &chosen_candidate,
        &address,
        offers_auth.then_some(&user),
        secret.as_deref(),
    );
    let stored = args.store_password && secret.is_some();
    report.account = Some(AccountReport {
        name: name.clone(),
        path: path.display().to_string(),
        written: false,
        password_stored: stored,
    });
    out.line(&format!("account {name:?} for {}:", path.display()));
    for line in toml::to_string(&account).unwrap_or_default().lines() {
        // The password itself is never shown.
        if line.starts_with("password =") {
            out.line("  password = (stored)");
        } else {
            out.line(&format!("  {line}"));
        }
    }
    if !args.yes {
        match confirm(&format!(
            "write account {name:?} to {}? [y/N] ",
            path.display()
        )) {
            Ok(true) => {}
            Ok(false) => {
                out.line("nothing written");
                out.finish(&report);
                return Ok(EX_OK);
            }
            Err(f) => return out.fail(report, f),
        }
    }
    if let Err(f) = write_account(&path, &name, account) {
        return out.fail(report, f);
    }
    if let Some(a) = &mut report.account {
        a.written = true;
    }
    let config_flag = match &args.config {
        Some(p) => format!(" --config {}", shell_word(&p.display().to_string())),
        None => String::new(),
    };
    let send = format!(
        "smtp send{config_flag} --account {} --to RECIPIENT --subject …",
        shell_word(&name)
    );
    out.line(&format!("written: {}", path.display()));
    if offers_auth && !stored && args.login.source().ok().flatten().is_none() {
        out.line(&format!(
            "the password is not stored: `smtp send` asks for it on a terminal or reads \
             {DEFAULT_ENV}; or add to the account, e.g.: password_command = \"pass show smtp/{name}\""
        ));
    }
    out.line(&format!("send with: {send}"));
    report.send_command = Some(send);
    out.finish(&report);
    Ok(EX_OK)
}

/// Text lines unless `--json`; with it, one object at the end.
struct Out {
    json: bool,
}

impl Out {
    fn line(&self, text: &str) {
        if !self.json {
            say!("{text}");
        }
    }

    fn finish(&self, report: &Report) {
        if self.json {
            say!(
                "{}",
                serde_json::to_string_pretty(report).unwrap_or_default()
            );
        }
    }

    /// Ends the command with `failure`: the report so far (with `--json`)
    /// and the error line (by `main`).
    fn fail(&self, mut report: Report, failure: Failure) -> Result<u8, Failure> {
        if self.json {
            report.error = Some(ErrorReport::of_failure(&failure));
            self.finish(&report);
            // `main` prints the error line on stderr; the object is out.
            tell!("smtp: {failure}");
            return Ok(failure.code);
        }
        Err(failure)
    }
}

/// The candidates, best-known first: SRV records by priority (implicit
/// TLS first at equal priority), then the autoconfiguration's servers in
/// its order; else the usual names. Also each autoconfiguration URL tried.
async fn discover(
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
const MAX_CANDIDATES: usize = 8;

/// The SMTP servers of the first autoconfiguration document found: at
/// `autoconfig.DOMAIN`, else at the domain's `.well-known` path. A host
/// that does not exist is skipped without a word.
async fn autoconfig_servers(
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

fn is_oauth(mechanism: &str) -> bool {
    mechanism.eq_ignore_ascii_case("XOAUTH2") || mechanism.eq_ignore_ascii_case("OAUTHBEARER")
}

/// What probing and the login test share.
struct Probing<'a> {
    resolver: &'a HickoryResolver,
    trust: &'a Trust,
    timeouts: &'a Timeouts,
    client_id: &'a ClientId,
}

impl Probing<'_> {
    /// The settings for `candidate` at `addr` (the certificate is checked
    /// against the host name, not the address).
    fn server(&self, c: &Candidate, addr: IpAddr, policy: TlsPolicy) -> Server {
        Server::new(addr.to_string(), c.port)
            .with_server_name(c.host.clone())
            .with_implicit_tls(c.implicit_tls)
            .with_policy(policy)
            .with_trust(self.trust.clone())
            .with_timeouts(*self.timeouts)
            .with_client_id(self.client_id.clone())
    }

    async fn probe(&self, candidate: Candidate) -> Probed {
        let mut probed = Probed {
            candidate,
            address: None,
            tls: false,
            verified: false,
            verify_error: None,
            auth: Vec::new(),
            problem: None,
        };
        let c = &probed.candidate;
        let addrs = match self.resolver.addresses(&c.host).await {
            Ok(a) if !a.is_empty() => a,
            Ok(_) => {
                probed.problem = Some(format!("{} has no address", c.host));
                return probed;
            }
            Err(DnsError::NxDomain) => {
                probed.problem = Some(format!("{} does not exist", c.host));
                return probed;
            }
            Err(e) => {
                probed.problem = Some(format!("cannot look up {}: {e}", c.host));
                return probed;
            }
        };
        let mut attempts = Vec::new();
        for ip in addrs.into_iter().take(MAX_ADDRESSES) {
            // Required: a certificate that does not verify is still seen,
            // and named, rather than only refused.
            let server = self.server(c, ip, TlsPolicy::Required);
            let mut transport = match TcpTransport::connect(&server).await {
                Ok(t) => t,
                Err(TlsError::Unreachable { attempts: a, .. }) => {
                    attempts.extend(a.into_iter().map(|(addr, failure)| Attempt {
                        host: c.host.clone(),
                        addr,
                        failure: Some(failure),
                        error: None,
                    }));
                    continue;
                }
                Err(e) => {
                    probed.problem = Some(advice::error(&e));
                    return probed;
                }
            };
            let peer = transport.peer();
            let Ok(mut client) = server.client(transport.now()) else {
                probed.problem = Some("cannot start a session".to_owned());
                return probed;
            };
            client.quit(transport.now());
            let report = drive(&mut client, &mut transport, &mut [], &mut |_: &Event| {}).await;
            if let Some(
                e @ (Error::ConnectionClosed {
                    phase: Phase::Greeting,
                }
                | Error::Timeout {
                    phase: Phase::Greeting,
                    ..
                }),
            ) = &report.error
            {
                attempts.push(Attempt {
                    host: c.host.clone(),
                    addr: peer,
                    failure: None,
                    error: Some(e.clone()),
                });
                continue;
            }
            probed.address = Some(peer.ip().to_string());
            if let Some(t) = &report.tls {
                probed.tls = true;
                probed.verified = t.verified;
                probed.verify_error = t.verify_error.as_deref().map(setup_flags);
            }
            probed.auth = report
                .capabilities
                .as_ref()
                .map(|c| c.auth_mechanisms().to_vec())
                .unwrap_or_default();
            probed.problem = report
                .error
                .as_ref()
                .map(|e| ErrorReport::of_session(e).message);
            return probed;
        }
        probed.problem = Some(unreachable_words(&attempts, c.port));
        probed
    }

    /// Logs in on `c` under Certified, sends no mail.
    async fn login(
        &self,
        c: &Candidate,
        address: Option<&str>,
        credentials: Credentials,
        auth: Option<AuthArg>,
        oauth_only: bool,
    ) -> Login {
        let user = credentials.username().to_owned();
        let mut login = Login {
            user,
            ok: false,
            mechanism: None,
            problem: None,
            message: None,
        };
        let Some(Ok(ip)) = address.map(str::parse::<IpAddr>) else {
            login.problem = Some("session");
            login.message = Some(format!("no address of {} to log in on", c.host));
            return login;
        };
        let server = self
            .server(c, ip, TlsPolicy::Certified)
            .with_credentials(credentials)
            .with_auth(mechanism(auth.unwrap_or(AuthArg::Auto)));
        let mut transport = match TcpTransport::connect(&server).await {
            Ok(t) => t,
            Err(e) => {
                login.problem = Some("session");
                login.message = Some(advice::error(&e));
                return login;
            }
        };
        let Ok(mut client) = server.client(transport.now()) else {
            login.problem = Some("session");
            login.message = Some("cannot start a session".to_owned());
            return login;
        };
        client.quit(transport.now());
        let mut mechanism_used = None;
        let report = drive(&mut client, &mut transport, &mut [], &mut |e: &Event| {
            if let Event::Authenticated(m) = e {
                mechanism_used = Some(m.name().to_owned());
            }
        })
        .await;
        login.mechanism = mechanism_used;
        match (&login.mechanism, &report.error) {
            (Some(_), _) => login.ok = true,
            (None, Some(e)) => {
                let (problem, message) = login_failure(e, &login.user, oauth_only);
                login.problem = Some(problem);
                login.message = Some(message);
            }
            (None, None) => {
                login.problem = Some("session");
                login.message = Some("the session ended without a login".to_owned());
            }
        }
        login
    }
}

/// A verification verdict with smtp-tls's advice said in setup's terms:
/// `setup` has no policy to weaken, only `--ca-file`.
fn setup_flags(text: &str) -> String {
    text.replace(
        smtp_tls::UNKNOWN_ISSUER_ADVICE,
        "if it is your provider's own CA, give it with --ca-file",
    )
    .replace(
        smtp_tls::PINNING_ADVICE,
        "if it is the server's own, give that certificate with --ca-file (it is then pinned)",
    )
}

/// Every attempt failed to connect (or was cut before the greeting): the
/// port is probably blocked from here, said as direct delivery says it
/// for port 25, in submission's terms.
fn unreachable_words(attempts: &[Attempt], port: u16) -> String {
    let tried: Vec<String> = attempts
        .iter()
        .map(|a| match (&a.failure, &a.error) {
            (Some(f), _) => format!("{}: {f}", a.addr),
            (None, Some(e)) => format!("{}: {}", a.addr, advice::error_text(e)),
            (None, None) => a.addr.to_string(),
        })
        .collect();
    if diagnose(attempts, [], port).is_some() {
        format!(
            "nothing answered on port {port} ({}): outbound port {port} is probably blocked \
             or intercepted by this network (some networks block it), or the server is down; \
             try the other port ({}), or another network",
            tried.join("; "),
            if port == 465 { 587 } else { 465 }
        )
    } else {
        format!("could not connect ({})", tried.join("; "))
    }
}

/// A failed login in plain words: which problem, and what to do.
fn login_failure(e: &Error, user: &str, oauth_only: bool) -> (&'static str, String) {
    let said = advice::error_text(e);
    let Error::AuthenticationFailed { reply, .. } = e else {
        if oauth_only {
            return (
                "oauth2",
                format!(
                    "the provider wants OAuth2 (it offers only XOAUTH2/OAUTHBEARER): a password \
                     cannot log in; get an access token and use --auth xoauth2 ({said})"
                ),
            );
        }
        return ("session", format!("the login could not be tried: {said}"));
    };
    let text = reply.text().to_ascii_lowercase();
    let enhanced = reply.enhanced_code().map(|c| c.to_string());
    let code = reply.code();
    if enhanced.as_deref() == Some("5.7.9")
        || text.contains("application-specific")
        || text.contains("app password")
        || text.contains("app-specific")
    {
        return (
            "app-password",
            format!(
                "the provider wants an app password for {user}, not your usual one: create one \
                 in the account's security settings and use it ({said})"
            ),
        );
    }
    if oauth_only || text.contains("oauth") {
        return (
            "oauth2",
            format!(
                "the provider wants OAuth2 for {user}: a password cannot log in; get an access \
                 token and use --auth xoauth2 ({said})"
            ),
        );
    }
    if !code.is_permanent() {
        return (
            "temporary",
            format!("the server could not check the login just now; try again later ({said})"),
        );
    }
    (
        "wrong-password",
        format!(
            "wrong user name or password: the server refused the login as {user} ({said}); \
             check both (some providers want the full address as the user name)"
        ),
    )
}

/// The password: from the option that names its source, else
/// `SMTP_PASSWORD`, else asked for on the terminal.
fn password(args: &SetupArgs, user: &str, host: &str) -> Result<String, Failure> {
    if let Some(source) = args.login.source()? {
        return secrets::read(source);
    }
    if std::env::var_os(DEFAULT_ENV).is_none() && !std::io::stdin().is_terminal() {
        return Err(Failure::config(format!(
            "no password: set {DEFAULT_ENV}, give --password-env, --password-file or \
             --password-command, or run on a terminal to be asked for it"
        )));
    }
    secrets::read_default(user, host)
}

/// The account as the config file holds it.
fn account_table(
    args: &SetupArgs,
    c: &Candidate,
    address: &str,
    user: Option<&String>,
    secret: Option<&str>,
) -> toml::Table {
    let mut t = toml::Table::new();
    t.insert("server".into(), c.host.clone().into());
    t.insert("port".into(), i64::from(c.port).into());
    t.insert("implicit_tls".into(), c.implicit_tls.into());
    t.insert("tls".into(), "certified".into());
    if let Some(ca) = &args.ca_file {
        let ca = std::path::absolute(ca).unwrap_or_else(|_| ca.clone());
        t.insert("ca_file".into(), ca.display().to_string().into());
    }
    if let Some(u) = user {
        t.insert("user".into(), u.clone().into());
    }
    t.insert("from".into(), address.into());
    if let Some(v) = args
        .login
        .auth
        .and_then(|a| clap::ValueEnum::to_possible_value(&a))
    {
        t.insert("auth".into(), v.get_name().into());
    }
    if user.is_some() {
        // --store-password is asked for explicitly: it wins over the
        // source the password came from.
        if let (true, Some(s)) = (args.store_password, secret) {
            t.insert("password".into(), s.into());
        } else if let Some(v) = &args.login.password_env {
            t.insert("password_env".into(), v.clone().into());
        } else if let Some(f) = &args.login.password_file {
            let f = std::path::absolute(f).unwrap_or_else(|_| f.clone());
            t.insert("password_file".into(), f.display().to_string().into());
        } else if let Some(cmd) = &args.login.password_command {
            t.insert("password_command".into(), cmd.clone().into());
        }
    }
    t
}

/// Asks on the terminal; without one, refuses (`--yes` is for scripts).
fn confirm(question: &str) -> Result<bool, Failure> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return Err(Failure::usage(
            "nothing written: confirm on a terminal, or give --yes",
        ));
    }
    let mut err = std::io::stderr().lock();
    let _ = write!(err, "{question}");
    let _ = err.flush();
    let mut answer = String::new();
    stdin
        .lock()
        .read_line(&mut answer)
        .map_err(|e| Failure::io("reading the answer", &e))?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes" | "Yes"))
}

/// Puts `account` as `[accounts.NAME]` into the file at `path`: a new
/// account is appended as text, an existing one's lines replaced; the rest
/// of the file, comments included, stays as it is.
/// Other accounts are never touched. The file is written to a temporary
/// file of mode 0600 beside it and renamed over it.
fn write_account(path: &Path, name: &str, account: toml::Table) -> Result<(), Failure> {
    let existing = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => {
            return Err(Failure::config(format!(
                "cannot read {}: {e}",
                path.display()
            )));
        }
    };
    let doc: toml::Table = toml::from_str(&existing)
        .map_err(|e| Failure::config(format!("{}: {e}; nothing written", path.display())))?;
    let has = doc
        .get("accounts")
        .and_then(toml::Value::as_table)
        .is_some_and(|a| a.contains_key(name));
    let text = if has {
        let mut expected = doc.clone();
        let accounts = expected
            .get_mut("accounts")
            .and_then(toml::Value::as_table_mut)
            .ok_or_else(|| {
                Failure::config(format!("{}: accounts is not a table", path.display()))
            })?;
        accounts.insert(name.to_owned(), account.clone().into());
        // The account's own lines replaced, the rest of the file (comments,
        // order) as it was; checked by reading it back. Where the account
        // is written some other way, the file is written anew.
        match replaced_in_place(&existing, name, &account)
            .filter(|t| toml::from_str::<toml::Table>(t).ok().as_ref() == Some(&expected))
        {
            Some(text) => text,
            None => {
                tell!(
                    "smtp: note: {} is written anew (its comments are not kept): account {name:?} \
                     is not a [accounts.NAME] table of its own",
                    path.display()
                );
                toml::to_string(&expected).map_err(|e| Failure::config(e.to_string()))?
            }
        }
    } else {
        let mut accounts = toml::Table::new();
        accounts.insert(name.to_owned(), account.into());
        let mut wrapper = toml::Table::new();
        wrapper.insert("accounts".into(), accounts.into());
        let added = toml::to_string(&wrapper).map_err(|e| Failure::config(e.to_string()))?;
        let mut text = existing.clone();
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        if !text.is_empty() {
            text.push('\n');
        }
        text.push_str(&added);
        text
    };
    // What `send` will read must parse as it reads it.
    toml::from_str::<config::File>(&text)
        .map_err(|e| Failure::config(format!("{}: {e}; nothing written", path.display())))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        create_private_dir(dir)?;
    }
    let tmp = temp_beside(path);
    let written = write_private(&tmp, text.as_bytes()).and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(Failure::io(&format!("writing {}", path.display()), &e));
    }
    Ok(())
}

/// `text` with the lines of table `[accounts.NAME]` (its header to the
/// next table header) replaced by `account`; `None` when there is not
/// exactly one such table.
fn replaced_in_place(text: &str, name: &str, account: &toml::Table) -> Option<String> {
    let header_of = |line: &str| -> Option<Vec<String>> {
        let t = line.trim_start();
        if !t.starts_with('[') {
            return None;
        }
        // A header line parsed by TOML itself: its path of keys.
        let parsed: toml::Table = toml::from_str(&format!("{}\n", t.trim_end())).ok()?;
        let mut path = Vec::new();
        let mut table = &parsed;
        while let Some((key, value)) = table.iter().next() {
            path.push(key.clone());
            match value.as_table() {
                Some(t) if table.len() == 1 => table = t,
                _ => break,
            }
        }
        Some(path)
    };
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let headers: Vec<(usize, Vec<String>)> = lines
        .iter()
        .enumerate()
        .filter_map(|(i, l)| header_of(l).map(|p| (i, p)))
        .collect();
    let ours = |p: &Vec<String>| p.len() >= 2 && p[0] == "accounts" && p[1] == name;
    let mine: Vec<usize> = headers
        .iter()
        .filter(|(_, p)| ours(p))
        .map(|(i, _)| *i)
        .collect();
    let [start] = mine[..] else {
        return None;
    };
    let mut end = headers
        .iter()
        .map(|(i, _)| *i)
        .find(|i| *i > start)
        .unwrap_or(lines.len());
    // Comments and blank lines just above the next table are that table's.
    while end > start + 1 && {
        let l = lines[end - 1].trim();
        l.is_empty() || l.starts_with('#')
    } {
        end -= 1;
    }
    let mut wrapper = toml::Table::new();
    let mut accounts = toml::Table::new();
    accounts.insert(name.to_owned(), account.clone().into());
    wrapper.insert("accounts".into(), accounts.into());
    let new = toml::to_string(&wrapper).ok()?;
    let mut out: String = lines[..start].concat();
    out.push_str(&new);
    out.push_str(&lines[end..].concat());
    Some(out)
}

fn temp_beside(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{}.tmp", std::process::id()));
    path.with_file_name(name)
}

#[cfg(unix)]
fn create_private_dir(dir: &Path) -> Result<(), Failure> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| Failure::io(&format!("creating {}", dir.display()), &e))
}

#[cfg(not(unix))]
fn create_private_dir(dir: &Path) -> Result<(), Failure> {
    std::fs::create_dir_all(dir)
        .map_err(|e| Failure::io(&format!("creating {}", dir.display()), &e))
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, bytes)
}

/// `word` quoted for a POSIX shell when it needs it.
fn shell_word(word: &str) -> String {
    if !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "@%+=:,./-_".contains(c))
    {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use smtp_core::reply::{EnhancedCode, Reply, ReplyCode};
    use smtp_core::sasl::Mechanism;

    use super::*;

    fn refused(code: u16, enhanced: Option<(u8, u16, u16)>, text: &str) -> Error {
        Error::AuthenticationFailed {
            mechanism: Mechanism::Plain,
            reply: Reply::new(
                ReplyCode::new(code).unwrap(),
                enhanced.and_then(|(c, s, d)| EnhancedCode::new(c, s, d)),
                vec![text.to_owned()],
            ),
            detail: None,
        }
    }

    #[test]
    fn a_refused_login_is_named_by_what_the_provider_wants() {
        let kind = |e: &Error, oauth_only| login_failure(e, "a@example.org", oauth_only).0;
        let wrong = refused(535, Some((5, 7, 8)), "authentication credentials invalid");
        assert_eq!(kind(&wrong, false), "wrong-password");
        let (_, words) = login_failure(&wrong, "a@example.org", false);
        assert!(words.contains("wrong user name or password"), "{words}");
        let app = refused(
            534,
            Some((5, 7, 9)),
            "Application-specific password required",
        );
        assert_eq!(kind(&app, false), "app-password");
        let app = refused(535, None, "Please use an app password for this account");
        assert_eq!(kind(&app, false), "app-password");
        let oauth = refused(535, None, "use OAuth to log in");
        assert_eq!(kind(&oauth, false), "oauth2");
        assert_eq!(kind(&wrong, true), "oauth2");
        let later = refused(454, Some((4, 7, 0)), "temporary authentication failure");
        assert_eq!(kind(&later, false), "temporary");
    }

    #[test]
    fn an_account_is_appended_or_replaced_and_the_others_stay() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("config.toml");
        let account = |server: &str| {
            let mut t = toml::Table::new();
            t.insert("server".into(), server.into());
            t
        };
        write_account(&path, "work", account("a.example")).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(
            &path,
            format!("# mine\n{text}\n[accounts.home]\nserver = \"h.example\"\n"),
        )
        .unwrap();
        write_account(&path, "new", account("n.example")).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("# mine\n"), "{text}");
        std::fs::write(
            &path,
            std::fs::read_to_string(&path).unwrap().replace(
                "[accounts.home]",
                "# home's own note\n[accounts.home] # inline",
            ),
        )
        .unwrap();
        write_account(&path, "work", account("b.example")).unwrap();
        // Replaced in place: every comment and the order stay.
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("# mine\n"), "{text}");
        assert!(
            text.contains("# home's own note\n[accounts.home] # inline"),
            "{text}"
        );
        let order: Vec<usize> = ["[accounts.work]", "[accounts.home]", "[accounts.new]"]
            .iter()
            .map(|h| text.find(h).unwrap())
            .collect();
        assert!(order.is_sorted(), "{text}");
        let file: toml::Table = toml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let accounts = file["accounts"].as_table().unwrap();
        assert_eq!(accounts["work"]["server"].as_str(), Some("b.example"));
        assert_eq!(accounts["home"]["server"].as_str(), Some("h.example"));
        assert_eq!(accounts["new"]["server"].as_str(), Some("n.example"));
        assert_eq!(accounts.len(), 3);
        // A file `send` could not read is not written over.
        std::fs::write(&path, "[accounts.x]\nbogus = 1\n").unwrap();
        assert!(write_account(&path, "work", account("c.example")).is_err());
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "[accounts.x]\nbogus = 1\n"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(path.parent().unwrap()), 0o700);
        }
    }
}
