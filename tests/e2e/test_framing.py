"""Bad input on a connection closes that connection and nothing else."""

import struct

import pytest

from harness import RawConnection, TMessageType, encode_message, echo_args, frame, raw_echo, wait_for

MAX_FRAME = 1024

BAD_INPUTS = {
    "oversized": struct.pack(">i", MAX_FRAME + 1) + b"\x80\x01\x00\x01" + b"x" * 60,
    "huge": struct.pack(">i", 0x7FFFFFFF) + b"\x80\x01\x00\x01",
    "zero_length": struct.pack(">i", 0),
    "negative_length": struct.pack(">i", -5) + b"abcd",
    # a complete frame whose content is no Thrift message in any protocol
    "garbage": frame(b"\x07\xffgarbage-not-thrift\x00\x01\x02\x03"),
    "garbage_strict_bad_version": frame(b"\x80\x07\x00\x01" + b"\x00" * 12),
}


@pytest.fixture
def setup(dataplane, worker):
    dp = dataplane(listeners={"echo": {"max_frame_size": MAX_FRAME}})
    worker()
    good = RawConnection(dp.addr("echo"))
    assert raw_echo(good, "before", 1).value.success == "before"
    yield dp, good
    good.close()


def assert_unharmed(dp, good, seqid):
    r = raw_echo(good, f"after {seqid}", seqid)
    assert (r.mtype, r.seqid, r.value.success) == (TMessageType.REPLY, seqid, f"after {seqid}"), r
    with RawConnection(dp.addr("echo")) as fresh:
        assert raw_echo(fresh, "fresh", 1).value.success == "fresh"
    assert dp.alive(), dp.tail()


@pytest.mark.parametrize("kind", sorted(BAD_INPUTS))
def test_bad_frame_closes_only_that_connection(setup, kind):
    dp, good = setup
    with RawConnection(dp.addr("echo")) as bad:
        bad.send(BAD_INPUTS[kind])
        assert bad.closed_by_peer(5), f"{kind}: connection not closed\n{dp.tail()}"
    assert_unharmed(dp, good, 2)


def test_frame_at_the_limit_is_served(setup):
    dp, good = setup
    # a message whose frame is exactly max_frame_size bytes
    overhead = len(encode_message("echo", echo_args(""), 3))
    msg = "y" * (MAX_FRAME - overhead)
    payload = encode_message("echo", echo_args(msg), 3)
    assert len(payload) == MAX_FRAME
    r = raw_echo(good, msg, 3)
    assert (r.seqid, r.value.success) == (3, msg)


def test_truncated_frame_then_close(setup):
    dp, good = setup
    full = frame(encode_message("echo", echo_args("cut short"), 9))
    with RawConnection(dp.addr("echo")) as bad:
        bad.send(full[: len(full) // 2])
        bad.sock.shutdown(1)  # SHUT_WR: the data plane sees EOF mid-frame
        assert bad.closed_by_peer(5), f"connection not closed after EOF mid-frame\n{dp.tail()}"
    assert_unharmed(dp, good, 4)



def test_logs_to_a_pipe_have_no_colour_codes_and_plain_fields(dataplane, worker):
    """stderr is a pipe here (not a terminal) and NO_COLOR is unset: the log
    has no ANSI escapes, and optional fields print their value, not Some(..)."""
    dp = dataplane(env={"NO_COLOR": None}, listeners={"echo": {"max_frame_size": MAX_FRAME}})
    worker()
    with RawConnection(dp.addr("echo")) as bad:
        bad.send(BAD_INPUTS["negative_length"])
        assert bad.closed_by_peer(5)
    wait_for(lambda: "closing connection: bad" in dp.stderr, 5, "the bad frame logged", dp.tail)
    assert "\x1b[" not in dp.stderr, repr(dp.stderr[:300])
    line = next(x for x in dp.stderr.splitlines() if "closing connection: bad" in x)
    assert "peer=127.0.0.1:" in line and "Some(" not in line, line
    assert "Some(" not in dp.stderr, [x for x in dp.stderr.splitlines() if "Some(" in x]
