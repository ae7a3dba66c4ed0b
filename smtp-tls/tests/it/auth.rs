//! SMTP AUTH over real TCP against the testkit's scripted server: what
//! crosses the wire for each mechanism, and how a misbehaving or impostor
//! server is refused before any mail is sent.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use smtp_core::delivery::{BodySource, MemoryBody, SessionReport, drive};
use smtp_core::sasl::{Answer, Authenticator, SaslError};
use smtp_core::sasl::{AuthChoice, Credentials, Mechanism, Secret};
use smtp_core::{Client, Config, Error, Event, Phase, ProtocolError, Timeouts, TlsPolicy, Warning};
use smtp_testkit::certs::TestCa;
use smtp_testkit::sansio::{config, envelope};
use smtp_testkit::script::{Script, ScriptOutcome, ScriptedServer};
use smtp_tls::{Server, TcpTransport, Trust};

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
    let (report, outcome, _) = run_seeing(script, config, ca).await;
    (report, outcome)
}

/// [`run`], also returning every event the session raised.
async fn run_seeing(
    script: &str,
    config: Config,
    ca: Option<&TestCa>,
) -> (SessionReport, ScriptOutcome, Vec<Event>) {
    let identity = ca.map(|ca| ca.leaf(&["mail.test"]));
    let server = ScriptedServer::start(Script::parse(script).unwrap(), identity)
        .await
        .unwrap();
    let mut settings = Server::new("127.0.0.1", server.addr().port())
        .with_policy(config.tls)
        .with_timeouts(config.timeouts);
    if let Some(ca) = ca {
        let mut trust = Trust::new().without_web_pki_roots();
        trust.add_ca_pem(ca.cert_pem().as_bytes()).unwrap();
        settings = settings.with_trust(trust).with_server_name("mail.test");
    }
    let mut transport = TcpTransport::connect(&settings).await.expect("connects");
    let now = smtp_core::delivery::Transport::now(&transport);
    let mut client = Client::new(config, now);
    client
        .send(now, envelope("alice@example.org", &["bob@example.net"]))
        .unwrap();
    client.quit(now);
    let mut bodies: Vec<Box<dyn BodySource>> =
        vec![Box::new(MemoryBody::new("Subject: x\r\n\r\nbody\r\n"))];
    let mut events = Vec::new();
    let report = tokio::time::timeout(
        Duration::from_secs(20),
        drive(&mut client, &mut transport, &mut bodies, &mut |e| {
            events.push(e.clone());
        }),
    )
    .await
    .expect("never hangs");
    // Hang up before waiting for the script, which may wait for more lines.
    drop(transport);
    let outcome = server.finish(Duration::from_secs(5)).await;
    (report, outcome, events)
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

// SCRAM-SHA-256 with RFC 7677 §3's example: user "user", password "pencil",
// and the client nonce the base64 text of the nonce bytes the client is given.

const CLIENT_NONCE: &str = "rOprNGfwEbeRWgbNEkqO";
const SERVER_FIRST: &str =
    "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
const CLIENT_FINAL: &str = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
const SERVER_FINAL: &str = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

fn scram_config() -> Config {
    let mut config = auth_config(
        TlsPolicy::None,
        password("pencil"),
        AuthChoice::Explicit(Mechanism::ScramSha256),
    );
    config.sasl_nonce = STANDARD.decode(CLIENT_NONCE).unwrap();
    config
}

/// The SCRAM exchange up to the server-first-message `server_first`.
fn scram_until_server_first(server_first: &str) -> String {
    format!(
        "S: 220 mail.test\nC: EHLO *\nS: 250-mail.test\nS: 250 AUTH SCRAM-SHA-256\n\
         C: AUTH SCRAM-SHA-256 {}\nS: 334 {}\n",
        STANDARD.encode(format!("n,,n=user,r={CLIENT_NONCE}")),
        STANDARD.encode(server_first),
    )
}

/// The SCRAM exchange up to the client-final-message.
fn scram_until_client_final() -> String {
    format!(
        "{}C: {}\n",
        scram_until_server_first(SERVER_FIRST),
        STANDARD.encode(CLIENT_FINAL)
    )
}

#[tokio::test]
async fn a_scram_exchange_runs_end_to_end_with_the_key_derived_by_the_transport() {
    let script = format!(
        "{}S: 334 {}\nC: \nS: 235 ok\n{SESSION_TAIL}",
        scram_until_client_final(),
        STANDARD.encode(SERVER_FINAL)
    );
    let (report, outcome, events) = run_seeing(&script, scram_config(), None).await;
    outcome.assert_ok();
    assert_eq!(report.error, None);
    assert!(report.messages[0].all_accepted());
    assert!(events.contains(&Event::DerivationWanted));
    assert!(events.contains(&Event::Authenticated(Mechanism::ScramSha256)));
}

#[tokio::test]
async fn iterations_over_the_cap_are_refused_without_deriving() {
    // 10,000,000 iterations: seconds of CPU if the client went along.
    let server_first = "r=rOprNGfwEbeRWgbNEkqOxyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=10000000";
    let script = format!("{}C: *\nC: QUIT\n", scram_until_server_first(server_first));
    let (report, outcome, events) = run_seeing(&script, scram_config(), None).await;
    outcome.assert_ok();
    assert_eq!(
        report.error,
        Some(Error::Sasl(SaslError::TooManyIterations {
            requested: 10_000_000,
            limit: 100_000
        }))
    );
    let text = report.error.unwrap().to_string();
    assert!(
        text.contains("10000000") && text.contains("100000"),
        "{text}"
    );
    assert!(!events.contains(&Event::DerivationWanted));
    assert!(!mail_sent(&outcome));
}

#[tokio::test]
async fn the_iteration_cap_is_a_setting() {
    let mut config = scram_config();
    config.max_scram_iterations = 4095;
    let script = format!("{}C: *\nC: QUIT\n", scram_until_server_first(SERVER_FIRST));
    let (report, outcome) = run(&script, config, None).await;
    outcome.assert_ok();
    assert_eq!(
        report.error,
        Some(Error::Sasl(SaslError::TooManyIterations {
            requested: 4096,
            limit: 4095
        }))
    );
}

#[tokio::test]
async fn a_wrong_server_signature_is_an_impostor_and_no_mail_goes() {
    let wrong = "v=7rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";
    let script = format!(
        "{}S: 334 {}\nC: *\nC: QUIT\n",
        scram_until_client_final(),
        STANDARD.encode(wrong)
    );
    let (report, outcome) = run(&script, scram_config(), None).await;
    outcome.assert_ok();
    assert_eq!(
        report.error,
        Some(Error::Sasl(SaslError::ServerSignatureMismatch))
    );
    assert!(!mail_sent(&outcome));
}

#[tokio::test]
async fn a_235_without_the_server_signature_is_an_impostor_and_no_mail_goes() {
    let script = format!("{}S: 235 ok\nC: QUIT\n", scram_until_client_final());
    let (report, outcome, events) = run_seeing(&script, scram_config(), None).await;
    outcome.assert_ok();
    assert_eq!(
        report.error,
        Some(Error::Protocol(ProtocolError::ScramUnverified))
    );
    assert!(!events.iter().any(|e| matches!(e, Event::Authenticated(_))));
    assert!(!mail_sent(&outcome));
}

#[tokio::test]
async fn a_server_final_message_without_v_is_an_impostor_and_no_mail_goes() {
    let script = format!(
        "{}S: 334 {}\nC: *\nC: QUIT\n",
        scram_until_client_final(),
        STANDARD.encode("x=no-signature")
    );
    let (report, outcome) = run(&script, scram_config(), None).await;
    outcome.assert_ok();
    assert!(
        matches!(
            report.error,
            Some(Error::Sasl(SaslError::InvalidChallenge {
                mechanism: Mechanism::ScramSha256,
                ..
            }))
        ),
        "{:?}",
        report.error
    );
    assert!(!mail_sent(&outcome));
}

// The warning for a mechanism that reveals the secret without TLS.

fn plaintext_secret_warnings(report: &SessionReport) -> Vec<&Warning> {
    report
        .warnings
        .iter()
        .filter(|w| matches!(w, Warning::PlaintextSecret(_)))
        .collect()
}

#[tokio::test]
async fn explicit_plain_in_the_clear_under_policy_none_warns() {
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
    assert_eq!(
        plaintext_secret_warnings(&report),
        [&Warning::PlaintextSecret(Mechanism::Plain)]
    );
}

#[tokio::test]
async fn plain_inside_tls_does_not_warn() {
    let ca = TestCa::new();
    let script = format!(
        "S: 220 mail.test\nC: EHLO *\nS: 250-mail.test\nS: 250 STARTTLS\nC: STARTTLS\n\
         S: 220 go ahead\nSTARTTLS\nC: EHLO *\nS: 250-mail.test\nS: 250 AUTH PLAIN\n\
         C: AUTH PLAIN AHVzZXIAcGFzcw==\nS: 235 ok\n{SESSION_TAIL}"
    );
    let config = auth_config(
        TlsPolicy::Certified,
        password("pass"),
        AuthChoice::Explicit(Mechanism::Plain),
    );
    let (report, outcome) = run(&script, config, Some(&ca)).await;
    outcome.assert_ok();
    assert_eq!(report.error, None);
    assert!(report.tls.is_some());
    assert_eq!(plaintext_secret_warnings(&report), [] as [&Warning; 0]);
}

#[tokio::test]
async fn cram_md5_in_the_clear_does_not_warn() {
    let script = format!(
        "S: 220 mail.test\nC: EHLO *\nS: 250-mail.test\nS: 250 AUTH CRAM-MD5\n\
         C: AUTH CRAM-MD5\nS: 334 {}\nC: *\nS: 235 ok\n{SESSION_TAIL}",
        STANDARD.encode("<1896.697170952@postoffice.example.net>")
    );
    let config = auth_config(TlsPolicy::None, password("pass"), AuthChoice::Auto);
    let (report, outcome) = run(&script, config, None).await;
    outcome.assert_ok();
    assert_eq!(report.error, None);
    assert_eq!(plaintext_secret_warnings(&report), [] as [&Warning; 0]);
}

// Replies to AUTH that are neither 334, 235 nor a failure.

async fn auth_answered_with(reply: &str) -> (SessionReport, ScriptOutcome) {
    let script = format!(
        "S: 220 mail.test\nC: EHLO *\nS: 250-mail.test\nS: 250 AUTH PLAIN\n\
         C: AUTH PLAIN AHVzZXIAcGFzcw==\nS: {reply}\nC: QUIT\n"
    );
    let config = auth_config(
        TlsPolicy::None,
        password("pass"),
        AuthChoice::Explicit(Mechanism::Plain),
    );
    run(&script, config, None).await
}

#[tokio::test]
async fn a_250_to_auth_is_a_protocol_error_not_a_failed_login() {
    for reply in ["250 ok", "354 go ahead", "251 fine"] {
        let (report, outcome) = auth_answered_with(reply).await;
        outcome.assert_ok();
        match &report.error {
            Some(Error::Protocol(ProtocolError::UnexpectedReply { phase, reply: r })) => {
                assert_eq!(*phase, Phase::Auth);
                assert_eq!(r.to_string(), reply);
            }
            other => panic!("{reply}: {other:?}"),
        }
        assert!(!mail_sent(&outcome), "{reply}");
    }
}

#[test]
fn the_tokio_transport_derives_the_key_off_the_session_task() {
    // On a single-threaded runtime another task can run during the
    // derivation only if the transport hands it to another thread: inline,
    // `derive_key` would finish before the other task is ever polled.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let settings = Server::new("127.0.0.1", port)
            .with_policy(TlsPolicy::None)
            .with_timeouts(Timeouts::uniform(Duration::from_secs(5)));
        let mut transport = TcpTransport::connect(&settings).await.unwrap();
        let mut auth = Authenticator::new(
            Mechanism::ScramSha256,
            &password("pencil"),
            &STANDARD.decode(CLIENT_NONCE).unwrap(),
        );
        let _ = auth.initial_response();
        let server_first = SERVER_FIRST.replace("i=4096", "i=20000");
        let Ok(Answer::Derive(job)) = auth.answer(&STANDARD.encode(server_first)) else {
            panic!("SCRAM asks for a derivation");
        };
        let inline = job.clone().run();
        let ran = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = ran.clone();
        tokio::spawn(async move { flag.store(true, std::sync::atomic::Ordering::SeqCst) });
        let key = smtp_core::delivery::Transport::derive_key(&mut transport, job).await;
        assert!(ran.load(std::sync::atomic::Ordering::SeqCst));
        // Same key either way: the client-final-messages agree.
        let mut again = auth.clone();
        assert_eq!(auth.derived(key), again.derived(inline));
    });
}

#[tokio::test]
async fn a_submission_passes_its_iteration_cap_to_the_session() {
    // The nonce is random here, so the server cannot extend it; the cap is
    // checked first, whatever else is wrong with the message.
    let server_first = "r=someone-elses-nonce,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
    let script = format!(
        "S: 220 mail.test\nC: EHLO *\nS: 250-mail.test\nS: 250 AUTH SCRAM-SHA-256\n\
         C: AUTH SCRAM-SHA-256 *\nS: 334 {}\nC: *\nC: QUIT\n",
        STANDARD.encode(server_first)
    );
    let server = ScriptedServer::start(Script::parse(&script).unwrap(), None)
        .await
        .unwrap();
    let mut submission = Server::new("127.0.0.1", server.addr().port());
    submission.policy = TlsPolicy::None;
    submission.credentials = Some(password("pencil"));
    submission.max_scram_iterations = 4095;
    submission.timeouts = Timeouts::uniform(Duration::from_secs(5));
    let delivery = submission.send(Vec::new(), &mut |_| {}).await.unwrap();
    server.finish(Duration::from_secs(5)).await.assert_ok();
    assert_eq!(
        delivery.session.error,
        Some(Error::Sasl(SaslError::TooManyIterations {
            requested: 4096,
            limit: 4095
        }))
    );
}
