//! One worker's credit, shared by the data planes it is attached to
//! (docs/worker-protocol.md, "Version 3: one worker, several data planes").
//!
//! The invariant: what all data planes together may have outstanding at
//! this worker never exceeds its credit. Each data plane holds a share; a
//! share is moved with CREDIT, and credit taken from one data plane is given
//! to another only once the first has confirmed (its CREDIT answer) and the
//! calls it holds beyond its new share have finished.
//!
//! The ledger is pure bookkeeping: the session tasks ask it what to announce
//! and tell it what happened. It is touched on membership and credit
//! events, never per call (with one data plane, not at all after READY).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::mpsc::{self, error::TrySendError};

/// What the ledger knows of one data plane (keyed by its address).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Member {
    /// Connected (or registered): it takes part in the split.
    connected: bool,
    /// Registered: `announced` is its credit there.
    registered: bool,
    /// It speaks version 3: its credit can be moved.
    movable: bool,
    /// The credit last sent to it (READY or CREDIT).
    announced: u32,
    /// The credit before a lowering CREDIT it has not answered yet.
    unanswered: Option<u32>,
    /// Calls of the current connection not answered yet, as last reported
    /// (reported only while it may exceed `announced`).
    held: u32,
    /// Calls of earlier connections still running (their replies are dropped).
    orphans: u32,
}

impl Member {
    /// What this data plane may be using of the worker's credit.
    fn reserved(&self) -> u32 {
        let announced = if self.registered { self.announced } else { 0 };
        announced
            .max(self.unanswered.unwrap_or(0))
            .max(self.held)
            .saturating_add(self.orphans)
    }
}

/// The split of one worker's credit among its data planes.
#[derive(Debug)]
pub struct Ledger {
    total: u32,
    members: BTreeMap<String, Member>,
}

impl Ledger {
    pub fn new(total: u32) -> Ledger {
        Ledger {
            total,
            members: BTreeMap::new(),
        }
    }

    fn free(&self) -> u32 {
        let reserved: u32 = self
            .members
            .values()
            .map(Member::reserved)
            .fold(0, u32::saturating_add);
        self.total.saturating_sub(reserved)
    }

    /// The share `key` should have: an equal split among the connected data
    /// planes in address order (the first `total mod n` one more); with
    /// fewer credits than data planes, 1 each for the first `total`.
    fn target(&self, key: &str) -> u32 {
        let n = self.members.values().filter(|m| m.connected).count() as u32;
        let Some(pos) = self
            .members
            .iter()
            .filter(|(_, m)| m.connected)
            .position(|(k, _)| k == key)
        else {
            return 0;
        };
        let pos = pos as u32;
        if n > self.total {
            return u32::from(pos < self.total);
        }
        self.total / n + u32::from(pos < self.total % n)
    }

    /// `key` is connected and wants to register.
    pub fn join(&mut self, key: &str) {
        let m = self.members.entry(key.to_string()).or_default();
        m.connected = true;
    }

    /// The credit to send in READY, reserved now; `None` while none is free
    /// for it (wait for a change).
    pub fn grant_ready(&mut self, key: &str) -> Option<u32> {
        let credit = self.target(key).min(self.free());
        let m = self.members.get_mut(key)?;
        if credit == 0 || !m.connected {
            return None;
        }
        m.registered = true;
        m.announced = credit;
        m.unanswered = None;
        m.held = 0;
        Some(credit)
    }

    /// READY was answered with `version`: a version-3 data plane's credit
    /// can be moved; an older one keeps READY's.
    pub fn registered(&mut self, key: &str, version: u8) {
        if let Some(m) = self.members.get_mut(key) {
            m.movable = version >= thriftworker_wire::VERSION_3;
        }
    }

    /// The CREDIT to send `key` now, if its share should change: lowering
    /// keeps the old credit reserved until answered ([`Ledger::answered`]);
    /// raising reserves the new one before it is sent. One unanswered
    /// CREDIT per data plane at a time.
    pub fn next_change(&mut self, key: &str) -> Option<u32> {
        let target = self.target(key);
        let free = self.free();
        let m = self.members.get_mut(key)?;
        if !m.registered || !m.movable || m.unanswered.is_some() || target == 0 {
            return None;
        }
        if m.announced > target {
            m.unanswered = Some(m.announced);
            m.announced = target;
            return Some(target);
        }
        let raised = target.min(m.announced.saturating_add(free));
        if raised > m.announced {
            m.announced = raised;
            return Some(raised);
        }
        None
    }

    /// Whether `key`, a data plane whose credit cannot move (version 1 or
    /// 2), should register again with a smaller share: it holds more than
    /// its share while another data plane waits for credit. (Without this a
    /// data plane of the previous release would keep the whole credit of a
    /// worker that found it first, and a new data plane would get none.)
    pub fn should_rejoin(&self, key: &str) -> bool {
        let Some(m) = self.members.get(key) else {
            return false;
        };
        let waiting = self
            .members
            .iter()
            .any(|(k, o)| k != key && o.connected && !o.registered);
        m.registered && !m.movable && m.announced > self.target(key) && waiting && self.free() == 0
    }

    /// `key` answered a CREDIT: what it had before is no longer used.
    pub fn answered(&mut self, key: &str) {
        if let Some(m) = self.members.get_mut(key) {
            m.unanswered = None;
        }
    }

    /// The calls `key`'s current connection holds (reported while they may
    /// exceed its credit, i.e. after a lowering).
    pub fn held(&mut self, key: &str, held: u32) {
        if let Some(m) = self.members.get_mut(key) {
            m.held = held;
        }
    }

    /// `key`'s credit there, if registered.
    #[cfg(test)]
    pub fn announced(&self, key: &str) -> u32 {
        self.members
            .get(key)
            .filter(|m| m.registered)
            .map_or(0, |m| m.announced)
    }

    /// `key`'s connection ended with `orphans` calls still running: they
    /// stay reserved until they finish ([`Ledger::orphans`]).
    pub fn detach(&mut self, key: &str, orphans: u32) {
        if let Some(m) = self.members.get_mut(key) {
            *m = Member {
                orphans,
                ..Member::default()
            };
        }
    }

    /// `key`'s running calls of earlier connections are now `orphans`.
    pub fn orphans(&mut self, key: &str, orphans: u32) {
        if let Some(m) = self.members.get_mut(key) {
            m.orphans = orphans;
        }
    }

    /// `key` is gone for good (its task ended, nothing held).
    pub fn remove(&mut self, key: &str) {
        self.members.remove(key);
    }

    /// Whether a data plane other than `key` has this worker registered.
    pub fn others_registered(&self, key: &str) -> bool {
        self.members.iter().any(|(k, m)| k != key && m.registered)
    }

    /// Whether more data planes take part than there are credits (some
    /// then get none: worth a warning).
    pub fn starved(&self) -> bool {
        self.members.values().filter(|m| m.connected).count() > self.total as usize
    }

    #[cfg(test)]
    fn reserved_total(&self) -> u32 {
        self.members.values().map(Member::reserved).sum()
    }
}

/// The ledger shared by the session tasks, and how to wake every session
/// after a change (one may now move credit): a poke on each one's channel.
#[derive(Clone)]
pub struct Shared {
    ledger: Arc<Mutex<Ledger>>,
    sessions: Arc<Mutex<Vec<mpsc::Sender<()>>>>,
}

impl Shared {
    pub fn new(total: u32) -> Shared {
        Shared {
            ledger: Arc::new(Mutex::new(Ledger::new(total))),
            sessions: Arc::default(),
        }
    }

    /// Runs `f` on the ledger, then wakes every session.
    pub fn update<R>(&self, f: impl FnOnce(&mut Ledger) -> R) -> R {
        let r = f(&mut self.lock());
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        // A full channel already holds a poke; a closed one's session is gone.
        sessions.retain(|s| !matches!(s.try_send(()), Err(TrySendError::Closed(()))));
        r
    }

    /// Runs `f` on the ledger without waking anyone (for reads, and for
    /// changes that only take credit).
    pub fn with<R>(&self, f: impl FnOnce(&mut Ledger) -> R) -> R {
        f(&mut self.lock())
    }

    /// Pokes `session` after every change from now on.
    pub fn subscribe(&self, session: mpsc::Sender<()>) {
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(session);
    }

    fn lock(&self) -> MutexGuard<'_, Ledger> {
        // The ledger has no invariant a panic half-way could break that
        // matters more than the worker going on: take it back.
        self.ledger.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Registers `key` at version 3 and returns READY's credit.
    fn attach(l: &mut Ledger, key: &str) -> Option<u32> {
        l.join(key);
        let c = l.grant_ready(key)?;
        l.registered(key, 3);
        Some(c)
    }

    #[test]
    fn one_data_plane_gets_everything_at_once() {
        let mut l = Ledger::new(260);
        assert_eq!(attach(&mut l, "a"), Some(260));
        assert_eq!(l.next_change("a"), None);
        assert_eq!(l.reserved_total(), 260);
    }

    #[test]
    fn a_new_data_plane_waits_until_the_others_have_given_up_their_credit() {
        let mut l = Ledger::new(10);
        assert_eq!(attach(&mut l, "a"), Some(10));
        l.join("b");
        assert_eq!(l.grant_ready("b"), None, "a still holds all 10");
        assert_eq!(l.next_change("a"), Some(5), "a lowers to its share");
        assert_eq!(l.next_change("a"), None, "one unanswered CREDIT at a time");
        assert_eq!(l.grant_ready("b"), None, "a has not answered");
        // a answered, but still holds 8 calls of its old credit.
        l.held("a", 8);
        l.answered("a");
        assert_eq!(l.grant_ready("b"), Some(2));
        assert!(l.reserved_total() <= 10);
        l.registered("b", 3);
        l.held("a", 5);
        assert_eq!(l.next_change("b"), Some(5), "raised as a's calls finish");
        assert_eq!(l.reserved_total(), 10);
        assert_eq!(l.next_change("a"), None);
    }

    #[test]
    fn shares_are_equal_in_address_order_and_never_zero_for_a_registered_one() {
        let mut l = Ledger::new(7);
        for k in ["c", "a", "b"] {
            l.join(k);
        }
        assert_eq!((l.target("a"), l.target("b"), l.target("c")), (3, 2, 2));
        let mut l = Ledger::new(2);
        assert_eq!(attach(&mut l, "a"), Some(2));
        l.join("b");
        l.join("c");
        assert!(l.starved());
        assert_eq!(l.next_change("a"), Some(1));
        l.answered("a");
        assert_eq!(l.grant_ready("b"), Some(1));
        assert_eq!(l.grant_ready("c"), None, "two credits, three data planes");
        assert_eq!(l.reserved_total(), 2);
    }

    #[test]
    fn a_lost_data_plane_gives_its_credit_back_as_its_calls_finish() {
        let mut l = Ledger::new(4);
        attach(&mut l, "a");
        l.join("b");
        assert_eq!(l.next_change("a"), Some(2));
        l.answered("a");
        assert_eq!(l.grant_ready("b"), Some(2));
        l.registered("b", 3);
        l.detach("a", 2);
        assert_eq!(l.next_change("b"), None, "a's 2 calls still run");
        l.orphans("a", 1);
        assert_eq!(l.next_change("b"), Some(3));
        l.orphans("a", 0);
        l.remove("a");
        assert_eq!(l.next_change("b"), Some(4));
        assert_eq!(l.reserved_total(), 4);
        // a comes back: b lowers, a gets the rest.
        l.join("a");
        assert_eq!(l.grant_ready("a"), None);
        assert_eq!(l.next_change("b"), Some(2));
        l.answered("b");
        assert_eq!(l.grant_ready("a"), Some(2));
    }

    #[test]
    fn an_older_data_plane_registers_again_to_give_up_credit() {
        let mut l = Ledger::new(6);
        l.join("a");
        assert_eq!(l.grant_ready("a"), Some(6));
        l.registered("a", 2);
        assert!(!l.should_rejoin("a"), "nobody waits");
        l.join("b");
        assert_eq!(l.next_change("a"), None, "version 2: no CREDIT");
        assert_eq!(l.grant_ready("b"), None);
        assert!(l.should_rejoin("a"), "b waits for a's credit");
        // a leaves (its calls finished): b, alone, gets everything...
        l.detach("a", 0);
        assert!(!l.should_rejoin("a"));
        assert_eq!(l.grant_ready("b"), Some(6));
        l.registered("b", 3);
        // ...and gives a its share back by CREDIT when a connects again.
        l.join("a");
        assert_eq!(l.grant_ready("a"), None);
        assert_eq!(l.next_change("b"), Some(3));
        l.answered("b");
        assert_eq!(l.grant_ready("a"), Some(3));
        l.registered("a", 2);
        assert!(!l.should_rejoin("a"), "a has its share");
    }

    #[test]
    fn random_events_never_reserve_more_than_the_total() {
        // A small deterministic generator: no dependency for one test.
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for total in [1u32, 2, 3, 8, 260] {
            let mut l = Ledger::new(total);
            let keys = ["a", "b", "c", "d"];
            for _ in 0..5_000 {
                let k = keys[next(4) as usize];
                match next(7) {
                    0 => l.join(k),
                    1 => {
                        if l.grant_ready(k).is_some() {
                            l.registered(k, if next(4) == 0 { 2 } else { 3 });
                        }
                    }
                    2 => {
                        l.next_change(k);
                    }
                    3 => l.answered(k),
                    4 => {
                        let a = l.announced(k);
                        l.held(k, next(u64::from(a) + 1) as u32);
                    }
                    5 => l.detach(k, next(3) as u32),
                    _ => {
                        if next(2) == 0 {
                            l.orphans(k, 0);
                        }
                    }
                }
                // `held` above credit happens only after a lowering: a data
                // plane never sends beyond what it was last told.
                assert!(
                    l.reserved_total() <= total + 2 * keys.len() as u32,
                    "orphans reported by the test may exceed"
                );
                let registered: u32 = l
                    .members
                    .values()
                    .map(|m| {
                        let a = if m.registered { m.announced } else { 0 };
                        a.max(m.unanswered.unwrap_or(0))
                    })
                    .sum();
                assert!(
                    registered <= total,
                    "credit given out {registered} > {total}"
                );
            }
        }
    }
}
