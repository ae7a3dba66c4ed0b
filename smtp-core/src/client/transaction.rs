//! Mail transactions: MAIL, RCPT, DATA or BDAT, RSET (RFC 5321 §3.3,
//! RFC 2920 pipelining, RFC 3030 chunking).
//!
//! With PIPELINING the envelope (MAIL, every RCPT, and DATA) goes in one
//! write, and the next message's envelope rides with the previous end of
//! data; with CHUNKING as well, the body follows its envelope without
//! waiting. Without PIPELINING every command waits for its reply. Every reply
//! is matched to its command; each recipient ends with its own outcome.

use std::collections::VecDeque;
use std::time::Instant;

use super::event::{Direction, Event};
use super::outbox::Expect;
use super::params::{mail_params, precheck, rcpt_params};
use super::{Client, State};
use crate::command::Command;
use crate::data::BodyType;
use crate::data::{BdatEncoder, BodyRules, DataEncoder};
use crate::envelope::{Envelope, MessageId, MessageOutcome, RecipientOutcome, RecipientStatus};
use crate::error::{Error, MessageError, Misuse, ProtocolError};
use crate::phase::Phase;
use crate::reply::{EnhancedCode, Reply, ReplyCode};

/// A message from [`Client::send`] until its last recipient has an outcome.
#[derive(Debug)]
pub(super) struct Message {
    id: MessageId,
    envelope: Envelope,
    outcomes: Vec<Option<RecipientOutcome>>,
    /// Recipients (indexes into `envelope.to`) not yet tried.
    todo: VecDeque<usize>,
    checked: bool,
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
enum Mode {
    Data,
    Bdat,
}

/// Where a transaction stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// Envelope sent; the body cannot start yet (DATA's 354, or lock-step RCPTs, pending).
    Envelope,
    /// The body is being sent or has been; only replies remain.
    Body,
}

/// One MAIL…end-of-data exchange for some recipients of one message.
#[derive(Debug)]
pub(super) struct Transaction {
    id: u64,
    message: MessageId,
    mode: Mode,
    stage: Stage,
    /// Recipients in RCPT order (indexes into the envelope).
    rcpts: Vec<usize>,
    accepted: Vec<usize>,
    /// Recipients refused with "too many recipients", for the next transaction.
    spilled: Vec<(usize, Reply)>,
    /// Pipelined RCPT refusals, held until a reply after them (DATA's, a
    /// chunk's) shows the replies line up with the commands: a server that
    /// sent one reply twice would otherwise have one recipient rejected
    /// with another's refusal.
    refused: Vec<(usize, Reply)>,
    /// Replies still to come for this transaction.
    outstanding: usize,
    /// RCPT replies received so far.
    rcpt_replies: usize,
    /// Outcomes are settled (MAIL, DATA or a chunk refused, or nobody
    /// accepted): later replies are read and ignored.
    settled: bool,
    /// The end-of-data mark (`CRLF.CRLF` or `BDAT … LAST`) is written: from
    /// here on the server may hold the whole message, so a session lost
    /// before its reply leaves the outcome unknown.
    ended: bool,
}

/// The body being streamed.
#[derive(Debug)]
pub(super) struct Body {
    tx: u64,
    message: MessageId,
    encoder: Encoder,
    /// The transaction failed while the body was streaming: drop the rest.
    discard: bool,
}

#[derive(Debug)]
enum Encoder {
    Data(DataEncoder),
    Bdat(BdatEncoder),
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

    fn start_body(&mut self, tx: u64, message: MessageId, mode: Mode) {
        let rules = self
            .messages
            .iter()
            .find(|m| m.id == message)
            .map_or(BodyRules::SEVEN_BIT, |m| m.envelope.body.rules());
        let encoder = match mode {
            Mode::Data => Encoder::Data(DataEncoder::new(rules)),
            Mode::Bdat => Encoder::Bdat(BdatEncoder::new(rules)),
        };
        self.scratch.clear();
        self.body = Some(Body {
            tx,
            message,
            encoder,
            discard: false,
        });
        self.out.event(Event::BodyWanted(message));
    }

    /// Feeds the next piece of the body asked for by [`Event::BodyWanted`].
    /// The bytes are the message as stored (RFC 5322, any line endings): the
    /// client normalises line endings and dot-stuffs. Drain
    /// [`poll_transmit`](Self::poll_transmit) after each call.
    ///
    /// A body that breaks its rules (8-bit data in a 7-bit message, a line
    /// over 998 octets, NUL) is never ended, so the server never takes a
    /// damaged message: over BDAT the transaction is cleared with RSET and
    /// the session goes on; over DATA, which has no way back, the session
    /// ends. The error is returned and reported in the message's outcome.
    pub fn body_chunk(&mut self, now: Instant, chunk: &[u8]) -> Result<(), Error> {
        let Some(body) = self.body.as_mut() else {
            return Err(self.misuse(Misuse::NoBodyWanted));
        };
        if body.discard || chunk.is_empty() {
            return Ok(());
        }
        let (tx, message) = (body.tx, body.message);
        let result = match &mut body.encoder {
            Encoder::Data(enc) => enc.encode(chunk, &mut self.out.bytes),
            Encoder::Bdat(enc) => {
                // The last chunk must say LAST, so each chunk is held until
                // the next one shows it was not the last.
                if !self.scratch.is_empty() {
                    let size = self.scratch.len() as u64;
                    self.out.command(&Command::Bdat { size, last: false });
                    self.out.data(&self.scratch);
                    self.scratch.clear();
                    self.pending.push(now, Expect::Bdat(tx));
                    if let Some(t) = self.txs.iter_mut().find(|t| t.id == tx) {
                        t.outstanding += 1;
                    }
                }
                enc.encode(chunk, &mut self.scratch)
            }
        };
        result.map_err(|e| self.abort_body(now, tx, message, MessageError::Body(e)))
    }

    /// Ends the body asked for by [`Event::BodyWanted`]: writes the end-of-data
    /// mark (`CRLF.CRLF`, or `BDAT n LAST`) and, with PIPELINING, the next
    /// message's envelope in the same write.
    pub fn body_end(&mut self, now: Instant) -> Result<(), Error> {
        let Some(body) = self.body.take() else {
            return Err(self.misuse(Misuse::NoBodyWanted));
        };
        let tx = body.tx;
        if !body.discard {
            let dot = matches!(body.encoder, Encoder::Data(_));
            let result = match body.encoder {
                Encoder::Data(mut enc) => enc.finish(&mut self.out.bytes).map(|()| enc.bytes_in()),
                Encoder::Bdat(mut enc) => enc.finish(&mut self.scratch).map(|()| {
                    let size = self.scratch.len() as u64;
                    self.out.command(&Command::Bdat { size, last: true });
                    self.out.data(&self.scratch);
                    self.scratch.clear();
                    size
                }),
            };
            match result {
                Ok(octets) => {
                    self.out
                        .trace(Direction::Sent, format!("<message body, {octets} octets>"));
                    // BDAT's LAST ends the data; only DATA has a dot.
                    if dot {
                        self.out.trace(Direction::Sent, ".".to_owned());
                    }
                    self.pending.push(now, Expect::DataEnd(tx));
                    if let Some(t) = self.txs.iter_mut().find(|t| t.id == tx) {
                        t.outstanding += 1;
                        t.ended = true;
                    }
                }
                Err(e) => {
                    return Err(self.abort_body(now, tx, body.message, MessageError::Body(e)));
                }
            }
        }
        self.finish_tx_if_done(tx);
        self.advance(now);
        Ok(())
    }

    /// The body could not be read (`detail` says why). It is never ended,
    /// so the server never takes a truncated message; its recipients are
    /// deferred. Over BDAT the transaction is cleared with RSET and the
    /// session goes on; over DATA the session ends and the other messages
    /// are deferred too.
    pub fn body_failed(&mut self, now: Instant, detail: impl Into<String>) -> Result<(), Error> {
        let Some(body) = self.body.as_ref() else {
            return Err(self.misuse(Misuse::NoBodyWanted));
        };
        let (tx, message) = (body.tx, body.message);
        self.abort_body(
            now,
            tx,
            message,
            MessageError::Unreadable {
                detail: detail.into(),
            },
        );
        Ok(())
    }

    fn misuse(&self, misuse: Misuse) -> Error {
        if matches!(self.state, State::Closed | State::Failed | State::Quitting) {
            Misuse::SessionOver.into()
        } else {
            misuse.into()
        }
    }

    /// The body broke its rules mid-stream: that message is rejected, the
    /// others are deferred, and the session ends without an end-of-data mark.
    fn abort_body(
        &mut self,
        now: Instant,
        tx: u64,
        message: MessageId,
        error: MessageError,
    ) -> Error {
        let error = Error::Message(error);
        let bdat = matches!(
            self.body.as_ref().map(|b| &b.encoder),
            Some(Encoder::Bdat(_))
        );
        self.body = None;
        self.scratch.clear();
        let mut rcpts = Vec::new();
        if let Some(t) = self.txs.iter().find(|t| t.id == tx) {
            rcpts.extend(t.rcpts.iter().copied());
        }
        if let Some(m) = self.messages.iter_mut().find(|m| m.id == message) {
            rcpts.extend(m.todo.drain(..));
        }
        if bdat {
            // RFC 3030 §2: RSET between BDAT chunks and BDAT LAST clears the
            // transaction, so the server never takes the partial message and
            // the session goes on with the next one. The chunks' replies are
            // still awaited; RSET goes before the next MAIL (or QUIT ends it).
            if let Some(t) = self.txs.iter_mut().find(|t| t.id == tx) {
                t.settled = true;
                t.accepted.clear();
            }
            for index in rcpts {
                self.settle(message, index, |r| {
                    RecipientOutcome::from_error(r, Phase::DataBlock, error.clone())
                });
            }
            self.rset_needed = true;
            self.finish_tx_if_done(tx);
            // The next message starts from the next poll, not inside this
            // call: a driver that ends "the body" after this error must not
            // end the next message's.
            self.deferred_advance = Some(now);
            return error;
        }
        self.txs.retain(|t| t.id != tx);
        for index in rcpts {
            self.settle(message, index, |r| {
                RecipientOutcome::from_error(r, Phase::DataBlock, error.clone())
            });
        }
        self.finish_message_if_done(message);
        // Over DATA there is no way back short of the end-of-data mark, which
        // would deliver a damaged message: the session ends.
        // The other messages did nothing wrong: a new session may take them.
        self.fail_with(error.clone(), Some(RecipientStatus::Deferred));
        error
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

    pub(super) fn on_data(&mut self, now: Instant, tx: u64, reply: Reply) {
        let code = reply.code();
        if code == ReplyCode::START_MAIL_INPUT || !(code.is_positive() || code.is_intermediate()) {
            self.confirm_refusals(tx);
        }
        let Some(t) = self.txs.iter_mut().find(|t| t.id == tx) else {
            return;
        };
        t.outstanding -= 1;
        t.stage = Stage::Body;
        if code == ReplyCode::START_MAIL_INPUT {
            if t.settled || t.accepted.is_empty() {
                // Nobody to deliver to, yet the server wants data (RFC 2920
                // §3.1): end it at once; the reply to it is meaningless.
                t.settled = true;
                t.outstanding += 1;
                self.out.data(b".\r\n");
                self.out.trace(Direction::Sent, ".".to_owned());
                self.pending.push(now, Expect::DataEnd(tx));
                self.rset_needed = true;
            } else {
                let (message, mode) = (t.message, t.mode);
                self.start_body(tx, message, mode);
            }
        } else if code.is_positive() || code.is_intermediate() {
            self.fail(
                ProtocolError::UnexpectedReply {
                    phase: Phase::Data,
                    reply,
                }
                .into(),
            );
            return;
        } else {
            if !t.settled {
                t.settled = true;
                let (message, accepted) = (t.message, std::mem::take(&mut t.accepted));
                for index in accepted {
                    self.settle(message, index, |r| {
                        RecipientOutcome::from_reply(r, Phase::Data, reply.clone())
                    });
                }
            }
            self.rset_needed = true;
        }
        self.finish_tx_if_done(tx);
    }

    pub(super) fn on_bdat(&mut self, _now: Instant, tx: u64, reply: Reply) {
        self.confirm_refusals(tx);
        let Some(t) = self.txs.iter_mut().find(|t| t.id == tx) else {
            return;
        };
        t.outstanding -= 1;
        if !reply.code().is_positive() && !t.settled {
            self.refuse_data(tx, Phase::DataBlock, reply);
        }
        self.finish_tx_if_done(tx);
    }

    pub(super) fn on_data_end(&mut self, _now: Instant, tx: u64, reply: Reply) {
        let code = reply.code();
        if !code.is_intermediate() {
            self.confirm_refusals(tx);
        }
        let Some(t) = self.txs.iter_mut().find(|t| t.id == tx) else {
            return;
        };
        t.outstanding -= 1;
        if code.is_intermediate() {
            self.fail(
                ProtocolError::UnexpectedReply {
                    phase: Phase::DataEnd,
                    reply,
                }
                .into(),
            );
            return;
        }
        if !t.settled {
            t.settled = true;
            if t.accepted.is_empty() {
                // BDAT without any accepted recipient: the server discarded it.
                self.rset_needed = true;
            }
            let (message, accepted) = (t.message, std::mem::take(&mut t.accepted));
            for index in accepted {
                self.settle(message, index, |r| {
                    RecipientOutcome::from_reply(r, Phase::DataEnd, reply.clone())
                });
            }
        }
        self.finish_tx_if_done(tx);
    }

    pub(super) fn on_rset(&mut self, _now: Instant, reply: Reply) {
        if !reply.code().is_positive() {
            self.fail_and_quit(Error::Rejected {
                phase: Phase::Rset,
                reply,
            });
        }
    }

    /// A chunk or the data was refused: settle the accepted recipients with
    /// `reply` and drop the rest of the body.
    fn refuse_data(&mut self, tx: u64, phase: Phase, reply: Reply) {
        let Some(t) = self.txs.iter_mut().find(|t| t.id == tx) else {
            return;
        };
        t.settled = true;
        let (message, accepted) = (t.message, std::mem::take(&mut t.accepted));
        for index in accepted {
            self.settle(message, index, |r| {
                RecipientOutcome::from_reply(r, phase, reply.clone())
            });
        }
        self.rset_needed = true;
        self.discard_body(tx);
    }

    fn discard_body(&mut self, tx: u64) {
        if let Some(body) = self.body.as_mut().filter(|b| b.tx == tx) {
            body.discard = true;
            self.scratch.clear();
        }
    }

    /// True when some transaction's end-of-data mark went out and its reply
    /// has not come: ending the session now leaves that message's fate unknown.
    pub(super) fn end_of_data_unanswered(&self) -> bool {
        self.txs.iter().any(|t| t.ended && !t.settled)
    }

    /// Settles the RCPT refusals held for `tx`: the replies after them came
    /// as expected, so they answered the commands they seemed to.
    fn confirm_refusals(&mut self, tx: u64) {
        let Some(t) = self.txs.iter_mut().find(|t| t.id == tx) else {
            return;
        };
        let (message, refused) = (t.message, std::mem::take(&mut t.refused));
        for (index, reply) in refused {
            self.settle(message, index, |r| {
                RecipientOutcome::from_reply(r, Phase::Rcpt, reply)
            });
        }
    }

    /// Removes `tx` once no reply is outstanding and its body is done.
    fn finish_tx_if_done(&mut self, tx: u64) {
        let Some(pos) = self.txs.iter().position(|t| t.id == tx) else {
            return;
        };
        let busy = self.body.as_ref().is_some_and(|b| b.tx == tx);
        let Some(t) = self.txs.get(pos) else { return };
        if t.outstanding > 0 || busy || (t.stage == Stage::Envelope && !t.settled) {
            return;
        }
        self.confirm_refusals(tx);
        let Some(t) = self.txs.remove(pos) else {
            return;
        };
        self.finish_message_if_done(t.message);
    }

    /// Records one recipient's outcome and reports it.
    fn settle(
        &mut self,
        message: MessageId,
        index: usize,
        make: impl FnOnce(crate::address::Mailbox) -> RecipientOutcome,
    ) {
        let Some(m) = self.messages.iter_mut().find(|m| m.id == message) else {
            return;
        };
        let (Some(slot), Some(rcpt)) = (m.outcomes.get_mut(index), m.envelope.to.get(index)) else {
            return;
        };
        if slot.is_some() {
            return;
        }
        let outcome = make(rcpt.clone());
        *slot = Some(outcome.clone());
        self.out.event(Event::RecipientResult { message, outcome });
    }

    fn finish_message_if_done(&mut self, message: MessageId) {
        let Some(pos) = self.messages.iter().position(|m| m.id == message) else {
            return;
        };
        let done = self
            .messages
            .get(pos)
            .is_some_and(|m| m.outcomes.iter().all(Option::is_some));
        let in_flight = self.txs.iter().any(|t| t.message == message);
        if !done || in_flight {
            return;
        }
        if let Some(m) = self.messages.remove(pos) {
            let recipients = m.outcomes.into_iter().flatten().collect();
            self.out.event(Event::MessageResult(MessageOutcome {
                message,
                recipients,
            }));
        }
    }

    /// Gives every unfinished recipient an outcome from `error` (with
    /// `status` overriding the status it implies) and reports each message.
    pub(super) fn abandon_messages(
        &mut self,
        phase: Phase,
        error: &Error,
        status: Option<RecipientStatus>,
    ) {
        // Held RCPT refusals stand unless the replies were out of step with
        // the commands, which is what the server's protocol errors show.
        if !matches!(error, Error::Protocol(_)) {
            let ids: Vec<u64> = self.txs.iter().map(|t| t.id).collect();
            for id in ids {
                self.confirm_refusals(id);
            }
        }
        // Then the transactions whose end of data went out unanswered:
        // their recipients' outcome is unknown, not merely deferred.
        let unknown = Error::OutcomeUnknown {
            cause: Box::new(error.clone()),
        };
        let txs = std::mem::take(&mut self.txs);
        for t in txs.iter().filter(|t| t.ended && !t.settled) {
            // Recipients a 452 sent back to their message were not in it.
            let requeued: Vec<usize> = self
                .messages
                .iter()
                .find(|m| m.id == t.message)
                .map(|m| m.todo.iter().copied().collect())
                .unwrap_or_default();
            for &index in t.rcpts.iter().filter(|i| !requeued.contains(i)) {
                self.settle(t.message, index, |r| {
                    RecipientOutcome::from_error(r, Phase::DataEnd, unknown.clone())
                });
            }
        }
        let ids: Vec<MessageId> = self.messages.iter().map(|m| m.id).collect();
        for id in ids {
            let n = self
                .messages
                .iter()
                .find(|m| m.id == id)
                .map_or(0, |m| m.outcomes.len());
            for index in 0..n {
                self.settle(id, index, |r| {
                    let mut o = RecipientOutcome::from_error(r, phase, error.clone());
                    if let Some(s) = status {
                        o.status = s;
                    }
                    o
                });
            }
            self.finish_message_if_done(id);
        }
    }
}
