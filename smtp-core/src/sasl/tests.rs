//! Choosing a mechanism and running exchanges through [`Authenticator`]; each
//! mechanism's own vectors are beside it.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use super::*;
use proptest::prelude::*;

fn pw() -> Credentials {
    Credentials::Password {
        username: "user".to_owned(),
        password: Secret::new("pencil"),
    }
}

fn tok() -> Credentials {
    Credentials::OAuth2 {
        username: "user@example.com".to_owned(),
        token: Secret::new("ya29.token"),
    }
}

fn b64(s: &str) -> String {
    STANDARD.encode(s)
}

#[test]
fn mechanism_names() {
    for m in Mechanism::ALL {
        assert_eq!(Mechanism::from_name(m.name()), Some(m));
        assert_eq!(Mechanism::from_name(&m.name().to_lowercase()), Some(m));
        assert_eq!(m.to_string(), m.name());
        assert_eq!(m.name().parse::<Mechanism>(), Ok(m));
    }
    assert_eq!(Mechanism::from_name("cram-md5"), Some(Mechanism::CramMd5));
    assert_eq!(
        Mechanism::from_name("Scram-Sha-256"),
        Some(Mechanism::ScramSha256)
    );
    assert_eq!(Mechanism::from_name("GSSAPI"), None);
    assert_eq!(Mechanism::from_name(""), None);
    let err = "gssapi".parse::<Mechanism>().expect_err("not implemented");
    assert_eq!(
        err.to_string(),
        "unknown SASL mechanism \"gssapi\"; supported: PLAIN LOGIN CRAM-MD5 XOAUTH2 SCRAM-SHA-256"
    );
    let revealing: Vec<_> = Mechanism::ALL
        .into_iter()
        .filter(|m| m.reveals_secret())
        .collect();
    assert_eq!(
        revealing,
        [Mechanism::Plain, Mechanism::Login, Mechanism::XOAuth2]
    );
}

#[test]
fn secrets_never_print() {
    let creds = Credentials::Password {
        username: "alice".to_owned(),
        password: Secret::new("hunter2"),
    };
    let debug = format!("{creds:?} {creds:#?}");
    assert!(!debug.contains("hunter2"), "{debug}");
    assert!(
        debug.contains("alice") && debug.contains("<redacted>"),
        "{debug}"
    );
    let creds = Credentials::OAuth2 {
        username: "alice".to_owned(),
        token: Secret::new("ya29.sekrit"),
    };
    assert!(!format!("{creds:?}").contains("sekrit"));
    let secret = Secret::new("hunter2");
    assert_eq!(format!("{secret} {secret:?}"), "<redacted> <redacted>");
    assert_eq!(secret.expose(), "hunter2");
    assert_eq!(creds.username(), "alice");

    // Nor does an authenticator, whatever state it is in.
    for m in Mechanism::ALL {
        let creds = if m == Mechanism::XOAuth2 { tok() } else { pw() };
        let mut auth = Authenticator::new(m, &creds, &[7; 18]);
        let _ = auth.initial_response();
        let _ = auth.respond(&b64("<1.2@host>"));
        let debug = format!("{auth:?}");
        assert!(
            !debug.contains("pencil") && !debug.contains("ya29"),
            "{debug}"
        );
    }
}

/// Runs `choose_mechanism` and names the outcome: the mechanism, or
/// `offered` / `reveal` / `none` / `creds` for the errors.
fn outcome(
    offered: &str,
    oauth2: bool,
    choice: &str,
    tls: bool,
    plaintext_allowed: bool,
) -> &'static str {
    let offered: Vec<String> = offered.split_whitespace().map(str::to_owned).collect();
    let creds = if oauth2 { tok() } else { pw() };
    let choice = match choice {
        "auto" => AuthChoice::Auto,
        name => AuthChoice::Explicit(Mechanism::from_name(name).expect("a mechanism name")),
    };
    match choose_mechanism(&offered, &creds, choice, tls, plaintext_allowed) {
        Ok(m) => m.name(),
        Err(SaslError::NotOffered { .. }) => "offered",
        Err(SaslError::WouldRevealSecret { .. }) => "reveal",
        Err(SaslError::NoUsableMechanism { .. }) => "none",
        Err(SaslError::CredentialsMismatch { .. }) => "creds",
        Err(e) => panic!("unexpected error {e:?}"),
    }
}

const N: &str = "";
const PL: &str = "PLAIN LOGIN";
const CPL: &str = "CRAM-MD5 PLAIN LOGIN";
const ALL: &str = "SCRAM-SHA-256 CRAM-MD5 PLAIN LOGIN XOAUTH2";
const XP: &str = "XOAUTH2 PLAIN";
const L: &str = "login GSSAPI";
const OFFERED_SETS: [&str; 6] = [N, PL, CPL, ALL, XP, L];
const CHOICES: [&str; 6] = [
    "auto",
    "PLAIN",
    "LOGIN",
    "CRAM-MD5",
    "XOAUTH2",
    "SCRAM-SHA-256",
];

const SCRAM: &str = "SCRAM-SHA-256";
const CRAM: &str = "CRAM-MD5";
const PLAIN: &str = "PLAIN";
const LOGIN: &str = "LOGIN";
const XOAUTH2: &str = "XOAUTH2";

/// (offered, token?, choice, [with TLS, clear, clear under policy None]).
#[rustfmt::skip]
const TABLE: &[(&str, bool, &str, [&str; 3])] = &[
    // Password, auto: strongest first; without TLS only SCRAM and CRAM-MD5.
    (N,   false, "auto", ["none", "none", "none"]),
    (PL,  false, "auto", [PLAIN,  "none", "none"]),
    (CPL, false, "auto", [CRAM,   CRAM,   CRAM]),
    (ALL, false, "auto", [SCRAM,  SCRAM,  SCRAM]),
    (XP,  false, "auto", [PLAIN,  "none", "none"]),
    (L,   false, "auto", [LOGIN,  "none", "none"]),
    // Password, explicit PLAIN: in the clear only under policy None.
    (N,   false, "PLAIN", ["offered", "offered", "offered"]),
    (PL,  false, "PLAIN", [PLAIN, "reveal", PLAIN]),
    (CPL, false, "PLAIN", [PLAIN, "reveal", PLAIN]),
    (ALL, false, "PLAIN", [PLAIN, "reveal", PLAIN]),
    (XP,  false, "PLAIN", [PLAIN, "reveal", PLAIN]),
    (L,   false, "PLAIN", ["offered", "offered", "offered"]),
    // Password, explicit LOGIN.
    (N,   false, "LOGIN", ["offered", "offered", "offered"]),
    (PL,  false, "LOGIN", [LOGIN, "reveal", LOGIN]),
    (CPL, false, "LOGIN", [LOGIN, "reveal", LOGIN]),
    (ALL, false, "LOGIN", [LOGIN, "reveal", LOGIN]),
    (XP,  false, "LOGIN", ["offered", "offered", "offered"]),
    (L,   false, "LOGIN", [LOGIN, "reveal", LOGIN]),
    // Password, explicit CRAM-MD5: never reveals.
    (N,   false, "CRAM-MD5", ["offered", "offered", "offered"]),
    (PL,  false, "CRAM-MD5", ["offered", "offered", "offered"]),
    (CPL, false, "CRAM-MD5", [CRAM, CRAM, CRAM]),
    (ALL, false, "CRAM-MD5", [CRAM, CRAM, CRAM]),
    (XP,  false, "CRAM-MD5", ["offered", "offered", "offered"]),
    (L,   false, "CRAM-MD5", ["offered", "offered", "offered"]),
    // Password, explicit XOAUTH2: needs a token.
    (N,   false, "XOAUTH2", ["creds", "creds", "creds"]),
    (PL,  false, "XOAUTH2", ["creds", "creds", "creds"]),
    (CPL, false, "XOAUTH2", ["creds", "creds", "creds"]),
    (ALL, false, "XOAUTH2", ["creds", "creds", "creds"]),
    (XP,  false, "XOAUTH2", ["creds", "creds", "creds"]),
    (L,   false, "XOAUTH2", ["creds", "creds", "creds"]),
    // Password, explicit SCRAM-SHA-256.
    (N,   false, "SCRAM-SHA-256", ["offered", "offered", "offered"]),
    (PL,  false, "SCRAM-SHA-256", ["offered", "offered", "offered"]),
    (CPL, false, "SCRAM-SHA-256", ["offered", "offered", "offered"]),
    (ALL, false, "SCRAM-SHA-256", [SCRAM, SCRAM, SCRAM]),
    (XP,  false, "SCRAM-SHA-256", ["offered", "offered", "offered"]),
    (L,   false, "SCRAM-SHA-256", ["offered", "offered", "offered"]),
    // Token, auto: XOAUTH2 only, and never automatically in the clear.
    (N,   true, "auto", ["none", "none", "none"]),
    (PL,  true, "auto", ["none", "none", "none"]),
    (CPL, true, "auto", ["none", "none", "none"]),
    (ALL, true, "auto", [XOAUTH2, "none", "none"]),
    (XP,  true, "auto", [XOAUTH2, "none", "none"]),
    (L,   true, "auto", ["none", "none", "none"]),
    // Token, explicit password mechanisms: wrong credentials, whatever is offered.
    (N,   true, "PLAIN", ["creds", "creds", "creds"]),
    (PL,  true, "PLAIN", ["creds", "creds", "creds"]),
    (CPL, true, "PLAIN", ["creds", "creds", "creds"]),
    (ALL, true, "PLAIN", ["creds", "creds", "creds"]),
    (XP,  true, "PLAIN", ["creds", "creds", "creds"]),
    (L,   true, "PLAIN", ["creds", "creds", "creds"]),
    (N,   true, "LOGIN", ["creds", "creds", "creds"]),
    (PL,  true, "LOGIN", ["creds", "creds", "creds"]),
    (CPL, true, "LOGIN", ["creds", "creds", "creds"]),
    (ALL, true, "LOGIN", ["creds", "creds", "creds"]),
    (XP,  true, "LOGIN", ["creds", "creds", "creds"]),
    (L,   true, "LOGIN", ["creds", "creds", "creds"]),
    (N,   true, "CRAM-MD5", ["creds", "creds", "creds"]),
    (PL,  true, "CRAM-MD5", ["creds", "creds", "creds"]),
    (CPL, true, "CRAM-MD5", ["creds", "creds", "creds"]),
    (ALL, true, "CRAM-MD5", ["creds", "creds", "creds"]),
    (XP,  true, "CRAM-MD5", ["creds", "creds", "creds"]),
    (L,   true, "CRAM-MD5", ["creds", "creds", "creds"]),
    (N,   true, "SCRAM-SHA-256", ["creds", "creds", "creds"]),
    (PL,  true, "SCRAM-SHA-256", ["creds", "creds", "creds"]),
    (CPL, true, "SCRAM-SHA-256", ["creds", "creds", "creds"]),
    (ALL, true, "SCRAM-SHA-256", ["creds", "creds", "creds"]),
    (XP,  true, "SCRAM-SHA-256", ["creds", "creds", "creds"]),
    (L,   true, "SCRAM-SHA-256", ["creds", "creds", "creds"]),
    // Token, explicit XOAUTH2: in the clear only under policy None.
    (N,   true, "XOAUTH2", ["offered", "offered", "offered"]),
    (PL,  true, "XOAUTH2", ["offered", "offered", "offered"]),
    (CPL, true, "XOAUTH2", ["offered", "offered", "offered"]),
    (ALL, true, "XOAUTH2", [XOAUTH2, "reveal", XOAUTH2]),
    (XP,  true, "XOAUTH2", [XOAUTH2, "reveal", XOAUTH2]),
    (L,   true, "XOAUTH2", ["offered", "offered", "offered"]),
];

#[test]
fn choose_mechanism_table() {
    for &(offered, oauth2, choice, [tls, clear, clear_none]) in TABLE {
        let row = format!("offered {offered:?}, token {oauth2}, {choice}");
        // With TLS the encryption policy makes no difference.
        assert_eq!(
            outcome(offered, oauth2, choice, true, false),
            tls,
            "{row}, TLS"
        );
        assert_eq!(
            outcome(offered, oauth2, choice, true, true),
            tls,
            "{row}, TLS, policy None"
        );
        assert_eq!(
            outcome(offered, oauth2, choice, false, false),
            clear,
            "{row}, clear"
        );
        assert_eq!(
            outcome(offered, oauth2, choice, false, true),
            clear_none,
            "{row}, clear, policy None"
        );
    }
}

#[test]
fn choose_mechanism_table_covers_every_combination() {
    for offered in OFFERED_SETS {
        for oauth2 in [false, true] {
            for choice in CHOICES {
                let rows = TABLE
                    .iter()
                    .filter(|r| r.0 == offered && r.1 == oauth2 && r.2 == choice)
                    .count();
                assert_eq!(rows, 1, "offered {offered:?}, token {oauth2}, {choice}");
            }
        }
    }
    assert_eq!(TABLE.len(), OFFERED_SETS.len() * 2 * CHOICES.len());
}

#[test]
fn choose_mechanism_checks_credentials() {
    let nul = Credentials::Password {
        username: "user".to_owned(),
        password: Secret::new("pa\0ss"),
    };
    let offered = vec!["PLAIN".to_owned()];
    assert!(matches!(
        choose_mechanism(&offered, &nul, AuthChoice::Auto, true, false),
        Err(SaslError::InvalidCredentials {
            mechanism: Mechanism::Plain,
            ..
        })
    ));
    let empty_user = Credentials::Password {
        username: String::new(),
        password: Secret::new("x"),
    };
    assert!(matches!(
        choose_mechanism(&offered, &empty_user, AuthChoice::Auto, true, false),
        Err(SaslError::InvalidCredentials { .. })
    ));
    let bad_token = Credentials::OAuth2 {
        username: "u".to_owned(),
        token: Secret::new("a\x01b"),
    };
    assert!(matches!(
        choose_mechanism(
            &["XOAUTH2".to_owned()],
            &bad_token,
            AuthChoice::Auto,
            true,
            false
        ),
        Err(SaslError::InvalidCredentials { .. })
    ));
}

#[test]
fn xoauth2_refuses_credentials_that_could_inject_fields() {
    // ^A separates XOAUTH2's fields: in the username it would let the
    // username write an `auth=` field of its own; white space or control
    // characters in a bearer token are never valid and could end it early.
    let reason = |username: &str, token: &str| {
        let credentials = Credentials::OAuth2 {
            username: username.to_owned(),
            token: Secret::new(token),
        };
        match Mechanism::XOAuth2.check_credentials(&credentials) {
            Err(SaslError::InvalidCredentials { reason, .. }) => Some(reason),
            Err(e) => panic!("{e:?}"),
            Ok(()) => None,
        }
    };
    let separator =
        Some("the username or token contains a ^A character, which XOAUTH2 uses as separator");
    let spacing = Some("the token contains white space or control characters");
    assert_eq!(reason("u\x01auth=Bearer evil", "tok"), separator);
    assert_eq!(reason("u", "to\x01k"), separator);
    assert_eq!(reason("u", "to k"), spacing);
    assert_eq!(reason("u", "tok\x07"), spacing);
    assert_eq!(reason("u", "tok\u{2028}"), spacing);
    assert_eq!(reason("u@example.org", "ya29.a-b_c~d+e/f="), None);
}

#[test]
fn error_messages_say_what_to_do() {
    let clear = choose_mechanism(&["PLAIN".to_owned()], &pw(), AuthChoice::Auto, false, false)
        .expect_err("PLAIN is not used automatically in the clear")
        .to_string();
    assert!(
        clear.contains("the policy required")
            && clear.contains("465")
            && clear.contains("the policy none"),
        "{clear}"
    );
    assert!(clear.contains("it offers: PLAIN"), "{clear}");
    let reveal = choose_mechanism(
        &["PLAIN".to_owned()],
        &pw(),
        AuthChoice::Explicit(Mechanism::Plain),
        false,
        false,
    )
    .expect_err("explicit PLAIN in the clear needs policy None")
    .to_string();
    assert!(
        reveal.contains("unencrypted") && reveal.contains("the policy required"),
        "{reveal}"
    );
    let not_offered = choose_mechanism(
        &["LOGIN".to_owned(), "X\x1b[2J".to_owned()],
        &pw(),
        AuthChoice::Explicit(Mechanism::ScramSha256),
        true,
        false,
    )
    .expect_err("not offered")
    .to_string();
    // The server's names are shown with control characters escaped.
    assert!(
        not_offered.contains("it offers: LOGIN X\\u{1b}[2J"),
        "{not_offered}"
    );
    let nothing = choose_mechanism(&[], &pw(), AuthChoice::Auto, true, false)
        .expect_err("nothing offered")
        .to_string();
    assert!(nothing.contains("it offers: none"), "{nothing}");
}

fn respond(auth: &mut Authenticator, challenge: &str) -> Result<String, SaslError> {
    auth.respond(challenge).map(|s| s.expose().to_owned())
}

#[test]
fn rfc7677_through_authenticator() {
    // The RFC's client nonce is the base64 text of these 15 bytes.
    let nonce = STANDARD
        .decode("rOprNGfwEbeRWgbNEkqO")
        .expect("valid base64");
    let mut auth = Authenticator::new(Mechanism::ScramSha256, &pw(), &nonce);
    assert_eq!(auth.mechanism(), Mechanism::ScramSha256);
    let ir = auth
        .initial_response()
        .expect("SCRAM has an initial response");
    assert_eq!(ir.expose(), b64("n,,n=user,r=rOprNGfwEbeRWgbNEkqO"));
    let server_first =
        "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
    assert_eq!(
        respond(&mut auth, &format!(" {} ", b64(server_first))),
        Ok(b64(
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        ))
    );
    // A 235 here would be a server fault: it has not proved anything yet.
    assert!(!auth.server_verified());
    assert_eq!(
        respond(
            &mut auth,
            &b64("v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
        ),
        Ok(String::new())
    );
    assert!(auth.server_verified());
    assert_eq!(auth.error_detail(), None);
}

#[test]
fn scram_without_initial_response() {
    let mut auth = Authenticator::new(Mechanism::ScramSha256, &pw(), &[1; 18]);
    assert_eq!(
        respond(&mut auth, ""),
        Ok(b64("n,,n=user,r=AQEBAQEBAQEBAQEBAQEBAQEB"))
    );
}

#[test]
fn scram_wrong_signature_and_server_error() {
    let nonce = STANDARD
        .decode("rOprNGfwEbeRWgbNEkqO")
        .expect("valid base64");
    let server_first = b64(
        "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
    );
    let mut auth = Authenticator::new(Mechanism::ScramSha256, &pw(), &nonce);
    let _ = auth.initial_response();
    respond(&mut auth, &server_first).expect("valid server-first");
    let wrong = b64("v=AAAATRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=");
    assert_eq!(
        respond(&mut auth, &wrong),
        Err(SaslError::ServerSignatureMismatch)
    );
    assert!(!auth.server_verified());
    // Once failed, it stays failed.
    assert_eq!(
        respond(&mut auth, ""),
        Err(SaslError::ServerSignatureMismatch)
    );

    let mut auth = Authenticator::new(Mechanism::ScramSha256, &pw(), &nonce);
    let _ = auth.initial_response();
    respond(&mut auth, &server_first).expect("valid server-first");
    assert!(matches!(
        respond(&mut auth, &b64("e=other-error\r\n")),
        Err(SaslError::ServerError { .. })
    ));
    assert_eq!(auth.error_detail(), Some("other-error\\r\\n"));
}

#[test]
fn scram_needs_a_nonce() {
    let mut auth = Authenticator::new(Mechanism::ScramSha256, &pw(), &[]);
    assert_eq!(auth.initial_response(), None);
    assert_eq!(
        respond(&mut auth, ""),
        Err(SaslError::NonceTooShort { len: 0 })
    );
    let mut auth = Authenticator::new(Mechanism::ScramSha256, &pw(), &[0; MIN_NONCE_LEN - 1]);
    assert_eq!(auth.initial_response(), None);
    let mut auth = Authenticator::new(Mechanism::ScramSha256, &pw(), &[0; MIN_NONCE_LEN]);
    assert!(auth.initial_response().is_some());
}

#[test]
fn mismatched_credentials_do_not_authenticate() {
    let mut auth = Authenticator::new(Mechanism::Plain, &tok(), &[]);
    assert_eq!(auth.initial_response(), None);
    assert!(matches!(
        respond(&mut auth, ""),
        Err(SaslError::CredentialsMismatch { .. })
    ));
    let mut auth = Authenticator::new(Mechanism::XOAuth2, &pw(), &[]);
    assert_eq!(auth.initial_response(), None);
    assert!(matches!(
        respond(&mut auth, ""),
        Err(SaslError::CredentialsMismatch { .. })
    ));
}

#[test]
fn plain_login_xoauth2_cram_through_authenticator() {
    let mut auth = Authenticator::new(Mechanism::Plain, &pw(), &[]);
    assert_eq!(
        auth.initial_response().map(|s| s.expose().to_owned()),
        Some(b64("\0user\0pencil"))
    );
    assert!(!auth.server_verified());

    let mut auth = Authenticator::new(Mechanism::Login, &pw(), &[]);
    assert_eq!(auth.initial_response(), None);
    assert_eq!(respond(&mut auth, "VXNlcm5hbWU6"), Ok(b64("user")));
    assert_eq!(respond(&mut auth, "UGFzc3dvcmQ6"), Ok(b64("pencil")));
    assert!(matches!(
        respond(&mut auth, "UGFzc3dvcmQ6"),
        Err(SaslError::UnexpectedChallenge { .. })
    ));

    let tim = Credentials::Password {
        username: "tim".to_owned(),
        password: Secret::new("tanstaaftanstaaf"),
    };
    let mut auth = Authenticator::new(Mechanism::CramMd5, &tim, &[]);
    assert_eq!(auth.initial_response(), None);
    assert_eq!(
        respond(
            &mut auth,
            &b64("<1896.697170952@postoffice.reston.mci.net>")
        ),
        Ok(b64("tim b913a602c7eda7a495b4e6e7334d3890"))
    );

    let mut auth = Authenticator::new(Mechanism::XOAuth2, &tok(), &[]);
    assert_eq!(
        auth.initial_response().map(|s| s.expose().to_owned()),
        Some(b64(
            "user=user@example.com\x01auth=Bearer ya29.token\x01\x01"
        ))
    );
    let json = r#"{"status":"400","schemes":"Bearer","scope":"https://mail.google.com/"}"#;
    assert_eq!(respond(&mut auth, &b64(json)), Ok(String::new()));
    assert_eq!(auth.error_detail(), Some(json));
}

#[test]
fn an_initial_response_beyond_the_512_octet_auth_line_waits_for_the_334() {
    // "AUTH PLAIN " + base64 + CRLF: 6 bytes of NULs and "user" plus a
    // 366-character password encode to 496 characters, a 509-octet
    // line; one more character makes 500 and 513 octets.
    let with_password = |len: usize| Credentials::Password {
        username: "user".to_owned(),
        password: Secret::new("p".repeat(len)),
    };
    let mut auth = Authenticator::new(Mechanism::Plain, &with_password(366), &[]);
    let sent = auth.initial_response_within_limit().expect("fits");
    assert_eq!(sent.expose().len(), 496);
    assert!(matches!(
        respond(&mut auth, ""),
        Err(SaslError::UnexpectedChallenge { .. })
    ));

    let mut auth = Authenticator::new(Mechanism::Plain, &with_password(367), &[]);
    assert_eq!(auth.initial_response_within_limit(), None);
    let later = respond(&mut auth, "").expect("the response follows the empty 334");
    assert_eq!(later.len(), 500);
    assert_eq!(later, b64(&format!("\0user\0{}", "p".repeat(367))));

    // Mechanisms without an initial response have none to hold back.
    let mut auth = Authenticator::new(Mechanism::Login, &pw(), &[]);
    assert_eq!(auth.initial_response_within_limit(), None);
}

#[test]
fn a_derived_key_is_taken_only_while_a_derivation_is_pending() {
    let nonce = STANDARD.decode("rOprNGfwEbeRWgbNEkqO").unwrap();
    let mut auth = Authenticator::new(Mechanism::ScramSha256, &pw(), &nonce);
    let _ = auth.initial_response();
    let server_first =
        "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
    let Ok(Answer::Derive(job)) = auth.answer(&b64(server_first)) else {
        panic!("SCRAM hands its derivation out");
    };
    assert!(auth.is_deriving());
    let key = job.run();
    // Another mechanism, or SCRAM before its server-first-message: misuse.
    let mut other = Authenticator::new(Mechanism::Plain, &pw(), &[]);
    assert_eq!(
        other.derived(key.clone()),
        Err(SaslError::NoDerivationPending)
    );
    let mut early = Authenticator::new(Mechanism::ScramSha256, &pw(), &nonce);
    assert_eq!(
        early.derived(key.clone()),
        Err(SaslError::NoDerivationPending)
    );
    assert!(auth.derived(key.clone()).is_ok());
    assert!(!auth.is_deriving());
    assert_eq!(auth.derived(key), Err(SaslError::NoDerivationPending));
}

#[test]
fn debug_output_never_shows_the_password_or_derived_key() {
    let nonce = STANDARD.decode("rOprNGfwEbeRWgbNEkqO").unwrap();
    let mut auth = Authenticator::new(Mechanism::ScramSha256, &pw(), &nonce);
    let _ = auth.initial_response();
    let server_first =
        "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
    let Ok(Answer::Derive(job)) = auth.answer(&b64(server_first)) else {
        panic!("SCRAM hands its derivation out");
    };
    let shown = format!("{job:?}");
    assert_eq!(shown, "KeyDerivation { iterations: 4096, .. }");
    let key = job.run();
    assert_eq!(format!("{key:?}"), "<redacted>");
    let shown = format!("{auth:?}");
    assert!(
        shown.starts_with("Authenticator { mechanism: ScramSha256") && !shown.contains("pencil"),
        "{shown}"
    );
}

#[test]
fn an_equals_sign_is_the_empty_challenge() {
    // The server asks for the response held back from the AUTH line.
    let mut auth = Authenticator::new(Mechanism::Plain, &pw(), &[]);
    assert_eq!(respond(&mut auth, "="), Ok(b64("\0user\0pencil")));
    let mut auth = Authenticator::new(Mechanism::Plain, &pw(), &[]);
    assert_eq!(respond(&mut auth, "  "), Ok(b64("\0user\0pencil")));
}

#[test]
fn malformed_challenges_are_errors() {
    let too_long = "A".repeat(MAX_CHALLENGE_LEN + 4);
    for m in [
        Mechanism::CramMd5,
        Mechanism::XOAuth2,
        Mechanism::ScramSha256,
        Mechanism::Plain,
    ] {
        for bad in ["!!!", "QQ", "QQ=", "Q Q==", too_long.as_str()] {
            let creds = if m == Mechanism::XOAuth2 { tok() } else { pw() };
            let mut auth = Authenticator::new(m, &creds, &[9; 18]);
            let _ = auth.initial_response();
            let got = respond(&mut auth, bad);
            assert!(
                matches!(got, Err(SaslError::InvalidChallenge { .. })),
                "{m} {bad:?}: {got:?}"
            );
        }
    }
}

fn any_challenge() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        proptest::collection::vec(any::<u8>(), 0..64).prop_map(|b| STANDARD.encode(b)),
        "[ -~]{0,40}".prop_map(|s| STANDARD.encode(s)),
        // SCRAM server-first-messages that get past the nonce check; the
        // iteration counts stay small or invalid to keep the test fast.
        (
            "[!-+\\--~]{0,8}",
            "[A-Za-z0-9+/=,]{0,12}",
            prop_oneof![
                Just("4096"),
                Just("1"),
                Just(""),
                Just("9999999999"),
                Just("x")
            ],
            "[ -~]{0,8}"
        )
            .prop_map(|(tail, salt, i, ext)| STANDARD.encode(format!(
                "r=AAAAAAAAAAAAAAAAAAAAAAAA{tail},s={salt},i={i}{ext}"
            ))),
        "[ -~]{0,40}".prop_map(|s| STANDARD.encode(format!("v={s}"))),
        "[ -~]{0,40}".prop_map(|s| STANDARD.encode(format!("e={s}"))),
    ]
}

proptest! {
    #[test]
    fn respond_never_panics(
        mechanism in proptest::sample::select(Mechanism::ALL.to_vec()),
        send_initial in any::<bool>(),
        challenges in proptest::collection::vec(any_challenge(), 0..5),
    ) {
        let creds = if mechanism == Mechanism::XOAuth2 { tok() } else { pw() };
        // 18 zero bytes: the client nonce is "AAAAAAAAAAAAAAAAAAAAAAAA".
        let mut auth = Authenticator::new(mechanism, &creds, &[0; 18]);
        if send_initial {
            let _ = auth.initial_response();
        }
        let mut failed = None;
        for c in &challenges {
            match auth.respond(c) {
                Ok(r) => {
                    prop_assert!(failed.is_none());
                    prop_assert!(r.expose().is_empty() || STANDARD.decode(r.expose()).is_ok());
                }
                Err(e) => {
                    // Errors are sticky.
                    if let Some(first) = &failed {
                        prop_assert_eq!(first, &e);
                    }
                    failed = Some(e);
                }
            }
        }
        let _ = auth.error_detail();
        let _ = auth.server_verified();
    }
}

#[test]
fn every_error_names_whose_fault_it_is() {
    use super::SaslFault;
    let m = Mechanism::Plain;
    let cases = [
        (
            SaslError::UnknownMechanism { name: "X".into() },
            SaslFault::Configuration,
        ),
        (
            SaslError::NotOffered {
                mechanism: m,
                offered: vec![],
            },
            SaslFault::Configuration,
        ),
        (
            SaslError::WouldRevealSecret { mechanism: m },
            SaslFault::Policy,
        ),
        (
            SaslError::NoUsableMechanism {
                offered: vec![],
                tls: false,
                oauth2: false,
            },
            SaslFault::Policy,
        ),
        (
            SaslError::NoUsableMechanism {
                offered: vec![],
                tls: true,
                oauth2: false,
            },
            SaslFault::Server,
        ),
        (SaslError::ServerSignatureMismatch, SaslFault::Server),
        (
            SaslError::TooManyIterations {
                requested: 9,
                limit: 1,
            },
            SaslFault::Server,
        ),
        (SaslError::NonceTooShort { len: 0 }, SaslFault::Misuse),
        (SaslError::NoDerivationPending, SaslFault::Misuse),
    ];
    for (e, fault) in cases {
        assert_eq!(e.fault(), fault, "{e}");
    }
}

#[test]
fn every_form_auth_sends_a_password_in_is_redacted() {
    let c = Credentials::Password {
        username: "alice".into(),
        password: Secret::new("S3cr3t-Pw"),
    };
    let plain = STANDARD.encode("\0alice\0S3cr3t-Pw");
    let login = STANDARD.encode("S3cr3t-Pw");
    let text = format!("451 you sent {plain} and {login}, i.e. S3cr3t-Pw");
    let out = c.redact(&text);
    assert_eq!(
        out,
        "451 you sent <redacted> and <redacted>, i.e. <redacted>"
    );
    assert_eq!(c.redact("nothing secret"), "nothing secret");
    // PLAIN's form contains LOGIN's: the whole of it goes.
    let c = Credentials::Password {
        username: "u".into(),
        password: Secret::new("S3cr3t-Pw"),
    };
    assert_eq!(c.redact("AHUAUzNjcjN0LVB3"), "<redacted>");
}
