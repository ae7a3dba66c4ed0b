//! A scripted fake SMTP server: a scenario reads like a transcript and can
//! misbehave on purpose.
//!
//! ```text
//! S: 220 mx.example.net ESMTP      send this line (CRLF added)
//! C: EHLO *                        expect a client line (`*` at the end: any rest; `*` alone: any line)
//! S: 250-mx.example.net
//! S: 250 STARTTLS
//! C: STARTTLS
//! S: 220 go ahead
//! RAW: 250 injected\r\n            send bytes as written (`\r`, `\n`, `\\` escapes), no CRLF added
//! STARTTLS                         start TLS with the server's certificate
//! DRIP 10ms: 250 ok                send the line one byte at a time, pausing between bytes
//! SLEEP 2s                         pause
//! CLOSE                            hang up
//! ```
//!
//! Consecutive `S:` lines go out in one write, as a real pipelining server
//! would send them. A mismatch stops the script and is reported with what
//! was expected and what arrived. Runs over real TCP on 127.0.0.1
//! ([`ScriptedServer`]) or over any in-memory stream ([`serve`]).

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::certs::Identity;

/// A client line longer than this is recorded as a fault.
const MAX_LINE: usize = 64 * 1024;

/// One step of a script.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Send these bytes.
    Send(Vec<u8>),
    /// Send these bytes one at a time, pausing between them.
    Drip(Vec<u8>, Duration),
    /// Expect a client line.
    Expect(Expect),
    /// Upgrade the connection to TLS.
    StartTls,
    /// Pause.
    Sleep(Duration),
    /// Close the connection.
    Close,
}

/// What a client line must be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expect {
    /// Exactly this line.
    Exact(String),
    /// A line starting with this.
    Prefix(String),
    /// Any line.
    Any,
}

impl Expect {
    fn parse(pattern: &str) -> Self {
        match pattern.strip_suffix('*') {
            Some("") => Self::Any,
            Some(prefix) => Self::Prefix(prefix.to_owned()),
            None => Self::Exact(pattern.to_owned()),
        }
    }

    fn matches(&self, line: &str) -> bool {
        match self {
            Self::Exact(e) => line == e,
            Self::Prefix(p) => line.starts_with(p.as_str()),
            Self::Any => true,
        }
    }
}

impl fmt::Display for Expect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exact(e) => write!(f, "`{e}`"),
            Self::Prefix(p) => write!(f, "`{p}*`"),
            Self::Any => f.write_str("any line"),
        }
    }
}

/// A scenario.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Script {
    /// The steps, in order.
    pub steps: Vec<Step>,
}

/// A script that does not parse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScriptError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for ScriptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "script line {}: {}", self.line, self.reason)
    }
}

impl std::error::Error for ScriptError {}

fn duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if let Some(ms) = s.strip_suffix("ms") {
        return ms.trim().parse().ok().map(Duration::from_millis);
    }
    s.strip_suffix('s')
        .and_then(|v| v.trim().parse().ok())
        .map(Duration::from_secs)
}

fn unescape(s: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match (c, chars.clone().next()) {
            ('\\', Some('r')) => {
                out.push(b'\r');
                chars.next();
            }
            ('\\', Some('n')) => {
                out.push(b'\n');
                chars.next();
            }
            ('\\', Some('\\')) => {
                out.push(b'\\');
                chars.next();
            }
            (c, _) => out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
        }
    }
    out
}

impl Script {
    /// An empty script.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sends `line` and CRLF.
    #[must_use]
    pub fn send(mut self, line: &str) -> Self {
        let mut bytes = line.as_bytes().to_vec();
        bytes.extend_from_slice(b"\r\n");
        match self.steps.last_mut() {
            // Consecutive lines go out in one write.
            Some(Step::Send(prev)) => prev.extend_from_slice(&bytes),
            _ => self.steps.push(Step::Send(bytes)),
        }
        self
    }

    /// Sends bytes as given, as their own write.
    #[must_use]
    pub fn send_raw(mut self, bytes: &[u8]) -> Self {
        self.steps.push(Step::Send(bytes.to_vec()));
        self
    }

    /// Expects a client line (`*` at the end: any rest; `*` alone: anything).
    #[must_use]
    pub fn expect(mut self, pattern: &str) -> Self {
        self.steps.push(Step::Expect(Expect::parse(pattern)));
        self
    }

    /// Sends `bytes` one at a time, `every` apart.
    #[must_use]
    pub fn drip(mut self, bytes: &[u8], every: Duration) -> Self {
        self.steps.push(Step::Drip(bytes.to_vec(), every));
        self
    }

    /// Upgrades to TLS.
    #[must_use]
    pub fn starttls(mut self) -> Self {
        self.steps.push(Step::StartTls);
        self
    }

    /// Pauses.
    #[must_use]
    pub fn sleep(mut self, d: Duration) -> Self {
        self.steps.push(Step::Sleep(d));
        self
    }

    /// Hangs up.
    #[must_use]
    pub fn close(mut self) -> Self {
        self.steps.push(Step::Close);
        self
    }

    /// Parses the plain-text form (see the module documentation).
    pub fn parse(text: &str) -> Result<Self, ScriptError> {
        let mut script = Self::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim_start();
            let err = |reason: &str| ScriptError {
                line: i + 1,
                reason: reason.to_owned(),
            };
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let body = |prefix: &str| {
                line.strip_prefix(prefix)
                    .map(|r| r.strip_prefix(' ').unwrap_or(r))
            };
            script = if let Some(s) = body("S:") {
                script.send(s)
            } else if let Some(c) = body("C:") {
                script.expect(c)
            } else if let Some(r) = body("RAW:") {
                script.send_raw(&unescape(r))
            } else if let Some(rest) = line.strip_prefix("DRIP ") {
                let (every, text) = rest
                    .split_once(':')
                    .ok_or_else(|| err("DRIP needs `DRIP 10ms: text`"))?;
                let every =
                    duration(every).ok_or_else(|| err("DRIP needs a duration such as 10ms"))?;
                let mut bytes = text.strip_prefix(' ').unwrap_or(text).as_bytes().to_vec();
                bytes.extend_from_slice(b"\r\n");
                script.drip(&bytes, every)
            } else if let Some(rest) = line.strip_prefix("SLEEP ") {
                script.sleep(
                    duration(rest)
                        .ok_or_else(|| err("SLEEP needs a duration such as 2s or 100ms"))?,
                )
            } else if line == "STARTTLS" {
                script.starttls()
            } else if line == "CLOSE" {
                script.close()
            } else {
                return Err(err(
                    "a line starts with S:, C:, RAW:, DRIP, SLEEP, STARTTLS or CLOSE",
                ));
            };
        }
        Ok(script)
    }
}

/// What happened when a script ran.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScriptOutcome {
    /// `C: …` / `S: …` lines.
    pub transcript: Vec<String>,
    /// The first expectation not met, if any.
    pub mismatch: Option<String>,
    /// Bytes the client sent after the script ended.
    pub received_after_end: Vec<u8>,
}

impl ScriptOutcome {
    /// Panics with expected, received and the transcript unless the script ran clean.
    pub fn assert_ok(&self) {
        if let Some(m) = &self.mismatch {
            panic!("{m}\ntranscript:\n{}", self.transcript.join("\n"));
        }
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

async fn read_line(io: &mut (dyn Io + '_), buf: &mut Vec<u8>) -> Result<Option<String>, String> {
    loop {
        if let Some(pos) = buf.iter().position(|&b| b == b'\n') {
            let mut line: Vec<u8> = buf.drain(..=pos).collect();
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            return Ok(Some(String::from_utf8_lossy(&line).into_owned()));
        }
        if buf.len() > MAX_LINE {
            return Err(format!("the client sent a line over {MAX_LINE} bytes"));
        }
        let mut chunk = [0u8; 4096];
        match io.read(&mut chunk).await {
            Ok(0) | Err(_) => return Ok(None),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

async fn run(mut io: Box<dyn Io + '_>, script: Script, tls: Option<&Identity>) -> ScriptOutcome {
    let mut out = ScriptOutcome::default();
    let mut buf = Vec::new();
    for step in script.steps {
        match step {
            Step::Send(bytes) => {
                for l in String::from_utf8_lossy(&bytes).split_terminator("\r\n") {
                    out.transcript.push(format!("S: {l}"));
                }
                if io.write_all(&bytes).await.is_err() {
                    out.mismatch = Some(
                        "the client closed the connection while the server was sending".into(),
                    );
                    return out;
                }
            }
            Step::Drip(bytes, every) => {
                out.transcript.push(format!(
                    "S: (dripped) {}",
                    String::from_utf8_lossy(&bytes).trim_end()
                ));
                for b in bytes {
                    if io.write_all(&[b]).await.is_err() {
                        out.mismatch =
                            Some("the client closed the connection during a drip".into());
                        return out;
                    }
                    let _ = io.flush().await;
                    tokio::time::sleep(every).await;
                }
            }
            Step::Expect(expect) => match read_line(io.as_mut(), &mut buf).await {
                Ok(Some(line)) => {
                    out.transcript.push(format!("C: {line}"));
                    if !expect.matches(&line) {
                        out.mismatch = Some(format!("expected {expect}, received `{line}`"));
                        return out;
                    }
                }
                Ok(None) => {
                    out.mismatch = Some(format!(
                        "expected {expect}, but the client closed the connection"
                    ));
                    return out;
                }
                Err(e) => {
                    out.mismatch = Some(format!("expected {expect}, but {e}"));
                    return out;
                }
            },
            Step::StartTls => {
                let Some(identity) = tls else {
                    out.mismatch =
                        Some("the script says STARTTLS but the server has no certificate".into());
                    return out;
                };
                buf.clear();
                let acceptor = TlsAcceptor::from(identity.server_config());
                match acceptor.accept(io).await {
                    Ok(s) => io = Box::new(s),
                    Err(e) => {
                        out.mismatch = Some(format!("the TLS handshake failed: {e}"));
                        return out;
                    }
                }
                out.transcript.push("-- TLS --".into());
            }
            Step::Sleep(d) => tokio::time::sleep(d).await,
            Step::Close => {
                let _ = io.shutdown().await;
                out.transcript.push("-- closed --".into());
                return out;
            }
        }
    }
    // Whatever the client sends after the script (e.g. QUIT) is kept, briefly.
    let mut rest = buf;
    let mut chunk = [0u8; 4096];
    while let Ok(Ok(n)) =
        tokio::time::timeout(Duration::from_millis(200), io.read(&mut chunk)).await
    {
        if n == 0 || rest.len() > MAX_LINE {
            break;
        }
        rest.extend_from_slice(&chunk[..n]);
    }
    out.received_after_end = rest;
    out
}

/// Runs `script` over any stream (e.g. one end of `tokio::io::duplex`).
/// `STARTTLS` steps need [`ScriptedServer`] with a certificate.
pub async fn serve<S: AsyncRead + AsyncWrite + Unpin + Send>(
    stream: S,
    script: Script,
) -> ScriptOutcome {
    run(Box::new(stream), script, None).await
}

/// A scripted server on 127.0.0.1: one script per connection, in order.
#[derive(Debug)]
pub struct ScriptedServer {
    addr: SocketAddr,
    task: JoinHandle<Vec<ScriptOutcome>>,
}

impl ScriptedServer {
    /// Listens on an ephemeral port; runs `script` on the first connection.
    pub async fn start(script: Script, tls: Option<Identity>) -> std::io::Result<Self> {
        Self::start_sequence(vec![script], tls).await
    }

    /// Listens on an ephemeral port; runs `scripts[n]` on the `n`th
    /// connection, one connection at a time, and stops listening after the
    /// last (a further connection is refused). For clients that reconnect
    /// or keep connections for reuse.
    pub async fn start_sequence(
        scripts: Vec<Script>,
        tls: Option<Identity>,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            let mut outcomes = Vec::with_capacity(scripts.len());
            for script in scripts {
                outcomes.push(match listener.accept().await {
                    Ok((tcp, _)) => run(Box::new(tcp), script, tls.as_ref()).await,
                    Err(e) => ScriptOutcome {
                        mismatch: Some(format!("accept failed: {e}")),
                        ..ScriptOutcome::default()
                    },
                });
            }
            outcomes
        });
        Ok(Self { addr, task })
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Waits for the script to end (at most `timeout`).
    pub async fn finish(self, timeout: Duration) -> ScriptOutcome {
        self.finish_all(timeout)
            .await
            .into_iter()
            .next()
            .unwrap_or_default()
    }

    /// Waits for every connection's script to end (at most `timeout` in
    /// all); one outcome per script, in order.
    pub async fn finish_all(self, timeout: Duration) -> Vec<ScriptOutcome> {
        let failed = |why: String| {
            vec![ScriptOutcome {
                mismatch: Some(why),
                ..ScriptOutcome::default()
            }]
        };
        match tokio::time::timeout(timeout, self.task).await {
            Ok(Ok(outcomes)) => outcomes,
            Ok(Err(e)) => failed(format!("the script task failed: {e}")),
            Err(_) => failed(format!("the scripts did not finish within {timeout:?}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_text_form() {
        let s = Script::parse(
            "# a comment\nS: 220 hi\nS: 250 more\nC: EHLO *\nC: *\nRAW: 250 a\\r\\n\nDRIP 5ms: 250 b\nSLEEP 2s\nSTARTTLS\nCLOSE\n",
        )
        .unwrap();
        assert_eq!(s.steps[0], Step::Send(b"220 hi\r\n250 more\r\n".to_vec()));
        assert_eq!(s.steps[1], Step::Expect(Expect::Prefix("EHLO ".into())));
        assert_eq!(s.steps[2], Step::Expect(Expect::Any));
        assert_eq!(s.steps[3], Step::Send(b"250 a\r\n".to_vec()));
        assert_eq!(
            s.steps[4],
            Step::Drip(b"250 b\r\n".to_vec(), Duration::from_millis(5))
        );
        assert_eq!(s.steps[5], Step::Sleep(Duration::from_secs(2)));
        assert_eq!(s.steps[6], Step::StartTls);
        assert_eq!(s.steps[7], Step::Close);
        let e = Script::parse("S: ok\nbogus\n").unwrap_err();
        assert_eq!(e.line, 2);
    }

    #[tokio::test]
    async fn in_memory_mismatch_names_both_lines() {
        let (client, server) = tokio::io::duplex(4096);
        let script =
            Script::parse("S: 220 hi\nC: EHLO client.test\nS: 250 ok\nC: MAIL FROM:<a@b.test>\n")
                .unwrap();
        let task = tokio::spawn(serve(server, script));
        let (mut r, mut w) = tokio::io::split(client);
        // A server that stops answering fails the test in seconds.
        let exchange = async {
            let mut buf = [0u8; 64];
            let _ = r.read(&mut buf).await.unwrap();
            w.write_all(b"EHLO client.test\r\n").await.unwrap();
            let _ = r.read(&mut buf).await.unwrap();
            w.write_all(b"RCPT TO:<x@y.test>\r\n").await.unwrap();
            task.await.unwrap()
        };
        let outcome = tokio::time::timeout(Duration::from_secs(5), exchange)
            .await
            .expect("the scripted server answers within 5 s");
        assert_eq!(
            outcome.mismatch.as_deref(),
            Some("expected `MAIL FROM:<a@b.test>`, received `RCPT TO:<x@y.test>`")
        );
        assert_eq!(
            outcome.transcript,
            [
                "S: 220 hi",
                "C: EHLO client.test",
                "S: 250 ok",
                "C: RCPT TO:<x@y.test>"
            ]
        );
    }
}
