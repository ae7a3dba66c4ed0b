//! Bodies: a small one is handed back to be committed inline with its
//! envelope; a larger one is a file in the spool directory named by its
//! message id, written to `tmp/` and fsynced, renamed into `bodies/`, and
//! the directory fsynced, so a body is either whole on disk or absent. A
//! file is read back as a [`BodySource`] that checks the size and SHA-256
//! recorded at enqueue.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use smtp_core::delivery::BodySource;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use crate::error::{Error, Result};
use crate::store::{Body, MessageId};

/// The chunk bodies are copied in: memory use does not grow with a body.
const CHUNK: usize = 64 * 1024;
/// A batch's inline bodies are held until its commit: at most this much.
const INLINE_BUDGET: usize = 16 * 1024 * 1024;
/// Bodies written at once by [`Spool::write_all`].
const WRITERS: usize = 32;

/// A body as written: its size and digest (lower-case hex SHA-256).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Written {
    /// Octets written.
    pub(crate) size: u64,
    /// SHA-256 of the bytes, hex.
    pub(crate) sha256: String,
}

/// A body as stored by [`Spool::write_all`].
#[derive(Debug)]
pub(crate) struct Stored {
    /// Its size and digest.
    pub(crate) written: Written,
    /// The body itself, to commit inline; `None`: it is in its file.
    pub(crate) inline: Option<Vec<u8>>,
}

/// The body files of a spool directory.
#[derive(Clone, Debug)]
pub(crate) struct Spool {
    bodies: PathBuf,
    tmp: PathBuf,
    /// Bodies up to this size are committed inline with their envelope
    /// (one fsync for a whole batch instead of two per message); larger
    /// ones are streamed to files.
    inline_max: usize,
}

impl Spool {
    /// Uses (creating if needed) `bodies/` and `tmp/` under `dir`; bodies
    /// up to `inline_max` octets are returned to be committed inline.
    pub(crate) async fn open(dir: &Path, inline_max: usize) -> Result<Self> {
        let spool = Self {
            bodies: dir.join("bodies"),
            tmp: dir.join("tmp"),
            inline_max,
        };
        // Mail is private: directories the queue creates are its owner's
        // alone (0700), whatever the umask.
        for d in [dir, &spool.bodies, &spool.tmp] {
            private_dir(d).map_err(|e| Error::io("creating the spool directory", d, e))?;
        }
        for d in [&spool.bodies, &spool.tmp] {
            give_to_owner(dir, d)
                .map_err(|e| Error::io("giving a spool directory to the queue's owner", d, e))?;
        }
        Ok(spool)
    }

    /// The directory of the bodies.
    pub(crate) fn bodies(&self) -> &Path {
        &self.bodies
    }

    /// Where message `id`'s body lives.
    pub(crate) fn path(&self, id: &MessageId) -> PathBuf {
        self.bodies.join(id.as_str())
    }

    /// Stores each body: one of at most `inline_max` octets is returned
    /// to be committed inline with its envelope (while the batch's inline
    /// bodies stay within [`INLINE_BUDGET`]); a larger one is streamed into
    /// its message's file: temporary file, fsync, rename. Up to [`WRITERS`]
    /// at once (concurrent fsyncs share the file system's journal commits),
    /// then one fsync of the directory for them all. Either every body is
    /// in place and on disk (or in hand, for the commit), or none is.
    pub(crate) async fn write_all(&self, bodies: Vec<(MessageId, Body)>) -> Result<Vec<Stored>> {
        let budget = AtomicUsize::new(INLINE_BUDGET);
        let budget = &budget;
        let placed: Vec<(PathBuf, Result<Stored>)> = futures_util::stream::iter(bodies)
            .map(|(id, body)| async move {
                let path = self.path(&id);
                let result = self.place(&id, &path, body, budget).await;
                (path, result)
            })
            .buffered(WRITERS)
            .collect()
            .await;
        let files: Vec<PathBuf> = placed
            .iter()
            .filter(|(_, r)| matches!(r, Ok(s) if s.inline.is_none()))
            .map(|(p, _)| p.clone())
            .collect();
        let undo = |files: Vec<PathBuf>| async move {
            for path in files {
                let _ = tokio::fs::remove_file(&path).await;
            }
        };
        if let Some(i) = placed.iter().position(|(_, r)| r.is_err()) {
            undo(files).await;
            let mut placed = placed;
            return Err(placed
                .swap_remove(i)
                .1
                .err()
                .unwrap_or_else(|| Error::Misuse("a failed body write without its error".into())));
        }
        if !files.is_empty()
            && let Err(e) = sync_dir(&self.bodies).await
        {
            undo(files).await;
            return Err(e);
        }
        Ok(placed.into_iter().filter_map(|(_, r)| r.ok()).collect())
    }

    /// Reads `body`; kept in hand when it is small and the budget allows,
    /// else written to a temporary file, fsynced and renamed to `path` (not
    /// yet durable: the directory is synced by the caller). On failure
    /// nothing is left behind.
    async fn place(
        &self,
        id: &MessageId,
        path: &Path,
        body: Body,
        budget: &AtomicUsize,
    ) -> Result<Stored> {
        let mut reader = Reader::open(body).await?;
        // One octet more than an inline body may have tells which it is.
        let mut head = Vec::new();
        let mut buf = vec![0u8; CHUNK];
        while head.len() <= self.inline_max {
            let want = (self.inline_max + 1 - head.len()).min(CHUNK);
            let n = reader.read(&mut buf[..want]).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        let small = self.inline_max > 0 && head.len() <= self.inline_max;
        if small
            && budget
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                    left.checked_sub(head.len())
                })
                .is_ok()
        {
            let written = Written {
                size: head.len() as u64,
                sha256: digest(&head),
            };
            // Held until the commit: without the growth's slack.
            head.shrink_to_fit();
            return Ok(Stored {
                written,
                inline: Some(head),
            });
        }
        let tmp = self.tmp.join(format!("{id}.tmp"));
        let written = match write_tmp(&tmp, head, &mut reader, &mut buf).await {
            Ok(w) => w,
            Err(e) => {
                let _ = tokio::fs::remove_file(&tmp).await;
                return Err(e);
            }
        };
        if let Err(e) = tokio::fs::rename(&tmp, path).await {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(Error::io("moving a body file into place", path, e));
        }
        Ok(Stored {
            written,
            inline: None,
        })
    }

    /// Removes message `id`'s body; a missing file is not an error.
    pub(crate) async fn remove(&self, id: &MessageId) -> Result<()> {
        let path = self.path(id);
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("removing a body file", &path, e)),
        }
    }

    /// Opens message `id`'s body, which must be `expected` (else the
    /// message is [`Error::Corrupt`]).
    pub(crate) async fn open_body(&self, id: &MessageId, expected: Written) -> Result<SpoolBody> {
        let path = self.path(id);
        let file = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(Error::corrupt(
                    Some(id),
                    format!("its body file {} is missing", path.display()),
                ));
            }
            Err(e) => return Err(Error::io("opening a body file", &path, e)),
        };
        let len = file
            .metadata()
            .await
            .map_err(|e| Error::io("reading a body file's size", &path, e))?
            .len();
        if len != expected.size {
            return Err(Error::corrupt(
                Some(id),
                format!(
                    "its body file {} holds {len} octets, {} were enqueued",
                    path.display(),
                    expected.size
                ),
            ));
        }
        Ok(SpoolBody {
            id: id.clone(),
            file,
            expected,
            hasher: Sha256::new(),
            read: 0,
        })
    }

    /// Removes temporary files left by an enqueue that was interrupted.
    pub(crate) async fn clear_tmp(&self, older_than: std::time::Duration) -> Result<()> {
        let mut dir = tokio::fs::read_dir(&self.tmp)
            .await
            .map_err(|e| Error::io("listing the spool's tmp directory", &self.tmp, e))?;
        while let Ok(Some(entry)) = dir.next_entry().await {
            let old = entry
                .metadata()
                .await
                .ok()
                .and_then(|m| m.modified().ok())
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age >= older_than);
            if old {
                let _ = tokio::fs::remove_file(entry.path()).await;
            }
        }
        Ok(())
    }
}

/// Makes `file` belong to the owner of the queue directory `dir` when it
/// does not: root enqueueing into a service's queue must not leave files
/// the service cannot read. Only root can give a file away; anyone else
/// writing to another user's queue gets the error (and cannot get past
/// its 0700 directories anyway).
pub(crate) fn give_to_owner(dir: &Path, file: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let owner = std::fs::metadata(dir)?;
        let now = std::fs::symlink_metadata(file)?;
        if (now.uid(), now.gid()) != (owner.uid(), owner.gid()) {
            std::os::unix::fs::chown(file, Some(owner.uid()), Some(owner.gid()))?;
        }
    }
    #[cfg(not(unix))]
    let _ = (dir, file);
    Ok(())
}

/// Creates `dir` and its missing parents, owner-only (0700) on Unix; an
/// existing directory is left as it is.
fn private_dir(dir: &Path) -> io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir)
}

/// Where a body to store is read from.
pub(crate) enum Reader {
    Source(Box<dyn BodySource>),
    File(tokio::fs::File, PathBuf),
}

impl Reader {
    pub(crate) async fn open(body: Body) -> Result<Self> {
        Ok(match body {
            Body::Source(source) => Self::Source(source),
            Body::File(path) => {
                let file = tokio::fs::File::open(&path)
                    .await
                    .map_err(|e| Error::io("opening the message body", &path, e))?;
                Self::File(file, path)
            }
        })
    }

    pub(crate) async fn read(&mut self, buf: &mut [u8]) -> Result<usize> {
        match self {
            Self::Source(source) => source
                .read(buf)
                .await
                .map_err(|e| Error::io("reading the message body", Path::new("(message body)"), e)),
            Self::File(file, path) => file
                .read(buf)
                .await
                .map_err(|e| Error::io("reading the message body", path.as_path(), e)),
        }
    }
}

/// Writes `head`, then the rest of `reader`, to a new file `tmp` and
/// fsyncs it.
async fn write_tmp(
    tmp: &Path,
    head: Vec<u8>,
    reader: &mut Reader,
    buf: &mut [u8],
) -> Result<Written> {
    let io_err = |doing: &str| {
        let doing = doing.to_owned();
        move |e| Error::io(doing, tmp, e)
    };
    let mut options = tokio::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    options.mode(0o600);
    let mut file = options
        .open(tmp)
        .await
        .map_err(io_err("creating a body file"))?;
    if let Some(dir) = tmp.parent() {
        give_to_owner(dir, tmp).map_err(io_err("giving a body file to the queue's owner"))?;
    }
    let mut hasher = Sha256::new();
    hasher.update(&head);
    let mut size = head.len() as u64;
    file.write_all(&head)
        .await
        .map_err(io_err("writing a body file"))?;
    drop(head);
    loop {
        let n = reader.read(buf).await?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
        file.write_all(&buf[..n])
            .await
            .map_err(io_err("writing a body file"))?;
    }
    file.flush().await.map_err(io_err("writing a body file"))?;
    file.sync_all()
        .await
        .map_err(io_err("syncing a body file to disk"))?;
    Ok(Written {
        size,
        sha256: hex(&hasher.finalize()),
    })
}

/// A spooled body, streamed; checked against its recorded size and digest
/// as it is read. A mismatch is an [`io::ErrorKind::InvalidData`] error
/// where the end would be, so a corrupt body never ends a transaction.
#[derive(Debug)]
pub struct SpoolBody {
    id: MessageId,
    file: tokio::fs::File,
    expected: Written,
    hasher: Sha256,
    read: u64,
}

#[async_trait]
impl BodySource for SpoolBody {
    async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read(buf).await?;
        self.read += n as u64;
        if self.read > self.expected.size {
            return Err(self.corrupt("grew since it was enqueued"));
        }
        if n == 0 {
            let digest = hex(&std::mem::take(&mut self.hasher).finalize());
            if self.read != self.expected.size {
                return Err(self.corrupt("shrank since it was enqueued"));
            }
            if digest != self.expected.sha256 {
                return Err(self.corrupt("does not match the digest recorded at enqueue"));
            }
        } else {
            self.hasher.update(&buf[..n]);
        }
        Ok(n)
    }

    async fn rewind(&mut self) -> io::Result<()> {
        self.file.seek(io::SeekFrom::Start(0)).await?;
        self.hasher = Sha256::new();
        self.read = 0;
        Ok(())
    }
}

impl SpoolBody {
    fn corrupt(&self, what: &str) -> io::Error {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the body of message {} {what}", self.id),
        )
    }
}

/// Makes a rename inside `dir` durable.
async fn sync_dir(dir: &Path) -> Result<()> {
    let d = tokio::fs::File::open(dir)
        .await
        .map_err(|e| Error::io("opening the spool directory to sync it", dir, e))?;
    d.sync_all()
        .await
        .map_err(|e| Error::io("syncing the spool directory to disk", dir, e))
}

/// The lower-case hex SHA-256 of `bytes`.
pub(crate) fn digest(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        // Writing to a String cannot fail.
        let _ = write!(s, "{b:02x}");
    }
    s
}
