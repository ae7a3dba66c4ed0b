//! Real SMTP servers for the checker's tests, each in its own temporary
//! directory on a free 127.0.0.1 port: a throwaway Postfix (as
//! bench/queue/postfix.sh runs one: own config, queue and data
//! directories; needs root, which CI has; fails rather than skips when it
//! cannot start; stopped by its master's PID) and aiosmtpd (Debian's
//! python3-aiosmtpd, run by /usr/bin/python3).

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use smtp_testkit::certs::Identity;
use tokio::io::AsyncReadExt;

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

/// Writes the chain and key as PEM files: (cert, key).
pub(crate) fn write_identity(id: &Identity, dir: &Path) -> (PathBuf, PathBuf) {
    let cert: String = id
        .chain
        .iter()
        .map(|c| pem("CERTIFICATE", c.as_ref()))
        .collect();
    let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&c, cert).unwrap();
    std::fs::write(&k, pem("PRIVATE KEY", id.key.secret_der())).unwrap();
    (c, k)
}

pub(crate) fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Waits until the port greets with 220.
async fn wait_for_greeting(port: u16, what: &str, log: &Path) {
    for _ in 0..150 {
        if let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            let mut b = [0u8; 3];
            let read = tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut b)).await;
            if matches!(read, Ok(Ok(_))) && &b == b"220" {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "{what} did not start on 127.0.0.1:{port}:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

/// A throwaway Postfix; stopped (by its master's PID) when dropped.
pub(crate) struct Postfix {
    pub(crate) port: u16,
    dir: tempfile::TempDir,
}

/// How the throwaway Postfix is configured.
pub(crate) enum PostfixSetup {
    /// As an operator should: smtpd_forbid_bare_newline = yes (no
    /// exclusions), TLS with AUTH only inside it, VRFY disabled, relaying
    /// only to server.test.
    Hardened,
    /// The same, but Postfix 3.7's defaults for bare newlines and VRFY.
    Defaults,
}

impl Postfix {
    pub(crate) async fn start(id: &Identity, setup: PostfixSetup) -> Self {
        assert!(
            Path::new("/usr/sbin/postfix").exists(),
            "Postfix is not installed (apt-get install postfix)"
        );
        assert!(
            rustix::process::geteuid().is_root(),
            "Postfix's master must start as root: run these tests as root (CI does)"
        );
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for sub in ["etc", "queue", "data"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        let status = std::process::Command::new("chmod")
            .arg("755")
            .args([d, &d.join("etc"), &d.join("queue")])
            .status()
            .unwrap();
        assert!(status.success());
        let status = std::process::Command::new("chown")
            .arg("postfix")
            .arg(d.join("data"))
            .status()
            .unwrap();
        assert!(
            status.success(),
            "chown postfix: is the postfix user there?"
        );
        let (cert, key) = write_identity(id, &d.join("etc"));
        std::fs::write(d.join("etc/transport"), "server.test discard:\n").unwrap();
        let port = free_port();
        let hardening = match setup {
            PostfixSetup::Hardened => {
                "smtpd_forbid_bare_newline = yes\n\
                 smtpd_forbid_bare_newline_exclusions =\n\
                 disable_vrfy_command = yes\n"
            }
            PostfixSetup::Defaults => "",
        };
        let dir_s = d.display();
        std::fs::write(
            d.join("etc/main.cf"),
            format!(
                "compatibility_level = 3.6
queue_directory = {dir_s}/queue
data_directory = {dir_s}/data
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix-check.test
mydomain = postfix-check.test
myorigin = $myhostname
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
relay_domains = server.test
relay_recipient_maps =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.1/32
smtpd_relay_restrictions = permit_sasl_authenticated, reject_unauth_destination
smtpd_peername_lookup = no
transport_maps = texthash:{dir_s}/etc/transport
smtp_dns_support_level = disabled
smtpd_tls_security_level = may
smtpd_tls_cert_file = {cert}
smtpd_tls_key_file = {key}
smtpd_tls_auth_only = yes
biff = no
maillog_file_prefixes = {dir_s}
maillog_file = {dir_s}/maillog
{hardening}",
                cert = cert.display(),
                key = key.display(),
            ),
        )
        .unwrap();
        std::fs::write(
            d.join("etc/master.cf"),
            format!(
                "127.0.0.1:{port} inet n - n - - smtpd
pickup     unix  n - n 60   1 pickup
cleanup    unix  n - n -    0 cleanup
qmgr       unix  n - n 300  1 qmgr
tlsmgr     unix  - - n 1000? 1 tlsmgr
rewrite    unix  - - n -    - trivial-rewrite
bounce     unix  - - n -    0 bounce
defer      unix  - - n -    0 bounce
trace      unix  - - n -    0 bounce
verify     unix  - - n -    1 verify
flush      unix  n - n 1000? 0 flush
proxymap   unix  - - n -    - proxymap
proxywrite unix  - - n -    1 proxymap
smtp       unix  - - n -    - smtp
relay      unix  - - n -    - smtp
showq      unix  n - n -    - showq
error      unix  - - n -    - error
retry      unix  - - n -    - error
discard    unix  - - n -    - discard
anvil      unix  - - n -    1 anvil
scache     unix  - - n -    1 scache
postlog    unix-dgram n - n - 1 postlogd
"
            ),
        )
        .unwrap();
        let out = std::process::Command::new("/usr/sbin/postfix")
            .arg("-c")
            .arg(d.join("etc"))
            .arg("start")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "postfix start failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let pf = Self { port, dir };
        wait_for_greeting(port, "Postfix", &pf.dir.path().join("maillog")).await;
        pf
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("maillog")).unwrap_or_default()
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        let pid_file = self.dir.path().join("queue/pid/master.pid");
        let Some(pid) = std::fs::read_to_string(pid_file)
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
        else {
            return;
        };
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status();
        // Wait for the master (and its children) to go, or be a zombie.
        for _ in 0..100 {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            if stat.is_empty()
                || stat
                    .rsplit(')')
                    .next()
                    .is_some_and(|s| s.trim_start().starts_with('Z'))
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// aiosmtpd (Debian's python3-aiosmtpd) with STARTTLS, discarding mail
/// (its Sink handler); killed when dropped.
pub(crate) struct Aiosmtpd {
    pub(crate) port: u16,
    child: tokio::process::Child,
    _dir: tempfile::TempDir,
}

impl Aiosmtpd {
    pub(crate) async fn start(id: &Identity) -> Self {
        let python = "/usr/bin/python3";
        let ok = std::process::Command::new(python)
            .args(["-c", "import aiosmtpd"])
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            ok,
            "aiosmtpd is not installed (apt-get install python3-aiosmtpd)"
        );
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = write_identity(id, dir.path());
        let port = free_port();
        let log = dir.path().join("log");
        let child = tokio::process::Command::new(python)
            .args(["-m", "aiosmtpd", "-n", "-c", "aiosmtpd.handlers.Sink", "-l"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("--tlscert")
            .arg(&cert)
            .arg("--tlskey")
            .arg(&key)
            .arg("--no-requiretls")
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(dir.path().join("err")).unwrap())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        wait_for_greeting(port, "aiosmtpd", &dir.path().join("err")).await;
        Self {
            port,
            child,
            _dir: dir,
        }
    }
}

impl Drop for Aiosmtpd {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}
