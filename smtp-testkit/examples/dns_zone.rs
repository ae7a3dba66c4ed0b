//! Serves a DNS zone on loopback until killed: the testkit's [`DnsServer`]
//! as a standalone program, for benchmarks and manual runs.
//!
//! ```text
//! dns_zone FILE                      the zone described in FILE
//! dns_zone --domains N [--hosts K]   N domains d0000.test … (K addresses, default 8)
//! ```
//!
//! Once serving (UDP and TCP on the same ephemeral port of 127.0.0.1), it
//! prints the address (`127.0.0.1:PORT`) as the first line of standard
//! output and flushes it, then serves until killed (SIGTERM, SIGINT).
//!
//! A zone file holds one record a line; `#` starts a comment, names are
//! case-insensitive and a trailing dot is optional:
//!
//! ```text
//! MX       d0001.test  10  mx.d0001.test
//! A        mx.d0001.test   127.0.0.3
//! AAAA     mx.d0001.test   ::1
//! CNAME    alias.test      mx.d0001.test
//! NULLMX   nomail.test
//! SERVFAIL broken.test
//! TIMEOUT  silent.test
//! TXT      _mta-sts.d0001.test  v=STSv1; id=20260101
//! ```
//!
//! A TXT record's text is the rest of its line (no quotes; a `#` still
//! starts a comment).
//!
//! `--domains N` builds, for each `i` in `0..N`, the domain `d{i:04}.test`
//! with `MX 10 mx.d{i:04}.test`, and that host's A record `127.0.0.{2 + i % K}`
//! (so with K = 8: 127.0.0.2 … 127.0.0.9). `bench/queue.sh` writes the same
//! zone as a file, beside the Postfix transport map made from it.

use std::io::Write;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::process::ExitCode;

use hickory_proto::rr::Name;
use smtp_testkit::dns::{DnsServer, Zone};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let zone = match zone(&args) {
        Ok(z) => z,
        Err(e) => {
            eprintln!("dns_zone: {e}");
            eprintln!("usage: dns_zone FILE | dns_zone --domains N [--hosts K]");
            return ExitCode::from(64);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("dns_zone: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let server = match DnsServer::start(zone).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("dns_zone: cannot serve: {e}");
                return ExitCode::FAILURE;
            }
        };
        let mut out = std::io::stdout().lock();
        if writeln!(out, "{}", server.addr())
            .and_then(|()| out.flush())
            .is_err()
        {
            return ExitCode::FAILURE;
        }
        drop(out);
        std::future::pending::<()>().await;
        ExitCode::SUCCESS
    })
}

/// The zone the arguments describe.
fn zone(args: &[String]) -> Result<Zone, String> {
    match args {
        [flag, n] if flag == "--domains" => Ok(generated(number(n)?, 8)),
        [flag, n, hosts, k] if flag == "--domains" && hosts == "--hosts" => {
            let k = number(k)?;
            if !(1..=254).contains(&k) {
                return Err(format!("--hosts {k}: between 1 and 254"));
            }
            Ok(generated(number(n)?, k))
        }
        [file] if !file.starts_with('-') => {
            let text = std::fs::read_to_string(file).map_err(|e| format!("{file}: {e}"))?;
            parse(&text).map_err(|e| format!("{file}: {e}"))
        }
        _ => Err("unexpected arguments".to_owned()),
    }
}

fn number(s: &str) -> Result<usize, String> {
    s.parse().map_err(|_| format!("{s:?} is not a number"))
}

/// `n` domains `d0000.test` …, each with its own MX host, whose address is
/// one of `k` loopback addresses from 127.0.0.2.
fn generated(n: usize, k: usize) -> Zone {
    (0..n).fold(Zone::new(), |zone, i| {
        let domain = format!("d{i:04}.test");
        let host = format!("mx.{domain}");
        // k ≤ 254, so 2 + i % k ≤ 255.
        let last = u8::try_from(2 + i % k).unwrap_or(u8::MAX);
        zone.mx(&domain, 10, &host)
            .a(&host, Ipv4Addr::new(127, 0, 0, last))
    })
}

/// Parses a zone file (see the module documentation).
fn parse(text: &str) -> Result<Zone, String> {
    let mut zone = Zone::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or_default();
        let fields: Vec<&str> = line.split_whitespace().collect();
        let bad = |what: &str| format!("line {}: {what}: {line:?}", n + 1);
        // The builder panics on an invalid name: check each first.
        let name = |s: &'_ str| -> Result<String, String> {
            Name::from_ascii(s)
                .map(|_| s.to_owned())
                .map_err(|e| bad(&format!("name {s:?}: {e}")))
        };
        zone = match fields.as_slice() {
            [] => zone,
            [kind, domain, preference, exchange] if kind.eq_ignore_ascii_case("MX") => {
                let preference = preference.parse().map_err(|_| bad("preference"))?;
                zone.mx(&name(domain)?, preference, &name(exchange)?)
            }
            [kind, host, ip] if kind.eq_ignore_ascii_case("A") => zone.a(
                &name(host)?,
                ip.parse::<Ipv4Addr>().map_err(|_| bad("IPv4 address"))?,
            ),
            [kind, host, ip] if kind.eq_ignore_ascii_case("AAAA") => zone.aaaa(
                &name(host)?,
                ip.parse::<Ipv6Addr>().map_err(|_| bad("IPv6 address"))?,
            ),
            [kind, alias, target] if kind.eq_ignore_ascii_case("CNAME") => {
                zone.cname(&name(alias)?, &name(target)?)
            }
            [kind, domain] if kind.eq_ignore_ascii_case("NULLMX") => zone.null_mx(&name(domain)?),
            [kind, host] if kind.eq_ignore_ascii_case("SERVFAIL") => zone.servfail(&name(host)?),
            [kind, host] if kind.eq_ignore_ascii_case("TIMEOUT") => zone.timeout(&name(host)?),
            // The text is the rest of the line, as written (spaces kept).
            [kind, host, _, ..] if kind.eq_ignore_ascii_case("TXT") => {
                let text = line
                    .trim_start()
                    .split_at(kind.len())
                    .1
                    .trim_start()
                    .split_at(host.len())
                    .1
                    .trim();
                zone.txt(&name(host)?, text)
            }
            _ => return Err(bad("not a record")),
        };
    }
    Ok(zone)
}
