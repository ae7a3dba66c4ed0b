//! The `smtp` command.
//!
//! This crate will hold the `smtp` binary: `send` (standard and direct
//! delivery, sendmail compatibility), `probe`, `mx`, `sink` and `demo`.
//! Not yet built.
