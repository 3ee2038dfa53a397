//! A latency histogram written by one task and read by any.
//!
//! Why not a metrics crate's histogram: the dispatcher is the only writer of
//! every per-method histogram, so an observation can be three plain
//! load+store pairs on atomics (no locked read-modify-write, no lock, no
//! allocation), and readers (the Prometheus scrape, the admin API) read the
//! atomics without ever going through the dispatcher.
//!
//! The buckets are fine (10 per decade, 10 µs to 100 s) so the admin API can
//! estimate p50/p90/p99 within about 12%; Prometheus gets a coarser subset of
//! the same boundaries ([`PROMETHEUS_BOUNDS`]), so both views agree exactly on
//! counts.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const MANTISSAS: [u64; 10] = [100, 125, 150, 200, 250, 300, 400, 500, 600, 750];
const DECADES: usize = 7;
/// Upper bounds (inclusive, nanoseconds) of every bucket but the last, which
/// is unbounded: 10 µs, 12.5 µs, 15 µs, 20 µs, … 75 s, 100 s.
pub const BOUNDS_NS: [u64; DECADES * 10 + 1] = bounds();
pub const BUCKETS: usize = BOUNDS_NS.len() + 1;

const fn bounds() -> [u64; DECADES * 10 + 1] {
    let mut out = [0u64; DECADES * 10 + 1];
    let mut scale = 100u64; // mantissa 100 × 100 ns = 10 µs
    let mut d = 0;
    while d < DECADES {
        let mut m = 0;
        while m < 10 {
            out[d * 10 + m] = MANTISSAS[m] * scale;
            m += 1;
        }
        scale *= 10;
        d += 1;
    }
    out[DECADES * 10] = 100 * scale; // 100 s
    out
}

/// The `le` boundaries Prometheus sees, in seconds. Each is one of
/// [`BOUNDS_NS`], so the exported buckets are exact sums of ours.
pub const PROMETHEUS_BOUNDS: [f64; 19] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Written by one task only (see the module docs); read by any.
#[derive(Debug)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS],
    sum_ns: AtomicU64,
    max_ns: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_ns: AtomicU64::new(0),
            max_ns: AtomicU64::new(0),
        }
    }
}

/// Adds to an atomic only its owner writes: a load and a store, no locked
/// instruction. Readers may see the old or the new value, never a torn one.
#[inline]
pub(crate) fn owner_add(a: &AtomicU64, n: u64) {
    a.store(a.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
}

impl Histogram {
    /// Records one observation. Only the owning task may call this.
    #[inline]
    pub fn observe(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let i = BOUNDS_NS.partition_point(|&b| b < ns);
        owner_add(&self.buckets[i], 1);
        owner_add(&self.sum_ns, ns);
        if ns > self.max_ns.load(Ordering::Relaxed) {
            self.max_ns.store(ns, Ordering::Relaxed);
        }
    }

    pub fn snapshot(&self) -> Snapshot {
        let buckets: [u64; BUCKETS] =
            std::array::from_fn(|i| self.buckets[i].load(Ordering::Relaxed));
        Snapshot {
            count: buckets.iter().sum(),
            buckets,
            sum_ns: self.sum_ns.load(Ordering::Relaxed),
            max_ns: self.max_ns.load(Ordering::Relaxed),
        }
    }
}

/// A histogram read at one moment. `count` is the sum of the buckets, so the
/// Prometheus `+Inf` bucket always equals `_count`.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub buckets: [u64; BUCKETS],
    pub count: u64,
    pub sum_ns: u64,
    pub max_ns: u64,
}

impl Snapshot {
    /// Estimated `q`-quantile (0..=1) in nanoseconds: linear within the
    /// bucket holding it, never above the exact maximum. 0 when empty.
    pub fn quantile_ns(&self, q: f64) -> f64 {
        if self.count == 0 {
            return 0.0;
        }
        let rank = (q.clamp(0.0, 1.0) * self.count as f64).max(1.0);
        let mut seen = 0u64;
        for (i, &n) in self.buckets.iter().enumerate() {
            if n == 0 {
                continue;
            }
            if (seen + n) as f64 >= rank {
                let lower = if i == 0 { 0 } else { BOUNDS_NS[i - 1] } as f64;
                let upper = BOUNDS_NS.get(i).map_or(self.max_ns as f64, |&b| b as f64);
                let within = (rank - seen as f64) / n as f64;
                let v = lower + (upper - lower) * within;
                return v.min(self.max_ns as f64);
            }
            seen += n;
        }
        self.max_ns as f64
    }

    /// Cumulative counts at each of [`PROMETHEUS_BOUNDS`].
    pub fn prometheus_buckets(&self) -> [u64; PROMETHEUS_BOUNDS.len()] {
        let mut out = [0u64; PROMETHEUS_BOUNDS.len()];
        let mut cumulative = 0u64;
        let mut next = 0;
        for (i, &n) in self.buckets.iter().enumerate().take(BOUNDS_NS.len()) {
            cumulative += n;
            while next < out.len() && prometheus_bound_ns(next) == BOUNDS_NS[i] {
                out[next] = cumulative;
                next += 1;
            }
        }
        out
    }
}

fn prometheus_bound_ns(i: usize) -> u64 {
    (PROMETHEUS_BOUNDS[i] * 1e9).round() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_increasing_and_span_10us_to_100s() {
        assert_eq!(BOUNDS_NS[0], 10_000);
        assert_eq!(*BOUNDS_NS.last().unwrap(), 100_000_000_000);
        assert!(BOUNDS_NS.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn every_prometheus_bound_is_one_of_ours() {
        for (i, b) in PROMETHEUS_BOUNDS.iter().enumerate() {
            assert!(BOUNDS_NS.contains(&prometheus_bound_ns(i)), "{b}");
        }
    }

    #[test]
    fn observations_land_in_le_buckets() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(50)); // exactly on a bound: le=0.00005
        h.observe(Duration::from_micros(51));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(500)); // beyond 100 s
        let s = h.snapshot();
        assert_eq!(s.count, 4);
        let p = s.prometheus_buckets();
        assert_eq!(p[0], 1); // ≤ 50 µs
        assert_eq!(p[1], 2); // ≤ 100 µs
        assert_eq!(p[5], 2); // ≤ 2.5 ms
        assert_eq!(p[6], 3); // ≤ 5 ms
        assert_eq!(p[18], 3); // ≤ 60 s; the 500 s one only in +Inf (count)
        assert_eq!(s.max_ns, 500_000_000_000);
        assert_eq!(s.sum_ns, 50_000 + 51_000 + 3_000_000 + 500_000_000_000);
    }

    #[test]
    fn quantiles_are_within_a_bucket_and_capped_by_max() {
        let h = Histogram::default();
        for us in 1..=1000u64 {
            h.observe(Duration::from_micros(us));
        }
        let s = h.snapshot();
        let p50 = s.quantile_ns(0.5) / 1000.0;
        let p99 = s.quantile_ns(0.99) / 1000.0;
        assert!((440.0..=560.0).contains(&p50), "p50 {p50}");
        assert!((880.0..=1000.0).contains(&p99), "p99 {p99}");
        assert_eq!(s.quantile_ns(1.0), 1_000_000.0);
        assert_eq!(Histogram::default().snapshot().quantile_ns(0.5), 0.0);
    }
}
