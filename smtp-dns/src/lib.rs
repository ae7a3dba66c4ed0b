//! MX resolution for direct SMTP delivery.
//!
//! This crate will hold `smtp-core`'s resolver trait implemented on
//! hickory-resolver, and the MX planning rules of RFC 5321 §5.1 and RFC 7505:
//! preference order, equal preferences shuffled, implicit MX from A/AAAA,
//! null MX as a permanent failure, NXDOMAIN permanent, SERVFAIL and timeouts
//! deferred. hickory's types stay inside this crate. Not yet built.
