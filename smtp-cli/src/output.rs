//! What the user sees: a line per recipient, or one JSON object; and the
//! exit code that sums it up.

use serde::Serialize;
use smtp_core::transport::TlsInfo;
use smtp_core::{Error, RecipientOutcome, RecipientStatus};

use crate::fail::{EX_NOPERM, EX_OK, EX_PROTOCOL, EX_TEMPFAIL, EX_UNAVAILABLE};

#[derive(Debug, Serialize)]
pub(crate) struct Report {
    pub(crate) messages: Vec<MessageReport>,
}

#[derive(Debug, Serialize)]
pub(crate) struct MessageReport {
    pub(crate) message: String,
    pub(crate) recipients: Vec<RecipientReport>,
    pub(crate) diagnosis: Option<String>,
    /// Faults that ended sessions (for the exit code), not serialised.
    #[serde(skip)]
    pub(crate) errors: Vec<Error>,
}

#[derive(Debug, Serialize)]
pub(crate) struct RecipientReport {
    pub(crate) address: String,
    pub(crate) status: &'static str,
    pub(crate) code: Option<u16>,
    pub(crate) enhanced_code: Option<String>,
    pub(crate) text: String,
    pub(crate) host: Option<String>,
    pub(crate) tls: Option<String>,
    pub(crate) cert_verified: Option<bool>,
}

impl RecipientReport {
    pub(crate) fn new(o: &RecipientOutcome, host: Option<&str>, tls: Option<&TlsInfo>) -> Self {
        Self {
            address: o.recipient.to_string(),
            status: o.status.name(),
            code: o.code().map(|c| c.as_u16()),
            enhanced_code: o.enhanced_code().map(|c| c.to_string()),
            text: o.text(),
            host: host.map(str::to_owned),
            tls: tls.map(|t| t.version.clone()),
            cert_verified: tls.map(|t| t.verified),
        }
    }
}

impl Report {
    pub(crate) fn print(&self, json: bool) {
        if json {
            match serde_json::to_string_pretty(self) {
                Ok(s) => say!("{s}"),
                Err(e) => tell!("smtp: cannot render JSON: {e}"),
            }
            return;
        }
        for m in &self.messages {
            for r in &m.recipients {
                let code = match (r.code, &r.enhanced_code) {
                    (Some(c), Some(e)) => format!("{c} {e} "),
                    (Some(c), None) => format!("{c} "),
                    _ => String::new(),
                };
                let via = match (&r.host, &r.tls, r.cert_verified) {
                    (Some(h), Some(t), Some(v)) => {
                        format!(
                            " [{h}, {t}, {}]",
                            if v { "verified" } else { "not verified" }
                        )
                    }
                    (Some(h), None, _) => format!(" [{h}, plaintext]"),
                    _ => String::new(),
                };
                let text = r.text.replace('\n', " / ");
                say!("{:<9} {}  {code}{text}{via}", r.status, r.address);
            }
            if let Some(d) = &m.diagnosis {
                say!("note: {d}");
            }
        }
    }

    /// 0 only when everyone was accepted; see `EXIT_CODES`.
    pub(crate) fn exit_code(&self) -> u8 {
        let errors = self.messages.iter().flat_map(|m| &m.errors);
        let mut code = EX_OK;
        for e in errors {
            match e {
                Error::AuthenticationFailed { .. } => return EX_NOPERM,
                Error::Policy(_) | Error::Tls { .. } | Error::Sasl(_) => code = EX_PROTOCOL,
                _ => {}
            }
        }
        if code != EX_OK {
            return code;
        }
        let statuses: Vec<&str> = self
            .messages
            .iter()
            .flat_map(|m| m.recipients.iter().map(|r| r.status))
            .collect();
        if statuses.contains(&RecipientStatus::Deferred.name()) {
            EX_TEMPFAIL
        } else if statuses.contains(&RecipientStatus::Rejected.name()) {
            EX_UNAVAILABLE
        } else {
            EX_OK
        }
    }
}
