//! The dispatcher's calls: the call table, the per-service queues, every
//! call's timer, the memory budget, and the answers the data plane gives
//! itself (timeouts, load shedding, dead workers, shutdown).

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use thriftworker_wire::Request;
use tokio::time::Instant;

use super::fast_hash::{BytesMap, IdMap};
use super::pool::WorkerIdx;
use super::timers::Timers;
use super::{Call, Completion, Dispatcher, ServiceInfo, WorkerTransport};
use crate::telemetry::{MethodStats, Outcome};
use crate::thrift::{application_exception, AppErrorKind};

pub(super) enum Phase {
    Queued,
    /// Sent to this worker at this time.
    Sent(Instant, WorkerIdx),
}

pub(super) struct Entry {
    pub call: Call,
    pub phase: Phase,
    /// When its timer fires (its entry in `Timers` with this time is live).
    pub timer: Instant,
    /// When queued: the timer fires at `queue_timeout` before the deadline.
    pub queue_expiry: bool,
}

/// Every call the dispatcher holds (queued or at a worker), with its timer.
/// Whether a timer entry `(at, id)` is still call `id`'s timer (its call is
/// in the table and has not moved its timer since).
fn is_live(calls: &IdMap<Entry>, id: u64, at: Instant) -> bool {
    calls.get(&id).is_some_and(|e| e.timer == at)
}

#[derive(Default)]
pub(super) struct CallTable {
    calls: IdMap<Entry>,
    timers: Timers,
    next_id: u64,
    /// Bytes of requests queued or at workers, all services.
    buffered: usize,
}

impl CallTable {
    pub fn len(&self) -> usize {
        self.calls.len()
    }

    /// Waits for the next call whose timer fires. Cancel-safe.
    pub async fn next_expired(&mut self) -> u64 {
        std::future::poll_fn(|cx| {
            let calls = &self.calls;
            self.timers
                .poll_expired(cx, |id, at| is_live(calls, id, at))
        })
        .await
    }

    fn insert(&mut self, call: Call, at: Instant, queue_expiry: bool) -> u64 {
        self.next_id += 1;
        let id = self.next_id;
        let calls = &self.calls;
        self.timers
            .compact(calls.len(), |id, at| is_live(calls, id, at));
        self.timers.insert(id, at);
        let entry = Entry {
            call,
            phase: Phase::Queued,
            timer: at,
            queue_expiry,
        };
        self.calls.insert(id, entry);
        id
    }

    fn is_queued(&self, id: u64) -> bool {
        matches!(
            self.calls.get(&id),
            Some(Entry {
                phase: Phase::Queued,
                ..
            })
        )
    }
}

/// The dispatcher's handles on one service's per-method stats: the cache
/// that keeps the registry's lock off the hot path. Bounded by the method cap
/// (names folded into `other` are not cached).
#[derive(Default)]
struct MethodCache {
    /// FNV-1a: names are a few bytes and the map is bounded by the cap.
    by_name: BytesMap<Bytes, u16>,
    list: Vec<Arc<MethodStats>>,
}

/// Everything the dispatcher keeps per service.
pub(super) struct ServiceSlot {
    pub info: Arc<ServiceInfo>,
    /// Unregistered: no new workers for it; its calls finish.
    pub removed: bool,
    /// Request ids in arrival order; ids no longer queued are skipped.
    queue: VecDeque<u64>,
    /// How many of `queue` are still queued.
    live: usize,
    /// Bytes of the service's requests queued or at workers.
    bytes: usize,
    methods: MethodCache,
}

impl ServiceSlot {
    pub fn new(info: Arc<ServiceInfo>) -> ServiceSlot {
        ServiceSlot {
            info,
            removed: false,
            queue: VecDeque::new(),
            live: 0,
            bytes: 0,
            methods: MethodCache::default(),
        }
    }

    fn method(&self, call: &Call) -> &MethodStats {
        &self.methods.list[usize::from(call.method)]
    }

    pub(super) fn method_at(&self, method: u16) -> Option<&MethodStats> {
        self.methods.list.get(usize::from(method)).map(|m| &**m)
    }

    fn set_live(&mut self, live: usize) {
        self.live = live;
        self.info.stats.queue_depth.set(live as u64);
    }
}

/// A service index as the pool stores it (with a call's method, to count
/// a late reply). Indexes are bounded by MAX_SERVICES (1,000) per process
/// start plus registrations, far below u32::MAX.
fn service_key(service: usize) -> u32 {
    u32::try_from(service).unwrap_or(u32::MAX)
}

/// Why the data plane sheds a call (answered `overloaded`, or `no_worker`
/// when the service has no live worker at all).
#[derive(Debug, Clone, Copy)]
enum Shed {
    /// The request memory budget (the service's or the process's) is used up.
    MemoryFull,
    QueueFull,
    QueueTimeout,
}

impl<T: WorkerTransport> Dispatcher<T> {
    pub(super) fn on_call(&mut self, mut call: Call) {
        let svc = call.service;
        call.method = self.method_index(svc, call.name());
        let m = self.services[svc].method(&call);
        if call.reply.is_some() {
            m.calls.inc();
        } else {
            m.oneway.inc();
        }
        let now = self.clock.now;
        if call.deadline <= now {
            self.answer(call, Outcome::Timeout);
            return;
        }
        // The memory budget: bytes held for calls queued or at workers.
        let size = call.message.len();
        let slot = &self.services[svc];
        if self.calls.buffered + size > self.settings.max_buffered
            || slot.bytes + size > slot.info.max_buffered_bytes
        {
            self.shed(call, Shed::MemoryFull);
            return;
        }
        // Fast path: nothing queued ahead of it and a worker has credit.
        if slot.live == 0 {
            if let Some(w) = self.pool.pick(svc) {
                self.hold(svc, size, true);
                let deadline = call.deadline;
                let id = self.calls.insert(call, deadline, false);
                self.send_to(id, w);
                return;
            }
        }
        if slot.live >= slot.info.max_queue {
            self.shed(call, Shed::QueueFull);
            return;
        }
        let queue_deadline = now + slot.info.queue_timeout;
        let (at, queue_expiry) = if queue_deadline < call.deadline {
            (queue_deadline, true)
        } else {
            (call.deadline, false)
        };
        self.hold(svc, size, true);
        let id = self.calls.insert(call, at, queue_expiry);
        let slot = &mut self.services[svc];
        slot.queue.push_back(id);
        slot.set_live(slot.live + 1);
    }

    /// Holds (or releases) `size` bytes for service `svc` in the budget.
    fn hold(&mut self, svc: usize, size: usize, add: bool) {
        let slot = &mut self.services[svc];
        let total = &mut self.calls.buffered;
        if add {
            slot.bytes += size;
            *total += size;
        } else {
            slot.bytes = slot.bytes.saturating_sub(size);
            *total = total.saturating_sub(size);
        }
        slot.info.stats.buffered_bytes.set(slot.bytes as u64);
        self.stats.dispatch.buffered_bytes.set(*total as u64);
    }

    /// Removes call `id` from the table (whoever does answers it), which
    /// stops its timer, and releases its bytes from the memory budget.
    pub(super) fn take(&mut self, id: u64) -> Option<Entry> {
        // Its timer entry is left behind, stale (see `timers`).
        let entry = self.calls.calls.remove(&id)?;
        self.hold(entry.call.service, entry.call.message.len(), false);
        Some(entry)
    }

    /// The stats of method `name` of service `svc`, as an index into the
    /// cache: a hash lookup per call; the registry is asked only for a name
    /// not seen before (or one beyond the cap, counted under `other`).
    fn method_index(&mut self, svc: usize, name: &[u8]) -> u16 {
        let slot = &mut self.services[svc];
        let cache = &mut slot.methods;
        if let Some(&i) = cache.by_name.get(name) {
            return i;
        }
        let (m, own) = slot.info.stats.method(name);
        let i = match cache.list.iter().position(|x| Arc::ptr_eq(x, &m)) {
            Some(i) => i,
            None => {
                cache.list.push(m);
                cache.list.len() - 1
            }
        };
        // The cache is bounded by the method cap (at most 10,000) plus `other`.
        let i = u16::try_from(i).unwrap_or(u16::MAX);
        if own {
            cache.by_name.insert(Bytes::copy_from_slice(name), i);
        }
        i
    }

    pub(super) fn method_stats(&self, call: &Call) -> &MethodStats {
        self.services[call.service].method(call)
    }

    /// Sends call `id` (known, not yet sent) to worker `w`, which has credit.
    pub(super) fn send_to(&mut self, id: u64, w: WorkerIdx) {
        let Some(entry) = self.calls.calls.get_mut(&id) else {
            return;
        };
        let Some(worker) = self.pool.get_mut(w) else {
            return;
        };
        let now = self.clock.now;
        entry.phase = Phase::Sent(now, w);
        let slot = &self.services[entry.call.service];
        slot.method(&entry.call)
            .queue_wait
            .observe(now.saturating_duration_since(entry.call.received));
        if entry.queue_expiry {
            // Queued: from now on only the call's own deadline matters.
            entry.timer = entry.call.deadline;
            self.calls.timers.insert(id, entry.timer);
            entry.queue_expiry = false;
        }
        worker
            .in_flight
            .insert(id, (service_key(entry.call.service), entry.call.method));
        worker.stats.in_flight.set(worker.in_flight.len() as u64);
        for &s in &worker.services {
            self.services[s].info.stats.free_credit.dec();
        }
        let peer = worker.peer.clone();
        let call = &entry.call;
        let info = &slot.info;
        info.stats.in_flight.inc();
        let timeout = call.deadline.saturating_duration_since(now).as_millis();
        let request = Request {
            id,
            timeout_ms: u32::try_from(timeout).unwrap_or(u32::MAX),
            protocol: call.protocol,
            service: info.name_bytes.clone(),
            message: call.message.clone(),
            // Only a version-2 worker is sent headers.
            headers: match (&call.headers, worker.version) {
                (Some(h), v) if v >= 2 => (**h).clone(),
                _ => Bytes::new(),
            },
        };
        let sent = if request.headers.is_empty() {
            self.transport.send(&peer, request.encode_v1())
        } else {
            self.transport.send(&peer, request.encode())
        };
        if let Err(e) = sent {
            // A send to a peer that just died may also succeed and be lost;
            // either way the call is tracked in `in_flight` and answered when
            // the worker is declared dead.
            self.worker_dead(w, &format!("send failed: {e}"));
        }
    }

    /// Sends queued calls of the services `w` serves while it has credit.
    pub(super) fn pump_worker(&mut self, w: WorkerIdx) {
        let Some(services) = self.pool.get(w).map(|s| s.services.clone()) else {
            return;
        };
        for svc in services {
            self.pump(svc);
        }
    }

    /// Sends queued calls of `svc` while some worker of it has credit.
    fn pump(&mut self, svc: usize) {
        while self.services[svc].live > 0 {
            let Some(w) = self.pool.pick(svc) else { break };
            let Some(id) = self.pop_queued(svc) else {
                break;
            };
            // The client hung up while its call waited: don't spend a worker on it.
            let gone = self
                .calls
                .calls
                .get(&id)
                .is_some_and(|e| e.call.reply.as_ref().is_some_and(|r| r.tx.is_closed()));
            if gone {
                if let Some(entry) = self.take(id) {
                    self.method_stats(&entry.call).outcome(Outcome::Abandoned);
                }
                continue;
            }
            self.send_to(id, w);
        }
    }

    fn pop_queued(&mut self, svc: usize) -> Option<u64> {
        let slot = &mut self.services[svc];
        while let Some(id) = slot.queue.pop_front() {
            if self.calls.is_queued(id) {
                slot.set_live(slot.live - 1);
                return Some(id);
            }
        }
        None
    }

    /// A call's timer fired: its queue timeout or its deadline.
    pub(super) fn on_timer(&mut self, id: u64) {
        let Some(entry) = self.take(id) else {
            return;
        };
        let svc = entry.call.service;
        match entry.phase {
            Phase::Queued => {
                let calls = &self.calls.calls;
                let slot = &mut self.services[svc];
                slot.set_live(slot.live - 1);
                // Drop tombstones at the front, and compact if they pile up.
                while slot.queue.front().is_some_and(|i| !calls.contains_key(i)) {
                    slot.queue.pop_front();
                }
                if slot.queue.len() > 2 * slot.live + 64 {
                    slot.queue.retain(|i| calls.contains_key(i));
                }
                match entry.queue_expiry {
                    true => self.shed(entry.call, Shed::QueueTimeout),
                    false => self.answer(entry.call, Outcome::Timeout),
                }
            }
            Phase::Sent(_, w) => {
                // The worker keeps the credit until it replies (it is still
                // busy); its late reply will be dropped and counted. If it
                // never replies, the heartbeat tick evicts it after
                // `stuck_timeout` (see `evict_stuck`).
                if let Some(state) = self.pool.get_mut(w) {
                    if state.in_flight.contains_key(&id) {
                        state.overdue.insert(id, Instant::now());
                    }
                }
                self.services[svc].info.stats.in_flight.dec();
                self.answer(entry.call, Outcome::Timeout);
            }
        }
    }

    /// Answers every call still held with "shutting down".
    pub(super) fn fail_all(&mut self) {
        let ids: Vec<u64> = self.calls.calls.keys().copied().collect();
        for id in ids {
            if let Some(entry) = self.take(id) {
                self.answer(entry.call, Outcome::Shutdown);
            }
        }
        self.calls.timers.clear();
        for slot in &mut self.services {
            slot.queue.clear();
            slot.set_live(0);
        }
    }

    /// Answers a call the data plane sheds.
    fn shed(&self, call: Call, why: Shed) {
        let info = &self.services[call.service].info;
        if info.stats.live_workers.get() == 0 && !matches!(why, Shed::MemoryFull) {
            self.answer(call, Outcome::NoWorker);
            return;
        }
        let detail = match why {
            Shed::MemoryFull => "request memory budget full (max_buffered_bytes)".to_string(),
            Shed::QueueFull => {
                format!("queue full ({} calls waiting for a worker)", info.max_queue)
            }
            Shed::QueueTimeout => format!(
                "no worker free within queue_timeout {:?}",
                info.queue_timeout
            ),
        };
        self.finish(call, Outcome::Overloaded, &detail);
    }

    /// Answers a call with an exception produced here (nothing for oneway).
    pub(super) fn answer(&self, call: Call, outcome: Outcome) {
        self.finish(call, outcome, "");
    }

    fn finish(&self, mut call: Call, outcome: Outcome, detail: &str) {
        let info = &self.services[call.service].info;
        let m = self.method_stats(&call);
        m.outcome(outcome);
        trace_call(&info.name, m, &call, "", outcome);
        let Some(reply) = call.reply.take() else {
            return;
        };
        m.total
            .observe(self.clock.now.saturating_duration_since(call.received));
        let text = outcome.exception_text().unwrap_or("failed");
        let sep = if detail.is_empty() { "" } else { ": " };
        let text = format!("thriftworker: service '{}' {text}{sep}{detail}", info.name);
        let message = application_exception(
            call.protocol,
            call.name(),
            call.seqid,
            AppErrorKind::InternalError,
            &text,
        );
        // Fails only if the client is gone (or, impossibly, its pipeline
        // is over-full); there is no one left to answer.
        let _ = reply.tx.try_send(Completion {
            slot: reply.slot,
            message,
            headers: None,
        });
    }
}

/// One debug span per call, entered when its fate is known (so it carries
/// the worker that served it); free when debug logging is off.
#[inline]
pub(super) fn trace_call(
    service: &str,
    m: &MethodStats,
    call: &Call,
    worker: &str,
    outcome: Outcome,
) {
    if tracing::enabled!(tracing::Level::DEBUG) {
        let seqid = call.seqid;
        // The client's trace context, if it sent one (W3C, or B3).
        let headers = call
            .headers
            .as_deref()
            .and_then(|h| thriftworker_wire::decode_headers(h).ok())
            .unwrap_or_default();
        let find = |key: &str| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(key.as_bytes()))
                .map(|(_, v)| String::from_utf8_lossy(&v[..v.len().min(256)]).into_owned())
        };
        let traceparent = find("traceparent");
        let b3_trace_id = find("x-b3-traceid");
        let span = tracing::debug_span!(
            "call",
            service,
            method = &*m.name,
            seqid,
            worker,
            traceparent,
            b3_trace_id
        );
        let _e = span.enter();
        tracing::debug!(?outcome, "call finished");
    }
}
