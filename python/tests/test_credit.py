"""The credit split between data planes (thriftworker.credit), without a
socket: what the worker sends (READY, CREDIT) as data planes come and go,
and the invariant that the data planes together may never have more calls
outstanding than the worker's credit."""

from __future__ import annotations

import random

import pytest

from thriftworker.credit import CONNECTED, CREDIT, DETACHED, LEAVING, READY_SENT, REGISTERED, REJOIN, CreditBook, Share


def plan(book: CreditBook) -> list[tuple[str, int, str]]:
    """`book.plan()` as (key, credit, "READY", "CREDIT" or "REJOIN"), checking the invariant."""
    actions = [(s.key, credit, kind) for s, credit, kind in book.plan()]
    assert book.reserved_total() <= book.total, book.shares
    return actions


def connect(book: CreditBook, key: str) -> Share:
    """A data plane in the book whose connection is up (READY not sent yet)."""
    share = Share(key)
    book.add(share)
    book.connected(share)
    return share


def attach(book: CreditBook, key: str, version: int = 3) -> Share:
    """A data plane that connects, is sent READY and accepts it."""
    share = connect(book, key)
    actions = plan(book)
    assert actions and actions[-1][0] == key and actions[-1][2] == "READY", actions
    book.registered(share, version)
    return share


def test_one_data_plane_gets_the_whole_credit_in_ready_at_once() -> None:
    book = CreditBook(17)
    a = Share("tcp://10.0.0.1:9950")
    book.add(a)
    assert plan(book) == []  # not connected yet: nothing to send, nothing reserved
    book.connected(a)
    assert plan(book) == [(a.key, 17, "READY")]
    assert a.state == READY_SENT and book.free() == 0
    book.registered(a, 3)
    assert plan(book) == [] and a.state == REGISTERED
    assert not book.wants  # nothing waits for credit: no work per finished call


def test_a_second_data_plane_gets_credit_only_once_the_first_answered_its_lowering() -> None:
    book = CreditBook(7)
    b = attach(book, "tcp://10.0.0.2:9950")
    a = connect(book, "tcp://10.0.0.1:9950")  # sorts first: the larger share
    # b is lowered to its share; a gets nothing while b may still use its 7.
    assert plan(book) == [(b.key, 3, "CREDIT")]
    assert (b.announced, b.unanswered, b.reserved()) == (3, 7, 7)
    assert plan(book) == []  # at most one CREDIT unanswered, no READY without free credit
    book.answered(b)
    assert plan(book) == [(a.key, 4, "READY")]
    book.registered(a, 3)
    assert plan(book) == [] and book.free() == 0
    assert (a.announced, b.announced) == (4, 3)


def test_calls_held_beyond_a_lowered_credit_stay_reserved_until_they_finish() -> None:
    book = CreditBook(8)
    b = attach(book, "tcp://10.0.0.2:9950")
    b.held = 8  # the data plane sent its full credit: 8 calls running
    a = connect(book, "tcp://10.0.0.1:9950")
    assert plan(book) == [(b.key, 4, "CREDIT")]
    book.answered(b)
    assert b.reserved() == 8 and plan(book) == []  # answered, but its 8 calls still run
    b.held = 6
    assert plan(book) == [(a.key, 2, "READY")]  # 2 finished: 2 free
    book.registered(a, 3)
    b.held = 3
    assert plan(book) == [(a.key, 4, "CREDIT")]  # raised once b is within its share
    assert a.unanswered == 2 and a.reserved() == 4  # a raise is reserved before it is sent
    book.answered(a)
    assert (a.announced, b.announced, book.free()) == (4, 4, 0)  # b holds 3 and may get 1 more


def test_a_data_plane_that_leaves_keeps_its_credit_until_closed_then_its_calls_finish() -> None:
    book = CreditBook(6)
    a = attach(book, "tcp://10.0.0.1:9950")
    b = connect(book, "tcp://10.0.0.2:9950")
    assert plan(book) == [(a.key, 3, "CREDIT")]
    book.answered(a)
    assert plan(book) == [(b.key, 3, "READY")]
    book.registered(b, 3)
    # a's address is gone: DISCONNECT sent; calls may still be on their way.
    a.held = 2
    book.leaving(a)
    assert a.state == LEAVING and a.reserved() == 3
    assert plan(book) == []  # b's target is now 6, but a's 3 are not free yet
    assert book.wants
    book.detached(a)  # the goodbye came (or the drain timed out): the connection is closed
    assert (a.state, a.held, a.orphans, a.reserved()) == (DETACHED, 0, 2, 2)
    assert plan(book) == [(b.key, 4, "CREDIT")]
    book.answered(b)
    a.orphans = 0  # its last calls finished
    assert plan(book) == [(b.key, 6, "CREDIT")]
    book.answered(b)
    book.remove(a)
    assert [s.key for s in book.shares] == [b.key] and not book.wants


def test_calls_of_a_lost_connection_are_counted_until_they_finish() -> None:
    book = CreditBook(4)
    a = attach(book, "tcp://10.0.0.1:9950")
    a.held = 4
    book.detached(a)  # the connection was lost with 4 calls running
    book.connected(a)  # a new connection to the same data plane
    assert plan(book) == []  # nothing free yet
    a.orphans = 1
    assert plan(book) == [(a.key, 3, "READY")]
    book.registered(a, 3)
    a.orphans = 0
    assert plan(book) == [(a.key, 4, "CREDIT")]


def test_a_total_below_the_number_of_data_planes_gives_the_first_ones_one_each() -> None:
    warned: list[tuple[int, int]] = []
    book = CreditBook(2, lambda n, total: warned.append((n, total)))
    shares = [Share(f"tcp://10.0.0.{i}:9950") for i in (3, 1, 2)]
    for s in shares:
        book.add(s)
        book.connected(s)
    assert plan(book) == [("tcp://10.0.0.1:9950", 1, "READY"), ("tcp://10.0.0.2:9950", 1, "READY")]
    assert warned == [(3, 2)]
    assert shares[0].state == CONNECTED  # never READY with credit 0
    plan(book)
    assert warned == [(3, 2)]  # warned once, not at every plan


def test_a_version_2_data_plane_keeps_the_credit_of_its_ready() -> None:
    book = CreditBook(6)
    old = attach(book, "tcp://10.0.0.2:9950", version=2)
    assert old.fixed
    new = connect(book, "tcp://10.0.0.1:9950")
    # No CREDIT to a version-2 data plane: it is left, to register again (rule 6).
    assert plan(book) == [(old.key, 3, "REJOIN")]
    book.detached(old)
    assert plan(book) == [(new.key, 6, "READY")]


def test_an_older_data_plane_registers_again_to_give_up_credit() -> None:
    """Rule 6 (the Rust library's test of the same name): a data plane that
    cannot take CREDIT and holds more than its share while another waits is
    left, keeps its credit reserved until its connection is closed, and is
    registered again with its share."""
    book = CreditBook(6)
    a = connect(book, "a")
    assert plan(book) == [("a", 6, "READY")]
    book.registered(a, 2)
    assert plan(book) == [] and not book.wants  # nobody waits
    b = connect(book, "b")
    # Version 2: no CREDIT. b waits for a's credit: a is left.
    assert plan(book) == [("a", 3, "REJOIN")]
    assert a.state == LEAVING and a.reserved() == 6 and book.wants
    a.held = 2  # calls still on their way or running: a keeps its credit until closed
    assert plan(book) == []  # asked once, and b gets nothing yet
    a.held = 0
    # a's goodbye is in, its calls are done: b, alone, gets everything...
    book.detached(a)
    assert plan(book) == [("b", 6, "READY")]
    book.registered(b, 3)
    # ...and gives a its share back by CREDIT when a connects again.
    book.connected(a)
    assert plan(book) == [("b", 3, "CREDIT")]
    assert plan(book) == []  # no REJOIN of a READY_SENT or CONNECTED share, nor of b (it takes CREDIT)
    book.answered(b)
    assert plan(book) == [("a", 3, "READY")]
    book.registered(a, 2)
    assert plan(book) == [] and not book.wants  # a has its share
    assert (a.announced, b.announced, book.free()) == (3, 3, 0)


def test_only_an_older_data_plane_above_its_share_is_left() -> None:
    book = CreditBook(4)
    first = Share("a")
    second = Share("b")
    for s in (first, second):
        book.add(s)
        book.connected(s)
    assert plan(book) == [("a", 2, "READY"), ("b", 2, "READY")]
    book.registered(first, 2)
    book.registered(second, 1)
    assert plan(book) == []  # each has its share: nobody waits
    third = Share("c")
    book.add(third)
    book.connected(third)  # targets: a 2, b 1, c 1
    assert plan(book) == [("b", 1, "REJOIN")]  # a holds only its share: it stays
    book.detached(second)
    assert plan(book) == [("c", 2, "READY")]  # b is not connected (yet): c's share is 2
    assert first.state == REGISTERED


def test_a_refused_or_evicted_registration_is_sent_ready_again_once_its_calls_are_done() -> None:
    book = CreditBook(5)
    a = attach(book, "ipc:///run/a.sock")
    a.held = 2
    book.deregistered(a)  # DISCONNECT from the data plane
    assert a.state == CONNECTED and a.reserved() == 2
    assert plan(book) == []  # the calls of the ended registration first
    a.held = 0
    assert plan(book) == [(a.key, 5, "READY")]


def test_the_book_refuses_to_forget_a_share_that_holds_calls() -> None:
    book = CreditBook(3)
    a = attach(book, "ipc:///a")
    with pytest.raises(ValueError, match="still holds calls"):
        book.remove(a)
    with pytest.raises(ValueError, match="already in the credit book"):
        book.add(Share("ipc:///a"))
    with pytest.raises(ValueError, match="at least 1"):
        CreditBook(0)


@pytest.mark.parametrize("seed", range(20))
def test_random_churn_never_overcommits(seed: int) -> None:
    """Data planes join, leave, get lost, answer CREDITs late, hold calls up
    to what they may: after every step the reserved total stays within the
    credit, and what the data planes may send stays within what is reserved."""
    rng = random.Random(seed)
    total = rng.choice([1, 2, 3, 7, 16, 64])
    book = CreditBook(total)
    keys = [f"tcp://10.0.0.{i}:9950" for i in range(1, 7)]
    shares = {k: Share(k) for k in keys}
    for s in shares.values():
        book.add(s)
    unanswered: list[Share] = []
    for _ in range(400):
        s = shares[rng.choice(keys)]
        step = rng.random()
        if step < 0.15 and s.state == DETACHED:
            book.connected(s)
        elif step < 0.3 and s.state == READY_SENT:
            book.registered(s, rng.choice([2, 3, 3, 3]))
        elif step < 0.4 and s.state in (REGISTERED, READY_SENT):
            book.leaving(s)
        elif step < 0.5 and s.state != DETACHED:
            book.detached(s)
            unanswered = [u for u in unanswered if u is not s]
        elif step < 0.65 and unanswered:
            u = unanswered.pop(0)
            if u.state in (REGISTERED, LEAVING) and u.awaiting:
                book.answered(u)
        elif step < 0.85 and s.state in (REGISTERED, LEAVING) and s.held < s.limit:
            s.held += 1  # the data plane sends a call, within what it may have outstanding
        elif s.held:
            s.held -= 1
        elif s.orphans:
            s.orphans -= 1
        for share, _credit, kind in book.plan():
            if kind == CREDIT:
                unanswered.append(share)
            elif kind == REJOIN:
                assert share.state == LEAVING and share.fixed
        assert book.reserved_total() <= total, book.shares
        for share in shares.values():
            # What each may have outstanding is within what is reserved for it.
            assert share.held + share.orphans <= share.reserved(), share
