//! `smtp conformance client`: the hostile-server suite run against any
//! SMTP client's command line. Each case starts a
//! [`smtp_testkit::hostile`] server that misbehaves in one way, runs the
//! client once (its own process group, a deadline), and judges it by what
//! reached the wire and by its exit status.
//!
//! ```text
//! profile / -- CMD …  ─┐
//! cases.rs (the table) ─┼─> runner.rs: server + files + process ─> judge.rs ─> report.rs
//!                       └── --cases, --deadline, --jobs                      (table, JSON, JUnit)
//! ```
//!
//! `smtp conformance server HOST[:PORT]` checks a server for its operator
//! (`checker/`; `server.rs` is the client suite's servers).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};

use crate::fail::Failure;

mod cases;
mod checker;
mod judge;
mod report;
mod runner;
mod server;

use report::Kind;

/// Exit status when every case passes (or, with `--pinned`, matches).
pub(crate) const EXIT_PASS: u8 = 0;
/// Exit status when a case fails.
pub(crate) const EXIT_FAIL: u8 = 1;
/// Exit status for a usage error.
pub(crate) const EXIT_USAGE: u8 = 2;

/// `smtp conformance`.
#[derive(Debug, Args)]
pub(crate) struct ConformanceArgs {
    #[command(subcommand)]
    pub(crate) command: ConformanceCommand,
}

/// What is checked.
#[derive(Debug, Subcommand)]
pub(crate) enum ConformanceCommand {
    /// Run hostile-server cases against an SMTP client's command line
    /// (`-- CMD ARGS…` with placeholders such as {host} {port} {from} {to}
    /// {message} {user} {password-file} {ca-file}; see docs/conformance.md).
    /// Exit 0 when every case passes, 1 when one fails, 2 for usage.
    Client(ClientArgs),
    /// Check a mail server you run: SMTP smuggling, STARTTLS injection,
    /// AUTH before TLS, PIPELINING, open relay, VRFY/EXPN, TLS version and
    /// certificate. Only loopback unless --i-am-authorised; the smuggling
    /// and pipelining checks send test mail to --rcpt. Exit 0 when every
    /// check passes, 1 when one fails, 2 for usage.
    Server(checker::ServerArgs),
}

/// How the client treats TLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Mode {
    /// STARTTLS, and no mail without it.
    Required,
    /// STARTTLS when offered, plaintext otherwise.
    Opportunistic,
    /// TLS from the first byte.
    Implicit,
}

/// `smtp conformance client`.
#[derive(Debug, Args)]
pub(crate) struct ClientArgs {
    /// A client profile (TOML): command template, modes, pinned verdicts.
    #[arg(long, value_name = "FILE")]
    pub(crate) profile: Option<PathBuf>,
    /// The client's TLS mode (with `-- CMD`).
    #[arg(long, value_enum, default_value = "required")]
    pub(crate) tls: Mode,
    /// The client verifies certificates (with `-- CMD`): the certificate
    /// cases apply.
    #[arg(long)]
    pub(crate) verifies_certificates: bool,
    /// Give the message on standard input (with `-- CMD`).
    #[arg(long)]
    pub(crate) stdin: bool,
    /// Cases to run: ids or globs, comma-separated (default: all).
    #[arg(long, value_delimiter = ',', value_name = "ID,GLOB")]
    pub(crate) cases: Vec<String>,
    /// List the cases (Markdown) and exit.
    #[arg(long)]
    pub(crate) list: bool,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub(crate) json: bool,
    /// Also write JUnit XML to this file.
    #[arg(long, value_name = "FILE")]
    pub(crate) junit: Option<PathBuf>,
    /// Seconds a case's client may run before it is killed ("hung").
    #[arg(long, value_name = "SECS", default_value_t = 15)]
    pub(crate) deadline: u64,
    /// Cases run at once.
    #[arg(long, value_name = "N", default_value_t = 8)]
    pub(crate) jobs: usize,
    /// Judge against the profile's pinned verdicts: exit 0 when every
    /// verdict matches its pin (unpinned cases must pass).
    #[arg(long, requires = "profile")]
    pub(crate) pinned: bool,
    /// The client's command line and its placeholders.
    #[arg(last = true, value_name = "CMD")]
    pub(crate) command: Vec<String>,
}

/// A client under test, from a profile or the command line.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Client {
    pub(crate) name: String,
    /// What the profile is about (version, library), for people.
    #[serde(default)]
    pub(crate) about: String,
    #[serde(rename = "tls")]
    pub(crate) mode: Mode,
    #[serde(default)]
    pub(crate) verifies_certificates: bool,
    #[serde(default)]
    pub(crate) stdin: bool,
    pub(crate) command: Vec<String>,
    #[serde(default)]
    pub(crate) implicit_command: Option<Vec<String>>,
    #[serde(default)]
    pub(crate) expected: BTreeMap<String, Kind>,
}

impl Client {
    /// The command line authenticates (names the user or the password).
    pub(crate) fn authenticates(&self) -> bool {
        self.command
            .iter()
            .any(|a| a.contains("{user}") || a.contains("{password"))
    }
}

fn load(path: &Path) -> Result<Client, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the profile {}: {e}", path.display()))?;
    let client: Client = toml::from_str(&text)
        .map_err(|e| format!("the profile {} does not parse: {e}", path.display()))?;
    if client.command.is_empty() {
        return Err(format!(
            "the profile {} has an empty command",
            path.display()
        ));
    }
    if let Some(bad) = client
        .expected
        .keys()
        .find(|k| !cases::CASES.iter().any(|c| c.id == *k))
    {
        return Err(format!(
            "the profile {} pins an unknown case `{bad}`",
            path.display()
        ));
    }
    Ok(client)
}

/// Runs `smtp conformance`.
pub(crate) async fn run(args: ConformanceArgs) -> Result<u8, Failure> {
    match args.command {
        ConformanceCommand::Client(a) => client(a).await,
        ConformanceCommand::Server(a) => checker::run(a).await,
    }
}

async fn client(args: ClientArgs) -> Result<u8, Failure> {
    let usage = |m: String| {
        crate::terminal::error_line(&format!("smtp conformance: {m}"));
        Ok(EXIT_USAGE)
    };
    let selected = match cases::select(&args.cases) {
        Ok(s) => s,
        Err(e) => return usage(e),
    };
    if args.list {
        print!("{}", report::list(&selected));
        return Ok(EXIT_PASS);
    }
    let client = match (&args.profile, args.command.is_empty()) {
        (Some(_), false) => return usage("give a profile or a command, not both".into()),
        (None, true) => return usage("give the client's command after `--`, or --profile".into()),
        (Some(p), true) => match load(p) {
            Ok(c) => c,
            Err(e) => return usage(e),
        },
        (None, false) => Client {
            name: args.command.join(" "),
            about: String::new(),
            mode: args.tls,
            verifies_certificates: args.verifies_certificates,
            stdin: args.stdin,
            command: args.command.clone(),
            implicit_command: None,
            expected: BTreeMap::new(),
        },
    };
    if args.deadline == 0 || args.jobs == 0 {
        return usage("--deadline and --jobs take a number above 0".into());
    }
    if let Err(e) = runner::check_command(&client, Duration::from_secs(args.deadline)) {
        return usage(e);
    }
    let bench = runner::Bench::new(Duration::from_secs(args.deadline)).map_err(|e| {
        Failure::new(
            crate::fail::EX_SOFTWARE,
            format!("cannot prepare the cases: {e}"),
        )
    })?;
    // Ctrl-C or SIGTERM: the clients' process groups killed, the scratch
    // directory (with the password file) removed, exit 130 or 143.
    let scratch = bench.dir().to_owned();
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(|e| Failure::new(crate::fail::EX_SOFTWARE, format!("signal handler: {e}")))?;
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| Failure::new(crate::fail::EX_SOFTWARE, format!("signal handler: {e}")))?;
    tokio::spawn(async move {
        let code = tokio::select! {
            _ = sigint.recv() => 130,
            _ = sigterm.recv() => 143,
        };
        runner::kill_running();
        let _ = std::fs::remove_dir_all(&scratch);
        std::process::exit(code);
    });
    let (bench, client) = (Arc::new(bench), Arc::new(client));
    let gate = Arc::new(tokio::sync::Semaphore::new(args.jobs));
    let tasks: Vec<_> = selected
        .into_iter()
        .map(|case| {
            let (bench, client, gate) = (bench.clone(), client.clone(), gate.clone());
            tokio::spawn(async move {
                let _permit = gate.acquire_owned().await;
                runner::run_case(case, client, bench).await
            })
        })
        .collect();
    let mut results = Vec::with_capacity(tasks.len());
    for t in tasks {
        results.push(t.await.map_err(|e| {
            Failure::new(
                crate::fail::EX_SOFTWARE,
                format!("a case failed to run: {e}"),
            )
        })?);
    }
    let name = if client.about.is_empty() {
        client.name.clone()
    } else {
        format!("{} ({})", client.name, client.about)
    };
    if let Some(path) = &args.junit {
        std::fs::write(
            path,
            report::junit(report::Role::Client, &name, &results, args.pinned),
        )
        .map_err(|e| {
            Failure::new(
                crate::fail::EX_CANTCREAT,
                format!("cannot write {}: {e}", path.display()),
            )
        })?;
    }
    if args.json {
        println!("{}", report::json(report::Role::Client, &name, &results));
    } else {
        print!(
            "{}",
            report::table(report::Role::Client, &name, &results, args.pinned)
        );
    }
    let failed = if args.pinned {
        results.iter().any(report::CaseResult::unexpected)
    } else {
        results.iter().any(|r| r.verdict.kind() == Kind::Fail)
    };
    Ok(if failed { EXIT_FAIL } else { EXIT_PASS })
}
