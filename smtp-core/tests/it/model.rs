//! A reference model against the real client (in the manner of connlib's
//! proptest state machines): random sessions of several messages, each
//! recipient answered at random, with and without PIPELINING and CHUNKING.
//! A small SMTP server simulation answers whatever the client sends; the
//! model says what every recipient's outcome must be. At a random step the
//! server may instead close the connection, fall silent or send garbage:
//! then every recipient still gets exactly one outcome, none is accepted
//! without the server's 250 reaching the client, and a message whose end of
//! data the server took but whose reply was lost is an unknown outcome.

use std::collections::BTreeMap;

use proptest::prelude::*;

use smtp_core::{Error, Event, RecipientStatus};

use smtp_testkit::sansio::{Run, config, envelope};

/// What the server does instead of answering, at one step.
#[derive(Clone, Copy, Debug)]
enum Fault {
    Close,
    Silence,
    Garbage,
}

#[derive(Clone, Debug)]
struct Plan {
    pipelining: bool,
    chunking: bool,
    /// The step (batch of replies) replaced by a fault, if any.
    fault: Option<(usize, Fault)>,
    /// Per message: each recipient's RCPT reply code, and the end-of-data code.
    messages: Vec<(Vec<u16>, u16)>,
    body: Vec<u8>,
    chunk: usize,
}

fn plan() -> impl Strategy<Value = Plan> {
    let rcpt = prop_oneof![4 => Just(250u16), 1 => Just(550), 1 => Just(450)];
    let end = prop_oneof![4 => Just(250u16), 1 => Just(554), 1 => Just(451)];
    let message = (proptest::collection::vec(rcpt, 1..5), end);
    let fault = prop_oneof![
        Just(Fault::Close),
        Just(Fault::Silence),
        Just(Fault::Garbage)
    ];
    (
        any::<bool>(),
        any::<bool>(),
        proptest::option::weighted(0.6, (0..12usize, fault)),
        proptest::collection::vec(message, 1..5),
        proptest::collection::vec(
            prop_oneof![Just(b'.'), Just(b'\n'), Just(b'\r'), Just(b'x')],
            0..60,
        ),
        1..20usize,
    )
        .prop_map(
            |(pipelining, chunking, fault, messages, body, chunk)| Plan {
                pipelining,
                chunking,
                fault,
                messages,
                body,
                chunk,
            },
        )
}

/// What the model says: each recipient's status, in order.
fn expected(plan: &Plan) -> Vec<RecipientStatus> {
    let mut out = Vec::new();
    for (rcpts, end) in &plan.messages {
        for &code in rcpts {
            out.push(match code {
                250 => status(*end),
                c => status(c),
            });
        }
    }
    out
}

fn status(code: u16) -> RecipientStatus {
    match code / 100 {
        2 => RecipientStatus::Accepted,
        5 => RecipientStatus::Rejected,
        _ => RecipientStatus::Deferred,
    }
}

/// The server side: answers each complete command in what the client wrote.
struct Server {
    plan: Plan,
    message: usize,
    /// MAIL commands seen: in this model each starts the next message.
    mails: usize,
    rcpt: usize,
    accepted: usize,
    in_data: bool,
    bdat_left: usize,
    bdat_last: bool,
    buf: Vec<u8>,
    /// What the server stored for each delivered message.
    stored: Vec<Vec<u8>>,
    current: Vec<u8>,
    /// Ends of data taken in the latest batch: message and reply code.
    ended: Vec<(usize, u16)>,
}

impl Server {
    fn new(plan: Plan) -> Self {
        Self {
            plan,
            message: 0,
            mails: 0,
            rcpt: 0,
            accepted: 0,
            in_data: false,
            bdat_left: 0,
            bdat_last: false,
            buf: Vec::new(),
            stored: Vec::new(),
            current: Vec::new(),
            ended: Vec::new(),
        }
    }

    fn reply(&mut self, input: &[u8]) -> String {
        self.ended.clear();
        self.buf.extend_from_slice(input);
        let mut out = String::new();
        loop {
            if self.bdat_left > 0 {
                let n = self.bdat_left.min(self.buf.len());
                self.current.extend(self.buf.drain(..n));
                self.bdat_left -= n;
                if self.bdat_left > 0 {
                    break;
                }
                if self.bdat_last {
                    out.push_str(&self.end_of_data());
                } else {
                    out.push_str("250 chunk ok\r\n");
                }
                continue;
            }
            let Some(pos) = self.buf.windows(2).position(|w| w == b"\r\n") else {
                break;
            };
            let line: Vec<u8> = self.buf.drain(..pos + 2).take(pos).collect();
            if self.in_data {
                if line == b"." {
                    self.in_data = false;
                    out.push_str(&self.end_of_data());
                } else {
                    self.current
                        .extend_from_slice(line.strip_prefix(b".").unwrap_or(&line));
                    self.current.extend_from_slice(b"\r\n");
                }
                continue;
            }
            let text = String::from_utf8_lossy(&line).into_owned();
            let verb = text
                .split_whitespace()
                .next()
                .unwrap_or("")
                .to_ascii_uppercase();
            let r = match verb.as_str() {
                "EHLO" => {
                    let mut caps = String::from("250-sim\r\n");
                    if self.plan.pipelining {
                        caps.push_str("250-PIPELINING\r\n");
                    }
                    if self.plan.chunking {
                        caps.push_str("250-CHUNKING\r\n");
                    }
                    caps + "250 8BITMIME\r\n"
                }
                "MAIL" => {
                    self.message = self.mails;
                    self.mails += 1;
                    self.rcpt = 0;
                    self.accepted = 0;
                    self.current.clear();
                    "250 ok\r\n".into()
                }
                "RCPT" => {
                    let code = self.plan.messages[self.message].0[self.rcpt];
                    self.rcpt += 1;
                    if code == 250 {
                        self.accepted += 1;
                    }
                    format!("{code} rcpt\r\n")
                }
                "DATA" if self.accepted == 0 => "554 no valid recipients\r\n".into(),
                "DATA" => {
                    self.in_data = true;
                    "354 go\r\n".into()
                }
                "BDAT" => {
                    let mut parts = text.split_whitespace().skip(1);
                    self.bdat_left = parts.next().and_then(|n| n.parse().ok()).unwrap_or(0);
                    self.bdat_last = parts.next().is_some();
                    if self.bdat_left == 0 && self.bdat_last {
                        self.end_of_data()
                    } else {
                        continue;
                    }
                }
                "RSET" => "250 reset\r\n".into(),
                "QUIT" => "221 bye\r\n".into(),
                _ => "500 what\r\n".into(),
            };
            out.push_str(&r);
        }
        out
    }

    fn end_of_data(&mut self) -> String {
        let code = self.plan.messages[self.message].1;
        if self.accepted == 0 {
            // BDAT with nobody accepted: refused.
            self.ended.push((self.message, 554));
            return "554 no valid recipients\r\n".into();
        }
        self.ended.push((self.message, code));
        if code == 250 {
            self.stored.push(std::mem::take(&mut self.current));
        }
        format!("{code} end\r\n")
    }
}

fn normalised(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < body.len() {
        match body[i] {
            b'\r' if body.get(i + 1) == Some(&b'\n') => {
                out.extend_from_slice(b"\r\n");
                i += 1;
            }
            b'\r' | b'\n' => out.extend_from_slice(b"\r\n"),
            b => out.push(b),
        }
        i += 1;
    }
    if !out.is_empty() && !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Runs the plan: the client against the simulated server.
struct Outcome {
    run: Run,
    server: Server,
    /// Ends of data whose reply reached the client, and whose reply was lost.
    answered: BTreeMap<usize, u16>,
    lost: BTreeMap<usize, u16>,
}

fn play(plan: &Plan) -> Outcome {
    let mut run = Run::new(config());
    run.body = plan.body.clone();
    run.chunk = plan.chunk;
    for (i, (rcpts, _)) in plan.messages.iter().enumerate() {
        let to: Vec<String> = (0..rcpts.len())
            .map(|r| format!("m{i}r{r}@example.net"))
            .collect();
        let to: Vec<&str> = to.iter().map(String::as_str).collect();
        run.send(envelope("a@example.org", &to));
    }
    run.client.quit(run.now);
    let mut server = Server::new(plan.clone());
    let mut input = String::from("220 sim\r\n");
    let (mut answered, mut lost) = (BTreeMap::new(), BTreeMap::new());
    let mut ended: Vec<(usize, u16)> = Vec::new();
    for step in 0..200 {
        if input.is_empty() {
            break;
        }
        match plan.fault {
            Some((at, fault)) if at == step => {
                lost.extend(ended.drain(..));
                match fault {
                    Fault::Close => run.close(),
                    Fault::Garbage => run.input(b"this is no reply\r\n"),
                    Fault::Silence => {
                        while !run.client.is_closed() {
                            run.expire();
                        }
                    }
                }
                break;
            }
            _ => {}
        }
        run.input(input.as_bytes());
        answered.extend(ended.drain(..));
        let wire = std::mem::take(&mut run.wire);
        input = server.reply(&wire);
        ended = server.ended.clone();
    }
    Outcome {
        run,
        server,
        answered,
        lost,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(600))]
    #[test]
    fn client_matches_the_model(plan in plan()) {
        let Outcome { run, server, answered, lost } = play(&plan);
        // Whatever happened: the session is over, each message has exactly
        // one result and each recipient exactly one outcome.
        prop_assert!(run.client.is_closed(), "session did not end");
        let outcomes = run.outcomes();
        prop_assert_eq!(outcomes.len(), plan.messages.len());
        for (m, outcome) in outcomes.iter().enumerate() {
            prop_assert_eq!(outcome.message.index() as usize, m);
            prop_assert_eq!(outcome.recipients.len(), plan.messages[m].0.len());
        }
        let results = run.events.iter().filter(|e| matches!(e, Event::RecipientResult { .. })).count();
        prop_assert_eq!(results, expected(&plan).len());
        // Every stored message is exactly the normalised body.
        for stored in &server.stored {
            prop_assert_eq!(stored, &normalised(&plan.body));
        }
        let got: Vec<RecipientStatus> = outcomes
            .iter()
            .flat_map(|m| m.recipients.iter().map(|r| r.status))
            .collect();
        if plan.fault.is_none() || (run.closed() && run.failure().is_none()) {
            prop_assert!(run.failure().is_none(), "{:?}", run.failure());
            prop_assert_eq!(got, expected(&plan));
            return Ok(());
        }
        for (m, outcome) in outcomes.iter().enumerate() {
            for (r, o) in outcome.recipients.iter().enumerate() {
                let rcpt_ok = plan.messages[m].0[r] == 250;
                let unknown = matches!(o.error, Some(Error::OutcomeUnknown { .. }));
                // Accepted only on the server's 250 to the end of data,
                // received by the client.
                if o.status == RecipientStatus::Accepted {
                    prop_assert!(rcpt_ok && answered.get(&m) == Some(&250), "{m}/{r}: {o}");
                }
                // Unknown exactly when the server took the whole message
                // and its answer was lost.
                if lost.contains_key(&m) && rcpt_ok {
                    prop_assert!(unknown && o.status == RecipientStatus::Deferred, "{m}/{r}: {o}");
                }
                if unknown {
                    prop_assert!(lost.contains_key(&m), "{m}/{r}: {o}");
                }
            }
        }
    }
}
