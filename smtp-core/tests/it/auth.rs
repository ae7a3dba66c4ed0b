//! AUTH in the sans-IO client: the SCRAM key-derivation hand-off (the call
//! contract on `Client`), the server's proof, and reply bounds during AUTH.

use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use smtp_core::sasl::{AuthChoice, Credentials, Mechanism, Secret};
use smtp_core::{Client, Config, Error, Event, Misuse, ProtocolError, TlsPolicy};
use smtp_testkit::sansio::{Run, config, envelope};

// RFC 7677 §3's example exchange.
const CLIENT_NONCE: &str = "rOprNGfwEbeRWgbNEkqO";
const SERVER_FIRST: &str =
    "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
const CLIENT_FINAL: &str = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
const SERVER_FINAL: &str = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

fn scram_config() -> Config {
    config().with_tls(TlsPolicy::None).with_credentials(
        Credentials::Password {
            username: "user".into(),
            password: Secret::new("pencil"),
        },
        AuthChoice::Explicit(Mechanism::ScramSha256),
        STANDARD.decode(CLIENT_NONCE).unwrap(),
    )
}

/// The session up to the server-first-message, as a transcript.
fn until_server_first() -> String {
    format!(
        "S: 220 mx.example.net\nC: EHLO client.example\nS: 250-mx.example.net\n\
         S: 250 AUTH SCRAM-SHA-256\nC: AUTH SCRAM-SHA-256 {}\nS: 334 {}\n",
        STANDARD.encode(format!("n,,n=user,r={CLIENT_NONCE}")),
        STANDARD.encode(SERVER_FIRST)
    )
}

/// Feeds `bytes` and collects what the client writes and raises.
fn feed(client: &mut Client, now: Instant, bytes: &str) -> (String, Vec<Event>) {
    client.handle_input(now, bytes.as_bytes());
    let mut out = Vec::new();
    let _ = client.poll_transmit(&mut out);
    let events = std::iter::from_fn(|| client.poll_event()).collect();
    (String::from_utf8_lossy(&out).into_owned(), events)
}

#[test]
fn the_scram_key_is_derived_by_the_driver_between_two_calls() {
    #[allow(clippy::disallowed_methods)] // the virtual clock starts anywhere
    let now = Instant::now();
    let mut client = Client::new(scram_config(), now);
    client
        .send(now, envelope("a@example.org", &["b@example.net"]))
        .unwrap();
    // Nothing is pending yet: handing a key over is misuse.
    let spare = {
        let mut a = smtp_core::sasl::Authenticator::new(
            Mechanism::ScramSha256,
            &Credentials::Password {
                username: "user".into(),
                password: Secret::new("pencil"),
            },
            &STANDARD.decode(CLIENT_NONCE).unwrap(),
        );
        let _ = a.initial_response();
        match a.answer(&STANDARD.encode(SERVER_FIRST)).unwrap() {
            smtp_core::sasl::Answer::Derive(job) => job.run(),
            smtp_core::sasl::Answer::Send(_) => panic!("SCRAM derives"),
        }
    };
    assert_eq!(
        client.derivation_done(now, spare.clone()),
        Err(Error::Misuse(Misuse::NoDerivationPending))
    );
    let _ = feed(&mut client, now, "220 mx.example.net\r\n");
    let (wire, _) = feed(
        &mut client,
        now,
        "250-mx.example.net\r\n250 AUTH SCRAM-SHA-256\r\n",
    );
    assert!(wire.contains("AUTH SCRAM-SHA-256 "), "{wire:?}");
    let (wire, events) = feed(
        &mut client,
        now,
        &format!("334 {}\r\n", STANDARD.encode(SERVER_FIRST)),
    );
    // The client waits for the key: nothing to send, no deadline.
    assert_eq!(wire, "");
    assert_eq!(events, [Event::DerivationWanted]);
    assert_eq!(client.poll_timeout(), None);
    let job = client.take_derivation().expect("a job");
    assert_eq!(job.iterations(), 4096);
    assert!(client.take_derivation().is_none(), "handed out once");
    let later = now + Duration::from_millis(5);
    client.derivation_done(later, job.run()).unwrap();
    let mut out = Vec::new();
    assert!(client.poll_transmit(&mut out));
    assert_eq!(
        String::from_utf8(out).unwrap(),
        format!("{}\r\n", STANDARD.encode(CLIENT_FINAL))
    );
    // Now the AUTH reply is awaited again, with a deadline.
    assert!(client.poll_timeout().is_some());
    assert_eq!(
        client.derivation_done(later, spare),
        Err(Error::Misuse(Misuse::NoDerivationPending))
    );
}

#[test]
fn a_verified_scram_exchange_goes_on_to_mail() {
    let mut run = Run::new(scram_config());
    run.send(envelope("a@example.org", &["b@example.net"]));
    run.script(&format!(
        "{}C: {}\nS: 334 {}\nC: \nS: 235 ok\nC: MAIL FROM:<a@example.org>\n",
        until_server_first(),
        STANDARD.encode(CLIENT_FINAL),
        STANDARD.encode(SERVER_FINAL)
    ));
    assert!(
        run.events
            .contains(&Event::Authenticated(Mechanism::ScramSha256))
    );
    assert_eq!(run.failure(), None);
}

#[test]
fn a_235_before_the_server_proof_is_refused() {
    let mut run = Run::new(scram_config());
    run.send(envelope("a@example.org", &["b@example.net"]));
    run.script(&format!(
        "{}C: {}\nS: 235 ok\nC: QUIT\n",
        until_server_first(),
        STANDARD.encode(CLIENT_FINAL),
    ));
    assert_eq!(
        run.failure(),
        Some(&Error::Protocol(ProtocolError::ScramUnverified))
    );
}

#[test]
fn a_derivation_finished_after_the_session_ended_is_ignored() {
    #[allow(clippy::disallowed_methods)] // the virtual clock starts anywhere
    let now = Instant::now();
    let mut client = Client::new(scram_config(), now);
    client
        .send(now, envelope("a@example.org", &["b@example.net"]))
        .unwrap();
    let _ = feed(&mut client, now, "220 mx.example.net\r\n");
    let _ = feed(
        &mut client,
        now,
        "250-mx.example.net\r\n250 AUTH SCRAM-SHA-256\r\n",
    );
    let _ = feed(
        &mut client,
        now,
        &format!("334 {}\r\n", STANDARD.encode(SERVER_FIRST)),
    );
    let job = client.take_derivation().expect("a job");
    // A reply while the client is busy deriving was not asked for.
    let (_, events) = feed(&mut client, now, "250 what\r\n");
    assert!(matches!(
        events.last(),
        Some(Event::Failed(Error::Protocol(ProtocolError::Unsolicited(
            _
        ))))
    ));
    assert_eq!(client.derivation_done(now, job.run()), Ok(()));
    let mut out = Vec::new();
    assert!(!client.poll_transmit(&mut out), "nothing more is sent");
}

#[test]
fn a_full_challenge_fits_even_under_a_small_reply_limit() {
    let mut cfg = config().with_tls(TlsPolicy::None).with_credentials(
        Credentials::Password {
            username: "user".into(),
            password: Secret::new("pass"),
        },
        AuthChoice::Auto,
        vec![7; 24],
    );
    cfg.reply_limits.max_reply_len = 4096;
    let mut run = Run::new(cfg);
    run.send(envelope("a@example.org", &["b@example.net"]));
    run.script(
        "
        S: 220 mx.example.net
        C: EHLO client.example
        S: 250-mx.example.net
        S: 250 AUTH CRAM-MD5
        C: AUTH CRAM-MD5
        ",
    );
    let challenge: String = "PDEyQG1haWw+".chars().cycle().take(12_288).collect();
    run.input(format!("334 {challenge}\r\n").as_bytes());
    assert_eq!(run.failure(), None);
    assert!(run.take_wire().starts_with("dXNlciA"));
}

#[test]
fn a_refused_challenge_cancels_the_exchange_with_a_star_and_quits() {
    let mut run = Run::new(scram_config());
    run.send(envelope("a@example.org", &["b@example.net"]));
    run.script(&format!(
        "S: 220 mx.example.net\nC: EHLO client.example\nS: 250-mx.example.net\n\
         S: 250 AUTH SCRAM-SHA-256\nC: AUTH SCRAM-SHA-256 {}\nS: 334 {}\nC: *\nC: QUIT\n",
        STANDARD.encode(format!("n,,n=user,r={CLIENT_NONCE}")),
        STANDARD.encode("r=rOprNGfwEbeRWgbNEkqOx,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=10000000"),
    ));
    assert_eq!(
        run.failure(),
        Some(&Error::Sasl(
            smtp_core::sasl::SaslError::TooManyIterations {
                requested: 10_000_000,
                limit: 100_000
            }
        ))
    );
    assert!(!run.events.contains(&Event::DerivationWanted));
}

fn plain(policy: TlsPolicy) -> Run {
    let cfg = config().with_tls(policy).with_credentials(
        Credentials::Password {
            username: "user".into(),
            password: Secret::new("pass"),
        },
        AuthChoice::Explicit(Mechanism::Plain),
        vec![7; 24],
    );
    let mut run = Run::new(cfg);
    run.send(envelope("a@example.org", &["b@example.net"]));
    run
}

fn warned(run: &Run) -> bool {
    run.events
        .iter()
        .any(|e| matches!(e, Event::Warning(smtp_core::Warning::PlaintextSecret(_))))
}

#[test]
fn plain_inside_tls_goes_without_a_warning() {
    let mut run = plain(TlsPolicy::Required);
    run.script(
        "
        S: 220 mx.example.net
        C: EHLO client.example
        S: 250-mx.example.net
        S: 250 STARTTLS
        C: STARTTLS
        S: 220 go ahead
        C: EHLO client.example
        S: 250-mx.example.net
        S: 250 AUTH PLAIN
        C: AUTH PLAIN AHVzZXIAcGFzcw==
        S: 235 ok
        C: MAIL FROM:<a@example.org>
        ",
    );
    assert!(run.client.is_tls());
    assert!(!warned(&run));
}

#[test]
fn cram_md5_in_the_clear_goes_without_a_warning() {
    let cfg = config().with_tls(TlsPolicy::None).with_credentials(
        Credentials::Password {
            username: "user".into(),
            password: Secret::new("pass"),
        },
        AuthChoice::Auto,
        vec![7; 24],
    );
    let mut run = Run::new(cfg);
    run.send(envelope("a@example.org", &["b@example.net"]));
    run.script(
        "
        S: 220 mx.example.net
        C: EHLO client.example
        S: 250-mx.example.net
        S: 250 AUTH CRAM-MD5
        C: AUTH CRAM-MD5
        S: 334 PDEyQG1haWw+
        C: *
        S: 235 ok
        C: MAIL FROM:<a@example.org>
        ",
    );
    assert!(!warned(&run));
}

#[test]
fn a_2xx_or_3xx_other_than_235_and_334_to_auth_is_a_protocol_error() {
    for reply in ["250 ok", "354 go ahead"] {
        let mut run = plain(TlsPolicy::None);
        run.script(&format!(
            "S: 220 mx.example.net\nC: EHLO client.example\nS: 250-mx.example.net\n\
             S: 250 AUTH PLAIN\nC: AUTH PLAIN AHVzZXIAcGFzcw==\nS: {reply}\nC: QUIT\n"
        ));
        assert!(warned(&run), "explicit PLAIN in the clear under None warns");
        assert!(
            matches!(
                run.failure(),
                Some(Error::Protocol(ProtocolError::UnexpectedReply {
                    phase: smtp_core::Phase::Auth,
                    ..
                }))
            ),
            "{reply}: {:?}",
            run.failure()
        );
    }
}
