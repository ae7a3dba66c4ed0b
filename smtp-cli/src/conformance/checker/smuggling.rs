//! `smuggling`: SMTP smuggling (2023; CVE-2023-51764 Postfix, -51765
//! Sendmail, -51766 Exim). One message per non-standard end of data, each
//! on its own connection: some text, the variant, a second transaction's
//! MAIL, RCPT and DATA, and only then the real `CRLF.CRLF`. A server that
//! ends the data at the variant answers the smuggled commands too: more
//! than the one reply to the real end of data.

use super::probes::{open_authenticated, quiet};
use super::{Ctx, Outcome};

/// The non-standard ends of data tried, and how they are shown.
pub(super) const VARIANTS: [(&str, &str); 6] = [
    ("\n.\n", "\\n.\\n"),
    ("\r.\r", "\\r.\\r"),
    ("\n.\r\n", "\\n.\\r\\n"),
    ("\r.\n", "\\r.\\n"),
    ("\r\n.\n", "\\r\\n.\\n"),
    ("\n.\r", "\\n.\\r"),
];

/// At most this many replies are read after the data (a smuggling server
/// sends five).
const MAX_REPLIES: usize = 8;

pub(super) async fn check(ctx: &Ctx) -> Outcome {
    let mut findings = Vec::new();
    let mut safe = Vec::new();
    for (variant, shown) in VARIANTS {
        match one(ctx, variant, shown).await {
            Ok(Verdict::Safe(how)) => safe.push(format!("{shown} {how}")),
            Ok(Verdict::Smuggled(codes)) => findings.push(format!("{shown} ({codes})")),
            // Findings so far stand, whatever comes after them.
            Ok(Verdict::Refused(why)) if findings.is_empty() => {
                return Outcome::NotApplicable(why);
            }
            Err(e) if findings.is_empty() => return Outcome::Fail(format!("{shown}: {e}")),
            Ok(Verdict::Refused(_)) | Err(_) => break,
        }
    }
    if findings.is_empty() {
        Outcome::Pass(safe.join("; "))
    } else {
        Outcome::Fail(format!(
            "took {} as the end of data and ran the smuggled commands: {}",
            if findings.len() == 1 { "this" } else { "these" },
            findings.join(", ")
        ))
    }
}

enum Verdict {
    /// One reply to the whole data, or none: how the server took it.
    Safe(String),
    /// The replies' codes, more than one.
    Smuggled(String),
    /// The server would not take the test message at all.
    Refused(String),
}

async fn one(ctx: &Ctx, variant: &str, shown: &str) -> Result<Verdict, String> {
    let (mut conn, _) = open_authenticated(ctx).await?;
    for line in [
        format!("MAIL FROM:<{}>", ctx.from),
        format!("RCPT TO:<{}>", ctx.rcpt),
        "DATA".to_owned(),
    ] {
        let r = conn.command(&line).await?;
        if r.class() == 5 || r.class() == 4 {
            conn.quit().await;
            return Ok(Verdict::Refused(format!("`{line}` refused: {}", r.brief())));
        }
    }
    let message = format!(
        "From: <{from}>\r\nTo: <{rcpt}>\r\nSubject: smtp conformance server: SMTP smuggling test ({shown})\r\n\
         \r\nA test message from `smtp conformance server`, which checks whether this\r\n\
         server ends the message data at something other than CRLF.CRLF.\r\n\
         This line is followed by the variant under test{variant}\
         MAIL FROM:<{from}>\r\nRCPT TO:<{rcpt}>\r\nDATA\r\n\
         From: <{from}>\r\nTo: <{rcpt}>\r\nSubject: SMUGGLED ({shown})\r\n\r\n\
         If this arrives as a message of its own, the server is vulnerable to SMTP smuggling.\r\n.\r\n",
        from = ctx.from,
        rcpt = ctx.rcpt,
    );
    conn.send(message.as_bytes()).await?;
    let mut replies = Vec::new();
    // The first reply has the whole timeout; any more must follow soon.
    match conn.reply().await {
        Ok(r) => replies.push(r),
        Err(e) if e.contains("closed") => {
            return Ok(Verdict::Safe("closed without a reply".into()));
        }
        Err(e) => return Err(format!("{e} (after the data)")),
    }
    while replies.len() < MAX_REPLIES {
        match conn.reply_within(quiet(ctx)).await {
            Ok(Some(r)) => replies.push(r),
            Ok(None) | Err(_) => break,
        }
    }
    conn.quit().await;
    if let [only] = replies.as_slice() {
        let how = match only.class() {
            2 => "kept as data".to_owned(),
            _ => format!("rejected: {}", only.brief()),
        };
        return Ok(Verdict::Safe(how));
    }
    let codes: Vec<_> = replies.iter().map(|r| r.code.to_string()).collect();
    Ok(Verdict::Smuggled(codes.join(" ")))
}
