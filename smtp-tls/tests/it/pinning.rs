//! A self-signed certificate made the usual way (`openssl req -x509`, which
//! marks it a CA) and given as the trust anchor is a pinned certificate:
//! Certified accepts exactly that certificate; webpki alone refused it as
//! "CaUsedAsEndEntity". Other certificate errors read in plain words.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use smtp_core::address::{Mailbox, ReversePath};
use smtp_core::delivery::MemoryBody;
use smtp_core::{Envelope, Error, RecipientStatus, Timeouts, TlsPolicy};
use smtp_testkit::certs::{Identity, TestCa};
use smtp_testkit::script::{Script, ScriptedServer};
use smtp_tls::{Delivery, Outgoing, Server};

const STARTTLS_SESSION: &str = "S: 220 mail.test ESMTP\nC: EHLO *\nS: 250-mail.test\n\
    S: 250 STARTTLS\nC: STARTTLS\nS: 220 go ahead\nSTARTTLS\nC: EHLO *\nS: 250 mail.test\n\
    C: MAIL FROM:<alice@example.org>\nS: 250 ok\nC: RCPT TO:<bob@example.net>\nS: 250 ok\n\
    C: DATA\nS: 354 go\nC: Subject: x\nC:\nC: body\nC: .\nS: 250 queued\nC: QUIT\nS: 221 bye\n";

/// STARTTLS then nothing: the client should give up in the handshake.
const HANDSHAKE_ONLY: &str = "S: 220 mail.test ESMTP\nC: EHLO *\nS: 250-mail.test\n\
    S: 250 STARTTLS\nC: STARTTLS\nS: 220 go ahead\nSTARTTLS\n";

/// `openssl req -x509` as a server operator would run it: the certificate
/// and key as PEM.
fn openssl_self_signed(dir: &Path, subject_alt_name: Option<&str>) -> (Vec<u8>, Vec<u8>) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let mut c = Command::new("openssl");
    c.args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "30"])
        .args(["-subj", "/CN=mail.test", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert);
    if let Some(san) = subject_alt_name {
        c.args(["-addext", &format!("subjectAltName={san}")]);
    }
    let out = c
        .output()
        .expect("openssl runs (Debian's openssl package; .ci/run installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (std::fs::read(cert).unwrap(), std::fs::read(key).unwrap())
}

fn temp_dir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("smtp-pinning-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn send(script: &str, identity: Identity, trust: &[u8]) -> Delivery {
    let server = ScriptedServer::start(Script::parse(script).unwrap(), Some(identity))
        .await
        .unwrap();
    let mut s = Server::new("127.0.0.1", server.addr().port());
    s.policy = TlsPolicy::Certified;
    s.trust.web_pki_roots = false;
    s.trust.add_ca_pem(trust).unwrap();
    s.server_name = Some("mail.test".into());
    s.timeouts = Timeouts::uniform(Duration::from_secs(5));
    let message = Outgoing {
        envelope: Envelope::new(
            ReversePath::parse("alice@example.org").unwrap(),
            vec![Mailbox::parse("bob@example.net").unwrap()],
        ),
        body: Box::new(MemoryBody::new("Subject: x\r\n\r\nbody\r\n")),
    };
    let delivery =
        tokio::time::timeout(Duration::from_secs(20), s.send(vec![message], &mut |_| {}))
            .await
            .expect("never hangs")
            .expect("connects");
    let _ = server.finish(Duration::from_secs(5)).await;
    delivery
}

#[tokio::test]
async fn an_openssl_self_signed_certificate_given_as_ca_file_is_pinned() {
    for (tag, san) in [("san", Some("DNS:mail.test")), ("cn-only", None)] {
        let (cert, key) = openssl_self_signed(&temp_dir(tag), san);
        let identity = Identity::from_pem(&cert, &key).unwrap();
        let d = send(STARTTLS_SESSION, identity, &cert).await;
        let r = &d.session.messages[0].recipients[0];
        assert_eq!(r.status, RecipientStatus::Accepted, "{tag}: {r}");
        let tls = d.session.tls.as_ref().unwrap();
        assert!(tls.verified, "{tag}: {tls:?}");
    }
}

#[tokio::test]
async fn a_ca_certificate_that_is_not_the_pin_is_refused_in_plain_words() {
    // The server shows its own self-signed CA-flagged certificate; the
    // client trusts another one.
    let (cert, key) = openssl_self_signed(&temp_dir("other"), Some("DNS:mail.test"));
    let (trusted, _) = openssl_self_signed(&temp_dir("trusted"), Some("DNS:mail.test"));
    let identity = Identity::from_pem(&cert, &key).unwrap();
    let d = send(HANDSHAKE_ONLY, identity, &trusted).await;
    let Some(Error::Tls(smtp_core::delivery::TlsFailure { detail, .. })) = &d.session.error else {
        panic!("{:?}", d.session.error);
    };
    assert!(!detail.contains("Other("), "{detail}");
    assert!(detail.contains("mail.test"), "{detail}");
    assert!(
        detail.contains("self-signed") && detail.contains(smtp_tls::PINNING_ADVICE),
        "{detail}"
    );
    assert_eq!(
        d.session.messages[0].recipients[0].status,
        RecipientStatus::Deferred
    );
}

#[tokio::test]
async fn a_leaf_signed_by_the_pinned_ca_still_verifies_by_its_chain() {
    // Pinning adds to chain verification; it does not replace it.
    let ca = TestCa::new();
    let d = send(
        STARTTLS_SESSION,
        ca.leaf(&["mail.test"]),
        ca.cert_pem().as_bytes(),
    )
    .await;
    assert_eq!(
        d.session.messages[0].recipients[0].status,
        RecipientStatus::Accepted
    );
    // And the name is still checked for a chain-verified leaf.
    let d = send(
        HANDSHAKE_ONLY,
        ca.leaf(&["other.test"]),
        ca.cert_pem().as_bytes(),
    )
    .await;
    let Some(Error::Tls(smtp_core::delivery::TlsFailure { detail, .. })) = &d.session.error else {
        panic!("{:?}", d.session.error);
    };
    assert!(
        detail.contains("the certificate for other.test is not valid for mail.test"),
        "{detail}"
    );
}
