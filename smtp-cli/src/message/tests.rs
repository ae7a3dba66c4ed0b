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
