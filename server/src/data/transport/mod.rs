//! The seam between the dispatcher and its workers' connections: a small
//! trait, so the dispatcher runs over ZeroMQ in production ([`zmq`]) and over
//! an in-memory fake in tests that drive its timers with paused time
//! (`server/tests/it/dispatch_time.rs`).

use std::future::Future;

use bytes::Bytes;
use thriftworker_wire::WorkerMsg;

pub mod zmq;

pub use zmq::{default_endpoint, TransportError, ZmqTransport};

/// What the dispatcher needs from the worker side.
pub trait WorkerTransport: Send + 'static {
    /// Waits for the next event. Must be cancel-safe (used in `select!`),
    /// and report a peer's `Disconnected` before any message of a new
    /// connection with the same identity.
    fn recv(&mut self) -> impl Future<Output = Inbound> + Send;

    /// Queues `frames` for `peer`; never waits (the dispatcher serves
    /// everyone and must not wait on one slow peer).
    fn send(
        &mut self,
        peer: &Bytes,
        frames: impl IntoIterator<Item = Bytes>,
    ) -> Result<(), SendError>;

    /// Closes `peer`'s connection (a `Disconnected` event follows). Returns
    /// whether it was connected.
    fn kick(&mut self, peer: &Bytes) -> bool;
}

/// Something that happened on the worker side.
pub enum Inbound {
    /// A message from the worker with this ZeroMQ identity.
    Message {
        peer: Bytes,
        msg: Result<WorkerMsg, thriftworker_wire::WireError>,
    },
    /// ZeroMQ reports the worker's connection closed.
    Disconnected { peer: Bytes },
    /// The socket itself failed; dispatch cannot go on.
    Closed(String),
}

/// Why a send to a worker failed; either way the message is dropped.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The peer's send queue is full: it does not read what it is sent.
    #[error("the peer does not read (its send queue of {PEER_SEND_QUEUE} messages is full)")]
    Full,
    #[error("{0}")]
    Gone(String),
}

/// Messages queued per peer. Credit (at most 65,536 calls) bounds what a
/// registered worker is sent, plus a trickle of HEARTBEAT and DISCONNECT;
/// a peer that lets more pile up is not reading.
pub const PEER_SEND_QUEUE: usize = 65_536 + 4_096;
