//! Reply vectors, accessors and the parser's properties.

use super::*;
use proptest::prelude::*;

fn code(n: u16) -> ReplyCode {
    // Test inputs are valid codes.
    ReplyCode::new(n).unwrap()
}

fn reply(n: u16, enhanced: Option<&str>, lines: &[&str]) -> Reply {
    Reply::new(
        code(n),
        enhanced.map(|e| e.parse().unwrap()),
        lines.iter().map(|&l| l.to_owned()).collect(),
    )
}

fn parse(input: &[u8]) -> Result<Status<(usize, Reply)>, ReplyError> {
    parse_reply(input, &ReplyLimits::default())
}

use Expect::{Partial, Reply as R};

enum Expect {
    /// Complete, consuming the whole input.
    Reply(u16, Option<&'static str>, &'static [&'static str]),
    Partial,
    Err(ReplyError),
}

fn check(input: &str, expect: Expect) {
    let got = parse(input.as_bytes());
    let want = match expect {
        R(n, enhanced, lines) => Ok(Status::Complete((input.len(), reply(n, enhanced, lines)))),
        Partial => Ok(Status::Partial),
        Expect::Err(e) => Err(e),
    };
    assert_eq!(got, want, "input {input:?}");
}

macro_rules! vectors {
    ($($name:ident: $input:expr => $expect:expr;)*) => {
        $(#[test] fn $name() { check($input, $expect); })*
    };
}

fn invalid_code(line: &str) -> Expect {
    Expect::Err(ReplyError::InvalidCode { line: line.into() })
}
fn invalid_sep(line: &str) -> Expect {
    Expect::Err(ReplyError::InvalidSeparator { line: line.into() })
}
fn inconsistent(first: u16, found: u16) -> Expect {
    Expect::Err(ReplyError::InconsistentCode {
        first: code(first),
        found: code(found),
    })
}

vectors! {
    single: "250 OK\r\n" => R(250, None, &["OK"]);
    single_bare_lf: "250 OK\n" => R(250, None, &["OK"]);
    bare_code: "250\r\n" => R(250, None, &[""]);
    bare_code_space: "250 \r\n" => R(250, None, &[""]);
    keeps_inner_spaces: "250  two  spaces \r\n" => R(250, None, &[" two  spaces "]);
    multi: "250-a\r\n250-b\r\n250 c\r\n" => R(250, None, &["a", "b", "c"]);
    multi_mixed_endings: "250-a\n250-b\r\n250 c\n" => R(250, None, &["a", "b", "c"]);
    multi_empty_continuation: "250-\r\n250 x\r\n" => R(250, None, &["", "x"]);
    multi_bare_last: "250-x\r\n250\r\n" => R(250, None, &["x", ""]);
    enhanced: "550 5.1.1 No such user\r\n" => R(550, Some("5.1.1"), &["No such user"]);
    enhanced_alone: "250 2.0.0\r\n" => R(250, Some("2.0.0"), &[""]);
    enhanced_three_digits: "550 5.7.133 x\r\n" => R(550, Some("5.7.133"), &["x"]);
    enhanced_multi: "550-5.7.1 Blocked\r\n550-5.7.1 see https://x\r\n550 5.7.1 bye\r\n"
        => R(550, Some("5.7.1"), &["Blocked", "see https://x", "bye"]);
    enhanced_first_line_only: "450-4.2.0 Busy\r\n450 try later\r\n"
        => R(450, Some("4.2.0"), &["Busy", "try later"]);
    enhanced_other_code_kept: "550-5.7.1 a\r\n550 5.1.1 b\r\n"
        => R(550, Some("5.7.1"), &["a", "5.1.1 b"]);
    enhanced_class_mismatch: "250 5.1.1 odd\r\n" => R(250, None, &["5.1.1 odd"]);
    enhanced_not_on_3xx: "354 3.0.0 go\r\n" => R(354, None, &["3.0.0 go"]);
    enhanced_needs_space: "250 2.0.0ok\r\n" => R(250, None, &["2.0.0ok"]);
    enhanced_too_many_digits: "250 2.0.1000 x\r\n" => R(250, None, &["2.0.1000 x"]);
    enhanced_only_later_line: "250-hi\r\n250 2.0.0 x\r\n" => R(250, None, &["hi", "2.0.0 x"]);
    control_chars: "250 a\x1b[31mb\tc\x7f\r\n" => R(250, None, &["a\u{FFFD}[31mb\tc\u{FFFD}"]);
    inner_cr: "250 a\rb\r\n" => R(250, None, &["a\u{FFFD}b"]);
    double_cr: "250 a\r\r\n" => R(250, None, &["a\u{FFFD}"]);
    bidi_override: "250 a\u{202E}b\r\n" => R(250, None, &["a\u{FFFD}b"]);
    utf8_kept: "250 Grüße\r\n" => R(250, None, &["Grüße"]);
    empty: "" => Partial;
    partial_code: "25" => Partial;
    partial_line: "250 OK" => Partial;
    partial_cr: "250 OK\r" => Partial;
    partial_bare_code_cr: "250\r" => Partial;
    partial_multi: "250-a\r\n" => Partial;
    partial_multi_next: "250-a\r\n250" => Partial;
    invalid_letters: "ABC hello\r\n" => invalid_code("ABC hello");
    invalid_first_digit: "650 x\r\n" => invalid_code("650 x");
    invalid_first_digit_1: "150 x\r\n" => invalid_code("150 x");
    invalid_second_digit: "260 x\r\n" => invalid_code("260 x");
    invalid_short: "25\r\n" => invalid_code("25");
    invalid_empty_line: "\r\n" => invalid_code("");
    invalid_http: "HTTP/1.1 400 Bad Request\r\n" => invalid_code("HTTP/1.1 400 Bad Request");
    invalid_separator: "250_x\r\n" => invalid_sep("250_x");
    invalid_separator_tab: "250\tx\r\n" => invalid_sep("250\tx");
    invalid_four_digits: "2500 x\r\n" => invalid_sep("2500 x");
    inconsistent_codes: "250-a\r\n251 b\r\n" => inconsistent(250, 251);
    early_invalid_first_byte: "\x16\x03\x01" => invalid_code("\u{FFFD}\u{FFFD}\u{FFFD}");
    early_invalid_code: "2x" => invalid_code("2x");
    early_inconsistent: "250-a\r\n251" => inconsistent(250, 251);
    early_invalid_separator: "250x" => invalid_sep("250x");
    early_cr_not_last: "250\rx" => invalid_sep("250\u{FFFD}x");
    // RFC 5321 Appendix D, server side of the transcripts.
    d1_greeting: "220 foo.com Simple Mail Transfer Service Ready\r\n"
        => R(220, None, &["foo.com Simple Mail Transfer Service Ready"]);
    d1_ehlo: "250-foo.com greets bar.com\r\n250-8BITMIME\r\n250-SIZE\r\n250-DSN\r\n250 HELP\r\n"
        => R(250, None, &["foo.com greets bar.com", "8BITMIME", "SIZE", "DSN", "HELP"]);
    d1_ok: "250 OK\r\n" => R(250, None, &["OK"]);
    d1_no_such_user: "550 No such user here\r\n" => R(550, None, &["No such user here"]);
    d1_data: "354 Start mail input; end with <CRLF>.<CRLF>\r\n"
        => R(354, None, &["Start mail input; end with <CRLF>.<CRLF>"]);
    d1_closing: "221 foo.com Service closing transmission channel\r\n"
        => R(221, None, &["foo.com Service closing transmission channel"]);
    d2_forward: "251 User not local; will forward to <Postmaster@bar.org>\r\n"
        => R(251, None, &["User not local; will forward to <Postmaster@bar.org>"]);
    d3_ambiguous: "553 User ambiguous\r\n" => R(553, None, &["User ambiguous"]);
    d4_verify: "250 Fred Smith <Smith@bar.com>\r\n" => R(250, None, &["Fred Smith <Smith@bar.com>"]);
    rfc2034_example: "250 2.1.5 Destination address valid\r\n"
        => R(250, Some("2.1.5"), &["Destination address valid"]);
    gmail_style: "550-5.1.1 The email account that you tried to reach does not exist.\r\n\
                  550 5.1.1  https://support.google.com/mail/?p=NoSuchUser x\r\n"
        => R(550, Some("5.1.1"), &[
            "The email account that you tried to reach does not exist.",
            " https://support.google.com/mail/?p=NoSuchUser x",
        ]);
}

#[test]
fn consumes_only_the_first_reply() {
    let input = b"250-a\r\n250 b\r\n354 go\r\n";
    let Ok(Status::Complete((n, first))) = parse(input) else {
        panic!("expected a complete reply");
    };
    assert_eq!(n, 14);
    assert_eq!(first, reply(250, None, &["a", "b"]));
    assert_eq!(
        parse(&input[n..]),
        Ok(Status::Complete((8, reply(354, None, &["go"]))))
    );
    // The next reply's contents are not checked while parsing the first one.
    assert!(parse(b"250 a\r\nGARBAGE").unwrap().is_complete());
}

#[test]
fn non_utf8_is_lossy() {
    let Ok(Status::Complete((_, r))) = parse(b"250 a\xff\xfeb\r\n") else {
        panic!("expected a complete reply");
    };
    assert_eq!(r.lines(), ["a\u{FFFD}\u{FFFD}b"]);
}

#[test]
fn accessors_and_display() {
    let r = reply(550, Some("5.1.1"), &["No such user"]);
    assert_eq!(r.code(), ReplyCode::MAILBOX_UNAVAILABLE);
    assert_eq!(r.enhanced_code(), EnhancedCode::new(5, 1, 1));
    assert_eq!(r.first_line(), "No such user");
    assert_eq!(r.to_string(), "550 5.1.1 No such user");
    assert_eq!(r.to_bytes(), b"550 5.1.1 No such user\r\n");

    let r = reply(250, None, &["foo.com greets bar.com", "8BITMIME", "HELP"]);
    assert_eq!(r.text(), "foo.com greets bar.com\n8BITMIME\nHELP");
    assert_eq!(r.first_line(), "foo.com greets bar.com");
    assert_eq!(
        r.to_string(),
        "250-foo.com greets bar.com\n250-8BITMIME\n250 HELP"
    );

    let r = reply(450, Some("4.2.0"), &["a", ""]);
    assert_eq!(r.to_string(), "450-4.2.0 a\n450 4.2.0");
    assert_eq!(reply(250, None, &["", ""]).to_string(), "250-\n250");
    assert_eq!(reply(221, None, &[]).lines(), [""]);
    assert_eq!(reply(221, None, &[]).to_string(), "221");
    // Lines given to new() are sanitised too, so Display cannot be forged.
    let forged = reply(250, None, &["ok\r\n550 fake"]);
    assert_eq!(forged.to_string(), "250 ok\u{FFFD}\u{FFFD}550 fake");
}

#[test]
fn reply_code() {
    for n in [0, 1, 99, 100, 199, 260, 299, 599, 600, 999, 1000, u16::MAX] {
        assert_eq!(ReplyCode::new(n), None, "{n}");
    }
    for n in [200, 259, 354, 421, 559] {
        assert_eq!(ReplyCode::new(n).map(ReplyCode::as_u16), Some(n));
    }
    let cases = [
        (220, Severity::PositiveCompletion),
        (334, Severity::PositiveIntermediate),
        (421, Severity::TransientNegative),
        (554, Severity::PermanentNegative),
    ];
    for (n, severity) in cases {
        let c = code(n);
        assert_eq!(c.severity(), severity);
        assert_eq!(c.is_positive(), n / 100 == 2);
        assert_eq!(c.is_intermediate(), n / 100 == 3);
        assert_eq!(c.is_transient(), n / 100 == 4);
        assert_eq!(c.is_permanent(), n / 100 == 5);
        assert_eq!(usize::from(c.class()), usize::from(n / 100));
    }
    assert_eq!(ReplyCode::OK.to_string(), "250");
    assert_eq!(ReplyCode::START_MAIL_INPUT.as_u16(), 354);
    assert!(ReplyCode::OK < ReplyCode::SERVICE_NOT_AVAILABLE);
}

#[test]
fn enhanced_code_from_str() {
    assert_eq!("5.1.1".parse(), Ok(EnhancedCode::new(5, 1, 1).unwrap()));
    assert_eq!(
        "2.0.0".parse::<EnhancedCode>().unwrap().to_string(),
        "2.0.0"
    );
    assert_eq!(
        "4.999.007".parse::<EnhancedCode>().unwrap().to_string(),
        "4.999.7"
    );
    for bad in [
        "", "5", "5.1", "5.1.", "5..1", ".1.1", "3.1.1", "1.1.1", "55.1.1", "5.1000.1", "5.1.1000",
        "5.1.1 ", " 5.1.1", "5.1.1.1", "5.a.1", "x",
    ] {
        let err = bad.parse::<EnhancedCode>().unwrap_err();
        assert_eq!(
            err,
            EnhancedCodeError::Malformed { input: bad.into() },
            "{bad:?}"
        );
    }
    assert_eq!(EnhancedCode::new(3, 0, 0), None);
    assert_eq!(EnhancedCode::new(5, 1000, 0), None);
    assert_eq!(EnhancedCode::new(5, 0, 1000), None);
}

#[test]
fn error_line_is_truncated_and_sanitised() {
    let mut line = b"XYZ \x1b[2J".to_vec();
    line.extend(std::iter::repeat_n(b'a', 500));
    line.extend(b"\r\n");
    let Err(ReplyError::InvalidCode { line }) = parse(&line) else {
        panic!("expected InvalidCode");
    };
    assert_eq!(line.chars().count(), 81);
    assert!(line.starts_with("XYZ \u{FFFD}[2J"));
    assert!(line.ends_with('…'));
    let msg = ReplyError::InvalidCode { line }.to_string();
    assert!(msg.contains("SMTP reply code"), "{msg}");
}

#[test]
fn line_too_long_without_lf() {
    let input = vec![b'2'; 100_000];
    let limit = ReplyLimits::default().max_line_len;
    assert_eq!(parse(&input), Err(ReplyError::LineTooLong { limit }));
    // Caught as soon as the line can no longer fit, not later.
    let mut input = b"250 ".to_vec();
    input.resize(limit - 1, b'x');
    assert_eq!(parse(&input), Ok(Status::Partial));
    input.push(b'\n');
    assert!(parse(&input).unwrap().is_complete());
    input.pop();
    input.push(b'x');
    assert_eq!(parse(&input), Err(ReplyError::LineTooLong { limit }));
    // A complete line one byte too long.
    input.push(b'\n');
    assert_eq!(parse(&input), Err(ReplyError::LineTooLong { limit }));
}

#[test]
fn endless_continuation_lines() {
    let stream: Vec<u8> = b"250-x\r\n".repeat(20_000);
    let limits = ReplyLimits::default();
    assert_eq!(
        parse_reply(&stream, &limits),
        Err(ReplyError::TooManyLines { limit: 1000 })
    );
    let many_lines = ReplyLimits {
        max_lines: usize::MAX,
        ..limits
    };
    assert_eq!(
        parse_reply(&stream, &many_lines),
        Err(ReplyError::ReplyTooLarge { limit: 64 * 1024 })
    );
    // Exactly at the bounds is fine; one more line or byte is not.
    let exact = [b"250-x\r\n".repeat(2), b"250 x\r\n".to_vec()].concat();
    let tight = ReplyLimits {
        max_line_len: 7,
        max_reply_len: 21,
        max_lines: 3,
    };
    assert!(parse_reply(&exact, &tight).unwrap().is_complete());
    let three = b"250-x\r\n".repeat(3);
    assert_eq!(
        parse_reply(&three, &tight),
        Err(ReplyError::ReplyTooLarge { limit: 21 })
    );
    let roomy = ReplyLimits {
        max_reply_len: 100,
        ..tight
    };
    assert_eq!(
        parse_reply(&three, &roomy),
        Err(ReplyError::TooManyLines { limit: 3 })
    );
}

#[test]
fn errors_display_and_are_errors() {
    let errors = [
        ReplyError::LineTooLong { limit: 1 },
        ReplyError::ReplyTooLarge { limit: 1 },
        ReplyError::TooManyLines { limit: 1 },
        ReplyError::InvalidCode { line: "x".into() },
        ReplyError::InconsistentCode {
            first: ReplyCode::OK,
            found: ReplyCode::HELP,
        },
        ReplyError::InvalidSeparator { line: "x".into() },
    ];
    for e in errors {
        let e: Box<dyn std::error::Error> = Box::new(e);
        assert!(e.to_string().starts_with("the server sent"));
    }
}

fn arb_code() -> impl Strategy<Value = ReplyCode> {
    (2..=5u16, 0..=5u16, 0..=9u16).prop_map(|(a, b, c)| code(a * 100 + b * 10 + c))
}

/// Replies whose text starts with a letter, so that rendering and parsing round-trips.
fn arb_reply() -> impl Strategy<Value = Reply> {
    let line = "([a-zA-Z][ -~\t\u{e0}-\u{ff}]{0,40})?";
    (
        arb_code(),
        any::<bool>(),
        (0..1000u16, 0..1000u16),
        prop::collection::vec(line, 1..6),
    )
        .prop_map(|(code, with_enhanced, (subject, detail), lines)| {
            let enhanced =
                EnhancedCode::new(code.class(), subject, detail).filter(|_| with_enhanced);
            Reply::new(code, enhanced, lines)
        })
}

/// The rendered reply, with some line endings turned into bare LF.
fn arb_wire() -> impl Strategy<Value = (Reply, Vec<u8>)> {
    (arb_reply(), any::<u64>()).prop_map(|(reply, lf_mask)| {
        let crlf = String::from_utf8(reply.to_bytes()).unwrap();
        let mut wire = Vec::new();
        for (i, line) in crlf.split_inclusive("\r\n").enumerate() {
            if (lf_mask >> (i % 64)) & 1 == 1 {
                wire.extend(line.trim_end_matches("\r\n").as_bytes());
                wire.push(b'\n');
            } else {
                wire.extend(line.as_bytes());
            }
        }
        (reply, wire)
    })
}

proptest! {
    #[test]
    fn round_trip((reply, wire) in arb_wire(), trailer in "[ -~\r\n]{0,20}") {
        let mut input = wire.clone();
        input.extend(trailer.as_bytes());
        prop_assert_eq!(parse(&input), Ok(Status::Complete((wire.len(), reply))));
    }

    #[test]
    fn any_chunking_gives_the_same_reply(
        (_, wire) in arb_wire(),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
    ) {
        let whole = parse(&wire);
        prop_assert!(whole.as_ref().is_ok_and(Status::is_complete));
        let mut ends: Vec<usize> = cuts.iter().map(|c| c.index(wire.len())).collect();
        ends.push(wire.len());
        ends.sort_unstable();
        ends.dedup();
        let mut buf = Vec::new();
        for end in ends {
            buf.extend(&wire[buf.len()..end]);
            let got = parse(&buf);
            if end == wire.len() {
                prop_assert_eq!(&got, &whole);
            } else {
                prop_assert_eq!(got, Ok(Status::Partial), "prefix {:?}", &buf);
            }
        }
    }

    #[test]
    fn every_byte_split((_, wire) in arb_wire()) {
        for end in 0..wire.len() {
            prop_assert_eq!(parse(&wire[..end]), Ok(Status::Partial));
        }
        prop_assert!(parse(&wire).unwrap().is_complete());
    }

    #[test]
    fn never_panics_on_bytes(
        input in prop::collection::vec(any::<u8>(), 0..4096),
        max_line_len in 0..200usize,
        max_reply_len in 0..2000usize,
        max_lines in 0..20usize,
    ) {
        for limits in [
            ReplyLimits::default(),
            ReplyLimits { max_line_len, max_reply_len, max_lines },
        ] {
            if let Ok(Status::Complete((n, _))) = parse_reply(&input, &limits) {
                prop_assert!(n <= input.len() && n > 0);
            }
        }
    }

    #[test]
    fn never_panics_on_reply_like_input(
        pieces in prop::collection::vec(
            prop::sample::select(vec![
                "250", "250-", "250 ", "550 ", "5.1.1 ", "2.0.0", "\r\n", "\n", "\r",
                "x", " ", "-", "\u{e9}", "\x1b", "\u{202e}", "9", ".",
            ]),
            0..200,
        ),
    ) {
        let input = pieces.concat();
        match parse(input.as_bytes()) {
            Ok(Status::Complete((n, reply))) => {
                prop_assert!(n <= input.len());
                let text = reply.text();
                prop_assert!(text.chars().all(|c| c == '\t' || c == '\n' || !c.is_control()));
                // Rendering a parsed reply and parsing it again gives the same reply.
                let wire = reply.to_bytes();
                prop_assert_eq!(parse(&wire), Ok(Status::Complete((wire.len(), reply))));
            }
            Ok(Status::Partial) | Err(_) => {}
        }
    }
}
