//! The deadline of each session phase (RFC 5321 §4.5.3.2).
//!
//! A deadline starts when the client begins waiting for a reply and does not
//! move while bytes trickle in, so a server that drips one byte a minute
//! cannot hold a phase open past its limit.

use std::time::Duration;

use crate::phase::Phase;

/// How long each phase may take. Defaults are RFC 5321 §4.5.3.2's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// Opening the connection: 30 s (the RFC sets none; the driver enforces it
    /// for each address tried).
    pub connect: Duration,
    /// The greeting: 5 minutes.
    pub greeting: Duration,
    /// EHLO, HELO, STARTTLS, AUTH, RSET and NOOP: 5 minutes.
    pub command: Duration,
    /// The reply to QUIT: 10 seconds. Every message has its outcome by then,
    /// so a server slow to say goodbye must not hold the report back (RFC
    /// 5321 asks the client to wait for the reply, not for how long).
    pub quit: Duration,
    /// The TLS handshake: 1 minute (enforced by the driver).
    pub tls_handshake: Duration,
    /// MAIL: 5 minutes.
    pub mail: Duration,
    /// Each RCPT: 5 minutes.
    pub rcpt: Duration,
    /// DATA up to its `354`: 2 minutes.
    pub data: Duration,
    /// Each write of message data: 3 minutes (enforced by the driver).
    pub data_block: Duration,
    /// The reply to the end of data: 10 minutes.
    pub data_end: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        const MIN: u64 = 60;
        Self {
            connect: Duration::from_secs(30),
            greeting: Duration::from_secs(5 * MIN),
            command: Duration::from_secs(5 * MIN),
            quit: Duration::from_secs(10),
            tls_handshake: Duration::from_secs(MIN),
            mail: Duration::from_secs(5 * MIN),
            rcpt: Duration::from_secs(5 * MIN),
            data: Duration::from_secs(2 * MIN),
            data_block: Duration::from_secs(3 * MIN),
            data_end: Duration::from_secs(10 * MIN),
        }
    }
}

impl Timeouts {
    /// The same limit for every phase (handy for tests and impatient tools).
    pub const fn uniform(limit: Duration) -> Self {
        Self {
            connect: limit,
            greeting: limit,
            command: limit,
            quit: limit,
            tls_handshake: limit,
            mail: limit,
            rcpt: limit,
            data: limit,
            data_block: limit,
            data_end: limit,
        }
    }

    /// The limit for waiting on a reply in `phase`.
    pub const fn for_phase(&self, phase: Phase) -> Duration {
        match phase {
            Phase::Connect => self.connect,
            Phase::Greeting => self.greeting,
            Phase::TlsHandshake => self.tls_handshake,
            Phase::Mail => self.mail,
            Phase::Rcpt => self.rcpt,
            Phase::Data => self.data,
            Phase::DataBlock => self.data_block,
            Phase::DataEnd => self.data_end,
            Phase::Quit => self.quit,
            Phase::Ehlo | Phase::StartTls | Phase::Auth | Phase::Rset | Phase::Noop => self.command,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_rfc_5321() {
        let t = Timeouts::default();
        assert_eq!(t.for_phase(Phase::Greeting), Duration::from_secs(300));
        assert_eq!(t.for_phase(Phase::Mail), Duration::from_secs(300));
        assert_eq!(t.for_phase(Phase::Rcpt), Duration::from_secs(300));
        assert_eq!(t.for_phase(Phase::Data), Duration::from_secs(120));
        assert_eq!(t.for_phase(Phase::DataBlock), Duration::from_secs(180));
        assert_eq!(t.for_phase(Phase::DataEnd), Duration::from_secs(600));
        assert_eq!(t.for_phase(Phase::Quit), Duration::from_secs(10));
    }
}
