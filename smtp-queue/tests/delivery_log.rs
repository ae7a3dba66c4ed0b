//! The runner's log: one `tracing` event per recorded outcome, target
//! `smtp_queue::delivery`, against smtp-testkit's capture server on
//! 127.0.0.1.
//!
//! A test binary of its own: the subscriber is the global default, so no
//! other test's first use of a callsite (with no subscriber) can race
//! with it and leave the event disabled.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use smtp_core::TlsPolicy;
use smtp_core::delivery::MemoryBody;
use smtp_queue::{
    Body, MessageOptions, NewMessage, Runner, RunnerConfig, SqliteStore, Stop, Store,
};
use smtp_testkit::capture::{CaptureConfig, CaptureServer};
use smtp_tls::Server;

/// An event's fields, as text.
type Fields = BTreeMap<String, String>;

/// The level and fields of each event logged at `smtp_queue::delivery`.
#[derive(Clone, Default)]
struct DeliveryLog(Arc<Mutex<Vec<(tracing::Level, Fields)>>>);

struct Visitor(Fields);

impl tracing::field::Visit for Visitor {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for DeliveryLog {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if event.metadata().target() == "smtp_queue::delivery" {
            let mut fields = Visitor(Fields::new());
            event.record(&mut fields);
            self.0
                .lock()
                .unwrap()
                .push((*event.metadata().level(), fields.0));
        }
    }
}

#[tokio::test]
async fn each_recorded_outcome_is_logged_once_with_its_facts() {
    use tracing_subscriber::layer::SubscriberExt;
    let log = DeliveryLog::default();
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(log.clone()))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let server = CaptureServer::start(CaptureConfig {
        reject: vec![
            ("bad@example.net".into(), "550 5.1.1 no such user".into()),
            ("later@example.net".into(), "451 4.2.0 try later".into()),
        ],
        ..CaptureConfig::default()
    })
    .await
    .unwrap();
    let store = Arc::new(SqliteStore::open(dir.path()).await.unwrap());
    let ids = store
        .enqueue(
            vec![NewMessage {
                from: "sender@example.com".into(),
                to: vec![
                    "good@example.net".into(),
                    "bad@example.net".into(),
                    "later@example.net".into(),
                ],
                body: Body::Source(Box::new(MemoryBody::new("Subject: l\r\n\r\nhi\r\n"))),
                options: MessageOptions::default(),
            }],
            SystemTime::now(),
        )
        .await
        .unwrap();
    let relay = Server::new("127.0.0.1", server.addr().port()).with_policy(TlsPolicy::None);
    let runner = Runner::new(store.clone(), relay, RunnerConfig::default());
    runner.run_due(&Stop::new()).await.unwrap();

    let lines = log.0.lock().unwrap().clone();
    assert_eq!(lines.len(), 3, "one line per recorded outcome: {lines:?}");
    let by_rcpt = |r: &str| {
        lines
            .iter()
            .find(|(_, f)| f["recipient"] == r)
            .unwrap_or_else(|| panic!("no line for {r}: {lines:?}"))
            .clone()
    };
    let destination = format!("relay:127.0.0.1:{}", server.addr().port());
    for (rcpt, outcome, code, enhanced) in [
        ("good@example.net", "delivered", "250", None),
        ("bad@example.net", "failed", "550", Some("5.1.1")),
        ("later@example.net", "deferred", "451", Some("4.2.0")),
    ] {
        let (level, f) = by_rcpt(rcpt);
        assert_eq!(level, tracing::Level::INFO, "{f:?}");
        assert_eq!(f["message_id"], ids[0].as_str(), "{f:?}");
        assert_eq!(f["destination"], destination, "{f:?}");
        assert_eq!(f["outcome"], outcome, "{f:?}");
        assert_eq!(f["code"], code, "{f:?}");
        if let Some(enhanced) = enhanced {
            assert_eq!(f["enhanced_code"], enhanced, "{f:?}");
        }
        assert_eq!(f["host"], server.addr().to_string(), "{f:?}");
        assert_eq!(f["attempts"], "1", "{f:?}");
        assert_eq!(f["taken_over"], "false", "{f:?}");
        assert!(!f["reply"].is_empty(), "{f:?}");
        assert_eq!(
            f.contains_key("next_attempt_ms"),
            outcome == "deferred",
            "only a deferral has a next attempt: {f:?}"
        );
    }
    assert_eq!(by_rcpt("bad@example.net").1["reply"], "no such user");
}
