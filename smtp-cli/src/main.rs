//! The `smtp` command: send mail by standard or direct delivery, probe
//! servers, show MX plans, run a local capture server, and a demo.
//!
//! Invoked as `sendmail`, it takes sendmail's options (`-t`, `-f`, `-i`,
//! `-oi`, `-F`, recipients as operands) and reads the message from standard
//! input, so it can stand in `/usr/sbin/sendmail`'s place.
#![forbid(unsafe_code)]

#[macro_use]
mod terminal;

mod advice;
mod cli;
mod compose;
mod config;
mod conformance;
mod demo;
mod dkim;
mod doctor;
mod fail;
mod greeting;
mod identity;
mod log;
mod merge;
mod message;
mod output;
mod probe;
mod progress;
mod queue;
mod rate;
mod reencode;
mod secrets;
mod send;
mod settings;
mod setup;
mod sink;
mod spool;
mod stdin;
mod unsubscribe;

use std::ffi::OsString;
use std::path::Path;
use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command, SendArgs};
use crate::fail::Failure;

/// sendmail's command line turned into `smtp send` arguments, as Postfix's
/// sendmail reads it: every option that takes a value consumes it (attached
/// or as the next argument), so no value is ever taken for a recipient.
/// Options about the local MTA's own workings are accepted and ignored;
/// modes other than delivering one message (`-bs`, `-q`) are refused, and
/// `-bp` alone (or the name `mailq`) is `smtp queue list` (see `main`).
fn sendmail_args(args: &[String]) -> Result<SendArgs, Failure> {
    let mut send = SendArgs {
        read_recipients: false,
        sendmail: true,
        ..SendArgs::default()
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if !a.starts_with('-') || a == "-" {
            // Postfix's sendmail takes "a@x, b@y" in one argument too.
            send.to.extend(
                a.split(',')
                    .map(str::trim)
                    .filter(|r| !r.is_empty())
                    .map(str::to_owned),
            );
            continue;
        }
        if a == "--" {
            send.to.extend(it.by_ref().cloned());
            break;
        }
        if let Some(name) = a.strip_prefix("--account=") {
            send.account = Some(name.to_owned());
            continue;
        }
        if a == "--account" {
            send.account = Some(next_value(&mut it, a)?);
            continue;
        }
        let flag = a.get(..2).unwrap_or(a);
        let attached = a.get(2..).filter(|v| !v.is_empty());
        let mut value = || match attached {
            Some(v) => Ok(v.to_owned()),
            None => next_value(&mut it, flag),
        };
        match flag {
            "-t" if attached.is_none() => send.read_recipients = true,
            "-v" if attached.is_none() => send.verbose = true,
            // -i, -oi: a lone dot does not end the message (it does without).
            "-i" if attached.is_none() => send.ignore_dots = true,
            "-o" if attached == Some("i") => send.ignore_dots = true,
            "-n" | "-U" | "-G" | "-m" | "-d" => {}
            "-f" | "-r" => send.from = Some(value()?),
            "-F" => send.full_name = Some(value()?),
            "-a" => send.account = Some(value()?),
            // DSN, body type, queue and logging options, MTA options:
            // consumed with their value, not applied.
            "-N" | "-B" | "-R" | "-V" | "-L" | "-O" | "-o" | "-C" | "-X" | "-h" => {
                let _ = value()?;
            }
            "-q" => {
                return Err(Failure::usage(
                    "-q is not supported: deliver the queue with `smtp queue run` and the \
                     relay's flags (--account NAME, or --server HOST); without them it \
                     delivers directly to each domain's mail servers",
                ));
            }
            "-b" => match attached {
                Some("m") => {}
                Some(mode) => {
                    return Err(Failure::usage(format!(
                        "-b{mode} is not supported: this sendmail delivers a message (-bm, \
                         the default) or, alone, lists the queue (-bp, as `smtp queue list`)"
                    )));
                }
                None => return Err(Failure::usage("-b needs a mode")),
            },
            _ => {
                return Err(Failure::usage(format!(
                    "unknown option {a}; see `smtp send --help` for what this sendmail takes"
                )));
            }
        }
    }
    Ok(send)
}

fn next_value(it: &mut std::slice::Iter<'_, String>, flag: &str) -> Result<String, Failure> {
    it.next()
        .cloned()
        .ok_or_else(|| Failure::usage(format!("{flag} needs a value")))
}

use crate::queue::{EXIT_SIGINT, EXIT_SIGTERM};

/// On SIGINT or SIGTERM: removes any spool of standard input, then exits.
/// While `smtp send --queue` delivers, the first signal stops its runner
/// instead (the command then reports and exits by itself, 130 or 143) and
/// only a second one exits at once.
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
        let mut code = tokio::select! {
            _ = int.recv() => EXIT_SIGINT,
            _ = term.recv() => EXIT_SIGTERM,
        };
        if queue::interrupt(code) {
            tell!(
                "smtp: stopping: no new deliveries; those under way finish or stay queued \
                 (signal again to quit at once)"
            );
            code = tokio::select! {
                _ = int.recv() => EXIT_SIGINT,
                _ = term.recv() => EXIT_SIGTERM,
            };
        }
        spool::remove_all();
        progress::interrupted();
        std::process::exit(i32::from(code));
    });
}

async fn run(command: Command) -> Result<u8, Failure> {
    match command {
        Command::Send(args) => {
            stop_on_signal();
            if args.queue.is_some() {
                log::install(args.log_format, false)?;
            }
            send::run(*args).await
        }
        Command::Queue(args) => queue::run(args).await,
        Command::Probe(args) => probe::run(args).await,
        Command::Mx(args) => probe::mx(args).await,
        Command::Sink(args) => sink::run(args).await,
        Command::Demo(args) => demo::run(args).await,
        Command::Doctor(args) => doctor::run(*args).await,
        Command::Setup(args) => setup::run(*args).await,
        Command::Conformance(args) => conformance::run(args).await,
        Command::Dkim(args) => match &args.command {
            cli::DkimCommand::Keygen(a) => dkim::keygen(a),
            cli::DkimCommand::Record(a) => dkim::record(a),
        },
    }
}

fn main() -> ExitCode {
    let argv: Vec<OsString> = std::env::args_os().collect();
    let invoked_as = argv
        .first()
        .and_then(|a| Path::new(a).file_name())
        .map(|n| n.to_string_lossy().into_owned());
    let sendmail = invoked_as.as_deref() == Some("sendmail");
    let args: Vec<String> = argv
        .iter()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    // `mailq` and `sendmail -bp` list the queue, as they do with Postfix.
    let argv = if invoked_as.as_deref() == Some("mailq") || (sendmail && args == ["-bp"]) {
        ["smtp", "queue", "list"].map(OsString::from).to_vec()
    } else {
        argv
    };
    let command = if sendmail && args != ["-bp"] {
        match sendmail_args(&args) {
            Ok(a) => Command::Send(Box::new(a)),
            Err(f) => {
                tell!("sendmail: {f}");
                return ExitCode::from(f.code);
            }
        }
    } else {
        match Cli::try_parse_from(argv) {
            Ok(cli) => cli.command,
            // --help and --version are not errors; everything else a usage
            // error, with sysexits' code rather than clap's 2.
            Err(e) => {
                let _ = e.print();
                // `conformance` exits 2 for usage, as test runners do.
                let usage = if args.first().map(String::as_str) == Some("conformance") {
                    conformance::EXIT_USAGE
                } else {
                    fail::EX_USAGE
                };
                return ExitCode::from(if e.use_stderr() { usage } else { 0 });
            }
        }
    };
    // One thread: a command's tasks are I/O-bound and take turns well;
    // SQLite and the file system have threads of their own. Fewer threads
    // also keep resident memory down (glibc keeps an arena per thread).
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            tell!("smtp: cannot start: {e}");
            return ExitCode::from(fail::EX_SOFTWARE);
        }
    };
    // With --json, standard output is one JSON object whatever happens:
    // `send`'s shape for `send` and `queue run` (whose object is `send`'s
    // report of what the run recorded), else the error alone.
    let json = match &command {
        Command::Send(a) if a.json => Some(true),
        Command::Probe(a) if a.json => Some(false),
        Command::Mx(a) if a.json => Some(false),
        Command::Doctor(a) if a.json => Some(false),
        Command::Setup(a) if a.json => Some(false),
        Command::Dkim(a) => match &a.command {
            cli::DkimCommand::Keygen(k) if k.json => Some(false),
            cli::DkimCommand::Record(r) if r.json => Some(false),
            _ => None,
        },
        Command::Queue(a) if a.json => Some(matches!(a.command, cli::QueueCommand::Run(_))),
        _ => None,
    };
    match runtime.block_on(run(command)) {
        Ok(code) => ExitCode::from(code),
        Err(f) => {
            terminal::error_line(&format!("smtp: {f}"));
            if let Some(send) = json {
                output::print_failure_json(&f, send);
            }
            ExitCode::from(f.code)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<SendArgs, Failure> {
        let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
        sendmail_args(&args)
    }

    #[test]
    fn sendmail_options_with_values_are_never_recipients() {
        let s = parse(&[
            "-N",
            "never",
            "-B",
            "8BITMIME",
            "-R",
            "hdrs",
            "-O",
            "DeliveryMode=b",
            "-o",
            "i",
            "-oem",
            "-L",
            "tag",
            "-V",
            "envid",
            "-X",
            "/tmp/log",
            "-h",
            "17",
            "-Ffull name",
            "-a",
            "work",
            "-bm",
            "-U",
            "-G",
            "-i",
            "bob@example.net",
        ])
        .unwrap();
        assert_eq!(s.to, ["bob@example.net"]);
        assert_eq!(s.account.as_deref(), Some("work"));
        assert_eq!(s.full_name.as_deref(), Some("full name"));
        let s = parse(&[
            "a@example.net,b@example.net",
            "c@example.net, d@example.net",
        ])
        .unwrap();
        assert_eq!(
            s.to,
            [
                "a@example.net",
                "b@example.net",
                "c@example.net",
                "d@example.net"
            ]
        );
        let s = parse(&["--account=home", "-t", "--", "-odd@example.net"]).unwrap();
        assert_eq!(s.account.as_deref(), Some("home"));
        assert!(s.read_recipients);
        assert_eq!(s.to, ["-odd@example.net"]);
        let s = parse(&["--account", "home", "a@example.net"]).unwrap();
        assert_eq!(s.account.as_deref(), Some("home"));
    }

    #[test]
    fn sendmail_modes_other_than_delivery_and_unknown_options_are_refused() {
        // (-bp alone is `smtp queue list`, before these rules.)
        for args in [&["-bs"][..], &["-bp"], &["-q"], &["-Z"], &["-N"]] {
            let e = parse(args).map(|_| ()).unwrap_err();
            assert_eq!(e.code, fail::EX_USAGE, "{args:?}: {e}");
        }
    }

    #[test]
    fn sendmail_options() {
        let args: Vec<String> = [
            "-t",
            "-oi",
            "-fbounce@example.org",
            "-F",
            "Alice",
            "bob@example.net",
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
