//! The runner's part in delivery status notifications: enqueueing those
//! owed, reported as the EHLO name, at the start of each round.

use std::time::SystemTime;

use smtp_core::address::Mailbox;

use super::{Mode, Runner};
use crate::dsn::Reporter;
use crate::error::Result;
use crate::event::RunEvent;

impl Runner {
    /// Enqueues the notifications owed (one left owed by a crash too).
    pub(super) async fn notify_owed(&self) -> Result<()> {
        let reporter = self.reporter();
        let route = self.route();
        let done = crate::notify::enqueue_owed_via(
            self.store.as_ref(),
            &reporter,
            Some(&route),
            SystemTime::now(),
        )
        .await?;
        for n in done {
            tracing::info!(message_id = %n.message, notification = %n.notification, to = %n.to,
                "delivery status notification enqueued");
            self.emit(&RunEvent::Notified {
                message: n.message,
                notification: n.notification,
                to: n.to,
                recipients: n.recipients,
            });
        }
        Ok(())
    }

    /// Reports as the EHLO name, from [`RunnerConfig::notify_from`]
    /// (when it is an address) or `MAILER-DAEMON@` that name.
    ///
    /// [`RunnerConfig::notify_from`]: super::RunnerConfig::notify_from
    fn reporter(&self) -> Reporter {
        let mta = match &self.mode {
            Mode::Relay(server) => server.client_id.as_str(),
            Mode::Direct(direct) => direct.options.config.client_id.as_str(),
        };
        let reporter = Reporter::new(mta);
        match self.config.notify_from.as_deref() {
            Some(from) if Mailbox::parse(from).is_ok() => reporter.with_from(from),
            Some(from) => {
                tracing::warn!(%from, "notify_from is not an address; notifications come from MAILER-DAEMON");
                reporter
            }
            None => reporter,
        }
    }
}
