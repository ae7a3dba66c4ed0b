//! Reply codes (RFC 5321 §4.2.1) and what their first digit means.

use std::fmt;

/// A three-digit reply code, first digit 2..=5, second 0..=5, third 0..=9 (RFC 5321 §4.2.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReplyCode(u16);

impl ReplyCode {
    /// 211 System status, or system help reply.
    pub const SYSTEM_STATUS: Self = Self(211);
    /// 214 Help message.
    pub const HELP: Self = Self(214);
    /// 220 Service ready: the greeting, and the answer to STARTTLS (RFC 3207).
    pub const SERVICE_READY: Self = Self(220);
    /// 221 Service closing transmission channel: the answer to QUIT.
    pub const CLOSING: Self = Self(221);
    /// 235 Authentication succeeded (RFC 4954).
    pub const AUTH_SUCCESS: Self = Self(235);
    /// 250 Requested mail action okay, completed.
    pub const OK: Self = Self(250);
    /// 251 User not local; will forward.
    pub const USER_NOT_LOCAL_WILL_FORWARD: Self = Self(251);
    /// 252 Cannot VRFY user, but will accept message and attempt delivery.
    pub const CANNOT_VERIFY: Self = Self(252);
    /// 334 Server challenge during AUTH (RFC 4954).
    pub const AUTH_CONTINUE: Self = Self(334);
    /// 354 Start mail input; end with `<CRLF>.<CRLF>`.
    pub const START_MAIL_INPUT: Self = Self(354);
    /// 421 Service not available, closing transmission channel.
    pub const SERVICE_NOT_AVAILABLE: Self = Self(421);
    /// 432 A password transition is needed (RFC 4954).
    pub const PASSWORD_TRANSITION_NEEDED: Self = Self(432);
    /// 450 Mailbox unavailable (busy or temporarily blocked).
    pub const MAILBOX_BUSY: Self = Self(450);
    /// 451 Requested action aborted: local error in processing.
    pub const LOCAL_ERROR: Self = Self(451);
    /// 452 Insufficient system storage (also "too many recipients", RFC 5321 §4.5.3.1.10).
    pub const INSUFFICIENT_STORAGE: Self = Self(452);
    /// 454 TLS not available due to temporary reason (RFC 3207).
    pub const TLS_NOT_AVAILABLE: Self = Self(454);
    /// 454 Temporary authentication failure (RFC 4954); same number as
    /// [`TLS_NOT_AVAILABLE`](Self::TLS_NOT_AVAILABLE), the command tells them apart.
    pub const AUTH_TEMPORARY_FAILURE: Self = Self(454);
    /// 455 Server unable to accommodate parameters.
    pub const PARAMETERS_NOT_ACCOMMODATED: Self = Self(455);
    /// 500 Syntax error, command unrecognized (also: line too long).
    pub const SYNTAX_ERROR: Self = Self(500);
    /// 501 Syntax error in parameters or arguments.
    pub const PARAMETER_SYNTAX_ERROR: Self = Self(501);
    /// 502 Command not implemented.
    pub const COMMAND_NOT_IMPLEMENTED: Self = Self(502);
    /// 503 Bad sequence of commands.
    pub const BAD_SEQUENCE: Self = Self(503);
    /// 504 Command parameter not implemented.
    pub const PARAMETER_NOT_IMPLEMENTED: Self = Self(504);
    /// 530 Authentication required (RFC 4954); also "must issue STARTTLS first" (RFC 3207).
    pub const AUTH_REQUIRED: Self = Self(530);
    /// 534 Authentication mechanism is too weak (RFC 4954).
    pub const AUTH_MECHANISM_TOO_WEAK: Self = Self(534);
    /// 535 Authentication credentials invalid (RFC 4954).
    pub const AUTH_CREDENTIALS_INVALID: Self = Self(535);
    /// 538 Encryption required for requested authentication mechanism (RFC 4954).
    pub const ENCRYPTION_REQUIRED: Self = Self(538);
    /// 550 Mailbox unavailable (not found, no access, or rejected for policy reasons).
    pub const MAILBOX_UNAVAILABLE: Self = Self(550);
    /// 551 User not local.
    pub const USER_NOT_LOCAL: Self = Self(551);
    /// 552 Exceeded storage allocation (also: message too big, RFC 1870).
    pub const EXCEEDED_STORAGE: Self = Self(552);
    /// 553 Mailbox name not allowed.
    pub const MAILBOX_NAME_NOT_ALLOWED: Self = Self(553);
    /// 554 Transaction failed (or, as a greeting, "no SMTP service here").
    pub const TRANSACTION_FAILED: Self = Self(554);
    /// 555 MAIL FROM/RCPT TO parameters not recognized or not implemented.
    pub const PARAMETERS_NOT_RECOGNIZED: Self = Self(555);

    /// Returns the code if its digits are valid: first 2..=5, second 0..=5, third 0..=9.
    pub const fn new(code: u16) -> Option<Self> {
        if code >= 200 && code <= 599 && (code / 10) % 10 <= 5 {
            Some(Self(code))
        } else {
            None
        }
    }

    /// The code as a number, e.g. `250`.
    pub const fn as_u16(self) -> u16 {
        self.0
    }

    /// The first digit of the code: 2, 3, 4 or 5.
    pub const fn class(self) -> u8 {
        // The constructor keeps the value in 200..=599, so this is 2..=5 and fits in u8.
        (self.0 / 100) as u8
    }

    /// What the first digit says about the outcome.
    pub const fn severity(self) -> Severity {
        match self.0 / 100 {
            2 => Severity::PositiveCompletion,
            3 => Severity::PositiveIntermediate,
            4 => Severity::TransientNegative,
            _ => Severity::PermanentNegative,
        }
    }

    /// 2xx: the command succeeded.
    pub const fn is_positive(self) -> bool {
        self.0 / 100 == 2
    }

    /// 3xx: the server waits for more (DATA content, an AUTH response).
    pub const fn is_intermediate(self) -> bool {
        self.0 / 100 == 3
    }

    /// 4xx: failed for now; the same command may succeed later.
    pub const fn is_transient(self) -> bool {
        self.0 / 100 == 4
    }

    /// 5xx: failed; repeating the same command will fail again.
    pub const fn is_permanent(self) -> bool {
        self.0 / 100 == 5
    }

    /// Parses the three code digits at the start of a line.
    pub(super) fn from_digits(digits: &[u8]) -> Option<Self> {
        match digits {
            [a, b, c] if a.is_ascii_digit() && b.is_ascii_digit() && c.is_ascii_digit() => {
                Self::new(
                    u16::from(a - b'0') * 100 + u16::from(b - b'0') * 10 + u16::from(c - b'0'),
                )
            }
            _ => None,
        }
    }
}

impl fmt::Display for ReplyCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The meaning of a reply code's first digit (RFC 5321 §4.2.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Severity {
    /// 2yz: the requested action was completed.
    PositiveCompletion,
    /// 3yz: accepted, the server waits for further information.
    PositiveIntermediate,
    /// 4yz: not done, but the condition is temporary; try again later.
    TransientNegative,
    /// 5yz: not done, and repeating it will not help.
    PermanentNegative,
}
