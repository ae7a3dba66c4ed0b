//! RFC 5321 Appendix D transcripts, replayed against the client.

use smtp_core::RecipientStatus;
use smtp_core::ehlo::ClientId;

use smtp_testkit::sansio::{Run, config, envelope};

/// D.1: a typical SMTP transaction scenario (no PIPELINING, so lock-step).
#[test]
fn d1_typical_transaction() {
    let mut cfg = config();
    cfg.client_id = ClientId::parse("bar.com").unwrap();
    let mut run = Run::new(cfg);
    run.body = b"Blah blah blah...\r\n...etc. etc. etc.\r\n".to_vec();
    run.send(envelope(
        "Smith@bar.com",
        &["Jones@foo.com", "Green@foo.com", "Brown@foo.com"],
    ));
    run.client.quit(run.now);
    run.script(
        "
        S: 220 foo.com Simple Mail Transfer Service Ready
        C: EHLO bar.com
        S: 250-foo.com greets bar.com
        S: 250-8BITMIME
        S: 250-SIZE
        S: 250-DSN
        S: 250 HELP
        C: MAIL FROM:<Smith@bar.com>
        S: 250 OK
        C: RCPT TO:<Jones@foo.com>
        S: 250 OK
        C: RCPT TO:<Green@foo.com>
        S: 550 No such user here
        C: RCPT TO:<Brown@foo.com>
        S: 250 OK
        C: DATA
        S: 354 Start mail input; end with <CRLF>.<CRLF>
        C: Blah blah blah...
        C: ....etc. etc. etc.
        C: .
        S: 250 OK
        C: QUIT
        S: 221 foo.com Service closing transmission channel
        ",
    );
    assert_eq!(
        run.statuses(),
        [
            "Jones@foo.com=accepted",
            "Green@foo.com=rejected",
            "Brown@foo.com=accepted"
        ]
    );
    let outcome = &run.outcomes()[0];
    assert_eq!(outcome.recipients[1].code().map(|c| c.as_u16()), Some(550));
    assert_eq!(outcome.recipients[1].status, RecipientStatus::Rejected);
    assert!(run.closed());
    assert!(run.failure().is_none());
}

/// D.1 again with the server offering PIPELINING: the same outcome, with the
/// envelope in one write (RFC 2920 §3.1).
#[test]
fn d1_pipelined() {
    let mut cfg = config();
    cfg.client_id = ClientId::parse("bar.com").unwrap();
    let mut run = Run::new(cfg);
    run.body = b"Blah blah blah...\r\n...etc. etc. etc.\r\n".to_vec();
    run.send(envelope(
        "Smith@bar.com",
        &["Jones@foo.com", "Green@foo.com", "Brown@foo.com"],
    ));
    run.client.quit(run.now);
    run.script(
        "
        S: 220 foo.com Simple Mail Transfer Service Ready
        C: EHLO bar.com
        S: 250-foo.com greets bar.com
        S: 250 PIPELINING
        C: MAIL FROM:<Smith@bar.com>
        C: RCPT TO:<Jones@foo.com>
        C: RCPT TO:<Green@foo.com>
        C: RCPT TO:<Brown@foo.com>
        C: DATA
        S: 250 OK
        S: 250 OK
        S: 550 No such user here
        S: 250 OK
        S: 354 Start mail input; end with <CRLF>.<CRLF>
        C: Blah blah blah...
        C: ....etc. etc. etc.
        C: .
        C: QUIT
        S: 250 OK
        S: 221 foo.com Service closing transmission channel
        ",
    );
    assert_eq!(
        run.statuses(),
        [
            "Jones@foo.com=accepted",
            "Green@foo.com=rejected",
            "Brown@foo.com=accepted"
        ]
    );
    assert!(run.closed());
}
