from typing import Any

import pytest
from thrift.Thrift import TApplicationException, TMessageType
from thrift.transport import TTransport

from conftest import PROTOCOLS, apache_protocol
from thriftworker import codec


def written(code: int, name: str, mtype: int, seqid: int) -> bytes:
    trans = TTransport.TMemoryBuffer()
    p = apache_protocol(code, trans)
    p.writeMessageBegin(name, mtype, seqid)
    p.writeStructBegin("args")
    p.writeFieldStop()
    p.writeStructEnd()
    p.writeMessageEnd()
    value: bytes = trans.getvalue()
    return value


@pytest.mark.parametrize("code", PROTOCOLS)
@pytest.mark.parametrize("seqid", [0, 1, 127, 128, 300_000, 2**31 - 1, -1, -(2**31)])
def test_reads_the_headers_thrift_writes(code: int, seqid: int) -> None:
    for mtype in (TMessageType.CALL, TMessageType.ONEWAY):
        message = written(code, "Echo:echo", mtype, seqid)
        assert codec.read_header(code, message) == codec.Header("Echo:echo", mtype, seqid)
        assert codec.message_type(code, message) == mtype


@pytest.mark.parametrize("code", PROTOCOLS)
def test_application_exception_reads_back_with_thrift(code: int) -> None:
    data = codec.application_exception(code, "echo", -5, codec.INTERNAL_ERROR, "thriftworker: boom é")
    p: Any = apache_protocol(code, TTransport.TMemoryBuffer(data))
    name, mtype, seqid = p.readMessageBegin()
    if isinstance(name, bytes):  # thrift-py reads a lax name as bytes
        name = name.decode()
    assert (name, mtype, seqid) == ("echo", TMessageType.EXCEPTION, -5)
    e = TApplicationException()
    e.read(p)
    assert (e.type, e.message) == (codec.INTERNAL_ERROR, "thriftworker: boom é")


@pytest.mark.parametrize(
    "code,data",
    [
        (0, b""),
        (0, b"\x80\x01"),
        (0, b"\x80\x02\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00"),
        (1, b"\x00\x00\x10\x00ab"),
        (2, b"\x83\x21"),
        (2, b"\x82\x21\xff\xff\xff\xff\xff\xff"),
        (9, b"\x80\x01\x00\x01"),
    ],
)
def test_garbage_is_a_codec_error(code: int, data: bytes) -> None:
    with pytest.raises(codec.CodecError):
        codec.read_header(code, data)
    codec.message_type(code, data)  # some value, never an exception
