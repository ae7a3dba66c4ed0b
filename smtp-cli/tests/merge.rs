//! `smtp send --merge` and `--unsubscribe` against smtp-testkit's flaky
//! server on 127.0.0.1.

use std::fmt::Write as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use smtp_testkit::flaky::{FlakyConfig, FlakyServer};

fn smtp(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_smtp"))
        .args(args)
        .env_remove("SMTP_PASSWORD")
        .output()
        .unwrap()
}

/// A flaky server on `addr` again, once the one there before is gone (its
/// listener closes as its task ends, a moment after the drop).
fn restart_on(rt: &tokio::runtime::Runtime, addr: std::net::SocketAddr) -> FlakyServer {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match rt.block_on(FlakyServer::start_on(addr, FlakyConfig::default())) {
            Ok(server) => return server,
            Err(e) if Instant::now() >= deadline => panic!("{addr}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn text(out: &std::process::Output) -> String {
    format!(
        "status {:?}\n{}\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn merge_args<'a>(server: &'a str, queue: &'a str, list: &'a str) -> Vec<&'a str> {
    vec![
        "send",
        "--merge",
        list,
        "--from",
        "news@example.com",
        "--subject",
        "Hello {{ name }}",
        "--body",
        "Dear {{name}}, your id is {{id}}.",
        "--server",
        server,
        "--tls",
        "none",
        "--queue",
        queue,
        "--retry-first",
        "1",
        "--linger",
        "10",
    ]
}

#[test]
fn ten_thousand_rows_with_three_bad_ones_are_refused_then_sent_without_them() {
    let rt = runtime();
    let server = rt
        .block_on(FlakyServer::start(FlakyConfig::default()))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut csv = String::from("email,name,id\n");
    for i in 0..10_000 {
        // Line numbers as an editor shows them: the header is line 1.
        let line = i + 2;
        match line {
            100 => csv.push_str("not-an-address,Bad,100\n"),
            5000 => csv.push_str("r5000@example.net,Short\n"),
            9999 => csv.push_str("r9999@example.net,\"Evil\r\nBcc: x@example.org\",9999\n"),
            _ => writeln!(csv, "r{line}@example.net,Name {line},id-{line}").unwrap(),
        }
    }
    let list = dir.path().join("list.csv");
    std::fs::write(&list, csv).unwrap();
    let q = dir.path().join("q");
    let (qs, ls, addr) = (
        q.to_str().unwrap(),
        list.to_str().unwrap(),
        server.addr().to_string(),
    );
    let mut args = merge_args(&addr, qs, ls);
    args.extend(["--per-connection", "1000"]);
    let out = smtp(&args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(65), "{}", text(&out));
    assert!(stderr.contains("lines 100, 5000, 9999"), "{stderr}");
    assert!(
        stderr.contains("line 9999: ") && stderr.contains("line break"),
        "{stderr}"
    );
    assert!(
        !q.join("queue.db").exists() || queue_is_empty(qs),
        "{stderr}"
    );
    assert!(server.messages().is_empty());

    args.push("--skip-bad-rows");
    let out = smtp(&args);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("9997 delivered, 0 failed, 0 deferred, 0 waiting"),
        "{stderr}"
    );
    // A list this long without List-Unsubscribe, and unsigned: both said.
    assert!(
        stderr.contains("recipients and no List-Unsubscribe"),
        "{stderr}"
    );
    assert!(stderr.contains("not DKIM-signed"), "{stderr}");
    let messages = server.messages();
    assert_eq!(messages.len(), 9_997);
    for m in &messages {
        let rcpt = &m.rcpt_to[0];
        let line: u32 = rcpt[1..rcpt.find('@').unwrap()].parse().unwrap();
        let data = String::from_utf8_lossy(&m.data);
        assert!(
            data.contains(&format!("Dear Name {line}, your id is id-{line}.")),
            "{rcpt}: {data}"
        );
        assert!(
            data.contains(&format!("Subject: Hello Name {line}\r\n")),
            "{data}"
        );
    }
}

fn queue_is_empty(q: &str) -> bool {
    let out = smtp(&["queue", "stats", "--queue", q, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v["messages"] == 0
}

#[test]
fn an_interrupted_merge_run_again_is_not_enqueued_again_and_nobody_gets_it_twice() {
    let rt = runtime();
    let stalling = rt
        .block_on(FlakyServer::start(FlakyConfig {
            stall_after: Some(1),
            ..FlakyConfig::default()
        }))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut csv = String::from("email,name,id\n");
    for i in 0..5 {
        writeln!(csv, "p{i}@example.net,P {i},{i}").unwrap();
    }
    let list = dir.path().join("list.csv");
    std::fs::write(&list, csv).unwrap();
    let q = dir.path().join("q");
    let (qs, ls) = (q.to_str().unwrap(), list.to_str().unwrap());
    let addr = stalling.addr().to_string();
    let mut args = merge_args(&addr, qs, ls);
    args.extend(["--per-connection", "1"]);
    let child = Command::new(env!("CARGO_BIN_EXE_smtp"))
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while stalling.messages().is_empty() {
        assert!(Instant::now() < deadline, "the first message never arrived");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(500));
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", text(&out));

    // The same command again (the relay back to health, on its address:
    // the route the merge was enqueued for).
    let before = stalling.deliveries();
    let back = stalling.addr();
    drop(stalling);
    let good = restart_on(&rt, back);
    let good_addr = good.addr().to_string();
    let mut args = merge_args(&good_addr, qs, ls);
    args.extend(["--per-connection", "1"]);
    let out = smtp(&args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        stderr.contains("already enqueued at") && stderr.contains("all 5 recipients skipped"),
        "{stderr}"
    );
    let mut all = before;
    for (rcpt, n) in good.deliveries() {
        *all.entry(rcpt).or_default() += n;
    }
    assert_eq!(all.len(), 5, "{all:?}");
    assert!(all.values().all(|n| *n == 1), "each exactly once: {all:?}");
}

/// A template with a quoted-printable text part and an HTML part.
const TEMPLATE: &str = "From: News <news@example.com>\r\n\
To: {{name}} <{{email}}>\r\n\
Subject: Grüße {{name}}\r\n\
Message-ID: <same-for-all@example.com>\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/alternative; boundary=\"b1\"\r\n\
\r\n\
--b1\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
Content-Transfer-Encoding: quoted-printable\r\n\
\r\n\
Gr=C3=BC=C3=9Fe {{name}}, note: {{note}} =3D ok\r\n\
--b1\r\n\
Content-Type: text/html; charset=utf-8\r\n\
Content-Transfer-Encoding: base64\r\n\
\r\n\
PHA+SGVsbG8ge3tuYW1lfX0sIHt7bm90ZX19PC9wPg==\r\n\
--b1--\r\n";

#[test]
fn a_dry_run_fills_each_part_escaped_for_it_and_encodes_headers() {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("list.csv");
    std::fs::write(
        &list,
        "email,name,note\nj@example.net,Jörg Müller,<script>alert(1)</script>\n",
    )
    .unwrap();
    let template = dir.path().join("t.eml");
    std::fs::write(&template, TEMPLATE).unwrap();
    let out_dir = dir.path().join("out");
    let out = smtp(&[
        "send",
        "--merge",
        list.to_str().unwrap(),
        "--template",
        template.to_str().unwrap(),
        "--dry-run",
        "--dry-run-dir",
        out_dir.to_str().unwrap(),
        "--unsubscribe",
        "https://example.com/u?e={{email}}",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Message-ID is replaced"));
    let bytes = std::fs::read(out_dir.join("row-2.eml")).unwrap();
    let raw = String::from_utf8(bytes.clone()).unwrap();
    assert!(raw.is_ascii(), "{raw}");
    assert!(!raw.contains("same-for-all"), "{raw}");
    assert!(
        raw.contains(
            "List-Unsubscribe:\r\n  <https://example.com/u?e=j%40example.net>\r\n\
             List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
        ),
        "{raw}"
    );
    let m = mail_parser::MessageParser::default().parse(&bytes).unwrap();
    let to = m.to().unwrap().first().unwrap();
    assert_eq!(to.name(), Some("Jörg Müller"));
    assert_eq!(to.address(), Some("j@example.net"));
    assert_eq!(m.subject(), Some("Grüße Jörg Müller"));
    assert_eq!(
        m.body_text(0).unwrap().trim_end(),
        "Grüße Jörg Müller, note: <script>alert(1)</script> = ok"
    );
    assert_eq!(
        m.body_html(0).unwrap().trim_end(),
        "<p>Hello Jörg Müller, &lt;script&gt;alert(1)&lt;/script&gt;</p>"
    );
}

#[test]
fn an_unknown_placeholder_stops_the_whole_run() {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("list.csv");
    std::fs::write(&list, "email,name\na@example.net,A\n").unwrap();
    let out = smtp(&[
        "send",
        "--merge",
        list.to_str().unwrap(),
        "--from",
        "n@example.com",
        "--subject",
        "Hi {{nmae}}",
        "--body",
        "x",
        "--dry-run",
    ]);
    assert_eq!(out.status.code(), Some(65), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("{{nmae}} in the Subject field"),
        "{}",
        text(&out)
    );
}

#[test]
fn dkim_signs_the_unsubscribe_fields_of_a_single_message() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k.pem");
    let out = smtp(&[
        "dkim",
        "keygen",
        "--ed25519",
        "--selector",
        "s1",
        "--domain",
        "example.com",
        "--out",
        key.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let rt = runtime();
    let server = rt
        .block_on(FlakyServer::start(FlakyConfig::default()))
        .unwrap();
    let addr = server.addr().to_string();
    let out = smtp(&[
        "send",
        "--server",
        &addr,
        "--tls",
        "none",
        "--from",
        "n@example.com",
        "--to",
        "b@example.net",
        "--subject",
        "hi",
        "--body",
        "x",
        "--dkim-key",
        key.to_str().unwrap(),
        "--dkim-selector",
        "s1",
        "--unsubscribe",
        "https://example.com/unsubscribe.html?opaque=123456789",
        "--unsubscribe-mailto",
        "listrequest@example.com?subject=unsubscribe",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let data = String::from_utf8(server.messages()[0].data.clone()).unwrap();
    // RFC 8058 §8.2, byte for byte.
    assert!(
        data.contains(
            "List-Unsubscribe:\r\n  <mailto:listrequest@example.com?subject=unsubscribe>,\r\n  \
             <https://example.com/unsubscribe.html?opaque=123456789>\r\n\
             List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
        ),
        "{data}"
    );
    let sig_start = data.find("DKIM-Signature:").unwrap();
    let sig_end = data[sig_start..]
        .find("\r\n\r\n")
        .unwrap_or(data.len() - sig_start);
    let signature = data[sig_start..sig_start + sig_end]
        .replace("\r\n", "")
        .replace([' ', '\t'], "");
    let h = signature
        .split(';')
        .find_map(|t| t.strip_prefix("h="))
        .unwrap()
        .to_ascii_lowercase();
    let signed: Vec<&str> = h.split(':').collect();
    assert!(signed.contains(&"list-unsubscribe"), "{h}");
    assert!(signed.contains(&"list-unsubscribe-post"), "{h}");
}

/// The recipients a server was given, sorted.
fn recipients(server: &FlakyServer) -> Vec<String> {
    let mut all: Vec<String> = server
        .messages()
        .iter()
        .flat_map(|m| m.rcpt_to.clone())
        .collect();
    all.sort();
    all
}

#[test]
fn an_edited_list_run_again_sends_only_to_recipients_not_sent_to_before() {
    let rt = runtime();
    let server = rt
        .block_on(FlakyServer::start(FlakyConfig::default()))
        .unwrap();
    let addr = server.addr().to_string();
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("list.csv");
    let q = dir.path().join("q");
    let (qs, ls) = (q.to_str().unwrap(), list.to_str().unwrap());
    let rows = [
        "a@example.net,A,1",
        "<b@example.net>,B,2",
        "c@example.net,C,3",
    ];
    std::fs::write(&list, format!("email,name,id\n{}\n", rows.join("\n"))).unwrap();
    let out = smtp(&merge_args(&addr, qs, ls));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        recipients(&server),
        ["a@example.net", "b@example.net", "c@example.net"]
    );
    let b = server
        .messages()
        .into_iter()
        .find(|m| m.rcpt_to == ["b@example.net"])
        .unwrap();
    let data = String::from_utf8_lossy(&b.data);
    assert!(data.contains("To: <b@example.net>\r\n"), "{data}");

    // One row appended (a forgotten one): only it goes.
    std::fs::write(
        &list,
        format!("email,name,id\n{}\nd@example.net,D,4\n", rows.join("\n")),
    )
    .unwrap();
    let out = smtp(&merge_args(&addr, qs, ls));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        stderr.contains("first enqueued at") && stderr.contains("3 recipients skipped"),
        "{stderr}"
    );
    assert!(stderr.contains("1 delivered"), "{stderr}");
    assert_eq!(server.messages().len(), 4);
    assert_eq!(server.messages()[3].rcpt_to, ["d@example.net"]);

    // Reordered, CRLF line ends, a domain in capitals, brackets dropped:
    // nobody again.
    std::fs::write(
        &list,
        "email,name,id\r\nd@example.net,D,4\r\nc@EXAMPLE.NET,C,3\r\nb@example.net,B,2\r\n\
         a@example.net,A,1\r\n",
    )
    .unwrap();
    let out = smtp(&merge_args(&addr, qs, ls));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        stderr.contains("already enqueued at") && stderr.contains("all 4 recipients skipped"),
        "{stderr}"
    );
    assert_eq!(server.messages().len(), 4);

    // Another message to the same list is another merge.
    let mut args = merge_args(&addr, qs, ls);
    args[6] = "Second issue for {{name}}";
    let out = smtp(&args);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(server.messages().len(), 8);
}

#[test]
fn a_recipient_twice_in_the_list_gets_the_message_once() {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("list.csv");
    std::fs::write(
        &list,
        "email,name\na@example.net,A\nb@example.net,B\na@Example.NET,A again\n",
    )
    .unwrap();
    let out = smtp(&[
        "send",
        "--merge",
        list.to_str().unwrap(),
        "--from",
        "n@example.com",
        "--subject",
        "Hi {{name}}",
        "--body",
        "x",
        "--dry-run=10",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("line 4: a@example.net is on line 2 too"),
        "{stderr}"
    );
    assert!(stderr.contains("2 of 2 messages shown"), "{stderr}");
}

/// `smtp send --merge LIST` with a composed message using `name`, `--dry-run=10` and `extra`.
fn dry_run(list: &std::path::Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "send",
        "--merge",
        list.to_str().unwrap(),
        "--from",
        "n@example.com",
        "--subject",
        "Hello {{name}}",
        "--body",
        "Dear {{name}}, {{note}}",
        "--dry-run=10",
    ];
    args.extend_from_slice(extra);
    smtp(&args)
}

#[test]
fn a_control_character_in_a_value_is_a_bad_row() {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("list.csv");
    std::fs::write(
        &list,
        "email,name,note\na@example.net,A,nul\0here\nb@example.net,B,esc\x1b[31m\n\
         c@example.net,C,\"tab\tand\nline\"\nd@example.net,D\x07,bell\n",
    )
    .unwrap();
    let out = dry_run(&list, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(65), "{}", text(&out));
    assert!(
        stderr.contains("line 2: the note column holds a control character (U+0000 NUL)"),
        "{stderr}"
    );
    assert!(stderr.contains("line 3: the note column") && stderr.contains("U+001B ESC"));
    assert!(stderr.contains("line 6: the name column") && stderr.contains("U+0007 BEL"));
    assert!(stderr.contains("lines 2, 3, 6 "), "{stderr}");
    let out = dry_run(&list, &["--skip-bad-rows"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("1 of 1 messages shown"));
}

#[test]
fn rows_of_a_list_with_cr_line_ends_are_named_by_their_line() {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("list.csv");
    std::fs::write(
        &list,
        "email,name,note\ra@example.net,A,x\rnot-an-address,B,x\rc@example.net,C,x\r",
    )
    .unwrap();
    let out_dir = dir.path().join("out");
    let out = dry_run(
        &list,
        &[
            "--skip-bad-rows",
            "--dry-run-dir",
            out_dir.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("line 3: "),
        "{}",
        text(&out)
    );
    let mut files: Vec<String> = std::fs::read_dir(&out_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files, ["row-2.eml", "row-4.eml"]);
    let c = std::fs::read_to_string(out_dir.join("row-4.eml")).unwrap();
    assert!(c.contains("To: <c@example.net>"), "{c}");
}

#[test]
fn a_dry_run_dir_gets_new_private_files_and_follows_no_link() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("list.csv");
    std::fs::write(&list, "email,name,note\na@example.net,A,x\n").unwrap();
    let out_dir = dir.path().join("out");
    let out = dry_run(&list, &["--dry-run-dir", out_dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let mode = std::fs::metadata(out_dir.join("row-2.eml"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // Again into the same directory: refused, the file kept.
    let out = dry_run(&list, &["--dry-run-dir", out_dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(73), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("never overwrites"));

    // A link planted where a row goes is not followed.
    let planted = dir.path().join("planted");
    std::fs::create_dir(&planted).unwrap();
    let victim = dir.path().join("victim");
    std::fs::write(&victim, "precious").unwrap();
    std::os::unix::fs::symlink(&victim, planted.join("row-2.eml")).unwrap();
    let dangling = dir.path().join("nowhere");
    let list2 = dir.path().join("list2.csv");
    std::fs::write(&list2, "email,name,note\n\nb@example.net,B,x\n").unwrap();
    std::os::unix::fs::symlink(&dangling, planted.join("row-3.eml")).unwrap();
    for l in [&list, &list2] {
        let out = dry_run(l, &["--dry-run-dir", planted.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(73), "{}", text(&out));
    }
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    assert!(!dangling.exists());
}

#[test]
fn a_value_shaped_like_an_encoded_word_is_shown_as_written() {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("list.csv");
    let spoof = "=?utf-8?q?Boss=0ABcc:_ceo@example.org?=";
    std::fs::write(&list, format!("email,name,note\na@example.net,{spoof},x\n")).unwrap();
    let template = dir.path().join("t.eml");
    std::fs::write(
        &template,
        "From: {{name}} <n@example.com>\nSubject: Hello {{name}}\n\nx\n",
    )
    .unwrap();
    let out_dir = dir.path().join("out");
    let out = smtp(&[
        "send",
        "--merge",
        list.to_str().unwrap(),
        "--template",
        template.to_str().unwrap(),
        "--dry-run",
        "--dry-run-dir",
        out_dir.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let bytes = std::fs::read(out_dir.join("row-2.eml")).unwrap();
    let raw = String::from_utf8_lossy(&bytes);
    assert!(!raw.contains(spoof), "{raw}");
    let m = mail_parser::MessageParser::default().parse(&bytes).unwrap();
    assert_eq!(
        m.subject(),
        Some(format!("Hello {spoof}").as_str()),
        "{raw}"
    );
    let from = m.from().unwrap().first().unwrap();
    assert_eq!(from.name(), Some(spoof), "{raw}");
    assert_eq!(from.address(), Some("n@example.com"));
}

#[test]
fn an_address_in_angle_brackets_is_the_bare_address_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("list.csv");
    std::fs::write(&list, "email,name,note\n\" <c1@example.net> \",C,x\n").unwrap();
    let out_dir = dir.path().join("out");
    let out = smtp(&[
        "send",
        "--merge",
        list.to_str().unwrap(),
        "--from",
        "n@example.com",
        "--subject",
        "Hi",
        "--body",
        "Sent to {{email}}.",
        "--unsubscribe",
        "https://example.com/u?e={{email}}",
        "--dry-run",
        "--dry-run-dir",
        out_dir.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let raw = std::fs::read_to_string(out_dir.join("row-2.eml")).unwrap();
    assert!(raw.contains("To: <c1@example.net>\r\n"), "{raw}");
    assert!(
        raw.contains("<https://example.com/u?e=c1%40example.net>"),
        "{raw}"
    );
    assert!(raw.contains("Sent to c1@example.net."), "{raw}");
    assert!(!raw.contains("<<") && !raw.contains("%3C"), "{raw}");
}
