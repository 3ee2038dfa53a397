"""Interoperability: the independent pyzmq worker (tests/e2e/pyworker.py)
and the Rust generated client (examples' echo-client)."""

import concurrent.futures
import socket
import subprocess

import pytest

from harness import PROTOCOLS, Calc, Echo, EchoError, binary, clean_env, thrift_client


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_pyworker_serves_each_protocol(dataplane, worker, protocol):
    dp = dataplane()
    w = worker("py")
    with thrift_client(dp.addr("echo"), protocol) as client:
        assert client.whoami() == f"py:{w.pid}"
        assert client.echo(f"py {protocol} ✓") == f"py {protocol} ✓"
        with pytest.raises(EchoError) as err:
            client.fail("py fail", -3)
        assert (err.value.message, err.value.code) == ("py fail", -3)
        client.notify("one")
    with thrift_client(dp.addr("mux"), protocol, Calc, multiplexed="Calc") as calc:
        assert calc.add(20, 22) == 42
    with thrift_client(dp.addr("mux"), protocol, Echo, multiplexed="Echo") as client:
        assert client.echo("mux") == "mux"
    assert "CREDIT VIOLATION" not in w.stderr


def test_pyworker_credit_is_respected(dataplane, worker):
    dp = dataplane()
    w = worker("py", concurrency=2)

    def call(i):
        with thrift_client(dp.addr("echo"), PROTOCOLS[i % 3]) as client:
            return client.slow(f"c{i}", 20)

    with concurrent.futures.ThreadPoolExecutor(50) as pool:
        results = list(pool.map(call, range(50)))
    assert results == [f"c{i}" for i in range(50)]
    assert w.requests_seen() == 50
    assert "CREDIT VIOLATION" not in w.stderr, w.stderr[-3000:]


# -- the Rust generated client -------------------------------------------------


def echo_client(addr, *command, protocol=None, lax=False, multiplexed=None):
    argv = [str(binary("echo-client")), "--addr", f"{addr[0]}:{addr[1]}"]
    if protocol:
        argv += ["--protocol", protocol]
    if lax:
        argv.append("--lax")
    if multiplexed:
        argv += ["--multiplexed", multiplexed]
    argv += [str(c) for c in command]
    if not binary("echo-client").exists():
        pytest.fail(f"{argv[0]} not found: cargo build --workspace --bins", pytrace=False)
    return subprocess.run(argv, capture_output=True, text=True, timeout=20, env=clean_env())


def ok(result):
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    return result.stdout.strip()


@pytest.mark.parametrize(
    "options",
    [{}, {"protocol": "binary"}, {"protocol": "binary", "lax": True}, {"protocol": "compact"}],
    ids=["default", "binary", "lax", "compact"],
)
def test_rust_client(dataplane, worker, options):
    dp = dataplane()
    w = worker("py")  # Rust client, data plane, Python worker
    addr = dp.addr("echo")
    assert ok(echo_client(addr, "echo", "hello from rust", **options)) == "hello from rust"
    assert ok(echo_client(addr, "whoami", **options)) == f"py:{w.pid}"
    assert ok(echo_client(addr, "slow", "zz", 50, **options)) == "zz"
    assert ok(echo_client(addr, "fail", "bad thing", 17, **options)) == "EchoError code=17 message=bad thing"
    assert ok(echo_client(addr, "notify", "n", **options)) == "sent"
    assert ok(echo_client(addr, "notified", **options)) in ("0", "1")  # the oneway call may still be on its way
    assert ok(echo_client(addr, "repeat", 25, "again and again", **options)) == "ok 25"
    # Calc is not on this listener: `add` goes to Echo, whose processor does not know it
    r = echo_client(addr, "add", 2, 2, **options)
    assert r.returncode == 3, (r.returncode, r.stdout, r.stderr)
    assert r.stderr.startswith("application error: UnknownMethod: "), r.stderr


@pytest.mark.parametrize("protocol", ["binary", "compact"])
def test_rust_client_multiplexed(dataplane, worker, protocol):
    dp = dataplane()
    worker()
    addr = dp.addr("mux")
    assert ok(echo_client(addr, "echo", "mux echo", protocol=protocol, multiplexed="Echo")) == "mux echo"
    assert ok(echo_client(addr, "add", 19, 23, protocol=protocol, multiplexed="Calc")) == "42"
    r = echo_client(addr, "echo", "x", protocol=protocol, multiplexed="Nope")
    assert r.returncode == 3, (r.returncode, r.stdout, r.stderr)
    assert "application error: UnknownMethod: thriftworker: unknown service" in r.stderr, r.stderr


def test_rust_client_reports_timeouts_as_application_errors(dataplane, worker):
    dp = dataplane(services={"Echo": {"timeout": "200ms", "method_timeouts": None}})
    worker()
    r = echo_client(dp.addr("echo"), "slow", "late", 1000)
    assert r.returncode == 3, (r.returncode, r.stdout, r.stderr)
    assert "application error: InternalError: thriftworker: service 'Echo' timed out" in r.stderr, r.stderr


def test_rust_client_connection_refused_exits_1():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    r = echo_client(("127.0.0.1", port), "echo", "x")
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
