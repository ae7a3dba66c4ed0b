//! A capture server: a real SMTP server that accepts mail and keeps it, in
//! memory and (when asked) in a Maildir. Optionally TLS (STARTTLS or
//! implicit) and AUTH (PLAIN, LOGIN); per-recipient refusals. It is also
//! what `smtp sink` runs.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::certs::Identity;

/// A client line longer than this is a protocol fault (RFC 5321 allows 512).
const MAX_LINE: usize = 64 * 1024;

/// How the capture server behaves.
#[derive(Clone, Debug)]
pub struct CaptureConfig {
    /// The name in the greeting and EHLO reply.
    pub hostname: String,
    /// A certificate: STARTTLS is offered (or implicit TLS used) with it.
    pub tls: Option<Identity>,
    /// TLS from the first byte instead of STARTTLS.
    pub implicit_tls: bool,
    /// `(user, password)`: AUTH PLAIN and LOGIN are offered, after TLS when
    /// there is a certificate.
    pub auth: Option<(String, String)>,
    /// Refuse MAIL until authenticated.
    pub require_auth: bool,
    /// `(recipient, reply line)`: refuse these recipients with that reply,
    /// e.g. `("nobody@example.net", "550 5.1.1 no such user")`.
    pub reject: Vec<(String, String)>,
    /// Largest message accepted, in bytes (advertised as SIZE).
    pub max_message_size: usize,
    /// Advertise PIPELINING.
    pub pipelining: bool,
    /// Advertise 8BITMIME.
    pub eight_bit_mime: bool,
    /// Advertise SMTPUTF8.
    pub smtputf8: bool,
    /// Answer EHLO with 502 (an old server: the client must fall back to HELO).
    pub no_ehlo: bool,
    /// Advertise CHUNKING and BINARYMIME and take BDAT (RFC 3030); the
    /// chunks are kept as they come, binary or not.
    pub chunking: bool,
    /// Store each message in this Maildir (`tmp/`, then renamed into
    /// `new/`) before answering its end of data: a 250 means it is on disk.
    /// A message that cannot be stored gets a 451 instead.
    pub maildir: Option<PathBuf>,
}

impl Default for CaptureConfig {
    fn default() -> Self {
        Self {
            hostname: "sink.test".to_owned(),
            tls: None,
            implicit_tls: false,
            auth: None,
            require_auth: false,
            reject: Vec::new(),
            max_message_size: 64 * 1024 * 1024,
            pipelining: true,
            eight_bit_mime: true,
            smtputf8: true,
            no_ehlo: false,
            chunking: false,
            maildir: None,
        }
    }
}

/// A message as received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Received {
    /// MAIL FROM's address (empty for `<>`).
    pub mail_from: String,
    /// Accepted recipients.
    pub rcpt_to: Vec<String>,
    /// The message as stored: dot-unstuffed, without the terminator.
    pub data: Vec<u8>,
    /// It arrived over TLS.
    pub tls: bool,
    /// The authenticated user, if any.
    pub auth_user: Option<String>,
}

/// One connection's record.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionLog {
    /// `C: …` / `S: …` lines (AUTH secrets redacted).
    pub transcript: Vec<String>,
    /// Credentials arrived outside TLS.
    pub credentials_in_plaintext: bool,
    /// MAIL commands that arrived outside TLS.
    pub mail_commands_in_plaintext: usize,
}

#[derive(Debug, Default)]
struct Store {
    messages: Vec<Received>,
    sessions: Vec<SessionLog>,
}

/// A running capture server on 127.0.0.1; stopped on drop.
#[derive(Debug)]
pub struct CaptureServer {
    addr: SocketAddr,
    store: Arc<Mutex<Store>>,
    task: JoinHandle<()>,
}

impl Drop for CaptureServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl CaptureServer {
    /// Starts on 127.0.0.1 with an ephemeral port.
    pub async fn start(config: CaptureConfig) -> io::Result<Self> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), config).await
    }

    /// Starts on `addr`.
    pub async fn start_on(addr: SocketAddr, config: CaptureConfig) -> io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let store = Arc::new(Mutex::new(Store::default()));
        let config = Arc::new(config);
        let shared = store.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                // Each reply is its own write: without this, Nagle holds a
                // pipelined reply until the previous one is acknowledged.
                let _ = tcp.set_nodelay(true);
                let (config, store) = (config.clone(), shared.clone());
                tokio::spawn(async move {
                    let mut log = SessionLog::default();
                    let _ = serve(tcp, &config, &store, &mut log).await;
                    if let Ok(mut s) = store.lock() {
                        s.sessions.push(log);
                    }
                });
            }
        });
        Ok(Self { addr, store, task })
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The messages received so far.
    pub fn messages(&self) -> Vec<Received> {
        self.store
            .lock()
            .map(|s| s.messages.clone())
            .unwrap_or_default()
    }

    /// The finished sessions so far.
    pub fn sessions(&self) -> Vec<SessionLog> {
        self.store
            .lock()
            .map(|s| s.sessions.clone())
            .unwrap_or_default()
    }

    /// Waits until `n` messages arrived or `timeout` passed; returns what arrived.
    pub async fn wait_for_messages(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let m = self.messages();
            if m.len() >= n || tokio::time::Instant::now() >= deadline {
                return m;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until `n` sessions have ended or `timeout` passed; returns
    /// their logs. (A session's log is filed when the server is done with
    /// it, which may be just after the client saw the reply to QUIT.)
    pub async fn wait_for_sessions(&self, n: usize, timeout: Duration) -> Vec<SessionLog> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let s = self.sessions();
            if s.len() >= n || tokio::time::Instant::now() >= deadline {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Writes every message into the Maildir `dir` (`tmp/`, `new/`, `cur/`),
    /// one file each in `new/`. Returns their paths.
    pub fn write_maildir(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        write_maildir(dir, &self.messages())
    }
}

/// Writes `messages` into the Maildir `dir`.
pub fn write_maildir(dir: &Path, messages: &[Received]) -> io::Result<Vec<PathBuf>> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    for sub in ["tmp", "new", "cur"] {
        std::fs::create_dir_all(dir.join(sub))?;
    }
    let mut paths = Vec::new();
    for m in messages {
        let name = format!(
            "{}.{}_{}.smtp-sink",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed),
            paths.len()
        );
        let tmp = dir.join("tmp").join(&name);
        std::fs::write(&tmp, &m.data)?;
        let new = dir.join("new").join(&name);
        std::fs::rename(&tmp, &new)?;
        paths.push(new);
    }
    Ok(paths)
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Stream {
    async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Plain(s) => s.read(buf).await,
            Self::Tls(s) => s.read(buf).await,
        }
    }

    async fn write(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            Self::Plain(s) => s.write_all(data).await,
            Self::Tls(s) => {
                s.write_all(data).await?;
                s.flush().await
            }
        }
    }
}

/// Buffered line reading with a bound.
struct Lines {
    buf: Vec<u8>,
}

impl Lines {
    async fn next(&mut self, stream: &mut Stream) -> io::Result<Option<Vec<u8>>> {
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

    /// Reads exactly `n` bytes (a BDAT chunk), keeping them in `into` while
    /// it stays within `limit` bytes and dropping them past it. False when
    /// the client closed the connection first.
    async fn take(
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
    fn clear(&mut self) {
        self.buf.clear();
    }
}

fn address(arg: &str) -> Option<String> {
    let start = arg.find('<')?;
    let end = arg[start..].find('>')? + start;
    Some(arg[start + 1..end].to_owned())
}

async fn reply(stream: &mut Stream, log: &mut SessionLog, text: &str) -> io::Result<()> {
    for line in text.split("\r\n").filter(|l| !l.is_empty()) {
        log.transcript.push(format!("S: {line}"));
    }
    stream.write(text.as_bytes()).await
}

/// Ends a transaction after its data: stores the message and says 250, or
/// says 552 when it went over the size limit.
async fn end_transaction(
    stream: &mut Stream,
    log: &mut SessionLog,
    store: &Mutex<Store>,
    config: &CaptureConfig,
    too_big: bool,
    message: Received,
) -> io::Result<()> {
    if too_big {
        return reply(stream, log, "552 5.3.4 message too big\r\n").await;
    }
    if let Some(dir) = &config.maildir {
        let (dir, one) = (dir.clone(), vec![message.clone()]);
        let stored = tokio::task::spawn_blocking(move || write_maildir(&dir, &one)).await;
        if !matches!(stored, Ok(Ok(_))) {
            return reply(stream, log, "451 4.3.0 cannot store the message\r\n").await;
        }
    }
    if let Ok(mut s) = store.lock() {
        s.messages.push(message);
    }
    reply(stream, log, "250 2.0.0 message accepted\r\n").await
}

async fn serve(
    tcp: TcpStream,
    config: &CaptureConfig,
    store: &Mutex<Store>,
    log: &mut SessionLog,
) -> io::Result<()> {
    let acceptor = config
        .tls
        .as_ref()
        .map(|id| TlsAcceptor::from(id.server_config()));
    let mut stream = match (&acceptor, config.implicit_tls) {
        (Some(a), true) => Stream::Tls(Box::new(a.accept(tcp).await?)),
        _ => Stream::Plain(tcp),
    };
    let mut tls = matches!(stream, Stream::Tls(_));
    let mut lines = Lines { buf: Vec::new() };
    let mut user: Option<String> = None;
    let mut from: Option<String> = None;
    let mut rcpts: Vec<String> = Vec::new();
    // BDAT chunks so far, and whether one overflowed the size limit.
    let mut chunks: Vec<u8> = Vec::new();
    let mut chunks_too_big = false;
    reply(
        &mut stream,
        log,
        &format!("220 {} ESMTP capture server\r\n", config.hostname),
    )
    .await?;
    while let Some(raw) = lines.next(&mut stream).await? {
        let line = String::from_utf8_lossy(&raw).into_owned();
        let verb = line
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_ascii_uppercase();
        let redacted = if verb == "AUTH" {
            "AUTH <redacted>".to_owned()
        } else {
            line.clone()
        };
        log.transcript.push(format!("C: {redacted}"));
        let arg = line.get(verb.len()..).unwrap_or("").trim().to_owned();
        match verb.as_str() {
            "EHLO" => {
                if config.no_ehlo {
                    reply(&mut stream, log, "502 5.5.2 EHLO not implemented\r\n").await?;
                    continue;
                }
                let mut caps = format!("250-{}\r\n250-ENHANCEDSTATUSCODES\r\n", config.hostname);
                for (on, keyword) in [
                    (config.pipelining, "PIPELINING"),
                    (config.eight_bit_mime, "8BITMIME"),
                    (config.smtputf8, "SMTPUTF8"),
                    (config.chunking, "CHUNKING"),
                    (config.chunking, "BINARYMIME"),
                ] {
                    if on {
                        caps.push_str(&format!("250-{keyword}\r\n"));
                    }
                }
                caps.push_str(&format!("250-SIZE {}\r\n", config.max_message_size));
                if acceptor.is_some() && !tls {
                    caps.push_str("250-STARTTLS\r\n");
                }
                if config.auth.is_some() && (tls || config.tls.is_none()) {
                    caps.push_str("250-AUTH PLAIN LOGIN\r\n");
                }
                caps.push_str("250 HELP\r\n");
                reply(&mut stream, log, &caps).await?;
            }
            "HELO" => reply(&mut stream, log, &format!("250 {}\r\n", config.hostname)).await?,
            "STARTTLS" => {
                let Some(a) = acceptor.as_ref().filter(|_| !tls) else {
                    reply(&mut stream, log, "502 5.5.1 STARTTLS not available\r\n").await?;
                    continue;
                };
                reply(&mut stream, log, "220 2.0.0 ready to start TLS\r\n").await?;
                // RFC 3207: whatever the client pipelined after STARTTLS is discarded.
                lines.clear();
                stream = match stream {
                    Stream::Plain(tcp) => Stream::Tls(Box::new(a.accept(tcp).await?)),
                    already => already,
                };
                tls = true;
                user = None;
                from = None;
                rcpts.clear();
            }
            "AUTH" => {
                let Some((want_user, want_pass)) = &config.auth else {
                    reply(&mut stream, log, "502 5.5.1 AUTH not available\r\n").await?;
                    continue;
                };
                if !tls {
                    log.credentials_in_plaintext = true;
                }
                let mut parts = arg.split_whitespace();
                let mech = parts.next().unwrap_or("").to_ascii_uppercase();
                let ir = parts.next().map(str::to_owned);
                let decode = |s: &str| {
                    STANDARD
                        .decode(s.trim())
                        .ok()
                        .map(|b| String::from_utf8_lossy(&b).into_owned())
                };
                let creds = match mech.as_str() {
                    "PLAIN" => {
                        let response = match ir {
                            Some(r) => r,
                            None => {
                                reply(&mut stream, log, "334 \r\n").await?;
                                lines
                                    .next(&mut stream)
                                    .await?
                                    .map(|l| String::from_utf8_lossy(&l).into_owned())
                                    .unwrap_or_default()
                            }
                        };
                        decode(&response).and_then(|d| {
                            let mut f = d.split('\0');
                            let _authzid = f.next()?;
                            Some((f.next()?.to_owned(), f.next()?.to_owned()))
                        })
                    }
                    "LOGIN" => {
                        reply(&mut stream, log, "334 VXNlcm5hbWU6\r\n").await?;
                        let u = lines.next(&mut stream).await?.unwrap_or_default();
                        reply(&mut stream, log, "334 UGFzc3dvcmQ6\r\n").await?;
                        let p = lines.next(&mut stream).await?.unwrap_or_default();
                        decode(&String::from_utf8_lossy(&u))
                            .zip(decode(&String::from_utf8_lossy(&p)))
                    }
                    _ => {
                        reply(&mut stream, log, "504 5.5.4 mechanism not supported\r\n").await?;
                        continue;
                    }
                };
                if creds
                    .as_ref()
                    .is_some_and(|(u, p)| u == want_user && p == want_pass)
                {
                    user = creds.map(|(u, _)| u);
                    reply(&mut stream, log, "235 2.7.0 authenticated\r\n").await?;
                } else {
                    reply(
                        &mut stream,
                        log,
                        "535 5.7.8 authentication credentials invalid\r\n",
                    )
                    .await?;
                }
            }
            "MAIL" => {
                if !tls {
                    log.mail_commands_in_plaintext += 1;
                }
                if config.require_auth && user.is_none() {
                    reply(&mut stream, log, "530 5.7.0 authentication required\r\n").await?;
                } else if from.is_some() {
                    reply(&mut stream, log, "503 5.5.1 nested MAIL\r\n").await?;
                } else {
                    from = address(&arg).or(Some(String::new()));
                    rcpts.clear();
                    reply(&mut stream, log, "250 2.1.0 sender ok\r\n").await?;
                }
            }
            "RCPT" => {
                let to = address(&arg).unwrap_or_default();
                if from.is_none() {
                    reply(&mut stream, log, "503 5.5.1 need MAIL first\r\n").await?;
                } else if let Some((_, r)) = config
                    .reject
                    .iter()
                    .find(|(a, _)| a.eq_ignore_ascii_case(&to))
                {
                    reply(&mut stream, log, &format!("{r}\r\n")).await?;
                } else {
                    rcpts.push(to);
                    reply(&mut stream, log, "250 2.1.5 recipient ok\r\n").await?;
                }
            }
            "DATA" => {
                if from.is_none() || rcpts.is_empty() {
                    reply(&mut stream, log, "554 5.5.1 no valid recipients\r\n").await?;
                    continue;
                }
                reply(&mut stream, log, "354 end data with <CRLF>.<CRLF>\r\n").await?;
                let mut data = Vec::new();
                let mut too_big = false;
                loop {
                    let Some(l) = lines.next(&mut stream).await? else {
                        return Ok(());
                    };
                    if l == b"." {
                        break;
                    }
                    if data.len() + l.len() > config.max_message_size {
                        too_big = true;
                        continue;
                    }
                    data.extend_from_slice(l.strip_prefix(b".").unwrap_or(&l));
                    data.extend_from_slice(b"\r\n");
                }
                log.transcript
                    .push(format!("C: <{} octets of data>", data.len()));
                let received = Received {
                    mail_from: from.take().unwrap_or_default(),
                    rcpt_to: std::mem::take(&mut rcpts),
                    data,
                    tls,
                    auth_user: user.clone(),
                };
                end_transaction(&mut stream, log, store, config, too_big, received).await?;
                from = None;
                rcpts.clear();
            }
            "BDAT" if config.chunking => {
                let mut words = arg.split_whitespace();
                let size = words.next().and_then(|w| w.parse::<u64>().ok());
                let last = words.next().is_some_and(|w| w.eq_ignore_ascii_case("LAST"));
                let Some(size) = size else {
                    // Without a size the data cannot be skipped: end the session.
                    reply(&mut stream, log, "501 5.5.4 BDAT needs a chunk size\r\n").await?;
                    return Ok(());
                };
                let before = chunks.len();
                if !lines
                    .take(&mut stream, size, &mut chunks, config.max_message_size)
                    .await?
                {
                    return Ok(());
                }
                chunks_too_big |= chunks.len() < before + usize::try_from(size).unwrap_or(0);
                log.transcript.push(format!("C: <{size} octets of BDAT>"));
                if from.is_none() || rcpts.is_empty() {
                    reply(&mut stream, log, "554 5.5.1 no valid recipients\r\n").await?;
                    chunks.clear();
                    chunks_too_big = false;
                    continue;
                }
                if !last {
                    reply(
                        &mut stream,
                        log,
                        &format!("250 2.0.0 {size} octets received\r\n"),
                    )
                    .await?;
                    continue;
                }
                let received = Received {
                    mail_from: from.take().unwrap_or_default(),
                    rcpt_to: std::mem::take(&mut rcpts),
                    data: std::mem::take(&mut chunks),
                    tls,
                    auth_user: user.clone(),
                };
                end_transaction(&mut stream, log, store, config, chunks_too_big, received).await?;
                from = None;
                rcpts.clear();
                chunks.clear();
                chunks_too_big = false;
            }
            "RSET" => {
                from = None;
                rcpts.clear();
                chunks.clear();
                chunks_too_big = false;
                reply(&mut stream, log, "250 2.0.0 reset\r\n").await?;
            }
            "NOOP" => reply(&mut stream, log, "250 2.0.0 ok\r\n").await?,
            "QUIT" => {
                reply(&mut stream, log, "221 2.0.0 bye\r\n").await?;
                return Ok(());
            }
            _ => reply(&mut stream, log, "502 5.5.2 command not recognised\r\n").await?,
        }
    }
    Ok(())
}
