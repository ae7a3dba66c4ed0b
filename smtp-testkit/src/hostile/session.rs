//! One connection to the hostile server: a [`Session`] answers each
//! command with the method named after it, records the wire as it goes,
//! and plays the configured fault at its phase.

use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use super::{Budget, Chunk, Command, DataRecord, Fault, HostileConfig, MAX_RECORDED, Phase, Side};
use super::{MAX_COMMAND_BYTES, MAX_COMMANDS, MAX_MESSAGES, SessionRecord, verb};

mod auth;
mod flaws;

/// A client line longer than this ends the session.
const MAX_LINE: usize = 64 * 1024;
/// How long a held reply waits for more of the client's group.
const HOLD: Duration = Duration::from_secs(1);
/// How long the server listens for a client running ahead (after its new
/// EHLO following injection; after DATA with held replies).
const LISTEN_AHEAD: Duration = Duration::from_secs(1);
/// An endless reply stops after this much, whatever the client does.
const MAX_ENDLESS: usize = 64 * 1024 * 1024;

enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    Closed,
}

/// What comes after a command.
#[derive(PartialEq, Eq)]
enum Flow {
    Continue,
    End,
}

#[derive(Default)]
struct Transaction {
    from: Option<String>,
    rcpts: Vec<String>,
}

struct Session {
    config: Arc<HostileConfig>,
    record: Arc<Mutex<SessionRecord>>,
    budget: Arc<Budget>,
    recorded: usize,
    /// Commands recorded: how many, how many bytes.
    commands: (usize, usize),
    /// Data bytes recorded over every message.
    data_bytes: usize,
    /// The client went over a bound: the session ends (reads see the end).
    flooded: bool,
    stream: Stream,
    buf: Vec<u8>,
    tls: bool,
    tx: Transaction,
    /// Replies held back (PIPELINING with held replies).
    held: Vec<u8>,
    /// The fault has been played.
    fault_done: bool,
    /// The next EHLO inside TLS follows an injection: listen ahead.
    check_injection: bool,
}

/// Serves one connection until QUIT, the client leaving, or a fault.
pub(super) async fn serve(
    tcp: TcpStream,
    config: Arc<HostileConfig>,
    record: Arc<Mutex<SessionRecord>>,
    budget: Arc<Budget>,
) {
    let mut s = Session {
        config,
        record,
        budget,
        recorded: 0,
        commands: (0, 0),
        data_bytes: 0,
        flooded: false,
        stream: Stream::Plain(tcp),
        buf: Vec::new(),
        tls: false,
        tx: Transaction::default(),
        held: Vec::new(),
        fault_done: false,
        check_injection: false,
    };
    if s.config.implicit_tls && s.handshake().await.is_err() {
        return;
    }
    let _ = s.run().await;
    let _ = s.shutdown().await;
}

impl Session {
    fn note(&self, f: impl FnOnce(&mut SessionRecord)) {
        if let Ok(mut r) = self.record.lock() {
            f(&mut r);
        }
    }

    /// The client went over a bound: recorded, and the session ends.
    fn flood(&mut self, why: String) {
        if !self.flooded {
            self.flooded = true;
            self.budget.flood(why.clone());
            self.note(|r| r.flooded = Some(why));
        }
    }

    fn keep(&mut self, from: Side, bytes: &[u8]) {
        let tls = self.tls;
        if self.recorded + bytes.len() > MAX_RECORDED {
            self.note(|r| r.truncated = true);
            return;
        }
        if !self.budget.take(bytes.len()) {
            self.note(|r| r.truncated = true);
            self.flood(format!(
                "sent more than {} MiB in all",
                super::MAX_CASE_BYTES >> 20
            ));
            return;
        }
        self.recorded += bytes.len();
        self.note(|r| match r.wire.last_mut() {
            Some(last) if last.from == from && last.tls == tls => {
                last.bytes.extend_from_slice(bytes);
            }
            _ => r.wire.push(Chunk {
                from,
                tls,
                bytes: bytes.to_vec(),
            }),
        });
    }

    /// Reads more from the client into the buffer; 0 when it left (or
    /// flooded the server).
    async fn read_more(&mut self) -> io::Result<usize> {
        if self.flooded {
            return Ok(0);
        }
        let mut chunk = [0u8; 8192];
        let n = match &mut self.stream {
            Stream::Plain(s) => s.read(&mut chunk).await?,
            Stream::Tls(s) => s.read(&mut chunk).await?,
            Stream::Closed => 0,
        };
        self.keep(Side::Client, &chunk[..n]);
        if self.flooded {
            return Ok(0);
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    /// Whether the client sends anything within `d` (or already had).
    async fn client_runs_ahead(&mut self, d: Duration) -> bool {
        !self.buf.is_empty()
            || matches!(tokio::time::timeout(d, self.read_more()).await, Ok(Ok(n)) if n > 0)
    }

    async fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.keep(Side::Server, bytes);
        match &mut self.stream {
            Stream::Plain(s) => s.write_all(bytes).await,
            Stream::Tls(s) => {
                s.write_all(bytes).await?;
                s.flush().await
            }
            Stream::Closed => Err(io::ErrorKind::NotConnected.into()),
        }
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        match &mut self.stream {
            Stream::Plain(s) => s.shutdown().await,
            Stream::Tls(s) => s.shutdown().await,
            Stream::Closed => Ok(()),
        }
    }

    async fn handshake(&mut self) -> io::Result<()> {
        let Some(id) = &self.config.tls else {
            return Err(io::ErrorKind::Unsupported.into());
        };
        let acceptor = TlsAcceptor::from(id.server_config());
        let Stream::Plain(tcp) = std::mem::replace(&mut self.stream, Stream::Closed) else {
            return Err(io::ErrorKind::Unsupported.into());
        };
        match acceptor.accept(tcp).await {
            Ok(s) => {
                self.stream = Stream::Tls(Box::new(s));
                self.tls = true;
                self.note(|r| r.tls = true);
                Ok(())
            }
            Err(e) => {
                let why = e.to_string();
                self.note(|r| r.handshake_failed = Some(why));
                Err(e)
            }
        }
    }

    /// The next line without its line end; `None` when the client left.
    /// Held replies go out when the client has been quiet for a while.
    async fn next_line(&mut self) -> io::Result<Option<Vec<u8>>> {
        loop {
            if let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let mut line: Vec<u8> = self.buf.drain(..=pos).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(Some(line));
            }
            if self.buf.len() > MAX_LINE {
                return Ok(None);
            }
            if !self.held.is_empty() {
                match tokio::time::timeout(HOLD, self.read_more()).await {
                    Ok(Ok(0)) => return Ok(None),
                    Ok(r) => {
                        r?;
                    }
                    Err(_) => self.flush_held().await?,
                }
                continue;
            }
            if self.read_more().await? == 0 {
                return Ok(None);
            }
        }
    }

    async fn flush_held(&mut self) -> io::Result<()> {
        let held = std::mem::take(&mut self.held);
        if held.is_empty() {
            return Ok(());
        }
        self.write(&held).await
    }

    /// Sends `text` (CRLF-ended lines), or plays the fault when it is
    /// this phase's; held back when replies are held and `hold` allows.
    async fn reply(&mut self, phase: Option<Phase>, text: &str, hold: bool) -> io::Result<Flow> {
        if let (Some(phase), Some((at, fault)), false) =
            (phase, self.config.fault.clone(), self.fault_done)
            && phase == at
        {
            self.fault_done = true;
            self.flush_held().await?;
            return self.fault(fault, text).await;
        }
        if hold && self.config.hold_replies {
            self.held.extend_from_slice(text.as_bytes());
            return Ok(Flow::Continue);
        }
        self.flush_held().await?;
        self.write(text.as_bytes()).await?;
        Ok(Flow::Continue)
    }

    async fn fault(&mut self, fault: Fault, text: &str) -> io::Result<Flow> {
        match fault {
            Fault::ReplyAndClose(line) => {
                self.write(format!("{line}\r\n").as_bytes()).await?;
                Ok(Flow::End)
            }
            Fault::Close => Ok(Flow::End),
            Fault::Silence => {
                while self.read_more().await? > 0 {
                    self.buf.clear();
                }
                Ok(Flow::End)
            }
            Fault::Drip(every) => {
                for b in text.bytes() {
                    self.write(&[b]).await?;
                    tokio::time::sleep(every).await;
                }
                Ok(Flow::Continue)
            }
            Fault::LongLine(n) => {
                let code = text.get(..3).unwrap_or("250");
                let mut line = format!("{code} ").into_bytes();
                line.resize(4 + n.min(MAX_ENDLESS), b'x');
                line.extend_from_slice(b"\r\n");
                self.write(&line).await?;
                Ok(Flow::Continue)
            }
            Fault::EndlessMultiline => {
                let code = text.get(..3).unwrap_or("250");
                let lines = format!("{code}-and there is more to say\r\n").repeat(100);
                let mut sent = 0;
                while sent < MAX_ENDLESS {
                    self.write(lines.as_bytes()).await?;
                    sent += lines.len();
                }
                Ok(Flow::End)
            }
        }
    }

    async fn run(&mut self) -> io::Result<()> {
        let greeting = format!("220 {} ESMTP hostile test server\r\n", self.config.hostname);
        if self.reply(Some(Phase::Greeting), &greeting, false).await? == Flow::End {
            return Ok(());
        }
        while let Some(raw) = self.next_line().await? {
            let line = String::from_utf8_lossy(&raw).into_owned();
            let verb = verb(&line);
            let logged = if verb == "AUTH" {
                let mech = line.split_whitespace().nth(1).unwrap_or("");
                format!("AUTH {mech} <redacted>")
            } else {
                line.clone()
            };
            self.commands.0 += 1;
            self.commands.1 += logged.len();
            if self.commands.0 > MAX_COMMANDS {
                self.flood(format!("sent more than {MAX_COMMANDS} commands"));
                break;
            }
            if self.commands.1 > MAX_COMMAND_BYTES {
                self.flood(format!(
                    "sent more than {} KiB of commands",
                    MAX_COMMAND_BYTES >> 10
                ));
                break;
            }
            let tls = self.tls;
            self.note(|r| r.commands.push(Command { line: logged, tls }));
            let arg = line.get(verb.len()..).unwrap_or("").trim().to_owned();
            if self.command(&verb, &arg).await? == Flow::End {
                break;
            }
            if self.config.flaws.drop_pipelined && !self.config.hold_replies {
                self.buf.clear();
            }
        }
        Ok(())
    }

    async fn command(&mut self, verb: &str, arg: &str) -> io::Result<Flow> {
        match verb {
            "EHLO" => self.ehlo().await,
            "HELO" => {
                let text = format!("250 {}\r\n", self.config.hostname);
                self.reply(Some(Phase::Ehlo), &text, false).await
            }
            "STARTTLS" => self.starttls().await,
            "AUTH" => self.auth(arg).await,
            "MAIL" => self.mail(arg).await,
            "RCPT" => self.rcpt(arg).await,
            "DATA" => self.data().await,
            "RSET" => {
                self.tx = Transaction::default();
                self.reply(None, "250 2.0.0 reset\r\n", true).await
            }
            "NOOP" => self.reply(None, "250 2.0.0 ok\r\n", false).await,
            "VRFY" | "EXPN" if self.config.flaws.answer_vrfy => self.vrfy(arg).await,
            "QUIT" => {
                self.reply(None, "221 2.0.0 bye\r\n", false).await?;
                Ok(Flow::End)
            }
            _ => {
                self.reply(None, "502 5.5.2 command not recognised\r\n", false)
                    .await
            }
        }
    }

    async fn ehlo(&mut self) -> io::Result<Flow> {
        if self.check_injection && self.tls {
            self.check_injection = false;
            if self.client_runs_ahead(LISTEN_AHEAD).await {
                self.note(|r| r.acted_on_injection = true);
            }
        }
        let config = self.config.clone();
        if let Some(refusal) = &config.ehlo_reply {
            return self
                .reply(Some(Phase::Ehlo), &format!("{refusal}\r\n"), false)
                .await;
        }
        let mut caps = vec![config.hostname.clone(), "ENHANCEDSTATUSCODES".into()];
        if config.pipelining {
            caps.push("PIPELINING".into());
        }
        caps.push(format!("SIZE {}", config.size));
        caps.push("8BITMIME".into());
        if config.tls.is_some() && config.offer_starttls && !self.tls {
            caps.push("STARTTLS".into());
        }
        if config.auth.is_some() && (self.tls || config.auth_in_plaintext) {
            caps.push("AUTH PLAIN LOGIN".into());
        }
        caps.push("HELP".into());
        let last = caps.len() - 1;
        let text: String = caps
            .iter()
            .enumerate()
            .map(|(i, c)| format!("250{}{c}\r\n", if i == last { ' ' } else { '-' }))
            .collect();
        self.reply(Some(Phase::Ehlo), &text, false).await
    }

    async fn starttls(&mut self) -> io::Result<Flow> {
        let config = self.config.clone();
        if config.tls.is_none() || !config.offer_starttls || self.tls {
            return self
                .reply(None, "502 5.5.1 STARTTLS not offered\r\n", false)
                .await;
        }
        let text = format!("{}\r\n", config.starttls_reply);
        if !text.starts_with("220") {
            return self.reply(Some(Phase::StartTls), &text, false).await;
        }
        let mut bytes = text.clone().into_bytes();
        bytes.extend_from_slice(&config.inject_after_starttls);
        if let (Some((Phase::StartTls, _)), false) = (&config.fault, self.fault_done) {
            return self.reply(Some(Phase::StartTls), &text, false).await;
        }
        self.write(&bytes).await?;
        // RFC 3207 §4.2: what the client pipelined after STARTTLS is
        // discarded, and so is all it said before.
        if !config.flaws.keep_input_after_starttls {
            self.buf.clear();
        }
        self.tx = Transaction::default();
        if self.handshake().await.is_err() {
            return Ok(Flow::End);
        }
        self.check_injection = !config.inject_after_starttls.is_empty();
        Ok(Flow::Continue)
    }

    async fn mail(&mut self, arg: &str) -> io::Result<Flow> {
        let declared = arg
            .split_whitespace()
            .filter_map(|p| {
                p.get(..5)
                    .filter(|k| k.eq_ignore_ascii_case("SIZE="))
                    .and(p.get(5..))
            })
            .find_map(|v| v.parse::<u64>().ok());
        let text = if self.tx.from.is_some() {
            "503 5.5.1 nested MAIL\r\n"
        } else if declared.is_some_and(|n| n > self.config.size as u64) {
            "552 5.3.4 message size exceeds fixed limit\r\n"
        } else {
            self.tx.from = Some(address(arg));
            "250 2.1.0 sender ok\r\n"
        };
        self.reply(Some(Phase::Mail), text, true).await
    }

    async fn rcpt(&mut self, arg: &str) -> io::Result<Flow> {
        let to = address(arg);
        let text = if self.tx.from.is_none() {
            "503 5.5.1 need MAIL first\r\n".to_owned()
        } else if let Some(refusal) = self.refuse_rcpt(&to) {
            refusal.to_owned()
        } else if let Some((_, r)) = self
            .config
            .reject_rcpt
            .iter()
            .find(|(a, _)| a.eq_ignore_ascii_case(&to))
        {
            format!("{r}\r\n")
        } else {
            self.tx.rcpts.push(to);
            "250 2.1.5 recipient ok\r\n".to_owned()
        };
        self.reply(Some(Phase::Rcpt), &text, true).await
    }

    async fn data(&mut self) -> io::Result<Flow> {
        if self.config.hold_replies && self.client_runs_ahead(LISTEN_AHEAD).await {
            self.note(|r| r.body_before_354 = true);
        }
        if self.tx.from.is_none() || self.tx.rcpts.is_empty() {
            return self
                .reply(
                    Some(Phase::Data),
                    "554 5.5.1 no valid recipients\r\n",
                    false,
                )
                .await;
        }
        if self
            .reply(
                Some(Phase::Data),
                "354 end data with <CRLF>.<CRLF>\r\n",
                false,
            )
            .await?
            == Flow::End
        {
            return Ok(Flow::End);
        }
        let (raw, terminated) = self.read_data().await?;
        self.data_bytes += raw.len();
        let messages = self.record.lock().map(|r| r.messages.len()).unwrap_or(0);
        if messages >= MAX_MESSAGES {
            self.flood(format!("sent more than {MAX_MESSAGES} messages"));
            return Ok(Flow::End);
        }
        if self.data_bytes > MAX_RECORDED {
            self.flood(format!(
                "sent more than {} MiB of message data",
                MAX_RECORDED >> 20
            ));
            return Ok(Flow::End);
        }
        let too_big = raw.len() > self.config.size;
        let rcpts = std::mem::take(&mut self.tx.rcpts);
        self.tx = Transaction::default();
        let fault_at_dot = matches!(
            &self.config.fault,
            Some((Phase::EndOfData, f)) if !matches!(f, Fault::Drip(_))
        );
        let accepted = terminated && !too_big && !fault_at_dot;
        let tls = self.tls;
        self.note(|r| {
            r.messages.push(DataRecord {
                raw,
                terminated,
                tls,
                accepted,
                rcpts,
            });
        });
        if !terminated {
            return Ok(Flow::End);
        }
        let text = if too_big {
            "552 5.3.4 message size exceeds fixed limit\r\n"
        } else {
            "250 2.0.0 message accepted\r\n"
        };
        self.reply(Some(Phase::EndOfData), text, false).await
    }

    /// The octets up to the first `CRLF.CRLF` (the DATA line's CRLF counts
    /// as the first CRLF) and whether it came.
    async fn read_data(&mut self) -> io::Result<(Vec<u8>, bool)> {
        if self.config.flaws.bare_lf_ends_data {
            return self.read_data_leniently().await;
        }
        let mut data = std::mem::take(&mut self.buf);
        let mut from = 0;
        loop {
            if data.starts_with(b".\r\n") {
                self.buf = data.split_off(3);
                return Ok((Vec::new(), true));
            }
            if let Some(i) = data
                .get(from..)
                .and_then(|d| d.windows(5).position(|w| w == b"\r\n.\r\n"))
            {
                let end = from + i;
                self.buf = data.split_off(end + 5);
                data.truncate(end);
                return Ok((data, true));
            }
            if data.len() > MAX_RECORDED {
                return Ok((data, false));
            }
            from = data.len().saturating_sub(4);
            if self.read_more().await? == 0 {
                return Ok((data, false));
            }
            data.append(&mut self.buf);
        }
    }
}

/// The address between `<` and `>` in a MAIL or RCPT argument (empty
/// when there is none).
fn address(arg: &str) -> String {
    let Some(start) = arg.find('<') else {
        return String::new();
    };
    let rest = &arg[start + 1..];
    rest.find('>')
        .map(|end| rest[..end].to_owned())
        .unwrap_or_default()
}
