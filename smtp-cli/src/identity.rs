//! What says a file is still the one that was read, without reading it
//! again: a message file's body is sent from the file (or re-encoded from
//! it) only when this is unchanged since its scan.

/// What identifies the content of a file without reading it again: the
/// same inode, size and change times.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Identity {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl Identity {
    /// The file's size in octets.
    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    #[cfg(unix)]
    pub(crate) fn of(m: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
        Self {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: ns(m.mtime(), m.mtime_nsec()),
            ctime_ns: ns(m.ctime(), m.ctime_nsec()),
        }
    }

    #[cfg(not(unix))]
    pub(crate) fn of(m: &std::fs::Metadata) -> Self {
        let mtime_ns = m
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_nanos() as i128)
            .unwrap_or_default();
        Self {
            dev: 0,
            ino: 0,
            size: m.len(),
            mtime_ns,
            ctime_ns: 0,
        }
    }
}
