//! The PostgreSQL schema and its migrations (numbered on their own, apart
//! from the SQLite store's), applied on open in one transaction under an
//! advisory lock: two workers starting at once take turns, and the second
//! finds the work done. A schema newer than this build knows is refused
//! before anything is written.
//!
//! | version | change |
//! |---|---|
//! | 1 | the SQLite store's tables as of its version 8, bodies in `body_chunks`, `outcome_log`, `workers`, the `lease_generation` sequence |
//! | 2 | `slots`: each destination's connection slots held under a lease (`Store::take_slot`), as the SQLite store's version 9 |
//! | 3 | `tls_results.sending_ip`, `tls_results.receiving_ip` in its key: TLS-RPT results counted per pair of addresses too, as the SQLite store's version 10 |

use super::PgStore;
use crate::error::{Error, Result};
use crate::store::Migration;

/// The schema version this build writes and understands.
pub const PG_SCHEMA_VERSION: i64 = 3;

/// The advisory lock migrations are made under (any constant will do;
/// this one spells "smtpq").
const MIGRATION_LOCK: i64 = 0x0073_6d74_7071;

/// Each migration takes the schema from the version before it to its
/// own. Never edited once released: later changes are new entries.
const MIGRATIONS: &[(i64, &str)] = &[
    (
    1,
    "
CREATE TABLE messages (
    id          TEXT PRIMARY KEY,
    sender      TEXT NOT NULL,
    options     JSONB NOT NULL,
    body_size   BIGINT NOT NULL,
    body_sha256 TEXT NOT NULL,
    created_ms  BIGINT NOT NULL,
    dsn_owed_ms BIGINT,
    dsn_id      TEXT
);
CREATE INDEX messages_created ON messages (created_ms, id);
CREATE INDEX messages_dsn_owed ON messages (dsn_owed_ms) WHERE dsn_owed_ms IS NOT NULL;
CREATE TABLE body_chunks (
    message_id TEXT NOT NULL REFERENCES messages(id) ON DELETE CASCADE
               DEFERRABLE INITIALLY DEFERRED,
    seq        BIGINT NOT NULL,
    data       BYTEA NOT NULL,
    PRIMARY KEY (message_id, seq)
);
CREATE TABLE recipients (
    id               BIGSERIAL PRIMARY KEY,
    message_id       TEXT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    position         BIGINT NOT NULL,
    address          TEXT NOT NULL,
    state            TEXT NOT NULL CHECK (state IN
                     ('queued', 'delivering', 'delivered', 'failed', 'deferred', 'expired')),
    attempts         BIGINT NOT NULL DEFAULT 0,
    next_attempt_ms  BIGINT NOT NULL,
    lease_generation BIGINT,
    lease_worker     TEXT,
    lease_until_ms   BIGINT,
    last_code        BIGINT,
    last_enhanced    TEXT,
    last_text        TEXT,
    last_host        TEXT,
    last_tls         TEXT,
    updated_ms       BIGINT NOT NULL
);
CREATE INDEX recipients_by_message ON recipients (message_id, position);
CREATE INDEX recipients_waiting ON recipients (next_attempt_ms) WHERE state IN ('queued', 'deferred');
CREATE INDEX recipients_leased ON recipients (lease_until_ms) WHERE state = 'delivering';
CREATE SEQUENCE lease_generation;
CREATE TABLE backoff (
    destination   TEXT PRIMARY KEY,
    not_before_ms BIGINT NOT NULL,
    failures      BIGINT NOT NULL,
    reason        TEXT NOT NULL,
    updated_ms    BIGINT NOT NULL
);
CREATE TABLE budgets (
    key         TEXT NOT NULL,
    limit_key   TEXT NOT NULL,
    tat_ms      BIGINT,
    rate_count  BIGINT NOT NULL,
    rate_per_ms BIGINT NOT NULL,
    burst       BIGINT NOT NULL,
    remembered  BOOLEAN NOT NULL DEFAULT FALSE,
    updated_ms  BIGINT NOT NULL,
    PRIMARY KEY (key, limit_key)
);
CREATE TABLE budget_takes (
    key   TEXT NOT NULL,
    at_ms BIGINT NOT NULL,
    units BIGINT NOT NULL
);
CREATE INDEX budget_takes_by_key ON budget_takes (key, at_ms);
CREATE TABLE merges (
    id         BIGSERIAL PRIMARY KEY,
    key        TEXT NOT NULL UNIQUE,
    created_ms BIGINT NOT NULL
);
CREATE TABLE merge_recipients (
    merge_id BIGINT NOT NULL REFERENCES merges(id) ON DELETE CASCADE,
    address  TEXT NOT NULL,
    PRIMARY KEY (merge_id, address)
);
CREATE TABLE throttles (
    destination     TEXT PRIMARY KEY,
    connections     BIGINT NOT NULL,
    rate_per_min    BIGINT,
    ceiling_per_min BIGINT,
    reason          TEXT NOT NULL,
    since_ms        BIGINT NOT NULL,
    cut_ms          BIGINT NOT NULL,
    until_ms        BIGINT NOT NULL
);
CREATE TABLE mta_sts_policies (
    domain    TEXT PRIMARY KEY,
    id        TEXT NOT NULL,
    policy    TEXT NOT NULL,
    fetched_s BIGINT NOT NULL,
    expires_s BIGINT NOT NULL
);
CREATE TABLE tls_results (
    day           BIGINT NOT NULL,
    policy_domain TEXT NOT NULL,
    policy_type   TEXT NOT NULL,
    policy_string TEXT NOT NULL,
    mx_host       TEXT NOT NULL,
    receiving_mx  TEXT NOT NULL,
    result        TEXT NOT NULL,
    count         BIGINT NOT NULL,
    PRIMARY KEY (day, policy_domain, policy_type, policy_string, receiving_mx, result)
);
CREATE TABLE outcome_log (
    seq          BIGSERIAL PRIMARY KEY,
    at_ms        BIGINT NOT NULL,
    message_id   TEXT NOT NULL,
    recipient_id BIGINT NOT NULL,
    event        TEXT NOT NULL,
    entry        JSONB NOT NULL
);
CREATE INDEX outcome_log_by_message ON outcome_log (message_id, seq);
CREATE TABLE workers (
    worker       TEXT PRIMARY KEY,
    host         TEXT NOT NULL,
    pid          BIGINT NOT NULL,
    started_ms   BIGINT NOT NULL,
    last_seen_ms BIGINT NOT NULL
);
",
    ),
    (
        2,
        // Connection slots: one row per session to a destination, held by
        // a worker until `until_ms` (renewed while the session runs); a
        // BIGSERIAL generation, never given twice.
        "
CREATE TABLE slots (
    generation  BIGSERIAL PRIMARY KEY,
    destination TEXT NOT NULL,
    worker      TEXT NOT NULL,
    until_ms    BIGINT NOT NULL,
    taken_ms    BIGINT NOT NULL
);
CREATE INDEX slots_by_destination ON slots (destination, until_ms);
CREATE INDEX slots_by_expiry ON slots (until_ms)
",
    ),
    (
        3,
        // TLS-RPT: each session's addresses (`sending-mta-ip`,
        // `receiving-ip`, RFC 8460 section 4.3) in the key, empty when
        // unknown (a policy fetch, a host the policy left out, results
        // counted before this version).
        "
ALTER TABLE tls_results ADD COLUMN sending_ip TEXT NOT NULL DEFAULT '';
ALTER TABLE tls_results ADD COLUMN receiving_ip TEXT NOT NULL DEFAULT '';
ALTER TABLE tls_results DROP CONSTRAINT tls_results_pkey;
ALTER TABLE tls_results ADD PRIMARY KEY (day, policy_domain, policy_type, policy_string,
    receiving_mx, sending_ip, receiving_ip, result)
",
    ),
];

impl PgStore {
    /// Creates or upgrades the schema to [`PG_SCHEMA_VERSION`], in one
    /// transaction under an advisory lock (a second worker migrating at
    /// once waits, then finds the work done), and says what it found.
    /// Refuses a schema newer than this build knows
    /// ([`Error::DatabaseSchemaTooNew`]).
    pub async fn migrate(&self) -> Result<Migration> {
        let doing = "creating the queue's schema";
        // Already current: no lock, no write (readers and a fleet of
        // workers restarting do not queue up on the advisory lock).
        if self.schema_version().await? == Some(PG_SCHEMA_VERSION) {
            return Ok(Migration {
                from: Some(PG_SCHEMA_VERSION),
                to: PG_SCHEMA_VERSION,
            });
        }
        let mut tx = self.begin(doing).await?;
        // Held to the end of the transaction: a second worker starting at
        // once waits here, then finds the version it needs.
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(MIGRATION_LOCK)
            .execute(&mut *tx)
            .await
            .map_err(self.db(doing))?;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS schema_version (
                 version    BIGINT NOT NULL,
                 applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
        )
        .execute(&mut *tx)
        .await
        .map_err(self.db(doing))?;
        let found: Option<i64> = sqlx::query_scalar("SELECT MAX(version) FROM schema_version")
            .fetch_one(&mut *tx)
            .await
            .map_err(self.db(doing))?;
        let from = found.unwrap_or(0);
        if from > PG_SCHEMA_VERSION {
            return Err(self.too_new(from));
        }
        for (to, sql) in MIGRATIONS.iter().filter(|(to, _)| *to > from) {
            if from > 0 {
                tracing::info!(database = %self.database, from, to, "upgrading the queue's schema");
            }
            // One statement at a time (the migrations hold no `;` but
            // between statements).
            for statement in sql.split(';').map(str::trim).filter(|s| !s.is_empty()) {
                sqlx::query(statement)
                    .execute(&mut *tx)
                    .await
                    .map_err(self.db("upgrading the queue's schema"))?;
            }
            sqlx::query("INSERT INTO schema_version (version) VALUES ($1)")
                .bind(*to)
                .execute(&mut *tx)
                .await
                .map_err(self.db(doing))?;
        }
        tx.commit().await.map_err(self.db(doing))?;
        Ok(Migration {
            from: found,
            to: PG_SCHEMA_VERSION,
        })
    }

    /// Refuses a schema other than this build's (without writing).
    pub(super) async fn check_version(&self) -> Result<()> {
        match self.schema_version().await? {
            Some(PG_SCHEMA_VERSION) => Ok(()),
            Some(found) if found > PG_SCHEMA_VERSION => Err(self.too_new(found)),
            found => Err(Error::Misuse(format!(
                "the queue at {} has schema version {}, this smtp writes {PG_SCHEMA_VERSION}: \
                 open it once for writing to upgrade it",
                self.database,
                found.unwrap_or(0)
            ))),
        }
    }

    /// The schema's version, `None` before any (a database never
    /// migrated). Reads only.
    pub async fn schema_version(&self) -> Result<Option<i64>> {
        let doing = "reading the queue's schema version";
        let exists: bool = sqlx::query_scalar("SELECT to_regclass('schema_version') IS NOT NULL")
            .fetch_one(&self.pool)
            .await
            .map_err(self.db(doing))?;
        if !exists {
            return Ok(None);
        }
        sqlx::query_scalar("SELECT MAX(version) FROM schema_version")
            .fetch_one(&self.pool)
            .await
            .map_err(self.db(doing))
    }

    fn too_new(&self, found: i64) -> Error {
        Error::DatabaseSchemaTooNew {
            database: self.database.clone(),
            found,
            supported: PG_SCHEMA_VERSION,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_migrations_end_at_the_schema_version_in_order() {
        let mut last = 0;
        for (to, _) in MIGRATIONS {
            assert_eq!(*to, last + 1);
            last = *to;
        }
        assert_eq!(last, PG_SCHEMA_VERSION);
    }
}
