//! One error type for the queue, split by fault: the storage under it, data
//! found corrupt, a schema this version does not know, a lease that lost its
//! recipients, and calls the store refuses.

use std::fmt;
use std::io;
use std::path::PathBuf;

use crate::state::IllegalTransition;
use crate::store::MessageId;

/// Why a queue operation failed. Each variant says whose fault it is and
/// what to do; none is a filler for "nothing happened".
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The disk or the database failed (unwritable or full spool, I/O
    /// error, a lock held past the busy timeout). Nothing of the operation
    /// was committed; it may be retried once the cause is fixed.
    Storage {
        /// What the store was doing, e.g. `writing a body file`.
        doing: String,
        /// The file or database concerned.
        path: Option<PathBuf>,
        /// The underlying failure.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Data on disk is not what the store wrote: a body file missing or of
    /// the wrong size or digest, a row that does not parse. Only `message`
    /// is affected (when known); the rest of the queue goes on.
    Corrupt {
        /// The message whose data is corrupt, when the fault is one message's.
        message: Option<MessageId>,
        /// What is wrong, in words.
        detail: String,
    },
    /// The store was created by a newer version of this crate: opening it
    /// could destroy data this version does not understand.
    SchemaTooNew {
        /// The database file.
        path: PathBuf,
        /// The version found in the file.
        found: i64,
        /// The newest version this build understands.
        supported: i64,
    },
    /// The PostgreSQL database failed (unreachable, a connection lost, a
    /// statement refused). Nothing of the operation was committed; it may
    /// be retried once the server is back.
    Database {
        /// What the store was doing, e.g. `claiming due recipients`.
        doing: String,
        /// The database, its URL with any password replaced by `***`.
        database: String,
        /// The underlying failure (its text scrubbed of the password).
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The PostgreSQL server refused the login (SQLSTATE class 28: a wrong
    /// or missing password, a role not allowed): a setting to fix, not a
    /// failure to retry.
    DatabaseLogin {
        /// The database, its URL with any password replaced by `***`.
        database: String,
        /// The server's words (scrubbed of the password).
        detail: String,
    },
    /// The PostgreSQL queue's schema is newer than this build knows: a
    /// newer release migrated it, and workers of this one must not write
    /// to it.
    DatabaseSchemaTooNew {
        /// The database, its URL with any password replaced by `***`.
        database: String,
        /// The version found in the database.
        found: i64,
        /// The newest version this build knows.
        supported: i64,
    },
    /// The lease no longer holds these recipients: it expired and another
    /// worker claimed them (a newer generation), or they were retried or
    /// deleted. Nothing was recorded; the newer holder's result stands.
    StaleLease {
        /// The message of the lease.
        message: MessageId,
        /// The stale lease's generation.
        generation: i64,
    },
    /// No message with this id is in the queue.
    NotFound(MessageId),
    /// A state change the recipient state machine forbids.
    IllegalTransition(IllegalTransition),
    /// The call itself is wrong (an empty batch entry, no recipients, a
    /// message id that is not one, a time before 1970).
    Misuse(String),
}

/// The queue's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(
        doing: impl Into<String>,
        path: impl Into<PathBuf>,
        source: io::Error,
    ) -> Self {
        Self::Storage {
            doing: doing.into(),
            path: Some(path.into()),
            source: Box::new(source),
        }
    }

    pub(crate) fn db(doing: impl Into<String>, source: sqlx::Error) -> Self {
        Self::Storage {
            doing: doing.into(),
            path: None,
            source: Box::new(source),
        }
    }

    pub(crate) fn corrupt(message: Option<&MessageId>, detail: impl Into<String>) -> Self {
        Self::Corrupt {
            message: message.cloned(),
            detail: detail.into(),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Storage {
                doing,
                path,
                source,
            } => {
                write!(f, "queue storage failed while {doing}")?;
                if let Some(path) = path {
                    write!(f, " ({})", path.display())?;
                }
                write!(
                    f,
                    ": {source}; nothing was committed: check that the spool directory is writable and has space"
                )
            }
            Self::Corrupt {
                message: Some(id),
                detail,
            } => {
                write!(
                    f,
                    "message {id} is corrupt: {detail}; delete it or restore its body file"
                )
            }
            Self::Corrupt {
                message: None,
                detail,
            } => write!(f, "queue data is corrupt: {detail}"),
            Self::SchemaTooNew {
                path,
                found,
                supported,
            } => write!(
                f,
                "the queue at {} has schema version {found}, newer than this version understands ({supported}): \
                 use the newer release that wrote it",
                path.display()
            ),
            Self::Database {
                doing,
                database,
                source,
            } => write!(
                f,
                "the queue's database {database} failed while {doing}: {source}; nothing was committed: \
                 check that the PostgreSQL server is up and reachable (and, for a change, that \
                 the role may write)"
            ),
            Self::DatabaseLogin { database, detail } => write!(
                f,
                "the queue's database {database} refused the login: {detail}; give the role's \
                 password with PGPASSWORD, a ~/.pgpass line (host:port:database:user:password, \
                 the file mode 0600: one others can read is ignored) or the config file's \
                 queue URL"
            ),
            Self::DatabaseSchemaTooNew {
                database,
                found,
                supported,
            } => write!(
                f,
                "this queue's schema is version {found}, this smtp knows up to {supported}: upgrade smtp \
                 (the queue is {database})"
            ),
            Self::StaleLease {
                message,
                generation,
            } => write!(
                f,
                "lease {generation} on message {message} is stale (expired and taken over, retried or deleted): \
                 its result was not recorded"
            ),
            Self::NotFound(id) => write!(f, "no message {id} in the queue"),
            Self::IllegalTransition(t) => t.fmt(f),
            Self::Misuse(what) => write!(f, "queue misuse: {what}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Storage { source, .. } | Self::Database { source, .. } => Some(&**source),
            Self::IllegalTransition(t) => Some(t),
            _ => None,
        }
    }
}

impl From<IllegalTransition> for Error {
    fn from(t: IllegalTransition) -> Self {
        Self::IllegalTransition(t)
    }
}
