//! Telemetry: what the data plane counts and how it is read.
//!
//! - [`outcome`]: the one table of call outcomes;
//! - [`counters`], [`histogram`]: lock-free counter kinds;
//! - [`stats`]: the registry (per listener, service, method, worker);
//! - [`health`]: the process's state behind the probes;
//! - [`exposition`]: the Prometheus text format; [`http`]: `/metrics`,
//!   `/healthz` and `/readyz` on their own port.
//!
//! Below the data and control planes: it imports only [`crate::thrift`].

pub mod counters;
pub mod exposition;
pub mod health;
pub mod histogram;
pub mod http;
pub mod outcome;
pub mod stats;

pub use counters::{Counter, Gauge, LogLimiter, Tally};
pub use outcome::{Outcome, OUTCOMES};
pub use stats::{CloseReason, ListenerStats, MethodStats, ServiceStats, Stats, WorkerStats};

/// The crate version, as in the `thriftworker_build_info` metric.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The git commit built (`THRIFTWORKER_GIT_SHA` at build time overrides it).
pub const GIT_SHA: &str = env!("THRIFTWORKER_GIT_SHA");

/// Panics seen by the process (any thread), counted by the panic hook
/// (`lifecycle::install_panic_hook`) and exported as `thriftworker_panics_total`.
pub static PANICS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
