"""One worker's credit, shared by the data planes it is attached to
(docs/worker-protocol.md, "Version 3: one worker, several data planes",
"The worker's side: how the credit is shared").

The invariant: what all data planes together may have outstanding at this
worker never exceeds its credit (`total`). Each data plane holds a share,
moved with CREDIT; credit taken from one is given to another only once the
first has answered its CREDIT and the calls it holds beyond its new share
have finished.

Pure bookkeeping, no socket: the worker loop tells it what happened
(connected, registered, CREDIT answered, left, connection closed) and asks
`plan()` what to do: send READY, send CREDIT, or leave a data plane of an
older version (no CREDIT) to register there again with a smaller share.
The loop keeps `held` and `orphans` of each share up to date itself (plain
attributes: a call costs no method call here), and calls `plan()` again
when a call finishes only while `wants` is true (some share waits for free
credit): with one data plane, never after READY.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable

#: Share states. DETACHED: no connection. CONNECTED: a connection, no
#: registration (READY not sent yet). READY_SENT: READY sent, not answered.
#: REGISTERED: READY answered. LEAVING: DISCONNECT sent (or to be sent), the
#: goodbye not received yet. CONNECTED, READY_SENT and REGISTERED take part
#: in the split.
DETACHED, CONNECTED, READY_SENT, REGISTERED, LEAVING = range(5)
_TAKING_PART = (CONNECTED, READY_SENT, REGISTERED)
STATE_NAMES = ("detached", "connected", "ready-sent", "registered", "leaving")

#: What `plan()` asks of the loop. READY: send READY(credit). CREDIT: send
#: CREDIT(credit). REJOIN: a data plane that cannot take CREDIT (version
#: before 3) holds more than its share while another waits for credit: leave
#: it gracefully (DISCONNECT, its calls finished, its goodbye awaited), then
#: connect to it again and register with its share (rule 6). The book has
#: already marked it LEAVING; its credit stays reserved until `detached`.
READY, CREDIT, REJOIN = "READY", "CREDIT", "REJOIN"


class Share:
    """What the worker knows of its credit at one data plane (keyed by its
    endpoint; shares are ordered by key)."""

    __slots__ = (
        "announced",
        "awaiting",
        "fixed",
        "held",
        "hold",
        "key",
        "limit",
        "orphans",
        "state",
        "target",
        "unanswered",
    )

    def __init__(self, key: str) -> None:
        self.key = key
        self.state = DETACHED
        #: The data plane speaks a version before 3: its credit stays READY's.
        self.fixed = False
        #: The credit last sent (READY or CREDIT); 0 when not registered.
        self.announced = 0
        #: The credit before the CREDIT not answered yet (0 if none).
        self.unanswered = 0
        #: A CREDIT is not answered yet (at most one at a time).
        self.awaiting = False
        #: Calls of the current connection not answered yet (the loop keeps it).
        self.held = 0
        #: Calls of earlier connections still running (their replies are dropped).
        self.orphans = 0
        #: The loop keeps READY back for now (backoff after a DISCONNECT).
        self.hold = False
        #: Its equal share of the total, as of the last `plan()` (0: none).
        self.target = 0
        #: What the data plane may have outstanding now: max(announced, unanswered).
        self.limit = 0

    def reserved(self) -> int:
        """What this data plane may be using of the worker's credit."""
        using = max(self.announced, self.unanswered, self.held) if self.state != DETACHED else self.held
        return using + self.orphans

    def __repr__(self) -> str:
        return (
            f"Share({self.key!r}, {STATE_NAMES[self.state]}, announced={self.announced}, "
            f"unanswered={self.unanswered}, held={self.held}, orphans={self.orphans}, target={self.target})"
        )


class CreditBook:
    """The split of `total` credits among the shares added to it."""

    def __init__(self, total: int, on_starved: Callable[[int, int], None] | None = None) -> None:
        if total < 1:
            raise ValueError(f"the total credit must be at least 1, not {total}")
        self.total = total
        #: In key order.
        self.shares: list[Share] = []
        #: Some share waits for credit to come free: `plan()` again when a call finishes.
        self.wants = False
        #: More data planes take part than there are credits (warned once per episode).
        self.starved = False
        self._on_starved = on_starved

    # -- membership ---------------------------------------------------------
    def add(self, share: Share) -> None:
        keys = [s.key for s in self.shares]
        i = bisect.bisect_left(keys, share.key)
        if i < len(keys) and keys[i] == share.key:
            raise ValueError(f"data plane {share.key} is already in the credit book")
        self.shares.insert(i, share)

    def remove(self, share: Share) -> None:
        """Forgets a detached share that holds nothing."""
        if share.state != DETACHED or share.held or share.orphans:
            raise ValueError(f"cannot forget {share!r}: it is attached or still holds calls")
        self.shares.remove(share)

    # -- what happened ---------------------------------------------------------
    def connected(self, share: Share) -> None:
        """A connection to it is up: it takes part; READY goes at the next `plan()`."""
        share.state = CONNECTED
        self._unregistered(share)

    def registered(self, share: Share, version: int) -> None:
        """READY was answered, in `version` (before 3: the credit is fixed)."""
        if share.state == READY_SENT:
            share.state = REGISTERED
        share.fixed = version < 3

    def deregistered(self, share: Share) -> None:
        """The data plane sent DISCONNECT (refused, evicted, restarted): the
        connection stays, READY may go again; the calls it holds stay held."""
        if share.state in _TAKING_PART:
            share.state = CONNECTED
        self._unregistered(share)

    def answered(self, share: Share) -> None:
        """The data plane answered our CREDIT: the credit before it is no longer used."""
        share.awaiting = False
        share.unanswered = 0
        share.limit = share.announced

    def leaving(self, share: Share) -> None:
        """DISCONNECT sent: it takes no part any more, but keeps its credit
        reserved until the connection is closed (calls on their way)."""
        share.state = LEAVING

    def detached(self, share: Share) -> None:
        """Its connection is closed: nothing more can come from it; the calls
        it holds become orphans, reserved until they finish."""
        share.state = DETACHED
        share.orphans += share.held
        share.held = 0
        self._unregistered(share)

    @staticmethod
    def _unregistered(share: Share) -> None:
        share.announced = share.unanswered = share.limit = 0
        share.awaiting = False
        share.fixed = False

    # -- the split ----------------------------------------------------------------
    def reserved_total(self) -> int:
        return sum(s.reserved() for s in self.shares)

    def free(self) -> int:
        return self.total - self.reserved_total()

    def plan(self) -> list[tuple[Share, int, str]]:
        """What to do now: (share, credit, READY, CREDIT or REJOIN) — see
        those constants. The book already counts them as done."""
        total = self.total
        # Above the total only if a data plane sent more than its credit
        # (logged as a violation where it happens): then nothing is granted.
        before_plan = self.reserved_total()
        parts = [s for s in self.shares if s.state in _TAKING_PART]
        n = len(parts)
        for s in self.shares:
            s.target = 0
        if n > total:
            if not self.starved and self._on_starved is not None:
                self._on_starved(n, total)
            self.starved = True
        else:
            self.starved = False
        for i, s in enumerate(parts[:total]):
            s.target = total // n + (1 if i < total % n else 0)
        actions: list[tuple[Share, int, str]] = []
        # Lowering first: the credit it takes back is given away only once
        # answered, but the earlier asked, the earlier answered.
        for s in parts:
            if s.state == REGISTERED and not s.fixed and not s.awaiting and 1 <= s.target < s.announced:
                s.unanswered = s.announced
                s.announced = s.target
                s.awaiting = True
                actions.append((s, s.target, CREDIT))
        free = total - self.reserved_total()
        for s in parts:
            if s.target == 0 or free <= 0:
                continue
            if s.state == CONNECTED:
                if s.hold or s.held:
                    continue  # READY once the calls of its last registration are done
                credit = min(s.target, free)
                before = s.reserved()
                s.state = READY_SENT
                s.announced = s.limit = credit
                free -= s.reserved() - before
                actions.append((s, credit, READY))
            elif s.state == REGISTERED and not s.fixed and not s.awaiting and s.announced < s.target:
                credit = min(s.target, s.announced + free)
                before = s.reserved()
                s.unanswered = s.announced
                s.announced = s.limit = credit
                s.awaiting = True
                free -= s.reserved() - before
                actions.append((s, credit, CREDIT))
        # Rule 6: a data plane that cannot take CREDIT gives up what it holds
        # beyond its share only by registering again: done while another one,
        # not registered, waits for credit and none is free.
        if free <= 0 and any(s.state in (CONNECTED, READY_SENT) and s.announced < s.target for s in parts):
            for s in parts:
                if s.state == REGISTERED and s.fixed and s.announced > s.target:
                    self.leaving(s)
                    actions.append((s, s.target, REJOIN))
        self.wants = any(
            s.target and (s.state == CONNECTED or (s.state == REGISTERED and not s.fixed and s.announced < s.target))
            for s in parts
        )
        assert self.reserved_total() <= max(total, before_plan), f"credit overcommitted: {self.shares} (total {total})"
        return actions
