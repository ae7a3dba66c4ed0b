//! Where a password comes from: an environment variable, a file, or a
//! command's output — never a command-line argument, which any user of the
//! machine can read.

use std::path::Path;
use std::process::Command;

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
