//! CRAM-MD5 (RFC 2195): the response is HMAC-MD5 of the challenge, keyed
//! with the password, in lower-case hex.

use hmac::{Hmac, Mac};
use md5::Md5;

pub(super) fn digest(password: &str, challenge: &[u8]) -> String {
    // HMAC takes keys of any length: this cannot fail.
    let mut mac =
        Hmac::<Md5>::new_from_slice(password.as_bytes()).expect("HMAC accepts any key length");
    mac.update(challenge);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
