//! Enqueueing the delivery status notifications the store says are owed
//! ([`Store::owed_notifications`]): each written by [`dsn::compose`],
//! the original's header section (or, for `RET=FULL`, the original)
//! read from the spool, and handed to [`Store::enqueue_notification`],
//! which enqueues it exactly once. The [`Runner`](crate::Runner) does
//! this at the start of every round; a program with its own runner calls
//! [`enqueue_owed`] itself.

use std::io;
use std::time::SystemTime;

use async_trait::async_trait;
use smtp_core::delivery::{BodySource, MemoryBody};

use crate::dsn::{self, FULL_LIMIT, HEADERS_LIMIT, Report, Reporter, Returned};
use crate::error::{Error, Result};
use crate::store::{Body, BodyKind, MessageId, MessageInfo, MessageOptions, NewMessage, Store};

/// Owed notifications handled per call, oldest first.
const BATCH: u32 = 100;

/// A notification enqueued.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notified {
    /// The message it reports on.
    pub message: MessageId,
    /// The notification's own message id in the queue.
    pub notification: MessageId,
    /// Its recipient: the message's sender.
    pub to: String,
    /// The recipients it reports failed or expired.
    pub recipients: Vec<String>,
}

/// Enqueues the notifications owed (up to 100, oldest first), each once
/// however many workers do this at the same time. A message whose
/// notification cannot be written (its body unreadable, its sender not an
/// address) is logged and left owed; a storage failure is returned.
///
/// Each notification keeps its original's route
/// ([`MessageOptions::route`]): it goes the way the original was sent.
/// An original without one gives its notification none either;
/// [`enqueue_owed_via`] gives it a route.
pub async fn enqueue_owed(
    store: &dyn Store,
    reporter: &Reporter,
    now: SystemTime,
) -> Result<Vec<Notified>> {
    enqueue_owed_via(store, reporter, None, now).await
}

/// [`enqueue_owed`], the notification of an original without a route
/// getting `route` (the [`Runner`](crate::Runner)'s own).
pub async fn enqueue_owed_via(
    store: &dyn Store,
    reporter: &Reporter,
    route: Option<&str>,
    now: SystemTime,
) -> Result<Vec<Notified>> {
    let mut done = Vec::new();
    for info in store.owed_notifications(BATCH).await? {
        match enqueue_one(store, reporter, &info, route, now).await {
            Ok(Some(n)) => done.push(n),
            Ok(None) | Err(Error::NotFound(_)) => {}
            Err(e @ (Error::Corrupt { .. } | Error::Misuse(_))) => {
                tracing::warn!(message_id = %info.id, error = %e,
                    "the delivery status notification was not written; it stays owed");
            }
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

async fn enqueue_one(
    store: &dyn Store,
    reporter: &Reporter,
    info: &MessageInfo,
    route: Option<&str>,
    now: SystemTime,
) -> Result<Option<Notified>> {
    let o = &info.options;
    let full = o.dsn_ret_full == Some(true)
        && !o.require_tls
        && o.body != BodyKind::Binary
        && info.body_size <= FULL_LIMIT;
    if full {
        let returned = Returned::Message {
            utf8: o.smtputf8,
            eight_bit: o.body != BodyKind::SevenBit,
        };
        match try_enqueue(store, reporter, info, route, returned, None, now).await {
            Ok(done) => return Ok(done),
            // Its headers, at least, may still be read.
            Err(e) => tracing::warn!(message_id = %info.id, error = %e,
                "the original could not be returned whole; returning its header section"),
        }
    }
    let (returned, headers) = match read_headers(store, &info.id).await {
        Some(h) => (
            Returned::Headers {
                utf8: !h.is_ascii(),
            },
            Some(h),
        ),
        None => (Returned::Nothing, None),
    };
    try_enqueue(store, reporter, info, route, returned, headers, now).await
}

async fn try_enqueue(
    store: &dyn Store,
    reporter: &Reporter,
    info: &MessageInfo,
    route: Option<&str>,
    returned: Returned,
    headers: Option<Vec<u8>>,
    now: SystemTime,
) -> Result<Option<Notified>> {
    let boundary = boundary(&info.id, headers.as_deref());
    let report = Report {
        reporter,
        message: info,
        returned,
        now,
        boundary: &boundary,
    };
    let Some(n) = dsn::compose(&report) else {
        return Err(Error::corrupt(
            Some(&info.id),
            "it is marked as owing a notification, but no recipient failed or its sender is null",
        ));
    };
    let eight_bit = match returned {
        Returned::Nothing => false,
        Returned::Headers { utf8 } => utf8,
        Returned::Message { utf8, eight_bit } => utf8 || eight_bit,
    } || !n.to.is_ascii();
    let body: Box<dyn BodySource> = match returned {
        Returned::Message { .. } => Box::new(Framed::new(
            n.head.clone(),
            store.open_body(&info.id).await?,
            n.tail.clone(),
        )),
        _ => Box::new(MemoryBody::new(
            n.assemble(headers.as_deref().unwrap_or_default()),
        )),
    };
    let mut options = MessageOptions::default();
    options.body = if eight_bit {
        BodyKind::EightBit
    } else {
        BodyKind::SevenBit
    };
    options.smtputf8 = !n.to.is_ascii();
    // RFC 8689 §5: a notification of a REQUIRETLS message asks for it too.
    options.require_tls = info.options.require_tls;
    // The way the original went (its relay account and TLS policy), not
    // whichever runner happens to enqueue the notification.
    options.route = info.options.route.clone().or(route.map(str::to_owned));
    let message = NewMessage {
        from: "<>".into(),
        to: vec![n.to.clone()],
        body: Body::Source(body),
        options,
    };
    let id = store.enqueue_notification(&info.id, message, now).await?;
    Ok(id.map(|notification| Notified {
        message: info.id.clone(),
        notification,
        to: n.to,
        recipients: n.reported,
    }))
}

/// The original's header section, at most [`HEADERS_LIMIT`] octets;
/// `None` when its body cannot be read.
async fn read_headers(store: &dyn Store, id: &MessageId) -> Option<Vec<u8>> {
    let mut body = match store.open_body(id).await {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(message_id = %id, error = %e,
                "the original's body cannot be read; the notification returns nothing of it");
            return None;
        }
    };
    let mut buf = vec![0u8; HEADERS_LIMIT];
    let mut filled = 0;
    let mut complete = false;
    while filled < buf.len() {
        match body.read(&mut buf[filled..]).await {
            Ok(0) => {
                complete = true;
                break;
            }
            Ok(n) => filled += n,
            Err(e) => {
                tracing::warn!(message_id = %id, error = %e,
                    "the original's body cannot be read; the notification returns nothing of it");
                return None;
            }
        }
    }
    Some(dsn::header_section(&buf[..filled], complete).to_vec())
}

/// A MIME boundary no returned header section holds: the message id and
/// 64 random bits (which the original's author could not know).
fn boundary(id: &MessageId, returned: Option<&[u8]>) -> String {
    loop {
        let mut random = [0u8; 8];
        let salt = if getrandom::fill(&mut random).is_ok() {
            u64::from_le_bytes(random)
        } else {
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        };
        let b = format!("=_dsn_{id}_{salt:016x}");
        let clash = returned.is_some_and(|r| r.windows(b.len()).any(|w| w == b.as_bytes()));
        if !clash {
            return b;
        }
    }
}

/// The notification's body for a returned original: `head`, the
/// original streamed from the spool, `tail`.
struct Framed {
    head: Vec<u8>,
    body: Box<dyn BodySource>,
    tail: Vec<u8>,
    /// 0: in `head`, 1: in the body, 2: in `tail`.
    stage: u8,
    at: usize,
}

impl Framed {
    fn new(head: Vec<u8>, body: Box<dyn BodySource>, tail: Vec<u8>) -> Self {
        Self {
            head,
            body,
            tail,
            stage: 0,
            at: 0,
        }
    }
}

#[async_trait]
impl BodySource for Framed {
    async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let part = match self.stage {
                0 => &self.head,
                1 => {
                    let n = self.body.read(buf).await?;
                    if n > 0 {
                        return Ok(n);
                    }
                    self.stage = 2;
                    self.at = 0;
                    continue;
                }
                _ => &self.tail,
            };
            let rest = part.get(self.at..).unwrap_or_default();
            if rest.is_empty() {
                if self.stage == 0 {
                    self.stage = 1;
                    continue;
                }
                return Ok(0);
            }
            let n = rest.len().min(buf.len());
            buf[..n].copy_from_slice(&rest[..n]);
            self.at += n;
            return Ok(n);
        }
    }

    async fn rewind(&mut self) -> io::Result<()> {
        self.body.rewind().await?;
        self.stage = 0;
        self.at = 0;
        Ok(())
    }
}
