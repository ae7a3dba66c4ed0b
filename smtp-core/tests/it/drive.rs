//! The transport-driven loop, over an in-memory transport whose server
//! answers each read with the next scripted chunk.

use std::collections::VecDeque;
use std::io;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use smtp_core::delivery::{
    BodySource, MemoryBody, ReadOutcome, TlsFailure, TlsInfo, Transport, drive,
};
use smtp_core::{Client, Error, MessageError, RecipientStatus};

use smtp_testkit::sansio::{config, envelope};

/// The most virtual time a session may spend waiting on the silent
/// server (see [`Scripted::read`]).
const SILENCE_LIMIT: Duration = Duration::from_secs(3600);

struct Scripted {
    now: Instant,
    /// Where the virtual clock started.
    start: Instant,
    replies: VecDeque<&'static str>,
    written: Vec<u8>,
    /// Each `write_all` call's bytes, to check what shares a write.
    writes: Vec<Vec<u8>>,
    /// How many server replies had been read at each write.
    reads_at_write: Vec<usize>,
    reads: usize,
}

#[async_trait]
impl Transport for Scripted {
    fn now(&self) -> Instant {
        self.now
    }

    async fn read(&mut self, buf: &mut [u8], deadline: Option<Instant>) -> io::Result<ReadOutcome> {
        match self.replies.pop_front() {
            Some(r) => {
                self.reads += 1;
                buf[..r.len()].copy_from_slice(r.as_bytes());
                Ok(ReadOutcome::Data(r.len()))
            }
            None => {
                // Silence: jump the clock to the deadline. A client that
                // never gives up on a silent server would loop here for
                // ever; an hour of virtual time, more than every default
                // limit together, fails the test instead.
                self.now = deadline.unwrap_or(self.now + Duration::from_secs(1));
                assert!(
                    self.now - self.start < SILENCE_LIMIT,
                    "the client waited {SILENCE_LIMIT:?} of virtual time on a silent server"
                );
                Ok(ReadOutcome::DeadlinePassed)
            }
        }
    }

    async fn write_all(&mut self, data: &[u8], _deadline: Instant) -> io::Result<()> {
        self.written.extend_from_slice(data);
        self.writes.push(data.to_vec());
        self.reads_at_write.push(self.reads);
        Ok(())
    }

    async fn start_tls(&mut self, _deadline: Instant) -> Result<TlsInfo, TlsFailure> {
        Err("not in this test".into())
    }

    fn tls_info(&self) -> Option<TlsInfo> {
        None
    }
}

struct Failing;

#[async_trait]
impl BodySource for Failing {
    async fn read(&mut self, _buf: &mut [u8]) -> io::Result<usize> {
        Err(io::Error::other("disk on fire"))
    }
    async fn rewind(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn block_on<F: Future>(f: F) -> F::Output {
    // The transports here never wait, so polling in a loop finishes.
    let mut f = std::pin::pin!(f);
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
}

fn transport(replies: &[&'static str]) -> Scripted {
    #[allow(clippy::disallowed_methods)] // the virtual clock starts anywhere
    let now = Instant::now();
    Scripted {
        now,
        start: now,
        replies: replies.iter().copied().collect(),
        written: Vec::new(),
        writes: Vec::new(),
        reads_at_write: Vec::new(),
        reads: 0,
    }
}

#[test]
fn delivers_and_quits() {
    let mut t = transport(&[
        "220 mx\r\n",
        "250-mx\r\n250 PIPELINING\r\n",
        "250 ok\r\n250 ok\r\n354 go\r\n",
        "250 queued\r\n221 bye\r\n",
    ]);
    let mut client = Client::new(config(), t.now);
    client
        .send(t.now, envelope("a@example.org", &["b@example.net"]))
        .unwrap();
    client.quit(t.now);
    let mut bodies: Vec<Box<dyn BodySource>> =
        vec![Box::new(MemoryBody::new("Subject: hi\n\n.dot\n"))];
    let report = block_on(drive(&mut client, &mut t, &mut bodies, &mut |_| {}));
    assert!(report.error.is_none(), "{:?}", report.error);
    assert!(report.messages[0].all_accepted());
    let wire = String::from_utf8(t.written).unwrap();
    assert!(
        wire.ends_with("Subject: hi\r\n\r\n..dot\r\n.\r\nQUIT\r\n"),
        "{wire}"
    );
}

#[test]
fn unreadable_body_is_never_terminated() {
    let mut t = transport(&[
        "220 mx\r\n",
        "250-mx\r\n250 PIPELINING\r\n",
        "250 ok\r\n250 ok\r\n354 go\r\n",
    ]);
    let mut client = Client::new(config(), t.now);
    client
        .send(t.now, envelope("a@example.org", &["b@example.net"]))
        .unwrap();
    let mut bodies: Vec<Box<dyn BodySource>> = vec![Box::new(Failing)];
    let report = block_on(drive(&mut client, &mut t, &mut bodies, &mut |_| {}));
    assert!(matches!(
        report.error,
        Some(Error::Message(MessageError::Unreadable { .. }))
    ));
    assert_eq!(
        report.messages[0].recipients[0].status,
        RecipientStatus::Deferred
    );
    let wire = String::from_utf8(t.written).unwrap();
    assert!(!wire.contains("\r\n.\r\n"), "{wire}");
    assert!(report.error.unwrap().to_string().contains("disk on fire"));
}

#[test]
fn silent_server_times_out() {
    let mut t = transport(&["220 mx\r\n"]);
    let mut client = Client::new(config(), t.now);
    client
        .send(t.now, envelope("a@example.org", &["b@example.net"]))
        .unwrap();
    let mut bodies: Vec<Box<dyn BodySource>> = vec![Box::new(MemoryBody::new("x"))];
    let report = block_on(drive(&mut client, &mut t, &mut bodies, &mut |_| {}));
    assert!(matches!(report.error, Some(Error::Timeout { .. })));
    assert_eq!(
        report.messages[0].recipients[0].status,
        RecipientStatus::Deferred
    );
}

#[test]
fn until_idle_stops_after_setup_and_after_each_batch() {
    use smtp_core::delivery::{Driver, Until};
    let mut t = transport(&[
        "220 mx\r\n",
        "250-mx\r\n250 PIPELINING\r\n",
        "250 ok\r\n250 ok\r\n354 go\r\n",
        "250 queued\r\n",
    ]);
    let mut client = Client::new(config(), t.now);
    let mut driver = Driver::new();
    let mut none: Vec<Box<dyn BodySource>> = Vec::new();
    block_on(driver.run(
        &mut client,
        &mut t,
        none.as_mut_slice(),
        Until::Idle,
        &mut |_| {},
    ));
    assert!(client.is_idle());
    assert_eq!(
        String::from_utf8_lossy(&t.written),
        "EHLO client.example\r\n"
    );
    client
        .send(t.now, envelope("a@example.org", &["b@example.net"]))
        .unwrap();
    assert!(!client.is_idle());
    let mut bodies: Vec<Box<dyn BodySource>> = vec![Box::new(MemoryBody::new("x\n"))];
    let mut results = Vec::new();
    block_on(driver.run(
        &mut client,
        &mut t,
        bodies.as_mut_slice(),
        Until::Idle,
        &mut |e| {
            if let smtp_core::Event::MessageResult(m) = e {
                results.push(m);
            }
        },
    ));
    assert!(client.is_idle() && !client.is_closed());
    assert!(results[0].all_accepted());
    // Still open: no QUIT went out.
    assert!(String::from_utf8_lossy(&t.written).ends_with("x\r\n.\r\n"));
}

#[test]
fn refresh_takes_in_a_421_sent_while_idle_without_writing() {
    use smtp_core::delivery::{Driver, Until};
    let mut t = transport(&["220 mx\r\n", "250 mx\r\n"]);
    let mut client = Client::new(config(), t.now);
    let mut driver = Driver::new();
    let mut none: Vec<Box<dyn BodySource>> = Vec::new();
    block_on(driver.run(
        &mut client,
        &mut t,
        none.as_mut_slice(),
        Until::Idle,
        &mut |_| {},
    ));
    let written = t.written.len();
    // Nothing arrived: still usable, and the clock did not move past "now".
    assert!(block_on(driver.refresh(&mut client, &mut t, &mut |_| {})));
    t.replies.push_back("421 4.4.2 mx idle timeout\r\n");
    let mut events = Vec::new();
    assert!(!block_on(
        driver.refresh(&mut client, &mut t, &mut |e| events.push(e))
    ));
    assert!(client.is_closed());
    assert!(
        matches!(events.last(), Some(smtp_core::Event::Failed(Error::Rejected { reply, .. })) if reply.code().as_u16() == 421),
        "{events:?}"
    );
    assert_eq!(t.written.len(), written, "no NOOP, nothing written");
}

/// Sends "one" to b@ and "two" to c@ over `t`, then QUIT.
fn two_messages_then_quit(t: &mut Scripted) -> smtp_core::delivery::SessionReport {
    let mut client = Client::new(config(), t.now);
    for to in ["b@example.net", "c@example.net"] {
        client
            .send(t.now, envelope("a@example.org", &[to]))
            .unwrap();
    }
    client.quit(t.now);
    let mut bodies: Vec<Box<dyn BodySource>> = vec![
        Box::new(MemoryBody::new("one\n")),
        Box::new(MemoryBody::new("two\n")),
    ];
    block_on(drive(&mut client, t, &mut bodies, &mut |_| {}))
}

/// The fast path (RFC 2920): a small body, the end of its data and the
/// next message's MAIL/RCPT/DATA go out in one write; so do the last body,
/// its end of data and QUIT.
#[test]
fn end_of_data_and_the_next_envelope_share_one_write() {
    let mut t = transport(&[
        "220 mx\r\n",
        "250-mx\r\n250 PIPELINING\r\n",
        "250 ok\r\n250 ok\r\n354 go\r\n",
        "250 queued 1\r\n250 ok\r\n250 ok\r\n354 go\r\n",
        "250 queued 2\r\n221 bye\r\n",
    ]);
    let report = two_messages_then_quit(&mut t);
    assert!(report.messages.iter().all(|m| m.all_accepted()));
    let writes: Vec<String> = t
        .writes
        .iter()
        .map(|w| String::from_utf8_lossy(w).into_owned())
        .collect();
    assert!(
        writes.contains(
            &"one\r\n.\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<c@example.net>\r\nDATA\r\n"
                .to_owned()
        ),
        "{writes:?}"
    );
    assert_eq!(
        writes.last().map(String::as_str),
        Some("two\r\n.\r\nQUIT\r\n"),
        "{writes:?}"
    );
}

/// With CHUNKING there is no 354 to wait for: `BDAT … LAST` with its data
/// and the next message's envelope and BDAT all go before any reply.
#[test]
fn with_chunking_messages_go_out_without_waiting_for_replies() {
    let mut t = transport(&[
        "220 mx\r\n",
        "250-mx\r\n250-CHUNKING\r\n250 PIPELINING\r\n",
        "250 ok\r\n250 ok\r\n250 queued 1\r\n250 ok\r\n250 ok\r\n250 queued 2\r\n",
        "221 bye\r\n",
    ]);
    let report = two_messages_then_quit(&mut t);
    assert!(report.error.is_none(), "{:?}", report.error);
    assert!(report.messages.iter().all(|m| m.all_accepted()));
    // What was written after reading only the greeting and the EHLO reply.
    let before_replies: String = t
        .writes
        .iter()
        .zip(&t.reads_at_write)
        .filter(|(_, reads)| **reads == 2)
        .map(|(w, _)| String::from_utf8_lossy(w).into_owned())
        .collect();
    assert_eq!(
        before_replies,
        "MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nBDAT 5 LAST\r\none\r\n\
         MAIL FROM:<a@example.org>\r\nRCPT TO:<c@example.net>\r\nBDAT 5 LAST\r\ntwo\r\n"
    );
}

/// A body made on the fly, `lines` lines of 78 octets.
struct Generated {
    lines: usize,
    sent: usize,
}

#[async_trait]
impl BodySource for Generated {
    async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let line =
            b"0123456789012345678901234567890123456789012345678901234567890123456789012345\r\n";
        let mut n = 0;
        while self.sent < self.lines && n + line.len() <= buf.len() {
            buf[n..n + line.len()].copy_from_slice(line);
            n += line.len();
            self.sent += 1;
        }
        Ok(n)
    }
    async fn rewind(&mut self) -> io::Result<()> {
        self.sent = 0;
        Ok(())
    }
}

/// Streaming: a body goes out in bounded writes as it is read, however
/// large the message (the client never holds more than about one chunk).
#[test]
fn a_large_body_streams_in_bounded_writes() {
    let mut t = transport(&[
        "220 mx\r\n",
        "250-mx\r\n250 PIPELINING\r\n",
        "250 ok\r\n250 ok\r\n354 go\r\n",
        "250 queued\r\n221 bye\r\n",
    ]);
    let mut client = Client::new(config(), t.now);
    client
        .send(t.now, envelope("a@example.org", &["b@example.net"]))
        .unwrap();
    client.quit(t.now);
    let lines = 4 * 1024 * 1024 / 78;
    let mut bodies: Vec<Box<dyn BodySource>> = vec![Box::new(Generated { lines, sent: 0 })];
    let report = block_on(drive(&mut client, &mut t, &mut bodies, &mut |_| {}));
    assert!(report.messages[0].all_accepted(), "{report:?}");
    assert!(t.written.len() > lines * 78, "the whole body went out");
    let largest = t.writes.iter().map(Vec::len).max().unwrap_or(0);
    assert!(
        largest <= 64 * 1024 + 1024,
        "a write of {largest} bytes: the body was buffered, not streamed"
    );
    assert!(t.writes.len() > 60, "{} writes", t.writes.len());
}

/// Every event's fields as text, from a subscriber installed for one test.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl tracing::Subscriber for Captured {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        struct Fields(String);
        impl tracing::field::Visit for Fields {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                self.0.push_str(&format!(" {}={value:?}", field.name()));
            }
        }
        let mut fields = Fields(format!(
            "{} {}",
            event.metadata().level(),
            event.metadata().target()
        ));
        event.record(&mut fields);
        self.0.lock().unwrap().push(fields.0);
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

#[test]
fn a_session_is_observable_through_tracing_without_its_secrets() {
    use smtp_core::sasl::{AuthChoice, Credentials, Secret};
    let captured = Captured::default();
    let _guard = tracing::subscriber::set_default(captured.clone());
    let mut t = transport(&[
        "220 mx\r\n",
        "250-mx\r\n250 AUTH PLAIN\r\n",
        "235 2.7.0 ok\r\n",
        "250 ok\r\n",
        "250 ok\r\n",
        "550 5.1.1 no such user\r\n",
        "354 go\r\n",
        "250 queued\r\n",
        "221 bye\r\n",
    ]);
    let credentials = Credentials::Password {
        username: "alice".into(),
        password: Secret::new("hunter2-very-secret"),
    };
    let config = config()
        .with_tls(smtp_core::TlsPolicy::None)
        .with_credentials(
            credentials,
            AuthChoice::Explicit(smtp_core::sasl::Mechanism::Plain),
            vec![7; 24],
        )
        .with_transcript(true);
    let mut client = Client::new(config, t.now);
    client
        .send(
            t.now,
            envelope("a@example.org", &["b@example.net", "gone@example.net"]),
        )
        .unwrap();
    client.quit(t.now);
    let mut bodies: Vec<Box<dyn BodySource>> =
        vec![Box::new(MemoryBody::new("Subject: hi\n\nhi\n"))];
    let report = block_on(drive(&mut client, &mut t, &mut bodies, &mut |_| {}));
    assert!(report.error.is_none(), "{:?}", report.error);
    let log = captured.0.lock().unwrap().join("\n");
    assert!(log.contains("greeting"), "{log}");
    assert!(log.contains("authenticated"), "{log}");
    assert!(
        log.contains("recipient=b@example.net") && log.contains("status=\"accepted\""),
        "{log}"
    );
    assert!(
        log.contains("recipient=gone@example.net") && log.contains("code=550"),
        "{log}"
    );
    assert!(
        log.contains("TRACE smtp_core::transcript") && log.contains("MAIL FROM:<a@example.org>"),
        "{log}"
    );
    // Neither the password nor its base64 form (as AUTH PLAIN sends it).
    assert!(!log.contains("hunter2"), "{log}");
    assert!(!log.contains("aHVudGVyMi"), "{log}");
    assert!(!log.contains("AGFsaWNlAGh1bnRlcj"), "{log}");
}
