use super::*;

/// Writes `bytes` to a fresh file in the temporary directory.
fn message_file(name: &str, bytes: &[u8]) -> PathBuf {
    let path = std::env::temp_dir().join(format!("smtp-cli-{}-{name}.eml", std::process::id()));
    std::fs::write(&path, bytes).unwrap();
    path
}

async fn read_all(body: &mut PreparedBody) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 1000];
    loop {
        let n = body.read(&mut buf).await?;
        if n == 0 {
            return Ok(out);
        }
        out.extend_from_slice(&buf[..n]);
    }
}

fn message(lines: usize) -> Vec<u8> {
    let mut m = b"From: a@example.org\r\nTo: b@example.net\r\nDate: Sun, 29 Nov 2026 02:00:00 +0000\r\nMessage-ID: <1@example.org>\r\n\r\n".to_vec();
    for n in 0..lines {
        m.extend_from_slice(format!("line {n:072}\r\n").as_bytes());
    }
    m
}

fn prepare_path(path: &Path) -> Result<Prepared, Failure> {
    prepare(
        Input::File(path.to_owned(), None),
        "m".into(),
        "client.example",
    )
}

#[tokio::test]
async fn a_small_body_is_sent_from_memory_and_again_after_rewind() {
    let bytes = message(10);
    let path = message_file("small", &bytes);
    let p = prepare_path(&path).unwrap();
    assert!(matches!(p.body, Body::Memory(_)));
    let mut body = PreparedBody::new(&p);
    // The file is not needed any more once prepared.
    std::fs::remove_file(&path).unwrap();
    assert_eq!(read_all(&mut body).await.unwrap(), bytes);
    body.rewind().await.unwrap();
    assert_eq!(read_all(&mut body).await.unwrap(), bytes);
}

#[tokio::test]
async fn a_large_body_streams_from_its_file_and_closes_it_at_the_end() {
    let bytes = message(1000); // 80 KiB: above the inline limit
    let path = message_file("large", &bytes);
    let p = prepare_path(&path).unwrap();
    assert!(matches!(p.body, Body::File { .. }));
    let mut body = PreparedBody::new(&p);
    assert_eq!(read_all(&mut body).await.unwrap(), bytes);
    assert!(
        matches!(body.file, FileState::Finished),
        "the file is closed"
    );
    assert_eq!(
        body.read(&mut [0u8; 10]).await.unwrap(),
        0,
        "and stays at its end"
    );
    body.rewind().await.unwrap();
    assert_eq!(read_all(&mut body).await.unwrap(), bytes);
    std::fs::remove_file(&path).unwrap();
}

#[tokio::test]
async fn a_file_changed_after_its_scan_fails_the_body() {
    let bytes = message(1000);
    let path = message_file("changing", &bytes);
    let p = prepare_path(&path).unwrap();
    // Changed before the send opens it.
    let mut other = bytes.clone();
    other[200] = b'X';
    std::fs::write(&path, &other).unwrap();
    let err = read_all(&mut PreparedBody::new(&p)).await.unwrap_err();
    assert_eq!(err.to_string(), CHANGED);
    // Removed.
    std::fs::remove_file(&path).unwrap();
    let err = read_all(&mut PreparedBody::new(&p)).await.unwrap_err();
    assert_eq!(err.to_string(), CHANGED);
}

#[tokio::test]
async fn a_file_changed_while_it_streams_fails_at_its_end() {
    let bytes = message(1000);
    let path = message_file("streaming", &bytes);
    let p = prepare_path(&path).unwrap();
    let mut body = PreparedBody::new(&p);
    let mut buf = vec![0u8; 1000];
    // Past the header section: the file is open.
    while body.pos <= body.head.len() && !matches!(body.file, FileState::Open(_)) {
        body.read(&mut buf).await.unwrap();
    }
    // Changed in place (same size), while open: read on to the end.
    std::thread::sleep(std::time::Duration::from_millis(20));
    let mut other = bytes.clone();
    other[bytes.len() - 10] = b'X';
    std::fs::write(&path, &other).unwrap();
    let err = loop {
        match body.read(&mut buf).await {
            Ok(0) => panic!("the end was reached without noticing the change"),
            Ok(_) => {}
            Err(e) => break e,
        }
    };
    assert_eq!(err.to_string(), CHANGED);
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn bcc_removed_with_continuations() {
    let head =
        b"From: a@x\r\nBcc: secret@x,\r\n  other@x\r\nTo: b@y\r\nbcc : c@z\r\nBccX: kept\r\n\r\n";
    assert_eq!(
        remove_header(head, b"bcc"),
        b"From: a@x\r\nTo: b@y\r\nBccX: kept\r\n\r\n"
    );
}

#[test]
fn a_bcc_too_long_to_fold_is_removed_not_refused() {
    let long = format!("Bcc: {}@example.net", "x".repeat(2000));
    let raw = format!("From: a@x\r\nTo: b@y\r\n{long}\r\nResent-Bcc: {long}\r\n\r\n");
    let head = Head::read(raw.as_bytes(), "m.eml", "host.example").expect("not refused");
    let text = String::from_utf8(head.bytes).unwrap();
    // No Bcc field is left (the added Message-ID is random hex, which may
    // spell "bcc" itself: look at field names).
    assert!(
        !text.lines().any(|l| {
            let l = l.to_ascii_lowercase();
            l.starts_with("bcc") || l.starts_with("resent-bcc") || l.contains("xxxxxxxx")
        }),
        "{text}"
    );
    assert!(
        head.recipients.iter().any(|r| r.starts_with("xxxx")),
        "-t still finds it: {:?}",
        head.recipients
    );
}

#[test]
fn header_section_end() {
    assert_eq!(header_end(b"A: b\r\n\r\nbody", false), Some(8));
    assert_eq!(header_end(b"A: b\n\nbody", false), Some(6));
    assert_eq!(header_end(b"A: b\r\rbody", false), Some(6));
    assert_eq!(header_end(b"A: b\r\n\rbody", false), Some(7));
    assert_eq!(header_end(b"\r\nbody", false), Some(2));
    assert_eq!(header_end(b"A: b\r\n", false), None);
    assert_eq!(header_end(b"A: b\r\n\r", false), None, "half a CRLF");
    assert_eq!(header_end(b"A: b\r\n", true), Some(6));
}

#[test]
fn what_is_not_a_header_section_is_refused() {
    let read = |raw: &[u8]| Head::read(raw, "m", "client.example").map(|h| h.bytes);
    assert_eq!(read(b"").unwrap_err().code, crate::fail::EX_DATAERR);
    assert_eq!(
        read(b"Dear Bob,\n").unwrap_err().code,
        crate::fail::EX_DATAERR
    );
    assert_eq!(read(b"\r\n").unwrap_err().code, crate::fail::EX_DATAERR);
    let e = read(b"Subject: hi\nthis is the body\n").unwrap_err();
    assert!(e.message.contains("line 2"), "{e}");
    let ok = read(
        b"Subject: hi\r  folded\rDate: Sun, 29 Nov 2026 02:00:00 +0000\rMessage-ID: <a@b>\r\r",
    )
    .unwrap();
    assert_eq!(
        ok,
        b"Subject: hi\r\n  folded\r\nDate: Sun, 29 Nov 2026 02:00:00 +0000\r\nMessage-ID: <a@b>\r\n\r\n"
    );
}

#[test]
fn a_file_given_again_is_reused_and_each_copy_without_a_message_id_gets_its_own() {
    let with_id = message(10);
    let path = message_file("again", &with_id);
    let mut files = Files::new(&[path.clone(), path.clone()]);
    let a = files.prepare(&path, "a".into(), "client.example").unwrap();
    let b = files.prepare(&path, "b".into(), "client.example").unwrap();
    assert_eq!((a.name.as_str(), b.name.as_str()), ("a", "b"));
    assert_eq!(
        (&a.head, a.size, a.body_type),
        (&b.head, b.size, b.body_type)
    );
    assert_eq!(files.seen.len(), 1);
    // The same as prepared alone.
    let alone = prepare_path(&path).unwrap();
    assert_eq!((&alone.head, alone.size), (&a.head, a.size));

    let without_id = remove_header(&with_id, b"message-id");
    std::fs::write(&path, &without_id).unwrap();
    let c = files.prepare(&path, "c".into(), "client.example").unwrap();
    let d = files.prepare(&path, "d".into(), "client.example").unwrap();
    assert_eq!(files.seen.len(), 2, "the changed file was read again");
    let id = |p: &Prepared| {
        let head = String::from_utf8(p.head.clone()).unwrap();
        head.lines()
            .find(|l| l.starts_with("Message-ID:"))
            .map(str::to_owned)
    };
    assert!(id(&c).is_some());
    assert_ne!(id(&c), id(&d), "each copy gets its own Message-ID");
    // Each copy's size is its own: generated Message-IDs (and Dates) may
    // differ in length; the body's share is the same.
    let body = |p: &Prepared| p.size - p.head.len() as u64;
    assert_eq!(body(&c), body(&d));
    assert_eq!(body(&c), body(&prepare_path(&path).unwrap()));
    std::fs::remove_file(&path).unwrap();
}

/// What the session puts on the wire for `body`'s bytes over DATA,
/// read as the driver reads them (64 KiB at a time), or the read error.
async fn data_on_the_wire(body: &mut PreparedBody, rules: BodyRules) -> io::Result<Vec<u8>> {
    let mut enc = smtp_core::data::DataEncoder::new(rules);
    let mut wire = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = body.read(&mut buf).await?;
        if n == 0 {
            enc.finish(&mut wire).unwrap();
            return Ok(wire);
        }
        enc.encode(&buf[..n], &mut wire).unwrap();
    }
}

#[tokio::test]
async fn a_clean_file_changed_after_its_scan_is_never_sent_raw() {
    let clean = message(2000); // 160 KiB: streams from the file, in several chunks
    let path = message_file("late-dot", &clean);
    let p = prepare_path(&path).unwrap();
    assert!(matches!(p.body, Body::File { .. }));
    assert_eq!(
        data_on_the_wire(&mut PreparedBody::new(&p), BodyRules::SEVEN_BIT)
            .await
            .unwrap(),
        [&clean[..], b".\r\n"].concat(),
        "clean: the file's bytes, then the end mark"
    );
    // A dot-line and a smuggled command written into the file after the
    // scan, the size kept: at a line start, across the 64 KiB chunk
    // boundary, and behind a bare CR and a bare LF.
    let smuggle = b".\r\nMAIL FROM:<evil@example.org>\r\n";
    // The body's first chunk starts after the header section, in the file.
    let body = header_end(&clean, true).unwrap();
    let boundary = body + 64 * 1024;
    for (at, before) in [
        (body + 79 * 10, &b""[..]), // at a line start (lines are 79 octets)
        (boundary - 3, b"\r\n"),    // the dot ends the first chunk
        (boundary - 2, b"\r\n"),    // the dot starts the second
        (boundary - 1, b"\r\n"),    // the CRLF before it split between them
        (100_000, b"x\r"),
        (120_000, b"x\n"),
    ] {
        let mut changed = clean.clone();
        let insert = [before, smuggle].concat();
        changed.splice(at..at + insert.len(), insert.iter().copied());
        std::fs::write(&path, &changed).unwrap();
        // Whatever the identity check says (here it notices: nothing is
        // read), the bytes that go out are encoded...
        assert!(
            data_on_the_wire(&mut PreparedBody::new(&p), BodyRules::SEVEN_BIT)
                .await
                .is_err()
        );
        // ...and had it missed the change (a write within the file
        // system's timestamp granularity), they are still encoded: the
        // end of data only at the end.
        let mut fooled = p.clone();
        if let Body::File { identity, .. } = &mut fooled.body {
            *identity = Identity::of(&std::fs::metadata(&path).unwrap());
        }
        let wire = data_on_the_wire(&mut PreparedBody::new(&fooled), BodyRules::SEVEN_BIT)
            .await
            .unwrap();
        let end = wire.len() - 3;
        assert!(
            !wire[..end].windows(5).any(|w| w == b"\r\n.\r\n"),
            "an early end of data at {at}"
        );
        assert!(wire.ends_with(b"\r\n.\r\n"));
        assert!(
            wire.windows(smuggle.len() + 1)
                .any(|w| w == [&b"."[..], smuggle].concat()),
            "the dot-line is stuffed at {at}"
        );
    }
    std::fs::remove_file(&path).unwrap();
}

#[tokio::test]
async fn a_large_file_given_again_is_sent_from_memory_the_same() {
    let bytes = message(1000); // 80 KiB: streams from its file the first time
    let path = message_file("repeated", &bytes);
    let mut files = Files::new(&[path.clone(), path.clone(), path.clone()]);
    let first = files.prepare(&path, "1".into(), "client.example").unwrap();
    assert!(matches!(first.body, Body::File { .. }));
    let second = files.prepare(&path, "2".into(), "client.example").unwrap();
    let third = files.prepare(&path, "3".into(), "client.example").unwrap();
    assert!(matches!(second.body, Body::Memory(_)));
    assert!(matches!(third.body, Body::Memory(_)));
    assert_eq!(
        files.held,
        (bytes.len() - header_end(&bytes, true).unwrap()) as u64
    );
    for p in [&first, &second, &third] {
        assert_eq!(read_all(&mut PreparedBody::new(p)).await.unwrap(), bytes);
        assert_eq!(p.size, first.size);
    }
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn a_file_named_once_is_not_kept() {
    let bytes = message(10);
    let (a, b) = (
        message_file("once-a", &bytes),
        message_file("once-b", &bytes),
    );
    let mut files = Files::new(&[a.clone(), b.clone()]);
    let pa = files.prepare(&a, "a".into(), "client.example").unwrap();
    let pb = files.prepare(&b, "b".into(), "client.example").unwrap();
    assert!(files.seen.is_empty());
    assert_eq!((pa.head, pa.size), (pb.head, pb.size));
    std::fs::remove_file(&a).unwrap();
    std::fs::remove_file(&b).unwrap();
}
