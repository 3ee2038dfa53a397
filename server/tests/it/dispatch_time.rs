//! The dispatcher's clocks on paused time: deadlines, queue timeouts,
//! heartbeats and stuck-worker eviction, each checked to the millisecond.
//!
//! The dispatcher runs over an in-memory [`WorkerTransport`]: the test plays
//! the workers by pushing `Inbound` events and reads what the dispatcher
//! sends. Time only moves when the test calls `advance`, so every assertion
//! is about an exact instant, and nothing waits on the wall clock.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use thriftworker::config::ServiceConfig;
use thriftworker::data::call::{Call, Completion, ReplyTo};
use thriftworker::data::dispatch::{Command, Dispatcher, Settings};
use thriftworker::data::service::ServiceInfo;
use thriftworker::data::transport::{Inbound, SendError, WorkerTransport};
use thriftworker::telemetry::{Outcome, Stats};
use thriftworker::thrift::{self, MessageType, Protocol};
use thriftworker_wire::{ServerMsg, WorkerMsg};
use tokio::sync::{mpsc, watch};
use tokio::time::{advance, Instant};

/// The workers' side, in memory.
struct FakeTransport {
    inbound: mpsc::UnboundedReceiver<Inbound>,
    sent: mpsc::UnboundedSender<(Bytes, ServerMsg)>,
}

impl WorkerTransport for FakeTransport {
    async fn recv(&mut self) -> Inbound {
        match self.inbound.recv().await {
            Some(event) => event,
            None => std::future::pending().await,
        }
    }

    fn send(
        &mut self,
        peer: &Bytes,
        frames: impl IntoIterator<Item = Bytes>,
    ) -> Result<(), SendError> {
        let msg = ServerMsg::decode(frames).expect("the dispatcher sends valid messages");
        let _ = self.sent.send((peer.clone(), msg));
        Ok(())
    }

    fn kick(&mut self, _peer: &Bytes) -> bool {
        true
    }
}

struct Rig {
    commands: mpsc::Sender<Command>,
    inbound: mpsc::UnboundedSender<Inbound>,
    sent: mpsc::UnboundedReceiver<(Bytes, ServerMsg)>,
    answers: mpsc::Receiver<Completion>,
    answer_tx: mpsc::Sender<Completion>,
    stats: Arc<Stats>,
    service: Arc<ServiceInfo>,
}

const HEARTBEAT: Duration = Duration::from_millis(100);

/// Heartbeats every 100 ms; workers are never declared dead for silence
/// (the fake workers do not heartbeat) unless a test lowers `liveness`.
fn settings() -> Settings {
    Settings {
        token: None,
        heartbeat: HEARTBEAT,
        liveness: 1000,
        stuck_timeout: Duration::from_secs(60),
        max_buffered: 128 << 20,
    }
}

impl Rig {
    /// A dispatcher with one service "Echo" (`timeout`, `queue_timeout`).
    async fn start(settings: Settings, timeout: Duration, queue_timeout: Duration) -> Rig {
        let stats = Arc::new(Stats::default());
        let mut config = ServiceConfig::new("Echo".into());
        config.timeout = timeout;
        config.queue_timeout = queue_timeout;
        let service = ServiceInfo::new(0, &config, &stats);
        let (inbound_tx, inbound) = mpsc::unbounded_channel();
        let (sent_tx, sent) = mpsc::unbounded_channel();
        let (commands, rx) = mpsc::channel(64);
        let (answer_tx, answers) = mpsc::channel(64);
        let transport = FakeTransport {
            inbound,
            sent: sent_tx,
        };
        let (changed, _) = watch::channel(0);
        let dispatcher = Dispatcher::new(
            settings,
            vec![service.clone()],
            transport,
            rx,
            stats.clone(),
            changed,
        );
        tokio::spawn(dispatcher.run());
        let rig = Rig {
            commands,
            inbound: inbound_tx,
            sent,
            answers,
            answer_tx,
            stats,
            service,
        };
        rig.settle().await;
        rig
    }

    /// Lets the dispatcher handle everything already sent to it (time does
    /// not move: only ready tasks run).
    async fn settle(&self) {
        for _ in 0..64 {
            tokio::task::yield_now().await;
        }
    }

    /// Moves the clock by `d` and lets the dispatcher react.
    async fn advance(&self, d: Duration) {
        advance(d).await;
        self.settle().await;
    }

    async fn worker_says(&self, peer: &'static [u8], msg: WorkerMsg) {
        let peer = Bytes::from_static(peer);
        let _ = self.inbound.send(Inbound::Message { peer, msg: Ok(msg) });
        self.settle().await;
    }

    /// Worker `peer` registers for Echo with `credit`; returns its READY ack.
    async fn ready(&mut self, peer: &'static [u8], credit: u32) {
        let services = vec![Bytes::from_static(b"Echo")];
        let ready = WorkerMsg::Ready {
            version: 1,
            credit,
            token: Bytes::new(),
            services,
        };
        self.worker_says(peer, ready).await;
        assert!(matches!(
            self.next_sent(),
            Some((_, ServerMsg::ReadyAck { .. }))
        ));
    }

    /// A two-way call `echo` with `seqid` (its slot), read now.
    async fn call(&self, seqid: i32) {
        let received = Instant::now();
        self.call_with_deadline(seqid, received + self.service.timeout)
            .await
    }

    async fn call_with_deadline(&self, seqid: i32, deadline: Instant) {
        let mut message = BytesMut::new();
        thrift::write_header(
            &mut message,
            Protocol::BinaryStrict,
            b"echo",
            MessageType::Call,
            seqid,
        );
        message.extend_from_slice(&[0]);
        let call = Call {
            service: 0,
            protocol: Protocol::BinaryStrict,
            seqid,
            // Strict binary: version word, name length, then the name.
            name_at: (8, 12),
            message: message.freeze(),
            headers: None,
            deadline,
            received: Instant::now(),
            reply: Some(ReplyTo {
                tx: self.answer_tx.clone(),
                slot: u32::try_from(seqid).unwrap(),
                max_reply: 1 << 20,
            }),
            method: 0,
        };
        self.commands.send(Command::Call(call)).await.unwrap();
        self.settle().await;
    }

    /// What the dispatcher sent last, heartbeats skipped.
    fn next_sent(&mut self) -> Option<(Bytes, ServerMsg)> {
        loop {
            match self.sent.try_recv() {
                Ok((_, ServerMsg::Heartbeat)) => continue,
                Ok(m) => return Some(m),
                Err(_) => return None,
            }
        }
    }

    /// The id of the REQUEST the dispatcher sent next.
    fn request_id(&mut self) -> u64 {
        match self.next_sent() {
            Some((_, ServerMsg::Request(r))) => r.id,
            other => panic!("expected a REQUEST, got {other:?}"),
        }
    }

    /// The next answer to a client: (slot, exception text if it is one).
    fn answer(&mut self) -> Option<(u32, String)> {
        let c = self.answers.try_recv().ok()?;
        let h = thrift::parse(&c.message, thrift::detect(&c.message).unwrap()).unwrap();
        let text = match h.message_type {
            MessageType::Exception => String::from_utf8_lossy(&c.message[h.len..]).into_owned(),
            _ => String::new(),
        };
        Some((c.slot, text))
    }

    fn reply_to(seqid: i32) -> Bytes {
        let mut m = BytesMut::new();
        thrift::write_header(
            &mut m,
            Protocol::BinaryStrict,
            b"echo",
            MessageType::Reply,
            seqid,
        );
        m.extend_from_slice(&[0]);
        m.freeze()
    }

    fn count(&self, o: Outcome) -> u64 {
        self.service.stats.totals().count(o)
    }
}

#[tokio::test(start_paused = true)]
async fn a_call_times_out_exactly_at_its_deadline_and_its_late_reply_is_counted() {
    let mut rig = Rig::start(
        settings(),
        Duration::from_millis(500),
        Duration::from_secs(1),
    )
    .await;
    rig.ready(b"w", 1).await;
    rig.call(7).await;
    let id = rig.request_id();
    rig.advance(Duration::from_millis(499)).await;
    assert!(rig.answer().is_none(), "answered before the deadline");
    rig.advance(Duration::from_millis(1)).await;
    let (slot, text) = rig.answer().expect("answered at the deadline");
    assert_eq!(slot, 7);
    assert!(text.contains("service 'Echo' timed out"), "{text}");
    assert_eq!(rig.count(Outcome::Timeout), 1);
    // The worker was still busy with it: its reply is dropped and counted,
    // and its credit comes back (the next call is sent at once).
    let message = Rig::reply_to(7);
    rig.worker_says(
        b"w",
        WorkerMsg::Reply {
            id,
            message,
            headers: Bytes::new(),
        },
    )
    .await;
    assert!(rig.answer().is_none(), "a late reply reaches no client");
    let late: u64 = rig
        .service
        .stats
        .methods()
        .iter()
        .map(|m| m.late_replies.get())
        .sum();
    assert_eq!(late, 1);
    rig.call(8).await;
    rig.request_id();
}

#[tokio::test(start_paused = true)]
async fn a_call_whose_deadline_passed_on_arrival_is_never_sent() {
    let mut rig = Rig::start(settings(), Duration::from_secs(5), Duration::from_secs(1)).await;
    rig.ready(b"w", 1).await;
    rig.call_with_deadline(3, Instant::now()).await;
    let (_, text) = rig.answer().expect("answered at once");
    assert!(text.contains("timed out"), "{text}");
    assert!(
        rig.next_sent().is_none(),
        "an expired call reached a worker"
    );
}

#[tokio::test(start_paused = true)]
async fn a_queued_call_is_shed_exactly_at_queue_timeout() {
    let mut rig = Rig::start(
        settings(),
        Duration::from_secs(10),
        Duration::from_millis(200),
    )
    .await;
    rig.ready(b"w", 1).await;
    rig.call(1).await;
    rig.request_id();
    rig.call(2).await;
    assert!(rig.next_sent().is_none(), "no credit: the call waits");
    assert_eq!(rig.service.stats.queue_depth.get(), 1);
    rig.advance(Duration::from_millis(199)).await;
    assert!(rig.answer().is_none());
    rig.advance(Duration::from_millis(1)).await;
    let (slot, text) = rig.answer().expect("shed at queue_timeout");
    assert_eq!(slot, 2);
    assert!(
        text.contains("overloaded: no worker free within queue_timeout 200ms"),
        "{text}"
    );
    assert_eq!(rig.count(Outcome::Overloaded), 1);
    assert_eq!(rig.service.stats.queue_depth.get(), 0);
}

#[tokio::test(start_paused = true)]
async fn without_any_worker_a_queued_call_is_answered_no_worker() {
    let mut rig = Rig::start(
        settings(),
        Duration::from_secs(10),
        Duration::from_millis(300),
    )
    .await;
    rig.call(1).await;
    rig.advance(Duration::from_millis(299)).await;
    assert!(rig.answer().is_none());
    rig.advance(Duration::from_millis(1)).await;
    let (_, text) = rig.answer().expect("answered at queue_timeout");
    assert!(text.contains("overloaded: no live worker"), "{text}");
    assert_eq!(rig.count(Outcome::NoWorker), 1);
}

#[tokio::test(start_paused = true)]
async fn once_sent_a_queued_call_keeps_only_its_own_deadline() {
    let mut rig = Rig::start(
        settings(),
        Duration::from_secs(1),
        Duration::from_millis(300),
    )
    .await;
    rig.ready(b"w", 1).await;
    rig.call(1).await;
    let first = rig.request_id();
    rig.call(2).await;
    rig.advance(Duration::from_millis(100)).await;
    let message = Rig::reply_to(1);
    rig.worker_says(
        b"w",
        WorkerMsg::Reply {
            id: first,
            message,
            headers: Bytes::new(),
        },
    )
    .await;
    assert_eq!(
        rig.answer().map(|(s, t)| (s, t.is_empty())),
        Some((1, true))
    );
    rig.request_id(); // the queued call is sent when credit frees up
                      // Past its queue_timeout: it is at a worker now, so nothing happens...
    rig.advance(Duration::from_millis(300)).await;
    assert!(rig.answer().is_none(), "a sent call was shed");
    // ...until its deadline, 1 s after it was read.
    rig.advance(Duration::from_millis(599)).await;
    assert!(rig.answer().is_none());
    rig.advance(Duration::from_millis(1)).await;
    let (slot, text) = rig.answer().expect("timed out at its deadline");
    assert_eq!(slot, 2);
    assert!(text.contains("timed out"), "{text}");
}

#[tokio::test(start_paused = true)]
async fn a_silent_worker_is_declared_dead_after_liveness_intervals() {
    let settings = Settings {
        liveness: 3,
        ..settings()
    };
    let mut rig = Rig::start(settings, Duration::from_secs(30), Duration::from_secs(1)).await;
    rig.ready(b"silent", 1).await;
    rig.call(9).await;
    rig.request_id();
    // Last heard at t=0; dead once silent for more than 3 × 100 ms, which
    // the heartbeat tick at t=400 ms notices.
    rig.advance(Duration::from_millis(300)).await;
    assert!(rig.answer().is_none(), "declared dead too early");
    assert_eq!(rig.service.stats.live_workers.get(), 1);
    rig.advance(Duration::from_millis(100)).await;
    let (slot, text) = rig.answer().expect("its call answered");
    assert_eq!(slot, 9);
    assert!(text.contains("worker died"), "{text}");
    assert_eq!(rig.count(Outcome::WorkerDied), 1);
    assert_eq!(rig.service.stats.live_workers.get(), 0);
    assert!(matches!(
        rig.next_sent(),
        Some((_, ServerMsg::Disconnect { .. }))
    ));
}

#[tokio::test(start_paused = true)]
async fn a_worker_that_heartbeats_stays_and_is_sent_heartbeats() {
    let settings = Settings {
        liveness: 3,
        ..settings()
    };
    let mut rig = Rig::start(settings, Duration::from_secs(30), Duration::from_secs(1)).await;
    rig.ready(b"alive", 1).await;
    let mut heartbeats = 0;
    for _ in 0..20 {
        rig.advance(HEARTBEAT).await;
        rig.worker_says(b"alive", WorkerMsg::Heartbeat).await;
        while let Ok((_, m)) = rig.sent.try_recv() {
            assert!(matches!(m, ServerMsg::Heartbeat), "{m:?}");
            heartbeats += 1;
        }
    }
    assert_eq!(rig.service.stats.live_workers.get(), 1);
    assert!(heartbeats >= 20, "{heartbeats} heartbeats in 2 s");
}

#[tokio::test(start_paused = true)]
async fn a_worker_holding_a_call_past_stuck_timeout_is_evicted() {
    let settings = Settings {
        stuck_timeout: Duration::from_secs(1),
        ..settings()
    };
    let mut rig = Rig::start(settings, Duration::from_millis(100), Duration::from_secs(1)).await;
    rig.ready(b"stuck", 1).await;
    rig.call(1).await;
    rig.request_id();
    rig.advance(Duration::from_millis(100)).await;
    assert!(rig.answer().is_some(), "timed out");
    // Overdue since t=100 ms: evicted by the first tick past t=1.1 s.
    rig.advance(Duration::from_millis(1000)).await;
    assert_eq!(
        rig.stats.dispatch.workers_stuck.get(),
        0,
        "evicted too early"
    );
    rig.advance(HEARTBEAT).await;
    assert_eq!(rig.stats.dispatch.workers_stuck.get(), 1);
    assert_eq!(rig.service.stats.live_workers.get(), 0);
    assert!(matches!(
        rig.next_sent(),
        Some((_, ServerMsg::Disconnect { .. }))
    ));
}

/// CREDIT (worker protocol version 3) moves a worker's credit without a new
/// READY: lowered below the calls it holds, nothing more is sent until
/// enough are answered; raised, queued calls go at once, after the answer.
#[tokio::test(start_paused = true)]
async fn a_credit_change_applies_at_once_and_is_answered_before_the_calls_it_allows() {
    let mut rig = Rig::start(settings(), Duration::from_secs(30), Duration::from_secs(30)).await;
    // From a stranger, CREDIT is answered like a HEARTBEAT would be.
    rig.worker_says(b"x", WorkerMsg::Credit { credit: 9 }).await;
    assert!(matches!(
        rig.next_sent(),
        Some((_, ServerMsg::Disconnect { .. }))
    ));
    rig.ready(b"w", 3).await;
    for seqid in 0..6 {
        rig.call(seqid).await;
    }
    let ids: Vec<u64> = (0..3).map(|_| rig.request_id()).collect();
    assert!(rig.next_sent().is_none(), "3 held, 3 queued");

    rig.worker_says(b"w", WorkerMsg::Credit { credit: 1 }).await;
    assert_eq!(
        rig.next_sent().map(|(_, m)| m),
        Some(ServerMsg::CreditAck { credit: 1 })
    );
    assert_eq!(rig.service.stats.total_credit.get(), 1);
    assert_eq!(rig.service.stats.free_credit.get(), 0);
    for (seqid, id) in ids.iter().enumerate() {
        let reply = WorkerMsg::Reply {
            id: *id,
            message: Rig::reply_to(seqid as i32),
            headers: Bytes::new(),
        };
        rig.worker_says(b"w", reply).await;
        assert_eq!(rig.answer().map(|(slot, _)| slot), Some(seqid as u32));
        if seqid < 2 {
            assert!(
                rig.next_sent().is_none(),
                "credit 1 with {} held: nothing sent",
                2 - seqid
            );
            assert_eq!(rig.service.stats.free_credit.get(), 0);
        }
    }
    let fourth = rig.request_id();
    assert!(rig.next_sent().is_none(), "credit 1: one call at a time");

    rig.worker_says(b"w", WorkerMsg::Credit { credit: 4 }).await;
    assert_eq!(
        rig.next_sent().map(|(_, m)| m),
        Some(ServerMsg::CreditAck { credit: 4 })
    );
    let rest: Vec<u64> = (0..2).map(|_| rig.request_id()).collect();
    assert!(!rest.contains(&fourth));
    assert!(rig.next_sent().is_none());
    assert_eq!(rig.service.stats.total_credit.get(), 4);
    assert_eq!(rig.service.stats.free_credit.get(), 1);
    let workers = rig.stats.workers();
    assert_eq!(workers.len(), 1);
    assert_eq!(workers[0].credit.get(), 4);
    assert_eq!(workers[0].in_flight.get(), 3);
}
