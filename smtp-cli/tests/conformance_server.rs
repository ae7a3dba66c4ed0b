//! `smtp conformance server` against real servers started here: hostile
//! servers from smtp-testkit with one flaw each (every check seen to
//! FAIL) and a well-behaved one (every check passes); a throwaway Postfix
//! and aiosmtpd, each in a private directory on a free loopback port,
//! their verdicts pinned (see docs/conformance.md, "Server checker").

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Output;

use serde_json::Value;
use smtp_testkit::certs::{Identity, TestCa};
use smtp_testkit::hostile::{Flaws, HostileConfig, HostileServer};
use tokio::process::Command;

#[path = "conformance_server/servers.rs"]
mod servers;

const BIN: &str = env!("CARGO_BIN_EXE_smtp");
const RCPT: &str = "rcpt@server.test";

async fn checker(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(["conformance", "server"])
        .args(args)
        .output()
        .await
        .expect("smtp runs")
}

/// Runs the checker on `target` with --json: verdict and detail by check,
/// and the exit status.
async fn verdicts(
    target: &str,
    ca: &Path,
    extra: &[&str],
) -> (BTreeMap<String, (String, String)>, Option<i32>) {
    let mut args = vec![
        target,
        "--json",
        "--timeout",
        "5",
        "--rcpt",
        RCPT,
        "--ca-file",
        ca.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let out = checker(&args).await;
    let json: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let map = json["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .map(|c| {
            let s = |k: &str| c[k].as_str().unwrap_or("").to_owned();
            (s("id"), (s("verdict"), s("detail")))
        })
        .collect();
    (map, out.status.code())
}

struct Bench {
    ca: TestCa,
    dir: tempfile::TempDir,
}

impl Bench {
    fn new() -> Self {
        let ca = TestCa::new();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.cert_pem()).unwrap();
        Self { ca, dir }
    }

    fn ca_file(&self) -> std::path::PathBuf {
        self.dir.path().join("ca.pem")
    }

    fn valid(&self) -> Identity {
        self.ca.leaf(&["127.0.0.1", "localhost"])
    }

    /// A well-behaved hostile server, changed by `f`.
    async fn hostile(&self, f: impl FnOnce(&mut HostileConfig)) -> HostileServer {
        let mut config = HostileConfig {
            tls: Some(self.valid()),
            auth: Some(("user".into(), "secret".into())),
            local_domains: vec!["server.test".into()],
            ..HostileConfig::default()
        };
        f(&mut config);
        HostileServer::start(config).await.unwrap()
    }
}

const ALL: [&str; 8] = [
    "smuggling",
    "starttls-injection",
    "auth-plaintext",
    "pipelining",
    "open-relay",
    "vrfy-expn",
    "tls-version",
    "tls-certificate",
];

#[tokio::test]
async fn a_well_behaved_server_passes_every_check() {
    let bench = Bench::new();
    let server = bench.hostile(|_| {}).await;
    let target = server.addr().to_string();
    let (map, code) = verdicts(&target, &bench.ca_file(), &[]).await;
    for id in ALL {
        assert_eq!(map[id].0, "pass", "{id}: {:?}", map[id]);
    }
    assert_eq!(code, Some(0));
}

#[tokio::test]
async fn each_check_fails_on_the_server_with_its_flaw() {
    let bench = Bench::new();
    type Change = Box<dyn FnOnce(&mut HostileConfig)>;
    let cases: Vec<(&str, Change, &str)> = vec![
        (
            "smuggling",
            Box::new(|c| c.flaws.bare_lf_ends_data = true),
            "took these as the end of data and ran the smuggled commands: \\n.\\n (250 250 250 354 250), \\n.\\r\\n",
        ),
        (
            "starttls-injection",
            Box::new(|c| c.flaws.keep_input_after_starttls = true),
            "answered inside TLS the NOOP sent in plaintext before the handshake (250 2.0.0 ok)",
        ),
        (
            "auth-plaintext",
            Box::new(|c| c.auth_in_plaintext = true),
            "offers `AUTH PLAIN LOGIN` before STARTTLS (warning)",
        ),
        (
            "pipelining",
            Box::new(|c| c.flaws.drop_pipelined = true),
            "answered 1 of 4 pipelined commands (250), then: no reply within 5 s",
        ),
        (
            "open-relay",
            Box::new(|c| c.local_domains.clear()),
            "accepted RCPT TO:<relay-test@outside-2.example> from an unauthenticated client: an open relay",
        ),
        (
            "vrfy-expn",
            Box::new(|c| {
                c.flaws = Flaws {
                    answer_vrfy: true,
                    ..Flaws::default()
                }
            }),
            "answers `VRFY postmaster` with 250 2.1.5 Postmaster <postmaster@hostile.test> (warning)",
        ),
        (
            "tls-version",
            Box::new(|c| c.tls = None),
            "does not offer STARTTLS: mail to it travels in plaintext",
        ),
    ];
    for (id, change, says) in cases {
        let server = bench.hostile(change).await;
        let target = server.addr().to_string();
        let (map, code) = verdicts(&target, &bench.ca_file(), &["--checks", id]).await;
        let (verdict, detail) = &map[id];
        assert_eq!(verdict, "fail", "{id}: {detail}");
        assert!(
            detail.starts_with(says),
            "{id}: `{detail}` should start `{says}`"
        );
        assert!(!detail.contains('\n'));
        assert_eq!(code, Some(1), "{id}");
    }
}

#[tokio::test]
async fn bad_certificates_fail_naming_what_is_wrong() {
    let bench = Bench::new();
    let expired = bench.ca.expired_leaf(&["127.0.0.1"]);
    let wrong = bench.ca.leaf(&["wrong.example"]);
    let self_signed = Identity::self_signed(&["127.0.0.1"]);
    for (id, says) in [
        (expired, "the certificate expired"),
        (wrong, "the certificate is not valid for 127.0.0.1"),
        (self_signed, "the certificate is self-signed"),
    ] {
        let server = bench.hostile(|c| c.tls = Some(id)).await;
        let target = server.addr().to_string();
        let (map, code) =
            verdicts(&target, &bench.ca_file(), &["--checks", "tls-certificate"]).await;
        let (verdict, detail) = &map["tls-certificate"];
        assert_eq!(verdict, "fail");
        assert!(detail.starts_with(says), "`{detail}` should start `{says}`");
        assert_eq!(code, Some(1));
    }
    // Without --ca-file, the test CA is not trusted.
    let server = bench.hostile(|_| {}).await;
    let out = checker(&[
        &server.addr().to_string(),
        "--json",
        "--checks",
        "tls-certificate",
    ])
    .await;
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        json["cases"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("does not lead to a trusted CA"),
        "{json}"
    );
}

#[tokio::test]
async fn outside_loopback_it_needs_authorisation_and_a_recipient() {
    let out = checker(&["192.0.2.1:25"]).await;
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--i-am-authorised") && err.contains("not on this machine"),
        "{err}"
    );
    let out = checker(&["192.0.2.1:25", "--i-am-authorised"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--rcpt"));
    assert_eq!(
        checker(&["127.0.0.1:1", "--checks", "nope"])
            .await
            .status
            .code(),
        Some(2)
    );
    assert_eq!(checker(&[]).await.status.code(), Some(2));
}

#[tokio::test]
async fn junit_and_the_docs_list_every_check() {
    let out = checker(&["--list"]).await;
    assert_eq!(out.status.code(), Some(0));
    let list = String::from_utf8(out.stdout).unwrap();
    let docs = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/conformance.md"),
    )
    .unwrap();
    for id in ALL {
        assert!(list.contains(&format!("`{id}`")));
        assert!(docs.contains(&format!("`{id}`")), "docs lack `{id}`");
    }
    let bench = Bench::new();
    let server = bench.hostile(|c| c.flaws.answer_vrfy = true).await;
    let xml = bench.dir.path().join("junit.xml");
    let out = checker(&[
        &server.addr().to_string(),
        "--checks",
        "vrfy-expn,open-relay",
        "--junit",
        xml.to_str().unwrap(),
    ])
    .await;
    assert_eq!(out.status.code(), Some(1));
    let text = std::fs::read_to_string(&xml).unwrap();
    assert!(
        text.contains("classname=\"smtp.conformance.server\""),
        "{text}"
    );
    assert_eq!(text.matches("<testcase ").count(), 2, "{text}");
    assert_eq!(text.matches("<failure ").count(), 1, "{text}");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("vrfy-expn") && table.contains("FAIL"),
        "{table}"
    );
}

/// Every verdict, for the failure message.
fn show(map: &BTreeMap<String, (String, String)>) -> String {
    map.iter()
        .map(|(id, (v, d))| format!("{id}: {v} {d}"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test]
async fn a_hardened_postfix_passes_every_check() {
    let bench = Bench::new();
    let pf = servers::Postfix::start(&bench.valid(), servers::PostfixSetup::Hardened).await;
    let target = format!("127.0.0.1:{}", pf.port);
    let (map, code) = verdicts(&target, &bench.ca_file(), &[]).await;
    for id in ALL {
        assert_eq!(map[id].0, "pass", "{id}:\n{}\n{}", show(&map), pf.log());
    }
    assert_eq!(code, Some(0));
}

/// Postfix 3.7's default `smtpd_forbid_bare_newline = no` (Debian 12
/// ships 3.7.11, whose `yes` means "normalize": only CRLF.CRLF ends the
/// data): it ends the data at `\n.\n`, `\n.\r\n` and `\r\n.\n` and runs
/// the smuggled transaction (CVE-2023-51764). And with
/// `disable_vrfy_command = no`, VRFY answers 252 for postmaster and 550
/// for an unknown user: addresses can be told apart. The rest passes.
#[tokio::test]
async fn postfix_with_its_defaults_is_open_to_smuggling_and_vrfy() {
    let bench = Bench::new();
    let pf = servers::Postfix::start(&bench.valid(), servers::PostfixSetup::Defaults).await;
    let target = format!("127.0.0.1:{}", pf.port);
    let (map, code) = verdicts(&target, &bench.ca_file(), &[]).await;
    assert_eq!(
        map["smuggling"],
        (
            "fail".to_owned(),
            "took these as the end of data and ran the smuggled commands: \\n.\\n (250 250 250 354 250), \\n.\\r\\n (250 250 250 354 250), \\r\\n.\\n (250 250 250 354 250)".to_owned()
        ),
        "{}",
        show(&map)
    );
    assert_eq!(map["vrfy-expn"].0, "fail", "{}", show(&map));
    assert!(
        map["vrfy-expn"]
            .1
            .starts_with("VRFY accepts postmaster and refuses an unknown user (warning)"),
        "{}",
        show(&map)
    );
    for id in ALL
        .iter()
        .filter(|&&id| id != "smuggling" && id != "vrfy-expn")
    {
        assert_eq!(map[*id].0, "pass", "{id}:\n{}", show(&map));
    }
    assert_eq!(code, Some(1));
}

/// aiosmtpd 1.4.3 (Debian 12, +deb12u1: the CVE-2024-27305 fix) with its
/// Sink handler: safe from smuggling; no PIPELINING; and an open relay,
/// because its handlers decide whom to accept and Sink accepts anyone.
#[tokio::test]
async fn aiosmtpd_verdicts_are_pinned() {
    let bench = Bench::new();
    let server = servers::Aiosmtpd::start(&bench.valid()).await;
    let target = format!("127.0.0.1:{}", server.port);
    let (map, code) = verdicts(&target, &bench.ca_file(), &[]).await;
    for id in ALL {
        let want = match id {
            "open-relay" => "fail",
            "pipelining" => "skip",
            _ => "pass",
        };
        assert_eq!(map[id].0, want, "{id}:\n{}", show(&map));
    }
    assert!(
        map["open-relay"]
            .1
            .starts_with("accepted RCPT TO:<relay-test@outside-2.example>")
    );
    assert_eq!(map["pipelining"].1, "PIPELINING not advertised");
    assert_eq!(code, Some(1));
}

/// A scripted server on 127.0.0.1: greets, then answers each line with
/// `answer(line)` (None: close). One connection at a time, forever.
async fn scripted(answer: fn(&str) -> Option<Vec<u8>>) -> std::net::SocketAddr {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (r, mut w) = tcp.into_split();
                let mut lines = BufReader::new(r).lines();
                let _ = w.write_all(b"220 scripted\r\n").await;
                while let Ok(Some(line)) = lines.next_line().await {
                    match answer(&line) {
                        Some(bytes) => {
                            if w.write_all(&bytes).await.is_err() {
                                break;
                            }
                        }
                        None => break,
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn pipelining_fails_on_a_3xx_to_mail_and_starttls_injection_is_na_without_a_handshake() {
    let bench = Bench::new();
    let no_tls = scripted(|line| {
        let verb = line.get(..4).unwrap_or("").to_ascii_uppercase();
        Some(match verb.as_str() {
            "EHLO" => b"250-scripted\r\n250 PIPELINING\r\n".to_vec(),
            "MAIL" => b"354 go ahead\r\n".to_vec(),
            _ => b"250 ok\r\n".to_vec(),
        })
    })
    .await;
    let (map, _) = verdicts(
        &no_tls.to_string(),
        &bench.ca_file(),
        &["--checks", "pipelining"],
    )
    .await;
    assert_eq!(map["pipelining"].0, "fail", "{:?}", map["pipelining"]);
    assert!(
        map["pipelining"]
            .1
            .starts_with("answered MAIL with 354 go ahead: replies out of order"),
        "{:?}",
        map["pipelining"]
    );
    // A handshake that fails: plaintext where TLS should be.
    let broken_tls = scripted(|line| {
        let verb = line.get(..4).unwrap_or("").to_ascii_uppercase();
        Some(match verb.as_str() {
            "EHLO" => b"250-scripted\r\n250 STARTTLS\r\n".to_vec(),
            "STAR" => b"220 go\r\n".to_vec(),
            "NOOP" => Vec::new(),
            // The ClientHello (or a timeout): plaintext where TLS should be.
            _ => b"250 plaintext after STARTTLS\r\n".to_vec(),
        })
    })
    .await;
    let (map, _) = verdicts(
        &broken_tls.to_string(),
        &bench.ca_file(),
        &["--checks", "starttls-injection"],
    )
    .await;
    assert_eq!(
        map["starttls-injection"].0, "skip",
        "{:?}",
        map["starttls-injection"]
    );
}

#[tokio::test]
async fn bad_inputs_and_an_unreachable_server_are_usage_errors() {
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let target = free.local_addr().unwrap().to_string();
    drop(free);
    let out = checker(&[&target]).await;
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot connect to"), "{err}");
    assert!(
        out.stdout.is_empty(),
        "no table: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let bench = Bench::new();
    let server = bench.hostile(|_| {}).await;
    let target = server.addr().to_string();
    for bad in [
        ["--from", "a@b.test\r\nRSET"],
        ["--rcpt", "x@server.test>\r\nVRFY root"],
        ["--rcpt", ""],
        ["--relay-domain", "a.test\nNOOP"],
        ["--from", "<a@b.test>"],
    ] {
        let out = checker(&[&target, bad[0], bad[1]]).await;
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
    }
    assert!(
        server.sessions().iter().all(|s| s.commands.is_empty()),
        "nothing was sent"
    );
}

#[tokio::test]
async fn a_check_has_an_overall_deadline() {
    let bench = Bench::new();
    // A server that never greets: each session waits --timeout (5 s).
    let server = bench
        .hostile(|c| {
            c.fault = Some((
                smtp_testkit::hostile::Phase::Greeting,
                smtp_testkit::hostile::Fault::Silence,
            ));
        })
        .await;
    let target = server.addr().to_string();
    let started = std::time::Instant::now();
    let (map, code) = verdicts(
        &target,
        &bench.ca_file(),
        &["--checks", "smuggling", "--check-timeout", "1"],
    )
    .await;
    assert!(started.elapsed() < std::time::Duration::from_secs(4));
    assert_eq!(code, Some(1));
    assert_eq!(
        map["smuggling"].1,
        "the check did not finish within 1 s (--check-timeout)"
    );
}

#[tokio::test]
async fn fails_come_with_a_fix_and_loopback_notes_mynetworks() {
    let bench = Bench::new();
    let server = bench
        .hostile(|c| {
            c.local_domains.clear();
            c.flaws.bare_lf_ends_data = true;
        })
        .await;
    let target = server.addr().to_string();
    let out = checker(&[
        &target,
        "--rcpt",
        RCPT,
        "--ca-file",
        bench.ca_file().to_str().unwrap(),
        "--checks",
        "open-relay,smuggling",
    ])
    .await;
    let table = String::from_utf8_lossy(&out.stdout);
    let fixes: Vec<&str> = table
        .lines()
        .filter(|l| l.trim_start().starts_with("fix: "))
        .collect();
    assert_eq!(fixes.len(), 2, "{table}");
    assert!(fixes.iter().all(|l| l.contains("mynetworks")), "{table}");
    assert!(
        table.contains("smtpd_forbid_bare_newline_exclusions"),
        "{table}"
    );
    assert!(table.contains("reject_unauth_destination"), "{table}");
}

#[tokio::test]
async fn it_authenticates_for_the_test_messages_and_never_prints_the_password() {
    let bench = Bench::new();
    let server = bench.hostile(|_| {}).await;
    let target = server.addr().to_string();
    let pw = bench.dir.path().join("pw");
    std::fs::write(&pw, "secret\n").unwrap();
    let out = checker(&[
        &target,
        "--rcpt",
        RCPT,
        "--ca-file",
        bench.ca_file().to_str().unwrap(),
        "--checks",
        "smuggling,pipelining",
        "--user",
        "user",
        "--password-file",
        pw.to_str().unwrap(),
    ])
    .await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let auths = server
        .sessions()
        .iter()
        .filter(|s| s.sent("AUTH", Some(true)))
        .count();
    assert_eq!(auths, 7, "six smuggling sessions and the pipelining one");
    // A wrong password: refused, and still not printed.
    std::fs::write(&pw, "wrong-secret\n").unwrap();
    let out = checker(&[
        &target,
        "--rcpt",
        RCPT,
        "--checks",
        "smuggling",
        "--user",
        "user",
        "--password-file",
        pw.to_str().unwrap(),
        "--ca-file",
        bench.ca_file().to_str().unwrap(),
    ])
    .await;
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(all.contains("AUTH as user refused"), "{all}");
    assert!(!all.contains("wrong-secret"), "{all}");
}

#[tokio::test]
async fn our_own_sink_is_not_open_to_smuggling() {
    use tokio::io::AsyncBufReadExt;
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = free.local_addr().unwrap().to_string();
    drop(free);
    let mut sink = Command::new(BIN)
        .args(["sink", "--listen", &addr])
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(sink.stderr.take().unwrap()).lines();
    let first = lines.next_line().await.unwrap().unwrap_or_default();
    assert!(first.contains("listening on"), "{first}");
    let bench = Bench::new();
    let (map, _) = verdicts(&addr, &bench.ca_file(), &["--checks", "smuggling"]).await;
    assert_eq!(map["smuggling"].0, "pass", "{:?}", map["smuggling"]);
    assert!(
        map["smuggling"].1.contains("\\n.\\n rejected: 550 5.5.2"),
        "{:?}",
        map["smuggling"]
    );
}
