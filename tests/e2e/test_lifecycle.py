"""Process lifecycle: the ready file, logs, graceful shutdown, worker
tokens, workers leaving, and workers reconnecting to a restarted data plane."""

import json
import signal
import socket

import pytest

from harness import (
    INTERNAL_ERROR,
    Echo,
    RawConnection,
    TMessageType,
    slow_args,
    thrift_client,
    wait_for,
)


def refuses_connections(addr):
    try:
        s = socket.create_connection(addr, timeout=1)
    except ConnectionRefusedError:
        return True
    s.close()
    return False


def test_ready_file(dataplane):
    dp = dataplane()
    assert set(dp.ready) == {"pid", "listeners", "worker_endpoints", "admin", "metrics"}, dp.ready
    admin_host, admin_port = dp.ready["admin"].rsplit(":", 1)
    assert admin_host == "127.0.0.1" and int(admin_port) > 0, "admin API binds loopback"
    assert dp.ready["pid"] == dp.pid
    assert set(dp.ready["listeners"]) == {"echo", "mux"}
    for name in ("echo", "mux"):
        host, port = dp.addr(name)
        assert host == "127.0.0.1"
        assert port > 0
    assert dp.addr("echo") != dp.addr("mux")
    assert dp.ready["worker_endpoints"] == [dp.endpoint]


def test_json_logs(dataplane, worker):
    dp = dataplane(args=["--log-format", "json"])
    worker()
    with thrift_client(dp.addr("echo")) as client:
        assert client.echo("json") == "json"
    lines = [line for line in dp.stderr.splitlines() if line.strip()]
    assert lines
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"stderr line is not JSON: {line!r}")
    messages = [r.get("fields", {}).get("message") for r in records]
    assert "worker registered" in messages, messages


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_when_idle_exits_zero(dataplane, worker, sig):
    dp = dataplane()
    worker()
    dp.terminate(sig)
    assert dp.wait_exit(10) == 0, dp.tail()
    assert refuses_connections(dp.addr("echo"))


def test_sigterm_drains_calls_in_flight(dataplane, worker, processes):
    dp = dataplane()
    w = worker("py", concurrency=3)
    conns = [RawConnection(dp.addr("echo")) for _ in range(3)]
    try:
        for i, conn in enumerate(conns):
            conn.send_call("slow", slow_args(f"drained {i}", 1000), 10 + i)
        wait_for(lambda: w.requests_seen() >= 3, 10, "3 calls at the worker", processes.tails)
        dp.terminate(signal.SIGTERM)
        wait_for(lambda: refuses_connections(dp.addr("echo")), 5, "new connections to be refused after SIGTERM", dp.tail)
        for i, conn in enumerate(conns):
            r = conn.recv_message(result_cls=Echo.slow_result, timeout=10)
            assert (r.mtype, r.seqid, r.value.success) == (TMessageType.REPLY, 10 + i, f"drained {i}"), r
    finally:
        for conn in conns:
            conn.close()
    assert dp.wait_exit(15) == 0, dp.tail()
    assert refuses_connections(dp.addr("mux"))


def test_shutdown_timeout_answers_calls_left(dataplane, worker, processes):
    dp = dataplane(args=["--shutdown-timeout", "500ms"])
    w = worker("py", concurrency=1)
    with RawConnection(dp.addr("echo")) as conn:
        conn.send_call("slow", slow_args("too slow", 8000), 3)
        wait_for(lambda: w.requests_seen() >= 1, 10, "the call at the worker", processes.tails)
        dp.terminate(signal.SIGTERM)
        r = conn.recv_message(result_cls=Echo.slow_result, timeout=6)
        assert r.mtype == TMessageType.EXCEPTION, r
        assert r.seqid == 3
        assert r.value.type == INTERNAL_ERROR, r.value
        assert r.value.message.startswith("thriftworker: service 'Echo'"), r.value.message
        assert "shutting down" in r.value.message, r.value.message
    assert dp.wait_exit(10) == 0, dp.tail()


TOKEN = "s3cret-token"


@pytest.fixture
def token_dp(dataplane, short_tmp):
    path = short_tmp / "token"
    path.write_text(TOKEN + "\n")
    path.chmod(0o600)
    return dataplane(workers={"token_file": str(path)})


@pytest.mark.parametrize("token", ["wrong", None], ids=["wrong", "missing"])
def test_pyworker_with_bad_token_is_refused(token_dp, worker, token):
    w = worker("py", token=token, wait=False)
    assert w.process.wait_exit(10) == 2
    assert w.stdout.startswith("refused: "), w.stdout
    assert "ready worker_id=" not in w.stdout
    assert token_dp.registered() == 0
    assert TOKEN not in token_dp.stderr, "the token must never be logged"


def test_pyworker_with_right_token_serves(token_dp, worker):
    w = worker("py", token=TOKEN)
    with thrift_client(token_dp.addr("echo")) as client:
        assert client.whoami() == f"py:{w.pid}"
        assert client.echo("authorised") == "authorised"
    assert TOKEN not in token_dp.stderr


def test_rust_worker_token(token_dp, worker, short_tmp):
    path = short_tmp / "worker-token"
    path.write_text(TOKEN + "\n")
    worker("rust", token_file=str(path))
    worker("rust", token=TOKEN)  # from THRIFTWORKER_WORKER_TOKEN
    with thrift_client(token_dp.addr("echo")) as client:
        assert client.echo("rust authorised") == "rust authorised"
    bad = worker("rust", token="wrong", wait=False)
    token_dp.wait_log("worker refused", 1, 10)
    assert token_dp.registered() == 2
    bad.process.kill()


def test_worker_leaves_gracefully_on_sigterm(dataplane, worker, processes):
    dp = dataplane()
    a = worker("py", concurrency=1)
    with RawConnection(dp.addr("echo")) as conn:
        conn.send_call("slow", slow_args("finished", 800), 1)
        wait_for(lambda: a.requests_seen() >= 1, 10, "the call at worker A", processes.tails)
        b = worker("py", concurrency=2)
        a.signal(signal.SIGTERM)  # A sends DISCONNECT, then finishes its call
        r = conn.recv_message(result_cls=Echo.slow_result, timeout=10)
        assert (r.mtype, r.seqid, r.value.success) == (TMessageType.REPLY, 1, "finished"), r
    assert a.process.wait_exit(10) == 0
    with thrift_client(dp.addr("echo")) as client:
        assert {client.whoami() for _ in range(10)} == {f"py:{b.pid}"}
    assert a.requests_seen() == 1
    assert "worker dead" not in dp.stderr, dp.tail()


@pytest.mark.parametrize("kind", ["rust", "py", "pkg"])  # pkg: the thriftworker Python package
def test_worker_reconnects_to_restarted_dataplane(dataplane, worker, processes, kind):
    first = dataplane(endpoint_flag=True)
    w = worker(kind)
    with thrift_client(first.addr("echo")) as client:
        assert client.echo("first") == "first"
    first.terminate(signal.SIGTERM)
    assert first.wait_exit(15) == 0, first.tail()
    second = dataplane(endpoint=first.endpoint, endpoint_flag=True)
    second.wait_registered(1, 20, context=processes.tails)
    assert w.alive(), "the worker must survive its data plane's restart"
    with thrift_client(second.addr("echo")) as client:
        assert client.echo("second") == "second"
