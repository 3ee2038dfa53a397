use crate::async_rt;
use crate::codec::{FramedIo, Message, ZmqFramedRead};
use crate::fair_queue::QueueInner;
use crate::peer_queue::{self, Closed, QueueSender, TrySendError};
use crate::util::PeerIdentity;
use crate::write_queue::write_peer_queue;
use crate::{
    MultiPeerBackend, SocketBackend, SocketEvent, SocketOptions, SocketType, ZmqError, ZmqResult,
};

use async_trait::async_trait;
use crossbeam_queue::SegQueue;
use futures::channel::{mpsc, oneshot};
use futures::future::{self, Either};
use parking_lot::Mutex;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

/// Sender for notifying reconnection tasks when a peer disconnects.
pub(crate) type DisconnectNotifier = mpsc::Sender<PeerIdentity>;

pub(crate) struct Peer {
    pub(crate) sender: Arc<PeerSender>,
    /// Distinguishes successive connections that use the same identity.
    pub(crate) connection_id: u64,
    /// Fired when the peer is disconnected, to stop its writer at once.
    /// (Merely dropping it, as `shutdown` does, lets the writer drain its queue.)
    pub(crate) stop_writer: Option<oneshot::Sender<()>>,
}

/// The sending side of a peer's queue (see `peer_queue`, patch L).
///
/// It is shared (`Arc`) and cloned out of the peer map, so no map entry is
/// ever held across an `.await` (a full queue used to block `peer_disconnected`
/// and deadlock the runtime thread).
pub(crate) struct PeerSender {
    queue: QueueSender,
}

impl PeerSender {
    pub(crate) fn new(send_queue: QueueSender) -> Self {
        Self { queue: send_queue }
    }

    fn try_send(&self, message: Message) -> Result<(), TrySendError> {
        self.queue.try_send(message)
    }

    async fn send(&self, message: Message) -> Result<(), ZmqError> {
        self.queue.send(message).await.map_err(|Closed| {
            ZmqError::BufferFull("Failed to send message. Send queue full/broken")
        })
    }
}

#[derive(Clone)]
struct SinglePeer {
    peer_id: PeerIdentity,
    connection_id: u64,
    sender: Arc<PeerSender>,
}

pub(crate) struct GenericSocketBackend {
    pub(crate) peers: scc::HashMap<PeerIdentity, Peer>,
    fair_queue_inner: Option<Arc<Mutex<QueueInner<ZmqFramedRead, PeerIdentity>>>>,
    pub(crate) round_robin: SegQueue<PeerIdentity>,
    socket_type: SocketType,
    socket_options: Arc<SocketOptions>,
    pub(crate) socket_monitor: Mutex<Option<mpsc::Sender<SocketEvent>>>,
    single_peer: Mutex<Option<SinglePeer>>,
    peer_count: AtomicUsize,
    next_connection_id: AtomicU64,
    /// Notifiers for reconnection tasks - keyed by `peer_id`
    disconnect_notifiers: Mutex<HashMap<PeerIdentity, DisconnectNotifier>>,
}

impl GenericSocketBackend {
    pub(crate) fn with_options(
        fair_queue_inner: Option<Arc<Mutex<QueueInner<ZmqFramedRead, PeerIdentity>>>>,
        socket_type: SocketType,
        options: SocketOptions,
    ) -> Self {
        Self {
            peers: scc::HashMap::new(),
            fair_queue_inner,
            round_robin: SegQueue::new(),
            socket_type,
            socket_options: Arc::new(options),
            socket_monitor: Mutex::new(None),
            single_peer: Mutex::new(None),
            peer_count: AtomicUsize::new(0),
            next_connection_id: AtomicU64::new(0),
            disconnect_notifiers: Mutex::new(HashMap::new()),
        }
    }

    /// Register a notifier to be called when a peer disconnects.
    ///
    /// Used by reconnection tasks to be notified when they should attempt reconnection.
    #[allow(dead_code)] // Will be used when reconnection is added to more socket types
    pub(crate) fn register_disconnect_notifier(
        &self,
        peer_id: PeerIdentity,
        notifier: DisconnectNotifier,
    ) {
        self.disconnect_notifiers.lock().insert(peer_id, notifier);
    }

    /// Unregister a disconnect notifier for a peer.
    #[allow(dead_code)] // Will be used when reconnection is added to more socket types
    pub(crate) fn unregister_disconnect_notifier(&self, peer_id: &PeerIdentity) {
        self.disconnect_notifiers.lock().remove(peer_id);
    }

    pub(crate) fn new_peer(&self, send_queue: QueueSender) -> Peer {
        Peer {
            sender: Arc::new(PeerSender::new(send_queue)),
            connection_id: self.next_connection_id.fetch_add(1, Ordering::Relaxed),
            stop_writer: None,
        }
    }

    pub(crate) async fn send_round_robin(&self, message: Message) -> ZmqResult<()> {
        if let Some(peer) = self.cached_single_peer(None) {
            return self
                .send_to_connection(&peer.peer_id, peer.connection_id, &peer.sender, message)
                .await;
        }

        // In normal scenario this will always be only 1 iteration
        // There can be special case when peer has disconnected and his id is still in
        // RR queue This happens because SegQueue don't have an api to delete
        // items from queue. So in such case we'll just pop item and skip it if
        // we don't have a matching peer in peers map
        loop {
            let next_peer_id = match self.round_robin.pop() {
                Some(peer) => peer,
                None => match message {
                    Message::Greeting(_) => {
                        return Err(ZmqError::Socket("Sending greeting is not supported"))
                    }
                    Message::Command(_) => {
                        return Err(ZmqError::Socket("Sending commands is not supported"))
                    }
                    Message::Message(m) => {
                        return Err(ZmqError::ReturnToSender {
                            reason: "Not connected to peers. Unable to send messages",
                            message: m,
                        })
                    }
                },
            };
            // Clone the sender out: the map entry must not be held across `.await`.
            let Some((connection_id, sender)) = self.lookup_sender(&next_peer_id).await else {
                continue;
            };
            self.send_to_connection(&next_peer_id, connection_id, &sender, message)
                .await?;
            self.round_robin.push(next_peer_id);
            return Ok(());
        }
    }

    pub(crate) async fn send_to_peer(
        &self,
        peer_id: &PeerIdentity,
        message: Message,
    ) -> ZmqResult<()> {
        let (connection_id, sender) = match self.cached_single_peer(Some(peer_id)) {
            Some(peer) => (peer.connection_id, peer.sender),
            // Clone the sender out: the map entry must not be held across `.await`.
            None => match self.lookup_sender(peer_id).await {
                Some(found) => found,
                None => return Err(ZmqError::Other("Destination client not found by identity")),
            },
        };
        self.send_to_connection(peer_id, connection_id, &sender, message)
            .await
    }

    /// Queues `message` for `peer_id` without waiting: fails with
    /// [`ZmqError::PeerQueueFull`] (message not queued) if its queue is full.
    pub(crate) fn try_send_to_peer(
        &self,
        peer_id: &PeerIdentity,
        message: Message,
    ) -> ZmqResult<()> {
        let (connection_id, sender) = match self.cached_single_peer(Some(peer_id)) {
            Some(peer) => (peer.connection_id, peer.sender),
            None => match self
                .peers
                .read_sync(peer_id, |_, peer| (peer.connection_id, peer.sender.clone()))
            {
                Some(found) => found,
                None => return Err(ZmqError::Other("Destination client not found by identity")),
            },
        };
        match sender.try_send(message) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(ZmqError::PeerQueueFull),
            Err(TrySendError::Closed) => {
                // The writer is gone: the peer is disconnected (or about to be).
                self.disconnect_connection(peer_id, Some(connection_id));
                Err(ZmqError::Other("Destination client not found by identity"))
            }
        }
    }

    async fn lookup_sender(&self, peer_id: &PeerIdentity) -> Option<(u64, Arc<PeerSender>)> {
        self.peers
            .read_async(peer_id, |_, peer| (peer.connection_id, peer.sender.clone()))
            .await
    }

    async fn send_to_connection(
        &self,
        peer_id: &PeerIdentity,
        connection_id: u64,
        sender: &PeerSender,
        message: Message,
    ) -> ZmqResult<()> {
        match sender.send(message).await {
            Ok(()) => Ok(()),
            Err(e) => {
                self.disconnect_connection(peer_id, Some(connection_id));
                Err(e)
            }
        }
    }

    fn cached_single_peer(&self, expected_peer_id: Option<&PeerIdentity>) -> Option<SinglePeer> {
        if self.peer_count.load(Ordering::Acquire) != 1 {
            return None;
        }
        let single_peer = self.single_peer.lock();
        let single_peer = single_peer.as_ref()?;
        if let Some(expected_peer_id) = expected_peer_id {
            if single_peer.peer_id != *expected_peer_id {
                return None;
            }
        }
        Some(single_peer.clone())
    }

    fn refresh_single_peer_cache(&self) {
        // Locked while reading the map too, so concurrent refreshes cannot
        // leave a stale entry behind.
        let mut single_peer = self.single_peer.lock();
        let peer_count = self.peers.len();
        self.peer_count.store(peer_count, Ordering::Release);

        if peer_count == 1 {
            *single_peer = self.peers.begin_sync().map(|peer| SinglePeer {
                peer_id: peer.key().clone(),
                connection_id: peer.connection_id,
                sender: peer.sender.clone(),
            });
        } else {
            *single_peer = None;
        }
    }

    /// Disconnects `peer_id` (only its connection `connection_id`, if given):
    /// stops its reader and writer, which closes the connection, and emits one
    /// [`SocketEvent::Disconnected`]. Returns whether it was connected.
    ///
    /// The event is queued, and the reader dropped, while the peer's map entry
    /// is still locked: a new connection can take over the identity only after
    /// that, so the receiver sees the old peer's `Disconnected` before any
    /// message of the new one (when it polls the monitor first).
    pub(crate) fn disconnect_connection(
        &self,
        peer_id: &PeerIdentity,
        connection_id: Option<u64>,
    ) -> bool {
        let removed = self.peers.remove_if_sync(peer_id, |peer| {
            if connection_id.is_some_and(|id| id != peer.connection_id) {
                // A newer connection owns this identity now.
                return false;
            }
            if let Some(inner) = &self.fair_queue_inner {
                inner.lock().remove(peer_id);
            }
            crate::send_monitor_event_reliably(
                &self.socket_monitor,
                SocketEvent::Disconnected(peer_id.clone()),
            );
            true
        });
        let Some((_, mut peer)) = removed else {
            return false;
        };
        if let Some(stop_writer) = peer.stop_writer.take() {
            let _ = stop_writer.send(());
        }
        self.refresh_single_peer_cache();

        // Notify reconnection task if registered
        if let Some(mut notifier) = self.disconnect_notifiers.lock().remove(peer_id) {
            // Use try_send to avoid blocking - if channel is full, the reconnect task
            // will eventually notice the peer is gone
            let _ = notifier.try_send(peer_id.clone());
        }
        true
    }
}

impl SocketBackend for GenericSocketBackend {
    fn socket_type(&self) -> SocketType {
        self.socket_type
    }

    fn socket_options(&self) -> &Arc<SocketOptions> {
        &self.socket_options
    }

    fn shutdown(&self) {
        self.peers.clear_sync();
        self.single_peer.lock().take();
        self.peer_count.store(0, Ordering::Release);
        // Clear fair_queue streams to ensure TCP connections are closed
        // even when reconnect tasks still hold Arc references to the backend
        if let Some(inner) = &self.fair_queue_inner {
            inner.lock().clear();
        }
    }

    fn monitor(&self) -> &Mutex<Option<mpsc::Sender<SocketEvent>>> {
        &self.socket_monitor
    }
}

#[async_trait]
impl MultiPeerBackend for GenericSocketBackend {
    async fn peer_connected(
        self: Arc<Self>,
        peer_id: &PeerIdentity,
        io: FramedIo,
    ) -> ZmqResult<()> {
        let (recv_queue, send_queue) = io.into_parts();
        let (queue_sender, queue_receiver) =
            peer_queue::channel(self.socket_options.peer_send_queue);
        let (stop_writer, writer_stopped) = oneshot::channel();
        let mut peer = self.new_peer(queue_sender);
        peer.stop_writer = Some(stop_writer);
        let connection_id = peer.connection_id;

        {
            // The peer and its reader are registered while its map entry is
            // locked, so a concurrent disconnect finds both or neither.
            let entry = match self.peers.entry_async(peer_id.clone()).await {
                scc::hash_map::Entry::Vacant(entry) => entry.insert_entry(peer),
                scc::hash_map::Entry::Occupied(_) if self.socket_type == SocketType::ROUTER => {
                    // As libzmq with ZMQ_ROUTER_HANDOVER=0 (its default): the
                    // identity belongs to the connected peer. The new connection
                    // is refused (closed as `recv_queue`/`send_queue` drop).
                    log::debug!("Refusing peer with duplicate identity {:?}", peer_id);
                    return Err(ZmqError::Socket(
                        "Refused peer: its identity is already connected",
                    ));
                }
                scc::hash_map::Entry::Occupied(mut entry) => {
                    // Other socket types: the new connection replaces the old
                    // one, as upstream.
                    entry.insert(peer);
                    entry
                }
            };
            if let Some(inner) = &self.fair_queue_inner {
                inner.lock().insert(peer_id.clone(), recv_queue);
            }
            drop(entry);
        }
        self.refresh_single_peer_cache();
        let writer_backend = self.clone();
        let writer_peer_id = peer_id.clone();
        async_rt::task::spawn(async move {
            let writer = write_peer_queue(queue_receiver, send_queue);
            futures::pin_mut!(writer);
            let result = match future::select(writer, writer_stopped).await {
                Either::Left((result, _)) => result,
                // Disconnected: close the connection now, dropping queued messages.
                Either::Right((Ok(()), _)) => return,
                // Dropped without being fired (socket shut down): drain as upstream.
                Either::Right((Err(oneshot::Canceled), writer)) => writer.await,
            };
            if let Err(error) = result {
                log::debug!(
                    "Error sending message to peer {:?}: {:?}",
                    writer_peer_id,
                    error
                );
                writer_backend.disconnect_connection(&writer_peer_id, Some(connection_id));
            }
        });
        self.round_robin.push(peer_id.clone());
        Ok(())
    }

    fn peer_disconnected(&self, peer_id: &PeerIdentity) {
        self.disconnect_connection(peer_id, None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ZmqMessage;

    use crate::peer_queue::QueueReceiver;
    use bytes::Bytes;
    use futures::{FutureExt, StreamExt};

    fn message_with_frame(frame: &'static [u8]) -> Message {
        Message::Message(ZmqMessage::from(Bytes::from_static(frame)))
    }

    fn first_frame(message: Message) -> Bytes {
        let Message::Message(message) = message else {
            panic!("unexpected queued message type");
        };
        message.get(0).expect("message frame").clone()
    }

    async fn insert_peer(
        backend: &GenericSocketBackend,
        peer_id: PeerIdentity,
    ) -> (PeerIdentity, QueueReceiver) {
        let (send_queue, recv_queue) = peer_queue::channel(8);
        backend
            .peers
            .upsert_async(peer_id.clone(), backend.new_peer(send_queue))
            .await;
        backend.refresh_single_peer_cache();
        backend.round_robin.push(peer_id.clone());
        (peer_id, recv_queue)
    }

    #[crate::async_rt::test]
    async fn test_send_round_robin_uses_single_peer_cache() {
        let backend =
            GenericSocketBackend::with_options(None, SocketType::PUSH, SocketOptions::default());
        let (_peer_id, mut recv_queue) =
            insert_peer(&backend, "peer-a".parse().expect("peer id")).await;

        assert_eq!(1, backend.peer_count.load(Ordering::Acquire));
        assert!(backend.single_peer.lock().is_some());

        backend
            .send_round_robin(message_with_frame(b"payload"))
            .await
            .expect("send through single peer cache");

        let queued = recv_queue.recv().await.expect("queued message");
        assert_eq!(Bytes::from_static(b"payload"), first_frame(queued));
    }

    #[crate::async_rt::test]
    async fn test_send_to_peer_uses_single_peer_cache_for_matching_identity() {
        let backend =
            GenericSocketBackend::with_options(None, SocketType::ROUTER, SocketOptions::default());
        let (peer_id, mut recv_queue) =
            insert_peer(&backend, "router-peer".parse().expect("peer id")).await;

        assert_eq!(
            Some(peer_id.clone()),
            backend
                .single_peer
                .lock()
                .as_ref()
                .map(|peer| peer.peer_id.clone())
        );

        backend
            .send_to_peer(&peer_id, message_with_frame(b"routed"))
            .await
            .expect("send to cached peer");

        let queued = recv_queue.recv().await.expect("queued message");
        assert_eq!(Bytes::from_static(b"routed"), first_frame(queued));
    }

    #[crate::async_rt::test]
    async fn test_send_to_peer_routes_by_identity_with_multiple_peers() {
        let backend =
            GenericSocketBackend::with_options(None, SocketType::ROUTER, SocketOptions::default());
        let (_first_peer_id, mut first_recv_queue) =
            insert_peer(&backend, "router-peer-a".parse().expect("peer id")).await;
        let (second_peer_id, mut second_recv_queue) =
            insert_peer(&backend, "router-peer-b".parse().expect("peer id")).await;

        assert_eq!(2, backend.peer_count.load(Ordering::Acquire));
        assert!(backend.single_peer.lock().is_none());

        backend
            .send_to_peer(&second_peer_id, message_with_frame(b"routed-b"))
            .await
            .expect("send to selected peer");

        assert!(first_recv_queue.recv().now_or_never().is_none());
        let queued = second_recv_queue.recv().await.expect("queued message");
        assert_eq!(Bytes::from_static(b"routed-b"), first_frame(queued));
    }

    #[crate::async_rt::test]
    async fn test_send_round_robin_waits_when_cached_sender_is_full() {
        let backend =
            GenericSocketBackend::with_options(None, SocketType::PUSH, SocketOptions::default());
        let peer_id: PeerIdentity = "full-peer".parse().expect("peer id");
        let (send_queue, mut recv_queue) = peer_queue::channel(1);
        send_queue
            .try_send(message_with_frame(b"prefilled"))
            .expect("prefill peer queue");
        backend
            .peers
            .upsert_async(peer_id.clone(), backend.new_peer(send_queue))
            .await;
        backend.refresh_single_peer_cache();
        backend.round_robin.push(peer_id.clone());

        let send_future = backend.send_round_robin(message_with_frame(b"after-full"));
        let recv_future = async {
            let first = recv_queue.recv().await.expect("prefilled message");
            let second = recv_queue
                .recv()
                .await
                .expect("message sent after capacity frees");
            (first, second)
        };

        let (send_result, (first, second)) = futures::join!(send_future, recv_future);

        send_result.expect("send waits for cached sender capacity");
        assert_eq!(Bytes::from_static(b"prefilled"), first_frame(first));
        assert_eq!(Bytes::from_static(b"after-full"), first_frame(second));
    }

    #[crate::async_rt::test]
    async fn test_single_peer_cache_is_cleared_when_cached_sender_is_disconnected() {
        let backend =
            GenericSocketBackend::with_options(None, SocketType::PUSH, SocketOptions::default());
        let peer_id: PeerIdentity = "closed-peer".parse().expect("peer id");
        let (send_queue, recv_queue) = peer_queue::channel(1);
        drop(recv_queue);
        backend
            .peers
            .upsert_async(peer_id.clone(), backend.new_peer(send_queue))
            .await;
        backend.refresh_single_peer_cache();
        backend.round_robin.push(peer_id.clone());

        let error = backend
            .send_round_robin(message_with_frame(b"lost"))
            .await
            .expect_err("closed cached sender should fail");

        assert!(matches!(error, ZmqError::BufferFull(_)));
        assert_eq!(0, backend.peer_count.load(Ordering::Acquire));
        assert!(backend.single_peer.lock().is_none());
        assert!(backend.peers.get_async(&peer_id).await.is_none());
    }

    #[crate::async_rt::test]
    async fn test_peer_disconnected_emits_one_monitor_event() {
        let backend =
            GenericSocketBackend::with_options(None, SocketType::ROUTER, SocketOptions::default());
        let (monitor_sender, mut monitor_receiver) = mpsc::channel(8);
        backend.socket_monitor.lock().replace(monitor_sender);
        let (peer_id, _recv_queue) =
            insert_peer(&backend, "monitor-peer".parse().expect("peer id")).await;

        backend.peer_disconnected(&peer_id);

        let event = monitor_receiver.next().await.expect("disconnect event");
        assert!(matches!(
            event,
            SocketEvent::Disconnected(disconnected_peer) if disconnected_peer == peer_id
        ));

        backend.peer_disconnected(&peer_id);
        assert!(monitor_receiver.try_recv().is_err());
    }

    // Fork tests (PATCHES.md).

    #[crate::async_rt::test]
    async fn test_disconnected_event_is_queued_when_monitor_is_full() {
        let backend =
            GenericSocketBackend::with_options(None, SocketType::ROUTER, SocketOptions::default());
        let (mut monitor_sender, mut monitor_receiver) = mpsc::channel(1);
        while monitor_sender.try_send(SocketEvent::Closed).is_ok() {}
        backend.socket_monitor.lock().replace(monitor_sender);
        let (first, _first_queue) = insert_peer(&backend, "first".parse().unwrap()).await;
        let (second, _second_queue) = insert_peer(&backend, "second".parse().unwrap()).await;

        assert!(backend.disconnect_connection(&first, None));
        assert!(backend.disconnect_connection(&second, None));
        assert!(!backend.disconnect_connection(&second, None));

        let mut disconnected = Vec::new();
        while let Ok(event) = monitor_receiver.try_recv() {
            if let SocketEvent::Disconnected(peer_id) = event {
                disconnected.push(peer_id);
            }
        }
        assert_eq!(disconnected, vec![first, second]);
    }

    #[crate::async_rt::test]
    async fn test_disconnect_of_an_old_connection_spares_the_new_one() {
        let backend =
            GenericSocketBackend::with_options(None, SocketType::ROUTER, SocketOptions::default());
        let (peer_id, _queue) = insert_peer(&backend, "reused".parse().unwrap()).await;
        let connection_id = backend
            .peers
            .read_async(&peer_id, |_, peer| peer.connection_id)
            .await
            .unwrap();

        assert!(!backend.disconnect_connection(&peer_id, Some(connection_id + 1)));
        assert!(backend.peers.contains_async(&peer_id).await);
        assert!(backend.disconnect_connection(&peer_id, Some(connection_id)));
        assert!(!backend.peers.contains_async(&peer_id).await);
    }

    #[crate::async_rt::test]
    async fn test_try_send_fails_fast_when_the_peer_queue_is_full() {
        let backend =
            GenericSocketBackend::with_options(None, SocketType::ROUTER, SocketOptions::default());
        let peer_id: PeerIdentity = "slow".parse().unwrap();
        let (send_queue, mut recv_queue) = peer_queue::channel(2);
        let peer = backend.new_peer(send_queue);
        backend.peers.upsert_async(peer_id.clone(), peer).await;
        // Two peers, so the single-peer cache is not used.
        let (_other, _other_queue) = insert_peer(&backend, "other".parse().unwrap()).await;

        let mut queued = 0;
        let error = loop {
            match backend.try_send_to_peer(&peer_id, message_with_frame(b"m")) {
                Ok(()) => queued += 1,
                Err(error) => break error,
            }
            assert!(queued < 10, "the queue must be bounded");
        };
        assert!(matches!(error, ZmqError::PeerQueueFull));
        // The capacity is a hard bound (patch L; the futures channel gave each
        // sender one slot more).
        assert_eq!(queued, 2);

        // Room again once the writer consumes.
        recv_queue.recv().await.unwrap();
        backend
            .try_send_to_peer(&peer_id, message_with_frame(b"m"))
            .expect("room after a message was consumed");

        let unknown: PeerIdentity = "unknown".parse().unwrap();
        assert!(matches!(
            backend.try_send_to_peer(&unknown, message_with_frame(b"m")),
            Err(ZmqError::Other("Destination client not found by identity"))
        ));
        drop(recv_queue);
        assert!(matches!(
            backend.try_send_to_peer(&peer_id, message_with_frame(b"m")),
            Err(ZmqError::Other("Destination client not found by identity"))
        ));
        assert!(!backend.peers.contains_async(&peer_id).await);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn test_disconnect_does_not_wait_for_a_blocked_send() {
        let backend = Arc::new(GenericSocketBackend::with_options(
            None,
            SocketType::ROUTER,
            SocketOptions::default(),
        ));
        let peer_id: PeerIdentity = "blocked".parse().unwrap();
        let (send_queue, recv_queue) = peer_queue::channel(1);
        let peer = backend.new_peer(send_queue);
        backend.peers.upsert_async(peer_id.clone(), peer).await;
        let (_other, _other_queue) = insert_peer(&backend, "other".parse().unwrap()).await;

        // Send until a send is parked on the full queue.
        let mut blocked = loop {
            let mut send = Box::pin(backend.send_to_peer(&peer_id, message_with_frame(b"m")));
            match futures::poll!(send.as_mut()) {
                std::task::Poll::Ready(result) => result.expect("queue has room"),
                std::task::Poll::Pending => break send,
            }
        };

        // Upstream held the map entry across that await: this blocked forever.
        let disconnecting = backend.clone();
        let disconnect_peer_id = peer_id.clone();
        let disconnected = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            tokio::task::spawn_blocking(move || {
                disconnecting.disconnect_connection(&disconnect_peer_id, None)
            }),
        )
        .await
        .expect("disconnect must not wait for the blocked send")
        .unwrap();
        assert!(disconnected);

        // The blocked send ends when the peer's writer goes away. (A futures
        // channel send that was parked after queueing its message reports Ok.)
        drop(recv_queue);
        tokio::time::timeout(std::time::Duration::from_secs(10), blocked.as_mut())
            .await
            .expect("blocked send completes")
            .ok();
    }
}
