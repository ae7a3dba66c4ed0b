//! A hostile SMTP server: it answers whatever a client sends, like a real
//! server, and misbehaves at one chosen phase; it records the raw wire (in
//! which order, which side of TLS), so a client's behaviour can be judged
//! by what it sent rather than by what it printed.
//!
//! ```text
//! client ──bytes──> HostileServer ── per connection ──> SessionRecord
//!                   (HostileConfig: TLS, AUTH, SIZE,        wire: [Chunk{from: Side, tls, bytes}]
//!                    PIPELINING with held replies,          commands: [Command{line, tls}]
//!                    injection after STARTTLS's 220,        messages: [DataRecord{raw, …}]
//!                    one Fault at one Phase)                flags: injection acted on, …
//! ```
//!
//! Unlike [`crate::script`], nothing is expected of the client: any client
//! (one that pipelines, authenticates, quits early) gets a sensible
//! answer, so the same server judges clients that differ in their habits.
//! Every buffer is bounded; the server never panics on input.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

use crate::certs::Identity;

mod session;

/// At most this many bytes of the wire are recorded per connection.
pub const MAX_RECORDED: usize = 4 * 1024 * 1024;
/// At most this many command lines are recorded per connection; one more
/// floods the server (the session ends).
pub const MAX_COMMANDS: usize = 1000;
/// At most this many bytes of command lines per connection.
pub const MAX_COMMAND_BYTES: usize = 256 * 1024;
/// At most this many messages per connection.
pub const MAX_MESSAGES: usize = 16;
/// At most this many connections per server (a case); more are closed at
/// once and flood the server.
pub const MAX_CONNECTIONS: usize = 16;
/// At most this many bytes recorded in all, over every connection (wire,
/// commands and data together); beyond it the client floods the server.
pub const MAX_CASE_BYTES: usize = 24 * 1024 * 1024;

/// Where in the session a fault strikes: instead of the reply to this.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// The greeting.
    Greeting,
    /// The first EHLO (or HELO).
    Ehlo,
    /// STARTTLS.
    StartTls,
    /// AUTH (the first reply of the exchange).
    Auth,
    /// MAIL FROM.
    Mail,
    /// The first RCPT TO.
    Rcpt,
    /// DATA (the `354`).
    Data,
    /// The end of the data (the dot).
    EndOfData,
}

/// What the server does instead of its reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Answers with this line (CRLF added), then closes the connection
    /// (e.g. `421 4.3.2 shutting down`).
    ReplyAndClose(String),
    /// Closes the connection without a word.
    Close,
    /// Never answers; keeps reading (and recording) until the client leaves.
    Silence,
    /// The usual reply, one byte at a time with this pause between bytes.
    Drip(Duration),
    /// The reply is one line of this many octets (CRLF after it), then the
    /// session goes on as usual.
    LongLine(usize),
    /// A multi-line reply that never ends: `250-` lines until the client
    /// leaves.
    EndlessMultiline,
}

/// How the server behaves. [`Default`]: a well-behaved server with no
/// TLS, no AUTH, PIPELINING and SIZE 10 MB.
#[derive(Clone, Debug)]
pub struct HostileConfig {
    /// The name in the greeting and EHLO reply.
    pub hostname: String,
    /// The certificate for STARTTLS or implicit TLS.
    pub tls: Option<Identity>,
    /// TLS from the first byte.
    pub implicit_tls: bool,
    /// Offer STARTTLS (when there is a certificate).
    pub offer_starttls: bool,
    /// The reply to STARTTLS; a `220` starts the handshake, anything else
    /// refuses it (e.g. `454 4.7.0 TLS not available`).
    pub starttls_reply: String,
    /// Bytes sent in the same write as STARTTLS's `220`, before the
    /// handshake (response injection, CVE-2011-0411's class).
    pub inject_after_starttls: Vec<u8>,
    /// `(user, password)`: AUTH PLAIN and LOGIN offered, these accepted.
    pub auth: Option<(String, String)>,
    /// Offer AUTH outside TLS too (a stripped STARTTLS).
    pub auth_in_plaintext: bool,
    /// Advertise PIPELINING.
    pub pipelining: bool,
    /// Hold replies to MAIL, RCPT and RSET until DATA arrives or the client
    /// has been quiet for a second (RFC 2920 lets a server answer a group
    /// at once); notes a message body sent before the `354`.
    pub hold_replies: bool,
    /// Advertised SIZE; MAIL with a larger `SIZE=` and larger data are
    /// refused with 552.
    pub size: usize,
    /// Answer EHLO with this line instead of the capabilities (e.g.
    /// `502 5.5.2 EHLO not implemented`).
    pub ehlo_reply: Option<String>,
    /// `(recipient, reply line)`: refuse these recipients with that reply.
    pub reject_rcpt: Vec<(String, String)>,
    /// The one fault, at its phase.
    pub fault: Option<(Phase, Fault)>,
    /// The domains it takes mail for; RCPT to any other is refused with
    /// `554 5.7.1 relay access denied`. Empty: every domain (an open relay).
    pub local_domains: Vec<String>,
    /// The flaws a server checker must find (all off by default).
    pub flaws: Flaws,
}

/// Flaws of a badly written or badly configured server, for
/// `smtp conformance server` to find. [`Default`]: none.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Flaws {
    /// A line ends at a bare LF too, so `\n.\n`, `\n.\r\n` and `\r\n.\n`
    /// end the data: SMTP smuggling's lenient receiver (CVE-2023-51764).
    pub bare_lf_ends_data: bool,
    /// What the client pipelined after STARTTLS is kept and answered
    /// inside TLS (CVE-2011-0411).
    pub keep_input_after_starttls: bool,
    /// VRFY and EXPN answered `250` with the address.
    pub answer_vrfy: bool,
    /// Advertises PIPELINING but discards what follows each command in
    /// the same read.
    pub drop_pipelined: bool,
}

impl Default for HostileConfig {
    fn default() -> Self {
        Self {
            hostname: "hostile.test".to_owned(),
            tls: None,
            implicit_tls: false,
            offer_starttls: true,
            starttls_reply: "220 2.0.0 ready to start TLS".to_owned(),
            inject_after_starttls: Vec::new(),
            auth: None,
            auth_in_plaintext: false,
            pipelining: true,
            hold_replies: false,
            size: 10_000_000,
            ehlo_reply: None,
            reject_rcpt: Vec::new(),
            fault: None,
            local_domains: Vec::new(),
            flaws: Flaws::default(),
        }
    }
}

/// Who sent a chunk of the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The client.
    Client,
    /// The server.
    Server,
}

/// Bytes as they crossed, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
    /// Who sent them.
    pub from: Side,
    /// Inside TLS (the plaintext within it is what is kept).
    pub tls: bool,
    /// The bytes.
    pub bytes: Vec<u8>,
}

/// A client command line as received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Command {
    /// The line without CRLF (AUTH's arguments and responses redacted).
    pub line: String,
    /// It arrived inside TLS.
    pub tls: bool,
}

impl Command {
    /// The verb, upper-cased.
    pub fn verb(&self) -> String {
        verb(&self.line)
    }
}

/// A message's data as it crossed the wire.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DataRecord {
    /// The octets after the `354` up to (not including) the first
    /// `CRLF.CRLF`, not dot-unstuffed: what the client put on the wire.
    pub raw: Vec<u8>,
    /// The terminator arrived (else the client left, or the data went
    /// over [`MAX_RECORDED`]).
    pub terminated: bool,
    /// Inside TLS.
    pub tls: bool,
    /// The server answered its end with 250.
    pub accepted: bool,
    /// The recipients the server had accepted for it.
    pub rcpts: Vec<String>,
}

/// One connection's record, filled in as the session goes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionRecord {
    /// The raw wire, both ways, in order (at most [`MAX_RECORDED`] bytes).
    pub wire: Vec<Chunk>,
    /// The client's command lines (not the data).
    pub commands: Vec<Command>,
    /// Each DATA's octets.
    pub messages: Vec<DataRecord>,
    /// The TLS handshake completed.
    pub tls: bool,
    /// The TLS handshake failed, and why.
    pub handshake_failed: Option<String>,
    /// After STARTTLS with injected bytes, the client sent something
    /// after its new EHLO before the server had answered it: it took the
    /// injected bytes as the answer.
    pub acted_on_injection: bool,
    /// With held replies: message octets arrived before the `354`.
    pub body_before_354: bool,
    /// Part of the wire was not recorded (over [`MAX_RECORDED`]).
    pub truncated: bool,
    /// The client went over a bound on what is recorded (commands,
    /// messages, bytes): what it exceeded. The session was ended there.
    pub flooded: Option<String>,
}

impl SessionRecord {
    /// All the octets the client sent outside TLS.
    pub fn client_plaintext(&self) -> Vec<u8> {
        self.wire
            .iter()
            .filter(|c| c.from == Side::Client && !c.tls)
            .flat_map(|c| c.bytes.iter().copied())
            .collect()
    }

    /// The client sent a command with this verb (`"MAIL"`), inside TLS or
    /// not as `tls` says (`None`: either).
    pub fn sent(&self, verb: &str, tls: Option<bool>) -> bool {
        self.commands
            .iter()
            .any(|c| c.verb() == verb && tls.is_none_or(|t| t == c.tls))
    }
}

/// A command line's verb, upper-cased.
fn verb(line: &str) -> String {
    line.split_whitespace()
        .next()
        .unwrap_or("")
        .to_ascii_uppercase()
}

type Records = Arc<Mutex<Vec<Arc<Mutex<SessionRecord>>>>>;

/// What every connection of one server shares: the bytes recorded so far
/// and the first flood.
#[derive(Debug, Default)]
pub(crate) struct Budget {
    bytes: std::sync::atomic::AtomicUsize,
    flooded: Mutex<Option<String>>,
}

impl Budget {
    /// Takes `n` bytes from the case's budget; false when it is spent.
    fn take(&self, n: usize) -> bool {
        use std::sync::atomic::Ordering;
        let before = self.bytes.fetch_add(n, Ordering::Relaxed);
        before + n <= MAX_CASE_BYTES
    }

    /// Notes the first flood.
    fn flood(&self, why: String) {
        if let Ok(mut f) = self.flooded.lock() {
            f.get_or_insert(why);
        }
    }
}

/// A running hostile server on 127.0.0.1; stopped (its connections too)
/// on drop.
#[derive(Debug)]
pub struct HostileServer {
    addr: SocketAddr,
    records: Records,
    budget: Arc<Budget>,
    task: JoinHandle<()>,
}

impl Drop for HostileServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl HostileServer {
    /// Starts on 127.0.0.1 with an ephemeral port.
    pub async fn start(config: HostileConfig) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let records: Records = Arc::default();
        let shared = records.clone();
        let budget = Arc::new(Budget::default());
        let shared_budget = budget.clone();
        let config = Arc::new(config);
        let task = tokio::spawn(async move {
            // Dropping the set (the task aborted) aborts every connection.
            let mut sessions = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((tcp, _)) = accepted else { break };
                        let _ = tcp.set_nodelay(true);
                        let record = Arc::new(Mutex::new(SessionRecord::default()));
                        let Ok(mut all) = shared.lock() else { break };
                        if all.len() >= MAX_CONNECTIONS {
                            // Closed at once, not recorded.
                            shared_budget.flood(format!(
                                "opened more than {MAX_CONNECTIONS} connections"
                            ));
                            continue;
                        }
                        all.push(record.clone());
                        drop(all);
                        sessions.spawn(session::serve(
                            tcp,
                            config.clone(),
                            record,
                            shared_budget.clone(),
                        ));
                    }
                    Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
                }
            }
        });
        Ok(Self {
            addr,
            records,
            budget,
            task,
        })
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// What the client exceeded first, if it flooded the server: too many
    /// connections, commands, messages or bytes (see [`MAX_COMMANDS`] and
    /// the other bounds). What came after it was not recorded.
    pub fn flooded(&self) -> Option<String> {
        self.budget.flooded.lock().ok().and_then(|f| f.clone())
    }

    /// Every connection's record so far, in the order they came.
    pub fn sessions(&self) -> Vec<SessionRecord> {
        let Ok(all) = self.records.lock() else {
            return Vec::new();
        };
        all.iter()
            .filter_map(|r| r.lock().ok().map(|r| r.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests;
