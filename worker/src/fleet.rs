//! The data planes a worker is attached to, kept current.
//!
//! Resolves the worker's endpoints (`resolve.rs`), runs one session task per
//! data plane (`session.rs`), and when the set changes starts tasks for new
//! data planes and tells the ones that are gone to leave (they finish their
//! calls first). The set is resolved again every `resolve_interval` and
//! soon after any session loses its connection: a data plane that is
//! drained or deleted disappears from its headless Service's name, and one
//! that is added appears there.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, Notify};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::credit;
use crate::pool::Pool;
use crate::resolve::Resolver;
use crate::session::{attach, Ctx, Signals};
use crate::{Worker, WorkerError};

pub(crate) async fn run(
    worker: Worker,
    shutdown: impl Future<Output = ()>,
) -> Result<(), WorkerError> {
    let pool = Pool::start(worker.concurrency)?;
    let mut resolver = Resolver::new(&worker.endpoints, worker.hosts_file.clone());
    let interval = worker.resolve_interval;
    let settle = worker.backoff_min;
    let total = worker.credit as u32;
    let ctx = Arc::new(Ctx {
        credit: credit::Shared::new(total),
        worker,
        pool,
        lost: Notify::new(),
        held: AtomicU32::new(0),
        peak_held: AtomicU32::new(0),
        stopping: AtomicBool::new(false),
        identity_prefix: crate::session::identity_prefix(),
    });
    let mut attached: HashMap<String, Leave> = HashMap::new();
    let mut tasks: JoinSet<(String, Result<(), WorkerError>)> = JoinSet::new();
    let mut result = Ok(());
    let mut starved_warned = false;
    tokio::pin!(shutdown);
    // When to resolve the endpoints next: None once they are resolved and
    // name no host (nothing can change).
    let mut next_resolve = Some(Instant::now());
    'serve: loop {
        if next_resolve.is_some_and(|at| Instant::now() >= at) {
            let addrs = tokio::select! {
                a = resolver.resolve() => a,
                _ = &mut shutdown => break 'serve,
            };
            for addr in &addrs {
                if attached.contains_key(addr) {
                    continue;
                }
                tracing::info!(endpoint = %addr, "attaching to a data plane");
                let (wake_tx, wake) = mpsc::channel(1);
                ctx.credit.subscribe(wake_tx.clone());
                let leave = Leave {
                    flag: Arc::new(AtomicBool::new(false)),
                    wake: wake_tx,
                };
                let signals = Signals {
                    leave: leave.flag.clone(),
                    wake,
                };
                attached.insert(addr.clone(), leave);
                let (ctx, addr) = (ctx.clone(), addr.clone());
                tasks.spawn(async move {
                    let r = attach(ctx, addr.clone(), signals).await;
                    (addr, r)
                });
            }
            for (addr, leave) in &attached {
                if !addrs.contains(addr) && !leave.asked() {
                    tracing::info!(endpoint = %addr, "the data plane is gone from the endpoints: leaving it after its calls");
                    leave.ask();
                }
            }
            let starved = ctx.credit.with(|l| l.starved());
            if starved && !starved_warned {
                tracing::warn!(
                    data_planes = addrs.len(),
                    credit = total,
                    "more data planes than this worker has credit: some get none (raise concurrency or prefetch)"
                );
            }
            starved_warned = starved;
            next_resolve = (!resolver.is_fixed()).then(|| Instant::now() + interval);
        }
        let far = Instant::now() + interval;
        tokio::select! {
            _ = tokio::time::sleep_until(next_resolve.unwrap_or(far)), if next_resolve.is_some() => {}
            _ = ctx.lost.notified(), if !resolver.is_fixed() => {
                // Soon, not at once: several sessions lose a data plane
                // together, and its name takes a moment to change.
                let soon = Instant::now() + settle;
                next_resolve = Some(next_resolve.map_or(soon, |at| at.min(soon)));
            }
            Some(ended) = tasks.join_next() => {
                match ended {
                    Ok((addr, r)) => {
                        attached.remove(&addr);
                        if let Err(e) = r {
                            // Refused, and no other data plane serves us.
                            result = Err(e);
                            break 'serve;
                        }
                    }
                    Err(e) => {
                        // A panicked session: its address is attached again
                        // at the next resolution.
                        tracing::error!(error = %e, "a data plane session ended abnormally");
                        attached.retain(|_, leave| !leave.wake.is_closed());
                        next_resolve = Some(Instant::now());
                    }
                }
            }
            _ = &mut shutdown => break 'serve,
        }
    }
    // Leave every data plane gracefully (each bounded by the drain timeout).
    ctx.stopping.store(true, Ordering::Relaxed);
    for leave in attached.values() {
        leave.ask();
    }
    while let Some(ended) = tasks.join_next().await {
        if let Ok((addr, Err(e))) = ended {
            tracing::warn!(endpoint = %addr, error = %e, "while leaving");
        }
    }
    tracing::info!(
        most_held_at_once = ctx.peak_held.load(Ordering::Relaxed),
        credit = total,
        "worker stopped"
    );
    result
}

/// How the fleet tells one session task to leave its data plane.
struct Leave {
    flag: Arc<AtomicBool>,
    wake: mpsc::Sender<()>,
}

impl Leave {
    fn asked(&self) -> bool {
        self.flag.load(Ordering::Acquire)
    }

    fn ask(&self) {
        self.flag.store(true, Ordering::Release);
        // Full: a poke is pending, and the session reads the flag when it
        // takes it. Closed: the session is gone already.
        let _ = self.wake.try_send(());
    }
}
