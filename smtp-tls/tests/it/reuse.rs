//! Connection reuse over real TCP: `Session` keeps one session for many
//! sends, `Pool` keeps one connection per destination, sends no NOOP before
//! reuse, notices a server that hung up while idle, and retries only what
//! cannot have been delivered.

use std::time::Duration;

use smtp_core::address::{Mailbox, ReversePath};
use smtp_core::delivery::MemoryBody;
use smtp_core::{Envelope, Error, Misuse, Phase, RecipientStatus, Timeouts, TlsPolicy};
use smtp_testkit::capture::{CaptureConfig, CaptureServer};
use smtp_testkit::script::{Script, ScriptedServer};
use smtp_tls::{Outgoing, Pool, Server, Session};

fn message(n: u32) -> Outgoing {
    Outgoing {
        envelope: Envelope::new(
            ReversePath::parse("alice@example.org").unwrap(),
            vec![Mailbox::parse("bob@example.net").unwrap()],
        ),
        body: Box::new(MemoryBody::new(format!("Subject: {n}\r\n\r\nbody {n}\r\n"))),
    }
}

fn plain(port: u16) -> Server {
    let mut s = Server::new("127.0.0.1", port);
    s.policy = TlsPolicy::None;
    s.timeouts = Timeouts::uniform(Duration::from_secs(5));
    s
}

const GREETING: &str = "S: 220 mx.test ESMTP\nC: EHLO *\nS: 250-mx.test\nS: 250 PIPELINING\n";

/// One pipelined transaction for message `n`, answered with `reply`.
fn transaction(n: u32, reply: &str) -> String {
    format!(
        "C: MAIL FROM:<alice@example.org>*\nC: RCPT TO:<bob@example.net>*\nC: DATA\n\
         S: 250 2.1.0 ok\nS: 250 2.1.5 ok\nS: 354 go\n\
         C: Subject: {n}\nC: *\nC: body {n}\nC: .\nS: {reply}\n"
    )
}

const QUIT: &str = "C: QUIT\nS: 221 bye\n";

fn script(text: &str) -> Script {
    Script::parse(text).unwrap()
}

/// A server running `scripts`, one per connection, and a plaintext
/// submission to it.
async fn scripted(scripts: &[&str]) -> (ScriptedServer, Server) {
    let scripts = scripts.iter().map(|s| script(s)).collect();
    let server = ScriptedServer::start_sequence(scripts, None).await.unwrap();
    let submission = plain(server.addr().port());
    (server, submission)
}

fn accepted(result: Result<smtp_core::MessageOutcome, smtp_tls::Error>) -> bool {
    result.unwrap().all_accepted()
}

#[tokio::test]
async fn a_pool_reuses_one_connection_without_noop_and_reconnects_after_a_421() {
    // Connection 1 takes two messages, then the server times the idle
    // session out with a 421, as Postfix does. A NOOP anywhere would break
    // the script.
    let first = format!(
        "{GREETING}{}{}SLEEP 200ms\nS: 421 4.4.2 mx.test Error: timeout exceeded\nCLOSE\n",
        transaction(1, "250 2.0.0 queued 1"),
        transaction(2, "250 2.0.0 queued 2"),
    );
    let second = format!("{GREETING}{}{QUIT}", transaction(3, "250 2.0.0 queued 3"));
    let (server, submission) = scripted(&[&first, &second]).await;
    let pool = Pool::new();
    assert!(accepted(pool.send(&submission, message(1)).await));
    assert!(accepted(pool.send(&submission, message(2)).await));
    assert_eq!(pool.open_connections(), 1);
    // Give the 421 time to arrive; if it has not, the MAIL meets it and the
    // pool retries on a new connection, which this script also passes.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(accepted(pool.send(&submission, message(3)).await));
    pool.close().await;
    let outcomes = server.finish_all(Duration::from_secs(5)).await;
    assert_eq!(outcomes.len(), 2, "{outcomes:?}");
    for o in &outcomes {
        o.assert_ok();
    }
    assert!(outcomes[0].received_after_end.is_empty());
}

#[tokio::test]
async fn a_kept_connection_found_dead_at_mail_is_retried_on_a_new_one() {
    // The server hangs up the moment the second message's MAIL arrives:
    // nothing of it can have been delivered, so the pool sends it again.
    let first = format!(
        "{GREETING}{}C: MAIL FROM:*\nCLOSE\n",
        transaction(1, "250 2.0.0 queued 1"),
    );
    let second = format!("{GREETING}{}{QUIT}", transaction(2, "250 2.0.0 queued 2"));
    let (server, submission) = scripted(&[&first, &second]).await;
    let pool = Pool::new();
    assert!(accepted(pool.send(&submission, message(1)).await));
    let outcome = pool.send(&submission, message(2)).await.unwrap();
    assert!(outcome.all_accepted(), "{outcome:?}");
    pool.close().await;
    for o in server.finish_all(Duration::from_secs(5)).await {
        o.assert_ok();
    }
}

#[tokio::test]
async fn a_connection_lost_after_the_data_is_not_retried() {
    // The server took the second message's data and hung up without a
    // reply: it may have been delivered, so it is reported deferred and not
    // sent again (a retry would reach no server here and fail the send).
    let first = format!(
        "{GREETING}{}C: MAIL FROM:*\nC: RCPT TO:*\nC: DATA\nS: 250 ok\nS: 250 ok\nS: 354 go\n\
         C: Subject: 2\nC: *\nC: body 2\nC: .\nCLOSE\n",
        transaction(1, "250 2.0.0 queued 1"),
    );
    let (server, submission) = scripted(&[&first]).await;
    let pool = Pool::new();
    assert!(accepted(pool.send(&submission, message(1)).await));
    let outcome = pool.send(&submission, message(2)).await.unwrap();
    let r = &outcome.recipients[0];
    assert_eq!(r.status, RecipientStatus::Deferred, "{r}");
    assert_eq!(r.phase, Phase::DataEnd, "{r}");
    // The outcome is unknown, and says so.
    assert!(
        matches!(&r.error, Some(Error::OutcomeUnknown { cause })
            if matches!(**cause, Error::ConnectionClosed { .. })),
        "{r}"
    );
    assert!(r.text().contains("may have accepted"), "{r}");
    assert_eq!(
        pool.open_connections(),
        0,
        "the dead connection is not kept"
    );
    for o in server.finish_all(Duration::from_secs(5)).await {
        o.assert_ok();
    }
}

#[tokio::test]
async fn a_connection_idle_too_long_is_closed_with_quit_not_reused() {
    let first = format!("{GREETING}{}{QUIT}", transaction(1, "250 2.0.0 queued 1"));
    let second = format!("{GREETING}{}{QUIT}", transaction(2, "250 2.0.0 queued 2"));
    let (server, submission) = scripted(&[&first, &second]).await;
    let pool = Pool::new().with_max_idle(Duration::ZERO);
    assert!(accepted(pool.send(&submission, message(1)).await));
    assert!(accepted(pool.send(&submission, message(2)).await));
    pool.close().await;
    for o in server.finish_all(Duration::from_secs(5)).await {
        o.assert_ok();
    }
}

#[tokio::test]
async fn one_session_per_destination_and_destinations_in_parallel() {
    let a = CaptureServer::start(CaptureConfig::default())
        .await
        .unwrap();
    let b = CaptureServer::start(CaptureConfig::default())
        .await
        .unwrap();
    let (to_a, to_b) = (plain(a.addr().port()), plain(b.addr().port()));
    let pool = Pool::new();
    let shared = pool.clone();
    for n in 0..5 {
        let (ra, rb) = tokio::join!(
            pool.send(&to_a, message(n)),
            shared.send(&to_b, message(100 + n)),
        );
        assert!(accepted(ra) && accepted(rb));
    }
    assert_eq!(pool.open_connections(), 2);
    pool.close().await;
    for server in [&a, &b] {
        assert_eq!(
            server
                .wait_for_messages(5, Duration::from_secs(5))
                .await
                .len(),
            5
        );
        let sessions = server.wait_for_sessions(1, Duration::from_secs(5)).await;
        assert_eq!(sessions.len(), 1, "{sessions:?}");
        let transcript = &sessions[0].transcript;
        assert!(
            !transcript.iter().any(|l| l.contains("NOOP")),
            "{transcript:?}"
        );
        assert!(transcript.iter().any(|l| l == "C: QUIT"), "{transcript:?}");
    }
}

#[tokio::test]
async fn a_connection_pipelines_a_batch_and_reports_in_order() {
    let server = CaptureServer::start(CaptureConfig::default())
        .await
        .unwrap();
    let mut connection = Session::open(&plain(server.addr().port())).await.unwrap();
    assert!(connection.capabilities().pipelining());
    let mut nobody = message(9);
    nobody.envelope.to.clear();
    let mut batch = vec![message(1), message(2), nobody, message(3)];
    let results = connection.send_all(&mut batch, &mut |_| {}).await;
    assert_eq!(results.len(), 4);
    assert!(matches!(
        results[2],
        Err(smtp_tls::Error::Session(Error::Misuse(
            Misuse::NoRecipients
        )))
    ));
    for r in [&results[0], &results[1], &results[3]] {
        assert!(r.as_ref().unwrap().all_accepted(), "{r:?}");
    }
    // And again on the same session.
    let again = connection.send(&mut message(4)).await.unwrap();
    assert!(again.all_accepted());
    assert_eq!(connection.messages_sent(), 4);
    let report = connection.close().await;
    assert!(report.error.is_none(), "{:?}", report.error);
    let received = server.wait_for_messages(4, Duration::from_secs(5)).await;
    let subjects: Vec<String> = received
        .iter()
        .map(|m| {
            String::from_utf8_lossy(&m.data)
                .lines()
                .next()
                .unwrap_or("")
                .to_owned()
        })
        .collect();
    assert_eq!(
        subjects,
        ["Subject: 1", "Subject: 2", "Subject: 3", "Subject: 4"]
    );
    assert_eq!(
        server
            .wait_for_sessions(1, Duration::from_secs(5))
            .await
            .len(),
        1
    );
}

#[tokio::test]
async fn sending_on_a_closed_connection_says_it_was_not_tried() {
    let server = ScriptedServer::start(
        script(&format!(
            "{GREETING}SLEEP 100ms\nS: 421 4.3.2 shutting down\nCLOSE\n"
        )),
        None,
    )
    .await
    .unwrap();
    let mut connection = Session::open(&plain(server.addr().port())).await.unwrap();
    server.finish(Duration::from_secs(5)).await.assert_ok();
    assert!(!connection.refresh().await, "the 421 ends the session");
    assert!(!connection.is_open());
    assert!(matches!(
        connection.error(),
        Some(Error::Rejected { reply, .. }) if reply.code().as_u16() == 421
    ));
    // Not tried, and the error says why the session is over: the 421.
    let result = connection.send(&mut message(1)).await;
    assert!(
        matches!(
            &result,
            Err(smtp_tls::Error::Session(Error::Rejected { reply, .. }))
                if reply.code().as_u16() == 421
        ),
        "{result:?}"
    );
}

#[tokio::test]
async fn a_session_that_cannot_be_set_up_is_an_open_error() {
    // Required, and the server offers no STARTTLS.
    let server = CaptureServer::start(CaptureConfig::default())
        .await
        .unwrap();
    let mut submission = plain(server.addr().port());
    submission.policy = TlsPolicy::Required;
    let err = Session::open(&submission).await.unwrap_err();
    assert!(
        matches!(err, smtp_tls::Error::Session(Error::Policy(_))),
        "{err}"
    );
    let pool_err = Pool::new().send(&submission, message(1)).await.unwrap_err();
    assert!(
        matches!(pool_err, smtp_tls::Error::Session(Error::Policy(_))),
        "{pool_err}"
    );
}
