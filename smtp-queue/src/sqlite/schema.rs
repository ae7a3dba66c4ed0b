//! The schema (version 1) and its creation on open; a newer schema than
//! this build understands is refused.

use super::{SCHEMA_VERSION, SqliteStore};
use crate::error::{Error, Result};

/// The schema, version 1.
const SCHEMA: &str = "
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
        match found {
            None => {
                sqlx::raw_sql(SCHEMA)
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| Error::db(doing, e))?;
                sqlx::query("INSERT INTO schema_version (version) VALUES ($1)")
                    .bind(SCHEMA_VERSION)
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| Error::db(doing, e))?;
            }
            Some(found) if found > SCHEMA_VERSION => {
                return Err(Error::SchemaTooNew {
                    path: self.db.clone(),
                    found,
                    supported: SCHEMA_VERSION,
                });
            }
            Some(_) => {}
        }
        tx.commit().await.map_err(|e| Error::db(doing, e))
    }
}
