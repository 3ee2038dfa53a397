"""A black-box chaos test: for a bounded time, clients send mutated framed
Thrift (bit flips, inserted and deleted bytes, truncations, length fields of
0, negative, huge or wrong), valid and mutated frames interleaved on the same
connection, and garbage connections; hostile peers on the worker endpoint
send random bytes, partial greetings, greetings with a bogus mechanism or
version, READY with a wrong token, unregistered HEARTBEAT/REPLY spam and
oversized frame announcements. Meanwhile a known-good client on its own
connections calls `echo` through a real worker, and every one of its calls
must be answered correctly within CALL_DEADLINE. At the end the process is
alive, healthy, ready, serves a call and exits 0 on SIGTERM.

Everything is seeded: the seed is printed in every assertion message, and
CHAOS_SEED=<n> replays a run (timing still varies). CHAOS_SECONDS changes the
duration (default 8), CHAOS_WORKER_ACTIONS=a,b restricts the worker-endpoint
actions (names in WORKER_ACTIONS), CHAOS_WORKER=py serves the calls with
pyworker.py instead of the Rust echo-worker (mutated calls reach the worker
too, so its robustness is part of what is tested). Traffic is bounded by counts and time, and
only ever sent to 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable

import pytest
import zmq

from harness import Calc, Echo, TMessageType, encode_message, frame, thrift_client
from hostile import (
    HEARTBEAT,
    RawZmtp,
    endpoint_addr,
    header,
    long_frame_header,
    probe,
    process_state,
    ready_frames,
    reply_frames,
    tcp_endpoint,
    zmtp_frame,
    zmtp_greeting,
    zmtp_message,
    zmtp_ready,
)

DURATION = float(os.environ.get("CHAOS_SECONDS", "8"))
WORKER_KIND = os.environ.get("CHAOS_WORKER", "rust")  # the real worker: "rust" (echo-worker) or "py" (pyworker.py)
CALL_DEADLINE = 2.0  # every call of the known-good client is answered within this
TOKEN = "chaos-worker-token"
MAX_FRAME = 65536  # the listeners' max_frame_size: "huge" lengths are over it, some under
MUTANT_CLIENTS = 3
MAX_FRAMES_PER_MUTANT = 4000
GARBAGE_CONNECTIONS = 300
WORKER_PORT_ACTIONS = 400
SPAM_MESSAGES = 2000  # per unregistered spammer: far below anything that could fill a queue


def seed_for_run() -> int:
    value = os.environ.get("CHAOS_SEED")
    return int(value) if value else random.SystemRandom().randrange(1 << 32)


# -- frames: valid calls and their mutations -----------------------------------------


def random_text(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789 -_éü€") for _ in range(n))


def valid_payload(rng: random.Random, protocol: str, multiplexed: bool) -> bytes:
    """A complete Thrift message in `protocol`: a call of Echo (or, on the
    multiplexed listener, of Echo or Calc by their multiplexed names)."""
    seqid = rng.randrange(-(1 << 31), 1 << 31)
    kind = rng.random()
    prefix = "Echo:" if multiplexed else ""
    if multiplexed and kind < 0.2:
        return encode_message("Calc:add", Calc.add_args(a=rng.randrange(-1000, 1000), b=rng.randrange(1000)), seqid, protocol)
    if kind < 0.6:
        text = random_text(rng, rng.choice((0, 1, 5, 50, 300, 2000)))
        return encode_message(prefix + "echo", Echo.echo_args(message=text), seqid, protocol)
    if kind < 0.75:
        text = random_text(rng, 10)
        return encode_message(prefix + "notify", Echo.notify_args(message=text), seqid, protocol, TMessageType.ONEWAY)
    if kind < 0.9:
        return encode_message(prefix + "whoami", None, seqid, protocol)
    return encode_message(prefix + "fail", Echo.fail_args(message=random_text(rng, 8), code=rng.randrange(100)), seqid, protocol)


MUTATIONS = (
    "bitflip", "bitflips", "insert", "delete", "truncate", "duplicate", "header_byte",
    "len_zero", "len_negative", "len_huge", "len_plus", "len_minus", "len_random",
)  # fmt: skip


def mutate(rng: random.Random, payload: bytes) -> tuple[str, bytes]:
    """One mutation of a framed message; returns (name, bytes on the wire)."""
    data = bytearray(payload)
    length = len(data)
    op = rng.choice(MUTATIONS)
    if op in ("bitflip", "bitflips") and data:
        for _ in range(1 if op == "bitflip" else rng.randint(2, 8)):
            i = rng.randrange(len(data))
            data[i] ^= 1 << rng.randrange(8)
    elif op == "insert":
        i = rng.randrange(len(data) + 1)
        data[i:i] = rng.randbytes(rng.randint(1, 16))
        length = len(data)  # a consistent length: the content is what changed
    elif op == "delete" and data:
        i = rng.randrange(len(data))
        del data[i : i + rng.randint(1, 16)]
        length = len(data)
    elif op == "truncate":
        data = data[: rng.randrange(len(data) + 1)]  # the frame's length still says the whole
    elif op == "len_zero":
        length = 0
    elif op == "len_negative":
        length = rng.choice((-1, -5, -(1 << 31)))
    elif op == "len_huge":
        length = rng.choice((MAX_FRAME + 1, 1 << 24, (1 << 31) - 1))
    elif op == "len_plus":
        length = len(data) + rng.randint(1, 64)
    elif op == "len_minus":
        length = max(len(data) - rng.randint(1, 64), 1)
    elif op == "len_random":
        length = rng.randrange(-(1 << 31), 1 << 31)
    elif op == "header_byte" and data:
        data[rng.randrange(min(len(data), 12))] = rng.randrange(256)
    elif op == "duplicate" and data:
        i = rng.randrange(len(data))
        data[i:i] = data[i : i + rng.randint(1, 32)]
        length = len(data)
    return op, struct.pack(">i", length) + bytes(data)


# -- the actors ---------------------------------------------------------------------


class Actor(threading.Thread):
    """A thread that acts until its deadline or until told to stop, and
    keeps the first unexpected error it meets (a bug in the test itself)."""

    def __init__(self, name: str, seed: int, deadline: float, stop: threading.Event):
        super().__init__(daemon=True, name=name)
        self.rng = random.Random(seed)
        self.deadline = deadline
        self.stop_event = stop
        self.counts: Counter[str] = Counter()
        self.error: str | None = None

    def running(self) -> bool:
        return not self.stop_event.is_set() and time.monotonic() < self.deadline

    def run(self) -> None:
        try:
            self.act()
        except Exception as e:  # noqa: BLE001 - reported by the test
            self.error = f"{self.name}: {e!r}"

    def act(self) -> None:
        raise NotImplementedError


def drain(sock: socket.socket) -> bool:
    """Reads whatever the data plane has sent, without waiting; False once
    the connection is closed."""
    sock.setblocking(False)
    try:
        while True:
            try:
                chunk = sock.recv(65536)
            except BlockingIOError:
                return True
            except OSError:
                return False
            if not chunk:
                return False
    finally:
        sock.setblocking(True)


class MutantClient(Actor):
    """Valid and mutated frames interleaved on one connection; a new
    connection whenever the data plane closes the current one."""

    def __init__(self, name, seed, deadline, stop, addrs: list[tuple[tuple[str, int], bool]]):
        super().__init__(name, seed, deadline, stop)
        self.addrs = addrs

    def act(self) -> None:
        sent = 0
        while self.running() and sent < MAX_FRAMES_PER_MUTANT:
            addr, multiplexed = self.rng.choice(self.addrs)
            protocol = self.rng.choice(("binary", "lax", "compact"))
            try:
                sock = socket.create_connection(addr, timeout=2)
            except OSError as e:
                self.counts[f"connect failed: {e.__class__.__name__}"] += 1
                self.stop_event.wait(0.05)
                continue
            self.counts["connections"] += 1
            with sock:
                for _ in range(self.rng.randint(1, 60)):
                    if not self.running():
                        break
                    payload = valid_payload(self.rng, protocol, multiplexed)
                    if self.rng.random() < 0.5:
                        wire, what = frame(payload), "valid"
                    else:
                        what, wire = mutate(self.rng, payload)
                    try:
                        if self.rng.random() < 0.1 and len(wire) > 2:
                            cut = self.rng.randrange(1, len(wire))
                            sock.sendall(wire[:cut])
                            sock.sendall(wire[cut:])
                        else:
                            sock.sendall(wire)
                    except OSError:
                        self.counts["closed by the data plane"] += 1
                        break
                    sent += 1
                    self.counts[what] += 1
                    if not drain(sock):
                        self.counts["closed by the data plane"] += 1
                        break
                    self.stop_event.wait(0.002)


class GarbageClient(Actor):
    """Connections to the listeners that send random bytes, then close."""

    def __init__(self, name, seed, deadline, stop, addrs: list[tuple[str, int]]):
        super().__init__(name, seed, deadline, stop)
        self.addrs = addrs

    def act(self) -> None:
        for _ in range(GARBAGE_CONNECTIONS):
            if not self.running():
                return
            try:
                with socket.create_connection(self.rng.choice(self.addrs), timeout=2) as sock:
                    sock.sendall(self.rng.randbytes(self.rng.choice((1, 3, 4, 7, 64, 1000, 5000))))
                    drain(sock)
                self.counts["garbage connections"] += 1
            except OSError as e:
                self.counts[f"garbage {e.__class__.__name__}"] += 1
            self.stop_event.wait(0.01)


class WorkerPortPeer(Actor):
    """Hostile peers on the worker endpoint, one short connection each."""

    def __init__(self, name, seed, deadline, stop, endpoint: str, actions: list[str]):
        super().__init__(name, seed, deadline, stop)
        self.endpoint = endpoint
        self.addr = endpoint_addr(endpoint)
        self.actions = actions
        self.ctx = zmq.Context()

    def act(self) -> None:
        try:
            for _ in range(WORKER_PORT_ACTIONS):
                if not self.running():
                    return
                action = self.rng.choice(self.actions)
                try:
                    WORKER_ACTIONS[action](self)
                    self.counts[action] += 1
                except (OSError, TimeoutError):
                    self.counts[f"{action}: connection error"] += 1
                self.stop_event.wait(0.01)
        finally:
            self.ctx.destroy(linger=0)

    # raw TCP --------------------------------------------------------------
    def raw(self) -> RawZmtp:
        return RawZmtp(self.addr, timeout=2)

    def random_bytes(self) -> None:
        with self.raw() as peer:
            peer.send(self.rng.randbytes(self.rng.choice((1, 10, 64, 500, 4000))))
            peer.closed_by_peer(0.05)

    def partial_greeting(self) -> None:
        with self.raw() as peer:
            peer.send(zmtp_greeting()[: self.rng.randrange(1, 64)])
            peer.closed_by_peer(0.05)

    def bogus_mechanism(self) -> None:
        mechanism = self.rng.choice((b"CURVE", b"PLAIN", b"GSSAPI", b"XYZZY", self.rng.randbytes(20)))
        with self.raw() as peer:
            peer.send(zmtp_greeting(mechanism=mechanism) + zmtp_ready())
            peer.closed_by_peer(0.2)

    def bad_version(self) -> None:
        version = self.rng.choice(((1, 0), (2, 0), (2, 1), (255, 255), (3, 1)))
        with self.raw() as peer:
            peer.send(zmtp_greeting(version=version) + zmtp_ready())
            peer.closed_by_peer(0.2)

    def bad_ready_command(self) -> None:
        """A valid greeting, then a READY command that is not one: a wrong
        socket type, a truncated property, an unknown command."""
        bodies = (
            zmtp_ready(socket_type=b"PUB"),
            zmtp_ready(socket_type=self.rng.randbytes(8)),
            b"\x04\x07\x05READY\x0b",
            b"\x04\x05\x04PING",
            zmtp_frame(self.rng.randbytes(30)),
        )
        with self.raw() as peer:
            peer.send(zmtp_greeting() + self.rng.choice(bodies))
            peer.closed_by_peer(0.2)

    def oversized_frame(self) -> None:
        length = self.rng.choice((1 << 32, 1 << 40, 1 << 62, (1 << 63) - 1, (1 << 64) - 1, self.rng.randrange(1 << 33, 1 << 64)))
        with self.raw() as peer:
            if self.rng.random() < 0.3:
                peer.send(zmtp_greeting())
                peer.read_exact(64, 2)
                peer.send(long_frame_header(length, command=True))
            else:
                peer.handshake(timeout=2)
                peer.send(long_frame_header(length, more=self.rng.random() < 0.5) + self.rng.randbytes(16))
            peer.closed_by_peer(0.5)

    def raw_worker_messages(self) -> None:
        """A completed handshake, then worker-protocol messages over raw
        ZMTP: READY with a wrong token, malformed headers, REPLY spam."""
        with self.raw() as peer:
            peer.handshake(timeout=2)
            messages = [
                ready_frames(4, b"wrong-" + self.rng.randbytes(4), ["Echo"]),
                [b"\x02\x01", b"\x00\x00\x00\x04", b"", b"Echo"],
                [b"\x01"],
                [header(0x09), b"x"],
                reply_frames(self.rng.randrange(1 << 64), self.rng.randbytes(20)),
                [header(HEARTBEAT), b"trailing"],
            ]
            peer.send(b"".join(zmtp_message(self.rng.choice(messages)) for _ in range(self.rng.randint(1, 50))))
            peer.closed_by_peer(0.05)

    # pyzmq (libzmq) peers -------------------------------------------------
    def dealer(self) -> zmq.Socket:
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVTIMEO, 500)
        sock.connect(self.endpoint)
        return sock

    def wrong_token_ready(self) -> None:
        sock = self.dealer()
        try:
            token = self.rng.choice((b"", b"wrong", TOKEN.encode() + b"x", TOKEN.encode()[:-1]))
            sock.send_multipart(ready_frames(self.rng.randint(1, 65536), token, ["Echo"]))
            with contextlib.suppress(zmq.Again):
                frames = sock.recv_multipart()
                assert frames[0] != header(0x01), f"READY with token {token!r} was accepted: {frames!r}"
        finally:
            sock.close(linger=0)

    def unregistered_spam(self) -> None:
        sock = self.dealer()
        try:
            for _ in range(self.rng.randint(10, SPAM_MESSAGES)):
                if self.rng.random() < 0.5:
                    frames = [header(HEARTBEAT)]
                else:
                    frames = reply_frames(self.rng.randrange(1, 10_000), self.rng.randbytes(self.rng.randint(0, 64)))
                try:
                    sock.send_multipart(frames, zmq.NOBLOCK)
                except zmq.Again:
                    break
                while sock.poll(0, zmq.POLLIN):
                    sock.recv_multipart()
        finally:
            sock.close(linger=0)


WORKER_ACTIONS: dict[str, Callable[[WorkerPortPeer], None]] = {
    "random_bytes": WorkerPortPeer.random_bytes,
    "partial_greeting": WorkerPortPeer.partial_greeting,
    "bogus_mechanism": WorkerPortPeer.bogus_mechanism,
    "bad_version": WorkerPortPeer.bad_version,
    "bad_ready_command": WorkerPortPeer.bad_ready_command,
    "oversized_frame": WorkerPortPeer.oversized_frame,
    "raw_worker_messages": WorkerPortPeer.raw_worker_messages,
    "wrong_token_ready": WorkerPortPeer.wrong_token_ready,
    "unregistered_spam": WorkerPortPeer.unregistered_spam,
}


class GoodClient(Actor):
    """The known-good client: generated Thrift clients (binary and compact,
    one connection each) calling echo; stops at the first call that is not
    answered correctly within CALL_DEADLINE."""

    def __init__(self, name, seed, deadline, stop, addr: tuple[str, int]):
        super().__init__(name, seed, deadline, stop)
        self.addr = addr
        self.failure: str | None = None
        self.longest = 0.0

    def act(self) -> None:
        with (
            thrift_client(self.addr, "binary", timeout=CALL_DEADLINE) as binary,
            thrift_client(self.addr, "compact", timeout=CALL_DEADLINE) as compact,
        ):
            i = 0
            while self.running():
                client = binary if i % 2 == 0 else compact
                text = f"good {i} " + random_text(self.rng, self.rng.choice((0, 10, 1000)))
                started = time.monotonic()
                try:
                    got = client.echo(text)
                except Exception as e:  # noqa: BLE001 - the finding
                    inner = getattr(e, "inner", None)
                    self.failure = f"call {i} failed after {time.monotonic() - started:.2f}s: {e!r}" + (
                        f" caused by {inner!r}" if inner is not None else ""
                    )
                    return
                took = time.monotonic() - started
                self.longest = max(self.longest, took)
                if got != text:
                    self.failure = f"call {i}: echo({text[:40]!r}...) answered {got[:80]!r}"
                    return
                if took > CALL_DEADLINE:
                    self.failure = f"call {i} took {took:.2f}s"
                    return
                self.counts["calls"] += 1
                i += 1
                self.stop_event.wait(0.005)


# -- the test ---------------------------------------------------------------------------

SCENARIOS = {
    "client_side": ("mutants", "garbage"),
    "worker_side": ("worker_port",),
    "everything": ("mutants", "garbage", "worker_port"),
}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_chaos(dataplane, worker, thriftctl, processes, short_tmp, scenario):
    seed = seed_for_run()
    parts = SCENARIOS[scenario]
    actions = [a for a in os.environ.get("CHAOS_WORKER_ACTIONS", ",".join(WORKER_ACTIONS)).split(",") if a]
    unknown = set(actions) - set(WORKER_ACTIONS)
    assert not unknown, f"CHAOS_WORKER_ACTIONS: unknown {sorted(unknown)}; known: {sorted(WORKER_ACTIONS)}"

    token_path = short_tmp / "worker.token"
    token_path.write_text(TOKEN)
    dp = dataplane(
        endpoint="tcp://127.0.0.1:0",
        workers={"token_file": str(token_path)},
        listeners={"echo": {"max_frame_size": MAX_FRAME}, "mux": {"max_frame_size": MAX_FRAME}},
        env={"RUST_BACKTRACE": "0"},
    )
    endpoint = tcp_endpoint(dp)
    worker(WORKER_KIND, endpoint=endpoint, token=TOKEN, concurrency=4)

    stop = threading.Event()
    deadline = time.monotonic() + DURATION
    good = GoodClient("good", seed, deadline, stop, dp.addr("echo"))
    actors: list[Actor] = []
    if "mutants" in parts:
        targets = [(dp.addr("echo"), False), (dp.addr("mux"), True)]
        actors += [MutantClient(f"mutant{i}", seed + 1 + i, deadline, stop, targets) for i in range(MUTANT_CLIENTS)]
    if "garbage" in parts:
        actors.append(GarbageClient("garbage", seed + 10, deadline, stop, [dp.addr("echo"), dp.addr("mux")]))
    if "worker_port" in parts:
        actors += [WorkerPortPeer(f"workerport{i}", seed + 20 + i, deadline, stop, endpoint, actions) for i in range(2)]

    def report() -> str:
        counts: Counter[str] = Counter()
        for a in (good, *actors):
            counts.update(a.counts)
        return (
            f"seed {seed} (CHAOS_SEED={seed} replays it), scenario {scenario}, {DURATION}s; "
            f"data plane {process_state(dp, settle=0.3)}; good client: {good.counts['calls']} calls, "
            f"longest {good.longest:.2f}s; activity: {dict(sorted(counts.items()))}"
        )

    good.start()
    for a in actors:
        a.start()
    try:
        # Waits for the deadline or the first bad answer, whichever is first.
        while time.monotonic() < deadline and good.is_alive() and good.failure is None:
            good.join(min(0.1, max(deadline - time.monotonic(), 0.001)))
    finally:
        stop.set()
        for a in (good, *actors):
            a.join(CALL_DEADLINE + 5)
    print(report())  # shown for a failed test, or with -rP
    stuck = [a.name for a in (good, *actors) if a.is_alive()]
    assert not stuck, f"actors did not stop: {stuck}\n{report()}"

    assert good.failure is None, f"the known-good client: {good.failure}\n{report()}"
    errors = [a.error for a in (good, *actors) if a.error]
    assert not errors, f"test actors failed: {errors}\n{report()}"
    assert good.counts["calls"] > 0, report()

    assert dp.alive(), report()
    status, body = probe(dp, "/healthz")
    assert status == 200, f"/healthz {status}: {body}\n{report()}"
    status, body = probe(dp, "/readyz")
    assert status == 200, f"/readyz {status}: {body}\n{report()}"
    workers = thriftctl().ok("workers", "list")["workers"]
    assert len(workers) == 1, f"only the real worker is registered: {workers}\n{report()}"
    with thrift_client(dp.addr("echo"), timeout=CALL_DEADLINE) as client:
        assert client.echo("final call") == "final call", report()
    assert "panicked" not in dp.stderr, report()

    dp.terminate(signal.SIGTERM)
    rc = dp.wait_exit(10)
    assert rc == 0, f"exit status {rc} after SIGTERM\n{report()}"
