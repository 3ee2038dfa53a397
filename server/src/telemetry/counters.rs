//! The counter kinds of the stats registry: lock-free atomics that the hot
//! path updates through a handle it already holds.

use std::sync::atomic::{AtomicU64, Ordering};

use super::histogram::owner_add;

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

impl Default for LogLimiter {
    fn default() -> Self {
        LogLimiter::new(10)
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
