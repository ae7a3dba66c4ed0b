//! The real client over real TCP against the testkit's scripted server,
//! misbehaving on purpose: response injection, drip-fed and slow replies,
//! oversized and endless replies, garbage, 421 and hang-ups. Every case
//! ends with a clear outcome and nothing hangs.

use std::time::Duration;

use smtp_core::address::{Mailbox, ReversePath};
use smtp_core::delivery::MemoryBody;
use smtp_core::{Envelope, Error, ProtocolError, RecipientStatus, Timeouts, TlsPolicy};
use smtp_testkit::certs::TestCa;
use smtp_testkit::script::{Script, ScriptOutcome, ScriptedServer};
use smtp_tls::{Delivery, Outgoing, Server};

const SESSION_TAIL: &str = "
C: MAIL FROM:<alice@example.org>
S: 250 ok
C: RCPT TO:<bob@example.net>
S: 250 ok
C: DATA
S: 354 go
C: Subject: x
C:
C: body
C: .
S: 250 queued
C: QUIT
S: 221 bye
";

async fn against(
    script: &str,
    policy: TlsPolicy,
    timeout: Duration,
    tls: Option<&TestCa>,
) -> (Delivery, ScriptOutcome) {
    let identity = tls.map(|ca| ca.leaf(&["mail.test"]));
    let server = ScriptedServer::start(Script::parse(script).unwrap(), identity)
        .await
        .unwrap();
    let mut s = Server::new("127.0.0.1", server.addr().port());
    s.policy = policy;
    if let Some(ca) = tls {
        s.trust.web_pki_roots = false;
        s.trust.add_ca_pem(ca.cert_pem().as_bytes()).unwrap();
        s.server_name = Some("mail.test".into());
    }
    s.timeouts = Timeouts::uniform(timeout);
    let message = Outgoing {
        envelope: Envelope::new(
            ReversePath::parse("alice@example.org").unwrap(),
            vec![Mailbox::parse("bob@example.net").unwrap()],
        ),
        body: Box::new(MemoryBody::new("Subject: x\r\n\r\nbody\r\n")),
    };
    let delivery =
        tokio::time::timeout(Duration::from_secs(20), s.send(vec![message], &mut |_| {}))
            .await
            .expect("never hangs")
            .expect("connects");
    let outcome = server.finish(Duration::from_secs(5)).await;
    (delivery, outcome)
}

fn status(d: &Delivery) -> RecipientStatus {
    d.session.messages[0].recipients[0].status
}

#[tokio::test]
async fn scripted_session_with_starttls() {
    let ca = TestCa::new();
    let script = format!(
        "S: 220 mail.test ESMTP\nC: EHLO *\nS: 250-mail.test\nS: 250 STARTTLS\nC: STARTTLS\nS: 220 go ahead\nSTARTTLS\nC: EHLO *\nS: 250 mail.test\n{SESSION_TAIL}"
    );
    let (d, outcome) = against(
        &script,
        TlsPolicy::Certified,
        Duration::from_secs(5),
        Some(&ca),
    )
    .await;
    outcome.assert_ok();
    assert_eq!(status(&d), RecipientStatus::Accepted);
    assert!(d.session.tls.as_ref().unwrap().verified);
}

#[tokio::test]
async fn injection_in_the_same_write_as_the_220() {
    let script = "S: 220 mail.test\nC: EHLO *\nS: 250-mail.test\nS: 250 STARTTLS\nC: STARTTLS\nRAW: 220 go ahead\\r\\n250-evil\\r\\n250 AUTH PLAIN\\r\\n\nC: *\n";
    for policy in [TlsPolicy::Optional, TlsPolicy::Required] {
        let (d, outcome) = against(script, policy, Duration::from_secs(5), None).await;
        assert!(
            matches!(
                d.session.error,
                Some(Error::Protocol(ProtocolError::ResponseInjection { .. }))
            ),
            "{policy}: {:?}",
            d.session.error
        );
        assert_eq!(status(&d), RecipientStatus::Deferred);
        assert!(
            !outcome
                .transcript
                .iter()
                .any(|l| l.starts_with("C:") && (l.contains("MAIL") || l.contains("AUTH"))),
            "{:?}",
            outcome.transcript
        );
    }
}

#[tokio::test]
async fn drip_fed_replies_are_fine_within_the_deadline() {
    let script = format!(
        "DRIP 2ms: 220 mail.test drip-fed greeting\nC: EHLO *\nDRIP 1ms: 250 mail.test\n{SESSION_TAIL}"
    );
    let (d, outcome) = against(&script, TlsPolicy::None, Duration::from_secs(5), None).await;
    outcome.assert_ok();
    assert_eq!(status(&d), RecipientStatus::Accepted);
}

#[tokio::test]
async fn a_slow_server_times_out_without_hanging() {
    let script =
        "S: 220 mail.test\nC: EHLO *\nS: 250 mail.test\nC: MAIL *\nSLEEP 3s\nS: 250 too late\n";
    let (d, _) = against(script, TlsPolicy::None, Duration::from_millis(500), None).await;
    assert!(
        matches!(d.session.error, Some(Error::Timeout { .. })),
        "{:?}",
        d.session.error
    );
    assert_eq!(status(&d), RecipientStatus::Deferred);
}

#[tokio::test]
async fn oversized_and_endless_replies_are_refused() {
    let long = format!(
        "S: 220 mail.test\nC: EHLO *\nRAW: 250 {}\n",
        "a".repeat(100 * 1024)
    );
    let endless = format!(
        "S: 220 mail.test\nC: EHLO *\nRAW: {}\n",
        "250-more and more\\r\\n".repeat(5000)
    );
    for script in [long, endless] {
        let (d, _) = against(&script, TlsPolicy::None, Duration::from_secs(5), None).await;
        assert!(
            matches!(
                d.session.error,
                Some(Error::Protocol(ProtocolError::Malformed(_)))
            ),
            "{:?}",
            d.session.error
        );
        assert_eq!(status(&d), RecipientStatus::Deferred);
    }
}

#[tokio::test]
async fn garbage_421_and_hang_ups() {
    let cases = [
        ("RAW: <html>not smtp at all</html>\\r\\n\n", "garbage"),
        (
            "S: 220 mail.test\nC: EHLO *\nS: 250 mail.test\nC: MAIL *\nS: 421 4.3.2 shutting down\n",
            "421",
        ),
        (
            "S: 220 mail.test\nC: EHLO *\nS: 250 mail.test\nC: MAIL *\nS: 250 ok\nC: RCPT *\nS: 250 ok\nC: DATA\nS: 354 go\nC: *\nC: *\nC: *\nC: .\nCLOSE\n",
            "close before the final reply",
        ),
        ("S: 220 mail.test\nCLOSE\n", "close after the greeting"),
    ];
    for (script, name) in cases {
        let (d, _) = against(script, TlsPolicy::None, Duration::from_secs(5), None).await;
        assert_eq!(
            status(&d),
            RecipientStatus::Deferred,
            "{name}: {:?}",
            d.session.error
        );
        assert!(d.session.error.is_some(), "{name}");
    }
}

#[tokio::test]
async fn a_script_opening_with_starttls_is_implicit_tls() {
    let ca = TestCa::new();
    let script =
        format!("STARTTLS\nS: 220 mail.test ESMTP\nC: EHLO *\nS: 250 mail.test\n{SESSION_TAIL}");
    let server = ScriptedServer::start(
        Script::parse(&script).unwrap(),
        Some(ca.leaf(&["mail.test"])),
    )
    .await
    .unwrap();
    let mut s = Server::new("127.0.0.1", server.addr().port());
    s.implicit_tls = true;
    s.trust.web_pki_roots = false;
    s.trust.add_ca_pem(ca.cert_pem().as_bytes()).unwrap();
    s.server_name = Some("mail.test".into());
    s.timeouts = Timeouts::uniform(Duration::from_secs(5));
    let message = Outgoing {
        envelope: Envelope::new(
            ReversePath::parse("alice@example.org").unwrap(),
            vec![Mailbox::parse("bob@example.net").unwrap()],
        ),
        body: Box::new(MemoryBody::new("Subject: x\r\n\r\nbody\r\n")),
    };
    let d = s.send(vec![message], &mut |_| {}).await.unwrap();
    server.finish(Duration::from_secs(5)).await.assert_ok();
    assert_eq!(status(&d), RecipientStatus::Accepted);
    assert!(d.session.tls.as_ref().unwrap().verified);
}

#[tokio::test]
async fn a_server_that_stops_reading_the_message_is_named_as_such() {
    // The server says 354 and then reads nothing: once the socket buffers
    // are full the client's write stalls until the data-block deadline.
    let server = ScriptedServer::start(
        Script::parse(
            "S: 220 mx.test\nC: EHLO *\nS: 250 mx.test\nC: MAIL FROM:*\nS: 250 ok\n\
             C: RCPT TO:*\nS: 250 ok\nC: DATA\nS: 354 go\nSLEEP 15s\n",
        )
        .unwrap(),
        None,
    )
    .await
    .unwrap();
    let mut s = Server::new("127.0.0.1", server.addr().port());
    s.policy = TlsPolicy::None;
    s.timeouts = Timeouts::uniform(Duration::from_secs(1));
    // Far more than loopback's socket buffers hold.
    let mut body = b"Subject: big\r\n\r\n".to_vec();
    body.extend(
        std::iter::repeat_n(
            b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcd\r\n".as_slice(),
            1 << 20,
        )
        .flatten(),
    );
    let message = Outgoing {
        envelope: Envelope::new(
            ReversePath::parse("alice@example.org").unwrap(),
            vec![Mailbox::parse("bob@example.net").unwrap()],
        ),
        body: Box::new(MemoryBody::new(body)),
    };
    let delivery =
        tokio::time::timeout(Duration::from_secs(20), s.send(vec![message], &mut |_| {}))
            .await
            .expect("never hangs")
            .expect("connects");
    let r = &delivery.session.messages[0].recipients[0];
    assert_eq!(r.status, RecipientStatus::Deferred, "{r}");
    assert_eq!(
        delivery.session.error,
        Some(Error::WriteTimeout {
            phase: smtp_core::Phase::DataBlock,
            limit: Duration::from_secs(1)
        })
    );
    assert!(
        r.text()
            .contains("the server stopped reading the message for 1s"),
        "{r}"
    );
}
