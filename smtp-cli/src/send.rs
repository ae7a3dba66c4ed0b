//! `smtp send`: standard delivery through `--server`, or direct delivery.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use smtp_core::address::{Mailbox, ReversePath};
use smtp_core::command::ClientId;
use smtp_core::direct::{DirectOptions, Trace, deliver_traced};
use smtp_core::sasl::{AuthChoice, Credentials, Mechanism};
use smtp_core::transport::BodySource;
use smtp_core::{Config, Envelope, Event, RecipientStatus, Timeouts, TlsPolicy};
use smtp_dns::HickoryResolver;
use smtp_tls::{ConnectError, MxConnector, Outgoing, Submission, TlsOptions};

use crate::cli::{AuthArg, SendArgs, TlsArg};
use crate::config::{self, Account};
use crate::fail::{EX_NOHOST, EX_TEMPFAIL, Failure};
use crate::interrupt;
use crate::message::{
    Composition, HeaderFields, Input, Prepared, PreparedBody, compose, prepare, read_stdin,
};
use crate::output::{ErrorReport, MessageReport, RecipientReport, Report, Sent};
use crate::secrets::{self, DEFAULT_ENV, Source};

/// This machine's name for EHLO, or `localhost` when it is not a valid one.
pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|h| ClientId::parse(h).is_ok())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// A random number below `n`, for MX shuffling.
pub(crate) fn random_below(n: usize) -> usize {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let x = RandomState::new().hash_one(COUNTER.fetch_add(1, Ordering::Relaxed));
    usize::try_from(x % n.max(1) as u64).unwrap_or(0)
}

pub(crate) fn mechanism(a: AuthArg) -> AuthChoice {
    match a {
        AuthArg::Auto => AuthChoice::Auto,
        AuthArg::Plain => AuthChoice::Explicit(Mechanism::Plain),
        AuthArg::Login => AuthChoice::Explicit(Mechanism::Login),
        AuthArg::CramMd5 => AuthChoice::Explicit(Mechanism::CramMd5),
        AuthArg::Xoauth2 => AuthChoice::Explicit(Mechanism::XOAuth2),
        AuthArg::ScramSha256 => AuthChoice::Explicit(Mechanism::ScramSha256),
    }
}

/// How long a silent server may take before the implicit-TLS hint.
const GREETING_HINT_AFTER: Duration = Duration::from_secs(5);

/// Options with the account's settings filled in where the options are silent.
struct Settings {
    server: Option<(String, Option<u16>)>,
    port: Option<u16>,
    tls: Option<TlsArg>,
    implicit_tls: bool,
    ca_file: Option<PathBuf>,
    credentials: Option<Credentials>,
    auth: AuthChoice,
    helo: String,
    /// The sender's address (from `--from` or the account), without any
    /// display name; `from_name` holds the name given with it.
    from: Option<String>,
    from_name: Option<String>,
    dns_server: Option<String>,
    timeouts: Timeouts,
}

/// `Name <addr>`, `"Name" <addr>`, `<addr>` or `addr`: the display name
/// (if any) and the address.
fn split_display_name(text: &str) -> Result<(Option<String>, String), Failure> {
    let text = text.trim();
    let Some((name, rest)) = text.split_once('<') else {
        return Ok((None, text.to_owned()));
    };
    let address = rest
        .strip_suffix('>')
        .ok_or_else(|| Failure::data(format!("sender {text:?}: a '<' without its closing '>'")))?;
    let name = name.trim().trim_matches('"').trim();
    Ok((
        (!name.is_empty()).then(|| name.to_owned()),
        address.trim().to_owned(),
    ))
}

fn split_server(s: &str) -> Result<(String, Option<u16>), Failure> {
    // [v6]:port, host:port, host
    if let Some(rest) = s.strip_prefix('[') {
        let (host, tail) = rest
            .split_once(']')
            .ok_or_else(|| Failure::usage(format!("--server {s}: missing ]")))?;
        let port = tail
            .strip_prefix(':')
            .map(str::parse)
            .transpose()
            .map_err(|_| Failure::usage(format!("--server {s}: bad port")))?;
        return Ok((host.to_owned(), port));
    }
    match s.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => {
            let port = p
                .parse()
                .map_err(|_| Failure::usage(format!("--server {s}: {p:?} is not a port")))?;
            Ok((h.to_owned(), Some(port)))
        }
        _ => Ok((s.to_owned(), None)),
    }
}

/// Whether an account's secrets may go to the destination: only when it is
/// the account's own server, the same host and port (the port defaulting as
/// a send does). Otherwise, why not, in words for a note.
fn secrets_stay(
    own: Option<&(String, Option<u16>)>,
    destination: Option<&(String, Option<u16>)>,
    port_option: Option<u16>,
    account_port: Option<u16>,
) -> Result<(), String> {
    let Some((own_host, own_port)) = own else {
        return Err("the account names no server of its own".into());
    };
    let own_port = own_port.or(account_port).unwrap_or(587);
    let Some((host, port)) = destination else {
        return Err("they are not for direct delivery".into());
    };
    let port = port.or(port_option).or(account_port).unwrap_or(587);
    if own_host.eq_ignore_ascii_case(host) && own_port == port {
        Ok(())
    } else {
        Err(format!(
            "they are for {own_host}:{own_port}, and this send goes to {host}:{port}"
        ))
    }
}

fn settings(args: &SendArgs) -> Result<Settings, Failure> {
    let command_line_source = args.login.source()?;
    if let (Some(port), Some(server)) = (args.port, &args.server) {
        if let (_, Some(in_server)) = split_server(server)? {
            if in_server != port {
                return Err(Failure::usage(format!(
                    "--server {server} and --port {port} name two ports; give one"
                )));
            }
        }
    }
    let account =
        config::load(args.config.as_deref(), args.account.as_deref())?.unwrap_or_default();
    let Account {
        server,
        port,
        tls,
        implicit_tls,
        ca_file,
        user,
        password,
        password_env,
        password_file,
        password_command,
        auth,
        helo,
        from,
        dns_server,
    } = account;
    let own_server = server.as_deref().map(split_server).transpose()?;
    let server = match &args.server {
        Some(s) => Some(split_server(s)?),
        None => own_server.clone(),
    };
    // The account's secrets go to the account's own server only: a
    // --server or --port naming another destination must not receive them.
    let account_secrets = user.is_some()
        || password.is_some()
        || password_env.is_some()
        || password_file.is_some()
        || password_command.is_some();
    let (user, password, password_env, password_file, password_command) =
        match secrets_stay(own_server.as_ref(), server.as_ref(), args.port, port) {
            Ok(()) => (
                user,
                password,
                password_env,
                password_file,
                password_command,
            ),
            Err(note) => {
                if account_secrets {
                    let then = if args.login.user.is_some() {
                        "the --user given is used instead"
                    } else {
                        "no AUTH is sent"
                    };
                    tell!("note: the account's credentials were not used: {note}; {then}");
                }
                (None, None, None, None, None)
            }
        };
    let user = args.login.user.clone().or(user);
    let credentials = match user {
        None => None,
        // The command line's source, then the account's, then SMTP_PASSWORD.
        Some(username) => {
            let secret = match command_line_source {
                Some(source) => secrets::read(source)?,
                None => match password {
                    Some(p) => p,
                    None => secrets::read(
                        password_env
                            .as_deref()
                            .map(Source::Env)
                            .or(password_file.as_deref().map(Source::File))
                            .or(password_command.as_deref().map(Source::Command))
                            .unwrap_or(Source::Env(DEFAULT_ENV)),
                    )?,
                },
            };
            Some(secrets::credentials(
                username,
                secret,
                args.login.auth.or(auth),
            ))
        }
    };
    let mut timeouts = Timeouts::default();
    if let Some(s) = args.connect_timeout {
        timeouts.connect = Duration::from_secs(s);
        timeouts.tls_handshake = Duration::from_secs(s);
    }
    if let Some(s) = args.command_timeout {
        let t = Duration::from_secs(s);
        let (connect, quit) = (timeouts.connect, timeouts.quit);
        timeouts = Timeouts::uniform(t);
        timeouts.connect = connect;
        timeouts.quit = quit.min(t);
    }
    // "Alice <alice@example.org>" and "<alice@example.org>" are senders
    // too: the address goes in the envelope, the name in a composed From:.
    let sender = args
        .from
        .clone()
        .or(from)
        .map(|f| split_display_name(&f))
        .transpose()?;
    Ok(Settings {
        server,
        port: args.port.or(port),
        tls: args.tls.or(tls),
        implicit_tls: args.implicit_tls || implicit_tls.unwrap_or(false),
        ca_file: args.ca_file.clone().or(ca_file),
        credentials,
        auth: mechanism(args.login.auth.or(auth).unwrap_or(AuthArg::Auto)),
        helo: args.helo.clone().or(helo).unwrap_or_else(hostname),
        from: sender.as_ref().map(|(_, a)| a.clone()),
        from_name: sender.and_then(|(n, _)| n),
        dns_server: args.dns_server.clone().or(dns_server),
        timeouts,
    })
}

fn tls_options(policy: TlsPolicy, ca_file: Option<&Path>) -> Result<TlsOptions, Failure> {
    let mut tls = TlsOptions::new(policy);
    if let Some(path) = ca_file {
        tls.add_ca_file(path)
            .map_err(|e| Failure::config(format!("--ca-file: {e}")))?;
    }
    Ok(tls)
}

/// Reads, composes or spools the messages.
fn messages(args: &SendArgs, s: &Settings) -> Result<Vec<Prepared>, Failure> {
    let composing = args.subject.is_some()
        || args.body.is_some()
        || args.body_file.is_some()
        || !args.attach.is_empty();
    let host = s.helo.clone();
    if composing {
        if !args.messages.is_empty() {
            return Err(Failure::usage(
                "give message files or --subject/--body/--attach, not both",
            ));
        }
        let from = s
            .from
            .clone()
            .ok_or_else(|| Failure::usage("a composed message needs --from"))?;
        let body = match (&args.body, &args.body_file) {
            (Some(b), _) => b.clone(),
            (None, Some(f)) => std::fs::read_to_string(f).map_err(|e| Failure::no_input(f, &e))?,
            (None, None) => String::new(),
        };
        let fields = HeaderFields::read(&args.header)?;
        if args.subject.is_some() && fields.subject.is_some() {
            return Err(Failure::usage(
                "--subject and --header 'Subject: …' both give the subject; give one",
            ));
        }
        let to: Vec<String> = args.to.iter().chain(&fields.to).cloned().collect();
        let cc: Vec<String> = args.cc.iter().chain(&fields.cc).cloned().collect();
        let bytes = compose(&Composition {
            from: &from,
            full_name: args.full_name.as_deref().or(s.from_name.as_deref()),
            to: &to,
            cc: &cc,
            subject: args
                .subject
                .as_deref()
                .or(fields.subject.as_deref())
                .unwrap_or(""),
            body: &body,
            attachments: &args.attach,
            headers: &fields.rest,
        })?;
        return Ok(vec![prepare(
            Input::Bytes(bytes),
            "composed message".into(),
            &host,
        )?]);
    }
    if !args.cc.is_empty() {
        return Err(Failure::usage(
            "--cc writes a Cc header into a composed message; for a message file, use --to",
        ));
    }
    if !args.header.is_empty() {
        return Err(Failure::usage(
            "--header adds a field to a composed message (with --subject, --body or \
             --attach); a message file keeps its own header section",
        ));
    }
    let inputs: Vec<PathBuf> = if args.messages.is_empty() {
        vec![PathBuf::from("-")]
    } else {
        args.messages.clone()
    };
    inputs
        .iter()
        .map(|p| {
            if p.as_os_str() == "-" {
                prepare(read_stdin()?, "standard input".into(), &host)
            } else {
                prepare(Input::File(p.clone(), None), p.display().to_string(), &host)
            }
        })
        .collect()
}

fn envelope(args: &SendArgs, s: &Settings, m: &Prepared) -> Result<Envelope, Failure> {
    let from_text = s.from.clone().or_else(|| m.from.clone()).ok_or_else(|| {
        Failure::usage(format!(
            "{}: no sender: give -f/--from, or a From: header",
            m.name
        ))
    })?;
    let from = ReversePath::parse(&from_text).map_err(|e| Failure::data(format!("sender: {e}")))?;
    // Cc and Bcc recipients given as options are recipients like --to;
    // only Cc is named in a (composed) header.
    let mut to_text: Vec<String> = args.to.clone();
    to_text.extend(args.cc.iter().cloned());
    to_text.extend(args.bcc.iter().cloned());
    // --header 'To: …', 'Cc: …', 'Bcc: …' name recipients as the options do.
    let fields = HeaderFields::read(&args.header)?;
    to_text.extend(fields.to.into_iter().chain(fields.cc).chain(fields.bcc));
    if args.read_recipients {
        to_text.extend(m.recipients.iter().cloned());
    }
    let mut to: Vec<Mailbox> = Vec::new();
    for t in &to_text {
        let mb = Mailbox::parse(t).map_err(|e| Failure::data(format!("recipient: {e}")))?;
        if !to.contains(&mb) {
            to.push(mb);
        }
    }
    if to.is_empty() {
        return Err(Failure::usage(format!(
            "{}: no recipients: give --to ADDR, or -t to read To/Cc/Bcc",
            m.name
        )));
    }
    Ok(Envelope::new(from, to)
        .with_body(m.body_type)
        .with_size(m.size))
}

fn observer(verbose: bool, progress: Option<indicatif::ProgressBar>) -> impl FnMut(&Event) + Send {
    move |event: &Event| match event {
        Event::MessageResult(m) => {
            interrupt::record(m.message.index() as usize, m);
            if let Some(p) = &progress {
                p.inc(1);
            }
        }
        Event::Transcript(line) if verbose => tell!("{line}"),
        Event::StartTls if verbose => tell!("=== Starting TLS"),
        Event::Warning(w) => tell!("warning: {w}"),
        _ => {}
    }
}

/// Direct delivery's `-v`: the transcript with swaks's `===` markers for
/// connecting, TLS and closing, each host named; warnings always.
fn trace(verbose: bool, t: Trace<'_>) {
    match t {
        Trace::Session {
            event: Event::Warning(w),
            host,
        } => tell!("warning: {host}: {w}"),
        _ if !verbose => {}
        Trace::Connecting { host, addr } => tell!("=== Trying {host} [{addr}]..."),
        Trace::ConnectFailed {
            host,
            addr,
            failure,
        } => tell!("=== {host} [{addr}]: {failure}"),
        Trace::Connected { host, addr } => tell!("=== Connected to {host} [{addr}]."),
        Trace::Session {
            event: Event::Transcript(line),
            ..
        } => tell!("{line}"),
        Trace::Session {
            event: Event::StartTls,
            ..
        } => tell!("=== Starting TLS"),
        Trace::Closed { host, .. } => tell!("=== Connection closed with {host}."),
        _ => {}
    }
}

pub(crate) async fn run(args: SendArgs) -> Result<u8, Failure> {
    let s = settings(&args)?;
    let mut prepared = messages(&args, &s)?;
    if args.sendmail {
        add_missing_from(&args, &s, &mut prepared);
    }
    let envelopes = prepared
        .iter()
        .map(|m| envelope(&args, &s, m))
        .collect::<Result<Vec<_>, _>>()?;
    let client_id = ClientId::parse(&s.helo).map_err(|e| Failure::usage(format!("--helo: {e}")))?;
    let report = match &s.server {
        Some((host, port)) => {
            standard(&args, &s, host, *port, client_id, &prepared, envelopes).await?
        }
        None => direct(&args, &s, client_id, &prepared, envelopes).await?,
    };
    if args.sendmail {
        report.print_unless_accepted();
    } else {
        report.print(args.json);
    }
    Ok(report.exit_code())
}

/// Sendmail mode: a message without `From:` gets one, as sendmail adds it,
/// from `-f`, the account's sender, or else this user at this host; with
/// `-F`'s full name.
fn add_missing_from(args: &SendArgs, s: &Settings, prepared: &mut [Prepared]) {
    let sender = s.from.clone().or_else(|| {
        let user = std::env::var("USER")
            .or_else(|_| std::env::var("LOGNAME"))
            .ok()?;
        Some(format!("{user}@{}", s.helo))
    });
    let Some(sender) = sender else { return };
    for m in prepared.iter_mut().filter(|m| m.from.is_none()) {
        m.add_from(
            &sender,
            args.full_name.as_deref().or(s.from_name.as_deref()),
        );
    }
}

async fn standard(
    args: &SendArgs,
    s: &Settings,
    host: &str,
    port: Option<u16>,
    client_id: ClientId,
    prepared: &[Prepared],
    envelopes: Vec<Envelope>,
) -> Result<Report, Failure> {
    let port = port.or(s.port).unwrap_or(587);
    let policy: TlsPolicy = s.tls.unwrap_or(TlsArg::Certified).into();
    let mut sub = Submission::new(host, port);
    sub.implicit_tls = s.implicit_tls || port == 465;
    sub.tls = tls_options(policy, s.ca_file.as_deref())?;
    sub.client_id = client_id;
    sub.credentials = s.credentials.clone();
    sub.auth = s.auth;
    sub.timeouts = s.timeouts;
    sub.transcript = args.verbose;
    let sent = sent(prepared, &envelopes);
    let outgoing: Vec<Outgoing> = prepared
        .iter()
        .zip(envelopes)
        .map(|(m, envelope)| Outgoing {
            envelope,
            body: Box::new(PreparedBody::new(m)),
        })
        .collect();
    let progress =
        (prepared.len() > 1 && std::io::stderr().is_terminal() && !args.verbose && !args.json)
            .then(|| indicatif::ProgressBar::new(prepared.len() as u64));
    // A server that says nothing for a while may be waiting for a TLS
    // ClientHello (port 465 given without --implicit-tls, or a custom
    // port): say so while the greeting deadline runs out.
    let greeted = Arc::new(AtomicBool::new(false));
    let hint = (!sub.implicit_tls).then(|| {
        let (greeted, host) = (greeted.clone(), host.to_owned());
        tokio::spawn(async move {
            tokio::time::sleep(GREETING_HINT_AFTER).await;
            if !greeted.load(Ordering::Relaxed) {
                tell!(
                    "note: no greeting from {host}:{port} after {}s; if this port expects \
                     TLS from the first byte, use --implicit-tls (still waiting)",
                    GREETING_HINT_AFTER.as_secs()
                );
            }
        })
    });
    let mut inner = observer(args.verbose, progress.clone());
    let mut observe = |e: &Event| {
        if matches!(e, Event::Greeting(_)) {
            greeted.store(true, Ordering::Relaxed);
        }
        inner(e);
    };
    interrupt::begin(&sent, args.json);
    if args.verbose {
        tell!("=== Trying {host}:{port}...");
    }
    let sending = sub.send(outgoing, &mut observe).await;
    if let Some(h) = hint {
        h.abort();
    }
    let delivery = match sending {
        Ok(d) => {
            if args.verbose {
                tell!("=== Connection closed with {}.", d.peer);
            }
            d
        }
        Err(e @ ConnectError::ImplicitTlsWithoutEncryption { .. }) => {
            return Err(Failure::usage(e.to_string()));
        }
        // Nothing was sent: every recipient is deferred with the reason,
        // so a script reading the report still finds each one.
        Err(e) => {
            let (code, kind) = match e {
                ConnectError::Resolve { .. } => (EX_NOHOST, "resolve"),
                ConnectError::Tls { .. } => (EX_TEMPFAIL, "tls"),
                _ => (EX_TEMPFAIL, "connect"),
            };
            tell!("smtp: {e}");
            let error = ErrorReport {
                kind,
                message: e.to_string(),
            };
            return Ok(Report::not_sent(&sent, code, error));
        }
    };
    if let Some(p) = progress {
        p.finish_and_clear();
    }
    if let Some(why) = &delivery.tls_fallback {
        tell!("warning: TLS failed ({why}); sent in plaintext as --tls optional allows");
    }
    let host = delivery.peer.to_string();
    let session = &delivery.session;
    let found: Vec<(usize, MessageReport)> = session
        .messages
        .iter()
        .map(|m| {
            let index = m.message.index() as usize;
            let report = MessageReport {
                message: sent.get(index).map(|s| s.name.clone()).unwrap_or_default(),
                recipients: m
                    .recipients
                    .iter()
                    .map(|o| RecipientReport::new(o, Some(&host), session.tls.as_ref()))
                    .collect(),
                diagnosis: None,
                errors: session.error.iter().cloned().collect(),
                missing_outcomes: false,
            };
            (index, report)
        })
        .collect();
    if found.is_empty() {
        if let Some(e) = &session.error {
            return Err(Failure::new(EX_TEMPFAIL, e.to_string()));
        }
    }
    if let Some(e) = &session.error {
        tell!("smtp: {e}");
    }
    Ok(Report::reconciled(&sent, found))
}

/// Each message's name and recipients, for [`Report::reconciled`].
fn sent(prepared: &[Prepared], envelopes: &[Envelope]) -> Vec<Sent> {
    prepared
        .iter()
        .zip(envelopes)
        .map(|(m, e)| Sent {
            name: m.name.clone(),
            recipients: e.to.iter().map(ToString::to_string).collect(),
        })
        .collect()
}

async fn direct(
    args: &SendArgs,
    s: &Settings,
    client_id: ClientId,
    prepared: &[Prepared],
    envelopes: Vec<Envelope>,
) -> Result<Report, Failure> {
    if s.credentials.is_some() {
        return Err(Failure::usage(
            "--user is for standard delivery; add --server HOST",
        ));
    }
    let policy: TlsPolicy = s.tls.unwrap_or(TlsArg::Optional).into();
    let resolver = match &s.dns_server {
        Some(ns) => {
            let addr =
                HickoryResolver::parse_nameserver(ns).map_err(|e| Failure::usage(e.to_string()))?;
            HickoryResolver::with_nameserver(addr, Duration::from_secs(5))
        }
        None => HickoryResolver::system(),
    }
    .map_err(|e| Failure::config(e.to_string()))?;
    let connector = MxConnector {
        tls: tls_options(policy, s.ca_file.as_deref())?,
        timeouts: s.timeouts,
    };
    let config = Config::new(client_id)
        .with_tls(policy)
        .with_timeouts(s.timeouts)
        .with_transcript(args.verbose);
    let mut options = DirectOptions::new(config);
    options.port = args.mx_port.unwrap_or(25);
    let sent = sent(prepared, &envelopes);
    interrupt::begin(&sent, args.json);
    let mut messages = Vec::new();
    for (index, (m, envelope)) in prepared.iter().zip(envelopes).enumerate() {
        let factory =
            || -> std::io::Result<Box<dyn BodySource>> { Ok(Box::new(PreparedBody::new(m))) };
        let domains = deliver_traced(
            &resolver,
            &connector,
            &envelope,
            &factory,
            &options,
            &random_below,
            &|t| trace(args.verbose, t),
        )
        .await;
        let mut recipients = Vec::new();
        let mut diagnosis = Vec::new();
        let mut errors = Vec::new();
        for d in &domains {
            for o in &d.outcomes {
                recipients.push(RecipientReport::new(o, d.host.as_deref(), d.tls.as_ref()));
            }
            if let Some(x) = &d.diagnosis {
                diagnosis.push(format!("{}: {x}", d.domain));
            }
            // A host that failed before another took every recipient says
            // nothing about the outcome (nor the exit code).
            if d.outcomes
                .iter()
                .any(|o| o.status != RecipientStatus::Accepted)
            {
                errors.extend(d.attempts.iter().filter_map(|a| a.error.clone()));
            }
        }
        // Keep the envelope's order of recipients.
        recipients.sort_by_key(|r| envelope.to.iter().position(|t| t.to_string() == r.address));
        interrupt::record_recipients(index, recipients.clone());
        messages.push((
            index,
            MessageReport {
                message: m.name.clone(),
                recipients,
                diagnosis: (!diagnosis.is_empty()).then(|| diagnosis.join("\n")),
                errors,
                missing_outcomes: false,
            },
        ));
    }
    Ok(Report::reconciled(&sent, messages))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(s: &str) -> (String, Option<u16>) {
        split_server(s).unwrap()
    }

    #[test]
    fn account_secrets_go_only_to_the_account_s_own_host_and_port() {
        let own = server("smtp.example.com");
        let stay = |dest: &str, port: Option<u16>, account_port: Option<u16>| {
            secrets_stay(Some(&own), Some(&server(dest)), port, account_port).is_ok()
        };
        assert!(stay("smtp.example.com", None, None));
        assert!(
            stay("SMTP.example.com:587", None, None),
            "587 is the default"
        );
        assert!(stay("smtp.example.com", Some(587), None));
        assert!(stay("smtp.example.com:465", None, Some(465)));
        assert!(!stay("smtp.example.com:465", None, None), "another port");
        assert!(
            !stay("smtp.example.com", Some(25), None),
            "--port elsewhere"
        );
        assert!(!stay("other.example.com", None, None), "another host");
        assert!(secrets_stay(None, Some(&own), None, None).is_err());
        assert!(secrets_stay(Some(&own), None, None, None).is_err());
    }
}
