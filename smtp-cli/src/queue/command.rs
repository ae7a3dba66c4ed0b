//! The `smtp queue run …` command line that delivers what `send --queue`
//! left queued: the relay's settings are not stored with the messages, so
//! it repeats those `send` was given (never a secret: only where the
//! password comes from), and the runner's settings.

use std::ffi::OsStr;
use std::path::Path;

use clap::ValueEnum;

use crate::cli::SendArgs;

/// `smtp queue run [--queue DIR]` and the flags of `args` that `queue run`
/// takes, each value quoted for a POSIX shell where it needs it.
pub(crate) fn run_command(args: &SendArgs) -> String {
    let mut words: Vec<String> = ["smtp", "queue", "run"].map(str::to_owned).into();
    let mut flag = |name: &str, value: Option<String>| {
        if let Some(v) = value {
            words.push(name.to_owned());
            words.push(quote(&v));
        }
    };
    // Absolute: the line is for a later run, from cron or another
    // directory.
    let path = |p: &Option<std::path::PathBuf>| {
        p.as_deref()
            .filter(|p| !p.as_os_str().is_empty())
            .map(|p| std::path::absolute(p).unwrap_or_else(|_| p.to_owned()))
            .map(|p| lossy(p.as_os_str()))
    };
    let name = |v: Option<clap::builder::PossibleValue>| v.map(|p| p.get_name().to_owned());
    // A PostgreSQL URL as given (never with a password: refused).
    let queue = match args.queue.as_deref().and_then(|q| q.to_str()) {
        Some(url) if smtp_queue::is_postgres_url(url) => Some(url.to_owned()),
        _ => path(&args.queue),
    };
    flag("--queue", queue);
    flag("--config", path(&args.config));
    flag("--account", args.account.clone());
    flag("--server", args.server.clone());
    flag("--port", args.port.map(|p| p.to_string()));
    flag("--tls", name(args.tls.and_then(|t| t.to_possible_value())));
    flag("--ca-file", path(&args.ca_file));
    flag("--user", args.login.user.clone());
    flag("--password-env", args.login.password_env.clone());
    flag("--password-file", path(&args.login.password_file));
    flag("--password-command", args.login.password_command.clone());
    flag(
        "--auth",
        name(args.login.auth.and_then(|a| a.to_possible_value())),
    );
    flag("--helo", args.helo.clone());
    flag("--dns-server", args.dns_server.clone());
    flag("--mx-port", args.mx_port.map(|p| p.to_string()));
    flag(
        "--mta-sts",
        (args.mta_sts.mta_sts == Some(crate::cli::Switch::Off)).then(|| "off".to_owned()),
    );
    let n = |v: Option<u64>| v.map(|v| v.to_string());
    flag("--connect-timeout", n(args.connect_timeout));
    flag("--command-timeout", n(args.command_timeout));
    let r = &args.retry;
    let m = |v: Option<u16>| v.map(|v| v.to_string());
    flag("--retry-first", n(r.retry_first));
    flag("--retry-max", n(r.retry_max));
    flag("--max-lifetime", n(r.max_lifetime));
    flag("--concurrency", m(r.concurrency));
    flag("--per-destination", m(r.per_destination));
    flag("--per-connection", m(r.per_connection));
    for rate in &r.rate.rate {
        flag("--rate", Some(rate.clone()));
    }
    flag("--burst", r.rate.burst.map(|b| b.to_string()));
    if args.implicit_tls {
        words.push("--implicit-tls".to_owned());
    }
    words.join(" ")
}

fn lossy(s: &OsStr) -> String {
    Path::new(s).display().to_string()
}

/// `word` as a POSIX shell reads it back: as it is when it holds only
/// characters no shell treats specially, else in single quotes.
fn quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "@%+=:,./_-[]".contains(c));
    if plain {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::cli::TlsArg;

    #[test]
    fn the_run_line_repeats_the_relay_and_runner_settings_quoted() {
        let mut args = SendArgs {
            queue: Some(PathBuf::from("/var/q x")),
            server: Some("127.0.0.1:2525".into()),
            tls: Some(TlsArg::None),
            ..SendArgs::default()
        };
        args.login.user = Some("alice".into());
        args.login.password_file = Some(PathBuf::from("/etc/smtp/pw"));
        args.retry.retry_first = Some(60);
        args.command_timeout = Some(5);
        assert_eq!(
            run_command(&args),
            "smtp queue run --queue '/var/q x' --server 127.0.0.1:2525 --tls none \
             --user alice --password-file /etc/smtp/pw --command-timeout 5 --retry-first 60"
        );
        // A bare --queue: the default directory, named by no flag.
        let args = SendArgs {
            queue: Some(PathBuf::new()),
            ..SendArgs::default()
        };
        assert_eq!(run_command(&args), "smtp queue run");
        // MTA-STS is on unless turned off.
        let mut args = SendArgs {
            queue: Some(PathBuf::new()),
            ..SendArgs::default()
        };
        args.mta_sts.mta_sts = Some(crate::cli::Switch::Off);
        assert_eq!(run_command(&args), "smtp queue run --mta-sts off");
        // A relative one is made absolute: the line is run from elsewhere.
        let args = SendArgs {
            queue: Some(PathBuf::from("q2")),
            ..SendArgs::default()
        };
        let here = std::env::current_dir().unwrap().join("q2");
        assert_eq!(
            run_command(&args),
            format!("smtp queue run --queue {}", quote(&here.to_string_lossy()))
        );
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert_eq!(quote(""), "''");
    }
}
