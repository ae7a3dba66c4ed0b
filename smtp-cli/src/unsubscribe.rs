//! One-click unsubscribe (RFC 8058, on RFC 2369's List-Unsubscribe):
//! `--unsubscribe https://…` and `--unsubscribe-mailto ADDR` become
//!
//! ```text
//! List-Unsubscribe:
//!   <mailto:ADDR>,
//!   <https://…>
//! List-Unsubscribe-Post: List-Unsubscribe=One-Click
//! ```
//!
//! written as RFC 8058's §8 examples are; the Post field only with an
//! https URL (one-click needs one). Placeholders in either are filled per
//! row, each value percent-encoded. Both fields are among those DKIM
//! signs (and over-signs): RFC 8058 §4 requires the signature to cover them.

use crate::fail::Failure;
use crate::merge::template::{Escape, Text};
use crate::message::Prepared;

/// The unsubscribe fields to add to each message.
#[derive(Debug)]
pub(crate) struct Unsubscribe {
    url: Option<Text>,
    mailto: Option<Text>,
}

impl Unsubscribe {
    /// From `--unsubscribe` and `--unsubscribe-mailto`; `None` without either.
    pub(crate) fn new(url: Option<&str>, mailto: Option<&str>) -> Result<Option<Self>, Failure> {
        if url.is_none() && mailto.is_none() {
            return Ok(None);
        }
        let url = url
            .map(|u| {
                let u = u.trim();
                if !u.get(..8).is_some_and(|s| s.eq_ignore_ascii_case("https://")) {
                    return Err(Failure::usage(format!(
                        "--unsubscribe {u:?}: one-click unsubscribe needs an https:// URL (RFC 8058)"
                    )));
                }
                check(u, "--unsubscribe")
            })
            .transpose()?;
        let mailto = mailto
            .map(|m| {
                let m = m.trim();
                let m = m
                    .get(..7)
                    .filter(|s| s.eq_ignore_ascii_case("mailto:"))
                    .map_or(m, |_| &m[7..]);
                if !m.contains('@') {
                    return Err(Failure::usage(format!(
                        "--unsubscribe-mailto {m:?}: give an address (unsubscribe@example.org)"
                    )));
                }
                check(m, "--unsubscribe-mailto")
            })
            .transpose()?;
        Ok(Some(Self { url, mailto }))
    }

    /// The columns the two name.
    pub(crate) fn fields(&self) -> impl Iterator<Item = &str> {
        self.url.iter().chain(&self.mailto).flat_map(|t| t.fields())
    }

    /// The fields for one row (values percent-encoded), CRLF line ends.
    pub(crate) fn header<'a>(&self, value: impl Fn(&str) -> Option<&'a str> + Copy) -> Vec<u8> {
        let mut uris = Vec::new();
        if let Some(m) = &self.mailto {
            uris.push(format!("<mailto:{}>", m.render(value, Escape::Url)));
        }
        if let Some(u) = &self.url {
            uris.push(format!("<{}>", u.render(value, Escape::Url)));
        }
        let mut out = format!("List-Unsubscribe:\r\n  {}\r\n", uris.join(",\r\n  "));
        if self.url.is_some() {
            out.push_str("List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n");
        }
        out.into_bytes()
    }
}

impl Unsubscribe {
    /// Adds the fields to a single message (no `--merge`: no placeholders).
    pub(crate) fn add_to(&self, m: &mut Prepared) -> Result<(), Failure> {
        if self.fields().next().is_some() {
            return Err(Failure::usage(
                "--unsubscribe: placeholders ({{column}}) are filled in by --merge",
            ));
        }
        let has = m.head.split(|b| *b == b'\n').any(|line| {
            crate::message::field_name(line)
                .is_some_and(|n| n.eq_ignore_ascii_case(b"list-unsubscribe"))
        });
        if has {
            return Err(Failure::usage(format!(
                "{}: the message has a List-Unsubscribe field already: drop --unsubscribe or it",
                m.name
            )));
        }
        let fields = self.header(|_| None);
        m.size += fields.len() as u64;
        let mut head = fields;
        head.extend_from_slice(&m.head);
        m.head = head;
        Ok(())
    }
}

/// Parses a template given with `flag`: no line breaks, no `<`, `>` or
/// spaces outside placeholders (they would end the URI in the field).
fn check(t: &str, flag: &str) -> Result<Text, Failure> {
    let text = Text::parse(t).map_err(|e| Failure::usage(format!("{flag} {t:?}: {e}")))?;
    let literal = text.render(|_| Some(""), Escape::None);
    if literal.contains(|c: char| c.is_whitespace() || c == '<' || c == '>' || c.is_control()) {
        return Err(Failure::usage(format!(
            "{flag} {t:?}: spaces, `<` and `>` must be percent-encoded"
        )));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fields_are_written_as_rfc_8058_section_8_shows_them() {
        // §8.1, "Simple".
        let u = Unsubscribe::new(
            Some("https://example.com/unsubscribe.html?opaque=123456789"),
            None,
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            String::from_utf8(u.header(|_| None)).unwrap(),
            "List-Unsubscribe:\r\n  <https://example.com/unsubscribe.html?opaque=123456789>\r\n\
             List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
        );
        // §8.2, "Complex".
        let u = Unsubscribe::new(
            Some("https://example.com/unsubscribe.html?opaque=123456789"),
            Some("listrequest@example.com?subject=unsubscribe"),
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            String::from_utf8(u.header(|_| None)).unwrap(),
            "List-Unsubscribe:\r\n  <mailto:listrequest@example.com?subject=unsubscribe>,\r\n  \
             <https://example.com/unsubscribe.html?opaque=123456789>\r\n\
             List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
        );
    }

    #[test]
    fn a_mailto_alone_gets_no_one_click_field_and_values_are_percent_encoded() {
        let u = Unsubscribe::new(None, Some("mailto:u+{{id}}@example.org"))
            .unwrap()
            .unwrap();
        assert_eq!(
            String::from_utf8(u.header(|_| Some("a b>"))).unwrap(),
            "List-Unsubscribe:\r\n  <mailto:u+a%20b%3E@example.org>\r\n"
        );
    }

    #[test]
    fn one_click_needs_https() {
        assert!(Unsubscribe::new(Some("http://example.com/u"), None).is_err());
        assert!(Unsubscribe::new(Some("https://example.com/a b"), None).is_err());
        assert!(Unsubscribe::new(None, Some("nobody")).is_err());
    }
}
