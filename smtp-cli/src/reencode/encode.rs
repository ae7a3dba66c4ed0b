//! The transfer encodings a part with a long line is written in again:
//! quoted-printable (RFC 2045 §6.7) and base64 (§6.8), and the re-wrapping
//! of a part already in one of them whose lines are too long. Each takes a
//! part's content line by line, in pieces of any size, and holds at most a
//! few octets: every output line is at most [`LINE`] octets before its CRLF.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

/// RFC 2045's limit on an encoded line, without its CRLF.
pub(super) const LINE: usize = 76;

/// What becomes of a part with a line too long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Action {
    /// Text (7bit, 8bit or binary) as quoted-printable.
    QuotedPrintable,
    /// Anything else (7bit, 8bit or binary) as base64.
    Base64,
    /// Quoted-printable already: soft line breaks added.
    RewrapQuotedPrintable,
    /// Base64 already: its lines broken at 76 octets (decoders ignore
    /// line breaks in base64).
    RewrapBase64,
}

impl Action {
    /// A new encoder for one part.
    pub(super) fn encoder(self) -> Encoder {
        match self {
            Self::QuotedPrintable => Encoder::Qp(Qp::new(false)),
            Self::RewrapQuotedPrintable => Encoder::Qp(Qp::new(true)),
            Self::Base64 => Encoder::Base64(Base64::default()),
            Self::RewrapBase64 => Encoder::Wrap(Wrap::default()),
        }
    }

    /// The Content-Transfer-Encoding the part declares afterwards, when it
    /// changes.
    pub(super) fn declares(self) -> Option<&'static str> {
        match self {
            Self::QuotedPrintable => Some("quoted-printable"),
            Self::Base64 => Some("base64"),
            Self::RewrapQuotedPrintable | Self::RewrapBase64 => None,
        }
    }

    /// What was done, for the note.
    pub(super) fn done(self) -> &'static str {
        match self {
            Self::QuotedPrintable => "re-encoded as quoted-printable",
            Self::Base64 => "re-encoded as base64",
            Self::RewrapQuotedPrintable => "re-wrapped (its quoted-printable had a line too long)",
            Self::RewrapBase64 => "re-wrapped (its base64 had a line too long)",
        }
    }
}

/// One part's encoder. Its input is the part's content: the bytes of each
/// line ([`Encoder::data`], any number of pieces) and the line breaks
/// between them ([`Encoder::line_break`]); a line break that ends the
/// content is not part of it (the CRLF before a boundary delimiter).
#[derive(Debug)]
pub(super) enum Encoder {
    Qp(Qp),
    Base64(Base64),
    Wrap(Wrap),
}

impl Encoder {
    /// Appends the encoding of `bytes` (no CR or LF in them) to `out`.
    pub(super) fn data(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        match self {
            Self::Qp(q) => q.data(bytes, out),
            Self::Base64(b) => b.data(bytes, out),
            Self::Wrap(w) => w.data(bytes, out),
        }
    }

    /// A line break in the content.
    pub(super) fn line_break(&mut self, out: &mut Vec<u8>) {
        match self {
            Self::Qp(q) => {
                q.end_line(out);
                out.extend_from_slice(b"\r\n");
            }
            Self::Base64(b) => b.data(b"\r\n", out),
            Self::Wrap(w) => {
                w.col = 0;
                out.extend_from_slice(b"\r\n");
            }
        }
    }

    /// The end of the content: whatever is held back. No CRLF follows.
    pub(super) fn finish(&mut self, out: &mut Vec<u8>) {
        match self {
            Self::Qp(q) => q.end_line(out),
            Self::Base64(b) => b.flush(out),
            Self::Wrap(_) => {}
        }
    }

    /// Nothing has been written on the current output line.
    pub(super) fn at_line_start(&self) -> bool {
        match self {
            Self::Qp(q) => q.col == 0 && q.held.is_none() && q.escape.len == 0,
            Self::Base64(b) => b.len == 0 && !b.written,
            Self::Wrap(w) => w.col == 0,
        }
    }
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// One to three octets that stay together on an output line: a literal
/// octet or an `=XX` escape.
#[derive(Clone, Copy, Debug, Default)]
struct Token {
    bytes: [u8; 3],
    len: u8,
}

impl Token {
    fn literal(b: u8) -> Self {
        Self {
            bytes: [b, 0, 0],
            len: 1,
        }
    }

    fn escaped(b: u8) -> Self {
        Self {
            bytes: [b'=', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]],
            len: 3,
        }
    }

    fn as_slice(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    fn is_literal(&self, b: u8) -> bool {
        self.len == 1 && self.bytes[0] == b
    }
}

/// Quoted-printable: printable ASCII but `=` passes, every other octet is
/// `=XX`; white space is literal except at the end of a line; a line
/// longer than 76 gets soft breaks (`=` CRLF). The last token of a line is
/// held back until the next octet or the line's end says whether it is
/// the last (where white space must be escaped, and column 76 is free).
///
/// Re-wrapping reads quoted-printable instead of bytes: `=` and the two
/// octets after it are one token, everything else passes as it is, and
/// only soft breaks are added, never inside an escape.
#[derive(Debug)]
pub(super) struct Qp {
    rewrap: bool,
    /// Octets on the current output line.
    col: usize,
    held: Option<Token>,
    /// Re-wrapping: an `=` escape being read.
    escape: Token,
}

impl Qp {
    fn new(rewrap: bool) -> Self {
        Self {
            rewrap,
            col: 0,
            held: None,
            escape: Token::default(),
        }
    }

    fn data(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        for &b in bytes {
            if !self.rewrap {
                let t = match b {
                    b' ' | b'\t' | 33..=60 | 62..=126 => Token::literal(b),
                    _ => Token::escaped(b),
                };
                self.push(t, out);
            } else if self.escape.len > 0 {
                self.escape.bytes[usize::from(self.escape.len)] = b;
                self.escape.len += 1;
                if self.escape.len == 3 {
                    let t = std::mem::take(&mut self.escape);
                    self.push(t, out);
                }
            } else if b == b'=' {
                self.escape = Token::literal(b);
            } else {
                self.push(Token::literal(b), out);
            }
        }
    }

    fn push(&mut self, t: Token, out: &mut Vec<u8>) {
        if let Some(h) = self.held.replace(t) {
            self.emit(h, false, out);
        }
    }

    fn emit(&mut self, mut t: Token, last: bool, out: &mut Vec<u8>) {
        if last && !self.rewrap && (t.is_literal(b' ') || t.is_literal(b'\t')) {
            t = Token::escaped(t.bytes[0]);
        }
        // A token that is not the last must leave room for a soft break.
        let room = if last { LINE } else { LINE - 1 };
        if self.col + usize::from(t.len) > room {
            out.extend_from_slice(b"=\r\n");
            self.col = 0;
            // A line of its own starting "--" could pass for a boundary
            // delimiter with a lenient reader.
            if t.is_literal(b'-') {
                t = Token::escaped(b'-');
            }
        }
        out.extend_from_slice(t.as_slice());
        self.col += usize::from(t.len);
    }

    /// Ends the output line (without its CRLF).
    fn end_line(&mut self, out: &mut Vec<u8>) {
        if self.escape.len > 0 {
            let t = std::mem::take(&mut self.escape);
            self.push(t, out);
        }
        if let Some(h) = self.held.take() {
            self.emit(h, true, out);
        }
        self.col = 0;
    }
}

/// Octets per base64 line: 57 make 76 characters.
const GROUP: usize = LINE / 4 * 3;

/// Base64 in lines of 76, CRLF between them.
#[derive(Debug)]
pub(super) struct Base64 {
    buf: [u8; GROUP],
    len: usize,
    written: bool,
}

impl Default for Base64 {
    fn default() -> Self {
        Self {
            buf: [0; GROUP],
            len: 0,
            written: false,
        }
    }
}

impl Base64 {
    fn data(&mut self, mut bytes: &[u8], out: &mut Vec<u8>) {
        while !bytes.is_empty() {
            let n = (GROUP - self.len).min(bytes.len());
            self.buf[self.len..self.len + n].copy_from_slice(&bytes[..n]);
            self.len += n;
            bytes = &bytes[n..];
            if self.len == GROUP {
                self.flush(out);
            }
        }
    }

    fn flush(&mut self, out: &mut Vec<u8>) {
        if self.len == 0 {
            return;
        }
        if self.written {
            out.extend_from_slice(b"\r\n");
        }
        let input = &self.buf[..self.len];
        let mut line = [0u8; LINE];
        match STANDARD.encode_slice(input, &mut line) {
            Ok(n) => out.extend_from_slice(&line[..n]),
            // Not reached: 57 octets make 76 characters.
            Err(_) => out.extend_from_slice(STANDARD.encode(input).as_bytes()),
        }
        self.len = 0;
        self.written = true;
    }
}

/// Base64 in lines of 76. Only the alphabet's characters are kept: RFC
/// 2045 §6.8 has decoders ignore every other one, so what decodes is the
/// same, and no piece of a cut line can turn into a boundary (`-` is not
/// in the alphabet).
#[derive(Debug, Default)]
pub(super) struct Wrap {
    col: usize,
}

impl Wrap {
    fn data(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        let alphabet = |b: &&u8| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=');
        for &b in bytes.iter().filter(alphabet) {
            if self.col == LINE {
                out.extend_from_slice(b"\r\n");
                self.col = 0;
            }
            out.push(b);
            self.col += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Feeds `lines` (no CR or LF in them) in pieces cut at `cuts`.
    fn encode(action: Action, lines: &[Vec<u8>], cuts: &[usize]) -> Vec<u8> {
        let mut e = action.encoder();
        let mut out = Vec::new();
        let mut cut = cuts.iter().cycle();
        for (i, line) in lines.iter().enumerate() {
            if i > 0 {
                e.line_break(&mut out);
            }
            let mut rest = &line[..];
            while !rest.is_empty() {
                let n = cut.next().map_or(rest.len(), |c| c % (rest.len() + 1));
                let n = n.max(1);
                e.data(&rest[..n], &mut out);
                rest = &rest[n..];
            }
        }
        e.finish(&mut out);
        out
    }

    /// RFC 2045 §6.7 decoding; `strict` asserts the rules an encoder must
    /// keep (printable ASCII, no white space before a hard line break).
    fn qp_decode(text: &[u8], strict: bool) -> Vec<u8> {
        let mut out = Vec::new();
        let lines: Vec<&[u8]> = split_crlf(text);
        for (i, line) in lines.iter().enumerate() {
            let (body, soft) = match line.strip_suffix(b"=") {
                Some(b) => (b, true),
                None => (*line, false),
            };
            if strict {
                assert!(
                    line.iter()
                        .all(|&b| b == b' ' || b == b'\t' || (33..=126).contains(&b))
                );
                if !soft {
                    assert!(!matches!(line.last(), Some(b' ' | b'\t')), "{line:?}");
                }
            }
            let mut j = 0;
            while j < body.len() {
                if body[j] == b'=' {
                    let hex = |c: u8| HEX.iter().position(|&h| h == c).unwrap() as u8;
                    out.push(hex(body[j + 1]) << 4 | hex(body[j + 2]));
                    j += 3;
                } else {
                    out.push(body[j]);
                    j += 1;
                }
            }
            if !soft && i + 1 < lines.len() {
                out.extend_from_slice(b"\r\n");
            }
        }
        out
    }

    fn split_crlf(text: &[u8]) -> Vec<&[u8]> {
        let mut lines = Vec::new();
        let mut rest = text;
        while let Some(i) = rest.windows(2).position(|w| w == b"\r\n") {
            lines.push(&rest[..i]);
            rest = &rest[i + 2..];
        }
        lines.push(rest);
        lines
    }

    fn joined(lines: &[Vec<u8>]) -> Vec<u8> {
        lines.join(&b"\r\n"[..])
    }

    fn line() -> impl Strategy<Value = Vec<u8>> {
        // Mostly text, some of every octet, and long lines.
        let octet = prop_oneof![
            4 => prop::sample::select(b"ab =-.\t".to_vec()),
            1 => any::<u8>(),
        ]
        .prop_filter("no line ends", |b| *b != b'\r' && *b != b'\n');
        prop::collection::vec(octet, 0..400)
    }

    proptest! {
        #[test]
        fn quoted_printable_decodes_to_its_input_in_lines_of_76(
            lines in prop::collection::vec(line(), 1..8),
            cuts in prop::collection::vec(any::<usize>(), 1..5),
        ) {
            let text = encode(Action::QuotedPrintable, &lines, &cuts);
            prop_assert_eq!(qp_decode(&text, true), joined(&lines));
            let out = split_crlf(&text);
            prop_assert!(out.iter().all(|l| l.len() <= LINE));
            // No line after a soft break starts a would-be boundary.
            for w in out.windows(2) {
                prop_assert!(!(w[0].ends_with(b"=") && w[1].starts_with(b"-")));
            }
        }

        #[test]
        fn rewrapped_quoted_printable_decodes_the_same(
            lines in prop::collection::vec(line(), 1..8),
            cuts in prop::collection::vec(any::<usize>(), 1..5),
        ) {
            // Quoted-printable with no line limit, as a long-line sender writes it.
            let long: Vec<Vec<u8>> = lines
                .iter()
                .map(|l| {
                    let text = encode(Action::QuotedPrintable, std::slice::from_ref(l), &[usize::MAX]);
                    text.split(|&b| b == b'\n').flat_map(|p| p.strip_suffix(b"=\r").unwrap_or(p).to_vec()).collect()
                })
                .collect();
            let text = encode(Action::RewrapQuotedPrintable, &long, &cuts);
            prop_assert!(split_crlf(&text).iter().all(|l| l.len() <= LINE));
            prop_assert_eq!(qp_decode(&text, false), qp_decode(&joined(&long), false));
            prop_assert_eq!(qp_decode(&text, false), joined(&lines));
        }

        #[test]
        fn base64_decodes_to_its_input_in_lines_of_76(
            bytes in prop::collection::vec(any::<u8>(), 0..2000),
            cuts in prop::collection::vec(any::<usize>(), 1..5),
        ) {
            let text = encode(Action::Base64, std::slice::from_ref(&bytes), &cuts);
            let lines = split_crlf(&text);
            for (i, l) in lines.iter().enumerate() {
                prop_assert!(l.len() == LINE || (i + 1 == lines.len() && l.len() <= LINE));
            }
            prop_assert_eq!(STANDARD.decode(lines.concat()).unwrap(), bytes);
        }

        #[test]
        fn rewrapped_base64_decodes_the_same(
            bytes in prop::collection::vec(any::<u8>(), 0..3000),
            cuts in prop::collection::vec(any::<usize>(), 1..5),
        ) {
            let long = STANDARD.encode(&bytes).into_bytes();
            let text = encode(Action::RewrapBase64, &[long], &cuts);
            let lines = split_crlf(&text);
            prop_assert!(lines.iter().all(|l| l.len() <= LINE));
            prop_assert_eq!(STANDARD.decode(lines.concat()).unwrap(), bytes);
        }
    }

    #[test]
    fn rewrapped_base64_keeps_only_its_alphabet_so_no_boundary_appears() {
        // Garbage in a base64 part that a cut at 76 would have left as a
        // line of its own: "--BOUNDARY" (a new MIME part, smuggled).
        let mut long = b"QUJD".repeat(18);
        long.extend_from_slice(b"xxxx\r\n--BOUNDARY\r\nContent-Type: text/html\r\n\r\nSMUGGLED");
        long.extend(b"QUJD".repeat(300));
        let text = encode(Action::RewrapBase64, &[long], &[usize::MAX]);
        let text = String::from_utf8(text).unwrap();
        assert!(
            !text.contains('-') && !text.contains(' ') && !text.contains(':'),
            "{text}"
        );
        assert!(split_crlf(text.as_bytes()).iter().all(|l| l.len() <= LINE));
    }

    #[test]
    fn quoted_printable_vectors() {
        let qp = |s: &[u8]| encode(Action::QuotedPrintable, &[s.to_vec()], &[usize::MAX]);
        assert_eq!(qp(b"a=b"), b"a=3Db");
        assert_eq!(qp(b"tail \t"), b"tail =09");
        assert_eq!(qp(b"caf\xc3\xa9"), b"caf=C3=A9");
        assert_eq!(qp(b"a\0b"), b"a=00b");
        // 76 fit on the last line; 77 do not.
        assert_eq!(qp(&[b'x'; 76]), [b'x'; 76]);
        let mut soft = [b'x'; 75].to_vec();
        soft.extend_from_slice(b"=\r\nxx");
        assert_eq!(qp(&[b'x'; 77]), soft);
        // An escape is never cut; a continuation never starts with "-".
        let mut s = [b'x'; 74].to_vec();
        s.extend_from_slice(b"=");
        assert_eq!(qp(&s)[74..], b"=\r\n=3D"[..]);
        let mut s = [b'x'; 75].to_vec();
        s.extend_from_slice(b"-y");
        assert_eq!(qp(&s)[75..], b"=\r\n=2Dy"[..]);
        let two = encode(
            Action::QuotedPrintable,
            &[b"a ".to_vec(), b"b".to_vec()],
            &[],
        );
        assert_eq!(two, b"a=20\r\nb");
    }
}
