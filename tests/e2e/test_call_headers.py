"""Call headers end to end: a THeader client's info headers reach the worker
(worker protocol version 2), reply headers come back, the client's deadline
is what the worker sees, trace context is recorded in the data plane's call
span; version 1 workers and data planes keep working."""

import struct
import threading
import time

import pytest
import zmq

from harness import MAX_WAIT, Echo, thrift_client, wait_for

TRACEPARENT = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def reply_headers(client):
    return dict(client._iprot.get_headers())


@pytest.mark.parametrize("protocol", ["binary", "compact"])
@pytest.mark.parametrize("zlib", [False, True])
def test_headers_reach_the_rust_worker_and_reply_headers_come_back(dataplane, worker, protocol, zlib):
    dp = dataplane()
    worker()
    with thrift_client(dp.addr("echo"), protocol, transport="header", zlib=zlib) as client:
        client._oprot.set_header(b"x-echo-headers", b"1")
        client._oprot.set_header(b"traceparent", TRACEPARENT)
        client._oprot.set_header(b"x-caller", "ünïcode".encode())
        assert client.echo("with headers") == "with headers"
        got = reply_headers(client)
        assert got[b"echo-traceparent"] == TRACEPARENT, got
        assert got[b"echo-x-caller"] == "ünïcode".encode()
        assert got[b"echo-x-echo-headers"] == b"1"
        assert 10_000 < int(got[b"x-remaining-ms"]) <= 15_000, got  # the service's 15 s
        # Headers go with one call only (the client clears them after each).
        assert client.echo("no headers") == "no headers"
        assert reply_headers(client) == {}


def test_the_client_timeout_is_the_workers_budget(dataplane, worker):
    dp = dataplane()
    worker()
    with thrift_client(dp.addr("mux"), "compact", Echo, multiplexed="Echo", transport="header") as client:
        client._oprot.set_header(b"x-echo-headers", b"1")
        client._oprot.set_header(b"client_timeout", b"2500")
        assert client.echo("budget") == "budget"
        left = int(reply_headers(client)[b"x-remaining-ms"])
        assert 1000 < left <= 2500, left


@pytest.mark.parametrize("mode, target", [
    ("inline", "pyapp:apache"),
    ("threads", "pyapp:thriftpy2"),
    ("asyncio", "pyapp:apache_async"),
])
def test_headers_reach_the_python_package_worker(dataplane, worker, mode, target):
    dp = dataplane()
    worker("pkg", mode=mode, target=target)
    with thrift_client(dp.addr("echo"), "compact", transport="header") as client:
        client._oprot.set_header(b"x-echo-headers", b"1")
        client._oprot.set_header(b"traceparent", TRACEPARENT)
        assert client.echo(f"py {mode}") == f"py {mode}"
        got = reply_headers(client)
        assert got.get(b"echo-traceparent") == TRACEPARENT, got


def test_trace_context_is_recorded_in_the_call_span(dataplane, worker):
    dp = dataplane(args=["--log", "info,thriftworker::data::dispatch=debug"])
    worker()
    with thrift_client(dp.addr("echo"), "binary", transport="header") as client:
        client._oprot.set_header(b"traceparent", TRACEPARENT)
        client._oprot.set_header(b"X-B3-TraceId", b"80f198ee56343ba864fe8b2a57d3eff7")
        assert client.echo("traced") == "traced"
    wait_for(lambda: TRACEPARENT.decode() in dp.stderr, 5, "the traceparent in the call span", dp.tail)
    line = next(l for l in dp.stderr.splitlines() if TRACEPARENT.decode() in l)
    assert "call finished" in line and "80f198ee56343ba864fe8b2a57d3eff7" in line, line


def test_a_version_1_worker_serves_header_clients_without_headers(dataplane, worker):
    dp = dataplane()
    w = worker("py")  # tests/e2e/pyworker.py speaks version 1 only
    with thrift_client(dp.addr("echo"), "binary", transport="header") as client:
        client._oprot.set_header(b"x-echo-headers", b"1")
        assert client.echo("v1 worker") == "v1 worker"
        assert reply_headers(client) == {}
    assert "dropping" not in w.stderr, w.stderr[-2000:]


def test_a_rust_worker_falls_back_to_version_1_with_an_old_data_plane(processes, tmp_path):
    """A data plane that speaks version 1 only (a pyzmq ROUTER answering as
    thriftworker 0.1 did) refuses READY version 3, then 2; the worker then
    registers as version 1 on the same connection and is served calls
    without headers."""
    from harness import binary, clean_env

    ctx = zmq.Context.instance()
    router = ctx.socket(zmq.ROUTER)
    endpoint = f"ipc://{tmp_path}/old.sock"
    router.bind(endpoint)
    router.setsockopt(zmq.RCVTIMEO, int(MAX_WAIT * 1000))
    w = processes.start("rust-worker#old-dp", [str(binary("echo-worker")), "--endpoint", endpoint,
                                                "--services", "Echo"], clean_env())
    try:
        for version in (3, 2):
            peer, hdr, *rest = router.recv_multipart()
            assert hdr == bytes([version, 1]), hdr  # READY, version 3 then 2
            reason = f"refused: unsupported worker protocol version {version} (this side speaks version 1)"
            router.send_multipart([peer, b"\x01\x05", reason.encode()])
        peer, hdr, *rest = router.recv_multipart()
        assert hdr == b"\x01\x01", hdr  # READY again, version 1
        router.send_multipart([peer, b"\x01\x01", struct.pack(">I", 1000), b"w1"])
        call = b"\x80\x01\x00\x01\x00\x00\x00\x04echo\x00\x00\x00\x07" + b"\x0b\x00\x01\x00\x00\x00\x02hi\x00"
        meta = struct.pack(">QIB", 1, 5000, 0)
        router.send_multipart([peer, b"\x01\x02", meta, b"Echo", call])
        while True:
            peer, hdr, *rest = router.recv_multipart()
            if hdr[1] == 3:
                break
        assert hdr == b"\x01\x03", hdr  # REPLY, version 1
        assert struct.unpack(">Q", rest[0])[0] == 1
        assert len(rest) == 2 and b"hi" in rest[1], rest
        wait_for(lambda: "protocol_version=1" in w.stderr or "version 1" in w.stderr, 5, "the fallback logged", w.tail)
    finally:
        w.kill()
        router.close(linger=0)


def test_a_version_2_data_plane_is_registered_again_to_share_credit(processes, dataplane, tmp_path):
    """A data plane of the previous release (version 2: headers, no CREDIT)
    refuses READY version 3 and gets the worker as version 2, with its whole
    credit while it is alone. When a second data plane (this release)
    appears, the worker cannot send the old one a CREDIT: it leaves it
    gracefully (DISCONNECT, calls finished, goodbye awaited) and registers
    again with half the credit, and the new one gets the other half."""
    from harness import binary, clean_env

    ctx = zmq.Context.instance()
    router = ctx.socket(zmq.ROUTER)
    old = f"ipc://{tmp_path}/v2.sock"
    router.bind(old)
    router.setsockopt(zmq.RCVTIMEO, int(MAX_WAIT * 1000))
    new = f"ipc://{tmp_path}/v3.sock"
    w = processes.start("rust-worker#v2-dp", [str(binary("echo-worker")), "--endpoint", f"{old},{new}",
                                               "--services", "Echo", "--prefetch", "0"], clean_env())

    def ready_v2(expect_credit):
        peer, hdr, *rest = router.recv_multipart()
        assert hdr == b"\x03\x01", hdr
        router.send_multipart([peer, b"\x01\x05", b"refused: unsupported worker protocol version 3 (this side speaks versions 1 to 2)"])
        peer, hdr, credit, *rest = router.recv_multipart()
        assert hdr == b"\x02\x01" and struct.unpack(">I", credit)[0] == expect_credit, (hdr, credit)
        router.send_multipart([peer, b"\x02\x01", struct.pack(">I", 200), b"w1"])
        return peer

    try:
        peer = ready_v2(4)
        wait_for(lambda: "protocol_version=2" in w.stderr, 5, "registered as version 2", w.tail)
        dp = dataplane(endpoint=new)
        deadline = time.monotonic() + MAX_WAIT
        while True:  # heartbeats, then DISCONNECT: never a CREDIT
            assert time.monotonic() < deadline, "the worker never left the version-2 data plane"
            router.send_multipart([peer, b"\x01\x04"])
            _, hdr, *rest = router.recv_multipart()
            assert hdr[1] in (4, 5), hdr
            if hdr[1] == 5:
                break
        router.send_multipart([peer, b"\x01\x05", b"bye"])
        ready_v2(2)
        dp.wait_registered(1, context=processes.tails)
        wait_for(lambda: "thriftworker_worker_credit{worker=\"w1\"} 2" in dp.metrics(), 5, "credit 2 at the new data plane", processes.tails)
    finally:
        w.kill()
        router.close(linger=0)


def test_hostile_reply_headers_are_dropped_not_forwarded(dataplane, processes, tmp_path):
    """A version 2 worker whose REPLY carries a malformed headers frame:
    the client gets the reply, without headers."""
    dp = dataplane()
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.RCVTIMEO, int(MAX_WAIT * 1000))
    sock.connect(dp.endpoint)
    sock.send_multipart([b"\x02\x01", struct.pack(">I", 4), b"", b"Echo"])
    hdr, *_ = sock.recv_multipart()
    assert hdr == b"\x02\x01", hdr  # acknowledged as version 2
    result = {}

    def call():
        with thrift_client(dp.addr("echo"), "binary", transport="header") as client:
            client._oprot.set_header(b"k", b"v")
            result["value"] = client.echo("x")
            result["headers"] = reply_headers(client)

    t = threading.Thread(target=call)
    t.start()
    try:
        while True:
            hdr, *rest = sock.recv_multipart()
            if hdr[1] == 2:
                break
        assert hdr == b"\x02\x02" and len(rest) == 4, (hdr, rest)  # meta, service, message, headers
        assert rest[3] == b"\x00\x01k\x00\x00\x00\x01v"
        request_id = rest[0][:8]
        msg = rest[2]
        name_len = struct.unpack(">I", msg[4:8])[0]
        seqid = msg[8 + name_len:12 + name_len]
        reply = b"\x80\x01\x00\x02" + msg[4:8 + name_len] + seqid + b"\x0b\x00\x00\x00\x00\x00\x01x\x00"
        sock.send_multipart([b"\x02\x03", request_id, reply, b"\xff\xff garbage headers"])
        t.join(MAX_WAIT)
        assert result == {"value": "x", "headers": {}}, result
    finally:
        sock.close(linger=0)
    assert dp.alive()
