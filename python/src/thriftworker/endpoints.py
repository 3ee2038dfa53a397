"""Which data planes a worker attaches to: its endpoints, with names
resolved to every address they stand for (docs/worker-protocol.md, "Where
the data planes come from").

`ipc://PATH` and `tcp://IP:PORT` name one data plane each. `tcp://NAME:PORT`
names every address NAME resolves to (A and AAAA: a Kubernetes headless
Service resolves to every data-plane pod), looked up again every
`resolve_interval` and when a connection is lost. A hosts file (hosts(5)
format), read again at every resolution, answers for the names it lists,
without DNS: tests use it to move data planes in and out behind one name.

The lookups block, so the worker runs them on a thread of their own
(`ResolverThread`), never on its loop.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

log = logging.getLogger("thriftworker")

#: At most this many data planes at once; more addresses are ignored (with a warning).
MAX_DATA_PLANES = 64
#: At most this many endpoints may be given.
MAX_ENDPOINTS = 256
#: The longest endpoint accepted (ZeroMQ's own limit on ipc paths is far shorter).
MAX_ENDPOINT_LEN = 1024
#: A hosts file larger than this is refused (it is a short list of names).
MAX_HOSTS_FILE = 1 << 20
#: Seconds between two resolutions of the names, by default.
DEFAULT_RESOLVE_INTERVAL = 5.0
#: Bounds of `resolve_interval`, seconds.
MIN_RESOLVE_INTERVAL, MAX_RESOLVE_INTERVAL = 0.05, 3600.0
#: A warning about names that do not resolve, or too many data planes, at most this often (seconds).
WARN_EVERY = 60.0

_HOSTNAME = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_.-]{0,251}[A-Za-z0-9_.])?$")


@dataclass(frozen=True)
class Target:
    """One configured endpoint: one data plane (`fixed`), or every address of `host`."""

    endpoint: str
    fixed: str | None
    host: str = ""
    port: int = 0


def parse_endpoint(endpoint: str) -> Target:
    """Parses one endpoint; raises ValueError saying what is wrong with it."""
    if not endpoint or len(endpoint) > MAX_ENDPOINT_LEN:
        raise ValueError(f"an endpoint must be 1 to {MAX_ENDPOINT_LEN} characters, not {len(endpoint)}")
    scheme, sep, rest = endpoint.partition("://")
    if not sep or not rest:
        raise ValueError(f"endpoint {endpoint!r} is not ipc://PATH or tcp://HOST:PORT")
    if scheme != "tcp":
        return Target(endpoint, endpoint)  # ipc://, inproc://: ZeroMQ checks them at connect
    host, colon, port_text = rest.rpartition(":")
    if not colon or not host or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"endpoint {endpoint!r}: tcp:// needs HOST:PORT, with a port from 1 to 65535")
    port = int(port_text)
    if ";" in host:
        return Target(endpoint, endpoint)  # ZeroMQ's "source;destination" form: left as given
    literal = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        return Target(endpoint, tcp_endpoint(literal, port))
    except ValueError:
        pass
    if not _HOSTNAME.match(host):
        raise ValueError(f"endpoint {endpoint!r}: {host!r} is neither an IP address nor a host name")
    return Target(endpoint, None, host.lower(), port)


def tcp_endpoint(address: str, port: int) -> str:
    """`tcp://ADDRESS:PORT`, IPv6 in brackets; ValueError if `address` is not an IP address."""
    ip = ipaddress.ip_address(address)
    return f"tcp://[{ip}]:{port}" if ip.version == 6 else f"tcp://{ip}:{port}"


def parse_hosts(text: str) -> dict[str, list[str]]:
    """A hosts(5) file's names (lower case) and their addresses, in file
    order: `ADDRESS NAME...` per line, `#` starts a comment. A line whose
    address is not an IP address is skipped."""
    hosts: dict[str, list[str]] = {}
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) < 2:
            continue
        try:
            address = str(ipaddress.ip_address(fields[0]))
        except ValueError:
            continue
        for name in fields[1:]:
            addresses = hosts.setdefault(name.lower(), [])
            if address not in addresses:
                addresses.append(address)
    return hosts


def read_hosts(path: str) -> dict[str, list[str]]:
    """Reads and parses a hosts file; OSError or ValueError (too large) say why not."""
    with open(path, "rb") as f:
        data = f.read(MAX_HOSTS_FILE + 1)
    if len(data) > MAX_HOSTS_FILE:
        raise ValueError(f"the hosts file {path} is larger than {MAX_HOSTS_FILE} bytes")
    return parse_hosts(data.decode("utf-8", "replace"))


def lookup(host: str, port: int, hosts: dict[str, list[str]]) -> list[str]:
    """The data planes `tcp://host:port` names: the hosts file's addresses
    for `host` if it lists it, else every A and AAAA address DNS gives;
    deduplicated, sorted. Raises OSError (socket.gaierror) if DNS fails."""
    addresses = hosts.get(host)
    if addresses is None:
        infos = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
        addresses = [str(info[4][0]) for info in infos if info[0] in (socket.AF_INET, socket.AF_INET6)]
    return sorted({tcp_endpoint(a.split("%", 1)[0], port) for a in addresses})


class _RateLimit:
    """True at most once per `every` seconds per key."""

    def __init__(self, every: float = WARN_EVERY) -> None:
        self.every = every
        self._last: dict[str, float] = {}

    def __call__(self, key: str) -> bool:
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.every:
            return False
        if len(self._last) > 1024:
            self._last.clear()
        self._last[key] = now
        return True


class Resolver:
    """Resolves a worker's endpoints; keeps the last answer per name, so a
    failed lookup keeps the data planes it had (a DNS outage never detaches
    a worker)."""

    def __init__(self, endpoints: Sequence[str], hosts_file: str | None = None) -> None:
        if not endpoints:
            raise ValueError("give at least one endpoint (the data plane's worker endpoint, ipc:// or tcp://)")
        if len(endpoints) > MAX_ENDPOINTS:
            raise ValueError(f"at most {MAX_ENDPOINTS} endpoints, not {len(endpoints)}")
        self.targets = [parse_endpoint(e) for e in endpoints]
        self.hosts_file = hosts_file
        self._last: list[list[str]] = [[t.fixed] if t.fixed else [] for t in self.targets]
        self._warn = _RateLimit()

    @property
    def fixed(self) -> bool:
        """Every endpoint names one data plane: nothing to look up, ever."""
        return all(t.fixed for t in self.targets)

    def resolve(self) -> list[str]:
        """The data planes the endpoints name now, sorted, at most MAX_DATA_PLANES."""
        hosts: dict[str, list[str]] = {}
        if self.hosts_file is not None and not self.fixed:
            try:
                hosts = read_hosts(self.hosts_file)
            except (OSError, ValueError) as e:
                if self._warn("hosts file"):
                    log.warning(
                        "cannot read the hosts file %s (%s): keeping the data planes the names had",
                        self.hosts_file,
                        e,
                    )
                return self._union()
        for i, t in enumerate(self.targets):
            if t.fixed:
                continue
            try:
                found = lookup(t.host, t.port, hosts)
            except (OSError, UnicodeError) as e:
                if self._warn(t.host):
                    log.warning(
                        "cannot resolve %s (%s): keeping its %d data plane(s) (warned at most once a minute)",
                        t.host,
                        e,
                        len(self._last[i]),
                    )
                continue
            if not found and self._warn(t.host):
                log.warning("%s resolves to no address: no data plane there for now", t.host)
            self._last[i] = found
        return self._union()

    def _union(self) -> list[str]:
        every = sorted({e for found in self._last for e in found})
        if len(every) > MAX_DATA_PLANES:
            if self._warn("too many"):
                log.warning(
                    "the endpoints name %d data planes: attaching to the first %d (sorted) only",
                    len(every),
                    MAX_DATA_PLANES,
                )
            every = every[:MAX_DATA_PLANES]
        return every


class ResolverThread:
    """Runs `resolver` on a thread: at once, every `interval` seconds and
    whenever `request()` is called; each answer is kept for `take()` and
    announced with `on_result()` (which wakes the worker's loop). In a
    monkey-patched gevent or eventlet process the thread is a green one and
    the lookups yield."""

    def __init__(self, resolver: Resolver, interval: float, on_result: Callable[[], None]) -> None:
        self._resolver = resolver
        self._interval = interval
        self._on_result = on_result
        self._now = threading.Event()
        self._lock = threading.Lock()
        self._latest: list[str] | None = None
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="thriftworker-resolve", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def request(self) -> None:
        """Resolve again now (a connection was lost)."""
        self._now.set()

    def take(self) -> list[str] | None:
        """The newest answer not taken yet, if any."""
        with self._lock:
            latest, self._latest = self._latest, None
        return latest

    def stop(self, timeout: float = 1.0) -> None:
        self._stopping = True
        self._now.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stopping:
            try:
                found = self._resolver.resolve()
            except Exception:  # a bug must not end the lookups: the loop keeps what it has
                log.exception("resolving the data planes failed")
            else:
                with self._lock:
                    self._latest = found
                if not self._stopping:
                    self._on_result()
            self._now.wait(self._interval)
            self._now.clear()
