//! smtp-core integration tests, one binary so the suite links once.

mod appendix_d;
mod auth;
mod chunking;
mod conformance;
mod drive;
mod model;
mod outcomes;
mod session;
mod timeouts;
mod transactions;
