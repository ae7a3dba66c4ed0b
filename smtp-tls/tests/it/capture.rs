//! The testkit's capture server as a peer: TLS with a test CA, AUTH,
//! per-recipient refusals, Maildir output; and direct delivery with one
//! recipient of a domain refused while the others are accepted.

use std::time::Duration;

use smtp_core::address::{Mailbox, ReversePath};
use smtp_core::delivery::direct::{BodyFactory, DirectOptions, deliver};
use smtp_core::delivery::{BodySource, MemoryBody};
use smtp_core::ehlo::ClientId;
use smtp_core::sasl::{Credentials, Secret};
use smtp_core::{Config, Envelope, RecipientStatus, Timeouts, TlsPolicy};
use smtp_dns::HickoryResolver;
use smtp_testkit::capture::{CaptureConfig, CaptureServer};
use smtp_testkit::certs::TestCa;
use smtp_testkit::dns::{DnsServer, Zone};
use smtp_tls::{MxConnector, Outgoing, Server, Trust};

fn envelope(to: &[&str]) -> Envelope {
    Envelope::new(
        ReversePath::parse("alice@example.org").unwrap(),
        to.iter().map(|t| Mailbox::parse(t).unwrap()).collect(),
    )
}

#[tokio::test]
async fn certified_auth_and_a_refused_recipient() {
    let ca = TestCa::new();
    let config = CaptureConfig {
        tls: Some(ca.leaf(&["sink.test"])),
        auth: Some(("alice".into(), "s3cret".into())),
        require_auth: true,
        reject: vec![("nobody@example.net".into(), "550 5.1.1 no such user".into())],
        ..CaptureConfig::default()
    };
    let server = CaptureServer::start(config).await.unwrap();
    let mut s = Server::new("127.0.0.1", server.addr().port());
    s.trust.web_pki_roots = false;
    s.trust.add_ca_pem(ca.cert_pem().as_bytes()).unwrap();
    s.server_name = Some("sink.test".into());
    s.credentials = Some(Credentials::Password {
        username: "alice".into(),
        password: Secret::new("s3cret"),
    });
    s.timeouts = Timeouts::uniform(Duration::from_secs(5));
    let message = Outgoing {
        envelope: envelope(&["bob@example.net", "nobody@example.net"]),
        body: Box::new(MemoryBody::new("Subject: hi\n\n.dot\n")),
    };
    let mut settled = Vec::new();
    let d = s
        .send(vec![message], &mut |seen| {
            if seen.settled().is_some() {
                settled.push((seen.peer(), seen.tls().cloned()));
            }
        })
        .await
        .unwrap();
    // As the message finished, the session was known to be encrypted.
    assert_eq!(settled.len(), 1);
    assert_eq!(settled[0].0, d.peer);
    assert_eq!(settled[0].1, d.session.tls);
    let statuses: Vec<RecipientStatus> = d.session.messages[0]
        .recipients
        .iter()
        .map(|r| r.status)
        .collect();
    assert_eq!(
        statuses,
        [RecipientStatus::Accepted, RecipientStatus::Rejected]
    );
    assert!(d.session.tls.as_ref().unwrap().verified);
    let got = server.wait_for_messages(1, Duration::from_secs(2)).await;
    assert_eq!(got[0].data, b"Subject: hi\r\n\r\n.dot\r\n");
    assert_eq!(got[0].rcpt_to, ["bob@example.net"]);
    assert!(got[0].tls);
    assert_eq!(got[0].auth_user.as_deref(), Some("alice"));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        server
            .sessions()
            .iter()
            .all(|l| !l.credentials_in_plaintext && l.mail_commands_in_plaintext == 0)
    );

    let dir = std::env::temp_dir().join(format!("maildir-{}", std::process::id()));
    let paths = server.write_maildir(&dir).unwrap();
    assert_eq!(std::fs::read(&paths[0]).unwrap(), got[0].data);
    assert!(dir.join("cur").is_dir() && dir.join("tmp").is_dir());
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn direct_delivery_with_one_recipient_refused() {
    let config = CaptureConfig {
        reject: vec![("gone@k.test".into(), "550 5.1.1 mailbox gone".into())],
        ..CaptureConfig::default()
    };
    let server = CaptureServer::start_on("127.0.0.30:0".parse().unwrap(), config)
        .await
        .unwrap();
    let zone = Zone::new()
        .mx("k.test", 10, "mx.k.test")
        .a("mx.k.test", "127.0.0.30".parse().unwrap());
    let dns = DnsServer::start(zone).await.unwrap();
    let resolver =
        HickoryResolver::with_nameserver(dns.addr(), Duration::from_millis(500)).unwrap();
    let timeouts = Timeouts::uniform(Duration::from_secs(3));
    let connector = MxConnector::new(TlsPolicy::Optional, Trust::new(), timeouts);
    let mut options = DirectOptions::new(
        Config::new(ClientId::parse("client.test").unwrap())
            .with_tls(TlsPolicy::Optional)
            .with_timeouts(timeouts),
    );
    options.port = server.addr().port();
    let body: BodyFactory<'_> = &|| -> std::io::Result<Box<dyn BodySource>> {
        Ok(Box::new(MemoryBody::new("Subject: d\r\n\r\nx\r\n")))
    };
    let first = |_: usize| 0;
    let reports = deliver(
        &resolver,
        &connector,
        &envelope(&["a@k.test", "gone@k.test", "b@k.test"]),
        body,
        &options,
        &first,
    )
    .await;
    let statuses: Vec<String> = reports[0]
        .outcomes
        .iter()
        .map(|o| format!("{}={}", o.recipient, o.status))
        .collect();
    assert_eq!(
        statuses,
        [
            "a@k.test=accepted",
            "gone@k.test=rejected",
            "b@k.test=accepted"
        ]
    );
    let got = server.wait_for_messages(1, Duration::from_secs(2)).await;
    assert_eq!(got.len(), 1, "one session, one message");
    assert_eq!(got[0].rcpt_to, ["a@k.test", "b@k.test"]);
}

#[tokio::test]
async fn capabilities_are_configurable() {
    // Without PIPELINING the client goes lock-step; without EHLO, HELO.
    for (pipelining, no_ehlo) in [(false, false), (true, true)] {
        let server = CaptureServer::start(CaptureConfig {
            pipelining,
            no_ehlo,
            ..CaptureConfig::default()
        })
        .await
        .unwrap();
        let mut s = Server::new("127.0.0.1", server.addr().port());
        s.policy = TlsPolicy::None;
        s.timeouts = Timeouts::uniform(Duration::from_secs(5));
        let message = Outgoing {
            envelope: envelope(&["b@example.net"]),
            body: Box::new(MemoryBody::new("x\r\n")),
        };
        let d = s.send(vec![message], &mut |_| {}).await.unwrap();
        assert!(
            d.session.messages[0].all_accepted(),
            "{:?}",
            d.session.error
        );
        let caps = d.session.capabilities.clone().unwrap_or_default();
        assert_eq!(caps.pipelining(), pipelining && !no_ehlo);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let transcript: Vec<String> = server
            .sessions()
            .into_iter()
            .flat_map(|s| s.transcript)
            .collect();
        assert_eq!(
            transcript.iter().any(|l| l.starts_with("C: HELO")),
            no_ehlo,
            "{transcript:?}"
        );
    }
}

/// A capture server that offers CHUNKING.
async fn chunking_server() -> CaptureServer {
    CaptureServer::start(CaptureConfig {
        chunking: true,
        ..CaptureConfig::default()
    })
    .await
    .unwrap()
}

/// A submission to `server` without TLS.
fn plaintext(server: &CaptureServer) -> Server {
    let mut s = Server::new("127.0.0.1", server.addr().port());
    s.policy = TlsPolicy::None;
    s.timeouts = Timeouts::uniform(Duration::from_secs(5));
    s
}

#[tokio::test]
async fn chunking_sends_bdat_pipelined_and_the_data_arrives_unstuffed() {
    let server = chunking_server().await;
    let s = plaintext(&server);
    let bodies = [
        "Subject: one\n\n.leading dot\nend\n".to_owned(),
        // Over the 64 KiB read size: several BDAT chunks, the last with LAST.
        "Subject: two\r\n\r\n".to_owned() + &format!("{}\r\n", "x".repeat(900)).repeat(200),
        "Subject: three\r\n\r\n.\r\n..\r\n".to_owned(),
    ];
    let messages = bodies
        .iter()
        .map(|b| Outgoing {
            envelope: envelope(&["bob@example.net"]),
            body: Box::new(MemoryBody::new(b.clone())),
        })
        .collect();
    let d = s.send(messages, &mut |_| {}).await.unwrap();
    assert!(d.session.error.is_none(), "{:?}", d.session.error);
    assert!(d.session.messages.iter().all(|m| m.all_accepted()));
    let received = server.wait_for_messages(3, Duration::from_secs(5)).await;
    let expected: Vec<Vec<u8>> = bodies
        .iter()
        .map(|b| b.replace("\r\n", "\n").replace('\n', "\r\n").into_bytes())
        .collect();
    let got: Vec<Vec<u8>> = received.iter().map(|m| m.data.clone()).collect();
    assert_eq!(
        got, expected,
        "BDAT carries the bytes as they are: no dot-stuffing"
    );
    let transcript = &server.sessions()[0].transcript;
    assert!(
        transcript
            .iter()
            .any(|l| l.starts_with("C: BDAT ") && l.ends_with(" LAST"))
    );
    assert!(!transcript.iter().any(|l| l == "C: DATA"), "{transcript:?}");
}

#[tokio::test]
async fn over_bdat_a_broken_body_is_reset_and_the_next_message_still_goes() {
    let server = chunking_server().await;
    let s = plaintext(&server);
    // 100 KiB of good lines (a BDAT chunk goes out), then one over 998 octets.
    let broken = "Subject: broken\r\n\r\n".to_owned()
        + &format!("{}\r\n", "y".repeat(500)).repeat(200)
        + &"z".repeat(1200)
        + "\r\n";
    let messages = [broken, "Subject: fine\r\n\r\nok\r\n".to_owned()]
        .into_iter()
        .map(|b| Outgoing {
            envelope: envelope(&["bob@example.net"]),
            body: Box::new(MemoryBody::new(b)),
        })
        .collect();
    let d = s.send(messages, &mut |_| {}).await.unwrap();
    assert!(d.session.error.is_none(), "{:?}", d.session.error);
    let statuses: Vec<RecipientStatus> = d
        .session
        .messages
        .iter()
        .map(|m| m.recipients[0].status)
        .collect();
    assert_eq!(
        statuses,
        [RecipientStatus::Rejected, RecipientStatus::Accepted]
    );
    let received = server.wait_for_messages(1, Duration::from_secs(5)).await;
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].data, b"Subject: fine\r\n\r\nok\r\n");
    let sessions = server.wait_for_sessions(1, Duration::from_secs(5)).await;
    assert_eq!(sessions.len(), 1, "one session for both");
    let transcript = &sessions[0].transcript;
    assert!(transcript.iter().any(|l| l == "C: RSET"), "{transcript:?}");
}

#[tokio::test]
async fn a_message_without_recipients_is_refused_before_anything_is_sent() {
    // Nothing listens on port 9 of 127.0.0.1: the refusal comes first.
    let server = Server::new("127.0.0.1", 9).with_policy(TlsPolicy::None);
    let message = |to: &[&str]| Outgoing {
        envelope: Envelope::new(
            ReversePath::parse("a@example.org").unwrap(),
            to.iter().map(|t| Mailbox::parse(t).unwrap()).collect(),
        ),
        body: Box::new(MemoryBody::new("Subject: x\r\n\r\nx\r\n")),
    };
    let err = server
        .send(vec![message(&["b@example.net"]), message(&[])], &mut |_| {})
        .await
        .expect_err("an empty envelope is the caller's fault");
    assert_eq!(err, smtp_tls::Error::NoRecipients { message: 1 });
    assert_eq!(err.fault(), smtp_core::Fault::Misuse);
    // With recipients, the closed port is the network's fault: retry later.
    let err = server
        .send(vec![message(&["b@example.net"])], &mut |_| {})
        .await
        .expect_err("nothing listens there");
    assert!(matches!(err, smtp_tls::Error::Unreachable { .. }), "{err}");
    assert_eq!(err.fault(), smtp_core::Fault::Transient);
}
