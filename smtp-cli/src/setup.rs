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

mod account;
mod autoconfig;
mod discover;
mod probe;

use account::*;
use discover::*;
use probe::*;

use std::io::IsTerminal;
use std::time::Duration;

use serde::Serialize;
use smtp_core::Timeouts;
use smtp_core::ehlo::ClientId;
use smtp_dns::HickoryResolver;

use crate::cli::SetupArgs;
use crate::config;
use crate::fail::{EX_NOPERM, EX_OK, EX_PROTOCOL, EX_UNAVAILABLE, Failure};
use crate::output::{ErrorReport, JSON_VERSION};
use crate::secrets::{self, DEFAULT_ENV};
use crate::send::{hostname, trust};

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
