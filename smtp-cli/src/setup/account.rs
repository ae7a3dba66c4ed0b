//! The account in the config file: its table, the confirmation, and the
//! file written in place (0600), other accounts and comments kept.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};

use crate::cli::SetupArgs;
use crate::config;
use crate::fail::Failure;

use super::*;

/// The account as the config file holds it.
pub(super) fn account_table(
    args: &SetupArgs,
    c: &Candidate,
    address: &str,
    user: Option<&String>,
    secret: Option<&str>,
) -> toml::Table {
    let mut t = toml::Table::new();
    t.insert("server".into(), c.host.clone().into());
    t.insert("port".into(), i64::from(c.port).into());
    t.insert("implicit_tls".into(), c.implicit_tls.into());
    t.insert("tls".into(), "certified".into());
    if let Some(ca) = &args.ca_file {
        let ca = std::path::absolute(ca).unwrap_or_else(|_| ca.clone());
        t.insert("ca_file".into(), ca.display().to_string().into());
    }
    if let Some(u) = user {
        t.insert("user".into(), u.clone().into());
    }
    t.insert("from".into(), address.into());
    if let Some(v) = args
        .login
        .auth
        .and_then(|a| clap::ValueEnum::to_possible_value(&a))
    {
        t.insert("auth".into(), v.get_name().into());
    }
    if user.is_some() {
        // --store-password is asked for explicitly: it wins over the
        // source the password came from.
        if let (true, Some(s)) = (args.store_password, secret) {
            t.insert("password".into(), s.into());
        } else if let Some(v) = &args.login.password_env {
            t.insert("password_env".into(), v.clone().into());
        } else if let Some(f) = &args.login.password_file {
            let f = std::path::absolute(f).unwrap_or_else(|_| f.clone());
            t.insert("password_file".into(), f.display().to_string().into());
        } else if let Some(cmd) = &args.login.password_command {
            t.insert("password_command".into(), cmd.clone().into());
        }
    }
    t
}

/// Asks on the terminal; without one, refuses (`--yes` is for scripts).
pub(super) fn confirm(question: &str) -> Result<bool, Failure> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return Err(Failure::usage(
            "nothing written: confirm on a terminal, or give --yes",
        ));
    }
    let mut err = std::io::stderr().lock();
    let _ = write!(err, "{question}");
    let _ = err.flush();
    let mut answer = String::new();
    stdin
        .lock()
        .read_line(&mut answer)
        .map_err(|e| Failure::io("reading the answer", &e))?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes" | "Yes"))
}

/// Puts `account` as `[accounts.NAME]` into the file at `path`: a new
/// account is appended as text, an existing one's lines replaced; the rest
/// of the file, comments included, stays as it is.
/// Other accounts are never touched. The file is written to a temporary
/// file of mode 0600 beside it and renamed over it.
pub(super) fn write_account(path: &Path, name: &str, account: toml::Table) -> Result<(), Failure> {
    let existing = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => {
            return Err(Failure::config(format!(
                "cannot read {}: {e}",
                path.display()
            )));
        }
    };
    let doc: toml::Table = toml::from_str(&existing)
        .map_err(|e| Failure::config(format!("{}: {e}; nothing written", path.display())))?;
    let has = doc
        .get("accounts")
        .and_then(toml::Value::as_table)
        .is_some_and(|a| a.contains_key(name));
    let text = if has {
        let mut expected = doc.clone();
        let accounts = expected
            .get_mut("accounts")
            .and_then(toml::Value::as_table_mut)
            .ok_or_else(|| {
                Failure::config(format!("{}: accounts is not a table", path.display()))
            })?;
        accounts.insert(name.to_owned(), account.clone().into());
        // The account's own lines replaced, the rest of the file (comments,
        // order) as it was; checked by reading it back. Where the account
        // is written some other way, the file is written anew.
        match replaced_in_place(&existing, name, &account)
            .filter(|t| toml::from_str::<toml::Table>(t).ok().as_ref() == Some(&expected))
        {
            Some(text) => text,
            None => {
                tell!(
                    "smtp: note: {} is written anew (its comments are not kept): account {name:?} \
                     is not a [accounts.NAME] table of its own",
                    path.display()
                );
                toml::to_string(&expected).map_err(|e| Failure::config(e.to_string()))?
            }
        }
    } else {
        let mut accounts = toml::Table::new();
        accounts.insert(name.to_owned(), account.into());
        let mut wrapper = toml::Table::new();
        wrapper.insert("accounts".into(), accounts.into());
        let added = toml::to_string(&wrapper).map_err(|e| Failure::config(e.to_string()))?;
        let mut text = existing.clone();
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        if !text.is_empty() {
            text.push('\n');
        }
        text.push_str(&added);
        text
    };
    // What `send` will read must parse as it reads it.
    toml::from_str::<config::File>(&text)
        .map_err(|e| Failure::config(format!("{}: {e}; nothing written", path.display())))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        create_private_dir(dir)?;
    }
    let tmp = temp_beside(path);
    let written = write_private(&tmp, text.as_bytes()).and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(Failure::io(&format!("writing {}", path.display()), &e));
    }
    Ok(())
}

/// `text` with the lines of table `[accounts.NAME]` (its header to the
/// next table header) replaced by `account`; `None` when there is not
/// exactly one such table.
pub(super) fn replaced_in_place(text: &str, name: &str, account: &toml::Table) -> Option<String> {
    let header_of = |line: &str| -> Option<Vec<String>> {
        let t = line.trim_start();
        if !t.starts_with('[') {
            return None;
        }
        // A header line parsed by TOML itself: its path of keys.
        let parsed: toml::Table = toml::from_str(&format!("{}\n", t.trim_end())).ok()?;
        let mut path = Vec::new();
        let mut table = &parsed;
        while let Some((key, value)) = table.iter().next() {
            path.push(key.clone());
            match value.as_table() {
                Some(t) if table.len() == 1 => table = t,
                _ => break,
            }
        }
        Some(path)
    };
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let headers: Vec<(usize, Vec<String>)> = lines
        .iter()
        .enumerate()
        .filter_map(|(i, l)| header_of(l).map(|p| (i, p)))
        .collect();
    let ours = |p: &Vec<String>| p.len() >= 2 && p[0] == "accounts" && p[1] == name;
    let mine: Vec<usize> = headers
        .iter()
        .filter(|(_, p)| ours(p))
        .map(|(i, _)| *i)
        .collect();
    let [start] = mine[..] else {
        return None;
    };
    let mut end = headers
        .iter()
        .map(|(i, _)| *i)
        .find(|i| *i > start)
        .unwrap_or(lines.len());
    // Comments and blank lines just above the next table are that table's.
    while end > start + 1 && {
        let l = lines[end - 1].trim();
        l.is_empty() || l.starts_with('#')
    } {
        end -= 1;
    }
    let mut wrapper = toml::Table::new();
    let mut accounts = toml::Table::new();
    accounts.insert(name.to_owned(), account.clone().into());
    wrapper.insert("accounts".into(), accounts.into());
    let new = toml::to_string(&wrapper).ok()?;
    let mut out: String = lines[..start].concat();
    out.push_str(&new);
    out.push_str(&lines[end..].concat());
    Some(out)
}

pub(super) fn temp_beside(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{}.tmp", std::process::id()));
    path.with_file_name(name)
}

#[cfg(unix)]
pub(super) fn create_private_dir(dir: &Path) -> Result<(), Failure> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| Failure::io(&format!("creating {}", dir.display()), &e))
}

#[cfg(not(unix))]
pub(super) fn create_private_dir(dir: &Path) -> Result<(), Failure> {
    std::fs::create_dir_all(dir)
        .map_err(|e| Failure::io(&format!("creating {}", dir.display()), &e))
}

#[cfg(unix)]
pub(super) fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(not(unix))]
pub(super) fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_account_is_appended_or_replaced_and_the_others_stay() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("config.toml");
        let account = |server: &str| {
            let mut t = toml::Table::new();
            t.insert("server".into(), server.into());
            t
        };
        write_account(&path, "work", account("a.example")).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(
            &path,
            format!("# mine\n{text}\n[accounts.home]\nserver = \"h.example\"\n"),
        )
        .unwrap();
        write_account(&path, "new", account("n.example")).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("# mine\n"), "{text}");
        std::fs::write(
            &path,
            std::fs::read_to_string(&path).unwrap().replace(
                "[accounts.home]",
                "# home's own note\n[accounts.home] # inline",
            ),
        )
        .unwrap();
        write_account(&path, "work", account("b.example")).unwrap();
        // Replaced in place: every comment and the order stay.
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("# mine\n"), "{text}");
        assert!(
            text.contains("# home's own note\n[accounts.home] # inline"),
            "{text}"
        );
        let order: Vec<usize> = ["[accounts.work]", "[accounts.home]", "[accounts.new]"]
            .iter()
            .map(|h| text.find(h).unwrap())
            .collect();
        assert!(order.is_sorted(), "{text}");
        let file: toml::Table = toml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let accounts = file["accounts"].as_table().unwrap();
        assert_eq!(accounts["work"]["server"].as_str(), Some("b.example"));
        assert_eq!(accounts["home"]["server"].as_str(), Some("h.example"));
        assert_eq!(accounts["new"]["server"].as_str(), Some("n.example"));
        assert_eq!(accounts.len(), 3);
        // A file `send` could not read is not written over.
        std::fs::write(&path, "[accounts.x]\nbogus = 1\n").unwrap();
        assert!(write_account(&path, "work", account("c.example")).is_err());
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "[accounts.x]\nbogus = 1\n"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(path.parent().unwrap()), 0o700);
        }
    }
}
