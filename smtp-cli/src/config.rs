//! Named accounts in a TOML file, holding the same settings as the options.
//!
//! ```toml
//! # The queue, when --queue is not given: a directory, or a PostgreSQL
//! # URL (the one place a URL may hold its password: chmod 600 the file).
//! queue = "postgres://smtp@db.internal/smtpq"
//!
//! [accounts.work]
//! server = "smtp.example.com"
//! port = 587
//! tls = "certified"
//! user = "alice@example.com"
//! password_command = "pass show smtp/work"
//! from = "alice@example.com"
//! rate = ["30/minute", "500/day"]   # the relay's limits (see --rate);
//! burst = 1                         # one alone: rate = "30/minute"
//!
//! # Direct delivery's traffic shaping (over the built-in table):
//! [destinations."*.google.com"]
//! connections = 2
//! messages_per_connection = 50
//! rate = "20/second"
//! burst = 5
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use smtp_queue::rate::{Limit, Rate};
use smtp_queue::shaping::{Pattern, Rule, Shaping};

use crate::cli::{AuthArg, TlsArg};
use crate::fail::Failure;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct File {
    /// The queue when `--queue` is not given: a directory or a
    /// `postgres://` URL.
    pub(crate) queue: Option<String>,
    #[serde(default)]
    pub(crate) accounts: BTreeMap<String, Account>,
    /// Direct delivery's shapes by MX host pattern (`*.example.com` or a
    /// host name), over the built-in table.
    #[serde(default)]
    pub(crate) destinations: BTreeMap<String, Destination>,
}

/// A `[destinations."PATTERN"]` table: what it leaves out comes from the
/// command line's (or the built-in) defaults.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Destination {
    /// Sessions at once.
    pub(crate) connections: Option<u16>,
    /// Messages per session.
    pub(crate) messages_per_connection: Option<u16>,
    /// Messages per period: `N/second|minute|hour|day`.
    pub(crate) rate: Option<Rate>,
    /// Messages that may go at once within the rate (default 1).
    pub(crate) burst: Option<u32>,
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
    /// The relay account's rate limits (`["30/minute", "500/day"]`, or
    /// one: `"30/minute"`) and burst, as `--rate` and `--burst`.
    #[serde(default, deserialize_with = "one_or_many")]
    pub(crate) rate: Vec<String>,
    pub(crate) burst: Option<u32>,
    /// Direct delivery: honour MTA-STS policies (`--mta-sts`; default true).
    pub(crate) mta_sts: Option<bool>,
}

/// A string, or a list of them (`rate = "30/minute"` as `[destinations]`
/// takes it, or `rate = ["30/minute", "500/day"]`).
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged, expecting = "a rate (\"30/minute\") or a list of rates")]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(one) => vec![one],
        OneOrMany::Many(many) => many,
    })
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

/// The file's top-level `queue` (a directory or a PostgreSQL URL), if
/// any. A missing file at the default place is no queue; one named with
/// `--config` must exist. Warns, as for an account's password, when the
/// URL holds a password and other users can read the file.
pub(crate) fn queue(path: Option<&Path>) -> Result<Option<String>, Failure> {
    let explicit = path.is_some();
    let Some(path) = path.map(Path::to_path_buf).or_else(default_path) else {
        return Ok(None);
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if !explicit && e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(Failure::config(format!(
                "cannot read {}: {e}",
                path.display()
            )));
        }
    };
    let file: File =
        toml::from_str(&text).map_err(|e| Failure::config(format!("{}: {e}", path.display())))?;
    let queue = file.queue.filter(|q| !q.is_empty());
    if queue.as_deref().is_some_and(crate::queue::url_has_password) && world_readable(&path) {
        tell!(
            "warning: {} holds a database password and other users can read it; run: chmod 600 {}",
            path.display(),
            path.display()
        );
    }
    Ok(queue)
}

/// Direct delivery's shaping: the built-in table under the file's
/// `[destinations]` (the most specific pattern first: host names, then
/// the longest suffix). No file (at the default place): the built-in
/// table alone.
pub(crate) fn shaping(path: Option<&Path>) -> Result<Shaping, Failure> {
    let explicit = path.is_some();
    let Some(path) = path.map(Path::to_path_buf).or_else(default_path) else {
        return Ok(Shaping::builtin());
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if !explicit && e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Shaping::builtin());
        }
        Err(e) => {
            return Err(Failure::config(format!(
                "cannot read {}: {e}",
                path.display()
            )));
        }
    };
    shaping_of(&text).map_err(|e| Failure::config(format!("{}: {e}", path.display())))
}

/// [`shaping`] from the file's text.
fn shaping_of(text: &str) -> Result<Shaping, String> {
    let file: File = toml::from_str(text).map_err(|e| e.to_string())?;
    let mut rules = Vec::new();
    for (written, d) in file.destinations {
        let here = format!("[destinations.{written:?}]");
        let pattern = Pattern::parse(&written).ok_or_else(|| {
            format!("{here}: a pattern is a host name or `*.` and a domain (e.g. \"*.google.com\")")
        })?;
        if d.connections == Some(0) || d.messages_per_connection == Some(0) {
            return Err(format!(
                "{here}: connections and messages_per_connection are at least 1"
            ));
        }
        if d.burst.is_some() && d.rate.is_none() {
            return Err(format!(
                "{here}: burst needs a rate (e.g. rate = \"20/second\")"
            ));
        }
        if d.burst == Some(0) {
            return Err(format!("{here}: burst is at least 1"));
        }
        let rule = Rule {
            connections: d.connections.map(usize::from),
            messages_per_connection: d.messages_per_connection.map(usize::from),
            rate: d
                .rate
                .map(|r| Limit::new(r).with_burst(d.burst.unwrap_or(1))),
        };
        rules.push((pattern, rule));
    }
    // Most specific first: a host name, then the longest domain.
    rules.sort_by_key(|(p, _)| {
        (
            p.as_str().starts_with('*'),
            std::cmp::Reverse(p.as_str().len()),
        )
    });
    Ok(rules
        .into_iter()
        .fold(Shaping::builtin(), |s, (p, r)| s.with_rule(p, r)))
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
        // The burst is the pace's, the shortest limit's.
        assert_eq!((limits[0].burst, limits[1].burst), (5, 1));
        // Without them: no rate.
        let file: File = toml::from_str("[accounts.x]\nserver = \"h\"\n").unwrap();
        assert!(file.accounts["x"].rate.is_empty());
        // One alone as a string, as [destinations] takes it.
        let file: File = toml::from_str("[accounts.x]\nrate = \"30/min\"\n").unwrap();
        assert_eq!(file.accounts["x"].rate, ["30/min"]);
        let e = toml::from_str::<File>("[accounts.x]\nrate = 30\n").unwrap_err();
        assert!(e.to_string().contains("a list of rates"), "{e}");
    }

    #[test]
    fn destinations_override_and_add_to_the_builtin_table() {
        let s = shaping_of(
            r#"
[accounts.work]
server = "smtp.example.com"

[destinations."*.google.com"]
connections = 1
rate = "20/second"
burst = 5

[destinations."*.example.org"]
messages_per_connection = 7

[destinations."mx1.example.org"]
connections = 3
"#,
        )
        .unwrap();
        let gmail = s.shape("mx:aspmx.l.google.com", 2, 100);
        assert_eq!(gmail.connections, 1);
        assert_eq!(gmail.messages_per_connection, 100);
        let rate: Rate = "20/second".parse().unwrap();
        assert_eq!(gmail.rate, Some(Limit::new(rate).with_burst(5)));
        // The host name is more specific than the domain's pattern.
        assert_eq!(s.shape("mx:mx1.example.org", 2, 100).connections, 3);
        assert_eq!(
            s.shape("mx:mx1.example.org", 2, 100)
                .messages_per_connection,
            100
        );
        assert_eq!(
            s.shape("mx:mx2.example.org", 2, 100)
                .messages_per_connection,
            7
        );
        // The built-in table still holds for the rest.
        assert_eq!(s.shape("mx:mx01.mail.icloud.com", 9, 100).connections, 2);
        assert_eq!(shaping_of("").unwrap(), Shaping::builtin());
    }

    #[test]
    fn a_destination_with_an_unknown_key_or_a_bad_value_is_refused() {
        for (text, says) in [
            (
                "[destinations.\"*.google.com\"]\nconnection = 2\n",
                "unknown field `connection`",
            ),
            (
                "[destinations.\"*.google.com\"]\nrate = \"20/fortnight\"\n",
                "N/minute",
            ),
            (
                "[destinations.\"*.google.com\"]\nburst = 5\n",
                "burst needs a rate",
            ),
            (
                "[destinations.\"*.google.com\"]\nconnections = 0\n",
                "at least 1",
            ),
            (
                "[destinations.\"a.*.com\"]\nconnections = 1\n",
                "a pattern is",
            ),
            (
                "[destination.\"*.google.com\"]\nconnections = 1\n",
                "unknown field `destination`",
            ),
        ] {
            let e = shaping_of(text).unwrap_err();
            assert!(e.contains(says), "{text}: {e}");
        }
    }
}
