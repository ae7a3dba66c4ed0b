//! Where to send and how: one [`Server`] holds every setting of a session
//! with a submission server, each in one place.

use std::time::Instant;

use rustls::crypto::SecureRandom;
use smtp_core::ehlo::ClientId;
use smtp_core::sasl::{AuthChoice, Credentials};
use smtp_core::{Client, Config, Timeouts, TlsPolicy};

use crate::error::Error;
use crate::trust::Trust;

/// A server to submit mail through, and how: the one settings type of
/// standard delivery, read by [`Server::send`], [`Session::open`](crate::Session::open),
/// [`Pool`](crate::Pool) and [`TcpTransport::connect`](crate::TcpTransport::connect).
///
/// [`Server::new`] gives the safe defaults (Certified, the web PKI roots,
/// implicit TLS on port 465); the `with_*` methods change one setting each.
///
/// ```
/// use smtp_core::TlsPolicy;
/// use smtp_tls::{Server, Trust};
///
/// # fn main() -> std::io::Result<()> {
/// let mut trust = Trust::new().without_web_pki_roots();
/// # let pem = smtp_testkit::certs::TestCa::new().cert_pem();
/// trust.add_ca_pem(pem.as_bytes())?; // a private CA
/// let server = Server::new("10.0.0.25", 587)
///     .with_policy(TlsPolicy::Certified)
///     .with_trust(trust)
///     .with_server_name("mail.internal.example");
/// assert!(!server.implicit_tls);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Server {
    /// Host name or address.
    pub host: String,
    /// Port: 25, 587, 465, …
    pub port: u16,
    /// TLS from the first byte (the default on port 465).
    pub implicit_tls: bool,
    /// The encryption policy (see the crate's matrix). Certified by default.
    pub policy: TlsPolicy,
    /// The trust anchors a certificate is verified against.
    pub trust: Trust,
    /// The name the certificate is checked against (and sent as SNI), when
    /// it is not [`host`](Self::host): a server reached by its address.
    pub server_name: Option<String>,
    /// The name sent with EHLO.
    pub client_id: ClientId,
    /// Credentials for AUTH, if any.
    pub credentials: Option<Credentials>,
    /// Which mechanism.
    pub auth: AuthChoice,
    /// The most PBKDF2 iterations a SCRAM-SHA-256 server may ask for
    /// (`Config::max_scram_iterations`).
    pub max_scram_iterations: u32,
    /// Deadlines: connecting, the TLS handshake, each reply.
    pub timeouts: Timeouts,
    /// Keep the session's transcript (secrets redacted) in its report and
    /// show it to observers. (The transcript also goes to `tracing`, target
    /// `smtp_core::transcript` at TRACE, whenever a subscriber listens.)
    pub transcript: bool,
}

impl Server {
    /// `host:port` with the policy Certified and the web PKI roots; implicit
    /// TLS on port 465; EHLO as `localhost`; no AUTH; RFC 5321's timeouts.
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        Self {
            host: host.into(),
            port,
            implicit_tls: port == 465,
            policy: TlsPolicy::Certified,
            trust: Trust::new(),
            server_name: None,
            client_id: ClientId::localhost(),
            credentials: None,
            auth: AuthChoice::Auto,
            max_scram_iterations: smtp_core::sasl::DEFAULT_MAX_ITERATIONS,
            timeouts: Timeouts::default(),
            transcript: false,
        }
    }

    /// TLS from the first byte, or not (then STARTTLS as the policy says).
    #[must_use]
    pub fn with_implicit_tls(mut self, implicit_tls: bool) -> Self {
        self.implicit_tls = implicit_tls;
        self
    }

    /// The encryption policy.
    #[must_use]
    pub fn with_policy(mut self, policy: TlsPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// The trust anchors.
    #[must_use]
    pub fn with_trust(mut self, trust: Trust) -> Self {
        self.trust = trust;
        self
    }

    /// Checks the certificate against `name` instead of the host.
    #[must_use]
    pub fn with_server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = Some(name.into());
        self
    }

    /// The name sent with EHLO.
    #[must_use]
    pub fn with_client_id(mut self, client_id: ClientId) -> Self {
        self.client_id = client_id;
        self
    }

    /// Authenticates with `credentials`.
    #[must_use]
    pub fn with_credentials(mut self, credentials: Credentials) -> Self {
        self.credentials = Some(credentials);
        self
    }

    /// Which AUTH mechanism.
    #[must_use]
    pub fn with_auth(mut self, auth: AuthChoice) -> Self {
        self.auth = auth;
        self
    }

    /// The most PBKDF2 iterations a SCRAM-SHA-256 server may ask for.
    #[must_use]
    pub fn with_max_scram_iterations(mut self, iterations: u32) -> Self {
        self.max_scram_iterations = iterations;
        self
    }

    /// The deadlines.
    #[must_use]
    pub fn with_timeouts(mut self, timeouts: Timeouts) -> Self {
        self.timeouts = timeouts;
        self
    }

    /// Keeps the transcript in the report.
    #[must_use]
    pub fn with_transcript(mut self, transcript: bool) -> Self {
        self.transcript = transcript;
        self
    }

    /// The sans-IO client for one session with this server, configured as
    /// it says (policy, implicit TLS, timeouts, client name, credentials with
    /// a fresh SASL nonce, transcript): for a caller that drives the session
    /// itself over [`TcpTransport::connect`](crate::TcpTransport::connect).
    /// Fails only when credentials need a nonce and the system has no
    /// randomness to give. The client keeps a transcript also when a
    /// tracing subscriber listens to it (see [`transcript`](Self::transcript)).
    pub fn client(&self, now: Instant) -> Result<Client, Error> {
        Ok(Client::new(self.config(self.policy)?, now))
    }

    /// The core's configuration under `policy` (the plaintext retry runs
    /// under None): the one place it is derived from these settings.
    pub(crate) fn config(&self, policy: TlsPolicy) -> Result<Config, Error> {
        // The core keeps a transcript for a tracing subscriber that listens
        // too; the session files it only when `transcript` asks for it.
        let listening = tracing::enabled!(target: "smtp_core::transcript", tracing::Level::TRACE);
        let mut config = Config::new(self.client_id.clone())
            .with_tls(policy)
            .with_implicit_tls(self.implicit_tls)
            .with_timeouts(self.timeouts)
            .with_transcript(self.transcript || listening);
        if let Some(credentials) = &self.credentials {
            config = config.with_credentials(credentials.clone(), self.auth, sasl_nonce()?);
            config.max_scram_iterations = self.max_scram_iterations;
        }
        Ok(config)
    }

    /// The name the certificate is checked against: the server name, or
    /// else the host (an IPv6 address without its brackets).
    pub(crate) fn tls_name(&self) -> &str {
        self.server_name
            .as_deref()
            .unwrap_or(&self.host)
            .trim_start_matches('[')
            .trim_end_matches(']')
    }

    /// Under Optional, a failed STARTTLS handshake may be retried once in
    /// plaintext: never on implicit TLS, never with credentials.
    pub(crate) fn may_retry_plaintext(&self) -> bool {
        self.policy == TlsPolicy::Optional && !self.implicit_tls && self.credentials.is_none()
    }

    /// The tracing span of a session with this server (no secret in it).
    pub(crate) fn span(&self) -> tracing::Span {
        tracing::info_span!(
            "smtp.session",
            host = %self.host,
            port = self.port,
            policy = %self.policy,
            implicit_tls = self.implicit_tls,
        )
    }
}

/// Random bytes for SASL nonces (`Config::with_credentials`), from the TLS
/// provider's generator; an error when it fails, never a predictable value.
fn sasl_nonce() -> Result<Vec<u8>, Error> {
    nonce_from(rustls::crypto::ring::default_provider().secure_random)
}

/// [`sasl_nonce`] from `random`. A generator that fails is an error: SCRAM with
/// a predictable nonce would let a recorded exchange be replayed, so there
/// is no fallback value.
fn nonce_from(random: &dyn SecureRandom) -> Result<Vec<u8>, Error> {
    let mut bytes = vec![0u8; 24];
    random.fill(&mut bytes).map_err(|_| Error::NoRandomness {
        purpose: "the SASL nonce",
    })?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::crypto::GetRandomFailed;

    /// A generator that always fails, as a broken system one would.
    #[derive(Debug)]
    struct Broken;

    impl SecureRandom for Broken {
        fn fill(&self, _: &mut [u8]) -> Result<(), GetRandomFailed> {
            Err(GetRandomFailed)
        }
    }

    #[test]
    fn a_failing_generator_is_an_error_never_a_predictable_nonce() {
        let err = nonce_from(&Broken).expect_err("no nonce without randomness");
        assert_eq!(
            err,
            Error::NoRandomness {
                purpose: "the SASL nonce"
            }
        );
        assert!(err.to_string().contains("random"), "{err}");
    }

    #[test]
    fn nonces_come_from_the_generator() {
        let a = sasl_nonce().expect("the system has randomness");
        let b = sasl_nonce().expect("the system has randomness");
        assert_eq!(a.len(), 24);
        assert_ne!(a, b);
        assert_ne!(a, [0u8; 24]);
    }

    #[test]
    fn the_certificate_is_checked_against_the_server_name_or_the_host() {
        assert_eq!(Server::new("[::1]", 25).tls_name(), "::1");
        let named = Server::new("192.0.2.1", 587).with_server_name("mail.example");
        assert_eq!(named.tls_name(), "mail.example");
    }

    #[test]
    fn port_465_means_implicit_tls_and_certified_is_the_default() {
        let s = Server::new("mail.example", 465);
        assert!(s.implicit_tls);
        assert_eq!(s.policy, TlsPolicy::Certified);
        assert!(!Server::new("mail.example", 587).implicit_tls);
    }
}
