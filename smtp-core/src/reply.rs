//! SMTP replies: reply codes, enhanced status codes and a bounded, incremental reply parser.
//!
//! Follows RFC 5321 §4.2 (reply syntax, multi-line replies), §4.2.1 (code digits) and
//! §4.5.3.1.5 (reply line length), RFC 3463 (enhanced status codes `class.subject.detail`)
//! as carried at the start of reply text per RFC 2034.
//!
//! [`parse_reply`] works like httparse: it looks at a buffer the caller owns, returns
//! [`Status::Partial`] while a reply is incomplete (never an error), and on success says how
//! many bytes the reply took. It keeps no state, so the caller can pipeline: after a complete
//! reply, drop the consumed bytes and call it again for the next one.
//!
//! Robustness rules: a bare LF ends a line as well as CRLF (sloppy servers exist); every line,
//! every reply and the number of lines are bounded by [`ReplyLimits`] even while the line or reply
//! is still incomplete, so a server can never make the caller buffer without end; text that is
//! not UTF-8 is converted lossily and control characters (except TAB) become U+FFFD, so reply
//! text is safe to print on a terminal. The parser never panics.

use std::fmt;
use std::str::FromStr;

/// A three-digit reply code, first digit 2..=5, second 0..=5, third 0..=9 (RFC 5321 §4.2.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReplyCode(u16);

impl ReplyCode {
    /// 211 System status, or system help reply.
    pub const SYSTEM_STATUS: Self = Self(211);
    /// 214 Help message.
    pub const HELP: Self = Self(214);
    /// 220 Service ready: the greeting, and the answer to STARTTLS (RFC 3207).
    pub const SERVICE_READY: Self = Self(220);
    /// 221 Service closing transmission channel: the answer to QUIT.
    pub const CLOSING: Self = Self(221);
    /// 235 Authentication succeeded (RFC 4954).
    pub const AUTH_SUCCESS: Self = Self(235);
    /// 250 Requested mail action okay, completed.
    pub const OK: Self = Self(250);
    /// 251 User not local; will forward.
    pub const USER_NOT_LOCAL_WILL_FORWARD: Self = Self(251);
    /// 252 Cannot VRFY user, but will accept message and attempt delivery.
    pub const CANNOT_VERIFY: Self = Self(252);
    /// 334 Server challenge during AUTH (RFC 4954).
    pub const AUTH_CONTINUE: Self = Self(334);
    /// 354 Start mail input; end with `<CRLF>.<CRLF>`.
    pub const START_MAIL_INPUT: Self = Self(354);
    /// 421 Service not available, closing transmission channel.
    pub const SERVICE_NOT_AVAILABLE: Self = Self(421);
    /// 432 A password transition is needed (RFC 4954).
    pub const PASSWORD_TRANSITION_NEEDED: Self = Self(432);
    /// 450 Mailbox unavailable (busy or temporarily blocked).
    pub const MAILBOX_BUSY: Self = Self(450);
    /// 451 Requested action aborted: local error in processing.
    pub const LOCAL_ERROR: Self = Self(451);
    /// 452 Insufficient system storage (also "too many recipients", RFC 5321 §4.5.3.1.10).
    pub const INSUFFICIENT_STORAGE: Self = Self(452);
    /// 454 TLS not available due to temporary reason (RFC 3207).
    pub const TLS_NOT_AVAILABLE: Self = Self(454);
    /// 454 Temporary authentication failure (RFC 4954); same number as
    /// [`TLS_NOT_AVAILABLE`](Self::TLS_NOT_AVAILABLE), the command tells them apart.
    pub const AUTH_TEMPORARY_FAILURE: Self = Self(454);
    /// 455 Server unable to accommodate parameters.
    pub const PARAMETERS_NOT_ACCOMMODATED: Self = Self(455);
    /// 500 Syntax error, command unrecognized (also: line too long).
    pub const SYNTAX_ERROR: Self = Self(500);
    /// 501 Syntax error in parameters or arguments.
    pub const PARAMETER_SYNTAX_ERROR: Self = Self(501);
    /// 502 Command not implemented.
    pub const COMMAND_NOT_IMPLEMENTED: Self = Self(502);
    /// 503 Bad sequence of commands.
    pub const BAD_SEQUENCE: Self = Self(503);
    /// 504 Command parameter not implemented.
    pub const PARAMETER_NOT_IMPLEMENTED: Self = Self(504);
    /// 530 Authentication required (RFC 4954); also "must issue STARTTLS first" (RFC 3207).
    pub const AUTH_REQUIRED: Self = Self(530);
    /// 534 Authentication mechanism is too weak (RFC 4954).
    pub const AUTH_MECHANISM_TOO_WEAK: Self = Self(534);
    /// 535 Authentication credentials invalid (RFC 4954).
    pub const AUTH_CREDENTIALS_INVALID: Self = Self(535);
    /// 538 Encryption required for requested authentication mechanism (RFC 4954).
    pub const ENCRYPTION_REQUIRED: Self = Self(538);
    /// 550 Mailbox unavailable (not found, no access, or rejected for policy reasons).
    pub const MAILBOX_UNAVAILABLE: Self = Self(550);
    /// 551 User not local.
    pub const USER_NOT_LOCAL: Self = Self(551);
    /// 552 Exceeded storage allocation (also: message too big, RFC 1870).
    pub const EXCEEDED_STORAGE: Self = Self(552);
    /// 553 Mailbox name not allowed.
    pub const MAILBOX_NAME_NOT_ALLOWED: Self = Self(553);
    /// 554 Transaction failed (or, as a greeting, "no SMTP service here").
    pub const TRANSACTION_FAILED: Self = Self(554);
    /// 555 MAIL FROM/RCPT TO parameters not recognized or not implemented.
    pub const PARAMETERS_NOT_RECOGNIZED: Self = Self(555);

    /// Returns the code if its digits are valid: first 2..=5, second 0..=5, third 0..=9.
    pub const fn new(code: u16) -> Option<Self> {
        if code >= 200 && code <= 599 && (code / 10) % 10 <= 5 {
            Some(Self(code))
        } else {
            None
        }
    }

    /// The code as a number, e.g. `250`.
    pub const fn as_u16(self) -> u16 {
        self.0
    }

    /// The first digit of the code: 2, 3, 4 or 5.
    pub const fn class(self) -> u8 {
        // The constructor keeps the value in 200..=599, so this is 2..=5 and fits in u8.
        (self.0 / 100) as u8
    }

    /// What the first digit says about the outcome.
    pub const fn severity(self) -> Severity {
        match self.0 / 100 {
            2 => Severity::PositiveCompletion,
            3 => Severity::PositiveIntermediate,
            4 => Severity::TransientNegative,
            _ => Severity::PermanentNegative,
        }
    }

    /// 2xx: the command succeeded.
    pub const fn is_positive(self) -> bool {
        self.0 / 100 == 2
    }

    /// 3xx: the server waits for more (DATA content, an AUTH response).
    pub const fn is_intermediate(self) -> bool {
        self.0 / 100 == 3
    }

    /// 4xx: failed for now; the same command may succeed later.
    pub const fn is_transient(self) -> bool {
        self.0 / 100 == 4
    }

    /// 5xx: failed; repeating the same command will fail again.
    pub const fn is_permanent(self) -> bool {
        self.0 / 100 == 5
    }

    /// Parses the three code digits at the start of a line.
    fn from_digits(digits: &[u8]) -> Option<Self> {
        match digits {
            [a, b, c] if a.is_ascii_digit() && b.is_ascii_digit() && c.is_ascii_digit() => {
                Self::new(
                    u16::from(a - b'0') * 100 + u16::from(b - b'0') * 10 + u16::from(c - b'0'),
                )
            }
            _ => None,
        }
    }
}

impl fmt::Display for ReplyCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The meaning of a reply code's first digit (RFC 5321 §4.2.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Severity {
    /// 2yz: the requested action was completed.
    PositiveCompletion,
    /// 3yz: accepted, the server waits for further information.
    PositiveIntermediate,
    /// 4yz: not done, but the condition is temporary; try again later.
    TransientNegative,
    /// 5yz: not done, and repeating it will not help.
    PermanentNegative,
}

/// An RFC 3463 enhanced status code `class.subject.detail`, e.g. `5.1.1`.
///
/// The class is 2, 4 or 5; subject and detail are 0..=999.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EnhancedCode {
    /// 2 (success), 4 (persistent transient failure) or 5 (permanent failure).
    pub class: u8,
    /// What the code is about: 1 addressing, 2 mailbox, 3 mail system, 4 network and routing,
    /// 5 mail delivery protocol, 6 message content, 7 security or policy.
    pub subject: u16,
    /// The detail within the subject.
    pub detail: u16,
}

impl EnhancedCode {
    /// Returns the code if the class is 2, 4 or 5 and subject and detail are at most 999.
    pub const fn new(class: u8, subject: u16, detail: u16) -> Option<Self> {
        if matches!(class, 2 | 4 | 5) && subject <= 999 && detail <= 999 {
            Some(Self {
                class,
                subject,
                detail,
            })
        } else {
            None
        }
    }

    /// Parses an enhanced code at the start of `text`; returns it and the bytes it took.
    ///
    /// RFC 3463: `class "." subject "." detail`, class one digit, subject and detail 1–3 digits.
    fn parse_prefix(text: &[u8]) -> Option<(Self, usize)> {
        let mut pos = 0;
        let class = take_digits(text, &mut pos, 1)?;
        take_dot(text, &mut pos)?;
        let subject = take_digits(text, &mut pos, 3)?;
        take_dot(text, &mut pos)?;
        let detail = take_digits(text, &mut pos, 3)?;
        let class = u8::try_from(class).ok()?;
        Self::new(class, subject, detail).map(|code| (code, pos))
    }
}

/// Reads 1..=`max` ASCII digits at `*pos`; fails on none or on more than `max`.
fn take_digits(text: &[u8], pos: &mut usize, max: usize) -> Option<u16> {
    let start = *pos;
    let mut value: u16 = 0;
    while let Some(&b) = text.get(*pos) {
        if !b.is_ascii_digit() {
            break;
        }
        if *pos - start == max {
            return None;
        }
        // At most 3 digits, so at most 999: no overflow.
        value = value * 10 + u16::from(b - b'0');
        *pos += 1;
    }
    (*pos > start).then_some(value)
}

fn take_dot(text: &[u8], pos: &mut usize) -> Option<()> {
    if text.get(*pos) != Some(&b'.') {
        return None;
    }
    *pos += 1;
    Some(())
}

impl fmt::Display for EnhancedCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.class, self.subject, self.detail)
    }
}

impl FromStr for EnhancedCode {
    type Err = EnhancedCodeError;

    /// Parses exactly `class.subject.detail`, with nothing before or after.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match Self::parse_prefix(s.as_bytes()) {
            Some((code, len)) if len == s.len() => Ok(code),
            _ => Err(EnhancedCodeError::Malformed {
                input: excerpt(s.as_bytes()),
            }),
        }
    }
}

/// Why a string is not an [`EnhancedCode`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EnhancedCodeError {
    /// Not of the form `class.subject.detail` with class 2, 4 or 5 and 1–3 digit numbers.
    Malformed {
        /// The input, sanitised and truncated.
        input: String,
    },
}

impl fmt::Display for EnhancedCodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Malformed { input } => write!(
                f,
                "{input:?} is not an enhanced status code: expected class.subject.detail \
                 such as 5.1.1, with class 2, 4 or 5 and subject and detail of 1 to 3 digits"
            ),
        }
    }
}

impl std::error::Error for EnhancedCodeError {}

/// One complete reply: a code, an optional enhanced status code and one or more lines of text.
///
/// Invariants: there is at least one line, and no line contains a control character other
/// than TAB (so the text is safe to print and [`Display`](fmt::Display) is unambiguous).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    code: ReplyCode,
    enhanced: Option<EnhancedCode>,
    lines: Vec<String>,
}

impl Reply {
    /// Builds a reply. `lines` is the text of each line without code, separator or enhanced
    /// code. Control characters other than TAB are replaced with U+FFFD; an empty `lines`
    /// becomes one empty line.
    pub fn new(code: ReplyCode, enhanced: Option<EnhancedCode>, lines: Vec<String>) -> Self {
        let mut lines: Vec<String> = lines.iter().map(|line| sanitize(line)).collect();
        if lines.is_empty() {
            lines.push(String::new());
        }
        Self {
            code,
            enhanced,
            lines,
        }
    }

    /// The reply code.
    pub fn code(&self) -> ReplyCode {
        self.code
    }

    /// `530`: the server wants AUTH before this command (RFC 4954 §6). It
    /// refuses the session's missing credentials, not a recipient.
    pub fn is_authentication_required(&self) -> bool {
        self.code.as_u16() == 530
    }

    /// The enhanced status code, if the first line carried one whose class matches the code.
    pub fn enhanced_code(&self) -> Option<EnhancedCode> {
        self.enhanced
    }

    /// The text of each line: code, separator and (if parsed) the enhanced code removed.
    pub fn lines(&self) -> &[String] {
        &self.lines
    }

    /// All lines' text joined with `"\n"`.
    pub fn text(&self) -> String {
        self.lines.join("\n")
    }

    /// The text of the first line (for a greeting or EHLO reply: the server's domain first).
    pub fn first_line(&self) -> &str {
        self.lines.first().map_or("", String::as_str)
    }

    /// The reply as a server sends it: every line `CODE-text` / `CODE text` ending in CRLF,
    /// the enhanced code (if any) repeated at the start of every line's text.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = self.render(&mut out, "\r\n", true);
        out.into_bytes()
    }

    fn render(&self, out: &mut impl fmt::Write, eol: &str, eol_at_end: bool) -> fmt::Result {
        let last = self.lines.len().saturating_sub(1);
        for (i, line) in self.lines.iter().enumerate() {
            let sep = if i == last { ' ' } else { '-' };
            write!(out, "{}", self.code)?;
            match (self.enhanced, line.is_empty()) {
                (Some(enhanced), true) => write!(out, "{sep}{enhanced}")?,
                (Some(enhanced), false) => write!(out, "{sep}{enhanced} {line}")?,
                // RFC 5321 §4.2: the final line's text (and its space) is optional.
                (None, true) if i == last => {}
                (None, _) => write!(out, "{sep}{line}")?,
            }
            if i != last || eol_at_end {
                out.write_str(eol)?;
            }
        }
        Ok(())
    }
}

impl fmt::Display for Reply {
    /// `550 5.1.1 No such user`; a multi-line reply as `250-...` lines and a final `250 ...`
    /// line, joined with `"\n"`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.render(f, "\n", false)
    }
}

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
    if let (Some(code), Some(first)) = (rest.get(..3).and_then(ReplyCode::from_digits), first) {
        if code != first {
            return Err(ReplyError::InconsistentCode { first, found: code });
        }
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

/// Replaces characters that must never reach a terminal with U+FFFD: control characters
/// other than TAB (C0, DEL, C1: they could move the cursor or inject escape sequences) and
/// the bidirectional formatting characters (they reorder what is displayed).
fn sanitize(text: &str) -> String {
    text.chars()
        .map(|c| {
            let bidi = matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}');
            if (c.is_control() && c != '\t') || bidi {
                char::REPLACEMENT_CHARACTER
            } else {
                c
            }
        })
        .collect()
}

/// A sanitised excerpt of raw bytes for an error message: at most 80 characters.
fn excerpt(bytes: &[u8]) -> String {
    const MAX_CHARS: usize = 80;
    // 4 bytes per character at most, so this slice holds enough for MAX_CHARS.
    let head = bytes.get(..MAX_CHARS * 4).unwrap_or(bytes);
    let text = sanitize(&String::from_utf8_lossy(head));
    let mut out: String = text.chars().take(MAX_CHARS).collect();
    if out.len() < text.len() || head.len() < bytes.len() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn code(n: u16) -> ReplyCode {
        // Test inputs are valid codes.
        ReplyCode::new(n).unwrap()
    }

    fn reply(n: u16, enhanced: Option<&str>, lines: &[&str]) -> Reply {
        Reply::new(
            code(n),
            enhanced.map(|e| e.parse().unwrap()),
            lines.iter().map(|&l| l.to_owned()).collect(),
        )
    }

    fn parse(input: &[u8]) -> Result<Status<(usize, Reply)>, ReplyError> {
        parse_reply(input, &ReplyLimits::default())
    }

    use Expect::{Partial, Reply as R};

    enum Expect {
        /// Complete, consuming the whole input.
        Reply(u16, Option<&'static str>, &'static [&'static str]),
        Partial,
        Err(ReplyError),
    }

    fn check(input: &str, expect: Expect) {
        let got = parse(input.as_bytes());
        let want = match expect {
            R(n, enhanced, lines) => Ok(Status::Complete((input.len(), reply(n, enhanced, lines)))),
            Partial => Ok(Status::Partial),
            Expect::Err(e) => Err(e),
        };
        assert_eq!(got, want, "input {input:?}");
    }

    macro_rules! vectors {
        ($($name:ident: $input:expr => $expect:expr;)*) => {
            $(#[test] fn $name() { check($input, $expect); })*
        };
    }

    fn invalid_code(line: &str) -> Expect {
        Expect::Err(ReplyError::InvalidCode { line: line.into() })
    }
    fn invalid_sep(line: &str) -> Expect {
        Expect::Err(ReplyError::InvalidSeparator { line: line.into() })
    }
    fn inconsistent(first: u16, found: u16) -> Expect {
        Expect::Err(ReplyError::InconsistentCode {
            first: code(first),
            found: code(found),
        })
    }

    vectors! {
        single: "250 OK\r\n" => R(250, None, &["OK"]);
        single_bare_lf: "250 OK\n" => R(250, None, &["OK"]);
        bare_code: "250\r\n" => R(250, None, &[""]);
        bare_code_space: "250 \r\n" => R(250, None, &[""]);
        keeps_inner_spaces: "250  two  spaces \r\n" => R(250, None, &[" two  spaces "]);
        multi: "250-a\r\n250-b\r\n250 c\r\n" => R(250, None, &["a", "b", "c"]);
        multi_mixed_endings: "250-a\n250-b\r\n250 c\n" => R(250, None, &["a", "b", "c"]);
        multi_empty_continuation: "250-\r\n250 x\r\n" => R(250, None, &["", "x"]);
        multi_bare_last: "250-x\r\n250\r\n" => R(250, None, &["x", ""]);
        enhanced: "550 5.1.1 No such user\r\n" => R(550, Some("5.1.1"), &["No such user"]);
        enhanced_alone: "250 2.0.0\r\n" => R(250, Some("2.0.0"), &[""]);
        enhanced_three_digits: "550 5.7.133 x\r\n" => R(550, Some("5.7.133"), &["x"]);
        enhanced_multi: "550-5.7.1 Blocked\r\n550-5.7.1 see https://x\r\n550 5.7.1 bye\r\n"
            => R(550, Some("5.7.1"), &["Blocked", "see https://x", "bye"]);
        enhanced_first_line_only: "450-4.2.0 Busy\r\n450 try later\r\n"
            => R(450, Some("4.2.0"), &["Busy", "try later"]);
        enhanced_other_code_kept: "550-5.7.1 a\r\n550 5.1.1 b\r\n"
            => R(550, Some("5.7.1"), &["a", "5.1.1 b"]);
        enhanced_class_mismatch: "250 5.1.1 odd\r\n" => R(250, None, &["5.1.1 odd"]);
        enhanced_not_on_3xx: "354 3.0.0 go\r\n" => R(354, None, &["3.0.0 go"]);
        enhanced_needs_space: "250 2.0.0ok\r\n" => R(250, None, &["2.0.0ok"]);
        enhanced_too_many_digits: "250 2.0.1000 x\r\n" => R(250, None, &["2.0.1000 x"]);
        enhanced_only_later_line: "250-hi\r\n250 2.0.0 x\r\n" => R(250, None, &["hi", "2.0.0 x"]);
        control_chars: "250 a\x1b[31mb\tc\x7f\r\n" => R(250, None, &["a\u{FFFD}[31mb\tc\u{FFFD}"]);
        inner_cr: "250 a\rb\r\n" => R(250, None, &["a\u{FFFD}b"]);
        double_cr: "250 a\r\r\n" => R(250, None, &["a\u{FFFD}"]);
        bidi_override: "250 a\u{202E}b\r\n" => R(250, None, &["a\u{FFFD}b"]);
        utf8_kept: "250 Grüße\r\n" => R(250, None, &["Grüße"]);
        empty: "" => Partial;
        partial_code: "25" => Partial;
        partial_line: "250 OK" => Partial;
        partial_cr: "250 OK\r" => Partial;
        partial_bare_code_cr: "250\r" => Partial;
        partial_multi: "250-a\r\n" => Partial;
        partial_multi_next: "250-a\r\n250" => Partial;
        invalid_letters: "ABC hello\r\n" => invalid_code("ABC hello");
        invalid_first_digit: "650 x\r\n" => invalid_code("650 x");
        invalid_first_digit_1: "150 x\r\n" => invalid_code("150 x");
        invalid_second_digit: "260 x\r\n" => invalid_code("260 x");
        invalid_short: "25\r\n" => invalid_code("25");
        invalid_empty_line: "\r\n" => invalid_code("");
        invalid_http: "HTTP/1.1 400 Bad Request\r\n" => invalid_code("HTTP/1.1 400 Bad Request");
        invalid_separator: "250_x\r\n" => invalid_sep("250_x");
        invalid_separator_tab: "250\tx\r\n" => invalid_sep("250\tx");
        invalid_four_digits: "2500 x\r\n" => invalid_sep("2500 x");
        inconsistent_codes: "250-a\r\n251 b\r\n" => inconsistent(250, 251);
        early_invalid_first_byte: "\x16\x03\x01" => invalid_code("\u{FFFD}\u{FFFD}\u{FFFD}");
        early_invalid_code: "2x" => invalid_code("2x");
        early_inconsistent: "250-a\r\n251" => inconsistent(250, 251);
        early_invalid_separator: "250x" => invalid_sep("250x");
        early_cr_not_last: "250\rx" => invalid_sep("250\u{FFFD}x");
        // RFC 5321 Appendix D, server side of the transcripts.
        d1_greeting: "220 foo.com Simple Mail Transfer Service Ready\r\n"
            => R(220, None, &["foo.com Simple Mail Transfer Service Ready"]);
        d1_ehlo: "250-foo.com greets bar.com\r\n250-8BITMIME\r\n250-SIZE\r\n250-DSN\r\n250 HELP\r\n"
            => R(250, None, &["foo.com greets bar.com", "8BITMIME", "SIZE", "DSN", "HELP"]);
        d1_ok: "250 OK\r\n" => R(250, None, &["OK"]);
        d1_no_such_user: "550 No such user here\r\n" => R(550, None, &["No such user here"]);
        d1_data: "354 Start mail input; end with <CRLF>.<CRLF>\r\n"
            => R(354, None, &["Start mail input; end with <CRLF>.<CRLF>"]);
        d1_closing: "221 foo.com Service closing transmission channel\r\n"
            => R(221, None, &["foo.com Service closing transmission channel"]);
        d2_forward: "251 User not local; will forward to <Postmaster@bar.org>\r\n"
            => R(251, None, &["User not local; will forward to <Postmaster@bar.org>"]);
        d3_ambiguous: "553 User ambiguous\r\n" => R(553, None, &["User ambiguous"]);
        d4_verify: "250 Fred Smith <Smith@bar.com>\r\n" => R(250, None, &["Fred Smith <Smith@bar.com>"]);
        rfc2034_example: "250 2.1.5 Destination address valid\r\n"
            => R(250, Some("2.1.5"), &["Destination address valid"]);
        gmail_style: "550-5.1.1 The email account that you tried to reach does not exist.\r\n\
                      550 5.1.1  https://support.google.com/mail/?p=NoSuchUser x\r\n"
            => R(550, Some("5.1.1"), &[
                "The email account that you tried to reach does not exist.",
                " https://support.google.com/mail/?p=NoSuchUser x",
            ]);
    }

    #[test]
    fn consumes_only_the_first_reply() {
        let input = b"250-a\r\n250 b\r\n354 go\r\n";
        let Ok(Status::Complete((n, first))) = parse(input) else {
            panic!("expected a complete reply");
        };
        assert_eq!(n, 14);
        assert_eq!(first, reply(250, None, &["a", "b"]));
        assert_eq!(
            parse(&input[n..]),
            Ok(Status::Complete((8, reply(354, None, &["go"]))))
        );
        // The next reply's contents are not checked while parsing the first one.
        assert!(parse(b"250 a\r\nGARBAGE").unwrap().is_complete());
    }

    #[test]
    fn non_utf8_is_lossy() {
        let Ok(Status::Complete((_, r))) = parse(b"250 a\xff\xfeb\r\n") else {
            panic!("expected a complete reply");
        };
        assert_eq!(r.lines(), ["a\u{FFFD}\u{FFFD}b"]);
    }

    #[test]
    fn accessors_and_display() {
        let r = reply(550, Some("5.1.1"), &["No such user"]);
        assert_eq!(r.code(), ReplyCode::MAILBOX_UNAVAILABLE);
        assert_eq!(r.enhanced_code(), EnhancedCode::new(5, 1, 1));
        assert_eq!(r.first_line(), "No such user");
        assert_eq!(r.to_string(), "550 5.1.1 No such user");
        assert_eq!(r.to_bytes(), b"550 5.1.1 No such user\r\n");

        let r = reply(250, None, &["foo.com greets bar.com", "8BITMIME", "HELP"]);
        assert_eq!(r.text(), "foo.com greets bar.com\n8BITMIME\nHELP");
        assert_eq!(r.first_line(), "foo.com greets bar.com");
        assert_eq!(
            r.to_string(),
            "250-foo.com greets bar.com\n250-8BITMIME\n250 HELP"
        );

        let r = reply(450, Some("4.2.0"), &["a", ""]);
        assert_eq!(r.to_string(), "450-4.2.0 a\n450 4.2.0");
        assert_eq!(reply(250, None, &["", ""]).to_string(), "250-\n250");
        assert_eq!(reply(221, None, &[]).lines(), [""]);
        assert_eq!(reply(221, None, &[]).to_string(), "221");
        // Lines given to new() are sanitised too, so Display cannot be forged.
        let forged = reply(250, None, &["ok\r\n550 fake"]);
        assert_eq!(forged.to_string(), "250 ok\u{FFFD}\u{FFFD}550 fake");
    }

    #[test]
    fn reply_code() {
        for n in [0, 1, 99, 100, 199, 260, 299, 599, 600, 999, 1000, u16::MAX] {
            assert_eq!(ReplyCode::new(n), None, "{n}");
        }
        for n in [200, 259, 354, 421, 559] {
            assert_eq!(ReplyCode::new(n).map(ReplyCode::as_u16), Some(n));
        }
        let cases = [
            (220, Severity::PositiveCompletion),
            (334, Severity::PositiveIntermediate),
            (421, Severity::TransientNegative),
            (554, Severity::PermanentNegative),
        ];
        for (n, severity) in cases {
            let c = code(n);
            assert_eq!(c.severity(), severity);
            assert_eq!(c.is_positive(), n / 100 == 2);
            assert_eq!(c.is_intermediate(), n / 100 == 3);
            assert_eq!(c.is_transient(), n / 100 == 4);
            assert_eq!(c.is_permanent(), n / 100 == 5);
            assert_eq!(usize::from(c.class()), usize::from(n / 100));
        }
        assert_eq!(ReplyCode::OK.to_string(), "250");
        assert_eq!(ReplyCode::START_MAIL_INPUT.as_u16(), 354);
        assert!(ReplyCode::OK < ReplyCode::SERVICE_NOT_AVAILABLE);
    }

    #[test]
    fn enhanced_code_from_str() {
        assert_eq!("5.1.1".parse(), Ok(EnhancedCode::new(5, 1, 1).unwrap()));
        assert_eq!(
            "2.0.0".parse::<EnhancedCode>().unwrap().to_string(),
            "2.0.0"
        );
        assert_eq!(
            "4.999.007".parse::<EnhancedCode>().unwrap().to_string(),
            "4.999.7"
        );
        for bad in [
            "", "5", "5.1", "5.1.", "5..1", ".1.1", "3.1.1", "1.1.1", "55.1.1", "5.1000.1",
            "5.1.1000", "5.1.1 ", " 5.1.1", "5.1.1.1", "5.a.1", "x",
        ] {
            let err = bad.parse::<EnhancedCode>().unwrap_err();
            assert_eq!(
                err,
                EnhancedCodeError::Malformed { input: bad.into() },
                "{bad:?}"
            );
        }
        assert_eq!(EnhancedCode::new(3, 0, 0), None);
        assert_eq!(EnhancedCode::new(5, 1000, 0), None);
        assert_eq!(EnhancedCode::new(5, 0, 1000), None);
    }

    #[test]
    fn error_line_is_truncated_and_sanitised() {
        let mut line = b"XYZ \x1b[2J".to_vec();
        line.extend(std::iter::repeat_n(b'a', 500));
        line.extend(b"\r\n");
        let Err(ReplyError::InvalidCode { line }) = parse(&line) else {
            panic!("expected InvalidCode");
        };
        assert_eq!(line.chars().count(), 81);
        assert!(line.starts_with("XYZ \u{FFFD}[2J"));
        assert!(line.ends_with('…'));
        let msg = ReplyError::InvalidCode { line }.to_string();
        assert!(msg.contains("SMTP reply code"), "{msg}");
    }

    #[test]
    fn line_too_long_without_lf() {
        let input = vec![b'2'; 100_000];
        let limit = ReplyLimits::default().max_line_len;
        assert_eq!(parse(&input), Err(ReplyError::LineTooLong { limit }));
        // Caught as soon as the line can no longer fit, not later.
        let mut input = b"250 ".to_vec();
        input.resize(limit - 1, b'x');
        assert_eq!(parse(&input), Ok(Status::Partial));
        input.push(b'\n');
        assert!(parse(&input).unwrap().is_complete());
        input.pop();
        input.push(b'x');
        assert_eq!(parse(&input), Err(ReplyError::LineTooLong { limit }));
        // A complete line one byte too long.
        input.push(b'\n');
        assert_eq!(parse(&input), Err(ReplyError::LineTooLong { limit }));
    }

    #[test]
    fn endless_continuation_lines() {
        let stream: Vec<u8> = b"250-x\r\n".repeat(20_000);
        let limits = ReplyLimits::default();
        assert_eq!(
            parse_reply(&stream, &limits),
            Err(ReplyError::TooManyLines { limit: 1000 })
        );
        let many_lines = ReplyLimits {
            max_lines: usize::MAX,
            ..limits
        };
        assert_eq!(
            parse_reply(&stream, &many_lines),
            Err(ReplyError::ReplyTooLarge { limit: 64 * 1024 })
        );
        // Exactly at the bounds is fine; one more line or byte is not.
        let exact = [b"250-x\r\n".repeat(2), b"250 x\r\n".to_vec()].concat();
        let tight = ReplyLimits {
            max_line_len: 7,
            max_reply_len: 21,
            max_lines: 3,
        };
        assert!(parse_reply(&exact, &tight).unwrap().is_complete());
        let three = b"250-x\r\n".repeat(3);
        assert_eq!(
            parse_reply(&three, &tight),
            Err(ReplyError::ReplyTooLarge { limit: 21 })
        );
        let roomy = ReplyLimits {
            max_reply_len: 100,
            ..tight
        };
        assert_eq!(
            parse_reply(&three, &roomy),
            Err(ReplyError::TooManyLines { limit: 3 })
        );
    }

    #[test]
    fn errors_display_and_are_errors() {
        let errors = [
            ReplyError::LineTooLong { limit: 1 },
            ReplyError::ReplyTooLarge { limit: 1 },
            ReplyError::TooManyLines { limit: 1 },
            ReplyError::InvalidCode { line: "x".into() },
            ReplyError::InconsistentCode {
                first: ReplyCode::OK,
                found: ReplyCode::HELP,
            },
            ReplyError::InvalidSeparator { line: "x".into() },
        ];
        for e in errors {
            let e: Box<dyn std::error::Error> = Box::new(e);
            assert!(e.to_string().starts_with("the server sent"));
        }
    }

    fn arb_code() -> impl Strategy<Value = ReplyCode> {
        (2..=5u16, 0..=5u16, 0..=9u16).prop_map(|(a, b, c)| code(a * 100 + b * 10 + c))
    }

    /// Replies whose text starts with a letter, so that rendering and parsing round-trips.
    fn arb_reply() -> impl Strategy<Value = Reply> {
        let line = "([a-zA-Z][ -~\t\u{e0}-\u{ff}]{0,40})?";
        (
            arb_code(),
            any::<bool>(),
            (0..1000u16, 0..1000u16),
            prop::collection::vec(line, 1..6),
        )
            .prop_map(|(code, with_enhanced, (subject, detail), lines)| {
                let enhanced =
                    EnhancedCode::new(code.class(), subject, detail).filter(|_| with_enhanced);
                Reply::new(code, enhanced, lines)
            })
    }

    /// The rendered reply, with some line endings turned into bare LF.
    fn arb_wire() -> impl Strategy<Value = (Reply, Vec<u8>)> {
        (arb_reply(), any::<u64>()).prop_map(|(reply, lf_mask)| {
            let crlf = String::from_utf8(reply.to_bytes()).unwrap();
            let mut wire = Vec::new();
            for (i, line) in crlf.split_inclusive("\r\n").enumerate() {
                if (lf_mask >> (i % 64)) & 1 == 1 {
                    wire.extend(line.trim_end_matches("\r\n").as_bytes());
                    wire.push(b'\n');
                } else {
                    wire.extend(line.as_bytes());
                }
            }
            (reply, wire)
        })
    }

    proptest! {
        #[test]
        fn round_trip((reply, wire) in arb_wire(), trailer in "[ -~\r\n]{0,20}") {
            let mut input = wire.clone();
            input.extend(trailer.as_bytes());
            prop_assert_eq!(parse(&input), Ok(Status::Complete((wire.len(), reply))));
        }

        #[test]
        fn any_chunking_gives_the_same_reply(
            (_, wire) in arb_wire(),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
        ) {
            let whole = parse(&wire);
            prop_assert!(whole.as_ref().is_ok_and(Status::is_complete));
            let mut ends: Vec<usize> = cuts.iter().map(|c| c.index(wire.len())).collect();
            ends.push(wire.len());
            ends.sort_unstable();
            ends.dedup();
            let mut buf = Vec::new();
            for end in ends {
                buf.extend(&wire[buf.len()..end]);
                let got = parse(&buf);
                if end == wire.len() {
                    prop_assert_eq!(&got, &whole);
                } else {
                    prop_assert_eq!(got, Ok(Status::Partial), "prefix {:?}", &buf);
                }
            }
        }

        #[test]
        fn every_byte_split((_, wire) in arb_wire()) {
            for end in 0..wire.len() {
                prop_assert_eq!(parse(&wire[..end]), Ok(Status::Partial));
            }
            prop_assert!(parse(&wire).unwrap().is_complete());
        }

        #[test]
        fn never_panics_on_bytes(
            input in prop::collection::vec(any::<u8>(), 0..4096),
            max_line_len in 0..200usize,
            max_reply_len in 0..2000usize,
            max_lines in 0..20usize,
        ) {
            for limits in [
                ReplyLimits::default(),
                ReplyLimits { max_line_len, max_reply_len, max_lines },
            ] {
                if let Ok(Status::Complete((n, _))) = parse_reply(&input, &limits) {
                    prop_assert!(n <= input.len() && n > 0);
                }
            }
        }

        #[test]
        fn never_panics_on_reply_like_input(
            pieces in prop::collection::vec(
                prop::sample::select(vec![
                    "250", "250-", "250 ", "550 ", "5.1.1 ", "2.0.0", "\r\n", "\n", "\r",
                    "x", " ", "-", "\u{e9}", "\x1b", "\u{202e}", "9", ".",
                ]),
                0..200,
            ),
        ) {
            let input = pieces.concat();
            match parse(input.as_bytes()) {
                Ok(Status::Complete((n, reply))) => {
                    prop_assert!(n <= input.len());
                    let text = reply.text();
                    prop_assert!(text.chars().all(|c| c == '\t' || c == '\n' || !c.is_control()));
                    // Rendering a parsed reply and parsing it again gives the same reply.
                    let wire = reply.to_bytes();
                    prop_assert_eq!(parse(&wire), Ok(Status::Complete((wire.len(), reply))));
                }
                Ok(Status::Partial) | Err(_) => {}
            }
        }
    }
}
