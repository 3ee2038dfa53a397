//! The log filter in force, readable and replaceable at run time (the admin
//! API's `GetLogLevel`/`SetLogLevel`, `thriftctl log-level`).
//!
//! The binary builds the tracing subscriber with a reload layer and hands
//! over two closures; this type hides the subscriber's generic types from
//! everyone else. A process built without one (tests) has none, and the
//! admin API says so.

type Get = Box<dyn Fn() -> String + Send + Sync>;
type Set = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// Reads and replaces the tracing filter (`EnvFilter` syntax, as `--log`).
pub struct LogFilter {
    get: Get,
    set: Set,
}

/// The longest filter accepted (a real one is a few dozen bytes).
pub const MAX_FILTER_LEN: usize = 1024;

impl LogFilter {
    pub fn new(
        get: impl Fn() -> String + Send + Sync + 'static,
        set: impl Fn(&str) -> Result<(), String> + Send + Sync + 'static,
    ) -> LogFilter {
        LogFilter {
            get: Box::new(get),
            set: Box::new(set),
        }
    }

    /// The filter in force.
    pub fn current(&self) -> String {
        (self.get)()
    }

    /// Replaces the filter; an invalid one is refused (the old one stays)
    /// with the parser's reason.
    pub fn replace(&self, filter: &str) -> Result<(), String> {
        if filter.len() > MAX_FILTER_LEN {
            return Err(format!(
                "the filter is {} bytes; at most {MAX_FILTER_LEN}",
                filter.len()
            ));
        }
        (self.set)(filter)
    }
}
