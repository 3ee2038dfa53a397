//! The call a handler is serving: its headers, its deadline, and headers
//! to send back with the reply.
//!
//! Thrift's generated Rust handlers take only the call's arguments, so the
//! rest of the call is reachable from inside the handler through these
//! functions, for the thread that runs it (the pool thread, or the session
//! task with `inline`). Outside a handler they see no call.
//!
//! ```no_run
//! // Inside a handler method:
//! if let Some(trace) = thriftworker_worker::context::header("traceparent") {
//!     // continue the client's trace
//! }
//! let budget = thriftworker_worker::context::remaining();
//! thriftworker_worker::context::set_reply_header("x-served-by", "worker-7");
//! ```
//!
//! Headers come from header-transport clients (THeader info headers: a
//! client's `client_timeout`, `traceparent`, caller identity...) through a
//! data plane that speaks worker protocol version 2; reply headers go back
//! to such clients only. Keys and values are bytes, as on the wire.

use std::cell::RefCell;
use std::time::{Duration, Instant};

use bytes::Bytes;

/// At most this many reply headers per call (the data plane's bound).
pub const MAX_REPLY_HEADERS: usize = thriftworker_wire::MAX_HEADERS;

struct Current {
    headers: Vec<(Bytes, Bytes)>,
    deadline: Instant,
    reply_headers: Vec<(Bytes, Bytes)>,
}

thread_local! {
    static CURRENT: RefCell<Option<Current>> = const { RefCell::new(None) };
}

/// Runs `f` as the handler of a call with these headers and deadline;
/// returns its result and the reply headers it set.
pub(crate) fn serve<R>(
    headers: Vec<(Bytes, Bytes)>,
    deadline: Instant,
    f: impl FnOnce() -> R,
) -> (R, Vec<(Bytes, Bytes)>) {
    CURRENT.with(|c| {
        *c.borrow_mut() = Some(Current {
            headers,
            deadline,
            reply_headers: Vec::new(),
        })
    });
    // Cleared even if `f` unwinds (the caller catches panics).
    struct Clear;
    impl Drop for Clear {
        fn drop(&mut self) {
            let _ = CURRENT.try_with(|c| c.borrow_mut().take());
        }
    }
    let guard = Clear;
    let result = f();
    let reply = CURRENT
        .with(|c| c.borrow_mut().take())
        .map(|c| c.reply_headers)
        .unwrap_or_default();
    drop(guard);
    (result, reply)
}

/// The value of the call's first header named `key` (ASCII case-insensitive).
pub fn header(key: &str) -> Option<Bytes> {
    CURRENT.with(|c| {
        c.borrow().as_ref().and_then(|c| {
            c.headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(key.as_bytes()))
                .map(|(_, v)| v.clone())
        })
    })
}

/// Every header of the call, in the order the client sent them.
pub fn headers() -> Vec<(Bytes, Bytes)> {
    CURRENT.with(|c| {
        c.borrow()
            .as_ref()
            .map(|c| c.headers.clone())
            .unwrap_or_default()
    })
}

/// When the data plane gives up on the call (its `timeout_ms` from the
/// moment the worker received it); `None` outside a handler.
pub fn deadline() -> Option<Instant> {
    CURRENT.with(|c| c.borrow().as_ref().map(|c| c.deadline))
}

/// Time left before [`deadline`] (zero once passed; `None` outside a handler).
pub fn remaining() -> Option<Duration> {
    deadline().map(|d| d.saturating_duration_since(Instant::now()))
}

/// Sends `key: value` back with the reply (header-transport clients see it
/// among the reply's info headers). Returns false, and sends nothing, outside
/// a handler or beyond [`MAX_REPLY_HEADERS`].
pub fn set_reply_header(key: impl Into<Bytes>, value: impl Into<Bytes>) -> bool {
    CURRENT.with(|c| match c.borrow_mut().as_mut() {
        Some(c) if c.reply_headers.len() < MAX_REPLY_HEADERS => {
            c.reply_headers.push((key.into(), value.into()));
            true
        }
        _ => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_handler_sees_its_call_and_nothing_leaks_after_it() {
        let deadline = Instant::now() + Duration::from_secs(5);
        let sent = vec![(
            Bytes::from_static(b"TraceParent"),
            Bytes::from_static(b"00-a-b-01"),
        )];
        let (seen, reply) = serve(sent, deadline, || {
            assert!(set_reply_header("x-k", "v"));
            (
                header("traceparent"),
                deadline_is(deadline),
                headers().len(),
            )
        });
        assert_eq!(seen, (Some(Bytes::from_static(b"00-a-b-01")), true, 1));
        assert_eq!(
            reply,
            vec![(Bytes::from_static(b"x-k"), Bytes::from_static(b"v"))]
        );
        assert_eq!(header("traceparent"), None);
        assert!(!set_reply_header("x", "y"));
        assert_eq!(remaining(), None);
    }

    fn deadline_is(d: Instant) -> bool {
        deadline() == Some(d)
    }

    #[test]
    fn a_panicking_handler_leaves_no_call_behind() {
        let r = std::panic::catch_unwind(|| {
            serve(Vec::new(), Instant::now(), || panic!("boom"));
        });
        assert!(r.is_err());
        assert_eq!(deadline(), None);
    }

    #[test]
    fn reply_headers_are_bounded() {
        let (_, reply) = serve(Vec::new(), Instant::now(), || {
            for _ in 0..MAX_REPLY_HEADERS + 5 {
                set_reply_header("k", "v");
            }
        });
        assert_eq!(reply.len(), MAX_REPLY_HEADERS);
    }
}
