"""Shared fixtures: the example service (examples/idl/echo.thrift) as the
Apache compiler generated it (tests/e2e/gen) and as thriftpy2 loads it, and
a client-side encoder for calls in each protocol."""

from __future__ import annotations

import os
import sys
import threading
from typing import Any

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "e2e", "gen"))

from echo import Echo  # noqa: E402
from echo.ttypes import EchoError  # noqa: E402
from thrift.protocol import TBinaryProtocol, TCompactProtocol  # noqa: E402
from thrift.Thrift import TMessageType  # noqa: E402
from thrift.transport import TTransport  # noqa: E402

from thriftworker import Worker  # noqa: E402
from thriftworker.wire import BINARY, BINARY_LAX, COMPACT  # noqa: E402

PROTOCOLS = (BINARY, BINARY_LAX, COMPACT)


class Handler:
    """Echo with the semantics of the IDL, plus a bug."""

    def __init__(self) -> None:
        self.notes: list[str] = []

    def echo(self, message: str) -> str:
        return message

    def notify(self, message: str) -> None:
        self.notes.append(message)

    def notified(self) -> int:
        return len(self.notes)

    def fail(self, message: str, code: int) -> str:
        if code == 0:
            raise ValueError("not declared")
        raise EchoError(message=message, code=code)

    def slow(self, message: str, sleep_ms: int) -> str:
        return message

    def whoami(self) -> str:
        return "py"


def apache_protocol(code: int, trans: Any) -> Any:
    if code == BINARY:
        return TBinaryProtocol.TBinaryProtocol(trans, strictRead=True, strictWrite=True)
    if code == BINARY_LAX:
        return TBinaryProtocol.TBinaryProtocol(trans, strictRead=False, strictWrite=False)
    return TCompactProtocol.TCompactProtocol(trans)


def encode_call(proto: int, name: str, seqid: int, **args: Any) -> bytes:
    """A CALL (ONEWAY for notify) as a client would send it."""
    trans = TTransport.TMemoryBuffer()
    p = apache_protocol(proto, trans)
    mtype = TMessageType.ONEWAY if name == "notify" else TMessageType.CALL
    p.writeMessageBegin(name, mtype, seqid)
    getattr(Echo, f"{name}_args")(**args).write(p)
    p.writeMessageEnd()
    return trans.getvalue()


def decode_reply(code: int, name: str, data: bytes) -> tuple[int, int, Any]:
    """(message type, seqid, result struct or TApplicationException)."""
    from thrift.Thrift import TApplicationException

    p = apache_protocol(code, TTransport.TMemoryBuffer(data))
    _name, mtype, seqid = p.readMessageBegin()
    if mtype == TMessageType.EXCEPTION:
        value: Any = TApplicationException()
    else:
        value = getattr(Echo, f"{name}_result")()
    value.read(p)
    return mtype, seqid, value


@pytest.fixture
def handler() -> Handler:
    return Handler()


@pytest.fixture
def apache(handler: Handler) -> Any:
    return Echo.Processor(handler)


@pytest.fixture
def thriftpy2_processor(handler: Handler) -> Any:
    thriftpy2 = pytest.importorskip("thriftpy2")
    from thriftpy2.thrift import TProcessor

    module = thriftpy2.load(os.path.join(ROOT, "examples", "idl", "echo.thrift"), module_name="echo_thrift")

    class Tp2Handler(Handler):
        def fail(self, message: str, code: int) -> str:
            if code == 0:
                raise ValueError("not declared")
            raise module.EchoError(message=message, code=code)

    return TProcessor(module.Echo, Tp2Handler())


def start_worker(w: Worker) -> tuple[threading.Thread, list[BaseException]]:
    """Runs `w` on a daemon thread; returns the thread and the exceptions
    `run` raised (empty while it runs or when it returned)."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            w.run()
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, errors
