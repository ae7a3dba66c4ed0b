//! The stores the contract tests run on: SQLite in a temporary directory,
//! PostgreSQL in a database of its own on the binary's throwaway cluster
//! (smtp-testkit's `Cluster::shared`). A test written once against
//! [`Backend`] runs on both through [`both!`](crate::both).

use std::path::Path;
use std::sync::Arc;

use smtp_queue::log::Entry;
use smtp_queue::{PgStore, SqliteStore, Store};
use smtp_testkit::postgres::Cluster;

/// Where a test's queue lives.
pub(crate) enum Backend {
    /// A spool directory.
    Sqlite(tempfile::TempDir),
    /// A database URL.
    Postgres(String),
}

impl Backend {
    pub(crate) fn sqlite() -> Self {
        Self::Sqlite(tempfile::tempdir().unwrap())
    }

    /// A fresh database on the shared cluster (started on first use).
    pub(crate) fn postgres() -> Self {
        Self::Postgres(Cluster::shared().fresh_database())
    }

    pub(crate) fn is_postgres(&self) -> bool {
        matches!(self, Self::Postgres(_))
    }

    /// A handle on the queue (another one each call: reopening, or a
    /// second worker).
    pub(crate) async fn open(&self) -> Arc<dyn Store> {
        match self {
            Self::Sqlite(dir) => Arc::new(SqliteStore::open(dir.path()).await.unwrap()),
            Self::Postgres(url) => Arc::new(PgStore::open(url).await.unwrap()),
        }
    }

    /// Runs one SQL statement on the queue's database, behind the store's
    /// back (tampering, as a broken disk or a careless operator would).
    #[allow(dead_code)]
    pub(crate) async fn exec(&self, sql: &str) {
        use sqlx::Connection;
        match self {
            Self::Sqlite(dir) => {
                let url = format!("sqlite://{}", dir.path().join("queue.db").display());
                let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
                sqlx::query(sql).execute(&mut conn).await.unwrap();
                conn.close().await.unwrap();
            }
            Self::Postgres(url) => {
                let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
                sqlx::query(sql).execute(&mut conn).await.unwrap();
                conn.close().await.unwrap();
            }
        }
    }

    /// The spool directory (SQLite only).
    pub(crate) fn dir(&self) -> Option<&Path> {
        match self {
            Self::Sqlite(dir) => Some(dir.path()),
            Self::Postgres(_) => None,
        }
    }

    /// The outcome log, whole: the file's lines, or the table's rows.
    pub(crate) async fn log(&self) -> Vec<Entry> {
        match self {
            Self::Sqlite(dir) => std::fs::read_to_string(dir.path().join("outcomes.jsonl"))
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect(),
            Self::Postgres(url) => {
                let store = PgStore::open(url).await.unwrap();
                let mut out = Vec::new();
                let mut after = 0;
                loop {
                    let page = store.outcomes(after, 1000).await.unwrap();
                    let Some((last, _)) = page.last() else { break };
                    after = *last;
                    out.extend(page.into_iter().map(|(_, e)| e));
                }
                store.close().await;
                out
            }
        }
    }
}

/// `both!(name)`: tests `name::sqlite` and `name::postgres`, each running
/// `async fn name(backend: Backend)` on its store.
#[macro_export]
macro_rules! both {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name($crate::common::backend::Backend::sqlite()).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name($crate::common::backend::Backend::postgres()).await;
            }
        }
    )*};
}
