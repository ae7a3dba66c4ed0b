//! `smtp conformance client` run against real clients: our own `smtp`
//! (every case passes), msmtp, swaks and curl from Debian (each matches
//! the verdicts its profile pins), and a deliberately broken client
//! (each judge seen to FAIL with its one line). A peer that is missing
//! fails its test: CI installs them (.ci/run).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_smtp");
/// Short enough to keep the file under two minutes; the clients' own
/// timeouts are a quarter of it.
const DEADLINE: &str = "9";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_owned()
}

fn profile(name: &str) -> PathBuf {
    root()
        .join("conformance/profiles")
        .join(format!("{name}.toml"))
}

async fn conformance(args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("conformance")
        .arg("client")
        .args(args)
        .output()
        .await
        .expect("smtp runs")
}

/// Runs the suite as `args` say, with --json; the verdicts by case id and
/// the whole object.
async fn verdicts(args: &[&str]) -> (BTreeMap<String, (String, String)>, Value, Option<i32>) {
    let mut all = vec!["--json", "--deadline", DEADLINE, "--jobs", "12"];
    all.extend_from_slice(args);
    let out = conformance(&all).await;
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
            (
                c["id"].as_str().unwrap_or("").to_owned(),
                (
                    c["verdict"].as_str().unwrap_or("").to_owned(),
                    c["detail"].as_str().unwrap_or("").to_owned(),
                ),
            )
        })
        .collect();
    (map, json, out.status.code())
}

fn require(program: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "{program} is not installed: the conformance tests need it (apt-get install {program})"
    );
}

/// The peer's verdicts match its profile's pins; prints them all.
async fn matches_its_pins(name: &str) {
    require(name);
    let p = profile(name);
    let (map, json, code) = verdicts(&["--profile", p.to_str().unwrap(), "--pinned"]).await;
    let off: Vec<String> = json["cases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| {
            c["verdict"]
                != c["expected"]
                    .as_str()
                    .map_or(Value::from("pass"), Value::from)
        })
        .map(|c| {
            format!(
                "{}: {} ({}), pinned {}",
                c["id"], c["verdict"], c["detail"], c["expected"]
            )
        })
        .collect();
    assert!(
        off.is_empty(),
        "{name} differs from its pins:\n{}\nall: {map:#?}",
        off.join("\n")
    );
    assert_eq!(code, Some(0), "--pinned exits 0 when every verdict matches");
}

#[tokio::test]
async fn our_smtp_passes_every_case() {
    let p = profile("smtp");
    let (map, _, code) = verdicts(&["--profile", p.to_str().unwrap()]).await;
    let bad: Vec<_> = map.iter().filter(|(_, (v, _))| v != "pass").collect();
    assert!(bad.is_empty(), "{bad:#?}");
    assert_eq!(code, Some(0));
}

#[tokio::test]
async fn msmtp_matches_its_pinned_verdicts() {
    matches_its_pins("msmtp").await;
}

#[tokio::test]
async fn swaks_matches_its_pinned_verdicts() {
    matches_its_pins("swaks").await;
}

#[tokio::test]
async fn curl_matches_its_pinned_verdicts() {
    matches_its_pins("curl").await;
}

/// The broken client's command line, with the placeholders.
fn broken() -> Vec<String> {
    broken_with(&[])
}

/// The broken client with its own flags (`--sloppy`) first.
fn broken_with(flags: &[&str]) -> Vec<String> {
    let script = root().join("tests/conformance/broken_client.py");
    let mut v = vec!["python3".to_owned(), script.to_string_lossy().into_owned()];
    v.extend(flags.iter().map(|f| (*f).to_owned()));
    v.extend(
        [
            "{host}",
            "{port}",
            "{from}",
            "{password-file}",
            "{message}",
            "{to}",
        ]
        .map(str::to_owned),
    );
    v
}

#[tokio::test]
async fn a_broken_client_fails_each_judge_with_its_one_line() {
    require("python3");
    let cmd = broken();
    let mut args = vec!["--verifies-certificates", "--"];
    args.extend(cmd.iter().map(String::as_str));
    let (map, _, code) = verdicts(&args).await;
    assert_eq!(code, Some(1), "a failed case makes exit 1");
    for (id, says) in [
        (
            "starttls-missing",
            "sent MAIL FROM without TLS, though it requires TLS",
        ),
        (
            "starttls-injection",
            "took the reply injected before the TLS handshake",
        ),
        (
            "starttls-stripped-auth",
            "sent the password in the clear (no TLS)",
        ),
        (
            "cert-self-signed",
            "sent AUTH over TLS to a server whose certificate is self-signed",
        ),
        (
            "auth-refused",
            "sent MAIL FROM after its authentication was refused",
        ),
        ("rcpt-partial", "partial rejection not reported"),
        (
            "rcpt-all-refused",
            "sent DATA after every recipient was refused",
        ),
        (
            "lost-after-dot",
            "exited 0 after the connection was lost before the reply",
        ),
        ("421-dot", "exited 0 after a 421 to the end of data"),
        ("silent-greeting", "hung: still running after"),
        ("drip-greeting", "hung: still running after"),
        (
            "ehlo-refused",
            "sent MAIL FROM after EHLO was refused, without HELO",
        ),
        ("pipelining-held", "sent the message body before the 354"),
        (
            "size-exceeded",
            "sent the message body though it is larger than the advertised SIZE",
        ),
        ("data-bare-cr", "put a bare CR on the wire inside DATA"),
        ("data-lf-dot-lf", "put a bare LF on the wire inside DATA"),
        ("data-dot-lines", "ended the data early"),
    ] {
        let (verdict, detail) = &map[id];
        assert_eq!(verdict, "fail", "{id}: {detail}");
        assert!(
            detail.starts_with(says),
            "{id}: `{detail}` should start `{says}`"
        );
        assert!(!detail.contains('\n'), "{id}: one line");
    }
    // The same judges pass: the broken client does deliver a plain message.
    assert_eq!(map["baseline"].0, "pass");
    assert_eq!(map["implicit-tls"].0, "skip");
}

#[tokio::test]
async fn a_sloppy_client_fails_the_judges_the_broken_one_cannot_reach() {
    // No EHLO, no STARTTLS, one command at a time, exit 1 always: MAIL in
    // the clear (TlsOnly), a message delivered past a server that refused
    // EHLO with 421 (NotDelivered), exit 1 after a delivery (ExitZero).
    require("python3");
    let cmd = broken_with(&["--sloppy"]);
    let mut args = vec!["--cases", "baseline,421-ehlo,pipelining-held", "--"];
    args.extend(cmd.iter().map(String::as_str));
    let (map, _, code) = verdicts(&args).await;
    assert_eq!(code, Some(1));
    for (id, says) in [
        ("baseline", "sent MAIL outside TLS, though it requires TLS"),
        (
            "421-ehlo",
            "the server accepted a message it should not have",
        ),
        (
            "pipelining-held",
            "exited 1 though the message was delivered",
        ),
    ] {
        assert_eq!(map[id], ("fail".to_owned(), says.to_owned()), "{id}");
    }
}

#[tokio::test]
async fn opportunistic_mode_is_judged_by_delivery_and_exit_status_agreeing() {
    // A client that says it succeeded when the server closed on it at
    // once, in opportunistic mode: "reported success" and a missing HELO.
    let (map, _, _) = verdicts(&[
        "--tls",
        "opportunistic",
        "--cases",
        "starttls-missing,ehlo-refused,421-greeting",
        "--",
        "bash",
        "-c",
        "exec 3<>/dev/tcp/{host}/{port}; sleep 0.3; exit 0",
    ])
    .await;
    assert_eq!(
        map["starttls-missing"],
        (
            "fail".into(),
            "reported success (exit 0) but nothing was delivered".into()
        )
    );
    assert_eq!(
        map["ehlo-refused"],
        (
            "fail".into(),
            "did not fall back to HELO after EHLO was refused".into()
        )
    );
}

#[tokio::test]
async fn junit_xml_has_a_testcase_per_case_with_failures_and_skips() {
    let dir = tempfile::tempdir().unwrap();
    let xml = dir.path().join("junit.xml");
    let cmd = broken();
    let mut args = vec![
        "--deadline",
        DEADLINE,
        "--cases",
        "baseline,421-dot,cert-*,implicit-tls",
        "--junit",
        xml.to_str().unwrap(),
        "--verifies-certificates",
        "--",
    ];
    args.extend(cmd.iter().map(String::as_str));
    let out = conformance(&args).await;
    assert_eq!(out.status.code(), Some(1));
    let text = std::fs::read_to_string(&xml).unwrap();
    let mut reader = quick_xml::Reader::from_str(&text);
    let (mut suites, mut suite_tests, mut cases, mut failures, mut skipped) = (0, 0, 0, 0, 0);
    let mut depth_stack: Vec<String> = Vec::new();
    loop {
        use quick_xml::events::Event;
        let ev = reader.read_event().expect("well-formed XML");
        let (name, attrs, empty) = match &ev {
            Event::Start(e) => (e.name(), e.attributes(), false),
            Event::Empty(e) => (e.name(), e.attributes(), true),
            Event::End(_) => {
                depth_stack.pop();
                continue;
            }
            Event::Eof => break,
            _ => continue,
        };
        let name = name.into_inner().to_owned();
        let attr = |key: &str| {
            attrs
                .clone()
                .flatten()
                .find(|a| a.key.into_inner() == key)
                .map(|a| a.value.into_owned())
        };
        let parent = depth_stack.last().cloned().unwrap_or_default();
        match name.as_str() {
            "testsuites" => assert!(parent.is_empty()),
            "testsuite" => {
                assert_eq!(parent, "testsuites");
                suites += 1;
                suite_tests = attr("tests").unwrap().parse().unwrap();
                assert_eq!(attr("failures").as_deref(), Some("4"));
                assert_eq!(attr("skipped").as_deref(), Some("1"));
            }
            "testcase" => {
                assert_eq!(parent, "testsuite");
                assert!(attr("name").is_some() && attr("classname").is_some());
                assert!(attr("time").unwrap().parse::<f64>().is_ok());
                cases += 1;
            }
            "failure" => {
                assert_eq!(parent, "testcase");
                assert!(!attr("message").unwrap().is_empty());
                failures += 1;
            }
            "skipped" => {
                assert_eq!(parent, "testcase");
                skipped += 1;
            }
            "system-out" => assert_eq!(parent, "testcase"),
            other => panic!("unexpected element {other}"),
        }
        if !empty {
            depth_stack.push(name);
        }
    }
    assert_eq!((suites, suite_tests, cases), (1, 6, 6), "{text}");
    // baseline passes; 421-dot fails; the three certificate cases fail
    // (broken does not verify); implicit-tls is skipped.
    assert_eq!((failures, skipped), (4, 1), "{text}");
}

#[tokio::test]
async fn the_docs_list_every_case_and_usage_errors_exit_2() {
    let out = conformance(&["--list"]).await;
    assert_eq!(out.status.code(), Some(0));
    let list = String::from_utf8(out.stdout).unwrap();
    let docs = std::fs::read_to_string(root().join("../docs/conformance.md")).unwrap();
    let ids: Vec<&str> = list
        .lines()
        .skip(2)
        .filter_map(|l| l.split('`').nth(1))
        .collect();
    assert!(ids.len() > 30, "{list}");
    for id in ids {
        assert!(
            docs.contains(&format!("`{id}`")),
            "docs/conformance.md does not list `{id}`"
        );
    }
    assert_eq!(conformance(&[]).await.status.code(), Some(2));
    assert_eq!(
        conformance(&["--cases", "nope", "--", "true"])
            .await
            .status
            .code(),
        Some(2)
    );
    assert_eq!(conformance(&["--bogus"]).await.status.code(), Some(2));
}

/// `smtp conformance client ARGS` run in `dir`, with `TMPDIR` there too.
async fn conformance_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("conformance")
        .arg("client")
        .args(args)
        .current_dir(dir)
        .env("TMPDIR", dir)
        .output()
        .await
        .expect("smtp runs")
}

fn script(dir: &Path, name: &str, body: &str) {
    use std::os::unix::fs::PermissionsExt as _;
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[tokio::test]
async fn a_client_that_never_connects_fails_every_case_saying_why() {
    let dir = tempfile::tempdir().unwrap();
    // A relative path: the client runs in our current directory.
    script(
        dir.path(),
        "client.sh",
        "echo \"client: bad option $1\" >&2\nexit 1",
    );
    let out = conformance_in(
        dir.path(),
        &[
            "--json",
            "--deadline",
            DEADLINE,
            "--cases",
            "421-*,silent-*,baseline",
            "--",
            "./client.sh",
            "--bogus",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    let cases = json["cases"].as_array().unwrap();
    assert!(cases.len() > 10);
    for c in cases {
        assert_eq!(c["verdict"], "fail", "{c}");
        assert_eq!(
            c["detail"],
            "the client never connected (check the command line: client: bad option --bogus)",
            "{c}"
        );
    }
}

#[tokio::test]
async fn a_missing_client_or_an_unknown_placeholder_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = conformance_in(dir.path(), &["--", "./not-there.sh", "{port}"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not-there.sh"));
    let out = conformance_in(dir.path(), &["--", "no-such-smtp-client-here"]).await;
    assert_eq!(out.status.code(), Some(2));
    let out = conformance_in(dir.path(), &["--", "true", "--helo={hostname}"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unknown placeholder `{hostname}`"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Braces that are not placeholders stay as they are.
    let out = conformance_in(
        dir.path(),
        &["--cases", "baseline", "--", "true", "${X}", "{}"],
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
}

#[tokio::test]
async fn a_value_substituted_is_never_expanded_again() {
    let top = tempfile::tempdir().unwrap();
    let dir = top.path().join("tmp{password}");
    std::fs::create_dir(&dir).unwrap();
    let log = top.path().join("args");
    script(
        top.path(),
        "client.sh",
        &format!("echo \"$@\" > '{}'\nexit 1", log.display()),
    );
    let client = top.path().join("client.sh");
    let out = conformance_in(
        &dir,
        &[
            "--cases",
            "baseline",
            "--",
            client.to_str().unwrap(),
            "{dir}",
            "{message}",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    let args = std::fs::read_to_string(&log).unwrap();
    assert!(args.contains("tmp{password}"), "{args}");
    assert!(!args.contains("Tr0ub4dor"), "the password leaked: {args}");
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(false)
}

#[tokio::test]
async fn a_daemon_left_behind_by_the_client_dies_with_the_case() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pid");
    script(
        dir.path(),
        "client.sh",
        &format!("sleep 300 &\necho $! > '{}'\nexit 1", pidfile.display()),
    );
    let out = conformance_in(dir.path(), &["--cases", "baseline", "--", "./client.sh"]).await;
    assert_eq!(out.status.code(), Some(1));
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(!alive(pid), "the client's child {pid} outlived its case");
}

#[tokio::test]
async fn sigterm_kills_the_clients_and_removes_the_scratch_directory() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pid");
    script(
        dir.path(),
        "client.sh",
        &format!("echo $$ > '{}'\nexec sleep 300", pidfile.display()),
    );
    let mut child = Command::new(BIN)
        .args([
            "conformance",
            "client",
            "--cases",
            "baseline",
            "--deadline",
            "60",
            "--",
        ])
        .arg("./client.sh")
        .current_dir(dir.path())
        .env("TMPDIR", dir.path())
        .spawn()
        .unwrap();
    let mut waited = 0;
    while !pidfile.exists() && waited < 100 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        waited += 1;
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let scratch: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("smtp-conformance-")
        })
        .collect();
    assert_eq!(scratch.len(), 1, "the scratch directory is under TMPDIR");
    let smtp = rustix::process::Pid::from_raw(child.id().unwrap() as i32).unwrap();
    rustix::process::kill_process(smtp, rustix::process::Signal::TERM).unwrap();
    let status = tokio::time::timeout(std::time::Duration::from_secs(10), child.wait())
        .await
        .expect("exits at once")
        .unwrap();
    assert_eq!(status.code(), Some(143));
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(!alive(pid), "the client {pid} still runs");
    assert!(!scratch[0].path().exists(), "the scratch directory is left");
}

#[tokio::test]
async fn junit_and_the_table_survive_control_characters_from_the_client() {
    require("python3");
    let dir = tempfile::tempdir().unwrap();
    script(
        dir.path(),
        "client.sh",
        "printf '\\357\\277\\276\\357\\277\\277 ]]> <x> & \\033[2J\\033]0;title\\007 \\001\\013\\r\\n' \
         | tee /dev/stderr\nexit 1",
    );
    let xml = dir.path().join("out.xml");
    let out = conformance_in(
        dir.path(),
        &[
            "--cases",
            "baseline,421-*",
            "--junit",
            xml.to_str().unwrap(),
            "--",
            "./client.sh",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(table.contains("never connected"), "{table}");
    assert!(
        !table.chars().any(|c| c.is_control() && c != '\n'),
        "a control character reached the terminal: {table:?}"
    );
    let parsed = std::process::Command::new("python3")
        .args([
            "-c",
            "import sys, xml.dom.minidom as m; d = m.parse(sys.argv[1]); \
                      print(len(d.getElementsByTagName('failure')))",
        ])
        .arg(&xml)
        .output()
        .unwrap();
    assert!(
        parsed.status.success(),
        "python3 rejects the JUnit file: {}\n{}",
        String::from_utf8_lossy(&parsed.stderr),
        std::fs::read_to_string(&xml).unwrap_or_default()
    );
    assert_eq!(String::from_utf8_lossy(&parsed.stdout).trim(), "7");
}

#[tokio::test]
async fn pinned_verdicts_that_match_are_not_junit_failures() {
    let dir = tempfile::tempdir().unwrap();
    script(
        dir.path(),
        "client.sh",
        "echo 'no server for me' >&2\nexit 1",
    );
    let profile = dir.path().join("p.toml");
    std::fs::write(
        &profile,
        "name = \"p\"\ntls = \"required\"\ncommand = [\"./client.sh\", \"{port}\"]\n\
         [expected]\n\"baseline\" = \"fail\"\n\"421-ehlo\" = \"fail\"\n",
    )
    .unwrap();
    let xml = dir.path().join("out.xml");
    let common = [
        "--profile",
        profile.to_str().unwrap(),
        "--pinned",
        "--cases",
        "baseline,421-*",
    ];
    let mut args = common.to_vec();
    args.extend(["--junit", xml.to_str().unwrap()]);
    let out = conformance_in(dir.path(), &args).await;
    assert_eq!(
        out.status.code(),
        Some(1),
        "421-greeting and others differ from their pins"
    );
    let text = std::fs::read_to_string(&xml).unwrap();
    let case = |id: &str| {
        let start = text.find(&format!("name=\"{id}\"")).unwrap();
        let end = text[start..]
            .find("</testcase>")
            .map_or(text.len(), |e| start + e);
        text[start..end].to_owned()
    };
    assert!(
        case("baseline").contains("<skipped message=\"pinned: FAIL: the client never connected"),
        "{text}"
    );
    assert!(case("421-ehlo").contains("<skipped"), "{text}");
    assert!(case("421-greeting").contains("<failure"), "{text}");
    assert!(
        text.contains("failures=\"5\" errors=\"0\" skipped=\"2\""),
        "{text}"
    );
    let mut args = common.to_vec();
    args.push("--json");
    let out = conformance_in(dir.path(), &args).await;
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["differ"], 5);
    let by_id = |id: &str| {
        json["cases"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["id"] == id)
            .unwrap()
            .clone()
    };
    assert_eq!(by_id("baseline")["pinned"], "fail");
    assert_eq!(by_id("baseline")["matches_pin"], true);
    assert_eq!(by_id("421-greeting")["pinned"], Value::Null);
    assert_eq!(by_id("421-greeting")["matches_pin"], false);
}
