//! Running a case: its server, its files, the client's command line with
//! the placeholders filled in, one process (group) per case with a
//! deadline, then the judge.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use smtp_testkit::certs::{Identity, TestCa};
use smtp_testkit::hostile::{self, HostileConfig, HostileServer};
use tokio::io::AsyncReadExt;

use super::cases::{Case, Message, Needs};
use super::judge::{END_MARKER, Evidence, Exit, judge};
use super::report::{CaseResult, Verdict};
use super::server::{Cert, Fault, StartTls};
use super::{Client, Mode};

pub(crate) const USER: &str = "conformance";
pub(crate) const PASSWORD: &str = "Tr0ub4dor-conformance-s3cret";
pub(crate) const FROM: &str = "sender@client.test";
pub(crate) const TO: [&str; 2] = ["rcpt@server.test", "other@server.test"];
/// Output kept from a client, from its end.
const MAX_OUTPUT: usize = 4096;

/// What every case shares: the test CA and its certificates, the scratch
/// directory.
pub(crate) struct Bench {
    ca_pem: String,
    valid: Identity,
    expired: Identity,
    wrong_name: Identity,
    self_signed: Identity,
    dir: PathBuf,
    pub(crate) deadline: Duration,
}

impl Drop for Bench {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Bench {
    pub(crate) fn new(deadline: Duration) -> std::io::Result<Self> {
        let ca = TestCa::new();
        let names = ["localhost", "127.0.0.1"];
        let dir = std::env::temp_dir().join(format!(
            "smtp-conformance-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0)
        ));
        std::fs::create_dir_all(&dir)?;
        Ok(Self {
            ca_pem: ca.cert_pem(),
            valid: ca.leaf(&names),
            expired: ca.expired_leaf(&names),
            wrong_name: ca.leaf(&["wrong.example"]),
            self_signed: Identity::self_signed(&names),
            dir,
            deadline,
        })
    }

    fn config(&self, case: &Case, implicit: bool) -> HostileConfig {
        let s = case.server;
        let id = match s.cert {
            Cert::Valid => &self.valid,
            Cert::Expired => &self.expired,
            Cert::WrongName => &self.wrong_name,
            Cert::SelfSigned => &self.self_signed,
        };
        let password = if s.auth_refused {
            "not-the-password"
        } else {
            PASSWORD
        };
        let fault = s.fault.map(|(phase, f)| {
            let f = match f {
                Fault::Reply421 => {
                    hostile::Fault::ReplyAndClose("421 4.3.2 service shutting down".into())
                }
                Fault::Close => hostile::Fault::Close,
                Fault::Silence => hostile::Fault::Silence,
                Fault::Drip => hostile::Fault::Drip(Duration::from_secs(1)),
                Fault::LongLine => hostile::Fault::LongLine(1024 * 1024),
                Fault::EndlessMultiline => hostile::Fault::EndlessMultiline,
            };
            (phase, f)
        });
        let refused = TO
            .iter()
            .take(case.recipients)
            .rev()
            .take(s.refused_rcpts)
            .map(|r| ((*r).to_owned(), "550 5.1.1 no such user here".to_owned()))
            .collect();
        HostileConfig {
            tls: Some(id.clone()),
            implicit_tls: implicit,
            offer_starttls: s.starttls != StartTls::NotOffered,
            starttls_reply: match s.starttls {
                StartTls::Refused => "454 4.7.0 TLS not available due to temporary reason",
                _ => "220 2.0.0 ready to start TLS",
            }
            .to_owned(),
            inject_after_starttls: if s.starttls == StartTls::Injected {
                b"250-injected.example\r\n250-AUTH PLAIN LOGIN\r\n250 PIPELINING\r\n".to_vec()
            } else {
                Vec::new()
            },
            auth: Some((USER.to_owned(), password.to_owned())),
            auth_in_plaintext: s.auth_in_plaintext,
            pipelining: s.pipelining,
            hold_replies: s.hold_replies,
            size: if s.small_size { 200 } else { 10_000_000 },
            ehlo_reply: s
                .ehlo_refused
                .then(|| "502 5.5.2 EHLO not implemented".to_owned()),
            reject_rcpt: refused,
            fault,
            ..HostileConfig::default()
        }
    }
}

/// Why `client` cannot run `case`, if it cannot.
fn skip_reason(case: &Case, client: &Client) -> Option<&'static str> {
    case.needs.iter().find_map(|n| match n {
        Needs::StartTls if client.mode == Mode::Implicit => {
            Some("the client speaks implicit TLS, not STARTTLS")
        }
        Needs::Auth if !client.authenticates() => {
            Some("the command does not authenticate (no {user} or {password…})")
        }
        Needs::Verifies if !client.verifies_certificates => {
            Some("the client is declared not to verify certificates")
        }
        Needs::Implicit if client.mode != Mode::Implicit && client.implicit_command.is_none() => {
            Some("no implicit-TLS command for this client")
        }
        _ => None,
    })
}

/// Runs one case; never fails (a case that cannot be set up is a FAIL
/// saying why).
pub(crate) async fn run_case(
    case: &'static Case,
    client: Arc<Client>,
    bench: Arc<Bench>,
) -> CaseResult {
    let started = Instant::now();
    let result = |verdict, exit: Option<Exit>, output: String| CaseResult {
        id: case.id,
        verdict,
        expected: client.expected.get(case.id).copied(),
        exit: exit.map(|e| e.to_string()),
        elapsed: started.elapsed(),
        output,
        reference: case.rfc,
        note: String::new(),
    };
    if let Some(why) = skip_reason(case, &client) {
        return result(Verdict::Skip(why.to_owned()), None, String::new());
    }
    let implicit = client.mode == Mode::Implicit || case.needs.contains(&Needs::Implicit);
    let template = match (
        &client.implicit_command,
        case.needs.contains(&Needs::Implicit),
    ) {
        (Some(t), true) => t,
        _ => &client.command,
    };
    let server = match HostileServer::start(bench.config(case, implicit)).await {
        Ok(s) => s,
        Err(e) => {
            return result(
                Verdict::Fail(format!("cannot start the server: {e}")),
                None,
                String::new(),
            );
        }
    };
    let dir = bench.dir.join(case.id);
    let files = match write_files(&dir, case, &bench.ca_pem) {
        Ok(f) => f,
        Err(e) => {
            return result(
                Verdict::Fail(format!("cannot write the case's files: {e}")),
                None,
                String::new(),
            );
        }
    };
    let recipients: Vec<&str> = TO.iter().copied().take(case.recipients).collect();
    let argv = expand(
        template,
        &files,
        server.addr().port(),
        &recipients,
        bench.deadline,
    );
    let (exit, output) = match spawn(
        &argv,
        client.stdin.then_some(&files.message),
        &dir,
        bench.deadline,
    )
    .await
    {
        Ok(r) => r,
        Err(e) => {
            let program = argv.first().map(String::as_str).unwrap_or("");
            return result(
                Verdict::Fail(format!("cannot run `{program}`: {e}")),
                None,
                String::new(),
            );
        }
    };
    // The server reads what the client sent last (QUIT) a moment later.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let evidence = Evidence {
        exit,
        sessions: server.sessions(),
        required: client.mode != Mode::Opportunistic,
        password: PASSWORD.to_owned(),
        deadline: bench.deadline,
    };
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
    let checks = match (client.mode, case.opportunistic) {
        (Mode::Opportunistic, Some(c)) => c,
        _ => case.checks,
    };
    let verdict = match judge(checks, &evidence) {
        None => Verdict::Pass,
        Some(why) => Verdict::Fail(why),
    };
    result(verdict, Some(exit), output)
}

/// The files a command line may name.
pub(crate) struct Files {
    pub(crate) message: PathBuf,
    pub(crate) password: PathBuf,
    pub(crate) ca: PathBuf,
    pub(crate) dir: PathBuf,
}

fn write_files(dir: &Path, case: &Case, ca_pem: &str) -> std::io::Result<Files> {
    std::fs::create_dir_all(dir)?;
    let files = Files {
        message: dir.join("message.eml"),
        password: dir.join("password"),
        ca: dir.join("ca.pem"),
        dir: dir.to_owned(),
    };
    std::fs::write(&files.message, message(case))?;
    std::fs::write(&files.password, PASSWORD)?;
    std::fs::set_permissions(&files.password, std::fs::Permissions::from_mode(0o600))?;
    std::fs::write(&files.ca, ca_pem)?;
    Ok(files)
}

/// The message a case gives the client.
pub(crate) fn message(case: &Case) -> Vec<u8> {
    let head = format!(
        "From: Conformance <{FROM}>\r\nTo: <{}>\r\nSubject: conformance {}\r\n\
         Message-ID: <{}@client.test>\r\nDate: Tue, 01 Dec 2026 12:00:00 +0000\r\n\r\n",
        TO[0], case.id, case.id
    );
    let smuggled = "MAIL FROM:<evil@smuggler.test>\r\nRCPT TO:<victim@server.test>\r\nDATA\r\n\
                    From: <ceo@server.test>\r\n\r\nsmuggled\r\n";
    let body = match case.message {
        Message::Normal => "The body of a test message.\r\n".to_owned(),
        Message::Big => "A message larger than the server's SIZE.\r\n".repeat(20),
        Message::BareLf => {
            return format!("{head}Line one.\r\nLine two.\r\n{END_MARKER}\r\n")
                .replace("\r\n", "\n")
                .into_bytes();
        }
        Message::BareCr => "A line with a bare\rCR inside.\r\n".to_owned(),
        Message::LfDotLf => format!("Before.\n.\n{smuggled}"),
        Message::CrlfDotLf => format!("Before.\r\n.\n{smuggled}"),
        Message::DotLines => ".leading dot\r\n..two dots\r\n.\r\nafter a lone dot\r\n".to_owned(),
    };
    format!("{head}{body}{END_MARKER}\r\n").into_bytes()
}

/// The command line with its placeholders filled in (see
/// docs/conformance.md): an argument that is exactly `{to}` becomes one
/// argument per recipient, `{to:FLAG}` becomes `FLAG r1 FLAG r2`, and
/// `{to}` inside a longer argument the comma-separated list.
pub(crate) fn expand(
    template: &[String],
    files: &Files,
    port: u16,
    to: &[&str],
    deadline: Duration,
) -> Vec<String> {
    let smtp = std::env::current_exe()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "smtp".to_owned());
    let timeout = (deadline.as_secs() / 4).max(1).to_string();
    let long_timeout = (deadline.as_secs() / 2).max(1).to_string();
    let path = |p: &Path| p.to_string_lossy().into_owned();
    let values = [
        ("{smtp}", smtp),
        ("{host}", "127.0.0.1".to_owned()),
        ("{port}", port.to_string()),
        ("{from}", FROM.to_owned()),
        ("{message}", path(&files.message)),
        ("{user}", USER.to_owned()),
        ("{password}", PASSWORD.to_owned()),
        ("{password-file}", path(&files.password)),
        ("{ca-file}", path(&files.ca)),
        ("{dir}", path(&files.dir)),
        ("{timeout}", timeout),
        ("{long-timeout}", long_timeout),
        ("{to}", to.join(",")),
    ];
    let mut argv = Vec::new();
    for arg in template {
        if arg == "{to}" {
            argv.extend(to.iter().map(|r| (*r).to_owned()));
            continue;
        }
        if let Some(flag) = arg.strip_prefix("{to:").and_then(|a| a.strip_suffix('}')) {
            for r in to {
                argv.push(flag.to_owned());
                argv.push((*r).to_owned());
            }
            continue;
        }
        argv.push(values.iter().fold(arg.clone(), |a, (k, v)| a.replace(k, v)));
    }
    argv
}

/// Runs the command in a process group of its own, with `stdin` as its
/// standard input (else nothing) and `dir` as its home; kills the group at
/// the deadline. Returns how it ended and the end of its output.
async fn spawn(
    argv: &[String],
    stdin: Option<&PathBuf>,
    dir: &Path,
    deadline: Duration,
) -> std::io::Result<(Exit, String)> {
    let Some((program, args)) = argv.split_first() else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "empty command",
        ));
    };
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .current_dir(dir)
        .env("HOME", dir)
        .env("XDG_CONFIG_HOME", dir)
        .env_remove("SMTP_PASSWORD")
        .process_group(0)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd.stdin(match stdin {
        Some(p) => Stdio::from(std::fs::File::open(p)?),
        None => Stdio::null(),
    });
    let mut child = cmd.spawn()?;
    let out = child.stdout.take().map(|o| tokio::spawn(tail(o)));
    let err = child.stderr.take().map(|e| tokio::spawn(tail(e)));
    let exit = match tokio::time::timeout(deadline, child.wait()).await {
        Ok(status) => {
            let status = status?;
            use std::os::unix::process::ExitStatusExt as _;
            match (status.code(), status.signal()) {
                (Some(c), _) => Exit::Code(c),
                (None, Some(s)) => Exit::Signal(s),
                (None, None) => Exit::Code(-1),
            }
        }
        Err(_) => {
            if let Some(pid) = child
                .id()
                .and_then(|p| rustix::process::Pid::from_raw(p as i32))
            {
                let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
            }
            let _ = child.wait().await;
            Exit::Hung
        }
    };
    let mut output = String::new();
    for task in [out, err].into_iter().flatten() {
        // A grandchild may hold the pipe open: take what came by now.
        if let Ok(Ok(bytes)) = tokio::time::timeout(Duration::from_millis(500), task).await {
            output.push_str(&String::from_utf8_lossy(&bytes));
        }
    }
    Ok((exit, output))
}

/// Reads to the end, keeping the last [`MAX_OUTPUT`] octets.
async fn tail(mut r: impl tokio::io::AsyncRead + Unpin) -> Vec<u8> {
    let mut kept = Vec::new();
    let mut chunk = [0u8; 4096];
    while let Ok(n) = r.read(&mut chunk).await {
        if n == 0 {
            break;
        }
        kept.extend_from_slice(&chunk[..n]);
        if kept.len() > MAX_OUTPUT {
            kept.drain(..kept.len() - MAX_OUTPUT);
        }
    }
    kept
}
