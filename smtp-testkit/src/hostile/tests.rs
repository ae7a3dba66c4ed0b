//! The hostile server against a hand-driven client.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::*;

async fn read_reply(tcp: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut b = [0u8; 1];
    // A reply ends with a line whose fourth octet is a space.
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut b))
            .await
            .expect("a reply within 5 s")
            .unwrap();
        if n == 0 {
            break;
        }
        got.push(b[0]);
        if got.ends_with(b"\r\n") {
            let text = String::from_utf8_lossy(&got).into_owned();
            let last = text.trim_end().rsplit("\r\n").next().unwrap_or("");
            if last.as_bytes().get(3) == Some(&b' ') {
                return text;
            }
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test]
async fn records_the_raw_data_and_a_bare_lf_on_the_wire() {
    let server = HostileServer::start(HostileConfig::default())
        .await
        .unwrap();
    let mut c = TcpStream::connect(server.addr()).await.unwrap();
    assert!(read_reply(&mut c).await.starts_with("220 "));
    for (cmd, want) in [
        ("EHLO me\r\n", "250"),
        ("MAIL FROM:<a@x.test>\r\n", "250"),
        ("RCPT TO:<b@y.test>\r\n", "250"),
        ("DATA\r\n", "354"),
        ("Subject: x\r\n\r\nbare\nlf\r\n.\r\n", "250"),
        ("QUIT\r\n", "221"),
    ] {
        c.write_all(cmd.as_bytes()).await.unwrap();
        let r = read_reply(&mut c).await;
        assert!(r.starts_with(want), "{cmd:?}: {r}");
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let s = &server.sessions()[0];
    assert_eq!(s.messages[0].raw, b"Subject: x\r\n\r\nbare\nlf");
    assert!(s.messages[0].accepted);
    assert!(s.sent("MAIL", Some(false)));
    assert!(!s.sent("MAIL", Some(true)));
    assert_eq!(s.wire[0].from, Side::Server);
}

#[tokio::test]
async fn a_fault_replaces_its_phase_reply_and_held_replies_come_as_a_group() {
    let server = HostileServer::start(HostileConfig {
        fault: Some((Phase::Rcpt, Fault::ReplyAndClose("421 4.3.2 bye".into()))),
        ..HostileConfig::default()
    })
    .await
    .unwrap();
    let mut c = TcpStream::connect(server.addr()).await.unwrap();
    read_reply(&mut c).await;
    c.write_all(b"EHLO me\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\n")
        .await
        .unwrap();
    let mut all = String::new();
    for _ in 0..3 {
        all.push_str(&read_reply(&mut c).await);
    }
    assert!(all.ends_with("421 4.3.2 bye\r\n"), "{all}");

    let held = HostileServer::start(HostileConfig {
        hold_replies: true,
        ..HostileConfig::default()
    })
    .await
    .unwrap();
    let mut c = TcpStream::connect(held.addr()).await.unwrap();
    read_reply(&mut c).await;
    c.write_all(b"EHLO me\r\n").await.unwrap();
    read_reply(&mut c).await;
    c.write_all(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\nbody\r\n.\r\n")
        .await
        .unwrap();
    let r = read_reply(&mut c).await;
    assert!(r.starts_with("250 2.1.0"), "{r}");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(held.sessions()[0].body_before_354);
}

#[tokio::test]
async fn a_client_flooding_commands_is_cut_off_and_its_record_bounded() {
    let server = HostileServer::start(HostileConfig::default())
        .await
        .unwrap();
    let mut c = TcpStream::connect(server.addr()).await.unwrap();
    read_reply(&mut c).await;
    let line = format!("NOOP {}\r\n", "x".repeat(60_000));
    let mut cut_off = false;
    for _ in 0..200 {
        if c.write_all(line.as_bytes()).await.is_err() {
            cut_off = true;
            break;
        }
    }
    // The server ends the session: reads reach the end.
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut sink)).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let why = server.flooded().expect("flooded");
    assert!(why.contains("KiB of commands"), "{why}");
    let s = &server.sessions()[0];
    let bytes: usize = s.commands.iter().map(|c| c.line.len()).sum();
    assert!(bytes <= MAX_COMMAND_BYTES, "{bytes}");
    assert!(s.flooded.is_some());
    let _ = cut_off;
}

#[tokio::test]
async fn many_commands_and_connections_flood_the_server() {
    let server = HostileServer::start(HostileConfig::default())
        .await
        .unwrap();
    let mut c = TcpStream::connect(server.addr()).await.unwrap();
    read_reply(&mut c).await;
    let _ = c
        .write_all("NOOP\r\n".repeat(MAX_COMMANDS + 10).as_bytes())
        .await;
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut sink)).await;
    assert!(server.sessions()[0].commands.len() <= MAX_COMMANDS);
    assert!(server.flooded().unwrap().contains("commands"));

    let server = HostileServer::start(HostileConfig::default())
        .await
        .unwrap();
    let mut conns = Vec::new();
    for _ in 0..MAX_CONNECTIONS + 5 {
        conns.push(TcpStream::connect(server.addr()).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(server.sessions().len(), MAX_CONNECTIONS);
    assert!(server.flooded().unwrap().contains("connections"));
}

#[tokio::test]
async fn too_many_messages_flood_the_server() {
    let server = HostileServer::start(HostileConfig::default())
        .await
        .unwrap();
    let mut c = TcpStream::connect(server.addr()).await.unwrap();
    read_reply(&mut c).await;
    let tx = "MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\nx\r\n.\r\n";
    let _ = c.write_all(tx.repeat(MAX_MESSAGES + 4).as_bytes()).await;
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut sink)).await;
    assert!(server.sessions()[0].messages.len() <= MAX_MESSAGES);
    assert!(server.flooded().unwrap().contains("messages"));
}
