//! Header fields as re-encoding needs them: an entity's Content-Type and
//! Content-Transfer-Encoding (RFC 2045, RFC 2046), the signature fields
//! that forbid any change, and the folding of a field line over 998
//! octets at its white space (RFC 5322 §2.2.3).

use crate::message::field_name;

use super::MAX_LINE;

/// The line length folding aims at (RFC 5322 §2.1.1's "should").
const FOLD_AT: usize = 78;

/// Fields whose signature covers the body and the header as they are.
const SIGNATURES: [&str; 2] = ["DKIM-Signature", "ARC-Message-Signature"];

/// What an entity's header section says about its body.
#[derive(Debug, Default)]
pub(super) struct Fields {
    /// The Content-Type field's value(s), unfolded.
    content_type: Vec<Vec<u8>>,
    /// The Content-Transfer-Encoding, lower case, if given.
    pub(super) encoding: Option<String>,
    pub(super) mime_version: bool,
    /// A signature field, by name.
    pub(super) signature: Option<&'static str>,
}

/// A Content-Type read strictly: `type/subtype` in lower case, and the
/// boundary when it is a valid one (RFC 2046 §5.1.1).
#[derive(Debug, PartialEq, Eq)]
pub(super) struct MediaType {
    pub(super) essence: String,
    pub(super) boundary: Option<Vec<u8>>,
}

impl Fields {
    /// Reads a header section (CRLF line ends; a blank line ends it).
    pub(super) fn parse(section: &[u8]) -> Self {
        let mut fields = Self::default();
        for (name, value) in unfolded(section) {
            let is = |n: &str| name.eq_ignore_ascii_case(n.as_bytes());
            if is("Content-Type") {
                fields.content_type.push(value);
            } else if is("Content-Transfer-Encoding") {
                let v = String::from_utf8_lossy(&value).trim().to_ascii_lowercase();
                let token = v.split([' ', '\t', '(', ';']).next().unwrap_or_default();
                // Two fields: readers disagree on which applies, so the part
                // is left as it is (an encoding nothing here re-encodes).
                fields.encoding = Some(match fields.encoding {
                    Some(_) => "given twice".to_owned(),
                    None => token.to_owned(),
                });
            } else if is("MIME-Version") {
                fields.mime_version = true;
            } else if let Some(s) = SIGNATURES.iter().find(|s| is(s)) {
                fields.signature.get_or_insert(s);
            }
        }
        fields
    }

    /// The declared media type: `Ok(None)` when there is none (the
    /// default applies), `Err` when it cannot be relied on.
    pub(super) fn media_type(&self) -> Result<Option<MediaType>, &'static str> {
        match &self.content_type[..] {
            [] => Ok(None),
            [one] => media_type(one)
                .map(Some)
                .ok_or("its Content-Type cannot be read"),
            _ => Err("it has more than one Content-Type"),
        }
    }
}

/// The fields of a header section: (name, value unfolded).
fn unfolded(section: &[u8]) -> Vec<(&[u8], Vec<u8>)> {
    let mut out: Vec<(&[u8], Vec<u8>)> = Vec::new();
    for line in section.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            break;
        }
        if matches!(line.first(), Some(b' ' | b'\t')) {
            if let Some((_, value)) = out.last_mut() {
                value.extend_from_slice(line);
            }
            continue;
        }
        if let Some(name) = field_name(line) {
            let colon = line.iter().position(|&b| b == b':').unwrap_or(line.len());
            out.push((name, line[colon + 1..].to_vec()));
        }
    }
    out
}

/// Parses a Content-Type value: `type "/" subtype *(";" parameter)`, with
/// comments and quoted strings. `None` when the type is not well formed,
/// or the boundary is given twice.
fn media_type(value: &[u8]) -> Option<MediaType> {
    let mut p = Parser { s: value, at: 0 };
    let top = p.token()?;
    p.expect(b'/')?;
    let sub = p.token()?;
    let essence = format!("{top}/{sub}").to_ascii_lowercase();
    let mut boundary = None;
    let mut given = false;
    // Parameters: a malformed one ends the list (only the boundary
    // matters here, and a multipart without one is not walked).
    while p.expect(b';').is_some() {
        let Some(name) = p.token() else { break };
        if p.expect(b'=').is_none() {
            break;
        }
        let Some(value) = p.value() else { break };
        if name.eq_ignore_ascii_case("boundary") {
            if given {
                return Some(MediaType {
                    essence,
                    boundary: None,
                });
            }
            given = true;
            boundary = valid_boundary(value);
        }
    }
    Some(MediaType { essence, boundary })
}

/// RFC 2046 §5.1.1: 1 to 70 of `bchars`, not ending in a space.
fn valid_boundary(b: Vec<u8>) -> Option<Vec<u8>> {
    let bchar = |c: &u8| c.is_ascii_alphanumeric() || b"'()+_,-./:=? ".contains(c);
    (!b.is_empty() && b.len() <= 70 && b.iter().all(bchar) && b.last() != Some(&b' ')).then_some(b)
}

struct Parser<'a> {
    s: &'a [u8],
    at: usize,
}

impl Parser<'_> {
    /// Skips white space and comments (which nest).
    fn skip(&mut self) {
        let mut depth = 0usize;
        while let Some(&c) = self.s.get(self.at) {
            match c {
                b'(' => depth += 1,
                b')' if depth > 0 => depth -= 1,
                b'\\' if depth > 0 => self.at += 1,
                b' ' | b'\t' | b'\r' | b'\n' => {}
                _ if depth > 0 => {}
                _ => return,
            }
            self.at += 1;
        }
    }

    fn expect(&mut self, c: u8) -> Option<()> {
        self.skip();
        (self.s.get(self.at) == Some(&c)).then(|| self.at += 1)
    }

    /// An RFC 2045 token.
    fn token(&mut self) -> Option<String> {
        self.skip();
        let start = self.at;
        while let Some(&c) = self.s.get(self.at) {
            if c <= b' ' || c >= 127 || b"()<>@,;:\\\"/[]?=".contains(&c) {
                break;
            }
            self.at += 1;
        }
        (self.at > start).then(|| String::from_utf8_lossy(&self.s[start..self.at]).into_owned())
    }

    /// A token or a quoted string, as bytes.
    fn value(&mut self) -> Option<Vec<u8>> {
        self.skip();
        if self.s.get(self.at) != Some(&b'"') {
            return self.token().map(String::into_bytes);
        }
        self.at += 1;
        let mut out = Vec::new();
        loop {
            match *self.s.get(self.at)? {
                b'"' => {
                    self.at += 1;
                    return Some(out);
                }
                b'\\' => {
                    out.push(*self.s.get(self.at + 1)?);
                    self.at += 2;
                }
                // Unfolding left CRLF out already; a bare one is not text.
                b'\r' | b'\n' => return None,
                c => {
                    out.push(c);
                    self.at += 1;
                }
            }
        }
    }
}

/// `line` folded: CRLF inserted before white space so that each line is
/// at most 78 octets where the white space allows, and never over 998.
/// Only white space after the colon (in a continuation line, after its
/// first word) is used, and never where the next line would be white
/// space alone. `None` when no
/// folding keeps every line within 998 octets.
pub(super) fn fold(line: &[u8]) -> Option<Vec<u8>> {
    let wsp = |b: u8| b == b' ' || b == b'\t';
    // A continuation line folds anywhere after its leading white space.
    let colon = match line.first() {
        Some(&b) if wsp(b) => 0,
        _ => line.iter().position(|&b| b == b':')?,
    };
    let last_text = line.iter().rposition(|&b| !wsp(b))?;
    // Where a fold may go: the first white space of a run that has text
    // before it (after the colon) and text after it.
    let points: Vec<usize> = (colon + 1..=last_text)
        .filter(|&i| wsp(line[i]) && !wsp(line[i - 1]))
        .collect();
    let mut out = Vec::with_capacity(line.len() + line.len() / 30);
    let mut start = 0;
    let mut next = 0; // index into `points`
    while line.len() - start > FOLD_AT {
        // The last point within 78 octets, else the first after.
        let within = points[next..].partition_point(|&p| p - start <= FOLD_AT);
        let pick = match within {
            0 => points.get(next).copied(),
            n => Some(points[next + n - 1]),
        };
        let Some(at) = pick else { break };
        if (at - start) as u64 > MAX_LINE {
            return None;
        }
        out.extend_from_slice(&line[start..at]);
        out.extend_from_slice(b"\r\n");
        start = at;
        next = points.partition_point(|&p| p <= start);
    }
    if (line.len() - start) as u64 > MAX_LINE {
        return None;
    }
    out.extend_from_slice(&line[start..]);
    Some(out)
}

/// Writes a header section's lines (each ending in CRLF, no blank line)
/// again: lines over 998 octets folded, and with `encoding` the
/// Content-Transfer-Encoding fields replaced by one saying it (and
/// MIME-Version added when `add_version`).
pub(super) fn write_section(
    lines: &[u8],
    encoding: Option<&str>,
    add_version: bool,
    out: &mut Vec<u8>,
) {
    let mut skipping = false;
    for line in lines.split_inclusive(|&b| b == b'\n') {
        let text = line.strip_suffix(b"\n").unwrap_or(line);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        if !matches!(text.first(), Some(b' ' | b'\t')) {
            skipping = encoding.is_some()
                && field_name(text)
                    .is_some_and(|n| n.eq_ignore_ascii_case(b"Content-Transfer-Encoding"));
        }
        if skipping {
            continue;
        }
        match (text.len() > MAX_LINE as usize)
            .then(|| fold(text))
            .flatten()
        {
            Some(folded) => out.extend_from_slice(&folded),
            None => out.extend_from_slice(text),
        }
        out.extend_from_slice(b"\r\n");
    }
    if let Some(e) = encoding {
        if add_version {
            out.extend_from_slice(b"MIME-Version: 1.0\r\n");
        }
        out.extend_from_slice(format!("Content-Transfer-Encoding: {e}\r\n").as_bytes());
    }
}

/// What the message's own header section showed, as it was read
/// ([`crate::message`]): its long lines folded unless it is signed.
#[derive(Debug, Default)]
pub(crate) struct HeadFacts {
    /// Lines of the header section as read, its blank line included: the
    /// body's lines are numbered on from here.
    pub(super) lines: u64,
    /// A signature field: nothing may change.
    pub(super) signature: Option<&'static str>,
    /// The first line over 998 octets, left as it is (signed): (line, octets).
    pub(super) long: Option<(u64, u64)>,
    /// What was changed, for the note.
    pub(super) changes: Vec<String>,
}

impl HeadFacts {
    /// True when the header section carries a signature (DKIM or ARC):
    /// adding a field the signer listed would break it.
    pub(crate) fn is_signed(&self) -> bool {
        self.signature.is_some()
    }

    /// Facts about the header section of `lines` (without line ends).
    pub(crate) fn new(lines: &[&[u8]]) -> Self {
        let signature = lines
            .iter()
            .take_while(|l| !l.is_empty())
            .filter_map(|l| field_name(l))
            .find_map(|n| {
                SIGNATURES
                    .iter()
                    .find(|s| n.eq_ignore_ascii_case(s.as_bytes()))
            });
        Self {
            lines: lines.len() as u64,
            signature: signature.copied(),
            ..Self::default()
        }
    }

    /// Appends header line number `n` to `out`: folded when it is over
    /// 998 octets, unless the message is signed. `Err` says why it cannot
    /// be sent.
    pub(crate) fn line(&mut self, out: &mut Vec<u8>, line: &[u8], n: u64) -> Result<(), String> {
        let len = line.len() as u64;
        if len <= MAX_LINE {
            out.extend_from_slice(line);
            return Ok(());
        }
        if self.signature.is_some() {
            self.long.get_or_insert((n, len));
            out.extend_from_slice(line);
            return Ok(());
        }
        let Some(folded) = fold(line) else {
            return Err(format!(
                "line {n} of the header section is {len} octets, over SMTP's 998 limit, and has \
                 no white space to fold it at: shorten the header. Nothing was sent"
            ));
        };
        self.changes
            .push(format!("header line {n} ({len} octets) folded"));
        out.extend_from_slice(&folded);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unfold(text: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < text.len() {
            if text[i..].starts_with(b"\r\n") && matches!(text.get(i + 2), Some(b' ' | b'\t')) {
                i += 2;
            } else {
                out.push(text[i]);
                i += 1;
            }
        }
        out
    }

    #[test]
    fn two_transfer_encodings_leave_the_part_alone() {
        let f = Fields::parse(
            b"Content-Transfer-Encoding: 7bit\r\nContent-Transfer-Encoding: base64\r\n\r\n",
        );
        assert_eq!(f.encoding.as_deref(), Some("given twice"));
    }

    #[test]
    fn a_long_field_folds_at_white_space_and_unfolds_to_itself() {
        let words: Vec<String> = (0..400).map(|i| format!("word{i}")).collect();
        let line = format!("Subject: {}", words.join(" ")).into_bytes();
        let folded = fold(&line).unwrap();
        assert_eq!(unfold(&folded), line);
        for l in folded.split(|&b| b == b'\n') {
            let l = l.strip_suffix(b"\r").unwrap_or(l);
            assert!(l.len() <= FOLD_AT, "{}", String::from_utf8_lossy(l));
            assert!(
                l.iter().any(|b| !b" \t".contains(b)),
                "a line of white space"
            );
        }
        // A continuation line folds too.
        let more = format!("\t{}", words.join("  "));
        let folded = fold(more.as_bytes()).unwrap();
        assert_eq!(unfold(&folded), more.as_bytes());
        assert!(folded.starts_with(b"\tword0  word1"));
        // Runs of white space stay whole on the next line.
        let line = format!("X-List: {}", vec!["a".repeat(60); 20].join("   \t ")).into_bytes();
        let folded = fold(&line).unwrap();
        assert_eq!(unfold(&folded), line);
        assert!(folded.windows(3).all(|w| w != b"\r\n\r"));
    }

    #[test]
    fn a_field_without_white_space_to_fold_at_is_refused() {
        let mut line = b"Subject: ".to_vec();
        line.extend(std::iter::repeat_n(b'x', 1200));
        assert_eq!(fold(&line), None);
        // 998 octets between folds are enough.
        let ok = format!("References: {} {}", "a".repeat(990), "b".repeat(990));
        let folded = fold(ok.as_bytes()).unwrap();
        assert_eq!(unfold(&folded), ok.as_bytes());
        let mut facts = HeadFacts::new(&[&line, b""]);
        let e = facts.line(&mut Vec::new(), &line, 1).unwrap_err();
        assert!(
            e.contains("line 1 ") && e.contains("shorten the header"),
            "{e}"
        );
    }

    #[test]
    fn a_signed_header_is_not_folded() {
        let long = format!("Subject: {}", "word ".repeat(300));
        let lines: [&[u8]; 3] = [b"dkim-signature: v=1; bh=x", long.as_bytes(), b""];
        let mut facts = HeadFacts::new(&lines);
        assert_eq!(facts.signature, Some("DKIM-Signature"));
        let mut out = Vec::new();
        facts.line(&mut out, lines[1], 2).unwrap();
        assert_eq!(out, lines[1]);
        assert_eq!(facts.long, Some((2, long.len() as u64)));
    }

    #[test]
    fn content_types_are_read_strictly() {
        let t = |v: &str| media_type(v.as_bytes());
        assert_eq!(
            t(" Multipart/Alternative; boundary=\"b1 =_x\"; charset=utf-8"),
            Some(MediaType {
                essence: "multipart/alternative".into(),
                boundary: Some(b"b1 =_x".to_vec())
            })
        );
        assert_eq!(
            t("multipart/mixed (a comment) ;\tBOUNDARY=abc"),
            Some(MediaType {
                essence: "multipart/mixed".into(),
                boundary: Some(b"abc".to_vec())
            })
        );
        assert_eq!(
            t("text/html; charset=\"utf-8").unwrap().essence,
            "text/html"
        );
        assert_eq!(t("text"), None);
        assert_eq!(t("/html"), None);
        let no_boundary = |v: &str| t(v).unwrap().boundary;
        assert_eq!(no_boundary("multipart/mixed"), None);
        assert_eq!(no_boundary("multipart/mixed; boundary=\"\""), None);
        assert_eq!(no_boundary("multipart/mixed; boundary=\"ends \""), None);
        assert_eq!(
            no_boundary(&format!("multipart/mixed; boundary={}", "b".repeat(71))),
            None
        );
        assert_eq!(no_boundary("multipart/mixed; boundary=a; boundary=a"), None);
        let f = Fields::parse(
            b"Content-Type: text/plain\r\nContent-type: text/html\r\n\
              Content-Transfer-Encoding:  8BIT (raw)\r\n\r\n",
        );
        assert!(f.media_type().is_err());
        assert_eq!(f.encoding.as_deref(), Some("8bit"));
        let f = Fields::parse(b"Content-Type: multipart/mixed;\r\n boundary=\"x\"\r\n\r\n");
        assert_eq!(
            f.media_type().unwrap().unwrap().boundary,
            Some(b"x".to_vec())
        );
    }

    #[test]
    fn a_section_is_written_with_its_encoding_replaced() {
        let lines = b"Content-Type: text/html\r\nContent-Transfer-Encoding:\r\n 8bit\r\nX-A: b\r\n";
        let mut out = Vec::new();
        write_section(lines, Some("quoted-printable"), true, &mut out);
        assert_eq!(
            out,
            b"Content-Type: text/html\r\nX-A: b\r\nMIME-Version: 1.0\r\n\
              Content-Transfer-Encoding: quoted-printable\r\n"
        );
        let mut out = Vec::new();
        write_section(lines, None, true, &mut out);
        assert_eq!(out, lines);
    }
}
