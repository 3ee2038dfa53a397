//! Every call's timer: a binary heap of `(when, call id)` with lazy deletion
//! and one tokio `Sleep` for the earliest entry.
//!
//! Nearly every call is answered long before its timer, so cancelling a
//! timer must cost nothing: an answered call simply leaves its entry behind.
//! An entry is *stale* when its call is gone or the call's timer has moved
//! (a queued call's queue timeout replaced by its deadline once it is sent);
//! stale entries are dropped when they reach the top, and all at once when
//! they outnumber the live calls (so the heap holds at most about twice the
//! calls in the table). Compared with `tokio_util`'s `DelayQueue` (a timer
//! wheel with a slab, inserted into and removed from per call) this took 6%
//! off the data plane's instructions per call (callgrind, 16×16 pipelined:
//! 12,042 → 11,300; see the note of issue 13).
//!
//! The sleep is re-armed only when an earlier entry appears: entries pushed
//! later are due later (for calls of one timeout), and a sleep that fires for
//! an entry gone stale meanwhile costs one spurious wake per timeout period.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::time::{Instant, Sleep};

/// Entries beyond twice the live calls plus this trigger a compaction.
const SLACK: usize = 1024;

pub(super) struct Timers {
    heap: BinaryHeap<Reverse<(Instant, u64)>>,
    sleep: Pin<Box<Sleep>>,
    /// What `sleep` is set to, if it is armed for an entry.
    armed: Option<Instant>,
}

impl Default for Timers {
    fn default() -> Timers {
        Timers {
            heap: BinaryHeap::new(),
            sleep: Box::pin(tokio::time::sleep_until(Instant::now())),
            armed: None,
        }
    }
}

impl Timers {
    /// Call `id`'s timer fires at `at` (the caller records `at` as the
    /// call's current timer, which is what `live` checks).
    pub fn insert(&mut self, id: u64, at: Instant) {
        self.heap.push(Reverse((at, id)));
    }

    /// Drops every entry. Calls inserted later get timers again.
    pub fn clear(&mut self) {
        self.heap.clear();
        self.armed = None;
    }

    /// Drops the stale entries if they outnumber the `live_calls`;
    /// `live(id, at)` says whether an entry is still its call's timer.
    pub fn compact(&mut self, live_calls: usize, live: impl Fn(u64, Instant) -> bool) {
        if self.heap.len() > 2 * live_calls + SLACK {
            self.heap.retain(|Reverse((at, id))| live(*id, *at));
        }
    }

    /// The next call whose timer is due, or `Pending` (woken when the
    /// earliest entry is due). Stale entries met at the top are dropped.
    /// Cancel-safe: nothing is taken unless it is returned.
    pub fn poll_expired(
        &mut self,
        cx: &mut Context<'_>,
        live: impl Fn(u64, Instant) -> bool,
    ) -> Poll<u64> {
        loop {
            let Some(&Reverse((at, id))) = self.heap.peek() else {
                return Poll::Pending;
            };
            if !live(id, at) {
                self.heap.pop();
                continue;
            }
            if self.armed.is_none_or(|armed| at < armed) {
                self.sleep.as_mut().reset(at);
                self.armed = Some(at);
            }
            if self.sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            // The sleep fired: it was armed for `at` or earlier.
            self.armed = None;
            if at <= Instant::now() {
                self.heap.pop();
                return Poll::Ready(id);
            }
            // Armed for an earlier entry that went stale: arm for this one.
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::Duration;

    use futures::FutureExt;

    use super::*;

    /// The live calls and their current timers, as the call table knows them.
    type Live = HashMap<u64, Instant>;

    fn next(timers: &mut Timers, live: &Live) -> Option<u64> {
        std::future::poll_fn(|cx| timers.poll_expired(cx, |id, at| live.get(&id) == Some(&at)))
            .now_or_never()
    }

    #[tokio::test(start_paused = true)]
    async fn an_entry_fires_at_its_time_and_a_stale_one_never() {
        let t0 = Instant::now();
        let mut timers = Timers::default();
        let mut live = Live::new();
        for (id, ms) in [(1, 10), (2, 20), (3, 30)] {
            let at = t0 + Duration::from_millis(ms);
            timers.insert(id, at);
            live.insert(id, at);
        }
        // Call 1 is answered; call 2's timer moves to 40 ms (sent after queueing).
        live.remove(&1);
        live.insert(2, t0 + Duration::from_millis(40));
        timers.insert(2, t0 + Duration::from_millis(40));
        assert_eq!(next(&mut timers, &live), None);
        tokio::time::sleep_until(t0 + Duration::from_millis(29)).await;
        assert_eq!(
            next(&mut timers, &live),
            None,
            "nothing is due before 30 ms"
        );
        tokio::time::sleep_until(t0 + Duration::from_millis(30)).await;
        assert_eq!(next(&mut timers, &live), Some(3));
        live.remove(&3);
        assert_eq!(next(&mut timers, &live), None);
        tokio::time::sleep_until(t0 + Duration::from_millis(40)).await;
        assert_eq!(next(&mut timers, &live), Some(2));
    }

    /// A later-inserted but earlier entry (a shorter per-method timeout)
    /// re-arms the sleep: it is not held up behind the one armed before.
    #[tokio::test(start_paused = true)]
    async fn an_earlier_entry_rearms_the_sleep() {
        let t0 = Instant::now();
        let mut timers = Timers::default();
        let mut live = Live::new();
        let late = t0 + Duration::from_secs(60);
        timers.insert(1, late);
        live.insert(1, late);
        assert_eq!(next(&mut timers, &live), None);
        let early = t0 + Duration::from_millis(5);
        timers.insert(2, early);
        live.insert(2, early);
        let fired =
            std::future::poll_fn(|cx| timers.poll_expired(cx, |id, at| live.get(&id) == Some(&at)))
                .await;
        assert_eq!(fired, 2);
        assert!(Instant::now() < t0 + Duration::from_millis(10));
    }

    /// Answered calls leave entries behind; they never outgrow twice the
    /// live calls (plus the slack) for long.
    #[test]
    fn stale_entries_are_compacted() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let _guard = rt.enter();
        let t0 = Instant::now();
        let mut timers = Timers::default();
        let mut live = Live::new();
        for id in 0..100_000u64 {
            let at = t0 + Duration::from_secs(60);
            timers.compact(live.len(), |id, at| live.get(&id) == Some(&at));
            timers.insert(id, at);
            live.insert(id, at);
            // Ten calls in flight at a time.
            if id >= 10 {
                live.remove(&(id - 10));
            }
            assert!(
                timers.heap.len() <= 2 * live.len() + SLACK + 1,
                "{}",
                timers.heap.len()
            );
        }
    }
}
