//! Criterion benchmarks of the protocol core: reply parsing, EHLO parsing,
//! DATA encoding, and the whole client state machine per message against an
//! in-memory server. `cargo bench -p smtp-core`; results in docs/performance.md.

use std::hint::black_box;
use std::time::Instant;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use smtp_core::address::{Mailbox, ReversePath};
use smtp_core::data::{BodyRules, DataEncoder};
use smtp_core::ehlo::Capabilities;
use smtp_core::ehlo::ClientId;
use smtp_core::reply::{ReplyLimits, Status, parse_reply};
use smtp_core::{Client, Config, Envelope, Event, TlsPolicy};

const EHLO: &[u8] = b"250-mx.example.net Hello client.example.org [192.0.2.1]\r\n250-SIZE 52428800\r\n250-8BITMIME\r\n\
250-PIPELINING\r\n250-PIPE_CONNECT\r\n250-AUTH PLAIN LOGIN CRAM-MD5\r\n250-CHUNKING\r\n250-STARTTLS\r\n\
250-ENHANCEDSTATUSCODES\r\n250-DSN\r\n250-SMTPUTF8\r\n250 HELP\r\n";

fn replies(c: &mut Criterion) {
    let limits = ReplyLimits::default();
    let mut g = c.benchmark_group("reply");
    g.throughput(Throughput::Elements(1));
    let one = b"250 2.0.0 Ok: queued as 4Xyz1234AbC\r\n";
    g.bench_function("single line", |b| {
        b.iter(|| parse_reply(black_box(one), &limits));
    });
    g.bench_function("EHLO, 12 lines", |b| {
        b.iter(|| parse_reply(black_box(EHLO), &limits));
    });
    let Ok(Status::Complete((_, reply))) = parse_reply(EHLO, &limits) else {
        panic!("the EHLO vector is a complete reply");
    };
    g.bench_function("capabilities from EHLO", |b| {
        b.iter(|| Capabilities::from_reply(black_box(&reply)));
    });
    g.finish();
}

fn text(lines: usize, leading_dot: bool) -> Vec<u8> {
    let mut body = Vec::with_capacity(lines * 78);
    for i in 0..lines {
        if leading_dot {
            body.push(b'.');
        }
        body.extend_from_slice(
            format!("Line {i:08} of a plain text message body, some words to fill it up.\r\n")
                .as_bytes(),
        );
    }
    body
}

fn data(c: &mut Criterion) {
    let mut g = c.benchmark_group("DATA encoding");
    for (name, body) in [
        ("plain text", text(200_000, false)),
        ("every line dot-stuffed", text(200_000, true)),
    ] {
        g.throughput(Throughput::Bytes(body.len() as u64));
        let mut out = Vec::with_capacity(body.len() * 2);
        g.bench_function(name, |b| {
            b.iter(|| {
                out.clear();
                let mut enc = DataEncoder::new(BodyRules::SEVEN_BIT);
                for chunk in body.chunks(64 * 1024) {
                    let _ = enc.encode(chunk, &mut out);
                }
                let _ = enc.finish(&mut out);
                black_box(out.len())
            });
        });
    }
    g.finish();
}

/// One session, many 1 KiB messages, pipelined: the client's cost per message.
fn session(c: &mut Criterion) {
    let mut g = c.benchmark_group("client");
    g.throughput(Throughput::Elements(1));
    let body = text(13, false);
    g.bench_function("message through a pipelined session", |b| {
        b.iter_custom(|iters| {
            #[allow(clippy::disallowed_methods)] // the benchmark's clock
            let now = Instant::now();
            let config = Config::new(ClientId::localhost()).with_tls(TlsPolicy::None);
            let mut client = Client::new(config, now);
            client.handle_input(now, b"220 mx\r\n250-mx\r\n250 PIPELINING\r\n");
            let from = ReversePath::parse("alice@example.org").expect("valid");
            let to = vec![Mailbox::parse("bob@example.net").expect("valid")];
            let mut out = Vec::new();
            #[allow(clippy::disallowed_methods)]
            let start = Instant::now();
            for _ in 0..iters {
                let _ = client.send(now, Envelope::new(from.clone(), to.clone()));
                client.handle_input(now, b"250 ok\r\n250 ok\r\n354 go\r\n");
                while let Some(e) = client.poll_event() {
                    if let Event::BodyWanted(_) = e {
                        let _ = client.body_chunk(now, &body);
                        let _ = client.body_end(now);
                    }
                }
                client.handle_input(now, b"250 queued\r\n");
                while client.poll_event().is_some() {}
                out.clear();
                let _ = client.poll_transmit(&mut out);
            }
            start.elapsed()
        });
    });
    g.finish();
}

criterion_group!(benches, replies, data, session);
criterion_main!(benches);
