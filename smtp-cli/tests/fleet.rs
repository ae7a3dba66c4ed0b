//! A fleet of `smtp queue run --watch` workers on one PostgreSQL queue:
//! real processes of the built `smtp`, a throwaway PostgreSQL cluster
//! (`smtp_testkit::postgres`), the testkit's DNS server and capture
//! servers on 127.0.0.x as the domains' MX hosts (or as one relay).
//!
//! - the command line: `--queue postgres://…` for `send`, `queue migrate`,
//!   `list`, `stats`; a URL with a password refused without echoing it;
//! - three workers deliver every recipient exactly once, and `queue stats`
//!   tells the three apart;
//! - SIGKILLed workers (restarted) and a cut database connection: every
//!   recipient delivered, duplicates within what a crash may repeat, no
//!   lease left held;
//! - `--rate 600/minute` holds across three workers through one relay;
//! - a database outage (the cluster stopped, then started again) is said
//!   when it begins and when it ends, and what the worker held goes at
//!   once, not when its leases run out.
//!
//! Sizes: the fleet test delivers 2,000 messages over 200 domains (two
//! cores shared in CI); `SMTP_FLEET_MESSAGES` and `SMTP_FLEET_DOMAINS` set
//! the acceptance size (10000 and 1000).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime};

use smtp_core::delivery::MemoryBody;
use smtp_queue::{Body, MessageOptions, NewMessage, PgStore, Store};
use smtp_testkit::capture::{CaptureConfig, CaptureServer};
use smtp_testkit::dns::{DnsServer, Zone};
use smtp_testkit::flaky::{FlakyConfig, FlakyServer};
use smtp_testkit::postgres::Cluster;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `smtp` with `home` as HOME and XDG directories (no user config), no
/// password in the environment.
fn command(home: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_smtp"));
    c.args(args)
        .env_remove("SMTP_PASSWORD")
        .env_remove("PGPASSWORD")
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join("config"))
        .env("XDG_STATE_HOME", home.join("state"))
        .env("SMTP_LOG", "warn");
    c
}

fn smtp(home: &Path, args: &[&str]) -> Output {
    command(home, args).output().unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn json(out: &Output) -> serde_json::Value {
    assert_eq!(out.status.code(), Some(0), "{}", text(out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(out)))
}

/// Capture servers on 127.0.0.1 … 127.0.0.`n`, all on one port (direct
/// delivery's `--mx-port` is one for every MX host).
fn sinks(rt: &tokio::runtime::Runtime, n: u8) -> Vec<CaptureServer> {
    'again: for _ in 0..20 {
        let first = rt
            .block_on(CaptureServer::start(CaptureConfig::default()))
            .unwrap();
        let port = first.addr().port();
        let mut all = vec![first];
        for k in 2..=n {
            let addr = std::net::SocketAddr::from(([127, 0, 0, k], port));
            match rt.block_on(CaptureServer::start_on(addr, CaptureConfig::default())) {
                Ok(s) => all.push(s),
                // Taken on that address: another port for all.
                Err(_) => continue 'again,
            }
        }
        return all;
    }
    panic!("no port free on 127.0.0.1 to 127.0.0.{n}");
}

/// Each recipient address the sinks received, with how many times.
fn received(sinks: &[CaptureServer]) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for s in sinks {
        for m in s.messages() {
            for r in m.rcpt_to {
                *seen
                    .entry(r.trim_matches(['<', '>']).to_ascii_lowercase())
                    .or_insert(0) += 1;
            }
        }
    }
    seen
}

/// `n` one-recipient messages, recipient `u{i}@d{i % domains}.test`,
/// enqueued through the store (in batches) as `send --queue` would.
fn enqueue(rt: &tokio::runtime::Runtime, url: &str, n: usize, domains: usize) -> Vec<String> {
    let addresses: Vec<String> = (0..n)
        .map(|i| format!("u{i}@d{}.test", i % domains))
        .collect();
    rt.block_on(async {
        let store = PgStore::open(url).await.unwrap();
        for chunk in addresses.chunks(500) {
            let batch = chunk
                .iter()
                .map(|to| NewMessage {
                    from: "sender@example.com".into(),
                    to: vec![to.clone()],
                    body: Body::Source(Box::new(MemoryBody::new(format!(
                        "From: sender@example.com\r\nTo: {to}\r\nSubject: fleet\r\n\r\nfor {to}\r\n"
                    )))),
                    options: MessageOptions::default(),
                })
                .collect();
            store.enqueue(batch, SystemTime::now()).await.unwrap();
        }
        store.close().await;
    });
    addresses
}

/// A DNS zone: `d{i}.test` for `i < domains`, each with MX host
/// `mx{i % hosts}.test` at 127.0.0.`(i % hosts) + 1`.
fn zone(domains: usize, hosts: u8) -> Zone {
    let mut zone = Zone::new();
    for k in 0..hosts {
        zone = zone.a(
            &format!("mx{k}.test"),
            std::net::Ipv4Addr::new(127, 0, 0, k + 1),
        );
    }
    for i in 0..domains {
        let k = i % usize::from(hosts);
        zone = zone.mx(&format!("d{i}.test"), 10, &format!("mx{k}.test"));
    }
    zone
}

/// A running worker: `smtp queue run --watch`, its log in a file.
struct Worker {
    child: Child,
    log: PathBuf,
}

impl Worker {
    /// Starts one, its database sessions named `app` (PGAPPNAME).
    fn start(home: &Path, app: &str, args: &[&str]) -> Self {
        let log = home.join(format!("{app}-{}.log", now_ms()));
        let file = std::fs::File::create(&log).unwrap();
        let child = command(home, &[&["queue", "run", "--watch"], args].concat())
            .env("PGAPPNAME", app)
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap();
        Self { child, log }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, and the exit code.
    fn stop(mut self) -> Option<i32> {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "worker did not stop on SIGTERM: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

/// One SQL value from the queue's database.
fn sql_count(rt: &tokio::runtime::Runtime, url: &str, sql: &str) -> i64 {
    rt.block_on(async {
        let pool = sqlx::PgPool::connect(url).await.unwrap();
        let n: i64 = sqlx::query_scalar(sql).fetch_one(&pool).await.unwrap();
        pool.close().await;
        n
    })
}

/// Waits until no recipient is left but delivered (and the sinks saw
/// `n` distinct recipients), panicking with the workers' logs after
/// `timeout`.
fn wait_all_delivered(
    rt: &tokio::runtime::Runtime,
    url: &str,
    sinks: &[CaptureServer],
    n: usize,
    timeout: Duration,
    workers: &[&Worker],
) {
    let deadline = Instant::now() + timeout;
    loop {
        let left = sql_count(
            rt,
            url,
            "SELECT COUNT(*) FROM recipients WHERE state <> 'delivered'",
        );
        if left == 0 && received(sinks).len() >= n {
            return;
        }
        if Instant::now() > deadline {
            let logs: Vec<String> = workers.iter().map(|w| w.log()).collect();
            panic!(
                "{left} recipients not delivered after {timeout:?}; {} of {n} received\n{}",
                received(sinks).len(),
                logs.join("\n----\n")
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Direct delivery's worker flags for this fleet.
fn direct_args(url: &str, dns: &DnsServer, port: u16) -> Vec<String> {
    [
        "--queue",
        url,
        "--dns-server",
        &dns.addr().to_string(),
        "--mx-port",
        &port.to_string(),
        "--mta-sts",
        "off",
        "--retry-first",
        "1",
        "--claim",
        "50",
    ]
    .map(str::to_owned)
    .into()
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn the_queue_commands_take_a_postgres_url_and_never_echo_a_password() {
    let rt = runtime();
    let url = Cluster::shared().fresh_database();
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    // A password on the command line: refused before connecting, the
    // password nowhere in what is said.
    let with_password = url.replace("postgres@", "postgres:Sw0rdfish99@");
    for args in [
        vec!["queue", "stats", "--queue", &with_password],
        vec!["queue", "migrate", "--queue", &with_password],
    ] {
        let out = smtp(home, &args);
        assert_eq!(out.status.code(), Some(64), "{}", text(&out));
        let all = text(&out);
        assert!(!all.contains("Sw0rdfish99"), "{all}");
        assert!(
            all.contains("PGPASSWORD") && all.contains("~/.pgpass"),
            "{all}"
        );
        assert!(all.contains("postgres:***@"), "{all}");
    }
    // Nothing listening: said at once, with the reason (not a pool's
    // timeout 30 s later).
    let nobody = format!(
        "postgres://smtp@127.0.0.1:{}/q",
        smtp_testkit::closed_port()
    );
    let started = Instant::now();
    let out = smtp(home, &["queue", "stats", "--queue", &nobody]);
    assert_eq!(out.status.code(), Some(75), "{}", text(&out));
    assert!(text(&out).contains("refused"), "{}", text(&out));
    assert!(started.elapsed() < Duration::from_secs(20));
    // A reader before any schema: no queue there, said so (66).
    let out = smtp(home, &["queue", "list", "--queue", &url]);
    assert_eq!(out.status.code(), Some(66), "{}", text(&out));
    assert!(text(&out).contains("queue migrate"), "{}", text(&out));
    // `queue migrate` creates the schema, then finds it current.
    let m = json(&smtp(
        home,
        &["queue", "migrate", "--queue", &url, "--json"],
    ));
    assert_eq!(m["from"], serde_json::Value::Null, "{m}");
    assert_eq!(m["to"], smtp_queue::PG_SCHEMA_VERSION);
    assert_eq!(m["changed"], true);
    // A worker's first use of an empty database creates the schema.
    let empty = Cluster::shared().fresh_database();
    let out = smtp(
        home,
        &[
            "queue",
            "run",
            "--queue",
            &empty,
            "--server",
            "127.0.0.1:9",
            "--tls",
            "none",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let m = json(&smtp(
        home,
        &["queue", "migrate", "--queue", &empty, "--json"],
    ));
    assert_eq!(m["from"], smtp_queue::PG_SCHEMA_VERSION, "{m}");
    assert_eq!(m["changed"], false, "{m}");
    let out = smtp(home, &["queue", "migrate", "--queue", &url]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains(&format!(
            "the schema is current (version {})",
            smtp_queue::PG_SCHEMA_VERSION
        )),
        "{said}"
    );
    // `send --queue URL --queue-only`, then the queue read back.
    let msg = home.join("m.eml");
    std::fs::write(
        &msg,
        "From: a@example.com\r\nTo: b@example.net\r\nSubject: hi\r\n\r\nhello\r\n",
    )
    .unwrap();
    let queue_flag = format!("--queue={url}");
    let out = smtp(
        home,
        &[
            "send",
            &queue_flag,
            "--queue-only",
            "-t",
            msg.to_str().unwrap(),
            "--server",
            "127.0.0.1:9",
            "--tls",
            "none",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("queued 1 message"), "{said}");
    // The run line repeats the URL as given.
    assert!(said.contains(&format!("--queue {url}")), "{said}");
    let list = json(&smtp(home, &["queue", "list", "--queue", &url, "--json"]));
    let messages = list["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 1, "{list}");
    assert_eq!(messages[0]["recipients"][0]["address"], "b@example.net");
    // The config file's `queue` is the default queue, and may hold
    // the password (trust authentication ignores it; it is never said).
    std::fs::create_dir_all(home.join("config/smtp")).unwrap();
    let config = home.join("config/smtp/config.toml");
    std::fs::write(&config, format!("queue = \"{with_password}\"\n")).unwrap();
    std::fs::set_permissions(&config, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let stats = json(&smtp(home, &["queue", "stats", "--json"]));
    assert_eq!(stats["messages"], 1, "{stats}");
    assert_eq!(stats["workers"], serde_json::json!([]), "{stats}");
    // An older schema (version 2, before TLS-RPT counted addresses): a
    // worker refuses it and says to migrate; `queue migrate` upgrades it.
    let old = Cluster::shared().fresh_database();
    let out = smtp(home, &["queue", "migrate", "--queue", &old]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    rt.block_on(async {
        let pool = sqlx::PgPool::connect(&old).await.unwrap();
        for undo in [
            "ALTER TABLE tls_results DROP COLUMN sending_ip",
            "ALTER TABLE tls_results DROP COLUMN receiving_ip",
            "ALTER TABLE tls_results ADD PRIMARY KEY \
             (day, policy_domain, policy_type, policy_string, receiving_mx, result)",
            "DELETE FROM schema_version WHERE version > 2",
        ] {
            sqlx::query(undo).execute(&pool).await.unwrap();
        }
        pool.close().await;
    });
    let out = smtp(
        home,
        &[
            "queue",
            "run",
            "--queue",
            &old,
            "--server",
            "127.0.0.1:9",
            "--tls",
            "none",
        ],
    );
    assert_eq!(out.status.code(), Some(78), "{}", text(&out));
    assert!(text(&out).contains("smtp queue migrate"), "{}", text(&out));
    let m = json(&smtp(
        home,
        &["queue", "migrate", "--queue", &old, "--json"],
    ));
    assert_eq!(m["from"], 2, "{m}");
    assert_eq!(m["to"], smtp_queue::PG_SCHEMA_VERSION, "{m}");
    assert_eq!(m["changed"], true, "{m}");
    // A schema newer than this build: refused by workers and readers.
    rt.block_on(async {
        let pool = sqlx::PgPool::connect(&url).await.unwrap();
        sqlx::query("INSERT INTO schema_version (version) VALUES ($1)")
            .bind(smtp_queue::PG_SCHEMA_VERSION + 1)
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
    });
    for args in [
        vec!["queue", "stats"],
        vec!["queue", "run", "--server", "127.0.0.1:9", "--tls", "none"],
    ] {
        let out = smtp(home, &args);
        assert_eq!(out.status.code(), Some(78), "{}", text(&out));
        assert!(text(&out).contains("upgrade smtp"), "{}", text(&out));
        assert!(!text(&out).contains("Sw0rdfish99"), "{}", text(&out));
    }
}

/// Makes the shared cluster ask role `role` (new, owner of a new
/// database) for `password` over TCP (everyone else stays trusted);
/// returns the database's URL without a password.
fn password_role(rt: &tokio::runtime::Runtime, role: &str, password: &str) -> String {
    let cluster = Cluster::shared();
    let url = cluster.fresh_database();
    let hba = cluster.dir().join("data/pg_hba.conf");
    let rules = std::fs::read_to_string(&hba).unwrap();
    // The first matching line wins: this one goes before the trust lines.
    std::fs::write(
        &hba,
        format!("host all {role} 127.0.0.1/32 scram-sha-256\n{rules}"),
    )
    .unwrap();
    rt.block_on(async {
        let pool = sqlx::PgPool::connect(&cluster.url()).await.unwrap();
        let db = url.rsplit('/').next().unwrap();
        for sql in [
            format!("CREATE ROLE {role} LOGIN PASSWORD '{password}'"),
            format!("ALTER DATABASE {db} OWNER TO {role}"),
            format!("GRANT ALL ON SCHEMA public TO {role}"),
        ] {
            sqlx::query(&sql).execute(&pool).await.unwrap();
        }
        let _: bool = sqlx::query_scalar("SELECT pg_reload_conf()")
            .fetch_one(&pool)
            .await
            .unwrap();
        pool.close().await;
    });
    let url = url.replace("postgres@", &format!("{role}@"));
    // The reload is the postmaster's to do: wait until it asks.
    let deadline = Instant::now() + Duration::from_secs(10);
    while rt.block_on(sqlx::PgPool::connect(&url)).is_ok() {
        assert!(Instant::now() < deadline, "pg_hba.conf not reloaded");
        std::thread::sleep(Duration::from_millis(100));
    }
    url
}

#[test]
fn the_password_comes_from_pgpassword_the_password_file_or_the_config_file() {
    const PASSWORD: &str = "Pw-Secret-4711";
    let rt = runtime();
    let url = password_role(&rt, "fleetpw", PASSWORD);
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    let migrate = ["queue", "migrate", "--queue", url.as_str()];
    // None given: the server refuses the login, a setting to fix (78,
    // not a failure to retry), said with where a password can come from.
    let out = command(home, &migrate)
        .env("PGPASSFILE", home.join("none"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78), "{}", text(&out));
    assert!(text(&out).contains("fleetpw@127.0.0.1"), "{}", text(&out));
    assert!(
        text(&out).contains("refused the login") && text(&out).contains("PGPASSWORD"),
        "{}",
        text(&out)
    );
    // And says where it looked.
    assert!(
        text(&out).contains(&format!(
            "No password was found: none in the URL, PGPASSWORD unset, and no password file {}",
            home.join("none").display()
        )),
        "{}",
        text(&out)
    );
    // A wrong PGPASSWORD is named as what was tried.
    let out = command(home, &migrate)
        .env("PGPASSWORD", "Not-The-One-1234")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78), "{}", text(&out));
    assert!(
        text(&out).contains("The password tried was PGPASSWORD's"),
        "{}",
        text(&out)
    );
    assert!(!text(&out).contains("Not-The-One-1234"), "{}", text(&out));
    // PGPASSWORD.
    let out = command(home, &migrate)
        .env("PGPASSWORD", PASSWORD)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(!text(&out).contains(PASSWORD), "{}", text(&out));
    // The password file PGPASSFILE names (0600, as libpq wants it).
    let port = Cluster::shared().port();
    let pgpass = home.join("pgpass");
    std::fs::write(&pgpass, format!("127.0.0.1:{port}:*:fleetpw:{PASSWORD}\n")).unwrap();
    std::fs::set_permissions(&pgpass, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let out = command(home, &["queue", "stats", "--queue", &url])
        .env("PGPASSFILE", &pgpass)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // Readable by others, libpq's rule ignores it: the refusal says so.
    std::fs::set_permissions(&pgpass, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let out = command(home, &["queue", "stats", "--queue", &url])
        .env("PGPASSFILE", &pgpass)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78), "{}", text(&out));
    assert!(
        text(&out).contains("is mode 644, readable by others")
            && text(&out).contains(&format!("chmod 600 {}", pgpass.display())),
        "{}",
        text(&out)
    );
    assert!(!text(&out).contains(PASSWORD), "{}", text(&out));
    // The config file's URL, with the password; a wrong one is refused
    // without being said.
    let config = home.join("config.toml");
    for (password, code) in [(PASSWORD, 0), ("Wrong-Guess-0815", 78)] {
        let with = url.replace("fleetpw@", &format!("fleetpw:{password}@"));
        std::fs::write(&config, format!("queue = \"{with}\"\n")).unwrap();
        std::fs::set_permissions(&config, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        let out = command(
            home,
            &[
                "queue",
                "run",
                "--config",
                config.to_str().unwrap(),
                "--server",
                "127.0.0.1:9",
                "--tls",
                "none",
            ],
        )
        .env("PGPASSFILE", home.join("none"))
        .output()
        .unwrap();
        assert_eq!(out.status.code(), Some(code), "{}", text(&out));
        assert!(!text(&out).contains(password), "{}", text(&out));
        if code != 0 {
            assert!(text(&out).contains("fleetpw:***@"), "{}", text(&out));
            assert!(
                text(&out).contains("the one in the config file's queue URL"),
                "{}",
                text(&out)
            );
        }
    }
    // Every `smtp queue` command takes the config file's queue.
    let with = url.replace("fleetpw@", &format!("fleetpw:{PASSWORD}@"));
    std::fs::write(&config, format!("queue = \"{with}\"\n")).unwrap();
    let config = config.to_str().unwrap();
    for args in [
        &["queue", "stats", "--config", config][..],
        &["queue", "list", "--config", config],
        &["queue", "--config", config, "purge"],
        &["queue", "retry", "--all", "--config", config],
        &["queue", "migrate", "--config", config],
    ] {
        let out = command(home, args)
            .env("PGPASSFILE", home.join("none"))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", text(&out));
        assert!(!text(&out).contains(PASSWORD), "{}", text(&out));
    }
}

#[test]
fn three_workers_deliver_every_recipient_exactly_once_and_stats_tells_them_apart() {
    let n = env_or("SMTP_FLEET_MESSAGES", 2000);
    let domains = env_or("SMTP_FLEET_DOMAINS", 200);
    let rt = runtime();
    let url = Cluster::shared().fresh_database();
    let sinks = sinks(&rt, 8);
    let dns = rt.block_on(DnsServer::start(zone(domains, 8))).unwrap();
    let addresses = enqueue(&rt, &url, n, domains);
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    let args = direct_args(&url, &dns, sinks[0].addr().port());
    let started = Instant::now();
    let workers: Vec<Worker> = (0..3)
        .map(|i| Worker::start(home, &format!("fleet-{i}"), &strs(&args)))
        .collect();
    wait_all_delivered(
        &rt,
        &url,
        &sinks,
        n,
        Duration::from_secs(600),
        &workers.iter().collect::<Vec<_>>(),
    );
    eprintln!(
        "{n} messages over {domains} domains delivered by 3 workers in {:?}",
        started.elapsed()
    );
    let seen = received(&sinks);
    for a in &addresses {
        assert_eq!(
            seen.get(a),
            Some(&1),
            "{a} received {:?} times",
            seen.get(a)
        );
    }
    assert_eq!(seen.len(), n);
    // `queue stats`: the three, each by host and pid, none holding a
    // lease now.
    let stats = json(&smtp(home, &["queue", "stats", "--queue", &url, "--json"]));
    let listed = stats["workers"].as_array().unwrap();
    assert_eq!(listed.len(), 3, "{stats}");
    let mut pids: Vec<u64> = listed.iter().map(|w| w["pid"].as_u64().unwrap()).collect();
    pids.sort_unstable();
    let mut expected: Vec<u64> = workers.iter().map(|w| u64::from(w.pid())).collect();
    expected.sort_unstable();
    assert_eq!(pids, expected, "{stats}");
    for w in listed {
        let id = w["worker"].as_str().unwrap();
        assert!(id.ends_with(&format!(":{}", w["pid"])), "{w}");
        assert!(w["host"].as_str().is_some_and(|h| !h.is_empty()), "{w}");
        assert_eq!(w["leases"], 0, "{w}");
        assert!(w["last_heartbeat"].is_string(), "{w}");
    }
    // Every worker took a share.
    let by_worker = sql_count(
        &rt,
        &url,
        "SELECT COUNT(DISTINCT entry ->> 'worker') FROM outcome_log WHERE event = 'claimed'",
    );
    assert_eq!(by_worker, 3, "not all three workers claimed");
    let out = smtp(home, &["queue", "stats", "--queue", &url]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        said.lines().filter(|l| l.starts_with("worker ")).count(),
        3,
        "{said}"
    );
    for w in workers {
        assert_eq!(w.stop(), Some(0));
    }
    // A worker silent for two days, holding nothing, is counted, not
    // listed (each restart is a new one); --json still lists it.
    let two_days_ago = now_ms() - 2 * 24 * 3600 * 1000;
    sql_count(
        &rt,
        &url,
        &format!(
            "WITH w AS (UPDATE workers SET last_seen_ms = {two_days_ago}
             WHERE worker = (SELECT MIN(worker) FROM workers) RETURNING 1)
             SELECT COUNT(*) FROM w"
        ),
    );
    let out = smtp(home, &["queue", "stats", "--queue", &url]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        said.lines().filter(|l| l.starts_with("worker ")).count(),
        2,
        "{said}"
    );
    assert!(
        said.contains("1 more worker(s) silent for over a day, holding nothing"),
        "{said}"
    );
    let stats = json(&smtp(home, &["queue", "stats", "--queue", &url, "--json"]));
    assert_eq!(stats["workers"].as_array().unwrap().len(), 3, "{stats}");
}

#[test]
fn killed_workers_and_a_cut_connection_lose_nothing_and_duplicate_only_what_was_in_flight() {
    const CONCURRENCY: usize = 4;
    let n = env_or("SMTP_FLEET_FAULT_MESSAGES", 3000);
    let domains = n / 10;
    let rt = runtime();
    let url = Cluster::shared().fresh_database();
    let sinks = sinks(&rt, 8);
    let dns = rt.block_on(DnsServer::start(zone(domains, 8))).unwrap();
    let addresses = enqueue(&rt, &url, n, domains);
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    let mut args = direct_args(&url, &dns, sinks[0].addr().port());
    // A killed worker's leases run out in 5 s; each worker has at most
    // CONCURRENCY sessions, so a kill cuts off at most that many messages
    // between their data and the recording of their reply.
    let concurrency = CONCURRENCY.to_string();
    args.extend(["--lease", "5", "--concurrency", &concurrency].map(str::to_owned));
    let args = strs(&args);
    let mut killed = Worker::start(home, "fleet-killed", &args);
    let cut = Worker::start(home, "fleet-cut", &args);
    let steady = Worker::start(home, "fleet-steady", &args);
    let mut old_logs = Vec::new();
    let mut kills = 0;
    let mut cuts = 0;
    let deadline = Instant::now() + Duration::from_secs(600);
    // Kill at 15, 30 and 45 % delivered; cut the other's connections at 35 %.
    for (at, what) in [(15, "kill"), (30, "kill"), (35, "cut"), (45, "kill")] {
        while received(&sinks).len() * 100 < n * at {
            assert!(Instant::now() < deadline, "stuck before {at} %");
            std::thread::sleep(Duration::from_millis(20));
        }
        if what == "kill" {
            killed.kill();
            kills += 1;
            old_logs.push(killed.log());
            killed = Worker::start(home, "fleet-killed", &args);
        } else {
            let ended = sql_count(
                &rt,
                &url,
                "SELECT COUNT(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE application_name = 'fleet-cut') AS t",
            );
            assert!(ended >= 1, "no backend of the worker to cut");
            cuts += 1;
        }
    }
    wait_all_delivered(
        &rt,
        &url,
        &sinks,
        n,
        Duration::from_secs(600),
        &[&killed, &cut, &steady],
    );
    let seen = received(&sinks);
    for a in &addresses {
        assert!(seen.contains_key(a), "{a} never delivered");
    }
    let total: usize = seen.values().sum();
    let duplicates = total - n;
    eprintln!("{kills} kills, {cuts} cut: {duplicates} duplicates of {n}");
    assert!(
        duplicates <= (kills + cuts) * CONCURRENCY,
        "{duplicates} duplicates after {kills} kills and {cuts} cut connections of \
         workers of {CONCURRENCY} sessions"
    );
    // No lease left held, nothing but delivered.
    assert_eq!(
        sql_count(
            &rt,
            &url,
            "SELECT COUNT(*) FROM recipients WHERE state = 'delivering'"
        ),
        0
    );
    // The kills left leases that others took over once they ran out.
    let taken_over = sql_count(
        &rt,
        &url,
        "SELECT COUNT(*) FROM outcome_log WHERE event = 'claimed' \
         AND entry ->> 'from' = 'delivering'",
    );
    assert!(taken_over >= 1, "no lease was taken over after the kills");
    // The worker whose connections were cut kept working, and stops
    // cleanly; so do the others.
    let cut_log = cut.log();
    assert_eq!(cut.stop(), Some(0), "{cut_log}");
    assert_eq!(steady.stop(), Some(0));
    assert_eq!(killed.stop(), Some(0));
    // Every process that ran shows in `queue stats`.
    let stats = json(&smtp(home, &["queue", "stats", "--queue", &url, "--json"]));
    assert_eq!(
        stats["workers"].as_array().unwrap().len(),
        3 + kills,
        "{stats}"
    );
}

/// The most arrivals in any window of `width` (each window starting at
/// an arrival: the busiest one does).
fn busiest_window(at: &[SystemTime], width: Duration) -> usize {
    let mut end = 0;
    let mut most = 0;
    for (start, t) in at.iter().enumerate() {
        while end < at.len() && at[end] < *t + width {
            end += 1;
        }
        most = most.max(end - start);
    }
    most
}

#[test]
fn a_rate_of_600_a_minute_holds_across_three_workers_through_one_relay() {
    // More than 600 + 900 / 3 workers: a budget kept per worker would
    // send all of it within the first minute.
    const N: usize = 900;
    const RATE: usize = 600;
    // The documented burst: 1 unless --burst says otherwise; a window of
    // the period holds at most RATE + burst − 1 takes. Arrivals may lag
    // their takes unevenly, so the sinks are allowed the burst beyond.
    const BURST: usize = 1;
    let rt = runtime();
    let url = Cluster::shared().fresh_database();
    let relay = rt
        .block_on(CaptureServer::start(CaptureConfig::default()))
        .unwrap();
    enqueue(&rt, &url, N, 50);
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    let server = relay.addr().to_string();
    let rate = format!("{RATE}/minute");
    let args = [
        "--queue", &url, "--server", &server, "--tls", "none", "--rate", &rate,
    ];
    let workers: Vec<Worker> = (0..3)
        .map(|i| Worker::start(home, &format!("rated-{i}"), &args))
        .collect();
    // Just over a minute of sending: the first arrival, then 72 s.
    let first = Instant::now() + Duration::from_secs(60);
    while relay.messages().is_empty() {
        assert!(Instant::now() < first, "nothing arrived in a minute");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(72));
    for w in workers {
        assert_eq!(w.stop(), Some(0));
    }
    let mut at: Vec<SystemTime> = relay.messages().iter().map(|m| m.received_at).collect();
    at.sort();
    let span = at[at.len() - 1].duration_since(at[0]).unwrap_or_default();
    let most = busiest_window(&at, Duration::from_secs(60));
    eprintln!(
        "{} arrivals over {span:?}; the busiest minute held {most}",
        at.len()
    );
    assert!(span > Duration::from_secs(60), "sent for only {span:?}");
    assert!(
        most <= RATE + BURST,
        "{most} messages within one minute, over {RATE}/minute (burst {BURST})"
    );
    // The rate was used, not merely undershot: the three went at pace.
    assert!(most >= RATE * 8 / 10, "only {most} in the busiest minute");
    // Each recipient at most once.
    let seen = received(std::slice::from_ref(&relay));
    assert!(seen.values().all(|&k| k == 1), "a recipient twice");
}

/// Waits until `worker`'s log holds `text`, panicking with the log after
/// `timeout`.
fn wait_for_log(worker: &Worker, text: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while !worker.log().contains(text) {
        assert!(
            Instant::now() < deadline,
            "no {text:?} in the worker's log within {timeout:?}:\n{}",
            worker.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_database_outage_is_said_when_it_begins_and_ends_and_what_the_worker_held_goes_at_once() {
    let rt = runtime();
    // A cluster of its own: this test stops it.
    let mut cluster = Cluster::start();
    let url = cluster.create_database("outage");
    // One slow MX host for four domains: the worker's sessions are under
    // way, and its claim leased, when the database goes away.
    let mx = rt
        .block_on(FlakyServer::start(FlakyConfig {
            data_delay: Some(Duration::from_millis(300)),
            ..FlakyConfig::default()
        }))
        .unwrap();
    let mut zone = Zone::new().a("mx.test", "127.0.0.1".parse().unwrap());
    for d in 0..4 {
        zone = zone.mx(&format!("d{d}.test"), 10, "mx.test");
    }
    let dns = rt.block_on(DnsServer::start(zone)).unwrap();
    let addresses = enqueue(&rt, &url, 20, 4);
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    let args = direct_args(&url, &dns, mx.addr().port());
    let worker = Worker::start(home, "outage", &strs(&args));
    let deadline = Instant::now() + Duration::from_secs(60);
    while mx.messages().is_empty() {
        assert!(Instant::now() < deadline, "nothing sent: {}", worker.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    // The server goes away mid-round: said once, when an operation has
    // waited its 30 s for a connection, not at every try after.
    cluster.stop();
    wait_for_log(
        &worker,
        "the queue's database failed",
        Duration::from_secs(90),
    );
    cluster.resume();
    wait_for_log(
        &worker,
        "the queue's database answers again",
        Duration::from_secs(90),
    );
    let log = worker.log();
    assert_eq!(
        log.matches("the queue's database failed").count(),
        1,
        "{log}"
    );
    // What the round held was released at once (released=N, N > 0), not
    // left to its 300 s leases: everything is delivered well before.
    let released = log
        .split("released=")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse::<u64>().ok());
    assert!(released.is_some_and(|n| n > 0), "{log}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = sql_count(
            &rt,
            &url,
            "SELECT COUNT(*) FROM recipients WHERE state <> 'delivered'",
        );
        if left == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{left} not delivered 60 s after the database came back:\n{}",
            worker.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Each recipient arrived; those whose reply came while the database
    // was away twice at most (delivered, not recorded: sent again).
    let mut seen: HashMap<String, usize> = HashMap::new();
    for m in mx.messages() {
        for r in m.rcpt_to {
            *seen
                .entry(r.trim_matches(['<', '>']).to_owned())
                .or_default() += 1;
        }
    }
    for a in &addresses {
        assert!(matches!(seen.get(a), Some(1 | 2)), "{a}: {:?}", seen.get(a));
    }
    // Released, not taken over after their leases ran out.
    assert_eq!(
        sql_count(
            &rt,
            &url,
            "SELECT COUNT(*) FROM outcome_log WHERE event = 'claimed' \
             AND entry ->> 'from' = 'delivering'",
        ),
        0
    );
    assert_eq!(worker.stop(), Some(0));
}
