//! DKIM signing through the built `smtp` binary, checked by an independent
//! verifier: Debian's python3-dkim (dkimpy), which `.ci/run` installs, over
//! the messages a capture server on 127.0.0.1 received. The public keys
//! come from `smtp dkim keygen`'s record, handed to dkimpy in place of DNS.
//!
//! dkimpy missing fails these tests (it never skips them): without it they
//! would prove nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, SystemTime};

use smtp_testkit::capture::{CaptureConfig, CaptureServer};
use smtp_testkit::flaky::{FlakyConfig, FlakyServer};
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_smtp");
const PYTHON: &str = "/usr/bin/python3";

/// dkimpy's verdict on each DKIM-Signature of the message in `argv[1]`,
/// top first, as a JSON list; the TXT records (name → value) in `argv[2]`
/// stand in for DNS.
const VERIFY: &str = r#"
import json, sys
try:
    import dkim
except ImportError:
    sys.exit("python3-dkim (dkimpy) is not installed: .ci/run installs it (apt-get install python3-dkim)")
records = json.load(open(sys.argv[2]))
def dnsfunc(name, timeout=5):
    name = name.decode() if isinstance(name, bytes) else name
    value = records.get(name.rstrip(".").lower())
    return value.encode() if value is not None else None
message = open(sys.argv[1], "rb").read()
d = dkim.DKIM(message)
count = sum(1 for name, _ in d.headers if name.lower() == b"dkim-signature")
verdicts = []
for i in range(count):
    try:
        verdicts.append(bool(d.verify(idx=i, dnsfunc=dnsfunc)))
    except Exception as e:  # dkimpy lets some faults of a bad signature through
        sys.stderr.write("signature %d: %r\n" % (i, e))
        verdicts.append(False)
print(json.dumps(verdicts))
"#;

/// Runs `argv` (the `smtp` binary and its arguments) and reports the
/// child's peak resident set size (getrusage's ru_maxrss, KiB) on the
/// last line of stderr.
const PEAK_RSS: &str = r#"
import resource, subprocess, sys
r = subprocess.run(sys.argv[1:])
sys.stderr.write("peak_rss_kib=%d\n" % resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
sys.exit(r.returncode)
"#;

/// A message with what canonicalisation must get right: LF line ends
/// (sent as CRLF), white space runs and trailing white space, a folded
/// field, a line starting with a dot, 8-bit text, empty lines at the end;
/// a Bcc that is removed and a Date and Message-ID that are added before
/// signing.
const TRICKY: &str = "From: Alice <alice@example.org>\n\
To: Bob <bob@example.net>\n\
Bcc: hidden@example.net\n\
Subject:   caf\u{e9}  with   spaces  \n\
X-Folded: one\n\ttwo  \n\
MIME-Version: 1.0\n\
Content-Type: text/plain; charset=utf-8\n\
Content-Transfer-Encoding: 8bit\n\
\n\
hello  \n\
.a line with a dot\n\
\n\
 \tindented\t \n\
caf\u{e9} cr\u{e8}me\n\
\n\
\n\
\n";

struct Fixture {
    server: CaptureServer,
    dir: tempfile::TempDir,
    /// TXT records by name, as `smtp dkim keygen` printed them.
    records: BTreeMap<String, String>,
}

/// A plaintext capture server (8BITMIME; CHUNKING and BINARYMIME with
/// `chunking`) and two keys for example.org: RSA 2048 (selector `rsa`)
/// and Ed25519 (selector `ed`).
async fn fixture(chunking: bool) -> Fixture {
    let server = CaptureServer::start(CaptureConfig {
        hostname: "mail.test".into(),
        chunking,
        max_message_size: 256 * 1024 * 1024,
        ..CaptureConfig::default()
    })
    .await
    .unwrap();
    let mut f = Fixture {
        server,
        dir: tempfile::tempdir().unwrap(),
        records: BTreeMap::new(),
    };
    f.keygen("rsa", &[]).await;
    f.keygen("ed", &["--ed25519"]).await;
    f
}

impl Fixture {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `smtp dkim keygen` for `selector`.example.org into `selector.pem`;
    /// its record is kept for the verifier.
    async fn keygen(&mut self, selector: &str, extra: &[&str]) -> serde_json::Value {
        let mut c = Command::new(BIN);
        c.args(["dkim", "keygen", "--json", "--selector", selector])
            .args(["--domain", "example.org", "--out"])
            .arg(self.path(&format!("{selector}.pem")))
            .args(extra);
        let o = run(c).await;
        assert_eq!(code(&o), 0, "{}", text(&o.stderr));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        self.records.insert(
            v["name"].as_str().unwrap().to_owned(),
            v["value"].as_str().unwrap().to_owned(),
        );
        v
    }

    fn message(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    /// `smtp send -t FILE` to the server, with `args` (the DKIM options).
    fn send(&self, file: &Path, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.arg("send")
            .arg("--server")
            .arg(format!("127.0.0.1:{}", self.server.addr().port()))
            .args(["--tls", "none", "--helo", "client.test", "-t"])
            .args(args)
            .arg(file)
            .env("XDG_CONFIG_HOME", self.path("no-config"));
        c
    }

    /// Sends `file` signed with `args`, expecting it accepted; returns what
    /// the server received.
    async fn signed(&self, file: &Path, args: &[&str]) -> Vec<u8> {
        let before = self.server.messages().len();
        let o = run(self.send(file, args)).await;
        assert_eq!(code(&o), 0, "{}{}", text(&o.stdout), text(&o.stderr));
        let got = self
            .server
            .wait_for_messages(before + 1, Duration::from_secs(5))
            .await;
        got[before].data.clone()
    }

    /// dkimpy's verdict on each signature of `message`, top first.
    async fn verify(&self, message: &[u8]) -> Vec<bool> {
        let path = self.path("to-verify.eml");
        std::fs::write(&path, message).unwrap();
        self.verify_file(&path).await
    }

    async fn verify_file(&self, message: &Path) -> Vec<bool> {
        verify_with(self.dir.path(), message, &self.records).await
    }
}

async fn verify_with(dir: &Path, message: &Path, records: &BTreeMap<String, String>) -> Vec<bool> {
    let script = dir.join("verify.py");
    std::fs::write(&script, VERIFY).unwrap();
    let records_file = dir.join("records.json");
    std::fs::write(&records_file, serde_json::to_vec(records).unwrap()).unwrap();
    let mut c = Command::new(PYTHON);
    c.arg(&script).arg(message).arg(&records_file);
    let o = tokio::time::timeout(Duration::from_secs(300), c.output())
        .await
        .expect("dkimpy finishes")
        .unwrap_or_else(|e| panic!("{PYTHON}: {e}: .ci/run installs python3 and python3-dkim"));
    assert!(
        o.status.success(),
        "dkimpy failed: {}{}",
        text(&o.stdout),
        text(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap()
}

async fn run(mut c: Command) -> Output {
    tokio::time::timeout(Duration::from_secs(120), c.output())
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

/// The header section of `message`, folded lines joined.
fn unfolded_head(message: &[u8]) -> String {
    let m = text(message);
    let head = m.split("\r\n\r\n").next().unwrap_or_default();
    head.replace("\r\n\t", "").replace("\r\n ", " ")
}

/// A tag of the DKIM-Signature field on top, white space removed.
fn tag(message: &[u8], name: &str) -> String {
    let head = unfolded_head(message);
    let field = head
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("DKIM-Signature:"))
        .expect("a DKIM-Signature on top");
    let field: String = field.chars().filter(|c| !c.is_whitespace()).collect();
    field
        .split(';')
        .find_map(|t| t.strip_prefix(&format!("{name}=")).map(str::to_owned))
        .unwrap_or_else(|| panic!("no {name}= in {field}"))
}

fn count_signatures(message: &[u8]) -> usize {
    unfolded_head(message)
        .lines()
        .filter(|l| l.to_ascii_lowercase().starts_with("dkim-signature:"))
        .count()
}

/// `message` with `from` replaced by `to` once.
fn replaced(message: &[u8], from: &str, to: &str) -> Vec<u8> {
    let m = text(message);
    assert!(m.contains(from), "{from:?} not in the message");
    m.replacen(from, to, 1).into_bytes()
}

#[tokio::test]
async fn rsa_and_ed25519_signatures_verify_with_dkimpy_in_each_canonicalization() {
    let f = fixture(false).await;
    let file = f.message("tricky.eml", TRICKY.as_bytes());
    for (selector, a) in [("rsa", "rsa-sha256"), ("ed", "ed25519-sha256")] {
        for c in ["relaxed", "simple", "relaxed/simple", "simple/relaxed"] {
            let key = f.path(&format!("{selector}.pem"));
            let key = key.to_str().unwrap();
            let args = [
                "--dkim-key",
                key,
                "--dkim-selector",
                selector,
                "--dkim-canonicalization",
                c,
            ];
            let got = f.signed(&file, &args).await;
            let case = format!("{selector} {c}");
            assert_eq!(f.verify(&got).await, [true], "{case}\n{}", text(&got));
            let full = if c.contains('/') {
                c.to_owned()
            } else {
                format!("{c}/{c}")
            };
            assert_eq!(tag(&got, "c"), full, "{case}");
            assert_eq!(tag(&got, "a"), a, "{case}");
            assert_eq!(tag(&got, "d"), "example.org", "the From: domain");
            assert_eq!(tag(&got, "s"), selector);
            // The fields the message has, bottom up, then the trusted ones
            // once more (From among them);
            // Bcc was removed before signing, Date and Message-ID added.
            let h = tag(&got, "h").to_ascii_lowercase();
            assert_eq!(
                h.split(':').filter(|x| *x == "from").count(),
                2,
                "{case}: {h}"
            );
            for field in ["subject", "date", "message-id", "to", "content-type"] {
                assert!(h.split(':').any(|x| x == field), "{case}: {field} in {h}");
            }
            assert!(!text(&got).contains("hidden@example.net"), "Bcc never sent");
            // What each canonicalization forgives: white space in a field
            // (header relaxed), trailing white space in the body (body
            // relaxed); simple forgives neither.
            let (header, body) = full.split_once('/').unwrap();
            let respaced = replaced(&got, "with   spaces", "with spaces");
            assert_eq!(
                f.verify(&respaced).await,
                [header == "relaxed"],
                "{case}: a field's white space changed"
            );
            let trimmed = replaced(&got, "hello  \r\n", "hello\r\n");
            assert_eq!(
                f.verify(&trimmed).await,
                [body == "relaxed"],
                "{case}: trailing white space removed"
            );
        }
    }
}

#[tokio::test]
async fn a_message_file_with_lines_ended_by_cr_alone_is_signed_as_it_goes_with_crlf() {
    let f = fixture(false).await;
    let file = f.message("mac.eml", TRICKY.replace('\n', "\r").as_bytes());
    let key = f.path("rsa.pem");
    for c in ["relaxed", "simple"] {
        let args = [
            "--dkim-key",
            key.to_str().unwrap(),
            "--dkim-selector",
            "rsa",
            "--dkim-canonicalization",
            c,
        ];
        let got = f.signed(&file, &args).await;
        assert!(text(&got).contains("\r\nhello  \r\n.a line with a dot\r\n"));
        assert_eq!(f.verify(&got).await, [true], "{c}");
    }
}

#[tokio::test]
async fn a_tampered_body_an_added_from_or_another_key_fails_verification() {
    let mut f = fixture(false).await;
    f.keygen("rsa-other", &[]).await;
    f.keygen("ed-other", &["--ed25519"]).await;
    let file = f.message("tricky.eml", TRICKY.as_bytes());
    for selector in ["rsa", "ed"] {
        let key = f.path(&format!("{selector}.pem"));
        let args = [
            "--dkim-key",
            key.to_str().unwrap(),
            "--dkim-selector",
            selector,
        ];
        let got = f.signed(&file, &args).await;
        assert_eq!(f.verify(&got).await, [true], "{selector}: as received");
        // A field nobody signed may be added (as receivers add theirs).
        let received = [b"X-Spam-Score: 0\r\n".as_slice(), &got].concat();
        assert_eq!(
            f.verify(&received).await,
            [true],
            "{selector}: unsigned field"
        );
        let tampered = replaced(&got, "hello", "HELLO");
        assert_eq!(
            f.verify(&tampered).await,
            [false],
            "{selector}: body changed"
        );
        let appended = [got.as_slice(), b"P.S. send money\r\n"].concat();
        assert_eq!(
            f.verify(&appended).await,
            [false],
            "{selector}: body appended"
        );
        // Another From, above the signature or among the fields: the
        // oversigned From catches both.
        let on_top = [b"From: Mallory <mallory@example.org>\r\n".as_slice(), &got].concat();
        assert_eq!(
            f.verify(&on_top).await,
            [false],
            "{selector}: From added on top"
        );
        let below = replaced(
            &got,
            "\r\nTo: ",
            "\r\nFrom: Mallory <mallory@example.org>\r\nTo: ",
        );
        assert_eq!(
            f.verify(&below).await,
            [false],
            "{selector}: From added below"
        );
        let subject = replaced(&got, "spaces", "SPACES");
        assert_eq!(
            f.verify(&subject).await,
            [false],
            "{selector}: Subject changed"
        );
        // A second Subject, or a Reply-To the message did not have, added
        // on top: the trusted fields are oversigned.
        for added in [
            b"Subject: read this instead\r\n".as_slice(),
            b"Reply-To: <thief@attacker.example>\r\n",
        ] {
            let tampered = [added, &got].concat();
            assert_eq!(
                f.verify(&tampered).await,
                [false],
                "{selector}: {} added",
                String::from_utf8_lossy(added).trim_end()
            );
        }
        // Another key's record under this selector (same algorithm).
        let other = if selector == "rsa" {
            "rsa-other"
        } else {
            "ed-other"
        };
        let mut records = f.records.clone();
        let swapped = f.records[&format!("{other}._domainkey.example.org")].clone();
        records.insert(format!("{selector}._domainkey.example.org"), swapped);
        let path = f.path("swapped.eml");
        std::fs::write(&path, &got).unwrap();
        assert_eq!(
            verify_with(f.dir.path(), &path, &records).await,
            [false],
            "{selector}: another key's record"
        );
    }
}

/// A newsletter whose HTML part has a 5000-octet line, as
/// long_lines.rs's.
fn newsletter(extra_head: &str) -> String {
    let mut line = "<table><tr><td>Caf\u{e9} cr\u{e8}me \u{2014} ".to_owned();
    while line.len() < 5000 {
        line.push_str("<a href=\"https://example.org/?a=1&b=2\">item</a> ");
    }
    format!(
        "{extra_head}From: alice@example.org\r\nTo: bob@example.net\r\nSubject: newsletter\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n\
         Content-Transfer-Encoding: 8bit\r\n\r\n<html>\r\n<body>  \r\n{line}</td></tr>\r\n\
         </body>\r\n</html>\r\n"
    )
}

#[tokio::test]
async fn a_message_re_encoded_for_its_long_lines_is_signed_as_re_encoded() {
    let f = fixture(false).await;
    let file = f.message("news.eml", newsletter("").as_bytes());
    for (selector, c) in [("rsa", "simple"), ("ed", "relaxed")] {
        let key = f.path(&format!("{selector}.pem"));
        let args = [
            "--dkim-key",
            key.to_str().unwrap(),
            "--dkim-selector",
            selector,
            "--dkim-canonicalization",
            c,
        ];
        let got = f.signed(&file, &args).await;
        let head = unfolded_head(&got);
        assert!(
            head.contains("Content-Transfer-Encoding: quoted-printable"),
            "re-encoded before signing: {head}"
        );
        assert!(text(&got).lines().all(|l| l.len() <= 998));
        assert_eq!(f.verify(&got).await, [true], "{selector} {c}");
    }
}

#[tokio::test]
async fn a_signed_message_sent_as_binarymime_gets_a_signature_over_its_bytes_with_dkim_add() {
    // Already signed (a made-up signature): never re-encoded, so it goes
    // as BINARYMIME over BDAT, byte for byte; --dkim-add signs it as such.
    let f = fixture(true).await;
    let made_up = "DKIM-Signature: v=1; a=rsa-sha256; c=simple/simple; d=example.org; s=old;\r\n \
                   h=from:to:subject; bh=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=; b=AAAA\r\n";
    let file = f.message("signed-news.eml", newsletter(made_up).as_bytes());
    let key = f.path("rsa.pem");
    let args = [
        "--dkim-key",
        key.to_str().unwrap(),
        "--dkim-selector",
        "rsa",
        "--dkim-add",
    ];
    let got = f.signed(&file, &args).await;
    let mail = f.server.sessions()[0]
        .transcript
        .iter()
        .find(|l| l.starts_with("C: MAIL"))
        .cloned()
        .unwrap();
    assert!(mail.contains("BODY=BINARYMIME"), "{mail}");
    assert!(text(&got).lines().any(|l| l.len() > 998), "kept as it was");
    // Ours verifies; the made-up one below it does not (and is kept).
    assert_eq!(f.verify(&got).await, [true, false]);
}

#[tokio::test]
async fn a_message_already_signed_goes_as_it_is_unless_dkim_add_is_given() {
    let f = fixture(false).await;
    let rsa = f.path("rsa.pem");
    let ed = f.path("ed.pem");
    let file = f.message("tricky.eml", TRICKY.as_bytes());
    let first = f
        .signed(
            &file,
            &[
                "--dkim-key",
                rsa.to_str().unwrap(),
                "--dkim-selector",
                "rsa",
            ],
        )
        .await;
    let signed = f.message("signed.eml", &first);
    let ed_args = ["--dkim-key", ed.to_str().unwrap(), "--dkim-selector", "ed"];
    let o = run(f.send(&signed, &ed_args)).await;
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("already signed") && text(&o.stderr).contains("--dkim-add"),
        "{}",
        text(&o.stderr)
    );
    let again = f.server.wait_for_messages(2, Duration::from_secs(5)).await;
    assert_eq!(again[1].data, first, "sent byte for byte");
    assert_eq!(f.verify(&again[1].data).await, [true]);
    let with_add = [&ed_args[..], &["--dkim-add"]].concat();
    let both = f.signed(&signed, &with_add).await;
    assert_eq!(count_signatures(&both), 2);
    assert_eq!(tag(&both, "a"), "ed25519-sha256", "ours on top");
    assert!(both.ends_with(&first[first.len() - 200..]));
    assert_eq!(f.verify(&both).await, [true, true]);
}

#[tokio::test]
async fn sendmail_mode_signs_with_the_account_s_key_after_adding_from() {
    let f = fixture(false).await;
    let link = f.path("sendmail");
    std::os::unix::fs::symlink(BIN, &link).unwrap();
    let config = f.path("xdg").join("smtp");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(
        config.join("config.toml"),
        format!(
            "[accounts.default]\nserver = \"127.0.0.1:{}\"\ntls = \"none\"\n\
             from = \"alice@example.org\"\ndkim_key = {:?}\ndkim_selector = \"ed\"\n\
             dkim_canonicalization = \"simple\"\n",
            f.server.addr().port(),
            f.path("ed.pem")
        ),
    )
    .unwrap();
    let mut c = Command::new(&link);
    c.args(["-oi", "bob@example.net"])
        .env("XDG_CONFIG_HOME", f.path("xdg"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    use tokio::io::AsyncWriteExt;
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(b"To: bob@example.net\nSubject: from cron\n\nall done\n")
        .await
        .unwrap();
    drop(stdin);
    let o = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    let got = f.server.wait_for_messages(1, Duration::from_secs(5)).await;
    let got = &got[0].data;
    assert_eq!(tag(got, "c"), "simple/simple");
    assert_eq!(tag(got, "d"), "example.org", "the added From's domain");
    assert!(
        tag(got, "h").contains(":From:From:"),
        "the added From is signed, and oversigned"
    );
    assert_eq!(f.verify(got).await, [true]);
}

#[tokio::test]
async fn a_queued_message_is_signed_once_when_enqueued_not_per_retry() {
    let mut f = fixture(false).await;
    // A greylisting server: the first attempt is deferred, a retry delivers.
    let flaky = FlakyServer::start(FlakyConfig {
        greylist: Some(Duration::from_millis(500)),
        ..FlakyConfig::default()
    })
    .await
    .unwrap();
    let queue = f.path("queue");
    let rsa = f.path("rsa.pem");
    let enqueued = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut c = Command::new(BIN);
    c.arg("send")
        .arg(format!("--queue={}", queue.display()))
        .args(["--server", &flaky.addr().to_string(), "--tls", "none"])
        .args(["--from", "alice@example.org", "--to", "bob@example.net"])
        .args(["--subject", "queued", "--body", "hello"])
        .args(["--retry-first", "2", "--retry-max", "2", "--linger", "20"])
        .arg("--dkim-key")
        .arg(&rsa)
        .args(["--dkim-selector", "rsa"])
        .env("XDG_CONFIG_HOME", f.path("no-config"));
    let o = run(c).await;
    assert_eq!(code(&o), 0, "{}{}", text(&o.stdout), text(&o.stderr));
    assert!(
        text(&o.stderr).contains("deferred"),
        "a retry: {}",
        text(&o.stderr)
    );
    let got = flaky.messages();
    assert_eq!(got.len(), 1);
    let data = &got[0].data;
    assert_eq!(count_signatures(data), 1);
    let t: u64 = tag(data, "t").parse().unwrap();
    // The retry came 2 s after the first attempt at the earliest.
    assert!(
        t < enqueued + 2,
        "signed when enqueued: t={t}, enqueued at {enqueued}"
    );
    assert_eq!(f.verify(data).await, [true]);

    // Enqueued signed; `queue run` sends it as stored, even for an account
    // with a key of its own.
    f.keygen("other", &[]).await;
    let config = f.path("xdg").join("smtp");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(
        config.join("config.toml"),
        format!(
            "[accounts.default]\nserver = \"127.0.0.1:{}\"\ntls = \"none\"\n\
             dkim_key = {:?}\ndkim_selector = \"other\"\n",
            f.server.addr().port(),
            f.path("other.pem")
        ),
    )
    .unwrap();
    let queue = f.path("queue-only");
    let mut c = Command::new(BIN);
    c.arg("send")
        .arg(format!("--queue={}", queue.display()))
        .arg("--queue-only")
        .args(["--from", "alice@example.org", "--to", "bob@example.net"])
        .args(["--subject", "later", "--body", "hello"])
        .arg("--dkim-key")
        .arg(&rsa)
        .args(["--dkim-selector", "rsa"])
        .env("XDG_CONFIG_HOME", f.path("xdg"));
    let o = run(c).await;
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    let mut c = Command::new(BIN);
    c.args(["queue", "run", "--queue"])
        .arg(&queue)
        .env("XDG_CONFIG_HOME", f.path("xdg"));
    let o = run(c).await;
    assert_eq!(code(&o), 0, "{}{}", text(&o.stdout), text(&o.stderr));
    let got = f.server.wait_for_messages(1, Duration::from_secs(5)).await;
    assert_eq!(count_signatures(&got[0].data), 1);
    assert_eq!(tag(&got[0].data, "s"), "rsa");
    assert_eq!(f.verify(&got[0].data).await, [true]);
}

#[tokio::test]
async fn a_key_that_cannot_sign_stops_the_command_before_anything_is_sent() {
    let f = fixture(false).await;
    let file = f.message("tricky.eml", TRICKY.as_bytes());
    let not_a_key = f.message("not-a-key.pem", b"hello\n");
    // A real key, damaged: its text must not be echoed.
    let pem = std::fs::read_to_string(f.path("rsa.pem")).unwrap();
    let mut lines: Vec<String> = pem.lines().map(str::to_owned).collect();
    lines.truncate(lines.len() - 1);
    let damaged = f.message("damaged.pem", lines.join("\n").as_bytes());
    let missing = f.path("missing.pem");
    // A FIFO would block the open until a writer came (forever); a
    // directory is no key either.
    let fifo = f.path("fifo.pem");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let directory = f.path("key-dir");
    std::fs::create_dir(&directory).unwrap();
    for (key, says) in [
        (&not_a_key, "not a PEM private key"),
        (&damaged, "no END line"),
        (&missing, "cannot read it"),
        (&fifo, "not a regular file"),
        (&directory, "not a regular file"),
    ] {
        let o = run(f.send(
            &file,
            &[
                "--dkim-key",
                key.to_str().unwrap(),
                "--dkim-selector",
                "rsa",
            ],
        ))
        .await;
        let stderr = text(&o.stderr);
        assert_eq!(code(&o), 78, "{stderr}");
        assert!(
            stderr.contains(key.to_str().unwrap()) && stderr.contains(says),
            "{stderr}"
        );
        for line in pem
            .lines()
            .filter(|l| !l.starts_with("-----") && l.len() >= 16)
        {
            assert!(!stderr.contains(&line[..16]), "key text in: {stderr}");
        }
    }
    // A key without its selector, a selector without its key.
    let rsa = f.path("rsa.pem");
    let o = run(f.send(&file, &["--dkim-key", rsa.to_str().unwrap()])).await;
    assert_eq!(code(&o), 64, "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("--dkim-selector"),
        "{}",
        text(&o.stderr)
    );
    let o = run(f.send(&file, &["--dkim-selector", "rsa"])).await;
    assert_eq!(code(&o), 64, "{}", text(&o.stderr));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(f.server.sessions().is_empty(), "no connection was made");
    // A usable key that other users can read: it signs, with a warning.
    use std::os::unix::fs::PermissionsExt;
    let readable = f.message("readable.pem", pem.as_bytes());
    std::fs::set_permissions(&readable, std::fs::Permissions::from_mode(0o644)).unwrap();
    let o = run(f.send(
        &file,
        &[
            "--dkim-key",
            readable.to_str().unwrap(),
            "--dkim-selector",
            "rsa",
        ],
    ))
    .await;
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("can be read by other users")
            && text(&o.stderr).contains("chmod 600"),
        "{}",
        text(&o.stderr)
    );
}

#[tokio::test]
async fn keygen_writes_a_key_only_its_owner_reads_and_never_overwrites_one() {
    use std::os::unix::fs::PermissionsExt;
    let mut f = fixture(false).await;
    let v = f.keygen("s2026", &["--bits", "3072"]).await;
    assert_eq!(v["algorithm"], "rsa-sha256");
    assert_eq!(v["bits"], 3072);
    assert_eq!(v["name"], "s2026._domainkey.example.org");
    let value = v["value"].as_str().unwrap();
    assert!(value.starts_with("v=DKIM1; k=rsa; p=MII"), "{value}");
    // In the zone file, strings of at most 255 octets.
    let zone = v["zone"].as_str().unwrap();
    assert!(
        zone.starts_with("s2026._domainkey.example.org. IN TXT ( \""),
        "{zone}"
    );
    assert!(zone.split('"').all(|s| s.len() <= 255), "{zone}");
    let key = f.path("s2026.pem");
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let before = std::fs::read(&key).unwrap();
    // Never over an existing file.
    let mut c = Command::new(BIN);
    c.args([
        "dkim",
        "keygen",
        "--selector",
        "s2026",
        "--domain",
        "example.org",
        "--out",
    ])
    .arg(&key);
    let o = run(c).await;
    assert_eq!(code(&o), 73, "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("exists"), "{}", text(&o.stderr));
    assert_eq!(std::fs::read(&key).unwrap(), before);
    // `dkim record` prints the same record for it; the text form too.
    let mut c = Command::new(BIN);
    c.args(["dkim", "record", "--key"]).arg(&key).args([
        "--selector",
        "s2026",
        "--domain",
        "example.org",
    ]);
    let o = run(c).await;
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    let out = text(&o.stdout);
    assert!(out.contains(&format!("value: {value}")), "{out}");
    assert!(out.contains("name:  s2026._domainkey.example.org"), "{out}");
    // The default file name, in the current directory; bad sizes refused.
    let mut c = Command::new(BIN);
    c.args([
        "dkim",
        "keygen",
        "--selector",
        "ed2",
        "--domain",
        "example.org",
        "--ed25519",
    ])
    .current_dir(f.dir.path());
    let o = run(c).await;
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    assert!(f.path("ed2.example.org.pem").exists());
    assert!(
        text(&o.stdout).contains("k=ed25519; p="),
        "{}",
        text(&o.stdout)
    );
    for bad in [
        &["--bits", "1024"][..],
        &["--bits", "8192"],
        &["--ed25519", "--bits", "2048"],
    ] {
        let mut c = Command::new(BIN);
        c.args([
            "dkim",
            "keygen",
            "--selector",
            "x",
            "--domain",
            "example.org",
        ])
        .args(bad)
        .current_dir(f.dir.path());
        let o = run(c).await;
        assert_eq!(code(&o), 64, "{bad:?}: {}", text(&o.stderr));
    }
}

#[tokio::test]
async fn keys_made_by_openssl_sign_and_verify_too() {
    let mut f = fixture(false).await;
    let file = f.message("tricky.eml", TRICKY.as_bytes());
    for (name, args) in [
        (
            "pkcs8-rsa",
            &[
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
            ][..],
        ),
        ("pkcs1-rsa", &["genrsa", "-traditional", "2048"]),
        ("openssl-ed", &["genpkey", "-algorithm", "ed25519"]),
    ] {
        let key = f.path(&format!("{name}.pem"));
        let o = std::process::Command::new("openssl")
            .arg(args[0])
            .arg("-out")
            .arg(&key)
            .args(&args[1..])
            .output()
            .expect("openssl (.ci/run installs it)");
        assert!(o.status.success(), "{}", text(&o.stderr));
        let pem = std::fs::read_to_string(&key).unwrap();
        let label = if name == "pkcs1-rsa" {
            "RSA PRIVATE KEY"
        } else {
            "PRIVATE KEY"
        };
        assert!(
            pem.starts_with(&format!("-----BEGIN {label}-----")),
            "{pem:.40}"
        );
        let mut c = Command::new(BIN);
        c.args(["dkim", "record", "--json", "--key"])
            .arg(&key)
            .args(["--selector", name, "--domain", "example.org"]);
        let o = run(c).await;
        assert_eq!(code(&o), 0, "{name}: {}", text(&o.stderr));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        f.records.insert(
            v["name"].as_str().unwrap().to_owned(),
            v["value"].as_str().unwrap().to_owned(),
        );
        let got = f
            .signed(
                &file,
                &["--dkim-key", key.to_str().unwrap(), "--dkim-selector", name],
            )
            .await;
        assert_eq!(f.verify(&got).await, [true], "{name}");
    }
}

#[tokio::test]
async fn a_100_mib_message_is_signed_in_bounded_memory_and_verifies() {
    const SIZE: usize = 100 * 1024 * 1024;
    let f = fixture(false).await;
    // A message file of 100 MiB: lines of 76 octets, as a base64 body.
    let path = f.path("big.eml");
    {
        use std::io::Write;
        let mut w = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        w.write_all(
            b"From: alice@example.org\r\nTo: bob@example.net\r\nSubject: big\r\n\
              MIME-Version: 1.0\r\nContent-Type: application/octet-stream\r\n\
              Content-Transfer-Encoding: base64\r\n\r\n",
        )
        .unwrap();
        let mut written = 0;
        let mut n: u64 = 0;
        while written < SIZE {
            let line = format!("{:0>74}\r\n", format!("{n:x}"));
            w.write_all(line.as_bytes()).unwrap();
            written += line.len();
            n += 1;
        }
        w.flush().unwrap();
    }
    let script = f.path("peak.py");
    std::fs::write(&script, PEAK_RSS).unwrap();
    // The same command for one small message, for the baseline.
    let small = f.message("small.eml", TRICKY.as_bytes());
    let rsa = f.path("rsa.pem");
    let peak = |file: &Path| {
        let mut c = Command::new(PYTHON);
        c.arg(&script)
            .arg(BIN)
            .arg("send")
            .arg("--server")
            .arg(format!("127.0.0.1:{}", f.server.addr().port()))
            .args(["--tls", "none", "--helo", "client.test", "-t"])
            .arg("--dkim-key")
            .arg(&rsa)
            .args(["--dkim-selector", "rsa"])
            .arg(file)
            .env("XDG_CONFIG_HOME", f.path("no-config"));
        async move {
            let o = tokio::time::timeout(Duration::from_secs(600), c.output())
                .await
                .expect("smtp finishes")
                .unwrap();
            let stderr = text(&o.stderr);
            assert_eq!(code(&o), 0, "{}{stderr}", text(&o.stdout));
            let kib: u64 = stderr
                .lines()
                .rev()
                .find_map(|l| l.strip_prefix("peak_rss_kib="))
                .unwrap_or_else(|| panic!("no peak in {stderr}"))
                .parse()
                .unwrap();
            kib
        }
    };
    let baseline = peak(&small).await;
    let big = peak(&path).await;
    eprintln!(
        "peak RSS: {:.1} MiB for a small message, {:.1} MiB for 100 MiB",
        baseline as f64 / 1024.0,
        big as f64 / 1024.0
    );
    // Bounded: a few buffers more than a small message, nowhere near the
    // message's size.
    assert!(
        big < baseline + 16 * 1024 && big < 48 * 1024,
        "peak RSS {big} KiB for a 100 MiB message (baseline {baseline} KiB)"
    );
    let got = f.server.wait_for_messages(2, Duration::from_secs(30)).await;
    assert!(got[1].data.len() > SIZE);
    let received = f.path("big-received.eml");
    std::fs::write(&received, &got[1].data).unwrap();
    drop(got);
    assert_eq!(f.verify_file(&received).await, [true]);
}

#[tokio::test]
async fn a_message_without_from_is_refused_and_an_unaligned_domain_warns() {
    let f = fixture(false).await;
    let rsa = f.path("rsa.pem");
    let rsa = rsa.to_str().unwrap();
    let no_from = f.message(
        "no-from.eml",
        b"To: bob@example.net\nSubject: hi\n\nhello\n" as &[u8],
    );
    let o = run(f.send(
        &no_from,
        &[
            "--from",
            "alice@example.org",
            "--dkim-key",
            rsa,
            "--dkim-selector",
            "rsa",
            "--dkim-domain",
            "example.org",
        ],
    ))
    .await;
    let stderr = text(&o.stderr);
    assert_eq!(code(&o), 65, "{stderr}");
    assert!(
        stderr.contains("no From: header field") && stderr.contains("add a From: header"),
        "{stderr}"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(f.server.sessions().is_empty(), "nothing was sent");
    // d= of another organisation than From's: signed, with a warning.
    let file = f.message("tricky.eml", TRICKY.as_bytes());
    let o = run(f.send(
        &file,
        &[
            "-v",
            "--dkim-key",
            rsa,
            "--dkim-selector",
            "rsa",
            "--dkim-domain",
            "esp.example.net",
        ],
    ))
    .await;
    let stderr = text(&o.stderr);
    assert_eq!(code(&o), 0, "{stderr}");
    assert!(
        stderr
            .contains("d=esp.example.net, which does not align with the From: domain example.org"),
        "{stderr}"
    );
    assert!(
        stderr.contains("DKIM-signed d=esp.example.net s=rsa a=rsa-sha256"),
        "{stderr}"
    );
    // Aligned (a subdomain of From's organisational domain): no warning.
    let o = run(f.send(
        &file,
        &[
            "--dkim-key",
            rsa,
            "--dkim-selector",
            "rsa",
            "--dkim-domain",
            "mail.example.org",
        ],
    ))
    .await;
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    assert!(!text(&o.stderr).contains("align"), "{}", text(&o.stderr));
}

#[tokio::test]
async fn keygen_refuses_a_size_it_cannot_sign_with_before_making_anything() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("k.pem");
    let mut c = Command::new(BIN);
    c.args([
        "dkim",
        "keygen",
        "--selector",
        "s1",
        "--domain",
        "example.org",
    ])
    .args(["--bits", "3000", "--out"])
    .arg(&out);
    let o = run(c).await;
    let stderr = text(&o.stderr);
    assert_eq!(code(&o), 64, "{stderr}");
    assert!(
        stderr.contains("--bits 3000")
            && stderr.contains("2048, 2560, 3072, 3584 or 4096")
            && !stderr.contains("internal error"),
        "{stderr}"
    );
    assert!(!out.exists(), "no key file is made");
}

#[tokio::test]
async fn dkim_record_names_the_key_file_in_the_send_line() {
    let mut f = fixture(false).await;
    f.keygen("s9", &["--ed25519"]).await;
    let key = f.path("s9.pem");
    let mut c = Command::new(BIN);
    c.args([
        "dkim",
        "record",
        "--selector",
        "s9",
        "--domain",
        "example.org",
    ])
    .arg("--key")
    .arg(&key);
    let o = run(c).await;
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    let stdout = text(&o.stdout);
    assert!(
        stdout.contains(&format!("--dkim-key {} --dkim-selector s9", key.display()))
            && !stdout.contains("--dkim-key KEY"),
        "{stdout}"
    );
}

#[tokio::test]
async fn send_json_says_for_each_message_whether_and_how_it_was_signed() {
    let f = fixture(false).await;
    let file = f.message("tricky.eml", TRICKY.as_bytes());
    let signed =
        format!("DKIM-Signature: v=1; a=rsa-sha256; d=x.example; s=x; h=From; bh=; b=\n{TRICKY}");
    let already = f.message("already.eml", signed.as_bytes());
    let ed = f.path("ed.pem");
    let mut c = f.send(
        &file,
        &[
            "--json",
            "--dkim-key",
            ed.to_str().unwrap(),
            "--dkim-selector",
            "ed",
        ],
    );
    c.arg(&already);
    let o = run(c).await;
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let messages = v["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 2, "{v:#}");
    assert_eq!(
        messages[0]["dkim"],
        serde_json::json!({"domain": "example.org", "selector": "ed", "algorithm": "ed25519-sha256"}),
        "{v:#}"
    );
    // Already signed: sent as it is, not signed by smtp.
    assert_eq!(messages[1]["dkim"], serde_json::Value::Null, "{v:#}");
}
