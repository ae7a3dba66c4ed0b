//! Standard input too large to keep in memory, spooled to a private file:
//! mode 0600, created new, inside a directory of its own (mode 0700, an
//! unpredictable name) in the temporary directory, so no other user can
//! read it or plant a file or link in its place. The directory is removed
//! when its [`Spool`] is dropped, and by [`remove_all`] when a signal stops
//! the command (drops do not run on `exit`).

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Spool directories that exist now, for [`remove_all`]; `None` once it
/// has run, so no spool made after it can be left behind.
static LIVE: Mutex<Option<Vec<PathBuf>>> = Mutex::new(Some(Vec::new()));

/// A private directory holding one spooled file.
#[derive(Debug)]
pub(crate) struct Spool {
    dir: PathBuf,
    file: PathBuf,
}

impl Spool {
    /// Creates the directory and opens its file for writing.
    pub(crate) fn create() -> io::Result<(Self, std::fs::File)> {
        let base = std::env::temp_dir();
        let mut attempts = 0;
        let dir = loop {
            let dir = base.join(format!("smtp-spool-{}", unpredictable()));
            let mut builder = std::fs::DirBuilder::new();
            #[cfg(unix)]
            std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
            match builder.create(&dir) {
                Ok(()) => break dir,
                // Someone else's name (or a planted one): pick another.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempts < 10 => {
                    attempts += 1;
                }
                Err(e) => return Err(e),
            }
        };
        let registered = match LIVE.lock() {
            Ok(mut live) => live.as_mut().map(|l| l.push(dir.clone())).is_some(),
            Err(_) => false,
        };
        if !registered {
            let _ = std::fs::remove_dir(&dir);
            return Err(io::Error::other("the command is stopping"));
        }
        let spool = Self {
            file: dir.join("message.eml"),
            dir,
        };
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let file = options.open(&spool.file)?;
        Ok((spool, file))
    }

    /// The spooled file.
    pub(crate) fn path(&self) -> &Path {
        &self.file
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        if let Ok(mut live) = LIVE.lock()
            && let Some(l) = live.as_mut()
        {
            l.retain(|d| d != &self.dir);
        }
    }
}

/// Removes every spool directory; for a signal handler about to exit.
pub(crate) fn remove_all() {
    let dirs = match LIVE.lock() {
        Ok(mut live) => live.take(),
        Err(poisoned) => poisoned.into_inner().take(),
    };
    for d in dirs.into_iter().flatten() {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// 128 bits from the standard library's randomly keyed hasher: a name
/// another user cannot guess in advance.
fn unpredictable() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let a = RandomState::new().hash_one((std::process::id(), nanos));
    let b = RandomState::new().hash_one((nanos, a));
    format!("{a:016x}{b:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spool_is_private_and_removed_on_drop() {
        use std::os::unix::fs::PermissionsExt;
        let (spool, _file) = Spool::create().unwrap();
        let dir = spool.path().parent().unwrap().to_owned();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(spool.path()), 0o600);
        drop(spool);
        assert!(!dir.exists());
    }
}
