//! `{{column}}` placeholders: text parsed once into literal runs and
//! placeholders, then rendered per row with each value escaped for where
//! it goes (as it is, HTML-escaped, percent-encoded).
//!
//! `{{ name }}` is the same placeholder as `{{name}}`; `\{{` is a literal
//! `{{`. A `{{` without its `}}` on the same line, and an empty `{{ }}`,
//! are errors.

use std::fmt;

/// A piece of parsed text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Segment {
    /// Written as it is.
    Literal(String),
    /// The row's value of this column.
    Field(String),
}

/// Text with placeholders.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Text {
    segments: Vec<Segment>,
}

/// Why text does not parse, and where (a character offset).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PlaceholderError {
    pub(crate) at: usize,
    pub(crate) why: &'static str,
}

impl fmt::Display for PlaceholderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at character {}: {}", self.at + 1, self.why)
    }
}

/// How a value is written into the text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Escape {
    /// As it is (text parts, headers: checked elsewhere).
    None,
    /// `&`, `<`, `>`, `"`, `'` as entities (HTML parts).
    Html,
    /// Percent-encoded but for RFC 3986's unreserved characters (URLs).
    Url,
}

impl Text {
    /// Parses `text`.
    pub(crate) fn parse(text: &str) -> Result<Self, PlaceholderError> {
        let mut segments = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        let mut at = 0;
        while let Some(i) = rest.find("{{") {
            if rest[..i].ends_with('\\') {
                // `\{{`: a literal `{{`, the backslash dropped.
                literal.push_str(&rest[..i - 1]);
                literal.push_str("{{");
                rest = &rest[i + 2..];
                at += i + 2;
                continue;
            }
            literal.push_str(&rest[..i]);
            let inner_start = i + 2;
            let line_end = rest[inner_start..]
                .find(['\n', '\r'])
                .map_or(rest.len(), |n| inner_start + n);
            let Some(close) = rest[inner_start..line_end].find("}}") else {
                return Err(PlaceholderError {
                    at: at + i,
                    why: "`{{` without `}}` on its line (write `\\{{` for a literal `{{`)",
                });
            };
            let name = rest[inner_start..inner_start + close].trim();
            if name.is_empty() {
                return Err(PlaceholderError {
                    at: at + i,
                    why: "an empty placeholder `{{}}`",
                });
            }
            if name.contains('{') {
                return Err(PlaceholderError {
                    at: at + i,
                    why: "a `{` inside a placeholder",
                });
            }
            if !literal.is_empty() {
                segments.push(Segment::Literal(std::mem::take(&mut literal)));
            }
            segments.push(Segment::Field(name.to_owned()));
            let end = inner_start + close + 2;
            rest = &rest[end..];
            at += end;
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            segments.push(Segment::Literal(literal));
        }
        Ok(Self { segments })
    }

    /// The columns named, in order, each as often as it appears.
    pub(crate) fn fields(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().filter_map(|s| match s {
            Segment::Field(f) => Some(f.as_str()),
            Segment::Literal(_) => None,
        })
    }

    /// The text with each placeholder replaced by `value(column)`, escaped.
    /// A column `value` does not know is written as empty (the columns are
    /// checked before anything is rendered).
    pub(crate) fn render<'a>(&self, value: impl Fn(&str) -> Option<&'a str>, e: Escape) -> String {
        let mut out = String::new();
        for s in &self.segments {
            match s {
                Segment::Literal(l) => out.push_str(l),
                Segment::Field(f) => escape_into(&mut out, value(f).unwrap_or_default(), e),
            }
        }
        out
    }
}

fn escape_into(out: &mut String, v: &str, e: Escape) {
    match e {
        Escape::None => out.push_str(v),
        Escape::Html => {
            for c in v.chars() {
                match c {
                    '&' => out.push_str("&amp;"),
                    '<' => out.push_str("&lt;"),
                    '>' => out.push_str("&gt;"),
                    '"' => out.push_str("&quot;"),
                    '\'' => out.push_str("&#39;"),
                    c => out.push(c),
                }
            }
        }
        Escape::Url => {
            const KEEP: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
                .remove(b'-')
                .remove(b'.')
                .remove(b'_')
                .remove(b'~');
            out.extend(percent_encoding::utf8_percent_encode(v, KEEP));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<&'a str> {
        move |k| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| *v)
    }

    #[test]
    fn placeholders_take_spaces_inside_their_braces() {
        let t = Text::parse("Hi {{name}}, {{ name }} and {{  first name }}!").unwrap();
        assert_eq!(
            t.fields().collect::<Vec<_>>(),
            ["name", "name", "first name"]
        );
        let v = [("name", "Ann"), ("first name", "A")];
        assert_eq!(t.render(row(&v), Escape::None), "Hi Ann, Ann and A!");
    }

    #[test]
    fn an_unclosed_or_empty_placeholder_is_an_error_with_its_place() {
        let e = Text::parse("ab {{name").unwrap_err();
        assert_eq!(e.at, 3);
        assert!(e.why.contains("without `}}`"), "{e}");
        // The `}}` must be on the same line.
        assert!(Text::parse("{{name\n}}").is_err());
        assert!(Text::parse("{{ }}").unwrap_err().why.contains("empty"));
        assert!(Text::parse("{{a{b}}").is_err());
    }

    #[test]
    fn a_backslash_makes_braces_literal() {
        let t = Text::parse(r"\{{name}} is {{name}}").unwrap();
        assert_eq!(t.fields().collect::<Vec<_>>(), ["name"]);
        assert_eq!(
            t.render(row(&[("name", "x")]), Escape::None),
            "{{name}} is x"
        );
        // Single braces are text.
        let t = Text::parse("{a} {b}} }}").unwrap();
        assert!(t.fields().next().is_none());
        assert_eq!(t.render(row(&[]), Escape::None), "{a} {b}} }}");
    }

    #[test]
    fn values_are_escaped_for_html_and_urls() {
        let t = Text::parse("<p>{{v}}</p>").unwrap();
        let v = [("v", "<script>alert('x')&\"</script>")];
        assert_eq!(
            t.render(row(&v), Escape::Html),
            "<p>&lt;script&gt;alert(&#39;x&#39;)&amp;&quot;&lt;/script&gt;</p>"
        );
        let t = Text::parse("https://e.example/u?e={{e}}").unwrap();
        assert_eq!(
            t.render(row(&[("e", "a+b@x.org&c=d é")]), Escape::Url),
            "https://e.example/u?e=a%2Bb%40x.org%26c%3Dd%20%C3%A9"
        );
    }

    proptest::proptest! {
        #[test]
        fn parsing_never_panics_and_literal_text_renders_as_itself(s in "[^{\\\\]*") {
            let t = Text::parse(&s).unwrap();
            proptest::prop_assert_eq!(t.render(|_| None, Escape::None), s);
        }

        #[test]
        fn any_text_parses_or_fails_without_panicking(s in ".*") {
            let _ = Text::parse(&s);
        }
    }
}
