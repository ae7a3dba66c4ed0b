//! The hint for a silent server. One that says nothing for a while after
//! the connection opens may be waiting for a TLS ClientHello (port 465
//! given without `--implicit-tls`, or a custom port): say so while the
//! greeting deadline runs out, rather than only when it has.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::progress;

/// How long a silent server may take before the hint.
const HINT_AFTER: Duration = Duration::from_secs(5);

/// Prints the hint unless [`greeted`](Self::greeted) is called within
/// [`HINT_AFTER`]; dropping it cancels the hint.
pub(crate) struct GreetingHint {
    greeted: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl GreetingHint {
    /// Starts the clock for a connection to `host:port` (inside a runtime).
    pub(crate) fn start(host: &str, port: u16) -> Self {
        let greeted = Arc::new(AtomicBool::new(false));
        let (seen, host) = (greeted.clone(), host.to_owned());
        let task = tokio::spawn(async move {
            tokio::time::sleep(HINT_AFTER).await;
            if !seen.load(Ordering::Relaxed) {
                progress::suspend(|| {
                    tell!(
                        "note: no greeting from {host}:{port} after {}s; if this port expects \
                         TLS from the first byte, use --implicit-tls (still waiting)",
                        HINT_AFTER.as_secs()
                    );
                });
            }
        });
        Self { greeted, task }
    }

    /// The server greeted: no hint.
    pub(crate) fn greeted(&self) {
        self.greeted.store(true, Ordering::Relaxed);
    }
}

impl Drop for GreetingHint {
    fn drop(&mut self) {
        self.task.abort();
    }
}
