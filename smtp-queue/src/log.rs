//! The outcome log: one JSON object per line for every recipient state
//! change, appended after the change commits and written out at once, so
//! `tail -f` follows deliveries. The store is the truth; the log is its
//! history for people and tools.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::state::RecipientState;
use crate::store::{Attempt, MessageId, RecipientId};

/// One line of the log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// When, UNIX epoch milliseconds (the caller's `now`).
    pub at_ms: i64,
    /// What happened: `enqueued`, `claimed`, `delivered`, `failed`,
    /// `deferred`, `expired`, `released`, `retried`, `deleted`, `purged`.
    pub event: String,
    /// The message.
    pub message: MessageId,
    /// The recipient.
    pub recipient: RecipientId,
    /// The recipient's address.
    pub rcpt: String,
    /// The state before (absent for `enqueued`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<RecipientState>,
    /// The state after (absent for `deleted` and `purged`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<RecipientState>,
    /// Attempts made so far.
    pub attempts: u32,
    /// The next attempt, for `deferred` and `released`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_ms: Option<i64>,
    /// The lease's worker, for changes made under a lease.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    /// The lease's generation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    /// The attempt's facts (reply code, enhanced code, text, host, TLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<Attempt>,
}

/// An append-only JSON Lines file.
#[derive(Debug)]
pub struct OutcomeLog {
    path: PathBuf,
    file: Mutex<File>,
}

impl OutcomeLog {
    /// Opens (creating) `path` for appending.
    pub fn open(path: &Path) -> Result<Self> {
        let mut options = OpenOptions::new();
        options.create(true).append(true);
        // Addresses and server replies: its owner's alone.
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let file = options
            .open(path)
            .map_err(|e| Error::io("opening the outcome log", path, e))?;
        Ok(Self {
            path: path.to_owned(),
            file: Mutex::new(file),
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `entries`, one line each, in one write (so lines from
    /// several handles on one file do not interleave).
    pub fn append(&self, entries: &[Entry]) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::new();
        for entry in entries {
            // Serializing plain data with string keys cannot fail.
            serde_json::to_writer(&mut buf, entry).map_err(|e| {
                Error::Misuse(format!("an outcome log entry did not serialize: {e}"))
            })?;
            buf.push(b'\n');
        }
        // A poisoned lock means another append panicked mid-write; the file
        // itself is still fine to append to.
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        file.write_all(&buf)
            .and_then(|()| file.flush())
            .map_err(|e| Error::io("appending to the outcome log", &self.path, e))
    }
}
