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
    TMessageType,
    app_error,
    slow_args,
    thrift_client,
    wait_for,
)

MODES = ["inline", "threads"]
TARGETS = {"apache": "pyapp:apache", "thriftpy2": "pyapp:thriftpy2"}


@pytest.mark.parametrize("lib", TARGETS)
@pytest.mark.parametrize("mode", MODES)
def test_serves_every_protocol_and_every_kind_of_answer(dataplane, worker, mode, lib):
    dp = dataplane()
    w = worker("pkg", mode=mode, target=TARGETS[lib])
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


@pytest.mark.parametrize("mode,concurrency", [("inline", 1), ("threads", 3)])
def test_never_more_in_flight_than_the_credit(dataplane, worker, mode, concurrency):
    dp = dataplane()
    w = worker("pkg", mode=mode, concurrency=concurrency if mode == "threads" else None)

    def call(i):
        with thrift_client(dp.addr("echo")) as client:
            return client.slow(str(i), 20)

    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        assert sorted(pool.map(call, range(36)), key=int) == [str(i) for i in range(36)]
    assert "CREDIT VIOLATION" not in w.stderr, w.stderr
    assert f"credit={concurrency}" in w.stderr


@pytest.mark.parametrize("mode", MODES)
def test_sigterm_finishes_the_call_in_flight_and_exits_zero(dataplane, worker, processes, mode):
    dp = dataplane()
    w = worker("pkg", mode=mode, concurrency=2 if mode == "threads" else None)
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


def test_serves_again_after_the_data_plane_restarts(dataplane, worker, processes):
    first = dataplane(endpoint_flag=True)
    w = worker("pkg", mode="threads", concurrency=2)
    with thrift_client(first.addr("echo")) as client:
        assert client.echo("first") == "first"
    first.terminate(signal.SIGTERM)
    assert first.wait_exit(15) == 0, first.tail()
    second = dataplane(endpoint=first.endpoint, endpoint_flag=True)
    second.wait_registered(1, 20, context=processes.tails)
    assert w.alive(), "the worker must survive its data plane's restart"
    with thrift_client(second.addr("echo")) as client:
        assert client.echo("second") == "second"


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
