//! The process's state, kept in one place: failed (a core task died),
//! draining, and the dispatcher's beat. `lifecycle` changes it; `/healthz`,
//! `/readyz`, `thriftworker_alive`/`_ready`/`_draining` and the gRPC health
//! service read it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use tokio_util::sync::CancellationToken;

/// The truth behind the probes: a core task (dispatcher, acceptor, admin,
/// metrics) that died makes the process unfit to serve, and so does a
/// dispatcher that stopped turning its loop (it stamps `beat` on every
/// heartbeat tick, which nothing can starve: see `data::dispatch`).
#[derive(Debug)]
pub struct CoreHealth {
    /// Why the first core task failed.
    failure: Mutex<Option<String>>,
    /// Cancelled once a core task failed: the process must exit.
    failed: CancellationToken,
    /// Cancelled once the process drains: no new connections, readiness off.
    draining: CancellationToken,
    /// The dispatcher's last heartbeat tick, ms since start; `u64::MAX`
    /// before it starts and once it has stopped on purpose (shutdown).
    beat_ms: AtomicU64,
    /// Past this without a beat the dispatcher counts as stalled.
    stall_after_ms: AtomicU64,
}

impl Default for CoreHealth {
    fn default() -> Self {
        CoreHealth {
            failure: Mutex::new(None),
            failed: CancellationToken::new(),
            draining: CancellationToken::new(),
            beat_ms: AtomicU64::new(u64::MAX),
            stall_after_ms: AtomicU64::new(10_000),
        }
    }
}

impl CoreHealth {
    /// Records that a core task died; the first reason is kept.
    pub fn fail(&self, why: String) {
        let mut f = self.failure.lock().unwrap_or_else(|e| e.into_inner());
        if f.is_none() {
            *f = Some(why);
        }
        drop(f);
        self.failed.cancel();
    }

    pub fn failure(&self) -> Option<String> {
        if !self.failed.is_cancelled() {
            return None;
        }
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Cancelled once a core task failed.
    pub fn failed(&self) -> &CancellationToken {
        &self.failed
    }

    /// Cancelled once the process drains.
    pub fn draining(&self) -> &CancellationToken {
        &self.draining
    }

    pub fn beat(&self, now_ms: u64) {
        self.beat_ms.store(now_ms, Ordering::Relaxed);
    }

    /// The dispatcher stopped on purpose: no stall to report from now on.
    pub fn stopped(&self) {
        self.beat_ms.store(u64::MAX, Ordering::Relaxed);
    }

    pub fn set_stall_after(&self, d: std::time::Duration) {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        self.stall_after_ms.store(ms, Ordering::Relaxed);
    }

    /// How long the dispatcher has not beaten, if longer than the limit.
    pub fn stalled(&self, now_ms: u64) -> Option<u64> {
        let beat = self.beat_ms.load(Ordering::Relaxed);
        let silent = now_ms.saturating_sub(beat);
        (beat != u64::MAX && silent > self.stall_after_ms.load(Ordering::Relaxed)).then_some(silent)
    }
}
