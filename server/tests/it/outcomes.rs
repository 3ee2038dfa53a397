//! Every call ends in exactly one outcome, and the three views of the stats
//! registry (the registry itself, Prometheus text, the admin API's snapshot)
//! agree. The fake worker answers each way a worker can: a normal reply, a
//! declared exception, a `TApplicationException`, an empty reply; one call
//! is still held when the data plane shuts down.

use bytes::{BufMut, Bytes};
use thriftworker::telemetry::Outcome;
use thriftworker::thrift::{self, AppErrorKind, MessageType};
use thriftworker_proto::admin::v1 as pb;
use thriftworker_wire::{ServerMsg, WorkerMsg};

use crate::support::*;

/// A REPLY to `request` whose result struct starts with field `id` (a string).
fn reply_with_field(request: &[u8], id: i16) -> Bytes {
    let mut m = reply_header_for(request);
    m.put_u8(11); // TType::String
    m.put_i16(id);
    m.put_i32(1);
    m.put_u8(b'x');
    m.put_u8(0); // STOP
    m.freeze()
}

fn app_exception_for(request: &[u8]) -> Bytes {
    let h = thrift::parse(request, thrift::detect(request).unwrap()).unwrap();
    thrift::application_exception(
        h.protocol,
        h.name(request),
        h.seqid,
        AppErrorKind::UnknownMethod,
        "no such method",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_reply_kind_and_shutdown_is_one_outcome_in_every_view() {
    let dp = start("timeout = \"30s\"", "", "").await;
    let mut worker = FakeWorker::connect(&dp.endpoint).await;
    assert!(matches!(
        worker.ready(8, b"").await,
        ServerMsg::ReadyAck { .. }
    ));
    let mut c = client(dp.addr).await;

    // (method, what the worker answers)
    type Answer = fn(&[u8]) -> Bytes;
    let plan: [(&str, Answer); 5] = [
        ("ok", reply_for),
        ("ok", |r| reply_with_field(r, 0)),
        ("declared", |r| reply_with_field(r, 2)),
        ("app", app_exception_for),
        ("empty", |_| Bytes::new()),
    ];
    for (seqid, (name, answer)) in plan.iter().enumerate() {
        send_call(&mut c, name, seqid as i32).await;
        let r = match within("a request", worker.recv_non_heartbeat()).await {
            ServerMsg::Request(r) => r,
            other => panic!("expected REQUEST, got {other:?}"),
        };
        let message = answer(&r.message);
        worker
            .send(WorkerMsg::Reply {
                id: r.id,
                message,
                headers: Bytes::new(),
            })
            .await;
        let (h, buf) = within("the answer", read_reply(&mut c)).await;
        assert_eq!(h.seqid, seqid as i32);
        if *name == "empty" {
            assert_eq!(h.message_type, MessageType::Exception);
            assert!(
                text_of(&buf).contains("worker returned no reply"),
                "{}",
                text_of(&buf)
            );
        }
    }
    // One call the worker never answers: shutdown (timeout 1 s) answers it.
    send_call(&mut c, "held", 9).await;
    assert!(matches!(
        within("the held request", worker.recv_non_heartbeat()).await,
        ServerMsg::Request(_)
    ));
    let stats = dp.running.stats().clone();
    dp.running.shutdown().await;
    let (h, buf) = within("the shutdown answer", read_reply(&mut c)).await;
    assert_eq!((h.seqid, h.message_type), (9, MessageType::Exception));
    assert!(text_of(&buf).contains("shutting down"), "{}", text_of(&buf));

    // The registry.
    let expected: [(&str, &str, u64); 5] = [
        ("ok", "success", 2),
        ("declared", "declared_exception", 1),
        ("app", "app_exception", 1),
        ("empty", "empty_reply", 1),
        ("held", "shutdown", 1),
    ];
    let svc = stats.service("Echo");
    let methods = svc.methods();
    for (method, outcome, n) in expected {
        let m = methods.iter().find(|m| &*m.name == method).expect(method);
        assert_eq!(m.calls.get(), n, "{method} calls");
        for o in Outcome::ALL {
            let want = if o.label() == outcome { n } else { 0 };
            assert_eq!(m.count(o), want, "{method} {}", o.label());
        }
        assert_eq!(
            m.total.snapshot().count,
            n,
            "{method}: one latency per call"
        );
    }

    // Prometheus text.
    let mut text = String::new();
    thriftworker::telemetry::exposition::encode(&stats, &mut text);
    for (method, outcome, n) in expected {
        let line = format!("thriftworker_call_outcomes_total{{service=\"Echo\",method=\"{method}\",outcome=\"{outcome}\"}} {n}\n");
        assert!(text.contains(&line), "missing {line}");
        let count = format!("thriftworker_call_duration_seconds_count{{service=\"Echo\",method=\"{method}\"}} {n}\n");
        assert!(text.contains(&count), "missing {count}");
    }

    // The admin API's snapshot.
    let snap = thriftworker::control::admin::convert::stats_snapshot(
        &stats,
        &pb::GetStatsRequest::default(),
    );
    let by = |name: &str| {
        snap.methods
            .iter()
            .find(|m| m.method == name)
            .unwrap()
            .clone()
    };
    assert_eq!((by("ok").success, by("ok").errors), (2, 0));
    assert_eq!(
        (by("declared").declared_exception, by("declared").errors),
        (1, 0)
    );
    assert_eq!((by("app").app_exception, by("app").errors), (1, 1));
    assert_eq!((by("empty").empty_reply, by("empty").errors), (1, 1));
    assert_eq!((by("held").shutdown, by("held").errors), (1, 1));
    let s = &snap.services[0];
    assert_eq!((s.calls, s.replies, s.errors), (6, 4, 3), "{s:?}");
    assert!(snap.draining);
}
