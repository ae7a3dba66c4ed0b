//! A certificate that fails verification under Certified is still
//! described on the error (subject, issuer, names, validity, SHA-256
//! fingerprint, chain), as `msmtp --serverinfo` shows it: over STARTTLS
//! on `smtp_core::Error::Tls`, with implicit TLS on `smtp_tls::Error::Tls`.

use std::time::Duration;

use sha2::Digest;
use smtp_core::address::{Mailbox, ReversePath};
use smtp_core::delivery::{MemoryBody, PeerCertificate, TlsFailure, TlsFailureKind};
use smtp_core::{Envelope, Error, RecipientStatus, Timeouts, TlsPolicy};
use smtp_testkit::certs::{Identity, TestCa};
use smtp_testkit::script::{Script, ScriptedServer};
use smtp_tls::{Outgoing, Server, TcpTransport, Trust};

/// STARTTLS, then nothing: the client gives up in the handshake.
const HANDSHAKE_ONLY: &str = "S: 220 mail.test ESMTP\nC: EHLO *\nS: 250-mail.test\n\
    S: 250 STARTTLS\nC: STARTTLS\nS: 220 go ahead\nSTARTTLS\n";

/// The fingerprint as `openssl x509 -fingerprint -sha256` prints it.
fn fingerprint(identity: &Identity) -> String {
    sha2::Sha256::digest(identity.chain[0].as_ref())
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Certified, trusting only `ca`, checking the name mail.test.
fn certified(ca: &TestCa, port: u16) -> Server {
    let mut trust = Trust::new().without_web_pki_roots();
    trust.add_ca_pem(ca.cert_pem().as_bytes()).unwrap();
    Server::new("127.0.0.1", port)
        .with_policy(TlsPolicy::Certified)
        .with_trust(trust)
        .with_server_name("mail.test")
        .with_timeouts(Timeouts::uniform(Duration::from_secs(5)))
}

/// Sends over STARTTLS to a server showing `identity`; returns the
/// handshake's error text and the certificate it carries.
async fn starttls_failure(ca: &TestCa, identity: Identity) -> (String, Option<PeerCertificate>) {
    let server = ScriptedServer::start(Script::parse(HANDSHAKE_ONLY).unwrap(), Some(identity))
        .await
        .unwrap();
    let s = certified(ca, server.addr().port());
    let message = Outgoing {
        envelope: Envelope::new(
            ReversePath::parse("alice@example.org").unwrap(),
            vec![Mailbox::parse("bob@example.net").unwrap()],
        ),
        body: Box::new(MemoryBody::new("Subject: x\r\n\r\nbody\r\n")),
    };
    let d = tokio::time::timeout(Duration::from_secs(20), s.send(vec![message], &mut |_| {}))
        .await
        .expect("never hangs")
        .expect("connects");
    let _ = server.finish(Duration::from_secs(5)).await;
    assert_eq!(
        d.session.messages[0].recipients[0].status,
        RecipientStatus::Deferred
    );
    assert!(d.session.tls.is_none(), "no TLS session");
    match d.session.error {
        Some(Error::Tls(failure)) => {
            assert_eq!(failure.kind, TlsFailureKind::Certificate, "{failure:?}");
            (failure.detail, failure.certificate.map(|c| *c))
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_refused_certificate_is_still_described_on_the_error() {
    let ca = TestCa::new();
    let other_ca = TestCa::new();
    let self_signed = Identity::self_signed(&["mail.test"]);
    let expired = ca.expired_leaf(&["mail.test"]);
    let wrong_name = ca.leaf(&["other.test", "www.other.test"]);
    let same_name_issuer = other_ca.leaf(&["mail.test"]);
    for (case, identity, says, issuer, names) in [
        (
            "self-signed",
            self_signed,
            "not signed by a trusted authority",
            "CN=mail.test",
            &["mail.test"][..],
        ),
        (
            "expired",
            expired,
            "has expired",
            "CN=smtp-toolkit test CA",
            &["mail.test"][..],
        ),
        (
            "wrong name",
            wrong_name,
            "is not valid for mail.test",
            "CN=smtp-toolkit test CA",
            &["other.test", "www.other.test"][..],
        ),
        (
            // Another CA under the trusted one's name: its signature fails.
            "same-name issuer",
            same_name_issuer,
            "signature that does not verify",
            "CN=smtp-toolkit test CA",
            &["mail.test"][..],
        ),
    ] {
        let sha256 = fingerprint(&identity);
        let (detail, certificate) = starttls_failure(&ca, identity).await;
        assert!(detail.contains(says), "{case}: {detail}");
        let c = certificate.unwrap_or_else(|| panic!("{case}: no certificate on the error"));
        assert_eq!(c.sha256, sha256, "{case}");
        assert_eq!(c.names, names, "{case}");
        assert_eq!(c.issuer.as_deref(), Some(issuer), "{case}: {c:?}");
        assert_eq!(
            c.subject.as_deref(),
            Some(format!("CN={}", names[0]).as_str()),
            "{case}"
        );
        assert!(c.not_before.is_some() && c.not_after.is_some(), "{case}");
        if case == "expired" {
            assert!(
                c.not_after.as_deref().unwrap().contains("2020"),
                "{case}: {c:?}"
            );
        }
        assert!(c.chain.is_empty(), "{case}: the server sent the leaf alone");
    }
}

#[tokio::test]
async fn the_chain_sent_with_a_refused_certificate_is_named() {
    let ca = TestCa::new();
    let mut identity = TestCa::new().leaf(&["mail.test"]);
    // The leaf's own (untrusted) CA sent along, as servers send intermediates.
    identity.chain.push(TestCa::new().cert_der());
    let (_, certificate) = starttls_failure(&ca, identity).await;
    let c = certificate.unwrap();
    assert_eq!(c.chain, ["CN=smtp-toolkit test CA"]);
}

#[tokio::test]
async fn implicit_tls_carries_the_refused_certificate_too() {
    let ca = TestCa::new();
    let identity = ca.expired_leaf(&["mail.test"]);
    let sha256 = fingerprint(&identity);
    let server = ScriptedServer::start(Script::parse("STARTTLS\n").unwrap(), Some(identity))
        .await
        .unwrap();
    let result =
        TcpTransport::connect(&certified(&ca, server.addr().port()).with_implicit_tls(true)).await;
    let Err(smtp_tls::Error::Tls {
        failure:
            TlsFailure {
                kind,
                detail,
                certificate: Some(c),
                ..
            },
        ..
    }) = result
    else {
        panic!("{result:?}");
    };
    assert_eq!(kind, TlsFailureKind::Certificate);
    assert!(detail.contains("has expired"), "{detail}");
    assert_eq!(c.sha256, sha256);
    assert_eq!(c.names, ["mail.test"]);
    assert!(c.issuer.unwrap().contains("smtp-toolkit test CA"));
}
