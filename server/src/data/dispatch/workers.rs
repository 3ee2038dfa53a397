//! The worker protocol as the dispatcher speaks it (docs/worker-protocol.md):
//! READY (token, services, credit), REPLY (checked against its call),
//! HEARTBEAT both ways, DISCONNECT; dead and stuck workers; peers that never
//! registered.

use std::sync::Arc;

use bytes::Bytes;
use thriftworker_wire::{ServerMsg, WireError, WorkerMsg};
use tokio::time::Instant;

use super::calls::{trace_call, Entry, Phase};
use super::pool::WorkerIdx;
use super::{Completion, Dispatcher, WorkerTransport, WorkerView};
use crate::config::shown;
use crate::telemetry::events::EventKind;
use crate::telemetry::{Gauge, Outcome, WorkerStats};
use crate::thrift::check_reply;

/// An unregistered peer's first messages are answered DISCONNECT...
const STRANGER_ANSWERS: u32 = 3;
/// ...and at this many its connection is closed.
const STRANGER_LIMIT: u32 = 64;
/// Unregistered peers tracked at once (the map is cleared beyond).
const MAX_STRANGERS: usize = 65_536;

impl<T: WorkerTransport> Dispatcher<T> {
    pub(super) fn on_worker_message(&mut self, peer: Bytes, msg: Result<WorkerMsg, WireError>) {
        let known = self.pool.lookup(&peer);
        if let Some(w) = known {
            self.seen(w, self.clock.now);
        }
        let msg = match msg {
            Ok(m) => m,
            Err(e) => return self.on_bad_message(peer, known, e),
        };
        match (msg, known) {
            (
                WorkerMsg::Ready {
                    version,
                    credit,
                    token,
                    services,
                },
                _,
            ) => self.on_ready(peer, known, version, credit, token, services),
            (
                WorkerMsg::Reply {
                    id,
                    message,
                    headers,
                },
                Some(w),
            ) => self.on_reply(w, id, message, headers),
            (WorkerMsg::Heartbeat, Some(_)) => {}
            (WorkerMsg::Credit { credit }, Some(w)) => self.on_credit(w, credit),
            (WorkerMsg::Disconnect { .. }, Some(w)) => self.on_leaving(w),
            (WorkerMsg::Reply { .. }, None) => {
                self.stats.dispatch.unknown_replies.inc();
                if self.stranger(&peer) {
                    self.disconnect(&peer, "unknown worker, send READY".into());
                }
            }
            (WorkerMsg::Heartbeat | WorkerMsg::Credit { .. }, None) => {
                if self.stranger(&peer) {
                    self.disconnect(&peer, "unknown worker, send READY".into());
                }
            }
            (WorkerMsg::Disconnect { .. }, None) => {
                self.stranger(&peer);
            }
        }
    }

    /// Worker `w` was heard from at `now`.
    fn seen(&mut self, w: WorkerIdx, now: Instant) {
        if let Some(state) = self.pool.get_mut(w) {
            state.last_seen = now;
            // From the clock read above: no second clock read per message.
            let ms = now.into_std().saturating_duration_since(self.stats.started);
            let ms = u64::try_from(ms.as_millis()).unwrap_or(u64::MAX);
            state
                .stats
                .last_seen_ms
                .store(ms, std::sync::atomic::Ordering::Relaxed);
        }
    }

    fn on_bad_message(&mut self, peer: Bytes, known: Option<WorkerIdx>, e: WireError) {
        self.stats.dispatch.bad_worker_messages.inc();
        if let Some(suppressed) = self.warn_limit.allow() {
            let worker = known.and_then(|w| self.pool.get(w)).map(|s| s.id.as_str());
            tracing::warn!(
                worker,
                error = %e,
                suppressed,
                "malformed message from a worker dropped",
            );
        }
        let refuse = match e {
            WireError::Version(_) | WireError::Credit(_) | WireError::NoServices => true,
            WireError::MissingFrame { command, .. } | WireError::FrameSize { command, .. } => {
                command == "READY"
            }
            _ => false,
        };
        if known.is_none() && !self.stranger(&peer) {
            return;
        }
        if refuse {
            self.disconnect(&peer, format!("refused: {e}"));
        }
    }

    /// An operator's graceful cordon (`thriftctl workers drain`): the same as
    /// the worker's own DISCONNECT. Returns its calls in flight.
    pub(super) fn drain_worker(&mut self, id: &str, peer: Option<String>) -> Option<usize> {
        let (w, state) = self.pool.by_id(id)?;
        let in_flight = state.in_flight.len();
        tracing::info!(worker = %id, in_flight, peer = peer.as_deref().map(tracing::field::display), "worker drain requested by an operator");
        // Recorded here, before it may leave at once (`worker_left` follows).
        self.stats.events.record(
            EventKind::WorkerDraining,
            id,
            format!("drain requested through the admin API: no new calls; {in_flight} in flight finish first"),
            peer,
        );
        self.on_leaving(w);
        Some(in_flight)
    }

    /// CREDIT (version 3): the worker's credit here is now `credit`. It
    /// applies at once: above the calls the worker holds, more go to it;
    /// at or below, none until enough are answered. The answer is sent
    /// before any call the new credit allows, so the worker knows that
    /// every REQUEST after it respects the new credit.
    fn on_credit(&mut self, w: WorkerIdx, credit: u32) {
        let Some(state) = self.pool.get_mut(w) else {
            return;
        };
        let before = std::mem::replace(&mut state.credit, credit);
        state.stats.credit.set(credit.into());
        tracing::debug!(worker = %state.id, before, credit, in_flight = state.in_flight.len(), "worker credit changed");
        let peer = state.peer.clone();
        if let Err(e) = self
            .transport
            .send(&peer, ServerMsg::CreditAck { credit }.encode())
        {
            self.worker_dead(w, &format!("send failed: {e}"));
            return;
        }
        self.update_worker_gauges();
        self.pump_worker(w);
    }

    fn on_leaving(&mut self, w: WorkerIdx) {
        let Some(state) = self.pool.get_mut(w) else {
            return;
        };
        state.leaving = true;
        tracing::info!(worker = %state.id, in_flight = state.in_flight.len(), "worker leaving");
        // It takes no more calls: its free credit is gone.
        self.update_worker_gauges();
        self.forget_if_done(w);
    }

    fn on_ready(
        &mut self,
        peer: Bytes,
        known: Option<WorkerIdx>,
        version: u8,
        credit: u32,
        token: Bytes,
        names: Vec<Bytes>,
    ) {
        let services = match self.check_ready(&token, &names) {
            Ok(services) => services,
            Err(reason) => {
                self.stats.dispatch.workers_refused.inc();
                if known.is_none() && !self.stranger(&peer) {
                    return;
                }
                if let Some(suppressed) = self.warn_limit.allow() {
                    tracing::warn!(reason = %reason, suppressed, "worker refused");
                }
                self.disconnect(&peer, reason);
                return;
            }
        };
        if let Some(old) = known {
            // Same identity announcing itself again: the new registration
            // replaces the old one, whose calls are lost.
            self.forget(old, "re-registered");
        }
        let w = self.register(peer.clone(), services, credit);
        let Some(state) = self.pool.get_mut(w) else {
            return;
        };
        // Both sides speak the older of their versions.
        state.version = version.min(thriftworker_wire::VERSION);
        let state = &*state;
        let names: Vec<&str> = state
            .services
            .iter()
            .map(|&s| self.services[s].info.name.as_str())
            .collect();
        tracing::info!(worker = %state.id, services = ?names, credit, version = state.version, "worker registered");
        self.stats.events.record(
            EventKind::WorkerJoined,
            state.id.as_str(),
            format!(
                "services {}, credit {credit}, protocol version {}",
                names.join(","),
                state.version
            ),
            None,
        );
        let ack = ServerMsg::ReadyAck {
            version: state.version,
            heartbeat_interval_ms: u32::try_from(self.settings.heartbeat.as_millis())
                .unwrap_or(u32::MAX),
            worker_id: Bytes::from(state.id.clone()),
        };
        if let Err(e) = self.transport.send(&peer, ack.encode()) {
            self.worker_dead(w, &format!("send failed: {e}"));
            return;
        }
        self.pump_worker(w);
    }

    /// The service indexes a READY asks for, or why it is refused (the
    /// DISCONNECT reason).
    fn check_ready(&self, token: &[u8], names: &[Bytes]) -> Result<Vec<usize>, String> {
        if let Some(expected) = &self.settings.token {
            if !constant_time_eq(expected, token) {
                return Err("refused: wrong or missing worker token".into());
            }
        }
        let mut services = Vec::with_capacity(names.len());
        for n in names {
            let found = self
                .services
                .iter()
                .position(|s| s.info.name_bytes == n && !s.removed);
            match found {
                Some(i) if !services.contains(&i) => services.push(i),
                Some(_) => {}
                None => {
                    return Err(format!(
                        "refused: unknown service {}",
                        shown(&String::from_utf8_lossy(n))
                    ))
                }
            }
        }
        Ok(services)
    }

    /// Adds a worker to the pool and the stats registry.
    fn register(&mut self, peer: Bytes, services: Vec<usize>, credit: u32) -> WorkerIdx {
        let names: Vec<String> = services
            .iter()
            .map(|&s| self.services[s].info.name.clone())
            .collect();
        let registry = &self.stats;
        let w = self
            .pool
            .add(peer.clone(), services, credit, Instant::now(), |id| {
                let ws = Arc::new(WorkerStats {
                    id: id.to_string(),
                    services: names,
                    credit: Gauge::default(),
                    in_flight: Default::default(),
                    served: Default::default(),
                    last_seen_ms: registry.now_ms().into(),
                });
                ws.credit.set(credit.into());
                registry.add_worker(ws.clone());
                ws
            });
        self.stats.dispatch.workers_registered.inc();
        self.strangers.remove(&peer);
        self.update_worker_gauges();
        w
    }

    fn on_reply(&mut self, w: WorkerIdx, id: u64, message: Bytes, headers: Bytes) {
        let Some(state) = self.pool.get_mut(w) else {
            return;
        };
        let Some((late_svc, late_method)) = state.in_flight.remove(&id) else {
            self.stats.dispatch.unknown_replies.inc();
            tracing::debug!(
                worker = %state.id,
                request = id,
                "reply for a call this worker does not hold",
            );
            return;
        };
        state.overdue.remove(&id);
        state.stats.served.inc();
        state.stats.in_flight.set(state.in_flight.len() as u64);
        // A slot freed above a lowered credit (CREDIT) is not free credit.
        if !state.leaving && state.in_flight.len() < state.credit as usize {
            for &s in &state.services {
                self.services[s].info.stats.free_credit.inc();
            }
        }
        match self.take(id) {
            Some(entry) => self.deliver(w, entry, message, headers),
            // Already answered (timed out): the worker was still busy.
            None => {
                let slot = usize::try_from(late_svc).ok();
                if let Some(m) = slot
                    .and_then(|s| self.services.get(s))
                    .and_then(|s| s.method_at(late_method))
                {
                    m.late_replies.inc();
                }
            }
        }
        if self.forget_if_done(w) {
            return;
        }
        self.pump_worker(w);
    }

    /// Hands worker `w`'s reply to the call's client, if it answers the call.
    fn deliver(&mut self, w: WorkerIdx, mut entry: Entry, message: Bytes, headers: Bytes) {
        let now = self.clock.now;
        let worker_id = self.pool.get(w).map_or("", |s| s.id.as_str());
        let svc = &self.services[entry.call.service].info;
        svc.stats.in_flight.dec();
        let m = self.method_stats(&entry.call);
        if let Phase::Sent(at, _) = entry.phase {
            m.worker.observe(now.saturating_duration_since(at));
        }
        let Some(reply) = entry.call.reply.take() else {
            // oneway: the reply only returns credit.
            m.outcome(Outcome::Success);
            trace_call(&svc.name, m, &entry.call, worker_id, Outcome::Success);
            return;
        };
        let call = &entry.call;
        let checked = match message.is_empty() {
            true => Err(Outcome::EmptyReply),
            false => check_reply(
                &message,
                call.protocol,
                call.name(),
                call.seqid,
                reply.max_reply as usize,
            )
            .map_err(|e| {
                self.stats.dispatch.bad_replies.inc();
                if let Some(suppressed) = self.warn_limit.allow() {
                    tracing::warn!(
                        worker = %worker_id,
                        service = %svc.name,
                        error = %e,
                        suppressed,
                        "reply does not match its call: answering the client with an exception",
                    );
                }
                Outcome::BadReply
            }),
        };
        match checked {
            Ok(kind) => {
                let outcome = Outcome::of_reply(kind);
                m.outcome(outcome);
                m.total
                    .observe(now.saturating_duration_since(entry.call.received));
                trace_call(&svc.name, m, &entry.call, worker_id, outcome);
                let _ = reply.tx.try_send(Completion {
                    slot: reply.slot,
                    message,
                    headers: (!headers.is_empty()).then(|| Box::new(headers)),
                });
            }
            Err(outcome) => {
                entry.call.reply = Some(reply);
                self.answer(entry.call, outcome);
            }
        }
    }

    /// Forgets a leaving worker once it holds no call. Returns whether it did.
    pub(super) fn forget_if_done(&mut self, w: WorkerIdx) -> bool {
        let done = self
            .pool
            .get(w)
            .is_some_and(|s| s.leaving && s.in_flight.is_empty());
        if done {
            if let Some(state) = self.pool.remove(w) {
                self.stats.remove_worker(&state.id);
                self.update_worker_gauges();
                tracing::info!(worker = %state.id, "worker left");
                self.stats.events.record(
                    EventKind::WorkerLeft,
                    state.id.as_str(),
                    "left gracefully: every call it held was answered",
                    None,
                );
                self.disconnect(&state.peer, "bye".into());
            }
        }
        done
    }

    pub(super) fn worker_dead(&mut self, w: WorkerIdx, why: &str) {
        if let Some(peer) = self.forget(w, why) {
            // Tell it, in case it is alive but was judged dead (e.g. it
            // stalled): it will reconnect and READY again.
            self.disconnect(&peer, format!("declared dead: {why}"));
        }
    }

    /// Removes a worker and answers the calls it held ("worker died").
    /// Returns its peer identity.
    fn forget(&mut self, w: WorkerIdx, why: &str) -> Option<Bytes> {
        let state = self.pool.remove(w)?;
        self.stats.remove_worker(&state.id);
        self.update_worker_gauges();
        self.stats.dispatch.workers_dead.inc();
        self.stats.events.record(
            EventKind::WorkerDead,
            state.id.as_str(),
            format!(
                "{why}; {} call(s) in flight answered \"worker died\"",
                state.in_flight.len()
            ),
            None,
        );
        if let Some(suppressed) = self.dead_limit.allow() {
            tracing::warn!(
                worker = %state.id,
                reason = why,
                in_flight = state.in_flight.len(),
                suppressed,
                "worker dead",
            );
        }
        for id in state.in_flight.into_keys() {
            if let Some(entry) = self.take(id) {
                self.services[entry.call.service].info.stats.in_flight.dec();
                self.answer(entry.call, Outcome::WorkerDied);
            }
        }
        Some(state.peer)
    }

    /// Publishes live workers and credit per service, and wakes health.
    pub(super) fn update_worker_gauges(&self) {
        for slot in &self.services {
            let svc = &slot.info;
            let (mut live, mut credit, mut free) = (0u64, 0u64, 0u64);
            for w in self.pool.workers_of(svc.index) {
                live += 1;
                credit += u64::from(w.credit);
                free += u64::from(w.free());
            }
            svc.stats.live_workers.set(live);
            svc.stats.total_credit.set(credit);
            svc.stats.free_credit.set(free);
        }
        self.stats.dispatch.live_workers.set(self.pool.len() as u64);
        self.workers_changed.send_modify(|v| *v += 1);
    }

    pub(super) fn worker_views(&self) -> Vec<WorkerView> {
        let now = Instant::now();
        self.pool
            .iter()
            .map(|(_, s)| WorkerView {
                id: s.id.clone(),
                services: s
                    .services
                    .iter()
                    .map(|&i| self.services[i].info.name.clone())
                    .collect(),
                credit: s.credit,
                in_flight: u32::try_from(s.in_flight.len()).unwrap_or(u32::MAX),
                last_heartbeat: now.duration_since(s.last_seen),
                identity: s.peer.clone(),
                leaving: s.leaving,
            })
            .collect()
    }

    /// Once per heartbeat interval: the beat the probes read, dead and stuck
    /// workers out, a HEARTBEAT to every live one.
    pub(super) fn on_heartbeat_tick(&mut self) {
        let now = Instant::now();
        self.stats.core.beat(self.stats.now_ms());
        let limit = self.settings.heartbeat * self.settings.liveness;
        let stale: Vec<WorkerIdx> = self
            .pool
            .iter()
            .filter(|(_, s)| now.duration_since(s.last_seen) > limit)
            .map(|(i, _)| i)
            .collect();
        for w in stale {
            self.worker_dead(w, "missed heartbeats");
        }
        self.evict_stuck(now);
        let peers: Vec<(WorkerIdx, Bytes)> =
            self.pool.iter().map(|(i, s)| (i, s.peer.clone())).collect();
        for (w, peer) in peers {
            if let Err(e) = self.transport.send(&peer, ServerMsg::Heartbeat.encode()) {
                self.worker_dead(w, &format!("send failed: {e}"));
            }
        }
    }

    /// Evicts every worker that still holds a call `stuck_timeout` after the
    /// call's deadline: a handler that hangs or a thread that died would
    /// otherwise keep that credit for good, and with all credit gone the
    /// service answers only "overloaded". A live worker reconnects and sends
    /// READY with its full credit.
    fn evict_stuck(&mut self, now: Instant) {
        let limit = self.settings.stuck_timeout;
        let stuck: Vec<WorkerIdx> = self
            .pool
            .iter()
            .filter(|(_, s)| s.overdue.values().any(|&t| now.duration_since(t) > limit))
            .map(|(w, _)| w)
            .collect();
        for w in stuck {
            self.stats.dispatch.workers_stuck.inc();
            let why = format!(
                "a call is still unanswered {} after its deadline (stuck_timeout)",
                humantime::format_duration(limit)
            );
            self.worker_dead(w, &why);
        }
    }

    pub(super) fn disconnect(&mut self, peer: &Bytes, reason: String) {
        let bye = ServerMsg::Disconnect {
            reason: Bytes::from(reason),
        };
        if let Err(super::super::transport::SendError::Full) =
            self.transport.send(peer, bye.encode())
        {
            self.drop_peer(peer, "it does not read what it is sent");
        }
    }

    /// Closes a misbehaving peer's connection (counted, and logged at most
    /// ten times a second).
    fn drop_peer(&mut self, peer: &Bytes, why: &str) {
        self.strangers.remove(peer);
        if self.transport.kick(peer) {
            self.stats.dispatch.peers_dropped.inc();
            if let Some(suppressed) = self.warn_limit.allow() {
                tracing::warn!(reason = why, suppressed, "worker-port connection closed");
            }
        }
    }

    /// Counts a message from a peer that has not registered (nothing but a
    /// valid READY is expected from it). Returns whether to answer it with
    /// DISCONNECT: only its first few messages are (a libzmq worker that
    /// reconnected after a data-plane restart learns to send READY); one
    /// that keeps talking without registering is disconnected, so a flood
    /// from an unregistered peer costs a bounded amount of work.
    fn stranger(&mut self, peer: &Bytes) -> bool {
        if self.strangers.len() >= MAX_STRANGERS {
            self.strangers.clear();
        }
        let n = self.strangers.entry(peer.clone()).or_insert(0);
        *n += 1;
        match *n {
            n if n <= STRANGER_ANSWERS => true,
            n if n >= STRANGER_LIMIT => {
                self.drop_peer(peer, "too many messages without a valid READY");
                false
            }
            _ => false,
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
