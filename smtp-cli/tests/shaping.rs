//! Direct delivery's traffic shaping from the command line: the config
//! file's `[destinations]`, and the throttle a "slow down" leaves that
//! `smtp queue stats` (another process) shows.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use smtp_core::delivery::MemoryBody;
use smtp_queue::{Body, MessageOptions, NewMessage, SqliteStore, Store};
use smtp_testkit::dns::{DnsServer, Zone};
use smtp_testkit::flaky::{FlakyConfig, FlakyServer};

fn smtp(args: &[&str], home: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_smtp"))
        .args(args)
        .env_remove("SMTP_PASSWORD")
        .env("XDG_CONFIG_HOME", home)
        .output()
        .unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn queue_run_adapts_to_a_throttling_mx_and_queue_stats_shows_it() {
    const N: usize = 20;
    let rt = runtime();
    // One session at once, 5 messages a second.
    let server = rt
        .block_on(FlakyServer::start(FlakyConfig {
            max_sessions: Some(1),
            rate: Some((5, Duration::from_secs(1))),
            ..FlakyConfig::default()
        }))
        .unwrap();
    let zone = Zone::new()
        .mx("bulk.test", 10, "mx.bulk.test")
        .a("mx.bulk.test", "127.0.0.1".parse().unwrap());
    let dns = rt.block_on(DnsServer::start(zone)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let q = dir.path().join("q");
    rt.block_on(async {
        let store = SqliteStore::open(&q).await.unwrap();
        let batch = (0..N)
            .map(|i| NewMessage {
                from: "a@example.com".into(),
                to: vec![format!("r{i}@bulk.test")],
                body: Body::Source(Box::new(MemoryBody::new(format!(
                    "Subject: {i}\r\n\r\nmessage {i}\r\n"
                )))),
                options: MessageOptions::default(),
            })
            .collect();
        store.enqueue(batch, SystemTime::now()).await.unwrap();
        store.close().await;
    });
    // The file's shape: three sessions, five messages each.
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        "[destinations.\"mx.bulk.test\"]\nconnections = 3\nmessages_per_connection = 5\n",
    )
    .unwrap();
    let (ns, port) = (dns.addr().to_string(), server.addr().port().to_string());
    let home = dir.path().join("empty");
    let q = q.to_str().unwrap();
    let run = [
        "queue",
        "run",
        "--queue",
        q,
        "--config",
        config.to_str().unwrap(),
        "--dns-server",
        &ns,
        "--mx-port",
        &port,
        "--helo",
        "client.test",
        "--retry-first",
        "1",
        "--retry-max",
        "1",
    ];
    let start = Instant::now();
    while server.deliveries().len() < N && start.elapsed() < Duration::from_secs(90) {
        let out = smtp(&run, &home);
        assert!(
            matches!(out.status.code(), Some(0 | 75)),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let counts = server.deliveries();
    assert_eq!(counts.len(), N, "{counts:?}");
    assert!(counts.values().all(|n| *n == 1), "{counts:?}");
    assert!(server.max_per_session() <= 5);
    assert!(!server.throttled_at().is_empty());

    let out = smtp(&["queue", "stats", "--queue", q], &home);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("throttled destinations"), "{stdout}");
    let line = stdout
        .lines()
        .find(|l| l.contains("mx:mx.bulk.test"))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(line.contains("1 connection"), "{line}");
    assert!(line.contains("since "), "{line}");
    assert!(line.contains("4.7.0"), "{line}");

    let out = smtp(&["queue", "stats", "--queue", q, "--json"], &home);
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let t = &stats["throttles"][0];
    assert_eq!(t["destination"], "mx:mx.bulk.test", "{stats}");
    assert_eq!(t["connections"], 1, "{stats}");
    assert!(t["reason"].as_str().unwrap().contains("4.7.0"), "{stats}");
    assert!(t["since"].as_str().unwrap().ends_with('Z'), "{stats}");
}

#[test]
fn a_destination_with_an_unknown_key_is_refused_with_the_file_and_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "[destinations.\"*.google.com\"]\nconections = 2\n").unwrap();
    let q = dir.path().join("q");
    runtime().block_on(async { SqliteStore::open(&q).await.unwrap().close().await });
    let out = smtp(
        &[
            "queue",
            "run",
            "--queue",
            q.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
            "--dns-server",
            "127.0.0.1:9",
            "--helo",
            "client.test",
        ],
        &dir.path().join("empty"),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(stderr.contains("config.toml"), "{stderr}");
    assert!(stderr.contains("unknown field `conections`"), "{stderr}");
}
