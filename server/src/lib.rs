//! thriftworker's data plane: Thrift listeners that dispatch calls over
//! ZeroMQ to worker processes, with a gRPC control plane and Prometheus
//! telemetry.
//!
//! The folders are the architecture (docs/architecture.md has the map):
//!
//! | layer | module      | job                                                   |
//! |-------|-------------|-------------------------------------------------------|
//! | 6     | [`app`]     | wiring: config → bind → spawn → drain                 |
//! | 5     | [`control`] | the control API and the admin gRPC service            |
//! | 4     | [`data`]    | listeners, connections, dispatch, worker transport    |
//! | 3     | [`lifecycle`] | drain, failure, supervision of core tasks           |
//! | 2     | [`config`]  | the configuration and its bounds                      |
//! | 1     | [`telemetry`] | outcomes, stats, health, metrics and probes         |
//! | 0     | [`thrift`]  | the wire format: transports and protocols             |
//!
//! The layering rule: a module imports only from layers below its own (and
//! within its own folder without cycles); `server/tests/layering.rs` checks
//! it on every test run.
#![forbid(unsafe_code)]

pub mod app;
pub mod config;
pub mod control;
pub mod data;
pub mod lifecycle;
pub mod telemetry;
pub mod thrift;

pub use telemetry::{GIT_SHA, VERSION};
