//! The schema and its migrations, run on open in one transaction: a new
//! database gets version 1 and then every migration, an older one only
//! the migrations it lacks, so both end up with the same tables. A newer
//! schema than this build understands is refused before anything is
//! written.
//!
//! | version | change |
//! |---|---|
//! | 1 | messages, recipients, lease_generation, backoff |
//! | 2 | `messages.dsn_owed_ms`, `messages.dsn_id`: the delivery status notification owed to the sender, and the one enqueued |

use super::{SCHEMA_VERSION, SqliteStore};
use crate::error::{Error, Result};

/// The schema, version 1, as its first release created it (never edited:
/// later versions are migrations).
const SCHEMA_V1: &str = "
CREATE TABLE messages (
    id          TEXT PRIMARY KEY,
    sender      TEXT NOT NULL,
    options     TEXT NOT NULL,
    body_size   INTEGER NOT NULL,
    body_sha256 TEXT NOT NULL,
    created_ms  INTEGER NOT NULL
);
CREATE TABLE recipients (
    id               INTEGER PRIMARY KEY,
    message_id       TEXT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    position         INTEGER NOT NULL,
    address          TEXT NOT NULL,
    state            TEXT NOT NULL CHECK (state IN
                     ('queued', 'delivering', 'delivered', 'failed', 'deferred', 'expired')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_ms  INTEGER NOT NULL,
    lease_generation INTEGER,
    lease_worker     TEXT,
    lease_until_ms   INTEGER,
    last_code        INTEGER,
    last_enhanced    TEXT,
    last_text        TEXT,
    last_host        TEXT,
    last_tls         TEXT,
    updated_ms       INTEGER NOT NULL
);
CREATE INDEX recipients_by_message ON recipients (message_id, position);
CREATE INDEX recipients_due ON recipients (state, next_attempt_ms);
CREATE INDEX recipients_lease ON recipients (state, lease_until_ms);
CREATE TABLE lease_generation (value INTEGER NOT NULL);
INSERT INTO lease_generation (value) VALUES (0);
CREATE TABLE backoff (
    destination   TEXT PRIMARY KEY,
    not_before_ms INTEGER NOT NULL,
    failures      INTEGER NOT NULL,
    reason        TEXT NOT NULL,
    updated_ms    INTEGER NOT NULL
);
";

/// Each migration takes the schema from the version before it to its own.
/// Plain `ALTER TABLE … ADD COLUMN` and `CREATE INDEX`, as PostgreSQL
/// takes them too.
const MIGRATIONS: &[(i64, &str)] = &[(
    2,
    // dsn_owed_ms: set (to the time) in the transaction that made the
    // last recipient of a message that asked for it final, with one
    // failed or expired; cleared in the transaction that enqueues the
    // notification, which sets dsn_id to the notification's message id.
    "
ALTER TABLE messages ADD COLUMN dsn_owed_ms INTEGER;
ALTER TABLE messages ADD COLUMN dsn_id TEXT;
CREATE INDEX messages_dsn_owed ON messages (dsn_owed_ms);
",
)];

impl SqliteStore {
    pub(super) async fn migrate(&self) -> Result<()> {
        let doing = "creating the queue's schema";
        let mut tx = self.begin(doing).await?;
        sqlx::query("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            .execute(&mut *tx)
            .await
            .map_err(|e| Error::db(doing, e))?;
        let found: Option<i64> = sqlx::query_scalar("SELECT MAX(version) FROM schema_version")
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| Error::db(doing, e))?;
        let mut version = match found {
            None => {
                sqlx::raw_sql(SCHEMA_V1)
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| Error::db(doing, e))?;
                1
            }
            Some(found) if found > SCHEMA_VERSION => {
                return Err(Error::SchemaTooNew {
                    path: self.db.clone(),
                    found,
                    supported: SCHEMA_VERSION,
                });
            }
            Some(found) => found,
        };
        let fresh = found.is_none();
        let from = version;
        for (to, sql) in MIGRATIONS.iter().filter(|(to, _)| *to > from) {
            if !fresh {
                tracing::info!(path = %self.db.display(), from = version, to, "upgrading the queue's schema");
            }
            sqlx::raw_sql(sql)
                .execute(&mut *tx)
                .await
                .map_err(|e| Error::db("upgrading the queue's schema", e))?;
            version = *to;
        }
        if found != Some(version) {
            // One row per version reached: the table keeps the history.
            sqlx::query("INSERT INTO schema_version (version) VALUES ($1)")
                .bind(version)
                .execute(&mut *tx)
                .await
                .map_err(|e| Error::db(doing, e))?;
        }
        tx.commit().await.map_err(|e| Error::db(doing, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_migrations_end_at_the_schema_version_in_order() {
        let mut last = 1;
        for (to, _) in MIGRATIONS {
            assert_eq!(*to, last + 1);
            last = *to;
        }
        assert_eq!(last, SCHEMA_VERSION);
    }
}
