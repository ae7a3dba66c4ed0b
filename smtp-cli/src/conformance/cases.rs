//! The case table: each case is what the server does, what passes, and the
//! RFC section that says so. `smtp conformance client --list` prints it;
//! docs/conformance.md holds that table (a test checks every id is there).

use smtp_testkit::hostile::Phase;

use super::judge::Check::{self, *};
use super::server::{BASE, Cert, Fault, Server, StartTls};

/// What a case needs of the client; without it the case is skipped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Needs {
    /// A STARTTLS client (not one that speaks implicit TLS).
    StartTls,
    /// A command that authenticates.
    Auth,
    /// A client that verifies certificates.
    Verifies,
    /// An implicit-TLS command.
    Implicit,
}

/// The message the client is given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Message {
    /// A plain CRLF message.
    Normal,
    /// Larger than the advertised SIZE.
    Big,
    /// LF line ends throughout (a Unix file).
    BareLf,
    /// A bare CR inside a line.
    BareCr,
    /// `\n.\n` inside, then what would be a second transaction.
    LfDotLf,
    /// `\r\n.\n` inside, then what would be a second transaction.
    CrlfDotLf,
    /// Lines starting with a dot, and one holding only a dot.
    DotLines,
}

/// One case.
#[derive(Debug)]
pub(crate) struct Case {
    pub(crate) id: &'static str,
    /// What the server does, in one line.
    pub(crate) server_does: &'static str,
    /// What passes, in one line.
    pub(crate) passes: &'static str,
    pub(crate) rfc: &'static str,
    pub(crate) needs: &'static [Needs],
    pub(crate) server: Server,
    pub(crate) message: Message,
    /// Recipients given to the client (1 or 2).
    pub(crate) recipients: usize,
    /// The checks, in order; the first that fails is the verdict.
    pub(crate) checks: &'static [Check],
    /// The checks for a client in opportunistic mode, when they differ.
    pub(crate) opportunistic: Option<&'static [Check]>,
}

const fn case(id: &'static str, server_does: &'static str, passes: &'static str) -> Case {
    Case {
        id,
        server_does,
        passes,
        rfc: "",
        needs: &[],
        server: BASE,
        message: Message::Normal,
        recipients: 1,
        checks: &[],
        opportunistic: None,
    }
}

const fn fault(phase: Phase, f: Fault) -> Server {
    Server {
        fault: Some((phase, f)),
        ..BASE
    }
}

const DELIVERS: &[Check] = &[
    TlsOnly,
    Delivered,
    ExitZero("exited {exit} though the message was delivered"),
];
const CONSISTENT: &[Check] = &[Consistent];
const SMUGGLE: &[Check] = &[CleanData, Consistent];

macro_rules! fails_at {
    ($id:literal, $phase:expr, $f:expr, $what:literal, $does:literal, $rfc:literal) => {
        Case {
            rfc: $rfc,
            server: fault($phase, $f),
            checks: &[
                Bounded,
                NotDelivered,
                ExitNonZero(concat!("exited 0 after ", $what)),
            ],
            ..case(
                $id,
                $does,
                "exits non-zero in bounded time, nothing delivered",
            )
        }
    };
}

/// Every case, in the order they are listed.
pub(crate) static CASES: &[Case] = &[
    Case {
        rfc: "RFC 5321 §3",
        checks: DELIVERS,
        ..case(
            "baseline",
            "a well-behaved server: STARTTLS, AUTH after TLS, PIPELINING",
            "delivered, exit 0, MAIL and AUTH only inside TLS (required mode)",
        )
    },
    Case {
        rfc: "RFC 3207 §4, RFC 8314 §5",
        needs: &[Needs::StartTls],
        server: Server {
            starttls: StartTls::NotOffered,
            ..BASE
        },
        checks: &[
            NoCommand("MAIL", "sent MAIL FROM without TLS, though it requires TLS"),
            ExitNonZero("exited 0 though it requires TLS and the server offered none"),
        ],
        opportunistic: Some(CONSISTENT),
        ..case(
            "starttls-missing",
            "does not offer STARTTLS",
            "required: no MAIL, exit non-zero; opportunistic: plaintext, exit status matches delivery",
        )
    },
    Case {
        rfc: "RFC 3207 §4",
        needs: &[Needs::StartTls],
        server: Server {
            starttls: StartTls::Refused,
            ..BASE
        },
        checks: &[
            NoCommand(
                "MAIL",
                "sent MAIL FROM after STARTTLS was refused, though it requires TLS",
            ),
            ExitNonZero("exited 0 though STARTTLS was refused"),
        ],
        opportunistic: Some(&[NoSecretInClear, Consistent]),
        ..case(
            "starttls-refused",
            "answers STARTTLS with 454 4.7.0",
            "required: no MAIL, exit non-zero; opportunistic: no secret in clear, exit status matches delivery",
        )
    },
    Case {
        rfc: "RFC 3207 §4.2, CVE-2011-0411",
        needs: &[Needs::StartTls],
        server: Server {
            starttls: StartTls::Injected,
            ..BASE
        },
        checks: &[NoInjection, Consistent],
        ..case(
            "starttls-injection",
            "sends STARTTLS's 220 and a forged EHLO reply in the same packet, before the handshake",
            "nothing sent after the new EHLO before its real reply; exit status matches delivery",
        )
    },
    Case {
        rfc: "RFC 3207 §4, RFC 4954 §4",
        needs: &[Needs::StartTls, Needs::Auth],
        server: Server {
            starttls: StartTls::NotOffered,
            auth_in_plaintext: true,
            ..BASE
        },
        checks: &[
            NoSecretInClear,
            NoCommand("MAIL", "sent MAIL FROM without TLS, though it requires TLS"),
            ExitNonZero("exited 0 though it requires TLS and the server offered none"),
        ],
        opportunistic: Some(&[NoSecretInClear, Consistent]),
        ..case(
            "starttls-stripped-auth",
            "offers AUTH PLAIN LOGIN but no STARTTLS (a stripped session)",
            "no AUTH and no password in clear; required: no MAIL, exit non-zero",
        )
    },
    Case {
        rfc: "RFC 3207 §4.1, RFC 8314 §4.1",
        needs: &[Needs::Verifies],
        server: Server {
            cert: Cert::SelfSigned,
            ..BASE
        },
        checks: &[
            NoCommandInTls("sent {verb} over TLS to a server whose certificate is self-signed"),
            ExitNonZero("exited 0 though the certificate is self-signed"),
        ],
        ..case(
            "cert-self-signed",
            "presents a self-signed certificate",
            "no AUTH or MAIL after the handshake, exit non-zero",
        )
    },
    Case {
        rfc: "RFC 8314 §4.1, RFC 5280 §4.1.2.5",
        needs: &[Needs::Verifies],
        server: Server {
            cert: Cert::Expired,
            ..BASE
        },
        checks: &[
            NoCommandInTls("sent {verb} over TLS to a server whose certificate expired"),
            ExitNonZero("exited 0 though the certificate expired"),
        ],
        ..case(
            "cert-expired",
            "presents a certificate from the test CA that expired in 2020",
            "no AUTH or MAIL after the handshake, exit non-zero",
        )
    },
    Case {
        rfc: "RFC 8314 §4.1, RFC 6125 §6",
        needs: &[Needs::Verifies],
        server: Server {
            cert: Cert::WrongName,
            ..BASE
        },
        checks: &[
            NoCommandInTls("sent {verb} over TLS to a server whose certificate names another host"),
            ExitNonZero("exited 0 though the certificate names another host"),
        ],
        ..case(
            "cert-wrong-name",
            "presents a certificate from the test CA for wrong.example only",
            "no AUTH or MAIL after the handshake, exit non-zero",
        )
    },
    Case {
        rfc: "RFC 8314 §3",
        needs: &[Needs::Implicit],
        checks: DELIVERS,
        ..case(
            "implicit-tls",
            "speaks TLS from the first byte (port 465 style)",
            "delivered over TLS, exit 0",
        )
    },
    Case {
        rfc: "RFC 4954 §4, §6",
        needs: &[Needs::Auth],
        server: Server {
            auth_refused: true,
            ..BASE
        },
        checks: &[
            NoCommand(
                "MAIL",
                "sent MAIL FROM after its authentication was refused",
            ),
            ExitNonZero("exited 0 though authentication failed (535)"),
        ],
        ..case(
            "auth-refused",
            "answers AUTH with 535 5.7.8",
            "no MAIL, exit non-zero",
        )
    },
    Case {
        rfc: "RFC 5321 §3.3, §4.2.5",
        server: Server {
            refused_rcpts: 1,
            ..BASE
        },
        recipients: 2,
        checks: &[ExitNonZero(
            "partial rejection not reported: exited 0 though one of two recipients was refused (550)",
        )],
        ..case(
            "rcpt-partial",
            "refuses the second of two recipients with 550 5.1.1",
            "exit non-zero (the refused recipient reported)",
        )
    },
    Case {
        rfc: "RFC 5321 §3.3, RFC 2920 §3.1",
        server: Server {
            refused_rcpts: 1,
            pipelining: false,
            ..BASE
        },
        checks: &[
            NoCommand("DATA", "sent DATA after every recipient was refused"),
            ExitNonZero("exited 0 though every recipient was refused"),
        ],
        ..case(
            "rcpt-all-refused",
            "refuses the only recipient with 550 5.1.1 (no PIPELINING)",
            "no DATA, exit non-zero",
        )
    },
    fails_at!(
        "421-greeting",
        Phase::Greeting,
        Fault::Reply421,
        "a 421 greeting",
        "greets with 421 4.3.2 and closes",
        "RFC 5321 §3.1, §4.2.3"
    ),
    fails_at!(
        "421-ehlo",
        Phase::Ehlo,
        Fault::Reply421,
        "a 421 to EHLO",
        "answers EHLO with 421 and closes",
        "RFC 5321 §3.8, §4.2.3"
    ),
    fails_at!(
        "421-mail",
        Phase::Mail,
        Fault::Reply421,
        "a 421 to MAIL",
        "answers MAIL with 421 and closes",
        "RFC 5321 §3.8, §4.2.3"
    ),
    fails_at!(
        "421-rcpt",
        Phase::Rcpt,
        Fault::Reply421,
        "a 421 to RCPT",
        "answers RCPT with 421 and closes",
        "RFC 5321 §3.8, §4.2.3"
    ),
    fails_at!(
        "421-data",
        Phase::Data,
        Fault::Reply421,
        "a 421 to DATA",
        "answers DATA with 421 and closes",
        "RFC 5321 §3.8, §4.2.3"
    ),
    fails_at!(
        "421-dot",
        Phase::EndOfData,
        Fault::Reply421,
        "a 421 to the end of data",
        "answers the end of data with 421 and closes",
        "RFC 5321 §4.1.1.4, §4.2.5"
    ),
    fails_at!(
        "lost-after-dot",
        Phase::EndOfData,
        Fault::Close,
        "the connection was lost before the reply to the end of data",
        "closes the connection after the dot without a reply",
        "RFC 5321 §4.1.1.4, §6.1"
    ),
    fails_at!(
        "silent-greeting",
        Phase::Greeting,
        Fault::Silence,
        "a greeting that never came",
        "accepts the connection and never greets",
        "RFC 5321 §4.5.3.2.1"
    ),
    fails_at!(
        "silent-ehlo",
        Phase::Ehlo,
        Fault::Silence,
        "no reply to EHLO",
        "never answers EHLO",
        "RFC 5321 §4.5.3.2"
    ),
    fails_at!(
        "silent-mail",
        Phase::Mail,
        Fault::Silence,
        "no reply to MAIL",
        "never answers MAIL",
        "RFC 5321 §4.5.3.2.2"
    ),
    fails_at!(
        "silent-rcpt",
        Phase::Rcpt,
        Fault::Silence,
        "no reply to RCPT",
        "never answers RCPT",
        "RFC 5321 §4.5.3.2.3"
    ),
    fails_at!(
        "silent-data",
        Phase::Data,
        Fault::Silence,
        "no reply to DATA",
        "never answers DATA",
        "RFC 5321 §4.5.3.2.4"
    ),
    fails_at!(
        "silent-dot",
        Phase::EndOfData,
        Fault::Silence,
        "no reply to the end of data",
        "never answers the end of data",
        "RFC 5321 §4.5.3.2.6"
    ),
    fails_at!(
        "drip-greeting",
        Phase::Greeting,
        Fault::Drip,
        "a greeting that was still dripping",
        "sends the greeting one byte a second (longer than the deadline)",
        "RFC 5321 §4.5.3.2"
    ),
    Case {
        rfc: "RFC 5321 §4.5.3.1.5",
        server: fault(Phase::Greeting, Fault::LongLine),
        checks: &[Bounded, Consistent],
        ..case(
            "long-reply-line",
            "greets with one 1 MiB line, then behaves",
            "no hang, no crash; exit status matches delivery",
        )
    },
    fails_at!(
        "endless-multiline",
        Phase::Ehlo,
        Fault::EndlessMultiline,
        "an EHLO reply that never ended",
        "answers EHLO with 250- lines that never end",
        "RFC 5321 §4.2.1, §4.5.3.1.5"
    ),
    Case {
        rfc: "RFC 5321 §4.1.1.1, §3.2",
        server: Server {
            ehlo_refused: true,
            ..BASE
        },
        checks: &[
            HeloFallback,
            NoCommand(
                "MAIL",
                "sent MAIL FROM without TLS (EHLO refused, so no STARTTLS), though it requires TLS",
            ),
            ExitNonZero("exited 0 though it requires TLS and EHLO was refused"),
        ],
        opportunistic: Some(&[HeloFallback, Delivered, Consistent]),
        ..case(
            "ehlo-refused",
            "answers EHLO with 502 5.5.2 (an old server)",
            "HELO before any MAIL; required: no MAIL, exit non-zero; opportunistic: delivered after HELO",
        )
    },
    Case {
        rfc: "RFC 2920 §3.1, §3.2",
        server: Server {
            hold_replies: true,
            ..BASE
        },
        checks: &[
            Bounded,
            NoBodyBefore354,
            Delivered,
            ExitZero("exited {exit} though the message was delivered"),
        ],
        ..case(
            "pipelining-held",
            "offers PIPELINING and holds replies until DATA or a second of quiet",
            "no body before the 354, delivered, exit 0",
        )
    },
    Case {
        rfc: "RFC 1870 §6",
        server: Server {
            small_size: true,
            ..BASE
        },
        message: Message::Big,
        checks: &[
            NoBody("sent the message body though it is larger than the advertised SIZE"),
            ExitNonZero("exited 0 though the message is larger than the server's SIZE"),
        ],
        ..case(
            "size-exceeded",
            "advertises SIZE 200, smaller than the message",
            "no body sent, exit non-zero",
        )
    },
    Case {
        rfc: "RFC 5321 §2.3.8, §4.1.1.4",
        message: Message::BareLf,
        checks: SMUGGLE,
        ..case(
            "data-bare-lf",
            "is given a message with LF line ends (a Unix file)",
            "only CRLF on the wire, data ends after the whole message",
        )
    },
    Case {
        rfc: "RFC 5321 §2.3.8, §4.1.1.4",
        message: Message::BareCr,
        checks: SMUGGLE,
        ..case(
            "data-bare-cr",
            "is given a message with a bare CR inside a line",
            "no bare CR on the wire, data ends after the whole message",
        )
    },
    Case {
        rfc: "RFC 5321 §4.1.1.4, SMTP smuggling (2023)",
        message: Message::LfDotLf,
        checks: SMUGGLE,
        ..case(
            "data-lf-dot-lf",
            "is given a message holding `\\n.\\n` then a second transaction's commands",
            "no bare LF on the wire, no early end of data",
        )
    },
    Case {
        rfc: "RFC 5321 §4.1.1.4, SMTP smuggling (2023)",
        message: Message::CrlfDotLf,
        checks: SMUGGLE,
        ..case(
            "data-crlf-dot-lf",
            "is given a message holding `\\r\\n.\\n` then a second transaction's commands",
            "no bare LF on the wire, no early end of data",
        )
    },
    Case {
        rfc: "RFC 5321 §4.5.2",
        message: Message::DotLines,
        checks: SMUGGLE,
        ..case(
            "data-dot-lines",
            "is given a message with lines starting with `.` and one holding only `.`",
            "dots stuffed: no early end of data",
        )
    },
];

/// Cases whose id matches one of `patterns` (ids or globs with `*`).
pub(crate) fn select(patterns: &[String]) -> Result<Vec<&'static Case>, String> {
    if patterns.is_empty() {
        return Ok(CASES.iter().collect());
    }
    for p in patterns {
        if !CASES.iter().any(|c| glob(p, c.id)) {
            return Err(format!("no case matches `{p}` (see --list)"));
        }
    }
    Ok(CASES
        .iter()
        .filter(|c| patterns.iter().any(|p| glob(p, c.id)))
        .collect())
}

/// `*` matches any run of characters; everything else itself.
fn glob(pattern: &str, text: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == text,
        Some((head, rest)) => {
            let Some(tail) = text.strip_prefix(head) else {
                return false;
            };
            (0..=tail.len()).any(|i| tail.is_char_boundary(i) && glob(rest, &tail[i..]))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_globs_select() {
        let mut ids: Vec<_> = CASES.iter().map(|c| c.id).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), CASES.len());
        let s = select(&["421-*".into(), "baseline".into()]).unwrap();
        assert_eq!(s.len(), 7);
        assert!(select(&["nope*".into()]).is_err());
        assert!(glob("*dot*", "data-lf-dot-lf"));
        assert!(!glob("silent-*", "drip-greeting"));
    }
}
