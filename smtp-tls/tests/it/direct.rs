//! Direct delivery end to end: MX records from a DNS server on loopback
//! (the testkit's zone, over real UDP), mail exchangers on 127.0.0.x
//! addresses (Postfix's smtp-sink), connections by `MxConnector`.

use std::net::Ipv4Addr;
use std::time::Duration;

use smtp_core::address::{Mailbox, ReversePath};
use smtp_core::delivery::direct::{BodyFactory, Diagnosis, DirectOptions, DomainReport, deliver};
use smtp_core::delivery::{BodySource, MemoryBody};
use smtp_core::ehlo::ClientId;
use smtp_core::{Config, Envelope, RecipientStatus, Timeouts, TlsPolicy};
use smtp_dns::HickoryResolver;
use smtp_testkit::dns::{DnsServer, Zone};
use smtp_tls::{MxConnector, Trust};
use tokio::io::AsyncWriteExt;

use crate::interop::{dumps, free_port, sink_on, skip};

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, last)
}

fn envelope(to: &[&str]) -> Envelope {
    Envelope::new(
        ReversePath::parse("alice@example.org").unwrap(),
        to.iter().map(|t| Mailbox::parse(t).unwrap()).collect(),
    )
}

async fn run(
    zone: Zone,
    port: u16,
    to: &[&str],
    pick: &(dyn Fn(usize) -> usize + Sync),
) -> (Vec<DomainReport>, DnsServer) {
    let dns = DnsServer::start(zone).await.unwrap();
    let resolver =
        HickoryResolver::with_nameserver(dns.addr(), Duration::from_millis(500)).unwrap();
    let timeouts = Timeouts::uniform(Duration::from_secs(3));
    let connector = MxConnector::new(TlsPolicy::Optional, Trust::new(), timeouts);
    let config = Config::new(ClientId::parse("client.test").unwrap())
        .with_tls(TlsPolicy::Optional)
        .with_timeouts(timeouts);
    let mut options = DirectOptions::new(config);
    options.port = port;
    let body: BodyFactory<'_> = &|| -> std::io::Result<Box<dyn BodySource>> {
        Ok(Box::new(MemoryBody::new(
            "Subject: direct\r\n\r\nhello\r\n",
        )))
    };
    let reports = deliver(&resolver, &connector, &envelope(to), body, &options, pick).await;
    (reports, dns)
}

fn first(_: usize) -> usize {
    0
}

fn statuses(reports: &[DomainReport]) -> Vec<String> {
    reports
        .iter()
        .flat_map(|d| {
            d.outcomes
                .iter()
                .map(|o| format!("{}={}", o.recipient, o.status))
        })
        .collect()
}

#[tokio::test]
async fn two_domains_three_recipients() {
    if skip() {
        return;
    }
    let port = free_port();
    let a = sink_on("127.0.0.2", port, &[]).await;
    let b = sink_on("127.0.0.3", port, &[]).await;
    let zone = Zone::new()
        .mx("a.test", 10, "mx.a.test")
        .a("mx.a.test", ip(2))
        .mx("b.test", 10, "mx.b.test")
        .a("mx.b.test", ip(3));
    let (reports, _dns) = run(zone, port, &["x@a.test", "y@a.test", "z@b.test"], &first).await;
    assert_eq!(
        statuses(&reports),
        [
            "x@a.test=accepted",
            "y@a.test=accepted",
            "z@b.test=accepted"
        ]
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (da, db) = (dumps(&a.dir), dumps(&b.dir));
    assert_eq!(da.len(), 1, "one session carries both a.test recipients");
    assert!(
        da[0].contains("x@a.test") && da[0].contains("y@a.test") && !da[0].contains("z@b.test")
    );
    assert_eq!(db.len(), 1);
    assert_eq!(reports[0].host.as_deref(), Some("mx.a.test"));
}

#[tokio::test]
async fn first_mx_down_second_gets_the_mail() {
    if skip() {
        return;
    }
    let port = free_port();
    let backup = sink_on("127.0.0.5", port, &[]).await;
    let zone = Zone::new()
        .mx("c.test", 10, "down.c.test")
        .a("down.c.test", ip(4))
        .mx("c.test", 20, "up.c.test")
        .a("up.c.test", ip(5));
    let (reports, _dns) = run(zone, port, &["x@c.test"], &first).await;
    assert_eq!(statuses(&reports), ["x@c.test=accepted"]);
    assert_eq!(reports[0].attempts.len(), 2);
    assert!(reports[0].attempts[0].failure.is_some());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(dumps(&backup.dir).len(), 1);
}

#[tokio::test]
async fn equal_preferences_spread_across_runs() {
    if skip() {
        return;
    }
    let port = free_port();
    let one = sink_on("127.0.0.6", port, &[]).await;
    let two = sink_on("127.0.0.7", port, &[]).await;
    let zone = Zone::new()
        .mx("d.test", 10, "one.d.test")
        .a("one.d.test", ip(6))
        .mx("d.test", 10, "two.d.test")
        .a("two.d.test", ip(7));
    for run_no in 0..12usize {
        // A different random source each run, as the CLI's would be.
        let pick = move |n: usize| (run_no * 7 + 3) % n;
        let (reports, _dns) = run(zone.clone(), port, &["x@d.test"], &pick).await;
        assert_eq!(statuses(&reports), ["x@d.test=accepted"]);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (n1, n2) = (dumps(&one.dir).len(), dumps(&two.dir).len());
    assert_eq!(n1 + n2, 12);
    assert!(n1 > 0 && n2 > 0, "both hosts used: {n1} / {n2}");
}

#[tokio::test]
async fn implicit_mx_from_the_a_record() {
    if skip() {
        return;
    }
    let port = free_port();
    let host = sink_on("127.0.0.8", port, &[]).await;
    let zone = Zone::new().a("e.test", ip(8));
    let (reports, _dns) = run(zone, port, &["x@e.test"], &first).await;
    assert_eq!(statuses(&reports), ["x@e.test=accepted"]);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(dumps(&host.dir).len(), 1);
}

#[tokio::test]
async fn null_mx_nxdomain_servfail() {
    let zone = Zone::new().null_mx("nomail.test").servfail("broken.test");
    let (reports, dns) = run(
        zone,
        free_port(),
        &["a@nomail.test", "b@nowhere.test", "c@broken.test"],
        &first,
    )
    .await;
    assert_eq!(
        statuses(&reports),
        [
            "c@broken.test=deferred",
            "a@nomail.test=rejected",
            "b@nowhere.test=rejected"
        ]
    );
    assert!(
        reports.iter().all(|r| r.attempts.is_empty()),
        "no connection attempted"
    );
    assert!(
        !dns.queries()
            .iter()
            .any(|(n, t)| n == "nomail.test" && t != "MX")
    );
    let text = reports[1].outcomes[0].text();
    assert!(text.contains("accepts no mail"), "{text}");
    // NXDOMAIN names who said so: a resolver that says it of everything is
    // a broken network, not a typo.
    let text = reports[2].outcomes[0].text();
    assert!(text.contains("does not exist"), "{text}");
    assert!(
        text.contains(&format!("the nameserver {}", dns.addr())),
        "{text}"
    );
    assert!(!text.contains("could not connect"), "{text}");
}

#[tokio::test]
async fn refused_greeting_moves_to_the_next_host() {
    if skip() {
        return;
    }
    let port = free_port();
    // A host that greets with 421 and hangs up.
    let busy = tokio::net::TcpListener::bind(("127.0.0.9", port))
        .await
        .unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = busy.accept().await {
            let _ = s.write_all(b"421 4.3.2 too busy, try another\r\n").await;
        }
    });
    let good = sink_on("127.0.0.10", port, &[]).await;
    let zone = Zone::new()
        .mx("f.test", 10, "busy.f.test")
        .a("busy.f.test", ip(9))
        .mx("f.test", 20, "good.f.test")
        .a("good.f.test", ip(10));
    let (reports, _dns) = run(zone, port, &["x@f.test"], &first).await;
    assert_eq!(statuses(&reports), ["x@f.test=accepted"]);
    assert_eq!(reports[0].host.as_deref(), Some("good.f.test"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(dumps(&good.dir).len(), 1);
}

/// A host on 127.0.0.`last`:`port` that greets with `greeting` and hangs up.
async fn greets_and_hangs_up(last: u8, port: u16, greeting: &'static [u8]) {
    let listener = tokio::net::TcpListener::bind((ip(last), port))
        .await
        .unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let _ = s.write_all(greeting).await;
        }
    });
}

#[tokio::test]
async fn a_5xx_greeting_is_skipped_for_the_next_host() {
    // Postfix's smtp_skip_5xx_greeting: a host that refuses the session
    // says nothing about the recipient; the next MX host may take it.
    if skip() {
        return;
    }
    let port = free_port();
    greets_and_hangs_up(13, port, b"554 5.7.1 no service for you\r\n").await;
    let good = sink_on("127.0.0.14", port, &[]).await;
    let zone = Zone::new()
        .mx("h.test", 10, "refusing.h.test")
        .a("refusing.h.test", ip(13))
        .mx("h.test", 20, "good.h.test")
        .a("good.h.test", ip(14));
    let (reports, _dns) = run(zone, port, &["x@h.test"], &first).await;
    assert_eq!(statuses(&reports), ["x@h.test=accepted"]);
    assert_eq!(reports[0].host.as_deref(), Some("good.h.test"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(dumps(&good.dir).len(), 1);
}

#[tokio::test]
async fn when_every_host_greets_with_5xx_the_recipient_is_deferred_not_rejected() {
    let port = free_port();
    greets_and_hangs_up(15, port, b"554 5.7.1 no service for you\r\n").await;
    greets_and_hangs_up(16, port, b"554 5.7.1 no service here either\r\n").await;
    let zone = Zone::new()
        .mx("i.test", 10, "one.i.test")
        .a("one.i.test", ip(15))
        .mx("i.test", 20, "two.i.test")
        .a("two.i.test", ip(16));
    let (reports, _dns) = run(zone, port, &["x@i.test"], &first).await;
    assert_eq!(statuses(&reports), ["x@i.test=deferred"]);
    let o = &reports[0].outcomes[0];
    assert_eq!(o.code().map(|c| c.as_u16()), Some(554), "{o}");
    assert_eq!(reports[0].attempts.len(), 2, "both hosts were tried");
}

#[tokio::test]
async fn hard_refusal_is_final_soft_goes_on() {
    if skip() {
        return;
    }
    let port = free_port();
    let _hard = sink_on("127.0.0.11", port, &["-f", "RCPT"]).await;
    let backup = sink_on("127.0.0.12", port, &[]).await;
    let zone = Zone::new()
        .mx("g.test", 10, "hard.g.test")
        .a("hard.g.test", ip(11))
        .mx("g.test", 20, "backup.g.test")
        .a("backup.g.test", ip(12));
    let (reports, _dns) = run(zone, port, &["x@g.test"], &first).await;
    assert_eq!(
        statuses(&reports),
        ["x@g.test=rejected"],
        "a 5xx to RCPT is final"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(dumps(&backup.dir).is_empty());

    let port = free_port();
    let _soft = sink_on("127.0.0.13", port, &["-r", "RCPT"]).await;
    let backup = sink_on("127.0.0.14", port, &[]).await;
    let zone = Zone::new()
        .mx("h.test", 10, "soft.h.test")
        .a("soft.h.test", ip(13))
        .mx("h.test", 20, "backup.h.test")
        .a("backup.h.test", ip(14));
    let (reports, _dns) = run(zone, port, &["x@h.test"], &first).await;
    assert_eq!(statuses(&reports), ["x@h.test=accepted"], "a 4xx moves on");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(dumps(&backup.dir).len(), 1);
}

#[tokio::test]
async fn blocked_port_25_is_diagnosed() {
    // Nothing listens on these addresses: every connection is refused.
    let zone = Zone::new()
        .mx("blocked.test", 10, "mx1.blocked.test")
        .a("mx1.blocked.test", ip(20))
        .mx("blocked.test", 20, "mx2.blocked.test")
        .a("mx2.blocked.test", ip(21));
    let port = free_port();
    let (reports, _dns) = run(zone, port, &["x@blocked.test"], &first).await;
    assert_eq!(reports[0].outcomes[0].status, RecipientStatus::Deferred);
    assert_eq!(
        reports[0].diagnosis,
        Some(Diagnosis::Port25Blocked { port })
    );
    let text = reports[0].diagnosis.as_ref().unwrap().to_string();
    assert!(
        text.contains("probably blocked") && text.contains("587"),
        "{text}"
    );
}

#[tokio::test]
async fn hosts_that_hang_up_before_the_greeting_look_like_a_blocked_port() {
    // What an intercepting middlebox or a reset at the greeting looks like:
    // the connection opens and closes without a word.
    let port = free_port();
    for last in [22, 23] {
        greets_and_hangs_up(last, port, b"").await;
    }
    let zone = Zone::new()
        .mx("reset.test", 10, "mx1.reset.test")
        .a("mx1.reset.test", ip(22))
        .mx("reset.test", 20, "mx2.reset.test")
        .a("mx2.reset.test", ip(23));
    let (reports, _dns) = run(zone, port, &["x@reset.test"], &first).await;
    let o = &reports[0].outcomes[0];
    assert_eq!(o.status, RecipientStatus::Deferred, "{o}");
    assert_eq!(
        reports[0].diagnosis,
        Some(Diagnosis::Port25Blocked { port })
    );
    // A connection was made: the text says what happened in it.
    assert!(!o.text().contains("could not connect"), "{o}");
}
