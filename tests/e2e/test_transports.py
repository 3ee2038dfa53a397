"""Transports clients really use: framed, unframed (TBufferedTransport) and
THeader (with zlib and info headers), fixed per listener or detected per
connection (`auto`, the default), each answered in the transport it came in.
Bad input in each closes only that connection, counted."""

import concurrent.futures
import re
import struct
import subprocess
import time

import pytest

from harness import (
    INTERNAL_ERROR,
    TApplicationException,
    RawConnection,
    TMessageType,
    app_error,
    binary,
    clean_env,
    decode_message,
    echo_args,
    encode_message,
    frame,
    thrift_client,
    wait_for,
)
from harness import Echo

MAX_FRAME = 4096
INVALID_TRANSFORM = 8
INVALID_PROTOCOL = 9


def metric(dp, name, **labels):
    """The value of one series of /metrics (0 if absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in dp.metrics().splitlines():
        m = re.match(r"^([a-z_]+)\{([^}]*)\} (\S+)$", line)
        if m and m.group(1) == name and ",".join(sorted(m.group(2).split(","))) == want:
            return float(m.group(3))
    return 0.0


# -- real clients ------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["binary", "compact"])
@pytest.mark.parametrize("transport", ["framed", "buffered", "header"])
def test_python_clients_of_each_transport_are_served_on_an_auto_listener(dataplane, worker, transport, protocol):
    dp = dataplane()
    worker()
    with thrift_client(dp.addr("echo"), protocol, transport=transport) as client:
        for i in range(3):
            assert client.echo(f"{transport} {protocol} {i} ✓") == f"{transport} {protocol} {i} ✓"
        client.notify("oneway")  # no answer, and the next call still matches
        assert client.echo("after oneway") == "after oneway"
    with thrift_client(dp.addr("mux"), protocol, Echo, multiplexed="Echo", transport=transport) as client:
        assert client.echo("mux") == "mux"
    label = {"framed": "framed", "buffered": "unframed", "header": "header"}[transport]
    wait_for(lambda: metric(dp, "thriftworker_listener_transport_connections_total",
                            listener="echo", transport=label) == 1, 5, "per-transport connection count")
    assert metric(dp, "thriftworker_listener_transport_calls_total", listener="echo", transport=label) == 5


@pytest.mark.parametrize("protocol", ["binary", "compact"])
def test_header_clients_with_zlib(dataplane, worker, protocol):
    dp = dataplane()
    worker()
    big = "z" * 3000  # compresses: the payload on the wire is smaller
    with thrift_client(dp.addr("echo"), protocol, transport="header", zlib=True) as client:
        assert client.echo(big) == big
        assert client.echo("small") == "small"
    received = metric(dp, "thriftworker_listener_received_bytes_total", listener="echo")
    assert 0 < received < 3000, received


def test_lax_binary_needs_an_unframed_listener(dataplane, worker):
    dp = dataplane(listeners={"echo": {"transport": "unframed"}})
    worker()
    with thrift_client(dp.addr("echo"), "lax", transport="buffered") as client:
        assert client.echo("lax unframed") == "lax unframed"
    with thrift_client(dp.addr("echo"), "compact", transport="buffered") as client:
        assert client.echo("compact unframed") == "compact unframed"


def test_every_transport_at_once_on_one_auto_port(dataplane, worker, thriftctl):
    dp = dataplane()
    worker()
    kinds = [(t, p) for t in ("framed", "buffered", "header") for p in ("binary", "compact")]

    def run(i):
        transport, protocol = kinds[i % len(kinds)]
        with thrift_client(dp.addr("echo"), protocol, transport=transport, zlib=(i % 4 == 0)) as client:
            return [client.echo(f"{i}:{n}") for n in range(20)]

    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        results = list(pool.map(run, range(24)))
    assert results == [[f"{i}:{n}" for n in range(20)] for i in range(24)]
    for label in ("framed", "unframed", "header"):
        assert metric(dp, "thriftworker_listener_transport_connections_total", listener="echo", transport=label) == 8
    # The admin API's view of the same counters.
    stats = {entry["name"]: entry for entry in thriftctl(dp).ok("stats")["listeners"]}
    assert stats["echo"]["transport_connections"] == {"framed": 8, "header": 8, "unframed": 8}
    assert stats["echo"]["transport_calls"] == {"framed": 160, "header": 160, "unframed": 160}


def test_rust_client_buffered_transport(dataplane, worker):
    dp = dataplane()
    worker()
    host, port = dp.addr("echo")
    for protocol in ("binary", "compact"):
        argv = [str(binary("echo-client")), "--addr", f"{host}:{port}", "--transport", "buffered",
                "--protocol", protocol, "echo", f"rust buffered {protocol}"]
        r = subprocess.run(argv, capture_output=True, text=True, timeout=20, env=clean_env())
        assert (r.returncode, r.stdout.strip()) == (0, f"rust buffered {protocol}"), r.stderr


# -- client deadlines (THeader client_timeout) ----------------------------------


def test_the_clients_shorter_timeout_wins_and_the_worker_sees_it(dataplane, worker):
    dp = dataplane()  # service timeout: the default 30 s
    w = worker("py")
    with thrift_client(dp.addr("echo"), "binary", transport="header") as client:
        client._oprot.set_header(b"client_timeout", b"400")
        started = time.monotonic()
        err = app_error(lambda: client.slow("too slow", 5000))
        took = time.monotonic() - started
        assert err.type == INTERNAL_ERROR and "timed out" in err.message, err
        assert took < 4.0, f"answered after {took:.1f}s: the client's 400 ms did not apply"
        # Without the header the configured 30 s applies again.
        assert client.slow("quick", 10) == "quick"
    budgets = [int(b) for b in re.findall(r"timeout_ms=(\d+)", w.stderr)]
    assert budgets and budgets[0] <= 400, budgets
    assert budgets[-1] > 20_000, budgets


def test_an_expired_or_zero_client_timeout(dataplane, worker):
    dp = dataplane()
    worker()
    with thrift_client(dp.addr("echo"), "compact", transport="header") as client:
        # 0 and garbage mean "no client timeout".
        for value in (b"0", b"soon", b"9" * 40):
            client._oprot.set_header(b"client_timeout", value)
            assert client.echo("no client deadline") == "no client deadline"


# -- hostile and broken input -----------------------------------------------------


def nested_structs(depth):
    """A binary CALL whose args nest `depth` structs (field 1 each)."""
    head = encode_message("echo", None, 1)[:-1]  # drop the args' STOP
    return head + b"\x0c\x00\x01" * depth + b"\x00" * (depth + 1)


def header_frame(payload, protocol_id=0, transforms=(), info=b"", header_words=None):
    header = bytes([protocol_id, len(transforms), *transforms]) + info
    header += b"\x00" * (-len(header) % 4)
    words = len(header) // 4 if header_words is None else header_words
    body = b"\x0f\xff" + struct.pack(">HIH", 0, 7, words) + header + payload
    return struct.pack(">I", len(body)) + body


BAD_INPUTS = {
    # unframed: no end within max_frame_size
    "unframed_oversized": encode_message("echo", echo_args("x" * MAX_FRAME), 1),
    "unframed_too_deep": nested_structs(70),
    "unframed_bad_type": encode_message("echo", None, 1)[:-1] + b"\x63\x00\x01",
    "unframed_huge_list": encode_message("echo", None, 1)[:-1] + b"\x0f\x00\x01\x08\x7f\xff\xff\xff",
    "unframed_negative_string": encode_message("echo", None, 1)[:-1] + b"\x0b\x00\x01\xff\xff\xff\xfe",
    "compact_unframed_bad_varint": encode_message("echo", None, 1, "compact")[:-1] + b"\x16" + b"\xff" * 11,
    # THeader
    "header_size_past_frame": header_frame(b"", header_words=0xFFFF),
    "header_huge_frame": struct.pack(">I", 0x7FFFFFF0) + b"\x0f\xff\x00\x00",
    "header_string_past_header": header_frame(b"", info=b"\x01\x01\x7f"),
    "header_corrupt_zlib": header_frame(b"not zlib", transforms=(1,)),
    "header_zlib_bomb": header_frame(__import__("zlib").compress(b"\0" * (1 << 20)), transforms=(1,)),
}


@pytest.fixture
def setup(dataplane, worker):
    dp = dataplane(listeners={"echo": {"max_frame_size": MAX_FRAME}})
    worker()
    good = thrift_client(dp.addr("echo"), "binary", transport="buffered")
    client = good.__enter__()
    assert client.echo("before") == "before"
    yield dp, client
    good.__exit__(None, None, None)


def assert_unharmed(dp, client):
    assert client.echo("after") == "after"
    for transport in ("framed", "buffered", "header"):
        with thrift_client(dp.addr("echo"), "compact", transport=transport) as fresh:
            assert fresh.echo(f"fresh {transport}") == f"fresh {transport}"
    assert dp.alive(), dp.tail()


@pytest.mark.parametrize("kind", sorted(BAD_INPUTS))
def test_bad_unframed_or_header_input_closes_only_that_connection(setup, kind):
    dp, client = setup
    closed_before = sum(
        metric(dp, "thriftworker_listener_connections_closed_total", listener="echo", reason=r)
        for r in ("bad_frame", "frame_too_large")
    )
    with RawConnection(dp.addr("echo")) as bad:
        bad.send(BAD_INPUTS[kind])
        assert bad.closed_by_peer(5), f"{kind}: connection not closed\n{dp.tail()}"
    wait_for(lambda: sum(
        metric(dp, "thriftworker_listener_connections_closed_total", listener="echo", reason=r)
        for r in ("bad_frame", "frame_too_large")) == closed_before + 1, 5, f"{kind} counted as bad_frame or frame_too_large")
    assert_unharmed(dp, client)


def test_unterminated_unframed_message_then_eof(setup):
    dp, client = setup
    full = encode_message("echo", echo_args("cut short"), 9)
    with RawConnection(dp.addr("echo")) as bad:
        bad.send(encode_message("echo", echo_args("whole"), 8) + full[: len(full) // 2])
        bad.sock.shutdown(1)  # EOF inside the second message
        # The whole first call is still answered, unframed.
        data = b""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            chunk = bad.sock.recv(65536)
            if not chunk:
                break
            data += chunk
        reply = decode_message(data, "binary", Echo.echo_result)
        assert (reply.seqid, reply.value.success) == (8, "whole"), reply
    assert_unharmed(dp, client)


def read_header_reply(conn):
    (length,) = struct.unpack(">I", conn._read(4, time.monotonic() + 10))
    body = conn._read(length, time.monotonic() + 10)
    assert body[:2] == b"\x0f\xff", body[:16]
    (words,) = struct.unpack(">H", body[8:10])
    return body[4:8], body[10 + 4 * words:]


@pytest.mark.parametrize("transform, protocol_id, kind, word", [
    (3, 0, INVALID_TRANSFORM, "snappy"),
    (2, 2, INVALID_TRANSFORM, "hmac"),
    (None, 1, INVALID_PROTOCOL, "protocol id 1"),
])
def test_unsupported_header_transforms_and_protocols_are_answered_then_closed(setup, transform, protocol_id, kind, word):
    dp, client = setup
    transforms = () if transform is None else (transform,)
    with RawConnection(dp.addr("echo")) as bad:
        bad.send(header_frame(b"whatever", protocol_id=protocol_id, transforms=transforms))
        seq, payload = read_header_reply(bad)
        assert seq == struct.pack(">I", 7)
        reply = decode_message(payload, "compact" if protocol_id == 2 else "binary")
        assert reply.mtype == TMessageType.EXCEPTION
        assert isinstance(reply.value, TApplicationException)
        assert reply.value.type == kind and word in reply.value.message, reply.value
        assert bad.closed_by_peer(5)
    assert_unharmed(dp, client)


@pytest.mark.parametrize("transport, protocol, foreign, reason", [
    # An unframed call on a framed listener reads as a frame length of
    # 0x80010001: negative.
    ("framed", "binary", encode_message("echo", echo_args("unframed"), 1), "bad_frame"),
    ("header", "compact", frame(encode_message("echo", echo_args("framed"), 1)), "protocol_error"),
])
def test_fixed_transport_listeners_take_only_their_transport(dataplane, worker, transport, protocol, foreign, reason):
    dp = dataplane(listeners={"echo": {"transport": transport}})
    worker()
    with thrift_client(dp.addr("echo"), protocol, transport=transport) as client:
        assert client.echo(transport) == transport
    with RawConnection(dp.addr("echo")) as conn:
        conn.send(foreign)
        assert conn.closed_by_peer(5)
    wait_for(lambda: metric(dp, "thriftworker_listener_connections_closed_total",
                            listener="echo", reason=reason) == 1, 5, f"counted as {reason}")
