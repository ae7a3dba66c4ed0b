//! `smtp send`: standard delivery through `--server`, or direct delivery.

use std::path::{Path, PathBuf};

use smtp_core::address::{Mailbox, ReversePath};

use smtp_core::delivery::direct::{NoRequirements, Trace, deliver_under};
use smtp_core::delivery::{BodySource, TlsInfo};
use smtp_core::ehlo::ClientId;
use smtp_core::{Envelope, Event, MessageOutcome, RecipientOutcome, RecipientStatus};
use smtp_tls::{Error as TlsError, Observed, Outgoing, Trust};

use crate::advice;
use crate::cli::SendArgs;
use crate::compose::{Composition, HeaderFields, compose};
use crate::dkim::{Signed, Signer};
use crate::fail::{EX_NOHOST, EX_PROTOCOL, EX_TEMPFAIL, Failure};
use crate::greeting::GreetingHint;
use crate::message::{Files, Input, Prepared, PreparedBody, prepare};
use crate::output::{ErrorReport, MessageReport, RecipientReport, Report, Sent, needs_binary};
use crate::progress::{self, Mode};
use crate::settings::{Settings, settings_with};
use crate::stdin::read_stdin;

mod via;
use self::via::queue_via;
pub(crate) use self::via::{DirectParts, direct_parts, queue_route, relay, relay_key, sts_cache};

/// This machine's name for EHLO, or `localhost` when it is not a valid one.
pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|h| ClientId::parse(h).is_ok())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// The web PKI roots, and `--ca-file`'s certificates.
pub(crate) fn trust(ca_file: Option<&Path>) -> Result<Trust, Failure> {
    let mut trust = Trust::new();
    if let Some(path) = ca_file {
        trust
            .add_ca_file(path)
            .map_err(|e| Failure::config(format!("--ca-file: {e}")))?;
    }
    Ok(trust)
}

/// Reads, composes or spools the messages.
fn messages(args: &SendArgs, s: &Settings) -> Result<Vec<Prepared>, Failure> {
    let composing = args.subject.is_some()
        || args.body.is_some()
        || args.body_file.is_some()
        || args.merge.body_html.is_some()
        || args.merge.body_html_file.is_some()
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
        let html = match (&args.merge.body_html, &args.merge.body_html_file) {
            (Some(h), _) => Some(h.clone()),
            (None, Some(f)) => {
                Some(std::fs::read_to_string(f).map_err(|e| Failure::no_input(f, &e))?)
            }
            (None, None) => None,
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
            html: html.as_deref(),
            raw_subject: false,
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
    // A file given many times is read and scanned once.
    let mut files = Files::new(&inputs);
    inputs
        .iter()
        .map(|p| {
            if p.as_os_str() == "-" {
                prepare(
                    read_stdin(args.sendmail && !args.ignore_dots)?,
                    "standard input".into(),
                    &host,
                )
            } else {
                files.prepare(p, p.display().to_string(), &host)
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
        let how = if args.sendmail {
            "give them as arguments"
        } else {
            "give --to ADDR"
        };
        return Err(Failure::usage(format!(
            "{}: no recipients: {how}, or -t to read To/Cc/Bcc",
            m.name
        )));
    }
    Ok(Envelope::new(from, to)
        .with_body(m.body_type)
        .with_size(m.size))
}

fn observer(verbose: bool) -> impl FnMut(&Event) + Send {
    move |event: &Event| match event {
        Event::Transcript(line) if verbose => tell!("{line}"),
        Event::StartTls if verbose => tell!("=== Starting TLS"),
        Event::BodyWanted(id) => progress::data_sent(id.index() as usize),
        Event::Warning(w) => {
            progress::suspend(|| tell!("warning: {}", advice::warning_text(w)));
        }
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
        } => progress::suspend(|| tell!("warning: {host}: {}", advice::warning_text(w))),
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

pub(crate) async fn run(mut args: SendArgs) -> Result<u8, Failure> {
    if args.notify_sender && args.queue.is_none() {
        // Without the queue there is no later to send it from: this
        // run's report already names every failure.
        return Err(Failure::usage(
            "--notify-sender works with --queue: the notification is sent from the queue once \
             every recipient is final (without --queue, this command's report and exit code \
             give every failure at once)",
        ));
    }
    if let Some(dir) = args.queue.as_deref().filter(|d| d.is_file()) {
        // `--queue m1.eml`: the optional value took a message file.
        return Err(Failure::usage(format!(
            "--queue {}: that is a file, not a queue directory (--queue takes the next word as \
             its directory when one follows); write --queue=DIR, or put --queue after the \
             message files",
            dir.display()
        )));
    }
    let s = settings_with(&args, !args.queue_only)?;
    let rate = crate::rate::resolve(&args.retry.rate, (&s.rate.0, s.rate.1))?;
    // Before anything is enqueued: a usage error leaves no message behind.
    crate::rate::needs_relay(&rate, s.server.is_some())?;
    if matches!(rate, crate::rate::Choice::Limits(_)) && args.queue.is_none() {
        // The queue keeps the budget: a rate sends through it.
        args.queue = Some(PathBuf::new());
    }
    // The key is read before any message: a wrong one stops the command
    // before standard input is taken or anything is sent.
    let mut signer = s.dkim.as_ref().map(Signer::load).transpose()?;
    if args.merge.merge.is_some() {
        let via = || {
            let client_id =
                ClientId::parse(&s.helo).map_err(|e| Failure::usage(format!("--helo: {e}")))?;
            queue_via(&s, client_id, &args)
        };
        return crate::merge::run(&args, &s, signer, via).await;
    }
    let mut prepared = messages(&args, &s)?;
    if let Some(u) = crate::unsubscribe::Unsubscribe::new(
        args.merge.unsubscribe.as_deref(),
        args.merge.unsubscribe_mailto.as_deref(),
    )? {
        for m in &mut prepared {
            u.add_to(m)?;
        }
    }
    if args.sendmail {
        add_missing_from(&args, &s, &mut prepared);
    } else {
        for m in prepared.iter().filter(|m| !m.notes.is_empty()) {
            tell!("note: {}: {}", m.name, m.notes.join("; "));
        }
    }
    // Last, once every change to a message is made; before it is sent or
    // enqueued (a queued message is never signed again).
    let mut signatures: Vec<Option<crate::output::DkimReport>> = Vec::new();
    if let Some(signer) = &mut signer {
        for m in &mut prepared {
            let signed = signer.sign(m)?;
            signatures.push(match &signed {
                Signed::Added(sig) => Some(crate::output::DkimReport {
                    domain: sig.domain.clone(),
                    selector: sig.selector.clone(),
                    algorithm: sig.algorithm,
                }),
                Signed::AlreadySigned => None,
            });
            match signed {
                Signed::AlreadySigned if !args.sendmail => tell!(
                    "note: {}: already signed (DKIM-Signature): sent as it is, not signed \
                     again (--dkim-add adds a signature)",
                    m.name
                ),
                Signed::AlreadySigned => {}
                Signed::Added(sig) => {
                    if args.verbose {
                        tell!(
                            "=== {}: DKIM-signed d={} s={} a={}",
                            m.name,
                            sig.domain,
                            sig.selector,
                            sig.algorithm
                        );
                    }
                    if let Some(from) = &sig.unaligned_from {
                        tell!(
                            "warning: {}: signed with d={}, which does not align with the From: \
                             domain {from}: DMARC does not count this signature for {from}; \
                             sign with --dkim-domain {from} (or a parent of it), or send from \
                             {}",
                            m.name,
                            sig.domain,
                            sig.domain
                        );
                    }
                }
            }
        }
    }
    let envelopes = prepared
        .iter()
        .map(|m| envelope(&args, &s, m))
        .collect::<Result<Vec<_>, _>>()?;
    let client_id = ClientId::parse(&s.helo).map_err(|e| Failure::usage(format!("--helo: {e}")))?;
    if let Some(dir) = &args.queue {
        let queued = crate::queue::Queued {
            dir,
            retry: &args.retry,
            notify_sender: args.notify_sender,
            config: args.config.as_deref(),
            run_line: crate::queue::run_command(&args),
            rate,
            relay_key: relay_key(&s),
            route: queue_route(&s),
        };
        if args.queue_only {
            // Nothing is delivered: the relay's settings are for the
            // `queue run` that will, and are checked then.
            return crate::queue::enqueue_only(&queued, &prepared, &envelopes, args.json).await;
        }
        let via = queue_via(&s, client_id, &args)?;
        return crate::queue::send(&queued, via, prepared, &envelopes, mode(&args)).await;
    }
    let mut report = match &s.server {
        Some((host, port)) => {
            standard(&args, &s, host, *port, client_id, &prepared, envelopes).await?
        }
        None => direct(&args, &s, client_id, &prepared, envelopes).await?,
    };
    // One report per message, in order (strays after them).
    for (m, sig) in report.messages.iter_mut().zip(signatures) {
        m.dkim = sig;
    }
    progress::finish(&report, mode(&args));
    Ok(report.exit_code())
}

fn mode(args: &SendArgs) -> Mode {
    Mode {
        json: args.json,
        verbose: args.verbose,
        sendmail: args.sendmail,
    }
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
    let server = relay(s, host, Some(port), client_id, args.verbose)?;
    let sent = sent(prepared, &envelopes);
    let outgoing: Vec<Outgoing> = prepared
        .iter()
        .zip(envelopes)
        .map(|(m, envelope)| Outgoing {
            envelope,
            body: Box::new(PreparedBody::new(m)),
        })
        .collect();
    let hint = (!server.implicit_tls).then(|| GreetingHint::start(host, port));
    let mut inner = observer(args.verbose);
    // Each message's lines as soon as it is settled, with the host and TLS
    // state the final report gives it.
    let mut observe = |seen: Observed<'_>| {
        if let (Event::Greeting(_), Some(h)) = (seen.event(), &hint) {
            h.greeted();
        }
        inner(seen.event());
        if let Some(outcome) = seen.settled() {
            let (index, report) = settled_report(
                &sent,
                prepared,
                outcome,
                &seen.peer().to_string(),
                seen.tls(),
            );
            progress::record(index, report);
        }
    };
    progress::begin(&sent, mode(args));
    if args.verbose {
        tell!("=== Trying {host}:{port}...");
    }
    let sending = server.send(outgoing, &mut observe).await;
    drop(hint);
    progress::done_sending();
    let delivery = match sending {
        Ok(d) => {
            if args.verbose {
                tell!("=== Connection closed with {}.", d.peer);
            }
            d
        }
        Err(e @ TlsError::ImplicitTlsWithoutEncryption { .. }) => {
            return Err(Failure::usage(advice::error(&e)));
        }
        // Nothing was sent: every recipient is deferred with the reason,
        // so a script reading the report still finds each one.
        Err(e) => {
            let (code, kind) = match e {
                TlsError::Resolve { .. } => (EX_NOHOST, "resolve"),
                TlsError::Tls { .. } => (EX_TEMPFAIL, "tls"),
                // A session would have failed at STARTTLS with it.
                TlsError::InvalidServerName { .. } => (EX_PROTOCOL, "tls"),
                _ => (EX_TEMPFAIL, "connect"),
            };
            let message = advice::error(&e);
            tell!("smtp: {message}");
            let error = ErrorReport { kind, message };
            return Ok(Report::not_sent(&sent, code, error));
        }
    };
    if let Some(why) = &delivery.tls_fallback {
        tell!(
            "warning: TLS failed ({}); sent in plaintext as --tls optional allows",
            advice::flags(&why.detail)
        );
    }
    let host = delivery.peer.to_string();
    let session = &delivery.session;
    let found: Vec<(usize, MessageReport)> = session
        .messages
        .iter()
        .map(|m| {
            let index = m.message.index() as usize;
            let cause = prepared.get(index).and_then(|p| p.binary_cause.as_ref());
            tell_binary_cause(args, cause, &m.recipients);
            let mut report = settled_report(&sent, prepared, m, &host, session.tls.as_ref());
            report.1.errors = session.error.iter().cloned().collect();
            report
        })
        .collect();
    if found.is_empty()
        && let Some(e) = &session.error
    {
        return Err(Failure::new(EX_TEMPFAIL, advice::error_text(e)));
    }
    if let Some(e) = &session.error {
        tell!("smtp: {}", advice::error_text(e));
    }
    Ok(Report::reconciled(&sent, found))
}

/// A session's outcome for a message, by its index in `sent`, with the host
/// and TLS state of the session, and why a line too long was not
/// re-encoded where that stopped it.
fn settled_report(
    sent: &[Sent],
    prepared: &[Prepared],
    outcome: &MessageOutcome,
    host: &str,
    tls: Option<&TlsInfo>,
) -> (usize, MessageReport) {
    let index = outcome.message.index() as usize;
    let cause = prepared.get(index).and_then(|p| p.binary_cause.as_ref());
    let report = MessageReport {
        message: sent.get(index).map(|s| s.name.clone()).unwrap_or_default(),
        recipients: outcome
            .recipients
            .iter()
            .map(|o| RecipientReport::new(o, Some(host), tls).explained(o, cause))
            .collect(),
        diagnosis: None,
        dkim: None,
        errors: Vec::new(),
        missing_outcomes: false,
    };
    (index, report)
}

/// Says on stderr why a message with a line too long was not re-encoded,
/// when a server's lack of BINARYMIME stopped it (sendmail mode prints its
/// whole report there anyway).
fn tell_binary_cause(args: &SendArgs, cause: Option<&String>, outcomes: &[RecipientOutcome]) {
    if let (false, Some(cause)) = (args.sendmail, cause)
        && outcomes.iter().any(needs_binary)
    {
        tell!("smtp: {cause}");
    }
}

/// Each message's name and recipients, for [`Report::reconciled`].
pub(crate) fn sent(prepared: &[Prepared], envelopes: &[Envelope]) -> Vec<Sent> {
    prepared
        .iter()
        .zip(envelopes)
        .map(|(m, e)| Sent {
            name: m.name.clone(),
            recipients: e.to.iter().map(ToString::to_string).collect(),
        })
        .collect()
}

/// What plain `send` (which keeps no log) says about a domain's MTA-STS
/// policy: a policy that could not be had (ignored, or the cached one kept),
/// and under `testing` what `enforce` would have refused, as TLS-RPT
/// reports it.
fn tell_mta_sts(d: &smtp_core::delivery::direct::DomainReport) {
    use smtp_core::delivery::mta_sts::Mode;
    use smtp_core::delivery::tls_rpt::ResultType;
    let tls = &d.requirements;
    if let Some((kind, detail)) = &tls.problem {
        let kept = tls.mta_sts.as_ref().map_or("no policy".to_owned(), |p| {
            format!("{} (cached)", p.label())
        });
        progress::suspend(|| {
            tell!(
                "warning: MTA-STS policy of {} ignored ({kind}): {}; delivering under {kept}",
                d.domain,
                crate::terminal::one_line(detail)
            );
        });
    }
    if tls.mode() != Some(Mode::Testing) {
        return;
    }
    let label = tls.to_string();
    for session in smtp_core::delivery::direct::session_results(tls, &d.attempts) {
        let (host, result) = (&session.host, session.result);
        if result != ResultType::Success {
            progress::suspend(|| {
                tell!(
                    "warning: {host}: {label} would refuse this session ({result}); \
                     delivered as testing allows"
                );
            });
        }
    }
}

async fn direct(
    args: &SendArgs,
    s: &Settings,
    client_id: ClientId,
    prepared: &[Prepared],
    envelopes: Vec<Envelope>,
) -> Result<Report, Failure> {
    let parts = direct_parts(s, client_id, args.verbose, args.mx_port, args.mta_sts)?;
    // Policies are cached in a file between runs.
    let sts = parts.mta_sts(sts_cache());
    let source: &dyn smtp_core::delivery::direct::TlsPolicySource = match &sts {
        Some(m) => m,
        None => &NoRequirements,
    };
    let DirectParts {
        resolver,
        connector,
        options,
        ..
    } = &parts;
    let sent = sent(prepared, &envelopes);
    progress::begin(&sent, mode(args));
    let mut messages = Vec::new();
    for (index, (m, envelope)) in prepared.iter().zip(envelopes).enumerate() {
        let factory =
            || -> std::io::Result<Box<dyn BodySource>> { Ok(Box::new(PreparedBody::new(m))) };
        let domains = deliver_under(
            resolver.as_ref(),
            connector,
            &envelope,
            &factory,
            options,
            &smtp_tls::random_below,
            &|t| {
                if let Trace::Session {
                    event: Event::BodyWanted(_),
                    ..
                } = t
                {
                    progress::data_sent(index);
                }
                trace(args.verbose, t);
            },
            source,
        )
        .await;
        let mut recipients = Vec::new();
        let mut diagnosis = Vec::new();
        let mut errors = Vec::new();
        let cause = m.binary_cause.as_ref();
        for d in &domains {
            tell_binary_cause(args, cause, &d.outcomes);
            tell_mta_sts(d);
            for o in &d.outcomes {
                let mut r =
                    RecipientReport::new(o, d.host.as_deref(), d.tls.as_ref()).explained(o, cause);
                r.mta_sts = d.requirements.mode().map(|m| m.to_string());
                recipients.push(r);
            }
            if let Some(x) = &d.diagnosis {
                diagnosis.push(format!("{}: {}", d.domain, advice::diagnosis_text(x)));
            }
            // A host that failed before another took every recipient says
            // nothing about the outcome (nor the exit code).
            if d.outcomes
                .iter()
                .any(|o| o.status != RecipientStatus::Accepted)
            {
                // Under an enforced MTA-STS policy a TLS failure is the
                // policy's refusal: deferred (75), not a policy error of
                // ours (76).
                let refused = |e: &smtp_core::Error| {
                    d.requirements.enforced()
                        && matches!(e, smtp_core::Error::Tls(_) | smtp_core::Error::Policy(_))
                };
                errors.extend(
                    d.attempts
                        .iter()
                        .filter_map(|a| a.error.clone())
                        .filter(|e| !refused(e)),
                );
            }
        }
        // Keep the envelope's order of recipients.
        recipients.sort_by_key(|r| envelope.to.iter().position(|t| t.to_string() == r.address));
        let report = MessageReport {
            message: m.name.clone(),
            recipients,
            diagnosis: (!diagnosis.is_empty()).then(|| diagnosis.join("\n")),
            dkim: None,
            errors,
            missing_outcomes: false,
        };
        progress::record(index, report.clone());
        messages.push((index, report));
    }
    progress::done_sending();
    Ok(Report::reconciled(&sent, messages))
}
