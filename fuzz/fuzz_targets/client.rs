//! The whole client against arbitrary server bytes, in arbitrary chunks,
//! with or without QUIT requested, PIPELINING and CHUNKING allowed or not,
//! ending in a close, a timeout or a stalled write: never panics, and every
//! message ends with exactly one result holding one outcome per recipient
//! (the invariant of `Client`), before any clean `Closed`.
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use smtp_core::address::{Mailbox, ReversePath};
use smtp_core::ehlo::ClientId;
use smtp_core::{Client, Config, Envelope, Event, TlsPolicy};

/// Counts results and checks each as it comes.
#[derive(Default)]
struct Tally {
    messages: [u32; 2],
    recipients: [u32; 2],
    closed: bool,
}

impl Tally {
    fn see(&mut self, client: &mut Client, now: Instant, event: Event) {
        match event {
            Event::BodyWanted(_) => {
                let _ = client.body_chunk(now, b"Subject: x\n\n.body\n");
                let _ = client.body_end(now);
            }
            Event::StartTls => {
                let info = smtp_core::delivery::TlsInfo {
                    verified: true,
                    ..Default::default()
                };
                let _ = client.tls_established(now, info);
            }
            Event::DerivationWanted => {
                if let Some(job) = client.take_derivation() {
                    let _ = client.derivation_done(now, job.run());
                }
            }
            Event::RecipientResult { message, .. } => {
                self.recipients[message.index() as usize] += 1;
            }
            Event::MessageResult(m) => {
                assert_eq!(m.recipients.len(), 2);
                assert!(!self.closed, "a result after Closed");
                self.messages[m.message.index() as usize] += 1;
            }
            Event::Closed => {
                assert_eq!(self.messages, [1, 1], "Closed before every result");
                self.closed = true;
            }
            _ => {}
        }
    }

    fn drain(&mut self, client: &mut Client, now: Instant) {
        while let Some(event) = client.poll_event() {
            self.see(client, now, event);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, data)) = data.split_first() else { return };
    let Some((&cut, data)) = data.split_first() else { return };
    let mut now = Instant::now();
    let config = Config::new(ClientId::localhost())
        .with_tls(TlsPolicy::Optional)
        .with_extensions(flags & 1 != 0, flags & 2 != 0);
    let mut client = Client::new(config, now);
    let to = vec![
        Mailbox::parse("a@example.net").unwrap(),
        Mailbox::parse("b@example.net").unwrap(),
    ];
    let envelope = Envelope::new(ReversePath::Null, to);
    client.send(now, envelope.clone()).unwrap();
    client.send(now, envelope).unwrap();
    if flags & 4 != 0 {
        client.quit(now);
    }
    let mut tally = Tally::default();
    let mut out = Vec::new();
    for chunk in data.chunks(usize::from(cut).max(1)) {
        client.handle_input(now, chunk);
        tally.drain(&mut client, now);
        out.clear();
        let _ = client.poll_transmit(&mut out);
        now += Duration::from_secs(1);
        client.handle_timeout(now);
        tally.drain(&mut client, now);
    }
    match flags >> 6 {
        0 => client.handle_close(now),
        1 => client.handle_write_timeout(now, Duration::from_secs(180)),
        _ => {
            while let Some(at) = client.poll_timeout() {
                now = now.max(at);
                client.handle_timeout(now);
                tally.drain(&mut client, now);
            }
            client.handle_close(now);
        }
    }
    tally.drain(&mut client, now);
    assert!(client.is_closed());
    assert_eq!(tally.messages, [1, 1], "every message gets exactly one result");
    assert_eq!(tally.recipients, [2, 2], "every recipient exactly one outcome");
});
