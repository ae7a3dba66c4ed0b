//! The checks that only look things up: reverse DNS, blocklists, SPF,
//! DKIM, DMARC and the sender domain's MX.

mod address;
mod dkim;
mod dmarc;
mod mx;
mod spf;

pub(super) use address::{dnsbl, ptr};
pub(super) use dkim::dkim;
pub(super) use dmarc::dmarc;
pub(super) use mx::mx;
pub(super) use spf::spf;

/// Said when a check needs the public address and has none.
const GIVE_IP: &str = "give this machine's public address with --ip ADDR";
