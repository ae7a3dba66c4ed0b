//! The conformance matrix, generated: every step of a session × every kind
//! of failure, checking each recipient's outcome, that nothing is accepted
//! without a 2xx to the end of data, that nothing secret or transactional
//! is sent before TLS when TLS failed, and that every run ends.
//! Adding a step or a failure kind to the enums extends the matrix.

use smtp_core::sasl::{AuthChoice, Credentials, Secret};
use smtp_core::{Event, RecipientStatus, TlsPolicy};

use smtp_testkit::sansio::{Run, config, envelope};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    Greeting,
    Ehlo,
    StartTls,
    Auth,
    Mail,
    Rcpt1,
    Rcpt2,
    Data,
    DataEnd,
}

const STEPS: [Step; 9] = [
    Step::Greeting,
    Step::Ehlo,
    Step::StartTls,
    Step::Auth,
    Step::Mail,
    Step::Rcpt1,
    Step::Rcpt2,
    Step::Data,
    Step::DataEnd,
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Failure {
    Transient,
    Permanent,
    Disconnect,
    Timeout,
    Garbage,
}

const FAILURES: [Failure; 5] = [
    Failure::Transient,
    Failure::Permanent,
    Failure::Disconnect,
    Failure::Timeout,
    Failure::Garbage,
];

/// The normal reply, and the 4xx and 5xx a real server would give, per step.
fn replies(step: Step) -> (&'static str, &'static str, &'static str) {
    match step {
        Step::Greeting => (
            "220 mx.example.net ESMTP\r\n",
            "421 4.3.2 busy\r\n",
            "554 5.3.2 no service\r\n",
        ),
        Step::Ehlo => (
            "250-mx.example.net\r\n250 STARTTLS\r\n",
            "421 4.3.2 busy\r\n",
            "554 5.7.1 go away\r\n",
        ),
        Step::StartTls => (
            "220 2.0.0 go ahead\r\n",
            "454 4.7.0 TLS not available\r\n",
            "502 5.5.1 no TLS\r\n",
        ),
        Step::Auth => (
            "235 2.7.0 ok\r\n",
            "454 4.7.0 try later\r\n",
            "535 5.7.8 bad credentials\r\n",
        ),
        Step::Mail => (
            "250 2.1.0 ok\r\n",
            "451 4.3.0 later\r\n",
            "553 5.7.1 sender refused\r\n",
        ),
        Step::Rcpt1 | Step::Rcpt2 => (
            "250 2.1.5 ok\r\n",
            "450 4.2.1 busy\r\n",
            "550 5.1.1 no such user\r\n",
        ),
        Step::Data => (
            "354 go ahead\r\n",
            "451 4.3.0 later\r\n",
            "554 5.7.1 refused\r\n",
        ),
        Step::DataEnd => (
            "250 2.0.0 queued\r\n",
            "451 4.7.1 greylisted\r\n",
            "554 5.7.1 spam\r\n",
        ),
    }
}

/// The step a client line starts (in this session's lock-step order).
fn step_of(line: &str, ehlos: &mut usize, rcpts: &mut usize) -> Option<Step> {
    let verb = line
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_ascii_uppercase();
    match verb.as_str() {
        "EHLO" => {
            *ehlos += 1;
            // The second EHLO (after TLS) answers with AUTH.
            Some(Step::Ehlo)
        }
        "STARTTLS" => Some(Step::StartTls),
        "AUTH" => Some(Step::Auth),
        "MAIL" => Some(Step::Mail),
        "RCPT" => {
            *rcpts += 1;
            Some(if *rcpts == 1 {
                Step::Rcpt1
            } else {
                Step::Rcpt2
            })
        }
        "DATA" => Some(Step::Data),
        "." => Some(Step::DataEnd),
        _ => None,
    }
}

fn expected(step: Step, failure: Failure) -> [RecipientStatus; 2] {
    use RecipientStatus::{Accepted, Deferred, Rejected};
    match (failure, step) {
        (Failure::Disconnect | Failure::Timeout | Failure::Garbage, _) => [Deferred, Deferred],
        (Failure::Transient, Step::Rcpt1) => [Deferred, Accepted],
        (Failure::Transient, Step::Rcpt2) => [Accepted, Deferred],
        (Failure::Transient, _) => [Deferred, Deferred],
        (Failure::Permanent, Step::Rcpt1) => [Rejected, Accepted],
        (Failure::Permanent, Step::Rcpt2) => [Accepted, Rejected],
        // A 5xx in the transaction refuses the message for everyone.
        (Failure::Permanent, Step::Mail | Step::Data | Step::DataEnd) => [Rejected, Rejected],
        // Before it (greeting, EHLO, STARTTLS, AUTH) the session failed:
        // not the recipients' fault, worth a retry.
        (Failure::Permanent, _) => [Deferred, Deferred],
    }
}

/// A lock-step session under Required with credentials, two recipients.
fn session() -> Run {
    let creds = Credentials::Password {
        username: "u".into(),
        password: Secret::new("p"),
    };
    let cfg = config()
        .with_tls(TlsPolicy::Required)
        .with_credentials(creds, AuthChoice::Auto, vec![9; 24])
        .with_extensions(false, false);
    let mut run = Run::new(cfg);
    run.send(envelope(
        "a@example.org",
        &["one@example.net", "two@example.net"],
    ));
    run
}

/// Runs one cell; returns the statuses and everything the client sent.
fn cell(step: Step, failure: Failure) -> (Vec<RecipientStatus>, String, Vec<Event>) {
    let mut run = session();
    run.client.quit(run.now);
    let (mut ehlos, mut rcpts) = (0, 0);
    let mut all_sent = String::new();
    let mut next = Some(Step::Greeting);
    for _ in 0..50 {
        let Some(current) = next.take() else { break };
        let (ok, transient, permanent) = replies(current);
        let ok = if current == Step::Ehlo && ehlos >= 2 {
            "250-mx.example.net\r\n250 AUTH PLAIN\r\n"
        } else {
            ok
        };
        // The first EHLO is "the EHLO step"; the second one always succeeds.
        let failing = current == step && !(current == Step::Ehlo && ehlos >= 2);
        match (failing, failure) {
            (false, _) => run.input(ok.as_bytes()),
            (true, Failure::Transient) => run.input(transient.as_bytes()),
            (true, Failure::Permanent) => run.input(permanent.as_bytes()),
            (true, Failure::Disconnect) => run.close(),
            (true, Failure::Timeout) => {
                run.expire();
            }
            (true, Failure::Garbage) => run.input(b"HTTP/1.1 400 Bad Request\r\n"),
        }
        let sent = run.take_wire();
        all_sent.push_str(&sent);
        // The body lines are not commands; the end of data is ".".
        for line in sent.split_terminator("\r\n") {
            if let Some(s) = step_of(line, &mut ehlos, &mut rcpts) {
                next = Some(s);
            } else if line.eq_ignore_ascii_case("QUIT") || line.eq_ignore_ascii_case("RSET") {
                // Answer QUIT/RSET; the session then ends or goes on.
                run.input(if line.eq_ignore_ascii_case("QUIT") {
                    b"221 bye\r\n"
                } else {
                    b"250 ok\r\n"
                });
                all_sent.push_str(&run.take_wire());
            }
        }
        if run.client.is_closed() {
            break;
        }
    }
    let statuses = run
        .outcomes()
        .iter()
        .flat_map(|m| m.recipients.iter().map(|r| r.status))
        .collect();
    (statuses, all_sent, run.events)
}

#[test]
fn every_step_times_every_failure() {
    let mut cells = 0;
    for step in STEPS {
        for failure in FAILURES {
            let (statuses, sent, events) = cell(step, failure);
            let case = format!("{step:?} × {failure:?}");
            assert_eq!(statuses, expected(step, failure), "{case}\n{sent}");
            let results = events
                .iter()
                .filter(|e| matches!(e, Event::MessageResult(_)))
                .count();
            assert_eq!(results, 1, "{case}: exactly one result");
            assert!(
                events
                    .iter()
                    .any(|e| matches!(e, Event::Closed | Event::Failed(_))),
                "{case}: the session ended"
            );
            // Nothing accepted unless the end of data got its 2xx.
            let accepted = statuses.contains(&RecipientStatus::Accepted);
            assert!(!accepted || step != Step::DataEnd, "{case}");
            // When TLS did not happen, no credentials and no MAIL went out.
            if matches!(step, Step::Greeting | Step::Ehlo | Step::StartTls) {
                assert!(
                    !sent.contains("AUTH") && !sent.contains("MAIL FROM"),
                    "{case}\n{sent}"
                );
            }
            cells += 1;
        }
    }
    assert_eq!(cells, STEPS.len() * FAILURES.len());
}

#[test]
fn the_happy_path_delivers_both() {
    // Control for the matrix: the same session with no failure injected.
    let mut run = session();
    run.script(
        "
        S: 220 mx.example.net ESMTP
        C: EHLO client.example
        S: 250-mx.example.net
        S: 250 STARTTLS
        C: STARTTLS
        S: 220 go ahead
        C: EHLO client.example
        S: 250-mx.example.net
        S: 250 AUTH PLAIN
        C: AUTH PLAIN *
        S: 235 ok
        C: MAIL FROM:<a@example.org>
        S: 250 ok
        C: RCPT TO:<one@example.net>
        S: 250 ok
        C: RCPT TO:<two@example.net>
        S: 250 ok
        C: DATA
        S: 354 go
        C: Subject: test
        C: 
        C: Hello.
        C: .
        S: 250 queued
        ",
    );
    assert_eq!(
        run.statuses(),
        ["one@example.net=accepted", "two@example.net=accepted"]
    );
}
