//! The message data: DATA's `354` and BDAT's chunks, the body streamed
//! through the encoder (RFC 5321 §4.5.2 transparency, RFC 3030 chunking),
//! the end-of-data mark and its reply.

use std::time::Instant;

use super::event::{Direction, Event};
use super::outbox::Expect;
use super::transaction::{Mode, Stage};
use super::{Client, State};
use crate::command::Command;
use crate::data::{BdatEncoder, BodyRules, DataEncoder};
use crate::envelope::{MessageId, RecipientOutcome, RecipientStatus};
use crate::error::{Error, MessageError, Misuse, ProtocolError};
use crate::phase::Phase;
use crate::reply::{Reply, ReplyCode};

/// The body being streamed.
#[derive(Debug)]
pub(super) struct Body {
    pub(super) tx: u64,
    pub(super) message: MessageId,
    encoder: Encoder,
    /// The transaction failed while the body was streaming: drop the rest.
    discard: bool,
}

#[derive(Debug)]
enum Encoder {
    Data(DataEncoder),
    Bdat(BdatEncoder),
}

impl Client {
    pub(super) fn start_body(&mut self, tx: u64, message: MessageId, mode: Mode) {
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

    pub(super) fn write_chunk(&mut self, now: Instant, chunk: &[u8]) -> Result<(), Error> {
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

    pub(super) fn end_body(&mut self, now: Instant) -> Result<(), Error> {
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

    pub(super) fn fail_body(
        &mut self,
        now: Instant,
        detail: impl Into<String>,
    ) -> Result<(), Error> {
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
                self.settle_accepted(tx, Phase::Data, &reply);
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
            if t.accepted.is_empty() {
                // BDAT without any accepted recipient: the server discarded it.
                self.rset_needed = true;
            }
            self.settle_accepted(tx, Phase::DataEnd, &reply);
        }
        self.finish_tx_if_done(tx);
    }

    /// A chunk or the data was refused: settle the accepted recipients with
    /// `reply` and drop the rest of the body.
    fn refuse_data(&mut self, tx: u64, phase: Phase, reply: Reply) {
        if !self.txs.iter().any(|t| t.id == tx) {
            return;
        }
        self.settle_accepted(tx, phase, &reply);
        self.rset_needed = true;
        self.discard_body(tx);
    }

    pub(super) fn discard_body(&mut self, tx: u64) {
        if let Some(body) = self.body.as_mut().filter(|b| b.tx == tx) {
            body.discard = true;
            self.scratch.clear();
        }
    }
}
