//! A service's settings as the data plane uses them, shared (by `Arc`) by
//! the listeners that route to it and the dispatcher. Replaced whole when
//! the service is updated; its `index` never changes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::config::ServiceConfig;
use crate::telemetry::{ServiceStats, Stats};

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
    /// Builds the shared settings of service number `index`.
    pub fn new(index: usize, s: &ServiceConfig, stats: &Stats) -> Arc<ServiceInfo> {
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
