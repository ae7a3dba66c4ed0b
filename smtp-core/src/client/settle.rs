//! Outcomes: each recipient settled once, each message reported when its
//! last recipient is, and what a session that ends takes with it.

use super::Client;
use super::event::Event;
use super::transaction::Stage;
use crate::envelope::{MessageId, MessageOutcome, RecipientOutcome, RecipientStatus};
use crate::error::Error;
use crate::phase::Phase;
use crate::reply::Reply;

impl Client {
    /// True when some transaction's end-of-data mark went out and its reply
    /// has not come: ending the session now leaves that message's fate unknown.
    pub(super) fn end_of_data_unanswered(&self) -> bool {
        self.txs.iter().any(|t| t.ended && !t.settled)
    }

    /// Settles the RCPT refusals held for `tx`: the replies after them came
    /// as expected, so they answered the commands they seemed to.
    pub(super) fn confirm_refusals(&mut self, tx: u64) {
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
    pub(super) fn finish_tx_if_done(&mut self, tx: u64) {
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

    /// Settles every recipient `tx` had accepted with `reply` (to DATA, a
    /// chunk or the end of data) and marks the transaction settled: later
    /// replies for it are read and ignored.
    pub(super) fn settle_accepted(&mut self, tx: u64, phase: Phase, reply: &Reply) {
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
    }

    /// Records one recipient's outcome and reports it.
    pub(super) fn settle(
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

    pub(super) fn finish_message_if_done(&mut self, message: MessageId) {
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
            let phase = own_phase(phase, id, &txs);
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

/// The phase a message that did not get an outcome of its own was in when
/// the session failed in `phase`: a failure during another message's
/// transaction left this one before its data (never started, or its
/// envelope only pipelined), which is what callers go by (a queue
/// retries such a message at once, without counting an attempt).
fn own_phase(
    phase: Phase,
    message: MessageId,
    txs: &std::collections::VecDeque<super::transaction::Transaction>,
) -> Phase {
    use super::transaction::Stage;
    let own: Vec<&super::transaction::Transaction> =
        txs.iter().filter(|t| t.message == message).collect();
    let in_body = own.iter().any(|t| matches!(t.stage, Stage::Body));
    match phase {
        // Its end of data was not written (else its outcome is unknown).
        Phase::DataEnd if in_body => Phase::Data,
        Phase::DataEnd | Phase::DataBlock if !in_body => Phase::Mail,
        Phase::Mail | Phase::Rcpt | Phase::Data if own.is_empty() => Phase::Mail,
        other => other,
    }
}
