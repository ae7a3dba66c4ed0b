//! The reply parser on arbitrary bytes: never panics, never claims more
//! bytes than it was given, and parses the same whether fed whole or grown
//! byte by byte.
#![no_main]

use libfuzzer_sys::fuzz_target;
use smtp_core::reply::{ReplyLimits, Status, parse_reply};

fuzz_target!(|data: &[u8]| {
    let limits = ReplyLimits::default();
    let whole = parse_reply(data, &limits);
    if let Ok(Status::Complete((used, _))) = &whole {
        assert!(*used <= data.len());
    }
    // The first complete reply is found at the same place however the input grows.
    for end in 0..=data.len().min(512) {
        if let Ok(Status::Complete((used, reply))) = parse_reply(&data[..end], &limits) {
            assert_eq!(whole, Ok(Status::Complete((used, reply))));
            break;
        }
    }
});
