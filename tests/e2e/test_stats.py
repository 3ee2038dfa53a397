"""Stats: a known number of calls of each outcome through the real process,
then the three views (Prometheus /metrics, the admin API's GetStats, and
`thriftctl -o json stats`) must report exactly those counts; promtool lints
the live exposition; a real Prometheus server scrapes it and answers a PromQL
query; the per-service method cap holds under 10,000 random method names;
/healthz and /readyz follow workers and drain.

The pyworker (concurrency 1, it logs each REQUEST) is used where a test must
know a call has reached the worker."""

import json
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

from harness import (
    Echo,
    RUST_DEFAULT_CREDIT,
    RawConnection,
    TMessageType,
    encode_message,
    frame,
    free_port,
    raw_echo,
    slow_args,
    thrift_client,
    wait_for,
)

# -- reading the views -----------------------------------------------------------

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def http_get(addr, path, timeout=5):
    """(status, body) of GET http://addr/path; HTTP errors are returned too."""
    try:
        with urllib.request.urlopen(f"http://{addr}{path}", timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def scrape(dp):
    status, body = http_get(dp.metrics_addr, "/metrics")
    assert status == 200, body
    return body


def parse_metrics(text):
    """{(name, frozenset(labels)): value} of every sample."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        assert m, f"unparseable sample line: {line!r}"
        labels = frozenset(LABEL.findall(m.group(2) or ""))
        out[(m.group(1), labels)] = float(m.group(3))
    return out


def metric(samples, name, **labels):
    return samples.get((name, frozenset(labels.items())))


def outcome(samples, method, outcome_name, service="Echo"):
    return metric(samples, "thriftworker_call_outcomes_total", service=service, method=method, outcome=outcome_name)


def get_stats(admin_pb, channel):
    stub = admin_pb.grpc.AdminStub(channel)
    return stub.GetStats(admin_pb.pb.GetStatsRequest(), timeout=5)


def pb_method(stats, method, service="Echo"):
    found = [m for m in stats.methods if m.service == service and m.method == method]
    assert len(found) == 1, f"{service}:{method} in {[(m.service, m.method) for m in stats.methods]}"
    return found[0]


def wait_metric(dp, name, expected, context=None, timeout=10, **labels):
    def check():
        v = metric(parse_metrics(scrape(dp)), name, **labels)
        return v == expected

    wait_for(check, timeout, f"{name}{labels} == {expected}", context or dp.tail)


def wait_requests(w, n, processes, timeout=10):
    wait_for(lambda: w.requests_seen() >= n, timeout, f"{n} REQUEST(s) at the pyworker", processes.tails)


# -- the known traffic -----------------------------------------------------------

# What `drive_known_traffic` produces, per Echo method: calls (two-way),
# oneway, and each outcome.
EXPECTED = {
    "echo": {"calls": 10, "oneway": 0, "success": 7, "overloaded": 2, "no_worker": 1},
    "fail": {"calls": 2, "oneway": 0, "declared_exception": 2},
    "nosuch": {"calls": 3, "oneway": 0, "app_exception": 3},
    "notify": {"calls": 0, "oneway": 4, "success": 4},
    "slow": {"calls": 2, "oneway": 0, "timeout": 1, "worker_died": 1, "late_replies": 1},
}
OUTCOMES = ["success", "declared_exception", "app_exception", "timeout", "overloaded",
            "no_worker", "worker_died", "shutdown", "empty_reply", "abandoned"]
# Proto/JSON field name of each outcome where it differs.
FIELD = {"timeout": "timeouts", "empty_reply": "empty_reply"}


def drive_known_traffic(dp, worker, processes):
    """Calls of every outcome, each step waiting for its effect. Returns
    nothing: the expected counts are EXPECTED plus the listener ones below."""
    w = worker("py", concurrency=1)
    echo_addr = dp.addr("echo")

    # Success, declared exception, application exception (the worker answers
    # UNKNOWN_METHOD), oneway.
    with thrift_client(echo_addr) as client:
        for i in range(5):
            assert client.echo(f"m{i}") == f"m{i}"
        for _ in range(2):
            with pytest.raises(Exception) as e:
                client.fail("boom", 7)
            assert type(e.value).__name__ == "EchoError", e.value
        # One at a time: the queue holds one call, and oneway calls beyond
        # it would be dropped as overloaded.
        for i in range(4):
            client.notify("n")
            wait_metric(dp, "thriftworker_call_outcomes_total", i + 1, service="Echo", method="notify", outcome="success")
    with RawConnection(echo_addr) as conn:
        for i in range(3):
            r = conn.call("nosuch", None, 50 + i)
            assert r.mtype == TMessageType.EXCEPTION and r.value.type == 1, r  # UNKNOWN_METHOD
    seen = 5 + 2 + 4 + 3

    # Timeout, then overload while the timed-out call still holds the only
    # credit, then the late reply frees it and the queued call is served.
    with RawConnection(echo_addr) as t, RawConnection(echo_addr) as q:
        t.send_call("slow", slow_args("late", 2500), 1)
        wait_requests(w, seen + 1, processes)
        seen += 1
        r = t.recv_message(result_cls=Echo.slow_result, timeout=5)
        assert r.mtype == TMessageType.EXCEPTION and "timed out" in r.value.message, r
        q.send_call("echo", Echo.echo_args(message="queued"), 2)
        wait_metric(dp, "thriftworker_service_queue_depth", 1, service="Echo")
        for i in range(2):
            with RawConnection(echo_addr) as o:
                r = raw_echo(o, "over", 3 + i, timeout=5)
                assert r.mtype == TMessageType.EXCEPTION, r
                assert "overloaded: queue full" in r.value.message, r.value.message
        r = q.recv_message(result_cls=Echo.echo_result, timeout=10)
        assert (r.mtype, r.value.success) == (TMessageType.REPLY, "queued"), r
        seen += 1
    wait_metric(dp, "thriftworker_late_replies_total", 1, service="Echo", method="slow")

    # Worker killed mid-call.
    with RawConnection(echo_addr) as k:
        k.send_call("slow", slow_args("killed", 5000), 9)
        wait_requests(w, seen + 1, processes)
        w.signal(signal.SIGKILL)
        r = k.recv_message(result_cls=Echo.slow_result, timeout=5)
        assert r.mtype == TMessageType.EXCEPTION and "worker died" in r.value.message, r
    wait_metric(dp, "thriftworker_service_live_workers", 0, service="Echo")

    # No worker at all: one call queues, the next finds the queue full while
    # no worker lives; a new worker then serves the queued one.
    with RawConnection(echo_addr) as n1:
        n1.send_call("echo", Echo.echo_args(message="waits"), 1)
        wait_metric(dp, "thriftworker_service_queue_depth", 1, service="Echo")
        with RawConnection(echo_addr) as n2:
            r = raw_echo(n2, "nobody", 2, timeout=5)
            assert r.mtype == TMessageType.EXCEPTION, r
            assert "no live worker" in r.value.message, r.value.message
        worker()
        r = n1.recv_message(result_cls=Echo.echo_result, timeout=10)
        assert (r.mtype, r.value.success) == (TMessageType.REPLY, "waits"), r

    # A bad frame (negative length) closes its connection.
    with RawConnection(echo_addr) as bad:
        bad.send(struct.pack(">i", -5) + b"abcd")
        assert bad.closed_by_peer(5)
    # The mux listener takes one connection; the second is refused. The held
    # one sends a call naming no service this listener routes.
    with RawConnection(dp.addr("mux")) as held:
        r = held.call("Nope:echo", Echo.echo_args(message="x"), 4, result_cls=Echo.echo_result)
        assert r.mtype == TMessageType.EXCEPTION and "unknown service" in r.value.message, r
        with RawConnection(dp.addr("mux")) as refused:
            assert refused.closed_by_peer(5)
        wait_metric(dp, "thriftworker_listener_connections_refused_total", 1, listener="mux")
    wait_metric(dp, "thriftworker_listener_connections_active", 0, listener="echo")


KNOWN_CONFIG = dict(
    services={"Echo": {"max_queue": 1, "queue_timeout": "10s", "timeout": "10s", "method_timeouts": {"slow": "1s"}}},
    listeners={"mux": {"max_connections": 1}},
)


def test_three_views_agree_with_the_traffic(dataplane, worker, processes, thriftctl, admin_pb, admin_channel):
    dp = dataplane(**KNOWN_CONFIG)
    drive_known_traffic(dp, worker, processes)
    samples = parse_metrics(scrape(dp))
    stats = get_stats(admin_pb, admin_channel(dp))
    ctl = thriftctl().ok("stats")

    ctl_methods = {(m["service"], m["method"]): m for m in ctl["methods"]}
    assert {m for (s, m) in ctl_methods if s == "Echo"} == set(EXPECTED), ctl_methods.keys()
    for method, exp in EXPECTED.items():
        pm = pb_method(stats, method)
        cm = ctl_methods[("Echo", method)]
        for kind in ("call", "oneway"):
            want = exp["calls" if kind == "call" else "oneway"]
            assert metric(samples, "thriftworker_calls_total", service="Echo", method=method, kind=kind) == want, (method, kind)
        assert (pm.calls, pm.oneway) == (exp["calls"], exp["oneway"]), (method, pm)
        assert (cm["calls"], cm["oneway"]) == (exp["calls"], exp["oneway"]), (method, cm)
        for o in OUTCOMES:
            want = exp.get(o, 0)
            field = FIELD.get(o, o)
            assert outcome(samples, method, o) == want, (method, o, "metrics")
            assert getattr(pm, field) == want, (method, o, "GetStats", pm)
            assert cm[field] == want, (method, o, "thriftctl", cm)
        late = exp.get("late_replies", 0)
        assert metric(samples, "thriftworker_late_replies_total", service="Echo", method=method) == late
        assert pm.late_replies == late and cm["late_replies"] == late
        # Every call ended in exactly one outcome.
        assert sum(exp.get(o, 0) for o in OUTCOMES) == exp["calls"] + exp["oneway"], method
        errors = sum(exp.get(o, 0) for o in OUTCOMES if o not in ("success", "declared_exception", "abandoned"))
        assert pm.errors == errors and cm["errors"] == errors, method
        # Latency: one total observation per two-way call, in all views.
        count = metric(samples, "thriftworker_call_duration_seconds_count", service="Echo", method=method)
        inf = metric(samples, "thriftworker_call_duration_seconds_bucket", service="Echo", method=method, le="+Inf")
        assert count == inf == pm.total.count == cm["total"]["count"] == exp["calls"], method
        assert pm.total.p50_ms <= pm.total.p90_ms <= pm.total.p99_ms <= pm.total.max_ms, pm.total

    # The queued echo waited for the timed-out slow call's late reply (~1.5 s).
    echo = pb_method(stats, "echo")
    assert echo.queue_wait.max_ms >= 1000, echo.queue_wait
    assert echo.total.max_ms >= echo.queue_wait.max_ms
    slow = pb_method(stats, "slow")
    assert 900 <= slow.total.max_ms < 3000, slow.total  # the 1 s timeout

    # Service sums.
    svc = next(s for s in stats.services if s.name == "Echo")
    assert (svc.calls, svc.oneway) == (17, 4), svc
    assert (svc.success, svc.declared_exception, svc.app_exception) == (11, 2, 3), svc
    assert (svc.timeouts, svc.overloaded, svc.no_worker, svc.worker_died) == (1, 2, 1, 1), svc
    assert svc.live_workers == 1 and svc.queue_depth == 0 and svc.in_flight == 0, svc
    assert svc.total_credit == svc.free_credit == RUST_DEFAULT_CREDIT, svc  # the Rust worker's defaults
    assert metric(samples, "thriftworker_service_free_credit", service="Echo") == RUST_DEFAULT_CREDIT

    # Listeners.
    ls = {l.name: l for l in stats.listeners}
    cl = {l["name"]: l for l in ctl["listeners"]}
    assert ls["echo"].closed_bad_frame == cl["echo"]["closed_bad_frame"] == 1
    assert metric(samples, "thriftworker_listener_connections_closed_total", listener="echo", reason="bad_frame") == 1
    assert ls["mux"].refused == cl["mux"]["refused"] == 1
    assert ls["mux"].unknown_service == cl["mux"]["unknown_service"] == 1
    assert metric(samples, "thriftworker_listener_unknown_service_calls_total", listener="mux") == 1
    accepted = metric(samples, "thriftworker_listener_connections_accepted_total", listener="echo")
    assert accepted == ls["echo"].accepted == cl["echo"]["accepted"] >= 9

    # Workers: two registered, one died; the live one has its own series,
    # the dead one's are gone.
    assert metric(samples, "thriftworker_workers_registered_total") == 2
    assert metric(samples, "thriftworker_workers_dead_total") == 1
    worker_series = {dict(l)["worker"] for (n, l) in samples if n == "thriftworker_worker_calls_served_total"}
    assert worker_series == {"w2"}, worker_series
    assert [w.id for w in stats.worker_stats] == ["w2"]
    assert stats.worker_stats[0].served == metric(samples, "thriftworker_worker_calls_served_total", worker="w2") == 1
    assert [w["id"] for w in ctl["worker_stats"]] == ["w2"]

    # Build info.
    info = [dict(l) for (n, l) in samples if n == "thriftworker_build_info"]
    assert len(info) == 1 and info[0]["version"] == stats.version and info[0]["git_sha"] == stats.git_sha, info
    assert ctl["version"] == stats.version


def test_a_queued_call_whose_client_left_is_abandoned_not_sent(dataplane, worker, processes, admin_pb, admin_channel):
    dp = dataplane()
    w = worker("py", concurrency=1)
    with RawConnection(dp.addr("echo")) as busy:
        busy.send_call("slow", slow_args("busy", 800), 1)
        wait_requests(w, 1, processes)
        leaving = RawConnection(dp.addr("echo"))
        leaving.send_call("echo", Echo.echo_args(message="never sent"), 2)
        wait_metric(dp, "thriftworker_service_queue_depth", 1, service="Echo")
        leaving.reset()
        r = busy.recv_message(result_cls=Echo.slow_result, timeout=10)
        assert r.value.success == "busy", r
    wait_metric(dp, "thriftworker_call_outcomes_total", 1, service="Echo", method="echo", outcome="abandoned")
    assert w.requests_seen() == 1, "the abandoned call must not reach the worker"
    m = pb_method(get_stats(admin_pb, admin_channel(dp)), "echo")
    assert (m.calls, m.abandoned, m.errors, m.success) == (1, 1, 0, 0), m
    samples = parse_metrics(scrape(dp))
    assert metric(samples, "thriftworker_listener_connections_closed_with_calls_in_flight_total", listener="echo") == 1


def test_promtool_accepts_the_live_exposition(dataplane, worker):
    promtool = shutil.which("promtool")
    assert promtool, "promtool not found: scripts/test installs Debian's prometheus package"
    dp = dataplane()
    worker()
    with thrift_client(dp.addr("echo")) as client:
        client.echo("hello")
        client.notify("n")
    with RawConnection(dp.addr("echo")) as conn:
        # Method names that need escaping in a label value.
        for i, name in enumerate(['quote"d', "back\\slash", "new\nline", "ünïcode"]):
            r = conn.call(name, None, i)
            assert r.mtype == TMessageType.EXCEPTION, r
    text = scrape(dp)
    assert 'method="quote\\"d"' in text and 'method="new\\nline"' in text
    r = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and r.stdout.strip() == "" and r.stderr.strip() == "", (
        f"promtool check metrics reported problems:\n{r.stdout}{r.stderr}"
    )
    # Every family has HELP and TYPE; counters end in _total.
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))
    helps = set(re.findall(r"^# HELP (\S+) ", text, re.M))
    assert set(types) == helps
    for name, kind in types.items():
        assert name.startswith(("thriftworker_", "process_")), name
        assert (kind == "counter") == name.endswith("_total"), (name, kind)
        if kind == "histogram":
            assert name.endswith("_seconds"), name


def test_prometheus_server_scrapes_and_answers_promql(dataplane, worker, processes, short_tmp):
    prometheus = shutil.which("prometheus")
    assert prometheus, "prometheus not found: scripts/test installs Debian's prometheus package"
    dp = dataplane()
    worker()
    with thrift_client(dp.addr("echo")) as client:
        for i in range(7):
            client.echo(f"p{i}")
    port = free_port()
    config = short_tmp / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: thriftworker\n    static_configs:\n"
        f"      - targets: ['{dp.metrics_addr}']\n"
    )
    processes.start("prometheus", [
        prometheus, f"--config.file={config}", f"--storage.tsdb.path={short_tmp / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn",
    ])
    query = 'sum(thriftworker_call_outcomes_total{service="Echo",method="echo",outcome="success"})'

    def answered():
        url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": query})
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                body = json.load(r)
        except (urllib.error.URLError, ConnectionError, socket.timeout):
            return None
        result = body.get("data", {}).get("result", [])
        return result and float(result[0]["value"][1]) == 7.0

    wait_for(answered, 20, f"Prometheus to answer {query} = 7", processes.tails, interval=0.25)

    # The target is healthy in Prometheus' own view (the scrape parsed).
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/targets", timeout=5) as r:
        targets = json.load(r)["data"]["activeTargets"]
    assert [t["health"] for t in targets] == ["up"], targets


def test_method_cap_holds_under_10000_random_names(dataplane, worker):
    dp = dataplane(metrics={"address": "127.0.0.1:0", "method_cap": 200})
    worker(concurrency=16)
    rng = random.Random(4)
    names = [f"m{rng.getrandbits(64):016x}" for _ in range(10_000)]
    # Pipelined on one connection: a writer thread sends, we read the answers.
    payload = b"".join(frame(encode_message(n, None, i)) for i, n in enumerate(names))
    with RawConnection(dp.addr("echo")) as conn:
        writer = threading.Thread(target=conn.send, args=(payload,))
        writer.start()
        for i in range(len(names)):
            r = conn.recv_message(timeout=30)
            assert r.seqid == i and r.mtype == TMessageType.EXCEPTION, r
        writer.join()

    samples = parse_metrics(scrape(dp))
    methods = {dict(l)["method"]: v for (n, l), v in samples.items()
               if n == "thriftworker_calls_total" and dict(l)["kind"] == "call"}
    assert len(methods) == 201, len(methods)
    assert methods["other"] == 10_000 - 200
    assert sum(methods.values()) == 10_000
    assert set(methods) - {"other"} == set(names[:200]), "the first 200 names seen keep their own series"
    assert outcome(samples, "other", "app_exception") == 10_000 - 200
    rss = metric(samples, "process_resident_memory_bytes")
    assert rss < 64 * 1024 * 1024, f"RSS {rss / 2**20:.1f} MiB after 10,000 method names"


def test_healthz_and_readyz_follow_workers_and_drain(dataplane, worker, processes):
    dp = dataplane(services={"Echo": {"method_timeouts": {"slow": "30s"}}})
    assert http_get(dp.metrics_addr, "/healthz") == (200, "ok\n")
    status, body = http_get(dp.metrics_addr, "/readyz")
    assert status == 503 and "no live worker for service(s): Calc, Echo" in body, body
    w = worker("py", concurrency=1, services="Echo")
    status, body = http_get(dp.metrics_addr, "/readyz")
    assert status == 503 and "service(s): Calc" in body and "Echo" not in body, body
    worker(services="Calc")
    assert http_get(dp.metrics_addr, "/readyz") == (200, "ready\n")
    assert http_get(dp.metrics_addr, "/nope")[0] == 404
    samples = parse_metrics(scrape(dp))
    assert metric(samples, "thriftworker_ready") == 1 and metric(samples, "thriftworker_draining") == 0

    # SIGTERM with a call in flight: not ready (draining) but alive until it exits.
    with RawConnection(dp.addr("echo")) as conn:
        conn.send_call("slow", slow_args("drain", 1500), 1)
        wait_for(lambda: w.requests_seen() >= 1, 10, "the slow call at the worker", processes.tails)
        dp.terminate()
        wait_for(lambda: http_get(dp.metrics_addr, "/readyz")[0] == 503, 5, "/readyz 503 while draining", dp.tail)
        status, body = http_get(dp.metrics_addr, "/readyz")
        assert "draining" in body, body
        assert http_get(dp.metrics_addr, "/healthz") == (200, "ok\n")
        samples = parse_metrics(scrape(dp))
        assert metric(samples, "thriftworker_draining") == 1 and metric(samples, "thriftworker_ready") == 0
        r = conn.recv_message(result_cls=Echo.slow_result, timeout=10)
        assert (r.mtype, r.value.success) == (TMessageType.REPLY, "drain"), r
    assert dp.wait_exit() == 0


def test_bad_requests_to_the_metrics_port_get_errors_not_a_crash(dataplane):
    dp = dataplane()
    host, port = dp.metrics_addr.rsplit(":", 1)
    # Garbage instead of HTTP: the connection is answered 400 or closed.
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(b"\x00\xff garbage\r\n\r\n")
        reply = s.recv(1024)
        assert reply == b"" or reply.startswith(b"HTTP/1.1 400"), reply
    # Another method than GET/HEAD.
    req = urllib.request.Request(f"http://{dp.metrics_addr}/metrics", data=b"x", method="POST")
    try:
        urllib.request.urlopen(req, timeout=5)
        raise AssertionError("POST /metrics was accepted")
    except urllib.error.HTTPError as e:
        assert e.code == 405, e
    # Connections that send nothing do not block the probes.
    idle = [socket.create_connection((host, int(port)), timeout=5) for _ in range(8)]
    try:
        assert http_get(dp.metrics_addr, "/healthz") == (200, "ok\n")
    finally:
        for s in idle:
            s.close()
    assert dp.alive(), dp.tail()


def test_metrics_answer_while_the_data_plane_is_saturated(dataplane, worker, admin_pb, admin_channel):
    """Scrapes, probes and the admin API are served on their own thread: they
    answer while the data plane's runtime is busy with a flood of pipelined
    calls."""
    dp = dataplane()
    worker(concurrency=64)
    stop = threading.Event()
    sent = [0]

    def flood():
        with socket.create_connection(dp.addr("echo"), timeout=30) as s:
            msg = frame(encode_message("echo", Echo.echo_args(message="x" * 100), 1))
            batch = msg * 64
            reader = threading.Thread(target=lambda: _drain(s, stop), daemon=True)
            reader.start()
            while not stop.is_set():
                s.sendall(batch)
                sent[0] += 64

    floods = [threading.Thread(target=flood, daemon=True) for _ in range(4)]
    for t in floods:
        t.start()
    try:
        wait_for(lambda: sent[0] > 5000, 20, "the flood to get going")
        channel = admin_channel(dp)
        worst = 0.0
        for _ in range(20):
            started = time.monotonic()
            assert http_get(dp.metrics_addr, "/readyz", timeout=5)[0] == 200
            assert http_get(dp.metrics_addr, "/metrics", timeout=5)[0] == 200
            assert get_stats(admin_pb, channel).services
            worst = max(worst, time.monotonic() - started)
        assert worst < 2.0, f"a probe + scrape + GetStats took {worst:.2f}s under load"
        assert pb_method(get_stats(admin_pb, channel), "echo").calls > 1000, "the flood was being served"
    finally:
        stop.set()
        for t in floods:
            t.join(10)


def _drain(sock, stop):
    try:
        while not stop.is_set() and sock.recv(1 << 20):
            pass
    except OSError:
        pass


def test_debug_logs_have_connection_and_call_spans(dataplane, worker):
    dp = dataplane(args=["--log", "info,thriftworker=debug", "--log-format", "json"])
    worker()
    with thrift_client(dp.addr("echo")) as client:
        client.echo("traced")
    wait_for(lambda: "call finished" in dp.stderr and "connection closed" in dp.stderr, 5,
             "debug lines for the call and the connection's close", dp.tail)
    lines = [json.loads(l) for l in dp.stderr.splitlines() if l.startswith("{")]
    done = [l for l in lines if l.get("fields", {}).get("message") == "call finished"]
    assert done, lines[-5:]
    span = done[0]["span"]
    assert span["name"] == "call" and span["service"] == "Echo" and span["method"] == "echo", span
    assert span["worker"].startswith("w"), span
    conn = [l for l in lines if l.get("fields", {}).get("message") == "connection closed"]
    assert conn and conn[0]["span"]["name"] == "conn" and conn[0]["span"]["listener"] == "echo", conn
