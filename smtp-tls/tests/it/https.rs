//! `smtp_tls::https::HttpsGet` against the testkit's HTTPS server on
//! 127.0.0.1, its certificate from a test CA.

use std::net::{IpAddr, Ipv4Addr};

use smtp_testkit::certs::{Identity, TestCa};
use smtp_testkit::https::{HttpsServer, Pages};
use smtp_tls::Trust;
use smtp_tls::https::{HttpsError, HttpsGet};

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn trusting(ca: &TestCa) -> Trust {
    let mut trust = Trust::new().without_web_pki_roots();
    trust.add_ca_pem(ca.cert_pem().as_bytes()).unwrap();
    trust
}

async fn start(identity: Identity, pages: Pages) -> HttpsServer {
    HttpsServer::start(identity, pages)
        .await
        .expect("the HTTPS server starts")
}

#[tokio::test]
async fn a_page_is_fetched_over_verified_tls() {
    let ca = TestCa::new();
    let pages = Pages::new().page("/doc.xml", "text/xml", "<a/>");
    let server = start(ca.leaf(&["docs.example.test"]), pages).await;
    let get = HttpsGet::new(trusting(&ca));
    let r = get
        .get(
            "docs.example.test",
            &[LOOPBACK],
            server.addr().port(),
            "/doc.xml?x=1",
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"<a/>");
    assert_eq!(r.header("content-type"), Some("text/xml"));
    let r = get
        .get(
            "docs.example.test",
            &[LOOPBACK],
            server.addr().port(),
            "/none",
        )
        .await
        .unwrap();
    assert_eq!(r.status, 404);
    assert_eq!(server.requests(), ["/doc.xml?x=1", "/none"]);
}

#[tokio::test]
async fn a_certificate_that_does_not_verify_for_the_name_is_refused() {
    let ca = TestCa::new();
    let pages = Pages::new().page("/", "text/plain", "hi");
    let other = start(ca.leaf(&["other.example.test"]), pages.clone()).await;
    let get = HttpsGet::new(trusting(&ca));
    let e = get
        .get("docs.example.test", &[LOOPBACK], other.addr().port(), "/")
        .await
        .unwrap_err();
    assert!(matches!(e, HttpsError::Tls { .. }), "{e}");
    let self_signed = start(Identity::self_signed(&["docs.example.test"]), pages).await;
    let e = get
        .get(
            "docs.example.test",
            &[LOOPBACK],
            self_signed.addr().port(),
            "/",
        )
        .await
        .unwrap_err();
    assert!(matches!(e, HttpsError::Tls { .. }), "{e}");
    assert!(self_signed.requests().is_empty());
}

#[tokio::test]
async fn a_body_over_the_cap_or_chunked_is_refused() {
    let ca = TestCa::new();
    let pages = Pages::new()
        .page("/big", "text/plain", vec![b'x'; 100])
        .raw(
            "/chunked",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
        )
        .raw("/to-close", "HTTP/1.1 200 OK\r\n\r\nuntil the end")
        .cut("/cut", "HTTP/1.1 200 OK\r\n\r\nmode: enforce\r\n");
    let server = start(ca.leaf(&["docs.example.test"]), pages).await;
    let port = server.addr().port();
    let get = HttpsGet::new(trusting(&ca)).with_max_body(64);
    let e = get
        .get("docs.example.test", &[LOOPBACK], port, "/big")
        .await
        .unwrap_err();
    assert!(matches!(e, HttpsError::TooLarge { limit: 64, .. }), "{e}");
    let e = get
        .get("docs.example.test", &[LOOPBACK], port, "/chunked")
        .await
        .unwrap_err();
    assert!(matches!(e, HttpsError::Unsupported { .. }), "{e}");
    let r = get
        .get("docs.example.test", &[LOOPBACK], port, "/to-close")
        .await
        .unwrap();
    assert_eq!(r.body, b"until the end");
    // Delimited by the end of the connection, and that end is not TLS's:
    // the body may be cut short. Refused, as a failed connection (not a
    // certificate that failed to verify).
    let e = get
        .get("docs.example.test", &[LOOPBACK], port, "/cut")
        .await
        .unwrap_err();
    assert!(matches!(e, HttpsError::Io { .. }), "{e}");
    assert!(e.to_string().contains("close_notify"), "{e}");
}
