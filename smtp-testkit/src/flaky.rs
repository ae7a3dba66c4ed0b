//! A plaintext SMTP server on 127.0.0.1 with the faults a delivery queue
//! must ride out: greylisting, a cap of messages per connection (`421`),
//! a stall mid-run, refused authentication, and a provider's throttling
//! (sessions at once, messages per second).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How a [`FlakyServer`] misbehaves. The default is a well-behaved server.
#[derive(Clone, Debug, Default)]
pub struct FlakyConfig {
    /// Greylisting: each recipient's first RCPT gets `451 4.7.1`, and so
    /// does every RCPT until this long after the first.
    pub greylist: Option<Duration>,
    /// After this many messages on a connection, the next MAIL gets `421`
    /// and the connection is closed.
    pub max_per_connection: Option<usize>,
    /// After this many messages in all, stop answering (hold every
    /// connection open in silence).
    pub stall_after: Option<usize>,
    /// Offer AUTH PLAIN and refuse every attempt with `535`.
    pub refuse_auth: bool,
    /// Wait this long after each end of data before keeping the message
    /// and answering `250` (a slow server: a client killed meanwhile
    /// leaves a message delivered whose reply it never read).
    pub data_delay: Option<Duration>,
    /// Greet with this reply instead of `220` (e.g. `554 5.7.1 go away`),
    /// then close the connection: a host that refuses every session.
    pub refuse_greeting: Option<String>,
    /// Hold each end-of-data reply until this many connections have been
    /// accepted (in all), or for the given time at most (then answer
    /// anyway): whether the client opened another session while this one
    /// waited is seen in [`FlakyServer::open_at_data_ends`], and a client
    /// that opens its sessions one after another is slowed, not stuck.
    pub hold_data_until_connections: Option<(usize, Duration)>,
    /// Sessions at once: a connection beyond this many open is greeted
    /// `421 4.7.0 Too many connections` and closed.
    pub max_sessions: Option<usize>,
    /// At most this many messages (MAIL commands accepted) in any window
    /// of the given length, over all sessions: a MAIL beyond gets `451
    /// 4.7.0 rate limited` (a provider's "slow down").
    pub rate: Option<(usize, Duration)>,
}

/// A message as received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlakyMessage {
    /// MAIL FROM's address.
    pub mail_from: String,
    /// Accepted recipients.
    pub rcpt_to: Vec<String>,
    /// The data, without the terminator (not dot-unstuffed).
    pub data: Vec<u8>,
}

#[derive(Debug, Default)]
struct State {
    first_seen: HashMap<String, Instant>,
    messages: Vec<FlakyMessage>,
    /// Ends of data received, counted as each arrives (before `data_delay`).
    data_ends: usize,
    connections: usize,
    auth_attempts: usize,
    /// Connections open when each end-of-data reply was given, in order.
    open_at_data_ends: Vec<usize>,
    /// When each MAIL was accepted, for [`FlakyConfig::rate`].
    mails: std::collections::VecDeque<Instant>,
    /// For each throttling reply (421 at the greeting, 451 to MAIL), how
    /// many messages had been accepted before it.
    throttled_at: Vec<usize>,
    /// The most messages accepted on one connection.
    max_per_session: usize,
}

/// A running [`FlakyConfig`] server; stopped on drop.
#[derive(Debug)]
pub struct FlakyServer {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    /// Connections open now, and accepted in all.
    open: Arc<watch::Sender<Conns>>,
    task: JoinHandle<()>,
}

impl Drop for FlakyServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FlakyServer {
    /// Starts on an ephemeral port of 127.0.0.1.
    pub async fn start(config: FlakyConfig) -> std::io::Result<Self> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), config).await
    }

    /// Starts on `addr` (a loopback address; port 0 for an ephemeral
    /// one): several servers on one port and different addresses stand
    /// for the MX hosts of one domain.
    pub async fn start_on(addr: SocketAddr, config: FlakyConfig) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State::default()));
        let open = Arc::new(watch::Sender::new(Conns::default()));
        let (shared, shared_open) = (state.clone(), open.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (config, state) = (config.clone(), shared.clone());
                let open = Open::new(shared_open.clone());
                tokio::spawn(async move {
                    let _ = serve(stream, &config, &state, &open).await;
                });
            }
        });
        Ok(Self {
            addr,
            state,
            open,
            task,
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every message accepted so far, in order.
    pub fn messages(&self) -> Vec<FlakyMessage> {
        lock(&self.state).messages.clone()
    }

    /// Ends of data received so far, counted as each arrives, before
    /// [`FlakyConfig::data_delay`] and before the message is kept: with a
    /// delay, how many messages the client has sent whole that wait for
    /// their reply.
    pub fn data_ends(&self) -> usize {
        lock(&self.state).data_ends
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        lock(&self.state).connections
    }

    /// AUTH attempts so far.
    pub fn auth_attempts(&self) -> usize {
        lock(&self.state).auth_attempts
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.borrow().open
    }

    /// For each end-of-data reply given, in order, how many connections
    /// were open as it went out (after
    /// [`FlakyConfig::hold_data_until_connections`]): whether the client's other
    /// sessions were under way while this one delivered.
    pub fn open_at_data_ends(&self) -> Vec<usize> {
        lock(&self.state).open_at_data_ends.clone()
    }

    /// The most connections open at once so far.
    pub fn max_open(&self) -> usize {
        self.open.borrow().max_open
    }

    /// The most messages accepted on one connection so far.
    pub fn max_per_session(&self) -> usize {
        lock(&self.state).max_per_session
    }

    /// For each throttling reply given ([`FlakyConfig::max_sessions`],
    /// [`FlakyConfig::rate`]), in order, how many messages had been
    /// accepted before it: where in the run the client was told to slow
    /// down, independent of the machine's speed.
    pub fn throttled_at(&self) -> Vec<usize> {
        lock(&self.state).throttled_at.clone()
    }

    /// How many times each recipient was delivered to.
    pub fn deliveries(&self) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for m in self.messages() {
            for r in m.rcpt_to {
                *counts.entry(r).or_insert(0) += 1;
            }
        }
        counts
    }
}

/// Connections open now, and accepted in all.
#[derive(Clone, Copy, Debug, Default)]
struct Conns {
    open: usize,
    accepted: usize,
    max_open: usize,
}

/// One connection counted open, from its accept until dropped.
struct Open(Arc<watch::Sender<Conns>>);

impl Open {
    fn new(conns: Arc<watch::Sender<Conns>>) -> Self {
        conns.send_modify(|c| {
            c.open += 1;
            c.accepted += 1;
            c.max_open = c.max_open.max(c.open);
        });
        Self(conns)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.send_modify(|c| c.open = c.open.saturating_sub(1));
    }
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn address(arg: &str) -> String {
    let start = arg.find('<').map_or(0, |i| i + 1);
    let end = arg[start..].find('>').map_or(arg.len(), |i| start + i);
    arg[start..end].to_owned()
}

async fn serve(
    stream: TcpStream,
    config: &FlakyConfig,
    state: &Mutex<State>,
    open: &Open,
) -> std::io::Result<()> {
    lock(state).connections += 1;
    // Replies go out at once (no Nagle wait behind the client's delayed ACK).
    let _ = stream.set_nodelay(true);
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read);
    if let Some(reply) = &config.refuse_greeting {
        write.write_all(format!("{reply}\r\n").as_bytes()).await?;
        return Ok(());
    }
    if config
        .max_sessions
        .is_some_and(|max| open.0.borrow().open > max)
    {
        {
            let mut s = lock(state);
            let n = s.messages.len();
            s.throttled_at.push(n);
        }
        write
            .write_all(b"421 4.7.0 Too many connections, try again later\r\n")
            .await?;
        return Ok(());
    }
    write.write_all(b"220 flaky.test ESMTP\r\n").await?;
    let mut on_this = 0usize;
    let mut from = String::new();
    let mut to: Vec<String> = Vec::new();
    // A transaction is open (MAIL accepted).
    let mut in_mail = false;
    let mut line = String::new();
    loop {
        line.clear();
        if lines.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        if let Some(n) = config.stall_after
            && lock(state).messages.len() >= n
        {
            // Silence: the client times out or is stopped.
            tokio::time::sleep(Duration::from_secs(3600)).await;
            return Ok(());
        }
        let upper = line.trim_end().to_ascii_uppercase();
        let reply: String = if upper.starts_with("EHLO") {
            let auth = if config.refuse_auth {
                "250-AUTH PLAIN\r\n"
            } else {
                ""
            };
            format!("250-flaky.test\r\n250-PIPELINING\r\n{auth}250 8BITMIME\r\n")
        } else if upper.starts_with("HELO") {
            "250 flaky.test\r\n".into()
        } else if upper.starts_with("AUTH") {
            lock(state).auth_attempts += 1;
            "535 5.7.8 authentication credentials invalid\r\n".into()
        } else if upper.starts_with("MAIL") {
            if config.max_per_connection.is_some_and(|n| on_this >= n) {
                write
                    .write_all(b"421 4.7.0 too many messages, closing\r\n")
                    .await?;
                return Ok(());
            }
            let limited = config.rate.is_some_and(|(max, window)| {
                let mut s = lock(state);
                let now = Instant::now();
                while s
                    .mails
                    .front()
                    .is_some_and(|t| now.duration_since(*t) >= window)
                {
                    s.mails.pop_front();
                }
                if s.mails.len() >= max {
                    let n = s.messages.len();
                    s.throttled_at.push(n);
                    true
                } else {
                    s.mails.push_back(now);
                    false
                }
            });
            to.clear();
            in_mail = !limited;
            if limited {
                "451 4.7.0 rate limited, slow down\r\n".into()
            } else {
                from = address(line.get(10..).unwrap_or(""));
                to.clear();
                "250 2.1.0 ok\r\n".into()
            }
        } else if upper.starts_with("RCPT") && !in_mail {
            "503 5.5.1 MAIL first\r\n".into()
        } else if upper.starts_with("RCPT") {
            let rcpt = address(line.get(8..).unwrap_or(""));
            let greylisted = config.greylist.is_some_and(|wait| {
                let mut s = lock(state);
                let first = *s
                    .first_seen
                    .entry(rcpt.clone())
                    .or_insert_with(Instant::now);
                first.elapsed() < wait
            });
            if greylisted {
                "451 4.7.1 greylisted, try again later\r\n".into()
            } else {
                to.push(rcpt);
                "250 2.1.5 ok\r\n".into()
            }
        } else if upper.starts_with("DATA") {
            if to.is_empty() {
                "554 5.5.1 no valid recipients\r\n".into()
            } else {
                write.write_all(b"354 go ahead\r\n").await?;
                let mut data = Vec::new();
                loop {
                    let mut l = Vec::new();
                    if lines.read_until(b'\n', &mut l).await? == 0 {
                        return Ok(());
                    }
                    if l == b".\r\n" {
                        break;
                    }
                    data.extend_from_slice(&l);
                }
                on_this += 1;
                in_mail = false;
                {
                    let mut s = lock(state);
                    s.data_ends += 1;
                    s.max_per_session = s.max_per_session.max(on_this);
                }
                if let Some(delay) = config.data_delay {
                    tokio::time::sleep(delay).await;
                }
                if let Some((want, at_most)) = config.hold_data_until_connections {
                    let mut conns = open.0.subscribe();
                    let enough = conns.wait_for(|c| c.accepted >= want);
                    let _ = tokio::time::timeout(at_most, enough).await;
                }
                let open_now = open.0.borrow().open;
                lock(state).open_at_data_ends.push(open_now);
                lock(state).messages.push(FlakyMessage {
                    mail_from: from.clone(),
                    rcpt_to: std::mem::take(&mut to),
                    data,
                });
                "250 2.0.0 queued\r\n".into()
            }
        } else if upper.starts_with("RSET") {
            to.clear();
            in_mail = false;
            "250 2.0.0 ok\r\n".into()
        } else if upper.starts_with("NOOP") {
            "250 2.0.0 ok\r\n".into()
        } else if upper.starts_with("QUIT") {
            write.write_all(b"221 2.0.0 bye\r\n").await?;
            return Ok(());
        } else {
            "500 5.5.2 what?\r\n".into()
        };
        write.write_all(reply.as_bytes()).await?;
    }
}
