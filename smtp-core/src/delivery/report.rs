//! What a session produced, filed from its events.

use crate::client::{Event, TranscriptLine, Warning};
use crate::delivery::transport::TlsInfo;
use crate::ehlo::Capabilities;
use crate::envelope::MessageOutcome;
use crate::error::Error;
use crate::reply::Reply;

/// Everything a session produced.
#[derive(Clone, Debug, Default)]
pub struct SessionReport {
    /// One outcome per message, in the order they finished.
    pub messages: Vec<MessageOutcome>,
    /// The fault that ended the session, if one did.
    pub error: Option<Error>,
    /// The server's greeting.
    pub greeting: Option<Reply>,
    /// The server's last EHLO capabilities.
    pub capabilities: Option<Capabilities>,
    /// The TLS facts, if the session was encrypted: from the transport for
    /// implicit TLS, from [`Event::TlsEstablished`] after STARTTLS.
    pub tls: Option<TlsInfo>,
    /// Warnings.
    pub warnings: Vec<Warning>,
    /// The transcript (only when the client was configured for one).
    pub transcript: Vec<TranscriptLine>,
}

impl SessionReport {
    /// Files an event under the report's fields (message results, greeting,
    /// capabilities, TLS facts, warnings, transcript, the ending fault).
    pub fn record(&mut self, event: Event) {
        match event {
            Event::Greeting(reply) => self.greeting = Some(reply),
            Event::Capabilities(caps) => self.capabilities = Some(caps),
            Event::TlsEstablished(info) => self.tls = Some(*info),
            Event::MessageResult(m) => self.messages.push(m),
            Event::Warning(w) => self.warnings.push(w),
            Event::Transcript(line) => self.transcript.push(line),
            Event::Failed(e) => self.error = Some(e),
            _ => {}
        }
    }
}
