import struct

import pytest

from thriftworker import wire


def test_ready_frames() -> None:
    frames = wire.ready(4, b"tok", ["Echo", "Calc"])
    assert frames == [b"\x01\x01", struct.pack(">I", 4), b"tok", b"Echo", b"Calc"]
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
        [b"\x02\x04"],
        [b"\x01\x09"],
        [b"\x01\x01", b"\x00\x00"],
        [b"\x01\x02", b"short", b"Echo", b"m"],
        [b"\x01\x02", struct.pack(">QIB", 1, 1, 0), b"Echo"],
    ],
)
def test_malformed_messages_are_errors(frames: list[bytes]) -> None:
    with pytest.raises(wire.WireError):
        wire.decode(frames)
