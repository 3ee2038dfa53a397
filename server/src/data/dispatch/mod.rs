//! The dispatcher: one task that owns the worker pool, the per-service
//! queues and every call's deadline, and talks to workers over a
//! [`WorkerTransport`].
//!
//! Single ownership keeps it lock-free and makes each call's fate decided in
//! exactly one place: every two-way call gets exactly one completion (the
//! worker's reply, or an exception produced here), so connections never have
//! to reconcile a timeout with a late reply.
//!
//! A call's life: arrives from a connection → sent at once to the worker with
//! the most free credit, or queued (bounded by `max_queue`) → sent when credit
//! frees up, unless its deadline or `queue_timeout` passed first (then it is
//! answered here and never sent) → answered by the worker's REPLY, or by a
//! "timed out" exception at its deadline, or a "worker died" exception when
//! its worker is declared dead.
//!
//! The rooms: this file holds the state and the run loop; [`calls`] the call
//! table, queues and timers; [`workers`] the worker protocol (READY, REPLY,
//! heartbeats, eviction); [`pool`] the bookkeeping of live workers.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};

use super::service::ServiceInfo;
use super::transport::{Inbound, WorkerTransport};
use crate::config::Config;
use crate::telemetry::{LogLimiter, Stats};

mod calls;
mod fast_hash;
mod pool;
mod timers;
mod workers;

use calls::{CallTable, ServiceSlot};
use fast_hash::BytesMap;
use pool::WorkerPool;

pub use super::call::{Call, Completion, ReplyTo};

/// Events one turn of the run loop takes after the one it woke for.
const DRAIN_BUDGET: usize = 256;

/// A turn reads the clock at its wake and then once every this many events.
const CLOCK_EVENTS: u32 = 16;

/// The time as of the event being handled. Reading the clock several times
/// per call was ~5% of the data plane's CPU under load (`perf`); the
/// timestamps of one turn's events are at most `CLOCK_EVENTS` events stale
/// (microseconds), which neither deadlines nor the histograms can tell.
struct TurnClock {
    now: tokio::time::Instant,
    left: u32,
}

impl TurnClock {
    fn new() -> TurnClock {
        TurnClock {
            now: tokio::time::Instant::now(),
            left: 0,
        }
    }

    /// At a wake: the task may have slept for any time.
    fn refresh(&mut self) {
        self.now = tokio::time::Instant::now();
        self.left = CLOCK_EVENTS;
    }

    /// Before each further event of a turn.
    fn event(&mut self) {
        match self.left {
            0 => self.refresh(),
            _ => self.left -= 1,
        }
    }
}

/// Whether the run loop goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Continue,
    Stop,
}

/// Requests to the dispatcher.
#[derive(Debug)]
pub enum Command {
    Call(Call),
    /// Answer everything still queued or in flight with "shutting down",
    /// tell the workers to leave, and stop.
    Shutdown(oneshot::Sender<()>),
    /// A new service (its `index` is the next one) or new settings for one.
    SetService(Arc<ServiceInfo>),
    /// Stop accepting workers for it; calls already queued or in flight finish.
    RemoveService(usize),
    Workers(oneshot::Sender<Vec<WorkerView>>),
    /// Evict the worker with this id; answers whether it existed.
    Evict(String, oneshot::Sender<bool>),
    /// Cordon a worker by id: no new calls; when its calls in flight are
    /// answered it is told to leave. Answers its calls in flight then, or
    /// `None` if no such worker.
    DrainWorker {
        id: String,
        /// Who asked (for the event).
        peer: Option<String>,
        tx: oneshot::Sender<Option<usize>>,
    },
}

/// A worker as the admin API shows it.
#[derive(Debug, Clone)]
pub struct WorkerView {
    pub id: String,
    pub services: Vec<String>,
    pub credit: u32,
    pub in_flight: u32,
    pub last_heartbeat: Duration,
    pub identity: Bytes,
    pub leaving: bool,
}

/// The settings the dispatcher uses (and nothing else of the config).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Workers must present it in READY (`None`: no token required).
    pub token: Option<Vec<u8>>,
    pub heartbeat: Duration,
    pub liveness: u32,
    /// A call still at a worker this long past its deadline: worker evicted.
    pub stuck_timeout: Duration,
    /// Bytes of requests queued or at workers, all services.
    pub max_buffered: usize,
}

impl Settings {
    pub fn from_config(config: &Config) -> Settings {
        Settings {
            token: config.workers.token.as_ref().map(|t| t.0.clone()),
            heartbeat: config.workers.heartbeat_interval,
            liveness: config.workers.heartbeat_liveness,
            stuck_timeout: config.workers.stuck_timeout,
            max_buffered: config.server.max_buffered_bytes,
        }
    }
}

pub struct Dispatcher<T> {
    settings: Settings,
    /// One slot per service index (services are never removed, only marked).
    services: Vec<ServiceSlot>,
    pool: WorkerPool,
    calls: CallTable,
    transport: T,
    commands: mpsc::Receiver<Command>,
    /// Bumped whenever a service's set of live workers changes (health).
    workers_changed: watch::Sender<u64>,
    stats: Arc<Stats>,
    warn_limit: LogLimiter,
    /// Limits "worker dead" warnings (a crash-looping fleet could flood the log).
    dead_limit: LogLimiter,
    /// Messages seen from each peer that has not registered (bounded).
    strangers: BytesMap<Bytes, u32>,
    clock: TurnClock,
}

impl<T: WorkerTransport> Dispatcher<T> {
    pub fn new(
        settings: Settings,
        services: Vec<Arc<ServiceInfo>>,
        transport: T,
        commands: mpsc::Receiver<Command>,
        stats: Arc<Stats>,
        workers_changed: watch::Sender<u64>,
    ) -> Dispatcher<T> {
        Dispatcher {
            pool: WorkerPool::new(services.len()),
            services: services.into_iter().map(ServiceSlot::new).collect(),
            calls: CallTable::default(),
            settings,
            transport,
            commands,
            workers_changed,
            stats,
            warn_limit: LogLimiter::new(10),
            dead_limit: LogLimiter::new(10),
            strangers: BytesMap::default(),
            clock: TurnClock::new(),
        }
    }

    /// Runs until a `Shutdown` command (or every command sender is dropped,
    /// or the transport fails: then the core has failed, see `lifecycle`).
    ///
    /// Each turn waits for one event in the `select!`, then takes what else
    /// is already waiting (see [`drain_ready`](Self::drain_ready)) before
    /// arming every branch again: under load one wake serves a batch.
    pub async fn run(mut self) {
        let mut heartbeat = tokio::time::interval(self.settings.heartbeat);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let flow = tokio::select! {
                biased;
                // First, though it is ready once per interval at most: a
                // stream of worker traffic or calls must not starve the
                // liveness checks, nor the beat the probes read.
                _ = heartbeat.tick() => {
                    self.clock.refresh();
                    self.on_heartbeat_tick();
                    Flow::Continue
                }
                inbound = self.transport.recv() => {
                    self.clock.refresh();
                    self.on_inbound(inbound)
                }
                id = self.calls.next_expired() => {
                    self.clock.refresh();
                    self.on_timer(id);
                    Flow::Continue
                }
                cmd = self.commands.recv() => {
                    self.clock.refresh();
                    self.on_command(cmd)
                }
            };
            if flow == Flow::Continue && self.drain_ready() == Flow::Continue {
                continue;
            }
            return;
        }
    }

    /// Takes the commands and worker messages that are already waiting,
    /// alternating between the two, up to `DRAIN_BUDGET` events, without
    /// waiting. The branches of `run`'s `select!` are polled again (with
    /// the task's own waker) before the task sleeps, so nothing this leaves
    /// is missed; the budget keeps timers and the heartbeat on time.
    fn drain_ready(&mut self) -> Flow {
        use futures::FutureExt;
        let mut budget = DRAIN_BUDGET;
        while budget > 0 {
            let mut progressed = false;
            while budget > 0 {
                let Ok(cmd) = self.commands.try_recv() else {
                    break;
                };
                budget -= 1;
                progressed = true;
                self.clock.event();
                if self.on_command(Some(cmd)) == Flow::Stop {
                    return Flow::Stop;
                }
            }
            while budget > 0 {
                let Some(inbound) = self.transport.recv().now_or_never() else {
                    break;
                };
                budget -= 1;
                progressed = true;
                self.clock.event();
                if self.on_inbound(inbound) == Flow::Stop {
                    return Flow::Stop;
                }
            }
            if !progressed {
                break;
            }
        }
        Flow::Continue
    }

    fn on_inbound(&mut self, inbound: Inbound) -> Flow {
        match inbound {
            Inbound::Message { peer, msg } => self.on_worker_message(peer, msg),
            Inbound::Disconnected { peer } => {
                self.strangers.remove(&peer);
                if let Some(w) = self.pool.lookup(&peer) {
                    self.worker_dead(w, "connection closed");
                }
            }
            Inbound::Closed(e) => {
                tracing::error!(
                    error = %e,
                    "worker transport failed; answering all calls and stopping",
                );
                self.stats
                    .core
                    .fail(format!("worker transport failed: {e}"));
                self.fail_all();
                return Flow::Stop;
            }
        }
        Flow::Continue
    }

    /// `None`: every sender is gone.
    fn on_command(&mut self, cmd: Option<Command>) -> Flow {
        let Some(cmd) = cmd else {
            self.shutdown();
            return Flow::Stop;
        };
        match cmd {
            Command::Call(call) => self.on_call(call),
            Command::SetService(info) => self.set_service(info),
            Command::RemoveService(i) => {
                if let Some(s) = self.services.get_mut(i) {
                    s.removed = true;
                }
            }
            Command::Workers(tx) => {
                let _ = tx.send(self.worker_views());
            }
            Command::Evict(id, tx) => {
                let found = self.pool.by_id(&id).map(|(w, _)| w);
                if let Some(w) = found {
                    self.worker_dead(w, "evicted by an operator");
                }
                let _ = tx.send(found.is_some());
            }
            Command::DrainWorker { id, peer, tx } => {
                let _ = tx.send(self.drain_worker(&id, peer));
            }
            Command::Shutdown(done) => {
                self.shutdown();
                let _ = done.send(());
                return Flow::Stop;
            }
        }
        Flow::Continue
    }

    fn set_service(&mut self, info: Arc<ServiceInfo>) {
        let i = info.index;
        if i == self.services.len() {
            self.services.push(ServiceSlot::new(info));
            self.pool.add_service();
        } else if let Some(slot) = self.services.get_mut(i) {
            // New settings apply to calls that arrive from now on.
            slot.info = info;
        }
    }

    fn shutdown(&mut self) {
        self.stats.core.stopped();
        let pending = self.calls.len();
        if pending > 0 {
            tracing::warn!(
                calls = pending,
                "shutdown timeout: answering calls still pending"
            );
        }
        self.fail_all();
        let peers: Vec<Bytes> = self.pool.iter().map(|(_, s)| s.peer.clone()).collect();
        for peer in peers {
            self.disconnect(&peer, "data plane shutting down".into());
        }
    }
}
