//! DKIM private keys, read from PEM files: RSA as PKCS#1 (`RSA PRIVATE
//! KEY`) or PKCS#8 (`PRIVATE KEY`), of 2048 to 4096 bits in steps of 512
//! (RFC 8301: signers use 2048 or more, verifiers take 1024 too; ring signs
//! 2048 to 4096 bits, multiples of 512 only, so a 1024-bit key is refused
//! with that said);
//! Ed25519 as PKCS#8 (RFC 8463). The public key is given as the DNS TXT
//! record publishes it.
//!
//! A key's contents never appear in an error: a message names the file
//! and what is wrong with it, never a byte of it.

use std::fmt;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use mail_auth::common::crypto::{DkimKey, Ed25519Key, RsaKey, Sha256};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs1KeyDer};

use crate::fail::Failure;

/// The largest key file read: a 4096-bit RSA key in PEM is about 3.3 KiB.
const MAX_FILE: u64 = 64 * 1024;

/// RSA moduli accepted, in bits: 2048 to 4096, in steps of 512 (ring
/// signs only with moduli of a multiple of 512 bits).
pub(crate) const RSA_MIN_BITS: usize = 2048;
pub(crate) const RSA_MAX_BITS: usize = 4096;
const RSA_STEP_BITS: usize = 512;

/// The RSA sizes smtp signs with, in words.
pub(crate) const RSA_SIZES: &str = "2048, 2560, 3072, 3584 or 4096";

/// Whether smtp can sign with an RSA key of `bits`.
pub(crate) fn rsa_size_supported(bits: usize) -> bool {
    (RSA_MIN_BITS..=RSA_MAX_BITS).contains(&bits) && bits.is_multiple_of(RSA_STEP_BITS)
}

/// DER tags.
const SEQUENCE: u8 = 0x30;
const INTEGER: u8 = 0x02;
const OCTET_STRING: u8 = 0x04;
const BIT_STRING: u8 = 0x03;
const OID: u8 = 0x06;
const NULL: u8 = 0x05;

/// 1.2.840.113549.1.1.1 (rsaEncryption), 1.3.101.112 (Ed25519).
const RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
const ED25519: &[u8] = &[0x2b, 0x65, 0x70];

/// A private key ready to sign, and its public half.
pub(crate) struct Key {
    signing: DkimKey,
    kind: Kind,
    /// The `p=` of the TXT record: SubjectPublicKeyInfo for RSA, the 32
    /// raw octets for Ed25519.
    public: Vec<u8>,
}

/// What kind of key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Rsa { bits: usize },
    Ed25519,
}

/// Why a file is not a usable key, in words that say what to do.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum KeyError {
    NotPem,
    Encrypted,
    PublicOnly(&'static str),
    OtherAlgorithm(String),
    Malformed(&'static str),
    RsaSize(usize),
    Refused { what: &'static str, reason: String },
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const MAKE: &str = "make one with `smtp dkim keygen`";
        match self {
            Self::NotPem => write!(
                f,
                "not a PEM private key (no \"-----BEGIN … PRIVATE KEY-----\" block); DKIM signs \
                 with an RSA or Ed25519 private key in PEM; {MAKE}"
            ),
            Self::Encrypted => f.write_str(
                "the key is encrypted with a passphrase, and smtp has no way to ask for one; \
                 store it decrypted (openssl pkey -in KEY -out PLAIN.pem) where only you can \
                 read it (chmod 600)",
            ),
            Self::PublicOnly(what) => write!(
                f,
                "it holds {what}, not a private key: give the private key's file (the public \
                 key goes in DNS)"
            ),
            Self::OtherAlgorithm(what) => write!(
                f,
                "it holds {what}; DKIM signs with RSA (rsa-sha256) or Ed25519 (ed25519-sha256); \
                 {MAKE}"
            ),
            Self::Malformed(what) => write!(f, "the key is damaged ({what}); {MAKE}"),
            Self::RsaSize(bits) if *bits < RSA_MIN_BITS => write!(
                f,
                "the RSA key has {bits} bits, under the {RSA_MIN_BITS} that RFC 8301 asks signers \
                 to use (verifiers may still take 1024, but such a key is weak, and ring, the \
                 library smtp signs with, refuses it); smtp signs with RSA keys of {RSA_SIZES} \
                 bits: {MAKE} (2048 bits by default), publish its record under a new selector, \
                 and sign with that"
            ),
            Self::RsaSize(bits) if *bits > RSA_MAX_BITS => write!(
                f,
                "the RSA key has {bits} bits; smtp signs with RSA keys of {RSA_SIZES} bits (a \
                 TXT record for a larger key is also hard to publish); {MAKE}"
            ),
            Self::RsaSize(bits) => write!(
                f,
                "the RSA key has {bits} bits, a size ring (the library smtp signs with) cannot \
                 sign with: it takes multiples of {RSA_STEP_BITS} bits, so smtp signs with RSA \
                 keys of {RSA_SIZES} bits; {MAKE} (--bits 2048 or 3072), publish its record \
                 under a new selector, and sign with that"
            ),
            Self::Refused { what, reason } => {
                write!(f, "not a valid {what} private key ({reason}); {MAKE}")
            }
        }
    }
}

impl Key {
    /// Reads the key in `path`, before anything is sent. A key other
    /// users can read gets a warning.
    pub(crate) fn read(path: &Path) -> Result<Self, Failure> {
        let fail = |what: String| Failure::config(format!("DKIM key {}: {what}", path.display()));
        // Before opening: opening a FIFO blocks until a writer comes, and a
        // device or a directory is no key file either.
        let kind = std::fs::metadata(path).map_err(|e| fail(format!("cannot read it: {e}")))?;
        if !kind.is_file() {
            return Err(fail(
                "not a regular file: give the key's PEM file (e.g. from `smtp dkim keygen`)"
                    .to_owned(),
            ));
        }
        let file = std::fs::File::open(path).map_err(|e| fail(format!("cannot read it: {e}")))?;
        let meta = file
            .metadata()
            .map_err(|e| fail(format!("cannot read it: {e}")))?;
        if !meta.is_file() || meta.len() > MAX_FILE {
            return Err(fail(KeyError::NotPem.to_string()));
        }
        let mut text = Vec::with_capacity(meta.len() as usize);
        std::io::Read::read_to_end(&mut std::io::Read::take(file, MAX_FILE), &mut text)
            .map_err(|e| fail(format!("cannot read it: {e}")))?;
        let key = Self::from_pem(&text).map_err(|e| fail(e.to_string()))?;
        if readable_by_others(&meta) {
            tell!(
                "warning: DKIM key {} can be read by other users of this machine; run: chmod 600 {}",
                path.display(),
                path.display()
            );
        }
        Ok(key)
    }

    /// The key in a PEM text.
    pub(crate) fn from_pem(text: &[u8]) -> Result<Self, KeyError> {
        let (label, der) = pem(text)?;
        match label.as_str() {
            "RSA PRIVATE KEY" => Self::rsa(&der),
            "PRIVATE KEY" => {
                let (algorithm, inner) = pkcs8(&der)?;
                match algorithm {
                    Algorithm::Rsa => Self::rsa(inner),
                    Algorithm::Ed25519 => Self::ed25519(&der),
                    Algorithm::Other => Err(KeyError::OtherAlgorithm(
                        "a private key of another algorithm (EC, perhaps)".into(),
                    )),
                }
            }
            "ENCRYPTED PRIVATE KEY" => Err(KeyError::Encrypted),
            "EC PRIVATE KEY" => Err(KeyError::OtherAlgorithm("an EC key".into())),
            "PUBLIC KEY" | "RSA PUBLIC KEY" => Err(KeyError::PublicOnly("a public key")),
            "CERTIFICATE" => Err(KeyError::PublicOnly("a certificate")),
            _ => Err(KeyError::NotPem),
        }
    }

    /// A PKCS#1 RSAPrivateKey.
    fn rsa(pkcs1: &[u8]) -> Result<Self, KeyError> {
        let bits = rsa_bits(pkcs1).ok_or(KeyError::Malformed("no RSA modulus"))?;
        if !rsa_size_supported(bits) {
            return Err(KeyError::RsaSize(bits));
        }
        let key =
            RsaKey::<Sha256>::from_key_der(PrivateKeyDer::Pkcs1(PrivatePkcs1KeyDer::from(pkcs1)))
                .map_err(|e| KeyError::Refused {
                what: "RSA",
                reason: library_reason(&e),
            })?;
        let public = spki_rsa(&key.public_key());
        Ok(Self {
            signing: DkimKey::Rsa(key),
            kind: Kind::Rsa { bits },
            public,
        })
    }

    /// A PKCS#8 Ed25519 key, v1 (as OpenSSL writes it) or v2 (with its
    /// public key, as ring writes it and checks).
    fn ed25519(pkcs8: &[u8]) -> Result<Self, KeyError> {
        let key =
            Ed25519Key::from_pkcs8_maybe_unchecked_der(pkcs8).map_err(|e| KeyError::Refused {
                what: "Ed25519",
                reason: library_reason(&e),
            })?;
        let public = key.public_key();
        Ok(Self {
            signing: DkimKey::Ed25519(key),
            kind: Kind::Ed25519,
            public,
        })
    }

    pub(crate) fn kind(&self) -> Kind {
        self.kind
    }

    /// The algorithm's name in a signature's `a=` tag.
    pub(crate) fn algorithm(&self) -> &'static str {
        match self.kind {
            Kind::Rsa { .. } => "rsa-sha256",
            Kind::Ed25519 => "ed25519-sha256",
        }
    }

    /// The TXT record's value that publishes the public key:
    /// `v=DKIM1; k=rsa; p=…` or `v=DKIM1; k=ed25519; p=…`.
    pub(crate) fn record(&self) -> String {
        let k = match self.kind {
            Kind::Rsa { .. } => "rsa",
            Kind::Ed25519 => "ed25519",
        };
        format!("v=DKIM1; k={k}; p={}", BASE64.encode(&self.public))
    }

    /// The key for mail-auth's signer.
    pub(super) fn into_signing(self) -> DkimKey {
        self.signing
    }
}

/// What a cryptography library said, without its generic prefix. The
/// libraries' reasons are fixed words ("InvalidEncoding"), never key data.
fn library_reason(e: &mail_auth::Error) -> String {
    match e {
        mail_auth::Error::Crypto(mail_auth::common::crypto::CryptoError::Library(r)) => r.clone(),
        other => other.to_string(),
    }
}

#[cfg(unix)]
fn readable_by_others(meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode() & 0o044 != 0
}

#[cfg(not(unix))]
fn readable_by_others(_: &std::fs::Metadata) -> bool {
    false
}

/// The first PEM block of `text`: its label and decoded contents. A legacy
/// encrypted block (`Proc-Type: 4,ENCRYPTED`) is [`KeyError::Encrypted`].
fn pem(text: &[u8]) -> Result<(String, Vec<u8>), KeyError> {
    let text = std::str::from_utf8(text).map_err(|_| KeyError::NotPem)?;
    let mut lines = text.lines().map(str::trim);
    let label = lines
        .by_ref()
        .find_map(|l| {
            l.strip_prefix("-----BEGIN ")
                .and_then(|rest| rest.strip_suffix("-----"))
        })
        .ok_or(KeyError::NotPem)?
        .to_owned();
    let end = format!("-----END {label}-----");
    let mut base64 = String::new();
    let mut ended = false;
    for line in lines {
        if line == end {
            ended = true;
            break;
        }
        if line.starts_with("Proc-Type:") && line.contains("ENCRYPTED") {
            return Err(KeyError::Encrypted);
        }
        if line.contains(':') || line.is_empty() {
            // RFC 1421 headers (DEK-Info: …) and the blank line after them.
            continue;
        }
        base64.push_str(line);
    }
    if !ended {
        return Err(KeyError::Malformed("the PEM block has no END line"));
    }
    let der = BASE64
        .decode(base64.as_bytes())
        .map_err(|_| KeyError::Malformed("the PEM block is not valid base64"))?;
    Ok((label, der))
}

/// A PKCS#8 key's algorithm.
enum Algorithm {
    Rsa,
    Ed25519,
    Other,
}

/// PKCS#8 PrivateKeyInfo (RFC 5958): the algorithm and the private key's
/// octets (for RSA, a PKCS#1 RSAPrivateKey).
fn pkcs8(der: &[u8]) -> Result<(Algorithm, &[u8]), KeyError> {
    const BAD: KeyError = KeyError::Malformed("not a PKCS#8 structure");
    let (info, _) = tlv(der, SEQUENCE).ok_or(BAD)?;
    let (_version, rest) = tlv(info, INTEGER).ok_or(BAD)?;
    let (identifier, rest) = tlv(rest, SEQUENCE).ok_or(BAD)?;
    let (oid, _) = tlv(identifier, OID).ok_or(BAD)?;
    let (private, _) = tlv(rest, OCTET_STRING).ok_or(BAD)?;
    let algorithm = match oid {
        RSA_ENCRYPTION => Algorithm::Rsa,
        ED25519 => Algorithm::Ed25519,
        _ => Algorithm::Other,
    };
    Ok((algorithm, private))
}

/// The modulus size of a PKCS#1 RSAPrivateKey, in bits.
fn rsa_bits(pkcs1: &[u8]) -> Option<usize> {
    let (key, _) = tlv(pkcs1, SEQUENCE)?;
    let (_version, rest) = tlv(key, INTEGER)?;
    let (modulus, _) = tlv(rest, INTEGER)?;
    let start = modulus.iter().position(|&b| b != 0)?;
    let significant = &modulus[start..];
    Some(significant.len() * 8 - significant[0].leading_zeros() as usize)
}

/// One DER element of tag `tag` at the start of `input`: its contents and
/// what follows it.
fn tlv(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&found, rest) = input.split_first()?;
    if found != tag {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |a, &b| (a << 8) | usize::from(b));
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| rest.split_at(len))
}

/// Appends a DER element.
pub(super) fn write_tlv(tag: u8, contents: &[u8], out: &mut Vec<u8>) {
    out.push(tag);
    let len = contents.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|&&b| b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(contents);
}

/// The rsaEncryption AlgorithmIdentifier (with its NULL parameters).
fn rsa_identifier() -> Vec<u8> {
    let mut inner = Vec::new();
    write_tlv(OID, RSA_ENCRYPTION, &mut inner);
    write_tlv(NULL, &[], &mut inner);
    let mut out = Vec::new();
    write_tlv(SEQUENCE, &inner, &mut out);
    out
}

/// A PKCS#1 RSAPublicKey as a SubjectPublicKeyInfo (RFC 5280), the form
/// DKIM records carry (RFC 6376 §3.6.1, as `openssl rsa -pubout` writes).
fn spki_rsa(pkcs1_public: &[u8]) -> Vec<u8> {
    let mut inner = rsa_identifier();
    let mut bits = vec![0u8];
    bits.extend_from_slice(pkcs1_public);
    write_tlv(BIT_STRING, &bits, &mut inner);
    let mut out = Vec::new();
    write_tlv(SEQUENCE, &inner, &mut out);
    out
}

/// A PKCS#1 RSAPrivateKey wrapped as PKCS#8 PrivateKeyInfo.
pub(super) fn pkcs8_rsa(pkcs1_private: &[u8]) -> Vec<u8> {
    let mut inner = Vec::new();
    write_tlv(INTEGER, &[0], &mut inner);
    inner.extend_from_slice(&rsa_identifier());
    write_tlv(OCTET_STRING, pkcs1_private, &mut inner);
    let mut out = Vec::new();
    write_tlv(SEQUENCE, &inner, &mut out);
    out
}

/// An Ed25519 PKCS#8 key in version 1 (RFC 8410, the seed alone), the
/// form OpenSSL and other signers read, from ring's version 2 (which adds
/// the public key).
pub(super) fn pkcs8_ed25519_v1(pkcs8_v2: &[u8]) -> Option<Vec<u8>> {
    let (Algorithm::Ed25519, private) = pkcs8(pkcs8_v2).ok()? else {
        return None;
    };
    let mut identifier = Vec::new();
    write_tlv(OID, ED25519, &mut identifier);
    let mut inner = Vec::new();
    write_tlv(INTEGER, &[0], &mut inner);
    write_tlv(SEQUENCE, &identifier, &mut inner);
    write_tlv(OCTET_STRING, private, &mut inner);
    let mut out = Vec::new();
    write_tlv(SEQUENCE, &inner, &mut out);
    Some(out)
}

/// DER in PEM, lines of 64 (RFC 7468).
pub(super) fn to_pem(label: &str, der: &[u8]) -> String {
    let b64 = BASE64.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        // Base64 is ASCII.
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}
