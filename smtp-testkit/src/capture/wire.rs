//! The capture server's connection: plaintext or TLS, read as bounded lines
//! or as counted BDAT chunks.

use std::io;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// A client line longer than this is a protocol fault (RFC 5321 allows 512).
const MAX_LINE: usize = 64 * 1024;

pub(super) enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    /// What is left after a failed STARTTLS handshake: the session ends.
    Closed,
}

impl Stream {
    async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Plain(s) => s.read(buf).await,
            Self::Tls(s) => s.read(buf).await,
            Self::Closed => Err(io::ErrorKind::NotConnected.into()),
        }
    }

    pub(super) async fn write(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            Self::Plain(s) => s.write_all(data).await,
            Self::Tls(s) => {
                s.write_all(data).await?;
                s.flush().await
            }
            Self::Closed => Err(io::ErrorKind::NotConnected.into()),
        }
    }

    /// Runs the server side of a TLS handshake over a plaintext stream (a
    /// TLS one stays as it is).
    pub(super) async fn start_tls(&mut self, acceptor: &TlsAcceptor) -> io::Result<()> {
        *self = match std::mem::replace(self, Self::Closed) {
            Self::Plain(tcp) => Self::Tls(Box::new(acceptor.accept(tcp).await?)),
            already => already,
        };
        Ok(())
    }
}

/// Buffered line reading with a bound.
#[derive(Default)]
pub(super) struct Lines {
    buf: Vec<u8>,
}

impl Lines {
    /// The next line without its CRLF (or bare LF); `None` when the client
    /// closed the connection.
    pub(super) async fn next(&mut self, stream: &mut Stream) -> io::Result<Option<Vec<u8>>> {
        loop {
            if let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let mut line: Vec<u8> = self.buf.drain(..=pos).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(Some(line));
            }
            if self.buf.len() > MAX_LINE {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "line too long"));
            }
            let mut chunk = [0u8; 8192];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(None);
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// The next line ended by CRLF, without it: a bare LF or CR stays in
    /// the line; `None` when the client closed the connection.
    pub(super) async fn next_crlf(&mut self, stream: &mut Stream) -> io::Result<Option<Vec<u8>>> {
        let mut from = 0;
        loop {
            if let Some(pos) = self.buf[from..].windows(2).position(|w| w == b"\r\n") {
                let mut line: Vec<u8> = self.buf.drain(..from + pos + 2).collect();
                line.truncate(line.len() - 2);
                return Ok(Some(line));
            }
            from = self.buf.len().saturating_sub(1);
            if self.buf.len() > MAX_LINE {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "line too long"));
            }
            let mut chunk = [0u8; 8192];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(None);
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Reads exactly `n` bytes (a BDAT chunk), keeping them in `into` while
    /// it stays within `limit` bytes and dropping them past it. False when
    /// the client closed the connection first.
    pub(super) async fn take(
        &mut self,
        stream: &mut Stream,
        mut n: u64,
        into: &mut Vec<u8>,
        limit: usize,
    ) -> io::Result<bool> {
        loop {
            let here = self.buf.len().min(usize::try_from(n).unwrap_or(usize::MAX));
            let part: Vec<u8> = self.buf.drain(..here).collect();
            if into.len() + part.len() <= limit {
                into.extend_from_slice(&part);
            } else {
                into.clear();
                into.shrink_to_fit();
            }
            n -= here as u64;
            if n == 0 {
                return Ok(true);
            }
            let mut chunk = [0u8; 8192];
            let got = stream.read(&mut chunk).await?;
            if got == 0 {
                return Ok(false);
            }
            self.buf.extend_from_slice(&chunk[..got]);
        }
    }

    /// Drops what was read ahead (what a client pipelined after STARTTLS).
    pub(super) fn clear(&mut self) {
        self.buf.clear();
    }
}
