//! Running a case: its server, its files, the client's command line with
//! the placeholders filled in, one process (group) per case with a
//! deadline, then the judge.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
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

    /// The scratch directory (every case's files under it).
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
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

/// The client's command lines expand (no unknown placeholder) and their
/// program exists: a usage error before any case runs, rather than every
/// case failing to start.
pub(crate) fn check_command(client: &Client, deadline: Duration) -> Result<(), String> {
    let dir = PathBuf::from("/nonexistent");
    let files = Files {
        message: dir.join("message.eml"),
        password: dir.join("password"),
        ca: dir.join("ca.pem"),
        dir: dir.clone(),
    };
    for template in std::iter::once(&client.command).chain(&client.implicit_command) {
        let argv = expand(template, &files, 25, &TO, deadline)?;
        let Some(program) = argv.first() else {
            return Err("the client's command is empty".into());
        };
        let found = if program.contains('/') {
            Path::new(program).is_file()
        } else {
            std::env::var_os("PATH")
                .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
        };
        if !found {
            return Err(format!(
                "cannot find the client's program `{program}`{}",
                if program.contains('/') {
                    " (a relative path is taken from the current directory)"
                } else {
                    " in PATH"
                }
            ));
        }
    }
    Ok(())
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
        hint: String::new(),
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
    let argv = match expand(
        template,
        &files,
        server.addr().port(),
        &recipients,
        bench.deadline,
    ) {
        Ok(a) => a,
        Err(e) => return result(Verdict::Fail(e), None, String::new()),
    };
    let ran = match spawn(
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
    let (exit, output) = (ran.exit, ran.output);
    // The server reads what the client sent last (QUIT) a moment later.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let evidence = Evidence {
        exit,
        sessions: server.sessions(),
        flooded: server.flooded(),
        first_error_line: ran.first_error_line,
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
    // 0600 from its creation: never readable by others, not even briefly.
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&files.password)?
        .write_all(PASSWORD.as_bytes())?;
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

/// The placeholders `expand` knows (besides `{to:FLAG}`).
pub(crate) const PLACEHOLDERS: [&str; 13] = [
    "smtp",
    "host",
    "port",
    "from",
    "to",
    "message",
    "user",
    "password",
    "password-file",
    "ca-file",
    "dir",
    "timeout",
    "long-timeout",
];

/// The command line with its placeholders filled in (see
/// docs/conformance.md): an argument that is exactly `{to}` becomes one
/// argument per recipient, `{to:FLAG}` becomes `FLAG r1 FLAG r2`, and
/// `{to}` inside a longer argument the comma-separated list. One pass
/// over the template: a value put in is never expanded again. `{name}`
/// with a lower-case name that is not a placeholder is an error naming
/// it; other braces (`${HOME}`, `{}`) stay as they are.
pub(crate) fn expand(
    template: &[String],
    files: &Files,
    port: u16,
    to: &[&str],
    deadline: Duration,
) -> Result<Vec<String>, String> {
    let smtp = std::env::current_exe()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "smtp".to_owned());
    let path = |p: &Path| p.to_string_lossy().into_owned();
    let value = |name: &str| -> Option<String> {
        Some(match name {
            "smtp" => smtp.clone(),
            "host" => "127.0.0.1".to_owned(),
            "port" => port.to_string(),
            "from" => FROM.to_owned(),
            "to" => to.join(","),
            "message" => path(&files.message),
            "user" => USER.to_owned(),
            "password" => PASSWORD.to_owned(),
            "password-file" => path(&files.password),
            "ca-file" => path(&files.ca),
            "dir" => path(&files.dir),
            "timeout" => (deadline.as_secs() / 4).max(1).to_string(),
            "long-timeout" => (deadline.as_secs() / 2).max(1).to_string(),
            _ => return None,
        })
    };
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
        argv.push(substitute(arg, &value)?);
    }
    Ok(argv)
}

/// One pass over `arg`: each `{name}` replaced by its value.
fn substitute(arg: &str, value: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(arg.len());
    let mut rest = arg;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let name = after.find('}').map(|close| &after[..close]);
        let is_name = name.is_some_and(|n| {
            n.starts_with(|c: char| c.is_ascii_lowercase())
                && n.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == ':')
        });
        match name {
            Some(n) if is_name => {
                if n.starts_with("to:") {
                    return Err(format!(
                        "`{{{n}}}` must be an argument on its own (`{{to}}` inside an argument \
                         gives the recipients comma-separated)"
                    ));
                }
                let v = value(n).ok_or_else(|| {
                    format!(
                        "unknown placeholder `{{{n}}}` (known: {{{}}}, {{to:FLAG}})",
                        PLACEHOLDERS.join("} {")
                    )
                })?;
                out.push_str(&v);
                rest = &after[n.len() + 1..];
            }
            _ => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// How a client's run ended.
struct Ran {
    exit: Exit,
    /// The end of its output (stdout, then stderr).
    output: String,
    /// The first line of its standard error (for "never connected").
    first_error_line: String,
}

/// The process groups of the clients running now: killed on Ctrl-C or
/// SIGTERM ([`kill_running`]).
static RUNNING: std::sync::Mutex<Vec<i32>> = std::sync::Mutex::new(Vec::new());

/// Kills every running client's process group (on a signal).
pub(crate) fn kill_running() {
    if let Ok(running) = RUNNING.lock() {
        for &pgid in running.iter() {
            kill_group(pgid);
        }
    }
}

fn kill_group(pgid: i32) {
    if let Some(pid) = rustix::process::Pid::from_raw(pgid) {
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    }
}

/// Runs the command in a process group of its own, in the invoker's
/// current directory, with `stdin` as its standard input (else nothing)
/// and `dir` as its home; kills the group at the deadline and, whatever
/// happened, once it ended (so children it left behind die too). Returns
/// how it ended and its output.
async fn spawn(
    argv: &[String],
    stdin: Option<&PathBuf>,
    dir: &Path,
    deadline: Duration,
) -> std::io::Result<Ran> {
    let Some((program, args)) = argv.split_first() else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "empty command",
        ));
    };
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
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
    let pgid = child.id().map(|p| p as i32);
    if let (Some(p), Ok(mut running)) = (pgid, RUNNING.lock()) {
        running.push(p);
    }
    let out = child.stdout.take().map(|o| tokio::spawn(tail(o)));
    let err = child.stderr.take().map(|e| tokio::spawn(tail(e)));
    let waited = tokio::time::timeout(deadline, child.wait()).await;
    // The group dies now, whether the client finished or not: a child it
    // left behind (a daemon) must not outlive the case.
    if let Some(p) = pgid {
        kill_group(p);
    }
    let exit = match waited {
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
            let _ = child.wait().await;
            Exit::Hung
        }
    };
    if let (Some(p), Ok(mut running)) = (pgid, RUNNING.lock()) {
        running.retain(|&r| r != p);
    }
    let mut output = String::new();
    let mut first_error_line = String::new();
    for (i, task) in [out, err].into_iter().enumerate() {
        let Some(task) = task else { continue };
        // A grandchild (in another session) may hold the pipe open: take
        // what came by now.
        if let Ok(Ok((head, bytes))) = tokio::time::timeout(Duration::from_millis(500), task).await
        {
            output.push_str(&String::from_utf8_lossy(&bytes));
            if i == 1 {
                first_error_line = String::from_utf8_lossy(&head).into_owned();
            }
        }
    }
    Ok(Ran {
        exit,
        output,
        first_error_line,
    })
}

/// Reads to the end, keeping the first line (at most 200 octets) and the
/// last [`MAX_OUTPUT`] octets.
async fn tail(mut r: impl tokio::io::AsyncRead + Unpin) -> (Vec<u8>, Vec<u8>) {
    let mut kept = Vec::new();
    let mut head: Option<Vec<u8>> = None;
    let mut first = Vec::new();
    let mut chunk = [0u8; 4096];
    while let Ok(n) = r.read(&mut chunk).await {
        if n == 0 {
            break;
        }
        if head.is_none() {
            first.extend_from_slice(&chunk[..n]);
            if let Some(nl) = first.iter().position(|&b| b == b'\n') {
                first.truncate(nl);
                head = Some(std::mem::take(&mut first));
            } else if first.len() >= 200 {
                head = Some(std::mem::take(&mut first));
            }
        }
        kept.extend_from_slice(&chunk[..n]);
        if kept.len() > MAX_OUTPUT {
            kept.drain(..kept.len() - MAX_OUTPUT);
        }
    }
    let mut head = head.unwrap_or(first);
    head.truncate(200);
    (head, kept)
}
