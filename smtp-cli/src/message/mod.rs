//! Messages as the user gives them: files, standard input, or composed
//! from options ([`crate::compose`]); their header section read for `-t`
//! and the default sender, Bcc removed, Date and Message-ID added when
//! missing, lines over 998 octets re-encoded ([`reencode`]). A composed message
//! and standard input up to [`crate::stdin::STDIN_IN_MEMORY`] stay in memory; a larger
//! standard input is spooled privately ([`Spool`]); a message file's body
//! streams from the file, which is checked to be the one scanned.

use std::io::{self, Read, Seek};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use smtp_core::data::{BodyFacts, BodyRules, BodyScanner, BodyType};
use smtp_core::delivery::BodySource;

use crate::fail::Failure;
use crate::identity::Identity;
use crate::reencode::{self, HeadFacts};
use crate::spool::Spool;

mod files;
pub(crate) use self::files::Files;

/// The header section may be at most this large.
const MAX_HEADER: usize = 1024 * 1024;

/// A body after the header section up to this size is kept in memory from
/// the pre-scan, so sending it costs no file I/O (many small messages in
/// one session); a larger one streams from its file.
const INLINE_BODY: usize = 32 * 1024;

/// What a body source reports when its file is not the one scanned.
const CHANGED: &str = "the message file changed after it was read; nothing was sent, send it again";

/// Where a message's bytes are, before it is prepared.
pub(crate) enum Input {
    /// In memory (a composed message, a small standard input).
    Bytes(Vec<u8>),
    /// In a file: the user's, or a spool of standard input.
    File(PathBuf, Option<Arc<Spool>>),
}

/// A message ready to send: its rewritten header section and its body.
#[derive(Clone, Debug)]
pub(crate) struct Prepared {
    /// What to call it in reports.
    pub(crate) name: String,
    /// The header section as it will be sent (CRLF line ends, Bcc removed,
    /// Date/Message-ID added).
    pub(crate) head: Vec<u8>,
    /// What follows the header section.
    pub(crate) body: Body,
    /// Addresses from the headers.
    pub(crate) from: Option<String>,
    pub(crate) recipients: Vec<String>,
    /// Body type and size after encoding.
    pub(crate) body_type: BodyType,
    pub(crate) size: u64,
    /// What was changed to keep lines within 998 octets, for a note.
    pub(crate) notes: Vec<String>,
    /// Why the message needs BINARYMIME, when it has a line too long that
    /// could not be re-encoded ([`crate::reencode`]).
    pub(crate) binary_cause: Option<String>,
}

impl Prepared {
    /// Adds `From:` with `sender` (and `display`, the sender's full name) to
    /// a message that has none, as an MTA's submission service does: RFC
    /// 5322 requires the field, and receivers refuse mail without it.
    pub(crate) fn add_from(&mut self, sender: &str, display: Option<&str>) {
        use mail_builder::headers::Header;
        use mail_builder::headers::address::Address;
        let written =
            crate::compose::header_address(sender, crate::compose::needs_smtputf8(sender));
        let address: Address<'_> = match display {
            Some(name) => (name, written.as_str()).into(),
            None => written.as_str().into(),
        };
        let mut line = b"From: ".to_vec();
        let column = line.len();
        address.write_header(&mut line, column);
        self.size += line.len() as u64;
        if !line.is_ascii() && self.body_type == BodyType::SevenBit {
            // A UTF-8 local part: the field is 8-bit (and the envelope
            // asks for SMTPUTF8).
            self.body_type = BodyType::EightBitMime;
        }
        line.extend_from_slice(&self.head);
        self.head = line;
        self.from = Some(sender.to_owned());
    }
}

/// The bytes after the header section.
#[derive(Clone, Debug)]
pub(crate) enum Body {
    /// Held in memory.
    Memory(Arc<[u8]>),
    /// In a file from `offset`, which must still be the file scanned. It is
    /// opened only while it is sent: a run of thousands of files holds one
    /// descriptor at a time.
    File {
        path: PathBuf,
        offset: u64,
        identity: Identity,
        /// Keeps a spool alive while a body may still be read from it.
        _spool: Option<Arc<Spool>>,
    },
}

/// Reads the header section of `input` and prepares the message.
pub(crate) fn prepare(input: Input, name: String, hostname: &str) -> Result<Prepared, Failure> {
    match input {
        Input::Bytes(bytes) => {
            let end = header_end(&bytes, true).unwrap_or(bytes.len());
            if end > MAX_HEADER {
                return Err(Failure::data(format!(
                    "{name}: no end of the header section within {MAX_HEADER} bytes; is this an RFC 5322 message?"
                )));
            }
            let (head, rest) = bytes.split_at(end);
            let head = Head::read(head, &name, hostname)?;
            let mut scanner = BodyScanner::new();
            scanner.scan(&head.bytes);
            scanner.scan(rest);
            head.into_prepared(name, Body::Memory(Arc::from(rest)), &scanner.finish())
        }
        Input::File(path, spool) => prepare_file(&path, spool, name, hostname),
    }
}

fn prepare_file(
    path: &Path,
    spool: Option<Arc<Spool>>,
    name: String,
    hostname: &str,
) -> Result<Prepared, Failure> {
    let mut buf = Vec::new();
    let scanned = scan_file(path, spool, &name, &mut buf)?;
    scanned.prepare(name, hostname)
}

/// A message file as read once: its header section as in the file, its
/// body, and the facts of that body alone.
struct Scanned {
    raw_head: Vec<u8>,
    body: Body,
    body_facts: BodyFacts,
    /// The file's, as it was while it was read.
    identity: Identity,
}

impl Scanned {
    fn prepare(&self, name: String, hostname: &str) -> Result<Prepared, Failure> {
        let head = Head::read(&self.raw_head, &name, hostname)?;
        let mut scanner = BodyScanner::new();
        scanner.scan(&head.bytes);
        // The rewritten header section ends with a line end, so the
        // body's own facts join its facts.
        let facts = scanner.finish().then(self.body_facts);
        head.into_prepared(name, self.body.clone(), &facts)
    }
}

/// Reads the file at `path` once: the header section, then the body,
/// scanned chunk by chunk (a large body is never held whole) and kept in
/// memory when small. `buf` is the read buffer, reused from file to file.
fn scan_file(
    path: &Path,
    spool: Option<Arc<Spool>>,
    name: &str,
    buf: &mut Vec<u8>,
) -> Result<Scanned, Failure> {
    let mut file = std::fs::File::open(path).map_err(|e| Failure::no_input(path, &e))?;
    let identity = |f: &std::fs::File| {
        f.metadata()
            .map(|m| Identity::of(&m))
            .map_err(|e| Failure::no_input(path, &e))
    };
    let before = identity(&file)?;
    buf.resize(64 * 1024, 0);
    let mut head = Vec::new();
    let end = loop {
        let n = file.read(buf).map_err(|e| Failure::no_input(path, &e))?;
        head.extend_from_slice(&buf[..n]);
        if let Some(end) = header_end(&head, n == 0) {
            break end;
        }
        if head.len() > MAX_HEADER {
            return Err(Failure::data(format!(
                "{name}: no end of the header section within {MAX_HEADER} bytes; is this an RFC 5322 message?"
            )));
        }
    };
    // What was read past the header section is the body's first bytes.
    let first = head.split_off(end);
    let mut scanner = BodyScanner::new();
    scanner.scan(&first);
    let mut kept = (first.len() <= INLINE_BODY).then_some(first);
    loop {
        let n = file.read(buf).map_err(|e| Failure::no_input(path, &e))?;
        if n == 0 {
            break;
        }
        scanner.scan(&buf[..n]);
        kept = kept.filter(|k| k.len() + n <= INLINE_BODY).map(|mut k| {
            k.extend_from_slice(&buf[..n]);
            k
        });
    }
    let after = identity(&file)?;
    if after != before {
        return Err(Failure::new(
            crate::fail::EX_TEMPFAIL,
            format!("{name}: the file changed while it was read; nothing was sent, send it again"),
        ));
    }
    let body = match kept {
        Some(k) => Body::Memory(Arc::from(k)),
        None => Body::File {
            path: path.to_owned(),
            offset: end as u64,
            identity: after.clone(),
            _spool: spool,
        },
    };
    Ok(Scanned {
        raw_head: head,
        body,
        body_facts: scanner.finish(),
        identity: after,
    })
}

/// Feeds the body to `f` in chunks: from memory, or from its file, which
/// must still be the one scanned when it is opened and after its last byte.
pub(crate) fn read_body(
    body: &Body,
    name: &str,
    mut f: impl FnMut(&[u8]) -> Result<(), Failure>,
) -> Result<(), Failure> {
    let (path, offset, identity) = match body {
        Body::Memory(bytes) => return bytes.chunks(64 * 1024).try_for_each(f),
        Body::File {
            path,
            offset,
            identity,
            ..
        } => (path, *offset, identity),
    };
    let changed = || {
        Failure::new(
            crate::fail::EX_TEMPFAIL,
            format!("{name}: the file changed while it was read; nothing was sent, send it again"),
        )
    };
    let same = |m: io::Result<std::fs::Metadata>| m.is_ok_and(|m| Identity::of(&m) == *identity);
    let mut file = std::fs::File::open(path).map_err(|_| changed())?;
    if !same(file.metadata()) {
        return Err(changed());
    }
    let unreadable = |e: io::Error| Failure::no_input(path, &e);
    file.seek(io::SeekFrom::Start(offset)).map_err(unreadable)?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf).map_err(unreadable)?;
        if n == 0 {
            break;
        }
        f(&buf[..n])?;
    }
    if !same(file.metadata()) || !same(std::fs::metadata(path)) {
        return Err(changed());
    }
    Ok(())
}

/// A header section as read and rewritten.
struct Head {
    bytes: Vec<u8>,
    /// A Date or Message-ID was added: reading it again gives another.
    generated: bool,
    from: Option<String>,
    recipients: Vec<String>,
    long_lines: HeadFacts,
}

impl Head {
    /// Checks that `raw` is a header section, and rewrites it: CRLF line
    /// ends, Bcc removed, Date and Message-ID added when missing (unless
    /// the message is signed), lines over 998 octets folded.
    fn read(raw: &[u8], name: &str, hostname: &str) -> Result<Self, Failure> {
        let lines = lines(raw);
        match lines.first() {
            None => {
                return Err(Failure::data(format!(
                    "{name}: the message is empty; nothing was sent"
                )));
            }
            Some(first) if field_name(first).is_none() => {
                return Err(Failure::data(format!(
                    "{name}: the message does not start with a header field (\"Name: value\"); \
                     is this an RFC 5322 message? Nothing was sent"
                )));
            }
            Some(_) => {}
        }
        let mut long_lines = HeadFacts::new(&lines);
        let mut normal = Vec::with_capacity(raw.len() + 64);
        // Inside a Bcc or Resent-Bcc field: removed below, so never folded
        // (nor refused for a line too long to fold).
        let mut bcc = false;
        for (n, line) in lines.iter().enumerate() {
            let continuation = matches!(line.first(), Some(b' ' | b'\t'));
            if line.is_empty() {
                // The blank line that ends the section.
                normal.extend_from_slice(b"\r\n");
                break;
            }
            if !continuation && field_name(line).is_none() {
                return Err(Failure::data(format!(
                    "{name}: line {} of the header section is not a header field \
                     (\"Name: value\"); is a blank line missing before the body? Nothing was sent",
                    n + 1
                )));
            }
            if !continuation {
                bcc = field_name(line).is_some_and(|f| {
                    f.eq_ignore_ascii_case(b"bcc") || f.eq_ignore_ascii_case(b"resent-bcc")
                });
            }
            if bcc {
                normal.extend_from_slice(line);
            } else {
                long_lines
                    .line(&mut normal, line, n as u64 + 1)
                    .map_err(|e| Failure::data(format!("{name}: {e}")))?;
            }
            normal.extend_from_slice(b"\r\n");
        }
        let parsed = mail_parser::MessageParser::default().parse_headers(&normal[..]);
        let addresses = |a: Option<&mail_parser::Address<'_>>| -> Vec<String> {
            a.map(|a| {
                a.iter()
                    .filter_map(|x| x.address().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
        };
        let (from, recipients, has_date, has_id) = match &parsed {
            Some(m) => (
                addresses(m.from()).into_iter().next(),
                header_recipients(m),
                m.date().is_some(),
                m.message_id().is_some(),
            ),
            None => (None, Vec::new(), false, false),
        };
        let mut bytes = Vec::with_capacity(normal.len() + 128);
        // A signed message goes as signed: a Date or Message-ID the signer
        // listed as absent (h=) would break its signature once added.
        let (has_date, has_id) = if long_lines.is_signed() {
            (true, true)
        } else {
            (has_date, has_id)
        };
        if !has_date {
            bytes.extend_from_slice(b"Date: ");
            bytes.extend_from_slice(
                mail_builder::headers::date::Date::now()
                    .to_rfc822()
                    .as_bytes(),
            );
            bytes.extend_from_slice(b"\r\n");
        }
        if !has_id {
            bytes.extend_from_slice(b"Message-ID: ");
            mail_builder::headers::message_id::generate_message_id_header(&mut bytes, hostname);
            bytes.extend_from_slice(b"\r\n");
        }
        // Bcc (and a resend's Resent-Bcc) never goes out, whatever the
        // options: its recipients get the message through the envelope alone.
        let without_bcc = remove_header(&normal, b"bcc");
        bytes.extend_from_slice(&remove_header(&without_bcc, b"resent-bcc"));
        Ok(Self {
            bytes,
            generated: !(has_date && has_id),
            from,
            recipients,
            long_lines,
        })
    }

    fn into_prepared(
        self,
        name: String,
        body: Body,
        facts: &BodyFacts,
    ) -> Result<Prepared, Failure> {
        let p = Prepared {
            name,
            head: self.bytes,
            body,
            from: self.from,
            recipients: self.recipients,
            body_type: body_type(facts),
            size: facts.encoded_size,
            notes: Vec::new(),
            binary_cause: None,
        };
        reencode::long_lines(p, self.long_lines, facts)
    }
}

/// The `BODY=` a scanned message needs.
pub(crate) fn body_type(facts: &BodyFacts) -> BodyType {
    match facts.rules() {
        r if r == BodyRules::SEVEN_BIT => BodyType::SevenBit,
        r if r == BodyRules::EIGHT_BIT_MIME => BodyType::EightBitMime,
        _ => BodyType::BinaryMime,
    }
}

/// Where a line ends in `buf` from `at`: CRLF, LF, or a CR alone (old Mac
/// files). `None` when the end of the line is not in `buf` yet (a CR at the
/// end may be half of a CRLF unless `eof`). Returns (end of content, start
/// of the next line).
fn line_end(buf: &[u8], at: usize, eof: bool) -> Option<(usize, usize)> {
    let rest = buf.get(at..)?;
    let i = rest.iter().position(|&b| b == b'\n' || b == b'\r')?;
    let end = at + i;
    match (buf[end], buf.get(end + 1)) {
        (b'\n', _) => Some((end, end + 1)),
        (_, Some(b'\n')) => Some((end, end + 2)),
        (_, Some(_)) => Some((end, end + 1)),
        (_, None) if eof => Some((end, end + 1)),
        (_, None) => None,
    }
}

/// Where the header section ends (after its blank line), if it does; at
/// the end of the input, the whole input is the header section.
fn header_end(buf: &[u8], eof: bool) -> Option<usize> {
    let mut at = 0;
    loop {
        match line_end(buf, at, eof) {
            Some((end, next)) if end == at => return Some(next),
            Some((_, next)) => at = next,
            None if eof => return Some(buf.len()),
            None => return None,
        }
    }
}

/// The lines of a header section, without their line ends; the blank line
/// that ends it (if any) is the last, empty one.
fn lines(head: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < head.len() {
        match line_end(head, at, true) {
            Some((end, next)) => {
                out.push(&head[at..end]);
                at = next;
            }
            None => {
                out.push(&head[at..]);
                break;
            }
        }
    }
    out
}

/// The name of a header field line (`Name:` or the obsolete `Name :`).
pub(crate) fn field_name(line: &[u8]) -> Option<&[u8]> {
    let colon = line.iter().position(|&b| b == b':')?;
    let name = line[..colon].trim_ascii_end();
    (!name.is_empty() && name.iter().all(|&b| b.is_ascii_graphic() && b != b':')).then_some(name)
}

/// Removes every `name:` header field (with its folded continuation lines).
pub(crate) fn remove_header(head: &[u8], name: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(head.len());
    let mut skipping = false;
    for line in head.split_inclusive(|&b| b == b'\n') {
        let continuation = matches!(line.first(), Some(b' ' | b'\t'));
        if !continuation {
            skipping = line.len() > name.len()
                && line[..name.len()].eq_ignore_ascii_case(name)
                && line[name.len()..].trim_ascii_start().starts_with(b":");
        }
        if !skipping {
            out.extend_from_slice(line);
        }
    }
    out
}

/// The recipients `-t` reads, as sendmail reads them: every address of
/// every To, Cc and Bcc field (a message may repeat a field); when the
/// message was resent (it has Resent-To, -Cc or -Bcc), those fields only.
fn header_recipients(m: &mail_parser::Message<'_>) -> Vec<String> {
    use mail_parser::HeaderName;
    let collect = |names: &[HeaderName<'static>]| -> Vec<String> {
        m.headers()
            .iter()
            .filter(|h| names.contains(&h.name))
            .filter_map(|h| h.value.as_address())
            .flat_map(|a| a.iter().filter_map(|x| x.address().map(str::to_owned)))
            .collect()
    };
    let resent = collect(&[
        HeaderName::ResentTo,
        HeaderName::ResentCc,
        HeaderName::ResentBcc,
    ]);
    if !resent.is_empty() {
        return resent;
    }
    collect(&[HeaderName::To, HeaderName::Cc, HeaderName::Bcc])
}

/// The prepared header section, then the body: from memory, or from its
/// file, opened on the first read and closed at its end (a session with
/// thousands of messages holds one file at a time). The file must be the
/// one scanned, when it is opened and again after its last byte: otherwise
/// the read fails, which makes the session give up this message without
/// ending its data, so a server never takes a mix of two files. Whatever
/// is read still goes through the session's encoder, which checks every
/// octet it takes whole.
///
/// The file is read on the session's thread, not handed to a blocking
/// pool: a read of a file in the page cache costs a few microseconds, and
/// each hand-off cost more than that (a wake-up of the pool's thread and
/// one of the session's, per 64 KiB). A file on a slow disk holds the
/// sessions that share the thread while it is read.
pub(crate) struct PreparedBody {
    head: Vec<u8>,
    pos: usize,
    body: Body,
    file: FileState,
}

enum FileState {
    NotOpened,
    Open(std::fs::File),
    Finished,
}

fn changed() -> io::Error {
    io::Error::other(CHANGED)
}

impl PreparedBody {
    pub(crate) fn new(p: &Prepared) -> Self {
        Self {
            head: p.head.clone(),
            pos: 0,
            body: p.body.clone(),
            file: FileState::NotOpened,
        }
    }

    /// Reads the body's file, opening it on the first read.
    fn read_file(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Body::File {
            path,
            offset,
            identity,
            ..
        } = &self.body
        else {
            return Ok(0);
        };
        if let FileState::NotOpened = self.file {
            let mut f = std::fs::File::open(path).map_err(|e| {
                if e.kind() == io::ErrorKind::NotFound {
                    changed()
                } else {
                    e
                }
            })?;
            if Identity::of(&f.metadata()?) != *identity {
                return Err(changed());
            }
            f.seek(io::SeekFrom::Start(*offset))?;
            self.file = FileState::Open(f);
        }
        let FileState::Open(f) = &mut self.file else {
            return Ok(0);
        };
        let n = f.read(buf)?;
        if n == 0 {
            // Changed in place while it was sent, or replaced under its name.
            let same = Identity::of(&f.metadata()?) == *identity
                && std::fs::metadata(path).is_ok_and(|m| Identity::of(&m) == *identity);
            self.file = FileState::Finished;
            if !same {
                return Err(changed());
            }
        }
        Ok(n)
    }
}

#[async_trait]
impl BodySource for PreparedBody {
    async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // The header section, then the body if it is in memory.
        let in_memory = match (self.pos.checked_sub(self.head.len()), &self.body) {
            (None, _) => self.head.get(self.pos..),
            (Some(at), Body::Memory(b)) => Some(b.get(at..).unwrap_or_default()),
            (Some(_), Body::File { .. }) => None,
        };
        if let Some(part) = in_memory {
            let n = part.len().min(buf.len());
            buf[..n].copy_from_slice(&part[..n]);
            self.pos += n;
            return Ok(n);
        }
        self.read_file(buf)
    }

    async fn rewind(&mut self) -> io::Result<()> {
        self.pos = 0;
        self.file = FileState::NotOpened;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
