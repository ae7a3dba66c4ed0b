//! HickoryResolver against a real DNS server on loopback (the testkit's zone
//! server), over UDP, through the core's MX planning.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use smtp_core::delivery::mx::{DnsError, PlanError, PlanKind, Resolver, plan};
use smtp_dns::HickoryResolver;
use smtp_testkit::dns::{DnsServer, Zone};

fn v4(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, last)
}

async fn setup() -> (DnsServer, HickoryResolver) {
    let zone = Zone::new()
        .mx("two.test", 20, "mx2.two.test")
        .mx("two.test", 10, "mx1.two.test")
        .a("mx1.two.test", v4(11))
        .a("mx2.two.test", v4(12))
        .aaaa("mx2.two.test", Ipv6Addr::LOCALHOST)
        .a("bare.test", v4(20))
        .null_mx("nomail.test")
        .servfail("broken.test")
        .timeout("slow.test")
        .mx("alias.test", 10, "mail.alias.test")
        .cname("mail.alias.test", "real.alias.test")
        .a("real.alias.test", v4(30));
    let server = DnsServer::start(zone).await.unwrap();
    let resolver =
        HickoryResolver::with_nameserver(server.addr(), Duration::from_millis(500)).unwrap();
    (server, resolver)
}

#[tokio::test]
async fn mx_records_in_preference_order() {
    let (_server, resolver) = setup().await;
    let mut first = |_: usize| 0;
    let p = plan(&resolver, "two.test", &mut first, 5).await.unwrap();
    assert_eq!(p.kind, PlanKind::Mx);
    let attempts: Vec<(String, IpAddr)> = p.attempts().map(|(h, a)| (h.to_owned(), a)).collect();
    assert_eq!(attempts[0], ("mx1.two.test".to_owned(), IpAddr::V4(v4(11))));
    assert!(
        attempts
            .iter()
            .any(|(_, a)| *a == IpAddr::V6(Ipv6Addr::LOCALHOST)),
        "IPv6 too: {attempts:?}"
    );
}

#[tokio::test]
async fn implicit_mx_null_mx_nxdomain() {
    let (server, resolver) = setup().await;
    let mut first = |_: usize| 0;
    let p = plan(&resolver, "bare.test", &mut first, 5).await.unwrap();
    assert_eq!(p.kind, PlanKind::ImplicitMx);
    assert_eq!(p.hosts[0].addresses, [IpAddr::V4(v4(20))]);

    let e = plan(&resolver, "nomail.test", &mut first, 5)
        .await
        .unwrap_err();
    assert!(matches!(e, PlanError::NullMx { .. }));
    assert!(
        !server
            .queries()
            .iter()
            .any(|(n, t)| n == "nomail.test" && t != "MX"),
        "no address lookups for a null MX"
    );

    assert_eq!(resolver.mx("nowhere.test").await, Err(DnsError::NxDomain));
    let e = plan(&resolver, "nowhere.test", &mut first, 5)
        .await
        .unwrap_err();
    assert!(e.is_permanent());
}

#[tokio::test]
async fn servfail_and_timeout_are_temporary() {
    let (_server, resolver) = setup().await;
    assert!(matches!(
        resolver.mx("broken.test").await,
        Err(DnsError::Temporary(_))
    ));
    assert!(matches!(
        resolver.mx("slow.test").await,
        Err(DnsError::Temporary(_))
    ));
    let mut first = |_: usize| 0;
    assert!(
        !plan(&resolver, "slow.test", &mut first, 5)
            .await
            .unwrap_err()
            .is_permanent()
    );
}

#[tokio::test]
async fn cname_followed() {
    let (_server, resolver) = setup().await;
    assert_eq!(
        resolver.addresses("mail.alias.test").await.unwrap(),
        [IpAddr::V4(v4(30))]
    );
}

#[tokio::test]
async fn txt_records_come_joined_one_string_each() {
    use smtp_dns::RecordResolver;
    let key = format!("v=DKIM1; k=rsa; p={}", "B".repeat(380));
    let zone = Zone::new()
        .txt("example.test", "v=spf1 ip4:192.0.2.0/24 -all")
        .txt("example.test", "google-site-verification=x")
        .txt_strings(
            "split.example.test",
            &[b"v=spf1 ip4:192.0.2.1".to_vec(), b" -all".to_vec()],
        )
        .txt("s1._domainkey.example.test", &key)
        .a("example.test", v4(1))
        .servfail("broken.test");
    let server = DnsServer::start(zone).await.unwrap();
    let resolver =
        HickoryResolver::with_nameserver(server.addr(), Duration::from_millis(500)).unwrap();
    let mut got = resolver.txt("example.test").await.unwrap();
    got.sort();
    assert_eq!(
        got,
        ["google-site-verification=x", "v=spf1 ip4:192.0.2.0/24 -all"]
    );
    assert_eq!(
        resolver.txt("split.example.test").await.unwrap(),
        ["v=spf1 ip4:192.0.2.1 -all"]
    );
    // Over 512 octets: truncated over UDP, asked again over TCP.
    assert_eq!(
        resolver.txt("s1._domainkey.example.test").await.unwrap(),
        [key]
    );
    assert_eq!(
        resolver.txt("none.example.test").await,
        Err(DnsError::NxDomain)
    );
    assert_eq!(
        resolver.txt("_dmarc.example.test").await,
        Err(DnsError::NxDomain)
    );
    assert!(matches!(
        resolver.txt("broken.test").await,
        Err(DnsError::Temporary(_))
    ));
}

#[tokio::test]
async fn ptr_records_name_the_address() {
    use smtp_dns::RecordResolver;
    let v6: IpAddr = "2001:db8::25".parse().unwrap();
    let zone = Zone::new()
        .ptr(
            IpAddr::V4(Ipv4Addr::new(192, 0, 2, 25)),
            "mail.example.test",
        )
        .ptr(v6, "mail6.example.test");
    let server = DnsServer::start(zone).await.unwrap();
    let resolver =
        HickoryResolver::with_nameserver(server.addr(), Duration::from_millis(500)).unwrap();
    assert_eq!(
        resolver
            .ptr(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 25)))
            .await
            .unwrap(),
        ["mail.example.test"]
    );
    assert_eq!(resolver.ptr(v6).await.unwrap(), ["mail6.example.test"]);
    assert_eq!(
        resolver.ptr(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 26))).await,
        Err(DnsError::NxDomain)
    );
}

#[tokio::test]
async fn srv_records_give_target_port_priority_and_weight() {
    use smtp_dns::{RecordResolver, SrvRecord};
    let zone = Zone::new()
        .srv(
            "_submissions._tcp.example.test",
            0,
            1,
            465,
            "smtp.example.test",
        )
        .srv(
            "_submission._tcp.example.test",
            10,
            5,
            587,
            "mail.example.test.",
        )
        .srv("_submission._tcp.none.test", 0, 0, 0, ".")
        .a("example.test", v4(1))
        .servfail("_submissions._tcp.broken.test");
    let server = DnsServer::start(zone).await.unwrap();
    let resolver =
        HickoryResolver::with_nameserver(server.addr(), Duration::from_millis(500)).unwrap();
    assert_eq!(
        resolver
            .srv("_submissions._tcp.example.test")
            .await
            .unwrap(),
        [SrvRecord {
            priority: 0,
            weight: 1,
            port: 465,
            target: "smtp.example.test".into()
        }]
    );
    assert_eq!(
        resolver.srv("_submission._tcp.example.test").await.unwrap(),
        [SrvRecord {
            priority: 10,
            weight: 5,
            port: 587,
            target: "mail.example.test".into()
        }]
    );
    assert_eq!(
        resolver.srv("_submission._tcp.none.test").await.unwrap(),
        [SrvRecord {
            priority: 0,
            weight: 0,
            port: 0,
            target: String::new()
        }]
    );
    // The domain exists but publishes no SRV there: NODATA.
    assert_eq!(
        resolver.srv("example.test").await.unwrap(),
        Vec::<SrvRecord>::new()
    );
    assert_eq!(
        resolver.srv("_submission._tcp.nowhere.test").await,
        Err(DnsError::NxDomain)
    );
    assert!(matches!(
        resolver.srv("_submissions._tcp.broken.test").await,
        Err(DnsError::Temporary(_))
    ));
}
