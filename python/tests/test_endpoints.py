"""Endpoints and names (thriftworker.endpoints): which data planes a list
of endpoints stands for, the hosts file, and what a failed lookup keeps."""

from __future__ import annotations

import logging
import socket
import threading
from pathlib import Path
from typing import Any

import pytest

from thriftworker import endpoints
from thriftworker.endpoints import (
    MAX_DATA_PLANES,
    Resolver,
    ResolverThread,
    Target,
    lookup,
    parse_endpoint,
    parse_hosts,
)


def test_ipc_and_ip_endpoints_are_one_data_plane_each() -> None:
    assert parse_endpoint("ipc:///run/tw/workers.sock") == Target(
        "ipc:///run/tw/workers.sock", "ipc:///run/tw/workers.sock"
    )
    assert parse_endpoint("tcp://127.0.0.1:9950").fixed == "tcp://127.0.0.1:9950"
    assert parse_endpoint("tcp://[::1]:9950").fixed == "tcp://[::1]:9950"
    assert parse_endpoint("tcp://[0:0::1]:9950").fixed == "tcp://[::1]:9950"  # normalised
    named = parse_endpoint("tcp://DataPlanes.Default.svc:9950")
    assert (named.fixed, named.host, named.port) == (None, "dataplanes.default.svc", 9950)


@pytest.mark.parametrize(
    "endpoint,message",
    [
        ("", "1 to 1024 characters"),
        ("x" * 1025, "1 to 1024 characters"),
        ("127.0.0.1:9950", "is not ipc://PATH or tcp://HOST:PORT"),
        ("tcp://127.0.0.1", "needs HOST:PORT"),
        ("tcp://127.0.0.1:0", "port from 1 to 65535"),
        ("tcp://127.0.0.1:70000", "port from 1 to 65535"),
        ("tcp://bad host:9950", "neither an IP address nor a host name"),
        ("tcp://*:9950", "neither an IP address nor a host name"),
    ],
)
def test_a_bad_endpoint_is_named_with_what_is_wrong(endpoint: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_endpoint(endpoint)


def test_hosts_file_format() -> None:
    text = """
    # the data planes
    127.0.0.1   dp.test  other.test   # a comment
    127.0.0.2   DP.test
    ::1         dp6.test
    not-an-ip   dp.test
    127.0.0.1   dp.test
    127.0.0.3
    """
    assert parse_hosts(text) == {
        "dp.test": ["127.0.0.1", "127.0.0.2"],
        "other.test": ["127.0.0.1"],
        "dp6.test": ["::1"],
    }


def test_a_name_resolves_to_every_address_sorted_and_deduplicated(tmp_path: Path) -> None:
    hosts = {"dp.test": ["127.0.0.2", "127.0.0.1", "::1", "127.0.0.1"]}
    assert lookup("dp.test", 9950, hosts) == ["tcp://127.0.0.1:9950", "tcp://127.0.0.2:9950", "tcp://[::1]:9950"]
    hosts_file = tmp_path / "hosts"
    hosts_file.write_text("127.0.0.2 dp.test\n127.0.0.1 dp.test\n")
    r = Resolver(["tcp://dp.test:9950", "ipc:///tmp/x.sock", "tcp://127.0.0.1:9950"], str(hosts_file))
    assert not r.fixed
    assert r.resolve() == ["ipc:///tmp/x.sock", "tcp://127.0.0.1:9950", "tcp://127.0.0.2:9950"]
    # Read again at each resolution.
    hosts_file.write_text("127.0.0.3 dp.test\n")
    assert r.resolve() == ["ipc:///tmp/x.sock", "tcp://127.0.0.1:9950", "tcp://127.0.0.3:9950"]


def test_names_not_in_the_hosts_file_go_to_dns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[str] = []

    def getaddrinfo(host: str, port: int, *args: Any) -> list[Any]:
        asked.append(host)
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.1.0.7", port)),
            (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("fd00::7", port, 0, 0)),
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.1.0.7", port)),
        ]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    hosts_file = tmp_path / "hosts"
    hosts_file.write_text("127.0.0.1 listed.test\n")
    r = Resolver(["tcp://listed.test:1", "tcp://dns.test:2"], str(hosts_file))
    assert r.resolve() == ["tcp://10.1.0.7:2", "tcp://127.0.0.1:1", "tcp://[fd00::7]:2"]
    assert asked == ["dns.test"]


def test_a_failed_lookup_keeps_the_last_set_and_warns_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    answers: list[Any] = [[(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.1.0.1", 9))]]

    def getaddrinfo(host: str, port: int, *args: Any) -> list[Any]:
        answer = answers[-1]
        if isinstance(answer, Exception):
            raise answer
        return list(answer)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    r = Resolver(["tcp://dp.test:9"])
    assert r.resolve() == ["tcp://10.1.0.1:9"]
    answers.append(socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution"))
    with caplog.at_level(logging.WARNING, logger="thriftworker"):
        assert r.resolve() == ["tcp://10.1.0.1:9"]
        assert r.resolve() == ["tcp://10.1.0.1:9"]
    warnings = [rec.getMessage() for rec in caplog.records if "cannot resolve dp.test" in rec.getMessage()]
    assert len(warnings) == 1, warnings  # rate-limited
    assert "keeping its 1 data plane(s)" in warnings[0]


def test_an_unreadable_hosts_file_keeps_the_last_set(tmp_path: Path) -> None:
    hosts_file = tmp_path / "hosts"
    hosts_file.write_text("127.0.0.1 dp.test\n")
    r = Resolver(["tcp://dp.test:9"], str(hosts_file))
    assert r.resolve() == ["tcp://127.0.0.1:9"]
    hosts_file.unlink()
    assert r.resolve() == ["tcp://127.0.0.1:9"]
    hosts_file.write_bytes(b"#" * (endpoints.MAX_HOSTS_FILE + 1))
    assert r.resolve() == ["tcp://127.0.0.1:9"]
    with pytest.raises(ValueError, match="larger than"):
        endpoints.read_hosts(str(hosts_file))


def test_at_most_64_data_planes(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    hosts_file = tmp_path / "hosts"
    hosts_file.write_text("".join(f"127.0.1.{i} many.test\n" for i in range(1, 101)))
    r = Resolver(["tcp://many.test:9"], str(hosts_file))
    with caplog.at_level(logging.WARNING, logger="thriftworker"):
        found = r.resolve()
    assert len(found) == MAX_DATA_PLANES and found == sorted(found)
    assert "name 100 data planes: attaching to the first 64" in caplog.text


def test_the_resolver_thread_answers_at_once_and_when_asked(tmp_path: Path) -> None:
    hosts_file = tmp_path / "hosts"
    hosts_file.write_text("127.0.0.1 dp.test\n")
    got = threading.Semaphore(0)
    thread = ResolverThread(Resolver(["tcp://dp.test:9"], str(hosts_file)), 3600.0, got.release)
    thread.start()
    try:
        assert got.acquire(timeout=10)
        assert thread.take() == ["tcp://127.0.0.1:9"]
        assert thread.take() is None
        hosts_file.write_text("127.0.0.2 dp.test\n")
        thread.request()  # a lost connection: at once, not in an hour
        assert got.acquire(timeout=10)
        assert thread.take() == ["tcp://127.0.0.2:9"]
    finally:
        thread.stop()


def test_localhost_resolves_through_the_system() -> None:
    found = Resolver(["tcp://localhost:9"]).resolve()
    assert "tcp://127.0.0.1:9" in found, found
    assert set(found) <= {"tcp://127.0.0.1:9", "tcp://[::1]:9"}
