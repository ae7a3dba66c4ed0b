//! Messages with lines over SMTP's limit of 998 octets (RFC 5321
//! §4.5.3.1.6), made sendable without BINARYMIME where that keeps what
//! the recipient reads exactly the same:
//!
//! - a header field line too long is folded at its white space (RFC 5322
//!   §2.2.3); one without white space to fold at is refused;
//! - a part with a line too long is re-encoded: text as quoted-printable,
//!   anything else as base64 (RFC 2045 §6.7, §6.8); a part that already
//!   is quoted-printable or base64 is re-wrapped. Multipart bodies are
//!   walked ([`walk`]) and only the parts that need it change;
//! - a message that is signed is never changed: a DKIM-Signature (or
//!   ARC-Message-Signature) covers its header and body, multipart/signed
//!   and S/MIME cover their parts. It keeps needing BINARYMIME, and when
//!   the server lacks that, [`Prepared::binary_cause`] says why in plain
//!   words instead of the session's "needs BINARYMIME".
//!
//! The body is read twice more, only when a long line was found: once to
//! decide, once to write the result, into memory when the body was in
//! memory, else into a private [`Spool`]. The result is a snapshot: the
//! message file is checked to be the one scanned before and after.

mod encode;
mod header;
mod plan;
mod walk;

use std::io::{self, Write};
use std::sync::Arc;

use smtp_core::data::{BodyFacts, BodyScanner};

pub(crate) use header::HeadFacts;

use crate::fail::{EX_SOFTWARE, Failure};
use crate::identity::Identity;
use crate::message::{Body, Prepared, body_type, read_body};
use crate::spool::Spool;
use header::Fields;
use plan::{Cause, explain};
use walk::Walker;

/// SMTP's line limit, without CRLF.
const MAX_LINE: u64 = 998;

/// Re-encodes `p` where its lines are too long (`facts` from its scan,
/// `head` from reading its header section), or says why it cannot be.
pub(crate) fn long_lines(
    mut p: Prepared,
    head: HeadFacts,
    facts: &BodyFacts,
) -> Result<Prepared, Failure> {
    p.notes = head.changes;
    if facts.first_long_line.is_none() {
        return Ok(p);
    }
    let top = Fields::parse(&p.head);
    let first_line = head.lines + 1;
    let mut scratch = Vec::new();
    let mut walker = Walker::analyze(&top, first_line);
    read_body(&p.body, &p.name, |chunk| {
        walker.feed(chunk, &mut scratch);
        Ok(())
    })?;
    let analysis = walker.finish(&mut scratch);
    if let Some(field) = head.signature {
        let at = match (head.long, analysis.first_long) {
            (Some(h), _) => Some(h),
            (None, b) => b,
        };
        p.binary_cause = Some(explain(&p.name, at, &Cause::Dkim(field)));
        return Ok(p);
    }
    if let Some((line, len, part)) = &analysis.unfoldable {
        return Err(Failure::data(format!(
            "{}: line {line}, in the header of {part}, is {len} octets, over SMTP's 998 limit, \
             and has no white space to fold it at: shorten the header. Nothing was sent",
            p.name
        )));
    }
    if let Some((at, cause)) = &analysis.keep {
        p.binary_cause = Some(explain(&p.name, at.or(analysis.first_long), cause));
        return Ok(p);
    }
    rewrite(&mut p, &top, first_line, &analysis)?;
    p.notes.extend(analysis.changes);
    if analysis.more_changes > 0 {
        p.notes.push(format!("and {} more", analysis.more_changes));
    }
    Ok(p)
}

/// Where the rewritten body goes.
enum Sink {
    Memory(Vec<u8>),
    Spool(Spool, io::BufWriter<std::fs::File>),
}

impl Sink {
    fn write(&mut self, bytes: &[u8]) -> Result<(), Failure> {
        match self {
            Self::Memory(v) => {
                v.extend_from_slice(bytes);
                Ok(())
            }
            Self::Spool(_, w) => w
                .write_all(bytes)
                .map_err(|e| Failure::io("cannot spool the re-encoded message", &e)),
        }
    }
}

/// The second walk: writes the body with the planned parts re-encoded
/// and scans the result for `BODY=` and `SIZE=`.
fn rewrite(
    p: &mut Prepared,
    top: &Fields,
    first_line: u64,
    analysis: &plan::Analysis,
) -> Result<(), Failure> {
    let head = match analysis.top.and_then(encode::Action::declares) {
        Some(encoding) => retyped_head(&p.head, encoding, !top.mime_version),
        None => p.head.clone(),
    };
    let mut scanner = BodyScanner::new();
    scanner.scan(&head);
    let mut sink = match &p.body {
        Body::Memory(_) => Sink::Memory(Vec::new()),
        Body::File { .. } => {
            let (spool, file) = Spool::create()
                .map_err(|e| Failure::io("cannot spool the re-encoded message", &e))?;
            Sink::Spool(spool, io::BufWriter::new(file))
        }
    };
    let mut scratch = Vec::new();
    let mut walker = Walker::rewrite(top, first_line, &analysis.plan);
    read_body(&p.body, &p.name, |chunk| {
        walker.feed(chunk, &mut scratch);
        scanner.scan(&scratch);
        sink.write(&scratch)?;
        scratch.clear();
        Ok(())
    })?;
    let again = walker.finish(&mut scratch);
    scanner.scan(&scratch);
    sink.write(&scratch)?;
    let facts = scanner.finish();
    // The two walks see the same bytes, so they agree; and what they
    // wrote has no long line left.
    if again.plan != analysis.plan || again.keep.is_some() || facts.first_long_line.is_some() {
        return Err(Failure::new(
            EX_SOFTWARE,
            format!(
                "{}: internal error: re-encoding its long lines failed; nothing was sent",
                p.name
            ),
        ));
    }
    p.body = match sink {
        Sink::Memory(v) => Body::Memory(Arc::from(v)),
        Sink::Spool(spool, w) => {
            let file = w
                .into_inner()
                .map_err(|e| Failure::io("cannot spool the re-encoded message", e.error()))?;
            let identity = file
                .metadata()
                .map(|m| Identity::of(&m))
                .map_err(|e| Failure::io("cannot spool the re-encoded message", &e))?;
            Body::File {
                path: spool.path().to_owned(),
                offset: 0,
                identity,
                _spool: Some(Arc::new(spool)),
            }
        }
    };
    p.head = head;
    p.body_type = body_type(&facts);
    p.size = facts.encoded_size;
    Ok(())
}

/// The message's own header section with its Content-Transfer-Encoding
/// replaced (and MIME-Version added when `add_version`).
fn retyped_head(head: &[u8], encoding: &str, add_version: bool) -> Vec<u8> {
    let (lines, blank) = match head.strip_suffix(b"\r\n\r\n") {
        Some(lines) => (lines.len() + 2, true),
        None => (head.len(), false),
    };
    let mut out = Vec::with_capacity(head.len() + 64);
    header::write_section(&head[..lines], Some(encoding), add_version, &mut out);
    if blank {
        out.extend_from_slice(b"\r\n");
    }
    out
}

#[cfg(test)]
mod tests;
