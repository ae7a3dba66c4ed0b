//! One message per row: the template filled in, its own Message-ID and
//! Date, To and List-Unsubscribe added, prepared (and DKIM-signed) as any
//! message `smtp send` sends; and the body source that renders a row only
//! when the queue reads it, so a long list is never held rendered.

use std::io;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use smtp_core::address::Mailbox;
use smtp_core::delivery::BodySource;

use super::header::Field;
use super::list::{List, Row};
use super::mime::{Entity, Top};
use crate::dkim::Signer;
use crate::fail::Failure;
use crate::message::{Body, Input, Prepared, prepare};
use crate::unsubscribe::Unsubscribe;

/// A template and its list, ready to render.
#[derive(Debug)]
pub(crate) struct Merge {
    pub(crate) list: List,
    /// What to call the list in message names (`list.csv`).
    pub(crate) name: String,
    template: Entity,
    /// The recipient column.
    to: usize,
    /// The columns a placeholder names (in the template or the
    /// unsubscribe fields): their values are checked for control
    /// characters.
    used: Vec<usize>,
    unsubscribe: Option<Unsubscribe>,
    /// The template has no To: one is added per row.
    add_to: bool,
    /// Fields replaced per message (Message-ID; Date too for a composed template).
    replace: Vec<&'static str>,
    /// The EHLO name, for Message-IDs.
    host: String,
}

/// What a row renders to.
pub(crate) struct Message {
    pub(crate) prepared: Prepared,
    pub(crate) recipient: Mailbox,
}

impl Merge {
    /// Parses `template` (any line ends) against `list`'s columns. A
    /// placeholder naming no column, like a template that does not
    /// parse, is the whole run's error. `replace` names the fields every
    /// message gets its own of. The recipient column's values become bare
    /// addresses (` <a@example.org> ` is `a@example.org`), for every use.
    pub(crate) fn new(
        mut list: List,
        name: String,
        template: &[u8],
        to_column: &str,
        unsubscribe: Option<Unsubscribe>,
        replace: Vec<&'static str>,
        host: String,
    ) -> Result<Self, Failure> {
        let crlf = crlf(template);
        let template = Entity::parse(&crlf).map_err(|e| Failure::data(format!("template: {e}")))?;
        let to = list.index(to_column).ok_or_else(|| {
            Failure::data(format!(
                "{name}: no column {to_column:?} for the recipients (--to-column; the columns \
                 are {})",
                list.columns.join(", ")
            ))
        })?;
        let mut used = Vec::new();
        template.placeholders(&mut used);
        if let Some(u) = &unsubscribe {
            used.extend(
                u.fields()
                    .map(|f| (f.to_owned(), "--unsubscribe".to_owned())),
            );
        }
        let unknown: Vec<String> = used
            .iter()
            .filter(|(c, _)| list.index(c).is_none())
            .map(|(c, place)| format!("{{{{{c}}}}} in {place}"))
            .collect();
        if !unknown.is_empty() {
            return Err(Failure::data(format!(
                "placeholders naming no column of {name}: {} (the columns are {})",
                unknown.join(", "),
                list.columns.join(", ")
            )));
        }
        if unsubscribe.is_some() && template.head.iter().any(|f| f.is("list-unsubscribe")) {
            return Err(Failure::usage(
                "the template has a List-Unsubscribe field and --unsubscribe gives one: keep one",
            ));
        }
        let add_to = !template.head.iter().any(|f| f.is("to"));
        for row in &mut list.rows {
            if let Some(v) = row.values.get_mut(to) {
                let bare = bare_address(v);
                if bare.len() != v.len() {
                    *v = bare.to_owned();
                }
            }
        }
        let mut used: Vec<usize> = used.iter().filter_map(|(c, _)| list.index(c)).collect();
        used.sort_unstable();
        used.dedup();
        Ok(Self {
            list,
            name,
            template,
            to,
            used,
            unsubscribe,
            add_to,
            replace,
            host,
        })
    }

    /// Whether the template has a field `name`.
    pub(crate) fn has_field(&self, name: &str) -> bool {
        self.template.head.iter().any(|f| f.is(name))
    }

    /// A message's name in reports: `list.csv:LINE`.
    pub(crate) fn message_name(&self, row: &Row) -> String {
        format!("{}:{}", self.name, row.line)
    }

    /// The row's recipient, checked.
    pub(crate) fn recipient(&self, row: &Row) -> Result<Mailbox, String> {
        let column = &self.list.columns[self.to];
        if row.values.len() != self.list.columns.len() {
            return Err(format!(
                "{} fields where the header row has {}",
                row.values.len(),
                self.list.columns.len()
            ));
        }
        let address = row.values[self.to].trim();
        if address.is_empty() {
            return Err(format!("no recipient (the {column} column is empty)"));
        }
        Mailbox::parse(address).map_err(|e| format!("{column} {address:?}: {e}"))
    }

    /// The row rendered and prepared, signed when `signer` is given.
    pub(crate) fn render(
        &self,
        row: &Row,
        signer: Option<&Mutex<Signer>>,
    ) -> Result<Message, String> {
        let recipient = self.recipient(row)?;
        let columns = &self.list.columns;
        for &i in &self.used {
            if let Some(c) = row.values.get(i).and_then(|v| control(v)) {
                return Err(format!(
                    "the {} column holds a control character ({c}): remove it from the list",
                    columns[i]
                ));
            }
        }
        let value = |c: &str| {
            columns
                .iter()
                .position(|n| n == c)
                .and_then(|i| row.values.get(i))
                .map(String::as_str)
        };
        let mut extra = Vec::new();
        if self.add_to {
            let to =
                crate::compose::header_address(&recipient.to_string(), recipient.needs_smtputf8());
            extra.extend_from_slice(format!("To: <{to}>\r\n").as_bytes());
        }
        if let Some(u) = &self.unsubscribe {
            extra.extend_from_slice(&u.header(value));
        }
        let replace = &self.replace;
        let skip = |f: &Field| replace.iter().any(|r| f.is(r));
        let mut raw = Vec::new();
        self.template.render(
            value,
            &mut raw,
            Some(&Top {
                skip: &skip,
                extra: &extra,
            }),
        )?;
        let mut prepared = prepare(Input::Bytes(raw), self.message_name(row), &self.host)
            .map_err(|f| f.message)?;
        if let Some(signer) = signer {
            let mut signer = signer
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            signer.sign(&mut prepared).map_err(|f| f.message)?;
        }
        Ok(Message {
            prepared,
            recipient,
        })
    }
}

/// `value` without surrounding whitespace and one pair of surrounding
/// angle brackets.
fn bare_address(value: &str) -> &str {
    let v = value.trim();
    v.strip_prefix('<')
        .and_then(|v| v.strip_suffix('>'))
        .map_or(v, str::trim)
}

/// The first control character in `value` that no part of a message may
/// carry as text: C0 controls and DEL, but for TAB and the line breaks
/// (a header field refuses those itself; a text part makes them CRLF).
fn control(value: &str) -> Option<String> {
    const NAMES: [&str; 32] = [
        "NUL", "SOH", "STX", "ETX", "EOT", "ENQ", "ACK", "BEL", "BS", "TAB", "LF", "VT", "FF",
        "CR", "SO", "SI", "DLE", "DC1", "DC2", "DC3", "DC4", "NAK", "SYN", "ETB", "CAN", "EM",
        "SUB", "ESC", "FS", "GS", "RS", "US",
    ];
    let c = value
        .bytes()
        .find(|&b| (b < 0x20 && !matches!(b, b'\t' | b'\r' | b'\n')) || b == 0x7f)?;
    let name = NAMES.get(usize::from(c)).copied().unwrap_or("DEL");
    Some(format!("U+{c:04X} {name}"))
}

/// The message's bytes, as they go (header section and body).
pub(crate) fn bytes(p: &Prepared) -> Vec<u8> {
    let mut out = p.head.clone();
    if let Body::Memory(b) = &p.body {
        out.extend_from_slice(b);
    }
    out
}

/// Line ends as CRLF.
fn crlf(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + bytes.len() / 32);
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\r' if bytes.get(i + 1) == Some(&b'\n') => {
                out.extend_from_slice(b"\r\n");
                i += 1;
            }
            b'\r' | b'\n' => out.extend_from_slice(b"\r\n"),
            b => out.push(b),
        }
        i += 1;
    }
    out
}

/// A row's message, rendered when the queue first reads it.
pub(crate) struct Rendered {
    merge: Arc<Merge>,
    row: usize,
    signer: Option<Arc<Mutex<Signer>>>,
    bytes: Option<Vec<u8>>,
    pos: usize,
}

impl Rendered {
    pub(crate) fn new(merge: Arc<Merge>, row: usize, signer: Option<Arc<Mutex<Signer>>>) -> Self {
        Self {
            merge,
            row,
            signer,
            bytes: None,
            pos: 0,
        }
    }
}

#[async_trait]
impl BodySource for Rendered {
    async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.bytes.is_none() {
            let row = &self.merge.list.rows[self.row];
            let m = self
                .merge
                .render(row, self.signer.as_deref())
                .map_err(io::Error::other)?;
            self.bytes = Some(bytes(&m.prepared));
        }
        let bytes = self.bytes.as_deref().unwrap_or_default();
        let part = bytes.get(self.pos..).unwrap_or_default();
        let n = part.len().min(buf.len());
        buf[..n].copy_from_slice(&part[..n]);
        self.pos += n;
        if self.pos >= bytes.len() {
            // Read to its end: the queue holds its own copy now.
            self.bytes = Some(Vec::new());
            self.pos = 0;
        }
        Ok(n)
    }

    async fn rewind(&mut self) -> io::Result<()> {
        self.bytes = None;
        self.pos = 0;
        Ok(())
    }
}
