//! A template's header fields rendered per row: values never break a line
//! (a value holding CR or LF is a bad row, so no field can be injected),
//! non-ASCII text goes as RFC 2047 encoded words, and in address fields
//! only the display name is encoded, each address checked. Text holding
//! `=?` (what an encoded word starts with) is encoded whole, so that a
//! value shaped like an encoded word shows as written, never decoded
//! into other text.

use mail_builder::headers::Header as _;
use mail_builder::headers::address::Address;
use smtp_core::address::Mailbox;

use super::template::{Escape, PlaceholderError, Text};

/// One header field of a template.
#[derive(Debug)]
pub(crate) struct Field {
    /// The name as written.
    pub(crate) name: String,
    /// The field as written (with its line ends), for a field without placeholders.
    raw: Vec<u8>,
    /// What a field with placeholders is made of.
    parts: Option<Value>,
}

#[derive(Debug)]
enum Value {
    /// Unstructured text (Subject, X-…): encoded words where needed.
    Text(Text),
    /// A list of addresses, each `display <address>` or `address`.
    Addresses(Vec<(Text, Text)>),
    /// Any other structured field: values must be ASCII.
    Structured(Text),
}

/// Fields whose value is a list of addresses.
const ADDRESS_FIELDS: &[&str] = &[
    "from",
    "sender",
    "reply-to",
    "to",
    "cc",
    "bcc",
    "resent-from",
    "resent-sender",
    "resent-to",
    "resent-cc",
];

/// Unstructured fields besides `X-…` and the `Content-Description`.
const TEXT_FIELDS: &[&str] = &["subject", "comments", "keywords", "content-description"];

impl Field {
    /// Parses a field (`raw`, CRLF line ends, continuation lines included).
    pub(crate) fn parse(raw: &[u8]) -> Result<Self, String> {
        let text = String::from_utf8_lossy(raw);
        let (name, value) = text
            .split_once(':')
            .ok_or_else(|| format!("{:?} is not a header field", text.trim_end()))?;
        let name = name.trim().to_owned();
        // Unfolded: the value as one line.
        let value = value.replace("\r\n", "").replace('\n', "");
        let value = value.trim();
        let parts = if value.contains("{{") {
            let bad = |e: PlaceholderError| format!("the {name} field: {e}");
            let lower = name.to_ascii_lowercase();
            Some(if ADDRESS_FIELDS.contains(&lower.as_str()) {
                let mut list = Vec::new();
                for item in split_addresses(value) {
                    let (display, address) = match (item.find('<'), item.rfind('>')) {
                        (Some(a), Some(b)) if a < b => {
                            let d = item[..a].trim();
                            let d = d
                                .strip_prefix('"')
                                .and_then(|d| d.strip_suffix('"'))
                                .unwrap_or(d);
                            (d, item[a + 1..b].trim())
                        }
                        _ => ("", item.trim()),
                    };
                    list.push((
                        Text::parse(display).map_err(bad)?,
                        Text::parse(address).map_err(bad)?,
                    ));
                }
                Value::Addresses(list)
            } else if TEXT_FIELDS.contains(&lower.as_str()) || lower.starts_with("x-") {
                Value::Text(Text::parse(value).map_err(bad)?)
            } else {
                Value::Structured(Text::parse(value).map_err(bad)?)
            })
        } else {
            None
        };
        Ok(Self {
            name,
            raw: raw.to_vec(),
            parts,
        })
    }

    /// The columns this field names.
    pub(crate) fn fields(&self) -> Vec<&str> {
        match &self.parts {
            None => Vec::new(),
            Some(Value::Text(t) | Value::Structured(t)) => t.fields().collect(),
            Some(Value::Addresses(list)) => list
                .iter()
                .flat_map(|(d, a)| d.fields().chain(a.fields()))
                .collect(),
        }
    }

    /// The unfolded value, as text.
    pub(crate) fn value(&self) -> String {
        let raw = String::from_utf8_lossy(&self.raw);
        raw.split_once(':')
            .map(|(_, v)| v.replace("\r\n", "").trim().to_owned())
            .unwrap_or_default()
    }

    /// Whether the field is named `name` (case-insensitive).
    pub(crate) fn is(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name)
    }

    /// The field for one row, with its CRLF; `Err` says why the row cannot
    /// have it.
    pub(crate) fn render<'a>(
        &self,
        value: impl Fn(&str) -> Option<&'a str> + Copy,
    ) -> Result<Vec<u8>, String> {
        let Some(parts) = &self.parts else {
            return Ok(self.raw.clone());
        };
        for f in self.fields() {
            if value(f).is_some_and(|v| v.contains(['\r', '\n'])) {
                return Err(format!(
                    "{f}: a line break in a value for the {} field",
                    self.name
                ));
            }
        }
        let mut out = format!("{}: ", self.name).into_bytes();
        let column = out.len();
        match parts {
            Value::Text(t) => {
                let v = t.render(value, Escape::None);
                let v = v.trim();
                if v.contains("=?") {
                    out.extend_from_slice(encoded_words(v, column).join("\r\n ").as_bytes());
                    out.extend_from_slice(b"\r\n");
                } else {
                    mail_builder::headers::text::Text::new(v.to_owned())
                        .write_header(&mut out, column);
                }
            }
            Value::Structured(t) => {
                let v = t.render(value, Escape::None);
                if !v.is_ascii() {
                    return Err(format!(
                        "the {} field cannot carry non-ASCII text ({v:?})",
                        self.name
                    ));
                }
                out.extend_from_slice(v.trim().as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            Value::Addresses(list) => {
                let mut addresses = Vec::new();
                // Display names holding `=?`, written by hand.
                let mut literal = false;
                for (d, a) in list {
                    let address = a.render(value, Escape::None);
                    let address = address.trim();
                    let mailbox = Mailbox::parse(address).map_err(|e| {
                        format!(
                            "the {} field: {address:?} is not an address: {e}",
                            self.name
                        )
                    })?;
                    let written = if address.is_ascii() || mailbox.needs_smtputf8() {
                        address.to_owned()
                    } else {
                        // An IDN domain as A-labels, as the composer writes it.
                        mailbox.to_string()
                    };
                    let display = d.render(value, Escape::None);
                    let display = display.trim();
                    literal |= display.contains("=?");
                    addresses.push((display.to_owned(), written));
                }
                if literal {
                    // One address a line, each written as mail_builder
                    // would (from column 1), or with its display name in
                    // encoded words.
                    let items: Vec<String> = addresses
                        .into_iter()
                        .enumerate()
                        .map(|(i, (display, written))| {
                            if display.contains("=?") {
                                let mut words =
                                    encoded_words(&display, if i == 0 { column } else { 1 });
                                words.push(format!("<{written}>"));
                                return words.join("\r\n ");
                            }
                            let mut one = Vec::new();
                            address(display, written)
                                .write_header(&mut one, if i == 0 { column } else { 1 });
                            String::from_utf8_lossy(&one).trim_end().to_owned()
                        })
                        .collect();
                    out.extend_from_slice(items.join(",\r\n ").as_bytes());
                    out.extend_from_slice(b"\r\n");
                } else {
                    let addresses = addresses
                        .into_iter()
                        .map(|(display, written)| address(display, written))
                        .collect();
                    Address::new_list(addresses).write_header(&mut out, column);
                }
            }
        }
        Ok(out)
    }
}

/// `written` with its display name, if it has one.
fn address(display: String, written: String) -> Address<'static> {
    if display.is_empty() {
        Address::from(written)
    } else {
        Address::from((display, written))
    }
}

/// `text` as RFC 2047 encoded words (UTF-8, base64), each holding whole
/// characters and fitting a line of 78 (the first from `column`, the
/// others after a folding space), to be separated by folding white space
/// (which decoding drops between encoded words).
fn encoded_words(text: &str, column: usize) -> Vec<String> {
    use base64::Engine as _;
    // `=?utf-8?b?` and `?=`, and a line's 78 characters.
    const FRAME: usize = 12;
    let octets = |column: usize| (78usize.saturating_sub(column + FRAME) / 4 * 3).max(6);
    let mut words = Vec::new();
    let mut start = 0;
    while start < text.len() {
        let room = octets(if words.is_empty() { column } else { 1 });
        let mut end = (start + room).min(text.len());
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let b64 = base64::engine::general_purpose::STANDARD.encode(&text.as_bytes()[start..end]);
        words.push(format!("=?utf-8?b?{b64}?="));
        start = end;
    }
    words
}

/// The items of an address list: split at commas outside quotes, angle
/// brackets and comments.
fn split_addresses(value: &str) -> Vec<&str> {
    let mut items = Vec::new();
    let (mut quoted, mut angle, mut comment, mut escaped) = (false, false, 0u32, false);
    let mut start = 0;
    for (i, c) in value.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' => escaped = true,
            '"' if comment == 0 => quoted = !quoted,
            '<' if !quoted && comment == 0 => angle = true,
            '>' if !quoted && comment == 0 => angle = false,
            '(' if !quoted => comment += 1,
            ')' if !quoted => comment = comment.saturating_sub(1),
            ',' if !quoted && !angle && comment == 0 => {
                items.push(&value[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(&value[start..]);
    items.retain(|i| !i.trim().is_empty());
    items
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<&'a str> + Copy {
        move |k| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| *v)
    }

    fn render(field: &str, pairs: &[(&str, &str)]) -> Result<String, String> {
        Field::parse(field.as_bytes())?
            .render(row(pairs))
            .map(|b| String::from_utf8(b).unwrap())
    }

    #[test]
    fn only_the_display_name_of_an_address_is_encoded() {
        let out = render(
            "To: {{name}} <{{email}}>, \"Other, Person\" <o@example.org>\r\n",
            &[("name", "Jörg Müller, Jr."), ("email", "jorg@example.org")],
        )
        .unwrap();
        assert!(out.starts_with("To: =?utf-8?"), "{out}");
        assert!(out.is_ascii());
        assert!(out.contains("<jorg@example.org>"), "{out}");
        let unfolded = out.replace("\r\n ", " ");
        assert!(
            unfolded.contains("\"Other, Person\" <o@example.org>"),
            "{out}"
        );
        let message = format!("{out}\r\nx");
        let parsed = mail_parser::MessageParser::default()
            .parse(message.as_bytes())
            .unwrap();
        let to = parsed.to().unwrap().first().unwrap();
        assert_eq!(to.name(), Some("Jörg Müller, Jr."));
        assert_eq!(to.address(), Some("jorg@example.org"));
    }

    #[test]
    fn a_value_with_a_line_break_cannot_make_a_field() {
        for v in [
            "x\r\nBcc: victim@example.org",
            "x\nBcc: v@example.org",
            "x\r",
        ] {
            let e = render("Subject: Hi {{name}}\r\n", &[("name", v)]).unwrap_err();
            assert!(e.contains("line break"), "{e}");
        }
        assert!(render("X-Id: {{id}}\r\n", &[("id", "a\nb")]).is_err());
    }

    #[test]
    fn a_bad_address_is_the_rows_fault() {
        let e = render("To: <{{email}}>\r\n", &[("email", "not an address")]).unwrap_err();
        assert!(e.contains("is not an address"), "{e}");
    }

    #[test]
    fn a_structured_field_refuses_non_ascii_values() {
        assert!(render("In-Reply-To: <{{id}}>\r\n", &[("id", "é@x")]).is_err());
        assert_eq!(
            render("In-Reply-To: <{{id}}>\r\n", &[("id", "1@x")]).unwrap(),
            "In-Reply-To: <1@x>\r\n"
        );
    }

    #[test]
    fn a_value_shaped_like_an_encoded_word_shows_as_written() {
        let spoof = "=?utf-8?q?Invoice=0ABcc:_boss@example.org?=";
        for field in [
            "Subject: Hi {{v}}\r\n",
            "X-Note: {{v}}\r\n",
            "To: {{v}} <a@example.org>, Other <o@example.org>\r\n",
        ] {
            let out = render(field, &[("v", spoof)]).unwrap();
            assert!(out.is_ascii(), "{out}");
            assert!(!out.contains(spoof), "{field}: {out}");
            for line in out.trim_end().split("\r\n") {
                assert!(line.len() <= 78, "{out}");
            }
            let message = format!("{out}\r\nx");
            let parsed = mail_parser::MessageParser::default()
                .parse(message.as_bytes())
                .unwrap();
            if field.starts_with("Subject") {
                assert_eq!(parsed.subject(), Some(format!("Hi {spoof}").as_str()));
            } else if field.starts_with("To") {
                let to: Vec<_> = parsed.to().unwrap().iter().collect();
                assert_eq!(to.len(), 2, "{out}");
                assert_eq!(to[0].name(), Some(spoof), "{out}");
                assert_eq!(to[0].address(), Some("a@example.org"));
                assert_eq!(to[1].name(), Some("Other"), "{out}");
            }
        }
        // Long and non-ASCII: whole characters in each word.
        let long = format!("=?{}", "é".repeat(80));
        let out = render("Subject: {{v}}\r\n", &[("v", long.as_str())]).unwrap();
        let message = format!("{out}\r\nx");
        let parsed = mail_parser::MessageParser::default()
            .parse(message.as_bytes())
            .unwrap();
        assert_eq!(parsed.subject(), Some(long.as_str()));
    }

    proptest::proptest! {
        #[test]
        fn no_value_adds_a_header_line(v in "\\PC*", w in ".*") {
            let value = format!("{v}\r\n{w}");
            for field in ["Subject: {{v}}\r\n", "X-A: {{v}}\r\n", "To: {{v}} <a@example.org>\r\n"] {
                for value in [&value, &v] {
                    if let Ok(out) = render(field, &[("v", value.as_str())]) {
                        let out = String::from_utf8_lossy(out.as_bytes()).into_owned();
                        // Every line after the first is a continuation.
                        for line in out.trim_end_matches("\r\n").split("\r\n").skip(1) {
                            proptest::prop_assert!(line.starts_with([' ', '\t']), "{out:?}");
                        }
                        proptest::prop_assert!(!out.trim_end_matches("\r\n").contains(['\r', '\n']) || out.contains("\r\n "), "{out:?}");
                        proptest::prop_assert!(!out.trim_end_matches("\r\n").replace("\r\n ", "").replace("\r\n\t", "").contains(['\r', '\n']), "{out:?}");
                    }
                }
            }
        }
    }
}
