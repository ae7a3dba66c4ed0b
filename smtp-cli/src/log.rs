//! The log of `smtp queue run` and `smtp send --queue`: `tracing` events on
//! standard error, as text or JSON lines, filtered by `SMTP_LOG`.
//!
//! The log is for running the queue as a service; the per-recipient lines
//! and the report are for a person. So it is on for `queue run --watch`,
//! and otherwise only when asked (`--log-format`, or `SMTP_LOG` set); plain
//! `smtp send` never logs (its stderr is its report's). With the log on,
//! `queue run` leaves its outcome lines to the log.
//!
//! Every line goes out through [`crate::terminal`], like all the command
//! prints: secrets in use and the forms AUTH sends them in are redacted (a
//! server may echo them into a reply, and replies are logged), and
//! characters that could act on a terminal are replaced. The default
//! filter leaves `smtp_core::transcript` (TRACE) off; the transcript is
//! redacted by the core anyway.

use std::io;
use std::sync::atomic::{AtomicU8, Ordering};

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

use crate::cli::LogFormat;
use crate::fail::Failure;

/// The environment variable holding the filter (EnvFilter syntax).
pub(crate) const ENV: &str = "SMTP_LOG";

/// The filter without `SMTP_LOG`: delivery lines and the command's own
/// notes at INFO, everything else (the protocol crates) at WARN.
pub(crate) const DEFAULT_FILTER: &str = "warn,smtp_queue=info,smtp_cli=info";

/// 0: no log; 1: text; 2: JSON.
static ON: AtomicU8 = AtomicU8::new(0);

/// Whether the log is on (then it, not the outcome lines, tells what
/// happened).
pub(crate) fn is_on() -> bool {
    ON.load(Ordering::Relaxed) != 0
}

/// Whether the log is on in JSON: then every line on stderr must be JSON.
pub(crate) fn is_json() -> bool {
    ON.load(Ordering::Relaxed) == 2
}

/// Installs the log when `format` is given, `SMTP_LOG` is set, or the
/// command is a `service` (`queue run --watch`); otherwise nothing.
pub(crate) fn install(format: Option<LogFormat>, service: bool) -> Result<(), Failure> {
    let env = std::env::var(ENV).ok().filter(|s| !s.trim().is_empty());
    if format.is_none() && env.is_none() && !service {
        return Ok(());
    }
    let filter = EnvFilter::builder()
        .parse(env.as_deref().unwrap_or(DEFAULT_FILTER))
        .map_err(|e| Failure::usage(format!("{ENV}: {e}")))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(Stderr);
    let format = format.unwrap_or_default();
    let installed = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_span_list(false)
            .try_init(),
    };
    installed.map_err(|e| {
        Failure::new(
            crate::fail::EX_SOFTWARE,
            format!("cannot start the log: {e}"),
        )
    })?;
    ON.store(
        match format {
            LogFormat::Text => 1,
            LogFormat::Json => 2,
        },
        Ordering::Relaxed,
    );
    Ok(())
}

/// A line the command says on stderr while the log is JSON, as a JSON log
/// line of its own (not filtered: it is what `tell!` would have printed).
/// The text is redacted and made printable by the caller.
pub(crate) fn note_json(level: &str, text: &str) -> String {
    use tracing_subscriber::fmt::format::Writer;
    use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
    let mut timestamp = String::new();
    let _ = SystemTime.format_time(&mut Writer::new(&mut timestamp));
    serde_json::json!({
        "timestamp": timestamp,
        "level": level,
        "message": text,
        "target": "smtp_cli",
    })
    .to_string()
}

/// Hands each formatted event to [`crate::terminal`] whole.
struct Stderr;

impl<'a> MakeWriter<'a> for Stderr {
    type Writer = Line;

    fn make_writer(&'a self) -> Line {
        Line(Vec::new())
    }
}

/// One event as formatted (the formatter writes it whole, then drops the
/// writer): written out on drop, redacted and on one line.
struct Line(Vec<u8>);

impl io::Write for Line {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        let text = String::from_utf8_lossy(&self.0);
        let text = text.trim_end_matches(['\n', '\r']);
        if !text.is_empty() {
            crate::terminal::log_line(text);
        }
    }
}
