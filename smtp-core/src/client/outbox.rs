//! The client's outputs (bytes to write, events) and the replies it awaits.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::event::{Direction, Event, TranscriptLine};
use crate::command::Command;
use crate::phase::Phase;
use crate::reply::Reply;
use crate::timeouts::Timeouts;

/// Bytes to write and events to report, with the transcript hook.
#[derive(Debug)]
pub(super) struct Outbox {
    pub(super) bytes: Vec<u8>,
    pub(super) events: VecDeque<Event>,
    pub(super) transcript: bool,
    pub(super) tls: bool,
}

impl Outbox {
    pub(super) fn new(transcript: bool, tls: bool) -> Self {
        Self {
            bytes: Vec::with_capacity(4096),
            events: VecDeque::new(),
            transcript,
            tls,
        }
    }

    /// Encodes `command`; the transcript shows it with AUTH secrets redacted.
    pub(super) fn command(&mut self, command: &Command<'_>) {
        let start = self.bytes.len();
        command.encode(&mut self.bytes);
        if !self.transcript {
            return;
        }
        let text = match command {
            Command::Auth {
                mechanism,
                initial_response: Some(_),
            } => {
                format!("AUTH {mechanism} <redacted>")
            }
            Command::AuthResponse(_) => "<redacted>".to_owned(),
            _ => {
                let line = self.bytes.get(start..).unwrap_or_default();
                String::from_utf8_lossy(line)
                    .trim_end_matches("\r\n")
                    .to_owned()
            }
        };
        self.trace(Direction::Sent, text);
    }

    /// Appends raw message data (already encoded).
    pub(super) fn data(&mut self, encoded: &[u8]) {
        self.bytes.extend_from_slice(encoded);
    }

    pub(super) fn received(&mut self, reply: &Reply) {
        if self.transcript {
            self.trace(Direction::Received, reply.to_string());
        }
    }

    pub(super) fn trace(&mut self, direction: Direction, text: String) {
        if self.transcript {
            for line in text.split('\n') {
                let text = line.to_owned();
                self.events.push_back(Event::Transcript(TranscriptLine {
                    direction,
                    tls: self.tls,
                    text,
                }));
            }
        }
    }

    pub(super) fn event(&mut self, event: Event) {
        self.events.push_back(event);
    }
}

/// What a reply will answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Expect {
    Greeting,
    Ehlo,
    Helo,
    StartTls,
    Auth,
    Mail(u64),
    Rcpt(u64, usize),
    Data(u64),
    Bdat(u64),
    DataEnd(u64),
    Rset,
    Quit,
}

impl Expect {
    pub(super) const fn phase(self) -> Phase {
        match self {
            Self::Greeting => Phase::Greeting,
            Self::Ehlo | Self::Helo => Phase::Ehlo,
            Self::StartTls => Phase::StartTls,
            Self::Auth => Phase::Auth,
            Self::Mail(_) => Phase::Mail,
            Self::Rcpt(..) => Phase::Rcpt,
            Self::Data(_) => Phase::Data,
            Self::Bdat(_) => Phase::DataBlock,
            Self::DataEnd(_) => Phase::DataEnd,
            Self::Rset => Phase::Rset,
            Self::Quit => Phase::Quit,
        }
    }
}

/// Replies awaited, oldest first, and the deadline of the oldest.
///
/// The oldest's deadline runs from when it became the oldest: a pipelined
/// RCPT does not start its clock until the MAIL before it is answered.
///
/// A reply can only answer a command the driver has been handed to write:
/// the newest `unsent` entries are still in the outbox, and a reply that
/// would match one of them arrived before its command left (a server
/// answering ahead, or sending one reply twice), which would pair every
/// later reply with the wrong command.
#[derive(Debug)]
pub(super) struct Pending {
    queue: VecDeque<Expect>,
    front_since: Instant,
    unsent: usize,
}

impl Pending {
    /// Awaiting the greeting, which answers no command.
    pub(super) fn new(now: Instant) -> Self {
        let mut queue = VecDeque::new();
        queue.push_back(Expect::Greeting);
        Self {
            queue,
            front_since: now,
            unsent: 0,
        }
    }

    pub(super) fn push(&mut self, now: Instant, expect: Expect) {
        if self.queue.is_empty() {
            self.front_since = now;
        }
        self.queue.push_back(expect);
        self.unsent += 1;
    }

    /// Every command queued so far has been handed to the driver.
    pub(super) fn mark_sent(&mut self) {
        self.unsent = 0;
    }

    /// True when the oldest awaited reply answers a command not yet handed
    /// to the driver: no honest server can have sent it.
    pub(super) fn front_unsent(&self) -> bool {
        !self.queue.is_empty() && self.unsent >= self.queue.len()
    }

    pub(super) fn pop(&mut self, now: Instant) -> Option<Expect> {
        let e = self.queue.pop_front();
        self.unsent = self.unsent.min(self.queue.len());
        self.front_since = now;
        e
    }

    pub(super) fn front(&self) -> Option<Expect> {
        self.queue.front().copied()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// True while a MAIL or RCPT reply is awaited.
    pub(super) fn awaits_envelope(&self) -> bool {
        self.queue
            .iter()
            .any(|e| matches!(e, Expect::Mail(_) | Expect::Rcpt(..)))
    }

    pub(super) fn clear(&mut self) {
        self.queue.clear();
        self.unsent = 0;
    }

    /// The deadline for the oldest awaited reply, its phase and its limit.
    /// A BDAT chunk's reply gets the end-of-data limit: the server may be
    /// scanning the data so far before it answers.
    pub(super) fn deadline(&self, timeouts: &Timeouts) -> Option<(Instant, Phase, Duration)> {
        let phase = self.queue.front()?.phase();
        let limit = timeouts.for_phase(if phase == Phase::DataBlock {
            Phase::DataEnd
        } else {
            phase
        });
        Some((self.front_since + limit, phase, limit))
    }
}
