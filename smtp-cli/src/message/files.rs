//! Message files named more than once in a run: read and scanned once,
//! by their identity, and from the second time held in memory.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use smtp_core::data::BodyScanner;

use super::{Body, Head, Prepared, Scanned, read_body, scan_file};
use crate::fail::Failure;
use crate::identity::Identity;

/// A file given more than once with a body up to this size is read into
/// memory when it is seen the second time, within [`REPEATED_IN_MEMORY`]
/// for all such files: each copy is then sent without reading the file
/// again.
const REPEATED_BODY: u64 = 8 * 1024 * 1024;
const REPEATED_IN_MEMORY: u64 = 32 * 1024 * 1024;

/// Message files prepared so far in one run, by identity, and the read
/// buffer they share. A file given again (the same device, inode, size and
/// times: [`Identity`]) is not read or scanned again: its header section is
/// rewritten from what was read (for a Message-ID of its own when it had
/// none), or the whole message is reused when nothing was added to it. Its
/// body is sent as the first was: from memory, or from the file checked to
/// be unchanged, and through the encoder, which takes a clean body whole
/// but checks every octet it takes.
///
/// Only files named more than once are kept: a run of many distinct files
/// holds nothing more than before.
#[derive(Default)]
pub(crate) struct Files {
    /// The paths given more than once.
    repeated: HashSet<PathBuf>,
    pub(super) seen: HashMap<Identity, Seen>,
    buf: Vec<u8>,
    /// Octets of repeated files' bodies held in memory.
    pub(super) held: u64,
}

pub(super) struct Seen {
    scanned: Scanned,
    /// The message as prepared, when preparing it again gives the same
    /// (no Date or Message-ID was added).
    prepared: Option<Prepared>,
    /// Its body was tried for memory ([`Seen::hold`]), held or not.
    tried: bool,
}

impl Seen {
    /// A body sent from its file is read into memory, if it is no larger
    /// than [`REPEATED_BODY`] and `room`, and still has the facts of its
    /// scan (a change the identity missed leaves it in its file, where the
    /// send finds it). Returns the octets now held.
    fn hold(&mut self, name: &str, room: u64) -> Option<u64> {
        let Body::File { identity, .. } = &self.scanned.body else {
            return None;
        };
        if std::mem::replace(&mut self.tried, true) {
            return None;
        }
        let size = identity.size();
        if size > REPEATED_BODY.min(room) {
            return None;
        }
        let mut bytes = Vec::with_capacity(usize::try_from(size).ok()?);
        let mut scanner = BodyScanner::new();
        read_body(&self.scanned.body, name, |chunk| {
            scanner.scan(chunk);
            bytes.extend_from_slice(chunk);
            Ok(())
        })
        .ok()?;
        if scanner.finish() != self.scanned.body_facts {
            return None;
        }
        let held = bytes.len() as u64;
        let body = Body::Memory(Arc::from(bytes));
        if let Some(p) = &mut self.prepared {
            p.body = body.clone();
        }
        self.scanned.body = body;
        Some(held)
    }
}

impl Files {
    /// For a run that prepares `paths`, in any order.
    pub(crate) fn new<'a>(paths: impl IntoIterator<Item = &'a PathBuf>) -> Self {
        let mut once = HashSet::new();
        let mut repeated = HashSet::new();
        for p in paths {
            if !once.insert(p) {
                repeated.insert(p.clone());
            }
        }
        Self {
            repeated,
            ..Self::default()
        }
    }

    /// Prepares the message file at `path`, reusing what an earlier one
    /// of the same identity gave.
    pub(crate) fn prepare(
        &mut self,
        path: &Path,
        name: String,
        hostname: &str,
    ) -> Result<Prepared, Failure> {
        if !self.repeated.contains(path) {
            let scanned = scan_file(path, None, &name, &mut self.buf)?;
            return scanned.prepare(name, hostname);
        }
        let identity = std::fs::metadata(path)
            .map(|m| Identity::of(&m))
            .map_err(|e| Failure::no_input(path, &e))?;
        if let Some(seen) = self.seen.get_mut(&identity) {
            if let Some(held) = seen.hold(&name, REPEATED_IN_MEMORY - self.held) {
                self.held += held;
            }
            return match &seen.prepared {
                Some(p) => Ok(Prepared { name, ..p.clone() }),
                None => seen.scanned.prepare(name, hostname),
            };
        }
        let scanned = scan_file(path, None, &name, &mut self.buf)?;
        let head = Head::read(&scanned.raw_head, &name, hostname)?;
        let generated = head.generated;
        let mut scanner = BodyScanner::new();
        scanner.scan(&head.bytes);
        let facts = scanner.finish().then(scanned.body_facts);
        let prepared = head.into_prepared(name, scanned.body.clone(), &facts)?;
        // Long lines are re-encoded from the file (rare): not kept.
        if facts.first_long_line.is_none() {
            // Keyed by the identity of what was read: the file is opened
            // after the look-up above, and may have been replaced between.
            let seen = Seen {
                prepared: (!generated).then(|| prepared.clone()),
                scanned,
                tried: false,
            };
            self.seen.insert(seen.scanned.identity.clone(), seen);
        }
        Ok(prepared)
    }
}
