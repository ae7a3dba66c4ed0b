//! Standard input as the message: held in memory up to
//! [`STDIN_IN_MEMORY`], spooled privately beyond; in sendmail mode without
//! `-i`, ended by a line holding only `.`, as sendmail reads it.

use std::io::{self, Read};
use std::sync::Arc;

use crate::fail::Failure;
use crate::message::Input;
use crate::spool::Spool;

/// Standard input up to this size is held in memory; beyond, it is spooled.
pub(crate) const STDIN_IN_MEMORY: usize = 16 * 1024 * 1024;

/// Reads standard input: into memory when it fits, else into a spool.
pub(crate) fn read_stdin(dot_ends: bool) -> Result<Input, Failure> {
    let stdin = io::stdin().lock();
    let mut stdin: Box<dyn Read> = if dot_ends {
        Box::new(UntilDot::new(stdin))
    } else {
        Box::new(stdin)
    };
    let mut bytes = Vec::new();
    (&mut stdin)
        .take(STDIN_IN_MEMORY as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Failure::io("cannot read standard input", &e))?;
    if bytes.len() <= STDIN_IN_MEMORY {
        return Ok(Input::Bytes(bytes));
    }
    let (spool, mut file) =
        Spool::create().map_err(|e| Failure::io("cannot spool standard input", &e))?;
    io::Write::write_all(&mut file, &bytes)
        .and_then(|()| io::copy(&mut stdin, &mut file).map(drop))
        .map_err(|e| Failure::io("cannot spool standard input", &e))?;
    Ok(Input::File(spool.path().to_owned(), Some(Arc::new(spool))))
}

/// Standard input as sendmail reads it without `-i`: a line holding only
/// `.` ends the message, and nothing after it is read.
struct UntilDot<R> {
    inner: R,
    /// The current piece of a line, and how much of it was handed out.
    line: Vec<u8>,
    pos: usize,
    /// The last piece did not end its line (a line longer than a piece).
    mid_line: bool,
    done: bool,
}

impl<R: io::BufRead> UntilDot<R> {
    /// Lines are read in pieces of at most this many bytes.
    const PIECE: u64 = 64 * 1024;

    fn new(inner: R) -> Self {
        Self {
            inner,
            line: Vec::new(),
            pos: 0,
            mid_line: false,
            done: false,
        }
    }
}

impl<R: io::BufRead> Read for UntilDot<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if let Some(rest) = self.line.get(self.pos..).filter(|r| !r.is_empty()) {
                let n = rest.len().min(buf.len());
                buf[..n].copy_from_slice(&rest[..n]);
                self.pos += n;
                return Ok(n);
            }
            if self.done {
                return Ok(0);
            }
            self.line.clear();
            self.pos = 0;
            let n = io::BufRead::read_until(
                &mut (&mut self.inner).take(Self::PIECE),
                b'\n',
                &mut self.line,
            )?;
            let starts_line = !self.mid_line;
            self.mid_line = self.line.last() != Some(&b'\n');
            let dot = matches!(self.line.as_slice(), b"." | b".\n" | b".\r\n");
            if n == 0 || (starts_line && dot) {
                self.line.clear();
                self.done = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lone_dot_line_ends_input_as_sendmail_reads_it() {
        let read = |input: &[u8]| {
            let mut out = Vec::new();
            // A tiny BufReader: lines arrive in many reads.
            let reader = io::BufReader::with_capacity(3, input);
            UntilDot::new(reader).read_to_end(&mut out).unwrap();
            out
        };
        assert_eq!(read(b"a\n.\nb\n"), b"a\n");
        assert_eq!(read(b"a\r\n.\r\nb\r\n"), b"a\r\n");
        assert_eq!(read(b"a\n."), b"a\n");
        assert_eq!(read(b".\n"), b"");
        assert_eq!(read(b"a\n..\n.x\n x\n"), b"a\n..\n.x\n x\n");
        // A dot that only looks alone because a long line was read in pieces.
        let mut long = vec![b'x'; 64 * 1024];
        long.extend_from_slice(b".\nz\n");
        assert_eq!(read(&long), long);
    }
}
