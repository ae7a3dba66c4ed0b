//! `smtp queue`'s command line.
#![allow(rustdoc::broken_intra_doc_links)]

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::{LogFormat, LoginArgs, MtaStsArgs, RetryArgs, TlsArg};

/// `smtp queue`: inspect and run the delivery queue.
#[derive(Debug, Args)]
pub(crate) struct QueueArgs {
    #[command(subcommand)]
    pub(crate) command: QueueCommand,
    /// The queue: a directory, or a PostgreSQL database as
    /// `postgres://USER@HOST[:PORT]/DB` (no password: PGPASSWORD,
    /// ~/.pgpass or the config file's `queue`). Default: the config file's
    /// `queue`, else `$XDG_STATE_HOME/smtp/queue`.
    #[arg(long, global = true, value_name = "DIR|URL")]
    pub(crate) queue: Option<PathBuf>,
    /// Config file (TOML): its `queue`, accounts (`queue run`, `queue
    /// retry`) and destination shapes. Default: `$XDG_CONFIG_HOME/smtp/config.toml`.
    #[arg(long, global = true, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// Print JSON.
    #[arg(long, global = true)]
    pub(crate) json: bool,
}

/// The queue's commands.
#[derive(Debug, Subcommand)]
pub(crate) enum QueueCommand {
    /// Deliver what is due (through the relay given with --server or
    /// --account; without one, directly to each domain's MX), then exit
    /// (or keep going with --watch).
    Run(Box<QueueRunArgs>),
    /// Messages in the queue, oldest first.
    List(ListArgs),
    /// One message and its recipients.
    Show {
        /// The message id.
        id: String,
    },
    /// Make waiting recipients due now.
    Retry(QueueRetryArgs),
    /// Remove messages and their recipients, whatever their state.
    Delete {
        /// The message ids (each deleted, or said not to be there).
        #[arg(required = true, value_name = "ID")]
        ids: Vec<String>,
    },
    /// Remove finished messages: every recipient delivered, failed or
    /// expired (and a notification owed, enqueued).
    Purge(PurgeArgs),
    /// Counts per state, waiting routes, budgets, throttles; on
    /// PostgreSQL, each worker's leases and last heartbeat.
    Stats,
    /// Create or upgrade the queue's schema and say what was done (a
    /// PostgreSQL queue's workers never upgrade it themselves).
    Migrate,
    /// TLS-RPT (RFC 8460) aggregate reports of direct delivery's sessions
    /// under MTA-STS policies, as JSON (one per policy domain).
    TlsReport(TlsReportArgs),
}

/// `smtp queue tls-report`: which days, which domain, who reports.
#[derive(Debug, Args, Default)]
pub(crate) struct TlsReportArgs {
    /// One UTC day, YYYY-MM-DD (default: yesterday).
    #[arg(long, value_name = "YYYY-MM-DD", conflicts_with_all = ["since", "until"])]
    pub(crate) day: Option<String>,
    /// From this UTC day on, YYYY-MM-DD (with --until).
    #[arg(long, value_name = "YYYY-MM-DD", requires = "until")]
    pub(crate) since: Option<String>,
    /// Until this UTC day, YYYY-MM-DD, included.
    #[arg(long, value_name = "YYYY-MM-DD", requires = "since")]
    pub(crate) until: Option<String>,
    /// Only this policy domain.
    #[arg(long, value_name = "DOMAIN")]
    pub(crate) domain: Option<String>,
    /// The report's organization-name (default: this host's name).
    #[arg(long, value_name = "NAME")]
    pub(crate) org: Option<String>,
    /// The report's contact-info (default: postmaster@ this host's name).
    #[arg(long, value_name = "ADDR")]
    pub(crate) contact: Option<String>,
    /// Also say, on stderr, where each report goes: the `rua` of the
    /// domain's `_smtp._tls` TXT record (looked up now), or that it
    /// publishes none.
    #[arg(long)]
    pub(crate) rua: bool,
    /// Nameserver for --rua, IP[:PORT].
    #[arg(long, value_name = "IP[:PORT]", requires = "rua")]
    pub(crate) dns_server: Option<String>,
}

/// `smtp queue purge`: which finished messages go.
#[derive(Debug, Args, Default)]
pub(crate) struct PurgeArgs {
    /// Only messages finished longer ago than this (their last recipient's
    /// last change): seconds, or a number with s, m, h or d (`7d`, `12h`).
    /// Default 0: every finished message.
    #[arg(long, value_name = "AGE", value_parser = parse_age)]
    pub(crate) older_than: Option<std::time::Duration>,
}

/// `smtp queue retry`: one message's waiting recipients, or all of them.
#[derive(Debug, Args, Default)]
pub(crate) struct QueueRetryArgs {
    /// The message id.
    pub(crate) id: Option<String>,
    /// Every waiting recipient, and clear every destination's back-off
    /// (and hold).
    #[arg(long, conflicts_with = "id")]
    pub(crate) all: bool,
    /// With an id: also clear this relay's back-off (or hold), as
    /// `queue run --server` names it: HOST[:PORT].
    #[arg(long, value_name = "HOST[:PORT]", conflicts_with = "all")]
    pub(crate) server: Option<String>,
    /// The relay's port (default 587, or the account's).
    #[arg(long, conflicts_with = "all")]
    pub(crate) port: Option<u16>,
    /// The global `--config` ([`QueueArgs::config`]), for --account.
    #[arg(skip)]
    pub(crate) config: Option<PathBuf>,
    /// With an id: also clear the back-off of this account's relay.
    #[arg(long, value_name = "NAME", conflicts_with = "all")]
    pub(crate) account: Option<String>,
}

/// `smtp queue list`'s filters (all given must match).
#[derive(Debug, Args, Default)]
pub(crate) struct ListArgs {
    /// Only messages with a recipient in this state: queued, delivering,
    /// delivered, failed, deferred, expired.
    #[arg(long, value_name = "STATE")]
    pub(crate) state: Option<String>,
    /// Only messages with a recipient at this domain (case-insensitive).
    #[arg(long, value_name = "DOMAIN")]
    pub(crate) domain: Option<String>,
    /// Only messages enqueued longer ago than this: seconds, or a number
    /// with s, m, h or d (`90m`, `2d`).
    #[arg(long, value_name = "AGE", value_parser = parse_age)]
    pub(crate) older_than: Option<std::time::Duration>,
}

/// `90`, `90s`, `15m`, `2h`, `3d`.
pub(super) fn parse_age(s: &str) -> Result<std::time::Duration, String> {
    let t = s.trim();
    let (n, unit) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&t[..i], c.to_ascii_lowercase()),
        _ => (t, 's'),
    };
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?}: give seconds, or a number with s, m, h or d"))?;
    let secs = match unit {
        's' => n,
        'm' => n.saturating_mul(60),
        'h' => n.saturating_mul(3600),
        'd' => n.saturating_mul(86_400),
        _ => return Err(format!("{s:?}: the unit is s, m, h or d")),
    };
    Ok(std::time::Duration::from_secs(secs))
}

/// `smtp queue run`: the relay is given as to `send` (flags, account);
/// credentials come from the config file or environment, never the queue.
#[derive(Debug, Args)]
pub(crate) struct QueueRunArgs {
    /// Keep running: sleep until the next attempt is due; SIGINT/SIGTERM stop
    /// cleanly (exit 0). Logs each delivery attempt on stderr (as
    /// --log-format does).
    #[arg(long)]
    pub(crate) watch: bool,
    /// Log on stderr instead of the per-outcome lines on stdout: one line
    /// per delivery attempt, warnings and errors; text or JSON lines. The
    /// level comes from SMTP_LOG (EnvFilter syntax; default
    /// `warn,smtp_queue=info,smtp_cli=info`). On with --watch.
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub(crate) log_format: Option<LogFormat>,
    /// Serve Prometheus metrics on ADDR (`GET /metrics`), e.g. 127.0.0.1:9464;
    /// port 0 picks a free one (the address is told at start).
    #[arg(long, value_name = "ADDR")]
    pub(crate) metrics: Option<SocketAddr>,
    /// Seconds a claim is leased for (default 300): a killed runner's
    /// recipients are taken over by another once their lease expires.
    #[arg(long, value_name = "SECS", hide = true)]
    pub(crate) lease: Option<u64>,
    /// Messages claimed at a time (default 200 through a relay, 2000 in
    /// direct delivery): with several workers on one PostgreSQL queue, a
    /// smaller claim spreads the work among them.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) claim: Option<u32>,
    /// The relay, HOST[:PORT] (default: the account's).
    #[arg(long, value_name = "HOST[:PORT]")]
    pub(crate) server: Option<String>,
    /// Server port.
    #[arg(long)]
    pub(crate) port: Option<u16>,
    /// Encryption policy (default certified).
    #[arg(long, value_enum)]
    pub(crate) tls: Option<TlsArg>,
    /// TLS from the first byte.
    #[arg(long)]
    pub(crate) implicit_tls: bool,
    /// Extra trusted CA certificates (PEM).
    #[arg(long, value_name = "PEM")]
    pub(crate) ca_file: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) login: LoginArgs,
    /// Name to send with EHLO.
    #[arg(long, value_name = "NAME")]
    pub(crate) helo: Option<String>,
    /// The global `--config` ([`QueueArgs::config`]).
    #[arg(skip)]
    pub(crate) config: Option<PathBuf>,
    /// Account from the config file.
    #[arg(long, value_name = "NAME")]
    pub(crate) account: Option<String>,
    /// Nameserver for direct delivery (no --server), IP[:PORT].
    #[arg(long, value_name = "IP[:PORT]")]
    pub(crate) dns_server: Option<String>,
    /// Port for direct delivery (default 25).
    #[arg(long, value_name = "N")]
    pub(crate) mx_port: Option<u16>,
    #[command(flatten)]
    pub(crate) mta_sts: MtaStsArgs,
    /// Seconds to wait for a connection (as `send`'s).
    #[arg(long, value_name = "SECS")]
    pub(crate) connect_timeout: Option<u64>,
    /// Seconds to wait for each reply (as `send`'s).
    #[arg(long, value_name = "SECS")]
    pub(crate) command_timeout: Option<u64>,
    #[command(flatten)]
    pub(crate) retry: RetryArgs,
}
