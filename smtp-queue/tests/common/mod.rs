//! Helpers shared by the integration tests (each test file uses some).
#![allow(dead_code)]

pub(crate) mod backend;

use std::io;
use std::path::Path;
use std::time::Duration;

use smtp_core::delivery::BodySource;
use smtp_queue::{Schedule, SqliteSettings, SqliteStore};

/// Retries half a second apart, no jitter: a test's whole schedule.
pub(crate) fn fast() -> Schedule {
    Schedule {
        first: Duration::from_millis(500),
        max: Duration::from_secs(1),
        lifetime: Duration::from_secs(60),
        jitter: 0.0,
    }
}

/// Reads `body` to its end.
pub(crate) async fn read_all(body: &mut dyn BodySource) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = body.read(&mut buf).await?;
        if n == 0 {
            return Ok(out);
        }
        out.extend_from_slice(&buf[..n]);
    }
}

/// Entries of a directory.
pub(crate) fn files_in(dir: &Path) -> usize {
    std::fs::read_dir(dir).unwrap().count()
}

/// A store that keeps every body in a file of its own (no inline bodies),
/// for tests that look at the files.
pub(crate) async fn files_only(dir: &Path) -> SqliteStore {
    let mut settings = SqliteSettings::default();
    settings.inline_bodies = 0;
    SqliteStore::open_with(dir, settings).await.unwrap()
}
