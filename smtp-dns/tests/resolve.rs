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
