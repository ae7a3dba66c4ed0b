//! The DKIM key published at the selector, against the private key.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use mail_auth::common::parse::TxtRecordParser as _;
use mail_auth::common::verify::DomainKey;
use smtp_core::delivery::mx::DnsError;
use smtp_dns::RecordResolver;

use crate::dkim::{Key, dns_name};
use crate::doctor::{Check, Setup, Status};

/// white space (RFC 6376 §3.6.1 allows it inside `p=`).
/// Tags of a DKIM key record (`v=DKIM1; k=rsa; p=…`), values without
fn tags(record: &str) -> Vec<(String, String)> {
    record
        .split(';')
        .filter_map(|t| t.split_once('='))
        .map(|(k, v)| {
            (
                k.trim().to_ascii_lowercase(),
                v.chars().filter(|c| !c.is_ascii_whitespace()).collect(),
            )
        })
        .collect()
}

fn tag<'t>(tags: &'t [(String, String)], name: &str) -> Option<&'t str> {
    tags.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// The DKIM key published at `SELECTOR._domainkey.DOMAIN`, whether it
/// is the public half of the configured private key, and whether its
/// domain aligns with the `--from` domain (RFC 7489 relaxed alignment:
/// DMARC counts only such signatures).
pub(crate) async fn dkim(resolver: &dyn RecordResolver, setup: &Setup) -> Check {
    let mut check = published_key(resolver, setup).await;
    let d = setup.dkim.domain.as_deref().unwrap_or(&setup.domain);
    if setup.dkim.selector.is_none() || crate::dkim::aligned(d, &setup.domain) {
        return check;
    }
    let from = &setup.domain;
    let why = format!(
        "the signing domain d={d} does not align with the From domain {from}: DMARC does not \
         count its signatures for {from} (it needs the same organisational domain, {})",
        crate::dkim::organisational(from)
    );
    let fix = format!(
        "sign with --dkim-domain {from} (or another domain under {}), with a key published \
         there",
        crate::dkim::organisational(from)
    );
    if check.status == Status::Pass {
        return Check::warn(check.id, format!("{}; but {why}", check.summary), fix);
    }
    check.summary = format!("{}; and {why}", check.summary);
    check.advice = Some(match check.advice.take() {
        Some(a) => format!("{a}; and {fix}"),
        None => fix,
    });
    check
}

/// The key published at `SELECTOR._domainkey.DOMAIN` and whether it is
/// the public half of the configured private key.
async fn published_key(resolver: &dyn RecordResolver, setup: &Setup) -> Check {
    const ID: &str = "dkim";
    let Some(selector) = &setup.dkim.selector else {
        return Check::warn(
            ID,
            "not checked: no DKIM selector given",
            "give --dkim-selector S (and --dkim-key FILE, the key you sign with) or an account \
             with dkim_selector; if a relay signs for you, look for dkim=pass in a received \
             message's Authentication-Results",
        );
    };
    let domain = setup.dkim.domain.as_deref().unwrap_or(&setup.domain);
    let (selector, domain) = match (dns_name(selector), dns_name(domain)) {
        (Ok(s), Ok(d)) => (s, d),
        (Err(e), _) | (_, Err(e)) => {
            return Check::fail(
                ID,
                format!("not a DNS name: {e}"),
                "give --dkim-selector and --dkim-domain as DNS names",
            );
        }
    };
    let name = format!("{selector}._domainkey.{domain}");
    let key = match &setup.dkim.key {
        Some(path) => match Key::read(path) {
            Ok(k) => Some((path, k)),
            Err(f) => {
                return Check::fail(
                    ID,
                    f.message,
                    "give the private key you sign with (`smtp dkim keygen` makes one)",
                );
            }
        },
        None => None,
    };
    let publish = match &key {
        Some((path, _)) => format!(
            "publish the record `smtp dkim record --key {} --selector {selector} --domain {domain}` prints",
            path.display()
        ),
        None => format!(
            "make a key with `smtp dkim keygen --selector {selector} --domain {domain}` and publish the record it prints"
        ),
    };
    let records = match resolver.txt(&name).await {
        Ok(r) => r,
        Err(DnsError::NxDomain) => Vec::new(),
        Err(e) => {
            return Check::warn(
                ID,
                format!("could not look up {name}: {e}"),
                "try again, or another resolver (--dns-server)",
            );
        }
    };
    let mut keys: Vec<(String, Vec<(String, String)>)> = records
        .into_iter()
        .map(|r| {
            let t = tags(&r);
            (r, t)
        })
        .filter(|(_, t)| tag(t, "p").is_some())
        .collect();
    let (text, published) = match keys.len() {
        0 => {
            return Check::fail(
                ID,
                format!(
                    "no DKIM key is published at {name}: receivers cannot check signatures by selector {selector}"
                ),
                publish,
            );
        }
        1 => keys.remove(0),
        n => {
            return Check::fail(
                ID,
                format!("{n} DKIM key records at {name}: receivers may take either"),
                format!("keep one; {publish}"),
            );
        }
    };
    if tag(&published, "v").is_some_and(|v| v != "DKIM1") {
        return Check::fail(ID, format!("the record at {name} is not v=DKIM1"), publish);
    }
    let p = tag(&published, "p").unwrap_or_default();
    if p.is_empty() {
        return Check::fail(
            ID,
            format!("the key at {name} is revoked (empty p=): signatures by it fail"),
            publish,
        );
    }
    let k = tag(&published, "k").unwrap_or("rsa").to_ascii_lowercase();
    // A value published as one string of over 255 characters is cut at
    // 255 by some DNS tools and providers.
    let cut = if text.len() == TXT_STRING {
        format!(" (the record is exactly {TXT_STRING} characters long: it was probably cut there)")
    } else {
        String::new()
    };
    let split = format!(
        "publish the value whole: in a zone file as several quoted strings of at most \
         {TXT_STRING} characters in one TXT record (\"v=DKIM1; k=rsa; p=MIIB…\" \"…IDAQAB\"), as \
         `smtp dkim record` prints it (most DNS providers' forms take the whole value and split \
         it themselves); check with dig +short TXT {name}"
    );
    let Ok(public) = BASE64.decode(p) else {
        return Check::fail(
            ID,
            format!(
                "the p= of {name} is not whole base64 ({} characters){cut}: receivers cannot read the key",
                p.len()
            ),
            split,
        );
    };
    if let Err(why) = key_shape(&k, &public) {
        let advice = if why.cut { split } else { publish };
        return Check::fail(
            ID,
            format!(
                "the key at {name} {}{cut}: receivers cannot use it",
                why.what
            ),
            advice,
        );
    }
    if let Some((_, key)) = &key {
        let ours = match key.kind() {
            crate::dkim::Kind::Rsa { .. } => "rsa",
            crate::dkim::Kind::Ed25519 => "ed25519",
        };
        if k != ours {
            return Check::fail(
                ID,
                format!(
                    "the record at {name} says k={k}, but the key you sign with is {ours}: \
                     receivers check signatures with the wrong algorithm"
                ),
                format!("{publish} (k={ours})"),
            );
        }
    }
    if let Err(e) = DomainKey::parse(text.as_bytes()) {
        return Check::fail(
            ID,
            format!("the record at {name} does not hold a usable key ({e})"),
            publish,
        );
    }
    let Some((path, key)) = key else {
        return Check::warn(
            ID,
            format!("{name} publishes a key (k={k}); not compared with a private key"),
            "give the key you sign with (--dkim-key FILE, or an account's dkim_key) to check that it is this one",
        );
    };
    let ours = tags(&key.record());
    let ours = tag(&ours, "p")
        .and_then(|p| BASE64.decode(p).ok())
        .unwrap_or_default();
    if ours.len() > public.len() && ours.starts_with(&public) {
        return Check::fail(
            ID,
            format!(
                "{name} publishes the first {} of the {} octets of {}'s public key: its p= was \
                 cut{cut}",
                public.len(),
                ours.len(),
                path.display()
            ),
            split,
        );
    }
    if ours == public {
        Check::pass(
            ID,
            format!(
                "{name} publishes the public half of {} (k={k})",
                path.display()
            ),
        )
    } else {
        Check::fail(
            ID,
            format!(
                "{name} publishes another key than {}'s: receivers will find signatures by it invalid",
                path.display()
            ),
            format!("{publish}, or sign with the key that matches the record"),
        )
    }
}

/// A TXT record's character-strings hold at most 255 octets each.
const TXT_STRING: usize = 255;

/// Why a published `p=` is not a key of its `k=`.
struct BadKey {
    what: String,
    /// The value looks cut short (split it into strings).
    cut: bool,
}

/// Whether `public` (the decoded `p=`) has the shape of a `k` key: for
/// RSA a DER SEQUENCE (SubjectPublicKeyInfo, or PKCS#1) whose length
/// covers it exactly, for Ed25519 32 octets.
fn key_shape(k: &str, public: &[u8]) -> Result<(), BadKey> {
    let der_len = || -> Option<usize> {
        // SEQUENCE, then a definite length: short form, or 0x81/0x82 and
        // the octets.
        if public.first() != Some(&0x30) {
            return None;
        }
        let first = *public.get(1)?;
        if first < 0x80 {
            return Some(2 + usize::from(first));
        }
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 2 {
            return None;
        }
        let len = public
            .get(2..2 + n)?
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        Some(2 + n + len)
    };
    match k {
        // 32 octets first: an Ed25519 key, whatever its first octets look
        // like (one in 256 starts as a DER SEQUENCE would).
        "rsa" if public.len() == 32 => Err(BadKey {
            what: "says k=rsa, but its p= is 32 octets, an Ed25519 key (k=ed25519)".into(),
            cut: false,
        }),
        "rsa" => match der_len() {
            Some(total) if total == public.len() => Ok(()),
            Some(total) if total > public.len() => Err(BadKey {
                what: format!(
                    "is cut short: its p= holds {} of the {total} octets the key declares",
                    public.len()
                ),
                cut: true,
            }),
            _ => Err(BadKey {
                what: format!(
                    "has a p= of {} octets that is not an RSA public key",
                    public.len()
                ),
                cut: false,
            }),
        },
        "ed25519" if public.len() == 32 => Ok(()),
        "ed25519" if der_len().is_some() => Err(BadKey {
            what: "says k=ed25519, but its p= is an RSA key (k=rsa)".into(),
            cut: false,
        }),
        "ed25519" => Err(BadKey {
            what: format!(
                "has a p= of {} octets; an Ed25519 key (k=ed25519) has 32",
                public.len()
            ),
            cut: false,
        }),
        other => Err(BadKey {
            what: format!("says k={other}: DKIM keys are k=rsa or k=ed25519"),
            cut: false,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_record_tags_lose_their_white_space() {
        let t = tags("v=DKIM1; k=rsa;\tp=MIIB IjAN\r\n Bgkq ");
        assert_eq!(tag(&t, "v"), Some("DKIM1"));
        assert_eq!(tag(&t, "p"), Some("MIIBIjANBgkq"));
        assert_eq!(tag(&t, "h"), None);
    }

    #[test]
    fn a_32_octet_key_under_k_rsa_is_an_ed25519_one_even_if_it_looks_like_der() {
        let mut public = [7u8; 32];
        public[0] = 0x30;
        public[1] = 0x74;
        let e = key_shape("rsa", &public).unwrap_err();
        assert!(e.what.contains("an Ed25519 key"), "{}", e.what);
        assert!(!e.cut);
    }
}
