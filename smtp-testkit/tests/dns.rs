//! The loopback DNS server, queried with hand-built messages over UDP and TCP.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use smtp_testkit::dns::{DnsServer, Zone};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::timeout;

const CLIENT_TIMEOUT: Duration = Duration::from_millis(300);

fn zone() -> Zone {
    Zone::new()
        .mx("example.com", 20, "mx2.example.com")
        .mx("example.com", 10, "mx1.example.com")
        .a("mx1.example.com", Ipv4Addr::new(127, 0, 0, 10))
        .aaaa("mx1.example.com", Ipv6Addr::LOCALHOST)
        .a("mx2.example.com.", Ipv4Addr::new(127, 0, 0, 20))
        .null_mx("nomail.example")
        .cname("alias.example.com", "mx1.example.com")
        .cname("chain.example.com", "alias.example.com")
        .cname("outside.example.com", "elsewhere.test")
        .mx("Upper.Example.ORG.", 5, "MX.Example.Org")
        .a("mx.example.org", Ipv4Addr::new(127, 0, 0, 30))
        .a("deep.sub.example.net", Ipv4Addr::new(127, 0, 0, 40))
        .servfail("broken.example")
        .timeout("slow.example")
}

fn query(id: u16, name: &str, rtype: RecordType) -> Message {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
    m
}

/// Sends `msg` over UDP; `None` if no answer within 300 ms.
async fn udp_raw(server: SocketAddr, bytes: &[u8]) -> Option<Vec<u8>> {
    let sock = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    sock.send_to(bytes, server).await.unwrap();
    let mut buf = vec![0u8; 65535];
    let (len, from) = timeout(CLIENT_TIMEOUT, sock.recv_from(&mut buf))
        .await
        .ok()?
        .unwrap();
    assert_eq!(from, server);
    buf.truncate(len);
    Some(buf)
}

async fn udp(server: SocketAddr, msg: &Message) -> Option<Message> {
    let bytes = udp_raw(server, &msg.to_vec().unwrap()).await?;
    Some(Message::from_vec(&bytes).unwrap())
}

async fn tcp_send(stream: &mut TcpStream, msg: &Message) {
    let bytes = msg.to_vec().unwrap();
    let mut framed = u16::try_from(bytes.len()).unwrap().to_be_bytes().to_vec();
    framed.extend_from_slice(&bytes);
    stream.write_all(&framed).await.unwrap();
}

async fn tcp_recv(stream: &mut TcpStream) -> Option<Message> {
    let read = async {
        let len = stream.read_u16().await.unwrap();
        let mut buf = vec![0u8; usize::from(len)];
        stream.read_exact(&mut buf).await.unwrap();
        buf
    };
    let bytes = timeout(CLIENT_TIMEOUT, read).await.ok()?;
    Some(Message::from_vec(&bytes).unwrap())
}

async fn tcp(server: SocketAddr, msg: &Message) -> Option<Message> {
    let mut stream = TcpStream::connect(server).await.unwrap();
    tcp_send(&mut stream, msg).await;
    tcp_recv(&mut stream).await
}

/// Queries over UDP and over TCP, checks both answers are the same and
/// well-formed, returns one.
async fn ask(server: &DnsServer, name: &str, rtype: RecordType) -> Message {
    let q = query(0x1234, name, rtype);
    let by_udp = udp(server.addr(), &q).await.expect("UDP answer");
    let by_tcp = tcp(server.addr(), &q).await.expect("TCP answer");
    assert_eq!(by_udp, by_tcp, "UDP and TCP answers differ");
    let h = by_udp.metadata;
    assert_eq!(h.id, 0x1234);
    assert_eq!(h.message_type, MessageType::Response);
    assert!(h.authoritative, "AA");
    assert!(h.recursion_desired, "RD copied");
    assert!(!h.recursion_available, "RA");
    assert!(!h.truncation);
    assert_eq!(by_udp.queries, q.queries, "question echoed");
    by_udp
}

fn mx_of(m: &Message) -> Vec<(u16, String)> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::MX(mx) => Some((mx.preference, mx.exchange.to_ascii())),
            _ => None,
        })
        .collect()
}

fn addrs(records: &[Record]) -> Vec<(String, String)> {
    records
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some((r.name.to_ascii(), a.0.to_string())),
            RData::AAAA(a) => Some((r.name.to_ascii(), a.0.to_string())),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn mx_with_two_preferences_and_addresses_in_additional() {
    let server = DnsServer::start(zone()).await.unwrap();
    let m = ask(&server, "example.com.", RecordType::MX).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    let mut mx = mx_of(&m);
    mx.sort();
    assert_eq!(
        mx,
        [
            (10, "mx1.example.com.".to_owned()),
            (20, "mx2.example.com.".to_owned())
        ]
    );
    let mut extra = addrs(&m.additionals);
    extra.sort();
    assert_eq!(
        extra,
        [
            ("mx1.example.com.".to_owned(), "127.0.0.10".to_owned()),
            ("mx1.example.com.".to_owned(), "::1".to_owned()),
            ("mx2.example.com.".to_owned(), "127.0.0.20".to_owned()),
        ]
    );
}

#[tokio::test]
async fn null_mx() {
    let server = DnsServer::start(zone()).await.unwrap();
    let m = ask(&server, "nomail.example.", RecordType::MX).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(mx_of(&m), [(0, ".".to_owned())]);
    assert!(m.additionals.is_empty());
}

#[tokio::test]
async fn a_and_aaaa() {
    let server = DnsServer::start(zone()).await.unwrap();
    let m = ask(&server, "mx1.example.com.", RecordType::A).await;
    assert_eq!(
        addrs(&m.answers),
        [("mx1.example.com.".to_owned(), "127.0.0.10".to_owned())]
    );
    let m = ask(&server, "mx1.example.com.", RecordType::AAAA).await;
    assert_eq!(
        addrs(&m.answers),
        [("mx1.example.com.".to_owned(), "::1".to_owned())]
    );
    assert!(m.answers.iter().all(|r| r.ttl > 0));
}

#[tokio::test]
async fn nxdomain_with_soa() {
    let server = DnsServer::start(zone()).await.unwrap();
    let m = ask(&server, "nowhere.example.com.", RecordType::MX).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert!(m.answers.is_empty());
    assert_eq!(m.authorities.len(), 1);
    assert_eq!(m.authorities[0].record_type(), RecordType::SOA);
    assert!(
        m.authorities[0]
            .name
            .zone_of(&Name::from_ascii("nowhere.example.com.").unwrap())
    );
}

#[tokio::test]
async fn nodata() {
    let server = DnsServer::start(zone()).await.unwrap();
    // mx2 has an A record but no AAAA.
    let m = ask(&server, "mx2.example.com.", RecordType::AAAA).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.answers.is_empty());
    assert_eq!(m.authorities[0].record_type(), RecordType::SOA);
    // example.com has MX but no A.
    let m = ask(&server, "example.com.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.answers.is_empty());
    // An empty non-terminal exists too.
    let m = ask(&server, "sub.example.net.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.answers.is_empty());
}

#[tokio::test]
async fn servfail() {
    let server = DnsServer::start(zone()).await.unwrap();
    for rtype in [RecordType::MX, RecordType::A, RecordType::AAAA] {
        let m = ask(&server, "broken.example.", rtype).await;
        assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
        assert!(m.answers.is_empty());
    }
}

#[tokio::test]
async fn timeout_never_answers() {
    let server = DnsServer::start(zone()).await.unwrap();
    let q = query(7, "slow.example.", RecordType::MX);
    assert!(udp(server.addr(), &q).await.is_none(), "UDP answered");
    // Over TCP the connection stays usable: a later query is answered.
    let mut stream = TcpStream::connect(server.addr()).await.unwrap();
    tcp_send(&mut stream, &q).await;
    assert!(tcp_recv(&mut stream).await.is_none(), "TCP answered");
    tcp_send(&mut stream, &query(8, "example.com.", RecordType::MX)).await;
    let m = tcp_recv(&mut stream).await.expect("answer after timeout");
    assert_eq!(m.metadata.id, 8);
    assert_eq!(
        server.queries(),
        [
            ("slow.example".to_owned(), "MX".to_owned()),
            ("slow.example".to_owned(), "MX".to_owned()),
            ("example.com".to_owned(), "MX".to_owned()),
        ]
    );
}

#[tokio::test]
async fn cname_followed() {
    let server = DnsServer::start(zone()).await.unwrap();
    let m = ask(&server, "alias.example.com.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(m.answers.len(), 2);
    match &m.answers[0].data {
        RData::CNAME(c) => assert_eq!(c.0.to_ascii(), "mx1.example.com."),
        other => panic!("expected CNAME, got {other:?}"),
    }
    assert_eq!(m.answers[0].name.to_ascii(), "alias.example.com.");
    assert_eq!(
        addrs(&m.answers),
        [("mx1.example.com.".to_owned(), "127.0.0.10".to_owned())]
    );

    // Two links.
    let m = ask(&server, "chain.example.com.", RecordType::AAAA).await;
    let types: Vec<_> = m.answers.iter().map(Record::record_type).collect();
    assert_eq!(
        types,
        [RecordType::CNAME, RecordType::CNAME, RecordType::AAAA]
    );

    // Asking for the CNAME itself gives just the CNAME.
    let m = ask(&server, "alias.example.com.", RecordType::CNAME).await;
    let types: Vec<_> = m.answers.iter().map(Record::record_type).collect();
    assert_eq!(types, [RecordType::CNAME]);

    // A target outside the zone: the CNAME alone, NOERROR.
    let m = ask(&server, "outside.example.com.", RecordType::MX).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    let types: Vec<_> = m.answers.iter().map(Record::record_type).collect();
    assert_eq!(types, [RecordType::CNAME]);
}

#[tokio::test]
async fn names_are_case_insensitive() {
    let server = DnsServer::start(zone()).await.unwrap();
    let m = ask(&server, "EXAMPLE.Com.", RecordType::MX).await;
    assert_eq!(mx_of(&m).len(), 2);
    // The question is echoed as asked.
    assert_eq!(m.queries[0].name().to_ascii(), "EXAMPLE.Com.");
    let m = ask(&server, "upper.example.org.", RecordType::MX).await;
    assert_eq!(mx_of(&m), [(5, "mx.example.org.".to_owned())]);
    assert_eq!(
        addrs(&m.additionals),
        [("mx.example.org.".to_owned(), "127.0.0.30".to_owned())]
    );
    assert!(server.queried("Example.COM."));
    assert!(server.queried("UPPER.example.org"));
}

#[tokio::test]
async fn queries_are_recorded() {
    let server = DnsServer::start(zone()).await.unwrap();
    assert!(server.queries().is_empty());
    udp(server.addr(), &query(1, "Example.com.", RecordType::MX))
        .await
        .unwrap();
    tcp(
        server.addr(),
        &query(2, "mx1.example.com.", RecordType::AAAA),
    )
    .await
    .unwrap();
    udp(server.addr(), &query(3, "broken.example.", RecordType::A))
        .await
        .unwrap();
    assert_eq!(
        server.queries(),
        [
            ("example.com".to_owned(), "MX".to_owned()),
            ("mx1.example.com".to_owned(), "AAAA".to_owned()),
            ("broken.example".to_owned(), "A".to_owned()),
        ]
    );
    assert!(!server.queried("mx2.example.com"));
    assert!(server.errors().is_empty());
}

#[tokio::test]
async fn edns_is_echoed() {
    let server = DnsServer::start(zone()).await.unwrap();
    let mut q = query(9, "example.com.", RecordType::MX);
    let mut edns = Edns::new();
    edns.set_max_payload(1232);
    q.set_edns(edns);
    let m = udp(server.addr(), &q).await.unwrap();
    assert!(m.edns.is_some());
    assert_eq!(mx_of(&m).len(), 2);
}

#[tokio::test]
async fn garbage_is_survived() {
    let server = DnsServer::start(zone()).await.unwrap();
    // A header claiming one question, then nothing: FORMERR, id echoed.
    let mut bad = query(0xbeef, "example.com.", RecordType::MX)
        .to_vec()
        .unwrap();
    bad.truncate(14);
    let reply = udp_raw(server.addr(), &bad).await.expect("FORMERR");
    let m = Message::from_vec(&reply).unwrap();
    assert_eq!(m.metadata.id, 0xbeef);
    assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
    assert!(m.metadata.recursion_desired);

    // Too short for a header: dropped.
    assert!(udp_raw(server.addr(), &[1, 2, 3]).await.is_none());
    // Over 4096 bytes: dropped.
    assert!(udp_raw(server.addr(), &[0u8; 5000]).await.is_none());
    // A response is never answered.
    let mut resp = query(5, "example.com.", RecordType::MX);
    resp.metadata.message_type = MessageType::Response;
    assert!(udp(server.addr(), &resp).await.is_none());
    // Two questions: FORMERR.
    let mut two = query(6, "example.com.", RecordType::MX);
    two.add_query(Query::query(
        Name::from_ascii("nomail.example.").unwrap(),
        RecordType::MX,
    ));
    let m = udp(server.addr(), &two).await.unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::FormErr);

    // Over TCP, an oversized length prefix closes the connection.
    let mut stream = TcpStream::connect(server.addr()).await.unwrap();
    stream.write_all(&[0xff, 0xff]).await.unwrap();
    let mut buf = [0u8; 1];
    let n = timeout(CLIENT_TIMEOUT, stream.read(&mut buf))
        .await
        .expect("connection closed")
        .unwrap_or(0);
    assert_eq!(n, 0);

    assert_eq!(server.errors().len(), 6, "{:#?}", server.errors());
    // Still serving.
    let m = ask(&server, "example.com.", RecordType::MX).await;
    assert_eq!(mx_of(&m).len(), 2);
}

#[tokio::test]
async fn shutdown_stops_serving() {
    let server = DnsServer::start(zone()).await.unwrap();
    let addr = server.addr();
    assert!(
        udp(addr, &query(1, "example.com.", RecordType::MX))
            .await
            .is_some()
    );
    server.shutdown();
    tokio::task::yield_now().await;
    assert!(
        udp(addr, &query(2, "example.com.", RecordType::MX))
            .await
            .is_none()
    );
}

#[tokio::test]
async fn large_udp_answer_is_truncated() {
    let mut zone = Zone::new();
    for i in 0..60 {
        zone = zone.a("many.example", Ipv4Addr::new(127, 0, 1, i));
    }
    let server = DnsServer::start(zone).await.unwrap();
    let q = query(11, "many.example.", RecordType::A);
    let m = udp(server.addr(), &q).await.unwrap();
    assert!(m.metadata.truncation, "TC over UDP");
    assert!(m.answers.is_empty());
    assert_eq!(m.queries, q.queries);
    let m = tcp(server.addr(), &q).await.unwrap();
    assert!(!m.metadata.truncation);
    assert_eq!(m.answers.len(), 60);
}

#[tokio::test]
async fn txt_values_are_cut_into_strings_of_255_octets() {
    let long = format!("v=DKIM1; k=rsa; p={}", "A".repeat(400));
    let zone = Zone::new()
        .txt("example.org", "v=spf1 ip4:192.0.2.0/24 -all")
        .txt("example.org", "another")
        .txt("s1._domainkey.example.org", &long)
        .txt_strings(
            "split.example.org",
            &[b"v=spf1 ".to_vec(), b"-all".to_vec()],
        );
    let server = DnsServer::start(zone).await.unwrap();
    let strings = |m: &Message| -> Vec<Vec<String>> {
        m.answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::TXT(t) => Some(
                    t.txt_data
                        .iter()
                        .map(|s| String::from_utf8(s.to_vec()).unwrap())
                        .collect(),
                ),
                _ => None,
            })
            .collect()
    };
    let m = ask(&server, "example.org.", RecordType::TXT).await;
    assert_eq!(
        strings(&m),
        [vec!["v=spf1 ip4:192.0.2.0/24 -all"], vec!["another"]]
    );
    // Over 512 octets: asked over TCP, as a resolver does after TC.
    let q = query(3, "s1._domainkey.example.org.", RecordType::TXT);
    let m = tcp(server.addr(), &q).await.unwrap();
    let got = strings(&m);
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].iter().map(String::len).collect::<Vec<_>>(),
        [255, long.len() - 255]
    );
    assert_eq!(got[0].concat(), long);
    let m = ask(&server, "split.example.org.", RecordType::TXT).await;
    assert_eq!(strings(&m), [vec!["v=spf1 ", "-all"]]);
    // A name with TXT only is NODATA for MX.
    let m = ask(&server, "example.org.", RecordType::MX).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.answers.is_empty());
}

#[tokio::test]
async fn ptr_records_sit_at_the_reverse_names() {
    let zone = Zone::new()
        .ptr(Ipv4Addr::new(192, 0, 2, 25).into(), "mail.example.org")
        .ptr("2001:db8::25".parse().unwrap(), "mail6.example.org");
    let server = DnsServer::start(zone).await.unwrap();
    let ptrs = |m: &Message| -> Vec<String> {
        m.answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::PTR(p) => Some(p.0.to_ascii()),
                _ => None,
            })
            .collect()
    };
    let m = ask(&server, "25.2.0.192.in-addr.arpa.", RecordType::PTR).await;
    assert_eq!(ptrs(&m), ["mail.example.org."]);
    let v6 = "5.2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa.";
    let m = ask(&server, v6, RecordType::PTR).await;
    assert_eq!(ptrs(&m), ["mail6.example.org."]);
    let m = ask(&server, "26.2.0.192.in-addr.arpa.", RecordType::PTR).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
}
