use proptest::prelude::*;
use smtp_core::data::BodyType;

use super::*;
use crate::message::{Input, prepare};

const HEAD: &str = "From: a@example.org\r\nTo: b@example.net\r\nDate: Sun, 29 Nov 2026 02:00:00 +0000\r\nMessage-ID: <1@example.org>\r\nSubject: s\r\n";

fn prepared(message: &[u8]) -> Result<Prepared, Failure> {
    prepare(
        Input::Bytes(message.to_vec()),
        "m.eml".into(),
        "client.example",
    )
}

/// The message as it goes out: header section and body.
fn sent(p: &Prepared) -> Vec<u8> {
    let mut out = p.head.clone();
    match &p.body {
        Body::Memory(b) => out.extend_from_slice(b),
        Body::File { path, offset, .. } => {
            out.extend_from_slice(&std::fs::read(path).unwrap()[*offset as usize..]);
        }
    }
    out
}

fn html(len: usize) -> String {
    let mut s = "<p>caf\u{e9} = ".to_owned();
    while s.len() < len {
        s.push_str("<b>x</b> ");
    }
    s
}

fn lines_fit(data: &[u8]) -> bool {
    data.split(|&b| b == b'\n').all(|l| l.len() <= 1000)
}

#[test]
fn a_single_part_message_is_sent_as_quoted_printable() {
    let text = format!("<html>\r\n{}  \r\n</html>\r\n", html(5000));
    let m = format!("{HEAD}Content-Type: text/html; charset=utf-8\r\n\r\n{text}");
    let p = prepared(m.as_bytes()).unwrap();
    let data = sent(&p);
    assert!(lines_fit(&data));
    assert_eq!(p.body_type, BodyType::SevenBit);
    assert_eq!(p.size, data.len() as u64);
    let head = String::from_utf8_lossy(&p.head);
    assert!(
        head.ends_with("MIME-Version: 1.0\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"),
        "{head}"
    );
    let parsed = mail_parser::MessageParser::default().parse(&data).unwrap();
    assert_eq!(parsed.body_html(0).unwrap(), text);
    assert_eq!(
        p.notes,
        [format!(
            "the body (text/html) re-encoded as quoted-printable: line 9 was {} octets",
            html(5000).len() + 2
        )]
    );
    assert_eq!(p.binary_cause, None);
}

#[test]
fn a_declared_encoding_is_replaced_and_a_binary_body_becomes_base64() {
    let mut bytes: Vec<u8> = (0..3000u32).map(|i| (i * 7 % 251) as u8).collect();
    bytes.retain(|b| *b != b'\r' && *b != b'\n' && *b != 0);
    let mut m = format!(
        "{HEAD}MIME-Version: 1.0\r\nContent-Type: application/octet-stream\r\n\
         Content-Transfer-Encoding:\r\n 8bit\r\n\r\n"
    )
    .into_bytes();
    m.extend_from_slice(&bytes);
    let p = prepared(&m).unwrap();
    let data = sent(&p);
    assert!(lines_fit(&data));
    let head = String::from_utf8_lossy(&p.head);
    assert_eq!(
        head.matches("Content-Transfer-Encoding").count(),
        1,
        "{head}"
    );
    assert_eq!(head.matches("MIME-Version").count(), 1, "{head}");
    let parsed = mail_parser::MessageParser::default().parse(&data).unwrap();
    // The body ends with CRLF on the wire, as it would have without the re-encoding.
    bytes.extend_from_slice(b"\r\n");
    assert_eq!(parsed.root_part().contents(), bytes);
}

fn multipart(parts: &[(&str, &str)], boundary: &str) -> String {
    let mut m = format!(
        "{HEAD}MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=\"{boundary}\"\r\n\r\npreamble\r\n"
    );
    for (head, body) in parts {
        m.push_str(&format!("--{boundary}\r\n{head}\r\n\r\n{body}\r\n"));
    }
    m.push_str(&format!("--{boundary}--\r\nepilogue\r\n"));
    m
}

#[test]
fn only_the_parts_with_long_lines_change() {
    let plain = "caf\u{e9}  \r\n--b1x not a delimiter\r\n.\r\n";
    let long = format!("<p>{}</p>", html(4000));
    let inner = multipart(
        &[
            ("Content-Type: text/plain", "short"),
            ("Content-Type: image/png", &"A".repeat(1200)),
        ],
        "b2",
    );
    let inner_body = &inner[inner.find("preamble").unwrap()..];
    let m = multipart(
        &[
            ("Content-Type: text/plain; charset=utf-8", plain),
            ("Content-Type: text/html; charset=utf-8", &long),
            ("Content-Type: multipart/mixed; boundary=b2", inner_body),
        ],
        "b1",
    );
    let p = prepared(m.as_bytes()).unwrap();
    let data = sent(&p);
    assert!(lines_fit(&data));
    // The untouched part is 8-bit still.
    assert_eq!(p.body_type, BodyType::EightBitMime);
    let text = String::from_utf8(data.clone()).unwrap_or_default();
    assert!(
        text.contains(&format!("\r\n\r\n{plain}\r\n--b1\r\n")),
        "{text}"
    );
    assert!(text.contains("\r\n--b2\r\nContent-Type: text/plain\r\n\r\nshort\r\n--b2\r\n"));
    assert!(text.starts_with(&m[..m.find("--b1\r\n").unwrap()]));
    assert!(text.ends_with("--b1--\r\nepilogue\r\n"));
    let parsed = mail_parser::MessageParser::default().parse(&data).unwrap();
    assert_eq!(parsed.body_html(0).unwrap(), long);
    let png = parsed.attachment(0).unwrap();
    assert_eq!(png.contents(), "A".repeat(1200).as_bytes());
    assert_eq!(
        p.notes,
        [
            format!(
                "part 2 (text/html) re-encoded as quoted-printable: line 20 was {} octets",
                long.len()
            ),
            "part 3.2 (image/png) re-encoded as base64: line 32 was 1200 octets".into(),
        ]
    );
}

#[test]
fn encoded_parts_with_long_lines_are_re_wrapped() {
    use base64::Engine as _;
    let bytes: Vec<u8> = (0..=255u8).cycle().take(3000).collect();
    let b64 = base64::engine::general_purpose::STANDARD.encode(&bytes);
    let qp = format!("{}=3D=C3=A9 end", "word ".repeat(300));
    let m = multipart(
        &[
            (
                "Content-Type: application/pdf\r\nContent-Transfer-Encoding: base64",
                &b64,
            ),
            (
                "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable",
                &qp,
            ),
        ],
        "b",
    );
    let p = prepared(m.as_bytes()).unwrap();
    let data = sent(&p);
    assert!(data.split(|&b| b == b'\n').all(|l| l.len() <= 78));
    let parsed = mail_parser::MessageParser::default().parse(&data).unwrap();
    assert_eq!(parsed.attachment(0).unwrap().contents(), bytes);
    assert_eq!(
        parsed.body_text(0).unwrap(),
        format!("{}=\u{e9} end", "word ".repeat(300))
    );
}

#[test]
fn long_header_lines_of_parts_are_folded_or_refused() {
    let name = format!("Content-Type: text/plain; name=\"{}\"", "a b ".repeat(300));
    let m = multipart(&[(&name, "hello")], "b");
    let p = prepared(m.as_bytes()).unwrap();
    let data = sent(&p);
    assert!(lines_fit(&data));
    let unfolded = String::from_utf8(data).unwrap().replace("\r\n ", " ");
    assert!(unfolded.contains(&format!("{name}\r\n\r\nhello\r\n")));
    assert_eq!(
        p.notes,
        ["line 11 (1233 octets, in the header of part 1) folded"]
    );

    let name = format!("Content-Type: text/plain; name=\"{}\"", "a".repeat(1200));
    let e = prepared(multipart(&[(&name, "hello")], "b").as_bytes()).unwrap_err();
    assert_eq!(e.code, crate::fail::EX_DATAERR);
    assert!(
        e.message
            .contains("line 11, in the header of part 1, is 1233 octets"),
        "{e}"
    );
    assert!(e.message.contains("shorten the header"), "{e}");
}

#[test]
fn signed_messages_are_left_as_they_are_and_say_why() {
    let long = html(2000);
    let dkim = format!(
        "DKIM-Signature: v=1; a=rsa-sha256; d=example.org; bh=x; b=y\r\n{HEAD}\r\nline\r\n{long}\r\n"
    );
    let signed = multipart(
        &[
            ("Content-Type: text/html", &long),
            ("Content-Type: application/pgp-signature", "sig"),
        ],
        "s",
    )
    .replace(
        "multipart/alternative",
        "multipart/signed; protocol=\"application/pgp-signature\"",
    );
    let smime = format!("{HEAD}Content-Type: application/pkcs7-mime\r\n\r\n{long}\r\n");
    for (m, line, why) in [
        (&dkim, 9, "the message is signed (DKIM-Signature)"),
        (&signed, 13, "it is in a signed part (multipart/signed)"),
        (
            &smime,
            8,
            "it is in an S/MIME part (application/pkcs7-mime)",
        ),
    ] {
        let p = prepared(m.as_bytes()).unwrap();
        assert_eq!(p.body_type, BodyType::BinaryMime);
        assert!(sent(&p).ends_with(&m.as_bytes()[m.find("\r\n\r\n").unwrap()..]));
        let cause = p.binary_cause.unwrap();
        assert_eq!(
            cause,
            format!(
                "m.eml: line {line} is {} octets, over SMTP's 998 limit, and {why}, so it cannot \
                 be re-encoded without breaking the signature; the server does not offer \
                 BINARYMIME: wrap the line before signing",
                long.len()
            )
        );
        assert!(p.notes.is_empty());
    }
}

#[test]
fn what_cannot_be_followed_is_left_as_it_is() {
    let long = "x".repeat(1500);
    for (m, says) in [
        (
            format!("{HEAD}Content-Type: multipart/mixed\r\n\r\n{long}\r\n"),
            "the body: it is a multipart without a usable boundary",
        ),
        (
            multipart(&[("Content-Transfer-Encoding: x-uuencode", &long)], "b"),
            "part 1 has Content-Transfer-Encoding x-uuencode",
        ),
        (
            multipart(&[("no header here", &long)], "b"),
            "part 1: its header section holds a line that is not a header field",
        ),
    ] {
        let p = prepared(m.as_bytes()).unwrap();
        assert_eq!(p.body_type, BodyType::BinaryMime);
        let cause = p.binary_cause.unwrap();
        assert!(cause.contains(says), "{cause}");
        assert!(cause.contains("1500 octets"), "{cause}");
    }
}

#[test]
fn a_large_body_is_re_encoded_into_a_private_spool() {
    let text = format!("{}\r\n", html(40_000));
    let m = format!("{HEAD}Content-Type: text/html\r\n\r\n{text}");
    let path = std::env::temp_dir().join(format!("smtp-cli-{}-reencode.eml", std::process::id()));
    std::fs::write(&path, &m).unwrap();
    let p = prepare(
        Input::File(path.clone(), None),
        "m.eml".into(),
        "client.example",
    )
    .unwrap();
    std::fs::remove_file(&path).unwrap();
    let Body::File { path: spooled, .. } = &p.body else {
        panic!("a body over 32 KiB is spooled");
    };
    assert!(spooled.starts_with(std::env::temp_dir()) && spooled.exists());
    let data = sent(&p);
    assert!(lines_fit(&data));
    assert_eq!(p.size, data.len() as u64);
    let parsed = mail_parser::MessageParser::default().parse(&data).unwrap();
    assert_eq!(parsed.body_html(0).unwrap(), text);
    let spooled = spooled.clone();
    drop(p);
    assert!(!spooled.exists(), "the spool goes with the message");
}

#[test]
fn a_long_line_of_a_message_without_mime_is_text() {
    // No Content-Type: text/plain; bare LF line ends become CRLF.
    let m = format!("{HEAD}\nshort\n{}\n", "y".repeat(1000)).replace("\r\n", "\n");
    let p = prepared(m.as_bytes()).unwrap();
    let data = sent(&p);
    let parsed = mail_parser::MessageParser::default().parse(&data).unwrap();
    assert_eq!(
        parsed.body_text(0).unwrap(),
        format!("short\r\n{}\r\n", "y".repeat(1000))
    );
}

/// A part of the property test: text or bytes, in lines (some long).
fn part() -> impl Strategy<Value = (bool, Vec<Vec<u8>>)> {
    let text = prop::collection::vec(
        prop_oneof![
            8 => prop::sample::select(b"ab .-\t".to_vec()).prop_map(|b| vec![b]),
            1 => Just("\u{e9}".as_bytes().to_vec()),
        ],
        0..40,
    )
    .prop_map(|v| v.concat());
    let bytes = prop::collection::vec(any::<u8>(), 0..40).prop_map(|v| {
        v.into_iter()
            .filter(|b| !b"\r\n=".contains(b))
            .collect::<Vec<u8>>()
    });
    let line = |s: BoxedStrategy<Vec<u8>>| {
        prop_oneof![
            6 => s.clone(),
            1 => s.prop_map(|l| l.repeat(1 + 999 / l.len().max(1))),
        ]
    };
    prop_oneof![
        prop::collection::vec(line(text.boxed()), 1..5).prop_map(|l| (true, l)),
        prop::collection::vec(line(bytes.boxed()), 1..5).prop_map(|l| (false, l)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn the_walk_leaves_parts_without_long_lines_byte_identical(
        parts in prop::collection::vec(part(), 1..5),
    ) {
        let boundary = "=_b0und4ry";
        let mut m = format!(
            "{HEAD}MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"{boundary}\"\r\n\r\n"
        ).into_bytes();
        for (text, lines) in &parts {
            let kind = if *text { "text/plain; charset=utf-8" } else { "application/octet-stream" };
            m.extend_from_slice(format!("--{boundary}\r\nContent-Type: {kind}\r\n\r\n").as_bytes());
            m.extend_from_slice(&lines.join(&b"\r\n"[..]));
            m.extend_from_slice(b"\r\n");
        }
        m.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
        let p = prepared(&m).unwrap();
        let data = sent(&p);
        prop_assert!(lines_fit(&data));
        let delimiter = format!("\r\n--{boundary}");
        let split = |mut d: &[u8]| -> Vec<Vec<u8>> {
            let mut out = Vec::new();
            while let Some(i) = d.windows(delimiter.len()).position(|w| w == delimiter.as_bytes()) {
                out.push(d[..i].to_vec());
                d = &d[i + delimiter.len()..];
            }
            out.push(d.to_vec());
            out
        };
        let (before, after) = (split(&m), split(&data));
        prop_assert_eq!(before.len(), after.len());
        let parsed = mail_parser::MessageParser::default().parse(&data).unwrap();
        for (i, (text, lines)) in parts.iter().enumerate() {
            let long = lines.iter().any(|l| l.len() > 998);
            if !long {
                prop_assert_eq!(&before[i + 1], &after[i + 1]);
            } else {
                let part = &parsed.parts[i + 1];
                let want = lines.join(&b"\r\n"[..]);
                let got = match text {
                    true => part.text_contents().unwrap().as_bytes().to_vec(),
                    false => part.contents().to_vec(),
                };
                prop_assert_eq!(got, want);
            }
        }
    }
}
