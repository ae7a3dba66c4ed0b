//! A server that accepts STARTTLS and then breaks the handshake: the last
//! row of the policy matrix. Optional retries once in plaintext on a new
//! connection (not with credentials); Required and Certified fail.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use smtp_core::address::{Mailbox, ReversePath};
use smtp_core::delivery::{MemoryBody, TlsFailureKind};
use smtp_core::sasl::{Credentials, Secret};
use smtp_core::{Envelope, Error, Timeouts, TlsPolicy};
use smtp_tls::{Outgoing, Server};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// Serves: the first connection breaks the TLS handshake with garbage; later
/// ones are a plain SMTP server that accepts one message. Returns the port
/// and how many messages arrived.
async fn server() -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let delivered = Arc::new(AtomicUsize::new(0));
    let count = delivered.clone();
    tokio::spawn(async move {
        let mut first = true;
        while let Ok((stream, _)) = listener.accept().await {
            let broken = std::mem::replace(&mut first, false);
            let count = count.clone();
            tokio::spawn(async move {
                let _ = session(stream, broken, &count).await;
            });
        }
    });
    (port, delivered)
}

async fn session(stream: TcpStream, broken: bool, delivered: &AtomicUsize) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    write.write_all(b"220 broken.test ESMTP\r\n").await?;
    let mut in_data = false;
    while let Some(line) = lines.next_line().await? {
        if in_data {
            if line == "." {
                in_data = false;
                delivered.fetch_add(1, Ordering::SeqCst);
                write.write_all(b"250 2.0.0 stored\r\n").await?;
            }
            continue;
        }
        let verb = line
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_ascii_uppercase();
        let reply: &[u8] = match verb.as_str() {
            "EHLO" => b"250-broken.test\r\n250-AUTH PLAIN\r\n250 STARTTLS\r\n",
            "STARTTLS" if broken => {
                write.write_all(b"220 go ahead\r\n").await?;
                // Not a TLS ServerHello: the handshake fails.
                tokio::time::sleep(Duration::from_millis(50)).await;
                write.write_all(b"this is not TLS at all\r\n").await?;
                return Ok(());
            }
            "DATA" => {
                in_data = true;
                b"354 go\r\n"
            }
            "QUIT" => {
                write.write_all(b"221 bye\r\n").await?;
                return Ok(());
            }
            _ => b"250 ok\r\n",
        };
        write.write_all(reply).await?;
    }
    Ok(())
}

fn submission(port: u16, policy: TlsPolicy) -> Server {
    let mut s = Server::new("127.0.0.1", port);
    s.policy = policy;
    s.timeouts = Timeouts::uniform(Duration::from_secs(5));
    s
}

fn message() -> Outgoing {
    Outgoing {
        envelope: Envelope::new(
            ReversePath::parse("alice@example.org").unwrap(),
            vec![Mailbox::parse("bob@example.net").unwrap()],
        ),
        body: Box::new(MemoryBody::new("Subject: x\r\n\r\nbody\r\n")),
    }
}

#[tokio::test]
async fn optional_retries_in_plaintext() {
    let (port, delivered) = server().await;
    let d = submission(port, TlsPolicy::Optional)
        .send(vec![message()], &mut |_| {})
        .await
        .unwrap();
    assert!(
        d.session.messages[0].all_accepted(),
        "{:?}",
        d.session.error
    );
    assert!(
        d.tls_fallback
            .as_ref()
            .is_some_and(|w| w.detail.contains("handshake")),
        "{:?}",
        d.tls_fallback
    );
    assert!(d.session.tls.is_none());
    assert_eq!(delivered.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn only_the_retry_s_outcomes_are_settled() {
    let (port, _) = server().await;
    let mut settled = Vec::new();
    let mut results = 0;
    let d = submission(port, TlsPolicy::Optional)
        .send(vec![message(), message()], &mut |seen| {
            if matches!(seen.event(), smtp_core::Event::MessageResult(_)) {
                results += 1;
            }
            if let Some(outcome) = seen.settled() {
                settled.push((outcome.clone(), seen.peer(), seen.tls().cloned()));
            }
        })
        .await
        .unwrap();
    assert!(d.tls_fallback.is_some());
    assert_eq!(results, 4, "the observer sees both sessions' results");
    assert_eq!(settled.len(), 2, "{settled:?}");
    for (outcome, peer, tls) in &settled {
        assert!(outcome.all_accepted(), "{outcome:?}");
        assert_eq!(*peer, d.peer);
        assert!(tls.is_none());
    }
}

#[tokio::test]
async fn optional_with_credentials_defers() {
    let (port, delivered) = server().await;
    let mut s = submission(port, TlsPolicy::Optional);
    s.credentials = Some(Credentials::Password {
        username: "u".into(),
        password: Secret::new("p"),
    });
    let d = s.send(vec![message()], &mut |_| {}).await.unwrap();
    assert!(
        matches!(d.session.error, Some(Error::Tls(_))),
        "{:?}",
        d.session.error
    );
    assert!(d.tls_fallback.is_none());
    assert_eq!(delivered.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn required_and_certified_fail() {
    for policy in [TlsPolicy::Required, TlsPolicy::Certified] {
        let (port, delivered) = server().await;
        let d = submission(port, policy)
            .send(vec![message()], &mut |_| {})
            .await
            .unwrap();
        assert!(
            matches!(d.session.error, Some(Error::Tls(_))),
            "{policy}: {:?}",
            d.session.error
        );
        assert_eq!(delivered.load(Ordering::SeqCst), 0, "{policy}");
    }
}

#[tokio::test]
async fn a_server_answering_the_handshake_in_plaintext_is_told_apart_by_type() {
    let (port, _) = server().await;
    let d = submission(port, TlsPolicy::Required)
        .send(vec![message()], &mut |_| {})
        .await
        .unwrap();
    let Some(Error::Tls(failure)) = &d.session.error else {
        panic!("{:?}", d.session.error);
    };
    assert_eq!(failure.kind, TlsFailureKind::PlaintextPeer, "{failure:?}");
    assert!(failure.detail.contains("may expect plaintext"), "{failure}");
}
