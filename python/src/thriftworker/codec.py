"""Just enough Thrift to answer a call whatever the processor does: read a
message header (name, type, seqid) and write a `TApplicationException`
reply, in binary (strict or lax) or compact.

The processors decode and encode everything else; this is what lets the
worker answer a call the processor could not (arguments that do not decode,
a handler exception the processor lets escape, a call whose time is up).
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from .wire import BINARY, BINARY_LAX, COMPACT

# Message types.
CALL, REPLY, EXCEPTION, ONEWAY = 1, 2, 3, 4
# TApplicationException types (Apache Thrift, every language).
UNKNOWN_METHOD, INTERNAL_ERROR, PROTOCOL_ERROR = 1, 6, 7

_MAX_NAME = 4096
_I32 = struct.Struct(">i")
_U32 = struct.Struct(">I")


class Header(NamedTuple):
    name: str
    message_type: int
    seqid: int


class CodecError(ValueError):
    """A message whose header cannot be read."""


def read_header(protocol: int, message: bytes) -> Header:
    """The header of `message`, encoded in `protocol` (a wire code)."""
    try:
        if protocol == COMPACT:
            return _compact_header(message)
        if protocol in (BINARY, BINARY_LAX):
            return _binary_header(message)
    except (IndexError, struct.error) as e:
        raise CodecError(f"truncated message header: {e}") from None
    raise CodecError(f"unknown protocol {protocol}")


def message_type(protocol: int, message: bytes) -> int:
    """Just the message type (CALL, ONEWAY, ...), without reading the name:
    what the worker needs for every call; -1 if unreadable."""
    try:
        if protocol == COMPACT:
            return message[1] >> 5
        first: int = _U32.unpack_from(message, 0)[0]
        if first & 0x80000000:
            return first & 0xFF
        return message[4 + first] if first <= _MAX_NAME else -1
    except (IndexError, struct.error):
        return -1


def _binary_header(m: bytes) -> Header:
    first = _U32.unpack_from(m, 0)[0]
    if first & 0x80000000:  # strict: version word, then the name
        if first & 0xFFFF0000 != 0x80010000:
            raise CodecError(f"bad binary version 0x{first:08x}")
        mtype = first & 0xFF
        name_len = _I32.unpack_from(m, 4)[0]
        start = 8
    else:  # lax: the name first, then a type byte
        name_len, start = first, 4
        mtype = -1
    if not 0 <= name_len <= _MAX_NAME or start + name_len > len(m):
        raise CodecError(f"bad method name length {name_len}")
    name = m[start : start + name_len].decode("utf-8", "replace")
    at = start + name_len
    if mtype < 0:
        mtype = m[at]
        at += 1
    seqid = _I32.unpack_from(m, at)[0]
    return Header(name, mtype, seqid)


def _varint(m: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = m[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, at
        shift += 7
        if shift > 28:
            raise CodecError("malformed varint")


def _compact_header(m: bytes) -> Header:
    if m[0] != 0x82:
        raise CodecError(f"bad compact protocol id 0x{m[0]:02x}")
    mtype = m[1] >> 5
    seqid, at = _varint(m, 2)
    name_len, at = _varint(m, at)
    if name_len > _MAX_NAME or at + name_len > len(m):
        raise CodecError(f"bad method name length {name_len}")
    name = m[at : at + name_len].decode("utf-8", "replace")
    return Header(name, mtype, _I32.unpack(_U32.pack(seqid & 0xFFFFFFFF))[0])


def _put_varint(out: bytearray, v: int) -> None:
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)


def application_exception(protocol: int, name: str, seqid: int, kind: int, text: str) -> bytes:
    """A complete EXCEPTION message holding `TApplicationException(kind, text)`."""
    n, t = name.encode(), text.encode()
    out = bytearray()
    if protocol == COMPACT:
        out += b"\x82" + bytes(((EXCEPTION << 5) | 1,))
        _put_varint(out, seqid & 0xFFFFFFFF)
        _put_varint(out, len(n))
        out += n
        out.append(0x18)  # field 1, BINARY
        _put_varint(out, len(t))
        out += t
        out.append(0x15)  # field 2, I32 (zigzag)
        _put_varint(out, kind << 1)
        out.append(0)
        return bytes(out)
    if protocol == BINARY:
        out += _U32.pack(0x80010000 | EXCEPTION) + _U32.pack(len(n)) + n + _I32.pack(seqid)
    else:
        out += _U32.pack(len(n)) + n + bytes((EXCEPTION,)) + _I32.pack(seqid)
    out += b"\x0b\x00\x01" + _U32.pack(len(t)) + t
    out += b"\x08\x00\x02" + _I32.pack(kind) + b"\x00"
    return bytes(out)


def failure_reply(protocol: int, message: bytes, kind: int, text: str) -> bytes:
    """The REPLY answering `message` with `TApplicationException(kind,
    text)`, or b"" if the call is oneway or its header is unreadable (the
    data plane then answers the client itself)."""
    try:
        h = read_header(protocol, message)
    except CodecError:
        return b""
    if h.message_type == ONEWAY:
        return b""
    return application_exception(protocol, h.name, h.seqid, kind, text)
