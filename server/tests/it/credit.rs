//! The `zeromq` crate has no high-water mark (a per-peer queue of 100,000
//! messages), so the data plane must never send a worker more calls than the
//! credit it announced: the data plane's own bounded queue is the only queue.

use thriftworker::telemetry::Outcome;
use thriftworker_wire::{ServerMsg, WorkerMsg};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_sends_a_worker_more_than_its_credit() {
    let dp = start("timeout = \"30s\"\nqueue_timeout = \"30s\"", "", "").await;
    let stats = dp.running.stats().service("Echo");
    let mut worker = FakeWorker::connect(&dp.endpoint).await;
    assert!(matches!(
        worker.ready(2, b"").await,
        ServerMsg::ReadyAck { .. }
    ));

    let mut c = client(dp.addr).await;
    for seqid in 0..10 {
        send_call(&mut c, "echo", seqid).await;
    }
    // Two go to the worker, eight wait in the data plane's queue.
    let mut held = Vec::new();
    for _ in 0..2 {
        match worker.recv_non_heartbeat().await {
            ServerMsg::Request(r) => held.push(r),
            other => panic!("expected REQUEST, got {other:?}"),
        }
    }
    wait_for("8 queued, 2 in flight", || {
        stats.queue_depth.get() == 8 && stats.in_flight.get() == 2
    })
    .await;

    // Each reply frees exactly one credit: one more request, never two.
    let mut answered = 0;
    while answered < 10 {
        let r = held.remove(0);
        worker
            .send(WorkerMsg::Reply {
                id: r.id,
                message: reply_for(&r.message),
                headers: bytes::Bytes::new(),
            })
            .await;
        answered += 1;
        let (h, _) = read_reply(&mut c).await;
        assert_eq!(h.seqid, answered - 1, "replies in request order");
        if answered <= 8 {
            match worker.recv_non_heartbeat().await {
                ServerMsg::Request(r) => held.push(r),
                other => panic!("expected REQUEST, got {other:?}"),
            }
        }
        assert!(
            stats.in_flight.get() <= 2,
            "in flight {} exceeds credit 2",
            stats.in_flight.get()
        );
    }
    assert_eq!(
        stats.totals().count(Outcome::Success),
        10,
        "success outcomes"
    );
    assert_eq!(stats.queue_depth.get(), 0);
    dp.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_is_answered_overloaded_with_the_calls_seqid() {
    let dp = start("max_queue = 1\nqueue_timeout = \"30s\"", "", "").await;
    let stats = dp.running.stats().service("Echo");
    // No worker: the first call queues, the second finds the queue full.
    let mut c = client(dp.addr).await;
    send_call(&mut c, "echo", 1).await;
    wait_for("one call queued", || stats.queue_depth.get() == 1).await;
    let mut c2 = client(dp.addr).await;
    send_call(&mut c2, "echo", 77).await;
    let (h, buf) = read_reply(&mut c2).await;
    assert_eq!(h.seqid, 77);
    assert_eq!(h.message_type, thriftworker::thrift::MessageType::Exception);
    // With no worker at all the answer (and the outcome) says so.
    assert!(
        text_of(&buf).contains("overloaded: no live worker"),
        "{}",
        text_of(&buf)
    );
    assert_eq!(
        stats.totals().count(Outcome::NoWorker),
        1,
        "no_worker outcomes"
    );
    assert_eq!(
        stats.totals().count(Outcome::Overloaded),
        0,
        "overloaded outcomes"
    );
    dp.running.shutdown().await;
}
