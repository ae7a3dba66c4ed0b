//! Body files in the spool directory: one per message, named by its id,
//! written to `tmp/` and fsynced, renamed into `bodies/`, and the directory
//! fsynced, so a body is either whole on disk or absent. Read back as a
//! [`BodySource`] that checks the size and SHA-256 recorded at enqueue.

use std::io;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use smtp_core::delivery::BodySource;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use crate::error::{Error, Result};
use crate::store::{Body, MessageId};

/// The chunk bodies are copied in: memory use does not grow with a body.
const CHUNK: usize = 64 * 1024;
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

/// The body files of a spool directory.
#[derive(Clone, Debug)]
pub(crate) struct Spool {
    bodies: PathBuf,
    tmp: PathBuf,
}

impl Spool {
    /// Uses (creating if needed) `bodies/` and `tmp/` under `dir`.
    pub(crate) async fn open(dir: &Path) -> Result<Self> {
        let spool = Self {
            bodies: dir.join("bodies"),
            tmp: dir.join("tmp"),
        };
        for d in [&spool.bodies, &spool.tmp] {
            tokio::fs::create_dir_all(d)
                .await
                .map_err(|e| Error::io("creating the spool directory", d, e))?;
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

    /// Streams each body into its message's file: temporary file, fsync,
    /// rename; up to [`WRITERS`] at once (concurrent fsyncs share the
    /// file system's journal commits), then one fsync of the directory for
    /// them all. Either every body is in place and on disk, or none is.
    pub(crate) async fn write_all(&self, bodies: Vec<(MessageId, Body)>) -> Result<Vec<Written>> {
        let placed: Vec<(PathBuf, Result<Written>)> = futures_util::stream::iter(bodies)
            .map(|(id, body)| async move {
                let path = self.path(&id);
                let result = self.place(&id, &path, body).await;
                (path, result)
            })
            .buffered(WRITERS)
            .collect()
            .await;
        let undo = |placed: &[(PathBuf, Result<Written>)]| {
            let paths: Vec<PathBuf> = placed
                .iter()
                .filter(|(_, r)| r.is_ok())
                .map(|(p, _)| p.clone())
                .collect();
            async move {
                for path in paths {
                    let _ = tokio::fs::remove_file(&path).await;
                }
            }
        };
        if let Some(i) = placed.iter().position(|(_, r)| r.is_err()) {
            undo(&placed).await;
            let mut placed = placed;
            return Err(placed
                .swap_remove(i)
                .1
                .err()
                .unwrap_or_else(|| Error::Misuse("a failed body write without its error".into())));
        }
        if placed.is_empty() {
            return Ok(Vec::new());
        }
        if let Err(e) = sync_dir(&self.bodies).await {
            undo(&placed).await;
            return Err(e);
        }
        Ok(placed.into_iter().filter_map(|(_, r)| r.ok()).collect())
    }

    /// Writes `body` to a temporary file, fsyncs it and renames it to
    /// `path` (not yet durable: the directory is synced by the caller). On
    /// failure nothing is left behind.
    async fn place(&self, id: &MessageId, path: &Path, body: Body) -> Result<Written> {
        let tmp = self.tmp.join(format!("{id}.tmp"));
        let written = match self.write_tmp(&tmp, body).await {
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
        Ok(written)
    }

    async fn write_tmp(&self, tmp: &Path, body: Body) -> Result<Written> {
        let io_err = |doing: &str| {
            let doing = doing.to_owned();
            move |e| Error::io(doing, tmp, e)
        };
        let mut file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(tmp)
            .await
            .map_err(io_err("creating a body file"))?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut buf = vec![0u8; CHUNK];
        match body {
            Body::Source(mut source) => loop {
                let n = source
                    .read(&mut buf)
                    .await
                    .map_err(|e| Error::io("reading the message body", tmp, e))?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                size += n as u64;
                file.write_all(&buf[..n])
                    .await
                    .map_err(io_err("writing a body file"))?;
            },
            Body::File(path) => {
                let mut from = tokio::fs::File::open(&path)
                    .await
                    .map_err(|e| Error::io("opening the message body", &path, e))?;
                loop {
                    let n = from
                        .read(&mut buf)
                        .await
                        .map_err(|e| Error::io("reading the message body", &path, e))?;
                    if n == 0 {
                        break;
                    }
                    hasher.update(&buf[..n]);
                    size += n as u64;
                    file.write_all(&buf[..n])
                        .await
                        .map_err(io_err("writing a body file"))?;
                }
            }
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

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        // Writing to a String cannot fail.
        let _ = write!(s, "{b:02x}");
    }
    s
}
