//! In-process integration tests: the real data plane (`app::build` on port 0)
//! driven by raw TCP Thrift clients and a raw ZeroMQ DEALER playing the
//! worker, so each test controls exactly what the worker does.
//! End-to-end tests with real processes live in `tests/e2e/`.

mod support;

mod containment;
mod credit;
mod dispatch_time;
mod listener_control;
mod outcomes;
mod worker_liveness;
