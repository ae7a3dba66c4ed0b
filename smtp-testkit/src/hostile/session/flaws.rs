//! What a server checker looks for: who the server takes mail for (a
//! relay check), and the flaws of [`super::super::Flaws`]: VRFY answered,
//! data ended at a bare LF.

use std::io;

use super::{Flow, MAX_RECORDED, Session};

impl Session {
    /// Why `to` is refused, if it is: bad syntax, or a domain the server
    /// does not take mail for.
    pub(super) fn refuse_rcpt(&self, to: &str) -> Option<&'static str> {
        let domain = to.rsplit_once('@').map(|(_, d)| d);
        match domain {
            None => Some("501 5.1.3 bad recipient address syntax\r\n"),
            Some(_) if to.contains(char::is_whitespace) => {
                Some("501 5.1.3 bad recipient address syntax\r\n")
            }
            Some(d)
                if !self.config.local_domains.is_empty()
                    && !self
                        .config
                        .local_domains
                        .iter()
                        .any(|l| l.eq_ignore_ascii_case(d)) =>
            {
                Some("554 5.7.1 relay access denied\r\n")
            }
            Some(_) => None,
        }
    }

    /// VRFY or EXPN answered with the address (the flaw).
    pub(super) async fn vrfy(&mut self, arg: &str) -> io::Result<Flow> {
        let who: String = arg
            .trim_matches(['<', '>'])
            .chars()
            .filter(|c| c.is_ascii_graphic())
            .take(64)
            .collect();
        let address = if who.contains('@') {
            who
        } else {
            format!("{who}@{}", self.config.hostname)
        };
        let text = format!("250 2.1.5 Postmaster <{address}>\r\n");
        self.reply(None, &text, false).await
    }

    /// The data up to the first line holding only a dot, where a line
    /// ends at LF whether or not CR comes before it: `\n.\n` ends the data
    /// (the lenient reading SMTP smuggling exploits).
    pub(super) async fn read_data_leniently(&mut self) -> io::Result<(Vec<u8>, bool)> {
        let mut data = std::mem::take(&mut self.buf);
        let mut line_start = 0;
        loop {
            while let Some(nl) = data
                .get(line_start..)
                .and_then(|d| d.iter().position(|&b| b == b'\n'))
            {
                let line = &data[line_start..line_start + nl];
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                if line == b"." {
                    self.buf = data.split_off(line_start + nl + 1);
                    data.truncate(line_start);
                    return Ok((data, true));
                }
                line_start += nl + 1;
            }
            if data.len() > MAX_RECORDED || self.read_more().await? == 0 {
                return Ok((data, false));
            }
            data.append(&mut self.buf);
        }
    }
}
