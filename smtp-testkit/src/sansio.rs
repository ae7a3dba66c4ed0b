//! The sans-IO client driven directly, with a virtual clock: no sockets,
//! no runtime, every deadline reachable in an instant.
//!
//! Scripts read like transcripts: `S: ` lines are what the server sends
//! (consecutive ones in one write), `C: ` lines what the client must have
//! sent by then, exactly and in order (`*` at the end matches any rest).
//! Whatever the client sends after the script's last line must be shown
//! too: a script whose client writes more than its `C:` lines fails.
//!
//! ```
//! use smtp_testkit::sansio::{Run, config, envelope};
//!
//! let mut run = Run::new(config());
//! run.send(envelope("a@example.org", &["b@example.net"]));
//! run.script(
//!     "
//!     S: 220 mx.example.net
//!     C: EHLO client.example
//!     S: 250 mx.example.net
//!     C: MAIL FROM:<a@example.org>
//!     S: 550 5.7.1 go away
//!     ",
//! );
//! assert_eq!(run.statuses(), ["b@example.net=rejected"]);
//! ```

use std::time::{Duration, Instant};

use smtp_core::address::{Mailbox, ReversePath};
use smtp_core::ehlo::ClientId;
use smtp_core::{Client, Config, Envelope, Error, Event, MessageOutcome, TlsPolicy};

/// A client session under test, its virtual clock and what it did.
pub struct Run {
    /// The client under test.
    pub client: Client,
    /// The virtual clock.
    pub now: Instant,
    /// What the client wrote that no `C:` line has matched yet.
    pub wire: Vec<u8>,
    /// Every event, in order.
    pub events: Vec<Event>,
    /// The body given on every `BodyWanted`, in chunks of `chunk` bytes.
    pub body: Vec<u8>,
    /// The size of the body chunks.
    pub chunk: usize,
    /// Answer `StartTls` with `tls_established` at once.
    pub auto_tls: bool,
}

/// A test configuration: EHLO `client.example`, policy None.
pub fn config() -> Config {
    Config::new(ClientId::parse("client.example").unwrap()).with_tls(TlsPolicy::None)
}

/// A mailbox from a literal (panics on an invalid one: a test bug).
pub fn mailbox(s: &str) -> Mailbox {
    Mailbox::parse(s).unwrap()
}

/// An envelope from literals.
pub fn envelope(from: &str, to: &[&str]) -> Envelope {
    Envelope::new(
        ReversePath::parse(from).unwrap(),
        to.iter().map(|t| mailbox(t)).collect(),
    )
}

impl Run {
    /// A new session at an arbitrary starting instant.
    pub fn new(config: Config) -> Self {
        // The clock is virtual: any starting instant will do.
        let now = Instant::now();
        Self {
            client: Client::new(config, now),
            now,
            wire: Vec::new(),
            events: Vec::new(),
            body: b"Subject: test\r\n\r\nHello.\r\n".to_vec(),
            chunk: 4096,
            auto_tls: true,
        }
    }

    /// Queues a message.
    pub fn send(&mut self, env: Envelope) {
        self.client.send(self.now, env).expect("send");
        self.pump();
    }

    /// Drains output and events, answering BodyWanted, DerivationWanted and StartTls.
    pub fn pump(&mut self) {
        loop {
            let mut progressed = self.client.poll_transmit(&mut self.wire);
            while let Some(event) = self.client.poll_event() {
                progressed = true;
                match &event {
                    Event::BodyWanted(_) => {
                        let body = self.body.clone();
                        for piece in body.chunks(self.chunk.max(1)) {
                            if self.client.body_chunk(self.now, piece).is_err() {
                                break;
                            }
                            let _ = self.client.poll_transmit(&mut self.wire);
                        }
                        let _ = self.client.body_end(self.now);
                    }
                    Event::DerivationWanted => {
                        if let Some(job) = self.client.take_derivation() {
                            self.client
                                .derivation_done(self.now, job.run())
                                .expect("derivation pending");
                        }
                    }
                    Event::StartTls if self.auto_tls => {
                        let _ = self.client.poll_transmit(&mut self.wire);
                        self.client
                            .tls_established(self.now, verified_tls())
                            .expect("upgrade pending");
                    }
                    _ => {}
                }
                self.events.push(event);
            }
            if !progressed {
                break;
            }
        }
    }

    /// Feeds raw server bytes.
    pub fn input(&mut self, bytes: &[u8]) {
        self.client.handle_input(self.now, bytes);
        self.pump();
    }

    /// Takes everything the client wrote so far as text.
    pub fn take_wire(&mut self) -> String {
        String::from_utf8_lossy(&std::mem::take(&mut self.wire)).into_owned()
    }

    /// Plays a transcript (panics on a mismatch, naming both sides, and on
    /// anything the client sent after the transcript's last line).
    pub fn script(&mut self, script: &str) {
        self.play(script);
        self.check_nothing_more();
    }

    /// Plays a transcript like [`script`](Self::script), but returns what the
    /// client sent after its last line, for the caller to check, instead of
    /// failing on it.
    #[must_use = "the client's output after the script is for the caller to check"]
    pub fn script_and_rest(&mut self, script: &str) -> String {
        self.play(script);
        self.pump();
        self.take_wire()
    }

    fn play(&mut self, script: &str) {
        let mut server = String::new();
        let mut client: Vec<&str> = Vec::new();
        for raw in script.lines() {
            let line = raw.trim_start();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some(s) = line.strip_prefix("S:") {
                self.check_client(&client);
                client.clear();
                server.push_str(s.strip_prefix(' ').unwrap_or(s));
                server.push_str("\r\n");
            } else if let Some(c) = line.strip_prefix("C:") {
                if !server.is_empty() {
                    self.input(std::mem::take(&mut server).as_bytes());
                }
                client.push(c.strip_prefix(' ').unwrap_or(c));
            } else {
                panic!("script line must start with S: or C: — {raw:?}");
            }
        }
        if !server.is_empty() {
            self.input(server.as_bytes());
        }
        self.check_client(&client);
    }

    /// After the script's last line the client must have sent nothing the
    /// script does not show: a script ending in `S: 250 queued` would
    /// otherwise pass whatever the client then wrote.
    fn check_nothing_more(&mut self) {
        self.pump();
        if self.wire.is_empty() {
            return;
        }
        let leftover = self.take_wire();
        panic!(
            "client sent more than the script expects after its last line \
             (add the C: lines that follow):\n{}\nraw: {leftover:?}",
            leftover
                .split_terminator("\r\n")
                .collect::<Vec<_>>()
                .join("\n"),
        );
    }

    fn check_client(&mut self, expected: &[&str]) {
        self.pump();
        if expected.is_empty() {
            return;
        }
        let wire = self.take_wire();
        let got: Vec<&str> = wire.split_terminator("\r\n").collect();
        let ok = got.len() == expected.len()
            && got
                .iter()
                .zip(expected)
                .all(|(g, e)| match e.strip_suffix('*') {
                    Some(prefix) => g.starts_with(prefix),
                    None => g == e,
                });
        assert!(
            ok,
            "client sent:\n{}\nscript expected:\n{}",
            got.join("\n"),
            expected.join("\n")
        );
        assert!(
            wire.ends_with("\r\n"),
            "client output does not end in CRLF: {wire:?}"
        );
    }

    /// Moves the virtual clock to the next deadline and fires it.
    pub fn expire(&mut self) -> Duration {
        let at = self.client.poll_timeout().expect("a deadline is armed");
        let waited = at - self.now;
        self.now = at;
        self.client.handle_timeout(self.now);
        self.pump();
        waited
    }

    /// Moves the virtual clock by `by` and fires any deadline passed.
    pub fn advance(&mut self, by: Duration) {
        self.now += by;
        self.client.handle_timeout(self.now);
        self.pump();
    }

    /// The server hangs up.
    pub fn close(&mut self) {
        self.client.handle_close(self.now);
        self.pump();
    }

    /// Every message result so far.
    pub fn outcomes(&self) -> Vec<MessageOutcome> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::MessageResult(m) => Some(m.clone()),
                _ => None,
            })
            .collect()
    }

    /// Each recipient of each message as `address=status`, in order.
    pub fn statuses(&self) -> Vec<String> {
        self.outcomes()
            .iter()
            .flat_map(|m| {
                m.recipients
                    .iter()
                    .map(|r| format!("{}={}", r.recipient, r.status))
            })
            .collect()
    }

    /// The error that ended the session, if one did.
    pub fn failure(&self) -> Option<&Error> {
        self.events.iter().find_map(|e| match e {
            Event::Failed(err) => Some(err),
            _ => None,
        })
    }

    /// True once the session closed cleanly.
    pub fn closed(&self) -> bool {
        self.events.iter().any(|e| matches!(e, Event::Closed))
    }
}

/// What a handshake that verified the certificate reports (the harness's
/// immediate upgrade).
pub fn verified_tls() -> smtp_core::delivery::TlsInfo {
    smtp_core::delivery::TlsInfo {
        version: "TLSv1.3".into(),
        verified: true,
        ..smtp_core::delivery::TlsInfo::default()
    }
}

#[cfg(test)]
mod tests {
    use std::panic::{AssertUnwindSafe, catch_unwind};

    use super::*;

    /// One message, QUIT requested: after the end-of-data reply the client
    /// sends `QUIT`.
    fn quitting() -> Run {
        let mut run = Run::new(config());
        run.send(envelope("a@example.org", &["b@example.net"]));
        run.client.quit(run.now);
        run
    }

    const UNTIL_QUEUED: &str = "
        S: 220 mx.example.net
        C: EHLO client.example
        S: 250 mx.example.net
        C: MAIL FROM:<a@example.org>
        S: 250 ok
        C: RCPT TO:<b@example.net>
        S: 250 ok
        C: DATA
        S: 354 go
        C: Subject: test
        C: 
        C: Hello.
        C: .
        S: 250 queued
    ";

    /// The panic message of `f`, which must panic.
    fn panic_message(f: impl FnOnce()) -> String {
        let payload = catch_unwind(AssertUnwindSafe(f)).expect_err("the script must fail");
        match (
            payload.downcast_ref::<String>(),
            payload.downcast_ref::<&str>(),
        ) {
            (Some(s), _) => s.clone(),
            (None, Some(s)) => (*s).to_owned(),
            (None, None) => panic!("a panic without a message"),
        }
    }

    #[test]
    fn a_script_fails_when_the_client_sends_more_after_its_last_line() {
        let mut run = quitting();
        let message = panic_message(|| run.script(UNTIL_QUEUED));
        assert!(
            message.contains("after its last line") && message.contains("QUIT"),
            "{message}"
        );
        assert!(message.contains(r#"raw: "QUIT\r\n""#), "{message}");
    }

    #[test]
    fn a_script_that_shows_every_client_line_passes() {
        let mut run = quitting();
        run.script(&format!("{UNTIL_QUEUED}\n        C: QUIT"));
        assert_eq!(run.statuses(), ["b@example.net=accepted"]);
    }

    #[test]
    fn script_and_rest_hands_what_follows_to_the_caller() {
        let mut run = quitting();
        assert_eq!(run.script_and_rest(UNTIL_QUEUED), "QUIT\r\n");
        assert!(run.wire.is_empty());
    }

    #[test]
    fn a_session_opening_alone_fails_when_the_client_goes_on() {
        // A script split in two is two scripts: the first must show its own
        // client lines, not leave them to the second.
        let mut run = quitting();
        let message = panic_message(|| {
            run.script(
                "
                S: 220 mx.example.net
                C: EHLO client.example
                S: 250 mx.example.net
                ",
            );
        });
        assert!(message.contains("MAIL FROM:<a@example.org>"), "{message}");
    }
}
