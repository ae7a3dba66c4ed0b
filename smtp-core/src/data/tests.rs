use proptest::prelude::*;

use super::*;

fn data(chunks: &[&[u8]], rules: BodyRules) -> Result<Vec<u8>, BodyError> {
    let mut enc = DataEncoder::new(rules);
    let mut out = Vec::new();
    for c in chunks {
        enc.encode(c, &mut out)?;
    }
    enc.finish(&mut out)?;
    Ok(out)
}

fn bdat(chunks: &[&[u8]], rules: BodyRules) -> Result<Vec<u8>, BodyError> {
    let mut enc = BdatEncoder::new(rules);
    let mut out = Vec::new();
    for c in chunks {
        enc.encode(c, &mut out)?;
    }
    enc.finish(&mut out)?;
    Ok(out)
}

macro_rules! data_vectors {
    ($($name:ident: $input:expr => $wire:expr;)*) => {$(
        #[test]
        fn $name() {
            let input: &[u8] = $input;
            let want: &[u8] = $wire;
            assert_eq!(data(&[input], BodyRules::SEVEN_BIT).unwrap(), want);
            // Split at every position: the same output.
            for i in 0..=input.len() {
                let (a, b) = input.split_at(i);
                assert_eq!(data(&[a, b], BodyRules::SEVEN_BIT).unwrap(), want, "split at {i}");
            }
        }
    )*};
}

data_vectors! {
    empty: b"" => b".\r\n";
    bare_lf: b"a\nb" => b"a\r\nb\r\n.\r\n";
    bare_cr: b"a\rb" => b"a\r\nb\r\n.\r\n";
    crlf_kept: b"a\r\nb" => b"a\r\nb\r\n.\r\n";
    ends_with_crlf: b"a\r\n" => b"a\r\n.\r\n";
    ends_with_cr: b"a\r" => b"a\r\n.\r\n";
    lone_dot: b".\n" => b"..\r\n.\r\n";
    dot_after_lf: b"\n.\n" => b"\r\n..\r\n.\r\n";
    dot_after_crlf_lf: b"\r\n.\n" => b"\r\n..\r\n.\r\n";
    two_dots: b".." => b"...\r\n.\r\n";
    three_dots: b"..." => b"....\r\n.\r\n";
    leading_dot_first_line: b".hidden\nline" => b"..hidden\r\nline\r\n.\r\n";
    terminator_inside: b"a\r\n.\r\nb" => b"a\r\n..\r\nb\r\n.\r\n";
    cr_cr_lf: b"a\r\r\nb" => b"a\r\n\r\nb\r\n.\r\n";
    lf_cr: b"a\n\rb" => b"a\r\n\r\nb\r\n.\r\n";
    dot_mid_line: b"a.b\n" => b"a.b\r\n.\r\n";
    blank_lines: b"\n\n" => b"\r\n\r\n.\r\n";
}

#[test]
fn cr_split_across_chunks_is_one_line_end() {
    assert_eq!(
        data(&[b"a\r", b"\nb"], BodyRules::SEVEN_BIT).unwrap(),
        b"a\r\nb\r\n.\r\n"
    );
    assert_eq!(
        data(&[b"a\r", b"", b"\n.b"], BodyRules::SEVEN_BIT).unwrap(),
        b"a\r\n..b\r\n.\r\n"
    );
    assert_eq!(
        data(&[b"a\r", b"\r"], BodyRules::SEVEN_BIT).unwrap(),
        b"a\r\n\r\n.\r\n"
    );
}

#[test]
fn bdat_normalises_without_stuffing() {
    assert_eq!(
        bdat(&[b".a\nb\r", b"\n.\n"], BodyRules::SEVEN_BIT).unwrap(),
        b".a\r\nb\r\n.\r\n"
    );
    assert_eq!(bdat(&[b"x"], BodyRules::SEVEN_BIT).unwrap(), b"x\r\n");
    assert_eq!(bdat(&[b""], BodyRules::SEVEN_BIT).unwrap(), b"");
    let raw: &[u8] = b"\0\xff\n\r.";
    assert_eq!(
        bdat(&[raw], BodyRules::BINARY).unwrap(),
        raw,
        "binary passes unchanged"
    );
}

#[test]
fn eight_bit_names_its_line() {
    let body: &[u8] = b"Subject: x\r\n\r\ncaf\xc3\xa9\r\n";
    assert_eq!(
        data(&[body], BodyRules::SEVEN_BIT),
        Err(BodyError::EightBit { line: 3 })
    );
    assert!(data(&[body], BodyRules::EIGHT_BIT_MIME).is_ok());
    let err = data(&[body], BodyRules::SEVEN_BIT).unwrap_err().to_string();
    assert!(err.contains("line 3") && err.contains("8BITMIME"), "{err}");
}

#[test]
fn line_length_limit() {
    let ok = vec![b'a'; 998];
    let long = vec![b'a'; 999];
    for rules in [BodyRules::SEVEN_BIT, BodyRules::EIGHT_BIT_MIME] {
        assert!(data(&[&ok], rules).is_ok());
        assert_eq!(
            data(&[b"first\n", &long], rules),
            Err(BodyError::LineTooLong {
                line: 2,
                len: 999,
                limit: 998
            })
        );
        // Split across chunks, still caught.
        let (a, b) = long.split_at(500);
        assert!(matches!(
            data(&[a, b], rules),
            Err(BodyError::LineTooLong { line: 1, .. })
        ));
    }
    // A stuffed dot does not count: the limit is on the message's own line.
    let mut dotted = vec![b'.'];
    dotted.extend_from_slice(&ok[1..]);
    assert!(data(&[&dotted], BodyRules::SEVEN_BIT).is_ok());
}

#[test]
fn nul_only_in_binary() {
    assert_eq!(
        data(&[b"a\n\0"], BodyRules::EIGHT_BIT_MIME),
        Err(BodyError::Nul { line: 2 })
    );
    assert!(bdat(&[b"a\n\0"], BodyRules::BINARY).is_ok());
}

#[test]
fn failed_encoder_stays_failed() {
    let mut enc = DataEncoder::new(BodyRules::SEVEN_BIT);
    let mut out = Vec::new();
    assert!(enc.encode(b"\xff", &mut out).is_err());
    assert!(enc.encode(b"fine", &mut out).is_err());
    assert!(enc.finish(&mut out).is_err());
}

#[test]
fn scanner_facts() {
    let mut s = BodyScanner::new();
    s.scan(b".a\nb\xff\r\n");
    s.scan(&[b'x'; 1200]);
    let facts = s.finish();
    assert!(facts.eight_bit);
    assert!(!facts.nul);
    assert_eq!(facts.lines, 3);
    assert_eq!(facts.longest_line, 1200);
    assert_eq!(facts.first_long_line, Some(3));
    assert_eq!(facts.rules(), BodyRules::BINARY);
}

/// Removes the terminator and one leading dot per line: what a server stores.
fn unstuff(wire: &[u8]) -> Vec<u8> {
    let body = wire.strip_suffix(b".\r\n").expect("terminator");
    let mut out = Vec::new();
    for line in body.split_inclusive(|&b| b == b'\n') {
        out.extend_from_slice(line.strip_prefix(b".").unwrap_or(line));
    }
    out
}

/// The reference normalisation, written the slow obvious way.
fn normalise(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < input.len() {
        match input[i] {
            b'\r' if input.get(i + 1) == Some(&b'\n') => {
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

fn chunked<'a>(input: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut pieces = Vec::new();
    let mut rest = input;
    for &c in cuts {
        let (a, b) = rest.split_at(c % (rest.len() + 1));
        pieces.push(a);
        rest = b;
    }
    pieces.push(rest);
    pieces
}

fn body_bytes() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(
        prop_oneof![
            4 => Just(b'\r'), 4 => Just(b'\n'), 4 => Just(b'.'), 6 => b'a'..=b'z', 1 => any::<u8>()
        ],
        0..300,
    )
}

proptest! {
    #[test]
    fn data_encoding_invariants(body in body_bytes(), cuts in proptest::collection::vec(any::<usize>(), 0..8)) {
        let whole = data(&[&body], BodyRules::BINARY).unwrap();
        let pieces = chunked(&body, &cuts);
        prop_assert_eq!(&data(&pieces, BodyRules::BINARY).unwrap(), &whole);
        // Only CRLF line endings.
        for (i, &b) in whole.iter().enumerate() {
            if b == b'\r' { prop_assert_eq!(whole.get(i + 1), Some(&b'\n')); }
            if b == b'\n' { prop_assert!(i > 0 && whole[i - 1] == b'\r'); }
        }
        // The end-of-data mark only at the end.
        let before = &whole[..whole.len() - 3];
        prop_assert!(!before.windows(5).any(|w| w == b"\r\n.\r\n"));
        prop_assert!(!before.starts_with(b".\r\n"));
        prop_assert!(whole == b".\r\n" || whole.ends_with(b"\r\n.\r\n"));
        // The server recovers exactly the normalised input.
        prop_assert_eq!(unstuff(&whole), normalise(&body));
    }

    #[test]
    fn bdat_and_scanner_are_chunking_invariant(body in body_bytes(), cuts in proptest::collection::vec(any::<usize>(), 0..8)) {
        let pieces = chunked(&body, &cuts);
        let whole = bdat(&[&body], BodyRules::BINARY).unwrap();
        prop_assert_eq!(&bdat(&pieces, BodyRules::BINARY).unwrap(), &whole);
        let rules = BodyRules { binary: false, ..BodyRules::BINARY };
        prop_assert_eq!(bdat(&pieces, rules).unwrap(), normalise(&body));

        let mut one = BodyScanner::new();
        one.scan(&body);
        let mut many = BodyScanner::new();
        for p in &pieces { many.scan(p); }
        let facts = one.finish();
        prop_assert_eq!(facts, many.finish());
        // SIZE= is the DATA output without its 3-octet end mark.
        let wire = data(&[&body], BodyRules::BINARY).unwrap();
        prop_assert_eq!(facts.encoded_size, wire.len() as u64 - 3);
    }

    #[test]
    fn never_panics(body in proptest::collection::vec(any::<u8>(), 0..2000), cuts in proptest::collection::vec(any::<usize>(), 0..8)) {
        for rules in [BodyRules::SEVEN_BIT, BodyRules::EIGHT_BIT_MIME, BodyRules::BINARY] {
            let _ = data(&chunked(&body, &cuts), rules);
            let _ = bdat(&chunked(&body, &cuts), rules);
        }
    }
}

/// What an encoder put out, and how it ended.
type Wire = (Vec<u8>, Result<(), BodyError>);

/// The two encoders, as the tests drive them.
trait Encoder {
    fn encode(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> Result<(), BodyError>;
    fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), BodyError>;
}

impl Encoder for DataEncoder {
    fn encode(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> Result<(), BodyError> {
        Self::encode(self, chunk, out)
    }
    fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), BodyError> {
        Self::finish(self, out)
    }
}

impl Encoder for BdatEncoder {
    fn encode(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> Result<(), BodyError> {
        Self::encode(self, chunk, out)
    }
    fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), BodyError> {
        Self::finish(self, out)
    }
}

/// What an encoder put out for `chunks` (an error stops it), then the finish.
fn encode_all(mut enc: impl Encoder, chunks: &[&[u8]]) -> Wire {
    let mut out = Vec::new();
    for c in chunks {
        if let Err(e) = enc.encode(c, &mut out) {
            return (out, Err(e));
        }
    }
    let r = enc.finish(&mut out);
    (out, r)
}

fn data_with(chunks: &[&[u8]], rules: BodyRules, reference: bool) -> Wire {
    let enc = DataEncoder::new(rules);
    encode_all(if reference { enc.reference() } else { enc }, chunks)
}

fn bdat_with(chunks: &[&[u8]], rules: BodyRules, reference: bool) -> Wire {
    let enc = BdatEncoder::new(rules);
    encode_all(if reference { enc.reference() } else { enc }, chunks)
}

fn facts_with(chunks: &[&[u8]], reference: bool) -> BodyFacts {
    let mut s = BodyScanner::new();
    if reference {
        s = s.reference();
    }
    for c in chunks {
        s.scan(c);
    }
    s.finish()
}

/// Mostly clean text (CRLF lines of 0 to 80 octets), with now and then
/// what makes it unclean: a bare CR or LF, a line starting with a dot, an
/// 8-bit octet, a NUL, a line over 998 octets.
fn mostly_clean() -> impl Strategy<Value = Vec<u8>> {
    let line = prop_oneof![
        20 => proptest::collection::vec(b' '..=b'~', 0..80).prop_map(|mut l| {
            l.retain(|&b| b != b'.');
            l.extend_from_slice(b"\r\n");
            l
        }),
        1 => Just(b".\r\n".to_vec()),
        1 => Just(b".dot\r\n".to_vec()),
        1 => Just(b"bare lf\n".to_vec()),
        1 => Just(b"bare cr\r".to_vec()),
        1 => Just(b"no end".to_vec()),
        1 => Just(b"caf\xc3\xa9\r\n".to_vec()),
        1 => Just(b"n\0l\r\n".to_vec()),
        1 => Just([vec![b'x'; 999], b"\r\n".to_vec()].concat()),
        1 => Just(b"a.b.\r\n".to_vec()),
    ];
    proptest::collection::vec(line, 0..40).prop_map(|lines| lines.concat())
}

#[test]
fn a_clean_chunk_is_copied_whole_and_a_dot_line_is_still_stuffed() {
    let clean = b"one\r\ntwo\r\n";
    let (out, r) = data_with(&[clean], BodyRules::SEVEN_BIT, false);
    assert_eq!((out.as_slice(), r), (&b"one\r\ntwo\r\n.\r\n"[..], Ok(())));
    // The same body with a late dot-line, bare CR or bare LF: encoded.
    for (late, wire) in [
        (
            &b"one\r\n.\r\nMAIL FROM:<x>\r\n"[..],
            &b"one\r\n..\r\nMAIL FROM:<x>\r\n.\r\n"[..],
        ),
        (b"one\r\n\r.\rMAIL\r\n", b"one\r\n\r\n..\r\nMAIL\r\n.\r\n"),
        (b"one\n.\nMAIL\r\n", b"one\r\n..\r\nMAIL\r\n.\r\n"),
        (b".\r\n", b"..\r\n.\r\n"),
    ] {
        assert_eq!(data_with(&[late], BodyRules::SEVEN_BIT, false).0, wire);
        // After a clean chunk, too.
        let (out, _) = data_with(&[clean, late], BodyRules::SEVEN_BIT, false);
        assert_eq!(out, [&clean[..], wire].concat());
    }
}

proptest! {
    #[test]
    fn the_clean_path_puts_the_same_bytes_on_the_wire_as_the_line_loop(
        body in prop_oneof![mostly_clean(), body_bytes()],
        cuts in proptest::collection::vec(any::<usize>(), 0..8),
    ) {
        let pieces = chunked(&body, &cuts);
        for rules in [BodyRules::SEVEN_BIT, BodyRules::EIGHT_BIT_MIME, BodyRules::BINARY,
                      BodyRules { binary: false, ..BodyRules::BINARY }] {
            prop_assert_eq!(data_with(&pieces, rules, false), data_with(&pieces, rules, true));
            prop_assert_eq!(bdat_with(&pieces, rules, false), bdat_with(&pieces, rules, true));
        }
        prop_assert_eq!(facts_with(&pieces, false), facts_with(&pieces, true));
    }

    #[test]
    fn a_clean_body_goes_out_unchanged_with_the_end_mark(
        lines in proptest::collection::vec(proptest::collection::vec(b' '..=b'~', 0..200), 0..50),
        cuts in proptest::collection::vec(any::<usize>(), 0..8),
    ) {
        let mut body = Vec::new();
        for mut l in lines {
            if l.first() == Some(&b'.') { l[0] = b'x'; }
            body.extend_from_slice(&l);
            body.extend_from_slice(b"\r\n");
        }
        let pieces = chunked(&body, &cuts);
        let (wire, r) = data_with(&pieces, BodyRules::SEVEN_BIT, false);
        prop_assert_eq!(r, Ok(()));
        prop_assert_eq!(wire, [&body[..], b".\r\n"].concat());
        let facts = facts_with(&pieces, false);
        prop_assert_eq!(facts.encoded_size, body.len() as u64);
    }
}

#[test]
fn clean_chunks_are_recognised_and_unclean_ones_are_not() {
    let c = clean(b"ab\r\n\r\ncde", false, 3, true).expect("clean");
    assert_eq!((c.ends, c.tail, c.longest), (2, 3, 5));
    let c = clean(b"abc", false, 3, true).expect("clean");
    assert_eq!((c.ends, c.tail, c.longest), (0, 6, 6));
    assert!(clean(b"\xff\0\r\n", true, 0, true).is_some_and(|c| c.eight_bit && c.nul));
    for unclean in [
        &b".a\r\n"[..],
        b"a\r\n.b\r\n",
        b"a\nb",
        b"a\rb",
        b"a\r",
        b"\nb",
        b"a\r\r\n",
    ] {
        assert!(clean(unclean, true, 0, true).is_none(), "{unclean:?}");
    }
    // Dots are only a matter where they are stuffed (DATA, not BDAT).
    assert!(clean(b".a\r\n.b\r\n", true, 0, false).is_some());
}

proptest! {
    #[test]
    fn facts_of_two_parts_split_after_a_line_end_join(
        head in body_bytes(),
        body in prop_oneof![mostly_clean(), body_bytes()],
    ) {
        let mut head = head;
        head.extend_from_slice(b"\r\n");
        let joined = facts_with(&[&head], false).then(facts_with(&[&body], false));
        prop_assert_eq!(joined, facts_with(&[&head, &body], false));
    }
}
