//! Session set-up: greeting, EHLO/HELO, the STARTTLS policy matrix, AUTH.

use smtp_core::sasl::{AuthChoice, Credentials, Mechanism, Secret};
use smtp_core::{Error, Event, PolicyError, ProtocolError, RecipientStatus, TlsPolicy, Warning};

use smtp_testkit::sansio::{Run, config, envelope};

fn password() -> Credentials {
    Credentials::Password {
        username: "user".into(),
        password: Secret::new("pass"),
    }
}

fn with_auth(policy: TlsPolicy, choice: AuthChoice) -> Run {
    let cfg = config()
        .with_tls(policy)
        .with_credentials(password(), choice, vec![7; 24]);
    let mut run = Run::new(cfg);
    run.send(envelope("a@example.org", &["b@example.net"]));
    run
}

#[test]
fn refused_greeting_quits_and_defers() {
    let mut run = Run::new(config());
    run.send(envelope("a@example.org", &["b@example.net"]));
    run.script(
        "
        S: 554 mx.example.net no SMTP service here
        C: QUIT
        ",
    );
    assert!(matches!(run.failure(), Some(Error::Rejected { .. })));
    // The server refused the session, not the recipient: another host or a
    // later try may take it.
    assert_eq!(run.statuses(), ["b@example.net=deferred"]);
}

#[test]
fn temporary_greeting_defers() {
    let mut run = Run::new(config());
    run.send(envelope("a@example.org", &["b@example.net"]));
    run.script("S: 421 mx.example.net busy, try later");
    assert_eq!(run.statuses(), ["b@example.net=deferred"]);
    assert!(run.take_wire().is_empty(), "nothing sent after 421");
}

#[test]
fn helo_fallback_when_ehlo_unknown() {
    for code in ["500", "502"] {
        let mut run = Run::new(config());
        run.send(envelope("a@example.org", &["b@example.net"]));
        run.script(&format!(
            "
            S: 220 old.example
            C: EHLO client.example
            S: {code} command not recognized
            C: HELO client.example
            S: 250 old.example
            C: MAIL FROM:<a@example.org>
            S: 250 ok
            C: RCPT TO:<b@example.net>
            S: 250 ok
            C: DATA
            S: 354 go
            C: Subject: test
            C: 
            C: Hello.
            C: .
            S: 250 queued
            "
        ));
        assert_eq!(run.statuses(), ["b@example.net=accepted"]);
    }
}

/// What each policy does when the server offers STARTTLS (DESIGN.md matrix, row 1).
#[test]
fn starttls_offered() {
    for policy in [
        TlsPolicy::None,
        TlsPolicy::Optional,
        TlsPolicy::Required,
        TlsPolicy::Certified,
    ] {
        let mut run = Run::new(config().with_tls(policy));
        run.send(envelope("a@example.org", &["b@example.net"]));
        let wire = run.script_and_rest(
            "
            S: 220 mx.example.net
            C: EHLO client.example
            S: 250-mx.example.net
            S: 250 STARTTLS
            ",
        );
        if policy == TlsPolicy::None {
            assert_eq!(wire, "MAIL FROM:<a@example.org>\r\n", "{policy}");
            assert!(!run.client.is_tls());
        } else {
            // Upgrade, then EHLO again on the encrypted channel.
            assert_eq!(wire, "STARTTLS\r\n", "{policy}");
            run.script(
                "
                S: 220 go ahead
                C: EHLO client.example
                S: 250-mx.example.net
                S: 250 PIPELINING
                C: MAIL FROM:<a@example.org>
                C: RCPT TO:<b@example.net>
                C: DATA
                ",
            );
            assert!(run.client.is_tls());
            assert!(run.events.iter().any(|e| matches!(e, Event::StartTls)));
        }
    }
}

/// Row 3: the server does not offer STARTTLS.
#[test]
fn starttls_not_offered() {
    for policy in [
        TlsPolicy::None,
        TlsPolicy::Optional,
        TlsPolicy::Required,
        TlsPolicy::Certified,
    ] {
        let mut run = Run::new(config().with_tls(policy));
        run.send(envelope("a@example.org", &["b@example.net"]));
        let wire = run.script_and_rest(
            "
            S: 220 mx.example.net
            C: EHLO client.example
            S: 250 mx.example.net
            ",
        );
        if policy.requires_tls() {
            assert_eq!(wire, "QUIT\r\n", "{policy}: no MAIL before TLS");
            assert_eq!(
                run.failure(),
                Some(&Error::Policy(PolicyError::StartTlsNotOffered { policy }))
            );
            assert_eq!(run.statuses(), ["b@example.net=deferred"]);
            let text = run.failure().unwrap().to_string();
            assert!(
                text.contains("the policy optional allows plaintext") && text.contains("465"),
                "{text}"
            );
        } else {
            assert_eq!(wire, "MAIL FROM:<a@example.org>\r\n", "{policy}");
        }
    }
}

/// Row 4: STARTTLS answered with 454 / 502.
#[test]
fn starttls_refused() {
    for code in ["454 TLS not available", "502 not implemented"] {
        for policy in [
            TlsPolicy::Optional,
            TlsPolicy::Required,
            TlsPolicy::Certified,
        ] {
            let mut run = Run::new(config().with_tls(policy));
            run.send(envelope("a@example.org", &["b@example.net"]));
            let wire = run.script_and_rest(&format!(
                "
                S: 220 mx.example.net
                C: EHLO client.example
                S: 250-mx.example.net
                S: 250 STARTTLS
                C: STARTTLS
                S: {code}
                "
            ));
            if policy == TlsPolicy::Optional {
                assert_eq!(
                    wire, "MAIL FROM:<a@example.org>\r\n",
                    "same connection, plaintext"
                );
            } else {
                assert_eq!(wire, "QUIT\r\n", "{policy}");
                assert!(matches!(
                    run.failure(),
                    Some(Error::Policy(PolicyError::StartTlsRefused { .. }))
                ));
            }
        }
    }
}

/// Bytes in the same write as the 220 to STARTTLS are an injection attack.
#[test]
fn starttls_response_injection() {
    for policy in [
        TlsPolicy::Optional,
        TlsPolicy::Required,
        TlsPolicy::Certified,
    ] {
        let mut run = Run::new(config().with_tls(policy));
        run.send(envelope("a@example.org", &["b@example.net"]));
        run.script(
            "
            S: 220 mx.example.net
            C: EHLO client.example
            S: 250-mx.example.net
            S: 250 STARTTLS
            C: STARTTLS
            S: 220 go ahead
            S: 250-evil.example
            S: 250 AUTH PLAIN
            ",
        );
        assert_eq!(
            run.failure(),
            Some(&Error::Protocol(ProtocolError::ResponseInjection {
                bytes: 34
            }))
        );
        assert!(
            run.take_wire().is_empty(),
            "no EHLO, no MAIL after an injection"
        );
        assert!(!run.events.iter().any(|e| matches!(e, Event::StartTls)));
        assert_eq!(run.statuses(), ["b@example.net=deferred"]);
    }
}

#[test]
fn plaintext_before_handshake_is_refused() {
    let mut run = Run::new(config().with_tls(TlsPolicy::Required));
    run.auto_tls = false;
    run.send(envelope("a@example.org", &["b@example.net"]));
    run.script(
        "
        S: 220 mx.example.net
        C: EHLO client.example
        S: 250-mx.example.net
        S: 250 STARTTLS
        C: STARTTLS
        S: 220 go ahead
        ",
    );
    assert!(run.events.iter().any(|e| matches!(e, Event::StartTls)));
    assert_eq!(
        run.client.poll_timeout(),
        None,
        "the driver times the handshake"
    );
    run.input(b"250 late\r\n");
    assert_eq!(
        run.failure(),
        Some(&Error::Protocol(ProtocolError::InputDuringHandshake))
    );
}

#[test]
fn handshake_failure_defers() {
    let mut run = Run::new(config().with_tls(TlsPolicy::Certified));
    run.auto_tls = false;
    run.send(envelope("a@example.org", &["b@example.net"]));
    run.script(
        "
        S: 220 mx.example.net
        C: EHLO client.example
        S: 250-mx.example.net
        S: 250 STARTTLS
        C: STARTTLS
        S: 220 go ahead
        ",
    );
    run.client
        .tls_failed(run.now, "certificate for mx.example.net has expired");
    run.pump();
    assert_eq!(run.statuses(), ["b@example.net=deferred"]);
    assert!(run.failure().unwrap().to_string().contains("expired"));
}

/// After STARTTLS everything learnt before is forgotten: AUTH offered only
/// after TLS is used, PIPELINING offered only before TLS is not.
#[test]
fn capabilities_forgotten_after_starttls() {
    let mut run = with_auth(TlsPolicy::Required, AuthChoice::Auto);
    run.script(
        "
        S: 220 mx.example.net
        C: EHLO client.example
        S: 250-mx.example.net
        S: 250-PIPELINING
        S: 250 STARTTLS
        C: STARTTLS
        S: 220 go ahead
        C: EHLO client.example
        S: 250-mx.example.net
        S: 250 AUTH LOGIN PLAIN
        C: AUTH PLAIN AHVzZXIAcGFzcw==
        S: 235 2.7.0 ok
        C: MAIL FROM:<a@example.org>
        S: 250 ok
        C: RCPT TO:<b@example.net>
        ",
    );
    assert!(run.events.contains(&Event::Authenticated(Mechanism::Plain)));
}

/// Under Optional with STARTTLS stripped, a password-revealing mechanism is
/// never used: the session fails before AUTH, no secret crosses.
#[test]
fn stripped_starttls_never_leaks_password() {
    let mut run = with_auth(TlsPolicy::Optional, AuthChoice::Auto);
    run.script(
        "
        S: 220 mx.example.net
        C: EHLO client.example
        S: 250-mx.example.net
        S: 250 AUTH PLAIN LOGIN
        C: QUIT
        ",
    );
    assert!(matches!(run.failure(), Some(Error::Sasl(_))));
    let text = run.failure().unwrap().to_string();
    assert!(text.contains("TLS") || text.contains("tls"), "{text}");
    assert_eq!(run.statuses(), ["b@example.net=deferred"]);
}

#[test]
fn explicit_plain_in_clear_only_under_none_with_warning() {
    let mut run = with_auth(TlsPolicy::None, AuthChoice::Explicit(Mechanism::Plain));
    run.script(
        "
        S: 220 mx.example.net
        C: EHLO client.example
        S: 250-mx.example.net
        S: 250 AUTH PLAIN LOGIN
        C: AUTH PLAIN AHVzZXIAcGFzcw==
        ",
    );
    assert!(
        run.events
            .contains(&Event::Warning(Warning::PlaintextSecret(Mechanism::Plain)))
    );
}

#[test]
fn cram_md5_in_clear_under_optional() {
    let creds = Credentials::Password {
        username: "tim".into(),
        password: Secret::new("tanstaaftanstaaf"),
    };
    let cfg = config().with_tls(TlsPolicy::Optional).with_credentials(
        creds,
        AuthChoice::Auto,
        vec![1; 24],
    );
    let mut run = Run::new(cfg);
    run.send(envelope("a@example.org", &["b@example.net"]));
    // RFC 2195's example exchange.
    run.script(
        "
        S: 220 mx.example.net
        C: EHLO client.example
        S: 250-mx.example.net
        S: 250 AUTH PLAIN LOGIN CRAM-MD5
        C: AUTH CRAM-MD5
        S: 334 PDE4OTYuNjk3MTcwOTUyQHBvc3RvZmZpY2UucmVzdG9uLm1jaS5uZXQ+
        C: dGltIGI5MTNhNjAyYzdlZGE3YTQ5NWI0ZTZlNzMzNGQzODkw
        S: 235 ok
        C: MAIL FROM:<a@example.org>
        ",
    );
}

#[test]
fn wrong_password_fails_without_mail() {
    let mut run = with_auth(TlsPolicy::Required, AuthChoice::Auto);
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
        S: 250 AUTH LOGIN
        C: AUTH LOGIN
        S: 334 VXNlcm5hbWU6
        C: dXNlcg==
        S: 334 UGFzc3dvcmQ6
        C: cGFzcw==
        S: 535 5.7.8 Authentication credentials invalid
        C: QUIT
        ",
    );
    match run.failure() {
        Some(Error::AuthenticationFailed {
            mechanism: Mechanism::Login,
            reply,
            ..
        }) => {
            assert_eq!(reply.code().as_u16(), 535);
        }
        other => panic!("{other:?}"),
    }
    // A wrong password is not a refused recipient: a list-cleaning script
    // reading `rejected` must not delete the list.
    assert_eq!(run.statuses(), ["b@example.net=deferred"]);
    assert!(run.failure().unwrap().to_string().contains("password"));
    // At the AUTH step, and the caller's to fix: no retry loop spins on it.
    let outcome = &run.outcomes()[0].recipients[0];
    assert_eq!(outcome.phase, smtp_core::Phase::Auth, "{outcome}");
    assert_eq!(
        outcome.error.as_ref().map(Error::fault),
        Some(smtp_core::Fault::Configuration)
    );
}

#[test]
fn credentials_but_no_auth_offered() {
    let mut run = with_auth(TlsPolicy::None, AuthChoice::Auto);
    run.script(
        "
        S: 220 mx.example.net
        C: EHLO client.example
        S: 250 mx.example.net
        C: QUIT
        ",
    );
    assert_eq!(
        run.failure(),
        Some(&Error::Policy(PolicyError::AuthNotOffered { tls: false }))
    );
}

#[test]
fn transcript_redacts_secrets() {
    let cfg = config()
        .with_tls(TlsPolicy::Required)
        .with_credentials(
            password(),
            AuthChoice::Explicit(Mechanism::Login),
            vec![1; 24],
        )
        .with_transcript(true);
    let mut run = Run::new(cfg);
    run.send(envelope("a@example.org", &["b@example.net"]));
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
        S: 250 AUTH LOGIN
        C: AUTH LOGIN
        S: 334 VXNlcm5hbWU6
        C: dXNlcg==
        S: 334 UGFzc3dvcmQ6
        C: cGFzcw==
        S: 235 ok
        C: MAIL FROM:<a@example.org>
        ",
    );
    let lines: Vec<String> = run
        .events
        .iter()
        .filter_map(|e| match e {
            Event::Transcript(t) => Some(t.to_string()),
            _ => None,
        })
        .collect();
    assert!(lines.iter().any(|l| l == "-> STARTTLS"), "{lines:#?}");
    assert!(lines.iter().any(|l| l == "~> AUTH LOGIN"), "{lines:#?}");
    assert!(lines.iter().any(|l| l == "<~ 235 ok"), "{lines:#?}");
    assert!(
        lines
            .iter()
            .all(|l| !l.contains("cGFzcw") && !l.contains("pass")),
        "{lines:#?}"
    );
    assert!(lines.iter().filter(|l| l.contains("<redacted>")).count() >= 2);
}

#[test]
fn unsolicited_421_ends_the_session() {
    let mut run = Run::new(config());
    run.script(
        "
        S: 220 mx.example.net
        C: EHLO client.example
        S: 250 mx.example.net
        S: 421 shutting down
        ",
    );
    assert!(matches!(run.failure(), Some(Error::Rejected { .. })));
}

#[test]
fn garbage_reply_is_a_protocol_error() {
    let mut run = Run::new(config());
    run.send(envelope("a@example.org", &["b@example.net"]));
    run.input(b"HTTP/1.1 400 Bad Request\r\n");
    assert!(matches!(
        run.failure(),
        Some(Error::Protocol(ProtocolError::Malformed(_)))
    ));
    assert_eq!(
        run.outcomes()[0].recipients[0].status,
        RecipientStatus::Deferred
    );
    // No more input is taken after a failure.
    run.input(b"220 hello\r\n");
    assert!(run.take_wire().is_empty());
}

#[test]
fn oversized_line_is_refused_without_waiting() {
    let mut run = Run::new(config());
    run.send(envelope("a@example.org", &["b@example.net"]));
    let line = vec![b'2'; 100 * 1024];
    run.input(&line);
    assert!(matches!(
        run.failure(),
        Some(Error::Protocol(ProtocolError::Malformed(_)))
    ));
}

#[test]
fn endless_multiline_reply_is_bounded() {
    let mut run = Run::new(config());
    run.send(envelope("a@example.org", &["b@example.net"]));
    for _ in 0..20_000 {
        run.input(b"220-still greeting you\r\n");
        if run.failure().is_some() {
            break;
        }
    }
    assert!(matches!(
        run.failure(),
        Some(Error::Protocol(ProtocolError::Malformed(_)))
    ));
}

#[test]
fn quit_on_idle_session() {
    let mut run = Run::new(config());
    run.client.quit(run.now);
    run.script(
        "
        S: 220 mx.example.net
        C: EHLO client.example
        S: 250 mx.example.net
        C: QUIT
        S: 221 bye
        ",
    );
    assert!(run.closed());
    assert!(run.failure().is_none());
}

/// A CRAM-MD5 session up to a `334` whose challenge is `len` octets, fed in
/// 1000-byte pieces as a network would.
fn cram_md5_challenge(len: usize) -> Run {
    let mut run = with_auth(TlsPolicy::None, AuthChoice::Auto);
    run.script(
        "
        S: 220 mx.example.net
        C: EHLO client.example
        S: 250-mx.example.net
        S: 250 AUTH CRAM-MD5
        C: AUTH CRAM-MD5
        ",
    );
    let mut reply = b"334 ".to_vec();
    reply.extend(b"PDEyQG1haWw+".iter().cycle().take(len));
    reply.extend_from_slice(b"\r\n");
    for piece in reply.chunks(1000) {
        run.input(piece);
    }
    run
}

#[test]
fn an_auth_challenge_may_fill_rfc_4954s_12288_octets_and_no_more() {
    let mut run = cram_md5_challenge(12_288);
    assert_eq!(run.failure(), None);
    // The client answered the challenge (`user <digest>`, base64).
    let answer = run.take_wire();
    assert!(
        answer.starts_with("dXNlciA") && answer.ends_with("\r\n"),
        "{answer:?}"
    );

    let run = cram_md5_challenge(12_289);
    assert_eq!(
        run.failure(),
        Some(&Error::Protocol(ProtocolError::ChallengeTooLong {
            limit: 12_288
        }))
    );
}

#[test]
fn outside_auth_a_reply_line_keeps_the_configured_limit() {
    let mut run = Run::new(config());
    run.send(envelope("a@example.org", &["b@example.net"]));
    let mut line = b"220 ".to_vec();
    line.resize(9000, b'x');
    line.extend_from_slice(b"\r\n");
    run.input(&line);
    assert_eq!(
        run.failure(),
        Some(&Error::Protocol(ProtocolError::Malformed(
            smtp_core::reply::ReplyError::LineTooLong { limit: 8192 }
        )))
    );
}

#[test]
fn a_3xx_to_starttls_is_a_protocol_error_even_under_optional() {
    // Only 4xx and 5xx refuse STARTTLS; a 354 is a server out of step, not
    // permission to go on in plaintext.
    let mut run = Run::new(config().with_tls(TlsPolicy::Optional));
    run.send(envelope("a@example.org", &["b@example.net"]));
    run.script(
        "
        S: 220 mx.example.net
        C: EHLO client.example
        S: 250-mx.example.net
        S: 250 STARTTLS
        C: STARTTLS
        S: 354 go ahead
        C: QUIT
        ",
    );
    assert!(matches!(
        run.failure(),
        Some(Error::Protocol(ProtocolError::UnexpectedReply { .. }))
    ));
    assert_eq!(run.statuses(), ["b@example.net=deferred"]);
}

#[test]
fn nothing_queued_goes_out_after_a_second_greeting() {
    let mut run = Run::new(config());
    run.send(envelope("a@example.org", &["b@example.net"]));
    // The second greeting comes before the EHLO the first one prompted left.
    run.input(b"220 mx.example.net\r\n220 mx.example.net again\r\n");
    assert!(
        matches!(
            run.failure(),
            Some(Error::Protocol(ProtocolError::Unsolicited(_)))
        ),
        "{:?}",
        run.failure()
    );
    assert_eq!(run.take_wire(), "", "the server hears nothing more");
}

#[test]
fn nothing_queued_goes_out_after_a_reply_sent_twice_in_lock_step() {
    let mut run = Run::new(config());
    run.send(envelope("a@example.org", &["b@example.net"]));
    run.script(
        "
        S: 220 mx.example.net
        C: EHLO client.example
        S: 250 mx.example.net
        C: MAIL FROM:<a@example.org>
        ",
    );
    run.input(b"250 ok\r\n250 ok\r\n");
    assert!(
        matches!(
            run.failure(),
            Some(Error::Protocol(ProtocolError::Unsolicited(_)))
        ),
        "{:?}",
        run.failure()
    );
    assert_eq!(run.take_wire(), "", "no RCPT after the fault");
}

#[test]
fn certified_refuses_a_handshake_its_driver_did_not_verify() {
    // The driver's TLS settings let an unverified certificate through (a
    // connector configured apart from the client): Certified still refuses.
    for policy in [
        TlsPolicy::Optional,
        TlsPolicy::Required,
        TlsPolicy::Certified,
    ] {
        let mut run = Run::new(config().with_tls(policy));
        run.auto_tls = false;
        run.send(envelope("a@example.org", &["b@example.net"]));
        run.script(
            "
            S: 220 mx.example.net
            C: EHLO client.example
            S: 250-mx.example.net
            S: 250 STARTTLS
            C: STARTTLS
            S: 220 go ahead
            ",
        );
        let unverified = smtp_core::delivery::TlsInfo {
            verified: false,
            verify_error: Some("self-signed".into()),
            ..smtp_core::delivery::TlsInfo::default()
        };
        run.client.tls_established(run.now, unverified).unwrap();
        run.pump();
        let wire = run.take_wire();
        if policy == TlsPolicy::Certified {
            assert_eq!(wire, "QUIT\r\n", "no EHLO, no MAIL");
            let Some(Error::Tls(failure)) = run.failure() else {
                panic!("{:?}", run.failure());
            };
            assert_eq!(
                failure.kind,
                smtp_core::delivery::TlsFailureKind::Certificate
            );
            assert!(failure.detail.contains("self-signed"), "{}", failure.detail);
            assert_eq!(run.statuses(), ["b@example.net=deferred"]);
        } else {
            assert_eq!(
                wire, "EHLO client.example\r\n",
                "{policy} goes on, reported unverified"
            );
        }
    }
}
