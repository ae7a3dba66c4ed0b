//! The policy × server-behaviour matrix of DESIGN.md, over real sockets.

use std::time::Duration;

use smtp_core::address::{Mailbox, ReversePath};
use smtp_core::sasl::{Credentials, Secret};
use smtp_core::transport::MemoryBody;
use smtp_core::{Envelope, Error, PolicyError, RecipientStatus, Timeouts, TlsPolicy};
use smtp_testkit::capture::{CaptureConfig, CaptureServer};
use smtp_testkit::certs::{Identity, TestCa};
use smtp_tls::{ConnectError, Delivery, Outgoing, Submission};

const NAME: &str = "mail.test";

/// What the server presents.
#[derive(Clone, Copy, Debug)]
enum Cert {
    Valid,
    SelfSigned,
    WrongName,
    Expired,
    NoStartTls,
}

fn identity(ca: &TestCa, cert: Cert) -> Option<Identity> {
    match cert {
        Cert::Valid => Some(ca.leaf(&[NAME])),
        Cert::SelfSigned => Some(Identity::self_signed(&[NAME])),
        Cert::WrongName => Some(ca.leaf(&["other.test"])),
        Cert::Expired => Some(ca.expired_leaf(&[NAME])),
        Cert::NoStartTls => None,
    }
}

async fn server(ca: &TestCa, cert: Cert, implicit: bool, auth: bool) -> CaptureServer {
    let mut config = CaptureConfig::default();
    config.tls = identity(ca, cert);
    config.starttls = config.tls.is_some() && !implicit;
    config.implicit_tls = implicit;
    if auth {
        config.auth = Some(("user".into(), "secret".into()));
    }
    CaptureServer::start(config).await.expect("capture server")
}

fn submission(ca: &TestCa, server: &CaptureServer, policy: TlsPolicy) -> Submission {
    let mut s = Submission::new("127.0.0.1", server.addr().port());
    s.implicit_tls = false;
    s.tls.policy = policy;
    s.tls.web_pki_roots = false;
    s.tls.add_ca_pem(ca.cert_pem().as_bytes()).unwrap();
    s.tls.server_name = Some(NAME.to_owned());
    s.timeouts = Timeouts::uniform(Duration::from_secs(10));
    s
}

fn message() -> Outgoing {
    Outgoing {
        envelope: Envelope::new(
            ReversePath::parse("alice@example.org").unwrap(),
            vec![Mailbox::parse("bob@example.net").unwrap()],
        ),
        body: Box::new(MemoryBody::new(
            "Subject: matrix\r\n\r\n.leading dot\r\nbody\r\n",
        )),
    }
}

async fn send(s: &Submission) -> Result<Delivery, ConnectError> {
    s.send(vec![message()], &mut |_| {}).await
}

fn accepted(d: &Delivery) -> bool {
    d.session.messages.len() == 1 && d.session.messages[0].all_accepted()
}

#[tokio::test]
async fn policy_matrix() {
    let ca = TestCa::new();
    for cert in [
        Cert::Valid,
        Cert::SelfSigned,
        Cert::WrongName,
        Cert::Expired,
        Cert::NoStartTls,
    ] {
        for policy in [
            TlsPolicy::None,
            TlsPolicy::Optional,
            TlsPolicy::Required,
            TlsPolicy::Certified,
        ] {
            let srv = server(&ca, cert, false, false).await;
            let d = send(&submission(&ca, &srv, policy))
                .await
                .expect("connects");
            let case = format!("{cert:?} × {policy}");
            let expect_delivery = match (cert, policy) {
                (_, TlsPolicy::None | TlsPolicy::Optional) => true,
                (Cert::NoStartTls, _) => false,
                (_, TlsPolicy::Required) => true,
                (Cert::Valid, TlsPolicy::Certified) => true,
                (_, TlsPolicy::Certified) => false,
            };
            assert_eq!(
                accepted(&d),
                expect_delivery,
                "{case}: {:?}",
                d.session.error
            );
            let received = srv.messages();
            if expect_delivery {
                assert_eq!(received.len(), 1, "{case}");
                assert_eq!(
                    received[0].data, b"Subject: matrix\r\n\r\n.leading dot\r\nbody\r\n",
                    "{case}"
                );
                let encrypted = policy != TlsPolicy::None && !matches!(cert, Cert::NoStartTls);
                assert_eq!(received[0].tls, encrypted, "{case}");
                assert_eq!(d.session.tls.is_some(), encrypted, "{case}");
                if let Some(tls) = &d.session.tls {
                    assert_eq!(tls.verified, matches!(cert, Cert::Valid), "{case}: {tls:?}");
                    assert!(tls.version.starts_with("TLSv1."), "{case}");
                    assert!(tls.peer_subject.is_some(), "{case}");
                }
            } else {
                assert!(received.is_empty(), "{case}");
                assert_eq!(
                    d.session.messages[0].recipients[0].status,
                    RecipientStatus::Deferred,
                    "{case}"
                );
                // Refused before MAIL: the server saw no MAIL at all.
                assert!(
                    srv.sessions()
                        .iter()
                        .all(|s| !s.transcript.iter().any(|l| l.contains("MAIL FROM"))),
                    "{case}"
                );
                let error = d.session.error.clone().expect("an error").to_string();
                let reason = match cert {
                    Cert::NoStartTls => "does not offer STARTTLS",
                    Cert::SelfSigned => "not signed by a trusted authority",
                    Cert::WrongName => "not valid for mail.test",
                    Cert::Expired => "expired",
                    Cert::Valid => unreachable!(),
                };
                assert!(error.contains(reason), "{case}: {error}");
            }
        }
    }
}

#[tokio::test]
async fn implicit_tls() {
    let ca = TestCa::new();
    let srv = server(&ca, Cert::Valid, true, false).await;
    let mut s = submission(&ca, &srv, TlsPolicy::Certified);
    s.implicit_tls = true;
    let d = send(&s).await.unwrap();
    assert!(accepted(&d), "{:?}", d.session.error);
    assert!(d.session.tls.as_ref().unwrap().verified);
    assert!(srv.messages()[0].tls);

    s.tls.policy = TlsPolicy::None;
    let err = send(&s).await.unwrap_err();
    assert!(matches!(
        err,
        ConnectError::ImplicitTlsWithoutEncryption { .. }
    ));
    assert!(err.to_string().contains("needs encryption"));
}

#[tokio::test]
async fn implicit_tls_against_a_plaintext_port() {
    let ca = TestCa::new();
    let srv = server(&ca, Cert::Valid, false, false).await;
    let mut s = submission(&ca, &srv, TlsPolicy::Required);
    s.implicit_tls = true;
    s.timeouts = Timeouts::uniform(Duration::from_secs(2));
    let err = send(&s).await.unwrap_err();
    assert!(matches!(err, ConnectError::Tls { .. }), "{err}");
}

#[tokio::test]
async fn auth_over_tls() {
    let ca = TestCa::new();
    for (password, ok) in [("secret", true), ("wrong", false)] {
        let srv = server(&ca, Cert::Valid, false, true).await;
        let mut s = submission(&ca, &srv, TlsPolicy::Certified);
        s.credentials = Some(Credentials::Password {
            username: "user".into(),
            password: Secret::new(password),
        });
        let d = send(&s).await.unwrap();
        assert_eq!(accepted(&d), ok, "{:?}", d.session.error);
        let sessions = srv.sessions();
        assert!(sessions.iter().all(|s| !s.credentials_in_plaintext));
        if ok {
            assert_eq!(srv.messages()[0].auth_user.as_deref(), Some("user"));
        } else {
            assert!(matches!(
                d.session.error,
                Some(Error::AuthenticationFailed { .. })
            ));
            assert!(srv.messages().is_empty());
            assert!(
                sessions
                    .iter()
                    .all(|s| !s.transcript.iter().any(|l| l.contains("MAIL FROM")))
            );
        }
    }
}

#[tokio::test]
async fn optional_without_tls_never_sends_password() {
    let ca = TestCa::new();
    let srv = server(&ca, Cert::NoStartTls, false, true).await;
    let mut s = submission(&ca, &srv, TlsPolicy::Optional);
    s.credentials = Some(Credentials::Password {
        username: "user".into(),
        password: Secret::new("secret"),
    });
    let d = send(&s).await.unwrap();
    assert!(!accepted(&d));
    assert!(srv.sessions().iter().all(|s| !s.credentials_in_plaintext));
    assert!(
        matches!(d.session.error, Some(Error::Sasl(_))),
        "{:?}",
        d.session.error
    );
}

#[tokio::test]
async fn required_fails_without_starttls() {
    let ca = TestCa::new();
    let srv = server(&ca, Cert::NoStartTls, false, false).await;
    let d = send(&submission(&ca, &srv, TlsPolicy::Required))
        .await
        .unwrap();
    assert!(matches!(
        d.session.error,
        Some(Error::Policy(PolicyError::StartTlsNotOffered {
            policy: TlsPolicy::Required
        }))
    ));
}

#[tokio::test]
async fn nothing_listening() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let s = Submission::new("127.0.0.1", port);
    let err = send(&s).await.unwrap_err();
    assert!(matches!(err, ConnectError::Unreachable { .. }), "{err}");
}
