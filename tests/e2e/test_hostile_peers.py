"""Hostile peers on the worker endpoint: whoever can connect to it must not be
able to stall, crash or impersonate anything. Each test is one finding:

1. an unregistered peer that floods HEARTBEATs and never reads;
2. a peer announcing a huge ZMTP frame;
3. connections that never complete the ZMTP handshake (and descriptor
   exhaustion by them);
4. a peer taking over a registered worker's ZeroMQ identity.

The worker endpoint is `tcp://127.0.0.1:0` (the real port comes from the
ready file). `[workers].handshake_timeout` and `[workers].max_message_size`
are new config keys; with HOSTILE_BASELINE=1 they are left out of the config,
so a binary that predates them (and rejects unknown keys) still starts and the
test shows what the finding itself does to it. Tests 1, 2 and 4 use no new key
(the defaults must protect).
"""

from __future__ import annotations

import os
import selectors
import signal
import socket
import threading
import time

import pytest
import zmq
from thrift.transport import TTransport

from harness import Echo, TMessageType, encode_message, make_protocol, thrift_client, wait_for
from hostile import (
    HEARTBEAT,
    REQUEST,
    RawZmtp,
    command_of,
    cpu_share,
    endpoint_addr,
    header,
    heartbeat_frames,
    long_frame_header,
    nofile_limit,
    open_fds,
    probe,
    process_state,
    reply_frames,
    tcp_endpoint,
    zmtp_greeting,
)

BASELINE = os.environ.get("HOSTILE_BASELINE") == "1"
CALL_TIMEOUT = 5.0  # every call of the known-good client is answered within this
PROTOCOL_NAMES = {0: "binary", 1: "lax", 2: "compact"}


def new_keys(**keys: object) -> dict[str, object]:
    """Config keys the fix introduces; none with HOSTILE_BASELINE=1."""
    return {} if BASELINE else keys


def start(dataplane, **workers: object):
    """A data plane whose worker endpoint is tcp on loopback, port 0. No
    backtraces: the output tails show the log, and process_state() the panic
    or allocation failure."""
    return dataplane(endpoint="tcp://127.0.0.1:0", workers=workers, env={"RUST_BACKTRACE": "0"})


def describe(e: BaseException) -> str:
    """An exception, with the socket error thrift-py wraps ("unexpected
    exception" is how it reports a read timeout)."""
    inner = getattr(e, "inner", None)
    return f"{e!r}" + (f" caused by {inner!r}" if inner is not None else "")


def try_echo(dp, text: str, timeout: float = CALL_TIMEOUT) -> str | None:
    """A known-good call on a new connection: None if answered correctly in
    time, else what went wrong."""
    started = time.monotonic()
    try:
        with thrift_client(dp.addr("echo"), timeout=timeout) as client:
            got = client.echo(text)
    except Exception as e:  # noqa: BLE001 - returned as text
        return f"echo({text!r}) not answered after {time.monotonic() - started:.1f}s: {describe(e)}"
    return None if got == text else f"echo({text!r}) answered {got!r}"


def assert_serving(dp, text: str, timeout: float = CALL_TIMEOUT, processes=None) -> None:
    """A known-good call through a real worker, answered correctly in time."""
    error = try_echo(dp, text, timeout)
    if error is not None:
        tails = processes.tails() if processes is not None else dp.tail()
        raise AssertionError(f"{error}; data plane {process_state(dp)}\n{tails}")
    assert dp.alive(), dp.tail()


class GoodClient(threading.Thread):
    """Calls echo in a loop on one connection, each call with its own
    deadline, until stopped or until the first call that is not answered
    correctly in time (a connection whose call timed out is unusable)."""

    def __init__(self, dp, name: str, pace: float = 0.005):
        super().__init__(daemon=True, name=name)
        self.dp = dp
        self.pace = pace
        self.stop = threading.Event()
        self.failed = threading.Event()
        self.ok = 0
        self.failure: str | None = None
        self.longest = 0.0

    def run(self) -> None:
        try:
            with thrift_client(self.dp.addr("echo"), timeout=CALL_TIMEOUT) as client:
                i = 0
                while not self.stop.is_set():
                    text = f"{self.name} {i}"
                    started = time.monotonic()
                    got = client.echo(text)
                    took = time.monotonic() - started
                    self.longest = max(self.longest, took)
                    if got != text:
                        self.failure = f"call {i}: echo({text!r}) answered {got!r}"
                        break
                    self.ok += 1
                    i += 1
                    self.stop.wait(self.pace)
        except Exception as e:  # noqa: BLE001 - recorded, asserted by the test
            self.failure = f"call {self.ok} not answered within {CALL_TIMEOUT}s: {describe(e)}"
        finally:
            if self.failure:
                self.failed.set()

    def finish(self) -> None:
        self.stop.set()
        self.join(CALL_TIMEOUT + 2)
        assert not self.is_alive(), f"{self.name} did not stop"


def wait_calls(client: GoodClient, n: int, timeout: float, context, check: bool = True) -> None:
    """Waits until `client` has made `n` more good calls or has failed (an
    AssertionError if `check`)."""
    target = client.ok + n
    wait_for(lambda: client.ok >= target or client.failed.is_set(), timeout, f"{n} more good calls", context)
    if check:
        assert not client.failed.is_set(), f"{client.failure}\n{context()}"


def assert_terminates(dp) -> None:
    dp.terminate(signal.SIGTERM)
    rc = dp.wait_exit(10)
    assert rc == 0, f"exit status {rc} after SIGTERM\n{dp.tail()}"


# -- 1. unregistered flooder ---------------------------------------------------------

FLOOD_MESSAGES = 600_000
FLOOD_SECONDS = 10.0


def test_unregistered_heartbeat_flood_does_not_stall_dispatch(dataplane, worker, thriftctl, processes):
    """A peer that never sends READY is answered DISCONNECT for every
    HEARTBEAT. If it never reads those answers, they must not pile up until
    the single dispatcher blocks on them: calls through a real worker go on
    being answered during and after the flood."""
    dp = start(dataplane)
    endpoint = tcp_endpoint(dp)
    worker(endpoint=endpoint)
    assert_serving(dp, "before the flood", processes=processes)

    client = GoodClient(dp, "good")
    client.start()
    wait_calls(client, 3, 10, processes.tails)

    flood: dict[str, float] = {"sent": 0, "seconds": 0.0}

    def context() -> str:
        return f"flooder sent {flood['sent']} HEARTBEATs in {flood['seconds']:.1f}s\n{processes.tails()}"

    ctx = zmq.Context()
    flooder = ctx.socket(zmq.DEALER)
    try:
        flooder.setsockopt(zmq.RCVHWM, 10)
        flooder.setsockopt(zmq.RCVBUF, 4096)  # never read: keep what the kernel buffers for us small
        flooder.setsockopt(zmq.SNDHWM, 10_000)
        flooder.setsockopt(zmq.LINGER, 0)
        flooder.connect(endpoint)
        hb = heartbeat_frames()
        started = time.monotonic()
        deadline = started + FLOOD_SECONDS
        while flood["sent"] < FLOOD_MESSAGES and time.monotonic() < deadline and not client.failed.is_set():
            try:
                flooder.send_multipart(hb, zmq.NOBLOCK)
                flood["sent"] += 1
            except zmq.Again:
                flooder.poll(50, zmq.POLLOUT)  # the data plane is not reading: wait for room
        flood["seconds"] = time.monotonic() - started
        # While the flooder is still connected (and still not reading).
        wait_calls(client, 20, 10, context, check=False)
    finally:
        flooder.close(linger=0)
        ctx.term()
    if client.failed.is_set():
        later = try_echo(dp, "on a new connection after the flooder left")
        pytest.fail(
            f"during the flood: {client.failure}; then, after the flooder disconnected: {later or 'answered'}\n{context()}",
            pytrace=False,
        )
    # After it has gone.
    wait_calls(client, 20, 10, context)
    client.finish()
    assert client.failure is None, f"{client.failure}\n{context()}"

    assert_serving(dp, "after the flood", processes=processes)
    assert probe(dp, "/healthz")[0] == 200, dp.tail()
    status, body = probe(dp, "/readyz")
    assert status == 200, f"/readyz {status}: {body}\n{dp.tail()}"
    workers = thriftctl().ok("workers", "list")["workers"]
    assert len(workers) == 1, f"the real worker is still the one registered worker: {workers}"
    assert_terminates(dp)


# -- 2. huge ZMTP frames ---------------------------------------------------------------

HUGE_FRAMES = {
    # a message frame announcing 2^40 bytes (1 TiB) after a complete handshake
    "message_2e40": (True, long_frame_header(1 << 40)),
    # 2^62: representable, reservable in principle, never satisfiable
    "message_2e62": (True, long_frame_header(1 << 62)),
    # the second frame of a multipart message
    "second_frame_2e40": (True, b"\x01\x02" + header(HEARTBEAT) + long_frame_header(1 << 40)),
    # a command frame instead of the READY command, during the handshake
    "handshake_command_2e40": (False, long_frame_header(1 << 40, command=True)),
}


@pytest.mark.parametrize("case", sorted(HUGE_FRAMES))
def test_huge_zmtp_frame_closes_only_that_connection(dataplane, worker, processes, case):
    """The ZMTP decoder must not reserve what a frame header announces: a
    frame over `[workers].max_message_size` closes that connection, and the
    process (and the workers it serves) carry on."""
    handshake, data = HUGE_FRAMES[case]
    dp = start(dataplane)
    addr = endpoint_addr(tcp_endpoint(dp))
    worker(endpoint=tcp_endpoint(dp))
    assert_serving(dp, "before", processes=processes)

    with RawZmtp(addr) as peer:
        if handshake:
            peer.handshake()
        else:
            peer.send(zmtp_greeting())
            peer.read_exact(64)
        peer.send(data + b"abcdefgh")
        closed = peer.closed_by_peer(5)
    assert_serving(dp, "after", processes=processes)
    assert dp.alive(), f"the data plane died: {process_state(dp)}\n{dp.tail()}"
    assert closed, f"{case}: the connection announcing a huge frame was not closed within 5s\n{dp.tail()}"


def test_message_over_max_message_size_closes_connection(dataplane, worker, processes):
    """A frame just over a configured `max_message_size` closes the
    connection as soon as its header is read (no body needed); a real worker
    (whose messages are far smaller) is unaffected. The listeners' frames are
    kept small so that their calls fit in a worker message of that size."""
    limit = 1 << 20
    dp = dataplane(
        endpoint="tcp://127.0.0.1:0",
        workers=new_keys(max_message_size=limit),
        listeners={"echo": {"max_frame_size": 65536}, "mux": {"max_frame_size": 65536}},
        env={"RUST_BACKTRACE": "0"},
    )
    addr = endpoint_addr(tcp_endpoint(dp))
    worker(endpoint=tcp_endpoint(dp))
    with RawZmtp(addr) as peer:
        peer.handshake()
        peer.send(long_frame_header(limit + 1) + b"x" * 1000)
        closed = peer.closed_by_peer(5)
    assert_serving(dp, "after", processes=processes)
    assert closed, f"a {limit + 1}-byte frame (max_message_size {limit}) did not close the connection\n{dp.tail()}"


# -- 3. handshake-less connections -----------------------------------------------------

IDLE_CONNECTIONS = 240


def wait_all_closed(socks: list[socket.socket], timeout: float) -> list[socket.socket]:
    """Reads every socket (discarding data) until the data plane has closed
    each one, or `timeout` passes; returns those still open."""
    sel = selectors.DefaultSelector()
    for s in socks:
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
    still_open = set(socks)
    deadline = time.monotonic() + timeout
    try:
        while still_open:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            for key, _ in sel.select(left):
                s = key.fileobj
                try:
                    data = s.recv(65536)
                except BlockingIOError:
                    continue
                except OSError:  # ECONNRESET and friends: closed
                    data = b""
                if not data:
                    sel.unregister(s)
                    still_open.discard(s)
    finally:
        sel.close()
    return [s for s in socks if s in still_open]


def open_idle(addr: tuple[str, int], n: int) -> list[socket.socket]:
    socks = []
    for _ in range(n):
        s = socket.create_connection(addr, timeout=5)
        socks.append(s)
    return socks


def close_all(socks: list[socket.socket]) -> None:
    for s in socks:
        s.close()


def test_connections_without_handshake_are_closed(dataplane, worker, processes):
    """With `handshake_timeout = "500ms"`, connections that send nothing are
    closed within a few seconds; a registered worker (whose handshake is long
    done) is not affected by the timeout."""
    dp = start(dataplane, **new_keys(handshake_timeout="500ms"))
    endpoint = tcp_endpoint(dp)
    worker(endpoint=endpoint)
    socks = open_idle(endpoint_addr(endpoint), IDLE_CONNECTIONS)
    try:
        opened = time.monotonic()
        left = wait_all_closed(socks, 5.0)
        waited = time.monotonic() - opened
        assert len(left) == 0, (
            f"{len(left)} of {IDLE_CONNECTIONS} connections that never sent a byte are still open "
            f"{waited:.1f}s after they were opened (handshake_timeout 500ms"
            f"{', not set: HOSTILE_BASELINE=1' if BASELINE else ''})\n{dp.tail()}"
        )
    finally:
        close_all(socks)
    assert_serving(dp, "the worker outlives the handshake timeout", processes=processes)
    assert dp.count("worker dead") == 0, dp.tail()


NOFILE = 64
EXHAUSTING_CONNECTIONS = 80


def test_descriptor_exhaustion_does_not_spin(dataplane, worker, processes, short_tmp, monkeypatch):
    """Started with RLIMIT_NOFILE 64, the data plane runs out of descriptors
    when more idle connections arrive than it can hold. It must not spin
    while out of descriptors, and once the handshake timeout has closed them,
    a worker can connect and calls are served again."""
    with nofile_limit(monkeypatch, short_tmp, NOFILE):
        dp = start(dataplane, **new_keys(handshake_timeout="3s"))
    endpoint = tcp_endpoint(dp)
    worker("py", endpoint=endpoint)
    assert_serving(dp, "before", processes=processes)
    fds_before = open_fds(dp.pid)

    socks = open_idle(endpoint_addr(endpoint), EXHAUSTING_CONNECTIONS)
    try:
        # Out of descriptors: a data plane that accepts until EMFILE reaches
        # the limit within moments (one that stops accepting earlier is fine).
        reached = True
        try:
            wait_for(lambda: open_fds(dp.pid) >= NOFILE - 1, 3, "descriptor exhaustion", dp.tail)
        except AssertionError:
            reached = False
        fds = open_fds(dp.pid)
        share = cpu_share(dp.pid, 2.0)
        assert share < 0.5, (
            f"the data plane used {share:.0%} of a core for 2s while {EXHAUSTING_CONNECTIONS} handshake-less "
            f"connections exhausted its {NOFILE} descriptors ({fds_before} open before, {fds} at the window's start, "
            f"limit reached: {reached})\n{dp.tail()}"
        )
        left = wait_all_closed(socks, 15.0)
        assert len(left) == 0, f"{len(left)} idle connections still open 15s later (handshake_timeout 3s)\n{dp.tail()}"
    finally:
        close_all(socks)
    worker("py", endpoint=endpoint)  # a new worker connects and registers
    assert_serving(dp, "after", processes=processes)
    assert dp.alive(), dp.tail()


# -- 4. identity takeover ---------------------------------------------------------------

TOKEN = "hostile-test-token"
FORGED = "FORGED by the attacker"


def forged_answer(message: bytes, protocol: int) -> bytes:
    """A well-formed echo reply to `message` (seqid kept) saying FORGED."""
    kind = PROTOCOL_NAMES.get(protocol, "binary")
    p = make_protocol(kind, TTransport.TMemoryBuffer(message))
    _name, _mtype, seqid = p.readMessageBegin()
    return encode_message("echo", Echo.echo_result(success=f"{FORGED} {seqid}"), seqid, kind, TMessageType.REPLY)


class Attacker(threading.Thread):
    """A pyzmq DEALER with a stolen routing id: it sends HEARTBEATs and blind
    forged REPLYs (request ids 1..100), answers every REQUEST it receives
    with a forged reply, and records what it receives."""

    def __init__(self, endpoint: str, identity: bytes):
        super().__init__(daemon=True, name="attacker")
        self.endpoint = endpoint
        self.identity = identity
        self.stop = threading.Event()
        self.connected = threading.Event()
        self.received: list[str] = []
        self.requests = 0
        self.error: str | None = None

    def run(self) -> None:
        ctx = zmq.Context()
        sock = ctx.socket(zmq.DEALER)
        monitor = None
        try:
            sock.setsockopt(zmq.ROUTING_ID, self.identity)
            sock.setsockopt(zmq.LINGER, 0)
            monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED | zmq.EVENT_CLOSED)
            sock.connect(self.endpoint)
            next_burst = 0.0
            while not self.stop.is_set():
                while monitor.poll(0):
                    monitor.recv_multipart()
                    self.connected.set()  # handshake done (or refused): either way the attempt was made
                now = time.monotonic()
                if now >= next_burst:
                    next_burst = now + 0.2
                    sock.send_multipart(heartbeat_frames(), zmq.NOBLOCK)
                    for request_id in range(1, 101):
                        blind = encode_message(
                            "echo", Echo.echo_result(success=f"{FORGED} blind {request_id}"), 0, "binary", TMessageType.REPLY
                        )
                        sock.send_multipart(reply_frames(request_id, blind), zmq.NOBLOCK)
                if sock.poll(20, zmq.POLLIN):
                    frames = sock.recv_multipart()
                    command = command_of(frames)
                    self.received.append(command)
                    if len(frames) >= 4 and frames[0][1:] == bytes([REQUEST]) and len(frames[1]) == 13:
                        self.requests += 1
                        request_id = int.from_bytes(frames[1][:8], "big")
                        answer = forged_answer(frames[3], frames[1][12])
                        sock.send_multipart(reply_frames(request_id, answer), zmq.NOBLOCK)
        except Exception as e:  # noqa: BLE001 - reported by the test
            self.error = repr(e)
        finally:
            if monitor is not None:
                sock.disable_monitor()
                monitor.close(linger=0)
            sock.close(linger=0)
            ctx.term()


def test_identity_takeover_is_refused(dataplane, worker, thriftctl, processes, short_tmp):
    """A peer that connects with a registered worker's ZeroMQ identity must
    not receive that worker's REQUESTs, and its REPLYs must not reach
    clients: with a worker token configured, the token in READY is what
    makes a worker, and the attacker never had it."""
    path = short_tmp / "worker.token"
    path.write_text(TOKEN + "\n")
    dp = start(dataplane, token_file=str(path))
    endpoint = tcp_endpoint(dp)
    real = worker("py", endpoint=endpoint, token=TOKEN)
    ctl = thriftctl()
    workers = ctl.ok("workers", "list")["workers"]
    assert len(workers) == 1, workers
    identity = bytes.fromhex(workers[0]["identity"])
    assert_serving(dp, "before", processes=processes)

    attacker = Attacker(endpoint, identity)
    attacker.start()
    try:
        wait_for(attacker.connected.is_set, 5, "the attacker's connection attempt", processes.tails)
        answers = []
        with thrift_client(dp.addr("echo"), timeout=CALL_TIMEOUT) as client:
            for i in range(20):
                text = f"call {i}"
                try:
                    answers.append((text, client.echo(text)))
                except Exception as e:  # noqa: BLE001 - reported below
                    answers.append((text, repr(e)))
                    break
    finally:
        attacker.stop.set()
        attacker.join(5)
    assert attacker.error is None, attacker.error
    forged = [(sent, got) for sent, got in answers if FORGED in got]
    wrong = [(sent, got) for sent, got in answers if got != sent]
    summary = (
        f"attacker received {attacker.requests} REQUEST(s) and {attacker.received.count('HEARTBEAT')} HEARTBEAT(s) "
        f"(messages: {sorted(set(attacker.received))}); {len(forged)} of {len(answers)} calls answered by it"
    )
    assert not forged, f"forged replies reached the client: {forged[:5]}\n{summary}\n{processes.tails()}"
    assert not wrong, f"calls not answered correctly: {wrong[:5]}\n{summary}\n{processes.tails()}"
    assert attacker.requests == 0, f"the attacker received REQUESTs\n{summary}"
    assert set(attacker.received) <= {"DISCONNECT"}, f"the attacker got more than a DISCONNECT\n{summary}"
    assert real.alive(), processes.tails()
    assert_serving(dp, "after", processes=processes)
