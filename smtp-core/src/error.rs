//! The crate's error type, split by who is at fault.
//!
//! - [`Error::Protocol`]: the server broke the protocol (malformed reply,
//!   response injection, a reply that makes no sense where it came).
//! - [`Error::Rejected`] and [`Error::AuthenticationFailed`]: the server said no,
//!   with its reply (permanent for 5xx, transient for 4xx).
//! - [`Error::Timeout`] and [`Error::ConnectionClosed`]: the server went quiet or away.
//! - [`Error::Policy`]: the session cannot meet the configured encryption or
//!   secret-handling policy.
//! - [`Error::Message`]: this message cannot be sent to this server as it is.
//! - [`Error::Tls`]: the TLS layer failed (reported by the driver).
//! - [`Error::Misuse`]: the caller broke the API contract.
//!
//! [`Error::fault`] sorts every error into a [`Fault`]: what a retry can
//! do about it. Every `Display` says what happened and what to do about it.

use std::fmt;
use std::time::Duration;

use crate::data::BodyError;
use crate::phase::Phase;
use crate::policy::TlsPolicy;
use crate::reply::{Reply, ReplyError};
use crate::sasl::{Mechanism, SaslError};

/// Everything that can go wrong in a session.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The server broke the SMTP protocol.
    Protocol(ProtocolError),
    /// The server refused a step with this reply.
    Rejected {
        /// What the client was doing.
        phase: Phase,
        /// The server's reply (4xx: transient, 5xx: permanent).
        reply: Reply,
    },
    /// The server did not accept the credentials.
    AuthenticationFailed {
        /// The mechanism that was tried.
        mechanism: Mechanism,
        /// The server's reply.
        reply: Reply,
        /// Extra detail from the mechanism (e.g. XOAUTH2's JSON error).
        detail: Option<String>,
    },
    /// No reply within the phase's deadline.
    Timeout {
        /// The phase that ran out of time.
        phase: Phase,
        /// Its limit.
        limit: Duration,
    },
    /// The server closed the connection.
    ConnectionClosed {
        /// What the client was waiting for.
        phase: Phase,
    },
    /// The server stopped reading what the client wrote: a write made no
    /// progress until the driver's deadline.
    WriteTimeout {
        /// What the client was sending.
        phase: Phase,
        /// The deadline the write had.
        limit: Duration,
    },
    /// The whole message went out but the session ended (`cause`) before
    /// the server answered its end of data: the server may have accepted it.
    /// A recipient with this error is deferred, never accepted; sending the
    /// message again may deliver it twice.
    OutcomeUnknown {
        /// What ended the session.
        cause: Box<Self>,
    },
    /// The encryption or secret-handling policy cannot be met.
    Policy(PolicyError),
    /// This message cannot go to this server as it is.
    Message(MessageError),
    /// Authentication could not proceed (no usable mechanism, bad challenge).
    Sasl(SaslError),
    /// The TLS layer failed; the failure (its kind, its words, and the
    /// certificate the server presented, when the handshake got that far:
    /// a certificate that failed verification can still be shown) comes
    /// from the driver.
    Tls(crate::delivery::TlsFailure),
    /// Direct delivery found no mail server to try for the domain (null MX,
    /// nonexistent domain, DNS failing, hosts without addresses).
    Plan(crate::delivery::mx::PlanError),
    /// No connection could be made (direct delivery: every address failed).
    Connect {
        /// What happened at each address.
        detail: String,
    },
    /// The caller broke the API contract.
    Misuse(Misuse),
}

/// Whose fault an [`Error`] is ([`Error::fault`]), and so what a retry can do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Fault {
    /// The caller's settings: credentials refused (5xx), a mechanism that
    /// cannot work, authentication the server requires, a TLS port spoken
    /// to in plaintext. The same settings fail again: fix them.
    Configuration,
    /// The server cannot meet the encryption policy (no STARTTLS, a
    /// refused certificate, a secret that would go readable). The same
    /// server usually fails the same way.
    Policy,
    /// This message cannot go to this server as it is (8-bit without
    /// 8BITMIME, a UTF-8 address without SMTPUTF8, over SIZE, a body that
    /// breaks its rules or cannot be read).
    Message,
    /// The server said no for now (4xx), broke the protocol, went quiet or
    /// away, or could not be reached: a later retry may succeed.
    Transient,
    /// The server said no for good (5xx), or the domain cannot take mail.
    Permanent,
    /// The server may have the message: its reply was lost. A retry may
    /// deliver it twice.
    Unknown,
    /// The caller broke the API contract.
    Misuse,
}

impl Error {
    /// True when retrying the same thing later cannot succeed: a 5xx refusal,
    /// a message the server cannot take. Everything else (4xx, timeouts,
    /// disconnects, policy not met this time) is worth a retry.
    pub fn is_permanent(&self) -> bool {
        match self {
            Self::Rejected { reply, .. } | Self::AuthenticationFailed { reply, .. } => {
                reply.code().is_permanent()
            }
            Self::Message(MessageError::Unreadable { .. }) => false,
            Self::Message(_) | Self::Misuse(_) => true,
            Self::Plan(e) => e.is_permanent(),
            Self::Protocol(_)
            | Self::Timeout { .. }
            | Self::ConnectionClosed { .. }
            | Self::WriteTimeout { .. }
            | Self::OutcomeUnknown { .. }
            | Self::Policy(_)
            | Self::Sasl(_)
            | Self::Tls(_)
            | Self::Connect { .. } => false,
        }
    }

    /// Whose fault this is, and so what a retry can do: the decision a
    /// queue or a caller's retry loop makes, without reading texts.
    pub fn fault(&self) -> Fault {
        use crate::delivery::TlsFailureKind;
        use crate::sasl::SaslFault;
        match self {
            Self::Rejected { reply, .. } if reply.is_authentication_required() => {
                Fault::Configuration
            }
            Self::Rejected { .. } | Self::Plan(_) if self.is_permanent() => Fault::Permanent,
            Self::AuthenticationFailed { reply, .. } if reply.code().is_permanent() => {
                Fault::Configuration
            }
            Self::Rejected { .. }
            | Self::AuthenticationFailed { .. }
            | Self::Plan(_)
            | Self::Protocol(_)
            | Self::Timeout { .. }
            | Self::ConnectionClosed { .. }
            | Self::WriteTimeout { .. }
            | Self::Connect { .. } => Fault::Transient,
            Self::OutcomeUnknown { .. } => Fault::Unknown,
            Self::Policy(_) => Fault::Policy,
            Self::Message(_) => Fault::Message,
            Self::Sasl(e) => match e.fault() {
                SaslFault::Configuration => Fault::Configuration,
                SaslFault::Policy => Fault::Policy,
                SaslFault::Misuse => Fault::Misuse,
                _ => Fault::Transient,
            },
            Self::Tls(f) => match f.kind {
                TlsFailureKind::Certificate => Fault::Policy,
                TlsFailureKind::PlaintextPeer | TlsFailureKind::Local => Fault::Configuration,
                _ => Fault::Transient,
            },
            Self::Misuse(_) => Fault::Misuse,
        }
    }

    /// The server's reply behind this error, if one.
    pub fn reply(&self) -> Option<&Reply> {
        match self {
            Self::Rejected { reply, .. } | Self::AuthenticationFailed { reply, .. } => Some(reply),
            Self::Policy(PolicyError::StartTlsRefused { reply, .. }) => Some(reply),
            Self::Protocol(ProtocolError::UnexpectedReply { reply, .. }) => Some(reply),
            _ => None,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Protocol(e) => write!(f, "the server broke the SMTP protocol: {e}"),
            Self::Rejected { phase, reply } => {
                let kind = if reply.code().is_permanent() {
                    "refused"
                } else {
                    "temporarily refused (try again later)"
                };
                write!(f, "server {kind} {phase}: {reply}")
            }
            Self::AuthenticationFailed {
                mechanism,
                reply,
                detail,
            } => {
                write!(f, "authentication with {mechanism} failed: {reply}")?;
                if let Some(d) = detail {
                    write!(f, " ({d})")?;
                }
                if reply.code().is_permanent() {
                    f.write_str("; check the user name and password (or token)")?;
                }
                Ok(())
            }
            Self::Timeout { phase, limit } => write!(
                f,
                "no reply to {phase} within {}s; the server or the network is too slow or \
                 unreachable, try again later or raise the timeout",
                limit.as_secs()
            ),
            Self::ConnectionClosed { phase } => write!(
                f,
                "the server closed the connection during {phase}; try again later"
            ),
            Self::WriteTimeout { phase, limit } => {
                let secs = limit.as_secs();
                if *phase == Phase::DataBlock {
                    write!(f, "the server stopped reading the message for {secs}s")?;
                } else {
                    write!(f, "the server stopped reading for {secs}s during {phase}")?;
                }
                f.write_str("; the server or the network is stuck, try again later")
            }
            Self::OutcomeUnknown { cause } => {
                f.write_str("outcome unknown: the whole message was sent, then ")?;
                match cause.as_ref() {
                    Self::ConnectionClosed { .. } => f.write_str("the connection was lost")?,
                    Self::Timeout { limit, .. } => {
                        write!(f, "no reply came within {}s", limit.as_secs())?;
                    }
                    other => write!(f, "the session failed ({other})")?,
                }
                f.write_str(
                    " before the server answered; the server may have accepted it, so \
                     sending it again may deliver it twice",
                )
            }
            Self::Policy(e) => e.fmt(f),
            Self::Message(e) => e.fmt(f),
            Self::Sasl(e) => write!(f, "authentication cannot proceed: {e}"),
            Self::Tls(failure) => write!(f, "TLS failed: {}", failure.detail),
            Self::Plan(e) => e.fmt(f),
            Self::Connect { detail } => write!(f, "could not connect: {detail}"),
            Self::Misuse(e) => write!(f, "API misuse: {e}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Protocol(ProtocolError::Malformed(e)) => Some(e),
            Self::Message(MessageError::Body(e)) => Some(e),
            Self::Sasl(e) => Some(e),
            Self::Plan(e) => Some(e),
            _ => None,
        }
    }
}

/// The server broke the protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProtocolError {
    /// A reply could not be parsed or broke a size bound.
    Malformed(ReplyError),
    /// Bytes arrived after the `220` to STARTTLS, before the TLS handshake:
    /// someone tried to inject replies into the encrypted session.
    ResponseInjection {
        /// How many bytes arrived.
        bytes: usize,
    },
    /// A reply that cannot answer what the client sent.
    UnexpectedReply {
        /// What the client was waiting for.
        phase: Phase,
        /// The reply.
        reply: Reply,
    },
    /// A reply before the command it would answer was sent (or when none
    /// was outstanding).
    Unsolicited(Reply),
    /// The server said `235` to SCRAM without proving it knows the password.
    ScramUnverified,
    /// A `334` challenge line longer than RFC 4954 §4 allows.
    ChallengeTooLong {
        /// The longest challenge accepted, in octets of base64
        /// ([`MAX_CHALLENGE_LEN`](crate::sasl::MAX_CHALLENGE_LEN)).
        limit: usize,
    },
    /// Input after the STARTTLS `220` and before the driver said TLS is up.
    InputDuringHandshake,
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Malformed(e) => e.fmt(f),
            Self::ResponseInjection { bytes } => write!(
                f,
                "{bytes} bytes arrived together with the 220 to STARTTLS, before encryption \
                 started (a response-injection attack or a broken middlebox); the session \
                 was abandoned"
            ),
            Self::UnexpectedReply { phase, reply } => {
                write!(f, "unexpected reply to {phase}: {reply}")
            }
            Self::Unsolicited(reply) => write!(
                f,
                "a reply came before any command it could answer was sent (a server \
                 answering twice or ahead, which would pair later replies with the wrong \
                 commands): {reply}"
            ),
            Self::ScramUnverified => f.write_str(
                "the server accepted SCRAM authentication without proving it knows the \
                 password (possible impostor); the session was abandoned",
            ),
            Self::ChallengeTooLong { limit } => write!(
                f,
                "the server's AUTH challenge is longer than the {limit} octets RFC 4954 \
                 allows; the server is misbehaving, and the exchange was abandoned"
            ),
            Self::InputDuringHandshake => {
                f.write_str("plaintext input arrived while the TLS handshake was pending")
            }
        }
    }
}

/// The configured policy cannot be met with this server.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PolicyError {
    /// The server does not offer STARTTLS (or did not say EHLO at all).
    StartTlsNotOffered {
        /// The policy in force.
        policy: TlsPolicy,
    },
    /// The server answered STARTTLS with an error.
    StartTlsRefused {
        /// The policy in force.
        policy: TlsPolicy,
        /// The refusal.
        reply: Reply,
    },
    /// The recipient domain's MTA-STS policy (RFC 8461, mode enforce)
    /// could not be met: no allowed MX host, no STARTTLS, or a certificate
    /// that did not verify for the MX host name. Never sent in plaintext.
    MtaSts {
        /// The policy, e.g. "MTA-STS policy of example.com (enforce)".
        policy: String,
        /// What failed.
        detail: String,
    },
    /// Credentials are set but the server offers no AUTH.
    AuthNotOffered {
        /// Whether the session was encrypted.
        tls: bool,
    },
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::StartTlsNotOffered { policy } => write!(
                f,
                "server does not offer STARTTLS; encryption is {policy} — the policy optional \
                 allows plaintext, or use implicit TLS (port 465)"
            ),
            Self::StartTlsRefused { policy, reply } => write!(
                f,
                "server refused STARTTLS ({reply}); encryption is {policy} — try again later; \
                 the policy optional allows plaintext, or use implicit TLS (port 465)"
            ),
            Self::MtaSts { policy, detail } => write!(
                f,
                "{policy} not met: {detail}; deferred, never sent in plaintext"
            ),
            Self::AuthNotOffered { tls: false } => f.write_str(
                "credentials are set but the server offers no AUTH on this plaintext session; \
                 many servers offer AUTH only after STARTTLS — require TLS (the policy \
                 required), or use port 587 / 465",
            ),
            Self::AuthNotOffered { tls: true } => f.write_str(
                "credentials are set but the server offers no AUTH; check the server and port \
                 (submission is usually 587 or 465), or send without credentials",
            ),
        }
    }
}

/// This message cannot be sent to this server as it is.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum MessageError {
    /// The body broke a rule while it was being sent.
    Body(BodyError),
    /// The message is 8-bit and the server lacks 8BITMIME.
    EightBitUnsupported,
    /// BINARYMIME was asked for and the server lacks BINARYMIME, CHUNKING or PIPELINING.
    BinaryUnsupported,
    /// An address has a UTF-8 local part, which needs SMTPUTF8 (RFC 6531),
    /// and the server lacks it. (A UTF-8 domain alone never does: it goes
    /// as A-labels.)
    Utf8Unsupported {
        /// The first such address: the sender's, else a recipient's.
        address: String,
        /// It is the sender (MAIL FROM), not a recipient.
        sender: bool,
    },
    /// REQUIRETLS was asked for and the session is not encrypted or the server lacks it.
    RequireTlsUnsupported,
    /// The message's source failed while it was being sent.
    Unreadable {
        /// What the source reported.
        detail: String,
    },
    /// The message is larger than the server's SIZE limit.
    TooLarge {
        /// The message size in octets.
        size: u64,
        /// The server's limit.
        limit: u64,
    },
}

impl fmt::Display for MessageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Body(e) => e.fmt(f),
            Self::EightBitUnsupported => f.write_str(
                "the message has 8-bit content but the server does not offer 8BITMIME; \
                 re-encode the body as quoted-printable or base64",
            ),
            Self::BinaryUnsupported => f.write_str(
                "the message needs BINARYMIME but the server does not offer BINARYMIME with \
                 CHUNKING and PIPELINING; re-encode the body as base64",
            ),
            Self::Utf8Unsupported { address, sender } => {
                let (whose, advice) = if *sender {
                    ("sender", "send from an ASCII address")
                } else {
                    ("recipient", "ask the recipient for an ASCII address")
                };
                write!(
                    f,
                    "the {whose} address {address} has non-ASCII characters before the @, which \
                     only a server that offers SMTPUTF8 (RFC 6531) can take, and this server \
                     does not offer SMTPUTF8; the message was not sent: {advice}, or send \
                     through a server that offers SMTPUTF8"
                )
            }
            Self::RequireTlsUnsupported => f.write_str(
                "the message requires REQUIRETLS but the session is not encrypted or the server \
                 does not offer REQUIRETLS",
            ),
            Self::Unreadable { detail } => write!(
                f,
                "the message could not be read while it was being sent ({detail}); nothing was \
                 delivered, fix the source and send again"
            ),
            Self::TooLarge { size, limit } => write!(
                f,
                "the message is {size} octets but the server accepts at most {limit}; send a \
                 smaller message (e.g. link large attachments)"
            ),
        }
    }
}

/// The caller broke the API contract.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Misuse {
    /// An envelope with no recipients.
    NoRecipients,
    /// A body chunk or body end when no body was asked for.
    NoBodyWanted,
    /// A call after the session ended or QUIT was requested.
    SessionOver,
    /// `tls_established` when no STARTTLS upgrade was pending.
    NoUpgradePending,
    /// `derivation_done` when no key derivation was pending.
    NoDerivationPending,
}

impl fmt::Display for Misuse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NoRecipients => "the envelope has no recipients; add at least one",
            Self::NoBodyWanted => {
                "body data given when the client had not asked for it (wait for Event::BodyWanted)"
            }
            Self::SessionOver => "the session is over or closing; open a new one",
            Self::NoUpgradePending => "tls_established called but no STARTTLS upgrade was pending",
            Self::NoDerivationPending => {
                "derivation_done called but no key derivation was pending (wait for \
                 Event::DerivationWanted)"
            }
        })
    }
}

impl From<ProtocolError> for Error {
    fn from(e: ProtocolError) -> Self {
        Self::Protocol(e)
    }
}

impl From<PolicyError> for Error {
    fn from(e: PolicyError) -> Self {
        Self::Policy(e)
    }
}

impl From<MessageError> for Error {
    fn from(e: MessageError) -> Self {
        Self::Message(e)
    }
}

impl From<Misuse> for Error {
    fn from(e: Misuse) -> Self {
        Self::Misuse(e)
    }
}

impl From<SaslError> for Error {
    fn from(e: SaslError) -> Self {
        Self::Sasl(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::{TlsFailure, TlsFailureKind};
    use crate::reply::ReplyCode;

    fn reply(code: u16) -> Reply {
        Reply::new(
            ReplyCode::new(code).expect("a valid code"),
            None,
            vec!["text".into()],
        )
    }

    #[test]
    fn every_error_says_whose_fault_it_is() {
        let rejected = |code| Error::Rejected {
            phase: Phase::Rcpt,
            reply: reply(code),
        };
        let auth = |code| Error::AuthenticationFailed {
            mechanism: Mechanism::Plain,
            reply: reply(code),
            detail: None,
        };
        let tls = |kind| Error::Tls(TlsFailure::new(kind, "x"));
        let cases = [
            (rejected(550), Fault::Permanent),
            (rejected(451), Fault::Transient),
            (rejected(530), Fault::Configuration),
            (auth(535), Fault::Configuration),
            (auth(454), Fault::Transient),
            (
                Error::ConnectionClosed { phase: Phase::Data },
                Fault::Transient,
            ),
            (
                Error::OutcomeUnknown {
                    cause: Box::new(Error::ConnectionClosed {
                        phase: Phase::DataEnd,
                    }),
                },
                Fault::Unknown,
            ),
            (
                Error::Policy(PolicyError::StartTlsNotOffered {
                    policy: TlsPolicy::Required,
                }),
                Fault::Policy,
            ),
            (tls(TlsFailureKind::Certificate), Fault::Policy),
            (tls(TlsFailureKind::PlaintextPeer), Fault::Configuration),
            (tls(TlsFailureKind::TimedOut), Fault::Transient),
            (
                Error::Sasl(SaslError::WouldRevealSecret {
                    mechanism: Mechanism::Plain,
                }),
                Fault::Policy,
            ),
            (
                Error::Sasl(SaslError::ServerSignatureMismatch),
                Fault::Transient,
            ),
            (
                Error::Plan(crate::delivery::mx::PlanError::NullMx {
                    domain: "x.test".into(),
                }),
                Fault::Permanent,
            ),
            (Error::Misuse(Misuse::NoRecipients), Fault::Misuse),
        ];
        for (e, fault) in cases {
            assert_eq!(e.fault(), fault, "{e}");
        }
    }
}
