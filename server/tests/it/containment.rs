//! Failure containment: one bad worker reply, one client that misbehaves,
//! one stuck worker or one out-of-range setting must never wedge a service
//! or the process. Each test here failed on the code before its fix.

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use thriftworker::config::{ListenerConfig, ServiceConfig};
use thriftworker::control::ControlError;
use thriftworker::telemetry::{CloseReason, Outcome};
use thriftworker::thrift::{self, MessageType, Protocol};
use thriftworker_wire::{ServerMsg, WorkerMsg};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

/// Registers a fake worker with `credit` and returns it.
async fn worker(dp: &DataPlane, credit: u32) -> FakeWorker {
    let mut w = FakeWorker::connect(&dp.endpoint).await;
    assert!(matches!(
        w.ready(credit, b"").await,
        ServerMsg::ReadyAck { .. }
    ));
    w
}

async fn next_request(w: &mut FakeWorker) -> thriftworker_wire::Request {
    match w.recv_non_heartbeat().await {
        ServerMsg::Request(r) => r,
        other => panic!("expected REQUEST, got {other:?}"),
    }
}

/// Answers the worker's next REQUEST with a normal reply.
async fn answer_next(w: &mut FakeWorker) {
    let r = next_request(w).await;
    w.send(WorkerMsg::Reply {
        id: r.id,
        message: reply_for(&r.message),
        headers: Bytes::new(),
    })
    .await;
}

/// A message with the given header and an empty result struct.
fn message_of(protocol: Protocol, name: &[u8], t: MessageType, seqid: i32) -> Bytes {
    let mut m = BytesMut::new();
    thrift::write_header(&mut m, protocol, name, t, seqid);
    m.put_u8(0);
    m.freeze()
}

/// A REPLY to `request` whose result is a string of `len` bytes (field 0).
fn big_reply_for(request: &[u8], len: usize) -> Bytes {
    let mut m = reply_header_for(request);
    m.put_u8(11); // binary: field type string
    m.put_i16(0); // field id 0: the return value
    m.put_u32(len as u32);
    m.put_bytes(b'x', len);
    m.put_u8(0); // STOP
    m.freeze()
}

/// Makes a (bad) reply from the request message.
type MakeReply = Box<dyn Fn(&[u8]) -> Bytes>;

fn text(buf: &[u8]) -> String {
    text_of(buf)
}

/// Finding 6: a worker reply that does not answer its call (garbage, other
/// seqid, other name, other protocol, a CALL, over max_frame_size) never
/// reaches the client: it gets a TApplicationException with its own seqid,
/// counted as `bad_reply`, and the connection stays usable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_that_do_not_answer_the_call_are_replaced() {
    let dp = start("", "", "max_frame_size = 4096").await;
    let stats = dp.running.stats().service("Echo");
    let mut w = worker(&dp, 1).await;
    let mut c = client(dp.addr).await;
    let bad: Vec<(&str, MakeReply)> = vec![
        (
            "garbage",
            Box::new(|_| Bytes::from_static(b"\xff\xfe garbage")),
        ),
        (
            "other seqid",
            Box::new(|_| message_of(Protocol::BinaryStrict, b"echo", MessageType::Reply, 999)),
        ),
        (
            "other name",
            Box::new(|r| {
                let h = thrift::parse(r, Protocol::BinaryStrict).unwrap();
                message_of(
                    Protocol::BinaryStrict,
                    b"other",
                    MessageType::Reply,
                    h.seqid,
                )
            }),
        ),
        (
            "compact reply to a binary call",
            Box::new(|r| {
                let h = thrift::parse(r, Protocol::BinaryStrict).unwrap();
                message_of(Protocol::Compact, b"echo", MessageType::Reply, h.seqid)
            }),
        ),
        (
            "a CALL",
            Box::new(|r| {
                let h = thrift::parse(r, Protocol::BinaryStrict).unwrap();
                message_of(Protocol::BinaryStrict, b"echo", MessageType::Call, h.seqid)
            }),
        ),
        ("over max_frame_size", Box::new(|r| big_reply_for(r, 8192))),
    ];
    for (i, (what, make)) in bad.iter().enumerate() {
        let seqid = 100 + i as i32;
        send_call(&mut c, "echo", seqid).await;
        let r = next_request(&mut w).await;
        w.send(WorkerMsg::Reply {
            id: r.id,
            message: make(&r.message),
            headers: Bytes::new(),
        })
        .await;
        let (h, buf) = read_reply(&mut c).await;
        assert_eq!(h.message_type, MessageType::Exception, "{what}");
        assert_eq!(h.seqid, seqid, "{what}");
        assert!(
            text(&buf).contains("does not answer the call"),
            "{what}: {}",
            text(&buf)
        );
    }
    assert_eq!(
        stats.totals().count(Outcome::BadReply),
        bad.len() as u64,
        "bad_reply"
    );
    assert_eq!(
        dp.running.stats().dispatch.bad_replies.get(),
        bad.len() as u64
    );
    // A good reply still goes through on the same connection.
    send_call(&mut c, "echo", 7).await;
    answer_next(&mut w).await;
    let (h, _) = read_reply(&mut c).await;
    assert_eq!((h.message_type, h.seqid), (MessageType::Reply, 7));
    dp.running.shutdown().await;
}

/// Finding 5 (data plane side): a worker that never answers a call keeps
/// its credit forever, so the service answers only "overloaded". Now a
/// worker still holding a call `stuck_timeout` after its deadline is
/// evicted (DISCONNECT, counted); once it registers again calls flow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_holding_a_call_past_stuck_timeout_is_evicted() {
    let dp = start(
        "timeout = \"100ms\"\nqueue_timeout = \"5s\"",
        "heartbeat_interval = \"50ms\"\nheartbeat_liveness = 100\nstuck_timeout = \"200ms\"",
        "",
    )
    .await;
    let stats = dp.running.stats();
    let mut w = worker(&dp, 1).await;
    let mut c = client(dp.addr).await;
    send_call(&mut c, "echo", 1).await;
    let _held = next_request(&mut w).await; // never answered
    let (h, buf) = read_reply(&mut c).await;
    assert_eq!(h.seqid, 1);
    assert!(text(&buf).contains("timed out"), "{}", text(&buf));
    // The worker keeps heartbeating (it is alive, its handler is stuck).
    let disconnected = within("eviction", async {
        loop {
            w.send(WorkerMsg::Heartbeat).await;
            match w.recv().await {
                ServerMsg::Disconnect { reason } => return reason,
                _ => continue,
            }
        }
    })
    .await;
    assert!(
        text(&disconnected).contains("stuck_timeout"),
        "{}",
        text(&disconnected)
    );
    assert_eq!(stats.dispatch.workers_stuck.get(), 1);
    // It comes back with fresh credit and serves again.
    let mut w = worker(&dp, 1).await;
    send_call(&mut c, "echo", 2).await;
    answer_next(&mut w).await;
    let (h, _) = read_reply(&mut c).await;
    assert_eq!((h.message_type, h.seqid), (MessageType::Reply, 2));
    dp.running.shutdown().await;
}

/// Finding 7: a client that pipelines calls and never reads its answers is
/// disconnected after `write_timeout` (it held its connection and its
/// buffered answers forever), and shutdown does not wait on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_disconnected_after_write_timeout() {
    let dp = start(
        "",
        "",
        "write_timeout = \"300ms\"\nmax_frame_size = 2000000\nmax_pipeline = 64",
    )
    .await;
    let listener = dp.running.stats().listener("echo");
    let mut w = worker(&dp, 64).await;
    let mut c = client(dp.addr).await;
    // Answers of 1 MB each: far more than the socket buffers hold.
    for seqid in 0..32 {
        send_call(&mut c, "echo", seqid).await;
    }
    let mut served = 0;
    let replied = within("the worker is asked 32 calls", async {
        while served < 32 {
            let r = next_request(&mut w).await;
            w.send(WorkerMsg::Reply {
                id: r.id,
                message: big_reply_for(&r.message, 1_000_000),
                headers: Bytes::new(),
            })
            .await;
            served += 1;
        }
    });
    replied.await;
    wait_for("closed for write timeout", || {
        listener.closed_for(CloseReason::WriteTimeout) == 1
    })
    .await;
    // The connection task ends (and leaves the gauge) right after counting.
    wait_for("connection gone", || listener.active.get() == 0).await;
    drop(c);
    within("shutdown", dp.running.shutdown()).await;
}

/// Finding 8: a client that sends its calls and half-closes gets every
/// answer; calls read before a bad frame are answered before the close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_read_before_eof_or_a_bad_frame_are_answered() {
    let dp = start("", "", "").await;
    let mut w = worker(&dp, 8).await;

    let mut c = client(dp.addr).await;
    for seqid in 1..=3 {
        send_call(&mut c, "echo", seqid).await;
    }
    c.shutdown().await.expect("half-close");
    for _ in 0..3 {
        answer_next(&mut w).await;
    }
    for seqid in 1..=3 {
        let (h, _) = read_reply(&mut c).await;
        assert_eq!((h.message_type, h.seqid), (MessageType::Reply, seqid));
    }
    let mut rest = Vec::new();
    within("close after the answers", c.read_to_end(&mut rest))
        .await
        .expect("eof");
    assert!(rest.is_empty());

    // Two calls and a zero-length frame in one write.
    let mut c = client(dp.addr).await;
    let mut bytes = call_frame("echo", 11);
    bytes.extend(call_frame("echo", 12));
    bytes.extend([0, 0, 0, 0]);
    c.write_all(&bytes).await.unwrap();
    for _ in 0..2 {
        answer_next(&mut w).await;
    }
    for seqid in [11, 12] {
        let (h, _) = read_reply(&mut c).await;
        assert_eq!((h.message_type, h.seqid), (MessageType::Reply, seqid));
    }
    let mut rest = Vec::new();
    let _ = within("close after the answers", c.read_to_end(&mut rest)).await;
    assert!(rest.is_empty());
    assert_eq!(
        dp.running
            .stats()
            .listener("echo")
            .closed_for(CloseReason::BadFrame),
        1
    );
    dp.running.shutdown().await;
}

/// Finding 9: queued request bytes are bounded by the service's
/// `max_buffered_bytes`: beyond it a call is answered "overloaded" at once
/// (256 queued 4 MiB calls took RSS to 1 GB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_request_bytes_are_bounded() {
    let dp = start(
        "queue_timeout = \"30s\"\nmax_buffered_bytes = 1048576",
        "",
        "",
    )
    .await;
    let stats = dp.running.stats();
    // No worker: calls queue. Each is ~300 KB.
    let big_call = |seqid: i32| {
        let mut m = BytesMut::new();
        thrift::write_header(
            &mut m,
            Protocol::BinaryStrict,
            b"echo",
            MessageType::Call,
            seqid,
        );
        m.put_u8(11);
        m.put_i16(1);
        m.put_u32(300_000);
        m.put_bytes(b'a', 300_000);
        m.put_u8(0);
        let mut f = (m.len() as u32).to_be_bytes().to_vec();
        f.extend_from_slice(&m);
        f
    };
    let mut held = Vec::new();
    for seqid in 0..3 {
        let mut c = client(dp.addr).await;
        c.write_all(&big_call(seqid)).await.unwrap();
        held.push(c);
    }
    wait_for("three calls queued", || {
        stats.service("Echo").queue_depth.get() == 3
    })
    .await;
    assert!(stats.dispatch.buffered_bytes.get() > 900_000);
    let mut c = client(dp.addr).await;
    c.write_all(&big_call(9)).await.unwrap();
    let (h, buf) = read_reply(&mut c).await;
    assert_eq!((h.message_type, h.seqid), (MessageType::Exception, 9));
    assert!(text(&buf).contains("memory budget"), "{}", text(&buf));
    drop(held);
    dp.running.shutdown().await;
}

/// Findings 10 and 11: settings out of range are refused by the one
/// validator, whatever path they come through (here the control API that
/// the admin API calls); before, an 800-day method timeout panicked the
/// dispatcher on the first call, and max_connections / max_pipeline of
/// 2^64-1 panicked the acceptor / every connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_range_settings_are_refused_with_what_to_fix() {
    let dp = start("", "", "").await;
    let control = dp.running.control();
    let mut svc = ServiceConfig::new("Echo".into());
    svc.method_timeouts.insert(
        "slow".into(),
        thriftworker::config::HumanDuration(Duration::from_secs(800 * 86_400)),
    );
    match control.update_service(svc).await {
        Err(ControlError::InvalidArgument(m)) => {
            assert!(m.contains("method_timeouts.slow"), "{m}")
        }
        other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
    }
    for (field, max_connections, max_pipeline) in [
        ("max_connections", usize::MAX, 64),
        ("max_pipeline", 10, usize::MAX),
    ] {
        let l = ListenerConfig {
            max_connections,
            max_pipeline,
            ..listener("extra")
        };
        match control.add_listener(l).await {
            Err(ControlError::InvalidArgument(m)) => assert!(m.contains(field), "{m}"),
            other => panic!("expected INVALID_ARGUMENT for {field}, got {other:?}"),
        }
    }
    // The data plane still serves.
    let mut w = worker(&dp, 1).await;
    let mut c = client(dp.addr).await;
    send_call(&mut c, "echo", 1).await;
    answer_next(&mut w).await;
    assert_eq!(read_reply(&mut c).await.0.seqid, 1);
    dp.running.shutdown().await;
}

fn listener(name: &str) -> ListenerConfig {
    toml::from_str(&format!(
        "name = \"{name}\"\naddress = \"127.0.0.1:0\"\nservices = [\"Echo\"]"
    ))
    .unwrap()
}

/// Finding 12: names with control characters or of unbounded length are
/// refused, and the error neither echoes them raw nor whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_names_are_refused_without_echoing_them() {
    let dp = start("", "", "").await;
    let control = dp.running.control();
    let long = "S".repeat(100_000);
    for name in [
        "\x1b[31mred",
        "a\0b",
        "del\x7f",
        "new\nline",
        "tab\tbed",
        &long,
    ] {
        match control
            .register_service(ServiceConfig::new(name.to_string()))
            .await
        {
            Err(ControlError::InvalidArgument(m)) => {
                assert!(m.len() < 400, "error of {} bytes", m.len());
                assert!(
                    !m.chars().any(|c| c.is_control()),
                    "raw control character in {m:?}"
                );
            }
            other => panic!("expected INVALID_ARGUMENT for {name:?}, got {other:?}"),
        }
        let l = ListenerConfig {
            name: name.to_string(),
            ..listener("extra")
        };
        match control.add_listener(l).await {
            Err(ControlError::InvalidArgument(m)) => {
                assert!(m.len() < 400 && !m.chars().any(|c| c.is_control()), "{m:?}")
            }
            other => panic!("expected INVALID_ARGUMENT for listener {name:?}, got {other:?}"),
        }
    }
    dp.running.shutdown().await;
}

/// Finding 13: after a service is unregistered, /readyz no longer waits
/// for a worker of it and the stats no longer list it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unregistered_service_leaves_readiness_and_stats() {
    let dp = start("", "", "").await;
    let _w = worker(&dp, 1).await;
    let stats = dp.running.stats();
    wait_for("ready", || stats.not_ready().is_none()).await;
    let control = dp.running.control();
    control
        .register_service(ServiceConfig::new("Extra".into()))
        .await
        .expect("register");
    let why = stats.not_ready().expect("Extra has no worker");
    assert!(why.contains("Extra"), "{why}");
    control
        .unregister_service("Extra")
        .await
        .expect("unregister");
    assert_eq!(stats.not_ready(), None);
    assert!(stats.services().iter().all(|(n, _)| n != "Extra"));
    dp.running.shutdown().await;
}
