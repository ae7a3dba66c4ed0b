//! How a session is configured.

use crate::ehlo::ClientId;
use crate::policy::TlsPolicy;
use crate::reply::ReplyLimits;
use crate::sasl::{AuthChoice, Credentials};
use crate::timeouts::Timeouts;

/// Everything a [`Client`](super::Client) needs to know before the greeting.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Config {
    /// The name sent with EHLO/HELO (the client's fully qualified host name,
    /// or an address literal).
    pub client_id: ClientId,
    /// The encryption policy.
    pub tls: TlsPolicy,
    /// The connection is TLS from its first byte (port 465): STARTTLS is
    /// never sent and the session counts as encrypted.
    pub implicit_tls: bool,
    /// Credentials for AUTH; `None` sends no AUTH.
    pub credentials: Option<Credentials>,
    /// Which SASL mechanism to use.
    pub auth: AuthChoice,
    /// Random bytes for mechanisms that need a nonce (SCRAM). The core reads
    /// no randomness source of its own: drivers must fill this with at least
    /// 18 bytes from a cryptographic generator.
    pub sasl_nonce: Vec<u8>,
    /// The most PBKDF2 iterations a SCRAM-SHA-256 server may ask for
    /// ([`DEFAULT_MAX_ITERATIONS`](crate::sasl::DEFAULT_MAX_ITERATIONS) by
    /// default); a higher count ends the exchange before any derivation.
    pub max_scram_iterations: u32,
    /// Per-phase deadlines.
    pub timeouts: Timeouts,
    /// Bounds on the server's replies.
    pub reply_limits: ReplyLimits,
    /// Use PIPELINING (RFC 2920) when the server offers it.
    pub pipelining: bool,
    /// Use CHUNKING/BDAT (RFC 3030) when the server offers it with PIPELINING.
    pub chunking: bool,
    /// Recipients per transaction before a message is split (RFC 5321
    /// §4.5.3.1.8 requires servers to take at least 100).
    pub max_recipients: usize,
    /// Transactions in flight at once when pipelining with BDAT.
    pub max_in_flight: usize,
    /// Emit [`Event::Transcript`](super::Event::Transcript) lines (secrets redacted).
    pub transcript: bool,
}

impl Config {
    /// Defaults: Certified, no AUTH, RFC timeouts, pipelining and chunking on.
    pub fn new(client_id: ClientId) -> Self {
        Self {
            client_id,
            tls: TlsPolicy::default(),
            implicit_tls: false,
            credentials: None,
            auth: AuthChoice::Auto,
            sasl_nonce: Vec::new(),
            max_scram_iterations: crate::sasl::DEFAULT_MAX_ITERATIONS,
            timeouts: Timeouts::default(),
            reply_limits: ReplyLimits::default(),
            pipelining: true,
            chunking: true,
            max_recipients: 100,
            max_in_flight: 16,
            transcript: false,
        }
    }

    /// Sets the encryption policy.
    #[must_use]
    pub fn with_tls(mut self, tls: TlsPolicy) -> Self {
        self.tls = tls;
        self
    }

    /// Marks the connection as implicit TLS.
    #[must_use]
    pub fn with_implicit_tls(mut self, implicit: bool) -> Self {
        self.implicit_tls = implicit;
        self
    }

    /// Sets credentials, the mechanism choice and the nonce source bytes.
    #[must_use]
    pub fn with_credentials(
        mut self,
        credentials: Credentials,
        auth: AuthChoice,
        nonce: Vec<u8>,
    ) -> Self {
        self.credentials = Some(credentials);
        self.auth = auth;
        self.sasl_nonce = nonce;
        self
    }

    /// Sets the timeouts.
    #[must_use]
    pub fn with_timeouts(mut self, timeouts: Timeouts) -> Self {
        self.timeouts = timeouts;
        self
    }

    /// Turns transcript events on or off.
    #[must_use]
    pub fn with_transcript(mut self, on: bool) -> Self {
        self.transcript = on;
        self
    }

    /// Allows or forbids PIPELINING and CHUNKING.
    #[must_use]
    pub fn with_extensions(mut self, pipelining: bool, chunking: bool) -> Self {
        self.pipelining = pipelining;
        self.chunking = chunking;
        self
    }
}
