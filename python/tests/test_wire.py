import struct

import pytest

from thriftworker import wire


def test_ready_frames() -> None:
    frames = wire.ready(4, b"tok", ["Echo", "Calc"])
    assert frames == [b"\x03\x01", struct.pack(">I", 4), b"tok", b"Echo", b"Calc"]
    assert wire.ready(4, b"", ["Echo"], wire.VERSION_2)[0] == b"\x02\x01"
    assert wire.ready(4, b"", ["Echo"], wire.VERSION_1)[0] == b"\x01\x01"
    with pytest.raises(ValueError, match="version"):
        wire.ready(4, b"", ["Echo"], 4)
    with pytest.raises(ValueError):
        wire.ready(0, b"", ["Echo"])
    with pytest.raises(ValueError):
        wire.ready(wire.MAX_CREDIT + 1, b"", ["Echo"])
    with pytest.raises(ValueError):
        wire.ready(1, b"", [])


def test_reply_heartbeat_disconnect_frames() -> None:
    assert wire.reply(7, b"m") == [b"\x01\x03", struct.pack(">Q", 7), b"m"]
    assert wire.heartbeat() == [b"\x01\x04"]
    assert wire.disconnect("bye") == [b"\x01\x05", b"bye"]


def test_decode_every_server_message() -> None:
    assert wire.decode([b"\x01\x01", struct.pack(">I", 250), b"w3"]) == wire.ReadyAck(250, "w3")
    assert wire.decode([b"\x02\x01", struct.pack(">I", 250), b"w3"]) == wire.ReadyAck(250, "w3", 2)
    meta = struct.pack(">QIB", 2**40, 1500, wire.COMPACT)
    assert wire.decode([b"\x01\x02", meta, b"Echo", b"msg"]) == wire.Request(2**40, 1500, wire.COMPACT, "Echo", b"msg")
    assert wire.decode([b"\x01\x04"]) == wire.Heartbeat()
    assert wire.decode([b"\x01\x05", b"bye"]) == wire.Disconnect("bye")
    assert wire.decode([b"\x01\x05"]) == wire.Disconnect("")


@pytest.mark.parametrize(
    "frames",
    [
        [],
        [b"\x01"],
        [b"\x04\x04"],
        [b"\x00\x04"],
        [b"\x03\x06"],
        [b"\x03\x06", b"\x00\x01"],
        [b"\x03\x06", struct.pack(">I", 0)],
        [b"\x03\x06", struct.pack(">I", wire.MAX_CREDIT + 1)],
        [b"\x02\x02", struct.pack(">QIB", 1, 1, 0), b"Echo", b"m", b"\x00\x05ab"],
        [b"\x01\x09"],
        [b"\x01\x01", b"\x00\x00"],
        [b"\x01\x02", b"short", b"Echo", b"m"],
        [b"\x01\x02", struct.pack(">QIB", 1, 1, 0), b"Echo"],
    ],
)
def test_malformed_messages_are_errors(frames: list[bytes]) -> None:
    with pytest.raises(wire.WireError):
        wire.decode(frames)


def test_version_2_headers_round_trip() -> None:
    headers = ((b"traceparent", b"00-ab-cd-01"), (b"", b"x"), (b"k", b""))
    frame = wire.encode_headers(headers)
    assert frame.startswith(b"\x00\x0btraceparent\x00\x00\x00\x0b00-ab-cd-01")
    assert wire.decode_headers(frame) == headers
    meta = struct.pack(">QIB", 9, 100, wire.BINARY)
    got = wire.decode([b"\x02\x02", meta, b"Echo", b"m", frame])
    assert got == wire.Request(9, 100, wire.BINARY, "Echo", b"m", headers)
    # A version 1 REQUEST's trailing frames are not headers.
    assert wire.decode([b"\x01\x02", meta, b"Echo", b"m", frame]).headers == ()
    v2 = [b"\x02\x03", struct.pack(">Q", 7), b"m", b"\x00\x01k\x00\x00\x00\x01v"]
    assert wire.reply(7, b"m", [(b"k", b"v")]) == v2
    assert wire.reply(7, b"m", []) == wire.reply(7, b"m")


@pytest.mark.parametrize("frame", [b"\x00", b"\x00\x05ab", b"\x00\x01k\x00\x00", b"\x00\x00\xff\xff\xff\xff"])
def test_malformed_headers_are_errors(frame: bytes) -> None:
    with pytest.raises(wire.WireError):
        wire.decode_headers(frame)


def test_too_many_headers_are_an_error() -> None:
    frame = wire.encode_headers([(b"k", b"v")] * (wire.MAX_HEADERS + 1))
    with pytest.raises(wire.WireError):
        wire.decode_headers(frame)


def test_credit_round_trip_and_bounds() -> None:
    assert wire.credit(7) == [b"\x03\x06", struct.pack(">I", 7)]
    for value in (1, 2, 1000, wire.MAX_CREDIT):
        frames = wire.credit(value)
        # The data plane answers with the same frames: the credit it applied.
        assert wire.decode(frames) == wire.CreditAck(value)
    for bad in (0, -1, wire.MAX_CREDIT + 1):
        with pytest.raises(ValueError, match="credit must be between 1 and 65536"):
            wire.credit(bad)
    # Trailing frames are ignored (a later version may add some).
    assert wire.decode([b"\x03\x06", struct.pack(">I", 3), b"more"]) == wire.CreditAck(3)


def test_version_3_ready_ack_and_requests() -> None:
    assert wire.decode([b"\x03\x01", struct.pack(">I", 250), b"w3"]) == wire.ReadyAck(250, "w3", 3)
    meta = struct.pack(">QIB", 9, 100, wire.BINARY)
    frame = wire.encode_headers([(b"k", b"v")])
    got = wire.decode([b"\x03\x02", meta, b"Echo", b"m", frame])
    assert got == wire.Request(9, 100, wire.BINARY, "Echo", b"m", ((b"k", b"v"),))
