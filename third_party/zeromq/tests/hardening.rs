//! Tests of the fork's hardening patches (see PATCHES.md), against real sockets
//! on 127.0.0.1 and raw TCP peers speaking ZMTP 3.0 by hand.
//!
//! Every wait is bounded by a deadline and waits on a condition (an event, a
//! closed connection, a received message); nothing sleeps to synchronise.
#![cfg(feature = "tokio-runtime")]

use bytes::Bytes;
use futures::channel::mpsc;
use futures::StreamExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use zeromq::prelude::*;
use zeromq::util::PeerIdentity;
use zeromq::{
    DealerSocket, Endpoint, RouterSendHalf, RouterSocket, SocketEvent, SocketOptions, ZmqError,
    ZmqMessage,
};

use std::future::Future;
use std::task::Poll;
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(10);

async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(DEADLINE, future).await {
        Ok(output) => output,
        Err(_) => panic!("timed out after {DEADLINE:?}: {what}"),
    }
}

// ---- Raw ZMTP 3.0 peer ----

fn greeting() -> [u8; 64] {
    let mut greeting = [0u8; 64];
    greeting[0] = 0xff; // signature: ff, 8 bytes of padding, 7f
    greeting[9] = 0x7f;
    greeting[10] = 3; // version 3.0
    greeting[11] = 0;
    greeting[12..16].copy_from_slice(b"NULL"); // mechanism, zero-padded to 20 bytes
    greeting[32] = 0; // as-server; then 31 bytes of filler
    greeting
}

/// A frame: flags (0x01 more, 0x02 long, 0x04 command), 1 or 8 byte length, body.
fn frame(flags: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 9);
    if body.len() > 255 {
        out.push(flags | 0x02);
        out.extend_from_slice(&(body.len() as u64).to_be_bytes());
    } else {
        out.push(flags);
        out.push(body.len() as u8);
    }
    out.extend_from_slice(body);
    out
}

fn ready_command(identity: Option<&[u8]>) -> Vec<u8> {
    fn property(body: &mut Vec<u8>, name: &str, value: &[u8]) {
        body.push(name.len() as u8);
        body.extend_from_slice(name.as_bytes());
        body.extend_from_slice(&(value.len() as u32).to_be_bytes());
        body.extend_from_slice(value);
    }
    let mut body = vec![5];
    body.extend_from_slice(b"READY");
    property(&mut body, "Socket-Type", b"DEALER");
    if let Some(identity) = identity {
        property(&mut body, "Identity", identity);
    }
    frame(0x04, &body)
}

async fn read_frame<S: AsyncRead + Unpin>(stream: &mut S) -> std::io::Result<(u8, Vec<u8>)> {
    let flags = stream.read_u8().await?;
    let len = if flags & 0x02 != 0 {
        stream.read_u64().await? as usize
    } else {
        usize::from(stream.read_u8().await?)
    };
    let mut body = vec![0; len];
    stream.read_exact(&mut body).await?;
    Ok((flags, body))
}

/// Greeting and READY exchange on `stream`, as a DEALER.
async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    identity: Option<&[u8]>,
) -> std::io::Result<()> {
    stream.write_all(&greeting()).await?;
    let mut theirs = [0u8; 64];
    stream.read_exact(&mut theirs).await?;
    assert_eq!((theirs[0], theirs[9], theirs[10]), (0xff, 0x7f, 3));
    stream.write_all(&ready_command(identity)).await?;
    let (flags, body) = read_frame(stream).await?;
    assert!(flags & 0x04 != 0 && body.starts_with(b"\x05READY"));
    Ok(())
}

async fn raw_peer(port: u16, identity: Option<&[u8]>) -> TcpStream {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    within("raw handshake", handshake(&mut stream, identity))
        .await
        .unwrap();
    stream
}

/// Waits until the other side has closed `stream` (EOF or reset), discarding data.
async fn wait_closed(stream: &mut TcpStream) {
    within("connection closed by the socket", async {
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
}

/// Waits until the socket has closed `stream`, without reading from it: a
/// writer stuck on the full connection is not unblocked by this peer. (Writes
/// to a closed connection fail once the peer's kernel answers with a reset;
/// while it is open they succeed until the buffers are full, then block.)
async fn wait_closed_without_reading(stream: &mut TcpStream) {
    within("connection closed by the socket (not reading)", async {
        let junk = vec![0u8; 64 * 1024];
        while stream.write_all(&junk).await.is_ok() {}
    })
    .await;
}

// ---- ROUTER under test ----

struct Router {
    send: RouterSendHalf,
    /// Everything the ROUTER receives (a task keeps calling `recv`).
    messages: tokio::sync::mpsc::UnboundedReceiver<ZmqMessage>,
    monitor: mpsc::Receiver<SocketEvent>,
    endpoint: String,
    port: u16,
}

fn tcp_port(endpoint: &Endpoint) -> u16 {
    match endpoint {
        Endpoint::Tcp(_, port) => *port,
        other => panic!("not a tcp endpoint: {other}"),
    }
}

async fn start_router(options: SocketOptions) -> Router {
    let mut socket = RouterSocket::with_options(options);
    let monitor = socket.monitor();
    let endpoint = socket.bind("tcp://127.0.0.1:0").await.unwrap();
    let (send, mut recv) = socket.split();
    let (sender, messages) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(message) = recv.recv().await {
            if sender.send(message).is_err() {
                break;
            }
        }
    });
    Router {
        send,
        messages,
        monitor,
        port: tcp_port(&endpoint),
        endpoint: endpoint.to_string(),
    }
}

fn routed(peer: &[u8], body: impl Into<Bytes>) -> ZmqMessage {
    let mut message = ZmqMessage::from(Bytes::copy_from_slice(peer));
    message.push_back(body.into());
    message
}

fn peer_id(id: &'static [u8]) -> PeerIdentity {
    PeerIdentity::try_from(Bytes::from_static(id)).unwrap()
}

async fn next_event(
    monitor: &mut mpsc::Receiver<SocketEvent>,
    what: &str,
    matches: impl Fn(&SocketEvent) -> bool,
) -> SocketEvent {
    within(what, async {
        loop {
            let event = monitor.next().await.expect("monitor open");
            if matches(&event) {
                return event;
            }
        }
    })
    .await
}

fn is_disconnected(event: &SocketEvent, id: &[u8]) -> bool {
    matches!(event, SocketEvent::Disconnected(peer) if peer.as_ref() == id)
}

fn is_accepted(event: &SocketEvent, id: &[u8]) -> bool {
    matches!(event, SocketEvent::Accepted(_, peer) if peer.as_ref() == id)
}

async fn dealer(endpoint: &str, identity: Option<&str>) -> DealerSocket {
    let mut options = SocketOptions::default();
    if let Some(identity) = identity {
        options.peer_identity(identity.parse().unwrap());
    }
    let mut dealer = DealerSocket::with_options(options);
    within("dealer connect", dealer.connect(endpoint))
        .await
        .unwrap();
    dealer
}

/// The ROUTER still works: it receives `tag` from `dealer` and routes a reply back.
async fn assert_round_trip(router: &mut Router, dealer: &mut DealerSocket, tag: &str) {
    dealer.send(ZmqMessage::from(tag)).await.unwrap();
    let message = within("router receives from the dealer", async {
        loop {
            let message = router.messages.recv().await.expect("router recv task");
            if message.get(1).map(|frame| frame.as_ref()) == Some(tag.as_bytes()) {
                return message;
            }
        }
    })
    .await;
    let reply = format!("reply to {tag}");
    let identity = message.get(0).unwrap().clone();
    router
        .send
        .send(routed(&identity, reply.clone()))
        .await
        .unwrap();
    let received = within("dealer receives the reply", dealer.recv())
        .await
        .unwrap();
    assert_eq!(received.get(0).unwrap().as_ref(), reply.as_bytes());
}

// ---- Patch A: max message size, bounded reservation ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frame_header_closes_only_that_connection() {
    let mut options = SocketOptions::default();
    options.max_message_size(1 << 20);
    let mut router = start_router(options).await;
    let mut dealer = dealer(&router.endpoint, None).await;
    assert_round_trip(&mut router, &mut dealer, "before").await;

    for (announced, id) in [(1u64 << 40, &b"huge-40"[..]), (1u64 << 62, &b"huge-62"[..])] {
        let mut raw = raw_peer(router.port, Some(id)).await;
        let mut header = vec![0x02]; // long frame, last part
        header.extend_from_slice(&announced.to_be_bytes());
        let _ = raw.write_all(&header).await;

        wait_closed(&mut raw).await;
        next_event(
            &mut router.monitor,
            "Disconnected of the offender",
            |event| is_disconnected(event, id),
        )
        .await;
        assert_round_trip(&mut router, &mut dealer, &format!("after {announced}")).await;
    }

    // A multipart message whose parts add up to more than the limit.
    let mut raw = raw_peer(router.port, Some(b"many-parts")).await;
    let part = vec![7u8; 300 * 1024];
    for _ in 0..4 {
        // The socket may close the connection before all of it is written.
        if raw.write_all(&frame(0x01, &part)).await.is_err() {
            break;
        }
    }
    wait_closed(&mut raw).await;
    next_event(
        &mut router.monitor,
        "Disconnected of the offender",
        |event| is_disconnected(event, b"many-parts"),
    )
    .await;
    assert_round_trip(&mut router, &mut dealer, "after multipart").await;
}

// ---- Patch J: empty frames count against max message size ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_empty_frames_close_the_connection() {
    let mut options = SocketOptions::default();
    options.max_message_size(64 * 1024);
    let mut router = start_router(options).await;
    let mut dealer = dealer(&router.endpoint, None).await;
    let mut raw = raw_peer(router.port, Some(b"empty-parts")).await;
    // 2 bytes on the wire each, ~32 bytes of memory each once buffered:
    // without a per-frame cost they grew one message without bound.
    let chunk: Vec<u8> = std::iter::repeat_n([0x01u8, 0x00], 4096)
        .flatten()
        .collect();
    for _ in 0..64 {
        if raw.write_all(&chunk).await.is_err() {
            break;
        }
    }
    wait_closed(&mut raw).await;
    next_event(
        &mut router.monitor,
        "Disconnected of the offender",
        |event| is_disconnected(event, b"empty-parts"),
    )
    .await;
    assert_round_trip(&mut router, &mut dealer, "after empty frames").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_frame_header_without_a_limit_does_not_abort() {
    // Upstream reserved the announced length up front: 2^40 or 2^62 aborted
    // the process (allocation failure). Now memory grows with received bytes.
    let mut router = start_router(SocketOptions::default()).await;
    let mut dealer = dealer(&router.endpoint, None).await;
    let mut raws = Vec::new();
    for (announced, id) in [(1u64 << 40, &b"huge-40"[..]), (1u64 << 62, &b"huge-62"[..])] {
        let mut raw = raw_peer(router.port, Some(id)).await;
        let mut header = vec![0x02];
        header.extend_from_slice(&announced.to_be_bytes());
        header.extend_from_slice(&[1u8; 1000]);
        raw.write_all(&header).await.unwrap();
        raws.push((raw, id));
    }
    assert_round_trip(&mut router, &mut dealer, "still alive").await;

    // Truncated frames at EOF are protocol errors: the peers are dropped.
    for (raw, id) in raws {
        drop(raw);
        next_event(&mut router.monitor, "Disconnected", |event| {
            is_disconnected(event, id)
        })
        .await;
    }
    assert_round_trip(&mut router, &mut dealer, "after").await;
}

// ---- Patch B: handshake timeout ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_timeout_closes_connections_that_never_complete_it() {
    let mut options = SocketOptions::default();
    options.handshake_timeout(Duration::from_millis(200));
    let mut router = start_router(options).await;

    let started = Instant::now();
    let mut silent = TcpStream::connect(("127.0.0.1", router.port))
        .await
        .unwrap();
    let mut greeted_only = TcpStream::connect(("127.0.0.1", router.port))
        .await
        .unwrap();
    greeted_only.write_all(&greeting()).await.unwrap();

    wait_closed(&mut silent).await;
    wait_closed(&mut greeted_only).await;
    // Closed by the timeout, not before it.
    assert!(started.elapsed() >= Duration::from_millis(190));
    for _ in 0..2 {
        next_event(
            &mut router.monitor,
            "AcceptFailed(HandshakeTimeout)",
            |event| {
                matches!(
                    event,
                    SocketEvent::AcceptFailed(ZmqError::HandshakeTimeout(timeout))
                        if *timeout == Duration::from_millis(200)
                )
            },
        )
        .await;
    }

    // Peers that complete the handshake are unaffected.
    let mut dealer = dealer(&router.endpoint, None).await;
    assert_round_trip(&mut router, &mut dealer, "ok").await;
}

// ---- Patch C: accept back-off ----

#[cfg(unix)]
const EMFILE_CHILD_ENV: &str = "ZEROMQ_FORK_EMFILE_CHILD";

/// Runs in a child process (lowered RLIMIT_NOFILE, descriptors exhausted), so
/// neither this test process nor the machine is affected.
#[cfg(unix)]
#[test]
fn accept_backs_off_while_out_of_file_descriptors() {
    if std::env::var_os(EMFILE_CHILD_ENV).is_some() {
        emfile_child();
        return;
    }
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "accept_backs_off_while_out_of_file_descriptors",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(EMFILE_CHILD_ENV, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("emfile child: ok"),
        "child failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
}

#[cfg(unix)]
fn emfile_child() {
    std::thread::spawn(|| {
        std::thread::sleep(Duration::from_secs(60));
        eprintln!("emfile child: watchdog expired");
        std::process::exit(3);
    });
    // Lower the soft limit, so that exhausting the table is cheap.
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain libc calls on a valid, initialised struct.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_cur.min(256);
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut socket = RouterSocket::new();
        let mut monitor = socket.monitor();
        let port = tcp_port(&socket.bind("tcp://127.0.0.1:0").await.unwrap());
        let ipc_path =
            std::env::temp_dir().join(format!("zeromq-fork-emfile-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&ipc_path);
        socket
            .bind(&format!("ipc://{}", ipc_path.display()))
            .await
            .unwrap();

        let tcp = exhaust_descriptors_then(&mut monitor, || {
            let client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            client.set_nonblocking(true).unwrap();
            client
        })
        .await;
        let mut tcp = TcpStream::from_std(tcp).unwrap();
        accepted_after_exhaustion(&mut socket, &mut monitor, &mut tcp, b"late-tcp").await;

        let ipc = exhaust_descriptors_then(&mut monitor, || {
            let client = std::os::unix::net::UnixStream::connect(&ipc_path).unwrap();
            client.set_nonblocking(true).unwrap();
            client
        })
        .await;
        let mut ipc = tokio::net::UnixStream::from_std(ipc).unwrap();
        accepted_after_exhaustion(&mut socket, &mut monitor, &mut ipc, b"late-ipc").await;
        println!("emfile child: ok");
    });
}

/// Exhausts the descriptor table, then uses its last free slot for a client
/// (`connect`), whose connection is queued while `accept` fails with EMFILE;
/// counts the failed accepts during a window, then frees the descriptors.
#[cfg(unix)]
async fn exhaust_descriptors_then<C>(
    monitor: &mut mpsc::Receiver<SocketEvent>,
    connect: impl FnOnce() -> C,
) -> C {
    let mut files = Vec::new();
    loop {
        match std::fs::File::open("/dev/null") {
            Ok(file) => files.push(file),
            Err(error) if error.raw_os_error() == Some(libc::EMFILE) => break,
            Err(error) => panic!("open /dev/null: {error}"),
        }
    }
    drop(files.pop());
    let client = connect();

    // With back-off (10, 20, 40, ... ms) about 7 attempts fit in 700 ms;
    // the upstream loop retried at once, thousands of times, at 100% CPU.
    let window = Duration::from_millis(700);
    let started = Instant::now();
    let mut failures = 0;
    while let Ok(Some(event)) =
        tokio::time::timeout(window.saturating_sub(started.elapsed()), monitor.next()).await
    {
        if matches!(event, SocketEvent::AcceptFailed(_)) {
            failures += 1;
        }
    }
    println!("emfile child: {failures} failed accepts in {window:?}");
    assert!(
        (2..=20).contains(&failures),
        "{failures} failed accepts in {window:?}"
    );
    drop(files);
    client
}

/// Once descriptors are available again, the queued connection is accepted.
#[cfg(unix)]
async fn accepted_after_exhaustion<S: AsyncRead + AsyncWrite + Unpin>(
    socket: &mut RouterSocket,
    monitor: &mut mpsc::Receiver<SocketEvent>,
    client: &mut S,
    identity: &'static [u8],
) {
    within("handshake after EMFILE", handshake(client, Some(identity)))
        .await
        .unwrap();
    next_event(monitor, "Accepted", |event| is_accepted(event, identity)).await;
    client.write_all(&frame(0, b"hello")).await.unwrap();
    let message = within("message after EMFILE", socket.recv()).await.unwrap();
    assert_eq!(message.get(0).unwrap().as_ref(), identity);
    assert_eq!(message.get(1).unwrap().as_ref(), b"hello");
}

// ---- Patch D: duplicate identities refused ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_identity_is_refused_and_the_first_peer_keeps_its_messages() {
    let mut router = start_router(SocketOptions::default()).await;
    let mut first = dealer(&router.endpoint, Some("worker-1")).await;
    assert_round_trip(&mut router, &mut first, "first").await;

    let mut impostor = raw_peer(router.port, Some(b"worker-1")).await;
    impostor
        .write_all(&frame(0, b"from impostor"))
        .await
        .unwrap();
    wait_closed(&mut impostor).await;
    next_event(
        &mut router.monitor,
        "AcceptFailed for the duplicate",
        |event| matches!(event, SocketEvent::AcceptFailed(_)),
    )
    .await;

    // Messages for "worker-1" still reach the first peer.
    router
        .send
        .send(routed(b"worker-1", "for the first"))
        .await
        .unwrap();
    let received = within("first peer receives", first.recv()).await.unwrap();
    assert_eq!(received.get(0).unwrap().as_ref(), b"for the first");
    assert_round_trip(&mut router, &mut first, "still first").await;
    // Nothing from the refused connection was delivered.
    while let Ok(message) = router.messages.try_recv() {
        assert_ne!(message.get(1).unwrap().as_ref(), b"from impostor");
    }

    // Anonymous peers (random identities) are unaffected.
    let mut anonymous_a = dealer(&router.endpoint, None).await;
    let mut anonymous_b = dealer(&router.endpoint, None).await;
    assert_round_trip(&mut router, &mut anonymous_a, "a").await;
    assert_round_trip(&mut router, &mut anonymous_b, "b").await;
}

type SendFuture = std::pin::Pin<Box<dyn Future<Output = zeromq::ZmqResult<()>> + Send>>;

/// Sends to `peer` (which never reads) until a `send` stays parked: the queue
/// is full and the writer is stuck on the full connection. A send not done
/// within 300 ms is taken as stuck (if it was not, a test using this merely
/// does not exercise a stuck writer; it cannot fail because of it).
#[allow(clippy::async_yields_async)] // The parked send is the result, not awaited here.
async fn park_send_on_stuck_queue(
    router: &Router,
    peer: &'static [u8],
    payload: &Bytes,
) -> SendFuture {
    within("a send stays parked on the full queue", async {
        loop {
            let mut sender = router.send.clone();
            let message = routed(peer, payload.clone());
            let mut send: SendFuture = Box::pin(async move { sender.send(message).await });
            if let Poll::Ready(result) = futures::poll!(send.as_mut()) {
                result.unwrap();
                continue;
            }
            match tokio::time::timeout(Duration::from_millis(300), send.as_mut()).await {
                Ok(result) => result.unwrap(),
                Err(_) => return send,
            }
        }
    })
    .await
}

// ---- Patches F and G: try_send, disconnect_peer ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn try_send_fails_fast_on_a_peer_that_never_reads_which_can_then_be_kicked() {
    let mut options = SocketOptions::default();
    options.peer_send_queue(4);
    let mut router = start_router(options).await;
    let mut slow = raw_peer(router.port, Some(b"slow")).await;
    next_event(&mut router.monitor, "Accepted", |event| {
        is_accepted(event, b"slow")
    })
    .await;

    let payload = Bytes::from(vec![0u8; 256 * 1024]);
    let started = Instant::now();
    let mut queued = 0;
    let error = loop {
        match router.send.try_send(routed(b"slow", payload.clone())) {
            Ok(()) => queued += 1,
            Err(error) => break error,
        }
        assert!(queued < 10_000, "try_send never reported a full queue");
    };
    assert!(
        matches!(error, ZmqError::PeerQueueFull),
        "unexpected error: {error}"
    );
    // The queue was full when try_send looked, but the peer's writer task
    // may still be moving one message into the kernel's socket buffers (the
    // peer's unread bytes have not filled them yet): a slot can free up once
    // more. Once the kernel's buffers are full the writer stays stuck and the
    // queue stays full: a bounded number of further sends, all without waiting.
    let mut refilled = 0;
    loop {
        match router.send.try_send(routed(b"slow", "more")) {
            Ok(()) => refilled += 1,
            Err(ZmqError::PeerQueueFull) => break,
            Err(error) => panic!("unexpected error: {error}"),
        }
        assert!(
            refilled < 10_000,
            "the queue of a peer that never reads never stayed full"
        );
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(matches!(
        router.send.try_send(routed(b"nobody", "x")),
        Err(ZmqError::Other("Destination client not found by identity"))
    ));

    // Kick it: its writer is stuck on the full connection, and must stop anyway.
    drop(park_send_on_stuck_queue(&router, b"slow", &payload).await);
    assert!(router.send.disconnect_peer(&peer_id(b"slow")));
    assert!(!router.send.disconnect_peer(&peer_id(b"slow")));
    wait_closed_without_reading(&mut slow).await;
    assert!(matches!(
        router.send.try_send(routed(b"slow", "x")),
        Err(ZmqError::Other("Destination client not found by identity"))
    ));

    // Exactly one Disconnected, and the socket works on.
    let mut dealer = dealer(&router.endpoint, None).await;
    assert_round_trip(&mut router, &mut dealer, "after kick").await;
    let mut disconnected = 0;
    while let Ok(event) = router.monitor.try_recv() {
        if is_disconnected(&event, b"slow") {
            disconnected += 1;
        }
    }
    assert_eq!(disconnected, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_peer_closes_an_idle_peer_once() {
    let mut router = start_router(SocketOptions::default()).await;
    let mut idle = raw_peer(router.port, Some(b"idle")).await;
    next_event(&mut router.monitor, "Accepted", |event| {
        is_accepted(event, b"idle")
    })
    .await;
    assert!(!router.send.disconnect_peer(&peer_id(b"unknown")));
    assert!(router.send.disconnect_peer(&peer_id(b"idle")));
    wait_closed(&mut idle).await;
    next_event(&mut router.monitor, "Disconnected", |event| {
        is_disconnected(event, b"idle")
    })
    .await;
    let mut dealer = dealer(&router.endpoint, None).await;
    assert_round_trip(&mut router, &mut dealer, "after").await;
    while let Ok(event) = router.monitor.try_recv() {
        assert!(!is_disconnected(&event, b"idle"), "second Disconnected");
    }
}

// ---- Patch E: no map entry held across await ----

/// How the flooded peer goes away while a `send` to it is parked.
enum PeerFailure {
    /// It sends a malformed frame (and still never reads): its reader fails
    /// while its writer is stuck on the full socket. Upstream deadlocked here:
    /// the disconnect waited for the map entry held by the parked send, and the
    /// send waited for the stuck writer.
    ProtocolError,
    /// It closes the connection.
    Close,
}

async fn blocked_send_then(failure: PeerFailure) {
    let mut options = SocketOptions::default();
    options.peer_send_queue(2);
    let mut router = start_router(options).await;
    let mut flood = raw_peer(router.port, Some(b"flood")).await;
    next_event(&mut router.monitor, "Accepted", |event| {
        is_accepted(event, b"flood")
    })
    .await;

    let payload = Bytes::from(vec![0u8; 256 * 1024]);
    while router
        .send
        .try_send(routed(b"flood", payload.clone()))
        .is_ok()
    {}

    // Park a `send` on the full queue (upstream held the peer map entry here).
    let mut blocked = park_send_on_stuck_queue(&router, b"flood", &payload).await;

    match failure {
        PeerFailure::ProtocolError => {
            flood.write_all(&frame(0x04, b"\x05HELLO")).await.unwrap();
            within("the blocked send completes", blocked.as_mut())
                .await
                .ok();
            // The writer was stuck on a full socket; it is stopped all the same.
            wait_closed_without_reading(&mut flood).await;
        }
        PeerFailure::Close => {
            drop(flood);
            within("the blocked send completes", blocked.as_mut())
                .await
                .ok();
        }
    }
    drop(blocked);
    next_event(&mut router.monitor, "Disconnected", |event| {
        is_disconnected(event, b"flood")
    })
    .await;
    let mut dealer = dealer(&router.endpoint, None).await;
    assert_round_trip(&mut router, &mut dealer, "runtime alive").await;
}

/// Runs `test` on its own runtime and thread: a deadlock there blocks runtime
/// threads (and so its timers), so it is detected from outside.
fn fail_on_deadlock(test: impl Future<Output = ()> + Send + 'static) {
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
            .block_on(test);
        let _ = done.send(());
    });
    match finished.recv_timeout(Duration::from_secs(30)) {
        Ok(()) => {}
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => panic!("deadlocked"),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => panic!("test failed (see above)"),
    }
}

#[test]
fn blocked_send_to_a_full_peer_does_not_deadlock_a_protocol_error_disconnect() {
    fail_on_deadlock(blocked_send_then(PeerFailure::ProtocolError));
}

#[test]
fn blocked_send_to_a_full_peer_does_not_deadlock_a_peer_close() {
    fail_on_deadlock(blocked_send_then(PeerFailure::Close));
}

// ---- Patch I: Disconnected before messages of a new connection ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnected_event_precedes_messages_of_the_next_connection_with_that_identity() {
    let mut socket = RouterSocket::new();
    let mut monitor = socket.monitor();
    let port = tcp_port(&socket.bind("tcp://127.0.0.1:0").await.unwrap());

    fn record(event: SocketEvent, log: &mut Vec<String>) {
        if let SocketEvent::Disconnected(peer) = event {
            log.push(format!(
                "disconnected {}",
                String::from_utf8_lossy(peer.as_ref())
            ));
        }
    }
    // The receive pattern documented in PATCHES.md: the monitor has priority,
    // and events that raced a message are drained before the message is used.
    async fn observe(
        socket: &mut RouterSocket,
        monitor: &mut mpsc::Receiver<SocketEvent>,
        log: &mut Vec<String>,
    ) {
        tokio::select! {
            biased;
            Some(event) = monitor.next() => record(event, log),
            message = socket.recv() => {
                while let Ok(event) = monitor.try_recv() {
                    record(event, log);
                }
                let message = message.unwrap();
                log.push(format!(
                    "message {} {}",
                    String::from_utf8_lossy(message.get(0).unwrap()),
                    String::from_utf8_lossy(message.get(1).unwrap())
                ));
            }
        }
    }

    let mut log = Vec::new();
    let mut first = raw_peer(port, Some(b"same")).await;
    first.write_all(&frame(0, b"one")).await.unwrap();
    within("first message", async {
        while !log.contains(&"message same one".to_string()) {
            observe(&mut socket, &mut monitor, &mut log).await;
        }
    })
    .await;

    // The first connection closes; a second one with the same identity keeps
    // trying (refused while the first is registered) and then sends "two".
    drop(first);
    let second = tokio::spawn(async move {
        loop {
            let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            if handshake(&mut stream, Some(b"same")).await.is_err() {
                continue;
            }
            if stream.write_all(&frame(0, b"two")).await.is_err() {
                continue;
            }
            // Refused connections are closed; an accepted one stays open.
            let mut byte = [0u8; 1];
            match stream.read(&mut byte).await {
                Ok(0) | Err(_) => continue,
                Ok(_) => return stream,
            }
        }
    });
    within("second message", async {
        while !log.contains(&"message same two".to_string()) {
            observe(&mut socket, &mut monitor, &mut log).await;
        }
    })
    .await;
    second.abort();

    let disconnected = log.iter().position(|entry| entry == "disconnected same");
    let two = log.iter().position(|entry| entry == "message same two");
    assert!(
        disconnected.is_some() && disconnected < two,
        "Disconnected must come first: {log:?}"
    );
}
