use std::sync::OnceLock;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use mail_auth::dkim::generate::DkimKeyPair;

use super::key::{KeyError, Kind, pkcs8_ed25519_v1, pkcs8_rsa, to_pem};
use super::keygen::zone_line;
use super::sign::{Signature, field_names, fields_to_sign};
use super::*;
use crate::cli::SendArgs;
use crate::fail::Failure;
use crate::message::{Input, Prepared, prepare};

/// One 2048-bit RSA key for the tests (PKCS#1 DER): making one takes a while.
fn rsa_pkcs1() -> &'static [u8] {
    static KEY: OnceLock<Vec<u8>> = OnceLock::new();
    KEY.get_or_init(|| {
        DkimKeyPair::generate_rsa(2048)
            .unwrap()
            .private_key()
            .to_vec()
    })
}

fn ed25519_v2() -> Vec<u8> {
    DkimKeyPair::generate_ed25519()
        .unwrap()
        .private_key()
        .to_vec()
}

fn options(canonicalization: &str) -> Options {
    Options {
        key: PathBuf::from("unused.pem"),
        selector: "s1".into(),
        domain: None,
        canonicalization: canonicalization.parse().unwrap(),
        add: false,
    }
}

fn rsa_signer(canonicalization: &str) -> Signer {
    let key = Key::from_pem(to_pem("RSA PRIVATE KEY", rsa_pkcs1()).as_bytes()).unwrap();
    Signer::new(key, &options(canonicalization)).unwrap()
}

fn prepared(bytes: &[u8]) -> Prepared {
    prepare(Input::Bytes(bytes.to_vec()), "m.eml".into(), "client.test").unwrap()
}

/// A tag's value in the DKIM-Signature field on top of `head`, white space
/// removed.
fn tag(head: &[u8], name: &str) -> String {
    let text = String::from_utf8_lossy(head);
    let field = text
        .strip_prefix("DKIM-Signature:")
        .expect("a DKIM-Signature on top");
    let end = field.find("\r\n").map(|_| {
        // The field ends at the first line that is not a continuation.
        let mut at = 0;
        for line in field.split_inclusive("\r\n") {
            at += line.len();
            if !field[at..].starts_with([' ', '\t']) {
                break;
            }
        }
        at
    });
    let field: String = field[..end.unwrap_or(field.len())]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    field
        .split(';')
        .find_map(|t| t.strip_prefix(&format!("{name}=")).map(str::to_owned))
        .unwrap_or_else(|| panic!("no {name}= in {field}"))
}

const MESSAGE: &str = "From: Alice <alice@example.org>\r\nTo: bob@example.net\r\nSubject: hi  there\r\nDate: Tue, 1 Dec 2026 02:00:00 +0000\r\nMessage-ID: <m1@example.org>\r\nX-Mailer: test\r\n\r\nhello  \r\n\r\n world\t\r\n\r\n\r\n";

#[test]
fn canonicalization_is_one_word_for_both_or_header_slash_body() {
    let c = |s: &str| s.parse::<Canonicalization>();
    let both = |x| Canonicalization { header: x, body: x };
    assert_eq!(c("relaxed"), Ok(both(Canon::Relaxed)));
    assert_eq!(c("simple"), Ok(both(Canon::Simple)));
    assert_eq!(
        c("Relaxed/Simple"),
        Ok(Canonicalization {
            header: Canon::Relaxed,
            body: Canon::Simple
        })
    );
    assert_eq!(c("simple/relaxed").unwrap().to_string(), "simple/relaxed");
    assert_eq!(Canonicalization::default().to_string(), "relaxed/relaxed");
    for bad in ["", "loose", "relaxed/", "/simple", "relaxed/simple/simple"] {
        assert!(c(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn rsa_keys_read_as_pkcs1_or_pkcs8_and_publish_a_subject_public_key_info() {
    let pkcs1 = Key::from_pem(to_pem("RSA PRIVATE KEY", rsa_pkcs1()).as_bytes()).unwrap();
    let pkcs8 = Key::from_pem(to_pem("PRIVATE KEY", &pkcs8_rsa(rsa_pkcs1())).as_bytes()).unwrap();
    assert_eq!(pkcs1.kind(), Kind::Rsa { bits: 2048 });
    assert_eq!(pkcs1.algorithm(), "rsa-sha256");
    assert_eq!(pkcs1.record(), pkcs8.record());
    // `openssl rsa -pubout`'s form for 2048 bits with exponent 65537.
    let record = pkcs1.record();
    let p = record.strip_prefix("v=DKIM1; k=rsa; p=").unwrap();
    assert!(
        p.starts_with("MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA"),
        "{p}"
    );
    assert!(p.ends_with("IDAQAB"), "{p}");
}

#[test]
fn ed25519_keys_read_as_pkcs8_v1_or_v2_with_the_raw_public_key_published() {
    let v2 = ed25519_v2();
    let v1 = pkcs8_ed25519_v1(&v2).unwrap();
    let a = Key::from_pem(to_pem("PRIVATE KEY", &v2).as_bytes()).unwrap();
    let b = Key::from_pem(to_pem("PRIVATE KEY", &v1).as_bytes()).unwrap();
    assert_eq!(a.kind(), Kind::Ed25519);
    assert_eq!(a.algorithm(), "ed25519-sha256");
    assert_eq!(a.record(), b.record());
    let record = a.record();
    let p = record.strip_prefix("v=DKIM1; k=ed25519; p=").unwrap();
    assert_eq!(BASE64.decode(p).unwrap().len(), 32);
    // RFC 8410's v1 layout, as `openssl genpkey -algorithm ed25519` writes.
    assert_eq!(v1.len(), 48);
    assert_eq!(
        &v1[..16],
        b"\x30\x2e\x02\x01\x00\x30\x05\x06\x03\x2b\x65\x70\x04\x22\x04\x20"
    );
}

#[test]
fn files_that_are_not_usable_keys_are_told_apart() {
    let block = |label: &str, der: &[u8]| to_pem(label, der).into_bytes();
    let err = |text: &[u8]| Key::from_pem(text).err().unwrap();
    assert_eq!(err(b"hello"), KeyError::NotPem);
    assert_eq!(err(&[0xff, 0xfe, 0x00]), KeyError::NotPem);
    assert_eq!(
        err(&block("ENCRYPTED PRIVATE KEY", b"x")),
        KeyError::Encrypted
    );
    let legacy = b"-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,00\n\nAAAA\n-----END RSA PRIVATE KEY-----\n";
    assert_eq!(err(legacy), KeyError::Encrypted);
    assert!(matches!(
        err(&block("PUBLIC KEY", b"x")),
        KeyError::PublicOnly(_)
    ));
    assert!(matches!(
        err(&block("CERTIFICATE", b"x")),
        KeyError::PublicOnly(_)
    ));
    assert!(matches!(
        err(&block("EC PRIVATE KEY", b"x")),
        KeyError::OtherAlgorithm(_)
    ));
    assert!(matches!(
        err(b"-----BEGIN PRIVATE KEY-----\nMIIB\n"),
        KeyError::Malformed(_)
    ));
    assert!(matches!(
        err(b"-----BEGIN PRIVATE KEY-----\n%%%%\n-----END PRIVATE KEY-----\n"),
        KeyError::Malformed(_)
    ));
    assert!(matches!(
        err(&block("PRIVATE KEY", b"\x30\x03\x02\x01\x00")),
        KeyError::Malformed(_)
    ));
}

#[test]
fn rsa_keys_under_2048_bits_are_refused_with_their_size() {
    let small = DkimKeyPair::generate_rsa(1024).unwrap();
    let e = Key::from_pem(to_pem("RSA PRIVATE KEY", small.private_key()).as_bytes())
        .err()
        .unwrap();
    assert_eq!(e, KeyError::RsaSize(1024));
    let text = e.to_string();
    assert!(
        text.contains("1024 bits") && text.contains("smtp dkim keygen"),
        "{text}"
    );
}

#[test]
fn rsa_keys_of_a_size_ring_cannot_sign_with_are_refused_naming_the_sizes() {
    // Only the modulus is read before the size is judged: a PKCS#1
    // SEQUENCE of a version and a 3000-bit modulus is enough.
    let mut modulus = vec![0x00, 0x80];
    modulus.resize(1 + 3000 / 8, 0x01);
    let mut inner = Vec::new();
    key::write_tlv(0x02, &[0], &mut inner);
    key::write_tlv(0x02, &modulus, &mut inner);
    let mut der = Vec::new();
    key::write_tlv(0x30, &inner, &mut der);
    let e = Key::from_pem(to_pem("RSA PRIVATE KEY", &der).as_bytes())
        .err()
        .unwrap();
    assert_eq!(e, KeyError::RsaSize(3000));
    let text = e.to_string();
    assert!(
        text.contains("3000 bits")
            && text.contains("multiples of 512")
            && text.contains("2048, 2560, 3072, 3584 or 4096")
            && !text.contains("PrivateModulusLen"),
        "{text}"
    );
    // 1024 bits: refused, saying why (RFC 8301, ring) and what to do.
    let text = KeyError::RsaSize(1024).to_string();
    assert!(
        text.contains("RFC 8301") && text.contains("new selector"),
        "{text}"
    );
}

#[test]
fn a_damaged_key_is_refused_without_a_byte_of_it_in_the_error() {
    // The modulus intact, a prime changed: ring finds it inconsistent.
    let mut der = rsa_pkcs1().to_vec();
    let at = der.len() - 40;
    der[at] ^= 0x55;
    let pem = to_pem("RSA PRIVATE KEY", &der);
    let e = Key::from_pem(pem.as_bytes()).err().unwrap();
    assert!(matches!(e, KeyError::Refused { what: "RSA", .. }), "{e:?}");
    let text = e.to_string();
    for line in pem.lines().filter(|l| !l.starts_with("-----")) {
        for piece in line.as_bytes().chunks(8) {
            let piece = String::from_utf8_lossy(piece);
            assert!(!text.contains(piece.as_ref()), "{piece} in {text}");
        }
    }
}

#[test]
fn a_key_file_s_error_names_the_file_and_stops_before_sending() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pem");
    let e = Key::read(&missing).err().unwrap();
    assert_eq!(e.code, crate::fail::EX_CONFIG);
    assert!(e.message.contains("missing.pem"), "{}", e.message);
    let wrong = dir.path().join("wrong.pem");
    std::fs::write(&wrong, "not a key").unwrap();
    let e = Key::read(&wrong).err().unwrap();
    assert_eq!(e.code, crate::fail::EX_CONFIG);
    assert!(e.message.contains("not a PEM private key"), "{}", e.message);
}

#[test]
fn the_signed_fields_are_those_present_and_the_trusted_ones_once_more() {
    let present = field_names(MESSAGE.as_bytes());
    assert_eq!(
        present,
        ["From", "To", "Subject", "Date", "Message-ID", "X-Mailer"]
    );
    let h = fields_to_sign(&present);
    let times = |f: &str| h.iter().filter(|x| x.as_str() == f).count();
    // Present and trusted: the instance(s), and one more.
    for f in ["From", "To", "Subject", "Date", "Message-ID"] {
        assert_eq!(times(f), 2, "{f}: {h:?}");
    }
    // Absent but trusted: named once, an absent instance, so that one
    // added later breaks the signature.
    for f in [
        "Reply-To",
        "Sender",
        "Cc",
        "Content-Type",
        "List-Unsubscribe",
    ] {
        assert_eq!(times(f), 1, "{f}: {h:?}");
    }
    // Not signed.
    assert_eq!(times("X-Mailer"), 0);
    // Folded lines are not fields; names match in any case.
    let head = b"subject: a\r\n b\r\nFROM: x@example.org\r\n\r\n";
    let h = fields_to_sign(&field_names(head));
    assert_eq!(h.iter().filter(|x| x.as_str() == "Subject").count(), 2);
    assert_eq!(h.iter().filter(|x| x.as_str() == "From").count(), 2);
}

#[test]
fn a_signature_goes_on_top_and_is_counted_in_the_size() {
    let mut signer = rsa_signer("relaxed");
    let mut p = prepared(MESSAGE.as_bytes());
    let (head, size) = (p.head.clone(), p.size);
    assert_eq!(
        signer.sign(&mut p).unwrap(),
        Signed::Added(Signature {
            domain: "example.org".into(),
            selector: "s1".into(),
            algorithm: "rsa-sha256",
            unaligned_from: None,
        })
    );
    assert!(p.head.starts_with(
        b"DKIM-Signature: v=1; a=rsa-sha256; s=s1; d=example.org; c=relaxed/relaxed;"
    ));
    assert!(p.head.ends_with(&head));
    assert_eq!(p.size, size + (p.head.len() - head.len()) as u64);
    assert_eq!(
        tag(&p.head, "h"),
        "Message-ID:Date:Subject:To:From:From:Sender:Reply-To:Subject:Date:Message-ID:To:Cc:\
         In-Reply-To:References:MIME-Version:Content-Type:Content-Transfer-Encoding:\
         List-Unsubscribe:List-Unsubscribe-Post",
        "the fields bottom up, then the absent instances of the trusted ones"
    );
    assert_eq!(tag(&p.head, "d"), "example.org");
}

#[test]
fn the_body_hash_is_that_of_the_body_as_sent_whatever_its_line_ends() {
    for c in ["relaxed", "simple"] {
        let mut signer = rsa_signer(c);
        let mut crlf = prepared(MESSAGE.as_bytes());
        let mut lf = prepared(MESSAGE.replace("\r\n", "\n").as_bytes());
        // Old Mac files: a CR alone ends a line, and goes as CRLF.
        let mut cr = prepared(MESSAGE.replace("\r\n", "\r").as_bytes());
        let mut no_last_line_end = prepared(MESSAGE.trim_end().as_bytes());
        for p in [&mut crlf, &mut lf, &mut cr, &mut no_last_line_end] {
            signer.sign(p).unwrap();
        }
        assert_eq!(tag(&crlf.head, "bh"), tag(&lf.head, "bh"), "{c}");
        assert_eq!(tag(&crlf.head, "bh"), tag(&cr.head, "bh"), "{c}");
        let bh = tag(&no_last_line_end.head, "bh");
        if c == "relaxed" {
            // Trailing white space and empty lines do not count.
            assert_eq!(tag(&crlf.head, "bh"), bh, "{c}");
        }
    }
    // RFC 6376 §3.4.3, §3.4.4: an empty body hashes as CRLF (simple) or
    // as nothing (relaxed).
    let empty = |c: &str| {
        let mut p = prepared(b"From: a@example.org\r\nSubject: x\r\n\r\n");
        rsa_signer(c).sign(&mut p).unwrap();
        tag(&p.head, "bh")
    };
    assert_eq!(
        empty("simple"),
        "frcCV1k9oG9oKj3dpUqdJg1PxRT2RSN/XKdLCPjaYaY="
    );
    assert_eq!(
        empty("relaxed"),
        "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="
    );
}

#[test]
fn a_body_read_from_its_file_hashes_as_the_same_body_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    // Over the 32 KiB kept in memory, in lines of 100 octets with white
    // space at their ends, the CR of line 651 the last octet of the first
    // 64 KiB read and its LF the first of the next.
    let mut body = format!("{}\r\n", "a".repeat(535));
    while body.len() < 300 * 1024 {
        body.push_str(&format!("{}  \r\n", "x".repeat(96)));
    }
    assert_eq!(&body.as_bytes()[65535..65537], b"\r\n");
    let message = format!("From: a@example.org\r\nSubject: big\r\n\r\n{body}");
    let path = dir.path().join("big.eml");
    std::fs::write(&path, &message).unwrap();
    let mut from_file = prepare(Input::File(path, None), "big.eml".into(), "client.test").unwrap();
    assert!(matches!(from_file.body, crate::message::Body::File { .. }));
    let mut in_memory = prepared(message.as_bytes());
    for c in ["relaxed", "simple"] {
        let mut signer = rsa_signer(c);
        let (mut a, mut b) = (clone(&from_file), clone(&in_memory));
        signer.sign(&mut a).unwrap();
        signer.sign(&mut b).unwrap();
        assert_eq!(tag(&a.head, "bh"), tag(&b.head, "bh"), "{c}");
    }
    // Signing reads the file again: one changed since its scan is refused.
    std::fs::write(dir.path().join("big.eml"), format!("{message}more\r\n")).unwrap();
    let r = rsa_signer("relaxed").sign(&mut from_file);
    let e = r.expect_err("refused");
    assert!(e.message.contains("changed"), "{}", e.message);
    signer_leaves_in_memory_alone(&mut in_memory);
}

fn signer_leaves_in_memory_alone(p: &mut Prepared) {
    let body = match &p.body {
        crate::message::Body::Memory(b) => b.clone(),
        crate::message::Body::File { .. } => unreachable!("in memory"),
    };
    rsa_signer("relaxed").sign(p).unwrap();
    let crate::message::Body::Memory(after) = &p.body else {
        unreachable!("in memory")
    };
    assert_eq!(
        after, &body,
        "signing adds a field; the body is not changed"
    );
}

fn clone(p: &Prepared) -> Prepared {
    Prepared {
        name: p.name.clone(),
        head: p.head.clone(),
        body: p.body.clone(),
        from: p.from.clone(),
        recipients: p.recipients.clone(),
        body_type: p.body_type,
        size: p.size,
        notes: p.notes.clone(),
        binary_cause: p.binary_cause.clone(),
    }
}

#[test]
fn a_message_already_signed_is_left_alone_unless_a_signature_is_to_be_added() {
    let signed = format!(
        "DKIM-Signature: v=1; a=rsa-sha256; d=example.org; s=x; h=From; bh=; b=\r\n{MESSAGE}"
    );
    let mut p = prepared(signed.as_bytes());
    let before = p.head.clone();
    assert_eq!(
        rsa_signer("relaxed").sign(&mut p).unwrap(),
        Signed::AlreadySigned
    );
    assert_eq!(p.head, before);
    let key = Key::from_pem(to_pem("RSA PRIVATE KEY", rsa_pkcs1()).as_bytes()).unwrap();
    let mut adding = Signer::new(
        key,
        &Options {
            add: true,
            ..options("relaxed")
        },
    )
    .unwrap();
    assert!(matches!(adding.sign(&mut p).unwrap(), Signed::Added(_)));
    assert!(p.head.ends_with(&before));
    assert_eq!(
        field_names(&p.head)
            .iter()
            .filter(|f| *f == "DKIM-Signature")
            .count(),
        2
    );
}

#[test]
fn the_domain_is_the_from_domain_unless_given_and_names_are_dns_names() {
    let mut p = prepared(b"From: a@B\xc3\xbcCHER.example\r\nSubject: x\r\n\r\nhi\r\n");
    rsa_signer("relaxed").sign(&mut p).unwrap();
    assert_eq!(tag(&p.head, "d"), "xn--bcher-kva.example");
    let key = || Key::from_pem(to_pem("RSA PRIVATE KEY", rsa_pkcs1()).as_bytes()).unwrap();
    let mut given = Signer::new(
        key(),
        &Options {
            domain: Some("Mail.Example.COM".into()),
            ..options("relaxed")
        },
    )
    .unwrap();
    let mut p = prepared(MESSAGE.as_bytes());
    given.sign(&mut p).unwrap();
    assert_eq!(tag(&p.head, "d"), "mail.example.com");
    for bad in ["a b", "[192.0.2.1]", "", "x..y"] {
        let o = Options {
            selector: bad.into(),
            ..options("relaxed")
        };
        assert!(Signer::new(key(), &o).is_err(), "selector {bad:?}");
    }
}

#[test]
fn a_message_without_from_is_refused_even_with_a_signing_domain() {
    let key = || Key::from_pem(to_pem("RSA PRIVATE KEY", rsa_pkcs1()).as_bytes()).unwrap();
    let no_from = b"Subject: x\r\nDate: Tue, 1 Dec 2026 02:00:00 +0000\r\n\r\nhi\r\n";
    for domain in [None, Some("example.org")] {
        let o = Options {
            domain: domain.map(str::to_owned),
            ..options("relaxed")
        };
        let mut p = prepared(no_from);
        let e = Signer::new(key(), &o).unwrap().sign(&mut p).err().unwrap();
        assert_eq!(e.code, crate::fail::EX_DATAERR);
        assert!(
            e.message.contains("add a From: header") && !e.message.contains("--dkim-domain"),
            "{}",
            e.message
        );
    }
}

#[test]
fn a_message_with_two_from_fields_is_refused() {
    let key = Key::from_pem(to_pem("RSA PRIVATE KEY", rsa_pkcs1()).as_bytes()).unwrap();
    // Readers show the first; the signing domain would come from one of
    // them: which is anyone's guess.
    let two = b"From: a@example.org\r\nFrom: evil@attacker.example\r\nSubject: x\r\n\r\nhi\r\n";
    let mut p = prepared(two);
    let e = Signer::new(key, &options("relaxed"))
        .unwrap()
        .sign(&mut p)
        .err()
        .unwrap();
    assert_eq!(e.code, crate::fail::EX_DATAERR);
    assert!(e.message.contains("2 From: header fields"), "{}", e.message);
}

#[test]
fn a_signing_domain_that_does_not_align_with_from_is_reported() {
    let key = || Key::from_pem(to_pem("RSA PRIVATE KEY", rsa_pkcs1()).as_bytes()).unwrap();
    let signed_by = |d: &str| {
        let o = Options {
            domain: Some(d.to_owned()),
            ..options("relaxed")
        };
        let mut p = prepared(MESSAGE.as_bytes());
        match Signer::new(key(), &o).unwrap().sign(&mut p).unwrap() {
            Signed::Added(sig) => sig.unaligned_from,
            Signed::AlreadySigned => panic!("not signed"),
        }
    };
    // MESSAGE is from example.org.
    assert_eq!(signed_by("example.org"), None);
    assert_eq!(signed_by("mail.example.org"), None);
    assert_eq!(signed_by("esp.example.net"), Some("example.org".to_owned()));
    assert!(aligned("example.org", "news.example.org"));
    assert!(aligned("a.example.org", "b.Example.ORG."));
    assert!(!aligned("example.org", "example.net"));
    assert!(!aligned("example.org.evil.example", "example.org"));
}

#[test]
fn a_txt_record_is_split_in_strings_of_255_octets() {
    let value = format!("v=DKIM1; k=rsa; p={}", "A".repeat(600));
    let line = zone_line("s1._domainkey.example.org", &value);
    assert!(line.starts_with("s1._domainkey.example.org. IN TXT ( \""));
    let strings: Vec<&str> = line
        .trim_end_matches(" )")
        .split('"')
        .skip(1)
        .step_by(2)
        .collect();
    assert_eq!(strings.len(), 3);
    assert!(strings.iter().all(|s| s.len() <= 255));
    assert_eq!(strings.concat(), value);
}

#[test]
fn the_command_line_s_key_replaces_the_account_s_as_a_whole() {
    let account = || AccountDkim {
        key: Some("account.pem".into()),
        selector: Some("acct".into()),
        domain: Some("account.example".into()),
        canonicalization: Some("simple".into()),
    };
    let o = options_for(&SendArgs::default(), account())
        .unwrap()
        .unwrap();
    assert_eq!(o.key, PathBuf::from("account.pem"));
    assert_eq!(o.selector, "acct");
    assert_eq!(o.canonicalization.to_string(), "simple/simple");
    let args = SendArgs {
        dkim_key: Some("mine.pem".into()),
        dkim_selector: Some("mine".into()),
        ..SendArgs::default()
    };
    let o = options_for(&args, account()).unwrap().unwrap();
    assert_eq!(
        (o.key, o.selector, o.domain),
        (PathBuf::from("mine.pem"), "mine".to_owned(), None)
    );
    // A selector needs its key, a key its selector.
    let args = SendArgs {
        dkim_selector: Some("mine".into()),
        ..SendArgs::default()
    };
    assert_eq!(
        options_for(&args, account()).err().unwrap().code,
        crate::fail::EX_USAGE
    );
    let args = SendArgs {
        dkim_key: Some("mine.pem".into()),
        ..SendArgs::default()
    };
    assert!(options_for(&args, AccountDkim::default()).is_err());
    let no_selector = AccountDkim {
        selector: None,
        ..account()
    };
    assert_eq!(
        options_for(&SendArgs::default(), no_selector)
            .err()
            .unwrap()
            .code,
        crate::fail::EX_CONFIG
    );
    // Nothing asked: no signing; --dkim-add alone is a mistake.
    assert!(
        options_for(&SendArgs::default(), AccountDkim::default())
            .unwrap()
            .is_none()
    );
    let args = SendArgs {
        dkim_add: true,
        ..SendArgs::default()
    };
    assert!(options_for(&args, AccountDkim::default()).is_err());
}

fn options_for(args: &SendArgs, account: AccountDkim) -> Result<Option<Options>, Failure> {
    super::options(args, account)
}
