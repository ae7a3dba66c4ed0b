//! Session set-up: greeting, EHLO (HELO fallback), STARTTLS, AUTH.
//!
//! One command at a time (RFC 2920 §3.1: EHLO, STARTTLS and AUTH end a
//! pipelined group anyway). The STARTTLS decisions follow the policy matrix
//! of DESIGN.md; the secret-revealing rule is enforced by
//! [`choose_mechanism`].

use std::time::Instant;

use super::event::{Event, Warning};
use super::outbox::Expect;
use super::{Client, State};
use crate::command::Command;
use crate::ehlo::Capabilities;
use crate::error::{Error, Misuse, PolicyError, ProtocolError};
use crate::phase::Phase;
use crate::policy::TlsPolicy;
use crate::reply::{Reply, ReplyCode, ReplyError, ReplyLimits};
use crate::sasl::{
    Answer, Authenticator, DerivedKey, KeyDerivation, MAX_CHALLENGE_LEN, Mechanism, SaslError,
    Secret, choose_mechanism,
};

/// The longest line of a reply to AUTH: `334 `, a challenge of RFC 4954 §4's
/// [`MAX_CHALLENGE_LEN`] octets, and CRLF.
const AUTH_REPLY_LINE_LEN: usize = 4 + MAX_CHALLENGE_LEN + 2;

/// EHLO replies after which HELO is worth a try (RFC 5321 §4.1.4: a server
/// that does not know EHLO answers 500, 502, 504 or 550).
const EHLO_UNSUPPORTED: [ReplyCode; 4] = [
    ReplyCode::SYNTAX_ERROR,
    ReplyCode::COMMAND_NOT_IMPLEMENTED,
    ReplyCode::PARAMETER_NOT_IMPLEMENTED,
    ReplyCode::MAILBOX_UNAVAILABLE,
];

impl Client {
    /// The bounds on the next reply. While an AUTH reply is awaited a line
    /// may carry a whole RFC 4954 challenge (12,288 octets), more than the
    /// configured line limit (8 KiB by default) that every other reply keeps:
    /// no other reply has a reason to be that long, and the buffer stays
    /// bounded either way, by a constant.
    pub(super) fn reply_limits(&self) -> ReplyLimits {
        let mut limits = self.config.reply_limits;
        if self.pending.front() == Some(Expect::Auth) {
            limits.max_line_len = limits.max_line_len.max(AUTH_REPLY_LINE_LEN);
            limits.max_reply_len = limits.max_reply_len.max(AUTH_REPLY_LINE_LEN);
        }
        limits
    }

    /// The error for a reply that broke the parser: a line too long for
    /// AUTH is said in RFC 4954's terms rather than as a configurable bound.
    pub(super) fn malformed(&self, e: ReplyError) -> Error {
        match e {
            ReplyError::LineTooLong { .. } if self.pending.front() == Some(Expect::Auth) => {
                ProtocolError::ChallengeTooLong {
                    limit: MAX_CHALLENGE_LEN,
                }
                .into()
            }
            e => ProtocolError::Malformed(e).into(),
        }
    }

    pub(super) fn send_ehlo(&mut self, now: Instant) {
        self.out.command(&Command::Ehlo(&self.config.client_id));
        self.pending.push(now, Expect::Ehlo);
    }

    pub(super) fn on_greeting(&mut self, now: Instant, reply: Reply) {
        if reply.code() != ReplyCode::SERVICE_READY {
            // RFC 5321 §3.1: after a 554 greeting the client should say QUIT.
            self.fail_and_quit(Error::Rejected {
                phase: Phase::Greeting,
                reply,
            });
            return;
        }
        self.out.event(Event::Greeting(reply));
        // Even with nothing to send, the session is set up before QUIT:
        // that is how a probe learns capabilities, TLS and AUTH.
        self.send_ehlo(now);
    }

    pub(super) fn on_ehlo(&mut self, now: Instant, reply: Reply) {
        let code = reply.code();
        if code.is_positive() {
            self.caps = Capabilities::from_reply(&reply);
            self.out.event(Event::Capabilities(self.caps.clone()));
            self.after_hello(now);
        } else if EHLO_UNSUPPORTED.contains(&code) {
            self.out.command(&Command::Helo(&self.config.client_id));
            self.pending.push(now, Expect::Helo);
        } else {
            self.fail_and_quit(Error::Rejected {
                phase: Phase::Ehlo,
                reply,
            });
        }
    }

    pub(super) fn on_helo(&mut self, now: Instant, reply: Reply) {
        if reply.code().is_positive() {
            self.caps = Capabilities::default();
            self.after_hello(now);
        } else {
            self.fail_and_quit(Error::Rejected {
                phase: Phase::Ehlo,
                reply,
            });
        }
    }

    /// After a successful EHLO/HELO: STARTTLS if the policy wants it, else AUTH.
    fn after_hello(&mut self, now: Instant) {
        let policy = self.config.tls;
        if self.tls || !policy.attempts_tls() {
            self.start_auth(now);
        } else if self.caps.starttls() {
            self.out.command(&Command::StartTls);
            self.pending.push(now, Expect::StartTls);
        } else if policy.requires_tls() {
            self.fail_and_quit(PolicyError::StartTlsNotOffered { policy }.into());
        } else {
            // Optional: plaintext, and start_auth will not reveal a secret.
            self.start_auth(now);
        }
    }

    /// Returns true when the driver must now do the TLS handshake.
    pub(super) fn on_starttls(&mut self, now: Instant, reply: Reply) -> bool {
        let policy = self.config.tls;
        if reply.code() == ReplyCode::SERVICE_READY {
            // The event comes from handle_input, once it has checked that
            // nothing followed the 220.
            self.state = State::TlsUpgrade;
            return true;
        }
        let code = reply.code();
        if code.is_transient() || code.is_permanent() {
            if policy == TlsPolicy::Optional {
                // The matrix: Optional goes on in plaintext on this connection.
                self.start_auth(now);
            } else {
                self.fail_and_quit(PolicyError::StartTlsRefused { policy, reply }.into());
            }
        } else if code.is_positive() || code.is_intermediate() {
            self.fail_and_quit(
                ProtocolError::UnexpectedReply {
                    phase: Phase::StartTls,
                    reply,
                }
                .into(),
            );
        } else {
            self.fail_and_quit(PolicyError::StartTlsRefused { policy, reply }.into());
        }
        false
    }

    fn start_auth(&mut self, now: Instant) {
        let Some(credentials) = self.config.credentials.as_ref() else {
            self.ready(now);
            return;
        };
        if self.caps.auth_mechanisms().is_empty() {
            self.fail_and_quit(PolicyError::AuthNotOffered { tls: self.tls }.into());
            return;
        }
        let plaintext_allowed = self.config.tls == TlsPolicy::None;
        let mechanism = match choose_mechanism(
            self.caps.auth_mechanisms(),
            credentials,
            self.config.auth,
            self.tls,
            plaintext_allowed,
        ) {
            Ok(m) => m,
            Err(e) => {
                self.fail_and_quit(e.into());
                return;
            }
        };
        if mechanism.reveals_secret() && !self.tls {
            self.out
                .event(Event::Warning(Warning::PlaintextSecret(mechanism)));
        }
        let mut auth = Authenticator::new(mechanism, credentials, &self.config.sasl_nonce)
            .with_max_iterations(self.config.max_scram_iterations);
        // RFC 4954 §4: an initial response that would make the AUTH line
        // longer than 512 octets goes after the server's empty 334 instead.
        let initial = auth.initial_response_within_limit();
        self.out.command(&Command::Auth {
            mechanism: mechanism.name(),
            initial_response: initial.as_ref().map(|s| s.expose()),
        });
        self.pending.push(now, Expect::Auth);
        self.auth = Some(auth);
    }

    pub(super) fn on_auth(&mut self, now: Instant, reply: Reply) {
        let Some(auth) = self.auth.as_mut() else {
            self.fail(
                ProtocolError::UnexpectedReply {
                    phase: Phase::Auth,
                    reply,
                }
                .into(),
            );
            return;
        };
        let mechanism = auth.mechanism();
        match reply.code() {
            ReplyCode::AUTH_CONTINUE => match auth.answer(reply.first_line()) {
                Ok(Answer::Send(response)) => self.send_auth_response(now, &response),
                Ok(Answer::Derive(job)) => {
                    self.derivation = Some(job);
                    self.out.event(Event::DerivationWanted);
                }
                Err(e) => self.cancel_auth(e),
            },
            ReplyCode::AUTH_SUCCESS
                if mechanism == Mechanism::ScramSha256 && !auth.server_verified() =>
            {
                self.fail_and_quit(ProtocolError::ScramUnverified.into());
            }
            ReplyCode::AUTH_SUCCESS => {
                self.auth = None;
                self.out.event(Event::Authenticated(mechanism));
                self.ready(now);
            }
            _ if reply.code().is_intermediate() || reply.code().is_positive() => {
                self.fail_and_quit(
                    ProtocolError::UnexpectedReply {
                        phase: Phase::Auth,
                        reply,
                    }
                    .into(),
                );
            }
            _ => {
                let detail = auth.error_detail().map(str::to_owned);
                self.fail_and_quit(Error::AuthenticationFailed {
                    mechanism,
                    reply,
                    detail,
                });
            }
        }
    }

    /// The key derivation asked for by [`Event::DerivationWanted`], once.
    #[must_use]
    pub fn take_derivation(&mut self) -> Option<KeyDerivation> {
        self.derivation.take()
    }

    /// The driver ran the [`KeyDerivation`] from
    /// [`take_derivation`](Self::take_derivation): the exchange goes on. After
    /// the session ended this does nothing; without a derivation pending it
    /// fails with [`Misuse::NoDerivationPending`].
    pub fn derivation_done(&mut self, now: Instant, key: DerivedKey) -> Result<(), Error> {
        if self.is_closed() {
            return Ok(());
        }
        let Some(auth) = self.auth.as_mut().filter(|a| a.is_deriving()) else {
            return Err(Misuse::NoDerivationPending.into());
        };
        self.derivation = None;
        match auth.derived(key) {
            Ok(response) => self.send_auth_response(now, &response),
            Err(e) => self.cancel_auth(e),
        }
        Ok(())
    }

    fn send_auth_response(&mut self, now: Instant, response: &Secret) {
        self.out.command(&Command::AuthResponse(response.expose()));
        self.pending.push(now, Expect::Auth);
    }

    /// Cancels the exchange (RFC 4954 §4) before leaving.
    fn cancel_auth(&mut self, e: SaslError) {
        self.fail_saying(e.into(), Some(&Command::AuthResponse("*")));
    }

    fn ready(&mut self, now: Instant) {
        self.state = State::Ready;
        self.out.event(Event::Ready);
        self.advance(now);
    }
}
