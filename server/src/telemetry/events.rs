//! What just happened, for operators: workers joining, leaving, declared
//! dead, evicted or drained; listeners added, removed, paused, resumed or
//! drained; services registered, updated or unregistered; the process
//! draining; the log filter changed. Each event has a time, a kind, what it
//! is about and why (and who asked, for admin changes).
//!
//! The last [`HISTORY`] events are kept (`thriftctl events`); new ones are
//! also broadcast to watchers (`thriftctl events --watch`). A watcher that
//! falls more than [`HISTORY`] events behind is told how many it missed.
//! Recording an event never waits and never allocates beyond the event.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::broadcast;

/// Events kept for `thriftctl events` (and a lagging watcher's bound).
pub const HISTORY: usize = 1000;

/// One enumerated table of event kinds (their labels are the API's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    WorkerJoined,
    WorkerLeft,
    WorkerDead,
    WorkerDraining,
    WorkerEvicted,
    ListenerAdded,
    ListenerRemoved,
    ListenerPaused,
    ListenerResumed,
    ListenerDraining,
    ServiceRegistered,
    ServiceUpdated,
    ServiceUnregistered,
    DrainStarted,
    LogLevelChanged,
}

impl EventKind {
    pub fn label(self) -> &'static str {
        match self {
            EventKind::WorkerJoined => "worker_joined",
            EventKind::WorkerLeft => "worker_left",
            EventKind::WorkerDead => "worker_dead",
            EventKind::WorkerDraining => "worker_draining",
            EventKind::WorkerEvicted => "worker_evicted",
            EventKind::ListenerAdded => "listener_added",
            EventKind::ListenerRemoved => "listener_removed",
            EventKind::ListenerPaused => "listener_paused",
            EventKind::ListenerResumed => "listener_resumed",
            EventKind::ListenerDraining => "listener_draining",
            EventKind::ServiceRegistered => "service_registered",
            EventKind::ServiceUpdated => "service_updated",
            EventKind::ServiceUnregistered => "service_unregistered",
            EventKind::DrainStarted => "drain_started",
            EventKind::LogLevelChanged => "log_level_changed",
        }
    }
}

/// One thing that happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Increases by one per event, from 1: gaps tell a watcher it missed some.
    pub seq: u64,
    /// Milliseconds since the Unix epoch.
    pub time_ms: u64,
    pub kind: EventKind,
    /// What it is about: a worker id, listener or service name; empty for
    /// the process.
    pub subject: String,
    pub reason: String,
    /// Who asked (the admin API caller's address), for admin changes.
    pub peer: String,
}

/// The history and the watchers.
#[derive(Debug)]
pub struct EventLog {
    inner: Mutex<Inner>,
    tx: broadcast::Sender<Event>,
}

#[derive(Debug)]
struct Inner {
    next_seq: u64,
    history: VecDeque<Event>,
}

impl Default for EventLog {
    fn default() -> Self {
        EventLog {
            inner: Mutex::new(Inner {
                next_seq: 1,
                history: VecDeque::new(),
            }),
            tx: broadcast::channel(HISTORY).0,
        }
    }
}

impl EventLog {
    /// Records an event (and hands it to watchers).
    pub fn record(
        &self,
        kind: EventKind,
        subject: impl Into<String>,
        reason: impl Into<String>,
        peer: Option<String>,
    ) {
        let time_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        let event = Event {
            seq: inner.next_seq,
            time_ms,
            kind,
            subject: subject.into(),
            reason: reason.into(),
            peer: peer.unwrap_or_default(),
        };
        inner.next_seq += 1;
        if inner.history.len() == HISTORY {
            inner.history.pop_front();
        }
        inner.history.push_back(event.clone());
        // Sent under the lock: watchers see events in `seq` order. No
        // watcher: nothing to do.
        let _ = self.tx.send(event);
    }

    /// The events kept, oldest first.
    pub fn history(&self) -> Vec<Event> {
        self.inner
            .lock()
            .map(|i| i.history.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The history and a receiver of every later event (none lost between).
    pub fn subscribe(&self) -> (Vec<Event>, broadcast::Receiver<Event>) {
        let Ok(inner) = self.inner.lock() else {
            return (Vec::new(), self.tx.subscribe());
        };
        let rx = self.tx.subscribe();
        (inner.history.iter().cloned().collect(), rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_is_bounded_and_in_order_and_watchers_miss_nothing() {
        let log = EventLog::default();
        log.record(EventKind::WorkerJoined, "w1", "", None);
        let (past, mut rx) = log.subscribe();
        assert_eq!(past.len(), 1);
        for i in 0..HISTORY + 5 {
            log.record(
                EventKind::ServiceUpdated,
                format!("s{i}"),
                "",
                Some("1.2.3.4:5".into()),
            );
        }
        let h = log.history();
        assert_eq!(h.len(), HISTORY);
        assert_eq!(h[0].seq, 7, "the oldest were dropped");
        assert!(h.windows(2).all(|w| w[1].seq == w[0].seq + 1));
        assert_eq!(
            rx.try_recv().unwrap().seq,
            2,
            "the first event after subscribe"
        );
        assert_eq!(h.last().unwrap().peer, "1.2.3.4:5");
    }
}
