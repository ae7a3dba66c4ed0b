//! The `_mta-sts.<domain>` TXT record (RFC 8461 §3.1):
//! `v=STSv1; id=20160831085700Z;`.
//!
//! Records that do not begin with `v=STSv1` are discarded; when the number
//! left is not exactly one, or the one left is invalid, the domain has no
//! available policy ([`select`]).

use std::fmt;

/// A valid `_mta-sts` record: the policy's instance id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StsRecord {
    /// `id`: 1 to 32 letters and digits; a new id means a new policy.
    pub id: String,
}

/// Why the `_mta-sts` TXT records give no policy.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecordError {
    /// No record begins with `v=STSv1`: the domain has no MTA-STS policy.
    Absent,
    /// More than one record begins with `v=STSv1`.
    Several(usize),
    /// The one record does not follow the grammar.
    Invalid(String),
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Absent => f.write_str("no MTA-STS TXT record (v=STSv1)"),
            Self::Several(n) => write!(f, "{n} MTA-STS TXT records where one is allowed"),
            Self::Invalid(why) => write!(f, "invalid MTA-STS TXT record: {why}"),
        }
    }
}

impl std::error::Error for RecordError {}

/// The one `v=STSv1` record among a name's TXT records, parsed.
pub fn select(txts: &[String]) -> Result<StsRecord, RecordError> {
    // RFC 8461 section 3.1: records that do not begin with `v=STSv1;` are
    // discarded (so a `v=STSv10` beside the real one changes nothing).
    let candidates: Vec<&String> = txts
        .iter()
        .filter(|t| {
            t.strip_prefix("v=STSv1")
                .is_some_and(|rest| rest.trim_start_matches([' ', '\t']).starts_with(';'))
        })
        .collect();
    match candidates.as_slice() {
        [] => Err(RecordError::Absent),
        [one] => parse(one),
        many => Err(RecordError::Several(many.len())),
    }
}

/// Parses one record: `v=STSv1` first, then `;`-separated fields of
/// which `id` is required (once) and the others are ignored.
pub fn parse(text: &str) -> Result<StsRecord, RecordError> {
    let invalid = |why: &str| RecordError::Invalid(why.to_owned());
    let text = text.trim_end_matches([' ', '\t']);
    // One trailing `;` is allowed.
    let text = text.strip_suffix(';').unwrap_or(text);
    let mut fields = text.split(';').map(|f| f.trim_matches([' ', '\t']));
    let version = fields.next().unwrap_or_default();
    match key_value(version) {
        Some(("v", "STSv1")) => {}
        _ => return Err(invalid("it must begin with v=STSv1")),
    }
    let mut id = None;
    for field in fields {
        if field.is_empty() {
            return Err(invalid("an empty field"));
        }
        let Some((key, value)) = key_value(field) else {
            return Err(invalid("a field without '='"));
        };
        if key == "id" {
            if id.is_some() {
                return Err(invalid("more than one id"));
            }
            if value.is_empty()
                || value.len() > 32
                || !value.bytes().all(|b| b.is_ascii_alphanumeric())
            {
                return Err(invalid("the id must be 1 to 32 letters and digits"));
            }
            id = Some(value.to_owned());
        } else if key.is_empty()
            || !key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
        {
            return Err(invalid("a field name that is not one"));
        }
    }
    id.map(|id| StsRecord { id })
        .ok_or_else(|| invalid("no id"))
}

/// `key *WSP "=" *WSP value`.
fn key_value(field: &str) -> Option<(&str, &str)> {
    let (k, v) = field.split_once('=')?;
    Some((
        k.trim_end_matches([' ', '\t']),
        v.trim_start_matches([' ', '\t']),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(text: &str) -> Result<String, RecordError> {
        parse(text).map(|r| r.id)
    }

    #[test]
    fn records_follow_the_grammar() {
        assert_eq!(
            id("v=STSv1; id=20160831085700Z;").unwrap(),
            "20160831085700Z"
        );
        assert_eq!(id("v=STSv1;id=abc").unwrap(), "abc");
        assert_eq!(id("v=STSv1; id=abc; ext=whatever").unwrap(), "abc");
        assert_eq!(id("v = STSv1 ; id = abc").unwrap(), "abc");
        assert!(id("v=STSv2; id=abc").is_err());
        assert!(id("id=abc; v=STSv1").is_err());
        assert!(id("v=STSv1").is_err());
        assert!(id("v=STSv1; id=").is_err());
        assert!(id("v=STSv1; id=a-b").is_err());
        assert!(id(&format!("v=STSv1; id={}", "a".repeat(33))).is_err());
        assert!(id("v=STSv1; id=a; id=b").is_err());
        assert!(id("v=STSv1;; id=a").is_err());
        assert!(id("v=STSv1; id=a; junk").is_err());
    }

    #[test]
    fn exactly_one_record_must_begin_with_the_version() {
        let s = |v: &[&str]| select(&v.iter().map(|t| (*t).to_owned()).collect::<Vec<_>>());
        assert_eq!(s(&[]), Err(RecordError::Absent));
        assert_eq!(s(&["v=spf1 -all"]), Err(RecordError::Absent));
        assert_eq!(s(&["v=spf1 -all", "v=STSv1; id=1"]).unwrap().id, "1");
        assert_eq!(
            s(&["v=STSv1; id=1", "v=STSv1; id=2"]),
            Err(RecordError::Several(2))
        );
        // Records that only start like the version are not candidates.
        for other in ["v=STSv10; id=2", "v=STSv1x; id=2", "v=STSv1"] {
            assert_eq!(s(&["v=STSv1; id=1", other]).unwrap().id, "1", "{other}");
        }
        assert_eq!(s(&["v=STSv1 ; id=3"]).unwrap().id, "3");
    }
}
