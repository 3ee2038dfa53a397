//! Telemetry: what the data plane counts and how it is read.
//!
//! - [`outcome`]: the one table of call outcomes;
//! - [`counters`], [`histogram`]: lock-free counter kinds;
//! - [`stats`]: the registry (per listener, service, method, worker);
//! - [`health`]: the process's state behind the probes;
//! - [`events`]: what just happened (history and watchers);
//! - [`log_filter`]: the log filter, replaceable at run time;
//! - [`exposition`]: the Prometheus text format; [`http`]: `/metrics`,
//!   `/healthz` and `/readyz` on their own port.
//!
//! Below the data and control planes: it imports only [`crate::thrift`].

/// Declares an enum whose variants each have a label, its `ALL` array and
/// `label()` from one list, so a variant can never be missing from `ALL`
/// (whose positions index the counter arrays of the stats registry).
macro_rules! labelled_enum {
    (
        $(#[$enum_doc:meta])* $name:ident,
        $($(#[$doc:meta])* $variant:ident => $label:literal,)*
    ) => {
        $(#[$enum_doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name {
            $($(#[$doc])* $variant,)*
        }

        impl $name {
            /// Every variant, in the order of the views (and of the counters).
            pub const ALL: [$name; [$($name::$variant),*].len()] = [$($name::$variant),*];

            /// The Prometheus label value.
            pub const fn label(self) -> &'static str {
                match self {
                    $($name::$variant => $label,)*
                }
            }
        }
    };
}
pub(crate) use labelled_enum;

pub mod counters;
pub mod events;
pub mod exposition;
pub mod health;
pub mod histogram;
pub mod http;
pub mod log_filter;
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
