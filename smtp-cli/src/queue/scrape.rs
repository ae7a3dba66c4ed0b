//! The HTTP responder behind `--metrics`: `GET /metrics` (and `HEAD`), one
//! request per connection, nothing else.
//!
//! Why not hyper: a scrape endpoint needs one route and one response per
//! connection, and what matters is that a slow or hostile client cannot
//! hold it or make it allocate. hyper with hyper-util would bring a dozen
//! crates and still leave each of those bounds to be set by hand (a header
//! read timeout needs its timer wired in; a connection cap and a write
//! deadline are the caller's). Here every bound is a number in [`Limits`]:
//!
//! - at most `connections` at once; one more is closed at once, unread;
//! - the request head is read into a buffer of at most `head` bytes
//!   (`431` past it) within `read` (`408` after), parsed by `httparse`
//!   with at most 32 headers; a body is never read;
//! - the response is rendered within `render` (`503` after) and written
//!   within `write`; then the connection is closed (`Connection: close`),
//!   after draining at most [`DRAIN`] bytes for [`DRAIN_TIME`] so that the
//!   client gets the response rather than a reset.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// What one request may cost.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// Connections served at once.
    pub(crate) connections: usize,
    /// Bytes of request head.
    pub(crate) head: usize,
    /// Time to receive the request head.
    pub(crate) read: Duration,
    /// Time to render the metrics.
    pub(crate) render: Duration,
    /// Time to write the response.
    pub(crate) write: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            connections: 8,
            head: 8 * 1024,
            read: Duration::from_secs(5),
            render: Duration::from_secs(10),
            write: Duration::from_secs(10),
        }
    }
}

/// Bytes read (and dropped) after the response, before closing.
const DRAIN: usize = 64 * 1024;
/// Time spent draining at most.
const DRAIN_TIME: Duration = Duration::from_millis(500);
/// Headers parsed at most.
const MAX_HEADERS: usize = 32;

/// What the request head turned out to be.
#[derive(Debug, PartialEq, Eq)]
enum Head {
    /// A parsed request line.
    Request { method: String, path: String },
    /// Over [`Limits::head`] bytes, or too many headers.
    TooLarge,
    /// Not HTTP/1.x.
    Bad,
    /// The client closed before a whole head.
    Closed,
}

/// Serves `GET /metrics` on `listener` with the text `render` gives (and
/// `content_type`), until the task is dropped.
pub(crate) async fn serve<F, Fut>(
    listener: TcpListener,
    limits: Limits,
    content_type: &'static str,
    render: F,
) where
    F: Fn() -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = String> + Send,
{
    let permits = Arc::new(Semaphore::new(limits.connections.max(1)));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, say: do not spin.
                tracing::warn!(target: "smtp_cli::metrics", error = %e, "cannot accept a scrape");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            // Over the limit: closed at once.
            drop(stream);
            continue;
        };
        let render = render.clone();
        tokio::spawn(async move {
            let _permit = permit;
            respond(stream, limits, content_type, render).await;
        });
    }
}

async fn respond<F, Fut>(mut stream: TcpStream, limits: Limits, content_type: &str, render: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = String>,
{
    let head = match tokio::time::timeout(limits.read, read_head(&mut stream, limits.head)).await {
        Ok(Ok(Head::Closed) | Err(_)) => return,
        Ok(Ok(head)) => head,
        Err(_) => {
            reply(&mut stream, limits, 408, "Request Timeout", None, "").await;
            return;
        }
    };
    let (method, path) = match head {
        Head::Request { method, path } => (method, path),
        Head::TooLarge => {
            let text = "request head too large\n";
            reply(
                &mut stream,
                limits,
                431,
                "Request Header Fields Too Large",
                None,
                text,
            )
            .await;
            return;
        }
        Head::Bad | Head::Closed => {
            // (Closed was returned above.)
            reply(
                &mut stream,
                limits,
                400,
                "Bad Request",
                None,
                "bad request\n",
            )
            .await;
            return;
        }
    };
    let path = path.split_once('?').map_or(path.as_str(), |(p, _)| p);
    if path != "/metrics" {
        let text = "not found: the metrics are at /metrics\n";
        reply(&mut stream, limits, 404, "Not Found", None, text).await;
        return;
    }
    if method != "GET" && method != "HEAD" {
        let text = "method not allowed: GET or HEAD\n";
        reply(&mut stream, limits, 405, "Method Not Allowed", None, text).await;
        return;
    }
    let Ok(body) = tokio::time::timeout(limits.render, render()).await else {
        let text = "the metrics took too long\n";
        reply(&mut stream, limits, 503, "Service Unavailable", None, text).await;
        return;
    };
    // HEAD: GET's headers, its Content-Length included, without the body.
    let head_only = method == "HEAD";
    reply_with(
        &mut stream,
        limits,
        200,
        "OK",
        Some(content_type),
        &body,
        head_only,
    )
    .await;
}

/// Reads until the end of the request head, at most `max` bytes.
async fn read_head(stream: &mut TcpStream, max: usize) -> std::io::Result<Head> {
    let mut buf: Vec<u8> = Vec::with_capacity(max.min(1024));
    let mut chunk = [0u8; 1024];
    loop {
        let room = max.saturating_sub(buf.len());
        if room == 0 {
            return Ok(Head::TooLarge);
        }
        let want = room.min(chunk.len());
        let n = stream.read(&mut chunk[..want]).await?;
        if n == 0 {
            return Ok(Head::Closed);
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(&buf) {
            Ok(httparse::Status::Complete(_)) => {
                return Ok(Head::Request {
                    method: request.method.unwrap_or_default().to_owned(),
                    path: request.path.unwrap_or_default().to_owned(),
                });
            }
            Ok(httparse::Status::Partial) => {}
            Err(httparse::Error::TooManyHeaders) => return Ok(Head::TooLarge),
            Err(_) => return Ok(Head::Bad),
        }
    }
}

/// Writes a whole response within the write limit, then closes.
async fn reply(
    stream: &mut TcpStream,
    limits: Limits,
    code: u16,
    reason: &str,
    content_type: Option<&str>,
    body: &str,
) {
    reply_with(stream, limits, code, reason, content_type, body, false).await;
}

/// [`reply`], leaving the body out (for HEAD) when `head_only`.
async fn reply_with(
    stream: &mut TcpStream,
    limits: Limits,
    code: u16,
    reason: &str,
    content_type: Option<&str>,
    body: &str,
    head_only: bool,
) {
    let content_type = content_type.unwrap_or("text/plain; charset=utf-8");
    let allow = if code == 405 {
        "Allow: GET, HEAD\r\n"
    } else {
        ""
    };
    let head = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         {allow}Connection: close\r\n\r\n",
        body.len()
    );
    let write = async {
        stream.write_all(head.as_bytes()).await?;
        if !head_only {
            stream.write_all(body.as_bytes()).await?;
        }
        stream.shutdown().await
    };
    if !matches!(tokio::time::timeout(limits.write, write).await, Ok(Ok(()))) {
        return;
    }
    // Closing with unread bytes would reset the connection, and the
    // client might lose the response: read a little of what is left.
    let drain = async {
        let mut chunk = [0u8; 1024];
        let mut left = DRAIN;
        while left > 0 {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIME, drain).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    async fn start(limits: Limits) -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(
            listener,
            limits,
            "text/plain; version=0.0.4",
            || async { "metric 1\n".to_owned() },
        ));
        addr
    }

    /// Sends `request`, then reads the whole response (the server closes).
    async fn exchange(addr: std::net::SocketAddr, request: &[u8]) -> String {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(request).await.unwrap();
        let mut response = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response))
            .await
            .expect("the server closes the connection")
            .unwrap();
        String::from_utf8(response).unwrap()
    }

    #[tokio::test]
    async fn a_get_of_metrics_is_answered_and_the_connection_closed() {
        let addr = start(Limits::default()).await;
        let r = exchange(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(
            r.contains("Content-Type: text/plain; version=0.0.4\r\n"),
            "{r}"
        );
        assert!(r.contains("Content-Length: 9\r\n"), "{r}");
        assert!(r.contains("Connection: close\r\n"), "{r}");
        assert!(r.ends_with("\r\n\r\nmetric 1\n"), "{r}");
        // A query string is allowed; HEAD gets the head alone.
        let r = exchange(addr, b"GET /metrics?x=1 HTTP/1.0\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        let get = exchange(addr, b"GET /metrics HTTP/1.1\r\n\r\n").await;
        let r = exchange(addr, b"HEAD /metrics HTTP/1.1\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(r.ends_with("\r\n\r\n"), "{r}");
        // The length GET's body has, as RFC 9110 §9.3.2 asks.
        let length = |r: &str| {
            r.lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .map(str::to_owned)
        };
        assert_eq!(length(&r), length(&get), "{r}");
        assert_ne!(length(&r).as_deref(), Some("0"), "{r}");
    }

    #[tokio::test]
    async fn an_unknown_path_is_404_another_method_405_and_garbage_400() {
        let addr = start(Limits::default()).await;
        for path in ["/", "/metricsx", "/metrics/", "/../metrics"] {
            let r = exchange(addr, format!("GET {path} HTTP/1.1\r\n\r\n").as_bytes()).await;
            assert!(r.starts_with("HTTP/1.1 404 Not Found\r\n"), "{path}: {r}");
        }
        for method in ["POST", "PUT", "DELETE", "OPTIONS"] {
            let r = exchange(
                addr,
                format!("{method} /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc").as_bytes(),
            )
            .await;
            assert!(r.starts_with("HTTP/1.1 405 "), "{method}: {r}");
            assert!(r.contains("Allow: GET, HEAD\r\n"), "{r}");
            assert!(!r.contains("metric 1"), "{r}");
        }
        let r = exchange(
            addr,
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
        )
        .await;
        assert!(r.starts_with("HTTP/1.1 400 "), "{r}");
    }

    #[tokio::test]
    async fn an_oversized_request_head_is_refused_after_the_limit_not_read_to_its_end() {
        let limits = Limits {
            head: 1024,
            ..Limits::default()
        };
        let addr = start(limits).await;
        // A head that never ends, 16 KiB of one header.
        let mut request = b"GET /metrics HTTP/1.1\r\nX-Long: ".to_vec();
        request.resize(16 * 1024, b'a');
        let r = exchange(addr, &request).await;
        assert!(
            r.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
            "{r}"
        );
        // Too many headers, within the size: refused too.
        let mut request = b"GET /metrics HTTP/1.1\r\n".to_vec();
        for i in 0..40 {
            request.extend_from_slice(format!("H{i}: v\r\n").as_bytes());
        }
        request.extend_from_slice(b"\r\n");
        let r = exchange(addr, &request).await;
        assert!(r.starts_with("HTTP/1.1 431 "), "{r}");
    }

    #[tokio::test]
    async fn a_client_that_stops_sending_is_cut_off_at_the_read_deadline() {
        let limits = Limits {
            read: Duration::from_millis(200),
            ..Limits::default()
        };
        let addr = start(limits).await;
        let start = Instant::now();
        let r = exchange(addr, b"GET /metr").await;
        assert!(r.starts_with("HTTP/1.1 408 "), "{r}");
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
    }

    #[tokio::test]
    async fn connections_past_the_limit_are_closed_at_once_and_served_again_after() {
        let limits = Limits {
            connections: 1,
            ..Limits::default()
        };
        let addr = start(limits).await;
        // One silent client holds the only slot (for up to the 5 s read deadline).
        let slow = TcpStream::connect(addr).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut second = TcpStream::connect(addr).await.unwrap();
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(2), second.read(&mut buf))
            .await
            .expect("closed at once, not kept waiting")
            .unwrap_or(0);
        assert_eq!(n, 0, "closed without a response");
        // Once the slow one goes, the slot is free again.
        drop(slow);
        let start = Instant::now();
        loop {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            let _ = stream.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").await;
            let mut response = Vec::new();
            let _ = stream.read_to_end(&mut response).await;
            if response.starts_with(b"HTTP/1.1 200 ") {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "never served again"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
