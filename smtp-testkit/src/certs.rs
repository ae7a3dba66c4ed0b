//! Certificates made on the fly: a test CA and the leaves it signs (valid or
//! expired), self-signed ones, and rustls server configurations for them.

use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, date_time_ymd,
};
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A certificate authority for tests.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    cert: CertificateDer<'static>,
    pem: String,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TestCa")
    }
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

/// A certificate chain and its private key.
#[derive(Debug)]
pub struct Identity {
    /// The chain, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's private key (PKCS #8).
    pub key: PrivateKeyDer<'static>,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Self {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

fn leaf_params(names: &[&str], expired: bool) -> CertificateParams {
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    // Names come from the test itself; an invalid one is a bug in the test.
    let mut params = CertificateParams::new(names.clone()).expect("valid certificate names");
    if let Some(first) = names.first() {
        params
            .distinguished_name
            .push(DnType::CommonName, first.as_str());
    }
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    if expired {
        params.not_before = date_time_ymd(2019, 1, 1);
        params.not_after = date_time_ymd(2020, 1, 1);
    }
    params
}

fn key() -> KeyPair {
    // Key generation with the built-in provider does not fail.
    KeyPair::generate().expect("key generation")
}

impl TestCa {
    /// A new self-signed CA, "smtp-toolkit test CA".
    pub fn new() -> Self {
        let key = key();
        // Fixed, valid parameters: these cannot fail.
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params
            .distinguished_name
            .push(DnType::CommonName, "smtp-toolkit test CA");
        let cert = params.self_signed(&key).expect("self-signed CA");
        Self {
            pem: cert.pem(),
            cert: cert.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    /// The CA certificate as PEM (what a client's `--ca-file` holds).
    pub fn cert_pem(&self) -> String {
        self.pem.clone()
    }

    /// The CA certificate.
    pub fn cert_der(&self) -> CertificateDer<'static> {
        self.cert.clone()
    }

    fn sign(&self, names: &[&str], expired: bool) -> Identity {
        let key = key();
        let cert = leaf_params(names, expired)
            .signed_by(&key, &self.issuer)
            .expect("signed leaf");
        Identity {
            chain: vec![cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        }
    }

    /// A leaf for `names` (DNS names or IP addresses), valid now.
    pub fn leaf(&self, names: &[&str]) -> Identity {
        self.sign(names, false)
    }

    /// A leaf for `names` whose subject common name is `common_name`, any
    /// text at all (e.g. one holding terminal escapes, to test that a
    /// client never prints it raw).
    pub fn leaf_with_common_name(&self, names: &[&str], common_name: &str) -> Identity {
        let key = key();
        let mut params = leaf_params(names, false);
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        let cert = params.signed_by(&key, &self.issuer).expect("signed leaf");
        Identity {
            chain: vec![cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        }
    }

    /// A leaf for `names` that expired in 2020.
    pub fn expired_leaf(&self, names: &[&str]) -> Identity {
        self.sign(names, true)
    }
}

impl Identity {
    /// A self-signed certificate for `names`.
    pub fn self_signed(names: &[&str]) -> Self {
        let key = key();
        let cert = leaf_params(names, false)
            .self_signed(&key)
            .expect("self-signed leaf");
        Self {
            chain: vec![cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        }
    }

    /// A certificate chain and key from PEM text, as `openssl` writes them.
    pub fn from_pem(chain: &[u8], key: &[u8]) -> std::io::Result<Self> {
        let invalid = |e: pem::Error| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
        let chain = CertificateDer::pem_slice_iter(chain)
            .collect::<Result<Vec<_>, _>>()
            .map_err(invalid)?;
        let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| match e {
            pem::Error::NoItemsFound => {
                std::io::Error::new(std::io::ErrorKind::InvalidData, "no PEM private key")
            }
            e => invalid(e),
        })?;
        Ok(Self { chain, key })
    }

    /// A rustls server configuration (TLS 1.2 and 1.3, ring provider).
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .expect("ring supports TLS 1.2 and 1.3")
            .with_no_client_auth()
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .expect("the key matches the certificate");
        Arc::new(config)
    }
}
