//! Sans-IO SMTP client protocol core.
//!
//! Work in progress.

pub mod address;
pub mod command;
pub mod data;
pub mod ehlo;
pub mod reply;
pub mod sasl;
