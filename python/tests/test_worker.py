"""The worker loop against a ROUTER socket the test drives by hand (real
ZeroMQ, in process): what the data plane sees of a worker."""

from __future__ import annotations

import os
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import zmq
from thrift.Thrift import TMessageType

from conftest import Echo, Handler, decode_reply, encode_call, start_worker
from thriftworker import Refused, Worker, current_call, wire


class Plane:
    """The data plane's side of one worker connection."""

    def __init__(self, ctx: zmq.Context[Any]) -> None:
        self.sock = ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.endpoint = f"tcp://127.0.0.1:{port}"
        self.peer = b""

    def recv(self, timeout: float = 5.0) -> list[bytes]:
        assert self.sock.poll(int(timeout * 1000)), "nothing from the worker"
        peer, *frames = self.sock.recv_multipart()
        self.peer = peer
        return frames

    def recv_cmd(self, cmd: int, timeout: float = 5.0) -> list[bytes]:
        """The next message with command `cmd`, skipping heartbeats."""
        deadline = time.monotonic() + timeout
        while True:
            frames = self.recv(max(0.01, deadline - time.monotonic()))
            if frames[0][1] == cmd:
                return frames
            assert frames[0][1] == wire.HEARTBEAT, frames

    def send(self, *frames: bytes) -> None:
        self.sock.send_multipart([self.peer, *frames])

    def ack(self, heartbeat_ms: int = 1000) -> None:
        self.send(b"\x01\x01", struct.pack(">I", heartbeat_ms), b"w1")

    def request(self, request_id: int, message: bytes, timeout_ms: int = 5000, protocol: int = 0) -> None:
        self.send(b"\x01\x02", struct.pack(">QIB", request_id, timeout_ms, protocol), b"Echo", message)


@pytest.fixture
def plane() -> Iterator[Plane]:
    ctx: zmq.Context[Any] = zmq.Context()
    p = Plane(ctx)
    yield p
    p.sock.close()
    ctx.term()


def leave(plane: Plane, w: Worker, t: threading.Thread, *more: Plane) -> None:
    """Stops the worker as its data planes see it: its DISCONNECT to each,
    their goodbyes."""
    w.stop()
    for p in (plane, *more):
        p.recv_cmd(wire.DISCONNECT)
        p.send(b"\x01\x05", b"bye")
    t.join(5)
    assert not t.is_alive(), "the worker did not stop after the goodbye"


def unbound_ipc_plane(ctx: zmq.Context[Any], tmp_path_factory: pytest.TempPathFactory) -> Plane:
    """A second data plane whose endpoint is an ipc:// path not bound yet
    (the test binds it when the data plane should appear)."""
    b = Plane(ctx)
    b.sock.unbind(b.endpoint)
    b.endpoint = f"ipc://{tmp_path_factory.mktemp('p')}/b.sock"
    assert len(b.endpoint) < 100, b.endpoint
    return b


start = start_worker


def test_ready_then_calls_are_answered_in_order(plane: Plane, handler: Handler) -> None:
    w = Worker(plane.endpoint, {"Echo": Echo.Processor(handler)}, token="tok", prefetch=0)
    t, _ = start(w)
    ready = plane.recv_cmd(wire.READY)
    assert ready[1:] == [struct.pack(">I", 1), b"tok", b"Echo"]
    plane.ack()
    for i in range(3):
        plane.request(i, encode_call(0, "echo", i, message=f"m{i}"))
        r = plane.recv_cmd(wire.REPLY)
        assert struct.unpack(">Q", r[1])[0] == i
        assert decode_reply(0, "echo", r[2])[2].success == f"m{i}"
    leave(plane, w, t)
    assert not t.is_alive()


def test_threads_mode_announces_its_concurrency_and_runs_calls_at_once(plane: Plane) -> None:
    gate = threading.Barrier(3, timeout=5)

    class Blocking(Handler):
        def slow(self, message: str, sleep_ms: int) -> str:
            gate.wait()  # all three calls must be running together
            return message

    w = Worker(plane.endpoint, {"Echo": Echo.Processor(Blocking())}, mode="threads", concurrency=3)
    t, _ = start(w)
    # 3 running, and by default one more held ready per thread.
    assert plane.recv_cmd(wire.READY)[1] == struct.pack(">I", 6)
    plane.ack()
    for i in range(3):
        plane.request(i, encode_call(0, "slow", i, message=str(i), sleep_ms=0))
    ids = {struct.unpack(">Q", plane.recv_cmd(wire.REPLY)[1])[0] for _ in range(3)}
    assert ids == {0, 1, 2}
    leave(plane, w, t)


def test_stop_answers_the_calls_in_flight_before_leaving(plane: Plane) -> None:
    release = threading.Event()

    class Slow(Handler):
        def slow(self, message: str, sleep_ms: int) -> str:
            release.wait(5)
            return message

    w = Worker(plane.endpoint, {"Echo": Echo.Processor(Slow())}, mode="threads", concurrency=2)
    t, _ = start(w)
    plane.recv_cmd(wire.READY)
    plane.ack()
    plane.request(9, encode_call(0, "slow", 9, message="late", sleep_ms=0))
    time.sleep(0)  # (the request is queued in ZeroMQ either way)
    w.stop()
    plane.recv_cmd(wire.DISCONNECT)
    assert t.is_alive(), "left with a call in flight"
    release.set()
    r = plane.recv_cmd(wire.REPLY)
    assert decode_reply(0, "slow", r[2])[2].success == "late"
    assert t.is_alive(), "left before the data plane's goodbye"
    plane.send(b"\x01\x05", b"bye")
    t.join(5)
    assert not t.is_alive()


def test_a_refused_ready_ends_run_with_the_reason(plane: Plane, handler: Handler) -> None:
    w = Worker(plane.endpoint, {"Echo": Echo.Processor(handler)})
    t, errors = start(w)
    plane.recv_cmd(wire.READY)
    plane.send(b"\x01\x05", b"refused: wrong or missing worker token")
    t.join(5)
    assert len(errors) == 1 and isinstance(errors[0], Refused)
    assert "wrong or missing worker token" in str(errors[0])


def test_a_disconnect_after_registration_registers_again(plane: Plane, handler: Handler) -> None:
    w = Worker(plane.endpoint, {"Echo": Echo.Processor(handler)})
    t, _ = start(w)
    plane.recv_cmd(wire.READY)
    plane.ack()
    plane.send(b"\x01\x05", b"unknown worker, send READY")  # e.g. the data plane restarted
    plane.recv_cmd(wire.READY)
    plane.ack()
    plane.request(1, encode_call(0, "echo", 1, message="again"))
    assert decode_reply(0, "echo", plane.recv_cmd(wire.REPLY)[2])[2].success == "again"
    leave(plane, w, t)


def test_heartbeats_follow_the_data_planes_interval(plane: Plane, handler: Handler) -> None:
    w = Worker(plane.endpoint, {"Echo": Echo.Processor(handler)})
    t, _ = start(w)
    plane.recv_cmd(wire.READY)
    plane.ack(heartbeat_ms=50)
    started = time.monotonic()
    beats = 0
    while beats < 5:
        frames = plane.recv(timeout=1.0)
        assert frames[0][1] == wire.HEARTBEAT, "the worker re-registered: it found us silent"
        plane.send(b"\x01\x04")  # ours, so it does not find us silent
        beats += 1
    # 5 intervals of 50 ms; a worker still at the default 1 s would need 5 s.
    assert time.monotonic() - started < 2.0, "heartbeats slower than the 50 ms interval"
    leave(plane, w, t)


def test_the_handler_sees_its_deadline_and_an_expired_call_is_not_run(plane: Plane) -> None:
    seen: list[float] = []

    class Timed(Handler):
        def echo(self, message: str) -> str:
            call = current_call()
            assert call is not None
            seen.append(call.remaining())
            return message

    w = Worker(plane.endpoint, {"Echo": Echo.Processor(Timed())})
    t, _ = start(w)
    plane.recv_cmd(wire.READY)
    plane.ack()
    plane.request(1, encode_call(0, "echo", 1, message="a"), timeout_ms=2000)
    assert decode_reply(0, "echo", plane.recv_cmd(wire.REPLY)[2])[0] == TMessageType.REPLY
    assert len(seen) == 1 and 0 < seen[0] <= 2.0
    plane.request(2, encode_call(0, "echo", 2, message="b"), timeout_ms=0)
    mtype, seqid, e = decode_reply(0, "echo", plane.recv_cmd(wire.REPLY)[2])
    assert (mtype, seqid) == (TMessageType.EXCEPTION, 2)
    assert "deadline passed" in e.message
    assert len(seen) == 1, "an expired call was run"
    assert current_call() is None
    leave(plane, w, t)


def test_version_2_headers_reach_the_handler_and_reply_headers_go_back(plane: Plane) -> None:
    seen: list[bytes | None] = []

    class Headed(Handler):
        def echo(self, message: str) -> str:
            call = current_call()
            assert call is not None
            seen.append(call.header(b"TraceParent"))
            assert call.set_reply_header(b"x-served-by", b"py")
            return message

    w = Worker(plane.endpoint, {"Echo": Echo.Processor(Headed())})
    t, _ = start(w)
    assert plane.recv_cmd(wire.READY)[0] == b"\x03\x01"
    plane.send(b"\x02\x01", struct.pack(">I", 1000), b"w1")  # acknowledged as version 2
    meta = struct.pack(">QIB", 5, 5000, 0)
    headers = wire.encode_headers([(b"traceparent", b"00-ab-cd-01")])
    plane.send(b"\x02\x02", meta, b"Echo", encode_call(0, "echo", 5, message="h"), headers)
    r = plane.recv_cmd(wire.REPLY)
    assert r[0] == b"\x02\x03" and len(r) == 4, r
    assert wire.decode_headers(r[3]) == ((b"x-served-by", b"py"),)
    assert decode_reply(0, "echo", r[2])[2].success == "h"
    assert seen == [b"00-ab-cd-01"]
    # A call without headers: the handler sees none, still may answer some.
    plane.request(6, encode_call(0, "echo", 6, message="plain"))
    r = plane.recv_cmd(wire.REPLY)
    assert seen[-1] is None and wire.decode_headers(r[3]) == ((b"x-served-by", b"py"),)
    leave(plane, w, t)


def test_a_version_1_data_plane_gets_ready_version_1_and_no_reply_headers(plane: Plane) -> None:
    class Headed(Handler):
        def echo(self, message: str) -> str:
            call = current_call()
            assert call is not None
            assert not call.set_reply_header(b"x", b"y"), "a version 1 data plane cannot take reply headers"
            return message

    w = Worker(plane.endpoint, {"Echo": Echo.Processor(Headed())})
    t, errors = start(w)
    # One version lower at a time, on the same connection: 3, then 2, then 1.
    assert plane.recv_cmd(wire.READY)[0] == b"\x03\x01"
    plane.send(b"\x01\x05", b"refused: unsupported worker protocol version 3 (this side speaks version 1)")
    assert plane.recv_cmd(wire.READY)[0] == b"\x02\x01"
    plane.send(b"\x01\x05", b"refused: unsupported worker protocol version 2 (this side speaks version 1)")
    assert plane.recv_cmd(wire.READY)[0] == b"\x01\x01"
    plane.ack()
    plane.request(1, encode_call(0, "echo", 1, message="v1"))
    r = plane.recv_cmd(wire.REPLY)
    assert r[0] == b"\x01\x03" and len(r) == 3
    assert decode_reply(0, "echo", r[2])[2].success == "v1"
    leave(plane, w, t)
    assert not errors


def test_asyncio_mode_runs_coroutine_handlers_at_once(plane: Plane) -> None:
    import asyncio

    class Async(Handler):
        def __init__(self) -> None:
            super().__init__()
            self.arrived = 0

        async def slow(self, message: str, sleep_ms: int) -> str:  # type: ignore[override]
            call = current_call()
            assert call is not None and call.service == "Echo"
            self.arrived += 1
            while self.arrived < 3:  # all three must be in flight together
                await asyncio.sleep(0.001)
            return message

    w = Worker(plane.endpoint, {"Echo": Echo.Processor(Async())}, mode="asyncio", concurrency=3)
    t, _ = start(w)
    assert plane.recv_cmd(wire.READY)[1] == struct.pack(">I", 3)
    plane.ack()
    for i in range(3):
        plane.request(i, encode_call(0, "slow", i, message=str(i), sleep_ms=0))
    replies = {}
    for _ in range(3):
        r = plane.recv_cmd(wire.REPLY)
        replies[struct.unpack(">Q", r[1])[0]] = decode_reply(0, "slow", r[2])[2].success
    assert replies == {0: "0", 1: "1", 2: "2"}
    leave(plane, w, t)
    assert not t.is_alive()


def test_credit_is_concurrency_plus_prefetch(handler: Handler) -> None:
    p = {"Echo": Echo.Processor(handler)}
    assert Worker("tcp://127.0.0.1:1", p).credit == 17
    assert Worker("tcp://127.0.0.1:1", p, prefetch=0).credit == 1
    assert Worker("tcp://127.0.0.1:1", p, mode="threads", concurrency=4).credit == 8
    assert Worker("tcp://127.0.0.1:1", p, mode="asyncio", concurrency=50).credit == 50
    with pytest.raises(ValueError, match="prefetch"):
        Worker("tcp://127.0.0.1:1", p, prefetch=-1)


def test_settings_that_cannot_work_are_refused_at_once(handler: Handler) -> None:
    p = {"Echo": Echo.Processor(handler)}
    with pytest.raises(ValueError, match="inline mode"):
        Worker("tcp://127.0.0.1:1", p, concurrency=2)
    with pytest.raises(ValueError, match="mode must be"):
        Worker("tcp://127.0.0.1:1", p, mode="fibers")
    with pytest.raises(ValueError, match="at least one service"):
        Worker("tcp://127.0.0.1:1", {})
    with pytest.raises(ValueError, match="asyncio mode opens its own ZeroMQ context"):
        Worker("tcp://127.0.0.1:1", p, mode="asyncio", concurrency=2, zmq_context=zmq.Context.instance())
    with pytest.raises(ValueError, match="at least one endpoint"):
        Worker([], p)
    with pytest.raises(ValueError, match="tcp:// needs HOST:PORT"):
        Worker(["ipc:///a", "tcp://dp.test"], p)
    with pytest.raises(ValueError, match="resolve_interval must be between"):
        Worker("tcp://dp.test:1", p, resolve_interval=0)
    with pytest.raises(ValueError, match="cannot use the hosts file /no/such/file"):
        Worker("tcp://dp.test:1", p, hosts_file="/no/such/file")


def spawn_child(plane: Plane, mode: str, endpoints: str | None = None) -> subprocess.Popen[str]:
    """child_worker.py serving Echo in `mode` for `plane` (or `endpoints`,
    comma-separated), in its own process."""
    here = os.path.dirname(os.path.abspath(__file__))
    return subprocess.Popen(
        [sys.executable, os.path.join(here, "child_worker.py"), endpoints or plane.endpoint, mode],
        cwd=here,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_for_line(child: subprocess.Popen[str], line: str, timeout: float = 10.0) -> None:
    """Reads the child's output until `line`, for at most `timeout` seconds."""
    assert child.stdout is not None
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        ready, _, _ = select.select([child.stdout], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        got = child.stdout.readline()
        if not got:
            break  # the child ended
        if got.strip() == line:
            return
        seen.append(got)
    raise AssertionError(f"no {line!r} from the worker; it printed: {''.join(seen)[-2000:]}")


@pytest.mark.parametrize("mode", ["gevent", "eventlet", "twisted"])
def test_a_call_that_arrives_while_another_is_answered_is_not_left_waiting(plane: Plane, mode: str) -> None:
    """ZMQ_FD is edge-triggered: a reply's send consumes the signal of a call
    that arrived meanwhile. The loop must still see that call at once, not
    at its next timer (pyzmq's green poller: up to 1.33 s; here the timer is
    10 s, half the heartbeat interval the plane gives)."""
    child = spawn_child(plane, mode)
    try:
        plane.recv_cmd(wire.READY, timeout=30)
        plane.ack(heartbeat_ms=20_000)
        plane.request(1, encode_call(0, "slow", 1, message="busy", sleep_ms=300))
        wait_for_line(child, "slow busy started")
        plane.request(2, encode_call(0, "echo", 2, message="next"))  # arrives while call 1 runs
        first = plane.recv_cmd(wire.REPLY, timeout=5)
        answered = time.monotonic()
        second = plane.recv_cmd(wire.REPLY, timeout=15)
        waited = time.monotonic() - answered
        assert [struct.unpack(">Q", r[1])[0] for r in (first, second)] == [1, 2]
        assert decode_reply(0, "echo", second[2])[2].success == "next"
        assert waited < 0.8, f"call 2 waited {waited:.2f}s after call 1 was answered"
        child.send_signal(signal.SIGTERM)  # no handler installed: the process just ends
    finally:
        child.kill()
        child.communicate(timeout=10)


@pytest.mark.parametrize("mode", ["eventlet", "twisted"])
def test_modes_in_their_own_process_serve_and_leave_gracefully(plane: Plane, mode: str) -> None:
    child = spawn_child(plane, mode)
    try:
        plane.recv_cmd(wire.READY, timeout=30)
        plane.ack()
        for i in range(3):
            plane.request(i, encode_call(i % 3, "echo", i, message=f"m{i}"), protocol=i % 3)
        replies = {struct.unpack(">Q", r[1])[0]: r[2] for r in (plane.recv_cmd(wire.REPLY) for _ in range(3))}
        assert {i: decode_reply(i % 3, "echo", m)[2].success for i, m in replies.items()} == {
            i: f"m{i}" for i in range(3)
        }
        # Refused later (an eviction) registers again; refused at first ends the process.
        plane.send(b"\x01\x05", b"evicted")
        plane.recv_cmd(wire.READY)
    finally:
        child.kill()
        child.communicate(timeout=10)


@pytest.mark.parametrize("mode", ["eventlet", "twisted"])
def test_a_refused_ready_ends_the_process_with_the_reason(plane: Plane, mode: str) -> None:
    child = spawn_child(plane, mode)
    plane.recv_cmd(wire.READY, timeout=30)
    plane.send(b"\x01\x05", b"refused: wrong or missing worker token")
    out, _ = child.communicate(timeout=15)
    assert child.returncode == 2, out
    assert "refused: refused: wrong or missing worker token" in out


def test_credit_moves_to_a_new_data_plane_only_once_answered_and_its_calls_finished(
    plane: Plane, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Two data planes driven by hand: A (tcp) registered with the whole
    credit and 5 calls running; B (ipc, first in endpoint order: the larger
    share) comes up. A is sent CREDIT(3) and B nothing until A answers; then
    B gets READY with only what A's running calls leave free, and is raised
    (CREDIT, one unanswered at a time) as they finish."""
    release = threading.Event()

    class Gated(Handler):
        def slow(self, message: str, sleep_ms: int) -> str:
            release.wait(10)
            return message

    a = plane
    ctx: zmq.Context[Any] = zmq.Context()
    b = unbound_ipc_plane(ctx, tmp_path_factory)
    w = Worker([a.endpoint, b.endpoint], {"Echo": Echo.Processor(Gated())}, mode="threads", concurrency=5, prefetch=2)
    t, errors = start(w)
    try:
        ready = a.recv_cmd(wire.READY)
        assert ready[0] == b"\x03\x01" and ready[1] == struct.pack(">I", 7)  # alone: all of it, at once
        a.send(b"\x03\x01", struct.pack(">I", 1000), b"wa")
        for i in range(5):
            a.request(i, encode_call(0, "slow", i, message=str(i), sleep_ms=0))
        b.sock.bind(b.endpoint)
        assert a.recv_cmd(wire.CREDIT) == [b"\x03\x06", struct.pack(">I", 3)]
        assert not b.sock.poll(300), "B was sent something before A answered its lowering"
        a.send(b"\x03\x06", struct.pack(">I", 3))
        # A answered, but its 5 calls still run: 7 - 5 free.
        ready = b.recv_cmd(wire.READY)
        assert ready[0] == b"\x03\x01" and ready[1] == struct.pack(">I", 2)
        b.send(b"\x03\x01", struct.pack(">I", 1000), b"wb")
        release.set()
        replies = {struct.unpack(">Q", a.recv_cmd(wire.REPLY)[1])[0] for _ in range(5)}
        assert replies == set(range(5))
        credit = 2
        while credit < 4:
            frames = b.recv_cmd(wire.CREDIT)
            (raised,) = struct.unpack(">I", frames[1])
            assert credit < raised <= 4
            assert not b.sock.poll(50), "a second CREDIT before the first was answered"
            b.send(b"\x03\x06", frames[1])
            credit = raised
        b.request(1, encode_call(0, "echo", 1, message="via b"))
        assert decode_reply(0, "echo", b.recv_cmd(wire.REPLY)[2])[2].success == "via b"
        assert w.credit_shares() == {a.endpoint: 3, b.endpoint: 4}
        leave(a, w, t, b)
        assert errors == []
        assert w.peak_held == 5
    finally:
        release.set()
        w.stop()
        b.sock.close()
        ctx.term()


def test_a_version_2_data_plane_keeps_its_ready_credit(plane: Plane) -> None:
    """No CREDIT to a data plane that answered READY as version 2."""
    w = Worker(plane.endpoint, {"Echo": Echo.Processor(Handler())}, prefetch=3)
    t, errors = start(w)
    plane.recv_cmd(wire.READY)
    plane.send(b"\x02\x01", struct.pack(">I", 1000), b"w1")
    plane.request(1, encode_call(0, "echo", 1, message="v2"))
    assert decode_reply(0, "echo", plane.recv_cmd(wire.REPLY)[2])[2].success == "v2"
    leave(plane, w, t)  # no CREDIT in between: recv_cmd would have failed on it
    assert errors == []


REFUSE_V3 = b"refused: unsupported worker protocol version 3 (this side speaks versions 1 to 2)"


def register_as_version_2(p: Plane, credit: int, timeout: float = 5.0) -> None:
    """The data plane of the previous release: READY version 3 refused,
    READY version 2 (same credit, same connection) acknowledged."""
    ready = p.recv_cmd(wire.READY, timeout)
    assert ready[0] == b"\x03\x01" and ready[1] == struct.pack(">I", credit), ready
    p.send(b"\x01\x05", REFUSE_V3)
    ready = p.recv_cmd(wire.READY)
    assert ready[0] == b"\x02\x01" and ready[1] == struct.pack(">I", credit), ready
    p.send(b"\x02\x01", struct.pack(">I", 10_000), b"wa")


def quiet(p: Plane, what: str, seconds: float = 0.3) -> None:
    """Nothing reaches `p` for `seconds` (the worker must not send it anything yet)."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if p.sock.poll(max(1, int(left * 1000))):
            raise AssertionError(f"{what}: got {p.recv(0.1)}")


@pytest.mark.parametrize("mode", ["inline", "threads", "asyncio"])
def test_an_older_data_plane_is_registered_again_to_share_the_credit(
    plane: Plane, tmp_path_factory: pytest.TempPathFactory, mode: str
) -> None:
    """Rule 6 of the credit sharing: A speaks version 2 (no CREDIT) and holds
    the whole credit; B (version 3) comes up. A is left gracefully (its calls
    finished, its goodbye awaited: no CREDIT ever), B gets the credit, and A
    is connected to again and registered with its share once B has given it
    up by CREDIT."""
    release = threading.Event()
    started: list[str] = []

    class Gated(Handler):
        def slow(self, message: str, sleep_ms: int) -> str:
            started.append(message)
            release.wait(10)
            return message

    class AsyncGated(Handler):
        async def slow(self, message: str, sleep_ms: int) -> str:  # type: ignore[override]
            import asyncio

            started.append(message)
            deadline = time.monotonic() + 10
            while not release.is_set() and time.monotonic() < deadline:
                await asyncio.sleep(0.005)
            return message

    handler = AsyncGated() if mode == "asyncio" else Gated()
    concurrency = 1 if mode == "inline" else 2
    a = plane
    ctx: zmq.Context[Any] = zmq.Context()
    b = unbound_ipc_plane(ctx, tmp_path_factory)
    w = Worker(
        [a.endpoint, b.endpoint],
        {"Echo": Echo.Processor(handler)},
        mode=mode,
        concurrency=concurrency,
        prefetch=6 - concurrency,
    )
    t, errors = start(w)
    try:
        register_as_version_2(a, 6)  # alone: the whole credit
        # Calls in flight at A while it is left (inline mode: one call blocks the loop, so none).
        calls = 0 if mode == "inline" else 2
        for i in range(calls):
            a.request(i, encode_call(0, "slow", i, message=str(i), sleep_ms=0))
        deadline = time.monotonic() + 5
        while len(started) < calls:
            assert time.monotonic() < deadline, f"{len(started)} of {calls} calls started"
            release.wait(0.005)
        b.sock.bind(b.endpoint)
        # A cannot take CREDIT (recv_cmd fails on anything but HEARTBEAT): it is left.
        assert a.recv_cmd(wire.DISCONNECT)[1] == b"worker registering again with a smaller share"
        a.send(b"\x01\x05", b"bye")
        if calls:
            quiet(b, "B was sent something while A's calls still ran")
            release.set()
            replies = {struct.unpack(">Q", a.recv_cmd(wire.REPLY)[1])[0] for _ in range(calls)}
            assert replies == set(range(calls))
        # A's connection is closed: B gets the credit, A is connected to again.
        ready = b.recv_cmd(wire.READY)
        assert ready[0] == b"\x03\x01"
        (credit_b,) = struct.unpack(">I", ready[1])
        assert credit_b in (3, 6), credit_b
        b.send(b"\x03\x01", struct.pack(">I", 10_000), b"wb")
        if credit_b == 6:
            # Lowered for A, and A gets nothing before B has answered.
            assert b.recv_cmd(wire.CREDIT) == [b"\x03\x06", struct.pack(">I", 3)]
            quiet(a, "A was sent something before B answered its lowering")
            b.send(b"\x03\x06", struct.pack(">I", 3))
        register_as_version_2(a, 3)
        assert w.credit_shares() == {a.endpoint: 3, b.endpoint: 3}
        release.set()
        # Both serve, and stay as they are: no CREDIT to A, no second leaving.
        for p, i in ((a, 10), (b, 11)):
            p.request(i, encode_call(0, "echo", i, message=f"m{i}"))
            assert decode_reply(0, "echo", p.recv_cmd(wire.REPLY)[2])[2].success == f"m{i}"
        leave(a, w, t, b)
        assert errors == []
        assert w.peak_held <= 6
    finally:
        release.set()
        w.stop()
        t.join(5)
        b.sock.close()
        ctx.term()


@pytest.mark.parametrize("mode", ["gevent", "eventlet", "twisted"])
def test_an_older_data_plane_is_registered_again_in_the_other_modes(
    plane: Plane, tmp_path_factory: pytest.TempPathFactory, mode: str
) -> None:
    """The same in the modes that run in a process of their own (credit 2:
    concurrency 2, no prefetch): A left as soon as B waits, and registered
    again with its share once B has answered its lowering."""
    a = plane
    ctx: zmq.Context[Any] = zmq.Context()
    b = unbound_ipc_plane(ctx, tmp_path_factory)
    child = spawn_child(a, mode, f"{a.endpoint},{b.endpoint}")
    try:
        register_as_version_2(a, 2, timeout=30)
        a.request(1, encode_call(0, "echo", 1, message="before"))
        assert decode_reply(0, "echo", a.recv_cmd(wire.REPLY)[2])[2].success == "before"
        b.sock.bind(b.endpoint)
        a.recv_cmd(wire.DISCONNECT)
        a.send(b"\x01\x05", b"bye")
        ready = b.recv_cmd(wire.READY)
        assert ready[0] == b"\x03\x01" and ready[1] == struct.pack(">I", 2)
        b.send(b"\x03\x01", struct.pack(">I", 10_000), b"wb")
        assert b.recv_cmd(wire.CREDIT) == [b"\x03\x06", struct.pack(">I", 1)]
        b.send(b"\x03\x06", struct.pack(">I", 1))
        register_as_version_2(a, 1)
        for p, i in ((a, 10), (b, 11)):
            p.request(i, encode_call(0, "echo", i, message=f"m{i}"))
            assert decode_reply(0, "echo", p.recv_cmd(wire.REPLY)[2])[2].success == f"m{i}"
    finally:
        child.kill()
        child.communicate(timeout=10)
        b.sock.close()
        ctx.term()


def test_a_data_plane_that_cannot_be_reached_is_logged_and_tried_again(
    handler: Handler, caplog: pytest.LogCaptureFixture
) -> None:
    """Nothing listens at the endpoint: the worker says so after 2 s (and
    keeps trying: ZeroMQ reconnects by itself), then registers as soon as a
    data plane binds there."""
    import tempfile

    endpoint = f"ipc://{tempfile.mkdtemp(prefix='tw', dir='/tmp')}/later.sock"
    w = Worker(endpoint, {"Echo": Echo.Processor(handler)}, prefetch=0)
    caplog.set_level("WARNING", logger="thriftworker")
    t, _ = start(w)
    deadline = time.monotonic() + 10
    while "cannot reach the data plane" not in caplog.text:
        assert time.monotonic() < deadline, "no 'cannot reach' warning"
        time.sleep(0.05)
    assert endpoint in caplog.text
    ctx = zmq.Context.instance()
    plane = Plane(ctx)
    plane.sock.bind(endpoint)
    try:
        plane.recv_cmd(wire.READY, timeout=10)
        plane.ack()
        leave(plane, w, t)
    finally:
        plane.sock.close(linger=0)
