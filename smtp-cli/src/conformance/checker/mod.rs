//! `smtp conformance server HOST[:PORT]`: checks a mail server for its
//! operator. Each check opens its own sessions, judges by the replies, and
//! says in one line pass, FAIL or n/a (and why), with its RFC or CVE.
//!
//! ```text
//! args ─> authorisation (loopback, or --i-am-authorised) ─> Ctx
//!   ─> each check (smuggling.rs, probes.rs, tls.rs) ─> Outcome ─> report.rs
//! ```
//!
//! Every read is bounded in size and by `--timeout` (wire.rs).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use rustls::pki_types::ServerName;

use super::report::{self, CaseResult, Kind, Role, Verdict};
use super::{EXIT_FAIL, EXIT_PASS, EXIT_USAGE};
use crate::fail::Failure;

mod probes;
mod smuggling;
mod tls;
mod wire;

/// `smtp conformance server`.
#[derive(Debug, Args)]
pub(crate) struct ServerArgs {
    /// The server: `HOST` or `HOST:PORT` (default port 25; `[v6]:PORT`).
    #[arg(value_name = "HOST[:PORT]", required_unless_present = "list")]
    pub(crate) target: Option<String>,
    /// Check a server outside 127.0.0.0/8 and ::1: say that you run it or
    /// are allowed to test it (the checks send test mail and try relaying).
    #[arg(long = "i-am-authorised", alias = "i-am-authorized")]
    pub(crate) authorised: bool,
    /// A mailbox you own, for the checks that send mail (smuggling,
    /// pipelining): test messages may be delivered to it. Required outside
    /// loopback; default there `postmaster@localhost`.
    #[arg(long, value_name = "ADDR")]
    pub(crate) rcpt: Option<String>,
    /// The sender of the test messages.
    #[arg(
        long,
        value_name = "ADDR",
        default_value = "conformance-check@outside-1.example"
    )]
    pub(crate) from: String,
    /// An outside domain the server must not relay to (open-relay).
    #[arg(long, value_name = "DOMAIN", default_value = "outside-2.example")]
    pub(crate) relay_domain: String,
    /// The name the certificate must match (default: HOST as given).
    #[arg(long, value_name = "NAME")]
    pub(crate) name: Option<String>,
    /// Also trust the CAs in this PEM file (besides the web PKI roots).
    #[arg(long, value_name = "FILE")]
    pub(crate) ca_file: Option<PathBuf>,
    /// Seconds any one connect, write or reply may take.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    pub(crate) timeout: u64,
    /// Seconds a whole check may take (all its sessions).
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    pub(crate) check_timeout: u64,
    /// Authenticate (AUTH PLAIN, inside TLS only) before the test
    /// messages of the smuggling and pipelining checks, for a server that
    /// takes mail only from its users. With --password-file.
    #[arg(long, value_name = "USER", requires = "password_file")]
    pub(crate) user: Option<String>,
    /// A file holding the password for --user (its first line).
    #[arg(long, value_name = "FILE", requires = "user")]
    pub(crate) password_file: Option<PathBuf>,
    /// Checks to run, comma-separated (default: all).
    #[arg(long, value_delimiter = ',', value_name = "ID,…")]
    pub(crate) checks: Vec<String>,
    /// List the checks (Markdown) and exit.
    #[arg(long)]
    pub(crate) list: bool,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub(crate) json: bool,
    /// Also write JUnit XML to this file.
    #[arg(long, value_name = "FILE")]
    pub(crate) junit: Option<PathBuf>,
}

/// One check: its id, what it sends and finds, its reference.
pub(super) struct Check {
    pub(super) id: &'static str,
    pub(super) what: &'static str,
    pub(super) fail_means: &'static str,
    pub(super) reference: &'static str,
    /// It sends mail to `--rcpt`.
    pub(super) sends_mail: bool,
    /// How to fix a FAIL, in a line (Postfix and Exim settings).
    pub(super) fix: &'static str,
}

pub(super) static CHECKS: &[Check] = &[
    Check {
        id: "smuggling",
        what: "six messages, each with a non-standard end of data (`\\n.\\n`, `\\r.\\r`, `\\n.\\r\\n`, `\\r.\\n`, `\\r\\n.\\n`, `\\n.\\r`) then a smuggled MAIL/RCPT/DATA, then the real `\\r\\n.\\r\\n`",
        fail_means: "the server ended the data early and answered the smuggled commands: spoofed mail can pass through an outbound server into this one",
        reference: "RFC 5321 §4.1.1.4, §2.3.8; CVE-2023-51764/51765/51766",
        sends_mail: true,
        fix: "Postfix ≥ 3.5.23: smtpd_forbid_bare_newline = normalize (or yes), smtpd_forbid_bare_newline_exclusions = (empty); Exim ≥ 4.97.1",
    },
    Check {
        id: "starttls-injection",
        what: "`STARTTLS\\r\\nNOOP\\r\\n` in one write, then the handshake",
        fail_means: "the server answered inside TLS the NOOP sent before it: a man in the middle can inject commands",
        reference: "RFC 3207 §4.2; CVE-2011-0411",
        sends_mail: false,
        fix: "upgrade the server: Postfix ≥ 2.8 and current Exim discard what was pipelined after STARTTLS",
    },
    Check {
        id: "auth-plaintext",
        what: "EHLO in plaintext",
        fail_means: "AUTH PLAIN or LOGIN offered before TLS (a warning): clients may send passwords in the clear",
        reference: "RFC 8314 §3, RFC 4954 §4",
        sends_mail: false,
        fix: "Postfix: smtpd_tls_auth_only = yes; Exim: server_advertise_condition = ${if def:tls_in_cipher}",
    },
    Check {
        id: "pipelining",
        what: "MAIL, RCPT, a malformed RCPT and DATA in one write (the DATA abandoned)",
        fail_means: "the server advertises PIPELINING but loses, reorders or misanswers pipelined commands",
        reference: "RFC 2920 §3",
        sends_mail: true,
        fix: "upgrade, or stop advertising PIPELINING: Postfix smtpd_discard_ehlo_keywords = pipelining; Exim pipelining_advertise_hosts =",
    },
    Check {
        id: "open-relay",
        what: "MAIL from outside-1.example, RCPT to `--relay-domain`, without AUTH; RSET, no DATA",
        fail_means: "the server accepts mail for any domain from anyone: an open relay",
        reference: "RFC 5321 §3.6.2, RFC 2505 §2.2",
        sends_mail: false,
        fix: "Postfix: smtpd_relay_restrictions = permit_mynetworks, permit_sasl_authenticated, reject_unauth_destination (mynetworks only your hosts); Exim: relay_from_hosts, domains = +local_domains : +relay_to_domains",
    },
    Check {
        id: "vrfy-expn",
        what: "VRFY postmaster, EXPN postmaster",
        fail_means: "the server confirms addresses (a warning): address harvesting",
        reference: "RFC 5321 §3.5.3, §7.3",
        sends_mail: false,
        fix: "Postfix: disable_vrfy_command = yes; Exim: no acl_smtp_vrfy / acl_smtp_expn",
    },
    Check {
        id: "tls-version",
        what: "STARTTLS; handshakes limited to TLS 1.2 and to TLS 1.3",
        fail_means: "no STARTTLS, or no TLS 1.2 or later (mail travels in plaintext)",
        reference: "RFC 3207, RFC 8996, RFC 8314 §4.1",
        sends_mail: false,
        fix: "Postfix: smtpd_tls_security_level = may, smtpd_tls_chain_files, smtpd_tls_protocols = >=TLSv1.2; Exim: tls_certificate, tls_privatekey",
    },
    Check {
        id: "tls-certificate",
        what: "the certificate presented after STARTTLS, verified against the web PKI roots and `--ca-file` for the host name",
        fail_means: "expired (or within 14 days of it), not for this name, self-signed or an incomplete chain",
        reference: "RFC 8314 §4.1, RFC 6125 §6, RFC 5280 §4.1.2.5",
        sends_mail: false,
        fix: "a certificate for this name from a trusted CA, not expiring, with its full chain: Postfix smtpd_tls_chain_files; Exim tls_certificate",
    },
];

/// The server under check.
#[derive(Debug)]
pub(super) struct Target {
    pub(super) addr: SocketAddr,
    /// The host as given (the certificate's expected name).
    pub(super) name: String,
}

impl Target {
    pub(super) fn server_name(&self) -> ServerName<'static> {
        ServerName::try_from(self.name.clone())
            .unwrap_or(ServerName::IpAddress(self.addr.ip().into()))
    }
}

/// What every check is given.
#[derive(Clone)]
pub(super) struct Ctx {
    pub(super) target: Arc<Target>,
    pub(super) timeout: Duration,
    pub(super) tls_config: Arc<rustls::ClientConfig>,
    pub(super) roots: Arc<rustls::RootCertStore>,
    pub(super) from: String,
    pub(super) rcpt: String,
    pub(super) relay_domain: String,
    /// `--user` and the password: AUTH before the test messages.
    pub(super) auth: Option<(String, String)>,
}

/// A check's result.
pub(super) enum Outcome {
    /// With what was found.
    Pass(String),
    Fail(String),
    NotApplicable(String),
}

pub(crate) async fn run(args: ServerArgs) -> Result<u8, Failure> {
    let usage = |m: String| {
        crate::terminal::error_line(&format!("smtp conformance server: {m}"));
        Ok(EXIT_USAGE)
    };
    let mut selected = Vec::new();
    for want in &args.checks {
        match CHECKS.iter().find(|c| c.id == want) {
            Some(c) => selected.push(c),
            None => return usage(format!("no check `{want}` (see --list)")),
        }
    }
    if selected.is_empty() {
        selected = CHECKS.iter().collect();
    }
    if args.list {
        print!("{}", list());
        return Ok(EXIT_PASS);
    }
    let Some(given) = args.target.as_deref() else {
        return usage("give the server as HOST or HOST:PORT".into());
    };
    if args.timeout == 0 || args.check_timeout == 0 {
        return usage("--timeout and --check-timeout take a number above 0".into());
    }
    if let Err(e) = check_inputs(&args) {
        return usage(e);
    }
    let auth = match (&args.user, &args.password_file) {
        (Some(user), Some(path)) => match read_password(path) {
            Ok(p) => Some((user.clone(), p)),
            Err(e) => return usage(e),
        },
        _ => None,
    };
    let (host, addrs) = match resolve(given).await {
        Ok(x) => x,
        Err(e) => return usage(e),
    };
    let loopback = addrs.iter().all(|a| a.ip().is_loopback());
    if !loopback && !args.authorised {
        return usage(format!(
            "{given} is not on this machine ({}): this checker sends test mail, \
             tries to relay and probes for known vulnerabilities, which on a server \
             you do not run can look like an attack. Check only servers you run or \
             are allowed to test, and say so with --i-am-authorised",
            addrs[0].ip()
        ));
    }
    let sends = selected.iter().any(|c| c.sends_mail);
    let rcpt = match (&args.rcpt, loopback) {
        (Some(r), _) => r.clone(),
        (None, true) => "postmaster@localhost".to_owned(),
        (None, false) if sends => {
            return usage(
                "the smuggling and pipelining checks send mail: give --rcpt ADDR, a mailbox \
                 you own (test messages may be delivered to it), or leave them out with --checks"
                    .into(),
            );
        }
        (None, false) => String::new(),
    };
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = &args.ca_file {
        match load_ca(path, &mut roots) {
            Ok(()) => {}
            Err(e) => return usage(e),
        }
    }
    // A server that cannot be reached at all: one error, not a FAIL per check.
    let timeout = Duration::from_secs(args.timeout);
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addrs[0])).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return usage(format!("cannot connect to {given} ({}): {e}", addrs[0])),
        Err(_) => {
            return usage(format!(
                "cannot connect to {given} ({}): no answer within {} s",
                addrs[0], args.timeout
            ));
        }
    }
    if sends {
        crate::terminal::error_line(&format!(
            "smtp conformance server: the smuggling and pipelining checks send test messages \
             to <{rcpt}>; some may be delivered there (and more if the server is vulnerable)"
        ));
    }
    let ctx = Ctx {
        target: Arc::new(Target {
            addr: addrs[0],
            name: args.name.clone().unwrap_or(host),
        }),
        timeout: Duration::from_secs(args.timeout),
        tls_config: tls::danger_config(&[&rustls::version::TLS13, &rustls::version::TLS12]),
        roots: Arc::new(roots),
        from: args.from.clone(),
        rcpt,
        relay_domain: args.relay_domain.clone(),
        auth,
    };
    let mut results = Vec::new();
    for check in selected {
        let started = Instant::now();
        let one = async {
            match check.id {
                "smuggling" => smuggling::check(&ctx).await,
                "starttls-injection" => probes::starttls_injection(&ctx).await,
                "auth-plaintext" => probes::auth_plaintext(&ctx).await,
                "pipelining" => probes::pipelining(&ctx).await,
                "open-relay" => probes::open_relay(&ctx).await,
                "vrfy-expn" => probes::vrfy_expn(&ctx).await,
                "tls-version" => tls::version(&ctx).await,
                _ => tls::certificate(&ctx).await,
            }
        };
        let outcome = tokio::time::timeout(Duration::from_secs(args.check_timeout), one)
            .await
            .unwrap_or_else(|_| {
                Outcome::Fail(format!(
                    "the check did not finish within {} s (--check-timeout)",
                    args.check_timeout
                ))
            });
        let (verdict, note) = match outcome {
            Outcome::Pass(n) => (Verdict::Pass, n),
            Outcome::Fail(why) => (Verdict::Fail(why), String::new()),
            Outcome::NotApplicable(why) => (Verdict::Skip(why), String::new()),
        };
        let hint = match &verdict {
            Verdict::Fail(_) => fix_hint(check, loopback),
            _ => String::new(),
        };
        results.push(CaseResult {
            id: check.id,
            verdict,
            expected: None,
            exit: None,
            elapsed: started.elapsed(),
            output: String::new(),
            reference: check.reference,
            note,
            hint,
        });
    }
    let addr = ctx.target.addr.to_string();
    let subject = if addr == given {
        addr
    } else {
        format!("{given} ({addr})")
    };
    if let Some(path) = &args.junit {
        std::fs::write(path, report::junit(Role::Server, &subject, &results, false)).map_err(
            |e| {
                Failure::new(
                    crate::fail::EX_CANTCREAT,
                    format!("cannot write {}: {e}", path.display()),
                )
            },
        )?;
    }
    if args.json {
        println!("{}", report::json(Role::Server, &subject, &results));
    } else {
        print!("{}", report::table(Role::Server, &subject, &results, false));
    }
    let failed = results.iter().any(|r| r.verdict.kind() == Kind::Fail);
    Ok(if failed { EXIT_FAIL } else { EXIT_PASS })
}

/// The fix for a FAIL of `check`; from loopback, the open-relay and
/// smuggling hints say why Postfix may look worse from here than from
/// outside.
fn fix_hint(check: &Check, loopback: bool) -> String {
    let mut hint = check.fix.to_owned();
    if loopback {
        match check.id {
            "open-relay" => hint.push_str(
                ". Checked from 127.0.0.1: Postfix trusts mynetworks (127.0.0.0/8 by \
                 default) and permit_mynetworks relays for it; check from a host outside \
                 mynetworks before concluding",
            ),
            "smuggling" => hint.push_str(
                ". Checked from 127.0.0.1: Postfix's smtpd_forbid_bare_newline_exclusions \
                 defaults to $mynetworks (127.0.0.0/8), so loopback clients are exempt \
                 unless it is set empty",
            ),
            _ => {}
        }
    }
    hint
}

/// `--from`, `--rcpt` and `--relay-domain` go into command lines: no
/// line ends (they would be sent as extra commands), no control
/// characters, no `<` or `>`; none empty.
fn check_inputs(args: &ServerArgs) -> Result<(), String> {
    let fields = [
        ("--from", Some(args.from.as_str())),
        ("--rcpt", args.rcpt.as_deref()),
        ("--relay-domain", Some(args.relay_domain.as_str())),
        ("--user", args.user.as_deref()),
    ];
    for (name, value) in fields {
        let Some(v) = value else { continue };
        if v.is_empty() {
            return Err(format!("{name} is empty"));
        }
        if v.chars().any(|c| c.is_control() || c == '<' || c == '>') {
            return Err(format!(
                "{name} must not hold CR, LF, other control characters, `<` or `>`: {:?}",
                crate::terminal::printable(v)
            ));
        }
        if name != "--user" && v.contains(char::is_whitespace) {
            return Err(format!("{name} must not hold spaces"));
        }
    }
    Ok(())
}

/// The first line of the password file (never printed).
fn read_password(path: &std::path::Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the password file {}: {e}", path.display()))?;
    let password = text.lines().next().unwrap_or("").to_owned();
    if password.is_empty() {
        return Err(format!("the password file {} is empty", path.display()));
    }
    Ok(password)
}

/// `HOST[:PORT]` → the host as given and its addresses.
async fn resolve(given: &str) -> Result<(String, Vec<SocketAddr>), String> {
    let (host, port) = match given.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') || h.ends_with(']') => {
            let port = p
                .parse::<u16>()
                .map_err(|_| format!("bad port in `{given}`"))?;
            (h, port)
        }
        _ => (given, 25),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("no host in `{given}`"));
    }
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .collect();
    if addrs.is_empty() {
        return Err(format!("{host} has no address"));
    }
    Ok((host.to_owned(), addrs))
}

fn load_ca(path: &std::path::Path, roots: &mut rustls::RootCertStore) -> Result<(), String> {
    use rustls::pki_types::pem::PemObject as _;
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut n = 0;
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| format!("{}: {e}", path.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        n += 1;
    }
    if n == 0 {
        return Err(format!("{} holds no certificate", path.display()));
    }
    Ok(())
}

/// `--list`: the checks in Markdown (docs/conformance.md holds it).
fn list() -> String {
    use std::fmt::Write as _;
    let mut out = String::from("| check | sends | FAIL means | reference |\n|---|---|---|---|\n");
    for c in CHECKS {
        let _ = writeln!(
            out,
            "| `{}` | {} | {} | {} |",
            c.id, c.what, c.fail_means, c.reference
        );
    }
    out
}
