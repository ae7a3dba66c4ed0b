//! The ids a store hands out: messages' and recipients'.

use std::fmt;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::millis;
use crate::error::{Error, Result};

/// A queued message's id: 28 lower-case hex digits, the enqueue time in
/// milliseconds (12) then 64 random bits (16), so ids sort by age. Safe as
/// a file name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MessageId(String);

impl MessageId {
    /// A new id for a message enqueued at `now`.
    pub fn generate(now: SystemTime) -> Self {
        let ms = millis(now).unwrap_or(0) as u64 & 0xffff_ffff_ffff;
        let mut random = [0u8; 8];
        if getrandom::fill(&mut random).is_err() {
            // No system randomness: the time's nanoseconds and a counter
            // still keep ids unique within this process.
            static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let nanos = now
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            random = (u64::from(nanos) << 32 ^ n).to_le_bytes();
        }
        Self(format!("{ms:012x}{:016x}", u64::from_le_bytes(random)))
    }

    /// Parses an id as printed; anything else is refused (ids name files).
    pub fn parse(text: &str) -> Result<Self> {
        let ok = text.len() == 28
            && text
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if ok {
            Ok(Self(text.to_owned()))
        } else {
            Err(Error::Misuse(format!(
                "{text:?} is not a message id (28 lower-case hex digits)"
            )))
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for MessageId {
    type Error = Error;
    fn try_from(text: String) -> Result<Self> {
        Self::parse(&text)
    }
}

impl From<MessageId> for String {
    fn from(id: MessageId) -> Self {
        id.0
    }
}

/// A recipient's id, unique in its store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RecipientId(pub i64);

impl fmt::Display for RecipientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}
