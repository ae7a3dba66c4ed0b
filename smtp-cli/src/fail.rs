//! Failures that stop the command, each with its sysexits code.

use std::fmt;
use std::path::Path;

pub(crate) const EX_OK: u8 = 0;
pub(crate) const EX_USAGE: u8 = 64;
pub(crate) const EX_DATAERR: u8 = 65;
pub(crate) const EX_NOINPUT: u8 = 66;
pub(crate) const EX_NOHOST: u8 = 68;
pub(crate) const EX_UNAVAILABLE: u8 = 69;
pub(crate) const EX_SOFTWARE: u8 = 70;
pub(crate) const EX_CANTCREAT: u8 = 73;
pub(crate) const EX_TEMPFAIL: u8 = 75;
pub(crate) const EX_PROTOCOL: u8 = 76;
pub(crate) const EX_NOPERM: u8 = 77;
pub(crate) const EX_CONFIG: u8 = 78;

/// A reason to stop, with what to tell the user and the exit code.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) code: u8,
    pub(crate) message: String,
    /// What went wrong in one word, for `--json` (`error.kind`).
    pub(crate) kind: &'static str,
}

/// The kind a failure with this exit code has unless it says otherwise.
const fn kind_of(code: u8) -> &'static str {
    match code {
        EX_USAGE => "usage",
        EX_DATAERR => "data",
        EX_NOINPUT => "no-input",
        EX_NOHOST => "resolve",
        EX_UNAVAILABLE => "unavailable",
        EX_CANTCREAT => "cant-create",
        EX_TEMPFAIL => "temporary",
        EX_PROTOCOL => "tls-policy",
        EX_NOPERM => "authentication",
        EX_CONFIG => "config",
        _ => "internal",
    }
}

impl Failure {
    pub(crate) fn new(code: u8, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            kind: kind_of(code),
        }
    }
    /// The same failure with a more precise kind.
    pub(crate) fn kind(mut self, kind: &'static str) -> Self {
        self.kind = kind;
        self
    }
    pub(crate) fn usage(message: impl Into<String>) -> Self {
        Self::new(EX_USAGE, message)
    }
    pub(crate) fn data(message: impl Into<String>) -> Self {
        Self::new(EX_DATAERR, message)
    }
    pub(crate) fn config(message: impl Into<String>) -> Self {
        Self::new(EX_CONFIG, message)
    }
    pub(crate) fn no_input(path: &Path, e: &std::io::Error) -> Self {
        Self::new(EX_NOINPUT, format!("{}: {e}", path.display()))
    }
    pub(crate) fn io(what: &str, e: &std::io::Error) -> Self {
        Self::new(EX_SOFTWARE, format!("{what}: {e}"))
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}
