//! The whole client against arbitrary server bytes, in arbitrary chunks:
//! never panics, and every message ends with an outcome for every recipient.
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use smtp_core::address::{Mailbox, ReversePath};
use smtp_core::command::ClientId;
use smtp_core::{Client, Config, Envelope, Event, TlsPolicy};

fuzz_target!(|data: &[u8]| {
    let Some((&cut, data)) = data.split_first() else { return };
    let mut now = Instant::now();
    let config = Config::new(ClientId::localhost()).with_tls(TlsPolicy::Optional);
    let mut client = Client::new(config, now);
    let to = vec![
        Mailbox::parse("a@example.net").unwrap(),
        Mailbox::parse("b@example.net").unwrap(),
    ];
    let envelope = Envelope::new(ReversePath::Null, to);
    client.send(now, envelope.clone()).unwrap();
    client.send(now, envelope).unwrap();
    let mut out = Vec::new();
    let mut results = 0;
    for chunk in data.chunks(usize::from(cut).max(1)) {
        client.handle_input(now, chunk);
        while let Some(event) = client.poll_event() {
            match event {
                Event::BodyWanted(_) => {
                    let _ = client.body_chunk(now, b"Subject: x\n\n.body\n");
                    let _ = client.body_end(now);
                }
                Event::StartTls => {
                    let _ = client.tls_established(now);
                }
                Event::DerivationWanted => {
                    if let Some(job) = client.take_derivation() {
                        let _ = client.derivation_done(now, job.run());
                    }
                }
                Event::MessageResult(m) => {
                    assert_eq!(m.recipients.len(), 2);
                    results += 1;
                }
                _ => {}
            }
        }
        out.clear();
        let _ = client.poll_transmit(&mut out);
        now += Duration::from_secs(1);
        client.handle_timeout(now);
    }
    client.handle_close(now);
    while let Some(event) = client.poll_event() {
        if let Event::MessageResult(m) = event {
            assert_eq!(m.recipients.len(), 2);
            results += 1;
        }
    }
    assert_eq!(results, 2, "every message gets exactly one result");
});
