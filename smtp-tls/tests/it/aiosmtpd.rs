//! The encryption-policy matrix of DESIGN.md over real TCP and TLS, against
//! real server software: Debian's python3-aiosmtpd (installed by `.ci/run`),
//! with certificates made on the fly (valid, self-signed, wrong name,
//! expired). For every refused cell: no MAIL and no credentials reached it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use smtp_core::address::{Mailbox, ReversePath};
use smtp_core::sasl::{AuthChoice, Credentials, Mechanism, Secret};
use smtp_core::transport::MemoryBody;
use smtp_core::{Envelope, Error, Event, PolicyError, RecipientStatus, Timeouts, TlsPolicy};
use smtp_tls::{ConnectError, Delivery, Outgoing, Submission};

use crate::certs::{Ca, Leaf, self_signed};
use crate::interop::free_port;

const PYTHON: &str = "/usr/bin/python3";
const NAME: &str = "mail.test";

fn skip() -> bool {
    if std::env::var_os("SMTP_SKIP_INTEROP").is_some() {
        return true;
    }
    let ok = Command::new(PYTHON)
        .args(["-c", "import aiosmtpd"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "Debian's python3-aiosmtpd is missing: .ci/run installs it; or set SMTP_SKIP_INTEROP=1"
    );
    false
}

/// A running aiosmtpd, stopped on drop.
struct Server {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cert {
    Valid,
    SelfSigned,
    WrongName,
    Expired,
    NoStartTls,
}

fn start(leaf: Option<&Leaf>, extra: &[&str]) -> Server {
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("aiosmtpd-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/aiosmtpd_server.py");
    let mut cmd = Command::new(PYTHON);
    cmd.arg(script).arg(port.to_string()).arg(&dir);
    if let Some(leaf) = leaf {
        std::fs::write(dir.join("cert.pem"), &leaf.cert_pem).unwrap();
        std::fs::write(dir.join("key.pem"), &leaf.key_pem).unwrap();
        cmd.arg("--cert")
            .arg(dir.join("cert.pem"))
            .arg("--key")
            .arg(dir.join("key.pem"));
    }
    cmd.args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().expect("start aiosmtpd");
    let stdout = child.stdout.take().unwrap();
    // A server that never says it is ready fails the test in seconds: the
    // line is read on a thread, and waited for with a deadline.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let Ok(line) = rx.recv_timeout(Duration::from_secs(20)) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("aiosmtpd did not say it was ready within 20 s");
    };
    assert_eq!(line.trim(), "ready", "aiosmtpd did not start");
    Server { child, port, dir }
}

fn leaf_for(ca: &Ca, cert: Cert) -> Option<Leaf> {
    match cert {
        Cert::Valid => Some(ca.leaf(NAME, false)),
        Cert::SelfSigned => Some(self_signed(NAME)),
        Cert::WrongName => Some(ca.leaf("other.test", false)),
        Cert::Expired => Some(ca.leaf(NAME, true)),
        Cert::NoStartTls => None,
    }
}

impl Server {
    fn messages(&self) -> Vec<(Vec<u8>, serde_like::Meta)> {
        let mut out = Vec::new();
        for n in 1.. {
            let Ok(data) = std::fs::read(self.dir.join(format!("{n}.eml"))) else {
                break;
            };
            let meta =
                std::fs::read_to_string(self.dir.join(format!("{n}.json"))).unwrap_or_default();
            out.push((data, serde_like::Meta::parse(&meta)));
        }
        out
    }

    /// Lines "<peer> <tls> MAIL …" / "… AUTH-CREDENTIALS".
    fn log(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.join("sessions.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

/// Just enough JSON reading for the server's metadata.
mod serde_like {
    #[derive(Debug, Default)]
    pub(crate) struct Meta {
        pub(crate) tls: bool,
        pub(crate) auth_user: Option<String>,
    }

    impl Meta {
        pub(crate) fn parse(s: &str) -> Self {
            let tls = s.contains("\"tls\": true");
            let auth_user = s
                .split("\"auth_user\": \"")
                .nth(1)
                .and_then(|r| r.split('"').next())
                .map(str::to_owned);
            Self { tls, auth_user }
        }
    }
}

fn submission(ca: &Ca, port: u16, policy: TlsPolicy) -> Submission {
    let mut s = Submission::new("127.0.0.1", port);
    s.implicit_tls = false;
    s.tls.policy = policy;
    s.tls.web_pki_roots = false;
    s.tls.add_ca_pem(ca.pem.as_bytes()).unwrap();
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

#[tokio::test]
async fn policy_matrix() {
    if skip() {
        return;
    }
    let ca = Ca::new();
    for cert in [
        Cert::Valid,
        Cert::SelfSigned,
        Cert::WrongName,
        Cert::Expired,
        Cert::NoStartTls,
    ] {
        let server = start(leaf_for(&ca, cert).as_ref(), &[]);
        for policy in [
            TlsPolicy::None,
            TlsPolicy::Optional,
            TlsPolicy::Required,
            TlsPolicy::Certified,
        ] {
            let before = server.messages().len();
            let mails_before = server.log().len();
            let d = send(&submission(&ca, server.port, policy))
                .await
                .expect("connects");
            let case = format!("{cert:?} × {policy}");
            let delivered = match (cert, policy) {
                (_, TlsPolicy::None | TlsPolicy::Optional) => true,
                (Cert::NoStartTls, _) => false,
                (_, TlsPolicy::Required) => true,
                (Cert::Valid, TlsPolicy::Certified) => true,
                (_, TlsPolicy::Certified) => false,
            };
            let all = d.session.messages.first().is_some_and(|m| m.all_accepted());
            assert_eq!(all, delivered, "{case}: {:?}", d.session.error);
            let received = server.messages();
            if delivered {
                assert_eq!(received.len(), before + 1, "{case}");
                let (data, meta) = received.last().unwrap();
                assert_eq!(
                    data, b"Subject: matrix\r\n\r\n.leading dot\r\nbody\r\n",
                    "{case}"
                );
                let encrypted = policy != TlsPolicy::None && cert != Cert::NoStartTls;
                assert_eq!(meta.tls, encrypted, "{case}");
                assert_eq!(d.session.tls.is_some(), encrypted, "{case}");
                if let Some(tls) = &d.session.tls {
                    assert_eq!(tls.verified, cert == Cert::Valid, "{case}: {tls:?}");
                    assert!(tls.version.starts_with("TLSv1."), "{case}");
                    assert!(
                        tls.peer_subject
                            .as_deref()
                            .is_some_and(|s| s.contains("test")),
                        "{case}: {tls:?}"
                    );
                }
            } else {
                assert_eq!(received.len(), before, "{case}");
                assert_eq!(
                    server.log().len(),
                    mails_before,
                    "{case}: a MAIL reached the server"
                );
                assert_eq!(
                    d.session.messages[0].recipients[0].status,
                    RecipientStatus::Deferred,
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
    if skip() {
        return;
    }
    let ca = Ca::new();
    let server = start(Some(&ca.leaf(NAME, false)), &["--implicit"]);
    let mut s = submission(&ca, server.port, TlsPolicy::Certified);
    s.implicit_tls = true;
    let d = send(&s).await.unwrap();
    assert!(
        d.session.messages[0].all_accepted(),
        "{:?}",
        d.session.error
    );
    assert!(d.session.tls.as_ref().unwrap().verified);
    assert!(server.messages()[0].1.tls);

    s.tls.policy = TlsPolicy::None;
    let err = send(&s).await.unwrap_err();
    assert!(err.to_string().contains("needs encryption"), "{err}");
}

#[tokio::test]
async fn auth_over_starttls() {
    if skip() {
        return;
    }
    let ca = Ca::new();
    let server = start(
        Some(&ca.leaf(NAME, false)),
        &["--auth", "user:secret", "--auth-require-tls"],
    );
    for (password, ok) in [("secret", true), ("wrong", false)] {
        let before = server.messages().len();
        let mut s = submission(&ca, server.port, TlsPolicy::Certified);
        s.credentials = Some(Credentials::Password {
            username: "user".into(),
            password: Secret::new(password),
        });
        let d = send(&s).await.unwrap();
        assert_eq!(
            d.session.messages[0].all_accepted(),
            ok,
            "{:?}",
            d.session.error
        );
        if ok {
            assert_eq!(
                server.messages().last().unwrap().1.auth_user.as_deref(),
                Some("user")
            );
        } else {
            assert!(
                matches!(d.session.error, Some(Error::AuthenticationFailed { .. })),
                "{:?}",
                d.session.error
            );
            assert_eq!(
                server.messages().len(),
                before,
                "no message after a refused login"
            );
        }
    }
    // Credentials only ever crossed under TLS.
    assert!(
        server
            .log()
            .iter()
            .filter(|l| l.ends_with("AUTH-CREDENTIALS"))
            .all(|l| l.contains(" 1 AUTH"))
    );
}

/// Sends one message and notes which SASL mechanism authenticated, if any.
async fn send_noting_mechanism(s: &Submission) -> (Delivery, Option<Mechanism>) {
    let mut used = None;
    let d = s
        .send(vec![message()], &mut |e| {
            if let Event::Authenticated(m) = e {
                used = Some(*m);
            }
        })
        .await
        .unwrap();
    (d, used)
}

/// Every SASL mechanism, right and wrong secret, against a server whose
/// CRAM-MD5, SCRAM-SHA-256 and XOAUTH2 are written from the RFCs in Python
/// (independent of the client's code), over STARTTLS.
#[tokio::test]
async fn every_mechanism_against_an_independent_server() {
    if skip() {
        return;
    }
    let ca = Ca::new();
    let server = start(
        Some(&ca.leaf(NAME, false)),
        &[
            "--auth",
            "user:secret",
            "--auth-require-tls",
            "--extra-mechs",
        ],
    );
    let mechanisms = [
        Mechanism::Plain,
        Mechanism::Login,
        Mechanism::CramMd5,
        Mechanism::ScramSha256,
        Mechanism::XOAuth2,
    ];
    for mechanism in mechanisms {
        for (secret, ok) in [("secret", true), ("wrong", false)] {
            let mut s = submission(&ca, server.port, TlsPolicy::Certified);
            s.credentials = Some(if mechanism == Mechanism::XOAuth2 {
                Credentials::OAuth2 {
                    username: "user".into(),
                    token: Secret::new(secret),
                }
            } else {
                Credentials::Password {
                    username: "user".into(),
                    password: Secret::new(secret),
                }
            });
            s.auth = AuthChoice::Explicit(mechanism);
            let (d, used) = send_noting_mechanism(&s).await;
            let what = format!("{mechanism:?} with {secret}: {:?}", d.session.error);
            assert_eq!(d.session.messages[0].all_accepted(), ok, "{what}");
            if ok {
                assert_eq!(used, Some(mechanism), "{what}");
                assert_eq!(
                    server.messages().last().unwrap().1.auth_user.as_deref(),
                    Some("user"),
                    "{what}"
                );
            } else {
                assert!(
                    matches!(d.session.error, Some(Error::AuthenticationFailed { .. })),
                    "{what}"
                );
            }
        }
    }
    // Left to choose, the client takes the strongest offered.
    let mut s = submission(&ca, server.port, TlsPolicy::Certified);
    s.credentials = Some(Credentials::Password {
        username: "user".into(),
        password: Secret::new("secret"),
    });
    let (d, used) = send_noting_mechanism(&s).await;
    assert!(
        d.session.messages[0].all_accepted(),
        "{:?}",
        d.session.error
    );
    assert_eq!(used, Some(Mechanism::ScramSha256));
}

#[tokio::test]
async fn stripped_starttls_never_leaks_the_password() {
    if skip() {
        return;
    }
    let ca = Ca::new();
    // Offers AUTH in plaintext and no STARTTLS: what a stripping attacker shows.
    let server = start(None, &["--auth", "user:secret"]);
    let mut s = submission(&ca, server.port, TlsPolicy::Optional);
    s.credentials = Some(Credentials::Password {
        username: "user".into(),
        password: Secret::new("secret"),
    });
    let d = send(&s).await.unwrap();
    assert!(!d.session.messages[0].all_accepted());
    assert!(
        matches!(d.session.error, Some(Error::Sasl(_))),
        "{:?}",
        d.session.error
    );
    assert!(
        server.log().is_empty(),
        "no credentials, no MAIL: {:?}",
        server.log()
    );

    let s = submission(&ca, server.port, TlsPolicy::Required);
    let d = send(&s).await.unwrap();
    assert!(matches!(
        d.session.error,
        Some(Error::Policy(PolicyError::StartTlsNotOffered {
            policy: TlsPolicy::Required
        }))
    ));
}
