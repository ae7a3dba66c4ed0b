//! Delivery status notifications (RFC 3464) to a message's sender: what
//! the queue sends, from the null reverse-path, when a message that asked
//! for one ([`MessageOptions::notify_sender`]) has every recipient final
//! and one or more of them failed or expired.
//!
//! [`compose`] is pure: from the message's facts and its recipients'
//! final attempts it writes everything but the returned original, which
//! the caller streams in between [`Notification::head`] and
//! [`Notification::tail`] (the queue reads it from the spool):
//!
//! ```text
//! From: Mail Delivery System <MAILER-DAEMON@reporting.mta>
//! To: <sender>     Subject, Date, Message-ID, Auto-Submitted: auto-replied
//! Content-Type: multipart/report; report-type=delivery-status; boundary=…   (RFC 6522)
//!
//! ├─ text/plain                what failed, the servers' words, what to do
//! ├─ message/delivery-status   Reporting-MTA, Original-Envelope-Id, Arrival-Date;
//! │                            per recipient Final-Recipient, Action: failed, Status,
//! │                            Remote-MTA, Diagnostic-Code, Last-Attempt-Date
//! └─ text/rfc822-headers       the original's header section, or message/rfc822:
//!                              the whole original, for RET=FULL (at most FULL_LIMIT)
//! ```
//!
//! Which notifications (RFC 3461 §6): failures only — `Action: failed`
//! for each recipient that failed (5xx, or a local permanent failure) or
//! expired (still undelivered when the queue's lifetime ran out: Status
//! `4.4.7`, RFC 3463). Delivered recipients are not listed (no
//! `NOTIFY=SUCCESS`), and there is none for a null sender, so a
//! notification that fails is never notified.
//!
//! Everything the queue writes is 7-bit: servers' reply texts are
//! stripped of CR, LF and other control characters (a reply cannot end a
//! field, start a header or a MIME boundary), folded, and in the
//! machine-readable part non-ASCII characters become `?` and `=?` becomes
//! `=_?` (no RFC 2047 encoded word: `Diagnostic-Code` is plain text, never
//! decoded); the readable part keeps them, quoted-printable. Only a
//! returned original that is itself 8-bit makes a notification 8-bit.
//!
//! [`MessageOptions::notify_sender`]: crate::MessageOptions::notify_sender

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::time::SystemTime;

use smtp_core::reply::EnhancedCode;

use crate::state::RecipientState;
use crate::store::{Attempt, MessageInfo, RecipientInfo, sender_address};
pub use crate::time::rfc5322;

/// The most of the original's header section returned (a longer one is
/// cut at a line's end).
pub const HEADERS_LIMIT: usize = 64 * 1024;

/// The largest original returned whole (`RET=FULL`); a larger one gets
/// its header section only, as does a binary one (BINARYMIME) and one
/// sent with REQUIRETLS (RFC 8689 §5: its content is not returned).
pub const FULL_LIMIT: u64 = 1024 * 1024;

/// Longest folded line written (RFC 5322 §2.1.1 recommends 78).
const LINE: usize = 78;

/// The most of a server's text kept in a field, in characters.
const TEXT_LIMIT: usize = 2000;

/// The diagnostic type of a failure no server reported (a connection
/// refused, a domain that takes no mail): `X-` as RFC 3464 §2.3.6 asks
/// of unregistered types.
const LOCAL_DIAGNOSTIC: &str = "X-smtp-queue";

/// Who reports: the `Reporting-MTA` and the notification's `From:`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reporter {
    /// The reporting MTA's name: the EHLO name (or host name).
    pub mta: String,
    /// The `From:` address, by default `MAILER-DAEMON@` the MTA's name.
    pub from: String,
}

impl Reporter {
    /// Reports as `mta`, from `MAILER-DAEMON@mta`.
    pub fn new(mta: impl Into<String>) -> Self {
        let mta = mta.into();
        Self {
            from: format!("MAILER-DAEMON@{mta}"),
            mta,
        }
    }

    /// Sets the `From:` address.
    #[must_use]
    pub fn with_from(mut self, from: impl Into<String>) -> Self {
        self.from = from.into();
        self
    }
}

/// What the third part returns of the original.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Returned {
    /// Nothing (the original could not be read): two parts only.
    Nothing,
    /// Its header section: `text/rfc822-headers`, or
    /// `message/global-headers` (RFC 6533) when it holds UTF-8.
    Headers {
        /// The header section holds non-ASCII octets.
        utf8: bool,
    },
    /// The whole message: `message/rfc822`, or `message/global` when its
    /// header section holds UTF-8 (SMTPUTF8).
    Message {
        /// The header section holds UTF-8.
        utf8: bool,
        /// The message holds 8-bit octets (`Content-Transfer-Encoding: 8bit`).
        eight_bit: bool,
    },
}

/// The facts a notification is written from.
#[derive(Clone, Copy, Debug)]
pub struct Report<'a> {
    /// Who reports.
    pub reporter: &'a Reporter,
    /// The original message, its recipients in their final states.
    pub message: &'a MessageInfo,
    /// What the third part will hold.
    pub returned: Returned,
    /// The notification's `Date:`.
    pub now: SystemTime,
    /// The MIME boundary: up to 70 of RFC 2046's boundary characters,
    /// found nowhere in the returned original.
    pub boundary: &'a str,
}

/// A notification as written, but for the returned original.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notification {
    /// The envelope recipient: the original's sender.
    pub to: String,
    /// Its `Message-ID:`, with angle brackets.
    pub message_id: String,
    /// The recipients it reports, in the original's order.
    pub reported: Vec<String>,
    /// Everything before the returned original (the third part's header
    /// included).
    pub head: Vec<u8>,
    /// What follows it: the closing boundary.
    pub tail: Vec<u8>,
}

impl Notification {
    /// The whole notification with `returned` as the original (empty for
    /// [`Returned::Nothing`]).
    pub fn assemble(&self, returned: &[u8]) -> Vec<u8> {
        [&self.head[..], returned, &self.tail[..]].concat()
    }
}

/// The notification `report.message` owes its sender, or `None` when it
/// owes none: a null sender, or no recipient failed or expired.
pub fn compose(report: &Report<'_>) -> Option<Notification> {
    let m = report.message;
    let to = sender_address(&m.from)?;
    let reported: Vec<&RecipientInfo> = m
        .recipients
        .iter()
        .filter(|r| matches!(r.state, RecipientState::Failed | RecipientState::Expired))
        .collect();
    if reported.is_empty() {
        return None;
    }
    let mta = ascii(report.reporter.mta.trim());
    let boundary = report.boundary;
    let message_id = format!("<{}.dsn@{mta}>", m.id);
    let mut head = String::new();
    let mut h = |name: &str, value: &str| field(&mut head, name, value);
    h(
        "From",
        &format!("Mail Delivery System <{}>", ascii(&report.reporter.from)),
    );
    h("To", &format!("<{}>", address_text(to)));
    h("Subject", "Undelivered Mail Returned to Sender");
    h("Date", &rfc5322(report.now));
    h("Message-ID", &message_id);
    h("Auto-Submitted", "auto-replied");
    h("MIME-Version", "1.0");
    head.push_str("Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"");
    head.push_str(boundary);
    head.push_str(
        "\"\r\n\r\nThis is a delivery status notification (RFC 3464) in MIME format.\r\n",
    );

    // 1. For people.
    let text = readable(report, &mta, &reported);
    let _ = write!(head, "\r\n--{boundary}\r\n");
    head.push_str(&text_part(&text));

    // 2. For programs.
    let _ = write!(
        head,
        "\r\n--{boundary}\r\nContent-Type: message/delivery-status\r\n\
         Content-Description: Delivery report\r\n\r\n"
    );
    field(&mut head, "Reporting-MTA", &format!("dns; {mta}"));
    if let Some(envid) = &m.options.dsn_envid {
        field(&mut head, "Original-Envelope-Id", &ascii(envid));
    }
    field(&mut head, "Arrival-Date", &rfc5322(m.created));
    for r in &reported {
        head.push_str("\r\n");
        recipient_fields(&mut head, r);
    }

    // 3. The original.
    let third = match report.returned {
        Returned::Nothing => None,
        Returned::Headers { utf8: false } => Some(("text/rfc822-headers", false)),
        Returned::Headers { utf8: true } => Some(("message/global-headers", true)),
        Returned::Message { utf8, eight_bit } => Some((
            if utf8 {
                "message/global"
            } else {
                "message/rfc822"
            },
            eight_bit || utf8,
        )),
    };
    if let Some((kind, eight_bit)) = third {
        let what = if matches!(report.returned, Returned::Message { .. }) {
            "Undelivered Message"
        } else {
            "Undelivered Message Headers"
        };
        let _ = write!(
            head,
            "\r\n--{boundary}\r\nContent-Type: {kind}\r\nContent-Description: {what}\r\n"
        );
        if eight_bit {
            head.push_str("Content-Transfer-Encoding: 8bit\r\n");
        }
        head.push_str("\r\n");
    }
    Some(Notification {
        to: to.to_owned(),
        message_id,
        reported: reported.iter().map(|r| r.address.clone()).collect(),
        head: head.into_bytes(),
        tail: format!("\r\n--{boundary}--\r\n").into_bytes(),
    })
}

/// The `Status` of a recipient reported as failed: the server's enhanced
/// code when it gave one of class 5; `5.0.0` for a permanent failure
/// without one (RFC 3463 gives no mapping from basic codes); `4.4.7`
/// (delivery time expired) for an expired recipient, whatever its last
/// attempt said. `None` for a recipient that did not fail.
pub fn status(state: RecipientState, last: Option<&Attempt>) -> Option<EnhancedCode> {
    match state {
        RecipientState::Expired => EnhancedCode::new(4, 4, 7),
        RecipientState::Failed => {
            let given = last
                .and_then(|a| a.enhanced.as_deref())
                .and_then(|e| e.trim().parse::<EnhancedCode>().ok())
                .filter(|e| e.class == 5);
            given.or(EnhancedCode::new(5, 0, 0))
        }
        _ => None,
    }
}

/// The original's header section: the lines before the first empty one,
/// from the first octets of the message (`complete` when `start` is the
/// whole message). Without an empty line in an incomplete `start`, the
/// lines it holds whole.
pub fn header_section(start: &[u8], complete: bool) -> &[u8] {
    let mut at = 0;
    while let Some(nl) = start[at..].iter().position(|&b| b == b'\n') {
        let line = &start[at..at + nl + 1];
        if line == b"\n" || line == b"\r\n" {
            return &start[..at];
        }
        at += nl + 1;
    }
    if complete { start } else { &start[..at] }
}

fn recipient_fields(out: &mut String, r: &RecipientInfo) {
    let last = r.last.as_ref();
    field(out, "Final-Recipient", &final_recipient(&r.address));
    field(out, "Action", "failed");
    if let Some(status) = status(r.state, last) {
        field(out, "Status", &status.to_string());
    }
    if let Some(a) = last {
        let remote = a
            .host
            .as_deref()
            .filter(|_| a.code.is_some())
            .and_then(remote_mta);
        if let Some(host) = remote {
            field(out, "Remote-MTA", &format!("dns; {host}"));
        }
        match a.code {
            Some(code) => {
                let mut said = code.to_string();
                if let Some(e) = a.enhanced.as_deref().filter(|e| !e.trim().is_empty()) {
                    said.push(' ');
                    said.push_str(e.trim());
                }
                said.push(' ');
                said.push_str(&a.text);
                field(out, "Diagnostic-Code", &format!("smtp; {}", inert(&said)));
            }
            None if !a.text.trim().is_empty() => field(
                out,
                "Diagnostic-Code",
                &format!("{LOCAL_DIAGNOSTIC}; {}", inert(&a.text)),
            ),
            None => {}
        }
    }
    if r.attempts > 0 {
        field(out, "Last-Attempt-Date", &rfc5322(r.updated));
    }
}

/// `rfc822; addr`, or for an address with UTF-8 `utf-8; ` and its
/// utf-8-addr-xtext (RFC 6533 §3).
fn final_recipient(address: &str) -> String {
    if address.is_ascii() {
        return format!("rfc822; {}", ascii(address));
    }
    let mut x = String::from("utf-8; ");
    for c in address.chars() {
        if c.is_ascii_graphic() && !matches!(c, '+' | '=' | '\\') {
            x.push(c);
        } else {
            let _ = write!(x, "\\x{{{:X}}}", u32::from(c));
        }
    }
    x
}

/// An address for a header field: as it is when printable, else cleaned.
fn address_text(address: &str) -> String {
    if address.chars().any(char::is_control) {
        printable(address)
    } else {
        address.to_owned()
    }
}

/// The name of the MTA an attempt's host names: `mx.example.net` of
/// `mx.example.net [192.0.2.1]`, `[192.0.2.1]` of `192.0.2.1:25`.
fn remote_mta(host: &str) -> Option<String> {
    let host = host.trim();
    let literal = |ip: IpAddr| match ip {
        IpAddr::V4(v4) => format!("[{v4}]"),
        IpAddr::V6(v6) => format!("[IPv6:{v6}]"),
    };
    if let Ok(sa) = host.parse::<SocketAddr>() {
        return Some(literal(sa.ip()));
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Some(literal(ip));
    }
    let name = host.split_whitespace().next()?;
    let name = match name.rsplit_once(':') {
        Some((n, port)) if port.parse::<u16>().is_ok() && !n.contains(':') => n,
        _ => name,
    };
    let name = inert(name);
    (!name.is_empty()).then_some(name)
}

/// The readable part's lines (without line ends).
fn readable(report: &Report<'_>, mta: &str, reported: &[&RecipientInfo]) -> Vec<String> {
    let m = report.message;
    let mut lines = Vec::new();
    let para = |lines: &mut Vec<String>, indent: &str, text: &str| {
        wrap(lines, indent, indent, text);
    };
    para(
        &mut lines,
        "",
        &format!("This is the mail system at {mta}."),
    );
    lines.push(String::new());
    let total = m.recipients.len();
    let n = reported.len();
    let which = if n == total && n == 1 {
        "its recipient".to_owned()
    } else if n == total {
        format!("any of its {total} recipients")
    } else {
        format!("{n} of its {total} recipients")
    };
    para(
        &mut lines,
        "",
        &format!(
            "Your message could not be delivered to {which}. It was queued on {} as {}.",
            rfc5322(m.created),
            m.id
        ),
    );
    for r in reported {
        lines.push(String::new());
        lines.push(format!("<{}>", printable(&r.address)));
        let last = r.last.as_ref();
        let host = last
            .and_then(|a| a.host.as_deref())
            .map(printable)
            .filter(|h| !h.is_empty());
        let tries = match r.attempts {
            0 => "without an attempt".to_owned(),
            1 => "after 1 attempt".to_owned(),
            n => format!("after {n} attempts"),
        };
        let (intro, said) = match (r.state, last) {
            (RecipientState::Failed, Some(a)) if a.code.is_some() => (
                match &host {
                    Some(h) => format!("Refused for good by {h}, which said:"),
                    None => "Refused for good; the server said:".to_owned(),
                },
                Some(reply_lines(a)),
            ),
            (RecipientState::Failed, Some(a)) => (
                format!("Could not be delivered: {}", printable(&a.text)),
                None,
            ),
            (RecipientState::Failed, None) => ("Could not be delivered.".to_owned(), None),
            (_, Some(a)) if a.code.is_some() => (
                format!(
                    "Still not delivered when the queue gave up on it {tries}; the last answer{}was:",
                    host.as_ref()
                        .map_or_else(|| " ".to_owned(), |h| format!(", from {h}, "))
                ),
                Some(reply_lines(a)),
            ),
            (_, Some(a)) => (
                format!(
                    "Still not delivered when the queue gave up on it {tries}; the last attempt failed: {}",
                    printable(&a.text)
                ),
                None,
            ),
            (_, None) => (
                format!("Still not delivered when the queue gave up on it {tries}."),
                None,
            ),
        };
        para(&mut lines, "    ", &intro);
        for line in said.into_iter().flatten() {
            // Not wrapped: the server's words as it sent them (quoted-
            // printable keeps long ones whole).
            lines.push(format!("    {line}"));
        }
    }
    lines.push(String::new());
    lines.push("What you can do:".to_owned());
    let failed = reported.iter().any(|r| r.state == RecipientState::Failed);
    let expired = reported.iter().any(|r| r.state == RecipientState::Expired);
    if failed {
        wrap(
            &mut lines,
            "- ",
            "  ",
            "For a recipient refused for good, check the address for a typing mistake; \
             the server's words above say why it refused. Sent again unchanged, the message \
             will most likely be refused again.",
        );
    }
    if expired {
        wrap(
            &mut lines,
            "- ",
            "  ",
            "For a recipient that expired, its mail server could not be reached or kept \
             deferring the message; send it again later, or reach the recipient another way.",
        );
    }
    lines.push(String::new());
    let rest = match report.returned {
        Returned::Nothing => "The delivery report for mail programs follows.",
        Returned::Headers { .. } => {
            "The delivery report for mail programs follows, then the header section of your message."
        }
        Returned::Message { .. } => {
            "The delivery report for mail programs follows, then your message."
        }
    };
    para(&mut lines, "", rest);
    lines
}

/// A server's reply as lines: `CODE ENHANCED text`, then its other lines,
/// each stripped of control characters.
fn reply_lines(a: &Attempt) -> Vec<String> {
    let mut lines: Vec<String> = a
        .text
        .split(['\n', '\r'])
        .map(printable)
        .filter(|l| !l.is_empty())
        .collect();
    let mut first = a.code.map(|c| c.to_string()).unwrap_or_default();
    if let Some(e) = a
        .enhanced
        .as_deref()
        .map(printable)
        .filter(|e| !e.is_empty())
    {
        first.push(' ');
        first.push_str(&e);
    }
    match lines.first_mut() {
        Some(l) => *l = format!("{first} {l}"),
        None => lines.push(first),
    }
    let mut kept = 0;
    lines.retain(|l| {
        kept += l.len();
        kept <= TEXT_LIMIT * 2
    });
    lines
}

/// Appends `text`'s words to `lines`, at most 72 characters a line
/// where the words allow: the first line starts with `first`, the others
/// with `rest`.
fn wrap(lines: &mut Vec<String>, first: &str, rest: &str, text: &str) {
    let mut line = String::from(first);
    let mut bare = true;
    for word in text.split(' ').filter(|w| !w.is_empty()) {
        if !bare && line.chars().count() + 1 + word.chars().count() > 72 {
            lines.push(std::mem::replace(&mut line, String::from(rest)));
            bare = true;
        }
        if !bare {
            line.push(' ');
        }
        line.push_str(word);
        bare = false;
    }
    if !bare {
        lines.push(line);
    }
}

/// The readable part: 7-bit US-ASCII when every line is printable ASCII
/// of at most 76 characters, else UTF-8 in quoted-printable.
fn text_part(lines: &[String]) -> String {
    let plain = lines
        .iter()
        .all(|l| l.len() <= 76 && l.bytes().all(|b| (0x20..0x7f).contains(&b)));
    let mut out = String::new();
    if plain {
        out.push_str(
            "Content-Type: text/plain; charset=us-ascii\r\n\
             Content-Description: Notification\r\n\r\n",
        );
        for l in lines {
            out.push_str(l.trim_end());
            out.push_str("\r\n");
        }
    } else {
        out.push_str(
            "Content-Type: text/plain; charset=utf-8\r\n\
             Content-Transfer-Encoding: quoted-printable\r\n\
             Content-Description: Notification\r\n\r\n",
        );
        for l in lines {
            quoted_printable(&mut out, l.trim_end());
        }
    }
    out
}

/// One line in quoted-printable (RFC 2045 §6.7): encoded lines of at most
/// 76 characters, soft breaks between them.
fn quoted_printable(out: &mut String, line: &str) {
    let bytes = line.as_bytes();
    let mut width = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let last = i + 1 == bytes.len();
        let literal = matches!(b, 33..=60 | 62..=126) || (b == b' ' && !last);
        let piece = if literal {
            (b as char).to_string()
        } else {
            format!("={b:02X}")
        };
        // Room for the piece and a soft break's `=`.
        if width + piece.len() > 75 {
            out.push_str("=\r\n");
            width = 0;
        }
        out.push_str(&piece);
        width += piece.len();
    }
    out.push_str("\r\n");
}

/// Writes `Name: value`, folded before a space to keep lines within
/// [`LINE`] where the words allow; a word too long for a line of 998 is
/// split. `value` must be printable ASCII (see [`ascii`]).
fn field(out: &mut String, name: &str, value: &str) {
    out.push_str(name);
    out.push(':');
    let mut width = name.len() + 1;
    for word in value.split(' ').filter(|w| !w.is_empty()) {
        let mut word = word;
        loop {
            // An unbreakable run longer than a line can hold is cut (a
            // fold is a space more in the value; better than a line over
            // RFC 5322's limit).
            let mut cut = word.len().min(900);
            while !word.is_char_boundary(cut) {
                cut -= 1;
            }
            let (piece, rest) = word.split_at(cut);
            if width + 1 + piece.len() > LINE && width > name.len() + 1 {
                out.push_str("\r\n");
                width = 0;
            }
            out.push(' ');
            out.push_str(piece);
            width += 1 + piece.len();
            if rest.is_empty() {
                break;
            }
            word = rest;
        }
    }
    out.push_str("\r\n");
}

/// `text` for a field: control characters (CR, LF, TAB, …) become
/// spaces, runs of spaces one, non-ASCII characters `?`; at most
/// [`TEXT_LIMIT`] characters.
fn ascii(text: &str) -> String {
    clean(text, true)
}

/// What a server said (or its name), for a field: as [`ascii`], and with
/// every `=?` written `=_?`, so that no part of it reads as an RFC 2047
/// encoded word. RFC 3464 §2.3.6 makes `Diagnostic-Code` `diagnostic-type
/// ; *text`, plain US-ASCII shown as it is; a reader that decoded an
/// encoded word there anyway would show text none of the checks above
/// saw (a line break, a forged field, non-ASCII look-alikes). Applied
/// after [`ascii`], which may itself make `=?` of `=` and a non-ASCII
/// character.
fn inert(text: &str) -> String {
    ascii(text).replace("=?", "=_?")
}

/// `text` for the readable part: as [`ascii`], but keeping non-ASCII
/// characters.
fn printable(text: &str) -> String {
    clean(text, false)
}

fn clean(text: &str, ascii_only: bool) -> String {
    let mut out = String::with_capacity(text.len().min(TEXT_LIMIT));
    let mut count = 0;
    for c in text.chars() {
        let c = if c.is_control() || c.is_whitespace() {
            ' '
        } else if ascii_only && !c.is_ascii() {
            '?'
        } else if matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}')
        {
            // Invisible and direction-changing marks: shown as such.
            '?'
        } else {
            c
        };
        if c == ' ' && (out.is_empty() || out.ends_with(' ')) {
            continue;
        }
        if count == TEXT_LIMIT {
            out.push_str("...");
            break;
        }
        out.push(c);
        count += 1;
    }
    let trimmed = out.trim_end().len();
    out.truncate(trimmed);
    out
}

#[cfg(test)]
mod tests;
