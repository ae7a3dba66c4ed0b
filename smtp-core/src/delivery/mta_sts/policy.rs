//! The policy file (RFC 8461 §3.2), served at
//! `https://mta-sts.<domain>/.well-known/mta-sts.txt`:
//!
//! ```text
//! version: STSv1
//! mode: enforce
//! mx: mail.example.com
//! mx: *.example.net
//! max_age: 604800
//! ```
//!
//! `key: value` lines separated by CRLF or LF. `version`, `mode` and
//! `max_age` are required, once each; `mx` once or more (it may be absent
//! under `mode: none`); other keys are extensions, ignored. Anything else
//! makes the policy invalid: a sender then has no policy for the domain.

use std::fmt;

/// The largest `max_age` (about a year, RFC 8461 §3.2).
pub const MAX_AGE_LIMIT: u64 = 31_557_600;
/// The largest policy body read (RFC 8461 §3.3: 64 KiB).
pub const MAX_POLICY_SIZE: usize = 64 * 1024;

/// What a sender does with the policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Deliver only to matching MX hosts over verified TLS, or not at all.
    Enforce,
    /// Deliver as without a policy, but report what would have failed.
    Testing,
    /// The domain withdraws its policy.
    None,
}

impl Mode {
    /// `enforce`, `testing` or `none`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enforce => "enforce",
            Self::Testing => "testing",
            Self::None => "none",
        }
    }

    /// The mode named `text` (exactly, as the grammar spells it).
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "enforce" => Some(Self::Enforce),
            "testing" => Some(Self::Testing),
            "none" => Some(Self::None),
            _ => None,
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An `mx` pattern: a host name, or `*.` and a domain (exactly one more
/// label on the left).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct MxPattern(String);

impl MxPattern {
    /// Parses a pattern (lower-cased, a trailing dot dropped); `None` when
    /// it is not a host name or a one-label wildcard.
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim_end_matches('.').to_ascii_lowercase();
        let name = text.strip_prefix("*.").unwrap_or(&text);
        let valid = !name.is_empty()
            && name.len() <= 253
            && name.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            });
        valid.then_some(Self(text))
    }

    /// True when `host` (an MX host name) matches: equal, ignoring case and
    /// a trailing dot; or, for `*.domain`, `domain` with exactly one label
    /// in front (RFC 8461 §4.1).
    pub fn matches(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.');
        match self.0.strip_prefix("*.") {
            Some(domain) => host.split_once('.').is_some_and(|(label, rest)| {
                !label.is_empty() && label != "*" && rest.eq_ignore_ascii_case(domain)
            }),
            None => host.eq_ignore_ascii_case(&self.0),
        }
    }

    /// The pattern as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for MxPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A valid policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// What to do.
    pub mode: Mode,
    /// The MX hosts allowed.
    pub mx: Vec<MxPattern>,
    /// How long, in seconds, the policy may be cached.
    pub max_age: u64,
}

impl Policy {
    /// True when `host` matches one of the policy's patterns.
    pub fn allows(&self, host: &str) -> bool {
        self.mx.iter().any(|p| p.matches(host))
    }

    /// The policy as its file says it (CRLF lines): what TLS-RPT calls the
    /// policy string, one entry per line.
    pub fn lines(&self) -> Vec<String> {
        let mut lines = vec!["version: STSv1".to_owned(), format!("mode: {}", self.mode)];
        lines.extend(self.mx.iter().map(|p| format!("mx: {p}")));
        lines.push(format!("max_age: {}", self.max_age));
        lines
    }
}

/// Why a policy file is not a valid policy.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PolicyError {
    /// Over [`MAX_POLICY_SIZE`].
    TooLarge(usize),
    /// `version` is not `STSv1`.
    Version(String),
    /// Not valid: what is wrong.
    Invalid(String),
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooLarge(n) => write!(
                f,
                "the policy is {n} bytes, over the {MAX_POLICY_SIZE}-byte limit"
            ),
            Self::Version(v) => write!(f, "the policy's version is {v:?}, not STSv1"),
            Self::Invalid(why) => write!(f, "invalid policy: {why}"),
        }
    }
}

impl std::error::Error for PolicyError {}

/// Parses a policy file.
pub fn parse(body: &[u8]) -> Result<Policy, PolicyError> {
    if body.len() > MAX_POLICY_SIZE {
        return Err(PolicyError::TooLarge(body.len()));
    }
    let invalid = |why: String| PolicyError::Invalid(why);
    let text = std::str::from_utf8(body).map_err(|_| invalid("not UTF-8 text".into()))?;
    let (mut version, mut mode, mut max_age) = (None, None, None);
    let mut mx = Vec::new();
    for (n, line) in text.split('\n').enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() {
            // A final line ending, or blank lines around the terms.
            continue;
        }
        let Some((key, value)) = line.split_once(':') else {
            return Err(invalid(format!("line {} has no ':'", n + 1)));
        };
        let value = value.trim_matches([' ', '\t']);
        let once = |seen: bool| {
            if seen {
                Err(invalid(format!("{key} appears more than once")))
            } else {
                Ok(())
            }
        };
        match key {
            "version" => {
                once(version.is_some())?;
                version = Some(value);
            }
            "mode" => {
                once(mode.is_some())?;
                mode = Some(Mode::parse(value).ok_or_else(|| invalid(format!("mode {value:?}")))?);
            }
            "max_age" => {
                once(max_age.is_some())?;
                let age = (!value.is_empty()
                    && value.len() <= 10
                    && value.bytes().all(|b| b.is_ascii_digit()))
                .then(|| value.parse::<u64>().ok())
                .flatten()
                .ok_or_else(|| invalid(format!("max_age {value:?} (up to 10 digits)")))?;
                // The grammar allows 10 digits; a value above the maximum
                // is clamped to it, not a reason to drop the protection
                // the domain asked for.
                max_age = Some(age.min(MAX_AGE_LIMIT));
            }
            "mx" => {
                mx.push(MxPattern::parse(value).ok_or_else(|| invalid(format!("mx {value:?}")))?);
            }
            other => {
                if other.is_empty()
                    || !other
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
                {
                    return Err(invalid(format!("line {} has no key", n + 1)));
                }
                // An extension: ignored.
            }
        }
    }
    match version {
        Some("STSv1") => {}
        Some(v) => return Err(PolicyError::Version(v.to_owned())),
        None => return Err(invalid("no version".into())),
    }
    let mode = mode.ok_or_else(|| invalid("no mode".into()))?;
    let max_age = max_age.ok_or_else(|| invalid("no max_age".into()))?;
    if mx.is_empty() && mode != Mode::None {
        return Err(invalid(format!("no mx under mode {mode}")));
    }
    Ok(Policy { mode, mx, max_age })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn pattern(p: &str) -> MxPattern {
        MxPattern::parse(p).expect("a valid pattern")
    }

    #[test]
    fn a_wildcard_matches_exactly_one_label() {
        let p = pattern("*.example.com");
        assert!(p.matches("mail.example.com"));
        assert!(p.matches("MAIL.Example.COM."));
        assert!(!p.matches("example.com"));
        assert!(!p.matches("a.b.example.com"));
        assert!(!p.matches("mail.example.com.evil"));
        assert!(!p.matches("mailexample.com"));
        let p = pattern("mx1.example.com.");
        assert!(p.matches("MX1.example.com"));
        assert!(!p.matches("mx2.example.com"));
        assert!(MxPattern::parse("*.").is_none());
        assert!(MxPattern::parse("a.*.example").is_none());
        assert!(MxPattern::parse("a b").is_none());
    }

    #[test]
    fn a_policy_with_crlf_or_lf_lines_parses() {
        let crlf = b"version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.example.net\r\nmax_age: 604800\r\n";
        let p = parse(crlf).unwrap();
        assert_eq!(p.mode, Mode::Enforce);
        assert_eq!(p.max_age, 604_800);
        assert_eq!(
            p.mx,
            vec![pattern("mail.example.com"), pattern("*.example.net")]
        );
        let lf =
            b"version: STSv1\nmode: testing\nmx: a.example\nmax_age: 86400\nfuture_key: ignored";
        assert_eq!(parse(lf).unwrap().mode, Mode::Testing);
        let none = b"version: STSv1\nmode: none\nmax_age: 0\n";
        assert_eq!(parse(none).unwrap().mode, Mode::None);
        // Above the maximum: clamped, the policy kept.
        let long = b"version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 9999999999\n";
        assert_eq!(parse(long).unwrap().max_age, MAX_AGE_LIMIT);
    }

    #[test]
    fn strict_cases_are_invalid() {
        let bad: &[&[u8]] = &[
            b"mode: enforce\nmx: a.example\nmax_age: 1\n",
            b"version: STSv1\nmx: a.example\nmax_age: 1\n",
            b"version: STSv1\nmode: enforce\nmx: a.example\n",
            b"version: STSv1\nmode: enforce\nmax_age: 1\n",
            b"version: STSv1\nmode: Enforce\nmx: a.example\nmax_age: 1\n",
            b"version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 12345678901\n",
            b"version: STSv1\nmode: enforce\nmx: a.example\nmax_age: -1\n",
            b"version: STSv1\nmode: enforce\nmode: none\nmx: a.example\nmax_age: 1\n",
            b"version: STSv1\nmode: enforce\nmx: a..example\nmax_age: 1\n",
            b"version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 1\njunk line\n",
            b"version: STSv1\nmode: enforce\nmx: a.example\nmax_age: \xff\n",
        ];
        for body in bad {
            assert!(
                matches!(parse(body), Err(PolicyError::Invalid(_))),
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
        assert_eq!(
            parse(b"version: STSv2\nmode: enforce\nmx: a.example\nmax_age: 1\n"),
            Err(PolicyError::Version("STSv2".into()))
        );
        let big = vec![b'x'; MAX_POLICY_SIZE + 1];
        assert_eq!(parse(&big), Err(PolicyError::TooLarge(MAX_POLICY_SIZE + 1)));
    }

    proptest! {
        #[test]
        fn arbitrary_input_never_panics(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse(&body);
            let text = String::from_utf8_lossy(&body);
            let _ = super::super::record::parse(&text);
            let _ = crate::delivery::tls_rpt::parse_record(&text);
            if let Some(p) = MxPattern::parse(&text) {
                let _ = p.matches(&text);
            }
        }

        #[test]
        fn policy_like_lines_never_panic(lines in proptest::collection::vec(
            "(version|mode|mx|max_age|x)(: ?)(STSv1|enforce|testing|none|[0-9]{1,12}|\\*?\\.?[a-z.]{0,12})",
            0..8,
        )) {
            let _ = parse(lines.join("\r\n").as_bytes());
        }
    }
}
