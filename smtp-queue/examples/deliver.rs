//! Enqueue three messages and deliver them through a relay, printing the
//! runner's events as they happen.
//!
//! ```text
//! cargo run -p smtp-queue --example deliver                  # a local greylisting test relay
//! cargo run -p smtp-queue --example deliver -- HOST PORT     # your relay (plaintext, no AUTH)
//! ```
//!
//! Without arguments it starts smtp-testkit's flaky server on 127.0.0.1,
//! which greylists each recipient's first attempt: the first round defers
//! them, and a later one, a second on, delivers them. The queue lives in a
//! temporary directory.

use std::time::{Duration, SystemTime};

use smtp_core::TlsPolicy;
use smtp_core::delivery::MemoryBody;
use smtp_queue::{
    Body, MessageOptions, NewMessage, RecipientState, RunEvent, Runner, RunnerConfig, Schedule,
    SqliteStore, Stop, Store,
};
use smtp_testkit::flaky::{FlakyConfig, FlakyServer};
use smtp_tls::Server;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // Kept alive for the run when it is ours.
    let mut local = None;
    let relay = match args.as_slice() {
        [host, port] => Server::new(host.as_str(), port.parse()?),
        _ => {
            let server = FlakyServer::start(FlakyConfig {
                greylist: Some(Duration::from_secs(1)),
                ..FlakyConfig::default()
            })
            .await?;
            let relay = Server::new("127.0.0.1", server.addr().port());
            local = Some(server);
            relay
        }
    }
    .with_policy(TlsPolicy::None);

    let dir = tempfile::tempdir()?;
    let store = std::sync::Arc::new(SqliteStore::open(dir.path()).await?);
    let messages = (1..=3)
        .map(|n| NewMessage {
            from: "alice@example.com".into(),
            to: vec![format!("bob{n}@example.net")],
            body: Body::Source(Box::new(MemoryBody::new(format!(
                "From: alice@example.com\r\nTo: bob{n}@example.net\r\nSubject: note {n}\r\n\r\nHello.\r\n"
            )))),
            options: MessageOptions::default(),
        })
        .collect();
    // On disk once this returns.
    let ids = store.enqueue(messages, SystemTime::now()).await?;
    println!(
        "enqueued {} messages in {}",
        ids.len(),
        dir.path().display()
    );

    // Retries a second apart, for the example; the default is Postfix's.
    let schedule = Schedule {
        first: Duration::from_secs(1),
        max: Duration::from_secs(2),
        ..Schedule::default()
    };
    let runner = Runner::new(
        store.clone(),
        relay,
        RunnerConfig::default().with_schedule(schedule),
    )
    .with_observer(|event| match event {
        RunEvent::Recorded {
            recipient, outcome, ..
        } => println!("{recipient}: {outcome:?}"),
        other => println!("{other:?}"),
    });
    let stop = Stop::new();
    let started = std::time::Instant::now();
    while store.stats().await?.count(RecipientState::Delivered) < 3
        && started.elapsed() < Duration::from_secs(30)
    {
        runner.run_due(&stop).await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!("{:?}", runner.summary());
    if let Some(server) = local {
        println!(
            "the test relay received {} messages",
            server.messages().len()
        );
    }
    Ok(())
}
