//! A DNS server on loopback serving a zone built in code.
//!
//! Build a [`Zone`] with MX, A, AAAA, CNAME, TXT, PTR and SRV records, mark names that must
//! fail ([`Zone::servfail`]) or never answer ([`Zone::timeout`]), then serve
//! it with [`DnsServer::start`] on `127.0.0.1`, UDP and TCP on the same
//! ephemeral port. Point the resolver under test at [`DnsServer::addr`] and
//! assert on what it asked with [`DnsServer::queries`].
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use std::net::Ipv4Addr;
//! use smtp_testkit::dns::{DnsServer, Zone};
//!
//! let zone = Zone::new()
//!     .mx("example.com", 10, "mx1.example.com")
//!     .mx("example.com", 20, "mx2.example.com")
//!     .a("mx1.example.com", Ipv4Addr::new(127, 0, 0, 10))
//!     .null_mx("nomail.example")
//!     .servfail("broken.example");
//! let server = DnsServer::start(zone).await?;
//! println!("DNS on {}", server.addr());
//! // ... resolve through server.addr() ...
//! assert!(!server.queried("broken.example"));
//! # Ok(()) }
//! ```
//!
//! # Answers
//!
//! The server is authoritative for every name: responses set AA, echo the
//! id, opcode and question, copy RD and never set RA.
//!
//! - The name has records of the asked type: they are the answer. MX answers
//!   carry the exchanges' A and AAAA records (if in the zone) as additional
//!   records.
//! - The name lacks the type but has a CNAME: the answer is the CNAME, then
//!   the target's records of the asked type, following chains inside the
//!   zone (at most 8 links).
//! - The name exists (it has records, or a name below it does) but lacks the
//!   type: NOERROR with an empty answer (NODATA) and a synthetic SOA in the
//!   authority section.
//! - Otherwise: NXDOMAIN with the same SOA.
//! - Names marked [`Zone::servfail`] answer SERVFAIL to any query; names
//!   marked [`Zone::timeout`] are never answered.
//!
//! # Bounds and garbage
//!
//! The server never panics on what it receives. Datagrams over 4096 bytes are
//! dropped; a message that does not parse is answered FORMERR when its header
//! parses, and dropped otherwise; responses (QR=1) are never answered. Every
//! such event is kept in [`DnsServer::errors`]. TCP messages use the 2-byte
//! length prefix (RFC 1035 4.2.2); a TCP message over 4096 bytes closes the
//! connection, and a connection idle for 10 seconds is closed. UDP answers
//! larger than 512 bytes (or the client's EDNS payload size, up to 4096) are
//! sent truncated with TC set.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use hickory_proto::op::{Edns, Header, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, MX, PTR, SOA, SRV, TXT};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::{JoinHandle, JoinSet};

/// Largest DNS message accepted, over UDP or TCP.
const MAX_MESSAGE: usize = 4096;
/// TTL of every record served.
const TTL: u32 = 300;
/// Longest CNAME chain followed.
const MAX_CNAME_CHAIN: usize = 8;
/// A TCP connection with no complete message for this long is closed.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// Concurrent TCP connections; more are closed on accept.
const MAX_TCP_CONNECTIONS: usize = 64;
/// Entries kept in the query and error logs.
const MAX_LOG: usize = 10_000;

/// A zone built in code.
///
/// Names are case-insensitive and a trailing dot is optional:
/// `"MX1.Example.COM."` and `"mx1.example.com"` are the same name.
///
/// # Panics
///
/// The builder methods panic when given a name that is not a valid domain
/// name (for example a label longer than 63 bytes): that is a mistake in the
/// test, not input from the code under test.
#[derive(Clone, Debug, Default)]
pub struct Zone {
    /// Nodes by lowercase fully qualified name (`"example.com."`).
    nodes: BTreeMap<String, Node>,
}

/// Everything known about one name.
#[derive(Clone, Debug, Default)]
struct Node {
    /// The name as first given, lowercase and fully qualified.
    name: Name,
    records: Vec<RData>,
    behavior: Behavior,
}

/// How the server treats queries for a name.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Behavior {
    /// Answer from the records.
    #[default]
    Answer,
    /// Answer SERVFAIL.
    ServFail,
    /// Never answer.
    Timeout,
}

impl Zone {
    /// An empty zone: every name is NXDOMAIN.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an MX record: mail for `domain` goes to `exchange` with this
    /// `preference` (lower is tried first).
    #[must_use]
    pub fn mx(self, domain: &str, preference: u16, exchange: &str) -> Self {
        let exchange = parse_name(exchange, "MX exchange");
        self.add(domain, RData::MX(MX::new(preference, exchange)))
    }

    /// Adds the null MX of RFC 7505 (`MX 0 .`): `domain` accepts no mail.
    #[must_use]
    pub fn null_mx(self, domain: &str) -> Self {
        self.add(domain, RData::MX(MX::new(0, Name::root())))
    }

    /// Adds an A record.
    #[must_use]
    pub fn a(self, name: &str, ip: Ipv4Addr) -> Self {
        self.add(name, RData::A(A(ip)))
    }

    /// Adds an AAAA record.
    #[must_use]
    pub fn aaaa(self, name: &str, ip: Ipv6Addr) -> Self {
        self.add(name, RData::AAAA(AAAA(ip)))
    }

    /// Adds a CNAME record: `name` is an alias of `target`.
    ///
    /// The zone does not stop a name from having both a CNAME and other
    /// records (which RFC 1034 forbids); queries for a type the name has
    /// are answered from those records.
    #[must_use]
    pub fn cname(self, name: &str, target: &str) -> Self {
        let target = parse_name(target, "CNAME target");
        self.add(name, RData::CNAME(CNAME(target)))
    }

    /// Adds a TXT record holding `value` (an SPF, DMARC or DKIM record),
    /// cut into character-strings of at most 255 octets, as a zone file
    /// holds a long value; resolvers join them back.
    #[must_use]
    pub fn txt(self, name: &str, value: &str) -> Self {
        let strings = value
            .as_bytes()
            .chunks(255)
            .map(<[u8]>::to_vec)
            .collect::<Vec<_>>();
        self.txt_strings(name, &strings)
    }

    /// Adds a TXT record of these character-strings as given (each at most
    /// 255 octets; an empty list is one empty string).
    ///
    /// # Panics
    ///
    /// When a string is over 255 octets: a mistake in the test.
    #[must_use]
    pub fn txt_strings(self, name: &str, strings: &[Vec<u8>]) -> Self {
        assert!(
            strings.iter().all(|s| s.len() <= 255),
            "smtp_testkit::dns::Zone: a TXT character-string is at most 255 octets"
        );
        let parts: Vec<&[u8]> = if strings.is_empty() {
            vec![&[]]
        } else {
            strings.iter().map(Vec::as_slice).collect()
        };
        self.add(name, RData::TXT(TXT::from_bytes(parts)))
    }

    /// Adds a PTR record for `ip` (at its `in-addr.arpa` or `ip6.arpa`
    /// name): the address's reverse DNS names `target`.
    #[must_use]
    pub fn ptr(self, ip: IpAddr, target: &str) -> Self {
        let target = parse_name(target, "PTR target");
        let owner = Name::from(ip).to_ascii();
        self.add(&owner, RData::PTR(PTR(target)))
    }

    /// Adds an SRV record (RFC 2782) at `name` (e.g.
    /// `_submissions._tcp.example.org`): the service is at `target:port`.
    /// A `target` of `"."` says the service is not offered.
    #[must_use]
    pub fn srv(self, name: &str, priority: u16, weight: u16, port: u16, target: &str) -> Self {
        let target = if target == "." {
            Name::root()
        } else {
            parse_name(target, "SRV target")
        };
        self.add(name, RData::SRV(SRV::new(priority, weight, port, target)))
    }

    /// Makes any query for `name` answer SERVFAIL.
    #[must_use]
    pub fn servfail(self, name: &str) -> Self {
        self.mark(name, Behavior::ServFail)
    }

    /// Makes queries for `name` go unanswered, so that the client times out.
    #[must_use]
    pub fn timeout(self, name: &str) -> Self {
        self.mark(name, Behavior::Timeout)
    }

    fn add(mut self, name: &str, data: RData) -> Self {
        self.node(name).records.push(data);
        self
    }

    fn mark(mut self, name: &str, behavior: Behavior) -> Self {
        self.node(name).behavior = behavior;
        self
    }

    fn node(&mut self, name: &str) -> &mut Node {
        let name = parse_name(name, "owner name");
        self.nodes.entry(key(&name)).or_insert_with(|| Node {
            name,
            ..Node::default()
        })
    }

    fn get(&self, name: &Name) -> Option<&Node> {
        self.nodes.get(&key(name))
    }

    /// Whether `name` has a node or is an ancestor of one (an "empty
    /// non-terminal", which exists in DNS terms).
    fn exists(&self, name: &Name) -> bool {
        let k = key(name);
        if self.nodes.contains_key(&k) {
            return true;
        }
        let suffix = if k == "." {
            String::new()
        } else {
            format!(".{k}")
        };
        self.nodes.keys().any(|n| n.ends_with(&suffix))
    }

    /// Records of `rtype` at `node`, as records.
    fn records_of(node: &Node, rtype: RecordType) -> impl Iterator<Item = Record> + '_ {
        node.records
            .iter()
            .filter(move |d| rtype == RecordType::ANY || d.record_type() == rtype)
            .map(|d| Record::from_rdata(node.name.clone(), TTL, d.clone()))
    }

    /// Works out the answer to one question; `None` means "do not answer".
    fn resolve(&self, qname: &Name, qtype: RecordType) -> Option<Answer> {
        let mut answer = Answer::default();
        let mut name = qname.clone();
        for _ in 0..=MAX_CNAME_CHAIN {
            let Some(node) = self.get(&name) else {
                // Only the queried name itself decides NXDOMAIN; a CNAME
                // target outside the zone is simply not followed.
                if answer.answers.is_empty() && !self.exists(&name) {
                    answer.rcode = ResponseCode::NXDomain;
                }
                break;
            };
            match node.behavior {
                Behavior::Answer => {}
                Behavior::ServFail => {
                    answer.rcode = ResponseCode::ServFail;
                    return Some(answer);
                }
                Behavior::Timeout => return None,
            }
            let before = answer.answers.len();
            answer.answers.extend(Self::records_of(node, qtype));
            if answer.answers.len() > before {
                break;
            }
            let cname = node.records.iter().find_map(|d| match d {
                RData::CNAME(CNAME(target)) => Some(target.clone()),
                _ => None,
            });
            let Some(target) = cname else { break };
            answer.answers.push(Record::from_rdata(
                node.name.clone(),
                TTL,
                RData::CNAME(CNAME(target.clone())),
            ));
            name = target;
        }
        // Addresses of mail exchangers, when we have them.
        let exchanges: Vec<Name> = answer
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::MX(mx) if !mx.exchange.is_root() => Some(mx.exchange.clone()),
                _ => None,
            })
            .collect();
        for exchange in exchanges {
            if let Some(node) = self.get(&exchange)
                && node.behavior == Behavior::Answer
            {
                answer
                    .additionals
                    .extend(Self::records_of(node, RecordType::A));
                answer
                    .additionals
                    .extend(Self::records_of(node, RecordType::AAAA));
            }
        }
        if answer.answers.is_empty() {
            answer.authorities.push(soa_for(qname));
        }
        Some(answer)
    }
}

/// The sections of a response to one question.
#[derive(Debug, Default)]
struct Answer {
    rcode: ResponseCode,
    answers: Vec<Record>,
    authorities: Vec<Record>,
    additionals: Vec<Record>,
}

/// Parses a name given to the zone builder.
fn parse_name(name: &str, what: &str) -> Name {
    let mut parsed = match Name::from_ascii(name) {
        Ok(n) => n,
        Err(e) => panic!("smtp_testkit::dns::Zone: invalid {what} {name:?}: {e}"),
    };
    parsed.set_fqdn(true);
    parsed.to_lowercase()
}

/// The lookup key of a name: lowercase, fully qualified, ASCII.
fn key(name: &Name) -> String {
    let mut name = name.to_lowercase();
    name.set_fqdn(true);
    name.to_ascii()
}

/// A synthetic SOA for negative answers, owned by the last two labels of
/// `qname` (a suffix of it, as resolvers expect).
fn soa_for(qname: &Name) -> Record {
    let mut owner = qname.to_lowercase();
    if owner.num_labels() > 2 {
        owner = owner.trim_to(2);
    }
    owner.set_fqdn(true);
    let mname = Name::from_labels(["ns", "testkit", "invalid"]).unwrap_or_else(|_| Name::root());
    let rname =
        Name::from_labels(["hostmaster", "testkit", "invalid"]).unwrap_or_else(|_| Name::root());
    let soa = SOA::new(mname, rname, 1, 3600, 600, 86400, 60);
    Record::from_rdata(owner, 60, RData::SOA(soa))
}

/// One question received, as kept by [`DnsServer::queries`].
type Query = (String, String);

/// State shared between the server handle and its tasks.
#[derive(Debug)]
struct Shared {
    zone: Zone,
    queries: Mutex<Vec<Query>>,
    errors: Mutex<Vec<String>>,
}

impl Shared {
    fn log_query(&self, name: &Name, qtype: RecordType) {
        let mut name = key(name);
        if name.len() > 1 {
            name.pop();
        }
        push_bounded(&self.queries, (name, qtype.to_string()));
    }

    fn log_error(&self, peer: SocketAddr, proto: Proto, what: fmt::Arguments<'_>) {
        push_bounded(&self.errors, format!("{proto} from {peer}: {what}"));
    }

    /// Handles one message; returns the response to send, if any.
    fn handle(&self, bytes: &[u8], peer: SocketAddr, proto: Proto) -> Option<Vec<u8>> {
        if bytes.len() > MAX_MESSAGE {
            self.log_error(
                peer,
                proto,
                format_args!("message of {} bytes dropped", bytes.len()),
            );
            return None;
        }
        let request = match Message::from_vec(bytes) {
            Ok(m) => m,
            Err(e) => {
                let Ok(header) = Header::read(&mut BinDecoder::new(bytes)) else {
                    self.log_error(peer, proto, format_args!("unparsable message dropped: {e}"));
                    return None;
                };
                if header.metadata.message_type == MessageType::Response {
                    self.log_error(
                        peer,
                        proto,
                        format_args!("unparsable response ignored: {e}"),
                    );
                    return None;
                }
                self.log_error(peer, proto, format_args!("FORMERR: {e}"));
                let mut response = Message::error_msg(
                    header.metadata.id,
                    header.metadata.op_code,
                    ResponseCode::FormErr,
                );
                response.metadata.recursion_desired = header.metadata.recursion_desired;
                return response.to_vec().ok();
            }
        };
        if request.metadata.message_type == MessageType::Response {
            self.log_error(peer, proto, format_args!("response ignored"));
            return None;
        }
        let response = self.respond(&request, peer, proto)?;
        let bytes = match response.to_vec() {
            Ok(b) => b,
            Err(e) => {
                self.log_error(peer, proto, format_args!("cannot encode response: {e}"));
                let mut fail = Message::error_msg(
                    request.metadata.id,
                    request.metadata.op_code,
                    ResponseCode::ServFail,
                );
                fail.metadata.recursion_desired = request.metadata.recursion_desired;
                return fail.to_vec().ok();
            }
        };
        if proto == Proto::Udp {
            let limit = request
                .edns
                .as_ref()
                .map_or(512, |e| usize::from(e.max_payload()))
                .clamp(512, MAX_MESSAGE);
            if bytes.len() > limit {
                return response.truncate().to_vec().ok();
            }
        }
        Some(bytes)
    }

    /// Builds the response to a parsed query; `None` means "do not answer".
    fn respond(&self, request: &Message, peer: SocketAddr, proto: Proto) -> Option<Message> {
        let mut response = Message::response(request.metadata.id, request.metadata.op_code);
        response.metadata.authoritative = true;
        response.metadata.recursion_desired = request.metadata.recursion_desired;
        response.metadata.recursion_available = false;
        response.add_queries(request.queries.iter().cloned());
        if request.edns.is_some() {
            let mut edns = Edns::new();
            edns.set_max_payload(MAX_MESSAGE as u16);
            response.set_edns(edns);
        }
        if request.metadata.op_code != OpCode::Query {
            self.log_error(
                peer,
                proto,
                format_args!("opcode {:?}: NOTIMP", request.metadata.op_code),
            );
            response.metadata.response_code = ResponseCode::NotImp;
            return Some(response);
        }
        let [query] = request.queries.as_slice() else {
            self.log_error(
                peer,
                proto,
                format_args!("{} questions: FORMERR", request.queries.len()),
            );
            response.metadata.response_code = ResponseCode::FormErr;
            return Some(response);
        };
        self.log_query(query.name(), query.query_type());
        if query.query_class() != DNSClass::IN {
            response.metadata.response_code = ResponseCode::Refused;
            return Some(response);
        }
        let answer = self.zone.resolve(query.name(), query.query_type())?;
        response.metadata.response_code = answer.rcode;
        response.insert_answers(answer.answers);
        response.insert_authorities(answer.authorities);
        response.insert_additionals(answer.additionals);
        Some(response)
    }
}

fn push_bounded<T>(log: &Mutex<Vec<T>>, item: T) {
    let mut log = log.lock().unwrap_or_else(PoisonError::into_inner);
    if log.len() < MAX_LOG {
        log.push(item);
    }
}

/// Transport a message came over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Proto {
    Udp,
    Tcp,
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Udp => "UDP",
            Self::Tcp => "TCP",
        })
    }
}

/// A DNS server on `127.0.0.1` serving a [`Zone`] over UDP and TCP.
///
/// Stops on [`DnsServer::shutdown`] or when dropped. Must be started inside
/// a Tokio runtime.
#[derive(Debug)]
pub struct DnsServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    udp: JoinHandle<()>,
    tcp: JoinHandle<()>,
}

impl DnsServer {
    /// Serves `zone` on 127.0.0.1, UDP and TCP on the same ephemeral port.
    ///
    /// # Errors
    ///
    /// When the sockets cannot be bound.
    pub async fn start(zone: Zone) -> io::Result<Self> {
        // The UDP port is picked first; TCP may find it taken, so retry.
        let mut last_err = None;
        for _ in 0..16 {
            let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await?;
            let addr = udp.local_addr()?;
            match TcpListener::bind(addr).await {
                Ok(tcp) => return Ok(Self::spawn(zone, udp, tcp, addr)),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| io::Error::other("no port for UDP and TCP")))
    }

    fn spawn(zone: Zone, udp: UdpSocket, tcp: TcpListener, addr: SocketAddr) -> Self {
        let shared = Arc::new(Shared {
            zone,
            queries: Mutex::new(Vec::new()),
            errors: Mutex::new(Vec::new()),
        });
        let udp = tokio::spawn(serve_udp(udp, Arc::clone(&shared)));
        let tcp = tokio::spawn(serve_tcp(tcp, Arc::clone(&shared)));
        Self {
            addr,
            shared,
            udp,
            tcp,
        }
    }

    /// The address served, for UDP and TCP alike.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The questions received so far, in order, as `(name, type)`: the name
    /// lowercase without the trailing dot (`"example.com"`, `"."` for the
    /// root) and the type as DNS writes it (`"MX"`, `"AAAA"`).
    ///
    /// Includes questions for `servfail` and `timeout` names.
    pub fn queries(&self) -> Vec<(String, String)> {
        self.shared
            .queries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Whether any question (of any type) named `name` was received; `name`
    /// is case-insensitive, trailing dot optional.
    pub fn queried(&self, name: &str) -> bool {
        let wanted = name.trim_end_matches('.').to_ascii_lowercase();
        self.queries().iter().any(|(n, _)| *n == wanted)
    }

    /// What the server received and could not serve normally: oversized or
    /// unparsable messages, responses, unsupported opcodes. Empty when the
    /// client under test behaved.
    pub fn errors(&self) -> Vec<String> {
        self.shared
            .errors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Stops serving and closes the sockets (also done on drop).
    pub fn shutdown(self) {
        drop(self);
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.udp.abort();
        self.tcp.abort();
    }
}

async fn serve_udp(socket: UdpSocket, shared: Arc<Shared>) {
    // One byte more than accepted, to tell "too big" from "exactly the limit".
    let mut buf = vec![0u8; MAX_MESSAGE + 1];
    loop {
        // ICMP errors from earlier sends surface here on some systems.
        let Ok((len, peer)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        if len > MAX_MESSAGE {
            shared.log_error(
                peer,
                Proto::Udp,
                format_args!("datagram over {MAX_MESSAGE} bytes dropped"),
            );
            continue;
        }
        if let Some(response) = shared.handle(&buf[..len], peer, Proto::Udp) {
            // A lost UDP answer is the client's problem to retry.
            let _ = socket.send_to(&response, peer).await;
        }
    }
}

async fn serve_tcp(listener: TcpListener, shared: Arc<Shared>) {
    // Dropping the set (when this task is aborted) aborts the connections.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, peer)) = accepted else { continue };
                if connections.len() >= MAX_TCP_CONNECTIONS {
                    shared.log_error(peer, Proto::Tcp, format_args!("too many connections"));
                    continue;
                }
                connections.spawn(serve_connection(stream, peer, Arc::clone(&shared)));
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn serve_connection(mut stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    let mut buf = vec![0u8; MAX_MESSAGE];
    loop {
        let read = async {
            let len = usize::from(stream.read_u16().await?);
            if len > MAX_MESSAGE {
                return Ok(Err(len));
            }
            stream.read_exact(&mut buf[..len]).await?;
            io::Result::Ok(Ok(len))
        };
        let len = match tokio::time::timeout(TCP_IDLE, read).await {
            Ok(Ok(Ok(len))) => len,
            Ok(Ok(Err(len))) => {
                shared.log_error(
                    peer,
                    Proto::Tcp,
                    format_args!("message of {len} bytes: connection closed"),
                );
                return;
            }
            // Closed by the client, reset, or idle.
            Ok(Err(_)) | Err(_) => return,
        };
        let Some(response) = shared.handle(&buf[..len], peer, Proto::Tcp) else {
            continue;
        };
        let Ok(prefix) = u16::try_from(response.len()) else {
            shared.log_error(peer, Proto::Tcp, format_args!("response too large"));
            return;
        };
        let mut framed = Vec::with_capacity(response.len() + 2);
        framed.extend_from_slice(&prefix.to_be_bytes());
        framed.extend_from_slice(&response);
        if stream.write_all(&framed).await.is_err() {
            return;
        }
    }
}
