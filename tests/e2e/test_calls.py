"""Calls that succeed: the three protocols, oneway, declared and undeclared
exceptions, multiplexed routing, pipelining and load sharing."""

import collections
import concurrent.futures

import pytest

from harness import (
    INVALID_MESSAGE_TYPE,
    PROTOCOLS,
    UNKNOWN_METHOD,
    Calc,
    Echo,
    EchoError,
    RawConnection,
    TApplicationException,
    TMessageType,
    app_error,
    decode_message,
    encode_message,
    frame,
    raw_echo,
    slow_args,
    thrift_client,
    wait_for,
)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_echo_each_protocol(dataplane, worker, protocol):
    dp = dataplane()
    worker()
    message = f"héllo {protocol} \u2603 " + "x" * 1000
    with thrift_client(dp.addr("echo"), protocol) as client:
        assert client.echo(message) == message
        assert client.echo("") == ""
        assert client.echo("second call") == "second call"


def test_oneway_notify_then_notified(dataplane, worker):
    dp = dataplane()
    worker()  # one worker: `notified` counts per worker process
    with thrift_client(dp.addr("echo")) as client:
        assert client.notified() == 0
        for i in range(5):
            client.notify(f"n{i}")
        # oneway calls are not acknowledged to the client: wait for them to land
        wait_for(lambda: client.notified() >= 5, 10, "notified() to reach 5", dp.tail)
        assert client.notified() == 5
        assert client.echo("after oneway") == "after oneway"


def test_declared_exception(dataplane, worker):
    dp = dataplane()
    worker()
    for protocol in PROTOCOLS:
        with thrift_client(dp.addr("echo"), protocol) as client:
            with pytest.raises(EchoError) as err:
                client.fail("boom", 42)
            assert err.value.message == "boom"
            assert err.value.code == 42
            assert client.echo("still fine") == "still fine"


def test_unknown_method_answered_by_worker(dataplane, worker):
    dp = dataplane()
    worker()
    with RawConnection(dp.addr("echo")) as conn:
        conn.send_call("nosuch", None, 7001)
        reply = conn.recv_message()
        assert reply.mtype == TMessageType.EXCEPTION, reply
        assert reply.seqid == 7001
        assert reply.name == "nosuch"
        assert isinstance(reply.value, TApplicationException)
        assert reply.value.type == UNKNOWN_METHOD, reply.value
        assert raw_echo(conn, "after", 7002).value.success == "after"


def test_reply_sent_as_request_is_invalid_message_type(dataplane, worker):
    dp = dataplane()
    worker()
    with RawConnection(dp.addr("echo")) as conn:
        conn.send(frame(encode_message("echo", Echo.echo_args(message="x"), 31, mtype=TMessageType.REPLY)))
        reply = conn.recv_message()
        assert reply.mtype == TMessageType.EXCEPTION, reply
        assert reply.seqid == 31
        assert reply.value.type == INVALID_MESSAGE_TYPE, reply.value
        assert reply.value.message.startswith("thriftworker: invalid message type"), reply.value.message


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_multiplexed_routing(dataplane, worker, protocol):
    dp = dataplane()
    worker()
    addr = dp.addr("mux")
    with thrift_client(addr, protocol, Echo, multiplexed="Echo") as echo:
        assert echo.echo("via mux") == "via mux"
    with thrift_client(addr, protocol, Calc, multiplexed="Calc") as calc:
        assert calc.add(40, 2) == 42
        assert calc.add(-7, 3) == -4
    # Both services on one connection, raw: the worker gets plain names.
    with RawConnection(addr) as conn:
        r = conn.call("Echo:echo", Echo.echo_args(message="m1"), 1, protocol, Echo.echo_result)
        assert (r.mtype, r.seqid, r.value.success) == (TMessageType.REPLY, 1, "m1"), r
        r = conn.call("Calc:add", Calc.add_args(a=2, b=3), 2, protocol, Calc.add_result)
        assert (r.mtype, r.seqid, r.value.success) == (TMessageType.REPLY, 2, 5), r


def test_unknown_service_on_mux(dataplane, worker):
    dp = dataplane()
    worker()
    with RawConnection(dp.addr("mux")) as conn:
        r = conn.call("Nope:echo", Echo.echo_args(message="x"), 55)
        assert r.mtype == TMessageType.EXCEPTION, r
        assert r.seqid == 55
        assert r.value.type == UNKNOWN_METHOD, r.value
        assert r.value.message.startswith("thriftworker: unknown service"), r.value.message
        # the connection is still usable
        r = conn.call("Echo:echo", Echo.echo_args(message="still here"), 56, result_cls=Echo.echo_result)
        assert (r.mtype, r.seqid, r.value.success) == (TMessageType.REPLY, 56, "still here"), r


def test_pipelined_replies_in_request_order(dataplane, worker):
    dp = dataplane()
    worker(concurrency=8)
    worker(concurrency=8)
    n = 20
    # Later calls sleep less, so workers finish them first: the data plane
    # must put the replies back in request order.
    batch = b"".join(
        frame(encode_message("slow", slow_args(f"m{i}", (n - i) * 15), 1000 + i)) for i in range(n)
    )
    with RawConnection(dp.addr("echo")) as conn:
        conn.send(batch)
        replies = [conn.recv_message(result_cls=Echo.slow_result) for _ in range(n)]
    assert [r.seqid for r in replies] == [1000 + i for i in range(n)]
    assert [r.mtype for r in replies] == [TMessageType.REPLY] * n
    assert [r.value.success for r in replies] == [f"m{i}" for i in range(n)]


def test_two_workers_share_load(dataplane, worker):
    dp = dataplane()
    w1 = worker()
    w2 = worker()

    def run(k):
        with thrift_client(dp.addr("echo")) as client:
            return [client.whoami() for _ in range(50)]

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        served = [who for batch in pool.map(run, range(4)) for who in batch]
    counts = collections.Counter(served)
    assert sum(counts.values()) == 200
    assert len(counts) == 2, f"expected two distinct workers, got {counts}"
    for w in (w1, w2):
        mine = [who for who in counts if str(w.pid) in who]
        assert len(mine) == 1, f"whoami values {counts} should name worker pid {w.pid}"
        assert counts[mine[0]] >= 20, f"worker {w.pid} served too few calls: {counts}"


def test_calc_add_on_echo_listener_is_not_routed(dataplane, worker):
    """A single-service listener sends every name to its service: `add` on
    the Echo listener is an unknown method of Echo, answered by the worker."""
    dp = dataplane()
    worker()
    with thrift_client(dp.addr("echo"), service=Calc) as calc:
        err = app_error(lambda: calc.add(1, 2))
        assert err.type == UNKNOWN_METHOD, err


@pytest.mark.parametrize("kind", ["rust", "py"])
def test_reply_is_encoded_in_the_call_protocol(dataplane, worker, kind):
    """Byte-level: each reply starts the way its protocol's messages do
    (a lax client may not understand a strict reply, and vice versa)."""
    dp = dataplane()
    worker(kind)
    starts = {
        "binary": b"\x80\x01\x00\x02" + b"\x00\x00\x00\x04echo",  # version word, REPLY; name
        "lax": b"\x00\x00\x00\x04echo\x02",  # name length, name, REPLY
        "compact": b"\x82\x41",  # protocol id; version 1 | REPLY << 5
    }
    for seqid, (protocol, start) in enumerate(starts.items(), 1):
        # one connection per protocol: the listener detects it per connection
        with RawConnection(dp.addr("echo")) as conn:
            conn.send_call("echo", Echo.echo_args(message="bytes"), seqid, protocol)
            data = conn.recv_frame()
        assert data.startswith(start), (protocol, data)
        r = decode_message(data, protocol, Echo.echo_result)
        assert (r.name, r.mtype, r.seqid, r.value.success) == ("echo", TMessageType.REPLY, seqid, "bytes")
