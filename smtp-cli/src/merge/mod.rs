//! `smtp send --merge list.csv`: one message per row of a CSV list, from a
//! template message (`--template`) or the compose options, with
//! `{{column}}` placeholders filled in.
//!
//! ```text
//! list.csv ─> List ─┐
//! template ─> Entity┴> Merge ── every row checked (nothing sent on a bad
//!                              row unless --skip-bad-rows)
//!                       │
//!          --dry-run: the first N printed │ else: one enqueue_once(key, batch)
//!                                         │   (each body rendered as the
//!                                         │   queue reads it), then delivered
//!                                         ▼   as `send --queue` does
//! ```
//!
//! The key is a SHA-256 over every input that shapes the message but the
//! list (template or compose inputs, recipient column, sender,
//! unsubscribe and DKIM options); the queue records each recipient
//! enqueued under it with the batch. So the same command run again after
//! an interruption, or with the list edited (rows added, reordered, other
//! line ends), enqueues only the recipients not enqueued before and
//! delivers what is due: nobody gets the message twice.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use sha2::{Digest, Sha256};
use smtp_core::Envelope;
use smtp_core::address::ReversePath;
use smtp_queue::{Body, NewMessage, RecipientState};

use crate::cli::SendArgs;
use crate::compose::{Composition, HeaderFields, compose};
use crate::dkim::Signer;
use crate::fail::{EX_OK, Failure};
use crate::output::Sent;
use crate::settings::Settings;
use crate::unsubscribe::Unsubscribe;

pub(crate) mod args;
mod header;
mod list;
mod mime;
mod render;
pub(crate) mod template;

use self::list::List;
use self::render::{Merge, Rendered, bytes};

/// A merge this large without List-Unsubscribe is warned about.
const UNSUBSCRIBE_WARNING: usize = 300;

/// `smtp send --merge`.
pub(crate) async fn run(
    args: &SendArgs,
    s: &Settings,
    signer: Option<Signer>,
    via: impl FnOnce() -> Result<crate::queue::Via, Failure>,
) -> Result<u8, Failure> {
    let started = Instant::now();
    let m = &args.merge;
    let Some(list_path) = &m.merge else {
        return Err(Failure::usage("--merge needs a CSV file"));
    };
    if !args.messages.is_empty() || !args.to.is_empty() || !args.cc.is_empty() {
        return Err(Failure::usage(
            "--merge takes each recipient from the list (--to-column): no message files, --to \
             or --cc",
        ));
    }
    if args.read_recipients {
        return Err(Failure::usage(
            "--merge takes the recipients from the list, not -t",
        ));
    }
    let csv = std::fs::read(list_path).map_err(|e| Failure::no_input(list_path, &e))?;
    let list = List::read(list_path, &csv)?;
    // The rows are parsed: the file's bytes are not needed again.
    drop(csv);
    let (template, replace, key_inputs) = template(args, s)?;
    let unsubscribe = Unsubscribe::new(m.unsubscribe.as_deref(), m.unsubscribe_mailto.as_deref())?;
    let has_unsubscribe = unsubscribe.is_some();
    let name = list_path.file_name().map_or_else(
        || list_path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let merge = Merge::new(
        list,
        name,
        &template,
        &m.to_column,
        unsubscribe,
        replace,
        s.helo.clone(),
    )?;
    if m.template.is_some() && merge.has_field("message-id") {
        tell!(
            "note: the template's Message-ID is replaced: each message gets its own (one \
             Message-ID for many recipients is wrong)"
        );
    }
    // Every row checked, before anything is sent.
    let mut bad: Vec<(u64, String)> = Vec::new();
    let mut good: Vec<(usize, smtp_core::data::BodyType, u64)> = Vec::new();
    let mut sender: Option<String> = s.from.clone();
    // Each recipient once, as the queue compares them (the domain's case
    // aside), at the line it is first on.
    let mut seen: HashMap<String, u64> = HashMap::new();
    let mut twice = 0usize;
    for (i, row) in merge.list.rows.iter().enumerate() {
        match merge.render(row, None) {
            Ok(msg) => {
                if sender.is_none() {
                    sender.clone_from(&msg.prepared.from);
                }
                let r = &msg.recipient;
                let folded = format!(
                    "{}@{}",
                    r.local_part(),
                    r.domain().as_str().to_ascii_lowercase()
                );
                if let Some(first) = seen.get(&folded) {
                    tell!(
                        "{}: line {}: {r} is on line {first} too: it gets the message once",
                        merge.name,
                        row.line
                    );
                    twice += 1;
                    continue;
                }
                seen.insert(folded, row.line);
                good.push((i, msg.prepared.body_type, msg.prepared.size));
            }
            Err(why) => bad.push((row.line, why)),
        }
    }
    drop(seen);
    if twice > 0 {
        tell!(
            "smtp: {} left out: each recipient gets the message once",
            crate::output::counted(twice, "repeated recipient")
        );
    }
    if !bad.is_empty() {
        for (line, why) in &bad {
            tell!("{}: line {line}: {why}", merge.name);
        }
        let lines: Vec<String> = bad.iter().map(|(l, _)| l.to_string()).collect();
        if m.skip_bad_rows {
            tell!(
                "smtp: {} left out (--skip-bad-rows): lines {} (line 1 is the header row)",
                crate::output::counted(bad.len(), "bad row"),
                lines.join(", ")
            );
        } else {
            return Err(Failure::data(format!(
                "{}: {} of {} rows cannot be sent: lines {} (line 1 is the header row); nothing \
                 was sent (--skip-bad-rows sends the others)",
                merge.name,
                bad.len(),
                merge.list.rows.len(),
                lines.join(", ")
            )));
        }
    }
    if good.is_empty() {
        return Err(Failure::data(format!("{}: no row to send", merge.name)));
    }
    let signer = signer.map(|s| Arc::new(Mutex::new(s)));
    if let Some(n) = m.dry_run {
        return dry_run(
            &merge,
            &good,
            n,
            m.dry_run_dir.as_deref(),
            signer.as_deref(),
        );
    }
    if good.len() > UNSUBSCRIBE_WARNING && !has_unsubscribe && !merge.has_field("list-unsubscribe")
    {
        tell!(
            "warning: {} recipients and no List-Unsubscribe: large receivers expect one-click \
             unsubscribe from bulk senders (--unsubscribe https://…)",
            good.len()
        );
    }
    if signer.is_none() {
        tell!(
            "warning: this merge is not DKIM-signed: receivers trust unsigned bulk mail less \
             (--dkim-key, --dkim-selector)"
        );
    }
    let sender = sender.ok_or_else(|| {
        Failure::usage("no sender: give -f/--from, or a From: field in the template")
    })?;
    let from = ReversePath::parse(&sender).map_err(|e| Failure::data(format!("sender: {e}")))?;
    let key = key(&key_inputs, args, &sender);
    let merge = Arc::new(merge);
    let route = crate::send::queue_route(s);
    let mut batch = Vec::with_capacity(good.len());
    let mut sent = Vec::with_capacity(good.len());
    for &(i, body_type, size) in &good {
        let row = &merge.list.rows[i];
        let Ok(to) = merge.recipient(row) else {
            continue;
        };
        let envelope = Envelope::new(from.clone(), vec![to.clone()])
            .with_body(body_type)
            .with_size(size);
        sent.push(Sent {
            name: merge.message_name(row),
            recipients: vec![to.to_string()],
        });
        batch.push(NewMessage {
            from: from.to_string(),
            to: vec![to.to_string()],
            body: Body::Source(Box::new(Rendered::new(merge.clone(), i, signer.clone()))),
            options: crate::queue::options(&envelope, args.notify_sender, &route),
        });
    }
    let dir = args.queue.clone().unwrap_or_default();
    let queued = crate::queue::Queued {
        dir: &dir,
        retry: &args.retry,
        notify_sender: args.notify_sender,
        config: args.config.as_deref(),
        run_line: crate::queue::run_command(args),
        rate: crate::rate::resolve(&args.retry.rate, (&s.rate.0, s.rate.1))?,
        relay_key: crate::send::relay_key(s),
        route,
    };
    let via = if args.queue_only { None } else { Some(via()?) };
    let mode = crate::progress::Mode {
        json: args.json,
        verbose: args.verbose,
        sendmail: false,
    };
    let (code, ids, store) = crate::queue::send_once(&queued, via, &key, batch, sent, mode).await?;
    let mut counts = [0usize; 4];
    let ids: Vec<_> = ids;
    for chunk in ids.chunks(1000) {
        let infos = store
            .show_many(chunk)
            .await
            .map_err(|e| Failure::new(crate::fail::EX_TEMPFAIL, format!("queue: {e}")))?;
        for r in infos.iter().flat_map(|i| &i.recipients) {
            let slot = match r.state {
                RecipientState::Delivered => 0,
                RecipientState::Failed | RecipientState::Expired => 1,
                RecipientState::Deferred => 2,
                RecipientState::Queued | RecipientState::Delivering => 3,
            };
            counts[slot] += 1;
        }
    }
    if !ids.is_empty() {
        tell!(
            "smtp: merge of {}: {} delivered, {} failed, {} deferred, {} waiting in {:.1} s",
            crate::output::counted(ids.len(), "message"),
            counts[0],
            counts[1],
            counts[2],
            counts[3],
            started.elapsed().as_secs_f64()
        );
    }
    Ok(code)
}

/// The template's bytes, the fields each message gets its own of, and
/// what goes into the key besides the list.
type Source = (Vec<u8>, Vec<&'static str>, Vec<Vec<u8>>);

/// The template's bytes, the fields each message gets its own of, and
/// what goes into the key besides the list.
fn template(args: &SendArgs, s: &Settings) -> Result<Source, Failure> {
    let m = &args.merge;
    let composing = args.subject.is_some()
        || args.body.is_some()
        || args.body_file.is_some()
        || m.body_html.is_some()
        || m.body_html_file.is_some()
        || !args.attach.is_empty()
        || !args.header.is_empty();
    if let Some(path) = &m.template {
        if composing {
            return Err(Failure::usage(
                "--template is the whole message: no --subject, --body, --body-html, --attach \
                 or --header with it",
            ));
        }
        let bytes = std::fs::read(path).map_err(|e| Failure::no_input(path, &e))?;
        let key = vec![b"template".to_vec(), bytes.clone()];
        return Ok((bytes, vec!["Message-ID"], key));
    }
    if !composing {
        return Err(Failure::usage(
            "--merge needs a message: --template FILE, or --subject with --body/--body-html",
        ));
    }
    let from = s
        .from
        .clone()
        .ok_or_else(|| Failure::usage("a composed merge needs --from"))?;
    let read = |p: &Path| std::fs::read_to_string(p).map_err(|e| Failure::no_input(p, &e));
    let body = match (&args.body, &args.body_file) {
        (Some(b), _) => b.clone(),
        (None, Some(f)) => read(f)?,
        (None, None) => String::new(),
    };
    let html = match (&m.body_html, &m.body_html_file) {
        (Some(h), _) => Some(h.clone()),
        (None, Some(f)) => Some(read(f)?),
        (None, None) => None,
    };
    let fields = HeaderFields::read(&args.header)?;
    let subject = args
        .subject
        .clone()
        .or(fields.subject.clone())
        .unwrap_or_default();
    let mut headers = fields.rest.clone();
    headers.push(("Subject".to_owned(), subject.clone()));
    let to = [format!("{{{{{}}}}}", m.to_column)];
    let full_name = args.full_name.as_deref().or(s.from_name.as_deref());
    let bytes = compose(&Composition {
        from: &from,
        full_name,
        to: &to,
        cc: &[],
        subject: "",
        body: &body,
        html: html.as_deref(),
        raw_subject: true,
        attachments: &args.attach,
        headers: &headers,
    })?;
    let mut key = vec![
        b"compose".to_vec(),
        from.into_bytes(),
        full_name.unwrap_or_default().as_bytes().to_vec(),
        subject.into_bytes(),
        body.into_bytes(),
        html.unwrap_or_default().into_bytes(),
    ];
    for (n, v) in &fields.rest {
        key.push(format!("{n}: {v}").into_bytes());
    }
    for a in &args.attach {
        key.push(a.display().to_string().into_bytes());
        key.push(std::fs::read(a).map_err(|e| Failure::no_input(a, &e))?);
    }
    Ok((bytes, vec!["Message-ID", "Date"], key))
}

/// The merge's key, naming the message (not the list): SHA-256 over the
/// template's inputs and the options that change what is sent, each
/// length-prefixed. The queue records each recipient enqueued under it.
fn key(inputs: &[Vec<u8>], args: &SendArgs, sender: &str) -> String {
    let m = &args.merge;
    let mut h = Sha256::new();
    let mut part = |b: &[u8]| {
        h.update((b.len() as u64).to_be_bytes());
        h.update(b);
    };
    part(b"smtp-merge-2");
    for i in inputs {
        part(i);
    }
    part(m.to_column.as_bytes());
    part(sender.as_bytes());
    part(m.unsubscribe.as_deref().unwrap_or_default().as_bytes());
    part(
        m.unsubscribe_mailto
            .as_deref()
            .unwrap_or_default()
            .as_bytes(),
    );
    part(&[u8::from(args.notify_sender)]);
    for o in [&args.dkim_selector, &args.dkim_domain] {
        part(o.as_deref().unwrap_or_default().as_bytes());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// `--dry-run`: the first `n` messages, rendered and signed as they would
/// go, on standard output or in `dir`; nothing sent, no queue touched.
fn dry_run(
    merge: &Merge,
    good: &[(usize, smtp_core::data::BodyType, u64)],
    n: usize,
    dir: Option<&Path>,
    signer: Option<&Mutex<Signer>>,
) -> Result<u8, Failure> {
    if let Some(dir) = dir {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder
            .create(dir)
            .map_err(|e| Failure::io(&dir.display().to_string(), &e))?;
    }
    for &(i, _, _) in good.iter().take(n) {
        let row = &merge.list.rows[i];
        let msg = merge
            .render(row, signer)
            .map_err(|why| Failure::data(format!("{}: line {}: {why}", merge.name, row.line)))?;
        let bytes = bytes(&msg.prepared);
        match dir {
            Some(dir) => {
                let path = dir.join(format!("row-{}.eml", row.line));
                write_new(&path, &bytes)?;
                say!("{} (to {})", path.display(), msg.recipient);
            }
            None => {
                say!(
                    "==> {} (line {}) to {} <==",
                    merge.name,
                    row.line,
                    msg.recipient
                );
                say!("{}", String::from_utf8_lossy(&bytes).replace("\r\n", "\n"));
            }
        }
    }
    tell!(
        "smtp: dry run: {} of {} messages shown; nothing sent",
        n.min(good.len()),
        good.len()
    );
    Ok(EX_OK)
}

/// Writes `bytes` to a new file at `path`, readable by its owner only
/// (0600: the rows are people's data). An existing file, or a symbolic
/// link planted there, is refused, never written through.
fn write_new(path: &Path, bytes: &[u8]) -> Result<(), Failure> {
    use std::io::Write as _;
    let shown = path.display().to_string();
    let mut options = std::fs::OpenOptions::new();
    // O_CREAT|O_EXCL: fails on any existing name, a symbolic link (even a
    // dangling one) included; the link is never followed.
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            Failure::new(
                crate::fail::EX_CANTCREAT,
                format!(
                    "{shown} exists: a dry run never overwrites a file (nor follows a link): \
                         give an empty --dry-run-dir"
                ),
            )
        } else {
            Failure::io(&shown, &e)
        }
    })?;
    file.write_all(bytes)
        .and_then(|()| file.flush())
        .map_err(|e| Failure::io(&shown, &e))
}
