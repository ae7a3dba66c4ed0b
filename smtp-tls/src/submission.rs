//! Standard delivery: one session with a server the user has access to,
//! many messages through it, a report for each.

use std::net::SocketAddr;
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use async_trait::async_trait;
use smtp_core::delivery::{
    BodySource, ReadOutcome, SessionReport, TlsFailure, TlsInfo, Transport, drive,
};
use smtp_core::ehlo::ClientId;
use smtp_core::sasl::{AuthChoice, Credentials, DerivedKey, KeyDerivation};
use smtp_core::{Client, Config, Envelope, Error, Event, MessageOutcome, Timeouts, TlsPolicy};

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
    pub peer: SocketAddr,
    /// Set when Optional fell back to plaintext after a failed handshake: why.
    pub tls_fallback: Option<String>,
}

/// A message's outcome once it is final, with the session that decided it:
/// what [`Submission::send_settling`] reports as each message finishes.
#[derive(Clone, Copy, Debug)]
pub struct Settled<'a> {
    /// The outcome.
    pub outcome: &'a MessageOutcome,
    /// The address the session ran on.
    pub peer: SocketAddr,
    /// The session's TLS facts, when it was encrypted.
    pub tls: Option<&'a TlsInfo>,
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
        let now = transport.now();
        Ok((transport, Client::new(config, now)))
    }

    /// Sends `messages` through one session and reports on each.
    /// `observe` sees every event as it happens (transcripts, progress).
    pub async fn send(
        &self,
        messages: Vec<Outgoing>,
        observe: &mut (dyn FnMut(&Event) + Send),
    ) -> Result<Delivery, ConnectError> {
        self.send_settling(messages, observe, &mut |_| {}).await
    }

    /// [`send`](Self::send), telling `settled` each message's outcome as
    /// soon as it is final, with the address and TLS facts of the session
    /// that decided it: the report of a run that is stopped halfway. An
    /// outcome the plaintext retry will redo (a failed handshake under
    /// Optional) is not final; the retry's is. `observe` still sees both.
    pub async fn send_settling(
        &self,
        messages: Vec<Outgoing>,
        observe: &mut (dyn FnMut(&Event) + Send),
        settled: &mut (dyn FnMut(Settled<'_>) + Send),
    ) -> Result<Delivery, ConnectError> {
        // A message without recipients has nothing to deliver.
        let (envelopes, mut bodies): (Vec<Envelope>, Vec<Box<dyn BodySource>>) = messages
            .into_iter()
            .filter(|m| !m.envelope.to.is_empty())
            .map(|m| (m.envelope, m.body))
            .unzip();
        let policy = self.tls.policy;
        let retry = self.may_retry_plaintext();
        let mut delivery = self
            .session(policy, &envelopes, &mut bodies, observe, settled, retry)
            .await?;
        // The matrix: under Optional a failed handshake is retried once in
        // plaintext on a new connection, unless credentials would then be
        // at risk (those stay deferred).
        if let Some(Error::Tls(failure)) = &delivery.session.error {
            if self.may_retry_plaintext() {
                let detail = failure.detail.clone();
                let mut retry = self
                    .session(
                        TlsPolicy::None,
                        &envelopes,
                        &mut bodies,
                        observe,
                        settled,
                        false,
                    )
                    .await?;
                retry.tls_fallback = Some(detail);
                delivery = retry;
            }
        }
        Ok(delivery)
    }

    /// One session; `retry` when a failed handshake will be retried in
    /// plaintext (its outcomes are then not final).
    async fn session(
        &self,
        policy: TlsPolicy,
        envelopes: &[Envelope],
        bodies: &mut [Box<dyn BodySource>],
        observe: &mut (dyn FnMut(&Event) + Send),
        settled: &mut (dyn FnMut(Settled<'_>) + Send),
        retry: bool,
    ) -> Result<Delivery, ConnectError> {
        let (transport, mut client) = self.start(policy).await?;
        let now = transport.now();
        for envelope in envelopes {
            // Cannot fail: every envelope has recipients and the session is new.
            let _ = client.send(now, envelope.clone());
        }
        client.quit(now);
        let peer = transport.peer();
        let tls = Mutex::new(transport.tls_info());
        let mut transport = Noting {
            inner: transport,
            tls: &tls,
        };
        let mut on_event = |event: &Event| {
            observe(event);
            let Event::MessageResult(outcome) = event else {
                return;
            };
            // A failed handshake comes before any MAIL, so every recipient
            // carries it; the retry sends these messages again.
            let redone = retry
                && outcome
                    .recipients
                    .iter()
                    .all(|r| matches!(r.error, Some(Error::Tls(_))));
            if !redone {
                let tls = tls.lock().unwrap_or_else(PoisonError::into_inner).clone();
                settled(Settled {
                    outcome,
                    peer,
                    tls: tls.as_ref(),
                });
            }
        };
        let session = drive(&mut client, &mut transport, bodies, &mut on_event).await;
        Ok(Delivery {
            session,
            peer,
            tls_fallback: None,
        })
    }
}

/// The transport of a session, noting its TLS facts once the handshake is
/// done, where the observer of its events can read them.
struct Noting<'a> {
    inner: TcpTransport,
    tls: &'a Mutex<Option<TlsInfo>>,
}

#[async_trait]
impl Transport for Noting<'_> {
    fn now(&self) -> Instant {
        self.inner.now()
    }

    async fn read(
        &mut self,
        buf: &mut [u8],
        deadline: Option<Instant>,
    ) -> std::io::Result<ReadOutcome> {
        self.inner.read(buf, deadline).await
    }

    async fn write_all(&mut self, data: &[u8], deadline: Instant) -> std::io::Result<()> {
        self.inner.write_all(data, deadline).await
    }

    async fn start_tls(&mut self, deadline: Instant) -> Result<TlsInfo, TlsFailure> {
        let info = self.inner.start_tls(deadline).await?;
        *self.tls.lock().unwrap_or_else(PoisonError::into_inner) = Some(info.clone());
        Ok(info)
    }

    fn tls_info(&self) -> Option<TlsInfo> {
        self.inner.tls_info()
    }

    async fn derive_key(&mut self, job: KeyDerivation) -> DerivedKey {
        self.inner.derive_key(job).await
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
