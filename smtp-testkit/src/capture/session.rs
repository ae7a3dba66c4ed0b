//! One connection to the capture server: a [`Session`] reads commands and
//! answers each with the method named after it.

use std::io;
use std::sync::Mutex;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use super::wire::{Lines, Stream};
use super::{CaptureConfig, Received, SessionLog, Store, write_maildir};

/// Serves one connection until QUIT, the client leaving, or a fault;
/// returns its log (empty when an implicit-TLS handshake failed).
pub(super) async fn serve(
    tcp: TcpStream,
    config: &CaptureConfig,
    store: &Mutex<Store>,
) -> SessionLog {
    let Ok(mut session) = Session::open(tcp, config, store).await else {
        return SessionLog::default();
    };
    let _ = session.run().await;
    session.log
}

/// What comes after a command.
enum Flow {
    /// The next command.
    Continue,
    /// Nothing: the session is over.
    End,
}

/// The mail transaction in progress (RFC 5321 §3.3): from MAIL to the end
/// of its data, or to RSET or STARTTLS.
#[derive(Default)]
struct Transaction {
    /// MAIL FROM's address (empty for `<>`), once MAIL was accepted.
    from: Option<String>,
    /// Accepted recipients.
    rcpts: Vec<String>,
    /// BDAT chunks so far.
    chunks: Vec<u8>,
    /// A BDAT chunk went over the size limit.
    chunks_too_big: bool,
}

impl Transaction {
    /// There is a sender and a recipient to take data for.
    fn has_recipients(&self) -> bool {
        self.from.is_some() && !self.rcpts.is_empty()
    }
}

/// One connection's state: the stream, who authenticated, the transaction.
struct Session<'a> {
    config: &'a CaptureConfig,
    store: &'a Mutex<Store>,
    log: SessionLog,
    /// Set when there is a certificate: STARTTLS (or implicit TLS) uses it.
    acceptor: Option<TlsAcceptor>,
    stream: Stream,
    lines: Lines,
    tls: bool,
    /// The authenticated user.
    user: Option<String>,
    tx: Transaction,
}

impl<'a> Session<'a> {
    /// Accepts the connection, with the TLS handshake first for implicit TLS.
    async fn open(
        tcp: TcpStream,
        config: &'a CaptureConfig,
        store: &'a Mutex<Store>,
    ) -> io::Result<Self> {
        let acceptor = config
            .tls
            .as_ref()
            .map(|id| TlsAcceptor::from(id.server_config()));
        let stream = match (&acceptor, config.implicit_tls) {
            (Some(a), true) => Stream::Tls(Box::new(a.accept(tcp).await?)),
            _ => Stream::Plain(tcp),
        };
        Ok(Self {
            config,
            store,
            log: SessionLog::default(),
            acceptor,
            tls: matches!(stream, Stream::Tls(_)),
            stream,
            lines: Lines::default(),
            user: None,
            tx: Transaction::default(),
        })
    }

    /// The greeting, then one command after another.
    async fn run(&mut self) -> io::Result<()> {
        self.greeting().await?;
        while let Some(raw) = self.lines.next(&mut self.stream).await? {
            let line = String::from_utf8_lossy(&raw).into_owned();
            let (verb, arg) = split_command(&line);
            let logged = if verb == "AUTH" {
                "AUTH <redacted>"
            } else {
                &line
            };
            self.log.transcript.push(format!("C: {logged}"));
            if let Flow::End = self.command(&verb, arg).await? {
                break;
            }
        }
        Ok(())
    }

    /// Answers one command (BDAT is one only when CHUNKING is offered).
    async fn command(&mut self, verb: &str, arg: &str) -> io::Result<Flow> {
        match verb {
            "EHLO" => self.ehlo().await?,
            "HELO" => self.helo().await?,
            "STARTTLS" => self.starttls().await?,
            "AUTH" => self.auth(arg).await?,
            "MAIL" => self.mail(arg).await?,
            "RCPT" => self.rcpt(arg).await?,
            "DATA" => return self.data().await,
            "BDAT" if self.config.chunking => return self.bdat(arg).await,
            "RSET" => self.rset().await?,
            "NOOP" => self.noop().await?,
            "QUIT" => return self.quit().await,
            _ => self.unknown().await?,
        }
        Ok(Flow::Continue)
    }

    /// Sends `text` (one or more CRLF-ended reply lines) and logs each line.
    async fn reply(&mut self, text: &str) -> io::Result<()> {
        for line in text.split("\r\n").filter(|l| !l.is_empty()) {
            self.log.transcript.push(format!("S: {line}"));
        }
        self.stream.write(text.as_bytes()).await
    }

    /// The next line from the client, not logged (an AUTH exchange's).
    async fn read_line(&mut self) -> io::Result<Option<Vec<u8>>> {
        self.lines.next(&mut self.stream).await
    }

    /// Forgets the mail transaction: RSET, a finished message, STARTTLS.
    fn reset_transaction(&mut self) {
        self.tx = Transaction::default();
    }

    async fn greeting(&mut self) -> io::Result<()> {
        let text = format!("220 {} ESMTP capture server\r\n", self.config.hostname);
        self.reply(&text).await
    }

    async fn ehlo(&mut self) -> io::Result<()> {
        if self.config.no_ehlo {
            return self.reply("502 5.5.2 EHLO not implemented\r\n").await;
        }
        let text = self.capabilities();
        self.reply(&text).await
    }

    /// The EHLO reply: what is configured, STARTTLS before TLS, and AUTH
    /// once credentials would not go in plaintext.
    fn capabilities(&self) -> String {
        let config = self.config;
        let mut caps = format!("250-{}\r\n250-ENHANCEDSTATUSCODES\r\n", config.hostname);
        for (on, keyword) in [
            (config.pipelining, "PIPELINING"),
            (config.eight_bit_mime, "8BITMIME"),
            (config.smtputf8, "SMTPUTF8"),
            (config.chunking, "CHUNKING"),
            (config.chunking, "BINARYMIME"),
        ] {
            if on {
                caps.push_str(&format!("250-{keyword}\r\n"));
            }
        }
        caps.push_str(&format!("250-SIZE {}\r\n", config.max_message_size));
        if self.acceptor.is_some() && !self.tls {
            caps.push_str("250-STARTTLS\r\n");
        }
        if config.auth.is_some() && (self.tls || config.tls.is_none()) {
            caps.push_str("250-AUTH PLAIN LOGIN\r\n");
        }
        caps.push_str("250 HELP\r\n");
        caps
    }

    async fn helo(&mut self) -> io::Result<()> {
        let text = format!("250 {}\r\n", self.config.hostname);
        self.reply(&text).await
    }

    async fn starttls(&mut self) -> io::Result<()> {
        let Some(acceptor) = self.acceptor.clone().filter(|_| !self.tls) else {
            return self.reply("502 5.5.1 STARTTLS not available\r\n").await;
        };
        self.reply("220 2.0.0 ready to start TLS\r\n").await?;
        // RFC 3207: whatever the client pipelined after STARTTLS is discarded.
        self.lines.clear();
        self.stream.start_tls(&acceptor).await?;
        self.tls = true;
        // RFC 3207 §4.2: all knowledge from the client is discarded,
        // the authentication included.
        self.user = None;
        self.reset_transaction();
        Ok(())
    }

    async fn auth(&mut self, arg: &str) -> io::Result<()> {
        let config = self.config;
        let Some((want_user, want_pass)) = &config.auth else {
            return self.reply("502 5.5.1 AUTH not available\r\n").await;
        };
        if !self.tls {
            self.log.credentials_in_plaintext = true;
        }
        let mut parts = arg.split_whitespace();
        let mechanism = parts.next().unwrap_or("").to_ascii_uppercase();
        let creds = match mechanism.as_str() {
            "PLAIN" => self.auth_plain(parts.next()).await?,
            "LOGIN" => self.auth_login().await?,
            _ => return self.reply("504 5.5.4 mechanism not supported\r\n").await,
        };
        if creds
            .as_ref()
            .is_some_and(|(u, p)| u == want_user && p == want_pass)
        {
            self.user = creds.map(|(u, _)| u);
            self.reply("235 2.7.0 authenticated\r\n").await
        } else {
            self.reply("535 5.7.8 authentication credentials invalid\r\n")
                .await
        }
    }

    /// AUTH PLAIN's `(user, password)`, from the initial response or
    /// after a `334`; `None` when it does not decode.
    async fn auth_plain(&mut self, initial: Option<&str>) -> io::Result<Option<(String, String)>> {
        let response = match initial {
            Some(r) => r.to_owned(),
            None => {
                self.reply("334 \r\n").await?;
                self.read_line()
                    .await?
                    .map(|l| String::from_utf8_lossy(&l).into_owned())
                    .unwrap_or_default()
            }
        };
        Ok(base64_text(&response).and_then(|d| {
            let mut f = d.split('\0');
            let _authzid = f.next()?;
            Some((f.next()?.to_owned(), f.next()?.to_owned()))
        }))
    }

    /// AUTH LOGIN's `(user, password)`, each asked for with a `334`.
    async fn auth_login(&mut self) -> io::Result<Option<(String, String)>> {
        self.reply("334 VXNlcm5hbWU6\r\n").await?;
        let u = self.read_line().await?.unwrap_or_default();
        self.reply("334 UGFzc3dvcmQ6\r\n").await?;
        let p = self.read_line().await?.unwrap_or_default();
        Ok(
            base64_text(&String::from_utf8_lossy(&u))
                .zip(base64_text(&String::from_utf8_lossy(&p))),
        )
    }

    async fn mail(&mut self, arg: &str) -> io::Result<()> {
        if !self.tls {
            self.log.mail_commands_in_plaintext += 1;
        }
        if self.config.require_auth && self.user.is_none() {
            self.reply("530 5.7.0 authentication required\r\n").await
        } else if self.tx.from.is_some() {
            self.reply("503 5.5.1 nested MAIL\r\n").await
        } else {
            self.tx.from = address(arg).or(Some(String::new()));
            self.tx.rcpts.clear();
            self.reply("250 2.1.0 sender ok\r\n").await
        }
    }

    async fn rcpt(&mut self, arg: &str) -> io::Result<()> {
        let to = address(arg).unwrap_or_default();
        let config = self.config;
        if self.tx.from.is_none() {
            self.reply("503 5.5.1 need MAIL first\r\n").await
        } else if let Some((_, r)) = config
            .reject
            .iter()
            .find(|(a, _)| a.eq_ignore_ascii_case(&to))
        {
            self.reply(&format!("{r}\r\n")).await
        } else {
            self.tx.rcpts.push(to);
            self.reply("250 2.1.5 recipient ok\r\n").await
        }
    }

    async fn data(&mut self) -> io::Result<Flow> {
        if !self.tx.has_recipients() {
            self.reply("554 5.5.1 no valid recipients\r\n").await?;
            return Ok(Flow::Continue);
        }
        self.reply("354 end data with <CRLF>.<CRLF>\r\n").await?;
        let Some((data, too_big, bare)) = self.read_data().await? else {
            return Ok(Flow::End);
        };
        self.log
            .transcript
            .push(format!("C: <{} octets of data>", data.len()));
        if bare {
            self.reset_transaction();
            self.reply("550 5.5.2 bare CR or LF in the message data: only CRLF ends a line\r\n")
                .await?;
            return Ok(Flow::Continue);
        }
        self.finish_message(data, too_big).await?;
        Ok(Flow::Continue)
    }

    /// DATA's lines up to the lone dot, dot-unstuffed, as long as they stay
    /// within the size limit, whether some did not, and (with
    /// `strict_data`, where only CRLF ends a line) whether a bare CR or LF
    /// came; `None` when the client closed the connection first.
    async fn read_data(&mut self) -> io::Result<Option<(Vec<u8>, bool, bool)>> {
        let mut data = Vec::new();
        let mut too_big = false;
        let mut bare = false;
        loop {
            let line = if self.config.strict_data {
                self.lines.next_crlf(&mut self.stream).await?
            } else {
                self.read_line().await?
            };
            let Some(l) = line else {
                return Ok(None);
            };
            if l == b"." {
                return Ok(Some((data, too_big, bare)));
            }
            bare |= self.config.strict_data && (l.contains(&b'\r') || l.contains(&b'\n'));
            if data.len() + l.len() > self.config.max_message_size {
                too_big = true;
                continue;
            }
            data.extend_from_slice(l.strip_prefix(b".").unwrap_or(&l));
            data.extend_from_slice(b"\r\n");
        }
    }

    async fn bdat(&mut self, arg: &str) -> io::Result<Flow> {
        let mut words = arg.split_whitespace();
        let size = words.next().and_then(|w| w.parse::<u64>().ok());
        let last = words.next().is_some_and(|w| w.eq_ignore_ascii_case("LAST"));
        let Some(size) = size else {
            // Without a size the data cannot be skipped: end the session.
            self.reply("501 5.5.4 BDAT needs a chunk size\r\n").await?;
            return Ok(Flow::End);
        };
        if !self.read_chunk(size).await? {
            return Ok(Flow::End);
        }
        self.log
            .transcript
            .push(format!("C: <{size} octets of BDAT>"));
        if !self.tx.has_recipients() {
            self.reply("554 5.5.1 no valid recipients\r\n").await?;
            self.tx.chunks.clear();
            self.tx.chunks_too_big = false;
        } else if !last {
            let text = format!("250 2.0.0 {size} octets received\r\n");
            self.reply(&text).await?;
        } else {
            let data = std::mem::take(&mut self.tx.chunks);
            let too_big = self.tx.chunks_too_big;
            self.finish_message(data, too_big).await?;
        }
        Ok(Flow::Continue)
    }

    /// Reads a BDAT chunk of `size` octets onto the transaction's, noting
    /// when it went over the size limit; false when the client closed the
    /// connection first.
    async fn read_chunk(&mut self, size: u64) -> io::Result<bool> {
        let before = self.tx.chunks.len();
        let limit = self.config.max_message_size;
        if !self
            .lines
            .take(&mut self.stream, size, &mut self.tx.chunks, limit)
            .await?
        {
            return Ok(false);
        }
        self.tx.chunks_too_big |=
            self.tx.chunks.len() < before + usize::try_from(size).unwrap_or(0);
        Ok(true)
    }

    /// Ends the transaction with its data: stores the message (in the
    /// Maildir first, when there is one) and says 250, or says 552 when it
    /// went over the size limit, or 451 when the Maildir write failed.
    async fn finish_message(&mut self, data: Vec<u8>, too_big: bool) -> io::Result<()> {
        let message = Received {
            mail_from: self.tx.from.take().unwrap_or_default(),
            rcpt_to: std::mem::take(&mut self.tx.rcpts),
            data,
            tls: self.tls,
            auth_user: self.user.clone(),
            received_at: std::time::SystemTime::now(),
        };
        self.reset_transaction();
        if too_big {
            return self.reply("552 5.3.4 message too big\r\n").await;
        }
        if let Some(dir) = &self.config.maildir {
            let (dir, one) = (dir.clone(), vec![message.clone()]);
            let stored = tokio::task::spawn_blocking(move || write_maildir(&dir, &one)).await;
            if !matches!(stored, Ok(Ok(_))) {
                return self.reply("451 4.3.0 cannot store the message\r\n").await;
            }
        }
        if let Ok(mut s) = self.store.lock() {
            s.messages.push(message);
        }
        self.reply("250 2.0.0 message accepted\r\n").await
    }

    async fn rset(&mut self) -> io::Result<()> {
        self.reset_transaction();
        self.reply("250 2.0.0 reset\r\n").await
    }

    async fn noop(&mut self) -> io::Result<()> {
        self.reply("250 2.0.0 ok\r\n").await
    }

    async fn quit(&mut self) -> io::Result<Flow> {
        self.reply("221 2.0.0 bye\r\n").await?;
        Ok(Flow::End)
    }

    async fn unknown(&mut self) -> io::Result<()> {
        self.reply("502 5.5.2 command not recognised\r\n").await
    }
}

/// A command line's verb (upper-cased) and its argument.
fn split_command(line: &str) -> (String, &str) {
    let verb = line
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_ascii_uppercase();
    let arg = line.get(verb.len()..).unwrap_or("").trim();
    (verb, arg)
}

/// The address between `<` and `>` in a MAIL or RCPT argument.
fn address(arg: &str) -> Option<String> {
    let start = arg.find('<')?;
    let end = arg[start..].find('>')? + start;
    Some(arg[start + 1..end].to_owned())
}

/// Base64 decoded as (lossy) UTF-8.
fn base64_text(s: &str) -> Option<String> {
    STANDARD
        .decode(s.trim())
        .ok()
        .map(|b| String::from_utf8_lossy(&b).into_owned())
}
