//! One exchange, from `AUTH` to the server's final reply, and the limits on it.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use super::{Credentials, Mechanism, SaslError, Secret, cram_md5, login, plain, scram, xoauth2};

/// The longest `334` challenge text accepted, in octets of base64.
///
/// RFC 4954 §4 raises the line length limit for AUTH exchanges to 12288
/// octets; a longer challenge is refused instead of decoded.
pub const MAX_CHALLENGE_LEN: usize = 12288;

/// The longest `AUTH` command line, initial response and CRLF included.
///
/// RFC 4954 §4 keeps `AUTH` under RFC 5321's 512-octet command line: a
/// longer initial response (XOAUTH2 tokens are often 2–3 KB) is not sent
/// with the command but after the server's empty `334`.
pub const MAX_AUTH_LINE_LEN: usize = 512;

/// The fewest nonce bytes [`Authenticator::new`] accepts for SCRAM-SHA-256.
///
/// 18 random bytes (24 base64 characters) or more are recommended; with
/// fewer, a nonce repeating across sessions (which would let a recorded
/// exchange be replayed) becomes too likely.
pub const MIN_NONCE_LEN: usize = 12;

/// The most PBKDF2 iterations a SCRAM-SHA-256 server may ask for, unless
/// the caller sets another cap ([`Authenticator::with_max_iterations`],
/// `Config::max_scram_iterations`).
///
/// RFC 7677 §4 asks servers for at least 4096, and that is what the common
/// servers use by default (Dovecot, Cyrus SASL, PostgreSQL; MongoDB uses
/// 15,000). 100,000 leaves room for servers that raised it several times
/// over while bounding what one attempt costs the client: about 30 ms of
/// CPU, where the 10,000,000 a hostile server may ask for would be
/// seconds. A server that deliberately uses more (e.g. OWASP's 600,000 for
/// stored password hashes) needs the cap raised.
pub const DEFAULT_MAX_ITERATIONS: u32 = 100_000;

/// One authentication exchange, from `AUTH` to the server's final reply.
///
/// Call [`initial_response`](Self::initial_response) once, before sending
/// `AUTH`, and send what it returns with the command; then pass the text of
/// each `334` reply to [`respond`](Self::respond) and send what it returns.
/// If the initial response would make the `AUTH` line longer than 512 octets
/// (RFC 4954 §4), do not call `initial_response`: send `AUTH <mech>` alone,
/// and the first `respond` (to the server's empty `334`) returns it instead;
/// [`initial_response_within_limit`](Self::initial_response_within_limit)
/// makes that choice.
///
/// When `respond` fails, send `*` to cancel the exchange (RFC 4954 §4); every
/// later call fails with the same error.
///
/// After a `235`, a SCRAM-SHA-256 exchange has succeeded only if
/// [`server_verified`](Self::server_verified) is true: a server that says
/// `235` before proving it knows the password may be an impostor.
#[derive(Clone)]
pub struct Authenticator {
    mechanism: Mechanism,
    state: State,
    error_detail: Option<String>,
}

#[derive(Clone)]
enum State {
    Plain(plain::Plain),
    Login(login::Login),
    CramMd5(cram_md5::CramMd5),
    XOAuth2(xoauth2::XOAuth2),
    Scram(Box<scram::Scram>),
    /// Set up wrong or failed earlier: every call returns this error.
    Failed(SaslError),
}

/// What to do with a challenge, from [`Authenticator::answer`].
#[derive(Debug)]
pub enum Answer {
    /// Send this line.
    Send(Secret),
    /// Run this key derivation, then hand its result to
    /// [`Authenticator::derived`], which returns the line to send.
    Derive(KeyDerivation),
}

/// SCRAM's PBKDF2 step (RFC 5802 §3 `Hi()`): a pure computation, costly by
/// design (milliseconds to seconds of CPU), handed to the caller so that it
/// can run where blocking does no harm, e.g. off an async executor's threads.
///
/// It holds the password (never printed: `Debug` shows only the cost).
#[derive(Clone)]
pub struct KeyDerivation {
    pub(super) password: Secret,
    pub(super) salt: Vec<u8>,
    pub(super) iterations: u32,
}

impl KeyDerivation {
    /// The iteration count the server asked for (within the cap).
    pub fn iterations(&self) -> u32 {
        self.iterations
    }

    /// Runs the derivation, blocking the calling thread.
    #[must_use]
    pub fn run(self) -> DerivedKey {
        DerivedKey(scram::salted_password(
            &self.password,
            &self.salt,
            self.iterations,
        ))
    }
}

impl fmt::Debug for KeyDerivation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyDerivation")
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

/// The result of a [`KeyDerivation`]: SCRAM's salted password, as secret as
/// the password itself (`Debug` shows `<redacted>`).
#[derive(Clone)]
pub struct DerivedKey(pub(super) [u8; 32]);

impl fmt::Debug for DerivedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// What a mechanism does with a challenge: answer it, or first have a key derived.
pub(super) enum Next {
    Send(Step),
    Derive(KeyDerivation),
}

/// What a mechanism's step returns: the response, plus error text from the
/// server worth keeping for [`Authenticator::error_detail`].
pub(super) struct Step {
    pub(super) response: Secret,
    pub(super) detail: Option<String>,
}

impl Step {
    pub(super) const fn send(response: Secret) -> Self {
        Self {
            response,
            detail: None,
        }
    }
}

impl Authenticator {
    /// Starts an exchange with `mechanism`.
    ///
    /// `nonce`: random bytes from the caller (this module reads no randomness
    /// source); SCRAM-SHA-256 needs at least [`MIN_NONCE_LEN`] of them and
    /// base64-encodes them into its client nonce, the others ignore them.
    ///
    /// Credentials that do not fit the mechanism (see
    /// [`Mechanism::check_credentials`]) or a short nonce do not panic: the
    /// authenticator then has no initial response and `respond` returns the
    /// error, so the caller cancels the exchange.
    pub fn new(mechanism: Mechanism, credentials: &Credentials, nonce: &[u8]) -> Self {
        let state = match mechanism.check_credentials(credentials) {
            Err(e) => State::Failed(e),
            Ok(()) => {
                let (username, secret) = match credentials {
                    Credentials::Password { username, password } => (username, password),
                    Credentials::OAuth2 { username, token } => (username, token),
                };
                match mechanism {
                    Mechanism::Plain => State::Plain(plain::Plain::new(username, secret)),
                    Mechanism::Login => State::Login(login::Login::new(username, secret)),
                    Mechanism::CramMd5 => State::CramMd5(cram_md5::CramMd5::new(username, secret)),
                    Mechanism::XOAuth2 => State::XOAuth2(xoauth2::XOAuth2::new(username, secret)),
                    Mechanism::ScramSha256 if nonce.len() < MIN_NONCE_LEN => {
                        State::Failed(SaslError::NonceTooShort { len: nonce.len() })
                    }
                    Mechanism::ScramSha256 => State::Scram(Box::new(scram::Scram::new(
                        username,
                        secret,
                        &STANDARD.encode(nonce),
                    ))),
                }
            }
        };
        Self {
            mechanism,
            state,
            error_detail: None,
        }
    }

    /// The mechanism of this exchange.
    pub fn mechanism(&self) -> Mechanism {
        self.mechanism
    }

    /// The initial response to send as `AUTH <mech> <ir>` (RFC 4954 §4), in
    /// base64; `"="` stands for an empty one. `None` when the mechanism starts
    /// with a server challenge (LOGIN, CRAM-MD5) or the authenticator was set
    /// up wrong (see [`new`](Self::new)). PLAIN, XOAUTH2 and SCRAM-SHA-256
    /// have one. Calling it again returns the same response.
    #[must_use]
    pub fn initial_response(&mut self) -> Option<Secret> {
        match &mut self.state {
            State::Plain(m) => Some(m.initial_response()),
            State::XOAuth2(m) => Some(m.initial_response()),
            State::Scram(m) => Some(m.initial_response()),
            State::Login(_) | State::CramMd5(_) | State::Failed(_) => None,
        }
    }

    /// The initial response when `AUTH <mechanism> <ir>` CRLF fits in
    /// [`MAX_AUTH_LINE_LEN`] octets, as [`initial_response`](Self::initial_response)
    /// returns it. `None` when the mechanism has none or when it is too long:
    /// then send `AUTH <mechanism>` alone, and the first
    /// [`respond`](Self::respond) (to the server's empty `334`) returns it.
    #[must_use]
    pub fn initial_response_within_limit(&mut self) -> Option<Secret> {
        // Try on a copy: handing out the response moves the mechanism on,
        // which must not happen when it is kept for the 334.
        let mut trial = self.clone();
        let response = trial.initial_response()?;
        let line = "AUTH ".len() + self.mechanism.name().len() + 1 + response.expose().len() + 2;
        if line > MAX_AUTH_LINE_LEN {
            return None;
        }
        *self = trial;
        Some(response)
    }

    /// Caps the PBKDF2 iterations a SCRAM-SHA-256 server may ask for
    /// (default [`DEFAULT_MAX_ITERATIONS`]); a higher count fails with
    /// [`SaslError::TooManyIterations`] before any derivation. Other
    /// mechanisms ignore it.
    #[must_use]
    pub fn with_max_iterations(mut self, max: u32) -> Self {
        if let State::Scram(m) = &mut self.state {
            m.set_max_iterations(max);
        }
        self
    }

    /// Answers a `334` challenge, given the reply's text (base64; surrounding
    /// white space is ignored), with the base64 text to send. A SCRAM key
    /// derivation is run here, on the calling thread; use
    /// [`answer`](Self::answer) to run it elsewhere.
    ///
    /// For SCRAM-SHA-256 the server-final-message also arrives as a `334`: its
    /// server signature is verified ([`SaslError::ServerSignatureMismatch`]
    /// if wrong) and the answer is the empty response `""`. For XOAUTH2, a
    /// `334` after the token carries the server's JSON error: the answer is
    /// `""` so that the server sends its `5xx`, and the decoded text is kept
    /// for [`error_detail`](Self::error_detail).
    pub fn respond(&mut self, challenge_base64: &str) -> Result<Secret, SaslError> {
        match self.answer(challenge_base64)? {
            Answer::Send(response) => Ok(response),
            Answer::Derive(job) => self.derived(job.run()),
        }
    }

    /// Like [`respond`](Self::respond), but a SCRAM-SHA-256 server-first
    /// message yields [`Answer::Derive`]: run the [`KeyDerivation`] (e.g. on
    /// a thread that may block) and pass its result to
    /// [`derived`](Self::derived) for the line to send.
    pub fn answer(&mut self, challenge_base64: &str) -> Result<Answer, SaslError> {
        let send = |r: Result<Step, SaslError>| r.map(Next::Send);
        let result = match &mut self.state {
            State::Failed(e) => return Err(e.clone()),
            State::Plain(m) => send(
                decode_challenge(Mechanism::Plain, challenge_base64)
                    .and_then(|c| m.respond(&c))
                    .map(Step::send),
            ),
            State::Login(m) => send(m.respond(challenge_base64).map(Step::send)),
            State::CramMd5(m) => send(
                decode_challenge(Mechanism::CramMd5, challenge_base64)
                    .and_then(|c| m.respond(&c))
                    .map(Step::send),
            ),
            State::XOAuth2(m) => send(
                decode_challenge(Mechanism::XOAuth2, challenge_base64).and_then(|c| m.respond(&c)),
            ),
            State::Scram(m) => decode_challenge(Mechanism::ScramSha256, challenge_base64)
                .and_then(|c| m.respond(&c)),
        };
        match result {
            Ok(Next::Derive(job)) => Ok(Answer::Derive(job)),
            Ok(Next::Send(step)) => {
                if step.detail.is_some() {
                    self.error_detail = step.detail;
                }
                Ok(Answer::Send(step.response))
            }
            Err(e) => {
                if let SaslError::ServerError { message, .. } = &e {
                    self.error_detail = Some(message.clone());
                }
                self.state = State::Failed(e.clone());
                Err(e)
            }
        }
    }

    /// Takes the result of the [`KeyDerivation`] that [`answer`](Self::answer)
    /// handed out and returns the line to send (SCRAM's client-final-message).
    /// Fails with [`SaslError::NoDerivationPending`], leaving the exchange as
    /// it was, when no derivation was handed out.
    pub fn derived(&mut self, key: DerivedKey) -> Result<Secret, SaslError> {
        match &mut self.state {
            State::Scram(m) => m.derived(&key).ok_or(SaslError::NoDerivationPending),
            _ => Err(SaslError::NoDerivationPending),
        }
    }

    /// Whether a [`KeyDerivation`] handed out by [`answer`](Self::answer)
    /// awaits [`derived`](Self::derived).
    pub fn is_deriving(&self) -> bool {
        matches!(&self.state, State::Scram(m) if m.is_deriving())
    }

    /// For SCRAM-SHA-256: whether the server's signature was verified, i.e.
    /// the server proved it knows the password. A `235` while this is false
    /// is a server fault and must not be reported as success. Always false
    /// for the other mechanisms, which cannot authenticate the server.
    pub fn server_verified(&self) -> bool {
        match &self.state {
            State::Scram(m) => m.server_verified(),
            _ => false,
        }
    }

    /// Error text the server sent inside the exchange: XOAUTH2's JSON error,
    /// SCRAM's `e=` value. Control characters are escaped and the text is
    /// bounded, so it can be shown as it is.
    pub fn error_detail(&self) -> Option<&str> {
        self.error_detail.as_deref()
    }
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("mechanism", &self.mechanism)
            .field("server_verified", &self.server_verified())
            .field("error_detail", &self.error_detail)
            .finish_non_exhaustive()
    }
}

/// Decodes the base64 text of a `334` challenge: white space around it is
/// ignored, an empty text or `=` is the empty challenge.
fn decode_challenge(mechanism: Mechanism, text: &str) -> Result<Vec<u8>, SaslError> {
    let text = text.trim_matches(|c: char| c.is_ascii_whitespace());
    if text.len() > MAX_CHALLENGE_LEN {
        return Err(SaslError::InvalidChallenge {
            mechanism,
            reason: format!(
                "{} octets long, more than the {MAX_CHALLENGE_LEN} allowed",
                text.len()
            ),
        });
    }
    if text.is_empty() || text == "=" {
        return Ok(Vec::new());
    }
    STANDARD
        .decode(text)
        .map_err(|e| SaslError::InvalidChallenge {
            mechanism,
            reason: format!("not valid base64 ({e})"),
        })
}
