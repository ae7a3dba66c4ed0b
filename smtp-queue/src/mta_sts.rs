//! MTA-STS (RFC 8461) fetched and cached, for direct delivery: the
//! [`TlsPolicySource`] the runner (and `smtp send`'s direct path) deliver
//! under. The rules themselves are `smtp_core::delivery::mta_sts`'s; here
//! is the IO they need:
//!
//! - DNS: `_mta-sts.<domain>` TXT (and `_smtp._tls.<domain>` for TLS-RPT),
//!   the addresses of `mta-sts.<domain>`, through a [`RecordResolver`];
//! - HTTPS: `https://mta-sts.<domain>/.well-known/mta-sts.txt` with
//!   [`HttpsGet`]: the certificate verified for that name, 10 s, 64 KiB,
//!   `text/plain` required, redirects not followed;
//! - the cache: the queue's store ([`StoreCache`]) or a JSON file
//!   ([`FileCache`]). A cached policy stays in force until it expires when
//!   a refresh fails; a policy that is invalid (a bad version, over 64 KiB,
//!   …) is ignored with a warning.
//!
//! Each session's result under a policy is kept for TLS-RPT (RFC 8460):
//! [`MtaSts::flush`] counts them in the store.
//!
//! This lives in `smtp-queue` rather than `smtp-tls`: it needs DNS
//! (`smtp-dns`), HTTPS (`smtp-tls`) and a durable cache (the store), and
//! this is the crate that holds all three.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use smtp_core::delivery::direct::{TlsPolicySource, TlsSession};
use smtp_core::delivery::mta_sts::{
    self, DomainTls, InForce, Mode, PolicyFileError, Refresh, clamp_max_age, refresh,
};
use smtp_core::delivery::tls_rpt::{self, ResultType};
use smtp_dns::RecordResolver;
use smtp_tls::Trust;
use smtp_tls::https::{HttpsError, HttpsGet};

use crate::store::Store;
use crate::tls_report::TlsResult;

/// The path of the policy file.
pub const POLICY_PATH: &str = "/.well-known/mta-sts.txt";

/// Where policies are cached.
#[async_trait]
pub trait PolicyCache: Send + Sync {
    /// The policy cached for `domain`, expired or not.
    async fn get(&self, domain: &str) -> Option<InForce>;
    /// Caches `policy`, replacing the domain's last.
    async fn put(&self, policy: &InForce);
}

/// The queue's store as the cache.
pub struct StoreCache(pub Arc<dyn Store>);

#[async_trait]
impl PolicyCache for StoreCache {
    async fn get(&self, domain: &str) -> Option<InForce> {
        self.0
            .sts_policy(domain)
            .await
            .inspect_err(|e| tracing::warn!(domain, "MTA-STS cache: {e}"))
            .ok()
            .flatten()
    }

    async fn put(&self, policy: &InForce) {
        if let Err(e) = self.0.put_sts_policy(policy).await {
            tracing::warn!(domain = %policy.domain, "MTA-STS cache: {e}");
        }
    }
}

/// A JSON file as the cache (`smtp send` without a queue): one object,
/// domain → `{id, policy, fetched, expires}`. Kept to
/// [`FileCache::MAX_DOMAINS`] domains.
///
/// Several `smtp` processes share it: each change is a read, change and
/// rename under an exclusive lock on `<file>.lock`, so none loses
/// another's policies. Past the cap, expired policies go first, then the
/// oldest fetched of those not in `enforce`; an `enforce` policy still in
/// force is never pushed out (a new one is then not kept), so nobody can
/// flush a domain's protection by making this machine fetch many others.
pub struct FileCache {
    path: PathBuf,
    lock: tokio::sync::Mutex<()>,
}

impl FileCache {
    /// Domains kept at most.
    pub const MAX_DOMAINS: usize = 1000;

    /// A cache in `path` (created when first written).
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            lock: tokio::sync::Mutex::new(()),
        }
    }

    fn read(&self) -> BTreeMap<String, serde_json::Value> {
        std::fs::read(&self.path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// The lock on the cache among processes, held while it lives.
    fn lock_file(&self) -> std::io::Result<std::fs::File> {
        let mut options = std::fs::OpenOptions::new();
        options.read(true).write(true).create(true).truncate(false);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let file = options.open(self.path.with_extension("json.lock"))?;
        file.lock()?;
        Ok(file)
    }

    /// `all` cut to [`Self::MAX_DOMAINS`], keeping `kept` if it can.
    fn evict(all: &mut BTreeMap<String, serde_json::Value>, kept: &str, now: u64) {
        let expires = |v: &serde_json::Value| v["expires"].as_u64().unwrap_or(0);
        if all.len() > Self::MAX_DOMAINS {
            all.retain(|k, v| k == kept || expires(v) > now);
        }
        let enforced = |v: &serde_json::Value| {
            v["policy"]
                .as_str()
                .is_some_and(|p| p.lines().any(|l| l.trim() == "mode: enforce"))
        };
        while all.len() > Self::MAX_DOMAINS {
            let oldest = all
                .iter()
                .filter(|(k, v)| k.as_str() != kept && !enforced(v))
                .min_by_key(|(_, v)| v["fetched"].as_u64().unwrap_or(0))
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => {
                    all.remove(&k);
                }
                None => {
                    tracing::warn!(
                        domain = kept,
                        "MTA-STS cache full of enforce policies in force; this one is not kept"
                    );
                    all.remove(kept);
                }
            }
        }
    }
}

#[async_trait]
impl PolicyCache for FileCache {
    async fn get(&self, domain: &str) -> Option<InForce> {
        let _guard = self.lock.lock().await;
        let entry = self.read().remove(domain)?;
        let policy = mta_sts::policy::parse(entry["policy"].as_str()?.as_bytes()).ok()?;
        Some(InForce {
            domain: domain.to_owned(),
            id: entry["id"].as_str()?.to_owned(),
            policy,
            fetched_at: entry["fetched"].as_u64()?,
            expires_at: entry["expires"].as_u64()?,
            from_cache: true,
        })
    }

    async fn put(&self, p: &InForce) {
        let _guard = self.lock.lock().await;
        if let Some(dir) = self.path.parent() {
            // Private: which domains one mails is nobody else's business.
            let mut builder = std::fs::DirBuilder::new();
            builder.recursive(true);
            #[cfg(unix)]
            std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
            let _ = builder.create(dir);
        }
        let written = self.lock_file().and_then(|_lock| {
            let mut all = self.read();
            all.insert(
                p.domain.clone(),
                serde_json::json!({
                    "id": p.id,
                    "policy": p.policy.lines().join("\r\n"),
                    "fetched": p.fetched_at,
                    "expires": p.expires_at,
                }),
            );
            Self::evict(&mut all, &p.domain, p.fetched_at);
            let tmp = self
                .path
                .with_extension(format!("json.tmp.{}", std::process::id()));
            serde_json::to_vec(&all)
                .map_err(std::io::Error::other)
                .and_then(|bytes| write_private(&tmp, &bytes))
                .and_then(|()| std::fs::rename(&tmp, &self.path))
        });
        if let Err(e) = written {
            tracing::warn!(path = %self.path.display(), "MTA-STS cache not written: {e}");
        }
    }
}

/// Writes `bytes` to a new `path` readable by its owner only (0600).
fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let _ = std::fs::remove_file(path);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// MTA-STS policies for direct delivery: looked up, fetched, cached.
pub struct MtaSts {
    resolver: Arc<dyn RecordResolver>,
    https: HttpsGet,
    port: u16,
    cache: Arc<dyn PolicyCache>,
    results: Mutex<Vec<TlsResult>>,
}

impl MtaSts {
    /// Policies through `resolver`, fetched trusting `trust` (the web PKI
    /// roots and any extra anchors), cached in `cache`.
    pub fn new(
        resolver: Arc<dyn RecordResolver>,
        trust: Trust,
        cache: Arc<dyn PolicyCache>,
    ) -> Self {
        Self {
            resolver,
            https: HttpsGet::new(trust)
                .with_timeout(Duration::from_secs(10))
                .with_max_body(mta_sts::MAX_POLICY_SIZE),
            port: 443,
            cache,
            results: Mutex::new(Vec::new()),
        }
    }

    /// The HTTPS port policies are fetched from (443; tests use others).
    #[must_use]
    pub fn with_port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// Counts the session results heard since the last flush in `store`
    /// (TLS-RPT).
    pub async fn flush(&self, store: &dyn Store) -> crate::Result<()> {
        let results = std::mem::take(&mut *lock(&self.results));
        if results.is_empty() {
            return Ok(());
        }
        store.add_tls_results(&results, SystemTime::now()).await
    }

    /// The session results heard since the last flush, taken.
    pub fn take_results(&self) -> Vec<TlsResult> {
        std::mem::take(&mut *lock(&self.results))
    }

    fn note(&self, result: TlsResult) {
        let mut results = lock(&self.results);
        // Bounded: a runner flushes after each session.
        if results.len() < 100_000 {
            results.push(result);
        }
    }

    /// Fetches and parses `domain`'s policy.
    async fn fetch(&self, domain: &str) -> Result<mta_sts::Policy, (ResultType, String)> {
        let host = format!("mta-sts.{domain}");
        let fetch_error = |detail: String| (ResultType::StsPolicyFetchError, detail);
        let addrs = self
            .resolver
            .addresses(&host)
            .await
            .map_err(|e| fetch_error(format!("{host}: {e}")))?;
        let response = self
            .https
            .get(&host, &addrs, self.port, POLICY_PATH)
            .await
            .map_err(|e| match e {
                HttpsError::Tls { .. } => (ResultType::StsWebpkiInvalid, e.to_string()),
                HttpsError::TooLarge { .. } => (ResultType::StsPolicyInvalid, e.to_string()),
                e => fetch_error(e.to_string()),
            })?;
        if response.status != 200 {
            let redirect = if (300..400).contains(&response.status) {
                " (redirects are not followed, RFC 8461 section 3.3)"
            } else {
                ""
            };
            return Err(fetch_error(format!(
                "https://{host}{POLICY_PATH} answered {}{redirect}",
                response.status
            )));
        }
        let content_type = response.header("content-type").unwrap_or_default();
        let media = content_type.split(';').next().unwrap_or_default().trim();
        if !media.eq_ignore_ascii_case("text/plain") {
            return Err((
                ResultType::StsPolicyInvalid,
                format!("the policy's Content-Type is {content_type:?}, not text/plain"),
            ));
        }
        mta_sts::policy::parse(&response.body)
            .map_err(|e: PolicyFileError| (ResultType::StsPolicyInvalid, e.to_string()))
    }

    /// The TLS-RPT record of `domain`, for the log.
    async fn tls_rpt(&self, domain: &str) -> Option<tls_rpt::TlsRptRecord> {
        let txts = self
            .resolver
            .txt(&format!("_smtp._tls.{domain}"))
            .await
            .ok()?;
        tls_rpt::select(&txts)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[async_trait]
impl TlsPolicySource for MtaSts {
    async fn domain_tls(&self, domain: &str) -> DomainTls {
        let now = unix_now();
        let cached = self.cache.get(domain).await;
        let record = match self.resolver.txt(&format!("_mta-sts.{domain}")).await {
            Ok(txts) => mta_sts::record::select(&txts).ok(),
            Err(e) => {
                tracing::info!(domain, "MTA-STS TXT lookup failed: {e}");
                None
            }
        };
        let live = cached.filter(|c| c.expires_at > now);
        match refresh(live.as_ref(), record.as_ref(), now) {
            Refresh::NoPolicy => DomainTls::default(),
            Refresh::UseCached => DomainTls {
                mta_sts: live,
                problem: None,
            },
            Refresh::Fetch { id } => match self.fetch(domain).await {
                Ok(policy) => {
                    let fetched = InForce {
                        domain: domain.to_owned(),
                        id,
                        expires_at: now.saturating_add(clamp_max_age(policy.max_age)),
                        policy,
                        fetched_at: now,
                        from_cache: false,
                    };
                    self.cache.put(&fetched).await;
                    if let Some(rpt) = self.tls_rpt(domain).await {
                        tracing::info!(domain, rua = ?rpt.rua, "TLS-RPT reports requested");
                    }
                    DomainTls {
                        mta_sts: Some(fetched),
                        problem: None,
                    }
                }
                Err((kind, detail)) => {
                    let kept = live.as_ref().map_or("no policy".to_owned(), |p| {
                        format!("{} (cached)", p.label())
                    });
                    tracing::warn!(
                        domain,
                        "MTA-STS policy of {domain} ignored ({kind}): {detail}; delivering under {kept}"
                    );
                    self.note(TlsResult {
                        policy_domain: domain.to_owned(),
                        policy_type: if live.is_some() {
                            "sts"
                        } else {
                            "no-policy-found"
                        }
                        .to_owned(),
                        policy_string: live.as_ref().map(|p| p.policy.lines()).unwrap_or_default(),
                        mx_host: live
                            .as_ref()
                            .map(|p| p.policy.mx.iter().map(ToString::to_string).collect())
                            .unwrap_or_default(),
                        receiving_mx: String::new(),
                        sending_ip: None,
                        receiving_ip: None,
                        result: kind,
                        count: 1,
                    });
                    DomainTls {
                        mta_sts: live,
                        problem: Some((kind, detail)),
                    }
                }
            },
        }
    }

    fn session(&self, domain: &str, tls: &DomainTls, session: &TlsSession) {
        let Some(p) = &tls.mta_sts else { return };
        let (host, result) = (session.host.as_str(), session.result);
        if result != ResultType::Success && p.policy.mode == Mode::Testing {
            tracing::warn!(
                domain,
                host,
                "{} would refuse this session ({result}); delivered as testing allows",
                p.label()
            );
        }
        self.note(TlsResult {
            policy_domain: domain.to_owned(),
            policy_type: "sts".to_owned(),
            policy_string: p.policy.lines(),
            mx_host: p.policy.mx.iter().map(ToString::to_string).collect(),
            receiving_mx: host.to_owned(),
            sending_ip: session.sending_ip,
            receiving_ip: session.receiving_ip,
            result,
            count: 1,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn in_force(domain: &str, mode: &str, fetched_at: u64) -> InForce {
        let text = format!("version: STSv1\nmode: {mode}\nmx: *.{domain}\nmax_age: 86400\n");
        InForce {
            domain: domain.to_owned(),
            id: "1".to_owned(),
            policy: mta_sts::policy::parse(text.as_bytes()).unwrap(),
            fetched_at,
            expires_at: fetched_at + 86_400,
            from_cache: false,
        }
    }

    fn entry(p: &InForce) -> serde_json::Value {
        serde_json::json!({
            "id": p.id,
            "policy": p.policy.lines().join("\r\n"),
            "fetched": p.fetched_at,
            "expires": p.expires_at,
        })
    }

    /// Processes (here: caches on one file, each with its own in-process
    /// lock) writing at once lose none of each other's policies.
    #[test]
    fn caches_on_one_file_writing_at_once_keep_every_policy() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mta-sts.json");
        let threads: Vec<_> = (0..16)
            .map(|i| {
                let path = path.clone();
                std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .build()
                        .unwrap();
                    let cache = FileCache::new(path);
                    for j in 0..4 {
                        rt.block_on(cache.put(&in_force(&format!("d{i}-{j}.test"), "enforce", 10)));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let cache = FileCache::new(path);
        assert_eq!(cache.read().len(), 64);
        assert!(rt.block_on(cache.get("d15-3.test")).is_some());
    }

    /// Past the cap: expired first, then the oldest not in enforce; an
    /// enforce policy in force is never pushed out by newer ones.
    #[test]
    fn a_full_cache_never_pushes_out_an_enforce_policy_in_force() {
        let now = 1_000_000;
        let mut all = BTreeMap::new();
        let victim = in_force("victim.test", "enforce", now - 100);
        all.insert("victim.test".to_owned(), entry(&victim));
        for i in 0..FileCache::MAX_DOMAINS {
            let p = in_force(&format!("a{i}.test"), "enforce", now + i as u64);
            all.insert(p.domain.clone(), entry(&p));
        }
        FileCache::evict(&mut all, "a999.test", now + 999);
        assert_eq!(all.len(), FileCache::MAX_DOMAINS);
        assert!(all.contains_key("victim.test"), "the victim stays");
        assert!(!all.contains_key("a999.test"), "the newest is not kept");
        // A testing policy goes before any enforce one; an expired one first.
        let t = in_force("t.test", "testing", now - 50);
        all.insert("t.test".to_owned(), entry(&t));
        all.remove("a0.test");
        let mut expired = in_force("old.test", "enforce", 0);
        expired.expires_at = 1;
        all.insert("old.test".to_owned(), entry(&expired));
        let n = in_force("new.test", "testing", now + 2000);
        all.insert("new.test".to_owned(), entry(&n));
        FileCache::evict(&mut all, "new.test", now + 2000);
        assert_eq!(all.len(), FileCache::MAX_DOMAINS);
        assert!(!all.contains_key("old.test"));
        assert!(all.contains_key("new.test") && all.contains_key("victim.test"));
        let n2 = in_force("new2.test", "enforce", now + 3000);
        all.insert("new2.test".to_owned(), entry(&n2));
        FileCache::evict(&mut all, "new2.test", now + 3000);
        assert!(!all.contains_key("t.test"), "the testing policy went");
        assert!(all.contains_key("new2.test") && all.contains_key("victim.test"));
    }
}
