//! Standard delivery: one session with a server the user has access to,
//! many messages through it, a report for each.

use smtp_core::command::ClientId;
use smtp_core::sasl::{AuthChoice, Credentials};
use smtp_core::transport::{BodySource, SessionReport, drive};
use smtp_core::{Client, Config, Envelope, Error, Event, Timeouts, TlsPolicy};

use rustls::crypto::SecureRandom;

use crate::config::TlsOptions;
use crate::error::ConnectError;
use crate::transport::TcpTransport;

/// One message to send.
pub struct Outgoing {
    /// The envelope.
    pub envelope: Envelope,
    /// The body, read from its start (perhaps more than once).
    pub body: Box<dyn BodySource>,
}

impl std::fmt::Debug for Outgoing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outgoing")
            .field("envelope", &self.envelope)
            .finish_non_exhaustive()
    }
}

/// A server to submit mail through, and how.
#[derive(Clone, Debug)]
pub struct Submission {
    /// Host name or address.
    pub host: String,
    /// Port: 25, 587, 465, …
    pub port: u16,
    /// TLS from the first byte (the default on port 465).
    pub implicit_tls: bool,
    /// Encryption policy and trust anchors.
    pub tls: TlsOptions,
    /// The name sent with EHLO.
    pub client_id: ClientId,
    /// Credentials for AUTH, if any.
    pub credentials: Option<Credentials>,
    /// Which mechanism.
    pub auth: AuthChoice,
    /// The most PBKDF2 iterations a SCRAM-SHA-256 server may ask for
    /// (`Config::max_scram_iterations`).
    pub max_scram_iterations: u32,
    /// Deadlines.
    pub timeouts: Timeouts,
    /// Record a transcript (secrets redacted) in the report.
    pub transcript: bool,
}

/// What a submission produced.
#[derive(Clone, Debug)]
pub struct Delivery {
    /// The session's report.
    pub session: SessionReport,
    /// The address the session ran on.
    pub peer: std::net::SocketAddr,
    /// Set when Optional fell back to plaintext after a failed handshake: why.
    pub tls_fallback: Option<String>,
}

impl Submission {
    /// A submission to `host:port` with the policy Certified (implicit TLS on 465).
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        Self {
            host: host.into(),
            port,
            implicit_tls: port == 465,
            tls: TlsOptions::new(TlsPolicy::Certified),
            client_id: ClientId::localhost(),
            credentials: None,
            auth: AuthChoice::Auto,
            max_scram_iterations: smtp_core::sasl::DEFAULT_MAX_ITERATIONS,
            timeouts: Timeouts::default(),
            transcript: false,
        }
    }

    /// The client's configuration; fails only when credentials need a
    /// nonce and the system has no randomness to give.
    fn config(&self, policy: TlsPolicy) -> Result<Config, ConnectError> {
        let mut config = Config::new(self.client_id.clone())
            .with_tls(policy)
            .with_implicit_tls(self.implicit_tls)
            .with_timeouts(self.timeouts)
            .with_transcript(self.transcript);
        if let Some(credentials) = &self.credentials {
            config = config.with_credentials(credentials.clone(), self.auth, sasl_nonce()?);
            config.max_scram_iterations = self.max_scram_iterations;
        }
        Ok(config)
    }

    /// Under Optional, a failed STARTTLS handshake may be retried once in
    /// plaintext: never on implicit TLS, never with credentials.
    pub(crate) fn may_retry_plaintext(&self) -> bool {
        self.tls.policy == TlsPolicy::Optional && !self.implicit_tls && self.credentials.is_none()
    }

    /// Connects under `policy` and makes the client for that connection.
    pub(crate) async fn start(
        &self,
        policy: TlsPolicy,
    ) -> Result<(TcpTransport, Client), ConnectError> {
        // Before connecting: without a nonce there is no session to open.
        let config = self.config(policy)?;
        let mut options = self.tls.clone();
        options.policy = policy;
        let transport = TcpTransport::connect(
            &self.host,
            self.port,
            self.implicit_tls,
            &options,
            self.timeouts.connect,
            self.timeouts.tls_handshake,
        )
        .await?;
        let now = smtp_core::transport::Transport::now(&transport);
        Ok((transport, Client::new(config, now)))
    }

    /// Sends `messages` through one session and reports on each.
    /// `observe` sees every event as it happens (transcripts, progress).
    pub async fn send(
        &self,
        messages: Vec<Outgoing>,
        observe: &mut (dyn FnMut(&Event) + Send),
    ) -> Result<Delivery, ConnectError> {
        // A message without recipients has nothing to deliver.
        let (envelopes, mut bodies): (Vec<Envelope>, Vec<Box<dyn BodySource>>) = messages
            .into_iter()
            .filter(|m| !m.envelope.to.is_empty())
            .map(|m| (m.envelope, m.body))
            .unzip();
        let policy = self.tls.policy;
        let mut delivery = self
            .session(policy, &envelopes, &mut bodies, observe)
            .await?;
        // The matrix: under Optional a failed handshake is retried once in
        // plaintext on a new connection, unless credentials would then be
        // at risk (those stay deferred).
        if let Some(Error::Tls { detail, .. }) = &delivery.session.error {
            if self.may_retry_plaintext() {
                let detail = detail.clone();
                let mut retry = self
                    .session(TlsPolicy::None, &envelopes, &mut bodies, observe)
                    .await?;
                retry.tls_fallback = Some(detail);
                delivery = retry;
            }
        }
        Ok(delivery)
    }

    async fn session(
        &self,
        policy: TlsPolicy,
        envelopes: &[Envelope],
        bodies: &mut [Box<dyn BodySource>],
        observe: &mut (dyn FnMut(&Event) + Send),
    ) -> Result<Delivery, ConnectError> {
        let (mut transport, mut client) = self.start(policy).await?;
        let now = smtp_core::transport::Transport::now(&transport);
        for envelope in envelopes {
            // Cannot fail: every envelope has recipients and the session is new.
            let _ = client.send(now, envelope.clone());
        }
        client.quit(now);
        let session = drive(&mut client, &mut transport, bodies, observe).await;
        Ok(Delivery {
            session,
            peer: transport.peer(),
            tls_fallback: None,
        })
    }
}

/// Random bytes for SASL nonces (`Config::with_credentials`), from the TLS
/// provider's generator; an error when it fails, never a predictable value.
pub fn sasl_nonce() -> Result<Vec<u8>, ConnectError> {
    nonce_from(rustls::crypto::ring::default_provider().secure_random)
}

/// [`sasl_nonce`] from `random`. A generator that fails is an error: SCRAM with
/// a predictable nonce would let a recorded exchange be replayed, so there
/// is no fallback value.
fn nonce_from(random: &dyn SecureRandom) -> Result<Vec<u8>, ConnectError> {
    let mut bytes = vec![0u8; 24];
    random
        .fill(&mut bytes)
        .map_err(|_| ConnectError::NoRandomness {
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
            ConnectError::NoRandomness {
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
}
