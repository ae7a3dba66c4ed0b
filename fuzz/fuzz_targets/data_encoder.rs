//! The DATA encoder on arbitrary bodies: the output never holds an early
//! end-of-data mark and always ends with exactly one.
#![no_main]

use libfuzzer_sys::fuzz_target;
use smtp_core::data::{BodyRules, DataEncoder};

fuzz_target!(|data: &[u8]| {
    let mut enc = DataEncoder::new(BodyRules::BINARY);
    let mut out = Vec::new();
    for chunk in data.chunks(7) {
        enc.encode(chunk, &mut out).unwrap();
    }
    enc.finish(&mut out).unwrap();
    assert!(out.ends_with(b".\r\n"));
    let body = &out[..out.len() - 3];
    assert!(!body.windows(5).any(|w| w == b"\r\n.\r\n"));
    assert!(!body.starts_with(b".\r\n"));
});
