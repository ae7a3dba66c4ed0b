//! Sans-IO SMTP client protocol core.
//!
//! Everything an SMTP client needs to speak the protocol, with no sockets, no
//! runtime and no clock: the caller moves bytes and passes time in. The
//! [`Client`] state machine sends one or many messages through one session
//! and tells exactly what happened to every recipient.
//!
//! ```text
//!  server bytes ──► Client::handle_input(now, &[u8]) ──► reply parser (reply.rs)
//!  server EOF   ──► Client::handle_close(now)                 │
//!  timer fired  ──► Client::handle_timeout(now)               ▼
//!  user         ──► Client::send(now, Envelope)        session set-up (client/session.rs)
//!                   Client::body_chunk / body_end       greeting, EHLO, STARTTLS, AUTH (sasl/)
//!                   Client::derivation_done (SCRAM key)
//!                                                             │
//!                                                             ▼
//!                                                      transactions (client/transaction.rs,
//!                                                      client/body.rs, client/settle.rs)
//!                                                      MAIL, RCPT, DATA/BDAT (data.rs), RSET
//!                                                             │
//!  bytes to write ◄── Client::poll_transmit(&mut buf) ◄───────┤ commands (command.rs)
//!  what happened  ◄── Client::poll_event()            ◄───────┤ Greeting, Capabilities, StartTls,
//!                                                             │ DerivationWanted, BodyWanted,
//!                                                             │ RecipientResult, MessageResult,
//!                                                             │ Closed, Failed
//!  next deadline  ◄── Client::poll_timeout()          ◄───────┘ per-phase timers (timeouts.rs)
//! ```
//!
//! The pieces are usable alone: [`reply::parse_reply`] (incremental,
//! `Complete`/`Partial`, bounded), [`command::Command`], [`ehlo::Capabilities`],
//! [`address::Mailbox`], [`data::DataEncoder`] and [`data::BdatEncoder`]
//! (streaming, constant memory), and the [`sasl`] mechanisms.
//!
//! # Example: the run loop
//!
//! A driver over any byte stream; `smtp-tls` is the real one on tokio.
//!
//! ```no_run
//! use std::io::{Read, Write};
//! use std::net::TcpStream;
//! use std::time::Instant;
//! use smtp_core::{Client, Config, Envelope, Event, TlsPolicy};
//! use smtp_core::address::{Mailbox, ReversePath};
//! use smtp_core::ehlo::ClientId;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut stream = TcpStream::connect("127.0.0.1:2525")?;
//! let config = Config::new(ClientId::parse("client.example.org")?).with_tls(TlsPolicy::None);
//! let mut client = Client::new(config, Instant::now());
//! let envelope = Envelope::new(
//!     ReversePath::parse("alice@example.org")?,
//!     vec![Mailbox::parse("bob@example.net")?],
//! );
//! client.send(Instant::now(), envelope)?;
//! client.quit(Instant::now());
//! let body = b"Subject: hello\r\n\r\nHi Bob.\r\n";
//! let (mut out, mut buf) = (Vec::new(), [0u8; 4096]);
//! while !client.is_closed() {
//!     while let Some(event) = client.poll_event() {
//!         match event {
//!             Event::BodyWanted(_) => {
//!                 client.body_chunk(Instant::now(), body)?;
//!                 client.body_end(Instant::now())?;
//!             }
//!             Event::MessageResult(outcome) => {
//!                 for r in &outcome.recipients {
//!                     println!("{r}");
//!                 }
//!             }
//!             other => println!("{other:?}"),
//!         }
//!     }
//!     if client.poll_transmit(&mut out) {
//!         stream.write_all(&out)?;
//!         out.clear();
//!         continue;
//!     }
//!     // A real driver also waits for `client.poll_timeout()`.
//!     match stream.read(&mut buf)? {
//!         0 => client.handle_close(Instant::now()),
//!         n => client.handle_input(Instant::now(), &buf[..n]),
//!     }
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # Panics, errors and unwraps
//!
//! Nothing here panics on input from the network or the user: parsers return
//! [`reply::Status::Partial`] for incomplete input and an error past their
//! bounds, and every buffer has a bound. Errors are one [`Error`] type split
//! by who is at fault; each message says what to do. Protocol faults arrive
//! as [`Event::Failed`], never as a return value of `handle_*`. The few
//! `unwrap`s carry a comment saying why they cannot fail.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod address;
mod client;
pub mod command;
pub mod data;
pub mod delivery;
pub mod ehlo;
mod envelope;
mod error;
mod phase;
mod policy;
pub mod reply;
pub mod sasl;
mod timeouts;

pub use client::{Client, Config, Direction, Event, TranscriptLine, Warning};
pub use envelope::{
    DsnRequest, Envelope, MessageId, MessageOutcome, RecipientOutcome, RecipientStatus,
};
pub use error::{Error, Fault, MessageError, Misuse, PolicyError, ProtocolError};
pub use phase::Phase;
pub use policy::{TlsPolicy, UnknownTlsPolicy};
pub use timeouts::Timeouts;

/// The README's example, compiled and run as a doctest.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
