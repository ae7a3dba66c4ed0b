//! Every phase's deadline, generated: for each phase, drive a session up to
//! it, let the virtual clock run out, and check the failure names the phase,
//! fired at exactly the configured limit, and deferred every recipient.

use std::time::Duration;

use smtp_core::sasl::{AuthChoice, Credentials, Secret};
use smtp_core::{Error, Phase, Timeouts, TlsPolicy};

use smtp_testkit::sansio::{Run, config, envelope};

/// Distinct limits so a wrong phase's limit cannot pass unnoticed.
fn timeouts() -> Timeouts {
    Timeouts {
        connect: Duration::from_secs(1),
        greeting: Duration::from_secs(11),
        command: Duration::from_secs(12),
        quit: Duration::from_secs(19),
        tls_handshake: Duration::from_secs(13),
        mail: Duration::from_secs(14),
        rcpt: Duration::from_secs(15),
        data: Duration::from_secs(16),
        data_block: Duration::from_secs(17),
        data_end: Duration::from_secs(18),
    }
}

/// (phase, expected limit, server script up to the point where the client waits).
fn cases() -> Vec<(Phase, u64, &'static str)> {
    vec![
        (Phase::Greeting, 11, ""),
        (Phase::Ehlo, 12, "S: 220 hi"),
        (
            Phase::StartTls,
            12,
            "S: 220 hi\nS: 250-mx\nS: 250-AUTH PLAIN\nS: 250 STARTTLS",
        ),
        (
            Phase::Auth,
            12,
            "S: 220 hi\nS: 250-mx\nS: 250-AUTH PLAIN\nS: 250 STARTTLS\nS: 220 go\nS: 250-mx\nS: 250 AUTH PLAIN",
        ),
        (
            Phase::Mail,
            14,
            "S: 220 hi\nS: 250-mx\nS: 250-AUTH PLAIN\nS: 250 STARTTLS\nS: 220 go\nS: 250-mx\nS: 250 AUTH PLAIN\nS: 235 ok",
        ),
        (
            Phase::Rcpt,
            15,
            "S: 220 hi\nS: 250-mx\nS: 250-AUTH PLAIN\nS: 250 STARTTLS\nS: 220 go\nS: 250-mx\nS: 250 AUTH PLAIN\nS: 235 ok\nS: 250 ok",
        ),
        (
            Phase::Data,
            16,
            "S: 220 hi\nS: 250-mx\nS: 250-AUTH PLAIN\nS: 250 STARTTLS\nS: 220 go\nS: 250-mx\nS: 250 AUTH PLAIN\nS: 235 ok\nS: 250 ok\nS: 250 ok",
        ),
        (
            Phase::DataEnd,
            18,
            "S: 220 hi\nS: 250-mx\nS: 250-AUTH PLAIN\nS: 250 STARTTLS\nS: 220 go\nS: 250-mx\nS: 250 AUTH PLAIN\nS: 235 ok\nS: 250 ok\nS: 250 ok\nS: 354 go",
        ),
    ]
}

fn session() -> Run {
    let creds = Credentials::Password {
        username: "u".into(),
        password: Secret::new("p"),
    };
    let cfg = config()
        .with_tls(TlsPolicy::Required)
        .with_credentials(creds, AuthChoice::Auto, vec![3; 24])
        .with_timeouts(timeouts());
    let mut run = Run::new(cfg);
    run.send(envelope("a@example.org", &["b@example.net"]));
    run
}

/// Feeds the server lines one reply at a time, as a lock-step server would.
fn feed(run: &mut Run, script: &str) {
    for line in script.lines() {
        let line = line.strip_prefix("S: ").unwrap();
        run.input(format!("{line}\r\n").as_bytes());
    }
}

#[test]
fn every_phase_times_out_into_deferral() {
    for (phase, limit, script) in cases() {
        let mut run = session();
        feed(&mut run, script);
        assert!(run.failure().is_none(), "{phase}: {:?}", run.failure());
        let waited = run.expire();
        assert_eq!(waited, Duration::from_secs(limit), "{phase}");
        let timeout = Error::Timeout {
            phase,
            limit: Duration::from_secs(limit),
        };
        // Past the end of data the message's fate is unknown, and the
        // session's error says so.
        let expected = if phase == Phase::DataEnd {
            Error::OutcomeUnknown {
                cause: Box::new(timeout),
            }
        } else {
            timeout
        };
        assert_eq!(run.failure(), Some(&expected), "{phase}");
        assert_eq!(run.statuses(), ["b@example.net=deferred"], "{phase}");
        assert_eq!(
            run.client.poll_timeout(),
            None,
            "{phase}: no timer after failure"
        );
    }
}

/// A server that drips bytes cannot push a deadline back.
#[test]
fn dripping_does_not_extend_a_phase() {
    let mut run = session();
    run.advance(Duration::from_secs(5));
    for b in b"220-hello, this is a very slow greeting" {
        run.input(&[*b]);
        run.advance(Duration::from_millis(100));
    }
    assert!(run.failure().is_none());
    run.advance(Duration::from_secs(3));
    assert_eq!(
        run.failure(),
        Some(&Error::Timeout {
            phase: Phase::Greeting,
            limit: Duration::from_secs(11)
        })
    );
}

/// A server that never answers QUIT costs nothing: the session just
/// closes, after the short QUIT limit rather than the 5-minute command one
/// (every outcome is known; the report must not wait on a goodbye).
#[test]
fn quit_timeout_just_closes() {
    let mut run = Run::new(config().with_timeouts(timeouts()));
    run.client.quit(run.now);
    run.input(b"220 hi\r\n");
    run.input(b"250 hi\r\n");
    assert_eq!(run.take_wire(), "EHLO client.example\r\nQUIT\r\n");
    assert_eq!(run.expire(), Duration::from_secs(19));
    assert!(run.closed());
    assert!(run.failure().is_none());
}

/// BDAT chunk replies are bounded by the end-of-data limit.
#[test]
fn bdat_reply_timeout() {
    let mut run = Run::new(config().with_timeouts(timeouts()));
    run.send(envelope("a@example.org", &["b@example.net"]));
    run.input(b"220 hi\r\n");
    run.input(b"250-mx\r\n250-CHUNKING\r\n250 PIPELINING\r\n");
    run.input(b"250 ok\r\n250 ok\r\n");
    let waited = run.expire();
    assert_eq!(waited, Duration::from_secs(18));
    assert_eq!(run.statuses(), ["b@example.net=deferred"]);
}
