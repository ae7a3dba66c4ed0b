//! Mailboxes and domains (RFC 5321 §4.1.2, §4.1.3, §4.5.3.1; RFC 6531
//! SMTPUTF8; IDNA per RFC 5890).
//!
//! Parsing is the injection guard: a parsed address can never hold CR, LF,
//! NUL, another control character, `<` or `>`, nor a space outside a quoted
//! local part, so it can never end a command early or start another.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// RFC 5321 §4.5.3.1 size limits, in octets.
const MAX_LOCAL: usize = 64;
const MAX_DOMAIN: usize = 255;
const MAX_LABEL: usize = 63;
const MAX_PATH: usize = 256;

/// An address, domain or parameter that cannot be used.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AddressError {
    /// Nothing given.
    Empty,
    /// No `@` in a mailbox.
    MissingAt {
        /// The input (sanitised).
        input: String,
    },
    /// `Name <addr>`: a display name where only the address belongs.
    DisplayName {
        /// The input (sanitised).
        input: String,
    },
    /// A character that may not appear where it is.
    InvalidCharacter {
        /// The input (sanitised).
        input: String,
        /// The character (escaped when it is a control character).
        character: String,
    },
    /// The local part is not a valid dot-string or quoted string.
    InvalidLocalPart {
        /// The input (sanitised).
        input: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// The domain is not valid.
    InvalidDomain {
        /// The input (sanitised).
        input: String,
        /// What is wrong.
        reason: String,
    },
    /// Over an RFC 5321 length limit.
    TooLong {
        /// Which part.
        what: &'static str,
        /// Its length in octets.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// A command parameter that cannot be sent.
    InvalidParameter {
        /// Which parameter.
        what: &'static str,
        /// What it must be.
        reason: &'static str,
    },
}

impl fmt::Display for AddressError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => {
                f.write_str("the address is empty; give an address like user@example.com")
            }
            Self::MissingAt { input } => {
                write!(
                    f,
                    "\"{input}\" has no @; give an address like user@example.com"
                )
            }
            Self::DisplayName { input } => write!(
                f,
                "\"{input}\" has a display name; pass only the address (the part between < and >)"
            ),
            Self::InvalidCharacter { input, character } => {
                write!(
                    f,
                    "\"{input}\" contains {character}, which an address cannot hold"
                )
            }
            Self::InvalidLocalPart { input, reason } => {
                write!(f, "the part before @ in \"{input}\" is invalid: {reason}")
            }
            Self::InvalidDomain { input, reason } => {
                write!(f, "the domain \"{input}\" is invalid: {reason}")
            }
            Self::TooLong { what, len, limit } => {
                write!(f, "the {what} is {len} octets; SMTP allows at most {limit}")
            }
            Self::InvalidParameter { what, reason } => write!(f, "invalid {what}: {reason}"),
        }
    }
}

impl std::error::Error for AddressError {}

/// Input quoted in an error, for writing between double quotes: control
/// characters, quotes and backslashes escaped as Rust's `Debug` does, other
/// characters (`ü`) kept as typed; cut at 80 characters.
fn sanitise(input: &str) -> String {
    let cut: String = input.chars().take(80).collect();
    let mut s = cut.escape_debug().to_string();
    if input.chars().count() > 80 {
        s.push('…');
    }
    s
}

fn describe(c: char) -> String {
    match c {
        ' ' => "a space".to_owned(),
        c if c.is_control() => format!("the control character {}", c.escape_default()),
        c => format!("{c:?}"),
    }
}

/// UTS #46 ToASCII as IDNA2008 registration wants it for mail domains: a
/// label may not start or end with a hyphen, in its Unicode form too
/// (`bücher-.example` is refused, not sent as `xn--bcher--3ya.example`).
/// Characters and lengths are checked afterwards, with our own words.
fn to_ascii(input: &str) -> Option<String> {
    use idna::uts46::{AsciiDenyList, DnsLength, Hyphens, Uts46};
    Uts46::new()
        .to_ascii(
            input.as_bytes(),
            AsciiDenyList::EMPTY,
            Hyphens::CheckFirstLast,
            DnsLength::Ignore,
        )
        .ok()
        .map(std::borrow::Cow::into_owned)
}

/// Why `input` is not an internationalised domain name: the first label
/// that fails on its own, or the name as a whole (a rule across labels,
/// such as the bidi rule).
fn idna_fault(input: &str) -> String {
    match input.split('.').find(|label| to_ascii(label).is_none()) {
        Some(label) => format!(
            "its label \"{}\" is not a valid internationalised label (IDNA2008, UTS #46); \
             check its spelling",
            sanitise(label)
        ),
        None => "it is not a valid internationalised domain name (IDNA2008, UTS #46); \
                 check its spelling"
            .to_owned(),
    }
}

/// A domain as it goes on the wire: lower-case ASCII with IDN labels as
/// A-labels, or an address literal (`[192.0.2.1]`, `[IPv6:2001:db8::1]`).
///
/// An internationalised name is converted once, here, as UTS #46 maps it
/// (`BÜCHER.example` → `xn--bcher-kva.example`): an ASCII-only form that
/// every server and resolver takes, so an IDN domain never needs SMTPUTF8;
/// only a UTF-8 local part does ([`Mailbox::needs_smtputf8`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Domain(String);

impl Domain {
    /// Parses a host name (IDN allowed) or an address literal.
    pub fn parse(input: &str) -> Result<Self, AddressError> {
        let err = |reason: &str| AddressError::InvalidDomain {
            input: sanitise(input),
            reason: reason.to_owned(),
        };
        if input.is_empty() {
            return Err(err("it is empty"));
        }
        if let Some(c) = input
            .chars()
            .find(|c| c.is_control() || matches!(c, '<' | '>' | ' ' | '@'))
        {
            return Err(AddressError::InvalidCharacter {
                input: sanitise(input),
                character: describe(c),
            });
        }
        if let Some(literal) = input.strip_prefix('[') {
            let inner = literal
                .strip_suffix(']')
                .ok_or_else(|| err("an address literal must end with ]"))?;
            let valid = match inner.get(..5) {
                Some(tag) if tag.eq_ignore_ascii_case("IPv6:") => {
                    inner[5..].parse::<Ipv6Addr>().is_ok()
                }
                _ => inner.parse::<Ipv4Addr>().is_ok(),
            };
            return if valid {
                Ok(Self(input.to_owned()))
            } else {
                Err(err("not an IPv4 address or IPv6: address in brackets"))
            };
        }
        if input.ends_with('.') {
            return Err(err("it ends with a dot; remove the trailing dot"));
        }
        if input.contains("..") || input.starts_with('.') {
            return Err(err(
                "it has an empty label (two dots in a row, or a leading dot)",
            ));
        }
        let ascii = to_ascii(input).ok_or_else(|| err(&idna_fault(input)))?;
        if ascii.len() > MAX_DOMAIN {
            return Err(AddressError::TooLong {
                what: "domain",
                len: ascii.len(),
                limit: MAX_DOMAIN,
            });
        }
        for label in ascii.split('.') {
            if label.is_empty() {
                return Err(err("it has an empty label"));
            }
            if label.len() > MAX_LABEL {
                return Err(AddressError::TooLong {
                    what: "domain label",
                    len: label.len(),
                    limit: MAX_LABEL,
                });
            }
            if !label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            {
                return Err(err("labels may hold only letters, digits and hyphens"));
            }
            if label.starts_with('-') || label.ends_with('-') {
                return Err(err("a label may not start or end with a hyphen"));
            }
        }
        Ok(Self(ascii))
    }

    /// The wire form.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True for `[…]` address literals.
    pub fn is_address_literal(&self) -> bool {
        self.0.starts_with('[')
    }
}

impl FromStr for Domain {
    type Err = AddressError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `local-part@domain` (RFC 5321 §4.1.2). The local part keeps its case;
/// the domain is a [`Domain`], in A-labels. Its [`Display`](fmt::Display)
/// is the wire form: all ASCII unless the local part is not.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Mailbox {
    local: String,
    domain: Domain,
}

/// atext (RFC 5322 §3.2.3), plus any non-ASCII character (RFC 6531).
fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric()
        || "!#$%&'*+-/=?^_`{|}~".contains(c)
        || (!c.is_ascii() && !c.is_control())
}

/// qtextSMTP (printable ASCII but `"` and `\`, plus UTF-8 under RFC 6531).
fn is_qtext(c: char) -> bool {
    matches!(c, ' '..='~') && c != '"' && c != '\\' || (!c.is_ascii() && !c.is_control())
}

fn check_local(input: &str, local: &str) -> Result<(), AddressError> {
    let bad = |reason| AddressError::InvalidLocalPart {
        input: sanitise(input),
        reason,
    };
    if local.is_empty() {
        return Err(bad("it is empty"));
    }
    if local.len() > MAX_LOCAL {
        return Err(AddressError::TooLong {
            what: "local part",
            len: local.len(),
            limit: MAX_LOCAL,
        });
    }
    if let Some(quoted) = local.strip_prefix('"') {
        let inner = quoted
            .strip_suffix('"')
            .ok_or(bad("a quoted local part must end with \""))?;
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            match c {
                // quoted-pairSMTP: a backslash and one printable ASCII character.
                '\\' => match chars.next() {
                    Some(' '..='~') => {}
                    _ => return Err(bad("a backslash must be followed by a printable character")),
                },
                c if is_qtext(c) => {}
                c => {
                    return Err(AddressError::InvalidCharacter {
                        input: sanitise(input),
                        character: describe(c),
                    });
                }
            }
        }
        return Ok(());
    }
    if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
        return Err(bad(
            "dots may not start or end it, nor come two in a row (quote it if you must)",
        ));
    }
    if let Some(c) = local.chars().find(|&c| c != '.' && !is_atext(c)) {
        return Err(AddressError::InvalidCharacter {
            input: sanitise(input),
            character: describe(c),
        });
    }
    Ok(())
}

impl Mailbox {
    /// Parses `user@example.com` or `<user@example.com>`, trimming
    /// surrounding whitespace.
    pub fn parse(input: &str) -> Result<Self, AddressError> {
        let trimmed = input.trim();
        if trimmed.is_empty() {
            return Err(AddressError::Empty);
        }
        let bare = match trimmed.strip_prefix('<') {
            Some(rest) => rest.strip_suffix('>').unwrap_or(rest),
            None if trimmed.ends_with('>') && trimmed.contains('<') => {
                return Err(AddressError::DisplayName {
                    input: sanitise(input),
                });
            }
            None => trimmed,
        };
        if let Some(c) = bare
            .chars()
            .find(|c| c.is_control() || matches!(c, '<' | '>'))
        {
            return Err(AddressError::InvalidCharacter {
                input: sanitise(input),
                character: describe(c),
            });
        }
        // The domain follows the last @: a quoted local part may hold one.
        let at = bare.rfind('@').ok_or_else(|| AddressError::MissingAt {
            input: sanitise(input),
        })?;
        let (local, domain) = (&bare[..at], &bare[at + 1..]);
        check_local(input, local)?;
        let domain = Domain::parse(domain)?;
        let path = local.len() + 1 + domain.as_str().len() + 2;
        if path > MAX_PATH {
            return Err(AddressError::TooLong {
                what: "path",
                len: path,
                limit: MAX_PATH,
            });
        }
        Ok(Self {
            local: local.to_owned(),
            domain,
        })
    }

    /// The part before `@`, as given (quotes included).
    pub fn local_part(&self) -> &str {
        &self.local
    }

    /// The domain.
    pub fn domain(&self) -> &Domain {
        &self.domain
    }

    /// True when the local part is not ASCII, so MAIL needs `SMTPUTF8`.
    pub fn needs_smtputf8(&self) -> bool {
        !self.local.is_ascii()
    }
}

impl FromStr for Mailbox {
    type Err = AddressError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for Mailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.local, self.domain)
    }
}

/// MAIL FROM's path: the null reverse-path `<>` (for bounces) or a mailbox.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ReversePath {
    /// `<>`.
    Null,
    /// A mailbox.
    Mailbox(Mailbox),
}

impl ReversePath {
    /// Parses `<>` (or nothing) as the null path, anything else as a mailbox.
    pub fn parse(input: &str) -> Result<Self, AddressError> {
        match input.trim() {
            "" | "<>" => Ok(Self::Null),
            other => Mailbox::parse(other).map(Self::Mailbox),
        }
    }

    /// True when the path needs SMTPUTF8.
    pub fn needs_smtputf8(&self) -> bool {
        matches!(self, Self::Mailbox(m) if m.needs_smtputf8())
    }
}

impl From<Mailbox> for ReversePath {
    fn from(m: Mailbox) -> Self {
        Self::Mailbox(m)
    }
}

impl fmt::Display for ReversePath {
    /// With angle brackets, as on the wire: `<>` or `<user@example.com>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Null => f.write_str("<>"),
            Self::Mailbox(m) => write!(f, "<{m}>"),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    macro_rules! mailboxes {
        ($($input:expr => $wire:expr;)*) => {
            $( assert_eq!(Mailbox::parse($input).map(|m| m.to_string()).map_err(|e| e.to_string()).ok().as_deref(), $wire, "{:?}", $input); )*
        };
    }

    #[test]
    fn vectors() {
        mailboxes! {
            "user@example.com" => Some("user@example.com");
            "<user@example.com>" => Some("user@example.com");
            "  User.Name+tag@Example.COM  " => Some("User.Name+tag@example.com");
            "postmaster@localhost" => Some("postmaster@localhost");
            "\"john doe\"@example.com" => Some("\"john doe\"@example.com");
            "\"a@b\"@example.com" => Some("\"a@b\"@example.com");
            "\"quote\\\"d\"@example.com" => Some("\"quote\\\"d\"@example.com");
            "user@bücher.example" => Some("user@xn--bcher-kva.example");
            "jörg@example.com" => Some("jörg@example.com");
            "user@[192.0.2.1]" => Some("user@[192.0.2.1]");
            "user@[IPv6:2001:db8::1]" => Some("user@[IPv6:2001:db8::1]");
            "" => None;
            "user" => None;
            "Bob <bob@example.com>" => None;
            "user@example.com." => None;
            "user@exa..mple.com" => None;
            "us..er@example.com" => None;
            ".user@example.com" => None;
            "user.@example.com" => None;
            "us er@example.com" => None;
            "user@example.com\r\nRSET" => None;
            "user\0@example.com" => None;
            "user@-example.com" => None;
            "user@exa_mple.com" => None;
            "user@[300.1.1.1]" => None;
            "user@[IPv6:nope]" => None;
            "@example.com" => None;
            "user@" => None;
            "\"unterminated@example.com" => None;
        }
    }

    #[test]
    fn limits() {
        let local = "a".repeat(64);
        assert!(Mailbox::parse(&format!("{local}@example.com")).is_ok());
        assert!(matches!(
            Mailbox::parse(&format!("a{local}@example.com")),
            Err(AddressError::TooLong {
                what: "local part",
                ..
            })
        ));
        let label = "b".repeat(63);
        assert!(Domain::parse(&format!("{label}.example")).is_ok());
        assert!(Domain::parse(&format!("b{label}.example")).is_err());
        let long_domain = vec!["c".repeat(60); 4].join(".");
        assert!(matches!(
            Mailbox::parse(&format!("{local}@{long_domain}")),
            Err(AddressError::TooLong { what: "path", .. })
        ));
    }

    #[test]
    fn smtputf8_and_idn() {
        let m = Mailbox::parse("user@bücher.example").unwrap();
        assert!(!m.needs_smtputf8());
        assert_eq!(m.domain().as_str(), "xn--bcher-kva.example");
        let m = Mailbox::parse("jörg@bücher.example").unwrap();
        assert!(m.needs_smtputf8());
        assert_eq!(m.to_string(), "jörg@xn--bcher-kva.example");
        assert!(ReversePath::Mailbox(m).needs_smtputf8());
    }

    #[test]
    fn idn_domains_become_lower_case_a_labels() {
        for (input, ascii) in [
            ("bücher.example", "xn--bcher-kva.example"),
            ("BÜCHER.example", "xn--bcher-kva.example"),
            ("Bücher.EXAMPLE", "xn--bcher-kva.example"),
            ("xn--bcher-kva.example", "xn--bcher-kva.example"),
            ("XN--BCHER-KVA.example", "xn--bcher-kva.example"),
            ("mail.example.org", "mail.example.org"),
            ("Mail.Example.ORG", "mail.example.org"),
            ("münchen.de", "xn--mnchen-3ya.de"),
            ("例え.テスト", "xn--r8jz45g.xn--zckzah"),
            ("faß.de", "xn--fa-hia.de"),
        ] {
            assert_eq!(Domain::parse(input).unwrap().as_str(), ascii, "{input}");
        }
        let m = Mailbox::parse("User@BÜCHER.example").unwrap();
        assert_eq!(m.to_string(), "User@xn--bcher-kva.example");
        assert!(m.to_string().is_ascii() && !m.needs_smtputf8());
    }

    #[test]
    fn an_invalid_idn_names_its_label() {
        for (input, label) in [
            ("xn--a.example", "xn--a"),
            ("mail.\u{301}x.example", "\\u{301}x"),
            ("bü--cher.xn--a.example", "xn--a"),
            ("xn--bcher-kva.xn--zz9.example", "xn--zz9"),
            // A hyphen first or last is refused in the Unicode form too.
            ("user.bücher-.example", "bücher-"),
            ("-bücher.example", "-bücher"),
        ] {
            let e = Domain::parse(input).unwrap_err();
            assert!(
                matches!(e, AddressError::InvalidDomain { .. }),
                "{input}: {e:?}"
            );
            let text = e.to_string();
            assert!(
                text.contains(&format!("label \"{label}\"")) && text.contains("IDNA"),
                "{input}: {text}"
            );
        }
        let e = Mailbox::parse("user@xn--a.example")
            .unwrap_err()
            .to_string();
        assert!(e.contains("xn--a.example") && e.contains("spelling"), "{e}");
    }

    #[test]
    fn reverse_path() {
        assert_eq!(ReversePath::parse("<>").unwrap(), ReversePath::Null);
        assert_eq!(ReversePath::parse("").unwrap().to_string(), "<>");
        assert_eq!(
            ReversePath::parse("a@b.example").unwrap().to_string(),
            "<a@b.example>"
        );
    }

    #[test]
    fn helpful_errors() {
        let e = Mailbox::parse("Bob <bob@example.com>")
            .unwrap_err()
            .to_string();
        assert!(e.contains("only the address"), "{e}");
        let e = Mailbox::parse("bob.example.com").unwrap_err().to_string();
        assert!(e.contains("no @"), "{e}");
        let e = Mailbox::parse("bob@example.com.").unwrap_err().to_string();
        assert!(e.contains("trailing dot"), "{e}");
        let e = Mailbox::parse("bob\r\n@example.com")
            .unwrap_err()
            .to_string();
        assert!(!e.contains('\r') && !e.contains('\n'), "{e}");
        assert!(Domain::parse("[192.0.2.1]").unwrap().is_address_literal());
    }

    proptest! {
        #[test]
        fn nothing_dangerous_survives_parsing(s in "\\PC{0,40}|[\\x00-\\x7f]{0,40}|[a-z<>\"\\\\ @.\r\n\0]{0,30}") {
            if let Ok(m) = Mailbox::parse(&s) {
                let w = m.to_string();
                prop_assert!(!w.contains(['\r', '\n', '\0', '<', '>']), "{:?}", w);
                prop_assert!(!w.chars().any(char::is_control), "{:?}", w);
                prop_assert!(m.local_part().starts_with('"') || !w.contains(' '), "{:?}", w);
            }
        }

        #[test]
        fn valid_addresses_round_trip(local in "[a-zA-Z0-9!#$%&'*+/=?^_`{|}~-]{1,20}(\\.[a-z0-9]{1,5}){0,2}",
                                      domain in "[a-z0-9]{1,10}(\\.[a-z0-9]{1,10}){0,3}") {
            let s = format!("{local}@{domain}");
            let m = Mailbox::parse(&s).unwrap();
            prop_assert_eq!(m.to_string(), s);
        }
    }
}
