"""The admin API (thriftworker.admin.v1, grpc.health.v1, reflection), driven
through the real `thriftctl` binary (`-o json` parsed) and, independently,
through Python grpcio with stubs generated from admin.proto at test time.

Every test starts its own data plane with the admin API on 127.0.0.1:0 (see
harness.base_config); the address comes from the ready file."""

import json
import signal
import socket

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import harness
from harness import (
    make_pki,
    Calc,
    Echo,
    RUST_DEFAULT_CREDIT,
    RawConnection,
    Thriftctl,
    free_port,
    raw_echo,
    slow_args,
    split_addr,
    thrift_client,
    wait_for,
)

REFUSED_HINT = "connection refused (is thriftworker running with the admin API on that address?)"


# -- helpers ------------------------------------------------------------------------


def by_name(items):
    return {i["name"]: i for i in items}


def listeners(ctl):
    return by_name(ctl.ok("listeners", "list")["listeners"])


def services(ctl):
    return by_name(ctl.ok("services", "list")["services"])


def refuses_connections(addr):
    try:
        s = socket.create_connection(addr, timeout=1)
    except ConnectionRefusedError:
        return True
    s.close()
    return False


def no_answer_within(conn, seconds):
    """True if nothing at all arrives on `conn` for `seconds`."""
    try:
        conn.recv_frame(timeout=seconds)
    except socket.timeout:
        return True
    return False


def health_status(ctl, service=None):
    args = ["health"] + (["--service", service] if service else [])
    r = ctl.run(*args)
    return r.stdout.strip(), r


def grpc_code(call):
    """Runs a grpc call that must fail; returns its StatusCode."""
    try:
        value = call()
    except grpc.RpcError as e:
        return e.code()
    raise AssertionError(f"expected a gRPC error, got {value!r}")


# -- no server needed ---------------------------------------------------------------


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completions(shell):
    r = Thriftctl(None).run("completions", shell)
    assert r.rc == 0, r
    assert len(r.stdout) > 200 and "thriftctl" in r.stdout, r
    for verb in ("services", "listeners", "workers", "stats", "drain", "health"):
        assert verb in r.stdout, f"{verb} missing from the {shell} script"


def test_connection_refused_names_the_address():
    port = free_port()
    r = Thriftctl(f"127.0.0.1:{port}").run("services", "list")
    assert r.rc == 1, r
    assert r.stderr == f"thriftctl: cannot connect to http://127.0.0.1:{port}: {REFUSED_HINT}\n", r
    assert r.stdout == ""
    # Same through THRIFTCTL_ADDR, scheme given.
    r = Thriftctl(None).run("listeners", "list", env={"THRIFTCTL_ADDR": f"http://127.0.0.1:{port}"})
    assert r.rc == 1 and f"cannot connect to http://127.0.0.1:{port}: {REFUSED_HINT}" in r.stderr, r
    # And the default address when nothing is given.
    r = Thriftctl(None).run("--timeout", "2s", "stats")
    if r.rc == 1 and "cannot connect" in r.stderr:
        assert r.stderr == f"thriftctl: cannot connect to http://127.0.0.1:9901: {REFUSED_HINT}\n", r


@pytest.mark.parametrize(
    "args",
    [
        ["listeners", "pause"],
        ["listeners", "pause", "echo", "--all"],
        ["listeners", "add", "x", "--address", "127.0.0.1:0"],
        ["services", "register", "X", "--timeout", "soon"],
        ["services", "register", "X", "--method-timeout", "slow"],
        ["services", "register", "X", "--max-queue", "0"],
        ["stats", "--interval", "1s"],
        ["completions", "tcsh"],
        ["nonsense"],
    ],
    ids=lambda a: " ".join(a),
)
def test_usage_errors_exit_2(args):
    r = Thriftctl(f"127.0.0.1:{free_port()}").run(*args)
    assert r.rc == 2, r
    assert r.stderr.strip(), r


def test_help_on_every_verb_has_an_example():
    ctl = Thriftctl(None)
    verbs = [
        ["services", "list"], ["services", "get"], ["services", "register"], ["services", "update"],
        ["services", "unregister"], ["listeners", "list"], ["listeners", "add"], ["listeners", "remove"],
        ["listeners", "pause"], ["listeners", "resume"], ["workers", "list"], ["workers", "evict"],
        ["stats"], ["drain"], ["health"], ["completions"],
    ]
    for verb in verbs:
        r = ctl.run(*verb, "--help")
        assert r.rc == 0, r
        assert "Example" in r.stdout and f"thriftctl {' '.join(verb)}" in r.stdout, r


# -- services -----------------------------------------------------------------------


def test_services_verbs(dataplane, worker, thriftctl):
    dp = dataplane()
    worker()
    ctl = thriftctl()

    svcs = wait_for(
        lambda: (lambda s: s if s["Echo"]["live_workers"] == 1 else None)(services(ctl)),
        5, "Echo to list its worker", dp.tail,
    )
    assert set(svcs) == {"Echo", "Calc"}
    echo = svcs["Echo"]
    assert echo["settings"] == {
        "timeout_ms": 15000,
        "method_timeouts_ms": {"slow": 30000},
        "queue_timeout_ms": 10000,
        "max_queue": 1024,
        "strip_service_prefix": True,
    }, echo
    credit = RUST_DEFAULT_CREDIT
    assert echo["total_credit"] == credit and echo["free_credit"] == credit and echo["in_flight"] == 0, echo
    assert echo["draining"] is False
    assert ctl.ok("services", "get", "Echo") == echo

    extra = ctl.ok(
        "services", "register", "Extra", "--timeout", "5s", "--method-timeout", "slow=30s",
        "--method-timeout", "fast=100ms", "--queue-timeout", "250ms", "--max-queue", "7", "--no-strip-prefix",
    )
    assert extra["name"] == "Extra"
    assert extra["settings"] == {
        "timeout_ms": 5000,
        "method_timeouts_ms": {"fast": 100, "slow": 30000},
        "queue_timeout_ms": 250,
        "max_queue": 7,
        "strip_service_prefix": False,
    }, extra
    assert extra["live_workers"] == 0
    assert ctl.ok("services", "get", "Extra") == extra

    # Defaults when nothing is given.
    plain = ctl.ok("services", "register", "Plain")
    assert plain["settings"] == {
        "timeout_ms": 30000,
        "method_timeouts_ms": {},
        "queue_timeout_ms": 1000,
        "max_queue": 1024,
        "strip_service_prefix": True,
    }, plain

    line = ctl.fails("ALREADY_EXISTS", "services", "register", "Extra")
    assert line.startswith("thriftctl: services register Extra: ALREADY_EXISTS: "), line
    assert "Extra" in line.split("ALREADY_EXISTS: ", 1)[1]

    # update: only what is given changes.
    updated = ctl.ok("services", "update", "Extra", "--timeout", "6s", "--strip-prefix")
    assert updated["settings"] == dict(extra["settings"], timeout_ms=6000, strip_service_prefix=True), updated
    assert ctl.ok("services", "get", "Extra")["settings"]["timeout_ms"] == 6000
    ctl.fails("NOT_FOUND", "services", "update", "Nope", "--timeout", "1s")
    # Method timeouts: set, kept by an update that does not name them, cleared on request.
    assert ctl.ok("services", "update", "Extra", "--method-timeout", "slow=9s")["settings"]["method_timeouts_ms"] == {
        "slow": 9000}
    assert ctl.ok("services", "update", "Extra", "--timeout", "7s")["settings"]["method_timeouts_ms"] == {"slow": 9000}
    cleared = ctl.ok("services", "update", "Extra", "--clear-method-timeouts")
    assert cleared["settings"]["method_timeouts_ms"] == {} and cleared["settings"]["timeout_ms"] == 7000, cleared

    assert ctl.ok("services", "unregister", "Extra") == {}
    assert ctl.ok("services", "unregister", "Plain") == {}
    line = ctl.fails("NOT_FOUND", "services", "get", "Extra")
    assert line.startswith("thriftctl: services get Extra: NOT_FOUND: "), line
    ctl.fails("NOT_FOUND", "services", "unregister", "Extra")
    assert set(services(ctl)) == {"Echo", "Calc"}

    # The table: a header, one aligned row per service.
    r = ctl.run("services", "list")
    assert r.rc == 0 and r.stderr == "", r
    lines = r.stdout.splitlines()
    assert lines[0].split()[:2] == ["NAME", "WORKERS"], r.stdout
    assert sorted(line.split()[0] for line in lines[1:]) == ["Calc", "Echo"], r.stdout
    assert all(line == line.rstrip() for line in lines)
    r = ctl.run("services", "get", "Echo")
    assert r.rc == 0 and "slow=30s" in r.stdout, r

    # Calls still work after all that.
    with thrift_client(dp.addr("echo")) as client:
        assert client.echo("after") == "after"


# -- listeners ----------------------------------------------------------------------


def test_listener_added_at_runtime_serves_calls(dataplane, worker, thriftctl):
    dp = dataplane()
    worker()
    ctl = thriftctl()

    added = ctl.ok("listeners", "add", "extra", "--address", "127.0.0.1:0", "--service", "Echo")
    assert added["name"] == "extra"
    assert added["settings"]["address"] == "127.0.0.1:0"
    assert added["settings"]["services"] == ["Echo"]
    assert added["settings"]["protocol"] == "auto"
    assert added["paused"] is False
    addr = split_addr(added["bound_address"])
    assert addr[0] == "127.0.0.1" and addr[1] > 0, added
    with thrift_client(addr) as client:
        assert client.echo("runtime listener") == "runtime listener"
        assert client.whoami().startswith("rust:")

    # Multiplexed, compact only, with a default service, on a one-port range.
    port = free_port()
    mux = ctl.ok(
        "listeners", "add", "extra-mux", "--address", f"127.0.0.1:{port}-{port}",
        "--service", "Echo", "--service", "Calc", "--default-service", "Echo",
        "--protocol", "compact", "--max-pipeline", "8", "--max-connections", "5",
        "--idle-timeout", "1m", "--max-frame-size", "65536",
    )
    assert mux["bound_address"] == f"127.0.0.1:{port}", mux
    s = mux["settings"]
    assert (s["protocol"], s["default_service"]) == ("compact", "Echo"), s
    assert (s["max_pipeline"], s["max_connections"]) == (8, 5), s
    assert (s["idle_timeout_ms"], s["max_frame_size"]) == (60000, 65536), s
    with thrift_client(("127.0.0.1", port), protocol="compact", service=Calc, multiplexed="Calc") as calc:
        assert calc.add(40, 2) == 42
    with thrift_client(("127.0.0.1", port), protocol="compact") as client:
        assert client.echo("default service") == "default service"

    ls = listeners(ctl)
    assert set(ls) == {"echo", "mux", "extra", "extra-mux"}
    assert ls["extra"]["bound_address"] == added["bound_address"]
    assert ls["echo"]["bound_address"] == dp.addr_str("echo")

    ctl.fails("ALREADY_EXISTS", "listeners", "add", "extra", "--address", "127.0.0.1:0", "--service", "Echo")

    r = ctl.run("listeners", "list")
    assert r.rc == 0, r
    header, *rows = r.stdout.splitlines()
    assert header.split()[:3] == ["NAME", "ADDRESS", "SERVICES"], r.stdout
    assert {row.split()[0] for row in rows} == {"echo", "mux", "extra", "extra-mux"}, r.stdout


def test_pause_stops_new_connections_only(dataplane, worker, thriftctl):
    dp = dataplane()
    worker()
    ctl = thriftctl()
    addr = dp.addr("echo")

    with RawConnection(addr) as old:
        assert raw_echo(old, "before", 1).value.success == "before"

        paused = by_name(ctl.ok("listeners", "pause", "echo")["listeners"])
        assert paused["echo"]["paused"] is True and paused["mux"]["paused"] is False, paused
        assert listeners(ctl)["echo"]["paused"] is True
        stats = by_name(ctl.ok("stats", "--listener", "echo")["listeners"])
        assert stats["echo"]["paused"] is True, stats

        # The existing connection keeps being served.
        assert raw_echo(old, "while paused", 2).value.success == "while paused"

        # A new one connects (kernel backlog) but is not answered.
        with RawConnection(addr) as new:
            new.send_call("echo", Echo.echo_args(message="waiting"), 3)
            assert no_answer_within(new, 0.5), "a paused listener answered a new connection"
            assert raw_echo(old, "still served", 4).value.success == "still served"

            resumed = by_name(ctl.ok("listeners", "resume", "echo")["listeners"])
            assert resumed["echo"]["paused"] is False
            reply = new.recv_message(result_cls=Echo.echo_result, timeout=5)
            assert (reply.seqid, reply.value.success) == (3, "waiting")
        assert listeners(ctl)["echo"]["paused"] is False

    # --all, and the table.
    everything = ctl.ok("listeners", "pause", "--all")["listeners"]
    assert all(listener["paused"] for listener in everything), everything
    with RawConnection(dp.addr("mux")) as conn:
        conn.send_call("Echo:echo", Echo.echo_args(message="mux"), 5)  # mux has no default service
        assert no_answer_within(conn, 0.5)
        r = ctl.run("listeners", "resume", "--all")
        assert r.rc == 0 and "paused" not in r.stdout and "accepting" in r.stdout, r
        assert conn.recv_message(result_cls=Echo.echo_result, timeout=5).value.success == "mux"

    ctl.fails("NOT_FOUND", "listeners", "pause", "nope")
    ctl.fails("NOT_FOUND", "listeners", "resume", "nope")


def test_listener_added_paused_waits_for_resume(dataplane, worker, thriftctl):
    dataplane()
    worker()
    ctl = thriftctl()
    added = ctl.ok("listeners", "add", "later", "--address", "127.0.0.1:0", "--service", "Echo", "--paused")
    assert added["paused"] is True and added["settings"]["paused"] is True, added
    with RawConnection(split_addr(added["bound_address"])) as conn:
        conn.send_call("echo", Echo.echo_args(message="later"), 1)
        assert no_answer_within(conn, 0.5)
        ctl.ok("listeners", "resume", "later")
        assert conn.recv_message(result_cls=Echo.echo_result, timeout=5).value.success == "later"


def test_remove_listener_drains_it(dataplane, worker, thriftctl, processes):
    dp = dataplane()
    w = worker("py", concurrency=2)
    ctl = thriftctl()
    added = ctl.ok("listeners", "add", "extra", "--address", "127.0.0.1:0", "--service", "Echo")
    addr = split_addr(added["bound_address"])

    with RawConnection(addr) as conn:
        conn.send_call("slow", slow_args("drained", 1500), 7)
        wait_for(lambda: w.requests_seen() >= 1, 10, "the slow call at the worker", processes.tails)
        remover = processes.start(
            "thriftctl remove", ctl.argv("-o", "json", "listeners", "remove", "extra", "--drain-timeout", "10s"),
            ctl.env_for(),
        )
        wait_for(
            lambda: refuses_connections(addr), 5, "new connections to the removed listener to be refused", processes.tails
        )
        assert "extra" not in listeners(ctl)
        # The call in flight is still answered, by its worker.
        reply = conn.recv_message(result_cls=Echo.slow_result, timeout=10)
        assert (reply.seqid, reply.value.success) == (7, "drained"), reply
        assert remover.wait_exit(10) == 0, remover.tail()
        assert json.loads(remover.stdout) == {}
        assert conn.closed_by_peer(5), "the drained connection stayed open"

    assert refuses_connections(addr)
    ctl.fails("NOT_FOUND", "listeners", "remove", "extra")
    # The others are untouched.
    with thrift_client(dp.addr("echo")) as client:
        assert client.echo("others") == "others"
    assert set(listeners(ctl)) == {"echo", "mux"}
    assert "extra" not in by_name(ctl.ok("stats")["listeners"])


def test_unregister_service_drains_it(dataplane, worker, thriftctl, processes, short_tmp):
    config = harness.base_config(f"ipc://{short_tmp}/w.sock")
    config["listeners"] = [
        {"name": "echo", "address": "127.0.0.1:0", "services": ["Echo"]},
        {"name": "calc", "address": "127.0.0.1:0", "services": ["Calc"]},
    ]
    dp = dataplane(config=config)
    w = worker("py", concurrency=2)
    ctl = thriftctl()

    line = ctl.fails("FAILED_PRECONDITION", "services", "unregister", "Echo")
    assert "echo" in line, line

    with RawConnection(dp.addr("echo")) as conn:
        conn.send_call("slow", slow_args("finishes", 1500), 9)
        wait_for(lambda: w.requests_seen() >= 1, 10, "the slow call at the worker", processes.tails)
        remover = processes.start(
            "thriftctl remove", ctl.argv("listeners", "remove", "echo", "--drain-timeout", "10s"), ctl.env_for()
        )
        wait_for(lambda: "echo" not in listeners(ctl), 5, "listener echo to be gone", processes.tails)
        # No listener names Echo any more: it can go, with its call in flight.
        assert ctl.ok("services", "unregister", "Echo") == {}
        assert set(services(ctl)) == {"Calc"}
        ctl.fails("NOT_FOUND", "services", "get", "Echo")
        reply = conn.recv_message(result_cls=Echo.slow_result, timeout=10)
        assert (reply.seqid, reply.value.success) == (9, "finishes"), reply
        assert remover.wait_exit(10) == 0, remover.tail()

    wait_for(lambda: health_status(ctl, "Echo")[0] != "SERVING", 5, "Echo's health to leave SERVING", dp.tail)
    # Calc is unaffected.
    with thrift_client(dp.addr("calc"), service=Calc) as calc:
        assert calc.add(1, 2) == 3
    assert health_status(ctl, "Calc")[0] == "SERVING"


# -- errors -------------------------------------------------------------------------


def test_error_statuses_through_thriftctl(dataplane, thriftctl):
    dp = dataplane()
    ctl = thriftctl()
    echo_port = dp.addr("echo")[1]

    ctl.fails("ALREADY_EXISTS", "services", "register", "Echo")
    ctl.fails("ALREADY_EXISTS", "listeners", "add", "echo", "--address", "127.0.0.1:0", "--service", "Echo")

    ctl.fails("NOT_FOUND", "services", "get", "Nope")
    ctl.fails("NOT_FOUND", "services", "update", "Nope", "--timeout", "1s")
    ctl.fails("NOT_FOUND", "services", "unregister", "Nope")
    ctl.fails("NOT_FOUND", "listeners", "remove", "nope")
    ctl.fails("NOT_FOUND", "listeners", "pause", "nope")
    ctl.fails("NOT_FOUND", "listeners", "resume", "nope")
    ctl.fails("NOT_FOUND", "workers", "evict", "nope")

    bad_addresses = ("nowhere", "127.0.0.1", "127.0.0.1:9000-8000", "127.0.0.1:0-10", "example.com:0", "127.0.0.1:70000")
    for address in bad_addresses:
        line = ctl.fails("INVALID_ARGUMENT", "listeners", "add", "bad", "--address", address, "--service", "Echo")
        assert line.startswith("thriftctl: listeners add bad: INVALID_ARGUMENT: "), line
    ctl.fails("INVALID_ARGUMENT", "listeners", "add", "bad", "--address", "127.0.0.1:0", "--service", "Nope")
    ctl.fails(
        "INVALID_ARGUMENT", "listeners", "add", "bad", "--address", "127.0.0.1:0",
        "--service", "Echo", "--default-service", "Calc",
    )
    ctl.fails(
        "INVALID_ARGUMENT", "listeners", "add", "bad", "--address", "127.0.0.1:0", "--service", "Echo",
        "--max-frame-size", "8",
    )
    ctl.fails("INVALID_ARGUMENT", "services", "register", "Bad:Name")

    line = ctl.fails("FAILED_PRECONDITION", "services", "unregister", "Echo")
    assert line.startswith("thriftctl: services unregister Echo: FAILED_PRECONDITION: "), line
    ctl.fails(
        "FAILED_PRECONDITION", "listeners", "add", "taken", "--address", f"127.0.0.1:{echo_port}", "--service", "Echo"
    )

    # A failed change changes nothing.
    assert set(listeners(ctl)) == {"echo", "mux"}
    assert set(services(ctl)) == {"Echo", "Calc"}


def test_error_statuses_through_grpcio(dataplane, admin_pb, admin_channel):
    dp = dataplane()
    pb = admin_pb.pb
    stub = admin_pb.grpc.AdminStub(admin_channel(dp))
    C = grpc.StatusCode
    echo_port = dp.addr("echo")[1]

    def listener(name="bad", **settings):
        base = {"address": "127.0.0.1:0", "services": ["Echo"]}
        base.update(settings)
        return pb.AddListenerRequest(name=name, settings=pb.ListenerSettings(**base))

    cases = [
        (C.ALREADY_EXISTS, stub.RegisterService, pb.RegisterServiceRequest(name="Echo")),
        (C.ALREADY_EXISTS, stub.AddListener, listener("echo")),
        (C.NOT_FOUND, stub.GetService, pb.GetServiceRequest(name="Nope")),
        (C.NOT_FOUND, stub.UpdateService, pb.UpdateServiceRequest(name="Nope")),
        (C.NOT_FOUND, stub.UnregisterService, pb.UnregisterServiceRequest(name="Nope")),
        (C.NOT_FOUND, stub.RemoveListener, pb.RemoveListenerRequest(name="nope")),
        (C.NOT_FOUND, stub.PauseListeners, pb.PauseListenersRequest(name="nope")),
        (C.NOT_FOUND, stub.ResumeListeners, pb.ResumeListenersRequest(name="nope")),
        (C.NOT_FOUND, stub.EvictWorker, pb.EvictWorkerRequest(id="nope")),
        (C.INVALID_ARGUMENT, stub.RegisterService, pb.RegisterServiceRequest(name="")),
        (C.INVALID_ARGUMENT, stub.RegisterService, pb.RegisterServiceRequest(
            name="ZeroMethodTimeout", settings=pb.ServiceSettings(method_timeouts_ms={"slow": 0}))),
        (C.INVALID_ARGUMENT, stub.RegisterService, pb.RegisterServiceRequest(
            name="HugeTimeout", settings=pb.ServiceSettings(timeout_ms=2**32))),
        (C.INVALID_ARGUMENT, stub.AddListener, pb.AddListenerRequest(name="bad")),
        (C.INVALID_ARGUMENT, stub.AddListener, listener(name="")),
        (C.INVALID_ARGUMENT, stub.AddListener, listener(address="not an address")),
        (C.INVALID_ARGUMENT, stub.AddListener, listener(address="127.0.0.1:9000-8000")),
        (C.INVALID_ARGUMENT, stub.AddListener, listener(services=[])),
        (C.INVALID_ARGUMENT, stub.AddListener, listener(services=["Nope"])),
        (C.INVALID_ARGUMENT, stub.AddListener, listener(services=["Echo"], default_service="Calc")),
        (C.INVALID_ARGUMENT, stub.AddListener, listener(protocol=7)),
        (C.INVALID_ARGUMENT, stub.AddListener, listener(max_frame_size=8)),
        (C.INVALID_ARGUMENT, stub.PauseListeners, pb.PauseListenersRequest()),
        (C.INVALID_ARGUMENT, stub.PauseListeners, pb.PauseListenersRequest(name="echo", all=True)),
        (C.INVALID_ARGUMENT, stub.ResumeListeners, pb.ResumeListenersRequest()),
        (C.INVALID_ARGUMENT, stub.EvictWorker, pb.EvictWorkerRequest(id="")),
        (C.FAILED_PRECONDITION, stub.UnregisterService, pb.UnregisterServiceRequest(name="Echo")),
        (C.FAILED_PRECONDITION, stub.AddListener, listener(name="taken", address=f"127.0.0.1:{echo_port}")),
        # Out of range: each once panicked the dispatcher, the acceptor or
        # every connection task (an 800-day timeout, 2^64-1 limits).
        (C.INVALID_ARGUMENT, stub.UpdateService, pb.UpdateServiceRequest(
            name="Echo", settings=pb.ServiceSettings(method_timeouts_ms={"slow": 800 * 86_400_000}))),
        (C.INVALID_ARGUMENT, stub.RegisterService, pb.RegisterServiceRequest(
            name="LongQueue", settings=pb.ServiceSettings(max_queue=2**64 - 1))),
        (C.INVALID_ARGUMENT, stub.AddListener, listener(max_connections=2**64 - 1)),
        (C.INVALID_ARGUMENT, stub.AddListener, listener(max_pipeline=2**64 - 1)),
        (C.INVALID_ARGUMENT, stub.AddListener, listener(idle_timeout_ms=2**64 - 1)),
        # Names: control characters once panicked the handler (CANCELLED);
        # newlines and ESC reached /readyz and terminals raw.
        *[(C.INVALID_ARGUMENT, stub.RegisterService, pb.RegisterServiceRequest(name=n))
          for n in ["\x1b[31mred", "a\x00b", "del\x7f", "new\nline", "tab\tbed", "x" * 100_000]],
        (C.INVALID_ARGUMENT, stub.AddListener, listener(name="\x1b]0;pwned\x07")),
        (C.INVALID_ARGUMENT, stub.AddListener, listener(name="l" * 100_000)),
    ]
    wrong = []
    for expected, method, request in cases:
        code = grpc_code(lambda: method(request, timeout=10))
        if code != expected:
            shown = str(request).replace("\n", " ").strip()
            wrong.append(f"{type(request).__name__}({shown}) -> {code.name}, expected {expected.name}")
    assert not wrong, "wrong status codes:\n" + "\n".join(wrong)

    # An unbounded name is not echoed back whole (a 100 KB grpc-message is
    # RESOURCE_EXHAUSTED for grpc-core clients), nor raw.
    try:
        stub.RegisterService(pb.RegisterServiceRequest(name="\x1b" + "x" * 100_000), timeout=10)
        raise AssertionError("a 100,000-character name was accepted")
    except grpc.RpcError as e:
        assert e.code() == C.INVALID_ARGUMENT, e
        assert len(e.details()) < 400 and "\x1b" not in e.details(), e.details()[:200]

    # Nothing changed, as the independent client sees it.
    names = {s.name for s in stub.ListServices(pb.ListServicesRequest(), timeout=10).services}
    assert names == {"Echo", "Calc"}
    ls = {listener.name: listener for listener in stub.ListListeners(pb.ListListenersRequest(), timeout=10).listeners}
    assert set(ls) == {"echo", "mux"}
    assert ls["echo"].bound_address == dp.addr_str("echo")
    assert list(ls["mux"].settings.services) == ["Echo", "Calc"]
    echo = stub.GetService(pb.GetServiceRequest(name="Echo"), timeout=10)
    assert echo.settings.timeout_ms == 15000 and dict(echo.settings.method_timeouts_ms) == {"slow": 30000}


# -- token ----------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["token_file", "env"])
def test_token_required_when_configured(dataplane, thriftctl, admin_pb, admin_channel, short_tmp, source):
    token = "s3cret-admin-token"
    if source == "token_file":
        path = short_tmp / "admin.token"
        path.write_text(token + "\n")
        dp = dataplane(admin={"token_file": str(path)})
    else:
        dp = dataplane(env={"THRIFTWORKER_ADMIN_TOKEN": token})
    assert token not in dp.stderr

    line = thriftctl(dp).fails("UNAUTHENTICATED", "services", "list")
    assert line.startswith("thriftctl: services list: UNAUTHENTICATED"), line
    thriftctl(dp, token="wrong").fails("UNAUTHENTICATED", "listeners", "list")
    thriftctl(dp, token="Bearer " + token).fails("UNAUTHENTICATED", "listeners", "list")

    with_env = thriftctl(dp, token=token)
    assert set(services(with_env)) == {"Echo", "Calc"}
    ctl_file = short_tmp / "ctl.token"
    ctl_file.write_text(f"  {token}\n")
    with_file = thriftctl(dp, token_file=ctl_file)
    assert set(listeners(with_file)) == {"echo", "mux"}
    r = with_file.run("stats")
    assert r.rc == 0 and token not in r.stdout + r.stderr, r

    # Health needs no token.
    status, r = health_status(thriftctl(dp))
    assert (status, r.rc) == ("SERVING", 0), r

    # The independent client.
    pb = admin_pb.pb
    ch = admin_channel(dp)
    stub = admin_pb.grpc.AdminStub(ch)
    assert grpc_code(lambda: stub.ListServices(pb.ListServicesRequest(), timeout=10)) == grpc.StatusCode.UNAUTHENTICATED
    wrong = [("authorization", "Bearer nope")]
    assert grpc_code(lambda: stub.GetStats(pb.GetStatsRequest(), metadata=wrong, timeout=10)) == grpc.StatusCode.UNAUTHENTICATED
    resp = stub.ListServices(pb.ListServicesRequest(), metadata=[("authorization", f"Bearer {token}")], timeout=10)
    assert {s.name for s in resp.services} == {"Echo", "Calc"}
    health = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
    assert health.status == health_pb2.HealthCheckResponse.SERVING

    assert token not in dp.stderr, "the token was logged"


# -- health -----------------------------------------------------------------------------


def test_health_per_service(dataplane, worker, thriftctl, admin_channel):
    dp = dataplane(workers={"heartbeat_interval": "200ms", "heartbeat_liveness": 2})
    ctl = thriftctl()
    health = health_pb2_grpc.HealthStub(admin_channel(dp))

    def py_status(service):
        return health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status

    status, r = health_status(ctl)
    assert (status, r.rc) == ("SERVING", 0), r
    status, r = health_status(ctl, "Echo")
    assert (status, r.rc, r.stderr) == ("NOT_SERVING", 1, ""), r
    assert py_status("Echo") == health_pb2.HealthCheckResponse.NOT_SERVING
    assert ctl.run("-o", "json", "health", "--service", "Echo").json == {"service": "Echo", "status": "NOT_SERVING"}

    w = worker(services="Echo")
    wait_for(lambda: health_status(ctl, "Echo")[0] == "SERVING", 5, "Echo to be SERVING", dp.tail)
    status, r = health_status(ctl, "Echo")
    assert (status, r.rc) == ("SERVING", 0), r
    assert py_status("Echo") == health_pb2.HealthCheckResponse.SERVING
    assert health_status(ctl, "Calc")[0] == "NOT_SERVING", "Calc has no worker"

    w.signal(signal.SIGKILL)
    wait_for(
        lambda: health_status(ctl, "Echo")[0] == "NOT_SERVING", 10, "Echo to be NOT_SERVING after its worker died", dp.tail
    )
    assert py_status("Echo") == health_pb2.HealthCheckResponse.NOT_SERVING
    assert health_status(ctl)[0] == "SERVING", "the process itself is still serving"

    # A service the data plane does not know.
    assert grpc_code(lambda: py_status("Nope")) == grpc.StatusCode.NOT_FOUND
    ctl.fails("NOT_FOUND", "health", "--service", "Nope")


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
def test_reflection_lists_the_services(dataplane, admin_channel, version):
    from grpc_reflection.v1alpha import reflection_pb2

    dp = dataplane()
    ch = admin_channel(dp)
    # grpcio-reflection ships the v1alpha messages; v1's are the same on the wire.
    # v1alpha is what older grpcurl and tooling speak.
    call = ch.stream_stream(
        f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    responses = list(call(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10))
    names = {s.name for s in responses[0].list_services_response.service}
    assert {"thriftworker.admin.v1.Admin", "grpc.health.v1.Health"} <= names, names


# -- workers ----------------------------------------------------------------------------


def test_workers_list_and_evict(dataplane, worker, thriftctl):
    dp = dataplane()
    worker()
    ctl = thriftctl()

    workers = ctl.ok("workers", "list")["workers"]
    assert len(workers) == 1, workers
    first = workers[0]
    assert sorted(first["services"]) == ["Calc", "Echo"], first
    assert first["credit"] == RUST_DEFAULT_CREDIT and first["in_flight"] == 0 and first["leaving"] is False, first
    assert first["identity"] and all(c in "0123456789abcdef" for c in first["identity"]), first
    assert first["last_heartbeat_ms"] < 5000, first
    assert [w["id"] for w in ctl.ok("workers", "list", "--service", "Calc")["workers"]] == [first["id"]]
    ctl.fails("NOT_FOUND", "workers", "list", "--service", "Nope")  # not an empty list

    r = ctl.run("workers", "list")
    assert r.rc == 0 and r.stdout.splitlines()[0].split()[:2] == ["ID", "SERVICES"], r
    assert first["id"] in r.stdout

    assert ctl.ok("workers", "evict", first["id"]) == {}

    def replaced():
        ws = ctl.ok("workers", "list")["workers"]
        ids = [w["id"] for w in ws]
        return ws if first["id"] not in ids and len(ids) == 1 else None

    # The Rust echo-worker is told to leave, reconnects, and comes back as a new worker.
    now = wait_for(replaced, 15, "the evicted worker to be replaced by a new id", dp.tail)
    assert now[0]["id"] != first["id"]
    line = ctl.fails("NOT_FOUND", "workers", "evict", first["id"])
    assert line.startswith(f"thriftctl: workers evict {first['id']}: NOT_FOUND: "), line
    with thrift_client(dp.addr("echo")) as client:
        assert client.echo("after evict") == "after evict"


# -- stats ------------------------------------------------------------------------------


def test_stats(dataplane, worker, thriftctl, processes):
    dp = dataplane()
    worker()
    ctl = thriftctl()
    with thrift_client(dp.addr("echo")) as client:
        for i in range(5):
            assert client.echo(str(i)) == str(i)

    s = ctl.ok("stats")
    assert set(s) >= {"uptime_ms", "draining", "services", "listeners", "methods", "workers"}, s
    assert s["draining"] is False and s["workers"] == 1 and s["uptime_ms"] > 0, s
    svc = by_name(s["services"])
    assert set(svc) == {"Echo", "Calc"}
    assert svc["Echo"]["calls"] >= 5 and svc["Echo"]["replies"] >= 5 and svc["Echo"]["live_workers"] == 1, svc
    lst = by_name(s["listeners"])
    assert set(lst) == {"echo", "mux"}
    assert lst["echo"]["accepted"] >= 1 and lst["echo"]["paused"] is False, lst

    only = ctl.ok("stats", "--service", "Echo", "--listener", "echo")
    assert [x["name"] for x in only["services"]] == ["Echo"]
    assert [x["name"] for x in only["listeners"]] == ["echo"]
    assert {(m["service"], m["method"]) for m in only["methods"]} == {("Echo", "echo")}, only["methods"]
    assert next(m for m in only["methods"])["success"] == 5

    r = ctl.run("stats")
    assert r.rc == 0, r
    for header in ("SERVICE", "CALLS/S", "ERRORS", "LISTENER", "ACCEPTED", "REFUSED"):
        assert header in r.stdout, r.stdout
    echo_row = next(line for line in r.stdout.splitlines() if line.startswith("Echo "))
    assert int(echo_row.split()[1]) >= 5, r.stdout

    # --watch -o json: one object per line per interval, until Ctrl-C.
    watch = processes.start(
        "thriftctl watch", ctl.argv("-o", "json", "stats", "--watch", "--interval", "200ms"), ctl.env_for()
    )
    wait_for(lambda: len(watch.stdout.splitlines()) >= 3, 10, "3 lines from stats --watch", processes.tails)
    samples = [json.loads(line) for line in watch.stdout.splitlines()[:3]]
    assert all("services" in x for x in samples)
    uptimes = [x["uptime_ms"] for x in samples]
    assert uptimes == sorted(uptimes) and uptimes[0] < uptimes[-1], uptimes
    watch.signal(signal.SIGINT)
    assert watch.wait_exit(5) == 0, watch.tail()

    # Table mode, not on a terminal: blocks one after another.
    watch = processes.start("thriftctl watch table", ctl.argv("stats", "--watch", "--interval", "200ms"), ctl.env_for())
    wait_for(lambda: watch.stdout.count("rates:") >= 2, 10, "2 refreshes of stats --watch", processes.tails)
    assert "\x1b[2J" not in watch.stdout, "cleared the screen while not on a terminal"
    watch.signal(signal.SIGINT)
    assert watch.wait_exit(5) == 0, watch.tail()


# -- state file, drain --------------------------------------------------------------------


def test_state_file_survives_restart(dataplane, worker, thriftctl, short_tmp):
    state = short_tmp / "state.json"
    dp = dataplane(admin={"state_file": str(state)})
    ctl = thriftctl()
    ctl.ok("services", "register", "Extra", "--timeout", "5s", "--max-queue", "7")
    ctl.ok("listeners", "add", "extra", "--address", "127.0.0.1:0", "--service", "Echo", "--service", "Extra",
           "--default-service", "Echo")
    ctl.ok("listeners", "pause", "mux")
    assert state.exists(), "no state file written"

    assert ctl.ok("drain") == {}
    assert dp.wait_exit(15) == 0, dp.tail()

    dp2 = dataplane(config=dp.config)
    worker()
    ctl2 = thriftctl(dp2)
    svcs = services(ctl2)
    assert set(svcs) == {"Echo", "Calc", "Extra"}, svcs
    assert svcs["Extra"]["settings"]["timeout_ms"] == 5000 and svcs["Extra"]["settings"]["max_queue"] == 7
    ls = listeners(ctl2)
    assert set(ls) == {"echo", "mux", "extra"}, ls
    assert ls["extra"]["settings"]["services"] == ["Echo", "Extra"]
    assert ls["extra"]["settings"]["default_service"] == "Echo"
    assert ls["mux"]["paused"] is True, "the pause was not persisted"
    with thrift_client(split_addr(ls["extra"]["bound_address"])) as client:
        assert client.echo("restored") == "restored"


def test_drain_exits_zero_after_calls_in_flight(dataplane, worker, thriftctl, processes):
    dp = dataplane()
    w = worker("py", concurrency=2)
    ctl = thriftctl()
    with RawConnection(dp.addr("echo")) as conn:
        conn.send_call("slow", slow_args("last one", 1000), 3)
        wait_for(lambda: w.requests_seen() >= 1, 10, "the slow call at the worker", processes.tails)
        r = ctl.run("drain", "--timeout", "10s")
        assert r.rc == 0 and r.stderr == "", r
        assert "drain" in r.stdout
        wait_for(lambda: refuses_connections(dp.addr("echo")), 5, "the listener to close", dp.tail)
        reply = conn.recv_message(result_cls=Echo.slow_result, timeout=10)
        assert (reply.seqid, reply.value.success) == (3, "last one"), reply
    assert dp.wait_exit(15) == 0, dp.tail()
    r = ctl.run("services", "list")
    assert r.rc == 1 and REFUSED_HINT in r.stderr, r


def test_everything_with_the_address_from_env(dataplane, thriftctl):
    """THRIFTCTL_ADDR with a scheme, THRIFTCTL_OUTPUT=json."""
    dp = dataplane()
    ctl = Thriftctl(None, env={"THRIFTCTL_ADDR": f"http://{dp.admin_addr}", "THRIFTCTL_OUTPUT": "json"})
    r = ctl.run("listeners", "list")
    assert r.rc == 0, r
    assert set(by_name(json.loads(r.stdout)["listeners"])) == {"echo", "mux"}


# -- TLS ----------------------------------------------------------------------------------


def test_tls_with_client_certificates(dataplane, thriftctl, short_tmp):
    pki = make_pki(short_tmp)
    dp = dataplane(admin={
        "tls_cert": str(pki / "server.pem"),
        "tls_key": str(pki / "server.key"),
        "tls_client_ca": str(pki / "ca.pem"),
    })
    ctl = thriftctl(dp)
    tls = ["--tls-ca", pki / "ca.pem", "--tls-cert", pki / "client.pem", "--tls-key", pki / "client.key"]

    # HOST:PORT becomes https:// with TLS flags.
    assert set(by_name(ctl.ok(*tls, "listeners", "list")["listeners"])) == {"echo", "mux"}
    assert set(by_name(ctl.ok(*tls, "--tls-domain", "localhost", "services", "list")["services"])) == {"Echo", "Calc"}
    tls_env = {
        "THRIFTCTL_TLS_CA": pki / "ca.pem",
        "THRIFTCTL_TLS_CERT": pki / "client.pem",
        "THRIFTCTL_TLS_KEY": pki / "client.key",
    }
    r = ctl.run("health", env=tls_env)
    assert (r.rc, r.stdout) == (0, "SERVING\n"), r

    # Without a client certificate, with the wrong name, or in plain text: one clear line, exit 1.
    for args in (
        ["--tls-ca", pki / "ca.pem"],
        [*tls, "--tls-domain", "elsewhere.example"],
        [],
    ):
        r = ctl.run(*args, "--timeout", "3s", "services", "list")
        assert r.rc == 1 and r.stdout == "", r
        assert len(r.stderr.splitlines()) == 1 and r.stderr.startswith("thriftctl: "), r
    # http:// with TLS flags is a usage error.
    r = Thriftctl(f"http://{dp.admin_addr}").run(*tls, "services", "list")
    assert r.rc == 2 and "https" in r.stderr, r

    # Who did what: a change names the client certificate's subject.
    ctl.ok(*tls, "listeners", "pause", "echo")
    paused = [e for e in ctl.ok(*tls, "events")["events"] if e["kind"] == "listener_paused"]
    assert paused and paused[-1]["peer"].startswith("127.0.0.1:") and paused[-1]["peer"].endswith("(CN=client)"), paused


def test_counts_follow_workers_coming_and_going(dataplane, worker, thriftctl):
    """stats.workers, services' live_workers and credit, after a worker
    registers, leaves gracefully (SIGTERM) and is killed."""
    dp = dataplane(workers={"heartbeat_interval": "200ms", "heartbeat_liveness": 2})
    ctl = thriftctl()

    seen = []

    def counts():
        s = ctl.ok("stats")
        svc = services(ctl)["Echo"]
        seen.append((s["workers"], by_name(s["services"])["Echo"]["live_workers"], svc["live_workers"], svc["total_credit"]))
        return seen[-1]

    def wait_counts(expected, timeout, what):
        wait_for(
            lambda: counts() == expected,
            timeout,
            f"{what}: (stats.workers, stats live_workers, service live_workers, total_credit) == {expected}",
            lambda: f"last seen {seen[-1]}\n{dp.tail()}",
        )

    assert counts() == (0, 0, 0, 0)
    polite = worker()
    rude = worker("py", concurrency=3)
    wait_counts((2, 2, 2, RUST_DEFAULT_CREDIT + 3), 5, "2 workers with 4+256 and 3 credit")
    polite.signal(signal.SIGTERM)
    wait_counts((1, 1, 1, 3), 10, "the worker that left to be gone")
    rude.signal(signal.SIGKILL)
    wait_counts((0, 0, 0, 0), 10, "the killed worker to be gone")


# -- runtime log level ----------------------------------------------------------------


def test_log_level_is_read_and_changed_at_run_time(dataplane, worker, thriftctl):
    dp = dataplane(args=["--log", "info"])
    worker()
    ctl = thriftctl(dp)
    assert ctl.ok("log-level") == {"filter": "info"}
    r = ctl.run("--output", "table", "log-level")
    assert (r.rc, r.stdout) == (0, "info\n"), r

    def accepted_lines():
        return dp.stderr.count("connection accepted")

    # At info, connections are not logged.
    with thrift_client(dp.addr("echo")) as client:
        assert client.echo("quiet") == "quiet"
    assert accepted_lines() == 0

    new = "info,thriftworker::data::listener=debug"

    def directives(filter_text):
        # The filter in force is shown in tracing's own order.
        return sorted(filter_text.split(","))

    assert directives(ctl.ok("log-level", new)["filter"]) == directives(new)
    wait_for(lambda: "log filter changed through the admin API" in dp.stderr, 5, "the change logged", dp.tail)
    line = next(x for x in dp.stderr.splitlines() if "log filter changed" in x)
    assert "peer=127.0.0.1:" in line and 'before=info' in line, line
    with thrift_client(dp.addr("echo")) as client:
        assert client.echo("loud") == "loud"
    wait_for(lambda: accepted_lines() == 1, 5, "a connection logged at debug", dp.tail)

    # An invalid filter is refused; the one in force stays.
    err = ctl.fails("INVALID_ARGUMENT", "log-level", "thriftworker=notalevel")
    assert "invalid log filter" in err, err
    assert directives(ctl.ok("log-level")["filter"]) == directives(new)


# -- worker drain (cordon) ---------------------------------------------------------------


def test_worker_drain_under_load_loses_no_call(dataplane, worker, thriftctl):
    """`workers drain ID`: the worker gets no new call, finishes the ones it
    holds, is told to leave and that registration is gone; the other worker
    serves on. Calls are slow enough that the drained one holds some."""
    from test_python_worker import SteadyLoad

    dp = dataplane()
    worker()
    worker()
    ctl = thriftctl(dp)
    ids = sorted(w["id"] for w in ctl.ok("workers", "list")["workers"])
    assert len(ids) == 2, ids
    load = SteadyLoad(dp.addr("echo"), threads=4)
    try:
        load.wait_calls(200, "calls before the drain")
        drained = ctl.ok("workers", "drain", ids[0])
        assert drained["id"] == ids[0] and drained["in_flight"] >= 0, drained
        wait_for(lambda: ids[0] not in {w["id"] for w in ctl.ok("workers", "list")["workers"]},
                 10, f"worker {ids[0]} gone after its drain", dp.tail)
        load.wait_calls(200, "calls after the drain")
    finally:
        failures = load.finish()
    assert failures == [], failures[:5]
    assert f"worker={ids[0]}" in dp.stderr and "worker drain requested" in dp.stderr
    # Unknown ids are NOT_FOUND.
    ctl.fails("NOT_FOUND", "workers", "drain", "w999")


# -- listener drain (without removal) -------------------------------------------------------


def test_listener_drain_closes_its_connections_gracefully_and_resume_brings_it_back(dataplane, worker, thriftctl):
    import threading

    dp = dataplane()
    worker()
    ctl = thriftctl(dp)
    idle = RawConnection(dp.addr("echo"))
    assert raw_echo(idle, "before", 1).value.success == "before"
    busy = RawConnection(dp.addr("echo"))
    other = RawConnection(dp.addr("mux"))  # another listener: untouched
    answer = {}

    def slow_call():
        answer["reply"] = busy.call("slow", slow_args("slow one", 800), 2, result_cls=Echo.slow_result)

    t = threading.Thread(target=slow_call)
    t.start()
    wait_for(lambda: ctl.ok("stats")["services"] and any(
        s["in_flight"] > 0 for s in ctl.ok("stats")["services"]), 5, "the slow call in flight")
    listeners = ctl.ok("listeners", "drain", "echo")["listeners"]
    assert {entry["name"]: entry["paused"] for entry in listeners} == {"echo": True, "mux": False}
    assert idle.closed_by_peer(5), "the idle connection was not closed by the drain"
    t.join(10)
    assert answer["reply"].value.success == "slow one", answer  # the call in flight finished
    assert busy.closed_by_peer(5), "the busy connection was not closed after its call"
    assert raw_echo(other, "mux", 3, name="Echo:echo").value.success == "mux"
    # Still defined; resume brings it back.
    assert "echo" in {entry["name"] for entry in ctl.ok("listeners", "list")["listeners"]}
    ctl.ok("listeners", "resume", "echo")
    with thrift_client(dp.addr("echo")) as client:
        assert client.echo("after resume") == "after resume"
    for c in (idle, busy, other):
        c.close()


def test_an_unknown_name_in_a_filter_is_not_found(dataplane, worker, thriftctl):
    dp = dataplane()
    worker()
    ctl = thriftctl(dp)
    assert len(ctl.ok("workers", "list", "--service", "Echo")["workers"]) == 1
    ctl.fails("NOT_FOUND", "workers", "list", "--service", "Nope")
    assert [s["name"] for s in ctl.ok("stats", "--service", "Echo")["services"]] == ["Echo"]
    ctl.fails("NOT_FOUND", "stats", "--service", "Nope")
    ctl.fails("NOT_FOUND", "stats", "--listener", "nope")
    r = ctl.run("stats", "--watch", "--service", "Nope", "--interval", "100ms", timeout=10)
    assert r.rc == 1 and "NOT_FOUND" in r.stderr, r


# -- events ---------------------------------------------------------------------------------


def test_events_record_each_kind_of_change_in_order_with_who_asked(dataplane, worker, thriftctl, processes):
    import json as _json

    dp = dataplane()
    ctl = thriftctl(dp)
    # A watcher from the start: it must see the same events, in the same order.
    watcher = processes.start("thriftctl-events", ctl.argv("-o", "json", "events", "--watch"), ctl.env_for())
    w = worker()
    ids = [x["id"] for x in ctl.ok("workers", "list")["workers"]]
    ctl.ok("services", "register", "Extra", "--timeout", "2s")
    ctl.ok("services", "update", "Extra", "--timeout", "3s")
    ctl.ok("listeners", "add", "extra", "--address", "127.0.0.1:0", "--service", "Extra")
    ctl.ok("listeners", "pause", "extra")
    ctl.ok("listeners", "resume", "extra")
    ctl.ok("listeners", "drain", "extra")
    ctl.ok("listeners", "remove", "extra")
    ctl.ok("services", "unregister", "Extra")
    ctl.ok("log-level", "info,zeromq=error")
    ctl.ok("workers", "drain", ids[0])
    wait_for(lambda: any(e["kind"] == "worker_left" for e in ctl.ok("events")["events"]), 10, "the drained worker left")
    w.process.kill()

    events = ctl.ok("events")["events"]
    kinds = [e["kind"] for e in events]
    expected = ["worker_joined", "service_registered", "service_updated", "listener_added", "listener_paused",
                "listener_resumed", "listener_draining", "listener_removed", "service_unregistered",
                "log_level_changed", "worker_draining", "worker_left"]
    assert [k for k in kinds if k in expected] == expected, kinds
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    by_kind = {e["kind"]: e for e in events}
    for kind in expected[1:11]:
        assert by_kind[kind]["peer"].startswith("127.0.0.1:"), by_kind[kind]
    assert by_kind["worker_joined"]["subject"] == ids[0] and by_kind["worker_joined"]["peer"] == ""
    assert by_kind["listener_added"]["subject"] == "extra"
    assert "->" in by_kind["log_level_changed"]["reason"]

    # The watcher saw the same sequence.
    wait_for(lambda: watcher.stdout.count("\n") >= len(events), 10, "the watcher's lines", watcher.tail)
    watched = [_json.loads(line) for line in watcher.stdout.splitlines()[:len(events)]]
    assert [e["seq"] for e in watched] == [e["seq"] for e in events]
    assert [e["kind"] for e in watched] == kinds
    watcher.kill()

    r = ctl.run("--output", "table", "events")
    assert r.rc == 0 and r.stdout.splitlines()[0].split() == ["TIME", "KIND", "SUBJECT", "BY", "REASON"], r


# -- config dump ----------------------------------------------------------------------------


def test_config_dump_round_trips_marks_runtime_changes_and_hides_secrets(dataplane, thriftctl, short_tmp):
    import tomllib

    token_file = short_tmp / "admin.token"
    token_file.write_text("s3cret-admin\n")
    env = {"THRIFTWORKER_WORKER_TOKEN": "s3cret-worker"}
    dp = dataplane(admin={"address": "127.0.0.1:0", "token_file": str(token_file)}, env=env)
    ctl = thriftctl(dp, token="s3cret-admin")
    first = ctl.ok("config", "dump")
    assert first["runtime_changes"] == [] and first["admin_token"] == "set" and first["worker_token"] == "set", first
    assert first["state_file"] == ""
    assert {s["name"] for s in first["config"]["services"]} == {"Echo", "Calc"}
    # Defaults are filled in.
    assert first["config"]["listeners"][0]["max_frame_size"] == 16384000, first["config"]["listeners"][0]

    ctl.ok("services", "register", "Extra", "--timeout", "2s")
    ctl.ok("services", "update", "Echo", "--timeout", "9s")
    r = ctl.run("--output", "table", "config", "dump")
    assert r.rc == 0, r
    text = r.stdout
    assert "# service Extra added at run time" in text and "# service Echo changed at run time" in text, text
    for secret in ("s3cret-admin", "s3cret-worker"):
        assert secret not in text and secret not in str(ctl.ok("config", "dump")), secret

    # Loaded as a config file, the dump gives the same effective configuration.
    config = tomllib.loads(text)
    dp.terminate()
    assert dp.wait_exit() == 0
    dp2 = dataplane(config=config, env=env)
    ctl2 = thriftctl(dp2, token="s3cret-admin")
    assert ctl2.ok("config", "dump")["runtime_changes"] == []
    r2 = ctl2.run("--output", "table", "config", "dump")

    def body(dump_text):
        return [line for line in dump_text.splitlines() if not line.startswith("#")]

    assert body(r2.stdout) == body(text), (r2.stdout, text)


# -- read-only token ---------------------------------------------------------------------


def test_a_read_only_token_can_read_but_not_change(dataplane, worker, thriftctl, short_tmp):
    admin_file = short_tmp / "admin.token"
    admin_file.write_text("writer-token\n")
    reader_file = short_tmp / "reader.token"
    reader_file.write_text("reader-token\n")
    dp = dataplane(admin={"address": "127.0.0.1:0", "token_file": str(admin_file),
                          "read_only_token_file": str(reader_file)})
    worker()
    reader = thriftctl(dp, token="reader-token")
    for verb in (["services", "list"], ["listeners", "list"], ["workers", "list"], ["stats"], ["events"],
                 ["config", "dump"], ["log-level"]):
        reader.ok(*verb)
    worker_id = reader.ok("workers", "list")["workers"][0]["id"]
    for verb in (["services", "register", "X"], ["services", "update", "Echo", "--timeout", "1s"],
                 ["services", "unregister", "Calc"],
                 ["listeners", "add", "x", "--address", "127.0.0.1:0", "--service", "Echo"],
                 ["listeners", "pause", "echo"], ["listeners", "resume", "echo"], ["listeners", "drain", "echo"],
                 ["listeners", "remove", "mux"], ["workers", "evict", worker_id], ["workers", "drain", worker_id],
                 ["log-level", "debug"], ["drain"]):
        line = reader.fails("PERMISSION_DENIED", *verb)
        assert "read-only" in line, line
    # Nothing changed; the admin token still may.
    writer = thriftctl(dp, token="writer-token")
    assert {s["name"] for s in writer.ok("services", "list")["services"]} == {"Echo", "Calc"}
    writer.ok("listeners", "pause", "echo")
    assert thriftctl(dp, token="nobody").run("services", "list").rc == 1
    assert dp.alive()


# -- listing like kubectl --------------------------------------------------------------------


def test_listing_get_state_filters_no_headers_and_yaml(dataplane, worker, thriftctl):
    dp = dataplane()
    worker()
    ctl = thriftctl(dp)
    ctl.ok("listeners", "pause", "mux")
    assert [entry["name"] for entry in ctl.ok("listeners", "list", "--state", "paused")["listeners"]] == ["mux"]
    assert [entry["name"] for entry in ctl.ok("listeners", "list", "--state", "accepting")["listeners"]] == ["echo"]
    got = ctl.ok("listeners", "get", "echo")
    assert got["name"] == "echo" and got["settings"]["transport"] == "auto", got
    ctl.fails("NOT_FOUND", "listeners", "get", "nope")
    wid = ctl.ok("workers", "list")["workers"][0]["id"]
    assert ctl.ok("workers", "get", wid)["id"] == wid
    assert ctl.ok("workers", "list", "--state", "leaving")["workers"] == []
    ctl.fails("NOT_FOUND", "workers", "get", "w999")

    r = ctl.run("--output", "table", "--no-headers", "listeners", "list")
    assert r.rc == 0 and [line.split()[0] for line in r.stdout.splitlines()] == ["echo", "mux"], r
    r = ctl.run("--output", "table", "workers", "get", wid)
    assert r.rc == 0 and "id:" in r.stdout and wid in r.stdout, r

    import yaml  # PyYAML, in tests/requirements.txt

    r = ctl.run("--output", "yaml", "listeners", "get", "echo")
    assert r.rc == 0 and yaml.safe_load(r.stdout) == got, r
    r = ctl.run("--output", "yaml", "stats")
    assert r.rc == 0 and {s["name"] for s in yaml.safe_load(r.stdout)["services"]} == {"Echo", "Calc"}, r


def test_list_watch_and_wide(dataplane, worker, thriftctl, processes):
    import json as _json

    dp = dataplane()
    ctl = thriftctl(dp)
    r = ctl.run("--output", "wide", "listeners", "list")
    assert r.rc == 0 and "MAX-FRAME" in r.stdout.splitlines()[0] and "16384000" in r.stdout, r
    r = ctl.run("--output", "wide", "services", "list")
    assert r.rc == 0 and "METHOD-TIMEOUTS" in r.stdout and "slow=30s" in r.stdout, r
    # --watch: a new list every interval; a worker that joins shows up in a later one.
    watcher = processes.start("thriftctl-watch", ctl.argv("-o", "json", "workers", "list", "--watch",
                                                         "--interval", "100ms"), ctl.env_for())
    wait_for(lambda: watcher.stdout.count("\n") >= 2, 10, "two lists", watcher.tail)
    assert _json.loads(watcher.stdout.splitlines()[0]) == {"workers": []}
    worker()
    wait_for(lambda: any(_json.loads(line)["workers"] for line in watcher.stdout.splitlines()), 10,
             "a later list with the worker", watcher.tail)
    watcher.kill()
