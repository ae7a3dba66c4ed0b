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

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::certs::Identity;

mod session;
mod wire;

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
    /// Only `CRLF.CRLF` ends the data, and a message holding a bare CR or
    /// LF is refused (`550 5.5.2`, after the real end), as Postfix's
    /// `smtpd_forbid_bare_newline = reject` does: no SMTP smuggling. Off
    /// by default, where a bare LF ends a line (the lenient reading many
    /// tests feed on purpose); `smtp sink` turns it on.
    pub strict_data: bool,
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
            strict_data: false,
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
    /// When the end of its data arrived.
    pub received_at: std::time::SystemTime,
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
                    let log = session::serve(tcp, &config, &store).await;
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
