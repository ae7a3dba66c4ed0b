//! What the walk over a body ([`super::walk`]) decides: which parts to
//! re-encode and how (RFC 2045 §6: text as quoted-printable, anything
//! else as base64, a part already encoded re-wrapped), and when a body
//! must stay as it is, why, in words for the user.

use std::fmt;

use super::encode::Action;

/// Changes listed one by one in the note; the rest are counted.
const MAX_CHANGES: usize = 8;

/// Where a part is: `part 2.1`, or the body of a single-part message.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Section(Vec<u32>);

impl Section {
    /// The body of a single-part message (or of the message itself).
    pub(super) fn is_body(&self) -> bool {
        self.0.is_empty()
    }

    pub(super) fn child(&self, n: u32) -> Self {
        let mut v = self.0.clone();
        v.push(n);
        Self(v)
    }
}

impl fmt::Display for Section {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some((first, rest)) = self.0.split_first() else {
            return f.write_str("the body");
        };
        write!(f, "part {first}")?;
        rest.iter().try_for_each(|n| write!(f, ".{n}"))
    }
}

/// What the walk found.
#[derive(Debug, Default)]
pub(super) struct Analysis {
    /// The first line over 998 octets: (line, octets).
    pub(super) first_long: Option<(u64, u64)>,
    /// The parts to re-encode, by their number in walk order (rising).
    pub(super) plan: Vec<(u32, Action)>,
    /// The action for the body of a single-part message, whose header is
    /// the message's own.
    pub(super) top: Option<Action>,
    /// Why the body cannot be re-encoded: where (when known) and why.
    pub(super) keep: Option<(Option<(u64, u64)>, Cause)>,
    /// A part header line that cannot be folded: (line, octets, part).
    pub(super) unfoldable: Option<(u64, u64, Section)>,
    /// What the rewrite changes, in words.
    pub(super) changes: Vec<String>,
    /// Changes beyond [`MAX_CHANGES`].
    pub(super) more_changes: u64,
}

impl Analysis {
    pub(super) fn change(&mut self, what: String) {
        if self.changes.len() < MAX_CHANGES {
            self.changes.push(what);
        } else {
            self.more_changes += 1;
        }
    }

    /// Decides what a leaf with a long line needs.
    pub(super) fn judge(&mut self, leaf: &Part) {
        let Some((line, len)) = leaf.long else {
            return;
        };
        let at = Some((line, len));
        let cause = if leaf.signed {
            Some(Cause::Signed)
        } else if matches!(
            leaf.essence.as_str(),
            "application/pkcs7-mime" | "application/x-pkcs7-mime"
        ) {
            Some(Cause::SMime)
        } else {
            leaf.opaque
                .map(|why| Cause::Unreadable(format!("{}: {why}", leaf.section)))
        };
        if let Some(c) = cause {
            self.keep.get_or_insert((at, c));
            return;
        }
        let text = leaf.essence.starts_with("text/");
        let action = match leaf.encoding.as_deref() {
            None | Some("7bit" | "8bit" | "binary") if text => Action::QuotedPrintable,
            None | Some("7bit" | "8bit" | "binary") => Action::Base64,
            Some("quoted-printable") => Action::RewrapQuotedPrintable,
            Some("base64") => Action::RewrapBase64,
            Some(other) => {
                let c = Cause::Encoding(leaf.section.to_string(), other.to_owned());
                self.keep.get_or_insert((at, c));
                return;
            }
        };
        self.plan.push((leaf.ordinal, action));
        if leaf.top {
            self.top = Some(action);
        }
        self.change(format!(
            "{} ({}) {}: line {line} was {len} octets",
            leaf.section,
            leaf.essence,
            action.done()
        ));
    }
}

/// A part without parts of its own, as the walk saw it.
#[derive(Debug)]
pub(super) struct Part {
    /// Its number in walk order.
    pub(super) ordinal: u32,
    pub(super) section: Section,
    /// Its media type, lower case.
    pub(super) essence: String,
    pub(super) encoding: Option<String>,
    /// Inside multipart/signed, or an attached message that is signed.
    pub(super) signed: bool,
    /// Why its structure cannot be relied on.
    pub(super) opaque: Option<&'static str>,
    /// The body of a single-part message.
    pub(super) top: bool,
    /// Its first line over 998 octets: (line, octets).
    pub(super) long: Option<(u64, u64)>,
}

/// Why a body with a long line is left as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Cause {
    /// A signature field over the whole message.
    Dkim(&'static str),
    /// Inside multipart/signed.
    Signed,
    /// An S/MIME part.
    SMime,
    /// A part (named) in a transfer encoding this program does not write.
    Encoding(String, String),
    /// The MIME structure cannot be followed safely.
    Unreadable(String),
}

impl Cause {
    /// Why, what not to break, and what to do.
    fn words(&self) -> (String, &'static str, String) {
        const SIGNATURE: &str = " without breaking the signature";
        const BEFORE: &str = "wrap the line before signing";
        match self {
            Self::Dkim(field) => (
                format!("the message is signed ({field})"),
                SIGNATURE,
                BEFORE.into(),
            ),
            Self::Signed => (
                "it is in a signed part (multipart/signed)".into(),
                SIGNATURE,
                BEFORE.into(),
            ),
            Self::SMime => (
                "it is in an S/MIME part (application/pkcs7-mime)".into(),
                SIGNATURE,
                BEFORE.into(),
            ),
            Self::Encoding(part, cte) => (
                format!("{part} has Content-Transfer-Encoding {cte}, which is not re-encoded here"),
                "",
                "encode that part as base64 or quoted-printable".into(),
            ),
            Self::Unreadable(what) => (
                format!("the MIME structure cannot be followed safely ({what})"),
                "",
                "re-encode the message so no line is over 998 octets".into(),
            ),
        }
    }
}

/// What to say when a message kept for BINARYMIME meets a server without it.
pub(super) fn explain(name: &str, at: Option<(u64, u64)>, cause: &Cause) -> String {
    let (why, unbroken, advice) = cause.words();
    let line = match at {
        Some((n, len)) => format!("line {n} is {len} octets"),
        None => "a line is longer than that".into(),
    };
    format!(
        "{name}: {line}, over SMTP's 998 limit, and {why}, so it cannot be re-encoded{unbroken}; \
         the server does not offer BINARYMIME: {advice}"
    )
}
