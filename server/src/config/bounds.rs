//! Bounds. Every setting, from the file, a flag, the environment or the
//! admin API, goes through the checks below: nothing unbounded reaches a
//! timer, a channel or an allocation, and no error echoes an unbounded input.

use std::time::Duration;

/// Longest service, listener or method name.
pub const MAX_NAME_LEN: usize = 128;
/// Shortest timeout of any kind.
pub const MIN_TIMEOUT: Duration = Duration::from_millis(1);
/// Longest call deadline or queue timeout (a timer further out is a mistake:
/// tokio's timers and our queues are not meant to hold calls for days).
pub const MAX_CALL_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// Longest idle or write timeout of a connection.
pub const MAX_IDLE_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);
/// Longest shutdown timeout.
pub const MAX_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(3600);
/// Heartbeat interval bounds.
pub const MIN_HEARTBEAT: Duration = Duration::from_millis(10);
pub const MAX_HEARTBEAT: Duration = Duration::from_secs(60);
pub const MAX_LIVENESS: usize = 100;
pub const MAX_QUEUE: usize = 1_000_000;
pub const MAX_CONNECTIONS: usize = 1_000_000;
pub const MAX_PIPELINE: usize = 10_000;
pub const MAX_BACKLOG: usize = 65_535;
pub const MIN_FRAME_SIZE: usize = 16;
/// Largest `max_frame_size` (256 MiB).
pub const MAX_FRAME_SIZE: usize = 256 << 20;
/// Services per listener, and services in all.
pub const MAX_SERVICES: usize = 1_000;
pub const MAX_LISTENERS: usize = 1_000;
pub const MAX_ENDPOINTS: usize = 16;
pub const MAX_THREADS: usize = 1_024;
pub const MAX_ADDRESS_LEN: usize = 300;
/// Memory budget bounds (bytes of requests queued or in flight).
pub const MIN_BUFFERED_BYTES: usize = 1 << 20;
pub const MAX_BUFFERED_BYTES: usize = 1 << 40;
/// Bounds of `[workers].max_message_size`.
pub const MIN_WORKER_MESSAGE: usize = 64 << 10;
pub const MAX_WORKER_MESSAGE: usize = MAX_FRAME_SIZE + (64 << 10);
/// Bounds of `[workers].handshake_timeout`.
pub const MAX_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(300);
/// Bounds of `[workers].stuck_timeout`.
pub const MAX_STUCK_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// A name (service, listener, method) must be 1 to [`MAX_NAME_LEN`] bytes
/// of ASCII letters, digits, `_`, `-` and `.`: it appears in logs, metrics
/// labels, terminal tables and TOML, where anything else needs escaping.
pub fn check_name(what: &str, name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        return Ok(());
    }
    Err(format!(
        "{what} {} is not valid: use 1 to {MAX_NAME_LEN} characters from A-Z, a-z, 0-9, '_', '-' and '.'",
        shown(name)
    ))
}

/// `s` as it may appear in an error message or a log line: quoted, control
/// characters escaped, cut after 64 characters (with its length in bytes).
pub fn shown(s: &str) -> String {
    const MAX: usize = 64;
    let mut out = String::from("'");
    for c in s.chars().take(MAX) {
        out.extend(c.escape_debug());
    }
    out.push('\'');
    if s.chars().count() > MAX {
        out.push_str(&format!("... ({} bytes)", s.len()));
    }
    out
}

pub fn check_duration(what: &str, d: Duration, min: Duration, max: Duration) -> Result<(), String> {
    if d < min || d > max {
        return Err(format!(
            "{what} is {}; it must be between {} and {}",
            humantime::format_duration(d),
            humantime::format_duration(min),
            humantime::format_duration(max)
        ));
    }
    Ok(())
}

pub fn check_count(what: &str, n: usize, min: usize, max: usize) -> Result<(), String> {
    if n < min || n > max {
        return Err(format!("{what} is {n}; it must be between {min} and {max}"));
    }
    Ok(())
}
