"""One worker, several data planes (worker protocol version 3), with real
data planes (target/debug/thriftworker): the worker's credit is split
between them (their /metrics show each share), calls through every one of
them are answered, data planes behind one name come and go with the hosts
file, and the worker never holds more calls at once than its credit."""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from thrift.protocol import TBinaryProtocol
from thrift.transport import TSocket, TTransport

from conftest import Echo, Handler, start_worker
from dataplane import DataPlane, wait_for
from thriftworker import Worker

HERE = Path(__file__).resolve().parent


class Sleepy(Handler):
    def slow(self, message: str, sleep_ms: int) -> str:
        time.sleep(sleep_ms / 1000.0)
        return message


@contextlib.contextmanager
def client(addr: tuple[str, int]) -> Iterator[Any]:
    sock = TSocket.TSocket(addr[0], addr[1])
    sock.setTimeout(20_000)
    trans = TTransport.TFramedTransport(sock)
    trans.open()
    try:
        yield Echo.Client(TBinaryProtocol.TBinaryProtocol(trans))
    finally:
        trans.close()


class Load:
    """`threads` clients per address calling `slow` in a loop until stopped."""

    def __init__(self, addrs: list[tuple[str, int]], threads: int = 3, sleep_ms: int = 5) -> None:
        self.stop_flag = threading.Event()
        self.calls = 0
        self.failures: list[str] = []
        self.lock = threading.Lock()
        self.threads = [
            threading.Thread(target=self.run, args=(addr, f"{i}", sleep_ms), daemon=True)
            for addr in addrs
            for i in range(threads)
        ]
        for t in self.threads:
            t.start()

    def run(self, addr: tuple[str, int], name: str, sleep_ms: int) -> None:
        n = 0
        with client(addr) as c:
            while not self.stop_flag.is_set() and len(self.failures) < 10:
                n += 1
                try:
                    got = c.slow(f"{name}-{n}", sleep_ms)
                except Exception as e:  # every failure counts
                    with self.lock:
                        self.failures.append(repr(e))
                    return
                with self.lock:
                    self.calls += 1
                    if got != f"{name}-{n}":
                        self.failures.append(f"wrong answer {got!r}")

    def wait_calls(self, n: int, what: str) -> None:
        start = self.calls
        wait_for(lambda: self.calls >= start + n, what, 15, lambda: "\n".join(self.failures))

    def finish(self) -> list[str]:
        self.stop_flag.set()
        for t in self.threads:
            t.join(20)
        return self.failures


def credits(*dps: DataPlane) -> list[list[int]]:
    """Each data plane's registrations' credit (sorted)."""
    return [sorted(dp.worker_credit().values()) for dp in dps]


def context(*dps: DataPlane) -> str:
    return "\n".join(dp.log() for dp in dps)


@pytest.fixture
def start_plane(tmp_path: Path) -> Iterator[Any]:
    started: list[DataPlane] = []

    def start(name: str, endpoint: str = "tcp://127.0.0.1:0") -> DataPlane:
        dp = DataPlane(tmp_path, name, endpoint)
        started.append(dp)
        return dp

    yield start
    for dp in started:
        dp.kill()


@pytest.mark.parametrize("mode", ["inline", "threads", "asyncio"])
def test_one_worker_two_data_planes_credit_split_and_calls_through_both(
    start_plane: Any, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = start_plane("a"), start_plane("b")
    concurrency = 1 if mode == "inline" else 3
    w = Worker(
        [a.worker_endpoint, b.worker_endpoint],
        {"Echo": Echo.Processor(Sleepy())},
        mode=mode,
        concurrency=concurrency,
        prefetch=8 - concurrency,
    )
    with caplog.at_level(logging.INFO, logger="thriftworker"):
        t, errors = start_worker(w)
        try:
            # 8 split in endpoint order (sorted): 4 and 4, each data plane one registration.
            wait_for(lambda: credits(a, b) == [[4], [4]], "the credit split 4 + 4", context=lambda: context(a, b))
            for dp in (a, b):
                with client(dp.echo_addr) as c:
                    assert c.echo(f"via {dp.name}") == f"via {dp.name}"
            load = Load([a.echo_addr, b.echo_addr], threads=4)
            load.wait_calls(50, "50 calls through both data planes")
            assert load.finish() == []
        finally:
            w.stop()
            t.join(20)
    assert not t.is_alive() and errors == []
    assert 1 <= w.peak_held <= w.credit == 8
    assert f"most calls held at once {w.peak_held} (credit 8)" in caplog.text
    assert "CREDIT VIOLATION" not in caplog.text


def test_data_planes_behind_one_name_come_and_go_with_the_hosts_file(
    start_plane: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    a = start_plane("a")  # 127.0.0.1:P
    b = start_plane("b", f"tcp://127.0.0.2:{a.worker_port}")  # the same port on another loopback address
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 planes.test\n")
    w = Worker(
        f"tcp://planes.test:{a.worker_port}",
        {"Echo": Echo.Processor(Sleepy())},
        mode="threads",
        concurrency=3,
        prefetch=3,
        hosts_file=str(hosts),
        resolve_interval=0.1,
    )
    with caplog.at_level(logging.INFO, logger="thriftworker"):
        t, errors = start_worker(w)
        try:
            wait_for(lambda: credits(a, b) == [[6], []], "the whole credit at a", context=lambda: context(a, b))
            load_a = Load([a.echo_addr], threads=4)
            load_a.wait_calls(20, "calls through a")
            # A second data plane behind the name: a is lowered (CREDIT), b registers.
            hosts.write_text("127.0.0.1 planes.test\n127.0.0.2 planes.test  # added\n")
            wait_for(lambda: credits(a, b) == [[3], [3]], "the credit split 3 + 3", context=lambda: context(a, b))
            load_b = Load([b.echo_addr], threads=4)
            load_b.wait_calls(20, "calls through b")
            load_a.wait_calls(20, "calls through a, after the split")
            assert load_a.finish() == []
            # a leaves the name: it is left gracefully, then b gets everything.
            hosts.write_text("127.0.0.2 planes.test\n")
            wait_for(lambda: credits(a, b) == [[], [6]], "the whole credit at b", context=lambda: context(a, b))
            assert a.count("worker left") == 1, a.log()
            load_b.wait_calls(20, "calls through b, alone")
            assert load_b.finish() == []
        finally:
            w.stop()
            t.join(20)
    assert not t.is_alive() and errors == []
    assert 1 <= w.peak_held <= 6
    assert "worker dead" not in a.log() + b.log()
    assert "CREDIT VIOLATION" not in caplog.text


@pytest.mark.parametrize("mode", ["gevent", "eventlet", "twisted"])
def test_process_modes_attach_to_every_data_plane(start_plane: Any, mode: str) -> None:
    a, b = start_plane("a"), start_plane("b")
    child = subprocess.Popen(
        [sys.executable, str(HERE / "child_worker.py"), f"{a.worker_endpoint},{b.worker_endpoint}", mode],
        cwd=HERE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        # concurrency 2, no prefetch: 1 at each.
        wait_for(lambda: credits(a, b) == [[1], [1]], "the credit split 1 + 1", 15, lambda: context(a, b))
        for dp in (a, b):
            with client(dp.echo_addr) as c:
                for i in range(3):
                    assert c.echo(f"{dp.name}{i}") == f"{dp.name}{i}"
    finally:
        child.kill()
        child.communicate(timeout=10)


def test_the_supervisors_children_each_attach_to_every_data_plane(start_plane: Any) -> None:
    a, b = start_plane("a"), start_plane("b")
    env = {k: v for k, v in os.environ.items() if not k.startswith("THRIFTWORKER_")}
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])
    sup = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "thriftworker",
            "--workers",
            "2",
            "--mode",
            "threads",
            "--concurrency",
            "2",
            "--prefetch",
            "0",
            "--endpoint",
            a.worker_endpoint,
            "--endpoint",
            b.worker_endpoint,
            "child_worker:services",
        ],
        cwd=HERE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        wait_for(lambda: credits(a, b) == [[1, 1], [1, 1]], "two workers at each, 1 + 1", 15, lambda: context(a, b))
        for dp in (a, b):
            with client(dp.echo_addr) as c:
                assert c.echo(dp.name) == dp.name
        sup.terminate()
        out, _ = sup.communicate(timeout=20)
        assert sup.returncode == 0, out
        assert out.count("most calls held at once") == 2, out
    finally:
        sup.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            sup.communicate(timeout=10)


def test_an_address_where_nothing_listens_holds_no_credit(start_plane: Any) -> None:
    """A data plane takes part once its connection is up: the one that is
    there gets the whole credit, and shares it when the other comes up."""
    import socket

    a = start_plane("a")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free_port = s.getsockname()[1]
    absent = f"tcp://127.0.0.1:{free_port}"
    w = Worker([a.worker_endpoint, absent], {"Echo": Echo.Processor(Sleepy())}, mode="threads", concurrency=2)
    t, errors = start_worker(w)
    try:
        wait_for(lambda: credits(a) == [[4]], "the whole credit at a", context=lambda: context(a))
        with client(a.echo_addr) as c:
            assert c.echo("alone") == "alone"
        b = start_plane("b", absent)
        wait_for(lambda: credits(a, b) == [[2], [2]], "the credit split 2 + 2", context=lambda: context(a, b))
    finally:
        w.stop()
        t.join(20)
    assert not t.is_alive() and errors == []
