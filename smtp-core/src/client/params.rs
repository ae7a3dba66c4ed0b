//! What a message asks of a server, against what the server offers: the
//! checks made before MAIL (8BITMIME, SMTPUTF8, REQUIRETLS, SIZE) and the
//! MAIL and RCPT parameters (RFC 1870, 6152, 6531, 3461, 8689).

use crate::address::ReversePath;
use crate::command::{MailParams, RcptParams};
use crate::data::BodyType;
use crate::ehlo::{Capabilities, Size};
use crate::envelope::Envelope;
use crate::error::MessageError;

/// Can this server take this message at all? Checked before MAIL, so a
/// message it cannot take costs no bytes on the wire.
pub(super) fn precheck(
    envelope: &Envelope,
    caps: &Capabilities,
    tls: bool,
    bdat: bool,
) -> Result<(), MessageError> {
    // First: a UTF-8 address is the real cause when its message is also
    // 8-bit (its header fields name the address).
    if !caps.smtputf8() {
        if let ReversePath::Mailbox(m) = &envelope.from
            && m.needs_smtputf8()
        {
            return Err(MessageError::Utf8Unsupported {
                address: m.to_string(),
                sender: true,
            });
        }
        if let Some(m) = envelope.to.iter().find(|m| m.needs_smtputf8()) {
            return Err(MessageError::Utf8Unsupported {
                address: m.to_string(),
                sender: false,
            });
        }
    }
    match envelope.body {
        BodyType::SevenBit => {}
        BodyType::EightBitMime if caps.eight_bit_mime() => {}
        BodyType::EightBitMime => return Err(MessageError::EightBitUnsupported),
        BodyType::BinaryMime if caps.binary_mime() && bdat => {}
        BodyType::BinaryMime => return Err(MessageError::BinaryUnsupported),
    }
    if envelope.require_tls && !(tls && caps.requiretls()) {
        return Err(MessageError::RequireTlsUnsupported);
    }
    if let (Some(size), Some(Size::Max(limit))) = (envelope.size, caps.size())
        && size > limit
    {
        return Err(MessageError::TooLarge { size, limit });
    }
    Ok(())
}

pub(super) fn mail_params(envelope: &Envelope, caps: &Capabilities) -> MailParams {
    let dsn = envelope.dsn.as_ref().filter(|_| caps.dsn());
    MailParams {
        size: caps.size().and(envelope.size),
        body: match envelope.body {
            BodyType::SevenBit => None,
            other => Some(other),
        },
        smtputf8: envelope.needs_smtputf8(),
        ret: dsn.and_then(|d| d.ret),
        envid: dsn.and_then(|d| d.envid.clone()),
        requiretls: envelope.require_tls,
    }
}

pub(super) fn rcpt_params(
    envelope: &Envelope,
    to: &crate::address::Mailbox,
    caps: &Capabilities,
) -> RcptParams {
    match envelope.dsn.as_ref().filter(|_| caps.dsn()) {
        Some(dsn) => RcptParams {
            notify: dsn.notify,
            orcpt: dsn.orcpt.then(|| to.clone()),
        },
        None => RcptParams::default(),
    }
}
