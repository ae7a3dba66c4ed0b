//! Where a password comes from: an environment variable, a file, or a
//! command's output — never a command-line argument, which any user of the
//! machine can read.

use std::path::Path;
use std::process::Command;

use smtp_core::sasl::{Credentials, Secret};

use crate::cli::{AuthArg, LoginArgs};
use crate::fail::Failure;

/// The default environment variable.
pub(crate) const DEFAULT_ENV: &str = "SMTP_PASSWORD";

pub(crate) enum Source<'a> {
    Env(&'a str),
    File(&'a Path),
    Command(&'a str),
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or_default().to_owned()
}

/// Longest password read from the terminal, in bytes.
const MAX_TYPED: usize = 4096;

/// Asks for the password on the terminal that is standard input, the
/// question on standard error. While it is typed the terminal neither
/// echoes nor turns Ctrl-C into a signal (a signal would wait for the
/// read: the command's handlers run on its one thread): the keys are read
/// one by one, Backspace and Ctrl-U edit, Enter ends, Ctrl-C gives up
/// (exit 130) and Ctrl-D on an empty line means none. The terminal's
/// settings are put back whatever happens.
pub(crate) fn prompt(question: &str) -> Result<String, Failure> {
    use std::io::{Read, Write};
    use std::os::fd::AsFd;

    use rustix::termios::{LocalModes, OptionalActions, SpecialCodeIndex, tcgetattr, tcsetattr};
    let stdin = std::io::stdin();
    let fd = stdin.as_fd();
    let terminal = |e: rustix::io::Errno| {
        Failure::config(format!(
            "cannot turn off the terminal's echo to ask for the password ({e}); use \
             --password-env, --password-file or --password-command"
        ))
    };
    let saved = tcgetattr(fd).map_err(terminal)?;
    let mut quiet = saved.clone();
    quiet
        .local_modes
        .remove(LocalModes::ECHO | LocalModes::ICANON | LocalModes::ISIG);
    quiet.special_codes[SpecialCodeIndex::VMIN] = 1;
    quiet.special_codes[SpecialCodeIndex::VTIME] = 0;
    tcsetattr(fd, OptionalActions::Flush, &quiet).map_err(terminal)?;
    let mut err = std::io::stderr().lock();
    let _ = write!(err, "{}", crate::terminal::printable(question));
    let _ = err.flush();
    let mut typed: Vec<u8> = Vec::new();
    let mut key = [0u8; 1];
    let mut input = stdin.lock();
    let ended = loop {
        match input.read(&mut key) {
            Ok(0) => break Ok(()),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => break Err(Failure::config(format!("cannot read the password: {e}"))),
        }
        match key[0] {
            b'\r' | b'\n' => break Ok(()),
            // Ctrl-C.
            0x03 => {
                break Err(Failure::new(
                    crate::queue::EXIT_SIGINT,
                    "interrupted while the password was asked for",
                ));
            }
            // Ctrl-D.
            0x04 if typed.is_empty() => break Ok(()),
            // Backspace, DEL: one character (UTF-8) off.
            0x08 | 0x7f => while typed.pop().is_some_and(|b| b & 0xC0 == 0x80) {},
            // Ctrl-U: the whole line.
            0x15 => typed.clear(),
            b if typed.len() < MAX_TYPED => typed.push(b),
            _ => {}
        }
    };
    drop(input);
    let _ = tcsetattr(fd, OptionalActions::Now, &saved);
    let _ = writeln!(err);
    ended?;
    let password =
        String::from_utf8(typed).map_err(|_| Failure::config("the password typed is not UTF-8"))?;
    if password.is_empty() {
        return Err(Failure::config("no password given"));
    }
    Ok(password)
}

/// The password when no source is named: `SMTP_PASSWORD` when it is set,
/// else asked for on the terminal when standard input is one, else the
/// error that says how to give one.
pub(crate) fn read_default(user: &str, host: &str) -> Result<String, Failure> {
    use std::io::IsTerminal;
    if std::env::var_os(DEFAULT_ENV).is_none() && std::io::stdin().is_terminal() {
        return prompt(&format!("password for {user} at {host}: "));
    }
    read(Source::Env(DEFAULT_ENV))
}

/// Reads the secret. Errors name the source, never the secret.
pub(crate) fn read(source: Source<'_>) -> Result<String, Failure> {
    match source {
        Source::Env(var) => std::env::var(var).map_err(|_| {
            Failure::config(format!(
                "the password is taken from the environment variable {var}, which is not set; \
                 export it, or use --password-file / --password-command"
            ))
        }),
        Source::File(path) => std::fs::read_to_string(path)
            .map(|s| first_line(&s))
            .map_err(|e| {
                Failure::config(format!(
                    "cannot read the password file {}: {e}",
                    path.display()
                ))
            }),
        Source::Command(cmd) => {
            let out = Command::new("sh")
                .arg("-c")
                .arg(cmd)
                .output()
                .map_err(|e| Failure::config(format!("cannot run the password command: {e}")))?;
            if !out.status.success() {
                return Err(Failure::config(format!(
                    "the password command failed ({})",
                    out.status
                )));
            }
            Ok(first_line(&String::from_utf8_lossy(&out.stdout)))
        }
    }
}

impl LoginArgs {
    /// The password source the command line names, if any; two are a usage
    /// error rather than a silent choice.
    pub(crate) fn source(&self) -> Result<Option<Source<'_>>, Failure> {
        let given = [
            self.password_env.as_deref().map(Source::Env),
            self.password_file.as_deref().map(Source::File),
            self.password_command.as_deref().map(Source::Command),
        ];
        let mut given = given.into_iter().flatten();
        let first = given.next();
        if given.next().is_some() {
            return Err(Failure::usage(
                "give one of --password-env, --password-file and --password-command",
            ));
        }
        Ok(first)
    }
}

/// The credentials for `username` with `secret` (a token for XOAUTH2),
/// the secret registered so that nothing printed shows it — a server may
/// echo it back in a reply.
pub(crate) fn credentials(username: String, secret: String, auth: Option<AuthArg>) -> Credentials {
    crate::terminal::redact_secret(&username, &secret);
    if auth == Some(AuthArg::Xoauth2) {
        Credentials::OAuth2 {
            username,
            token: Secret::new(secret),
        }
    } else {
        Credentials::Password {
            username,
            password: Secret::new(secret),
        }
    }
}
