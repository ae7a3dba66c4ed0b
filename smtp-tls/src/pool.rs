//! One kept connection per destination, for programs that send many
//! messages over time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use smtp_core::reply::ReplyCode;
use smtp_core::{MessageOutcome, Phase, RecipientStatus, TlsPolicy};

use crate::error::Error;
use crate::session::{Outgoing, Session};
use crate::settings::Server;

/// Keeps one open [`Session`] per destination and reuses it.
///
/// Before a reuse the pool takes in, without waiting, anything the server
/// said while the connection sat idle (a `421`, its close); it sends no
/// NOOP. If a reused connection still turns out dead before a message's
/// data went out (the server closed it at that moment), the message is
/// tried once more on a new connection: nothing can have been delivered.
/// (A connection that died after some data went out is not retried: the
/// server may have taken the message and only its reply been lost.)
/// A connection idle longer than [`max_idle`](Self::with_max_idle) is
/// closed with QUIT instead of reused, before the server's own timeout.
///
/// Sends to one destination take turns on its connection; sends to
/// different destinations run at the same time. Clones share the pool.
///
/// ```no_run
/// use smtp_core::address::{Mailbox, ReversePath};
/// use smtp_core::delivery::MemoryBody;
/// use smtp_core::Envelope;
/// use smtp_tls::{Outgoing, Pool, Server};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let pool = Pool::new();
/// let server = Server::new("smtp.example.com", 587);
/// for n in 0..3 {
///     let message = Outgoing {
///         envelope: Envelope::new(
///             ReversePath::parse("alice@example.com")?,
///             vec![Mailbox::parse("bob@example.net")?],
///         ),
///         body: Box::new(MemoryBody::new(format!("Subject: {n}\r\n\r\nHello.\r\n"))),
///     };
///     let outcome = pool.send(&server, message).await?;
///     println!("{:?}", outcome.recipients);
/// }
/// pool.close().await;
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Pool {
    slots: Arc<Mutex<HashMap<Destination, Slot>>>,
    max_idle: Duration,
}

type Slot = Arc<tokio::sync::Mutex<Option<Session>>>;

/// What makes two servers' settings share a connection.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Destination {
    host: String,
    port: u16,
    implicit_tls: bool,
    policy: TlsPolicy,
    client_id: String,
    username: Option<String>,
}

impl Destination {
    fn of(server: &Server) -> Self {
        Self {
            host: server.host.to_ascii_lowercase(),
            port: server.port,
            implicit_tls: server.implicit_tls,
            policy: server.policy,
            client_id: server.client_id.to_string(),
            username: server.credentials.as_ref().map(|c| c.username().to_owned()),
        }
    }
}

impl Default for Pool {
    fn default() -> Self {
        Self::new()
    }
}

impl Pool {
    /// An empty pool; connections idle for more than 60 s are not reused.
    pub fn new() -> Self {
        Self {
            slots: Arc::default(),
            max_idle: Duration::from_secs(60),
        }
    }

    /// Sets how long a connection may sit idle and still be reused. Keep it
    /// below the server's idle timeout (RFC 5321 asks servers for at least
    /// 5 minutes).
    #[must_use]
    pub fn with_max_idle(mut self, max_idle: Duration) -> Self {
        self.max_idle = max_idle;
        self
    }

    /// Sends one message through `server`, on its kept connection when
    /// there is a usable one. `Err` means the message was not tried: no
    /// session could be set up, or it has no recipients.
    pub async fn send(&self, server: &Server, message: Outgoing) -> Result<MessageOutcome, Error> {
        let mut messages = [message];
        let mut results = self.send_all(server, &mut messages).await;
        results.pop().unwrap_or(Err(Error::NoOutcome))
    }

    /// Sends `messages` through `server`, pipelined on one connection, and
    /// returns their outcomes in order. A message that could not be tried
    /// has its own `Err`: every message has the same one when no session
    /// could be set up.
    pub async fn send_all(
        &self,
        server: &Server,
        messages: &mut [Outgoing],
    ) -> Vec<Result<MessageOutcome, Error>> {
        let slot = self.slot(server);
        let mut slot = slot.lock().await;
        let reused = match slot.take() {
            Some(session) => self.reusable(session).await,
            None => None,
        };
        let was_reused = reused.is_some();
        let mut session = match reused {
            Some(session) => session,
            None => match Session::open(server).await {
                Ok(session) => session,
                Err(e) => return not_tried(messages, &e),
            },
        };
        let mut results = session.send_all(messages, &mut |_| {}).await;
        // A kept connection found dead before any of this batch's data went
        // out (the server closed it at that moment) delivered nothing:
        // the whole batch goes once more on a new connection.
        let nothing_went = results
            .iter()
            .all(|r| r.as_ref().map_or(true, lost_before_data));
        if was_reused && !session.is_open() && nothing_went {
            session = match Session::open(server).await {
                Ok(session) => session,
                Err(e) => return not_tried(messages, &e),
            };
            results = session.send_all(messages, &mut |_| {}).await;
        }
        if session.is_open() {
            *slot = Some(session);
        }
        results
    }

    /// Closes every kept connection with QUIT.
    pub async fn close(&self) {
        let slots: Vec<Slot> = self
            .slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain()
            .map(|(_, slot)| slot)
            .collect();
        for slot in slots {
            if let Some(session) = slot.lock().await.take() {
                session.close().await;
            }
        }
    }

    /// How many connections are kept open (idle or in use).
    pub fn open_connections(&self) -> usize {
        let slots: Vec<Slot> = self
            .slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        slots
            .iter()
            .filter(|s| s.try_lock().map_or(true, |c| c.is_some()))
            .count()
    }

    fn slot(&self, server: &Server) -> Slot {
        self.slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(Destination::of(server))
            .or_default()
            .clone()
    }

    /// The session if it may be used again: not idle too long, and
    /// nothing the server said while idle ended it.
    async fn reusable(&self, mut session: Session) -> Option<Session> {
        if session.idle_for() > self.max_idle {
            session.close().await;
            return None;
        }
        session.refresh().await.then_some(session)
    }
}

/// Every message's result when no session could be set up for them.
fn not_tried(messages: &[Outgoing], error: &Error) -> Vec<Result<MessageOutcome, Error>> {
    messages.iter().map(|_| Err(error.clone())).collect()
}

/// True when the connection went away before this message's data was sent
/// (closed, or `421` from a server shutting down): no recipient can have
/// been delivered, so another connection may try it without duplicates.
fn lost_before_data(outcome: &MessageOutcome) -> bool {
    outcome.recipients.iter().all(|r| {
        let before_data = matches!(r.phase, Phase::Mail | Phase::Rcpt | Phase::Data);
        let lost = match &r.error {
            Some(smtp_core::Error::ConnectionClosed { .. }) => true,
            Some(smtp_core::Error::Rejected { reply, .. }) => {
                reply.code() == ReplyCode::SERVICE_NOT_AVAILABLE
            }
            _ => false,
        };
        r.status == RecipientStatus::Deferred && before_data && lost
    })
}
