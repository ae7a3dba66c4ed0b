//! The throwaway PostgreSQL cluster: it starts, takes connections, and on
//! drop its server is gone and its directory removed; without PostgreSQL
//! it fails, saying what to install.

use std::process::{Command, Output};

use smtp_testkit::postgres::Cluster;

/// Runs `sql` through psql against `url`; its output, trimmed.
fn psql(url: &str, sql: &str) -> String {
    let bin = std::fs::read_dir("/usr/lib/postgresql")
        .unwrap()
        .map(|e| e.unwrap().path().join("bin/psql"))
        .find(|p| p.is_file())
        .expect("psql");
    let out = Command::new(bin)
        .args(["-X", "-A", "-t", "-c", sql, url])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Whether process `pid` exists.
fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// The real user id process `pid` runs as.
fn uid_of(pid: u32) -> u32 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|u| u.split_whitespace().next())
        .and_then(|u| u.parse().ok())
        .unwrap()
}

/// This test binary again, running only `test` (ignored ones too), with
/// `env` set, as `user` when given (we are root then).
fn rerun(test: &str, env: &[(&str, &str)], user: Option<&str>) -> Output {
    let exe = std::env::current_exe().unwrap();
    let mut cmd = match user {
        Some(user) => {
            let mut c = Command::new("setpriv");
            c.args([
                &format!("--reuid={user}"),
                "--regid=nogroup",
                "--clear-groups",
                "--",
            ])
            .arg(exe);
            c
        }
        None => Command::new(exe),
    };
    cmd.args(["--exact", test, "--include-ignored", "--nocapture"]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

#[test]
fn a_cluster_starts_takes_connections_and_is_gone_after_drop() {
    let cluster = Cluster::start();
    let pid = cluster.pid().expect("a running postmaster");
    let dir = cluster.dir().to_owned();
    assert!(alive(pid));
    assert!(dir.join("data/PG_VERSION").is_file());
    assert!(dir.join("server.log").is_file());
    assert_eq!(psql(&cluster.url(), "SELECT 1 + 1"), "2");
    let url = cluster.create_database("harness_check");
    assert!(
        url.ends_with(&format!(":{}/harness_check", cluster.port())),
        "{url}"
    );
    assert_eq!(psql(&url, "SELECT current_database()"), "harness_check");
    assert_eq!(
        psql(&url, "SHOW listen_addresses"),
        "127.0.0.1",
        "loopback only"
    );
    assert_ne!(uid_of(pid), 0, "postgres never runs as root");
    drop(cluster);
    assert!(!alive(pid), "the postmaster {pid} still runs");
    assert!(!dir.exists(), "{} is still there", dir.display());
}

#[test]
fn as_root_and_as_another_user_alike() {
    // Whoever runs the suite, the other way is run too: as root, the
    // harness test again as `nobody` (the binaries run directly); as
    // anyone else, the run above already was the direct way.
    if !rustix::process::geteuid().is_root() {
        return;
    }
    let out = rerun(
        "a_cluster_starts_takes_connections_and_is_gone_after_drop",
        &[],
        Some("nobody"),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("1 passed"),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
#[ignore = "run by without_postgres_it_fails_saying_what_to_install, with no binaries"]
fn start_a_cluster() {
    let _cluster = Cluster::start();
}

#[test]
fn without_postgres_it_fails_saying_what_to_install() {
    let out = rerun(
        "start_a_cluster",
        &[("SMTP_TESTKIT_PG_BIN", "/nonexistent/bin")],
        None,
    );
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("no PostgreSQL server binaries found")
            && text.contains("apt-get install postgresql"),
        "{text}"
    );
}

#[test]
fn two_clusters_run_side_by_side() {
    let a = Cluster::start();
    let b = Cluster::start();
    assert_ne!(a.port(), b.port());
    assert_eq!(psql(&a.url(), "SELECT 'a'"), "a");
    assert_eq!(psql(&b.url(), "SELECT 'b'"), "b");
}

#[test]
#[ignore = "run by the_shared_cluster_is_stopped_when_the_process_exits"]
fn use_the_shared_cluster() {
    let cluster = Cluster::shared();
    let url = cluster.fresh_database();
    assert_eq!(psql(&url, "SELECT 1"), "1");
    println!(
        "PID={} DIR={}",
        cluster.pid().unwrap(),
        cluster.dir().display()
    );
}

#[test]
fn the_shared_cluster_is_stopped_when_the_process_exits() {
    let out = rerun("use_the_shared_cluster", &[], None);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}");
    let line = text.lines().find(|l| l.starts_with("PID=")).expect(&text);
    let (pid, dir) = line
        .strip_prefix("PID=")
        .and_then(|l| l.split_once(" DIR="))
        .unwrap();
    let pid: u32 = pid.parse().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while (alive(pid) || std::path::Path::new(dir).exists()) && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(
        !alive(pid),
        "the shared postmaster {pid} outlived its process"
    );
    assert!(!std::path::Path::new(dir).exists(), "{dir} is still there");
}
