"""The worker protocol, versions 1 to 3 (docs/worker-protocol.md): the
messages a worker and the data plane exchange, as lists of ZeroMQ frames.
Version 2 adds call headers: a trailing frame on REQUEST and REPLY. Version
3 adds CREDIT (both ways), so a worker attached to several data planes can
move its credit between them. Both are negotiated by READY.

Pure functions over bytes: no socket here, so every event-loop integration
shares them, and the tests check them without a data plane.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import NamedTuple

#: The newest version spoken here; READY goes as this one.
VERSION = 0x03
#: The first version (no headers): every peer speaks it.
VERSION_1 = 0x01
#: Call headers (a trailing frame on REQUEST and REPLY).
VERSION_2 = 0x02
#: CREDIT, both ways.
VERSION_3 = 0x03
#: At most this many headers in a headers frame.
MAX_HEADERS = 128
READY, REQUEST, REPLY, HEARTBEAT, DISCONNECT, CREDIT = 0x01, 0x02, 0x03, 0x04, 0x05, 0x06
#: The largest credit the data plane accepts.
MAX_CREDIT = 65_536

#: Protocol codes in a REQUEST's meta frame: how the call (and its reply) is encoded.
BINARY, BINARY_LAX, COMPACT = 0, 1, 2

_META = struct.Struct(">QIB")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")

#: Headers: (key, value) pairs of bytes, in the order sent.
Headers = tuple[tuple[bytes, bytes], ...]


class WireError(ValueError):
    """A message that is not valid worker protocol (it is dropped)."""


@dataclass(frozen=True)
class ReadyAck:
    heartbeat_interval_ms: int
    worker_id: str
    #: The version both sides speak from now on (1 to 3).
    version: int = VERSION_1


class Request(NamedTuple):
    # A tuple: made once per call, so cheaper than a dataclass.
    request_id: int
    timeout_ms: int
    protocol: int
    service: str
    message: bytes
    #: The call's headers (version 2; empty for most calls).
    headers: Headers = ()


@dataclass(frozen=True)
class Heartbeat:
    pass


@dataclass(frozen=True)
class CreditAck:
    """Version 3: the data plane applied our CREDIT; every REQUEST after
    this one respects `credit`."""

    credit: int


@dataclass(frozen=True)
class Disconnect:
    reason: str


ServerMsg = ReadyAck | Request | Heartbeat | Disconnect | CreditAck


def _header(cmd: int, version: int = VERSION_1) -> bytes:
    return bytes((version, cmd))


def ready(credit: int, token: bytes, services: list[str], version: int = VERSION) -> list[bytes]:
    """READY: the first message of a worker, as `version` (2: send me
    headers; 3: and I may send CREDIT)."""
    if not 1 <= credit <= MAX_CREDIT:
        raise ValueError(f"credit must be between 1 and {MAX_CREDIT}, not {credit}")
    if not VERSION_1 <= version <= VERSION:
        raise ValueError(f"version must be between {VERSION_1} and {VERSION}, not {version}")
    if not services:
        raise ValueError("a worker must serve at least one service")
    return [_header(READY, version), _U32.pack(credit), token, *(s.encode() for s in services)]


def reply(request_id: int, message: bytes, headers: Headers | list[tuple[bytes, bytes]] = ()) -> list[bytes]:
    """REPLY to REQUEST `request_id` (an empty message for a oneway call);
    with reply headers, a version 2 REPLY (only for a data plane that
    acknowledged version 2)."""
    if headers:
        return [_header(REPLY, 2), _U64.pack(request_id), message, encode_headers(headers)]
    return [_header(REPLY), _U64.pack(request_id), message]


def encode_headers(headers: Headers | list[tuple[bytes, bytes]]) -> bytes:
    """A headers frame: per header a big-endian u16 key length, the key, a
    big-endian u32 value length, the value."""
    out = bytearray()
    for key, value in headers:
        out += _U16.pack(len(key))
        out += key
        out += _U32.pack(len(value))
        out += value
    return bytes(out)


def decode_headers(frame: bytes) -> Headers:
    """Decodes a headers frame; raises WireError if malformed or over MAX_HEADERS."""
    pairs: list[tuple[bytes, bytes]] = []
    at, end = 0, len(frame)
    while at < end:
        if len(pairs) == MAX_HEADERS or at + 2 > end:
            raise WireError("malformed headers frame")
        (klen,) = _U16.unpack_from(frame, at)
        key_end = at + 2 + klen
        if key_end + 4 > end:
            raise WireError("malformed headers frame")
        (vlen,) = _U32.unpack_from(frame, key_end)
        value_end = key_end + 4 + vlen
        if value_end > end:
            raise WireError("malformed headers frame")
        pairs.append((frame[at + 2 : key_end], frame[key_end + 4 : value_end]))
        at = value_end
    return tuple(pairs)


def credit(value: int) -> list[bytes]:
    """CREDIT (version 3 only): "my credit at this data plane is now `value`"."""
    if not 1 <= value <= MAX_CREDIT:
        raise ValueError(f"credit must be between 1 and {MAX_CREDIT}, not {value}")
    return [_header(CREDIT, VERSION_3), _U32.pack(value)]


def heartbeat() -> list[bytes]:
    return [_header(HEARTBEAT)]


def disconnect(reason: str = "") -> list[bytes]:
    return [_header(DISCONNECT), reason.encode()]


def decode(frames: list[bytes]) -> ServerMsg:
    """Decodes a message from the data plane; raises WireError if malformed."""
    if not frames or len(frames[0]) != 2:
        raise WireError("expected a 2-byte header frame")
    version, cmd = frames[0][0], frames[0][1]
    if not VERSION_1 <= version <= VERSION:
        raise WireError(f"unsupported worker protocol version {version}")
    if cmd == READY:
        if len(frames) < 3 or len(frames[1]) != 4:
            raise WireError("READY ack needs heartbeat_interval_ms (4 bytes) and worker_id")
        return ReadyAck(_U32.unpack(frames[1])[0], frames[2].decode("utf-8", "replace"), version)
    if cmd == REQUEST:
        if len(frames) < 4 or len(frames[1]) != _META.size:
            raise WireError("REQUEST needs meta (13 bytes), service and message frames")
        request_id, timeout_ms, protocol = _META.unpack(frames[1])
        service = frames[2].decode("utf-8", "replace")
        if version >= 2 and len(frames) > 4:
            return Request(request_id, timeout_ms, protocol, service, frames[3], decode_headers(frames[4]))
        return Request(request_id, timeout_ms, protocol, service, frames[3])
    if cmd == HEARTBEAT:
        return Heartbeat()
    if cmd == DISCONNECT:
        reason = frames[1].decode("utf-8", "replace") if len(frames) > 1 else ""
        return Disconnect(reason)
    if cmd == CREDIT:
        if len(frames) < 2 or len(frames[1]) != 4:
            raise WireError("CREDIT needs credit (4 bytes)")
        (value,) = _U32.unpack(frames[1])
        if not 1 <= value <= MAX_CREDIT:
            raise WireError(f"CREDIT {value} out of range 1..={MAX_CREDIT}")
        return CreditAck(value)
    raise WireError(f"unknown command {cmd}")
