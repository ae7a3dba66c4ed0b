//! SMTP TLS Reporting (RFC 8460): session results counted per policy and
//! day ([`TlsResult`], kept by the [`Store`](crate::Store)), and the
//! aggregate report in RFC 8460 §4's JSON ([`report`]).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::SystemTime;

use serde_json::{Value, json};
use smtp_core::delivery::tls_rpt::ResultType;

use crate::time::rfc3339;

/// A count of sessions with one result, under one policy, to one host,
/// between one pair of addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsResult {
    /// The policy domain (the recipient domain).
    pub policy_domain: String,
    /// `sts`, or `no-policy-found`.
    pub policy_type: String,
    /// The policy, one entry per line (empty without one).
    pub policy_string: Vec<String>,
    /// The policy's `mx` patterns.
    pub mx_host: Vec<String>,
    /// The MX host the session went to (empty for a policy fetch failure).
    pub receiving_mx: String,
    /// The local address the session was made from (`sending-mta-ip`);
    /// `None` without a session (a policy fetch failure, a host the policy
    /// left out) or when the transport did not tell it.
    pub sending_ip: Option<IpAddr>,
    /// The address the session connected to (`receiving-ip`); `None`
    /// without a session.
    pub receiving_ip: Option<IpAddr>,
    /// The result.
    pub result: ResultType,
    /// How many sessions.
    pub count: u64,
}

/// Who writes the report.
#[derive(Clone, Debug)]
pub struct Reporter {
    /// `organization-name`.
    pub organization: String,
    /// `contact-info`.
    pub contact: String,
}

/// One aggregate report per policy domain, over `[start, end)`, from the
/// counts of those days.
pub fn report(
    reporter: &Reporter,
    start: SystemTime,
    end: SystemTime,
    results: &[TlsResult],
) -> Vec<Value> {
    // Per domain, per policy (type and string): successes, failures by
    // (result, host, sending address, receiving address).
    type Failure = (String, String, Option<IpAddr>, Option<IpAddr>);
    type Counts = (u64, BTreeMap<Failure, u64>, Vec<String>);
    let mut domains: BTreeMap<&str, BTreeMap<(&str, &[String]), Counts>> = BTreeMap::new();
    for r in results {
        let entry = domains
            .entry(&r.policy_domain)
            .or_default()
            .entry((&r.policy_type, &r.policy_string))
            .or_insert_with(|| (0, BTreeMap::new(), r.mx_host.clone()));
        if r.result == ResultType::Success {
            entry.0 += r.count;
        } else {
            *entry
                .1
                .entry((
                    r.result.as_str().to_owned(),
                    r.receiving_mx.clone(),
                    r.sending_ip,
                    r.receiving_ip,
                ))
                .or_default() += r.count;
        }
    }
    let (from, to) = (rfc3339(start), rfc3339(end));
    domains
        .into_iter()
        .map(|(domain, policies)| {
            let policies: Vec<Value> = policies
                .into_iter()
                .map(|((kind, string), (ok, failures, mx))| {
                    let failed: u64 = failures.values().sum();
                    let details: Vec<Value> = failures
                        .into_iter()
                        .map(|((result, host, sending, receiving), n)| {
                            let mut d = json!({
                                "result-type": result,
                                "failed-session-count": n,
                            });
                            if let Some(ip) = sending {
                                d["sending-mta-ip"] = json!(ip.to_string());
                            }
                            if let Some(ip) = receiving {
                                d["receiving-ip"] = json!(ip.to_string());
                            }
                            if !host.is_empty() {
                                d["receiving-mx-hostname"] = json!(host);
                            }
                            d
                        })
                        .collect();
                    json!({
                        "policy": {
                            "policy-type": kind,
                            "policy-string": string,
                            "policy-domain": domain,
                            "mx-host": mx,
                        },
                        "summary": {
                            "total-successful-session-count": ok,
                            "total-failure-session-count": failed,
                        },
                        "failure-details": details,
                    })
                })
                .collect();
            json!({
                "organization-name": reporter.organization,
                "date-range": {"start-datetime": from, "end-datetime": to},
                "contact-info": reporter.contact,
                "report-id": format!("{from}_{domain}"),
                "policies": policies,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn successes_and_failures_are_summed_per_policy() {
        let r = |result, host: &str, count| TlsResult {
            policy_domain: "example.com".into(),
            policy_type: "sts".into(),
            policy_string: vec!["version: STSv1".into()],
            mx_host: vec!["*.example.com".into()],
            receiving_mx: host.into(),
            sending_ip: None,
            receiving_ip: None,
            result,
            count,
        };
        let reporter = Reporter {
            organization: "o".into(),
            contact: "c".into(),
        };
        let out = report(
            &reporter,
            SystemTime::UNIX_EPOCH,
            SystemTime::UNIX_EPOCH,
            &[
                r(ResultType::Success, "mx.example.com", 3),
                r(ResultType::StartTlsNotSupported, "mx.example.com", 2),
            ],
        );
        assert_eq!(out.len(), 1);
        let p = &out[0]["policies"][0];
        assert_eq!(p["summary"]["total-successful-session-count"], 3);
        assert_eq!(p["summary"]["total-failure-session-count"], 2);
        assert_eq!(
            p["failure-details"][0]["result-type"],
            "starttls-not-supported"
        );
    }

    /// Each failure detail names the addresses of its sessions when they
    /// are known (RFC 8460 section 4.3: `sending-mta-ip`, `receiving-ip`),
    /// one detail per pair; successes are summed whatever their addresses;
    /// a failure without a session (a policy fetch) names none.
    #[test]
    fn failure_details_name_both_addresses_when_known() {
        let ip = |s: &str| -> Option<IpAddr> { Some(s.parse().unwrap()) };
        let r = |result, host: &str, sending, receiving, count| TlsResult {
            policy_domain: "example.com".into(),
            policy_type: "sts".into(),
            policy_string: vec!["version: STSv1".into()],
            mx_host: vec!["*.example.com".into()],
            receiving_mx: host.into(),
            sending_ip: sending,
            receiving_ip: receiving,
            result,
            count,
        };
        let reporter = Reporter {
            organization: "o".into(),
            contact: "c".into(),
        };
        let mismatch = ResultType::CertificateHostMismatch;
        let out = report(
            &reporter,
            SystemTime::UNIX_EPOCH,
            SystemTime::UNIX_EPOCH,
            &[
                r(
                    ResultType::Success,
                    "mx1.example.com",
                    ip("192.0.2.1"),
                    ip("198.51.100.1"),
                    3,
                ),
                r(
                    ResultType::Success,
                    "mx2.example.com",
                    ip("2001:db8::1"),
                    ip("2001:db8::25"),
                    4,
                ),
                r(
                    mismatch,
                    "mx1.example.com",
                    ip("192.0.2.1"),
                    ip("198.51.100.1"),
                    2,
                ),
                r(
                    mismatch,
                    "mx1.example.com",
                    ip("192.0.2.1"),
                    ip("198.51.100.2"),
                    1,
                ),
                r(
                    mismatch,
                    "mx1.example.com",
                    ip("192.0.2.1"),
                    ip("198.51.100.1"),
                    5,
                ),
                r(ResultType::StsPolicyFetchError, "", None, None, 1),
            ],
        );
        let p = &out[0]["policies"][0];
        assert_eq!(p["summary"]["total-successful-session-count"], 7);
        assert_eq!(p["summary"]["total-failure-session-count"], 9);
        let details = p["failure-details"].as_array().unwrap();
        assert_eq!(details.len(), 3, "{details:?}");
        let find = |receiving: &str| {
            details
                .iter()
                .find(|d| d["receiving-ip"] == receiving)
                .unwrap_or_else(|| panic!("no detail for {receiving}: {details:?}"))
        };
        let one = find("198.51.100.1");
        assert_eq!(one["result-type"], "certificate-host-mismatch");
        assert_eq!(one["sending-mta-ip"], "192.0.2.1");
        assert_eq!(one["receiving-mx-hostname"], "mx1.example.com");
        assert_eq!(one["failed-session-count"], 7);
        assert_eq!(find("198.51.100.2")["failed-session-count"], 1);
        let fetch = details
            .iter()
            .find(|d| d["result-type"] == "sts-policy-fetch-error")
            .unwrap();
        for field in ["sending-mta-ip", "receiving-ip", "receiving-mx-hostname"] {
            assert!(fetch.get(field).is_none(), "{fetch}");
        }
        assert_eq!(fetch["failed-session-count"], 1);
    }
}
