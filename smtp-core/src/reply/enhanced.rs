//! Enhanced status codes (RFC 3463) as carried at the start of reply text (RFC 2034).

use std::fmt;
use std::str::FromStr;

use super::excerpt;

/// An RFC 3463 enhanced status code `class.subject.detail`, e.g. `5.1.1`.
///
/// The class is 2, 4 or 5; subject and detail are 0..=999.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EnhancedCode {
    /// 2 (success), 4 (persistent transient failure) or 5 (permanent failure).
    pub class: u8,
    /// What the code is about: 1 addressing, 2 mailbox, 3 mail system, 4 network and routing,
    /// 5 mail delivery protocol, 6 message content, 7 security or policy.
    pub subject: u16,
    /// The detail within the subject.
    pub detail: u16,
}

impl EnhancedCode {
    /// Returns the code if the class is 2, 4 or 5 and subject and detail are at most 999.
    pub const fn new(class: u8, subject: u16, detail: u16) -> Option<Self> {
        if matches!(class, 2 | 4 | 5) && subject <= 999 && detail <= 999 {
            Some(Self {
                class,
                subject,
                detail,
            })
        } else {
            None
        }
    }

    /// Parses an enhanced code at the start of `text`; returns it and the bytes it took.
    ///
    /// RFC 3463: `class "." subject "." detail`, class one digit, subject and detail 1–3 digits.
    pub(super) fn parse_prefix(text: &[u8]) -> Option<(Self, usize)> {
        let mut pos = 0;
        let class = take_digits(text, &mut pos, 1)?;
        take_dot(text, &mut pos)?;
        let subject = take_digits(text, &mut pos, 3)?;
        take_dot(text, &mut pos)?;
        let detail = take_digits(text, &mut pos, 3)?;
        let class = u8::try_from(class).ok()?;
        Self::new(class, subject, detail).map(|code| (code, pos))
    }
}

/// Reads 1..=`max` ASCII digits at `*pos`; fails on none or on more than `max`.
fn take_digits(text: &[u8], pos: &mut usize, max: usize) -> Option<u16> {
    let start = *pos;
    let mut value: u16 = 0;
    while let Some(&b) = text.get(*pos) {
        if !b.is_ascii_digit() {
            break;
        }
        if *pos - start == max {
            return None;
        }
        // At most 3 digits, so at most 999: no overflow.
        value = value * 10 + u16::from(b - b'0');
        *pos += 1;
    }
    (*pos > start).then_some(value)
}

fn take_dot(text: &[u8], pos: &mut usize) -> Option<()> {
    if text.get(*pos) != Some(&b'.') {
        return None;
    }
    *pos += 1;
    Some(())
}

impl fmt::Display for EnhancedCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.class, self.subject, self.detail)
    }
}

impl FromStr for EnhancedCode {
    type Err = EnhancedCodeError;

    /// Parses exactly `class.subject.detail`, with nothing before or after.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match Self::parse_prefix(s.as_bytes()) {
            Some((code, len)) if len == s.len() => Ok(code),
            _ => Err(EnhancedCodeError::Malformed {
                input: excerpt(s.as_bytes()),
            }),
        }
    }
}

/// Why a string is not an [`EnhancedCode`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EnhancedCodeError {
    /// Not of the form `class.subject.detail` with class 2, 4 or 5 and 1–3 digit numbers.
    Malformed {
        /// The input, sanitised and truncated.
        input: String,
    },
}

impl fmt::Display for EnhancedCodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Malformed { input } => write!(
                f,
                "{input:?} is not an enhanced status code: expected class.subject.detail \
                 such as 5.1.1, with class 2, 4 or 5 and subject and detail of 1 to 3 digits"
            ),
        }
    }
}

impl std::error::Error for EnhancedCodeError {}
