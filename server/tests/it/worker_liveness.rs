//! Heartbeats live in the worker protocol (the `zeromq` crate does not speak
//! ZMTP PING): a worker that goes silent is declared dead after
//! `heartbeat_liveness` intervals and its calls are answered at once.

use thriftworker::telemetry::Outcome;

use bytes::Bytes;
use thriftworker_wire::{ServerMsg, WorkerMsg};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_worker_is_declared_dead_and_its_call_answered() {
    let dp = start(
        "timeout = \"30s\"",
        "heartbeat_interval = \"100ms\"\nheartbeat_liveness = 3",
        "",
    )
    .await;
    let mut worker = FakeWorker::connect(&dp.endpoint).await;
    let ServerMsg::ReadyAck {
        heartbeat_interval_ms,
        worker_id,
        ..
    } = worker.ready(1, b"").await
    else {
        panic!("expected READY ack")
    };
    assert_eq!(heartbeat_interval_ms, 100);
    assert_eq!(&worker_id[..], b"w1");
    let mut c = client(dp.addr).await;
    send_call(&mut c, "slow", 9).await;
    assert!(matches!(
        worker.recv_non_heartbeat().await,
        ServerMsg::Request(_)
    ));
    // The worker now says nothing at all. (When exactly it is declared
    // dead is checked on paused time in dispatch_time.rs; this is the same
    // path through real ZeroMQ and a real client.)
    let (h, buf) = read_reply(&mut c).await;
    assert_eq!(h.seqid, 9);
    assert!(text_of(&buf).contains("worker died"), "{}", text_of(&buf));
    let totals = dp.running.stats().service("Echo").totals();
    assert_eq!(totals.count(Outcome::WorkerDied), 1);
    // It is told it was dropped, so it can reconnect.
    assert!(matches!(
        worker.recv_non_heartbeat().await,
        ServerMsg::Disconnect { .. }
    ));
    dp.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_with_wrong_token_is_refused() {
    // The token normally comes from token_file or THRIFTWORKER_WORKER_TOKEN
    // (read by Config::load); set it directly here.
    let mut config = thriftworker::config::Config::parse(
        "[admin]\nenabled=false\n[metrics]\nenabled=false\n[workers]\nendpoints=[\"tcp://127.0.0.1:0\"]\n[[services]]\nname=\"Echo\"\n\
         [[listeners]]\nname=\"echo\"\naddress=\"127.0.0.1:0\"\nservices=[\"Echo\"]",
    )
    .unwrap();
    config.workers.token = Some(thriftworker::config::Secret(b"s3cret".to_vec()));
    let built = thriftworker::app::build(config).await.unwrap();
    let endpoint = built.addresses().worker_endpoints[0].clone();
    let running = built.spawn().await;

    let mut bad = FakeWorker::connect(&endpoint).await;
    match bad.ready(1, b"wrong").await {
        ServerMsg::Disconnect { reason } => {
            let reason = String::from_utf8_lossy(&reason).into_owned();
            assert!(reason.contains("token"), "{reason}");
            assert!(!reason.contains("s3cret"), "the token must never be echoed");
        }
        other => panic!("expected DISCONNECT, got {other:?}"),
    }
    let mut good = FakeWorker::connect(&endpoint).await;
    assert!(matches!(
        good.ready(1, b"s3cret").await,
        ServerMsg::ReadyAck { .. }
    ));
    assert_eq!(running.stats().dispatch.workers_refused.get(), 1);
    // A message from an unregistered identity is answered DISCONNECT.
    bad.send(WorkerMsg::Reply {
        id: 1,
        message: Bytes::from_static(b"x"),
        headers: Bytes::new(),
    })
    .await;
    assert!(matches!(
        bad.recv_non_heartbeat().await,
        ServerMsg::Disconnect { .. }
    ));
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_ready_is_refused_with_a_reason() {
    use zeromq::{SocketSend, ZmqMessage};
    let dp = start("", "", "").await;
    let mut w = FakeWorker::connect(&dp.endpoint).await;
    // Credit 0 is not a valid READY.
    let frames = vec![
        Bytes::from_static(b"\x01\x01"),
        Bytes::from_static(b"\x00\x00\x00\x00"),
        Bytes::new(),
        Bytes::from_static(b"Echo"),
    ];
    w.socket
        .send(ZmqMessage::try_from(frames).unwrap())
        .await
        .unwrap();
    match w.recv_non_heartbeat().await {
        ServerMsg::Disconnect { reason } => {
            let reason = String::from_utf8_lossy(&reason).into_owned();
            assert!(reason.contains("credit 0"), "{reason}");
        }
        other => panic!("expected DISCONNECT, got {other:?}"),
    }
    assert_eq!(dp.running.stats().dispatch.bad_worker_messages.get(), 1);
    dp.running.shutdown().await;
}
