//! Mail transactions: MAIL, RCPT, DATA or BDAT, RSET (RFC 5321 §3.3,
//! RFC 2920 pipelining, RFC 3030 chunking).
//!
//! With PIPELINING the envelope (MAIL, every RCPT, and DATA) goes in one
//! write, and the next message's envelope rides with the previous end of
//! data; with CHUNKING as well, the body follows its envelope without
//! waiting. Without PIPELINING every command waits for its reply. Every reply
//! is matched to its command; each recipient ends with its own outcome.
//!
//! This file starts transactions and handles the envelope's replies (MAIL,
//! RCPT, RSET); the data and its end are in `body.rs`, outcomes in
//! `settle.rs`.

use std::collections::VecDeque;
use std::time::Instant;

use super::outbox::Expect;
use super::params::{mail_params, precheck, rcpt_params};
use super::{Client, State};
use crate::command::Command;
use crate::data::BodyType;
use crate::envelope::{Envelope, MessageId, RecipientOutcome};
use crate::error::{Error, ProtocolError};
use crate::phase::Phase;
use crate::reply::{EnhancedCode, Reply, ReplyCode};

/// A message from [`Client::send`] until its last recipient has an outcome.
#[derive(Debug)]
pub(super) struct Message {
    pub(super) id: MessageId,
    pub(super) envelope: Envelope,
    pub(super) outcomes: Vec<Option<RecipientOutcome>>,
    /// Recipients (indexes into `envelope.to`) not yet tried.
    pub(super) todo: VecDeque<usize>,
    pub(super) checked: bool,
}

impl Message {
    pub(super) fn new(id: MessageId, envelope: Envelope) -> Self {
        let n = envelope.to.len();
        Self {
            id,
            envelope,
            outcomes: vec![None; n],
            todo: (0..n).collect(),
            checked: false,
        }
    }
}

/// How the body travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Mode {
    Data,
    Bdat,
}

/// Where a transaction stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Stage {
    /// Envelope sent; the body cannot start yet (DATA's 354, or lock-step RCPTs, pending).
    Envelope,
    /// The body is being sent or has been; only replies remain.
    Body,
}

/// One MAIL…end-of-data exchange for some recipients of one message.
#[derive(Debug)]
pub(super) struct Transaction {
    pub(super) id: u64,
    pub(super) message: MessageId,
    pub(super) mode: Mode,
    pub(super) stage: Stage,
    /// Recipients in RCPT order (indexes into the envelope).
    pub(super) rcpts: Vec<usize>,
    pub(super) accepted: Vec<usize>,
    /// Recipients refused with "too many recipients", for the next transaction.
    pub(super) spilled: Vec<(usize, Reply)>,
    /// Pipelined RCPT refusals, held until a reply after them (DATA's, a
    /// chunk's) shows the replies line up with the commands: a server that
    /// sent one reply twice would otherwise have one recipient rejected
    /// with another's refusal.
    pub(super) refused: Vec<(usize, Reply)>,
    /// Replies still to come for this transaction.
    pub(super) outstanding: usize,
    /// RCPT replies received so far.
    pub(super) rcpt_replies: usize,
    /// Outcomes are settled (MAIL, DATA or a chunk refused, or nobody
    /// accepted): later replies are read and ignored.
    pub(super) settled: bool,
    /// The end-of-data mark (`CRLF.CRLF` or `BDAT … LAST`) is written: from
    /// here on the server may hold the whole message, so a session lost
    /// before its reply leaves the outcome unknown.
    pub(super) ended: bool,
}

/// Is this refusal "too many recipients" (RFC 5321 §4.5.3.1.10, RFC 3463 X.5.3)?
fn too_many_recipients(reply: &Reply) -> bool {
    reply.code() == ReplyCode::INSUFFICIENT_STORAGE
        && (reply.enhanced_code()
            == Some(EnhancedCode {
                class: 4,
                subject: 5,
                detail: 3,
            })
            || reply
                .text()
                .to_ascii_lowercase()
                .contains("too many recipients"))
}

impl Client {
    fn pipelining(&self) -> bool {
        self.config.pipelining && self.caps.pipelining()
    }

    /// Starts whatever can start now: transactions, then QUIT.
    pub(super) fn advance(&mut self, now: Instant) {
        self.deferred_advance = None;
        if self.state != State::Ready {
            return;
        }
        let pipelining = self.pipelining();
        while self.body.is_none() {
            let blocked = if pipelining {
                self.txs.iter().any(|t| t.stage == Stage::Envelope)
                    || self.txs.len() >= self.config.max_in_flight.max(1)
            } else {
                !self.pending.is_empty()
            };
            if blocked {
                break;
            }
            let Some(pos) = self.messages.iter().position(|m| !m.todo.is_empty()) else {
                break;
            };
            self.start_transaction(now, pos);
            if self.state != State::Ready {
                return;
            }
        }
        // With PIPELINING, QUIT rides with the last end of data once no
        // RCPT reply can still send recipients to another transaction.
        let nothing_to_start = self.messages.iter().all(|m| m.todo.is_empty());
        let may_quit = if pipelining {
            !self.pending.awaits_envelope() && self.txs.iter().all(|t| t.stage == Stage::Body)
        } else {
            self.pending.is_empty()
        };
        if self.quit_requested && nothing_to_start && self.body.is_none() && may_quit {
            self.send_quit(now);
        }
    }

    fn start_transaction(&mut self, now: Instant, pos: usize) {
        let pipelining = self.pipelining();
        let Some(message) = self.messages.get_mut(pos) else {
            return;
        };
        let bdat = pipelining
            && self.caps.chunking()
            && (self.config.chunking || message.envelope.body == BodyType::BinaryMime);
        if !message.checked {
            if let Err(e) = precheck(&message.envelope, &self.caps, self.tls, bdat) {
                let id = message.id;
                let todo: Vec<usize> = message.todo.drain(..).collect();
                for index in todo {
                    self.settle(id, index, |r| {
                        RecipientOutcome::from_error(r, Phase::Mail, e.clone().into())
                    });
                }
                self.finish_message_if_done(id);
                return;
            }
            message.checked = true;
        }
        if self.rset_needed {
            self.rset_needed = false;
            self.out.command(&Command::Rset);
            self.pending.push(now, Expect::Rset);
            if !pipelining {
                // Lock-step: MAIL waits for the RSET's reply (advance runs again then).
                return;
            }
        }
        let Some(message) = self.messages.get_mut(pos) else {
            return;
        };
        let take = message.todo.len().min(self.config.max_recipients.max(1));
        let rcpts: Vec<usize> = message.todo.drain(..take).collect();
        let id = self.next_tx;
        self.next_tx += 1;
        let mode = if bdat { Mode::Bdat } else { Mode::Data };
        let params = mail_params(&message.envelope, &self.caps);
        self.out.command(&Command::Mail {
            from: &message.envelope.from,
            params: &params,
        });
        self.pending.push(now, Expect::Mail(id));
        let mut tx = Transaction {
            id,
            message: message.id,
            mode,
            stage: Stage::Envelope,
            rcpts,
            accepted: Vec::new(),
            spilled: Vec::new(),
            refused: Vec::new(),
            outstanding: 1,
            rcpt_replies: 0,
            settled: false,
            ended: false,
        };
        if pipelining {
            for (k, &index) in tx.rcpts.iter().enumerate() {
                let to = &message.envelope.to[index];
                let params = rcpt_params(&message.envelope, to, &self.caps);
                self.out.command(&Command::Rcpt {
                    to,
                    params: &params,
                });
                self.pending.push(now, Expect::Rcpt(id, k));
            }
            tx.outstanding += tx.rcpts.len();
            match mode {
                Mode::Data => {
                    self.out.command(&Command::Data);
                    self.pending.push(now, Expect::Data(id));
                    tx.outstanding += 1;
                }
                Mode::Bdat => {
                    // RFC 3030 §4.2: BDAT may follow the RCPTs in the same group.
                    tx.stage = Stage::Body;
                    self.start_body(id, tx.message, mode);
                }
            }
        }
        self.txs.push_back(tx);
    }

    pub(super) fn on_mail(&mut self, now: Instant, tx: u64, reply: Reply) {
        if reply.code().is_intermediate() {
            // A 3xx answers no MAIL: the server is out of step.
            self.fail(
                ProtocolError::UnexpectedReply {
                    phase: Phase::Mail,
                    reply,
                }
                .into(),
            );
            return;
        }
        let lockstep = !self.pipelining();
        let Some(t) = self.txs.iter_mut().find(|t| t.id == tx) else {
            return;
        };
        t.outstanding -= 1;
        if reply.code().is_positive() {
            if lockstep {
                self.send_rcpt(now, tx, 0);
            }
        } else {
            t.settled = true;
            let (message, rcpts) = (t.message, t.rcpts.clone());
            for index in rcpts {
                self.settle(message, index, |r| {
                    RecipientOutcome::from_reply(r, Phase::Mail, reply.clone())
                });
            }
            self.rset_needed = true;
            self.discard_body(tx);
        }
        self.finish_tx_if_done(tx);
    }

    /// Lock-step: sends the `k`th RCPT of `tx`, or DATA / RSET after the last.
    fn send_rcpt(&mut self, now: Instant, tx: u64, k: usize) {
        let Some(t) = self.txs.iter_mut().find(|t| t.id == tx) else {
            return;
        };
        let Some(&index) = t.rcpts.get(k) else {
            if t.accepted.is_empty() {
                t.settled = true;
                self.rset_needed = true;
            } else {
                t.outstanding += 1;
                self.out.command(&Command::Data);
                self.pending.push(now, Expect::Data(tx));
            }
            return;
        };
        t.outstanding += 1;
        let Some(message) = self.messages.iter().find(|m| m.id == t.message) else {
            return;
        };
        let to = &message.envelope.to[index];
        let params = rcpt_params(&message.envelope, to, &self.caps);
        self.out.command(&Command::Rcpt {
            to,
            params: &params,
        });
        self.pending.push(now, Expect::Rcpt(tx, k));
    }

    pub(super) fn on_rcpt(&mut self, now: Instant, tx: u64, k: usize, reply: Reply) {
        if reply.code().is_intermediate() {
            self.fail(
                ProtocolError::UnexpectedReply {
                    phase: Phase::Rcpt,
                    reply,
                }
                .into(),
            );
            return;
        }
        let lockstep = !self.pipelining();
        let Some(t) = self.txs.iter_mut().find(|t| t.id == tx) else {
            return;
        };
        t.outstanding -= 1;
        t.rcpt_replies += 1;
        let all_in = t.rcpt_replies == t.rcpts.len();
        if !t.settled {
            let Some(&index) = t.rcpts.get(k) else { return };
            if reply.code().is_positive() {
                t.accepted.push(index);
            } else if too_many_recipients(&reply) {
                t.spilled.push((index, reply));
            } else if !lockstep {
                t.refused.push((index, reply));
            } else {
                // Lock-step replies cannot shift: one arriving before its
                // command is refused as unsolicited.
                let message = t.message;
                self.settle(message, index, |r| {
                    RecipientOutcome::from_reply(r, Phase::Rcpt, reply)
                });
            }
        }
        if all_in {
            self.resolve_spill(tx);
        }
        if lockstep && self.txs.iter().any(|t| t.id == tx && !t.settled) {
            self.send_rcpt(now, tx, k + 1);
        }
        self.finish_tx_if_done(tx);
    }

    /// Once every RCPT of `tx` is answered: recipients refused as "too many"
    /// go back to their message for the next transaction (which then rides
    /// with this one's end of data), as long as this one got somebody
    /// through; otherwise the server takes nobody now and they are deferred
    /// with its reply.
    fn resolve_spill(&mut self, tx: u64) {
        let Some(t) = self.txs.iter_mut().find(|t| t.id == tx) else {
            return;
        };
        let spilled = std::mem::take(&mut t.spilled);
        let (message, progress) = (t.message, !t.accepted.is_empty());
        for (index, reply) in spilled.into_iter().rev() {
            let requeued = progress
                && self.state == State::Ready
                && self
                    .messages
                    .iter_mut()
                    .find(|m| m.id == message)
                    .map(|m| m.todo.push_front(index))
                    .is_some();
            if !requeued {
                self.settle(message, index, |r| {
                    RecipientOutcome::from_reply(r, Phase::Rcpt, reply)
                });
            }
        }
    }

    pub(super) fn on_rset(&mut self, _now: Instant, reply: Reply) {
        if !reply.code().is_positive() {
            self.fail_and_quit(Error::Rejected {
                phase: Phase::Rset,
                reply,
            });
        }
    }
}
