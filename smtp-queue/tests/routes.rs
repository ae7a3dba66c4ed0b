//! Routes: a message keeps how it is to be delivered (its relay account
//! and TLS policy, or direct delivery), and a runner claims only its own
//! route's messages (and route-less ones, enqueued before routes were
//! kept). Real sockets on 127.0.0.1 (testkit flaky servers, a testkit DNS
//! zone), the SQLite store in a temporary directory.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use smtp_core::TlsPolicy;
use smtp_core::delivery::{BodySource, MemoryBody};
use smtp_queue::rate::{Budget, Decision, Limit};
use smtp_queue::{
    Attempt, Backoff, Body, Claimed, DIRECT_ROUTE, DIRECT_ROUTE_WITHOUT_MTA_STS, Enqueued, Lease,
    ListFilter, MessageId, MessageInfo, MessageOptions, NewMessage, Outcome, RecipientId,
    RecipientState, RetryTarget, RouteWaiting, Runner, RunnerConfig, SlotLease, SqliteStore, Stats,
    Stop, Store, Throttle, relay_route,
};
use smtp_testkit::dns::{DnsServer, Zone};
use smtp_testkit::flaky::{FlakyConfig, FlakyServer};
use smtp_tls::Server;

mod common;
use common::fast;

fn relay(server: &FlakyServer) -> Server {
    Server::new("127.0.0.1", server.addr().port()).with_policy(TlsPolicy::None)
}

/// A message to `to` with subject `subject`, of `route` (none: as
/// enqueued before routes were kept).
fn message(to: &str, subject: &str, route: Option<&str>) -> NewMessage {
    let mut options = MessageOptions::default();
    options.route = route.map(str::to_owned);
    NewMessage {
        from: "sender@example.com".into(),
        to: vec![to.to_owned()],
        body: Body::Source(Box::new(MemoryBody::new(format!(
            "Subject: {subject}\r\n\r\n{subject}\r\n"
        )))),
        options,
    }
}

async fn store_with(dir: &std::path::Path, batch: Vec<NewMessage>) -> Arc<SqliteStore> {
    let store = Arc::new(SqliteStore::open(dir).await.unwrap());
    store.enqueue(batch, SystemTime::now()).await.unwrap();
    store
}

/// The subjects a server received, sorted.
fn subjects(server: &FlakyServer) -> Vec<String> {
    let mut out: Vec<String> = server
        .messages()
        .iter()
        .map(|m| {
            let text = String::from_utf8_lossy(&m.data).into_owned();
            text.lines()
                .find_map(|l| l.strip_prefix("Subject: "))
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn the_route_of_a_relay_names_its_account_and_policy_never_a_secret() {
    use smtp_core::sasl::{Credentials, Secret};
    let server = Server::new("SMTP.Example.COM", 587)
        .with_policy(TlsPolicy::Required)
        .with_credentials(Credentials::Password {
            username: "alice".into(),
            password: Secret::new("s3cret".to_owned()),
        });
    let route = relay_route(&server);
    assert_eq!(route, "relay:smtp.example.com:587:alice tls=required");
    assert!(!route.contains("s3cret"));
    let implicit = Server::new("smtp.example.com", 465)
        .with_implicit_tls(true)
        .with_policy(TlsPolicy::Certified);
    assert_eq!(
        relay_route(&implicit),
        "relay:smtp.example.com:465 tls=certified implicit"
    );
    assert_eq!(
        smtp_queue::relay_route_for(
            "SMTP.example.com",
            587,
            Some("alice"),
            TlsPolicy::Required,
            false
        ),
        route
    );
}

#[tokio::test]
async fn two_runners_with_different_relays_each_deliver_only_their_own_messages() {
    let dir = tempfile::tempdir().unwrap();
    let a = FlakyServer::start(FlakyConfig::default()).await.unwrap();
    let b = FlakyServer::start(FlakyConfig::default()).await.unwrap();
    let (route_a, route_b) = (relay_route(&relay(&a)), relay_route(&relay(&b)));
    assert_ne!(route_a, route_b);
    let store = store_with(
        dir.path(),
        vec![
            message("r1@example.net", "a1", Some(&route_a)),
            message("r2@example.net", "b1", Some(&route_b)),
            message("r3@example.net", "a2", Some(&route_a)),
            message("r4@example.net", "b2", Some(&route_b)),
            message("r5@example.net", "legacy", None),
        ],
    )
    .await;
    let config = || RunnerConfig::default().with_schedule(fast());
    let runner_a = Runner::new(store.clone(), relay(&a), config().with_worker("a"));
    assert_eq!(runner_a.route(), route_a);
    runner_a.run_due(&Stop::new()).await.unwrap();
    // A's own, and the route-less one any runner takes; B's wait for B.
    assert_eq!(subjects(&a), ["a1", "a2", "legacy"]);
    assert_eq!(runner_a.summary().delivered, 3);
    let stats = store.stats().await.unwrap();
    assert_eq!(stats.count(RecipientState::Queued), 2, "{stats:?}");
    // Nothing A may take is due; B's are.
    assert_eq!(store.next_due_for(Some(&route_a)).await.unwrap(), None);
    assert!(store.next_due_for(Some(&route_b)).await.unwrap().is_some());
    assert!(store.next_due().await.unwrap().is_some());
    let waiting = store.waiting_by_route(SystemTime::now()).await.unwrap();
    assert_eq!(waiting.len(), 1, "{waiting:?}");
    assert_eq!(waiting[0].route.as_deref(), Some(route_b.as_str()));
    assert_eq!(
        (waiting[0].messages, waiting[0].recipients, waiting[0].due),
        (2, 2, 2)
    );

    let runner_b = Runner::new(store.clone(), relay(&b), config().with_worker("b"));
    runner_b.run_due(&Stop::new()).await.unwrap();
    assert_eq!(subjects(&b), ["b1", "b2"]);
    assert_eq!(subjects(&a), ["a1", "a2", "legacy"], "A got nothing more");
    let stats = store.stats().await.unwrap();
    assert_eq!(stats.count(RecipientState::Delivered), 5, "{stats:?}");
    assert!(
        store
            .waiting_by_route(SystemTime::now())
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn the_same_relay_with_another_policy_or_user_is_another_route() {
    let dir = tempfile::tempdir().unwrap();
    let a = FlakyServer::start(FlakyConfig::default()).await.unwrap();
    // Enqueued for this very host and port, but to go over TLS.
    let required = relay_route(&relay(&a).with_policy(TlsPolicy::Required));
    let store = store_with(
        dir.path(),
        vec![message("r1@example.net", "tls", Some(&required))],
    )
    .await;
    let plaintext = Runner::new(store.clone(), relay(&a), RunnerConfig::default());
    plaintext.run_due(&Stop::new()).await.unwrap();
    assert!(a.messages().is_empty(), "a plaintext runner took it");
    assert_eq!(
        store.stats().await.unwrap().count(RecipientState::Queued),
        1
    );
    // A runner told its route takes it (a program that knows better).
    let told = Runner::new(
        store.clone(),
        relay(&a),
        RunnerConfig::default().with_route(required.clone()),
    );
    told.run_due(&Stop::new()).await.unwrap();
    assert_eq!(subjects(&a), ["tls"]);
}

#[tokio::test]
async fn direct_and_relay_runners_do_not_take_each_others_messages() {
    let dir = tempfile::tempdir().unwrap();
    // The MX of d.test is a flaky server on 127.0.0.1, as is the relay.
    let mx = FlakyServer::start(FlakyConfig::default()).await.unwrap();
    let relay_server = FlakyServer::start(FlakyConfig::default()).await.unwrap();
    let zone = Zone::new()
        .mx("d.test", 10, "mx.d.test")
        .a("mx.d.test", "127.0.0.1".parse().unwrap());
    let dns = DnsServer::start(zone).await.unwrap();
    let route = relay_route(&relay(&relay_server));
    let store = store_with(
        dir.path(),
        vec![
            message("x@d.test", "direct", Some(DIRECT_ROUTE_WITHOUT_MTA_STS)),
            message("y@d.test", "relayed", Some(&route)),
            message("w@d.test", "under MTA-STS", Some(DIRECT_ROUTE)),
        ],
    )
    .await;
    // A direct runner without MTA-STS: its own route only, never a message
    // enqueued to go under the domains' policies.
    let direct = direct_runner(store.clone(), &dns, mx.addr().port());
    assert_eq!(direct.route(), DIRECT_ROUTE_WITHOUT_MTA_STS);
    direct.run_due(&Stop::new()).await.unwrap();
    assert_eq!(subjects(&mx), ["direct"]);
    let relayed = Runner::new(store.clone(), relay(&relay_server), RunnerConfig::default());
    relayed.run_due(&Stop::new()).await.unwrap();
    assert_eq!(subjects(&relay_server), ["relayed"]);
    assert_eq!(subjects(&mx), ["direct"], "the MX got nothing more");
    assert_eq!(
        store.stats().await.unwrap().count(RecipientState::Queued),
        1,
        "the message under MTA-STS waits for a runner with it"
    );
    // And the other way round: a relay runner leaves a direct message.
    let dir = tempfile::tempdir().unwrap();
    let store = store_with(
        dir.path(),
        vec![message(
            "z@d.test",
            "direct2",
            Some(DIRECT_ROUTE_WITHOUT_MTA_STS),
        )],
    )
    .await;
    let relayed = Runner::new(store.clone(), relay(&relay_server), RunnerConfig::default());
    relayed.run_due(&Stop::new()).await.unwrap();
    assert_eq!(subjects(&relay_server), ["relayed"]);
    assert_eq!(
        store.stats().await.unwrap().count(RecipientState::Queued),
        1
    );
}

fn direct_runner(store: Arc<SqliteStore>, dns: &DnsServer, port: u16) -> Runner {
    use smtp_core::delivery::direct::DirectOptions;
    use smtp_core::ehlo::ClientId;
    use smtp_core::{Config, Timeouts};
    let resolver =
        smtp_dns::HickoryResolver::with_nameserver(dns.addr(), Duration::from_secs(2)).unwrap();
    let timeouts = Timeouts {
        connect: Duration::from_secs(2),
        ..Timeouts::default()
    };
    let connector = smtp_tls::MxConnector::new(TlsPolicy::None, smtp_tls::Trust::new(), timeouts);
    let client = Config::new(ClientId::parse("client.test").unwrap())
        .with_tls(TlsPolicy::None)
        .with_timeouts(timeouts);
    let mut options = DirectOptions::new(client);
    options.port = port;
    Runner::direct(
        store,
        Arc::new(resolver),
        Arc::new(connector),
        options,
        RunnerConfig::default().with_schedule(fast()),
    )
}

#[tokio::test]
async fn a_watching_runner_sleeps_while_only_other_routes_messages_are_due() {
    let dir = tempfile::tempdir().unwrap();
    let a = FlakyServer::start(FlakyConfig::default()).await.unwrap();
    let sqlite = store_with(
        dir.path(),
        vec![
            message(
                "r1@example.net",
                "other",
                Some("relay:127.0.0.1:1 tls=required"),
            ),
            message("r2@example.net", "other too", Some(DIRECT_ROUTE)),
        ],
    )
    .await;
    let store = Arc::new(Counting::new(sqlite.clone()));
    let runner = Runner::new(store.clone(), relay(&a), RunnerConfig::default());
    let stop = Stop::new();
    let stopper = stop.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        stopper.stop();
    });
    runner.watch(&stop).await.unwrap();
    // One round, then asleep: nothing of its route is due (a runner
    // woken by the others' due messages would claim every 50 ms, some 30
    // times here).
    let claims = store.claims.load(Ordering::SeqCst);
    assert!(claims <= 2, "{claims} claims in 1.5 s: the runner spins");
    assert!(a.messages().is_empty());
    assert_eq!(
        sqlite.stats().await.unwrap().count(RecipientState::Queued),
        2
    );
}

#[tokio::test]
async fn a_notification_goes_the_way_its_original_went() {
    let dir = tempfile::tempdir().unwrap();
    let route = "relay:smtp.example.com:587:alice tls=required";
    let mut routed = message("r1@example.net", "routed", Some(route));
    routed.options.notify_sender = true;
    let mut legacy = message("r2@example.net", "legacy", None);
    legacy.options.notify_sender = true;
    let store = store_with(dir.path(), vec![routed, legacy]).await;
    let now = SystemTime::now();
    for claimed in store
        .claim_due(now, 10, "w", Duration::from_secs(60))
        .await
        .unwrap()
    {
        let failed = Outcome::Failed(Attempt {
            code: Some(550),
            text: "no such user".into(),
            ..Attempt::default()
        });
        let id = claimed.recipients[0].id;
        store
            .record(&claimed.lease, vec![(id, failed)], now)
            .await
            .unwrap();
    }
    let reporter = smtp_queue::dsn::Reporter::new("client.example.org");
    let done = smtp_queue::enqueue_owed_via(store.as_ref(), &reporter, Some("direct"), now)
        .await
        .unwrap();
    assert_eq!(done.len(), 2);
    for n in done {
        let original = store.show(&n.message).await.unwrap();
        let notification = store.show(&n.notification).await.unwrap();
        let expected = original.options.route.as_deref().unwrap_or("direct");
        assert_eq!(notification.options.route.as_deref(), Some(expected));
    }
}

/// A store that counts the claims made of it, the rest as the SQLite store.
struct Counting {
    inner: Arc<SqliteStore>,
    claims: AtomicU64,
}

impl Counting {
    fn new(inner: Arc<SqliteStore>) -> Self {
        Self {
            inner,
            claims: AtomicU64::new(0),
        }
    }
}

#[async_trait]
impl Store for Counting {
    async fn enqueue(
        &self,
        batch: Vec<NewMessage>,
        now: SystemTime,
    ) -> smtp_queue::Result<Vec<MessageId>> {
        self.inner.enqueue(batch, now).await
    }
    async fn claim_due_spread(
        &self,
        route: Option<&str>,
        now: SystemTime,
        limit: u32,
        per_domain: Option<u32>,
        worker: &str,
        lease: Duration,
    ) -> smtp_queue::Result<Vec<Claimed>> {
        self.claims.fetch_add(1, Ordering::SeqCst);
        self.inner
            .claim_due_spread(route, now, limit, per_domain, worker, lease)
            .await
    }
    async fn renew(
        &self,
        lease: &Lease,
        until: SystemTime,
        now: SystemTime,
    ) -> smtp_queue::Result<Lease> {
        self.inner.renew(lease, until, now).await
    }
    async fn record(
        &self,
        lease: &Lease,
        outcomes: Vec<(RecipientId, Outcome)>,
        now: SystemTime,
    ) -> smtp_queue::Result<()> {
        self.inner.record(lease, outcomes, now).await
    }
    async fn release(
        &self,
        lease: &Lease,
        not_before: Option<SystemTime>,
        now: SystemTime,
    ) -> smtp_queue::Result<u64> {
        self.inner.release(lease, not_before, now).await
    }
    async fn open_body(&self, id: &MessageId) -> smtp_queue::Result<Box<dyn BodySource>> {
        self.inner.open_body(id).await
    }
    async fn list(&self, filter: &ListFilter) -> smtp_queue::Result<Vec<MessageInfo>> {
        self.inner.list(filter).await
    }
    async fn show(&self, id: &MessageId) -> smtp_queue::Result<MessageInfo> {
        self.inner.show(id).await
    }
    async fn retry(&self, target: RetryTarget, now: SystemTime) -> smtp_queue::Result<u64> {
        self.inner.retry(target, now).await
    }
    async fn delete(&self, id: &MessageId, now: SystemTime) -> smtp_queue::Result<()> {
        self.inner.delete(id, now).await
    }
    async fn purge_finished(&self, before: SystemTime) -> smtp_queue::Result<Vec<MessageId>> {
        self.inner.purge_finished(before).await
    }
    async fn stats(&self) -> smtp_queue::Result<Stats> {
        self.inner.stats().await
    }
    async fn next_due_for(&self, route: Option<&str>) -> smtp_queue::Result<Option<SystemTime>> {
        self.inner.next_due_for(route).await
    }
    async fn waiting_by_route(&self, now: SystemTime) -> smtp_queue::Result<Vec<RouteWaiting>> {
        self.inner.waiting_by_route(now).await
    }
    async fn set_backoff(
        &self,
        destination: &str,
        not_before: SystemTime,
        reason: &str,
        now: SystemTime,
    ) -> smtp_queue::Result<Backoff> {
        self.inner
            .set_backoff(destination, not_before, reason, now)
            .await
    }
    async fn backoff(&self, destination: &str) -> smtp_queue::Result<Option<Backoff>> {
        self.inner.backoff(destination).await
    }
    async fn clear_backoff(&self, destination: &str) -> smtp_queue::Result<()> {
        self.inner.clear_backoff(destination).await
    }
    async fn set_throttle(&self, throttle: &Throttle) -> smtp_queue::Result<()> {
        self.inner.set_throttle(throttle).await
    }
    async fn throttles(&self, only: Option<&[String]>) -> smtp_queue::Result<Vec<Throttle>> {
        self.inner.throttles(only).await
    }
    async fn clear_throttle(&self, destination: &str) -> smtp_queue::Result<()> {
        self.inner.clear_throttle(destination).await
    }
    async fn take_slot(
        &self,
        destination: &str,
        limit: u32,
        worker: &str,
        until: SystemTime,
        now: SystemTime,
    ) -> smtp_queue::Result<Option<SlotLease>> {
        self.inner
            .take_slot(destination, limit, worker, until, now)
            .await
    }
    async fn renew_slot(
        &self,
        slot: &SlotLease,
        until: SystemTime,
    ) -> smtp_queue::Result<Option<SlotLease>> {
        self.inner.renew_slot(slot, until).await
    }
    async fn release_slot(&self, slot: &SlotLease) -> smtp_queue::Result<bool> {
        self.inner.release_slot(slot).await
    }
    async fn slots(
        &self,
        destination: Option<&str>,
        now: SystemTime,
    ) -> smtp_queue::Result<Vec<SlotLease>> {
        self.inner.slots(destination, now).await
    }
    async fn owed_notifications(&self, limit: u32) -> smtp_queue::Result<Vec<MessageInfo>> {
        self.inner.owed_notifications(limit).await
    }
    async fn enqueue_notification(
        &self,
        of: &MessageId,
        notification: NewMessage,
        now: SystemTime,
    ) -> smtp_queue::Result<Option<MessageId>> {
        self.inner.enqueue_notification(of, notification, now).await
    }
    async fn take_budget(
        &self,
        key: &str,
        limits: &[Limit],
        cost: u32,
        now: SystemTime,
    ) -> smtp_queue::Result<Decision> {
        self.inner.take_budget(key, limits, cost, now).await
    }
    async fn budget(&self, key: &str) -> smtp_queue::Result<Option<Budget>> {
        self.inner.budget(key).await
    }
    async fn budgets(&self) -> smtp_queue::Result<Vec<Budget>> {
        self.inner.budgets().await
    }
    async fn remember_limits(
        &self,
        key: &str,
        limits: &[Limit],
        now: SystemTime,
    ) -> smtp_queue::Result<()> {
        self.inner.remember_limits(key, limits, now).await
    }
    async fn enqueue_once(
        &self,
        key: &str,
        batch: Vec<NewMessage>,
        now: SystemTime,
    ) -> smtp_queue::Result<Enqueued> {
        self.inner.enqueue_once(key, batch, now).await
    }
    async fn sts_policy(
        &self,
        domain: &str,
    ) -> smtp_queue::Result<Option<smtp_core::delivery::mta_sts::InForce>> {
        self.inner.sts_policy(domain).await
    }
    async fn put_sts_policy(
        &self,
        policy: &smtp_core::delivery::mta_sts::InForce,
    ) -> smtp_queue::Result<()> {
        self.inner.put_sts_policy(policy).await
    }
    async fn add_tls_results(
        &self,
        results: &[smtp_queue::tls_report::TlsResult],
        now: SystemTime,
    ) -> smtp_queue::Result<()> {
        self.inner.add_tls_results(results, now).await
    }
    async fn tls_results(
        &self,
        since: SystemTime,
        until: SystemTime,
        domain: Option<&str>,
    ) -> smtp_queue::Result<Vec<(SystemTime, smtp_queue::tls_report::TlsResult)>> {
        self.inner.tls_results(since, until, domain).await
    }
}
