//! Mail transactions: pipelined and lock-step, mixed recipient outcomes,
//! several messages per session, 452 splitting, SIZE, 8BITMIME, BDAT.

use smtp_core::data::BodyType;
use smtp_core::{Error, MessageError, Phase, RecipientStatus};

use smtp_testkit::sansio::{Run, config, envelope};

const PIPELINED_EHLO: &str = "
    S: 220 mx.example.net
    C: EHLO client.example
    S: 250-mx.example.net
    S: 250-SIZE 1000
    S: 250 PIPELINING
";

/// The session opening [`PIPELINED_EHLO`] and then `rest`, as one script:
/// the client's first commands after the EHLO reply are `rest`'s to show.
fn after_pipelined_ehlo(rest: &str) -> String {
    [PIPELINED_EHLO, rest].concat()
}

#[test]
fn pipelined_mixed_outcomes() {
    let mut run = Run::new(config());
    run.send(envelope(
        "a@example.org",
        &["ok@example.net", "no@example.net", "later@example.net"],
    ));
    run.script(&after_pipelined_ehlo(
        "
        C: MAIL FROM:<a@example.org>
        C: RCPT TO:<ok@example.net>
        C: RCPT TO:<no@example.net>
        C: RCPT TO:<later@example.net>
        C: DATA
        S: 250 2.1.0 ok
        S: 250 2.1.5 ok
        S: 550 5.1.1 no such user
        S: 450 4.2.1 mailbox busy
        S: 354 go ahead
        C: Subject: test
        C: 
        C: Hello.
        C: .
        S: 250 2.0.0 queued as 1234
        ",
    ));
    assert_eq!(
        run.statuses(),
        [
            "ok@example.net=accepted",
            "no@example.net=rejected",
            "later@example.net=deferred"
        ]
    );
    let m = &run.outcomes()[0];
    assert_eq!(
        m.recipients[0].enhanced_code().unwrap().to_string(),
        "2.0.0"
    );
    assert_eq!(m.recipients[0].phase, Phase::DataEnd);
    assert_eq!(
        m.recipients[1].enhanced_code().unwrap().to_string(),
        "5.1.1"
    );
    assert_eq!(m.recipients[2].phase, Phase::Rcpt);
}

#[test]
fn none_accepted_sends_no_body_and_session_stays_usable() {
    let mut run = Run::new(config());
    run.send(envelope(
        "a@example.org",
        &["x@example.net", "y@example.net"],
    ));
    run.send(envelope("a@example.org", &["ok@example.net"]));
    run.client.quit(run.now);
    run.script(&after_pipelined_ehlo(
        "
        C: MAIL FROM:<a@example.org>
        C: RCPT TO:<x@example.net>
        C: RCPT TO:<y@example.net>
        C: DATA
        S: 250 ok
        S: 550 no
        S: 550 no
        S: 554 no valid recipients
        C: RSET
        C: MAIL FROM:<a@example.org>
        C: RCPT TO:<ok@example.net>
        C: DATA
        S: 250 reset
        S: 250 ok
        S: 250 ok
        S: 354 go
        C: Subject: test
        C: 
        C: Hello.
        C: .
        C: QUIT
        S: 250 queued
        S: 221 bye
        ",
    ));
    assert_eq!(
        run.statuses(),
        [
            "x@example.net=rejected",
            "y@example.net=rejected",
            "ok@example.net=accepted"
        ]
    );
    assert!(run.closed());
}

#[test]
fn none_accepted_lockstep_never_sends_data() {
    let mut run = Run::new(config());
    run.send(envelope("a@example.org", &["x@example.net"]));
    run.send(envelope("a@example.org", &["ok@example.net"]));
    run.script(
        "
        S: 220 mx.example.net
        C: EHLO client.example
        S: 250 mx.example.net
        C: MAIL FROM:<a@example.org>
        S: 250 ok
        C: RCPT TO:<x@example.net>
        S: 550 no
        C: RSET
        S: 250 reset
        C: MAIL FROM:<a@example.org>
        S: 250 ok
        C: RCPT TO:<ok@example.net>
        ",
    );
    assert_eq!(run.statuses(), ["x@example.net=rejected"]);
}

#[test]
fn server_says_354_with_no_recipients() {
    let mut run = Run::new(config());
    run.send(envelope("a@example.org", &["x@example.net"]));
    run.script(&after_pipelined_ehlo(
        "
        C: MAIL FROM:<a@example.org>
        C: RCPT TO:<x@example.net>
        C: DATA
        S: 250 ok
        S: 550 no
        S: 354 go ahead anyway
        C: .
        S: 554 no recipients
        ",
    ));
    assert_eq!(run.statuses(), ["x@example.net=rejected"]);
    assert!(run.failure().is_none());
}

#[test]
fn mail_refused_rejects_every_recipient() {
    let mut run = Run::new(config());
    run.send(envelope(
        "a@example.org",
        &["x@example.net", "y@example.net"],
    ));
    run.script(&after_pipelined_ehlo(
        "
        C: MAIL FROM:<a@example.org>
        C: RCPT TO:<x@example.net>
        C: RCPT TO:<y@example.net>
        C: DATA
        S: 553 5.7.1 sender not allowed
        S: 503 need MAIL
        S: 503 need MAIL
        S: 503 need MAIL
        ",
    ));
    assert_eq!(
        run.statuses(),
        ["x@example.net=rejected", "y@example.net=rejected"]
    );
    let m = &run.outcomes()[0];
    assert!(
        m.recipients
            .iter()
            .all(|r| r.phase == Phase::Mail && r.code().unwrap().as_u16() == 553)
    );
}

#[test]
fn authentication_required_defers_rather_than_rejects() {
    // RFC 4954's 530 refuses the session's missing credentials: no
    // recipient is at fault, so none is rejected.
    let mut run = Run::new(config());
    run.send(envelope("a@example.org", &["x@example.net"]));
    run.script(&after_pipelined_ehlo(
        "
        C: MAIL FROM:<a@example.org>
        C: RCPT TO:<x@example.net>
        C: DATA
        S: 530 5.7.0 Authentication required
        S: 503 need MAIL
        S: 503 need MAIL
        ",
    ));
    assert_eq!(run.statuses(), ["x@example.net=deferred"]);
    assert_eq!(
        run.outcomes()[0].recipients[0].code().unwrap().as_u16(),
        530
    );
}

#[test]
fn next_envelope_rides_with_end_of_data() {
    let mut run = Run::new(config());
    run.body = b"one\r\n".to_vec();
    run.send(envelope("a@example.org", &["b@example.net"]));
    run.send(envelope("a@example.org", &["c@example.net"]));
    run.client.quit(run.now);
    run.script(&after_pipelined_ehlo(
        "
        C: MAIL FROM:<a@example.org>
        C: RCPT TO:<b@example.net>
        C: DATA
        S: 250 ok
        S: 250 ok
        S: 354 go
        C: one
        C: .
        C: MAIL FROM:<a@example.org>
        C: RCPT TO:<c@example.net>
        C: DATA
        S: 250 queued 1
        S: 250 ok
        S: 250 ok
        S: 354 go
        C: one
        C: .
        C: QUIT
        S: 451 4.3.0 try later
        S: 221 bye
        ",
    ));
    assert_eq!(
        run.statuses(),
        ["b@example.net=accepted", "c@example.net=deferred"]
    );
}

#[test]
fn too_many_recipients_go_in_the_next_transaction() {
    let mut run = Run::new(config());
    run.body = b"x\r\n".to_vec();
    run.send(envelope(
        "a@example.org",
        &["1@example.net", "2@example.net", "3@example.net"],
    ));
    run.script(&after_pipelined_ehlo(
        "
        C: MAIL FROM:<a@example.org>
        C: RCPT TO:<1@example.net>
        C: RCPT TO:<2@example.net>
        C: RCPT TO:<3@example.net>
        C: DATA
        S: 250 ok
        S: 250 ok
        S: 452 4.5.3 Too many recipients
        S: 452 4.5.3 Too many recipients
        S: 354 go
        C: x
        C: .
        C: MAIL FROM:<a@example.org>
        C: RCPT TO:<2@example.net>
        C: RCPT TO:<3@example.net>
        C: DATA
        S: 250 queued
        S: 250 ok
        S: 250 ok
        S: 250 ok
        S: 354 go
        C: x
        C: .
        S: 250 queued again
        ",
    ));
    assert_eq!(
        run.statuses(),
        [
            "1@example.net=accepted",
            "2@example.net=accepted",
            "3@example.net=accepted"
        ]
    );
    assert_eq!(run.outcomes().len(), 1, "one result for the message");
}

#[test]
fn too_many_with_no_progress_defers() {
    let mut run = Run::new(config());
    run.send(envelope("a@example.org", &["1@example.net"]));
    run.script(&after_pipelined_ehlo(
        "
        C: MAIL FROM:<a@example.org>
        C: RCPT TO:<1@example.net>
        C: DATA
        S: 250 ok
        S: 452 4.5.3 Too many recipients
        S: 554 no valid recipients
        ",
    ));
    assert_eq!(run.statuses(), ["1@example.net=deferred"]);
}

#[test]
fn recipients_split_at_the_configured_maximum() {
    let mut cfg = config();
    cfg.max_recipients = 2;
    let mut run = Run::new(cfg);
    run.body = b"x\r\n".to_vec();
    run.send(envelope(
        "a@example.org",
        &["1@example.net", "2@example.net", "3@example.net"],
    ));
    run.script(&after_pipelined_ehlo(
        "
        C: MAIL FROM:<a@example.org>
        C: RCPT TO:<1@example.net>
        C: RCPT TO:<2@example.net>
        C: DATA
        S: 250 ok
        S: 250 ok
        S: 250 ok
        S: 354 go
        C: x
        C: .
        C: MAIL FROM:<a@example.org>
        C: RCPT TO:<3@example.net>
        C: DATA
        S: 250 queued
        S: 250 ok
        S: 250 ok
        S: 354 go
        C: x
        C: .
        S: 250 queued
        ",
    ));
    assert_eq!(run.statuses().len(), 3);
    assert!(run.outcomes()[0].all_accepted());
}

#[test]
fn size_checked_before_any_data() {
    let mut run = Run::new(config());
    run.send(envelope("a@example.org", &["b@example.net"]).with_size(5000));
    run.send(envelope("a@example.org", &["c@example.net"]).with_size(10));
    run.script(&after_pipelined_ehlo(
        "
        C: MAIL FROM:<a@example.org> SIZE=10
        C: RCPT TO:<c@example.net>
        C: DATA
        ",
    ));
    let m = &run.outcomes()[0];
    assert_eq!(m.recipients[0].status, RecipientStatus::Rejected);
    assert_eq!(
        m.recipients[0].error,
        Some(Error::Message(MessageError::TooLarge {
            size: 5000,
            limit: 1000
        }))
    );
}

#[test]
fn eight_bit_needs_8bitmime() {
    let mut run = Run::new(config());
    run.send(envelope("a@example.org", &["b@example.net"]).with_body(BodyType::EightBitMime));
    run.script(PIPELINED_EHLO);
    assert!(run.take_wire().is_empty(), "nothing sent");
    assert_eq!(
        run.outcomes()[0].recipients[0].error,
        Some(Error::Message(MessageError::EightBitUnsupported))
    );
}

#[test]
fn eight_bit_sent_with_body_param() {
    let mut run = Run::new(config());
    run.body = "Subject: caf\u{e9}\r\n\r\nd\u{e9}j\u{e0} vu\r\n"
        .as_bytes()
        .to_vec();
    run.send(envelope("a@example.org", &["b@example.net"]).with_body(BodyType::EightBitMime));
    run.script(
        "
        S: 220 mx.example.net
        C: EHLO client.example
        S: 250-mx.example.net
        S: 250-8BITMIME
        S: 250 PIPELINING
        C: MAIL FROM:<a@example.org> BODY=8BITMIME
        C: RCPT TO:<b@example.net>
        C: DATA
        S: 250 ok
        S: 250 ok
        S: 354 go
        C: Subject: caf\u{e9}
        C: 
        C: d\u{e9}j\u{e0} vu
        C: .
        S: 250 ok
        ",
    );
    assert_eq!(run.statuses(), ["b@example.net=accepted"]);
}

#[test]
fn undeclared_8bit_body_is_never_terminated() {
    let mut run = Run::new(config());
    run.body = b"Subject: x\r\n\r\nline two \xff\r\n".to_vec();
    run.send(envelope("a@example.org", &["b@example.net"]));
    run.send(envelope("a@example.org", &["c@example.net"]));
    let wire = run.script_and_rest(&after_pipelined_ehlo(
        "
        C: MAIL FROM:<a@example.org>
        C: RCPT TO:<b@example.net>
        C: DATA
        S: 250 ok
        S: 250 ok
        S: 354 go
        ",
    ));
    assert!(!wire.contains("\r\n.\r\n"), "no terminator: {wire:?}");
    assert_eq!(
        run.statuses(),
        ["b@example.net=rejected", "c@example.net=deferred"]
    );
    assert!(matches!(
        run.failure(),
        Some(Error::Message(MessageError::Body(_)))
    ));
    assert!(
        run.failure().unwrap().to_string().contains("line 3"),
        "{}",
        run.failure().unwrap()
    );
}

#[test]
fn smtputf8_needed_but_not_offered() {
    let mut run = Run::new(config());
    run.send(envelope("a@example.org", &["jörg@example.net"]));
    run.script(PIPELINED_EHLO);
    assert!(run.take_wire().is_empty());
    assert!(matches!(
        run.outcomes()[0].recipients[0].error,
        Some(Error::Message(MessageError::Utf8Unsupported { .. }))
    ));
}

#[test]
fn a_utf8_address_is_named_before_the_8bit_body_it_brings() {
    // No SMTPUTF8 and no 8BITMIME: the UTF-8 address is the cause to name
    // (its header fields made the message 8-bit); an IDN domain is not one.
    let mut run = Run::new(config());
    run.send(
        envelope(
            "a@bücher.example",
            &["ok@bücher.example", "jörg@example.net"],
        )
        .with_body(BodyType::EightBitMime),
    );
    run.send(envelope("jörg@example.org", &["b@example.net"]));
    run.script(PIPELINED_EHLO);
    assert!(run.take_wire().is_empty());
    let outcomes = run.outcomes();
    let Some(Error::Message(e)) = &outcomes[0].recipients[0].error else {
        panic!("{:?}", outcomes[0]);
    };
    assert_eq!(
        *e,
        MessageError::Utf8Unsupported {
            address: "jörg@example.net".into(),
            sender: false
        }
    );
    let text = e.to_string();
    for words in [
        "recipient address jörg@example.net",
        "does not offer SMTPUTF8",
        "RFC 6531",
        "ask the recipient for an ASCII address",
        "a server that offers SMTPUTF8",
    ] {
        assert!(text.contains(words), "{words:?} missing from: {text}");
    }
    let Some(Error::Message(e)) = &outcomes[1].recipients[0].error else {
        panic!("{:?}", outcomes[1]);
    };
    assert!(
        matches!(e, MessageError::Utf8Unsupported { sender: true, address } if address == "jörg@example.org"),
        "{e:?}"
    );
    assert!(e.to_string().contains("send from an ASCII address"), "{e}");
}

#[test]
fn smtputf8_sent_when_offered() {
    let mut run = Run::new(config());
    run.send(envelope("a@example.org", &["jörg@example.net"]));
    run.script(
        "
        S: 220 mx.example.net
        C: EHLO client.example
        S: 250-mx.example.net
        S: 250-SMTPUTF8
        S: 250 PIPELINING
        C: MAIL FROM:<a@example.org> SMTPUTF8
        C: RCPT TO:<jörg@example.net>
        C: DATA
        ",
    );
}

#[test]
fn bdat_with_chunking_and_pipelining() {
    let mut run = Run::new(config());
    run.body = b"Subject: x\n\n.hello\n".to_vec();
    run.send(envelope(
        "a@example.org",
        &["b@example.net", "c@example.net"],
    ));
    run.send(envelope("a@example.org", &["d@example.net"]));
    run.script(
        "
        S: 220 mx.example.net
        C: EHLO client.example
        S: 250-mx.example.net
        S: 250-CHUNKING
        S: 250 PIPELINING
        C: MAIL FROM:<a@example.org>
        C: RCPT TO:<b@example.net>
        C: RCPT TO:<c@example.net>
        C: BDAT 22 LAST
        C: Subject: x
        C: 
        C: .hello
        C: MAIL FROM:<a@example.org>
        C: RCPT TO:<d@example.net>
        C: BDAT 22 LAST
        C: Subject: x
        C: 
        C: .hello
        S: 250 ok
        S: 250 ok
        S: 550 no
        S: 250 2.0.0 message accepted
        S: 250 ok
        S: 250 ok
        S: 452 4.3.1 disk full
        ",
    );
    assert_eq!(
        run.statuses(),
        [
            "b@example.net=accepted",
            "c@example.net=rejected",
            "d@example.net=deferred"
        ]
    );
}

#[test]
fn bdat_in_several_chunks_and_a_refused_chunk() {
    let mut run = Run::new(config());
    run.body = b"aaaa\r\nbbbb\r\n".to_vec();
    run.chunk = 6;
    run.send(envelope("a@example.org", &["b@example.net"]));
    run.script(
        "
        S: 220 mx.example.net
        C: EHLO client.example
        S: 250-mx.example.net
        S: 250-CHUNKING
        S: 250 PIPELINING
        C: MAIL FROM:<a@example.org>
        C: RCPT TO:<b@example.net>
        C: BDAT 6
        C: aaaa
        C: BDAT 6 LAST
        C: bbbb
        S: 250 ok
        S: 250 ok
        S: 552 5.3.4 too big
        S: 503 5.5.1 no transaction
        ",
    );
    assert_eq!(run.statuses(), ["b@example.net=rejected"]);
    let r = &run.outcomes()[0].recipients[0];
    assert_eq!(r.code().unwrap().as_u16(), 552);
}

#[test]
fn data_end_refusals() {
    for (reply, status) in [
        ("554 5.7.1 spam", "rejected"),
        ("451 4.7.1 greylisted", "deferred"),
    ] {
        let mut run = Run::new(config());
        run.send(envelope("a@example.org", &["b@example.net"]));
        run.script(&after_pipelined_ehlo(&format!(
            "
            C: MAIL FROM:<a@example.org>
            C: RCPT TO:<b@example.net>
            C: DATA
            S: 250 ok
            S: 250 ok
            S: 354 go
            C: Subject: test
            C: 
            C: Hello.
            C: .
            S: {reply}
            "
        )));
        assert_eq!(run.statuses(), [format!("b@example.net={status}")]);
        assert!(run.failure().is_none(), "the session goes on");
    }
}

#[test]
fn service_closing_mid_transaction_defers_everyone() {
    let mut run = Run::new(config());
    run.send(envelope("a@example.org", &["b@example.net"]));
    run.send(envelope("a@example.org", &["c@example.net"]));
    run.script(&after_pipelined_ehlo(
        "
        C: MAIL FROM:<a@example.org>
        C: RCPT TO:<b@example.net>
        C: DATA
        S: 250 ok
        S: 421 4.3.2 shutting down
        ",
    ));
    assert_eq!(
        run.statuses(),
        ["b@example.net=deferred", "c@example.net=deferred"]
    );
    assert!(matches!(run.failure(), Some(Error::Rejected { .. })));
}

#[test]
fn disconnect_before_end_of_data_reply_is_not_accepted() {
    let mut run = Run::new(config());
    run.send(envelope("a@example.org", &["b@example.net"]));
    run.script(&after_pipelined_ehlo(
        "
        C: MAIL FROM:<a@example.org>
        C: RCPT TO:<b@example.net>
        C: DATA
        S: 250 ok
        S: 250 ok
        S: 354 go
        C: Subject: test
        C: 
        C: Hello.
        C: .
        ",
    ));
    run.close();
    assert_eq!(run.statuses(), ["b@example.net=deferred"]);
    assert_eq!(
        run.failure(),
        Some(&Error::OutcomeUnknown {
            cause: Box::new(Error::ConnectionClosed {
                phase: Phase::DataEnd
            })
        })
    );
}

#[test]
fn body_line_endings_and_dots_on_the_wire() {
    let mut run = Run::new(config());
    run.body = b".first\nbare lf\rbare cr\r\n.\r\n..two\n".to_vec();
    run.chunk = 3;
    run.send(envelope("a@example.org", &["b@example.net"]));
    run.script(&after_pipelined_ehlo(
        "
        C: MAIL FROM:<a@example.org>
        C: RCPT TO:<b@example.net>
        C: DATA
        S: 250 ok
        S: 250 ok
        S: 354 go
        C: ..first
        C: bare lf
        C: bare cr
        C: ..
        C: ...two
        C: .
        S: 250 ok
        ",
    ));
}

#[test]
fn misuse_is_an_error_not_a_panic() {
    let mut run = Run::new(config());
    assert!(matches!(
        run.client.send(run.now, envelope("a@example.org", &[])),
        Err(Error::Misuse(_))
    ));
    assert!(matches!(
        run.client.body_chunk(run.now, b"x"),
        Err(Error::Misuse(_))
    ));
    assert!(matches!(
        run.client.body_end(run.now),
        Err(Error::Misuse(_))
    ));
    assert!(matches!(
        run.client.tls_established(run.now, Default::default()),
        Err(Error::Misuse(_))
    ));
}

#[test]
fn a_broken_body_over_bdat_is_reset_and_the_session_goes_on() {
    let mut run = Run::new(config());
    run.body = b"Subject: x\r\n\r\n\xff\r\n".to_vec();
    // Declared 7-bit, so its 8-bit byte breaks the rules; the second
    // message declares 8BITMIME and may carry it.
    run.send(envelope("a@example.org", &["b@example.net"]));
    run.send(envelope("a@example.org", &["c@example.net"]).with_body(BodyType::EightBitMime));
    run.script(
        "
        S: 220 mx.example.net
        C: EHLO client.example
        S: 250-mx.example.net
        S: 250-CHUNKING
        S: 250-8BITMIME
        S: 250 PIPELINING
        C: MAIL FROM:<a@example.org>
        C: RCPT TO:<b@example.net>
        C: RSET
        C: MAIL FROM:<a@example.org> BODY=8BITMIME
        C: RCPT TO:<c@example.net>
        C: BDAT 17 LAST
        C: Subject: x
        C: 
        C: *
        S: 250 ok
        S: 250 ok
        S: 250 reset
        S: 250 ok
        S: 250 ok
        S: 250 2.0.0 accepted
        ",
    );
    assert_eq!(
        run.statuses(),
        ["b@example.net=rejected", "c@example.net=accepted"]
    );
    assert!(run.failure().is_none(), "{:?}", run.failure());
    let first = &run.outcomes()[0].recipients[0];
    assert!(
        matches!(first.error, Some(Error::Message(MessageError::Body(_)))),
        "{first}"
    );
    assert_eq!(first.phase, Phase::DataBlock);
}

#[test]
fn a_broken_body_after_bdat_chunks_went_out_is_reset_too() {
    let mut run = Run::new(config());
    // Clean first chunk, then a NUL in the second: one BDAT chunk is on the
    // wire before the fault, and it must never be followed by BDAT LAST.
    run.body = b"Subject: x\r\n\r\nabcd\r\n\0\r\n".to_vec();
    run.chunk = 20;
    run.send(envelope("a@example.org", &["b@example.net"]));
    run.script(
        "
        S: 220 mx.example.net
        C: EHLO client.example
        S: 250-mx.example.net
        S: 250-CHUNKING
        S: 250 PIPELINING
        C: MAIL FROM:<a@example.org>
        C: RCPT TO:<b@example.net>
        C: BDAT 20
        C: Subject: x
        C: 
        C: abcd
        S: 250 ok
        S: 250 ok
        S: 250 20 octets
        ",
    );
    assert_eq!(run.statuses(), ["b@example.net=rejected"]);
    assert!(run.failure().is_none(), "{:?}", run.failure());
    // The session is idle and usable: the next message starts with RSET.
    run.send(envelope("a@example.org", &["c@example.net"]));
    let wire = run.take_wire();
    assert!(
        wire.starts_with("RSET\r\nMAIL FROM:<a@example.org>\r\n"),
        "{wire:?}"
    );
    assert!(!wire.contains("LAST\r\nSubject: x\r\n\r\nabcd"), "{wire:?}");
}

#[test]
fn the_transcript_shows_a_dot_only_where_one_is_sent() {
    let transcript = |chunking: bool| -> Vec<String> {
        let mut run = Run::new(
            config()
                .with_transcript(true)
                .with_extensions(true, chunking),
        );
        run.send(envelope("a@example.org", &["b@example.net"]));
        run.input(b"220 mx.example.net\r\n");
        run.input(b"250-mx.example.net\r\n250-CHUNKING\r\n250 PIPELINING\r\n");
        if !chunking {
            run.input(b"250 ok\r\n250 ok\r\n354 go\r\n");
        }
        run.events
            .iter()
            .filter_map(|e| match e {
                smtp_core::Event::Transcript(line) => Some(line.to_string()),
                _ => None,
            })
            .collect()
    };
    let bdat = transcript(true);
    assert!(
        bdat.iter()
            .any(|l| l.starts_with("-> BDAT ") && l.ends_with(" LAST")),
        "{bdat:?}"
    );
    assert!(
        !bdat.iter().any(|l| l == "-> ."),
        "BDAT sends no dot: {bdat:?}"
    );
    let data = transcript(false);
    assert!(data.iter().any(|l| l == "-> ."), "{data:?}");
}

#[test]
fn a_3xx_to_mail_or_rcpt_is_a_protocol_error_not_a_deferral() {
    for (replies, phase) in [
        ("354 go\r\n", Phase::Mail),
        ("250 ok\r\n354 go\r\n", Phase::Rcpt),
    ] {
        let mut run = Run::new(config());
        run.send(envelope("a@example.org", &["b@example.net"]));
        run.script(&after_pipelined_ehlo(
            "
            C: MAIL FROM:<a@example.org>
            C: RCPT TO:<b@example.net>
            C: DATA
            ",
        ));
        run.input(replies.as_bytes());
        assert!(
            matches!(
                run.failure(),
                Some(Error::Protocol(smtp_core::ProtocolError::UnexpectedReply { phase: p, .. })) if *p == phase
            ),
            "{phase}: {:?}",
            run.failure()
        );
        assert_eq!(run.statuses(), ["b@example.net=deferred"]);
    }
}
