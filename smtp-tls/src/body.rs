//! Message bodies read from files, streamed in chunks.

use std::io;
use std::path::Path;

use async_trait::async_trait;
use smtp_core::delivery::BodySource;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

/// A message body streamed from a file: memory use does not grow with its size.
#[derive(Debug)]
pub struct FileBody {
    file: tokio::fs::File,
}

impl FileBody {
    /// Opens `path`.
    pub async fn open(path: &Path) -> io::Result<Self> {
        Ok(Self {
            file: tokio::fs::File::open(path).await?,
        })
    }

    /// Wraps an open file.
    pub fn new(file: tokio::fs::File) -> Self {
        Self { file }
    }
}

#[async_trait]
impl BodySource for FileBody {
    async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.file.read(buf).await
    }

    async fn rewind(&mut self) -> io::Result<()> {
        self.file.seek(io::SeekFrom::Start(0)).await.map(|_| ())
    }
}
