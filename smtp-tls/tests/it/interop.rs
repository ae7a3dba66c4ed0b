//! Interoperability with real server software from Debian's packages:
//! Postfix's `smtp-sink` (installed by `.ci/run`). These tests fail, rather
//! than skip, when it is missing: set `SMTP_SKIP_INTEROP=1` to leave them out
//! on a machine without it.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use smtp_core::address::{Mailbox, ReversePath};
use smtp_core::delivery::MemoryBody;
use smtp_core::{Envelope, Error, RecipientStatus, Timeouts, TlsPolicy};
use smtp_tls::{Delivery, Outgoing, Server};

const SMTP_SINK: &str = "/usr/sbin/smtp-sink";

pub(crate) fn skip() -> bool {
    if std::env::var_os("SMTP_SKIP_INTEROP").is_some() {
        return true;
    }
    assert!(
        Path::new(SMTP_SINK).exists(),
        "{SMTP_SINK} is missing: install Debian's postfix package (.ci/run does), or set SMTP_SKIP_INTEROP=1"
    );
    false
}

/// A running smtp-sink, killed on drop.
pub(crate) struct Sink {
    child: Child,
    pub(crate) port: u16,
    pub(crate) dir: PathBuf,
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn sink(options: &[&str]) -> Sink {
    sink_on("127.0.0.1", free_port(), options).await
}

/// smtp-sink on `ip:port`, dumping into a directory of its own.
pub(crate) async fn sink_on(ip: &str, port: u16, options: &[&str]) -> Sink {
    let dir = std::env::temp_dir().join(format!("smtp-sink-{}-{ip}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // smtp-sink drops privileges to this user when run as root; it must be
    // able to write the dumps.
    let _ = Command::new("chmod").arg("777").arg(&dir).status();
    let mut cmd = Command::new(SMTP_SINK);
    cmd.args(options)
        .arg("-u")
        .arg("nobody")
        .arg("-d")
        .arg(format!("{}/%M.", dir.display()))
        .arg(format!("{ip}:{port}"))
        .arg("10")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let child = cmd.spawn().expect("start smtp-sink");
    // Wait until it listens on its own address; a sink that never does
    // fails the test here rather than as a puzzling refusal later.
    let mut listening = false;
    for _ in 0..250 {
        if tokio::net::TcpStream::connect((ip, port)).await.is_ok() {
            listening = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        listening,
        "smtp-sink did not listen on {ip}:{port} within 5 s"
    );
    Sink { child, port, dir }
}

pub(crate) fn dumps(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| std::fs::read(e.ok()?.path()).ok())
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

fn submission(port: u16) -> Server {
    let mut s = Server::new("127.0.0.1", port);
    s.policy = TlsPolicy::None;
    s.timeouts = Timeouts::uniform(Duration::from_secs(10));
    s
}

fn message(n: usize, to: &[&str]) -> Outgoing {
    Outgoing {
        envelope: Envelope::new(
            ReversePath::parse("alice@example.org").unwrap(),
            to.iter().map(|t| Mailbox::parse(t).unwrap()).collect(),
        ),
        body: Box::new(MemoryBody::new(format!(
            "Subject: interop {n}\r\n\r\n.leading dot {n}\r\nbody\r\n"
        ))),
    }
}

async fn send(port: u16, messages: Vec<Outgoing>) -> Delivery {
    submission(port)
        .send(messages, &mut |_| {})
        .await
        .expect("connects")
}

#[tokio::test]
async fn pipelined_messages_through_one_session() {
    if skip() {
        return;
    }
    let sink = sink(&[]).await;
    let msgs = (0..3)
        .map(|n| message(n, &["bob@example.net", "carol@example.net"]))
        .collect();
    let d = send(sink.port, msgs).await;
    assert!(d.session.error.is_none(), "{:?}", d.session.error);
    assert_eq!(d.session.messages.len(), 3);
    assert!(d.session.messages.iter().all(|m| m.all_accepted()));
    assert!(d.session.capabilities.as_ref().unwrap().pipelining());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let dumps = dumps(&sink.dir);
    assert_eq!(dumps.len(), 3, "{dumps:?}");
    for (n, dump) in dumps.iter().enumerate() {
        assert!(dump.contains("alice@example.org"), "{dump}");
        assert!(
            dump.contains("bob@example.net") && dump.contains("carol@example.net"),
            "{dump}"
        );
        assert!(dump.contains("\n.leading dot"), "{dump}");
        assert!(!dump.contains("..leading"), "the sink un-stuffs: {dump}");
        let _ = n;
    }
}

#[tokio::test]
async fn lockstep_without_pipelining() {
    if skip() {
        return;
    }
    let sink = sink(&["-p"]).await;
    let d = send(sink.port, vec![message(0, &["bob@example.net"])]).await;
    assert!(!d.session.capabilities.as_ref().unwrap().pipelining());
    assert!(
        d.session.messages[0].all_accepted(),
        "{:?}",
        d.session.error
    );
}

#[tokio::test]
async fn helo_fallback_without_esmtp() {
    if skip() {
        return;
    }
    let sink = sink(&["-e"]).await;
    let d = send(sink.port, vec![message(0, &["bob@example.net"])]).await;
    assert!(
        d.session.messages[0].all_accepted(),
        "{:?}",
        d.session.error
    );
}

#[tokio::test]
async fn hard_and_soft_rcpt_refusals() {
    if skip() {
        return;
    }
    for (option, status) in [
        ("-f", RecipientStatus::Rejected),
        ("-r", RecipientStatus::Deferred),
    ] {
        let sink = sink(&[option, "RCPT"]).await;
        let d = send(sink.port, vec![message(0, &["bob@example.net"])]).await;
        let r = &d.session.messages[0].recipients[0];
        assert_eq!(r.status, status, "{option}: {r}");
        // smtp-sink may record the envelope, but no message data arrived.
        assert!(
            dumps(&sink.dir)
                .iter()
                .all(|d| !d.contains("Subject: interop")),
            "{option}: nothing delivered"
        );
    }
}

#[tokio::test]
async fn disconnect_at_data_defers() {
    if skip() {
        return;
    }
    let sink = sink(&["-q", "DATA"]).await;
    let d = send(sink.port, vec![message(0, &["bob@example.net"])]).await;
    assert_eq!(
        d.session.messages[0].recipients[0].status,
        RecipientStatus::Deferred
    );
    assert!(
        matches!(d.session.error, Some(Error::ConnectionClosed { .. })),
        "{:?}",
        d.session.error
    );
}
