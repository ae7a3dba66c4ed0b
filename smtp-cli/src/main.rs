//! The `smtp` command: send mail by standard or direct delivery, probe
//! servers, show MX plans, run a local capture server, and a demo.
//!
//! Invoked as `sendmail`, it takes sendmail's options (`-t`, `-f`, `-i`,
//! `-oi`, `-F`, recipients as operands) and reads the message from standard
//! input, so it can stand in `/usr/sbin/sendmail`'s place.
#![forbid(unsafe_code)]

#[macro_use]
mod terminal;

mod cli;
mod config;
mod demo;
mod fail;
mod message;
mod output;
mod probe;
mod secrets;
mod send;
mod sink;
mod spool;

use std::ffi::OsString;
use std::path::Path;
use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command, SendArgs};
use crate::fail::Failure;

/// sendmail's command line turned into `smtp send` arguments.
fn sendmail_args(args: &[String]) -> Result<SendArgs, Failure> {
    let mut send = SendArgs {
        read_recipients: false,
        ..SendArgs::default()
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |flag: &str| -> Result<String, Failure> {
            match a.strip_prefix(flag).filter(|v| !v.is_empty()) {
                Some(v) => Ok(v.to_owned()),
                None => it
                    .next()
                    .cloned()
                    .ok_or_else(|| Failure::usage(format!("{flag} needs a value"))),
            }
        };
        match a.as_str() {
            "-t" => send.read_recipients = true,
            "-i" | "-oi" | "-oem" | "-oee" | "-om" => {}
            "-v" => send.verbose = true,
            s if s.starts_with("-f") || s.starts_with("-r") => send.from = Some(value(&s[..2])?),
            s if s.starts_with("-F") => send.full_name = Some(value("-F")?),
            "--" => send.to.extend(it.by_ref().cloned()),
            s if s.starts_with('-') => tell!("smtp (sendmail mode): ignoring option {s}"),
            s => send.to.push(s.to_owned()),
        }
    }
    Ok(send)
}

/// Exit codes after SIGINT and SIGTERM, as a shell reports them (128 + signal).
const EXIT_SIGINT: u8 = 130;
const EXIT_SIGTERM: u8 = 143;

/// On SIGINT or SIGTERM: removes any spool of standard input, then exits.
/// The handlers are installed before this returns; the waiting runs as a
/// task of its own, so it acts even while the command blocks on reading
/// standard input. Drops do not run on exit, hence the explicit removal.
fn stop_on_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        tell!("smtp: warning: cannot watch for signals; a spool may be left on interruption");
        return;
    };
    tokio::spawn(async move {
        let code = tokio::select! {
            _ = int.recv() => EXIT_SIGINT,
            _ = term.recv() => EXIT_SIGTERM,
        };
        spool::remove_all();
        std::process::exit(i32::from(code));
    });
}

async fn run(command: Command) -> Result<u8, Failure> {
    match command {
        Command::Send(args) => {
            stop_on_signal();
            send::run(*args).await
        }
        Command::Probe(args) => probe::run(args).await,
        Command::Mx(args) => probe::mx(args).await,
        Command::Sink(args) => sink::run(args).await,
        Command::Demo(args) => demo::run(args).await,
    }
}

fn main() -> ExitCode {
    let argv: Vec<OsString> = std::env::args_os().collect();
    let invoked_as = argv
        .first()
        .and_then(|a| Path::new(a).file_name())
        .map(|n| n.to_string_lossy().into_owned());
    let command = if invoked_as.as_deref() == Some("sendmail") {
        let args: Vec<String> = argv
            .iter()
            .skip(1)
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        match sendmail_args(&args) {
            Ok(a) => Command::Send(Box::new(a)),
            Err(f) => {
                tell!("sendmail: {f}");
                return ExitCode::from(f.code);
            }
        }
    } else {
        Cli::parse_from(argv).command
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            tell!("smtp: cannot start: {e}");
            return ExitCode::from(fail::EX_SOFTWARE);
        }
    };
    match runtime.block_on(run(command)) {
        Ok(code) => ExitCode::from(code),
        Err(f) => {
            tell!("smtp: {f}");
            ExitCode::from(f.code)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sendmail_options() {
        let args: Vec<String> = [
            "-t",
            "-oi",
            "-fbounce@example.org",
            "-F",
            "Alice",
            "bob@example.net",
            "-x",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let s = sendmail_args(&args).unwrap();
        assert!(s.read_recipients);
        assert_eq!(s.from.as_deref(), Some("bounce@example.org"));
        assert_eq!(s.full_name.as_deref(), Some("Alice"));
        assert_eq!(s.to, ["bob@example.net"]);
    }
}
