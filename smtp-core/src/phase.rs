//! The steps of an SMTP session, named in outcomes, errors and deadlines.

use std::fmt;

/// A step of an SMTP session: what the client was doing when something happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Phase {
    /// Opening the TCP connection (enforced by the driver).
    Connect,
    /// Waiting for the server's `220` greeting.
    Greeting,
    /// EHLO (or the HELO fallback).
    Ehlo,
    /// The STARTTLS command.
    StartTls,
    /// The TLS handshake (enforced by the driver).
    TlsHandshake,
    /// AUTH and its challenges.
    Auth,
    /// MAIL FROM.
    Mail,
    /// RCPT TO.
    Rcpt,
    /// The DATA command, up to its `354`.
    Data,
    /// Writing a block of message data (enforced by the driver).
    DataBlock,
    /// The reply to the end of the message data (`.` or `BDAT … LAST`).
    DataEnd,
    /// RSET.
    Rset,
    /// NOOP.
    Noop,
    /// QUIT.
    Quit,
}

impl Phase {
    /// True for the steps of a mail transaction (MAIL, RCPT, DATA, the data
    /// and its end), where a refusal is about the message or a recipient
    /// rather than the session.
    pub const fn is_transaction(self) -> bool {
        matches!(
            self,
            Self::Mail | Self::Rcpt | Self::Data | Self::DataBlock | Self::DataEnd
        )
    }

    /// A short lower-case name for messages ("greeting", "RCPT", …).
    pub const fn name(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Greeting => "greeting",
            Self::Ehlo => "EHLO",
            Self::StartTls => "STARTTLS",
            Self::TlsHandshake => "TLS handshake",
            Self::Auth => "AUTH",
            Self::Mail => "MAIL",
            Self::Rcpt => "RCPT",
            Self::Data => "DATA",
            Self::DataBlock => "message data",
            Self::DataEnd => "end of data",
            Self::Rset => "RSET",
            Self::Noop => "NOOP",
            Self::Quit => "QUIT",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
