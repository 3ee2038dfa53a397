"""`serve_async`: the same answers as `serve`, for handlers whose methods
are coroutines (the asyncio mode)."""

import asyncio
import os
from typing import Any

import pytest
from thrift.Thrift import TApplicationException, TMessageType

from conftest import PROTOCOLS, ROOT, Echo, EchoError, Handler, decode_reply, encode_call
from thriftworker.processors import adapt


class AsyncHandler:
    def __init__(self, error: Any = EchoError) -> None:
        self.error = error
        self.notes: list[str] = []

    async def echo(self, message: str) -> str:
        await asyncio.sleep(0)
        return message

    async def notify(self, message: str) -> None:
        await asyncio.sleep(0)
        self.notes.append(message)

    async def fail(self, message: str, code: int) -> str:
        await asyncio.sleep(0)
        if code == 0:
            raise ValueError("not declared")
        raise self.error(message=message, code=code)

    def whoami(self) -> str:  # a plain method works too
        return "async"


@pytest.fixture(params=["apache", "thriftpy2"])
def lib(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def served(lib: str, handler: Any) -> Any:
    if lib == "apache":
        return adapt(Echo.Processor(handler))
    thriftpy2 = pytest.importorskip("thriftpy2")
    from thriftpy2.thrift import TProcessor

    module = thriftpy2.load(os.path.join(ROOT, "examples", "idl", "echo.thrift"), module_name="echo_thrift")
    handler.error = module.EchoError
    return adapt(TProcessor(module.Echo, handler))


def run(p: Any, code: int, call: bytes) -> bytes:
    reply: bytes = asyncio.run(p.serve_async(code, call))
    return reply


@pytest.mark.parametrize("code", PROTOCOLS)
def test_a_coroutine_handler_is_awaited(lib: str, code: int) -> None:
    p = served(lib, AsyncHandler())
    mtype, seqid, result = decode_reply(code, "echo", run(p, code, encode_call(code, "echo", 4, message="é")))
    assert (mtype, seqid, result.success) == (TMessageType.REPLY, 4, "é")
    _, _, result = decode_reply(code, "whoami", run(p, code, encode_call(code, "whoami", 5)))
    assert result.success == "async"


@pytest.mark.parametrize("code", PROTOCOLS)
def test_exceptions_of_a_coroutine(lib: str, code: int) -> None:
    p = served(lib, AsyncHandler())
    mtype, _, result = decode_reply(code, "fail", run(p, code, encode_call(code, "fail", 6, message="m", code=3)))
    assert mtype == TMessageType.REPLY and (result.err.message, result.err.code) == ("m", 3)
    mtype, seqid, e = decode_reply(code, "fail", run(p, code, encode_call(code, "fail", 7, message="m", code=0)))
    assert (mtype, seqid) == (TMessageType.EXCEPTION, 7)
    assert isinstance(e, TApplicationException) and e.type == TApplicationException.INTERNAL_ERROR


@pytest.mark.parametrize("code", PROTOCOLS)
def test_a_oneway_coroutine_runs_and_answers_nothing(lib: str, code: int) -> None:
    h = AsyncHandler()
    p = served(lib, h)
    assert run(p, code, encode_call(code, "notify", 8, message="n")) == b""
    assert h.notes == ["n"]


@pytest.mark.parametrize("code", PROTOCOLS)
def test_sync_handlers_and_bad_calls_answer_as_serve_does(lib: str, code: int) -> None:
    p = served(lib, Handler())
    call = encode_call(code, "echo", 9, message="xyzxyz")
    assert run(p, code, call) == p.serve(code, call)
    broken = call[: len(call) - 5]
    mtype, seqid, e = decode_reply(code, "echo", run(p, code, broken))
    assert (mtype, seqid, e.type) == (TMessageType.EXCEPTION, 9, TApplicationException.PROTOCOL_ERROR)
