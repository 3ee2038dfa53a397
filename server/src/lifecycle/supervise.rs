//! Crash-only supervision of the core tasks.
//!
//! The data plane is a handful of long-lived tasks: the dispatcher, one
//! acceptor per listener, the admin API and the metrics server. If one of them
//! panics or ends when nobody asked it to, the process can no longer do its
//! job, however healthy the others look. A zombie that still answers probes
//! is the worst outcome: the orchestrator keeps sending it traffic. So every
//! core task runs under [`Lifecycle::run`]: its death is logged loudly,
//! recorded in the stats (`/healthz` and `/readyz` turn 503 at once) and
//! cancels the `failed` token, on which `main` drains briefly and exits
//! non-zero so the supervisor of the process (the kubelet, systemd) restarts
//! it.
//!
//! Connection tasks are not core: a panic there ends that one connection,
//! and the panic hook (installed by `main`) logs and counts it.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;

use futures::FutureExt;
use tokio_util::sync::CancellationToken;

use super::Lifecycle;
use crate::telemetry::PANICS;

/// Installs a panic hook that logs every panic through `tracing` (so it
/// lands in the JSON log with the rest) and counts it in `PANICS`, then
/// runs the default hook.
pub fn install_panic_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::Relaxed);
        let thread = std::thread::current();
        tracing::error!(
            thread = thread.name().unwrap_or("?"),
            location = info.location().map(|l| l.to_string()).unwrap_or_default(),
            message = %payload_text(info.payload()),
            "panic"
        );
        default(info);
    }));
}

impl Lifecycle {
    /// Runs core task `task`. A panic fails the process; so does a return
    /// while `stop` is not cancelled (a core task only ends when told to).
    pub async fn run(&self, task: &str, stop: &CancellationToken, work: impl Future<Output = ()>) {
        match AssertUnwindSafe(work).catch_unwind().await {
            Ok(()) if stop.is_cancelled() => {}
            Ok(()) => self.fail(task, "ended unexpectedly"),
            Err(panic) => self.fail(task, &format!("panicked: {}", panic_text(&panic))),
        }
    }

    /// Like [`run`](Self::run) for a task that may end on its own (the
    /// dispatcher decides itself when it is done): only a panic fails.
    pub async fn run_until_done(&self, task: &str, work: impl Future<Output = ()>) {
        if let Err(panic) = AssertUnwindSafe(work).catch_unwind().await {
            self.fail(task, &format!("panicked: {}", panic_text(&panic)));
        }
    }
}

/// The message of a caught panic.
pub fn panic_text(panic: &Box<dyn Any + Send>) -> String {
    payload_text(panic.as_ref())
}

fn payload_text(payload: &(dyn Any + Send)) -> String {
    let text = if let Some(s) = payload.downcast_ref::<&str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.as_str()
    } else {
        "(no message)"
    };
    // A panic message may quote input; keep the log line bounded.
    text.chars().take(512).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::Stats;
    use std::sync::Arc;

    #[tokio::test]
    async fn a_panicking_core_task_fails_the_process_and_the_probes() {
        let stats = Arc::new(Stats::default());
        let sup = Lifecycle::new(stats.clone());
        let stop = CancellationToken::new();
        sup.run("dispatcher", &stop, async { panic!("invalid deadline") })
            .await;
        assert!(sup.failed().is_cancelled());
        let why = stats.not_live().expect("not alive");
        assert!(
            why.contains("dispatcher: panicked: invalid deadline"),
            "{why}"
        );
        assert!(stats.not_ready().is_some());
    }

    #[tokio::test]
    async fn a_core_task_ending_unasked_fails_but_a_stopped_one_does_not() {
        let stats = Arc::new(Stats::default());
        let sup = Lifecycle::new(stats.clone());
        let stop = CancellationToken::new();
        stop.cancel();
        sup.run("acceptor", &stop, async {}).await;
        assert!(!sup.failed().is_cancelled());
        assert!(stats.not_live().is_none());
        sup.run("acceptor", &CancellationToken::new(), async {})
            .await;
        assert!(sup.failed().is_cancelled());
        assert!(stats.not_live().unwrap().contains("ended unexpectedly"));
    }
}
