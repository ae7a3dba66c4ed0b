//! AUTH PLAIN and LOGIN on the hostile server: the credentials checked,
//! the exchange's lines kept off the command list (they are on the wire).

use std::io;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use super::{Flow, Phase, Session};

impl Session {
    pub(super) async fn auth(&mut self, arg: &str) -> io::Result<Flow> {
        let config = self.config.clone();
        let Some((user, password)) = &config.auth else {
            return self
                .reply(None, "503 5.5.1 AUTH not offered\r\n", false)
                .await;
        };
        if !self.tls && !config.auth_in_plaintext {
            return self
                .reply(None, "538 5.7.11 encryption required\r\n", false)
                .await;
        }
        let mut words = arg.split_whitespace();
        let mechanism = words.next().unwrap_or("").to_ascii_uppercase();
        let given = match mechanism.as_str() {
            "PLAIN" => {
                let response = match words.next() {
                    Some(r) => r.to_owned(),
                    None => match self.challenge("334 \r\n").await? {
                        Some(r) => r,
                        None => return Ok(Flow::End),
                    },
                };
                decode(&response).and_then(|d| {
                    let mut f = d.split('\0').skip(1);
                    Some((f.next()?.to_owned(), f.next()?.to_owned()))
                })
            }
            "LOGIN" => {
                let Some(u) = self.challenge("334 VXNlcm5hbWU6\r\n").await? else {
                    return Ok(Flow::End);
                };
                let Some(p) = self.challenge("334 UGFzc3dvcmQ6\r\n").await? else {
                    return Ok(Flow::End);
                };
                decode(&u).zip(decode(&p))
            }
            _ => {
                return self
                    .reply(None, "504 5.5.4 mechanism not supported\r\n", false)
                    .await;
            }
        };
        let ok = given.is_some_and(|(u, p)| &u == user && &p == password);
        let text = if ok {
            "235 2.7.0 authenticated\r\n"
        } else {
            "535 5.7.8 authentication credentials invalid\r\n"
        };
        self.reply(Some(Phase::Auth), text, false).await
    }

    /// Sends a `334` challenge and reads the response line (not logged as
    /// a command); `None` when the client left or the fault ended it.
    async fn challenge(&mut self, text: &str) -> io::Result<Option<String>> {
        if self.reply(Some(Phase::Auth), text, false).await? == Flow::End {
            return Ok(None);
        }
        Ok(self
            .next_line()
            .await?
            .map(|l| String::from_utf8_lossy(&l).into_owned()))
    }
}

/// Base64 decoded as (lossy) UTF-8.
fn decode(s: &str) -> Option<String> {
    STANDARD
        .decode(s.trim())
        .ok()
        .map(|b| String::from_utf8_lossy(&b).into_owned())
}
