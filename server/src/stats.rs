//! The stats model: one registry shared by the listeners, connections and
//! the dispatcher, read by the three views (Prometheus `/metrics`, the admin
//! API's `GetStats`/`WatchStats`, and through it `thriftctl stats`).
//!
//! One `Stats` is created at start-up and handed down; each listener,
//! service, method and worker gets its own counter block, so the hot path
//! only updates atomics on a handle it already holds (no locks, no
//! allocation). Per-method blocks are written only by the dispatcher task,
//! which caches them by method name; their counters are [`Tally`]s (plain
//! stores, no locked instruction). Readers never go through the dispatcher,
//! so a scrape answers even when the data plane is saturated.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::histogram::owner_add;
pub use crate::histogram::Histogram;

/// A monotonically increasing counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    #[inline]
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    #[inline]
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    #[inline]
    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
    pub fn set(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Why a client connection was closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    ClientClose,
    IdleTimeout,
    FrameTooLarge,
    BadFrame,
    ProtocolError,
    Shutdown,
    IoError,
    /// The client accepted no answer bytes for `write_timeout`.
    WriteTimeout,
}

/// Lets through at most `per_second` events each second and counts the
/// rest, so a flood of bad frames cannot flood the log (the counters above
/// still count every one).
#[derive(Debug)]
pub struct LogLimiter {
    per_second: u64,
    window: AtomicU64,
    in_window: AtomicU64,
    suppressed: AtomicU64,
    start: std::time::Instant,
}

impl LogLimiter {
    pub fn new(per_second: u64) -> LogLimiter {
        LogLimiter {
            per_second,
            window: AtomicU64::new(0),
            in_window: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
            start: std::time::Instant::now(),
        }
    }

    /// `Some(n)` if this event may be logged, `n` being how many were
    /// suppressed since the last one logged; `None` to stay quiet.
    pub fn allow(&self) -> Option<u64> {
        let now = self.start.elapsed().as_secs();
        if self.window.swap(now, Ordering::Relaxed) != now {
            self.in_window.store(0, Ordering::Relaxed);
        }
        if self.in_window.fetch_add(1, Ordering::Relaxed) < self.per_second {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

/// Per-listener counters, written by its connections.
#[derive(Debug, Default)]
pub struct ListenerStats {
    pub accepted: Counter,
    pub active: Gauge,
    pub refused: Counter,
    pub closed_client: Counter,
    pub closed_idle: Counter,
    pub closed_frame_too_large: Counter,
    pub closed_bad_frame: Counter,
    pub closed_protocol_error: Counter,
    pub closed_shutdown: Counter,
    pub closed_io_error: Counter,
    pub closed_write_timeout: Counter,
    pub bytes_in: Counter,
    pub bytes_out: Counter,
    /// Calls naming no service this listener routes to.
    pub unknown_service: Counter,
    /// REPLY/EXCEPTION messages sent as requests.
    pub invalid_type: Counter,
    /// Connections closed with two-way calls not yet answered.
    pub closed_with_calls_in_flight: Counter,
    /// Acceptor paused (set by the control API).
    pub paused: AtomicBool,
    /// Limits the warnings about bad clients.
    pub warn_limit: LogLimiter,
}

impl Default for LogLimiter {
    fn default() -> Self {
        LogLimiter::new(10)
    }
}

impl ListenerStats {
    pub fn closed(&self, reason: CloseReason) {
        match reason {
            CloseReason::ClientClose => &self.closed_client,
            CloseReason::IdleTimeout => &self.closed_idle,
            CloseReason::FrameTooLarge => &self.closed_frame_too_large,
            CloseReason::BadFrame => &self.closed_bad_frame,
            CloseReason::ProtocolError => &self.closed_protocol_error,
            CloseReason::Shutdown => &self.closed_shutdown,
            CloseReason::IoError => &self.closed_io_error,
            CloseReason::WriteTimeout => &self.closed_write_timeout,
        }
        .inc()
    }
}

/// A counter only the dispatcher task writes (load + store, no locked
/// instruction); anyone may read it.
#[derive(Debug, Default)]
pub struct Tally(AtomicU64);

impl Tally {
    #[inline]
    pub fn inc(&self) {
        owner_add(&self.0, 1);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// How one call ended. Every call ends in exactly one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A normal reply (oneway: the worker ran it).
    Success,
    /// A reply carrying an exception declared in the IDL.
    DeclaredException,
    /// A `TApplicationException` from the worker.
    AppException,
    Timeout,
    Overloaded,
    /// Overloaded while the service had no live worker.
    NoWorker,
    WorkerDied,
    Shutdown,
    EmptyReply,
    /// The client closed its connection while the call waited in the queue:
    /// dropped, never sent to a worker.
    Abandoned,
    /// The worker's reply did not answer the call (wrong protocol, type,
    /// name, seqid, or too large): the client got an exception instead.
    BadReply,
}

/// Counters and latency histograms of one method of one service. Written
/// only by the dispatcher, so each update is a plain store (see [`Tally`]).
#[derive(Debug)]
pub struct MethodStats {
    /// Label value: the method name (lossy UTF-8), or `other`.
    pub name: Box<str>,
    pub calls: Tally,
    pub oneway: Tally,
    pub success: Tally,
    pub declared_exception: Tally,
    pub app_exception: Tally,
    pub timeout: Tally,
    pub overloaded: Tally,
    pub no_worker: Tally,
    pub worker_died: Tally,
    pub shutdown: Tally,
    pub empty_reply: Tally,
    pub abandoned: Tally,
    pub bad_reply: Tally,
    pub late_replies: Tally,
    /// Request read → answer handed to the connection (two-way calls).
    pub total: Histogram,
    /// Arrival at the dispatcher → sent to a worker.
    pub queue_wait: Histogram,
    /// Sent to a worker → its reply.
    pub worker: Histogram,
}

impl MethodStats {
    fn new(name: &str) -> MethodStats {
        MethodStats {
            name: name.into(),
            calls: Tally::default(),
            oneway: Tally::default(),
            success: Tally::default(),
            declared_exception: Tally::default(),
            app_exception: Tally::default(),
            timeout: Tally::default(),
            overloaded: Tally::default(),
            no_worker: Tally::default(),
            worker_died: Tally::default(),
            shutdown: Tally::default(),
            empty_reply: Tally::default(),
            abandoned: Tally::default(),
            bad_reply: Tally::default(),
            late_replies: Tally::default(),
            total: Histogram::default(),
            queue_wait: Histogram::default(),
            worker: Histogram::default(),
        }
    }

    #[inline]
    pub fn outcome(&self, o: Outcome) {
        match o {
            Outcome::Success => &self.success,
            Outcome::DeclaredException => &self.declared_exception,
            Outcome::AppException => &self.app_exception,
            Outcome::Timeout => &self.timeout,
            Outcome::Overloaded => &self.overloaded,
            Outcome::NoWorker => &self.no_worker,
            Outcome::WorkerDied => &self.worker_died,
            Outcome::Shutdown => &self.shutdown,
            Outcome::EmptyReply => &self.empty_reply,
            Outcome::Abandoned => &self.abandoned,
            Outcome::BadReply => &self.bad_reply,
        }
        .inc()
    }

    /// Each outcome with its label value, in a fixed order.
    pub fn outcomes(&self) -> [(&'static str, u64); OUTCOMES] {
        [
            ("success", self.success.get()),
            ("declared_exception", self.declared_exception.get()),
            ("app_exception", self.app_exception.get()),
            ("timeout", self.timeout.get()),
            ("overloaded", self.overloaded.get()),
            ("no_worker", self.no_worker.get()),
            ("worker_died", self.worker_died.get()),
            ("shutdown", self.shutdown.get()),
            ("empty_reply", self.empty_reply.get()),
            ("abandoned", self.abandoned.get()),
            ("bad_reply", self.bad_reply.get()),
        ]
    }

    /// Failures of the data plane or the worker: every outcome but success,
    /// declared exceptions and calls the client abandoned.
    pub fn errors(&self) -> u64 {
        self.app_exception.get()
            + self.timeout.get()
            + self.overloaded.get()
            + self.no_worker.get()
            + self.worker_died.get()
            + self.shutdown.get()
            + self.empty_reply.get()
            + self.bad_reply.get()
    }
}

/// How many outcomes there are (see [`Outcome`]).
pub const OUTCOMES: usize = 11;

/// Label of the method that collects calls beyond the cap.
pub const OTHER_METHOD: &str = "other";

/// Per-service gauges and the service's methods.
#[derive(Debug)]
pub struct ServiceStats {
    pub queue_depth: Gauge,
    pub in_flight: Gauge,
    pub live_workers: Gauge,
    pub total_credit: Gauge,
    pub free_credit: Gauge,
    /// Bytes of requests queued or at workers.
    pub buffered_bytes: Gauge,
    /// Methods in first-seen order; `other` last once the cap is reached.
    /// Locked when a method is first seen and when stats are read, never per
    /// call (the dispatcher caches the handles).
    methods: Mutex<Vec<Arc<MethodStats>>>,
    method_cap: usize,
}

impl ServiceStats {
    fn new(method_cap: usize) -> ServiceStats {
        ServiceStats {
            queue_depth: Gauge::default(),
            in_flight: Gauge::default(),
            live_workers: Gauge::default(),
            total_credit: Gauge::default(),
            free_credit: Gauge::default(),
            buffered_bytes: Gauge::default(),
            methods: Mutex::default(),
            method_cap,
        }
    }

    /// The stats of method `name`, created on first sight; once the service
    /// has `method_cap` methods, new names share the `other` block. The bool
    /// says whether the block is `name`'s own (the caller may cache it under
    /// `name`; it must not cache `other` under every random name).
    pub fn method(&self, name: &[u8]) -> (Arc<MethodStats>, bool) {
        let label = String::from_utf8_lossy(name);
        let mut list = self.methods.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(m) = list.iter().find(|m| *m.name == *label) {
            let own = *m.name != *OTHER_METHOD || &*label == OTHER_METHOD;
            return (m.clone(), own);
        }
        let named = list.iter().filter(|m| *m.name != *OTHER_METHOD).count();
        if named < self.method_cap {
            let m = Arc::new(MethodStats::new(&label));
            // Keep `other` (if present) last.
            let at = list
                .iter()
                .position(|m| *m.name == *OTHER_METHOD)
                .unwrap_or(list.len());
            list.insert(at, m.clone());
            return (m, true);
        }
        if let Some(other) = list.iter().find(|m| *m.name == *OTHER_METHOD) {
            return (other.clone(), false);
        }
        let other = Arc::new(MethodStats::new(OTHER_METHOD));
        list.push(other.clone());
        (other, false)
    }

    pub fn methods(&self) -> Vec<Arc<MethodStats>> {
        self.methods
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Sums over the methods: (calls, oneway, per-outcome, late replies).
    pub fn totals(&self) -> ServiceTotals {
        let mut t = ServiceTotals::default();
        for m in self.methods() {
            t.calls += m.calls.get();
            t.oneway += m.oneway.get();
            for (i, (_, n)) in m.outcomes().iter().enumerate() {
                t.outcomes[i] += n;
            }
            t.errors += m.errors();
            t.late_replies += m.late_replies.get();
        }
        t
    }
}

/// A service's counters summed over its methods; `outcomes` in the order of
/// [`MethodStats::outcomes`].
#[derive(Debug, Default, Clone)]
pub struct ServiceTotals {
    pub calls: u64,
    pub oneway: u64,
    pub outcomes: [u64; OUTCOMES],
    pub errors: u64,
    pub late_replies: u64,
}

/// One connected worker. Its block leaves the registry when it leaves, so
/// its series disappear from the exposition.
#[derive(Debug)]
pub struct WorkerStats {
    pub id: String,
    pub services: Vec<String>,
    pub credit: u32,
    pub in_flight: Gauge,
    pub served: Tally,
    /// When last heard from, in ms since the process started.
    pub last_seen_ms: AtomicU64,
}

/// Data-plane-wide counters.
#[derive(Debug, Default)]
pub struct DispatchStats {
    pub workers_registered: Counter,
    pub workers_refused: Counter,
    pub workers_dead: Counter,
    pub bad_worker_messages: Counter,
    pub unknown_replies: Counter,
    /// Replies that did not match their call (protocol, type, name, seqid,
    /// size): replaced by an exception for the client.
    pub bad_replies: Counter,
    /// Workers evicted because a call stayed with them past
    /// `[workers].stuck_timeout` after its deadline.
    pub workers_stuck: Counter,
    /// Worker-port connections closed for misbehaving (unregistered
    /// traffic, not reading what is sent to them).
    pub peers_dropped: Counter,
    /// Workers registered now (all services).
    pub live_workers: Gauge,
    /// Bytes of requests queued or at workers, all services.
    pub buffered_bytes: Gauge,
}

/// The registry: created once in `app::build`, shared by `Arc`. Listeners,
/// services and workers come and go at runtime, so their blocks sit in maps;
/// the maps are touched when one is added or removed and when stats are
/// read, never per call (components hold their own `Arc` to their block).
#[derive(Debug)]
pub struct Stats {
    listeners: Mutex<BTreeMap<String, Arc<ListenerStats>>>,
    services: Mutex<BTreeMap<String, Arc<ServiceStats>>>,
    workers: Mutex<BTreeMap<String, Arc<WorkerStats>>>,
    pub dispatch: DispatchStats,
    pub started: std::time::Instant,
    /// Wall-clock start, seconds since the Unix epoch.
    pub started_unix: f64,
    draining: AtomicBool,
    method_cap: usize,
    /// Whether the core tasks can serve: see [`CoreHealth`].
    pub core: CoreHealth,
}

/// The truth behind the probes: a core task (dispatcher, acceptor, admin,
/// metrics) that died makes the process unfit to serve, and so does a
/// dispatcher that stopped turning its loop (it stamps `beat` on every
/// heartbeat tick, which nothing can starve: see `Dispatcher::run`).
#[derive(Debug)]
pub struct CoreHealth {
    failure: Mutex<Option<String>>,
    failed: AtomicBool,
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
            failed: AtomicBool::new(false),
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
        self.failed.store(true, Ordering::Release);
    }

    pub fn failure(&self) -> Option<String> {
        if !self.failed.load(Ordering::Acquire) {
            return None;
        }
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn beat(&self, now_ms: u64) {
        self.beat_ms.store(now_ms, Ordering::Relaxed);
    }

    /// The dispatcher stopped on purpose: no stall to report from now on.
    pub fn stopped(&self) {
        self.beat_ms.store(u64::MAX, Ordering::Relaxed);
    }

    pub fn set_stall_after(&self, d: std::time::Duration) {
        self.stall_after_ms
            .store(d.as_millis() as u64, Ordering::Relaxed);
    }

    /// How long the dispatcher has not beaten, if longer than the limit.
    pub fn stalled(&self, now_ms: u64) -> Option<u64> {
        let beat = self.beat_ms.load(Ordering::Relaxed);
        let silent = now_ms.saturating_sub(beat);
        (beat != u64::MAX && silent > self.stall_after_ms.load(Ordering::Relaxed)).then_some(silent)
    }
}

impl Default for Stats {
    fn default() -> Self {
        Stats::new(DEFAULT_METHOD_CAP)
    }
}

/// Methods per service with their own series; see `[metrics].method_cap`.
pub const DEFAULT_METHOD_CAP: usize = 200;

impl Stats {
    pub fn new(method_cap: usize) -> Stats {
        Stats {
            listeners: Mutex::default(),
            services: Mutex::default(),
            workers: Mutex::default(),
            dispatch: DispatchStats::default(),
            started: std::time::Instant::now(),
            started_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
            draining: AtomicBool::new(false),
            method_cap,
            core: CoreHealth::default(),
        }
    }

    /// Milliseconds since start (for `WorkerStats::last_seen_ms`).
    pub fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// The counter block of listener `name`, created on first use.
    pub fn listener(&self, name: &str) -> Arc<ListenerStats> {
        let mut map = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(name.to_string()).or_default().clone()
    }

    /// The counter block of service `name`, created on first use.
    pub fn service(&self, name: &str) -> Arc<ServiceStats> {
        let mut map = self.services.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(name.to_string())
            .or_insert_with(|| Arc::new(ServiceStats::new(self.method_cap)))
            .clone()
    }

    pub fn remove_listener(&self, name: &str) {
        self.listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
    }

    pub fn remove_service(&self, name: &str) {
        self.services
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
    }

    pub fn add_worker(&self, w: Arc<WorkerStats>) {
        self.workers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(w.id.clone(), w);
    }

    pub fn remove_worker(&self, id: &str) {
        self.workers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }

    pub fn listeners(&self) -> Vec<(String, Arc<ListenerStats>)> {
        let map = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    pub fn services(&self) -> Vec<(String, Arc<ServiceStats>)> {
        let map = self.services.lock().unwrap_or_else(|e| e.into_inner());
        map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    pub fn workers(&self) -> Vec<Arc<WorkerStats>> {
        let map = self.workers.lock().unwrap_or_else(|e| e.into_inner());
        map.values().cloned().collect()
    }

    /// Why the process is not alive (the kubelet should restart it), if it
    /// is not: a core task died, or the dispatcher is stalled.
    pub fn not_live(&self) -> Option<String> {
        if let Some(why) = self.core.failure() {
            return Some(format!("core task failed: {why}"));
        }
        self.core
            .stalled(self.now_ms())
            .map(|ms| format!("dispatcher stalled: no progress for {ms} ms"))
    }

    /// Why the data plane should not get traffic now, if it should not: not
    /// alive, draining, or a registered service without a live worker.
    pub fn not_ready(&self) -> Option<String> {
        if let Some(why) = self.not_live() {
            return Some(why);
        }
        if self.draining() {
            return Some("draining".into());
        }
        let missing: Vec<String> = self
            .services()
            .into_iter()
            .filter(|(_, s)| s.live_workers.get() == 0)
            .map(|(n, _)| n)
            .collect();
        (!missing.is_empty())
            .then(|| format!("no live worker for service(s): {}", missing.join(", ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_limiter_caps_a_burst_and_reports_what_it_suppressed() {
        let l = LogLimiter::new(3);
        let allowed = (0..100).filter(|_| l.allow().is_some()).count();
        // All 100 fall in one or two one-second windows.
        assert!((3..=6).contains(&allowed), "{allowed}");
    }
}

#[cfg(test)]
mod method_tests {
    use super::*;

    #[test]
    fn method_cap_folds_new_names_into_other() {
        let s = ServiceStats::new(3);
        for n in ["a", "b", "c"] {
            let (m, own) = s.method(n.as_bytes());
            assert!(own);
            assert_eq!(&*m.name, n);
        }
        let (m, own) = s.method(b"d");
        assert!(!own);
        assert_eq!(&*m.name, OTHER_METHOD);
        let (m2, _) = s.method(b"e");
        assert!(Arc::ptr_eq(&m, &m2));
        // Known names still get their own block.
        assert_eq!(&*s.method(b"b").0.name, "b");
        let names: Vec<String> = s.methods().iter().map(|m| m.name.to_string()).collect();
        assert_eq!(names, ["a", "b", "c", "other"]);
    }

    #[test]
    fn non_utf8_names_are_labelled_lossily() {
        let s = ServiceStats::new(10);
        assert_eq!(&*s.method(b"ab\xff").0.name, "ab\u{fffd}");
    }
}
