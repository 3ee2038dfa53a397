//! The dispatcher: one task that owns the worker pool, the per-service
//! queues and every call's deadline, and talks to workers over the transport.
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

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use thriftworker_wire::{Protocol, Request, ServerMsg, WorkerMsg};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::time::{delay_queue, DelayQueue};

use crate::config::{shown, Config, ServiceConfig};
use crate::fast_hash::{BytesMap, IdMap};
use crate::message::{application_exception, check_reply, AppErrorKind, ReplyKind};
use crate::stats::{LogLimiter, MethodStats, Outcome, ServiceStats, Stats, WorkerStats};
use crate::transport::{Inbound, SendError, Transport};
use crate::worker_pool::{WorkerIdx, WorkerPool};
use tokio_util::sync::CancellationToken;

/// A call read from a client, on its way to a worker.
#[derive(Debug)]
pub struct Call {
    pub service: usize,
    pub protocol: Protocol,
    pub seqid: i32,
    /// Method name as the worker sees it (used in exceptions we produce).
    pub name: Bytes,
    /// The full Thrift message (header rewritten if a prefix was stripped).
    pub message: Bytes,
    pub deadline: Instant,
    /// When the connection read the request (latency is measured from here).
    pub received: Instant,
    /// `None` for oneway calls.
    pub reply: Option<ReplyTo>,
    /// Index of the method's stats in the dispatcher's cache; set by the
    /// dispatcher on arrival (connections leave it 0). u16 (the method cap
    /// is at most 10,000) keeps `Call` within 128 bytes, which the compiler
    /// moves inline instead of calling memcpy (measured: bench/callgrind-ab).
    pub method: u16,
}

/// Where a two-way call's answer goes: the connection's completion channel
/// and the call's position in that connection's pipeline.
#[derive(Debug)]
pub struct ReplyTo {
    pub tx: mpsc::Sender<Completion>,
    /// Wraps: a connection has at most `max_pipeline` slots pending.
    pub slot: u32,
    /// The listener's `max_frame_size`: a larger reply is not passed on.
    pub max_reply: u32,
}

/// The answer to one call: a complete Thrift message to frame and write.
#[derive(Debug)]
pub struct Completion {
    pub slot: u32,
    pub message: Bytes,
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

/// Static per-service settings, shared with the connections.
#[derive(Debug)]
pub struct ServiceInfo {
    /// Stable for the life of the process (never reused for another service).
    pub index: usize,
    pub name: String,
    pub name_bytes: Bytes,
    pub timeout: Duration,
    pub method_timeouts: HashMap<Box<[u8]>, Duration>,
    pub queue_timeout: Duration,
    pub max_queue: usize,
    /// Bytes of requests it may have queued or at workers.
    pub max_buffered_bytes: usize,
    pub strip_prefix: bool,
    pub stats: Arc<ServiceStats>,
}

impl ServiceInfo {
    pub fn timeout_for(&self, method: &[u8]) -> Duration {
        if self.method_timeouts.is_empty() {
            return self.timeout;
        }
        self.method_timeouts
            .get(method)
            .copied()
            .unwrap_or(self.timeout)
    }
}

/// Builds the shared settings of service number `index`.
pub fn service_info(index: usize, s: &ServiceConfig, stats: &Stats) -> Arc<ServiceInfo> {
    Arc::new(ServiceInfo {
        index,
        name: s.name.clone(),
        name_bytes: Bytes::from(s.name.clone()),
        timeout: s.timeout,
        method_timeouts: s
            .method_timeouts
            .iter()
            .map(|(m, d)| (m.as_bytes().into(), d.0))
            .collect(),
        queue_timeout: s.queue_timeout,
        max_queue: s.max_queue,
        max_buffered_bytes: s.max_buffered_bytes,
        strip_prefix: s.strip_service_prefix,
        stats: stats.service(&s.name),
    })
}

/// Why the data plane answered a call itself.
#[derive(Debug, Clone, Copy)]
enum Failure {
    /// The request memory budget (the service's or the process's) is used up.
    MemoryFull,
    QueueFull,
    QueueTimeout,
    Timeout,
    WorkerDied,
    EmptyReply,
    /// The worker's reply does not answer the call.
    BadReply,
    ShuttingDown,
}

enum Phase {
    Queued,
    /// Sent to this worker at this time.
    Sent(Instant, WorkerIdx),
}

struct Entry {
    call: Call,
    phase: Phase,
    timer: delay_queue::Key,
    /// When queued: the timer fires at `queue_timeout` before the deadline.
    queue_expiry: bool,
}

/// The dispatcher's handles on one service's per-method stats: the cache
/// that keeps the registry's lock off the hot path. Bounded by the method cap
/// (names folded into `other` are not cached).
#[derive(Default)]
struct MethodCache {
    /// FNV-1a: names are a few bytes and the map is bounded by the cap.
    by_name: BytesMap<Bytes, u16>,
    list: Vec<Arc<MethodStats>>,
}

struct ServiceQueue {
    /// Request ids in arrival order; ids no longer queued are skipped.
    ids: VecDeque<u64>,
    live: usize,
    /// Bytes of the service's requests queued or at workers.
    bytes: usize,
}

impl ServiceQueue {
    fn new() -> ServiceQueue {
        ServiceQueue {
            ids: VecDeque::new(),
            live: 0,
            bytes: 0,
        }
    }
}

pub struct Dispatcher {
    services: Vec<Arc<ServiceInfo>>,
    removed: Vec<bool>,
    /// Bumped whenever a service's set of live workers changes (health).
    workers_changed: Arc<watch::Sender<u64>>,
    queues: Vec<ServiceQueue>,
    methods: Vec<MethodCache>,
    pool: WorkerPool,
    calls: IdMap<Entry>,
    timers: DelayQueue<u64>,
    next_id: u64,
    transport: Transport,
    commands: mpsc::Receiver<Command>,
    token: Option<Vec<u8>>,
    heartbeat: Duration,
    liveness: u32,
    /// A call still at a worker this long past its deadline: worker evicted.
    stuck_timeout: Duration,
    /// Bytes of requests queued or at workers, all services, and the bound.
    buffered: usize,
    max_buffered: usize,
    stats: Arc<Stats>,
    warn_limit: LogLimiter,
    /// Limits "worker dead" warnings (a crash-looping fleet could flood the log).
    dead_limit: LogLimiter,
    /// Cancelled if the worker transport fails: the process must stop.
    failed: CancellationToken,
    /// Messages seen from each peer that has not registered (bounded).
    strangers: BytesMap<Bytes, u32>,
}

/// An unregistered peer's first messages are answered DISCONNECT...
const STRANGER_ANSWERS: u32 = 3;
/// ...and at this many its connection is closed.
const STRANGER_LIMIT: u32 = 64;
/// Unregistered peers tracked at once (the map is cleared beyond).
const MAX_STRANGERS: usize = 65_536;

impl Dispatcher {
    pub fn new(
        config: &Config,
        services: Vec<Arc<ServiceInfo>>,
        transport: Transport,
        commands: mpsc::Receiver<Command>,
        stats: Arc<Stats>,
        failed: CancellationToken,
        workers_changed: Arc<watch::Sender<u64>>,
    ) -> Dispatcher {
        Dispatcher {
            removed: vec![false; services.len()],
            workers_changed,
            queues: services.iter().map(|_| ServiceQueue::new()).collect(),
            methods: services.iter().map(|_| MethodCache::default()).collect(),
            pool: WorkerPool::new(services.len()),
            services,
            calls: IdMap::default(),
            timers: DelayQueue::new(),
            next_id: 0,
            transport,
            commands,
            token: config.workers.token.as_ref().map(|t| t.0.clone()),
            heartbeat: config.workers.heartbeat_interval,
            liveness: config.workers.heartbeat_liveness,
            stuck_timeout: config.workers.stuck_timeout,
            buffered: 0,
            max_buffered: config.server.max_buffered_bytes,
            stats,
            warn_limit: LogLimiter::new(10),
            dead_limit: LogLimiter::new(10),
            failed,
            strangers: BytesMap::default(),
        }
    }

    /// Runs until a `Shutdown` command (or every command sender is dropped).
    pub async fn run(mut self) {
        let mut heartbeat = tokio::time::interval(self.heartbeat);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                // First, though it is ready once per interval at most: a
                // stream of worker traffic or calls must not starve the
                // liveness checks, nor the beat the probes read.
                _ = heartbeat.tick() => self.on_heartbeat_tick().await,
                inbound = self.transport.recv() => match inbound {
                    Inbound::Message { peer, msg } => self.on_worker_message(peer, msg).await,
                    Inbound::Disconnected { peer } => {
                        self.strangers.remove(&peer);
                        if let Some(w) = self.pool.lookup(&peer) {
                            self.worker_dead(w, "connection closed").await;
                        }
                    }
                    Inbound::Closed(e) => {
                        tracing::error!(error = %e, "worker transport failed; answering all calls and stopping");
                        self.stats.core.fail(format!("worker transport failed: {e}"));
                        self.fail_all(Failure::ShuttingDown);
                        self.failed.cancel();
                        return;
                    }
                },
                Some(expired) = std::future::poll_fn(|cx| self.timers.poll_expired(cx)) => self.on_timer(expired.into_inner()).await,
                cmd = self.commands.recv() => match cmd {
                    Some(Command::Call(call)) => self.on_call(call).await,
                    Some(Command::SetService(info)) => self.set_service(info).await,
                    Some(Command::RemoveService(i)) => {
                        if let Some(r) = self.removed.get_mut(i) {
                            *r = true;
                        }
                    }
                    Some(Command::Workers(tx)) => {
                        let _ = tx.send(self.worker_views());
                    }
                    Some(Command::Evict(id, tx)) => {
                        let found = self.pool.iter().find(|(_, s)| s.id == id).map(|(w, _)| w);
                        if let Some(w) = found {
                            self.worker_dead(w, "evicted by an operator").await;
                        }
                        let _ = tx.send(found.is_some());
                    }
                    Some(Command::Shutdown(done)) => {
                        self.shutdown().await;
                        let _ = done.send(());
                        return;
                    }
                    None => {
                        self.shutdown().await;
                        return;
                    }
                },
            }
        }
    }

    async fn on_call(&mut self, mut call: Call) {
        let svc = call.service;
        call.method = self.method_index(svc, &call.name);
        let m = &self.methods[svc].list[call.method as usize];
        if call.reply.is_some() {
            m.calls.inc();
        } else {
            m.oneway.inc();
        }
        let now = Instant::now();
        if call.deadline <= now {
            self.answer(call, Failure::Timeout);
            return;
        }
        // The memory budget: bytes held for calls queued or at workers.
        let size = call.message.len();
        if self.buffered + size > self.max_buffered
            || self.queues[svc].bytes + size > self.services[svc].max_buffered_bytes
        {
            self.answer(call, Failure::MemoryFull);
            return;
        }
        self.hold(svc, size as isize);
        self.next_id += 1;
        let id = self.next_id;
        // Fast path: nothing queued ahead of it and a worker has credit.
        if self.queues[svc].live == 0 {
            if let Some(w) = self.pool.pick(svc) {
                let timer = self.timers.insert_at(id, call.deadline);
                self.calls.insert(
                    id,
                    Entry {
                        call,
                        phase: Phase::Queued,
                        timer,
                        queue_expiry: false,
                    },
                );
                self.send_to(id, w).await;
                return;
            }
        }
        let info = &self.services[svc];
        if self.queues[svc].live >= info.max_queue {
            self.hold(svc, -(size as isize));
            self.answer(call, Failure::QueueFull);
            return;
        }
        let queue_deadline = now + info.queue_timeout;
        let (at, queue_expiry) = if queue_deadline < call.deadline {
            (queue_deadline, true)
        } else {
            (call.deadline, false)
        };
        let timer = self.timers.insert_at(id, at);
        self.calls.insert(
            id,
            Entry {
                call,
                phase: Phase::Queued,
                timer,
                queue_expiry,
            },
        );
        let q = &mut self.queues[svc];
        q.ids.push_back(id);
        q.live += 1;
        info.stats.queue_depth.set(q.live as u64);
    }

    /// Adds (or, negative, releases) `delta` bytes held for service `svc`.
    fn hold(&mut self, svc: usize, delta: isize) {
        let q = &mut self.queues[svc];
        q.bytes = q.bytes.saturating_add_signed(delta);
        self.buffered = self.buffered.saturating_add_signed(delta);
        self.services[svc].stats.buffered_bytes.set(q.bytes as u64);
        self.stats.dispatch.buffered_bytes.set(self.buffered as u64);
    }

    /// Removes call `id` from the table (whoever does answers it) and
    /// releases its bytes from the memory budget.
    fn take(&mut self, id: u64) -> Option<Entry> {
        let entry = self.calls.remove(&id)?;
        self.hold(entry.call.service, -(entry.call.message.len() as isize));
        Some(entry)
    }

    /// The stats of method `name` of service `svc`, as an index into the
    /// cache: a hash lookup per call; the registry is asked only for a name
    /// not seen before (or one beyond the cap, counted under `other`).
    fn method_index(&mut self, svc: usize, name: &Bytes) -> u16 {
        let cache = &mut self.methods[svc];
        if let Some(&i) = cache.by_name.get(&name[..]) {
            return i;
        }
        let (m, own) = self.services[svc].stats.method(name);
        let i = match cache.list.iter().position(|x| Arc::ptr_eq(x, &m)) {
            Some(i) => i,
            None => {
                cache.list.push(m);
                cache.list.len() - 1
            }
        } as u16;
        if own {
            cache.by_name.insert(Bytes::copy_from_slice(name), i);
        }
        i
    }

    fn method_stats(&self, call: &Call) -> &MethodStats {
        &self.methods[call.service].list[call.method as usize]
    }

    /// Sends call `id` (known, not yet sent) to worker `w`, which has credit.
    async fn send_to(&mut self, id: u64, w: WorkerIdx) {
        let Some(entry) = self.calls.get_mut(&id) else {
            return;
        };
        let Some(worker) = self.pool.get_mut(w) else {
            return;
        };
        let now = Instant::now();
        entry.phase = Phase::Sent(now, w);
        self.methods[entry.call.service].list[entry.call.method as usize]
            .queue_wait
            .observe(now.saturating_duration_since(entry.call.received));
        if entry.queue_expiry {
            // Queued: from now on only the call's own deadline matters.
            self.timers.reset_at(&entry.timer, entry.call.deadline);
            entry.queue_expiry = false;
        }
        worker
            .in_flight
            .insert(id, (entry.call.service as u32, entry.call.method));
        worker.stats.in_flight.set(worker.in_flight.len() as u64);
        for &s in &worker.services {
            self.services[s].stats.free_credit.dec();
        }
        let peer = worker.peer.clone();
        let call = &entry.call;
        let svc = &self.services[call.service];
        svc.stats.in_flight.inc();
        let request = Request {
            id,
            timeout_ms: call
                .deadline
                .saturating_duration_since(now)
                .as_millis()
                .min(u32::MAX as u128) as u32,
            protocol: call.protocol,
            service: svc.name_bytes.clone(),
            message: call.message.clone(),
        };
        if let Err(e) = self.transport.send(&peer, request.encode()) {
            // A send to a peer that just died may also succeed and be lost;
            // either way the call is tracked in `in_flight` and answered when
            // the worker is declared dead.
            self.worker_dead(w, &format!("send failed: {e}")).await;
        }
    }

    /// Sends queued calls of the services `w` serves while it has credit.
    async fn pump_worker(&mut self, w: WorkerIdx) {
        let Some(services) = self.pool.get(w).map(|s| s.services.clone()) else {
            return;
        };
        for svc in services {
            self.pump(svc).await;
        }
    }

    /// Sends queued calls of `svc` while some worker of it has credit.
    async fn pump(&mut self, svc: usize) {
        while self.queues[svc].live > 0 {
            let Some(w) = self.pool.pick(svc) else { break };
            let Some(id) = self.pop_queued(svc) else {
                break;
            };
            // The client hung up while its call waited: don't spend a worker on it.
            let gone = self
                .calls
                .get(&id)
                .is_some_and(|e| e.call.reply.as_ref().is_some_and(|r| r.tx.is_closed()));
            if gone {
                if let Some(entry) = self.take(id) {
                    self.timers.remove(&entry.timer);
                    self.method_stats(&entry.call).outcome(Outcome::Abandoned);
                }
                continue;
            }
            self.send_to(id, w).await;
        }
    }

    fn pop_queued(&mut self, svc: usize) -> Option<u64> {
        let q = &mut self.queues[svc];
        while let Some(id) = q.ids.pop_front() {
            if matches!(
                self.calls.get(&id),
                Some(Entry {
                    phase: Phase::Queued,
                    ..
                })
            ) {
                q.live -= 1;
                self.services[svc].stats.queue_depth.set(q.live as u64);
                return Some(id);
            }
        }
        None
    }

    async fn on_timer(&mut self, id: u64) {
        let Some(entry) = self.take(id) else {
            return;
        };
        let svc = entry.call.service;
        match entry.phase {
            Phase::Queued => {
                let q = &mut self.queues[svc];
                q.live -= 1;
                self.services[svc].stats.queue_depth.set(q.live as u64);
                // Drop tombstones at the front, and compact if they pile up.
                while q.ids.front().is_some_and(|i| !self.calls.contains_key(i)) {
                    q.ids.pop_front();
                }
                if q.ids.len() > 2 * q.live + 64 {
                    let calls = &self.calls;
                    q.ids.retain(|i| calls.contains_key(i));
                }
                let why = if entry.queue_expiry {
                    Failure::QueueTimeout
                } else {
                    Failure::Timeout
                };
                self.answer(entry.call, why);
            }
            Phase::Sent(_, w) => {
                // The worker keeps the credit until it replies (it is still
                // busy); its late reply will be dropped and counted. If it
                // never replies, the heartbeat tick evicts it after
                // `stuck_timeout` (see `evict_stuck`).
                if let Some(state) = self.pool.get_mut(w) {
                    if state.in_flight.contains_key(&id) {
                        state.overdue.insert(id, Instant::now());
                    }
                }
                self.services[svc].stats.in_flight.dec();
                self.answer(entry.call, Failure::Timeout);
            }
        }
    }

    async fn on_worker_message(
        &mut self,
        peer: Bytes,
        msg: Result<WorkerMsg, thriftworker_wire::WireError>,
    ) {
        let now = Instant::now();
        let known = self.pool.lookup(&peer);
        if let Some(w) = known {
            if let Some(state) = self.pool.get_mut(w) {
                state.last_seen = now;
                // From the clock read above: no second clock read per message.
                let ms = now.into_std().saturating_duration_since(self.stats.started);
                state
                    .stats
                    .last_seen_ms
                    .store(ms.as_millis() as u64, std::sync::atomic::Ordering::Relaxed);
            }
        }
        let msg = match msg {
            Ok(m) => m,
            Err(e) => {
                use thriftworker_wire::WireError;
                self.stats.dispatch.bad_worker_messages.inc();
                if let Some(suppressed) = self.warn_limit.allow() {
                    tracing::warn!(worker = known.and_then(|w| self.pool.get(w)).map(|s| s.id.as_str()), error = %e, suppressed, "malformed message from a worker dropped");
                }
                let refuse = match e {
                    WireError::Version(_) | WireError::Credit(_) | WireError::NoServices => true,
                    WireError::MissingFrame { command, .. }
                    | WireError::FrameSize { command, .. } => command == "READY",
                    _ => false,
                };
                if known.is_none() && !self.stranger(&peer) {
                    return;
                }
                if refuse {
                    self.disconnect(&peer, format!("refused: {e}")).await;
                }
                return;
            }
        };
        match (msg, known) {
            (
                WorkerMsg::Ready {
                    credit,
                    token,
                    services,
                },
                _,
            ) => self.on_ready(peer, known, credit, token, services).await,
            (WorkerMsg::Reply { id, message }, Some(w)) => self.on_reply(w, id, message).await,
            (WorkerMsg::Heartbeat, Some(_)) => {}
            (WorkerMsg::Disconnect { .. }, Some(w)) => {
                let Some(state) = self.pool.get_mut(w) else {
                    return;
                };
                state.leaving = true;
                tracing::info!(worker = %state.id, in_flight = state.in_flight.len(), "worker leaving");
                // It takes no more calls: its free credit is gone.
                self.update_worker_gauges();
                self.forget_if_done(w).await;
            }
            (WorkerMsg::Reply { .. }, None) => {
                self.stats.dispatch.unknown_replies.inc();
                if self.stranger(&peer) {
                    self.disconnect(&peer, "unknown worker, send READY".into())
                        .await;
                }
            }
            (WorkerMsg::Heartbeat, None) => {
                if self.stranger(&peer) {
                    self.disconnect(&peer, "unknown worker, send READY".into())
                        .await;
                }
            }
            (WorkerMsg::Disconnect { .. }, None) => {
                self.stranger(&peer);
            }
        }
    }

    async fn on_ready(
        &mut self,
        peer: Bytes,
        known: Option<WorkerIdx>,
        credit: u32,
        token: Bytes,
        names: Vec<Bytes>,
    ) {
        if let Some(expected) = &self.token {
            if !constant_time_eq(expected, &token) {
                self.stats.dispatch.workers_refused.inc();
                if known.is_none() && !self.stranger(&peer) {
                    return;
                }
                if let Some(suppressed) = self.warn_limit.allow() {
                    tracing::warn!(suppressed, "worker refused: wrong or missing token");
                }
                self.disconnect(&peer, "refused: wrong or missing worker token".into())
                    .await;
                return;
            }
        }
        let mut services = Vec::with_capacity(names.len());
        for n in &names {
            let removed = &self.removed;
            match self
                .services
                .iter()
                .position(|s| s.name_bytes == n && !removed[s.index])
            {
                Some(i) if !services.contains(&i) => services.push(i),
                Some(_) => {}
                None => {
                    self.stats.dispatch.workers_refused.inc();
                    if known.is_none() && !self.stranger(&peer) {
                        return;
                    }
                    let reason = format!(
                        "refused: unknown service {}",
                        shown(&String::from_utf8_lossy(n))
                    );
                    if let Some(suppressed) = self.warn_limit.allow() {
                        tracing::warn!(reason = %reason, suppressed, "worker refused");
                    }
                    self.disconnect(&peer, reason).await;
                    return;
                }
            }
        }
        if let Some(old) = known {
            // Same identity announcing itself again: the new registration
            // replaces the old one, whose calls are lost.
            self.forget(old, "re-registered").await;
        }
        let names: Vec<String> = services
            .iter()
            .map(|&s| self.services[s].name.clone())
            .collect();
        let registry = &self.stats;
        let w = self
            .pool
            .add(peer.clone(), services, credit, Instant::now(), |id| {
                let ws = Arc::new(WorkerStats {
                    id: id.to_string(),
                    services: names,
                    credit,
                    in_flight: Default::default(),
                    served: Default::default(),
                    last_seen_ms: registry.now_ms().into(),
                });
                registry.add_worker(ws.clone());
                ws
            });
        self.stats.dispatch.workers_registered.inc();
        self.strangers.remove(&peer);
        self.update_worker_gauges();
        let state = self.pool.get(w).expect("just added");
        let id = state.id.clone();
        let names: Vec<&str> = state
            .services
            .iter()
            .map(|&s| self.services[s].name.as_str())
            .collect();
        tracing::info!(worker = %id, services = ?names, credit, "worker registered");
        let ack = ServerMsg::ReadyAck {
            heartbeat_interval_ms: self.heartbeat.as_millis().min(u32::MAX as u128) as u32,
            worker_id: Bytes::from(id),
        };
        if let Err(e) = self.transport.send(&peer, ack.encode()) {
            self.worker_dead(w, &format!("send failed: {e}")).await;
            return;
        }
        self.pump_worker(w).await;
    }

    async fn on_reply(&mut self, w: WorkerIdx, id: u64, message: Bytes) {
        let Some(state) = self.pool.get_mut(w) else {
            return;
        };
        let Some((late_svc, late_method)) = state.in_flight.remove(&id) else {
            self.stats.dispatch.unknown_replies.inc();
            tracing::debug!(worker = %state.id, request = id, "reply for a call this worker does not hold");
            return;
        };
        state.overdue.remove(&id);
        state.stats.served.inc();
        state.stats.in_flight.set(state.in_flight.len() as u64);
        if !state.leaving {
            for &s in &state.services {
                self.services[s].stats.free_credit.inc();
            }
        }
        let entry = self.take(id);
        let worker_id = self.pool.get(w).map_or("", |s| s.id.as_str());
        match entry {
            Some(mut entry) => {
                self.timers.remove(&entry.timer);
                let now = Instant::now();
                let svc = &self.services[entry.call.service];
                svc.stats.in_flight.dec();
                let m = &self.methods[entry.call.service].list[entry.call.method as usize];
                if let Phase::Sent(at, _) = entry.phase {
                    m.worker.observe(now.saturating_duration_since(at));
                }
                let call = &entry.call;
                let checked = match &call.reply {
                    None => None,
                    Some(_) if message.is_empty() => Some(Err(Failure::EmptyReply)),
                    Some(reply) => Some(
                        check_reply(
                            &message,
                            call.protocol,
                            &call.name,
                            call.seqid,
                            reply.max_reply as usize,
                        )
                        .map_err(|e| {
                            self.stats.dispatch.bad_replies.inc();
                            if let Some(suppressed) = self.warn_limit.allow() {
                                tracing::warn!(worker = %worker_id, service = %svc.name, error = %e, suppressed, "reply does not match its call: answering the client with an exception");
                            }
                            Failure::BadReply
                        }),
                    ),
                };
                match checked {
                    Some(Err(why)) => self.answer(entry.call, why),
                    Some(Ok(kind)) => {
                        let outcome = match kind {
                            ReplyKind::Success => Outcome::Success,
                            ReplyKind::DeclaredException => Outcome::DeclaredException,
                            ReplyKind::AppException | ReplyKind::Unreadable => {
                                Outcome::AppException
                            }
                        };
                        m.outcome(outcome);
                        m.total
                            .observe(now.saturating_duration_since(entry.call.received));
                        trace_call(&svc.name, m, entry.call.seqid, worker_id, outcome);
                        if let Some(reply) = entry.call.reply.take() {
                            let _ = reply.tx.try_send(Completion {
                                slot: reply.slot,
                                message,
                            });
                        }
                    }
                    None => {
                        // oneway: the reply only returns credit.
                        m.outcome(Outcome::Success);
                        trace_call(&svc.name, m, entry.call.seqid, worker_id, Outcome::Success);
                    }
                }
            }
            None => {
                // Already answered (timed out): the worker was still busy.
                if let Some(m) = self
                    .methods
                    .get(late_svc as usize)
                    .and_then(|c| c.list.get(late_method as usize))
                {
                    m.late_replies.inc();
                }
            }
        }
        if self.forget_if_done(w).await {
            return;
        }
        self.pump_worker(w).await;
    }

    /// Forgets a leaving worker once it holds no call. Returns whether it did.
    async fn forget_if_done(&mut self, w: WorkerIdx) -> bool {
        let done = self
            .pool
            .get(w)
            .is_some_and(|s| s.leaving && s.in_flight.is_empty());
        if done {
            if let Some(state) = self.pool.remove(w) {
                self.stats.remove_worker(&state.id);
                self.update_worker_gauges();
                tracing::info!(worker = %state.id, "worker left");
                self.disconnect(&state.peer, "bye".into()).await;
            }
        }
        done
    }

    async fn worker_dead(&mut self, w: WorkerIdx, why: &str) {
        if let Some(peer) = self.forget(w, why).await {
            // Tell it, in case it is alive but was judged dead (e.g. it
            // stalled): it will reconnect and READY again.
            self.disconnect(&peer, format!("declared dead: {why}"))
                .await;
        }
    }

    /// Removes a worker and answers the calls it held ("worker died").
    /// Returns its peer identity.
    async fn forget(&mut self, w: WorkerIdx, why: &str) -> Option<Bytes> {
        let state = self.pool.remove(w)?;
        self.stats.remove_worker(&state.id);
        self.update_worker_gauges();
        self.stats.dispatch.workers_dead.inc();
        if let Some(suppressed) = self.dead_limit.allow() {
            tracing::warn!(worker = %state.id, reason = why, in_flight = state.in_flight.len(), suppressed, "worker dead");
        }
        for id in state.in_flight.into_keys() {
            if let Some(entry) = self.take(id) {
                self.timers.remove(&entry.timer);
                self.services[entry.call.service].stats.in_flight.dec();
                self.answer(entry.call, Failure::WorkerDied);
            }
        }
        Some(state.peer)
    }

    async fn set_service(&mut self, info: Arc<ServiceInfo>) {
        let i = info.index;
        if i == self.services.len() {
            self.services.push(info);
            self.removed.push(false);
            self.methods.push(MethodCache::default());
            self.queues.push(ServiceQueue::new());
            self.pool.add_service();
        } else if i < self.services.len() {
            // New settings apply to calls that arrive from now on.
            self.services[i] = info;
        }
    }

    /// Publishes live workers and credit per service, and wakes health.
    fn update_worker_gauges(&self) {
        for svc in &self.services {
            let (mut live, mut credit, mut free) = (0u64, 0u64, 0u64);
            for w in self.pool.workers_of(svc.index) {
                live += 1;
                credit += u64::from(w.credit);
                free += u64::from(w.free());
            }
            svc.stats.live_workers.set(live);
            svc.stats.total_credit.set(credit);
            svc.stats.free_credit.set(free);
        }
        self.stats.dispatch.live_workers.set(self.pool.len() as u64);
        self.workers_changed.send_modify(|v| *v += 1);
    }

    fn worker_views(&self) -> Vec<WorkerView> {
        let now = Instant::now();
        self.pool
            .iter()
            .map(|(_, s)| WorkerView {
                id: s.id.clone(),
                services: s
                    .services
                    .iter()
                    .map(|&i| self.services[i].name.clone())
                    .collect(),
                credit: s.credit,
                in_flight: s.in_flight.len() as u32,
                last_heartbeat: now.duration_since(s.last_seen),
                identity: s.peer.clone(),
                leaving: s.leaving,
            })
            .collect()
    }

    async fn on_heartbeat_tick(&mut self) {
        let now = Instant::now();
        self.stats.core.beat(self.stats.now_ms());
        let limit = self.heartbeat * self.liveness;
        let stale: Vec<WorkerIdx> = self
            .pool
            .iter()
            .filter(|(_, s)| now.duration_since(s.last_seen) > limit)
            .map(|(i, _)| i)
            .collect();
        for w in stale {
            self.worker_dead(w, "missed heartbeats").await;
        }
        self.evict_stuck(now).await;
        let peers: Vec<(WorkerIdx, Bytes)> =
            self.pool.iter().map(|(i, s)| (i, s.peer.clone())).collect();
        for (w, peer) in peers {
            if let Err(e) = self.transport.send(&peer, ServerMsg::Heartbeat.encode()) {
                self.worker_dead(w, &format!("send failed: {e}")).await;
            }
        }
    }

    /// Evicts every worker that still holds a call `stuck_timeout` after the
    /// call's deadline: a handler that hangs or a thread that died would
    /// otherwise keep that credit for good, and with all credit gone the
    /// service answers only "overloaded". A live worker reconnects and sends
    /// READY with its full credit.
    async fn evict_stuck(&mut self, now: Instant) {
        let limit = self.stuck_timeout;
        let stuck: Vec<WorkerIdx> = self
            .pool
            .iter()
            .filter(|(_, s)| s.overdue.values().any(|&t| now.duration_since(t) > limit))
            .map(|(w, _)| w)
            .collect();
        for w in stuck {
            self.stats.dispatch.workers_stuck.inc();
            let why = format!(
                "a call is still unanswered {} after its deadline (stuck_timeout)",
                humantime::format_duration(limit)
            );
            self.worker_dead(w, &why).await;
        }
    }

    async fn disconnect(&mut self, peer: &Bytes, reason: String) {
        let bye = ServerMsg::Disconnect {
            reason: Bytes::from(reason),
        };
        if let Err(SendError::Full) = self.transport.send(peer, bye.encode()) {
            self.drop_peer(peer, "it does not read what it is sent");
        }
    }

    /// Closes a misbehaving peer's connection (counted, and logged at most
    /// ten times a second).
    fn drop_peer(&mut self, peer: &Bytes, why: &str) {
        self.strangers.remove(peer);
        if self.transport.kick(peer) {
            self.stats.dispatch.peers_dropped.inc();
            if let Some(suppressed) = self.warn_limit.allow() {
                tracing::warn!(reason = why, suppressed, "worker-port connection closed");
            }
        }
    }

    /// Counts a message from a peer that has not registered (nothing but a
    /// valid READY is expected from it). Returns whether to answer it with
    /// DISCONNECT: only its first few messages are (a libzmq worker that
    /// reconnected after a data-plane restart learns to send READY); one
    /// that keeps talking without registering is disconnected, so a flood
    /// from an unregistered peer costs a bounded amount of work.
    fn stranger(&mut self, peer: &Bytes) -> bool {
        if self.strangers.len() >= MAX_STRANGERS {
            self.strangers.clear();
        }
        let n = self.strangers.entry(peer.clone()).or_insert(0);
        *n += 1;
        match *n {
            n if n <= STRANGER_ANSWERS => true,
            n if n >= STRANGER_LIMIT => {
                self.drop_peer(peer, "too many messages without a valid READY");
                false
            }
            _ => false,
        }
    }

    fn fail_all(&mut self, why: Failure) {
        let ids: Vec<u64> = self.calls.keys().copied().collect();
        for id in ids {
            if let Some(entry) = self.take(id) {
                self.answer(entry.call, why);
            }
        }
        self.timers.clear();
        for q in &mut self.queues {
            q.ids.clear();
            q.live = 0;
        }
    }

    async fn shutdown(&mut self) {
        self.stats.core.stopped();
        let pending = self.calls.len();
        if pending > 0 {
            tracing::warn!(
                calls = pending,
                "shutdown timeout: answering calls still pending"
            );
        }
        self.fail_all(Failure::ShuttingDown);
        let peers: Vec<Bytes> = self.pool.iter().map(|(_, s)| s.peer.clone()).collect();
        for peer in peers {
            self.disconnect(&peer, "data plane shutting down".into())
                .await;
        }
    }

    /// Answers a call with an exception produced here (nothing for oneway).
    fn answer(&self, call: Call, why: Failure) {
        let svc = &self.services[call.service];
        let no_worker = svc.stats.live_workers.get() == 0;
        let (outcome, text) = match why {
            Failure::QueueFull | Failure::QueueTimeout if no_worker => (Outcome::NoWorker, format!("thriftworker: service '{}' overloaded: no live worker (none connected or all dead)", svc.name)),
            Failure::MemoryFull => (Outcome::Overloaded, format!("thriftworker: service '{}' overloaded: request memory budget full (max_buffered_bytes)", svc.name)),
            Failure::QueueFull => (Outcome::Overloaded, format!("thriftworker: service '{}' overloaded: queue full ({} calls waiting for a worker)", svc.name, svc.max_queue)),
            Failure::QueueTimeout => (Outcome::Overloaded, format!("thriftworker: service '{}' overloaded: no worker free within queue_timeout {:?}", svc.name, svc.queue_timeout)),
            Failure::Timeout => (Outcome::Timeout, format!("thriftworker: service '{}' timed out: no reply before the deadline", svc.name)),
            Failure::WorkerDied => (Outcome::WorkerDied, format!("thriftworker: service '{}' worker died while handling the call", svc.name)),
            Failure::EmptyReply => (Outcome::EmptyReply, format!("thriftworker: service '{}' worker returned no reply", svc.name)),
            Failure::BadReply => (Outcome::BadReply, format!("thriftworker: service '{}' worker returned a reply that does not answer the call", svc.name)),
            Failure::ShuttingDown => (Outcome::Shutdown, format!("thriftworker: service '{}' shutting down: call not served", svc.name)),
        };
        let m = self.method_stats(&call);
        m.outcome(outcome);
        trace_call(&svc.name, m, call.seqid, "", outcome);
        if let Some(reply) = call.reply {
            m.total
                .observe(Instant::now().saturating_duration_since(call.received));
            let message = application_exception(
                call.protocol,
                &call.name,
                call.seqid,
                AppErrorKind::InternalError,
                &text,
            );
            // Fails only if the client is gone (or, impossibly, its pipeline
            // is over-full); there is no one left to answer.
            let _ = reply.tx.try_send(Completion {
                slot: reply.slot,
                message,
            });
        }
    }
}

/// One debug span per call, entered when its fate is known (so it carries
/// the worker that served it); free when debug logging is off.
#[inline]
fn trace_call(service: &str, m: &MethodStats, seqid: i32, worker: &str, outcome: Outcome) {
    if tracing::enabled!(tracing::Level::DEBUG) {
        let span = tracing::debug_span!("call", service, method = &*m.name, seqid, worker);
        let _e = span.enter();
        tracing::debug!(?outcome, "call finished");
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A call is moved several times on its way (connection → channel →
    /// dispatcher → its entry); up to 128 bytes the compiler moves it inline,
    /// beyond that every move is a `memcpy` call (~480 instructions more per
    /// call, measured with bench/callgrind-ab).
    #[test]
    fn a_call_fits_in_128_bytes() {
        assert!(
            std::mem::size_of::<Call>() <= 128,
            "{}",
            std::mem::size_of::<Call>()
        );
    }
}
