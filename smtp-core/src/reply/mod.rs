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
//!
//! Files: `code.rs` ([`ReplyCode`] and its named constants, [`Severity`]), `enhanced.rs`
//! ([`EnhancedCode`]), `parser.rs` ([`parse_reply`], [`ReplyLimits`], [`ReplyError`]); the
//! [`Reply`] type is here.

mod code;
mod enhanced;
mod parser;

#[cfg(test)]
mod tests;

use std::fmt;

pub use code::{ReplyCode, Severity};
pub use enhanced::{EnhancedCode, EnhancedCodeError};
pub use parser::{ReplyError, ReplyLimits, Status, parse_reply};

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
        self.code == ReplyCode::AUTH_REQUIRED
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
