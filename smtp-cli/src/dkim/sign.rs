//! Signing a prepared message: the header section and the body as they go
//! on the wire, the body streamed through the hash, the DKIM-Signature
//! field put on top.

use mail_auth::common::crypto::DkimKey;
use mail_auth::common::headers::HeaderWriter as _;
use mail_auth::dkim::{Canonicalization as Canon, DkimSigner, Done};
use smtp_core::address::Mailbox;
use smtp_core::data::{BdatEncoder, BodyRules, BodyType};

use super::{Canonicalization, Key, OVERSIGNED, Options, SIGNED_FIELDS, dns_name};
use crate::fail::{EX_SOFTWARE, Failure};
use crate::message::{Prepared, field_name, read_body};

/// What [`Signer::sign`] did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Signed {
    /// A DKIM-Signature field was added.
    Added(Signature),
    /// The message already carries a DKIM-Signature and was left as it is
    /// (`--dkim-add` signs it again).
    AlreadySigned,
}

/// The signature a message got, for reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Signature {
    /// `d=`.
    pub(crate) domain: String,
    /// `s=`.
    pub(crate) selector: String,
    /// `a=`: `rsa-sha256` or `ed25519-sha256`.
    pub(crate) algorithm: &'static str,
    /// The From: domain when `d=` does not align with it (neither the
    /// same domain nor of the same organisational domain, RFC 7489
    /// relaxed alignment): DMARC does not count such a signature.
    pub(crate) unaligned_from: Option<String>,
}

/// Signs messages with one key and selector.
pub(crate) struct Signer {
    inner: DkimSigner<DkimKey, Done>,
    /// `d=` for every message; without it, each message's From: domain.
    domain: Option<String>,
    selector: String,
    algorithm: &'static str,
    add: bool,
}

impl Signer {
    /// Reads the key and checks the names, before anything is read or sent.
    pub(crate) fn load(o: &Options) -> Result<Self, Failure> {
        let key = Key::read(&o.key)?;
        Self::new(key, o)
    }

    /// A signer with `key` under the options' names.
    pub(crate) fn new(key: Key, o: &Options) -> Result<Self, Failure> {
        let selector = dns_name(&o.selector)
            .map_err(|why| Failure::usage(format!("DKIM selector {:?}: {why}", o.selector)))?;
        let domain = o
            .domain
            .as_deref()
            .map(|d| dns_name(d).map_err(|why| Failure::usage(format!("DKIM domain {d:?}: {why}"))))
            .transpose()?;
        let Canonicalization { header, body } = o.canonicalization;
        let algorithm = key.algorithm();
        let inner = DkimSigner::from_key(key.into_signing())
            .domain(domain.clone().unwrap_or_default())
            .selector(selector.clone())
            .headers(["From"])
            .header_canonicalization(canon(header))
            .body_canonicalization(canon(body));
        Ok(Self {
            inner,
            domain,
            selector,
            algorithm,
            add: o.add,
        })
    }

    /// Signs `p` as it will be sent, once every change to it is made: puts
    /// a DKIM-Signature field on top of its header section. A message that
    /// already has one is left alone unless the options say to add ours.
    pub(crate) fn sign(&mut self, p: &mut Prepared) -> Result<Signed, Failure> {
        let present = field_names(&p.head);
        if !self.add
            && present
                .iter()
                .any(|f| f.eq_ignore_ascii_case("DKIM-Signature"))
        {
            return Ok(Signed::AlreadySigned);
        }
        let froms = present
            .iter()
            .filter(|f| f.eq_ignore_ascii_case("From"))
            .count();
        if froms > 1 {
            // Readers show one From and DMARC aligns on one: which one is
            // anyone's guess (RFC 5322 §3.6 allows exactly one).
            return Err(Failure::data(format!(
                "{}: the message has {froms} From: header fields, and RFC 5322 allows one; \
                 nothing was sent: keep one From: (it may list several addresses)",
                p.name
            )));
        }
        if froms == 0 {
            // RFC 5322 §3.6 requires From, and DKIM must sign it (RFC 6376
            // §5.4): a receiver refuses or distrusts the message either way.
            return Err(Failure::data(format!(
                "{}: the message has no From: header field, which every message needs (RFC \
                 5322) and DKIM signs; nothing was sent: add a From: header (From: Name \
                 <you@example.org>)",
                p.name
            )));
        }
        let h = fields_to_sign(&present);
        if !h.iter().any(|f| {
            !f.eq_ignore_ascii_case("From") && present.iter().any(|p| p.eq_ignore_ascii_case(f))
        }) {
            // Only From: a message with nothing else to sign is refused.
            return Err(Failure::data(format!(
                "{}: the message has none of the header fields DKIM signs (From, Subject, Date, \
                 …); nothing was sent",
                p.name
            )));
        }
        let (domain, from) = match (&self.domain, from_domain(p)) {
            (Some(d), from) => (d.clone(), from.ok()),
            (None, Ok(f)) => (f.clone(), Some(f)),
            (None, Err(e)) => return Err(e),
        };
        let unaligned_from = from.filter(|f| !super::aligned(&domain, f));
        self.inner.template.d = domain.clone();
        self.inner.template.h = h;
        let mut stream = self.inner.sign_streaming();
        stream.write(&p.head);
        // The body as the session sends it: line ends made CRLF (and a
        // last line ended) unless it goes as BINARYMIME, byte for byte.
        let rules = match p.body_type {
            BodyType::BinaryMime => BodyRules::BINARY,
            _ => BodyRules {
                allow_8bit: true,
                allow_nul: true,
                max_line_len: None,
                binary: false,
            },
        };
        let mut encoder = BdatEncoder::new(rules);
        let mut wire = Vec::new();
        let internal = |e: &dyn std::fmt::Display| {
            Failure::new(
                EX_SOFTWARE,
                format!(
                    "{}: internal error: DKIM signing failed ({e}); nothing was sent",
                    p.name
                ),
            )
        };
        read_body(&p.body, &p.name, |chunk| {
            wire.clear();
            encoder.encode(chunk, &mut wire).map_err(|e| internal(&e))?;
            stream.write(&wire);
            Ok(())
        })?;
        wire.clear();
        encoder.finish(&mut wire).map_err(|e| internal(&e))?;
        stream.write(&wire);
        let signature = stream.finish().map_err(|e| internal(&e))?;
        let field = signature.to_header().into_bytes();
        p.size += field.len() as u64;
        let mut head = field;
        head.extend_from_slice(&p.head);
        p.head = head;
        Ok(Signed::Added(Signature {
            domain,
            selector: self.selector.clone(),
            algorithm: self.algorithm,
            unaligned_from,
        }))
    }
}

fn canon(c: super::Canon) -> Canon {
    match c {
        super::Canon::Relaxed => Canon::Relaxed,
        super::Canon::Simple => Canon::Simple,
    }
}

/// The domain of the message's From: address, the usual `d=` (DMARC
/// aligns on it).
fn from_domain(p: &Prepared) -> Result<String, Failure> {
    let no_domain = || {
        Failure::data(format!(
            "{}: its From: field holds no address with a domain to sign for; nothing was sent: \
             fix the From: header to one address (From: Name <you@example.org>)",
            p.name
        ))
    };
    let from = p.from.as_deref().ok_or_else(no_domain)?;
    let mailbox = Mailbox::parse(from).map_err(|_| no_domain())?;
    dns_name(mailbox.domain().as_str()).map_err(|_| no_domain())
}

/// The names of the header fields in a header section, in order.
pub(super) fn field_names(head: &[u8]) -> Vec<String> {
    head.split(|&b| b == b'\n')
        .filter(|l| !matches!(l.first(), Some(b' ' | b'\t')))
        .filter_map(field_name)
        .map(|n| String::from_utf8_lossy(n).into_owned())
        .collect()
}

/// `h=` as mail-auth takes it: each field of [`SIGNED_FIELDS`] the
/// message has, named once (mail-auth signs every instance of a listed
/// name); each of [`OVERSIGNED`] named once more, present or not (mail-auth
/// lists a name it did not find as an absent instance): a From, Subject or
/// Reply-To added to the message later breaks the signature.
pub(super) fn fields_to_sign(present: &[String]) -> Vec<String> {
    let mut h = Vec::new();
    for field in SIGNED_FIELDS {
        if present.iter().any(|p| p.eq_ignore_ascii_case(field)) {
            h.push((*field).to_owned());
        }
        if OVERSIGNED.contains(field) {
            h.push((*field).to_owned());
        }
    }
    h
}
