//! Counters shared by the listeners, connections and the dispatcher.
//!
//! One `Stats` is created at start-up and handed down; each listener and
//! service gets its own pre-allocated counter block, so the hot path only does
//! relaxed atomic increments on a handle it already holds (no lookups, no
//! locks, no allocation). Exposition (Prometheus, admin API) reads them.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

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

/// Per-listener counters.
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
    pub bytes_in: Counter,
    pub bytes_out: Counter,
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
        }
        .inc()
    }
}

/// Per-service counters.
#[derive(Debug, Default)]
pub struct ServiceStats {
    pub calls: Counter,
    pub oneway: Counter,
    pub replies: Counter,
    pub unknown_service: Counter,
    pub invalid_type: Counter,
    pub overloaded: Counter,
    pub timeouts: Counter,
    pub worker_died: Counter,
    pub empty_replies: Counter,
    pub shutdown: Counter,
    pub late_replies: Counter,
    pub queue_depth: Gauge,
    pub in_flight: Gauge,
    pub live_workers: Gauge,
    pub total_credit: Gauge,
}

/// Data-plane-wide counters.
#[derive(Debug, Default)]
pub struct DispatchStats {
    pub workers_registered: Counter,
    pub workers_refused: Counter,
    pub workers_dead: Counter,
    pub bad_worker_messages: Counter,
    pub unknown_replies: Counter,
    /// Workers registered now (all services).
    pub live_workers: Gauge,
}

/// The registry: created once in `app::build`, shared by `Arc`. Listeners
/// and services come and go at runtime, so their blocks sit in maps; the maps
/// are touched when one is added or removed and when stats are read, never
/// per call (components hold their own `Arc` to their block).
#[derive(Debug)]
pub struct Stats {
    listeners: Mutex<BTreeMap<String, Arc<ListenerStats>>>,
    services: Mutex<BTreeMap<String, Arc<ServiceStats>>>,
    pub dispatch: DispatchStats,
    pub started: std::time::Instant,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            listeners: Mutex::default(),
            services: Mutex::default(),
            dispatch: DispatchStats::default(),
            started: std::time::Instant::now(),
        }
    }
}

impl Stats {
    /// The counter block of listener `name`, created on first use.
    pub fn listener(&self, name: &str) -> Arc<ListenerStats> {
        let mut map = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(name.to_string()).or_default().clone()
    }

    /// The counter block of service `name`, created on first use.
    pub fn service(&self, name: &str) -> Arc<ServiceStats> {
        let mut map = self.services.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(name.to_string()).or_default().clone()
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

    pub fn listeners(&self) -> Vec<(String, Arc<ListenerStats>)> {
        let map = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    pub fn services(&self) -> Vec<(String, Arc<ServiceStats>)> {
        let map = self.services.lock().unwrap_or_else(|e| e.into_inner());
        map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
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
