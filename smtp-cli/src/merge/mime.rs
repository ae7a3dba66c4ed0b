//! A template message's MIME structure: each text/plain and text/html part
//! decoded (its Content-Transfer-Encoding), parsed for placeholders and,
//! per row, substituted and encoded again; every other part, and a text
//! part without placeholders, goes out byte for byte as written.

use base64::Engine as _;

use super::header::Field;
use super::template::{Escape, Text};

/// A MIME entity of the template: its header section and its body.
#[derive(Debug)]
pub(crate) struct Entity {
    /// The header fields (of the message, at the top; of a part below).
    pub(crate) head: Vec<Field>,
    body: Body,
}

#[derive(Debug)]
enum Body {
    /// Written as it is.
    Opaque(Vec<u8>),
    /// A text part with placeholders.
    Text {
        html: bool,
        encoding: Encoding,
        text: Text,
        /// Its charset is missing or US-ASCII: the Content-Type is
        /// rewritten with `charset=utf-8` should a value bring non-ASCII.
        ascii_charset: bool,
    },
    /// A multipart body: the bytes before the first delimiter (with the
    /// CRLF that belongs to it), each delimiter line and part, the close
    /// line and what follows.
    Multipart {
        boundary: String,
        preamble: Vec<u8>,
        parts: Vec<(Vec<u8>, Entity)>,
        close: Vec<u8>,
    },
}

/// A text part's Content-Transfer-Encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Encoding {
    SevenBit,
    EightBit,
    QuotedPrintable,
    Base64,
}

impl Entity {
    /// Parses an entity (CRLF line ends).
    pub(crate) fn parse(bytes: &[u8]) -> Result<Self, String> {
        let (head, body) = split_head(bytes);
        let head = fields(head)?;
        let content_type = head
            .iter()
            .rfind(|f| f.is("content-type"))
            .map(|f| f.value())
            .unwrap_or_default();
        let (mime, params) = parse_content_type(&content_type);
        let encoding = head
            .iter()
            .rfind(|f| f.is("content-transfer-encoding"))
            .map(|f| f.value().trim().to_ascii_lowercase())
            .unwrap_or_default();
        let attachment = head.iter().any(|f| {
            f.is("content-disposition") && f.value().to_ascii_lowercase().starts_with("attachment")
        });
        let body = if attachment {
            Body::Opaque(body.to_vec())
        } else if mime.starts_with("multipart/") {
            let boundary = param(&params, "boundary")
                .ok_or_else(|| format!("a {mime} part without a boundary"))?;
            multipart(body, boundary)?
        } else if mime.is_empty() || mime == "text/plain" || mime == "text/html" {
            text_body(
                body,
                mime == "text/html",
                &encoding,
                param(&params, "charset"),
            )?
        } else {
            Body::Opaque(body.to_vec())
        };
        Ok(Self { head, body })
    }

    /// Every placeholder's column, with where it is.
    pub(crate) fn placeholders(&self, out: &mut Vec<(String, String)>) {
        for f in &self.head {
            for c in f.fields() {
                out.push((c.to_owned(), format!("the {} field", f.name)));
            }
        }
        match &self.body {
            Body::Opaque(_) => {}
            Body::Text { html, text, .. } => {
                let part = if *html { "text/html" } else { "text/plain" };
                for c in text.fields() {
                    out.push((c.to_owned(), format!("the {part} part")));
                }
            }
            Body::Multipart { parts, .. } => {
                for (_, p) in parts {
                    p.placeholders(out);
                }
            }
        }
    }

    /// The entity for one row, into `out`. At the top (`top`), the fields
    /// `top.skip` names are left out and `top.extra` added.
    pub(crate) fn render<'a>(
        &self,
        value: impl Fn(&str) -> Option<&'a str> + Copy,
        out: &mut Vec<u8>,
        top: Option<&Top<'_>>,
    ) -> Result<(), String> {
        let (body, rewrite) = match &self.body {
            Body::Opaque(b) => (b.clone(), None),
            Body::Text {
                html,
                encoding,
                text,
                ascii_charset,
            } => {
                let escape = if *html { Escape::Html } else { Escape::None };
                let rendered = text.render(value, escape);
                let mut encoding = *encoding;
                let mut rewrite = None;
                if !rendered.is_ascii() && (encoding == Encoding::SevenBit || *ascii_charset) {
                    if encoding == Encoding::SevenBit {
                        encoding = Encoding::QuotedPrintable;
                    }
                    rewrite = Some((*html, encoding));
                }
                (encode(&rendered, encoding), rewrite)
            }
            Body::Multipart {
                boundary,
                preamble,
                parts,
                close,
            } => {
                let mut b = preamble.clone();
                let delimiter = format!("--{boundary}");
                for (line, part) in parts {
                    b.extend_from_slice(line);
                    let start = b.len();
                    part.render(value, &mut b, None)?;
                    if memchr::memmem::find(&b[start..], delimiter.as_bytes()).is_some() {
                        return Err(format!("a value holds the MIME boundary {boundary:?}"));
                    }
                    b.extend_from_slice(b"\r\n");
                }
                b.extend_from_slice(close);
                (b, None)
            }
        };
        for f in &self.head {
            if rewrite.is_some() && (f.is("content-type") || f.is("content-transfer-encoding")) {
                continue;
            }
            if top.is_some_and(|t| (t.skip)(f)) {
                continue;
            }
            out.extend_from_slice(&f.render(value)?);
        }
        if let Some(t) = top {
            out.extend_from_slice(t.extra);
        }
        if let Some((html, encoding)) = rewrite {
            if top.is_some() && !self.head.iter().any(|f| f.is("mime-version")) {
                out.extend_from_slice(b"MIME-Version: 1.0\r\n");
            }
            let sub = if html { "html" } else { "plain" };
            out.extend_from_slice(
                format!(
                    "Content-Type: text/{sub}; charset=utf-8\r\nContent-Transfer-Encoding: {}\r\n",
                    encoding.name()
                )
                .as_bytes(),
            );
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&body);
        Ok(())
    }
}

/// What the message's own header section gets besides its fields.
pub(crate) struct Top<'a> {
    /// Fields left out (a Message-ID replaced per message).
    pub(crate) skip: &'a dyn Fn(&Field) -> bool,
    /// Fields added (To, List-Unsubscribe), each with its CRLF.
    pub(crate) extra: &'a [u8],
}

impl Encoding {
    fn name(self) -> &'static str {
        match self {
            Self::SevenBit => "7bit",
            Self::EightBit => "8bit",
            Self::QuotedPrintable => "quoted-printable",
            Self::Base64 => "base64",
        }
    }
}

/// The header section (without its blank line) and the body.
pub(crate) fn split_head(bytes: &[u8]) -> (&[u8], &[u8]) {
    if bytes.starts_with(b"\r\n") {
        return (&[], &bytes[2..]);
    }
    match memchr::memmem::find(bytes, b"\r\n\r\n") {
        Some(i) => (&bytes[..i + 2], &bytes[i + 4..]),
        None => (bytes, &[]),
    }
}

/// The fields of a header section, each with its continuation lines.
pub(crate) fn fields(head: &[u8]) -> Result<Vec<Field>, String> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < head.len() {
        let end = memchr::memmem::find(&head[i..], b"\r\n").map_or(head.len(), |n| i + n + 2);
        let next_is_continuation = head.get(end).is_some_and(|b| *b == b' ' || *b == b'\t');
        if !next_is_continuation {
            out.push(Field::parse(&head[start..end])?);
            start = end;
        }
        i = end;
    }
    Ok(out)
}

fn multipart(body: &[u8], boundary: &str) -> Result<Body, String> {
    let delimiter = format!("--{boundary}");
    // Where each delimiter line starts and ends.
    let mut lines: Vec<(usize, usize, bool)> = Vec::new();
    let mut at = 0;
    while at <= body.len() {
        let end = memchr::memmem::find(&body[at..], b"\r\n").map_or(body.len(), |n| at + n);
        let line = &body[at..end];
        if let Some(rest) = line.strip_prefix(delimiter.as_bytes()) {
            let closing = rest.starts_with(b"--");
            let rest = if closing { &rest[2..] } else { rest };
            if rest.iter().all(|b| *b == b' ' || *b == b'\t') {
                lines.push((at, (end + 2).min(body.len()), closing));
                if closing {
                    break;
                }
            }
        }
        at = end + 2;
    }
    let Some(&(first, _, _)) = lines.first() else {
        return Err(format!("no part delimited by {delimiter:?}"));
    };
    let mut parts = Vec::new();
    for pair in lines.windows(2) {
        let (start, content, _) = pair[0];
        let (next, _, _) = pair[1];
        let part = &body[content..next.saturating_sub(2).max(content)];
        parts.push((body[start..content].to_vec(), Entity::parse(part)?));
    }
    let &(last, _, closing) = lines.last().unwrap_or(&(first, first, false));
    if !closing {
        return Err(format!("no closing delimiter {delimiter}--"));
    }
    Ok(Body::Multipart {
        boundary: boundary.to_owned(),
        preamble: body[..first].to_vec(),
        parts,
        close: body[last..].to_vec(),
    })
}

fn text_body(
    body: &[u8],
    html: bool,
    encoding: &str,
    charset: Option<&str>,
) -> Result<Body, String> {
    let encoding = match encoding {
        "" | "7bit" => Encoding::SevenBit,
        "8bit" | "binary" => Encoding::EightBit,
        "quoted-printable" => Encoding::QuotedPrintable,
        "base64" => Encoding::Base64,
        other => return Err(format!("a text part in the unknown encoding {other:?}")),
    };
    let decoded = match encoding {
        Encoding::SevenBit | Encoding::EightBit => body.to_vec(),
        Encoding::QuotedPrintable => decode_qp(body),
        Encoding::Base64 => {
            let clean: Vec<u8> = body
                .iter()
                .copied()
                .filter(|b| !b.is_ascii_whitespace())
                .collect();
            base64::engine::general_purpose::STANDARD
                .decode(clean)
                .map_err(|e| format!("a base64 text part that does not decode: {e}"))?
        }
    };
    let Ok(text) = String::from_utf8(decoded) else {
        return Ok(Body::Opaque(body.to_vec()));
    };
    if !text.contains("{{") {
        return Ok(Body::Opaque(body.to_vec()));
    }
    let charset = charset.map(str::to_ascii_lowercase);
    let ascii_charset = matches!(charset.as_deref(), None | Some("us-ascii"));
    if !matches!(
        charset.as_deref(),
        None | Some("us-ascii" | "utf-8" | "utf8")
    ) {
        return Err(format!(
            "a text part with placeholders in charset {}: save the template as UTF-8",
            charset.unwrap_or_default()
        ));
    }
    let text = Text::parse(&text).map_err(|e| format!("a text part: {e}"))?;
    Ok(Body::Text {
        html,
        encoding,
        text,
        ascii_charset,
    })
}

/// The type (lower case) and the parameters of a Content-Type value.
fn parse_content_type(value: &str) -> (String, Vec<(String, String)>) {
    let mut items = value.split(';');
    let mime = items.next().unwrap_or_default().trim().to_ascii_lowercase();
    let params = items
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| {
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(v);
            (k.trim().to_ascii_lowercase(), v.to_owned())
        })
        .collect();
    (mime, params)
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Quoted-printable decoded (RFC 2045 §6.7): `=XX`, soft line breaks.
fn decode_qp(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len());
    let mut i = 0;
    while i < body.len() {
        match body[i] {
            b'=' if body[i + 1..].starts_with(b"\r\n") => i += 3,
            b'=' if body.len() > i + 2 => {
                let hex = std::str::from_utf8(&body[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                    }
                    None => {
                        out.push(b'=');
                        i += 1;
                    }
                }
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

/// `text` in `encoding`, with CRLF line ends.
fn encode(text: &str, encoding: Encoding) -> Vec<u8> {
    let crlf = text.replace("\r\n", "\n").replace('\n', "\r\n");
    match encoding {
        Encoding::SevenBit | Encoding::EightBit => crlf.into_bytes(),
        Encoding::QuotedPrintable => encode_qp(&crlf),
        Encoding::Base64 => {
            let b = base64::engine::general_purpose::STANDARD.encode(crlf.as_bytes());
            let mut out = Vec::with_capacity(b.len() + b.len() / 38);
            for (i, chunk) in b.as_bytes().chunks(76).enumerate() {
                if i > 0 {
                    out.extend_from_slice(b"\r\n");
                }
                out.extend_from_slice(chunk);
            }
            out.extend_from_slice(b"\r\n");
            out
        }
    }
}

/// Quoted-printable (RFC 2045 §6.7): lines of at most 76 characters.
fn encode_qp(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() * 11 / 10);
    for (n, line) in text.split("\r\n").enumerate() {
        if n > 0 {
            out.extend_from_slice(b"\r\n");
        }
        let bytes = line.as_bytes();
        let mut width = 0;
        for (i, &b) in bytes.iter().enumerate() {
            let last = i + 1 == bytes.len();
            let literal =
                (b == b' ' || b == b'\t') && !last || (33..=126).contains(&b) && b != b'=';
            let piece: Vec<u8> = if literal {
                vec![b]
            } else {
                format!("={b:02X}").into_bytes()
            };
            // Room for a soft break's `=` unless this is the line's end.
            let limit = if last { 76 } else { 75 };
            if width + piece.len() > limit {
                out.extend_from_slice(b"=\r\n");
                width = 0;
            }
            out.extend_from_slice(&piece);
            width += piece.len();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_printable_round_trips_with_short_lines() {
        let text = "Grüße, Jörg! = x\t \r\n".repeat(20) + &"é".repeat(100);
        let encoded = encode_qp(&text);
        assert!(encoded.is_ascii());
        for line in encoded.split(|b| *b == b'\n') {
            assert!(line.len() <= 77, "{}", String::from_utf8_lossy(line));
        }
        assert_eq!(String::from_utf8(decode_qp(&encoded)).unwrap(), text);
    }

    #[test]
    fn a_multipart_template_without_placeholders_renders_byte_for_byte() {
        let m = "Subject: x\r\nContent-Type: multipart/alternative; boundary=\"b\"\r\n\r\n\
                 preamble\r\n--b\r\nContent-Type: text/plain\r\n\r\nplain\r\n--b\r\n\
                 Content-Type: image/png\r\n\r\nPNG\r\n--b--\r\nepilogue\r\n";
        let e = Entity::parse(m.as_bytes()).unwrap();
        let mut out = Vec::new();
        e.render(|_| None, &mut out, None).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), m);
    }
}
