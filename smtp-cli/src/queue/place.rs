//! Where the queue is and how each command opens it.
//!
//! The queue is a directory (the SQLite store) or a PostgreSQL URL (the
//! fleet store, `postgres://` or `postgresql://`): `--queue`, else the
//! config file's top-level `queue`, else the default directory.
//!
//! | command | a directory | a PostgreSQL database |
//! |---|---|---|
//! | `send --queue`, `queue run --watch` | created when missing | schema created when there is none; an older one refused |
//! | one-off `queue run` | must hold a queue | as above |
//! | `list`, `show`, `retry`, `delete`, `purge`, `stats`, `tls-report` | must hold a queue | schema must be this build's |
//! | `queue migrate` | created or upgraded | created or upgraded |
//!
//! An existing PostgreSQL schema is only ever upgraded by `smtp queue
//! migrate`: a fleet's workers run one build at a time, and a worker of a
//! newer build must not change the tables under the older ones.
//!
//! A URL on the command line must not hold a password (the process list
//! shows arguments to every user): the driver takes it from PGPASSWORD or
//! the password file (PGPASSFILE, else ~/.pgpass), or the config file's
//! URL holds it. Every message names the URL with any password replaced
//! by `***`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use smtp_queue::{Migration, PG_SCHEMA_VERSION, PgStore, SqliteStore, Store};

use crate::fail::{EX_CONFIG, EX_NOINPUT, EX_TEMPFAIL, Failure};

/// A queue's place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Place {
    /// A directory: the SQLite store.
    Dir(PathBuf),
    /// A PostgreSQL database, by URL (which may hold a password only
    /// when it came from the config file).
    Postgres(String),
}

/// Whether `url`, a PostgreSQL URL, holds a password (in its user part or
/// a `password=` parameter).
pub(crate) fn url_has_password(url: &str) -> bool {
    smtp_queue::is_postgres_url(url) && smtp_queue::redact_url(url) != url
}

impl Place {
    /// The queue named by `given` (`--queue`; empty: not named), else by
    /// the config file at `config` (or the default place), else the
    /// default directory. Refuses a URL with a password on the command
    /// line.
    pub(crate) fn resolve(given: Option<&Path>, config: Option<&Path>) -> Result<Self, Failure> {
        if let Some(given) = given.filter(|g| !g.as_os_str().is_empty()) {
            return Self::given(given);
        }
        if let Some(queue) = crate::config::queue(config)? {
            return Ok(Self::parse(&queue));
        }
        Ok(Self::Dir(default_directory()?))
    }

    /// `--queue`'s value: a URL without a password, or a directory.
    fn given(given: &Path) -> Result<Self, Failure> {
        let Some(text) = given.to_str().filter(|t| smtp_queue::is_postgres_url(t)) else {
            return Ok(Self::Dir(given.to_owned()));
        };
        if url_has_password(text) {
            return Err(Failure::usage(format!(
                "--queue {}: a password on the command line shows in the process list; \
                 leave it out of the URL and give it in PGPASSWORD, in ~/.pgpass (or the file \
                 PGPASSFILE names), or put the URL in the config file (`queue = \"postgres://…\"`, \
                 chmod 600)",
                smtp_queue::redact_url(text)
            ))
            .kind("password-in-arguments"));
        }
        Ok(Self::Postgres(text.to_owned()))
    }

    fn parse(text: &str) -> Self {
        if smtp_queue::is_postgres_url(text) {
            Self::Postgres(text.to_owned())
        } else {
            Self::Dir(PathBuf::from(text))
        }
    }

    /// Whether this is a fleet's queue (PostgreSQL).
    pub(crate) fn is_postgres(&self) -> bool {
        matches!(self, Self::Postgres(_))
    }

    /// For `send --queue` and `queue run`: a directory is created when
    /// missing; a database with no schema gets one (first use); an older
    /// schema is refused (`smtp queue migrate` upgrades it).
    pub(crate) async fn open_for_work(&self) -> Result<Arc<dyn Store>, Failure> {
        match self {
            Self::Dir(dir) => open_dir(dir).await,
            Self::Postgres(url) => {
                let store = self.attach(url).await?;
                match store.schema_version().await.map_err(|e| self.error(e))? {
                    None => {
                        let m = store.migrate().await.map_err(|e| self.error(e))?;
                        if m.changed() {
                            tracing::info!(target: "smtp_cli::queue", queue = %self,
                                version = m.to, "no queue schema there yet: created it");
                        }
                    }
                    Some(found) => self.check(found)?,
                }
                Ok(Arc::new(store))
            }
        }
    }

    /// For the commands that read or change a queue (and a one-off `queue
    /// run` on a directory): the queue must be there, and a database's
    /// schema must be this build's.
    pub(crate) async fn open_existing(&self, named: bool) -> Result<Arc<dyn Store>, Failure> {
        match self {
            Self::Dir(dir) => {
                if !exists(dir) {
                    return Err(no_queue_in(dir, named));
                }
                open_dir(dir).await
            }
            Self::Postgres(url) => {
                let store = self.attach(url).await?;
                match store.schema_version().await.map_err(|e| self.error(e))? {
                    None => {
                        return Err(Failure::new(
                            EX_NOINPUT,
                            format!(
                                "no queue in {self}: the database has no queue schema \
                                 (`smtp queue migrate --queue URL` or `smtp send --queue URL` \
                                 creates it)"
                            ),
                        )
                        .kind("no-queue"));
                    }
                    Some(found) => self.check(found)?,
                }
                Ok(Arc::new(store))
            }
        }
    }

    /// `smtp queue migrate`: creates or upgrades the schema; says what it
    /// found.
    pub(crate) async fn migrate(&self) -> Result<Migration, Failure> {
        match self {
            Self::Dir(dir) => {
                let store = SqliteStore::open(dir).await.map_err(|e| self.error(e))?;
                let m = store.migration();
                store.close().await;
                Ok(m)
            }
            Self::Postgres(url) => {
                let store = self.attach(url).await?;
                let m = store.migrate().await.map_err(|e| self.error(e))?;
                store.close().await;
                Ok(m)
            }
        }
    }

    async fn attach(&self, url: &str) -> Result<PgStore, Failure> {
        PgStore::attach(url).await.map_err(|e| self.error(e))
    }

    /// Refuses a schema version other than this build's.
    fn check(&self, found: i64) -> Result<(), Failure> {
        if found == PG_SCHEMA_VERSION {
            return Ok(());
        }
        if found > PG_SCHEMA_VERSION {
            return Err(Failure::config(format!(
                "queue {self}: its schema is version {found}, this smtp knows up to \
                 {PG_SCHEMA_VERSION}: upgrade smtp"
            ))
            .kind("schema-too-new"));
        }
        Err(Failure::new(
            EX_CONFIG,
            format!(
                "queue {self}: its schema is version {found}, this smtp needs \
                 {PG_SCHEMA_VERSION}; workers never upgrade a fleet's schema themselves: \
                 run `smtp queue migrate --queue URL` once (then restart the workers of \
                 the older build with this one)"
            ),
        )
        .kind("schema-too-old"))
    }

    fn error(&self, e: smtp_queue::Error) -> Failure {
        match self {
            // The store's errors name the database, redacted.
            // A refused login is a setting to fix: retrying cannot help.
            Self::Postgres(url) if matches!(e, smtp_queue::Error::DatabaseLogin { .. }) => {
                Failure::new(EX_CONFIG, format!("queue: {e}. {}", password_source(url)))
                    .kind("database-login")
            }
            Self::Postgres(_) => Failure::new(EX_TEMPFAIL, format!("queue: {e}")),
            Self::Dir(dir) => Failure::new(EX_TEMPFAIL, format!("queue {}: {e}", dir.display())),
        }
    }
}

/// Where the password of a refused login came from, as the driver looks
/// for it (the URL, then `PGPASSWORD`, then the password file), and so
/// what to fix. A password file that group or others may read is
/// ignored by the driver, as by libpq (its warning goes only to a log a
/// one-off command does not show): said with the fix.
fn password_source(url: &str) -> String {
    use std::os::unix::fs::PermissionsExt;
    if url_has_password(url) {
        return "The password tried was the one in the config file's queue URL".into();
    }
    if std::env::var_os("PGPASSWORD").is_some() {
        return "The password tried was PGPASSWORD's".into();
    }
    let file = match std::env::var_os("PGPASSFILE") {
        Some(f) => Some(PathBuf::from(f)),
        None => std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".pgpass")),
    };
    let Some(file) = file else {
        return "No password was found: none in the URL, PGPASSWORD unset, no HOME for ~/.pgpass"
            .into();
    };
    let shown = file.display();
    match std::fs::metadata(&file) {
        Err(_) => format!(
            "No password was found: none in the URL, PGPASSWORD unset, and no password file \
             {shown}"
        ),
        Ok(m) if m.permissions().mode() & 0o077 != 0 => format!(
            "{shown} is mode {:o}, readable by others, so it was not read: chmod 600 {shown}",
            m.permissions().mode() & 0o777
        ),
        Ok(_) => format!(
            "The password tried was from {shown}, or none when no line there matches \
             host:port:database:user"
        ),
    }
}

impl fmt::Display for Place {
    /// The directory, or the URL with any password replaced by `***`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Dir(dir) => write!(f, "{}", dir.display()),
            Self::Postgres(url) => f.write_str(&smtp_queue::redact_url(url)),
        }
    }
}

async fn open_dir(dir: &Path) -> Result<Arc<dyn Store>, Failure> {
    SqliteStore::open(dir)
        .await
        .map(|s| Arc::new(s) as Arc<dyn Store>)
        .map_err(|e| Failure::new(EX_TEMPFAIL, format!("queue {}: {e}", dir.display())))
}

/// Whether `dir` holds a queue (its database).
pub(crate) fn exists(dir: &Path) -> bool {
    dir.join("queue.db").is_file()
}

/// The refusal of a directory without a queue (66), rather than an empty
/// queue created where a mistyped `--queue` points.
fn no_queue_in(dir: &Path, named: bool) -> Failure {
    let why = if dir.is_dir() {
        "it holds no queue.db"
    } else if dir.exists() {
        "not a directory"
    } else {
        "no such directory"
    };
    let hint = if named {
        "a mistyped --queue? `smtp send --queue DIR` creates a queue"
    } else {
        "nothing was queued there yet: `smtp send --queue` creates it"
    };
    Failure::new(
        EX_NOINPUT,
        format!("no queue in {}: {why} ({hint})", dir.display()),
    )
    .kind("no-queue")
}

/// `$XDG_STATE_HOME/smtp/queue`, else `~/.local/state/smtp/queue`.
fn default_directory() -> Result<PathBuf, Failure> {
    if let Some(state) = std::env::var_os("XDG_STATE_HOME").filter(|s| !s.is_empty()) {
        return Ok(PathBuf::from(state).join("smtp/queue"));
    }
    let home = std::env::var_os("HOME")
        .ok_or_else(|| Failure::config("no --queue DIR, XDG_STATE_HOME or HOME"))?;
    Ok(PathBuf::from(home).join(".local/state/smtp/queue"))
}

/// This process's worker id in leases and `queue stats`: host and pid.
pub(crate) fn worker_id() -> String {
    format!("{}:{}", crate::send::hostname(), std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_with_a_password_is_refused_on_the_command_line_without_echoing_it() {
        for url in [
            "postgres://smtp:Hunter2Secret@db/q",
            "postgresql://smtp@db/q?password=Hunter2Secret",
        ] {
            let e = Place::given(Path::new(url)).unwrap_err();
            let text = format!("{e:?}");
            assert!(!text.contains("Hunter2Secret"), "{text}");
            assert!(text.contains("PGPASSWORD"), "{text}");
            assert!(text.contains("***"), "{text}");
        }
        assert_eq!(
            Place::given(Path::new("postgres://smtp@db/q")).unwrap(),
            Place::Postgres("postgres://smtp@db/q".into())
        );
        // A directory is a directory, whatever characters it holds.
        assert_eq!(
            Place::given(Path::new("q:x@y/z")).unwrap(),
            Place::Dir("q:x@y/z".into())
        );
    }
}
