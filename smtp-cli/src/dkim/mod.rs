//! DKIM signing (RFC 6376; Ed25519 by RFC 8463): `smtp send --dkim-key`
//! and an account's `dkim_*` keys sign each message, and `smtp dkim
//! keygen` makes a key and prints the DNS record that publishes it.
//!
//! Where signing sits: last in the preparation of a message, after every
//! change `smtp` makes to it (Date and Message-ID added, Bcc removed,
//! long lines re-encoded, sendmail's From added), so the signature
//! covers the bytes that go out. A queued message is signed once, when
//! `send --queue` enqueues it; `queue run` sends the stored, signed bytes
//! and never signs.
//!
//! ```text
//! message ──> prepare (message/) ──> re-encode (reencode/) ──> add From
//!         ──> sign (Signer::sign) ──> send, or enqueue
//! ```
//!
//! Streaming: the body is read in chunks, its line ends made CRLF as the
//! DATA encoder makes them ([`smtp_core::data::BdatEncoder`]), and fed to
//! mail-auth's streaming signer, which canonicalises and hashes it as it
//! comes. Only the header section is held, so memory stays the same for a
//! message of 1 KiB or 1 GiB; a message file is read once more for it.
//!
//! mail-auth does the canonicalisation and the cryptography (on ring); its
//! types stay in this module.

mod key;
mod keygen;
mod sign;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

pub(crate) use key::{Key, Kind};
pub(crate) use keygen::{keygen, record};
pub(crate) use sign::{Signed, Signer};

use smtp_core::address::Domain;

use crate::cli::SendArgs;
use crate::fail::Failure;

/// The header fields signed when present: RFC 6376 §5.4.1's list, the
/// MIME fields, and RFC 8058's List-Unsubscribe-Post. Those of
/// [`OVERSIGNED`] are signed once more than they occur.
pub(crate) const SIGNED_FIELDS: &[&str] = &[
    "From",
    "Sender",
    "Reply-To",
    "Subject",
    "Date",
    "Message-ID",
    "To",
    "Cc",
    "In-Reply-To",
    "References",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "Content-ID",
    "Content-Description",
    "Content-Disposition",
    "Content-Language",
    "Resent-Date",
    "Resent-From",
    "Resent-Sender",
    "Resent-To",
    "Resent-Cc",
    "Resent-Message-ID",
    "List-Id",
    "List-Help",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "List-Subscribe",
    "List-Post",
    "List-Owner",
    "List-Archive",
];

/// The fields a reader trusts, signed once more than they occur (RFC 6376
/// §8.15): a From, Subject or Reply-To added to a signed message, above or
/// below, breaks the signature instead of passing unsigned.
pub(crate) const OVERSIGNED: &[&str] = &[
    "From",
    "Sender",
    "Reply-To",
    "Subject",
    "Date",
    "Message-ID",
    "To",
    "Cc",
    "In-Reply-To",
    "References",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
];

/// One of DKIM's two canonicalisations (RFC 6376 §3.4).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Canon {
    /// White space runs count as one space, trailing white space and
    /// header name case do not count: survives common rewrapping.
    #[default]
    Relaxed,
    /// The bytes as they are (trailing empty lines of the body aside).
    Simple,
}

impl Canon {
    fn name(self) -> &'static str {
        match self {
            Self::Relaxed => "relaxed",
            Self::Simple => "simple",
        }
    }
}

/// The `c=` tag: header and body canonicalisation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Canonicalization {
    pub(crate) header: Canon,
    pub(crate) body: Canon,
}

impl FromStr for Canonicalization {
    type Err = String;

    /// `relaxed` (relaxed/relaxed), `simple` (simple/simple), or
    /// `HEADER/BODY` as in the `c=` tag.
    fn from_str(s: &str) -> Result<Self, String> {
        let one = |w: &str| match w.trim().to_ascii_lowercase().as_str() {
            "relaxed" => Ok(Canon::Relaxed),
            "simple" => Ok(Canon::Simple),
            _ => Err(format!(
                "{s:?}: give relaxed, simple, or HEADER/BODY (relaxed/simple, simple/relaxed, …)"
            )),
        };
        match s.split_once('/') {
            Some((h, b)) => Ok(Self {
                header: one(h)?,
                body: one(b)?,
            }),
            None => {
                let c = one(s)?;
                Ok(Self { header: c, body: c })
            }
        }
    }
}

impl fmt::Display for Canonicalization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.header.name(), self.body.name())
    }
}

/// What to sign with, from the command line or the account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Options {
    /// The private key's PEM file.
    pub(crate) key: PathBuf,
    /// The selector (`s=`): the public key is at `SELECTOR._domainkey.DOMAIN`.
    pub(crate) selector: String,
    /// The signing domain (`d=`); without it, each message's From: domain.
    pub(crate) domain: Option<String>,
    pub(crate) canonicalization: Canonicalization,
    /// Sign a message that already carries a DKIM-Signature, adding ours.
    pub(crate) add: bool,
}

/// An account's DKIM settings (`dkim_key`, `dkim_selector`,
/// `dkim_domain`, `dkim_canonicalization`).
#[derive(Clone, Debug, Default)]
pub(crate) struct AccountDkim {
    pub(crate) key: Option<PathBuf>,
    pub(crate) selector: Option<String>,
    pub(crate) domain: Option<String>,
    pub(crate) canonicalization: Option<String>,
}

/// The DKIM options of a send: the command line's `--dkim-key` (with its
/// `--dkim-selector` and `--dkim-domain`) replaces the account's key,
/// selector and domain as a whole, so a key never goes out under another
/// key's selector; `--dkim-canonicalization` applies to either.
pub(crate) fn options(args: &SendArgs, account: AccountDkim) -> Result<Option<Options>, Failure> {
    let canonicalization = match (&args.dkim_canonicalization, &account.canonicalization) {
        (Some(c), _) => Some(*c),
        (None, Some(text)) => Some(
            text.parse()
                .map_err(|e| Failure::config(format!("dkim_canonicalization {e}")))?,
        ),
        (None, None) => None,
    };
    let (key, selector, domain, from) = match &args.dkim_key {
        Some(key) => (
            key.clone(),
            args.dkim_selector.clone(),
            args.dkim_domain.clone(),
            "--dkim-selector",
        ),
        None => {
            if args.dkim_selector.is_some() || args.dkim_domain.is_some() {
                return Err(Failure::usage(
                    "--dkim-selector and --dkim-domain go with --dkim-key FILE, which names the \
                     key they belong to",
                ));
            }
            match account.key {
                Some(key) => (key, account.selector, account.domain, "dkim_selector"),
                None if account.selector.is_some() || account.domain.is_some() => {
                    return Err(Failure::config(
                        "the account has dkim_selector or dkim_domain but no dkim_key: add \
                         dkim_key = \"FILE\" (the private key's PEM file)",
                    ));
                }
                None => {
                    if args.dkim_add || args.dkim_canonicalization.is_some() {
                        return Err(Failure::usage(
                            "--dkim-add and --dkim-canonicalization need a key to sign with: \
                             --dkim-key FILE --dkim-selector S (or an account's dkim_key)",
                        ));
                    }
                    return Ok(None);
                }
            }
        }
    };
    let selector = selector.ok_or_else(|| {
        let code = if args.dkim_key.is_some() {
            crate::fail::EX_USAGE
        } else {
            crate::fail::EX_CONFIG
        };
        Failure::new(
            code,
            format!(
                "signing with {} needs a selector: {from} S, where the public key is published \
                 at S._domainkey.DOMAIN",
                key.display()
            ),
        )
    })?;
    Ok(Some(Options {
        key,
        selector,
        domain,
        canonicalization: canonicalization.unwrap_or_default(),
        add: args.dkim_add,
    }))
}

/// A selector or domain as it goes in the signature and DNS: A-labels,
/// lower case; no address literal.
pub(crate) fn dns_name(name: &str) -> Result<String, String> {
    let d = Domain::parse(name).map_err(|e| e.to_string())?;
    if d.is_address_literal() {
        return Err("an address literal is not a DNS name".into());
    }
    Ok(d.as_str().to_owned())
}

/// Whether a signature by `d` counts for DMARC on mail from `from`:
/// relaxed alignment (RFC 7489 §3.1.1), the same organisational domain.
/// The organisational domain is taken as the last two labels, as no
/// public suffix list is at hand (so `a.example.co.uk` and
/// `b.example.co.uk` are taken as aligned with `example.co.uk` and with
/// each other).
pub(crate) fn aligned(d: &str, from: &str) -> bool {
    organisational(d) == organisational(from)
}

/// The last two labels of `domain`, lower case, without a final dot.
pub(crate) fn organisational(domain: &str) -> String {
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    let labels: Vec<&str> = domain.split('.').collect();
    labels[labels.len().saturating_sub(2)..].join(".")
}

#[cfg(test)]
mod tests;
