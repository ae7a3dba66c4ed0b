//! What a case's server is made of, in the case table's terms (the
//! runner turns it into a `smtp_testkit::hostile::HostileConfig`).

use smtp_testkit::hostile::Phase;

/// The server's certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Cert {
    /// Signed by the test CA for 127.0.0.1 and localhost.
    Valid,
    SelfSigned,
    Expired,
    /// Signed by the test CA, for another name.
    WrongName,
}

/// What STARTTLS does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StartTls {
    Offered,
    NotOffered,
    /// Answered `454`.
    Refused,
    /// `220` and a forged EHLO reply in the same packet.
    Injected,
}

/// The fault, in the case table's terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fault {
    Reply421,
    Close,
    Silence,
    /// One byte a second.
    Drip,
    /// A 1 MiB reply line.
    LongLine,
    EndlessMultiline,
}

/// The server of a case.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Server {
    pub(crate) starttls: StartTls,
    pub(crate) cert: Cert,
    /// AUTH offered before TLS too.
    pub(crate) auth_in_plaintext: bool,
    /// The client's password is refused (535).
    pub(crate) auth_refused: bool,
    pub(crate) pipelining: bool,
    pub(crate) hold_replies: bool,
    /// A SIZE smaller than the message.
    pub(crate) small_size: bool,
    /// EHLO answered 502.
    pub(crate) ehlo_refused: bool,
    /// How many of the recipients are refused (550), from the last.
    pub(crate) refused_rcpts: usize,
    pub(crate) fault: Option<(Phase, Fault)>,
}

pub(crate) const BASE: Server = Server {
    starttls: StartTls::Offered,
    cert: Cert::Valid,
    auth_in_plaintext: false,
    auth_refused: false,
    pipelining: true,
    hold_replies: false,
    small_size: false,
    ehlo_refused: false,
    refused_rcpts: 0,
    fault: None,
};
