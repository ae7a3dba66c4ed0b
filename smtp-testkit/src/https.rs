//! A tiny HTTPS server on loopback serving fixed paths, for clients that
//! fetch documents over the web (autoconfiguration, MTA-STS policies).
//!
//! Build [`Pages`] (a body with a content type, or raw response bytes for
//! a malformed or hostile answer), serve them with [`HttpsServer::start`]
//! and a certificate ([`crate::certs`]), and check what was asked with
//! [`HttpsServer::requests`]. Unknown paths get `404`. Each response is
//! followed by TLS's close_notify and the end of the connection (or, with
//! [`Pages::cut`], the end of the connection alone).
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use smtp_testkit::certs::TestCa;
//! use smtp_testkit::https::{HttpsServer, Pages};
//!
//! let ca = TestCa::new();
//! let pages = Pages::new().page("/mail/config-v1.1.xml", "text/xml", "<clientConfig/>");
//! let server = HttpsServer::start(ca.leaf(&["autoconfig.example.org"]), pages).await?;
//! println!("HTTPS on {}", server.addr());
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::certs::Identity;

/// Longest request head read.
const MAX_REQUEST: usize = 8 * 1024;
/// A connection that has not sent its request within this is closed.
const IDLE: Duration = Duration::from_secs(10);

/// What the server answers, by path (the query string is ignored).
#[derive(Clone, Debug, Default)]
pub struct Pages {
    responses: BTreeMap<String, Vec<u8>>,
    /// Paths whose connection is cut after the response, without TLS's
    /// close_notify.
    cut: Vec<String>,
}

impl Pages {
    /// No pages: every path is `404`.
    pub fn new() -> Self {
        Self::default()
    }

    /// `200` with this body and content type, `Content-Length` set.
    #[must_use]
    pub fn page(self, path: &str, content_type: &str, body: impl AsRef<[u8]>) -> Self {
        let body = body.as_ref();
        let mut response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        response.extend_from_slice(body);
        self.raw(path, response)
    }

    /// These bytes as the whole response, as they are.
    #[must_use]
    pub fn raw(mut self, path: &str, response: impl Into<Vec<u8>>) -> Self {
        self.responses.insert(path.to_owned(), response.into());
        self
    }

    /// These bytes, then the TCP connection closed without TLS's
    /// close_notify (what a truncating attacker, or a careless server,
    /// does).
    #[must_use]
    pub fn cut(mut self, path: &str, response: impl Into<Vec<u8>>) -> Self {
        self.cut.push(path.to_owned());
        self.raw(path, response)
    }
}

/// The server; it stops when dropped.
#[derive(Debug)]
pub struct HttpsServer {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

impl HttpsServer {
    /// Serves `pages` with the certificate `identity` on an ephemeral port
    /// of 127.0.0.1.
    pub async fn start(identity: Identity, pages: Pages) -> io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let acceptor = TlsAcceptor::from(identity.server_config());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let pages = Arc::new(pages);
        let seen = requests.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let pages = pages.clone();
                let seen = seen.clone();
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(IDLE, serve(acceptor, tcp, &pages, &seen)).await;
                });
            }
        });
        Ok(Self {
            addr,
            requests,
            task,
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The request targets asked for (path and query), in order.
    pub fn requests(&self) -> Vec<String> {
        self.requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Drop for HttpsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(
    acceptor: TlsAcceptor,
    tcp: tokio::net::TcpStream,
    pages: &Pages,
    seen: &Mutex<Vec<String>>,
) -> io::Result<()> {
    let mut tls = acceptor.accept(tcp).await?;
    let mut head = Vec::new();
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() > MAX_REQUEST {
            return Ok(());
        }
        let n = tls.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&chunk[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let target = line
        .lines()
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .unwrap_or("")
        .to_owned();
    seen.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(target.clone());
    let path = target.split('?').next().unwrap_or("");
    let not_found = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    let response = pages
        .responses
        .get(path)
        .map_or(&not_found[..], Vec::as_slice);
    tls.write_all(response).await?;
    if pages.cut.iter().any(|c| c == path) {
        tls.flush().await?;
        let (tcp, _) = tls.get_mut();
        return tcp.shutdown().await;
    }
    tls.shutdown().await
}
