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

use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use hickory_proto::op::{Edns, Header, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::{JoinHandle, JoinSet};

mod zone;

pub use self::zone::Zone;
use self::zone::key;

/// Largest DNS message accepted, over UDP or TCP.
const MAX_MESSAGE: usize = 4096;
/// A TCP connection with no complete message for this long is closed.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// Concurrent TCP connections; more are closed on accept.
const MAX_TCP_CONNECTIONS: usize = 64;
/// Entries kept in the query and error logs.
const MAX_LOG: usize = 10_000;

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
