//! Named accounts in a TOML file, holding the same settings as the options.
//!
//! ```toml
//! [accounts.work]
//! server = "smtp.example.com"
//! port = 587
//! tls = "certified"
//! user = "alice@example.com"
//! password_command = "pass show smtp/work"
//! from = "alice@example.com"
//! rate = ["30/minute", "500/day"]   # the relay's caps (see --rate)
//! burst = 1
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::cli::{AuthArg, TlsArg};
use crate::fail::Failure;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct File {
    #[serde(default)]
    pub(crate) accounts: BTreeMap<String, Account>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Account {
    pub(crate) server: Option<String>,
    pub(crate) port: Option<u16>,
    pub(crate) tls: Option<TlsArg>,
    pub(crate) implicit_tls: Option<bool>,
    pub(crate) ca_file: Option<PathBuf>,
    pub(crate) user: Option<String>,
    pub(crate) password: Option<String>,
    pub(crate) password_env: Option<String>,
    pub(crate) password_file: Option<PathBuf>,
    pub(crate) password_command: Option<String>,
    pub(crate) auth: Option<AuthArg>,
    pub(crate) helo: Option<String>,
    pub(crate) from: Option<String>,
    pub(crate) dns_server: Option<String>,
    /// DKIM signing: the private key's PEM file, the selector, the domain
    /// (default: each message's From: domain), the canonicalization.
    pub(crate) dkim_key: Option<PathBuf>,
    pub(crate) dkim_selector: Option<String>,
    pub(crate) dkim_domain: Option<String>,
    pub(crate) dkim_canonicalization: Option<String>,
    /// The relay account's rate limits (`["30/minute", "500/day"]`) and
    /// burst, as `--rate` and `--burst`.
    #[serde(default)]
    pub(crate) rate: Vec<String>,
    pub(crate) burst: Option<u32>,
}

/// `$XDG_CONFIG_HOME/smtp/config.toml` or `~/.config/smtp/config.toml`.
pub(crate) fn default_path() -> Option<PathBuf> {
    std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .map(|d| d.join("smtp").join("config.toml"))
}

/// Loads the account `name` (or `default` when none is named and it exists).
pub(crate) fn load(path: Option<&Path>, name: Option<&str>) -> Result<Option<Account>, Failure> {
    let explicit = path.is_some();
    let Some(path) = path.map(Path::to_path_buf).or_else(default_path) else {
        return Ok(None);
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if !explicit && e.kind() == std::io::ErrorKind::NotFound => {
            return match name {
                Some(n) => Err(Failure::config(format!(
                    "no config file at {} for account {n:?}",
                    path.display()
                ))),
                None => Ok(None),
            };
        }
        Err(e) => {
            return Err(Failure::config(format!(
                "cannot read {}: {e}",
                path.display()
            )));
        }
    };
    let file: File =
        toml::from_str(&text).map_err(|e| Failure::config(format!("{}: {e}", path.display())))?;
    let account = match name {
        Some(n) => Some(file.accounts.get(n).cloned().ok_or_else(|| {
            let known: Vec<&str> = file.accounts.keys().map(String::as_str).collect();
            Failure::config(format!(
                "no account {n:?} in {} (it has: {})",
                path.display(),
                known.join(", ")
            ))
        })?),
        None => file.accounts.get("default").cloned(),
    };
    if account.as_ref().is_some_and(|a| a.password.is_some()) && world_readable(&path) {
        tell!(
            "warning: {} holds a password and other users can read it; run: chmod 600 {}",
            path.display(),
            path.display()
        );
    }
    Ok(account)
}

#[cfg(unix)]
fn world_readable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o044 != 0)
}

#[cfg(not(unix))]
fn world_readable(_: &Path) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_account_s_rate_and_burst_read_as_the_flags_do() {
        let file: File = toml::from_str(
            "[accounts.relay]\nserver = \"smtp.example.com\"\nrate = [\"30/minute\", \"500/day\"]\nburst = 5\n",
        )
        .unwrap();
        let a = &file.accounts["relay"];
        assert_eq!(a.rate, ["30/minute", "500/day"]);
        let crate::rate::Choice::Limits(limits) = crate::rate::choice(&a.rate, a.burst).unwrap()
        else {
            panic!("limits expected");
        };
        assert_eq!(limits.len(), 2);
        assert!(limits.iter().all(|l| l.burst == 5));
        // Without them: no rate.
        let file: File = toml::from_str("[accounts.x]\nserver = \"h\"\n").unwrap();
        assert!(file.accounts["x"].rate.is_empty());
        assert!(toml::from_str::<File>("[accounts.x]\nrate = \"30/minute\"\n").is_err());
    }
}
