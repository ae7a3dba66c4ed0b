//! MX resolution for direct SMTP delivery on hickory-resolver.
//!
//! [`HickoryResolver`] implements `smtp_core::delivery::mx::Resolver`, the only thing
//! the core's MX planning (`smtp_core::delivery::mx::plan`: RFC 5321 §5.1 ordering,
//! implicit MX, RFC 7505 null MX) needs from DNS. hickory's types stay
//! inside this crate, so its API changes stop here.
//!
//! It also implements [`RecordResolver`]: the TXT and PTR lookups that
//! checking a sending set-up needs (SPF, DMARC and DKIM records, reverse
//! DNS; `smtp doctor`), and the SRV lookups that finding a submission
//! server needs (RFC 6186; `smtp setup`), which MX planning does not.
//!
//! | DNS answer | becomes |
//! |---|---|
//! | records | `Ok(records)` |
//! | NOERROR without records (NODATA) | `Ok(vec![])` — for MX: implicit MX |
//! | NXDOMAIN | `DnsError::NxDomain` (permanent) |
//! | SERVFAIL, REFUSED, timeout, network error | `DnsError::Temporary` |
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use smtp_core::delivery::mx::{plan, Resolver};
//! let resolver = smtp_dns::HickoryResolver::system()?;
//! let mut first = |_n: usize| 0;
//! let plan = plan(&resolver, "example.net", &mut first, 5).await?;
//! for (host, addr) in plan.attempts() {
//!     println!("{host} {addr}");
//! }
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use async_trait::async_trait;
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::NetError;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{Name, RData};
use smtp_core::delivery::mx::{DnsError, MxRecord, Resolver};

/// TXT and PTR lookups, beside the MX and address lookups of
/// `smtp_core::delivery::mx::Resolver`: what checking a sending set-up
/// needs (SPF, DMARC and DKIM records; reverse DNS and its forward
/// confirmation), behind one object with the MX lookups.
///
/// A trait of its own rather than two more methods on the core's
/// `Resolver`: the core's trait holds exactly what its delivery logic
/// looks up (MX planning), and every implementer of it — a library
/// user's resolver, the test fakes — would otherwise owe lookups the core
/// never makes, or get defaults that answer wrongly. The core stays free
/// of DNS beyond what sans-IO delivery needs; the record types and their
/// meaning (SPF, DMARC, DKIM) belong to the callers that read them.
///
/// Answers map as the core's trait does (see the crate's table): NODATA is
/// `Ok(vec![])`, NXDOMAIN `DnsError::NxDomain`, the rest
/// `DnsError::Temporary`.
#[async_trait]
pub trait RecordResolver: Resolver {
    /// The TXT records at `name`, one string each: a record's
    /// character-strings joined with nothing between them, as SPF (RFC
    /// 7208 §3.3), DMARC and DKIM (RFC 6376 §3.6.2.2) read them. Bytes that
    /// are not UTF-8 become U+FFFD.
    async fn txt(&self, name: &str) -> Result<Vec<String>, DnsError>;
    /// The names the PTR records of `ip` give (reverse DNS), without the
    /// trailing dot.
    async fn ptr(&self, ip: IpAddr) -> Result<Vec<String>, DnsError>;
    /// The SRV records at `name` (RFC 2782), e.g.
    /// `_submissions._tcp.example.org` for RFC 6186's submission servers,
    /// in the order the answer gave them (the caller sorts by priority and
    /// weight). A target of `.` (the service is not offered here) is kept
    /// as the empty string.
    async fn srv(&self, name: &str) -> Result<Vec<SrvRecord>, DnsError>;
}

/// One SRV record (RFC 2782): `target:port`, tried by ascending
/// `priority`, `weight` sharing the load among equal priorities.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SrvRecord {
    /// Lower is tried first.
    pub priority: u16,
    /// Relative share among records of the same priority.
    pub weight: u16,
    /// The port the service listens on.
    pub port: u16,
    /// The host, without the trailing dot; empty for `.` (RFC 2782: the
    /// service is decidedly not available at this domain).
    pub target: String,
}

/// A resolver that could not be set up.
#[derive(Debug)]
pub struct SetupError(String);

impl fmt::Display for SetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cannot set up DNS resolution: {}; name a nameserver (HickoryResolver::with_nameserver)",
            self.0
        )
    }
}

impl std::error::Error for SetupError {}

/// DNS over hickory-resolver, on tokio.
pub struct HickoryResolver {
    inner: TokioResolver,
    /// Who answers, for errors.
    name: String,
}

impl fmt::Debug for HickoryResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HickoryResolver")
    }
}

impl HickoryResolver {
    /// The system's configuration (`/etc/resolv.conf`).
    pub fn system() -> Result<Self, SetupError> {
        let builder = TokioResolver::builder_tokio().map_err(|e| SetupError(e.to_string()))?;
        let inner = builder.build().map_err(|e| SetupError(e.to_string()))?;
        Ok(Self {
            inner,
            name: "the system resolver (/etc/resolv.conf)".to_owned(),
        })
    }

    /// One nameserver (UDP, then TCP for truncated answers), e.g. a test
    /// zone on loopback, with a per-query `timeout`.
    pub fn with_nameserver(server: SocketAddr, timeout: Duration) -> Result<Self, SetupError> {
        let mut ns = NameServerConfig::udp_and_tcp(server.ip());
        for connection in &mut ns.connections {
            connection.port = server.port();
        }
        let config = ResolverConfig::from_name_servers(vec![ns]);
        let mut options = ResolverOpts::default();
        options.timeout = timeout;
        options.attempts = 1;
        options.cache_size = 0;
        let inner = TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
            .with_options(options)
            .build()
            .map_err(|e| SetupError(e.to_string()))?;
        Ok(Self {
            inner,
            name: format!("the nameserver {server}"),
        })
    }

    /// Parses `IP[:PORT]` (port 53 by default).
    pub fn parse_nameserver(s: &str) -> Result<SocketAddr, SetupError> {
        s.parse::<SocketAddr>()
            .or_else(|_| s.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
            .map_err(|_| SetupError(format!("{s:?} is not IP or IP:PORT")))
    }
}

/// Names are looked up as absolute, so no search domain is ever appended.
fn absolute(name: &str) -> String {
    if name.ends_with('.') {
        name.to_owned()
    } else {
        format!("{name}.")
    }
}

fn classify(e: &NetError) -> Result<(), DnsError> {
    if e.is_nx_domain() {
        return Err(DnsError::NxDomain);
    }
    if let NetError::Dns(hickory_resolver::net::DnsError::NoRecordsFound(no)) = e {
        if no.response_code == ResponseCode::NoError {
            return Ok(());
        }
        return Err(DnsError::Temporary(format!("{}", no.response_code)));
    }
    Err(DnsError::Temporary(e.to_string()))
}

#[async_trait]
impl Resolver for HickoryResolver {
    fn name(&self) -> String {
        self.name.clone()
    }

    async fn mx(&self, domain: &str) -> Result<Vec<MxRecord>, DnsError> {
        match self.inner.mx_lookup(absolute(domain)).await {
            Ok(lookup) => Ok(lookup
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::MX(mx) => Some(MxRecord {
                        preference: mx.preference,
                        exchange: mx.exchange.to_ascii(),
                    }),
                    _ => None,
                })
                .collect()),
            Err(e) => classify(&e).map(|()| Vec::new()),
        }
    }

    async fn addresses(&self, host: &str) -> Result<Vec<IpAddr>, DnsError> {
        match self.inner.lookup_ip(absolute(host)).await {
            Ok(lookup) => Ok(lookup.iter().collect()),
            Err(e) => classify(&e).map(|()| Vec::new()),
        }
    }
}

#[async_trait]
impl RecordResolver for HickoryResolver {
    async fn txt(&self, name: &str) -> Result<Vec<String>, DnsError> {
        match self.inner.txt_lookup(absolute(name)).await {
            Ok(lookup) => Ok(lookup
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::TXT(txt) => {
                        Some(String::from_utf8_lossy(&txt.txt_data.concat()).into_owned())
                    }
                    _ => None,
                })
                .collect()),
            Err(e) => classify(&e).map(|()| Vec::new()),
        }
    }

    async fn ptr(&self, ip: IpAddr) -> Result<Vec<String>, DnsError> {
        match self.inner.reverse_lookup(Name::from(ip)).await {
            Ok(lookup) => Ok(lookup
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::PTR(ptr) => Some(ptr.0.to_ascii().trim_end_matches('.').to_owned()),
                    _ => None,
                })
                .collect()),
            Err(e) => classify(&e).map(|()| Vec::new()),
        }
    }

    async fn srv(&self, name: &str) -> Result<Vec<SrvRecord>, DnsError> {
        match self.inner.srv_lookup(absolute(name)).await {
            Ok(lookup) => Ok(lookup
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::SRV(srv) => Some(SrvRecord {
                        priority: srv.priority,
                        weight: srv.weight,
                        port: srv.port,
                        target: srv.target.to_ascii().trim_end_matches('.').to_owned(),
                    }),
                    _ => None,
                })
                .collect()),
            Err(e) => classify(&e).map(|()| Vec::new()),
        }
    }
}
