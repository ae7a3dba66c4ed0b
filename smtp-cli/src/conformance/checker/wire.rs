//! The checker's side of the wire: one connection, plaintext or TLS,
//! replies read with a bound on size (line, lines, buffer) and on time
//! (every read under `--timeout`). Nothing the server sends can panic it.

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::Target;

/// A reply line longer than this is malformed (RFC 5321 §4.5.3.1.5: 512).
const MAX_LINE: usize = 4096;
/// Lines in one reply, at most.
const MAX_LINES: usize = 200;
/// The name in our EHLO.
pub(super) const EHLO_NAME: &str = "conformance-checker.invalid";

/// One reply: its code and its lines' text (after the code).
#[derive(Clone, Debug)]
pub(super) struct Reply {
    pub(super) code: u16,
    pub(super) lines: Vec<String>,
}

impl Reply {
    pub(super) fn class(&self) -> u16 {
        self.code / 100
    }

    /// The first line as it came, shortened: `250 2.1.0 ok`.
    pub(super) fn brief(&self) -> String {
        let text = self
            .lines
            .first()
            .map(|l| shorten(l, 80))
            .unwrap_or_default();
        format!("{} {text}", self.code).trim_end().to_owned()
    }

    /// EHLO keywords, upper case (the first line is the greeting name).
    pub(super) fn keywords(&self) -> Vec<String> {
        self.lines
            .iter()
            .skip(1)
            .map(|l| l.to_ascii_uppercase())
            .collect()
    }
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// A connection to the server under check.
pub(super) struct Conn {
    stream: Stream,
    /// Received, not yet parsed.
    buf: Vec<u8>,
    timeout: Duration,
    closed: bool,
}

impl Conn {
    /// Connects and reads the greeting.
    pub(super) async fn connect(
        target: &Target,
        timeout: Duration,
    ) -> Result<(Self, Reply), String> {
        let tcp = tokio::time::timeout(timeout, TcpStream::connect(target.addr))
            .await
            .map_err(|_| format!("connecting to {} timed out", target.addr))?
            .map_err(|e| format!("cannot connect to {}: {e}", target.addr))?;
        let _ = tcp.set_nodelay(true);
        let mut conn = Self {
            stream: Stream::Plain(tcp),
            buf: Vec::new(),
            timeout,
            closed: false,
        };
        let greeting = conn.reply().await?;
        Ok((conn, greeting))
    }

    pub(super) fn is_tls(&self) -> bool {
        matches!(self.stream, Stream::Tls(_))
    }

    /// The TLS connection's facts, inside TLS.
    pub(super) fn tls(&self) -> Option<&rustls::ClientConnection> {
        match &self.stream {
            Stream::Tls(s) => Some(s.get_ref().1),
            Stream::Plain(_) => None,
        }
    }

    pub(super) async fn send(&mut self, bytes: &[u8]) -> Result<(), String> {
        let write = async {
            match &mut self.stream {
                Stream::Plain(s) => s.write_all(bytes).await,
                Stream::Tls(s) => {
                    s.write_all(bytes).await?;
                    s.flush().await
                }
            }
        };
        tokio::time::timeout(self.timeout, write)
            .await
            .map_err(|_| "writing timed out".to_owned())?
            .map_err(|e| format!("cannot write: {e}"))
    }

    /// Sends one command line (CRLF added) and reads its reply.
    pub(super) async fn command(&mut self, line: &str) -> Result<Reply, String> {
        self.send(format!("{line}\r\n").as_bytes()).await?;
        self.reply()
            .await
            .map_err(|e| format!("{e} (after {})", verb(line)))
    }

    /// The next reply, within the timeout.
    pub(super) async fn reply(&mut self) -> Result<Reply, String> {
        let t = self.timeout;
        match self.reply_within(t).await? {
            Some(r) => Ok(r),
            None if self.closed => Err("the server closed the connection".to_owned()),
            None => Err(format!("no reply within {} s", t.as_secs())),
        }
    }

    /// The next reply if one starts to come within `quiet` (then it has
    /// the whole timeout to finish); `None` on silence or a close.
    pub(super) async fn reply_within(&mut self, quiet: Duration) -> Result<Option<Reply>, String> {
        let mut lines = Vec::new();
        let mut code = None;
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            if let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let raw: Vec<u8> = self.buf.drain(..=pos).collect();
                let (c, more, text) = parse_line(&raw)?;
                if code.is_some_and(|k| k != c) {
                    return Err(format!("a reply changed its code mid-way ({c})"));
                }
                code = Some(c);
                lines.push(text);
                if !more {
                    return Ok(Some(Reply { code: c, lines }));
                }
                if lines.len() >= MAX_LINES {
                    return Err(format!("a reply of more than {MAX_LINES} lines"));
                }
                continue;
            }
            if self.buf.len() > MAX_LINE {
                return Err(format!("a reply line longer than {MAX_LINE} octets"));
            }
            if self.closed {
                return if lines.is_empty() && self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err("the server closed the connection mid-reply".to_owned())
                };
            }
            let until = if lines.is_empty() && self.buf.is_empty() {
                tokio::time::Instant::now() + quiet
            } else {
                deadline
            };
            match tokio::time::timeout_at(until.min(deadline), self.read_more()).await {
                Err(_) if lines.is_empty() && self.buf.is_empty() => return Ok(None),
                Err(_) => {
                    return Err(format!(
                        "a reply unfinished after {} s",
                        self.timeout.as_secs()
                    ));
                }
                Ok(r) => r?,
            }
        }
    }

    async fn read_more(&mut self) -> Result<(), String> {
        let mut chunk = [0u8; 4096];
        let n = match &mut self.stream {
            Stream::Plain(s) => s.read(&mut chunk).await,
            Stream::Tls(s) => s.read(&mut chunk).await,
        };
        match n {
            Ok(0) | Err(_) => self.closed = true,
            Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
        }
        Ok(())
    }

    /// Octets received and not yet read as replies.
    pub(super) fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The TLS handshake on this connection (after STARTTLS's 220).
    pub(super) async fn upgrade(
        self,
        config: Arc<rustls::ClientConfig>,
        name: ServerName<'static>,
    ) -> Result<Self, String> {
        let Stream::Plain(tcp) = self.stream else {
            return Err("TLS inside TLS".to_owned());
        };
        let connect = TlsConnector::from(config).connect(name, tcp);
        let tls = tokio::time::timeout(self.timeout, connect)
            .await
            .map_err(|_| {
                format!(
                    "the TLS handshake timed out after {} s",
                    self.timeout.as_secs()
                )
            })?
            .map_err(|e| format!("the TLS handshake failed: {e}"))?;
        Ok(Self {
            stream: Stream::Tls(Box::new(tls)),
            buf: Vec::new(),
            timeout: self.timeout,
            closed: false,
        })
    }

    /// QUIT, not waiting long for its reply.
    pub(super) async fn quit(mut self) {
        if self.send(b"QUIT\r\n").await.is_ok() {
            let _ = self.reply_within(Duration::from_millis(500)).await;
        }
    }
}

/// `250-text` → (250, more follows, "text").
fn parse_line(raw: &[u8]) -> Result<(u16, bool, String), String> {
    let line = raw.strip_suffix(b"\n").unwrap_or(raw);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let text = String::from_utf8_lossy(line);
    let bad = || {
        let shown = shorten(&text, 60);
        format!("a malformed reply line: {shown:?}")
    };
    let code = text
        .get(..3)
        .filter(|c| c.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|c| c.parse::<u16>().ok())
        .filter(|c| (200..600).contains(c))
        .ok_or_else(bad)?;
    let (more, rest) = match line.get(3) {
        None => (false, ""),
        Some(b' ') => (false, text.get(4..).unwrap_or("")),
        Some(b'-') => (true, text.get(4..).unwrap_or("")),
        Some(_) => return Err(bad()),
    };
    Ok((code, more, rest.to_owned()))
}

/// `text` cut to at most `max` characters (never inside one), with `…`
/// when something was cut.
pub(super) fn shorten(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text.to_owned(),
        Some((end, _)) => {
            let cut = text[..end].char_indices().last().map_or(0, |(i, _)| i);
            format!("{}…", &text[..cut])
        }
    }
}

fn verb(line: &str) -> &str {
    line.split([' ', ':']).next().unwrap_or(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_lines_parse_or_say_why_not() {
        assert_eq!(
            parse_line(b"250-a b\r\n").unwrap(),
            (250, true, "a b".into())
        );
        assert_eq!(parse_line(b"354\n").unwrap(), (354, false, String::new()));
        assert!(parse_line(b"25x ok\r\n").is_err());
        assert!(parse_line(b"\xff\xfe\r\n").is_err());
        assert!(parse_line(b"250+x\r\n").is_err());
    }

    #[test]
    fn shortened_text_is_cut_at_a_character_with_an_ellipsis() {
        assert_eq!(shorten("abc", 3), "abc");
        assert_eq!(shorten("abcd", 3), "ab…");
        assert_eq!(shorten("ééééé", 3), "éé…");
        assert_eq!(shorten("€€€€", 4), "€€€€");
    }
}
