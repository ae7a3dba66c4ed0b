//! smtp-tls's `blast` with lettre: `AsyncSmtpTransport<Tokio1Executor>` and
//! its connection pool held to one connection, so one session carries all the
//! messages (lettre sends a NOOP before reusing a pooled connection).
//!
//! usage: lettre-blast HOST:PORT COUNT SIZE

use std::time::Instant;

use lettre::address::Envelope;
use lettre::transport::smtp::PoolConfig;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use smtp_bench_peers::{Args, body, nodelay, report};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse("lettre-blast")?;
    if nodelay() {
        return Err("lettre has no setting for TCP_NODELAY; PEER_NODELAY=1 not supported".into());
    }
    let body = body(args.size);
    let envelope = Envelope::new(
        Some("blast@example.org".parse()?),
        vec!["sink@example.net".parse()?],
    )?;
    let mailer = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&args.host)
        .port(args.port)
        .pool_config(PoolConfig::new().max_size(1))
        .build();
    let start = Instant::now();
    let mut accepted = 0;
    for _ in 0..args.count {
        match mailer.send_raw(&envelope, &body).await {
            Ok(_) => accepted += 1,
            Err(e) => {
                eprintln!("lettre-blast: {e}");
                break;
            }
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    mailer.shutdown().await;
    report(&args, accepted, elapsed)
}
