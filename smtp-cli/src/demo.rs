//! `smtp demo`: a real send, end to end, on a machine with no mail server.
//!
//! Starts in this process: a test CA; a submission server (STARTTLS with a
//! certificate from that CA, AUTH required); a domain's mail exchanger; and
//! a DNS zone on loopback naming it. Then sends one message by standard
//! delivery (Certified with that CA, AUTH) and one by direct delivery (MX
//! looked up through the zone, certificate checked against the MX name), and
//! shows the outcomes and what the servers received.

use std::time::Duration;

use smtp_core::address::{Mailbox, ReversePath};
use smtp_core::delivery::direct::{BodyFactory, DirectOptions, deliver};
use smtp_core::delivery::{BodySource, MemoryBody};
use smtp_core::ehlo::ClientId;
use smtp_core::sasl::{Credentials, Secret};
use smtp_core::{Config, Envelope, Event, Timeouts, TlsPolicy};
use smtp_dns::HickoryResolver;
use smtp_testkit::capture::{CaptureConfig, CaptureServer};
use smtp_testkit::certs::TestCa;
use smtp_testkit::dns::{DnsServer, Zone};
use smtp_tls::{MxConnector, Outgoing, Server, Trust};

use crate::advice;
use crate::cli::DemoArgs;
use crate::fail::{EX_OK, EX_SOFTWARE, Failure};
use crate::output::{MessageReport, RecipientReport, Report};
use smtp_tls::random_below;

const SUBMISSION_NAME: &str = "submission.demo.test";
const MX_NAME: &str = "mx.example.test";

fn io_failure(what: &str) -> impl Fn(std::io::Error) -> Failure + '_ {
    move |e| Failure::new(EX_SOFTWARE, format!("{what}: {e}"))
}

fn message(subject: &str, to: &str) -> String {
    format!(
        "From: Demo Sender <sender@demo.test>\r\nTo: <{to}>\r\nSubject: {subject}\r\n\
         Message-ID: <{}.demo@demo.test>\r\n\r\nHello from smtp demo.\r\n.A line that starts with a dot.\r\n",
        random_below(1 << 30)
    )
}

fn show_received(label: &str, server: &CaptureServer) {
    for m in server.messages() {
        say!(
            "\n{label} received from <{}> for {} ({}{}):",
            m.mail_from,
            m.rcpt_to.join(", "),
            if m.tls { "over TLS" } else { "in plaintext" },
            m.auth_user
                .as_deref()
                .map(|u| format!(", authenticated as {u}"))
                .unwrap_or_default(),
        );
        for line in String::from_utf8_lossy(&m.data).lines() {
            say!("    {line}");
        }
    }
}

pub(crate) async fn run(args: DemoArgs) -> Result<u8, Failure> {
    let ca = TestCa::new();
    let password = format!("demo-{:x}", random_below(usize::MAX));
    let submission = CaptureServer::start(CaptureConfig {
        hostname: SUBMISSION_NAME.into(),
        tls: Some(ca.leaf(&[SUBMISSION_NAME])),
        auth: Some(("demo".into(), password.clone())),
        require_auth: true,
        ..CaptureConfig::default()
    })
    .await
    .map_err(io_failure("cannot start the submission server"))?;
    let mx = CaptureServer::start(CaptureConfig {
        hostname: MX_NAME.into(),
        tls: Some(ca.leaf(&[MX_NAME])),
        ..CaptureConfig::default()
    })
    .await
    .map_err(io_failure("cannot start the mail exchanger"))?;
    let zone = Zone::new()
        .mx("example.test", 10, MX_NAME)
        .a(MX_NAME, std::net::Ipv4Addr::LOCALHOST);
    let dns = DnsServer::start(zone)
        .await
        .map_err(io_failure("cannot start the DNS zone"))?;
    say!("smtp demo: everything runs on this machine, on 127.0.0.1");
    say!(
        "  submission server  {} ({SUBMISSION_NAME}, STARTTLS with a test CA, AUTH required)",
        submission.addr()
    );
    say!(
        "  mail exchanger     {} ({MX_NAME}, STARTTLS with the same CA)",
        mx.addr()
    );
    say!(
        "  DNS zone           {} (example.test MX 10 {MX_NAME})",
        dns.addr()
    );

    let timeouts = Timeouts::uniform(Duration::from_secs(10));
    let observe = |e: &Event| {
        if let Event::Transcript(line) = e
            && args.verbose
        {
            tell!("{line}");
        }
    };

    // Standard delivery: Certified against the test CA, with AUTH.
    say!("\n1. standard delivery through {SUBMISSION_NAME}, --tls certified, AUTH as demo");
    let mut trust = Trust::new().without_web_pki_roots();
    trust
        .add_ca_pem(ca.cert_pem().as_bytes())
        .map_err(io_failure("test CA"))?;
    let server = Server::new("127.0.0.1", submission.addr().port())
        .with_policy(TlsPolicy::Certified)
        .with_trust(trust.clone())
        .with_server_name(SUBMISSION_NAME)
        .with_client_id(
            ClientId::parse("client.demo.test")
                .map_err(|e| Failure::new(EX_SOFTWARE, e.to_string()))?,
        )
        .with_credentials(Credentials::Password {
            username: "demo".into(),
            password: Secret::new(password),
        })
        .with_timeouts(timeouts)
        .with_transcript(args.verbose);
    let to = Mailbox::parse("friend@example.net").map_err(|e| Failure::data(e.to_string()))?;
    let from = ReversePath::parse("sender@demo.test").map_err(|e| Failure::data(e.to_string()))?;
    let outgoing = Outgoing {
        envelope: Envelope::new(from.clone(), vec![to]),
        body: Box::new(MemoryBody::new(message(
            "standard delivery",
            "friend@example.net",
        ))),
    };
    let delivery = server
        .send(vec![outgoing], &mut |seen| observe(seen.event()))
        .await
        .map_err(|e| Failure::new(EX_SOFTWARE, advice::error(&e)))?;
    let host = format!("{SUBMISSION_NAME} {}", delivery.peer);
    let mut reports: Vec<MessageReport> = delivery
        .session
        .messages
        .iter()
        .map(|m| MessageReport {
            message: "standard delivery".into(),
            recipients: m
                .recipients
                .iter()
                .map(|o| RecipientReport::new(o, Some(&host), delivery.session.tls.as_ref()))
                .collect(),
            diagnosis: None,
            dkim: None,
            errors: delivery.session.error.iter().cloned().collect(),
            missing_outcomes: false,
        })
        .collect();
    Report {
        messages: std::mem::take(&mut reports),
        fault: None,
    }
    .print(false);

    // Direct delivery: MX from the zone, the certificate checked against the MX name.
    say!("\n2. direct delivery to example.test: MX lookup through the zone, --tls certified");
    let resolver = HickoryResolver::with_nameserver(dns.addr(), Duration::from_secs(2))
        .map_err(|e| Failure::config(e.to_string()))?;
    let connector = MxConnector::new(TlsPolicy::Certified, trust, timeouts);
    let config = Config::new(
        ClientId::parse("client.demo.test")
            .map_err(|e| Failure::new(EX_SOFTWARE, e.to_string()))?,
    )
    .with_tls(TlsPolicy::Certified)
    .with_timeouts(timeouts)
    .with_transcript(args.verbose);
    let mut options = DirectOptions::new(config);
    options.port = mx.addr().port();
    let envelope = Envelope::new(
        from,
        vec![
            Mailbox::parse("alice@example.test").map_err(|e| Failure::data(e.to_string()))?,
            Mailbox::parse("bob@example.test").map_err(|e| Failure::data(e.to_string()))?,
        ],
    );
    let body_text = message("direct delivery", "alice@example.test");
    let body: BodyFactory<'_> = &|| -> std::io::Result<Box<dyn BodySource>> {
        Ok(Box::new(MemoryBody::new(body_text.clone())))
    };
    let domains = deliver(
        &resolver,
        &connector,
        &envelope,
        body,
        &options,
        &random_below,
    )
    .await;
    let mut direct = MessageReport {
        message: "direct delivery".into(),
        recipients: Vec::new(),
        diagnosis: None,
        dkim: None,
        errors: Vec::new(),
        missing_outcomes: false,
    };
    for d in &domains {
        direct.recipients.extend(
            d.outcomes
                .iter()
                .map(|o| RecipientReport::new(o, d.host.as_deref(), d.tls.as_ref())),
        );
        direct
            .errors
            .extend(d.attempts.iter().filter_map(|a| a.error.clone()));
        direct.diagnosis = d.diagnosis.as_ref().map(ToString::to_string);
    }
    let direct_report = Report {
        messages: vec![direct],
        fault: None,
    };
    direct_report.print(false);

    show_received(SUBMISSION_NAME, &submission);
    show_received(MX_NAME, &mx);
    let all = Report {
        messages: delivery
            .session
            .messages
            .iter()
            .map(|m| MessageReport {
                message: String::new(),
                recipients: m
                    .recipients
                    .iter()
                    .map(|o| RecipientReport::new(o, None, None))
                    .collect(),
                diagnosis: None,
                dkim: None,
                errors: delivery.session.error.iter().cloned().collect(),
                missing_outcomes: false,
            })
            .chain(direct_report.messages)
            .collect(),
        fault: None,
    };
    let code = all.exit_code();
    say!(
        "\n{}",
        if code == EX_OK {
            "demo: every recipient accepted"
        } else {
            "demo: something was not accepted (see above)"
        }
    );
    Ok(code)
}
