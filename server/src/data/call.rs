//! What travels from a connection to the dispatcher and back: a call, and
//! its completion. Shared by both, so it lives below both.

use bytes::Bytes;
use thriftworker_wire::Protocol;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// A call read from a client, on its way to a worker.
#[derive(Debug)]
pub struct Call {
    pub service: usize,
    pub protocol: Protocol,
    pub seqid: i32,
    /// Where the method name (as the worker sees it) lies in `message`:
    /// see [`Call::name`].
    pub name_at: (u32, u32),
    /// The full Thrift message (header rewritten if a prefix was stripped).
    pub message: Bytes,
    /// The call's headers (a THeader call's info headers), encoded as the
    /// worker protocol's headers frame; `None` for most calls (boxed: it
    /// keeps `Call` within 128 bytes).
    pub headers: Option<Box<Bytes>>,
    pub deadline: Instant,
    /// When the connection read the request (latency is measured from here).
    pub received: Instant,
    /// `None` for oneway calls.
    pub reply: Option<ReplyTo>,
    /// Index of the method's stats in the dispatcher's cache; set by the
    /// dispatcher on arrival (connections leave it 0). u16 (the method cap
    /// is at most 10,000) keeps `Call` within 128 bytes, which the compiler
    /// moves inline instead of calling memcpy (measured: bench/callgrind-ab).
    pub method: u16,
}

impl Call {
    /// The method name as the worker sees it (used in exceptions we produce).
    pub fn name(&self) -> &[u8] {
        let (start, end) = self.name_at;
        self.message
            .get(start as usize..end as usize)
            .unwrap_or_default()
    }
}

/// Where a two-way call's answer goes: the connection's completion channel
/// and the call's position in that connection's pipeline.
#[derive(Debug)]
pub struct ReplyTo {
    pub tx: mpsc::Sender<Completion>,
    /// Wraps: a connection has at most `max_pipeline` slots pending.
    pub slot: u32,
    /// The listener's `max_frame_size`: a larger reply is not passed on.
    pub max_reply: u32,
}

/// The answer to one call: a complete Thrift message to frame and write.
#[derive(Debug)]
pub struct Completion {
    pub slot: u32,
    pub message: Bytes,
    /// Reply headers from the worker (a headers frame), written only on the
    /// header transport; `None` for almost every reply (boxed: the
    /// completion stays small on its way through the channel).
    pub headers: Option<Box<Bytes>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A call is moved several times on its way (connection → channel →
    /// dispatcher → its entry); up to 128 bytes the compiler moves it inline,
    /// beyond that every move is a `memcpy` call (~480 instructions more per
    /// call, measured with bench/callgrind-ab).
    #[test]
    fn a_call_fits_in_128_bytes() {
        assert!(
            std::mem::size_of::<Call>() <= 128,
            "{}",
            std::mem::size_of::<Call>()
        );
    }
}
