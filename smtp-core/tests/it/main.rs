//! smtp-core integration tests, one binary so the suite links once.

mod appendix_d;
mod chunking;
mod drive;
mod harness;
mod model;
mod session;
mod timeouts;
mod transactions;
