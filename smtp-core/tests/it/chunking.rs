//! However the server's bytes are chunked, the client does the same thing;
//! whatever the server sends, the client never panics.

use proptest::prelude::*;

use smtp_core::Event;

use smtp_testkit::sansio::{Run, config, envelope};

/// A session's server turns: each turn answers what the client has sent.
const PIPELINED: &[&str] = &[
    "220-mx.example.net ESMTP\r\n220 second greeting line\r\n",
    "250-mx.example.net\r\n250-SIZE 100000\r\n250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n250 PIPELINING\r\n",
    "250 2.1.0 ok\r\n250 2.1.5 ok\r\n550-5.1.1 no such\r\n550 5.1.1 user\r\n450 4.2.1 busy\r\n354 go\r\n",
    "250 2.0.0 queued\r\n250 2.1.0 ok\r\n250 2.1.5 ok\r\n354 go\r\n",
    "554 5.7.1 rejected\r\n221 2.0.0 bye\r\n",
];

const LOCKSTEP: &[&str] = &[
    "220 mx.example.net\r\n",
    "250-mx.example.net\r\n250 HELP\r\n",
    "250 ok\r\n",
    "250 ok\r\n",
    "550 no\r\n",
    "250 ok\r\n",
    "354 go\r\n",
    "250 queued\r\n",
    "250 ok\r\n",
    "250 ok\r\n",
    "354 go\r\n",
    "451 later\r\n",
    "221 bye\r\n",
];

fn play(turns: &[&str], cuts: &[usize]) -> (String, Vec<Event>) {
    let mut run = Run::new(config());
    run.send(envelope(
        "a@example.org",
        &["1@example.net", "2@example.net", "3@example.net"],
    ));
    run.send(envelope("a@example.org", &["4@example.net"]));
    run.client.quit(run.now);
    let mut cuts = cuts.iter().copied();
    for turn in turns {
        let bytes = turn.as_bytes();
        let mut at = 0;
        while at < bytes.len() {
            let step = cuts.next().map_or(bytes.len(), |c| 1 + c % 7);
            let end = (at + step).min(bytes.len());
            run.input(&bytes[at..end]);
            at = end;
        }
    }
    let wire = run.take_wire();
    (wire, run.events)
}

#[test]
fn scenarios_complete() {
    for turns in [PIPELINED, LOCKSTEP] {
        let (_, events) = play(turns, &[]);
        assert!(
            events.iter().any(|e| matches!(e, Event::Closed)),
            "{events:#?}"
        );
        let results = events
            .iter()
            .filter(|e| matches!(e, Event::MessageResult(_)))
            .count();
        assert_eq!(results, 2);
    }
}

#[test]
fn split_at_every_byte() {
    for turns in [PIPELINED, LOCKSTEP] {
        assert_eq!(play(turns, &[0; 4096]), play(turns, &[]));
    }
}

proptest! {
    #[test]
    fn any_chunking_gives_the_same_session(cuts in proptest::collection::vec(any::<usize>(), 0..400)) {
        prop_assert_eq!(play(PIPELINED, &cuts), play(PIPELINED, &[]));
        prop_assert_eq!(play(LOCKSTEP, &cuts), play(LOCKSTEP, &[]));
    }

    #[test]
    fn arbitrary_server_bytes_never_panic(
        prefix in 0..4usize,
        junk in proptest::collection::vec(any::<u8>(), 0..3000),
    ) {
        let mut run = Run::new(config());
        run.send(envelope("a@example.org", &["1@example.net", "2@example.net"]));
        for turn in &PIPELINED[..prefix] {
            run.input(turn.as_bytes());
        }
        run.input(&junk);
        run.close();
        // Whatever happened, the message has its outcome and nothing is left hanging.
        prop_assert_eq!(run.outcomes().len(), 1);
        prop_assert_eq!(run.outcomes()[0].recipients.len(), 2);
        prop_assert!(run.client.is_closed());
    }

    #[test]
    fn arbitrary_reply_lines_never_panic(
        lines in proptest::collection::vec("[0-9]{3}[ -][ -~]{0,20}", 1..30),
    ) {
        let mut run = Run::new(config());
        run.send(envelope("a@example.org", &["1@example.net"]));
        run.input(b"220 hi\r\n250 PIPELINING\r\n");
        for line in lines {
            run.input(format!("{line}\r\n").as_bytes());
        }
        run.close();
        prop_assert_eq!(run.outcomes().len(), 1);
        prop_assert!(run.client.is_closed());
    }
}
