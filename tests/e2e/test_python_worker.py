"""The `thriftworker` Python package (python/) as users run it:
`thriftworker-py` processes serving Apache- and thriftpy2-generated
processors through the real data plane, called by PyPI Thrift clients."""

import concurrent.futures
import signal

import pytest

from harness import (
    INTERNAL_ERROR,
    PROTOCOLS,
    Echo,
    EchoError,
    RawConnection,
    SteadyLoad,
    TMessageType,
    app_error,
    slow_args,
    thrift_client,
    wait_for,
)

MODES = ["inline", "threads", "asyncio", "gevent", "eventlet", "twisted"]
TARGETS = {"apache": "pyapp:apache", "thriftpy2": "pyapp:thriftpy2"}


def target(lib, mode):
    """asyncio mode serves the handlers whose methods are coroutines, twisted
    mode those returning Deferreds (Apache: generated with py:twisted)."""
    return TARGETS[lib] + {"asyncio": "_async", "twisted": "_twisted"}.get(mode, "")


@pytest.mark.parametrize("lib", TARGETS)
@pytest.mark.parametrize("mode", MODES)
def test_serves_every_protocol_and_every_kind_of_answer(dataplane, worker, mode, lib):
    dp = dataplane()
    w = worker("pkg", mode=mode, target=target(lib, mode))
    for protocol in PROTOCOLS:
        with thrift_client(dp.addr("echo"), protocol=protocol) as client:
            assert client.echo(f"héllo {protocol}") == f"héllo {protocol}"
            assert client.whoami() == f"pkg:{w.pid}"
            client.notify("n")  # oneway: answered with nothing, credit returned
            wait_for(lambda c=client: c.notified() >= 1, 10, "the oneway call to run")
            with pytest.raises(EchoError) as declared:
                client.fail("declared", 7)
            assert (declared.value.message, declared.value.code) == ("declared", 7)
            e = app_error(lambda c=client: c.fail("undeclared", 0))
            assert e.type == INTERNAL_ERROR, e
            assert "RuntimeError" in e.message or "Internal error" in e.message, e.message
            # The worker is still there after the handler's failure.
            assert client.echo("after") == "after"
    assert w.alive()
    assert "CREDIT VIOLATION" not in w.stderr


@pytest.mark.parametrize(
    "mode,concurrency,prefetch",
    [
        ("inline", 1, 0),
        ("inline", 1, 2),
        ("threads", 3, 1),
        ("asyncio", 4, 0),
        ("gevent", 4, 0),
        ("eventlet", 4, 0),
        ("twisted", 4, 0),
    ],
)
def test_never_more_in_flight_than_the_credit(dataplane, worker, mode, concurrency, prefetch):
    dp = dataplane()
    args = ("--prefetch", str(prefetch))
    w = worker("pkg", mode=mode, concurrency=concurrency if mode != "inline" else None, args=args,
               target=target("apache", mode))

    def call(i):
        with thrift_client(dp.addr("echo")) as client:
            return client.slow(str(i), 20)

    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        assert sorted(pool.map(call, range(36)), key=int) == [str(i) for i in range(36)]
    assert "CREDIT VIOLATION" not in w.stderr, w.stderr
    assert f"credit={concurrency + prefetch}" in w.stderr


@pytest.mark.parametrize("mode", MODES)
def test_sigterm_finishes_the_call_in_flight_and_exits_zero(dataplane, worker, processes, mode):
    dp = dataplane()
    w = worker("pkg", mode=mode, concurrency=2 if mode != "inline" else None, target=target("apache", mode))
    with RawConnection(dp.addr("echo")) as conn:
        conn.send_call("slow", slow_args("finished", 600), 1)
        wait_for(lambda: dp_in_flight(dp) == 1, 10, "the call at the worker", processes.tails)
        w.signal(signal.SIGTERM)
        r = conn.recv_message(result_cls=Echo.slow_result, timeout=10)
        assert (r.mtype, r.seqid, r.value.success) == (TMessageType.REPLY, 1, "finished"), r
    assert w.process.wait_exit(10) == 0, w.stderr
    assert "worker dead" not in dp.stderr, dp.tail()


def dp_in_flight(dp):
    """Calls the data plane has at workers (from /metrics)."""
    import urllib.request

    with urllib.request.urlopen(f"http://{dp.metrics_addr}/metrics", timeout=5) as r:
        text = r.read().decode()
    for line in text.splitlines():
        if line.startswith('thriftworker_service_in_flight{service="Echo"}'):
            return int(float(line.split()[-1]))
    return 0


def test_a_wrong_token_is_refused_with_exit_status_2(dataplane, worker, short_tmp):
    path = short_tmp / "token"
    path.write_text("right-token\n")
    dp = dataplane(workers={"token_file": str(path)})
    w = worker("pkg", token="wrong", wait=False)
    assert w.process.wait_exit(10) == 2
    assert "refused by the data plane: refused: wrong or missing worker token" in w.stderr, w.stderr
    assert dp.registered() == 0
    good = worker("pkg", token="right-token")
    with thrift_client(dp.addr("echo")) as client:
        assert client.whoami() == f"pkg:{good.pid}"


def test_check_loads_the_target_and_exits(processes):
    import subprocess
    import sys

    from harness import HERE, clean_env

    env = clean_env(PYTHONPATH=str(HERE))
    ok = subprocess.run(
        [sys.executable, "-m", "thriftworker", "--check", "pyapp:thriftpy2"],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert ok.returncode == 0 and ok.stdout.strip() == "ok: Echo, Calc", ok
    bad = subprocess.run(
        [sys.executable, "-m", "thriftworker", "--check", "pyapp:nothing"],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert bad.returncode == 1 and "nothing" in bad.stderr, bad


# -- the supervisor (thriftworker-py --workers N) ----------------------------------


def children(w):
    """The worker processes the supervisor says it spawned (pids)."""
    import re

    return [int(p) for p in re.findall(r"worker process (\d+) spawned", w.stderr)]


def test_supervisor_restarts_a_killed_process_and_its_call_is_answered(dataplane, worker, processes):
    import os

    dp = dataplane()
    w = worker("pkg", workers=2)
    pids = children(w)
    assert len(pids) == 2, w.stderr
    with RawConnection(dp.addr("echo")) as conn:
        conn.send_call("slow", slow_args("never", 20000), 5)
        wait_for(lambda: dp_in_flight(dp) == 1, 10, "the call at a worker", processes.tails)
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        r = conn.recv_message(result_cls=Echo.slow_result, timeout=10)
        assert (r.mtype, r.seqid) == (TMessageType.EXCEPTION, 5), r
        assert "worker died" in r.value.message, r.value.message
    wait_for(lambda: len(children(w)) == 4, 20, "two new worker processes", processes.tails)
    assert w.stderr.count("killed by SIGKILL: restarting") == 2, w.stderr
    dp.wait_registered(4, 20, context=processes.tails)
    with thrift_client(dp.addr("echo")) as client:
        assert client.echo("back") == "back"
        assert int(client.whoami().split(":")[1]) in children(w)[2:]


def test_sighup_reloads_under_load_without_a_failed_call(dataplane, worker, processes):
    dp = dataplane()
    w = worker("pkg", workers=2, mode="threads", concurrency=2)
    old = set(children(w))
    load = SteadyLoad(dp.addr("echo"))
    try:
        load.wait_calls(200, "calls before the reload")
        w.signal(signal.SIGHUP)
        wait_for(lambda: "stopping 2 old one(s) gracefully" in w.stderr, 20, "the reload", processes.tails)
        new = set(children(w)) - old
        assert len(new) == 2, w.stderr
        wait_for(lambda: w.stderr.count("exited with status 0") >= 2, 20, "the old processes to leave", processes.tails)
        load.pids.clear()
        load.wait_calls(200, "calls after the reload")
    finally:
        failures = load.finish()
    assert failures == [], failures[:5]
    assert {int(p.split(":")[1]) for p in load.pids} <= new, (load.pids, new)
    assert "worker dead" not in dp.stderr, dp.tail()


def test_sigterm_stops_every_process_gracefully_under_load(dataplane, worker, processes):
    dp = dataplane()
    w = worker("pkg", workers=2)
    load = SteadyLoad(dp.addr("echo"), threads=2)
    try:
        load.wait_calls(100, "calls before SIGTERM")
        # The data plane stays up: once the workers are gone, calls wait in
        # its queue and are answered "no live worker" after queue_timeout.
        # What must not happen is a call lost at a worker.
        w.signal(signal.SIGTERM)
        assert w.process.wait_exit(20) == 0, w.stderr
    finally:
        failures = load.finish()
    lost = [f for f in failures if "worker died" in f or "shutting down" in f]
    assert lost == [], lost[:5]
    assert w.stderr.count("exited with status 0") == 2, w.stderr
    assert "worker dead" not in dp.stderr, dp.tail()


def test_max_requests_recycles_a_process(dataplane, worker, processes):
    dp = dataplane()
    w = worker("pkg", workers=1, args=("--max-requests", "50"))
    with thrift_client(dp.addr("echo")) as client:
        for i in range(120):
            assert client.echo(str(i)) == str(i)
    wait_for(lambda: w.stderr.count("recycled") >= 2, 20, "two recycles", processes.tails)
    assert len(children(w)) >= 3


def test_a_killed_supervisor_leaves_no_orphan(dataplane, worker, processes):

    dp = dataplane()
    w = worker("pkg", workers=2)
    pids = children(w)
    w.signal(signal.SIGKILL)
    # Each process notices its parent is gone, leaves gracefully (DISCONNECT,
    # the data plane's goodbye) and exits.
    wait_for(lambda: not any(alive(p) for p in pids), 20, "the orphans to exit", processes.tails)
    dp.wait_log("worker left", 2, 10)
    assert "worker dead" not in dp.stderr, dp.tail()


def alive(pid):
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by init) counts as gone.
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(")")[-1].split()[0] != "Z"


def test_supervisor_exits_2_when_refused(dataplane, worker, short_tmp):
    path = short_tmp / "token"
    path.write_text("right-token\n")
    dataplane(workers={"token_file": str(path)})
    w = worker("pkg", workers=2, token="wrong", wait=False)
    assert w.process.wait_exit(20) == 2, w.stderr
    assert "refused by the data plane" in w.stderr
