//! A throwaway PostgreSQL cluster for tests: `initdb` into a fresh
//! temporary directory, a server on a free port of 127.0.0.1 (and a Unix
//! socket in the same directory), stopped and removed on drop.
//!
//! ```text
//! Cluster::start()
//!   find initdb, postgres  (SMTP_TESTKIT_PG_BIN, else the newest /usr/lib/postgresql/*/bin)
//!   initdb -D <tmp>/data -U postgres -A trust        (as `postgres` when run as root)
//!   postgres -D <tmp>/data -p <port> -k <tmp> -c listen_addresses=127.0.0.1 …
//!        stdout and stderr → <tmp>/server.log
//!   wait until pg_isready says it accepts connections
//! cluster.create_database("t1") → postgres://postgres@127.0.0.1:<port>/t1
//! drop: SIGINT to the postmaster's PID (fast shutdown), wait, SIGKILL if
//!       it does not stop in time, remove <tmp>
//! ```
//!
//! [`Cluster::shared`] is one cluster for a whole test binary (each test
//! makes its own database, [`Cluster::fresh_database`]). A static is never
//! dropped, so a watcher process does the drop's work when the test
//! process exits, however it exits: it waits for the end of a pipe only
//! the test process holds, then stops the server by its PID and removes
//! the directory.
//!
//! It never skips: missing binaries, or a server that does not start, are
//! a panic that says what to install, with the server log's tail. The
//! system's own PostgreSQL service is never touched.
//!
//! `initdb` and `postgres` refuse to run as root; as root (CI), both run
//! as the `postgres` system user that Debian's `postgresql` package
//! creates (through `setpriv`), and the directory is given to that user.
//! Durability is off (`fsync=off`): a test cluster is thrown away.

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// How long the server gets to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a fast shutdown gets before the server is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// The superuser initdb creates.
const SUPERUSER: &str = "postgres";

const INSTALL: &str = "install PostgreSQL's server binaries (Debian/Ubuntu: `apt-get install postgresql`), \
     or point SMTP_TESTKIT_PG_BIN at the directory holding initdb and postgres";

/// A running throwaway cluster. See the [module docs](self).
#[derive(Debug)]
pub struct Cluster {
    /// The postmaster; `None` once stopped.
    server: Option<Child>,
    /// The temporary directory: `data/`, the socket, `server.log`.
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
    /// Run the binaries as this user (when we are root).
    run_as: Option<String>,
    /// The shared cluster's watcher and the pipe it waits on.
    watcher: Option<(Child, ChildStdin)>,
}

impl Cluster {
    /// Creates and starts a cluster. Panics, saying why and what to do,
    /// when PostgreSQL is not installed or the server does not start.
    pub fn start() -> Self {
        let bin = find_bin().unwrap_or_else(|| {
            panic!("smtp-testkit: no PostgreSQL server binaries found: {INSTALL}")
        });
        let run_as = is_root().then(|| SUPERUSER.to_owned());
        let dir = make_dir(run_as.as_deref());
        let mut cluster = Self {
            server: None,
            dir,
            bin,
            port: 0,
            run_as,
            watcher: None,
        };
        cluster.init();
        cluster.launch();
        cluster
    }

    /// One cluster for the whole test binary, started on first use and
    /// stopped (its directory removed) when the process exits.
    pub fn shared() -> &'static Self {
        static SHARED: OnceLock<Cluster> = OnceLock::new();
        SHARED.get_or_init(|| {
            let mut cluster = Self::start();
            cluster.watch();
            cluster
        })
    }

    /// A new database with a name no other call in this process gave;
    /// its URL.
    pub fn fresh_database(&self) -> String {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        self.create_database(&format!("t{}_{n}", std::process::id()))
    }

    /// Starts the watcher that stops the server once this process's end
    /// of its stdin closes (the process exited).
    fn watch(&mut self) {
        let Some(pid) = self.pid() else { return };
        let script = format!(
            "cat >/dev/null; kill -INT {pid} 2>/dev/null; i=0; \
             while kill -0 {pid} 2>/dev/null && [ $i -lt 200 ]; do sleep 0.1; i=$((i+1)); done; \
             kill -KILL {pid} 2>/dev/null; rm -rf '{}'",
            self.dir.display()
        );
        let mut child = Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("smtp-testkit: cannot start the cluster's watcher: {e}"));
        let Some(pipe) = child.stdin.take() else {
            panic!("smtp-testkit: the cluster's watcher has no stdin");
        };
        self.watcher = Some((child, pipe));
    }

    /// The port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory holding the data, the Unix socket and `server.log`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The postmaster's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.server.as_ref().map(Child::id)
    }

    /// The URL of database `name` (which [`create_database`](Self::create_database)
    /// makes), as the superuser over TCP on 127.0.0.1.
    pub fn url_of(&self, name: &str) -> String {
        format!("postgres://{SUPERUSER}@127.0.0.1:{}/{name}", self.port)
    }

    /// The URL of the `postgres` database, which always exists.
    pub fn url(&self) -> String {
        self.url_of("postgres")
    }

    /// Creates database `name` (letters, digits and `_`) and returns its
    /// URL. Panics if it cannot.
    pub fn create_database(&self, name: &str) -> String {
        assert!(
            !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
            "smtp-testkit: {name:?} is not a plain database name"
        );
        let out = Command::new(self.bin.join("createdb"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", SUPERUSER, name])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("smtp-testkit: running createdb failed: {e}: {INSTALL}"));
        assert!(
            out.status.success(),
            "smtp-testkit: createdb {name} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.url_of(name)
    }

    /// Stops the server (fast shutdown) and waits for it to exit.
    /// [`Drop`] does it too; calling it twice is harmless.
    pub fn stop(&mut self) {
        let Some(mut child) = self.server.take() else {
            return;
        };
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        let pid = rustix::process::Pid::from_raw(child.id() as i32);
        if let Some(pid) = pid {
            // SIGINT: "fast" shutdown, the clients are disconnected.
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::INT);
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            match child.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn log(&self) -> PathBuf {
        self.dir.join("server.log")
    }

    /// `program` from the binaries, run as the cluster's user.
    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        match &self.run_as {
            None => Command::new(path),
            Some(user) => {
                let mut c = Command::new("setpriv");
                c.arg(format!("--reuid={user}"))
                    .arg(format!("--regid={user}"))
                    .arg("--init-groups")
                    .arg("--")
                    .arg(path);
                c
            }
        }
    }

    fn init(&mut self) {
        let log = self.log_file();
        let status = self
            .command("initdb")
            .arg("-D")
            .arg(self.data())
            .args(["-U", SUPERUSER, "-A", "trust", "-E", "UTF8", "--no-sync"])
            .args(["--no-locale"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("a log file handle"))
            .stderr(log)
            .status();
        match status {
            Ok(s) if s.success() => {}
            Ok(s) => self.fail(&format!("initdb failed ({s})")),
            Err(e) => self.fail(&format!("initdb did not run ({e}); {INSTALL}")),
        }
    }

    fn launch(&mut self) {
        // A free port: bound, let go, then taken by the server. Another
        // process could take it between; then the start fails loudly.
        self.port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port on 127.0.0.1");
        self.serve();
    }

    /// Starts the server again after [`stop`](Self::stop), on the same
    /// port and data (an outage that ends); waits until it accepts
    /// connections. Does nothing while it runs.
    pub fn resume(&mut self) {
        if self.server.is_none() {
            self.serve();
        }
    }

    /// Runs the postmaster on `self.port` and waits until it accepts.
    fn serve(&mut self) {
        let log = self.log_file();
        let child = self
            .command("postgres")
            .arg("-D")
            .arg(self.data())
            .args(["-p", &self.port.to_string()])
            .arg("-k")
            .arg(&self.dir)
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
            .args(["-c", "full_page_writes=off", "-c", "max_connections=300"])
            .args(["-c", "shared_buffers=32MB"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("a log file handle"))
            .stderr(log)
            .spawn();
        match child {
            Ok(c) => self.server = Some(c),
            Err(e) => self.fail(&format!("postgres did not run ({e}); {INSTALL}")),
        }
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(Ok(Some(status))) = self.server.as_mut().map(Child::try_wait) {
                self.server = None;
                self.fail(&format!("the server exited at start ({status})"));
            }
            if self.accepts() {
                return;
            }
            if Instant::now() >= deadline {
                self.fail(&format!(
                    "the server did not accept connections within {START_TIMEOUT:?}"
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether the server accepts connections (pg_isready).
    fn accepts(&self) -> bool {
        Command::new(self.bin.join("pg_isready"))
            .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", SUPERUSER, "-d", "postgres"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    fn log_file(&self) -> fs::File {
        let file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log())
            .unwrap_or_else(|e| panic!("smtp-testkit: cannot create the server log: {e}"));
        if let Some(user) = &self.run_as {
            chown_to(&self.log(), user);
        }
        file
    }

    /// Panics with `what`, the log's tail and the advice; stops what runs.
    fn fail(&mut self, what: &str) -> ! {
        self.stop();
        let tail = tail(&self.log(), 4000);
        panic!(
            "smtp-testkit: the throwaway PostgreSQL cluster in {} did not start: {what}\n\
             --- server.log (tail) ---\n{tail}\n---\n\
             PostgreSQL is needed by these tests: {INSTALL}",
            self.dir.display()
        );
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// The directory of `initdb` and `postgres`: `SMTP_TESTKIT_PG_BIN`, else
/// the newest `/usr/lib/postgresql/<version>/bin`.
fn find_bin() -> Option<PathBuf> {
    let has_all = |d: &Path| {
        ["initdb", "postgres", "pg_isready", "createdb"]
            .iter()
            .all(|b| d.join(b).is_file())
    };
    if let Some(dir) = std::env::var_os("SMTP_TESTKIT_PG_BIN") {
        let dir = PathBuf::from(dir);
        return has_all(&dir).then_some(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v = e.file_name().to_str()?.split('.').next()?.parse().ok()?;
            let bin = e.path().join("bin");
            has_all(&bin).then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// A fresh temporary directory (given to `user`, if any).
fn make_dir(user: Option<&str>) -> PathBuf {
    let dir = tempfile::Builder::new()
        .prefix("smtp-testkit-pg-")
        .tempdir()
        .unwrap_or_else(|e| panic!("smtp-testkit: cannot create a temporary directory: {e}"))
        .keep();
    if let Some(user) = user {
        chown_to(&dir, user);
    }
    dir
}

/// Gives `path` to `user` (we are root).
fn chown_to(path: &Path, user: &str) {
    let (uid, gid) = user_ids(user).unwrap_or_else(|| {
        panic!(
            "smtp-testkit: running as root, PostgreSQL must run as the `{user}` user, \
             which does not exist: {INSTALL} (its package creates the user)"
        )
    });
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap_or_else(|e| {
        panic!(
            "smtp-testkit: cannot give {} to {user}: {e}",
            path.display()
        )
    });
}

/// `user`'s uid and gid, from /etc/passwd.
fn user_ids(user: &str) -> Option<(u32, u32)> {
    let passwd = fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let mut f = line.split(':');
        (f.next()? == user).then_some(())?;
        let _password = f.next()?;
        Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
    })
}

/// The last `max` bytes of `path`, as text.
fn tail(path: &Path, max: u64) -> String {
    let Ok(mut f) = fs::File::open(path) else {
        return "(no log)".into();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(max)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}
