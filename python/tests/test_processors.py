from typing import Any

import pytest
from thrift.Thrift import TApplicationException, TMessageType

from conftest import PROTOCOLS, Handler, decode_reply, encode_call
from thriftworker import codec
from thriftworker.processors import ApacheProcessor, Thriftpy2Processor, adapt
from thriftworker.wire import COMPACT


@pytest.fixture(params=["apache", "thriftpy2", "apache-exclusive", "thriftpy2-exclusive"])
def served(request: pytest.FixtureRequest) -> Any:
    """Each library's processor, also as an inline worker runs it (exclusive:
    one pair of protocol objects reused from call to call)."""
    lib, _, exclusive = request.param.partition("-")
    processor = adapt(request.getfixturevalue("apache" if lib == "apache" else "thriftpy2_processor"))
    processor.exclusive = bool(exclusive)  # type: ignore[attr-defined]
    return processor


def test_adapt_picks_the_library(apache: Any, thriftpy2_processor: Any) -> None:
    assert isinstance(adapt(apache), ApacheProcessor)
    assert isinstance(adapt(thriftpy2_processor), Thriftpy2Processor)
    with pytest.raises(TypeError, match="thrift --gen py"):
        adapt(object())


@pytest.mark.parametrize("code", PROTOCOLS)
def test_a_call_is_answered_in_its_protocol(served: Any, code: int) -> None:
    reply = served.serve(code, encode_call(code, "echo", 41, message="héllo"))
    mtype, seqid, result = decode_reply(code, "echo", reply)
    assert (mtype, seqid, result.success) == (TMessageType.REPLY, 41, "héllo")


@pytest.mark.parametrize("code", PROTOCOLS)
def test_oneway_runs_and_answers_nothing(served: Any, handler: Handler, code: int) -> None:
    assert served.serve(code, encode_call(code, "notify", 3, message="n")) == b""


@pytest.mark.parametrize("code", PROTOCOLS)
def test_a_declared_exception_is_a_reply(served: Any, code: int) -> None:
    reply = served.serve(code, encode_call(code, "fail", 5, message="no", code=7))
    mtype, seqid, result = decode_reply(code, "fail", reply)
    assert (mtype, seqid) == (TMessageType.REPLY, 5)
    assert (result.err.message, result.err.code) == ("no", 7)


@pytest.mark.parametrize("code", PROTOCOLS)
def test_an_undeclared_exception_is_an_internal_error(served: Any, code: int) -> None:
    reply = served.serve(code, encode_call(code, "fail", 6, message="no", code=0))
    mtype, seqid, e = decode_reply(code, "fail", reply)
    assert (mtype, seqid) == (TMessageType.EXCEPTION, 6)
    assert isinstance(e, TApplicationException)
    assert e.type == TApplicationException.INTERNAL_ERROR


@pytest.mark.parametrize("code", PROTOCOLS)
def test_arguments_that_do_not_decode_are_a_protocol_error(served: Any, code: int) -> None:
    call = encode_call(code, "echo", 8, message="xyzxyz")
    broken = call[: len(call) - 5]  # the string is cut short
    mtype, seqid, e = decode_reply(code, "echo", served.serve(code, broken))
    assert (mtype, seqid) == (TMessageType.EXCEPTION, 8)
    assert e.type == codec.PROTOCOL_ERROR, e.message


@pytest.mark.parametrize("code", PROTOCOLS)
def test_a_hostile_length_is_a_protocol_error(served: Any, code: int) -> None:
    """A 2 GiB string length in a 40-byte call (thriftpy2's cybin codec
    crashes the process on this one: it must not be used)."""
    call = encode_call(code, "echo", 8, message="xyzxyz")
    at = call.index(b"xyzxyz")
    if code == COMPACT:
        hostile = call[: at - 1] + b"\xff\xff\xff\xff\x07" + call[at:]
    else:
        hostile = call[: at - 4] + b"\x7f\xff\xff\xff" + call[at:]
    mtype, seqid, e = decode_reply(code, "echo", served.serve(code, hostile))
    assert (mtype, seqid) == (TMessageType.EXCEPTION, 8)
    assert e.type == codec.PROTOCOL_ERROR, e.message


@pytest.mark.parametrize("code", PROTOCOLS)
def test_an_unknown_method_is_answered_by_the_processor(served: Any, code: int) -> None:
    call = codec.application_exception(code, "nope", 9, 1, "")  # any readable header
    call = call.replace(bytes((codec.EXCEPTION,)), bytes((codec.CALL,)), 1) if code == 1 else call
    reply = served.serve(code, encode_call(code, "whoami", 9).replace(b"whoami", b"whoamj"))
    mtype, seqid, e = decode_reply(code, "whoamj", reply)
    assert (mtype, seqid) == (TMessageType.EXCEPTION, 9)
    assert e.type == TApplicationException.UNKNOWN_METHOD


def test_reused_protocols_serve_call_after_call_whatever_came_before(served: Any) -> None:
    """A call that fails half-way through decoding must not leave state
    behind for the next one (the compact protocol keeps some)."""
    for round_ in range(3):
        for code in PROTOCOLS:
            text = f"m{round_}" + "x" * 60
            good = encode_call(code, "echo", round_, message=text)
            assert decode_reply(code, "echo", served.serve(code, good))[2].success == text
            bad = served.serve(code, good[: len(good) // 2])  # cut in the middle of the arguments
            assert codec.message_type(code, bad) == TMessageType.EXCEPTION
            assert served.serve(code, encode_call(code, "notify", 1, message="n")) == b""
