//! smtp-core integration tests, one binary so the suite links once.

mod appendix_d;
mod chunking;
mod conformance;
mod drive;
mod harness;
mod model;
mod session;
mod timeouts;
mod transactions;
