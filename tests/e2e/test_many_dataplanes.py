"""Many data planes, many workers (worker protocol version 3): every worker
attaches to every data-plane replica and shares its credit between them.

Real data planes and real workers on this machine. The replicas listen for
workers on one port at different loopback addresses (127.0.0.1, 127.0.0.2,
...), and the workers find them the way they find pods behind a Kubernetes
headless Service: one name, resolved again and again. The name is answered
by a hosts file (`--hosts-file`, read at every resolution) so the tests add
and remove replicas without touching the system resolver.
"""

import re
import signal
import time

import pytest

from harness import MAX_WAIT, SteadyLoad, free_port, thrift_client, wait_for

NAME = "dataplanes.test"


class Fleet:
    """Data planes on 127.0.0.N:PORT (N = 1, 2, ...) behind NAME, and the
    hosts file that says which of them NAME resolves to."""

    def __init__(self, dataplane, short_tmp, **overrides):
        self.dataplane = dataplane
        self.overrides = overrides
        self.port = free_port()
        self.hosts = short_tmp / "hosts"
        self.hosts.write_text("")
        self.dps = {}

    def endpoint(self, n):
        return f"tcp://127.0.0.{n}:{self.port}"

    def start(self, n):
        dp = self.dataplane(endpoint=self.endpoint(n), **self.overrides)
        self.dps[n] = dp
        return dp

    def publish(self, *ns):
        """NAME resolves to the data planes `ns` from now on."""
        self.hosts.write_text("".join(f"127.0.0.{n} {NAME}\n" for n in ns))

    @property
    def name_endpoint(self):
        return f"tcp://{NAME}:{self.port}"

    def worker_args(self, prefetch=0, kind="rust"):
        # echo-worker takes a duration, thriftworker-py seconds.
        resolve = "200ms" if kind == "rust" else "0.2"
        return ["--hosts-file", self.hosts, "--resolve-interval", resolve, "--prefetch", prefetch]

    def attach_workers(self, worker, processes, n, concurrency, prefetch=0, kind="rust"):
        """Starts `n` workers given NAME and waits until every data plane
        started so far has all of them registered."""
        extra = {"mode": "threads"} if kind == "pkg" else {}
        workers = [
            worker(kind, endpoint=self.name_endpoint, concurrency=concurrency, wait=False,
                   args=self.worker_args(prefetch=prefetch, kind=kind), **extra)
            for _ in range(n)
        ]
        for dp in self.dps.values():
            wait_workers(dp, n, context=processes.tails)
        return workers


def gauges(dp, name):
    """{worker id: value} of a per-worker gauge in the data plane's /metrics."""
    found = {}
    for line in dp.metrics().splitlines():
        m = re.fullmatch(name + r'\{worker="([^"]+)"\} (\d+)', line)
        if m:
            found[m.group(1)] = int(m.group(2))
    return found


def live_workers(dp):
    return len(gauges(dp, "thriftworker_worker_credit"))


def wait_workers(dp, n, timeout=10.0, context=None):
    wait_for(lambda: live_workers(dp) == n, timeout, f"{n} workers registered at {dp.endpoint}", context or dp.tail)


def whoami_set(dp, calls=60):
    """The workers (by process) that served `calls` whoami calls through `dp`,
    on several connections so the data plane spreads them."""
    seen = set()
    for _ in range(calls // 6):
        with thrift_client(dp.addr("echo")) as c:
            seen.update(c.whoami() for _ in range(6))
    return seen


def most_held(w):
    """(most calls held at once, credit) that a stopped worker logged: the
    Rust library's `worker stopped most_held_at_once=N credit=T`, the Python
    package's `most calls held at once N (credit T)`."""
    text = w.stderr + w.stdout
    m = re.search(r"worker stopped most_held_at_once=(\d+) credit=(\d+)", text) or re.search(
        r"most calls held at once (\d+) \(credit (\d+)\)", text
    )
    assert m, f"no 'worker stopped' line in:\n{text[-2000:]}"
    return int(m.group(1)), int(m.group(2))


@pytest.mark.parametrize(
    "kind,replicas", [("rust", 2), ("rust", 3), ("pkg", 2), ("pkg", 3)], ids=["rust-2", "rust-3", "python-2", "python-3"]
)
def test_every_worker_serves_every_data_plane(dataplane, worker, processes, short_tmp, kind, replicas):
    """Three workers (the Rust library's echo-worker, or the Python package
    in threads mode) behind one name with 2 or 3 data planes."""
    fleet = Fleet(dataplane, short_tmp)
    for n in range(1, replicas + 1):
        fleet.start(n)
    fleet.publish(*range(1, replicas + 1))
    workers = fleet.attach_workers(worker, processes, 3, concurrency=4, prefetch=8, kind=kind)
    pids = {f"{kind}:{w.pid}" for w in workers}
    for n, dp in fleet.dps.items():
        assert whoami_set(dp) == pids, f"calls through data plane {n} did not reach every worker"
    # Each worker's credit (4 + 8 = 12) is split between the replicas, never
    # given twice: the data planes' credits sum to 3 x 12 once every move is answered.
    credit = lambda: sum(sum(gauges(dp, "thriftworker_worker_credit").values()) for dp in fleet.dps.values())  # noqa: E731
    wait_for(lambda: credit() == 3 * 12, 10, "credits summing to 3 x 12", processes.tails)
    shares = sorted(v for dp in fleet.dps.values() for v in gauges(dp, "thriftworker_worker_credit").values())
    assert max(shares) - min(shares) <= 1, f"unequal shares {shares}"
    for w in workers:
        w.signal(signal.SIGTERM)
    for w in workers:
        assert w.process.wait_exit(15) == 0
        held, total = most_held(w)
        assert total == 12 and held <= total


def test_a_data_plane_added_behind_the_name_receives_every_worker(dataplane, worker, processes, short_tmp, thriftctl):
    fleet = Fleet(dataplane, short_tmp)
    a = fleet.start(1)
    fleet.publish(1)
    workers = fleet.attach_workers(worker, processes, 2, concurrency=4)
    assert sorted(gauges(a, "thriftworker_worker_credit").values()) == [4, 4]

    b = fleet.start(2)
    assert live_workers(b) == 0
    started = time.monotonic()
    fleet.publish(1, 2)
    # Resolved again within 200 ms; registered as soon as A gave up credit.
    wait_workers(b, 2, timeout=5, context=processes.tails)
    attached_in = time.monotonic() - started
    wait_for(
        lambda: sorted(gauges(a, "thriftworker_worker_credit").values()) == [2, 2]
        and sorted(gauges(b, "thriftworker_worker_credit").values()) == [2, 2],
        5,
        "each worker's credit 4 split 2 + 2",
        processes.tails,
    )
    assert whoami_set(b) == {f"rust:{w.pid}" for w in workers}
    assert attached_in < 5
    # Each data plane's `thriftctl workers` names every worker process
    # (HOST/PID/CONNECTION) with its share of the credit there.
    for dp in (a, b):
        listed = thriftctl(dp).ok("workers", "list")["workers"]
        pids = sorted(int(x["name"].split("/")[1]) for x in listed)
        assert pids == sorted(w.pid for w in workers), listed
        assert [x["credit"] for x in listed] == [2, 2]
        text = thriftctl(dp).run("workers", "list").stdout
        assert all(f"/{w.pid}/" in text for w in workers), text


def test_a_data_plane_drained_with_sigterm_under_load_fails_no_call(dataplane, worker, processes, short_tmp):
    fleet = Fleet(dataplane, short_tmp)
    a, b = fleet.start(1), fleet.start(2)
    fleet.publish(1, 2)
    workers = fleet.attach_workers(worker, processes, 2, concurrency=4)
    load = SteadyLoad(b.addr("echo"), threads=6, slow_ms=5)
    load_a = SteadyLoad(a.addr("echo"), threads=2)
    try:
        load.wait_calls(200, "calls through B before the drain")
        load_a.finish()
        # Like a pod deleted: out of the name first, then SIGTERM.
        fleet.publish(2)
        a.terminate(signal.SIGTERM)
        assert a.wait_exit(15) == 0
        # B gets each worker's whole credit back while its load runs on.
        wait_for(
            lambda: sorted(gauges(b, "thriftworker_worker_credit").values()) == [4, 4],
            10,
            "B holding each worker's full credit",
            processes.tails,
        )
        load.wait_calls(400, "calls through B after the drain")
    finally:
        failures = load.finish()
    assert failures == [], failures[:5]
    assert load_a.failures == [], load_a.failures[:5]
    assert all(w.alive() for w in workers)


def test_in_flight_never_exceeds_the_workers_concurrency_across_data_planes(dataplane, worker, processes, short_tmp):
    fleet = Fleet(dataplane, short_tmp)
    a, b = fleet.start(1), fleet.start(2)
    fleet.publish(1, 2)
    (w,) = fleet.attach_workers(worker, processes, 1, concurrency=3)
    loads = [SteadyLoad(dp.addr("echo"), threads=6, slow_ms=20) for dp in (a, b)]
    peak = 0
    try:
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            in_flight = sum(sum(gauges(dp, "thriftworker_worker_in_flight").values()) for dp in (a, b))
            assert in_flight <= 3, f"{in_flight} calls outstanding at a worker of concurrency 3"
            peak = max(peak, in_flight)
        # A third data plane arrives while both are saturated: credit moves
        # (3 = 1 + 1 + 1) without ever being given twice.
        c = fleet.start(3)
        fleet.publish(1, 2, 3)
        wait_workers(c, 1, context=processes.tails)
        for _ in range(50):
            in_flight = sum(sum(gauges(dp, "thriftworker_worker_in_flight").values()) for dp in (a, b, c))
            credit = sum(sum(gauges(dp, "thriftworker_worker_credit").values()) for dp in (a, b, c))
            assert credit <= 3, f"credit {credit} given out by a worker of concurrency 3"
            assert in_flight <= 3
    finally:
        failures = [f for load in loads for f in load.finish()]
    assert failures == [], failures[:5]
    assert peak >= 2, "the load never kept the worker busy: the check above proves nothing"
    w.signal(signal.SIGTERM)
    assert w.process.wait_exit(15) == 0
    held, total = most_held(w)
    assert total == 3 and 2 <= held <= 3, (held, total)


def test_a_restarted_data_plane_gets_its_workers_back(dataplane, worker, processes, short_tmp):
    fleet = Fleet(dataplane, short_tmp)
    a, b = fleet.start(1), fleet.start(2)
    fleet.publish(1, 2)
    workers = fleet.attach_workers(worker, processes, 2, concurrency=2)
    a.terminate(signal.SIGKILL)
    a.wait_exit(10)
    wait_for(
        lambda: sorted(gauges(b, "thriftworker_worker_credit").values()) == [2, 2],
        10,
        "B holding the whole credit while A is down",
        processes.tails,
    )
    again = fleet.start(1)
    wait_workers(again, 2, timeout=MAX_WAIT, context=processes.tails)
    assert whoami_set(again) == {f"rust:{w.pid}" for w in workers}
    wait_for(
        lambda: sorted(gauges(b, "thriftworker_worker_credit").values()) == [1, 1],
        10,
        "B back to its share",
        processes.tails,
    )


def test_a_worker_given_a_list_of_endpoints_attaches_to_each(dataplane, worker, processes, short_tmp):
    port = free_port()
    a = dataplane(endpoint=f"tcp://127.0.0.1:{port}")
    b = dataplane(endpoint=f"ipc://{short_tmp}/b.sock")
    w = worker(endpoint=f"{a.endpoint},{b.endpoint}", concurrency=2, wait=False, args=["--prefetch", 0])
    for dp in (a, b):
        wait_workers(dp, 1, context=processes.tails)
        assert whoami_set(dp, calls=12) == {f"rust:{w.pid}"}
        assert list(gauges(dp, "thriftworker_worker_credit").values()) == [1]
