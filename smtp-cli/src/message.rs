//! Messages as the user gives them: files, standard input, or composed
//! from options; their header section read for `-t` and the default sender,
//! Bcc removed, Date and Message-ID added when missing. Bodies stream from
//! their file: only the header section is held in memory.

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use smtp_core::command::BodyType;
use smtp_core::data::{BodyRules, BodyScanner};
use smtp_core::transport::BodySource;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::fail::Failure;

/// The header section may be at most this large.
const MAX_HEADER: usize = 1024 * 1024;

/// A body after the header section up to this size is kept in memory from
/// the pre-scan, so sending it costs no file I/O (many small messages in
/// one session); a larger one streams from its file.
const INLINE_BODY: usize = 32 * 1024;

/// A message ready to send: its rewritten header section and where its body starts.
#[derive(Debug)]
pub(crate) struct Prepared {
    /// What to call it in reports.
    pub(crate) name: String,
    /// The header section as it will be sent (Bcc removed, Date/Message-ID added).
    pub(crate) head: Vec<u8>,
    /// The file holding the message, and the offset of the rest after the header section.
    pub(crate) file: PathBuf,
    pub(crate) body_offset: u64,
    /// The body after the header section, when it is small enough to keep.
    pub(crate) inline: Option<Arc<[u8]>>,
    /// Addresses from the headers.
    pub(crate) from: Option<String>,
    pub(crate) recipients: Vec<String>,
    /// Body type and size after encoding.
    pub(crate) body_type: BodyType,
    pub(crate) size: u64,
    /// A spooled copy of standard input to remove afterwards.
    pub(crate) spooled: bool,
}

impl Drop for Prepared {
    fn drop(&mut self) {
        if self.spooled {
            let _ = std::fs::remove_file(&self.file);
        }
    }
}

/// Spools standard input to a private temporary file, so a message of any
/// size streams (and can be read again if the server wants it twice).
pub(crate) fn spool_stdin() -> Result<PathBuf, Failure> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let path = std::env::temp_dir().join(format!("smtp-stdin-{}-{nanos}.eml", std::process::id()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(&path)
        .map_err(|e| Failure::io("cannot spool standard input", &e))?;
    io::copy(&mut io::stdin().lock(), &mut file)
        .map_err(|e| Failure::io("cannot read standard input", &e))?;
    Ok(path)
}

/// Reads the header section of `path` and prepares the message.
pub(crate) fn prepare(
    path: &Path,
    name: String,
    spooled: bool,
    strip_bcc: bool,
    hostname: &str,
) -> Result<Prepared, Failure> {
    let mut file = std::fs::File::open(path).map_err(|e| Failure::no_input(path, &e))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 8192];
    let end = loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| Failure::no_input(path, &e))?;
        head.extend_from_slice(&buf[..n]);
        if let Some(end) = header_end(&head) {
            break end;
        }
        if n == 0 {
            break head.len();
        }
        if head.len() > MAX_HEADER {
            return Err(Failure::data(format!(
                "{}: no end of the header section within {MAX_HEADER} bytes; is this an RFC 5322 message?",
                path.display()
            )));
        }
    };
    // What was read past the header section is the body's first bytes.
    let first = head.split_off(end);
    let parsed = mail_parser::MessageParser::default().parse_headers(&head[..]);
    let addresses = |a: Option<&mail_parser::Address<'_>>| -> Vec<String> {
        a.map(|a| {
            a.iter()
                .filter_map(|x| x.address().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
    };
    let (from, recipients, has_date, has_id) = match &parsed {
        Some(m) => {
            let mut r = addresses(m.to());
            r.extend(addresses(m.cc()));
            r.extend(addresses(m.bcc()));
            (
                addresses(m.from()).into_iter().next(),
                r,
                m.date().is_some(),
                m.message_id().is_some(),
            )
        }
        None => (None, Vec::new(), false, false),
    };
    let mut rewritten = Vec::with_capacity(head.len() + 128);
    if !has_date {
        rewritten.extend_from_slice(b"Date: ");
        rewritten.extend_from_slice(
            mail_builder::headers::date::Date::now()
                .to_rfc822()
                .as_bytes(),
        );
        rewritten.extend_from_slice(b"\r\n");
    }
    if !has_id {
        rewritten.extend_from_slice(b"Message-ID: ");
        mail_builder::headers::message_id::generate_message_id_header(&mut rewritten, hostname);
        rewritten.extend_from_slice(b"\r\n");
    }
    rewritten.extend_from_slice(&if strip_bcc {
        remove_header(&head, b"bcc")
    } else {
        head
    });
    // Scan the whole message once for BODY= and SIZE=.
    let mut scanner = BodyScanner::new();
    scanner.scan(&rewritten);
    // The rest of the body, read on from where the header section ended.
    scanner.scan(&first);
    let mut inline = (first.len() <= INLINE_BODY).then_some(first);
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| Failure::no_input(path, &e))?;
        if n == 0 {
            break;
        }
        scanner.scan(&buf[..n]);
        inline = inline
            .filter(|kept| kept.len() + n <= INLINE_BODY)
            .map(|mut kept| {
                kept.extend_from_slice(&buf[..n]);
                kept
            });
    }
    let facts = scanner.finish();
    let body_type = match facts.rules() {
        r if r == BodyRules::SEVEN_BIT => BodyType::SevenBit,
        r if r == BodyRules::EIGHT_BIT_MIME => BodyType::EightBitMime,
        _ => BodyType::BinaryMime,
    };
    Ok(Prepared {
        name,
        head: rewritten,
        file: path.to_owned(),
        body_offset: end as u64,
        inline: inline.map(Arc::from),
        from,
        recipients,
        body_type,
        size: facts.encoded_size,
        spooled,
    })
}

/// Where the header section ends (after its blank line), if it does.
fn header_end(buf: &[u8]) -> Option<usize> {
    if buf.starts_with(b"\r\n") {
        return Some(2);
    }
    if buf.starts_with(b"\n") {
        return Some(1);
    }
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4);
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|p| p + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
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

/// Composes a message from `--subject`, `--body`, `--attach`, `--header`.
pub(crate) fn compose(
    from: &str,
    full_name: Option<&str>,
    to: &[String],
    subject: &str,
    body: &str,
    attachments: &[PathBuf],
    headers: &[String],
) -> Result<Vec<u8>, Failure> {
    let from_addr: mail_builder::headers::address::Address<'_> = match full_name {
        Some(n) => (n, from).into(),
        None => from.into(),
    };
    let to: Vec<&str> = to.iter().map(String::as_str).collect();
    let mut builder = mail_builder::MessageBuilder::new()
        .from(from_addr)
        .to(to)
        .subject(subject)
        .text_body(body);
    for h in headers {
        let (name, value) = h.split_once(':').ok_or_else(|| {
            Failure::usage(format!("--header {h:?}: write it as \"Name: value\""))
        })?;
        let name = name.trim();
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
            return Err(Failure::usage(format!(
                "--header {h:?}: {name:?} is not a header name"
            )));
        }
        if value.contains(['\r', '\n']) {
            return Err(Failure::usage(format!(
                "--header {name}: the value cannot hold line breaks"
            )));
        }
        builder = builder.header(
            name.to_owned(),
            mail_builder::headers::raw::Raw::new(value.trim().to_owned()),
        );
    }
    for path in attachments {
        let bytes = std::fs::read(path).map_err(|e| Failure::no_input(path, &e))?;
        let filename = path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_else(|| "attachment".into());
        builder = builder.attachment("application/octet-stream", filename, bytes);
    }
    builder
        .write_to_vec()
        .map_err(|e| Failure::io("cannot compose the message", &e))
}

/// The prepared header section, then the body: from memory when it is
/// small, else from the file, opened on the first read and closed at its
/// end (a session with thousands of messages holds one file at a time).
pub(crate) struct PreparedBody {
    head: Vec<u8>,
    pos: usize,
    inline: Option<Arc<[u8]>>,
    path: PathBuf,
    offset: u64,
    file: FileState,
}

enum FileState {
    NotOpened,
    Open(tokio::fs::File),
    Finished,
}

impl PreparedBody {
    pub(crate) fn new(p: &Prepared) -> Self {
        Self {
            head: p.head.clone(),
            pos: 0,
            inline: p.inline.clone(),
            path: p.file.clone(),
            offset: p.body_offset,
            file: FileState::NotOpened,
        }
    }
}

#[async_trait]
impl BodySource for PreparedBody {
    async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // The header section, then the kept body if there is one.
        let in_memory = match self.pos.checked_sub(self.head.len()) {
            None => self.head.get(self.pos..),
            Some(at) => self
                .inline
                .as_deref()
                .map(|b| b.get(at..).unwrap_or_default()),
        };
        if let Some(part) = in_memory {
            let n = part.len().min(buf.len());
            buf[..n].copy_from_slice(&part[..n]);
            self.pos += n;
            return Ok(n);
        }
        if let FileState::NotOpened = self.file {
            let mut f = tokio::fs::File::open(&self.path).await?;
            f.seek(io::SeekFrom::Start(self.offset)).await?;
            self.file = FileState::Open(f);
        }
        let FileState::Open(f) = &mut self.file else {
            return Ok(0);
        };
        let n = f.read(buf).await?;
        if n == 0 {
            self.file = FileState::Finished;
        }
        Ok(n)
    }

    async fn rewind(&mut self) -> io::Result<()> {
        self.pos = 0;
        self.file = FileState::NotOpened;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes `bytes` to a fresh file in the temporary directory.
    fn message_file(name: &str, bytes: &[u8]) -> PathBuf {
        let path = std::env::temp_dir().join(format!("smtp-cli-{}-{name}.eml", std::process::id()));
        std::fs::write(&path, bytes).unwrap();
        path
    }

    async fn read_all(body: &mut PreparedBody) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 1000];
        loop {
            let n = body.read(&mut buf).await.unwrap();
            if n == 0 {
                return out;
            }
            out.extend_from_slice(&buf[..n]);
        }
    }

    fn message(lines: usize) -> Vec<u8> {
        let mut m = b"From: a@example.org\r\nTo: b@example.net\r\nDate: Sun, 29 Nov 2026 02:00:00 +0000\r\nMessage-ID: <1@example.org>\r\n\r\n".to_vec();
        for n in 0..lines {
            m.extend_from_slice(format!("line {n:072}\r\n").as_bytes());
        }
        m
    }

    #[tokio::test]
    async fn a_small_body_is_sent_from_memory_and_again_after_rewind() {
        let bytes = message(10);
        let path = message_file("small", &bytes);
        let p = prepare(&path, "m".into(), false, false, "client.example").unwrap();
        assert!(p.inline.is_some());
        let mut body = PreparedBody::new(&p);
        // The file is not needed any more once prepared.
        std::fs::remove_file(&path).unwrap();
        assert_eq!(read_all(&mut body).await, bytes);
        body.rewind().await.unwrap();
        assert_eq!(read_all(&mut body).await, bytes);
    }

    #[tokio::test]
    async fn a_large_body_streams_from_its_file_and_closes_it_at_the_end() {
        let bytes = message(1000); // 80 KiB: above the inline limit
        let path = message_file("large", &bytes);
        let p = prepare(&path, "m".into(), false, false, "client.example").unwrap();
        assert!(p.inline.is_none());
        let mut body = PreparedBody::new(&p);
        assert_eq!(read_all(&mut body).await, bytes);
        assert!(
            matches!(body.file, FileState::Finished),
            "the file is closed"
        );
        assert_eq!(
            body.read(&mut [0u8; 10]).await.unwrap(),
            0,
            "and stays at its end"
        );
        body.rewind().await.unwrap();
        assert_eq!(read_all(&mut body).await, bytes);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn bcc_removed_with_continuations() {
        let head = b"From: a@x\r\nBcc: secret@x,\r\n  other@x\r\nTo: b@y\r\nbcc : c@z\r\nBccX: kept\r\n\r\n";
        assert_eq!(
            remove_header(head, b"bcc"),
            b"From: a@x\r\nTo: b@y\r\nBccX: kept\r\n\r\n"
        );
    }

    #[test]
    fn header_section_end() {
        assert_eq!(header_end(b"A: b\r\n\r\nbody"), Some(8));
        assert_eq!(header_end(b"A: b\n\nbody"), Some(6));
        assert_eq!(header_end(b"\r\nbody"), Some(2));
        assert_eq!(header_end(b"A: b\r\n"), None);
    }
}
