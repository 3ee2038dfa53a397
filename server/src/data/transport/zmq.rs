//! The worker-facing ZeroMQ transport: a ROUTER socket of the (patched)
//! `zeromq` crate behind [`WorkerTransport`].
//!
//! The endpoint is reachable before anyone has authenticated, so it is
//! bounded like one (the patched `zeromq` crate in `third_party/zeromq`,
//! see its PATCHES.md): messages over `max_message_size` and handshakes
//! slower than `handshake_timeout` close the connection; a new connection
//! reusing a connected peer's identity is refused; sends never wait (a peer
//! whose queue is full gets nothing more: the dispatcher drops it), and the
//! dispatcher can close a misbehaving peer's connection.
//!
//! It binds a ROUTER on every configured endpoint. `ipc://` paths live in a
//! directory created with mode 0700 (only this user can connect), and a stale
//! socket file left by a crashed process is removed, but never one that a
//! live process still answers on.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use std::task::{ready, Context, Poll};

use bytes::Bytes;
use futures::StreamExt;
use thriftworker_wire::WorkerMsg;

use super::{Inbound, SendError, WorkerTransport, PEER_SEND_QUEUE};
use crate::config::WorkersConfig;
use zeromq::util::PeerIdentity;
use zeromq::{
    RouterRecvHalf, RouterSendHalf, RouterSocket, Socket, SocketEvent, SocketOptions, ZmqError,
    ZmqMessage,
};

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("cannot bind worker endpoint {endpoint}: {message}")]
    Bind { endpoint: String, message: String },
    #[error("worker endpoint {endpoint}: {message}")]
    Ipc { endpoint: String, message: String },
}

/// The bound ROUTER, in halves so receiving and sending can interleave.
pub struct ZmqTransport {
    send: RouterSendHalf,
    recv: RouterRecvHalf,
    monitor: futures::channel::mpsc::Receiver<SocketEvent>,
    /// Events taken from the socket, not yet returned by `recv`.
    ready: std::collections::VecDeque<Inbound>,
    /// Endpoints as bound (tcp port 0 resolved).
    pub endpoints: Vec<String>,
    ipc_paths: Vec<PathBuf>,
}

/// The default worker endpoint: an ipc socket in a private runtime directory.
pub fn default_endpoint() -> String {
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|p| p.is_dir())
        .map(|p| p.join("thriftworker"))
        .unwrap_or_else(|| {
            let uid = std::fs::metadata("/proc/self")
                .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
                .unwrap_or(0);
            PathBuf::from(format!("/tmp/thriftworker-{uid}"))
        });
    format!("ipc://{}/workers.sock", base.display())
}

impl ZmqTransport {
    pub async fn bind(config: &WorkersConfig) -> Result<ZmqTransport, TransportError> {
        let endpoints = &config.endpoints;
        let mut options = SocketOptions::default();
        options
            .max_message_size(config.max_message_size)
            .handshake_timeout(config.handshake_timeout)
            .peer_send_queue(PEER_SEND_QUEUE);
        let mut socket = RouterSocket::with_options(options);
        let monitor = socket.monitor();
        let mut bound = Vec::new();
        let mut ipc_paths = Vec::new();
        for endpoint in endpoints {
            if let Some(path) = endpoint.strip_prefix("ipc://") {
                prepare_ipc(Path::new(path)).map_err(|message| TransportError::Ipc {
                    endpoint: endpoint.clone(),
                    message,
                })?;
                ipc_paths.push(PathBuf::from(path));
            }
            let resolved = socket
                .bind(endpoint)
                .await
                .map_err(|e| TransportError::Bind {
                    endpoint: endpoint.clone(),
                    message: format!("{e} (is another thriftworker using it?)"),
                })?;
            bound.push(resolved.to_string());
        }
        let (send, recv) = socket.split();
        Ok(ZmqTransport {
            send,
            recv,
            monitor,
            ready: std::collections::VecDeque::new(),
            endpoints: bound,
            ipc_paths,
        })
    }
}

impl ZmqTransport {
    /// The next event, or `Pending` (with `cx` woken on the next one).
    ///
    /// Monitor events come first: the crate emits a peer's `Disconnected`
    /// before it can accept a new connection with the same identity, so the
    /// dispatcher forgets the old worker before it sees a message of the new
    /// connection (which could otherwise pass for the old worker's).
    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Inbound> {
        if let Some(next) = self.ready.pop_front() {
            return Poll::Ready(next);
        }
        // A closed monitor (`None`) only means no more events from it.
        while let Poll::Ready(Some(event)) = self.monitor.poll_next_unpin(cx) {
            if let SocketEvent::Disconnected(peer) = event {
                return Poll::Ready(Inbound::Disconnected { peer: peer.into() });
            }
        }
        let inbound = match ready!(self.recv.poll_recv(cx)) {
            Ok((peer, message)) => Inbound::Message {
                peer: peer.into(),
                msg: WorkerMsg::decode(message.into_vecdeque()),
            },
            Err(e) => Inbound::Closed(e.to_string()),
        };
        // A connection may have ended (and another with its identity
        // begun) while that message was read: its `Disconnected` must be
        // handled before this message.
        while let Ok(event) = self.monitor.try_recv() {
            if let SocketEvent::Disconnected(peer) = event {
                self.ready
                    .push_back(Inbound::Disconnected { peer: peer.into() });
            }
        }
        if self.ready.is_empty() {
            return Poll::Ready(inbound);
        }
        self.ready.push_back(inbound);
        Poll::Ready(self.ready.pop_front().expect("not empty"))
    }
}

impl WorkerTransport for ZmqTransport {
    /// Waits for the next event. Cancel-safe (usable in `select!`): it is
    /// [`poll_event`](ZmqTransport::poll_event), which keeps nothing between
    /// polls but the queue of events already taken.
    async fn recv(&mut self) -> Inbound {
        std::future::poll_fn(|cx| self.poll_event(cx)).await
    }

    /// Queues `frames` for the worker `peer`; never waits (the dispatcher
    /// serves everyone and must not wait on one slow peer).
    fn send(
        &mut self,
        peer: &Bytes,
        frames: impl IntoIterator<Item = Bytes>,
    ) -> Result<(), SendError> {
        let id =
            PeerIdentity::try_from(peer.clone()).map_err(|e| SendError::Gone(e.to_string()))?;
        let frames: std::collections::VecDeque<Bytes> = frames.into_iter().collect();
        let message = ZmqMessage::try_from(frames).map_err(|e| SendError::Gone(e.to_string()))?;
        match self.send.try_send_to(&id, message) {
            Ok(()) => Ok(()),
            Err(ZmqError::PeerQueueFull) => Err(SendError::Full),
            Err(e) => Err(SendError::Gone(e.to_string())),
        }
    }

    /// Closes `peer`'s connection (a `Disconnected` event follows). Returns
    /// whether it was connected.
    fn kick(&mut self, peer: &Bytes) -> bool {
        match PeerIdentity::try_from(peer.clone()) {
            Ok(id) => self.send.disconnect_peer(&id),
            Err(_) => false,
        }
    }
}

impl Drop for ZmqTransport {
    fn drop(&mut self) {
        for p in &self.ipc_paths {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Makes sure `path`'s directory exists with mode 0700 (when we create it)
/// and that no live process owns the socket file.
fn prepare_ipc(path: &Path) -> Result<(), String> {
    if path.as_os_str().len() > 100 {
        return Err(format!(
            "ipc path is {} bytes; Unix socket paths must be under 108: use a shorter directory",
            path.as_os_str().len()
        ));
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| format!("cannot create directory {}: {e}", dir.display()))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| format!("cannot set mode 0700 on {}: {e}", dir.display()))?;
        } else {
            // An existing directory must be ours and closed to others, or
            // another local user could connect as a worker (or have planted
            // the directory to intercept the socket).
            use std::os::unix::fs::MetadataExt;
            let meta = std::fs::metadata(dir)
                .map_err(|e| format!("cannot inspect {}: {e}", dir.display()))?;
            let me = std::fs::metadata("/proc/self").map(|m| m.uid()).ok();
            let mode = meta.mode() & 0o777;
            if me.is_some_and(|uid| uid != meta.uid()) {
                return Err(format!(
                    "directory {} is owned by uid {}, not by this process: use a directory of your own",
                    dir.display(),
                    meta.uid()
                ));
            }
            if mode & 0o077 != 0 {
                tracing::warn!(
                    dir = %dir.display(),
                    mode = format!("{mode:o}"),
                    "worker socket directory is accessible to other users; use mode 0700 (or a worker token) so only your workers can connect"
                );
            }
        }
    }
    if path.exists() {
        match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => {
                return Err(format!(
                    "{} is in use by a running process: stop it or choose another path",
                    path.display()
                ))
            }
            Err(_) => {
                std::fs::remove_file(path)
                    .map_err(|e| format!("cannot remove stale socket {}: {e}", path.display()))?;
            }
        }
    }
    Ok(())
}
