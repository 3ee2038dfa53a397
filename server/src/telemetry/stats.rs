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
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use super::counters::{Counter, Gauge, LogLimiter, Tally};
use super::health::CoreHealth;
pub use super::histogram::Histogram;
use super::outcome::{Outcome, OUTCOMES};
use crate::thrift::Transport;

super::labelled_enum! {
    /// Why a client connection was closed: the one table of close reasons.
    CloseReason,
    ClientClose => "client_close",
    IdleTimeout => "idle_timeout",
    FrameTooLarge => "frame_too_large",
    BadFrame => "bad_frame",
    ProtocolError => "protocol_error",
    Shutdown => "shutdown",
    IoError => "io_error",
    /// The client accepted no answer bytes for `write_timeout`.
    WriteTimeout => "write_timeout",
    /// The TLS handshake failed or timed out (TLS listeners).
    TlsError => "tls_error",
}

/// How many transports there are.
pub const TRANSPORTS: usize = Transport::ALL.len();

/// How many close reasons there are.
pub const CLOSE_REASONS: usize = CloseReason::ALL.len();

/// Per-listener counters, written by its connections.
#[derive(Debug)]
pub struct ListenerStats {
    pub accepted: Counter,
    pub active: Gauge,
    pub refused: Counter,
    /// Connections closed, indexed by [`CloseReason`].
    pub closed: [Counter; CLOSE_REASONS],
    pub bytes_in: Counter,
    pub bytes_out: Counter,
    /// Calls naming no service this listener routes to.
    pub unknown_service: Counter,
    /// REPLY/EXCEPTION messages sent as requests.
    pub invalid_type: Counter,
    /// Connections closed with two-way calls not yet answered.
    pub closed_with_calls_in_flight: Counter,
    /// Connections by the transport of their first message, indexed by
    /// [`Transport::index`] (one entry per [`Transport::ALL`]).
    pub transport_connections: [Counter; TRANSPORTS],
    /// Messages read, by transport.
    pub transport_calls: [Counter; TRANSPORTS],
    /// TLS configuration reloads that took effect, and that failed.
    pub tls_reloads: Counter,
    pub tls_reload_failures: Counter,
    /// Whether the acceptor is paused: the one place this is kept. The
    /// control API sets it, the acceptor waits on it, the views read it.
    pub paused: watch::Sender<bool>,
    /// Limits the warnings about bad clients.
    pub warn_limit: LogLimiter,
}

impl Default for ListenerStats {
    fn default() -> Self {
        ListenerStats {
            accepted: Counter::default(),
            active: Gauge::default(),
            refused: Counter::default(),
            closed: Default::default(),
            bytes_in: Counter::default(),
            bytes_out: Counter::default(),
            unknown_service: Counter::default(),
            invalid_type: Counter::default(),
            closed_with_calls_in_flight: Counter::default(),
            transport_connections: Default::default(),
            transport_calls: Default::default(),
            tls_reloads: Counter::default(),
            tls_reload_failures: Counter::default(),
            paused: watch::Sender::new(false),
            warn_limit: LogLimiter::default(),
        }
    }
}

impl ListenerStats {
    pub fn closed(&self, reason: CloseReason) {
        self.closed[reason as usize].inc()
    }

    pub fn closed_for(&self, reason: CloseReason) -> u64 {
        self.closed[reason as usize].get()
    }

    pub fn is_paused(&self) -> bool {
        *self.paused.borrow()
    }
}

/// Counters and latency histograms of one method of one service. Written
/// only by the dispatcher, so each update is a plain store (see [`Tally`]).
#[derive(Debug)]
pub struct MethodStats {
    /// Label value: the method name (lossy UTF-8), or `other`.
    pub name: Box<str>,
    pub calls: Tally,
    pub oneway: Tally,
    /// Calls finished, indexed by [`Outcome`].
    outcomes: [Tally; OUTCOMES],
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
            outcomes: Default::default(),
            late_replies: Tally::default(),
            total: Histogram::default(),
            queue_wait: Histogram::default(),
            worker: Histogram::default(),
        }
    }

    #[inline]
    pub fn outcome(&self, o: Outcome) {
        self.outcomes[o.index()].inc()
    }

    /// How many calls ended in `o`.
    pub fn count(&self, o: Outcome) -> u64 {
        self.outcomes[o.index()].get()
    }

    /// Every outcome's count, indexed by [`Outcome`].
    pub fn outcomes(&self) -> [u64; OUTCOMES] {
        Outcome::ALL.map(|o| self.count(o))
    }

    /// Failures of the data plane or the worker ([`Outcome::is_error`]).
    pub fn errors(&self) -> u64 {
        Outcome::ALL
            .iter()
            .filter(|o| o.is_error())
            .map(|&o| self.count(o))
            .sum()
    }
}

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
            for (t, n) in t.outcomes.iter_mut().zip(m.outcomes()) {
                *t += n;
            }
            t.errors += m.errors();
            t.late_replies += m.late_replies.get();
        }
        t
    }
}

/// A service's counters summed over its methods; `outcomes` indexed by
/// [`Outcome`].
#[derive(Debug, Default, Clone)]
pub struct ServiceTotals {
    pub calls: u64,
    pub oneway: u64,
    pub outcomes: [u64; OUTCOMES],
    pub errors: u64,
    pub late_replies: u64,
}

impl ServiceTotals {
    pub fn count(&self, o: Outcome) -> u64 {
        self.outcomes[o.index()]
    }
}

/// One connected worker. Its block leaves the registry when it leaves, so
/// its series disappear from the exposition.
#[derive(Debug)]
pub struct WorkerStats {
    pub id: String,
    pub services: Vec<String>,
    /// Its credit here: READY's, or its latest CREDIT's (version 3).
    pub credit: Gauge,
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
    method_cap: usize,
    /// Whether the core tasks can serve: see [`CoreHealth`].
    pub core: CoreHealth,
    /// What just happened (workers, listeners, services, drain, log level).
    pub events: super::events::EventLog,
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
            method_cap,
            core: CoreHealth::default(),
            events: Default::default(),
        }
    }

    /// Milliseconds since start (for `WorkerStats::last_seen_ms`).
    pub fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether the process drains (SIGTERM or the Drain RPC).
    pub fn draining(&self) -> bool {
        self.core.draining().is_cancelled()
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
