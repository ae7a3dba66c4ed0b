//! The command line, as clap parses it.
//!
//! The doc comments here are the `--help` texts, where `HOST[:PORT]` is the
//! usual notation; rustdoc would read the brackets as links.
#![allow(rustdoc::broken_intra_doc_links)]

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::builder::TypedValueParser as _;
use clap::{Args, Parser, Subcommand, ValueEnum};

mod queue;
pub(crate) use self::queue::{
    ListArgs, PurgeArgs, QueueArgs, QueueCommand, QueueRetryArgs, QueueRunArgs, TlsReportArgs,
};

/// Exit codes (sysexits.h), documented in `--help`.
pub(crate) const EXIT_CODES: &str = "\
Exit codes (sysexits.h):
  0   every recipient accepted
  1   `doctor`: a check FAILed (64 to 78: the doctor itself could not run)
  64  usage error (EX_USAGE)
  65  bad message or address (EX_DATAERR)
  66  message file, queue or queued message not found (EX_NOINPUT)
  68  host or domain not found (EX_NOHOST)
  69  a recipient was rejected for good (EX_UNAVAILABLE)
  70  internal error: a message got no outcome (EX_SOFTWARE)
  73  cannot create a file: `dkim keygen`'s key file exists (EX_CANTCREAT)
  75  a recipient was deferred: a retry may succeed (EX_TEMPFAIL)
  76  the encryption policy was not satisfied (EX_PROTOCOL)
  77  authentication failed (EX_NOPERM)
  78  configuration error (EX_CONFIG)";

/// Send mail by standard or direct delivery, probe servers, show MX plans.
#[derive(Debug, Parser)]
#[command(name = "smtp", version, about, after_help = EXIT_CODES)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Send messages (files, standard input, or composed from options).
    Send(Box<SendArgs>),
    /// The delivery queue: run, list, show, retry, delete, purge, stats.
    Queue(QueueArgs),
    /// Connect to a server and show what it offers; sends no mail.
    Probe(ProbeArgs),
    /// Show the MX plan direct delivery would follow for a domain.
    Mx(MxArgs),
    /// Run a local capture server that accepts and keeps mail.
    Sink(SinkArgs),
    /// Send a real message end to end on this machine: a local TLS server with
    /// AUTH and a local DNS zone, by standard and by direct delivery.
    Demo(DemoArgs),
    /// DKIM signing keys: make one (keygen), show its DNS record (record).
    Dkim(DkimArgs),
    /// Check this machine and a sender domain for sending: outbound port
    /// 25, public address and its reverse DNS, SPF, DKIM, DMARC,
    /// blocklists, the domain's MX. Each check says PASS, WARN or FAIL
    /// and what to do; exit 1 when any FAILs.
    Doctor(Box<DoctorArgs>),
    /// Find the submission server for an address (SRV records, else the
    /// usual names), test it and the login without sending mail, and save
    /// it as an account in the config file.
    Setup(Box<SetupArgs>),
    /// Conformance suites: `client` runs hostile-server cases against any
    /// SMTP client's command line and judges what reached the wire.
    Conformance(crate::conformance::ConformanceArgs),
}

/// Encryption policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum TlsArg {
    /// Plaintext; STARTTLS never sent.
    None,
    /// TLS when offered.
    Optional,
    /// TLS required, certificate not verified.
    Required,
    /// TLS with a verified certificate.
    Certified,
}

impl From<TlsArg> for smtp_core::TlsPolicy {
    fn from(t: TlsArg) -> Self {
        match t {
            TlsArg::None => Self::None,
            TlsArg::Optional => Self::Optional,
            TlsArg::Required => Self::Required,
            TlsArg::Certified => Self::Certified,
        }
    }
}

/// On or off.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub(crate) enum Switch {
    /// On.
    #[default]
    On,
    /// Off.
    Off,
}

/// MTA-STS in direct delivery: `--mta-sts on|off` and the hidden port the
/// policy is fetched from (tests).
#[derive(Debug, Args, Default, Clone, Copy)]
pub(crate) struct MtaStsArgs {
    /// Direct delivery: honour the recipient domains' MTA-STS policies
    /// (RFC 8461): under `enforce`, only the MX hosts the policy names,
    /// over TLS verified for their names, or deferred (default on, or
    /// the account's `mta_sts`).
    #[arg(long = "mta-sts", value_enum, value_name = "on|off")]
    pub(crate) mta_sts: Option<Switch>,
    /// The port MTA-STS policies are fetched from (tests).
    #[arg(long = "mta-sts-port", value_name = "N", hide = true)]
    pub(crate) mta_sts_port: Option<u16>,
}

impl MtaStsArgs {
    /// `--mta-sts` if given, else the account's `mta_sts`, else on.
    pub(crate) fn on(&self, account: Option<bool>) -> bool {
        self.mta_sts
            .map(|s| s == Switch::On)
            .or(account)
            .unwrap_or(true)
    }
}

/// SASL mechanism.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum AuthArg {
    /// The strongest the rules allow.
    Auto,
    /// PLAIN.
    Plain,
    /// LOGIN.
    Login,
    /// CRAM-MD5.
    CramMd5,
    /// XOAUTH2 (the secret is an OAuth 2.0 access token).
    Xoauth2,
    /// SCRAM-SHA-256.
    #[value(name = "scram-sha-256", alias = "scram-sha256")]
    #[serde(rename = "scram-sha-256", alias = "scram-sha256")]
    ScramSha256,
}

#[derive(Debug, Args, Default)]
pub(crate) struct SendArgs {
    /// RFC 5322 message files; `-` or none for standard input.
    pub(crate) messages: Vec<PathBuf>,
    /// Envelope sender (default: the From: header's address).
    #[arg(short = 'f', long = "from", value_name = "ADDR")]
    pub(crate) from: Option<String>,
    /// Recipient (repeatable).
    #[arg(long = "to", value_name = "ADDR")]
    pub(crate) to: Vec<String>,
    /// Cc recipient of a composed message: in its Cc header, and a recipient (repeatable).
    #[arg(long = "cc", value_name = "ADDR")]
    pub(crate) cc: Vec<String>,
    /// Hidden recipient: gets the message, named in no header (repeatable).
    #[arg(long = "bcc", value_name = "ADDR")]
    pub(crate) bcc: Vec<String>,
    /// Take recipients from the To, Cc and Bcc headers (a Bcc header is never sent).
    #[arg(short = 't', long = "read-recipients")]
    pub(crate) read_recipients: bool,
    /// Subject of a composed message.
    #[arg(long)]
    pub(crate) subject: Option<String>,
    /// Body text of a composed message.
    #[arg(long, conflicts_with = "body_file")]
    pub(crate) body: Option<String>,
    /// Body of a composed message, from a file.
    #[arg(long, value_name = "FILE")]
    pub(crate) body_file: Option<PathBuf>,
    /// Attach a file to a composed message (repeatable).
    #[arg(long, value_name = "FILE")]
    pub(crate) attach: Vec<PathBuf>,
    /// Extra header for a composed message, "Name: value" (repeatable).
    #[arg(long, value_name = "HEADER")]
    pub(crate) header: Vec<String>,
    /// Standard delivery through this server; without it, direct delivery.
    #[arg(long, value_name = "HOST[:PORT]")]
    pub(crate) server: Option<String>,
    /// Server port (default 587; 465 means implicit TLS).
    #[arg(long)]
    pub(crate) port: Option<u16>,
    /// Encryption policy (default: certified with --server, optional for direct delivery).
    #[arg(long, value_enum)]
    pub(crate) tls: Option<TlsArg>,
    /// TLS from the first byte (default on port 465).
    #[arg(long)]
    pub(crate) implicit_tls: bool,
    /// Extra trusted CA certificates (PEM).
    #[arg(long, value_name = "PEM")]
    pub(crate) ca_file: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) login: LoginArgs,
    /// Name to send with EHLO (default: this host's name).
    #[arg(long, value_name = "NAME")]
    pub(crate) helo: Option<String>,
    /// Nameserver for direct delivery, IP[:PORT].
    #[arg(long, value_name = "IP[:PORT]")]
    pub(crate) dns_server: Option<String>,
    /// Port for direct delivery (default 25).
    #[arg(long, value_name = "N")]
    pub(crate) mx_port: Option<u16>,
    #[command(flatten)]
    pub(crate) mta_sts: MtaStsArgs,
    /// Seconds to wait for a connection.
    #[arg(long, value_name = "SECS")]
    pub(crate) connect_timeout: Option<u64>,
    /// Seconds to wait for each reply.
    #[arg(long, value_name = "SECS")]
    pub(crate) command_timeout: Option<u64>,
    /// Config file of named accounts (TOML).
    #[arg(long, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// Account from the config file.
    #[arg(long, value_name = "NAME")]
    pub(crate) account: Option<String>,
    /// Print one JSON object with every outcome.
    #[arg(long)]
    pub(crate) json: bool,
    /// Print the session transcript on stderr (secrets redacted).
    #[arg(short = 'v', long)]
    pub(crate) verbose: bool,
    /// Sendmail mode's `-i`/`-oi`: a line holding only `.` does not end
    /// standard input (without it, in sendmail mode, it does).
    #[arg(short = 'i', hide = true)]
    pub(crate) ignore_dots: bool,
    /// Sendmail compatibility: the sender's full name for a From: that is added.
    #[arg(short = 'F', value_name = "NAME", hide = true)]
    pub(crate) full_name: Option<String>,
    /// Enqueue durably in this queue, then deliver; deferred recipients
    /// are retried (`smtp queue run`). A directory, or a PostgreSQL URL
    /// `postgres://USER@HOST/DB` (password from PGPASSWORD or ~/.pgpass,
    /// never the URL); default: the config file's `queue`, else
    /// `$XDG_STATE_HOME/smtp/queue`. Before message files, write
    /// `--queue=DIR` (or a bare `--queue` after them).
    // The empty path given by a bare `--queue` stands for the default:
    // clap's own PathBuf parser refuses an empty value.
    #[arg(long, value_name = "DIR|URL", num_args = 0..=1, default_missing_value = "",
          value_parser = clap::builder::OsStringValueParser::new().map(PathBuf::from))]
    pub(crate) queue: Option<PathBuf>,
    /// With --queue: enqueue durably and exit 0 without delivering
    /// (sendmail's `-odq`); prints the `smtp queue run` command that
    /// delivers, or let a `smtp queue run --watch` service do it.
    #[arg(long, requires = "queue")]
    pub(crate) queue_only: bool,
    /// With --queue: once every recipient is final, send the envelope
    /// sender a delivery status notification (RFC 3464) of those that
    /// failed or expired (none for the null sender `<>`).
    #[arg(long)]
    pub(crate) notify_sender: bool,
    #[command(flatten)]
    pub(crate) retry: RetryArgs,
    /// `--queue`: log each delivery attempt on stderr, as text or JSON
    /// lines (level from SMTP_LOG; see `smtp queue run --help`).
    #[arg(long, value_enum, value_name = "FORMAT", requires = "queue")]
    pub(crate) log_format: Option<LogFormat>,
    /// Sign each message with DKIM using this private key (PEM: RSA of
    /// 2048, 2560, 3072, 3584 or 4096 bits, or Ed25519; `smtp dkim keygen` makes one).
    #[arg(long, value_name = "FILE")]
    pub(crate) dkim_key: Option<PathBuf>,
    /// DKIM selector (s=): the public key is published at
    /// SELECTOR._domainkey.DOMAIN.
    #[arg(long, value_name = "SELECTOR")]
    pub(crate) dkim_selector: Option<String>,
    /// DKIM signing domain (d=) (default: the domain of each message's
    /// From: address).
    #[arg(long, value_name = "DOMAIN")]
    pub(crate) dkim_domain: Option<String>,
    /// DKIM canonicalization: relaxed (relaxed/relaxed, the default),
    /// simple (simple/simple), or HEADER/BODY.
    #[arg(long, value_name = "C")]
    pub(crate) dkim_canonicalization: Option<crate::dkim::Canonicalization>,
    /// Sign a message that already has a DKIM-Signature too, adding ours
    /// above it (without this, such a message is sent as it is).
    #[arg(long)]
    pub(crate) dkim_add: bool,
    #[command(flatten)]
    pub(crate) merge: crate::merge::args::MergeArgs,
    /// Invoked as `sendmail`: quiet on success, report on stderr, and a
    /// From: added from the user's own address when nothing else gives one.
    #[arg(skip)]
    pub(crate) sendmail: bool,
}

/// The queue runner's settings: the retry schedule, how long `send --queue`
/// waits for retries, concurrency. They are not stored with the messages:
/// they apply to whatever the run given them delivers.
#[derive(Debug, Args, Default, Clone)]
pub(crate) struct RetryArgs {
    /// Seconds before the first retry (default 300; doubles each time).
    /// This run's setting, not stored with the message: `queue run` takes
    /// it again, as --retry-max and --max-lifetime.
    #[arg(long, value_name = "SECS")]
    pub(crate) retry_first: Option<u64>,
    /// Longest delay between retries, in seconds (default 4000).
    #[arg(long, value_name = "SECS")]
    pub(crate) retry_max: Option<u64>,
    /// Give up (expire) this many seconds after enqueue (default 5 days).
    #[arg(long, value_name = "SECS")]
    pub(crate) max_lifetime: Option<u64>,
    /// `send --queue`: keep retrying while the next attempt is due within
    /// this many seconds (default 60); then exit 75.
    #[arg(long, value_name = "SECS")]
    pub(crate) linger: Option<u64>,
    /// On SIGINT/SIGTERM, how long each session under way may take to
    /// finish the batch it holds (up to --per-connection messages) before
    /// what it had not settled is released (default 10).
    #[arg(long, value_name = "SECS")]
    pub(crate) stop_grace: Option<u64>,
    /// Sessions at once, at most (default 4 through a relay, 32 direct).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub(crate) concurrency: Option<u16>,
    /// Direct delivery: sessions at once to one destination (its MX hosts), at most (default 2).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub(crate) per_destination: Option<u16>,
    /// Messages sent on one connection, at most (default 100).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub(crate) per_connection: Option<u16>,
    #[command(flatten)]
    pub(crate) rate: crate::rate::RateArgs,
}

/// How the log is written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub(crate) enum LogFormat {
    /// One line per event: time, level, target, message, fields.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Args)]
pub(crate) struct ProbeArgs {
    /// HOST[:PORT]; the port is 25 (a mail exchanger) unless given: 587 or
    /// 465 for a submission server.
    pub(crate) target: String,
    /// Encryption policy.
    #[arg(long, value_enum, default_value = "optional")]
    pub(crate) tls: TlsArg,
    /// TLS from the first byte (default on port 465).
    #[arg(long)]
    pub(crate) implicit_tls: bool,
    /// Extra trusted CA certificates (PEM).
    #[arg(long, value_name = "PEM")]
    pub(crate) ca_file: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    pub(crate) json: bool,
    /// Print the transcript on stderr.
    #[arg(short = 'v', long)]
    pub(crate) verbose: bool,
    /// Name to send with EHLO (default: this host's name).
    #[arg(long, value_name = "NAME")]
    pub(crate) helo: Option<String>,
    /// AUTH to test (no mail is sent).
    #[command(flatten)]
    pub(crate) login: LoginArgs,
    /// Seconds to wait for a connection (default 30).
    #[arg(long, value_name = "SECS")]
    pub(crate) connect_timeout: Option<u64>,
    /// Seconds to wait for each reply (default 30).
    #[arg(long, value_name = "SECS")]
    pub(crate) command_timeout: Option<u64>,
}

/// `smtp setup`.
#[derive(Debug, Args)]
pub(crate) struct SetupArgs {
    /// The address to send as (you@example.org).
    pub(crate) address: String,
    /// The account's name in the config file (default: the address's domain).
    #[arg(long, value_name = "NAME")]
    pub(crate) account: Option<String>,
    /// The config file (default: $XDG_CONFIG_HOME/smtp/config.toml).
    #[arg(long, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// The login to test (user: the address unless given).
    #[command(flatten)]
    pub(crate) login: LoginArgs,
    /// Store the password itself in the config file (mode 0600); without
    /// it, the account names where the password comes from, or nothing.
    #[arg(long)]
    pub(crate) store_password: bool,
    /// Write without asking (for scripts).
    #[arg(long, short = 'y')]
    pub(crate) yes: bool,
    /// Print each step's findings as one JSON object.
    #[arg(long)]
    pub(crate) json: bool,
    /// Extra trusted CA certificates (PEM); kept in the account.
    #[arg(long, value_name = "PEM")]
    pub(crate) ca_file: Option<PathBuf>,
    /// Nameserver, IP[:PORT] (default: the system's).
    #[arg(long, value_name = "IP[:PORT]")]
    pub(crate) dns_server: Option<String>,
    /// Name to send with EHLO (default: this host's name).
    #[arg(long, value_name = "NAME")]
    pub(crate) helo: Option<String>,
    /// Seconds to wait for each connection (default 10).
    #[arg(long, value_name = "SECS")]
    pub(crate) connect_timeout: Option<u64>,
    /// Seconds to wait for each reply (default 30).
    #[arg(long, value_name = "SECS")]
    pub(crate) command_timeout: Option<u64>,
    /// The port the usual names are tried on for implicit TLS (tests).
    #[arg(long, hide = true, default_value_t = 465)]
    pub(crate) implicit_port: u16,
    /// The port the usual names are tried on for STARTTLS (tests).
    #[arg(long, hide = true, default_value_t = 587)]
    pub(crate) starttls_port: u16,
    /// The port autoconfiguration documents are fetched from (tests).
    #[arg(long, hide = true, default_value_t = 443)]
    pub(crate) https_port: u16,
}

/// Who logs in, and where the password comes from (at most one source;
/// without one, the environment variable SMTP_PASSWORD).
#[derive(Debug, Args, Default)]
pub(crate) struct LoginArgs {
    /// User name for AUTH.
    #[arg(long, value_name = "NAME")]
    pub(crate) user: Option<String>,
    /// Environment variable holding the password.
    #[arg(long, value_name = "VAR")]
    pub(crate) password_env: Option<String>,
    /// File holding the password (first line).
    #[arg(long, value_name = "FILE")]
    pub(crate) password_file: Option<PathBuf>,
    /// Command that prints the password (first line of its output).
    #[arg(long, value_name = "CMD")]
    pub(crate) password_command: Option<String>,
    /// SASL mechanism.
    #[arg(long, value_enum)]
    pub(crate) auth: Option<AuthArg>,
}

#[derive(Debug, Args)]
pub(crate) struct MxArgs {
    /// The domain.
    pub(crate) domain: String,
    /// Nameserver, IP[:PORT].
    #[arg(long, value_name = "IP[:PORT]")]
    pub(crate) dns_server: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub(crate) json: bool,
    /// Don't look up the domain's MTA-STS policy.
    #[arg(long)]
    pub(crate) no_mta_sts: bool,
    /// Extra trusted CA certificates (PEM), for the MTA-STS policy host.
    #[arg(long, value_name = "PEM")]
    pub(crate) ca_file: Option<PathBuf>,
    /// The port MTA-STS policies are fetched from (tests).
    #[arg(long = "mta-sts-port", value_name = "N", hide = true)]
    pub(crate) mta_sts_port: Option<u16>,
}

#[derive(Debug, Args)]
pub(crate) struct SinkArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:2525")]
    pub(crate) listen: SocketAddr,
    /// Offer STARTTLS with a self-signed certificate.
    #[arg(long)]
    pub(crate) tls_self_signed: bool,
    /// Require AUTH as USER:PASS (a throwaway test credential: it is visible
    /// in the process list).
    #[arg(long, value_name = "USER:PASS")]
    pub(crate) auth: Option<String>,
    /// Also write each received message into this Maildir.
    #[arg(long, value_name = "DIR")]
    pub(crate) maildir: Option<PathBuf>,
    /// Offer CHUNKING and BINARYMIME and take BDAT (RFC 3030).
    #[arg(long)]
    pub(crate) chunking: bool,
}

/// `smtp dkim`.
#[derive(Debug, Args)]
pub(crate) struct DkimArgs {
    #[command(subcommand)]
    pub(crate) command: DkimCommand,
}

/// DKIM's commands.
#[derive(Debug, Subcommand)]
pub(crate) enum DkimCommand {
    /// Make a signing key: write the private key (mode 0600, never
    /// overwriting a file) and print the DNS TXT record to publish.
    Keygen(KeygenArgs),
    /// Print the DNS TXT record that publishes an existing key.
    Record(RecordArgs),
}

/// `smtp dkim keygen`.
#[derive(Debug, Args)]
pub(crate) struct KeygenArgs {
    /// The selector (s=): the record goes at SELECTOR._domainkey.DOMAIN.
    #[arg(long, value_name = "SELECTOR")]
    pub(crate) selector: String,
    /// The signing domain (d=), usually the domain of the From: address.
    #[arg(long, value_name = "DOMAIN")]
    pub(crate) domain: String,
    /// An Ed25519 key (RFC 8463) instead of RSA.
    #[arg(long)]
    pub(crate) ed25519: bool,
    /// RSA key size: 2048 (the default), 2560, 3072, 3584 or 4096.
    #[arg(long, value_name = "N")]
    pub(crate) bits: Option<usize>,
    /// Where to write the private key (default SELECTOR.DOMAIN.pem); an
    /// existing file is never overwritten.
    #[arg(long, value_name = "FILE")]
    pub(crate) out: Option<PathBuf>,
    /// Print one JSON object.
    #[arg(long)]
    pub(crate) json: bool,
}

/// `smtp dkim record`.
#[derive(Debug, Args)]
pub(crate) struct RecordArgs {
    /// The private key's PEM file.
    #[arg(long, value_name = "FILE")]
    pub(crate) key: PathBuf,
    /// The selector (s=).
    #[arg(long, value_name = "SELECTOR")]
    pub(crate) selector: String,
    /// The signing domain (d=).
    #[arg(long, value_name = "DOMAIN")]
    pub(crate) domain: String,
    /// Print one JSON object.
    #[arg(long)]
    pub(crate) json: bool,
}

/// `smtp doctor`.
#[derive(Debug, Args, Default)]
pub(crate) struct DoctorArgs {
    /// The sender address whose domain is checked (SPF, DKIM, DMARC, MX)
    /// (default: the account's from).
    #[arg(short = 'f', long = "from", value_name = "ADDR")]
    pub(crate) from: Option<String>,
    /// This machine's public address (default: as the probed mail server
    /// saw it, when its greeting or EHLO reply shows it).
    #[arg(long, value_name = "ADDR")]
    pub(crate) ip: Option<std::net::IpAddr>,
    /// You send through this relay (standard delivery): SPF is checked
    /// for its addresses, and port 25, reverse DNS and blocklists of this
    /// machine only warn.
    #[arg(long, value_name = "HOST[:PORT]")]
    pub(crate) server: Option<String>,
    /// Test outbound port 25 against this mail server (a port given here
    /// replaces --mx-port) instead of --probe-domain's MX.
    #[arg(long, value_name = "HOST[:PORT]")]
    pub(crate) probe_mx: Option<String>,
    /// Test outbound port 25 against this domain's MX hosts (default
    /// gmail.com).
    #[arg(long, value_name = "DOMAIN")]
    pub(crate) probe_domain: Option<String>,
    /// The port of the outbound test (default 25).
    #[arg(long, value_name = "N")]
    pub(crate) mx_port: Option<u16>,
    /// Name to send with EHLO to the probed server (default: this host's name).
    #[arg(long, value_name = "NAME")]
    pub(crate) helo: Option<String>,
    /// DKIM selector to check: the key published at
    /// SELECTOR._domainkey.DOMAIN (default: the account's dkim_selector).
    #[arg(long, value_name = "SELECTOR")]
    pub(crate) dkim_selector: Option<String>,
    /// The DKIM private key that must match the published one (default:
    /// the account's dkim_key).
    #[arg(long, value_name = "FILE")]
    pub(crate) dkim_key: Option<PathBuf>,
    /// The DKIM signing domain (default: the account's dkim_domain, else
    /// the --from domain).
    #[arg(long, value_name = "DOMAIN")]
    pub(crate) dkim_domain: Option<String>,
    /// A DNS blocklist zone to look this machine's address up in
    /// (repeatable; replaces the default list: zen.spamhaus.org,
    /// bl.spamcop.net, b.barracudacentral.org).
    #[arg(long = "dnsbl", value_name = "ZONE")]
    pub(crate) dnsbl: Vec<String>,
    /// Nameserver for every lookup, IP[:PORT] (default: the system's).
    #[arg(long, value_name = "IP[:PORT]")]
    pub(crate) dns_server: Option<String>,
    /// Seconds to wait for a connection, each reply, and each DNS answer
    /// (default 10).
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) timeout: Option<u64>,
    /// Config file of named accounts (TOML).
    #[arg(long, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// Account from the config file (its from, server, helo, dns_server
    /// and dkim_* settings).
    #[arg(long, value_name = "NAME")]
    pub(crate) account: Option<String>,
    /// Print one JSON object.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Print the transcripts on stderr.
    #[arg(short = 'v', long)]
    pub(crate) verbose: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_queue_flag_stands_for_the_default_directory() {
        for argv in [
            &["smtp", "send", "--queue"][..],
            &["smtp", "send", "--queue", "--to", "b@example.net"],
        ] {
            let cli = Cli::try_parse_from(argv).unwrap();
            let Command::Send(args) = cli.command else {
                panic!("send")
            };
            assert_eq!(args.queue, Some(PathBuf::new()), "{argv:?}");
        }
        let cli = Cli::try_parse_from(["smtp", "send", "--queue", "q"]).unwrap();
        let Command::Send(args) = cli.command else {
            panic!("send")
        };
        assert_eq!(args.queue, Some(PathBuf::from("q")));
    }

    #[test]
    fn notify_sender_is_a_flag_of_send() {
        let cli = Cli::try_parse_from(["smtp", "send", "--queue", "--notify-sender"]).unwrap();
        let Command::Send(args) = cli.command else {
            panic!("send")
        };
        assert!(args.notify_sender);
        assert_eq!(args.queue, Some(PathBuf::new()));
    }

    #[test]
    fn ages_take_a_unit() {
        use std::time::Duration;

        use super::queue::parse_age;
        assert_eq!(parse_age("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_age("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_age("2D"), Ok(Duration::from_secs(172_800)));
        assert!(parse_age("1w").is_err());
        assert!(parse_age("h").is_err());
    }

    #[test]
    fn scram_is_spelt_as_its_mechanism_name_and_the_old_way() {
        for spelling in ["scram-sha-256", "scram-sha256"] {
            let cli = Cli::try_parse_from(["smtp", "send", "--auth", spelling]).unwrap();
            let Command::Send(args) = cli.command else {
                panic!("send")
            };
            assert_eq!(args.login.auth, Some(AuthArg::ScramSha256), "{spelling}");
            let account: crate::config::Account =
                toml::from_str(&format!("auth = \"{spelling}\"")).unwrap();
            assert_eq!(account.auth, Some(AuthArg::ScramSha256), "{spelling}");
        }
    }
}
