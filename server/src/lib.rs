//! thriftworker's data plane: framed Thrift listeners that dispatch calls over
//! ZeroMQ to worker processes.
//!
//! The modules follow a call's path:
//! `listener` (accept) → `connection` (frames via `frame`, headers via
//! `message`, routing, in-order replies) → `dispatch` (queues, deadlines,
//! balancing over `worker_pool`, maps hashed by `fast_hash`) → `transport`
//! (ZeroMQ ROUTER) → workers.
//! `config` describes it, `app` wires it, `stats` counts it (with
//! `histogram`), `metrics` serves the counts to Prometheus with the health
//! probes; `control` changes it at runtime and `admin` exposes that over gRPC.
#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod config;
pub mod connection;
pub mod control;
pub mod dispatch;
pub mod fast_hash;
pub mod frame;
pub mod histogram;
pub mod listener;
pub mod message;
pub mod metrics;
pub mod stats;
pub mod supervise;
pub mod transport;
pub mod worker_pool;

/// The crate version, as in the `thriftworker_build_info` metric.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The git commit built (`THRIFTWORKER_GIT_SHA` at build time overrides it).
pub const GIT_SHA: &str = env!("THRIFTWORKER_GIT_SHA");
