use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use proptest::prelude::*;

use super::*;

fn password(user: &str, pass: &str) -> Credentials {
    Credentials::Password {
        username: user.into(),
        password: Secret::new(pass),
    }
}

fn token() -> Credentials {
    Credentials::OAuth2 {
        username: "user@example.com".into(),
        token: Secret::new("ya29.token"),
    }
}

fn enc(s: &str) -> String {
    STANDARD.encode(s)
}

fn dec(s: &Secret) -> String {
    String::from_utf8(STANDARD.decode(s.expose()).unwrap()).unwrap()
}

#[test]
fn names() {
    for m in Mechanism::ALL {
        assert_eq!(Mechanism::from_name(&m.name().to_lowercase()), Some(m));
        assert_eq!(m.to_string().parse::<Mechanism>(), Ok(m));
    }
    let err = "GSSAPI".parse::<Mechanism>().unwrap_err().to_string();
    assert!(err.contains("SCRAM-SHA-256"), "{err}");
}

#[test]
fn plain_exact_bytes() {
    let mut a = Authenticator::new(Mechanism::Plain, &password("tim", "tanstaaftanstaaf"), b"");
    assert_eq!(
        a.initial_response().unwrap().expose(),
        enc("\0tim\0tanstaaftanstaaf")
    );
    assert!(a.server_verified());
}

#[test]
fn login_answers_by_position() {
    let mut a = Authenticator::new(Mechanism::Login, &password("user", "pass"), b"");
    assert!(a.initial_response().is_none());
    // Prompts vary between servers; only their order matters.
    assert_eq!(dec(&a.respond(&enc("Whatever:")).unwrap()), "user");
    assert_eq!(dec(&a.respond(&enc("Something else:")).unwrap()), "pass");
    assert!(matches!(
        a.respond(&enc("again?")),
        Err(SaslError::UnexpectedChallenge { .. })
    ));
}

#[test]
fn cram_md5_rfc2195() {
    let mut a = Authenticator::new(
        Mechanism::CramMd5,
        &password("tim", "tanstaaftanstaaf"),
        b"",
    );
    assert!(a.initial_response().is_none());
    let r = a
        .respond(&enc("<1896.697170952@postoffice.reston.mci.net>"))
        .unwrap();
    assert_eq!(dec(&r), "tim b913a602c7eda7a495b4e6e7334d3890");
}

#[test]
fn xoauth2_exact_bytes_and_error_detail() {
    let mut a = Authenticator::new(Mechanism::XOAuth2, &token(), b"");
    assert_eq!(
        dec(&a.initial_response().unwrap()),
        "user=user@example.com\x01auth=Bearer ya29.token\x01\x01"
    );
    let json = r#"{"status":"401","schemes":"bearer","scope":"https://mail.google.com/"}"#;
    assert_eq!(a.respond(&enc(json)).unwrap().expose(), "");
    assert_eq!(a.error_detail(), Some(json));
}

#[test]
fn scram_sha256_rfc7677() {
    let creds = password("user", "pencil");
    let mut a = Authenticator::with_client_nonce(&creds, "rOprNGfwEbeRWgbNEkqO");
    assert_eq!(
        dec(&a.initial_response().unwrap()),
        "n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
    );
    let server_first =
        "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
    assert_eq!(
        dec(&a.respond(&enc(server_first)).unwrap()),
        "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
    );
    assert!(!a.server_verified(), "not before the server's proof");
    assert_eq!(
        a.respond(&enc("v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="))
            .unwrap()
            .expose(),
        ""
    );
    assert!(a.server_verified());
}

#[test]
fn scram_rejects_a_wrong_server_signature() {
    let mut a =
        Authenticator::with_client_nonce(&password("user", "pencil"), "rOprNGfwEbeRWgbNEkqO");
    let _ = a.initial_response();
    let server_first =
        "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
    a.respond(&enc(server_first)).unwrap();
    assert_eq!(
        a.respond(&enc("v=AAAATRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")),
        Err(SaslError::ServerSignatureMismatch)
    );
    assert!(!a.server_verified());
}

#[test]
fn scram_rejects_malformed_server_first() {
    let bad = [
        "r=otherNonce,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
        "r=rOprNGfwEbeRWgbNEkqO,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
        "r=rOprNGfwEbeRWgbNEkqOxyz,s=!!!,i=4096",
        "r=rOprNGfwEbeRWgbNEkqOxyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=1",
        "r=rOprNGfwEbeRWgbNEkqOxyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4000000000",
        "r=rOprNGfwEbeRWgbNEkqOxyz,s=W22ZaJ0SNY7soEsUEjb6gQ==",
        "e=unknown-user",
        "",
    ];
    for server_first in bad {
        let mut a =
            Authenticator::with_client_nonce(&password("user", "pencil"), "rOprNGfwEbeRWgbNEkqO");
        let _ = a.initial_response();
        assert!(
            matches!(
                a.respond(&enc(server_first)),
                Err(SaslError::InvalidChallenge { .. })
            ),
            "{server_first}"
        );
    }
    let mut a = Authenticator::new(Mechanism::CramMd5, &password("u", "p"), b"");
    assert!(matches!(
        a.respond("not base64!"),
        Err(SaslError::InvalidChallenge { .. })
    ));
}

#[test]
fn scram_nonce_from_random_bytes() {
    let mut a = Authenticator::new(
        Mechanism::ScramSha256,
        &password("us=er,x", "p"),
        &[0xfb; 18],
    );
    let first = dec(&a.initial_response().unwrap());
    assert!(first.starts_with("n,,n=us=3Der=2Cx,r="), "{first}");
    assert!(first.len() > "n,,n=us=3Der=2Cx,r=".len() + 20);
}

#[test]
fn secrets_never_print() {
    let creds = password("user", "hunter2");
    assert!(!format!("{creds:?}").contains("hunter2"));
    let a = Authenticator::new(Mechanism::Plain, &creds, b"");
    assert!(!format!("{a:?}").contains("hunter2"));
    assert_eq!(Secret::new("hunter2").to_string(), "<redacted>");
    assert!(!format!("{:?}", token()).contains("ya29"));
}

fn offered(names: &str) -> Vec<String> {
    names.split_whitespace().map(str::to_owned).collect()
}

/// (offered, credentials, choice, tls, plaintext allowed, expected).
type Case<'a> = (
    &'a str,
    &'a Credentials,
    AuthChoice,
    bool,
    bool,
    Option<Mechanism>,
);

#[test]
fn choose_mechanism_table() {
    use AuthChoice::{Auto, Explicit};
    use Mechanism::*;
    let pw = password("u", "p");
    let tok = token();
    let cases: Vec<Case<'_>> = vec![
        (
            "PLAIN LOGIN CRAM-MD5 SCRAM-SHA-256",
            &pw,
            Auto,
            true,
            false,
            Some(ScramSha256),
        ),
        (
            "PLAIN LOGIN CRAM-MD5",
            &pw,
            Auto,
            true,
            false,
            Some(CramMd5),
        ),
        ("LOGIN PLAIN", &pw, Auto, true, false, Some(Plain)),
        ("LOGIN", &pw, Auto, true, false, Some(Login)),
        ("LOGIN PLAIN", &pw, Auto, false, false, None),
        ("LOGIN PLAIN", &pw, Auto, false, true, None),
        (
            "LOGIN PLAIN CRAM-MD5",
            &pw,
            Auto,
            false,
            false,
            Some(CramMd5),
        ),
        ("SCRAM-SHA-256", &pw, Auto, false, false, Some(ScramSha256)),
        ("XOAUTH2", &pw, Auto, true, false, None),
        ("PLAIN XOAUTH2", &tok, Auto, true, false, Some(XOAuth2)),
        ("PLAIN", &tok, Auto, true, false, None),
        ("XOAUTH2", &tok, Auto, false, false, None),
        (
            "PLAIN LOGIN",
            &pw,
            Explicit(Login),
            true,
            false,
            Some(Login),
        ),
        ("PLAIN", &pw, Explicit(Login), true, false, None),
        ("PLAIN", &pw, Explicit(Plain), false, false, None),
        ("PLAIN", &pw, Explicit(Plain), false, true, Some(Plain)),
        (
            "CRAM-MD5",
            &pw,
            Explicit(CramMd5),
            false,
            false,
            Some(CramMd5),
        ),
        ("XOAUTH2", &pw, Explicit(XOAuth2), true, false, None),
        (
            "XOAUTH2",
            &tok,
            Explicit(XOAuth2),
            true,
            false,
            Some(XOAuth2),
        ),
        ("XOAUTH2", &tok, Explicit(XOAuth2), false, false, None),
        ("PLAIN", &tok, Explicit(Plain), true, false, None),
        ("plain", &pw, Explicit(Plain), true, false, Some(Plain)),
        ("", &pw, Auto, true, false, None),
    ];
    for (names, creds, choice, tls, clear, want) in cases {
        let got = choose_mechanism(&offered(names), creds, choice, tls, clear).ok();
        assert_eq!(got, want, "{names:?} {choice:?} tls={tls} clear={clear}");
    }
    let err = choose_mechanism(&offered("PLAIN LOGIN"), &pw, Auto, false, false).unwrap_err();
    assert!(err.to_string().contains("--tls required"), "{err}");
    let err = choose_mechanism(&offered("PLAIN"), &pw, Explicit(Plain), false, false).unwrap_err();
    assert_eq!(err, SaslError::WouldRevealSecret { mechanism: Plain });
}

proptest! {
    #[test]
    fn respond_never_panics(challenges in proptest::collection::vec(".{0,200}", 1..5), raw in any::<bool>()) {
        for m in Mechanism::ALL {
            let creds = if m == Mechanism::XOAuth2 { token() } else { password("u", "p") };
            let mut a = Authenticator::new(m, &creds, &[1; 18]);
            let _ = a.initial_response();
            for c in &challenges {
                let c = if raw { c.clone() } else { enc(c) };
                let _ = a.respond(&c);
            }
        }
    }
}
