//! Pausing a listener's acceptor: no new connection is accepted while paused,
//! connections already accepted keep being served, resume accepts again.

use std::time::Duration;

use thriftworker_wire::{ServerMsg, WorkerMsg};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_stops_accepting_but_existing_connections_keep_working() {
    let dp = start("", "", "").await;
    let control = dp.running.control().clone();
    let stats = dp.running.stats().listener("echo");
    let mut worker = FakeWorker::connect(&dp.endpoint).await;
    assert!(matches!(
        worker.ready(4, b"").await,
        ServerMsg::ReadyAck { .. }
    ));

    let mut existing = client(dp.addr).await;
    wait_for("first connection accepted", || stats.accepted.get() == 1).await;
    control.set_paused(Some("echo"), true, false).await.unwrap();
    assert!(control.listeners().await[0].handle.is_paused());

    // A new client waits in the backlog: never accepted, never answered.
    let mut waiting = client(dp.addr).await;
    send_call(&mut waiting, "echo", 5).await;

    // The existing connection is still served.
    send_call(&mut existing, "echo", 1).await;
    let ServerMsg::Request(r) = worker.recv_non_heartbeat().await else {
        panic!("expected REQUEST")
    };
    worker
        .send(WorkerMsg::Reply {
            id: r.id,
            message: reply_for(&r.message),
            headers: bytes::Bytes::new(),
        })
        .await;
    assert_eq!(read_reply(&mut existing).await.0.seqid, 1);
    assert_eq!(
        stats.accepted.get(),
        1,
        "no connection accepted while paused"
    );
    let mut probe = [0u8; 1];
    assert!(
        tokio::time::timeout(
            Duration::from_millis(200),
            tokio::io::AsyncReadExt::read(&mut waiting, &mut probe)
        )
        .await
        .is_err(),
        "a connection made while paused must not be served"
    );

    control.set_paused(None, false, false).await.unwrap();
    let ServerMsg::Request(r) = worker.recv_non_heartbeat().await else {
        panic!("expected REQUEST")
    };
    worker
        .send(WorkerMsg::Reply {
            id: r.id,
            message: reply_for(&r.message),
            headers: bytes::Bytes::new(),
        })
        .await;
    assert_eq!(read_reply(&mut waiting).await.0.seqid, 5);
    assert_eq!(stats.accepted.get(), 2);
    dp.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_refuses_and_counts() {
    let dp = start("", "", "max_connections = 1").await;
    let stats = dp.running.stats().listener("echo");
    let _first = client(dp.addr).await;
    wait_for("first accepted", || stats.accepted.get() == 1).await;
    let mut second = client(dp.addr).await;
    let mut buf = [0u8; 1];
    // Refused connections are closed at once: the read sees EOF or a reset.
    let n = within(
        "refused connection closed",
        tokio::io::AsyncReadExt::read(&mut second, &mut buf),
    )
    .await;
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    wait_for("refusal counted", || stats.refused.get() == 1).await;
    dp.running.shutdown().await;
}

/// The admin API runs on a thread and runtime of its own. A listener it adds
/// must be registered with, and run on, the data plane's runtime: here the
/// runtime that added it is dropped before the listener is used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_added_from_another_runtime_runs_on_the_data_planes() {
    let dp = start("", "", "").await;
    let mut worker = FakeWorker::connect(&dp.endpoint).await;
    assert!(matches!(
        worker.ready(4, b"").await,
        thriftworker_wire::ServerMsg::ReadyAck { .. }
    ));
    let control = dp.running.control().clone();
    let config: thriftworker::config::ListenerConfig =
        toml::from_str("name = \"late\"\naddress = \"127.0.0.1:0\"\nservices = [\"Echo\"]")
            .expect("listener config");
    let added = std::thread::spawn(move || {
        let admin_like = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let view = admin_like.block_on(control.add_listener(config));
        drop(admin_like);
        view
    })
    .join()
    .expect("thread")
    .expect("listener added");
    let mut c = client(added.handle.local_addr).await;
    send_call(&mut c, "echo", 7).await;
    let r = match within("the request", worker.recv_non_heartbeat()).await {
        thriftworker_wire::ServerMsg::Request(r) => r,
        other => panic!("expected REQUEST, got {other:?}"),
    };
    worker
        .send(thriftworker_wire::WorkerMsg::Reply {
            id: r.id,
            message: reply_for(&r.message),
            headers: bytes::Bytes::new(),
        })
        .await;
    let (h, _) = within("the reply", read_reply(&mut c)).await;
    assert_eq!(h.seqid, 7);
    dp.running.shutdown().await;
}
