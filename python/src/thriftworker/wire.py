"""The worker protocol, version 1 (docs/worker-protocol.md): the messages a
worker and the data plane exchange, as lists of ZeroMQ frames.

Pure functions over bytes: no socket here, so every event-loop integration
shares them, and the tests check them without a data plane.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import NamedTuple

VERSION = 0x01
READY, REQUEST, REPLY, HEARTBEAT, DISCONNECT = 0x01, 0x02, 0x03, 0x04, 0x05
#: The largest credit the data plane accepts.
MAX_CREDIT = 65_536

#: Protocol codes in a REQUEST's meta frame: how the call (and its reply) is encoded.
BINARY, BINARY_LAX, COMPACT = 0, 1, 2

_META = struct.Struct(">QIB")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")


class WireError(ValueError):
    """A message that is not valid worker protocol (it is dropped)."""


@dataclass(frozen=True)
class ReadyAck:
    heartbeat_interval_ms: int
    worker_id: str


class Request(NamedTuple):
    # A tuple: made once per call, so cheaper than a dataclass.
    request_id: int
    timeout_ms: int
    protocol: int
    service: str
    message: bytes


@dataclass(frozen=True)
class Heartbeat:
    pass


@dataclass(frozen=True)
class Disconnect:
    reason: str


ServerMsg = ReadyAck | Request | Heartbeat | Disconnect


def _header(cmd: int) -> bytes:
    return bytes((VERSION, cmd))


def ready(credit: int, token: bytes, services: list[str]) -> list[bytes]:
    """READY: the first message of a worker."""
    if not 1 <= credit <= MAX_CREDIT:
        raise ValueError(f"credit must be between 1 and {MAX_CREDIT}, not {credit}")
    if not services:
        raise ValueError("a worker must serve at least one service")
    return [_header(READY), _U32.pack(credit), token, *(s.encode() for s in services)]


def reply(request_id: int, message: bytes) -> list[bytes]:
    """REPLY to REQUEST `request_id` (an empty message for a oneway call)."""
    return [_header(REPLY), _U64.pack(request_id), message]


def heartbeat() -> list[bytes]:
    return [_header(HEARTBEAT)]


def disconnect(reason: str = "") -> list[bytes]:
    return [_header(DISCONNECT), reason.encode()]


def decode(frames: list[bytes]) -> ServerMsg:
    """Decodes a message from the data plane; raises WireError if malformed."""
    if not frames or len(frames[0]) != 2:
        raise WireError("expected a 2-byte header frame")
    version, cmd = frames[0][0], frames[0][1]
    if version != VERSION:
        raise WireError(f"unsupported worker protocol version {version}")
    if cmd == READY:
        if len(frames) < 3 or len(frames[1]) != 4:
            raise WireError("READY ack needs heartbeat_interval_ms (4 bytes) and worker_id")
        return ReadyAck(_U32.unpack(frames[1])[0], frames[2].decode("utf-8", "replace"))
    if cmd == REQUEST:
        if len(frames) < 4 or len(frames[1]) != _META.size:
            raise WireError("REQUEST needs meta (13 bytes), service and message frames")
        request_id, timeout_ms, protocol = _META.unpack(frames[1])
        service = frames[2].decode("utf-8", "replace")
        return Request(request_id, timeout_ms, protocol, service, frames[3])
    if cmd == HEARTBEAT:
        return Heartbeat()
    if cmd == DISCONNECT:
        reason = frames[1].decode("utf-8", "replace") if len(frames) > 1 else ""
        return Disconnect(reason)
    raise WireError(f"unknown command {cmd}")
