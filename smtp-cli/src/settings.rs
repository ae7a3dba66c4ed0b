//! `smtp send`'s settings: the options, with the account's filled in where
//! they are silent — and the account's secrets only for its own server.

use std::path::PathBuf;
use std::time::Duration;

use smtp_core::Timeouts;
use smtp_core::sasl::{AuthChoice, Credentials, Mechanism};

use crate::cli::{AuthArg, SendArgs, TlsArg};
use crate::config::{self, Account};
use crate::dkim;
use crate::fail::Failure;
use crate::secrets::{self, Source};
use crate::send::hostname;

/// The SASL choice an `--auth` value stands for.
pub(crate) fn mechanism(a: AuthArg) -> AuthChoice {
    match a {
        AuthArg::Auto => AuthChoice::Auto,
        AuthArg::Plain => AuthChoice::Explicit(Mechanism::Plain),
        AuthArg::Login => AuthChoice::Explicit(Mechanism::Login),
        AuthArg::CramMd5 => AuthChoice::Explicit(Mechanism::CramMd5),
        AuthArg::Xoauth2 => AuthChoice::Explicit(Mechanism::XOAuth2),
        AuthArg::ScramSha256 => AuthChoice::Explicit(Mechanism::ScramSha256),
    }
}

/// Options with the account's settings filled in where the options are silent.
pub(crate) struct Settings {
    pub(crate) server: Option<(String, Option<u16>)>,
    pub(crate) port: Option<u16>,
    pub(crate) tls: Option<TlsArg>,
    pub(crate) implicit_tls: bool,
    pub(crate) ca_file: Option<PathBuf>,
    pub(crate) credentials: Option<Credentials>,
    /// The user name AUTH is sent with (the command line's, else the
    /// account's), also when the password was not read (`send
    /// --queue-only`): it names the relay account's rate budget and is
    /// part of the queue's route.
    pub(crate) user: Option<String>,
    pub(crate) auth: AuthChoice,
    pub(crate) helo: String,
    /// The sender's address (from `--from` or the account), without any
    /// display name; `from_name` holds the name given with it.
    pub(crate) from: Option<String>,
    pub(crate) from_name: Option<String>,
    pub(crate) dns_server: Option<String>,
    pub(crate) timeouts: Timeouts,
    /// DKIM signing, when asked for (the key is read by `smtp send` only).
    pub(crate) dkim: Option<dkim::Options>,
    /// The account's rate limits and burst (`--rate` and `--burst` win).
    pub(crate) rate: (Vec<String>, Option<u32>),
    /// Direct delivery honours MTA-STS (`--mta-sts`, else the account's).
    pub(crate) mta_sts: bool,
}

/// `Name <addr>`, `"Name" <addr>`, `<addr>` or `addr`: the display name
/// (if any) and the address.
fn split_display_name(text: &str) -> Result<(Option<String>, String), Failure> {
    let text = text.trim();
    let Some((name, rest)) = text.split_once('<') else {
        return Ok((None, text.to_owned()));
    };
    let address = rest
        .strip_suffix('>')
        .ok_or_else(|| Failure::data(format!("sender {text:?}: a '<' without its closing '>'")))?;
    let name = name.trim().trim_matches('"').trim();
    Ok((
        (!name.is_empty()).then(|| name.to_owned()),
        address.trim().to_owned(),
    ))
}

pub(crate) fn split_server(s: &str) -> Result<(String, Option<u16>), Failure> {
    // [v6]:port, host:port, host
    if let Some(rest) = s.strip_prefix('[') {
        let (host, tail) = rest
            .split_once(']')
            .ok_or_else(|| Failure::usage(format!("--server {s}: missing ]")))?;
        let port = tail
            .strip_prefix(':')
            .map(str::parse)
            .transpose()
            .map_err(|_| Failure::usage(format!("--server {s}: bad port")))?;
        return Ok((host.to_owned(), port));
    }
    match s.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => {
            let port = p
                .parse()
                .map_err(|_| Failure::usage(format!("--server {s}: {p:?} is not a port")))?;
            Ok((h.to_owned(), Some(port)))
        }
        _ => Ok((s.to_owned(), None)),
    }
}

/// Whether an account's secrets may go to the destination: only when it is
/// the account's own server, the same host and port (the port defaulting as
/// a send does). Otherwise, why not, in words for a note.
fn secrets_stay(
    own: Option<&(String, Option<u16>)>,
    destination: Option<&(String, Option<u16>)>,
    port_option: Option<u16>,
    account_port: Option<u16>,
) -> Result<(), String> {
    let Some((own_host, own_port)) = own else {
        return Err("the account names no server of its own".into());
    };
    let own_port = own_port.or(account_port).unwrap_or(587);
    let Some((host, port)) = destination else {
        return Err("they are not for direct delivery".into());
    };
    let port = port.or(port_option).or(account_port).unwrap_or(587);
    if own_host.eq_ignore_ascii_case(host) && own_port == port {
        Ok(())
    } else {
        Err(format!(
            "they are for {own_host}:{own_port}, and this send goes to {host}:{port}"
        ))
    }
}

pub(crate) fn settings(args: &SendArgs) -> Result<Settings, Failure> {
    settings_with(args, true)
}

/// [`settings`], the password read only when `read_secret` (`send --queue
/// --queue-only` sends nothing: the `queue run` that delivers reads it, and
/// the program that enqueues need not be able to).
pub(crate) fn settings_with(args: &SendArgs, read_secret: bool) -> Result<Settings, Failure> {
    let command_line_source = args.login.source()?;
    if let (Some(port), Some(server)) = (args.port, &args.server)
        && let (_, Some(in_server)) = split_server(server)?
        && in_server != port
    {
        return Err(Failure::usage(format!(
            "--server {server} and --port {port} name two ports; give one"
        )));
    }
    let account =
        config::load(args.config.as_deref(), args.account.as_deref())?.unwrap_or_default();
    let Account {
        server,
        port,
        tls,
        implicit_tls,
        ca_file,
        user,
        password,
        password_env,
        password_file,
        password_command,
        auth,
        helo,
        from,
        dns_server,
        dkim_key,
        dkim_selector,
        dkim_domain,
        dkim_canonicalization,
        rate,
        burst,
        mta_sts,
    } = account;
    let dkim = dkim::options(
        args,
        dkim::AccountDkim {
            key: dkim_key,
            selector: dkim_selector,
            domain: dkim_domain,
            canonicalization: dkim_canonicalization,
        },
    )?;
    let own_server = server.as_deref().map(split_server).transpose()?;
    let server = match &args.server {
        Some(s) => Some(split_server(s)?),
        None => own_server.clone(),
    };
    // The account's secrets go to the account's own server only: a
    // --server or --port naming another destination must not receive them.
    let account_secrets = user.is_some()
        || password.is_some()
        || password_env.is_some()
        || password_file.is_some()
        || password_command.is_some();
    let (user, password, password_env, password_file, password_command) =
        match secrets_stay(own_server.as_ref(), server.as_ref(), args.port, port) {
            Ok(()) => (
                user,
                password,
                password_env,
                password_file,
                password_command,
            ),
            Err(note) => {
                if account_secrets {
                    let then = if args.login.user.is_some() {
                        "the --user given is used instead"
                    } else {
                        "no AUTH is sent"
                    };
                    tell!("note: the account's credentials were not used: {note}; {then}");
                }
                (None, None, None, None, None)
            }
        };
    let user = args.login.user.clone().or(user);
    let user_name = user.clone();
    let credentials = match user {
        None => None,
        Some(_) if !read_secret => None,
        // The command line's source, then the account's, then SMTP_PASSWORD.
        Some(username) => {
            let secret = match command_line_source {
                Some(source) => secrets::read(source)?,
                None => match password {
                    Some(p) => p,
                    None => match password_env
                        .as_deref()
                        .map(Source::Env)
                        .or(password_file.as_deref().map(Source::File))
                        .or(password_command.as_deref().map(Source::Command))
                    {
                        Some(source) => secrets::read(source)?,
                        // SMTP_PASSWORD, else asked for on a terminal.
                        None => secrets::read_default(
                            &username,
                            server.as_ref().map_or("the server", |(h, _)| h.as_str()),
                        )?,
                    },
                },
            };
            Some(secrets::credentials(
                username,
                secret,
                args.login.auth.or(auth),
            ))
        }
    };
    let mut timeouts = Timeouts::default();
    if let Some(s) = args.connect_timeout {
        timeouts.connect = Duration::from_secs(s);
        timeouts.tls_handshake = Duration::from_secs(s);
    }
    if let Some(s) = args.command_timeout {
        let t = Duration::from_secs(s);
        let (connect, quit) = (timeouts.connect, timeouts.quit);
        timeouts = Timeouts::uniform(t);
        timeouts.connect = connect;
        timeouts.quit = quit.min(t);
    }
    // "Alice <alice@example.org>" and "<alice@example.org>" are senders
    // too: the address goes in the envelope, the name in a composed From:.
    let sender = args
        .from
        .clone()
        .or(from)
        .map(|f| split_display_name(&f))
        .transpose()?;
    Ok(Settings {
        server,
        port: args.port.or(port),
        tls: args.tls.or(tls),
        implicit_tls: args.implicit_tls || implicit_tls.unwrap_or(false),
        ca_file: args.ca_file.clone().or(ca_file),
        credentials,
        user: user_name,
        auth: mechanism(args.login.auth.or(auth).unwrap_or(AuthArg::Auto)),
        helo: args.helo.clone().or(helo).unwrap_or_else(hostname),
        from: sender.as_ref().map(|(_, a)| a.clone()),
        from_name: sender.and_then(|(n, _)| n),
        dns_server: args.dns_server.clone().or(dns_server),
        timeouts,
        dkim,
        rate: (rate, burst),
        mta_sts: args.mta_sts.on(mta_sts),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(s: &str) -> (String, Option<u16>) {
        split_server(s).unwrap()
    }

    #[test]
    fn account_secrets_go_only_to_the_account_s_own_host_and_port() {
        let own = server("smtp.example.com");
        let stay = |dest: &str, port: Option<u16>, account_port: Option<u16>| {
            secrets_stay(Some(&own), Some(&server(dest)), port, account_port).is_ok()
        };
        assert!(stay("smtp.example.com", None, None));
        assert!(
            stay("SMTP.example.com:587", None, None),
            "587 is the default"
        );
        assert!(stay("smtp.example.com", Some(587), None));
        assert!(stay("smtp.example.com:465", None, Some(465)));
        assert!(!stay("smtp.example.com:465", None, None), "another port");
        assert!(
            !stay("smtp.example.com", Some(25), None),
            "--port elsewhere"
        );
        assert!(!stay("other.example.com", None, None), "another host");
        assert!(secrets_stay(None, Some(&own), None, None).is_err());
        assert!(secrets_stay(Some(&own), None, None, None).is_err());
    }
}
