"""Tools for the hostile-peer and chaos tests (test_hostile_peers.py,
test_chaos.py): a hand-written ZMTP 3.0 client for the worker endpoint, the
worker protocol's frames, probes, CPU and descriptor readings from /proc, and
a data plane started under a low RLIMIT_NOFILE.

Everything here talks to 127.0.0.1 only and every wait has a deadline.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Self

import harness

# -- the worker protocol (docs/worker-protocol.md) ------------------------------

VERSION = 0x01
READY, REQUEST, REPLY, HEARTBEAT, DISCONNECT = 0x01, 0x02, 0x03, 0x04, 0x05
COMMAND_NAMES = {READY: "READY", REQUEST: "REQUEST", REPLY: "REPLY", HEARTBEAT: "HEARTBEAT", DISCONNECT: "DISCONNECT"}


def header(command: int) -> bytes:
    return bytes([VERSION, command])


def heartbeat_frames() -> list[bytes]:
    return [header(HEARTBEAT)]


def reply_frames(request_id: int, message: bytes) -> list[bytes]:
    return [header(REPLY), struct.pack(">Q", request_id), message]


def ready_frames(credit: int, token: bytes, services: Iterable[str]) -> list[bytes]:
    return [header(READY), struct.pack(">I", credit), token, *(s.encode() for s in services)]


def command_of(frames: list[bytes]) -> str:
    """The worker-protocol command of a message, by name (or a description
    of what it is instead)."""
    if not frames or len(frames[0]) != 2 or frames[0][0] != VERSION:
        return f"malformed({frames[:1]!r})"
    return COMMAND_NAMES.get(frames[0][1], f"command{frames[0][1]}")


def tcp_endpoint(dp) -> str:
    """The first worker endpoint as bound (`tcp://127.0.0.1:PORT`)."""
    endpoint = dp.ready["worker_endpoints"][0]
    assert endpoint.startswith("tcp://127.0.0.1:"), f"expected a loopback tcp worker endpoint: {dp.ready}"
    return endpoint


def endpoint_addr(endpoint: str) -> tuple[str, int]:
    host, port = endpoint.removeprefix("tcp://").rsplit(":", 1)
    return host, int(port)


# -- ZMTP 3.0 by hand -------------------------------------------------------------


def zmtp_greeting(mechanism: bytes = b"NULL", version: tuple[int, int] = (3, 0), as_server: bool = False) -> bytes:
    """The 64-byte ZMTP 3.0 greeting: signature, version, mechanism padded to
    20 bytes, as-server, 31 bytes of filler."""
    g = b"\xff" + b"\x00" * 8 + b"\x7f" + bytes(version) + mechanism.ljust(20, b"\x00")[:20]
    g += (b"\x01" if as_server else b"\x00") + b"\x00" * 31
    assert len(g) == 64
    return g


def zmtp_command(name: bytes, properties: dict[bytes, bytes]) -> bytes:
    body = bytes([len(name)]) + name
    for k, v in properties.items():
        body += bytes([len(k)]) + k + struct.pack(">I", len(v)) + v
    if len(body) <= 255:
        return b"\x04" + bytes([len(body)]) + body
    return b"\x06" + struct.pack(">Q", len(body)) + body


def zmtp_ready(socket_type: bytes = b"DEALER", identity: bytes | None = None) -> bytes:
    props = {b"Socket-Type": socket_type}
    if identity is not None:
        props[b"Identity"] = identity
    return zmtp_command(b"READY", props)


def zmtp_frame(data: bytes, more: bool = False) -> bytes:
    flags = 0x01 if more else 0x00
    if len(data) <= 255:
        return bytes([flags, len(data)]) + data
    return bytes([flags | 0x02]) + struct.pack(">Q", len(data)) + data


def zmtp_message(frames: list[bytes]) -> bytes:
    return b"".join(zmtp_frame(f, more=i < len(frames) - 1) for i, f in enumerate(frames))


def long_frame_header(length: int, command: bool = False, more: bool = False) -> bytes:
    """A long frame's flags and 8-byte length, without the body."""
    flags = 0x02 | (0x04 if command else 0) | (0x01 if more else 0)
    return bytes([flags]) + struct.pack(">Q", length)


class RawZmtp:
    """A TCP connection to the worker endpoint speaking ZMTP by hand."""

    def __init__(self, addr: tuple[str, int], timeout: float = 5.0):
        self.sock = socket.create_connection(addr, timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_exact(self, n: int, timeout: float = 5.0) -> bytes:
        deadline = time.monotonic() + timeout
        while len(self.buf) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"wanted {n} bytes from the worker endpoint, have {len(self.buf)}")
            self.sock.settimeout(left)
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"worker endpoint closed the connection ({len(self.buf)} of {n} bytes)")
            self.buf += chunk
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def read_frame(self, timeout: float = 5.0) -> tuple[int, bytes]:
        """(flags, body) of the next ZMTP frame."""
        flags = self.read_exact(1, timeout)[0]
        if flags & 0x02:
            (length,) = struct.unpack(">Q", self.read_exact(8, timeout))
        else:
            length = self.read_exact(1, timeout)[0]
        assert length < 1 << 20, f"unexpectedly long frame ({length} bytes) from the data plane"
        return flags, self.read_exact(length, timeout)

    def handshake(self, identity: bytes | None = None, timeout: float = 5.0) -> None:
        """The NULL-mechanism handshake as a DEALER: greetings, then READY
        commands both ways."""
        self.send(zmtp_greeting())
        theirs = self.read_exact(64, timeout)
        assert theirs[0] == 0xFF and theirs[9] == 0x7F, f"not a ZMTP greeting: {theirs!r}"
        flags, body = self.read_frame(timeout)
        assert flags & 0x04 and body[1:6] == b"READY", f"expected the data plane's READY command: {flags:#x} {body!r}"
        self.send(zmtp_ready(identity=identity))

    def send_message(self, frames: list[bytes]) -> None:
        self.send(zmtp_message(frames))

    def closed_by_peer(self, timeout: float = 5.0) -> bool:
        """True once the data plane has closed this connection (EOF or reset);
        bytes it sends first are ignored. False on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.sock.settimeout(left)
            try:
                if not self.sock.recv(65536):
                    return True
            except (ConnectionResetError, BrokenPipeError):
                return True
            except TimeoutError:
                return False


# -- HTTP probes, /proc -------------------------------------------------------------


def probe(dp, path: str, timeout: float = 5.0) -> tuple[int, str]:
    """(status, body) of GET http://<metrics address><path>."""
    try:
        with urllib.request.urlopen(f"http://{dp.metrics_addr}{path}", timeout=timeout) as r:
            return r.status, r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8", "replace")


def process_state(dp, settle: float = 1.0) -> str:
    """The process's state: "running", or the exit status and what the process said about its
    end (a panic message, an allocation failure) without the backtrace.
    For failure messages: a process whose sockets have just closed because
    it is dying may take a moment to be reaped, so this waits up to
    `settle` seconds for it to exit."""
    try:
        rc = dp.process.proc.wait(timeout=settle)
    except subprocess.TimeoutExpired:
        return "running"
    state = f"exited with {rc}" + (f" ({signal.Signals(-rc).name})" if rc < 0 else "")
    last = [
        line.strip()
        for line in dp.stderr.splitlines()
        if "panicked" in line or "memory allocation" in line or "fatal" in line.lower() or "abort" in line.lower()
    ]
    return state + ("; last words: " + " | ".join(last[-3:]) if last else "")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        data = f.read()
    fields = data[data.rindex(")") + 2 :].split()  # fields[0] is field 3 (state)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except FileNotFoundError:
        return -1


def cpu_share(pid: int, seconds: float) -> float:
    """The share of one core `pid` used over the next `seconds` (a
    measurement window, not a synchronisation)."""
    c0, t0 = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    c1, t1 = cpu_seconds(pid), time.monotonic()
    return (c1 - c0) / (t1 - t0)


@contextlib.contextmanager
def nofile_limit(monkeypatch, directory: Path, limit: int) -> Iterator[None]:
    """Within the block, `harness.binary("thriftworker")` is a wrapper that
    sets RLIMIT_NOFILE to `limit` (soft and hard) and execs the real binary:
    the process keeps the wrapper's pid, so the `dataplane` fixture, its
    ready file and its teardown work unchanged."""
    real = harness.binary("thriftworker")
    wrap_dir = directory / f"nofile{limit}"
    wrap_dir.mkdir(exist_ok=True)
    wrapper = wrap_dir / "thriftworker"
    wrapper.write_text(
        f"#!{sys.executable}\n"
        "import os, resource, sys\n"
        f"resource.setrlimit(resource.RLIMIT_NOFILE, ({limit}, {limit}))\n"
        f"os.execv({str(real)!r}, [{str(real)!r}, *sys.argv[1:]])\n"
    )
    wrapper.chmod(0o755)
    with monkeypatch.context() as m:
        m.setattr(harness, "TARGET_DIR", wrap_dir)
        yield
