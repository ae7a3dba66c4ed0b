//! Every message handed to the client ends with exactly one outcome per
//! recipient, whatever the server does — above all when the reply to the
//! end of data never comes. Then the outcome is unknown: the server has the
//! whole message and may have accepted it, so the recipient is deferred with
//! a text that says so, never reported accepted and never silently dropped.

use smtp_core::{Error, MessageOutcome, Phase, RecipientStatus};

use smtp_testkit::sansio::{Run, config, envelope};

const PIPELINED: &str = "
    S: 220 mx.example.net
    C: EHLO client.example
    S: 250-mx.example.net
    S: 250 PIPELINING
";

const CHUNKING: &str = "
    S: 220 mx.example.net
    C: EHLO client.example
    S: 250-mx.example.net
    S: 250-PIPELINING
    S: 250 CHUNKING
";

/// The session opening [`PIPELINED`] and then `rest`, as one script: the
/// client's first commands after the EHLO reply are `rest`'s to show.
fn after_pipelined_ehlo(rest: &str) -> String {
    [PIPELINED, rest].concat()
}

/// The same after [`CHUNKING`].
fn after_chunking_ehlo(rest: &str) -> String {
    [CHUNKING, rest].concat()
}

/// One message to b@ and c@, QUIT requested: with PIPELINING the QUIT rides
/// with the end of data, so the session is already "quitting" when the
/// server goes away.
fn sent_with_quit_pending() -> Run {
    let mut run = Run::new(config());
    run.send(envelope(
        "a@example.org",
        &["b@example.net", "c@example.net"],
    ));
    run.client.quit(run.now);
    run.script(&after_pipelined_ehlo(
        "
        C: MAIL FROM:<a@example.org>
        C: RCPT TO:<b@example.net>
        C: RCPT TO:<c@example.net>
        C: DATA
        S: 250 ok
        S: 250 ok
        S: 250 ok
        S: 354 go
        C: Subject: test
        C: 
        C: Hello.
        C: .
        C: QUIT
        ",
    ));
    assert!(run.outcomes().is_empty(), "nothing is decided yet");
    run
}

fn assert_unknown(run: &Run, expected: &[&str]) {
    let outcomes = run.outcomes();
    assert_unknown_in(&outcomes, expected);
}

fn assert_unknown_in(outcomes: &[MessageOutcome], expected: &[&str]) {
    let recipients: Vec<_> = outcomes.iter().flat_map(|m| &m.recipients).collect();
    let got: Vec<String> = recipients.iter().map(|r| r.recipient.to_string()).collect();
    assert_eq!(got, expected);
    for r in recipients {
        assert_eq!(r.status, RecipientStatus::Deferred, "{r}");
        assert!(
            matches!(r.error, Some(Error::OutcomeUnknown { .. })),
            "{:?}",
            r.error
        );
        assert!(r.text().contains("may have accepted"), "{}", r.text());
    }
}

#[test]
fn a_close_after_the_final_dot_with_quit_pipelined_is_an_unknown_outcome() {
    let mut run = sent_with_quit_pending();
    run.close();
    assert_unknown(&run, &["b@example.net", "c@example.net"]);
    assert!(
        matches!(run.failure(), Some(Error::OutcomeUnknown { .. })),
        "{:?}",
        run.failure()
    );
    assert!(
        !run.closed(),
        "a lost outcome is a failure, not a clean close"
    );
}

#[test]
fn silence_after_the_final_dot_with_quit_pipelined_is_an_unknown_outcome() {
    let mut run = sent_with_quit_pending();
    let waited = run.expire();
    assert_eq!(waited, smtp_core::Timeouts::default().data_end);
    assert_unknown(&run, &["b@example.net", "c@example.net"]);
    assert!(!run.closed());
}

#[test]
fn garbage_after_the_final_dot_is_an_unknown_outcome() {
    let mut run = sent_with_quit_pending();
    run.input(b"this is not a reply\r\n");
    assert_unknown(&run, &["b@example.net", "c@example.net"]);
}

#[test]
fn a_close_after_bdat_last_is_an_unknown_outcome() {
    let mut run = Run::new(config().with_extensions(true, true));
    run.send(envelope("a@example.org", &["b@example.net"]));
    run.client.quit(run.now);
    run.script(&after_chunking_ehlo(
        "
        C: MAIL FROM:<a@example.org>
        C: RCPT TO:<b@example.net>
        C: BDAT 25 LAST
        C: Subject: test
        C: 
        C: Hello.
        ",
    ));
    // Nothing was answered, not even MAIL or RCPT: the server had the whole
    // message all the same.
    run.close();
    assert_unknown(&run, &["b@example.net"]);
}

#[test]
fn the_second_of_two_messages_loses_its_reply() {
    let mut run = Run::new(config());
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
        C: Subject: test
        C: 
        C: Hello.
        C: .
        C: MAIL FROM:<a@example.org>
        C: RCPT TO:<c@example.net>
        C: DATA
        S: 250 queued as 1
        S: 250 ok
        S: 250 ok
        S: 354 go
        C: Subject: test
        C: 
        C: Hello.
        C: .
        C: QUIT
        ",
    ));
    run.close();
    let outcomes = run.outcomes();
    assert_eq!(outcomes.len(), 2);
    assert_eq!(outcomes[0].recipients[0].status, RecipientStatus::Accepted);
    assert_unknown_in(&outcomes[1..], &["c@example.net"]);
}

#[test]
fn a_close_before_the_dot_is_deferred_but_not_unknown() {
    // The server never had the whole message: it cannot have accepted it.
    let mut run = Run::new(config());
    run.send(envelope("a@example.org", &["b@example.net"]));
    run.client.quit(run.now);
    run.script(&after_pipelined_ehlo(
        "
        C: MAIL FROM:<a@example.org>
        C: RCPT TO:<b@example.net>
        C: DATA
        S: 250 ok
        S: 250 ok
        ",
    ));
    run.close();
    let outcomes = run.outcomes();
    let r = &outcomes[0].recipients[0];
    assert_eq!(r.status, RecipientStatus::Deferred);
    assert_eq!(
        r.error,
        Some(Error::ConnectionClosed { phase: Phase::Data })
    );
}

#[test]
fn a_close_while_waiting_for_the_quit_reply_is_a_clean_end() {
    let mut run = sent_with_quit_pending();
    run.input(b"250 2.0.0 queued\r\n");
    run.close();
    assert_eq!(
        run.statuses(),
        ["b@example.net=accepted", "c@example.net=accepted"]
    );
    assert!(run.closed());
    assert!(run.failure().is_none());
}

#[test]
fn lockstep_close_after_the_dot_is_an_unknown_outcome() {
    let mut run = Run::new(config());
    run.send(envelope("a@example.org", &["b@example.net"]));
    run.client.quit(run.now);
    run.script(
        "
        S: 220 mx.example.net
        C: EHLO client.example
        S: 250 mx.example.net
        C: MAIL FROM:<a@example.org>
        S: 250 ok
        C: RCPT TO:<b@example.net>
        S: 250 ok
        C: DATA
        S: 354 go
        C: Subject: test
        C: 
        C: Hello.
        C: .
        ",
    );
    run.close();
    assert_unknown(&run, &["b@example.net"]);
}

#[test]
fn a_second_greeting_is_not_taken_for_the_ehlo_reply() {
    // Two replies before EHLO went out: taken in order, every later reply
    // would answer the wrong command (and one recipient's refusal would
    // reject another).
    let mut run = Run::new(config());
    run.send(envelope(
        "a@example.org",
        &["b@example.net", "c@example.net"],
    ));
    run.input(b"220 mx.example.net ESMTP\r\n220 welcome\r\n");
    assert!(
        matches!(
            run.failure(),
            Some(Error::Protocol(smtp_core::ProtocolError::Unsolicited(_)))
        ),
        "{:?}",
        run.failure()
    );
    assert_eq!(
        run.statuses(),
        ["b@example.net=deferred", "c@example.net=deferred"]
    );
}

#[test]
fn a_reply_sent_twice_in_lock_step_is_caught_before_it_shifts_the_rest() {
    let mut run = Run::new(config());
    run.send(envelope(
        "a@example.org",
        &["b@example.net", "c@example.net"],
    ));
    run.script(
        "
        S: 220 mx.example.net
        C: EHLO client.example
        S: 250 mx.example.net
        C: MAIL FROM:<a@example.org>
        ",
    );
    // The MAIL reply twice in one write: the second came before any RCPT.
    run.input(b"250 ok\r\n250 ok\r\n");
    assert!(matches!(
        run.failure(),
        Some(Error::Protocol(smtp_core::ProtocolError::Unsolicited(_)))
    ));
    assert_eq!(
        run.statuses(),
        ["b@example.net=deferred", "c@example.net=deferred"]
    );
}

#[test]
fn a_pipelined_reply_sent_twice_rejects_nobody_with_another_s_refusal() {
    let mut run = Run::new(config());
    run.send(envelope(
        "a@example.org",
        &["b@example.net", "c@example.net"],
    ));
    run.script(&after_pipelined_ehlo(
        "
        C: MAIL FROM:<a@example.org>
        C: RCPT TO:<b@example.net>
        C: RCPT TO:<c@example.net>
        C: DATA
        ",
    ));
    // MAIL's reply twice, then b's refusal, c's acceptance and DATA's 354:
    // read in order, c would get b's 550 and DATA c's 250.
    run.input(
        b"250 ok\r\n250 ok\r\n550 5.1.1 <b@example.net> no such user\r\n250 ok\r\n354 go\r\n",
    );
    assert!(
        matches!(run.failure(), Some(Error::Protocol(_))),
        "{:?}",
        run.failure()
    );
    assert_eq!(
        run.statuses(),
        ["b@example.net=deferred", "c@example.net=deferred"],
        "nobody is rejected on a reply that answered another command"
    );
}

#[test]
fn a_pipelined_refusal_stands_when_the_connection_drops_before_data_s_reply() {
    let mut run = Run::new(config());
    run.send(envelope(
        "a@example.org",
        &["b@example.net", "c@example.net"],
    ));
    run.script(&after_pipelined_ehlo(
        "
        C: MAIL FROM:<a@example.org>
        C: RCPT TO:<b@example.net>
        C: RCPT TO:<c@example.net>
        C: DATA
        S: 250 ok
        S: 550 5.1.1 no such user
        S: 250 ok
        ",
    ));
    run.close();
    assert_eq!(
        run.statuses(),
        ["b@example.net=rejected", "c@example.net=deferred"]
    );
}

#[test]
fn a_421_to_the_final_dot_is_an_answer_not_a_lost_outcome() {
    let mut run = sent_with_quit_pending();
    run.input(b"421 4.3.2 shutting down\r\n");
    let outcomes = run.outcomes();
    let recipients: Vec<_> = outcomes.iter().flat_map(|m| &m.recipients).collect();
    assert_eq!(recipients.len(), 2);
    for r in recipients {
        assert_eq!(r.status, RecipientStatus::Deferred, "{r}");
        assert_eq!(r.phase, Phase::DataEnd, "{r}");
        assert_eq!(r.code().map(|c| c.as_u16()), Some(421), "{r}");
        assert!(
            !matches!(r.error, Some(Error::OutcomeUnknown { .. })),
            "the server answered: {:?}",
            r.error
        );
    }
}

#[test]
fn a_421_to_a_chunk_settles_its_message_too() {
    let mut run = Run::new(config());
    run.send(envelope("a@example.org", &["b@example.net"]));
    run.script(&after_chunking_ehlo(
        "
        C: MAIL FROM:<a@example.org>
        C: RCPT TO:<b@example.net>
        C: BDAT 25 LAST
        C: Subject: test
        C: 
        C: Hello.
        S: 250 ok
        S: 250 ok
        ",
    ));
    run.input(b"421 4.3.2 shutting down\r\n");
    let outcomes = run.outcomes();
    let r = &outcomes[0].recipients[0];
    assert_eq!(r.status, RecipientStatus::Deferred, "{r}");
    assert_eq!(r.code().map(|c| c.as_u16()), Some(421), "{r}");
    assert!(
        !matches!(r.error, Some(Error::OutcomeUnknown { .. })),
        "{r}"
    );
}

#[test]
fn a_message_queued_behind_a_lost_end_of_data_reply_is_left_before_its_data() {
    let mut run = Run::new(config());
    run.send(envelope("a@example.org", &["b@example.net"]));
    run.send(envelope("a@example.org", &["c@example.net"]));
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
        C: MAIL FROM:<a@example.org>
        C: RCPT TO:<c@example.net>
        C: DATA
        ",
    ));
    run.close();
    let outcomes = run.outcomes();
    assert_unknown_in(&outcomes[..1], &["b@example.net"]);
    // The second message never reached its data: not an unknown outcome,
    // and not in the phase of the first one's end of data.
    let second = &outcomes[1].recipients[0];
    assert_eq!(second.status, RecipientStatus::Deferred);
    assert!(
        !matches!(second.error, Some(Error::OutcomeUnknown { .. })),
        "{second}"
    );
    assert_eq!(second.phase, Phase::Mail, "{second}");
}
