//! What a session tells `tracing`: a `smtp.session` span (host, port,
//! policy), the TLS decisions as events in it, and the transcript at TRACE
//! whenever a subscriber listens, with no secret in any field.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use smtp_core::address::{Mailbox, ReversePath};
use smtp_core::delivery::MemoryBody;
use smtp_core::sasl::{Credentials, Secret};
use smtp_core::{Envelope, Timeouts, TlsPolicy};
use smtp_testkit::capture::{CaptureConfig, CaptureServer};
use smtp_testkit::certs::TestCa;
use smtp_testkit::script::{Script, ScriptedServer};
use smtp_tls::{Outgoing, Server, Trust};

const PASSWORD: &str = "hunter2-very-secret";

/// Every span and event with its fields as text, from a subscriber
/// installed for one test.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<String>>>);

struct Fields(String);

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.push_str(&format!(" {}={value:?}", field.name()));
    }
}

impl tracing::Subscriber for Captured {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, span: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        let mut fields = Fields(format!("SPAN {}", span.metadata().name()));
        span.record(&mut fields);
        self.0.lock().unwrap().push(fields.0);
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut fields = Fields(format!(
            "{} {}",
            event.metadata().level(),
            event.metadata().target()
        ));
        event.record(&mut fields);
        self.0.lock().unwrap().push(fields.0);
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

impl Captured {
    fn log(&self) -> String {
        self.0.lock().unwrap().join("\n")
    }
}

#[tokio::test]
async fn a_session_is_a_span_with_its_tls_decisions_and_a_transcript_for_listeners() {
    let captured = Captured::default();
    let _guard = tracing::subscriber::set_default(captured.clone());
    let ca = TestCa::new();
    let capture = CaptureServer::start(CaptureConfig {
        hostname: "mail.test".into(),
        tls: Some(ca.leaf(&["mail.test"])),
        auth: Some(("alice".into(), PASSWORD.into())),
        ..CaptureConfig::default()
    })
    .await
    .unwrap();
    let mut trust = Trust::new().without_web_pki_roots();
    trust.add_ca_pem(ca.cert_pem().as_bytes()).unwrap();
    let server = Server::new("127.0.0.1", capture.addr().port())
        .with_trust(trust)
        .with_server_name("mail.test")
        .with_credentials(Credentials::Password {
            username: "alice".into(),
            password: Secret::new(PASSWORD),
        })
        .with_timeouts(Timeouts::uniform(Duration::from_secs(5)));
    let message = Outgoing {
        envelope: Envelope::new(
            ReversePath::parse("alice@example.org").unwrap(),
            vec![Mailbox::parse("bob@example.net").unwrap()],
        ),
        body: Box::new(MemoryBody::new("Subject: x\r\n\r\nbody\r\n")),
    };
    let d = server.send(vec![message], &mut |_| {}).await.unwrap();
    assert!(d.session.messages[0].all_accepted(), "{:?}", d.session);
    let log = captured.log();
    assert!(
        log.contains(&format!(
            "SPAN smtp.session host=127.0.0.1 port={} policy=certified",
            capture.addr().port()
        )),
        "{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("TLS handshake done") && l.contains("verified=true")),
        "{log}"
    );
    // The transcript reaches the listener, not the report nobody asked it of.
    assert!(
        log.contains("TRACE smtp_core::transcript")
            && log.contains("MAIL FROM:<alice@example.org>"),
        "{log}"
    );
    assert!(
        d.session.transcript.is_empty(),
        "{:?}",
        d.session.transcript
    );
    assert!(!log.contains(PASSWORD), "{log}");
}

#[tokio::test]
async fn optional_falling_back_to_plaintext_says_why() {
    let captured = Captured::default();
    let _guard = tracing::subscriber::set_default(captured.clone());
    // The first connection answers the handshake in plaintext; the second
    // is the plaintext session the fallback makes.
    let broken = "S: 220 mx.test ESMTP\nC: EHLO *\nS: 250-mx.test\nS: 250 STARTTLS\n\
        C: STARTTLS\nS: 220 go ahead\nSLEEP 100ms\nS: this is not TLS\nCLOSE\n";
    let plain = "S: 220 mx.test ESMTP\nC: EHLO *\nS: 250-mx.test\nS: 250 STARTTLS\n\
        C: QUIT\nS: 221 bye\n";
    let scripts = vec![
        Script::parse(broken).unwrap(),
        Script::parse(plain).unwrap(),
    ];
    let scripted = ScriptedServer::start_sequence(scripts, None).await.unwrap();
    let server = Server::new("127.0.0.1", scripted.addr().port())
        .with_policy(TlsPolicy::Optional)
        .with_timeouts(Timeouts::uniform(Duration::from_secs(5)));
    let d = server.send(Vec::new(), &mut |_| {}).await.unwrap();
    assert!(d.tls_fallback.is_some(), "{:?}", d.session.error);
    assert!(d.session.error.is_none(), "{:?}", d.session.error);
    let log = captured.log();
    assert!(
        log.lines().any(|l| l.starts_with("WARN")
            && l.contains("kind=PlaintextPeer")
            && l.contains("once more in plaintext")),
        "{log}"
    );
    for o in scripted.finish_all(Duration::from_secs(5)).await {
        o.assert_ok();
    }
}
