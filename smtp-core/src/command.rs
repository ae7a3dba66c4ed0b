//! Client commands as wire bytes (RFC 5321 §4.1.1 and the ESMTP parameters
//! of RFC 1870 SIZE, RFC 6152 8BITMIME, RFC 3030 BDAT/BINARYMIME, RFC 6531
//! SMTPUTF8, RFC 3461 DSN, RFC 8689 REQUIRETLS, RFC 4954 AUTH, RFC 3207
//! STARTTLS).
//!
//! Every argument is a validated type ([`Mailbox`], [`ClientId`], [`EnvId`]),
//! so a command can only ever end with its one CRLF: nothing a user types can
//! smuggle a second command onto the wire.

use crate::address::{AddressError, Mailbox, ReversePath};
use crate::data::BodyType;
use crate::ehlo::ClientId;

/// How much of a message a failure DSN returns (`RET=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Ret {
    /// The whole message.
    Full,
    /// Only the headers.
    Headers,
}

/// When to send DSNs for a recipient (`NOTIFY=`); all false means `NEVER`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Notify {
    /// On delivery.
    pub success: bool,
    /// On failure.
    pub failure: bool,
    /// On delay.
    pub delay: bool,
}

/// A DSN envelope identifier (RFC 3461 §4.4): 1 to 100 printable ASCII characters.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct EnvId(String);

impl EnvId {
    /// Validates an envelope identifier.
    pub fn new(s: &str) -> Result<Self, AddressError> {
        if s.is_empty() || s.len() > 100 || !s.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
            return Err(AddressError::InvalidParameter {
                what: "ENVID",
                reason: "must be 1 to 100 printable ASCII characters without spaces",
            });
        }
        Ok(Self(s.to_owned()))
    }

    /// The identifier.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// ESMTP parameters of MAIL FROM.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MailParams {
    /// `SIZE=` (RFC 1870).
    pub size: Option<u64>,
    /// `BODY=`; `None` sends no parameter.
    pub body: Option<BodyType>,
    /// `SMTPUTF8` (RFC 6531).
    pub smtputf8: bool,
    /// `RET=` (RFC 3461).
    pub ret: Option<Ret>,
    /// `ENVID=` (RFC 3461), xtext-encoded on the wire.
    pub envid: Option<EnvId>,
    /// `REQUIRETLS` (RFC 8689).
    pub requiretls: bool,
}

/// ESMTP parameters of RCPT TO.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RcptParams {
    /// `NOTIFY=` (RFC 3461).
    pub notify: Option<Notify>,
    /// `ORCPT=rfc822;…` (RFC 3461), xtext-encoded; a UTF-8 address as
    /// `ORCPT=utf-8;…` (RFC 6533), utf-8-addr-xtext-encoded.
    pub orcpt: Option<Mailbox>,
}

/// One client command, borrowing its parts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command<'a> {
    /// `EHLO name`.
    Ehlo(&'a ClientId),
    /// `HELO name`.
    Helo(&'a ClientId),
    /// `MAIL FROM:<path> params`.
    Mail {
        /// The reverse-path.
        from: &'a ReversePath,
        /// Its parameters.
        params: &'a MailParams,
    },
    /// `RCPT TO:<mailbox> params`.
    Rcpt {
        /// The recipient.
        to: &'a Mailbox,
        /// Its parameters.
        params: &'a RcptParams,
    },
    /// `DATA`.
    Data,
    /// `BDAT size [LAST]` (the chunk's octets follow, sent separately).
    Bdat {
        /// The chunk's size in octets.
        size: u64,
        /// This is the last chunk.
        last: bool,
    },
    /// `RSET`.
    Rset,
    /// `NOOP`.
    Noop,
    /// `QUIT`.
    Quit,
    /// `STARTTLS`.
    StartTls,
    /// `AUTH mechanism [initial-response]`.
    Auth {
        /// The SASL mechanism name.
        mechanism: &'a str,
        /// The base64 initial response (`=` for an empty one).
        initial_response: Option<&'a str>,
    },
    /// A line answering a `334` challenge: base64, or `*` to cancel.
    AuthResponse(&'a str),
}

impl Command<'_> {
    /// The command verb, for transcripts and errors.
    pub fn verb(&self) -> &'static str {
        match self {
            Self::Ehlo(_) => "EHLO",
            Self::Helo(_) => "HELO",
            Self::Mail { .. } => "MAIL",
            Self::Rcpt { .. } => "RCPT",
            Self::Data => "DATA",
            Self::Bdat { .. } => "BDAT",
            Self::Rset => "RSET",
            Self::Noop => "NOOP",
            Self::Quit => "QUIT",
            Self::StartTls => "STARTTLS",
            Self::Auth { .. } => "AUTH",
            Self::AuthResponse(_) => "AUTH response",
        }
    }

    /// Appends the command line, CRLF included, to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Self::Ehlo(id) => line(out, &["EHLO ", id.as_str()]),
            Self::Helo(id) => line(out, &["HELO ", id.as_str()]),
            Self::Mail { from, params } => {
                out.extend_from_slice(b"MAIL FROM:");
                out.extend_from_slice(from.to_string().as_bytes());
                mail_params(params, out);
                out.extend_from_slice(b"\r\n");
            }
            Self::Rcpt { to, params } => {
                out.extend_from_slice(b"RCPT TO:<");
                out.extend_from_slice(to.to_string().as_bytes());
                out.push(b'>');
                rcpt_params(params, out);
                out.extend_from_slice(b"\r\n");
            }
            Self::Data => out.extend_from_slice(b"DATA\r\n"),
            Self::Bdat { size, last } => {
                let last = if *last { " LAST" } else { "" };
                out.extend_from_slice(format!("BDAT {size}{last}\r\n").as_bytes());
            }
            Self::Rset => out.extend_from_slice(b"RSET\r\n"),
            Self::Noop => out.extend_from_slice(b"NOOP\r\n"),
            Self::Quit => out.extend_from_slice(b"QUIT\r\n"),
            Self::StartTls => out.extend_from_slice(b"STARTTLS\r\n"),
            Self::Auth {
                mechanism,
                initial_response: None,
            } => line(out, &["AUTH ", mechanism]),
            Self::Auth {
                mechanism,
                initial_response: Some(ir),
            } => {
                line(out, &["AUTH ", mechanism, " ", ir]);
            }
            Self::AuthResponse(text) => line(out, &[text]),
        }
    }
}

/// Writes `parts` and CRLF, dropping CR, LF and NUL: the SASL layer hands
/// over base64, but a line must never be able to carry a second command.
fn line(out: &mut Vec<u8>, parts: &[&str]) {
    for part in parts {
        out.extend(part.bytes().filter(|b| !matches!(b, b'\r' | b'\n' | 0)));
    }
    out.extend_from_slice(b"\r\n");
}

fn mail_params(p: &MailParams, out: &mut Vec<u8>) {
    if let Some(size) = p.size {
        out.extend_from_slice(format!(" SIZE={size}").as_bytes());
    }
    if let Some(body) = p.body {
        out.extend_from_slice(b" BODY=");
        out.extend_from_slice(body.keyword().as_bytes());
    }
    if p.smtputf8 {
        out.extend_from_slice(b" SMTPUTF8");
    }
    if let Some(ret) = p.ret {
        out.extend_from_slice(match ret {
            Ret::Full => b" RET=FULL",
            Ret::Headers => b" RET=HDRS",
        });
    }
    if let Some(envid) = &p.envid {
        let mut x = String::new();
        xtext_encode(envid.as_str(), &mut x);
        out.extend_from_slice(b" ENVID=");
        out.extend_from_slice(x.as_bytes());
    }
    if p.requiretls {
        out.extend_from_slice(b" REQUIRETLS");
    }
}

fn rcpt_params(p: &RcptParams, out: &mut Vec<u8>) {
    if let Some(n) = p.notify {
        out.extend_from_slice(b" NOTIFY=");
        let kinds: Vec<&str> = [
            (n.success, "SUCCESS"),
            (n.failure, "FAILURE"),
            (n.delay, "DELAY"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect();
        if kinds.is_empty() {
            out.extend_from_slice(b"NEVER");
        } else {
            out.extend_from_slice(kinds.join(",").as_bytes());
        }
    }
    if let Some(orcpt) = &p.orcpt {
        let mut x = String::new();
        if orcpt.needs_smtputf8() {
            // RFC 3461's rfc822 type is ASCII: a UTF-8 address takes RFC
            // 6533's utf-8 type, in its ASCII-only form, which any server
            // can pass on (even to one without SMTPUTF8).
            utf8_addr_xtext(&orcpt.to_string(), &mut x);
            out.extend_from_slice(b" ORCPT=utf-8;");
        } else {
            xtext_encode(&orcpt.to_string(), &mut x);
            out.extend_from_slice(b" ORCPT=rfc822;");
        }
        out.extend_from_slice(x.as_bytes());
    }
}

/// RFC 6533 §3 `utf-8-addr-xtext`: printable ASCII other than `+`, `=` and
/// `\` as it is; anything else as `\x{HEX}`, upper-case, with the fewest
/// digits (at least two).
fn utf8_addr_xtext(input: &str, out: &mut String) {
    for c in input.chars() {
        if c.is_ascii_graphic() && !matches!(c, '+' | '=' | '\\') {
            out.push(c);
        } else {
            out.push_str(&format!("\\x{{{:02X}}}", u32::from(c)));
        }
    }
}

/// xtext (RFC 3461 §4): octets outside `!`..`~`, and `+` and `=`, become `+XX`.
fn xtext_encode(input: &str, out: &mut String) {
    for b in input.bytes() {
        if (0x21..=0x7e).contains(&b) && b != b'+' && b != b'=' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("+{b:02X}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn wire(c: &Command<'_>) -> String {
        let mut out = Vec::new();
        c.encode(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn simple_commands() {
        let id = ClientId::parse("client.example.org").unwrap();
        assert_eq!(wire(&Command::Ehlo(&id)), "EHLO client.example.org\r\n");
        assert_eq!(wire(&Command::Helo(&id)), "HELO client.example.org\r\n");
        assert_eq!(wire(&Command::Data), "DATA\r\n");
        assert_eq!(wire(&Command::Rset), "RSET\r\n");
        assert_eq!(wire(&Command::Noop), "NOOP\r\n");
        assert_eq!(wire(&Command::Quit), "QUIT\r\n");
        assert_eq!(wire(&Command::StartTls), "STARTTLS\r\n");
        assert_eq!(
            wire(&Command::Bdat {
                size: 1024,
                last: false
            }),
            "BDAT 1024\r\n"
        );
        assert_eq!(
            wire(&Command::Bdat {
                size: 0,
                last: true
            }),
            "BDAT 0 LAST\r\n"
        );
        assert_eq!(
            wire(&Command::Auth {
                mechanism: "PLAIN",
                initial_response: Some("dGVzdA==")
            }),
            "AUTH PLAIN dGVzdA==\r\n"
        );
        assert_eq!(
            wire(&Command::Auth {
                mechanism: "LOGIN",
                initial_response: None
            }),
            "AUTH LOGIN\r\n"
        );
        assert_eq!(wire(&Command::AuthResponse("*")), "*\r\n");
        let literal = ClientId::parse("[192.0.2.1]").unwrap();
        assert_eq!(wire(&Command::Ehlo(&literal)), "EHLO [192.0.2.1]\r\n");
    }

    #[test]
    fn mail_with_every_parameter() {
        let from = ReversePath::parse("a@example.org").unwrap();
        let params = MailParams {
            size: Some(123),
            body: Some(BodyType::EightBitMime),
            smtputf8: true,
            ret: Some(Ret::Headers),
            envid: Some(EnvId::new("QQ314159+x=").unwrap()),
            requiretls: true,
        };
        assert_eq!(
            wire(&Command::Mail {
                from: &from,
                params: &params
            }),
            "MAIL FROM:<a@example.org> SIZE=123 BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=QQ314159+2Bx+3D REQUIRETLS\r\n"
        );
        let null = ReversePath::Null;
        assert_eq!(
            wire(&Command::Mail {
                from: &null,
                params: &MailParams::default()
            }),
            "MAIL FROM:<>\r\n"
        );
        let p = MailParams {
            body: Some(BodyType::BinaryMime),
            ret: Some(Ret::Full),
            ..Default::default()
        };
        assert_eq!(
            wire(&Command::Mail {
                from: &null,
                params: &p
            }),
            "MAIL FROM:<> BODY=BINARYMIME RET=FULL\r\n"
        );
    }

    #[test]
    fn rcpt_with_dsn() {
        let to = Mailbox::parse("b@example.net").unwrap();
        let all = RcptParams {
            notify: Some(Notify {
                success: true,
                failure: true,
                delay: true,
            }),
            orcpt: Some(to.clone()),
        };
        assert_eq!(
            wire(&Command::Rcpt {
                to: &to,
                params: &all
            }),
            "RCPT TO:<b@example.net> NOTIFY=SUCCESS,FAILURE,DELAY ORCPT=rfc822;b@example.net\r\n"
        );
        let never = RcptParams {
            notify: Some(Notify::default()),
            orcpt: None,
        };
        assert_eq!(
            wire(&Command::Rcpt {
                to: &to,
                params: &never
            }),
            "RCPT TO:<b@example.net> NOTIFY=NEVER\r\n"
        );
        assert_eq!(
            wire(&Command::Rcpt {
                to: &to,
                params: &RcptParams::default()
            }),
            "RCPT TO:<b@example.net>\r\n"
        );
    }

    #[test]
    fn xtext() {
        let mut s = String::new();
        xtext_encode("a+b=c d\u{e9}", &mut s);
        assert_eq!(s, "a+2Bb+3Dc+20d+C3+A9");
    }

    #[test]
    fn utf8_orcpt_uses_the_rfc6533_type() {
        let to = Mailbox::parse("jörg+x=y@example.com").unwrap();
        let params = RcptParams {
            notify: None,
            orcpt: Some(to.clone()),
        };
        assert_eq!(
            wire(&Command::Rcpt {
                to: &to,
                params: &params
            }),
            "RCPT TO:<jörg+x=y@example.com> ORCPT=utf-8;j\\x{F6}rg\\x{2B}x\\x{3D}y@example.com\r\n"
        );
        let mut s = String::new();
        utf8_addr_xtext("a\\b \u{7528}\u{1F600}", &mut s);
        assert_eq!(s, "a\\x{5C}b\\x{20}\\x{7528}\\x{1F600}");
    }

    #[test]
    fn envid_is_validated() {
        assert!(EnvId::new("").is_err());
        assert!(EnvId::new("has space").is_err());
        assert!(EnvId::new("line\r\nRSET").is_err());
        assert!(EnvId::new(&"x".repeat(101)).is_err());
        assert!(EnvId::new(&"x".repeat(100)).is_ok());
    }

    #[test]
    fn auth_lines_cannot_carry_a_second_command() {
        let c = Command::AuthResponse("abc\r\nMAIL FROM:<x@y>");
        assert_eq!(wire(&c), "abcMAIL FROM:<x@y>\r\n");
    }

    proptest! {
        #[test]
        fn only_one_crlf(local in "[a-zA-Z0-9.!#$%&'*+/=?^_`{|}~-]{1,20}", domain in "[a-z0-9]{1,10}(\\.[a-z0-9]{1,10}){0,3}",
                         size in proptest::option::of(any::<u64>()), envid in "[!-~]{1,100}") {
            let Ok(mailbox) = Mailbox::parse(&format!("{local}@{domain}")) else { return Ok(()) };
            let from = ReversePath::Mailbox(mailbox.clone());
            let params = MailParams { size, envid: Some(EnvId::new(&envid).unwrap()), ..Default::default() };
            let rcpt = RcptParams { notify: Some(Notify::default()), orcpt: Some(mailbox.clone()) };
            for c in [Command::Mail { from: &from, params: &params }, Command::Rcpt { to: &mailbox, params: &rcpt }] {
                let w = wire(&c);
                prop_assert!(w.ends_with("\r\n"));
                let body = &w[..w.len() - 2];
                prop_assert!(!body.contains('\r') && !body.contains('\n') && !body.contains('\0'), "{}", w);
            }
        }
    }
}
