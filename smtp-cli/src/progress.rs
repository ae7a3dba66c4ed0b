//! A run of `smtp send` as it goes: each message's outcome recorded as soon
//! as it is known and, in a text report of several messages, printed then,
//! so that a run stopped or killed halfway leaves a record of what was sent;
//! the progress bar on a terminal; the closing summary; and what SIGINT or
//! SIGTERM leaves behind: the outcomes known, and every other recipient
//! marked as not known, so that a bulk run can be resumed without sending
//! twice what was already accepted. Every line is printed once: the end of
//! the run, or the interruption, prints only what was not printed yet.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::output::{MessageReport, Printed, Report, Sent};

/// The text for a recipient whose message had no outcome yet.
const INTERRUPTED: &str = "interrupted before the outcome was known; the message may or may \
                           not have been delivered";

/// The reason of a recipient whose message's data never went out.
const NOT_SENT: &str = "interrupted before this message was sent; it was not delivered";

/// The bar: how far, how fast, how long still.
const BAR: &str = "{wide_bar} {pos}/{len} messages  {per_sec:1}  ETA {eta}";

/// How often the bar is redrawn while nothing finishes (the rate and time
/// left change even then).
const TICK: Duration = Duration::from_millis(500);

/// How a run reports.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Mode {
    /// One JSON object at the end.
    pub(crate) json: bool,
    /// The transcript on standard error (no bar then).
    pub(crate) verbose: bool,
    /// Sendmail's way: quiet on success.
    pub(crate) sendmail: bool,
}

struct Record {
    sent: Vec<Sent>,
    /// Every outcome so far, by message index.
    found: Vec<(usize, MessageReport)>,
    /// What was printed as it came, by message index.
    printed: Vec<Printed>,
    mode: Mode,
    bar: Option<ProgressBar>,
    started: Instant,
    /// Messages (by index) whose data began to go out: only these can have
    /// been delivered.
    data_sent: Vec<bool>,
}

impl Record {
    /// Each message's lines as it finishes: a text report of several
    /// messages. One message's lines wait for the end, as they always have.
    fn live(&self) -> bool {
        !self.mode.json && !self.mode.sendmail && self.sent.len() > 1
    }

    fn hide_bar(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

static RECORD: Mutex<Option<Record>> = Mutex::new(None);

/// Runs `f` on the record, under the lock: a line printed as a message
/// finishes and the report of an interruption never cross.
fn with<T>(f: impl FnOnce(&mut Option<Record>) -> T) -> T {
    let mut guard = RECORD
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    f(&mut guard)
}

/// The progress bar for `len` messages, drawn on `target`.
fn bar(len: u64, target: ProgressDrawTarget) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(len), target);
    // The template is a constant that parses; the default look otherwise.
    if let Ok(style) = ProgressStyle::with_template(BAR) {
        bar.set_style(style);
    }
    bar
}

/// A send of these messages starts: on a terminal (standard error), for
/// several messages and neither `-v` nor `--json`, with a progress bar.
pub(crate) fn begin(sent: &[Sent], mode: Mode) {
    let sent: Vec<Sent> = sent
        .iter()
        .map(|s| Sent {
            name: s.name.clone(),
            recipients: s.recipients.clone(),
        })
        .collect();
    let len = sent.len();
    let bar = (sent.len() > 1 && !mode.verbose && !mode.json && std::io::stderr().is_terminal())
        .then(|| {
            let bar = bar(sent.len() as u64, ProgressDrawTarget::stderr());
            bar.enable_steady_tick(TICK);
            bar
        });
    with(|r| {
        *r = Some(Record {
            sent,
            found: Vec::new(),
            printed: Vec::new(),
            mode,
            bar,
            started: Instant::now(),
            data_sent: vec![false; len],
        });
    });
}

/// Message `index`'s data began to go out: from now on an interruption
/// leaves its outcome unknown (before, it certainly was not delivered).
pub(crate) fn data_sent(index: usize) {
    with(|r| {
        if let Some(slot) = r.as_mut().and_then(|r| r.data_sent.get_mut(index)) {
            *slot = true;
        }
    });
}

/// A message's outcome arrived (`index` into the messages given to
/// [`begin`]): printed now when the report is printed as it goes.
pub(crate) fn record(index: usize, report: MessageReport) {
    with(|r| {
        let Some(r) = r else { return };
        if r.live() && index < r.sent.len() {
            let print = || {
                for line in report.lines(r.sent.len() > 1) {
                    say!("{line}");
                }
            };
            match &r.bar {
                Some(bar) => bar.suspend(print),
                None => print(),
            }
            r.printed.push(Printed::of(index, &report));
        }
        if let Some(bar) = &r.bar {
            bar.inc(1);
        }
        r.found.push((index, report));
    });
}

/// Runs `f` (which prints to the terminal) with the bar out of the way.
pub(crate) fn suspend(f: impl FnOnce()) {
    with(|r| match r.as_ref().and_then(|r| r.bar.as_ref()) {
        Some(bar) => bar.suspend(f),
        None => f(),
    });
}

/// Sending is over: the bar goes, before the last words on standard error.
pub(crate) fn done_sending() {
    with(|r| {
        if let Some(r) = r {
            r.hide_bar();
        }
    });
}

/// The end of the run: prints the report (what was not printed as it came)
/// and, for several messages in a text report, the summary on standard
/// error. Sendmail's way prints only what was not accepted.
pub(crate) fn finish(report: &Report, mode: Mode) {
    with(|r| {
        let mut record = r.take();
        if let Some(record) = &mut record {
            record.hide_bar();
        }
        if mode.sendmail {
            report.print_unless_accepted();
            return;
        }
        let printed = record.as_ref().map_or(&[][..], |r| &r.printed[..]);
        report.print_after(mode.json, printed);
        if !mode.json && report.messages.len() > 1 {
            let took = record.map_or(Duration::ZERO, |r| r.started.elapsed());
            tell!("{}", report.summary().line(took));
        }
    });
}

/// Prints what is known, as the report would have (the recipients not
/// reached yet deferred with [`INTERRUPTED`]), leaving out what was
/// printed already.
pub(crate) fn interrupted() {
    with(|r| {
        let Some(mut r) = r.take() else { return };
        r.hide_bar();
        let mut report = Report::reconciled(&r.sent, r.found);
        for (index, m) in report.messages.iter_mut().enumerate() {
            let why = match r.data_sent.get(index) {
                Some(true) => INTERRUPTED,
                _ => NOT_SENT,
            };
            for rcpt in &mut m.recipients {
                if m.missing_outcomes && rcpt.text == crate::output::NO_OUTCOME {
                    rcpt.text = why.to_owned();
                }
            }
            m.missing_outcomes = false;
        }
        report.fault = Some((
            crate::fail::EX_TEMPFAIL,
            crate::output::ErrorReport {
                kind: "interrupted",
                message: "interrupted by a signal before every outcome was known".to_owned(),
            },
        ));
        let summary = report.summary();
        report.print_after(r.mode.json, &r.printed);
        tell!(
            "smtp: interrupted: {} accepted, {} rejected, {} deferred or not known",
            summary.accepted,
            summary.rejected,
            summary.deferred
        );
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bar_shows_position_rate_and_time_left() {
        assert!(ProgressStyle::with_template(BAR).is_ok());
        for key in ["{pos}/{len}", "{per_sec", "{eta}"] {
            assert!(BAR.contains(key), "{key}");
        }
    }
}
