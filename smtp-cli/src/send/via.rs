//! How `smtp send` reaches servers: the relay's settings, direct
//! delivery's parts (resolver, connector, MTA-STS), and the route the
//! queue keeps for what it enqueues.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use smtp_core::delivery::direct::DirectOptions;
use smtp_core::ehlo::ClientId;
use smtp_core::{Config, TlsPolicy};
use smtp_dns::HickoryResolver;
use smtp_tls::{MxConnector, Server, Trust};

use super::trust;
use crate::cli::{MtaStsArgs, SendArgs, TlsArg};
use crate::fail::Failure;
use crate::settings::Settings;

/// How the queue delivers what `send --queue` (or a merge) enqueued:
/// through the relay when one is set, else directly.
pub(super) fn queue_via(
    s: &Settings,
    client_id: ClientId,
    args: &SendArgs,
) -> Result<crate::queue::Via, Failure> {
    Ok(match &s.server {
        Some((host, port)) => {
            crate::queue::Via::Relay(relay(s, host, *port, client_id, args.verbose)?)
        }
        None => crate::queue::Via::Direct(Box::new(direct_parts(
            s,
            client_id,
            false,
            args.mx_port,
            args.mta_sts,
        )?)),
    })
}

/// The rate budget key of the relay account `s` names (host, port and
/// user name: no password is read for it); `None` without a relay.
pub(crate) fn relay_key(s: &Settings) -> Option<String> {
    let (host, port) = s.server.as_ref()?;
    let port = port.or(s.port).unwrap_or(587);
    Some(smtp_queue::rate::relay_key(host, port, s.user.as_deref()))
}

/// The relay's port, encryption policy and whether TLS is implicit, as
/// the settings give them (`port` the one in `--server HOST:PORT`).
fn relay_parts(s: &Settings, port: Option<u16>) -> (u16, TlsPolicy, bool) {
    let port = port.or(s.port).unwrap_or(587);
    let policy: TlsPolicy = s.tls.unwrap_or(TlsArg::Certified).into();
    (port, policy, s.implicit_tls || port == 465)
}

/// The route (`smtp_queue::MessageOptions::route`) of what `send --queue`
/// and `--merge` enqueue with these settings: the one the runner
/// [`queue_via`] builds takes (`smtp_queue::relay_route` of [`relay`]'s
/// server, or direct delivery's), found without reading the password
/// (`--queue-only` does not) or the CA file.
pub(crate) fn queue_route(s: &Settings) -> String {
    match &s.server {
        Some((host, port)) => {
            let (port, policy, implicit) = relay_parts(s, *port);
            smtp_queue::relay_route_for(host, port, s.user.as_deref(), policy, implicit)
        }
        None if s.mta_sts => smtp_queue::DIRECT_ROUTE.to_owned(),
        None => smtp_queue::DIRECT_ROUTE_WITHOUT_MTA_STS.to_owned(),
    }
}

/// The relay's settings for standard delivery (credentials included, from
/// the command line, the config file or the environment).
pub(crate) fn relay(
    s: &Settings,
    host: &str,
    port: Option<u16>,
    client_id: ClientId,
    verbose: bool,
) -> Result<Server, Failure> {
    let (port, policy, implicit) = relay_parts(s, port);
    let mut server = Server::new(host, port)
        .with_implicit_tls(implicit)
        .with_policy(policy)
        .with_trust(trust(s.ca_file.as_deref())?)
        .with_client_id(client_id)
        .with_auth(s.auth)
        .with_timeouts(s.timeouts)
        .with_transcript(verbose);
    server.credentials = s.credentials.clone();
    Ok(server)
}

/// What direct delivery needs: DNS, connections, options, and the
/// MTA-STS settings (None with `--mta-sts off`).
pub(crate) struct DirectParts {
    pub(crate) resolver: Arc<HickoryResolver>,
    pub(crate) connector: MxConnector,
    pub(crate) options: DirectOptions,
    pub(crate) mta_sts: Option<StsParts>,
}

/// Where MTA-STS policies are fetched from: the trust for the policy
/// host's certificate (the web PKI and `--ca-file`) and the HTTPS port.
pub(crate) struct StsParts {
    pub(crate) trust: Trust,
    pub(crate) port: u16,
}

impl DirectParts {
    /// The MTA-STS source over `cache`, unless it is off.
    pub(crate) fn mta_sts(
        &self,
        cache: Arc<dyn smtp_queue::mta_sts::PolicyCache>,
    ) -> Option<smtp_queue::mta_sts::MtaSts> {
        let sts = self.mta_sts.as_ref()?;
        Some(
            smtp_queue::mta_sts::MtaSts::new(self.resolver.clone(), sts.trust.clone(), cache)
                .with_port(sts.port),
        )
    }
}

/// The file `smtp send` (without a queue) caches MTA-STS policies in:
/// `$XDG_CACHE_HOME/smtp/mta-sts.json` (default `~/.cache`).
pub(crate) fn sts_cache_file() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".cache"))
        })?;
    Some(base.join("smtp").join("mta-sts.json"))
}

/// The cache of `smtp send` and `smtp mx`: the file, or none at all (each
/// policy fetched again) without a home directory to keep it in.
pub(crate) fn sts_cache() -> Arc<dyn smtp_queue::mta_sts::PolicyCache> {
    match sts_cache_file() {
        Some(path) => Arc::new(smtp_queue::mta_sts::FileCache::new(path)),
        None => Arc::new(NoCache),
    }
}

/// No cache.
struct NoCache;

#[async_trait::async_trait]
impl smtp_queue::mta_sts::PolicyCache for NoCache {
    async fn get(&self, _: &str) -> Option<smtp_core::delivery::mta_sts::InForce> {
        None
    }
    async fn put(&self, _: &smtp_core::delivery::mta_sts::InForce) {}
}

/// Direct delivery's parts from the settings (`--dns-server`, `--tls`,
/// `--ca-file`, timeouts), `--mx-port` and `--mta-sts`.
pub(crate) fn direct_parts(
    s: &Settings,
    client_id: ClientId,
    verbose: bool,
    mx_port: Option<u16>,
    sts: MtaStsArgs,
) -> Result<DirectParts, Failure> {
    if s.credentials.is_some() {
        return Err(Failure::usage(
            "--user is for standard delivery; add --server HOST",
        ));
    }
    let policy: TlsPolicy = s.tls.unwrap_or(TlsArg::Optional).into();
    let resolver = match &s.dns_server {
        Some(ns) => {
            let addr =
                HickoryResolver::parse_nameserver(ns).map_err(|e| Failure::usage(e.to_string()))?;
            HickoryResolver::with_nameserver(addr, Duration::from_secs(5))
        }
        None => HickoryResolver::system(),
    }
    .map_err(|e| Failure::config(format!("{e} (use --dns-server IP[:PORT])")))?;
    let trust = trust(s.ca_file.as_deref())?;
    let mta_sts = s.mta_sts.then(|| StsParts {
        trust: trust.clone(),
        port: sts.mta_sts_port.unwrap_or(443),
    });
    let connector = MxConnector::new(policy, trust, s.timeouts);
    let config = Config::new(client_id)
        .with_tls(policy)
        .with_timeouts(s.timeouts)
        .with_transcript(verbose);
    let mut options = DirectOptions::new(config);
    options.port = mx_port.unwrap_or(25);
    Ok(DirectParts {
        resolver: Arc::new(resolver),
        connector,
        options,
        mta_sts,
    })
}
