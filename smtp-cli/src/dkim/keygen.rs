//! `smtp dkim keygen`: a new signing key, written where only its owner can
//! read it, and the DNS TXT record that publishes its public half;
//! `smtp dkim record`: that record again, for a key already made.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use mail_auth::dkim::generate::DkimKeyPair;

use super::key::{
    Kind, RSA_MIN_BITS, RSA_SIZES, pkcs8_ed25519_v1, pkcs8_rsa, rsa_size_supported, to_pem,
};
use super::{Key, dns_name};
use crate::cli::{KeygenArgs, RecordArgs};
use crate::fail::{EX_CANTCREAT, EX_OK, EX_SOFTWARE, Failure};
use crate::output::JSON_VERSION;

/// A TXT record's character-strings hold at most 255 octets each.
const TXT_STRING: usize = 255;

/// `smtp dkim keygen`.
pub(crate) fn keygen(args: &KeygenArgs) -> Result<u8, Failure> {
    let (selector, domain) = names(&args.selector, &args.domain)?;
    let bits = args.bits.unwrap_or(RSA_MIN_BITS);
    if args.ed25519 && args.bits.is_some() {
        return Err(Failure::usage(
            "--bits is for RSA keys; an Ed25519 key has no size to choose",
        ));
    }
    if !args.ed25519 && !rsa_size_supported(bits) {
        return Err(Failure::usage(format!(
            "--bits {bits}: give {RSA_SIZES} (multiples of 512, which the signing library \
             needs; 2048 is what receivers expect, 3072 or 4096 if you want more)"
        )));
    }
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("{selector}.{domain}.pem")));
    let internal =
        |e: mail_auth::Error| Failure::new(EX_SOFTWARE, format!("cannot make the key: {e}"));
    let pem = if args.ed25519 {
        let pair = DkimKeyPair::generate_ed25519().map_err(internal)?;
        let v1 = pkcs8_ed25519_v1(pair.private_key()).ok_or_else(|| {
            Failure::new(
                EX_SOFTWARE,
                "internal error: the new Ed25519 key is malformed",
            )
        })?;
        to_pem("PRIVATE KEY", &v1)
    } else {
        let pair = DkimKeyPair::generate_rsa(bits).map_err(internal)?;
        to_pem("PRIVATE KEY", &pkcs8_rsa(pair.private_key()))
    };
    // The key as it will be read when signing: what is published is what
    // signs.
    let key = Key::from_pem(pem.as_bytes()).map_err(|e| {
        Failure::new(
            EX_SOFTWARE,
            format!("internal error: the new key does not read back: {e}"),
        )
    })?;
    write_private(&out, pem.as_bytes())?;
    print(&selector, &domain, &key, &out, true, args.json);
    Ok(EX_OK)
}

/// `smtp dkim record`.
pub(crate) fn record(args: &RecordArgs) -> Result<u8, Failure> {
    let (selector, domain) = names(&args.selector, &args.domain)?;
    let key = Key::read(&args.key)?;
    print(&selector, &domain, &key, &args.key, false, args.json);
    Ok(EX_OK)
}

fn names(selector: &str, domain: &str) -> Result<(String, String), Failure> {
    let selector = dns_name(selector)
        .map_err(|why| Failure::usage(format!("--selector {selector:?}: {why}")))?;
    let domain =
        dns_name(domain).map_err(|why| Failure::usage(format!("--domain {domain:?}: {why}")))?;
    Ok((selector, domain))
}

/// Creates `path` new, readable and writable by its owner only, with the
/// key in it, on disk before this returns. An existing file is never
/// overwritten: it may be the key a published record belongs to.
fn write_private(path: &Path, pem: &[u8]) -> Result<(), Failure> {
    let fail = |e: std::io::Error| {
        let advice = if e.kind() == std::io::ErrorKind::AlreadyExists {
            "it exists and is kept (it may be a key in use); give another --out, or remove it \
             first"
                .to_owned()
        } else {
            e.to_string()
        };
        Failure::new(
            EX_CANTCREAT,
            format!("cannot write the key to {}: {advice}", path.display()),
        )
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(fail)?;
    let written = file.write_all(pem).and_then(|()| file.sync_all());
    if let Err(e) = written {
        let _ = std::fs::remove_file(path);
        return Err(fail(e));
    }
    Ok(())
}

/// The record as a zone file line: the value split in strings of at most
/// 255 octets, which the DNS joins back.
pub(super) fn zone_line(name: &str, value: &str) -> String {
    let strings: Vec<String> = value
        .as_bytes()
        .chunks(TXT_STRING)
        // The value is ASCII (tags and base64).
        .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
        .collect();
    format!("{name}. IN TXT ( {} )", strings.join(" "))
}

/// Says where the key is (`written`: just made) and what to publish.
fn print(selector: &str, domain: &str, key: &Key, path: &Path, written: bool, json: bool) {
    let file = written.then_some(path);
    let name = format!("{selector}._domainkey.{domain}");
    let value = key.record();
    let zone = zone_line(&name, &value);
    let bits = match key.kind() {
        Kind::Rsa { bits } => Some(bits),
        Kind::Ed25519 => None,
    };
    if json {
        let v = serde_json::json!({
            "version": JSON_VERSION,
            "key_file": file.map(|f| f.display().to_string()),
            "algorithm": key.algorithm(),
            "bits": bits,
            "selector": selector,
            "domain": domain,
            "name": name,
            "type": "TXT",
            "value": value,
            "zone": zone,
        });
        say!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return;
    }
    let what = match bits {
        Some(b) => format!("an RSA key of {b} bits (rsa-sha256)"),
        None => "an Ed25519 key (ed25519-sha256)".to_owned(),
    };
    if let Some(f) = file {
        say!(
            "wrote {}: {what}, readable by you only (mode 0600); keep it secret",
            f.display()
        );
    }
    let key_arg = path.display().to_string();
    say!("publish this TXT record in the DNS of {domain}:");
    say!("");
    say!("{zone}");
    say!("");
    say!("or, in a DNS provider's form:");
    say!("  name:  {name}");
    say!("  type:  TXT");
    say!("  value: {value}");
    say!("");
    say!(
        "then sign with: smtp send --dkim-key {key_arg} --dkim-selector {selector} \
         --dkim-domain {domain} …"
    );
    if bits.is_none() {
        say!(
            "note: not every receiver verifies Ed25519 signatures yet (RFC 8463 is from 2018); \
             an RSA key is the choice that every verifier takes"
        );
    }
}
