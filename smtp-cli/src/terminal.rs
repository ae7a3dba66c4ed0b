//! The one way text reaches the terminal. Servers (and, for `smtp sink`,
//! clients) choose much of what is printed: greetings, replies, certificate
//! subjects and names, error texts. Printed raw, an escape sequence in any
//! of them could recolour, retitle or rewrite the user's terminal, or make
//! a failure look like a success. So every line printed goes through
//! [`printable`], by the `say!` and `tell!` macros, at the boundary
//! rather than at each source: a source forgotten cannot leak.

use std::borrow::Cow;

/// `text` with every character that could act on a terminal replaced by
/// U+FFFD: control characters (C0, DEL, C1) other than line feed and tab,
/// and the bidirectional formatting characters (they reorder what is
/// displayed): the embeddings, overrides and isolates, and the marks
/// U+200E, U+200F and U+061C. The core's rule for reply text, and the
/// marks besides; the line feeds of our own multi-line output are kept.
pub(crate) fn printable(text: &str) -> Cow<'_, str> {
    let unsafe_char = |c: char| {
        (c.is_control() && c != '\n' && c != '\t')
            || matches!(
                c,
                '\u{202A}'..='\u{202E}'
                    | '\u{2066}'..='\u{2069}'
                    | '\u{200E}'
                    | '\u{200F}'
                    | '\u{061C}'
            )
    };
    if !text.chars().any(unsafe_char) {
        return Cow::Borrowed(text);
    }
    Cow::Owned(
        text.chars()
            .map(|c| {
                if unsafe_char(c) {
                    char::REPLACEMENT_CHARACTER
                } else {
                    c
                }
            })
            .collect(),
    )
}

/// `text` on one line: line breaks shown as `⏎`, for a value that must not
/// start a line of its own (a certificate field could otherwise forge the
/// next row of a report); [`printable`] still applies when it is printed.
pub(crate) fn one_line(text: &str) -> Cow<'_, str> {
    if !text.contains(['\n', '\r']) {
        return Cow::Borrowed(text);
    }
    Cow::Owned(text.replace("\r\n", "⏎").replace(['\n', '\r'], "⏎"))
}

/// A server's text (a reply of several lines) on one line, its lines
/// joined with ` / `, as `send`'s report shows it: a line of the text must
/// never pass for a line of our own (`c@x.test: delivered …`).
pub(crate) fn joined(text: &str) -> Cow<'_, str> {
    if !text.contains(['\n', '\r']) {
        return Cow::Borrowed(text);
    }
    Cow::Owned(
        text.split("\r\n")
            .flat_map(|l| l.split(['\n', '\r']))
            .collect::<Vec<_>>()
            .join(" / "),
    )
}

/// Texts never printed: the secret in use and the forms AUTH sends it in.
static SECRETS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Registers `secret` (used with `user`) so that no printed line shows it,
/// nor the base64 forms PLAIN, LOGIN and XOAUTH2 send it in — a server may
/// echo what it got into a reply's text.
pub(crate) fn redact_secret(user: &str, secret: &str) {
    let forms = smtp_core::sasl::Credentials::Password {
        username: user.to_owned(),
        password: smtp_core::sasl::Secret::new(secret),
    }
    .secret_forms();
    let mut guard = SECRETS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for form in forms {
        // As the log writes a field: quoted with escapes (text) or as a
        // JSON string; a secret with `"`, `\` or a control character looks
        // different there.
        let debug = format!("{form:?}");
        let json = serde_json::to_string(&form).unwrap_or_default();
        for escaped in [&debug, &json] {
            let inner = escaped
                .strip_prefix('"')
                .and_then(|e| e.strip_suffix('"'))
                .unwrap_or(escaped);
            if inner != form && !inner.is_empty() {
                guard.push(inner.to_owned());
            }
        }
        guard.push(form);
    }
    // Longest first: one form's base64 may hold another's (PLAIN's holds
    // LOGIN's), and a shorter one replaced first would leave the rest.
    guard.sort_by_key(|s| std::cmp::Reverse(s.len()));
    guard.dedup();
}

fn redacted(text: &str) -> Cow<'_, str> {
    let guard = SECRETS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if !guard.iter().any(|s| text.contains(s.as_str())) {
        return Cow::Borrowed(text);
    }
    let mut out = text.to_owned();
    for s in guard.iter() {
        out = out.replace(s.as_str(), "<redacted>");
    }
    Cow::Owned(out)
}

/// Writes one line to standard output or error. A closed pipe (`smtp send
/// … | head -1`) or a full disk loses the line, never the run: the
/// delivery goes on and the exit code still tells what happened. While the
/// log is JSON, a line for stderr goes out as a JSON log line of its own
/// (level WARN), so that stderr stays JSON.
pub(crate) fn line(to_stderr: bool, text: &str) {
    write_line(to_stderr, "WARN", text);
}

/// [`line()`] on stderr for the error that ends the command: level ERROR
/// while the log is JSON.
pub(crate) fn error_line(text: &str) {
    write_line(true, "ERROR", text);
}

fn write_line(to_stderr: bool, level: &str, text: &str) {
    use std::io::Write;
    let text = redacted(text);
    let text = printable(&text);
    let _ = if to_stderr && crate::log::is_json() {
        writeln!(
            std::io::stderr().lock(),
            "{}",
            crate::log::note_json(level, &text)
        )
    } else if to_stderr {
        writeln!(std::io::stderr().lock(), "{text}")
    } else {
        writeln!(std::io::stdout().lock(), "{text}")
    };
}

/// Writes one formatted log event on stderr: redacted, on one line, with
/// nothing that could act on a terminal (a reply's text is the server's
/// choice), around the progress bar if one is shown.
pub(crate) fn log_line(text: &str) {
    use std::io::Write;
    let text = redacted(text);
    let text = one_line(&text);
    let text = printable(&text);
    crate::progress::suspend(|| {
        let _ = writeln!(std::io::stderr().lock(), "{text}");
    });
}

/// `println!`, made [`printable`], never panicking on a closed pipe.
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::terminal::line(false, &format!($($arg)*))
    };
}

/// `eprintln!`, made [`printable`], never panicking on a closed pipe.
macro_rules! tell {
    ($($arg:tt)*) => {
        $crate::terminal::line(true, &format!($($arg)*))
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_form_holding_the_login_form_is_redacted_whole() {
        redact_secret("u", "S3cr3t-Pw");
        // base64("\0u\0S3cr3t-Pw") ends with base64("S3cr3t-Pw").
        assert_eq!(redacted("sent AHUAUzNjcjN0LVB3"), "sent <redacted>");
    }

    #[test]
    fn a_value_cannot_start_a_row_of_its_own() {
        let forged = "m.example\nverified   yes\r\nerror      none\r";
        let shown = one_line(forged);
        assert!(!shown.contains(['\n', '\r']), "{shown}");
        assert_eq!(shown, "m.example⏎verified   yes⏎error      none⏎");
        assert!(matches!(one_line("plain"), Cow::Borrowed("plain")));
    }

    #[test]
    fn a_reply_of_several_lines_is_joined_on_one() {
        assert_eq!(
            joined("first\nb@x.test: delivered (250 ok)\r\nthird\rfourth"),
            "first / b@x.test: delivered (250 ok) / third / fourth"
        );
        assert!(matches!(joined("plain"), Cow::Borrowed("plain")));
    }

    #[test]
    fn bidi_marks_are_replaced_too() {
        assert_eq!(
            printable("a\u{200e}b\u{200f}c\u{61c}d\u{2067}e"),
            "a\u{fffd}b\u{fffd}c\u{fffd}d\u{fffd}e"
        );
    }

    #[test]
    fn escapes_and_controls_are_replaced_and_lines_kept() {
        assert_eq!(
            printable("plain text\n\tsecond line"),
            "plain text\n\tsecond line"
        );
        assert_eq!(
            printable("a\x1b[31mb\x07c\rd\u{9b}e\u{202e}f\x7f"),
            "a\u{fffd}[31mb\u{fffd}c\u{fffd}d\u{fffd}e\u{fffd}f\u{fffd}"
        );
    }
}
