//! A streaming walk over a message body's MIME structure (RFC 2045, RFC
//! 2046 §5.1): line by line, in bounded memory whatever a line's length,
//! through multipart bodies and attached messages, finding the lines over
//! 998 octets and the part each is in.
//!
//! The same walk runs twice. The first only looks ([`Walker::analyze`])
//! and decides what each part with a long line needs; the second
//! ([`Walker::rewrite`]) writes the body again with those parts
//! re-encoded and every other line as it was (with CRLF line ends, as the
//! wire has them): only a part's own header gets a new
//! Content-Transfer-Encoding, and only header lines over 998 octets are
//! folded, preamble and epilogue lines (which readers ignore) broken.

use super::MAX_LINE;
use super::encode::{Action, Encoder};
use super::header::{self, Fields};
use super::plan::{Analysis, Cause, Part, Section};
use crate::message::field_name;

/// A line longer than this is not a boundary delimiter: `--`, a boundary
/// of at most 70, `--`, and some transport padding.
const DELIMITER_MAX: usize = 2 + 70 + 2 + 64;
/// A part's header section is held while it is read; at most this much.
const HEADER_MAX: usize = 64 * 1024;
/// Nesting (multiparts and attached messages) deeper than this is not walked.
const MAX_DEPTH: usize = 32;
/// Nor more parts than this.
const MAX_PARTS: u32 = 10_000;
enum Frame {
    /// A header section being read: a part's, or an attached message's.
    Head(Head),
    Multipart(Multipart),
    Leaf(Leaf),
}

struct Head {
    section: Section,
    /// The lines so far, each with CRLF.
    lines: Vec<u8>,
    /// Parts of a multipart/digest are message/rfc822 by default.
    in_digest: bool,
    /// Inside multipart/signed: nothing may change.
    signed: bool,
    /// An attached message's header (not a part's).
    message: bool,
    /// A line that is neither a field nor a continuation.
    malformed: bool,
}

struct Multipart {
    boundary: Vec<u8>,
    section: Section,
    parts: u32,
    /// After the close delimiter: the epilogue.
    closed: bool,
    signed: bool,
    digest: bool,
}

struct Leaf {
    part: Part,
    /// Rewriting: what it becomes.
    encoder: Option<(Action, Encoder)>,
    /// Rewriting: a line ended; whether that line break is content
    /// depends on whether a delimiter comes next.
    pending_break: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum LineState {
    /// Nothing of the line yet.
    Fresh,
    /// Held back: it may be a boundary delimiter.
    Holding,
    /// Passed on as it comes.
    Streaming,
}

/// The walk; see the module documentation.
pub(super) struct Walker<'p> {
    /// Rewriting: the parts to re-encode. `None`: only looking.
    plan: Option<&'p [(u32, Action)]>,
    frames: Vec<Frame>,
    analysis: Analysis,
    leaves: u32,
    parts: u32,
    /// The current line's number, octets so far, and held octets.
    line_no: u64,
    line_len: u64,
    held: Vec<u8>,
    state: LineState,
    /// Octets of the line written so far (to break a long epilogue line).
    written: u64,
    /// A CR ended the last chunk.
    pending_cr: bool,
    /// The structure could not be followed: lines are only counted.
    stopped: bool,
}

impl<'p> Walker<'p> {
    /// A walk that looks, over the body of a message with header `top`,
    /// whose first line is line `first_line` of the message.
    pub(super) fn analyze(top: &Fields, first_line: u64) -> Self {
        Self::new(top, first_line, None)
    }

    /// A walk that writes the body again, re-encoding the parts of `plan`.
    pub(super) fn rewrite(top: &Fields, first_line: u64, plan: &'p [(u32, Action)]) -> Self {
        Self::new(top, first_line, Some(plan))
    }

    fn new(top: &Fields, first_line: u64, plan: Option<&'p [(u32, Action)]>) -> Self {
        let mut w = Self {
            plan,
            frames: Vec::new(),
            analysis: Analysis::default(),
            leaves: 0,
            parts: 0,
            line_no: first_line,
            line_len: 0,
            held: Vec::new(),
            state: LineState::Fresh,
            written: 0,
            pending_cr: false,
            stopped: false,
        };
        let frame = w.body_frame(top, Section::default(), false, false, true);
        w.frames.push(frame);
        w
    }

    /// Walks the next chunk of the body; what is written goes to `out`.
    pub(super) fn feed(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        let mut rest = chunk;
        if rest.is_empty() {
            return;
        }
        if self.pending_cr {
            self.pending_cr = false;
            self.end_line(out);
            if let Some(after) = rest.strip_prefix(b"\n") {
                rest = after;
            }
        }
        while !rest.is_empty() {
            let Some(i) = memchr::memchr2(b'\r', b'\n', rest) else {
                self.content(rest, out);
                return;
            };
            self.content(&rest[..i], out);
            match &rest[i..] {
                [b'\r', b'\n', after @ ..] => rest = after,
                [b'\r'] => {
                    self.pending_cr = true;
                    return;
                }
                [_, after @ ..] => rest = after,
                [] => return,
            }
            self.end_line(out);
        }
    }

    /// Ends the walk: the last line, and every part still open.
    pub(super) fn finish(mut self, out: &mut Vec<u8>) -> Analysis {
        if self.pending_cr || self.line_len > 0 {
            self.pending_cr = false;
            self.end_line(out);
        }
        while let Some(f) = self.frames.pop() {
            self.close(f, true, out);
        }
        self.analysis
    }

    fn put(&self, out: &mut Vec<u8>, bytes: &[u8]) {
        if self.plan.is_some() {
            out.extend_from_slice(bytes);
        }
    }

    /// The frame for an entity's body, from its header fields.
    fn body_frame(
        &mut self,
        fields: &Fields,
        section: Section,
        signed: bool,
        in_digest: bool,
        top: bool,
    ) -> Frame {
        let signed = signed || fields.signature.is_some();
        let media = match fields.media_type() {
            Ok(m) => m,
            Err(why) => {
                return self.leaf(fields, section, "unknown".into(), signed, Some(why), top);
            }
        };
        let essence = match &media {
            Some(m) => m.essence.clone(),
            None if in_digest => "message/rfc822".into(),
            None => "text/plain".into(),
        };
        let identity = matches!(
            fields.encoding.as_deref(),
            None | Some("7bit" | "8bit" | "binary")
        );
        if self.frames.len() >= MAX_DEPTH {
            self.stop("parts nested too deep".into());
        } else if essence.starts_with("multipart/") {
            match media.and_then(|m| m.boundary) {
                Some(boundary) if identity => {
                    return Frame::Multipart(Multipart {
                        boundary,
                        signed: signed || essence == "multipart/signed",
                        digest: essence == "multipart/digest",
                        section,
                        parts: 0,
                        closed: false,
                    });
                }
                Some(_) => {
                    let why = "it is a multipart with a Content-Transfer-Encoding";
                    return self.leaf(fields, section, essence, signed, Some(why), top);
                }
                None => {
                    let why = "it is a multipart without a usable boundary";
                    return self.leaf(fields, section, essence, signed, Some(why), top);
                }
            }
        } else if identity && (essence == "message/rfc822" || essence == "message/global") {
            return Frame::Head(Head {
                section,
                lines: Vec::new(),
                in_digest: false,
                signed,
                message: true,
                malformed: false,
            });
        }
        self.leaf(fields, section, essence, signed, None, top)
    }

    fn leaf(
        &mut self,
        fields: &Fields,
        section: Section,
        essence: String,
        signed: bool,
        opaque: Option<&'static str>,
        top: bool,
    ) -> Frame {
        let ordinal = self.leaves;
        self.leaves += 1;
        let action = self.plan.and_then(|p| {
            p.binary_search_by_key(&ordinal, |(o, _)| *o)
                .ok()
                .map(|i| p[i].1)
        });
        Frame::Leaf(Leaf {
            part: Part {
                ordinal,
                section,
                essence,
                encoding: fields.encoding.clone(),
                signed,
                opaque,
                top,
                long: None,
            },
            encoder: action.map(|a| (a, a.encoder())),
            pending_break: false,
        })
    }

    /// Stops following the structure (it cannot be relied on from here).
    fn stop(&mut self, why: String) {
        self.stopped = true;
        self.analysis
            .keep
            .get_or_insert((None, Cause::Unreadable(why)));
    }

    fn in_multipart(&self) -> bool {
        self.frames
            .iter()
            .any(|f| matches!(f, Frame::Multipart(m) if !m.closed))
    }

    /// The multipart (by frame index) whose delimiter `line` is, and
    /// whether it is the close delimiter; the innermost first.
    fn delimiter(&self, line: &[u8]) -> Option<(usize, bool)> {
        let rest = line.strip_prefix(b"--")?;
        self.frames.iter().enumerate().rev().find_map(|(k, f)| {
            let Frame::Multipart(m) = f else { return None };
            let after = rest
                .strip_prefix(m.boundary.as_slice())
                .filter(|_| !m.closed)?;
            let (close, padding) = match after.strip_prefix(b"--") {
                Some(p) => (true, p),
                None => (false, after),
            };
            padding
                .iter()
                .all(|b| matches!(b, b' ' | b'\t'))
                .then_some((k, close))
        })
    }

    /// Octets of a line (no CR or LF).
    fn content(&mut self, seg: &[u8], out: &mut Vec<u8>) {
        if seg.is_empty() {
            return;
        }
        self.line_len += seg.len() as u64;
        if self.stopped {
            return;
        }
        match self.frames.last() {
            None => {}
            Some(Frame::Head(_)) => {
                if self.held.len() + seg.len() > HEADER_MAX {
                    self.stop("a part's header line is over 64 KiB".into());
                } else {
                    self.held.extend_from_slice(seg);
                }
            }
            Some(_) => match self.state {
                LineState::Streaming => self.body_bytes(seg, out),
                LineState::Fresh if seg[0] != b'-' || !self.in_multipart() => {
                    self.state = LineState::Streaming;
                    self.begin_content(out);
                    self.body_bytes(seg, out);
                }
                LineState::Fresh | LineState::Holding => {
                    self.state = LineState::Holding;
                    self.held.extend_from_slice(seg);
                    if self.held.len() > DELIMITER_MAX {
                        self.state = LineState::Streaming;
                        let held = std::mem::take(&mut self.held);
                        self.begin_content(out);
                        self.body_bytes(&held, out);
                    }
                }
            },
        }
    }

    /// A line of a body is content (not a delimiter): a line break held
    /// before it is content too.
    fn begin_content(&mut self, out: &mut Vec<u8>) {
        if let Some(Frame::Leaf(leaf)) = self.frames.last_mut()
            && let Some((_, e)) = &mut leaf.encoder
            && std::mem::take(&mut leaf.pending_break)
        {
            e.line_break(out);
        }
    }

    fn body_bytes(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        match self.frames.last_mut() {
            Some(Frame::Leaf(Leaf {
                encoder: Some((_, e)),
                ..
            })) => e.data(bytes, out),
            Some(Frame::Multipart(_)) if self.plan.is_some() => {
                // Preamble or epilogue: readers ignore it, so a line too
                // long is broken where it reaches 998.
                let mut rest = bytes;
                while !rest.is_empty() {
                    if self.written > 0 && self.written.is_multiple_of(MAX_LINE) {
                        out.extend_from_slice(b"\r\n");
                    }
                    let room = MAX_LINE - self.written % MAX_LINE;
                    let n = rest.len().min(usize::try_from(room).unwrap_or(usize::MAX));
                    out.extend_from_slice(&rest[..n]);
                    self.written += n as u64;
                    rest = &rest[n..];
                }
            }
            _ => self.put(out, bytes),
        }
    }

    fn end_line(&mut self, out: &mut Vec<u8>) {
        let (line, len) = (self.line_no, self.line_len);
        if len > MAX_LINE && self.analysis.first_long.is_none() {
            self.analysis.first_long = Some((line, len));
        }
        let held = std::mem::take(&mut self.held);
        let state = std::mem::replace(&mut self.state, LineState::Fresh);
        if !self.stopped {
            match self.frames.last() {
                None => {}
                Some(Frame::Head(_)) => self.head_line(&held, line, len, out),
                Some(_) => {
                    let delimiter = (state == LineState::Holding)
                        .then(|| self.delimiter(&held))
                        .flatten();
                    match delimiter {
                        Some((k, close)) => self.at_delimiter(k, close, &held, out),
                        None => {
                            if state != LineState::Streaming {
                                self.begin_content(out);
                                self.body_bytes(&held, out);
                            }
                            self.end_content(line, len, out);
                        }
                    }
                }
            }
        }
        self.held = held;
        self.held.clear();
        self.line_no += 1;
        self.line_len = 0;
        self.written = 0;
    }

    /// The end of a content line.
    fn end_content(&mut self, line: u64, len: u64, out: &mut Vec<u8>) {
        let rewriting = self.plan.is_some();
        match self.frames.last_mut() {
            Some(Frame::Leaf(leaf)) => {
                if len > MAX_LINE {
                    leaf.part.long.get_or_insert((line, len));
                }
                if leaf.encoder.is_some() {
                    leaf.pending_break = true;
                } else if rewriting {
                    out.extend_from_slice(b"\r\n");
                }
            }
            Some(Frame::Multipart(m)) => {
                let (signed, section) = (m.signed, m.section.clone());
                let place = if m.closed { "epilogue" } else { "preamble" };
                self.put(out, b"\r\n");
                if len > MAX_LINE {
                    if signed {
                        self.analysis
                            .keep
                            .get_or_insert((Some((line, len)), Cause::Signed));
                    } else {
                        let of = match section.is_body() {
                            true => String::new(),
                            false => format!(" of {section}"),
                        };
                        self.analysis.change(format!(
                            "line {line} ({len} octets, in the MIME {place}{of}) broken"
                        ));
                    }
                }
            }
            _ => {}
        }
    }

    /// A line of a header section.
    fn head_line(&mut self, held: &[u8], line: u64, len: u64, out: &mut Vec<u8>) {
        if let Some((k, close)) = self.delimiter(held) {
            return self.at_delimiter(k, close, held, out);
        }
        if held.is_empty() {
            return self.end_head(out);
        }
        let Some(Frame::Head(h)) = self.frames.last_mut() else {
            return;
        };
        let continuation = matches!(held.first(), Some(b' ' | b'\t')) && !h.lines.is_empty();
        if !continuation && field_name(held).is_none() {
            h.malformed = true;
        }
        h.lines.extend_from_slice(held);
        h.lines.extend_from_slice(b"\r\n");
        let (signed, section, size) = (h.signed, h.section.clone(), h.lines.len());
        if len > MAX_LINE {
            let a = &mut self.analysis;
            if signed {
                a.keep.get_or_insert((Some((line, len)), Cause::Signed));
            } else if header::fold(held).is_none() {
                a.unfoldable.get_or_insert((line, len, section));
            } else {
                a.change(format!(
                    "line {line} ({len} octets, in the header of {section}) folded"
                ));
            }
        }
        if size > HEADER_MAX {
            self.stop("a part's header section is over 64 KiB".into());
        }
    }

    /// The blank line after a header section: its body begins.
    fn end_head(&mut self, out: &mut Vec<u8>) {
        let Some(Frame::Head(h)) = self.frames.pop() else {
            return;
        };
        let fields = Fields::parse(&h.lines);
        let frame = if h.malformed {
            let why = "its header section holds a line that is not a header field";
            self.leaf(
                &fields,
                h.section,
                "unknown".into(),
                h.signed,
                Some(why),
                false,
            )
        } else {
            self.body_frame(&fields, h.section, h.signed, h.in_digest, false)
        };
        let encoding = match &frame {
            Frame::Leaf(Leaf {
                encoder: Some((a, _)),
                ..
            }) => a.declares(),
            _ => None,
        };
        if self.plan.is_some() {
            let add_version = h.message && !fields.mime_version;
            header::write_section(&h.lines, encoding, add_version, out);
            out.extend_from_slice(b"\r\n");
        }
        self.frames.push(frame);
    }

    /// A delimiter of the multipart at frame `k`: what is open inside it
    /// ends, and a part begins (or the epilogue).
    fn at_delimiter(&mut self, k: usize, close: bool, line: &[u8], out: &mut Vec<u8>) {
        while self.frames.len() > k + 1 {
            if let Some(f) = self.frames.pop() {
                self.close(f, false, out);
            }
        }
        self.put(out, line);
        self.put(out, b"\r\n");
        let Some(Frame::Multipart(m)) = self.frames.last_mut() else {
            return;
        };
        if close {
            m.closed = true;
            return;
        }
        m.parts += 1;
        let child = Head {
            section: m.section.child(m.parts),
            lines: Vec::new(),
            in_digest: m.digest,
            signed: m.signed,
            message: false,
            malformed: false,
        };
        self.parts += 1;
        if self.parts > MAX_PARTS {
            return self.stop(format!("over {MAX_PARTS} parts"));
        }
        self.frames.push(Frame::Head(child));
    }

    /// Ends a frame: at a delimiter of an enclosing multipart, or at the
    /// end of the body (`at_end`), where a line break held back is
    /// content, as the body ends with CRLF on the wire.
    fn close(&mut self, frame: Frame, at_end: bool, out: &mut Vec<u8>) {
        match frame {
            Frame::Leaf(mut leaf) => {
                if let Some((_, e)) = &mut leaf.encoder {
                    if at_end && leaf.pending_break {
                        e.line_break(out);
                    }
                    e.finish(out);
                    let ended = if at_end {
                        e.at_line_start()
                    } else {
                        !leaf.pending_break
                    };
                    if !ended {
                        out.extend_from_slice(b"\r\n");
                    }
                }
                self.analysis.judge(&leaf.part);
            }
            // A header section that a delimiter (or the end) cut short.
            Frame::Head(h) => {
                if self.plan.is_some() {
                    header::write_section(&h.lines, None, false, out);
                }
            }
            Frame::Multipart(_) => {}
        }
    }
}
