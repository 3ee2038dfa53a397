//! The set of live workers: who serves what, how much credit each has free,
//! which calls each holds, when each was last heard from.
//!
//! Pure bookkeeping, no I/O: the dispatcher owns one `WorkerPool` and does the
//! sending. Keeping credit here is what makes the data plane's queue the only
//! queue: a worker is never picked when it has no free credit, so the
//! per-peer send queue of the transport (`PEER_SEND_QUEUE`: at most 65,536
//! calls of credit plus room for heartbeats and DISCONNECT) never fills for
//! a worker that reads; one that does not is dropped.

use std::sync::Arc;

use bytes::Bytes;
use tokio::time::Instant;

use super::fast_hash::{BytesMap, IdMap};
use crate::telemetry::WorkerStats;

/// Index of a worker slot; stable while the worker lives.
pub type WorkerIdx = usize;

#[derive(Debug)]
pub struct WorkerState {
    /// ZeroMQ identity (routing address).
    pub peer: Bytes,
    /// Short id for logs and stats, e.g. "w12".
    pub id: String,
    pub services: Vec<usize>,
    pub credit: u32,
    /// Request ids sent and not yet replied to, including calls whose client
    /// was already answered (timed out): the worker is still busy with them.
    /// Each with its (service index, method index), to count a late reply.
    pub in_flight: IdMap<(u32, u16)>,
    /// Of those, the calls already answered "timed out", with when: one
    /// still here `stuck_timeout` later gets the worker evicted.
    pub overdue: IdMap<Instant>,
    pub last_seen: Instant,
    /// Sent DISCONNECT: no new calls; forgotten when `in_flight` empties.
    pub leaving: bool,
    /// The worker protocol version spoken with it (2: it is sent headers).
    pub version: u8,
    /// Its series in the stats registry (dropped when it leaves).
    pub stats: Arc<WorkerStats>,
}

impl WorkerState {
    pub fn free(&self) -> u32 {
        if self.leaving {
            return 0;
        }
        let busy = u32::try_from(self.in_flight.len()).unwrap_or(u32::MAX);
        self.credit.saturating_sub(busy)
    }
}

#[derive(Debug, Default)]
pub struct WorkerPool {
    slots: Vec<Option<WorkerState>>,
    free_slots: Vec<WorkerIdx>,
    by_peer: BytesMap<Bytes, WorkerIdx>,
    /// Per service index: the workers serving it.
    by_service: Vec<Vec<WorkerIdx>>,
    /// Per service: where the next search starts, so ties rotate.
    cursor: Vec<usize>,
    next_id: u64,
}

impl WorkerPool {
    pub fn new(services: usize) -> WorkerPool {
        WorkerPool {
            by_service: vec![Vec::new(); services],
            cursor: vec![0; services],
            ..Default::default()
        }
    }

    pub fn lookup(&self, peer: &Bytes) -> Option<WorkerIdx> {
        self.by_peer.get(peer).copied()
    }

    /// The worker with this id (as the admin API names it).
    pub fn by_id(&self, id: &str) -> Option<(WorkerIdx, &WorkerState)> {
        self.iter().find(|(_, s)| s.id == id)
    }

    pub fn get(&self, idx: WorkerIdx) -> Option<&WorkerState> {
        self.slots.get(idx).and_then(Option::as_ref)
    }

    pub fn get_mut(&mut self, idx: WorkerIdx) -> Option<&mut WorkerState> {
        self.slots.get_mut(idx).and_then(Option::as_mut)
    }

    /// Registers a worker; the caller has removed any previous one with this peer.
    pub fn add(
        &mut self,
        peer: Bytes,
        services: Vec<usize>,
        credit: u32,
        now: Instant,
        stats: impl FnOnce(&str) -> Arc<WorkerStats>,
    ) -> WorkerIdx {
        self.next_id += 1;
        let id = format!("w{}", self.next_id);
        let state = WorkerState {
            peer: peer.clone(),
            stats: stats(&id),
            id,
            services: services.clone(),
            credit,
            in_flight: IdMap::default(),
            overdue: IdMap::default(),
            last_seen: now,
            leaving: false,
            version: thriftworker_wire::VERSION_1,
        };
        let idx = match self.free_slots.pop() {
            Some(i) => {
                self.slots[i] = Some(state);
                i
            }
            None => {
                self.slots.push(Some(state));
                self.slots.len() - 1
            }
        };
        self.by_peer.insert(peer, idx);
        for s in services {
            self.by_service[s].push(idx);
        }
        idx
    }

    /// Forgets a worker and returns its state (with the calls it held).
    pub fn remove(&mut self, idx: WorkerIdx) -> Option<WorkerState> {
        let state = self.slots.get_mut(idx)?.take()?;
        self.by_peer.remove(&state.peer);
        for &s in &state.services {
            self.by_service[s].retain(|&w| w != idx);
        }
        self.free_slots.push(idx);
        Some(state)
    }

    /// The worker of `service` with the most free credit, if any has some.
    /// Ties go round-robin, so idle workers share light load too.
    pub fn pick(&mut self, service: usize) -> Option<WorkerIdx> {
        let workers = &self.by_service[service];
        let n = workers.len();
        if n == 0 {
            return None;
        }
        let start = self.cursor[service] % n;
        let mut best: Option<(usize, u32)> = None;
        for k in 0..n {
            let pos = (start + k) % n;
            let free = self.slots[workers[pos]]
                .as_ref()
                .map_or(0, WorkerState::free);
            if free > 0 && best.is_none_or(|(_, f)| free > f) {
                best = Some((pos, free));
            }
        }
        let (pos, _) = best?;
        self.cursor[service] = pos + 1;
        Some(workers[pos])
    }

    pub fn iter(&self) -> impl Iterator<Item = (WorkerIdx, &WorkerState)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.as_ref().map(|s| (i, s)))
    }

    /// Makes room for one more service index.
    pub fn add_service(&mut self) {
        self.by_service.push(Vec::new());
        self.cursor.push(0);
    }

    pub fn workers_of(&self, service: usize) -> impl Iterator<Item = &WorkerState> {
        self.by_service[service]
            .iter()
            .filter_map(|&w| self.slots[w].as_ref())
    }

    pub fn len(&self) -> usize {
        self.by_peer.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ws(id: &str) -> Arc<WorkerStats> {
        Arc::new(WorkerStats {
            id: id.into(),
            services: Vec::new(),
            credit: Default::default(),
            in_flight: Default::default(),
            served: Default::default(),
            last_seen_ms: Default::default(),
        })
    }

    #[test]
    fn picks_the_most_free_credit_and_never_an_exhausted_worker() {
        let now = Instant::now();
        let mut pool = WorkerPool::new(2);
        let a = pool.add(Bytes::from_static(b"a"), vec![0], 2, now, ws);
        let b = pool.add(Bytes::from_static(b"b"), vec![0, 1], 3, now, ws);
        assert_eq!(pool.pick(0), Some(b));
        pool.get_mut(b).unwrap().in_flight.insert(9, (0, 0));
        // a and b now both have 2 free: ties alternate.
        let first = pool.pick(0).unwrap();
        let second = pool.pick(0).unwrap();
        assert_ne!(first, second);
        pool.get_mut(b).unwrap().in_flight.remove(&9);
        pool.get_mut(b)
            .unwrap()
            .in_flight
            .extend([(1, (0, 0)), (2, (0, 0))]);
        assert_eq!(pool.pick(0), Some(a));
        pool.get_mut(a)
            .unwrap()
            .in_flight
            .extend([(3, (0, 0)), (4, (0, 0))]);
        assert_eq!(pool.pick(0), Some(b));
        pool.get_mut(b).unwrap().in_flight.insert(5, (0, 0));
        assert_eq!(pool.pick(0), None);
        assert_eq!(pool.pick(1), None);
        pool.get_mut(b).unwrap().in_flight.remove(&5);
        pool.get_mut(b).unwrap().leaving = true;
        assert_eq!(pool.pick(1), None, "a leaving worker gets no new calls");
        let state = pool.remove(b).unwrap();
        assert_eq!(state.in_flight.len(), 2);
        assert_eq!(pool.workers_of(1).count(), 0);
        assert_eq!(pool.lookup(&Bytes::from_static(b"b")), None);
        let c = pool.add(Bytes::from_static(b"c"), vec![1], 1, now, ws);
        assert_eq!(c, b, "slots are reused");
        assert_eq!(pool.get(c).unwrap().id, "w3");
    }
}
