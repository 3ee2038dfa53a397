//! The process's lifecycle in one object: serving → draining → stopped, or
//! failed (crash-only: a dead core task ends the process).
//!
//! State lives in one place, the registry's [`CoreHealth`] (failed,
//! draining, the dispatcher's beat), so the probes read exactly what the
//! process does; [`Lifecycle`] is how it is changed and awaited:
//! - a core task fails → [`Lifecycle::fail`] (see [`supervise`]);
//! - the Drain RPC → [`Lifecycle::request_drain`] (it may shorten or
//!   lengthen the drain); `main` waits for that or for SIGTERM/SIGINT, then
//!   `app::Running::shutdown` drains: [`Lifecycle::start_drain`] stops the acceptors (every
//!   listener's stop token is a child of [`Lifecycle::draining`]);
//! - last, [`Lifecycle::stop_control_plane`] stops the admin API and the
//!   metrics server.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::telemetry::health::CoreHealth;
use crate::telemetry::Stats;

pub mod supervise;

pub use supervise::install_panic_hook;

/// A drain asked for through the Drain RPC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainRequest {
    /// Overrides `[server].shutdown_timeout` when set (the Drain RPC's).
    pub timeout: Option<Duration>,
}

#[derive(Debug)]
pub struct Lifecycle {
    stats: Arc<Stats>,
    requested: watch::Sender<Option<DrainRequest>>,
    /// Stops the admin API and the metrics server, last of all.
    control_plane: CancellationToken,
}

impl Lifecycle {
    pub fn new(stats: Arc<Stats>) -> Arc<Lifecycle> {
        Arc::new(Lifecycle {
            stats,
            requested: watch::Sender::new(None),
            control_plane: CancellationToken::new(),
        })
    }

    fn core(&self) -> &CoreHealth {
        &self.stats.core
    }

    /// Cancelled once the process cannot serve any more.
    pub fn failed(&self) -> &CancellationToken {
        self.core().failed()
    }

    pub fn has_failed(&self) -> bool {
        self.failed().is_cancelled()
    }

    /// Records that core task `task` failed, and why; the process will exit.
    pub fn fail(&self, task: &str, why: &str) {
        tracing::error!(
            task,
            reason = why,
            "core task failed: thriftworker cannot serve and will exit"
        );
        self.core().fail(format!("{task}: {why}"));
    }

    /// Asks for a drain (the first request's timeout wins).
    pub fn request_drain(&self, timeout: Option<Duration>) {
        self.requested.send_if_modified(|r| {
            let first = r.is_none();
            if first {
                *r = Some(DrainRequest { timeout });
            }
            first
        });
    }

    /// Completes once a drain was asked for.
    pub async fn drain_requested(&self) {
        let mut rx = self.requested.subscribe();
        let _ = rx.wait_for(Option::is_some).await;
    }

    /// How long the drain may take: the request's timeout, else `configured`.
    pub fn drain_timeout(&self, configured: Duration) -> Duration {
        self.requested
            .borrow()
            .and_then(|r| r.timeout)
            .unwrap_or(configured)
    }

    /// Cancelled once the process drains (readiness turns 503 with it).
    pub fn draining(&self) -> &CancellationToken {
        self.core().draining()
    }

    /// Starts the drain: readiness off, acceptors stop.
    pub fn start_drain(&self) {
        self.draining().cancel();
    }

    /// Cancelled when the admin API and the metrics server must stop.
    pub fn control_plane_stop(&self) -> &CancellationToken {
        &self.control_plane
    }

    pub fn stop_control_plane(&self) {
        self.control_plane.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_first_drain_request_wins_and_draining_turns_readiness_off() {
        let stats = Arc::new(Stats::default());
        let life = Lifecycle::new(stats.clone());
        assert_eq!(
            life.drain_timeout(Duration::from_secs(30)),
            Duration::from_secs(30)
        );
        life.request_drain(Some(Duration::from_secs(2)));
        life.request_drain(Some(Duration::from_secs(9)));
        life.drain_requested().await;
        assert_eq!(
            life.drain_timeout(Duration::from_secs(30)),
            Duration::from_secs(2)
        );
        assert!(stats.not_ready().is_none_or(|w| !w.contains("draining")));
        life.start_drain();
        assert_eq!(stats.not_ready().as_deref(), Some("draining"));
        assert!(stats.not_live().is_none(), "a drain is not a failure");
    }
}
