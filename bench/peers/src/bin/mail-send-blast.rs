//! smtp-tls's `blast` with mail-send: one plaintext `SmtpClient` from
//! `SmtpClientBuilder::connect_plain`, every message sent on it in turn.
//! `PEER_NODELAY=1` sets TCP_NODELAY on the client's public `stream`.
//!
//! usage: mail-send-blast HOST:PORT COUNT SIZE

use std::time::Instant;

use mail_send::SmtpClientBuilder;
use mail_send::smtp::message::Message;
use smtp_bench_peers::{Args, body, nodelay, report};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse("mail-send-blast")?;
    let body = body(args.size);
    let start = Instant::now();
    let mut client = SmtpClientBuilder::new(args.host.as_str(), args.port)?
        .implicit_tls(false)
        .connect_plain()
        .await?;
    if nodelay() {
        client.stream.set_nodelay(true)?;
    }
    let mut accepted = 0;
    for _ in 0..args.count {
        let message = Message::new("blast@example.org", ["sink@example.net"], body.as_slice());
        match client.send(message).await {
            Ok(_) => accepted += 1,
            Err(e) => {
                eprintln!("mail-send-blast: {e}");
                break;
            }
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    client.quit().await.ok();
    report(&args, accepted, elapsed)
}
