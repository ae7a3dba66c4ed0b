//! SASL client mechanisms for SMTP AUTH, sans-IO.
//!
//! SMTP AUTH (RFC 4954) carries a SASL (RFC 4422) exchange: the client sends
//! `AUTH <mechanism> [initial-response]`, the server answers `334 <challenge>`
//! zero or more times, and the client answers each challenge on a line of its
//! own, until the server's `235` (success) or `4xx`/`5xx` (failure). Every
//! challenge and response on the wire is base64 (RFC 4954 §4); this module
//! takes the base64 text of a `334` challenge and returns the base64 text to
//! send, so the caller only frames lines.
//!
//! Mechanisms: PLAIN (RFC 4616), LOGIN (draft-murchison-sasl-login),
//! CRAM-MD5 (RFC 2195), XOAUTH2 (Google's bearer-token mechanism) and
//! SCRAM-SHA-256 (RFC 5802 with RFC 7677), without channel binding.
//!
//! Two steps:
//!
//! 1. [`choose_mechanism`] applies the password-revealing rule (DESIGN.md
//!    "Secrets"): PLAIN, LOGIN and XOAUTH2 put the secret on the wire in a
//!    readable form, so they are used only inside TLS, except when the user
//!    named the mechanism and the encryption policy is `None`.
//! 2. An [`Authenticator`] runs one exchange:
//!
//! ```text
//! initial_response() ──> AUTH <mech> <ir>      (or AUTH <mech> when None)
//! 334 <challenge>    ──> respond(challenge) ──> <response line>
//! 235                ──> success; for SCRAM only if server_verified()
//! 4xx / 5xx          ──> failure; error_detail() may explain (XOAUTH2, SCRAM)
//! ```
//!
//! `respond` runs SCRAM's PBKDF2 step inline. [`Authenticator::answer`]
//! instead hands it out as a [`KeyDerivation`] to run anywhere (the client
//! passes it to its driver, which keeps it off the async executor), and
//! [`Authenticator::derived`] takes the result back. The iteration count a
//! server may ask for is capped ([`DEFAULT_MAX_ITERATIONS`]) before anything
//! is derived.
//!
//! The module reads no randomness: SCRAM's client nonce is made from bytes the
//! caller passes to [`Authenticator::new`].

mod cram_md5;
mod login;
mod plain;
mod scram;
mod xoauth2;

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

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

/// The longest server error text kept for [`Authenticator::error_detail`], in characters.
const MAX_DETAIL_LEN: usize = 1024;

/// A SASL mechanism this client implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mechanism {
    /// PLAIN (RFC 4616): username and password in one message, readable.
    Plain,
    /// LOGIN (draft-murchison-sasl-login): username and password on two lines, readable.
    Login,
    /// CRAM-MD5 (RFC 2195): an HMAC-MD5 of the server's challenge keyed by the password.
    CramMd5,
    /// XOAUTH2 (Google): an OAuth 2.0 bearer token, readable.
    XOAuth2,
    /// SCRAM-SHA-256 (RFC 5802, RFC 7677): salted challenge-response that also
    /// proves the server knows the password, without channel binding.
    ScramSha256,
}

impl Mechanism {
    /// Every mechanism, in declaration order.
    pub const ALL: [Self; 5] = [
        Self::Plain,
        Self::Login,
        Self::CramMd5,
        Self::XOAuth2,
        Self::ScramSha256,
    ];

    /// The name as it appears in EHLO `AUTH` and in the `AUTH` command.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Plain => "PLAIN",
            Self::Login => "LOGIN",
            Self::CramMd5 => "CRAM-MD5",
            Self::XOAuth2 => "XOAUTH2",
            Self::ScramSha256 => "SCRAM-SHA-256",
        }
    }

    /// The mechanism with this name, compared case-insensitively
    /// (RFC 4422 §3.1 names are upper case, but servers and users vary).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|m| m.name().eq_ignore_ascii_case(name))
    }

    /// Whether the secret (password or token) travels in a readable form,
    /// so that anyone who can read the connection learns it.
    pub const fn reveals_secret(self) -> bool {
        matches!(self, Self::Plain | Self::Login | Self::XOAuth2)
    }

    /// Whether these credentials can be sent with this mechanism: XOAUTH2
    /// needs a token, the others a password, and each mechanism's message
    /// format must be able to carry the username and secret.
    ///
    /// [`choose_mechanism`] calls this on its pick; call it yourself before
    /// [`Authenticator::new`] when you choose the mechanism another way.
    pub fn check_credentials(self, credentials: &Credentials) -> Result<(), SaslError> {
        let (username, secret, is_token) = match credentials {
            Credentials::Password { username, password } => (username, password, false),
            Credentials::OAuth2 { username, token } => (username, token, true),
        };
        if is_token != (self == Self::XOAuth2) {
            return Err(SaslError::CredentialsMismatch {
                mechanism: self,
                oauth2: is_token,
            });
        }
        let secret = secret.expose();
        let bad = |what: &'static str| {
            Err(SaslError::InvalidCredentials {
                mechanism: self,
                reason: what,
            })
        };
        match self {
            // RFC 4616 §2: NUL separates the fields.
            Self::Plain if username.contains('\0') || secret.contains('\0') => bad(
                "the username or password contains a NUL character, which PLAIN uses as separator",
            ),
            Self::XOAuth2 if username.contains('\x01') || secret.contains('\x01') => bad(
                "the username or token contains a ^A character, which XOAUTH2 uses as separator",
            ),
            Self::XOAuth2 if secret.chars().any(|c| c.is_whitespace() || c.is_control()) => {
                bad("the token contains white space or control characters")
            }
            _ if username.is_empty() => bad("the username is empty"),
            _ => Ok(()),
        }
    }
}

impl fmt::Display for Mechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Mechanism {
    type Err = SaslError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_name(s).ok_or_else(|| SaslError::UnknownMechanism {
            name: printable(s.as_bytes()),
        })
    }
}

/// A secret (password, token, or a response that contains one) that never prints.
///
/// `Debug` and `Display` show `<redacted>`; [`Secret::expose`] is the one way
/// to read it, so every place that does is easy to find. The memory is not
/// zeroed on drop: that would need a dependency this crate does not take, and
/// the strings the caller built the secret from are not zeroed either.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// The secret itself, to write to the wire or hash.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Who the client authenticates as, and with what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credentials {
    /// A username and password: SCRAM-SHA-256, CRAM-MD5, PLAIN or LOGIN.
    Password {
        /// The authentication identity.
        username: String,
        /// The password.
        password: Secret,
    },
    /// A username and an OAuth 2.0 access token: XOAUTH2 only.
    OAuth2 {
        /// The account the token was issued for.
        username: String,
        /// The access token (not the refresh token).
        token: Secret,
    },
}

impl Credentials {
    /// The username, whatever the kind of secret.
    pub fn username(&self) -> &str {
        match self {
            Self::Password { username, .. } | Self::OAuth2 { username, .. } => username,
        }
    }

    const fn is_oauth2(&self) -> bool {
        matches!(self, Self::OAuth2 { .. })
    }
}

/// What the user asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum AuthChoice {
    /// The strongest mechanism the server offers that may be used here.
    #[default]
    Auto,
    /// This mechanism and no other (`--auth <name>`).
    Explicit(Mechanism),
}

/// Order of preference for a password, strongest first.
const PASSWORD_PREFERENCE: [Mechanism; 4] = [
    Mechanism::ScramSha256,
    Mechanism::CramMd5,
    Mechanism::Plain,
    Mechanism::Login,
];

/// Chooses the mechanism for this session by the password-revealing rule
/// (DESIGN.md "Secrets").
///
/// - `offered`: the mechanism names from the server's EHLO `AUTH` keyword
///   (any case; names this module does not implement are ignored).
/// - `tls`: the session is encrypted.
/// - `plaintext_allowed`: the encryption policy is `None`. Only then may a
///   mechanism that reveals the secret go in the clear, and only when the user
///   named it; the caller should warn when that happens.
///
/// `Auto` picks, among the offered mechanisms usable with these credentials,
/// SCRAM-SHA-256 > CRAM-MD5 > PLAIN > LOGIN for a password and XOAUTH2 for a
/// token. Without TLS it considers only SCRAM-SHA-256 and CRAM-MD5 (whatever
/// `plaintext_allowed` says) and fails with [`SaslError::NoUsableMechanism`]
/// when the server offers neither.
///
/// `Explicit(m)` fails when `m` does not fit the credentials
/// ([`SaslError::CredentialsMismatch`]), when the server does not offer it
/// ([`SaslError::NotOffered`]), or when it reveals the secret and the session
/// is neither encrypted nor under policy `None`
/// ([`SaslError::WouldRevealSecret`]).
///
/// The chosen mechanism has passed [`Mechanism::check_credentials`].
pub fn choose_mechanism(
    offered: &[String],
    credentials: &Credentials,
    choice: AuthChoice,
    tls: bool,
    plaintext_allowed: bool,
) -> Result<Mechanism, SaslError> {
    let is_offered = |m: Mechanism| offered.iter().any(|o| o.eq_ignore_ascii_case(m.name()));
    let chosen = match choice {
        AuthChoice::Explicit(m) => {
            if credentials.is_oauth2() != (m == Mechanism::XOAuth2) {
                return Err(SaslError::CredentialsMismatch {
                    mechanism: m,
                    oauth2: credentials.is_oauth2(),
                });
            }
            if !is_offered(m) {
                return Err(SaslError::NotOffered {
                    mechanism: m,
                    offered: bounded_list(offered),
                });
            }
            if m.reveals_secret() && !tls && !plaintext_allowed {
                return Err(SaslError::WouldRevealSecret { mechanism: m });
            }
            m
        }
        AuthChoice::Auto => {
            let preference: &[Mechanism] = if credentials.is_oauth2() {
                &[Mechanism::XOAuth2]
            } else {
                &PASSWORD_PREFERENCE
            };
            let usable = preference
                .iter()
                .copied()
                .find(|&m| is_offered(m) && (tls || !m.reveals_secret()));
            let Some(m) = usable else {
                return Err(SaslError::NoUsableMechanism {
                    offered: bounded_list(offered),
                    tls,
                    oauth2: credentials.is_oauth2(),
                });
            };
            m
        }
    };
    chosen.check_credentials(credentials)?;
    Ok(chosen)
}

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
    password: Secret,
    salt: Vec<u8>,
    iterations: u32,
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
pub struct DerivedKey([u8; 32]);

impl fmt::Debug for DerivedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// What a mechanism does with a challenge: answer it, or first have a key derived.
enum Next {
    Send(Step),
    Derive(KeyDerivation),
}

/// What a mechanism's step returns: the response, plus error text from the
/// server worth keeping for [`Authenticator::error_detail`].
struct Step {
    response: Secret,
    detail: Option<String>,
}

impl Step {
    const fn send(response: Secret) -> Self {
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

/// Why choosing a mechanism or running an exchange failed.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SaslError {
    /// A mechanism name this client does not implement.
    UnknownMechanism {
        /// The name given (control characters escaped).
        name: String,
    },
    /// The mechanism the user named is not in the server's EHLO `AUTH` list.
    NotOffered {
        /// The mechanism asked for.
        mechanism: Mechanism,
        /// What the server offers.
        offered: Vec<String>,
    },
    /// The mechanism the user named would send the secret readable over an
    /// unencrypted session, and the encryption policy is not `None`.
    WouldRevealSecret {
        /// The mechanism asked for.
        mechanism: Mechanism,
    },
    /// `Auto` found no offered mechanism that may be used here.
    NoUsableMechanism {
        /// What the server offers.
        offered: Vec<String>,
        /// Whether the session is encrypted.
        tls: bool,
        /// Whether the credentials are an OAuth2 token (else a password).
        oauth2: bool,
    },
    /// The mechanism needs the other kind of credentials (XOAUTH2 a token,
    /// the others a password).
    CredentialsMismatch {
        /// The mechanism asked for.
        mechanism: Mechanism,
        /// Whether the credentials are an OAuth2 token (else a password).
        oauth2: bool,
    },
    /// The credentials cannot be encoded in this mechanism's messages.
    InvalidCredentials {
        /// The mechanism.
        mechanism: Mechanism,
        /// What is wrong with them.
        reason: &'static str,
    },
    /// SCRAM-SHA-256 was started with fewer than [`MIN_NONCE_LEN`] nonce bytes.
    NonceTooShort {
        /// How many bytes were given.
        len: usize,
    },
    /// The server's challenge is malformed or unacceptable.
    InvalidChallenge {
        /// The mechanism of the exchange.
        mechanism: Mechanism,
        /// What is wrong with it.
        reason: String,
    },
    /// The SCRAM server signature is wrong: the server does not know the
    /// password, so it is not the server the user has an account with.
    ServerSignatureMismatch,
    /// The server reported an error inside the exchange (SCRAM `e=`).
    ServerError {
        /// The mechanism of the exchange.
        mechanism: Mechanism,
        /// The server's text (control characters escaped, bounded).
        message: String,
    },
    /// A `334` challenge arrived when the exchange expected none.
    UnexpectedChallenge {
        /// The mechanism of the exchange.
        mechanism: Mechanism,
    },
    /// The SCRAM-SHA-256 server asked for more PBKDF2 iterations than the
    /// cap allows; nothing was derived.
    TooManyIterations {
        /// The iteration count the server asked for.
        requested: u32,
        /// The cap in force.
        limit: u32,
    },
    /// A derived key was handed over when no key derivation was pending
    /// (a caller bug).
    NoDerivationPending,
}

fn supported_names() -> String {
    names(Mechanism::ALL.iter().map(|m| m.name()))
}

fn names<'a>(list: impl Iterator<Item = &'a str>) -> String {
    let joined = list.collect::<Vec<_>>().join(" ");
    if joined.is_empty() {
        "none".to_owned()
    } else {
        joined
    }
}

impl fmt::Display for SaslError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownMechanism { name } => write!(
                f,
                "unknown SASL mechanism {name:?}; supported: {}",
                supported_names()
            ),
            Self::NotOffered { mechanism, offered } => write!(
                f,
                "the server does not offer AUTH {mechanism} (it offers: {}); \
                 choose one of those, or leave the mechanism on auto",
                names(offered.iter().map(String::as_str))
            ),
            Self::WouldRevealSecret { mechanism } => write!(
                f,
                "AUTH {mechanism} would send the secret readable over an unencrypted \
                 connection, so it was not sent; enable TLS (`--tls required`, or port 465), \
                 or, to send it in the clear on purpose, use `--tls none`"
            ),
            Self::NoUsableMechanism {
                offered,
                tls,
                oauth2,
            } => {
                let offered_text = names(offered.iter().map(String::as_str));
                match (*oauth2, *tls) {
                    (true, true) => write!(
                        f,
                        "the server does not offer XOAUTH2, the only mechanism for an \
                         OAuth2 token (it offers: {offered_text}); use a password instead"
                    ),
                    (true, false) => write!(
                        f,
                        "XOAUTH2 would send the token readable over an unencrypted \
                         connection (the server offers: {offered_text}); enable TLS \
                         (`--tls required`, or port 465), or name the mechanism \
                         explicitly (`--auth xoauth2`) under `--tls none`"
                    ),
                    (false, true) => write!(
                        f,
                        "the server offers no AUTH mechanism this client supports \
                         (it offers: {offered_text}; supported: {})",
                        supported_names()
                    ),
                    (false, false) => write!(
                        f,
                        "without TLS only SCRAM-SHA-256 and CRAM-MD5 are used \
                         automatically, since they keep the password secret, and the \
                         server offers neither (it offers: {offered_text}); enable TLS \
                         (`--tls required`, or port 465; many servers offer AUTH only \
                         after STARTTLS), or name the mechanism explicitly (e.g. \
                         `--auth plain`) under `--tls none` to send the password readable"
                    ),
                }
            }
            Self::CredentialsMismatch { mechanism, oauth2 } => {
                if *oauth2 {
                    write!(
                        f,
                        "AUTH {mechanism} needs a password, but an OAuth2 token was given; \
                         tokens work only with XOAUTH2"
                    )
                } else {
                    write!(
                        f,
                        "AUTH {mechanism} needs an OAuth2 access token, but a password \
                         was given; use another mechanism or give a token"
                    )
                }
            }
            Self::InvalidCredentials { mechanism, reason } => {
                write!(f, "cannot authenticate with {mechanism}: {reason}")
            }
            Self::NonceTooShort { len } => write!(
                f,
                "SCRAM-SHA-256 needs at least {MIN_NONCE_LEN} random nonce bytes, \
                 {len} given; pass random bytes from the operating system"
            ),
            Self::InvalidChallenge { mechanism, reason } => write!(
                f,
                "the server sent an invalid {mechanism} challenge: {reason}; \
                 the exchange was cancelled"
            ),
            Self::ServerSignatureMismatch => f.write_str(
                "the server's SCRAM-SHA-256 signature is wrong: it does not know the \
                 password, so it may be an impostor; nothing was sent",
            ),
            Self::ServerError { mechanism, message } => {
                write!(f, "the server reported a {mechanism} error: {message}")
            }
            Self::UnexpectedChallenge { mechanism } => write!(
                f,
                "the server sent a {mechanism} challenge after the exchange was complete; \
                 the exchange was cancelled"
            ),
            Self::TooManyIterations { requested, limit } => write!(
                f,
                "the server asked for {requested} SCRAM-SHA-256 iterations, more than the \
                 cap of {limit} (a server wasting the client's CPU, or one that raised its \
                 count on purpose: then raise Config::max_scram_iterations); the exchange \
                 was cancelled"
            ),
            Self::NoDerivationPending => {
                f.write_str("a derived key was handed over when no key derivation was pending")
            }
        }
    }
}

impl std::error::Error for SaslError {}

/// Copies a server-supplied list into an error, bounded in count and length.
fn bounded_list(list: &[String]) -> Vec<String> {
    list.iter()
        .take(32)
        .map(|s| printable(s.as_bytes()))
        .collect()
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

/// Server-supplied bytes as text that is safe to show: invalid UTF-8 replaced,
/// control characters escaped, at most [`MAX_DETAIL_LEN`] characters.
fn printable(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out = String::new();
    for (count, c) in text.chars().enumerate() {
        if count == MAX_DETAIL_LEN {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

fn encode(bytes: &[u8]) -> Secret {
    Secret(STANDARD.encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pw() -> Credentials {
        Credentials::Password {
            username: "user".to_owned(),
            password: Secret::new("pencil"),
        }
    }

    fn tok() -> Credentials {
        Credentials::OAuth2 {
            username: "user@example.com".to_owned(),
            token: Secret::new("ya29.token"),
        }
    }

    fn b64(s: &str) -> String {
        STANDARD.encode(s)
    }

    #[test]
    fn mechanism_names() {
        for m in Mechanism::ALL {
            assert_eq!(Mechanism::from_name(m.name()), Some(m));
            assert_eq!(Mechanism::from_name(&m.name().to_lowercase()), Some(m));
            assert_eq!(m.to_string(), m.name());
            assert_eq!(m.name().parse::<Mechanism>(), Ok(m));
        }
        assert_eq!(Mechanism::from_name("cram-md5"), Some(Mechanism::CramMd5));
        assert_eq!(
            Mechanism::from_name("Scram-Sha-256"),
            Some(Mechanism::ScramSha256)
        );
        assert_eq!(Mechanism::from_name("GSSAPI"), None);
        assert_eq!(Mechanism::from_name(""), None);
        let err = "gssapi".parse::<Mechanism>().expect_err("not implemented");
        assert_eq!(
            err.to_string(),
            "unknown SASL mechanism \"gssapi\"; supported: PLAIN LOGIN CRAM-MD5 XOAUTH2 SCRAM-SHA-256"
        );
        let revealing: Vec<_> = Mechanism::ALL
            .into_iter()
            .filter(|m| m.reveals_secret())
            .collect();
        assert_eq!(
            revealing,
            [Mechanism::Plain, Mechanism::Login, Mechanism::XOAuth2]
        );
    }

    #[test]
    fn secrets_never_print() {
        let creds = Credentials::Password {
            username: "alice".to_owned(),
            password: Secret::new("hunter2"),
        };
        let debug = format!("{creds:?} {creds:#?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(
            debug.contains("alice") && debug.contains("<redacted>"),
            "{debug}"
        );
        let creds = Credentials::OAuth2 {
            username: "alice".to_owned(),
            token: Secret::new("ya29.sekrit"),
        };
        assert!(!format!("{creds:?}").contains("sekrit"));
        let secret = Secret::new("hunter2");
        assert_eq!(format!("{secret} {secret:?}"), "<redacted> <redacted>");
        assert_eq!(secret.expose(), "hunter2");
        assert_eq!(creds.username(), "alice");

        // Nor does an authenticator, whatever state it is in.
        for m in Mechanism::ALL {
            let creds = if m == Mechanism::XOAuth2 { tok() } else { pw() };
            let mut auth = Authenticator::new(m, &creds, &[7; 18]);
            let _ = auth.initial_response();
            let _ = auth.respond(&b64("<1.2@host>"));
            let debug = format!("{auth:?}");
            assert!(
                !debug.contains("pencil") && !debug.contains("ya29"),
                "{debug}"
            );
        }
    }

    /// Runs `choose_mechanism` and names the outcome: the mechanism, or
    /// `offered` / `reveal` / `none` / `creds` for the errors.
    fn outcome(
        offered: &str,
        oauth2: bool,
        choice: &str,
        tls: bool,
        plaintext_allowed: bool,
    ) -> &'static str {
        let offered: Vec<String> = offered.split_whitespace().map(str::to_owned).collect();
        let creds = if oauth2 { tok() } else { pw() };
        let choice = match choice {
            "auto" => AuthChoice::Auto,
            name => AuthChoice::Explicit(Mechanism::from_name(name).expect("a mechanism name")),
        };
        match choose_mechanism(&offered, &creds, choice, tls, plaintext_allowed) {
            Ok(m) => m.name(),
            Err(SaslError::NotOffered { .. }) => "offered",
            Err(SaslError::WouldRevealSecret { .. }) => "reveal",
            Err(SaslError::NoUsableMechanism { .. }) => "none",
            Err(SaslError::CredentialsMismatch { .. }) => "creds",
            Err(e) => panic!("unexpected error {e:?}"),
        }
    }

    const N: &str = "";
    const PL: &str = "PLAIN LOGIN";
    const CPL: &str = "CRAM-MD5 PLAIN LOGIN";
    const ALL: &str = "SCRAM-SHA-256 CRAM-MD5 PLAIN LOGIN XOAUTH2";
    const XP: &str = "XOAUTH2 PLAIN";
    const L: &str = "login GSSAPI";
    const OFFERED_SETS: [&str; 6] = [N, PL, CPL, ALL, XP, L];
    const CHOICES: [&str; 6] = [
        "auto",
        "PLAIN",
        "LOGIN",
        "CRAM-MD5",
        "XOAUTH2",
        "SCRAM-SHA-256",
    ];

    const SCRAM: &str = "SCRAM-SHA-256";
    const CRAM: &str = "CRAM-MD5";
    const PLAIN: &str = "PLAIN";
    const LOGIN: &str = "LOGIN";
    const XOAUTH2: &str = "XOAUTH2";

    /// (offered, token?, choice, [with TLS, clear, clear under policy None]).
    #[rustfmt::skip]
    const TABLE: &[(&str, bool, &str, [&str; 3])] = &[
        // Password, auto: strongest first; without TLS only SCRAM and CRAM-MD5.
        (N,   false, "auto", ["none", "none", "none"]),
        (PL,  false, "auto", [PLAIN,  "none", "none"]),
        (CPL, false, "auto", [CRAM,   CRAM,   CRAM]),
        (ALL, false, "auto", [SCRAM,  SCRAM,  SCRAM]),
        (XP,  false, "auto", [PLAIN,  "none", "none"]),
        (L,   false, "auto", [LOGIN,  "none", "none"]),
        // Password, explicit PLAIN: in the clear only under policy None.
        (N,   false, "PLAIN", ["offered", "offered", "offered"]),
        (PL,  false, "PLAIN", [PLAIN, "reveal", PLAIN]),
        (CPL, false, "PLAIN", [PLAIN, "reveal", PLAIN]),
        (ALL, false, "PLAIN", [PLAIN, "reveal", PLAIN]),
        (XP,  false, "PLAIN", [PLAIN, "reveal", PLAIN]),
        (L,   false, "PLAIN", ["offered", "offered", "offered"]),
        // Password, explicit LOGIN.
        (N,   false, "LOGIN", ["offered", "offered", "offered"]),
        (PL,  false, "LOGIN", [LOGIN, "reveal", LOGIN]),
        (CPL, false, "LOGIN", [LOGIN, "reveal", LOGIN]),
        (ALL, false, "LOGIN", [LOGIN, "reveal", LOGIN]),
        (XP,  false, "LOGIN", ["offered", "offered", "offered"]),
        (L,   false, "LOGIN", [LOGIN, "reveal", LOGIN]),
        // Password, explicit CRAM-MD5: never reveals.
        (N,   false, "CRAM-MD5", ["offered", "offered", "offered"]),
        (PL,  false, "CRAM-MD5", ["offered", "offered", "offered"]),
        (CPL, false, "CRAM-MD5", [CRAM, CRAM, CRAM]),
        (ALL, false, "CRAM-MD5", [CRAM, CRAM, CRAM]),
        (XP,  false, "CRAM-MD5", ["offered", "offered", "offered"]),
        (L,   false, "CRAM-MD5", ["offered", "offered", "offered"]),
        // Password, explicit XOAUTH2: needs a token.
        (N,   false, "XOAUTH2", ["creds", "creds", "creds"]),
        (PL,  false, "XOAUTH2", ["creds", "creds", "creds"]),
        (CPL, false, "XOAUTH2", ["creds", "creds", "creds"]),
        (ALL, false, "XOAUTH2", ["creds", "creds", "creds"]),
        (XP,  false, "XOAUTH2", ["creds", "creds", "creds"]),
        (L,   false, "XOAUTH2", ["creds", "creds", "creds"]),
        // Password, explicit SCRAM-SHA-256.
        (N,   false, "SCRAM-SHA-256", ["offered", "offered", "offered"]),
        (PL,  false, "SCRAM-SHA-256", ["offered", "offered", "offered"]),
        (CPL, false, "SCRAM-SHA-256", ["offered", "offered", "offered"]),
        (ALL, false, "SCRAM-SHA-256", [SCRAM, SCRAM, SCRAM]),
        (XP,  false, "SCRAM-SHA-256", ["offered", "offered", "offered"]),
        (L,   false, "SCRAM-SHA-256", ["offered", "offered", "offered"]),
        // Token, auto: XOAUTH2 only, and never automatically in the clear.
        (N,   true, "auto", ["none", "none", "none"]),
        (PL,  true, "auto", ["none", "none", "none"]),
        (CPL, true, "auto", ["none", "none", "none"]),
        (ALL, true, "auto", [XOAUTH2, "none", "none"]),
        (XP,  true, "auto", [XOAUTH2, "none", "none"]),
        (L,   true, "auto", ["none", "none", "none"]),
        // Token, explicit password mechanisms: wrong credentials, whatever is offered.
        (N,   true, "PLAIN", ["creds", "creds", "creds"]),
        (PL,  true, "PLAIN", ["creds", "creds", "creds"]),
        (CPL, true, "PLAIN", ["creds", "creds", "creds"]),
        (ALL, true, "PLAIN", ["creds", "creds", "creds"]),
        (XP,  true, "PLAIN", ["creds", "creds", "creds"]),
        (L,   true, "PLAIN", ["creds", "creds", "creds"]),
        (N,   true, "LOGIN", ["creds", "creds", "creds"]),
        (PL,  true, "LOGIN", ["creds", "creds", "creds"]),
        (CPL, true, "LOGIN", ["creds", "creds", "creds"]),
        (ALL, true, "LOGIN", ["creds", "creds", "creds"]),
        (XP,  true, "LOGIN", ["creds", "creds", "creds"]),
        (L,   true, "LOGIN", ["creds", "creds", "creds"]),
        (N,   true, "CRAM-MD5", ["creds", "creds", "creds"]),
        (PL,  true, "CRAM-MD5", ["creds", "creds", "creds"]),
        (CPL, true, "CRAM-MD5", ["creds", "creds", "creds"]),
        (ALL, true, "CRAM-MD5", ["creds", "creds", "creds"]),
        (XP,  true, "CRAM-MD5", ["creds", "creds", "creds"]),
        (L,   true, "CRAM-MD5", ["creds", "creds", "creds"]),
        (N,   true, "SCRAM-SHA-256", ["creds", "creds", "creds"]),
        (PL,  true, "SCRAM-SHA-256", ["creds", "creds", "creds"]),
        (CPL, true, "SCRAM-SHA-256", ["creds", "creds", "creds"]),
        (ALL, true, "SCRAM-SHA-256", ["creds", "creds", "creds"]),
        (XP,  true, "SCRAM-SHA-256", ["creds", "creds", "creds"]),
        (L,   true, "SCRAM-SHA-256", ["creds", "creds", "creds"]),
        // Token, explicit XOAUTH2: in the clear only under policy None.
        (N,   true, "XOAUTH2", ["offered", "offered", "offered"]),
        (PL,  true, "XOAUTH2", ["offered", "offered", "offered"]),
        (CPL, true, "XOAUTH2", ["offered", "offered", "offered"]),
        (ALL, true, "XOAUTH2", [XOAUTH2, "reveal", XOAUTH2]),
        (XP,  true, "XOAUTH2", [XOAUTH2, "reveal", XOAUTH2]),
        (L,   true, "XOAUTH2", ["offered", "offered", "offered"]),
    ];

    #[test]
    fn choose_mechanism_table() {
        for &(offered, oauth2, choice, [tls, clear, clear_none]) in TABLE {
            let row = format!("offered {offered:?}, token {oauth2}, {choice}");
            // With TLS the encryption policy makes no difference.
            assert_eq!(
                outcome(offered, oauth2, choice, true, false),
                tls,
                "{row}, TLS"
            );
            assert_eq!(
                outcome(offered, oauth2, choice, true, true),
                tls,
                "{row}, TLS, policy None"
            );
            assert_eq!(
                outcome(offered, oauth2, choice, false, false),
                clear,
                "{row}, clear"
            );
            assert_eq!(
                outcome(offered, oauth2, choice, false, true),
                clear_none,
                "{row}, clear, policy None"
            );
        }
    }

    #[test]
    fn choose_mechanism_table_covers_every_combination() {
        for offered in OFFERED_SETS {
            for oauth2 in [false, true] {
                for choice in CHOICES {
                    let rows = TABLE
                        .iter()
                        .filter(|r| r.0 == offered && r.1 == oauth2 && r.2 == choice)
                        .count();
                    assert_eq!(rows, 1, "offered {offered:?}, token {oauth2}, {choice}");
                }
            }
        }
        assert_eq!(TABLE.len(), OFFERED_SETS.len() * 2 * CHOICES.len());
    }

    #[test]
    fn choose_mechanism_checks_credentials() {
        let nul = Credentials::Password {
            username: "user".to_owned(),
            password: Secret::new("pa\0ss"),
        };
        let offered = vec!["PLAIN".to_owned()];
        assert!(matches!(
            choose_mechanism(&offered, &nul, AuthChoice::Auto, true, false),
            Err(SaslError::InvalidCredentials {
                mechanism: Mechanism::Plain,
                ..
            })
        ));
        let empty_user = Credentials::Password {
            username: String::new(),
            password: Secret::new("x"),
        };
        assert!(matches!(
            choose_mechanism(&offered, &empty_user, AuthChoice::Auto, true, false),
            Err(SaslError::InvalidCredentials { .. })
        ));
        let bad_token = Credentials::OAuth2 {
            username: "u".to_owned(),
            token: Secret::new("a\x01b"),
        };
        assert!(matches!(
            choose_mechanism(
                &["XOAUTH2".to_owned()],
                &bad_token,
                AuthChoice::Auto,
                true,
                false
            ),
            Err(SaslError::InvalidCredentials { .. })
        ));
    }

    #[test]
    fn xoauth2_refuses_credentials_that_could_inject_fields() {
        // ^A separates XOAUTH2's fields: in the username it would let the
        // username write an `auth=` field of its own; white space or control
        // characters in a bearer token are never valid and could end it early.
        let reason = |username: &str, token: &str| {
            let credentials = Credentials::OAuth2 {
                username: username.to_owned(),
                token: Secret::new(token),
            };
            match Mechanism::XOAuth2.check_credentials(&credentials) {
                Err(SaslError::InvalidCredentials { reason, .. }) => Some(reason),
                Err(e) => panic!("{e:?}"),
                Ok(()) => None,
            }
        };
        let separator =
            Some("the username or token contains a ^A character, which XOAUTH2 uses as separator");
        let spacing = Some("the token contains white space or control characters");
        assert_eq!(reason("u\x01auth=Bearer evil", "tok"), separator);
        assert_eq!(reason("u", "to\x01k"), separator);
        assert_eq!(reason("u", "to k"), spacing);
        assert_eq!(reason("u", "tok\x07"), spacing);
        assert_eq!(reason("u", "tok\u{2028}"), spacing);
        assert_eq!(reason("u@example.org", "ya29.a-b_c~d+e/f="), None);
    }

    #[test]
    fn error_messages_say_what_to_do() {
        let clear = choose_mechanism(&["PLAIN".to_owned()], &pw(), AuthChoice::Auto, false, false)
            .expect_err("PLAIN is not used automatically in the clear")
            .to_string();
        assert!(
            clear.contains("--tls required")
                && clear.contains("465")
                && clear.contains("--tls none"),
            "{clear}"
        );
        assert!(clear.contains("it offers: PLAIN"), "{clear}");
        let reveal = choose_mechanism(
            &["PLAIN".to_owned()],
            &pw(),
            AuthChoice::Explicit(Mechanism::Plain),
            false,
            false,
        )
        .expect_err("explicit PLAIN in the clear needs policy None")
        .to_string();
        assert!(
            reveal.contains("unencrypted") && reveal.contains("--tls required"),
            "{reveal}"
        );
        let not_offered = choose_mechanism(
            &["LOGIN".to_owned(), "X\x1b[2J".to_owned()],
            &pw(),
            AuthChoice::Explicit(Mechanism::ScramSha256),
            true,
            false,
        )
        .expect_err("not offered")
        .to_string();
        // The server's names are shown with control characters escaped.
        assert!(
            not_offered.contains("it offers: LOGIN X\\u{1b}[2J"),
            "{not_offered}"
        );
        let nothing = choose_mechanism(&[], &pw(), AuthChoice::Auto, true, false)
            .expect_err("nothing offered")
            .to_string();
        assert!(nothing.contains("it offers: none"), "{nothing}");
    }

    fn respond(auth: &mut Authenticator, challenge: &str) -> Result<String, SaslError> {
        auth.respond(challenge).map(|s| s.expose().to_owned())
    }

    #[test]
    fn rfc7677_through_authenticator() {
        // The RFC's client nonce is the base64 text of these 15 bytes.
        let nonce = STANDARD
            .decode("rOprNGfwEbeRWgbNEkqO")
            .expect("valid base64");
        let mut auth = Authenticator::new(Mechanism::ScramSha256, &pw(), &nonce);
        assert_eq!(auth.mechanism(), Mechanism::ScramSha256);
        let ir = auth
            .initial_response()
            .expect("SCRAM has an initial response");
        assert_eq!(ir.expose(), b64("n,,n=user,r=rOprNGfwEbeRWgbNEkqO"));
        let server_first = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        assert_eq!(
            respond(&mut auth, &format!(" {} ", b64(server_first))),
            Ok(b64(
                "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
            ))
        );
        // A 235 here would be a server fault: it has not proved anything yet.
        assert!(!auth.server_verified());
        assert_eq!(
            respond(
                &mut auth,
                &b64("v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
            ),
            Ok(String::new())
        );
        assert!(auth.server_verified());
        assert_eq!(auth.error_detail(), None);
    }

    #[test]
    fn scram_without_initial_response() {
        let mut auth = Authenticator::new(Mechanism::ScramSha256, &pw(), &[1; 18]);
        assert_eq!(
            respond(&mut auth, ""),
            Ok(b64("n,,n=user,r=AQEBAQEBAQEBAQEBAQEBAQEB"))
        );
    }

    #[test]
    fn scram_wrong_signature_and_server_error() {
        let nonce = STANDARD
            .decode("rOprNGfwEbeRWgbNEkqO")
            .expect("valid base64");
        let server_first = b64(
            "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
        );
        let mut auth = Authenticator::new(Mechanism::ScramSha256, &pw(), &nonce);
        let _ = auth.initial_response();
        respond(&mut auth, &server_first).expect("valid server-first");
        let wrong = b64("v=AAAATRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=");
        assert_eq!(
            respond(&mut auth, &wrong),
            Err(SaslError::ServerSignatureMismatch)
        );
        assert!(!auth.server_verified());
        // Once failed, it stays failed.
        assert_eq!(
            respond(&mut auth, ""),
            Err(SaslError::ServerSignatureMismatch)
        );

        let mut auth = Authenticator::new(Mechanism::ScramSha256, &pw(), &nonce);
        let _ = auth.initial_response();
        respond(&mut auth, &server_first).expect("valid server-first");
        assert!(matches!(
            respond(&mut auth, &b64("e=other-error\r\n")),
            Err(SaslError::ServerError { .. })
        ));
        assert_eq!(auth.error_detail(), Some("other-error\\r\\n"));
    }

    #[test]
    fn scram_needs_a_nonce() {
        let mut auth = Authenticator::new(Mechanism::ScramSha256, &pw(), &[]);
        assert_eq!(auth.initial_response(), None);
        assert_eq!(
            respond(&mut auth, ""),
            Err(SaslError::NonceTooShort { len: 0 })
        );
        let mut auth = Authenticator::new(Mechanism::ScramSha256, &pw(), &[0; MIN_NONCE_LEN - 1]);
        assert_eq!(auth.initial_response(), None);
        let mut auth = Authenticator::new(Mechanism::ScramSha256, &pw(), &[0; MIN_NONCE_LEN]);
        assert!(auth.initial_response().is_some());
    }

    #[test]
    fn mismatched_credentials_do_not_authenticate() {
        let mut auth = Authenticator::new(Mechanism::Plain, &tok(), &[]);
        assert_eq!(auth.initial_response(), None);
        assert!(matches!(
            respond(&mut auth, ""),
            Err(SaslError::CredentialsMismatch { .. })
        ));
        let mut auth = Authenticator::new(Mechanism::XOAuth2, &pw(), &[]);
        assert_eq!(auth.initial_response(), None);
        assert!(matches!(
            respond(&mut auth, ""),
            Err(SaslError::CredentialsMismatch { .. })
        ));
    }

    #[test]
    fn plain_login_xoauth2_cram_through_authenticator() {
        let mut auth = Authenticator::new(Mechanism::Plain, &pw(), &[]);
        assert_eq!(
            auth.initial_response().map(|s| s.expose().to_owned()),
            Some(b64("\0user\0pencil"))
        );
        assert!(!auth.server_verified());

        let mut auth = Authenticator::new(Mechanism::Login, &pw(), &[]);
        assert_eq!(auth.initial_response(), None);
        assert_eq!(respond(&mut auth, "VXNlcm5hbWU6"), Ok(b64("user")));
        assert_eq!(respond(&mut auth, "UGFzc3dvcmQ6"), Ok(b64("pencil")));
        assert!(matches!(
            respond(&mut auth, "UGFzc3dvcmQ6"),
            Err(SaslError::UnexpectedChallenge { .. })
        ));

        let tim = Credentials::Password {
            username: "tim".to_owned(),
            password: Secret::new("tanstaaftanstaaf"),
        };
        let mut auth = Authenticator::new(Mechanism::CramMd5, &tim, &[]);
        assert_eq!(auth.initial_response(), None);
        assert_eq!(
            respond(
                &mut auth,
                &b64("<1896.697170952@postoffice.reston.mci.net>")
            ),
            Ok(b64("tim b913a602c7eda7a495b4e6e7334d3890"))
        );

        let mut auth = Authenticator::new(Mechanism::XOAuth2, &tok(), &[]);
        assert_eq!(
            auth.initial_response().map(|s| s.expose().to_owned()),
            Some(b64(
                "user=user@example.com\x01auth=Bearer ya29.token\x01\x01"
            ))
        );
        let json = r#"{"status":"400","schemes":"Bearer","scope":"https://mail.google.com/"}"#;
        assert_eq!(respond(&mut auth, &b64(json)), Ok(String::new()));
        assert_eq!(auth.error_detail(), Some(json));
    }

    #[test]
    fn an_initial_response_beyond_the_512_octet_auth_line_waits_for_the_334() {
        // "AUTH PLAIN " + base64 + CRLF: 6 bytes of NULs and "user" plus a
        // 366-character password encode to 496 characters, a 509-octet
        // line; one more character makes 500 and 513 octets.
        let with_password = |len: usize| Credentials::Password {
            username: "user".to_owned(),
            password: Secret::new("p".repeat(len)),
        };
        let mut auth = Authenticator::new(Mechanism::Plain, &with_password(366), &[]);
        let sent = auth.initial_response_within_limit().expect("fits");
        assert_eq!(sent.expose().len(), 496);
        assert!(matches!(
            respond(&mut auth, ""),
            Err(SaslError::UnexpectedChallenge { .. })
        ));

        let mut auth = Authenticator::new(Mechanism::Plain, &with_password(367), &[]);
        assert_eq!(auth.initial_response_within_limit(), None);
        let later = respond(&mut auth, "").expect("the response follows the empty 334");
        assert_eq!(later.len(), 500);
        assert_eq!(later, b64(&format!("\0user\0{}", "p".repeat(367))));

        // Mechanisms without an initial response have none to hold back.
        let mut auth = Authenticator::new(Mechanism::Login, &pw(), &[]);
        assert_eq!(auth.initial_response_within_limit(), None);
    }

    #[test]
    fn a_derived_key_is_taken_only_while_a_derivation_is_pending() {
        let nonce = STANDARD.decode("rOprNGfwEbeRWgbNEkqO").unwrap();
        let mut auth = Authenticator::new(Mechanism::ScramSha256, &pw(), &nonce);
        let _ = auth.initial_response();
        let server_first = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        let Ok(Answer::Derive(job)) = auth.answer(&b64(server_first)) else {
            panic!("SCRAM hands its derivation out");
        };
        assert!(auth.is_deriving());
        let key = job.run();
        // Another mechanism, or SCRAM before its server-first-message: misuse.
        let mut other = Authenticator::new(Mechanism::Plain, &pw(), &[]);
        assert_eq!(
            other.derived(key.clone()),
            Err(SaslError::NoDerivationPending)
        );
        let mut early = Authenticator::new(Mechanism::ScramSha256, &pw(), &nonce);
        assert_eq!(
            early.derived(key.clone()),
            Err(SaslError::NoDerivationPending)
        );
        assert!(auth.derived(key.clone()).is_ok());
        assert!(!auth.is_deriving());
        assert_eq!(auth.derived(key), Err(SaslError::NoDerivationPending));
    }

    #[test]
    fn debug_output_never_shows_the_password_or_derived_key() {
        let nonce = STANDARD.decode("rOprNGfwEbeRWgbNEkqO").unwrap();
        let mut auth = Authenticator::new(Mechanism::ScramSha256, &pw(), &nonce);
        let _ = auth.initial_response();
        let server_first = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        let Ok(Answer::Derive(job)) = auth.answer(&b64(server_first)) else {
            panic!("SCRAM hands its derivation out");
        };
        let shown = format!("{job:?}");
        assert_eq!(shown, "KeyDerivation { iterations: 4096, .. }");
        let key = job.run();
        assert_eq!(format!("{key:?}"), "<redacted>");
        let shown = format!("{auth:?}");
        assert!(
            shown.starts_with("Authenticator { mechanism: ScramSha256")
                && !shown.contains("pencil"),
            "{shown}"
        );
    }

    #[test]
    fn an_equals_sign_is_the_empty_challenge() {
        // The server asks for the response held back from the AUTH line.
        let mut auth = Authenticator::new(Mechanism::Plain, &pw(), &[]);
        assert_eq!(respond(&mut auth, "="), Ok(b64("\0user\0pencil")));
        let mut auth = Authenticator::new(Mechanism::Plain, &pw(), &[]);
        assert_eq!(respond(&mut auth, "  "), Ok(b64("\0user\0pencil")));
    }

    #[test]
    fn malformed_challenges_are_errors() {
        let too_long = "A".repeat(MAX_CHALLENGE_LEN + 4);
        for m in [
            Mechanism::CramMd5,
            Mechanism::XOAuth2,
            Mechanism::ScramSha256,
            Mechanism::Plain,
        ] {
            for bad in ["!!!", "QQ", "QQ=", "Q Q==", too_long.as_str()] {
                let creds = if m == Mechanism::XOAuth2 { tok() } else { pw() };
                let mut auth = Authenticator::new(m, &creds, &[9; 18]);
                let _ = auth.initial_response();
                let got = respond(&mut auth, bad);
                assert!(
                    matches!(got, Err(SaslError::InvalidChallenge { .. })),
                    "{m} {bad:?}: {got:?}"
                );
            }
        }
    }

    fn any_challenge() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<String>(),
            proptest::collection::vec(any::<u8>(), 0..64).prop_map(|b| STANDARD.encode(b)),
            "[ -~]{0,40}".prop_map(|s| STANDARD.encode(s)),
            // SCRAM server-first-messages that get past the nonce check; the
            // iteration counts stay small or invalid to keep the test fast.
            (
                "[!-+\\--~]{0,8}",
                "[A-Za-z0-9+/=,]{0,12}",
                prop_oneof![
                    Just("4096"),
                    Just("1"),
                    Just(""),
                    Just("9999999999"),
                    Just("x")
                ],
                "[ -~]{0,8}"
            )
                .prop_map(|(tail, salt, i, ext)| STANDARD.encode(format!(
                    "r=AAAAAAAAAAAAAAAAAAAAAAAA{tail},s={salt},i={i}{ext}"
                ))),
            "[ -~]{0,40}".prop_map(|s| STANDARD.encode(format!("v={s}"))),
            "[ -~]{0,40}".prop_map(|s| STANDARD.encode(format!("e={s}"))),
        ]
    }

    proptest! {
        #[test]
        fn respond_never_panics(
            mechanism in proptest::sample::select(Mechanism::ALL.to_vec()),
            send_initial in any::<bool>(),
            challenges in proptest::collection::vec(any_challenge(), 0..5),
        ) {
            let creds = if mechanism == Mechanism::XOAuth2 { tok() } else { pw() };
            // 18 zero bytes: the client nonce is "AAAAAAAAAAAAAAAAAAAAAAAA".
            let mut auth = Authenticator::new(mechanism, &creds, &[0; 18]);
            if send_initial {
                let _ = auth.initial_response();
            }
            let mut failed = None;
            for c in &challenges {
                match auth.respond(c) {
                    Ok(r) => {
                        prop_assert!(failed.is_none());
                        prop_assert!(r.expose().is_empty() || STANDARD.decode(r.expose()).is_ok());
                    }
                    Err(e) => {
                        // Errors are sticky.
                        if let Some(first) = &failed {
                            prop_assert_eq!(first, &e);
                        }
                        failed = Some(e);
                    }
                }
            }
            let _ = auth.error_detail();
            let _ = auth.server_verified();
        }
    }
}
