//! `smtp sink`: the testkit's capture server, for trying things out locally.

use std::time::Duration;

use smtp_testkit::capture::{CaptureConfig, CaptureServer};
use smtp_testkit::certs::Identity;

use crate::cli::SinkArgs;
use crate::fail::{EX_OK, EX_SOFTWARE, Failure};

pub(crate) async fn run(args: SinkArgs) -> Result<u8, Failure> {
    let mut config = CaptureConfig {
        chunking: args.chunking,
        // Stored before the 250: once `smtp send` says accepted, the file
        // is in new/.
        maildir: args.maildir.clone(),
        // Only CRLF.CRLF ends the data; a bare CR or LF refuses the
        // message: our own sink must not be open to SMTP smuggling.
        strict_data: true,
        ..CaptureConfig::default()
    };
    if args.tls_self_signed {
        config.tls = Some(Identity::self_signed(&["localhost", "127.0.0.1"]));
    }
    if let Some(auth) = &args.auth {
        let (user, pass) = auth
            .split_once(':')
            .ok_or_else(|| Failure::usage("--auth takes USER:PASS"))?;
        config.auth = Some((user.to_owned(), pass.to_owned()));
        config.require_auth = true;
    }
    let server = CaptureServer::start_on(args.listen, config)
        .await
        .map_err(|e| {
            Failure::new(
                EX_SOFTWARE,
                format!("cannot listen on {}: {e}", args.listen),
            )
        })?;
    tell!(
        "smtp sink: listening on {}{}{}; Ctrl-C to stop",
        server.addr(),
        if args.tls_self_signed {
            ", STARTTLS with a self-signed certificate"
        } else {
            ""
        },
        if args.auth.is_some() {
            ", AUTH required"
        } else {
            ""
        },
    );
    // The command that delivers here, so a first try needs no reading.
    let user = args
        .auth
        .as_deref()
        .and_then(|a| a.split_once(':'))
        .map(|(user, _)| format!(" --user {user}"))
        .unwrap_or_default();
    let tls = match (args.tls_self_signed, user.is_empty()) {
        (true, _) => "required",
        (false, true) => "none",
        (false, false) => "none --auth plain",
    };
    tell!(
        "smtp sink: try: {}smtp send --server {} --tls {tls}{user} --from you@example.org \
         --to someone@example.net --subject hi --body hello",
        if user.is_empty() {
            ""
        } else {
            "SMTP_PASSWORD=… "
        },
        server.addr(),
    );
    let mut shown = 0;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            _ = &mut ctrl_c => break,
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
        let messages = server.messages();
        for m in messages.iter().skip(shown) {
            say!(
                "received from <{}> to {} ({} octets{}{})",
                m.mail_from,
                m.rcpt_to
                    .iter()
                    .map(|r| format!("<{r}>"))
                    .collect::<Vec<_>>()
                    .join(", "),
                m.data.len(),
                if m.tls { ", TLS" } else { "" },
                m.auth_user
                    .as_deref()
                    .map(|u| format!(", user {u}"))
                    .unwrap_or_default(),
            );
            if let Some(dir) = &args.maildir {
                say!("  stored in {}", dir.join("new").display());
            }
        }
        shown = messages.len();
    }
    Ok(EX_OK)
}
