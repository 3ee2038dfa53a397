//! Counters shared by the listeners, connections and the dispatcher.
//!
//! One `Stats` is created at start-up and handed down; each listener and
//! service gets its own pre-allocated counter block, so the hot path only does
//! relaxed atomic increments on a handle it already holds (no lookups, no
//! locks, no allocation). Exposition (Prometheus, admin API) reads them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

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
}

/// Data-plane-wide counters.
#[derive(Debug, Default)]
pub struct DispatchStats {
    pub workers_registered: Counter,
    pub workers_refused: Counter,
    pub workers_dead: Counter,
    pub bad_worker_messages: Counter,
    pub unknown_replies: Counter,
}

/// The registry: created once in `app::build`, shared by `Arc`.
#[derive(Debug, Default)]
pub struct Stats {
    pub listeners: HashMap<String, Arc<ListenerStats>>,
    pub services: HashMap<String, Arc<ServiceStats>>,
    pub dispatch: DispatchStats,
}

impl Stats {
    pub fn new<'a>(
        listeners: impl IntoIterator<Item = &'a str>,
        services: impl IntoIterator<Item = &'a str>,
    ) -> Stats {
        Stats {
            listeners: listeners
                .into_iter()
                .map(|n| (n.to_string(), Arc::default()))
                .collect(),
            services: services
                .into_iter()
                .map(|n| (n.to_string(), Arc::default()))
                .collect(),
            dispatch: DispatchStats::default(),
        }
    }
}
