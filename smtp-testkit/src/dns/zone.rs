//! The zone a [`DnsServer`](super::DnsServer) serves, built in code, and
//! how it answers one question (the rules in the [module docs](super)).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{A, AAAA, CNAME, MX, PTR, SOA, SRV, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};

/// TTL of every record served.
const TTL: u32 = 300;
/// Longest CNAME chain followed.
const MAX_CNAME_CHAIN: usize = 8;

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
    pub(super) fn resolve(&self, qname: &Name, qtype: RecordType) -> Option<Answer> {
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
pub(super) struct Answer {
    pub(super) rcode: ResponseCode,
    pub(super) answers: Vec<Record>,
    pub(super) authorities: Vec<Record>,
    pub(super) additionals: Vec<Record>,
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
pub(super) fn key(name: &Name) -> String {
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
