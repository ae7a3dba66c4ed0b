//! [`Stop`]: the runner's cancellation signal.

use std::sync::Arc;

use tokio::sync::watch;

/// A cancellation signal shared by a runner and whoever stops it (a
/// signal handler, a test). Once [`stop`](Self::stop) is called the runner
/// claims nothing more; sessions under way finish their transactions and
/// whatever was claimed but not sent is released.
#[derive(Clone, Debug)]
pub struct Stop(Arc<watch::Sender<bool>>);

impl Default for Stop {
    fn default() -> Self {
        Self::new()
    }
}

impl Stop {
    /// A signal not yet given.
    pub fn new() -> Self {
        Self(Arc::new(watch::channel(false).0))
    }

    /// Gives the signal (idempotent).
    pub fn stop(&self) {
        self.0.send_replace(true);
    }

    /// Whether the signal was given.
    pub fn is_stopped(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once the signal is given.
    pub async fn stopped(&self) {
        let mut rx = self.0.subscribe();
        // The sender lives in `self`, so the channel cannot close here.
        let _ = rx.wait_for(|v| *v).await;
    }
}
