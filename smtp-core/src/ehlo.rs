//! The server's EHLO reply turned into the capabilities a client acts on.
//!
//! Follows RFC 5321 §4.1.1.1 (`ehlo-ok-rsp`: the first line carries the server's domain and an
//! optional greeting, each further line one `ehlo-keyword *(SP ehlo-param)`), with the
//! extensions of RFC 1870 (SIZE), RFC 6152 (8BITMIME), RFC 6531 (SMTPUTF8), RFC 3207
//! (STARTTLS), RFC 4954 (AUTH), RFC 3461 (DSN), RFC 3030 (CHUNKING, BINARYMIME), RFC 2920
//! (PIPELINING), RFC 2034 (ENHANCEDSTATUSCODES) and RFC 8689 (REQUIRETLS).
//!
//! Parsing is lenient, because a client gains nothing by refusing a server over a cosmetic
//! fault: keywords are case-insensitive, extra spaces and tabs are ignored, and a line that is
//! not a valid keyword is kept in [`Capabilities::extensions`] but otherwise ignored. The
//! input is a [`Reply`], already bounded by the reply parser, so this needs no bounds of its own.
//!
//! Whether the reply is a success (250) is for the caller to check before calling
//! [`Capabilities::from_reply`]. What the client says of itself in EHLO is a [`ClientId`].

use std::fmt;

use crate::address::{AddressError, Domain};
use crate::reply::Reply;

/// What a server announced in its EHLO reply.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Capabilities {
    domain: String,
    greeting: String,
    extensions: Vec<Extension>,
    auth_mechanisms: Vec<String>,
    size: Option<Size>,
}

/// The SIZE extension's declared limit (RFC 1870).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Size {
    /// SIZE advertised without a (usable) limit: `SIZE`, `SIZE 0`, or a malformed value.
    Unlimited,
    /// The largest message the server accepts, in bytes.
    Max(u64),
}

/// One EHLO line after the first: a keyword and its parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Extension {
    /// The keyword, upper-cased (keywords are case-insensitive).
    pub keyword: String,
    /// The parameters in order, as the server sent them.
    pub params: Vec<String>,
}

impl Capabilities {
    /// Reads the capabilities from an EHLO reply: the first line is the server's domain and
    /// greeting text, each further line one keyword with its parameters.
    pub fn from_reply(reply: &Reply) -> Self {
        let mut lines = reply.lines().iter();
        let first = lines.next().map_or("", String::as_str).trim_start();
        let (domain, greeting) = first
            .split_once(|c: char| c.is_ascii_whitespace())
            .unwrap_or((first, ""));
        let mut caps = Self {
            domain: domain.to_owned(),
            greeting: greeting.trim().to_owned(),
            ..Self::default()
        };
        for line in lines {
            let mut words = line.split_ascii_whitespace();
            let Some(keyword) = words.next() else {
                continue;
            };
            let keyword = keyword.to_ascii_uppercase();
            let params: Vec<String> = words.map(str::to_owned).collect();
            if is_esmtp_keyword(&keyword) {
                match keyword.as_str() {
                    "SIZE" if caps.size.is_none() => {
                        caps.size = Some(parse_size(params.first().map(String::as_str)));
                    }
                    "AUTH" => caps.add_auth(params.iter().map(String::as_str)),
                    _ => {}
                }
            } else if let Some(mechanism) = keyword.strip_prefix("AUTH=") {
                // Pre-RFC 4954 servers announce `AUTH=LOGIN PLAIN` for old clients, usually
                // next to the standard `AUTH` line.
                caps.add_auth(std::iter::once(mechanism).chain(params.iter().map(String::as_str)));
            }
            caps.extensions.push(Extension { keyword, params });
        }
        caps
    }

    fn add_auth<'a>(&mut self, mechanisms: impl Iterator<Item = &'a str>) {
        for mechanism in mechanisms {
            let mechanism = mechanism.to_ascii_uppercase();
            if is_sasl_mechanism(&mechanism) && !self.auth_mechanisms.contains(&mechanism) {
                self.auth_mechanisms.push(mechanism);
            }
        }
    }

    /// The domain the server names itself with (first word of the first line); may be an
    /// address literal such as `[192.0.2.1]`, or empty if the server sent nothing.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The free text after the domain on the first line (may be empty).
    pub fn greeting(&self) -> &str {
        &self.greeting
    }

    /// PIPELINING (RFC 2920): commands may be sent in groups without waiting for each reply.
    pub fn pipelining(&self) -> bool {
        self.has("PIPELINING")
    }

    /// SIZE (RFC 1870): `None` if not advertised; otherwise the declared limit. With several
    /// SIZE lines, the first counts.
    pub fn size(&self) -> Option<Size> {
        self.size
    }

    /// 8BITMIME (RFC 6152): 8-bit message bodies are accepted with `BODY=8BITMIME`.
    pub fn eight_bit_mime(&self) -> bool {
        self.has("8BITMIME")
    }

    /// SMTPUTF8 (RFC 6531): UTF-8 addresses and headers are accepted.
    pub fn smtputf8(&self) -> bool {
        self.has("SMTPUTF8")
    }

    /// STARTTLS (RFC 3207): the connection can be upgraded to TLS.
    pub fn starttls(&self) -> bool {
        self.has("STARTTLS")
    }

    /// AUTH (RFC 4954) mechanisms, upper-cased, deduplicated, in the server's order; gathered
    /// from `AUTH` lines and the old `AUTH=` form. Names that are not valid SASL mechanism
    /// names (RFC 4422 §3.1) are left out.
    pub fn auth_mechanisms(&self) -> &[String] {
        &self.auth_mechanisms
    }

    /// Whether the server offers the SASL `mechanism` (case-insensitive).
    pub fn supports_auth(&self, mechanism: &str) -> bool {
        self.auth_mechanisms
            .iter()
            .any(|m| m.eq_ignore_ascii_case(mechanism))
    }

    /// DSN (RFC 3461): delivery status notifications can be requested.
    pub fn dsn(&self) -> bool {
        self.has("DSN")
    }

    /// CHUNKING (RFC 3030): BDAT may be used instead of DATA.
    pub fn chunking(&self) -> bool {
        self.has("CHUNKING")
    }

    /// BINARYMIME (RFC 3030), as advertised. RFC 3030 allows it only together with CHUNKING,
    /// so a client should check [`chunking`](Self::chunking) too before using it.
    pub fn binary_mime(&self) -> bool {
        self.has("BINARYMIME")
    }

    /// ENHANCEDSTATUSCODES (RFC 2034): replies carry RFC 3463 status codes.
    pub fn enhanced_status_codes(&self) -> bool {
        self.has("ENHANCEDSTATUSCODES")
    }

    /// REQUIRETLS (RFC 8689): the server can honour `MAIL FROM:<...> REQUIRETLS`.
    pub fn requiretls(&self) -> bool {
        self.has("REQUIRETLS")
    }

    /// Every line after the first as keyword and parameters, in order, including unknown
    /// keywords, duplicates and lines that are not valid keywords.
    pub fn extensions(&self) -> &[Extension] {
        &self.extensions
    }

    /// Whether a line with this keyword was sent (case-insensitive). Compares whole keywords:
    /// `has("AUTH")` is false when only the old `AUTH=LOGIN` form was sent; use
    /// [`auth_mechanisms`](Self::auth_mechanisms) for AUTH.
    pub fn has(&self, keyword: &str) -> bool {
        self.extensions
            .iter()
            .any(|e| e.keyword.eq_ignore_ascii_case(keyword))
    }
}

/// RFC 5321 §4.1.1.1: `ehlo-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-")`.
fn is_esmtp_keyword(word: &str) -> bool {
    let mut bytes = word.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphanumeric())
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// RFC 4422 §3.1: 1 to 20 of upper-case letters, digits, `-` and `_`.
fn is_sasl_mechanism(name: &str) -> bool {
    (1..=20).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// RFC 1870: `SIZE [number]`, 0 meaning no fixed limit.
///
/// A malformed value (not all digits, or too large for u64) is read as "SIZE supported, no
/// known limit": refusing to send would be worse, and a server that really has a limit still
/// enforces it with a 552 reply.
fn parse_size(param: Option<&str>) -> Size {
    match param {
        Some(value) if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
            match value.parse::<u64>() {
                Ok(0) | Err(_) => Size::Unlimited,
                Ok(max) => Size::Max(max),
            }
        }
        _ => Size::Unlimited,
    }
}

/// The EHLO/HELO argument: a domain or an address literal (RFC 5321 §4.1.4).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ClientId(Domain);

impl ClientId {
    /// Validates a host name or address literal such as `[192.0.2.1]`.
    pub fn parse(s: &str) -> Result<Self, AddressError> {
        Domain::parse(s).map(Self)
    }

    /// The wire form.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// `localhost`.
    pub fn localhost() -> Self {
        // `localhost` is a valid domain: this cannot fail.
        Self(Domain::parse("localhost").expect("localhost is a valid domain"))
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reply::{ReplyLimits, Status, parse_reply};

    /// Parses the lines (without line endings) as one reply and reads the capabilities.
    fn caps(lines: &[&str]) -> Capabilities {
        let wire: String = lines.iter().map(|l| format!("{l}\r\n")).collect();
        match parse_reply(wire.as_bytes(), &ReplyLimits::default()) {
            Ok(Status::Complete((n, reply))) if n == wire.len() => Capabilities::from_reply(&reply),
            other => panic!("test banner did not parse as one reply: {other:?}"),
        }
    }

    /// Expected accessor values, one banner per row.
    struct Want {
        domain: &'static str,
        greeting: &'static str,
        size: Option<Size>,
        auth: &'static [&'static str],
        /// The boolean accessors that are true; all others must be false.
        flags: &'static [&'static str],
        keywords: &'static [&'static str],
    }

    fn flags(c: &Capabilities) -> Vec<&'static str> {
        let all = [
            ("PIPELINING", c.pipelining()),
            ("8BITMIME", c.eight_bit_mime()),
            ("SMTPUTF8", c.smtputf8()),
            ("STARTTLS", c.starttls()),
            ("DSN", c.dsn()),
            ("CHUNKING", c.chunking()),
            ("BINARYMIME", c.binary_mime()),
            ("ENHANCEDSTATUSCODES", c.enhanced_status_codes()),
            ("REQUIRETLS", c.requiretls()),
        ];
        all.iter()
            .filter(|(_, on)| *on)
            .map(|(name, _)| *name)
            .collect()
    }

    macro_rules! banners {
        ($($name:ident: [$($line:expr),* $(,)?] => $want:expr;)*) => {$(
            #[test]
            fn $name() {
                let c = caps(&[$($line),*]);
                let want: Want = $want;
                assert_eq!(c.domain(), want.domain);
                assert_eq!(c.greeting(), want.greeting);
                assert_eq!(c.size(), want.size);
                assert_eq!(c.auth_mechanisms(), want.auth);
                assert_eq!(flags(&c), want.flags);
                let keywords: Vec<&str> = c.extensions().iter().map(|e| e.keyword.as_str()).collect();
                assert_eq!(keywords, want.keywords);
                for flag in want.flags {
                    assert!(c.has(flag) && c.has(&flag.to_ascii_lowercase()), "{flag}");
                }
            }
        )*};
    }

    banners! {
        postfix: [
            "250-mail.example.com", "250-PIPELINING", "250-SIZE 10240000", "250-VRFY",
            "250-ETRN", "250-STARTTLS", "250-ENHANCEDSTATUSCODES", "250-8BITMIME", "250-DSN",
            "250-SMTPUTF8", "250 CHUNKING",
        ] => Want {
            domain: "mail.example.com", greeting: "", size: Some(Size::Max(10_240_000)), auth: &[],
            flags: &["PIPELINING", "8BITMIME", "SMTPUTF8", "STARTTLS", "DSN", "CHUNKING",
                     "ENHANCEDSTATUSCODES"],
            keywords: &["PIPELINING", "SIZE", "VRFY", "ETRN", "STARTTLS", "ENHANCEDSTATUSCODES",
                        "8BITMIME", "DSN", "SMTPUTF8", "CHUNKING"],
        };
        gmail: [
            "250-smtp.gmail.com at your service, [1.2.3.4]", "250-SIZE 35882577",
            "250-8BITMIME",
            "250-AUTH LOGIN PLAIN XOAUTH2 PLAIN-CLIENTTOKEN OAUTHBEARER XOAUTH",
            "250-ENHANCEDSTATUSCODES", "250-PIPELINING", "250-CHUNKING", "250 SMTPUTF8",
        ] => Want {
            domain: "smtp.gmail.com", greeting: "at your service, [1.2.3.4]",
            size: Some(Size::Max(35_882_577)),
            auth: &["LOGIN", "PLAIN", "XOAUTH2", "PLAIN-CLIENTTOKEN", "OAUTHBEARER", "XOAUTH"],
            flags: &["PIPELINING", "8BITMIME", "SMTPUTF8", "CHUNKING", "ENHANCEDSTATUSCODES"],
            keywords: &["SIZE", "8BITMIME", "AUTH", "ENHANCEDSTATUSCODES", "PIPELINING",
                        "CHUNKING", "SMTPUTF8"],
        };
        gmail_before_starttls: [
            "250-smtp.gmail.com at your service, [1.2.3.4]", "250-SIZE 35882577",
            "250-8BITMIME", "250-STARTTLS", "250-ENHANCEDSTATUSCODES", "250-PIPELINING",
            "250-CHUNKING", "250 SMTPUTF8",
        ] => Want {
            domain: "smtp.gmail.com", greeting: "at your service, [1.2.3.4]",
            size: Some(Size::Max(35_882_577)), auth: &[],
            flags: &["PIPELINING", "8BITMIME", "SMTPUTF8", "STARTTLS", "CHUNKING",
                     "ENHANCEDSTATUSCODES"],
            keywords: &["SIZE", "8BITMIME", "STARTTLS", "ENHANCEDSTATUSCODES", "PIPELINING",
                        "CHUNKING", "SMTPUTF8"],
        };
        office365: [
            "250-BN8PR12CA0001.outlook.office365.com Hello [1.2.3.4]", "250-SIZE 157286400",
            "250-PIPELINING", "250-DSN", "250-ENHANCEDSTATUSCODES", "250-AUTH LOGIN XOAUTH2",
            "250-8BITMIME", "250-BINARYMIME", "250-CHUNKING", "250 SMTPUTF8",
        ] => Want {
            domain: "BN8PR12CA0001.outlook.office365.com", greeting: "Hello [1.2.3.4]",
            size: Some(Size::Max(157_286_400)), auth: &["LOGIN", "XOAUTH2"],
            flags: &["PIPELINING", "8BITMIME", "SMTPUTF8", "DSN", "CHUNKING", "BINARYMIME",
                     "ENHANCEDSTATUSCODES"],
            keywords: &["SIZE", "PIPELINING", "DSN", "ENHANCEDSTATUSCODES", "AUTH", "8BITMIME",
                        "BINARYMIME", "CHUNKING", "SMTPUTF8"],
        };
        old_auth_forms: [
            "250-mail.old.example", "250-AUTH=LOGIN PLAIN", "250-AUTH LOGIN PLAIN CRAM-MD5",
            "250-SIZE", "250 HELP",
        ] => Want {
            domain: "mail.old.example", greeting: "", size: Some(Size::Unlimited),
            auth: &["LOGIN", "PLAIN", "CRAM-MD5"], flags: &[],
            keywords: &["AUTH=LOGIN", "AUTH", "SIZE", "HELP"],
        };
        exim: [
            "250-mx.example.org Hello client.example.com [192.0.2.1]", "250-SIZE 52428800",
            "250-8BITMIME", "250-PIPELINING", "250-PIPE_CONNECT", "250-CHUNKING", "250-PRDR",
            "250-AUTH PLAIN LOGIN CRAM-MD5", "250-STARTTLS", "250 HELP",
        ] => Want {
            domain: "mx.example.org", greeting: "Hello client.example.com [192.0.2.1]",
            size: Some(Size::Max(52_428_800)), auth: &["PLAIN", "LOGIN", "CRAM-MD5"],
            flags: &["PIPELINING", "8BITMIME", "STARTTLS", "CHUNKING"],
            keywords: &["SIZE", "8BITMIME", "PIPELINING", "PIPE_CONNECT", "CHUNKING", "PRDR",
                        "AUTH", "STARTTLS", "HELP"],
        };
        no_extensions: ["250 example.com"] => Want {
            domain: "example.com", greeting: "", size: None, auth: &[], flags: &[], keywords: &[],
        };
        rfc5321_d1: [
            "250-foo.com greets bar.com", "250-8BITMIME", "250-SIZE", "250-DSN", "250 HELP",
        ] => Want {
            domain: "foo.com", greeting: "greets bar.com", size: Some(Size::Unlimited), auth: &[],
            flags: &["8BITMIME", "DSN"], keywords: &["8BITMIME", "SIZE", "DSN", "HELP"],
        };
        sloppy: [
            "250-  mx.sloppy.example   hi  there ", "250-pipelining", "250-  size   1000  ",
            "250-", "250- \t ", "250-auth\tlogin  Plain login", "250-StartTLS", "250-REQUIRETLS",
            "250-8bitmime extra-param", "250 x-unknown-ext a b",
        ] => Want {
            domain: "mx.sloppy.example", greeting: "hi  there", size: Some(Size::Max(1000)),
            auth: &["LOGIN", "PLAIN"],
            flags: &["PIPELINING", "8BITMIME", "STARTTLS", "REQUIRETLS"],
            keywords: &["PIPELINING", "SIZE", "AUTH", "STARTTLS", "REQUIRETLS", "8BITMIME",
                        "X-UNKNOWN-EXT"],
        };
        invalid_keywords_ignored: [
            "250-host", "250--PIPELINING", "250-STARTTLS!", "250-SIZE=100", "250-AUTH= ",
            "250 \u{e9}STARTTLS",
        ] => Want {
            domain: "host", greeting: "", size: None, auth: &[], flags: &[],
            keywords: &["-PIPELINING", "STARTTLS!", "SIZE=100", "AUTH=", "\u{e9}STARTTLS"],
        };
    }

    #[test]
    fn size_values() {
        let cases = [
            ("250 SIZE", Size::Unlimited),
            ("250 SIZE 0", Size::Unlimited),
            ("250 SIZE 1", Size::Max(1)),
            ("250 SIZE 18446744073709551615", Size::Max(u64::MAX)),
            ("250 SIZE 18446744073709551616", Size::Unlimited),
            ("250 SIZE abc", Size::Unlimited),
            ("250 SIZE -1", Size::Unlimited),
            ("250 SIZE +5", Size::Unlimited),
            ("250 SIZE 10MB", Size::Unlimited),
            ("250 SIZE 10 20", Size::Max(10)),
        ];
        for (line, want) in cases {
            let c = caps(&["250-host", line]);
            assert_eq!(c.size(), Some(want), "{line}");
        }
        // With several SIZE lines the first counts.
        let c = caps(&["250-host", "250-SIZE 100", "250 SIZE 200"]);
        assert_eq!(c.size(), Some(Size::Max(100)));
    }

    #[test]
    fn auth_queries() {
        let c = caps(&[
            "250-host",
            "250-AUTH plain SCRAM-SHA-256",
            "250 AUTH PLAIN x$y",
        ]);
        assert_eq!(c.auth_mechanisms(), ["PLAIN", "SCRAM-SHA-256"]);
        assert!(c.supports_auth("plain"));
        assert!(c.supports_auth("scram-sha-256"));
        assert!(!c.supports_auth("LOGIN"));
        assert!(!c.supports_auth(""));
        assert!(c.has("auth"));
        // Mechanism names longer than RFC 4422 allows are left out.
        let c = caps(&[
            "250-host",
            "250 AUTH ABCDEFGHIJKLMNOPQRSTU ABCDEFGHIJKLMNOPQRST",
        ]);
        assert_eq!(c.auth_mechanisms(), ["ABCDEFGHIJKLMNOPQRST"]);
        // Only the old form: mechanisms found, but the AUTH keyword itself was not sent.
        let c = caps(&["250-host", "250 AUTH=LOGIN"]);
        assert_eq!(c.auth_mechanisms(), ["LOGIN"]);
        assert!(!c.has("AUTH"));
    }

    #[test]
    fn extensions_keep_params_and_duplicates() {
        let c = caps(&["250-host", "250-x-Foo a B", "250-PIPELINING", "250 X-FOO"]);
        let want = [
            Extension {
                keyword: "X-FOO".into(),
                params: vec!["a".into(), "B".into()],
            },
            Extension {
                keyword: "PIPELINING".into(),
                params: vec![],
            },
            Extension {
                keyword: "X-FOO".into(),
                params: vec![],
            },
        ];
        assert_eq!(c.extensions(), want);
        assert!(c.has("x-foo"));
        assert!(!c.has("X-BAR"));
        assert!(!c.has(""));
    }

    #[test]
    fn first_line_variants() {
        let c = caps(&["250"]);
        assert_eq!((c.domain(), c.greeting()), ("", ""));
        let c = caps(&["250 [192.0.2.1]"]);
        assert_eq!(c.domain(), "[192.0.2.1]");
        assert_eq!(Capabilities::default(), caps(&["250"]));
        // Control characters were already replaced by the reply parser.
        let c = caps(&["250-evil\x1b[2J.example", "250 SIZE\x07 5"]);
        assert_eq!(c.domain(), "evil\u{FFFD}[2J.example");
        assert_eq!(c.size(), None);
        assert_eq!(c.extensions()[0].keyword, "SIZE\u{FFFD}");
    }
}
