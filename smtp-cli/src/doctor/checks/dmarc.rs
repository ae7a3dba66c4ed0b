//! The sender domain's DMARC record and its policy.

use mail_auth::common::parse::TxtRecordParser as _;
use mail_auth::dmarc::{Dmarc, Policy};
use smtp_core::delivery::mx::DnsError;
use smtp_dns::RecordResolver;

use crate::doctor::Check;

/// The sender domain's DMARC record and its policy: at `_dmarc.DOMAIN`,
/// else at the organisational domain (here: the last two labels, as no
/// public suffix list is at hand), where `sp=` applies to subdomains.
pub(crate) async fn dmarc(resolver: &dyn RecordResolver, domain: &str) -> Check {
    const ID: &str = "dmarc";
    let publish = format!(
        "publish a TXT record at _dmarc.{domain}: v=DMARC1; p=none; rua=mailto:dmarc@{domain} \
         (Gmail and Yahoo require one from bulk senders), read the reports, then tighten p= to \
         quarantine or reject"
    );
    let labels: Vec<&str> = domain.split('.').collect();
    let mut candidates = vec![domain.to_owned()];
    if labels.len() > 2 {
        candidates.push(labels[labels.len() - 2..].join("."));
    }
    for (i, at) in candidates.iter().enumerate() {
        let name = format!("_dmarc.{at}");
        let records = match resolver.txt(&name).await {
            Ok(r) => r,
            Err(DnsError::NxDomain) => Vec::new(),
            Err(e) => {
                return Check::warn(
                    ID,
                    format!("could not look up {name}: {e}"),
                    "try again, or another resolver (--dns-server)",
                );
            }
        };
        let mut dmarc: Vec<String> = records
            .into_iter()
            .filter(|r| r.trim_start().to_ascii_lowercase().starts_with("v=dmarc1"))
            .collect();
        let text = match dmarc.len() {
            0 => continue,
            1 => dmarc.remove(0),
            n => {
                return Check::fail(
                    ID,
                    format!("{n} DMARC records at {name}: receivers then apply none"),
                    format!("keep one; {publish}"),
                );
            }
        };
        let subdomain = i > 0;
        if let Some(fault) = dmarc_fault(&text) {
            return Check::fail(
                ID,
                format!(
                    "the DMARC record at {name} ({text}) has {}: receivers ignore the whole record",
                    fault.what
                ),
                format!(
                    "{}, keeping the policy you meant; the record then applies again",
                    fault.fix
                ),
            );
        }
        let parsed = match Dmarc::parse(text.as_bytes()) {
            Ok(d) => d,
            Err(e) => {
                return Check::fail(
                    ID,
                    format!(
                        "the DMARC record at {name} ({text}) does not parse ({e}): receivers ignore it"
                    ),
                    format!(
                        "fix it to RFC 7489's syntax (v=DMARC1; p=none|quarantine|reject; …), \
                         keeping the policy you meant; if {name} has no record you meant: {publish}"
                    ),
                );
            }
        };
        let policy = if subdomain && parsed.sp != Policy::Unspecified {
            parsed.sp
        } else {
            parsed.p
        };
        let word = |p: Policy| match p {
            Policy::None => "none",
            Policy::Quarantine => "quarantine",
            Policy::Reject => "reject",
            Policy::Unspecified => "unspecified",
        };
        let reports = if parsed.rua.is_empty() {
            "no aggregate reports (no rua=)".to_owned()
        } else {
            format!(
                "reports to {}",
                parsed
                    .rua
                    .iter()
                    .map(|u| u.uri.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let whose = if subdomain {
            format!(
                "{name} (the organisational domain's; {} applies to {domain})",
                if parsed.sp != Policy::Unspecified {
                    "sp="
                } else {
                    "p="
                }
            )
        } else {
            name.clone()
        };
        // The tag that governs the sender's domain, which the advice names.
        let governing = if subdomain && parsed.sp != Policy::Unspecified {
            "sp"
        } else {
            "p"
        };
        let summary = format!("{whose}: policy {}, {reports}", word(policy));
        return match policy {
            Policy::Quarantine | Policy::Reject => Check::pass(ID, summary),
            Policy::None => Check::warn(
                ID,
                format!(
                    "{summary}: receivers are asked to do nothing with mail that fails (monitoring only)"
                ),
                if parsed.rua.is_empty() {
                    format!(
                        "add rua=mailto:dmarc@{at} to {name} to get reports; once they show your mail passing SPF or DKIM, move to {governing}=quarantine, then {governing}=reject"
                    )
                } else {
                    format!(
                        "once the reports show your mail passing SPF or DKIM, move {name} to {governing}=quarantine, then {governing}=reject"
                    )
                },
            ),
            Policy::Unspecified => Check::fail(
                ID,
                format!("{summary}: the record has no p= policy"),
                publish,
            ),
        };
    }
    Check::fail(
        ID,
        format!(
            "{domain} has no DMARC record (_dmarc.{domain}): mail that forges it is not refused, and large providers may refuse or file its mail"
        ),
        publish,
    )
}

/// A tag of a DMARC record whose value is not one it can take.
struct DmarcFault {
    /// `p=rejekt (not none, quarantine or reject)`.
    what: String,
    /// `fix p=rejekt to p=reject`.
    fix: String,
}

/// The first tag of a DMARC record (RFC 7489 §6.3) with a value receivers
/// reject, named, with the nearest valid value: a typo in `p=` must be
/// fixed to the policy meant, not replaced by `p=none`.
fn dmarc_fault(record: &str) -> Option<DmarcFault> {
    const POLICIES: &[&str] = &["none", "quarantine", "reject"];
    const MODES: &[&str] = &["r", "s"];
    for (k, v) in record
        .split(';')
        .filter_map(|t| t.split_once('='))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_ascii_lowercase()))
    {
        let allowed = match k.as_str() {
            "p" | "sp" => POLICIES,
            "adkim" | "aspf" => MODES,
            "pct" => {
                if v.parse::<u8>().is_ok_and(|n| n <= 100) {
                    continue;
                }
                return Some(DmarcFault {
                    what: format!("pct={v} (not a number from 0 to 100)"),
                    fix: "fix pct= to a percentage from 0 to 100, or remove it (100)".to_owned(),
                });
            }
            _ => continue,
        };
        if allowed.contains(&v.as_str()) {
            continue;
        }
        let nearest = allowed
            .iter()
            .min_by_key(|a| edit_distance(a, &v))
            .copied()
            .unwrap_or(allowed[0]);
        return Some(DmarcFault {
            what: format!(
                "{k}={v} (not {} or {})",
                allowed[..allowed.len() - 1].join(", "),
                allowed[allowed.len() - 1]
            ),
            fix: format!("fix {k}={v} to {k}={nearest} (if that is what you meant)"),
        });
    }
    None
}

/// Levenshtein distance, for "did you mean".
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let here = (prev + usize::from(ca != *cb))
                .min(row[j] + 1)
                .min(row[j + 1] + 1);
            prev = row[j + 1];
            row[j + 1] = here;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dmarc_typo_is_named_with_the_value_meant() {
        let f = dmarc_fault("v=DMARC1; p=rejekt; rua=mailto:d@example.org").unwrap();
        assert_eq!(f.what, "p=rejekt (not none, quarantine or reject)");
        assert_eq!(
            f.fix,
            "fix p=rejekt to p=reject (if that is what you meant)"
        );
        let f = dmarc_fault("v=DMARC1; p=reject; sp=quarantin").unwrap();
        assert!(f.fix.contains("sp=quarantine"), "{}", f.fix);
        let f = dmarc_fault("v=DMARC1; p=none; adkim=x").unwrap();
        assert_eq!(f.what, "adkim=x (not r or s)");
        assert!(dmarc_fault("v=DMARC1; p=none; pct=101").is_some());
        assert!(dmarc_fault("v=DMARC1; p=Reject; sp=none; adkim=s; pct=50").is_none());
    }
}
