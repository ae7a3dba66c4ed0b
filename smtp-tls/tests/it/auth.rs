//! SMTP AUTH over real TCP against the testkit's scripted server: what
//! crosses the wire for each mechanism, and how a misbehaving or impostor
//! server is refused before any mail is sent.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use smtp_core::sasl::{AuthChoice, Credentials, Mechanism, Secret};
use smtp_core::transport::{BodySource, MemoryBody, SessionReport, drive};
use smtp_core::{Client, Config, Error, ProtocolError, Timeouts, TlsPolicy};
use smtp_testkit::certs::TestCa;
use smtp_testkit::sansio::{config, envelope};
use smtp_testkit::script::{Script, ScriptOutcome, ScriptedServer};
use smtp_tls::{TcpTransport, TlsOptions};

/// MAIL to QUIT for one message, after a successful AUTH.
const SESSION_TAIL: &str = "
C: MAIL FROM:<alice@example.org>
S: 250 ok
C: RCPT TO:<bob@example.net>
S: 250 ok
C: DATA
S: 354 go
C: Subject: x
C:
C: body
C: .
S: 250 queued
C: QUIT
S: 221 bye
";

fn password(secret: &str) -> Credentials {
    Credentials::Password {
        username: "user".into(),
        password: Secret::new(secret),
    }
}

/// A client configuration for `policy` with these credentials and a fixed
/// nonce, so that SCRAM exchanges can be scripted.
fn auth_config(policy: TlsPolicy, credentials: Credentials, choice: AuthChoice) -> Config {
    let mut config = config()
        .with_tls(policy)
        .with_credentials(credentials, choice, vec![7; 24])
        .with_timeouts(Timeouts::uniform(Duration::from_secs(5)));
    config.transcript = true;
    config
}

/// Runs one message through a client made from `config` against `script`
/// (served with a certificate for `mail.test` from `ca`, when given).
async fn run(script: &str, config: Config, ca: Option<&TestCa>) -> (SessionReport, ScriptOutcome) {
    let identity = ca.map(|ca| ca.leaf(&["mail.test"]));
    let server = ScriptedServer::start(Script::parse(script).unwrap(), identity)
        .await
        .unwrap();
    let mut options = TlsOptions::new(config.tls);
    if let Some(ca) = ca {
        options.web_pki_roots = false;
        options.add_ca_pem(ca.cert_pem().as_bytes()).unwrap();
        options.server_name = Some("mail.test".into());
    }
    let timeouts = config.timeouts;
    let mut transport = TcpTransport::connect(
        "127.0.0.1",
        server.addr().port(),
        false,
        &options,
        timeouts.connect,
        timeouts.tls_handshake,
    )
    .await
    .expect("connects");
    let now = smtp_core::transport::Transport::now(&transport);
    let mut client = Client::new(config, now);
    client
        .send(now, envelope("alice@example.org", &["bob@example.net"]))
        .unwrap();
    client.quit(now);
    let mut bodies: Vec<Box<dyn BodySource>> =
        vec![Box::new(MemoryBody::new("Subject: x\r\n\r\nbody\r\n"))];
    let report = tokio::time::timeout(
        Duration::from_secs(20),
        drive(&mut client, &mut transport, &mut bodies, &mut |_| {}),
    )
    .await
    .expect("never hangs");
    // Hang up before waiting for the script, which may wait for more lines.
    drop(transport);
    let outcome = server.finish(Duration::from_secs(5)).await;
    (report, outcome)
}

/// True when the client sent a MAIL command (the script's transcript).
fn mail_sent(outcome: &ScriptOutcome) -> bool {
    outcome.transcript.iter().any(|l| l.starts_with("C: MAIL"))
        || String::from_utf8_lossy(&outcome.received_after_end).contains("MAIL")
}

#[tokio::test]
async fn a_long_xoauth2_token_goes_after_an_empty_334_not_on_the_auth_line() {
    let token = format!("ya29.{}", "a".repeat(3000));
    let credentials = Credentials::OAuth2 {
        username: "alice@example.org".into(),
        token: Secret::new(token.clone()),
    };
    let response = STANDARD.encode(format!(
        "user=alice@example.org\x01auth=Bearer {token}\x01\x01"
    ));
    let script = format!(
        "S: 220 mail.test\nC: EHLO *\nS: 250-mail.test\nS: 250 AUTH XOAUTH2\n\
         C: AUTH XOAUTH2\nS: 334 \nC: {response}\nS: 235 ok\n{SESSION_TAIL}"
    );
    let config = auth_config(
        TlsPolicy::None,
        credentials,
        AuthChoice::Explicit(Mechanism::XOAuth2),
    );
    let (report, outcome) = run(&script, config, None).await;
    outcome.assert_ok();
    assert_eq!(report.error, None);
    assert!(report.messages[0].all_accepted());
    assert!(mail_sent(&outcome));
    // The token never shows in the transcript.
    assert!(report.transcript.iter().all(|l| !l.text.contains("ya29")));
}

#[tokio::test]
async fn a_short_plain_response_still_goes_on_the_auth_line() {
    let script = format!(
        "S: 220 mail.test\nC: EHLO *\nS: 250-mail.test\nS: 250 AUTH PLAIN\n\
         C: AUTH PLAIN AHVzZXIAcGFzcw==\nS: 235 ok\n{SESSION_TAIL}"
    );
    let config = auth_config(
        TlsPolicy::None,
        password("pass"),
        AuthChoice::Explicit(Mechanism::Plain),
    );
    let (report, outcome) = run(&script, config, None).await;
    outcome.assert_ok();
    assert_eq!(report.error, None);
}

/// A CRAM-MD5 session whose challenge is `challenge_len` octets of base64.
fn cram_md5_with_challenge(challenge_len: usize) -> String {
    // 9 bytes encode to 12 base64 characters without padding.
    let unit = STANDARD.encode(b"<12@mail>");
    let challenge: String = unit.chars().cycle().take(challenge_len).collect();
    format!(
        "S: 220 mail.test\nC: EHLO *\nS: 250-mail.test\nS: 250 AUTH CRAM-MD5\n\
         C: AUTH CRAM-MD5\nS: 334 {challenge}\nC: *\nS: 235 ok\n{SESSION_TAIL}"
    )
}

#[tokio::test]
async fn a_challenge_of_the_12288_octets_rfc_4954_allows_gets_through() {
    let config = auth_config(TlsPolicy::None, password("pass"), AuthChoice::Auto);
    let (report, outcome) = run(&cram_md5_with_challenge(12_288), config, None).await;
    assert_eq!(report.error, None);
    outcome.assert_ok();
    assert_eq!(report.error, None);
    assert!(report.messages[0].all_accepted());
}

#[tokio::test]
async fn a_longer_challenge_is_refused_in_rfc_4954_terms() {
    let config = auth_config(TlsPolicy::None, password("pass"), AuthChoice::Auto);
    let (report, outcome) = run(&cram_md5_with_challenge(12_300), config, None).await;
    assert_eq!(
        report.error,
        Some(Error::Protocol(ProtocolError::ChallengeTooLong {
            limit: 12_288
        }))
    );
    let text = report.error.unwrap().to_string();
    assert!(text.contains("RFC 4954"), "{text}");
    assert!(
        !text.contains("--"),
        "no CLI flags in library errors: {text}"
    );
    assert!(!mail_sent(&outcome));
}
