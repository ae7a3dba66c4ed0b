//! The notification as a mail program reads it: parsed back (header
//! fields unfolded, the multipart split at its boundary, the
//! delivery-status fields per block), never compared as one string.

use std::time::{Duration, SystemTime};

use super::*;
use crate::store::{MessageId, MessageOptions, RecipientId};

const BOUNDARY: &str = "=_dsn_test_0123456789abcdef";

fn t(s: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + s)
}

fn attempt(code: Option<u16>, enhanced: Option<&str>, text: &str, host: &str) -> Attempt {
    Attempt {
        code,
        enhanced: enhanced.map(str::to_owned),
        text: text.to_owned(),
        host: Some(host.to_owned()),
        tls: None,
    }
}

fn rcpt(
    id: i64,
    address: &str,
    state: RecipientState,
    attempts: u32,
    last: Option<Attempt>,
) -> RecipientInfo {
    RecipientInfo {
        id: RecipientId(id),
        address: address.to_owned(),
        state,
        attempts,
        next_attempt: t(0),
        last,
        lease: None,
        updated: t(3600),
    }
}

fn message(from: &str, recipients: Vec<RecipientInfo>) -> MessageInfo {
    MessageInfo {
        id: MessageId::parse("018bcfe568e8a3f1c2d4e5f60718").unwrap(),
        from: from.to_owned(),
        created: t(0),
        body_size: 100,
        options: MessageOptions::default(),
        recipients,
        notification: None,
    }
}

/// Delivered, failed (550 5.1.1) and expired (451 4.7.1 after 3 attempts).
fn mixed() -> MessageInfo {
    message(
        "<alice@example.com>",
        vec![
            rcpt(
                1,
                "bob@example.net",
                RecipientState::Delivered,
                1,
                Some(attempt(
                    Some(250),
                    Some("2.0.0"),
                    "ok",
                    "mx.example.net [192.0.2.1]",
                )),
            ),
            rcpt(
                2,
                "nobody@example.net",
                RecipientState::Failed,
                1,
                Some(attempt(
                    Some(550),
                    Some("5.1.1"),
                    "no such user",
                    "mx.example.net [192.0.2.1]",
                )),
            ),
            rcpt(
                3,
                "carol@grey.example",
                RecipientState::Expired,
                3,
                Some(attempt(
                    Some(451),
                    Some("4.7.1"),
                    "greylisted, try later",
                    "192.0.2.7:25",
                )),
            ),
        ],
    )
}

fn compose_with(m: &MessageInfo, returned: Returned) -> Notification {
    let reporter = Reporter::new("client.example.org");
    compose(&Report {
        reporter: &reporter,
        message: m,
        returned,
        now: t(7200),
        boundary: BOUNDARY,
    })
    .expect("a notification is owed")
}

const HEADERS: &[u8] =
    b"From: alice@example.com\r\nTo: bob@example.net\r\nSubject: lunch\r\nMessage-ID: <1@example.com>\r\n";

/// A header section's fields, unfolded, in order.
fn fields(section: &str) -> Vec<(String, String)> {
    let unfolded = section.replace("\r\n ", " ").replace("\r\n\t", " ");
    unfolded
        .split("\r\n")
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (name, value) = l
                .split_once(':')
                .unwrap_or_else(|| panic!("not a field: {l:?}"));
            (name.to_owned(), value.trim().to_owned())
        })
        .collect()
}

fn value<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

struct Part {
    headers: Vec<(String, String)>,
    body: String,
}

struct Parsed {
    headers: Vec<(String, String)>,
    parts: Vec<Part>,
}

/// Splits a notification as RFC 2046 does: the boundary from its
/// Content-Type, parts between delimiter lines, the close delimiter last.
fn parse(bytes: &[u8]) -> Parsed {
    let text = std::str::from_utf8(bytes).expect("UTF-8 in a test");
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let headers = fields(head);
    let ct = value(&headers, "Content-Type").unwrap();
    let boundary = ct
        .split("boundary=\"")
        .nth(1)
        .and_then(|b| b.split('"').next())
        .unwrap();
    let delimiter = format!("\r\n--{boundary}");
    let mut chunks = body.split(&delimiter);
    let _preamble = chunks.next();
    let mut parts = Vec::new();
    let mut closed = false;
    for chunk in chunks {
        assert!(!closed, "a part after the close delimiter");
        if let Some(rest) = chunk.strip_prefix("--") {
            assert_eq!(rest, "\r\n", "nothing after the close delimiter");
            closed = true;
            continue;
        }
        let chunk = chunk.strip_prefix("\r\n").expect("CRLF after a delimiter");
        let (h, b) = chunk.split_once("\r\n\r\n").unwrap_or((chunk, ""));
        parts.push(Part {
            headers: fields(h),
            body: b.to_owned(),
        });
    }
    assert!(closed, "the close delimiter is there");
    Parsed { headers, parts }
}

/// The delivery-status part's blocks: per-message fields, then one block
/// per recipient.
fn status_blocks(part: &Part) -> Vec<Vec<(String, String)>> {
    part.body
        .split("\r\n\r\n")
        .filter(|b| !b.trim().is_empty())
        .map(fields)
        .collect()
}

fn quoted_printable_decode(s: &str) -> String {
    let s = s.replace("=\r\n", "");
    let mut out = Vec::new();
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'=' {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
            out.push(u8::from_str_radix(hex, 16).unwrap());
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

fn assert_seven_bit_lines(bytes: &[u8]) {
    for line in bytes.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        assert!(
            !line.contains(&b'\r'),
            "a bare CR: {:?}",
            String::from_utf8_lossy(line)
        );
        assert!(line.len() <= 998, "a line of {} octets", line.len());
        assert!(
            line.iter().all(|&b| b < 0x80),
            "8-bit: {:?}",
            String::from_utf8_lossy(line)
        );
    }
}

#[test]
fn a_report_is_a_multipart_report_of_three_parts_naming_only_the_failed_recipients() {
    let mut m = mixed();
    m.options.dsn_envid = Some("QQ314159".into());
    let n = compose_with(&m, Returned::Headers { utf8: false });
    assert_eq!(n.to, "alice@example.com");
    assert_eq!(n.reported, ["nobody@example.net", "carol@grey.example"]);
    let bytes = n.assemble(HEADERS);
    assert_seven_bit_lines(&bytes);
    let p = parse(&bytes);

    let h = &p.headers;
    assert_eq!(
        value(h, "From"),
        Some("Mail Delivery System <MAILER-DAEMON@client.example.org>")
    );
    assert_eq!(value(h, "To"), Some("<alice@example.com>"));
    assert_eq!(
        value(h, "Subject"),
        Some("Undelivered Mail Returned to Sender")
    );
    assert_eq!(value(h, "Date"), Some("Wed, 15 Nov 2023 00:13:20 +0000"));
    assert_eq!(
        value(h, "Message-ID"),
        Some("<018bcfe568e8a3f1c2d4e5f60718.dsn@client.example.org>")
    );
    assert_eq!(value(h, "Auto-Submitted"), Some("auto-replied"));
    assert_eq!(value(h, "MIME-Version"), Some("1.0"));
    let ct = value(h, "Content-Type").unwrap();
    assert!(ct.starts_with("multipart/report;"), "{ct}");
    assert!(ct.contains("report-type=delivery-status"), "{ct}");
    assert!(ct.contains(&format!("boundary=\"{BOUNDARY}\"")), "{ct}");

    assert_eq!(p.parts.len(), 3);
    let types: Vec<_> = p
        .parts
        .iter()
        .map(|part| value(&part.headers, "Content-Type").unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "text/plain; charset=us-ascii",
            "message/delivery-status",
            "text/rfc822-headers"
        ]
    );

    let text = &p.parts[0].body;
    assert!(text.contains("<nobody@example.net>"), "{text}");
    assert!(text.contains("550 5.1.1 no such user"), "{text}");
    assert!(text.contains("451 4.7.1 greylisted, try later"), "{text}");
    assert!(text.contains("after 3 attempts"), "{text}");
    assert!(text.contains("What you can do"), "{text}");
    assert!(
        !text.contains("bob@example.net"),
        "delivered: not named\n{text}"
    );

    let blocks = status_blocks(&p.parts[1]);
    assert_eq!(blocks.len(), 3, "per-message fields and two recipients");
    let per_message = &blocks[0];
    assert_eq!(
        value(per_message, "Reporting-MTA"),
        Some("dns; client.example.org")
    );
    assert_eq!(value(per_message, "Original-Envelope-Id"), Some("QQ314159"));
    assert_eq!(
        value(per_message, "Arrival-Date"),
        Some("Tue, 14 Nov 2023 22:13:20 +0000")
    );

    let failed = &blocks[1];
    assert_eq!(
        value(failed, "Final-Recipient"),
        Some("rfc822; nobody@example.net")
    );
    assert_eq!(value(failed, "Action"), Some("failed"));
    assert_eq!(value(failed, "Status"), Some("5.1.1"));
    assert_eq!(value(failed, "Remote-MTA"), Some("dns; mx.example.net"));
    assert_eq!(
        value(failed, "Diagnostic-Code"),
        Some("smtp; 550 5.1.1 no such user")
    );
    assert_eq!(
        value(failed, "Last-Attempt-Date"),
        Some("Tue, 14 Nov 2023 23:13:20 +0000")
    );

    let expired = &blocks[2];
    assert_eq!(
        value(expired, "Final-Recipient"),
        Some("rfc822; carol@grey.example")
    );
    assert_eq!(value(expired, "Action"), Some("failed"));
    assert_eq!(value(expired, "Status"), Some("4.4.7"));
    assert_eq!(value(expired, "Remote-MTA"), Some("dns; [192.0.2.7]"));
    assert_eq!(
        value(expired, "Diagnostic-Code"),
        Some("smtp; 451 4.7.1 greylisted, try later")
    );

    let returned = &p.parts[2];
    assert_eq!(
        value(&returned.headers, "Content-Description"),
        Some("Undelivered Message Headers")
    );
    assert_eq!(returned.body.as_bytes(), HEADERS);
}

#[test]
fn reply_texts_cannot_inject_a_header_field_or_a_boundary() {
    let evil = format!(
        "no such user\r\n--{BOUNDARY}\r\nContent-Type: text/html\r\n\r\n<b>pwned</b>\nBcc: victim@example.org\r\
         X-Evil: 1\u{0}\u{7}\u{1b}[31m\u{85}\u{2028}Reply-To: x@example.org"
    );
    let mut m = message(
        "alice@example.com",
        vec![rcpt(
            1,
            "nobody@example.net",
            RecipientState::Failed,
            1,
            Some(Attempt {
                code: Some(550),
                enhanced: Some("5.1.1\r\nX-Injected: yes".into()),
                text: evil,
                host: Some("mx.example.net\r\nX-Host: evil [192.0.2.1]".into()),
                tls: None,
            }),
        )],
    );
    m.options.dsn_envid = Some("id\r\nX-Envid: evil".into());
    let bytes = compose_with(&m, Returned::Headers { utf8: false }).assemble(HEADERS);
    assert_seven_bit_lines(&bytes);
    let text = String::from_utf8(bytes.clone()).unwrap();
    for line in text.split("\r\n") {
        for bad in [
            "Bcc:",
            "X-Evil",
            "X-Injected",
            "X-Host",
            "X-Envid",
            "Reply-To",
            "Content-Type: text/html",
        ] {
            assert!(!line.starts_with(bad), "an injected line: {line:?}");
        }
    }
    // Delimiter lines: three parts and the close, no more.
    let delimiters = text
        .split("\r\n")
        .filter(|l| l.starts_with(&format!("--{BOUNDARY}")))
        .count();
    assert_eq!(delimiters, 4, "{text}");
    let p = parse(&bytes);
    assert_eq!(p.parts.len(), 3);
    let blocks = status_blocks(&p.parts[1]);
    assert_eq!(blocks.len(), 2, "{:?}", p.parts[1].body);
    let r = &blocks[1];
    // The server's words are kept, on one logical line.
    let diagnostic = value(r, "Diagnostic-Code").unwrap();
    assert!(
        diagnostic.starts_with("smtp; 550 5.1.1 X-Injected: yes no such user"),
        "{diagnostic}"
    );
    assert!(
        diagnostic.contains("Bcc: victim@example.org X-Evil: 1"),
        "{diagnostic}"
    );
    assert_eq!(
        value(r, "Status"),
        Some("5.0.0"),
        "a malformed enhanced code is not used"
    );
    assert_eq!(value(r, "Remote-MTA"), Some("dns; mx.example.net"));
    assert_eq!(
        value(&blocks[0], "Original-Envelope-Id"),
        Some("id X-Envid: evil")
    );
    // Every field of the delivery status is one the report writes.
    for block in &blocks {
        for (name, _) in block {
            assert!(
                [
                    "Reporting-MTA",
                    "Original-Envelope-Id",
                    "Arrival-Date",
                    "Final-Recipient",
                    "Action",
                    "Status",
                    "Remote-MTA",
                    "Diagnostic-Code",
                    "Last-Attempt-Date"
                ]
                .contains(&name.as_str()),
                "{name}"
            );
        }
    }
}

#[test]
fn the_status_is_the_servers_class_5_code_else_derived_and_4_4_7_on_expiry() {
    use RecipientState::*;
    let a = |code: Option<u16>, enhanced: Option<&str>| attempt(code, enhanced, "x", "h");
    let cases: &[(RecipientState, Option<Attempt>, Option<&str>)] = &[
        (Failed, Some(a(Some(550), Some("5.1.1"))), Some("5.1.1")),
        (Failed, Some(a(Some(554), Some("5.7.26"))), Some("5.7.26")),
        (Failed, Some(a(Some(550), None)), Some("5.0.0")),
        (Failed, Some(a(Some(552), Some("4.2.2"))), Some("5.0.0")),
        (Failed, Some(a(Some(550), Some("5.1"))), Some("5.0.0")),
        (Failed, Some(a(Some(550), Some("5.1.1000"))), Some("5.0.0")),
        (Failed, Some(a(None, None)), Some("5.0.0")),
        (Failed, None, Some("5.0.0")),
        (Expired, Some(a(Some(451), Some("4.7.1"))), Some("4.4.7")),
        (Expired, Some(a(Some(421), None)), Some("4.4.7")),
        (Expired, Some(a(None, None)), Some("4.4.7")),
        (Expired, None, Some("4.4.7")),
        (Delivered, Some(a(Some(250), Some("2.0.0"))), None),
        (Deferred, Some(a(Some(451), Some("4.7.1"))), None),
    ];
    for (state, last, want) in cases {
        let got = status(*state, last.as_ref()).map(|s| s.to_string());
        assert_eq!(got.as_deref(), *want, "{state} {last:?}");
    }
}

#[test]
fn an_expired_recipient_is_reported_failed_with_4_4_7_and_its_last_reply() {
    let m = message(
        "alice@example.com",
        vec![rcpt(
            1,
            "carol@grey.example",
            RecipientState::Expired,
            5,
            Some(attempt(None, None, "connection refused", "mx.grey.example")),
        )],
    );
    let p = parse(&compose_with(&m, Returned::Nothing).assemble(b""));
    assert_eq!(p.parts.len(), 2, "nothing of the original returned");
    let blocks = status_blocks(&p.parts[1]);
    let r = &blocks[1];
    assert_eq!(value(r, "Action"), Some("failed"));
    assert_eq!(value(r, "Status"), Some("4.4.7"));
    // No server said anything: no Remote-MTA, a local diagnostic.
    assert_eq!(value(r, "Remote-MTA"), None);
    assert_eq!(
        value(r, "Diagnostic-Code"),
        Some("X-smtp-queue; connection refused")
    );
    let text = &p.parts[0].body;
    assert!(text.contains("after 5 attempts"), "{text}");
    assert!(text.contains("connection refused"), "{text}");
    assert!(text.contains("For a recipient that expired"), "{text}");
    assert!(!text.contains("refused for good"), "{text}");
}

#[test]
fn nothing_is_owed_for_a_null_sender_nor_when_every_recipient_was_delivered() {
    let reporter = Reporter::new("client.example.org");
    let owes = |m: &MessageInfo| {
        compose(&Report {
            reporter: &reporter,
            message: m,
            returned: Returned::Nothing,
            now: t(0),
            boundary: BOUNDARY,
        })
        .is_some()
    };
    assert!(owes(&mixed()));
    for null in ["", "<>"] {
        let mut m = mixed();
        m.from = null.into();
        assert!(!owes(&m), "{null:?}");
    }
    let mut m = mixed();
    for r in &mut m.recipients {
        r.state = RecipientState::Delivered;
    }
    assert!(!owes(&m));
}

#[test]
fn a_long_utf8_reply_is_folded_in_the_report_and_kept_in_the_readable_part() {
    let words: Vec<String> = (0..200).map(|i| format!("wörd{i}")).collect();
    let long = format!("Postfach voll: {}", words.join(" "));
    let unbroken = "x".repeat(1500);
    let m = message(
        "alice@example.com",
        vec![
            rcpt(
                1,
                "jörg@example.de",
                RecipientState::Failed,
                1,
                Some(attempt(Some(552), Some("5.2.2"), &long, "mx.example.de")),
            ),
            rcpt(
                2,
                "b@example.de",
                RecipientState::Failed,
                1,
                Some(attempt(Some(550), None, &unbroken, "mx.example.de")),
            ),
        ],
    );
    let bytes = compose_with(&m, Returned::Nothing).assemble(b"");
    assert_seven_bit_lines(&bytes);
    let p = parse(&bytes);
    // The report's lines are folded within 78 where there are spaces.
    let report = &p.parts[1].body;
    for line in report.split("\r\n") {
        if !line.contains(&"x".repeat(100)) {
            assert!(line.len() <= 78, "{} octets: {line:?}", line.len());
        }
    }
    let blocks = status_blocks(&p.parts[1]);
    assert_eq!(
        value(&blocks[1], "Final-Recipient"),
        Some("utf-8; j\\x{F6}rg@example.de")
    );
    let diagnostic = value(&blocks[1], "Diagnostic-Code").unwrap();
    assert!(
        diagnostic.starts_with("smtp; 552 5.2.2 Postfach voll: w?rd0 w?rd1"),
        "{diagnostic}"
    );
    // The readable part: UTF-8 in quoted-printable, the words intact.
    let part = &p.parts[0];
    assert_eq!(
        value(&part.headers, "Content-Type"),
        Some("text/plain; charset=utf-8")
    );
    assert_eq!(
        value(&part.headers, "Content-Transfer-Encoding"),
        Some("quoted-printable")
    );
    for line in part.body.split("\r\n") {
        assert!(line.len() <= 76, "{line:?}");
    }
    let text = quoted_printable_decode(&part.body);
    assert!(text.contains("<jörg@example.de>"), "{text}");
    assert!(
        text.contains("552 5.2.2 Postfach voll: wörd0 wörd1"),
        "{text}"
    );
    assert!(text.contains(&unbroken), "kept whole, soft-broken only");
}

#[test]
fn the_third_part_is_the_original_for_ret_full_and_global_types_for_utf8() {
    let m = mixed();
    let part3 = |returned: Returned| {
        let p = parse(&compose_with(&m, returned).assemble(b"Subject: x\r\n\r\nbody\r\n"));
        let h = &p.parts[2].headers;
        (
            value(h, "Content-Type").unwrap().to_owned(),
            value(h, "Content-Transfer-Encoding").map(str::to_owned),
            p.parts[2].body.clone(),
        )
    };
    let (ct, cte, body) = part3(Returned::Message {
        utf8: false,
        eight_bit: false,
    });
    assert_eq!((ct.as_str(), cte), ("message/rfc822", None));
    assert_eq!(body, "Subject: x\r\n\r\nbody\r\n");
    let (ct, cte, _) = part3(Returned::Message {
        utf8: false,
        eight_bit: true,
    });
    assert_eq!(
        (ct.as_str(), cte.as_deref()),
        ("message/rfc822", Some("8bit"))
    );
    let (ct, cte, _) = part3(Returned::Message {
        utf8: true,
        eight_bit: true,
    });
    assert_eq!(
        (ct.as_str(), cte.as_deref()),
        ("message/global", Some("8bit"))
    );
    let (ct, cte, _) = part3(Returned::Headers { utf8: true });
    assert_eq!(
        (ct.as_str(), cte.as_deref()),
        ("message/global-headers", Some("8bit"))
    );
}

#[test]
fn the_from_address_is_configurable() {
    let reporter = Reporter::new("client.example.org").with_from("postmaster@example.org");
    let m = mixed();
    let n = compose(&Report {
        reporter: &reporter,
        message: &m,
        returned: Returned::Nothing,
        now: t(0),
        boundary: BOUNDARY,
    })
    .unwrap();
    let p = parse(&n.assemble(b""));
    assert_eq!(
        value(&p.headers, "From"),
        Some("Mail Delivery System <postmaster@example.org>")
    );
    let blocks = status_blocks(&p.parts[1]);
    assert_eq!(
        value(&blocks[0], "Reporting-MTA"),
        Some("dns; client.example.org")
    );
}

#[test]
fn the_header_section_ends_at_the_first_empty_line() {
    let cases: &[(&[u8], bool, &[u8])] = &[
        (b"A: 1\r\nB: 2\r\n\r\nbody\r\n", true, b"A: 1\r\nB: 2\r\n"),
        (b"A: 1\nB: 2\n\nbody\n", true, b"A: 1\nB: 2\n"),
        (b"\r\nbody only\r\n", true, b""),
        (b"A: 1\r\nB: 2", true, b"A: 1\r\nB: 2"),
        // Cut short by the limit: the whole lines only.
        (b"A: 1\r\nB: 2", false, b"A: 1\r\n"),
        (
            b"A: 1\r\n B: folded\r\n\r\n",
            true,
            b"A: 1\r\n B: folded\r\n",
        ),
    ];
    for (start, complete, want) in cases {
        assert_eq!(
            header_section(start, *complete),
            *want,
            "{:?}",
            String::from_utf8_lossy(start)
        );
    }
}

#[test]
fn the_remote_mta_is_the_host_name_or_an_address_literal() {
    let cases = [
        ("mx.example.net [192.0.2.1]", Some("mx.example.net")),
        ("mx.example.net", Some("mx.example.net")),
        ("mx.example.net:25", Some("mx.example.net")),
        ("192.0.2.1:2525", Some("[192.0.2.1]")),
        ("[2001:db8::1]:25", Some("[IPv6:2001:db8::1]")),
        ("2001:db8::1", Some("[IPv6:2001:db8::1]")),
        ("  ", None),
    ];
    for (host, want) in cases {
        assert_eq!(remote_mta(host).as_deref(), want, "{host}");
    }
}

#[test]
fn an_encoded_word_in_a_reply_stays_plain_text_in_the_delivery_status() {
    let m = message(
        "alice@example.com",
        vec![
            rcpt(
                1,
                "nobody@example.net",
                RecipientState::Failed,
                1,
                Some(Attempt {
                    code: Some(550),
                    enhanced: Some("5.1.1".into()),
                    // An encoded word, one that base64 hides a line break
                    // in, one that only cleaning makes (`=` and `é`), CR LF,
                    // a tab and DEL.
                    text: "=?utf-8?q?unknown?= =?UTF-8?B?DQpYLUV2aWw6IDE=?=\r\n\
                           X-Evil: =\u{e9}utf-8?q?x?= tab\there \u{7f}"
                        .into(),
                    host: Some("=?utf-8?q?mx?=.example.net [192.0.2.1]".into()),
                    tls: None,
                }),
            ),
            rcpt(
                2,
                "late@example.net",
                RecipientState::Expired,
                3,
                Some(Attempt {
                    code: None,
                    enhanced: None,
                    text: "connection refused by =?iso-8859-1?q?h=F4te?=".into(),
                    host: None,
                    tls: None,
                }),
            ),
        ],
    );
    let bytes = compose_with(&m, Returned::Nothing).assemble(b"");
    assert_seven_bit_lines(&bytes);
    let p = parse(&bytes);
    let blocks = status_blocks(&p.parts[1]);
    assert_eq!(blocks.len(), 3, "{:?}", p.parts[1].body);
    let failed = value(&blocks[1], "Diagnostic-Code").unwrap();
    assert_eq!(
        failed,
        "smtp; 550 5.1.1 =_?utf-8?q?unknown?= =_?UTF-8?B?DQpYLUV2aWw6IDE=_?= \
         X-Evil: =_?utf-8?q?x?= tab here"
    );
    assert_eq!(
        value(&blocks[1], "Remote-MTA"),
        Some("dns; =_?utf-8?q?mx?=.example.net")
    );
    let expired = value(&blocks[2], "Diagnostic-Code").unwrap();
    assert_eq!(
        expired,
        "X-smtp-queue; connection refused by =_?iso-8859-1?q?h=F4te?="
    );
    // No field of the notification, its delivery status included, holds
    // an encoded word, a control character or a non-ASCII one.
    for (name, v) in p
        .headers
        .iter()
        .chain(p.parts.iter().flat_map(|part| &part.headers))
        .chain(blocks.iter().flatten())
    {
        assert!(!v.contains("=?"), "{name}: {v}");
        assert!(
            v.chars().all(|c| c.is_ascii() && !c.is_ascii_control()),
            "{name}: {v:?}"
        );
    }
}
