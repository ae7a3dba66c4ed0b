//! Messages with lines over SMTP's 998 octets, through the built `smtp`
//! binary to a capture server on 127.0.0.1: re-encoded parts decode to
//! what was written, untouched parts arrive byte for byte, long header
//! lines arrive folded; a signed message is never changed, and a server
//! without BINARYMIME is told why it cannot take it.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use smtp_testkit::capture::{CaptureConfig, CaptureServer};
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_smtp");

const HEAD: &str = "From: alice@example.org\r\nTo: bob@example.net\r\nSubject: newsletter\r\nDate: Tue, 1 Dec 2026 02:00:00 +0000\r\nMessage-ID: <news@example.org>\r\n";

struct Fixture {
    server: CaptureServer,
    dir: PathBuf,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A plaintext capture server (8BITMIME, no CHUNKING unless `chunking`).
async fn fixture(chunking: bool) -> Fixture {
    let server = CaptureServer::start(CaptureConfig {
        hostname: "mail.test".into(),
        chunking,
        ..CaptureConfig::default()
    })
    .await
    .unwrap();
    let dir = std::env::temp_dir().join(format!(
        "smtp-cli-long-{}-{}",
        std::process::id(),
        server.addr().port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    Fixture { server, dir }
}

impl Fixture {
    fn message(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    /// `smtp send` of the file `path` to the server.
    async fn send(&self, path: &Path) -> Output {
        let mut c = Command::new(BIN);
        c.arg("send")
            .arg("--server")
            .arg(format!("127.0.0.1:{}", self.server.addr().port()))
            .args(["--tls", "none", "--helo", "client.test", "-t"])
            .arg(path)
            .env("XDG_CONFIG_HOME", self.dir.join("empty"));
        run(c).await
    }
}

async fn run(mut c: Command) -> Output {
    tokio::time::timeout(Duration::from_secs(30), c.output())
        .await
        .expect("smtp finishes")
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

/// A newsletter's HTML: one line of `len` octets or more, some non-ASCII,
/// `=`, and white space at the end of lines.
fn html(len: usize) -> String {
    let mut line = "<table style=\"width:100%\"><tr><td>Caf\u{e9} cr\u{e8}me \u{2014} ".to_owned();
    while line.len() < len {
        line.push_str("<a href=\"https://example.org/?a=1&b=2\">item</a> ");
    }
    format!("<html>\r\n<body>  \r\n{line}</td></tr></table>\r\n</body>\r\n</html>\r\n")
}

/// No line of what the server got is over 998 octets.
fn assert_lines_fit(data: &[u8]) {
    for line in data.split(|&b| b == b'\n') {
        assert!(line.len() <= 999, "a line of {} octets arrived", line.len());
    }
}

#[tokio::test]
async fn a_message_file_with_a_5000_octet_html_line_is_delivered_and_decodes_the_same() {
    let f = fixture(false).await;
    let page = html(5000);
    let m = format!(
        "{HEAD}MIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n{page}"
    );
    let path = f.message("news.eml", m.as_bytes());
    let o = f.send(&path).await;
    assert_eq!(code(&o), 0, "{}{}", text(&o.stdout), text(&o.stderr));
    let got = f.server.wait_for_messages(1, Duration::from_secs(2)).await;
    assert_lines_fit(&got[0].data);
    let parsed = mail_parser::MessageParser::default()
        .parse(&got[0].data)
        .unwrap();
    assert_eq!(parsed.body_html(0).unwrap(), page);
    // 7-bit on the wire now: no BODY=8BITMIME.
    let mail = f.server.sessions()[0]
        .transcript
        .iter()
        .find(|l| l.starts_with("C: MAIL"))
        .cloned()
        .unwrap();
    assert!(!mail.contains("BODY="), "{mail}");
    // SIZE= counts the dots that stuffing adds.
    let dots = got[0]
        .data
        .split(|&b| b == b'\n')
        .filter(|l| l.starts_with(b"."))
        .count();
    let size = format!("SIZE={}", got[0].data.len() + dots);
    assert!(mail.contains(&size), "{mail}");
    let stderr = text(&o.stderr);
    assert_eq!(
        stderr.trim_end(),
        format!(
            "note: {}: the body (text/html) re-encoded as quoted-printable: line 12 was {} octets",
            path.display(),
            page.lines().nth(2).unwrap().len()
        )
    );
}

#[tokio::test]
async fn in_a_multipart_message_only_the_part_with_the_long_line_changes() {
    let f = fixture(false).await;
    let plain = "Caf\u{e9} cr\u{e8}me  \r\n-- \r\nAlice\r\n";
    let page = html(5000);
    let m = format!(
        "{HEAD}MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=\"=_alt\"\r\n\r\n\
         --=_alt\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n\
         {plain}\r\n\
         --=_alt\r\nContent-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n\
         {page}\r\n\
         --=_alt--\r\n"
    );
    let path = f.message("alt.eml", m.as_bytes());
    let o = f.send(&path).await;
    assert_eq!(code(&o), 0, "{}{}", text(&o.stdout), text(&o.stderr));
    let got = f.server.wait_for_messages(1, Duration::from_secs(2)).await;
    let data = &got[0].data;
    assert_lines_fit(data);
    // Everything up to the HTML part's header arrives byte for byte.
    let html_part = m.find("--=_alt\r\nContent-Type: text/html").unwrap();
    assert!(
        data.starts_with(&m.as_bytes()[..html_part]),
        "{}",
        text(data)
    );
    let parsed = mail_parser::MessageParser::default().parse(data).unwrap();
    assert_eq!(parsed.body_text(0).unwrap(), plain);
    assert_eq!(parsed.body_html(0).unwrap(), page);
    assert!(
        text(&o.stderr).contains("part 2 (text/html) re-encoded as quoted-printable"),
        "{}",
        text(&o.stderr)
    );
}

#[tokio::test]
async fn a_long_header_line_arrives_folded_and_unfolds_to_the_original() {
    let f = fixture(false).await;
    let references: Vec<String> = (0..60)
        .map(|i| format!("<thread-{i:04}.1234567890@lists.example.org>"))
        .collect();
    let field = format!("References: {}", references.join(" "));
    assert!(field.len() > 2500);
    let m = format!("{HEAD}{field}\r\n\r\nhello\r\n");
    let path = f.message("refs.eml", m.as_bytes());
    let o = f.send(&path).await;
    assert_eq!(code(&o), 0, "{}{}", text(&o.stdout), text(&o.stderr));
    let got = f.server.wait_for_messages(1, Duration::from_secs(2)).await;
    let data = text(&got[0].data);
    assert!(
        data.lines().all(|l| l.trim_end_matches('\r').len() <= 78),
        "{data}"
    );
    assert!(data.contains("\r\n <thread-0001"), "folded: {data}");
    assert!(
        data.replace("\r\n ", " ")
            .contains(&format!("\r\n{field}\r\n"))
    );
    assert!(data.ends_with("\r\n\r\nhello\r\n"));
    assert!(
        text(&o.stderr).contains(&format!("header line 6 ({} octets) folded", field.len())),
        "{}",
        text(&o.stderr)
    );

    // Without white space to fold at, nothing is sent: exit 65.
    let m = format!("{HEAD}X-Token: {}\r\n\r\nhello\r\n", "t".repeat(1200));
    let path = f.message("token.eml", m.as_bytes());
    let o = f.send(&path).await;
    assert_eq!(code(&o), 65, "{}{}", text(&o.stdout), text(&o.stderr));
    assert!(
        text(&o.stderr).contains("token.eml: line 6 of the header section is 1209 octets"),
        "{}",
        text(&o.stderr)
    );
    assert!(text(&o.stderr).contains("shorten the header"));
    assert_eq!(f.server.messages().len(), 1);
}

/// A DKIM-signed newsletter with a 5000-octet line (line 13).
fn signed_newsletter() -> (String, usize) {
    let page = html(5000);
    let long = page.lines().nth(2).unwrap().len();
    let m = format!(
        "DKIM-Signature: v=1; a=rsa-sha256; c=simple/simple; d=example.org; s=news;\r\n \
         h=from:to:subject; bh=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=; b=AAAA\r\n\
         {HEAD}MIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n\r\n{page}"
    );
    (m, long)
}

#[tokio::test]
async fn a_signed_message_with_a_long_line_is_refused_by_a_server_without_binarymime_saying_why() {
    let f = fixture(false).await;
    let (m, long) = signed_newsletter();
    let path = f.message("signed.eml", m.as_bytes());
    let o = f.send(&path).await;
    // Rejected for this server, as a message it cannot take as it is.
    assert_eq!(code(&o), 69, "{}{}", text(&o.stdout), text(&o.stderr));
    let why = format!(
        "{}: line 13 is {long} octets, over SMTP's 998 limit, and the message is signed \
         (DKIM-Signature), so it cannot be re-encoded without breaking the signature; the \
         server does not offer BINARYMIME: wrap the line before signing",
        path.display()
    );
    assert!(text(&o.stderr).contains(&why), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains(&why), "{}", text(&o.stdout));
    assert!(!text(&o.stderr).contains("note:"), "{}", text(&o.stderr));
    assert!(f.server.messages().is_empty());
    let sessions = f.server.wait_for_sessions(1, Duration::from_secs(2)).await;
    assert!(
        !sessions[0]
            .transcript
            .iter()
            .any(|l| l.starts_with("C: MAIL")),
        "nothing is sent: {:?}",
        sessions[0].transcript
    );
}

#[tokio::test]
async fn a_signed_message_with_a_long_line_goes_unchanged_as_binarymime_where_offered() {
    let f = fixture(true).await;
    let (m, _) = signed_newsletter();
    let path = f.message("signed.eml", m.as_bytes());
    let o = f.send(&path).await;
    assert_eq!(code(&o), 0, "{}{}", text(&o.stdout), text(&o.stderr));
    assert_eq!(text(&o.stderr), "");
    let got = f.server.wait_for_messages(1, Duration::from_secs(2)).await;
    assert_eq!(got[0].data, m.as_bytes(), "byte for byte");
    let transcript = &f.server.sessions()[0].transcript;
    let mail = transcript
        .iter()
        .find(|l| l.starts_with("C: MAIL"))
        .unwrap();
    assert!(mail.contains("BODY=BINARYMIME"), "{mail}");
    assert!(transcript.iter().any(|l| l.starts_with("C: BDAT ")));
}

#[tokio::test]
async fn sendmail_mode_re_encodes_quietly() {
    let f = fixture(false).await;
    let page = html(3000);
    let m = format!("{HEAD}Content-Type: text/html; charset=utf-8\r\n\r\n{page}");
    let link = f.dir.join("sendmail");
    std::os::unix::fs::symlink(BIN, &link).unwrap();
    let config = f.dir.join("xdg").join("smtp");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(
        config.join("config.toml"),
        format!(
            "[accounts.default]\nserver = \"127.0.0.1:{}\"\ntls = \"none\"\n",
            f.server.addr().port()
        ),
    )
    .unwrap();
    let mut c = Command::new(&link);
    c.args(["-t", "-oi"])
        .env("XDG_CONFIG_HOME", f.dir.join("xdg"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    use tokio::io::AsyncWriteExt;
    let mut input = child.stdin.take().unwrap();
    input.write_all(m.as_bytes()).await.unwrap();
    drop(input);
    let o = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    assert_eq!(text(&o.stderr), "", "quiet on success");
    let got = f.server.wait_for_messages(1, Duration::from_secs(2)).await;
    assert_lines_fit(&got[0].data);
    let parsed = mail_parser::MessageParser::default()
        .parse(&got[0].data)
        .unwrap();
    assert_eq!(parsed.body_html(0).unwrap(), page);
}

#[tokio::test]
async fn a_signed_message_without_date_or_message_id_gets_neither_added() {
    let f = fixture(false).await;
    // The signer listed date and message-id in h= while the message had
    // none: adding either would break the signature.
    let m = "DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.org; s=news;\r\n \
             h=from:to:subject:date:message-id; bh=x; b=AAAA\r\n\
             From: alice@example.org\r\nTo: bob@example.net\r\nSubject: signed\r\n\r\nhello\r\n";
    let path = f.message("signed-bare.eml", m.as_bytes());
    let o = f.send(&path).await;
    assert_eq!(code(&o), 0, "{}{}", text(&o.stdout), text(&o.stderr));
    let got = f.server.wait_for_messages(1, Duration::from_secs(2)).await;
    assert_eq!(text(&got[0].data), m, "byte for byte");
}
