//! A small HTTPS GET client on the same rustls stack as the SMTP sessions:
//! for the few documents mail set-up reads over the web (a domain's
//! autoconfiguration document; MTA-STS policies, RFC 8461).
//!
//! - HTTP/1.1 `GET` with `Connection: close`; one request per connection.
//! - The certificate is always verified (the policy Certified): against the
//!   web PKI roots and any extra trust anchors of the [`Trust`], for the
//!   host name asked for. There is no way to turn that off here.
//! - The caller resolves the host (through its own resolver) and passes the
//!   addresses: nothing here looks names up.
//! - Bounded: the whole exchange within one deadline, the response head
//!   within 16 KiB, the body within [`HttpsGet::with_max_body`] (64 KiB by
//!   default). The body is delimited by `Content-Length`, or by the end of
//!   the connection (which must end with TLS's close_notify, so a cut
//!   connection is never taken for a whole document). `Transfer-Encoding`
//!   (chunked) is refused rather than half-understood.
//! - Redirects are not followed: a `3xx` is a [`Response`] like any other,
//!   for the caller to judge (MTA-STS forbids following them).
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use std::net::IpAddr;
//! use smtp_tls::Trust;
//! use smtp_tls::https::HttpsGet;
//!
//! let addrs: Vec<IpAddr> = vec!["192.0.2.1".parse()?]; // from your resolver
//! let response = HttpsGet::new(Trust::new())
//!     .get("autoconfig.example.org", &addrs, 443, "/mail/config-v1.1.xml")
//!     .await?;
//! if response.status == 200 {
//!     println!("{} bytes", response.body.len());
//! }
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use smtp_core::TlsPolicy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::trust::Trust;

/// Largest response head (status line and header fields).
const MAX_HEAD: usize = 16 * 1024;
/// Most header fields read.
const MAX_HEADERS: usize = 64;
/// The default cap on a body.
pub const DEFAULT_MAX_BODY: usize = 64 * 1024;
/// The default deadline for the whole exchange.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);

/// A GET over HTTPS with a verified certificate and bounded everything.
#[derive(Clone, Debug)]
pub struct HttpsGet {
    trust: Trust,
    timeout: Duration,
    max_body: usize,
}

/// A response: its status, header fields and body.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Response {
    /// The status code (200, 404, …).
    pub status: u16,
    /// The header fields as received (names as sent, values trimmed);
    /// fields that are not UTF-8 are left out.
    pub headers: Vec<(String, String)>,
    /// The body, at most the cap.
    pub body: Vec<u8>,
}

impl Response {
    /// The first header field named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Why a GET failed. Who is at fault: the caller ([`HttpsError::InvalidName`]),
/// the network ([`HttpsError::Connect`], [`HttpsError::TimedOut`]), the
/// server ([`HttpsError::Tls`], [`HttpsError::Malformed`],
/// [`HttpsError::TooLarge`], [`HttpsError::Unsupported`]).
#[derive(Debug)]
#[non_exhaustive]
pub enum HttpsError {
    /// The host is not a name a certificate can be checked against.
    InvalidName {
        /// The host given.
        host: String,
    },
    /// No address given, or none accepted a connection.
    Connect {
        /// The host.
        host: String,
        /// Each address tried and what happened.
        attempts: Vec<(SocketAddr, io::Error)>,
    },
    /// The TLS handshake failed, or the certificate did not verify for the
    /// host.
    Tls {
        /// The host.
        host: String,
        /// The rustls error, in words.
        detail: String,
    },
    /// The connection failed after the handshake (reset, or cut without
    /// TLS's close_notify where only that could tell a whole body from a
    /// truncated one).
    Io {
        /// The host.
        host: String,
        /// What happened.
        detail: String,
    },
    /// The exchange did not finish within the deadline.
    TimedOut {
        /// The host.
        host: String,
        /// The deadline.
        after: Duration,
    },
    /// The response is not HTTP/1.x as expected.
    Malformed {
        /// The host.
        host: String,
        /// What was wrong.
        detail: String,
    },
    /// The head or body is over its cap.
    TooLarge {
        /// The host.
        host: String,
        /// The cap, in bytes.
        limit: usize,
    },
    /// A transfer coding (e.g. chunked), which this client does not read.
    Unsupported {
        /// The host.
        host: String,
        /// The `Transfer-Encoding` value.
        encoding: String,
    },
}

impl fmt::Display for HttpsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidName { host } => write!(f, "{host:?} is not a valid host name"),
            Self::Connect { host, attempts } if attempts.is_empty() => {
                write!(f, "{host}: no address to connect to")
            }
            Self::Connect { host, attempts } => {
                let tried: Vec<String> =
                    attempts.iter().map(|(a, e)| format!("{a}: {e}")).collect();
                write!(f, "cannot connect to {host}: {}", tried.join("; "))
            }
            Self::Tls { host, detail } => write!(
                f,
                "TLS with {host} failed: {detail} (the certificate must verify for {host})"
            ),
            Self::Io { host, detail } => write!(f, "the connection to {host} failed: {detail}"),
            Self::TimedOut { host, after } => {
                write!(f, "{host} did not answer within {}s", after.as_secs())
            }
            Self::Malformed { host, detail } => {
                write!(f, "{host} sent a malformed HTTP response: {detail}")
            }
            Self::TooLarge { host, limit } => {
                write!(f, "{host} sent a response over the {limit}-byte limit")
            }
            Self::Unsupported { host, encoding } => write!(
                f,
                "{host} sent the body with Transfer-Encoding {encoding:?}, which this client \
                 does not read; it needs Content-Length or the end of the connection"
            ),
        }
    }
}

impl std::error::Error for HttpsError {}

impl HttpsGet {
    /// A client trusting `trust`, with the default deadline (15 s) and body
    /// cap (64 KiB).
    pub fn new(trust: Trust) -> Self {
        Self {
            trust,
            timeout: DEFAULT_TIMEOUT,
            max_body: DEFAULT_MAX_BODY,
        }
    }

    /// The deadline for the whole exchange: connecting, the handshake, the
    /// request and the response.
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The largest body accepted; a longer one is [`HttpsError::TooLarge`].
    #[must_use]
    pub fn with_max_body(mut self, max_body: usize) -> Self {
        self.max_body = max_body;
        self
    }

    /// `GET https://host:port/path`, connecting to each of `addrs` in turn
    /// (the host's addresses, from the caller's resolver). `path` starts
    /// with `/` and may hold a query.
    pub async fn get(
        &self,
        host: &str,
        addrs: &[IpAddr],
        port: u16,
        path: &str,
    ) -> Result<Response, HttpsError> {
        match tokio::time::timeout(self.timeout, self.exchange(host, addrs, port, path)).await {
            Ok(r) => r,
            Err(_) => Err(HttpsError::TimedOut {
                host: host.to_owned(),
                after: self.timeout,
            }),
        }
    }

    async fn exchange(
        &self,
        host: &str,
        addrs: &[IpAddr],
        port: u16,
        path: &str,
    ) -> Result<Response, HttpsError> {
        let name = ServerName::try_from(host.to_owned()).map_err(|_| HttpsError::InvalidName {
            host: host.to_owned(),
        })?;
        if !path.starts_with('/') || path.contains(|c: char| c.is_ascii_control() || c == ' ') {
            return Err(HttpsError::Malformed {
                host: host.to_owned(),
                detail: format!("the path {path:?} cannot be sent"),
            });
        }
        let tls_error = |detail: String| HttpsError::Tls {
            host: host.to_owned(),
            detail,
        };
        let (config, _verdict) = self
            .trust
            .client_config(TlsPolicy::Certified)
            .map_err(|e| tls_error(e.to_string()))?;
        let mut config = Arc::unwrap_or_clone(config);
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let connector = TlsConnector::from(Arc::new(config));
        let mut attempts = Vec::new();
        let mut tcp = None;
        for &ip in addrs {
            let addr = SocketAddr::new(ip, port);
            match TcpStream::connect(addr).await {
                Ok(s) => {
                    tcp = Some(s);
                    break;
                }
                Err(e) => attempts.push((addr, e)),
            }
        }
        let Some(tcp) = tcp else {
            return Err(HttpsError::Connect {
                host: host.to_owned(),
                attempts,
            });
        };
        let mut tls = connector
            .connect(name, tcp)
            .await
            .map_err(|e| tls_error(e.to_string()))?;
        let authority = if port == 443 {
            host.to_owned()
        } else {
            format!("{host}:{port}")
        };
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: smtp-toolkit\r\n\
             Accept: */*\r\nConnection: close\r\n\r\n"
        );
        let io_error = |e: io::Error| HttpsError::Io {
            host: host.to_owned(),
            detail: e.to_string(),
        };
        tls.write_all(request.as_bytes()).await.map_err(io_error)?;
        tls.flush().await.map_err(io_error)?;
        read_response(&mut tls, host, self.max_body).await
    }
}

/// Reads the head, then the body as the head delimits it.
async fn read_response<R: tokio::io::AsyncRead + Unpin>(
    stream: &mut R,
    host: &str,
    max_body: usize,
) -> Result<Response, HttpsError> {
    let malformed = |detail: String| HttpsError::Malformed {
        host: host.to_owned(),
        detail,
    };
    let too_large = |limit| HttpsError::TooLarge {
        host: host.to_owned(),
        limit,
    };
    let read_error = |e: io::Error| HttpsError::Io {
        host: host.to_owned(),
        detail: if e.kind() == io::ErrorKind::UnexpectedEof {
            format!("{e} (without a Content-Length only that tells a whole body from a cut one)")
        } else {
            e.to_string()
        },
    };
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    // The head.
    let (status, headers, head_len) = loop {
        let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Response::new(&mut fields);
        match parsed.parse(&buf) {
            Ok(httparse::Status::Complete(n)) => {
                let status = parsed
                    .code
                    .ok_or_else(|| malformed("no status code".into()))?;
                let headers = parsed
                    .headers
                    .iter()
                    .filter_map(|h| {
                        std::str::from_utf8(h.value)
                            .ok()
                            .map(|v| (h.name.to_owned(), v.trim().to_owned()))
                    })
                    .collect::<Vec<_>>();
                break (status, headers, n);
            }
            Ok(httparse::Status::Partial) => {}
            Err(e) => return Err(malformed(e.to_string())),
        }
        if buf.len() >= MAX_HEAD {
            return Err(too_large(MAX_HEAD));
        }
        let n = stream.read(&mut chunk).await.map_err(read_error)?;
        if n == 0 {
            return Err(malformed("the connection ended inside the head".into()));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let mut response = Response {
        status,
        headers,
        body: buf.split_off(head_len),
    };
    if let Some(encoding) = response.header("transfer-encoding") {
        return Err(HttpsError::Unsupported {
            host: host.to_owned(),
            encoding: encoding.to_owned(),
        });
    }
    let length = match response.header("content-length") {
        Some(v) => Some(
            v.parse::<usize>()
                .map_err(|_| malformed(format!("Content-Length {v:?}")))?,
        ),
        None => None,
    };
    if length.is_some_and(|l| l > max_body) {
        return Err(too_large(max_body));
    }
    let want = length.unwrap_or(max_body);
    loop {
        if response.body.len() > want {
            if length.is_some() {
                // Bytes beyond the declared length: not ours to read.
                response.body.truncate(want);
                break;
            }
            return Err(too_large(max_body));
        }
        if length == Some(response.body.len()) {
            break;
        }
        let n = stream.read(&mut chunk).await.map_err(read_error)?;
        if n == 0 {
            if length.is_some() {
                return Err(malformed(format!(
                    "the connection ended after {} of {want} body bytes",
                    response.body.len()
                )));
            }
            break;
        }
        response.body.extend_from_slice(&chunk[..n]);
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn parse(bytes: &[u8], max: usize) -> Result<Response, HttpsError> {
        let mut r = bytes;
        read_response(&mut r, "h.test", max).await
    }

    #[tokio::test]
    async fn a_body_is_delimited_by_content_length_or_the_end() {
        let r = parse(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloEXTRA",
            64,
        )
        .await
        .unwrap();
        assert_eq!((r.status, &r.body[..]), (200, &b"hello"[..]));
        let r = parse(b"HTTP/1.1 404 Not Found\r\nX-A: b\r\n\r\ngone", 64)
            .await
            .unwrap();
        assert_eq!((r.status, &r.body[..]), (404, &b"gone"[..]));
        assert_eq!(r.header("x-a"), Some("b"));
    }

    #[tokio::test]
    async fn over_the_cap_chunked_cut_or_garbage_is_an_error() {
        assert!(matches!(
            parse(b"HTTP/1.1 200 OK\r\nContent-Length: 65\r\n\r\n", 64).await,
            Err(HttpsError::TooLarge { limit: 64, .. })
        ));
        let long = [b"HTTP/1.1 200 OK\r\n\r\n".as_slice(), &[b'x'; 65]].concat();
        assert!(matches!(
            parse(&long, 64).await,
            Err(HttpsError::TooLarge { .. })
        ));
        assert!(matches!(
            parse(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
                64
            )
            .await,
            Err(HttpsError::Unsupported { .. })
        ));
        assert!(matches!(
            parse(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nhello", 64).await,
            Err(HttpsError::Malformed { .. })
        ));
        assert!(matches!(
            parse(b"SMTP/1.0 220 hi\r\n\r\n", 64).await,
            Err(HttpsError::Malformed { .. })
        ));
        let endless = [b"HTTP/1.1 200 OK\r\n".as_slice(), &[b'X'; MAX_HEAD + 10]].concat();
        assert!(parse(&endless, 64).await.is_err());
    }
}
