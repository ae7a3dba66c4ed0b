//! The checks that take one session each: a session opened the usual way
//! ([`open`]), then STARTTLS injection, AUTH before TLS, PIPELINING, open
//! relay, VRFY/EXPN.

use std::time::Duration;

use super::wire::{Conn, EHLO_NAME, Reply};
use super::{Ctx, Outcome};

/// How long a server is given to answer what it should not.
pub(super) fn quiet(ctx: &Ctx) -> Duration {
    ctx.timeout.min(Duration::from_millis(1500))
}

/// Greeting, EHLO and, with `tls` when offered, STARTTLS and EHLO again;
/// the connection and the last EHLO's keywords.
pub(super) async fn open(ctx: &Ctx, tls: bool) -> Result<(Conn, Vec<String>), String> {
    let (mut conn, greeting) = Conn::connect(&ctx.target, ctx.timeout).await?;
    if greeting.class() != 2 {
        return Err(format!("greets with {}", greeting.brief()));
    }
    let caps = ehlo(&mut conn).await?;
    if !tls || !caps.iter().any(|c| c == "STARTTLS") {
        return Ok((conn, caps));
    }
    let r = conn.command("STARTTLS").await?;
    if r.code != 220 {
        return Ok((conn, caps));
    }
    let mut conn = conn
        .upgrade(ctx.tls_config.clone(), ctx.target.server_name())
        .await?;
    let caps = ehlo(&mut conn).await?;
    Ok((conn, caps))
}

/// [`open`] with TLS, then AUTH PLAIN when `--user` was given (inside
/// TLS only; the password never appears in what is reported).
pub(super) async fn open_authenticated(ctx: &Ctx) -> Result<(Conn, Vec<String>), String> {
    let (mut conn, caps) = open(ctx, true).await?;
    let Some((user, password)) = &ctx.auth else {
        return Ok((conn, caps));
    };
    if !conn.is_tls() {
        conn.quit().await;
        return Err(
            "no STARTTLS: --user given, and the password is never sent in the clear".into(),
        );
    }
    let plain = caps.iter().any(|c| {
        (c.starts_with("AUTH ") || c.starts_with("AUTH="))
            && c.split([' ', '=']).any(|m| m == "PLAIN")
    });
    if !plain {
        conn.quit().await;
        return Err("--user given but AUTH PLAIN is not offered after STARTTLS".into());
    }
    use base64::Engine as _;
    let token = base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"));
    let r = conn.command(&format!("AUTH PLAIN {token}")).await?;
    if r.code != 235 {
        conn.quit().await;
        return Err(format!("AUTH as {user} refused: {}", r.brief()));
    }
    Ok((conn, caps))
}

async fn ehlo(conn: &mut Conn) -> Result<Vec<String>, String> {
    let r = conn.command(&format!("EHLO {EHLO_NAME}")).await?;
    if r.class() != 2 {
        return Err(format!("answers EHLO with {}", r.brief()));
    }
    Ok(r.keywords())
}

/// `starttls-injection`: `STARTTLS\r\nNOOP\r\n` in one write; a reply
/// inside TLS before we say anything means the plaintext NOOP was kept.
pub(super) async fn starttls_injection(ctx: &Ctx) -> Outcome {
    let (mut conn, caps) = match open(ctx, false).await {
        Ok(x) => x,
        Err(e) => return Outcome::Fail(e),
    };
    if !caps.iter().any(|c| c == "STARTTLS") {
        conn.quit().await;
        return Outcome::NotApplicable("no STARTTLS".into());
    }
    if let Err(e) = conn.send(b"STARTTLS\r\nNOOP\r\n").await {
        return Outcome::Fail(e);
    }
    let r = match conn.reply().await {
        Ok(r) => r,
        Err(e) => return Outcome::Fail(format!("{e} (after STARTTLS)")),
    };
    if r.code != 220 {
        conn.quit().await;
        return Outcome::Pass(format!(
            "refused STARTTLS with input after it: {}",
            r.brief()
        ));
    }
    if conn.buffered() > 0 {
        return Outcome::Fail(
            "answered the NOOP pipelined after STARTTLS in plaintext, before the handshake".into(),
        );
    }
    let mut conn = match conn
        .upgrade(ctx.tls_config.clone(), ctx.target.server_name())
        .await
    {
        Ok(c) => c,
        Err(e) => {
            return Outcome::NotApplicable(format!(
                "{e}: cannot tell whether the NOOP would run inside TLS"
            ));
        }
    };
    match conn.reply_within(quiet(ctx)).await {
        Ok(Some(r)) => Outcome::Fail(format!(
            "answered inside TLS the NOOP sent in plaintext before the handshake ({}): \
             it keeps pre-TLS input (CVE-2011-0411)",
            r.brief()
        )),
        Ok(None) => {
            conn.quit().await;
            Outcome::Pass("discarded the NOOP pipelined after STARTTLS".into())
        }
        Err(e) => Outcome::Fail(format!("{e} (inside TLS, before any command)")),
    }
}

/// `auth-plaintext`: AUTH PLAIN or LOGIN offered before TLS.
pub(super) async fn auth_plaintext(ctx: &Ctx) -> Outcome {
    let (conn, caps) = match open(ctx, false).await {
        Ok(x) => x,
        Err(e) => return Outcome::Fail(e),
    };
    conn.quit().await;
    let starttls = caps.iter().any(|c| c == "STARTTLS");
    let auth = caps
        .iter()
        .find(|c| c.starts_with("AUTH ") || c.starts_with("AUTH="))
        .map(|c| super::wire::shorten(c, 80));
    let cleartext = auth
        .as_deref()
        .is_some_and(|a| a.split([' ', '=']).any(|m| m == "PLAIN" || m == "LOGIN"));
    match (auth, cleartext, starttls) {
        (Some(a), true, true) => Outcome::Fail(format!(
            "offers `{a}` before STARTTLS (warning): a client may send its password in the clear"
        )),
        (Some(a), true, false) => Outcome::Fail(format!(
            "offers `{a}` and no STARTTLS at all: passwords can only travel in the clear"
        )),
        (Some(a), false, _) => Outcome::Pass(format!("before TLS only `{a}` (no PLAIN or LOGIN)")),
        (None, _, _) => Outcome::Pass("no AUTH before TLS".into()),
    }
}

/// `pipelining`: MAIL, RCPT, a malformed RCPT and DATA in one write; four
/// replies, in order. The DATA is abandoned (the connection dropped).
pub(super) async fn pipelining(ctx: &Ctx) -> Outcome {
    let (mut conn, caps) = match open_authenticated(ctx).await {
        Ok(x) => x,
        Err(e) => return Outcome::Fail(e),
    };
    if !caps.iter().any(|c| c == "PIPELINING") {
        conn.quit().await;
        return Outcome::NotApplicable("PIPELINING not advertised".into());
    }
    let group = format!(
        "MAIL FROM:<{}>\r\nRCPT TO:<{}>\r\nRCPT TO:<conformance bad address>\r\nDATA\r\n",
        ctx.from, ctx.rcpt
    );
    if let Err(e) = conn.send(group.as_bytes()).await {
        return Outcome::Fail(e);
    }
    let mut replies: Vec<Reply> = Vec::new();
    while replies.len() < 4 {
        match conn.reply().await {
            Ok(r) => replies.push(r),
            Err(e) => {
                let got: Vec<_> = replies.iter().map(|r| r.code.to_string()).collect();
                return Outcome::Fail(format!(
                    "answered {} of 4 pipelined commands ({}), then: {e}",
                    replies.len(),
                    got.join(", ")
                ));
            }
        }
    }
    // What comes next would be message data: drop the connection instead.
    drop(conn);
    let codes: Vec<_> = replies.iter().map(|r| r.code.to_string()).collect();
    let codes = codes.join(", ");
    let [mail, good, bad, data] = [&replies[0], &replies[1], &replies[2], &replies[3]];
    // A 3xx (354) to anything but DATA: replies misordered or lost.
    for (r, what) in [
        (mail, "MAIL"),
        (good, "the first RCPT"),
        (bad, "the second RCPT"),
    ] {
        if r.class() == 3 {
            return Outcome::Fail(format!(
                "answered {what} with {}: replies out of order or lost ({codes})",
                r.brief()
            ));
        }
    }
    if mail.class() != 2 {
        return Outcome::NotApplicable(format!(
            "MAIL FROM:<{}> refused: {}",
            ctx.from,
            mail.brief()
        ));
    }
    if good.class() != 2 {
        return Outcome::NotApplicable(format!("RCPT TO:<{}> refused: {}", ctx.rcpt, good.brief()));
    }
    if bad.class() == 2 {
        return Outcome::Fail(format!(
            "accepted the malformed recipient <conformance bad address> ({codes})"
        ));
    }
    if data.code != 354 {
        return Outcome::Fail(format!(
            "answered the pipelined DATA with {} though a recipient was accepted ({codes})",
            data.brief()
        ));
    }
    Outcome::Pass(format!("replies in order: {codes}"))
}

/// `open-relay`: RCPT to `--relay-domain` without AUTH; RSET, no DATA.
pub(super) async fn open_relay(ctx: &Ctx) -> Outcome {
    let (mut conn, _) = match open(ctx, true).await {
        Ok(x) => x,
        Err(e) => return Outcome::Fail(e),
    };
    let result = async {
        let mail = conn
            .command("MAIL FROM:<conformance@outside-1.example>")
            .await?;
        if mail.class() != 2 {
            return Ok(Outcome::Pass(format!(
                "refused MAIL from an outside sender: {}",
                mail.brief()
            )));
        }
        let to = format!("relay-test@{}", ctx.relay_domain);
        let rcpt = conn.command(&format!("RCPT TO:<{to}>")).await?;
        let _ = conn.command("RSET").await;
        Ok::<_, String>(match rcpt.class() {
            2 => Outcome::Fail(format!(
                "accepted RCPT TO:<{to}> from an unauthenticated client: an open relay ({})",
                rcpt.brief()
            )),
            4 => Outcome::NotApplicable(format!(
                "deferred the outside recipient ({}): greylisting? inconclusive",
                rcpt.brief()
            )),
            _ => Outcome::Pass(format!(
                "refused relaying to {}: {}",
                ctx.relay_domain,
                rcpt.brief()
            )),
        })
    }
    .await;
    conn.quit().await;
    result.unwrap_or_else(Outcome::Fail)
}

/// `vrfy-expn`: VRFY postmaster, EXPN postmaster; an address in a 250,
/// 251 or 252 is exposed; so is a VRFY that refuses an unknown user
/// where it accepted postmaster (it tells real addresses from others).
pub(super) async fn vrfy_expn(ctx: &Ctx) -> Outcome {
    let (mut conn, _) = match open(ctx, true).await {
        Ok(x) => x,
        Err(e) => return Outcome::Fail(e),
    };
    let mut seen = Vec::new();
    let mut classes = Vec::new();
    let unknown = format!("VRFY conformance-no-such-user-{}", std::process::id());
    for command in ["VRFY postmaster", "EXPN postmaster", unknown.as_str()] {
        match conn.command(command).await {
            Ok(r) => {
                let exposes = matches!(r.code, 250 | 251)
                    || (r.code == 252 && r.lines.iter().any(|l| l.contains('@')));
                if exposes {
                    conn.quit().await;
                    return Outcome::Fail(format!(
                        "answers `{command}` with {} (warning): it confirms addresses to harvesters",
                        r.brief()
                    ));
                }
                seen.push(format!("{}: {}", verb_and_arg(command), r.code));
                classes.push(r.class());
            }
            Err(e) => return Outcome::Fail(e),
        }
    }
    conn.quit().await;
    if let [vrfy, _, unknown] = classes[..]
        && vrfy == 2
        && unknown == 5
    {
        return Outcome::Fail(format!(
            "VRFY accepts postmaster and refuses an unknown user (warning): it tells \
             real addresses from others ({})",
            seen.join(", ")
        ));
    }
    Outcome::Pass(seen.join(", "))
}

fn verb_and_arg(command: &str) -> &str {
    if command.contains("no-such-user") {
        "VRFY unknown"
    } else {
        command
    }
}
