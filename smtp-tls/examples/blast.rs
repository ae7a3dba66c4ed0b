//! Sends many messages through one session as fast as the server takes
//! them, for the end-to-end benchmark (`bench/run.sh`).
//!
//! usage: blast HOST:PORT COUNT SIZE

use std::time::Instant;

use smtp_core::address::{Mailbox, ReversePath};
use smtp_core::delivery::MemoryBody;
use smtp_core::{Envelope, TlsPolicy};
use smtp_tls::{Outgoing, Server};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, target, count, size] = args.as_slice() else {
        return Err("usage: blast HOST:PORT COUNT SIZE".into());
    };
    let (host, port) = target.rsplit_once(':').ok_or("HOST:PORT")?;
    let (count, size): (usize, usize) = (count.parse()?, size.parse()?);
    let mut body = b"Subject: blast\r\n\r\n".to_vec();
    while body.len() < size {
        body.extend_from_slice(
            // 80 bytes a line, as smtp-source sends: the sink's work is per line.
            b"012345678901234567890123456789012345678901234567890123456789012345678901234567\r\n",
        );
    }
    body.truncate(size.max(20));
    body.extend_from_slice(b"\r\n");
    let from = ReversePath::parse("blast@example.org")?;
    let to = vec![Mailbox::parse("sink@example.net")?];
    // One copy of the body, shared by every message.
    let body = MemoryBody::new(body);
    let messages = (0..count)
        .map(|_| Outgoing {
            envelope: Envelope::new(from.clone(), to.clone()),
            body: Box::new(body.clone()),
        })
        .collect();
    let server = Server::new(host, port.parse()?).with_policy(TlsPolicy::None);
    let start = Instant::now();
    let delivery = server.send(messages, &mut |_| {}).await?;
    let elapsed = start.elapsed().as_secs_f64();
    let accepted = delivery
        .session
        .messages
        .iter()
        .filter(|m| m.all_accepted())
        .count();
    println!(
        "{accepted}/{count} messages of {size} bytes in {elapsed:.3} s: {:.0} messages/s, {:.1} MiB/s",
        accepted as f64 / elapsed,
        (accepted * size) as f64 / elapsed / 1048576.0
    );
    Ok(())
}
