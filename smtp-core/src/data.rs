//! Message bodies on the wire: DATA and BDAT (RFC 5321 §4.1.1.4, §4.5.2,
//! §4.5.3.1.6; RFC 3030; RFC 6152).
//!
//! A body arrives in chunks of any size and leaves in constant memory:
//!
//! - line endings become CRLF (a bare LF or a bare CR each end a line; a CR at
//!   the end of one chunk and an LF at the start of the next are one CRLF);
//! - for DATA, a line that starts with `.` gets one more (the first line too),
//!   and the end is exactly `CRLF.CRLF` (a CRLF is added if the body lacks one);
//! - the [`BodyRules`] are enforced as the bytes pass: 8-bit data, NUL and
//!   lines over 998 octets are errors that name the line.
//!
//! BINARYMIME bodies (BDAT with [`BodyRules::BINARY`]) pass unchanged.
//!
//! The hot loop copies whole runs between line ends (found with `memchr`),
//! never byte by byte. A chunk that is already its own encoding ("clean":
//! CRLF line ends only, no line starting with a dot where dots are stuffed,
//! within the rules) is recognised by one pass over it and copied whole;
//! any other chunk goes through the line-by-line loop. The check runs on
//! the very bytes that are copied, so a body that changed after it was
//! scanned is still encoded, never sent raw.

use std::fmt;

/// The body type of a message (`BODY=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BodyType {
    /// 7-bit text (no `BODY=` parameter is sent).
    SevenBit,
    /// 8-bit text (`BODY=8BITMIME`, RFC 6152).
    EightBitMime,
    /// Binary (`BODY=BINARYMIME`, RFC 3030; needs BDAT).
    BinaryMime,
}

impl BodyType {
    /// The `BODY=` keyword value.
    pub const fn keyword(self) -> &'static str {
        match self {
            Self::SevenBit => "7BIT",
            Self::EightBitMime => "8BITMIME",
            Self::BinaryMime => "BINARYMIME",
        }
    }

    /// What a body of this type may contain.
    pub const fn rules(self) -> BodyRules {
        match self {
            Self::SevenBit => BodyRules::SEVEN_BIT,
            Self::EightBitMime => BodyRules::EIGHT_BIT_MIME,
            Self::BinaryMime => BodyRules::BINARY,
        }
    }
}

/// What a body may contain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BodyRules {
    /// Octets above 127 are allowed (8BITMIME or BINARYMIME).
    pub allow_8bit: bool,
    /// NUL octets are allowed (BINARYMIME only: RFC 6152 forbids them in 8BITMIME).
    pub allow_nul: bool,
    /// The longest line in octets, excluding CRLF; `None` for no limit.
    pub max_line_len: Option<usize>,
    /// Bytes pass without line-ending normalisation (BINARYMIME over BDAT).
    pub binary: bool,
}

impl BodyRules {
    /// RFC 5322 line limit of 998 octets (1000 with CRLF).
    pub const MAX_LINE: usize = 998;
    /// A plain 7-bit message.
    pub const SEVEN_BIT: Self = Self {
        allow_8bit: false,
        allow_nul: false,
        max_line_len: Some(Self::MAX_LINE),
        binary: false,
    };
    /// An 8-bit message sent with `BODY=8BITMIME`.
    pub const EIGHT_BIT_MIME: Self = Self {
        allow_8bit: true,
        allow_nul: false,
        max_line_len: Some(Self::MAX_LINE),
        binary: false,
    };
    /// Anything goes (`BODY=BINARYMIME` over BDAT).
    pub const BINARY: Self = Self {
        allow_8bit: true,
        allow_nul: true,
        max_line_len: None,
        binary: true,
    };
}

/// A body that breaks its rules.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BodyError {
    /// 8-bit data in a 7-bit message.
    EightBit {
        /// 1-based line number.
        line: u64,
    },
    /// A line longer than the limit.
    LineTooLong {
        /// 1-based line number.
        line: u64,
        /// Its length so far, in octets.
        len: u64,
        /// The limit.
        limit: usize,
    },
    /// A NUL octet outside BINARYMIME.
    Nul {
        /// 1-based line number.
        line: u64,
    },
}

impl fmt::Display for BodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::EightBit { line } => write!(
                f,
                "line {line} of the message contains 8-bit data but the message is sent as \
                 7-bit; declare it 8-bit (the server must offer 8BITMIME) or encode the body \
                 as quoted-printable or base64"
            ),
            Self::LineTooLong { line, len, limit } => write!(
                f,
                "line {line} of the message is {len} octets long but SMTP allows {limit}; \
                 re-encode the body (quoted-printable or base64) so no line is longer"
            ),
            Self::Nul { line } => write!(
                f,
                "line {line} of the message contains a NUL octet, which only BINARYMIME \
                 allows; encode the body as base64"
            ),
        }
    }
}

impl std::error::Error for BodyError {}

/// Where bytes go: an output buffer, or a counter for [`BodyScanner`].
trait Sink {
    fn put(&mut self, bytes: &[u8]);
}

impl Sink for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// Counts instead of storing.
#[derive(Clone, Debug, Default)]
struct Count(u64);

impl Sink for Count {
    fn put(&mut self, bytes: &[u8]) {
        self.0 += bytes.len() as u64;
    }
}

/// What the body has shown so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Seen {
    eight_bit: bool,
    nul: bool,
    longest_line: u64,
    first_long_line: Option<u64>,
}

/// Line-ending normalisation, optional dot-stuffing and rule checks, shared
/// by the DATA and BDAT encoders and the scanner.
#[derive(Clone, Debug)]
struct Lines {
    rules: BodyRules,
    stuff: bool,
    /// Enforce the rules (the scanner only records).
    enforce: bool,
    at_line_start: bool,
    pending_cr: bool,
    /// 1-based number of the current line.
    line: u64,
    line_len: u64,
    bytes_in: u64,
    seen: Seen,
    failed: Option<BodyError>,
    /// Try [`clean`] on each chunk first (off only in tests, as the
    /// reference the fast path is checked against).
    fast: bool,
}

/// What [`clean`] learned about a chunk that is its own encoding.
#[derive(Clone, Copy, Debug)]
struct Clean {
    /// Line ends (CRLF) in the chunk.
    ends: u64,
    /// Octets after the last line end (the whole chunk when it has none).
    tail: u64,
    /// The longest line, counting the `line_len` octets before the chunk.
    longest: u64,
    eight_bit: bool,
    nul: bool,
}

/// Whether `chunk`, following a line of `line_len` octets (`at_line_start`
/// when it starts a line) with no CR pending, is its own encoding: every
/// LF preceded by a CR and every CR followed by an LF within it, and, when
/// `stuff`, no line that starts with a dot. One pass over the octets (the
/// 8-bit and NUL checks vectorise), plus a step per line end.
fn clean(chunk: &[u8], at_line_start: bool, line_len: u64, stuff: bool) -> Option<Clean> {
    if stuff && at_line_start && chunk.first() == Some(&b'.') {
        return None;
    }
    let mut ends = 0u64;
    // Where the current line's content starts, and its octets before the chunk.
    let mut start = 0usize;
    let mut carried = line_len;
    let mut longest = 0u64;
    for lf in memchr::memchr_iter(b'\n', chunk) {
        // An LF at 0 follows the previous chunk's last octet, which is no
        // CR (none is pending): a bare LF.
        if lf == 0 || chunk[lf - 1] != b'\r' {
            return None;
        }
        if stuff && chunk.get(lf + 1) == Some(&b'.') {
            return None;
        }
        // The content runs up to the CR; `lf - 1 >= start` as the CR
        // belongs to this line.
        longest = longest.max(carried + (lf - 1 - start) as u64);
        carried = 0;
        start = lf + 1;
        ends += 1;
    }
    // Every LF has its own CR before it: as many CRs as LFs means no CR
    // stands alone (nor ends the chunk).
    if memchr::memchr_iter(b'\r', chunk).count() as u64 != ends {
        return None;
    }
    let tail = (chunk.len() - start) as u64;
    longest = longest.max(carried + tail);
    let (or, min) = chunk
        .iter()
        .fold((0u8, u8::MAX), |(or, min), &b| (or | b, min.min(b)));
    Some(Clean {
        ends,
        tail: if ends == 0 { carried + tail } else { tail },
        longest,
        eight_bit: or & 0x80 != 0,
        nul: min == 0,
    })
}

impl Lines {
    fn new(rules: BodyRules, stuff: bool, enforce: bool) -> Self {
        Self {
            rules,
            stuff,
            enforce,
            at_line_start: true,
            pending_cr: false,
            line: 1,
            line_len: 0,
            bytes_in: 0,
            seen: Seen::default(),
            failed: None,
            fast: true,
        }
    }

    /// Takes `chunk` whole if it is clean and within the rules (with no CR
    /// pending); false leaves everything to the line-by-line loop, which
    /// also names any error.
    fn encode_clean(&mut self, chunk: &[u8], out: &mut impl Sink) -> bool {
        if !self.fast || self.pending_cr {
            return false;
        }
        let Some(c) = clean(chunk, self.at_line_start, self.line_len, self.stuff) else {
            return false;
        };
        // Anything the loop would refuse or record by line number is left to it.
        if self
            .rules
            .max_line_len
            .is_some_and(|limit| c.longest > limit as u64)
            || (self.enforce && c.eight_bit && !self.rules.allow_8bit)
            || (self.enforce && c.nul && !self.rules.allow_nul)
        {
            return false;
        }
        out.put(chunk);
        self.seen.eight_bit |= c.eight_bit;
        self.seen.nul |= c.nul;
        self.seen.longest_line = self.seen.longest_line.max(c.longest);
        self.line += c.ends;
        self.line_len = c.tail;
        self.at_line_start = c.ends > 0 && c.tail == 0;
        true
    }

    fn end_line(&mut self, out: &mut impl Sink) {
        out.put(b"\r\n");
        self.line += 1;
        self.line_len = 0;
        self.at_line_start = true;
    }

    /// Checks a run of line content (no CR or LF in it).
    fn check(&mut self, run: &[u8]) -> Result<(), BodyError> {
        self.line_len += run.len() as u64;
        self.seen.longest_line = self.seen.longest_line.max(self.line_len);
        if let Some(limit) = self.rules.max_line_len
            && self.line_len > limit as u64
        {
            self.seen.first_long_line.get_or_insert(self.line);
            if self.enforce {
                return Err(BodyError::LineTooLong {
                    line: self.line,
                    len: self.line_len,
                    limit,
                });
            }
        }
        // One pass that vectorises well: OR of all bytes tells 8-bit.
        if run.iter().fold(0u8, |acc, &b| acc | b) & 0x80 != 0 {
            self.seen.eight_bit = true;
            if self.enforce && !self.rules.allow_8bit {
                return Err(BodyError::EightBit { line: self.line });
            }
        }
        if memchr::memchr(0, run).is_some() {
            self.seen.nul = true;
            if self.enforce && !self.rules.allow_nul {
                return Err(BodyError::Nul { line: self.line });
            }
        }
        Ok(())
    }

    fn encode(&mut self, chunk: &[u8], out: &mut impl Sink) -> Result<(), BodyError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let result = self.encode_inner(chunk, out);
        if let Err(e) = &result {
            self.failed = Some(e.clone());
        }
        result
    }

    fn encode_inner(&mut self, chunk: &[u8], out: &mut impl Sink) -> Result<(), BodyError> {
        self.bytes_in += chunk.len() as u64;
        if self.rules.binary {
            out.put(chunk);
            return Ok(());
        }
        if chunk.is_empty() {
            // Keep a pending CR pending: only a byte can tell whether an LF follows.
            return Ok(());
        }
        if self.encode_clean(chunk, out) {
            return Ok(());
        }
        let mut rest = chunk;
        if self.pending_cr {
            // A CR ended the last chunk: it ends a line, with this LF or alone.
            self.pending_cr = false;
            self.end_line(out);
            if let Some(tail) = rest.strip_prefix(b"\n") {
                rest = tail;
            }
        }
        while let Some(&first) = rest.first() {
            if self.at_line_start {
                self.at_line_start = false;
                if self.stuff && first == b'.' {
                    out.put(b".");
                }
            }
            let Some(pos) = memchr::memchr2(b'\r', b'\n', rest) else {
                self.check(rest)?;
                out.put(rest);
                return Ok(());
            };
            let (run, tail) = rest.split_at(pos);
            self.check(run)?;
            out.put(run);
            // `tail` starts with the CR or LF found at `pos`.
            match tail {
                [b'\r', b'\n', after @ ..] => rest = after,
                [b'\r'] => {
                    self.pending_cr = true;
                    return Ok(());
                }
                [_, after @ ..] => rest = after,
                [] => return Ok(()),
            }
            self.end_line(out);
        }
        Ok(())
    }

    /// Ends the last line if it is open.
    fn finish_line(&mut self, out: &mut impl Sink) -> Result<(), BodyError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if self.rules.binary {
            return Ok(());
        }
        if self.pending_cr || !self.at_line_start {
            self.pending_cr = false;
            self.end_line(out);
        }
        Ok(())
    }
}

/// Streaming DATA encoder: CRLF line endings, dot-stuffing, `CRLF.CRLF`.
#[derive(Clone, Debug)]
pub struct DataEncoder {
    lines: Lines,
}

impl DataEncoder {
    /// A new encoder enforcing `rules`.
    pub fn new(rules: BodyRules) -> Self {
        Self {
            lines: Lines::new(
                BodyRules {
                    binary: false,
                    ..rules
                },
                true,
                true,
            ),
        }
    }

    /// Appends the encoded form of `chunk` to `out`. After an error the
    /// encoder stays failed and every call repeats the error.
    pub fn encode(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> Result<(), BodyError> {
        out.reserve(chunk.len() + chunk.len() / 32 + 2);
        self.lines.encode(chunk, out)
    }

    /// Appends whatever is pending and the end-of-data mark.
    pub fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), BodyError> {
        self.lines.finish_line(out)?;
        out.extend_from_slice(b".\r\n");
        Ok(())
    }

    /// Octets given so far.
    pub fn bytes_in(&self) -> u64 {
        self.lines.bytes_in
    }

    /// The 1-based number of the line being encoded.
    pub fn line(&self) -> u64 {
        self.lines.line
    }
}

/// Streaming BDAT body preparation: CRLF line endings (unless binary), no
/// dot-stuffing, no end mark: the caller frames the bytes as `BDAT n [LAST]`.
#[derive(Clone, Debug)]
pub struct BdatEncoder {
    lines: Lines,
}

impl BdatEncoder {
    /// A new encoder enforcing `rules`.
    pub fn new(rules: BodyRules) -> Self {
        Self {
            lines: Lines::new(rules, false, true),
        }
    }

    /// Appends the normalised form of `chunk` to `out`. A trailing CR is held
    /// back until the next call tells whether an LF follows.
    pub fn encode(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> Result<(), BodyError> {
        out.reserve(chunk.len() + chunk.len() / 32 + 2);
        self.lines.encode(chunk, out)
    }

    /// Appends what is pending: the body ends with CRLF, as over DATA.
    pub fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), BodyError> {
        self.lines.finish_line(out)
    }

    /// Octets given so far.
    pub fn bytes_in(&self) -> u64 {
        self.lines.bytes_in
    }
}

/// A pass over a message before it is sent, to choose `BODY=` and `SIZE=`.
#[derive(Clone, Debug)]
pub struct BodyScanner {
    lines: Lines,
    size: Count,
}

/// What a [`BodyScanner`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BodyFacts {
    /// Some octet is above 127.
    pub eight_bit: bool,
    /// Some octet is NUL.
    pub nul: bool,
    /// The longest line, in octets without its line ending.
    pub longest_line: u64,
    /// The first line over 998 octets (1-based), if any.
    pub first_long_line: Option<u64>,
    /// Lines in the message (a last line without a line ending counts).
    pub lines: u64,
    /// The size over DATA after normalisation and dot-stuffing, without the
    /// end-of-data mark: what `SIZE=` should say.
    pub encoded_size: u64,
}

impl BodyFacts {
    /// The facts of a message scanned in two parts, `self` then `next`,
    /// split right after a line end (a header section and its body): a
    /// body scanned once can be joined to many header sections. A split
    /// anywhere else may give other facts.
    #[must_use]
    pub fn then(self, next: Self) -> Self {
        Self {
            eight_bit: self.eight_bit || next.eight_bit,
            nul: self.nul || next.nul,
            longest_line: self.longest_line.max(next.longest_line),
            first_long_line: self
                .first_long_line
                .or(next.first_long_line.map(|line| line + self.lines)),
            lines: self.lines + next.lines,
            encoded_size: self.encoded_size + next.encoded_size,
        }
    }

    /// The rules the body needs: 7-bit, 8BITMIME, or BINARYMIME (for NUL or
    /// over-long lines).
    pub fn rules(&self) -> BodyRules {
        if self.nul || self.first_long_line.is_some() {
            BodyRules::BINARY
        } else if self.eight_bit {
            BodyRules::EIGHT_BIT_MIME
        } else {
            BodyRules::SEVEN_BIT
        }
    }
}

impl Default for BodyScanner {
    fn default() -> Self {
        Self::new()
    }
}

impl BodyScanner {
    /// A new scanner.
    pub fn new() -> Self {
        Self {
            lines: Lines::new(BodyRules::SEVEN_BIT, true, false),
            size: Count::default(),
        }
    }

    /// Scans the next chunk.
    pub fn scan(&mut self, chunk: &[u8]) {
        // Never fails: `enforce` is off, so checks only record.
        let _ = self.lines.encode(chunk, &mut self.size);
    }

    /// The facts about everything scanned.
    pub fn finish(mut self) -> BodyFacts {
        let _ = self.lines.finish_line(&mut self.size);
        let seen = self.lines.seen;
        BodyFacts {
            eight_bit: seen.eight_bit,
            nul: seen.nul,
            longest_line: seen.longest_line,
            first_long_line: seen.first_long_line,
            lines: self.lines.line - 1,
            encoded_size: self.size.0,
        }
    }
}

#[cfg(test)]
impl Lines {
    /// The line-by-line loop alone: the reference the clean-chunk path is
    /// checked against.
    fn reference(mut self) -> Self {
        self.fast = false;
        self
    }
}

#[cfg(test)]
impl DataEncoder {
    fn reference(mut self) -> Self {
        self.lines = self.lines.reference();
        self
    }
}

#[cfg(test)]
impl BdatEncoder {
    fn reference(mut self) -> Self {
        self.lines = self.lines.reference();
        self
    }
}

#[cfg(test)]
impl BodyScanner {
    fn reference(mut self) -> Self {
        self.lines = self.lines.reference();
        self
    }
}

#[cfg(test)]
mod tests;
