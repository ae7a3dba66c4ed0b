//! The bounded, incremental reply parser.

use std::fmt;

use super::{EnhancedCode, Reply, ReplyCode, excerpt, sanitize};

/// The result of parsing input that may be incomplete.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status<T> {
    /// A complete item was parsed.
    Complete(T),
    /// More input is needed; this is not an error.
    Partial,
}

impl<T> Status<T> {
    /// Whether the item is complete.
    pub fn is_complete(&self) -> bool {
        matches!(self, Self::Complete(_))
    }

    /// Whether more input is needed.
    pub fn is_partial(&self) -> bool {
        matches!(self, Self::Partial)
    }
}

/// Bounds on what the server may send in one reply. Every bound also holds for a line or
/// reply that is still incomplete, so a server cannot make the client buffer without end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplyLimits {
    /// Longest line in bytes, counting its CRLF (or LF).
    pub max_line_len: usize,
    /// Largest reply in bytes, counting every line and line ending.
    pub max_reply_len: usize,
    /// Most lines in one reply.
    pub max_lines: usize,
}

impl Default for ReplyLimits {
    /// 8 KiB per line, 64 KiB per reply, 1000 lines.
    ///
    /// RFC 5321 §4.5.3.1.5 allows 512 octets per reply line, but real servers exceed it
    /// (long policy URLs in rejections, long EHLO lines) and §4.5.3.1 asks receivers to be
    /// liberal; 16 times that is generous yet small. The largest real replies (EHLO with a
    /// few dozen extensions, verbose multi-line rejections) stay under a few KiB, so 64 KiB is
    /// ample headroom while bounding memory per connection. 1000 lines bounds the per-line
    /// allocations of a reply made of many tiny lines (64 KiB of `250-` lines would be ~11000).
    fn default() -> Self {
        Self {
            max_line_len: 8 * 1024,
            max_reply_len: 64 * 1024,
            max_lines: 1000,
        }
    }
}

/// Why the server's bytes are not a valid reply. Every variant means the server misbehaved (or
/// is not an SMTP server); the connection should be dropped.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReplyError {
    /// A line is (or, still incomplete, already is) longer than the limit.
    LineTooLong {
        /// [`ReplyLimits::max_line_len`].
        limit: usize,
    },
    /// A reply is (or, still incomplete, already is) larger than the limit.
    ReplyTooLarge {
        /// [`ReplyLimits::max_reply_len`].
        limit: usize,
    },
    /// A reply has (or, still incomplete, will have) more lines than the limit.
    TooManyLines {
        /// [`ReplyLimits::max_lines`].
        limit: usize,
    },
    /// A line does not start with a valid three-digit reply code.
    InvalidCode {
        /// The line, sanitised and truncated to about 80 characters.
        line: String,
    },
    /// The lines of a multi-line reply carry different codes.
    InconsistentCode {
        /// The code of the first line.
        first: ReplyCode,
        /// The different code found on a later line.
        found: ReplyCode,
    },
    /// The code is followed by something other than a space, a hyphen or the line's end.
    InvalidSeparator {
        /// The line, sanitised and truncated to about 80 characters.
        line: String,
    },
}

impl fmt::Display for ReplyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::LineTooLong { limit } => write!(
                f,
                "the server sent a reply line longer than {limit} bytes; it is misbehaving or \
                 not an SMTP server (raise ReplyLimits::max_line_len if this server needs it)"
            ),
            Self::ReplyTooLarge { limit } => write!(
                f,
                "the server sent a reply larger than {limit} bytes; it is misbehaving or not an \
                 SMTP server (raise ReplyLimits::max_reply_len if this server needs it)"
            ),
            Self::TooManyLines { limit } => write!(
                f,
                "the server sent a reply of more than {limit} lines; it is misbehaving or not an \
                 SMTP server (raise ReplyLimits::max_lines if this server needs it)"
            ),
            Self::InvalidCode { line } => write!(
                f,
                "the server sent a line that does not start with a valid SMTP reply code: \
                 {line:?}; check that the host and port are those of an SMTP server and that \
                 TLS is used only where the port expects it (implicit TLS on 465, STARTTLS on \
                 25 and 587)"
            ),
            Self::InconsistentCode { first, found } => write!(
                f,
                "the server sent a multi-line reply whose lines carry different codes ({first}, \
                 then {found}); the server is misbehaving"
            ),
            Self::InvalidSeparator { line } => write!(
                f,
                "the server sent a reply line whose code is followed by neither a space nor a \
                 hyphen: {line:?}; the server is misbehaving"
            ),
        }
    }
}

impl std::error::Error for ReplyError {}

/// Parses one reply from the start of `buf`.
///
/// Returns [`Status::Partial`] while the reply is incomplete, or the number of bytes consumed
/// and the reply. Bytes after the reply (pipelined replies) are left alone. Stateless over the
/// buffer: the caller owns buffering, appends what it receives and calls again.
///
/// Each call scans the buffered reply from its start; the limits bound that work.
pub fn parse_reply(buf: &[u8], limits: &ReplyLimits) -> Result<Status<(usize, Reply)>, ReplyError> {
    let mut start = 0;
    let mut first: Option<ReplyCode> = None;
    let mut texts: Vec<&[u8]> = Vec::new();
    loop {
        let rest = buf.get(start..).unwrap_or_default();
        let Some(lf) = rest.iter().position(|&b| b == b'\n') else {
            check_incomplete(buf, rest, first, texts.len(), limits)?;
            return Ok(Status::Partial);
        };
        let line_len = lf + 1;
        if line_len > limits.max_line_len {
            return Err(ReplyError::LineTooLong {
                limit: limits.max_line_len,
            });
        }
        let end = start + line_len;
        if end > limits.max_reply_len {
            return Err(ReplyError::ReplyTooLarge {
                limit: limits.max_reply_len,
            });
        }
        if texts.len() >= limits.max_lines {
            return Err(ReplyError::TooManyLines {
                limit: limits.max_lines,
            });
        }
        let line = rest.get(..lf).unwrap_or_default();
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let (code, is_last, text) = split_line(line)?;
        let first_code = *first.get_or_insert(code);
        if code != first_code {
            return Err(ReplyError::InconsistentCode {
                first: first_code,
                found: code,
            });
        }
        texts.push(text);
        start = end;
        if is_last {
            return Ok(Status::Complete((end, build_reply(code, &texts))));
        }
    }
}

/// Splits a complete line (line ending removed) into code, "is the final line", and text.
fn split_line(line: &[u8]) -> Result<(ReplyCode, bool, &[u8]), ReplyError> {
    let code = line
        .get(..3)
        .and_then(ReplyCode::from_digits)
        .ok_or_else(|| ReplyError::InvalidCode {
            line: excerpt(line),
        })?;
    let text = line.get(4..).unwrap_or_default();
    match line.get(3) {
        None | Some(b' ') => Ok((code, true, text)),
        Some(b'-') => Ok((code, false, text)),
        Some(_) => Err(ReplyError::InvalidSeparator {
            line: excerpt(line),
        }),
    }
}

/// Checks an incomplete reply: `rest` is the unfinished last line, `lines` the number of
/// complete (continuation) lines before it. Fails as soon as the reply can no longer become
/// valid, so a misbehaving server is caught without waiting for more bytes.
fn check_incomplete(
    buf: &[u8],
    rest: &[u8],
    first: Option<ReplyCode>,
    lines: usize,
    limits: &ReplyLimits,
) -> Result<(), ReplyError> {
    if buf.is_empty() {
        return Ok(());
    }
    // The unfinished line still needs at least its LF, the reply at least one more byte and,
    // since every complete line so far was a continuation, at least one more line.
    if rest.len() >= limits.max_line_len {
        return Err(ReplyError::LineTooLong {
            limit: limits.max_line_len,
        });
    }
    if buf.len() >= limits.max_reply_len {
        return Err(ReplyError::ReplyTooLarge {
            limit: limits.max_reply_len,
        });
    }
    if lines >= limits.max_lines {
        return Err(ReplyError::TooManyLines {
            limit: limits.max_lines,
        });
    }
    // Reject a line whose start already cannot be a valid reply line.
    let valid_digits = rest
        .iter()
        .zip([b'2'..=b'5', b'0'..=b'5', b'0'..=b'9'])
        .all(|(b, range)| range.contains(b));
    if !valid_digits {
        return Err(ReplyError::InvalidCode {
            line: excerpt(rest),
        });
    }
    if let (Some(code), Some(first)) = (rest.get(..3).and_then(ReplyCode::from_digits), first)
        && code != first
    {
        return Err(ReplyError::InconsistentCode { first, found: code });
    }
    // A CR right after the code may be the start of the CRLF; anything after it may not.
    match (rest.get(3), rest.len()) {
        (None | Some(b' ' | b'-'), _) | (Some(b'\r'), 4) => Ok(()),
        (Some(_), _) => Err(ReplyError::InvalidSeparator {
            line: excerpt(rest),
        }),
    }
}

/// Builds the reply from the raw text of its lines, extracting the enhanced status code.
fn build_reply(code: ReplyCode, texts: &[&[u8]]) -> Reply {
    let enhanced = texts
        .first()
        .and_then(|text| enhanced_prefix(text))
        .filter(|(enhanced, _)| enhanced.class == code.class())
        .map(|(enhanced, _)| enhanced);
    let lines = texts
        .iter()
        .map(|&text| {
            let text = match (enhanced, enhanced_prefix(text)) {
                (Some(wanted), Some((found, len))) if wanted == found => {
                    text.get(len..).unwrap_or_default()
                }
                _ => text,
            };
            sanitize(&String::from_utf8_lossy(text))
        })
        .collect();
    Reply {
        code,
        enhanced,
        lines,
    }
}

/// An enhanced code at the start of reply text, followed by a space or the end of the line
/// (RFC 2034 §4); the length includes that space.
fn enhanced_prefix(text: &[u8]) -> Option<(EnhancedCode, usize)> {
    let (enhanced, len) = EnhancedCode::parse_prefix(text)?;
    match text.get(len) {
        None => Some((enhanced, len)),
        Some(b' ') => Some((enhanced, len + 1)),
        Some(_) => None,
    }
}
